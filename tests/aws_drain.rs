//! The drain handler (`standby-drain`) against moto and a real Postfix primary: held mail
//! goes out with its original envelope, a 4xx is retried on a later invocation, a primary
//! that is down leaves everything held and the failed probe is counted, and a permanent
//! refusal bounces to the sender only when SES authenticated it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::aws::{Moto, ses_event, ses_message_id, ses_put, ses_put_fixture, ses_receive};
use common::iam::Principal;
use common::{Postfix, repo};
use standby::backend::aws::sqs::SqsFailedEvents;
use standby::config::Config;
use standby::lambda::drain::{DrainFunction, DrainRequest};
use standby::lambda::ingest::Ingest;
use standby::model::{Bounce, Intake, Status};
use standby::ports::ListQuery;
use standby::ports::Storage;
use standby::ports::{ClaimRequest, Clock};
use standby::smtp::SmtpRelay;

/// Wall clock plus an offset the test moves.
#[derive(Default)]
struct Shifted(Mutex<chrono::Duration>);
impl Shifted {
    fn advance(&self, d: chrono::Duration) {
        *self.0.lock().unwrap() += d;
    }
}
impl Clock for Shifted {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *self.0.lock().unwrap()
    }
}

fn function(
    storage: &Storage,
    table: &str,
    primary_port: u16,
    clock: Arc<Shifted>,
) -> DrainFunction {
    function_with(storage, table, primary_port, clock, &[])
}

fn function_with(
    storage: &Storage,
    table: &str,
    primary_port: u16,
    clock: Arc<Shifted>,
    extra: &[(&str, &str)],
) -> DrainFunction {
    let env = common::aws::drain_env(table, primary_port, extra);
    let config = Config::from_lambda_env(env).unwrap();
    let relay = SmtpRelay::from_config(&config).unwrap();
    DrainFunction::new(config, storage.clone(), relay).with_clock(clock)
}

/// The tags of `incoming/<key>` in `bucket`, as (key, value).
async fn object_tags(
    clients: &standby::backend::aws::AwsClients,
    bucket: &str,
    key: &str,
) -> Vec<(String, String)> {
    clients
        .s3
        .get_object_tagging()
        .bucket(bucket)
        .key(format!("incoming/{key}"))
        .send()
        .await
        .unwrap()
        .tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect()
}

fn state(v: &str) -> Vec<(String, String)> {
    vec![("standby-state".to_string(), v.to_string())]
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(120))
}

/// (Delivered-To, whole message) of each delivered copy.
fn copies(pf: &Postfix) -> Vec<(String, String)> {
    pf.delivered()
        .into_iter()
        .map(|m| {
            let text = String::from_utf8(m).unwrap();
            let to = text
                .lines()
                .find_map(|l| l.strip_prefix("Delivered-To: "))
                .unwrap_or_default()
                .to_string();
            (to, text)
        })
        .collect()
}

fn wait_copies(pf: &Postfix, n: usize) -> Vec<(String, String)> {
    common::wait_for(
        &format!("{n} copies at the primary"),
        Duration::from_secs(30),
        || pf.delivered().len() >= n,
    );
    copies(pf)
}

#[tokio::test(flavor = "multi_thread")]
async fn held_and_unindexed_mail_is_delivered_with_the_original_envelope() {
    let moto = Moto::start();
    let (clients, s, _) = moto.storage("deliver").await;
    let pf = Postfix::primary();
    pf.start();
    ses_receive(&clients, &s, "normal.json", "tok-normal").await;
    ses_receive(&clients, &s, "multi-rcpt.json", "tok-multi").await;
    // An object whose ingest never ran: the reconciler indexes it from its headers
    // (Received ... for bob@example.test) once it is older than MIN_AGE.
    ses_put_fixture(
        &clients,
        &s,
        "lost0ingest0object0abcdefghijklmnopqrst",
        "tok-lost",
    )
    .await;
    let clock = Arc::new(Shifted::default());
    clock.advance(chrono::Duration::minutes(10));

    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "deliver",
        pf.port,
        clock,
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.primary, "up", "{sum:?}");
    assert_eq!(
        (sum.reconciled, sum.delivered, sum.deferred, sum.failed),
        (1, 3, 0, 0),
        "{sum:?}"
    );
    assert_eq!(sum.held, 0);

    let got = wait_copies(&pf, 4);
    assert_eq!(
        got.len(),
        4,
        "bob x3 (normal, multi, lost) and erin; never carol or dave"
    );
    let mut to: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    to.sort();
    assert_eq!(
        to,
        [
            "bob@example.test",
            "bob@example.test",
            "bob@example.test",
            "erin@example.test"
        ]
    );
    for (_, text) in &got {
        assert!(
            text.contains("Return-Path: <prvs=144d0cba7=alice@example.org>"),
            "{text}"
        );
        assert!(text.contains("Subject: Quarterly figures"));
    }
    for token in ["tok-normal", "tok-multi", "tok-lost"] {
        assert!(
            got.iter().any(|(_, t)| t.contains(token)),
            "{token} delivered"
        );
    }
    // The bytes SES stored arrive unchanged after the primary's own trace headers; only
    // SES's `Return-Path:` is gone, because Postfix's cleanup replaces it with the
    // envelope sender (the line checked above) as RFC 5321 §4.4 asks of final delivery.
    let stored = common::fixture("ses/message.eml", "tok-normal");
    let stored = stored.split_once("\r\n").unwrap().1.to_string();
    let normal = got.iter().find(|(_, t)| t.contains("tok-normal")).unwrap();
    let (got_text, want) = (normal.1.replace("\r\n", "\n"), stored.replace("\r\n", "\n"));
    assert!(
        got_text.contains(&want),
        "stored:\n{want}\ndelivered:\n{got_text}"
    );
}

/// A stack upgraded from the single health item (`health#primary`, written before nodes
/// had their own) keeps its reconcile watermark: the first run after the upgrade does
/// not rescan the bucket and re-index (then redeliver) objects checked long ago, whose
/// records may have expired since.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgraded_stack_keeps_the_reconcile_watermark_of_the_old_health_item() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("upgrade").await;
    let pf = Postfix::primary();
    pf.start();
    // An object checked before the upgrade (its record has since expired).
    ses_put_fixture(
        &clients,
        &s,
        "checked0long0ago0abcdefghijklmnopqrstuv",
        "tok-old",
    )
    .await;
    // The item as the old code wrote it: its own key, no node, no status-index attributes.
    // Its last run was ten minutes before this one, long after the object was stored.
    let mark = (Utc::now() + chrono::Duration::minutes(50)).to_rfc3339();
    let record = serde_json::json!({
        "address": format!("127.0.0.1:{}", pf.port),
        "state": "up",
        "since": null,
        "last_probe": null,
        "consecutive_ok": 0,
        "consecutive_fail": 0,
        "reconciled_until": mark,
    });
    let attr = aws_sdk_dynamodb::types::AttributeValue::S;
    clients
        .dynamodb
        .put_item()
        .table_name(&s.table)
        .item("pk", attr("health#primary".into()))
        .item("record", attr(record.to_string()))
        .send()
        .await
        .expect("put the old health item");
    let clock = Arc::new(Shifted::default());
    clock.advance(chrono::Duration::minutes(60));
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "upgrade",
        pf.port,
        clock,
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.reconciled, sum.delivered), (0, 0), "{sum:?}");
    let rec = storage.index.load_health("lambda").await.unwrap().unwrap();
    assert!(
        rec.reconciled_until
            .is_some_and(|w| w >= mark.parse::<DateTime<Utc>>().unwrap()),
        "{rec:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_is_retried_on_a_later_invocation() {
    let moto = Moto::start();
    let (clients, s, _) = moto.storage("retry").await;
    let pf = Postfix::primary();
    pf.rcpt_replies(&[("erin@example.test", "450 4.2.0 mailbox busy")]);
    pf.start();
    ses_receive(&clients, &s, "multi-rcpt.json", "tok-retry").await;
    let clock = Arc::new(Shifted::default());
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "retry",
        pf.port,
        clock.clone(),
    );

    let first = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(
        (first.delivered, first.deferred, first.held),
        (0, 1, 1),
        "{first:?}"
    );
    let got = wait_copies(&pf, 1);
    assert_eq!(got[0].0, "bob@example.test");

    // The primary stops deferring; the next scheduled run is before the backoff ends.
    pf.rcpt_replies(&[]);
    let out = std::process::Command::new(repo().join("scripts/postfix-instance"))
        .args(["reload", pf.dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let early = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(
        (early.delivered, early.deferred, early.held),
        (0, 0, 1),
        "{early:?}"
    );

    clock.advance(chrono::Duration::minutes(2));
    let later = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((later.delivered, later.held), (1, 0), "{later:?}");
    let got = wait_copies(&pf, 2);
    let mut to: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    to.sort();
    assert_eq!(
        to,
        ["bob@example.test", "erin@example.test"],
        "bob got exactly one copy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_down_leaves_everything_held_and_counts_the_failed_probe() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("down").await;
    let pf = Postfix::primary(); // configured, never started: the port refuses
    ses_receive(&clients, &s, "normal.json", "tok-down").await;
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "down",
        pf.port,
        Arc::new(Shifted::default()),
    );

    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.primary, "down", "{sum:?}");
    assert!(sum.probe.contains("connect"), "{sum:?}");
    assert_eq!(
        (sum.delivered, sum.deferred, sum.failed, sum.held),
        (0, 0, 0, 1)
    );
    // Forced while down: the attempt cannot connect and changes nothing.
    let forced = f
        .handle(
            DrainRequest {
                force: true,
                dry_run: false,
            },
            deadline(),
        )
        .await
        .unwrap();
    assert_eq!(
        (forced.delivered, forced.deferred, forced.held),
        (0, 0, 1),
        "{forced:?}"
    );

    let h = storage.index.load_health("lambda").await.unwrap().unwrap();
    assert_eq!(h.probes_failed, 2);
    assert_eq!(h.consecutive_fail, 2);
    assert_eq!(h.probes_ok, 0);
    let recs = storage.index.list(&Default::default()).await.unwrap();
    assert_eq!(
        recs[0].attempts, 0,
        "an unreachable primary is not an attempt"
    );
    assert!(pf.delivered().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_reports_and_changes_nothing() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("dryrun").await;
    let pf = Postfix::primary();
    pf.start();
    ses_receive(&clients, &s, "normal.json", "tok-dry").await;
    ses_put_fixture(
        &clients,
        &s,
        "unindexed0object0for0the0dry0run0abcdefgh",
        "tok-dry2",
    )
    .await;
    let clock = Arc::new(Shifted::default());
    clock.advance(chrono::Duration::minutes(10));
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "dryrun",
        pf.port,
        clock,
    );
    let req = DrainRequest {
        force: false,
        dry_run: true,
    };
    let sum = f.handle(req, deadline()).await.unwrap();
    assert_eq!(
        (sum.reconciled, sum.due, sum.delivered, sum.held),
        (1, Some(1), 0, 1),
        "{sum:?}"
    );
    // Nothing was written: still one record, no probe recorded, nothing at the primary.
    assert_eq!(
        storage.index.list(&Default::default()).await.unwrap().len(),
        1
    );
    assert!(storage.index.load_health("lambda").await.unwrap().is_none());
    assert!(pf.delivered().is_empty());
    // The payload decides: anything that is not a request object means defaults.
    let parsed = DrainRequest::from_payload(&serde_json::json!({"dry_run": true}));
    assert!(parsed.dry_run && !parsed.force);
    let scheduled = DrainRequest::from_payload(&serde_json::json!("scheduler input"));
    assert!(!scheduled.dry_run && !scheduled.force);
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_mail_is_tagged_for_the_lifecycle_rule_and_its_record_expires() {
    let moto = Moto::start();
    let (clients, mut s, _) = moto.storage("retain").await;
    s.keep_delivered_days = Some(30);
    let pf = Postfix::primary();
    pf.start();
    let (ses_id, _) = ses_receive(&clients, &s, "normal.json", "tok-keep").await;
    // A second message arrives after the run and stays held: only delivered mail is marked.
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "retain",
        pf.port,
        Arc::new(Shifted::default()),
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.delivered, 1, "{sum:?}");
    let (held_id, _) = ses_receive(&clients, &s, "multi-rcpt.json", "tok-new").await;

    assert_eq!(
        object_tags(&clients, "retain", &ses_id).await,
        state("delivered")
    );
    assert!(
        object_tags(&clients, "retain", &held_id).await.is_empty(),
        "held mail is not marked"
    );

    let items = clients
        .dynamodb
        .scan()
        .table_name("retain")
        .send()
        .await
        .unwrap();
    let mut seen = 0;
    for item in items.items() {
        if !item["pk"].as_s().unwrap().starts_with("msg#") {
            continue; // the health item
        }
        let status = item["status"].as_s().unwrap();
        let rec: serde_json::Value = serde_json::from_str(item["record"].as_s().unwrap()).unwrap();
        let received: DateTime<Utc> = rec["received_at"].as_str().unwrap().parse().unwrap();
        let ttl = item.get("expires_at").map(|v| v.as_n().unwrap().clone());
        match status.as_str() {
            "delivered" => {
                let want = (received + chrono::Duration::days(30)).timestamp();
                assert_eq!(ttl, Some(want.to_string()), "TTL 30 days after receipt");
                seen += 1;
            }
            _ => assert_eq!(ttl, None, "a {status} record must not expire"),
        }
    }
    assert_eq!(seen, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_refusal_bounces_once_and_only_to_a_sender_ses_authenticated() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("bounce").await;
    let pf = Postfix::primary();
    pf.rcpt_replies(&[("bob@example.test", "550 5.1.1 no such user here")]);
    pf.start();
    // SES said SPF PASS for this one ...
    let (pass_ses, _) = ses_receive(&clients, &s, "normal.json", "tok-pass").await;
    // ... and SPF and DMARC FAIL for this one (a forged sender).
    let mut ev = ses_event("multi-rcpt.json");
    let receipt = &mut ev["Records"][0]["ses"]["receipt"];
    receipt["spfVerdict"]["status"] = "FAIL".into();
    receipt["dmarcVerdict"]["status"] = "FAIL".into();
    let forged_ses = ses_message_id(&ev);
    let raw = common::fixture("ses/message.eml", "tok-forged");
    ses_put(&clients, &s, &forged_ses, raw.as_bytes()).await;
    Ingest::new(moto.storage_as(Principal::Ingest, &s).await, "")
        .handle(ev)
        .await
        .unwrap();

    let clock = Arc::new(Shifted::default());
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "bounce",
        pf.port,
        clock.clone(),
    );
    let first = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(first.failed, 2, "{first:?}");
    // The DSN is an ordinary held message with sender <>; this or the next run sends it.
    clock.advance(chrono::Duration::minutes(2));
    f.handle(DrainRequest::default(), deadline()).await.unwrap();

    let all = storage.index.list(&ListQuery::default()).await.unwrap();
    let by_blob = |ses: &str| {
        all.iter()
            .find(|r| r.blob.as_deref() == Some(ses))
            .unwrap_or_else(|| panic!("{ses} not indexed: {all:?}"))
    };
    let pass = by_blob(&pass_ses);
    assert_eq!(pass.status, Status::Failed);
    let Some(Bounce::Queued { id: dsn_id }) = pass.bounce else {
        panic!("{:?}", pass.bounce);
    };
    let forged = by_blob(&forged_ses);
    assert_eq!(forged.status, Status::Failed);
    assert!(
        matches!(&forged.bounce, Some(Bounce::Suppressed { why }) if why.contains("SPF FAIL, DMARC FAIL")),
        "{:?}",
        forged.bounce
    );
    assert_eq!(all.len(), 3, "two messages and one DSN: {all:?}");
    let dsn = storage.index.get(dsn_id).await.unwrap().unwrap();
    assert_eq!(
        (dsn.intake, dsn.mail_from.as_str(), dsn.status),
        (Intake::Dsn, "", Status::Delivered)
    );
    assert_eq!(dsn.rcpts[0].address, "prvs=144d0cba7=alice@example.org");
    // Stored in the bucket next to the mail, written create-only.
    let obj = clients
        .s3
        .get_object()
        .bucket(&s.bucket)
        .key(format!("{}{dsn_id}", s.prefix))
        .send()
        .await
        .expect("the DSN's object");
    let body = obj.body.collect().await.unwrap().into_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; bob@example.test"),
        "{text}"
    );
    // The primary took it from <> (and relays it to the sender's domain itself).
    common::wait_for(
        "the primary to log the DSN",
        Duration::from_secs(20),
        || pf.maillog().contains("from=<>"),
    );

    // Later runs send nothing more.
    clock.advance(chrono::Duration::hours(2));
    let again = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((again.delivered, again.failed), (0, 0), "{again:?}");
    assert_eq!(
        storage
            .index
            .list(&ListQuery::default())
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_function_applies_retention_once_per_interval_and_audits_it() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("retain").await;
    let pf = Postfix::primary();
    pf.start();
    ses_receive(&clients, &s, "normal.json", "tok-retain").await;
    let clock = Arc::new(Shifted::default());
    let policy = [("STANDBY_RETENTION_DELIVERED_DAYS", "1")];
    let f = function_with(
        &moto.storage_as(Principal::Drain, &s).await,
        "retain",
        pf.port,
        clock.clone(),
        &policy,
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.delivered, sum.retention_deleted), (1, 0), "{sum:?}");

    // Two days on, the delivered message is past delivered_days: deleted, audited.
    clock.advance(chrono::Duration::days(2));
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.retention_deleted, 1, "{sum:?}");
    assert!(
        storage
            .index
            .list(&ListQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    let audit = storage.audit.entries().await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].by.as_str(), audit[0].reason.as_str()),
        ("retention", "delivered_days = 1")
    );
    let ran = storage
        .index
        .load_health("lambda")
        .await
        .unwrap()
        .unwrap()
        .retained_at;
    // The next minute's invocation does not run it again (hourly by default).
    clock.advance(chrono::Duration::minutes(1));
    f.handle(DrainRequest::default(), deadline()).await.unwrap();
    let again = storage
        .index
        .load_health("lambda")
        .await
        .unwrap()
        .unwrap()
        .retained_at;
    assert_eq!(ran, again);
}

/// `ev` with SES message id `id` and `rcpts` as the receipt's recipients: the event one
/// receipt rule sends for the recipients it matched.
fn rule_event(name: &str, id: &str, rcpts: &[&str]) -> serde_json::Value {
    let mut ev = ses_event(name);
    let ses = &mut ev["Records"][0]["ses"];
    ses["mail"]["messageId"] = id.into();
    ses["receipt"]["recipients"] = rcpts.iter().map(|r| serde_json::json!(r)).collect();
    ev
}

/// Sorted Delivered-To of every copy at the primary, once its queue is empty.
fn delivered_to(pf: &Postfix, n: usize) -> Vec<String> {
    let got = wait_copies(pf, n);
    pf.wait_queue_empty(Duration::from_secs(30));
    let mut to: Vec<String> = copies(pf).into_iter().map(|(t, _)| t).collect();
    assert!(got.len() <= to.len());
    to.sort();
    to
}

/// SES runs every matching rule of the active rule set; each rule's event carries only the
/// recipients that rule matched, and each rule's S3 action writes the same object. The
/// second event merges its recipients into the record the first made, even after the
/// first one's recipients were delivered: each recipient gets the message once.
#[tokio::test(flavor = "multi_thread")]
async fn recipients_of_two_receipt_rules_each_get_the_message_once() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("rules").await;
    let pf = Postfix::primary();
    pf.start();
    let id = "tworules0object0abcdefghijklmnopqrstuvw";
    ses_put_fixture(&clients, &s, id, "tok-rules").await;
    let ingest = Ingest::new(moto.storage_as(Principal::Ingest, &s).await, "");
    let first = ingest
        .handle(rule_event("normal.json", id, &["bob@example.test"]))
        .await
        .unwrap();
    assert_eq!(first.indexed, 1, "{first:?}");
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "rules",
        pf.port,
        Arc::new(Shifted::default()),
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.delivered, sum.held), (1, 0), "{sum:?}");
    assert_eq!(delivered_to(&pf, 1), ["bob@example.test"]);
    assert_eq!(object_tags(&clients, "rules", id).await, state("delivered"));

    // The other rule's event, late (Lambda's async retries) and then again (a duplicate).
    let second = ingest
        .handle(rule_event("normal.json", id, &["erin@example.test"]))
        .await
        .unwrap();
    assert_eq!((second.indexed, second.merged), (0, 1), "{second:?}");
    // Reopened: the bucket's lifecycle rule must not delete the object before erin has it.
    assert!(
        object_tags(&clients, "rules", id).await.is_empty(),
        "a reopened record's object is no longer marked delivered"
    );
    let again = ingest
        .handle(rule_event("normal.json", id, &["erin@example.test"]))
        .await
        .unwrap();
    assert_eq!((again.merged, again.duplicates), (0, 1), "{again:?}");
    let recs = storage.index.list(&ListQuery::default()).await.unwrap();
    assert_eq!(recs.len(), 1, "one record for the object");
    assert_eq!(recs[0].status, Status::Held);

    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.delivered, sum.held), (1, 0), "{sum:?}");
    assert_eq!(
        delivered_to(&pf, 2),
        ["bob@example.test", "erin@example.test"],
        "erin got it, bob not twice"
    );
    assert_eq!(object_tags(&clients, "rules", id).await, state("delivered"));
}

/// A message under legal hold keeps its `legal-hold` tag when the drain delivers it (the
/// bucket's lifecycle rule deletes objects tagged `delivered`), and a hold placed between
/// the drain's write-back and its tagging wins: the drain reads the record again after
/// tagging and puts the hold's tag back.
#[tokio::test(flavor = "multi_thread")]
async fn a_legal_hold_keeps_its_mark_whatever_the_drain_delivers() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("hold").await;
    let pf = Postfix::primary();
    pf.start();
    let (held_key, _) = ses_receive(&clients, &s, "normal.json", "tok-hold").await;
    let operator = moto.storage_as(Principal::Operator, &s).await;
    let place_hold = async |key: &str| {
        let recs = storage.index.list(&ListQuery::default()).await.unwrap();
        let mut rec = recs.into_iter().find(|r| r.blob_key() == key).unwrap();
        rec.legal_hold = Some(standby::model::LegalHold {
            at: Utc::now(),
            reason: "litigation".into(),
        });
        operator.index.update(&rec, Utc::now()).await.unwrap();
        // What `standby hold --legal` does after the record.
        operator.blobs.set_legal_hold(key, true).await.unwrap();
        standby::retention::mark(&operator, &rec).await.unwrap();
    };
    place_hold(&held_key).await;
    assert_eq!(
        object_tags(&clients, "hold", &held_key).await,
        state("legal-hold")
    );

    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "hold",
        pf.port,
        Arc::new(Shifted::default()),
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.delivered, 1, "{sum:?}");
    assert_eq!(
        object_tags(&clients, "hold", &held_key).await,
        state("legal-hold"),
        "delivered under legal hold: never marked for the lifecycle rule"
    );

    // The race: the drain wrote back a delivery (the record it holds says delivered,
    // no hold), an operator places a hold, then the drain's tagging comes.
    let (raced_key, _) = ses_receive(&clients, &s, "multi-rcpt.json", "tok-raced").await;
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.delivered, 1, "{sum:?}");
    let recs = storage.index.list(&ListQuery::default()).await.unwrap();
    let stale = recs
        .into_iter()
        .find(|r| r.blob_key() == raced_key)
        .unwrap();
    assert_eq!(
        (stale.status, stale.legal_hold.is_some()),
        (Status::Delivered, false)
    );
    place_hold(&raced_key).await;
    // The drain's late tagging.
    standby::retention::mark(&moto.storage_as(Principal::Drain, &s).await, &stale)
        .await
        .unwrap();
    assert_eq!(
        object_tags(&clients, "hold", &raced_key).await,
        state("legal-hold"),
        "the hold placed meanwhile wins over the drain's late tagging"
    );
}

/// The reconciler guessed an envelope from the headers because ingest had not run; the
/// exact event comes later (async retries, throttling). Recipients the guess missed get
/// the message once, whether the guess was delivered already or parked as failed for
/// want of a recipient in our domains.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_exact_event_reaches_the_recipients_a_delivered_or_failed_guess_missed() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("lateguess").await;
    let pf = Postfix::primary();
    pf.start();
    // One object whose headers name bob (Received ... for bob), one naming nobody of ours.
    let (guessed, parked) = (
        "guessed0object0abcdefghijklmnopqrstuvwxy",
        "parked00object0abcdefghijklmnopqrstuvwxy",
    );
    ses_put_fixture(&clients, &s, guessed, "tok-guessed").await;
    let foreign = common::fixture("ses/message.eml", "tok-parked")
        .replace("\r\n for bob@example.test;", "")
        .replace("\n for bob@example.test;", "")
        .replace("To: bob@example.test", "To: eve@elsewhere.example");
    assert!(!foreign.contains("bob@example.test"), "{foreign}");
    ses_put(&clients, &s, parked, foreign.as_bytes()).await;
    let clock = Arc::new(Shifted::default());
    clock.advance(chrono::Duration::minutes(10));
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "lateguess",
        pf.port,
        clock,
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(
        (sum.reconciled, sum.delivered, sum.held),
        (2, 1, 0),
        "{sum:?}"
    );
    assert_eq!(delivered_to(&pf, 1), ["bob@example.test"]);
    let failed = storage
        .index
        .list(&ListQuery {
            status: Some(Status::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "the guess without a recipient is parked");

    // The exact events: bob and the Bcc'd erin; erin alone for the parked one.
    let ingest = Ingest::new(moto.storage_as(Principal::Ingest, &s).await, "");
    let a = ingest
        .handle(rule_event(
            "normal.json",
            guessed,
            &["bob@example.test", "erin@example.test"],
        ))
        .await
        .unwrap();
    let b = ingest
        .handle(rule_event("normal.json", parked, &["erin@example.test"]))
        .await
        .unwrap();
    assert_eq!((a.upgraded, b.upgraded), (1, 1), "{a:?} {b:?}");
    for rec in storage.index.list(&ListQuery::default()).await.unwrap() {
        assert_eq!(rec.intake, Intake::Ses, "{rec:?}");
        assert_eq!(rec.status, Status::Held, "{rec:?}");
    }
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.delivered, sum.held), (2, 0), "{sum:?}");
    let to = delivered_to(&pf, 3);
    assert_eq!(
        to,
        ["bob@example.test", "erin@example.test", "erin@example.test"],
        "erin once per message, bob once"
    );
    for (_, text) in copies(&pf) {
        assert!(
            text.contains("Return-Path: <prvs=144d0cba7=alice@example.org>"),
            "the event's sender: {text}"
        );
    }
}

/// A journal copy whose ingest never ran (the primary journals to the standby's journal
/// address during an outage): the reconciler files it as journal, like the ingest would.
/// Guessed as ordinary mail, it would go to its To/Cc recipients, and the primary would
/// journal that delivery again.
#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_files_a_journal_copy_as_journal_and_delivers_nothing() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("journalrec").await;
    let pf = Postfix::primary();
    pf.start();
    let raw = common::fixture("ses/message.eml", "tok-journal")
        .replace("for bob@example.test;", "for journal@example.test;");
    ses_put(
        &clients,
        &s,
        "journal0object0abcdefghijklmnopqrstuvwx",
        raw.as_bytes(),
    )
    .await;
    let clock = Arc::new(Shifted::default());
    clock.advance(chrono::Duration::minutes(10));
    let f = function_with(
        &moto.storage_as(Principal::Drain, &s).await,
        "journalrec",
        pf.port,
        clock,
        &[
            ("STANDBY_JOURNAL_ADDRESSES", "journal@example.test"),
            // The client SES names in the fixture's Received: field.
            ("STANDBY_JOURNAL_ALLOW", "192.0.2.10/32"),
        ],
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(
        (sum.reconciled, sum.delivered, sum.failed, sum.held),
        (1, 0, 0, 0),
        "{sum:?}"
    );
    let recs = storage.index.list(&ListQuery::default()).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].status, Status::Journal, "{:?}", recs[0]);
    let rcpts: Vec<&str> = recs[0].rcpts.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        rcpts,
        ["bob@example.test"],
        "the original recipient, kept for replay"
    );
    assert!(pf.delivered().is_empty(), "nothing reached a mailbox");
}

/// An event that still failed after Lambda's retries because a drain held its record
/// (the merge waits only so long) lands in the ingest function's on-failure queue; the
/// drain function ingests it from there once the lease is gone, and the recipients it
/// adds get the message. Left alone, they never would: the reconciler skips an object
/// that has a record.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_failed_on_a_lease_is_ingested_from_the_failure_queue() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("failq").await;
    let pf = Postfix::primary();
    pf.start();
    let id = "failedq0object0abcdefghijklmnopqrstuvwx";
    ses_put_fixture(&clients, &s, id, "tok-failq").await;
    Ingest::new(moto.storage_as(Principal::Ingest, &s).await, "")
        .handle(rule_event("normal.json", id, &["bob@example.test"]))
        .await
        .unwrap();
    // Another drain holds the record for 3 s more.
    let now = Utc::now();
    let claimed = storage
        .index
        .claim(&ClaimRequest {
            now,
            owner: "another-drain".into(),
            lease_until: now + chrono::Duration::seconds(3),
            limit: 10,
            status: standby::model::Status::Held,
            received_before: None,
            skew: chrono::Duration::zero(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // The other rule's event fails on that lease, and Lambda, after its retries, puts
    // the invocation record in the on-failure queue.
    let second = rule_event("normal.json", id, &["erin@example.test"]);
    let err = Ingest::new(moto.storage_as(Principal::Ingest, &s).await, "")
        .with_lease_wait(Duration::ZERO)
        .handle(second.clone())
        .await
        .unwrap_err();
    let sqs = aws_sdk_sqs::Client::new(&clients.sdk);
    let url = sqs
        .create_queue()
        .queue_name("failq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let record = serde_json::json!({
        "version": "1.0",
        "requestContext": { "condition": "RetriesExhausted", "approximateInvokeCount": 3 },
        "requestPayload": second,
        "responseContext": { "statusCode": 200, "functionError": "Unhandled" },
        "responsePayload": { "errorType": err.kind(), "errorMessage": err.to_string() },
    });
    sqs.send_message()
        .queue_url(&url)
        .message_body(record.to_string())
        .send()
        .await
        .unwrap();
    let queue = Arc::new(SqsFailedEvents::new(
        &moto.clients_as(Principal::Drain).await.sdk,
        &url,
        Duration::from_secs(1),
    ));
    let f = function(
        &moto.storage_as(Principal::Drain, &s).await,
        "failq",
        pf.port,
        Arc::new(Shifted::default()),
    )
    .with_failed_events(queue);

    // While the lease runs the event stays queued, and nothing is delivered.
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.reingested, sum.delivered), (0, 0), "{sum:?}");

    std::thread::sleep(Duration::from_secs(4));
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(
        (sum.reingested, sum.delivered, sum.held),
        (1, 1, 0),
        "{sum:?}"
    );
    assert_eq!(
        delivered_to(&pf, 2),
        ["bob@example.test", "erin@example.test"]
    );
    let left = sqs
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    assert!(
        left.messages.unwrap_or_default().is_empty(),
        "the event left the queue"
    );
}

/// The failure queue is best effort: one that cannot be read never stops delivery, and
/// an event that cannot succeed (its object is gone) leaves the queue after a few tries
/// instead of coming back for 14 days.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_failure_queue_never_stops_delivery_and_hopeless_events_leave_it() {
    let moto = Moto::start();
    let (clients, s, _) = moto.storage("poison").await;
    let pf = Postfix::primary();
    pf.start();
    ses_receive(&clients, &s, "normal.json", "tok-poison").await;
    let sqs = aws_sdk_sqs::Client::new(&clients.sdk);
    let url = sqs
        .create_queue()
        .queue_name("poison")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    // A queue that does not exist (deleted, or not yet allowed): the run delivers anyway.
    let gone = url.replace("/poison", "/no-such-queue");
    // The drain function reading the failure queue at `url`, a message coming back
    // `visible` after it was received.
    let drain_with_queue = async |url: &str, visible: Duration| {
        function(
            &moto.storage_as(Principal::Drain, &s).await,
            "poison",
            pf.port,
            Arc::new(Shifted::default()),
        )
        .with_failed_events(Arc::new(SqsFailedEvents::new(
            &moto.clients_as(Principal::Drain).await.sdk,
            url,
            visible,
        )))
    };
    let f = drain_with_queue(&gone, Duration::from_secs(1)).await;
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.reingested, sum.delivered), (0, 1), "{sum:?}");
    assert_eq!(delivered_to(&pf, 1), ["bob@example.test"]);

    // An event for an object that is gone; visible again at once, so one run sees it
    // REINGEST_TRIES times and drops it.
    let missing = rule_event(
        "normal.json",
        "missing0object0abcdefghijklmnopqrstuvwx",
        &["bob@example.test"],
    );
    sqs.send_message()
        .queue_url(&url)
        .message_body(serde_json::json!({ "requestPayload": missing }).to_string())
        .send()
        .await
        .unwrap();
    let f = drain_with_queue(&url, Duration::ZERO).await;
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.reingested, sum.delivered), (0, 0), "{sum:?}");
    let left = sqs.receive_message().queue_url(&url).send().await.unwrap();
    assert!(
        left.messages.unwrap_or_default().is_empty(),
        "the hopeless event left the queue"
    );
}

/// What a user sent through a `serve` node to an outside recipient goes out at the drain
/// function's next run, through SES, whatever the primary's state: no node needs to
/// stay up for it. Every request is the drain function's, checked against its policy.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_function_sends_what_users_sent_to_outside_recipients_through_ses() {
    let moto = Moto::start();
    let (clients, s, _) = moto.storage("outb").await;
    moto.verify_ses_domain("example.test").await;
    // A serve node stored the message (its parts under serve/).
    let node = Storage::aws_serve(&clients, &s);
    let spool: Arc<dyn standby::ports::Inbound> = Arc::new(standby::ingest::Spool::new(
        node.clone(),
        Arc::new(standby::ports::SystemClock),
        "standby.example.test",
    ));
    let sending = standby::outbound::Sending::new(
        node.clone(),
        spool,
        Arc::new(standby::ports::SystemClock),
        &["example.test".to_string()],
        None,
    );
    let alice = standby::ports::Identity {
        address: "alice@example.test".into(),
        addresses: vec!["alice@example.test".into()],
        excluded: vec![],
    };
    let token = "drain-outbound-4e1";
    let message = format!(
        "From: alice@example.test\r\nTo: friend@outside.test\r\nSubject: {token}\r\n\r\nhello\r\n"
    );
    sending
        .submit(standby::outbound::Submitted {
            user: &alice,
            mail_from: "alice@example.test",
            rcpts: &["friend@outside.test".to_string()],
            message: message.as_bytes(),
            origin: standby::model::Origin {
                user: Some("alice@example.test".into()),
                ..Default::default()
            },
            via: "smtp",
        })
        .await
        .unwrap();
    let pf = Postfix::primary(); // never started: the primary is down
    let storage = moto.storage_as(Principal::Drain, &s).await;
    let env = common::aws::drain_env("outb", pf.port, &[("STANDBY_OUTBOUND_MODE", "ses")]);
    let config = Config::from_lambda_env(env).unwrap();
    let queue = standby::lambda::outbound_queue(
        &config,
        &storage,
        &moto.clients_as(Principal::Drain).await,
    )
    .expect("a queue in ses mode");
    let f = function_with(
        &storage,
        "outb",
        pf.port,
        Arc::new(Shifted::default()),
        &[("STANDBY_OUTBOUND_MODE", "ses")],
    )
    .with_outbound(queue);
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.primary, "down", "{sum:?}");
    assert_eq!(sum.sent_outside, 1, "{sum:?}");
    let sent = moto.ses_sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0]["raw_data"].as_str().unwrap().contains(token));
    // The held parts (the sender's copy) wait for the primary; nothing outbound is left.
    let left = storage
        .index
        .list(&ListQuery {
            status: Some(Status::Outbound),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // A second run sends nothing again.
    let again = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(again.sent_outside, 0);
}

/// `n` held messages, the SES way, each its own (ids `<tag>0000...<i>`).
async fn receive_many(moto: &Moto, s: &standby::config::AwsSettings, tag: &str, n: usize) {
    let clients = moto.clients().await;
    for i in 0..n {
        let mut ev = ses_event("normal.json");
        let id = format!("{tag}{i:0>36}");
        ev["Records"][0]["ses"]["mail"]["messageId"] = id.clone().into();
        let raw = common::fixture("ses/message.eml", &format!("{tag}-{i}"));
        ses_put(&clients, s, &id, raw.as_bytes()).await;
        Ingest::new(moto.storage_as(Principal::Ingest, s).await, "")
            .handle(ev)
            .await
            .unwrap();
    }
}

/// The drain function ramps too, counting from the primary's return across its runs
/// (invocations); a forced run does not.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_function_ramps_from_the_primarys_return_and_force_skips_it() {
    let moto = Moto::start();
    let (_, s, storage) = moto.storage("ramp").await;
    let primary = common::FakePrimary::start(vec![common::FakeReply::Replies {
        mail: "250 2.1.0 ok\r\n",
        rcpt: "250 2.1.5 ok\r\n",
        data_end: "250 2.0.0 queued\r\n",
    }]);
    let ramp = [
        ("STANDBY_DRAIN_RATE_PER_SEC", "8"),
        ("STANDBY_DRAIN_RAMP_START_PER_SEC", "2"),
        ("STANDBY_DRAIN_RAMP_STEP_SECS", "60"),
    ];
    let drain_storage = moto.storage_as(Principal::Drain, &s).await;
    let clock = Arc::new(Shifted::default());
    let f = function_with(&drain_storage, "ramp", primary.port, clock.clone(), &ramp);
    // Forced: the operator's own pace, `rate_per_sec`.
    receive_many(&moto, &s, "forced", 10).await;
    let forced = DrainRequest {
        force: true,
        ..Default::default()
    };
    let sum = f.handle(forced, deadline()).await.unwrap();
    assert_eq!(sum.delivered, 10, "{sum:?}");
    let at = primary.arrivals();
    let span = at[9] - at[0];
    assert!(
        span < 2000,
        "10 at 8 a second take about 1.1 s (4 a second: 2.25 s), not {span} ms"
    );
    // On its own: 2 a second in the ramp's first minute, which began when the primary
    // came back (the first run's probe), not with this run.
    receive_many(&moto, &s, "ramped", 6).await;
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.delivered, 6, "{sum:?}");
    let at = primary.arrivals();
    let ramped = &at[10..];
    let span = ramped[5] - ramped[0];
    assert!(
        span >= 2300,
        "6 at 2 a second take about 2.5 s, not {span} ms"
    );
    // A minute after the primary came back (by the function's clock): the next step,
    // 4 a second, in a later run.
    clock.advance(chrono::Duration::seconds(61));
    receive_many(&moto, &s, "stepped", 6).await;
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.delivered, 6, "{sum:?}");
    let at = primary.arrivals();
    let stepped = &at[16..];
    let span = stepped[5] - stepped[0];
    assert!(
        (1100..2300).contains(&span),
        "6 at 4 a second take about 1.25 s (2 a second: 2.5 s, 8: 0.6 s), not {span} ms"
    );
    assert_eq!(storage.index.count(Status::Held).await.unwrap(), 0);
}

/// The continuity loop runs in the drain function as in `standby serve`: the primary
/// down for `start_after_secs` (by the function's clock, across invocations) starts an
/// event, alerted to the alarm topic, and each user with held mail and a phone gets an
/// SMS with a one-time link; the primary back and the backlog delivered, the event ends
/// after `end_after_secs`, alerted once. Every request is checked against the drain
/// function's policy in the template.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_function_runs_continuity_events_with_sns_alerts_and_sms() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("continuity").await;
    let topic = aws_sdk_sns::Client::new(&clients.sdk)
        .create_topic()
        .name("standby-alarms")
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    // The alternates, where the function reads them: the bucket's users/alternates.csv.
    clients
        .s3
        .put_object()
        .bucket(&s.bucket)
        .key("users/alternates.csv")
        .body(
            b"address,alternate_email,phone\nbob@example.test,,+15551234567\ncarol@example.test,,+15557654321\n"
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let port = common::free_port();
    let env = [
        ("STANDBY_CONTINUITY_START_AFTER_SECS", "300"),
        ("STANDBY_CONTINUITY_END_AFTER_SECS", "300"),
        ("STANDBY_ALERTS_SNS_TOPIC", topic.as_str()),
        ("STANDBY_WEB_PUBLIC_URL", "https://inbox.example.test/"),
    ];
    let config = Config::from_lambda_env(common::aws::drain_env("continuity", port, &env)).unwrap();
    let drain_clients = moto.clients_as(Principal::Drain).await;
    let drain_storage = moto.storage_as(Principal::Drain, &s).await;
    let clock = Arc::new(Shifted::default());
    let mut runner =
        standby::lambda::continuity_runner(&config, &drain_storage, &drain_clients, false)
            .await
            .unwrap();
    runner.clock = clock.clone();
    // The web function's session key, as the function reads it from Secrets Manager.
    runner.notices.as_mut().expect("notices").key =
        Some(standby::web::SessionKey::from_secret(&[7; 40]).unwrap());
    let f = function_with(&drain_storage, "continuity", port, clock.clone(), &env)
        .with_continuity(runner);
    // Mail received now (the fixture's is days old: held that long with nothing
    // delivered would start an event at once, rightly).
    let mut ev = ses_event("normal.json");
    let id = format!("held{:0>36}", 0);
    ev["Records"][0]["ses"]["mail"]["messageId"] = id.clone().into();
    ev["Records"][0]["ses"]["mail"]["timestamp"] = Utc::now().to_rfc3339().into();
    ev["Records"][0]["ses"]["receipt"]["timestamp"] = Utc::now().to_rfc3339().into();
    let raw = common::fixture("ses/message.eml", "held-0");
    ses_put(&moto.clients().await, &s, &id, raw.as_bytes()).await;
    Ingest::new(moto.storage_as(Principal::Ingest, &s).await, "")
        .handle(ev)
        .await
        .unwrap();
    // The primary is down: the first run sees it, and nothing starts yet.
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.primary, "down", "{sum:?}");
    assert_eq!(sum.continuity, None);
    assert!(moto.sns_published().is_empty());
    // Five minutes on (the function's clock): the event starts.
    clock.advance(chrono::Duration::seconds(301));
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    let event = sum.continuity.clone().expect("an event under way");
    let published = moto.sns_published();
    let alerts: Vec<_> = published
        .iter()
        .filter(|p| p["topic"] == topic.as_str())
        .collect();
    assert_eq!(alerts.len(), 1, "{published:?}");
    assert!(
        alerts[0]["subject"].as_str().unwrap().contains("started"),
        "{published:?}"
    );
    assert!(alerts[0]["message"].as_str().unwrap().contains(&event));
    // bob has held mail and a phone; carol has no held mail.
    let sms: Vec<_> = published
        .iter()
        .filter(|p| p["phone"].is_string())
        .collect();
    assert_eq!(sms.len(), 1, "{published:?}");
    assert_eq!(sms[0]["phone"], "+15551234567");
    assert!(
        sms[0]["message"]
            .as_str()
            .unwrap()
            .contains("https://inbox.example.test/login/link?t="),
        "{sms:?}"
    );
    // Another run: nothing sent again.
    f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(moto.sns_published().len(), 2);
    // The primary comes back: the backlog goes, and five quiet minutes end the event.
    let _primary = common::FakePrimary::start_on(
        port,
        vec![common::FakeReply::Replies {
            mail: "250 2.1.0 ok\r\n",
            rcpt: "250 2.1.5 ok\r\n",
            data_end: "250 2.0.0 queued\r\n",
        }],
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!((sum.primary.as_str(), sum.delivered), ("up", 1), "{sum:?}");
    assert_eq!(sum.continuity.as_deref(), Some(event.as_str()));
    clock.advance(chrono::Duration::seconds(301));
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(sum.continuity, None, "{sum:?}");
    f.handle(DrainRequest::default(), deadline()).await.unwrap();
    let published = moto.sns_published();
    let subjects: Vec<&str> = published
        .iter()
        .filter(|p| p["topic"] == topic.as_str())
        .map(|p| p["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 2, "{published:?}");
    assert!(subjects[1].contains("ended"), "{subjects:?}");
    let record = storage.events.load().await.unwrap();
    assert_eq!(record.history[0].id, event);
    assert_eq!(record.history[0].told, 1);
    assert!(record.pending.is_empty(), "{record:?}");
}

/// An SES object holds what the sender sent, bare line ends included, and a sender can
/// hide a second transaction behind them (`<LF>.<LF>MAIL FROM:...`: SMTP smuggling).
/// Relayed to a strict primary (Postfix with `smtpd_forbid_bare_newline = yes`, which
/// refuses a bare `<LF>` and would wait forever for an end of data after one), the
/// message arrives once, whole, every line end a `<CR><LF>`, and the hidden commands are
/// lines of its text, delivered to nobody. A field with our authserv-id hidden behind a
/// bare CR is removed like any other: the header filter reads the lines the primary gets.
#[tokio::test(flavor = "multi_thread")]
async fn bare_line_ends_in_an_ses_object_reach_a_strict_primary_as_lines_of_one_message() {
    let moto = Moto::start();
    let (clients, s, storage) = moto.storage("bare").await;
    let pf = Postfix::primary();
    pf.postconf(&[
        "smtpd_forbid_bare_newline = yes",
        "smtpd_forbid_bare_newline_exclusions =",
    ]);
    pf.start();
    let ev = ses_event("normal.json");
    let id = ses_message_id(&ev);
    let fixture = common::fixture("ses/message.eml", "tok-bare");
    // Line ends as a careless or hostile sender wrote them: bare LFs, a bare CR, a
    // smuggled transaction, a last line with a bare end, and in the header a field
    // carrying our authserv-id behind a bare CR (the primary would trust it).
    let raw = format!(
        "{}\n.\nMAIL FROM:<x@evil.example>\nRCPT TO:<carol@example.test>\nDATA\nsmuggled\n.\n\
         after\r.\rmore\n",
        fixture.replace("\r\n", "\n").trim_end().replace(
            "Subject: Quarterly figures",
            "Subject: Quarterly figures\rAuthentication-Results: standby.example.test; \
             dmarc=pass header.from=bank.example"
        )
    );
    ses_put(&clients, &s, &id, raw.as_bytes()).await;
    let ingest = Ingest::new(moto.storage_as(Principal::Ingest, &s).await, "");
    assert_eq!(ingest.handle(ev).await.unwrap().indexed, 1);
    // The index reads the header as the primary will: the field behind the bare CR is
    // not part of the subject.
    let recs = storage.index.list(&ListQuery::default()).await.unwrap();
    assert_eq!(
        recs[0].summary.subject.as_deref(),
        Some("Quarterly figures")
    );
    let f = function_with(
        &moto.storage_as(Principal::Drain, &s).await,
        "bare",
        pf.port,
        Arc::new(Shifted::default()),
        &[("STANDBY_HOSTNAME", "standby.example.test")],
    );
    let sum = f.handle(DrainRequest::default(), deadline()).await.unwrap();
    assert_eq!(
        (sum.delivered, sum.deferred, sum.failed, sum.held),
        (1, 0, 0, 0),
        "{sum:?}\n{}",
        pf.maillog()
    );
    let to = delivered_to(&pf, 1);
    let log = pf.maillog();
    assert_eq!(to, ["bob@example.test"], "one copy, to bob only:\n{log}");
    assert!(!log.contains("bare <LF>"), "{log}");
    let (_, text) = &copies(&pf)[0];
    assert!(text.contains("tok-bare"));
    assert!(
        !text.contains("bank.example")
            && text.contains("Authentication-Results: standby.example.test;"),
        "the hidden field is removed, ours is on top:\n{text}"
    );
    // Postfix's Maildir files end lines in LF; a bare CR would have stayed in its line.
    let body = text.split_once("\n\n").map_or(text.as_str(), |(_, b)| b);
    assert!(
        body.contains(
            "\n.\nMAIL FROM:<x@evil.example>\nRCPT TO:<carol@example.test>\nDATA\nsmuggled\n.\nafter\n.\nmore\n"
        ) && !body.contains('\r'),
        "the hidden transaction arrives as lines of text:\n{body:?}"
    );
}
