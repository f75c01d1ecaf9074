//! The domain model: what a held message is, independent of where it is stored.
//!
//! A [`Record`] is the index entry for one accepted message. Its raw bytes live in a
//! [`BlobStore`](crate::ports::BlobStore) under the same [`MessageId`]; the record carries the
//! envelope (the only thing that is redelivered besides the bytes), per-recipient delivery
//! state, and the drain's bookkeeping (attempts, next attempt, lease).
//!
//! The message status is *derived* from the recipients (see [`Record::settle`]) except for
//! `paused`, which is an operator decision layered on top of `held`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod address;
pub mod auth_results;
pub mod continuity;
pub mod lines;
pub mod mailbox;
pub use address::{Address, AddressError, untag};

/// Time-sortable message identifier (a ULID): sorting ids sorts by arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(ulid::Ulid);

impl MessageId {
    /// The id for a blob that was stored under a name we did not choose (an SES message
    /// id): the time part is the blob's modification time in whole seconds and the
    /// random part comes from a hash of the name. Every process that sees the same blob
    /// (ingest, its retries, the reconciler) derives the same id, which makes indexing it
    /// idempotent without a second lookup item.
    pub fn derived(name: &str, stored_at: DateTime<Utc>) -> Self {
        use sha2::{Digest, Sha256};
        let secs = u64::try_from(stored_at.timestamp()).unwrap_or(0);
        let digest = Sha256::digest(name.as_bytes());
        let mut bits = [0u8; 16];
        bits[6..].copy_from_slice(&digest[..10]);
        MessageId(ulid::Ulid::from_parts(
            secs * 1000,
            u128::from_be_bytes(bits),
        ))
    }

    /// The receipt time the id carries (to the millisecond).
    /// The id's 16 bytes (a ULID's binary form), for compact stored lists.
    pub fn to_bytes(&self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// The id whose bytes [`MessageId::to_bytes`] gave.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        MessageId(ulid::Ulid::from_bytes(bytes))
    }

    pub fn received_at(&self) -> DateTime<Utc> {
        let ms = i64::try_from(self.0.timestamp_ms()).unwrap_or(0);
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    /// A new id for a message received at `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        MessageId(ulid::Ulid::from_parts(ms, rand_bits()))
    }
}

fn rand_bits() -> u128 {
    // ulid's own generator; keeps the dependency list short.
    ulid::Ulid::new().random()
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The text was not a message id (26 characters of Crockford base32).
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a message id (expected 26 characters like 01JD3X8Q2T5M7K9V0W4Y6Z8A1B)")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s.trim())
            .map(MessageId)
            .map_err(|_| BadMessageId(s.to_string()))
    }
}

/// Where a message stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for the primary; the drain will pick it up when due.
    Held,
    /// Held, but the operator said not to deliver it (`standby hold`).
    Paused,
    /// Every recipient was accepted by the primary.
    Delivered,
    /// No recipient is pending and at least one failed permanently (or the message expired).
    Failed,
    /// A journal copy sent by the primary (see [`crate::journal`]): archived, never
    /// drained; `standby replay` delivers it again on request.
    Journal,
    /// Sent by a user during the outage to recipients outside our domains: the outbound
    /// queue (the `outbound` module) delivers it, never the drain to the primary.
    Outbound,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Held,
        Status::Paused,
        Status::Delivered,
        Status::Failed,
        Status::Journal,
        Status::Outbound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Held => "held",
            Status::Paused => "paused",
            Status::Delivered => "delivered",
            Status::Failed => "failed",
            Status::Journal => "journal",
            Status::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status `{s}` (held, paused, delivered, failed, journal, outbound)")
            })
    }
}

/// What a message is kept for: held mail (to deliver) or a journal copy (to archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Held,
    Journal,
}

impl Class {
    pub fn of(status: Status) -> Class {
        match status {
            Status::Journal => Class::Journal,
            _ => Class::Held,
        }
    }
}

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    Pending,
    Delivered,
    Failed,
}

/// One accepted recipient and what the primary last said about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub status: RcptStatus,
    /// The last SMTP reply for this recipient, e.g. `450 4.2.0 mailbox busy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Failed, and its failure decided on: reported to the sender in a queued DSN, or
    /// suppressed (`crate::dsn::settle`). A recipient added to a failed record later (a
    /// late SES event) is not, so its own failure gets its own decision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bounced: bool,
}

impl Recipient {
    pub fn pending(address: impl Into<String>) -> Self {
        Recipient {
            address: address.into(),
            status: RcptStatus::Pending,
            reply: None,
            bounced: false,
        }
    }
}

/// Headers parsed from the message for listing; never used for delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub date: Option<String>,
}

/// Who handed us the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub ip: String,
    pub helo: String,
    pub tls: bool,
    /// The user who logged in to send it (submission and the emergency inbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// How a message came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intake {
    /// Our own SMTP listener (`standby serve`).
    #[default]
    Smtp,
    /// Amazon SES inbound: a receipt rule stored it in S3 and invoked the ingest function.
    Ses,
    /// Found in the blob store without an index entry (the ingest function never ran or
    /// failed past its retries) and indexed from its headers by the reconciler. The
    /// envelope is then a reconstruction, so an SES event arriving later replaces it.
    Reconciled,
    /// A delivery status notification we generated for a message that failed (see
    /// [`crate::dsn`]); its sender is `<>`, so it never causes another.
    Dsn,
    /// Sent by one of our users (the submission listener, the emergency inbox): to our
    /// own recipients (held for the primary) or to outside ones (status `outbound`).
    Submission,
    /// The copy of what a user sent, for their own mailbox at the primary (with
    /// `X-Standby-Sent: yes`; see the `outbound` module).
    Sent,
}

impl Intake {
    pub fn as_str(self) -> &'static str {
        match self {
            Intake::Smtp => "smtp",
            Intake::Ses => "ses",
            Intake::Reconciled => "reconciled",
            Intake::Dsn => "dsn",
            Intake::Submission => "submission",
            Intake::Sent => "sent",
        }
    }
}

/// The receiving service's verdicts on a message (SES: spam, virus, SPF, DKIM, DMARC),
/// kept as given (`PASS`, `FAIL`, `GRAY`, `PROCESSING_FAILED`, `DISABLED`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdicts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<String>,
    /// The sender domain's DMARC policy, present when DMARC failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc_policy: Option<String>,
}

impl Verdicts {
    /// The SPF verdict of a message accepted by our own listener whose check has not
    /// finished yet (it runs after the 250; see [`Verdicts::spf_pending`]).
    /// Not a pass: until it is replaced, the sender counts as not authenticated.
    pub const PENDING: &'static str = "PENDING";

    /// The spam verdict of a message our listener took while its content filter gave no
    /// answer (down, slow): taken unfiltered, never held back for it.
    pub const UNFILTERED: &'static str = "UNFILTERED";

    /// Verdicts of a message whose SPF check is still to come.
    pub fn pending() -> Self {
        Verdicts {
            spf: Some(Self::PENDING.into()),
            ..Default::default()
        }
    }

    /// Just an SPF result.
    pub fn spf(result: impl Into<String>) -> Self {
        Verdicts {
            spf: Some(result.into()),
            ..Default::default()
        }
    }

    /// Whether the SPF check was queued at receipt and has not stored its result yet (a
    /// restart, a full queue, or a drain holding the message when it finished).
    pub fn spf_pending(&self) -> bool {
        self.spf.as_deref() == Some(Self::PENDING)
    }

    /// Whether the envelope sender was authenticated: SPF or DMARC passed. Only then may
    /// a bounce go to it (anything else risks backscatter to a forged address).
    pub fn sender_authenticated(&self) -> bool {
        let pass =
            |v: &Option<String>| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("PASS"));
        pass(&self.spf) || pass(&self.dmarc)
    }

    /// Whether the receiving service judged the message spam or a virus.
    pub fn flagged(&self) -> bool {
        let fail =
            |v: &Option<String>| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("FAIL"));
        fail(&self.spam) || fail(&self.virus)
    }
}

/// What became of the bounce for a failed message: at most one per message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Bounce {
    /// A DSN to the envelope sender was queued as its own record.
    Queued { id: MessageId },
    /// No DSN was sent; the message is parked for the operator.
    Suppressed { why: String },
}

/// A drain worker's claim on a record; expires at `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The claim's lease token: random and new for every claim (never shared by two
    /// workers, nor by two claims of one worker), so renewals and the write-back succeed
    /// only for the claim that holds the lease now.
    pub owner: String,
    pub until: DateTime<Utc>,
}

/// The index entry for one accepted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: MessageId,
    pub status: Status,
    /// MAIL FROM as received; empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpts: Vec<Recipient>,
    pub received_at: DateTime<Utc>,
    /// Stored size in bytes, including our `Received:` header.
    pub size: u64,
    /// Hex sha256 of the stored bytes.
    pub sha256: String,
    /// Hex XXH3-128 of the stored bytes, when this program wrote them ([`xxh3_hex`]): what
    /// the drain checks the bytes it sends against, at a tenth of SHA-256's CPU. Absent
    /// from records made before it and from other writers' (SES's): then the drain checks
    /// the SHA-256 where it checks at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
    pub summary: Summary,
    pub origin: Origin,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Why the message failed as a whole (`expired`, the primary's reply, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Key of the raw message in the blob store when it is not the id (SES names its
    /// objects by its own message id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    #[serde(default)]
    pub intake: Intake,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<Verdicts>,
    /// Set once the message failed: the DSN queued for it, or why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce: Option<Bounce>,
    /// The bounce was decided by a version that marks each recipient it covered
    /// ([`Recipient::bounced`]): failed recipients without the mark are still to decide.
    /// A record bounced before (`bounce` set, this false) counts as decided for all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bounce_marks: bool,
    /// Set on a journal copy: its journal envelope and where its recipients came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalCopy>,
    /// Replay runs that delivered this message again (`standby replay`), so a rerun with
    /// the same run id skips it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<Replayed>,
    /// Under legal hold: no deletion of any kind (retention, purge, expiry of the copy)
    /// until an operator releases it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_hold: Option<LegalHold>,
    /// The retention rule that marked this message confidential at receipt (see
    /// [`crate::retention`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidential: Option<String>,
    /// Sent by one of our users: which part of what they sent (the outside recipients'
    /// part is never the primary's to deliver, whatever its status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<SentPart>,
    /// The record's version as read from the index: every change of the record (a
    /// drain's write-back, an operator's change, a verdict, a legal hold) is written only
    /// if the stored version is still this one, and stores the next (compare-and-set), so
    /// no writer overwrites a change it never saw. Claims and renewals change only the
    /// lease and keep it. A record written before versions existed reads as 0.
    #[serde(default)]
    pub version: u64,
}

/// What a blob store that deletes on its own (S3: the bucket's lifecycle rule, which acts
/// on the object's `standby-state` tag) may do with a message's bytes. It follows the
/// record: whoever changes one of the things it depends on (the status, the legal hold)
/// marks the bytes again after writing the record (see `crate::retention::mark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Delivered and not under legal hold: the store may delete the bytes when its own
    /// retention says so.
    Expirable,
    /// Under legal hold: never.
    LegalHold,
    /// Still to deliver (held, paused, failed), or a journal copy: only the retention
    /// job, which reads the record, deletes it.
    Keep,
}

/// A legal hold placed by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalHold {
    pub at: DateTime<Utc>,
    /// Who placed it and why, as given (`--reason`).
    pub reason: String,
}

/// One replay of a message to the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    pub run: String,
    pub at: DateTime<Utc>,
    /// Recipients the primary accepted in this run.
    pub rcpts: Vec<String>,
}

/// The hex XXH3-128 of `bytes`, as [`Record::xxh3`] holds it.
pub fn xxh3_hex(bytes: &[u8]) -> String {
    xxh3_text(xxhash_rust::xxh3::xxh3_128(bytes))
}

/// An XXH3-128 digest as [`Record::xxh3`] holds it (32 hex digits), however it was taken
/// (at once, or streamed as the bytes pass).
pub fn xxh3_text(digest: u128) -> String {
    format!("{digest:032x}")
}

impl Record {
    /// A newly received message: held, every recipient pending, due at once. The intake,
    /// origin, blob name and verdicts are the caller's to set (they default to our own
    /// listener's: `smtp`, no origin, blob named by the id, no verdicts).
    pub fn held(
        id: MessageId,
        mail_from: String,
        rcpts: Vec<String>,
        received_at: DateTime<Utc>,
        bytes: (u64, String),
        summary: Summary,
    ) -> Record {
        let (size, sha256) = bytes;
        Record {
            id,
            status: Status::Held,
            mail_from,
            rcpts: rcpts.into_iter().map(Recipient::pending).collect(),
            received_at,
            size,
            sha256,
            xxh3: None,
            summary,
            origin: Origin::default(),
            attempts: 0,
            next_attempt_at: received_at,
            lease: None,
            reason: None,
            updated_at: received_at,
            blob: None,
            intake: Intake::Smtp,
            verdicts: None,
            bounce: None,
            bounce_marks: false,
            journal: None,
            replays: Vec::new(),
            legal_hold: None,
            confidential: None,
            sent: None,
            version: 0,
        }
    }

    /// What the blob store's own retention may do with the raw bytes (see [`Disposal`]).
    pub fn disposal(&self) -> Disposal {
        if self.legal_hold.is_some() {
            Disposal::LegalHold
        } else if self.status == Status::Delivered {
            Disposal::Expirable
        } else {
            Disposal::Keep
        }
    }

    /// Where the raw bytes are in the blob store.
    pub fn blob_key(&self) -> String {
        self.blob.clone().unwrap_or_else(|| self.id.to_string())
    }

    /// The status that makes this message due again: `outbound` for the outside
    /// recipients' part of what a user sent (never the primary's to deliver), else `held`.
    pub fn queue_status(&self) -> Status {
        if self.sent == Some(SentPart::Outbound) {
            Status::Outbound
        } else {
            Status::Held
        }
    }

    /// Recipients still waiting for delivery.
    pub fn pending(&self) -> impl Iterator<Item = &Recipient> {
        self.rcpts
            .iter()
            .filter(|r| r.status == RcptStatus::Pending)
    }

    /// Recompute the message status from the recipients. `paused` is kept while any
    /// recipient is still pending, because it is the operator's decision, not the primary's.
    pub fn settle(&mut self) {
        if self.status == Status::Journal {
            return; // archived, never delivered by the drain
        }
        let any_pending = self.rcpts.iter().any(|r| r.status == RcptStatus::Pending);
        let any_failed = self.rcpts.iter().any(|r| r.status == RcptStatus::Failed);
        self.status = if any_pending {
            if self.status == Status::Paused {
                Status::Paused
            } else {
                // `outbound` for what a user sent to outside recipients, whatever it was
                // (a failed one put back to pending), so it never becomes the drain's.
                self.queue_status()
            }
        } else if any_failed {
            Status::Failed
        } else {
            Status::Delivered
        };
    }
}

/// Messages per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub held: u64,
    pub paused: u64,
    pub delivered: u64,
    pub failed: u64,
    pub journal: u64,
    /// Sent by users to outside recipients and not yet delivered there.
    #[serde(default)]
    pub outbound: u64,
}

impl Counts {
    pub fn add(&mut self, status: Status, n: u64) {
        match status {
            Status::Held => self.held += n,
            Status::Paused => self.paused += n,
            Status::Delivered => self.delivered += n,
            Status::Failed => self.failed += n,
            Status::Journal => self.journal += n,
            Status::Outbound => self.outbound += n,
        }
    }
}

/// Reduce an address to what may be logged at info: the domain only.
pub fn redact(address: &str) -> &str {
    match address.rsplit_once('@') {
        Some((_, domain)) => domain,
        None => "",
    }
}

/// `text` (a reply of the primary, say) with the local part of every address in it
/// replaced by `*`: `550 5.1.1 <bob@example.test>: Recipient address rejected` becomes
/// `550 5.1.1 <*@example.test>: ...`, so info logs keep the domain only.
pub fn redact_text(text: &str) -> String {
    let stop = |c: char| {
        c.is_whitespace() || matches!(c, '<' | '>' | '"' | ',' | ':' | ';' | '(' | ')' | '[' | ']')
    };
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('@').enumerate() {
        if i == 0 {
            out.push_str(part);
            continue;
        }
        // `out` ends with the local part of the address this '@' belongs to (quoted or not).
        if out.ends_with('"')
            && let Some(open) = out[..out.len() - 1].rfind('"')
        {
            out.truncate(open + 1);
            out.push_str("*\"@");
            out.push_str(part);
            continue;
        }
        let keep = out.trim_end_matches(|c: char| !stop(c)).len();
        if keep < out.len() {
            out.truncate(keep);
            out.push('*');
        }
        out.push('@');
        out.push_str(part);
    }
    out
}

// ---- A message being received (see `crate::ingest`) ----

/// The envelope of a message being received.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub origin: Origin,
    /// Sent to journal addresses: filed as a journal copy, never drained.
    pub journal: bool,
    /// Sent by one of our users: which part of what they sent this record is.
    pub sent: Option<SentPart>,
}

/// A message a user sent is stored as up to three records, one per way it goes (see the
/// `outbound` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SentPart {
    /// To recipients in our domains: held for the primary like received mail (and in
    /// their emergency inbox meanwhile).
    Local,
    /// To outside recipients: status `outbound`, for the outbound queue.
    Outbound,
    /// The sender's own copy, for their mailbox at the primary.
    Copy,
}

impl SentPart {
    /// Apply this part to a new record: its status, intake and mark.
    pub fn apply(self, rec: &mut Record) {
        (rec.status, rec.intake) = self.start();
        rec.sent = Some(self);
    }

    /// The status and intake a new record of this part starts with.
    pub fn start(self) -> (Status, Intake) {
        match self {
            SentPart::Local => (Status::Held, Intake::Submission),
            SentPart::Outbound => (Status::Outbound, Intake::Submission),
            SentPart::Copy => (Status::Held, Intake::Sent),
        }
    }
}

// ---- Journal copies (see `crate::journal`) ----

/// How the original recipients of a journal copy were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptSource {
    /// Encoded in the journal addresses of the envelope (`journal+user=domain@...`).
    Envelope,
    /// The `To` and `Cc` header fields (Bcc recipients unknown).
    Headers,
    /// An Exchange envelope journal report; the original is its attachment.
    Report,
}

/// What a journal copy's record keeps besides the original recipients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalCopy {
    /// The journal addresses it was sent to (the copy's own envelope).
    pub to: Vec<String>,
    pub source: RcptSource,
    /// A copy of a message a replay delivered (it carries `X-Standby-Replay`): archived,
    /// never replayed itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

// ---- The primary's health (see `crate::health`) ----

/// What the standby believes about the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryState {
    #[default]
    Unknown,
    Up,
    Down,
}

impl std::fmt::Display for PrimaryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrimaryState::Unknown => "unknown",
            PrimaryState::Up => "up",
            PrimaryState::Down => "down",
        })
    }
}

/// The last probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub detail: String,
}

/// The last drain run that did anything, and when; shown by `standby status`, so an
/// operator sees why mail is not flowing (a wrong AUTH password, a 421) without the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDrain {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub report: DrainReport,
}

/// The stored health state of the primary, as one node sees it.
///
/// Every process that probes the primary (each `standby serve`, the drain function) is a
/// node with its own record, keyed by its `node_id`, so nodes sharing one index never
/// overwrite each other's probes and `standby status` can show them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// The node that probes (`node_id`). Empty in records written before nodes existed.
    #[serde(default)]
    pub node: String,
    pub address: String,
    pub state: PrimaryState,
    /// When `state` was entered.
    pub since: Option<DateTime<Utc>>,
    pub last_probe: Option<ProbeResult>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    #[serde(default)]
    pub last_drain: Option<LastDrain>,
    /// The state's changes, oldest first (at most [`HEALTH_HISTORY`]): the console's
    /// chart of the primary's health over time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StateChange>,
    /// When a drain run last delivered something (a continuity event starts when held
    /// mail ages with nothing delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered: Option<DateTime<Utc>>,
    /// Probes answered and failed since this record began (for alarms and `status`).
    #[serde(default)]
    pub probes_ok: u64,
    #[serde(default)]
    pub probes_failed: u64,
    /// Blobs stored before this instant have been checked by the reconciler (AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled_until: Option<DateTime<Utc>>,
    /// The reconciler's sweep of the blob store (AWS): where the one under way is, or
    /// when the next begins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
    /// The last retention run of the drain function (AWS), which runs it at most every
    /// `[retention] interval_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_at: Option<DateTime<Utc>>,
    /// Draining halted by the circuit breaker (`[drain] breaker_5xx` refusals in a row):
    /// no run starts by itself until `standby drain --force` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<Halt>,
    /// Bumped by every save; a save is conditional on it (see `Index::save_health`), so
    /// two runs of one node (an overlapping drain, `standby drain` beside the function)
    /// never overwrite each other's probe counts, watermarks or circuit-breaker halt.
    /// 0: never saved, or saved before records had versions.
    #[serde(default)]
    pub version: u64,
}

/// The reconciler's pass over every stored blob (see `standby::lambda::reconcile`), a few
/// pages per run, resumed from here by the next run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sweep {
    /// When the sweep under way began; `None`: none under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// The last key the sweep under way listed: it goes on after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// When the next sweep begins (set when one finishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<DateTime<Utc>>,
    /// Objects the sweep under way failed to check: while any did, it does not move the
    /// watermark, so the next sweep checks them again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub errors: u64,
    /// Sweeps in a row that ended with objects failing (the watermark held back).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub frozen: u32,
}

/// How many state changes a health record keeps.
pub const HEALTH_HISTORY: usize = 200;

/// The primary's state changed to `state` at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub at: DateTime<Utc>,
    pub state: PrimaryState,
}

/// Why and since when draining is halted (see [`HealthRecord::halted`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halt {
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// What tripped the drain's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Breaker {
    /// A 4xx at MAIL: the primary cannot take mail now (disk full); the run stops, the
    /// next one tries again.
    Mail4xx,
    /// `[drain] breaker_5xx` messages in a row refused with 5xx: draining halts until
    /// `standby drain --force`.
    Refusals5xx,
}

// ---- Drain runs (see `crate::drain`) ----

/// What one run did (also kept in the health record for `standby status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    /// Transactions aborted before the final dot because the message's lease was lost
    /// (another claim has it now); nothing was delivered or written back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub aborted: u64,
    /// Of the deferred: no reply came to the final dot, so the primary may have them and
    /// the next attempt may deliver them twice.
    #[serde(default)]
    pub ambiguous: u64,
    /// Why workers stopped early (the primary's trouble), if they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The circuit breaker stopped the run (`stopped` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// The primary could not be reached at all during the run.
    #[serde(skip)]
    pub unreachable: bool,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

impl DrainReport {
    /// Whether the run tried anything or stopped on the primary's trouble.
    pub fn eventful(&self) -> bool {
        self.delivered + self.deferred + self.failed > 0 || self.stopped.is_some()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacted_text_keeps_domains_only() {
        use super::redact_text;
        assert_eq!(
            redact_text("550 5.1.1 <bob@example.test>: Recipient address rejected"),
            "550 5.1.1 <*@example.test>: Recipient address rejected"
        );
        assert_eq!(
            redact_text("553 a.b+c@x.test and \"q\"@y.test, d@z"),
            "553 *@x.test and \"*\"@y.test, *@z"
        );
        assert_eq!(
            redact_text("250 2.0.0 Ok: queued as 4Xyz"),
            "250 2.0.0 Ok: queued as 4Xyz"
        );
        assert_eq!(redact_text("@"), "@");
    }

    use super::*;

    fn record(statuses: &[RcptStatus]) -> Record {
        let now = Utc::now();
        Record {
            id: MessageId::new(now),
            status: Status::Held,
            mail_from: "a@b.test".into(),
            rcpts: statuses
                .iter()
                .map(|s| Recipient {
                    address: "x@example.test".into(),
                    status: *s,
                    reply: None,
                    bounced: false,
                })
                .collect(),
            received_at: now,
            size: 1,
            sha256: String::new(),
            xxh3: None,
            summary: Summary::default(),
            origin: Origin::default(),
            attempts: 0,
            next_attempt_at: now,
            lease: None,
            reason: None,
            updated_at: now,
            blob: None,
            intake: Intake::Smtp,
            verdicts: None,
            journal: None,
            replays: Vec::new(),
            legal_hold: None,
            confidential: None,
            sent: None,
            bounce: None,
            bounce_marks: false,
            version: 0,
        }
    }

    #[test]
    fn settle_derives_status_from_recipients() {
        use RcptStatus::*;
        let cases = [
            (vec![Pending, Delivered], Status::Held),
            (vec![Delivered, Delivered], Status::Delivered),
            (vec![Delivered, Failed], Status::Failed),
            (vec![Failed], Status::Failed),
        ];
        for (rcpts, want) in cases {
            let mut r = record(&rcpts);
            r.settle();
            assert_eq!(r.status, want, "{rcpts:?}");
        }
        let mut paused = record(&[Pending]);
        paused.status = Status::Paused;
        paused.settle();
        assert_eq!(paused.status, Status::Paused);
    }

    #[test]
    fn ids_sort_by_time_and_round_trip() {
        let t0 = Utc::now();
        let a = MessageId::new(t0);
        let b = MessageId::new(t0 + chrono::Duration::milliseconds(5));
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
        assert!("nope".parse::<MessageId>().is_err());
    }

    #[test]
    fn redact_keeps_domain_only() {
        assert_eq!(redact("alice@example.test"), "example.test");
        assert_eq!(redact(""), "");
    }
}
