//! STARTTLS in both directions, and AUTH towards the primary. STARTTLS is offered on our
//! listener when a certificate is configured and used towards the primary per
//! `primary.tls`, with certificate verification; AUTH PLAIN/LOGIN when credentials are set.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn listener_offers_starttls_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let extra = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    );
    let sb = Standby::start(fake.port, &extra);
    let t = sb.send("bob@example.test", &["--tls"]);
    assert!(
        t.contains("250-STARTTLS") && t.contains("220 2.0.0 Ready to start TLS"),
        "{t}"
    );
    let id = sb.list("held")[0]["id"].as_str().unwrap().to_string();
    let rec = sb.json(&["show", &id, "--json"]);
    assert_eq!(rec["origin"]["tls"], true);
    let raw = String::from_utf8(sb.cli(&["show", &id, "--raw"]).stdout).unwrap();
    assert!(
        raw.starts_with("Received: from ") && raw.contains("with ESMTPS id"),
        "{raw}"
    );

    // Without a certificate STARTTLS is not offered.
    let plain = Standby::start(fake.port, "");
    let (_, t) = swaks(
        plain.port,
        &[
            "--from",
            "a@example.org",
            "--to",
            "bob@example.test",
            "--quit-after",
            "EHLO",
        ],
    );
    assert!(!t.contains("STARTTLS"), "{t}");
}

/// A Postfix primary offering STARTTLS with a certificate from a test CA. The returned
/// directory holds the PEM files and must live as long as the instance.
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

#[test]
fn drain_uses_verified_starttls_to_the_primary() {
    let (pf, pki, _holder) = tls_primary();
    pf.start();
    // `[primary]` is written by the harness; TLS settings come as overrides.
    let sb = Standby::start_with_env(
        pf.port,
        "",
        &[
            ("STANDBY_PRIMARY_TLS", "required"),
            ("STANDBY_PRIMARY_CA_FILE", pki.ca.to_str().unwrap()),
        ],
    );
    sb.send("bob@example.test", &[]);
    wait_for("delivery over TLS", Duration::from_secs(30), || {
        pf.delivered().len() == 1
    });
    let (head, _) = split_message(&pf.delivered()[0]);
    assert!(head.contains("(using TLS"), "primary saw no TLS:\n{head}");
}

#[test]
fn unverifiable_primary_certificate_is_not_used_when_tls_is_required() {
    let (pf, _pki, _holder) = tls_primary();
    pf.start();
    // No ca_file: the test CA is unknown, so verification must fail and nothing is sent.
    let sb = Standby::start_with_env(pf.port, "", &[("STANDBY_PRIMARY_TLS", "required")]);
    sb.send("bob@example.test", &[]);
    // The probe runs the drain's session: the certificate fails it, so the primary never
    // counts as up, and `status` says why.
    wait_for(
        "a probe failing on the certificate",
        Duration::from_secs(20),
        || {
            let p = &sb.json(&["status", "--json"])["primary"]["last_probe"];
            p["ok"] == false
                && p["detail"]
                    .as_str()
                    .is_some_and(|d| d.to_lowercase().contains("certificate"))
        },
    );
    assert_ne!(sb.json(&["status", "--json"])["primary"]["state"], "up");
    let report = sb.drain_report(&["--force"], 3);
    assert!(
        report["stopped"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{report}"
    );
    assert_eq!(sb.counts()["held"], 1);
    assert!(pf.delivered().is_empty());
}

/// A submission-port fake primary offering `auth`, and a standby configured to log in to it
/// as `standby` with `password` (read from the variable `auth_password_env` names).
fn submission_primary(auth: FakeAuth, password: &str) -> (FakePrimary, Standby) {
    let fake = FakePrimary::start(vec![FakeReply::Submission(auth)]);
    let sb = Standby::start_with_env(
        fake.port,
        "",
        &[
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_PRIMARY_ALLOW_PLAINTEXT_AUTH", "true"),
            ("STANDBY_PRIMARY_AUTH_USER", FAKE_USER),
            ("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "PRIMARY_PW"),
            ("PRIMARY_PW", password),
        ],
    );
    (fake, sb)
}

/// AUTH towards a primary's submission port, without PIPELINING (so the one-command-at-a-
/// time path runs too). Credentials come from the variable `auth_password_env` names.
#[test]
fn drain_authenticates_with_plain_and_login() {
    for auth in [FakeAuth::Plain, FakeAuth::Login] {
        let (fake, sb) = submission_primary(auth, FAKE_PASS);
        sb.send("bob@example.test,carol@example.test", &[]);
        wait_for("delivery with AUTH", Duration::from_secs(30), || {
            sb.counts()["delivered"] == 1
        });
        let log = fake.log.lock().unwrap().clone();
        assert!(
            log.iter()
                .any(|l| l.starts_with("AUTH") && l.ends_with("true")),
            "{auth:?}: {log:?}"
        );
        assert!(
            log.contains(&"MAIL FROM:<a@example.org> BODY=8BITMIME".to_string()),
            "{log:?}"
        );
        assert!(
            log.contains(&"RCPT TO:<carol@example.test>".to_string()),
            "{log:?}"
        );
        assert!(
            // Our Authentication-Results on top, then our Received.
            log.iter().any(
                |l| l.starts_with("DATA Authentication-Results: standby.example.test")
                    && l.contains("\nReceived: from ")
            ),
            "{log:?}"
        );
    }
}

#[test]
fn wrong_password_stops_the_drain_and_keeps_the_mail() {
    let (fake, sb) = submission_primary(FakeAuth::Plain, "wrong");
    sb.send("bob@example.test", &[]);
    // The probe logs in as the drain does: the wrong password fails it, nothing is sent.
    let out = sb.cli(&["drain"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AUTH: 535"), "{err}");
    let report = sb.drain_report(&["--force"], 3);
    assert!(
        report["stopped"].as_str().unwrap().contains("AUTH: 535"),
        "{report}"
    );
    assert_eq!(sb.counts()["held"], 1);
    assert!(
        !fake
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("DATA"))
    );

    // A variable that is not set is a clear error, not an empty password.
    let out = std::process::Command::new(STANDBY)
        .args(["drain", "--config"])
        .arg(&sb.config)
        .env("STANDBY_PRIMARY_AUTH_USER", FAKE_USER)
        .env("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_SET_ANYWHERE"));
}

/// The password never travels without TLS unless the config says so, and never shows
/// in logs or command output.
#[test]
fn no_password_over_plain_text_and_none_in_logs() {
    const PW: &str = "Pw-9f3b1c!never-logged";
    // tls = "none" with AUTH: refused when the config is read.
    let fake = FakePrimary::start(vec![FakeReply::Submission(FakeAuth::Plain)]);
    let sb = Standby::start(fake.port, "");
    let out = std::process::Command::new(STANDBY)
        .args(["status", "--config"])
        .arg(&sb.config)
        .env("STANDBY_PRIMARY_TLS", "none")
        .env("STANDBY_PRIMARY_AUTH_USER", FAKE_USER)
        .env("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "PRIMARY_PW")
        .env("PRIMARY_PW", PW)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow_plaintext_auth"), "{err}");
    drop(sb);

    // Opportunistic TLS against a primary without STARTTLS: the session stays plain, so
    // the standby does not log in and the mail stays held.
    let sb = Standby::start_with_env(
        fake.port,
        "",
        &[
            // The daemon never drains here (the primary never counts as up), so the one
            // attempt is the operator's below.
            ("STANDBY_HEALTH_UP_AFTER", "100000"),
            ("STANDBY_PRIMARY_TLS", "opportunistic"),
            ("STANDBY_PRIMARY_AUTH_USER", FAKE_USER),
            ("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "PRIMARY_PW"),
            ("PRIMARY_PW", PW),
        ],
    );
    sb.send("bob@example.test", &[]);
    let out = std::process::Command::new(STANDBY)
        .args(["drain", "--force", "--json", "--config"])
        .arg(&sb.config)
        .env("STANDBY_PRIMARY_TLS", "opportunistic")
        .env("STANDBY_PRIMARY_AUTH_USER", FAKE_USER)
        .env("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "PRIMARY_PW")
        .env("PRIMARY_PW", PW)
        .env("STANDBY_LOG", "trace")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("without TLS"), "{stdout}\n{stderr}");
    assert_eq!(sb.counts()["held"], 1);
    let log = fake.log.lock().unwrap().join("\n");
    assert!(
        !log.contains("AUTH"),
        "the password was offered in the clear: {log}"
    );
    // Nowhere: drain output, trace-level logs, the daemon's debug log, status --json.
    let status = sb.cli(&["status", "--json"]);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("\0{FAKE_USER}\0{PW}"))
    };
    for (what, text) in [
        ("drain stdout", stdout.to_string()),
        ("drain stderr", stderr.to_string()),
        ("serve log", sb.log()),
        (
            "status",
            String::from_utf8_lossy(&status.stdout).to_string(),
        ),
    ] {
        assert!(
            !text.contains(PW) && !text.contains(&b64),
            "password in {what}: {text}"
        );
    }
}
