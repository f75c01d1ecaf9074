//! The sender's SPF verdict, checked after the message was accepted.
//!
//! A DSN may only go to an authenticated sender (see [`crate::dsn`]), so our own listener
//! records an SPF verdict with each message. The verdict is needed only later, when a
//! message fails, and DNS is slowest exactly when the standby is busiest (a disaster), so
//! the check never delays the 250: the message is stored with its SPF verdict
//! [`PENDING`](Verdicts::PENDING) (the client's IP and HELO are in its
//! [`Origin`](crate::model::Origin), the sender in its envelope), and [`SenderChecks`]
//! looks it up in the background and stores the result with
//! [`Index::set_verdicts`], which changes nothing else and never touches a record a drain
//! holds.
//!
//! Bounded: at most [`Limits::concurrency`] lookups run at once, each for at most the
//! verifier's timeout (`[dsn] spf_timeout_secs`, then `TEMPERROR`), and at most
//! [`Limits::queue`] wait. When the queue is full the message keeps its pending verdict
//! instead of waiting for room.
//!
//! A verdict still pending when a bounce is due (the queue was full, the process
//! restarted before the check finished, or a drain held the message when it did) is
//! looked up then, by the drain, through the same [`SenderVerifier`]: the DSN decision
//! waits for at most one lookup. If that lookup cannot be made (no verifier: SPF is off
//! or the resolver could not be set up) or lookups have been timing out (see
//! [`SenderVerifier::check_now`]), the sender counts as not authenticated: no DSN, the
//! message is parked for the operator. The same holds for a `TEMPERROR` recorded at
//! receipt: RFC 7208 says to ask again later, and a DSN is that later.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::error::StoreError;
use crate::model::{MessageId, Record, Verdicts};
use crate::ports::{Clock, Index, SenderCheck};

/// After a lookup at bounce time ran out of time, later bounce decisions skip the lookup
/// for this long (the drain must not wait on a dead resolver for every failed message).
const GIVE_UP_FOR: chrono::Duration = chrono::Duration::seconds(60);

/// One SPF lookup through the [`SenderCheck`] port, bounded by a timeout.
#[derive(Clone)]
pub struct SenderVerifier {
    check: Arc<dyn SenderCheck>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    /// When a lookup last ran out of time (ms since the epoch; 0: never).
    timed_out_at: Arc<AtomicI64>,
    /// Whether lookups answer (for one log line per change).
    answering: Arc<AtomicBool>,
}

impl std::fmt::Debug for SenderVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderVerifier")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What to look up for one message: its id, the client and the envelope sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: MessageId,
    pub ip: IpAddr,
    pub helo: String,
    pub mail_from: String,
    /// The content filter's verdict at receipt, kept when the SPF verdict is written.
    pub spam: Option<String>,
}

impl Job {
    /// The lookup for `rec`; `None` when there is nothing to check: the null sender
    /// (never bounced) or no client IP (not received by our listener).
    pub fn of(rec: &Record) -> Option<Job> {
        if rec.mail_from.is_empty() {
            return None;
        }
        Some(Job {
            id: rec.id,
            ip: rec.origin.ip.parse().ok()?,
            helo: rec.origin.helo.clone(),
            mail_from: rec.mail_from.clone(),
            spam: rec.verdicts.as_ref().and_then(|v| v.spam.clone()),
        })
    }
}

impl SenderVerifier {
    /// Look up through `check`, each lookup for at most `timeout`.
    pub fn new(check: Arc<dyn SenderCheck>, timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        SenderVerifier {
            check,
            timeout,
            clock,
            timed_out_at: Arc::new(AtomicI64::new(0)),
            answering: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The SPF verdict for `job`; `TEMPERROR` when the lookup took longer than the timeout.
    pub async fn check(&self, job: &Job) -> Verdicts {
        let started = tokio::time::Instant::now();
        let lookup = self.check.spf(job.ip, &job.helo, &job.mail_from);
        let spf = tokio::time::timeout(self.timeout, lookup)
            .await
            .unwrap_or_else(|_| "TEMPERROR".to_string());
        // A temporary error that took most of the timeout (ours, or the resolver's own
        // retries giving up) means the resolver is in trouble, not one sender's domain.
        let stuck = spf == "TEMPERROR" && started.elapsed() >= self.timeout / 2;
        if stuck {
            self.timed_out_at
                .store(self.clock.now().timestamp_millis(), Ordering::Relaxed);
            if self.answering.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    timeout_secs = self.timeout.as_secs_f64(),
                    "SPF lookups time out (resolver slow or unreachable): verdicts are \
                     TEMPERROR and asked again when a bounce depends on them"
                );
            }
        } else if spf != "TEMPERROR" && !self.answering.swap(true, Ordering::Relaxed) {
            tracing::info!("SPF lookups answer again");
        }
        tracing::debug!(id = %job.id, spf = %spf, "sender checked");
        Verdicts {
            spf: Some(spf),
            spam: job.spam.clone(),
            ..Verdicts::default()
        }
    }

    /// For a bounce decision: the verdict of `rec` looked up now if it is still pending
    /// (or was `TEMPERROR`), else `None` (keep what is recorded). Also `None` when a
    /// lookup timed out less than a minute ago: the message then counts as not
    /// authenticated rather than hold the drain for another timeout.
    pub async fn check_now(&self, rec: &Record) -> Option<Verdicts> {
        let v = rec.verdicts.as_ref()?;
        let retry = v.spf_pending() || v.spf.as_deref() == Some("TEMPERROR");
        if !retry {
            return None;
        }
        let job = Job::of(rec)?;
        let last = self.timed_out_at.load(Ordering::Relaxed);
        if last != 0 && self.clock.now().timestamp_millis() - last < GIVE_UP_FOR.num_milliseconds()
        {
            tracing::info!(id = %rec.id, "SPF lookups timing out; not waiting for one for this bounce");
            return None;
        }
        Some(self.check(&job).await)
    }
}

/// How much background checking may go on at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lookups in flight at once.
    pub concurrency: usize,
    /// Accepted messages waiting for a lookup; beyond that their verdict stays pending.
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            concurrency: 64,
            queue: 10_000,
        }
    }
}

/// The handle the intake queues checks on; cheap to clone.
#[derive(Clone)]
pub struct SenderChecks {
    tx: mpsc::Sender<Job>,
    /// The queue was full at the last submit (for one log line per episode).
    full: Arc<AtomicBool>,
}

impl SenderChecks {
    /// Start the background worker. It stops when `stop` turns true (checks in flight
    /// get two seconds; queued ones keep their pending verdict) or when every handle is
    /// dropped (after finishing what is queued).
    pub fn start(
        verifier: SenderVerifier,
        index: Arc<dyn Index>,
        limits: Limits,
        stop: watch::Receiver<bool>,
    ) -> (SenderChecks, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let worker = tokio::spawn(run(rx, verifier, index, limits.concurrency.max(1), stop));
        (
            SenderChecks {
                tx,
                full: Arc::new(AtomicBool::new(false)),
            },
            worker,
        )
    }

    /// Queue the check of an accepted message without waiting; `false` when the queue is
    /// full or the worker stopped (the verdict then stays pending).
    pub fn submit(&self, job: Job) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => {
                if self.full.swap(false, Ordering::Relaxed) {
                    tracing::info!("SPF check queue has room again");
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(job)) => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        id = %job.id,
                        "SPF check queue full: verdicts stay pending and are looked up when \
                         a bounce depends on them"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    verifier: SenderVerifier,
    index: Arc<dyn Index>,
    concurrency: usize,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    loop {
        // A permit first, then a job: a job waits in the queue, never in the worker,
        // so at most `concurrency + queue` messages are waiting for a verdict.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(permit) = permit else { break };
        let job = tokio::select! {
            job = rx.recv() => job,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(job) = job else { break };
        while tasks.try_join_next().is_some() {}
        let (verifier, index) = (verifier.clone(), index.clone());
        tasks.spawn(async move {
            let verdicts = verifier.check(&job).await;
            store(index.as_ref(), verifier.clock.as_ref(), job.id, &verdicts).await;
            drop(permit);
        });
    }
    let finish = async { while tasks.join_next().await.is_some() {} };
    if !*stop.borrow() {
        finish.await;
    } else if tokio::time::timeout(Duration::from_secs(2), finish)
        .await
        .is_err()
    {
        tracing::debug!("stopping with SPF checks in flight; their verdicts stay pending");
    }
}

/// Store a verdict; while a drain holds the message, try again a few times (the drain
/// usually lets go within a second), then leave it pending for the bounce decision.
async fn store(index: &dyn Index, clock: &dyn Clock, id: MessageId, verdicts: &Verdicts) {
    for wait in [0, 1, 2, 4] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        match index.set_verdicts(id, verdicts, clock.now()).await {
            Ok(()) => return,
            Err(StoreError::Leased(_)) => continue,
            Err(StoreError::NotFound(_)) => return, // purged meanwhile
            Err(e) => {
                tracing::warn!(%id, error = %e, "cannot store the SPF verdict; it stays pending");
                return;
            }
        }
    }
    tracing::debug!(%id, "a drain holds the message; its SPF verdict stays pending");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Status};
    use crate::ports::{Storage, SystemClock};
    use async_trait::async_trait;
    use std::sync::atomic::AtomicUsize;

    /// A check that answers `PASS` after `delay`, counting its calls.
    struct Slow {
        delay: Duration,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl SenderCheck for Slow {
        async fn spf(&self, _: IpAddr, _: &str, _: &str) -> String {
            self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.delay).await;
            "PASS".into()
        }
    }

    fn verifier(delay: Duration, timeout: Duration) -> (SenderVerifier, Arc<Slow>) {
        let check = Arc::new(Slow {
            delay,
            calls: AtomicUsize::new(0),
        });
        (
            SenderVerifier::new(check.clone(), timeout, Arc::new(SystemClock)),
            check,
        )
    }

    fn pending_record() -> Record {
        let mut rec = Record::held(
            MessageId::new(chrono::Utc::now()),
            "a@sender.test".into(),
            vec!["b@example.test".into()],
            chrono::Utc::now(),
            (1, "00".into()),
            Default::default(),
        );
        rec.origin = Origin {
            ip: "192.0.2.1".into(),
            helo: "mx.sender.test".into(),
            tls: false,
            user: None,
        };
        rec.verdicts = Some(Verdicts::pending());
        rec
    }

    #[tokio::test]
    async fn verdicts_land_on_the_record_and_a_full_queue_leaves_them_pending() {
        let storage = Storage::memory();
        let (v, _) = verifier(Duration::from_millis(200), Duration::from_secs(5));
        let (_stop_tx, stop) = watch::channel(false);
        let limits = Limits {
            concurrency: 1,
            queue: 1,
        };
        let (checks, _worker) = SenderChecks::start(v, storage.index.clone(), limits, stop);
        let recs: Vec<Record> = (0..3).map(|_| pending_record()).collect();
        for r in &recs {
            storage.index.insert(r).await.unwrap();
        }
        // One lookup runs (taken off the queue at once), one waits; more do not fit.
        assert!(checks.submit(Job::of(&recs[0]).unwrap()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(checks.submit(Job::of(&recs[1]).unwrap()));
        assert!(
            !checks.submit(Job::of(&recs[2]).unwrap()),
            "queue of one is full"
        );
        let spf = |id| {
            let index = storage.index.clone();
            async move {
                index
                    .get(id)
                    .await
                    .unwrap()
                    .unwrap()
                    .verdicts
                    .unwrap()
                    .spf
                    .unwrap()
            }
        };
        for r in &recs[..2] {
            let id = r.id;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while spf(id).await != "PASS" {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no verdict for {id}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(spf(recs[2].id).await, Verdicts::PENDING, "never queued");
    }

    /// The content filter's spam verdict, set at receipt, survives the SPF verdict
    /// written after it.
    #[tokio::test]
    async fn the_spf_verdict_keeps_the_spam_verdict() {
        let (v, _) = verifier(Duration::from_millis(1), Duration::from_secs(5));
        let mut rec = pending_record();
        rec.verdicts.get_or_insert_with(Verdicts::default).spam = Some("FAIL".into());
        let job = Job::of(&rec).unwrap();
        let verdicts = v.check(&job).await;
        assert_eq!(verdicts.spam.as_deref(), Some("FAIL"), "{verdicts:?}");
        assert!(verdicts.spf.is_some());
    }

    #[tokio::test]
    async fn a_slow_lookup_becomes_temperror_and_a_leased_record_is_left_alone() {
        let storage = Storage::memory();
        let (v, _) = verifier(Duration::from_secs(30), Duration::from_millis(100));
        let rec = pending_record();
        storage.index.insert(&rec).await.unwrap();
        let job = Job::of(&rec).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(v.check(&job).await, Verdicts::spf("TEMPERROR"));
        assert!(started.elapsed() < Duration::from_secs(2));

        // A drain holds the record: the verdict is not written over its lease.
        let now = chrono::Utc::now();
        let claimed = storage
            .index
            .claim(&crate::ports::ClaimRequest {
                now,
                owner: "drain-1".into(),
                lease_until: now + chrono::Duration::seconds(60),
                limit: 1,
                status: crate::model::Status::Held,
                received_before: None,
                skew: chrono::Duration::zero(),
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let err = storage
            .index
            .set_verdicts(rec.id, &Verdicts::spf("PASS"), chrono::Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Leased(_)), "{err}");
        let got = storage.index.get(rec.id).await.unwrap().unwrap();
        assert_eq!(
            (got.status, got.verdicts),
            (Status::Held, Some(Verdicts::pending()))
        );
    }

    #[tokio::test]
    async fn a_bounce_looks_up_a_pending_verdict_unless_lookups_time_out() {
        let (v, calls) = verifier(Duration::from_millis(10), Duration::from_secs(5));
        let rec = pending_record();
        assert_eq!(v.check_now(&rec).await, Some(Verdicts::spf("PASS")));
        let mut temp = rec.clone();
        temp.verdicts = Some(Verdicts::spf("TEMPERROR"));
        assert_eq!(v.check_now(&temp).await, Some(Verdicts::spf("PASS")));
        let mut done = rec.clone();
        done.verdicts = Some(Verdicts::spf("FAIL"));
        assert_eq!(v.check_now(&done).await, None, "a real verdict is kept");
        let mut null = rec.clone();
        null.mail_from.clear();
        assert_eq!(v.check_now(&null).await, None);
        assert_eq!(calls.calls.load(Ordering::Relaxed), 2);

        // After a timeout, bounce decisions stop waiting for lookups for a while.
        let (slow, slow_calls) = verifier(Duration::from_secs(30), Duration::from_millis(50));
        assert_eq!(slow.check_now(&rec).await, Some(Verdicts::spf("TEMPERROR")));
        assert_eq!(slow.check_now(&rec).await, None);
        assert_eq!(slow_calls.calls.load(Ordering::Relaxed), 1);
    }
}
