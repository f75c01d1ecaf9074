//! Library error types. Each says whether retrying could help ([`StoreError::is_transient`],
//! [`RelayError::is_transient`]) so callers decide between "try later" and "give up" without
//! parsing strings.

use std::path::PathBuf;

use crate::model::MessageId;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A blob store or index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation on the spool failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The storage backend (SQLite, DynamoDB, S3) refused or failed a request.
    #[error("{backend}: {detail}")]
    Backend {
        backend: &'static str,
        detail: String,
        transient: bool,
        #[source]
        source: Option<BoxError>,
    },
    /// No message with this id.
    #[error("message {0} not found")]
    NotFound(MessageId),
    /// No raw message stored under this name.
    #[error("no raw message stored as `{0}`")]
    MissingBlob(String),
    /// A stored record could not be decoded.
    #[error("record {id} is corrupt: {detail}")]
    Corrupt { id: String, detail: String },
    /// The record is leased by a drain worker; try again once the lease expires.
    #[error("message {0} is being delivered right now (leased); try again shortly")]
    Leased(MessageId),
    /// The record changed since it was read (a drain delivered it, another operator or
    /// the sender check wrote it): nothing was written; read it again and decide again.
    #[error(
        "message {0} changed since it was read (a drain or another command wrote it); nothing was changed, try again"
    )]
    Changed(MessageId),
    /// A node's health record was saved by another run since it was read: nothing was
    /// written; read it again and apply the change again.
    #[error("the health record of node {0} changed since it was read; nothing was written")]
    HealthChanged(String),
    /// The message is under legal hold: nothing may delete it.
    #[error("message {0} is under legal hold; `standby release --legal {0}` first")]
    LegalHold(MessageId),
    /// A submitted message refused on what it says (its `From` not the user's): the
    /// SMTP reply to give, code and text.
    #[error("refused: {0}")]
    Refused(String),
    /// A file written whole (the users' passwd-file) was changed by someone else since
    /// it was read: nothing was written; read it again and apply the change again.
    #[error("{0} changed since it was read; nothing was written, try again")]
    FileChanged(String),
}

impl StoreError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Reading an opened blob's stream failed (any backend).
    pub fn blob_read(key: &str, source: std::io::Error) -> Self {
        StoreError::Backend {
            backend: "blob",
            detail: format!("reading {key}: {source}"),
            transient: true,
            source: Some(Box::new(source)),
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::StorageFull
            ),
            StoreError::Backend { transient, .. } => *transient,
            StoreError::Leased(_)
            | StoreError::Changed(_)
            | StoreError::HealthChanged(_)
            | StoreError::FileChanged(_) => true,
            StoreError::NotFound(_)
            | StoreError::MissingBlob(_)
            | StoreError::Corrupt { .. }
            | StoreError::LegalHold(_)
            | StoreError::Refused(_) => false,
        }
    }
}

/// An alert or notice could not be sent on one channel.
#[derive(Debug, thiserror::Error)]
#[error("{channel}: {detail}")]
pub struct NotifyError {
    /// `webhook`, `heartbeat`, `email`, `sns`, `sms`.
    pub channel: &'static str,
    pub detail: String,
}

impl NotifyError {
    pub fn new(channel: &'static str, detail: impl Into<String>) -> Self {
        NotifyError {
            channel,
            detail: detail.into(),
        }
    }
}

/// Talking to the primary failed below the level of a per-command SMTP reply.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out waiting for the primary during {stage}")]
    Timeout { stage: &'static str },
    /// The primary refused the session itself (banner, EHLO, STARTTLS, AUTH).
    #[error("primary refused the session at {stage}: {code} {text}")]
    Refused {
        stage: &'static str,
        code: u16,
        text: String,
    },
    #[error("TLS with the primary failed: {0}")]
    Tls(String),
    #[error("primary broke the protocol: {0}")]
    Protocol(String),
    /// The configured primary is this standby itself (its listen address, or it greets
    /// with our hostname): draining into it would loop forever.
    #[error("primary loops back to myself: {0}; nothing was sent (fix [primary] address)")]
    Loop(String),
    #[error("connection to the primary failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the stored message: {0}")]
    Blob(#[from] StoreError),
    /// The envelope cannot go to this primary as it is (a UTF-8 address to a primary
    /// that does not offer SMTPUTF8): held, with this reason, until it can or expires.
    #[error("not sent: {0}")]
    Unsendable(String),
}

impl RelayError {
    /// Whether delivery may work later. Only an explicit 5xx refusal, or a stored
    /// message whose bytes are gone, is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            RelayError::Refused { code, .. } => *code < 500,
            // Only bytes that are gone for good fail the message: a storage error on
            // our side (a full disk, an S3 403 or a broken stream) is ours, never the
            // sender's, and is tried again.
            RelayError::Blob(e) => !matches!(e, StoreError::MissingBlob(_)),
            _ => true,
        }
    }
}

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// Neither `--config` nor `STANDBY_CONFIG` was given and no file is in the search path.
    #[error(
        "no config file: looked for {} (none given with --config PATH or STANDBY_CONFIG)",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and ")
    )]
    NotFound { looked: Vec<PathBuf> },
    #[error("recipients file {}:{line}: {message}", path.display())]
    Recipients {
        path: PathBuf,
        line: usize,
        message: String,
    },
}
