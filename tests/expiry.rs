//! Held mail expires after `hold_days` on the real local backend (files + SQLite), with
//! time moved through the `Clock` port instead of waiting a month.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use standby::backend::{FsBlobStore, SqliteIndex};
use standby::drain::{DrainSettings, Drainer, RunOptions};
use standby::dsn::DsnSettings;
use standby::error::RelayError;
use standby::ingest::Spool;
use standby::model::{Bounce, Envelope, Intake, Origin, RcptStatus, Status, Verdicts};
use standby::ports::Storage;
use standby::ports::{Clock, Relay, RelaySession};

struct At(DateTime<Utc>);
impl Clock for At {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// A primary that must never be contacted.
struct Untouchable;
#[async_trait::async_trait]
impl Relay for Untouchable {
    async fn connect(&self) -> Result<Box<dyn RelaySession>, RelayError> {
        panic!("expired mail must not be delivered");
    }
}

#[tokio::test]
async fn held_mail_older_than_hold_days_fails_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let index = SqliteIndex::open(dir.path()).unwrap();
    let storage = Storage {
        blobs: Arc::new(FsBlobStore::open(dir.path()).unwrap()),
        events: Arc::new(index.clone()),
        index: Arc::new(index),
        audit: Arc::new(standby::backend::FsAuditLog::new(dir.path())),
        mailboxes: None,
    };
    let now = Utc::now();
    let receive = |days_ago: i64| {
        let spool = Spool::new(
            storage.clone(),
            Arc::new(At(now - chrono::Duration::days(days_ago))),
            "standby.test",
        );
        async move {
            let mut inc = spool
                .begin(Envelope {
                    mail_from: "a@example.org".into(),
                    rcpts: vec!["bob@example.test".into()],
                    origin: Origin::default(),
                    journal: false,
                    sent: None,
                })
                .await
                .unwrap();
            inc.write(b"Subject: old\r\n\r\nx\r\n").await.unwrap();
            inc.commit().await.unwrap().id
        }
    };
    let old = receive(31).await;
    let young = receive(29).await;
    // The young one is not due yet either, so nothing at all is sent.
    let mut rec = storage.index.get(young).await.unwrap().unwrap();
    rec.next_attempt_at = now + chrono::Duration::hours(1);
    storage.index.update(&rec, now).await.unwrap();

    let drainer = expiring_drainer(&storage, now);
    let report = drainer.run(RunOptions::default()).await.unwrap();
    assert_eq!((report.delivered, report.failed), (0, 1));

    let expired = storage.index.get(old).await.unwrap().unwrap();
    assert_eq!(expired.status, Status::Failed);
    assert_eq!(expired.reason.as_deref(), Some("expired"));
    assert_eq!(expired.rcpts[0].status, RcptStatus::Failed);
    assert!(
        expired.rcpts[0]
            .reply
            .as_deref()
            .unwrap()
            .contains("hold_days = 30")
    );
    assert!(expired.lease.is_none());
    let kept = storage.index.get(young).await.unwrap().unwrap();
    assert_eq!(kept.status, Status::Held);
    // The message itself is kept for the operator (no bounce, no silent deletion): its
    // sender was never authenticated.
    assert!(storage.blobs.open(&old.to_string()).await.is_ok());
    assert!(
        matches!(&expired.bounce, Some(Bounce::Suppressed { why }) if why.contains("not authenticated")),
        "{:?}",
        expired.bounce
    );
    assert_eq!(
        storage.index.counts().await.unwrap().held,
        1,
        "no DSN queued"
    );
}

/// A drain at `now` with `hold_days = 30`, against a primary it must never contact.
fn expiring_drainer(storage: &Storage, now: DateTime<Utc>) -> Drainer {
    Drainer::new(
        storage.clone(),
        Arc::new(Untouchable),
        Arc::new(At(now)),
        DrainSettings {
            concurrency: 1,
            lease: Duration::from_secs(60),
            clock_skew: Duration::from_secs(60),
            hold_days: 30,
            rate_per_sec: 0,
            ramp: None,
            breaker_5xx: 20,
            authserv_id: "standby.test".into(),
            strip_authserv_ids: vec!["standby.test".into()],
            arc: None,
            dsn: DsnSettings {
                enabled: true,
                reporting_mta: "standby.test".into(),
                sender: None,
            },
        },
    )
}

#[tokio::test]
async fn an_authenticated_sender_of_expired_mail_gets_one_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let index = SqliteIndex::open(dir.path()).unwrap();
    let storage = Storage {
        blobs: Arc::new(FsBlobStore::open(dir.path()).unwrap()),
        events: Arc::new(index.clone()),
        index: Arc::new(index),
        audit: Arc::new(standby::backend::FsAuditLog::new(dir.path())),
        mailboxes: None,
    };
    let now = Utc::now();
    let spool = Spool::new(
        storage.clone(),
        Arc::new(At(now - chrono::Duration::days(31))),
        "standby.test",
    );
    let mut inc = spool
        .begin(Envelope {
            mail_from: "alice@example.org".into(),
            rcpts: vec!["bob@example.test".into()],
            origin: Origin::default(),
            journal: false,
            sent: None,
        })
        .await
        .unwrap();
    inc.write(b"Subject: old\r\n\r\nx\r\n").await.unwrap();
    let old = inc.commit().await.unwrap().id;
    // The sender check, finished after the 250.
    storage
        .index
        .set_verdicts(old, &Verdicts::spf("PASS"), now)
        .await
        .unwrap();

    let drainer = expiring_drainer(&storage, now);
    // Expiry runs while the primary is down: the DSN is queued, not sent.
    assert_eq!(drainer.expire_old().await.unwrap(), 1);
    assert_eq!(drainer.expire_old().await.unwrap(), 0, "expired once");
    let expired = storage.index.get(old).await.unwrap().unwrap();
    let Some(Bounce::Queued { id }) = expired.bounce else {
        panic!("{:?}", expired.bounce);
    };
    let dsn = storage.index.get(id).await.unwrap().unwrap();
    assert_eq!(
        (dsn.status, dsn.intake, dsn.mail_from.as_str()),
        (Status::Held, Intake::Dsn, "")
    );
    assert_eq!(dsn.rcpts[0].address, "alice@example.org");
    let (bytes, _) = storage.blobs.read_all(&id.to_string()).await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; bob@example.test"),
        "{text}"
    );
    assert!(
        text.contains("Subject: old"),
        "original headers attached: {text}"
    );
    // The DSN itself is young and has sender <>: it never expires into another DSN here.
    assert_eq!(storage.index.counts().await.unwrap().held, 1);
}
