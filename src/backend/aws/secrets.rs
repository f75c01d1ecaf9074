//! The primary's SMTP password on AWS: a Secrets Manager ARN in the environment.
//!
//! The variable named by `primary.auth_password_env` holds either the password itself
//! (tests, simple setups) or the ARN of a secret. A secret's string is the password, or a
//! JSON object with a `password` key (the shape the console's "other type of secret"
//! produces). The value is fetched once per process (per Lambda cold start).

use thiserror::Error;

const ARN_PREFIX: &str = "arn:aws:secretsmanager:";

/// The secret could not be read.
#[derive(Debug, Error)]
pub enum SecretError {
    #[error("reading secret {arn}: {detail}")]
    Fetch { arn: String, detail: String },
    #[error("secret {arn} has no string value (binary secrets are not supported)")]
    NotString { arn: String },
}

/// Whether a value names a Secrets Manager secret rather than being the password.
pub fn is_secret_arn(value: &str) -> bool {
    value.starts_with(ARN_PREFIX)
}

/// Resolve `value` to the password: fetched when it is a secret ARN, else itself.
pub async fn resolve(sdk: &aws_config::SdkConfig, value: &str) -> Result<String, SecretError> {
    if !is_secret_arn(value) {
        return Ok(value.to_string());
    }
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let out = client
        .get_secret_value()
        .secret_id(value)
        .send()
        .await
        .map_err(|e| SecretError::Fetch {
            arn: value.to_string(),
            detail: aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
        })?;
    let text = out.secret_string().ok_or_else(|| SecretError::NotString {
        arn: value.to_string(),
    })?;
    Ok(password_from(text))
}

/// The password in a secret string: the `password` field of a JSON object, or the text.
fn password_from(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("password")?.as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_shapes() {
        assert_eq!(password_from("hunter2"), "hunter2");
        assert_eq!(password_from(r#"{"username":"u","password":"p w"}"#), "p w");
        assert_eq!(password_from(r#"{"user":"u"}"#), r#"{"user":"u"}"#);
        assert!(is_secret_arn("arn:aws:secretsmanager:us-east-1:1:secret:x"));
        assert!(!is_secret_arn("arn-like password"));
    }
}
