//! The AWS-only commands: `standby aws-init` and `standby drain --remote`, and the relay
//! for a drain run from the operator's machine (password possibly in Secrets Manager).

use std::io::Write;

use super::CliError;
use crate::backend::aws::{AwsClients, AwsSettings, classify};
use crate::config::Config;
use crate::lambda::drain::DrainSummary;
use crate::smtp::SmtpRelay;

fn settings(config: &Config, what: &str) -> Result<AwsSettings, CliError> {
    config.aws_settings().ok_or_else(|| {
        CliError::Usage(format!(
            "{what} needs backend = \"aws\" with bucket and table in the config"
        ))
    })
}

/// The relay to the primary (password possibly in Secrets Manager).
pub(super) async fn relay(config: &Config) -> Result<SmtpRelay, CliError> {
    Ok(crate::lambda::operator_relay(config).await?)
}

/// Create the bucket and the table if they do not exist; say what was done.
pub(super) async fn init(config: &Config) -> Result<(), CliError> {
    let s = settings(config, "aws-init")?;
    let clients = AwsClients::connect(&s).await;
    let done = crate::backend::aws::provision::ensure(&clients, &s).await?;
    let mut out = std::io::stdout().lock();
    for line in done {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Invoke the deployed drain function and print its summary.
pub(super) async fn remote_drain(
    config: &Config,
    function: &str,
    force: bool,
    dry_run: bool,
) -> Result<(), CliError> {
    let s = settings(config, "drain --remote")?;
    let clients = AwsClients::connect(&s).await;
    let lambda = aws_sdk_lambda::Client::new(&clients.sdk);
    let payload = serde_json::json!({ "force": force, "dry_run": dry_run });
    let out = lambda
        .invoke()
        .function_name(function)
        .payload(aws_sdk_lambda::primitives::Blob::new(payload.to_string()))
        .send()
        .await
        .map_err(|e| classify("lambda", "Invoke", e))?;
    let body = out
        .payload()
        .map(|b| b.as_ref().to_vec())
        .unwrap_or_default();
    if let Some(err) = out.function_error() {
        return Err(CliError::Aws(format!(
            "drain function {function} failed ({err}): {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let summary: DrainSummary = serde_json::from_slice(&body).map_err(|e| {
        CliError::Aws(format!(
            "drain function {function} returned something else than a summary ({e}): {}",
            String::from_utf8_lossy(&body)
        ))
    })?;
    let mut o = std::io::stdout().lock();
    serde_json::to_writer(&mut o, &summary).map_err(std::io::Error::from)?;
    writeln!(o)?;
    Ok(())
}
