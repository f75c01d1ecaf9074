//! AWS requests per operation, counted where AWS bills them: the real SDK against moto,
//! which logs every request it answers (`scripts/moto-server --log`). These are the
//! inputs of the cost model (`scripts/cost`), and bounds on them:
//!
//! - an idle drain run (the primary up, nothing due) makes the same requests with 200
//!   and with 2,000 delivered messages stored: nothing in it grows with the archive (no
//!   listing of the bucket between the reconciler's daily sweeps, no count of delivered
//!   records);
//! - an idle run during an outage (the primary down) with 200 and 2,000 held messages:
//!   only the count of the held partition grows (a page per 1 MB of held records);
//! - one message received (the ingest function) and drained (the drain function).
//!
//! With `STANDBYMX_REQUEST_COUNTS=FILE` the figures are also written to FILE as JSON
//! (`scripts/bench` does, for BENCHMARKS.md and the cost model), and with
//! `STANDBYMX_REQUEST_HELD_MAX=10000` the outage run is measured with that many held too.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::Postfix;
use common::aws::{Moto, ses_put};
use common::iam::Principal;
use standby::config::Config;
use standby::lambda::drain::{DrainFunction, DrainRequest};
use standby::model::{MessageId, Record, Status, Summary};
use standby::ports::Storage;
use standby::smtp::SmtpRelay;

/// Requests per "service Operation" since a mark.
type Counts = BTreeMap<String, u64>;

/// moto's request log.
struct Log(PathBuf);

impl Log {
    fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Requests logged so far.
    fn mark(&self) -> usize {
        self.lines().len()
    }

    /// Requests since `mark`, per service and operation.
    fn since(&self, mark: usize) -> Counts {
        let mut out = Counts::new();
        for l in self.lines().into_iter().skip(mark) {
            let name = format!(
                "{} {}",
                l["service"].as_str().unwrap(),
                l["op"].as_str().unwrap()
            );
            *out.entry(name).or_default() += 1;
        }
        out
    }
}

fn total(c: &Counts) -> u64 {
    c.values().sum()
}

fn function(storage: &Storage, name: &str, primary_port: u16) -> DrainFunction {
    let env = common::aws::drain_env(name, primary_port, &[]);
    let config = Config::from_lambda_env(env).unwrap();
    let relay = SmtpRelay::from_config(&config).unwrap();
    DrainFunction::new(config, storage.clone(), relay)
}

async fn run(f: &DrainFunction) -> standby::lambda::drain::DrainSummary {
    f.handle(
        DrainRequest::default(),
        Some(Instant::now() + Duration::from_secs(120)),
    )
    .await
    .expect("drain run")
}

/// `n` messages stored as SES stores them, each with its record in `status`, received
/// a day ago (held ones not due for an hour).
async fn seed(
    clients: &standby::backend::aws::AwsClients,
    settings: &standby::backend::aws::AwsSettings,
    storage: &Storage,
    n: usize,
    status: Status,
) {
    let at = Utc::now() - chrono::Duration::days(1);
    for i in 0..n {
        let id = MessageId::new(at);
        let raw = format!(
            "From: a@example.org\r\nTo: b@example.test\r\nSubject: seed {i}\r\n\r\nbody {i}\r\n"
        );
        ses_put(clients, settings, &id.to_string(), raw.as_bytes()).await;
        let summary = Summary {
            subject: Some(format!("seed {i}")),
            ..Default::default()
        };
        let bytes = (raw.len() as u64, "00".to_string());
        let rcpts = vec!["b@example.test".to_string()];
        let mut rec = Record::held(id, "a@example.org".into(), rcpts, at, bytes, summary);
        rec.next_attempt_at = Utc::now() + chrono::Duration::hours(1);
        if status == Status::Delivered {
            rec.status = Status::Delivered;
            rec.rcpts[0].status = standby::model::RcptStatus::Delivered;
        }
        storage.index.insert(&rec).await.unwrap();
    }
}

fn show(what: &str, c: &Counts) -> String {
    let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{what}: {} requests ({})", total(c), parts.join(", "))
}

fn write_figures(figures: &serde_json::Value) {
    if let Some(path) = std::env::var_os("STANDBYMX_REQUEST_COUNTS") {
        let path = Path::new(&path);
        let mut all: serde_json::Value = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        for (k, v) in figures.as_object().unwrap() {
            all[k] = v.clone();
        }
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_makes_the_same_requests_at_200_and_2000_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log(dir.path().join("requests.jsonl"));
    let moto = Moto::start_logged(&log.0);
    let (clients, settings, storage) = moto.storage("idle-delivered").await;
    let pf = Postfix::primary();
    pf.start();
    let f = function(
        &moto.storage_as(Principal::Drain, &settings).await,
        "idle-delivered",
        pf.port,
    );
    let mut idle = Vec::new();
    for (n, more) in [(200, 200), (2000, 1800)] {
        seed(&clients, &settings, &storage, more, Status::Delivered).await;
        // The first run sweeps the bucket (it is due at once on a new table); the next
        // is what every minute of a quiet day costs.
        if n == 200 {
            let mark = log.mark();
            let sweep = run(&f).await;
            assert_eq!(sweep.reconciled, 0, "{sweep:?}");
            let c = log.since(mark);
            eprintln!("{}", show("first run, sweeping 200 stored", &c));
            assert_eq!(c.get("s3 ListObjectsV2"), Some(&1), "{c:?}");
        }
        let mark = log.mark();
        let s = run(&f).await;
        assert_eq!(s.primary, "up", "{s:?}");
        assert_eq!((s.delivered, s.held), (0, 0), "{s:?}");
        let c = log.since(mark);
        eprintln!("{}", show(&format!("idle run, {n} delivered stored"), &c));
        assert!(
            !c.keys()
                .any(|k| k.starts_with("s3 List") || k.ends_with(" Scan")),
            "an idle run lists or scans: {c:?}"
        );
        idle.push((n, c));
    }
    assert_eq!(
        idle[0].1, idle[1].1,
        "an idle run's requests grow with the delivered messages stored"
    );
    // Exactly: the health item read (own and legacy) and written, the expiry check, one
    // claim, the held count and the oldest held message; the run's lease check re-reads
    // the health item. A request more is a change to look at, and to price.
    let want: Counts = [
        ("dynamodb GetItem".to_string(), 3),
        ("dynamodb PutItem".to_string(), 1),
        ("dynamodb Query".to_string(), 4),
    ]
    .into();
    assert_eq!(idle[0].1, want, "{}", show("idle run", &idle[0].1));
    write_figures(&serde_json::json!({
        "idle_run_200_delivered": idle[0].1,
        "idle_run_2000_delivered": idle[1].1,
        "custom_metrics": standby::lambda::metrics::declared(),
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_in_an_outage_grows_only_with_the_held_partition() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log(dir.path().join("requests.jsonl"));
    let moto = Moto::start_logged(&log.0);
    let (clients, settings, storage) = moto.storage("idle-held").await;
    // Nothing listens there: the primary is down.
    let f = function(
        &moto.storage_as(Principal::Drain, &settings).await,
        "idle-held",
        common::free_port(),
    );
    let mut idle = Vec::new();
    // And 10,000 (the drain's HELD_COUNT_LIMIT) when STANDBYMX_REQUEST_HELD_MAX says so:
    // scripts/bench does; moto, one request at a time, takes minutes to seed them.
    let mut sizes = vec![(200, 200), (2000, 1800)];
    if let Some(max) = std::env::var("STANDBYMX_REQUEST_HELD_MAX")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|m| *m > 2000)
    {
        sizes.push((max, max - 2000));
    }
    for (n, more) in sizes {
        seed(&clients, &settings, &storage, more, Status::Held).await;
        if n == 200 {
            run(&f).await;
        }
        let mark = log.mark();
        let s = run(&f).await;
        assert_eq!(s.primary, "down", "{s:?}");
        assert_eq!(s.held, n as u64, "{s:?}");
        let c = log.since(mark);
        eprintln!("{}", show(&format!("idle run, primary down, {n} held"), &c));
        idle.push((n, c));
    }
    let small = &idle[0].1;
    for (n, large) in &idle[1..] {
        for (op, count) in large {
            let before = small.get(op).copied().unwrap_or(0);
            if op == "dynamodb Query" {
                // Counting the held partition reads it, a page per 1 MB: small records
                // are a page or so more per thousand.
                assert!(
                    *count <= before + 2 + *n as u64 / 1000,
                    "{op}: {before} -> {count}"
                );
            } else {
                assert_eq!(*count, before, "{op} grows with the held messages");
            }
        }
    }
    let mut figures = serde_json::json!({});
    for (n, c) in &idle {
        figures[format!("idle_run_{n}_held_primary_down")] = serde_json::json!(c);
    }
    write_figures(&figures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_received_and_drained() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log(dir.path().join("requests.jsonl"));
    let moto = Moto::start_logged(&log.0);
    let (clients, settings, _) = moto.storage("one-message").await;
    let pf = Postfix::primary();
    pf.start();
    let f = function(
        &moto.storage_as(Principal::Drain, &settings).await,
        "one-message",
        pf.port,
    );
    run(&f).await;
    // The test's own PutObject stands for SES's S3 action: not the standby's request.
    let mark = log.mark();
    let ev = common::aws::ses_event("normal.json");
    let id = common::aws::ses_message_id(&ev);
    let raw = common::fixture("ses/message.eml", "tok-requests");
    ses_put(&clients, &settings, &id, raw.as_bytes()).await;
    let after_put = log.mark();
    assert_eq!(after_put, mark + 1);
    standby::lambda::ingest::Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(ev)
        .await
        .expect("ingest");
    let ingest = log.since(after_put);
    let mark = log.mark();
    let s = run(&f).await;
    assert_eq!(s.delivered, 1, "{s:?}");
    let drain = log.since(mark);
    eprintln!("{}", show("ingest of one message", &ingest));
    eprintln!("{}", show("drain run delivering it", &drain));
    common::wait_for("Postfix to store it", Duration::from_secs(30), || {
        pf.delivered().len() == 1
    });
    assert!(total(&ingest) <= 8, "{}", show("ingest", &ingest));
    assert!(total(&drain) <= 18, "{}", show("drain", &drain));

    // A run delivering a full claim's worth: the run's own requests (health, claims,
    // counts) spread over its messages, as in a real backlog.
    const BATCH: usize = 32;
    for i in 0..BATCH {
        let mut ev = common::aws::ses_event("normal.json");
        let id = format!("{}{i:03}", &common::aws::ses_message_id(&ev)[..20]);
        ev["Records"][0]["ses"]["mail"]["messageId"] = serde_json::json!(id);
        let raw = common::fixture("ses/message.eml", &format!("tok-batch{i}"));
        ses_put(&clients, &settings, &id, raw.as_bytes()).await;
        standby::lambda::ingest::Ingest::new(
            moto.storage_as(Principal::Ingest, &settings).await,
            "",
        )
        .handle(ev)
        .await
        .expect("ingest");
    }
    let mark = log.mark();
    let s = run(&f).await;
    assert_eq!(s.delivered, BATCH as u64, "{s:?}");
    let batch = log.since(mark);
    eprintln!("{}", show(&format!("drain run delivering {BATCH}"), &batch));
    assert!(
        total(&batch) <= 12 * BATCH as u64,
        "{}",
        show("drain of a batch", &batch)
    );
    // One conditional write per message before its write-back: the claim. A lease
    // claimed moments ago is not renewed again before the send (src/drain.rs
    // `still_ours`); the keeper's renewals come a third of a lease later.
    let updates = batch.get("dynamodb UpdateItem").copied().unwrap_or(0);
    assert!(
        updates <= BATCH as u64 + 2,
        "{updates} UpdateItem for {BATCH} messages: {}",
        show("drain of a batch", &batch)
    );
    write_figures(&serde_json::json!({
        "ingest_one_message": ingest,
        "drain_run_one_message": drain,
        "drain_run_32_messages": batch,
    }));
}

/// The primary is up, and 300 held messages are deferred (not due for an hour): a run
/// claims nothing and tries no write on any of them. The claim's query asks DynamoDB
/// for due, unleased messages only (a filter on the `by_status` page), so none comes
/// back as a candidate for a conditional claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_are_not_candidates_for_a_claim() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log(dir.path().join("requests.jsonl"));
    let moto = Moto::start_logged(&log.0);
    let (clients, settings, storage) = moto.storage("deferred").await;
    let pf = Postfix::primary();
    pf.start();
    seed(&clients, &settings, &storage, 300, Status::Held).await;
    let f = function(
        &moto.storage_as(Principal::Drain, &settings).await,
        "deferred",
        pf.port,
    );
    run(&f).await; // the probe sees the primary up
    let mark = log.mark();
    let s = run(&f).await;
    assert_eq!(
        (s.primary.as_str(), s.delivered, s.held),
        ("up", 0, 300),
        "{s:?}"
    );
    let c = log.since(mark);
    eprintln!("{}", show("a run with 300 deferred held messages", &c));
    assert_eq!(c.get("dynamodb UpdateItem"), None, "{}", show("run", &c));
}
