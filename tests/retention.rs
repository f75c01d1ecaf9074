//! Retention through `standby serve` and the operator command: the policy deletes
//! exactly what it says, nothing under legal hold, and every deletion and hold is in the
//! audit log.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

const POLICY: &str = r#"[journal]
addresses = ["journal@archive.example.test"]
[retention]
delivered_days = 7
journal_days = 30
interval_secs = 3600
[[retention.confidential]]
name = "hr"
rcpt = "hr@example.test"
keep_days = 0
[[retention.confidential]]
name = "classified"
header = "X-Classification: confidential"
keep_days = 0
"#;

fn journal(sb: &Standby, original: &str, subject: &str, extra: &[&str]) {
    let to = format!(
        "journal+{}@archive.example.test",
        original.replace('@', "=")
    );
    let header = format!("Subject: {subject}");
    let args = [
        &["--from", "alice@example.org", "--to", &to][..],
        &["--header", &header],
        extra,
    ]
    .concat();
    let (ok, t) = swaks(sb.port, &args);
    assert!(ok, "{t}");
}

/// Subject → id of every message in the spool.
fn ids(sb: &Standby) -> HashMap<String, String> {
    sb.list("all")
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn audit(sb: &Standby) -> Vec<(String, String, String)> {
    let entries = sb.json(&["audit", "--json"]);
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("action"), s("id"), s("reason"))
        })
        .collect()
}

#[test]
fn retention_deletes_what_the_policy_says_never_a_legal_hold_and_audits_it() {
    let mut sb = Standby::start(free_port(), POLICY);
    journal(&sb, "bob@example.test", "j1 plain", &[]);
    journal(&sb, "hr@example.test", "j2 hr", &[]);
    journal(&sb, "hr@example.test", "j3 hr on hold", &[]);
    journal(
        &sb,
        "bob@example.test",
        "j4 classified",
        &["--header", "X-Classification: Confidential (board)"],
    );
    sb.send("bob@example.test", &["--header", "Subject: h1 held"]);
    let id = ids(&sb);
    assert_eq!(id.len(), 5);
    assert_eq!(sb.counts()["journal"], 4);

    let o = sb.cli(&[
        "hold",
        "--legal",
        &id["j3 hr on hold"],
        "--reason",
        "case 7",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = sb.json(&["show", &id["j3 hr on hold"], "--json"]);
    assert_eq!(shown["legal_hold"]["reason"], "case 7", "{shown}");

    // Now: the confidential copies are due; the one on hold is listed as kept.
    sb.wait_published();
    let plan = sb.json(&["retention", "--dry-run", "--json"]);
    let mut planned: Vec<(String, bool)> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_string(),
                d["legal_hold"] == true,
            )
        })
        .collect();
    planned.sort();
    let mut want = vec![
        (id["j2 hr"].clone(), false),
        (id["j3 hr on hold"].clone(), true),
        (id["j4 classified"].clone(), false),
    ];
    want.sort();
    assert_eq!(planned, want, "{plan}");

    let r = sb.json(&["retention", "--json"]);
    assert_eq!(
        (r["deleted"].clone(), r["held_back"].clone()),
        (2.into(), 1.into()),
        "{r}"
    );
    let left = ids(&sb);
    assert!(!left.contains_key("j2 hr") && !left.contains_key("j4 classified"));
    for gone in ["j2 hr", "j4 classified"] {
        assert!(
            !sb.messages_dir()
                .join(format!("{}.spool", id[gone]))
                .exists()
        );
    }

    // 40 days on: the plain journal copy is past journal_days; held mail is never
    // retention's to delete; the legal hold still stands.
    let r = sb.json(&["retention", "--at", "+40d", "--json"]);
    assert_eq!(
        (r["deleted"].clone(), r["held_back"].clone()),
        (1.into(), 1.into()),
        "{r}"
    );
    let mut left: Vec<String> = ids(&sb).into_keys().collect();
    left.sort();
    assert_eq!(left, ["h1 held", "j3 hr on hold"]);

    let o = sb.cli(&["purge", &id["j3 hr on hold"], "--yes"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("legal hold"));
    assert!(
        sb.messages_dir()
            .join(format!("{}.spool", id["j3 hr on hold"]))
            .exists()
    );

    let log = audit(&sb);
    let want = vec![
        (
            "legal-hold".to_string(),
            id["j3 hr on hold"].clone(),
            "case 7".to_string(),
        ),
        (
            "delete".into(),
            id["j2 hr"].clone(),
            "confidential rule hr".into(),
        ),
        (
            "delete".into(),
            id["j4 classified"].clone(),
            "confidential rule classified".into(),
        ),
        (
            "delete".into(),
            id["j1 plain"].clone(),
            "journal_days = 30".into(),
        ),
    ];
    assert_eq!(log, want);

    // Released, it goes at the next run.
    let o = sb.cli(&[
        "release",
        "--legal",
        &id["j3 hr on hold"],
        "--reason",
        "case closed",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = sb.json(&["retention", "--json"]);
    assert_eq!(r["deleted"], 1, "{r}");
    let log = audit(&sb);
    assert_eq!(log.len(), 6);
    assert_eq!(log[4].0, "legal-release");
    assert_eq!(
        (log[5].0.as_str(), &log[5].1),
        ("delete", &id["j3 hr on hold"])
    );

    // The serve loop applies the policy by itself.
    sb.terminate();
    sb.env_set("STANDBY_RETENTION_INTERVAL_SECS", "1");
    sb.spawn();
    journal(&sb, "hr@example.test", "j5 hr", &[]);
    wait_for(
        "the serve loop to apply retention",
        Duration::from_secs(15),
        || sb.counts()["journal"] == 0,
    );
    let log = audit(&sb);
    assert_eq!(log.len(), 7);
    assert_eq!(log[6].2, "confidential rule hr");
    let entries: Value = sb.json(&["audit", "--json"]);
    assert_eq!(entries[6]["by"], "retention");
    assert_eq!(
        entries[0]["by"].as_str().unwrap().split(':').next(),
        Some("operator")
    );
}

#[test]
fn a_legal_hold_by_recipient_and_time_and_a_bad_policy_named() {
    let sb = Standby::start(free_port(), POLICY);
    sb.send("bob@example.test", &["--header", "Subject: a"]);
    sb.send("carol@example.test", &["--header", "Subject: b"]);
    let o = sb.cli(&[
        "hold",
        "--legal",
        "--rcpt",
        "carol@example.test",
        "--since",
        "1h",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let held: Vec<Value> = sb
        .list("all")
        .into_iter()
        .filter(|m| {
            sb.json(&["show", m["id"].as_str().unwrap(), "--json"])["legal_hold"].is_object()
        })
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["subject"], "b");
    let o = sb.cli(&["hold", "--legal"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "no messages named is a usage error"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "domains = [\"example.test\"]\nhostname = \"standby.example.test\"\n\
         [primary]\naddress = \"127.0.0.1:25\"\n[retention]\njournal_days = \"forever\"\n",
    )
    .unwrap();
    let o = std::process::Command::new(STANDBY)
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("journal_days"),
        "{err}"
    );
}
