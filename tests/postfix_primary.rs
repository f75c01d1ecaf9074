//! End to end with a real Postfix as the primary: mail is held while it is down and
//! delivered byte for byte once it is back, also across a kill -9 of the standby.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

fn send_fixture(sb: &Standby, token: &str, to: &str) {
    let path = sb.dir.path().join(format!("{token}.eml"));
    std::fs::write(&path, fixture("rfc/multipart-8bit.eml", token)).unwrap();
    let (ok, transcript) = swaks(
        sb.port,
        &[
            "--from",
            "renee@example.org",
            "--to",
            to,
            "--data",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        ok && transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
}

/// Delivered copies whose Message-ID carries `token`.
fn copies<'a>(delivered: &'a [Vec<u8>], token: &str) -> Vec<&'a Vec<u8>> {
    let needle = format!("Message-ID: <{token}@example.org>");
    delivered
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains(&needle))
        .collect()
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rposition(|&c| c != b'\n').map_or(0, |p| p + 1);
    &b[..n]
}

#[test]
fn held_while_primary_down_then_delivered_byte_identical() {
    let pf = Postfix::primary();
    let sb = Standby::start(pf.port, "");

    send_fixture(&sb, "tok-one", "bob@example.test");
    send_fixture(&sb, "tok-two", "bob@example.test,carol@example.test");
    send_fixture(&sb, "tok-three", "dave@example.test");

    let held = sb.list("held");
    assert_eq!(held.len(), 3, "{held:?}");
    let two = held
        .iter()
        .find(|m| m["message_id"] == "tok-two@example.org")
        .unwrap();
    assert_eq!(
        two["rcpt_to"],
        serde_json::json!(["bob@example.test", "carol@example.test"])
    );
    assert_eq!(two["mail_from"], "renee@example.org");
    assert_eq!(two["subject"], "Quarterly résumé");

    // Several probe intervals with the primary down (counted, not slept): nothing moves.
    let failed = |sb: &Standby| sb.json(&["status", "--json"])["primary"]["probes_failed"].as_u64();
    let seen = failed(&sb).unwrap_or(0);
    wait_for("three more failed probes", Duration::from_secs(30), || {
        failed(&sb).unwrap_or(0) >= seen + 3
    });
    let status = sb.json(&["status", "--json"]);
    assert_eq!(status["primary"]["state"], "down", "{status}");
    assert_eq!(status["counts"]["held"], 3);
    assert!(status["oldest_held"].is_string());

    pf.start();
    wait_for("the standby to drain", Duration::from_secs(60), || {
        sb.counts()["delivered"] == 3
    });
    assert_eq!(sb.counts()["held"], 0);
    wait_for(
        "postfix to deliver 4 copies",
        Duration::from_secs(20),
        || pf.delivered().len() == 4,
    );

    let delivered = pf.delivered();
    let stored = sb.list("delivered");
    let original = fixture("rfc/multipart-8bit.eml", "X");
    let (orig_head, _) = split_message(original.as_bytes());
    let dkim: String = orig_head.lines().take(3).collect::<Vec<_>>().join("\n");
    for (token, n) in [("tok-one", 1), ("tok-two", 2), ("tok-three", 1)] {
        let got = copies(&delivered, token);
        assert_eq!(got.len(), n, "copies of {token}");
        // Exactly the bytes we stored (swaks adds a blank line at the end of its data)...
        let id = stored
            .iter()
            .find(|m| m["message_id"] == format!("{token}@example.org"))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let raw_stored = sb.cli(&["show", &id, "--raw"]).stdout;
        let (_, stored_body) = split_message(&raw_stored);
        // ...and those are the fixture's bytes.
        let expected = fixture("rfc/multipart-8bit.eml", token);
        let (_, want_body) = split_message(expected.as_bytes());
        assert_eq!(
            trim_end(&stored_body),
            trim_end(&want_body),
            "{token} stored"
        );
        for raw in got {
            let (head, body) = split_message(raw);
            assert_eq!(body, stored_body, "body of {token} changed");
            assert!(head.contains(&dkim), "DKIM-Signature changed:\n{head}");
            assert!(head.contains("From: =?utf-8?q?Ren=C3=A9e?= <renee@example.org>\n"));
            assert!(head.contains("Subject: =?utf-8?q?Quarterly_r=C3=A9sum=C3=A9?=\n"));
            assert_eq!(
                head.matches("(standby-mx)").count(),
                1,
                "one Received of ours:\n{head}"
            );
            assert!(
                head.contains("Return-Path: <renee@example.org>"),
                "envelope sender kept"
            );
        }
    }
    // Envelope recipients were kept per copy.
    let two: HashSet<String> = copies(&delivered, "tok-two")
        .iter()
        .map(|m| {
            let (head, _) = split_message(m);
            head.lines()
                .find(|l| l.starts_with("Delivered-To: "))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        two,
        HashSet::from([
            "Delivered-To: bob@example.test".to_string(),
            "Delivered-To: carol@example.test".to_string()
        ])
    );
}

#[test]
fn acknowledged_mail_survives_kill_9() {
    let pf = Postfix::primary();
    let mut sb = Standby::start(pf.port, "");
    let tokens: Vec<String> = (0..5).map(|i| format!("crash-{i}")).collect();
    for t in &tokens {
        send_fixture(&sb, t, "bob@example.test");
    }
    // Straight after the last 250: no clean shutdown, no flush, nothing.
    sb.kill9();
    sb.spawn();
    let held = sb.list("held");
    assert_eq!(
        held.len(),
        5,
        "acknowledged mail lost across kill -9: {held:?}"
    );
    sb.wait_published();
    assert_eq!(count_files(&sb.dir.path().join("data/tmp")), 0);

    pf.start();
    wait_for(
        "the standby to drain after restart",
        Duration::from_secs(60),
        || sb.counts()["delivered"] == 5,
    );
    wait_for("postfix to deliver 5", Duration::from_secs(20), || {
        pf.delivered().len() == 5
    });
    let delivered = pf.delivered();
    for t in &tokens {
        assert_eq!(copies(&delivered, t).len(), 1, "{t} delivered exactly once");
    }
}

#[test]
fn sigterm_during_a_drain_releases_claims_for_a_prompt_restart() {
    let pf = Postfix::primary();
    let mut sb = Standby::start_with_env(
        pf.port,
        "",
        &[
            ("STANDBY_DRAIN_RATE_PER_SEC", "4"),
            ("STANDBY_DRAIN_CONCURRENCY", "1"),
        ],
    );
    let n = 16;
    for i in 0..n {
        sb.send("bob@example.test", &["--header", &format!("Subject: n{i}")]);
    }
    pf.start();
    wait_for("the drain to start", Duration::from_secs(30), || {
        sb.counts()["delivered"].as_u64().unwrap() >= 1
    });
    let status = sb.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let delivered = sb.counts()["delivered"].as_u64().unwrap();
    assert!(
        delivered < n,
        "the drain was interrupted ({delivered} of {n})"
    );
    for m in sb.list("held") {
        let rec = sb.json(&["show", m["id"].as_str().unwrap(), "--json"]);
        assert!(
            rec.get("lease").is_none(),
            "claim left behind: {rec}\n{}",
            sb.log()
        );
    }
    // The default lease is 10 minutes: only released claims can go out this soon.
    sb.spawn();
    wait_for("the rest after restart", Duration::from_secs(30), || {
        sb.counts()["delivered"] == n
    });
    wait_for("postfix delivery", Duration::from_secs(20), || {
        pf.delivered().len() == n as usize
    });
    pf.wait_queue_empty(Duration::from_secs(20));
    assert_eq!(pf.delivered().len(), n as usize, "nothing delivered twice");
}
