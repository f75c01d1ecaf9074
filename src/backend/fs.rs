//! `FsBlobStore`: raw messages as files under `<data_dir>/messages/`.
//!
//! # Guarantees
//! The receive path stages a message: at the final dot the rest of its bytes, its
//! envelope (the ingest's JSON, with the bytes' size and SHA-256) and a footer are
//! written to `<data_dir>/tmp/<id>.spool` (the layout: [`super::spool_file`]), by one
//! blocking call for a message under the 256 KiB write buffer ([`BlobWriter::stage`]);
//! readers find it there at once (they look in `messages/`, then in `tmp/`, then in
//! `messages/` again, as a publish may move it between two looks). [`BlobWriter::commit`]
//! then flushes the file and `tmp/` itself (so the bytes, the envelope and the name are
//! durable), while the caller flushes the index row. The message stays in `tmp/` until
//! the publisher ([`crate::publish`], through [`BlobStore::publish`]) renames it to
//! `messages/<id>.spool`, so a file in `messages/` always has a durable row. A commit
//! that was not staged (a DSN the drain stores) renames its file into `messages/` itself,
//! after its flush and before the caller writes the row. The renames are not fsynced. At
//! the next start, [`FsBlobStore::recover`] hands back every message file left in `tmp/`
//! with a row or an envelope, for the caller to check against each other
//! (`crate::publish::check_unpublished`), and removes the other leftovers (partial
//! writes, never acknowledged). In `tmp/`, a file without its footer is a write in
//! progress or a partial one: readers do not see it.
//!
//! # One flush per message
//! A commit flushes the message's file (`fdatasync(2)`) and, at the same time, `tmp/`
//! (`fsync(2)`: POSIX makes a new file's name durable only through its directory; one
//! flush of it for all the commits waiting, see [`TmpFlush`]). The other sessions
//! committing at that moment do the same, and the file system folds the flushes waiting
//! together into one journal commit (ext4's jbd2, XFS's log force). The per-file flush is
//! also what reports *that file's* writeback error (its own error sequence, sampled when
//! the file was opened): a file whose flush failed fails its own commit (the listener
//! answers 451 and the row is removed). Earlier versions ran one `syncfs(2)` for all
//! commits waiting, then the per-file flushes; on ext4 (scripts/bench's loop-mounted file
//! systems) the `syncfs` alone took twice a file's `fdatasync` (it writes back every dirty
//! inode of the file system, the index's included, then commits), and FUSE and network
//! file systems never pass `syncfs` to their server anyway. Earlier still, the envelope
//! had a file of its own, flushed beside the message's: a second journal commit to wait
//! for.
//!
//! # Deletes, orphans and tombstones
//! [`BlobStore::delete`] unlinks the message's file and then fsyncs `messages/`, so a
//! deletion that returned survives a power cut. Callers delete the index row first (the
//! SQLite index leaves a tombstone in the same transaction): a crash between the two
//! leaves a tombstoned file, which the next start deletes ([`FsBlobStore::sweep_orphans`]).
//! A file in `messages/` with neither a row nor a tombstone is an *orphan* (an index
//! restored from an old copy, a row lost): it is never deleted, only moved to `orphans/`
//! (and audited by the caller), where `standby reindex` finds it.
//!
//! # The envelope travels with the bytes
//! Each `<id>.spool` carries the message's envelope, made durable by the same flush:
//! `standby reindex` rebuilds a lost or corrupt index from the spool alone, and a start
//! after a power cut indexes again what lost its row.
//!
//! # Spools of earlier releases
//! Files an earlier release wrote keep their names and are read as they are: the raw
//! message as `messages/<id>.eml` (in `tmp/`: `<id>`), its envelope, if that release kept
//! one, in `<id>.env` beside it. Every reader, the recovery at start, the sweep, deletes
//! and `standby reindex` handle both layouts; nothing is rewritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::group::Group;
use super::spool_file;
use crate::error::StoreError;
use crate::model::MessageId;
use crate::ports::{BlobInfo, BlobReader, BlobStore, BlobWriter};
use chrono::{DateTime, Utc};

const WRITE_BUFFER: usize = 256 * 1024;
/// Largest message [`BlobStore::open`] reads whole at once (see there).
const WHOLE_READ: u64 = 256 * 1024;
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

/// What [`FsBlobStore::recover`] did and found.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Partial, never acknowledged files, deleted.
    pub removed: usize,
    /// Message files a crash left in `tmp/` with a row or an envelope (the envelope's
    /// bytes when there is one), still there: the caller checks each.
    pub unpublished: Vec<Spooled>,
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

/// A descriptor flushed for every commit, whose first failed flush fails every later
/// one: Linux reports a writeback error once per descriptor, so on a descriptor shared by
/// all sessions the commit after the one that saw an error would see none. A spool whose
/// directory cannot be flushed answers 451 until `standby serve` restarts. Flushes take
/// turns: of two at once, one could return the error and the other success although it
/// started before the error was seen.
pub(crate) struct Sticky {
    file: std::fs::File,
    failed: std::sync::atomic::AtomicBool,
    turn: std::sync::Mutex<()>,
}

impl Sticky {
    pub(crate) fn new(file: std::fs::File) -> Self {
        Sticky {
            file,
            failed: std::sync::atomic::AtomicBool::new(false),
            turn: std::sync::Mutex::new(()),
        }
    }

    /// `fsync(2)`, or the error a flush of this descriptor met before.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "an earlier flush of this file failed (restart `standby serve` once the disk is sound)",
            ));
        }
        self.file
            .sync_all()
            .inspect_err(|_| self.failed.store(true, Ordering::SeqCst))
    }
}

/// The message id a spool file is named after (`<id>.spool`; from earlier releases
/// `<id>`, `<id>.eml`, `<id>.env`).
fn file_id(name: &std::ffi::OsStr) -> Option<MessageId> {
    let name = name.to_str()?;
    let stem = name
        .strip_suffix(SPOOL)
        .or_else(|| name.strip_suffix(".eml"))
        .or_else(|| name.strip_suffix(".env"))
        .unwrap_or(name);
    stem.parse().ok()
}

/// `.spool`: the suffix of a file in this release's layout ([`spool_file`]).
const SPOOL: &str = ".spool";

/// How a message file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `<id>.spool`: message, envelope, footer ([`spool_file`]).
    Spool,
    /// An earlier release's raw message (`<id>.eml`; `<id>` in `tmp/`).
    Raw,
}

/// Where a message file can be, in the order to look, with its layout and whether it is
/// in `tmp/` (there a file without its footer is not there yet).
type Place = (PathBuf, Form, bool);

/// The size of the message in the file at `path` and its modification time.
fn message_info(key: &str, path: &Path, form: Form) -> std::io::Result<BlobInfo> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut out = info(key, &meta);
    if form == Form::Spool {
        out.size = spool_file::read_layout(&file, meta.len())?.message;
    }
    Ok(out)
}

/// Message files in a spool directory.
#[derive(Clone)]
pub struct FsBlobStore {
    messages: PathBuf,
    tmp: PathBuf,
    orphans: PathBuf,
    /// `tmp/` itself, fsynced for the commits (through `tmp_flush`) so the new files'
    /// names are durable there, and by deletes of files in it.
    tmp_dir: Arc<Sticky>,
    /// The commits' flushes of `tmp/`, grouped: see [`TmpFlush`].
    tmp_flush: Arc<TmpFlush>,
    /// Held while publishing and while deleting, so a delete never races a rename.
    publishing: Arc<std::sync::Mutex<()>>,
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
        let tmp_dir = Arc::new(Sticky::new(tmp_dir));
        Ok(FsBlobStore {
            tmp_flush: Arc::new(tmp_flush(tmp_dir.clone())),
            tmp_dir,
            publishing: Arc::default(),
            orphans: data_dir.join("orphans"),
            messages,
            tmp,
        })
    }

    /// Clean up `tmp/` after a crash (see the module docs): hand back, as
    /// [`Recovered::unpublished`], every message file that has a row (`indexed`) or an
    /// envelope, for the caller to check (see `crate::publish::check_unpublished`);
    /// remove the rest (partial writes, envelopes without their message, files of
    /// messages deleted since, `tombstoned`). Only the receiving process may call this,
    /// at start, before it accepts connections.
    ///
    /// # Errors
    /// Listing, removing, or reading an envelope failed: the start stops.
    pub fn recover(
        &self,
        indexed: impl Fn(MessageId) -> Result<bool, StoreError>,
        tombstoned: impl Fn(MessageId) -> bool,
    ) -> Result<Recovered, StoreError> {
        let entries =
            std::fs::read_dir(&self.tmp).map_err(|e| StoreError::io("list", &self.tmp, e))?;
        // Per id: its files (message, envelope sidecar), as found.
        let mut by_id: std::collections::BTreeMap<MessageId, Vec<PathBuf>> = Default::default();
        for entry in entries.flatten() {
            match file_id(&entry.file_name()) {
                Some(id) => by_id.entry(id).or_default().push(entry.path()),
                None => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let mut out = Recovered::default();
        let gone = |r: std::io::Result<()>, p: &Path, op: &'static str| match r {
            // Another process (a `standby drain` storing a DSN) moved it meanwhile.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(op, p, e)),
            _ => Ok(()),
        };
        let read = |p: &Path, what: std::io::Result<Vec<u8>>| match what {
            Ok(b) => Ok(Some(b)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(StoreError::io("read", p, e)),
        };
        for (id, files) in by_id {
            let spool = self.unsettled(id);
            let raw = self.tmp.join(id.to_string());
            let sidecar = raw.with_extension("env");
            // The message's file and its envelope, in whichever layout it has (an
            // earlier release's, when a crash of it left files here).
            let (message, envelope) = if files.contains(&spool) {
                let env = read(&spool, spool_file::read_envelope(&spool))?;
                (Some(spool.clone()), env.filter(|e| !e.is_empty()))
            } else if files.contains(&sidecar) {
                let env = read(&sidecar, std::fs::read(&sidecar))?;
                (files.contains(&raw).then(|| raw.clone()), env)
            } else {
                (files.contains(&raw).then(|| raw.clone()), None)
            };
            let indexed = indexed(id)?;
            match message {
                Some(path) if indexed || (envelope.is_some() && !tombstoned(id)) => {
                    // Checked by the caller: its row against its bytes, or its envelope
                    // against its bytes when it has no row.
                    out.unpublished.push(Spooled {
                        id,
                        envelope,
                        path,
                        orphan: false,
                    });
                }
                message => {
                    for p in &files {
                        gone(std::fs::remove_file(p), p, "remove")?;
                    }
                    out.removed += usize::from(message.is_some());
                }
            }
        }
        if out.removed > 0 {
            sync_dir(&self.tmp)?;
        }
        Ok(out)
    }

    /// Whether the message file of `id` is there, published or not.
    pub fn has(&self, id: MessageId) -> bool {
        self.places(id).iter().any(|(p, _, _)| p.exists())
    }

    /// Where the message file of `id` can be, in the order to look: `messages/`, `tmp/`
    /// (not published yet), `messages/` again (published between the two looks); then
    /// the same for a file an earlier release wrote.
    fn places(&self, id: MessageId) -> [Place; 6] {
        let raw = self.messages.join(format!("{id}.eml"));
        [
            (self.path(id), Form::Spool, false),
            (self.unsettled(id), Form::Spool, true),
            (self.path(id), Form::Spool, false),
            (raw.clone(), Form::Raw, false),
            (self.tmp.join(id.to_string()), Form::Raw, true),
            (raw, Form::Raw, false),
        ]
    }

    /// Path of a committed message's file (`messages/<id>.spool`, see the module docs;
    /// one an earlier release wrote is `messages/<id>.eml`).
    pub fn path(&self, id: MessageId) -> PathBuf {
        self.messages.join(format!("{id}{SPOOL}"))
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
                            out.deleted += usize::from(
                                path.extension()
                                    .is_some_and(|x| x == "eml" || x == spool_file::EXT),
                            )
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
    /// its envelope's bytes if it has one, whether it is an orphan). For `standby
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
                    let name = name.to_str()?;
                    let (id, envelope) = if let Some(id) = name.strip_suffix(SPOOL) {
                        let id: MessageId = id.parse().ok()?;
                        let envelope = spool_file::read_envelope(&entry.path()).ok();
                        (id, envelope.filter(|e| !e.is_empty()))
                    } else {
                        let id: MessageId = name.strip_suffix(".eml")?.parse().ok()?;
                        (id, std::fs::read(dir.join(format!("{id}.env"))).ok())
                    };
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
        for name in [
            format!("{id}{SPOOL}"),
            format!("{id}.env"),
            format!("{id}.eml"),
        ] {
            let from = self.orphans.join(&name);
            match std::fs::rename(&from, self.messages.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("rename", &from, e)),
            }
        }
        sync_dir(&self.messages)?;
        sync_dir(&self.orphans)
    }

    /// The message id a key names; names are message ids here, so anything else (a
    /// path separator, `..`) is refused rather than joined to a directory.
    fn key_id(&self, key: &str) -> Result<MessageId, StoreError> {
        match key.parse::<MessageId>() {
            Ok(id) if id.to_string() == key => Ok(id),
            _ => Err(StoreError::MissingBlob(key.to_string())),
        }
    }

    /// Where a committed message waits until its index row is durable and it is
    /// published (see the module docs).
    fn unsettled(&self, id: MessageId) -> PathBuf {
        self.tmp.join(format!("{id}{SPOOL}"))
    }

    /// `op` on the message file, in `messages/` or, not published yet, in `tmp/`; then in
    /// `messages/` again, as the settling rename may have moved it between the two looks
    /// (and the same for an earlier release's file). In `tmp/`, a file that is not whole
    /// yet (`op` fails with [`std::io::ErrorKind::InvalidData`]) is not there.
    async fn find<T: Send + 'static>(
        &self,
        key: &str,
        id: MessageId,
        op: fn(&str, &Path, Form) -> std::io::Result<T>,
        what: &'static str,
    ) -> Result<T, StoreError> {
        let places = self.places(id);
        let key = key.to_string();
        blocking(what, &self.messages, move || {
            for (p, form, in_tmp) in &places {
                match op(&key, p, *form) {
                    Ok(v) => return Ok(v),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) if *in_tmp && e.kind() == std::io::ErrorKind::InvalidData => {}
                    Err(e) => return Err(StoreError::io(what, p, e)),
                }
            }
            Err(StoreError::MissingBlob(key))
        })
        .await
    }
}

/// One message file found by [`FsBlobStore::spooled`] or [`FsBlobStore::recover`].
#[derive(Debug, Clone)]
pub struct Spooled {
    pub id: MessageId,
    pub path: PathBuf,
    /// The envelope's bytes (`None`: a message stored before envelopes were kept, a DSN
    /// the drain queued, or a file that is not whole).
    pub envelope: Option<Vec<u8>>,
    /// Found in `orphans/`.
    pub orphan: bool,
}

impl Spooled {
    /// The message's bytes, as received (without the envelope a `.spool` file carries).
    ///
    /// # Errors
    /// Reading failed, or the `.spool` file is not whole.
    pub fn message(&self) -> Result<Vec<u8>, StoreError> {
        let mut bytes =
            std::fs::read(&self.path).map_err(|e| StoreError::io("read", &self.path, e))?;
        if self.path.extension().is_some_and(|x| x == spool_file::EXT) {
            spool_file::split(&mut bytes).map_err(|e| StoreError::io("read", &self.path, e))?;
        }
        Ok(bytes)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    /// Nothing touches the disk yet: a message smaller than the write buffer is
    /// created, written and flushed by one blocking call at commit.
    async fn create(&self, id: MessageId) -> Result<Box<dyn BlobWriter>, StoreError> {
        Ok(Box::new(FsBlobWriter {
            buf: Vec::with_capacity(16 * 1024),
            file: None,
            written: 0,
            tmp: self.unsettled(id),
            envelope: None,
            sealed: false,
            failed: false,
            staged: false,
            dest: self.path(id),
            made: false,
            tmp_flush: self.tmp_flush.clone(),
        }))
    }

    /// A message file up to [`WHOLE_READ`] is read whole by the call that opens it: each
    /// read of a `tokio::fs::File` is a hand-over to the blocking pool and back (a 100 KB
    /// message took four, where the drain spends most of its CPU switching threads), and
    /// the files never change once written. A larger one is read as it is consumed, up to
    /// the end of the message (its footer says where).
    async fn open(&self, key: &str) -> Result<BlobReader, StoreError> {
        use tokio::io::AsyncReadExt;
        let id = self.key_id(key)?;
        let opened = self
            .find(
                key,
                id,
                |_, p, form| {
                    use std::io::Read;
                    let mut f = std::fs::File::open(p)?;
                    let len = f.metadata()?.len();
                    if len > WHOLE_READ {
                        let message = match form {
                            Form::Spool => spool_file::read_layout(&f, len)?.message,
                            Form::Raw => len,
                        };
                        return Ok(Err((f, message)));
                    }
                    let mut bytes = Vec::with_capacity(len as usize + 1);
                    f.read_to_end(&mut bytes)?;
                    if form == Form::Spool {
                        spool_file::split(&mut bytes)?;
                    }
                    Ok(Ok(bytes))
                },
                "open",
            )
            .await?;
        Ok(match opened {
            Ok(bytes) => Box::new(std::io::Cursor::new(bytes)),
            Err((f, message)) => Box::new(
                tokio::io::BufReader::with_capacity(READ_BUFFER, tokio::fs::File::from_std(f))
                    .take(message),
            ),
        })
    }

    /// Unlink the message's file (and an earlier release's envelope sidecar), wherever
    /// it is (`messages/`, or `tmp/` before it is published), then fsync the directories
    /// so the deletion is durable when this returns (see the module docs for the order
    /// with the index).
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let Ok(id) = self.key_id(key) else {
            return Ok(());
        };
        let store = self.clone();
        blocking("remove", &self.messages, move || {
            let _publishing = store.publishing.lock().unwrap_or_else(|p| p.into_inner());
            // `tmp/` first: files only ever move from there to `messages/`, so another
            // process publishing meanwhile cannot make this miss one.
            let raw = store.tmp.join(id.to_string());
            let mut in_tmp = false;
            for (p, tmp) in [
                (store.unsettled(id), true),
                (raw.with_extension("env"), true),
                (raw, true),
                (store.path(id), false),
                (store.messages.join(format!("{id}.env")), false),
                (store.messages.join(format!("{id}.eml")), false),
            ] {
                match std::fs::remove_file(&p) {
                    Ok(()) => in_tmp |= tmp,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io("remove", p, e)),
                }
            }
            if in_tmp {
                store
                    .tmp_dir
                    .sync()
                    .map_err(|e| StoreError::io("fsync", &store.tmp, e))?;
            }
            sync_dir(&store.messages)
        })
        .await
    }

    async fn stat(&self, key: &str) -> Result<BlobInfo, StoreError> {
        let id = self.key_id(key)?;
        self.find(key, id, message_info, "stat").await
    }

    /// Move messages whose rows are durable from `tmp/` to `messages/` (see the module
    /// docs). The renames are not fsynced: a start-up recovery finishes any a power cut
    /// undid, as the rows are there.
    async fn publish(&self, keys: Vec<String>) -> Result<(), StoreError> {
        let store = self.clone();
        blocking("rename", &self.tmp, move || {
            let _publishing = store.publishing.lock().unwrap_or_else(|p| p.into_inner());
            let rename = |from: &Path, to: &Path| match std::fs::rename(from, to) {
                Ok(()) => Ok(true),
                // Deleted meanwhile (or in the other layout).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(StoreError::io("rename", from, e)),
            };
            for key in keys {
                let Ok(id) = store.key_id(&key) else { continue };
                if rename(&store.unsettled(id), &store.path(id))? {
                    continue;
                }
                // A message an earlier release left in `tmp/` (its start-up recovery).
                let raw = store.tmp.join(id.to_string());
                rename(
                    &raw.with_extension("env"),
                    &store.messages.join(format!("{id}.env")),
                )?;
                rename(&raw, &store.messages.join(format!("{id}.eml")))?;
            }
            Ok(())
        })
        .await
    }

    /// Published messages and committed ones waiting in `tmp/` (whole files: a message
    /// file alone there, or one without its footer, may be a partial write).
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let (messages, tmp) = (self.messages.clone(), self.tmp.clone());
        blocking("list", &self.messages, move || {
            // `tmp/` first: a message published between the two listings is then seen
            // twice (kept once), never missed.
            let mut out: Vec<BlobInfo> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (dir, published) in [(&tmp, false), (&messages, true)] {
                let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let (key, form) = match name.strip_suffix(SPOOL) {
                        Some(key) => (key, Form::Spool),
                        None if published => match name.strip_suffix(".eml") {
                            Some(key) => (key, Form::Raw),
                            None => continue,
                        },
                        // An earlier release's message in `tmp/`: committed if its
                        // envelope is there.
                        None if !name.ends_with(".env")
                            && dir.join(format!("{name}.env")).exists() =>
                        {
                            (name, Form::Raw)
                        }
                        None => continue,
                    };
                    if seen.contains(key) {
                        continue;
                    }
                    let Ok(info) = message_info(key, &entry.path(), form) else {
                        continue;
                    };
                    seen.insert(key.to_string());
                    out.push(info);
                }
            }
            Ok(out)
        })
        .await
    }
}

struct FsBlobWriter {
    /// Bytes not yet written to the file: a message smaller than [`WRITE_BUFFER`] is
    /// written by one blocking call at stage (or commit).
    buf: Vec<u8>,
    /// Created at the first write that fills the buffer, or at stage.
    file: Option<std::fs::File>,
    /// Bytes of the message written to the file so far.
    written: u64,
    /// `tmp/<id>.spool`.
    tmp: PathBuf,
    /// Written after the message at stage, flushed with it.
    envelope: Option<Vec<u8>>,
    /// The envelope and the footer are written: the file is whole.
    sealed: bool,
    /// A write failed and took the file with it: every later call fails too, so nothing
    /// can go on to write a file missing what was lost.
    failed: bool,
    /// Staged ([`BlobWriter::stage`]): the row is flushed with the file, and the
    /// publisher moves it. Otherwise the commit moves it into `messages/` itself, before
    /// the caller writes the row (a file there without a row is an orphan only after the
    /// start's settling window).
    staged: bool,
    /// `messages/<id>.spool`.
    dest: PathBuf,
    /// This writer created its file: removed if it fails or is aborted.
    made: bool,
    tmp_flush: Arc<TmpFlush>,
}

/// Flushes of `tmp/` for the commits waiting, one `fsync(2)` for all of them. A commit
/// asks for one while its file's own flush runs, not after it: the file's name has been
/// in `tmp/` since the file was created, before the commit, so any flush of `tmp/` that
/// starts after the commit asked covers it (a [`Group`] answers only with such a flush).
/// One after the other, the two waited for two journal commits on ext4: `tmp/` changes
/// with every other session's new file, so its flush always found a fresh transaction
/// to commit. The answer is the flush's error (its kind, so a full disk stays transient,
/// and its text), shared by every commit it served.
type TmpFlush = Group<(), Result<(), (std::io::ErrorKind, String)>>;

fn tmp_flush(dir: Arc<Sticky>) -> TmpFlush {
    Group::new(256, move |batch: Vec<()>| {
        let dir = dir.clone();
        async move {
            let res = tokio::task::spawn_blocking(move || {
                dir.sync().map_err(|e| (e.kind(), e.to_string()))
            })
            .await
            .unwrap_or_else(|e| Err((std::io::ErrorKind::Other, e.to_string())));
            vec![res; batch.len()]
        }
    })
}

/// Create `path` (0600, never over an existing file).
fn create_new(path: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io("create", path, e))
}

/// Append `bytes` to `file`, or to `path` created for them (`made` then set).
fn append(
    file: Option<std::fs::File>,
    path: &Path,
    bytes: &[u8],
    made: &mut bool,
) -> Result<std::fs::File, StoreError> {
    use std::io::Write;
    let mut f = match file {
        Some(f) => f,
        None => {
            let f = create_new(path)?;
            *made = true;
            f
        }
    };
    f.write_all(bytes)
        .map_err(|e| StoreError::io("write", path, e))?;
    Ok(f)
}

/// Remove `path` if this writer `made` it.
fn remove_made(path: &Path, made: bool) {
    if made {
        let _ = std::fs::remove_file(path);
    }
}

/// Run blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::io(what, path, std::io::Error::other(e)))?
}

impl FsBlobWriter {
    /// The rest of the message, its envelope and the footer, in one blocking call: the
    /// file is whole (readable in `tmp/` from now on), not flushed. Nothing is written
    /// twice: a writer sealed once is not sealed again.
    async fn seal(&mut self) -> Result<(), StoreError> {
        self.usable()?;
        if self.sealed {
            return Ok(());
        }
        self.failed = true;
        let mut bytes = std::mem::take(&mut self.buf);
        let envelope = self.envelope.take().unwrap_or_default();
        let message = self.written + bytes.len() as u64;
        bytes.extend_from_slice(&envelope);
        bytes.extend_from_slice(&spool_file::footer(message, envelope.len() as u64));
        let (file, tmp, mut made) = (self.file.take(), self.tmp.clone(), self.made);
        let (file, made) = blocking("write", &self.tmp, move || {
            match append(file, &tmp, &bytes, &mut made) {
                Ok(f) => Ok((f, made)),
                Err(e) => {
                    // The caller answers 451 and drops the writer: nothing of it stays.
                    remove_made(&tmp, made);
                    Err(e)
                }
            }
        })
        .await?;
        self.file = Some(file);
        self.made = made;
        self.written = message;
        self.sealed = true;
        self.failed = false;
        Ok(())
    }

    /// An error if an earlier write failed (see [`FsBlobWriter::failed`]).
    fn usable(&self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::io(
                "write",
                &self.tmp,
                std::io::Error::other("an earlier write of this message failed"),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for FsBlobWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.usable()?;
        if self.sealed {
            return Err(StoreError::io(
                "write",
                &self.tmp,
                std::io::Error::other("the message was already staged: nothing more is added"),
            ));
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() < WRITE_BUFFER {
            return Ok(());
        }
        let (file, tmp, mut made) = (self.file.take(), self.tmp.clone(), self.made);
        let mut bytes = std::mem::take(&mut self.buf);
        let n = bytes.len() as u64;
        self.failed = true;
        let (file, bytes, made) = blocking("write", &self.tmp, move || {
            match append(file, &tmp, &bytes, &mut made) {
                Ok(f) => {
                    bytes.clear();
                    Ok((f, bytes, made))
                }
                Err(e) => {
                    // The caller answers 451 and drops the writer: nothing of it stays.
                    remove_made(&tmp, made);
                    Err(e)
                }
            }
        })
        .await?;
        self.written += n;
        self.failed = false;
        self.file = Some(file);
        self.buf = bytes;
        self.made = made;
        Ok(())
    }

    fn set_envelope(&mut self, envelope: Vec<u8>) {
        self.envelope = Some(envelope);
    }

    /// Write the rest of the message, its envelope and the footer to `tmp/`, unflushed,
    /// in one blocking call: readable from now on (see [`FsBlobStore::open`]), durable at
    /// [`BlobWriter::commit`].
    async fn stage(&mut self) -> Result<bool, StoreError> {
        self.seal().await?;
        self.staged = true;
        Ok(true)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        // Not staged: written out now.
        self.seal().await?;
        let (file, tmp) = (self.file.take(), self.tmp.clone());
        // The file's own flush (it reports that file's writeback error) and, at the same
        // time, one of `tmp/`, where it was created (see [`TmpFlush`]): POSIX promises a
        // new file's name only with an fsync of its directory, which the file's flush
        // commits anyway on ext4 and XFS.
        let own = blocking("fdatasync", &self.tmp, move || match &file {
            Some(f) => f
                .sync_data()
                .map_err(|err| StoreError::io("fdatasync", &tmp, err)),
            None => Err(StoreError::io(
                "fdatasync",
                &tmp,
                std::io::Error::other("no file was written"),
            )),
        });
        let (own, dir) = tokio::join!(own, self.tmp_flush.submit(()));
        let dir = dir
            .unwrap_or_else(|| {
                Err((
                    std::io::ErrorKind::Other,
                    "the flush of tmp/ stopped".into(),
                ))
            })
            .map_err(|(kind, text)| {
                let at = self.tmp.parent().unwrap_or(&self.tmp);
                StoreError::io("fsync", at, std::io::Error::new(kind, text))
            });
        let flushed = own.and(dir);
        if self.staged && flushed.is_ok() {
            // The publisher moves it.
            return Ok(());
        }
        let (tmp, dest, made) = (self.tmp.clone(), self.dest.clone(), self.made);
        blocking("commit", &self.tmp, move || {
            let placed = flushed.and_then(|()| {
                std::fs::rename(&tmp, &dest).map_err(|err| StoreError::io("rename", &tmp, err))
            });
            if placed.is_err() {
                remove_made(&tmp, made);
            }
            placed
        })
        .await
    }

    async fn abort(self: Box<Self>) {
        let (tmp, made) = (self.tmp.clone(), self.made);
        let _ = blocking("remove", &self.tmp, move || {
            remove_made(&tmp, made);
            Ok(())
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_envelope_is_committed_in_the_message_file_published_and_deleted_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::open(dir.path()).unwrap();
        let id = MessageId::new(Utc::now());
        let mut w = fs.create(id).await.unwrap();
        w.set_envelope(b"{\"envelope\":1}\n".to_vec());
        w.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        assert!(w.stage().await.unwrap());
        // Staged: readable before it is durable, without its envelope.
        let (bytes, info) = fs.read_all(&id.to_string()).await.unwrap();
        assert_eq!(bytes, b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(info.size, bytes.len() as u64);
        assert!(
            w.write(b"more").await.is_err(),
            "nothing is added once staged"
        );
        w.commit().await.unwrap();
        let tmp = dir.path().join("tmp");
        let names = |d: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&tmp), [format!("{id}.spool")], "one file per message");
        assert_eq!(
            spool_file::read_envelope(&tmp.join(format!("{id}.spool"))).unwrap(),
            b"{\"envelope\":1}\n"
        );
        assert!(!fs.path(id).exists());
        fs.publish(vec![id.to_string()]).await.unwrap();
        assert_eq!(
            spool_file::read_envelope(&fs.path(id)).unwrap(),
            b"{\"envelope\":1}\n"
        );
        assert_eq!(names(&dir.path().join("messages")), [format!("{id}.spool")]);
        assert!(names(&tmp).is_empty());
        let listed = fs.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, 20);
        let spooled = fs.spooled().unwrap();
        assert_eq!(spooled[0].message().unwrap(), b"Subject: x\r\n\r\nbody\r\n");
        fs.delete(&id.to_string()).await.unwrap();
        assert!(names(&dir.path().join("messages")).is_empty());
    }

    /// A writer whose write failed (its bytes gone with its file) refuses to go on: it
    /// never stages a file that is whole by its footer but missing what was lost.
    #[tokio::test]
    async fn a_writer_refuses_to_go_on_after_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::open(dir.path()).unwrap();
        let id = MessageId::new(Utc::now());
        let mut w = fs.create(id).await.unwrap();
        // Something in the way of the file the first full buffer goes to.
        std::fs::write(fs.unsettled(id), b"in the way").unwrap();
        assert!(w.write(&vec![b'a'; WRITE_BUFFER]).await.is_err());
        std::fs::remove_file(fs.unsettled(id)).unwrap();
        assert!(w.write(b"the rest\r\n").await.is_err());
        w.set_envelope(b"{}".to_vec());
        assert!(w.stage().await.is_err());
        assert!(w.commit().await.is_err());
        assert!(!fs.unsettled(id).exists() && !fs.path(id).exists());
    }

    /// A message in `tmp/` without its footer (a write in progress, a partial one) is
    /// not there for readers; in `messages/` it is damage, and says so.
    #[tokio::test]
    async fn a_file_without_its_footer_is_not_read_as_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::open(dir.path()).unwrap();
        let id = MessageId::new(Utc::now());
        std::fs::write(fs.unsettled(id), b"Subject: cut\r\n\r\nhalf").unwrap();
        assert!(matches!(
            fs.open(&id.to_string()).await,
            Err(StoreError::MissingBlob(_))
        ));
        assert!(fs.list().await.unwrap().is_empty());
        std::fs::rename(fs.unsettled(id), fs.path(id)).unwrap();
        let err = fs.read_all(&id.to_string()).await.unwrap_err().to_string();
        assert!(err.contains("not a whole spool file"), "{err}");
    }

    /// Files an earlier release wrote (`<id>.eml` with `<id>.env`, in `tmp/` `<id>`) are
    /// read, listed, published and deleted as they are.
    #[tokio::test]
    async fn an_earlier_releases_files_are_read_published_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::open(dir.path()).unwrap();
        let (old, staged) = (MessageId::new(Utc::now()), MessageId::new(Utc::now()));
        let messages = dir.path().join("messages");
        let tmp = dir.path().join("tmp");
        std::fs::write(messages.join(format!("{old}.eml")), b"old message").unwrap();
        std::fs::write(messages.join(format!("{old}.env")), b"{}").unwrap();
        std::fs::write(tmp.join(staged.to_string()), b"staged message").unwrap();
        std::fs::write(tmp.join(format!("{staged}.env")), b"{\"s\":1}").unwrap();
        assert_eq!(
            fs.read_all(&old.to_string()).await.unwrap().0,
            b"old message"
        );
        assert_eq!(
            fs.read_all(&staged.to_string()).await.unwrap().0,
            b"staged message"
        );
        let mut sizes: Vec<u64> = fs.list().await.unwrap().iter().map(|b| b.size).collect();
        sizes.sort();
        assert_eq!(sizes, [11, 14]);
        fs.publish(vec![staged.to_string()]).await.unwrap();
        assert!(messages.join(format!("{staged}.eml")).exists());
        assert!(messages.join(format!("{staged}.env")).exists());
        let spooled = fs.spooled().unwrap();
        assert_eq!(spooled.len(), 2);
        assert!(spooled.iter().all(|s| s.envelope.is_some()));
        let first = spooled.iter().find(|s| s.id == old).unwrap();
        assert_eq!(first.message().unwrap(), b"old message");
        for id in [old, staged] {
            fs.delete(&id.to_string()).await.unwrap();
        }
        assert_eq!(std::fs::read_dir(&messages).unwrap().count(), 0);
    }

    /// A message larger than the write buffer goes to disk as it arrives, whole.
    #[tokio::test]
    async fn a_message_larger_than_the_buffer_is_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::open(dir.path()).unwrap();
        let id = MessageId::new(Utc::now());
        let mut w = fs.create(id).await.unwrap();
        let mut want = Vec::new();
        for i in 0..100u32 {
            let chunk = vec![b'a' + (i % 26) as u8; 10_000];
            w.write(&chunk).await.unwrap();
            want.extend_from_slice(&chunk);
        }
        w.commit().await.unwrap();
        let (got, info) = fs.read_all(&id.to_string()).await.unwrap();
        assert_eq!(info.size, want.len() as u64);
        assert!(got == want, "bytes differ");
        // Aborting one that reached the disk leaves nothing.
        let other = MessageId::new(Utc::now());
        let mut w = fs.create(other).await.unwrap();
        w.write(&vec![b'x'; 2 * WRITE_BUFFER]).await.unwrap();
        assert!(fs.unsettled(other).exists());
        w.abort().await;
        assert!(!fs.unsettled(other).exists());
    }

    /// Messages up to the whole-read limit are read by the open, larger ones as they are
    /// consumed: both give the bytes exactly, at and across the limit.
    #[tokio::test]
    async fn opened_messages_read_back_exactly_either_side_of_the_whole_read_limit() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::open(dir.path()).unwrap();
        // The file is the message, its envelope and the footer: either side of the
        // limit by the file's size, and by the message's.
        let envelope = b"{\"envelope\":true}";
        let whole = WHOLE_READ - (envelope.len() + spool_file::FOOTER) as u64;
        for len in [
            0,
            1,
            whole - 1,
            whole,
            whole + 1,
            WHOLE_READ,
            WHOLE_READ + 1,
            3 * WHOLE_READ,
        ] {
            let id = MessageId::new(Utc::now());
            let want: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut w = fs.create(id).await.unwrap();
            w.set_envelope(envelope.to_vec());
            w.write(&want).await.unwrap();
            w.commit().await.unwrap();
            assert_eq!(fs.stat(&id.to_string()).await.unwrap().size, len);
            let mut got = Vec::new();
            fs.open(&id.to_string())
                .await
                .unwrap()
                .read_to_end(&mut got)
                .await
                .unwrap();
            assert!(got == want, "{len} bytes differ");
        }
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
