//! A moto server per test (S3, DynamoDB, Secrets Manager over real HTTP, one request at
//! a time as `scripts/moto-server` explains) and clients for
//! it with static test credentials. moto comes from the venv `scripts/test` makes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use standby::backend::aws::{AwsClients, AwsSettings};
use standby::ports::Storage;

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

/// Environment for child processes (the `standby` CLI, the Lambda binaries).
pub fn child_env(moto: &Moto) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
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

/// A moto server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub url: String,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_with(&[])
    }

    /// [`Moto::start`], appending one JSON line per request to `log` (see
    /// `scripts/moto-server`).
    pub fn start_logged(log: &std::path::Path) -> Moto {
        Self::start_with(&["--log", log.to_str().expect("a UTF-8 path")])
    }

    fn start_with(extra: &[&str]) -> Moto {
        require_venv_tool("moto_server");
        let python = require_venv_tool("python");
        let port = free_port();
        // moto's own server, one request at a time (see the script for why).
        let child = Command::new(python)
            .arg(super::repo().join("scripts/moto-server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let url = format!("http://127.0.0.1:{port}");
        wait_for("moto server", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Moto { child, url, port }
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
        Moto { child, url, port }
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

    pub async fn clients(&self) -> AwsClients {
        let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "tests");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(creds)
            .load()
            .await;
        AwsClients::from_sdk(sdk)
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

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Run `standby` with the moto environment and `extra` variables.
pub fn standby_cli(
    moto: &Moto,
    config: &std::path::Path,
    args: &[&str],
    extra: &[(&str, &str)],
) -> std::process::Output {
    Command::new(super::STANDBY)
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(child_env(moto))
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
/// rule's S3 action would, then the ingest handler run on the event fixture `name`.
/// Returns SES's message id and the stored bytes.
pub async fn ses_receive(
    clients: &AwsClients,
    s: &AwsSettings,
    storage: &Storage,
    name: &str,
    token: &str,
) -> (String, String) {
    let ev = ses_event(name);
    let id = ses_message_id(&ev);
    let raw = super::fixture("ses/message.eml", token);
    ses_put(clients, s, &id, raw.as_bytes()).await;
    standby::lambda::ingest::Ingest::new(storage.clone(), "")
        .handle(ev)
        .await
        .expect("ingest the fixture");
    (id, raw)
}
