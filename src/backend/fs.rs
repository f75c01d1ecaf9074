//! `FsBlobStore`: raw messages as files under `<data_dir>/messages/`.
//!
//! # Guarantees
//! A blob is written to `<data_dir>/tmp/<id>` (and its envelope, when the caller gives
//! one, to `tmp/<id>.env`); both files and `tmp/` itself are flushed to disk (so the
//! data and the two names in `tmp/` are durable), then the files are renamed to
//! `messages/<id>.env` and `messages/<id>.eml`; no reader sees a partial file. When
//! [`BlobWriter::commit`] returns, the complete file is on disk under one of its two
//! names. The rename itself is not fsynced: on ext4 and XFS a later journal commit (the
//! index insert's) does not make it durable for certain. What holds instead is that the
//! data and the `tmp/` name are flushed *before* the rename (so a rename that survives
//! a power cut never points at missing data, and one that does not leaves the file in
//! `tmp/`), and that [`FsBlobStore::recover`] finishes the rename at the next start for
//! every message the index knows; the other leftovers in `tmp/` were never acknowledged
//! and are removed.
//!
//! # Each file its own flush, all of them at once
//! A commit issues three flushes at once (tokio's blocking pool): an `fdatasync(2)` of
//! the message, one of its envelope, and an `fsync(2)` of `tmp/` (POSIX makes a new
//! file's name durable only through its directory; ext4, XFS and btrfs happen to commit
//! it with the file, others need not). The other sessions committing at that moment do
//! the same, and the file system folds the flushes waiting together into one journal
//! commit (ext4's jbd2, XFS's log force); each flush whose commit already happened costs
//! one device cache flush. The per-file flush is also what reports *that file's*
//! writeback error (its own error sequence, sampled when the file was opened): a file
//! whose flush failed fails its own commit (the listener answers 451 and nothing is
//! indexed). Earlier versions ran one `syncfs(2)` for all commits waiting, then the
//! per-file flushes; on ext4 (scripts/bench's loop-mounted file systems) the `syncfs`
//! alone took twice a file's `fdatasync` (it writes back every dirty inode of the file
//! system, the index's included, then commits), receiving ran 20-30 % slower, and FUSE
//! and network file systems never pass `syncfs` to their server anyway.
//!
//! # Deletes, orphans and tombstones
//! [`BlobStore::delete`] unlinks the message (and its envelope) and then fsyncs
//! `messages/`, so a deletion that returned survives a power cut. Callers delete the
//! index row first (the SQLite index leaves a tombstone in the same transaction): a crash
//! between the two leaves a tombstoned file, which the next start deletes
//! ([`FsBlobStore::sweep_orphans`]). A file in `messages/` with neither a row nor a
//! tombstone is an *orphan* (an index restored from an old copy, a row lost): it is
//! never deleted, only moved to `orphans/` (and audited by the caller), where `standby
//! reindex` finds it.
//!
//! # The envelope travels with the bytes
//! `messages/<id>.env` holds the message's envelope (JSON written by the ingest), made
//! durable in the same flush as the message: `standby reindex` rebuilds a lost or corrupt
//! index from the spool alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::error::StoreError;
use crate::model::MessageId;
use crate::ports::{BlobInfo, BlobReader, BlobStore, BlobWriter};
use chrono::{DateTime, Utc};

const WRITE_BUFFER: usize = 256 * 1024;
/// Read buffer of an opened message, for readers that ask for little at a time (IMAP,
/// export, the parsers); one asking for this much or more (the drain's SMTP client reads
/// 64 KiB) bypasses it. Small enough that opening a message (the reader zero-fills its
/// buffer) costs next to nothing and stays under glibc's mmap threshold (128 KiB).
const READ_BUFFER: usize = 64 * 1024;

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

/// What [`FsBlobStore::sweep_orphans`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orphans {
    /// Messages with neither an index row nor a tombstone, moved to `orphans/`.
    pub moved: Vec<MessageId>,
    /// Files of deleted (tombstoned) messages that a crash left behind, now deleted.
    pub deleted: usize,
}

/// The exclusive lock `standby serve` holds on its data directory (`serve.lock`, an
/// `flock(2)`), for as long as this value lives; the kernel drops it when the process
/// ends, however it ends.
#[derive(Debug)]
pub struct SpoolLock {
    _file: std::fs::File,
}

/// Lock `data_dir` for one `standby serve` (or `standby reindex`) at a time; creates
/// `data_dir` if it is missing, and touches nothing else in it.
///
/// # Errors
/// [`StoreError::Io`] naming the lock file: another process holds it (its pid, as it
/// wrote it in the file, is in the message), or the file cannot be opened.
pub fn lock_spool(data_dir: &Path) -> Result<SpoolLock, StoreError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if !data_dir.exists() {
        private_dir(data_dir)?;
    }
    let path = data_dir.join("serve.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::io("open", &path, e))?;
    if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() {
            "another process".to_string()
        } else {
            format!("another process (pid {holder})")
        };
        return Err(StoreError::io(
            "lock",
            &path,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{who} is using this data directory ({e}); only one `standby serve` \
                     may run on a spool: stop it first, or give this one another data_dir"
                ),
            ),
        ));
    }
    let pid = std::process::id().to_string();
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()));
    Ok(SpoolLock { _file: file })
}

/// fsync a directory, so the entries created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync", dir, e))
}

/// The message id a spool file is named after (`<id>`, `<id>.eml`, `<id>.env`).
fn file_id(name: &std::ffi::OsStr) -> Option<MessageId> {
    let name = name.to_str()?;
    let stem = name
        .strip_suffix(".eml")
        .or_else(|| name.strip_suffix(".env"))
        .unwrap_or(name);
    stem.parse().ok()
}

/// Message files in a spool directory.
#[derive(Clone)]
pub struct FsBlobStore {
    messages: PathBuf,
    tmp: PathBuf,
    orphans: PathBuf,
    /// `tmp/` itself, fsynced by each commit so the new files' names are durable there.
    tmp_dir: Arc<std::fs::File>,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore")
            .field("messages", &self.messages)
            .field("tmp", &self.tmp)
            .finish_non_exhaustive()
    }
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
        let tmp_dir = std::fs::File::open(&tmp).map_err(|e| StoreError::io("open", &tmp, e))?;
        Ok(FsBlobStore {
            tmp_dir: Arc::new(tmp_dir),
            orphans: data_dir.join("orphans"),
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
            let name = entry.file_name();
            let envelope = name.to_str().is_some_and(|n| n.ends_with(".env"));
            match file_id(&name) {
                Some(id) if indexed(id)? => {
                    let dest = if envelope {
                        self.envelope_path(id)
                    } else {
                        self.path(id)
                    };
                    std::fs::rename(&path, dest).map_err(|e| StoreError::io("rename", &path, e))?;
                    out.restored += usize::from(!envelope);
                }
                _ if remove && std::fs::remove_file(&path).is_ok() => {
                    out.removed += usize::from(!envelope);
                }
                _ => {}
            }
        }
        if out.restored > 0 {
            sync_dir(&self.messages)?;
        }
        Ok(out)
    }

    /// Path of a committed message file.
    pub fn path(&self, id: MessageId) -> PathBuf {
        self.messages.join(format!("{id}.eml"))
    }

    /// Path of a committed message's envelope (see the module docs).
    pub fn envelope_path(&self, id: MessageId) -> PathBuf {
        self.messages.join(format!("{id}.env"))
    }

    /// `<data_dir>/orphans/`: message files found without an index row.
    pub fn orphans_dir(&self) -> &Path {
        &self.orphans
    }

    /// At start, before accepting connections (see the module docs): delete the files of
    /// messages whose row was deleted (`tombstoned`), move those with no row (`indexed`
    /// false) to `orphans/`, never deleting them. Files modified after `settled` are left
    /// alone: an operator command (a drain queueing a DSN) may be between storing a
    /// message and indexing it.
    pub fn sweep_orphans(
        &self,
        indexed: impl Fn(MessageId) -> Result<bool, StoreError>,
        tombstoned: impl Fn(MessageId) -> bool,
        settled: std::time::SystemTime,
    ) -> Result<Orphans, StoreError> {
        let mut by_id: std::collections::BTreeMap<MessageId, Vec<(PathBuf, bool)>> =
            Default::default();
        for dir in [&self.messages, &self.orphans] {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("list", dir, e)),
            };
            for entry in entries.flatten() {
                if let Some(id) = file_id(&entry.file_name()) {
                    let in_messages = dir == &self.messages;
                    by_id
                        .entry(id)
                        .or_default()
                        .push((entry.path(), in_messages));
                }
            }
        }
        let mut out = Orphans::default();
        let (mut changed_messages, mut changed_orphans) = (false, false);
        for (id, files) in by_id {
            // A tombstone with a row again (an operator's `reindex` brought the message
            // back): the row wins, its files stay.
            if tombstoned(id) && !indexed(id)? {
                for (path, in_messages) in files {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            out.deleted +=
                                usize::from(path.extension() == Some(std::ffi::OsStr::new("eml")))
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StoreError::io("remove", &path, e)),
                    }
                    changed_messages |= in_messages;
                    changed_orphans |= !in_messages;
                }
                continue;
            }
            let files: Vec<PathBuf> = files
                .into_iter()
                .filter(|(_, in_messages)| *in_messages)
                .map(|(p, _)| p)
                .collect();
            if files.is_empty() || indexed(id)? {
                continue;
            }
            let settled_files = files.iter().all(|p| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t <= settled)
            });
            if !settled_files {
                continue;
            }
            private_dir(&self.orphans)?;
            for path in &files {
                let dest = self.orphans.join(path.file_name().unwrap_or_default());
                std::fs::rename(path, &dest).map_err(|e| StoreError::io("rename", path, e))?;
            }
            changed_messages = true;
            changed_orphans = true;
            out.moved.push(id);
        }
        if changed_orphans && self.orphans.exists() {
            sync_dir(&self.orphans)?;
        }
        if changed_messages {
            sync_dir(&self.messages)?;
        }
        Ok(out)
    }

    /// Every message in the spool, `messages/` then `orphans/`: (id, the message file,
    /// its envelope file's bytes if it has one, whether it is an orphan). For `standby
    /// reindex`.
    pub fn spooled(&self) -> Result<Vec<Spooled>, StoreError> {
        let mut out = Vec::new();
        for (dir, orphan) in [(&self.messages, false), (&self.orphans, true)] {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("list", dir, e)),
            };
            let mut found: Vec<Spooled> = entries
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name();
                    let id = name.to_str()?.strip_suffix(".eml")?.parse().ok()?;
                    let envelope = std::fs::read(dir.join(format!("{id}.env"))).ok();
                    Some(Spooled {
                        id,
                        path: entry.path(),
                        envelope,
                        orphan,
                    })
                })
                .collect();
            found.sort_by_key(|s| s.id);
            out.extend(found);
        }
        Ok(out)
    }

    /// Put an orphan back into `messages/` (its envelope with it), durably: `standby
    /// reindex` does this once the message has its row again.
    pub fn adopt(&self, id: MessageId) -> Result<(), StoreError> {
        for (from, to) in [
            (
                self.orphans.join(format!("{id}.env")),
                self.envelope_path(id),
            ),
            (self.orphans.join(format!("{id}.eml")), self.path(id)),
        ] {
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("rename", &from, e)),
            }
        }
        sync_dir(&self.messages)?;
        sync_dir(&self.orphans)
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

/// One message file found by [`FsBlobStore::spooled`].
#[derive(Debug, Clone)]
pub struct Spooled {
    pub id: MessageId,
    pub path: PathBuf,
    /// The envelope file's bytes (`None`: a message stored before envelopes were kept).
    pub envelope: Option<Vec<u8>>,
    /// Found in `orphans/`.
    pub orphan: bool,
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
            envelope: None,
            tmp_dir: self.tmp_dir.clone(),
        }))
    }

    async fn open(&self, key: &str) -> Result<BlobReader, StoreError> {
        let path = self.key_path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Box::new(tokio::io::BufReader::with_capacity(
                READ_BUFFER,
                f,
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::MissingBlob(key.to_string()))
            }
            Err(e) => Err(StoreError::io("open", path, e)),
        }
    }

    /// Unlink the message and its envelope, then fsync `messages/` so the deletion is
    /// durable when this returns (see the module docs for the order with the index).
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let Ok(path) = self.key_path(key) else {
            return Ok(());
        };
        let dir = self.messages.clone();
        tokio::task::spawn_blocking(move || {
            for p in [path.with_extension("env"), path] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", p, e)),
                }
            }
            sync_dir(&dir)
        })
        .await
        .map_err(|e| StoreError::io("remove", &self.messages, std::io::Error::other(e)))?
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
    /// Written beside the message at commit, flushed with it.
    envelope: Option<Vec<u8>>,
    tmp_dir: Arc<std::fs::File>,
}

/// Create `path` (0600, never over an existing file) holding `bytes`.
async fn write_new(path: &Path, bytes: &[u8]) -> Result<tokio::fs::File, StoreError> {
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| StoreError::io("create", path, e))?;
    f.write_all(bytes)
        .await
        .map_err(|e| StoreError::io("write", path, e))?;
    // tokio's write returns once the bytes are handed to a blocking thread; only `flush`
    // reports that write's error (`sync_data` would wait for it and drop the error).
    f.flush()
        .await
        .map_err(|e| StoreError::io("write", path, e))?;
    Ok(f)
}

#[async_trait]
impl BlobWriter for FsBlobWriter {
    async fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(buf)
            .await
            .map_err(|e| StoreError::io("write", &self.tmp, e))
    }

    fn set_envelope(&mut self, envelope: Vec<u8>) {
        self.envelope = Some(envelope);
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        let env_tmp = self.tmp.with_extension("env");
        let env_dest = self.dest.with_extension("env");
        let envelope = self.envelope.take();
        let result = async {
            self.file
                .flush()
                .await
                .map_err(|e| StoreError::io("write", &self.tmp, e))?;
            let sidecar = match &envelope {
                Some(env) => Some(write_new(&env_tmp, env).await?),
                None => None,
            };
            // Three flushes at once (see the module docs): the message's data, the
            // envelope's, and `tmp/`, where both were created: their names must survive
            // until the renames below are made durable by a later journal commit or
            // finished by recovery (POSIX promises a new file's name only with an fsync
            // of its directory).
            let message = async {
                self.file
                    .get_mut()
                    .sync_data()
                    .await
                    .map_err(|e| StoreError::io("fdatasync", &self.tmp, e))
            };
            let sidecar = async {
                match sidecar {
                    Some(f) => f
                        .sync_data()
                        .await
                        .map_err(|e| StoreError::io("fdatasync", &env_tmp, e)),
                    None => Ok(()),
                }
            };
            let names = async {
                let dir = self.tmp_dir.clone();
                tokio::task::spawn_blocking(move || dir.sync_all())
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map_err(|e| StoreError::io("fsync", self.tmp.parent().unwrap_or(&self.tmp), e))
            };
            tokio::try_join!(message, sidecar, names)?;
            if envelope.is_some() {
                tokio::fs::rename(&env_tmp, &env_dest)
                    .await
                    .map_err(|e| StoreError::io("rename", &env_tmp, e))?;
            }
            tokio::fs::rename(&self.tmp, &self.dest)
                .await
                .map_err(|e| StoreError::io("rename", &self.tmp, e))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            if envelope.is_some() {
                let _ = tokio::fs::remove_file(&env_tmp).await;
                let _ = tokio::fs::remove_file(&env_dest).await;
            }
        }
        result
    }

    async fn abort(self: Box<Self>) {
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_envelope_is_committed_beside_the_message_and_deleted_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::open(dir.path()).unwrap();
        let id = MessageId::new(Utc::now());
        let mut w = fs.create(id).await.unwrap();
        w.set_envelope(b"{\"envelope\":1}\n".to_vec());
        w.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(
            std::fs::read(fs.envelope_path(id)).unwrap(),
            b"{\"envelope\":1}\n"
        );
        assert!(fs.path(id).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        fs.delete(&id.to_string()).await.unwrap();
        assert!(!fs.path(id).exists() && !fs.envelope_path(id).exists());
    }

    #[test]
    fn a_second_lock_on_a_spool_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_spool(dir.path()).unwrap();
        let err = lock_spool(dir.path()).unwrap_err().to_string();
        assert!(err.contains("serve.lock"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        lock_spool(dir.path()).unwrap();
    }
}
