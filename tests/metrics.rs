//! `/metrics`: Prometheus's text format, checked by Debian's `promtool check metrics`,
//! its gauges equal to what `standby status --json` says and its counters to what was
//! done (messages received, refusals given); served on the emergency inbox's listener
//! and on `[metrics] listen`. The Grafana dashboard in infra/grafana/ draws only names
//! /metrics exports, and each of its expressions parses (`promtool check rules`).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Standby, free_port, require, swaks, wait_for};

const TOKEN: &str = "a scraper's token, 16 bytes or more";

fn get(url: &str) -> String {
    get_with(url, "X-None: 1")
}

fn get_with(url: &str, header: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", "-H", header, url])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "GET {url}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn promtool(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The value of the sample `name{labels}` (labels as written, `""` for none).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// The metric names (families) the exposition declares.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn metrics_are_prometheus_text_and_agree_with_status() {
    require("promtool", "prometheus");
    let (metrics, web) = (free_port(), free_port());
    // The emergency inbox (its users file) asks for a token; the primary is down (port 1).
    let mut sb = Standby::configure(
        1,
        &format!(
            "[users]\nfile = \"{{dir}}/users.passwd\"\n[web]\nlisten = \"127.0.0.1:{web}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\ntoken_env = \"METRICS_TOKEN\"\n"
        ),
        &[("METRICS_TOKEN", TOKEN)],
    );
    sb.fill_dir();
    common::web::add_user(&sb, "alice@example.test", "alice-pw");
    sb.spawn();
    wait_for("the inbox", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", web)).is_ok()
    });
    // Without the token, nothing.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{web}/metrics"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    for i in 0..3 {
        let (ok, t) = swaks(
            sb.port,
            &[
                "--to",
                "bob@example.test",
                "--header",
                &format!("Subject: m{i}"),
            ],
        );
        assert!(ok, "{t}");
    }
    // Refused: a domain we do not hold mail for (550 5.7.1, relaying denied).
    let (ok, _) = swaks(sb.port, &["--to", "someone@elsewhere.example"]);
    assert!(!ok);
    // The primary (port 1) is down by now: two failed probes at one a second.
    wait_for("the primary seen down", Duration::from_secs(20), || {
        sb.json(&["status", "--json"])["primary"]["state"] == "down"
    });
    let text = get_with(
        &format!("http://127.0.0.1:{web}/metrics"),
        &format!("Authorization: Bearer {TOKEN}"),
    );
    let check = promtool(&["check", "metrics"], text.as_bytes());
    assert!(
        check.status.success(),
        "promtool check metrics: {}\n{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let status = sb.json(&["status", "--json"]);
    for s in [
        "held",
        "paused",
        "delivered",
        "failed",
        "journal",
        "outbound",
    ] {
        assert_eq!(
            value(&text, &format!("standby_messages{{status=\"{s}\"}}")),
            status["counts"][s].as_f64().unwrap(),
            "{s}"
        );
    }
    assert_eq!(value(&text, "standby_messages{status=\"held\"}"), 3.0);
    assert_eq!(value(&text, "standby_primary_up"), 0.0);
    assert_eq!(
        value(&text, "standby_continuity_active"),
        if status["continuity"].is_null() {
            0.0
        } else {
            1.0
        }
    );
    let oldest =
        chrono::DateTime::parse_from_rfc3339(status["oldest_held"].as_str().unwrap()).unwrap();
    let age = (chrono::Utc::now() - oldest.to_utc()).num_seconds() as f64;
    let got = value(&text, "standby_oldest_held_seconds");
    assert!(
        (got - age).abs() <= 3.0,
        "oldest held {got} s, status says {age} s"
    );
    assert_eq!(value(&text, "standby_received_total"), 3.0);
    assert_eq!(value(&text, "standby_receive_seconds_count"), 3.0);
    assert!(
        value(&text, "standby_smtp_refusals_total{code=\"550\"}") >= 1.0,
        "{text}"
    );
    // Every name the issue lists, the histograms as histograms.
    let names = families(&text);
    for n in [
        "standby_messages",
        "standby_oldest_held_seconds",
        "standby_primary_up",
        "standby_received_total",
        "standby_smtp_refusals_total",
        "standby_continuity_active",
        "standby_receive_seconds",
    ] {
        assert!(names.contains(n), "{n} missing: {names:?}");
    }
    assert!(
        text.contains("# TYPE standby_receive_seconds histogram"),
        "{text}"
    );
    // The same on [metrics] listen.
    let other = get(&format!("http://127.0.0.1:{metrics}/metrics"));
    assert_eq!(value(&other, "standby_received_total"), 3.0);
    assert_eq!(value(&other, "standby_messages{status=\"held\"}"), 3.0);
}

/// Deliveries are counted by result and timed, once the primary takes the mail.
#[test]
fn deliveries_are_counted_by_result() {
    require("promtool", "prometheus");
    let primary = common::FakePrimary::start(vec![common::FakeReply::Replies {
        mail: "250 2.1.0 ok\r\n",
        rcpt: "250 2.1.5 ok\r\n",
        data_end: "250 2.0.0 queued\r\n",
    }]);
    let metrics = free_port();
    let sb = Standby::start(
        primary.port,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    let (ok, t) = swaks(sb.port, &["--to", "bob@example.test"]);
    assert!(ok, "{t}");
    // The counter moves just after the write-back: wait for it, not for the store.
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    wait_for("the delivery counted", Duration::from_secs(30), || {
        get(&url).contains("standby_deliveries_total{result=\"delivered\"} 1")
    });
    // The gauges are at most VIEW_TTL old.
    std::thread::sleep(standby::status::VIEW_TTL);
    let text = get(&url);
    assert!(
        promtool(&["check", "metrics"], text.as_bytes())
            .status
            .success()
    );
    assert_eq!(
        value(&text, "standby_deliveries_total{result=\"delivered\"}"),
        1.0
    );
    assert_eq!(value(&text, "standby_delivery_seconds_count"), 1.0);
    assert_eq!(value(&text, "standby_primary_up"), 1.0);
    assert_eq!(value(&text, "standby_messages{status=\"delivered\"}"), 1.0);
}

/// Every expression of the Grafana dashboard parses (as recording rules, which promtool
/// checks) and uses only names /metrics exports.
#[test]
fn the_grafana_dashboard_draws_only_exported_metrics() {
    require("promtool", "prometheus");
    let path = common::repo().join("infra/grafana/standby-mx.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 9, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: grafana:expr_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grafana-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The names a scrape can have: the families, and a histogram's series.
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for n in standby::metrics::NAMES {
        exported.insert(n.to_string());
        for suffix in ["_bucket", "_sum", "_count"] {
            if n.ends_with("_seconds") && *n != standby::metrics::OLDEST_HELD {
                exported.insert(format!("{n}{suffix}"));
            }
        }
    }
    for e in &exprs {
        let used: Vec<&str> = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("standby_"))
            .collect();
        assert!(!used.is_empty(), "{e} draws no standby metric");
        for name in used {
            assert!(exported.contains(name), "{e}: {name} is not exported");
        }
    }
}
