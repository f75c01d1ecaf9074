//! `FsBlobStore`: raw messages as files under `<data_dir>/messages/`.
//!
//! # Guarantees
//! A blob is written to `<data_dir>/tmp/<id>`, flushed to disk, then renamed to
//! `messages/<id>.eml`; no reader sees a partial file. When [`BlobWriter::commit`] returns,
//! the complete file is on disk under one of its two names: the rename itself becomes
//! durable with the next journal commit, which the index insert that follows forces (one
//! fsync instead of two). If the power fails before that, the file is still in `tmp/`, and
//! [`FsBlobStore::recover`] finishes the rename at the next start for every message the
//! index knows; the other leftovers in `tmp/` were never acknowledged and are removed.
//!
//! # Group commit
//! The data flush is shared by every commit waiting at the same moment ([`Group`]): one
//! `syncfs(2)` makes the data of all their files durable (elsewhere than Linux, each file
//! is fsynced). With ten sessions committing at once that is one flush for ten messages,
//! and each commit still returns only after a flush that started after its own writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncWriteExt, BufWriter};

use super::group::Group;
use crate::error::StoreError;
use crate::model::MessageId;
use crate::ports::{BlobInfo, BlobReader, BlobStore, BlobWriter};
use chrono::{DateTime, Utc};

const WRITE_BUFFER: usize = 256 * 1024;

/// A message file's [`BlobInfo`].
fn info(key: &str, meta: &std::fs::Metadata) -> BlobInfo {
    BlobInfo {
        key: key.to_string(),
        stored_at: meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_default(),
        size: meta.len(),
    }
}

/// Create `dir` if needed and make it accessible to its owner only.
pub(crate) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io("chmod", dir, e))
}

/// What [`FsBlobStore::recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Acknowledged messages whose rename the crash interrupted, now in `messages/`.
    pub restored: usize,
    /// Partial, never acknowledged files, deleted.
    pub removed: usize,
}

/// Message files in a spool directory.
#[derive(Clone)]
pub struct FsBlobStore {
    messages: PathBuf,
    tmp: PathBuf,
    flush: Arc<DataFlush>,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore")
            .field("messages", &self.messages)
            .field("tmp", &self.tmp)
            .finish_non_exhaustive()
    }
}

/// Most commits one flush serves.
const GROUP_MAX: usize = 256;

/// The data flush shared by the commits waiting at one moment (see the module docs);
/// takes a handle on each file.
type DataFlush = Group<std::fs::File, Result<(), String>>;

fn data_flush() -> DataFlush {
    Group::new(GROUP_MAX, |files: Vec<std::fs::File>| async move {
        let n = files.len();
        let res = tokio::task::spawn_blocking(move || sync_files(&files))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        vec![res.map_err(|e| e.to_string()); n]
    })
}

/// Make the data of `files` durable: one `syncfs` of their file system on Linux (they
/// all live in the spool's `tmp/`), else an fsync each.
fn sync_files(files: &[std::fs::File]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Some(first) = files.first() {
        return rustix::fs::syncfs(first).map_err(std::io::Error::from);
    }
    files.iter().try_for_each(std::fs::File::sync_all)
}

impl FsBlobStore {
    /// Open (creating if needed) the spool under `data_dir`. The spool holds other
    /// people's mail: its directories are made private (0700) and message files are
    /// created 0600, whatever the umask.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let messages = data_dir.join("messages");
        let tmp = data_dir.join("tmp");
        for dir in [data_dir, &messages, &tmp] {
            private_dir(dir)?;
        }
        Ok(FsBlobStore {
            flush: Arc::new(data_flush()),
            messages,
            tmp,
        })
    }

    /// Remove partial writes left by a crash. Only the receiving process may call this
    /// (at start, before it accepts connections). Returns how many were removed.
    pub fn remove_unfinished(&self) -> Result<usize, StoreError> {
        self.recover(|_| Ok(false)).map(|r| r.removed)
    }

    /// Clean up `tmp/` after a crash (see the module docs): finish the rename of every
    /// file whose message `indexed` says was acknowledged, remove the rest. Only the
    /// receiving process may call this, at start, before it accepts connections.
    pub fn recover(
        &self,
        indexed: impl Fn(MessageId) -> Result<bool, StoreError>,
    ) -> Result<Recovered, StoreError> {
        self.sweep(indexed, true)
    }

    /// Only finish interrupted renames of acknowledged messages, removing nothing: safe
    /// while `standby serve` runs (a file in `tmp/` is indexed only after a crash undid
    /// its rename), so every operator command on the spool does it when it opens it.
    pub fn restore(
        &self,
        indexed: impl Fn(MessageId) -> Result<bool, StoreError>,
    ) -> Result<Recovered, StoreError> {
        self.sweep(indexed, false)
    }

    fn sweep(
        &self,
        indexed: impl Fn(MessageId) -> Result<bool, StoreError>,
        remove: bool,
    ) -> Result<Recovered, StoreError> {
        let entries =
            std::fs::read_dir(&self.tmp).map_err(|e| StoreError::io("list", &self.tmp, e))?;
        let mut out = Recovered::default();
        for entry in entries.flatten() {
            let path = entry.path();
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<MessageId>().ok());
            match id {
                Some(id) if indexed(id)? => {
                    std::fs::rename(&path, self.path(id))
                        .map_err(|e| StoreError::io("rename", &path, e))?;
                    out.restored += 1;
                }
                _ if remove && std::fs::remove_file(&path).is_ok() => out.removed += 1,
                _ => {}
            }
        }
        if out.restored > 0 {
            std::fs::File::open(&self.messages)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io("fsync", &self.messages, e))?;
        }
        Ok(out)
    }

    /// Path of a committed message file.
    pub fn path(&self, id: MessageId) -> PathBuf {
        self.messages.join(format!("{id}.eml"))
    }

    /// Path of the blob named `key`; names are message ids here, so anything else (a
    /// path separator, `..`) is refused rather than joined to the directory.
    fn key_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        match key.parse::<MessageId>() {
            Ok(id) if id.to_string() == key => Ok(self.path(id)),
            _ => Err(StoreError::MissingBlob(key.to_string())),
        }
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn create(&self, id: MessageId) -> Result<Box<dyn BlobWriter>, StoreError> {
        let tmp = self.tmp.join(id.to_string());
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(|e| StoreError::io("create", &tmp, e))?;
        Ok(Box::new(FsBlobWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            tmp,
            dest: self.path(id),
            flush: self.flush.clone(),
        }))
    }

    async fn open(&self, key: &str) -> Result<BlobReader, StoreError> {
        let path = self.key_path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Box::new(tokio::io::BufReader::with_capacity(
                WRITE_BUFFER,
                f,
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::MissingBlob(key.to_string()))
            }
            Err(e) => Err(StoreError::io("open", path, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let Ok(path) = self.key_path(key) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove", path, e)),
        }
    }

    async fn stat(&self, key: &str) -> Result<BlobInfo, StoreError> {
        let path = self.key_path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(info(key, &meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::MissingBlob(key.to_string()))
            }
            Err(e) => Err(StoreError::io("stat", path, e)),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let dir = self.messages.clone();
        tokio::task::spawn_blocking(move || {
            let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))?;
            let mut out = Vec::new();
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".eml")) else {
                    continue;
                };
                let Ok(meta) = entry.metadata() else { continue };
                out.push(info(key, &meta));
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::io("list", &self.messages, std::io::Error::other(e)))?
    }
}

struct FsBlobWriter {
    file: BufWriter<tokio::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
    flush: Arc<DataFlush>,
}

#[async_trait]
impl BlobWriter for FsBlobWriter {
    async fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(buf)
            .await
            .map_err(|e| StoreError::io("write", &self.tmp, e))
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let flushed = |what: &'static str, path: &Path, r: Option<Result<(), String>>| {
            r.unwrap_or_else(|| Err("flush worker stopped".into()))
                .map_err(|e| StoreError::io(what, path, std::io::Error::other(e)))
        };
        let result = async {
            self.file
                .flush()
                .await
                .map_err(|e| StoreError::io("write", &self.tmp, e))?;
            let handle = self
                .file
                .get_ref()
                .try_clone()
                .await
                .map_err(|e| StoreError::io("fsync", &self.tmp, e))?
                .into_std()
                .await;
            flushed("fsync", &self.tmp, self.flush.submit(handle).await)?;
            tokio::fs::rename(&self.tmp, &self.dest)
                .await
                .map_err(|e| StoreError::io("rename", &self.tmp, e))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&self.tmp).await;
        }
        result
    }

    async fn abort(self: Box<Self>) {
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}
