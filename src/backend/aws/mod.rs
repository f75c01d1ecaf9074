//! The AWS backend: raw messages in S3 ([`S3BlobStore`]), the index in DynamoDB
//! ([`DynamoIndex`]).
//!
//! In the serverless deployment SES inbound writes each message to S3 itself (S3 action)
//! and the ingest function indexes it; the drain function and the operator's `standby`
//! command then work on the same two stores through the same ports as the local backend.
//! `standby serve` nodes can share them too: they store what they receive under
//! [`SERVE_PREFIX`](crate::config::SERVE_PREFIX) (see [`S3BlobStore::writing_under`]),
//! index it in the same table, and keep one health item per node.
//!
//! Clients come from the standard AWS chain (environment, profile, instance/Lambda role).
//! `AWS_ENDPOINT_URL` or the config's `endpoint_url` points them at an emulator (moto);
//! with an endpoint override S3 is addressed path-style, as emulators expect.
//!
//! # Retries
//! The SDK's standard retry mode is set explicitly with 3 attempts and exponential backoff
//! (throttling, 5xx, timeouts, connection errors). Three attempts keep a Lambda invocation
//! well inside its time limit; anything still failing is reported as a transient
//! [`StoreError`] so the caller (Lambda's own async retries, the next drain run) tries
//! again later. Connect and operation timeouts are set so a hung endpoint cannot eat the
//! invocation.

pub mod archive;
mod audit;
mod dynamo;
mod errors;
mod events;
pub mod limits;
mod mailboxes;
pub mod provision;
mod s3;
pub mod schema;
mod search;
pub mod secrets;
mod ses_send;
mod sns;
pub mod sqs;
mod uploads;
mod users;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};

pub use audit::DynamoAuditLog;
pub use dynamo::DynamoIndex;
pub use errors::{classify, is_transient_code};
pub use events::DynamoEvents;
pub use limits::DynamoLoginLimits;
pub use mailboxes::{DynamoMailboxes, MAILBOX_PREFIX};
pub use s3::{DELIVERED_TAG, S3BlobStore};
pub use ses_send::SesOutbound;
pub use sns::SnsNotifier;
pub use uploads::S3Uploads;
pub use users::{ALIASES_KEY, PASSWD_KEY, S3UserFiles};

pub use crate::config::{ArchiveSettings, AwsSettings};

/// The SDK clients, created once (per process, per Lambda cold start) and shared.
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub s3: aws_sdk_s3::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sdk: aws_config::SdkConfig,
}

/// The shared SDK configuration: the standard chain (environment, profile, instance or
/// Lambda role), 3 attempts with backoff, bounded connect and attempt times, and the
/// config's `region` and `endpoint_url` when set.
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(100)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

impl AwsClients {
    /// Load the shared SDK configuration (standard chain) and build the clients.
    pub async fn connect(settings: &AwsSettings) -> AwsClients {
        Self::from_sdk(
            sdk_config(settings.region.as_deref(), settings.endpoint_url.as_deref()).await,
        )
    }

    /// Clients from an SDK configuration built elsewhere (tests give static credentials).
    pub fn from_sdk(sdk: aws_config::SdkConfig) -> AwsClients {
        let path_style = sdk.endpoint_url().is_some();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(path_style)
                .build(),
        );
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        AwsClients { s3, dynamodb, sdk }
    }

    /// Open the connections to S3 and DynamoDB now, with one cheap request each whose
    /// answer does not matter (a HeadObject and a GetItem of keys that do not exist):
    /// a Lambda function calls this during its init, so the first invocation does not
    /// pay the TLS handshakes (most of a second at 128-256 MB). Bounded by `within`;
    /// nothing fails if it does not finish.
    pub async fn warm(&self, settings: &AwsSettings, within: Duration) {
        let s3 = self
            .s3
            .head_object()
            .bucket(&settings.bucket)
            .key(format!("{}.warm", settings.prefix))
            .send();
        let dynamodb = self
            .dynamodb
            .get_item()
            .table_name(&settings.table)
            .key(
                schema::PK,
                aws_sdk_dynamodb::types::AttributeValue::S("warm#".into()),
            )
            .send();
        match tokio::time::timeout(within, async { tokio::join!(s3, dynamodb) }).await {
            Ok((s3, dynamodb)) => tracing::debug!(
                s3 = s3.is_ok(),
                dynamodb = dynamodb.is_ok(),
                "connections opened at init"
            ),
            Err(_) => tracing::debug!("connections not open within the init's bound"),
        }
    }

    pub fn blob_store(&self, settings: &AwsSettings) -> S3BlobStore {
        S3BlobStore::new(self.s3.clone(), &settings.bucket, &settings.prefix)
            .with_archive(settings.archive.clone())
    }

    /// Login limits shared by every instance of the web function (items in the table).
    pub fn login_limits(&self, settings: &AwsSettings) -> DynamoLoginLimits {
        DynamoLoginLimits::new(self.dynamodb.clone(), &settings.table)
    }

    /// The users' files in the bucket (`users/passwd`, `users/aliases.csv`).
    pub fn user_files(&self, settings: &AwsSettings) -> S3UserFiles {
        S3UserFiles::new(self.s3.clone(), &settings.bucket)
    }

    pub fn audit_log(&self, settings: &AwsSettings) -> DynamoAuditLog {
        DynamoAuditLog::new(self.dynamodb.clone(), &settings.table)
    }

    pub fn events(&self, settings: &AwsSettings) -> DynamoEvents {
        DynamoEvents::new(self.dynamodb.clone(), &settings.table)
    }

    pub fn mailboxes(&self, settings: &AwsSettings) -> DynamoMailboxes {
        DynamoMailboxes::new(self.dynamodb.clone(), &settings.table)
    }

    pub fn index(&self, settings: &AwsSettings) -> DynamoIndex {
        DynamoIndex::new(self.dynamodb.clone(), &settings.table)
            .keep_delivered(settings.keep_delivered_days)
    }
}
