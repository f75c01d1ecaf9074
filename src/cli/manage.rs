//! `standby hold`, `release`, `retry` and `purge`: operator changes to messages.
//!
//! Each id is handled on its own and reported on its own line; one bad id does not stop
//! the others, but makes the command exit 1. A message a drain holds a lease on is not
//! changed (the drain's result would overwrite the change); try again shortly. A lease
//! counts as ended only `[drain] clock_skew_secs` after its end by this host's clock.
//!
//! The changes themselves are [`crate::manage`]'s, shared with the operator console.

use super::CliError;
use crate::manage;
use crate::model::{MessageId, Status};
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
    report(&ids, "paused", async |id| {
        manage::hold(storage, id, skew).await
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
    report(&ids, "released", async |id| {
        manage::release(storage, id, skew).await
    })
    .await
}

pub(super) async fn retry(
    storage: &Storage,
    skew: chrono::Duration,
    ids: &[MessageId],
) -> Result<(), CliError> {
    report(ids, "queued for delivery now", async |id| {
        manage::retry(storage, id, skew).await
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
        manage::purge(storage, id, skew, &by, "standby purge").await
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
        manage::change_one(storage, id, skew, async |rec, now| {
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
