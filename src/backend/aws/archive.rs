//! The journal archive: copies of journal copies in an S3 bucket with Object Lock, so
//! not even an administrator with the standby's credentials can shorten what the law
//! requires to be kept.
//!
//! SES cannot write into a bucket that has a *default* Object Lock retention, so the
//! receipt rule keeps writing to the ordinary bucket, and the ingest function writes each
//! journal copy into the archive with a *per-object* retention (`governance` or
//! `compliance` mode, until receipt + `[retention] journal_days`) under
//! `journal/<key>`. A legal hold placed with `standby hold --legal` is also set on the
//! archive copy (`PutObjectLegalHold`), and lifted by `release --legal`.
//!
//! The copy is idempotent: an existing archive object is left alone (a retried ingest
//! must not add a second locked version).

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockMode};
use chrono::{DateTime, Utc};

use super::ArchiveSettings;
use super::errors::classify;
use crate::config::LockMode;
use crate::error::StoreError;

const BACKEND: &str = "s3";

/// Where a blob's archive copy lives in the archive bucket.
pub fn archive_key(key: &str) -> String {
    format!("journal/{key}")
}

/// Write `bytes` (the stored journal copy) into the archive, locked until `until`.
///
/// A `PutObject` of the bytes the ingest function already holds, rather than a
/// `CopyObject`: S3 wants a checksum with any Object Lock upload, which the SDK adds to a
/// `PutObject` by itself.
pub async fn copy(
    client: &Client,
    archive: &ArchiveSettings,
    key: &str,
    bytes: &[u8],
    until: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    let dest = archive_key(key);
    let exists = client
        .head_object()
        .bucket(&archive.bucket)
        .key(&dest)
        .send()
        .await;
    match exists {
        Ok(_) => return Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
        Err(e) => return Err(classify(BACKEND, "HeadObject (archive)", e)),
    }
    let mut req = client
        .put_object()
        .bucket(&archive.bucket)
        .key(&dest)
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
        .body(aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec()));
    if let Some(until) = until {
        let mode = match archive.mode {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        };
        req = req.object_lock_mode(mode).object_lock_retain_until_date(
            aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp()),
        );
    }
    req.send()
        .await
        .map_err(|e| classify(BACKEND, "PutObject (archive)", e))?;
    Ok(())
}

/// Set or lift the legal hold on a blob's archive copy; a blob without one is fine.
pub async fn legal_hold(
    client: &Client,
    archive: &ArchiveSettings,
    key: &str,
    hold: bool,
) -> Result<(), StoreError> {
    let status = if hold {
        ObjectLockLegalHoldStatus::On
    } else {
        ObjectLockLegalHoldStatus::Off
    };
    let res = client
        .put_object_legal_hold()
        .bucket(&archive.bucket)
        .key(archive_key(key))
        .legal_hold(ObjectLockLegalHold::builder().status(status).build())
        .send()
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .and_then(|s| aws_sdk_s3::error::ProvideErrorMetadata::code(s))
                == Some("NoSuchKey") =>
        {
            Ok(())
        }
        Err(e) => Err(classify(BACKEND, "PutObjectLegalHold (archive)", e)),
    }
}
