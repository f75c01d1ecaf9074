//! `standby reindex`: rebuild the local spool's index from the spool itself.
//!
//! Every message file carries its envelope (`messages/<id>.spool`: the message, then its
//! envelope, made durable together, see [`crate::backend::fs`]; an earlier release's
//! `<id>.eml` has it beside it, in `<id>.env`), so a lost index (`index.db` deleted, a
//! disk restored without it), a corrupt one (it will not open, or `PRAGMA quick_check`
//! complains: it is moved aside as `index.db.corrupt-<time>`, never deleted) or one
//! restored from an older copy can be made whole again: each message without a row, in
//! `messages/` or in `orphans/`, gets its record back (hash, size, summary, journal
//! filing and confidential rules as at receipt), and orphans go back into `messages/`.
//!
//! What happened to a message after receipt (delivery attempts, an operator's hold) is
//! not in the spool: rebuilt messages are `paused` (nothing is redelivered until the
//! operator looks: `standby list --status paused`, then `standby release`), or `held`
//! with `--held`; journal copies stay journal copies. It takes the data directory's lock,
//! so it never runs beside `standby serve`.

use std::path::{Path, PathBuf};

use super::{CliError, print_summary};
use crate::backend::fs::{self, FsBlobStore};
use crate::backend::sqlite::SqliteIndex;
use crate::config::Config;
use crate::ingest::{Stamp, rebuild};
use crate::model::Status;
use crate::ports::Index;

#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    /// Records made again.
    reindexed: usize,
    /// Of those, messages taken back from `orphans/`.
    adopted: usize,
    /// Messages that had their row already.
    indexed: usize,
    /// Files of deleted messages (tombstoned) left behind by a crash: not brought back.
    deleted: usize,
    /// Message files without a readable envelope, left as they are.
    no_envelope: Vec<String>,
    /// Message files whose bytes are not the ones their envelope describes (size and
    /// SHA-256: lost blocks, a damaged disk), left as they are and not indexed: indexed
    /// with the hash of what is there, they would be sent as if received so.
    damaged: Vec<String>,
    /// Where a corrupt index was moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    set_aside: Option<PathBuf>,
}

pub(super) async fn reindex(config: &Config, held: bool, json: bool) -> Result<(), CliError> {
    if config.aws_settings().is_some() {
        return Err(CliError::Usage(
            "reindex rebuilds the local spool's index; on AWS the reconciler indexes \
             objects without a record"
                .into(),
        ));
    }
    let dir = config.data_dir();
    let _lock = fs::lock_spool(dir)?;
    let blobs = FsBlobStore::open(dir)?;
    let mut summary = Summary::default();
    let index = match open_sound(dir) {
        Ok(index) => index,
        Err(why) => {
            let aside = set_aside(dir)?;
            tracing::warn!(index = %aside.display(), %why, "index is corrupt; moved aside");
            summary.set_aside = Some(aside);
            SqliteIndex::open(dir)?
        }
    };
    let journal = config.journal();
    let retention = config.retention();
    // Messages deleted (retention, an operator) whose files a crash left behind: the
    // next start removes them; they are never brought back.
    let deleted = index.tombstones()?;
    // What a crash left in `tmp/` first, as `standby serve`'s start does: each message
    // put in place if its row is there and its bytes match it, indexed again (paused
    // unless `--held`) if it has no row and its bytes match its envelope, removed
    // otherwise (never acknowledged); partial writes removed.
    let recovered = blobs.recover(|id| index.contains(id), |id| deleted.contains(&id))?;
    let storage = crate::ports::Storage {
        blobs: std::sync::Arc::new(blobs.clone()),
        index: std::sync::Arc::new(index.clone()),
        audit: std::sync::Arc::new(crate::backend::FsAuditLog::new(dir)),
        events: std::sync::Arc::new(index.clone()),
        mailboxes: Some(std::sync::Arc::new(index.clone())),
    };
    let unpublished = recovered
        .unpublished
        .into_iter()
        .map(|s| (s.id, s.envelope))
        .collect();
    let checked =
        crate::publish::check_unpublished(&storage, unpublished, &journal, &retention, !held)
            .await?;
    summary.reindexed += checked.readmitted;
    for found in blobs.spooled()? {
        let has_row = index.contains(found.id)?;
        if !has_row && deleted.contains(&found.id) {
            summary.deleted += 1;
            continue;
        }
        if has_row {
            summary.indexed += 1;
            if found.orphan {
                blobs.adopt(found.id)?;
                summary.adopted += 1;
            }
            continue;
        }
        let stamp = found
            .envelope
            .as_deref()
            .map(Stamp::from_json)
            .and_then(Result::ok)
            .filter(|s| s.id == found.id);
        let Some(stamp) = stamp else {
            tracing::warn!(file = %found.path.display(), "no readable envelope beside it: not indexed");
            summary.no_envelope.push(found.path.display().to_string());
            continue;
        };
        let bytes = found.message()?;
        let digest = (
            bytes.len() as u64,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        );
        if stamp.size.is_some_and(|n| n != digest.0)
            || stamp.sha256.as_ref().is_some_and(|h| *h != digest.1)
        {
            tracing::warn!(file = %found.path.display(), "bytes differ from the size and SHA-256 its envelope gives: not indexed");
            summary.damaged.push(found.path.display().to_string());
            continue;
        }
        let mut rec = rebuild(&stamp, &bytes, &journal, &retention);
        // What a user sent to outside recipients may have gone out already: like held
        // mail, paused until the operator releases it (back to `outbound`).
        if matches!(rec.status, Status::Held | Status::Outbound) && !held {
            rec.status = Status::Paused;
        }
        index.insert(&rec).await?;
        if found.orphan {
            blobs.adopt(found.id)?;
            summary.adopted += 1;
        }
        summary.reindexed += 1;
    }
    print_summary(json, &summary, |out| {
        if let Some(p) = &summary.set_aside {
            writeln!(out, "corrupt index moved to {}", p.display())?;
        }
        writeln!(
            out,
            "reindexed {} message(s) ({} from orphans/, {}), {} already indexed, {} deleted \
             (left for the next start to remove)",
            summary.reindexed,
            summary.adopted,
            if held {
                "held"
            } else {
                "paused: `standby release` sends them"
            },
            summary.indexed,
            summary.deleted
        )?;
        for f in &summary.no_envelope {
            writeln!(out, "not indexed, no envelope: {f}")?;
        }
        for f in &summary.damaged {
            writeln!(
                out,
                "not indexed, bytes differ from its envelope's size and SHA-256: {f}"
            )?;
        }
        Ok(())
    })
}

/// The index, if it opens and passes `PRAGMA quick_check`; else why not.
fn open_sound(dir: &Path) -> Result<SqliteIndex, String> {
    let index = SqliteIndex::open(dir).map_err(|e| e.to_string())?;
    match index.quick_check() {
        Ok(problems) if problems.is_empty() => Ok(index),
        Ok(problems) => Err(problems.join("; ")),
        Err(e) => Err(e.to_string()),
    }
}

/// Move `index.db` and its WAL and shared-memory files aside (together, so SQLite still
/// pairs them); the new name.
fn set_aside(dir: &Path) -> Result<PathBuf, CliError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = dir.join(format!("index.db.corrupt-{stamp}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = dir.join(format!("index.db{suffix}"));
        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::error::StoreError::io("rename", &from, e).into()),
        }
    }
    Ok(aside)
}
