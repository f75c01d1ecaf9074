//! Held mail expires after `hold_days` on the real local backend (files + SQLite), with
//! time moved through the `Clock` port instead of waiting a month.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use standby::backend::{FsBlobStore, SqliteIndex, Storage};
use standby::drain::{DrainSettings, Drainer, RunOptions};
use standby::error::RelayError;
use standby::ingest::{Envelope, Spool};
use standby::model::{Origin, RcptStatus, Status};
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
    let storage = Storage {
        blobs: Arc::new(FsBlobStore::open(dir.path()).unwrap()),
        index: Arc::new(SqliteIndex::open(dir.path()).unwrap()),
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

    let drainer = Drainer::new(
        storage.clone(),
        Arc::new(Untouchable),
        Arc::new(At(now)),
        DrainSettings {
            concurrency: 1,
            lease: Duration::from_secs(60),
            hold_days: 30,
            rate_per_sec: 0,
        },
    );
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
    // The message itself is kept for the operator (no bounce, no silent deletion).
    assert!(storage.blobs.open(&old.to_string()).await.is_ok());
}
