//! The two Lambda binaries run for real under `cargo lambda watch` (its emulation of the
//! Lambda runtime and invoke APIs), wired only by environment variables, against moto and
//! a real Postfix primary: an SES event invoked with `cargo lambda invoke` becomes a
//! DynamoDB item, and `standby drain --remote` invokes the drain binary through the
//! Lambda Invoke API and prints its summary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::aws::{
    Moto, child_env_as, cli_config, ses_event, ses_message_id, ses_put, standby_cli,
};
use common::iam::Principal;
use common::lambda::{Procs, function, path_with_venv, watch};
use common::{Postfix, free_port, repo, wait_for};

const INGEST: &str = env!("CARGO_BIN_EXE_standby-ingest");
const DRAIN: &str = env!("CARGO_BIN_EXE_standby-drain");

fn invoke(port: u16, name: &str, data_file: &std::path::Path) -> std::process::Output {
    Command::new("cargo")
        .current_dir(repo())
        .env("PATH", path_with_venv())
        .args([
            "lambda",
            "invoke",
            name,
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .arg("--data-file")
        .arg(data_file)
        .args(["--output-format", "json"])
        .output()
        .expect("cargo lambda invoke")
}

#[tokio::test(flavor = "multi_thread")]
async fn binaries_run_under_the_lambda_emulator() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("binaries").await;
    let pf = Postfix::primary();
    pf.start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut procs = Procs(Vec::new());
    procs.0.push(watch(port, &dir.path().join("watch.log")));

    // Each function signs as itself: its requests are checked against its policy.
    let env_as = |principal| {
        let mut env = child_env_as(&moto, principal);
        env.extend(
            [
                ("STANDBY_BUCKET", "binaries".to_string()),
                ("STANDBY_TABLE", "binaries".to_string()),
                ("STANDBY_PRIMARY_ADDRESS", format!("127.0.0.1:{}", pf.port)),
                ("STANDBY_PRIMARY_TLS", "none".to_string()),
                ("STANDBY_HEALTH_UP_AFTER", "1".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env
    };
    procs.0.push(function(
        INGEST,
        "standby-ingest",
        port,
        &env_as(Principal::Ingest),
        &dir.path().join("ingest.log"),
    ));
    procs.0.push(function(
        DRAIN,
        "standby-drain",
        port,
        &env_as(Principal::Drain),
        &dir.path().join("drain.log"),
    ));

    // SES: the S3 action, then the Lambda action with the event.
    let event_file = repo().join("tests/fixtures/ses/normal.json");
    let out = invoke(port, "standby-ingest", &event_file);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "no object yet: the function must fail\n{stdout}"
    );
    assert!(
        stderr.contains("MissingObject") || stdout.contains("MissingObject"),
        "{stdout}\n{stderr}"
    );
    assert!(
        storage
            .index
            .list(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );

    let raw = common::fixture("ses/message.eml", "tok-binaries");
    ses_put(
        &clients,
        &settings,
        &ses_message_id(&ses_event("normal.json")),
        raw.as_bytes(),
    )
    .await;
    let out = invoke(port, "standby-ingest", &event_file);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["indexed"], 1, "{report}");
    let recs = storage.index.list(&Default::default()).await.unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].rcpts[0].address, "bob@example.test");

    // The operator asks the deployed drain function to run now.
    let cfg = cli_config(dir.path(), "binaries", pf.port);
    let lambda_url = format!("http://127.0.0.1:{port}");
    let out = standby_cli(
        &moto,
        &cfg,
        &["drain", "--remote", "standby-drain"],
        &[("AWS_ENDPOINT_URL_LAMBDA", lambda_url.as_str())],
    );
    assert!(
        out.status.success(),
        "{}\n{}\ndrain log: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("drain.log")).unwrap_or_default()
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert_eq!(summary["primary"], "up", "{summary}");
    assert_eq!(summary["held"], 0, "{summary}");
    wait_for("the copy at the primary", Duration::from_secs(30), || {
        pf.delivered().len() == 1
    });
    assert!(String::from_utf8_lossy(&pf.delivered()[0]).contains("tok-binaries"));
    // The functions log JSON (CloudWatch) and never the full addresses at info.
    let log = std::fs::read_to_string(dir.path().join("ingest.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with('{') && l.contains("message indexed")),
        "{log}"
    );
    assert!(!log.contains("bob@example.test"), "{log}");
}

/// `scripts/build-lambdas` refuses a bootstrap that needs a newer glibc than Lambda's
/// provided.al2023 runtime has (2.34; the binary would die at its first start): the two
/// functions as built here pass, and the same binaries fail against an older limit, with
/// the symbol versions that are too new named.
#[test]
fn the_glibc_check_passes_the_functions_and_refuses_newer_symbols() {
    let check = repo().join("scripts/check-glibc");
    let out = Command::new(&check)
        .args(["--max", "2.34", INGEST, DRAIN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&check)
        .args(["--max", "2.16", DRAIN])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("newer than the 2.16") && err.contains("GLIBC_2.17"),
        "{err}"
    );
}

/// Each function opens its S3 and DynamoDB connections during init, before the first
/// invocation: started against a runtime API that never hands it one, with the AWS
/// endpoint a listener that counts requests, each binary has made its two requests (a
/// HeadObject and a GetItem). moto speaks plain HTTP, so the TLS saving shows only on
/// AWS; what is tested is that the connections are made at init.
#[test]
fn functions_open_their_connections_during_init() {
    use std::io::{BufRead, BufReader, Write};
    for bin in [INGEST, DRAIN] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut target = String::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("x-amz-target:") {
                            target = v.trim().to_string();
                        }
                    }
                    log.lock()
                        .unwrap()
                        .push(format!("{} {target}", line.trim()));
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                });
            }
        });
        // A runtime API nobody listens on: the function never gets an invocation.
        let dead = free_port();
        let env: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("STANDBY_BUCKET", "warm"),
            ("STANDBY_TABLE", "warm"),
            ("STANDBY_DOMAINS", "example.test"),
            ("STANDBY_PRIMARY_ADDRESS", "127.0.0.1:25"),
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_LOG", "warn"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let dir = tempfile::tempdir().unwrap();
        let mut child = function(bin, "warm", dead, &env, &dir.path().join("log"));
        let started = std::time::Instant::now();
        let got = loop {
            let got = seen.lock().unwrap().clone();
            if got.len() >= 2 || started.elapsed() > Duration::from_secs(20) {
                break got;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            got.iter()
                .any(|r| r.starts_with("HEAD /warm/incoming/.warm")),
            "{bin}: S3 at init: {got:?}"
        );
        assert!(
            got.iter()
                .any(|r| r.contains("dynamodb") && r.contains("getitem")),
            "{bin}: DynamoDB at init: {got:?}"
        );
    }
}

/// The drain function reads the primary's password from Secrets Manager during init,
/// signing as itself: moto's policy check (tests/common/iam.rs) evaluates that
/// GetSecretValue against the DrainFunction's policy when the server stops.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_reads_its_password_secret_at_init_as_itself() {
    let moto = Moto::start();
    let (clients, _, _) = moto.storage("secretinit").await;
    let arn = common::aws::primary_secret(&clients, r#"{"password":"s3cret"}"#).await;
    let mut env = child_env_as(&moto, Principal::Drain);
    env.extend(
        [
            ("STANDBY_BUCKET", "secretinit"),
            ("STANDBY_TABLE", "secretinit"),
            ("STANDBY_DOMAINS", "example.test"),
            ("STANDBY_PRIMARY_ADDRESS", "127.0.0.1:25"),
            ("STANDBY_PRIMARY_TLS", "none"),
            ("STANDBY_PRIMARY_ALLOW_PLAINTEXT_AUTH", "true"),
            ("STANDBY_PRIMARY_AUTH_USER", "standby"),
            (
                "STANDBY_PRIMARY_AUTH_PASSWORD_ENV",
                "STANDBY_PRIMARY_SECRET",
            ),
            ("STANDBY_PRIMARY_SECRET", arn.as_str()),
            ("STANDBY_LOG", "warn"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let dir = tempfile::tempdir().unwrap();
    // A runtime API nobody listens on: only the init runs.
    let mut child = function(
        DRAIN,
        "secretinit",
        free_port(),
        &env,
        &dir.path().join("log"),
    );
    let read = || {
        moto.requests().iter().any(|l| {
            l["key"] == Principal::Drain.key() && l["op"] == "GetSecretValue" && l["status"] == 200
        })
    };
    let started = std::time::Instant::now();
    while !read() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        read(),
        "no GetSecretValue by the drain at init: {:?}\n{}",
        moto.requests(),
        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
    );
}
