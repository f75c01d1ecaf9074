//! Publishing: the receive path's index rows made durable in batches, off the path.
//!
//! [`Incoming::commit`](crate::ingest::Incoming::commit) lets the listener answer 250 once
//! the message's bytes and its envelope (with their size and digest) are flushed and its
//! row is written, but not flushed ([`Index::insert_unsynced`](crate::ports::Index)).
//! The bytes alone survive a power cut: the store keeps a committed message apart until
//! its row is durable (the local spool's `tmp/`), and the next start indexes every such
//! message again from its envelope ([`readmit`]). The publisher then makes the rows
//! durable in batches, one [`Index::sync`](crate::ports::Index::sync) for every message
//! committed while the previous one ran, and has the store put those messages in place
//! ([`BlobStore::publish`](crate::ports::BlobStore::publish)): a start after a power cut
//! has at most the last batch to index again, and a message in place always has its row
//! (a file there without one is an orphan, as before).
//!
//! Why: on the bench's journaled ext4 a flush of the index's WAL after each file's flush
//! was a second journal commit every session waited for, one after the other. Now a
//! session waits for its own files' flush; the WAL's runs beside it and the file system
//! folds the two into one commit when they meet.
//!
//! Stores that keep every write durable (S3 and DynamoDB) take the default port methods:
//! `insert_unsynced` is `insert`, `sync` and `publish` do nothing.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::ports::Storage;

/// Most messages one batch publishes.
const BATCH_MAX: usize = 4096;
/// How long a batch gathers messages after its first: each WAL flush is a journal
/// commit of the file system, which the receiving sessions' flushes then wait behind.
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

/// Make the batch's rows durable, then put its messages in place; on failure, try again
/// a little later, and after [`TRIES`] leave them where they are (readable there; the
/// next start publishes or indexes them again).
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

/// What [`readmit`] did at start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Readmitted {
    /// Messages indexed again (as at receipt) and published.
    pub indexed: usize,
    /// Messages whose bytes do not match their envelope's size and digest (their flush
    /// never finished, so they were never acknowledged): deleted.
    pub discarded: usize,
}

/// At start, before any connection: index again each committed message whose row a power
/// cut lost (`found`: its id and its envelope's bytes, from the local spool's recovery),
/// as [`Incoming::commit`](crate::ingest::Incoming::commit) indexed it (held, or filed as
/// a journal copy), durably, then publish it. A message whose envelope lacks the size and
/// digest (written by an older version, which indexed before acknowledging) or whose
/// bytes do not match them was never acknowledged: it is deleted. With `paused` (`standby
/// reindex`, whose policy is that nothing is redelivered unasked), held mail comes back
/// `paused`.
///
/// # Errors
/// Reading a message or writing its row failed: the start stops, the files stay.
pub async fn readmit(
    storage: &Storage,
    found: Vec<(crate::model::MessageId, Vec<u8>)>,
    journal: &crate::config::Journal,
    retention: &crate::config::RetentionPolicy,
    paused: bool,
) -> Result<Readmitted, StoreError> {
    let mut out = Readmitted::default();
    let mut publish = Vec::new();
    for (id, envelope) in found {
        let key = id.to_string();
        let stamp = crate::ingest::Stamp::from_json(&envelope)
            .ok()
            .filter(|s| s.id == id && s.size.is_some() && s.sha256.is_some());
        let bytes = match &stamp {
            Some(_) => Some(storage.blobs.read_all(&key).await?.0),
            None => None,
        };
        let rec = stamp
            .as_ref()
            .zip(bytes.as_deref())
            .and_then(|(stamp, bytes)| {
                let rec = crate::ingest::rebuild(stamp, bytes, journal, retention);
                let whole =
                    stamp.size == Some(rec.size) && stamp.sha256.as_ref() == Some(&rec.sha256);
                whole.then_some(rec)
            });
        match rec {
            Some(mut rec) => {
                if paused && rec.status == crate::model::Status::Held {
                    rec.status = crate::model::Status::Paused;
                }
                storage.index.insert(&rec).await?;
                publish.push(key);
                out.indexed += 1;
            }
            None => {
                tracing::warn!(%id, "stored message incomplete or without its digest (never acknowledged): removed");
                storage.blobs.delete(&key).await?;
                out.discarded += 1;
            }
        }
    }
    if !publish.is_empty() {
        storage.blobs.publish(publish).await?;
    }
    Ok(out)
}
