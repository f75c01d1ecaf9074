//! `scripts/deploy` and `scripts/destroy`: what they plan (dry runs need no AWS), how a
//! recipients file becomes the receipt rules' parameters, and the after-deploy steps
//! (`scripts/stack.py after-deploy`) against moto, ending in a `standby doctor` that
//! passes on the config it wrote.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::aws::{Moto, child_env, require_venv_tool, standby_cli};
use common::dns::Dns;
use common::{FakePrimary, FakeReply, repo};

fn script(name: &str, args: &[&str]) -> Output {
    Command::new(repo().join("scripts").join(name))
        .args(args)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `--parameter-overrides` of the planned `sam deploy`, as (key, value).
fn overrides(plan: &str) -> Vec<(String, String)> {
    let line = plan.lines().find(|l| l.contains("sam deploy")).unwrap();
    let after = line.split("--parameter-overrides ").nth(1).unwrap();
    let after = after.trim_end_matches(')');
    after
        .split("\" ")
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

fn write(dir: &Path, name: &str, lines: impl Iterator<Item = String>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.collect::<Vec<_>>().join("\n")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_recipients_file_is_split_over_the_receipt_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "r.txt",
        std::iter::once("# the sales team".to_string())
            .chain((1..=250).map(|n| format!("user{n}@example.com")))
            .chain(["USER1@example.com".into(), "example.org".into()]),
    );
    let out = script(
        "deploy",
        &[
            "--dry-run",
            "--region",
            "eu-west-1",
            "--domains",
            "example.com,example.org",
            "--primary",
            "mail.example.com",
            "--recipients",
            &file,
        ],
    );
    let (plan, err) = text(&out);
    assert!(out.status.success(), "{plan}{err}");
    assert!(plan.contains("dry run, nothing changed"));
    let o = overrides(&plan);
    let get = |k: &str| {
        o.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {o:?}"))
    };
    let count = |k: &str| get(k).split(',').filter(|s| !s.is_empty()).count();
    // 251 distinct conditions (USER1 is user1): 100 + 100 + 51, in file order.
    assert_eq!(
        [
            count("Recipients"),
            count("Recipients2"),
            count("Recipients3")
        ],
        [100, 100, 51]
    );
    assert_eq!(get("Recipients4"), "");
    assert!(get("Recipients").starts_with("user1@example.com,user2@example.com,"));
    assert!(get("Recipients3").ends_with("user250@example.com,example.org"));
    assert_eq!(get("DomainNames"), "example.com,example.org");
    assert_eq!(get("Architecture"), "x86_64");
    assert!(plan.contains("--guided"), "first deploy is guided: {plan}");
    // A re-run with no changes goes on to the after-deploy steps.
    assert!(plan.contains("--no-fail-on-empty-changeset"), "{plan}");
}

#[test]
fn bad_input_is_refused_with_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.txt",
        ["alice@example.com", "", "bob at example.com"]
            .iter()
            .map(|s| s.to_string()),
    );
    let out = script(
        "deploy",
        &["--dry-run", "--region", "us-east-1", "--recipients", &bad],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains(&format!("{bad}:3: `bob at example.com` is not an address")),
        "{err}"
    );

    let many = write(
        dir.path(),
        "many.txt",
        (1..=401).map(|n| format!("u{n}@example.com")),
    );
    let out = script(
        "deploy",
        &["--dry-run", "--region", "us-east-1", "--recipients", &many],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("401 recipients") && err.contains("at most 400"),
        "{err}"
    );

    let out = script("deploy", &["--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--region is required"));
    let out = script("deploy", &["--dry-run", "--region", "x", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("unknown option --frobnicate"));
    // Receipt rules are named <stack>-journal and SES takes 64 characters at most.
    for bad in ["x".repeat(57).as_str(), "1mx", "mx_2"] {
        let out = script(
            "deploy",
            &["--dry-run", "--region", "x", "--stack-name", bad],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(text(&out).1.contains("at most 56 characters"), "{bad}");
    }
    let (plan, _) = text(&script(
        "deploy",
        &[
            "--dry-run",
            "--region",
            "us-east-1",
            "--stack-name",
            &"x".repeat(56),
        ],
    ));
    assert!(plan.contains("sam deploy"), "{plan}");
}

#[test]
fn destroy_keeps_the_mail_unless_told() {
    let (plan, _) = text(&script("destroy", &["--dry-run", "--region", "us-east-1"]));
    assert!(plan.contains("keep the mail bucket"), "{plan}");
    assert!(!plan.contains("DELETE"));
    let (plan, _) = text(&script(
        "destroy",
        &["--dry-run", "--region", "us-east-1", "--delete-bucket"],
    ));
    assert!(plan.contains("DELETE the mail bucket"), "{plan}");
    // Without --yes and without a terminal, nothing happens.
    let out = Command::new(repo().join("scripts/destroy"))
        .args(["--region", "us-east-1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("nothing changed"));
}

/// `scripts/stack.py after-deploy` for the stand-in stack, with no terminal to ask.
fn after_deploy(moto: &Moto, config: &Path, extra: &[&str]) -> Output {
    Command::new(require_venv_tool("python"))
        .arg(repo().join("scripts/stack.py"))
        .args([
            "after-deploy",
            "--stack",
            "standby-mx",
            "--region",
            "us-east-1",
        ])
        .arg("--config-out")
        .arg(config)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .envs(child_env(moto))
        .output()
        .unwrap()
}

#[test]
fn after_deploy_activates_verifies_and_writes_a_config_doctor_accepts() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let primary = FakePrimary::start(vec![FakeReply::Healthy; 8]);
    // Bucket and table as the stack would have them, then the SES rule set (inactive,
    // as CloudFormation leaves it) and a stand-in stack with our outputs.
    let seed = dir.path().join("seed.toml");
    std::fs::write(
        &seed,
        "backend = \"aws\"\nbucket = \"standby-mail\"\ntable = \"standby-mail\"\n\
         hostname = \"standby.example.test\"\n[primary]\naddress = \"127.0.0.1:25\"\n",
    )
    .unwrap();
    assert!(
        standby_cli(&moto, &seed, &["aws-init"], &[])
            .status
            .success()
    );
    let port = primary.port.to_string();
    let out = Command::new(require_venv_tool("python"))
        .arg(repo().join("tests/fixtures/ses-setup.py"))
        .args([moto.url.as_str(), "standby-mail", "example.test"])
        .args([
            "--no-activate",
            "--stack",
            "standby-mx",
            "--also",
            "example.org",
        ])
        .args(["--primary-port", &port])
        .envs(child_env(&moto))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let config = dir.path().join("standby.toml");
    let out = after_deploy(&moto, &config, &["--yes"]);
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    assert!(
        said.contains("activated receipt rule set standby-mx"),
        "{said}"
    );
    assert!(
        said.contains("example.test. MX 20 inbound-smtp.us-east-1.amazonaws.com."),
        "{said}"
    );
    assert!(
        said.contains("._domainkey.example.org. CNAME"),
        "the second domain's DKIM records: {said}"
    );
    assert!(said.contains("SES identity example.org: Success"), "{said}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("backend = \"aws\""), "{written}");
    assert!(written.contains("bucket = \"standby-mail\""), "{written}");
    assert!(
        written.contains(&format!("address = \"127.0.0.1:{port}\"")),
        "{written}"
    );

    // Run again: the set is already active and the config unchanged; nothing is asked.
    let out = after_deploy(&moto, &config, &[]);
    let (said, err) = text(&out);
    assert!(out.status.success(), "{said}{err}");
    assert!(
        said.contains("receipt rule set standby-mx is active"),
        "{said}"
    );

    // The operator's config works: doctor passes the SES and storage checks on it.
    let dns = Dns::start(&[
        ("example.test", 10, "mx1.example.test"),
        ("example.test", 20, "inbound-smtp.us-east-1.amazonaws.com"),
        ("example.org", 10, "mx1.example.org"),
        ("example.org", 20, "inbound-smtp.us-east-1.amazonaws.com"),
    ]);
    let out = standby_cli(
        &moto,
        &config,
        &["doctor", "--json", "--nameserver", &dns.addr()],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    for c in report["checks"].as_array().unwrap() {
        if c["name"] != "bucket" && c["name"] != "primary health" {
            assert_eq!(c["verdict"], "pass", "{c}");
        }
    }
}
