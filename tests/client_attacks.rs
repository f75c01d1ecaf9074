//! The SMTP client towards the primary, read as an attacker on the path (or a broken
//! primary) would: nothing is marked delivered that the primary did not accept with 250
//! after the final dot, no reply is believed that answers another command, and the drain
//! never delivers into the standby itself.
//!
//! Misbehaviour Postfix will not produce on demand (bytes injected after the 220 to
//! STARTTLS, a 250 to DATA, silence after the final dot, a failing handshake) comes from
//! a small tokio SMTP responder below, with real TLS (rustls) where the attack needs it;
//! the rest is real Postfix and the real `standby serve`.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// What a [`Fake`] primary does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrong {
    /// Offers STARTTLS; its 220 to it comes in one write with an injected `250` (the
    /// reply a man in the middle wants read as the first reply inside TLS); then real TLS,
    /// after which it behaves.
    InjectAfterStartTls,
    /// Answers DATA with `250` instead of 354 (and never reads a message).
    DataGets250,
    /// Reads the whole message and never answers the final dot.
    SilentAfterDot,
    /// Offers STARTTLS, says 220, then answers the ClientHello with bytes that are no TLS
    /// (a primary whose TLS is broken or too old); without STARTTLS it behaves.
    HandshakeFails,
}

/// A scripted primary on 127.0.0.1; every command and event is appended to `log`.
struct Fake {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

type Stream = Box<dyn AsyncReadWrite>;
trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

impl Fake {
    /// `tls`: the certificate and key it answers STARTTLS with.
    fn start(wrong: Wrong, tls: Option<&TestPki>) -> Fake {
        let acceptor = tls.map(|p| {
            tokio_rustls::TlsAcceptor::from(
                standby::smtp::tls::server_config(&p.cert, &p.key).unwrap(),
            )
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (log, acceptor) = (log2.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        log.lock().unwrap().push("connect".into());
                        let _ = session(tcp, wrong, acceptor, &log).await;
                    });
                }
            });
        });
        Fake { port, log }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

async fn session(
    tcp: tokio::net::TcpStream,
    wrong: Wrong,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let note = |s: String| log.lock().unwrap().push(s);
    let mut io: BufReader<Stream> = BufReader::new(Box::new(tcp));
    io.write_all(b"220 fake.test ESMTP\r\n").await?;
    let mut in_tls = false;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        note(cmd.clone());
        if upper.starts_with("EHLO") {
            let starttls =
                !in_tls && matches!(wrong, Wrong::InjectAfterStartTls | Wrong::HandshakeFails);
            let ext = if starttls { "250-STARTTLS\r\n" } else { "" };
            io.write_all(
                format!("250-fake.test\r\n250-PIPELINING\r\n{ext}250 8BITMIME\r\n").as_bytes(),
            )
            .await?;
        } else if upper == "STARTTLS" {
            match wrong {
                Wrong::InjectAfterStartTls => {
                    io.write_all(b"220 2.0.0 ready\r\n250 injected.test\r\n")
                        .await?;
                    io.flush().await?;
                    // The client must drop the session here; if it goes on, real TLS
                    // follows and the injected line is read as a reply inside it.
                    let plain = io.into_inner();
                    let Some(acceptor) = &acceptor else {
                        return Ok(());
                    };
                    match acceptor.accept(plain).await {
                        Ok(tls) => {
                            note("TLS established".into());
                            io = BufReader::new(Box::new(tls));
                            in_tls = true;
                        }
                        Err(e) => {
                            note(format!("TLS failed: {e}"));
                            return Ok(());
                        }
                    }
                }
                _ => {
                    io.write_all(b"220 2.0.0 ready\r\n").await?;
                    io.flush().await?;
                    let mut hello = [0u8; 16];
                    let n = tokio::io::AsyncReadExt::read(&mut io, &mut hello).await?;
                    note(format!("ClientHello {n} bytes; answered with garbage"));
                    io.write_all(b"this is no TLS record\r\n").await?;
                    return Ok(());
                }
            }
        } else if upper.starts_with("MAIL")
            || upper.starts_with("RCPT")
            || upper == "RSET"
            || upper == "NOOP"
        {
            io.write_all(b"250 2.0.0 ok\r\n").await?;
        } else if upper == "DATA" {
            if wrong == Wrong::DataGets250 {
                io.write_all(b"250 2.0.0 ok: queued as NOTHING\r\n").await?;
                continue;
            }
            io.write_all(b"354 go ahead\r\n").await?;
            io.flush().await?;
            let mut bytes = 0;
            loop {
                let mut l = String::new();
                if io.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                bytes += l.len();
            }
            note(format!("message of {bytes} bytes, final dot"));
            if wrong == Wrong::SilentAfterDot {
                // Hold the connection open and say nothing until the client gives up.
                let mut rest = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut io, &mut rest).await;
                note("client gave up".into());
                return Ok(());
            }
            io.write_all(b"250 2.0.0 ok: queued as FAKE1\r\n").await?;
        } else if upper == "QUIT" {
            io.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            io.write_all(b"502 5.5.1 not in this fake\r\n").await?;
        }
        io.flush().await?;
    }
}

/// A standby that never drains by itself (the attempt is the operator's `standby drain`),
/// towards `port`, with these overrides.
fn standby(port: u16, env: &[(&str, &str)]) -> Standby {
    let mut all = vec![("STANDBY_HEALTH_UP_AFTER", "100000")];
    all.extend_from_slice(env);
    Standby::start_with_env(port, "", &all)
}

/// The one message's record.
fn only(sb: &Standby) -> Value {
    let all = sb.list("all");
    assert_eq!(all.len(), 1, "{all:?}");
    let id = all[0]["id"].as_str().unwrap().to_string();
    sb.json(&["show", &id, "--json"])
}

fn status_text(sb: &Standby) -> String {
    String::from_utf8_lossy(&sb.cli(&["status"]).stdout).into_owned()
}

#[test]
fn bytes_injected_after_the_220_to_starttls_drop_the_session() {
    let holder = tempfile::tempdir().unwrap();
    let pki = make_pki(holder.path());
    let fake = Fake::start(Wrong::InjectAfterStartTls, Some(&pki));
    let sb = standby(
        fake.port,
        &[
            ("STANDBY_PRIMARY_TLS", "required"),
            ("STANDBY_PRIMARY_CA_FILE", pki.ca.to_str().unwrap()),
        ],
    );
    sb.send("bob@example.test", &[]);
    let report = sb.drain_report(&["--force"], 3);
    assert_eq!(report["delivered"], 0, "{report}");
    let why = report["stopped"].as_str().unwrap_or_default();
    assert!(why.contains("after the 220 to STARTTLS"), "{report}");
    let log = fake.log();
    assert!(
        !log.iter()
            .any(|l| l == "TLS established" || l.starts_with("MAIL")),
        "the session went on after the injection: {log:?}"
    );
    assert_eq!(sb.counts()["held"], 1);
    assert_eq!(sb.counts()["delivered"], 0);
    // The reason is kept for the operator.
    let status = status_text(&sb);
    assert!(status.contains("after the 220 to STARTTLS"), "{status}");
}

#[test]
fn a_250_to_data_delivers_nothing() {
    let fake = Fake::start(Wrong::DataGets250, None);
    let sb = standby(fake.port, &[("STANDBY_PRIMARY_TLS", "none")]);
    sb.send("bob@example.test", &[]);
    let report = sb.drain_report(&["--force"], 0);
    assert_eq!(report["delivered"], 0, "{report}");
    assert_eq!(report["deferred"], 1, "{report}");
    let rec = only(&sb);
    assert_eq!(rec["status"], "held", "{rec}");
    let reply = rec["rcpts"][0]["reply"].as_str().unwrap_or_default();
    assert!(reply.contains("instead of 354"), "{rec}");
    assert!(
        !fake.log().iter().any(|l| l.starts_with("message of")),
        "no message was sent"
    );
}

#[test]
fn no_reply_to_the_final_dot_is_ambiguous_and_counted() {
    let fake = Fake::start(Wrong::SilentAfterDot, None);
    // timeout_secs = 10 (the harness) for every other stage; the dot's own key wins.
    let sb = standby(
        fake.port,
        &[
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_PRIMARY_DOT_TIMEOUT_SECS", "2"),
        ],
    );
    sb.send("bob@example.test", &[]);
    let start = Instant::now();
    let report = sb.drain_report(&["--force"], 0);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "waited {took:?}, not dot_timeout_secs"
    );
    assert_eq!(report["delivered"], 0, "{report}");
    assert_eq!(report["deferred"], 1, "{report}");
    assert_eq!(report["ambiguous"], 1, "{report}");
    assert!(
        fake.log().iter().any(|l| l.ends_with("final dot")),
        "{:?}",
        fake.log()
    );
    let rec = only(&sb);
    assert_eq!(rec["status"], "held");
    let reply = rec["rcpts"][0]["reply"].as_str().unwrap_or_default();
    assert!(
        reply.starts_with("451") && reply.contains("may have the message"),
        "{rec}"
    );
    let status = status_text(&sb);
    assert!(status.contains("possible duplicates"), "{status}");
}

/// `primary.address` is the standby's own listener: refused before connecting, the
/// probe fails saying why (so the daemon never drains), nothing is delivered anywhere.
#[test]
fn draining_into_its_own_listener_is_refused() {
    let sb = Standby::start_with_env(
        1,
        "",
        &[
            ("STANDBY_PRIMARY_ADDRESS", "127.0.0.1:{port}"),
            ("STANDBY_PRIMARY_TLS", "none"),
        ],
    );
    sb.send("bob@example.test", &[]);
    let report = sb.drain_report(&["--force"], 3);
    let why = report["stopped"].as_str().unwrap_or_default();
    assert!(
        why.contains("loops back to myself") && why.contains("where this standby listens"),
        "{report}"
    );
    wait_for("a failed probe in status", Duration::from_secs(20), || {
        status_text(&sb).contains("loops back to myself")
    });
    let counts = sb.counts();
    assert_eq!(
        (counts["held"].as_u64(), counts["delivered"].as_u64()),
        (Some(1), Some(0)),
        "{counts}"
    );
    assert_eq!(sb.list("all").len(), 1, "no copy was received from itself");
}

/// Another address that reaches a standby (a NAT hairpin, split DNS): its greeting names
/// our own hostname.
#[test]
fn a_primary_that_greets_with_our_hostname_is_refused() {
    // Both standbys are `standby.example.test`: the second stands for ourselves reached
    // by another path.
    let us_again = standby(1, &[("STANDBY_PRIMARY_TLS", "none")]);
    let sb = standby(us_again.port, &[("STANDBY_PRIMARY_TLS", "none")]);
    sb.send("bob@example.test", &[]);
    let report = sb.drain_report(&["--force"], 3);
    let why = report["stopped"].as_str().unwrap_or_default();
    assert!(
        why.contains("loops back to myself") && why.contains("standby.example.test"),
        "{report}"
    );
    assert_eq!(sb.counts()["held"], 1);
    assert!(
        us_again.list("all").is_empty(),
        "nothing reached the other side"
    );
}

/// A Postfix primary that came back with an empty user directory (550 to every RCPT):
/// the run stops after `breaker_5xx` failures, the rest is untouched, draining stays
/// halted (status says why) until `standby drain --force`.
#[test]
fn a_primary_refusing_everyone_trips_the_breaker() {
    let pf = Postfix::primary();
    pf.rcpt_replies(&[("example.test", "550 5.1.1 mailbox unavailable")]);
    pf.start();
    let sb = standby(
        pf.port,
        &[
            ("STANDBY_DRAIN_BREAKER_5XX", "3"),
            ("STANDBY_DRAIN_CONCURRENCY", "1"),
        ],
    );
    for _ in 0..7 {
        sb.send("bob@example.test", &[]);
    }
    let report = sb.drain_report(&[], 0);
    assert_eq!(report["failed"], 3, "{report}");
    assert_eq!(report["breaker"], "refusals5xx", "{report}");
    assert!(
        report["stopped"]
            .as_str()
            .unwrap()
            .contains("circuit breaker"),
        "{report}"
    );
    let held = sb.list("held");
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(
        held.iter().all(|m| m["attempts"] == 0),
        "untouched: {held:?}"
    );
    let status = status_text(&sb);
    assert!(
        status.contains("halted") && status.contains("breaker_5xx"),
        "{status}"
    );

    // Halted: a plain `standby drain` sends nothing.
    let out = sb.cli(&["drain"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("halted"));
    assert_eq!(sb.list("held").len(), 4);

    // The primary's directory is back; the operator resumes.
    pf.rcpt_replies(&[]);
    let reload = std::process::Command::new("postfix")
        .arg("-c")
        .arg(pf.dir.path())
        .arg("reload")
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}");
    let report = sb.drain_report(&["--force"], 0);
    assert_eq!(report["delivered"], 4, "{report}");
    // The primary's 250 comes when the message is queued; its local delivery follows.
    pf.wait_queue_empty(Duration::from_secs(30));
    assert_eq!(pf.delivered().len(), 4);
    assert!(!status_text(&sb).contains("halted"));
}

/// A 4xx at MAIL (Postfix's 452 for a full queue file system) stops the run at once.
#[test]
fn a_4xx_at_mail_stops_the_run() {
    let pf = Postfix::primary();
    std::fs::write(
        pf.dir.path().join("sender_access"),
        "example.org 452 4.3.1 Insufficient system storage\n",
    )
    .unwrap();
    pf.postconf(&[
        "smtpd_delay_reject = no",
        &format!(
            "smtpd_sender_restrictions = check_sender_access texthash:{}/sender_access",
            pf.dir.path().display()
        ),
    ]);
    pf.start();
    let sb = standby(pf.port, &[("STANDBY_DRAIN_CONCURRENCY", "1")]);
    for _ in 0..4 {
        sb.send("bob@example.test", &[]);
    }
    let report = sb.drain_report(&[], 0);
    assert_eq!(report["deferred"], 1, "{report}");
    assert_eq!(report["breaker"], "mail4xx", "{report}");
    assert!(
        report["stopped"].as_str().unwrap().contains("452"),
        "{report}"
    );
    let untouched = sb
        .list("held")
        .iter()
        .filter(|m| m["attempts"] == 0)
        .count();
    assert_eq!(untouched, 3);
    // Not halted: the next run tries again.
    assert!(!status_text(&sb).contains("halted"));
}

/// A Postfix primary offering STARTTLS with a certificate from a test CA the standby does
/// not know. The returned directory holds the PEM files.
fn tls_primary() -> (Postfix, TestPki, tempfile::TempDir) {
    let holder = tempfile::tempdir().unwrap();
    let pki = make_pki(holder.path());
    let pf = Postfix::primary_with(&[
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ]);
    (pf, pki, holder)
}

/// Opportunistic TLS with a certificate that does not verify still encrypts (Postfix's
/// `may`), and says so in `status`.
#[test]
fn opportunistic_tls_encrypts_when_the_certificate_does_not_verify() {
    let (pf, _pki, _holder) = tls_primary();
    pf.start();
    let sb = Standby::start_with_env(pf.port, "", &[("STANDBY_PRIMARY_TLS", "opportunistic")]);
    sb.send("bob@example.test", &[]);
    wait_for("delivery", Duration::from_secs(30), || {
        pf.delivered().len() == 1
    });
    let (head, _) = split_message(&pf.delivered()[0]);
    assert!(head.contains("(using TLS"), "sent in plain text:\n{head}");
    let status = status_text(&sb);
    assert!(status.contains("certificate NOT verified"), "{status}");
}

/// `tls_server_name` is what the certificate is checked against for an IP address.
#[test]
fn tls_server_name_is_the_name_verified() {
    let (pf, pki, _holder) = tls_primary();
    pf.start();
    let ca = pki.ca.to_str().unwrap();
    let sb = standby(
        pf.port,
        &[
            ("STANDBY_PRIMARY_TLS", "required"),
            ("STANDBY_PRIMARY_CA_FILE", ca),
            ("STANDBY_PRIMARY_TLS_SERVER_NAME", "mail.elsewhere.test"),
        ],
    );
    sb.send("bob@example.test", &[]);
    let report = sb.drain_report(&["--force"], 3);
    assert!(
        report["stopped"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{report}"
    );
    assert!(pf.delivered().is_empty());
    // The name the test certificate carries: verified, delivered.
    let out = std::process::Command::new(STANDBY)
        .args(["drain", "--force", "--json", "--config"])
        .arg(&sb.config)
        .env("STANDBY_PRIMARY_TLS", "required")
        .env("STANDBY_PRIMARY_CA_FILE", ca)
        .env("STANDBY_PRIMARY_TLS_SERVER_NAME", "localhost")
        .env("STANDBY_DSN_SPF", "false")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for("delivery", Duration::from_secs(20), || {
        pf.delivered().len() == 1
    });
}

/// A handshake that fails (not a certificate) is the one case opportunistic TLS goes on
/// in plain text; the probe's line in `status` says so.
#[test]
fn a_failed_handshake_falls_back_to_plain_text_and_says_so() {
    let fake = Fake::start(Wrong::HandshakeFails, None);
    let sb = standby(fake.port, &[("STANDBY_PRIMARY_TLS", "opportunistic")]);
    sb.send("bob@example.test", &[]);
    let report = sb.drain_report(&["--force"], 0);
    assert_eq!(report["delivered"], 1, "{report}");
    wait_for("a probe in status", Duration::from_secs(20), || {
        status_text(&sb).contains("PLAIN TEXT: the TLS handshake failed")
    });
}

/// The probe logs in as the drain does: a wrong password shows in `status` as the
/// probe's failure, not only when a drain fails; `probe_auth = false` skips AUTH.
#[test]
fn the_probe_runs_the_drains_session() {
    let fake = FakePrimary::start(vec![FakeReply::Submission(FakeAuth::Plain)]);
    let env = |pw: &'static str, probe_auth: &'static str| {
        vec![
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_PRIMARY_ALLOW_PLAINTEXT_AUTH", "true"),
            ("STANDBY_PRIMARY_AUTH_USER", FAKE_USER),
            ("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "PRIMARY_PW"),
            ("PRIMARY_PW", pw),
            ("STANDBY_HEALTH_PROBE_AUTH", probe_auth),
        ]
    };
    let sb = standby(fake.port, &env("wrong", "true"));
    wait_for(
        "the probe's AUTH failure in status",
        Duration::from_secs(20),
        || {
            let s = status_text(&sb);
            s.contains("probe     FAILED") && s.contains("AUTH: 535")
        },
    );
    drop(sb);
    let sb = standby(fake.port, &env("wrong", "false"));
    wait_for("a good probe without AUTH", Duration::from_secs(20), || {
        status_text(&sb).contains("AUTH not tried (probe_auth = false)")
    });
}

// ---- The listener's side of STARTTLS ----

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn read_reply(s: &mut dyn Read) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.ends_with("\r\n")
            && text
                .lines()
                .last()
                .is_some_and(|l| l.len() >= 4 && &l[3..4] == " ")
        {
            return text;
        }
        if s.read(&mut byte).unwrap_or(0) == 0 {
            return text;
        }
        out.push(byte[0]);
    }
}

fn tls_client(plain: std::net::TcpStream, ca: &Path) -> Tls {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, plain);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    tls
}

/// The other direction: commands a client (or a man in the middle) pipelines after
/// STARTTLS were sent in the clear and are never executed inside TLS (CVE-2011-0411).
#[test]
fn the_listener_never_runs_commands_pipelined_after_starttls() {
    let holder = tempfile::tempdir().unwrap();
    let pki = make_pki(holder.path());
    let extra = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    );
    let sb = Standby::start(1, &extra);
    let mut plain = connect(sb.port);
    assert!(read_reply(&mut plain).starts_with("220 "));
    plain.write_all(b"EHLO client.example.org\r\n").unwrap();
    assert!(read_reply(&mut plain).contains("STARTTLS"));
    plain
        .write_all(b"STARTTLS\r\nMAIL FROM:<planted@example.org>\r\n")
        .unwrap();
    assert!(read_reply(&mut plain).starts_with("220 "));
    let mut tls = tls_client(plain, &pki.ca);
    tls.write_all(b"EHLO client.example.org\r\n").unwrap();
    assert!(read_reply(&mut tls).starts_with("250"));
    // Had the planted MAIL run, this RCPT would be accepted.
    tls.write_all(b"RCPT TO:<bob@example.test>\r\n").unwrap();
    let r = read_reply(&mut tls);
    assert!(
        r.starts_with("503"),
        "the pipelined MAIL ran inside TLS: {r}"
    );
}
