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
//! - an event for a record that exists merges into it ([`merged`]): SES runs every
//!   matching receipt rule, each event carrying only the recipients its rule matched, so
//!   each adds its recipients whatever the record's state; a record the reconciler made
//!   first (envelope guessed from headers) takes the exact envelope, delivered or not.
//!
//! A message to a journal address is filed as a journal copy only when the client SES
//! received it from (its `Received:` field, see [`crate::journal::ses_client_ip`]) is in
//! `[journal] allow` (`STANDBY_JOURNAL_ALLOW`, the template's `JournalAllow`); from
//! anywhere else its journal recipients fail (never drained, never archived, no DSN) with
//! a `journal-refused` entry in the audit log, since a copy planted there would be kept
//! for years and delivered by a later `standby replay`. The envelope's other recipients,
//! if any, are ordinary mail (`standby serve` refuses only the journal RCPT).
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
    Bounce, Disposal, Intake, MessageId, Origin, RcptStatus, Record, Status, Summary, Verdicts,
    redact,
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
    /// Records given the recipients of another receipt rule's event for the same object.
    pub merged: u32,
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
    /// No retry can mend it: the object is gone, is not a message, or the event is not
    /// an SES event.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            IngestError::BadEvent(_)
                | IngestError::MissingObject { .. }
                | IngestError::NotAMessage { .. }
        )
    }

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
    lease_wait: std::time::Duration,
}

impl Ingest {
    pub fn new(storage: Storage, prefix: impl Into<String>) -> Self {
        Ingest {
            storage,
            prefix: prefix.into(),
            journal: Journal::default(),
            journal_allow: JournalAllow::default(),
            retention: RetentionPolicy::default(),
            lease_wait: LEASE_WAIT,
        }
    }

    /// Wait at most this long for a drain to finish with a record an event must add
    /// recipients to (default [`LEASE_WAIT`]); then the event fails and is tried again.
    pub fn with_lease_wait(mut self, wait: std::time::Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// Mark messages confidential by these retention rules as they are indexed.
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// The journal addresses this ingest files copies for.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// File messages to these journal addresses as journal copies, when SES received
    /// them from a client in `allow`.
    pub fn with_journal(mut self, journal: Journal, allow: JournalAllow) -> Self {
        self.journal = journal;
        self.journal_allow = allow;
        self
    }

    /// File a record about to be indexed (by this handler, or by the reconciler for an
    /// object whose ingest never ran) by the rules both share: a message to a journal
    /// address (or, when `guessed` says the recipients were guessed from headers, an
    /// Exchange journal report) is a journal copy when SES received it
    /// from a client in `[journal] allow` (archived before it is indexed, never
    /// drained), else failed with a `journal-refused` audit entry (appended before the
    /// index, so a retry writes it again); anything else is quarantined on a virus
    /// verdict. Then the retention rules classify it. Returns whether it was quarantined.
    pub async fn file(
        &self,
        rec: &mut Record,
        head: &[u8],
        bytes: &[u8],
        key: &str,
        guessed: bool,
    ) -> Result<bool, StoreError> {
        // Recipients guessed from a journal report's headers are the report's, not users
        // who were written to: such a record is a journal copy as a whole.
        let guessed_report =
            guessed && self.journal.is_enabled() && crate::journal::is_report(head);
        let journal_copy =
            rec.rcpts.iter().any(|r| self.journal.matches(&r.address)) || guessed_report;
        let mut refused = None;
        let quarantined = if journal_copy {
            // A journal copy is archived whatever its verdicts: it is never drained.
            let client = crate::journal::ses_client_ip(head);
            rec.origin.ip = client.map(|ip| ip.to_string()).unwrap_or_default();
            if client.is_some_and(|ip| self.journal_allow.permits(ip)) {
                self.journal.file(rec, head, || Some(bytes.to_vec()));
                false
            } else {
                refused = Some(refuse_journal_copy(
                    rec,
                    client,
                    &self.journal,
                    guessed_report,
                ));
                // The envelope's other recipients, if any, are ordinary mail.
                match rec.verdicts.clone() {
                    Some(v) if rec.status != Status::Failed => quarantine_if_infected(rec, &v),
                    _ => false,
                }
            }
        } else {
            match rec.verdicts.clone() {
                Some(v) => quarantine_if_infected(rec, &v),
                None => false,
            }
        };
        self.retention.classify(rec, head);
        if rec.status == Status::Journal {
            // Before the index: an indexed journal copy always has its archive copy (a
            // retried event repeats the idempotent copy).
            archive_journal_copy(&self.storage, &self.retention, rec, key, bytes).await?;
        }
        if let Some(why) = &refused {
            let entry = AuditEntry::of(rec, "journal-refused", "ingest", why, Utc::now());
            self.storage.audit.append(&entry).await?;
            tracing::warn!(id = %rec.id, ses_id = key, client = %rec.origin.ip, "journal copy refused");
        }
        Ok(quarantined)
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
        // The lines the primary will get: a field behind a bare line end is one.
        let head = summary::head_lines(&bytes);
        let head = head.as_ref();
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
                user: None,
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
        let quarantined = self
            .file(&mut rec, head, &bytes, key, false)
            .await
            .map_err(store)?;
        let idx = &self.storage.index;
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
        // Already indexed: a retry, a duplicate event, another receipt rule's event for
        // the same object, or the reconciler got there first.
        self.merge(&rec, key, report).await.map_err(store)
    }

    /// Merge this event's envelope into the record with its id (see [`merged`]), as a
    /// compare-and-set on the record's version: re-read and merge again when someone
    /// wrote it meanwhile; wait while a drain holds it (its write-back would otherwise
    /// fail, and what it delivered would be sent again), up to the lease wait, then fail
    /// so Lambda retries the event later. Nothing is lost by failing: the event is kept
    /// by Lambda's retries and then its on-failure queue.
    async fn merge(
        &self,
        rec: &Record,
        key: &str,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        let idx = &self.storage.index;
        let started = std::time::Instant::now();
        let mut changed = 0;
        loop {
            let Some(old) = idx.get(rec.id).await? else {
                // Deleted since the insert found it (purge, retention): nothing to add to.
                report.duplicates += 1;
                tracing::info!(id = %rec.id, ses_id = key, "event for a deleted record; nothing to merge");
                return Ok(());
            };
            let now = Utc::now();
            let Some(next) = merged(&old, rec, now) else {
                report.duplicates += 1;
                tracing::info!(id = %rec.id, ses_id = key, "duplicate event; already indexed");
                // A retry of an event whose merge reopened a delivered record but could
                // not lift its mark: lift it now (for a record never marked, a no-op).
                if old.disposal() != Disposal::Expirable {
                    crate::retention::mark(&self.storage, &old).await?;
                }
                return Ok(());
            };
            match idx.update(&next, now).await {
                Ok(()) => {
                    // A delivered record reopened for new recipients: the store must not
                    // delete its bytes now (S3's lifecycle rule on the delivered tag). A
                    // failure fails the event, and Lambda's retry lifts the mark.
                    if old.disposal() != next.disposal() {
                        crate::retention::mark(&self.storage, &next).await?;
                    }
                    if old.intake == Intake::Reconciled {
                        report.upgraded += 1;
                        tracing::info!(id = %rec.id, ses_id = key, "reconciled record given the event's envelope");
                    } else {
                        report.merged += 1;
                        tracing::info!(
                            id = %rec.id,
                            ses_id = key,
                            rcpts = next.rcpts.len(),
                            added = next.rcpts.len().saturating_sub(old.rcpts.len()),
                            "recipients of another receipt rule added"
                        );
                    }
                    return Ok(());
                }
                Err(StoreError::Changed(_)) if changed < 10 => changed += 1,
                Err(StoreError::Leased(_)) if started.elapsed() < self.lease_wait => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How long an ingest waits for a drain to finish with a record it must add recipients
/// to (a drain renews its lease while it sends, so a lease can outlast this: Lambda then
/// retries the event, and after its retries the drain function takes it from the
/// on-failure queue, see [`crate::ports::FailedEvents`]).
pub const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `old` with what the event's record `new` adds, or `None` when it adds nothing.
///
/// SES runs every matching rule of the active rule set, each with the recipients it
/// matched, and each rule's S3 action writes the same object: the events share one id,
/// and each must add its recipients, whatever the record's status. Recipients already
/// there keep their state (delivered stays delivered); new ones come with the state the
/// event gave them (pending, or failed for a quarantined message) and are due now. A
/// record the reconciler guessed from headers takes the event's exact envelope: its
/// sender, and, of the guessed recipients, only those the event names or that were
/// delivered already (a guess parked as failed for want of a recipient reopens). Journal
/// copies are filed once and never merged.
pub fn merged(old: &Record, new: &Record, now: DateTime<Utc>) -> Option<Record> {
    if old.status == Status::Journal || new.status == Status::Journal {
        return None;
    }
    let mut m = old.clone();
    // A record bounced before recipients carried their mark: its failures are all
    // decided; marked now, so recipients added here get a decision of their own if they
    // fail in turn, whatever the merge keeps of the old ones.
    if m.bounce.is_some() && !m.bounce_marks {
        for r in &mut m.rcpts {
            if r.status == RcptStatus::Failed {
                r.bounced = true;
            }
        }
        m.bounce_marks = true;
    }
    let reconciled = old.intake == Intake::Reconciled;
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    if reconciled {
        m.mail_from = new.mail_from.clone();
        m.intake = new.intake;
        m.origin = new.origin.clone();
        m.verdicts = new.verdicts.clone();
        m.rcpts.retain(|r| {
            r.status == RcptStatus::Delivered
                || new.rcpts.iter().any(|n| same(&n.address, &r.address))
        });
        // A recipient both name and not delivered yet fails when the event says so (a
        // virus verdict, a refused journal copy), whatever the primary answered: the
        // guess's verdicts came from headers a sender can write.
        for r in &mut m.rcpts {
            if r.status == RcptStatus::Delivered {
                continue;
            }
            if let Some(n) = new.rcpts.iter().find(|n| same(&n.address, &r.address))
                && n.status == RcptStatus::Failed
            {
                r.status = n.status;
                r.reply = n.reply.clone();
                // Decided at intake (a refused journal recipient): no DSN for it.
                r.bounced = n.bounced;
            }
        }
        if old.status == Status::Failed
            && old
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("reconciled:"))
        {
            m.reason = None;
        }
    }
    let mut added = false;
    for r in &new.rcpts {
        if !m.rcpts.iter().any(|x| same(&x.address, &r.address)) {
            m.rcpts.push(r.clone());
            added |= r.status == RcptStatus::Pending;
        }
    }
    if !added && !reconciled {
        return None;
    }
    if added {
        m.next_attempt_at = m.next_attempt_at.min(now);
    }
    if new.reason.as_deref() == Some("virus") {
        m.reason = new.reason.clone();
    }
    // A recipient the event decided at intake carries its mark; the record's marks count
    // from now on (dsn::settle reports only failed recipients without one).
    if m.rcpts.iter().any(|r| r.bounced) {
        m.bounce_marks = true;
    }
    m.settle();
    m.updated_at = now;
    Some(m)
}

/// A message to a journal address from a client not allowed to send journal copies: its
/// journal recipients fail, with no DSN (what `standby serve` answers such a RCPT: 550
/// 5.7.1); returns the reason. When the envelope names only journal addresses, or
/// `guessed_report` says the recipients were guessed from a journal report's headers, the
/// record is kept for the operator as failed. Other recipients in the same envelope (SES
/// cannot refuse some recipients of a transaction, as `standby serve` does) stay ordinary
/// held mail: a sender who also wrote to a journal address does not lose the rest of the
/// message. The refused recipients are decided (marked, the bounce suppressed), so a
/// later refusal of another recipient gets a DSN of its own that names only it.
fn refuse_journal_copy(
    rec: &mut Record,
    client: Option<std::net::IpAddr>,
    journal: &Journal,
    guessed_report: bool,
) -> String {
    let why = match client {
        Some(ip) => format!("journal copy from {ip}, which is not in [journal] allow"),
        None => "journal copy without SES's Received: field naming the client".to_string(),
    };
    let whole = guessed_report || rec.rcpts.iter().all(|r| journal.matches(&r.address));
    for r in &mut rec.rcpts {
        if whole || journal.matches(&r.address) {
            r.status = RcptStatus::Failed;
            r.reply = Some("550 5.7.1 journal copies are accepted from the primary only".into());
            r.bounced = true;
        }
    }
    rec.bounce_marks = true;
    rec.bounce = Some(Bounce::Suppressed { why: why.clone() });
    if whole {
        rec.reason = Some(why.clone());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal report from a client outside `[journal] allow` whose recipients the
    /// reconciler guessed from its To/Cc: those users were never in the envelope, so the
    /// whole record is refused; with the exact envelope (a user beside the journal
    /// address) the user's copy stays held.
    #[tokio::test]
    async fn a_refused_report_reaches_none_of_the_users_its_headers_name() {
        let ingest = Ingest::new(Storage::memory(), "").with_journal(
            Journal::new(
                &["journal@archive.example.test".to_string()],
                &["example.test".to_string()],
            ),
            JournalAllow::new(vec!["192.0.2.10/32".parse().unwrap()]),
        );
        let head = b"Received: from mx.elsewhere.test (mx.elsewhere.test [203.0.113.9])\r\n \
            by inbound-smtp.us-east-1.amazonaws.com with SMTP id r1;\r\n \
            Sat, 28 Nov 2026 09:30:01 +0000 (UTC)\r\n\
            X-MS-Journal-Report:\r\nTo: bob@example.test\r\nSubject: report\r\n\r\n";
        let mut guessed = rec(&["bob@example.test"], Intake::Reconciled);
        ingest
            .file(&mut guessed, head, head, "k1", true)
            .await
            .unwrap();
        assert_eq!(guessed.status, Status::Failed, "{guessed:?}");
        assert!(
            guessed
                .rcpts
                .iter()
                .all(|r| r.status == RcptStatus::Failed && r.bounced)
        );
        let mut exact = rec(
            &["journal@archive.example.test", "bob@example.test"],
            Intake::Ses,
        );
        ingest
            .file(&mut exact, head, head, "k2", false)
            .await
            .unwrap();
        assert_eq!(exact.status, Status::Held, "{exact:?}");
        assert_eq!(exact.rcpts[1].status, RcptStatus::Pending);
        assert!(matches!(exact.bounce, Some(Bounce::Suppressed { .. })));
    }

    fn rec(rcpts: &[&str], intake: Intake) -> Record {
        let now = Utc::now();
        Record {
            intake,
            ..Record::held(
                MessageId::derived("k", now),
                "a@example.org".into(),
                rcpts.iter().map(|r| r.to_string()).collect(),
                now,
                (1, String::new()),
                Summary::default(),
            )
        }
    }

    #[test]
    fn a_merge_adds_new_recipients_and_keeps_what_was_delivered() {
        let mut old = rec(&["bob@example.test"], Intake::Ses);
        old.rcpts[0].status = RcptStatus::Delivered;
        old.settle();
        assert_eq!(old.status, Status::Delivered);
        let now = Utc::now();
        let new = rec(&["BOB@example.test", "erin@example.test"], Intake::Ses);
        let m = merged(&old, &new, now).expect("erin is new");
        let got: Vec<_> = m
            .rcpts
            .iter()
            .map(|r| (r.address.as_str(), r.status))
            .collect();
        assert_eq!(
            got,
            [
                ("bob@example.test", RcptStatus::Delivered),
                ("erin@example.test", RcptStatus::Pending)
            ]
        );
        assert_eq!(m.status, Status::Held);
        assert!(m.next_attempt_at <= now);
        assert_eq!(m.version, old.version, "written as a compare-and-set on it");
        // The same event again adds nothing.
        assert!(merged(&m, &new, now).is_none());
    }

    #[test]
    fn a_guess_takes_the_exact_envelope_and_a_parked_guess_reopens() {
        let now = Utc::now();
        let mut guess = rec(
            &["bob@example.test", "list@example.test"],
            Intake::Reconciled,
        );
        guess.mail_from = "guessed@example.org".into();
        guess.rcpts[0].status = RcptStatus::Delivered;
        guess.settle();
        let exact = rec(&["erin@example.test"], Intake::Ses);
        let m = merged(&guess, &exact, now).unwrap();
        let got: Vec<_> = m.rcpts.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(
            got,
            ["bob@example.test", "erin@example.test"],
            "delivered bob stays, the undelivered guess goes"
        );
        assert_eq!(
            (m.intake, m.mail_from.as_str()),
            (Intake::Ses, "a@example.org")
        );

        let mut parked = rec(&[], Intake::Reconciled);
        parked.status = Status::Failed;
        parked.reason = Some("reconciled: no recipient in our domains found in the headers".into());
        let m = merged(&parked, &exact, now).unwrap();
        assert_eq!((m.status, m.reason.as_deref()), (Status::Held, None));
    }

    #[test]
    fn a_guessed_recipient_fails_when_the_event_says_so_unless_delivered() {
        let now = Utc::now();
        // The guess read a forged `X-SES-Virus-Verdict: PASS`; SES's event says FAIL.
        let guess = rec(
            &["bob@example.test", "carol@example.test"],
            Intake::Reconciled,
        );
        let mut exact = rec(&["bob@example.test", "carol@example.test"], Intake::Ses);
        assert!(quarantine_if_infected(
            &mut exact,
            &Verdicts {
                virus: Some("FAIL".into()),
                ..Verdicts::default()
            }
        ));
        let mut answered = guess.clone();
        answered.rcpts[0].status = RcptStatus::Delivered;
        answered.rcpts[1].reply = Some("450 4.2.0 busy".into());
        let m = merged(&answered, &exact, now).unwrap();
        assert_eq!(
            m.rcpts[0].status,
            RcptStatus::Delivered,
            "what was delivered stays"
        );
        assert_eq!(
            m.rcpts[1].status,
            RcptStatus::Failed,
            "a 4xx does not save a virus"
        );
        assert_eq!(m.status, Status::Failed, "never drained");
        // A pending event keeps the primary's verdict on a recipient it refused.
        let mut refused = guess.clone();
        refused.rcpts[0].status = RcptStatus::Failed;
        refused.rcpts[0].reply = Some("550 5.1.1 no such user".into());
        let clean = rec(&["bob@example.test", "carol@example.test"], Intake::Ses);
        let m = merged(&refused, &clean, now).unwrap();
        assert_eq!(m.rcpts[0].status, RcptStatus::Failed);
        let m = merged(&guess, &exact, now).unwrap();
        assert_eq!(
            (m.status, m.reason.as_deref()),
            (Status::Failed, Some("virus"))
        );
        // A recipient the event refused at intake (a journal address from outside) is
        // decided there: marked, so no DSN names it; the other stays due.
        let mut refused_journal = rec(&["bob@example.test", "carol@example.test"], Intake::Ses);
        refused_journal.rcpts[1].status = RcptStatus::Failed;
        refused_journal.rcpts[1].bounced = true;
        let m = merged(&guess, &refused_journal, now).unwrap();
        assert!(m.rcpts[1].bounced && m.bounce_marks, "{m:?}");
        assert_eq!(m.status, Status::Held);
    }

    #[test]
    fn journal_copies_are_never_merged() {
        let now = Utc::now();
        let mut j = rec(&["bob@example.test"], Intake::Ses);
        j.status = Status::Journal;
        assert!(merged(&j, &rec(&["erin@example.test"], Intake::Ses), now).is_none());
        assert!(merged(&rec(&["bob@example.test"], Intake::Ses), &j, now).is_none());
    }
}
