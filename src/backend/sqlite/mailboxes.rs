//! Each user's UIDs and flags in the spool's index database: a row per user in
//! `mailboxes` (UIDVALIDITY and the next UID) and a row per UID given in
//! `mailbox_uids`, whose unique `(user, id)` over rows not retired keeps a message to one
//! current UID. Assigning runs
//! in one immediate transaction, so sessions on the same spool never hand out a UID twice.

use async_trait::async_trait;
use rusqlite::OptionalExtension;

use super::{SqliteIndex, commit_err, db_err};
use crate::error::StoreError;
use crate::model::MessageId;
use crate::model::mailbox::{FlagChange, Flags, MailboxState, UidEntry};
use crate::ports::Mailboxes;

/// The tables, created with the rest of the schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mailboxes (
    user TEXT PRIMARY KEY,
    validity INTEGER NOT NULL,
    next_uid INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailbox_uids (
    user TEXT NOT NULL,
    uid INTEGER NOT NULL,
    id TEXT NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, uid)
) WITHOUT ROWID;
DROP INDEX IF EXISTS mailbox_uids_by_id;
CREATE UNIQUE INDEX IF NOT EXISTS mailbox_uids_current ON mailbox_uids (user, id)
    WHERE flags & 32 = 0;
";

/// A new mailbox's UIDVALIDITY: the time in seconds (RFC 3501 suggests a time), so a
/// mailbox made again after its state was lost gets a greater one and clients start over.
fn new_validity() -> u32 {
    let secs = chrono::Utc::now().timestamp();
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
}

fn read(tx: &rusqlite::Transaction<'_>, user: &str) -> Result<MailboxState, StoreError> {
    let head: Option<(i64, i64)> = tx
        .prepare_cached("SELECT validity, next_uid FROM mailboxes WHERE user = ?1")
        .and_then(|mut s| {
            s.query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db_err)?;
    let (validity, next_uid) = match head {
        Some(h) => h,
        None => {
            let v = i64::from(new_validity());
            tx.execute(
                "INSERT INTO mailboxes (user, validity, next_uid) VALUES (?1, ?2, 1)",
                rusqlite::params![user, v],
            )
            .map_err(db_err)?;
            (v, 1)
        }
    };
    let mut stmt = tx
        .prepare_cached("SELECT uid, id, flags FROM mailbox_uids WHERE user = ?1 ORDER BY uid")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([user], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(db_err)?;
    let mut entries = Vec::new();
    for row in rows {
        let (uid, id, flags) = row.map_err(db_err)?;
        let id: MessageId = id.parse().map_err(|_| StoreError::Corrupt {
            id: format!("mailbox of {}", crate::model::redact(user)),
            detail: format!("`{id}` is no message id"),
        })?;
        entries.push(UidEntry {
            uid: u32::try_from(uid).unwrap_or(u32::MAX),
            id,
            flags: Flags(u8::try_from(flags & 0xff).unwrap_or(0)),
        });
    }
    Ok(MailboxState {
        validity: u32::try_from(validity).unwrap_or(1),
        next_uid: u32::try_from(next_uid).unwrap_or(u32::MAX),
        entries,
    })
}

#[async_trait]
impl Mailboxes for SqliteIndex {
    async fn load(&self, user: &str) -> Result<MailboxState, StoreError> {
        let user = user.to_string();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let state = read(&tx, &user)?;
            tx.commit().map_err(commit_err)?;
            Ok(state)
        })
        .await
    }

    async fn assign(&self, user: &str, ids: &[MessageId]) -> Result<MailboxState, StoreError> {
        let (user, ids) = (user.to_string(), ids.to_vec());
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let before = read(&tx, &user)?;
            // What changes is the model's (MailboxState::add); here it is written: the
            // rows of messages that came back retired (hidden, kept so a stale session's
            // EXPUNGE of the old UID still reaches them: the unique index covers rows not
            // retired), then the new rows.
            let mut after = before.clone();
            after.add(&ids).map_err(|e| StoreError::Corrupt {
                id: format!("mailbox of {}", crate::model::redact(&user)),
                detail: e.to_string(),
            })?;
            if after.next_uid == before.next_uid {
                tx.commit().map_err(commit_err)?;
                return Ok(after);
            }
            {
                let mut retire = tx
                    .prepare_cached(
                        "UPDATE mailbox_uids SET flags = ?3 WHERE user = ?1 AND uid = ?2",
                    )
                    .map_err(db_err)?;
                for (old, new) in before.entries.iter().zip(&after.entries) {
                    if old.flags != new.flags {
                        retire
                            .execute(rusqlite::params![
                                user,
                                i64::from(new.uid),
                                i64::from(new.flags.0)
                            ])
                            .map_err(db_err)?;
                    }
                }
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO mailbox_uids (user, uid, id, flags) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(db_err)?;
                for e in &after.entries[before.entries.len()..] {
                    insert
                        .execute(rusqlite::params![
                            user,
                            i64::from(e.uid),
                            e.id.to_string(),
                            i64::from(e.flags.0)
                        ])
                        .map_err(db_err)?;
                }
            }
            tx.execute(
                "UPDATE mailboxes SET next_uid = ?2 WHERE user = ?1",
                rusqlite::params![user, i64::from(after.next_uid)],
            )
            .map_err(db_err)?;
            tx.commit().map_err(commit_err)?;
            Ok(after)
        })
        .await
    }

    async fn change_flags(&self, user: &str, changes: &[FlagChange]) -> Result<(), StoreError> {
        let (user, changes) = (user.to_string(), changes.to_vec());
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            {
                // Against the stored flags, in the statement: a change another session
                // made meanwhile to other flags stays.
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE mailbox_uids SET flags = (flags & ~?3) | ?4 \
                         WHERE user = ?1 AND uid = ?2",
                    )
                    .map_err(db_err)?;
                // Removing a message by a UID it has since left (it went and came back
                // meanwhile) removes it under its new one.
                let mut follow = tx
                    .prepare_cached(
                        "UPDATE mailbox_uids SET flags = flags | ?3 \
                         WHERE user = ?1 AND flags & 32 = 0 AND id = \
                         (SELECT id FROM mailbox_uids WHERE user = ?1 AND uid = ?2 AND flags & 32)",
                    )
                    .map_err(db_err)?;
                for ch in &changes {
                    let clear = ch.clear.0 & Flags::CLIENT.0;
                    stmt.execute(rusqlite::params![
                        user,
                        i64::from(ch.uid),
                        i64::from(clear),
                        i64::from(ch.set.0)
                    ])
                    .map_err(db_err)?;
                    if ch.set.has(Flags::HIDDEN) {
                        follow
                            .execute(rusqlite::params![
                                user,
                                i64::from(ch.uid),
                                i64::from(Flags::HIDDEN.0)
                            ])
                            .map_err(db_err)?;
                    }
                }
            }
            tx.commit().map_err(commit_err)
        })
        .await
    }
}
