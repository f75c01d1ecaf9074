//! The `standby-drain` handler: reconcile, probe, drain, within one invocation.
//!
//! Runs every minute from the schedule (payload ignored unless it is an object with
//! `force` / `dry_run`), or on demand (`standby drain --remote`). One invocation:
//!
//! 1. reconcile raw objects that have no index record ([`super::reconcile`]);
//! 2. probe the primary; the hysteresis state lives in the table's health item, so
//!    successive invocations build it up like `standby serve`'s loop does;
//! 3. when the primary is up (or `force`), drain with the same engine as `standby serve`,
//!    starting no transaction once less than [`keep_for_the_dot`] of the invocation is
//!    left (room for the final dot's reply; at least [`SAFETY_MARGIN`]);
//!    otherwise only expire mail past `hold_days`.
//!
//! The reserved concurrency of one (set by the template) keeps runs from overlapping; the
//! leases would keep two from delivering the same message anyway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ingest::Ingest;
use super::reconcile::{Bounds, ReconcileReport, reconcile_within};
use crate::config::Config;
use crate::drain::{DrainError, Drainer, RunOptions};
use crate::error::StoreError;
use crate::health;
use crate::model::PrimaryState;
use crate::model::Status;
use crate::ports::FailedEvents;
use crate::ports::Storage;
use crate::ports::{Clock, SystemClock};
use crate::serve::{drain_settings, hysteresis};
use crate::smtp::SmtpRelay;

/// Claims stop when less than this is left of the invocation.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(30);

/// No reply of the primary is waited for in the last this much of the invocation (a
/// 10-minute `dot_timeout_secs` would outlast it): the write-back of the message in hand
/// needs the time. Cut short after the final dot, the message is deferred as ambiguous.
pub const SESSION_MARGIN: Duration = Duration::from_secs(10);
/// A run counts the held messages up to this many ([`DrainSummary::held`]): counting
/// reads every record counted, and a run every minute during an outage with a million
/// held would pay about $22 a day to count them all (`scripts/cost`).
pub const HELD_COUNT_LIMIT: u64 = 10_000;

/// How much of the invocation's `left` time no transaction is started in: enough to send
/// the last message and wait for its final dot's reply (`dot`; at most half of what is left, so a
/// 10-minute `dot_timeout_secs` in a 5-minute function still leaves half of it for
/// sending), and never less than [`SAFETY_MARGIN`]. Without it, a primary whose content
/// filter takes 30 s would get the last message of each worker cut off after its dot,
/// ambiguous, and sent again by the next invocation.
pub fn keep_for_the_dot(left: Duration, dot: Duration) -> Duration {
    // SAFETY_MARGIN more for what comes before the dot (MAIL, RCPT, the body).
    (dot + SESSION_MARGIN + SAFETY_MARGIN)
        .min(left / 2)
        .max(SAFETY_MARGIN)
}

/// The invocation payload (anything else, e.g. the scheduler's `{}`, means defaults).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct DrainRequest {
    /// Deliver even if the primary is not (yet) considered up.
    pub force: bool,
    /// Change nothing; report what is due and what the sweep's next pages would
    /// reconcile (nothing between sweeps).
    pub dry_run: bool,
}

impl DrainRequest {
    pub fn from_payload(payload: &serde_json::Value) -> DrainRequest {
        serde_json::from_value(payload.clone()).unwrap_or_default()
    }
}

/// What the function returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainSummary {
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    /// Of the deferred: no reply to the final dot (the primary may have them).
    #[serde(default)]
    pub ambiguous: u64,
    /// Messages users sent that went out to outside recipients in this run (SES).
    #[serde(default)]
    pub sent_outside: u64,
    pub reconciled: u64,
    /// Objects (or list requests) the reconciler's sweep failed on in this run: logged,
    /// skipped, tried again by the next sweep.
    #[serde(default)]
    pub reconcile_errors: u64,
    /// Events from the ingest function's failure queue ingested by this run.
    pub reingested: u64,
    /// The primary's state after this invocation's probe: `up`, `down`, `unknown`.
    pub primary: String,
    /// The probe's answer or error.
    pub probe: String,
    /// Messages held after the run, counted up to [`HELD_COUNT_LIMIT`] (that figure
    /// means "at least").
    pub held: u64,
    /// Age of the oldest held message, in seconds (absent when nothing is held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_held_secs: Option<u64>,
    /// This invocation's probe failed.
    #[serde(default)]
    pub probe_failed: bool,
    /// Dry run only: messages that would be tried now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Messages the retention policy deleted in this invocation.
    #[serde(default)]
    pub retention_deleted: u64,
    /// The continuity event under way after this run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuity: Option<String>,
    /// Continuity alerts (per channel) and users' notices sent by this run.
    #[serde(default)]
    pub alerts_sent: u64,
    #[serde(default)]
    pub notices_sent: u64,
}

/// Most failed ingest events one run takes from the queue.
pub const REINGEST_MAX: usize = 100;
/// Receives after which an event failing for good is dropped from the queue.
pub const REINGEST_TRIES: u32 = 5;

/// The drain function's state, built once per cold start.
pub struct DrainFunction {
    config: Config,
    storage: Storage,
    relay: Arc<SmtpRelay>,
    clock: Arc<dyn Clock>,
    failed: Option<Arc<dyn FailedEvents>>,
    /// What users sent to outside recipients (`[outbound] mode = "ses"`), sent by every
    /// run whatever the primary's state, so no `serve` node needs to stay up for it.
    outbound: Option<crate::outbound::queue::OutboundQueue>,
    /// Continuity events, after each probe and drain (as `standby serve`'s loop does).
    continuity: Option<crate::continuity::runner::Runner>,
    /// Why the continuity loop could not be set up (logged at every run).
    continuity_error: Option<String>,
}

impl DrainFunction {
    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn new(config: Config, storage: Storage, relay: SmtpRelay) -> Self {
        DrainFunction {
            config,
            storage,
            relay: Arc::new(relay),
            clock: Arc::new(SystemClock),
            failed: None,
            outbound: None,
            continuity: None,
            continuity_error: None,
        }
    }

    /// Send what users sent to outside recipients at each run, through `queue`.
    pub fn with_outbound(mut self, queue: crate::outbound::queue::OutboundQueue) -> Self {
        self.outbound = Some(queue);
        self
    }

    /// Whether the console asked for a drain and this run's probe answered. Not past
    /// the circuit breaker: that branch comes first.
    async fn asked_to_drain(&self, h: &crate::model::HealthRecord) -> bool {
        h.last_probe.as_ref().is_some_and(|p| p.ok)
            && crate::continuity::take_drain_request(self.storage.events.as_ref()).await
    }

    /// The continuity loop could not be set up: say so at every run.
    pub fn with_continuity_error(mut self, why: String) -> Self {
        self.continuity_error = Some(why);
        self
    }

    /// Run the continuity loop's step at each run, with `runner`.
    pub fn with_continuity(mut self, runner: crate::continuity::runner::Runner) -> Self {
        self.continuity = Some(runner);
        self
    }

    /// The continuity loop's step, sending for at most a third of what is left of the
    /// invocation (and never past [`SAFETY_MARGIN`] before its end); alerts and notices
    /// sent, when it ran.
    async fn continuity_tick(
        &self,
        drain_error: Option<String>,
        deadline: Option<Instant>,
    ) -> Option<(u64, u64)> {
        if let Some(why) = &self.continuity_error {
            tracing::error!(error = %why, "continuity events are off: their setup failed");
        }
        let runner = self.continuity.as_ref()?;
        let budget = deadline.map_or(crate::continuity::runner::TICK_BUDGET, |d| {
            (d.saturating_duration_since(Instant::now())
                .saturating_sub(SAFETY_MARGIN)
                / 3)
            .min(crate::continuity::runner::TICK_BUDGET)
        });
        match runner.tick_within(drain_error, budget).await {
            Ok(r) => {
                if r.alerts_failed > 0 || r.notices_failed > 0 {
                    tracing::warn!(
                        alerts_failed = r.alerts_failed,
                        notices_failed = r.notices_failed,
                        "continuity: some alerts or notices not sent yet"
                    );
                }
                Some((r.alerts_sent as u64, r.notices_sent as u64))
            }
            Err(e) => {
                tracing::error!(error = %e, "continuity check failed");
                None
            }
        }
    }

    /// Run the outbound queue until nothing is due or the invocation nears its end (the
    /// claims it holds then are given back). How many messages went out.
    async fn send_outside(&self, deadline: Option<Instant>) -> u64 {
        let Some(queue) = &self.outbound else {
            return 0;
        };
        let run = match deadline {
            Some(d) => {
                let at = d.checked_sub(SAFETY_MARGIN).unwrap_or(d);
                queue.run_until(tokio::time::Instant::from_std(at)).await
            }
            None => queue.run(None).await,
        };
        match run {
            Ok(r) => r.delivered,
            Err(e) => {
                tracing::error!(error = %e, "outbound run failed");
                0
            }
        }
    }

    /// Ingest the events the ingest function gave up on, from `queue`, at each run.
    pub fn with_failed_events(mut self, queue: Arc<dyn FailedEvents>) -> Self {
        self.failed = Some(queue);
        self
    }

    /// Ingest again what the ingest function gave up on (up to [`REINGEST_MAX`] events a
    /// run, and for at most a third of the time the run has left, so delivery keeps its
    /// share), without waiting on leases: an event whose record a drain holds stays in
    /// the queue for a later run. An event that fails for a reason no retry mends (the
    /// object is gone, it is not a message, not an SES event) is dropped after
    /// [`REINGEST_TRIES`] receives, logged with its cause; the reconciler still covers
    /// an object without a record. Best effort: a queue that cannot be read never stops
    /// the run. How many were ingested.
    async fn reingest(&self, filing: &Ingest, deadline: Option<Instant>) -> u64 {
        let Some(queue) = &self.failed else {
            return 0;
        };
        let started = Instant::now();
        let budget = deadline.map(|d| d.saturating_duration_since(started) / 3);
        let filing = filing.clone().with_lease_wait(std::time::Duration::ZERO);
        let (mut done, mut seen) = (0, 0);
        while seen < REINGEST_MAX && budget.is_none_or(|b| started.elapsed() < b) {
            let batch = match queue.take(10).await {
                Ok(b) if b.is_empty() => break,
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "ingest failure queue unreadable; delivering anyway");
                    break;
                }
            };
            seen += batch.len();
            for ev in batch {
                let remove = match filing.handle(ev.event).await {
                    Ok(report) => {
                        done += 1;
                        tracing::info!(
                            indexed = report.indexed,
                            merged = report.merged,
                            upgraded = report.upgraded,
                            "failed ingest event ingested"
                        );
                        true
                    }
                    Err(e) if e.is_permanent() && ev.receives >= REINGEST_TRIES => {
                        tracing::error!(error = %e, kind = e.kind(), receives = ev.receives, "failed ingest event dropped: it cannot succeed");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kind = e.kind(), receives = ev.receives, "failed ingest event still failing; left in the queue");
                        false
                    }
                };
                if remove && let Err(e) = queue.done(&ev.handle).await {
                    tracing::warn!(error = %e, "could not remove an event from the ingest failure queue; it comes back and is ingested again (idempotent)");
                }
            }
        }
        done
    }

    /// Use another clock (tests move time instead of waiting for backoff).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Apply the retention policy when the last run is `[retention] interval_secs` old
    /// (the function runs every minute; the policy needs far less). How many it deleted.
    async fn retention(&self, node: &str, address: &str) -> Result<u64, StoreError> {
        let policy = self.config.retention();
        let index = self.storage.index.as_ref();
        let now = self.clock.now();
        let every = chrono::Duration::seconds(i64::try_from(policy.interval_secs).unwrap_or(3600));
        let h = health::load_for(index, node, address).await?;
        if h.retained_at.is_some_and(|t| now - t < every) {
            return Ok(0);
        }
        let report = crate::retention::run(&self.storage, &policy, now).await?;
        health::update(index, node, address, |h| {
            h.retained_at = h.retained_at.max(Some(now));
            true
        })
        .await?;
        Ok(report.deleted)
    }

    /// One invocation. `deadline` is when the invocation ends (from the Lambda context).
    pub async fn handle(
        &self,
        req: DrainRequest,
        deadline: Option<Instant>,
    ) -> Result<DrainSummary, StoreError> {
        let node = self.config.node_id();
        let address = self.relay.address().to_string();
        let index = self.storage.index.as_ref();
        let now = self.clock.now();
        let filing = Ingest::new(self.storage.clone(), "")
            .with_journal(self.config.journal(), super::journal_allow(&self.config))
            .with_retention(self.config.retention());
        // Before the reconciler: an event's exact envelope beats a guess from headers.
        let reingested = if req.dry_run {
            0
        } else {
            self.reingest(&filing, deadline).await
        };
        // The sweep lists for half of what is left of the invocation at most, and never
        // stops the probe and the drain after it: a failure is logged, and the next run
        // goes on from where the sweep was.
        let bounds = Bounds {
            until: deadline.map(|d| {
                let start = Instant::now();
                start + d.saturating_duration_since(start) / 2
            }),
            ..Bounds::for_hold_days(self.config.hold_days)
        };
        let rec: ReconcileReport = reconcile_within(
            &self.storage,
            (&node, &address),
            &self.config.domains,
            &filing,
            now,
            req.dry_run,
            bounds,
        )
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reconciler failed; probing and draining anyway");
            ReconcileReport {
                errors: 1,
                ..Default::default()
            }
        });
        // This invocation's relay: no reply waited for past its end.
        let relay = Arc::new(
            self.relay
                .as_ref()
                .clone()
                .with_deadline(deadline.map(|d| d.checked_sub(SESSION_MARGIN).unwrap_or(d))),
        );
        let drainer = Drainer::new(
            self.storage.clone(),
            relay.clone(),
            self.clock.clone(),
            drain_settings(&self.config),
        );
        let mut summary = DrainSummary {
            reconciled: rec.reconciled,
            reconcile_errors: rec.errors,
            reingested,
            ..Default::default()
        };
        if req.dry_run {
            let h = health::load_for(index, &node, &address).await?;
            summary.primary = h.state.to_string();
            summary.due = Some(drainer.due().await?.len() as u64);
            summary.held = index.count_at_most(Status::Held, HELD_COUNT_LIMIT).await?;
            return Ok(summary);
        }
        let h = health::check(
            relay.as_ref(),
            index,
            self.clock.as_ref(),
            (&node, &address),
            hysteresis(&self.config),
        )
        .await?;
        summary.primary = h.state.to_string();
        summary.probe_failed = h.last_probe.as_ref().is_some_and(|p| !p.ok);
        summary.probe = h
            .last_probe
            .as_ref()
            .map(|p| p.detail.clone())
            .unwrap_or_default();
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // A run the primary refused at MAIL with 4xx (it cannot take mail now).
        let mut drain_error = None;
        if let Some(left) = left.filter(|l| *l <= SAFETY_MARGIN) {
            let why = format!(
                "the invocation ends in {} s, less than the {} s kept in reserve: nothing was \
                 claimed (set the function timeout to a few minutes)",
                left.as_secs(),
                SAFETY_MARGIN.as_secs()
            );
            tracing::warn!("{why}");
            summary.stopped = Some(why);
        } else if let (Some(halt), false) = (&h.halted, req.force) {
            summary.stopped = Some(format!(
                "draining halted since {}: {}",
                halt.at.to_rfc3339(),
                halt.reason
            ));
            summary.failed = drainer.expire_old().await?;
        } else if let Some(asked) = if h.state == PrimaryState::Up || req.force {
            Some(false)
        } else {
            // Read only when it could matter: an idle run with the primary up reads no
            // more than before.
            self.asked_to_drain(&h).await.then_some(true)
        } {
            if req.force {
                health::resume(index, (&node, &address)).await?;
            }
            let dot = self.config.primary.timeouts().dot;
            let opts = RunOptions {
                deadline: deadline.map(|d| {
                    let keep = keep_for_the_dot(d.saturating_duration_since(Instant::now()), dot);
                    tokio::time::Instant::from_std(d.checked_sub(keep).unwrap_or(d))
                }),
                force: req.force,
                // Asked for from the console before the health turned up: the ramp
                // counts from now.
                back_since: if asked {
                    Some(self.clock.now())
                } else {
                    (h.state == PrimaryState::Up).then_some(h.since).flatten()
                },
                ..Default::default()
            };
            let run = drainer.run(opts).await.map_err(|e| match e {
                DrainError::Store(e) => e,
                DrainError::WorkerPanicked(why) => StoreError::Backend {
                    backend: "drain",
                    detail: format!("a drain worker panicked: {why}"),
                    transient: false,
                    source: None,
                },
            });
            let report = match run {
                Ok(r) => r,
                Err(e) => {
                    // The run failed: the administrators hear of it, then the invocation
                    // fails as before (the function's error metric).
                    self.continuity_tick(Some(e.to_string()), deadline).await;
                    // The alert mail it queued goes out now (SES), not at a later run
                    // that may fail the same way.
                    self.send_outside(deadline).await;
                    return Err(e);
                }
            };
            health::record_drain(index, (&node, &address), &report, self.clock.now()).await?;
            if report.breaker == Some(crate::model::Breaker::Mail4xx) {
                drain_error = report.stopped.clone();
            }
            summary.delivered = report.delivered;
            summary.deferred = report.deferred;
            summary.failed = report.failed;
            summary.ambiguous = report.ambiguous;
            summary.stopped = report.stopped;
        } else {
            summary.failed = drainer.expire_old().await?;
        }
        // Before the outbound run, so the alerts and notices it queues go out with it.
        if let Some((sent, told)) = self.continuity_tick(drain_error, deadline).await {
            summary.alerts_sent = sent;
            summary.notices_sent = told;
        }
        if self.continuity.is_some() {
            summary.continuity = self.storage.events.load().await?.current.map(|e| e.id);
        }
        summary.sent_outside = self.send_outside(deadline).await;
        summary.retention_deleted = self.retention(&node, &address).await?;
        summary.held = index.count_at_most(Status::Held, HELD_COUNT_LIMIT).await?;
        summary.oldest_held_secs = index
            .oldest(Status::Held)
            .await?
            .map(|t| (self.clock.now() - t).num_seconds().max(0).unsigned_abs());
        if let Some(why) = &self.continuity_error {
            // Everything else was done; the run fails so the function's error alarm
            // tells the administrators that no alert would.
            return Err(StoreError::Backend {
                backend: "continuity",
                detail: format!("continuity events are off, their setup failed: {why}"),
                transient: false,
                source: None,
            });
        }
        tracing::info!(
            delivered = summary.delivered,
            deferred = summary.deferred,
            failed = summary.failed,
            reconciled = summary.reconciled,
            held = summary.held,
            primary = %summary.primary,
            "drain invocation"
        );
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_stop_early_enough_for_the_final_dots_reply() {
        let s = Duration::from_secs;
        // A 5-minute function and the RFC's 10-minute dot: half of it is kept.
        assert_eq!(keep_for_the_dot(s(300), s(600)), s(150));
        // A short dot timeout: that, the session margin and time to send the message.
        assert_eq!(keep_for_the_dot(s(300), s(30)), s(70));
        assert_eq!(keep_for_the_dot(s(300), s(1)), s(41));
        // Never less than the safety margin.
        assert_eq!(keep_for_the_dot(s(40), s(1)), SAFETY_MARGIN);
        assert_eq!(keep_for_the_dot(s(20), s(600)), SAFETY_MARGIN);
    }
}
