//! Publishing: received messages moved into place once durable, in batches, off the
//! reply's path; and what a crash left unpublished, checked at start.
//!
//! [`Incoming::commit`](crate::ingest::Incoming::commit) on the local spool stages the
//! message and its envelope in `tmp/` (written, not flushed:
//! [`BlobWriter::stage`](crate::ports::BlobWriter::stage)), writes the row unflushed
//! ([`Index::insert_unsynced`](crate::ports::Index::insert_unsynced)), then flushes the
//! files and the index's WAL at once, and the listener answers 250 once all are on disk.
//! Why at once: on the bench's journaled ext4 a WAL flush after the files' flush was a
//! second journal commit every session waited for; issued together, the file system
//! folds them into one.
//!
//! The message stays in `tmp/` (readable there) until the publisher renames it into
//! `messages/` ([`BlobStore::publish`](crate::ports::BlobStore::publish)) in a batch, after
//! one more [`Index::sync`](crate::ports::Index::sync) (cheap: the rows are durable
//! already; it also carries the lazily written sender verdicts). A file in `messages/`
//! thus always has a durable row. A crash before the flushes finished can leave a staged
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

use crate::error::StoreError;
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

/// Make sure the batch's rows are durable, then put its messages in place; on failure,
/// try again a little later, and after [`TRIES`] leave them where they are (readable
/// there; the next start publishes them).
async fn publish(storage: &Storage, keys: Vec<String>) {
    let n = keys.len();
    let mut tries = 0;
    loop {
        tries += 1;
        let res: Result<(), StoreError> = async {
            storage.index.sync().await?;
            storage.blobs.publish(keys.clone()).await
        }
        .await;
        match res {
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
    /// Acknowledged messages (row and bytes whole), now in place.
    pub published: usize,
    /// Messages never acknowledged (no row, or bytes that do not match it): removed,
    /// with their row.
    pub removed: usize,
}

/// At start, before any connection: each message a crash left in `tmp/` with its
/// envelope (`found`: ids) is published if its row is there and its bytes match the
/// row's size and SHA-256 (its flushes finished, so it may have been acknowledged), and
/// removed otherwise, row and files (they did not: no 250 was sent).
///
/// # Errors
/// Reading a message or removing one failed: the start stops, the files stay.
pub async fn check_unpublished(
    storage: &Storage,
    found: Vec<crate::model::MessageId>,
) -> Result<Unpublished, StoreError> {
    use sha2::{Digest, Sha256};
    let mut out = Unpublished::default();
    let mut publish = Vec::new();
    for id in found {
        let key = id.to_string();
        let rec = storage.index.get(id).await?;
        let whole = match &rec {
            Some(rec) => match storage.blobs.read_all(&key).await {
                Ok((bytes, _)) => {
                    bytes.len() as u64 == rec.size
                        && hex::encode(Sha256::digest(&bytes)) == rec.sha256
                }
                Err(StoreError::MissingBlob(_)) => false,
                Err(e) => return Err(e),
            },
            None => false,
        };
        if whole {
            publish.push(key);
            out.published += 1;
            continue;
        }
        tracing::warn!(%id, indexed = rec.is_some(), "message left incomplete or unindexed by a crash (never acknowledged): removed");
        if let Some(rec) = &rec {
            storage.index.delete(rec).await?;
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
