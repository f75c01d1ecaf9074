//! A misbehaving primary: whatever it does, nothing is marked delivered that it did not
//! accept with 250 after the final dot, and the mail stays held for the next attempt.

mod common;

use common::*;

/// The daemon never drains on its own here; the operator's `standby drain` is the attempt.
fn standby_for(fake: &FakePrimary) -> Standby {
    Standby::start_with_env(
        fake.port,
        "",
        &[
            ("STANDBY_HEALTH_UP_AFTER", "100000"),
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_PRIMARY_TIMEOUT_SECS", "2"),
        ],
    )
}

fn drain(sb: &Standby, args: &[&str]) -> std::process::Output {
    std::process::Command::new(STANDBY)
        .args(["drain", "--config"])
        .arg(&sb.config)
        .args(args)
        .env("STANDBY_PRIMARY_TLS", "none")
        .env("STANDBY_PRIMARY_TIMEOUT_SECS", "2")
        .output()
        .unwrap()
}

#[test]
fn connection_dropped_mid_data_delivers_nothing() {
    let fake = FakePrimary::start(vec![FakeReply::DropMidData]);
    let sb = standby_for(&fake);
    sb.send("bob@example.test", &[]);
    let out = drain(&sb, &["--force", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["delivered"], 0, "{report}");
    assert!(report["stopped"].is_string(), "{report}");
    assert!(
        fake.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "dropped mid-DATA")
    );
    let held = sb.list("held");
    assert_eq!(held.len(), 1, "still held after a cut DATA");
    assert_eq!(sb.counts()["delivered"], 0);
}

#[test]
fn a_primary_answering_one_byte_per_second_times_out() {
    let fake = FakePrimary::start(vec![FakeReply::Trickle]);
    let sb = standby_for(&fake);
    sb.send("bob@example.test", &[]);
    // The banner would take 21 s; the reply timeout (2 s here, 5 min by default as in
    // RFC 5321 §4.5.3.2) counts for the whole reply, not per byte.
    let out = drain(&sb, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out"), "{err}");
    let out = drain(&sb, &["--force", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["delivered"], 0, "{report}");
    assert_eq!(sb.counts()["held"], 1);
}

#[test]
fn a_failed_tls_handshake_with_tls_required_sends_nothing() {
    let fake = FakePrimary::start(vec![FakeReply::BadTls]);
    let sb = standby_for(&fake);
    sb.send("bob@example.test", &[]);
    let out = std::process::Command::new(STANDBY)
        .args(["drain", "--force", "--json", "--config"])
        .arg(&sb.config)
        .env("STANDBY_PRIMARY_TLS", "required")
        .env("STANDBY_PRIMARY_TIMEOUT_SECS", "2")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["delivered"], 0, "{report}");
    assert!(
        report["stopped"]
            .as_str()
            .unwrap_or_default()
            .contains("TLS"),
        "{report}"
    );
    assert_eq!(sb.counts()["held"], 1);
    let rec = &sb.list("held")[0];
    assert_eq!(
        rec["attempts"], 0,
        "a session that never started is not an attempt: {rec}"
    );
}
