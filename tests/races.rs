//! Races between a drain and the operator's changes (hold, release, retry, legal hold)
//! and retention, through the ports, each in one fixed interleaving: the drain runs for
//! real (`Drainer` against a primary that stops where the test says), and the other side
//! acts at a chosen point, signalled, never after a sleep. Run on the in-memory and the
//! SQLite index. What must hold: no delivery is overwritten (a message the primary
//! accepted is never held, paused or sent again by an operator change read before it),
//! no legal hold is deleted, and a lease lost in the middle of a transaction aborts it
//! before the final dot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use standby::backend::{MemAuditLog, MemBlobStore, MemIndex, SqliteIndex};
use standby::drain::{DrainSettings, Drainer, RunOptions};
use standby::dsn::DsnSettings;
use standby::error::{RelayError, StoreError};
use standby::ingest::Spool;
use standby::model::{
    Counts, Envelope, HealthRecord, LegalHold, MessageId, Origin, Record, Status, Verdicts,
};
use standby::ports::{
    BlobReader, ClaimRequest, Index, ListQuery, Relay, RelaySession, Reply, Storage, SystemClock,
    Transaction,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, Semaphore};

/// What the primary did with each transaction: the message's first line, and whether
/// the final dot came (the body ended normally).
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

/// A primary that, for each transaction, says it started (`started`), waits for a
/// permit from `gate`, then reads the body to its end and answers 250.
#[derive(Clone)]
struct GatedPrimary {
    started: Arc<Notify>,
    gate: Arc<Semaphore>,
    seen: Seen,
}

impl GatedPrimary {
    fn new() -> Self {
        GatedPrimary {
            started: Arc::new(Notify::new()),
            gate: Arc::new(Semaphore::new(0)),
            seen: Arc::default(),
        }
    }
    /// One that never waits.
    fn open() -> Self {
        let p = Self::new();
        p.gate.add_permits(1_000);
        p
    }
    /// Transactions that ended with the final dot.
    fn delivered(&self) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.1).count()
    }
}

#[async_trait]
impl Relay for GatedPrimary {
    async fn connect(&self) -> Result<Box<dyn RelaySession>, RelayError> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl RelaySession for GatedPrimary {
    async fn send(
        &mut self,
        _from: &str,
        rcpts: &[String],
        mut body: BlobReader,
    ) -> Result<Transaction, RelayError> {
        self.started.notify_one();
        self.gate.acquire().await.unwrap().forget();
        let mut bytes = Vec::new();
        let ended = body.read_to_end(&mut bytes).await;
        let first = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        self.seen.lock().unwrap().push((first, ended.is_ok()));
        if let Err(e) = ended {
            // A real client stops here without writing the dot.
            return Err(RelayError::Blob(StoreError::io("read", "blob", e)));
        }
        Ok(Transaction {
            mail: Reply::new(250, "ok"),
            rcpts: rcpts.iter().map(|_| Reply::new(250, "ok")).collect(),
            data: Some(Reply::new(250, "2.0.0 Ok: queued as T1")),
            ambiguous: false,
        })
    }
    async fn quit(self: Box<Self>) {}
}

/// An index that tells the test about lease renewals the index refused, and runs a
/// hook right before a delete reaches the index (the interleaving point for retention).
struct Spy {
    inner: Arc<dyn Index>,
    refused: Arc<Notify>,
    before_delete: Mutex<Option<Box<dyn FnOnce() -> Record + Send>>>,
}

#[async_trait]
impl Index for Spy {
    async fn insert(&self, rec: &Record) -> Result<bool, StoreError> {
        self.inner.insert(rec).await
    }
    async fn get(&self, id: MessageId) -> Result<Option<Record>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Vec<Record>, StoreError> {
        self.inner.list(q).await
    }
    async fn counts(&self) -> Result<Counts, StoreError> {
        self.inner.counts().await
    }
    async fn oldest(&self, st: Status) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.oldest(st).await
    }
    async fn claim(&self, r: &ClaimRequest) -> Result<Vec<Record>, StoreError> {
        self.inner.claim(r).await
    }
    async fn renew(&self, id: MessageId, o: &str, u: DateTime<Utc>) -> Result<bool, StoreError> {
        let ok = self.inner.renew(id, o, u).await?;
        if !ok {
            self.refused.notify_one();
        }
        Ok(ok)
    }
    async fn complete(&self, rec: &Record, owner: &str) -> Result<(), StoreError> {
        self.inner.complete(rec, owner).await
    }
    async fn update(&self, rec: &Record, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.inner.update(rec, now).await
    }
    async fn set_verdicts(
        &self,
        id: MessageId,
        v: &Verdicts,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.set_verdicts(id, v, now).await
    }
    async fn delete(&self, rec: &Record, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let hook = self.before_delete.lock().unwrap().take();
        if let Some(hook) = hook {
            // The hook's change goes in through the index itself, as another process's
            // would.
            let changed = hook();
            self.inner.update(&changed, Utc::now()).await?;
        }
        self.inner.delete(rec, now).await
    }
    async fn load_health(&self, node: &str) -> Result<Option<HealthRecord>, StoreError> {
        self.inner.load_health(node).await
    }
    async fn save_health(&self, h: &HealthRecord) -> Result<(), StoreError> {
        self.inner.save_health(h).await
    }
    async fn list_health(&self) -> Result<Vec<HealthRecord>, StoreError> {
        self.inner.list_health().await
    }
}

/// The indexes every race runs on.
fn indexes() -> Vec<(&'static str, Arc<dyn Index>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteIndex::open(dir.path()).unwrap());
    vec![
        ("memory", Arc::new(MemIndex::default()), None),
        ("sqlite", sqlite, Some(dir)),
    ]
}

fn storage(index: Arc<dyn Index>) -> (Storage, Arc<Spy>) {
    let spy = Arc::new(Spy {
        inner: index,
        refused: Arc::new(Notify::new()),
        before_delete: Mutex::new(None),
    });
    let storage = Storage {
        blobs: Arc::new(MemBlobStore::default()),
        index: spy.clone(),
        audit: Arc::new(MemAuditLog::default()),
        events: Arc::new(standby::backend::MemEventStore::default()),
        mailboxes: None,
    };
    (storage, spy)
}

fn drainer(storage: &Storage, primary: &GatedPrimary, lease: Duration) -> Drainer {
    Drainer::new(
        storage.clone(),
        Arc::new(primary.clone()),
        Arc::new(SystemClock),
        DrainSettings {
            concurrency: 1,
            lease,
            clock_skew: Duration::ZERO,
            hold_days: 30,
            rate_per_sec: 0,
            ramp: None,
            breaker_5xx: 20,
            authserv_id: "standby.test".into(),
            strip_authserv_ids: vec!["standby.test".into()],
            arc: None,
            dsn: DsnSettings {
                enabled: false,
                reporting_mta: "standby.test".into(),
                sender: None,
            },
        },
    )
}

async fn receive(storage: &Storage, subject: &str) -> MessageId {
    let spool = Spool::new(storage.clone(), Arc::new(SystemClock), "standby.test");
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
    inc.write(format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes())
        .await
        .unwrap();
    inc.commit().await.unwrap().id
}

/// `standby hold` and `standby retry` read the message, then a drain delivers it, then
/// they write: both writes are refused (changed since read), the delivery stands, and a
/// later drain run sends nothing again. Meanwhile, while the drain holds the message, the
/// same changes are refused as leased.
#[tokio::test]
async fn operator_changes_read_before_a_delivery_never_overwrite_it() {
    for (name, index, _dir) in indexes() {
        let (storage, _) = storage(index);
        let id = receive(&storage, "m1").await;
        let operator_read = storage.index.get(id).await.unwrap().unwrap();

        let primary = GatedPrimary::new();
        let d = drainer(&storage, &primary, Duration::from_secs(60));
        let run = tokio::spawn({
            let d = d.clone();
            async move { d.run(RunOptions::default()).await }
        });
        // The drain is in the middle of the transaction.
        primary.started.notified().await;
        let mut paused = storage.index.get(id).await.unwrap().unwrap();
        paused.status = Status::Paused;
        assert!(
            matches!(
                storage.index.update(&paused, Utc::now()).await,
                Err(StoreError::Leased(_))
            ),
            "{name}: an operator change under a live lease"
        );
        primary.gate.add_permits(1);
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.delivered, 1, "{name}");

        // hold from the read before the delivery
        let mut hold = operator_read.clone();
        hold.status = Status::Paused;
        assert!(
            matches!(
                storage.index.update(&hold, Utc::now()).await,
                Err(StoreError::Changed(_))
            ),
            "{name}: hold from a stale read"
        );
        // retry from the read before the delivery
        let mut retry = operator_read.clone();
        retry.next_attempt_at = Utc::now();
        retry.reason = None;
        assert!(
            matches!(
                storage.index.update(&retry, Utc::now()).await,
                Err(StoreError::Changed(_))
            ),
            "{name}: retry from a stale read"
        );
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!(rec.status, Status::Delivered, "{name}");
        primary.gate.add_permits(10);
        let again = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(again.delivered, 0, "{name}");
        assert_eq!(primary.delivered(), 1, "{name}: delivered once");
    }
}

/// `standby release` reads a paused message; another operator's `hold --legal` lands;
/// the release (made on what it read) is refused, and the legal hold is still there.
#[tokio::test]
async fn a_release_read_before_a_legal_hold_does_not_lift_it() {
    for (name, index, _dir) in indexes() {
        let (storage, _) = storage(index);
        let id = receive(&storage, "m2").await;
        let mut rec = storage.index.get(id).await.unwrap().unwrap();
        rec.status = Status::Paused;
        storage.index.update(&rec, Utc::now()).await.unwrap();
        let release_read = storage.index.get(id).await.unwrap().unwrap();
        let mut legal = release_read.clone();
        legal.legal_hold = Some(LegalHold {
            at: Utc::now(),
            reason: "case 9".into(),
        });
        storage.index.update(&legal, Utc::now()).await.unwrap();
        let mut released = release_read.clone();
        released.status = Status::Held;
        assert!(
            matches!(
                storage.index.update(&released, Utc::now()).await,
                Err(StoreError::Changed(_))
            ),
            "{name}"
        );
        let now = storage.index.get(id).await.unwrap().unwrap();
        assert!(now.legal_hold.is_some(), "{name}: the legal hold stays");
        assert_eq!(now.status, Status::Paused, "{name}");
    }
}

/// Retention read a delivered message as due; a legal hold is placed right before its
/// delete reaches the index: the message and its bytes stay, the run counts it as held
/// back, and the audit log says the delete was cancelled.
#[tokio::test]
async fn retention_never_deletes_a_legal_hold_placed_after_its_read() {
    for (name, index, _dir) in indexes() {
        let (storage, spy) = storage(index);
        let id = receive(&storage, "m3").await;
        let primary = GatedPrimary::open();
        let report = drainer(&storage, &primary, Duration::from_secs(60))
            .run(RunOptions::default())
            .await
            .unwrap();
        assert_eq!(report.delivered, 1, "{name}");
        // Retention runs 40 days on: the delivered message is due.
        let later = Utc::now() + chrono::Duration::days(40);
        let current = storage.index.get(id).await.unwrap().unwrap();
        *spy.before_delete.lock().unwrap() = Some(Box::new(move || {
            let mut held = current;
            held.legal_hold = Some(LegalHold {
                at: Utc::now(),
                reason: "placed during the retention run".into(),
            });
            held
        }));
        let policy = standby::config::RetentionPolicy {
            delivered_days: Some(30),
            ..Default::default()
        };
        let report = standby::retention::run(&storage, &policy, later)
            .await
            .unwrap();
        assert_eq!((report.deleted, report.held_back), (0, 1), "{name}");
        let kept = storage.index.get(id).await.unwrap().unwrap();
        assert!(kept.legal_hold.is_some(), "{name}");
        assert!(
            storage.blobs.open(&kept.blob_key()).await.is_ok(),
            "{name}: the bytes stay"
        );
        let actions: Vec<String> = storage
            .audit
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["delete", "delete-cancelled"], "{name}");
    }
}

/// A drain's lease is taken over while its transaction runs (the drain stalled past its
/// lease): its next renewal is refused, and the transaction ends without the final dot;
/// the claim that took over delivers the message, once.
#[tokio::test]
async fn a_lease_lost_mid_transaction_aborts_before_the_final_dot() {
    for (name, index, _dir) in indexes() {
        let (storage, spy) = storage(index.clone());
        let id = receive(&storage, "m4").await;
        let primary = GatedPrimary::new();
        let lease = Duration::from_millis(600);
        let d = drainer(&storage, &primary, lease);
        let run = tokio::spawn(async move { d.run(RunOptions::default()).await });
        primary.started.notified().await;
        // Another claim takes the message as if the lease had run out.
        let later = Utc::now() + chrono::Duration::seconds(5);
        let taken = index
            .claim(&ClaimRequest {
                now: later,
                owner: "other".into(),
                lease_until: later + chrono::Duration::seconds(60),
                limit: 10,
                status: standby::model::Status::Held,
                received_before: None,
                skew: chrono::Duration::zero(),
            })
            .await
            .unwrap();
        assert_eq!(taken.len(), 1, "{name}");
        // The drain's next renewal is refused; only then may its primary read on.
        spy.refused.notified().await;
        primary.gate.add_permits(1);
        let report = run.await.unwrap().unwrap();
        assert_eq!((report.delivered, report.aborted), (0, 1), "{name}");
        let seen = primary.seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|s| s.1).collect::<Vec<_>>(),
            [false],
            "{name}: the body never ended, so no final dot: {seen:?}"
        );
        // The record is the other claim's, untouched by the aborted attempt.
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!(
            (rec.status, rec.attempts, rec.lease.map(|l| l.owner)),
            (Status::Held, 0, Some("other".into())),
            "{name}"
        );
        assert_eq!(primary.delivered(), 0, "{name}");
    }
}
