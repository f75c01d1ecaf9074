//! The two Lambda functions' handlers, kept in the library so tests call them directly
//! and the binaries in `functions/` stay wiring only.
//!
//! - [`ingest`]: `standby-ingest`, invoked by the SES receipt rule after its S3 action.
//! - [`drain`]: `standby-drain`, invoked every minute by the schedule.
//! - [`reconcile`]: objects without records, run by the drain.
//! - [`ses`]: the lenient SES event.
//! - [`web`]: `standby-web`, the emergency inbox behind a function URL.
//!
//! Both functions read only environment variables, with the same names as every other
//! entry point ([`Config::from_lambda_env`]): `STANDBY_BUCKET`, `STANDBY_TABLE`,
//! `STANDBY_PREFIX` (default `incoming/`), for the drain `STANDBY_PRIMARY_ADDRESS` and
//! the other `[primary]` keys, `STANDBY_METRICS_STACK`, and so on; an empty value means
//! unset, because a template cannot leave a variable out. The primary's password (or its
//! Secrets Manager ARN) is in the variable `STANDBY_PRIMARY_AUTH_PASSWORD_ENV` names.
//! The standard `AWS_REGION` and `AWS_ENDPOINT_URL` apply unless `STANDBY_REGION` or
//! `STANDBY_ENDPOINT_URL` override them.

pub mod drain;
pub mod ingest;
pub mod metrics;
pub mod reconcile;
pub mod ses;
pub mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::aws::sqs::SqsFailedEvents;
use crate::backend::aws::{AwsClients, AwsSettings, secrets};
use crate::config::{Config, JournalAllow};
use crate::error::ConfigError;
use crate::ports::Storage;
use crate::smtp::SmtpRelay;

/// How long a function's init waits for its connections to open (Lambda gives an init
/// 10 s; a slow start only moves the handshakes to the first invocation).
const WARM_WITHIN: Duration = Duration::from_secs(3);

/// Everything a function needs, or why it cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Relay(#[from] crate::smtp::client::RelaySetupError),
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Store(#[from] crate::error::StoreError),
}

/// JSON logs for CloudWatch; level from `STANDBY_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::config::ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_ansi(false)
        .without_time() // CloudWatch stamps each line
        .init();
}

/// The ingest function: storage from the environment, and the journal addresses
/// (`STANDBY_JOURNAL_ADDRESSES`) with the domains whose recipients a copy keeps
/// (`STANDBY_DOMAINS`).
pub async fn ingest_from_env() -> Result<ingest::Ingest, SetupError> {
    let config = Config::from_ingest_env(std::env::vars())?;
    let settings = AwsSettings {
        // Ingest never writes a delivered record.
        keep_delivered_days: None,
        ..aws_settings(&config)?
    };
    let clients = AwsClients::connect(&settings).await;
    clients.warm(&settings, WARM_WITHIN).await;
    Ok(ingest::Ingest::new(
        Storage::aws(&clients, &settings),
        format!("s3://{}/{}", settings.bucket, settings.prefix),
    )
    .with_journal(config.journal(), journal_allow(&config))
    .with_retention(config.retention()))
}

/// Where SES may have received journal copies from: `STANDBY_JOURNAL_ALLOW`; unset,
/// only the primary's address when it is an IP literal (the function resolves no names).
pub fn journal_allow(config: &Config) -> JournalAllow {
    match &config.journal.allow {
        Some(nets) => JournalAllow::new(nets.clone()),
        None => {
            let host = config.primary_addr();
            let host = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
            let ip = host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .ok();
            JournalAllow::new(ip.into_iter().map(Into::into).collect())
        }
    }
}

fn aws_settings(config: &Config) -> Result<AwsSettings, ConfigError> {
    config.aws_settings().ok_or_else(|| ConfigError::Env {
        var: "STANDBY_BUCKET, STANDBY_TABLE".into(),
        message: "both must be set".into(),
    })
}

/// The drain function: config, storage and the relay (password or secret resolved once).
pub async fn drain_from_env() -> Result<drain::DrainFunction, SetupError> {
    let config = Config::from_lambda_env(std::env::vars())?;
    let settings = aws_settings(&config)?;
    let clients = AwsClients::connect(&settings).await;
    clients.warm(&settings, WARM_WITHIN).await;
    let relay = relay_for(&config, &clients).await?;
    let queue = config
        .ingest_failures_queue
        .clone()
        .filter(|q| !q.is_empty());
    let storage = Storage::aws(&clients, &settings);
    let outbound = outbound_queue(&config, &storage, &clients);
    // A continuity setting that does not work (a missing key, a bad alternates file) must
    // not stop the drain: held mail is delivered, and each run logs why there are no
    // alerts (the function's error log, and its alarm, say so).
    let continuity = continuity_runner(&config, &storage, &clients, outbound.is_some()).await;
    let mut function = drain::DrainFunction::new(config, storage, relay);
    match continuity {
        Ok(runner) => function = function.with_continuity(runner),
        Err(e) => {
            tracing::error!(error = %e, "continuity events are off: their setup failed; held mail is still delivered");
            function = function.with_continuity_error(e.to_string());
        }
    }
    if let Some(q) = outbound {
        function = function.with_outbound(q);
    }
    Ok(match queue {
        // Hidden for 5 minutes once taken: longer than a run (the function's timeout).
        Some(url) => function.with_failed_events(std::sync::Arc::new(SqsFailedEvents::new(
            &clients.sdk,
            url,
            std::time::Duration::from_secs(300),
        ))),
        None => function,
    })
}

/// The drain function's continuity loop: alerts by mail and users' notices go out
/// through SES (the outbound queue the same run sends), when sending is on; the login
/// links are signed with the web function's session key, when the function has it.
pub async fn continuity_runner(
    config: &Config,
    storage: &Storage,
    clients: &AwsClients,
    sends: bool,
) -> Result<crate::continuity::runner::Runner, SetupError> {
    let clock: Arc<dyn crate::ports::Clock> = Arc::new(crate::ports::SystemClock);
    let mailer = match (sends, config.domains.first()) {
        (true, Some(domain)) => {
            let spool =
                crate::ingest::Spool::new(storage.clone(), clock.clone(), config.hostname.clone());
            let sending = crate::outbound::Sending::new(
                storage.clone(),
                Arc::new(spool),
                clock.clone(),
                &config.domains,
                None,
            )
            .with_outside(true);
            Some(Arc::new(crate::outbound::mailer::SystemMailer {
                sending,
                from: format!("standby@{domain}"),
                hostname: config.hostname.clone(),
            }) as Arc<dyn crate::ports::Mailer>)
        }
        _ => None,
    };
    // Named but missing or short is a setup error: links signed with another key would
    // all be refused by the web function.
    let key = match &config.web.session_key_env {
        Some(var) => {
            let value = std::env::var(var).map_err(|_| ConfigError::Env {
                var: var.clone(),
                message: "STANDBY_WEB_SESSION_KEY_ENV names it, but it is not set".into(),
            })?;
            let secret = secrets::resolve(&clients.sdk, &value).await?;
            Some(
                crate::web::SessionKey::from_secret(secret.as_bytes()).map_err(|e| {
                    ConfigError::Env {
                        var: var.clone(),
                        message: e.to_string(),
                    }
                })?,
            )
        }
        None => None,
    };
    let webhook_secret = match &config.alerts.webhook_secret_env {
        Some(var) => {
            let value = std::env::var(var).map_err(|_| ConfigError::Env {
                var: var.clone(),
                message: "STANDBY_ALERTS_WEBHOOK_SECRET_ENV names it, but it is not set".into(),
            })?;
            Some(secrets::resolve(&clients.sdk, &value).await?.into_bytes())
        }
        None => None,
    };
    // The alternates: a file named in the environment (tests), else the bucket's.
    let alternates_text = match (&config.continuity.alternates, config.aws_settings()) {
        (None, Some(settings)) => clients.user_files(&settings).read_alternates().await?,
        _ => None,
    };
    Ok(crate::serve::continuity::runner(
        config,
        crate::serve::continuity::Parts {
            storage: storage.clone(),
            clock,
            mailer,
            key,
            sdk: Some(clients.sdk.clone()),
            store: config.store_description(),
            webhook_secret,
            decide_only: false,
            alternates_text,
        },
    )
    .await?)
}

/// The outbound queue a drain function runs when `[outbound] mode = "ses"` (the template
/// sets it with sending enabled): what users sent through `serve` goes out even when no
/// node is up.
pub fn outbound_queue(
    config: &Config,
    storage: &Storage,
    clients: &AwsClients,
) -> Option<crate::outbound::queue::OutboundQueue> {
    if config.outbound.mode != Some(crate::config::OutboundMode::Ses) {
        return None;
    }
    Some(crate::outbound::queue::OutboundQueue::new(
        storage.clone(),
        std::sync::Arc::new(crate::backend::aws::SesOutbound::new(&clients.sdk)),
        std::sync::Arc::new(crate::ports::SystemClock),
        None,
        (&crate::serve::drain_settings(config)).into(),
    ))
}

/// The relay for a drain (or a check) run from the operator's machine: the password
/// variable may hold a Secrets Manager ARN; only then are AWS clients needed to read it.
pub async fn operator_relay(config: &Config) -> Result<SmtpRelay, SetupError> {
    let arn =
        crate::smtp::client::password_from_env(config)?.is_some_and(|v| secrets::is_secret_arn(&v));
    match config.aws_settings() {
        Some(s) if arn => {
            let clients = AwsClients::connect(&s).await;
            relay_for(config, &clients).await
        }
        _ => Ok(SmtpRelay::from_config(config)?),
    }
}

/// The relay to the primary, with the password resolved from Secrets Manager when the
/// variable holds a secret ARN.
pub async fn relay_for(config: &Config, clients: &AwsClients) -> Result<SmtpRelay, SetupError> {
    let password = match crate::smtp::client::password_from_env(config)? {
        Some(v) => Some(secrets::resolve(&clients.sdk, &v).await?),
        None => None,
    };
    Ok(SmtpRelay::with_password(config, password)?)
}

/// The Lambda context's deadline (ms since the epoch) as an `Instant`.
///
/// `None` when the value cannot be an epoch time (before 2020): `cargo lambda watch`
/// sends the timeout itself (`600000`) instead of a point in time, and treating that as
/// 1970 would make every run stop before claiming anything.
pub fn deadline_instant(deadline_ms: u64) -> Option<Instant> {
    const YEAR_2020_MS: u64 = 1_577_836_800_000;
    if deadline_ms < YEAR_2020_MS {
        tracing::warn!(
            deadline_ms,
            "the invocation deadline is not a time; running without one"
        );
        return None;
    }
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    Some(Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms)))
}
