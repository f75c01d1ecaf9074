//! The ingest handler (`standby-ingest`) against moto through the real SDK, with SES
//! event fixtures from `tests/fixtures/ses/`: the object is put where the receipt rule's
//! S3 action would put it, then the handler is called with the event.

mod common;

use chrono::{Duration, Utc};
use common::aws::{Moto, ses_event as event, ses_put};
use common::iam::Principal;
use sha2::{Digest, Sha256};
use standby::lambda::ingest::{Ingest, IngestError};
use standby::lambda::reconcile::{Bounds, reconcile, reconcile_within};
use standby::model::{Intake, RcptStatus, Status};
use standby::ports::ListQuery;
use standby::ports::Storage;
use tokio::io::AsyncReadExt;

fn ses_id(ev: &serde_json::Value) -> String {
    ev["Records"][0]["ses"]["mail"]["messageId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn raw(token: &str) -> Vec<u8> {
    common::fixture("ses/message.eml", token).into_bytes()
}

async fn all(storage: &Storage) -> Vec<standby::model::Record> {
    storage.index.list(&ListQuery::default()).await.unwrap()
}

#[tokio::test]
async fn normal_event_is_indexed_with_envelope_verdicts_and_summary() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("normal").await;
    let ev = event("normal.json");
    let body = raw("tok-normal");
    ses_put(&clients, &settings, &ses_id(&ev), &body).await;

    let ingest = Ingest::new(
        moto.storage_as(Principal::Ingest, &settings).await,
        "s3://normal/incoming/",
    );
    let report = ingest.handle(ev.clone()).await.unwrap();
    assert_eq!((report.indexed, report.duplicates), (1, 0));

    let recs = all(&storage).await;
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.status, Status::Held);
    assert_eq!(r.mail_from, "prvs=144d0cba7=alice@example.org");
    assert_eq!(r.rcpts.len(), 1);
    assert_eq!(r.rcpts[0].address, "bob@example.test");
    assert_eq!(r.intake, Intake::Ses);
    assert_eq!(r.blob.as_deref(), Some(ses_id(&ev).as_str()));
    assert_eq!(r.size, body.len() as u64);
    assert_eq!(r.sha256, hex::encode(Sha256::digest(&body)));
    assert_eq!(r.received_at.to_rfc3339(), "2026-11-28T09:30:02.028+00:00");
    assert_eq!(r.summary.subject.as_deref(), Some("Quarterly figures"));
    assert_eq!(
        r.summary.message_id.as_deref(),
        Some("F8098FDD-49A3-442D-9935-F6112AB0D4F2@example.org")
    );
    let v = r.verdicts.as_ref().unwrap();
    assert_eq!(
        (v.spam.as_deref(), v.virus.as_deref(), v.spf.as_deref()),
        (Some("PASS"), Some("PASS"), Some("PASS"))
    );
    assert_eq!(
        (v.dkim.as_deref(), v.dmarc.as_deref()),
        (Some("PASS"), Some("GRAY"))
    );

    // The raw bytes are read back through the record's blob key, unchanged.
    let mut got = Vec::new();
    storage
        .blobs
        .open(&r.blob_key())
        .await
        .unwrap()
        .read_to_end(&mut got)
        .await
        .unwrap();
    assert_eq!(got, body);
}

#[tokio::test]
async fn event_without_common_headers_from_is_accepted() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("nofrom").await;
    let ev = event("no-from.json");
    let body = raw("tok-nofrom")
        .split(|b| *b == b'\n')
        .filter(|l| !l.starts_with(b"From:"))
        .collect::<Vec<_>>()
        .join(&b'\n');
    ses_put(&clients, &settings, &ses_id(&ev), &body).await;
    let report = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(ev)
        .await
        .unwrap();
    assert_eq!(report.indexed, 1);
    let r = &all(&storage).await[0];
    assert_eq!(r.summary.from, None);
    assert_eq!(r.summary.subject.as_deref(), Some("Quarterly figures"));
    assert_eq!(r.rcpts[0].address, "bob@example.test");
}

#[tokio::test]
async fn duplicate_deliveries_create_one_item() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("dup").await;
    let ev = event("normal.json");
    ses_put(&clients, &settings, &ses_id(&ev), &raw("tok-dup")).await;
    let ingest = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "");
    // Lambda's async retries and SES's at-least-once delivery: at once and later.
    let (a, b) = tokio::join!(ingest.handle(ev.clone()), ingest.handle(ev.clone()));
    let c = ingest.handle(ev).await.unwrap();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.indexed + b.indexed + c.indexed, 1);
    assert_eq!(a.duplicates + b.duplicates + c.duplicates, 2);
    assert_eq!(all(&storage).await.len(), 1);
    assert_eq!(storage.index.counts().await.unwrap().held, 1);
}

#[tokio::test]
async fn envelope_recipients_come_from_the_receipt_not_the_headers() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("multi").await;
    let ev = event("multi-rcpt.json");
    ses_put(&clients, &settings, &ses_id(&ev), &raw("tok-multi")).await;
    Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(ev)
        .await
        .unwrap();
    let r = &all(&storage).await[0];
    let rcpts: Vec<&str> = r.rcpts.iter().map(|x| x.address.as_str()).collect();
    assert_eq!(rcpts, ["bob@example.test", "erin@example.test"]);
}

#[tokio::test]
async fn virus_fail_is_quarantined_and_never_drained() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("virus").await;
    let ev = event("virus.json");
    ses_put(&clients, &settings, &ses_id(&ev), &raw("tok-virus")).await;
    let report = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(ev)
        .await
        .unwrap();
    assert_eq!((report.indexed, report.quarantined), (1, 1));
    let r = &all(&storage).await[0];
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.reason.as_deref(), Some("virus"));
    assert!(r.rcpts.iter().all(|x| x.status == RcptStatus::Failed));
    assert_eq!(storage.index.counts().await.unwrap().held, 0);
    let claimed = storage
        .index
        .claim(&standby::ports::ClaimRequest {
            now: Utc::now() + Duration::days(1),
            owner: "t".into(),
            lease_until: Utc::now() + Duration::days(2),
            limit: 10,
            status: standby::model::Status::Held,
            received_before: None,
            skew: Duration::zero(),
        })
        .await
        .unwrap();
    assert!(claimed.is_empty(), "a quarantined message is never claimed");
}

#[tokio::test]
async fn missing_object_is_an_error_and_indexes_nothing() {
    let moto = Moto::start();
    let (_, settings, storage) = moto.storage("missing").await;
    let err = Ingest::new(
        moto.storage_as(Principal::Ingest, &settings).await,
        "s3://missing/incoming/",
    )
    .handle(event("normal.json"))
    .await
    .unwrap_err();
    match &err {
        IngestError::MissingObject { ses_id, key } => {
            assert_eq!(ses_id, "o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1");
            assert_eq!(
                key,
                "s3://missing/incoming/o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1"
            );
        }
        other => panic!("expected MissingObject, got {other:?}"),
    }
    assert!(err.to_string().contains("missing"));
    assert!(all(&storage).await.is_empty());
}

#[tokio::test]
async fn object_that_is_not_a_message_is_an_error() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("garbage").await;
    let ev = event("normal.json");
    ses_put(
        &clients,
        &settings,
        &ses_id(&ev),
        b"\x00\x01\x02 binary junk, no header\r\n",
    )
    .await;
    let err = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(ev)
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::NotAMessage { .. }), "{err:?}");
    assert!(all(&storage).await.is_empty());
    let err = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(serde_json::json!({"Records": []}))
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::BadEvent(_)), "{err:?}");
}

#[tokio::test]
async fn reconciled_record_is_replaced_by_the_late_event() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("late").await;
    let ev = event("multi-rcpt.json");
    ses_put(&clients, &settings, &ses_id(&ev), &raw("tok-late")).await;
    // Ingest never ran; the drain's reconciler finds the object (later than MIN_AGE)
    // and indexes it from its headers: the Received `for` clause names bob only.
    let later = Utc::now() + Duration::minutes(10);
    let domains = vec!["example.test".to_string()];
    // The reconciler runs in the drain function.
    let drain = moto.storage_as(Principal::Drain, &settings).await;
    let filing = Ingest::new(drain.clone(), "");
    let run = || {
        reconcile(
            &drain,
            ("lambda", "primary:587"),
            &domains,
            &filing,
            later,
            false,
        )
    };
    let rep = run().await.unwrap();
    assert_eq!(rep.reconciled, 1);
    let r = &all(&storage).await[0];
    assert_eq!(r.intake, Intake::Reconciled);
    assert_eq!(r.mail_from, "prvs=144d0cba7=alice@example.org");
    assert_eq!(r.rcpts.len(), 1);
    // SES's test object, written when a rule's S3 action is made or changed, is no
    // message: a run never makes it a (failed) record.
    ses_put(
        &clients,
        &settings,
        "AMAZON_SES_SETUP_NOTIFICATION",
        b"This is a test message sent by Amazon SES to verify the receipt rule.",
    )
    .await;
    // A second run finds nothing new.
    let again = run().await.unwrap();
    assert_eq!(again.reconciled, 0);
    // The late event gives the exact envelope (bob and the Bcc'd erin).
    let report = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(ev)
        .await
        .unwrap();
    assert_eq!((report.indexed, report.upgraded), (0, 1));
    let recs = all(&storage).await;
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].intake, Intake::Ses);
    assert_eq!(recs[0].rcpts.len(), 2);
}

/// The reconciler's sweep lists the bucket a few pages per run from where the last run
/// stopped, indexes what has no record once, lists nothing once it is through, and goes
/// through again a day later, finding what was stored since (but not an object whose
/// record was deleted).
#[tokio::test]
async fn the_sweep_goes_through_the_bucket_a_page_at_a_time_and_again_a_day_later() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("sweep").await;
    for i in 0..5 {
        ses_put(
            &clients,
            &settings,
            &format!("ses{i:03}"),
            &raw(&format!("tok-sweep{i}")),
        )
        .await;
    }
    let domains = vec!["example.test".to_string()];
    // The reconciler runs in the drain function.
    let drain = moto.storage_as(Principal::Drain, &settings).await;
    let filing = Ingest::new(drain.clone(), "");
    let bounds = Bounds {
        page: 2,
        pages: 1,
        ..Bounds::default()
    };
    let run = |at: chrono::DateTime<Utc>| {
        reconcile_within(
            &drain,
            ("lambda", "primary:587"),
            &domains,
            &filing,
            at,
            false,
            bounds,
        )
    };
    let later = Utc::now() + Duration::minutes(10);
    let mut found = Vec::new();
    for want_swept in [false, false, true] {
        let rep = run(later).await.unwrap();
        assert_eq!((rep.pages, rep.swept), (1, want_swept), "{rep:?}");
        found.push(rep.reconciled);
    }
    assert_eq!(found, [2, 2, 1], "each object once, a page per run");
    assert_eq!(all(&storage).await.len(), 5);
    // Through: nothing is listed until the next sweep is due.
    let rep = run(later + Duration::minutes(1)).await.unwrap();
    assert_eq!((rep.pages, rep.reconciled), (0, 0), "{rep:?}");
    ses_put(&clients, &settings, "ses100", &raw("tok-sweep-late")).await;
    // And one whose record was deleted (retention; the object's delete failed, so it was
    // marked for the lifecycle rule instead): never indexed again.
    ses_put(&clients, &settings, "ses101", &raw("tok-sweep-deleted")).await;
    storage
        .blobs
        .mark("ses101", standby::model::Disposal::Expirable)
        .await
        .unwrap();
    let rep = run(later + Duration::hours(23)).await.unwrap();
    assert_eq!((rep.pages, rep.reconciled), (0, 0), "{rep:?}");
    // A day on: the next sweep (three runs of a page) finds the one stored since, and
    // indexes nothing twice.
    let (mut reconciled, mut marked) = (0, 0);
    for want_swept in [false, false, false, true] {
        let rep = run(later + Duration::hours(25)).await.unwrap();
        assert_eq!((rep.pages, rep.swept), (1, want_swept), "{rep:?}");
        reconciled += rep.reconciled;
        marked += rep.marked;
    }
    assert_eq!((reconciled, marked), (1, 1));
    assert_eq!(all(&storage).await.len(), 6);
}

/// Two receipt rules' events for one object at once (SES invokes each rule's action
/// asynchronously): one record, with both rules' recipients.
#[tokio::test]
async fn two_rules_events_at_once_make_one_record_with_both_recipient_sets() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("rules2").await;
    let ev = event("normal.json");
    let id = ses_id(&ev);
    ses_put(&clients, &settings, &id, &raw("tok-rules2")).await;
    let with = |rcpts: &[&str]| {
        let mut e = ev.clone();
        e["Records"][0]["ses"]["receipt"]["recipients"] =
            rcpts.iter().map(|r| serde_json::json!(r)).collect();
        e
    };
    let ingest = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "");
    let (a, b) = tokio::join!(
        ingest.handle(with(&["bob@example.test", "carol@example.test"])),
        ingest.handle(with(&["erin@example.test", "Bob@example.test"]))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.indexed + b.indexed, 1, "{a:?} {b:?}");
    assert_eq!(a.merged + b.merged, 1, "{a:?} {b:?}");
    let recs = all(&storage).await;
    assert_eq!(recs.len(), 1);
    let mut rcpts: Vec<String> = recs[0]
        .rcpts
        .iter()
        .map(|r| r.address.to_ascii_lowercase())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "bob@example.test",
            "carol@example.test",
            "erin@example.test"
        ]
    );
    assert!(
        recs[0]
            .rcpts
            .iter()
            .all(|r| r.status == RcptStatus::Pending)
    );
}
