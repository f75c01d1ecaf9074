//! Recovering mail: journal copies from a real Postfix primary (`always_bcc`), replay
//! into the primary's Maildir after its mailbox was lost, and export read back by
//! Python's `mailbox` module.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const JOURNAL: &str = "[journal]\naddresses = [\"journal@archive.example.test\"]\n";

fn subject(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn journal_copies_from_postfix_are_replayed_once_after_the_mailbox_is_lost() {
    let pf = Postfix::primary();
    let sb = Standby::start(pf.port, JOURNAL);
    pf.postconf(&[
        "always_bcc = journal@archive.example.test",
        &format!(
            "transport_maps = inline:{{archive.example.test=smtp:[127.0.0.1]:{}}}",
            sb.port
        ),
    ]);
    pf.start();
    for (i, to) in [
        "bob@example.test",
        "bob@example.test",
        "carol@example.test",
        "bob@example.test,carol@example.test",
    ]
    .iter()
    .enumerate()
    {
        let args = ["--from", "alice@example.org", "--to", to];
        let (ok, t) = swaks(
            pf.port,
            &[&args[..], &["--header", &format!("Subject: m{i}")]].concat(),
        );
        assert!(ok, "{t}");
    }
    wait_for(
        "5 deliveries at the primary",
        Duration::from_secs(30),
        || pf.delivered().len() == 5,
    );
    wait_for("4 journal copies", Duration::from_secs(30), || {
        sb.counts()["journal"] == 4
    });
    assert_eq!(sb.counts()["held"], 0, "journal copies are not held mail");
    let journal = sb.list("journal");
    let rcpts: Vec<&Value> = journal.iter().map(|m| &m["rcpt_to"]).collect();
    assert_eq!(
        rcpts.last().unwrap().as_array().unwrap().len(),
        2,
        "the original recipients, from the header: {rcpts:?}"
    );

    // Search: by original recipient and class, by subject.
    let carol = sb.json(&[
        "list",
        "--class",
        "journal",
        "--rcpt",
        "Carol@example.test",
        "--json",
    ]);
    assert_eq!(carol.as_array().unwrap().len(), 2, "{carol}");
    let m3 = sb.json(&["list", "--subject", "M3", "--json"]);
    assert_eq!(m3.as_array().unwrap().len(), 1, "{m3}");
    let none = sb.json(&["list", "--class", "held", "--json"]);
    assert!(none.as_array().unwrap().is_empty(), "{none}");

    // The primary's disk dies: its mailbox store is gone.
    let maildir = pf.dir.path().join("mail/maildir");
    std::fs::remove_dir_all(&maildir).unwrap();
    assert!(pf.delivered().is_empty());

    let report = sb.json(&["replay", "--since", "1h", "--json"]);
    assert_eq!(report["replayed"], 4, "{report}");
    assert_eq!(report["recipients"], 5, "{report}");
    let run = report["run"].as_str().unwrap().to_string();
    wait_for("5 replayed deliveries", Duration::from_secs(30), || {
        pf.delivered().len() == 5
    });
    let back = pf.delivered();
    let mut subjects: Vec<String> = back.iter().map(|m| subject(m)).collect();
    subjects.sort();
    assert_eq!(subjects, ["m0", "m1", "m2", "m3", "m3"]);
    for m in &back {
        let text = String::from_utf8_lossy(m);
        let marks = text.matches("X-Standby-Replay: run=").count();
        assert_eq!(marks, 1, "one replay header:\n{text}");
        assert!(text.contains(&run));
    }

    // The primary journals what the replay delivered: those copies come back, and are
    // never replayed themselves.
    wait_for(
        "4 more journal copies (of the replay)",
        Duration::from_secs(30),
        || sb.counts()["journal"] == 8,
    );
    let again = sb.json(&["replay", "--since", "1h", "--json", "--run-id", &run]);
    assert_eq!(again["replayed"], 0, "{again}");
    assert_eq!(again["already_done"], 4, "{again}");
    let fresh = sb.json(&["replay", "--since", "1h", "--dry-run", "--json"]);
    assert_eq!(
        fresh.as_array().unwrap().len(),
        4,
        "echoes excluded: {fresh}"
    );
    let bob_only = sb.json(&[
        "replay",
        "--since",
        "1h",
        "--dry-run",
        "--json",
        "--rcpt",
        "carol@example.test",
    ]);
    assert_eq!(bob_only.as_array().unwrap().len(), 2, "{bob_only}");
    pf.wait_queue_empty(Duration::from_secs(20));
    assert_eq!(pf.delivered().len(), 5, "nothing delivered twice");
}

#[test]
fn an_exchange_journal_report_is_replayed_as_its_original_to_every_envelope_recipient() {
    let pf = Postfix::primary();
    pf.start();
    let sb = Standby::start(
        pf.port,
        "[journal]\naddresses = [\"journal@standby.example.test\"]\n",
    );
    let report = repo().join("tests/fixtures/exchange-journal-report.eml");
    let (ok, t) = swaks(
        sb.port,
        &[
            "--from",
            "exchange@example.test",
            "--to",
            "journal@standby.example.test",
            "--data",
            report.to_str().unwrap(),
        ],
    );
    assert!(ok, "{t}");
    let journal = sb.list("journal");
    assert_eq!(journal.len(), 1);
    assert_eq!(
        journal[0]["mail_from"], "alice@example.org",
        "the report's sender"
    );
    assert_eq!(
        journal[0]["rcpt_to"],
        serde_json::json!([
            "bob@example.test",
            "carol@example.test",
            "dave@example.test"
        ]),
        "the report's envelope, Bcc included, other domains left out"
    );

    let r = sb.json(&["replay", "--since", "1h", "--json"]);
    assert_eq!(
        (r["replayed"].clone(), r["recipients"].clone()),
        (1.into(), 3.into()),
        "{r}"
    );
    wait_for(
        "3 deliveries of the original",
        Duration::from_secs(30),
        || pf.delivered().len() == 3,
    );
    for m in pf.delivered() {
        let text = String::from_utf8_lossy(&m);
        assert_eq!(
            subject(&m),
            "Board minutes",
            "the original, not the report:\n{text}"
        );
        assert!(text.contains("Minutes.") && !text.contains("Journal report"));
        assert_eq!(text.matches("X-Standby-Replay: run=").count(), 1);
        assert!(text.contains("Return-Path: <alice@example.org>"), "{text}");
    }
}

#[test]
fn replay_rejects_a_bad_time_naming_the_flag() {
    let sb = Standby::start(free_port(), JOURNAL);
    let out = sb.cli(&["replay", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--since") && err.contains("yesterday"),
        "{err}"
    );
}

const EXPORT_CHECK: &str = r#"
import json, mailbox, os, re, sys
spool, mbox_path, maildir_path, eml_path = sys.argv[1:5]
def message(b):  # a spool file: the message, its envelope, a 32-byte footer (lengths at 8 and 16)
    return b[:int.from_bytes(b[-24:-16], "little")]
stored = {f[:-6]: message(open(os.path.join(spool, f), "rb").read()) for f in os.listdir(spool) if f.endswith(".spool")}
if not stored: sys.exit("no .spool files in " + spool)
def unquote(b):  # mboxrd: one '>' less on every >*From line
    return re.sub(rb"(?m)^>(>*From )", rb"\1", b)
mb = [unquote(m) for m in (mailbox.mbox(mbox_path).get_bytes(k) for k in mailbox.mbox(mbox_path).keys())]
md = mailbox.Maildir(maildir_path, create=False)
mdb = [md.get_bytes(k) for k in md.keys()]
eml = [open(os.path.join(eml_path, f), "rb").read() for f in sorted(os.listdir(eml_path))]
want = sorted(stored.values())
print(json.dumps({
    "stored": len(want),
    "mbox_identical": sorted(mb) == want,
    "maildir_identical": sorted(mdb) == want,
    "eml_identical": sorted(eml) == want,
    "mbox_subjects": sorted(m["subject"] for m in mailbox.mbox(mbox_path)),
}))
"#;

#[test]
fn export_is_read_back_by_python_mailbox_byte_for_byte() {
    require("python3", "python3");
    let sb = Standby::start(free_port(), "");
    sb.send("bob@example.test", &["--header", "Subject: plain"]);
    // Lines an mbox must quote, and one already quoted.
    let body = "From the start\n>From quoted\nFrom: not a header\n.\n..dots\n";
    sb.send(
        "carol@example.test",
        &["--header", "Subject: tricky", "--body", body],
    );
    sb.send(
        "bob@example.test",
        &["--from", "<>", "--header", "Subject: bounce"],
    );
    let out = tempfile::tempdir().unwrap();
    let (mbox, maildir, eml) = (
        out.path().join("held.mbox"),
        out.path().join("held.maildir"),
        out.path().join("eml"),
    );
    for (format, path) in [("mbox", &mbox), ("maildir", &maildir), ("eml", &eml)] {
        let r = sb.json(&[
            "export",
            "--format",
            format,
            "--out",
            path.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(r["messages"], 3, "{r}");
    }
    sb.wait_published();
    let check = Command::new("python3")
        .args(["-c", EXPORT_CHECK])
        .arg(sb.messages_dir())
        .args([&mbox, &maildir, &eml])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let got: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(got["stored"], 3, "{got}");
    assert_eq!(got["mbox_identical"], true, "{got}");
    assert_eq!(got["maildir_identical"], true, "{got}");
    assert_eq!(got["eml_identical"], true, "{got}");
    assert_eq!(
        got["mbox_subjects"],
        serde_json::json!(["bounce", "plain", "tricky"])
    );

    // Filters, and a path that exists is refused rather than overwritten.
    let r = sb.json(&[
        "export",
        "--format",
        "eml",
        "--out",
        out.path().join("carol").to_str().unwrap(),
        "--rcpt",
        "CAROL@example.test",
        "--json",
    ]);
    assert_eq!(r["messages"], 1, "{r}");
    let r = sb.json(&[
        "export",
        "--format",
        "mbox",
        "--out",
        out.path().join("null.mbox").to_str().unwrap(),
        "--from",
        "<>",
        "--json",
    ]);
    assert_eq!(r["messages"], 1, "{r}");
    let again = sb.cli(&[
        "export",
        "--format",
        "mbox",
        "--out",
        mbox.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
}
