//! `[continuity]` and `[alerts]`: when an outage becomes an event, who hears about it
//! and how (see [`crate::continuity`]).

use std::path::PathBuf;

use serde::Deserialize;

use super::{lenient, lenient_opt, mail_address_list};

/// When an event starts and ends by itself, and the users' notices (`[continuity]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContinuityConfig {
    /// An event starts once the primary has been down this long, or once held mail is
    /// this old and nothing was delivered in that time.
    #[serde(default = "default_start_after", deserialize_with = "lenient")]
    pub start_after_secs: u64,
    /// It ends once the primary has been up with nothing due this long.
    #[serde(default = "default_end_after", deserialize_with = "lenient")]
    pub end_after_secs: u64,
    /// After this many hours the event alerts (`cap`) and goes on.
    #[serde(default = "default_max_hours", deserialize_with = "lenient")]
    pub max_hours: u32,
    /// CSV file `address,alternate_email,phone`: where each user hears about an event.
    #[serde(default)]
    pub alternates: Option<PathBuf>,
    /// A directory with `start.txt` and `end.txt`, the notices' text (built-in text for
    /// a file that is missing).
    #[serde(default)]
    pub templates: Option<PathBuf>,
}

impl Default for ContinuityConfig {
    fn default() -> Self {
        ContinuityConfig {
            start_after_secs: default_start_after(),
            end_after_secs: default_end_after(),
            max_hours: default_max_hours(),
            alternates: None,
            templates: None,
        }
    }
}

fn default_start_after() -> u64 {
    600
}
fn default_end_after() -> u64 {
    900
}
fn default_max_hours() -> u32 {
    96
}

/// Administrator alerts, out of band (`[alerts]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A URL that gets each alert as a JSON POST.
    #[serde(default)]
    pub webhook: Option<String>,
    /// The variable holding the key that signs the webhook's body
    /// (`X-Standby-Signature: sha256=<hex HMAC-SHA256>`).
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// External addresses that get each alert by mail (through the outbound path).
    #[serde(default, deserialize_with = "mail_address_list")]
    pub email: Vec<String>,
    /// An SNS topic ARN each alert is published to (on AWS, the stack's alarm topic).
    #[serde(default)]
    pub sns_topic: Option<String>,
    /// How often an event under way is alerted again.
    #[serde(default = "default_repeat", deserialize_with = "lenient")]
    pub repeat_secs: u64,
    /// A URL requested every `heartbeat_secs` (a dead man's switch).
    #[serde(default)]
    pub heartbeat_url: Option<String>,
    #[serde(default = "default_heartbeat", deserialize_with = "lenient")]
    pub heartbeat_secs: u64,
    /// The console's address for the alerts' link (default: `[web] public_url`).
    #[serde(default, deserialize_with = "lenient_opt")]
    pub console_url: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook: None,
            webhook_secret_env: None,
            email: Vec::new(),
            sns_topic: None,
            repeat_secs: default_repeat(),
            heartbeat_url: None,
            heartbeat_secs: default_heartbeat(),
            console_url: None,
        }
    }
}

fn default_repeat() -> u64 {
    3600
}
fn default_heartbeat() -> u64 {
    300
}

impl AlertsConfig {
    /// Whether any administrator channel is set.
    pub fn any(&self) -> bool {
        self.webhook.is_some() || !self.email.is_empty() || self.sns_topic.is_some()
    }

    /// What is wrong with the section, if anything.
    pub(super) fn check(&self, continuity: &ContinuityConfig) -> Result<(), String> {
        for (key, url) in [
            ("webhook", &self.webhook),
            ("heartbeat_url", &self.heartbeat_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err(format!(
                    "[alerts] {key} `{url}` must be an http:// or https:// URL"
                ));
            }
        }
        if self.webhook_secret_env.is_some() && self.webhook.is_none() {
            return Err("[alerts] webhook_secret_env is set without a webhook".into());
        }
        if self.repeat_secs == 0 || self.heartbeat_secs == 0 {
            return Err("[alerts] repeat_secs and heartbeat_secs must be at least 1".into());
        }
        if continuity.start_after_secs == 0 || continuity.end_after_secs == 0 {
            return Err(
                "[continuity] start_after_secs and end_after_secs must be at least 1".into(),
            );
        }
        if continuity.max_hours == 0 || continuity.max_hours > 24 * 366 {
            return Err("[continuity] max_hours must be 1 to 8784 (a year)".into());
        }
        let month = 31 * 86_400;
        if [
            continuity.start_after_secs,
            continuity.end_after_secs,
            self.repeat_secs,
            self.heartbeat_secs,
        ]
        .iter()
        .any(|&s| s > month)
        {
            return Err(
                "[continuity] start_after_secs, end_after_secs and [alerts] repeat_secs, \
                 heartbeat_secs are at most 2678400 (31 days)"
                    .into(),
            );
        }
        Ok(())
    }
}
