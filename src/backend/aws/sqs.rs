//! `SqsFailedEvents`: the ingest function's on-failure queue (the template's
//! `IngestFailures`), read by the drain function.
//!
//! Lambda puts an invocation record there once an asynchronous event has failed its
//! retries: `{"requestContext": ..., "requestPayload": <the event>, "responseContext":
//! ..., "responsePayload": <the error>}` (Lambda developer guide, "Capturing records of
//! Lambda asynchronous invocations"). A received message stays invisible for
//! `visibility` and comes back unless deleted, so an event whose record is still leased
//! is simply tried again by a later run; the queue keeps it for 14 days.

use std::time::Duration;

use async_trait::async_trait;

use super::errors::classify;
use crate::error::StoreError;
use crate::ports::{FailedEvent, FailedEvents};

const BACKEND: &str = "sqs";

pub struct SqsFailedEvents {
    client: aws_sdk_sqs::Client,
    url: String,
    visibility: Duration,
}

impl SqsFailedEvents {
    /// The queue at `url`; a taken event is hidden from other readers for `visibility`.
    pub fn new(sdk: &aws_config::SdkConfig, url: impl Into<String>, visibility: Duration) -> Self {
        SqsFailedEvents {
            client: aws_sdk_sqs::Client::new(sdk),
            url: url.into(),
            visibility,
        }
    }
}

/// The event inside a queue message: the invocation record's `requestPayload`, or the
/// body itself when it is an event (sent there by hand).
fn event_of(body: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    match v.get("requestPayload") {
        Some(p) if !p.is_null() => Some(p.clone()),
        _ => v.get("Records").is_some().then_some(v),
    }
}

#[async_trait]
impl FailedEvents for SqsFailedEvents {
    async fn take(&self, max: usize) -> Result<Vec<FailedEvent>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(self.visibility.as_secs().min(43_200) as i32)
            .wait_time_seconds(0)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .map_err(|e| classify(BACKEND, "receive failed ingest events", e))?;
        let mut events = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let receives = m
                .attributes
                .as_ref()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                })
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let Some(handle) = m.receipt_handle else {
                continue;
            };
            match m.body.as_deref().and_then(event_of) {
                Some(event) => events.push(FailedEvent {
                    handle,
                    event,
                    receives,
                }),
                None => tracing::warn!(
                    message_id = m.message_id.as_deref().unwrap_or(""),
                    "ingest failure queue: a message without an SES event; left in the queue"
                ),
            }
        }
        Ok(events)
    }

    async fn done(&self, handle: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "delete an ingested event", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_the_invocation_records_request_payload() {
        let record = r#"{"version":"1.0","requestContext":{"condition":"RetriesExhausted"},
            "requestPayload":{"Records":[{"ses":{}}]},"responsePayload":{"errorType":"X"}}"#;
        assert_eq!(
            event_of(record),
            Some(serde_json::json!({"Records":[{"ses":{}}]}))
        );
        assert!(event_of(r#"{"Records":[]}"#).is_some());
        assert_eq!(event_of("not json"), None);
        assert_eq!(event_of(r#"{"requestPayload":null}"#), None);
    }
}
