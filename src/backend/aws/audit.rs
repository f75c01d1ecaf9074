//! `DynamoAuditLog`: audit entries as items of the index table.
//!
//! Each entry is its own item, `pk = audit#<ulid>`, written with
//! `attribute_not_exists(pk)` and never updated or deleted by any code path (the drain's
//! IAM policy may not `DeleteItem` on them either; see the template). They sit in the
//! status index under the partition `audit`, sorted by time, so `standby audit` is one
//! paged `Query` in order. No TTL is ever set on them.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::errors::classify;
use super::schema::{AUDIT_PREFIX, AUDIT_STATUS, GSI, GSI_PK, GSI_SK, PK};
use crate::error::StoreError;
use crate::ports::{AuditEntry, AuditLog};

const BACKEND: &str = "dynamodb";

#[derive(Debug, Clone)]
pub struct DynamoAuditLog {
    client: Client,
    table: String,
}

impl DynamoAuditLog {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoAuditLog {
            client,
            table: table.into(),
        }
    }

    /// The entries in time order (`forward`) or newest first, all or at most `max`.
    async fn read(&self, forward: bool, max: Option<usize>) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let left = max.map(|m| m.saturating_sub(out.len()));
            if left == Some(0) {
                return Ok(out);
            }
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI)
                .key_condition_expression("#s = :s")
                .expression_attribute_names("#s", GSI_PK)
                .expression_attribute_values(":s", AttributeValue::S(AUDIT_STATUS.into()))
                .scan_index_forward(forward)
                .set_limit(left.map(|l| i32::try_from(l).unwrap_or(i32::MAX)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "Query (audit)", e))?;
            for item in page.items() {
                let json = item
                    .get("record")
                    .and_then(|v| v.as_s().ok())
                    .map(String::as_str)
                    .unwrap_or_default();
                out.push(serde_json::from_str(json).map_err(|e| {
                    StoreError::Corrupt {
                        id: item
                            .get(PK)
                            .and_then(|v| v.as_s().ok())
                            .cloned()
                            .unwrap_or_default(),
                        detail: e.to_string(),
                    }
                })?);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(out);
            }
        }
    }
}

#[async_trait]
impl AuditLog for DynamoAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt {
            id: entry
                .id
                .map(|i| i.to_string())
                .unwrap_or_else(|| entry.action.clone()),
            detail: e.to_string(),
        })?;
        let key = ulid::Ulid::new().to_string();
        let sort = format!("{:013}#{key}", entry.at.timestamp_millis().max(0));
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PK, AttributeValue::S(format!("{AUDIT_PREFIX}{key}")))
            .item(GSI_PK, AttributeValue::S(AUDIT_STATUS.into()))
            .item(GSI_SK, AttributeValue::S(sort))
            .item("record", AttributeValue::S(json))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| classify(BACKEND, "PutItem (audit)", e))?;
        Ok(())
    }

    async fn entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(true, None).await
    }

    /// One Query from the end, `max` items: the console's page costs what it shows.
    async fn recent(&self, max: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(false, Some(max)).await
    }
}
