//! The ports: the small traits the domain logic (ingest, drain, health) is written against.
//!
//! Each has one adapter per backend (`FsBlobStore`/`SqliteIndex` locally, S3/DynamoDB on AWS)
//! and an in-memory twin for unit tests. The contract every adapter must keep is written on
//! each method; `tests/contract.rs` runs the same suite against every adapter.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use crate::error::{NotifyError, RelayError, StoreError};
use crate::model::continuity::Continuity;
use crate::model::{
    Class, Counts, Disposal, Envelope, HealthRecord, MessageId, Record, Status, Verdicts,
};

/// The storage a command works on: the bundle of storage ports one backend provides
/// (built by `crate::backend`).
#[derive(Clone)]
pub struct Storage {
    pub blobs: Arc<dyn BlobStore>,
    pub index: Arc<dyn Index>,
    /// Deletions and legal holds, append-only.
    pub audit: Arc<dyn AuditLog>,
    /// Continuity events and one-time marks (see [`crate::continuity`]).
    pub events: Arc<dyn EventStore>,
    /// Each user's UIDs and flags for IMAP and POP3; `None` where nothing serves them
    /// (the Lambda functions' storage, the operator's commands on AWS).
    pub mailboxes: Option<Arc<dyn Mailboxes>>,
}

/// Where the SMTP listener puts what it accepts (implemented by `ingest::Spool`): the
/// listener speaks SMTP, the intake decides how a message is filed and makes it durable.
#[async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// Start receiving one message for `env`.
    async fn begin(&self, env: Envelope) -> Result<Box<dyn Accepting>, StoreError>;
}

/// A message being received: bytes are streamed in, then [`Accepting::commit`] makes it
/// durable. Only when `commit` returns may the listener answer 250.
#[async_trait]
pub trait Accepting: Send {
    fn id(&self) -> MessageId;
    /// Append message bytes (already dot-unstuffed, CRLF line ends).
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError>;
    /// Make the message durable: blob, then index row.
    async fn commit(self: Box<Self>) -> Result<Record, StoreError>;
    /// Drop the partial message.
    async fn abort(self: Box<Self>);
    /// Record the content filter's verdict ([`Verdicts::spam`](crate::model::Verdicts)),
    /// kept with the record at commit. Messages no filter looks at ignore it.
    fn set_spam_verdict(&mut self, _verdict: &str) {}
}

/// A stored message body, read as a stream (messages can be 40 MB).
pub type BlobReader = Box<dyn AsyncRead + Send + Unpin>;

/// A committed blob, as listed by [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub key: String,
    /// When the blob was stored (S3: `LastModified`, whole seconds).
    pub stored_at: DateTime<Utc>,
    pub size: u64,
}

/// Raw message bytes, keyed by name: the message id for blobs we write ourselves, the
/// receiving service's name for blobs it wrote (see [`Record::blob_key`](crate::model::Record::blob_key)).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Start writing a new blob named after `id`. Nothing is visible under that name
    /// until [`BlobWriter::commit`] returns.
    async fn create(&self, id: MessageId) -> Result<Box<dyn BlobWriter>, StoreError>;
    /// Open a committed blob for reading.
    ///
    /// # Errors
    /// [`StoreError::MissingBlob`] when there is no such blob.
    async fn open(&self, key: &str) -> Result<BlobReader, StoreError>;
    /// Remove a blob; removing a missing blob is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// The index rows of these committed blobs are durable: a store that keeps
    /// committed blobs apart until then (the local spool's `tmp/`, where a start after a
    /// crash checks each against its row) puts them in place. Default: nothing (every
    /// committed blob is in place).
    async fn publish(&self, _keys: Vec<String>) -> Result<(), StoreError> {
        Ok(())
    }
    /// Tell the store what its own retention may do with the bytes (S3: the object's
    /// `standby-state` tag, which the bucket's lifecycle rule acts on); `Ok(false)` when
    /// the store deletes nothing on its own and keeps no such mark (the default).
    async fn mark(&self, _key: &str, _disposal: Disposal) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// The mark [`BlobStore::mark`] left on the bytes, if the store keeps one (S3: the
    /// `standby-state` tag): a marked blob had a record once. Default: `None`.
    async fn marked(&self, _key: &str) -> Result<Option<Disposal>, StoreError> {
        Ok(None)
    }
    /// Place or lift a legal hold on the stored bytes, so the store's own retention (S3:
    /// the lifecycle rule on delivered objects) leaves them alone. Default: nothing (the
    /// local spool deletes only through the retention job, which reads the record).
    async fn set_legal_hold(&self, _key: &str, _hold: bool) -> Result<(), StoreError> {
        Ok(())
    }
    /// Keep an immutable copy of a journal copy (`bytes`, stored under `key`) until
    /// `retain_until` (S3: in the Object Lock archive bucket, when one is configured). Idempotent. Default: nothing
    /// (the local spool has no write-once storage; its retention job and legal hold
    /// are the whole policy).
    async fn archive(
        &self,
        _key: &str,
        _bytes: &[u8],
        _retain_until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether [`BlobStore::archive`] keeps a copy (so a caller reads a journal copy's
    /// bytes back only when they are needed). Default: no.
    fn archives(&self) -> bool {
        false
    }
    /// Size and store time of one blob.
    ///
    /// # Errors
    /// [`StoreError::MissingBlob`] when there is no such blob.
    async fn stat(&self, key: &str) -> Result<BlobInfo, StoreError>;
    /// A whole blob and its info, for readers that need both (the SES ingest, the
    /// reconciler). Stores that get both from one request (S3's GetObject) override it.
    async fn read_all(&self, key: &str) -> Result<(Vec<u8>, BlobInfo), StoreError> {
        use tokio::io::AsyncReadExt;
        let info = self.stat(key).await?;
        let mut bytes = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
        self.open(key)
            .await?
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StoreError::blob_read(key, e))?;
        Ok((bytes, info))
    }
    /// Every committed blob, in no particular order (for reconciliation).
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError>;
    /// Up to `max` committed blobs whose keys sort after `after` (all when `None`), in
    /// key order, and the key to continue after when there may be more: a listing with
    /// bounded memory, resumable from a saved position (the reconciler's sweep). Default:
    /// from [`BlobStore::list`].
    async fn list_page(&self, after: Option<&str>, max: usize) -> Result<BlobPage, StoreError> {
        let mut all: Vec<BlobInfo> = self
            .list()
            .await?
            .into_iter()
            .filter(|b| after.is_none_or(|a| b.key.as_str() > a))
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        let more = all.len() > max;
        all.truncate(max);
        let next = more.then(|| all.last().map(|b| b.key.clone())).flatten();
        Ok(BlobPage { blobs: all, next })
    }
}

/// One page of [`BlobStore::list_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobPage {
    pub blobs: Vec<BlobInfo>,
    /// Where the next page starts (after this key); `None`: this was the last.
    pub next: Option<String>,
}

/// A blob being written. Dropping it without `commit` leaves nothing behind that a reader
/// could see (adapters clean up temporary data on `abort` or on their next start).
#[async_trait]
pub trait BlobWriter: Send {
    /// The key the blob is stored under when it is not the message id (an S3 store
    /// writing under a prefix of its own); the record keeps it as its
    /// [`blob`](crate::model::Record::blob) so every reader finds the bytes. Default: `None`.
    fn key(&self) -> Option<String> {
        None
    }
    /// Keep `envelope` (the ingest's JSON) with the bytes, made durable by the same
    /// [`commit`](BlobWriter::commit), so the index can be rebuilt from the store alone
    /// (the local spool: `standby reindex`). Default: not kept (S3 objects are indexed
    /// by the reconciler from their own metadata).
    fn set_envelope(&mut self, _envelope: Vec<u8>) {}
    async fn write(&mut self, buf: &[u8]) -> Result<(), StoreError>;
    /// Write out the whole blob (and its envelope) so it is readable under its id now,
    /// durable only once [`commit`](BlobWriter::commit) returns: the caller may then
    /// write the index row and flush it at the same time as the blob. `false`: this
    /// store cannot (a blob is readable only once committed, S3), so the caller commits
    /// first. Default: `false`.
    async fn stage(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Make the blob (and its envelope) durable, surviving a power cut, and readable
    /// under its id (the local spool keeps it apart until [`BlobStore::publish`]).
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
    /// Throw the partial blob away.
    async fn abort(self: Box<Self>);
}

/// What `Index::list` returns.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this status; all when `None`.
    pub status: Option<Status>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Only records after this one in list order: the last record of the previous page.
    pub after: Option<Cursor>,
    /// Only records received at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only records received before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only held mail (any status but `journal`) or only journal copies.
    pub class: Option<Class>,
    /// Only this envelope sender (case-insensitive; `<>` for the null sender).
    pub from: Option<String>,
    /// Only messages to this recipient (case-insensitive; a journal copy's original
    /// recipients).
    pub rcpt: Option<String>,
    /// Only messages whose subject contains this text (case-insensitive).
    pub subject: Option<String>,
    /// Only messages whose sender, the header `From` or the envelope sender, contains
    /// this text (case-insensitive): what a user searching their inbox means by sender.
    pub sender: Option<String>,
    /// Only what one user's mailbox shows (see [`MailboxFilter`]).
    pub mailbox: Option<MailboxFilter>,
    /// Newest first (received time, then id, both descending); `after` is then the
    /// last record of the previous page in this order, so the next page is older.
    pub newest_first: bool,
}

/// What a user's emergency inbox lists (`crate::mailbox`): messages with a recipient among
/// `addresses` or one of them with a `+tag` after the local part (not among `excluded`;
/// an address with a `+` of its own has no tagged forms), that are held or
/// paused, or delivered or journal copies received at or after `kept_since`. Failed mail
/// (bounced to its sender) is not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxFilter {
    /// Lower case.
    pub addresses: Vec<String>,
    /// Lower case: addresses that are not this mailbox's even though they look like a
    /// tagged form of one of `addresses` (someone else's own address or alias).
    pub excluded: Vec<String>,
    pub kept_since: DateTime<Utc>,
}

impl MailboxFilter {
    /// Whether mail to `rcpt` is mail to one of the addresses (exactly, or with a tag).
    pub fn addressed(&self, rcpt: &str) -> bool {
        let rcpt = rcpt.to_lowercase();
        if self.excluded.contains(&rcpt) {
            return false;
        }
        let untagged = crate::model::untag(&rcpt);
        self.addresses
            .iter()
            .any(|a| *a == rcpt || untagged.as_deref() == Some(a.as_str()))
    }

    /// Whether `r` is in the mailbox.
    pub fn shows(&self, r: &Record) -> bool {
        let kept = match r.status {
            Status::Held | Status::Paused => true,
            Status::Delivered | Status::Journal => r.received_at >= self.kept_since,
            // Outside recipients only: never anyone's mailbox here.
            Status::Failed | Status::Outbound => false,
        };
        kept && r.rcpts.iter().any(|x| self.addressed(&x.address))
    }
}

impl ListQuery {
    /// Whether a record passes the class, sender, recipient and subject filters (for
    /// backends that cannot ask an index; time and cursor are the caller's range).
    pub fn matches(&self, r: &Record) -> bool {
        let class = self.class.is_none_or(|c| Class::of(r.status) == c);
        let status = self.status.is_none_or(|s| r.status == s);
        let from = self.from.as_deref().is_none_or(|f| {
            let f = if f == "<>" { "" } else { f };
            r.mail_from.eq_ignore_ascii_case(f)
        });
        let rcpt = self
            .rcpt
            .as_deref()
            .is_none_or(|want| r.rcpts.iter().any(|x| x.address.eq_ignore_ascii_case(want)));
        let subject = self.subject.as_deref().is_none_or(|want| {
            r.summary
                .subject
                .as_deref()
                .is_some_and(|s| s.to_lowercase().contains(&want.to_lowercase()))
        });
        let sender = self.sender.as_deref().is_none_or(|want| {
            let want = want.to_lowercase();
            r.mail_from.to_lowercase().contains(&want)
                || r.summary
                    .from
                    .as_deref()
                    .is_some_and(|f| f.to_lowercase().contains(&want))
        });
        let mailbox = self.mailbox.as_ref().is_none_or(|m| m.shows(r));
        class && status && from && rcpt && subject && sender && mailbox
    }

    /// Whether `c` comes after `after` in this listing's order.
    pub fn beyond(&self, c: Cursor, after: Cursor) -> bool {
        if self.newest_first {
            c < after
        } else {
            c > after
        }
    }
}

/// A listing read a page at a time, each page after the last, so any number of records
/// is read in the memory of one page (the CLI's `list`, export, replay, retention).
#[derive(Debug, Clone)]
pub struct Pages {
    /// The next page's query; `None` once a short page ended the listing.
    query: Option<ListQuery>,
}

impl Pages {
    /// Records per page.
    pub const SIZE: usize = 500;

    pub fn new(query: ListQuery) -> Self {
        Pages {
            query: Some(ListQuery {
                limit: Some(Self::SIZE),
                ..query
            }),
        }
    }

    /// The next page, or `None` when there is no more.
    pub async fn next(&mut self, index: &dyn Index) -> Result<Option<Vec<Record>>, StoreError> {
        let Some(q) = self.query.as_mut() else {
            return Ok(None);
        };
        let page = index.list(q).await?;
        q.after = page.last().map(Into::into);
        if page.len() < Self::SIZE {
            self.query = None;
        }
        Ok((!page.is_empty()).then_some(page))
    }
}

/// A place in list order (received time, then id), taken from a listed record, so a
/// long listing can be read page by page instead of all at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub received_at: DateTime<Utc>,
    pub id: MessageId,
}

impl From<&Record> for Cursor {
    fn from(r: &Record) -> Self {
        Cursor {
            received_at: r.received_at,
            id: r.id,
        }
    }
}

/// A user logged in to send mail (the submission listener, the emergency inbox): their
/// address and what they may send as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Lower case.
    pub address: String,
    /// Every address they may send as (their own first, then their aliases), lower case.
    pub addresses: Vec<String>,
    /// Tagged forms of those that are someone else's (see [`MailboxFilter::excluded`]).
    pub excluded: Vec<String>,
}

impl Identity {
    /// Whether this user may send as `address`: one of theirs, or one of theirs with a
    /// `+tag` (the rule of whose mail they read, [`MailboxFilter::addressed`]).
    pub fn may_send_as(&self, address: &str) -> bool {
        MailboxFilter {
            addresses: self.addresses.clone(),
            excluded: self.excluded.clone(),
            kept_since: DateTime::<Utc>::MIN_UTC,
        }
        .addressed(address)
    }
}

/// How a login went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    Ok(Identity),
    /// Wrong name or password (the same answer for both).
    Failed,
    /// Too many failed attempts from this client or for this name; try after this long.
    Blocked(std::time::Duration),
    /// The check could not be made (storage trouble); try later.
    Unavailable(String),
}

/// What the submission listener asks before it takes mail from a user.
#[async_trait]
pub trait SubmitGate: Send + Sync + 'static {
    /// Check a login from `client` (rate limited, audited).
    async fn login(&self, name: &str, password: &str, client: std::net::IpAddr) -> Login;
    /// Count one more message from `user` (a MAIL command accepted) if the hour still
    /// allows one: `false` when it does not. Counted before the message is received, so
    /// parallel sessions cannot all pass the check at once.
    fn take_send(&self, user: &str) -> bool;
}

/// A drain worker asks for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub now: DateTime<Utc>,
    /// The claim's lease token (random, new for every claim; see
    /// [`Lease::owner`](crate::model::Lease::owner)): renewals and the write-back must name it.
    pub owner: String,
    pub lease_until: DateTime<Utc>,
    pub limit: usize,
    /// Which queue: `held` (the drain to the primary) or `outbound` (mail users sent to
    /// outside recipients, the `outbound` module).
    pub status: Status,
    /// Claim held messages received before this time, whether due or not (expiry).
    /// When `None`, claim held messages whose `next_attempt_at <= now`.
    pub received_before: Option<DateTime<Utc>>,
    /// How far the claimers' clocks may disagree (`[drain] clock_skew_secs`): another
    /// claim's lease is taken over only once it ended at least this long before `now`,
    /// so a claimer whose clock runs ahead by less than this never takes a live lease.
    pub skew: chrono::Duration,
}

impl ClaimRequest {
    /// Leases that ended at or before this instant are free to take.
    pub fn expired_by(&self) -> DateTime<Utc> {
        self.now - self.skew.max(chrono::Duration::zero())
    }
}

/// The message index: envelope, per-recipient state and drain bookkeeping.
#[async_trait]
pub trait Index: Send + Sync + 'static {
    /// Add a record. Idempotent on the id: returns `Ok(false)` and changes nothing when a
    /// record with this id exists. Returns only once the record is durable.
    async fn insert(&self, rec: &Record) -> Result<bool, StoreError>;
    /// [`Index::insert`], except that the record may be lost by a power cut (never by a
    /// crash of the process) until the next [`Index::sync`] returns; every reader sees
    /// it at once. For the receive path, which flushes the row and the staged blob at
    /// the same time ([`BlobWriter::stage`]) and answers only when both are durable.
    /// Default: [`Index::insert`].
    async fn insert_unsynced(&self, rec: &Record) -> Result<bool, StoreError> {
        self.insert(rec).await
    }
    /// Make every write that returned before this call durable. Default: nothing (every
    /// write is durable when it returns).
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get(&self, id: MessageId) -> Result<Option<Record>, StoreError>;
    /// Records in list order: oldest first (received time, then id).
    async fn list(&self, q: &ListQuery) -> Result<Vec<Record>, StoreError>;
    async fn counts(&self) -> Result<Counts, StoreError>;
    /// How many messages have `status`: what a caller that needs one figure asks, so an
    /// index that counts by reading (DynamoDB) reads that status's records only, not the
    /// delivered archive. Default: from [`Index::counts`].
    async fn count(&self, status: Status) -> Result<u64, StoreError> {
        let c = self.counts().await?;
        Ok(match status {
            Status::Held => c.held,
            Status::Paused => c.paused,
            Status::Delivered => c.delivered,
            Status::Failed => c.failed,
            Status::Journal => c.journal,
            Status::Outbound => c.outbound,
        })
    }
    /// [`Index::count`], counting no further than `limit`: an index that counts by
    /// reading its records (DynamoDB bills each one read) stops there, so a run during an
    /// outage with a million held does not pay to count them all every minute.
    async fn count_at_most(&self, status: Status, limit: u64) -> Result<u64, StoreError> {
        Ok(self.count(status).await?.min(limit))
    }
    /// Received time of the oldest message with this status.
    async fn oldest(&self, status: Status) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Atomically lease up to `limit` held records (oldest first, in list order) whose
    /// lease is absent or ended by [`ClaimRequest::expired_by`], and return them with the
    /// new lease set. Two concurrent claims never return the same record while its lease
    /// runs. A claim changes only the lease, not the record's version.
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Record>, StoreError>;
    /// Extend the lease of the claim whose token is `owner` on `id` to `until`. A drain
    /// renews right before each delivery attempt and keeps renewing while it runs, so a
    /// lease that ran out is never used to send: `Ok(false)` when `owner` no longer holds
    /// the lease (another claim took the message after it ran out, an operator changed
    /// it) or the record is gone. Keeps the version; need not be durable when it returns
    /// (after a crash nobody is left to use the lease).
    async fn renew(
        &self,
        id: MessageId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Write back a claimed record after an attempt and drop its lease, only if the
    /// claim whose token is `owner` still holds the lease and the stored version is
    /// still `rec.version`; the stored version becomes `rec.version + 1`.
    ///
    /// # Errors
    /// [`StoreError::Leased`] when `owner` no longer holds the lease (it expired and another
    /// claim took the record, or an operator changed it): the caller's result is
    /// discarded. [`StoreError::Changed`] when the version moved; [`StoreError::NotFound`].
    async fn complete(&self, rec: &Record, owner: &str) -> Result<(), StoreError>;
    /// Operator write (hold, release, retry, legal hold, replay marks): replaces the record
    /// only if the stored version is still `rec.version` (the one the caller read) and no
    /// live lease is held on it at `now`; the stored version becomes `rec.version + 1`.
    ///
    /// # Errors
    /// [`StoreError::Leased`] when a drain holds the record; [`StoreError::Changed`] when
    /// someone wrote it since it was read; [`StoreError::NotFound`].
    async fn update(&self, rec: &Record, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Replace only the record's verdicts (the sender check, which finishes after the
    /// message was accepted), leaving every other field as stored, unless a live lease is
    /// held on it: a drain writes its whole copy back, and would undo the change. Moves
    /// the version on (a whole-record write read before it then fails as changed). Need
    /// not be durable when it returns (a lost verdict is still pending, and is checked
    /// again when a bounce depends on it).
    ///
    /// # Errors
    /// [`StoreError::Leased`] when a drain holds the record; [`StoreError::NotFound`].
    async fn set_verdicts(
        &self,
        id: MessageId,
        verdicts: &Verdicts,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Remove a record as it was read: only if the stored version is still `rec.version`,
    /// the stored record is not under legal hold and no drain holds a lease on it that
    /// runs past `now` (all checked in the delete's own condition, so a hold placed or a
    /// claim made after the read is never ignored: a message a drain is sending is not
    /// deleted under it). `Ok(false)` when there was none.
    ///
    /// # Errors
    /// [`StoreError::LegalHold`] when the stored record is under legal hold;
    /// [`StoreError::Leased`] when a drain holds it; [`StoreError::Changed`] when it was
    /// written since it was read.
    async fn delete(&self, rec: &Record, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Remove the row of a message that was never acknowledged (its file's or its row's
    /// flush failed, so the client got 451), whatever its version, lease or legal hold
    /// (a retention rule may have set one at receipt), leaving a tombstone where deletes
    /// do. It needs no flush of its own, and must not need one: it runs when a flush has
    /// just failed. A power cut may bring the row back; the start then drops a row whose
    /// message is nowhere. Returns whether there was a row. Only the receive path of a
    /// store that stages (the local spool: SQLite, and the in-memory index of tests) calls
    /// it; the default, for the others, is [`Index::delete`] at the end of time (no lease
    /// outlives it), which a hold or a newer version still refuses.
    async fn discard(&self, rec: &Record) -> Result<bool, StoreError> {
        self.delete(rec, DateTime::<Utc>::MAX_UTC).await
    }
    /// The health record `node` saved, if any.
    async fn load_health(&self, node: &str) -> Result<Option<HealthRecord>, StoreError>;
    /// Store `h` as the record of `h.node`, replacing only that node's record: nodes
    /// sharing one index (several `serve` processes, the drain function) each keep their own.
    /// A compare-and-set: only if the stored record's version is `h.version` (0: no
    /// record, or one saved before versions), storing `h.version + 1`.
    ///
    /// # Errors
    /// [`StoreError::HealthChanged`] when another run saved it since it was read
    /// (`crate::health::update` reads it again and applies its change again).
    async fn save_health(&self, h: &HealthRecord) -> Result<(), StoreError>;
    /// Every node's health record, ordered by node.
    async fn list_health(&self) -> Result<Vec<HealthRecord>, StoreError>;
}

/// One line of the audit log: a deletion, a legal hold or its release; a login to the
/// emergency inbox, a failed one, a logout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// `delete`, `legal-hold`, `legal-release`, `orphan`; `login`, `login-failed`,
    /// `logout`.
    pub action: String,
    /// The message; `None` for a session event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<MessageId>,
    /// Who: `retention` (the policy job), `operator:<user>`, `web:<address>`.
    pub by: String,
    /// The rule or reason: `journal_days = 2555`, `confidential rule hr`, `--reason` text;
    /// for a session event where it came from (`from 192.0.2.7`).
    pub reason: String,
    /// The message's status and receipt time when it happened (message events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
}

impl AuditEntry {
    /// An entry for `action` on `rec` at `now`.
    pub fn of(rec: &Record, action: &str, by: &str, reason: &str, now: DateTime<Utc>) -> Self {
        AuditEntry {
            at: now,
            action: action.into(),
            id: Some(rec.id),
            by: by.into(),
            reason: reason.into(),
            status: Some(rec.status),
            received_at: Some(rec.received_at),
        }
    }

    /// A session event (`login`, `login-failed`, `logout`) of `who` at `now`.
    pub fn session(action: &str, who: &str, reason: &str, now: DateTime<Utc>) -> Self {
        AuditEntry {
            at: now,
            action: action.into(),
            id: None,
            by: who.into(),
            reason: reason.into(),
            status: None,
            received_at: None,
        }
    }
}

/// The append-only audit log of deletions and legal holds (`standby audit`).
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Append one entry; returns once it is durable.
    async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Every entry, oldest first.
    async fn entries(&self) -> Result<Vec<AuditEntry>, StoreError>;
    /// The newest `max` entries, newest first (the console's page): an adapter that can
    /// read from the end does, instead of reading everything.
    async fn recent(&self, max: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut all = self.entries().await?;
        all.reverse();
        all.truncate(max);
        Ok(all)
    }
}

/// The continuity record (one per store, see [`crate::model::continuity`]) and one-time
/// marks: a notice sent for an event and user, a login link used.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// The stored record (an empty one, version 0, when there is none yet).
    async fn load(&self) -> Result<Continuity, StoreError>;
    /// Save over the version read (`c.version`), bumping it; another save in between
    /// gives [`StoreError::FileChanged`] and writes nothing.
    async fn save(&self, c: &Continuity) -> Result<(), StoreError>;
    /// Set the mark `key` if it is not set: `true` the first time only, under any
    /// concurrency. It holds until `keep_until`; after that it counts as not set (a
    /// store may remove it any time later).
    async fn mark_once(&self, key: &str, keep_until: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Whether the mark `key` is set (and not past its time).
    async fn marked(&self, key: &str) -> Result<bool, StoreError>;
    /// Clear a mark (a notice whose sending failed, to be sent again).
    async fn unmark(&self, key: &str) -> Result<(), StoreError>;
}

/// HTTP out of band: the alert webhook and the heartbeat (see [`crate::continuity`]).
#[async_trait]
pub trait Http: Send + Sync + 'static {
    /// POST `body` with `headers`; a status other than 2xx is an error.
    async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(), NotifyError>;
    /// GET `url`; a status other than 2xx is an error.
    async fn get(&self, url: &str) -> Result<(), NotifyError>;
}

/// Plain-text mail to addresses outside the domains that are down (alerts, notices),
/// through the outbound path.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn mail(&self, to: &[String], subject: &str, text: &str) -> Result<(), NotifyError>;
}

/// Amazon SNS: a topic's subscribers (e-mail, SMS) and text messages to one phone.
#[async_trait]
pub trait Sns: Send + Sync + 'static {
    async fn publish(&self, topic: &str, subject: &str, text: &str) -> Result<(), NotifyError>;
    async fn sms(&self, phone: &str, text: &str) -> Result<(), NotifyError>;
}

/// Where time comes from, so tests can move it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// An SMTP reply as received from the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            text: text.into(),
        }
    }
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// The enhanced status code the reply's text starts with (`5.7.1` of
    /// `550 5.7.1 Relay access denied`), if any.
    pub fn enhanced(&self) -> Option<&str> {
        self.text
            .split_ascii_whitespace()
            .next()
            .filter(|c| is_enhanced_code(c))
    }
}

/// An RFC 3463 enhanced status code: class 2, 4 or 5, then subject and detail of one to
/// three digits each (`5.7.1`).
pub fn is_enhanced_code(s: &str) -> bool {
    let mut parts = s.split('.');
    let class_ok = parts.next().is_some_and(|c| matches!(c, "2" | "4" | "5"));
    let rest: Vec<&str> = parts.collect();
    class_ok
        && rest.len() == 2
        && rest
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Run a storage call up to `tries` times, waiting 0.2 s, then 0.8 s, 3.2 s... between,
/// while it fails with an error that waiting can cure ([`StoreError::is_transient`]; a
/// lease taken, a record changed or gone will not come back, and is returned at once).
/// For the writes that must follow something already done (a write-back after the
/// primary answered, a blob delete after its record went).
pub async fn retry_transient<T, F, Fut>(tries: u32, what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = std::time::Duration::from_millis(200);
    let mut tried = 1;
    loop {
        match op().await {
            Err(e)
                if tried < tries
                    && e.is_transient()
                    && !matches!(
                        e,
                        StoreError::Leased(_) | StoreError::Changed(_) | StoreError::NotFound(_)
                    ) =>
            {
                tracing::warn!(error = %e, "{what} failed; trying again");
                tokio::time::sleep(wait).await;
                wait *= 4;
                tried += 1;
            }
            other => return other,
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// The replies of one mail transaction with the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub mail: Reply,
    /// One per recipient, in the order given; empty when MAIL was refused.
    pub rcpts: Vec<Reply>,
    /// The reply to DATA when it was refused, else the reply after the final dot;
    /// `None` when DATA was never sent because no recipient was accepted.
    pub data: Option<Reply>,
    /// The final dot was sent and no reply came (timeout, lost connection): the primary
    /// may have the message. `data` then holds a 4xx that says so, and the session is
    /// unusable.
    pub ambiguous: bool,
}

/// Opens sessions to the primary.
#[async_trait]
pub trait Relay: Send + Sync + 'static {
    /// Connect, read the banner, EHLO, STARTTLS and AUTH as configured.
    async fn connect(&self) -> Result<Box<dyn RelaySession>, RelayError>;
}

/// One open session with the primary; may carry many transactions.
#[async_trait]
pub trait RelaySession: Send {
    /// Run one mail transaction. Per-command refusals come back inside the
    /// [`Transaction`]; an `Err` means the session is unusable (I/O, timeout, protocol).
    async fn send(
        &mut self,
        mail_from: &str,
        rcpts: &[String],
        body: BlobReader,
    ) -> Result<Transaction, RelayError>;
    /// Say QUIT and close; errors are ignored.
    async fn quit(self: Box<Self>);
}

/// Delivers mail users sent to outside recipients (the `outbound` module): a smarthost,
/// direct MX delivery, or SES.
#[async_trait]
pub trait Outbound: Send + Sync + 'static {
    /// Deliver `message` (whole, signed as it should go out) from `mail_from` to each of
    /// `rcpts`. One reply per recipient, in the order given: 2xx delivered, 4xx to try
    /// again later, 5xx failed for good. Trouble reaching anyone is a 4xx for each
    /// recipient it concerns. Every body sent goes through `guard` (which ends it with an
    /// error, before the final dot, once the queue's lease on the message is lost).
    async fn send(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        guard: &Guard<'_>,
    ) -> Vec<Reply>;
}

/// Wraps each message body an [`Outbound`] sends (see [`Outbound::send`]).
pub type Guard<'a> = dyn Fn(BlobReader) -> BlobReader + Send + Sync + 'a;

/// Checks whether the primary answers SMTP (banner, EHLO, QUIT).
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// `Ok` with a short description (e.g. the banner's host) when the primary answered
    /// 220 and 250; `Err` says what went wrong.
    async fn probe(&self) -> Result<String, RelayError>;
}

/// Checks the envelope sender of an accepted message (after its 250, in the background),
/// so a bounce can later go only to a sender who is who they claim to be (see
/// [`crate::dsn`]). Callers bound the time a check may take.
#[async_trait]
pub trait SenderCheck: Send + Sync + 'static {
    /// The SPF result (RFC 7208 §2.6) for `mail_from` sent from `ip` after `helo`, in
    /// upper case as SES writes its verdicts: `PASS`, `FAIL`, `SOFTFAIL`, `NEUTRAL`,
    /// `NONE`, `TEMPERROR`, `PERMERROR`.
    async fn spf(&self, ip: std::net::IpAddr, helo: &str, mail_from: &str) -> String;
}

/// Seals a message with an ARC set (RFC 8617) when the drain hands it back, so a
/// primary that trusts the standby's signing domain can use the verdicts of the original
/// session although the standby is now its client.
#[async_trait]
pub trait ArcSeal: Send + Sync + std::fmt::Debug + 'static {
    /// The three ARC fields (CRLF-terminated) to put on top of `message`, the bytes the
    /// primary gets below them. `methods` are the standby's `Authentication-Results`
    /// (see [`crate::model::auth_results::methods`]) under `authserv_id`; the sealer
    /// adds the `arc=` verdict of the chain the message came with, and the caller puts
    /// `methods` on top as its field. `None`: not sealed (the reason is logged); the
    /// message goes on without a set.
    async fn seal(
        &self,
        id: MessageId,
        message: BlobReader,
        authserv_id: &str,
        methods: &mut Vec<String>,
    ) -> Option<String>;
}

/// A DNS blocklist's entry for a client address (RFC 5782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The list's zone, as configured.
    pub zone: String,
    /// The list's TXT reason, printable ASCII on one line; none when it gives none.
    pub reason: Option<String>,
}

/// Whether a connecting client is on a blocklist (`[filter] dnsbl`, see
/// `crate::smtp::dnsbl`). Callers bound the time a check may take.
#[async_trait]
pub trait ClientCheck: Send + Sync + 'static {
    /// The first configured list naming `ip`; `Ok(None)` when every list answered and
    /// none does; `Err` (why, for the log) when some list did not answer and none that
    /// did names it: the client is let in unfiltered.
    async fn listed(&self, ip: std::net::IpAddr) -> Result<Option<Listing>, String>;
}

/// What a content filter (rspamd) said of a message (`[filter] rspamd_url`, see
/// `crate::smtp::rspamd`).
#[derive(Debug, Clone, PartialEq)]
pub enum ContentVerdict {
    /// Above the filter's reject score: refused at DATA, never stored.
    Reject { reason: String },
    /// The filter asks to try again later (its `soft reject`): 451, never stored.
    TryLater { reason: String },
    /// Spam below the reject score: stored, and shown in the users' Junk view.
    Spam { score: f64 },
    /// Not spam.
    Clean { score: f64 },
}

/// What the listener tells the content filter about the session, besides the message.
#[derive(Debug, Clone, Default)]
pub struct ContentMeta {
    pub ip: String,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The listener's name (rspamd's `Hostname`/`MTA-Name`).
    pub hostname: String,
}

/// A content filter the MX listener asks before its 250. Callers bound the time a check
/// may take, and a filter that fails lets the message in unfiltered: a 250 never waits on
/// a filter that is down.
#[async_trait]
pub trait ContentCheck: Send + Sync + 'static {
    /// The verdict on `message` (the whole message as it will be stored).
    ///
    /// # Errors
    /// Why the filter gave none (unreachable, an answer it could not read), for the log.
    async fn check(&self, meta: &ContentMeta, message: Vec<u8>) -> Result<ContentVerdict, String>;
}

/// One event the ingest function gave up on (Lambda's on-failure destination holds it).
#[derive(Debug, Clone)]
pub struct FailedEvent {
    /// Names it for [`FailedEvents::done`].
    pub handle: String,
    /// The event as the ingest function was invoked with it.
    pub event: serde_json::Value,
    /// How many times it was taken, this time included.
    pub receives: u32,
}

/// The ingest function's failed events, for the drain function to ingest again: an event
/// that failed because a drain held its record (an ingest that must add recipients waits
/// only so long) or because the index was unavailable still carries the exact envelope,
/// which the reconciler cannot recover from headers.
#[async_trait]
pub trait FailedEvents: Send + Sync {
    /// Up to `max` events. Each one not [`done`](FailedEvents::done) comes back later.
    async fn take(&self, max: usize) -> Result<Vec<FailedEvent>, StoreError>;
    /// The event was ingested: remove it.
    async fn done(&self, handle: &str) -> Result<(), StoreError>;
}

/// A whole file read with the version a conditional write names (the users' passwd-file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub bytes: Vec<u8>,
    /// Opaque: a content hash locally, the ETag on S3.
    pub version: String,
}

/// The emergency inbox's users (`[users]`): the passwd-file and the aliases, where the
/// backend keeps them (a local file; the S3 object `users/passwd`), read by the web app
/// and written by `standby user`.
#[async_trait]
pub trait UserFiles: Send + Sync + 'static {
    /// Where the passwd-file is, for messages (`/etc/standby/users.passwd`,
    /// `s3://bucket/users/passwd`).
    fn passwd_name(&self) -> String;
    /// Where the aliases are, for messages; `None` when none are configured.
    fn aliases_name(&self) -> Option<String>;
    /// The passwd-file; `None` when there is none yet.
    async fn read_passwd(&self) -> Result<Option<Versioned>, StoreError>;
    /// The aliases file; `None` when none is configured or it does not exist.
    async fn read_aliases(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replace the passwd-file with `bytes` (durably, all or nothing), only if it is
    /// still at `version` (`None`: only if there is none).
    ///
    /// # Errors
    /// [`StoreError::FileChanged`] when it was written since it was read.
    async fn write_passwd(&self, bytes: &[u8], version: Option<&str>) -> Result<(), StoreError>;
}

/// Failed logins counted per key (`ip:192.0.2.7`, `user:alice@example.com`) in a window
/// that starts at the first, shared by everything that serves the inbox: one `serve`
/// process keeps them in memory, the web function's instances in the table. Only
/// failures count, so a team behind one address can all log in; a key with `max`
/// failures in the running window is refused until the window ends.
#[async_trait]
pub trait LoginLimits: Send + Sync + 'static {
    /// `Some(wait)` when `key` has `max` failures counted in the window running at `now`
    /// (refused until it ends, in `wait`); `None` when it may try.
    async fn blocked(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window: chrono::Duration,
        max: u32,
    ) -> Result<Option<chrono::Duration>, StoreError>;
    /// Count one failure for `key` at `now` (a new window starts when none is running);
    /// returns the count in the window it was counted in, itself included (what the
    /// write itself returned: instances counting at once each get their own number).
    async fn failed(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Result<u32, StoreError>;
}

/// Each user's UIDs and flags (see [`crate::model::mailbox`]): what IMAP and POP3 clients
/// remember of the held mail, kept beside the index (a file of its own on the local
/// spool). A user's mailbox is made at its first use, with a UIDVALIDITY of its own.
#[async_trait]
pub trait Mailboxes: Send + Sync + 'static {
    /// `user`'s mailbox as stored (made now, empty, if it is new).
    async fn load(&self, user: &str) -> Result<crate::model::mailbox::MailboxState, StoreError>;
    /// Give each of `ids` that needs one the next UID, in the order given: those without
    /// a UID, and those whose entry is [`Flags::GONE`](crate::model::mailbox::Flags::GONE)
    /// (left the view, came back; not hidden by the user), which move to the new UID
    /// with their flags, the old one never shown again. Two sessions assigning at once
    /// never share a UID nor give one message two. Returns the mailbox after it.
    async fn assign(
        &self,
        user: &str,
        ids: &[MessageId],
    ) -> Result<crate::model::mailbox::MailboxState, StoreError>;
    /// Change the flags of the UIDs given, each against what is stored then (unknown
    /// UIDs are skipped).
    async fn change_flags(
        &self,
        user: &str,
        changes: &[crate::model::mailbox::FlagChange],
    ) -> Result<(), StoreError>;
}

/// Attachments a browser uploads straight into the store, by a presigned PUT, where the
/// web app's host cannot carry them: a Lambda function URL takes at most 6 MB a request
/// (`standby-web`). Keys are made by the web app (`uploads/<user's hash>/<ulid>`), never
/// taken from the browser, so a user can name only their own uploads.
#[async_trait]
pub trait Uploads: Send + Sync + 'static {
    /// Where the browser sends the bytes (`scheme://host[:port]`), for the page's
    /// Content-Security-Policy.
    fn origin(&self) -> String;
    /// A URL the browser may PUT one file of exactly `size` bytes to under `key`
    /// within `expires`.
    async fn presign_put(
        &self,
        key: &str,
        size: u64,
        expires: std::time::Duration,
    ) -> Result<String, StoreError>;
    /// The bytes uploaded under `key` (`None`: nothing there, or past `max` bytes, which
    /// is then removed).
    async fn read(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Remove what was uploaded under `key` (once it is in a stored message).
    async fn remove(&self, key: &str) -> Result<(), StoreError>;
}
