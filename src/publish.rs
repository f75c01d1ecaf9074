//! Publishing: received messages moved into place once durable, in batches, off the
//! reply's path; and what a crash left unpublished, checked at start.
//!
//! [`Incoming::commit`](crate::ingest::Incoming::commit) on the local spool stages the
//! message and its envelope in `tmp/` (written, not flushed:
//! [`BlobWriter::stage`](crate::ports::BlobWriter::stage)), then flushes the file and
//! `tmp/` while it writes the row unflushed
//! ([`Index::insert_unsynced`](crate::ports::Index::insert_unsynced)) and flushes the
//! index's WAL, and the listener answers 250 once all are on disk. Why at once: on the
//! bench's journaled ext4 a WAL flush after the files' flush was a second journal commit
//! every session waited for; issued together, the file system folds them into one.
//!
//! The message stays in `tmp/` (readable there) until the publisher renames it into
//! `messages/` ([`BlobStore::publish`](crate::ports::BlobStore::publish)) in a batch; only
//! messages whose row was flushed before their 250 are submitted, so a file in
//! `messages/` always has a durable row. A crash before the flushes finished can leave a staged
//! message in `tmp/` whose row is missing, or whose bytes a power cut cut short: its 250
//! was never sent. [`check_unpublished`] runs at start and publishes each message whose
//! row is there and whose bytes match the row's size and SHA-256, and removes the others
//! (row and files).
//!
//! Stores that cannot stage (S3) commit the blob first and insert the row durably after;
//! `insert_unsynced`, `sync` and `publish` are then the defaults.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::model::{MessageId, Status};
use crate::ports::Storage;

/// Most messages one batch publishes.
const BATCH_MAX: usize = 4096;
/// How long a batch gathers messages after its first: fewer, larger batches of renames
/// (each batch's directory changes go into the file system's next journal commit).
const GATHER: Duration = Duration::from_millis(100);
/// Tries of one batch before its messages are left for the next start to publish.
const TRIES: u32 = 3;

enum Msg {
    Key(String),
    /// Answered once everything sent before it is published (or given up on).
    Flush(oneshot::Sender<()>),
}

/// Publishes committed messages in batches (see the module docs). The worker is a task on
/// the runtime of the first caller.
pub struct Publisher {
    storage: Storage,
    tx: OnceLock<mpsc::UnboundedSender<Msg>>,
}

impl Publisher {
    pub fn new(storage: Storage) -> Self {
        Publisher {
            storage,
            tx: OnceLock::new(),
        }
    }

    fn sender(&self) -> &mpsc::UnboundedSender<Msg> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(worker(self.storage.clone(), rx));
            tx
        })
    }

    /// Publish the message stored under `key` with the next batch.
    pub fn submit(&self, key: String) {
        let _ = self.sender().send(Msg::Key(key));
    }

    /// Wait until every message submitted before this call is published (a graceful
    /// stop, so the next start finds nothing to index again).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender().send(Msg::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn worker(storage: Storage, mut rx: mpsc::UnboundedReceiver<Msg>) {
    while let Some(first) = rx.recv().await {
        if matches!(first, Msg::Key(_)) {
            tokio::time::sleep(GATHER).await;
        }
        let (mut keys, mut waiters) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Key(k) => keys.push(k),
                Msg::Flush(w) => waiters.push(w),
            }
            if keys.len() < BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        if !keys.is_empty() {
            publish(&storage, keys).await;
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// Put the batch's messages in place (their rows were flushed before their 250s); on
/// failure, try again a little later, and after [`TRIES`] leave them where they are
/// (readable there; the next start publishes them).
async fn publish(storage: &Storage, keys: Vec<String>) {
    let n = keys.len();
    let mut tries = 0;
    loop {
        tries += 1;
        match storage.blobs.publish(keys.clone()).await {
            Ok(()) => return,
            Err(e) if tries < TRIES => {
                tracing::warn!(error = %e, messages = n, "publishing stored messages failed; trying again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    messages = n,
                    "publishing stored messages failed; they stay readable where they are \
                     and the next start publishes them"
                );
                return;
            }
        }
    }
}

/// What [`check_unpublished`] did at start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpublished {
    /// Messages whose row is there and whose bytes match it: in place now.
    pub published: usize,
    /// Messages without a row whose bytes match their envelope's size and SHA-256 (their
    /// flush finished; the row's did not, or the index is older than the spool): indexed
    /// again from the envelope and put in place. Each may have been acknowledged (an
    /// index restored from an older copy) or not (a crash between the two flushes: then
    /// the client sends it again, a crash-window duplicate).
    pub readmitted: usize,
    /// Messages whose bytes match neither (a power cut before their flush finished, so
    /// no 250 was sent): removed, with their row.
    pub removed: usize,
}

/// At start, before any connection: each message a crash left in `tmp/` (`found`: its
/// id and its envelope's bytes, if any) is published if its row is there and its bytes
/// match the row's size and SHA-256; indexed again from its envelope and published if it
/// has no row and its bytes match the envelope (held, or `paused` for `standby
/// reindex`, whose rule is that nothing it rebuilds is redelivered unasked); removed
/// otherwise, with its row: its flush never finished, so it was never acknowledged.
///
/// # Errors
/// Reading a message or writing the index failed: the start stops, the files stay.
pub async fn check_unpublished(
    storage: &Storage,
    found: Vec<(MessageId, Option<Vec<u8>>)>,
    journal: &crate::config::Journal,
    retention: &crate::config::RetentionPolicy,
    paused: bool,
) -> Result<Unpublished, StoreError> {
    let mut out = Unpublished::default();
    let mut publish = Vec::new();
    for (id, envelope) in found {
        let key = id.to_string();
        let bytes = match storage.blobs.read_all(&key).await {
            Ok((bytes, _)) => Some(bytes),
            Err(StoreError::MissingBlob(_)) => None,
            Err(e) => return Err(e),
        };
        let row = storage.index.get(id).await?;
        let digest = bytes
            .as_deref()
            .map(|b| (b.len() as u64, hex::encode(Sha256::digest(b))));
        match (&row, &digest) {
            (Some(rec), Some((size, sha))) if rec.size == *size && &rec.sha256 == sha => {
                publish.push(key);
                out.published += 1;
                continue;
            }
            (None, Some((size, sha))) => {
                let stamp = envelope
                    .as_deref()
                    .and_then(|e| crate::ingest::Stamp::from_json(e).ok())
                    .filter(|s| {
                        s.id == id && s.size == Some(*size) && s.sha256.as_ref() == Some(sha)
                    });
                if let (Some(stamp), Some(bytes)) = (stamp, &bytes) {
                    let mut rec = crate::ingest::rebuild(&stamp, bytes, journal, retention);
                    if paused && matches!(rec.status, Status::Held | Status::Outbound) {
                        rec.status = Status::Paused;
                    }
                    storage.index.insert(&rec).await?;
                    publish.push(key);
                    out.readmitted += 1;
                    continue;
                }
            }
            _ => {}
        }
        tracing::warn!(%id, indexed = row.is_some(), "message left incomplete by a crash (never acknowledged): removed");
        if let Some(rec) = &row {
            // Never acknowledged, and no drain can send it: whatever lease it carries.
            storage
                .index
                .delete(rec, chrono::DateTime::<chrono::Utc>::MAX_UTC)
                .await?;
        }
        storage.blobs.delete(&key).await?;
        out.removed += 1;
    }
    if !publish.is_empty() {
        storage.index.sync().await?;
        storage.blobs.publish(publish).await?;
    }
    Ok(out)
}
