//! The serverless path on one machine, for `scripts/drill --backend aws`.
//!
//! Amazon SES inbound cannot run anywhere but AWS, and moto cannot run Lambda functions.
//! This program stands in for both so the drill can exercise the real handler code
//! against S3 and DynamoDB (moto): it listens for SMTP with the standby's own listener
//! and policy; each accepted message is written under the bucket's prefix (as SES's S3
//! action does) and then handed to the `standby-ingest` handler as an SES Lambda event
//! (as the receipt rule's Lambda action does); the 250 goes out only after the handler
//! indexed it. Every `health.interval_secs` it invokes the `standby-drain` handler (as the
//! schedule does). Verdicts in the event: scanning `DISABLED`, SPF/DKIM/DMARC `GRAY`,
//! since nothing here evaluates them.
//!
//! ```sh
//! cargo run --example ses_inbound -- standby.toml    # a config with backend = "aws"
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use standby::config::{BackendKind, Config};
use standby::error::StoreError;
use standby::ingest::Spool;
use standby::lambda::drain::{DrainFunction, DrainRequest};
use standby::lambda::ingest::Ingest;
use standby::model::HealthRecord;
use standby::model::{Counts, MessageId, Record, Status, Verdicts};
use standby::ports::Storage;
use standby::ports::{ClaimRequest, Index, ListQuery, SystemClock};
use standby::serve::smtp_server;
use standby::smtp::server;

/// The index the listener's spool sees: an insert becomes an SES event for the ingest
/// handler, which writes the real index; nothing else is used by the listener.
struct SesInbound {
    ingest: Ingest,
    index: Arc<dyn Index>,
}

/// The SES Lambda-action event for a message SES stored as `prefix + message_id`.
fn ses_event(
    message_id: &str,
    mail_from: &str,
    rcpts: &[String],
    at: DateTime<Utc>,
) -> serde_json::Value {
    let at = at.to_rfc3339();
    let verdict = |s: &str| json!({ "status": s });
    json!({ "Records": [{
        "eventSource": "aws:ses",
        "eventVersion": "1.0",
        "ses": {
            "mail": {
                "timestamp": at,
                "source": mail_from,
                "messageId": message_id,
                "destination": rcpts,
                "headersTruncated": false,
                "headers": [],
                "commonHeaders": {},
            },
            "receipt": {
                "timestamp": at,
                "processingTimeMillis": 1,
                "recipients": rcpts,
                "spamVerdict": verdict("DISABLED"),
                "virusVerdict": verdict("DISABLED"),
                "spfVerdict": verdict("GRAY"),
                "dkimVerdict": verdict("GRAY"),
                "dmarcVerdict": verdict("GRAY"),
                "action": {
                    "type": "Lambda",
                    "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:standby-ingest",
                    "invocationType": "Event",
                },
            },
        },
    }]})
}

#[async_trait]
impl Index for SesInbound {
    async fn insert(&self, rec: &Record) -> Result<bool, StoreError> {
        let rcpts: Vec<String> = rec.rcpts.iter().map(|r| r.address.clone()).collect();
        let event = ses_event(&rec.id.to_string(), &rec.mail_from, &rcpts, rec.received_at);
        self.ingest
            .handle(event)
            .await
            .map_err(|e| StoreError::Backend {
                backend: "standby-ingest",
                detail: e.to_string(),
                transient: true,
                source: None,
            })?;
        Ok(true)
    }
    async fn get(&self, id: MessageId) -> Result<Option<Record>, StoreError> {
        self.index.get(id).await
    }
    async fn list(&self, q: &ListQuery) -> Result<Vec<Record>, StoreError> {
        self.index.list(q).await
    }
    async fn counts(&self) -> Result<Counts, StoreError> {
        self.index.counts().await
    }
    async fn oldest(&self, status: Status) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.index.oldest(status).await
    }
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Record>, StoreError> {
        self.index.claim(req).await
    }
    async fn renew(
        &self,
        id: MessageId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.index.renew(id, owner, until).await
    }
    async fn complete(&self, rec: &Record, owner: &str) -> Result<(), StoreError> {
        self.index.complete(rec, owner).await
    }
    async fn update(&self, rec: &Record, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.index.update(rec, now).await
    }
    async fn set_verdicts(
        &self,
        id: MessageId,
        verdicts: &Verdicts,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.index.set_verdicts(id, verdicts, now).await
    }
    async fn delete(&self, rec: &Record, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.index.delete(rec, now).await
    }
    async fn load_health(&self, node: &str) -> Result<Option<HealthRecord>, StoreError> {
        self.index.load_health(node).await
    }
    async fn save_health(&self, h: &HealthRecord) -> Result<(), StoreError> {
        self.index.save_health(h).await
    }
    async fn list_health(&self) -> Result<Vec<HealthRecord>, StoreError> {
        self.index.list_health().await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("STANDBY_LOG"))
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: ses_inbound CONFIG")?;
    let config = Config::load(std::path::Path::new(&path))?;
    if config.backend != BackendKind::Aws {
        bail!("{path}: needs backend = \"aws\"");
    }
    let storage = Storage::open(&config).await?;
    let settings = config.aws_settings().context("bucket and table")?;
    let spool_storage = Storage {
        blobs: storage.blobs.clone(),
        index: Arc::new(SesInbound {
            ingest: Ingest::new(
                storage.clone(),
                format!("s3://{}/{}", settings.bucket, settings.prefix),
            )
            .with_journal(config.journal(), standby::lambda::journal_allow(&config))
            .with_retention(config.retention()),
            index: storage.index.clone(),
        }),
        audit: storage.audit.clone(),
        events: storage.events.clone(),
        mailboxes: storage.mailboxes.clone(),
    };
    let server = smtp_server(
        &config,
        Arc::new(Spool::new(
            spool_storage,
            Arc::new(SystemClock),
            config.hostname.clone(),
        )),
        None,
    )?
    .shared();
    let relay = standby::lambda::operator_relay(&config).await?;
    let interval = Duration::from_secs(config.health.interval_secs.max(1));
    let drain = DrainFunction::new(config.clone(), storage, relay);
    tokio::spawn(async move {
        loop {
            let deadline = Some(Instant::now() + Duration::from_secs(300));
            match drain.handle(DrainRequest::default(), deadline).await {
                Ok(s) => tracing::info!(summary = %json!(s), "standby-drain"),
                Err(e) => tracing::error!(error = %e, "standby-drain failed"),
            }
            tokio::time::sleep(interval).await;
        }
    });
    let listeners = server::listeners(&config.listen)?;
    tracing::info!(listen = %config.listen, "SES inbound stand-in listening");
    server::run(listeners, server, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
