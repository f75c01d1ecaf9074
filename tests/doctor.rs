//! `standby doctor` against real DNS (dnsmasq), a primary that answers SMTP, a real local
//! spool, and moto for SES, S3 and DynamoDB: a good setup passes, and each broken one
//! fails the check that names what is broken (and exits 1).

mod common;

use std::path::Path;
use std::process::Command;

use common::aws::{Moto, child_env, child_env_as, cli_config, require_venv_tool, standby_cli};
use common::dns::Dns;
use common::iam::Principal;
use common::{FakePrimary, FakeReply, STANDBY, Standby, free_port, repo};
use serde_json::Value;

/// (exit code, report) of `standby doctor --json`.
fn doctor(config: &Path, dns: &Dns, env: &[(String, String)]) -> (i32, Value) {
    doctor_with(config, dns, env, &[])
}

/// [`doctor`] with more arguments.
fn doctor_with(config: &Path, dns: &Dns, env: &[(String, String)], args: &[&str]) -> (i32, Value) {
    let out = Command::new(STANDBY)
        .arg("--config")
        .arg(config)
        .args(["doctor", "--json", "--nameserver", &dns.addr()])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn verdict<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))["verdict"]
        .as_str()
        .unwrap()
}

fn failing(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

const GOOD_LOCAL: &[(&str, u16, &str)] = &[
    ("example.test", 10, "mx1.example.test"),
    ("example.test", 20, "standby.example.test"),
];

#[test]
fn local_setup_good_and_broken() {
    let primary = FakePrimary::start(vec![FakeReply::Healthy; 64]);
    // A listener with a certificate for its MX name (the doctor reaches it by --connect
    // and trusts the test CA), so that only what each case breaks fails.
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = common::make_pki_for(pki_dir.path(), &["standby.example.test"], false);
    let standby = Standby::start(
        primary.port,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[doctor]\nca_file = \"{}\"\n",
            pki.cert.display(),
            pki.key.display(),
            pki.ca.display()
        ),
    );
    let connect = format!("127.0.0.1:{}", standby.port);
    let doctor = |config: &Path, dns: &Dns, env: &[(String, String)]| {
        doctor_with(config, dns, env, &["--connect", &connect])
    };
    common::wait_for(
        "the primary to be seen up",
        std::time::Duration::from_secs(20),
        || {
            let out = Command::new(STANDBY)
                .arg("--config")
                .arg(&standby.config)
                .args(["status", "--json"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("\"up\"")
        },
    );

    let good = Dns::start(GOOD_LOCAL);
    // The fake primary offers no STARTTLS: with tls = "opportunistic" the login check
    // warns that mail would cross in the clear; with "none" it passes.
    let (code, report) = doctor(&standby.config, &good, &[]);
    assert_eq!(code, 0, "a warning is not a failure: {report:#}");
    assert_eq!(verdict(&report, "primary login"), "warn");
    let plain = [("STANDBY_PRIMARY_TLS".to_string(), "none".to_string())];
    let (code, report) = doctor(&standby.config, &good, &plain);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true);
    for name in [
        "mx example.test",
        "spool",
        "primary login",
        "primary health",
    ] {
        assert_eq!(verdict(&report, name), "pass", "{name}: {report:#}");
    }

    // MX in the wrong order: the standby would take mail while the primary is up.
    let swapped = Dns::start(&[
        ("example.test", 20, "mx1.example.test"),
        ("example.test", 10, "standby.example.test"),
    ]);
    let (code, report) = doctor(&standby.config, &swapped, &[]);
    assert_eq!(code, 1);
    assert_eq!(failing(&report), ["mx example.test"], "{report:#}");
    let check = &report["checks"][0];
    assert!(
        check["detail"].as_str().unwrap().contains("not higher"),
        "{check}"
    );
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("standby.example.test")
    );

    // The standby was never added to DNS.
    let missing = Dns::start(&[("example.test", 10, "mx1.example.test")]);
    let (code, report) = doctor(&standby.config, &missing, &[]);
    assert_eq!(code, 1);
    assert_eq!(failing(&report), ["mx example.test"], "{report:#}");

    // The table for people names the failing check and its fix too.
    let out = Command::new(STANDBY)
        .arg("--config")
        .arg(&standby.config)
        .args([
            "doctor",
            "--nameserver",
            &missing.addr(),
            "--connect",
            &connect,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.lines()
            .any(|l| l.starts_with("mx example.test") && l.contains("FAIL")),
        "{text}"
    );
    assert!(text.contains("fix: add `example.test. MX"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 check(s) failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No spool where the config points: the spool check fails (and the health it holds).
    let nowhere = standby.dir.path().join("no-such-spool");
    let (code, report) = doctor(
        &standby.config,
        &good,
        &[(
            "STANDBY_DATA_DIR".into(),
            nowhere.to_str().unwrap().to_string(),
        )],
    );
    assert_eq!(code, 1);
    assert_eq!(failing(&report), ["spool", "primary health"], "{report:#}");

    // The primary does not answer where the drain would deliver.
    let closed = free_port();
    let (code, report) = doctor(
        &standby.config,
        &good,
        &[(
            "STANDBY_PRIMARY_ADDRESS".into(),
            format!("127.0.0.1:{closed}"),
        )],
    );
    assert_eq!(code, 1);
    assert_eq!(failing(&report), ["primary login"], "{report:#}");
}

/// Bucket and table by `standby aws-init`, SES by the fixture script with `flags`.
fn aws_setup(moto: &Moto, dir: &Path, flags: &[&str]) -> std::path::PathBuf {
    let primary_port = free_port();
    let config = cli_config(dir, "standby-mail", primary_port);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("hostname = ", "domains = [\"example.test\"]\nhostname = "),
    )
    .unwrap();
    let out = standby_cli(moto, &config, &["aws-init"], &[]);
    assert!(out.status.success(), "{out:?}");
    let python = require_venv_tool("python");
    let out = Command::new(python)
        .arg(repo().join("tests/fixtures/ses-setup.py"))
        .args([moto.url.as_str(), "standby-mail", "example.test"])
        .args(flags)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    config
}

/// The moto environment, with the primary at `port`.
fn moto_env(moto: &Moto, port: u16) -> Vec<(String, String)> {
    let mut env = child_env_as(moto, Principal::Operator);
    env.push((
        "STANDBY_PRIMARY_ADDRESS".into(),
        format!("127.0.0.1:{port}"),
    ));
    env
}

const GOOD_AWS: &[(&str, u16, &str)] = &[
    ("example.test", 10, "mx1.example.test"),
    ("example.test", 20, "inbound-smtp.us-east-1.amazonaws.com"),
];

#[test]
fn aws_setup_good_and_broken() {
    let dns = Dns::start(GOOD_AWS);

    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = aws_setup(&moto, dir.path(), &[]);
    let primary = FakePrimary::start(vec![FakeReply::Healthy; 8]);
    let env = moto_env(&moto, primary.port);
    let (code, report) = doctor(&config, &dns, &env);
    assert_eq!(code, 0, "{report:#}");
    for name in [
        "mx example.test",
        "ses identity example.test",
        "receipt rules",
        "table",
        "primary login",
    ] {
        assert_eq!(verdict(&report, name), "pass", "{name}: {report:#}");
    }
    // moto answers GetBucketVersioning with a `GetBucketVersioningResponse` root where
    // S3 sends `VersioningConfiguration`, which the SDK rejects: the check says it could
    // not tell (a warning), and nothing else about the bucket is wrong.
    let bucket = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bucket")
        .unwrap();
    let detail = bucket["detail"].as_str().unwrap();
    assert_eq!(bucket["verdict"], "warn", "{bucket}");
    assert!(
        detail.contains("versioning unknown") && detail.contains("GetBucketVersioningResponse"),
        "{detail}"
    );
    assert!(!detail.contains("public access"), "{detail}");
    // No drain has run yet: the health state is unknown, which is a warning.
    assert_eq!(verdict(&report, "primary health"), "warn");

    // Unverified domain, rule set never activated, scanning off: one moto each.
    for (flag, check) in [
        ("--no-verify", "ses identity example.test"),
        ("--no-activate", "receipt rules"),
    ] {
        let moto = Moto::start();
        let dir = tempfile::tempdir().unwrap();
        let config = aws_setup(&moto, dir.path(), &[flag]);
        let env = moto_env(&moto, primary.port);
        let (code, report) = doctor(&config, &dns, &env);
        assert_eq!(code, 1, "{flag}: {report:#}");
        assert_eq!(failing(&report), [check], "{flag}: {report:#}");
    }
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = aws_setup(&moto, dir.path(), &["--no-scan"]);
    let (code, report) = doctor(&config, &dns, &child_env_as(&moto, Principal::Operator));
    assert_eq!(verdict(&report, "receipt rules"), "warn", "{report:#}");
    // The primary in this config is a closed port: that fails, and nothing else does.
    assert_eq!(code, 1);
    assert_eq!(failing(&report), ["primary login"], "{report:#}");

    // SES inbound is not the standby in DNS.
    let wrong = Dns::start(&[
        ("example.test", 10, "mx1.example.test"),
        ("example.test", 20, "backup.example.test"),
    ]);
    let (_, report) = doctor(&config, &wrong, &child_env_as(&moto, Principal::Operator));
    assert_eq!(verdict(&report, "mx example.test"), "fail");
    assert!(
        report["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("inbound-smtp.us-east-1.amazonaws.com is not an MX host"),
        "{report:#}"
    );
}

/// The login check opens the session the drain would: STARTTLS verified against the
/// configured CA (real Postfix), AUTH with the configured password (fake submission port).
#[test]
fn primary_login_checks_starttls_and_auth_as_configured() {
    let dns = Dns::start(GOOD_LOCAL);
    let holder = tempfile::tempdir().unwrap();
    let pki = common::make_pki(holder.path());
    let pf = common::Postfix::primary_with(&[
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.key.to_str().unwrap(),
    ]);
    pf.start();
    let standby = Standby::start(pf.port, "");
    let login = |env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (_, report) = doctor(&standby.config, &dns, &env);
        let c = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "primary login")
            .unwrap()
            .clone();
        (
            c["verdict"].as_str().unwrap().to_string(),
            c["detail"].as_str().unwrap().to_string(),
        )
    };
    let ca = pki.ca.to_str().unwrap();
    let (v, d) = login(&[
        ("STANDBY_PRIMARY_TLS", "required"),
        ("STANDBY_PRIMARY_CA_FILE", ca),
    ]);
    assert_eq!(v, "pass", "{d}");
    assert!(d.contains("STARTTLS, no AUTH configured"), "{d}");
    // The test CA unknown: the certificate does not verify, and the drain would refuse.
    let (v, d) = login(&[("STANDBY_PRIMARY_TLS", "required")]);
    assert_eq!(v, "fail", "{d}");
    assert!(d.to_lowercase().contains("certificate"), "{d}");

    let sub = FakePrimary::start(vec![FakeReply::Submission(common::FakeAuth::Plain); 4]);
    let addr = format!("127.0.0.1:{}", sub.port);
    let auth = |password: &str| {
        login(&[
            ("STANDBY_PRIMARY_ADDRESS", addr.as_str()),
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_PRIMARY_ALLOW_PLAINTEXT_AUTH", "true"),
            ("STANDBY_PRIMARY_AUTH_USER", common::FAKE_USER),
            ("STANDBY_PRIMARY_AUTH_PASSWORD_ENV", "PRIMARY_PW"),
            ("PRIMARY_PW", password),
        ])
    };
    let (v, d) = auth(common::FAKE_PASS);
    assert_eq!(v, "pass", "{d}");
    assert!(d.contains(&format!("AUTH as {}", common::FAKE_USER)), "{d}");
    let (v, d) = auth("xyzzy-not-it-42");
    assert_eq!(v, "fail", "{d}");
    assert!(d.contains("535"), "the primary's refusal is shown: {d}");
    assert!(
        !d.contains("xyzzy-not-it-42"),
        "the password never appears: {d}"
    );
}

/// `[metrics] alarm_topic` (scripts/deploy writes the stack's `AlarmTopic` there): the
/// doctor fails while the topic has no confirmed subscription, since then no alarm
/// reaches anyone, and passes once an address is subscribed. (moto confirms every
/// subscription at once, so the pending case is not exercised here.)
#[test]
fn the_alarm_topic_needs_a_confirmed_subscription() {
    let dns = Dns::start(GOOD_AWS);
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = aws_setup(&moto, dir.path(), &[]);
    let primary = FakePrimary::start(vec![FakeReply::Healthy; 16]);
    let env = moto_env(&moto, primary.port);
    let sns = |args: &[&str]| {
        let out = Command::new(require_venv_tool("python"))
            .args([
                "-c",
                "import boto3, sys\n\
                 c = boto3.client('sns', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
                 if sys.argv[2] == 'topic': print(c.create_topic(Name='standby-alarms')['TopicArn'])\n\
                 else: c.subscribe(TopicArn=sys.argv[3], Protocol='email', Endpoint=sys.argv[4])",
                moto.url.as_str(),
            ])
            .args(args)
            .envs(child_env(&moto))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let topic = sns(&["topic"]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[metrics]\nalarm_topic = \"{topic}\"\n"),
    )
    .unwrap();
    let (code, report) = doctor(&config, &dns, &env);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(failing(&report), ["alarm subscription"], "{report:#}");
    assert!(
        report.to_string().contains("has no subscription"),
        "{report:#}"
    );
    // Only an address the primary receives for: a warning (alarms would wait in the
    // standby during the outage they report).
    sns(&["subscribe", &topic, "postmaster@example.test"]);
    let (code, report) = doctor(&config, &dns, &env);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(verdict(&report, "alarm subscription"), "warn", "{report:#}");
    sns(&["subscribe", &topic, "oncall@example.net"]);
    let (code, report) = doctor(&config, &dns, &env);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(verdict(&report, "alarm subscription"), "pass");
    assert!(
        report.to_string().contains("email oncall@example.net"),
        "{report:#}"
    );
}

#[test]
fn sending_checks_spf_dkim_and_the_smarthost() {
    let primary = FakePrimary::start(vec![FakeReply::Healthy; 64]);
    let dir = tempfile::tempdir().unwrap();
    let common::DkimKey { key, p, .. } = common::dkim_key(dir.path());
    let standby = Standby::configure(
        primary.port,
        &format!(
            "[outbound]\nmode = \"direct\"\ndkim_selector = \"sel1\"\ndkim_key = \"{}\"\n",
            key.display()
        ),
        &[],
    );
    let good_txt = [
        ("example.test", "v=spf1 a:standby.example.test -all"),
        (
            "sel1._domainkey.example.test",
            &*format!("v=DKIM1; k=rsa; p={p}"),
        ),
    ];
    let hosts = [("standby.example.test", "127.0.0.1")];
    let good = Dns::start_full(GOOD_LOCAL, &good_txt, &hosts);
    let (_, report) = doctor(&standby.config, &good, &[]);
    assert_eq!(verdict(&report, "spf example.test"), "pass", "{report:#}");
    assert_eq!(
        verdict(&report, "dkim sel1._domainkey.example.test"),
        "pass",
        "{report:#}"
    );

    // SPF that does not allow this host; a DKIM record with another key.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let wrong_p = common::dkim_key(&other).p;
    let bad_txt = [
        ("example.test", "v=spf1 ip4:192.0.2.1 -all"),
        (
            "sel1._domainkey.example.test",
            &*format!("v=DKIM1; k=rsa; p={wrong_p}"),
        ),
    ];
    let bad = Dns::start_full(GOOD_LOCAL, &bad_txt, &hosts);
    let (code, report) = doctor(&standby.config, &bad, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "spf example.test"), "fail", "{report:#}");
    assert_eq!(
        verdict(&report, "dkim sel1._domainkey.example.test"),
        "fail",
        "{report:#}"
    );
    // Not published at all.
    let none = Dns::start_full(GOOD_LOCAL, &good_txt[..1], &hosts);
    let (_, report) = doctor(&standby.config, &none, &[]);
    assert_eq!(
        verdict(&report, "dkim sel1._domainkey.example.test"),
        "fail",
        "{report:#}"
    );

    // A smarthost: its login is checked (a relay that answers, then one that does not).
    let relay = FakePrimary::start(vec![FakeReply::Healthy; 8]);
    let env = [
        ("STANDBY_OUTBOUND_MODE".to_string(), "relay".to_string()),
        (
            "STANDBY_OUTBOUND_RELAY".to_string(),
            format!("127.0.0.1:{}", relay.port),
        ),
        ("STANDBY_OUTBOUND_RELAY_TLS".to_string(), "none".to_string()),
    ];
    let (_, report) = doctor(&standby.config, &good, &env);
    assert_eq!(verdict(&report, "outbound relay"), "pass", "{report:#}");
    assert_eq!(verdict(&report, "spf example.test"), "warn", "{report:#}");
    let dead = [
        ("STANDBY_OUTBOUND_MODE".to_string(), "relay".to_string()),
        (
            "STANDBY_OUTBOUND_RELAY".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ),
        ("STANDBY_OUTBOUND_RELAY_TLS".to_string(), "none".to_string()),
    ];
    let (code, report) = doctor(&standby.config, &good, &dead);
    assert_eq!(code, 1);
    assert_eq!(verdict(&report, "outbound relay"), "fail", "{report:#}");
}

/// With SES as the way out, the doctor asks SES (SESv2 GetAccount) whether the account
/// may send to anyone: in the sandbox only verified addresses get mail, paused it sends
/// nothing, and either fails the check that names it.
#[test]
fn ses_sending_fails_in_the_sandbox_and_when_paused() {
    let dns = Dns::start(GOOD_AWS);
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = aws_setup(&moto, dir.path(), &[]);
    let primary = FakePrimary::start(vec![FakeReply::Healthy; 8]);
    let env = moto_env(&moto, primary.port);
    // Not sending through SES in this config: the sandbox is worth a warning only.
    let (_, report) = doctor(&config, &dns, &env);
    assert_eq!(verdict(&report, "ses sending"), "warn", "{report:#}");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[outbound]\nmode = \"ses\"\n")).unwrap();
    let detail = |report: &Value| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "ses sending")
            .map(|c| c["detail"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };

    // A new account: in the sandbox.
    let (code, report) = doctor(&config, &dns, &env);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "ses sending"), "fail", "{report:#}");
    assert!(detail(&report).contains("SES sandbox"), "{report:#}");

    moto.set_ses_account(serde_json::json!({
        "ProductionAccessEnabled": true,
        "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 3.0}
    }));
    let (_, report) = doctor(&config, &dns, &env);
    assert_eq!(verdict(&report, "ses sending"), "pass", "{report:#}");
    assert!(
        detail(&report).contains("50000 messages a day"),
        "{report:#}"
    );
    moto.set_ses_account(serde_json::json!({"EnforcementStatus": "PROBATION"}));
    let (_, report) = doctor(&config, &dns, &env);
    assert_eq!(verdict(&report, "ses sending"), "warn", "{report:#}");
    assert!(detail(&report).contains("probation"), "{report:#}");

    moto.set_ses_account(serde_json::json!({
        "SendingEnabled": false,
        "EnforcementStatus": "SHUTDOWN"
    }));
    let (code, report) = doctor(&config, &dns, &env);
    assert_eq!(code, 1);
    assert_eq!(verdict(&report, "ses sending"), "fail", "{report:#}");
    assert!(detail(&report).contains("paused"), "{report:#}");
    assert!(detail(&report).contains("SHUTDOWN"), "{report:#}");
}

/// The recipients and users files are copies of the primary's lists: one older than
/// `[doctor] max_list_age_days` (7 by default) is a warning naming the file and its age,
/// not a failure; a newer one passes; the limit is the config's.
#[test]
fn stale_recipients_and_users_files_warn() {
    let dir = tempfile::tempdir().unwrap();
    let recipients = dir.path().join("recipients");
    let users = dir.path().join("users.passwd");
    std::fs::write(&recipients, "alice@example.test\n").unwrap();
    std::fs::write(&users, "").unwrap();
    let config = dir.path().join("standby.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "hostname = \"standby.example.test\"\ndomains = [\"example.test\"]\n\
                 data_dir = \"{}\"\nrecipients = \"{}\"\n[primary]\naddress = \"127.0.0.1:{}\"\n\
                 [users]\nfile = \"{}\"\n{extra}",
                dir.path().join("data").display(),
                recipients.display(),
                free_port(),
                users.display()
            ),
        )
        .unwrap()
    };
    write("");
    let dns = Dns::start(GOOD_LOCAL);
    let (_, report) = doctor(&config, &dns, &[]);
    assert_eq!(verdict(&report, "recipients file"), "pass", "{report:#}");
    assert_eq!(verdict(&report, "users file"), "pass", "{report:#}");

    let ten_days = std::time::Duration::from_secs(10 * 86_400);
    let old = std::time::SystemTime::now() - ten_days;
    std::fs::File::options()
        .write(true)
        .open(&recipients)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (_, report) = doctor(&config, &dns, &[]);
    assert_eq!(verdict(&report, "recipients file"), "warn", "{report:#}");
    assert_eq!(verdict(&report, "users file"), "pass", "{report:#}");
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "recipients file")
        .unwrap();
    assert!(
        check["detail"].as_str().unwrap().contains("10 days ago")
            && check["fix"].as_str().unwrap().contains("in sync"),
        "{check}"
    );
    write("[doctor]\nmax_list_age_days = 30\n");
    let (_, report) = doctor(&config, &dns, &[]);
    assert_eq!(verdict(&report, "recipients file"), "pass", "{report:#}");
}

/// An HTTPS server for MTA-STS policies (rustls, the test CA's certificate): `policies`
/// maps a host name to the body it serves at `/.well-known/mta-sts.txt`; anything else
/// is a 404. Runs until the test process ends.
fn policy_server(pki: &common::TestPki, policies: Vec<(&'static str, &'static str)>) -> u16 {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let pem = |p: &Path| std::io::BufReader::new(std::fs::File::open(p).unwrap());
    let chain: Vec<_> = rustls_pemfile::certs(&mut pem(&pki.cert))
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut pem(&pki.key))
        .unwrap()
        .unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req).to_ascii_lowercase();
            let host = req
                .lines()
                .find_map(|l| l.strip_prefix("host: "))
                .map(|h| h.split(':').next().unwrap_or_default().trim().to_string())
                .unwrap_or_default();
            let found = policies.iter().find(|(h, _)| *h == host);
            let resp = match found {
                Some((_, body)) if req.starts_with("get /.well-known/mta-sts.txt ") => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                ),
                _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string(),
            };
            let _ = tls.write_all(resp.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    port
}

/// MTA-STS, TLS-RPT, the listener's certificate and DANE, against dnsmasq (the records),
/// a local HTTPS server with a test CA (the policies) and `standby serve` itself (the
/// certificate): a standby listed in an `enforce` policy passes, one missing from it fails,
/// `testing` mode warns, a short `max_age` warns, a domain without TLS-RPT warns, an
/// expired certificate and a listener without STARTTLS fail, and TLSA records in a zone the
/// resolver does not vouch for are reported as ignored.
#[test]
fn mta_sts_tls_rpt_certificate_and_dane_are_checked_as_senders_see_them() {
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "standby.example.test",
        "mta-sts.listed.test",
        "mta-sts.unlisted.test",
        "mta-sts.testing.test",
        "mta-sts.short.test",
        "mta-sts.broken.test",
    ];
    for sub in ["good", "expired"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let good = common::make_pki_for(&dir.path().join("good"), &names, false);
    let expired = common::make_pki_for(&dir.path().join("expired"), &names[..1], true);
    let https = policy_server(
        &good,
        vec![
            (
                "mta-sts.listed.test",
                "version: STSv1\r\nmode: enforce\r\nmx: mx1.listed.test\r\nmx: *.example.test\r\nmax_age: 1209600\r\n",
            ),
            (
                "mta-sts.unlisted.test",
                "version: STSv1\r\nmode: enforce\r\nmx: mx1.unlisted.test\r\nmax_age: 604800\r\n",
            ),
            (
                "mta-sts.testing.test",
                "version: STSv1\nmode: testing\nmx: mx1.testing.test\nmax_age: 604800\n",
            ),
            (
                "mta-sts.short.test",
                "version: STSv1\nmode: enforce\nmx: standby.example.test\nmax_age: 300\n",
            ),
        ],
    );
    let domains = [
        "listed.test",
        "unlisted.test",
        "testing.test",
        "short.test",
        "broken.test",
        "nosts.test",
        "badid.test",
    ];
    let mut txt: Vec<(String, String)> = Vec::new();
    let mut hosts = Vec::new();
    for d in &domains[..5] {
        txt.push((format!("_mta-sts.{d}"), "v=STSv1; id=20261206".into()));
        hosts.push((format!("mta-sts.{d}"), "127.0.0.1"));
    }
    // An id with hyphens: senders discard the record and keep their cached policy.
    txt.push((
        "_mta-sts.badid.test".into(),
        "v=STSv1; id=2026-12-06".into(),
    ));
    txt.push((
        "_smtp._tls.listed.test".into(),
        "v=TLSRPTv1; rua=mailto:tls@listed.test".into(),
    ));
    hosts.push(("standby.example.test".into(), "127.0.0.1"));
    let txt_refs: Vec<(&str, &str)> = txt.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let host_refs: Vec<(&str, &str)> = hosts.iter().map(|(a, b)| (a.as_str(), *b)).collect();
    let mx: Vec<(&str, u16, &str)> = domains
        .iter()
        .flat_map(|d| {
            [
                (*d, 10, "mx1.example.test"),
                (*d, 20, "standby.example.test"),
            ]
        })
        .collect();
    // A TLSA record that matches nothing, in a zone dnsmasq cannot sign.
    let tlsa = format!("030101{}", "00".repeat(32));
    let dns = Dns::start_records(
        &mx,
        &txt_refs,
        &host_refs,
        &[],
        &[("_25._tcp.standby.example.test", 52, tlsa)],
    );

    let primary = FakePrimary::start(vec![FakeReply::Healthy; 64]);
    let tls = |pki: &common::TestPki| {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[doctor]\nca_file = \"{}\"\n",
            pki.cert.display(),
            pki.key.display(),
            good.ca.display()
        )
    };
    let joined = domains.join(",");
    let env = [("STANDBY_DOMAINS", joined.as_str())];
    let standby = Standby::start_with_env(primary.port, &tls(&good), &env);
    let run = |sb: &Standby| {
        let connect = format!("127.0.0.1:{}", sb.port);
        let https = https.to_string();
        doctor_with(
            &sb.config,
            &dns,
            &[("STANDBY_DOMAINS".to_string(), domains.join(","))],
            &["--connect", &connect, "--https-port", &https],
        )
    };
    let (_, report) = run(&standby);
    let expect = [
        ("mta-sts listed.test", "pass"),
        ("mta-sts max_age listed.test", "pass"),
        ("mta-sts unlisted.test", "fail"),
        ("mta-sts testing.test", "warn"),
        ("mta-sts short.test", "pass"),
        ("mta-sts max_age short.test", "warn"),
        ("mta-sts broken.test", "fail"),
        ("mta-sts nosts.test", "pass"),
        ("mta-sts badid.test", "fail"),
        ("tls-rpt listed.test", "pass"),
        ("tls-rpt unlisted.test", "warn"),
        ("tls standby.example.test", "pass"),
        ("tls expiry standby.example.test", "pass"),
        ("dane standby.example.test", "warn"),
    ];
    for (name, want) in expect {
        assert_eq!(verdict(&report, name), want, "{name}: {report:#}");
    }
    let detail = |report: &Value, name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        detail(&report, "dane standby.example.test").starts_with("TLSA ignored: zone unsigned"),
        "{report:#}"
    );
    assert!(
        detail(&report, "mta-sts unlisted.test").contains("enforce mode without the standby"),
        "{report:#}"
    );
    assert!(
        detail(&report, "mta-sts broken.test").contains("HTTP 404"),
        "{report:#}"
    );

    // The same listener with an expired certificate, and one without any.
    let old = Standby::start_with_env(primary.port, &tls(&expired), &env);
    let (code, report) = run(&old);
    assert_eq!(code, 1);
    assert_eq!(
        verdict(&report, "tls standby.example.test"),
        "fail",
        "{report:#}"
    );
    assert_eq!(
        verdict(&report, "tls expiry standby.example.test"),
        "fail",
        "{report:#}"
    );
    let plain = Standby::start_with_env(
        primary.port,
        &format!("[doctor]\nca_file = \"{}\"\n", good.ca.display()),
        &env,
    );
    let (_, report) = run(&plain);
    assert_eq!(
        verdict(&report, "tls standby.example.test"),
        "fail",
        "{report:#}"
    );
    assert!(
        detail(&report, "tls standby.example.test").contains("offers no STARTTLS"),
        "{report:#}"
    );
}
