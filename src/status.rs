//! What `standby status --json` shows, gathered once for every reader: the CLI, the
//! alerts (whose webhook body is this plus `"event"`), the console and `/metrics`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::StoreError;
use crate::health;
use crate::model::continuity::Event;
use crate::model::{Counts, Halt, HealthRecord, LastDrain, PrimaryState, ProbeResult, Status};
use crate::ports::Storage;

/// One node's view of the primary.
#[derive(Debug, Clone, Serialize)]
pub struct PrimaryView {
    /// The node whose probes these are (`node_id`).
    pub node: String,
    pub address: String,
    pub state: PrimaryState,
    pub since: Option<DateTime<Utc>>,
    pub last_probe: Option<ProbeResult>,
    pub last_drain: Option<LastDrain>,
    pub probes_ok: u64,
    pub probes_failed: u64,
    /// Draining halted by the circuit breaker until `standby drain --force`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<Halt>,
}

impl From<HealthRecord> for PrimaryView {
    fn from(h: HealthRecord) -> Self {
        PrimaryView {
            node: h.node,
            address: h.address,
            state: h.state,
            since: h.since,
            last_probe: h.last_probe,
            last_drain: h.last_drain,
            probes_ok: h.probes_ok,
            probes_failed: h.probes_failed,
            halted: h.halted,
        }
    }
}

/// The standby at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Where the messages are: the spool directory or the bucket and table.
    pub store: String,
    /// This node's view, or the freshest other node's (see `health::view`).
    pub primary: PrimaryView,
    /// Every node that probes the primary and shares this index, by node.
    pub nodes: Vec<PrimaryView>,
    pub counts: Counts,
    pub oldest_held: Option<DateTime<Utc>>,
    /// The continuity event under way, if any.
    pub continuity: Option<Event>,
}

/// Gather the view: `node`'s record of the primary at `address`, `store` described.
///
/// # Errors
/// Storage errors.
pub async fn gather(
    storage: &Storage,
    node: &str,
    address: &str,
    store: String,
) -> Result<StatusView, StoreError> {
    let index = storage.index.as_ref();
    let health = health::view(index, node, address).await?;
    Ok(StatusView {
        store,
        primary: health.into(),
        nodes: index
            .list_health()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
        counts: index.counts().await?,
        oldest_held: index.oldest(Status::Held).await?,
        continuity: storage.events.load().await?.current,
    })
}

/// How long a gathered view serves again ([`gather_cached`]): counting every status is a
/// scan of the index (on DynamoDB, read units), and scrapes and console pages come often.
pub const VIEW_TTL: std::time::Duration = std::time::Duration::from_secs(10);

type Cached = Option<(std::time::Instant, (String, String, String), StatusView)>;
static LAST: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);

/// [`gather`], served from the last view of the same node, primary and store when it is
/// at most [`VIEW_TTL`] old.
///
/// # Errors
/// Storage errors.
pub async fn gather_cached(
    storage: &Storage,
    node: &str,
    address: &str,
    store: String,
) -> Result<StatusView, StoreError> {
    let key = (node.to_string(), address.to_string(), store.clone());
    let lock = || {
        LAST.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some((_, _, v)) = lock()
        .as_ref()
        .filter(|(at, k, _)| at.elapsed() < VIEW_TTL && *k == key)
    {
        return Ok(v.clone());
    }
    let v = gather(storage, node, address, store).await?;
    *lock() = Some((std::time::Instant::now(), key, v.clone()));
    Ok(v)
}

/// The exposition text: the gauges set from `view` (the figures of `standby status
/// --json`), then everything rendered.
pub fn render_metrics(view: &StatusView) -> String {
    use crate::metrics::{CONTINUITY_ACTIVE, MESSAGES, OLDEST_HELD, PRIMARY_UP};
    let Some(h) = crate::metrics::handle() else {
        return String::new();
    };
    let c = &view.counts;
    for (status, n) in [
        ("held", c.held),
        ("paused", c.paused),
        ("delivered", c.delivered),
        ("failed", c.failed),
        ("journal", c.journal),
        ("outbound", c.outbound),
    ] {
        metrics::gauge!(MESSAGES, "status" => status).set(n as f64);
    }
    let oldest = view.oldest_held.map_or(0.0, |t| {
        (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
    });
    metrics::gauge!(OLDEST_HELD).set(oldest);
    let up = f64::from(u8::from(view.primary.state == PrimaryState::Up));
    metrics::gauge!(PRIMARY_UP).set(up);
    metrics::gauge!(CONTINUITY_ACTIVE).set(f64::from(u8::from(view.continuity.is_some())));
    h.render()
}

/// The exposition for a store, or the error to answer 503 with: the gauges from a
/// status view at most [`VIEW_TTL`] old, the counters as they are.
///
/// # Errors
/// Storage errors gathering the view.
pub async fn exposition(
    storage: &Storage,
    node: &str,
    address: &str,
    store: String,
) -> Result<String, StoreError> {
    let view = gather_cached(storage, node, address, store).await?;
    Ok(render_metrics(&view))
}
