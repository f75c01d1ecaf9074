//! Attachments uploaded by the browser straight to S3 (the [`Uploads`] port), for the
//! web function: a function URL carries at most 6 MB a request, a message up to 40 MB.
//!
//! The web app presigns a PUT of one object under `uploads/` with the function's own
//! role (so the role must be allowed `s3:PutObject` there; the URL lives 15 minutes),
//! the page's script sends the file there, and the send reads it back, builds the
//! message and removes the upload. The bucket's lifecycle rule expires what is left
//! under `uploads/` (a closed tab) after a day, and its CORS rule lets the browser PUT
//! from the function URL's origin (infra/template.yaml).

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::presigning::PresigningConfig;

use super::errors::classify;
use crate::error::StoreError;
use crate::ports::Uploads;

const BACKEND: &str = "s3";

/// Uploads in the mail bucket, under `uploads/`.
#[derive(Debug, Clone)]
pub struct S3Uploads {
    client: Client,
    bucket: String,
    origin: String,
}

impl S3Uploads {
    /// The uploads of `bucket`; `origin` is found by presigning a request (no network),
    /// so it is exactly where the browser will send the bytes.
    ///
    /// # Errors
    /// The SDK cannot presign (no region or credentials).
    pub async fn new(client: Client, bucket: &str) -> Result<Self, StoreError> {
        let mut up = S3Uploads {
            client,
            bucket: bucket.to_string(),
            origin: String::new(),
        };
        let url = up
            .presign_put("uploads/probe", 1, std::time::Duration::from_secs(60))
            .await?;
        up.origin = origin_of(&url);
        Ok(up)
    }
}

/// `scheme://host[:port]` of `url`.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    format!("{scheme}://{host}")
}

#[async_trait]
impl Uploads for S3Uploads {
    fn origin(&self) -> String {
        self.origin.clone()
    }

    async fn presign_put(
        &self,
        key: &str,
        size: u64,
        expires: std::time::Duration,
    ) -> Result<String, StoreError> {
        let config = PresigningConfig::expires_in(expires)
            .map_err(|e| super::errors::request_build(BACKEND, &e))?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            // Signed: S3 refuses a body of any other length (what was asked is what
            // the form's size limit checked).
            .content_length(i64::try_from(size).unwrap_or(i64::MAX))
            .presigned(config)
            .await
            .map_err(|e| classify(BACKEND, "PutObject (presign)", e))?;
        Ok(req.uri().to_string())
    }

    async fn read(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(out) = super::s3::get_if_any(&self.client, &self.bucket, key).await? else {
            return Ok(None);
        };
        let size = out.content_length().and_then(|n| u64::try_from(n).ok());
        if size.is_none_or(|n| n > max) {
            self.remove(key).await?;
            return Ok(None);
        }
        let bytes = super::s3::body_bytes(out.body, key).await?;
        if bytes.len() as u64 > max {
            self.remove(key).await?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "DeleteObject", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn the_origin_is_scheme_host_and_port() {
        assert_eq!(
            origin_of("https://b.s3.eu-west-1.amazonaws.com/uploads/x?X-Amz-Date=1"),
            "https://b.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:5000/b/uploads/x?X-Amz-Date=1"),
            "http://127.0.0.1:5000"
        );
    }

    /// The length is signed, so S3 refuses a body of another size.
    #[tokio::test]
    async fn the_presigned_put_signs_its_length() {
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(
                aws_sdk_s3::config::Credentials::for_tests(),
            ))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let up = super::S3Uploads::new(aws_sdk_s3::Client::new(&sdk), "mail")
            .await
            .unwrap();
        assert_eq!(up.origin, "https://mail.s3.eu-west-1.amazonaws.com");
        let url = crate::ports::Uploads::presign_put(
            &up,
            "uploads/u/1",
            4242,
            std::time::Duration::from_secs(900),
        )
        .await
        .unwrap();
        assert!(url.contains("X-Amz-Expires=900"), "{url}");
        let signed = url
            .split('&')
            .find(|p| p.contains("X-Amz-SignedHeaders="))
            .unwrap_or_default();
        assert!(signed.contains("content-length"), "{url}");
    }
}
