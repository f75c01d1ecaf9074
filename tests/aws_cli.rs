//! The operator command with `backend = "aws"` against moto: aws-init, status, list,
//! show (also --raw), hold/release and a drain run from the operator's machine into a
//! real Postfix primary.

mod common;

use common::Postfix;
use common::aws::{Moto, child_env, cli_config, ses_receive, standby_cli};
use serde_json::Value;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_commands_work_against_s3_and_dynamodb() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let pf = Postfix::primary();
    let cfg = cli_config(dir.path(), "opcli", pf.port);

    // aws-init creates both, and is idempotent.
    let first = ok(&standby_cli(&moto, &cfg, &["aws-init"], &[]));
    assert!(
        first.contains("created bucket opcli") && first.contains("created table opcli"),
        "{first}"
    );
    let again = ok(&standby_cli(&moto, &cfg, &["aws-init"], &[]));
    assert!(
        again.contains("bucket opcli exists") && again.contains("table opcli exists"),
        "{again}"
    );

    // Mail arrives the SES way: object, then the ingest handler.
    let clients = moto.clients().await;
    let settings = moto.settings("opcli");
    let storage = standby::ports::Storage::aws(&clients, &settings);
    let (ses_id, raw) = ses_receive(&clients, &settings, "multi-rcpt.json", "tok-cli").await;

    let status = json(&standby_cli(&moto, &cfg, &["status", "--json"], &[]));
    assert_eq!(status["counts"]["held"], 1, "{status}");
    assert_eq!(status["primary"]["state"], "unknown");

    let list = json(&standby_cli(
        &moto,
        &cfg,
        &["list", "--status", "held", "--json"],
        &[],
    ));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        list[0]["rcpt_to"],
        serde_json::json!(["bob@example.test", "erin@example.test"])
    );
    assert_eq!(list[0]["subject"], "Quarterly figures");
    let id = list[0]["id"].as_str().unwrap().to_string();

    let show = json(&standby_cli(&moto, &cfg, &["show", &id, "--json"], &[]));
    assert_eq!(show["intake"], "ses");
    assert_eq!(show["blob"], ses_id.as_str());
    assert_eq!(show["verdicts"]["dmarc"], "GRAY");
    let raw_out = standby_cli(&moto, &cfg, &["show", &id, "--raw"], &[]);
    assert_eq!(ok(&raw_out), raw, "show --raw gives the stored bytes");

    // hold: the drain leaves it alone; release: it goes.
    ok(&standby_cli(&moto, &cfg, &["hold", &id], &[]));
    pf.start();
    let report = json(&standby_cli(&moto, &cfg, &["drain", "--json"], &[]));
    assert_eq!(report["delivered"], 0, "{report}");
    assert!(pf.delivered().is_empty());
    ok(&standby_cli(&moto, &cfg, &["release", &id], &[]));
    let report = json(&standby_cli(&moto, &cfg, &["drain", "--json"], &[]));
    assert_eq!(report["delivered"], 1, "{report}");
    common::wait_for(
        "2 copies at the primary",
        std::time::Duration::from_secs(30),
        || pf.delivered().len() == 2,
    );
    let status = json(&standby_cli(&moto, &cfg, &["status", "--json"], &[]));
    assert_eq!(status["counts"]["held"], 0, "{status}");
    assert_eq!(status["counts"]["delivered"], 1, "{status}");
    assert_eq!(status["primary"]["last_drain"]["delivered"], 1, "{status}");
    assert!(
        status["store"]
            .as_str()
            .unwrap()
            .contains("s3://opcli/incoming/"),
        "{status}"
    );

    // Recovery and retention commands on S3 + DynamoDB: search by recipient (the by_rcpt
    // index), export, replay of the delivered copy after the primary lost its mailboxes,
    // legal hold and the audit items.
    let erin = json(&standby_cli(
        &moto,
        &cfg,
        &["list", "--rcpt", "ERIN@example.test", "--json"],
        &[],
    ));
    assert_eq!(erin.as_array().unwrap().len(), 1, "{erin}");
    let out = dir.path().join("eml");
    let exported = json(&standby_cli(
        &moto,
        &cfg,
        &[
            "export",
            "--format",
            "eml",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
        &[],
    ));
    assert_eq!(exported["messages"], 1, "{exported}");
    let file = std::fs::read(out.join(format!("{id}.eml"))).unwrap();
    assert_eq!(file, raw.as_bytes(), "exported byte for byte");
    std::fs::remove_dir_all(pf.dir.path().join("mail/maildir")).unwrap();
    let replay = json(&standby_cli(
        &moto,
        &cfg,
        &["replay", "--since", "2000-01-01", "--json"],
        &[],
    ));
    assert_eq!(
        (replay["replayed"].clone(), replay["recipients"].clone()),
        (1.into(), 2.into()),
        "{replay}"
    );
    common::wait_for(
        "2 replayed copies",
        std::time::Duration::from_secs(30),
        || pf.delivered().len() == 2,
    );
    ok(&standby_cli(
        &moto,
        &cfg,
        &["hold", "--legal", &id, "--reason", "case 9"],
        &[],
    ));
    let purge = standby_cli(&moto, &cfg, &["purge", &id, "--yes"], &[]);
    assert_eq!(
        purge.status.code(),
        Some(1),
        "purge under legal hold is refused"
    );
    let audit = json(&standby_cli(&moto, &cfg, &["audit", "--json"], &[]));
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit[0]["action"], "legal-hold");
    assert_eq!(audit[0]["reason"], "case 9");

    // Released, the delivered message may expire again (the tag follows the record);
    // purged, none of its bytes stay in the versioned bucket: no noncurrent version, no
    // delete marker (a plain DeleteObject would keep the bytes for NoncurrentVersionDays).
    let object = format!("incoming/{ses_id}");
    let versions = async || {
        let page = clients
            .s3
            .list_object_versions()
            .bucket("opcli")
            .prefix(&object)
            .send()
            .await
            .unwrap();
        (page.versions().len(), page.delete_markers().len())
    };
    // A second version of the object, as an overwrite would leave.
    clients
        .s3
        .put_object()
        .bucket("opcli")
        .key(&object)
        .body(raw.clone().into_bytes().into())
        .send()
        .await
        .unwrap();
    assert_eq!(versions().await, (2, 0));
    ok(&standby_cli(
        &moto,
        &cfg,
        &["release", "--legal", &id, "--reason", "case closed"],
        &[],
    ));
    let tags = async || {
        clients
            .s3
            .get_object_tagging()
            .bucket("opcli")
            .key(&object)
            .send()
            .await
            .unwrap()
            .tag_set()
            .iter()
            .map(|t| format!("{}={}", t.key(), t.value()))
            .collect::<Vec<_>>()
    };
    assert_eq!(tags().await, ["standby-state=delivered"]);
    // A hold whose first run stopped after writing the record (the tag still says
    // delivered, so the lifecycle rule would delete the object): running it again
    // marks the bytes, though the record needs no change.
    let mut rec = storage
        .index
        .get(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    rec.legal_hold = Some(standby::model::LegalHold {
        at: chrono::Utc::now(),
        reason: "case 10".into(),
    });
    storage
        .index
        .update(&rec, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(tags().await, ["standby-state=delivered"]);
    ok(&standby_cli(
        &moto,
        &cfg,
        &["hold", "--legal", &id, "--reason", "case 10"],
        &[],
    ));
    assert_eq!(tags().await, ["standby-state=legal-hold"]);
    ok(&standby_cli(
        &moto,
        &cfg,
        &["release", "--legal", &id, "--reason", "case 10 closed"],
        &[],
    ));
    assert_eq!(tags().await, ["standby-state=delivered"]);
    ok(&standby_cli(&moto, &cfg, &["purge", &id, "--yes"], &[]));
    assert_eq!(
        versions().await,
        (0, 0),
        "no version of the purged message left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_backend_errors_are_clear() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // No table yet: a permanent error naming the problem, exit 1, not a panic. Run with
    // an administrator's key: under OperatorPolicy, which names the stack's table only, a
    // real account answers AccessDeniedException for another table instead.
    let cfg = cli_config(dir.path(), "nosuch", 25);
    let out = std::process::Command::new(common::STANDBY)
        .arg("--config")
        .arg(&cfg)
        .arg("status")
        .envs(child_env(&moto))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ResourceNotFoundException"), "{err}");
    // backend = "aws" without a table is refused when the config is read.
    std::fs::write(
        &cfg,
        "backend = \"aws\"\nbucket = \"b\"\nhostname = \"standby.example.test\"\n[primary]\naddress = \"p:587\"\n",
    )
    .unwrap();
    let out = standby_cli(&moto, &cfg, &["status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs `bucket` and `table`"), "{err}");
    let _ = moto.port;
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_password_from_a_secrets_manager_arn() {
    use common::{FAKE_PASS, FAKE_USER, FakeAuth, FakePrimary, FakeReply};
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (clients, settings, _) = moto.storage("secret").await;
    let arn = common::aws::primary_secret(
        &clients,
        &format!(r#"{{"username":"{FAKE_USER}","password":"{FAKE_PASS}"}}"#),
    )
    .await;
    assert_eq!(
        standby::backend::aws::secrets::resolve(&clients.sdk, &arn)
            .await
            .unwrap(),
        FAKE_PASS
    );

    let fake = FakePrimary::start(vec![FakeReply::Submission(FakeAuth::Plain)]);
    let cfg = dir.path().join("standby.toml");
    std::fs::write(
        &cfg,
        format!(
            "backend = \"aws\"\nbucket = \"secret\"\ntable = \"secret\"\n\
             hostname = \"standby.example.test\"\n[primary]\naddress = \"127.0.0.1:{}\"\ntls = \"none\"\nallow_plaintext_auth = true\n\
             auth_user = \"{FAKE_USER}\"\nauth_password_env = \"STANDBY_PRIMARY_SECRET\"\n",
            fake.port
        ),
    )
    .unwrap();
    ses_receive(&clients, &settings, "normal.json", "tok-secret").await;

    let out = standby_cli(
        &moto,
        &cfg,
        &["drain", "--force", "--json"],
        &[("STANDBY_PRIMARY_SECRET", arn.as_str())],
    );
    let report = json(&out);
    assert_eq!(report["delivered"], 1, "{report}");
    let log = fake.log.lock().unwrap().join("\n");
    assert!(log.contains("AUTH PLAIN true"), "{log}");

    // A secret that does not exist: a clear error naming it, nothing sent.
    let out = standby_cli(
        &moto,
        &cfg,
        &["drain", "--force"],
        &[(
            "STANDBY_PRIMARY_SECRET",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope",
        )],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reading secret arn:aws:secretsmanager") && err.contains("nope"),
        "{err}"
    );
}

/// `standby drain --remote` invokes the drain function once: a synchronous Invoke lasts
/// as long as the run, and a retry would start a second run or, while the first holds
/// the reserved concurrency, be throttled. Against an endpoint that throttles every
/// Invoke (as Lambda does while the scheduled run holds the one slot), the command makes
/// one request and says the function is busy and nothing was started.
#[test]
fn drain_remote_invokes_once_and_says_when_the_function_is_busy() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let (mut line, mut length) = (String::new(), 0usize);
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let invoke = line.starts_with("POST /2015-03-31/functions/standby-drain/");
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    if invoke {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let json = r#"{"Type":"User","message":"Rate Exceeded.","Reason":"ReservedFunctionConcurrentInvocationLimitExceeded"}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 429 Too Many Requests\r\nx-amzn-ErrorType: TooManyRequestsException\r\n\
                         content-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                        json.len()
                    );
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), "remote", 25);
    let out = std::process::Command::new(common::STANDBY)
        .arg("--config")
        .arg(&cfg)
        .args(["drain", "--remote", "standby-drain"])
        .envs([
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}")),
            ("STANDBY_LOG", "warn"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is busy") && err.contains("nothing was started"),
        "{err}"
    );
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one Invoke, no retry"
    );
}

/// `standby drain` run by the operator on the AWS store: a permanent refusal queues the
/// bounce as a new object (create-only, If-None-Match), which OperatorPolicy must allow
/// (the moto server's policy check fails this test otherwise).
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_in_an_operators_drain_queues_its_bounce() {
    use common::{FakePrimary, FakeReply};
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (clients, settings, storage) = moto.storage("opbounce").await;
    let fake = FakePrimary::start(vec![FakeReply::Replies {
        mail: "250 2.1.0 ok\r\n",
        rcpt: "550 5.1.1 no such user\r\n",
        data_end: "250 2.0.0 ok\r\n",
    }]);
    let cfg = cli_config(dir.path(), "opbounce", fake.port);
    ses_receive(&clients, &settings, "normal.json", "tok-opbounce").await;
    let report = json(&standby_cli(
        &moto,
        &cfg,
        &["drain", "--force", "--json"],
        &[],
    ));
    // The message, then its bounce (to an external sender, relayed through the same
    // primary, which refuses that too; a bounce of a bounce is never sent).
    assert_eq!(report["failed"], 2, "{report}");
    let all = storage
        .index
        .list(&standby::ports::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "the message and its bounce: {all:?}");
    let dsn = all
        .iter()
        .find(|r| r.mail_from.is_empty())
        .expect("a bounce, from <>");
    let stored = clients
        .s3
        .head_object()
        .bucket("opbounce")
        .key(format!("incoming/{}", dsn.blob_key()))
        .send()
        .await;
    assert!(stored.is_ok(), "the bounce's object: {stored:?}");
}
