//! `DynamoMailboxes`: each user's IMAP/POP3 UIDs and flags as items of the index table,
//! shared by every `standby serve` node on the store.
//!
//! The table has a partition key only, so a user's mailbox cannot be one `Query` on the
//! base table, and the secondary indexes are eventually consistent: a UID read from one
//! could be handed out twice. Instead a mailbox is a few items read and written as a
//! whole, always strongly consistent:
//!
//! - the head, `pk = mbox#h#<user>`: UIDVALIDITY, the next UID, how many chunks, and a
//!   version `ver` that every write raises;
//! - chunks, `pk = mbox#c<k>#<user>`: the entries in UID order, [`PER_CHUNK`] to an item,
//!   as 21 bytes each (UID, message id, flags) in one binary attribute (10,000 messages
//!   are three items of at most 86 KB; an item may hold 400 KB).
//!
//! Every change is one `TransactWriteItems`: the head's update, conditional on the
//! version read, with the chunks that changed. Two nodes (or sessions) assigning at once
//! cannot both win; the loser reads again and retries, so no message gets two UIDs and
//! no UID two messages. Reads are a `TransactGetItems` of the head and the chunks, so a
//! reader never sees one chunk before a change and another after it; a node keeps the
//! last mailbox it read per user and reads the chunks again only when the head's version
//! moved (an IMAP IDLE poll costs one small read).
//!
//! A transaction holds at most 25 items here (DynamoDB allows 100 and 4 MB; moto, the
//! emulator the tests run on, 25): a read of more than 24 chunks is several, each with
//! the head, accepted only if every one saw the same version.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, Get, Put, TransactGetItem, TransactWriteItem, Update,
};

use super::errors::classify;
use super::schema::PK;
use crate::error::StoreError;
use crate::model::MessageId;
use crate::model::mailbox::{FlagChange, Flags, MailboxState, UidEntry};
use crate::ports::Mailboxes;

const BACKEND: &str = "dynamodb";
/// Key prefix of every mailbox item (the serve node's policy allows writes to these).
pub const MAILBOX_PREFIX: &str = "mbox#";
/// Entries per chunk item (21 bytes each: 86 KB).
pub const PER_CHUNK: usize = 4096;
/// Chunks per transaction besides the head (see the module docs).
const CHUNKS_PER_TX: usize = 20;
/// New UIDs given per transaction, so one never carries more than [`CHUNKS_PER_TX`] chunks.
const ADDS_PER_TX: usize = (CHUNKS_PER_TX - 1) * PER_CHUNK;
/// Bytes of one stored entry: UID (4, big-endian), message id (16), flags (1).
const ENTRY: usize = 21;
// A piece of new UIDs fits one transaction (the last chunk may be all but full when it
// starts: it spans one more), within DynamoDB's 4 MB a transaction and 400 KB an item.
const _: () = assert!(ADDS_PER_TX.div_ceil(PER_CHUNK) < CHUNKS_PER_TX);
const _: () = assert!(PER_CHUNK * ENTRY * CHUNKS_PER_TX < 4 * 1024 * 1024);
const _: () = assert!(PER_CHUNK * ENTRY < 400 * 1024);

/// Tries of a write that lost to another (each reads the mailbox again first).
const ATTEMPTS: u32 = 12;

/// UIDs and flags in the DynamoDB index table.
#[derive(Debug, Clone)]
pub struct DynamoMailboxes {
    client: Client,
    table: String,
    /// Per user, the last mailbox read or written here and the head version it had.
    cache: Arc<Mutex<HashMap<String, (u64, MailboxState)>>>,
}

impl DynamoMailboxes {
    pub fn new(client: Client, table: &str) -> Self {
        DynamoMailboxes {
            client,
            table: table.to_string(),
            cache: Arc::default(),
        }
    }
}

fn head_key(user: &str) -> AttributeValue {
    AttributeValue::S(format!("{MAILBOX_PREFIX}h#{user}"))
}

fn chunk_key(user: &str, k: usize) -> AttributeValue {
    AttributeValue::S(format!("{MAILBOX_PREFIX}c{k}#{user}"))
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn corrupt(user: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        id: format!("mailbox of {}", crate::model::redact(user)),
        detail: detail.into(),
    }
}

/// What the head item says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    ver: u64,
    validity: u32,
    next_uid: u32,
    chunks: usize,
}

fn number<T: std::str::FromStr>(
    item: &HashMap<String, AttributeValue>,
    name: &str,
    user: &str,
) -> Result<T, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(user, format!("head without a valid `{name}`")))
}

fn head_of(item: &HashMap<String, AttributeValue>, user: &str) -> Result<Head, StoreError> {
    Ok(Head {
        ver: number(item, "ver", user)?,
        validity: number(item, "validity", user)?,
        next_uid: number(item, "next_uid", user)?,
        chunks: number(item, "chunks", user)?,
    })
}

/// Entries as stored in a chunk.
fn encode(entries: &[UidEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        out.extend_from_slice(&e.uid.to_be_bytes());
        out.extend_from_slice(&e.id.to_bytes());
        out.push(e.flags.0);
    }
    out
}

fn decode(bytes: &[u8], user: &str) -> Result<Vec<UidEntry>, StoreError> {
    if !bytes.len().is_multiple_of(ENTRY) {
        return Err(corrupt(user, format!("a chunk of {} bytes", bytes.len())));
    }
    Ok(bytes
        .chunks_exact(ENTRY)
        .map(|b| {
            let mut uid = [0u8; 4];
            uid.copy_from_slice(&b[..4]);
            let mut id = [0u8; 16];
            id.copy_from_slice(&b[4..20]);
            UidEntry {
                uid: u32::from_be_bytes(uid),
                id: MessageId::from_bytes(id),
                flags: Flags(b[20]),
            }
        })
        .collect())
}

/// A write whose condition failed or that met another transaction (both are a
/// cancelled transaction, the reason per action): read again, retry.
fn lost_race(
    e: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match e.as_service_error() {
        // Any other reason (an item too large, a throttled action) is no race: reported.
        Some(E::TransactionCanceledException(c)) => c.cancellation_reasons().iter().all(|r| {
            matches!(
                r.code(),
                None | Some("None" | "ConditionalCheckFailed" | "TransactionConflict")
            )
        }),
        _ => false,
    }
}

impl DynamoMailboxes {
    /// The head, read strongly consistent; made (empty, a new UIDVALIDITY) if missing.
    async fn head(&self, user: &str) -> Result<Head, StoreError> {
        for _ in 0..ATTEMPTS {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key(PK, head_key(user))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "GetItem (mailbox)", e))?;
            if let Some(item) = out.item() {
                return head_of(item, user);
            }
            // A new mailbox: its UIDVALIDITY is the time, so a mailbox made again after
            // its items were lost gets a greater one and clients start over.
            let validity = u32::try_from(chrono::Utc::now().timestamp())
                .unwrap_or(u32::MAX)
                .max(1);
            let made = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(PK, head_key(user))
                .item("ver", n(0))
                .item("validity", n(validity))
                .item("next_uid", n(1))
                .item("chunks", n(0))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .send()
                .await;
            match made {
                Ok(_) => {
                    return Ok(Head {
                        ver: 0,
                        validity,
                        next_uid: 1,
                        chunks: 0,
                    });
                }
                Err(e) if super::dynamo::is_condition_failed(&e) => {}
                Err(e) => return Err(classify(BACKEND, "PutItem (mailbox)", e)),
            }
        }
        Err(contention(user))
    }

    /// The whole mailbox and the head's version, consistent (see the module docs).
    async fn read(&self, user: &str) -> Result<(u64, MailboxState), StoreError> {
        for _ in 0..ATTEMPTS {
            let head = self.head(user).await?;
            if let Some(hit) = self.cached(user, head) {
                return Ok((head.ver, hit));
            }
            if let Some(entries) = self.chunks(user, head).await? {
                let state = MailboxState {
                    validity: head.validity,
                    next_uid: head.next_uid,
                    entries,
                };
                self.remember(user, head.ver, &state);
                return Ok((head.ver, state));
            }
        }
        Err(contention(user))
    }

    /// The mailbox kept from the last look, if `head` says it has not changed since.
    fn cached(&self, user: &str, head: Head) -> Option<MailboxState> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(user)
            .filter(|(v, s)| *v == head.ver && s.validity == head.validity)
            .map(|(_, s)| MailboxState {
                next_uid: head.next_uid,
                ..s.clone()
            })
    }

    fn remember(&self, user: &str, ver: u64, state: &MailboxState) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.get(user).is_none_or(|(v, _)| *v <= ver) {
            cache.insert(user.to_string(), (ver, state.clone()));
        }
    }

    /// Every entry of the chunks `head` names, or `None` when the mailbox changed
    /// between the transactions that read them (read again).
    async fn chunks(&self, user: &str, head: Head) -> Result<Option<Vec<UidEntry>>, StoreError> {
        let mut entries = Vec::with_capacity(head.chunks * PER_CHUNK);
        let mut k = 0;
        while k < head.chunks {
            let upto = (k + CHUNKS_PER_TX).min(head.chunks);
            let get = |key| {
                Get::builder()
                    .table_name(&self.table)
                    .key(PK, key)
                    .build()
                    .map(|g| TransactGetItem::builder().get(g).build())
                    .map_err(|e| corrupt(user, format!("a read: {e}")))
            };
            let mut items = vec![get(head_key(user))?];
            for i in k..upto {
                items.push(get(chunk_key(user, i))?);
            }
            let out = self
                .client
                .transact_get_items()
                .set_transact_items(Some(items))
                .send()
                .await
                .map_err(|e| classify(BACKEND, "TransactGetItems (mailbox)", e))?;
            let mut got = out.responses().iter().map(|r| r.item());
            let seen = match got.next().flatten() {
                Some(item) => head_of(item, user)?,
                None => return Err(corrupt(user, "the head went missing")),
            };
            if seen.ver != head.ver {
                return Ok(None);
            }
            for i in k..upto {
                let bytes = got
                    .next()
                    .flatten()
                    .and_then(|item| item.get("e"))
                    .and_then(|v| v.as_b().ok())
                    .ok_or_else(|| corrupt(user, format!("chunk {i} missing")))?;
                entries.extend(decode(bytes.as_ref(), user)?);
            }
            k = upto;
        }
        Ok(Some(entries))
    }

    /// Read the mailbox, let `change` alter it, and write what changed in one
    /// transaction conditional on the version read; retried when another write came
    /// first. `change` returns false when there is nothing to write.
    async fn update(
        &self,
        user: &str,
        change: impl Fn(&mut MailboxState) -> Result<bool, StoreError>,
    ) -> Result<MailboxState, StoreError> {
        for attempt in 0..ATTEMPTS {
            let (ver, before) = self.read(user).await?;
            let mut after = before.clone();
            if !change(&mut after)? {
                return Ok(after);
            }
            let chunks = after.entries.len().div_ceil(PER_CHUNK);
            let dirty: BTreeSet<usize> = (0..chunks)
                .filter(|&k| {
                    let part = |s: &MailboxState| {
                        let from = (k * PER_CHUNK).min(s.entries.len());
                        let to = ((k + 1) * PER_CHUNK).min(s.entries.len());
                        encode(&s.entries[from..to])
                    };
                    part(&before) != part(&after)
                })
                .collect();
            if dirty.len() > CHUNKS_PER_TX {
                return Err(corrupt(
                    user,
                    format!(
                        "one change of {} chunks (at most {CHUNKS_PER_TX})",
                        dirty.len()
                    ),
                ));
            }
            let build =
                |e: aws_sdk_dynamodb::error::BuildError| corrupt(user, format!("a write: {e}"));
            let mut items = vec![
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .key(PK, head_key(user))
                            .update_expression("SET #v = :next, next_uid = :uid, chunks = :chunks")
                            .condition_expression("#v = :ver")
                            .expression_attribute_names("#v", "ver")
                            .expression_attribute_values(":ver", n(ver))
                            .expression_attribute_values(":next", n(ver + 1))
                            .expression_attribute_values(":uid", n(after.next_uid))
                            .expression_attribute_values(":chunks", n(chunks))
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            ];
            for &k in &dirty {
                let to = ((k + 1) * PER_CHUNK).min(after.entries.len());
                items.push(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.table)
                                .item(PK, chunk_key(user, k))
                                .item(
                                    "e",
                                    AttributeValue::B(Blob::new(encode(
                                        &after.entries[k * PER_CHUNK..to],
                                    ))),
                                )
                                .build()
                                .map_err(build)?,
                        )
                        .build(),
                );
            }
            match self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await
            {
                Ok(_) => {
                    self.remember(user, ver + 1, &after);
                    return Ok(after);
                }
                Err(e) if lost_race(&e) => {
                    // Another node or session wrote first: a short, growing, jittered pause.
                    let ms = 10u64 << attempt.min(6);
                    let jitter = rand::random::<u64>() % ms;
                    tokio::time::sleep(Duration::from_millis(ms + jitter)).await;
                }
                Err(e) => return Err(classify(BACKEND, "TransactWriteItems (mailbox)", e)),
            }
        }
        Err(contention(user))
    }
}

fn contention(user: &str) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        detail: format!(
            "mailbox of {}: too much contention",
            crate::model::redact(user)
        ),
        transient: true,
        source: None,
    }
}

#[async_trait]
impl Mailboxes for DynamoMailboxes {
    async fn load(&self, user: &str) -> Result<MailboxState, StoreError> {
        Ok(self.read(user).await?.1)
    }

    async fn assign(&self, user: &str, ids: &[MessageId]) -> Result<MailboxState, StoreError> {
        let mut state = None;
        // In pieces, so one transaction never carries more than CHUNKS_PER_TX chunks;
        // each piece is whole on its own (a crash between two leaves the later ones
        // without UIDs, given at the next look).
        for piece in ids.chunks(ADDS_PER_TX) {
            state = Some(
                self.update(user, |s| {
                    let added = s.add(piece).map_err(|e| corrupt(user, e.to_string()))?;
                    Ok(added > 0)
                })
                .await?,
            );
        }
        match state {
            Some(s) => Ok(s),
            None => self.load(user).await,
        }
    }

    async fn change_flags(&self, user: &str, changes: &[FlagChange]) -> Result<(), StoreError> {
        // Changes to at most CHUNKS_PER_TX chunks at a time (UIDs are in chunk order).
        let (_, now) = self.read(user).await?;
        let chunk_of = |uid: u32| {
            now.entries
                .binary_search_by_key(&uid, |e| e.uid)
                .ok()
                .map(|i| i / PER_CHUNK)
        };
        let mut pieces: Vec<Vec<FlagChange>> = Vec::new();
        let mut chunks = BTreeSet::new();
        for ch in changes {
            let Some(k) = chunk_of(ch.uid) else { continue };
            if !chunks.contains(&k) && chunks.len() == CHUNKS_PER_TX {
                chunks.clear();
            }
            if chunks.is_empty() {
                pieces.push(Vec::new());
            }
            chunks.insert(k);
            if let Some(p) = pieces.last_mut() {
                p.push(*ch);
            }
        }
        for piece in pieces {
            self.update(user, |s| Ok(!s.change(&piece).is_empty()))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_a_chunk() {
        let entries: Vec<UidEntry> = (1..=3u32)
            .map(|i| UidEntry {
                uid: i * 1000,
                id: MessageId::new(chrono::Utc::now() - chrono::Duration::seconds(i.into())),
                flags: Flags(u8::try_from(i).unwrap() | Flags::HIDDEN.0),
            })
            .collect();
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), 3 * ENTRY);
        assert_eq!(decode(&bytes, "u@example.test").unwrap(), entries);
        assert!(decode(&bytes[1..], "u@example.test").is_err());
    }
}
