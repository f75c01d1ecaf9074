//! CloudWatch metrics of the drain, in the embedded metric format (EMF).
//!
//! The drain prints one JSON object per invocation to standard output; CloudWatch Logs
//! turns it into metrics in namespace [`NAMESPACE`] with dimension `Stack`, which the
//! template's alarms watch (mail held for 15 minutes, the oldest held message's age, probe
//! failures). No `PutMetricData` call, so no extra permission and no extra latency.
//! Format: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::drain::DrainSummary;

pub const NAMESPACE: &str = "StandbyMx";

/// The EMF object for one invocation's summary, with dimension `Stack = stack`.
pub fn emf(summary: &DrainSummary, stack: &str, at: DateTime<Utc>) -> Value {
    let metrics = [
        ("HeldMessages", "Count", summary.held),
        (
            "OldestHeldSeconds",
            "Seconds",
            summary.oldest_held_secs.unwrap_or(0),
        ),
        ("ProbeFailures", "Count", u64::from(summary.probe_failed)),
        ("Delivered", "Count", summary.delivered),
        ("Deferred", "Count", summary.deferred),
        ("Failed", "Count", summary.failed),
        ("Reconciled", "Count", summary.reconciled),
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
    out
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
        let declared = v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        assert_eq!(declared.len(), 7);
        for m in declared {
            let name = m["Name"].as_str().unwrap();
            assert!(v[name].is_u64(), "{name} has no value");
        }
        assert_eq!(v["HeldMessages"], 7);
        assert_eq!(v["OldestHeldSeconds"], 900);
        assert_eq!(v["ProbeFailures"], 1);
        assert_eq!(v["Delivered"], 2);
    }
}
