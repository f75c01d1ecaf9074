//! `SqliteIndex`: the message index in an embedded SQLite database (`<data_dir>/index.db`).
//!
//! # Guarantees
//! - WAL mode with `synchronous = FULL`: a write returns only after its commit is flushed.
//!   The receive path's insert is the exception ([`Index::insert_unsynced`]): committed
//!   without a flush, then made durable by the [`Index::sync`] that `Incoming::commit`
//!   runs beside the message file's flush, before the 250 (concurrent sessions share one
//!   `fdatasync` of the WAL). The bundled
//!   SQLite is built to flush with `fdatasync(2)`, not `fsync(2)` (`.cargo/config.toml`):
//!   the WAL's data and size, without its modification time, which on ext4 would cost a
//!   journal commit per transaction.
//! - `id` is the primary key: inserting an existing id changes nothing (idempotent ingest).
//! - A grouped write whose `COMMIT` fails is reported as transient (it may still land):
//!   its frames can be in the WAL already, and the next open replays them. Only a write
//!   refused before its commit is certainly absent (see `Incoming::commit`, which removes
//!   a blob only then).
//! - A delete leaves a tombstone (the id) in the same transaction, so a message file a
//!   crash left behind is known to be deleted, not an orphan (see
//!   [`FsBlobStore::sweep_orphans`](super::fs::FsBlobStore::sweep_orphans)).
//! - Claims run in one `BEGIN IMMEDIATE` transaction, so two processes (`standby serve` and
//!   `standby drain`) never lease the same message at once.
//!
//! Inserts from concurrent sessions are grouped ([`Group`]): every insert waiting while a
//! transaction commits goes into the next one, so one WAL fsync makes a batch durable.
//! Verdicts (the sender check, after the 250) are grouped too, and committed without an
//! fsync of their own: the next durable commit or WAL flush (the next message's, a
//! checkpoint) carries them to disk, so the check adds no flush per message to the
//! receive path. The WAL is written in order, so a power cut loses only the newest
//! verdicts, which are then looked up again (a lost verdict reads as pending).
//!
//! The full record is stored as JSON; the columns the queries filter and sort on (status,
//! times, lease) are written from the same record beside it. The lease lives only in its
//! columns, because claims change it without rewriting the record.
//!
//! Every listing and claim walks one index in list order, (status, received_at, id), and
//! stops at its limit; nothing sorts the table. A claim skips the leased and the
//! not-yet-due rows it passes, as the DynamoDB claim does; the index carries the due time
//! and the lease, so skipping reads no table rows (a claim that finds nothing due among
//! 100,000 held takes milliseconds). An index on the due time would find due rows without
//! passing the others, but then every claim would sort them all by age: at 100,000 held
//! that sort, not the delivery, set the drain rate.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::group::Group;
use crate::error::StoreError;

mod events;
mod mailboxes;
use crate::model::HealthRecord;
use crate::model::{Class, Counts, Lease, MessageId, Record, Status, Verdicts};
use crate::ports::{ClaimRequest, Index, ListQuery, MailboxFilter};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_recv
    ON messages(status, received_at, id, next_attempt_at, lease_until);
CREATE INDEX IF NOT EXISTS messages_order ON messages(received_at, id);
DROP INDEX IF EXISTS messages_status;
DROP INDEX IF EXISTS messages_due;
CREATE INDEX IF NOT EXISTS messages_class ON messages((status = 'journal'), received_at, id);
CREATE INDEX IF NOT EXISTS messages_sender
    ON messages(lower(json_extract(record, '$.mail_from')), received_at, id);
CREATE TABLE IF NOT EXISTS message_rcpts (
    rcpt TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (rcpt, received_at, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS message_rcpts_id ON message_rcpts(id);
CREATE VIRTUAL TABLE IF NOT EXISTS message_subjects USING fts5(subject, tokenize = 'trigram');
CREATE TABLE IF NOT EXISTS health (
    k INTEGER PRIMARY KEY CHECK (k = 1),
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS node_health (
    node TEXT PRIMARY KEY,
    record TEXT NOT NULL
) WITHOUT ROWID;
";

/// Search terms kept beside each record by triggers, so every write path (grouped
/// inserts, write-backs, operator updates, deletes) keeps them right: one row per
/// recipient address (lower case) in `message_rcpts`, the subject in the trigram
/// full-text table `message_subjects` (rowid = the message's rowid). The update trigger
/// fires only when the addresses or the subject change, not on every delivery attempt.
const SEARCH: &str = "
CREATE TRIGGER IF NOT EXISTS messages_search_ai AFTER INSERT ON messages BEGIN
    INSERT OR IGNORE INTO message_rcpts
        SELECT lower(json_extract(j.value, '$.address')), NEW.received_at, NEW.id
        FROM json_each(NEW.record, '$.rcpts') AS j;
    INSERT INTO message_subjects(rowid, subject)
        SELECT NEW.rowid, json_extract(NEW.record, '$.summary.subject')
        WHERE json_extract(NEW.record, '$.summary.subject') IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS messages_search_ad AFTER DELETE ON messages BEGIN
    DELETE FROM message_rcpts WHERE id = OLD.id;
    DELETE FROM message_subjects WHERE rowid = OLD.rowid;
END;
CREATE TRIGGER IF NOT EXISTS messages_search_au AFTER UPDATE OF record ON messages
WHEN (SELECT group_concat(json_extract(value, '$.address'), ',')
        FROM json_each(OLD.record, '$.rcpts'))
     IS NOT (SELECT group_concat(json_extract(value, '$.address'), ',')
        FROM json_each(NEW.record, '$.rcpts'))
  OR json_extract(OLD.record, '$.summary.subject')
     IS NOT json_extract(NEW.record, '$.summary.subject')
BEGIN
    DELETE FROM message_rcpts WHERE id = OLD.id;
    DELETE FROM message_subjects WHERE rowid = OLD.rowid;
    INSERT OR IGNORE INTO message_rcpts
        SELECT lower(json_extract(j.value, '$.address')), NEW.received_at, NEW.id
        FROM json_each(NEW.record, '$.rcpts') AS j;
    INSERT INTO message_subjects(rowid, subject)
        SELECT NEW.rowid, json_extract(NEW.record, '$.summary.subject')
        WHERE json_extract(NEW.record, '$.summary.subject') IS NOT NULL;
END;
";

/// Fill the search tables for a database made before they existed (`user_version` < 2).
const SEARCH_BACKFILL: &str = "
INSERT OR IGNORE INTO message_rcpts
    SELECT lower(json_extract(j.value, '$.address')), m.received_at, m.id
    FROM messages AS m, json_each(m.record, '$.rcpts') AS j;
INSERT INTO message_subjects(rowid, subject)
    SELECT rowid, json_extract(record, '$.summary.subject') FROM messages
    WHERE json_extract(record, '$.summary.subject') IS NOT NULL;
";

/// The index database; cheap to clone, one connection shared behind a mutex.
#[derive(Clone)]
pub struct SqliteIndex {
    conn: Arc<Mutex<Connection>>,
    /// `index.db-wal`, flushed by [`Index::sync`] (`None`: in memory).
    wal: Option<Arc<Group<(), Result<(), StoreError>>>>,
    inserts: Arc<Group<Record, Result<bool, StoreError>>>,
    /// Inserts committed without a flush (see [`Index::insert_unsynced`]).
    unsynced: Arc<Group<Record, Result<bool, StoreError>>>,
    completions: Arc<Group<(Record, String), Result<(), StoreError>>>,
    verdicts: Arc<Group<VerdictWrite, Result<(), StoreError>>>,
    renewals: Arc<Group<Renewal, Result<bool, StoreError>>>,
    discards: Arc<Group<MessageId, Result<bool, StoreError>>>,
}

/// The WAL file, held open from the index's start: Linux reports a writeback error to
/// every descriptor opened before it, once, so a flush through a descriptor opened
/// later could miss an error that SQLite's own descriptor was told of. SQLite deletes
/// its WAL only when its last connection closes (after a full checkpoint); should the
/// file ever be a new one, the descriptor is opened again (what the old file held is in
/// the database by then).
pub struct Wal {
    path: std::path::PathBuf,
    file: Mutex<Option<std::fs::File>>,
    /// Set by the first failed flush: every later one fails too (the descriptor is
    /// shared by all sessions, and Linux reports a writeback error to it once).
    failed: std::sync::atomic::AtomicBool,
}

impl Wal {
    fn open(path: std::path::PathBuf) -> Result<Self, StoreError> {
        let file = match std::fs::File::open(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("open", &path, e)),
        };
        Ok(Wal {
            path,
            file: Mutex::new(file),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.dev(), m.ino())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("stat", &self.path, e)),
        };
        let held = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        if held != current {
            *file = match current {
                Some(_) => Some(
                    std::fs::File::open(&self.path)
                        .map_err(|e| StoreError::io("open", &self.path, e))?,
                ),
                None => None,
            };
        }
        use std::sync::atomic::Ordering;
        if self.failed.load(Ordering::SeqCst) {
            return Err(StoreError::io(
                "fdatasync",
                &self.path,
                std::io::Error::other(
                    "an earlier flush of the WAL failed (restart `standby serve` once the disk is sound)",
                ),
            ));
        }
        match file.as_ref() {
            Some(f) => f.sync_data().map_err(|e| {
                self.failed.store(true, Ordering::SeqCst);
                StoreError::io("fdatasync", &self.path, e)
            }),
            None => Ok(()),
        }
    }
}

/// A lease renewal: the record, the claim's token, the new end.
type Renewal = (MessageId, String, DateTime<Utc>);

/// Extend a lease only for the claim that holds it (its token); the version stays.
fn renew_item(
    tx: &rusqlite::Transaction<'_>,
    (id, owner, until): &Renewal,
) -> Result<Result<bool, StoreError>, StoreError> {
    tx.prepare_cached("UPDATE messages SET lease_until = ?3 WHERE id = ?1 AND lease_owner = ?2")
        .and_then(|mut stmt| stmt.execute(params![id.to_string(), owner, ms(*until)]))
        .map(|n| Ok(n == 1))
        .map_err(db_err)
}

/// Remove a never-acknowledged message's row, whatever its version, lease or hold, with
/// its tombstone (see [`Index::discard`]).
fn discard_item(
    tx: &rusqlite::Transaction<'_>,
    id: &MessageId,
) -> Result<Result<bool, StoreError>, StoreError> {
    let n = tx
        .prepare_cached("DELETE FROM messages WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id.to_string()]))
        .map_err(db_err)?;
    if n == 1 {
        tombstone(tx, *id)?;
    }
    Ok(Ok(n == 1))
}

/// A sender check's result for one record, and the time its lease is judged at.
type VerdictWrite = (MessageId, Verdicts, DateTime<Utc>);

/// Most writes one grouped transaction takes.
const GROUP_MAX: usize = 256;

/// One write of a grouped transaction. The outer error is the database's and fails the
/// whole transaction; the inner result is this item's own (a lost lease, a missing
/// record) and leaves the others alone.
type ItemFn<T, R> = fn(&rusqlite::Transaction<'_>, &T) -> Result<Result<R, StoreError>, StoreError>;

/// How a grouped transaction commits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// fsync the WAL before returning (`synchronous = FULL`, the connection's setting).
    Durable,
    /// Write the WAL without an fsync (`synchronous = NORMAL` for this transaction): the
    /// next durable commit's fsync covers it, and a power cut may lose it. Only for
    /// writes the contract lets go (verdicts).
    Lazy,
}

/// Writes of concurrent callers grouped into one `BEGIN IMMEDIATE` transaction each (one
/// WAL fsync per group, for durable ones); a failed transaction fails every write in it.
fn grouped<T, R>(
    conn: Arc<Mutex<Connection>>,
    item: ItemFn<T, R>,
    commit: Commit,
) -> Group<T, Result<R, StoreError>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    Group::new(GROUP_MAX, move |items: Vec<T>| {
        let conn = conn.clone();
        async move {
            let n = items.len();
            let res = tokio::task::spawn_blocking(move || {
                let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                // Set for every transaction, durable ones too: a lazy one whose reset
                // failed must not leave the connection lazy.
                let level = match commit {
                    Commit::Lazy => "NORMAL",
                    Commit::Durable => "FULL",
                };
                c.pragma_update(None, "synchronous", level)
                    .map_err(db_err)?;
                let run = |c: &mut Connection| {
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(db_err)?;
                    let out = items
                        .iter()
                        .map(|it| item(&tx, it))
                        .collect::<Result<Vec<_>, _>>()?;
                    tx.commit().map_err(commit_err)?;
                    Ok(out)
                };
                let out = run(&mut c);
                if commit == Commit::Lazy {
                    // Every other write on this connection must stay durable.
                    c.pragma_update(None, "synchronous", "FULL")
                        .map_err(db_err)?;
                }
                out
            })
            .await
            .unwrap_or_else(|e| Err(worker_failed(e.to_string())));
            match res {
                Ok(v) => v,
                Err(e) => {
                    let (detail, transient) = (e.to_string(), e.is_transient());
                    (0..n)
                        .map(|_| {
                            Err(StoreError::Backend {
                                backend: "sqlite",
                                detail: detail.clone(),
                                transient,
                                source: None,
                            })
                        })
                        .collect()
                }
            }
        }
    })
}

fn worker_failed(why: String) -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        detail: format!("worker thread failed: {why}"),
        transient: true,
        source: None,
    }
}

/// Insert one record unless its id exists; whether it was new.
fn insert_item(
    tx: &rusqlite::Transaction<'_>,
    rec: &Record,
) -> Result<Result<bool, StoreError>, StoreError> {
    let json = match record_json(rec) {
        Ok(j) => j,
        Err(e) => return Ok(Err(e)),
    };
    let n = tx
        .prepare_cached(
            "INSERT INTO messages (id, status, received_at, next_attempt_at, record)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO NOTHING",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                rec.id.to_string(),
                rec.status.as_str(),
                ms(rec.received_at),
                ms(rec.next_attempt_at),
                json,
            ])
        })
        .map_err(db_err)?;
    Ok(Ok(n == 1))
}

/// Replace a record and drop its lease if `allowed` says so given the current lease
/// (owner, until), and only if the stored version is still `rec.version` (compare-and-set;
/// the stored version moves on by one). The outer error is the database's; the inner one
/// is this record's own: [`StoreError::NotFound`], [`StoreError::Leased`] or
/// [`StoreError::Changed`], with nothing written.
fn write_if(
    tx: &rusqlite::Transaction<'_>,
    rec: &Record,
    allowed: impl FnOnce(&Option<String>, Option<i64>) -> bool,
) -> Result<Result<(), StoreError>, StoreError> {
    // Cached statements: the drain writes back every message it sends through here.
    let lease: Option<(Option<String>, Option<i64>, i64)> = tx
        .prepare_cached("SELECT lease_owner, lease_until, version FROM messages WHERE id = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([rec.id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(db_err)?;
    match lease {
        None => Ok(Err(StoreError::NotFound(rec.id))),
        Some((owner, until, _)) if !allowed(&owner, until) => Ok(Err(StoreError::Leased(rec.id))),
        Some((_, _, version)) if version != stored_version(rec.version) => {
            Ok(Err(StoreError::Changed(rec.id)))
        }
        Some(_) => write_record(tx, rec).map(|_| Ok(())),
    }
}

/// A record's version as the `version` column holds it.
fn stored_version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A sender check's result: only the record's `verdicts`, only while no live lease is
/// held (a drain's write-back would replace the whole record).
fn verdict_item(
    tx: &rusqlite::Transaction<'_>,
    (id, verdicts, now): &VerdictWrite,
) -> Result<Result<(), StoreError>, StoreError> {
    let json = match serde_json::to_string(verdicts) {
        Ok(j) => j,
        Err(e) => {
            return Ok(Err(StoreError::Corrupt {
                id: id.to_string(),
                detail: e.to_string(),
            }));
        }
    };
    let n = tx
        .prepare_cached(
            "UPDATE messages SET record = json_set(record, '$.verdicts', json(?2)),
                version = version + 1
             WHERE id = ?1 AND (lease_until IS NULL OR lease_until <= ?3)",
        )
        .and_then(|mut stmt| stmt.execute(params![id.to_string(), json, ms(*now)]))
        .map_err(db_err)?;
    if n == 1 {
        return Ok(Ok(()));
    }
    let exists = tx
        .query_row(
            "SELECT 1 FROM messages WHERE id = ?1",
            [id.to_string()],
            |_| Ok(()),
        )
        .optional()
        .map_err(db_err)?
        .is_some();
    Ok(Err(if exists {
        StoreError::Leased(*id)
    } else {
        StoreError::NotFound(*id)
    }))
}

/// A drain worker's write-back: only while `owner` holds the lease.
fn complete_item(
    tx: &rusqlite::Transaction<'_>,
    (rec, owner): &(Record, String),
) -> Result<Result<(), StoreError>, StoreError> {
    write_if(tx, rec, |lease_owner, _| {
        lease_owner.as_deref() == Some(owner.as_str())
    })
}

/// A stored health record. (The one-row `health` table of spools from before per-node
/// records is no longer read: such a spool's node starts from `unknown` once.)
fn health_from_json(json: &str) -> Result<HealthRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: "health".into(),
        detail: e.to_string(),
    })
}

/// A failed `COMMIT`: its frames may be in the WAL already (a failed fsync after they
/// were written), and the next open would replay them, so the write may still land.
/// Transient, so no caller takes it for a certain refusal.
fn commit_err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend {
        backend: "sqlite",
        detail: format!("commit failed, it may still land: {e}"),
        transient: true,
        source: Some(Box::new(e)),
    }
}

/// Tables the durability work added (the tombstones of deleted messages); made if
/// missing, so a spool from an earlier release opens. Kept apart from other migrations.
fn migrate_tombstones(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tombstones (
            id TEXT PRIMARY KEY,
            deleted_at INTEGER NOT NULL
        ) WITHOUT ROWID;",
    )
    .map_err(db_err)
}

fn db_err(e: rusqlite::Error) -> StoreError {
    let transient = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    StoreError::Backend {
        backend: "sqlite",
        detail: e.to_string(),
        transient,
        source: Some(Box::new(e)),
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

/// Columns selected by every record query, in this order.
const COLS: &str = "id, status, lease_owner, lease_until, record, version";

/// The query for one listing page. Each filter is answered by an index: the recipient by
/// `message_rcpts` (which then drives the walk, in list order), the subject by the
/// trigram table, the sender and the class by expression indexes, times by the list
/// order itself.
/// How a mailbox listing reads: a user with few messages (at most [`GATHER_MAX`]
/// recipient rows) from their recipient rows, sorted; one with many by walking the list
/// order and stopping at a full page (sorting ten thousand rows for a page of fifty is
/// what made the first page slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MailboxPlan {
    Gather,
    Walk,
}

/// Recipient rows up to which a mailbox is gathered and sorted.
const GATHER_MAX: i64 = 2000;

/// The condition on `message_rcpts AS r2` for a mailbox's addresses: each address, and
/// its tagged forms, `local+` <= rcpt < `local,` (`,` follows `+`) ending in `@domain`,
/// all answered by message_rcpts' key; minus the excluded addresses.
fn mailbox_rcpts(mb: &MailboxFilter, args: &mut Vec<rusqlite::types::Value>) -> String {
    use rusqlite::types::Value;
    let mut ors: Vec<&str> = Vec::new();
    for a in &mb.addresses {
        ors.push("r2.rcpt = ?");
        args.push(Value::Text(a.clone()));
        // An address with a `+` of its own has no tagged forms (the tag starts at the
        // first `+`, as `MailboxFilter::addressed` reads it).
        match a.rsplit_once('@') {
            Some((local, domain)) if !local.contains('+') => {
                ors.push("(r2.rcpt >= ? AND r2.rcpt < ? AND substr(r2.rcpt, ?) = ?)");
                args.push(Value::Text(format!("{local}+")));
                args.push(Value::Text(format!("{local},")));
                // substr() counts characters, not bytes.
                args.push(Value::Integer(-(domain.chars().count() as i64 + 1)));
                args.push(Value::Text(format!("@{domain}")));
            }
            _ => {}
        }
    }
    if ors.is_empty() {
        ors.push("0");
    }
    let mut clause = format!("({})", ors.join(" OR "));
    if !mb.excluded.is_empty() {
        for e in &mb.excluded {
            args.push(Value::Text(e.clone()));
        }
        clause.push_str(&format!(
            " AND r2.rcpt NOT IN ({})",
            vec!["?"; mb.excluded.len()].join(", ")
        ));
    }
    clause
}

/// Counts a mailbox's recipient rows, up to one past [`GATHER_MAX`].
fn mailbox_count_sql(mb: &MailboxFilter) -> (String, Vec<rusqlite::types::Value>) {
    let mut args = Vec::new();
    let clause = mailbox_rcpts(mb, &mut args);
    (
        format!(
            "SELECT count(*) FROM (SELECT 1 FROM message_rcpts AS r2 WHERE {clause} LIMIT {})",
            GATHER_MAX + 1
        ),
        args,
    )
}

fn list_sql(q: &ListQuery, plan: MailboxPlan) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut conds: Vec<&str> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut group = "";
    // With a recipient, `r` (message_rcpts) leads and carries the order columns.
    let (from, t) = match (&q.rcpt, &q.mailbox, plan) {
        (Some(rcpt), _, _) => {
            conds.push("r.rcpt = ?");
            args.push(Value::Text(rcpt.to_lowercase()));
            (
                "message_rcpts AS r CROSS JOIN messages AS m ON m.id = r.id",
                "r",
            )
        }
        (None, Some(_), MailboxPlan::Gather) => {
            // One row per message however many of its recipients are the user's.
            group = " GROUP BY m.id";
            (
                "message_rcpts AS r2 CROSS JOIN messages AS m ON m.id = r2.id",
                "m",
            )
        }
        (None, Some(_), MailboxPlan::Walk) => ("messages AS m INDEXED BY messages_order", "m"),
        (None, None, _) => ("messages AS m", "m"),
    };
    if let Some(st) = q.status {
        conds.push("m.status = ?");
        args.push(Value::Text(st.as_str().into()));
    }
    if let Some(class) = q.class {
        conds.push("(m.status = 'journal') = ?");
        args.push(Value::Integer(i64::from(class == Class::Journal)));
    }
    if let Some(from) = &q.from {
        conds.push("lower(json_extract(m.record, '$.mail_from')) = ?");
        let from = if from == "<>" { "" } else { from.as_str() };
        args.push(Value::Text(from.to_lowercase()));
    }
    if let Some(subject) = &q.subject {
        conds.push("m.rowid IN (SELECT rowid FROM message_subjects WHERE subject LIKE ?)");
        // `%` and `_` in the text act as LIKE's wildcards (an ESCAPE clause would keep
        // the trigram index from answering).
        args.push(Value::Text(format!("%{subject}%")));
    }
    if let Some(sender) = &q.sender {
        conds.push(
            "(instr(lower(json_extract(m.record, '$.mail_from')), ?) > 0 \
             OR instr(lower(json_extract(m.record, '$.summary.from')), ?) > 0)",
        );
        let sender = sender.to_ascii_lowercase();
        args.push(Value::Text(sender.clone()));
        args.push(Value::Text(sender));
    }
    let mailbox_cond;
    if let Some(mb) = &q.mailbox {
        let rcpts = mailbox_rcpts(mb, &mut args);
        let rcpts = if from.starts_with("message_rcpts AS r2") {
            rcpts
        } else {
            format!("m.id IN (SELECT r2.id FROM message_rcpts AS r2 WHERE {rcpts})")
        };
        mailbox_cond = format!(
            "{rcpts} AND (m.status IN ('held', 'paused') \
             OR (m.status IN ('delivered', 'journal') AND m.received_at >= ?))"
        );
        conds.push(&mailbox_cond);
        args.push(Value::Integer(ms(mb.kept_since)));
    }
    let (cmp, dir) = if q.newest_first {
        ("<", " DESC")
    } else {
        (">", "")
    };
    let after_cond = format!("({{t}}.received_at, {{t}}.id) {cmp} (?, ?)");
    let ranges = [
        (q.after.is_some(), after_cond.as_str()),
        (q.since.is_some(), "{t}.received_at >= ?"),
        (q.until.is_some(), "{t}.received_at < ?"),
    ];
    let mut range_conds: Vec<String> = Vec::new();
    for (on, cond) in ranges {
        if on {
            range_conds.push(cond.replace("{t}", t));
        }
    }
    if let Some(after) = q.after {
        args.push(Value::Integer(ms(after.received_at)));
        args.push(Value::Text(after.id.to_string()));
    }
    if let Some(t) = q.since {
        args.push(Value::Integer(ms(t)));
    }
    if let Some(t) = q.until {
        args.push(Value::Integer(ms(t)));
    }
    let all: Vec<String> = conds
        .iter()
        .map(|c| c.to_string())
        .chain(range_conds)
        .collect();
    let filter = if all.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", all.join(" AND "))
    };
    args.push(Value::Integer(q.limit.map_or(-1, |l| l as i64)));
    let cols = COLS
        .split(", ")
        .map(|c| format!("m.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    (
        format!(
            "SELECT {cols} FROM {from} {filter}{group} \
             ORDER BY {t}.received_at{dir}, {t}.id{dir} LIMIT ?"
        ),
        args,
    )
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record, StoreError>> {
    let id: String = row.get(0)?;
    let status: String = row.get(1)?;
    let owner: Option<String> = row.get(2)?;
    let until: Option<i64> = row.get(3)?;
    let json: String = row.get(4)?;
    let version: i64 = row.get(5)?;
    let corrupt = |detail: String| StoreError::Corrupt {
        id: id.clone(),
        detail,
    };
    Ok((|| {
        let mut rec: Record = serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
        rec.status = status.parse().map_err(corrupt)?;
        rec.version = u64::try_from(version).unwrap_or(0);
        rec.lease = match (owner, until) {
            (Some(owner), Some(until)) => Some(Lease {
                owner,
                until: from_ms(until),
            }),
            _ => None,
        };
        Ok(rec)
    })())
}

fn record_json(rec: &Record) -> Result<String, StoreError> {
    let mut r = rec.clone();
    r.lease = None;
    serde_json::to_string(&r).map_err(|e| StoreError::Corrupt {
        id: rec.id.to_string(),
        detail: e.to_string(),
    })
}

fn collect(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<Record>, StoreError> {
    let rows = stmt.query_map(params, row_to_record).map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(db_err)??);
    }
    Ok(out)
}

impl SqliteIndex {
    /// Open or create `<data_dir>/index.db`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        super::fs::private_dir(data_dir)?;
        let path = data_dir.join("index.db");
        let conn = Connection::open(&path).map_err(db_err)?;
        // SQLite gives its -wal and -shm files the database file's mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::io("chmod", &path, e))?;
        let mut index = Self::init(conn)?;
        let wal = Arc::new(Wal::open(data_dir.join("index.db-wal"))?);
        // Every caller waiting while a flush runs is served by the next one (a caller
        // returns only after a flush that started after its call): one `fdatasync` for
        // all the sessions committing at that moment, not one each in turn.
        index.wal = Some(Arc::new(Group::new(GROUP_MAX, move |calls: Vec<()>| {
            let wal = wal.clone();
            async move {
                let res = tokio::task::spawn_blocking(move || wal.sync())
                    .await
                    .unwrap_or_else(|e| Err(worker_failed(e.to_string())));
                calls
                    .iter()
                    .map(|()| match &res {
                        Ok(()) => Ok(()),
                        Err(e) => Err(StoreError::Backend {
                            backend: "sqlite",
                            detail: e.to_string(),
                            transient: e.is_transient(),
                            source: None,
                        }),
                    })
                    .collect::<Vec<_>>()
            }
        })));
        Ok(index)
    }

    /// Whether a record with this id exists, asked synchronously (start-up recovery,
    /// before anything else uses the index).
    pub fn contains(&self, id: MessageId) -> Result<bool, StoreError> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        c.query_row(
            "SELECT 1 FROM messages WHERE id = ?1",
            [id.to_string()],
            |_| Ok(()),
        )
        .optional()
        .map(|r| r.is_some())
        .map_err(db_err)
    }

    /// A private in-memory database (for tests of code above the index).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(db_err)?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        conn.execute_batch(events::SCHEMA).map_err(db_err)?;
        conn.execute_batch(mailboxes::SCHEMA).map_err(db_err)?;
        migrate_versions(&conn)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        if version < 2 {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SEARCH_BACKFILL} {SEARCH} PRAGMA user_version = 2; COMMIT;"
            ))
            .map_err(db_err)?;
        }
        migrate_tombstones(&conn)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(SqliteIndex {
            wal: None,
            inserts: Arc::new(grouped(conn.clone(), insert_item, Commit::Durable)),
            unsynced: Arc::new(grouped(conn.clone(), insert_item, Commit::Lazy)),
            completions: Arc::new(grouped(conn.clone(), complete_item, Commit::Durable)),
            verdicts: Arc::new(grouped(conn.clone(), verdict_item, Commit::Lazy)),
            // A renewal need not survive a crash: nobody is left to use the lease.
            renewals: Arc::new(grouped(conn.clone(), renew_item, Commit::Lazy)),
            // Run when a flush has just failed: one of its own would fail too.
            discards: Arc::new(grouped(conn.clone(), discard_item, Commit::Lazy)),
            conn,
        })
    }

    /// Run `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| worker_failed(e.to_string()))?
    }
}

/// Note in `tx` that `id` was deleted (see the module docs).
fn tombstone(tx: &rusqlite::Transaction<'_>, id: MessageId) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tombstones (id, deleted_at) VALUES (?1, ?2)
         ON CONFLICT(id) DO NOTHING",
        params![id.to_string(), ms(Utc::now())],
    )
    .map(|_| ())
    .map_err(db_err)
}

impl SqliteIndex {
    /// Ids of deleted messages whose files may still be on disk (a crash between the
    /// row's delete and the file's): the start deletes those files, then
    /// [`clear_tombstones`](Self::clear_tombstones).
    pub fn tombstones(&self) -> Result<std::collections::HashSet<MessageId>, StoreError> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = c.prepare("SELECT id FROM tombstones").map_err(db_err)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .filter_map(|r| r.ok()?.parse().ok())
            .collect();
        Ok(ids)
    }

    /// Held records received at most `window` before the newest held one: where a row
    /// whose message files a power cut lost can be (see
    /// [`Storage::serve_local`](crate::ports::Storage::serve_local)).
    pub fn newest_held(&self, window: chrono::Duration) -> Result<Vec<Record>, StoreError> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = c
            .prepare(&format!(
                "SELECT {COLS} FROM messages WHERE status = 'held' AND received_at >=
                 (SELECT MAX(received_at) FROM messages WHERE status = 'held') - ?1"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map([window.num_milliseconds()], row_to_record)
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(db_err)??);
        }
        Ok(out)
    }

    /// Forget tombstones whose files are durably gone.
    pub fn clear_tombstones(
        &self,
        ids: &std::collections::HashSet<MessageId>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = c.transaction().map_err(db_err)?;
        for id in ids {
            tx.execute("DELETE FROM tombstones WHERE id = ?1", [id.to_string()])
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Whether `PRAGMA quick_check` finds the database sound (`standby reindex` rebuilds
    /// one that is not).
    pub fn quick_check(&self) -> Result<Vec<String>, StoreError> {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = c.prepare("PRAGMA quick_check").map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(rows.into_iter().filter(|r| r != "ok").collect())
    }
}

impl SqliteIndex {
    /// Replace a record and drop its lease, in one transaction, if `allowed` says so
    /// given the current lease (owner, until); otherwise [`StoreError::Leased`].
    async fn write_back<F>(&self, rec: &Record, allowed: F) -> Result<(), StoreError>
    where
        F: FnOnce(&Option<String>, Option<i64>) -> bool + Send + 'static,
    {
        let rec = rec.clone();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            write_if(&tx, &rec, allowed)??;
            tx.commit().map_err(db_err)
        })
        .await
    }
}

/// Write `rec` over its row at the next version, without a lease (the caller checked
/// the version and the lease in the same transaction).
fn write_record(tx: &rusqlite::Transaction<'_>, rec: &Record) -> Result<usize, StoreError> {
    let next = Record {
        version: rec.version + 1,
        ..rec.clone()
    };
    let json = record_json(&next)?;
    tx.prepare_cached(
        "UPDATE messages SET status = ?2, next_attempt_at = ?3, lease_owner = NULL,
                lease_until = NULL, record = ?4, version = ?5 WHERE id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            rec.id.to_string(),
            rec.status.as_str(),
            ms(rec.next_attempt_at),
            json,
            stored_version(next.version),
        ])
    })
    .map_err(db_err)
}

/// Schema step of its own (kept apart from the other migrations so each can change
/// alone): the `version` column of compare-and-set writes. A spool made before it gets
/// the column in place, every existing record at version 0.
fn migrate_versions(conn: &Connection) -> Result<(), StoreError> {
    let has: bool = conn
        .query_row(
            "SELECT 1 FROM pragma_table_info('messages') WHERE name = 'version'",
            [],
            |_| Ok(()),
        )
        .optional()
        .map_err(db_err)?
        .is_some();
    if !has {
        conn.execute_batch("ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
            .map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl Index for SqliteIndex {
    async fn insert(&self, rec: &Record) -> Result<bool, StoreError> {
        self.inserts
            .submit(rec.clone())
            .await
            .unwrap_or_else(|| Err(worker_failed("insert worker stopped".into())))
    }

    async fn insert_unsynced(&self, rec: &Record) -> Result<bool, StoreError> {
        self.unsynced
            .submit(rec.clone())
            .await
            .unwrap_or_else(|| Err(worker_failed("insert worker stopped".into())))
    }

    /// `fdatasync(2)` of the WAL, outside SQLite's locks (writers go on meanwhile): an
    /// unsynced commit has written its frames to the WAL already, so once they are on
    /// disk the commit survives a power cut. Frames a checkpoint moved into the database
    /// file are durable anyway (with `synchronous = NORMAL` a checkpoint flushes the WAL
    /// before and the database after). See [`Wal`].
    async fn sync(&self) -> Result<(), StoreError> {
        let Some(wal) = self.wal.clone() else {
            return Ok(());
        };
        wal.submit(())
            .await
            .unwrap_or_else(|| Err(worker_failed("WAL flush worker stopped".into())))
    }

    async fn get(&self, id: MessageId) -> Result<Option<Record>, StoreError> {
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!("SELECT {COLS} FROM messages WHERE id = ?1"))
                .map_err(db_err)?;
            let row = stmt
                .query_row([id.to_string()], row_to_record)
                .optional()
                .map_err(db_err)?;
            row.transpose()
        })
        .await
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Record>, StoreError> {
        let q = q.clone();
        self.with(move |c| {
            let plan = match (&q.mailbox, &q.rcpt) {
                (Some(mb), None) => {
                    let (sql, args) = mailbox_count_sql(mb);
                    let n: i64 = c
                        .prepare_cached(&sql)
                        .and_then(|mut s| {
                            s.query_row(rusqlite::params_from_iter(args), |r| r.get(0))
                        })
                        .map_err(db_err)?;
                    if n > GATHER_MAX {
                        MailboxPlan::Walk
                    } else {
                        MailboxPlan::Gather
                    }
                }
                _ => MailboxPlan::Walk,
            };
            let (sql, args) = list_sql(&q, plan);
            let mut stmt = c.prepare_cached(&sql).map_err(db_err)?;
            collect(&mut stmt, rusqlite::params_from_iter(args))
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT status, COUNT(*) FROM messages GROUP BY status")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db_err)?;
            let mut counts = Counts::default();
            for row in rows {
                let (st, n) = row.map_err(db_err)?;
                if let Ok(st) = st.parse::<Status>() {
                    counts.add(st, n as u64);
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn oldest(&self, status: Status) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.with(move |c| {
            c.query_row(
                "SELECT received_at FROM messages WHERE status = ?1 ORDER BY received_at, id LIMIT 1",
                [status.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(from_ms))
            .map_err(db_err)
        })
        .await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Record>, StoreError> {
        let req = req.clone();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let now = ms(req.now);
            let mut recs = {
                let (sql, p): (String, [i64; 2]) = match req.received_before {
                    Some(before) => (
                        format!(
                            "SELECT {COLS} FROM messages WHERE status = '{}'
                             AND received_at < ?1
                             AND (lease_until IS NULL OR lease_until <= ?2)
                             ORDER BY received_at, id LIMIT {}",
                            req.status.as_str(),
                            req.limit
                        ),
                        [ms(before), ms(req.expired_by())],
                    ),
                    None => (
                        format!(
                            "SELECT {COLS} FROM messages WHERE status = '{}'
                             AND next_attempt_at <= ?1
                             AND (lease_until IS NULL OR lease_until <= ?2)
                             ORDER BY received_at, id LIMIT {}",
                            req.status.as_str(),
                            req.limit
                        ),
                        [now, ms(req.expired_by())],
                    ),
                };
                let mut stmt = tx.prepare_cached(&sql).map_err(db_err)?;
                collect(&mut stmt, p)?
            };
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE messages SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1",
                    )
                    .map_err(db_err)?;
                for rec in &mut recs {
                    stmt.execute(params![rec.id.to_string(), req.owner, ms(req.lease_until)])
                        .map_err(db_err)?;
                    rec.lease = Some(Lease {
                        owner: req.owner.clone(),
                        until: req.lease_until,
                    });
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(recs)
        })
        .await
    }

    async fn renew(
        &self,
        id: MessageId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.renewals
            .submit((id, owner.to_string(), until))
            .await
            .unwrap_or_else(|| Err(worker_failed("renewal worker stopped".into())))
    }

    async fn complete(&self, rec: &Record, owner: &str) -> Result<(), StoreError> {
        self.completions
            .submit((rec.clone(), owner.to_string()))
            .await
            .unwrap_or_else(|| Err(worker_failed("write-back worker stopped".into())))
    }

    async fn update(&self, rec: &Record, now: DateTime<Utc>) -> Result<(), StoreError> {
        let now = ms(now);
        self.write_back(rec, move |_, until| until.is_none_or(|u| u <= now))
            .await
    }

    async fn set_verdicts(
        &self,
        id: MessageId,
        verdicts: &Verdicts,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.verdicts
            .submit((id, verdicts.clone(), now))
            .await
            .unwrap_or_else(|| Err(worker_failed("verdict worker stopped".into())))
    }

    async fn delete(&self, rec: &Record, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let (id, version) = (rec.id, stored_version(rec.version));
        let now_ms = now.timestamp_millis();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            // The legal hold is checked in the delete's own condition: a hold placed
            // after the record was read is never ignored.
            let n = tx
                .execute(
                    "DELETE FROM messages WHERE id = ?1 AND version = ?2
                     AND json_extract(record, '$.legal_hold') IS NULL
                     AND (lease_until IS NULL OR lease_until <= ?3)",
                    params![id.to_string(), version, now_ms],
                )
                .map_err(db_err)?;
            let out = if n == 1 {
                // The tombstone goes in the same transaction: a crash before the file
                // is unlinked leaves a file the next start knows to delete.
                tombstone(&tx, id)?;
                Ok(true)
            } else {
                let cur: Option<(Option<String>, Option<i64>)> = tx
                    .query_row(
                        "SELECT json_extract(record, '$.legal_hold'), lease_until
                         FROM messages WHERE id = ?1",
                        [id.to_string()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(db_err)?;
                match cur {
                    None => Ok(false),
                    Some((Some(_), _)) => Err(StoreError::LegalHold(id)),
                    Some((_, Some(until))) if until > now_ms => Err(StoreError::Leased(id)),
                    Some(_) => Err(StoreError::Changed(id)),
                }
            };
            tx.commit().map_err(db_err)?;
            out
        })
        .await
    }

    async fn discard(&self, rec: &Record) -> Result<bool, StoreError> {
        self.discards
            .submit(rec.id)
            .await
            .unwrap_or_else(|| Err(worker_failed("discard worker stopped".into())))
    }

    async fn load_health(&self, node: &str) -> Result<Option<HealthRecord>, StoreError> {
        let node = node.to_string();
        self.with(move |c| {
            let json: Option<String> = c
                .query_row(
                    "SELECT record FROM node_health WHERE node = ?1",
                    [node],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            json.map(|j| health_from_json(&j)).transpose()
        })
        .await
    }

    async fn save_health(&self, h: &HealthRecord) -> Result<(), StoreError> {
        let mut next = h.clone();
        next.version = h.version + 1;
        let json = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt {
            id: format!("health of {}", h.node),
            detail: e.to_string(),
        })?;
        let (node, read_at) = (h.node.clone(), h.version);
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let stored: Option<String> = tx
                .query_row(
                    "SELECT record FROM node_health WHERE node = ?1",
                    [&node],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let version = stored
                .as_deref()
                .map(health_from_json)
                .transpose()?
                .map_or(0, |r| r.version);
            if version != read_at {
                return Err(StoreError::HealthChanged(node));
            }
            tx.execute(
                "INSERT INTO node_health (node, record) VALUES (?1, ?2)
                 ON CONFLICT(node) DO UPDATE SET record = excluded.record",
                [&node, &json],
            )
            .map_err(db_err)?;
            tx.commit().map_err(commit_err)
        })
        .await
    }

    async fn list_health(&self) -> Result<Vec<HealthRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT record FROM node_health ORDER BY node")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|j| health_from_json(&j.map_err(db_err)?))
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of one listing, one line per step.
    fn plan(index: &SqliteIndex, q: &ListQuery) -> Vec<String> {
        let (sql, args) = list_sql(q, MailboxPlan::Walk);
        let c = index.conn.lock().unwrap();
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Both ways of reading a mailbox (gathered and sorted, or walked in list order)
    /// give what the in-memory twin gives, page after page, newest first.
    #[tokio::test]
    async fn a_mailbox_reads_the_same_gathered_or_walked() {
        use crate::ports::Cursor;
        let index = SqliteIndex::open_in_memory().unwrap();
        let twin = crate::backend::MemIndex::default();
        let now = Utc::now();
        let to = [
            "alice@example.test",
            "Alice+x@example.test",
            "bob@example.test",
            "sales@example.test",
            "sales+eu@example.test",
        ];
        let statuses = [
            Status::Held,
            Status::Delivered,
            Status::Journal,
            Status::Failed,
            Status::Paused,
        ];
        for i in 0..120i64 {
            let at = now - chrono::Duration::hours(i * 13);
            let mut rcpts = vec![to[(i % 5) as usize].to_string()];
            if i % 7 == 0 {
                rcpts.push("sales@example.test".into());
            }
            let mut rec = Record::held(
                MessageId::new(at),
                "a@example.org".into(),
                rcpts,
                at,
                (1, "00".into()),
                crate::model::Summary::default(),
            );
            rec.status = statuses[(i % 5) as usize];
            index.insert(&rec).await.unwrap();
            crate::ports::Index::insert(&twin, &rec).await.unwrap();
        }
        let mb = MailboxFilter {
            addresses: vec!["alice@example.test".into(), "sales@example.test".into()],
            excluded: vec!["sales+eu@example.test".into()],
            kept_since: now - chrono::Duration::days(30),
        };
        let read = |plan: MailboxPlan, q: &ListQuery| {
            let (sql, args) = list_sql(q, plan);
            let c = index.conn.lock().unwrap();
            let mut stmt = c.prepare(&sql).unwrap();
            collect(&mut stmt, rusqlite::params_from_iter(args))
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        let mut q = ListQuery {
            mailbox: Some(mb),
            newest_first: true,
            limit: Some(7),
            ..ListQuery::default()
        };
        let mut pages = 0;
        loop {
            let want: Vec<MessageId> = twin.list(&q).await.unwrap().iter().map(|r| r.id).collect();
            assert_eq!(
                read(MailboxPlan::Gather, &q),
                want,
                "gathered, page {pages}"
            );
            assert_eq!(read(MailboxPlan::Walk, &q), want, "walked, page {pages}");
            if want.len() < 7 {
                break;
            }
            let last = index.get(*want.last().unwrap()).await.unwrap().unwrap();
            q.after = Some(Cursor::from(&last));
            pages += 1;
        }
        assert!(pages >= 3, "{pages}");
    }

    use crate::backend::one_held;

    #[tokio::test]
    async fn a_delete_leaves_a_tombstone_until_it_is_cleared() {
        let index = SqliteIndex::open_in_memory().unwrap();
        let now = Utc::now();
        let rec = one_held(&index, now).await;
        assert!(index.tombstones().unwrap().is_empty());
        // A delete the index refuses (a hold placed after the read) leaves no
        // tombstone: the next start must not unlink the file of a kept message.
        let mut held = index.get(rec.id).await.unwrap().unwrap();
        held.legal_hold = Some(crate::model::LegalHold {
            at: now,
            reason: "case 7".into(),
        });
        index.update(&held, now).await.unwrap();
        assert!(index.delete(&rec, Utc::now()).await.is_err());
        assert!(index.tombstones().unwrap().is_empty());
        let mut lifted = index.get(rec.id).await.unwrap().unwrap();
        lifted.legal_hold = None;
        index.update(&lifted, now).await.unwrap();
        let rec = index.get(rec.id).await.unwrap().unwrap();
        assert!(index.delete(&rec, Utc::now()).await.unwrap());
        let tombs = index.tombstones().unwrap();
        assert_eq!(tombs, [rec.id].into_iter().collect());
        index.clear_tombstones(&tombs).unwrap();
        assert!(index.tombstones().unwrap().is_empty());
    }

    /// A message that got 451 leaves no row, whatever was set on it meanwhile (a hold a
    /// retention rule set at receipt, a drain's lease, a newer version), and a tombstone
    /// for its file; discarding a row that is not there says so.
    #[tokio::test]
    async fn a_discard_removes_the_row_whatever_its_hold_lease_or_version() {
        let index = SqliteIndex::open_in_memory().unwrap();
        let now = Utc::now();
        let rec = one_held(&index, now).await;
        let mut held = index.get(rec.id).await.unwrap().unwrap();
        held.legal_hold = Some(crate::model::LegalHold {
            at: now,
            reason: "rule".into(),
        });
        index.update(&held, now).await.unwrap();
        let claimed = index
            .claim(&ClaimRequest {
                owner: "drain".into(),
                now,
                lease_until: now + chrono::Duration::minutes(10),
                limit: 1,
                status: Status::Held,
                received_before: None,
                skew: chrono::Duration::zero(),
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "leased by a drain");
        assert!(
            index.delete(&rec, now).await.is_err(),
            "a delete is refused"
        );
        assert!(index.discard(&rec).await.unwrap());
        assert_eq!(index.get(rec.id).await.unwrap(), None);
        assert_eq!(index.tombstones().unwrap(), [rec.id].into_iter().collect());
        assert!(!index.discard(&rec).await.unwrap());
    }

    #[test]
    fn every_filter_is_answered_by_an_index() {
        let index = SqliteIndex::open_in_memory().unwrap();
        let now = Utc::now();
        let cursor = crate::ports::Cursor {
            received_at: now,
            id: MessageId::new(now),
        };
        let cases: Vec<(&str, ListQuery)> = vec![
            (
                "status",
                ListQuery {
                    status: Some(Status::Held),
                    ..Default::default()
                },
            ),
            (
                "class",
                ListQuery {
                    class: Some(Class::Journal),
                    ..Default::default()
                },
            ),
            (
                "from",
                ListQuery {
                    from: Some("a@example.org".into()),
                    ..Default::default()
                },
            ),
            (
                "rcpt",
                ListQuery {
                    rcpt: Some("b@example.test".into()),
                    ..Default::default()
                },
            ),
            (
                "subject",
                ListQuery {
                    subject: Some("figures".into()),
                    ..Default::default()
                },
            ),
            (
                "since",
                ListQuery {
                    since: Some(now),
                    ..Default::default()
                },
            ),
            (
                "page",
                ListQuery {
                    after: Some(cursor),
                    ..Default::default()
                },
            ),
            (
                "rcpt and subject in a window",
                ListQuery {
                    rcpt: Some("b@example.test".into()),
                    subject: Some("figures".into()),
                    since: Some(now),
                    until: Some(now),
                    ..Default::default()
                },
            ),
        ];
        for (what, q) in cases {
            let steps = plan(&index, &q);
            assert!(
                steps.iter().all(|s| {
                    let table = s.strip_prefix("SCAN ").and_then(|t| t.split(' ').next());
                    !matches!(table, Some("m" | "r"))
                }),
                "{what}: a table scan in {steps:?}"
            );
            // The subject's matches come from the trigram index (the `L` is its LIKE) in
            // no order, so they alone are sorted; every other listing walks an index in
            // list order and sorts nothing.
            if q.subject.is_some() && q.rcpt.is_none() {
                assert!(
                    steps
                        .iter()
                        .any(|s| s.contains("message_subjects VIRTUAL TABLE INDEX")
                            && s.contains(":L")),
                    "{what}: the trigram index in {steps:?}"
                );
            } else {
                assert!(
                    steps.iter().all(|s| !s.contains("TEMP B-TREE")),
                    "{what}: a sort in {steps:?}"
                );
            }
        }
    }
}
