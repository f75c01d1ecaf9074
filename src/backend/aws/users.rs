//! The users' files on AWS: the S3 objects `users/passwd` and `users/aliases.csv` in the
//! bucket, so the web function and every `standby serve` node read the same users.
//!
//! Written whole by `standby user` with a conditional PUT (`If-Match` on the ETag that
//! was read, `If-None-Match: *` for the first), so two administrators at once never
//! lose each other's change, and encrypted at rest (SSE-S3, like the bucket's default).
//! A missing object is "none yet" (a 404). Without `s3:ListBucket` S3 answers 403 for a
//! key that does not exist (aws-facts), so every role that reads these objects is
//! granted ListBucket on the `users/` prefix; any other 403 is an error, never "no users".

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;

use super::errors::classify;
use crate::error::StoreError;
use crate::ports::{UserFiles, Versioned};

const BACKEND: &str = "s3";
/// The passwd-file's object key.
pub const PASSWD_KEY: &str = "users/passwd";
/// The aliases' object key.
pub const ALIASES_KEY: &str = "users/aliases.csv";

/// The continuity notices' alternates (`address,alternate_email,phone`) on AWS, where a
/// function has no file of the administrator's to read.
pub const ALTERNATES_KEY: &str = "users/alternates.csv";

/// `users/passwd` and `users/aliases.csv` in the bucket.
#[derive(Debug, Clone)]
pub struct S3UserFiles {
    client: Client,
    bucket: String,
}

impl S3UserFiles {
    pub fn new(client: Client, bucket: &str) -> Self {
        S3UserFiles {
            client,
            bucket: bucket.to_string(),
        }
    }

    /// `users/alternates.csv` (its name, its bytes); `None` when there is none.
    ///
    /// # Errors
    /// Storage errors (a missing object is `None`).
    pub async fn read_alternates(&self) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let name = format!("s3://{}/{ALTERNATES_KEY}", self.bucket);
        Ok(self.get(ALTERNATES_KEY).await?.map(|(b, _)| (name, b)))
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let Some(out) = super::s3::get_if_any(&self.client, &self.bucket, key).await? else {
            return Ok(None);
        };
        let etag = out.e_tag().unwrap_or_default().to_string();
        let bytes = super::s3::body_bytes(out.body, key).await?;
        Ok(Some((bytes, etag)))
    }
}

#[async_trait]
impl UserFiles for S3UserFiles {
    fn passwd_name(&self) -> String {
        format!("s3://{}/{PASSWD_KEY}", self.bucket)
    }

    fn aliases_name(&self) -> Option<String> {
        Some(format!("s3://{}/{ALIASES_KEY}", self.bucket))
    }

    async fn read_passwd(&self) -> Result<Option<Versioned>, StoreError> {
        Ok(self
            .get(PASSWD_KEY)
            .await?
            .map(|(bytes, version)| Versioned { bytes, version }))
    }

    async fn read_aliases(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(ALIASES_KEY).await?.map(|(b, _)| b))
    }

    async fn write_passwd(&self, bytes: &[u8], version: Option<&str>) -> Result<(), StoreError> {
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(PASSWD_KEY)
            .content_type("text/plain; charset=utf-8")
            .server_side_encryption(ServerSideEncryption::Aes256)
            .body(ByteStream::from(bytes.to_vec()));
        let put = match version {
            Some(etag) => put.if_match(etag),
            None => put.if_none_match("*"),
        };
        put.send().await.map_err(|e| {
            let status = e.raw_response().map(|r| r.status().as_u16());
            // 412: the object is not at that version (or exists); 409: a concurrent
            // conditional write to the same key won.
            if matches!(status, Some(412 | 409)) {
                StoreError::FileChanged(format!("s3://{}/{PASSWD_KEY}", self.bucket))
            } else {
                classify(BACKEND, "PutObject", e)
            }
        })?;
        Ok(())
    }
}
