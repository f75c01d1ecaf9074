//! Storage backends: one adapter per port and technology.
//!
//! - [`fs::FsBlobStore`] + [`sqlite::SqliteIndex`]: the embedded default (`standby serve`).
//! - [`aws::S3BlobStore`] + [`aws::DynamoIndex`]: the serverless deployment (SES inbound,
//!   Lambda functions), `standby serve` nodes sharing one bucket and table, and the
//!   operator command pointed at them.
//!
//! Group commit ([`group`]) is the local spool's: one fsync serves many messages. S3 and
//! DynamoDB take each write on its own (a PutObject is one durable object, a conditional
//! PutItem cannot be batched), so the AWS adapters write directly.
//! - [`audit::FsAuditLog`] (a JSONL file) and [`aws::DynamoAuditLog`] (items in the index
//!   table): the audit log of deletions and legal holds.
//! - [`users_file::LocalUserFiles`] (`[users] file`) and [`aws::S3UserFiles`] (the
//!   bucket's `users/passwd`): the emergency inbox's users.
//! - [`memory`]: in-memory twins for unit tests.

pub mod audit;
pub mod aws;
pub mod fs;
pub mod group;
pub mod http;
pub mod limits;
pub mod memory;
pub mod spool_file;
pub mod sqlite;
pub mod users_file;

use std::sync::Arc;

use crate::config::Config;
use crate::error::StoreError;
use crate::model::{MessageId, Status};
use crate::ports::{AuditEntry, AuditLog, Storage};

pub use audit::FsAuditLog;
pub use fs::FsBlobStore;
pub use limits::MemLoginLimits;
pub use memory::{MemAuditLog, MemBlobStore, MemEventStore, MemIndex, MemMailboxes};
pub use sqlite::SqliteIndex;
pub use users_file::LocalUserFiles;

/// What opening the storage for `standby serve` found and holds.
#[derive(Debug, Default)]
pub struct Started {
    /// What a crash left in `tmp/`.
    pub recovered: fs::Recovered,
    /// Rows whose message files a power cut lost, deleted (never acknowledged).
    pub dropped: usize,
    /// What was in `messages/` without a row.
    pub orphans: fs::Orphans,
    /// The local spool's lock, held while this lives.
    pub lock: Option<fs::SpoolLock>,
}

/// The audit entry for a message file moved to `orphans/`: its status is unknown (no
/// record), so `held`, as it was when received.
fn orphan_entry(id: MessageId, now: chrono::DateTime<chrono::Utc>) -> AuditEntry {
    AuditEntry {
        at: now,
        action: "orphan".into(),
        id: Some(id),
        by: "serve".into(),
        reason: "message file without an index record moved to orphans/ \
                 (`standby reindex` indexes it again)"
            .into(),
        status: Some(Status::Held),
        received_at: Some(id.received_at()),
    }
}

/// Where the emergency inbox's users are, by backend: the bucket's `users/passwd` on AWS,
/// `[users] file` locally (`None` when it is not set: no users, no inbox).
pub async fn user_files(config: &Config) -> Option<Arc<dyn crate::ports::UserFiles>> {
    match config.aws_settings() {
        Some(settings) => {
            let clients = aws::AwsClients::connect(&settings).await;
            Some(Arc::new(clients.user_files(&settings)))
        }
        None => {
            let file = config.users.file.clone()?;
            Some(Arc::new(LocalUserFiles::new(
                file,
                config.users.aliases.clone(),
            )))
        }
    }
}

impl Storage {
    /// The storage `standby serve` receives into, by `backend`: the local spool (see
    /// [`Storage::serve_local`]), or S3 + DynamoDB shared with other nodes (see
    /// [`Storage::aws_serve`]), whose check that the table answers comes first so a
    /// wrong table or missing permission stops the start instead of 451-ing every message.
    pub async fn serve(config: &Config) -> Result<(Storage, Started), StoreError> {
        match config.aws_settings() {
            Some(settings) => {
                let clients = aws::AwsClients::connect(&settings).await;
                let storage = Self::aws_serve(&clients, &settings);
                storage.index.load_health(&config.node_id()).await?;
                Ok((storage, Started::default()))
            }
            None => Self::serve_local(config).await,
        }
    }

    /// S3 + DynamoDB for a `standby serve` node: like [`Storage::aws`], except that new
    /// messages (and the DSNs its drain queues) go under
    /// [`SERVE_PREFIX`](crate::config::SERVE_PREFIX), never the SES prefix.
    pub fn aws_serve(clients: &aws::AwsClients, settings: &aws::AwsSettings) -> Storage {
        Storage {
            blobs: Arc::new(
                clients
                    .blob_store(settings)
                    .writing_under(crate::config::SERVE_PREFIX),
            ),
            index: Arc::new(clients.index(settings)),
            audit: Arc::new(clients.audit_log(settings)),
            events: Arc::new(clients.events(settings)),
            mailboxes: Some(Arc::new(clients.mailboxes(settings))),
        }
    }

    /// The local spool for `standby serve`, locked for this process first (a second
    /// `serve` on the same data directory stops there, having touched nothing), created
    /// if missing, with what a crash left cleaned up before any connection is accepted:
    /// in `tmp/`, partial writes removed and the other messages handed back in
    /// [`Started::recovered`] for the caller to check (`crate::publish::check_unpublished`);
    /// rows among the newest held whose message is nowhere dropped; in
    /// `messages/`, files of deleted (tombstoned) messages deleted and files with no
    /// index row moved to `orphans/` and audited (see [`fs`]).
    pub async fn serve_local(config: &Config) -> Result<(Storage, Started), StoreError> {
        let dir = config.data_dir();
        let lock = fs::lock_spool(dir)?;
        let blobs = FsBlobStore::open(dir)?;
        let index = SqliteIndex::open(dir)?;
        // Rows a crashed process wrote unflushed are in the WAL (the page cache): flushed
        // before their messages move into `messages/`, where a file must have its row.
        crate::ports::Index::sync(&index).await?;
        let tombstones = index.tombstones()?;
        // Anything older than this was stored before we started: no process can still be
        // about to index it.
        let settled = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let recovered = blobs.recover(|id| index.contains(id), |id| tombstones.contains(&id))?;
        // A row whose WAL flush finished while its message's files' did not (the flushes
        // run at once, and on ext4 a flush of a WAL written in place commits no
        // directory entry) points at nothing after a power cut; its 250 was never sent.
        // Such rows are among the newest held ones.
        let mut dropped = 0;
        for rec in index.newest_held(chrono::Duration::seconds(60))? {
            if !blobs.has(rec.id) && rec.blob.is_none() {
                tracing::warn!(id = %rec.id, "row without its message after a crash (never acknowledged): removed");
                // Whatever lease a crashed process left on it: a row without its message
                // is nothing any drain can send.
                crate::ports::Index::delete(&index, &rec, chrono::DateTime::<chrono::Utc>::MAX_UTC)
                    .await?;
                dropped += 1;
            }
        }
        let orphans = blobs.sweep_orphans(
            |id| index.contains(id),
            |id| tombstones.contains(&id),
            settled,
        )?;
        index.clear_tombstones(&tombstones)?;
        let audit = FsAuditLog::new(dir);
        let now = chrono::Utc::now();
        for id in &orphans.moved {
            audit.append(&orphan_entry(*id, now)).await?;
        }
        Ok((
            Storage {
                blobs: Arc::new(blobs),
                events: Arc::new(index.clone()),
                mailboxes: Some(Arc::new(index.clone())),
                index: Arc::new(index),
                audit: Arc::new(audit),
            },
            Started {
                recovered,
                dropped,
                orphans,
                lock: Some(lock),
            },
        ))
    }

    /// An existing local spool (for the operator commands). A missing `data_dir` is an
    /// error rather than a new empty spool: it almost always means the wrong `--config`
    /// or working directory, and "0 held" would then be a dangerous answer.
    pub fn open_local(config: &Config) -> Result<Storage, StoreError> {
        let dir = config.data_dir();
        if !dir.join("index.db").exists() {
            return Err(StoreError::io(
                "open spool",
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no spool here (index.db missing); check --config and data_dir, \
                     or start `standby serve` once to create it",
                ),
            ));
        }
        // Messages still in `tmp/` (not published yet, or a crash came first) are read
        // there; only `standby serve`'s start moves them.
        let blobs = FsBlobStore::open(dir)?;
        let index = SqliteIndex::open(dir)?;
        Ok(Storage {
            blobs: Arc::new(blobs),
            events: Arc::new(index.clone()),
            mailboxes: Some(Arc::new(index.clone())),
            index: Arc::new(index),
            audit: Arc::new(FsAuditLog::new(dir)),
        })
    }

    /// The storage the config names, for the operator commands: the local spool (which
    /// must exist) or S3 + DynamoDB.
    pub async fn open(config: &Config) -> Result<Storage, StoreError> {
        match config.aws_settings() {
            Some(settings) => {
                let clients = aws::AwsClients::connect(&settings).await;
                Ok(Self::aws(&clients, &settings))
            }
            None => Self::open_local(config),
        }
    }

    /// S3 + DynamoDB with already created clients.
    pub fn aws(clients: &aws::AwsClients, settings: &aws::AwsSettings) -> Storage {
        Storage {
            blobs: Arc::new(clients.blob_store(settings)),
            index: Arc::new(clients.index(settings)),
            audit: Arc::new(clients.audit_log(settings)),
            events: Arc::new(clients.events(settings)),
            mailboxes: None,
        }
    }

    /// Empty in-memory storage.
    pub fn memory() -> Storage {
        Storage {
            blobs: Arc::new(MemBlobStore::default()),
            index: Arc::new(MemIndex::default()),
            audit: Arc::new(MemAuditLog::default()),
            events: Arc::new(MemEventStore::default()),
            mailboxes: Some(Arc::new(MemMailboxes::default())),
        }
    }
}

/// A held message received at `now`, inserted into `index` (for the indexes' tests).
#[cfg(test)]
pub(crate) async fn one_held(
    index: &dyn crate::ports::Index,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::model::Record {
    let rec = crate::model::Record::held(
        MessageId::new(now),
        "a@example.org".into(),
        vec!["b@example.test".into()],
        now,
        (1, "00".into()),
        crate::model::Summary::default(),
    );
    index.insert(&rec).await.unwrap();
    rec
}
