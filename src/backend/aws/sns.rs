//! [`Sns`] with the SNS client: alerts to the alarm topic (its e-mail and SMS
//! subscribers), and notices by SMS straight to a user's phone (`Publish` with
//! `PhoneNumber`, transactional, so carriers deliver it promptly).

use async_trait::async_trait;
use aws_sdk_sns::Client;
use aws_sdk_sns::types::MessageAttributeValue;

use crate::error::NotifyError;
use crate::ports::Sns;

#[derive(Debug, Clone)]
pub struct SnsNotifier {
    client: Client,
}

impl SnsNotifier {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        SnsNotifier {
            client: Client::new(sdk),
        }
    }
}

/// SNS takes a subject of at most 100 printable ASCII characters.
fn subject(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    clean.chars().take(100).collect()
}

#[async_trait]
impl Sns for SnsNotifier {
    async fn publish(&self, topic: &str, subj: &str, text: &str) -> Result<(), NotifyError> {
        self.client
            .publish()
            .topic_arn(topic)
            .subject(subject(subj))
            .message(text)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                NotifyError::new(
                    "sns",
                    aws_sdk_sns::error::DisplayErrorContext(e).to_string(),
                )
            })
    }

    async fn sms(&self, phone: &str, text: &str) -> Result<(), NotifyError> {
        let kind = MessageAttributeValue::builder()
            .data_type("String")
            .string_value("Transactional")
            .build()
            .map_err(|e| NotifyError::new("sms", e.to_string()))?;
        self.client
            .publish()
            .phone_number(phone)
            .message(text)
            .message_attributes("AWS.SNS.SMS.SMSType", kind)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                NotifyError::new(
                    "sms",
                    aws_sdk_sns::error::DisplayErrorContext(e).to_string(),
                )
            })
    }
}
