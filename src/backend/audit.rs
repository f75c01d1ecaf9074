//! `FsAuditLog`: the audit log of the local spool, `<data_dir>/audit.jsonl`, one JSON
//! object per line.
//!
//! Append-only by construction: the file is opened with `O_APPEND` and never rewritten,
//! each entry is one `write` of one whole line (so `standby serve` and an operator
//! command appending at once never interleave), and each append is fsynced before it
//! returns, so an audited deletion is never lost in a crash. A line that does not parse
//! (a torn write at a power cut) is reported with its line number, never skipped.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ports::{AuditEntry, AuditLog};

#[derive(Debug, Clone)]
pub struct FsAuditLog {
    path: PathBuf,
}

impl FsAuditLog {
    pub fn new(data_dir: &Path) -> Self {
        FsAuditLog {
            path: data_dir.join("audit.jsonl"),
        }
    }
}

#[async_trait]
impl AuditLog for FsAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(entry).map_err(|e| StoreError::Corrupt {
            id: entry.id.to_string(),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let err = |e| StoreError::io("append to", &path, e);
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(err)?;
            f.write_all(&line).map_err(err)?;
            f.sync_data().map_err(err)
        })
        .await
        .map_err(worker_failed)?
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::io("read", &path, e)),
            };
            let mut out = Vec::new();
            for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                let line = line.map_err(|e| StoreError::io("read", &path, e))?;
                if line.trim().is_empty() {
                    continue;
                }
                out.push(
                    serde_json::from_str(&line).map_err(|e| StoreError::Corrupt {
                        id: format!("{}:{}", path.display(), n + 1),
                        detail: e.to_string(),
                    })?,
                );
            }
            Ok(out)
        })
        .await
        .map_err(worker_failed)?
    }
}

fn worker_failed(e: tokio::task::JoinError) -> StoreError {
    StoreError::Backend {
        backend: "audit",
        detail: format!("worker thread failed: {e}"),
        transient: true,
        source: None,
    }
}
