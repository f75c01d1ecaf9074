//! The outbound queue: delivers what users sent to outside recipients.
//!
//! Records with status `outbound` are claimed with the same leases as the drain's
//! ([`Index::claim`](crate::ports::Index::claim) with `status = outbound`), so any number
//! of runs (each `serve` node, the drain function) never send one twice while a lease
//! runs; the lease is renewed right before each message and kept alive while it goes
//! out ([`Keeper`]). Each recipient is judged on its own reply: 2xx delivered, 4xx tried
//! again with the drain's [`backoff`](crate::drain::backoff), 5xx failed, and a message
//! with a failed recipient gets a DSN to its sender, who logged in to send it: into
//! their emergency inbox now, their mailbox later ([`crate::dsn`]). Mail still not
//! delivered after `hold_days` fails the same way.
//!
//! The outbound queue runs whatever the primary's state: it does not need the primary.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::dkim::DkimKeys;
use crate::drain::{
    Keeper, Kept, Outcome, defer_refused, expire, record_replies, release, write_back,
};
use crate::dsn::{self, DsnSettings};
use crate::error::StoreError;
use crate::model::{Lease, RcptStatus, Record, Status, redact};
use crate::ports::{ClaimRequest, Clock, Outbound, Reply, Storage};

/// Messages claimed at a time.
const BATCH: usize = 16;

/// Settings of the queue (from `[drain]` and `hold_days`).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub lease: Duration,
    pub clock_skew: Duration,
    pub hold_days: u32,
    pub dsn: DsnSettings,
}

impl From<&crate::drain::DrainSettings> for QueueSettings {
    /// The drain's leases, clock skew, hold time and bounces.
    fn from(d: &crate::drain::DrainSettings) -> Self {
        QueueSettings {
            lease: d.lease,
            clock_skew: d.clock_skew,
            hold_days: d.hold_days,
            dsn: d.dsn.clone(),
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueReport {
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
}

/// Delivers `outbound` records through an [`Outbound`].
#[derive(Clone)]
pub struct OutboundQueue {
    storage: Storage,
    out: Arc<dyn Outbound>,
    clock: Arc<dyn Clock>,
    dkim: Option<Arc<DkimKeys>>,
    settings: QueueSettings,
}

impl OutboundQueue {
    pub fn new(
        storage: Storage,
        out: Arc<dyn Outbound>,
        clock: Arc<dyn Clock>,
        dkim: Option<Arc<DkimKeys>>,
        settings: QueueSettings,
    ) -> Self {
        OutboundQueue {
            storage,
            out,
            clock,
            dkim,
            settings,
        }
    }

    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::minutes(10))
    }

    fn request(&self, owner: &str, received_before: Option<DateTime<Utc>>) -> ClaimRequest {
        let now = self.clock.now();
        ClaimRequest {
            now,
            owner: owner.to_string(),
            lease_until: now + self.lease(),
            limit: BATCH,
            status: Status::Outbound,
            received_before,
            skew: chrono::Duration::from_std(self.settings.clock_skew).unwrap_or_default(),
        }
    }

    /// Send everything due; returns when nothing due is left or `stop` turns true.
    ///
    /// # Errors
    /// Storage errors (what was sent before is written back).
    pub async fn run(
        &self,
        stop: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> Result<QueueReport, StoreError> {
        let mut report = QueueReport {
            failed: self.expire_old().await?,
            ..QueueReport::default()
        };
        let stopped = || stop.is_some_and(|s| *s.borrow());
        loop {
            if stopped() {
                return Ok(report);
            }
            let owner = format!("outbound-{}-{}", std::process::id(), ulid::Ulid::new());
            let batch = self
                .storage
                .index
                .claim(&self.request(&owner, None))
                .await?;
            if batch.is_empty() {
                return Ok(report);
            }
            for rec in batch {
                if stopped() {
                    self.give_back(&rec, &owner).await;
                    continue;
                }
                match self.attempt(rec, &owner).await? {
                    Some(Status::Delivered) => report.delivered += 1,
                    Some(Status::Failed) => report.failed += 1,
                    Some(_) => report.deferred += 1,
                    None => {}
                }
            }
        }
    }

    /// [`OutboundQueue::run`] that stops at `until` (the claims it holds then are
    /// given back; a message going out is finished): for hosts that stop working at a
    /// known instant (a Lambda invocation's end, a request's answer).
    ///
    /// # Errors
    /// As [`OutboundQueue::run`].
    pub async fn run_until(&self, until: tokio::time::Instant) -> Result<QueueReport, StoreError> {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let run = self.run(Some(&stop));
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            () = tokio::time::sleep_until(until) => {
                let _ = stop_tx.send(true);
                run.await
            }
        }
    }

    /// Fail outbound mail older than `hold_days` (a DSN to each sender).
    async fn expire_old(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        loop {
            let owner = format!("outbound-expiry-{}", ulid::Ulid::new());
            let cutoff =
                self.clock.now() - chrono::Duration::days(i64::from(self.settings.hold_days));
            let batch = self
                .storage
                .index
                .claim(&self.request(&owner, Some(cutoff)))
                .await?;
            if batch.is_empty() {
                return Ok(n);
            }
            for mut rec in batch {
                let now = self.clock.now();
                expire(&mut rec, self.settings.hold_days, now);
                dsn::settle(&self.storage, &mut rec, &self.settings.dsn, now).await?;
                write_back(self.storage.index.as_ref(), &rec, &owner).await?;
                tracing::info!(id = %rec.id, "outbound message expired");
                n += 1;
            }
        }
    }

    async fn give_back(&self, rec: &Record, owner: &str) {
        if let Err(e) = release(self.storage.index.as_ref(), rec, owner).await {
            tracing::warn!(id = %rec.id, error = %e, "could not give back a claim; it returns when its lease ends");
        }
    }

    /// One attempt on one claimed record; the status it was written back with, or
    /// `None` when the lease was lost (another run has the message).
    async fn attempt(&self, mut rec: Record, owner: &str) -> Result<Option<Status>, StoreError> {
        let index = &self.storage.index;
        let now = self.clock.now();
        let until = now + self.lease();
        if !index.renew(rec.id, owner, until).await? {
            tracing::warn!(id = %rec.id, "outbound: lease lost before the attempt; not sending");
            return Ok(None);
        }
        rec.lease = Some(Lease {
            owner: owner.to_string(),
            until,
        });
        let message = match self.storage.blobs.read_all(&rec.blob_key()).await {
            Ok((bytes, _)) => bytes,
            Err(StoreError::MissingBlob(key)) => {
                // Gone for good: nothing to send, every recipient fails.
                let r = Reply::new(554, format!("5.3.0 the stored message {key} is missing"));
                let replies = vec![r; rec.pending().count()];
                return self.finish(rec, owner, &replies).await;
            }
            Err(e) => {
                self.give_back(&rec, owner).await;
                return Err(e);
            }
        };
        let message = match &self.dkim {
            Some(keys) => keys.sign(&message),
            None => message,
        };
        let rcpts: Vec<String> = rec.pending().map(|r| r.address.clone()).collect();
        let keeper = Keeper::start(
            index.clone(),
            self.clock.clone(),
            rec.id,
            owner,
            self.lease(),
            until,
        );
        let guard = |body| keeper.guard(body);
        let replies = self
            .out
            .send(&rec.mail_from, &rcpts, &message, &guard)
            .await;
        if let Kept::LostBeforeDot | Kept::LostAfterDot = keeper.stop() {
            tracing::error!(id = %rec.id, "outbound: lease lost while sending; the write-back will be refused and the message may go out twice");
        }
        self.finish(rec, owner, &replies).await
    }

    /// Apply one reply per pending recipient, bounce what failed, write back.
    async fn finish(
        &self,
        mut rec: Record,
        owner: &str,
        replies: &[Reply],
    ) -> Result<Option<Status>, StoreError> {
        let now = self.clock.now();
        if record_replies(&mut rec, replies, now) == Outcome::Failed
            && let Err(e) = dsn::settle(&self.storage, &mut rec, &self.settings.dsn, now).await
        {
            // What was delivered is still written back (never sent again); the refused
            // recipients wait, and are tried and bounced on a later attempt.
            tracing::warn!(id = %rec.id, error = %e, "outbound: could not queue the DSN; the refused recipients are tried again");
            defer_refused(&mut rec, now);
        }
        match write_back(self.storage.index.as_ref(), &rec, owner).await {
            Ok(()) => {}
            Err(StoreError::Leased(id) | StoreError::Changed(id)) => {
                tracing::warn!(%id, "outbound: lease lost before write-back; another run owns the message");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let delivered = rec
            .rcpts
            .iter()
            .filter(|r| r.status == RcptStatus::Delivered)
            .count();
        tracing::info!(
            id = %rec.id,
            from_domain = redact(&rec.mail_from),
            delivered,
            pending = rec.pending().count(),
            status = %rec.status,
            "outbound attempt"
        );
        Ok(Some(rec.status))
    }
}
