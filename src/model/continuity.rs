//! Continuity events: an outage as a thing with a start, people told and an end.
//!
//! One record, [`Continuity`], holds the event under way (if any), the recent history
//! and the alerts still to be sent. Every node that watches the primary (each `standby
//! serve`, the drain function) evaluates it and saves it conditional on the version it
//! read, so two nodes that see the outage at once start one event, not two; the loser
//! reads again and finds the event started.
//!
//! Alerts are an outbox: a transition and the alerts it owes are saved in one write, and
//! each channel's delivery is struck off afterwards. A crash between the two sends the
//! alert again (at least once), never not at all.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How many ended events the record keeps.
pub const HISTORY: usize = 50;

/// The stored continuity state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuity {
    /// The event under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Event>,
    /// Ended events, newest first (at most [`HISTORY`]).
    #[serde(default)]
    pub history: Vec<Event>,
    /// Alerts owed, oldest first.
    #[serde(default)]
    pub pending: Vec<PendingAlert>,
    /// The circuit-breaker halts alerted, by node (each node's halt has its own time),
    /// so one halt alerts once however many nodes see it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub breakers_alerted: BTreeMap<String, DateTime<Utc>>,
    /// When drain errors were last alerted (at most one such alert per repeat interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_errors_alerted: Option<DateTime<Utc>>,
    /// When the alternates file was last checked for users to tell (event under way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notices_checked: Option<DateTime<Utc>>,
    /// Bumped by every save; a save succeeds only over the version it read.
    #[serde(default)]
    pub version: u64,
}

/// One continuity event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// A ULID: sortable, and part of every notice's idempotency key.
    pub id: String,
    pub started_at: DateTime<Utc>,
    /// `auto` or `operator:<user>`.
    pub started_by: String,
    /// Why: "primary down since …", "held mail 14 min old, nothing delivered", the
    /// operator's reason.
    pub reason: String,
    /// When the hard cap alerts (start + `max_hours`, moved by `extend`).
    pub cap_at: DateTime<Utc>,
    /// The cap's alert went out (cleared by `extend`).
    #[serde(default)]
    pub cap_alerted: bool,
    /// Since when the primary has been up with nothing due (auto-end counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_since: Option<DateTime<Utc>>,
    /// When the last alert for this event was raised (the repeat counts from here).
    pub alerted_at: DateTime<Utc>,
    /// How many users were told (each user's notice is a mark in the store, not a list
    /// here: the record stays small however many users there are).
    #[serde(default)]
    pub told: u64,
    /// End notices all sent (ended events).
    #[serde(default)]
    pub end_notices_done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// Operator extensions, in hours, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<u32>,
}

impl Event {
    /// Whether it was started by an operator (it then ends only by an operator).
    pub fn manual(&self) -> bool {
        self.started_by != AUTO
    }
}

/// `started_by` of an event the standby started by itself.
pub const AUTO: &str = "auto";

/// What an alert is about (the webhook body's `"event"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Started,
    Ongoing,
    Ended,
    Cap,
    DrainErrors,
    Breaker,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Started => "started",
            AlertKind::Ongoing => "ongoing",
            AlertKind::Ended => "ended",
            AlertKind::Cap => "cap",
            AlertKind::DrainErrors => "drain_errors",
            AlertKind::Breaker => "breaker",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A way an administrator alert goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Webhook,
    Email,
    Sns,
}

/// An alert owed on some channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAlert {
    pub kind: AlertKind,
    /// The event it is about (none for drain errors and the breaker outside an event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// When it was raised.
    pub at: DateTime<Utc>,
    /// A line on what happened (the breaker's reason, the drain error).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The channels it has not yet reached.
    pub channels: Vec<Channel>,
    /// Failed attempts so far (all channels).
    #[serde(default)]
    pub attempts: u32,
    /// A node is sending it until then (another node leaves it alone); a node that dies
    /// sending leaves it to the next after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
}
