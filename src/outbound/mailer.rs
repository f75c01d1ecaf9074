//! [`Mailer`] over the outbound path: the standby's own mail (continuity alerts and
//! notices) goes out the way users' mail to outside recipients does (a smarthost, direct
//! delivery, SES), queued durably and retried with the drain's backoff; never through the
//! primary, which is what is down.

use async_trait::async_trait;
use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;

use super::Sending;
use crate::error::NotifyError;
use crate::ports::Mailer;

/// The standby's own mail, from `from` (`standby@<first domain>`).
#[derive(Clone)]
pub struct SystemMailer {
    pub sending: Sending,
    pub from: String,
    /// For Message-IDs.
    pub hostname: String,
}

#[async_trait]
impl Mailer for SystemMailer {
    async fn mail(&self, to: &[String], subject: &str, text: &str) -> Result<(), NotifyError> {
        let now = chrono::Utc::now();
        let message = MessageBuilder::new()
            .from(("Standby mail server".to_string(), self.from.clone()))
            .to(to.to_vec())
            .subject(subject)
            .date(now.timestamp())
            .message_id(format!("{}@{}", ulid::Ulid::new(), self.hostname))
            .header("Auto-Submitted", Raw::new("auto-generated"))
            .text_body(text)
            .write_to_vec()
            .map_err(|e| NotifyError::new("email", e.to_string()))?;
        self.sending
            .send_system(&self.from, to, &message)
            .await
            .map(|_| ())
            .map_err(|e| NotifyError::new("email", e.to_string()))
    }
}
