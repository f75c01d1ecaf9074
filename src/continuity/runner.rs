//! The continuity loop's one step, [`Runner::tick`], run by every node after its probe
//! (each `standby serve`, the drain function): gather the facts, decide ([`super::step`])
//! and save conditionally, then send the alerts owed and the users' notices, within a
//! time budget so a hanging webhook never holds up probing and draining.
//!
//! Alerts owed are sent under a lease kept in the record: a node takes the alerts nobody
//! holds (a conditional save) on the channels it can send, sends them, and strikes off
//! each channel that took it. Two nodes never send the same alert at once, and a node
//! that dies sending leaves it to the next after [`ALERT_LEASE`]: at least once, never
//! lost.
//!
//! Each user's notice is two marks in the store: `sending#…` (ten minutes) while it is
//! being sent, `notice#…` (sixty days) once it was. A node that dies between the two
//! leaves only the short one, so the notice is sent again after it lapses; a notice that
//! went out is never sent twice.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use tokio::time::Instant;

use super::alerts::Alerter;
use super::alternates::{Alternate, Alternates};
use super::notices::{Templates, render};
use super::{Change, Facts, Rules, end, extend, start, step};
use crate::error::{NotifyError, StoreError};
use crate::model::continuity::{AlertKind, Channel, Continuity, Event};
use crate::model::{PrimaryState, Status};
use crate::ports::{AuditEntry, Clock, Http, ListQuery, Mailer, Sns, Storage};
use crate::status::StatusView;
use crate::users::session::SessionKey;

/// How long a node may take to send the alerts it took.
pub const ALERT_LEASE: i64 = 120;
/// Most alerts one tick takes.
const ALERTS_PER_TICK: usize = 10;
/// An alert no channel took within this long is given up (logged).
const ALERT_GIVE_UP_HOURS: i64 = 24;
/// How long a one-time login link works.
pub const LINK_HOURS: i64 = 24;
/// Held messages looked at to tell whether one is due.
const DUE_SCAN: usize = 500;
/// Held messages counted (for the alerts' text): more only says "at least".
const HELD_COUNT: u64 = 10_000;
/// A node's probe older than this does not count in the nodes' view of the primary.
const FRESH_PROBE_SECS: i64 = 600;
/// A notice being sent: how long before another node may try it again.
const SENDING_SECS: i64 = 600;
/// How long a sent notice's mark is kept.
const NOTICE_DAYS: i64 = 60;
/// What a tick may spend sending, by default.
pub const TICK_BUDGET: StdDuration = StdDuration::from_secs(60);

/// The users' notices: who, what text, how.
#[derive(Clone)]
pub struct Notices {
    pub alternates: Alternates,
    pub templates: Templates,
    pub mailer: Option<Arc<dyn Mailer>>,
    pub sms: Option<Arc<dyn Sns>>,
    /// Signs the login links (the emergency inbox's session key); `None`: notices carry
    /// the inbox's address only.
    pub key: Option<SessionKey>,
    /// The emergency inbox (`[web] public_url`).
    pub inbox_url: Option<String>,
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    pub changes: Vec<Change>,
    pub alerts_sent: usize,
    pub alerts_failed: usize,
    pub notices_sent: usize,
    pub notices_failed: usize,
}

/// One node's continuity loop.
#[derive(Clone)]
pub struct Runner {
    pub storage: Storage,
    pub clock: Arc<dyn Clock>,
    /// This node, and the primary's address (its health record).
    pub node: String,
    pub address: String,
    /// For the status view.
    pub store: String,
    pub rules: Rules,
    /// The channels alerts are owed on (`[alerts]`).
    pub channels: Vec<Channel>,
    /// How this node sends them (a channel it has no way for is left to other nodes).
    pub alerter: Alerter,
    pub notices: Option<Notices>,
    pub heartbeat: Option<Heartbeat>,
}

/// `[alerts] heartbeat_url`: requested every `every` seconds by each node, so a standby
/// that died is noticed by the service watching for the requests (a dead man's switch).
#[derive(Clone)]
pub struct Heartbeat {
    pub http: Arc<dyn Http>,
    pub url: String,
    pub every: u64,
}

impl Runner {
    /// The facts now; `drain_error` is the last drain run's failure, if it failed.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn facts(&self, drain_error: Option<String>) -> Result<Facts, StoreError> {
        let index = self.storage.index.as_ref();
        let now = self.clock.now();
        let own = crate::health::view(index, &self.node, &self.address).await?;
        let nodes = index.list_health().await?;
        // Up when any node that probed lately sees it up: the mail reaches it from there.
        let fresh = |p: &Option<crate::model::ProbeResult>| {
            p.as_ref()
                .is_some_and(|p| now - p.at < Duration::seconds(FRESH_PROBE_SECS))
        };
        let up = nodes
            .iter()
            .filter(|n| n.address == self.address && fresh(&n.last_probe))
            .filter(|n| n.state == PrimaryState::Up)
            .max_by_key(|n| n.since);
        let (primary, since) = match (own.state, up) {
            (PrimaryState::Up, _) => (PrimaryState::Up, own.since),
            (_, Some(n)) => (PrimaryState::Up, n.since),
            (state, None) => (state, own.since),
        };
        let held = index.count_at_most(Status::Held, HELD_COUNT).await?;
        // Due: among the oldest held, one whose retry time has come (or never tried).
        // Newer mail is due at once, and the drain that runs before this takes it.
        let (mut due, mut held_old) = (false, 0);
        if held > 0 {
            let page = index
                .list(&ListQuery {
                    status: Some(Status::Held),
                    limit: Some(DUE_SCAN),
                    ..ListQuery::default()
                })
                .await?;
            due = page.iter().any(|r| r.next_attempt_at <= now);
            let window = now - self.rules.start_after;
            held_old = page.iter().filter(|r| r.received_at <= window).count() as u64;
        }
        Ok(Facts {
            now,
            node: self.node.clone(),
            primary,
            since,
            halted: own.halted.map(|x| (x.at, x.reason)),
            held,
            oldest_held: index.oldest(Status::Held).await?,
            held_old,
            due,
            last_delivered: nodes.iter().filter_map(|n| n.last_delivered).max(),
            drain_error,
        })
    }

    /// The status view (the alerts' body).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn status(&self) -> Result<StatusView, StoreError> {
        crate::status::gather(&self.storage, &self.node, &self.address, self.store.clone()).await
    }

    /// Apply `f` to the stored record and save it when `f` says it changed it; read
    /// again and apply again when another node saved in between.
    ///
    /// # Errors
    /// Storage errors; [`StoreError::FileChanged`] when saves kept colliding.
    pub async fn update<T>(
        &self,
        mut f: impl FnMut(&mut Continuity) -> (T, bool),
    ) -> Result<(T, Continuity), StoreError> {
        let mut last = None;
        for _ in 0..5 {
            let mut c = self.storage.events.load().await?;
            let (out, changed) = f(&mut c);
            if !changed {
                return Ok((out, c));
            }
            match self.storage.events.save(&c).await {
                Ok(()) => {
                    c.version += 1;
                    return Ok((out, c));
                }
                Err(e @ StoreError::FileChanged(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::FileChanged("the continuity record".into())))
    }

    /// Decide, save, send what is owed within [`TICK_BUDGET`].
    ///
    /// # Errors
    /// Storage errors deciding (sending failures stay owed and are counted).
    pub async fn tick(&self, drain_error: Option<String>) -> Result<TickReport, StoreError> {
        self.tick_within(drain_error, TICK_BUDGET).await
    }

    /// [`Runner::tick`], sending for at most `budget` (the drain function's invocation
    /// has an end); what is left is sent by the next tick.
    ///
    /// # Errors
    /// As [`Runner::tick`].
    pub async fn tick_within(
        &self,
        drain_error: Option<String>,
        budget: StdDuration,
    ) -> Result<TickReport, StoreError> {
        let until = Instant::now() + budget;
        let facts = self.facts(drain_error).await?;
        let channels = self.channels.clone();
        let (changes, c) = self
            .update(|c| {
                let ch = step(c, &facts, &self.rules, &channels);
                let changed = !ch.is_empty();
                (ch, changed)
            })
            .await?;
        for ch in &changes {
            let (action, reason) = match ch {
                Change::Started(why) => ("continuity-start", why.clone()),
                Change::Ended => ("continuity-end", "primary up, nothing due".to_string()),
                Change::Alerted(AlertKind::Cap) => (
                    "continuity-cap",
                    format!("max_hours = {}", self.rules.max_hours),
                ),
                _ => continue,
            };
            let event = match ch {
                Change::Ended => c.history.first(),
                _ => c.current.as_ref(),
            };
            let id = event.map(|e| e.id.as_str()).unwrap_or("");
            tracing::warn!(event = id, action, reason = %reason, "continuity event");
            self.audit(action, "auto", &format!("event {id}: {reason}"))
                .await;
        }
        let mut report = TickReport {
            changes,
            ..TickReport::default()
        };
        self.deliver(&mut report, until).await?;
        self.notify(&mut report, until).await?;
        self.beat().await;
        Ok(report)
    }

    /// Request the heartbeat URL, once per node and `every` seconds: the window's mark
    /// keeps the drain function's overlapping invocations to one request.
    async fn beat(&self) {
        let Some(h) = &self.heartbeat else {
            return;
        };
        let now = self.clock.now();
        let every = i64::try_from(h.every.max(1)).unwrap_or(i64::MAX);
        let window = now.timestamp().div_euclid(every);
        let mark = format!("heartbeat#{}#{window}", self.node);
        let keep = now + Duration::seconds(every.saturating_mul(2).min(86_400 * 7));
        match self.storage.events.mark_once(&mark, keep).await {
            Ok(true) => {
                if let Err(e) = h.http.get(&h.url).await {
                    tracing::warn!(error = %e, "heartbeat not delivered");
                    let _ = self.storage.events.unmark(&mark).await;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat skipped: the store did not answer"),
        }
    }

    async fn audit(&self, action: &str, by: &str, reason: &str) {
        let entry = AuditEntry::session(action, by, reason, self.clock.now());
        if let Err(e) = self.storage.audit.append(&entry).await {
            tracing::error!(error = %e, action, "could not write the audit entry of a continuity event");
        }
    }

    /// An operator starts an event: `Ok(Err(event))` when one is under way already.
    /// Its alerts and notices go out at the next tick of a node that runs the loop.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn start(&self, by: &str, reason: &str) -> Result<Result<Event, Event>, StoreError> {
        let now = self.clock.now();
        let channels = self.channels.clone();
        let (out, c) = self
            .update(|c| match &c.current {
                Some(ev) => (Err(ev.clone()), false),
                None => {
                    start(c, now, by, reason, &self.rules, &channels);
                    (Ok(()), true)
                }
            })
            .await?;
        Ok(match out {
            Ok(()) => {
                let ev = c.current.clone().expect("just started");
                self.audit(
                    "continuity-start",
                    by,
                    &format!("event {}: {reason}", ev.id),
                )
                .await;
                Ok(ev)
            }
            Err(ev) => Err(ev),
        })
    }

    /// An operator ends the event under way; `None` when there is none.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn end(&self, by: &str) -> Result<Option<Event>, StoreError> {
        let now = self.clock.now();
        let channels = self.channels.clone();
        let (ended, c) = self
            .update(|c| {
                let e = end(c, now, by, &channels);
                (e, e)
            })
            .await?;
        if !ended {
            return Ok(None);
        }
        let ev = c.history.first().cloned();
        if let Some(ev) = &ev {
            self.audit("continuity-end", by, &format!("event {}", ev.id))
                .await;
        }
        Ok(ev)
    }

    /// An operator moves the cap of the event under way `hours` later.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn extend(&self, hours: u32, by: &str) -> Result<Option<Event>, StoreError> {
        let now = self.clock.now();
        let (done, c) = self
            .update(|c| {
                let e = extend(c, now, hours);
                (e, e)
            })
            .await?;
        if !done {
            return Ok(None);
        }
        let ev = c.current.clone();
        if let Some(ev) = &ev {
            self.audit(
                "continuity-extend",
                by,
                &format!(
                    "event {}: {hours} hours, cap now {}",
                    ev.id,
                    ev.cap_at.to_rfc3339()
                ),
            )
            .await;
        }
        Ok(ev)
    }

    /// Send the alerts owed that no other node is sending, on the channels this node
    /// has, until `until`.
    async fn deliver(&self, report: &mut TickReport, until: Instant) -> Result<(), StoreError> {
        let now = self.clock.now();
        let lease = now + Duration::seconds(ALERT_LEASE);
        let mine = |ch: &Channel| self.alerter.can(*ch);
        let (taken, _) = self
            .update(|c| {
                let mut taken = Vec::new();
                for p in &mut c.pending {
                    if taken.len() < ALERTS_PER_TICK
                        && p.lease_until.is_none_or(|t| t <= now)
                        && p.channels.iter().any(mine)
                    {
                        p.lease_until = Some(lease);
                        taken.push(p.clone());
                    }
                }
                let changed = !taken.is_empty();
                (taken, changed)
            })
            .await?;
        if taken.is_empty() {
            return Ok(());
        }
        let status = self.status().await?;
        let mut results = Vec::new();
        for alert in &taken {
            let mut done = Vec::new();
            let mut failed = false;
            for ch in alert.channels.iter().filter(|c| mine(c)) {
                if Instant::now() >= until {
                    break;
                }
                match self.alerter.send(*ch, alert, &status).await {
                    Ok(()) => {
                        report.alerts_sent += 1;
                        done.push(*ch);
                    }
                    Err(e) => {
                        failed = true;
                        report.alerts_failed += 1;
                        tracing::error!(alert = %alert.kind, error = %e, "continuity alert not sent; tried again at the next check");
                    }
                }
            }
            results.push((alert.kind, alert.at, alert.event.clone(), done, failed));
        }
        let give_up = now - Duration::hours(ALERT_GIVE_UP_HOURS);
        self.update(|c| {
            for (kind, at, event, done, failed) in &results {
                if let Some(p) = c
                    .pending
                    .iter_mut()
                    .find(|p| p.kind == *kind && p.at == *at && p.event == *event)
                {
                    p.channels.retain(|ch| !done.contains(ch));
                    p.lease_until = None;
                    if *failed {
                        p.attempts += 1;
                    }
                }
            }
            c.pending.retain(|p| {
                let keep = !p.channels.is_empty() && p.at > give_up;
                if !keep && !p.channels.is_empty() {
                    tracing::error!(alert = %p.kind, attempts = p.attempts, "continuity alert given up after a day without a way to send it");
                }
                keep
            });
            ((), true)
        })
        .await?;
        Ok(())
    }

    /// Tell the users: at the start, and again each repeat for those whose mail arrived
    /// since; at the end, those told at the start.
    async fn notify(&self, report: &mut TickReport, until: Instant) -> Result<(), StoreError> {
        let Some(n) = &self.notices else {
            return Ok(());
        };
        let now = self.clock.now();
        let c = self.storage.events.load().await?;
        if let Some(ev) = &c.current
            && c.notices_checked
                .is_none_or(|t| now - t >= self.rules.repeat)
        {
            let (mut told, mut complete) = (0u64, true);
            for alt in n.alternates.values() {
                if Instant::now() >= until {
                    complete = false;
                    break;
                }
                if self
                    .storage
                    .events
                    .marked(&sent_mark(ev, "start", alt))
                    .await?
                    || !self.has_held(&alt.address).await?
                {
                    continue;
                }
                match self.notice(n, ev, alt, true).await? {
                    Sent::Now => {
                        report.notices_sent += 1;
                        told += 1;
                    }
                    Sent::Elsewhere => complete = false,
                    Sent::Failed(e) => {
                        complete = false;
                        report.notices_failed += 1;
                        tracing::error!(error = %e, "continuity notice not sent; tried again at the next check");
                    }
                }
            }
            if told > 0 || complete {
                let id = ev.id.clone();
                self.update(|c| {
                    let ev = c
                        .current
                        .iter_mut()
                        .chain(c.history.iter_mut())
                        .find(|e| e.id == id);
                    let Some(ev) = ev else {
                        return ((), false);
                    };
                    ev.told += told;
                    // Ended meanwhile: those just told are told of the end too.
                    if ev.ended_at.is_some() && told > 0 {
                        ev.end_notices_done = false;
                    }
                    if complete && c.current.as_ref().is_some_and(|e| e.id == id) {
                        c.notices_checked = Some(now);
                    }
                    ((), true)
                })
                .await?;
            }
        }
        let ended: Vec<Event> = c
            .history
            .iter()
            .take(5)
            .filter(|e| !e.end_notices_done)
            .cloned()
            .collect();
        for ev in ended {
            let mut complete = true;
            for alt in n.alternates.values() {
                if Instant::now() >= until {
                    complete = false;
                    break;
                }
                let events = &self.storage.events;
                if !events.marked(&sent_mark(&ev, "start", alt)).await?
                    || events.marked(&sent_mark(&ev, "end", alt)).await?
                {
                    continue;
                }
                match self.notice(n, &ev, alt, false).await? {
                    Sent::Now => report.notices_sent += 1,
                    Sent::Elsewhere => complete = false,
                    Sent::Failed(e) => {
                        complete = false;
                        report.notices_failed += 1;
                        tracing::error!(error = %e, "continuity end notice not sent; tried again at the next check");
                    }
                }
            }
            if complete {
                self.update(|c| {
                    let ev = c.history.iter_mut().find(|e| e.id == ev.id);
                    let changed = ev.as_ref().is_some_and(|e| !e.end_notices_done);
                    if let Some(ev) = ev {
                        ev.end_notices_done = true;
                    }
                    ((), changed)
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn has_held(&self, address: &str) -> Result<bool, StoreError> {
        let page = self
            .storage
            .index
            .list(&ListQuery {
                status: Some(Status::Held),
                rcpt: Some(address.to_string()),
                limit: Some(1),
                // Held mail is recent: from the newest, one item answers.
                newest_first: true,
                ..ListQuery::default()
            })
            .await?;
        Ok(!page.is_empty())
    }

    /// Send one user's notice unless another node is sending it.
    async fn notice(
        &self,
        n: &Notices,
        ev: &Event,
        alt: &Alternate,
        starting: bool,
    ) -> Result<Sent, StoreError> {
        let now = self.clock.now();
        let kind = if starting { "start" } else { "end" };
        let sending = format!("sending#{}#{kind}#{}", ev.id, alt.address);
        let events = &self.storage.events;
        if !events
            .mark_once(&sending, now + Duration::seconds(SENDING_SECS))
            .await?
        {
            return Ok(Sent::Elsewhere);
        }
        match self.send_notice(n, ev, alt, starting).await {
            Ok(()) => {
                let keep = now + Duration::days(NOTICE_DAYS);
                events.mark_once(&sent_mark(ev, kind, alt), keep).await?;
                Ok(Sent::Now)
            }
            Err(e) => {
                // Nothing reached the user: the next check tries again.
                events.unmark(&sending).await?;
                Ok(Sent::Failed(e))
            }
        }
    }

    async fn send_notice(
        &self,
        n: &Notices,
        ev: &Event,
        alt: &Alternate,
        starting: bool,
    ) -> Result<(), NotifyError> {
        let now = self.clock.now();
        let expires = now + Duration::hours(LINK_HOURS);
        let link = match (&n.inbox_url, &n.key) {
            (Some(url), Some(key)) => format!(
                "{}/login/link?t={}",
                url.trim_end_matches('/'),
                key.issue_link(&alt.address, &ev.id, expires.timestamp())
            ),
            (Some(url), None) => format!("{} (log in with your address and password)", url),
            (None, _) => "(ask your administrator for the emergency inbox's address)".into(),
        };
        let started = fmt(ev.started_at);
        let expires = fmt(expires);
        let values = [
            ("address", alt.address.as_str()),
            ("inbox_url", n.inbox_url.as_deref().unwrap_or("")),
            ("login_link", link.as_str()),
            ("started_at", started.as_str()),
            ("expires_at", expires.as_str()),
        ];
        let t = if starting {
            &n.templates.start
        } else {
            &n.templates.end
        };
        let mut sent = false;
        let mut errors = Vec::new();
        if let Some(to) = &alt.email {
            let subject = render(&t.subject, &values);
            let body = render(&t.body, &values);
            match &n.mailer {
                Some(m) => match m.mail(std::slice::from_ref(to), &subject, &body).await {
                    Ok(()) => sent = true,
                    Err(e) => errors.push(e),
                },
                None => errors.push(NotifyError::new("email", "no outbound path on this node")),
            }
        }
        if starting && let Some(phone) = &alt.phone {
            match &n.sms {
                Some(sms) => match sms.sms(phone, &render(&n.templates.sms, &values)).await {
                    Ok(()) => sent = true,
                    Err(e) => errors.push(e),
                },
                None => errors.push(NotifyError::new("sms", "no SNS client on this node")),
            }
        }
        if sent || errors.is_empty() {
            for e in errors {
                tracing::warn!(error = %e, "one way of a continuity notice failed; the other reached the user");
            }
            return Ok(());
        }
        Err(errors.remove(0))
    }
}

/// What became of one notice.
enum Sent {
    Now,
    /// Another node is sending it (or died sending it less than ten minutes ago).
    Elsewhere,
    Failed(NotifyError),
}

/// The mark of a notice that went out.
fn sent_mark(ev: &Event, kind: &str, alt: &Alternate) -> String {
    format!("notice#{}#{kind}#{}", ev.id, alt.address)
}

fn fmt(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}
