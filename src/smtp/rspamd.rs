//! [`ContentCheck`] by rspamd's HTTP protocol (`POST /checkv2` to its normal worker).
//!
//! Spammers aim at the backup MX because it is often filtered less; with the emergency
//! inbox showing what the standby took, the standby filters as the primary would. The
//! session's facts travel as rspamd's request headers (`IP`, `Helo`, `From`, one `Rcpt`
//! per recipient, `Hostname`), the message as the body; rspamd's `action` decides:
//! `reject` refuses at DATA, `soft reject` asks the client to retry, `add header` and
//! `rewrite subject` store the message as spam, anything else as clean. `greylist` is
//! taken as clean: greylisting the fallback MX only delays mail the primary could not
//! take.
//!
//! The reply's free text (rspamd's `messages.smtp_message`) reaches the client only as
//! printable ASCII, cut short: it comes from rules an administrator may not have read.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::ports::{ContentCheck, ContentMeta, ContentVerdict};

/// The longest reason from rspamd passed to a client.
const MAX_REASON: usize = 200;

/// rspamd over HTTP.
#[derive(Debug, Clone)]
pub struct Rspamd {
    client: reqwest::Client,
    url: String,
}

impl Rspamd {
    /// A client for the worker at `base` (`http://127.0.0.1:11333`), each request
    /// bounded by `timeout`.
    ///
    /// # Errors
    /// The HTTP client cannot be built, as text.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Rspamd {
            client,
            url: format!("{}/checkv2", base.trim_end_matches('/')),
        })
    }
}

/// The part of rspamd's answer we act on.
#[derive(Debug, Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    messages: Option<Messages>,
}

#[derive(Debug, Deserialize)]
struct Messages {
    #[serde(default)]
    smtp_message: Option<String>,
}

/// `text` safe to put in an SMTP reply: printable ASCII only, at most [`MAX_REASON`].
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_REASON)
        .collect::<String>()
        .trim()
        .to_string()
}

/// The verdict for rspamd's `action`.
fn verdict(answer: &Answer) -> ContentVerdict {
    let reason = answer
        .messages
        .as_ref()
        .and_then(|m| m.smtp_message.as_deref())
        .map(printable)
        .filter(|r| !r.is_empty());
    match answer.action.as_str() {
        "reject" => ContentVerdict::Reject {
            reason: reason.unwrap_or_else(|| "spam message rejected".into()),
        },
        "soft reject" => ContentVerdict::TryLater {
            reason: reason.unwrap_or_else(|| "try again later".into()),
        },
        "add header" | "rewrite subject" => ContentVerdict::Spam {
            score: answer.score,
        },
        _ => ContentVerdict::Clean {
            score: answer.score,
        },
    }
}

#[async_trait]
impl ContentCheck for Rspamd {
    async fn check(&self, meta: &ContentMeta, message: Vec<u8>) -> Result<ContentVerdict, String> {
        let mut req = self
            .client
            .post(&self.url)
            .header("IP", &meta.ip)
            .header("Helo", &meta.helo)
            .header("Hostname", &meta.hostname)
            .header("MTA-Name", &meta.hostname)
            .header("From", &meta.mail_from);
        for rcpt in &meta.rcpts {
            req = req.header("Rcpt", rcpt);
        }
        let resp = req.body(message).send().await.map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "cannot connect".to_string()
            } else {
                "request failed".to_string()
            }
        })?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|_| "answer cut short".to_string())?;
        let answer: Answer =
            serde_json::from_slice(&body).map_err(|e| format!("unreadable answer: {e}"))?;
        Ok(verdict(&answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> ContentVerdict {
        verdict(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn actions_become_verdicts_and_reasons_stay_printable() {
        assert_eq!(
            answer(
                r#"{"action":"reject","score":20,"messages":{"smtp_message":"Gtube\r\n250 ok\u0007"}}"#
            ),
            ContentVerdict::Reject {
                reason: "Gtube250 ok".into()
            }
        );
        assert!(matches!(
            answer(r#"{"action":"soft reject","score":1}"#),
            ContentVerdict::TryLater { .. }
        ));
        assert_eq!(
            answer(r#"{"action":"add header","score":7.5}"#),
            ContentVerdict::Spam { score: 7.5 }
        );
        assert!(matches!(
            answer(r#"{"action":"rewrite subject","score":9}"#),
            ContentVerdict::Spam { .. }
        ));
        for clean in ["no action", "greylist"] {
            assert!(matches!(
                answer(&format!(r#"{{"action":"{clean}","score":1}}"#)),
                ContentVerdict::Clean { .. }
            ));
        }
    }
}
