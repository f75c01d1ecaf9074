//! Operator changes to one message: pause (`hold`), `release`, `retry`, `purge`. The
//! `standby` command and the operator console in the web app call the same functions,
//! so a change made from either is the same change.
//!
//! Every change is compare-and-set on the record's version: the record is read, the
//! change decided on what was read, and written only if nobody (a drain's write-back,
//! the sender check, another operator) wrote it in between. When someone did, the change
//! is decided again on the record as it is now (a message delivered meanwhile is no
//! longer paused or retried), a few times at most. A message a drain holds a lease on is
//! not changed (the drain's result would overwrite the change); a lease counts as ended
//! only `skew` (`[drain] clock_skew_secs`) after its end by this host's clock.

use chrono::{DateTime, Duration, Utc};

use crate::error::StoreError;
use crate::model::{MessageId, RcptStatus, Record, Status};
use crate::ports::Storage;

/// How many times a change is decided again when the record changed under it.
const TRIES: usize = 3;

/// One message's record, or why not.
async fn fetch(storage: &Storage, id: MessageId) -> Result<Record, String> {
    storage
        .index
        .get(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| StoreError::NotFound(id).to_string())
}

/// Read a record, decide and write `change` compare-and-set on its version; decided
/// again on a fresh read when the record changed in between. `change` answers whether
/// there is anything to write; `Err(reason)` from it leaves the message as it is.
///
/// # Errors
/// Why the message was not changed, for the operator.
pub async fn change_one(
    storage: &Storage,
    id: MessageId,
    skew: Duration,
    mut change: impl AsyncFnMut(&mut Record, DateTime<Utc>) -> Result<bool, String>,
) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..TRIES {
        let mut rec = fetch(storage, id).await?;
        let now = Utc::now();
        if !change(&mut rec, now).await? {
            return Ok(());
        }
        rec.updated_at = now;
        match storage.index.update(&rec, now - skew).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::Changed(_)) => last = e.to_string(),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(last)
}

/// [`change_one`] for a change decided without waiting on anything (a plain function:
/// the future stays `Send` for the web app's handlers).
async fn simple(
    storage: &Storage,
    id: MessageId,
    skew: Duration,
    change: impl Fn(&mut Record) -> Result<(), String> + Send + Sync,
) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..TRIES {
        let mut rec = fetch(storage, id).await?;
        let now = Utc::now();
        change(&mut rec)?;
        rec.updated_at = now;
        match storage.index.update(&rec, now - skew).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::Changed(_)) => last = e.to_string(),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(last)
}

/// Pause a held (or outbound) message: not delivered until released.
///
/// # Errors
/// Why not (another status, a lease, storage).
pub async fn hold(storage: &Storage, id: MessageId, skew: Duration) -> Result<(), String> {
    simple(storage, id, skew, |rec| match rec.status {
        Status::Held | Status::Outbound => {
            rec.status = Status::Paused;
            Ok(())
        }
        other => Err(format!(
            "is {other}; only held (or outbound) messages can be paused"
        )),
    })
    .await
}

/// A paused message back to the queue, due now.
///
/// # Errors
/// Why not.
pub async fn release(storage: &Storage, id: MessageId, skew: Duration) -> Result<(), String> {
    simple(storage, id, skew, |rec| match rec.status {
        Status::Paused => {
            rec.status = rec.queue_status();
            rec.next_attempt_at = Utc::now();
            Ok(())
        }
        other => Err(format!("is {other}; only paused messages can be released")),
    })
    .await
}

/// A held or failed message due now; failed recipients become pending.
///
/// # Errors
/// Why not.
pub async fn retry(storage: &Storage, id: MessageId, skew: Duration) -> Result<(), String> {
    simple(storage, id, skew, |rec| {
        if rec.status == Status::Delivered {
            return Err("is already delivered".into());
        }
        if rec.status == Status::Journal {
            return Err(
                "is a journal copy (an archive, never delivered); `standby replay` sends those"
                    .into(),
            );
        }
        for r in rec
            .rcpts
            .iter_mut()
            .filter(|r| r.status == RcptStatus::Failed)
        {
            r.status = RcptStatus::Pending;
        }
        rec.status = rec.queue_status();
        rec.reason = None;
        rec.next_attempt_at = Utc::now();
        Ok(())
    })
    .await
}

/// Delete a message for good, audited first as by `by` (`operator:<login>`,
/// `console:<address>`); refused under legal hold.
///
/// # Errors
/// Why not, or what was left (the bytes, when only the record went).
pub async fn purge(
    storage: &Storage,
    id: MessageId,
    skew: Duration,
    by: &str,
    via: &str,
) -> Result<(), String> {
    let rec = fetch(storage, id).await?;
    let now = Utc::now();
    match crate::retention::delete(storage, &rec, by, via, now, now - skew).await {
        Ok(crate::retention::Deleted::Whole) => Ok(()),
        // The record is gone, but not the bytes: the operator must hear of it.
        Ok(crate::retention::Deleted::BytesLeft) => Err(format!(
            "record deleted, but the stored message `{}` was not (audited as \
             delete-incomplete): a local spool removes it at its next start, on S3 \
             delete the object by hand",
            rec.blob_key()
        )),
        Err(e) => Err(e.to_string()),
    }
}
