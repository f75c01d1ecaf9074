//! The DynamoDB side of `standby list --from / --rcpt`: the sender attribute of message
//! items, and the recipient items that the `by_rcpt` index is built on.
//!
//! A message has one sender but many recipients, and a GSI keys one value per item, so
//! each recipient address gets an item of its own, `rcpt#<id>#<address>`, written before
//! the message item (an indexed message always has them) and rewritten or deleted when
//! the message's addresses, its TTL, or the message itself go. They carry the message's
//! TTL, so DynamoDB expires them together. A recipient item whose message is gone (a
//! crash between the two writes) is skipped by the query that finds it.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};

use super::errors::classify;
use super::schema::{GSI_SK, PK, RCPT_ATTR, RCPT_PREFIX, TTL_ATTRIBUTE};
use crate::error::StoreError;
use crate::model::{MessageId, Record};

const BACKEND: &str = "dynamodb";
/// BatchWriteItem takes at most 25 requests.
const BATCH: usize = 25;

type Item = std::collections::HashMap<String, AttributeValue>;

/// The `sender` attribute: the envelope sender in lower case, `<>` for the null sender.
pub(super) fn sender_key(mail_from: &str) -> String {
    if mail_from.is_empty() {
        "<>".into()
    } else {
        mail_from.to_lowercase()
    }
}

/// A record's recipient addresses, lower case, each once, and the untagged form of each
/// tagged one (`user@` for `user+tag@`): a user's mailbox reads their own partition
/// only, and finds their tagged mail there ([`mailbox_keys`]). `--rcpt` still lists
/// only exact matches (the listing checks each record it reads).
pub(super) fn addresses(rec: &Record) -> BTreeSet<String> {
    let mut set: BTreeSet<String> = rec.rcpts.iter().map(|r| r.address.to_lowercase()).collect();
    let untagged: Vec<String> = set.iter().filter_map(|a| crate::model::untag(a)).collect();
    set.extend(untagged);
    set
}

/// The recipient partitions holding a mailbox's mail: one per address.
pub(super) fn mailbox_keys(mb: &crate::ports::MailboxFilter) -> Vec<String> {
    let mut keys: Vec<String> = mb.addresses.iter().map(|a| a.to_lowercase()).collect();
    keys.dedup();
    keys
}

fn rcpt_pk(id: MessageId, address: &str) -> String {
    format!("{RCPT_PREFIX}{id}#{address}")
}

/// The message id in a recipient item's key.
pub(super) fn id_of(item: &Item) -> Option<MessageId> {
    let pk = item.get(PK)?.as_s().ok()?;
    let rest = pk.strip_prefix(RCPT_PREFIX)?;
    rest.split('#').next()?.parse().ok()
}

pub(super) fn ttl_of(item: &Item) -> Option<String> {
    item.get(TTL_ATTRIBUTE)?.as_n().ok().cloned()
}

async fn batch(
    client: &Client,
    table: &str,
    mut reqs: Vec<WriteRequest>,
) -> Result<(), StoreError> {
    while !reqs.is_empty() {
        let rest = reqs.split_off(reqs.len().min(BATCH));
        let mut chunk = std::mem::replace(&mut reqs, rest);
        // Unprocessed requests (throttling) are sent again, a few times.
        for _ in 0..5 {
            let out = client
                .batch_write_item()
                .request_items(table, chunk)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "BatchWriteItem (recipients)", e))?;
            chunk = out
                .unprocessed_items()
                .and_then(|m| m.get(table))
                .cloned()
                .unwrap_or_default();
            if chunk.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if !chunk.is_empty() {
            return Err(StoreError::Backend {
                backend: BACKEND,
                detail: "BatchWriteItem (recipients): requests left unprocessed".into(),
                transient: true,
                source: None,
            });
        }
    }
    Ok(())
}

/// Write the recipient items of `rec` (with the message's TTL, if any).
pub(super) async fn put_rcpts(
    client: &Client,
    table: &str,
    rec: &Record,
    recv: &str,
    ttl: Option<String>,
) -> Result<(), StoreError> {
    let mut reqs = Vec::new();
    for a in addresses(rec) {
        let mut item = Item::new();
        item.insert(PK.into(), AttributeValue::S(rcpt_pk(rec.id, &a)));
        item.insert(RCPT_ATTR.into(), AttributeValue::S(a));
        item.insert(GSI_SK.into(), AttributeValue::S(recv.to_string()));
        if let Some(t) = &ttl {
            item.insert(TTL_ATTRIBUTE.into(), AttributeValue::N(t.clone()));
        }
        let put = PutRequest::builder()
            .set_item(Some(item))
            .build()
            .map_err(|e| internal(&e))?;
        reqs.push(WriteRequest::builder().put_request(put).build());
    }
    batch(client, table, reqs).await
}

/// Delete the recipient items of message `id` for these addresses.
pub(super) async fn delete_rcpts(
    client: &Client,
    table: &str,
    id: MessageId,
    addresses: impl IntoIterator<Item = String>,
) -> Result<(), StoreError> {
    let mut reqs = Vec::new();
    for a in addresses {
        let del = DeleteRequest::builder()
            .key(PK, AttributeValue::S(rcpt_pk(id, &a)))
            .build()
            .map_err(|e| internal(&e))?;
        reqs.push(WriteRequest::builder().delete_request(del).build());
    }
    batch(client, table, reqs).await
}

fn internal(e: &dyn std::fmt::Display) -> StoreError {
    super::errors::request_build(BACKEND, e)
}
