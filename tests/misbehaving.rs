//! A misbehaving primary: whatever it does, nothing is marked delivered that it did not
//! accept with 250 after the final dot. Each misbehaviour has its outcome: a broken
//! session or a 4xx leaves the mail held for the next attempt, a 5xx fails it with the
//! primary's reply recorded, and a primary that answers only every other time never
//! makes the health state flap.

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

#[test]
fn connection_dropped_mid_data_delivers_nothing() {
    let fake = FakePrimary::start(vec![FakeReply::DropMidData]);
    let sb = standby_for(&fake);
    sb.send("bob@example.test", &[]);
    // A session that was open when it broke: not "unreachable", so exit 0.
    let report = sb.drain_report(&["--force"], 0);
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
    let out = sb.cli(&["drain"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out"), "{err}");
    let report = sb.drain_report(&["--force"], 3);
    assert_eq!(report["delivered"], 0, "{report}");
    assert_eq!(sb.counts()["held"], 1);
}

#[test]
fn a_failed_tls_handshake_with_tls_required_sends_nothing() {
    let fake = FakePrimary::start(vec![FakeReply::BadTls]);
    let mut sb = standby_for(&fake);
    sb.send("bob@example.test", &[]);
    sb.env_set("STANDBY_PRIMARY_TLS", "required");
    let report = sb.drain_report(&["--force"], 3);
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

/// One drain of one held message against a fake answering MAIL/RCPT/final dot as given;
/// returns (drain report, the stored record).
fn one_attempt(
    mail: &'static str,
    rcpt: &'static str,
    data_end: &'static str,
) -> (serde_json::Value, serde_json::Value, FakePrimary) {
    let fake = FakePrimary::start(vec![FakeReply::Replies {
        mail,
        rcpt,
        data_end,
    }]);
    let sb = standby_for(&fake);
    sb.send("bob@example.test", &[]);
    let report = sb.drain_report(&["--force"], 0);
    let all = sb.list("all");
    assert_eq!(all.len(), 1);
    let rec = sb.json(&["show", all[0]["id"].as_str().unwrap(), "--json"]);
    (report, rec, fake)
}

const OK: &str = "250 2.0.0 ok\r\n";

#[test]
fn each_refusal_has_its_outcome_and_its_reply_recorded() {
    // (MAIL, RCPT, final dot) -> (report counter, status, reply kept on the recipient)
    let cases: [(&'static str, &'static str, &'static str, &str, &str, &str); 6] = [
        (
            "451 4.3.0 busy\r\n",
            OK,
            OK,
            "deferred",
            "held",
            "451 4.3.0 busy",
        ),
        (
            "553 5.7.1 sender refused\r\n",
            OK,
            OK,
            "failed",
            "failed",
            "553 5.7.1",
        ),
        (
            OK,
            "452 4.2.2 over quota\r\n",
            OK,
            "deferred",
            "held",
            "452 4.2.2",
        ),
        (
            OK,
            "550 5.1.1 unknown\r\n",
            OK,
            "failed",
            "failed",
            "550 5.1.1",
        ),
        (
            OK,
            OK,
            "451 4.3.0 queue full\r\n",
            "deferred",
            "held",
            "451 4.3.0 queue full",
        ),
        (
            OK,
            OK,
            "554 5.6.0 content rejected\r\n",
            "failed",
            "failed",
            "554 5.6.0",
        ),
    ];
    for (mail, rcpt, data_end, counter, status, reply) in cases {
        let (report, rec, fake) = one_attempt(mail, rcpt, data_end);
        let case = format!("MAIL {mail:?} RCPT {rcpt:?} dot {data_end:?}");
        assert_eq!(report["delivered"], 0, "{case}: {report}");
        assert_eq!(report[counter], 1, "{case}: {report}");
        assert_eq!(rec["status"], status, "{case}: {rec}");
        assert_eq!(rec["attempts"], 1, "{case}: {rec}");
        let got = rec["rcpts"][0]["reply"].as_str().unwrap_or_default();
        assert!(got.starts_with(reply), "{case}: recipient reply {got:?}");
        // DATA was sent only when MAIL and RCPT were accepted.
        let sent_data = fake
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("DATA"));
        assert_eq!(sent_data, mail == OK && rcpt == OK, "{case}");
    }
}

#[test]
fn a_primary_alternating_between_answering_and_not_does_not_flap() {
    // Probes see up, down, up, down...: with up_after = down_after = 2 no two agree in a
    // row, so the state never becomes `up` and nothing is sent to a primary that cannot
    // keep a session.
    let script: Vec<FakeReply> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                FakeReply::Healthy
            } else {
                FakeReply::Busy421
            }
        })
        .collect();
    let fake = FakePrimary::start(script);
    let sb = Standby::start_with_env(
        fake.port,
        "",
        &[
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_HEALTH_INTERVAL_SECS", "1"),
            ("STANDBY_HEALTH_UP_AFTER", "2"),
            ("STANDBY_HEALTH_DOWN_AFTER", "2"),
        ],
    );
    sb.send("bob@example.test", &[]);
    let mut states = std::collections::BTreeSet::new();
    wait_for("eight probes", std::time::Duration::from_secs(30), || {
        let st = sb.json(&["status", "--json"]);
        states.insert(st["primary"]["state"].as_str().unwrap().to_string());
        st["primary"]["probes_ok"].as_u64().unwrap_or(0) >= 4
            && st["primary"]["probes_failed"].as_u64().unwrap_or(0) >= 4
    });
    assert_eq!(
        states.into_iter().collect::<Vec<_>>(),
        ["unknown"],
        "the state changed on single probes"
    );
    assert_eq!(sb.counts()["held"], 1);
    let rec = &sb.list("held")[0];
    assert_eq!(rec["attempts"], 0, "no delivery was tried: {rec}");
}
