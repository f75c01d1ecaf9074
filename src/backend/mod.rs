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
//! - [`memory`]: in-memory twins for unit tests.

pub mod audit;
pub mod aws;
pub mod fs;
pub mod group;
pub mod memory;
pub mod sqlite;

use std::sync::Arc;

use crate::config::Config;
use crate::error::StoreError;
use crate::ports::Storage;

pub use audit::FsAuditLog;
pub use fs::FsBlobStore;
pub use memory::{MemAuditLog, MemBlobStore, MemIndex};
pub use sqlite::SqliteIndex;

impl Storage {
    /// The storage `standby serve` receives into, by `backend`: the local spool (see
    /// [`Storage::serve_local`]), or S3 + DynamoDB shared with other nodes (see
    /// [`Storage::aws_serve`]), whose check that the table answers comes first so a
    /// wrong table or missing permission stops the start instead of 451-ing every message.
    pub async fn serve(config: &Config) -> Result<(Storage, fs::Recovered), StoreError> {
        match config.aws_settings() {
            Some(settings) => {
                let clients = aws::AwsClients::connect(&settings).await;
                let storage = Self::aws_serve(&clients, &settings);
                storage.index.load_health(&config.node_id()).await?;
                Ok((storage, fs::Recovered::default()))
            }
            None => Self::serve_local(config),
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
        }
    }

    /// The local spool for `standby serve`: created if missing, with what a crash left in
    /// `tmp/` cleaned up: acknowledged messages put in place, partial writes removed (only
    /// the receiving process may do that, before it accepts connections).
    pub fn serve_local(config: &Config) -> Result<(Storage, fs::Recovered), StoreError> {
        let blobs = FsBlobStore::open(config.data_dir())?;
        let index = SqliteIndex::open(config.data_dir())?;
        let recovered = blobs.recover(|id| index.contains(id))?;
        Ok((
            Storage {
                blobs: Arc::new(blobs),
                index: Arc::new(index),
                audit: Arc::new(FsAuditLog::new(config.data_dir())),
            },
            recovered,
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
        let blobs = FsBlobStore::open(dir)?;
        let index = SqliteIndex::open(dir)?;
        let restored = blobs.restore(|id| index.contains(id))?.restored;
        if restored > 0 {
            tracing::warn!(
                restored,
                "finished moving acknowledged messages into the spool after a crash"
            );
        }
        Ok(Storage {
            blobs: Arc::new(blobs),
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
        }
    }

    /// Empty in-memory storage.
    pub fn memory() -> Storage {
        Storage {
            blobs: Arc::new(MemBlobStore::default()),
            index: Arc::new(MemIndex::default()),
            audit: Arc::new(MemAuditLog::default()),
        }
    }
}
