//! Retention: keep what law or policy requires, delete what policy says must go, and
//! never delete anything under legal hold.
//!
//! Per class, how long a message is kept (`[retention]` in the config):
//! - delivered held mail: `delivered_days` after its delivery;
//! - failed held mail: `failed_days` after it failed;
//! - journal copies: `journal_days` after receipt.
//!
//! Unset means kept until purged. Held and paused mail is never deleted here (it is still
//! to be delivered; `hold_days` expiry turns it into failed mail first).
//!
//! Confidential rules mark a message at receipt, by recipient, sender or a header, and
//! shorten its retention to the rule's `keep_days` (0: delete at the next run once it is
//! delivered, or at once for a journal copy). The rule is matched when the message comes
//! in, because its header is at hand then; the record keeps the rule's name, and the
//! rule's current `keep_days` applies at each run.
//!
//! Legal hold overrides every deletion: retention, `standby purge`, and the AWS TTL and
//! lifecycle rules (a held record carries no TTL).
//!
//! A store that deletes on its own (S3's lifecycle rule on delivered objects) is told
//! what it may do through a mark on the bytes ([`mark`], [`Disposal`]), which follows
//! the record: the drain marks what it delivered, a late SES event that reopens a
//! delivered record lifts the mark, and a legal hold replaces it.
//!
//! Every deletion is written to the audit log before it happens (a failed deletion is
//! retried by the next run and audited again), so the log never misses one.

use chrono::{DateTime, Duration, Utc};
use mail_parser::MessageParser;
use serde::Serialize;

use crate::config::RetentionPolicy;
use crate::error::StoreError;
use crate::model::{Disposal, Record, Status};
use crate::ports::Storage;
use crate::ports::{AuditEntry, ListQuery, Pages, retry_transient};

fn pattern_matches(pattern: &str, addr: &str) -> bool {
    match pattern.strip_prefix("*@") {
        Some(domain) => addr
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => pattern.eq_ignore_ascii_case(addr),
    }
}

fn header_matches(rule: &str, head: &[u8]) -> bool {
    let Some((name, want)) = rule.split_once(':') else {
        return false;
    };
    let (name, want) = (name.trim(), want.trim().to_lowercase());
    let Some(msg) = MessageParser::default().parse_headers(head) else {
        return false;
    };
    msg.headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .filter_map(|h| h.value().as_text())
        .any(|v| v.to_lowercase().contains(&want))
}

impl RetentionPolicy {
    /// Mark a message arriving with `head` confidential when a rule matches (the first).
    pub fn classify(&self, rec: &mut Record, head: &[u8]) {
        if self.confidential.is_empty() {
            return; // every message passes here: no rules, no work
        }
        let rcpts: Vec<&str> = rec
            .rcpts
            .iter()
            .map(|r| r.address.as_str())
            .chain(
                rec.journal
                    .iter()
                    .flat_map(|j| j.to.iter().map(String::as_str)),
            )
            .collect();
        rec.confidential = self
            .confidential
            .iter()
            .find(|rule| {
                rule.rcpt
                    .as_deref()
                    .is_some_and(|p| rcpts.iter().any(|a| pattern_matches(p, a)))
                    || rule
                        .sender
                        .as_deref()
                        .is_some_and(|p| pattern_matches(p, &rec.mail_from))
                    || rule
                        .header
                        .as_deref()
                        .is_some_and(|h| header_matches(h, head))
            })
            .map(|rule| rule.name.clone());
    }

    /// How long a message of this status is kept, and why (`None`: kept).
    fn keep(&self, rec: &Record) -> Option<(u32, String)> {
        let class = match rec.status {
            Status::Delivered => self.delivered_days.map(|d| (d, "delivered_days")),
            Status::Failed => self.failed_days.map(|d| (d, "failed_days")),
            Status::Journal => self.journal_days.map(|d| (d, "journal_days")),
            Status::Held | Status::Paused | Status::Outbound => return None,
        }
        .map(|(d, k)| (d, format!("{k} = {d}")));
        let rule = rec
            .confidential
            .as_deref()
            .and_then(|name| self.confidential.iter().find(|r| r.name == name))
            .map(|r| (r.keep_days, format!("confidential rule {}", r.name)));
        match (class, rule) {
            (Some(c), Some(r)) => Some(if r.0 < c.0 { r } else { c }),
            (c, r) => c.or(r),
        }
    }

    /// When the message may be deleted, and the rule that says so; `None`: keep it.
    pub fn expires(&self, rec: &Record) -> Option<(DateTime<Utc>, String)> {
        let (days, why) = self.keep(rec)?;
        let base = match rec.status {
            Status::Journal => rec.received_at,
            _ => rec.updated_at,
        };
        Some((base + Duration::days(i64::from(days)), why))
    }

    /// The shortest time any message of `status` is kept: nothing received since
    /// `now - shortest` can be due, which bounds each run's scan.
    fn shortest(&self, status: Status) -> Option<u32> {
        let class = match status {
            Status::Delivered => self.delivered_days,
            Status::Failed => self.failed_days,
            Status::Journal => self.journal_days,
            Status::Held | Status::Paused | Status::Outbound => return None,
        };
        let rules = self.confidential.iter().map(|r| r.keep_days).min();
        match (class, rules) {
            (Some(c), Some(r)) => Some(c.min(r)),
            (c, r) => c.or(r),
        }
    }
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub deleted: u64,
    /// Due for deletion but under legal hold.
    pub held_back: u64,
    /// Due when read, but changed before the delete (left for the next run).
    #[serde(skip_serializing_if = "is_zero")]
    pub changed: u64,
    /// Of `deleted`, records whose stored bytes could not be deleted (audited as
    /// `delete-incomplete` with the key: a local spool removes them at its next start, on
    /// S3 they need deleting by hand).
    #[serde(skip_serializing_if = "is_zero")]
    pub incomplete: u64,
}

/// What [`delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// The record and its stored bytes.
    Whole,
    /// The record; its bytes could not be deleted (audited as `delete-incomplete`).
    BytesLeft,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A message the policy says may go at `now`.
#[derive(Debug, Clone)]
pub struct Due {
    pub rec: Record,
    /// The rule: `journal_days = 2555`, `confidential rule hr`.
    pub rule: String,
    /// Under legal hold: it stays.
    pub held_back: bool,
}

/// Every message due for deletion at `now`, oldest first within each status.
pub async fn due(
    storage: &Storage,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<Vec<Due>, StoreError> {
    let mut walk = DueWalk::new(policy, now);
    let mut out = Vec::new();
    while let Some(page) = walk.next_page(storage).await? {
        out.extend(page);
    }
    Ok(out)
}

/// The due messages a page of the index at a time, so a first run over a large archive
/// needs no more memory than one page.
struct DueWalk<'p> {
    policy: &'p RetentionPolicy,
    now: DateTime<Utc>,
    /// Statuses still to walk, and the pages of the current one.
    statuses: std::vec::IntoIter<Status>,
    pages: Option<Pages>,
}

impl<'p> DueWalk<'p> {
    fn new(policy: &'p RetentionPolicy, now: DateTime<Utc>) -> Self {
        DueWalk {
            policy,
            now,
            statuses: vec![Status::Delivered, Status::Failed, Status::Journal].into_iter(),
            pages: None,
        }
    }

    /// The next page's due messages (possibly none); `None` when the walk is over.
    async fn next_page(&mut self, storage: &Storage) -> Result<Option<Vec<Due>>, StoreError> {
        loop {
            let pages = match self.pages.as_mut() {
                Some(p) => p,
                None => {
                    let Some(status) = self.statuses.next() else {
                        return Ok(None);
                    };
                    let Some(shortest) = self.policy.shortest(status) else {
                        continue;
                    };
                    self.pages.insert(Pages::new(ListQuery {
                        status: Some(status),
                        until: Some(self.now - Duration::days(i64::from(shortest))),
                        ..ListQuery::default()
                    }))
                }
            };
            let Some(page) = pages.next(storage.index.as_ref()).await? else {
                self.pages = None;
                continue;
            };
            let due = page
                .into_iter()
                .filter_map(|rec| {
                    let (at, rule) = self.policy.expires(&rec)?;
                    let held_back = rec.legal_hold.is_some();
                    (at <= self.now).then_some(Due {
                        rec,
                        rule,
                        held_back,
                    })
                })
                .collect();
            return Ok(Some(due));
        }
    }
}

/// Delete what the policy says is due at `now`, auditing each deletion first.
pub async fn run(
    storage: &Storage,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    let mut walk = DueWalk::new(policy, now);
    while let Some(page) = walk.next_page(storage).await? {
        for d in page {
            if d.held_back {
                report.held_back += 1;
                continue;
            }
            // Retention deletes no held message, so no leased one but in a race (the
            // delete's condition settles it).
            match delete(storage, &d.rec, "retention", &d.rule, now, now).await {
                Ok(Deleted::Whole) => report.deleted += 1,
                Ok(Deleted::BytesLeft) => {
                    report.deleted += 1;
                    report.incomplete += 1;
                }
                // Placed or changed since this page was read: the hold wins, and a changed
                // record is judged again by the next run.
                Err(StoreError::LegalHold(_)) => report.held_back += 1,
                Err(StoreError::Changed(id) | StoreError::Leased(id)) => {
                    tracing::info!(%id, "changed since it was read or being sent; left for the next retention run");
                    report.changed += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if report.deleted + report.held_back + report.changed > 0 {
        tracing::info!(
            deleted = report.deleted,
            held_back = report.held_back,
            changed = report.changed,
            incomplete = report.incomplete,
            "retention run"
        );
    }
    Ok(report)
}

/// Mark `rec`'s bytes with what the store's own retention may do with them
/// ([`Record::disposal`]), then read the record again and mark again until the mark
/// matches the record as stored. Every writer of something the mark depends on (the
/// drain's delivery, a late event's new recipients, an operator's legal hold) writes the
/// record first and marks after: two marks racing end on the record's last state, as the
/// last one to finish reads it after both writes. A store that keeps no mark is asked
/// once.
///
/// # Errors
/// The store's or the index's, or [`StoreError::Changed`] when the record kept changing.
/// The only mark that lets the store delete bytes is the delivered one, so on any error
/// the mark is lifted (best effort): the bytes are then kept longer, never deleted
/// early; a delivered message left unmarked waits for the retention job.
pub async fn mark(storage: &Storage, rec: &Record) -> Result<Disposal, StoreError> {
    let key = rec.blob_key();
    let mut want = rec.disposal();
    let result = async {
        // Bounded: each round follows a record write someone made meanwhile.
        for _ in 0..5 {
            if !storage.blobs.mark(&key, want).await? {
                return Ok(want);
            }
            match storage.index.get(rec.id).await? {
                Some(now) if now.disposal() != want => want = now.disposal(),
                // Unchanged, or deleted (its bytes go with it).
                _ => return Ok(want),
            }
        }
        Err(StoreError::Changed(rec.id))
    }
    .await;
    if result.is_err()
        && let Err(e) = storage.blobs.mark(&key, Disposal::Keep).await
    {
        tracing::error!(id = %rec.id, key = %key, error = %e, "could not lift the stored message's mark after a failed one: check its tag");
    }
    result
}

/// Audit, then delete a message's record and blob, as `rec` was read: the record goes
/// only if it is unchanged since (its version), not under legal hold and not leased by a
/// drain past `leases_ended_by` (its lease counts as ended only then: `now` less the
/// clock skew the drains allow), all checked in the delete's own condition, so a legal
/// hold placed, a `retry` made or a claim taken after the read wins. The record goes first: a refused delete leaves the bytes where they were. A
/// refused delete is audited as `delete-cancelled` (the `delete` line before it did not
/// happen); the next run decides again on the record as it is then.
///
/// # Errors
/// [`StoreError::LegalHold`] (read or stored under legal hold), [`StoreError::Leased`],
/// [`StoreError::Changed`].
pub async fn delete(
    storage: &Storage,
    rec: &Record,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
    leases_ended_by: DateTime<Utc>,
) -> Result<Deleted, StoreError> {
    if rec.legal_hold.is_some() {
        return Err(StoreError::LegalHold(rec.id));
    }
    storage
        .audit
        .append(&AuditEntry::of(rec, "delete", by, reason, now))
        .await?;
    // Row first (the local index leaves a tombstone with it), then the bytes: a crash
    // in between leaves a file the next start knows to delete, never a row without its
    // message. The row goes only if it is still the one the decision was made on.
    match storage.index.delete(rec, leases_ended_by).await {
        Ok(_) => {}
        Err(e @ (StoreError::LegalHold(_) | StoreError::Changed(_) | StoreError::Leased(_))) => {
            let why = format!("{reason}: not deleted, {e}");
            storage
                .audit
                .append(&AuditEntry::of(rec, "delete-cancelled", by, &why, now))
                .await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    // The row is gone: the bytes must follow. The local spool's tombstone finishes the
    // job at the next start; a store without tombstones (S3) has only these tries, and
    // an object left behind is written to the audit log with its key for the operator.
    let key = rec.blob_key();
    if let Err(e) = retry_transient(BLOB_DELETE_TRIES, "deleting the stored message", || {
        storage.blobs.delete(&key)
    })
    .await
    {
        // The message is deleted as far as everything else is concerned; the run goes on
        // (one stuck object must not stop every later delete).
        let why = format!(
            "{reason}: the record is deleted but the stored message `{key}` is not ({e}); \
             a local spool removes it at its next start, on S3 delete the object by hand"
        );
        tracing::error!(id = %rec.id, error = %e, "record deleted, stored message left behind");
        // Best effort: marked as the store's own retention's to delete (S3: the
        // `delivered` tag, which the lifecycle rule expires), which also tells the
        // reconciler the object had a record once and is not to be indexed again.
        if let Err(e) = storage.blobs.mark(&key, Disposal::Expirable).await {
            tracing::warn!(id = %rec.id, error = %e, "could not mark the object left behind either");
        }
        storage
            .audit
            .append(&AuditEntry::of(rec, "delete-incomplete", by, &why, now))
            .await?;
        return Ok(Deleted::BytesLeft);
    }
    Ok(Deleted::Whole)
}

/// Tries to delete the stored bytes once the record is gone.
const BLOB_DELETE_TRIES: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::FaultyBlobs;
    use crate::config::ConfidentialRule;
    use crate::model::{LegalHold, MessageId, Summary};
    use std::sync::Arc;

    /// The mark follows the record as stored, not as the caller read it, and a failure
    /// never leaves the one mark that lets the store delete (delivered): it is lifted.
    #[tokio::test]
    async fn the_mark_follows_the_stored_record_and_a_failure_lifts_it() {
        let blobs = Arc::new(FaultyBlobs::new(Arc::new(
            crate::backend::MemBlobStore::default(),
        )));
        let storage = Storage {
            blobs: blobs.clone(),
            ..Storage::memory()
        };
        let mut delivered = rec(Status::Delivered, 1, "bob@example.test");
        storage.index.insert(&delivered).await.unwrap();
        delivered = storage.index.get(delivered.id).await.unwrap().unwrap();
        let key = delivered.blob_key();
        // A hold placed after the caller read the record: its mark wins.
        let mut held = delivered.clone();
        held.legal_hold = Some(LegalHold {
            at: Utc::now(),
            reason: "case".into(),
        });
        storage.index.update(&held, Utc::now()).await.unwrap();
        assert_eq!(
            mark(&storage, &delivered).await.unwrap(),
            Disposal::LegalHold
        );
        assert_eq!(
            blobs.marks.lock().unwrap().clone(),
            [
                (key.clone(), Disposal::Expirable),
                (key.clone(), Disposal::LegalHold)
            ]
        );
        // The store failing: an error, and the mark lifted (never left delivered).
        blobs.marks.lock().unwrap().clear();
        blobs
            .mark_failures
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let released = storage.index.get(held.id).await.unwrap().unwrap();
        let mut released = released;
        released.legal_hold = None;
        storage.index.update(&released, Utc::now()).await.unwrap();
        let released = storage.index.get(held.id).await.unwrap().unwrap();
        assert!(mark(&storage, &released).await.is_err());
        assert_eq!(
            blobs.marks.lock().unwrap().clone(),
            [(key.clone(), Disposal::Keep)]
        );
    }

    fn rec(status: Status, age_days: i64, rcpt: &str) -> Record {
        let at = Utc::now() - Duration::days(age_days);
        let mut r = Record::held(
            MessageId::new(at),
            "alice@example.org".into(),
            vec![rcpt.into()],
            at,
            (1, "00".into()),
            Summary::default(),
        );
        r.status = status;
        r
    }

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            delivered_days: Some(30),
            failed_days: None,
            journal_days: Some(365),
            confidential: vec![ConfidentialRule {
                name: "hr".into(),
                rcpt: Some("*@hr.example.test".into()),
                sender: None,
                header: Some("X-Classification: Confidential".into()),
                keep_days: 0,
            }],
            ..RetentionPolicy::default()
        }
    }

    #[test]
    fn classes_rules_and_their_bases() {
        let p = policy();
        let d = rec(Status::Delivered, 40, "bob@example.test");
        assert_eq!(p.expires(&d).unwrap().1, "delivered_days = 30");
        assert!(
            p.expires(&rec(Status::Failed, 400, "bob@example.test"))
                .is_none()
        );
        assert!(
            p.expires(&rec(Status::Held, 400, "bob@example.test"))
                .is_none()
        );
        let mut c = rec(Status::Journal, 1, "pay@hr.example.test");
        p.classify(&mut c, b"Subject: x\r\n\r\n");
        assert_eq!(c.confidential.as_deref(), Some("hr"));
        let (at, why) = p.expires(&c).unwrap();
        assert_eq!(why, "confidential rule hr");
        assert_eq!(at, c.received_at);
        let mut h = rec(Status::Journal, 1, "bob@example.test");
        p.classify(&mut h, b"X-Classification: strictly CONFIDENTIAL\r\n\r\n");
        assert_eq!(h.confidential.as_deref(), Some("hr"));
        let mut n = rec(Status::Journal, 1, "bob@example.test");
        p.classify(&mut n, b"Subject: X-Classification: confidential\r\n\r\n");
        assert_eq!(n.confidential, None);
        assert_eq!(p.shortest(Status::Journal), Some(0));
    }

    #[tokio::test]
    async fn a_run_pages_through_more_than_one_page_deleting_as_it_goes() {
        let storage = Storage::memory();
        let n = 1_203;
        for i in 0..n {
            let mut r = rec(Status::Delivered, 40, "bob@example.test");
            r.received_at -= Duration::seconds(i);
            r.updated_at = r.received_at;
            r.id = MessageId::new(r.received_at);
            storage.index.insert(&r).await.unwrap();
        }
        let young = rec(Status::Delivered, 1, "bob@example.test");
        storage.index.insert(&young).await.unwrap();
        let report = run(&storage, &policy(), Utc::now()).await.unwrap();
        assert_eq!(report.deleted, n as u64);
        let left = storage.index.list(&ListQuery::default()).await.unwrap();
        assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), [young.id]);
        assert_eq!(storage.audit.entries().await.unwrap().len(), n as usize);
    }

    #[tokio::test]
    async fn a_run_deletes_what_is_due_audits_it_and_spares_legal_holds() {
        let storage = Storage::memory();
        let p = policy();
        let old = rec(Status::Delivered, 40, "bob@example.test");
        let young = rec(Status::Delivered, 10, "bob@example.test");
        let mut held = rec(Status::Delivered, 50, "bob@example.test");
        held.legal_hold = Some(LegalHold {
            at: Utc::now(),
            reason: "case 7".into(),
        });
        for r in [&old, &young, &held] {
            storage.index.insert(r).await.unwrap();
        }
        let report = run(&storage, &p, Utc::now()).await.unwrap();
        assert_eq!(
            report,
            RetentionReport {
                deleted: 1,
                held_back: 1,
                changed: 0,
                incomplete: 0,
            }
        );
        assert!(storage.index.get(old.id).await.unwrap().is_none());
        assert!(storage.index.get(young.id).await.unwrap().is_some());
        assert!(storage.index.get(held.id).await.unwrap().is_some());
        let audit = storage.audit.entries().await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (audit[0].id, audit[0].action.as_str()),
            (Some(old.id), "delete")
        );
        assert!(matches!(
            delete(
                &storage,
                &held,
                "operator:root",
                "purge",
                Utc::now(),
                Utc::now()
            )
            .await,
            Err(StoreError::LegalHold(_))
        ));
    }

    #[tokio::test]
    async fn bytes_left_behind_by_a_delete_are_retried_then_audited_with_their_key() {
        for (fails, ok) in [(1, true), (BLOB_DELETE_TRIES, false)] {
            // `ok`: the bytes went; either way the delete itself succeeds (the row is gone).
            let mut storage = Storage::memory();
            let faulty = FaultyBlobs::new(storage.blobs.clone());
            faulty
                .delete_failures
                .store(fails, std::sync::atomic::Ordering::SeqCst);
            storage.blobs = Arc::new(faulty);
            let old = rec(Status::Delivered, 40, "bob@example.test");
            storage.index.insert(&old).await.unwrap();
            let done = delete(
                &storage,
                &old,
                "retention",
                "policy",
                Utc::now(),
                Utc::now(),
            )
            .await;
            let want = if ok {
                Deleted::Whole
            } else {
                Deleted::BytesLeft
            };
            assert_eq!(done.unwrap(), want, "{fails} failures");
            assert!(storage.index.get(old.id).await.unwrap().is_none());
            let actions: Vec<String> = storage
                .audit
                .entries()
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.action)
                .collect();
            let want: &[&str] = if ok {
                &["delete"]
            } else {
                &["delete", "delete-incomplete"]
            };
            assert_eq!(actions, want, "{fails} failures");
        }
    }
}
