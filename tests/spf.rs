//! SPF never delays the 250. `standby serve` stores each message with a pending SPF
//! verdict and looks it up in the background; with a resolver that never answers, the
//! 250 still comes at once and the verdict becomes `TEMPERROR` after
//! `[dsn] spf_timeout_secs`. A verdict left pending by a restart is looked up when a
//! bounce depends on it (and the DSN goes out when it passes); one that could not be
//! looked up counts as not authenticated: no DSN, the message is parked.
//! (`tests/backscatter.rs` covers the answering resolver: PASS, FAIL, SOFTFAIL, NONE.)

mod common;

use std::time::{Duration, Instant};

use common::dns::{DeadDns, Dns};
use common::*;
use serde_json::Value;

const SPF_TIMEOUT_SECS: u64 = 10;

fn send_timed(sb: &Standby, from: &str) -> (String, Duration) {
    let started = Instant::now();
    let (ok, t) = swaks(
        sb.port,
        &[
            "--from",
            from,
            "--to",
            "carol@example.test,gone@example.test",
        ],
    );
    let took = started.elapsed();
    assert!(ok, "{t}");
    let id = queued_id(&t);
    (id, took)
}

fn spf(sb: &Standby, id: &str) -> Value {
    sb.json(&["show", id, "--json"])["verdicts"]["spf"].clone()
}

fn primary() -> Postfix {
    let pf = Postfix::primary();
    pf.rcpt_replies(&[("gone@example.test", "550 5.1.1 no such user here")]);
    pf
}

#[test]
fn an_unanswering_resolver_never_delays_the_250() {
    let dead = DeadDns::start();
    let pf = primary();
    let sb = Standby::start_with_env(
        pf.port,
        &format!("[dsn]\nspf_timeout_secs = {SPF_TIMEOUT_SECS}\n"),
        &[
            ("STANDBY_DSN_SPF", "true"),
            ("STANDBY_DSN_NAMESERVER", &dead.addr()),
        ],
    );

    let mut ids = Vec::new();
    for n in 0..3 {
        let (id, took) = send_timed(&sb, "alice@example.test");
        // Before, each 250 waited the whole timeout for the lookup.
        assert!(
            took < Duration::from_secs(SPF_TIMEOUT_SECS / 2),
            "message {n}: the 250 took {took:?} with spf_timeout_secs = {SPF_TIMEOUT_SECS}"
        );
        // Stored before its lookup could have finished.
        assert_eq!(spf(&sb, &id), "PENDING", "message {n}");
        ids.push(id);
    }
    for id in &ids {
        wait_for(
            "the lookup to time out into TEMPERROR",
            Duration::from_secs(3 * SPF_TIMEOUT_SECS),
            || spf(&sb, id) == "TEMPERROR",
        );
    }

    // The primary refuses one recipient: the bounce decision does not wait for another
    // timeout (lookups have been timing out), so the sender counts as not authenticated.
    pf.start();
    wait_for("three failed messages", Duration::from_secs(60), || {
        sb.counts()["failed"] == 3
    });
    for m in sb.list("failed") {
        assert_eq!(m["bounce"]["state"], "suppressed", "{m}");
        let why = m["bounce"]["why"].as_str().unwrap();
        assert!(why.contains("SPF TEMPERROR"), "{why}");
    }
    // No DSN record was made (it would be held or delivered), so none can reach anyone.
    let c = sb.counts();
    assert_eq!(
        (&c["held"], &c["delivered"]),
        (&Value::from(0), &Value::from(0)),
        "{c}"
    );
    wait_for(
        "carol's three copies at the primary",
        Duration::from_secs(30),
        || pf.delivered().len() == 3,
    );
}

#[test]
fn a_verdict_left_pending_by_a_restart_is_looked_up_when_a_bounce_is_due() {
    let dead = DeadDns::start();
    let dns = Dns::start_with(&[], &[("example.test", "v=spf1 ip4:127.0.0.1 -all")]);
    let pf = primary();
    // A lookup that cannot finish before the restart.
    let mut sb = Standby::start_with_env(
        pf.port,
        "[dsn]\nspf_timeout_secs = 60\n",
        &[
            ("STANDBY_DSN_SPF", "true"),
            ("STANDBY_DSN_NAMESERVER", &dead.addr()),
        ],
    );
    let (id, _) = send_timed(&sb, "alice@example.test");
    assert_eq!(spf(&sb, &id), "PENDING");

    // Restarted (a crash, then a resolver that answers): nothing looks the verdict up
    // until a bounce depends on it.
    sb.kill9();
    sb.env_set("STANDBY_DSN_NAMESERVER", &dns.addr());
    sb.spawn();
    assert_eq!(spf(&sb, &id), "PENDING");

    pf.start();
    wait_for(
        "the message failed and its DSN delivered",
        Duration::from_secs(60),
        || {
            let c = sb.counts();
            c["failed"] == 1 && c["delivered"] == 1 && c["held"] == 0
        },
    );
    let rec = sb.json(&["show", &id, "--json"]);
    assert_eq!(rec["verdicts"]["spf"], "PASS", "{rec}");
    assert_eq!(rec["bounce"]["state"], "queued", "{rec}");
    wait_for(
        "carol's copy and the DSN at the primary",
        Duration::from_secs(30),
        || pf.delivered().len() == 2,
    );
    let dsns = pf
        .delivered()
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains("multipart/report"))
        .count();
    assert_eq!(dsns, 1);
    assert!(
        sb.log().contains("SPF looked up for the bounce decision"),
        "{}",
        sb.log()
    );
}
