//! `standby hold`, `release`, `retry` and `purge`: operator changes to messages.
//!
//! Each id is handled on its own and reported on its own line; one bad id does not stop
//! the others, but makes the command exit 1. A message a drain holds a lease on is not
//! changed (the drain's result would overwrite the change); try again shortly.

use super::CliError;
use crate::backend::Storage;
use crate::error::StoreError;
use crate::model::{MessageId, RcptStatus, Record, Status};
use crate::ports::ListQuery;

/// Run `op` on each id, one line per id on stdout (done) or stderr (why not).
async fn report(
    ids: &[MessageId],
    verb: &str,
    op: impl AsyncFn(MessageId) -> Result<(), String>,
) -> Result<(), CliError> {
    let mut bad = 0;
    for &id in ids {
        match op(id).await {
            Ok(()) => println!("{id}: {verb}"),
            Err(why) => {
                eprintln!("standby: {id}: {why}");
                bad += 1;
            }
        }
    }
    if bad > 0 {
        return Err(CliError::Partial(bad));
    }
    Ok(())
}

/// Apply `change` to each message; `Err(reason)` from `change` skips it.
async fn each(
    storage: &Storage,
    ids: &[MessageId],
    verb: &str,
    change: impl Fn(&mut Record) -> Result<(), String>,
) -> Result<(), CliError> {
    report(ids, verb, async |id| {
        let mut rec = storage
            .index
            .get(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| StoreError::NotFound(id).to_string())?;
        change(&mut rec)?;
        let now = chrono::Utc::now();
        rec.updated_at = now;
        storage
            .index
            .update(&rec, now)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

async fn with_status(storage: &Storage, status: Status) -> Result<Vec<MessageId>, CliError> {
    let recs = storage
        .index
        .list(&ListQuery {
            status: Some(status),
            limit: None,
            after: None,
            ..Default::default()
        })
        .await?;
    Ok(recs.into_iter().map(|r| r.id).collect())
}

pub(super) async fn hold(storage: &Storage, ids: &[MessageId], all: bool) -> Result<(), CliError> {
    let ids = if all {
        with_status(storage, Status::Held).await?
    } else {
        ids.to_vec()
    };
    each(storage, &ids, "paused", |rec| match rec.status {
        Status::Held => {
            rec.status = Status::Paused;
            Ok(())
        }
        other => Err(format!("is {other}; only held messages can be paused")),
    })
    .await
}

pub(super) async fn release(
    storage: &Storage,
    ids: &[MessageId],
    all: bool,
) -> Result<(), CliError> {
    let ids = if all {
        with_status(storage, Status::Paused).await?
    } else {
        ids.to_vec()
    };
    each(storage, &ids, "released", |rec| match rec.status {
        Status::Paused => {
            rec.status = Status::Held;
            rec.next_attempt_at = chrono::Utc::now();
            Ok(())
        }
        other => Err(format!("is {other}; only paused messages can be released")),
    })
    .await
}

pub(super) async fn retry(storage: &Storage, ids: &[MessageId]) -> Result<(), CliError> {
    each(storage, ids, "queued for delivery now", |rec| {
        if rec.status == Status::Delivered {
            return Err("is already delivered".into());
        }
        for r in rec
            .rcpts
            .iter_mut()
            .filter(|r| r.status == RcptStatus::Failed)
        {
            r.status = RcptStatus::Pending;
        }
        rec.status = Status::Held;
        rec.reason = None;
        rec.next_attempt_at = chrono::Utc::now();
        Ok(())
    })
    .await
}

pub(super) async fn purge(storage: &Storage, ids: &[MessageId]) -> Result<(), CliError> {
    report(ids, "purged", async |id| {
        let key = match storage.index.get(id).await.map_err(|e| e.to_string())? {
            Some(rec) => rec.blob_key(),
            None => return Err(StoreError::NotFound(id).to_string()),
        };
        // Index first: once the row is gone no drain can pick the message up.
        if !storage.index.delete(id).await.map_err(|e| e.to_string())? {
            return Err(StoreError::NotFound(id).to_string());
        }
        storage.blobs.delete(&key).await.map_err(|e| e.to_string())
    })
    .await
}
