//! The continuity record and one-time marks in the spool's index database: one row in
//! `continuity` (its JSON carries the version a save is conditional on), and a row per
//! mark in `marks`, whose primary key makes setting a mark a single atomic insert.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;

use super::{SqliteIndex, commit_err, db_err, ms};
use crate::error::StoreError;
use crate::model::continuity::Continuity;
use crate::ports::EventStore;

/// The tables, created with the rest of the schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS continuity (
    k INTEGER PRIMARY KEY CHECK (k = 1),
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (
    key TEXT PRIMARY KEY,
    keep_until INTEGER NOT NULL
) WITHOUT ROWID;
";

fn decode(json: &str) -> Result<Continuity, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        id: "continuity".into(),
        detail: e.to_string(),
    })
}

#[async_trait]
impl EventStore for SqliteIndex {
    async fn load(&self) -> Result<Continuity, StoreError> {
        self.with(|c| {
            let json: Option<String> = c
                .query_row("SELECT record FROM continuity WHERE k = 1", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            Ok(json.map(|j| decode(&j)).transpose()?.unwrap_or_default())
        })
        .await
    }

    async fn save(&self, cont: &Continuity) -> Result<(), StoreError> {
        let mut next = cont.clone();
        next.version = cont.version + 1;
        let json = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt {
            id: "continuity".into(),
            detail: e.to_string(),
        })?;
        let read_at = cont.version;
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let stored: Option<String> = tx
                .query_row("SELECT record FROM continuity WHERE k = 1", [], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            let version = stored
                .as_deref()
                .map(decode)
                .transpose()?
                .map_or(0, |r| r.version);
            if version != read_at {
                return Err(StoreError::FileChanged("the continuity record".into()));
            }
            tx.execute(
                "INSERT INTO continuity (k, record) VALUES (1, ?1)
                 ON CONFLICT(k) DO UPDATE SET record = excluded.record",
                [&json],
            )
            .map_err(db_err)?;
            tx.commit().map_err(commit_err)
        })
        .await
    }

    async fn mark_once(&self, key: &str, keep_until: DateTime<Utc>) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.with(move |c| {
            let now = ms(Utc::now());
            // Marks past their time go first, so the table does not grow for ever.
            c.execute("DELETE FROM marks WHERE keep_until <= ?1", [now])
                .map_err(db_err)?;
            let n = c
                .execute(
                    "INSERT INTO marks (key, keep_until) VALUES (?1, ?2)
                     ON CONFLICT(key) DO NOTHING",
                    rusqlite::params![key, ms(keep_until)],
                )
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn marked(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.with(move |c| {
            let until: Option<i64> = c
                .query_row("SELECT keep_until FROM marks WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db_err)?;
            Ok(until.is_some_and(|u| u > ms(Utc::now())))
        })
        .await
    }

    async fn unmark(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with(move |c| {
            c.execute("DELETE FROM marks WHERE key = ?1", [key])
                .map(|_| ())
                .map_err(db_err)
        })
        .await
    }
}
