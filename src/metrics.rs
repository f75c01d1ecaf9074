//! Prometheus metrics: `/metrics` in the text exposition format, on `[metrics] listen`
//! (a scraper's own network), and on the emergency inbox's listener only with the bearer
//! token `[metrics] token_env` names (the inbox faces the internet: counts and the
//! primary's state are not for everyone, and each scrape reads the store).
//!
//! Two kinds of figure, so each is exact where it can be:
//! - **counters and histograms** of what this process did, recorded where it happens
//!   through the `metrics` facade: `standby_received_total` and `standby_receive_seconds`
//!   (a message stored, from its first byte to its durable commit),
//!   `standby_deliveries_total{result}` and `standby_delivery_seconds` (one attempt at
//!   the primary), `standby_smtp_refusals_total{code}` (every 4xx/5xx reply the listener
//!   gave);
//! - **gauges read from the store at each scrape**, the same figures `standby status
//!   --json` shows, whichever node or command changed them: `standby_messages{status}`,
//!   `standby_oldest_held_seconds`, `standby_primary_up`, `standby_continuity_active`.
//!
//! The recorder is `metrics-exporter-prometheus`'s, installed once per process; the
//! histograms get fixed buckets so they are Prometheus histograms, not summaries. This
//! module only records (any layer may: it imports nothing of ours); the exposition with
//! the store's gauges is [`crate::status::exposition`].

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const RECEIVED: &str = "standby_received_total";
pub const RECEIVE_SECONDS: &str = "standby_receive_seconds";
pub const DELIVERIES: &str = "standby_deliveries_total";
pub const DELIVERY_SECONDS: &str = "standby_delivery_seconds";
pub const REFUSALS: &str = "standby_smtp_refusals_total";
pub const MESSAGES: &str = "standby_messages";
pub const OLDEST_HELD: &str = "standby_oldest_held_seconds";
pub const PRIMARY_UP: &str = "standby_primary_up";
pub const CONTINUITY_ACTIVE: &str = "standby_continuity_active";

/// Every name exported (dashboards may use these and no others).
pub const NAMES: &[&str] = &[
    RECEIVED,
    RECEIVE_SECONDS,
    DELIVERIES,
    DELIVERY_SECONDS,
    REFUSALS,
    MESSAGES,
    OLDEST_HELD,
    PRIMARY_UP,
    CONTINUITY_ACTIVE,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed at the first call (`None` when another recorder
/// was installed first: then nothing is exported).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(RECEIVE_SECONDS.into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(DELIVERY_SECONDS.into()), &seconds)
                });
            let installed = builder
                .map_err(|e| e.to_string())
                .and_then(|b| b.install_recorder().map_err(|e| e.to_string()));
            match installed {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics is empty");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(RECEIVED, "Messages stored (acknowledged with 250).");
    metrics::describe_histogram!(
        RECEIVE_SECONDS,
        metrics::Unit::Seconds,
        "From a message's first byte to its durable commit."
    );
    metrics::describe_counter!(DELIVERIES, "Delivery attempts at the primary, by result.");
    metrics::describe_histogram!(
        DELIVERY_SECONDS,
        metrics::Unit::Seconds,
        "One delivery attempt at the primary."
    );
    metrics::describe_counter!(
        REFUSALS,
        "4xx and 5xx replies the SMTP listener gave, by code."
    );
    metrics::describe_gauge!(MESSAGES, "Messages in the store, by status.");
    metrics::describe_gauge!(OLDEST_HELD, "Age of the oldest held message (0: none).");
    metrics::describe_gauge!(PRIMARY_UP, "1 when the primary is up as this node sees it.");
    metrics::describe_gauge!(
        CONTINUITY_ACTIVE,
        "1 while a continuity event is under way."
    );
}

/// A message stored, `secs` after its first byte.
pub fn received(secs: f64) {
    if handle().is_some() {
        metrics::counter!(RECEIVED).increment(1);
        metrics::histogram!(RECEIVE_SECONDS).record(secs);
    }
}

/// One delivery attempt: `delivered`, `deferred` or `failed`.
pub fn delivery(result: &'static str, secs: f64) {
    if handle().is_some() {
        metrics::counter!(DELIVERIES, "result" => result).increment(1);
        metrics::histogram!(DELIVERY_SECONDS).record(secs);
    }
}

/// A 4xx or 5xx reply of the listener.
pub fn refused(code: u16) {
    if handle().is_some() {
        metrics::counter!(REFUSALS, "code" => code.to_string()).increment(1);
    }
}
