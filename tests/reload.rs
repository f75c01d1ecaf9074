//! SIGHUP in `standby serve` (the systemd unit's `ExecReload=`): a renewed certificate is
//! served to new connections while a session opened before finishes its message; an
//! edited recipients file, journal addresses and retention rules apply at once; a broken
//! file (recipients line, certificate, config) is logged with its name (and line) and the
//! running settings stay. The real binary, swaks-style SMTP over a socket, and a rustls
//! client that reports which certificate it was shown. Each reload is confirmed by its log
//! line, never by a sleep.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// An SMTP client over plain TCP or, after STARTTLS, TLS.
struct Client {
    plain: Option<TcpStream>,
    tls: Option<Box<Tls>>,
}

impl Client {
    /// Connect and read the banner.
    fn connect(port: u16) -> Client {
        let mut c = Client {
            plain: Some(connect(port)),
            tls: None,
        };
        let banner = c.reply();
        assert!(banner.starts_with("220 "), "{banner}");
        c
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match (&mut self.tls, &mut self.plain) {
            (Some(t), _) => t.as_mut(),
            (None, Some(p)) => p,
            (None, None) => unreachable!(),
        }
    }

    /// Read one (possibly multi-line) reply.
    fn reply(&mut self) -> String {
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
            let n = self.stream().read(&mut byte).expect("read a reply");
            assert!(n == 1, "connection closed after {text:?}");
            out.push(byte[0]);
        }
    }

    /// Send one command line, return the reply.
    fn cmd(&mut self, line: &str) -> String {
        self.stream()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.stream().flush().unwrap();
        self.reply()
    }

    /// EHLO, STARTTLS, handshake trusting both test CAs; returns the certificate shown.
    fn starttls(&mut self, cas: &[&Path]) -> CertificateDer<'static> {
        assert!(self.cmd("EHLO client.example.org").contains("STARTTLS"));
        let r = self.cmd("STARTTLS");
        assert!(r.starts_with("220 "), "{r}");
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots.add(pem_cert(ca)).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = Box::new(rustls::StreamOwned::new(conn, self.plain.take().unwrap()));
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        let shown = tls.conn.peer_certificates().unwrap()[0].clone();
        self.tls = Some(tls);
        assert!(self.cmd("EHLO client.example.org").starts_with("250"));
        shown
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The first certificate of a PEM file.
fn pem_cert(path: &Path) -> CertificateDer<'static> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
}

/// Replace `dest` the way certbot and editors do: a new file renamed over the old.
fn replace(dest: &Path, contents: &[u8]) {
    let tmp = dest.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// SIGHUP, then wait for one more log line containing `needle` than before; returns
/// that line.
fn hup(sb: &Standby, needle: &str) -> String {
    let count = |log: &str| log.lines().filter(|l| l.contains(needle)).count();
    let before = count(&sb.log());
    sb.signal("HUP");
    wait_for(
        &format!("a log line with `{needle}` after SIGHUP"),
        Duration::from_secs(20),
        || count(&sb.log()) > before,
    );
    let log = sb.log();
    log.lines()
        .filter(|l| l.contains(needle))
        .nth(before)
        .unwrap()
        .to_string()
}

/// The RCPT reply for `rcpt` on a new connection.
fn rcpt(port: u16, rcpt: &str) -> String {
    let mut c = Client::connect(port);
    c.cmd("EHLO client.example.org");
    c.cmd("MAIL FROM:<a@example.org>");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    c.cmd("QUIT");
    r
}

const RELOADED: &str = "reloaded: TLS certificate";
const FAILED: &str = "reload failed; keeping the running settings";

#[test]
fn a_renewed_certificate_is_served_to_new_connections_while_open_sessions_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let (a, b) = (make_pki(&a_dir), make_pki(&b_dir));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&a.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    let sb = Standby::start(
        free_port(),
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let cas = [a.ca.as_path(), b.ca.as_path()];

    // A session opened under certificate A, in the middle of a transaction.
    let mut open = Client::connect(sb.port);
    assert_eq!(open.starttls(&cas), pem_cert(&a.cert));
    assert!(open.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(open.cmd("RCPT TO:<bob@example.test>").starts_with("250"));

    // Renewal: B's files replace A's, then SIGHUP.
    replace(&cert, &std::fs::read(&b.cert).unwrap());
    replace(&key, &std::fs::read(&b.key).unwrap());
    let line = hup(&sb, RELOADED);
    assert!(line.contains(&cert.display().to_string()), "{line}");

    // New connections see B.
    let mut new = Client::connect(sb.port);
    assert_eq!(new.starttls(&cas), pem_cert(&b.cert));
    new.cmd("QUIT");

    // The session opened before the reload still completes its message, over A's TLS.
    assert!(open.cmd("DATA").starts_with("354"));
    let r = open.cmd("Subject: opened before the reload\r\n\r\nstill here\r\n.");
    assert!(r.starts_with("250"), "{r}");
    open.cmd("QUIT");
    assert_eq!(sb.counts()["held"], 1);

    // A certificate file that is not a certificate: logged, and B is still served.
    replace(&cert, b"not a certificate\n");
    let line = hup(&sb, FAILED);
    assert!(
        line.contains("ERROR") && line.contains(&cert.display().to_string()),
        "{line}"
    );
    let mut after = Client::connect(sb.port);
    assert_eq!(after.starttls(&cas), pem_cert(&b.cert));
    after.cmd("QUIT");
}

#[test]
fn recipients_journal_and_retention_rules_reload_and_broken_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let recipients = dir.path().join("recipients.txt");
    std::fs::write(&recipients, "alice@example.test\n").unwrap();
    // Retention runs every second, so a rule that makes mail due shows at once.
    let sb = Standby::start(
        free_port(),
        &format!(
            "recipients = \"{}\"\n[retention]\ninterval_secs = 1\n",
            recipients.display()
        ),
    );
    assert!(rcpt(sb.port, "alice@example.test").starts_with("250"));
    let r = rcpt(sb.port, "bob@example.test");
    assert!(r.starts_with("550 5.1.1"), "{r}");

    // bob is added: accepted after the reload.
    replace(&recipients, b"alice@example.test\nbob@example.test\n");
    let line = hup(&sb, RELOADED);
    assert!(line.contains("recipients=2"), "{line}");
    let r = rcpt(sb.port, "bob@example.test");
    assert!(r.starts_with("250"), "{r}");

    // A broken line (carol added, bob removed): the error names file:line, and the
    // running list (alice, bob) still applies.
    replace(
        &recipients,
        b"alice@example.test\ncarol@example.test\nnot an address\n",
    );
    let line = hup(&sb, FAILED);
    let at = format!("{}:3", recipients.display());
    assert!(line.contains("ERROR") && line.contains(&at), "{line}");
    assert!(rcpt(sb.port, "bob@example.test").starts_with("250"));
    let r = rcpt(sb.port, "carol@example.test");
    assert!(r.starts_with("550 5.1.1"), "{r}");

    // Journal intake, journal copies kept 0 days and a confidential rule, added to the
    // config file.
    let journal = "journal@archive.example.test";
    let r = rcpt(sb.port, journal);
    assert!(r.starts_with("550"), "{r}");
    replace(&recipients, b"alice@example.test\nbob@example.test\n");
    let original = std::fs::read_to_string(&sb.config).unwrap();
    let rules = original.replace(
        "[retention]\ninterval_secs = 1\n",
        "[retention]\ninterval_secs = 1\njournal_days = 0\n\
         [[retention.confidential]]\nname = \"hr\"\nrcpt = \"alice@example.test\"\nkeep_days = 0\n",
    );
    assert_ne!(rules, original);
    let rules = format!("{rules}\n[journal]\naddresses = [\"{journal}\"]\n");
    replace(&sb.config, rules.as_bytes());
    let line = hup(&sb, RELOADED);
    assert!(
        line.contains("journal_addresses=1") && line.contains("retention_rules=1"),
        "{line}"
    );
    // (Logged before the line above when the file changed more than a reload applies.)
    assert!(!sb.log().contains("take effect when"), "{}", sb.log());
    let queued = |t: &str| -> String { queued_id(t) };
    // Filed at receipt under the new confidential rule.
    let id = queued(&sb.send("alice@example.test", &[]));
    let rec = sb.json(&["show", &id, "--json"]);
    assert_eq!(rec["confidential"], "hr", "{rec}");
    // Accepted as a journal copy, then deleted by the running retention loop under the
    // new journal_days = 0, and audited.
    let copy = queued(&sb.send(journal, &[]));
    wait_for(
        "the retention loop to delete the journal copy",
        Duration::from_secs(20),
        || {
            sb.json(&["audit", "--json"])
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["id"] == copy.as_str() && e["action"] == "delete")
        },
    );

    // A config file that no longer parses: named in the log, everything kept.
    replace(
        &sb.config,
        format!("{rules}\nthis is = = not toml\n").as_bytes(),
    );
    let line = hup(&sb, FAILED);
    assert!(
        line.contains("ERROR") && line.contains(&sb.config.display().to_string()),
        "{line}"
    );
    assert!(rcpt(sb.port, journal).starts_with("250"));
    assert!(rcpt(sb.port, "bob@example.test").starts_with("250"));
    // The daemon never stopped.
    assert!(!sb.log().contains("standby stopped"));
}

/// The unit's reload and stop settings: `ExecReload=` sends the SIGHUP tested above,
/// secrets come from an optional environment file, the hardening stays, and
/// `TimeoutStopSec` outlasts serve's graceful stop (10 s for open sessions in
/// `smtp::server::run`, then 15 s for the drain in `serve`). `systemd-analyze verify`
/// must accept the unit without a warning.
#[test]
fn the_systemd_unit_reloads_with_sighup_and_outlasts_the_graceful_stop() {
    require("systemd-analyze", "systemd");
    let unit = std::fs::read_to_string(repo().join("infra/systemd/standby.service")).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=-/etc/standby/standby.env",
        "User=standby",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ReadWritePaths=/var/lib/standby",
    ] {
        assert!(
            lines.contains(&want),
            "infra/systemd/standby.service lacks `{want}`"
        );
    }
    let stop: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in plain seconds");
    let graceful = 10 + 15;
    assert!(
        stop >= graceful + 10,
        "TimeoutStopSec={stop} leaves no room after the {graceful} s graceful stop"
    );

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("standby.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/standby", STANDBY)).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}
