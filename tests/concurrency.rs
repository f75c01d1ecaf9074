//! Drains in several processes at once, on one spool and on one table, against a real
//! Postfix primary: every message arrives exactly once, though the lease is shorter than
//! the time a worker takes for its batch (so leases do run out between claim and send,
//! and are taken over), and no process crashes.
//!
//! SQLite: `standby serve` (draining) and two `standby drain --force` processes on one
//! data directory. AWS: two `standby drain --force` processes on one DynamoDB table in a
//! moto that serves requests on threads (`moto_server` itself; the other AWS tests use
//! `scripts/moto-server`, one request at a time). moto checks a condition and applies the
//! write without a lock, so on threaded moto two conditional claims of one item can both
//! succeed; the test measures how often and shows that the drains still send each message
//! once, because the renewal right before a send is conditional on the claim's token.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use common::aws::{Moto, child_env_as};
use common::iam::Principal;
use common::*;
use serde_json::Value;

/// Fill `sb` with `n` held messages (`{prefix}{i}`) over 8 connections at a time.
fn fill(sb: &Standby, prefix: &str, n: usize) -> Vec<String> {
    let port = sb.port;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let prefix = prefix.to_string();
            std::thread::spawn(move || {
                (t..n)
                    .step_by(8)
                    .map(|i| {
                        let token = format!("{prefix}{i}");
                        assert!(send_one(port, &token, 5), "{token} acknowledged");
                        token
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// Wait for a `standby drain --json` process; its report.
fn report(child: Child, what: &str) -> Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what} failed: {:?}", out.status);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: bad JSON ({e}): {:?}", out.stdout))
}

/// Lines of `log` with `what` in them.
fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

fn exactly_once(pf: &Postfix, sent: &[String]) {
    let at = tokens_at(pf);
    let twice: Vec<_> = at.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for t in sent {
        assert_eq!(at.get(t), Some(&1), "{t} reached the primary");
    }
    assert_eq!(at.len(), sent.len());
}

/// Drain settings shared by every process: leases of 2 s, while a worker sends its batch
/// of 32 at 10 messages/s (4 workers at 40/s per process), 3.2 s.
const SHORT_LEASES: [(&str, &str); 4] = [
    ("STANDBY_DRAIN_LEASE_SECS", "2"),
    ("STANDBY_DRAIN_CLOCK_SKEW_SECS", "0"),
    ("STANDBY_DRAIN_CONCURRENCY", "4"),
    ("STANDBY_DRAIN_RATE_PER_SEC", "40"),
];

#[test]
fn serve_and_two_drains_on_one_sqlite_spool_deliver_each_message_once() {
    let n: usize = std::env::var("STANDBYMX_CONCURRENCY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let pf = Postfix::primary(); // down while mail comes in
    let mut env = vec![("STANDBY_HEALTH_UP_AFTER", "100000")];
    env.extend(SHORT_LEASES);
    let mut sb = Standby::start_with_env(pf.port, "", &env);
    let t0 = Instant::now();
    let sent = fill(&sb, "q", n);
    eprintln!("concurrency: {n} messages held in {:?}", t0.elapsed());
    assert_eq!(sb.counts()["held"], n as u64);

    pf.start();
    sb.kill9();
    sb.env_set("STANDBY_HEALTH_UP_AFTER", "1");
    let t0 = Instant::now();
    let logs: Vec<_> = (0..2)
        .map(|i| sb.dir.path().join(format!("drain{i}.log")))
        .collect();
    let drains: Vec<Child> = logs
        .iter()
        .map(|l| sb.cli_spawn(&["drain", "--force", "--json"], "standby=debug,info", l))
        .collect();
    sb.spawn(); // serve drains too, once its probe sees the primary up
    let reports: Vec<Value> = drains
        .into_iter()
        .enumerate()
        .map(|(i, c)| report(c, &format!("drain {i}")))
        .collect();
    wait_for("the spool to drain", Duration::from_secs(300), || {
        sb.counts()["held"] == 0
    });
    let took = t0.elapsed();
    pf.wait_queue_empty(Duration::from_secs(120));
    exactly_once(&pf, &sent);
    assert_eq!(sb.counts()["delivered"], n as u64);

    let by_drains: Vec<u64> = reports
        .iter()
        .map(|r| r["delivered"].as_u64().unwrap())
        .collect();
    let by_serve = n as u64 - by_drains.iter().sum::<u64>();
    let all_logs: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .chain([sb.log()])
        .collect();
    let skipped = count(&all_logs, "lease ran out before the attempt");
    let aborted = count(&all_logs, "transaction aborted before the final dot");
    eprintln!(
        "concurrency (sqlite): {n} messages in {took:?}, each once at the primary; delivered \
         by drain 1 {}, drain 2 {}, serve {by_serve}; {skipped} sends skipped because the \
         lease had been taken over, {aborted} aborted before the final dot",
        by_drains[0], by_drains[1]
    );
    assert!(
        by_drains.iter().all(|d| *d > 0) && by_serve > 0,
        "all three processes delivered a share: {by_drains:?} and {by_serve}"
    );
}

/// How many of `n` items two concurrent claims on threaded moto both won: each item
/// claimed by `a` and by `b` at once, through the real SDK.
async fn double_claims(moto: &Moto, n: usize) -> usize {
    use chrono::Utc;
    use standby::model::{MessageId, Record, Summary};
    use standby::ports::ClaimRequest;
    let (_, _, storage) = moto.storage("doubleclaims").await;
    let mut won_by_both = 0;
    for _ in 0..n {
        let at = Utc::now();
        let rec = Record::held(
            MessageId::new(at),
            "a@example.org".into(),
            vec!["b@example.test".into()],
            at,
            (1, "00".into()),
            Summary::default(),
        );
        storage.index.insert(&rec).await.unwrap();
        let req = |owner: &str| ClaimRequest {
            now: Utc::now(),
            owner: owner.into(),
            lease_until: Utc::now() + chrono::Duration::seconds(60),
            limit: 1,
            status: standby::model::Status::Held,
            received_before: None,
            skew: chrono::Duration::zero(),
        };
        let (ra, rb) = (req("a"), req("b"));
        let (a, b) = tokio::join!(storage.index.claim(&ra), storage.index.claim(&rb));
        if a.unwrap().len() + b.unwrap().len() > 1 {
            won_by_both += 1;
        }
        // Done with it: the next round's claim sees only its own item.
        let cur = storage.index.get(rec.id).await.unwrap().unwrap();
        let mut done = cur.clone();
        done.status = standby::model::Status::Delivered;
        storage
            .index
            .update(&done, Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap();
    }
    won_by_both
}

/// Two `standby drain --force` processes on one table of `moto`, after a serve node
/// received `n` messages there: what reached the primary (token, copies), the run took,
/// and a summary line.
async fn two_drains(
    moto: &Moto,
    name: &str,
    n: usize,
) -> (HashMap<String, usize>, Vec<String>, String) {
    moto.storage(name).await;
    let pf = Postfix::primary();
    let top =
        format!("backend = \"aws\"\nbucket = \"{name}\"\ntable = \"{name}\"\nnode_id = \"mx20\"\n");
    let aws = child_env_as(moto, Principal::Serve);
    let mut env: Vec<(&str, &str)> = aws.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("STANDBY_HEALTH_UP_AFTER", "100000"));
    env.extend(SHORT_LEASES);
    let mut sb = Standby::start_with_env(pf.port, &top, &env);
    let sent = fill(&sb, "t", n);
    assert_eq!(sb.counts()["held"], n as u64);
    sb.kill9(); // only the two drains from here on
    pf.start();
    let t0 = Instant::now();
    let logs: Vec<_> = (0..2)
        .map(|i| sb.dir.path().join(format!("drain{i}.log")))
        .collect();
    let drains: Vec<Child> = logs
        .iter()
        .map(|l| sb.cli_spawn(&["drain", "--force", "--json"], "standby=debug,info", l))
        .collect();
    let reports: Vec<Value> = drains
        .into_iter()
        .enumerate()
        .map(|(i, c)| report(c, &format!("drain {i}")))
        .collect();
    // A drain ends when it finds nothing to claim; a message whose lease the other had
    // just let run out may be left: a last run picks it up.
    let last = if sb.counts()["held"] != 0 {
        sb.drain_report(&["--force"], 0)["delivered"]
            .as_u64()
            .unwrap()
    } else {
        0
    };
    assert_eq!(sb.counts()["held"], 0);
    let took = t0.elapsed();
    pf.wait_queue_empty(Duration::from_secs(120));
    let by: Vec<u64> = reports
        .iter()
        .map(|r| r["delivered"].as_u64().unwrap())
        .collect();
    assert!(by.iter().all(|d| *d > 0), "both drains delivered: {by:?}");
    let all_logs: String = logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .collect();
    let summary = format!(
        "{n} messages drained by two processes in {took:?}; delivered per drain {by:?}, by a \
         last run {last}; {} sends skipped because the lease had been taken over, {} aborted \
         before the dot",
        count(&all_logs, "lease ran out before the attempt"),
        count(&all_logs, "transaction aborted before the final dot"),
    );
    (tokens_at(&pf), sent, summary)
}

/// On moto as the tests run it (one request at a time, so each conditional write is
/// atomic, as DynamoDB's are), two drain processes deliver each message exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_drains_on_one_dynamodb_table_deliver_each_message_once() {
    let moto = Moto::start();
    let (at, sent, summary) = two_drains(&moto, "twodrains", 200).await;
    let twice: Vec<_> = at.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for t in &sent {
        assert_eq!(at.get(t), Some(&1), "{t} reached the primary");
    }
    eprintln!("concurrency (moto, one request at a time): {summary}; each once at the primary");
}

/// On `moto_server` itself, which serves requests on threads, conditional writes are not
/// atomic: two concurrent claims of one item both succeed now and then, and so can a
/// renewal and a takeover, so two drains may both send a message. What can be checked
/// there is that nothing is lost; the figures (double claims, duplicates) go to the note.
#[tokio::test(flavor = "multi_thread")]
async fn on_threaded_moto_conditional_writes_are_not_atomic_and_nothing_is_lost() {
    let moto = Moto::start_threaded();
    let doubled = double_claims(&moto, 200).await;
    let (at, sent, summary) = two_drains(&moto, "threaded", 200).await;
    for t in &sent {
        assert!(
            at.get(t).is_some_and(|n| *n >= 1),
            "{t} reached the primary"
        );
    }
    assert_eq!(at.len(), sent.len());
    let duplicated: usize = at.values().map(|n| n - 1).sum();
    eprintln!(
        "concurrency (threaded moto): {doubled} of 200 items claimed by both of two \
         concurrent conditional claims; {summary}; {duplicated} duplicated at the primary"
    );
}
