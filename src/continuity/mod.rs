//! Continuity events: an outage as something with a start, people told, and an end.
//!
//! An event **starts** by itself when the primary has been `down` for
//! `[continuity] start_after_secs`, or when held mail is that old and nothing was
//! delivered in that time (a primary that answers probes but takes no mail). Held mail
//! alone is no outage: a primary that greylists sends mail our way while it is up, and
//! the drain delivers it within minutes. An event **ends** by itself once the primary has
//! been `up` with no held message due for `end_after_secs`. An operator can start, end
//! and extend one (`standby continuity`); an event an operator started ends only by an
//! operator, since the standby cannot know what a planned outage is waiting for. After
//! `max_hours` (moved by `extend`) it alerts `cap` and goes on: mail keeps flowing.
//!
//! Administrators hear about it out of band ([`alerts`]): a signed webhook, mail to
//! external addresses through the outbound path, an SNS topic; never only by mail through
//! the system that is down. Users listed in `[continuity] alternates` get a notice at
//! their alternate address (and an SMS) with a one-time login link ([`notices`]).
//!
//! [`step`] is the whole decision, pure, over a [`Continuity`] record and the [`Facts`]
//! of the moment; [`runner::Runner`] gathers the facts, saves the record conditionally
//! (two nodes deciding at once start one event), and sends what is owed.

pub mod alerts;
pub mod alternates;
pub mod notices;
pub mod runner;

use chrono::{DateTime, Duration, Utc};

use crate::config::{AlertsConfig, ContinuityConfig};
use crate::model::PrimaryState;
use crate::model::continuity::{
    AUTO, AlertKind, Channel, Continuity, Event, HISTORY, PendingAlert,
};

/// The mark the console sets to ask for a drain now: the next loop (a `serve` node at
/// once, the drain function at its next run) probes and, if the primary answers,
/// delivers without waiting for `up_after` good probes.
pub const DRAIN_NOW: &str = "drain-now";

/// Take the console's drain request, if there is one (one drain per ask); a store that
/// does not answer counts as no request.
pub async fn take_drain_request(events: &dyn crate::ports::EventStore) -> bool {
    match events.marked(DRAIN_NOW).await {
        Ok(true) => {
            if let Err(e) = events.unmark(DRAIN_NOW).await {
                tracing::warn!(error = %e, "could not take the console's drain request");
            }
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the console's drain request");
            false
        }
    }
}

/// The lifecycle's thresholds.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub start_after: Duration,
    pub end_after: Duration,
    pub max_hours: u32,
    pub repeat: Duration,
}

impl Rules {
    pub fn of(c: &ContinuityConfig, a: &AlertsConfig) -> Rules {
        Rules {
            start_after: secs(c.start_after_secs),
            end_after: secs(c.end_after_secs),
            max_hours: c.max_hours,
            repeat: secs(a.repeat_secs),
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::seconds(
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1000)
            .min(i64::MAX / 1000),
    )
}

/// What the standby sees at one moment.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub now: DateTime<Utc>,
    /// The node deciding.
    pub node: String,
    /// The primary as the nodes see it (`up` when any node that probed recently sees it
    /// up: mail reaches it from there), and since when.
    pub primary: PrimaryState,
    pub since: Option<DateTime<Utc>>,
    /// Draining halted by the circuit breaker on this node: when, and why.
    pub halted: Option<(DateTime<Utc>, String)>,
    /// Held messages (counted up to a bound).
    pub held: u64,
    /// The oldest held message.
    pub oldest_held: Option<DateTime<Utc>>,
    /// Held messages older than `start_after` (among the oldest few hundred).
    pub held_old: u64,
    /// A held message is due for delivery now (never tried, or its retry time come).
    pub due: bool,
    /// When any node last delivered something.
    pub last_delivered: Option<DateTime<Utc>>,
    /// The last drain run's error, if it failed.
    pub drain_error: Option<String>,
}

/// What one [`step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Started(String),
    Ended,
    Alerted(AlertKind),
    /// Only the record's bookkeeping (the quiet clock) moved.
    Noted,
}

/// Decide, from `f`, what happens to the record: start, end, repeat, cap, the breaker
/// and drain errors. Alerts owed go into `c.pending` for `channels`.
pub fn step(c: &mut Continuity, f: &Facts, r: &Rules, channels: &[Channel]) -> Vec<Change> {
    let mut changes = Vec::new();
    let now = f.now;
    // After an event ended (an operator's end during an outage included), only an
    // outage that began since starts another: not the same one again.
    let last_end = c.history.first().and_then(|e| e.ended_at);
    match &mut c.current {
        None => {
            if let Some(reason) = outage(f, r, last_end) {
                start(c, now, AUTO, &reason, r, channels);
                changes.push(Change::Started(reason));
            }
        }
        Some(ev) => {
            // Up, nothing due, and either nothing held or the primary took mail since
            // the event began: a primary that defers everything (its content filter
            // down) keeps the messages in backoff, not due, but is no recovered
            // primary; one that took the backlog and defers one full mailbox is.
            let taking = f.held == 0 || f.last_delivered.is_some_and(|d| d >= ev.started_at);
            let quiet = f.primary == PrimaryState::Up && !f.due && taking;
            match (quiet, ev.quiet_since) {
                (true, None) => {
                    ev.quiet_since = Some(now);
                    changes.push(Change::Noted);
                }
                (false, Some(_)) => {
                    ev.quiet_since = None;
                    changes.push(Change::Noted);
                }
                _ => {}
            }
            let ended = !ev.manual() && ev.quiet_since.is_some_and(|q| now - q >= r.end_after);
            if ended {
                end(c, now, AUTO, channels);
                changes.push(Change::Ended);
            } else if now >= ev.cap_at && !ev.cap_alerted {
                ev.cap_alerted = true;
                ev.alerted_at = now;
                let id = ev.id.clone();
                let detail = format!(
                    "under way for over {} hours",
                    (now - ev.started_at).num_hours()
                );
                owe(c, AlertKind::Cap, Some(id), now, detail, channels);
                changes.push(Change::Alerted(AlertKind::Cap));
            } else if now - ev.alerted_at >= r.repeat {
                ev.alerted_at = now;
                let id = ev.id.clone();
                owe(
                    c,
                    AlertKind::Ongoing,
                    Some(id),
                    now,
                    String::new(),
                    channels,
                );
                changes.push(Change::Alerted(AlertKind::Ongoing));
            }
        }
    }
    if let Some((at, why)) = &f.halted
        && c.breakers_alerted.get(&f.node) != Some(at)
    {
        c.breakers_alerted.insert(f.node.clone(), *at);
        let event = c.current.as_ref().map(|e| e.id.clone());
        owe(c, AlertKind::Breaker, event, now, why.clone(), channels);
        changes.push(Change::Alerted(AlertKind::Breaker));
    }
    if let Some(err) = &f.drain_error
        && c.drain_errors_alerted.is_none_or(|t| now - t >= r.repeat)
    {
        c.drain_errors_alerted = Some(now);
        let event = c.current.as_ref().map(|e| e.id.clone());
        owe(c, AlertKind::DrainErrors, event, now, err.clone(), channels);
        changes.push(Change::Alerted(AlertKind::DrainErrors));
    }
    changes
}

/// Why an event should start now, if it should: evidence of an outage that began
/// after `last_end`.
fn outage(f: &Facts, r: &Rules, last_end: Option<DateTime<Utc>>) -> Option<String> {
    let window = f.now - r.start_after;
    let after_end = |t: DateTime<Utc>| last_end.is_none_or(|end| t > end);
    if f.primary == PrimaryState::Down
        && let Some(since) = f.since
        && since <= window
        && after_end(since)
    {
        return Some(format!(
            "the primary has been down since {}",
            since.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    // Held mail that waited the window with nothing delivered: a primary that answers
    // probes but takes no mail (it defers everything). After an event ended, only once
    // something was delivered since: a message stuck in backoff (a full mailbox) does not
    // start event after event.
    let idle = f.last_delivered.is_none_or(|d| d <= window);
    let delivered_since_end = last_end.is_none_or(|end| f.last_delivered.is_some_and(|d| d > end));
    // And more than one message waiting: one message stuck in backoff (a full
    // mailbox) at a primary with no other traffic is no outage.
    if idle
        && delivered_since_end
        && f.held_old >= 2
        && let Some(oldest) = f.oldest_held
        && oldest <= window
    {
        return Some(format!(
            "{} held messages, the oldest since {}, and nothing delivered in {} minutes",
            f.held,
            oldest.format("%Y-%m-%d %H:%M:%S UTC"),
            r.start_after.num_minutes()
        ));
    }
    None
}

/// Start an event (none may be under way).
pub fn start(
    c: &mut Continuity,
    now: DateTime<Utc>,
    by: &str,
    reason: &str,
    r: &Rules,
    channels: &[Channel],
) {
    let id = ulid::Ulid::from_datetime(now.into()).to_string();
    c.current = Some(Event {
        id: id.clone(),
        started_at: now,
        started_by: by.to_string(),
        reason: reason.to_string(),
        cap_at: now + Duration::hours(i64::from(r.max_hours)),
        cap_alerted: false,
        quiet_since: None,
        alerted_at: now,
        told: 0,
        end_notices_done: false,
        ended_at: None,
        ended_by: None,
        extensions: Vec::new(),
    });
    c.notices_checked = None;
    owe(
        c,
        AlertKind::Started,
        Some(id),
        now,
        reason.to_string(),
        channels,
    );
}

/// End the event under way (if any), into the history; `false` when there was none.
pub fn end(c: &mut Continuity, now: DateTime<Utc>, by: &str, channels: &[Channel]) -> bool {
    let Some(mut ev) = c.current.take() else {
        return false;
    };
    ev.ended_at = Some(now);
    ev.ended_by = Some(by.to_string());
    // Who was told it started is in the store's marks: the notices' step reads them.
    ev.end_notices_done = false;
    let id = ev.id.clone();
    c.history.insert(0, ev);
    c.history.truncate(HISTORY);
    owe(c, AlertKind::Ended, Some(id), now, String::new(), channels);
    true
}

/// Move the cap of the event under way `hours` later (from now, when it has passed);
/// `false` when there is none.
pub fn extend(c: &mut Continuity, now: DateTime<Utc>, hours: u32) -> bool {
    let Some(ev) = c.current.as_mut() else {
        return false;
    };
    ev.cap_at = ev.cap_at.max(now) + Duration::hours(i64::from(hours));
    ev.cap_alerted = false;
    ev.extensions.push(hours);
    true
}

fn owe(
    c: &mut Continuity,
    kind: AlertKind,
    event: Option<String>,
    at: DateTime<Utc>,
    detail: String,
    channels: &[Channel],
) {
    if channels.is_empty() {
        return;
    }
    c.pending.push(PendingAlert {
        kind,
        event,
        at,
        detail,
        channels: channels.to_vec(),
        attempts: 0,
        lease_until: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            start_after: Duration::seconds(600),
            end_after: Duration::seconds(900),
            max_hours: 96,
            repeat: Duration::seconds(3600),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn facts(now: i64, primary: PrimaryState, since: i64) -> Facts {
        Facts {
            now: t(now),
            primary,
            since: Some(t(since)),
            ..Facts::default()
        }
    }

    const CH: &[Channel] = &[Channel::Webhook];

    fn kinds(c: &Continuity) -> Vec<AlertKind> {
        c.pending.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn down_long_enough_starts_and_up_and_quiet_long_enough_ends() {
        let (mut c, r) = (Continuity::default(), rules());
        assert!(step(&mut c, &facts(599, PrimaryState::Down, 0), &r, CH).is_empty());
        let ch = step(&mut c, &facts(600, PrimaryState::Down, 0), &r, CH);
        assert!(matches!(ch[..], [Change::Started(_)]), "{ch:?}");
        assert_eq!(kinds(&c), [AlertKind::Started]);
        // Up, but mail is due: not quiet.
        let mut f = facts(700, PrimaryState::Up, 650);
        f.due = true;
        assert!(step(&mut c, &f, &r, CH).is_empty());
        f.due = false;
        assert_eq!(step(&mut c, &f, &r, CH), [Change::Noted]);
        f.now = t(700 + 899);
        assert!(step(&mut c, &f, &r, CH).is_empty());
        // Down again in between resets the quiet clock.
        let mut down = facts(1000, PrimaryState::Down, 990);
        down.now = t(1500);
        assert_eq!(step(&mut c, &down, &r, CH), [Change::Noted]);
        f.now = t(1600);
        step(&mut c, &f, &r, CH);
        f.now = t(1600 + 899);
        assert!(step(&mut c, &f, &r, CH).is_empty());
        f.now = t(1600 + 900);
        assert_eq!(step(&mut c, &f, &r, CH), [Change::Ended]);
        assert!(c.current.is_none());
        assert_eq!(c.history.len(), 1);
        assert_eq!(kinds(&c), [AlertKind::Started, AlertKind::Ended]);
    }

    #[test]
    fn held_mail_starts_an_event_only_when_nothing_was_delivered() {
        let (mut c, r) = (Continuity::default(), rules());
        let mut f = facts(1000, PrimaryState::Up, 0);
        (f.held, f.held_old) = (3, 3);
        f.oldest_held = Some(t(100));
        // Greylisting: mail arrives while the primary is up and is delivered.
        f.last_delivered = Some(t(950));
        assert!(step(&mut c, &f, &r, CH).is_empty());
        f.last_delivered = Some(t(400));
        let ch = step(&mut c, &f, &r, CH);
        assert!(
            matches!(&ch[..], [Change::Started(why)] if why.contains("3 held")),
            "{ch:?}"
        );
        // Young held mail alone starts nothing.
        let mut c = Continuity::default();
        f.oldest_held = Some(t(500));
        f.last_delivered = None;
        assert!(step(&mut c, &f, &r, CH).is_empty());
    }

    #[test]
    fn a_primary_that_defers_everything_is_no_recovered_primary() {
        let (mut c, r) = (Continuity::default(), rules());
        // Up, every held message in backoff (not due), nothing delivered: started,
        // and not quiet.
        let mut f = facts(1000, PrimaryState::Up, 0);
        (f.held, f.held_old, f.oldest_held, f.due) = (5, 5, Some(t(100)), false);
        assert!(matches!(step(&mut c, &f, &r, CH)[..], [Change::Started(_)]));
        for s in [1100, 2500, 4500] {
            f.now = t(s);
            assert!(step(&mut c, &f, &r, CH).is_empty(), "at {s}");
        }
        assert!(c.current.as_ref().unwrap().quiet_since.is_none());
        // It takes the backlog again; one full mailbox stays in backoff: quiet, and
        // ended after end_after without any more traffic.
        f.last_delivered = Some(t(4540));
        (f.held, f.held_old) = (1, 1);
        f.now = t(4550);
        assert_eq!(step(&mut c, &f, &r, CH), [Change::Noted]);
        f.now = t(4550 + 900);
        assert_eq!(step(&mut c, &f, &r, CH), [Change::Ended]);
        // That one message starts nothing, with or without a delivery since.
        f.now = t(9000);
        assert!(step(&mut c, &f, &r, CH).is_empty());
        f.last_delivered = Some(t(9100));
        f.now = t(9100 + 700);
        assert!(step(&mut c, &f, &r, CH).is_empty());
        // Several waiting, after a delivery since the end: a new outage.
        f.held_old = 4;
        assert!(matches!(step(&mut c, &f, &r, CH)[..], [Change::Started(_)]));
    }

    #[test]
    fn repeats_caps_once_and_extend_moves_the_cap() {
        let (mut c, mut r) = (Continuity::default(), rules());
        r.max_hours = 2;
        step(&mut c, &facts(600, PrimaryState::Down, 0), &r, CH);
        let down = |s| facts(s, PrimaryState::Down, 0);
        assert!(step(&mut c, &down(600 + 3599), &r, CH).is_empty());
        assert_eq!(
            step(&mut c, &down(600 + 3600), &r, CH),
            [Change::Alerted(AlertKind::Ongoing)]
        );
        assert_eq!(
            step(&mut c, &down(600 + 7200), &r, CH),
            [Change::Alerted(AlertKind::Cap)]
        );
        assert_eq!(step(&mut c, &down(600 + 7300), &r, CH), []);
        assert!(extend(&mut c, t(600 + 7300), 1));
        assert_eq!(step(&mut c, &down(600 + 7300), &r, CH), []);
        assert_eq!(
            step(&mut c, &down(600 + 11500), &r, CH),
            [Change::Alerted(AlertKind::Cap)]
        );
        assert!(c.current.is_some(), "the cap alerts and keeps going");
    }

    #[test]
    fn an_operators_event_ends_only_by_an_operator() {
        let (mut c, r) = (Continuity::default(), rules());
        start(&mut c, t(0), "operator:root", "maintenance", &r, CH);
        let f = facts(10_000, PrimaryState::Up, 0);
        step(&mut c, &f, &r, CH);
        let f = facts(20_000, PrimaryState::Up, 0);
        step(&mut c, &f, &r, CH);
        assert!(c.current.is_some());
        assert!(end(&mut c, t(20_001), "operator:root", CH));
        assert!(!end(&mut c, t(20_002), "operator:root", CH));
    }

    #[test]
    fn an_event_ended_during_an_outage_does_not_start_again_for_the_same_outage() {
        let (mut c, r) = (Continuity::default(), rules());
        step(&mut c, &facts(600, PrimaryState::Down, 0), &r, CH);
        assert!(end(&mut c, t(700), "operator:root", CH));
        assert!(step(&mut c, &facts(800, PrimaryState::Down, 0), &r, CH).is_empty());
        // Up, then down again: a new outage.
        assert!(step(&mut c, &facts(900, PrimaryState::Up, 850), &r, CH).is_empty());
        let ch = step(&mut c, &facts(1600, PrimaryState::Down, 950), &r, CH);
        assert!(matches!(ch[..], [Change::Started(_)]), "{ch:?}");
    }

    #[test]
    fn breaker_and_drain_errors_alert_once_per_halt_and_repeat() {
        let (mut c, r) = (Continuity::default(), rules());
        let mut f = facts(0, PrimaryState::Up, 0);
        f.node = "a".into();
        f.halted = Some((t(0), "5 refusals in a row".into()));
        assert_eq!(
            step(&mut c, &f, &r, CH),
            [Change::Alerted(AlertKind::Breaker)]
        );
        f.now = t(10);
        assert!(step(&mut c, &f, &r, CH).is_empty());
        // Another node halted at another time: its own alert, once; then neither again.
        let mut g = f.clone();
        g.node = "b".into();
        g.halted = Some((t(5), "5 refusals in a row".into()));
        assert_eq!(
            step(&mut c, &g, &r, CH),
            [Change::Alerted(AlertKind::Breaker)]
        );
        assert!(step(&mut c, &f, &r, CH).is_empty());
        assert!(step(&mut c, &g, &r, CH).is_empty());
        f.halted = None;
        f.drain_error = Some("index unavailable".into());
        assert_eq!(
            step(&mut c, &f, &r, CH),
            [Change::Alerted(AlertKind::DrainErrors)]
        );
        f.now = t(100);
        assert!(step(&mut c, &f, &r, CH).is_empty());
        f.now = t(10 + 3600);
        assert_eq!(
            step(&mut c, &f, &r, CH),
            [Change::Alerted(AlertKind::DrainErrors)]
        );
        // Without channels the record still moves, and nothing is owed.
        let mut quiet = Continuity::default();
        step(&mut quiet, &facts(600, PrimaryState::Down, 0), &r, &[]);
        assert!(quiet.current.is_some() && quiet.pending.is_empty());
    }
}
