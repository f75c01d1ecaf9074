//! A moto server per test (S3, DynamoDB, Secrets Manager over real HTTP, one request at
//! a time as `scripts/moto-server` explains) and clients for
//! it with static test credentials. moto comes from the venv `scripts/test` makes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use standby::backend::aws::{AwsClients, AwsSettings};
use standby::ports::Storage;

use super::iam::{Principal, SETUP_KEY};
use super::{free_port, wait_for};

pub const REGION: &str = "us-east-1";

/// The drain function's environment on the table and bucket `name`, the primary on
/// loopback at `primary_port` without TLS, one probe to change state, domain
/// `example.test`; then `extra`.
pub fn drain_env(name: &str, primary_port: u16, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let port = format!("127.0.0.1:{primary_port}");
    [
        ("STANDBY_BUCKET", name),
        ("STANDBY_TABLE", name),
        ("STANDBY_PRIMARY_ADDRESS", port.as_str()),
        ("STANDBY_PRIMARY_TLS", "none"),
        ("STANDBY_PRIMARY_TIMEOUT_SECS", "10"),
        ("STANDBY_HEALTH_UP_AFTER", "1"),
        ("STANDBY_HEALTH_DOWN_AFTER", "1"),
        ("STANDBY_DOMAINS", "example.test"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Environment for child processes (the `standby` CLI, the Lambda binaries), with the
/// tests' own key: requests not checked against a policy.
pub fn child_env(moto: &Moto) -> Vec<(String, String)> {
    env_with_key(moto, SETUP_KEY)
}

/// [`child_env`] for a process acting as `principal`: its requests are checked against
/// the principal's policy in infra/template.yaml when the moto server stops
/// (tests/common/iam.rs).
pub fn child_env_as(moto: &Moto, principal: Principal) -> Vec<(String, String)> {
    env_with_key(moto, principal.key())
}

fn env_with_key(moto: &Moto, key: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", key),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("STANDBYMX_VENV").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/standby-mx/venv")
        },
        PathBuf::from,
    );
    venv.join("bin").join(name)
}

/// Path of a tool from the test venv, or a failure that says how to get it.
pub fn require_venv_tool(name: &str) -> PathBuf {
    let bin = venv_bin(name);
    assert!(
        bin.exists(),
        "{} not found: run scripts/test, which makes the venv ~/.cache/standby-mx/venv with \
         `pip install 'moto[server]' cargo-lambda` (or set STANDBYMX_VENV to such a venv)",
        bin.display()
    );
    bin
}

/// A moto server on a free loopback port, killed on drop. Every request it answers is
/// logged, and on drop the requests each [`Principal`] made are checked against its
/// policy in infra/template.yaml (tests/common/iam.rs): a call the template does not
/// allow fails the test that made it.
pub struct Moto {
    child: Child,
    pub url: String,
    pub port: u16,
    log: Option<PathBuf>,
    _log_dir: Option<tempfile::TempDir>,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::tempdir().expect("a directory for moto's request log");
        let log = dir.path().join("requests.jsonl");
        let mut moto = Self::start_with(&log);
        moto._log_dir = Some(dir);
        moto
    }

    /// [`Moto::start`], appending one JSON line per request to `log` (see
    /// `scripts/moto-server`).
    pub fn start_logged(log: &std::path::Path) -> Moto {
        Self::start_with(log)
    }

    fn start_with(log: &std::path::Path) -> Moto {
        require_venv_tool("moto_server");
        let python = require_venv_tool("python");
        let port = free_port();
        // What moto says goes beside its request log, and is printed when a test fails.
        let errors = log.with_extension("stderr");
        let stderr = std::fs::File::create(&errors).expect("moto's stderr file");
        // moto's own server, one request at a time (see the script for why).
        let mut child = Command::new(python)
            .arg(super::repo().join("scripts/moto-server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .arg("--log")
            .arg(log)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start moto_server");
        let url = format!("http://127.0.0.1:{port}");
        // Ready when our child answers HTTP: a port that merely accepts could be another
        // listener that took it first (moto then exits with "Address already in use").
        wait_for("moto server", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "moto server on port {port} exited ({status}): {}",
                    std::fs::read_to_string(&errors).unwrap_or_default()
                );
            }
            answers_ready(port)
        });
        Moto {
            child,
            url,
            port,
            log: Some(log.to_path_buf()),
            _log_dir: None,
        }
    }

    /// The end of what moto wrote to stderr (its request lines and tracebacks).
    fn stderr_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let all = std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// moto's own `moto_server`, which serves requests on threads: what real concurrency
    /// does to its DynamoDB model (a condition is checked and the write applied without a
    /// lock, so two conditional writes on one item can both succeed, unlike DynamoDB).
    pub fn start_threaded() -> Moto {
        let bin = require_venv_tool("moto_server");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let url = format!("http://127.0.0.1:{port}");
        wait_for("moto server", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Moto {
            child,
            url,
            port,
            log: None,
            _log_dir: None,
        }
    }

    /// The requests this server has answered so far, as its log has them (empty for
    /// [`Moto::start_threaded`], which keeps no log).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        match &self.log {
            Some(log) if log.exists() => super::iam::read_log(log),
            _ => Vec::new(),
        }
    }

    /// The raw messages this server's SES has "sent" (moto's model data,
    /// `ses.RawMessage`: `source`, `destinations`, `raw_data`). Asked under the tests'
    /// own key, as the setup's requests are: the request log checks every other one
    /// against the template's policies.
    pub fn ses_sent(&self) -> Vec<serde_json::Value> {
        let data = self.get_json("/moto-api/data.json");
        data["ses"]["RawMessage"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Make `domain` a verified SES identity, as the template makes the first domain's:
    /// SES sends only from one.
    pub async fn verify_ses_domain(&self, domain: &str) {
        aws_sdk_ses::Client::new(&self.clients().await.sdk)
            .verify_domain_identity()
            .domain(domain)
            .send()
            .await
            .unwrap();
    }

    /// Set fields of the SES account SESv2 GetAccount reports (`scripts/moto-server`'s
    /// stand-in: moto has none), e.g. `{"ProductionAccessEnabled": true}`.
    pub fn set_ses_account(&self, fields: serde_json::Value) {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                "-X",
                "POST",
                "-H",
                &format!(
                    "Authorization: AWS4-HMAC-SHA256 Credential={SETUP_KEY}/20260101/{REGION}/moto/aws4_request"
                ),
                "--data-binary",
                &fields.to_string(),
                &format!("{}/_standby/ses-account", self.url),
            ])
            .output()
            .expect("run curl");
        assert!(out.status.success(), "set the SES account");
    }

    /// What SNS was asked to publish: `{topic, subject, message}` for a topic,
    /// `{phone, message}` for an SMS (scripts/moto-server reads them from moto).
    pub fn sns_published(&self) -> Vec<serde_json::Value> {
        serde_json::from_value(self.get_json("/_standby/sns-published")).unwrap()
    }

    /// GET `path` of the moto server as the tests' own key (not checked against a
    /// policy), as JSON.
    fn get_json(&self, path: &str) -> serde_json::Value {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                "-H",
                &format!(
                    "Authorization: AWS4-HMAC-SHA256 Credential={SETUP_KEY}/20260101/{REGION}/moto/aws4_request"
                ),
                &format!("{}{path}", self.url),
            ])
            .output()
            .expect("run curl");
        assert!(out.status.success(), "GET {path} of moto");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Bucket and table names for one test (`name` must be a valid bucket name).
    pub fn settings(&self, name: &str) -> AwsSettings {
        AwsSettings {
            bucket: name.to_string(),
            table: name.to_string(),
            prefix: "incoming/".into(),
            region: Some(REGION.into()),
            endpoint_url: Some(self.url.clone()),
            keep_delivered_days: None,
            archive: None,
        }
    }

    /// Clients with the tests' own key (requests not checked against a policy).
    pub async fn clients(&self) -> AwsClients {
        self.clients_with_key(SETUP_KEY).await
    }

    /// Clients signing as `principal`, whose requests are checked against its policy.
    pub async fn clients_as(&self, principal: Principal) -> AwsClients {
        self.clients_with_key(principal.key()).await
    }

    /// The storage on `settings` (bucket and table already made) as `principal` sees it.
    pub async fn storage_as(&self, principal: Principal, settings: &AwsSettings) -> Storage {
        Storage::aws(&self.clients_as(principal).await, settings)
    }

    async fn clients_with_key(&self, key: &str) -> AwsClients {
        clients_at(&self.url, key).await
    }

    /// Bucket and table created, and the storage on them.
    pub async fn storage(&self, name: &str) -> (AwsClients, AwsSettings, Storage) {
        let clients = self.clients().await;
        let settings = self.settings(name);
        standby::backend::aws::provision::ensure(&clients, &settings)
            .await
            .expect("create bucket and table in moto");
        let storage = Storage::aws(&clients, &settings);
        (clients, settings, storage)
    }
}

/// Whether our moto server answers on `port` (`GET /_standby/ready`, scripts/moto-server).
fn answers_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = Vec::new();
    s.write_all(b"GET /_standby/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && s.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.")
        && answer.ends_with(b"standby moto-server\n")
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "moto server on port {} said, at the end:\n{}",
                self.port,
                self.stderr_tail()
            );
        }
        // Every request was answered (and logged) before the test let go of the server.
        if let Some(log) = &self.log
            && !std::thread::panicking()
        {
            super::iam::check(log);
        }
    }
}

/// Clients for the moto server at `url`, signing with the access key `key`.
async fn clients_at(url: &str, key: &str) -> AwsClients {
    let creds = aws_sdk_s3::config::Credentials::new(key, "testing", None, None, "tests");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(creds)
        .load()
        .await;
    AwsClients::from_sdk(sdk)
}

/// A Secrets Manager secret `standby/primary` holding `value`; its ARN.
pub async fn primary_secret(clients: &AwsClients, value: &str) -> String {
    aws_sdk_secretsmanager::Client::new(&clients.sdk)
        .create_secret()
        .name("standby/primary")
        .secret_string(value)
        .send()
        .await
        .expect("create the secret in moto")
        .arn()
        .expect("a secret's ARN")
        .to_string()
}

/// Put a raw message where an SES receipt rule's S3 action would.
pub async fn ses_put(clients: &AwsClients, s: &AwsSettings, ses_id: &str, raw: &[u8]) {
    clients
        .s3
        .put_object()
        .bucket(&s.bucket)
        .key(format!("{}{ses_id}", s.prefix))
        .body(aws_sdk_s3::primitives::ByteStream::from(raw.to_vec()))
        .send()
        .await
        .expect("put object in moto");
}

/// Put `ses/message.eml` with `token` where SES's S3 action would, as `ses_id`.
pub async fn ses_put_fixture(clients: &AwsClients, s: &AwsSettings, ses_id: &str, token: &str) {
    let raw = super::fixture("ses/message.eml", token);
    ses_put(clients, s, ses_id, raw.as_bytes()).await;
}

/// A config file for the `standby` CLI with `backend = "aws"` on `moto`.
pub fn cli_config(dir: &std::path::Path, name: &str, primary_port: u16) -> PathBuf {
    let path = dir.join("standby.toml");
    std::fs::write(
        &path,
        format!(
            "backend = \"aws\"\nbucket = \"{name}\"\ntable = \"{name}\"\n\
             hostname = \"standby.example.test\"\n\
             [primary]\naddress = \"127.0.0.1:{primary_port}\"\ntls = \"none\"\ntimeout_secs = 10\n"
        ),
    )
    .unwrap();
    path
}

/// Run `standby` with the moto environment and `extra` variables, as the operator
/// (OperatorPolicy), except `aws-init`: making the bucket and table is the
/// administrator's (or CloudFormation's) part, run with the tests' own key.
pub fn standby_cli(
    moto: &Moto,
    config: &std::path::Path,
    args: &[&str],
    extra: &[(&str, &str)],
) -> std::process::Output {
    let env = match args.first() {
        Some(&"aws-init") => child_env(moto),
        _ => child_env_as(moto, Principal::Operator),
    };
    Command::new(super::STANDBY)
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env)
        .envs(extra.iter().copied())
        .output()
        .expect("run standby")
}

/// An SES Lambda-action event from `tests/fixtures/ses/`.
pub fn ses_event(name: &str) -> serde_json::Value {
    let path = super::repo().join("tests/fixtures/ses").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// SES's message id in an event (the S3 object name after the prefix).
pub fn ses_message_id(ev: &serde_json::Value) -> String {
    ev["Records"][0]["ses"]["mail"]["messageId"]
        .as_str()
        .expect("fixture has mail.messageId")
        .to_string()
}

/// Receive a message the SES way: `ses/message.eml` with `token` put where the receipt
/// rule's S3 action would, then the ingest handler, as the ingest function, run on the
/// event fixture `name`. Returns SES's message id and the stored bytes.
pub async fn ses_receive(
    clients: &AwsClients,
    s: &AwsSettings,
    name: &str,
    token: &str,
) -> (String, String) {
    let ev = ses_event(name);
    let id = ses_message_id(&ev);
    let raw = super::fixture("ses/message.eml", token);
    ses_put(clients, s, &id, raw.as_bytes()).await;
    let url = s
        .endpoint_url
        .as_deref()
        .expect("settings of a moto server");
    let ingest = Storage::aws(&clients_at(url, Principal::Ingest.key()).await, s);
    standby::lambda::ingest::Ingest::new(ingest, "")
        .handle(ev)
        .await
        .expect("ingest the fixture");
    (id, raw)
}
