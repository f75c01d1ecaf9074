//! Sending during the outage, with real parts: swaks logs in to the submission listener
//! over STARTTLS; a real Postfix stands for the internet's relay (STARTTLS with a
//! certificate the standby verifies), another for the primary; dkimpy, not mail-auth,
//! checks the DKIM signature against the public key.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::web::{Client, add_user};
use common::{Postfix, Standby, TestPki, free_port, make_pki, repo, require, swaks, wait_for};

/// The internet: a Postfix taking mail for outside.test over STARTTLS.
fn outside_relay(pki: &TestPki) -> Postfix {
    Postfix::primary_with(&[
        "--domain",
        "outside.test",
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ])
}

struct Setup {
    standby: Standby,
    submission: u16,
    web: u16,
    relay: Postfix,
    primary: Postfix,
    dkim_public: std::path::PathBuf,
    ca: std::path::PathBuf,
    _pki_dir: tempfile::TempDir,
}

impl Setup {
    /// A browser-like client of the emergency inbox (HTTPS with the test CA).
    fn inbox(&self, ip: &str) -> Client {
        Client::new(&format!("https://127.0.0.1:{}", self.web), ip).with_ca(&self.ca)
    }
}

/// A standby with a submission listener (plain-text port, STARTTLS), users alice and
/// bob, the outside relay as smarthost, and a primary that is down.
fn setup(extra_outbound: &str, rate: u32) -> Setup {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let common::DkimKey {
        key,
        public_pem: public,
        ..
    } = common::dkim_key(pki_dir.path());
    let relay = outside_relay(&pki);
    relay.start();
    let primary = Postfix::primary();
    let (submission, web) = (free_port(), free_port());
    let extra = format!(
        "[tls]\ncert = \"{cert}\"\nkey = \"{key_pem}\"\n\
         [users]\nfile = \"{{dir}}/users.passwd\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\n\
         [submission]\nlisten = \"127.0.0.1:{submission}\"\nrate_per_hour = {rate}\n\
         [outbound]\nrelay = \"127.0.0.1:{relay_port}\"\nrelay_ca_file = \"{ca}\"\n\
         dkim_selector = \"sel1\"\ndkim_key = \"{dkim}\"\n{extra_outbound}\n",
        cert = pki.cert.display(),
        key_pem = pki.key.display(),
        relay_port = relay.port,
        ca = pki.ca.display(),
        dkim = key.display(),
    );
    let mut standby = Standby::configure(primary.port, &extra, &[]);
    let dir = standby.dir.path().display().to_string();
    let text = std::fs::read_to_string(&standby.config).unwrap();
    std::fs::write(&standby.config, text.replace("{dir}", &dir)).unwrap();
    add_user(&standby, "alice@example.test", "alice-pw");
    add_user(&standby, "bob@example.test", "bob-pw");
    standby.spawn();
    for port in [submission, web] {
        wait_for("the standby to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    Setup {
        standby,
        submission,
        web,
        relay,
        primary,
        dkim_public: public,
        ca: pki.ca.clone(),
        _pki_dir: pki_dir,
    }
}

/// swaks as alice over STARTTLS, with more arguments.
fn send_as(s: &Setup, user: &str, password: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec![
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        user,
        "--auth-password",
        password,
    ];
    all.extend_from_slice(args);
    swaks(s.submission, &all)
}

fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or_default();
    let head = head.split("\n\n").next().unwrap_or_default();
    head.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

fn with_token<'a>(messages: &'a [String], token: &str) -> Vec<&'a String> {
    messages.iter().filter(|m| m.contains(token)).collect()
}

fn texts(pf: &Postfix) -> Vec<String> {
    pf.delivered()
        .into_iter()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

#[test]
fn a_user_sends_out_signed_and_their_mail_reaches_the_primary_once_it_is_back() {
    let s = setup("sent_copy = \"{local}+sent@{domain}\"", 200);
    let token = "sub-token-41f3";
    let attachment = s.standby.dir.path().join("report.bin");
    let blob: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&attachment, &blob).unwrap();
    let (ok, t) = send_as(
        &s,
        "alice@example.test",
        "alice-pw",
        &[
            "--from",
            "alice@example.test",
            "--to",
            "friend@outside.test,bob@example.test",
            "--header",
            &format!("Subject: {token}"),
            "--attach",
            attachment.to_str().unwrap(),
        ],
    );
    assert!(ok, "{t}");
    assert!(t.contains("235 2.7.0"), "{t}");

    // Outside: delivered through the relay, DKIM-signed for example.test, verified by
    // dkimpy with the public key.
    wait_for(
        "the outside relay to get it",
        Duration::from_secs(60),
        || !with_token(&texts(&s.relay), token).is_empty(),
    );
    let out = texts(&s.relay);
    let out = with_token(&out, token);
    assert_eq!(out.len(), 1, "delivered once outside");
    let msg = out[0];
    assert!(
        header(msg, "DKIM-Signature")[0].contains("d=example.test"),
        "{msg}"
    );
    assert!(
        header(msg, "X-Standby-Sent").is_empty(),
        "the sent mark stays home"
    );
    assert_eq!(header(msg, "Delivered-To"), ["friend@outside.test"]);
    let file = s.standby.dir.path().join("outside.eml");
    std::fs::write(&file, msg.as_bytes()).unwrap();
    let v = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/support/dkim_verify.py"))
        .arg(&file)
        .args(["sel1", "example.test"])
        .arg(&s.dkim_public)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // The attachment arrived byte for byte.
    let parsed = mail_parser::MessageParser::new()
        .parse(msg.as_bytes())
        .unwrap();
    let att = parsed.attachments().next().expect("an attachment");
    assert_eq!(att.contents(), &blob[..]);

    // Bob's copy is in his emergency inbox now (the primary is down).
    let bob = s.inbox("127.0.0.7");
    assert_eq!(bob.login("bob@example.test", "bob-pw").status, 303);
    assert!(bob.get("/").text().contains(token), "in bob's inbox");
    // Alice's copy is not in her inbox (it is a copy of what she sent).
    let alice = s.inbox("127.0.0.8");
    assert_eq!(alice.login("alice@example.test", "alice-pw").status, 303);
    assert!(
        !alice.get("/").text().contains(token),
        "not in alice's inbox"
    );

    // The primary comes back: bob's copy and alice's sent copy, each once.
    s.primary.start();
    wait_for(
        "both copies at the primary",
        Duration::from_secs(60),
        || with_token(&texts(&s.primary), token).len() >= 2,
    );
    std::thread::sleep(Duration::from_secs(3));
    let home = texts(&s.primary);
    let home = with_token(&home, token);
    let to = |addr: &str| {
        home.iter()
            .filter(|m| header(m, "Delivered-To") == [addr])
            .collect::<Vec<_>>()
    };
    assert_eq!(to("bob@example.test").len(), 1, "bob's copy once");
    let copies = to("alice+sent@example.test");
    assert_eq!(copies.len(), 1, "alice's sent copy once");
    assert_eq!(header(copies[0], "X-Standby-Sent"), ["yes"]);
    assert!(header(to("bob@example.test")[0], "X-Standby-Sent").is_empty());
    assert_eq!(home.len(), 2, "nothing else: {home:?}");
    assert!(
        s.relay.delivered().len() == 1,
        "the outside copy is not sent again"
    );

    // Audited: who sent, how many recipients.
    let audit = std::fs::read_to_string(s.standby.dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"action\":\"sent\"") && audit.contains("smtp:alice@example.test"),
        "{audit}"
    );
}

#[test]
fn only_logged_in_users_send_and_only_as_themselves() {
    let s = setup("", 3);
    // No AUTH: 530 at MAIL.
    let (ok, t) = swaks(
        s.submission,
        &[
            "--tls",
            "--from",
            "alice@example.test",
            "--to",
            "friend@outside.test",
        ],
    );
    assert!(!ok && t.contains("530 5.7.0"), "{t}");
    // AUTH before TLS: not offered, and refused when tried anyway.
    let mut c = common::connect(s.submission);
    let banner = common::replies(&mut c, 1);
    assert!(banner.starts_with("220"), "{banner}");
    c.write_all(b"EHLO client.test\r\n").unwrap();
    let ehlo = common::replies(&mut c, 1);
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    c.write_all(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==\r\n")
        .unwrap();
    let r = common::replies(&mut c, 1);
    assert!(r.starts_with("538 5.7.11"), "{r}");
    // A wrong password: 535.
    let (ok, t) = send_as(
        &s,
        "alice@example.test",
        "wrong",
        &[
            "--from",
            "alice@example.test",
            "--to",
            "friend@outside.test",
        ],
    );
    assert!(!ok && t.contains("535 5.7.8"), "{t}");
    // Someone else's address in MAIL FROM: 553.
    let (ok, t) = send_as(
        &s,
        "alice@example.test",
        "alice-pw",
        &["--from", "bob@example.test", "--to", "friend@outside.test"],
    );
    assert!(!ok && t.contains("553 5.7.1"), "{t}");
    // Someone else's address in the From header: 553 after the data, nothing sent.
    let (ok, t) = send_as(
        &s,
        "alice@example.test",
        "alice-pw",
        &[
            "--from",
            "alice@example.test",
            "--to",
            "friend@outside.test",
            "--header",
            "From: The CEO <ceo@example.test>",
        ],
    );
    assert!(!ok && t.contains("553 5.7.1"), "{t}");
    // The rate: three messages an hour, counted at MAIL (the refused From above was
    // one), so two more go and the next gets 451 4.7.1.
    for i in 0..2 {
        let (ok, t) = send_as(
            &s,
            "alice@example.test",
            "alice-pw",
            &[
                "--from",
                "alice@example.test",
                "--to",
                "bob@example.test",
                "--header",
                &format!("Subject: rate {i}"),
            ],
        );
        assert!(ok, "message {i}: {t}");
    }
    let (ok, t) = send_as(
        &s,
        "alice@example.test",
        "alice-pw",
        &["--from", "alice@example.test", "--to", "bob@example.test"],
    );
    assert!(!ok && t.contains("451 4.7.1"), "{t}");
    // Bob's quota is his own.
    let (ok, t) = send_as(
        &s,
        "bob@example.test",
        "bob-pw",
        &["--from", "bob@example.test", "--to", "alice@example.test"],
    );
    assert!(ok, "{t}");
    // Nothing of the refused ones went out.
    std::thread::sleep(Duration::from_secs(2));
    assert!(s.relay.delivered().is_empty());
}

#[test]
fn a_refusal_at_the_relay_bounces_into_the_senders_emergency_inbox() {
    let s = setup("", 200);
    s.relay
        .rcpt_replies(&[("nobody@outside.test", "550 5.1.1 no such user here")]);
    s.relay.stop();
    s.relay.start();
    let token = "bounce-token-8d2";
    let (ok, t) = send_as(
        &s,
        "alice@example.test",
        "alice-pw",
        &[
            "--from",
            "alice@example.test",
            "--to",
            "nobody@outside.test",
            "--header",
            &format!("Subject: {token}"),
        ],
    );
    assert!(ok, "{t}");
    let alice = s.inbox("127.0.0.9");
    assert_eq!(alice.login("alice@example.test", "alice-pw").status, 303);
    wait_for("the DSN in alice's inbox", Duration::from_secs(60), || {
        let page = alice.get("/").text();
        page.contains("Undelivered")
            || page.contains("failure notice")
            || page.contains("Delivery Status")
    });
    let failed = s.standby.list("failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].to_string().contains("550 5.1.1"), "{}", failed[0]);
    assert!(s.relay.delivered().is_empty());
}

#[test]
fn direct_mode_delivers_to_the_recipients_mx_and_bounces_a_domain_that_does_not_exist() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let common::DkimKey {
        key,
        public_pem: public,
        ..
    } = common::dkim_key(pki_dir.path());
    // The recipient domain's MX hosts: the preferred one does not answer (nothing
    // listens at 127.0.0.62:25), the second is a real Postfix on port 25 at an address
    // of its own (Postfix listens only on an address an interface has).
    require("ip", "iproute2");
    let added = Command::new("ip")
        .args(["addr", "replace", "127.0.0.61/32", "dev", "lo"])
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let mx = Postfix::at(
        "127.0.0.61",
        25,
        &[
            "--domain",
            "outside.test",
            "--tls-cert",
            pki.cert.to_str().unwrap(),
            "--tls-key",
            pki.key.to_str().unwrap(),
        ],
    );
    mx.start();
    let dns = common::dns::Dns::start_full(
        &[
            ("outside.test", 10, "mx1.outside.test"),
            ("outside.test", 20, "mx2.outside.test"),
        ],
        &[],
        &[
            ("mx1.outside.test", "127.0.0.62"),
            ("mx2.outside.test", "127.0.0.61"),
        ],
    );
    let (submission, web) = (free_port(), free_port());
    let extra = format!(
        "[tls]\ncert = \"{cert}\"\nkey = \"{key_pem}\"\n\
         [users]\nfile = \"{{dir}}/users.passwd\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\n\
         [submission]\nlisten = \"127.0.0.1:{submission}\"\n\
         [outbound]\nmode = \"direct\"\nnameserver = \"{ns}\"\ndirect_allow_private = true\n\
         dkim_selector = \"sel1\"\ndkim_key = \"{dkim}\"\n",
        cert = pki.cert.display(),
        key_pem = pki.key.display(),
        ns = dns.addr(),
        dkim = key.display(),
    );
    let mut standby = Standby::configure(1, &extra, &[]);
    let dir = standby.dir.path().display().to_string();
    let text = std::fs::read_to_string(&standby.config).unwrap();
    std::fs::write(&standby.config, text.replace("{dir}", &dir)).unwrap();
    add_user(&standby, "alice@example.test", "alice-pw");
    standby.spawn();
    for port in [submission, web] {
        wait_for("the standby to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    let token = "direct-token-5a1";
    let (ok, t) = swaks(
        submission,
        &[
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-pw",
            "--from",
            "alice@example.test",
            "--to",
            "friend@outside.test,ghost@nosuch.outside.test",
            "--header",
            &format!("Subject: {token}"),
        ],
    );
    assert!(ok, "{t}");
    wait_for("the MX to get it", Duration::from_secs(60), || {
        !with_token(&texts(&mx), token).is_empty()
    });
    let got = texts(&mx);
    let got = with_token(&got, token);
    assert_eq!(got.len(), 1);
    assert_eq!(header(got[0], "Delivered-To"), ["friend@outside.test"]);
    let file = standby.dir.path().join("direct.eml");
    std::fs::write(&file, got[0].as_bytes()).unwrap();
    let v = Command::new("/usr/bin/python3")
        .arg(repo().join("tests/support/dkim_verify.py"))
        .arg(&file)
        .args(["sel1", "example.test"])
        .arg(&public)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // It went over STARTTLS (Postfix notes the TLS connection).
    assert!(
        mx.maillog().contains("TLS connection established from"),
        "{}",
        mx.maillog()
    );
    // The domain that does not exist: failed at once (550 5.1.2), a DSN to alice.
    let inbox = Client::new(&format!("https://127.0.0.1:{web}"), "127.0.0.10").with_ca(&pki.ca);
    assert_eq!(inbox.login("alice@example.test", "alice-pw").status, 303);
    wait_for("the DSN in alice's inbox", Duration::from_secs(60), || {
        inbox.get("/").text().contains("Undelivered")
    });
    let all = standby.list("outbound");
    assert!(all.is_empty(), "nothing left to send: {all:?}");
    let failed = standby.list("failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let rec = failed[0].to_string();
    assert!(rec.contains("550 5.1.2"), "{rec}");
    assert!(rec.contains("friend@outside.test"), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_mode_sends_through_sesv2_with_raw_content() {
    let moto = common::aws::Moto::start();
    moto.verify_ses_domain("example.test").await;
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let submission = free_port();
    let extra = format!(
        "[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         [users]\nfile = \"{{dir}}/users.passwd\"\n\
         [submission]\nlisten = \"127.0.0.1:{submission}\"\n\
         [outbound]\nmode = \"ses\"\n",
        cert = pki.cert.display(),
        key = pki.key.display(),
    );
    // As a serve node: every request checked against ServeNodePolicy when moto stops.
    // SES's endpoint and region from the config, not the environment (the local
    // backend's only AWS client).
    let env = common::aws::child_env_as(&moto, common::iam::Principal::Serve);
    let env: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL" && k != "AWS_REGION")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut standby = Standby::configure(1, &extra, &env);
    let dir = standby.dir.path().display().to_string();
    let text = std::fs::read_to_string(&standby.config).unwrap();
    std::fs::write(
        &standby.config,
        text.replace("{dir}", &dir).replace(
            "hostname = ",
            &format!(
                "endpoint_url = \"{}\"\nregion = \"us-east-1\"\nhostname = ",
                moto.url
            ),
        ),
    )
    .unwrap();
    add_user(&standby, "alice@example.test", "alice-pw");
    standby.spawn();
    wait_for("the standby to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", submission)).is_ok()
    });
    let token = "ses-token-77c";
    let (ok, t) = tokio::task::spawn_blocking(move || {
        swaks(
            submission,
            &[
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "alice@example.test",
                "--auth-password",
                "alice-pw",
                "--from",
                "alice@example.test",
                "--to",
                "friend@outside.test,\"best friend\"@outside.test",
                "--header",
                &format!("Subject: {token}"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{t}");
    let moto_ref = &moto;
    let mut sent = Vec::new();
    for _ in 0..200 {
        sent = moto_ref.ses_sent();
        if !sent.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent.len(), 1, "one SES send: {sent:?}\n{}", standby.log());
    let m = &sent[0];
    assert_eq!(m["source"], "alice@example.test", "{m}");
    // moto adds the header's To to the envelope's destinations: each one is ours. A
    // quoted local part goes to SES quoted again (one address, not `best friend@...`).
    let dests = m["destinations"].as_array().unwrap();
    assert!(
        dests.iter().any(|d| d == "\"best friend\"@outside.test")
            && dests
                .iter()
                .all(|d| d == "friend@outside.test" || d == "\"best friend\"@outside.test"),
        "{m}"
    );
    let raw = m["raw_data"].as_str().unwrap();
    assert!(raw.contains(&format!("Subject: {token}")), "{raw}");
    assert!(
        !raw.contains("DKIM-Signature"),
        "SES signs, not the standby: {raw}"
    );
    assert!(!raw.contains("X-Standby-Sent"), "{raw}");
    let outbound = standby.list("outbound");
    assert!(outbound.is_empty(), "{outbound:?}");
    let delivered = standby.list("delivered");
    assert!(
        delivered.iter().any(|r| r["rcpt_to"]
            == serde_json::json!(["friend@outside.test", "best friend@outside.test"])),
        "{delivered:?}"
    );
}

/// The smarthost's login: `relay_user` and the password from the variable
/// `relay_password_env` names, AUTH LOGIN as the smarthost offers it; a wrong password
/// keeps the message queued (a refusal of *us*, not of the recipient: no bounce).
#[test]
fn the_smarthost_login_is_used_and_a_wrong_one_bounces_nothing() {
    for (password, accepted) in [(common::FAKE_PASS, true), ("wrong", false)] {
        let smarthost = common::FakePrimary::start(vec![common::FakeReply::Submission(
            common::FakeAuth::Login,
        )]);
        let pki_dir = tempfile::tempdir().unwrap();
        let pki = make_pki(pki_dir.path());
        let submission = free_port();
        let extra = format!(
            "[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             [users]\nfile = \"{{dir}}/users.passwd\"\n\
             [submission]\nlisten = \"127.0.0.1:{submission}\"\n\
             [outbound]\nrelay = \"127.0.0.1:{port}\"\nrelay_tls = \"none\"\n\
             relay_allow_plaintext_auth = true\nrelay_user = \"{user}\"\n\
             relay_password_env = \"RELAY_PW\"\n",
            cert = pki.cert.display(),
            key = pki.key.display(),
            port = smarthost.port,
            user = common::FAKE_USER,
        );
        let mut standby = Standby::configure(1, &extra, &[("RELAY_PW", password)]);
        let dir = standby.dir.path().display().to_string();
        let text = std::fs::read_to_string(&standby.config).unwrap();
        std::fs::write(&standby.config, text.replace("{dir}", &dir)).unwrap();
        add_user(&standby, "alice@example.test", "alice-pw");
        standby.spawn();
        wait_for("the standby to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", submission)).is_ok()
        });
        let (ok, t) = swaks(
            submission,
            &[
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "alice@example.test",
                "--auth-password",
                "alice-pw",
                "--from",
                "alice@example.test",
                "--to",
                "friend@outside.test",
                "--header",
                "Subject: through the smarthost",
            ],
        );
        assert!(ok, "{t}");
        let log = smarthost.log.clone();
        wait_for("a login at the smarthost", Duration::from_secs(30), || {
            log.lock().unwrap().iter().any(|l| l.starts_with("AUTH"))
        });
        if accepted {
            wait_for(
                "the message at the smarthost",
                Duration::from_secs(30),
                || {
                    log.lock()
                        .unwrap()
                        .iter()
                        .any(|l| l.starts_with("DATA") && l.contains("through the smarthost"))
                },
            );
            let lines = log.lock().unwrap().clone();
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("AUTH") && l.ends_with("true")),
                "{lines:?}"
            );
            assert!(
                lines.contains(&"RCPT TO:<friend@outside.test>".to_string()),
                "{lines:?}"
            );
            wait_for("delivered", Duration::from_secs(30), || {
                standby.list("outbound").is_empty()
            });
        } else {
            // Refused at AUTH: the attempt is recorded as ours to fix, nothing sent, the
            // message waits for a fixed login.
            let queued = standby.list("outbound");
            let id = queued
                .first()
                .unwrap_or_else(|| panic!("still queued: {:?}", standby.list("failed")))["id"]
                .as_str()
                .unwrap()
                .to_string();
            wait_for("the attempt recorded", Duration::from_secs(30), || {
                standby.json(&["show", &id, "--json"])["attempts"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
            });
            let rec = standby.json(&["show", &id, "--json"]);
            assert!(rec.to_string().contains("535"), "{rec}");
            let lines = log.lock().unwrap().clone();
            assert!(!lines.iter().any(|l| l.starts_with("DATA")), "{lines:?}");
            assert_eq!(standby.list("outbound").len(), 1);
            assert!(
                standby.list("failed").is_empty(),
                "no bounce for our own login"
            );
        }
        // Nor its AUTH encodings (LOGIN's, PLAIN's).
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let log = standby.log();
        for secret in [
            password.to_string(),
            b64(password),
            b64(&format!("\0{}\0{password}", common::FAKE_USER)),
        ] {
            assert!(!log.contains(&secret), "the password never in the log");
        }
    }
}
