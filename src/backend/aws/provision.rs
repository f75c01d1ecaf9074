//! Creating the bucket and table from [`super::schema`] (`standby aws-init`, tests).
//!
//! Idempotent: existing resources are left as they are and reported. The deployment
//! template owns the production resources (with policies, lifecycle, PITR and alarms);
//! this is for emulators and a first look at a real account.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::TimeToLiveSpecification;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    PublicAccessBlockConfiguration, VersioningConfiguration,
};

use super::errors::classify;
use super::{AwsClients, AwsSettings, schema};
use crate::error::StoreError;

/// Create what is missing; returns one line per resource saying what was done.
pub async fn ensure(clients: &AwsClients, s: &AwsSettings) -> Result<Vec<String>, StoreError> {
    let mut done = Vec::new();
    // HeadBucket first: in us-east-1 CreateBucket of a bucket you own answers 200 again.
    let exists = clients
        .s3
        .head_bucket()
        .bucket(&s.bucket)
        .send()
        .await
        .is_ok();
    let region = clients.sdk.region().map(|r| r.to_string());
    let mut create = clients.s3.create_bucket().bucket(&s.bucket);
    if let Some(r) = region.as_deref().filter(|r| *r != "us-east-1") {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(r))
                .build(),
        );
    }
    match if exists {
        Ok(())
    } else {
        create.send().await.map(|_| ())
    } {
        Ok(()) if exists => done.push(format!("bucket {} exists", s.bucket)),
        Ok(()) => done.push(format!("created bucket {}", s.bucket)),
        Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => {
            done.push(format!("bucket {} exists", s.bucket));
        }
        Err(e) => return Err(classify("s3", "CreateBucket", e)),
    }
    clients
        .s3
        .put_bucket_versioning()
        .bucket(&s.bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .map_err(|e| classify("s3", "PutBucketVersioning", e))?;
    clients
        .s3
        .put_public_access_block()
        .bucket(&s.bucket)
        .public_access_block_configuration(
            PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(true)
                .restrict_public_buckets(true)
                .build(),
        )
        .send()
        .await
        .map_err(|e| classify("s3", "PutPublicAccessBlock", e))?;
    let created = clients
        .dynamodb
        .create_table()
        .table_name(&s.table)
        .set_key_schema(Some(schema::key_schema()))
        .set_attribute_definitions(Some(schema::attribute_definitions()))
        .set_global_secondary_indexes(Some(schema::global_secondary_indexes()))
        .billing_mode(schema::billing_mode())
        .send()
        .await;
    match created {
        Ok(_) => done.push(format!("created table {}", s.table)),
        Err(e) if e.code() == Some("ResourceInUseException") => {
            done.push(format!("table {} exists", s.table));
            return Ok(done);
        }
        Err(e) => return Err(classify("dynamodb", "CreateTable", e)),
    }
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(schema::TTL_ATTRIBUTE)
        .build()
        .map_err(|e| StoreError::Backend {
            backend: "dynamodb",
            detail: e.to_string(),
            transient: false,
            source: None,
        })?;
    clients
        .dynamodb
        .update_time_to_live()
        .table_name(&s.table)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(|e| classify("dynamodb", "UpdateTimeToLive", e))?;
    done.push(format!(
        "table {}: TTL on `{}`",
        s.table,
        schema::TTL_ATTRIBUTE
    ));
    Ok(done)
}
