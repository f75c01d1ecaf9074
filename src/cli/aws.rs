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

/// How long `drain --remote` waits for the drain function's answer: Lambda's longest
/// run (15 minutes) and a margin.
const INVOKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60 + 30);

/// Invoke the deployed drain function and print its summary.
pub(super) async fn remote_drain(
    config: &Config,
    function: &str,
    force: bool,
    dry_run: bool,
) -> Result<(), CliError> {
    let s = settings(config, "drain --remote")?;
    let clients = AwsClients::connect(&s).await;
    // A synchronous Invoke answers when the run ends, which takes up to the function's
    // timeout (300 s in the template, 900 s at most on Lambda): the shared clients' 30 s
    // attempt timeout would give up mid-run, and their retries would start a second run
    // (or be throttled by the reserved concurrency the first one holds). One attempt,
    // waiting as long as Lambda lets a run last.
    let lambda = aws_sdk_lambda::Client::from_conf(
        aws_sdk_lambda::config::Builder::from(&clients.sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .read_timeout(INVOKE_TIMEOUT)
                    .operation_attempt_timeout(INVOKE_TIMEOUT)
                    .operation_timeout(INVOKE_TIMEOUT)
                    .build(),
            )
            .build(),
    );
    let payload = serde_json::json!({ "force": force, "dry_run": dry_run });
    let out = lambda
        .invoke()
        .function_name(function)
        .payload(aws_sdk_lambda::primitives::Blob::new(payload.to_string()))
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|se| se.is_too_many_requests_exception())
            {
                CliError::Aws(format!(
                    "drain function {function} is busy (TooManyRequestsException: a run, \
                     the schedule's or another operator's, holds its reserved concurrency); \
                     nothing was started: try again when it ends"
                ))
            } else {
                classify("lambda", "Invoke", e).into()
            }
        })?;
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
