//! `S3BlobStore`: raw messages as S3 objects under a key prefix.
//!
//! # Guarantees
//! - Blobs written here are collected and stored with one `PutObject` at commit, with
//!   `If-None-Match: *`: an object is never half-visible, and an existing object (SES's or
//!   ours) is never overwritten. Past [`SPILL_AT`] bytes a blob is collected in a
//!   temporary file (removed when the writer is dropped) instead of memory (`standby
//!   serve` may receive 200 messages of 40 MB at once), and the PUT streams it from there.
//!   S3 acknowledges a PUT only once the object is durably stored, and reads after a PUT
//!   see it (strong read-after-write consistency).
//! - SES writes its own objects at `prefix + SES message id`; those are read through the
//!   record's [`blob`](crate::model::Record::blob) key. Such keys never contain the prefix.
//! - A key with a `/` is a whole object key in the bucket (SES message ids and our ids
//!   never contain one). A store made [`writing_under`](S3BlobStore::writing_under) a
//!   prefix of its own (`standby serve`: [`SERVE_PREFIX`](crate::config::SERVE_PREFIX))
//!   creates `<that prefix><id>` and hands out that whole key
//!   ([`BlobWriter::key`]) for the record, so every reader (the drain function, the
//!   operator's commands, whatever their `prefix`) finds the object where the record says.
//! - [`BlobStore::list`] lists only `prefix` (the SES objects, for the reconciler), never
//!   another prefix's objects.
//! - Delivered objects are tagged [`DELIVERED_TAG`] for the bucket's lifecycle rule.
//! - Listing ([`BlobStore::list`]) pages through `ListObjectsV2`, 1,000 keys a request.

use std::pin::Pin;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Tag, Tagging};
use chrono::{DateTime, TimeZone, Utc};

use super::ArchiveSettings;
use super::errors::classify;
use crate::error::StoreError;
use crate::model::{Disposal, MessageId};
use crate::ports::{BlobInfo, BlobPage, BlobReader, BlobStore, BlobWriter};

const BACKEND: &str = "s3";

/// The tag [`BlobStore::mark`] sets on delivered mail; the template's lifecycle rule matches it.
pub const DELIVERED_TAG: (&str, &str) = ("standby-state", "delivered");

fn internal(e: &dyn std::fmt::Display) -> StoreError {
    super::errors::request_build(BACKEND, e)
}

/// The tag [`BlobStore::set_legal_hold`] sets.
pub const LEGAL_HOLD_TAG: (&str, &str) = ("standby-state", "legal-hold");

/// Raw messages in `s3://bucket/prefix<key>`.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    prefix: String,
    /// Where [`BlobStore::create`] writes, when not under `prefix` (see the module docs).
    write_prefix: Option<String>,
    archive: Option<ArchiveSettings>,
}

impl S3BlobStore {
    /// Replace the object's tags with this one.
    async fn put_tag(&self, key: &str, (k, v): (&str, &str)) -> Result<(), StoreError> {
        let tag = Tag::builder()
            .key(k)
            .value(v)
            .build()
            .map_err(|e| internal(&e))?;
        let tagging = Tagging::builder()
            .tag_set(tag)
            .build()
            .map_err(|e| internal(&e))?;
        self.client
            .put_object_tagging()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "PutObjectTagging", e))?;
        Ok(())
    }

    pub fn new(client: Client, bucket: &str, prefix: &str) -> Self {
        S3BlobStore {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            write_prefix: None,
            archive: None,
        }
    }

    /// Create new blobs at `<prefix><id>` (a prefix with a trailing `/`, such as
    /// `serve/`), keyed by that whole object key, instead of under the SES prefix.
    pub fn writing_under(mut self, prefix: &str) -> Self {
        debug_assert!(prefix.ends_with('/'), "a write prefix ends with `/`");
        self.write_prefix = Some(prefix.to_string());
        self
    }

    /// Archive journal copies in this Object Lock bucket (see [`super::archive`]).
    pub fn with_archive(mut self, archive: Option<ArchiveSettings>) -> Self {
        self.archive = archive;
        self
    }

    /// The object key of a blob key: a key with a `/` is already whole.
    fn object_key(&self, key: &str) -> String {
        if key.contains('/') {
            key.to_string()
        } else {
            format!("{}{key}", self.prefix)
        }
    }

    async fn get(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StoreError::MissingBlob(key.to_string())
                } else {
                    classify(BACKEND, "GetObject", e)
                }
            })
    }
}

/// `key` in `bucket`, or `None` when there is none (a 404: callers with `s3:ListBucket`;
/// without it S3 answers 403, an error here).
pub(super) async fn get_if_any(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, StoreError> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => Ok(Some(o)),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            if e.as_service_error().is_some_and(|s| s.is_no_such_key()) || status == Some(404) {
                return Ok(None);
            }
            Err(classify(BACKEND, "GetObject", e))
        }
    }
}

/// A GetObject's whole body (`key` names it in the error).
pub(super) async fn body_bytes(body: ByteStream, key: &str) -> Result<Vec<u8>, StoreError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| StoreError::Backend {
            backend: BACKEND,
            detail: format!("GetObject {key}: reading the body: {e}"),
            transient: true,
            source: Some(Box::new(e)),
        })?
        .into_bytes()
        .to_vec())
}

/// S3 times to chrono, truncated to whole seconds.
fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> DateTime<Utc> {
    Utc.timestamp_opt(t.secs(), 0).single().unwrap_or_default()
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn create(&self, id: MessageId) -> Result<Box<dyn BlobWriter>, StoreError> {
        let key = match &self.write_prefix {
            Some(p) => format!("{p}{id}"),
            None => id.to_string(),
        };
        Ok(Box::new(S3Writer {
            store: self.clone(),
            key,
            buf: Vec::new(),
            spill: None,
        }))
    }

    fn archives(&self) -> bool {
        self.archive.is_some()
    }

    async fn open(&self, key: &str) -> Result<BlobReader, StoreError> {
        let out = self.get(key).await?;
        Ok(Box::new(Box::pin(out.body.into_async_read()) as Pin<Box<_>>))
    }

    /// The object and every version of it. In a versioned bucket (the template's) a
    /// plain DeleteObject only adds a delete marker and keeps the bytes as a noncurrent
    /// version (S3 API reference, DeleteObject: "To permanently delete an object in a
    /// versioned bucket, you must include the object's versionId"), until the lifecycle
    /// rule's `NoncurrentVersionDays`: a purge, a retention delete or a confidential
    /// rule's delete must remove the bytes now. So the current object goes first (it no
    /// longer reads, whatever follows), then each version and delete marker of this exact
    /// key by its id (`s3:ListBucketVersions`, `s3:DeleteObjectVersion`).
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let object = self.object_key(key);
        // DeleteObject of a missing key succeeds in S3.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "DeleteObject", e))?;
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&object)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "ListObjectVersions", e))?;
            // The prefix also matches longer keys: only this one's versions go.
            let versions = page
                .versions()
                .iter()
                .filter(|v| v.key() == Some(object.as_str()))
                .filter_map(|v| v.version_id());
            let markers = page
                .delete_markers()
                .iter()
                .filter(|m| m.key() == Some(object.as_str()))
                .filter_map(|m| m.version_id());
            for version in versions.chain(markers) {
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(&object)
                    .version_id(version)
                    .send()
                    .await
                    .map_err(|e| classify(BACKEND, "DeleteObject (version)", e))?;
            }
            if page.is_truncated() != Some(true) {
                return Ok(());
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
    }

    /// The object's tag: `standby-state=delivered` (the template's lifecycle rule deletes
    /// tagged objects `RetentionDays` after receipt), `standby-state=legal-hold` (no rule
    /// acts on it), or none.
    async fn mark(&self, key: &str, disposal: Disposal) -> Result<bool, StoreError> {
        match disposal {
            Disposal::Expirable => self.put_tag(key, DELIVERED_TAG).await?,
            Disposal::LegalHold => self.put_tag(key, LEGAL_HOLD_TAG).await?,
            Disposal::Keep => {
                self.client
                    .delete_object_tagging()
                    .bucket(&self.bucket)
                    .key(self.object_key(key))
                    .send()
                    .await
                    .map_err(|e| classify(BACKEND, "DeleteObjectTagging", e))?;
            }
        }
        Ok(true)
    }

    /// One `GetObjectTagging`: the `standby-state` tag as the disposal it stands for.
    async fn marked(&self, key: &str) -> Result<Option<Disposal>, StoreError> {
        let out = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await
            .map_err(|e| classify(BACKEND, "GetObjectTagging", e))?;
        Ok(out
            .tag_set()
            .iter()
            .find(|t| t.key() == DELIVERED_TAG.0)
            .and_then(|t| match t.value() {
                v if v == DELIVERED_TAG.1 => Some(Disposal::Expirable),
                v if v == LEGAL_HOLD_TAG.1 => Some(Disposal::LegalHold),
                _ => None,
            }))
    }

    /// A held object's tag is `standby-state=legal-hold`, which no lifecycle rule acts on
    /// (it replaces `delivered`); released, the object has no tag, and the retention job
    /// decides alone.
    async fn set_legal_hold(&self, key: &str, hold: bool) -> Result<(), StoreError> {
        if let Some(a) = &self.archive {
            super::archive::legal_hold(&self.client, a, key, hold).await?;
        }
        let tag = if hold {
            Disposal::LegalHold
        } else {
            Disposal::Keep
        };
        self.mark(key, tag).await.map(|_| ())
    }

    async fn archive(
        &self,
        key: &str,
        bytes: &[u8],
        until: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        match &self.archive {
            Some(a) => super::archive::copy(&self.client, a, key, bytes, until).await,
            None => Ok(()),
        }
    }

    /// One GetObject: the body with its time and size (no HeadObject first).
    async fn read_all(&self, key: &str) -> Result<(Vec<u8>, BlobInfo), StoreError> {
        let out = self.get(key).await?;
        let stored_at = out.last_modified().map(to_chrono).unwrap_or_default();
        let bytes = body_bytes(out.body, key).await?;
        let info = BlobInfo {
            key: key.to_string(),
            stored_at,
            size: bytes.len() as u64,
        };
        Ok((bytes, info))
    }

    async fn stat(&self, key: &str) -> Result<BlobInfo, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    StoreError::MissingBlob(key.to_string())
                } else {
                    classify(BACKEND, "HeadObject", e)
                }
            })?;
        Ok(BlobInfo {
            key: key.to_string(),
            // Whole seconds, as ListObjectsV2 reports it: ingest and the reconciler derive
            // the same message id from it.
            stored_at: out.last_modified().map(to_chrono).unwrap_or_default(),
            size: u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0),
        })
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(BACKEND, "ListObjectsV2", e))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                // "Folder" placeholder objects and nested prefixes are not messages.
                if key.is_empty() || key.contains('/') {
                    continue;
                }
                out.push(BlobInfo {
                    key: key.to_string(),
                    stored_at: obj.last_modified().map(to_chrono).unwrap_or_default(),
                    size: u64::try_from(obj.size().unwrap_or(0)).unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    /// One `ListObjectsV2` request (`StartAfter`, `MaxKeys` up to S3's 1,000): keys come
    /// in UTF-8 binary order, which is `str`'s order (S3 API reference, ListObjectsV2).
    async fn list_page(&self, after: Option<&str>, max: usize) -> Result<BlobPage, StoreError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .set_start_after(after.map(|a| format!("{}{a}", self.prefix)))
            .max_keys(i32::try_from(max.clamp(1, 1000)).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| classify(BACKEND, "ListObjectsV2", e))?;
        let mut out = BlobPage::default();
        let mut last = None;
        for obj in page.contents() {
            let Some(key) = obj.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                continue;
            };
            last = Some(key.to_string());
            // "Folder" placeholder objects and nested prefixes are not messages.
            if key.is_empty() || key.contains('/') {
                continue;
            }
            out.blobs.push(BlobInfo {
                key: key.to_string(),
                stored_at: obj.last_modified().map(to_chrono).unwrap_or_default(),
                size: u64::try_from(obj.size().unwrap_or(0)).unwrap_or(0),
            });
        }
        if page.is_truncated() == Some(true) {
            out.next = last;
        }
        Ok(out)
    }
}

/// A blob larger than this is collected in a temporary file, not in memory.
pub const SPILL_AT: usize = 256 * 1024;

struct S3Writer {
    store: S3BlobStore,
    key: String,
    buf: Vec<u8>,
    /// The temporary file (removed when dropped) once the blob outgrew [`SPILL_AT`].
    spill: Option<(tempfile::TempPath, tokio::fs::File)>,
}

fn spill_error(e: std::io::Error) -> StoreError {
    StoreError::io(
        "collect a message for S3 in a temporary file",
        std::env::temp_dir(),
        e,
    )
}

#[async_trait]
impl BlobWriter for S3Writer {
    fn key(&self) -> Option<String> {
        self.key.contains('/').then(|| self.key.clone())
    }

    async fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        if self.spill.is_none() && self.buf.len() + buf.len() > SPILL_AT {
            let (file, path) = tempfile::NamedTempFile::new()
                .map_err(spill_error)?
                .into_parts();
            let mut file = tokio::fs::File::from_std(file);
            file.write_all(&self.buf).await.map_err(spill_error)?;
            self.buf = Vec::new();
            self.spill = Some((path, file));
        }
        match &mut self.spill {
            Some((_, file)) => file.write_all(buf).await.map_err(spill_error),
            None => {
                self.buf.extend_from_slice(buf);
                Ok(())
            }
        }
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        let S3Writer {
            store,
            key,
            buf,
            spill,
        } = *self;
        // `path` lives until the PUT is done (a retry reopens the file), then is removed.
        let (body, _path) = match spill {
            None => (ByteStream::from(buf), None),
            Some((path, mut file)) => {
                file.flush().await.map_err(spill_error)?;
                drop(file);
                let body = ByteStream::read_from()
                    .path(&path)
                    .build()
                    .await
                    .map_err(|e| internal(&e))?;
                (body, Some(path))
            }
        };
        store
            .client
            .put_object()
            .bucket(&store.bucket)
            .key(store.object_key(&key))
            .if_none_match("*")
            .content_type("message/rfc822")
            .body(body)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "PutObject", e))?;
        Ok(())
    }

    async fn abort(self: Box<Self>) {}
}
