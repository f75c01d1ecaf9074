//! Wiring for the continuity loop (for `serve`, the drain function and `standby
//! continuity`): the [`Runner`] a config asks for, with the adapters
//! for its channels (the webhook and heartbeat over HTTP, SNS, mail through the outbound
//! path the caller has).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::continuity::Rules;
use crate::continuity::alerts::{self, Alerter, Webhook};
use crate::continuity::alternates;
use crate::continuity::notices::Templates;
use crate::continuity::runner::{Heartbeat, Notices, Runner};
use crate::error::ConfigError;
use crate::ports::{Clock, Mailer, Sns, Storage};
use crate::users::session::SessionKey;

/// What the caller has for the runner.
pub struct Parts {
    pub storage: Storage,
    pub clock: Arc<dyn Clock>,
    /// The outbound path's mailer, where this node has one.
    pub mailer: Option<Arc<dyn Mailer>>,
    /// The emergency inbox's session key (signs the notices' login links), where this
    /// node has it.
    pub key: Option<SessionKey>,
    /// For SNS, where the config names a topic or users have phones.
    pub sdk: Option<aws_config::SdkConfig>,
    /// Where the messages are, for the status view.
    pub store: String,
    /// The webhook's signing key, resolved by the caller (the drain function's may be a
    /// Secrets Manager ARN); `None`: `[alerts] webhook_secret_env`'s variable's value.
    pub webhook_secret: Option<Vec<u8>>,
    /// The alternates' text where they are not a file of `[continuity] alternates` (the
    /// bucket's `users/alternates.csv` on AWS): its name for errors, its bytes.
    pub alternates_text: Option<(String, Vec<u8>)>,
    /// Only to decide (an operator's `standby continuity`): no channel, no notices, so
    /// nothing the operator's shell lacks (the webhook's key, the alternates file) is
    /// needed; the nodes that run the loop send what the change owes.
    pub decide_only: bool,
}

fn invalid(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// The runner for `config`.
///
/// # Errors
/// A config error: the webhook's secret variable unset, the alternates file or a
/// template bad (naming file and line).
pub async fn runner(config: &Config, p: Parts) -> Result<Runner, ConfigError> {
    let a = &config.alerts;
    let base = Runner {
        storage: p.storage.clone(),
        clock: p.clock.clone(),
        node: config.node_id(),
        address: config.primary_addr(),
        store: p.store.clone(),
        rules: Rules::of(&config.continuity, a),
        channels: alerts::channels(a),
        alerter: Alerter::default(),
        notices: None,
        heartbeat: None,
    };
    if p.decide_only {
        return Ok(base);
    }
    let list = match (&config.continuity.alternates, &p.alternates_text) {
        (Some(path), _) => Some(
            alternates::load(path, &config.domains)
                .map_err(|e| invalid("[continuity] alternates", e))?,
        ),
        (None, Some((name, text))) => Some(alternates::parse(text, &config.domains).map_err(
            |(line, e)| invalid("[continuity] alternates", format!("{name}:{line}: {e}")),
        )?),
        (None, None) => None,
    };
    // SNS only where it is used: the topic, or a user with a phone.
    let phones = list
        .as_ref()
        .is_some_and(|l| l.values().any(|a| a.phone.is_some()));
    let sdk = match p.sdk {
        Some(sdk) => Some(sdk),
        None if a.sns_topic.is_some() || phones => Some(
            crate::backend::aws::sdk_config(
                config.region.as_deref(),
                config.endpoint_url.as_deref(),
            )
            .await,
        ),
        None => None,
    };
    let sns: Option<Arc<dyn Sns>> = sdk
        .as_ref()
        .map(|s| Arc::new(crate::backend::aws::SnsNotifier::new(s)) as Arc<dyn Sns>);
    let http = Arc::new(
        crate::backend::http::ReqwestHttp::new()
            .map_err(|e| invalid("[alerts] webhook", e.to_string()))?,
    );
    let webhook = match &a.webhook {
        Some(url) => {
            let secret = match (&p.webhook_secret, &a.webhook_secret_env) {
                (Some(secret), _) => Some(secret.clone()),
                (None, Some(var)) => Some(
                    std::env::var(var)
                        .map_err(|_| ConfigError::Env {
                            var: var.clone(),
                            message: "[alerts] webhook_secret_env names it, but it is not set"
                                .into(),
                        })?
                        .into_bytes(),
                ),
                (None, None) => None,
            };
            if secret.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(
                    "[alerts] webhook_secret_env",
                    "the webhook's key is empty: the signature would prove nothing",
                ));
            }
            Some(Webhook {
                http: http.clone(),
                url: url.clone(),
                secret,
                backoff: Duration::from_secs(1),
            })
        }
        None => None,
    };
    let console = a.console_url.clone().or_else(|| {
        config
            .web
            .public_url
            .as_ref()
            .map(|u| format!("{}/console", u.trim_end_matches('/')))
    });
    let alerter = Alerter {
        webhook,
        email: match (&p.mailer, a.email.is_empty()) {
            (Some(m), false) => Some((m.clone(), a.email.clone())),
            _ => None,
        },
        sns: match (&sns, &a.sns_topic) {
            (Some(s), Some(t)) => Some((s.clone(), t.clone())),
            _ => None,
        },
        console,
    };
    let notices = match list {
        Some(list) => {
            let templates = Templates::load(config.continuity.templates.as_deref())
                .map_err(|e| invalid("[continuity] templates", e))?;
            match (&config.web.public_url, &p.key) {
                (None, _) => tracing::warn!(
                    "[continuity] alternates without [web] public_url: users' notices cannot \
                     say where the emergency inbox is"
                ),
                (Some(_), None) => tracing::warn!(
                    "no session key here ([web] session_key_env): users' notices carry the \
                     emergency inbox's address but no one-time login link"
                ),
                _ => {}
            }
            Some(Notices {
                alternates: list,
                templates,
                mailer: p.mailer.clone(),
                sms: sns.clone(),
                key: p.key.clone(),
                inbox_url: config.web.public_url.clone(),
            })
        }
        None => None,
    };
    Ok(Runner {
        alerter,
        notices,
        heartbeat: a.heartbeat_url.clone().map(|url| Heartbeat {
            http,
            url,
            every: a.heartbeat_secs,
        }),
        ..base
    })
}
