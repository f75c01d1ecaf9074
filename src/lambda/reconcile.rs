//! The reconciler: raw messages in the blob store that have no index record.
//!
//! On AWS, S3 is the source of truth: SES has stored the message (and told the sender
//! 250) before the ingest function runs. If ingest fails past Lambda's retries, the
//! object is still there without a record, and nothing would ever deliver it. The drain
//! function therefore runs this first (after the events of the ingest's failure queue):
//! every object its sweep lists (see below) that is older than [`MIN_AGE`] (so an ingest
//! in flight is not raced), was stored since the last sweep began, and whose derived id
//! has no record is indexed from its own headers and marked [`Intake::Reconciled`]:
//!
//! - MAIL FROM from `Return-Path` (SES writes the envelope sender there);
//! - recipients from the `for` clause of the topmost `Received` (SES's own), else from
//!   `To`/`Cc` addresses in the configured domains. Nothing outside the domains is ever
//!   taken, so a guessed envelope cannot turn the drain into a relay;
//! - SES's `X-SES-*-Verdict` headers as verdicts; a virus FAIL is quarantined;
//! - filed by the ingest's own rules ([`Ingest::file`]): a copy to a journal address
//!   (the `for` clause may name one outside the domains) or an Exchange journal report is
//!   filed as journal (archived, never delivered) or refused, never held for the To/Cc
//!   recipients it names, which would deliver it to them and have the primary journal
//!   it again.
//!
//! Without a usable recipient the record is stored as `failed` with the reason, visible
//! to the operator (`standby list --status failed`, `show --raw`), never deleted.
//!
//! # A bounded source
//! The fast path for a failed ingest is not here: Lambda puts an event that failed its
//! retries (or grew too old in its queue) on the ingest function's on-failure queue, and
//! the drain function ingests it from there with its exact envelope at each run. This is
//! the safety net for what that misses, and it must not cost more as the archive grows:
//! a *sweep* lists the store a few pages per run ([`SWEEP_PAGES`] of [`PAGE`] keys, one
//! `ListObjectsV2` each, never the whole listing in memory), saving where it is in the
//! drain function's health item, and once it has been through every key the next begins
//! [`SWEEP_EVERY`] later. Runs between sweeps list nothing. Within a sweep only objects
//! stored since the last finished sweep began (the watermark, minus [`OVERLAP`]) are
//! looked up in the index, so its reads follow the traffic, not the archive: for a
//! million stored objects a sweep is about 1,000 list requests a day.
//!
//! The price is time: a message whose event reached neither the function nor its failure
//! queue (Lambda documents that an overloaded function's queued events may be dropped)
//! waits for the next sweep, up to [`SWEEP_EVERY`] and the sweep's own length. Sweeps
//! come at least four times within `hold_days` ([`Bounds::for_hold_days`]), as a message
//! is indexed with the time it was stored and one found after `hold_days` would expire
//! without an attempt. An object without a record that carries the `standby-state` mark
//! had a record once (deleted by retention, its bytes left for the store's lifecycle
//! rule): it is not indexed again, which would deliver it again. An object that fails
//! (unreadable, an index error) is logged and skipped, and the sweep keeps the watermark
//! where it was so the next one tries it again; a run lists for half of what is left of
//! its invocation at most, and the drain runs whatever the reconciler met.

use chrono::{DateTime, Duration, Utc};
use mail_parser::{HeaderValue, MessageParser};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ingest::Ingest;
use crate::config::Journal;
use crate::error::StoreError;
use crate::model::{Disposal, Intake, MessageId, Record, Status, Sweep, Verdicts};
use crate::ports::{BlobInfo, Storage};
use crate::summary;

/// The object SES writes under a rule's prefix when it creates or changes the rule's S3
/// action, to test that it may write there (SES developer guide, "Deliver to S3 bucket
/// action"): not a message, never a record.
pub const SES_SETUP_NOTIFICATION: &str = "AMAZON_SES_SETUP_NOTIFICATION";

/// Objects younger than this are left to the ingest function.
pub const MIN_AGE: Duration = Duration::minutes(5);
/// How far before the watermark a run looks again (store times are not perfectly ordered).
pub const OVERLAP: Duration = Duration::minutes(15);

/// Keys one list request asks for (S3's most).
pub const PAGE: usize = 1000;
/// List requests a run makes at most while a sweep is under way.
pub const SWEEP_PAGES: usize = 10;

/// How much of the store one run lists (`pages` requests of `page` keys, none once
/// `until` has passed) and how long after one sweep the next begins (`every`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub page: usize,
    pub pages: usize,
    pub every: Duration,
    pub until: Option<std::time::Instant>,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            page: PAGE,
            pages: SWEEP_PAGES,
            every: SWEEP_EVERY,
            until: None,
        }
    }
}

impl Bounds {
    /// Sweeps [`SWEEP_EVERY`], or four times within `hold_days` when that is shorter: a
    /// message only the sweep finds is indexed with the time it was stored, and one found
    /// after `hold_days` would expire (and bounce) without a single attempt.
    pub fn for_hold_days(hold_days: u32) -> Self {
        Bounds {
            every: SWEEP_EVERY.min(Duration::hours(i64::from(hold_days.max(1)) * 24 / 4)),
            ..Bounds::default()
        }
    }
}
/// From the end of one sweep to the start of the next.
pub const SWEEP_EVERY: Duration = Duration::hours(24);
/// Sweeps in a row in which an object failed before the watermark moves on without it.
pub const FROZEN_SWEEPS: u32 = 3;

/// What a reconcile run found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// List requests made (0 between sweeps).
    pub pages: u64,
    /// The sweep under way went through its last key in this run.
    pub swept: bool,
    /// Objects looked up in the index (stored since the watermark).
    pub checked: u64,
    /// Objects without a record whose mark says they had one (a record deleted by
    /// retention, its bytes left for the store's own expiry): not indexed again.
    pub marked: u64,
    /// Objects (or a page) that failed: logged, skipped, tried again by the next sweep.
    pub errors: u64,
    /// Records created.
    pub reconciled: u64,
    /// Of those, stored as failed (no recipient, or a virus).
    pub unroutable: u64,
}

/// Go on with the sweep (see the module docs), or begin one when it is due: index every
/// unindexed blob it lists that was stored after the watermark (less [`OVERLAP`]) and at
/// least [`MIN_AGE`] before `now`.
///
/// `node` and `address` name the health record that carries the sweep and the watermark
/// (the drain function's, for the primary at `address`); `domains` limits header
/// recipients; `filing` files each record as the ingest would; `dry_run` counts without
/// writing (and saves no position).
pub async fn reconcile(
    storage: &Storage,
    node: (&str, &str),
    domains: &[String],
    filing: &Ingest,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<ReconcileReport, StoreError> {
    let bounds = Bounds::default();
    reconcile_within(storage, node, domains, filing, now, dry_run, bounds).await
}

/// [`reconcile`], listing at most `bounds` in this run.
pub async fn reconcile_within(
    storage: &Storage,
    (node, address): (&str, &str),
    domains: &[String],
    filing: &Ingest,
    now: DateTime<Utc>,
    dry_run: bool,
    bounds: Bounds,
) -> Result<ReconcileReport, StoreError> {
    let health = crate::health::load_for(storage.index.as_ref(), node, address).await?;
    let read = health.sweep.clone().unwrap_or_default();
    let mut report = ReconcileReport::default();
    if read.started.is_none() && read.next_at.is_some_and(|at| now < at) {
        return Ok(report);
    }
    let started = read.started.unwrap_or(now);
    let upto = now - MIN_AGE;
    let from = health.reconciled_until.map(|w| w - OVERLAP);
    let mut after = read.after.clone();
    let mut errors = read.errors;
    for _ in 0..bounds.pages.max(1) {
        if bounds.until.is_some_and(|u| std::time::Instant::now() >= u) {
            break;
        }
        let page = match storage.blobs.list_page(after.as_deref(), bounds.page).await {
            Ok(p) => p,
            Err(e) => {
                // The position so far is kept; the next run lists from there.
                tracing::warn!(error = %e, "reconciler: listing the store failed");
                report.errors += 1;
                break;
            }
        };
        report.pages += 1;
        let mut out_of_time = false;
        for blob in page.blobs {
            if bounds.until.is_some_and(|u| std::time::Instant::now() >= u) {
                // The position is this key's predecessor: the next run starts here.
                out_of_time = true;
                break;
            }
            let key = blob.key.clone();
            if blob.stored_at <= upto && from.is_none_or(|f| blob.stored_at >= f) {
                // One object that cannot be read or indexed must not stop the sweep, nor
                // the drain after it: the sweep goes on, and keeps the watermark where it
                // was so the next sweep looks at it again. One gone meanwhile (a
                // retention run, the lifecycle rule) is no error.
                match check(storage, &blob, domains, filing, now, dry_run, &mut report).await {
                    Ok(()) | Err(StoreError::MissingBlob(_)) => {}
                    Err(e) => {
                        tracing::warn!(key = %blob.key, error = %e, "reconciler: object skipped");
                        report.errors += 1;
                        errors += 1;
                    }
                }
            }
            after = Some(key);
        }
        if out_of_time {
            break;
        }
        after = page.next;
        if after.is_none() {
            report.swept = true;
            break;
        }
    }
    if !dry_run {
        // Sweeps in a row that met an object failing: after [`FROZEN_SWEEPS`] the
        // watermark moves on anyway (logged), so one object that always fails cannot
        // make every later sweep look up everything stored since.
        let frozen = if errors > 0 { read.frozen + 1 } else { 0 };
        let give_up = report.swept && errors > 0 && frozen >= FROZEN_SWEEPS;
        if give_up {
            tracing::error!(
                errors,
                sweeps = frozen,
                "reconciler: objects failed in {frozen} sweeps in a row; moving on without them (see the warnings for their keys)"
            );
        }
        let sweep = if report.swept {
            Sweep {
                started: None,
                after: None,
                next_at: Some(now + bounds.every),
                errors: 0,
                frozen: if give_up { 0 } else { frozen },
            }
        } else {
            Sweep {
                started: Some(started),
                after,
                next_at: None,
                errors,
                frozen: read.frozen,
            }
        };
        // Every object stored before the sweep began, less the age it must reach, was
        // old enough to be checked when its page came; unless one of them failed.
        let mark = (report.swept && (errors == 0 || give_up)).then(|| started - MIN_AGE);
        // A compare-and-set: an overlapping run (reserved concurrency is optional, and
        // `standby drain` may run beside the function) keeps its own changes; a run that
        // finds the sweep moved on by another leaves it there, and the watermark never
        // moves back.
        crate::health::update(storage.index.as_ref(), node, address, |h| {
            if h.sweep.clone().unwrap_or_default() != read {
                return false;
            }
            h.sweep = Some(sweep.clone());
            h.reconciled_until = h.reconciled_until.max(mark);
            true
        })
        .await?;
    }
    Ok(report)
}

/// Index `blob` from its headers if it has no record (see [`reconcile`]).
async fn check(
    storage: &Storage,
    blob: &BlobInfo,
    domains: &[String],
    filing: &Ingest,
    now: DateTime<Utc>,
    dry_run: bool,
    report: &mut ReconcileReport,
) -> Result<(), StoreError> {
    if blob.key.ends_with(SES_SETUP_NOTIFICATION) {
        return Ok(());
    }
    report.checked += 1;
    let id = match blob.key.parse::<MessageId>() {
        Ok(id) if id.to_string() == blob.key => id,
        _ => MessageId::derived(&blob.key, blob.stored_at),
    };
    if storage.index.get(id).await?.is_some() {
        return Ok(());
    }
    // Marked: its record existed and is gone (a retention delete whose object delete
    // failed, a delivered record's TTL that ran out before the store's lifecycle rule):
    // indexing it again would deliver it again.
    // Only the `delivered` mark: a legal-hold mark without its record means the record
    // was lost (retention never deletes a held record: a table restored from an older
    // copy), and the message is indexed again like any other.
    if storage.blobs.marked(&blob.key).await? == Some(Disposal::Expirable) {
        tracing::warn!(key = %blob.key, "object marked delivered but without a record: its record was deleted; not indexed again");
        report.marked += 1;
        return Ok(());
    }
    let (bytes, info) = storage.blobs.read_all(&blob.key).await?;
    let stored_at = info.stored_at;
    let mut rec = from_headers(
        id,
        &blob.key,
        &bytes,
        stored_at,
        domains,
        filing.journal(),
        now,
    );
    if !dry_run {
        filing
            .file(
                &mut rec,
                &summary::head_lines(&bytes),
                &bytes,
                &blob.key,
                true,
            )
            .await?;
    }
    report.reconciled += 1;
    report.unroutable += u64::from(rec.status == Status::Failed);
    tracing::warn!(
        id = %rec.id,
        key = %blob.key,
        rcpts = rec.rcpts.len(),
        status = %rec.status,
        dry_run,
        "raw message had no index record; reconciled from its headers"
    );
    if !dry_run {
        storage.index.insert(&rec).await?;
    }
    Ok(())
}

/// Build a record for a raw message from its headers alone.
pub fn from_headers(
    id: MessageId,
    key: &str,
    bytes: &[u8],
    stored_at: DateTime<Utc>,
    domains: &[String],
    journal: &Journal,
    now: DateTime<Utc>,
) -> Record {
    let head = summary::head_lines(bytes);
    let parsed = MessageParser::default().parse_headers(&head);
    let mut mail_from = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut verdicts = Verdicts::default();
    let in_domains = |addr: &str| {
        let d = addr
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase());
        d.is_some_and(|d| domains.contains(&d))
    };
    if let Some(m) = &parsed {
        // SES prepends its fields (Return-Path, Received, the verdicts): the topmost of
        // each name is SES's; one lower down is the sender's (mail-parser's
        // `return_path()`, `received()` and `header_raw` return the bottom-most).
        let topmost = |name: &str| {
            m.headers()
                .iter()
                .find(|h| h.name().eq_ignore_ascii_case(name))
                .map(|h| h.value())
        };
        let return_path = topmost("Return-Path");
        if let Some(HeaderValue::Address(a)) = return_path {
            if let Some(addr) = a.first().and_then(|a| a.address()) {
                mail_from = addr.to_string();
            }
        } else if let Some(HeaderValue::Text(t)) = return_path {
            mail_from = t.trim().trim_matches(['<', '>']).to_string();
        }
        // Only the `for` clause of SES's own Received: field names an envelope recipient.
        let ses_received = crate::journal::ses_received(m);
        if let Some(for_) = ses_received.and_then(|r| r.for_.as_deref()) {
            let addr = for_.trim().trim_matches(['<', '>']).to_string();
            if addr.contains('@')
                && (domains.is_empty() || in_domains(&addr) || journal.matches(&addr))
            {
                rcpts.push(addr);
            }
        }
        if rcpts.is_empty() && !domains.is_empty() {
            for list in [m.to(), m.cc()].into_iter().flatten() {
                for a in list.iter() {
                    if let Some(addr) = a.address()
                        && (in_domains(addr) || journal.matches(addr))
                        && !rcpts.iter().any(|x| x.eq_ignore_ascii_case(addr))
                    {
                        rcpts.push(addr.to_string());
                    }
                }
            }
        }
        let header = |name: &str| {
            topmost(name).and_then(|v| v.as_text()).map(|v| {
                v.trim()
                    .split(|c: char| c.is_whitespace())
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
        };
        verdicts.spam = header("X-SES-Spam-Verdict");
        verdicts.virus = header("X-SES-Virus-Verdict");
    }
    let mut rec = Record {
        next_attempt_at: now,
        updated_at: now,
        blob: (key != id.to_string()).then(|| key.to_string()),
        intake: Intake::Reconciled,
        verdicts: Some(verdicts.clone()),
        ..Record::held(
            id,
            mail_from,
            rcpts,
            stored_at,
            (bytes.len() as u64, hex::encode(Sha256::digest(bytes))),
            summary::parse(&head),
        )
    };
    super::ingest::quarantine_if_infected(&mut rec, &verdicts);
    if rec.rcpts.is_empty() {
        rec.status = Status::Failed;
        rec.reason = Some("reconciled: no recipient in our domains found in the headers".into());
    } else {
        rec.settle();
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::FaultyBlobs;
    use std::sync::Arc;

    #[test]
    fn a_sweep_comes_four_times_within_the_hold_and_at_least_daily() {
        assert_eq!(Bounds::for_hold_days(1).every, Duration::hours(6));
        assert_eq!(Bounds::for_hold_days(2).every, Duration::hours(12));
        assert_eq!(Bounds::for_hold_days(0).every, Duration::hours(6));
        assert_eq!(Bounds::for_hold_days(5).every, SWEEP_EVERY);
        assert_eq!(Bounds::for_hold_days(30).every, Duration::hours(24));
    }

    /// An object that cannot be read is skipped, the others are indexed and the drain
    /// goes on; the watermark stays so the next sweeps try it again, until
    /// [`FROZEN_SWEEPS`] sweeps in a row failed on it: then it moves on.
    #[tokio::test]
    async fn an_object_that_fails_is_skipped_and_holds_the_watermark_for_a_few_sweeps() {
        let mem = Storage::memory();
        let mut keys = Vec::new();
        for _ in 0..3 {
            let id = MessageId::new(Utc::now());
            let mut w = mem.blobs.create(id).await.unwrap();
            w.write(RAW).await.unwrap();
            w.commit().await.unwrap();
            keys.push(id.to_string());
        }
        let storage = Storage {
            blobs: Arc::new(FaultyBlobs {
                unreadable: Some(keys[1].clone()),
                ..FaultyBlobs::new(mem.blobs.clone())
            }),
            ..mem
        };
        let filing = Ingest::new(storage.clone(), "");
        let domains = ["example.test".to_string()];
        let node = ("lambda", "primary:587");
        let watermark = || async {
            crate::health::load_for(storage.index.as_ref(), node.0, node.1)
                .await
                .unwrap()
                .reconciled_until
        };
        let t0 = Utc::now() + Duration::minutes(10);
        let run = |at| reconcile(&storage, node, &domains, &filing, at, false);
        let first = run(t0).await.unwrap();
        assert_eq!((first.swept, first.reconciled, first.errors), (true, 2, 1));
        assert_eq!(watermark().await, None, "held back by the failure");
        for n in 1..FROZEN_SWEEPS {
            let at = t0 + SWEEP_EVERY * (n as i32) + Duration::minutes(1);
            let again = run(at).await.unwrap();
            assert_eq!((again.swept, again.errors), (true, 1), "sweep {n}");
            let moved = watermark().await;
            if n + 1 < FROZEN_SWEEPS {
                assert_eq!(moved, None, "sweep {n}");
            } else {
                assert!(moved.is_some(), "moved on after {FROZEN_SWEEPS} sweeps");
            }
        }
    }

    const RAW: &[u8] = b"Return-Path: <alice@example.org>\r\n\
Received: from mail.example.org (mail.example.org [192.0.2.1])\r\n by inbound-smtp.us-east-1.amazonaws.com with SMTP id abc123\r\n for bob@example.test;\r\n Sat, 28 Nov 2026 10:00:00 +0000 (UTC)\r\n\
X-SES-Spam-Verdict: PASS\r\nX-SES-Virus-Verdict: PASS\r\n\
From: Alice <alice@example.org>\r\nTo: bob@example.test, eve@elsewhere.example\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn envelope_from_ses_headers() {
        let now = Utc::now();
        let id = MessageId::derived("abc123", now);
        let rec = from_headers(
            id,
            "abc123",
            RAW,
            now,
            &["example.test".into()],
            &Journal::default(),
            now,
        );
        assert_eq!(rec.mail_from, "alice@example.org");
        let rcpts: Vec<_> = rec.rcpts.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(rcpts, ["bob@example.test"]);
        assert_eq!(rec.status, Status::Held);
        assert_eq!(rec.intake, Intake::Reconciled);
        assert_eq!(rec.blob.as_deref(), Some("abc123"));
        assert_eq!(rec.verdicts.unwrap().spam.as_deref(), Some("PASS"));
    }

    #[test]
    fn a_virus_verdict_in_the_headers_is_quarantined() {
        let raw = String::from_utf8_lossy(RAW)
            .replace("X-SES-Virus-Verdict: PASS", "X-SES-Virus-Verdict: FAIL");
        let now = Utc::now();
        let id = MessageId::derived("v", now);
        let rec = from_headers(
            id,
            "v",
            raw.as_bytes(),
            now,
            &["example.test".into()],
            &Journal::default(),
            now,
        );
        assert_eq!(rec.status, Status::Failed);
        assert_eq!(rec.reason.as_deref(), Some("virus"));
    }

    #[test]
    fn only_ses_own_topmost_fields_count_not_what_the_sender_wrote_below() {
        let raw = String::from_utf8_lossy(RAW)
            .replace("X-SES-Virus-Verdict: PASS", "X-SES-Virus-Verdict: FAIL")
            .replace(
                "From: Alice",
                "Return-Path: <victim@example.net>\r\nX-SES-Virus-Verdict: PASS\r\nReceived: from x by y for journal@example.test;\r\n Sat, 28 Nov 2026 09:00:00 +0000\r\nFrom: Alice",
            );
        let now = Utc::now();
        let id = MessageId::derived("f", now);
        let journal = Journal::new(&["journal@example.test".to_string()], &[]);
        let rec = from_headers(
            id,
            "f",
            raw.as_bytes(),
            now,
            &["example.test".into()],
            &journal,
            now,
        );
        assert_eq!(rec.reason.as_deref(), Some("virus"), "{rec:?}");
        let rcpts: Vec<_> = rec.rcpts.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(rcpts, ["bob@example.test"], "SES's `for`, not the sender's");
        assert_eq!(rec.mail_from, "alice@example.org", "SES's Return-Path");
    }

    #[test]
    fn foreign_or_missing_recipients_are_never_guessed() {
        let raw = b"From: a@example.org\r\nTo: eve@elsewhere.example\r\nSubject: x\r\n\r\nbody\r\n";
        let now = Utc::now();
        let id = MessageId::derived("k", now);
        let rec = from_headers(
            id,
            "k",
            raw,
            now,
            &["example.test".into()],
            &Journal::default(),
            now,
        );
        assert!(rec.rcpts.is_empty());
        assert_eq!(rec.status, Status::Failed);
        assert!(rec.reason.unwrap().contains("no recipient"));
    }
}
