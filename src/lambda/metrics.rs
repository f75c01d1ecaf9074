//! CloudWatch metrics of the drain, in the embedded metric format (EMF).
//!
//! The drain prints one JSON object per invocation to standard output; CloudWatch Logs
//! turns it into metrics in namespace [`NAMESPACE`] with dimension `Stack`, which the
//! template's alarms watch (mail held for 15 minutes and the oldest held message's age,
//! both from `OldestHeldSeconds`; probe failures). No `PutMetricData` call, so no extra
//! permission and no extra latency.
//!
//! Only what an alarm watches is a metric: each custom metric costs $0.30 a month, more
//! than everything else an idle stack costs together (`scripts/cost`). The run's other
//! figures (held, delivered, deferred, failed, reconciled) are in the same object as plain
//! fields, free, and searchable with CloudWatch Logs Insights; the drain's errors and
//! invocations are Lambda's own metrics (`AWS/Lambda`), free too.
//! Format: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::drain::DrainSummary;

pub const NAMESPACE: &str = "StandbyMx";

/// The EMF object for one invocation's summary, with dimension `Stack = stack`.
pub fn emf(summary: &DrainSummary, stack: &str, at: DateTime<Utc>) -> Value {
    let metrics = [
        (
            "OldestHeldSeconds",
            "Seconds",
            summary.oldest_held_secs.unwrap_or(0),
        ),
        ("ProbeFailures", "Count", u64::from(summary.probe_failed)),
    ];
    let fields = [
        ("HeldMessages", summary.held),
        ("Delivered", summary.delivered),
        ("Deferred", summary.deferred),
        ("Failed", summary.failed),
        ("Reconciled", summary.reconciled),
        ("ReconcileErrors", summary.reconcile_errors),
        // The figures of /metrics, for the CloudWatch dashboard's log widgets (free).
        ("PrimaryUp", u64::from(summary.primary == "up")),
        ("ContinuityActive", u64::from(summary.continuity.is_some())),
        ("AlertsSent", summary.alerts_sent),
        ("NoticesSent", summary.notices_sent),
    ];
    let mut out = json!({
        "_aws": {
            "Timestamp": at.timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Stack"]],
                "Metrics": metrics
                    .iter()
                    .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                    .collect::<Vec<_>>(),
            }],
        },
        "Stack": stack,
    });
    for (name, _, value) in metrics {
        out[name] = json!(value);
    }
    for (name, value) in fields {
        out[name] = json!(value);
    }
    out
}

/// The names of the metrics [`emf`] declares (what an alarm may watch).
pub fn declared() -> Vec<String> {
    emf(&DrainSummary::default(), "", DateTime::<Utc>::UNIX_EPOCH)["_aws"]["CloudWatchMetrics"]
        [0]["Metrics"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["Name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_declared_metric() {
        let s = DrainSummary {
            held: 7,
            oldest_held_secs: Some(900),
            probe_failed: true,
            delivered: 2,
            ..Default::default()
        };
        let v = emf(
            &s,
            "standby-prod",
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        );
        assert_eq!(v["Stack"], "standby-prod");
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000_i64);
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
        let metrics = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        // Only what an alarm watches is a metric (each costs $0.30 a month).
        assert_eq!(metrics.len(), 2);
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(v[name].is_u64(), "{name} has no value");
        }
        assert_eq!(declared(), ["OldestHeldSeconds", "ProbeFailures"]);
        assert_eq!(v["HeldMessages"], 7);
        assert_eq!(v["OldestHeldSeconds"], 900);
        assert_eq!(v["ProbeFailures"], 1);
        assert_eq!(v["Delivered"], 2);
    }
}
