//! The `standby-ingest` handler: index a message SES stored in S3.
//!
//! SES runs the receipt rule's S3 action (the raw message at `prefix + mail.messageId`),
//! then invokes this function asynchronously with the event (no body). The handler reads
//! the object, checks that it is a message, and inserts one index record:
//!
//! - envelope = `mail.source` + `receipt.recipients` (see [`super::ses`]);
//! - id = [`MessageId::derived`] from the object name and store time, so Lambda's retries
//!   and duplicate deliveries of the event insert nothing new, and the reconciler finds
//!   the same id;
//! - verdicts kept on the record; a virus `FAIL` is quarantined: status `failed`, reason
//!   `virus`, never drained;
//! - a record the reconciler made first (envelope guessed from headers) is replaced by
//!   the exact envelope while it is still undelivered.
//!
//! A message to a journal address is filed as a journal copy only when the client SES
//! received it from (its `Received:` field, see [`crate::journal::ses_client_ip`]) is in
//! `[journal] allow` (`STANDBY_JOURNAL_ALLOW`, the template's `JournalAllow`); anything
//! else is indexed as failed (never drained, never archived, no DSN) with a
//! `journal-refused` entry in the audit log, since a copy planted there would be kept for
//! years and delivered by a later `standby replay`.
//!
//! A missing object, an object that is not a message, or a storage failure is an error:
//! Lambda retries the event (and sends it to the on-failure destination after the last
//! retry); the object stays in S3 for the reconciler. Nothing is silently dropped.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ses::{SesEvent, SesPayload};
use crate::config::RetentionPolicy;
use crate::config::{Journal, JournalAllow};
use crate::error::StoreError;
use crate::ingest::archive_journal_copy;
use crate::model::{
    Bounce, Intake, MessageId, Origin, RcptStatus, Record, Status, Summary, Verdicts, redact,
};
use crate::ports::{AuditEntry, Storage};
use crate::summary;

/// What one invocation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// New records.
    pub indexed: u32,
    /// Events for messages already indexed (retries, duplicate deliveries).
    pub duplicates: u32,
    /// Reconciled records replaced by the event's exact envelope.
    pub upgraded: u32,
    /// Records stored as failed because SES found a virus.
    pub quarantined: u32,
    /// SES reads this for RequestResponse invocations; the rule goes on either way.
    pub disposition: &'static str,
}

/// Why an event could not be indexed (Lambda retries it).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the event is not an SES event: {0}")]
    BadEvent(String),
    #[error(
        "SES message {ses_id}: raw object {key} is missing (check the receipt rule's bucket and object key prefix)"
    )]
    MissingObject { ses_id: String, key: String },
    #[error("SES message {ses_id}: object {key} is not a mail message ({detail})")]
    NotAMessage {
        ses_id: String,
        key: String,
        detail: String,
    },
    #[error("SES message {ses_id}: {source}")]
    Store {
        ses_id: String,
        #[source]
        source: StoreError,
    },
}

impl IngestError {
    /// A stable name for the Lambda error type (shown in CloudWatch and the on-failure queue).
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::BadEvent(_) => "BadEvent",
            IngestError::MissingObject { .. } => "MissingObject",
            IngestError::NotAMessage { .. } => "NotAMessage",
            IngestError::Store { source, .. } if source.is_transient() => "StoreUnavailable",
            IngestError::Store { .. } => "StoreError",
        }
    }
}

/// Indexes SES events into a [`Storage`] whose blob store holds the SES objects.
#[derive(Clone)]
pub struct Ingest {
    storage: Storage,
    /// Shown in listings, e.g. `s3://bucket/incoming/`.
    prefix: String,
    journal: Journal,
    journal_allow: JournalAllow,
    retention: RetentionPolicy,
}

impl Ingest {
    pub fn new(storage: Storage, prefix: impl Into<String>) -> Self {
        Ingest {
            storage,
            prefix: prefix.into(),
            journal: Journal::default(),
            journal_allow: JournalAllow::default(),
            retention: RetentionPolicy::default(),
        }
    }

    /// Mark messages confidential by these retention rules as they are indexed.
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// File messages to these journal addresses as journal copies, when SES received
    /// them from a client in `allow`.
    pub fn with_journal(mut self, journal: Journal, allow: JournalAllow) -> Self {
        self.journal = journal;
        self.journal_allow = allow;
        self
    }

    /// Handle one invocation's payload.
    pub async fn handle(&self, payload: serde_json::Value) -> Result<IngestReport, IngestError> {
        let event = SesEvent::parse(payload).map_err(|e| IngestError::BadEvent(e.to_string()))?;
        if event.records.is_empty() {
            return Err(IngestError::BadEvent("no Records".into()));
        }
        let mut report = IngestReport {
            disposition: "CONTINUE",
            ..Default::default()
        };
        for rec in &event.records {
            self.one(&rec.ses, &mut report).await?;
        }
        Ok(report)
    }

    async fn one(&self, ses: &SesPayload, report: &mut IngestReport) -> Result<(), IngestError> {
        let ses_id = ses
            .mail
            .message_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| IngestError::BadEvent("mail.messageId is missing".into()))?;
        let store = |source| IngestError::Store {
            ses_id: ses_id.clone(),
            source,
        };
        let key = ses_id.as_str();
        let shown = format!("{}{key}", self.prefix);
        let (bytes, stored_at) = match self.storage.blobs.read_all(key).await {
            Ok((bytes, info)) => (bytes, info.stored_at),
            Err(StoreError::MissingBlob(_)) => {
                tracing::error!(ses_id = key, object = %shown, "raw message object is missing");
                return Err(IngestError::MissingObject {
                    ses_id: ses_id.clone(),
                    key: shown,
                });
            }
            Err(e) => return Err(store(e)),
        };
        let head = summary::head(&bytes);
        if let Err(detail) = summary::check_message(head) {
            tracing::error!(ses_id = key, %detail, "raw object is not a message");
            return Err(IngestError::NotAMessage {
                ses_id: ses_id.clone(),
                key: shown,
                detail,
            });
        }
        let received_at = parse_time(ses.receipt.timestamp.as_deref())
            .or_else(|| parse_time(ses.mail.timestamp.as_deref()))
            .unwrap_or(stored_at);
        let mut summary = summary::parse(head);
        fill_from_common_headers(&mut summary, ses);
        let verdicts = ses.receipt.verdicts();
        let mut rcpts: Vec<String> = Vec::new();
        for r in &ses.receipt.recipients {
            let r = r.trim();
            if !r.is_empty() && !rcpts.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                rcpts.push(r.to_string());
            }
        }
        if rcpts.is_empty() {
            return Err(IngestError::BadEvent(format!(
                "SES message {key}: receipt.recipients is empty"
            )));
        }
        let mut rec = Record {
            origin: Origin {
                ip: String::new(),
                helo: "amazonses.com".into(),
                tls: false,
            },
            blob: Some(key.to_string()),
            intake: Intake::Ses,
            verdicts: Some(verdicts.clone()),
            ..Record::held(
                MessageId::derived(key, stored_at),
                ses.mail.source.clone().unwrap_or_default(),
                rcpts,
                received_at,
                (bytes.len() as u64, hex::encode(Sha256::digest(&bytes))),
                summary,
            )
        };
        // A journal copy is archived whatever its verdicts: it is never drained.
        let mut refused = None;
        let quarantined = if rec.rcpts.iter().any(|r| self.journal.matches(&r.address)) {
            let client = crate::journal::ses_client_ip(head);
            rec.origin.ip = client.map(|ip| ip.to_string()).unwrap_or_default();
            if client.is_some_and(|ip| self.journal_allow.permits(ip)) {
                self.journal.file(&mut rec, head, || Some(bytes.clone()));
            } else {
                refused = Some(refuse_journal_copy(&mut rec, client));
            }
            false
        } else {
            quarantine_if_infected(&mut rec, &verdicts)
        };
        self.retention.classify(&mut rec, head);
        if rec.status == Status::Journal {
            // Before the index: an indexed journal copy always has its archive copy (a
            // retried event repeats the idempotent copy).
            archive_journal_copy(&self.storage, &self.retention, &rec, key, &bytes)
                .await
                .map_err(store)?;
        }
        let idx = &self.storage.index;
        if let Some(why) = &refused {
            // Before the index, so a retry after a failed append writes it again.
            let entry = AuditEntry::of(&rec, "journal-refused", "ingest", why, Utc::now());
            self.storage.audit.append(&entry).await.map_err(store)?;
            tracing::warn!(id = %rec.id, ses_id = key, client = %rec.origin.ip, "journal copy refused");
        }
        if idx.insert(&rec).await.map_err(store)? {
            report.indexed += 1;
            report.quarantined += u32::from(quarantined);
            tracing::info!(
                id = %rec.id,
                ses_id = key,
                size = rec.size,
                rcpts = rec.rcpts.len(),
                from_domain = redact(&rec.mail_from),
                status = %rec.status,
                "message indexed"
            );
            return Ok(());
        }
        // Already indexed: a retry, a duplicate event, or the reconciler got there first.
        let existing = idx.get(rec.id).await.map_err(store)?;
        match existing {
            Some(old)
                if old.intake == Intake::Reconciled
                    && matches!(old.status, Status::Held | Status::Paused) =>
            {
                rec.attempts = old.attempts;
                rec.next_attempt_at = old.next_attempt_at;
                rec.version = old.version;
                rec.settle();
                idx.update(&rec, Utc::now()).await.map_err(store)?;
                report.upgraded += 1;
                tracing::info!(id = %rec.id, ses_id = key, "reconciled record given the event's envelope");
            }
            _ => {
                report.duplicates += 1;
                tracing::info!(id = %rec.id, ses_id = key, "duplicate event; already indexed");
            }
        }
        Ok(())
    }
}

/// A message to a journal address from a client not allowed to send journal copies: kept
/// for the operator as failed, with no DSN; returns the reason.
fn refuse_journal_copy(rec: &mut Record, client: Option<std::net::IpAddr>) -> String {
    let why = match client {
        Some(ip) => format!("journal copy from {ip}, which is not in [journal] allow"),
        None => "journal copy without SES's Received: field naming the client".to_string(),
    };
    for r in &mut rec.rcpts {
        r.status = RcptStatus::Failed;
        r.reply = Some("550 5.7.1 journal copies are accepted from the primary only".into());
    }
    rec.reason = Some(why.clone());
    rec.bounce = Some(Bounce::Suppressed { why: why.clone() });
    rec.settle();
    why
}

/// A virus FAIL is kept (for the operator to look at) but never delivered.
pub(crate) fn quarantine_if_infected(rec: &mut Record, v: &Verdicts) -> bool {
    if v.virus.as_deref() != Some("FAIL") {
        return false;
    }
    for r in &mut rec.rcpts {
        r.status = RcptStatus::Failed;
        r.reply = Some("quarantined: SES virus verdict FAIL".into());
    }
    rec.reason = Some("virus".into());
    rec.settle();
    true
}

/// SES's parsed headers fill what our own parse of the object did not find.
fn fill_from_common_headers(s: &mut Summary, ses: &SesPayload) {
    let c = &ses.mail.common_headers;
    if s.from.is_none() {
        s.from = c.from.first().cloned();
    }
    if s.subject.is_none() {
        s.subject = c.subject.clone();
    }
    if s.message_id.is_none() {
        s.message_id = c
            .message_id
            .as_deref()
            .map(|m| m.trim_matches(['<', '>']).to_string());
    }
    if s.date.is_none() {
        s.date = c.date.clone();
    }
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
