//! `standby-web`: the emergency inbox as a Lambda function behind a function URL.
//!
//! The same [`router`](crate::web::router) `standby serve` hosts, over the serverless
//! store: records and messages read from DynamoDB and S3, users from the bucket's
//! `users/passwd` (read again once a minute, so `standby user add` takes effect without a
//! deploy), login limits and audit entries as items in the table. Sessions must survive
//! from one instance to the next, so the key is required: `STANDBY_WEB_SESSION_KEY_ENV`
//! names the variable that holds it, or the ARN of the Secrets Manager secret that does
//! (the template makes one). The function URL streams responses (`RESPONSE_STREAM`), so a
//! 40 MB raw message is not held to a buffered URL's 6 MB.
//!
//! Users send from here too ([`crate::outbound::Sending`]): what they write is stored
//! under `serve/` like any message the standby accepts itself, and with
//! `STANDBY_OUTBOUND_MODE=ses` the outbound queue runs right after the message is
//! stored, within the request (a function does no work between requests; what is left,
//! the drain function's next run sends). A request to a function URL carries at most
//! 6 MB, so attachments go to S3 first by a presigned PUT ([`S3Uploads`]).

use std::sync::Arc;
use std::time::Duration;

use super::{SetupError, WARM_WITHIN, aws_settings};
use crate::backend::aws::{AwsClients, S3Uploads, secrets};
use crate::config::Config;
use crate::error::ConfigError;
use crate::ports::{Storage, SystemClock};
use crate::users::Users;
use crate::web::{SessionKey, Web, WebSettings};

/// What the web function assumes before its environment: the AWS backend, and no
/// primary (it never talks to one).
const WEB_DEFAULTS: &str = "backend = \"aws\"\nhostname = \"standby-web.invalid\"\n\
[primary]\naddress = \"no-primary.invalid\"\n";

/// The web app for the function, from its environment.
///
/// # Errors
/// A configuration error (no bucket or table, no session key), the session key's
/// secret cannot be read, or the users cannot be read.
pub async fn web_from_env() -> Result<Arc<Web>, SetupError> {
    let env = std::env::vars().filter(|(_, v)| !v.is_empty());
    let config = Config::from_parts(
        std::path::Path::new("(Lambda environment)"),
        WEB_DEFAULTS,
        env,
    )?;
    let settings = aws_settings(&config)?;
    let clients = AwsClients::connect(&settings).await;
    clients.warm(&settings, WARM_WITHIN).await;
    let var = config
        .web
        .session_key_env
        .clone()
        .ok_or_else(|| ConfigError::Env {
            var: "STANDBY_WEB_SESSION_KEY_ENV".into(),
            message: "the web function needs a session key shared by its instances: name the \
                  variable holding it (or its Secrets Manager ARN)"
                .into(),
        })?;
    let value = std::env::var(&var).map_err(|_| ConfigError::Env {
        var: var.clone(),
        message: "STANDBY_WEB_SESSION_KEY_ENV names it, but it is not set".into(),
    })?;
    let secret = secrets::resolve(&clients.sdk, &value).await?;
    let key = SessionKey::from_secret(secret.as_bytes()).map_err(|e| ConfigError::Env {
        var,
        message: e.to_string(),
    })?;
    // Read at the first request (and every minute): a users file that cannot be read
    // right now lets nobody in, and is read again, instead of failing every start.
    let users = Users::empty(
        Arc::new(clients.user_files(&settings)),
        config.users.default_domain.clone(),
        Some(Duration::from_secs(60)),
    );
    // Served over the function URL's HTTPS.
    let secure = true;
    // What users write is stored like what `serve` accepts itself: under serve/.
    let storage = Storage::aws_serve(&clients, &settings);
    let clock: Arc<dyn crate::ports::Clock> = Arc::new(SystemClock);
    let limits: Arc<dyn crate::ports::LoginLimits> = Arc::new(clients.login_limits(&settings));
    let sending = sending(&config, &storage, &clients, clock.clone(), limits.clone());
    let uploads = S3Uploads::new(clients.s3.clone(), &settings.bucket).await?;
    Ok(Arc::new(Web {
        storage,
        checks: crate::web::check_slots(),
        slowest_check: Default::default(),
        users: Arc::new(users),
        limits,
        in_flight: Arc::default(),
        sending: Some(sending),
        uploads: Some(Arc::new(uploads)),
        key,
        clock,
        settings: WebSettings {
            purge_only_under: Some(crate::config::SERVE_PREFIX.into()),
            ..WebSettings::of(&config, secure)
        },
        drain_now: None,
    }))
}

/// How long a send waits for the outbound queue before answering: SES takes well under
/// a second a message; what is left, the drain function's next run sends.
const DELIVER_WITHIN: Duration = Duration::from_secs(20);

/// What users send: to colleagues always (held with the rest of their mail), to
/// outside recipients when `STANDBY_OUTBOUND_MODE=ses` (the template sets it with
/// sending enabled), sent through SES within the request.
fn sending(
    config: &Config,
    storage: &Storage,
    clients: &AwsClients,
    clock: Arc<dyn crate::ports::Clock>,
    limits: Arc<dyn crate::ports::LoginLimits>,
) -> crate::outbound::Sending {
    let spool = crate::ingest::Spool::new(storage.clone(), clock.clone(), config.hostname.clone());
    let sending = crate::outbound::Sending::new(
        storage.clone(),
        Arc::new(spool),
        clock,
        &config.domains,
        config.outbound.sent_copy.clone(),
    )
    .with_rate(config.submission.rate_per_hour)
    // Each instance is a process of its own: the hourly count is kept in the table.
    .with_shared_rate(limits);
    match super::outbound_queue(config, storage, clients) {
        Some(queue) => sending
            .with_outside(true)
            .with_deliver_now(queue, DELIVER_WITHIN),
        None => sending.with_outside(false),
    }
}

/// The client's address the function URL saw (`requestContext.http.sourceIp`).
pub fn client_ip(req: &lambda_http::Request) -> Option<crate::web::ClientIp> {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx
            .http
            .source_ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .map(crate::web::ClientIp),
        _ => None,
    }
}
