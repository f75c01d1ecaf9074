//! The AWS-only commands: `standby aws-init` and `standby drain --remote`, and the relay
//! for a drain run from the operator's machine (password possibly in Secrets Manager).

use std::io::Write;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;

use super::CliError;
use crate::backend::aws::{AwsClients, AwsSettings};
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

/// The relay to the primary: on AWS the password variable may hold a secret ARN.
pub(super) async fn relay(config: &Config) -> Result<SmtpRelay, CliError> {
    match config.aws_settings() {
        Some(s) => {
            let clients = AwsClients::connect(&s).await;
            Ok(crate::lambda::relay_for(config, &clients).await?)
        }
        None => Ok(SmtpRelay::from_config(config)?),
    }
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

fn aws_err<E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static>(
    op: &str,
    e: aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> CliError {
    let detail = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string(),
    };
    CliError::Aws(format!("{op}: {detail}"))
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
        .map_err(|e| aws_err("Invoke", e))?;
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
