//! The drain: hand held mail back to the primary.
//!
//! Work is claimed with expiring leases ([`Index::claim`](crate::ports::Index::claim)), so
//! any number of drains (the serve loop, `standby drain`, a Lambda) can run at once without
//! delivering a message twice; a crashed worker's messages come back when the lease
//! expires. At-least-once: a crash between the primary's 250 and our write-back can
//! duplicate that one message, nothing more.
//!
//! A lease holds for the whole transaction, whatever the batch size, lease length or the
//! primary's speed: each claim has a random token; right before a message is sent its lease
//! is renewed (conditional on the token) unless two thirds of it are still to run, and the
//! message skipped if that fails; while the
//! transaction runs (the wait for the final dot's reply included) a [`Keeper`] renews it
//! every `lease / 3`; and the final dot is written only while the lease is known to be
//! ours (checked as the body ends, see [`Keeper::guard`]). A renewal that fails before
//! the dot aborts the transaction: the session is dropped mid-DATA, which the primary
//! must treat as no message (RFC 5321 §4.1.1.4). The write-back is conditional on the
//! token and on the version read with the claim. Another claim's lease is taken over only
//! once it ended `clock_skew` ago by the claimer's clock (`[drain] clock_skew_secs`): the
//! assumption is that the clocks of all drains sharing an index (hosts, laptops, Lambda)
//! agree to within that margin.
//!
//! Each recipient is judged on its own reply: accepted at RCPT (250 or 251 only) and 2xx
//! after the final dot delivered, 4xx retried with [`backoff`], 5xx failed with the
//! primary's reply recorded. A session-level failure (connection refused or lost,
//! timeout, 421) stops the worker that saw it: the primary is struggling, and hammering it
//! would only turn a backlog into a storm of deferrals. No reply to the final dot is
//! *ambiguous*: deferred like a 4xx, counted apart ([`DrainReport::ambiguous`]), since the
//! retry may deliver the message twice.
//!
//! A circuit breaker stops the whole run, leaving the rest of the claims untouched, when
//! the primary answers MAIL with a 4xx (it cannot take mail now: a full disk), or refuses
//! `[drain] breaker_5xx` messages in a row with 5xx and delivers none in between (it came
//! back with an empty user directory: without the breaker the whole backlog would fail
//! and bounce in one run). The latter halts draining until an operator's `--force`
//! ([`RunOptions::force`], recorded by [`crate::health`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::dsn::{self, DsnSettings};
use crate::error::{RelayError, StoreError};
use crate::model::auth_results::StripOurs;
use crate::model::lines::WireEncoder;
use crate::model::{
    Breaker, DrainReport, Intake, Lease, MessageId, RcptStatus, Record, Status, redact, redact_text,
};
use crate::ports::Storage;
use crate::ports::{
    BlobReader, ClaimRequest, Clock, Index, Relay, RelaySession, Reply, Transaction,
    retry_transient,
};

/// How many messages a worker leases at a time.
const CLAIM_BATCH: usize = 32;

/// Delay before the next attempt after `attempts` failed ones: 1m, 5m, 15m, 30m, then hourly.
pub fn backoff(attempts: u32) -> Duration {
    const STEPS: [u64; 4] = [60, 300, 900, 1800];
    let secs = match attempts {
        0 => 0,
        n => STEPS.get(n as usize - 1).copied().unwrap_or(3600),
    };
    Duration::from_secs(secs)
}

/// Drain settings (from `[drain]` and `hold_days`).
#[derive(Debug, Clone)]
pub struct DrainSettings {
    pub concurrency: usize,
    pub lease: Duration,
    /// How far the clocks of drains sharing the index may disagree (see the module doc).
    pub clock_skew: Duration,
    pub hold_days: u32,
    /// Messages per second at most; 0 for no limit.
    pub rate_per_sec: u32,
    /// Gradual redelivery once the primary is back (see [`Ramp`]); `None`: none.
    pub ramp: Option<Ramp>,
    /// Bounces for messages that fail here (see [`crate::dsn`]).
    pub dsn: DsnSettings,
    /// Messages in a row refused with 5xx that stop the run and halt draining; 0: off.
    pub breaker_5xx: u32,
    /// The standby's name in the `Authentication-Results:` field it adds on redelivery
    /// (its `hostname`; see [`crate::model::auth_results`]).
    pub authserv_id: String,
    /// The authserv-ids whose fields are removed from the header on the way (ours, and
    /// this node's host name where it differs).
    pub strip_authserv_ids: Vec<String>,
    /// Seals each message with an ARC set under the results (`[arc]`); none: no set.
    pub arc: Option<Arc<dyn crate::ports::ArcSeal>>,
}

/// Gradual redelivery: `start` messages a second when the primary came back, doubled
/// every `step`, up to the drain's `rate_per_sec` (no cap when that is 0), so a primary
/// that just recovered is not flooded with the whole backlog at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ramp {
    pub start: u32,
    pub step: Duration,
}

impl Ramp {
    /// Messages a second allowed `elapsed` after the primary came back, under `cap`
    /// (0: none); `None` once the ramp has reached it (no ramp limit left).
    pub fn rate(&self, elapsed: Duration, cap: u32) -> Option<f64> {
        let steps = elapsed.as_secs_f64() / self.step.as_secs_f64().max(0.001);
        // Past 2^30 the ramp is over whatever the cap.
        let doubled = f64::from(self.start.max(1)) * 2f64.powi(steps.floor().min(30.0) as i32);
        match cap {
            0 if steps >= 30.0 => None,
            0 => Some(doubled),
            cap if doubled >= f64::from(cap) => None,
            _ => Some(doubled),
        }
    }
}

/// The result of one attempt on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Deferred,
    Failed,
}

/// Per-message progress callback (for a progress bar).
pub type Progress = Arc<dyn Fn(MessageId, Outcome) + Send + Sync>;

/// Options of one run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Stop claiming work at this instant (Lambda's deadline).
    pub deadline: Option<Instant>,
    /// Stop between messages once this turns true (shutdown); unsent claims are released.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
    pub progress: Option<Progress>,
    /// An operator's `--force`: no circuit breaker in this run, and no ramp.
    pub force: bool,
    /// When the primary came back (its health turned `up`): the ramp counts from here.
    /// `None`: no ramp in this run.
    pub back_since: Option<DateTime<Utc>>,
}

impl RunOptions {
    fn should_stop(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
            || self.stop.as_ref().is_some_and(|rx| *rx.borrow())
    }
}

/// A drain run failed on storage (the primary's failures are in the report instead),
/// or a worker panicked (a bug: the run fails, with the panic's message, once the claims
/// the worker held were given back).
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a drain worker panicked: {0}")]
    WorkerPanicked(String),
}

/// Delivers held messages through a [`Relay`].
#[derive(Clone)]
pub struct Drainer {
    storage: Storage,
    relay: Arc<dyn Relay>,
    clock: Arc<dyn Clock>,
    settings: DrainSettings,
    pace: Arc<Mutex<Instant>>,
}

/// Apply one attempt's result to a record and return the message outcome.
pub fn apply(
    rec: &mut Record,
    result: &Result<Transaction, RelayError>,
    now: DateTime<Utc>,
) -> Outcome {
    let pending = rec.pending().count();
    let replies: Vec<Reply> = match result {
        Err(e) => {
            let reply = Reply::new(if e.is_transient() { 451 } else { 554 }, e.to_string());
            vec![reply; pending]
        }
        Ok(tx) if tx.mail.code != 250 => vec![not_positive(&tx.mail, "MAIL", "250"); pending],
        Ok(tx) => (0..pending)
            .map(|n| {
                let rcpt_reply = tx
                    .rcpts
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| Reply::new(451, "no reply to RCPT from the primary"));
                if !matches!(rcpt_reply.code, 250 | 251) {
                    return not_positive(&rcpt_reply, "RCPT", "250 or 251");
                }
                // Accepted at RCPT: the reply after the final dot decides, and only a
                // 250 there is a delivery (a 221 or 252 may mean anything).
                match &tx.data {
                    Some(d) if d.code == 250 || d.code >= 400 => d.clone(),
                    Some(d) => odd_final_reply(d),
                    None => Reply::new(451, "message data not accepted by the primary"),
                }
            })
            .collect(),
    };
    record_replies(rec, &replies, now)
}

/// Record one reply per pending recipient, in order (2xx delivered, 5xx failed, else
/// still pending; a missing reply is a try-again), count the attempt, settle the status,
/// schedule the next attempt by [`backoff`] and set the reason of a failure. The drain's
/// and the outbound queue's one way of judging an attempt.
pub fn record_replies(rec: &mut Record, replies: &[Reply], now: DateTime<Utc>) -> Outcome {
    let pending: Vec<usize> = rec
        .rcpts
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == RcptStatus::Pending)
        .map(|(i, _)| i)
        .collect();
    for (n, &i) in pending.iter().enumerate() {
        let reply = replies
            .get(n)
            .cloned()
            .unwrap_or_else(|| Reply::new(451, "4.3.0 no reply for this recipient"));
        let r = &mut rec.rcpts[i];
        r.status = if reply.is_positive() {
            RcptStatus::Delivered
        } else if reply.is_permanent() {
            RcptStatus::Failed
        } else {
            RcptStatus::Pending
        };
        r.reply = Some(reply.to_string());
    }
    rec.attempts += 1;
    rec.updated_at = now;
    rec.settle();
    if rec.pending().count() > 0 {
        retry_later(rec, now);
    }
    match rec.status {
        Status::Delivered => Outcome::Delivered,
        Status::Failed => {
            rec.reason = rec
                .rcpts
                .iter()
                .find(|r| r.status == RcptStatus::Failed)
                .and_then(|r| r.reply.clone());
            Outcome::Failed
        }
        // Some recipients may be delivered; the message as a whole is deferred. (A
        // journal copy is never claimed.)
        Status::Held | Status::Paused | Status::Journal | Status::Outbound => Outcome::Deferred,
    }
}

/// A reply to the final dot that is neither 250 nor a refusal (a 221, a 252, a 354): not
/// a delivery, but the primary may have the message, so it is ambiguous.
fn odd_final_reply(reply: &Reply) -> Reply {
    Reply::new(
        451,
        format!(
            "4.5.0 the primary answered the final dot with `{reply}`; only 250 delivers, and it may have the message"
        ),
    )
}

/// Whether the primary answered the final dot with something that is neither a 250 nor
/// a refusal (see [`odd_final_reply`]).
fn odd_final(tx: &Transaction) -> bool {
    tx.data.as_ref().is_some_and(|d| {
        d.code != 250 && d.code < 400 && tx.rcpts.iter().any(|r| matches!(r.code, 250 | 251))
    })
}

/// The subject and detail of a reply's enhanced status code (`("7", "1")` for
/// `550 5.7.1 ...`).
fn subject(reply: &Reply) -> Option<(&str, &str)> {
    let mut parts = reply.enhanced()?.split('.').skip(1);
    Some((parts.next()?, parts.next()?))
}

/// A refusal about this message's sender or content rather than the primary's state:
/// an enhanced code of subject 7 (security or policy: SPF, DMARC, a blocklist, a virus
/// scanner) or, at MAIL, subject 1 (the sender's address, e.g. `4.1.8` sender domain not
/// found). A spammer's forged sender gets these from a healthy primary, so they never
/// trip the circuit breaker: otherwise twenty spam messages held during the outage would
/// halt the draining of everything else.
fn about_the_message(reply: &Reply, at_mail: bool) -> bool {
    match subject(reply) {
        Some(("7", _)) => true,
        // The sender's address (bad 1.7, unknown domain 1.8): Postfix checks the sender
        // at RCPT by default (`smtpd_delay_reject`), so at either stage.
        Some(("1", "7" | "8")) => true,
        Some(("1", _)) => at_mail,
        _ => false,
    }
}

/// `reply` as a refusal: a 4xx or 5xx as it is; anything else the command did not accept
/// with `accepting` (a 235 to RCPT, say) becomes a temporary failure, never a delivery.
fn not_positive(reply: &Reply, command: &str, accepting: &str) -> Reply {
    if reply.code >= 400 {
        return reply.clone();
    }
    Reply::new(
        451,
        format!("4.5.0 the primary answered {command} with `{reply}`; only {accepting} accepts"),
    )
}

/// One run's circuit breaker, shared by its workers.
struct BreakerState {
    /// Refusals in a row that trip it; 0: off (and off under `--force`).
    limit: u32,
    in_a_row: AtomicU32,
    /// Messages in a row refused for reasons about the message (see
    /// [`about_the_message`]); these trip it at [`ABOUT_THE_MESSAGE_FACTOR`] × `limit`.
    about_in_a_row: AtomicU32,
    tripped: std::sync::Mutex<Option<(Breaker, String)>>,
}

/// Refusals about the message (policy, sender, content) trip the breaker only after this
/// many times as many in a row as refusals at RCPT: a healthy primary refusing spam also
/// delivers the mail between, which resets the count; one refusing *everything* on
/// policy grounds (it came back without the standby in its relay list: `554 5.7.1 Relay
/// access denied`) is still stopped before the whole backlog bounces.
const ABOUT_THE_MESSAGE_FACTOR: u32 = 5;

impl BreakerState {
    fn new(limit: u32, force: bool) -> Self {
        BreakerState {
            limit: if force { 0 } else { limit },
            in_a_row: AtomicU32::new(0),
            about_in_a_row: AtomicU32::new(0),
            tripped: std::sync::Mutex::new(None),
        }
    }

    fn armed(&self) -> bool {
        self.limit > 0
    }

    fn tripped(&self) -> Option<(Breaker, String)> {
        self.tripped.lock().ok().and_then(|g| g.clone())
    }

    fn trip(&self, kind: Breaker, why: String) {
        if let Ok(mut g) = self.tripped.lock()
            && g.is_none()
        {
            tracing::warn!(reason = %why, "circuit breaker: stopping the drain run");
            *g = Some((kind, why));
        }
    }

    /// Judge one attempt on `rec` (`tried`: its recipients this attempt was for).
    /// Returns whether this is a refusal of the kind the breaker counts that came after it
    /// had tripped (an attempt in flight on another worker when it tripped, or a count
    /// past the limit): its refusals must then not fail the message (see
    /// [`defer_refusals_after_trip`]), so a run bounces at most `breaker_5xx` messages in a
    /// row however many workers it has. Refusals it does not count (content, a sender
    /// that did not authenticate, an attempt that also delivered) stand as they are.
    fn observe(
        &self,
        rec: &Record,
        tried: &[usize],
        result: &Result<Transaction, RelayError>,
    ) -> bool {
        if !self.armed() {
            return false;
        }
        if let Ok(tx) = result
            && (400..500).contains(&tx.mail.code)
            && !about_the_message(&tx.mail, true)
        {
            self.trip(
                Breaker::Mail4xx,
                format!(
                    "circuit breaker: the primary answered MAIL with `{}` (it cannot take \
                     mail now); the run stopped, the other messages left untouched",
                    redact_text(&tx.mail.to_string())
                ),
            );
            return false;
        }
        let rcpts: Vec<_> = tried.iter().filter_map(|&i| rec.rcpts.get(i)).collect();
        if rcpts.iter().any(|r| r.status == RcptStatus::Delivered) {
            self.in_a_row.store(0, Ordering::SeqCst);
            self.about_in_a_row.store(0, Ordering::SeqCst);
            return false;
        }
        if rcpts.is_empty() || !rcpts.iter().all(|r| r.status == RcptStatus::Failed) {
            return false;
        }
        // Refusals at RCPT say the primary no longer knows our recipients (it came back
        // with an empty directory). A refused sender (at MAIL) or a policy refusal at
        // RCPT may be about this message only (spam with a forged sender): counted apart,
        // against a higher limit, and only for a sender that authenticated and was not
        // judged spam, so a flood of spam held during the outage cannot halt the drain
        // (a primary that refuses everything refuses authenticated senders too). A
        // refusal after the final dot is about the content: never counted.
        let Ok(tx) = result else { return false };
        if tx.mail.code == 250 && tx.rcpts.iter().any(|r| matches!(r.code, 250 | 251)) {
            return false;
        }
        let at_rcpt = tx.mail.code == 250
            && !tx.rcpts.is_empty()
            && tx
                .rcpts
                .iter()
                .all(|r| r.code >= 500 && !about_the_message(r, false));
        let clean_sender = rec
            .verdicts
            .as_ref()
            .is_some_and(|v| v.sender_authenticated() && !v.flagged());
        if !at_rcpt && !clean_sender {
            return false;
        }
        // Which count this refusal adds to, the limit it trips at, and what it is.
        let (count, limit, what) = if at_rcpt {
            (
                &self.in_a_row,
                self.limit,
                String::from("at RCPT ([drain] breaker_5xx"),
            )
        } else {
            (
                &self.about_in_a_row,
                self.limit.saturating_mul(ABOUT_THE_MESSAGE_FACTOR),
                format!(
                    "for policy, sender or content ({ABOUT_THE_MESSAGE_FACTOR} x [drain] \
                     breaker_5xx"
                ),
            )
        };
        let late = self.tripped().is_some();
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        if n > limit {
            // Counted past the limit: the breaker has tripped (on this count or another).
            return true;
        }
        if n == limit {
            let last = rcpts
                .iter()
                .find_map(|r| r.reply.as_deref())
                .map(redact_text)
                .unwrap_or_default();
            self.trip(
                Breaker::Refusals5xx,
                format!(
                    "circuit breaker: {n} messages in a row refused with 5xx {what} = {}; \
                     last: `{last}`); draining halted, the other messages left untouched. \
                     If the primary is right to refuse them, `standby drain --force` resumes",
                    self.limit
                ),
            );
            return late;
        }
        // Below the limit: the count may have been reset by a delivery on another worker
        // after the breaker tripped, so ask again now that this one is counted.
        late || self.tripped().is_some()
    }
}

/// Longest reply text from the primary written to the log.
const LOGGED_REPLY: usize = 300;

/// Log one attempt at info, one line per group of recipients that got the same reply:
/// what became of them, their domains (never the addresses), the primary's reply
/// (control characters replaced, bounded) and, when it accepted them, its queue id, so
/// one grep for the id finds the message in the standby's log and in the primary's.
/// `tried` are the indexes of the recipients this attempt was for.
fn log_attempt(rec: &Record, tried: &[usize]) {
    /// Recipients that got the same reply.
    struct Group<'a> {
        status: RcptStatus,
        reply: &'a str,
        rcpts: usize,
        domains: Vec<&'a str>,
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    for r in tried.iter().filter_map(|&i| rec.rcpts.get(i)) {
        let reply = r.reply.as_deref().unwrap_or_default();
        let domain = redact(&r.address);
        match groups
            .iter_mut()
            .find(|g| g.status == r.status && g.reply == reply)
        {
            Some(g) => {
                g.rcpts += 1;
                if !g.domains.contains(&domain) {
                    g.domains.push(domain);
                }
            }
            None => groups.push(Group {
                status: r.status,
                reply,
                rcpts: 1,
                domains: vec![domain],
            }),
        }
    }
    for g in groups {
        let outcome = match g.status {
            RcptStatus::Delivered => "delivered",
            RcptStatus::Pending => "deferred",
            RcptStatus::Failed => "failed",
        };
        let queue_id = if g.status == RcptStatus::Delivered {
            queue_id(g.reply)
        } else {
            ""
        };
        let reply: String = redact_text(g.reply)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(LOGGED_REPLY)
            .collect();
        tracing::info!(
            id = %rec.id,
            outcome,
            attempts = rec.attempts,
            rcpts = g.rcpts,
            domains = g.domains.join(",").as_str(),
            reply = reply.as_str(),
            queue_id,
            status = %rec.status,
            "delivery attempt"
        );
    }
}

/// The primary's id for a message it accepted, from its reply to the end of data:
/// Postfix's `queued as 4XyZ12`; otherwise the reply's text after the codes (Exchange's
/// `<...> Queued mail for delivery`, Sendmail's `<id> Message accepted for delivery`),
/// which carries whatever id the primary logs.
pub fn queue_id(reply: &str) -> &str {
    const MARK: &str = "queued as ";
    if let Some(at) = reply.to_ascii_lowercase().find(MARK) {
        let id = reply[at + MARK.len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        return id.trim_end_matches(['.', ',', ';', ')']);
    }
    let mut rest = reply.trim();
    for _ in 0..2 {
        // The basic code, then an enhanced one (`2.6.0`).
        if let Some((word, tail)) = rest.split_once(' ')
            && word.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            rest = tail.trim_start();
        }
    }
    rest
}

/// Mark a held message as expired: every pending recipient fails.
pub fn expire(rec: &mut Record, hold_days: u32, now: DateTime<Utc>) {
    let text = format!("expired: not delivered within hold_days = {hold_days}");
    for r in rec
        .rcpts
        .iter_mut()
        .filter(|r| r.status == RcptStatus::Pending)
    {
        r.status = RcptStatus::Failed;
        r.reply = Some(text.clone());
    }
    rec.reason = Some("expired".into());
    rec.updated_at = now;
    rec.settle();
}

impl Drainer {
    pub fn new(
        storage: Storage,
        relay: Arc<dyn Relay>,
        clock: Arc<dyn Clock>,
        settings: DrainSettings,
    ) -> Self {
        Drainer {
            storage,
            relay,
            clock,
            settings,
            pace: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// What goes on top of `rec` for the primary: its ARC set when `[arc]` is set and
    /// the message can be sealed (a first read of it, through the same filter as the
    /// send), then the standby's `Authentication-Results:` field (see
    /// [`crate::model::auth_results`]). [`filtered`] puts it on the bytes outside
    /// [`verified`], so the digest is of the stored bytes.
    async fn top(&self, rec: &Record) -> Vec<u8> {
        let authserv_id = &self.settings.authserv_id;
        let Some(mut methods) = crate::model::auth_results::methods(rec) else {
            return Vec::new();
        };
        let mut top = String::new();
        if let Some(arc) = &self.settings.arc {
            match self.storage.blobs.open(&rec.blob_key()).await {
                Ok(body) => {
                    let body = filtered_quietly(body, &self.settings.strip_authserv_ids);
                    if let Some(set) = arc.seal(rec.id, body, authserv_id, &mut methods).await {
                        top.push_str(&set);
                    }
                }
                Err(e) => {
                    tracing::warn!(id = %rec.id, error = %e, "could not read the message to seal it with ARC; it goes on without a set");
                }
            }
        }
        top.push_str(&crate::model::auth_results::field(authserv_id, &methods));
        top.into_bytes()
    }

    /// A new lease token for one claim: random, never shared by two claims.
    fn token() -> String {
        format!("drain-{}-{}", std::process::id(), ulid::Ulid::new())
    }

    fn skew(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.clock_skew).unwrap_or_default()
    }

    /// Held messages that a run would try now, oldest first (for `--dry-run`).
    pub async fn due(&self) -> Result<Vec<Record>, StoreError> {
        let now = self.clock.now();
        let held = self
            .storage
            .index
            .list(&crate::ports::ListQuery {
                status: Some(Status::Held),
                limit: None,
                after: None,
                ..Default::default()
            })
            .await?;
        Ok(held
            .into_iter()
            .filter(|r| r.next_attempt_at <= now && r.lease.as_ref().is_none_or(|l| l.until <= now))
            .collect())
    }

    /// Fail held messages older than `hold_days`. Returns how many.
    pub async fn expire_old(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        loop {
            let owner = Self::token();
            let now = self.clock.now();
            let cutoff = now - chrono::Duration::days(i64::from(self.settings.hold_days));
            let batch = self
                .storage
                .index
                .claim(&ClaimRequest {
                    now,
                    owner: owner.clone(),
                    lease_until: now + self.lease(),
                    limit: 100,
                    status: Status::Held,
                    received_before: Some(cutoff),
                    skew: self.skew(),
                })
                .await?;
            if batch.is_empty() {
                return Ok(n);
            }
            for mut rec in batch {
                expire(&mut rec, self.settings.hold_days, now);
                dsn::settle(&self.storage, &mut rec, &self.settings.dsn, now).await?;
                self.storage.index.complete(&rec, &owner).await?;
                tracing::info!(id = %rec.id, "held message expired");
                n += 1;
            }
        }
    }

    /// Right before an attempt: whether the claim `owner` still holds the lease on `rec`,
    /// renewed to a whole lease from now (a batch is claimed at once, and a slow primary
    /// or the rate limit can outlast the lease of its last messages). Without this, a
    /// lease that ran out could be used to send a message another node has claimed and
    /// is sending too.
    /// Returns the renewed lease's end, computed before the renewal was sent (so it
    /// never overstates the lease by the renewal's latency), or `None`.
    ///
    /// A lease of this claim with two thirds of it or more still to run (the claim was
    /// moments ago, as for most of a batch sent at the primary's pace) is not renewed:
    /// while it runs no other drain can claim the message and no operator command can
    /// change or delete it (each is conditional on no live lease, `Index::update` and
    /// `Index::delete`), the [`Keeper`] started with its end renews it once two thirds are
    /// left, and the final dot waits for a lease known to be ours in any case. That saves
    /// a conditional write per message (on AWS, one DynamoDB write with its two index
    /// entries).
    async fn still_ours(
        &self,
        rec: &mut Record,
        owner: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.clock.now();
        if let Some(lease) = &rec.lease
            && lease.owner == owner
            && lease.until - now >= renew_below(self.lease())
        {
            return Ok(Some(lease.until));
        }
        let until = now + self.lease();
        if !self.storage.index.renew(rec.id, owner, until).await? {
            return Ok(None);
        }
        rec.lease = Some(Lease {
            owner: owner.to_string(),
            until,
        });
        Ok(Some(until))
    }

    fn lease(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::minutes(10))
    }

    /// Deliver everything due now; returns when nothing due is left, a deadline passes,
    /// or every worker stopped on the primary's trouble.
    pub async fn run(&self, opts: RunOptions) -> Result<DrainReport, DrainError> {
        let expired = self.expire_old().await?;
        let breaker = Arc::new(BreakerState::new(self.settings.breaker_5xx, opts.force));
        let mut workers = tokio::task::JoinSet::new();
        // Claims not yet written back, so those of a worker that panicked (or stopped on
        // an error) are given back at the end instead of waiting out their lease.
        let claims = Claims::default();
        let mut report = DrainReport {
            failed: expired,
            ..Default::default()
        };
        // One claim before the workers start, so a run with nothing due (every minute of
        // a quiet day on AWS) asks the index once, not once per worker; a first batch
        // short of a full one took everything due, so one worker is enough (it goes on
        // claiming what falls due meanwhile, the DSNs of this run included, until a
        // claim comes back empty).
        let first = if opts.should_stop() {
            Vec::new()
        } else {
            let owner = Self::token();
            let batch = self.claim(&owner).await?;
            claims.add(&batch, &owner);
            batch.into_iter().map(|r| (r, owner.clone())).collect()
        };
        if first.is_empty() {
            return Ok(report);
        }
        let exhausted = Arc::new(AtomicBool::new(false));
        let n = if first.len() < CLAIM_BATCH {
            1
        } else {
            self.settings.concurrency.max(1)
        };
        let mut first = Some(first);
        for _ in 0..n {
            let this = self.clone();
            let opts = opts.clone();
            let claims = claims.clone();
            let breaker = breaker.clone();
            let start = Start {
                batch: first.take().unwrap_or_default(),
                exhausted: exhausted.clone(),
            };
            workers.spawn(async move { this.worker(opts, claims, &breaker, start).await });
        }
        let mut first_err = None;
        let mut panicked = None;
        let mut reached = false;
        let mut any_unreachable = false;
        while let Some(joined) = workers.join_next().await {
            let w = match joined {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                    continue;
                }
                Err(e) => {
                    let why = match e.try_into_panic() {
                        Ok(p) => p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".into()),
                        Err(e) => e.to_string(),
                    };
                    tracing::error!(panic = %why, "drain worker panicked");
                    panicked.get_or_insert(why);
                    continue;
                }
            };
            report.delivered += w.delivered;
            report.deferred += w.deferred;
            report.failed += w.failed;
            report.aborted += w.aborted;
            report.ambiguous += w.ambiguous;
            reached |= w.connected;
            any_unreachable |= w.unreachable;
            if report.stopped.is_none() {
                report.stopped = w.stopped;
            }
        }
        let left = claims.take();
        if !left.is_empty() {
            tracing::warn!(
                claims = left.len(),
                "giving back the claims of a worker that stopped"
            );
        }
        for (rec, token) in left {
            if let Err(e) = release(self.storage.index.as_ref(), &rec, &token).await {
                tracing::warn!(id = %rec.id, error = %e, "could not give back a claim; it returns when its lease ends");
            }
        }
        if let Some(why) = panicked {
            return Err(DrainError::WorkerPanicked(why));
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if let Some((kind, why)) = breaker.tripped() {
            report.breaker = Some(kind);
            report.stopped = Some(why);
        }
        report.unreachable = any_unreachable && !reached;
        Ok(report)
    }

    /// Wait for this worker's slot under the rate; `false` when a stop came first.
    async fn pace(&self, opts: &RunOptions) -> bool {
        let cap = self.settings.rate_per_sec;
        // The rate at the slot's own time, not when a worker asks for it: workers reserve
        // slots ahead, and a rate read at reservation would stretch each ramp step by
        // as many slots as there are workers.
        let rate_at = |ahead: Duration| -> Option<f64> {
            let ramped = match (self.settings.ramp, opts.back_since, opts.force) {
                (Some(ramp), Some(since), false) => {
                    let elapsed = (self.clock.now() - since).to_std().unwrap_or_default();
                    ramp.rate(elapsed + ahead, cap)
                }
                _ => None,
            };
            match (ramped, cap) {
                (Some(r), _) => Some(r),
                (None, 0) => None,
                (None, cap) => Some(f64::from(cap)),
            }
        };
        // No limit now is no limit later (a ramp that is over stays over).
        if rate_at(Duration::ZERO).is_none() {
            return true;
        }
        let slot = {
            let mut next = self.pace.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            let Some(rate) = rate_at(slot - now) else {
                return true;
            };
            *next = slot + Duration::from_secs_f64(1.0 / rate);
            slot
        };
        // A slot past the run's deadline is never reached: the message waits for the
        // next run (on Lambda, the time kept for the last reply is not slept away).
        if opts.deadline.is_some_and(|d| slot >= d) {
            return false;
        }
        let sleep = tokio::time::sleep_until(slot);
        match opts.stop.clone() {
            Some(mut stop) => tokio::select! {
                () = sleep => true,
                _ = stop.wait_for(|s| *s) => false,
            },
            None => {
                sleep.await;
                true
            }
        }
    }

    /// Lease up to a batch of due messages for `owner`.
    async fn claim(&self, owner: &str) -> Result<Vec<Record>, DrainError> {
        let now = self.clock.now();
        Ok(self
            .storage
            .index
            .claim(&ClaimRequest {
                now,
                owner: owner.to_string(),
                lease_until: now + self.lease(),
                limit: CLAIM_BATCH,
                status: Status::Held,
                received_before: None,
                skew: self.skew(),
            })
            .await?)
    }

    async fn worker(
        &self,
        opts: RunOptions,
        claims: Claims,
        breaker: &BreakerState,
        start: Start,
    ) -> Result<WorkerReport, DrainError> {
        let index = &self.storage.index;
        let mut w = WorkerReport::default();
        let mut session: Option<Box<dyn RelaySession>> = None;
        let mut given = start.batch;
        // Messages in a row whose bytes were not their record's: a few are damage to
        // those files; more look like a disk returning other data, or a spool restored
        // from another backup than its index, and the worker stops rather than cut off
        // transaction after transaction at the primary.
        let mut mismatches = 0u32;
        'claims: loop {
            let batch: Vec<(Record, String)> = if !given.is_empty() {
                std::mem::take(&mut given)
            } else {
                if opts.should_stop() || start.exhausted.load(Ordering::SeqCst) {
                    break;
                }
                let owner = Self::token();
                let batch = self.claim(&owner).await?;
                if batch.is_empty() {
                    // Nothing due: the workers still running finish what they hold.
                    start.exhausted.store(true, Ordering::SeqCst);
                    break;
                }
                claims.add(&batch, &owner);
                batch.into_iter().map(|r| (r, owner.clone())).collect()
            };
            for (mut rec, owner) in batch {
                // Never the primary's, whatever its status says (a second guard: `settle`
                // keeps such a record `outbound`).
                if rec.sent == Some(crate::model::SentPart::Outbound) {
                    tracing::error!(id = %rec.id, "an outside recipients' part of a user's message was held; not sending it to the primary");
                    release(index.as_ref(), &rec, &owner).await?;
                    claims.done(rec.id);
                    continue;
                }
                if opts.should_stop() || w.stopped.is_some() || breaker.tripped().is_some() {
                    tracing::debug!(id = %rec.id, "releasing claim");
                    release(index.as_ref(), &rec, &owner).await?;
                    claims.done(rec.id);
                    continue;
                }
                if session.is_none() {
                    match self.relay.connect().await {
                        Ok(s) => {
                            session = Some(s);
                            w.connected = true;
                        }
                        Err(e) => {
                            // Not the message's fault: give it back untouched.
                            tracing::warn!(error = %e, "cannot open a session with the primary");
                            w.unreachable = !w.connected;
                            w.stopped = Some(e.to_string());
                            release(index.as_ref(), &rec, &owner).await?;
                            claims.done(rec.id);
                            continue;
                        }
                    }
                }
                let Some(s) = session.as_mut() else {
                    continue; // connected just above
                };
                // A slow pace (the ramp's first steps) may hold a worker for a while:
                // a stop, the deadline or a tripped breaker meanwhile sends nothing more.
                if !self.pace(&opts).await || breaker.tripped().is_some() {
                    release(index.as_ref(), &rec, &owner).await?;
                    claims.done(rec.id);
                    continue;
                }
                let Some(until) = self.still_ours(&mut rec, &owner).await? else {
                    tracing::warn!(id = %rec.id, "lease ran out before the attempt and another worker took the message; not sending it");
                    claims.done(rec.id);
                    continue;
                };
                let keeper = Keeper::start(
                    index.clone(),
                    self.clock.clone(),
                    rec.id,
                    &owner,
                    self.lease(),
                    until,
                );
                // With the "delivery attempt" line after the write-back, this brackets the
                // window in which a crash can duplicate the message.
                tracing::debug!(id = %rec.id, "attempt started");
                // Whether the session saw a command of this transaction: a storage error
                // opening the message leaves it clean, one while reading the body leaves
                // it inside DATA.
                let mut sent = false;
                let attempt = std::time::Instant::now();
                let top = self.top(&rec).await;
                let result = match self.storage.blobs.open(&rec.blob_key()).await {
                    Ok(body) => {
                        sent = true;
                        let rcpts: Vec<String> = rec.pending().map(|r| r.address.clone()).collect();
                        let body = filtered(
                            verified(body, &rec),
                            top,
                            &self.settings.strip_authserv_ids,
                            rec.id,
                        );
                        s.send(&rec.mail_from, &rcpts, keeper.guard(body)).await
                    }
                    Err(e) => Err(RelayError::Blob(e)),
                };
                match keeper.stop() {
                    Kept::Held => {}
                    Kept::LostBeforeDot => {
                        // The final dot was never written: dropping the connection
                        // mid-DATA aborts the transaction at the primary. The message is
                        // another claim's now.
                        tracing::warn!(id = %rec.id, "lease lost while sending; transaction aborted before the final dot, not written back");
                        session = None;
                        claims.done(rec.id);
                        w.aborted += 1;
                        continue;
                    }
                    Kept::LostAfterDot => {
                        tracing::error!(id = %rec.id, "lease lost after the final dot (renewals failed until it ran out); the write-back will be refused and the message may be delivered twice");
                    }
                }
                // No reply to the final dot, or one that is neither 250 nor a refusal: the
                // primary may have the message.
                let ambiguous = matches!(&result, Ok(tx) if tx.ambiguous || odd_final(tx));
                let session_broken = match &result {
                    // Refused before MAIL was written: the session is as it was.
                    Err(RelayError::Unsendable(_)) => false,
                    Err(RelayError::Blob(_)) => sent,
                    Err(_) => true,
                    Ok(tx) => {
                        ambiguous
                            || tx.mail.code == 421
                            || tx.data.as_ref().is_some_and(|d| d.code == 421)
                    }
                };
                let tried: Vec<usize> = rec
                    .rcpts
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.status == RcptStatus::Pending)
                    .map(|(i, _)| i)
                    .collect();
                let mut outcome = apply(&mut rec, &result, self.clock.now());
                if breaker.observe(&rec, &tried, &result)
                    && defer_refusals_after_trip(&mut rec, &tried, self.clock.now())
                {
                    outcome = Outcome::Deferred;
                }
                if ambiguous {
                    w.ambiguous += 1;
                    tracing::warn!(id = %rec.id, "no reply (or no 250) to the final dot: the primary may have the message; deferred, and the retry may deliver it twice");
                }
                if outcome == Outcome::Failed
                    && let Err(e) = dsn::settle(
                        &self.storage,
                        &mut rec,
                        &self.settings.dsn,
                        self.clock.now(),
                    )
                    .await
                {
                    // The bounce could not be decided (storage trouble): what the primary
                    // accepted is still written back (never sent again); the refused
                    // recipients wait, and are tried and bounced on a later attempt.
                    tracing::warn!(id = %rec.id, error = %e, "could not queue the DSN; the refused recipients stay held and are tried again");
                    defer_refused(&mut rec, self.clock.now());
                    outcome = Outcome::Deferred;
                }
                let written = write_back(index.as_ref(), &rec, &owner).await;
                claims.done(rec.id);
                match written {
                    Ok(()) if outcome == Outcome::Delivered => {
                        // The store's own retention may now delete the bytes (unless a
                        // legal hold says otherwise, placed before or meanwhile): a
                        // failed mark only keeps the object longer.
                        if let Err(e) = crate::retention::mark(&self.storage, &rec).await {
                            tracing::warn!(id = %rec.id, error = %e, "could not mark the stored message delivered");
                        }
                    }
                    Ok(()) => {}
                    Err(StoreError::Leased(id) | StoreError::Changed(id)) => {
                        tracing::warn!(%id, "lease lost before write-back; another worker owns the message");
                    }
                    Err(StoreError::NotFound(id)) => {
                        tracing::warn!(%id, "message purged while it was being delivered");
                    }
                    Err(e) => return Err(e.into()),
                }
                let result_name = match outcome {
                    Outcome::Delivered => {
                        w.delivered += 1;
                        "delivered"
                    }
                    Outcome::Deferred => {
                        w.deferred += 1;
                        "deferred"
                    }
                    Outcome::Failed => {
                        w.failed += 1;
                        "failed"
                    }
                };
                crate::metrics::delivery(result_name, attempt.elapsed().as_secs_f64());
                log_attempt(&rec, &tried);
                if let Some(p) = &opts.progress {
                    p(rec.id, outcome);
                }
                mismatches = if is_mismatch(&result) {
                    mismatches + 1
                } else {
                    0
                };
                if session_broken && is_mismatch(&result) && mismatches < MISMATCH_STOP {
                    // This message's bytes, not the storage or the primary: the connection
                    // is dropped (the transaction, cut off inside DATA, is discarded) and
                    // the worker goes on with the next message on a new one.
                    tracing::warn!(id = %rec.id, "the stored message is not the one received; transaction aborted before the final dot, message kept held");
                    session = None;
                } else if session_broken {
                    let why = match &result {
                        Err(e) => e.to_string(),
                        Ok(tx) if ambiguous => tx
                            .data
                            .as_ref()
                            .map_or_else(String::new, ToString::to_string),
                        Ok(_) => "primary closed the session with 421".to_string(),
                    };
                    tracing::warn!(reason = %why, "stopping this drain worker");
                    // Cut off inside DATA (our storage failed mid-body): a QUIT would be
                    // message text to the primary. Dropping the connection aborts it.
                    let mid_data = sent && matches!(&result, Err(RelayError::Blob(_)));
                    if let Some(s) = session.take()
                        && !mid_data
                    {
                        s.quit().await;
                    }
                    w.stopped = Some(why);
                }
            }
            if w.stopped.is_some() || breaker.tripped().is_some() {
                break 'claims;
            }
        }
        if let Some(s) = session {
            s.quit().await;
        }
        tracing::debug!(delivered = w.delivered, "drain worker done");
        Ok(w)
    }
}

/// The claims of one run that are not written back yet: (record as claimed, token).
#[derive(Clone, Default)]
struct Claims(Arc<std::sync::Mutex<std::collections::HashMap<MessageId, (Record, String)>>>);

impl Claims {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<MessageId, (Record, String)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn add(&self, batch: &[Record], token: &str) {
        let mut m = self.lock();
        for r in batch {
            m.insert(r.id, (r.clone(), token.to_string()));
        }
    }
    fn done(&self, id: MessageId) {
        self.lock().remove(&id);
    }
    fn take(&self) -> Vec<(Record, String)> {
        self.lock().drain().map(|(_, v)| v).collect()
    }
}

/// What became of a lease while its message was being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Ours throughout.
    Held,
    /// Lost before the final dot: the dot was not written, the transaction is aborted.
    LostBeforeDot,
    /// Lost after the final dot was written (renewals failed until the lease ran out while
    /// waiting for the reply): the outcome may be delivered by another claim too.
    LostAfterDot,
}

/// Shared between a [`Keeper`]'s renewal task and the body it guards.
struct KeeperState {
    /// The lease is known lost (a renewal was refused).
    lost: std::sync::atomic::AtomicBool,
    /// Until when the lease is known ours (ms since the epoch, the drain's clock).
    until_ms: std::sync::atomic::AtomicI64,
    /// The body ended with the lease ours: the final dot may be written.
    dot: std::sync::atomic::AtomicBool,
    /// The body ended without the lease: the dot was refused.
    refused: std::sync::atomic::AtomicBool,
}

/// How much of a lease may be left before it is renewed: two thirds. The drain sends on a
/// claim's lease without renewing it while at least this much is left, and a [`Keeper`]
/// renews at this point and then every third of a lease.
fn renew_below(lease: chrono::Duration) -> chrono::Duration {
    lease * 2 / 3
}

/// Keeps one message's lease while its transaction runs: renews it every `lease / 3`
/// (conditional on the claim's token) until stopped, and guards the body so the final
/// dot is written only while the lease is ours.
pub struct Keeper {
    state: Arc<KeeperState>,
    clock: Arc<dyn Clock>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    /// Start renewing `owner`'s lease on `id`, which runs until `until` (the caller just
    /// renewed it to a whole `lease`, or claimed it moments ago): first once two thirds of
    /// a lease are left, then every third of a lease.
    pub fn start(
        index: Arc<dyn Index>,
        clock: Arc<dyn Clock>,
        id: MessageId,
        owner: &str,
        lease: chrono::Duration,
        until: DateTime<Utc>,
    ) -> Keeper {
        use std::sync::atomic::Ordering::SeqCst;
        let state = Arc::new(KeeperState {
            lost: false.into(),
            until_ms: until.timestamp_millis().into(),
            dot: false.into(),
            refused: false.into(),
        });
        let every = (lease / 3)
            .to_std()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        // A lease with less than a whole lease left (not renewed before the send, see
        // `Drainer::still_ours`) is renewed sooner, so every renewal still finds two thirds
        // of a lease to run.
        let first = (until - clock.now() - renew_below(lease))
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(every);
        let (st, owner, c) = (state.clone(), owner.to_string(), clock.clone());
        let task = tokio::spawn(async move {
            let mut wait = first;
            loop {
                tokio::time::sleep(wait).await;
                wait = every;
                let until = c.now() + lease;
                match index.renew(id, &owner, until).await {
                    Ok(true) => st.until_ms.store(until.timestamp_millis(), SeqCst),
                    Ok(false) => {
                        st.lost.store(true, SeqCst);
                        tracing::warn!(%id, "lease renewal refused: another claim or an operator took the message");
                        return;
                    }
                    // The lease still runs until `until_ms`; the guard checks it.
                    Err(e) => tracing::warn!(%id, error = %e, "lease renewal failed; trying again"),
                }
            }
        });
        Keeper { state, clock, task }
    }

    /// Whether the lease is ours right now.
    fn ours(&self) -> bool {
        ours(&self.state, self.clock.as_ref())
    }

    /// `body`, ending with an error instead of its end when the lease is not ours at that
    /// moment: the client writes the final dot only after the body ended, so it never
    /// completes a transaction whose lease was lost.
    pub fn guard(&self, body: BlobReader) -> BlobReader {
        watched(
            body,
            LeaseWatch {
                state: self.state.clone(),
                clock: self.clock.clone(),
            },
        )
    }

    /// Stop renewing; what became of the lease.
    pub fn stop(self) -> Kept {
        use std::sync::atomic::Ordering::SeqCst;
        self.task.abort();
        let held = self.ours();
        if self.state.refused.load(SeqCst) {
            Kept::LostBeforeDot
        } else if held {
            Kept::Held
        } else if self.state.dot.load(SeqCst) {
            Kept::LostAfterDot
        } else {
            // Lost, but the body never ended: no dot was written (nobody accepted, or the
            // session failed first).
            Kept::Held
        }
    }
}

impl Drop for Keeper {
    /// Renewals end with the attempt, also when it unwinds (a panicking worker).
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ours(state: &KeeperState, clock: &dyn Clock) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    !state.lost.load(SeqCst) && state.until_ms.load(SeqCst) > clock.now().timestamp_millis()
}

/// What a wrapper around a message body does with the bytes passing through and at
/// their end. The client writes the final dot only after the body ended, so an error
/// from `end` keeps the transaction from completing ([`Keeper::guard`], [`verified`]).
trait BodyWatch: Send + Unpin + 'static {
    fn data(&mut self, _bytes: &[u8]) {}
    fn end(&mut self) -> std::io::Result<()>;
}

fn watched(body: BlobReader, watch: impl BodyWatch) -> BlobReader {
    Box::new(Watched {
        inner: body,
        watch,
        ended: None,
    })
}

/// `body` with `top` before it and the `Authentication-Results:` fields of the `strip`
/// authserv-ids removed from its header (also for [`crate::replay`]).
/// The stored bytes are read as CRLF lines first ([`crlf_reader`]), as the primary will get
/// them, so a field hidden behind a bare line end is seen and removed.
pub fn filtered(body: BlobReader, top: Vec<u8>, strip: &[String], id: MessageId) -> BlobReader {
    Stamped::boxed(crlf_reader(body), top, strip, Some(id))
}

/// [`filtered`] with nothing on top and nothing logged: the bytes below the top as the
/// primary will get them, for a first read (the ARC seal's: it signs those lines).
fn filtered_quietly(body: BlobReader, strip: &[String]) -> BlobReader {
    Stamped::boxed(crlf_reader(body), Vec::new(), strip, None)
}

/// `body` read with every bare `<LF>` and `<CR>` a `<CR><LF>` ([`WireEncoder::lines`]): the
/// lines the client will send, for whatever reads them as lines before it. Our listener
/// stored CRLF lines already; an SES object holds what its sender wrote. Reads that need
/// no change go through without a copy.
fn crlf_reader(body: BlobReader) -> BlobReader {
    Box::new(CrlfLines {
        inner: body,
        lines: WireEncoder::lines(),
        pending: Vec::new(),
        at: 0,
        ended: false,
    })
}

/// See [`crlf_reader`].
struct CrlfLines {
    inner: BlobReader,
    lines: WireEncoder,
    /// Rewritten bytes not yet handed on, from `at`.
    pending: Vec<u8>,
    at: usize,
    ended: bool,
}

impl tokio::io::AsyncRead for CrlfLines {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.at);
                buf.put_slice(&this.pending[this.at..this.at + n]);
                this.at += n;
                return std::task::Poll::Ready(Ok(()));
            }
            if this.ended || buf.remaining() == 0 {
                return std::task::Poll::Ready(Ok(()));
            }
            // Straight into the caller's buffer; taken back out only to be rewritten.
            let before = buf.filled().len();
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let got = &buf.filled()[before..];
            if got.is_empty() {
                // The end: the `<LF>` of a last bare `<CR>`, if any, then nothing.
                this.ended = true;
                this.pending.clear();
                this.pending.extend_from_slice(this.lines.finish());
                this.at = 0;
                continue;
            }
            if !this.lines.rewrites(got, &mut this.pending) {
                return std::task::Poll::Ready(Ok(()));
            }
            buf.set_filled(before);
            this.at = 0;
        }
    }
}

/// How much of the header [`Stamped`] reads at a time. Past the header it reads into
/// the caller's buffer; a header is rarely longer, and each byte read through the filter
/// is copied three times.
const HEADER_READ: usize = 8 * 1024;

/// See [`filtered`].
struct Stamped {
    inner: BlobReader,
    strip: StripOurs,
    /// Filtered bytes not yet handed on, from `at`.
    pending: Vec<u8>,
    at: usize,
    chunk: Vec<u8>,
    eof: bool,
    /// For the log line on removed fields; none: not logged.
    id: Option<MessageId>,
    /// The inner reader's error, held for the next read when bytes went out before it.
    failed: Option<std::io::Error>,
}

impl Stamped {
    fn boxed(
        body: BlobReader,
        top: Vec<u8>,
        strip: &[String],
        id: Option<MessageId>,
    ) -> BlobReader {
        Box::new(Stamped {
            inner: body,
            strip: StripOurs::new(strip),
            pending: top,
            at: 0,
            chunk: vec![0; HEADER_READ],
            eof: false,
            id,
            failed: None,
        })
    }

    /// The message ended: what the filter still holds goes out, and removals are logged.
    fn end(&mut self) {
        self.eof = true;
        self.strip.finish(&mut self.pending);
        if let Some(id) = self.id
            && self.strip.stripped() > 0
        {
            tracing::info!(id = %id, fields = self.strip.stripped(), "removed Authentication-Results fields carrying our authserv-id before handing the message back");
        }
    }
}

impl tokio::io::AsyncRead for Stamped {
    /// Fills as much of `buf` as the inner reader gives without waiting: the fields on
    /// top, the filtered header and the body after it go out in one block of the
    /// client's, not as small writes of their own. An error after some bytes were
    /// handed on this call is returned by the next one.
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        let start = buf.filled().len();
        // What to answer when the inner reader is not ready or failed: the bytes handed
        // on so far, if any.
        let partial =
            |this: &mut Stamped, buf: &tokio::io::ReadBuf<'_>, r: Poll<std::io::Result<()>>| {
                if buf.filled().len() == start {
                    return r;
                }
                if let Poll::Ready(Err(e)) = r {
                    this.failed = Some(e);
                }
                Poll::Ready(Ok(()))
            };
        loop {
            if this.at < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.at);
                buf.put_slice(&this.pending[this.at..this.at + n]);
                this.at += n;
                if this.at < this.pending.len() || buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.pending.clear();
            this.at = 0;
            // Past the header everything passes unchanged: straight into the caller's
            // buffer, without the two copies through `chunk` and `pending`.
            if this.strip.in_body() {
                let before = buf.filled().len();
                match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) if buf.filled().len() == before => {
                        this.end();
                        continue;
                    }
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                    other => return partial(this, buf, other),
                }
            }
            let mut read = tokio::io::ReadBuf::new(&mut this.chunk);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        this.end();
                    } else {
                        let (chunk, pending) = (&this.chunk[..n], &mut this.pending);
                        this.strip.feed(chunk, pending);
                    }
                }
                other => return partial(this, buf, other),
            }
        }
    }
}

/// A message body with its [`BodyWatch`]; `end` is asked once, and a body that ended in
/// an error keeps failing.
struct Watched<W> {
    inner: BlobReader,
    watch: W,
    /// Whether the end was reached, and passed.
    ended: Option<bool>,
}

impl<W: BodyWatch> tokio::io::AsyncRead for Watched<W> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        match this.ended {
            Some(true) => return Poll::Ready(Ok(())),
            Some(false) => {
                return Poll::Ready(Err(std::io::Error::other(
                    "the message body already ended in an error",
                )));
            }
            None => {}
        }
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.watch.data(read);
                } else if buf.remaining() > 0 {
                    // The end of the body: the client writes the final dot next.
                    let end = this.watch.end();
                    this.ended = Some(end.is_ok());
                    return Poll::Ready(end);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Checks the lease as the body ends (see [`Keeper::guard`]).
struct LeaseWatch {
    state: Arc<KeeperState>,
    clock: Arc<dyn Clock>,
}

/// The body ended while the lease was not ours: the transaction must not complete.
#[derive(Debug, thiserror::Error)]
#[error("the lease on this message was lost; the transaction is aborted before the final dot")]
pub struct LeaseLost;

impl BodyWatch for LeaseWatch {
    fn end(&mut self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if ours(&self.state, self.clock.as_ref()) {
            self.state.dot.store(true, SeqCst);
            Ok(())
        } else {
            self.state.refused.store(true, SeqCst);
            Err(std::io::Error::other(LeaseLost))
        }
    }
}

/// `body` checked against the size and digest its record was made with, as it is sent
/// (the XXH3-128 where the record has one, else the SHA-256):
/// bytes that are not what was acknowledged (a spool file a power cut left with its
/// footer but not all its data, read before the start-up check; a damaged disk or
/// object) end with an error instead of their end, so the client never writes the final
/// dot and the primary discards the transaction; the message stays held, and its
/// attempts log the mismatch. Checked: bytes this program wrote (our listener's, our
/// DSNs). Not checked: a record without a digest (none of ours), and objects SES wrote,
/// which are whole by S3's guarantee, but which every receipt rule matching a message
/// writes again under the same key, possibly with other bytes (another rule's spam
/// scan or added header) after the hash was taken.
pub fn verified(body: BlobReader, rec: &Record) -> BlobReader {
    if rec.sha256.is_empty() || matches!(rec.intake, Intake::Ses | Intake::Reconciled) {
        return body;
    }
    let (hasher, want) = match &rec.xxh3 {
        Some(x) => (Hasher::Xxh3(Box::default()), x.clone()),
        None => (Hasher::Sha256(Default::default()), rec.sha256.clone()),
    };
    watched(
        body,
        DigestWatch {
            hasher,
            size: 0,
            want: (rec.size, want),
        },
    )
}

/// The digest a [`DigestWatch`] takes.
enum Hasher {
    Sha256(sha2::Sha256),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

/// Mismatched bodies in a row after which a worker stops (see `worker`).
const MISMATCH_STOP: u32 = 3;

/// Whether `result` is [`verified`]'s refusal of bytes that are not the record's.
fn is_mismatch(result: &Result<Transaction, RelayError>) -> bool {
    matches!(result, Err(RelayError::Blob(StoreError::Io { source, .. }))
        if source.get_ref().is_some_and(|e| e.is::<BodyMismatch>()))
}

/// The stored bytes are not the ones the record was made for.
#[derive(Debug, thiserror::Error)]
#[error("the stored message is not the one received ({0}); it is not sent")]
pub struct BodyMismatch(String);

/// Hashes the body as it passes and compares at its end (see [`verified`]).
struct DigestWatch {
    hasher: Hasher,
    size: u64,
    want: (u64, String),
}

impl BodyWatch for DigestWatch {
    fn data(&mut self, bytes: &[u8]) {
        match &mut self.hasher {
            Hasher::Sha256(h) => sha2::Digest::update(h, bytes),
            Hasher::Xxh3(h) => h.update(bytes),
        }
        self.size += bytes.len() as u64;
    }

    fn end(&mut self) -> std::io::Result<()> {
        let (name, got) = match &mut self.hasher {
            Hasher::Sha256(h) => (
                "SHA-256",
                hex::encode(sha2::Digest::finalize(std::mem::take(h))),
            ),
            Hasher::Xxh3(h) => ("XXH3-128", crate::model::xxh3_text(h.digest128())),
        };
        let (size, want) = &self.want;
        if self.size == *size && &got == want {
            return Ok(());
        }
        let why = format!(
            "{} bytes with {name} {got}, the record says {size} bytes with {want}",
            self.size
        );
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            BodyMismatch(why),
        ))
    }
}

/// What a worker starts with: the run's first batch (for one of them) and the flag set
/// when a claim comes back empty (nothing more is due): the workers then claim no more
/// in this run.
struct Start {
    batch: Vec<(Record, String)>,
    exhausted: Arc<AtomicBool>,
}

#[derive(Default)]
struct WorkerReport {
    /// Transactions aborted before the final dot because the lease was lost.
    aborted: u64,
    delivered: u64,
    deferred: u64,
    failed: u64,
    ambiguous: u64,
    connected: bool,
    unreachable: bool,
    stopped: Option<String>,
}

/// A failed message whose bounce could not be decided: every refused recipient (of this
/// attempt or an earlier one: none of them has the message) goes back to pending, keeping
/// the refusal as its last reply, and the message is held, so a later attempt refuses
/// them again and decides the bounce then. (A failed message is never claimed again: left
/// failed without its bounce decided, its sender would never hear of it.)
pub fn defer_refused(rec: &mut Record, now: DateTime<Utc>) {
    // Failures an earlier bounce reported stay failed (never sent again, never reported
    // twice), and so does that bounce.
    for r in &mut rec.rcpts {
        if r.status == RcptStatus::Failed && !r.bounced {
            r.status = RcptStatus::Pending;
        }
    }
    rec.reason = None;
    if !rec.rcpts.iter().any(|r| r.bounced) {
        rec.bounce = None;
    }
    rec.settle();
    retry_later(rec, now);
}

/// An attempt that ended after the run's breaker tripped (see [`BreakerState::observe`]):
/// the primary is refusing wholesale, so this attempt's refusals are no verdict on the
/// message. Its refused recipients wait, due at once and the attempt not counted, like
/// everything else the halted run leaves (`standby drain --force` takes them with the
/// rest); recipients refused by earlier attempts stay as they were. Whether any did.
fn defer_refusals_after_trip(rec: &mut Record, tried: &[usize], now: DateTime<Utc>) -> bool {
    let mut any = false;
    for &i in tried {
        if let Some(r) = rec.rcpts.get_mut(i)
            && r.status == RcptStatus::Failed
        {
            r.status = RcptStatus::Pending;
            any = true;
        }
    }
    if any {
        rec.reason = None;
        rec.attempts = rec.attempts.saturating_sub(1);
        rec.next_attempt_at = now;
        rec.settle();
        tracing::info!(id = %rec.id, "refused after the circuit breaker tripped: not failed, its recipients wait with the rest");
    }
    any
}

/// The next attempt after [`backoff`] for the attempts made so far.
fn retry_later(rec: &mut Record, now: DateTime<Utc>) {
    let delay = chrono::Duration::from_std(backoff(rec.attempts)).unwrap_or_default();
    rec.next_attempt_at = now + delay;
}

/// Write an attempt's outcome back under the claim's lease, trying a transient storage
/// error again a few times (the primary has answered: a write-back given up is a
/// message sent again once the lease runs out).
pub async fn write_back(index: &dyn Index, rec: &Record, owner: &str) -> Result<(), StoreError> {
    retry_transient(WRITE_BACK_TRIES, "write-back", || {
        index.complete(rec, owner)
    })
    .await
}

/// Write-back attempts before a worker gives up (waits 0.2 s, 0.8 s, 3.2 s between).
const WRITE_BACK_TRIES: u32 = 4;

/// Give a claimed record back untouched. A lease that ran out and was taken by another
/// worker meanwhile is that worker's now: nothing to give back.
pub async fn release(index: &dyn Index, rec: &Record, owner: &str) -> Result<(), StoreError> {
    match index.complete(rec, owner).await {
        Err(StoreError::Leased(_) | StoreError::Changed(_) | StoreError::NotFound(_)) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Spool;
    use crate::model::{Envelope, Origin};
    use crate::ports::SystemClock;
    use async_trait::async_trait;
    use std::collections::HashMap;
    use std::sync::Mutex as StdMutex;
    use tokio::io::AsyncReadExt;

    /// A worker waiting for its slot under a slow rate stops with the run: at once on a
    /// stop signal, and without waiting for a slot past the run's deadline.
    #[tokio::test]
    async fn a_stop_or_the_deadline_ends_the_wait_for_a_slot() {
        let mut s = settings();
        s.rate_per_sec = 1;
        let d = Drainer::new(
            Storage::memory(),
            Arc::new(ScriptedRelay::default()),
            Arc::new(SystemClock),
            s,
        );
        let (tx, rx) = tokio::sync::watch::channel(false);
        let opts = RunOptions {
            stop: Some(rx),
            ..Default::default()
        };
        assert!(d.pace(&opts).await, "the first slot is now");
        let started = Instant::now();
        let waiting = d.pace(&opts);
        tokio::pin!(waiting);
        tokio::select! {
            _ = &mut waiting => panic!("the next slot is a second away"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        tx.send(true).unwrap();
        assert!(!waiting.await, "stopped, not sent");
        assert!(started.elapsed() < Duration::from_millis(600));
        let soon = RunOptions {
            deadline: Some(Instant::now() + Duration::from_millis(200)),
            ..Default::default()
        };
        let started = Instant::now();
        assert!(!d.pace(&soon).await, "the slot is past the deadline");
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    /// The ramp doubles every step up to the cap, then gives way to it; with no cap it
    /// keeps doubling.
    #[test]
    fn the_ramp_doubles_every_step_up_to_the_cap() {
        let ramp = Ramp {
            start: 2,
            step: Duration::from_secs(10),
        };
        let at = |s: u64| ramp.rate(Duration::from_secs(s), 8);
        assert_eq!(at(0), Some(2.0));
        assert_eq!(at(9), Some(2.0));
        assert_eq!(at(10), Some(4.0));
        assert_eq!(at(19), Some(4.0));
        assert_eq!(at(20), None, "8 a second: the cap's own pace from here");
        assert_eq!(ramp.rate(Duration::from_secs(50), 0), Some(64.0));
        assert_eq!(ramp.rate(Duration::from_secs(400), 0), None);
    }

    /// A bounce that could not be decided puts back only the failures no earlier bounce
    /// reported: those stay failed (never sent again, never reported twice), with that
    /// bounce, so the follow-up DSN is still due for the new failure.
    #[test]
    fn an_undecided_bounce_keeps_what_an_earlier_one_reported() {
        let now = Utc::now();
        let mut rec = Record::held(
            MessageId::new(now),
            "alice@sender.test".into(),
            vec!["gone@example.test".into(), "late@example.test".into()],
            now,
            (1, "00".into()),
            Default::default(),
        );
        rec.rcpts[0].status = RcptStatus::Failed;
        rec.rcpts[0].bounced = true;
        rec.rcpts[1].status = RcptStatus::Failed;
        rec.bounce = Some(crate::model::Bounce::Suppressed { why: "x".into() });
        rec.bounce_marks = true;
        defer_refused(&mut rec, now);
        assert_eq!(
            (rec.rcpts[0].status, rec.rcpts[1].status),
            (RcptStatus::Failed, RcptStatus::Pending)
        );
        assert!(rec.bounce.is_some());
        assert_eq!(rec.status, Status::Held);
        // Nothing reported yet: every failure goes back, the bounce with them.
        rec.rcpts[0].bounced = false;
        rec.rcpts[1].status = RcptStatus::Failed;
        defer_refused(&mut rec, now);
        assert!(rec.rcpts.iter().all(|r| r.status == RcptStatus::Pending));
        assert!(rec.bounce.is_none());
    }

    /// What the scripted primary accepted: (MAIL FROM, recipients, body).
    type Deliveries = Arc<StdMutex<Vec<(String, Vec<String>, Vec<u8>)>>>;

    /// A primary that answers from a script: per recipient address a reply code.
    #[derive(Default)]
    struct ScriptedRelay {
        rcpt_codes: HashMap<String, u16>,
        /// The text of every RCPT reply (default `scripted`).
        rcpt_text: Option<String>,
        /// A refusal of MAIL, when set.
        mail: Option<Reply>,
        refuse_connect: bool,
        data_code: Option<u16>,
        delivered: Deliveries,
        /// How long each transaction takes.
        latency: Option<Duration>,
    }

    struct ScriptedSession {
        rcpt_codes: HashMap<String, u16>,
        rcpt_text: String,
        mail: Option<Reply>,
        data_code: u16,
        delivered: Deliveries,
        latency: Option<Duration>,
    }

    #[async_trait]
    impl Relay for ScriptedRelay {
        async fn connect(&self) -> Result<Box<dyn RelaySession>, RelayError> {
            if self.refuse_connect {
                return Err(RelayError::Connect {
                    addr: "primary".into(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            Ok(Box::new(ScriptedSession {
                rcpt_codes: self.rcpt_codes.clone(),
                rcpt_text: self.rcpt_text.clone().unwrap_or_else(|| "scripted".into()),
                mail: self.mail.clone(),
                data_code: self.data_code.unwrap_or(250),
                delivered: self.delivered.clone(),
                latency: self.latency,
            }))
        }
    }

    #[async_trait]
    impl RelaySession for ScriptedSession {
        async fn send(
            &mut self,
            from: &str,
            rcpts: &[String],
            mut body: crate::ports::BlobReader,
        ) -> Result<Transaction, RelayError> {
            if let Some(latency) = self.latency {
                tokio::time::sleep(latency).await;
            }
            if let Some(mail) = &self.mail {
                return Ok(Transaction {
                    mail: mail.clone(),
                    rcpts: Vec::new(),
                    data: None,
                    ambiguous: false,
                });
            }
            let replies: Vec<Reply> = rcpts
                .iter()
                .map(|r| {
                    let code = self.rcpt_codes.get(r).copied().unwrap_or(250);
                    Reply::new(code, self.rcpt_text.clone())
                })
                .collect();
            let accepted: Vec<String> = rcpts
                .iter()
                .zip(&replies)
                .filter(|(_, r)| r.is_positive())
                .map(|(a, _)| a.clone())
                .collect();
            let data = if accepted.is_empty() {
                None
            } else {
                let mut bytes = Vec::new();
                // As the real client: a body that ends in an error gets no final dot.
                body.read_to_end(&mut bytes)
                    .await
                    .map_err(|e| RelayError::Blob(StoreError::io("read", "blob", e)))?;
                if self.data_code == 250 {
                    self.delivered
                        .lock()
                        .unwrap()
                        .push((from.to_string(), accepted, bytes));
                }
                Some(Reply::new(self.data_code, "scripted"))
            };
            Ok(Transaction {
                mail: Reply::new(250, "ok"),
                rcpts: replies,
                data,
                ambiguous: false,
            })
        }
        async fn quit(self: Box<Self>) {}
    }

    fn drainer(storage: &Storage, relay: ScriptedRelay) -> Drainer {
        Drainer::new(
            storage.clone(),
            Arc::new(relay),
            Arc::new(SystemClock),
            settings(),
        )
    }

    fn settings() -> DrainSettings {
        DrainSettings {
            concurrency: 2,
            lease: Duration::from_secs(60),
            clock_skew: Duration::from_secs(60),
            hold_days: 30,
            rate_per_sec: 0,
            ramp: None,
            breaker_5xx: 20,
            authserv_id: "standby.test".into(),
            strip_authserv_ids: vec!["standby.test".into()],
            arc: None,
            dsn: DsnSettings {
                enabled: true,
                reporting_mta: "standby.test".into(),
                sender: None,
            },
        }
    }

    async fn hold(storage: &Storage, rcpts: &[&str]) -> MessageId {
        let spool = Spool::new(storage.clone(), Arc::new(SystemClock), "standby.test");
        let mut inc = spool
            .begin(Envelope {
                mail_from: "a@sender.test".into(),
                rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
                origin: Origin::default(),
                journal: false,
                sent: None,
            })
            .await
            .unwrap();
        inc.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        inc.commit().await.unwrap().id
    }

    /// The filter's output is the same whatever sizes the stored bytes come in and the
    /// reader asks for, whether the store makes it wait and whether it fails at the end:
    /// the header filtered (one longer than the filter's reads too, with our field
    /// across them), the body whole with CRLF line ends (it holds bare ones), and a
    /// store's error after the last byte reaches the reader instead of the end.
    #[tokio::test]
    async fn the_filter_gives_the_same_bytes_in_any_chunks() {
        /// Bytes in reads of `step`, every other read not ready when `waits`, and an
        /// error at `fails` (once; then the rest).
        struct Trickle {
            bytes: Vec<u8>,
            at: usize,
            step: usize,
            waits: bool,
            ready: bool,
            fails: Option<usize>,
        }
        impl tokio::io::AsyncRead for Trickle {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let this = &mut *self;
                let flip = !this.ready;
                if this.waits && !std::mem::replace(&mut this.ready, flip) {
                    cx.waker().wake_by_ref();
                    return std::task::Poll::Pending;
                }
                let upto = this.fails.unwrap_or(this.bytes.len());
                if this.at == upto && this.fails.take().is_some() {
                    // Once: a reader that forgets its error must not end the message.
                    return std::task::Poll::Ready(Err(std::io::Error::other("store failed")));
                }
                let n = this.step.min(buf.remaining()).min(upto - this.at);
                buf.put_slice(&this.bytes[this.at..this.at + n]);
                this.at += n;
                std::task::Poll::Ready(Ok(()))
            }
        }
        let long = format!("X-Long: {}\r\n", "y".repeat(990)).repeat(8);
        for header_fields in [String::new(), long] {
            let mut msg = format!(
                "Received: from x\r\n{header_fields}Authentication-Results: standby.test; \
                 spf=pass\r\nSubject: s\r\n\r\n"
            )
            .into_bytes();
            let expected_head =
                format!("TOP\r\nReceived: from x\r\n{header_fields}Subject: s\r\n\r\n");
            let header = msg.len();
            let mut body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            // A last bare CR: its LF comes at the end.
            body.push(b'\r');
            msg.extend_from_slice(&body);
            let mut expected = expected_head.into_bytes();
            // Bare `<CR>` and `<LF>` in it (bytes 13 and 10) come out as CRLF line ends.
            expected.extend_from_slice(&crate::model::lines::crlf_lines(&body));
            for (step, want, waits, fails) in [1, 3, 17, 4096, 70_000, 1 << 20]
                .into_iter()
                .flat_map(|step| [1, 5, 8192, 1 << 20].map(|want| (step, want)))
                .flat_map(|(step, want)| {
                    [None, Some(header / 2), Some(header), Some(msg.len())]
                        .into_iter()
                        .flat_map(move |f| [(step, want, false, f), (step, want, true, f)])
                })
            {
                let mut r = filtered(
                    Box::new(Trickle {
                        bytes: msg.clone(),
                        at: 0,
                        step,
                        waits,
                        ready: false,
                        fails,
                    }),
                    b"TOP\r\n".to_vec(),
                    &["standby.test".to_string()],
                    MessageId::new(Utc::now()),
                );
                let mut out = Vec::new();
                let mut buf = vec![0u8; want];
                let end = loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        Err(e) => break Err(e),
                    }
                };
                let case = format!(
                    "header of {} bytes stored in {step}s, read in {want}s, waits {waits}, \
                     fails at {fails:?}",
                    header_fields.len()
                );
                if fails.is_some_and(|at| at < msg.len()) {
                    assert!(expected.starts_with(&out), "{case}");
                } else if fails.is_some() {
                    // Every byte, but not the LF of the last CR: only the end adds it.
                    assert!(out == expected[..expected.len() - 1], "{case}");
                } else {
                    assert!(out == expected, "{case}");
                }
                assert_eq!(end.is_err(), fails.is_some(), "{case}");
            }
        }
    }

    /// The ARC seal signs the lines the primary gets: its first read (`filtered_quietly`)
    /// gives exactly the bytes `filtered` sends below the top, for stored bytes with bare
    /// line ends and a field of ours hidden behind a bare CR too (removed from both).
    #[tokio::test]
    async fn the_seal_reads_the_lines_the_primary_gets() {
        async fn all(mut r: BlobReader) -> Vec<u8> {
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            out
        }
        let stored = b"Received: x\nSubject: hi\rAuthentication-Results: standby.test; \
            dmarc=pass\r\nX: y\n\nbody\rline\n.\nend\r"
            .to_vec();
        let strip = ["standby.test".to_string()];
        let lines = b"Received: x\r\nSubject: hi\r\nX: y\r\n\r\nbody\r\nline\r\n.\r\nend\r\n";
        let sealed = all(filtered_quietly(
            Box::new(std::io::Cursor::new(stored.clone())),
            &strip,
        ))
        .await;
        assert_eq!(sealed, lines);
        let sent = all(filtered(
            Box::new(std::io::Cursor::new(stored)),
            b"TOP\r\n".to_vec(),
            &strip,
            MessageId::new(Utc::now()),
        ))
        .await;
        assert_eq!(sent.strip_prefix(b"TOP\r\n"), Some(&lines[..]));
    }

    /// The primary gets our `Authentication-Results:` on top and none that a sender (or
    /// an SES-stored object) carries under our name; the digest check is of the stored
    /// bytes, so it still passes.
    #[tokio::test]
    async fn the_primary_gets_our_verdicts_on_top_and_no_forged_ones() {
        let storage = Storage::memory();
        let spool = Spool::new(storage.clone(), Arc::new(SystemClock), "standby.test");
        let forged = b"Authentication-Results: Standby.Test; spf=pass\r\n\
            Authentication-Results: other.test; spf=none\r\nSubject: t\r\n\r\n\
            Authentication-Results: standby.test; body\r\n";
        let mut ids = Vec::new();
        for intake in [Intake::Smtp, Intake::Ses] {
            let mut inc = spool
                .begin(Envelope {
                    mail_from: "a@sender.test".into(),
                    rcpts: vec!["b@x.test".into()],
                    origin: Origin {
                        ip: "192.0.2.9".into(),
                        ..Default::default()
                    },
                    journal: false,
                    sent: None,
                })
                .await
                .unwrap();
            inc.write(forged).await.unwrap();
            let id = inc.commit().await.unwrap().id;
            let mut rec = storage.index.get(id).await.unwrap().unwrap();
            rec.intake = intake;
            rec.verdicts = Some(crate::model::Verdicts::spf("FAIL"));
            storage.index.update(&rec, Utc::now()).await.unwrap();
            ids.push(id);
        }
        let relay = ScriptedRelay::default();
        let delivered = relay.delivered.clone();
        let r = run_once(storage.clone(), relay).await;
        assert_eq!(r.delivered, 2, "{r:?}");
        for (_, _, body) in delivered.lock().unwrap().iter() {
            let text = String::from_utf8_lossy(body);
            let want = "Authentication-Results: standby.test;\r\n\tspf=fail (sender IP is 192.0.2.9) smtp.mailfrom=a@sender.test\r\n";
            assert!(text.starts_with(want), "{text}");
            assert!(!text.contains("Standby.Test; spf=pass"), "{text}");
            assert!(text.contains("\r\nAuthentication-Results: other.test; spf=none\r\nSubject: t\r\n\r\nAuthentication-Results: standby.test; body\r\n"), "{text}");
        }
    }

    /// Bytes that are not what the record was made for (a torn or damaged file) are
    /// never completed at the primary; the message stays held, and the worker goes on
    /// with the next one.
    #[tokio::test]
    async fn bytes_that_are_not_the_records_are_never_sent_and_the_worker_goes_on() {
        let storage = Storage::memory();
        // The bad one first in line (claims go oldest first).
        // Checked against the XXH3-128 taken at receipt, and a record from before it
        // (none) against its SHA-256.
        let bad = hold(&storage, &["a@x.test"]).await;
        let old = hold(&storage, &["c@x.test"]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let good = hold(&storage, &["b@x.test"]).await;
        let mut rec = storage.index.get(bad).await.unwrap().unwrap();
        assert!(rec.xxh3.is_some(), "taken at receipt");
        rec.xxh3 = Some("0".repeat(32));
        storage.index.update(&rec, Utc::now()).await.unwrap();
        let mut rec = storage.index.get(old).await.unwrap().unwrap();
        rec.xxh3 = None;
        rec.sha256 = "0".repeat(64);
        storage.index.update(&rec, Utc::now()).await.unwrap();
        let relay = ScriptedRelay::default();
        let delivered = relay.delivered.clone();
        let d = drainer(&storage, relay);
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!((r.delivered, r.deferred), (1, 2), "{r:?}");
        let got = delivered.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, ["b@x.test"]);
        let rec = storage.index.get(bad).await.unwrap().unwrap();
        assert_eq!(rec.status, Status::Held);
        let reply = rec.rcpts[0].reply.clone().unwrap_or_default();
        assert!(reply.contains("not the one received"), "{reply}");
        assert_eq!(
            storage.index.get(good).await.unwrap().unwrap().status,
            Status::Delivered
        );
    }

    /// An object SES wrote is not checked (every receipt rule matching a message writes
    /// it again under the same key, maybe with other bytes); and several mismatches in a
    /// row stop the worker (a disk returning other data, not one damaged file).
    #[tokio::test]
    async fn ses_objects_are_not_checked_and_many_mismatches_stop_the_worker() {
        let storage = Storage::memory();
        let ses = hold(&storage, &["s@x.test"]).await;
        let mut rec = storage.index.get(ses).await.unwrap().unwrap();
        rec.sha256 = "0".repeat(64);
        rec.xxh3 = Some("0".repeat(32));
        rec.intake = Intake::Ses;
        storage.index.update(&rec, Utc::now()).await.unwrap();
        let d = drainer(&storage, ScriptedRelay::default());
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(r.delivered, 1, "{r:?}");

        let storage = Storage::memory();
        for _ in 0..MISMATCH_STOP {
            let bad = hold(&storage, &["a@x.test"]).await;
            let mut rec = storage.index.get(bad).await.unwrap().unwrap();
            rec.xxh3 = Some("0".repeat(32));
            storage.index.update(&rec, Utc::now()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        hold(&storage, &["b@x.test"]).await;
        let d = drainer(&storage, ScriptedRelay::default());
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(
            (r.delivered, r.deferred),
            (0, u64::from(MISMATCH_STOP)),
            "{r:?}"
        );
        assert!(r.stopped.is_some(), "{r:?}");
    }

    #[test]
    fn queue_ids_from_the_primarys_reply() {
        for (reply, id) in [
            ("250 2.0.0 Ok: queued as 4XyZ12AbC", "4XyZ12AbC"),
            ("250 2.0.0 Ok: queued as 3F2A81C0D3.", "3F2A81C0D3"),
            ("250 Ok: Queued As ABC123", "ABC123"),
            (
                "250 2.6.0 <a1b2@ex.example.com> [InternalId=123] Queued mail for delivery",
                "<a1b2@ex.example.com> [InternalId=123] Queued mail for delivery",
            ),
            (
                "250 2.0.0 5B3Kq1xQ012345 Message accepted for delivery",
                "5B3Kq1xQ012345 Message accepted for delivery",
            ),
            ("250 ok", "ok"),
        ] {
            assert_eq!(queue_id(reply), id, "{reply}");
        }
    }

    #[test]
    fn backoff_schedule() {
        let mins: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs() / 60).collect();
        assert_eq!(mins, [1, 5, 15, 30, 60, 60, 60]);
    }

    #[tokio::test]
    async fn per_recipient_outcomes_and_retry_only_pending() {
        let storage = Storage::memory();
        let id = hold(&storage, &["ok@x.test", "later@x.test", "gone@x.test"]).await;
        let mut relay = ScriptedRelay::default();
        relay.rcpt_codes.insert("later@x.test".into(), 450);
        relay.rcpt_codes.insert("gone@x.test".into(), 550);
        let delivered = relay.delivered.clone();
        let d = drainer(&storage, relay);
        let report = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(
            (report.delivered, report.deferred, report.failed),
            (0, 1, 0)
        );
        let rec = storage.index.get(id).await.unwrap().unwrap();
        let st: Vec<RcptStatus> = rec.rcpts.iter().map(|r| r.status).collect();
        assert_eq!(
            st,
            [
                RcptStatus::Delivered,
                RcptStatus::Pending,
                RcptStatus::Failed
            ]
        );
        assert_eq!(rec.status, Status::Held);
        assert_eq!(rec.attempts, 1);
        assert!(rec.next_attempt_at > Utc::now() + chrono::Duration::seconds(50));
        assert!(rec.rcpts[2].reply.as_deref().unwrap().starts_with("550"));
        assert_eq!(delivered.lock().unwrap()[0].1, ["ok@x.test"]);
        assert!(rec.lease.is_none());

        // Not due yet: a second run does nothing.
        let again = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(again, DrainReport::default());

        // When due, only the pending recipient is tried; it now succeeds.
        let mut due = rec.clone();
        due.next_attempt_at = Utc::now();
        storage.index.update(&due, Utc::now()).await.unwrap();
        let d2 = Drainer::new(
            storage.clone(),
            Arc::new(ScriptedRelay {
                delivered: delivered.clone(),
                ..Default::default()
            }),
            Arc::new(SystemClock),
            settings(),
        );
        let r2 = d2.run(RunOptions::default()).await.unwrap();
        assert_eq!(
            r2.failed, 1,
            "settles as failed: one recipient failed for good"
        );
        assert_eq!(delivered.lock().unwrap()[1].1, ["later@x.test"]);
        let done = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!(done.status, Status::Failed);
        assert_eq!(done.attempts, 2);
    }

    #[test]
    fn a_positive_reply_other_than_250_or_251_to_rcpt_is_no_acceptance() {
        let now = Utc::now();
        let mut rec = Record::held(
            MessageId::new(now),
            "s@y.test".into(),
            vec!["a@x.test".into(), "b@x.test".into()],
            now,
            (1, String::new()),
            Default::default(),
        );
        let tx = Transaction {
            mail: Reply::new(250, "ok"),
            rcpts: vec![Reply::new(235, "2.7.0 ok"), Reply::new(251, "ok")],
            data: Some(Reply::new(250, "queued")),
            ambiguous: false,
        };
        apply(&mut rec, &Ok(tx), Utc::now());
        assert_eq!(rec.rcpts[0].status, RcptStatus::Pending);
        assert!(rec.rcpts[0].reply.as_deref().unwrap().starts_with("451"));
        assert_eq!(rec.rcpts[1].status, RcptStatus::Delivered);
    }

    /// The operator's `standby drain --force`.
    async fn forced_run(d: &Drainer) -> DrainReport {
        d.run(RunOptions {
            force: true,
            ..Default::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_breaker_stops_after_5xx_in_a_row_and_force_overrides_it() {
        let storage = Storage::memory();
        for _ in 0..6 {
            hold(&storage, &["gone@x.test"]).await;
        }
        let scripted = || {
            let mut relay = ScriptedRelay::default();
            relay.rcpt_codes.insert("gone@x.test".into(), 550);
            Arc::new(relay)
        };
        let mut s = settings();
        s.concurrency = 1;
        s.breaker_5xx = 2;
        let d = Drainer::new(
            storage.clone(),
            scripted(),
            Arc::new(SystemClock),
            s.clone(),
        );
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!((r.failed, r.breaker), (2, Some(Breaker::Refusals5xx)));
        assert!(r.stopped.as_deref().unwrap().contains("breaker_5xx = 2"));
        let c = storage.index.counts().await.unwrap();
        assert_eq!((c.held, c.failed), (4, 2));
        let forced = forced_run(&d).await;
        assert_eq!((forced.failed, forced.breaker), (4, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tripped_breaker_fails_no_attempt_that_was_in_flight_on_another_worker() {
        let storage = Storage::memory();
        // Enough for every worker to claim a batch of its own.
        for _ in 0..300 {
            hold(&storage, &["gone@x.test"]).await;
        }
        // Eight workers, each with a refusal on its way when the second one trips the
        // breaker: only those two are failed (and bounced); the others wait.
        let relay = ScriptedRelay {
            rcpt_codes: [("gone@x.test".to_string(), 550)].into(),
            latency: Some(Duration::from_millis(50)),
            ..Default::default()
        };
        let mut s = settings();
        s.concurrency = 8;
        s.breaker_5xx = 2;
        let d = Drainer::new(storage.clone(), Arc::new(relay), Arc::new(SystemClock), s);
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(r.breaker, Some(Breaker::Refusals5xx));
        assert_eq!(r.failed, 2, "{r:?}");
        assert!(
            r.deferred > 0,
            "no attempt was in flight at the trip: {r:?}"
        );
        let c = storage.index.counts().await.unwrap();
        assert_eq!((c.failed, c.held), (2, 298));
        let waiting = storage
            .index
            .list(&crate::ports::ListQuery {
                status: Some(Status::Held),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            waiting
                .iter()
                .all(|rec| rec.rcpts.iter().all(|r| r.status == RcptStatus::Pending)),
            "a recipient of a waiting message was left failed"
        );
        // The operator's `--force` takes every one of them, those in flight at the trip too.
        let forced = forced_run(&d).await;
        assert_eq!(forced.failed, 298, "{forced:?}");
    }

    /// Runs a drain with `relay` over `messages` held messages to `gone@x.test` (from an
    /// SPF-authenticated sender when `authenticated`; breaker at 2, one worker) and
    /// returns its report.
    async fn refused(messages: usize, authenticated: bool, relay: ScriptedRelay) -> DrainReport {
        let storage = Storage::memory();
        for _ in 0..messages {
            if authenticated {
                hold_authenticated(&storage, &["gone@x.test"]).await;
            } else {
                hold(&storage, &["gone@x.test"]).await;
            }
        }
        let mut s = settings();
        s.concurrency = 1;
        s.breaker_5xx = 2;
        let d = Drainer::new(storage, Arc::new(relay), Arc::new(SystemClock), s);
        d.run(RunOptions::default()).await.unwrap()
    }

    #[tokio::test]
    async fn refusals_about_the_message_trip_the_breaker_only_at_five_times_the_limit() {
        let at_rcpt = |code: u16, text: &str| ScriptedRelay {
            rcpt_codes: [("gone@x.test".to_string(), code)].into(),
            rcpt_text: Some(text.into()),
            ..Default::default()
        };
        let at_mail = |code: u16, text: &str| ScriptedRelay {
            mail: Some(Reply::new(code, text)),
            ..Default::default()
        };
        let after_dot = ScriptedRelay {
            data_code: Some(554),
            ..Default::default()
        };
        // (messages held, authenticated sender, the primary, (failed, deferred, breaker))
        // with breaker_5xx = 2.
        let cases = [
            // A healthy primary refusing spam with forged senders (SPF or a bad sender
            // domain at RCPT, content after the dot, the sender at MAIL): every message
            // is tried.
            (
                6,
                false,
                at_rcpt(550, "5.7.23 SPF validation failed"),
                (6, 0, None),
            ),
            (
                6,
                false,
                at_rcpt(550, "5.1.8 Sender address rejected"),
                (6, 0, None),
            ),
            // (Their six DSNs are drained, and refused, in the same run.)
            (6, true, after_dot, (12, 0, None)),
            (
                6,
                false,
                at_mail(450, "4.1.8 Sender address rejected"),
                (0, 6, None),
            ),
            // The primary's own trouble at MAIL stops the run at once.
            (
                6,
                false,
                at_mail(452, "4.3.1 Insufficient system storage"),
                (0, 1, Some(Breaker::Mail4xx)),
            ),
            // Unknown users trip it at the limit.
            (
                6,
                false,
                at_rcpt(550, "5.1.1 User unknown"),
                (2, 0, Some(Breaker::Refusals5xx)),
            ),
            // A primary refusing everything on policy grounds (back without the standby
            // in its relay list) is stopped too, at five times the limit, counting the
            // senders that authenticated (it refuses those too); spam never counts.
            (
                14,
                false,
                at_rcpt(554, "5.7.1 Relay access denied"),
                (14, 0, None),
            ),
            (
                14,
                true,
                at_rcpt(554, "5.7.1 Relay access denied"),
                (10, 0, Some(Breaker::Refusals5xx)),
            ),
        ];
        for (messages, authenticated, relay, want) in cases {
            let r = refused(messages, authenticated, relay).await;
            assert_eq!((r.failed, r.deferred, r.breaker), want, "{r:?}");
        }
    }

    #[tokio::test]
    async fn only_250_after_the_dot_is_a_delivery() {
        let storage = Storage::memory();
        let id = hold(&storage, &["a@x.test"]).await;
        let relay = ScriptedRelay {
            data_code: Some(221),
            ..Default::default()
        };
        let d = drainer(&storage, relay);
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!((r.delivered, r.deferred, r.ambiguous), (0, 1, 1), "{r:?}");
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!(rec.status, Status::Held);
        assert!(
            rec.rcpts[0]
                .reply
                .as_deref()
                .unwrap()
                .contains("only 250 delivers"),
            "{rec:?}"
        );
    }

    /// `storage` with a full disk: nothing new can be stored, so a DSN cannot be queued.
    fn full(storage: &Storage) -> Storage {
        let mut full = storage.clone();
        full.blobs = Arc::new(crate::backend::memory::FaultyBlobs {
            full: true,
            ..crate::backend::memory::FaultyBlobs::new(storage.blobs.clone())
        });
        full
    }

    /// Hold a message from an SPF-authenticated sender: a failure gets a DSN, which needs
    /// storage.
    async fn hold_authenticated(storage: &Storage, rcpts: &[&str]) -> MessageId {
        let id = hold(storage, rcpts).await;
        let mut rec = storage.index.get(id).await.unwrap().unwrap();
        rec.verdicts = Some(crate::model::Verdicts {
            spf: Some("pass".into()),
            ..Default::default()
        });
        storage.index.update(&rec, Utc::now()).await.unwrap();
        id
    }

    /// Make `id` due now.
    async fn due_now(storage: &Storage, id: MessageId) {
        let mut due = storage.index.get(id).await.unwrap().unwrap();
        due.next_attempt_at = Utc::now();
        storage.index.update(&due, Utc::now()).await.unwrap();
    }

    /// How many deliveries went to `rcpt`.
    fn sent_to(delivered: &Deliveries, rcpt: &str) -> usize {
        delivered
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.1.iter().any(|r| r == rcpt))
            .count()
    }

    /// One drain run over `storage` with `relay`, default settings.
    async fn run_once(storage: Storage, relay: ScriptedRelay) -> DrainReport {
        Drainer::new(storage, Arc::new(relay), Arc::new(SystemClock), settings())
            .run(RunOptions::default())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_bounce_that_cannot_be_queued_never_sends_the_accepted_recipients_again() {
        let storage = Storage::memory();
        let id = hold_authenticated(&storage, &["ok@x.test", "gone@x.test"]).await;
        let delivered = Deliveries::default();
        let script = || ScriptedRelay {
            rcpt_codes: [("gone@x.test".to_string(), 550)].into(),
            delivered: delivered.clone(),
            ..Default::default()
        };
        let r = run_once(full(&storage), script()).await;
        assert_eq!((r.delivered, r.deferred, r.failed), (0, 1, 0), "{r:?}");
        let rec = storage.index.get(id).await.unwrap().unwrap();
        let st: Vec<RcptStatus> = rec.rcpts.iter().map(|r| r.status).collect();
        assert_eq!(st, [RcptStatus::Delivered, RcptStatus::Pending]);
        assert!(rec.lease.is_none() && rec.bounce.is_none(), "{rec:?}");

        // Space again, and due: only the refused recipient is tried, and bounced.
        due_now(&storage, id).await;
        let r = run_once(storage.clone(), script()).await;
        assert_eq!(r.failed, 1, "{r:?}");
        assert_eq!(sent_to(&delivered, "ok@x.test"), 1, "ok@ once");
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert!(
            matches!(rec.bounce, Some(crate::model::Bounce::Queued { .. })),
            "{rec:?}"
        );
    }

    /// The bounce of a recipient refused in an earlier attempt is due when the last
    /// pending one is delivered; if it cannot be queued then, the message must not be
    /// left failed with no bounce decided (nothing claims a failed message again).
    #[tokio::test]
    async fn a_bounce_due_after_an_earlier_refusal_is_never_dropped() {
        let storage = Storage::memory();
        let id = hold_authenticated(&storage, &["gone@x.test", "later@x.test"]).await;
        let delivered = Deliveries::default();
        let relay = |later: u16| ScriptedRelay {
            rcpt_codes: [
                ("gone@x.test".to_string(), 550),
                ("later@x.test".to_string(), later),
            ]
            .into(),
            delivered: delivered.clone(),
            ..Default::default()
        };
        // 1: gone@ refused for good, later@ deferred.
        run_once(storage.clone(), relay(451)).await;
        // 2: later@ delivered, and the disk is full: the bounce for gone@ cannot be queued.
        due_now(&storage, id).await;
        run_once(full(&storage), relay(250)).await;
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!(rec.status, Status::Held, "{rec:?}");
        let st: Vec<RcptStatus> = rec.rcpts.iter().map(|r| r.status).collect();
        assert_eq!(st, [RcptStatus::Pending, RcptStatus::Delivered]);
        // 3: space again: gone@ refused again and bounced; later@ not sent again.
        due_now(&storage, id).await;
        let r = run_once(storage.clone(), relay(250)).await;
        assert_eq!(r.failed, 1, "{r:?}");
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert!(
            matches!(rec.bounce, Some(crate::model::Bounce::Queued { .. })),
            "{rec:?}"
        );
        assert_eq!(sent_to(&delivered, "later@x.test"), 1);
    }

    /// Right before sending, a lease claimed moments ago is used as it is (no write), one
    /// that has run down past a third is renewed to a whole lease first, and one that is
    /// not this claim's is not sent on.
    #[tokio::test]
    async fn a_fresh_lease_is_sent_on_as_it_is_and_one_run_down_is_renewed_first() {
        let storage = Storage::memory();
        hold(&storage, &["a@x.test"]).await;
        let d = drainer(&storage, ScriptedRelay::default());
        let owner = Drainer::token();
        let mut batch = d.claim(&owner).await.unwrap();
        assert_eq!(batch.len(), 1);
        let mut rec = batch.remove(0);
        let claimed = rec
            .lease
            .clone()
            .expect("a claimed record has its lease")
            .until;
        assert_eq!(d.still_ours(&mut rec, &owner).await.unwrap(), Some(claimed));
        // Run down to half a lease: renewed to a whole lease from now.
        let half = Utc::now() + chrono::Duration::seconds(30);
        rec.lease.as_mut().unwrap().until = half;
        let renewed = d.still_ours(&mut rec, &owner).await.unwrap().unwrap();
        assert!(renewed > claimed, "{renewed} after {claimed}");
        assert_eq!(rec.lease.as_ref().unwrap().until, renewed);
        // Not this claim's: refused by the index, not sent.
        assert_eq!(d.still_ours(&mut rec, "another").await.unwrap(), None);
    }

    /// A keeper given a lease with less than two thirds of a lease left (one not renewed
    /// before the send) renews it at once, not a third of a lease later.
    #[tokio::test]
    async fn the_keeper_renews_a_lease_left_short_at_once() {
        let storage = Storage::memory();
        hold(&storage, &["a@x.test"]).await;
        let d = drainer(&storage, ScriptedRelay::default());
        let owner = Drainer::token();
        let rec = d.claim(&owner).await.unwrap().remove(0);
        let claimed = rec.lease.clone().unwrap().until;
        let lease = chrono::Duration::seconds(6);
        let keeper = Keeper::start(
            storage.index.clone(),
            Arc::new(SystemClock),
            rec.id,
            &owner,
            lease,
            Utc::now() + chrono::Duration::seconds(3),
        );
        let stored = async || storage.index.get(rec.id).await.unwrap().unwrap().lease;
        let start = std::time::Instant::now();
        while stored().await.is_some_and(|l| l.until == claimed)
            && start.elapsed() < Duration::from_secs(1)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let renewed = stored().await.expect("still leased").until;
        assert_ne!(
            renewed, claimed,
            "not renewed within a second (a third of the lease is 2 s)"
        );
        assert_eq!(keeper.stop(), Kept::Held);
    }

    /// The keeper trusts the lease end it is given (the renewal's, computed before the
    /// request went out), not "a whole lease from now": a lease that already ended lets no
    /// final dot out.
    #[tokio::test]
    async fn the_keeper_refuses_the_dot_once_the_lease_it_was_given_has_ended() {
        use tokio::io::AsyncReadExt;
        let storage = Storage::memory();
        let id = hold(&storage, &["a@x.test"]).await;
        let lease = chrono::Duration::seconds(60);
        let ended = Utc::now() - chrono::Duration::seconds(1);
        let keeper = Keeper::start(
            storage.index.clone(),
            Arc::new(SystemClock),
            id,
            "owner",
            lease,
            ended,
        );
        let body: BlobReader = Box::new(std::io::Cursor::new(b"Subject: t\r\n\r\nx\r\n".to_vec()));
        let mut guarded = keeper.guard(body);
        let mut bytes = Vec::new();
        let end = guarded.read_to_end(&mut bytes).await;
        assert!(
            end.is_err(),
            "the body ended (dot allowed) on a lease that had ended"
        );
        assert_eq!(keeper.stop(), Kept::LostBeforeDot);
    }

    #[tokio::test]
    async fn data_refusal_applies_to_accepted_recipients_only() {
        let storage = Storage::memory();
        let id = hold(&storage, &["a@x.test", "b@x.test"]).await;
        let relay = ScriptedRelay {
            data_code: Some(452),
            ..Default::default()
        };
        let d = drainer(&storage, relay);
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(r.deferred, 1);
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert!(rec.rcpts.iter().all(|r| r.status == RcptStatus::Pending));
        assert!(rec.rcpts[0].reply.as_deref().unwrap().starts_with("452"));
    }

    #[tokio::test]
    async fn unreachable_primary_leaves_messages_untouched() {
        let storage = Storage::memory();
        let id = hold(&storage, &["a@x.test"]).await;
        let relay = ScriptedRelay {
            refuse_connect: true,
            ..Default::default()
        };
        let d = drainer(&storage, relay);
        let r = d.run(RunOptions::default()).await.unwrap();
        assert!(r.unreachable && r.stopped.is_some());
        assert_eq!((r.delivered, r.deferred, r.failed), (0, 0, 0));
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!((rec.status, rec.attempts), (Status::Held, 0));
        assert!(rec.lease.is_none(), "lease released");
    }

    #[tokio::test]
    async fn old_messages_expire_without_delivery() {
        let storage = Storage::memory();
        let id = hold(&storage, &["a@x.test"]).await;
        let mut rec = storage.index.get(id).await.unwrap().unwrap();
        rec.received_at = Utc::now() - chrono::Duration::days(31);
        storage.index.update(&rec, Utc::now()).await.unwrap();
        let relay = ScriptedRelay::default();
        let delivered = relay.delivered.clone();
        let d = drainer(&storage, relay);
        let r = d.run(RunOptions::default()).await.unwrap();
        assert_eq!(r.failed, 1);
        assert!(delivered.lock().unwrap().is_empty());
        let rec = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!(
            (rec.status, rec.reason.as_deref()),
            (Status::Failed, Some("expired"))
        );
    }

    /// A primary whose session panics (a bug in a relay, or a test's guard).
    struct Panicking;

    #[async_trait]
    impl Relay for Panicking {
        async fn connect(&self) -> Result<Box<dyn RelaySession>, RelayError> {
            Ok(Box::new(Panicking))
        }
    }

    #[async_trait]
    impl RelaySession for Panicking {
        async fn send(
            &mut self,
            _: &str,
            _: &[String],
            _: crate::ports::BlobReader,
        ) -> Result<Transaction, RelayError> {
            panic!("this message must not be delivered");
        }
        async fn quit(self: Box<Self>) {}
    }

    #[tokio::test]
    async fn a_panicking_worker_fails_the_run_and_gives_its_claims_back() {
        let storage = Storage::memory();
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(hold(&storage, &["a@x.test"]).await);
        }
        let d = Drainer::new(
            storage.clone(),
            Arc::new(Panicking),
            Arc::new(SystemClock),
            settings(),
        );
        let err = d.run(RunOptions::default()).await.unwrap_err();
        assert!(
            matches!(&err, DrainError::WorkerPanicked(why) if why.contains("must not be delivered")),
            "{err}"
        );
        for id in ids {
            let rec = storage.index.get(id).await.unwrap().unwrap();
            assert_eq!((rec.status, rec.attempts), (Status::Held, 0));
            assert!(rec.lease.is_none(), "claim given back");
        }
    }

    #[tokio::test]
    async fn concurrent_workers_deliver_each_message_once() {
        let storage = Storage::memory();
        let mut ids = Vec::new();
        for _ in 0..50 {
            ids.push(hold(&storage, &["a@x.test"]).await);
        }
        let relay = ScriptedRelay::default();
        let delivered = relay.delivered.clone();
        let mut s = settings();
        s.concurrency = 4;
        let d = Drainer::new(storage.clone(), Arc::new(relay), Arc::new(SystemClock), s);
        let (a, b) = tokio::join!(d.run(RunOptions::default()), d.run(RunOptions::default()));
        assert_eq!(a.unwrap().delivered + b.unwrap().delivered, 50);
        assert_eq!(delivered.lock().unwrap().len(), 50);
        assert_eq!(storage.index.counts().await.unwrap().delivered, 50);
    }
}
