//! `standby hold`, `release`, `retry` and `purge`: operator changes to messages.
//!
//! Each id is handled on its own and reported on its own line; one bad id does not stop
//! the others, but makes the command exit 1. A message a drain holds a lease on is not
//! changed (the drain's result would overwrite the change); try again shortly. A lease
//! counts as ended only `[drain] clock_skew_secs` after its end by this host's clock.
//!
//! Every change is compare-and-set on the record's version: the record is read, the
//! change decided on what was read, and written only if nobody (a drain's write-back,
//! the sender check, another operator) wrote it in between. When someone did, the change
//! is decided again on the record as it is now (a message delivered meanwhile is no
//! longer paused or retried), a few times at most.

use super::CliError;
use crate::error::StoreError;
use crate::model::{MessageId, RcptStatus, Record, Status};
use crate::ports::Storage;
use crate::ports::{ListQuery, Pages};

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

/// One message's record, or why not (for [`report`]'s line).
async fn fetch(storage: &Storage, id: MessageId) -> Result<Record, String> {
    storage
        .index
        .get(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| StoreError::NotFound(id).to_string())
}

/// How many times a change is decided again when the record changed under it.
const TRIES: usize = 3;

/// Read a record, decide and write `change` compare-and-set on its version; decided
/// again on a fresh read when the record changed in between. `change` answers whether
/// there is anything to write; `Err(reason)` from it skips the message.
pub(super) async fn change_one(
    storage: &Storage,
    id: MessageId,
    skew: chrono::Duration,
    mut change: impl AsyncFnMut(&mut Record, chrono::DateTime<chrono::Utc>) -> Result<bool, String>,
) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..TRIES {
        let mut rec = fetch(storage, id).await?;
        let now = chrono::Utc::now();
        if !change(&mut rec, now).await? {
            return Ok(());
        }
        rec.updated_at = now;
        // A lease counts as ended only `skew` after its end by our clock.
        match storage.index.update(&rec, now - skew).await {
            Ok(()) => return Ok(()),
            Err(e @ StoreError::Changed(_)) => last = e.to_string(),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(last)
}

/// Apply `change` to each message; `Err(reason)` from `change` skips it.
async fn each(
    storage: &Storage,
    skew: chrono::Duration,
    ids: &[MessageId],
    verb: &str,
    change: impl Fn(&mut Record) -> Result<(), String>,
) -> Result<(), CliError> {
    report(ids, verb, async |id| {
        change_one(storage, id, skew, async |rec, _| change(rec).map(|()| true)).await
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

pub(super) async fn hold(
    storage: &Storage,
    skew: chrono::Duration,
    ids: &[MessageId],
    all: bool,
) -> Result<(), CliError> {
    let ids = if all {
        let mut ids = with_status(storage, Status::Held).await?;
        ids.extend(with_status(storage, Status::Outbound).await?);
        ids
    } else {
        ids.to_vec()
    };
    each(storage, skew, &ids, "paused", |rec| match rec.status {
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

pub(super) async fn release(
    storage: &Storage,
    skew: chrono::Duration,
    ids: &[MessageId],
    all: bool,
) -> Result<(), CliError> {
    let ids = if all {
        with_status(storage, Status::Paused).await?
    } else {
        ids.to_vec()
    };
    each(storage, skew, &ids, "released", |rec| match rec.status {
        Status::Paused => {
            rec.status = rec.queue_status();
            rec.next_attempt_at = chrono::Utc::now();
            Ok(())
        }
        other => Err(format!("is {other}; only paused messages can be released")),
    })
    .await
}

pub(super) async fn retry(
    storage: &Storage,
    skew: chrono::Duration,
    ids: &[MessageId],
) -> Result<(), CliError> {
    each(storage, skew, ids, "queued for delivery now", |rec| {
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
        rec.status = rec.queue_status();
        rec.reason = None;
        rec.next_attempt_at = chrono::Utc::now();
        Ok(())
    })
    .await
}

/// Delete messages for good, each audited first; a message under legal hold is refused.
pub(super) async fn purge(
    storage: &Storage,
    skew: chrono::Duration,
    ids: &[MessageId],
) -> Result<(), CliError> {
    let by = operator();
    report(ids, "purged", async |id| {
        let rec = fetch(storage, id).await?;
        let now = chrono::Utc::now();
        // A drain's lease counts as ended only `skew` after its end by our clock.
        match crate::retention::delete(storage, &rec, &by, "standby purge", now, now - skew).await {
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
    })
    .await
}

/// Who runs the command, for the audit log: `operator:<login>`.
pub(super) fn operator() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    format!("operator:{user}")
}

/// The messages a legal hold or its release covers: `ids`, else every message `sel`
/// (recipient, time window) lists.
async fn legal_targets(
    storage: &Storage,
    ids: &[MessageId],
    sel: &ListQuery,
) -> Result<Vec<MessageId>, CliError> {
    if !ids.is_empty() {
        return Ok(ids.to_vec());
    }
    if sel.rcpt.is_none() && sel.since.is_none() && sel.until.is_none() {
        return Err(CliError::Usage(
            "name the messages: IDs, or --rcpt ADDR and/or --since/--until TIME".into(),
        ));
    }
    let mut pages = Pages::new(sel.clone());
    let mut out = Vec::new();
    while let Some(page) = pages.next(storage.index.as_ref()).await? {
        out.extend(page.iter().map(|r| r.id));
    }
    Ok(out)
}

/// Place (`hold = true`) or lift a legal hold, audited.
pub(super) async fn legal(
    storage: &Storage,
    skew: chrono::Duration,
    ids: &[MessageId],
    sel: &ListQuery,
    hold: bool,
    reason: &str,
) -> Result<(), CliError> {
    let ids = legal_targets(storage, ids, sel).await?;
    let by = operator();
    let (verb, action) = if hold {
        ("placed under legal hold", "legal-hold")
    } else {
        ("released from legal hold", "legal-release")
    };
    report(&ids, verb, async |id| {
        let (mut current, mut audited) = (None, false);
        change_one(storage, id, skew, async |rec, now| {
            if rec.legal_hold.is_some() == hold {
                // Already so: nothing to change or audit; the stored bytes are marked
                // again below (an earlier run may have failed after the record).
                current = Some(rec.clone());
                return Ok(false);
            }
            if !audited {
                storage
                    .audit
                    .append(&crate::ports::AuditEntry::of(rec, action, &by, reason, now))
                    .await
                    .map_err(|e| e.to_string())?;
                audited = true;
            }
            rec.legal_hold = hold.then(|| crate::model::LegalHold {
                at: now,
                reason: reason.to_string(),
            });
            current = Some(rec.clone());
            Ok(true)
        })
        .await?;
        let Some(rec) = current else { return Ok(()) };
        storage
            .blobs
            .set_legal_hold(&rec.blob_key(), hold)
            .await
            .map_err(|e| e.to_string())?;
        // The store's own retention follows the record: a drain that marked the bytes
        // delivered meanwhile is overruled, and a released delivered message may expire
        // again.
        crate::retention::mark(storage, &rec)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
}

/// `standby retention`: apply the policy at `now`, or list what it would delete.
pub(super) async fn retention(
    storage: &Storage,
    policy: &crate::config::RetentionPolicy,
    now: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
    json: bool,
) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = super::output::Human::unless_json(json, std::io::stdout().lock());
    if dry_run {
        let due = crate::retention::due(storage, policy, now).await?;
        if json {
            let items: Vec<serde_json::Value> = due
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "id": d.rec.id.to_string(),
                        "status": d.rec.status,
                        "received_at": d.rec.received_at,
                        "rule": d.rule,
                        "legal_hold": d.held_back,
                    })
                })
                .collect();
            serde_json::to_writer_pretty(&mut out, &items).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            for d in &due {
                let hold = if d.held_back {
                    "  (legal hold: kept)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "{}  {:<9}  {}{hold}",
                    d.rec.id,
                    d.rec.status.as_str(),
                    d.rule
                )?;
            }
            let n = due.iter().filter(|d| !d.held_back).count();
            writeln!(
                out,
                "{n} message(s) would be deleted, {} kept under legal hold",
                due.len() - n
            )?;
        }
        return Ok(());
    }
    drop(out);
    let report = crate::retention::run(storage, policy, now).await?;
    super::print_summary(json, &report, |out| {
        writeln!(
            out,
            "deleted {}, kept under legal hold {}",
            report.deleted, report.held_back
        )?;
        if report.incomplete > 0 {
            writeln!(
                out,
                "{} of them left their stored message behind: `standby audit` lists them \
                 (delete-incomplete, with the key)",
                report.incomplete
            )?;
        }
        Ok(())
    })?;
    if report.incomplete > 0 {
        return Err(CliError::Partial(report.incomplete as usize));
    }
    Ok(())
}
