//! `DynamoEvents`: the continuity record and one-time marks as items of the index table.
//!
//! The record is one item, `pk = continuity`, its JSON beside `cver` (its version), and
//! every save is a `PutItem` conditional on the version read: two drain invocations or a
//! drain and a `standby serve` node that see the outage at once start one event. A mark
//! is an item `mark#<key>` put with `attribute_not_exists(pk)`, so exactly one caller
//! sets it; it carries a TTL (`expires_at`), counts as not set once past it, and
//! DynamoDB removes it some time afterwards.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::errors::classify;
use super::schema::{CONTINUITY_KEY, MARK_PREFIX, PK, TTL_ATTRIBUTE};
use crate::error::StoreError;
use crate::model::continuity::Continuity;
use crate::ports::EventStore;

const BACKEND: &str = "dynamodb";

#[derive(Debug, Clone)]
pub struct DynamoEvents {
    client: Client,
    table: String,
}

impl DynamoEvents {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoEvents {
            client,
            table: table.into(),
        }
    }
}

type PutError = aws_sdk_dynamodb::error::SdkError<
    aws_sdk_dynamodb::operation::put_item::PutItemError,
    aws_sdk_dynamodb::config::http::HttpResponse,
>;

/// The put's condition did not hold.
fn changed(e: &PutError) -> bool {
    e.as_service_error()
        .is_some_and(|se| se.is_conditional_check_failed_exception())
}

#[async_trait]
impl EventStore for DynamoEvents {
    async fn load(&self) -> Result<Continuity, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(CONTINUITY_KEY.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "GetItem (continuity)", e))?;
        let Some(json) = out
            .item()
            .and_then(|i| i.get("record"))
            .and_then(|v| v.as_s().ok())
        else {
            return Ok(Continuity::default());
        };
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
            id: CONTINUITY_KEY.into(),
            detail: e.to_string(),
        })
    }

    async fn save(&self, c: &Continuity) -> Result<(), StoreError> {
        let mut next = c.clone();
        next.version = c.version + 1;
        let json = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt {
            id: CONTINUITY_KEY.into(),
            detail: e.to_string(),
        })?;
        let condition = if c.version == 0 {
            "attribute_not_exists(pk)"
        } else {
            "cver = :v"
        };
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, AttributeValue::S(CONTINUITY_KEY.into()))
            .item("record", AttributeValue::S(json))
            .item("cver", AttributeValue::N(next.version.to_string()))
            .condition_expression(condition);
        if c.version != 0 {
            put = put.expression_attribute_values(":v", AttributeValue::N(c.version.to_string()));
        }
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e) if changed(&e) => Err(StoreError::FileChanged("the continuity record".into())),
            Err(e) => Err(classify(BACKEND, "PutItem (continuity)", e)),
        }
    }

    async fn mark_once(&self, key: &str, keep_until: DateTime<Utc>) -> Result<bool, StoreError> {
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, AttributeValue::S(format!("{MARK_PREFIX}{key}")))
            .item(
                TTL_ATTRIBUTE,
                AttributeValue::N(keep_until.timestamp().max(0).to_string()),
            )
            // DynamoDB removes an item past its TTL only within a few days: one past
            // its time counts as not set.
            .condition_expression("attribute_not_exists(pk) OR #t <= :now")
            .expression_attribute_names("#t", TTL_ATTRIBUTE)
            .expression_attribute_values(
                ":now",
                AttributeValue::N(Utc::now().timestamp().to_string()),
            )
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if changed(&e) => Ok(false),
            Err(e) => Err(classify(BACKEND, "PutItem (mark)", e)),
        }
    }

    async fn marked(&self, key: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(format!("{MARK_PREFIX}{key}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "GetItem (mark)", e))?;
        let until = out
            .item()
            .and_then(|i| i.get(TTL_ATTRIBUTE))
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok());
        Ok(until.is_some_and(|u| u > Utc::now().timestamp()))
    }

    async fn unmark(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(format!("{MARK_PREFIX}{key}")))
            .send()
            .await
            .map_err(|e| classify(BACKEND, "DeleteItem (mark)", e))?;
        Ok(())
    }
}
