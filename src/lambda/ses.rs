//! The SES Lambda-action event, parsed leniently.
//!
//! A mail server must accept whatever SES hands it: `commonHeaders` lacks `from` for some
//! messages, `headersTruncated` is set for headers over 10 KB, verdict objects may be
//! absent. `aws_lambda_events`' types reject several of these (a missing
//! `commonHeaders.from` fails the whole invocation), so this module has its own structs
//! where every field has a default and `null` reads as empty.
//!
//! What counts for delivery is `mail.source` (the envelope MAIL FROM) and
//! `receipt.recipients` (the envelope RCPT TO matched by the receipt rule), never
//! `mail.destination` (the header recipients, which include addresses of other domains
//! and miss Bcc).

use serde::{Deserialize, Deserializer};

use crate::model::Verdicts;

/// The whole event: one record per message (SES sends one).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SesEvent {
    #[serde(rename = "Records", deserialize_with = "nullable")]
    pub records: Vec<SesRecord>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SesRecord {
    pub event_source: Option<String>,
    pub ses: SesPayload,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SesPayload {
    pub mail: SesMail,
    pub receipt: SesReceipt,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SesMail {
    pub timestamp: Option<String>,
    /// Envelope MAIL FROM.
    pub source: Option<String>,
    /// SES's message id: the S3 object key after the rule's prefix.
    pub message_id: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub destination: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub headers_truncated: bool,
    #[serde(deserialize_with = "nullable")]
    pub common_headers: CommonHeaders,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CommonHeaders {
    #[serde(deserialize_with = "nullable")]
    pub from: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub to: Vec<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub date: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SesReceipt {
    pub timestamp: Option<String>,
    /// Envelope RCPT TO addresses matched by the receipt rule.
    #[serde(deserialize_with = "nullable")]
    pub recipients: Vec<String>,
    pub spam_verdict: Option<Verdict>,
    pub virus_verdict: Option<Verdict>,
    pub spf_verdict: Option<Verdict>,
    pub dkim_verdict: Option<Verdict>,
    pub dmarc_verdict: Option<Verdict>,
    pub dmarc_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Verdict {
    pub status: Option<String>,
}

impl SesReceipt {
    /// The verdicts as the record keeps them.
    pub fn verdicts(&self) -> Verdicts {
        let st = |v: &Option<Verdict>| v.as_ref().and_then(|v| v.status.clone());
        Verdicts {
            spam: st(&self.spam_verdict),
            virus: st(&self.virus_verdict),
            spf: st(&self.spf_verdict),
            dkim: st(&self.dkim_verdict),
            dmarc: st(&self.dmarc_verdict),
            dmarc_policy: self.dmarc_policy.clone(),
        }
    }
}

/// `null` reads as the type's default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl SesEvent {
    /// Parse an event; only a payload that is not a JSON object at all is an error.
    pub fn parse(value: serde_json::Value) -> Result<SesEvent, serde_json::Error> {
        serde_json::from_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_missing_and_null_fields() {
        let ev = SesEvent::parse(serde_json::json!({
            "Records": [{"ses": {
                "mail": {"messageId": "abc", "commonHeaders": {"from": null}, "destination": null},
                "receipt": {"recipients": ["a@example.test"], "virusVerdict": {"status": "FAIL"}}
            }}]
        }))
        .unwrap();
        let r = &ev.records[0].ses;
        assert_eq!(r.mail.message_id.as_deref(), Some("abc"));
        assert!(r.mail.common_headers.from.is_empty());
        assert_eq!(r.receipt.verdicts().virus.as_deref(), Some("FAIL"));
        assert_eq!(r.receipt.verdicts().spam, None);
    }
}
