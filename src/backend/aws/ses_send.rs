//! `SesOutbound`: the [`Outbound`] adapter of the `ses` mode: each message to its outside
//! recipients in one SESv2 `SendEmail` call with raw content (up to 40 MB; SES v1's
//! `SendRawEmail` stops at 10 MB). SES signs with the domain's Easy DKIM itself, so the
//! queue adds no signature of its own in this mode.
//!
//! SES answers for the whole message: accepted (2xx for every recipient; a recipient
//! that bounces later is SES's bounce to the envelope sender, the user), refused on the
//! message's merits (`MessageRejected`, a bad address: 5xx), or not now (throttling, a
//! paused account, an identity not verified yet, the service unreachable: 4xx, tried
//! again with the queue's backoff; an administrator fixes the cause meanwhile).

use async_trait::async_trait;
use aws_sdk_sesv2::error::ProvideErrorMetadata;
use aws_sdk_sesv2::primitives::Blob;
use aws_sdk_sesv2::types::{Destination, EmailContent, RawMessage};
use aws_smithy_runtime_api::client::result::SdkError;
use tokio::io::AsyncReadExt;

use crate::ports::{BlobReader, Guard, Outbound, Reply};

/// Sends through SES (see the module docs).
pub struct SesOutbound {
    client: aws_sdk_sesv2::Client,
}

impl SesOutbound {
    /// One attempt per call: the outbound queue tries again itself, and an SDK retry of
    /// a send whose answer was lost would send the message twice.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        let conf = aws_sdk_sesv2::config::Builder::from(sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        SesOutbound {
            client: aws_sdk_sesv2::Client::from_conf(conf),
        }
    }
}

/// Recipients per `SendEmail` call (SES's limit).
const MAX_DESTINATIONS: usize = 50;

/// The reply every recipient gets for an SES error code. An identity that is not
/// verified (yet) answers `MessageRejected` too: that is the administrator's to fix, and
/// tried again; a message refused on what it is fails; a suspended account fails.
fn reply_for(code: &str, text: &str) -> Reply {
    let unverified = text.to_ascii_lowercase().contains("not verified");
    match code {
        "MessageRejected" if unverified => Reply::new(451, format!("4.7.0 SES {code}: {text}")),
        "MessageRejected" | "BadRequestException" => {
            Reply::new(554, format!("5.6.0 SES {code}: {text}"))
        }
        "AccountSuspendedException" => Reply::new(554, format!("5.7.0 SES {code}: {text}")),
        _ => Reply::new(451, format!("4.4.0 SES {code}: {text}")),
    }
}

#[async_trait]
impl Outbound for SesOutbound {
    async fn send(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        guard: &Guard<'_>,
    ) -> Vec<Reply> {
        let n = rcpts.len();
        // The lease is checked as the body ends, as for SMTP: read through the guard, and
        // send nothing once the queue no longer holds the message.
        let mut body: BlobReader = guard(Box::new(std::io::Cursor::new(message.to_vec())));
        let mut bytes = Vec::with_capacity(message.len());
        if let Err(e) = body.read_to_end(&mut bytes).await {
            return vec![Reply::new(451, format!("4.3.0 not sent: {e}")); n];
        }
        // SES takes 50 destinations a call: more go in more calls, each batch answered
        // on its own.
        let mut replies = Vec::with_capacity(n);
        for batch in rcpts.chunks(MAX_DESTINATIONS) {
            replies.extend(self.send_batch(mail_from, batch, &bytes).await);
        }
        replies
    }
}

impl SesOutbound {
    async fn send_batch(&self, mail_from: &str, rcpts: &[String], bytes: &[u8]) -> Vec<Reply> {
        let n = rcpts.len();
        let raw = match RawMessage::builder()
            .data(Blob::new(bytes.to_vec()))
            .build()
        {
            Ok(r) => r,
            Err(e) => return vec![Reply::new(451, format!("4.3.0 not sent: {e}")); n],
        };
        // In RFC 5321 form: a decoded quoted local part (`d, e@x`) quoted again, so SES
        // reads one address, the one the user gave.
        let wire = |a: &str| {
            crate::model::address::Address::from_decoded(a)
                .map_or_else(|_| a.to_string(), |a| a.to_smtp())
        };
        let sent = self
            .client
            .send_email()
            .from_email_address(wire(mail_from))
            .destination(
                Destination::builder()
                    .set_to_addresses(Some(rcpts.iter().map(|r| wire(r)).collect()))
                    .build(),
            )
            .content(EmailContent::builder().raw(raw).build())
            .send()
            .await;
        match sent {
            Ok(out) => {
                let id = out.message_id().unwrap_or("");
                vec![Reply::new(250, format!("2.0.0 sent by SES as {id}")); n]
            }
            Err(SdkError::ServiceError(se)) => {
                let e = se.err();
                let code = e.code().unwrap_or("unknown");
                let text = e.message().unwrap_or("");
                tracing::warn!(code, text, "outbound: SES refused the message");
                vec![reply_for(code, text); n]
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbound: SES not reachable");
                vec![Reply::new(451, format!("4.4.1 SES: {e}")); n]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(reply_for("MessageRejected", "x").code, 554);
        assert_eq!(reply_for("TooManyRequestsException", "x").code, 451);
        assert_eq!(reply_for("SendingPausedException", "x").code, 451);
        assert_eq!(
            reply_for("MailFromDomainNotVerifiedException", "x").code,
            451
        );
        assert_eq!(
            reply_for("MessageRejected", "Email address is not verified.").code,
            451
        );
        assert_eq!(reply_for("AccountSuspendedException", "x").code, 554);
    }
}
