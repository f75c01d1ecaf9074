//! Crash safety: clients send while `standby serve` is SIGKILLed at random moments and
//! restarted, again and again. Afterwards every message that got a 250 is in the spool
//! exactly once, no stored message is truncated, and once the primary (a real Postfix)
//! is back every acknowledged message arrives there exactly once and whole.
//!
//! Then the same with kills during the drain: nothing is lost, and the only duplicates at
//! the primary are messages a worker had in flight at a kill (the primary's 250 came,
//! the write-back did not); the test counts them.
//!
//! CI does 20 kills while receiving and 10 while draining; `scripts/crash-test` does 200
//! and 50 (`STANDBYMX_CRASH_KILLS`, `STANDBYMX_CRASH_DRAIN_KILLS`), and
//! `STANDBYMX_CRASH_SEED` replays a run.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `STANDBYMX_CRASH_SEED`, or one from the clock (printed, so the run can be replayed).
fn seed() -> u64 {
    env_u64("STANDBYMX_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    })
}

#[test]
fn kill_9_while_receiving_loses_nothing_acknowledged() {
    let kills = env_u64("STANDBYMX_CRASH_KILLS").unwrap_or(20);
    let seed = seed();
    eprintln!("crash test: {kills} kills, seed {seed} (STANDBYMX_CRASH_SEED replays it)");
    let mut rng = Rng(seed);
    let pf = Postfix::primary(); // down while mail is received
    // Health off in practice: the daemon never drains during this phase.
    let mut sb = Standby::start_with_env(pf.port, "", &[("STANDBY_HEALTH_UP_AFTER", "100000")]);
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut sent = 0usize;
    for round in 0..kills {
        let port = sb.port;
        let mut clients = Vec::new();
        for c in 0..4 {
            let acked = acked.clone();
            let lines = 20 + rng.below(400) as usize; // 1.5 KB to 30 KB
            clients.push(std::thread::spawn(move || {
                for m in 0..50 {
                    let token = format!("r{round}c{c}m{m}");
                    if send_one(port, &token, lines) {
                        acked.lock().unwrap().insert(token);
                    }
                }
            }));
            sent += 50;
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(250)));
        sb.kill9();
        for c in clients {
            c.join().unwrap();
        }
        sb.spawn();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "no message was acknowledged at all");

    // In the spool: every acknowledged message exactly once; nothing truncated.
    let held = sb.list("held");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in &held {
        let token = m["subject"]
            .as_str()
            .unwrap()
            .trim_start_matches("crash ")
            .to_string();
        *seen.entry(token.clone()).or_default() += 1;
        let raw = sb.cli(&["show", m["id"].as_str().unwrap(), "--raw"]).stdout;
        assert!(
            raw.ends_with(format!("END-{token}\r\n").as_bytes()),
            "{token} is stored truncated"
        );
    }
    for t in &acked {
        assert_eq!(
            seen.get(t),
            Some(&1),
            "acknowledged {t} stored {:?} times",
            seen.get(t)
        );
    }
    let unacked_stored = seen.len() - acked.len();
    assert_eq!(
        count_files(&sb.dir.path().join("data/tmp")),
        0,
        "leftovers after restart"
    );

    // The primary returns: everything held arrives once and whole.
    pf.start();
    sb.kill9();
    sb.env_set("STANDBY_HEALTH_UP_AFTER", "1");
    sb.spawn();
    wait_for("the standby to drain", Duration::from_secs(120), || {
        sb.counts()["held"] == 0
    });
    wait_for(
        "Postfix to store everything",
        Duration::from_secs(60),
        || pf.delivered().len() >= held.len(),
    );
    let at_primary = tokens_at(&pf);
    for t in &acked {
        assert_eq!(at_primary.get(t), Some(&1), "{t} at the primary");
    }
    eprintln!(
        "crash test: {kills} kills survived; {sent} sends, {} acknowledged, 0 lost, \
         0 duplicated; {unacked_stored} stored without a 250 reaching the client (delivered \
         too, whole)",
        acked.len()
    );
}

/// Ids of messages a drain had in flight when the process died, from its log since
/// byte `from`: an attempt started (its lease renewed, right before the transaction)
/// with no write-back logged after it ("delivery attempt") and not aborted before the
/// dot. Only these can reach the primary twice.
fn in_flight(log: &str, from: usize) -> HashSet<String> {
    let id_of = |l: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("id="))
            .map(str::to_string)
    };
    let mut started = HashSet::new();
    for l in log[from..].lines() {
        if l.contains("attempt started") {
            started.extend(id_of(l));
        } else if (l.contains("delivery attempt") || l.contains("aborted before the final dot"))
            && let Some(id) = id_of(l)
        {
            started.remove(&id);
        }
    }
    started
}

#[test]
fn kill_9_while_draining_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let kills = env_u64("STANDBYMX_CRASH_DRAIN_KILLS").unwrap_or(10);
    let count = env_u64("STANDBYMX_CRASH_DRAIN_MESSAGES").unwrap_or(400) as usize;
    let seed = seed();
    eprintln!("drain crash test: {kills} kills, {count} messages, seed {seed}");
    let mut rng = Rng(seed);
    let concurrency = 4;
    let workers = concurrency.to_string();
    let pf = Postfix::primary();
    // Short leases: a killed drain's claims come free in 1 s instead of 10 minutes (no
    // clock-skew margin: one host). The lease is shorter than a batch: a worker sends its
    // 32 claimed messages at 60/4 = 15 a second, 2.1 s, so without renewals leases would
    // run out mid-batch and be taken over by the next incarnation's workers.
    let mut sb = Standby::start_with_env(
        pf.port,
        "",
        &[
            ("STANDBY_HEALTH_UP_AFTER", "100000"),
            ("STANDBY_DRAIN_LEASE_SECS", "1"),
            ("STANDBY_DRAIN_CLOCK_SKEW_SECS", "0"),
            ("STANDBY_DRAIN_CONCURRENCY", workers.as_str()),
            ("STANDBY_DRAIN_RATE_PER_SEC", "60"),
        ],
    );
    let port = sb.port;
    let fillers: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                (0..count / 4)
                    .filter(|m| send_one(port, &format!("d{c}m{m}"), 40))
                    .count()
            })
        })
        .collect();
    let acked: usize = fillers.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(acked, count / 4 * 4, "every message is acknowledged");

    pf.start();
    sb.kill9();
    sb.env_set("STANDBY_HEALTH_UP_AFTER", "1");
    let mut killed_mid_drain = 0;
    // Per kill, the messages in flight at that moment (ids).
    let mut flights: Vec<HashSet<String>> = Vec::new();
    for _ in 0..kills {
        let from = sb.log().len();
        sb.spawn();
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
        let before = pf.delivered().len();
        sb.kill9();
        flights.push(in_flight(&sb.log(), from));
        killed_mid_drain += usize::from(before > 0 && before < acked);
    }
    sb.spawn();
    wait_for("the standby to drain", Duration::from_secs(180), || {
        sb.counts()["held"] == 0
    });
    // Nothing is left to send once nothing is held; the primary's empty queue says
    // everything it accepted is in the Maildir.
    pf.wait_queue_empty(Duration::from_secs(60));
    let at = tokens_at(&pf);
    assert_eq!(
        at.len(),
        acked,
        "every acknowledged message reached the primary"
    );
    let token_of: HashMap<String, String> = sb
        .list("delivered")
        .iter()
        .map(|m| {
            let token = m["subject"].as_str().unwrap().trim_start_matches("crash ");
            (m["id"].as_str().unwrap().to_string(), token.to_string())
        })
        .collect();
    let mut window: HashMap<String, usize> = HashMap::new();
    for f in &flights {
        for id in f {
            *window.entry(token_of[id].clone()).or_default() += 1;
        }
    }
    let in_flight_total: usize = flights.iter().map(HashSet::len).sum();
    let duplicated: usize = at.values().map(|n| n - 1).sum();
    for (token, n) in &at {
        let allowed = window.get(token).copied().unwrap_or(0);
        assert!(
            n - 1 <= allowed,
            "{token} reached the primary {n} times, but was in flight at only {allowed} kill(s)"
        );
    }
    assert_eq!(sb.counts()["delivered"], acked as u64);
    eprintln!(
        "drain crash test: {kills} kills ({killed_mid_drain} with the drain part-way), {acked} \
         messages, 0 lost, {duplicated} duplicated at the primary, each one in flight at a \
         kill ({in_flight_total} in flight over all kills)"
    );
}
