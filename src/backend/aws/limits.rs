//! Login rate limits in the index table, shared by every instance of the web function
//! (each Lambda instance is its own process: a count kept in memory would let an
//! attacker spread attempts over instances).
//!
//! One item per key, `limit#<key>`, with the window's start and the failures so far, and
//! a TTL so DynamoDB removes it afterwards. Whether a key may try is one strongly
//! consistent read; a failure is one conditional write: one more in the running window,
//! else a new window once the old one ended (two instances counting at once both count:
//! the losing write is tried again).

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Duration, Utc};

use super::dynamo::is_condition_failed;
use super::errors::classify;
use super::schema::{PK, TTL_ATTRIBUTE};
use crate::error::StoreError;
use crate::ports::LoginLimits;

const BACKEND: &str = "dynamodb";
/// The key prefix of limit items (the web function's policy allows writes to these).
pub const LIMIT_PREFIX: &str = "limit#";

/// Login limits as items of the index table.
#[derive(Debug, Clone)]
pub struct DynamoLoginLimits {
    client: Client,
    table: String,
}

impl DynamoLoginLimits {
    pub fn new(client: Client, table: &str) -> Self {
        DynamoLoginLimits {
            client,
            table: table.to_string(),
        }
    }
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl DynamoLoginLimits {
    /// The window item of `key`: its start (ms) and failures, read strongly consistent.
    async fn window(&self, key: &str) -> Result<Option<(i64, i64)>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(format!("{LIMIT_PREFIX}{key}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "GetItem (login limit)", e))?;
        let field = |name: &str| {
            item.item()
                .and_then(|i| i.get(name))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        Ok(field("window_start").map(|s| (s, field("attempts").unwrap_or(0))))
    }
}

#[async_trait]
impl LoginLimits for DynamoLoginLimits {
    async fn blocked(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window: Duration,
        max: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let now_ms = now.timestamp_millis();
        Ok(self.window(key).await?.and_then(|(start, n)| {
            let ends = start + window.num_milliseconds();
            (ends > now_ms && n >= i64::from(max)).then(|| Duration::milliseconds(ends - now_ms))
        }))
    }

    async fn failed(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<u32, StoreError> {
        let pk = AttributeValue::S(format!("{LIMIT_PREFIX}{key}"));
        let now_ms = now.timestamp_millis();
        let open_since = now_ms - window.num_milliseconds();
        // The item outlives its window by a day (TTL deletion is lazy anyway).
        let ttl = (now + window + Duration::days(1)).timestamp();
        // One more in the running window, else a new window: each a conditional write,
        // so two instances counting at once both count. A write that lost a race is
        // tried again (a few times).
        for _ in 0..4 {
            let counted = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, pk.clone())
                .update_expression("SET #c = if_not_exists(#c, :zero) + :one")
                .condition_expression("attribute_exists(#pk) AND #s > :open")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#c", "attempts")
                .expression_attribute_names("#s", "window_start")
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":zero", n(0))
                .expression_attribute_values(":open", n(open_since))
                .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
                .send()
                .await;
            match counted {
                Ok(out) => {
                    let count = out
                        .attributes()
                        .and_then(|a| a.get("attempts"))
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(u32::MAX);
                    return Ok(count);
                }
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(classify(BACKEND, "UpdateItem (login limit)", e)),
            }
            let started = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(PK, pk.clone())
                .item("window_start", n(now_ms))
                .item("attempts", n(1))
                .item(TTL_ATTRIBUTE, n(ttl))
                .condition_expression("attribute_not_exists(#pk) OR #s <= :open")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#s", "window_start")
                .expression_attribute_values(":open", n(open_since))
                .send()
                .await;
            match started {
                Ok(_) => return Ok(1),
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(classify(BACKEND, "PutItem (login limit)", e)),
            }
        }
        Err(StoreError::Backend {
            backend: BACKEND,
            detail: format!("login limit {key}: too much contention"),
            transient: true,
            source: None,
        })
    }
}
