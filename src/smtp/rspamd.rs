//! [`ContentCheck`] by rspamd's HTTP protocol (`POST /checkv2` to its normal worker).
//!
//! Spammers aim at the backup MX because it is often filtered less; with the emergency
//! inbox showing what the standby took, the standby filters as the primary would. The
//! session's facts travel as rspamd's request headers (`IP`, `Helo`, `From`, one `Rcpt`
//! per recipient, `Hostname`, `MTA-Name`), the message as the body; rspamd's `action`
//! decides: `reject` refuses at DATA, `soft reject` asks the client to retry, `no action`
//! and `greylist` store the message as clean, and anything else (`add header`, `rewrite
//! subject`, a custom `quarantine`) as spam, never as clean. rspamd's greylisting answers
//! `soft reject` with a `GREYLIST` symbol: greylisting the fallback MX only delays mail
//! the primary could not take, so the message is taken and judged by its score.
//!
//! `Hostname` is the client's, as rspamd means it: its reverse DNS name confirmed by a
//! forward lookup, else `unknown` (what Postfix tells a milter); the standby's own name
//! goes in `MTA-Name` only. Every header value is made visible ASCII first: a control
//! byte in a HELO would otherwise make the request fail and the message pass unfiltered.
//!
//! A filter that did not answer (timeout, refused connection) is not asked again for
//! [`QUIET`]: during an outage every 250 would otherwise wait out the timeout. That is
//! logged once per spell.
//!
//! The reply's free text (rspamd's `messages.smtp_message`) reaches the client only as
//! printable ASCII, cut short: it comes from rules an administrator may not have read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use serde::Deserialize;

use crate::ports::{ContentCheck, ContentMeta, ContentVerdict};

/// The longest reason from rspamd passed to a client.
const MAX_REASON: usize = 200;

/// How long a filter that did not answer is left alone.
const QUIET: Duration = Duration::from_secs(30);

/// The client's reverse DNS lookups are given this long.
const RDNS_LIMIT: Duration = Duration::from_secs(3);

/// rspamd over HTTP.
#[derive(Clone)]
pub struct Rspamd {
    client: reqwest::Client,
    url: String,
    resolver: Option<Arc<TokioResolver>>,
    /// Unix milliseconds until which the filter is not asked (it did not answer).
    quiet_until: Arc<AtomicI64>,
    /// The filter answered last time (to log once per spell).
    answering: Arc<AtomicBool>,
}

impl std::fmt::Debug for Rspamd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rspamd").field("url", &self.url).finish()
    }
}

impl Rspamd {
    /// A client for the worker at `base` (`http://127.0.0.1:11333`), each request
    /// bounded by `timeout`; the clients' host names looked up through `nameserver`
    /// (else the system's resolvers).
    ///
    /// # Errors
    /// `base` is not an http(s) URL, or the HTTP client cannot be built, as text.
    pub fn new(
        base: &str,
        timeout: Duration,
        nameserver: Option<SocketAddr>,
    ) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(base).map_err(|e| format!("{base:?}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!(
                "{base:?} is not an http:// URL (e.g. http://127.0.0.1:11333)"
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let resolver = match crate::dns::resolver(nameserver, true) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "rspamd: no resolver for the clients' host names; they are sent as unknown");
                None
            }
        };
        Ok(Rspamd {
            client,
            url: format!("{}/checkv2", base.trim_end_matches('/')),
            resolver,
            quiet_until: Arc::new(AtomicI64::new(0)),
            answering: Arc::new(AtomicBool::new(true)),
        })
    }

    /// The client's host name as rspamd means it: the reverse DNS name of `ip` whose
    /// forward lookup gives `ip` back, else `unknown`.
    async fn client_name(&self, ip: &str) -> String {
        let (Some(resolver), Ok(ip)) = (&self.resolver, ip.parse::<IpAddr>()) else {
            return "unknown".into();
        };
        let lookup = async {
            let names = resolver.reverse_lookup(ip).await.ok()?;
            let ptrs: Vec<String> = names
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::PTR(p) => Some(p.0.to_ascii()),
                    _ => None,
                })
                .collect();
            for ptr in ptrs {
                let confirmed = resolver
                    .lookup_ip(ptr.as_str())
                    .await
                    .is_ok_and(|ips| ips.iter().any(|a| a == ip));
                if confirmed {
                    return Some(ptr.trim_end_matches('.').to_string());
                }
            }
            None
        };
        tokio::time::timeout(RDNS_LIMIT, lookup)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "unknown".into())
    }

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// The filter did not answer: leave it alone for [`QUIET`], logged once per spell.
    fn went_quiet(&self, why: &str) {
        let quiet = i64::try_from(QUIET.as_millis()).unwrap_or(i64::MAX);
        self.quiet_until
            .store(Self::now_ms().saturating_add(quiet), Ordering::Relaxed);
        if self.answering.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %why, "rspamd does not answer: mail is taken unfiltered; asked again in 30 s");
        }
    }
}

/// `value` as visible ASCII (anything else as `?`), fit for an HTTP header.
fn visible(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// The part of rspamd's answer we act on.
#[derive(Debug, Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    required_score: f64,
    #[serde(default)]
    symbols: std::collections::HashMap<String, serde_json::Value>,
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

/// The verdict for rspamd's answer.
fn verdict(answer: &Answer) -> ContentVerdict {
    let reason = answer
        .messages
        .as_ref()
        .and_then(|m| m.smtp_message.as_deref())
        .map(printable)
        .filter(|r| !r.is_empty());
    let score = answer.score;
    match answer.action.as_str() {
        "reject" => ContentVerdict::Reject {
            reason: reason.unwrap_or_else(|| "spam message rejected".into()),
        },
        "soft reject" if answer.symbols.contains_key("GREYLIST") => {
            if answer.required_score > 0.0 && score >= answer.required_score {
                ContentVerdict::Spam { score }
            } else {
                ContentVerdict::Clean { score }
            }
        }
        "soft reject" => ContentVerdict::TryLater {
            reason: reason.unwrap_or_else(|| "try again later".into()),
        },
        "no action" | "greylist" => ContentVerdict::Clean { score },
        _ => ContentVerdict::Spam { score },
    }
}

#[async_trait]
impl ContentCheck for Rspamd {
    async fn check(&self, meta: &ContentMeta, message: Vec<u8>) -> Result<ContentVerdict, String> {
        if Self::now_ms() < self.quiet_until.load(Ordering::Relaxed) {
            return Err("not asked: rspamd did not answer in the last 30 s".into());
        }
        let client_name = self.client_name(&meta.ip).await;
        let mut req = self
            .client
            .post(&self.url)
            .header("IP", visible(&meta.ip))
            .header("Helo", visible(&meta.helo))
            .header("Hostname", visible(&client_name))
            .header("MTA-Name", visible(&meta.hostname))
            .header("From", visible(&meta.mail_from));
        for rcpt in &meta.rcpts {
            req = req.header("Rcpt", visible(rcpt));
        }
        let resp = match req.body(message).send().await {
            Ok(r) => r,
            Err(e) if e.is_builder() => {
                // Not the filter's fault: a request we could not make.
                tracing::error!(error = %e, "rspamd: the request could not be made");
                return Err(format!("request not made: {e}"));
            }
            Err(e) => {
                let why = if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    format!("request failed: {e}")
                };
                self.went_quiet(&why);
                return Err(why);
            }
        };
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        if !self.answering.swap(true, Ordering::Relaxed) {
            tracing::info!("rspamd answers again");
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
        // Custom actions are never clean; rspamd's greylisting is judged by the score.
        assert!(matches!(
            answer(r#"{"action":"quarantine","score":3}"#),
            ContentVerdict::Spam { .. }
        ));
        let grey = |score: u32| {
            answer(&format!(
                r#"{{"action":"soft reject","score":{score},"required_score":15,"symbols":{{"GREYLIST":{{}}}}}}"#
            ))
        };
        assert!(matches!(grey(2), ContentVerdict::Clean { .. }));
        assert!(matches!(grey(16), ContentVerdict::Spam { .. }));
    }

    #[test]
    fn header_values_are_made_visible_and_the_url_checked() {
        assert_eq!(visible("x\u{1}y z\u{7f}\u{e9}"), "x?y?z??");
        assert!(Rspamd::new("localhost:11333", Duration::from_secs(1), None).is_err());
        assert!(Rspamd::new("ftp://127.0.0.1", Duration::from_secs(1), None).is_err());
        assert!(Rspamd::new("http://127.0.0.1:11333/", Duration::from_secs(1), None).is_ok());
    }
}
