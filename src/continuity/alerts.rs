//! Administrator alerts, out of band: what each channel gets for one alert.
//!
//! - **webhook**: a JSON POST whose body is `standby status --json` plus `"event"` (the
//!   alert's kind), `"detail"` and `"console"`; signed, when `[alerts] webhook_secret_env`
//!   names a key, with `X-Standby-Signature: sha256=<hex HMAC-SHA256 of the body>` so the
//!   receiver can tell it from a forgery. Tried three times a call, then again at the next
//!   tick.
//! - **email**: plain text to `[alerts] email` through the outbound path (a smarthost,
//!   direct delivery or SES): never through the primary that is down.
//! - **sns**: the same text published to `[alerts] sns_topic` (the stack's alarm topic,
//!   whose subscribers get it by e-mail or SMS).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::AlertsConfig;
use crate::error::NotifyError;
use crate::model::PrimaryState;
use crate::model::continuity::{AlertKind, Channel, PendingAlert};
use crate::ports::{Http, Mailer, Sns};
use crate::status::StatusView;

/// The header carrying the webhook body's signature.
pub const SIGNATURE_HEADER: &str = "X-Standby-Signature";

/// Where alerts go, and what with.
#[derive(Clone, Default)]
pub struct Alerter {
    pub webhook: Option<Webhook>,
    /// `[alerts] email` and the way out.
    pub email: Option<(Arc<dyn Mailer>, Vec<String>)>,
    /// The topic and the client.
    pub sns: Option<(Arc<dyn Sns>, String)>,
    /// The console, for the alerts' link.
    pub console: Option<String>,
}

/// The alert webhook.
#[derive(Clone)]
pub struct Webhook {
    pub http: Arc<dyn Http>,
    pub url: String,
    /// The signing key (`[alerts] webhook_secret_env`'s value).
    pub secret: Option<Vec<u8>>,
    /// Pause between the tries of one call.
    pub backoff: Duration,
}

/// The channels `[alerts]` names: an alert is owed on each, whichever node sends it.
pub fn channels(a: &AlertsConfig) -> Vec<Channel> {
    let mut out = Vec::new();
    if a.webhook.is_some() {
        out.push(Channel::Webhook);
    }
    if !a.email.is_empty() {
        out.push(Channel::Email);
    }
    if a.sns_topic.is_some() {
        out.push(Channel::Sns);
    }
    out
}

impl Alerter {
    /// Whether this node has a way to send on `channel`.
    pub fn can(&self, channel: Channel) -> bool {
        match channel {
            Channel::Webhook => self.webhook.is_some(),
            Channel::Email => self.email.is_some(),
            Channel::Sns => self.sns.is_some(),
        }
    }

    /// Send `alert` on `channel`.
    ///
    /// # Errors
    /// The channel's failure (the alert stays owed on that channel).
    pub async fn send(
        &self,
        channel: Channel,
        alert: &PendingAlert,
        status: &StatusView,
    ) -> Result<(), NotifyError> {
        match channel {
            Channel::Webhook => {
                let Some(w) = &self.webhook else {
                    return Err(unavailable("webhook"));
                };
                let body = webhook_body(alert, status, self.console.as_deref());
                let mut headers = vec![("Content-Type", "application/json".to_string())];
                if let Some(secret) = &w.secret {
                    headers.push((SIGNATURE_HEADER, signature(secret, &body)));
                }
                let mut last = None;
                for attempt in 0..3u32 {
                    if attempt > 0 {
                        tokio::time::sleep(w.backoff * attempt).await;
                    }
                    match w.http.post(&w.url, &headers, body.clone()).await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| NotifyError::new("webhook", "not tried")))
            }
            Channel::Email => {
                let Some((mailer, to)) = &self.email else {
                    return Err(unavailable("email"));
                };
                let (subject, text) = text(alert, status, self.console.as_deref());
                mailer.mail(to, &subject, &text).await
            }
            Channel::Sns => {
                let Some((sns, topic)) = &self.sns else {
                    return Err(unavailable("sns"));
                };
                let (subject, text) = text(alert, status, self.console.as_deref());
                sns.publish(topic, &subject, &text).await
            }
        }
    }
}

/// This node cannot send on the channel (no outbound path here): another node will.
fn unavailable(channel: &'static str) -> NotifyError {
    NotifyError::new(channel, "not available on this node; left to another")
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The webhook's JSON: the status view, `"event"`, `"detail"`, `"event_id"`, `"console"`.
pub fn webhook_body(alert: &PendingAlert, status: &StatusView, console: Option<&str>) -> Vec<u8> {
    let mut v = serde_json::to_value(status).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("event".into(), alert.kind.as_str().into());
        obj.insert("detail".into(), alert.detail.clone().into());
        obj.insert("event_id".into(), alert.event.clone().into());
        obj.insert("raised_at".into(), alert.at.to_rfc3339().into());
        obj.insert("console".into(), console.map(str::to_string).into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The subject and text of a mail or SNS alert: what happened, the status summary and
/// the console's link.
pub fn text(alert: &PendingAlert, s: &StatusView, console: Option<&str>) -> (String, String) {
    let what = match alert.kind {
        AlertKind::Started => "continuity event started",
        AlertKind::Ongoing => "continuity event still under way",
        AlertKind::Ended => "continuity event ended: mail is back at the primary",
        AlertKind::Cap => "continuity event past its planned length",
        AlertKind::DrainErrors => "redelivery to the primary is failing",
        AlertKind::Breaker => "redelivery halted by the circuit breaker",
    };
    let subject = format!("[standby] {what}");
    let p = &s.primary;
    let mut t = format!("{what}.\n");
    if !alert.detail.is_empty() {
        t.push_str(&format!("\n{}\n", alert.detail));
    }
    t.push_str(&format!(
        "\nPrimary   {} {}{}\n",
        p.address,
        p.state,
        p.since
            .map(|s| format!(" since {}", s.format("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default()
    ));
    let c = &s.counts;
    t.push_str(&format!(
        "Messages  held {}  paused {}  delivered {}  failed {}\n",
        c.held, c.paused, c.delivered, c.failed
    ));
    if let Some(o) = s.oldest_held {
        t.push_str(&format!(
            "Oldest    held since {}\n",
            o.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if let Some(ev) = &s.continuity {
        t.push_str(&format!(
            "Event     {} started {} ({})\n",
            ev.id,
            ev.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            ev.started_by
        ));
    }
    if p.state == PrimaryState::Down {
        t.push_str("\nMail for your domains is being held by the standby and will be delivered when the primary is back.\n");
    }
    if let Some(url) = console {
        t.push_str(&format!("\nConsole: {url}\n"));
    }
    t.push_str("\n-- \nstandby-mx\n");
    (subject, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
