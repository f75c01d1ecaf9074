//! `FsAuditLog`: the audit log of the local spool, `<data_dir>/audit.jsonl`, one JSON
//! object per line.
//!
//! Append-only by construction: the file is opened with `O_APPEND` and never rewritten,
//! each entry is one `write` of one whole line (so `standby serve` and an operator
//! command appending at once never interleave), and each append is fsynced before it
//! returns, so an audited deletion is never lost in a crash.
//!
//! A power cut mid-append can leave a torn last line (the start of an entry, no newline):
//! it is skipped with a warning naming it, and the next append starts on a new line, so
//! the log keeps working (the torn line stays, and is skipped again on every read). A
//! line that is not the start of an entry is reported with its line number, never
//! skipped: that is not a torn append.

use std::io::{Read, Write};
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
            id: entry
                .id
                .map(|i| i.to_string())
                .unwrap_or_else(|| entry.action.clone()),
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::OpenOptionsExt;
            let err = |e| StoreError::io("append to", &path, e);
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&path)
                .map_err(err)?;
            // A torn last line (power cut mid-append): start ours on a new line.
            if ends_torn(&f).map_err(err)? {
                line.insert(0, b'\n');
            }
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
            let mut text = String::new();
            std::io::BufReader::new(f)
                .read_to_string(&mut text)
                .map_err(|e| StoreError::io("read", &path, e))?;
            let mut out = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str(line) {
                    Ok(entry) => out.push(entry),
                    // Cut short: the start of an entry, its end missing.
                    Err(e) if e.is_eof() => {
                        tracing::warn!(
                            file = %path.display(),
                            line = n + 1,
                            error = %e,
                            "ignoring a torn last line (an append cut short by a crash)"
                        );
                    }
                    Err(e) => {
                        return Err(StoreError::Corrupt {
                            id: format!("{}:{}", path.display(), n + 1),
                            detail: e.to_string(),
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(worker_failed)?
    }
}

/// Whether the file's last byte is not a newline (a torn append); false when empty.
fn ends_torn(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    f.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

fn worker_failed(e: tokio::task::JoinError) -> StoreError {
    StoreError::Backend {
        backend: "audit",
        detail: format!("worker thread failed: {e}"),
        transient: true,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageId, Status};
    use chrono::Utc;

    fn entry(n: u8) -> AuditEntry {
        let now = Utc::now();
        AuditEntry {
            at: now,
            action: "delete".into(),
            id: Some(MessageId::new(now)),
            by: "retention".into(),
            reason: format!("rule {n}"),
            status: Some(Status::Delivered),
            received_at: Some(now),
        }
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = FsAuditLog::new(dir.path());
        let (a, b) = (entry(1), entry(2));
        log.append(&a).await.unwrap();
        // A power cut in the middle of the second append.
        let whole = serde_json::to_string(&b).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.jsonl"))
            .unwrap();
        f.write_all(&whole.as_bytes()[..whole.len() / 2]).unwrap();
        assert_eq!(log.entries().await.unwrap(), vec![a.clone()]);
        log.append(&b).await.unwrap();
        assert_eq!(log.entries().await.unwrap(), vec![a, b]);
    }

    #[tokio::test]
    async fn a_bad_line_before_the_last_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = FsAuditLog::new(dir.path());
        std::fs::write(dir.path().join("audit.jsonl"), "{not json\n").unwrap();
        log.append(&entry(1)).await.unwrap();
        let err = log.entries().await.unwrap_err().to_string();
        assert!(err.contains("audit.jsonl:1"), "{err}");
    }
}
