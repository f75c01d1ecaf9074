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

use super::errors::is_transient_code;
use crate::ports::{BlobReader, Guard, Outbound, Reply};

/// Sends through SES (see the module docs).
pub struct SesOutbound {
    client: aws_sdk_sesv2::Client,
}

impl SesOutbound {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        SesOutbound {
            client: aws_sdk_sesv2::Client::new(sdk),
        }
    }
}

/// The reply every recipient gets for an SES error code.
fn reply_for(code: &str, text: &str) -> Reply {
    let permanent = matches!(code, "MessageRejected" | "BadRequestException");
    if permanent && !is_transient_code(code) {
        Reply::new(554, format!("5.6.0 SES {code}: {text}"))
    } else {
        Reply::new(451, format!("4.4.0 SES {code}: {text}"))
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
        let raw = match RawMessage::builder().data(Blob::new(bytes)).build() {
            Ok(r) => r,
            Err(e) => return vec![Reply::new(451, format!("4.3.0 not sent: {e}")); n],
        };
        let sent = self
            .client
            .send_email()
            .from_email_address(mail_from)
            .destination(
                Destination::builder()
                    .set_to_addresses(Some(rcpts.to_vec()))
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
    }
}
