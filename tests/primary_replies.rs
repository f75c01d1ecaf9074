//! How the drain judges the primary's replies: per recipient 2xx delivered, 4xx retried,
//! 5xx failed with the reply recorded; a 421 or a dropped session delivers nothing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn only(sb: &Standby) -> Value {
    let all = sb.list("all");
    assert_eq!(all.len(), 1, "{all:?}");
    let id = all[0]["id"].as_str().unwrap().to_string();
    sb.json(&["show", &id, "--json"])
}

fn rcpt<'a>(rec: &'a Value, addr: &str) -> &'a Value {
    rec["rcpts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == addr)
        .unwrap_or_else(|| panic!("no {addr} in {rec}"))
}

fn delivered_to(pf: &Postfix) -> Vec<String> {
    let mut v: Vec<String> = pf
        .delivered()
        .iter()
        .map(|m| {
            let (head, _) = split_message(m);
            head.lines()
                .find_map(|l| l.strip_prefix("Delivered-To: ").map(str::to_string))
                .unwrap()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn per_recipient_outcomes_from_a_real_postfix() {
    let pf = Postfix::primary();
    pf.rcpt_replies(&[
        ("temp@example.test", "450 4.2.0 mailbox busy"),
        ("gone@example.test", "550 5.1.1 no such user"),
    ]);
    pf.start();
    let sb = Standby::start(pf.port, "");
    sb.send("ok@example.test,temp@example.test,gone@example.test", &[]);

    wait_for("a delivery attempt", Duration::from_secs(30), || {
        only(&sb)["attempts"] == 1
    });
    let rec = only(&sb);
    assert_eq!(
        rec["status"], "held",
        "a pending recipient keeps it held: {rec}"
    );
    assert_eq!(rcpt(&rec, "ok@example.test")["status"], "delivered");
    assert_eq!(rcpt(&rec, "temp@example.test")["status"], "pending");
    assert!(
        rcpt(&rec, "temp@example.test")["reply"]
            .as_str()
            .unwrap()
            .starts_with("450 4.2.0")
    );
    assert_eq!(rcpt(&rec, "gone@example.test")["status"], "failed");
    assert!(
        rcpt(&rec, "gone@example.test")["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1")
    );
    wait_for("one copy at the primary", Duration::from_secs(10), || {
        pf.delivered().len() == 1
    });
    assert_eq!(delivered_to(&pf), ["ok@example.test"]);

    // The primary stops deferring; the operator retries instead of waiting a minute.
    pf.rcpt_replies(&[("gone@example.test", "550 5.1.1 no such user")]);
    let out = std::process::Command::new(repo().join("scripts/postfix-instance"))
        .args(["reload", pf.dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let id = rec["id"].as_str().unwrap();
    let out = sb.cli(&["retry", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    wait_for("the retry", Duration::from_secs(30), || {
        only(&sb)["attempts"] == 2
    });
    let rec = only(&sb);
    assert_eq!(rec["status"], "failed", "{rec}");
    assert_eq!(rcpt(&rec, "temp@example.test")["status"], "delivered");
    assert_eq!(rcpt(&rec, "gone@example.test")["status"], "failed");
    assert!(rec["reason"].as_str().unwrap().starts_with("550"));
    wait_for("two copies", Duration::from_secs(10), || {
        pf.delivered().len() == 2
    });
    pf.wait_queue_empty(Duration::from_secs(10));
    // ok@ was not delivered a second time.
    assert_eq!(delivered_to(&pf), ["ok@example.test", "temp@example.test"]);
}

#[test]
fn a_421_mid_transaction_delivers_nothing() {
    let pf = Postfix::primary();
    // Postfix answers 421 to this recipient and hangs up before DATA.
    pf.rcpt_replies(&[("bye@example.test", "421 4.3.2 shutting down")]);
    pf.start();
    let sb = Standby::start(pf.port, "");
    sb.send("ok@example.test,bye@example.test", &[]);
    wait_for("a delivery attempt", Duration::from_secs(30), || {
        only(&sb)["attempts"] == 1
    });
    let rec = only(&sb);
    assert_eq!(rec["status"], "held", "{rec}");
    for addr in ["ok@example.test", "bye@example.test"] {
        assert_eq!(rcpt(&rec, addr)["status"], "pending", "{rec}");
    }
    // The attempt is over (recorded above): had Postfix taken the message, its cleanup
    // would have logged it already.
    assert!(
        !pf.maillog().contains(": message-id="),
        "the primary accepted nothing: {}",
        pf.maillog()
    );
    assert!(pf.delivered().is_empty(), "nothing reached the mailbox");
}

#[test]
fn primary_answering_421_at_the_banner_is_down_and_nothing_moves() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    sb.send("bob@example.test", &[]);
    wait_for(
        "the primary to be seen down",
        Duration::from_secs(20),
        || sb.json(&["status", "--json"])["primary"]["state"] == "down",
    );
    let status = sb.json(&["status", "--json"]);
    assert!(
        status["primary"]["last_probe"]["detail"]
            .as_str()
            .unwrap()
            .contains("421"),
        "{status}"
    );

    let out = sb.cli(&["drain"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "drain without --force probes first"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not answering"));

    let report = sb.drain_report(&["--force"], 3);
    assert_eq!(report["delivered"], 0);
    let rec = only(&sb);
    assert_eq!(rec["status"], "held");
    assert_eq!(
        rec["attempts"], 0,
        "an unreachable primary is not the message's fault"
    );
}
