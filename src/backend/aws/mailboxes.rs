//! `DynamoMailboxes`: each user's IMAP/POP3 UIDs and flags as items of the index table,
//! shared by every `standby serve` node on the store.
//!
//! The table has a partition key only, so a user's mailbox cannot be one `Query` on the
//! base table, and the secondary indexes are eventually consistent: a UID read from one
//! could be handed out twice. Instead a mailbox is a few items read and written as a
//! whole, always strongly consistent:
//!
//! - the head, `pk = mbox#h#<user>`: UIDVALIDITY, the next UID, a version `ver` that
//!   every write raises, and each chunk's version `cv` (the `ver` that last wrote it);
//! - chunks, `pk = mbox#c<k>#<user>`: the entries in UID order, [`PER_CHUNK`] to an item,
//!   as 21 bytes each (UID, message id, flags) in one binary attribute (10,000 messages
//!   are three items of at most 86 KB; an item may hold 400 KB). Entries are only ever
//!   appended or changed in place, so an entry stays in its chunk.
//!
//! Every change is one `TransactWriteItems`: the head's update, conditional on the
//! version read, with the chunks that changed. Two nodes (or sessions) writing at once
//! cannot both win; the loser reads again and retries, so no message gets two UIDs and
//! no UID two messages. Reads are a `TransactGetItems` of the head and the chunks, so a
//! reader never sees one chunk before a change and another after it. A node keeps the
//! chunks it read and reads again only those whose version moved: an IMAP IDLE poll of
//! an unchanged mailbox costs one small read, a new message the last chunk.
//!
//! A transaction holds at most 25 items here (DynamoDB allows 100 and 4 MB; moto, the
//! emulator the tests run on, 25): a read of more than 20 chunks is several, each with
//! the head, accepted only if every one saw the same version. DynamoDB cancels a
//! transaction that meets another on one of its items (and throttles hot items): both
//! are read again and retried after a short, growing, jittered pause.
//!
//! After a point-in-time restore of the table, a head may give again UIDs it gave
//! before the restore under the same UIDVALIDITY: delete the `mbox#` items then (README,
//! "On AWS"), and each mailbox is made again with a new UIDVALIDITY (clients resync).

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
/// Bytes of one stored entry: UID (4, big-endian), message id (16), flags (1).
const ENTRY: usize = 21;
/// Tries of a read or write that met another (each a fresh read).
const ATTEMPTS: u32 = 12;

// A transaction of the default sizes stays within DynamoDB's 4 MB, a chunk within an
// item's 400 KB.
const _: () = assert!(PER_CHUNK * ENTRY * CHUNKS_PER_TX < 4 * 1024 * 1024);
const _: () = assert!(PER_CHUNK * ENTRY < 400 * 1024);

/// UIDs and flags in the DynamoDB index table.
#[derive(Debug, Clone)]
pub struct DynamoMailboxes {
    client: Client,
    table: String,
    per_chunk: usize,
    chunks_per_tx: usize,
    /// Per user, the head and the chunks last read or written here.
    cache: Arc<Mutex<HashMap<String, Kept>>>,
}

/// A mailbox as a node keeps it between looks.
#[derive(Debug, Clone)]
struct Kept {
    head: Head,
    chunks: Vec<Arc<Vec<UidEntry>>>,
}

impl DynamoMailboxes {
    pub fn new(client: Client, table: &str) -> Self {
        DynamoMailboxes {
            client,
            table: table.to_string(),
            per_chunk: PER_CHUNK,
            chunks_per_tx: CHUNKS_PER_TX,
            cache: Arc::default(),
        }
    }

    /// Smaller chunks and transactions than the defaults, so a test shows several of
    /// each with a few messages (`per_chunk` from 1 to [`PER_CHUNK`], `chunks_per_tx`
    /// at least 4). A mailbox keeps the chunk size it was made with.
    #[doc(hidden)]
    pub fn with_limits(mut self, per_chunk: usize, chunks_per_tx: usize) -> Self {
        self.per_chunk = per_chunk.clamp(1, PER_CHUNK);
        self.chunks_per_tx = chunks_per_tx.clamp(4, CHUNKS_PER_TX);
        self
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
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    ver: u64,
    validity: u32,
    next_uid: u32,
    /// Each chunk's version, by chunk.
    cv: Vec<u64>,
    /// Entries per chunk, fixed when the mailbox is made (the layout of its items).
    per: usize,
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
    let cv = match item.get("cv") {
        None => return Err(corrupt(user, "head without chunk versions (`cv`)")),
        Some(v) => v
            .as_l()
            .ok()
            .and_then(|l| {
                l.iter()
                    .map(|x| x.as_n().ok().and_then(|x| x.parse().ok()))
                    .collect::<Option<Vec<u64>>>()
            })
            .ok_or_else(|| corrupt(user, "head with an unreadable `cv`"))?,
    };
    Ok(Head {
        ver: number(item, "ver", user)?,
        validity: number(item, "validity", user)?,
        next_uid: number(item, "next_uid", user)?,
        cv,
        // Heads made before the chunk size was kept have the only size then used.
        per: match item.get("per") {
            None => PER_CHUNK,
            Some(_) => number::<usize>(item, "per", user)?.max(1),
        },
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

/// Whether a cancelled transaction met another one or a throttled item (read again,
/// retry), from its reasons, one per action. No reasons, or any other (an item too
/// large, a validation error), is no race: reported.
fn retry_reasons(reasons: &[aws_sdk_dynamodb::types::CancellationReason]) -> bool {
    !reasons.is_empty()
        && reasons.iter().all(|r| {
            matches!(
                r.code(),
                None | Some(
                    "None"
                        | "ConditionalCheckFailed"
                        | "TransactionConflict"
                        | "ThrottlingError"
                        | "ProvisionedThroughputExceeded"
                        | "RequestLimitExceeded"
                )
            )
        })
}

type SdkError<E> =
    aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>;

/// Entries of chunk `k` of `s`, chunks of `per`.
fn part(per: usize, s: &MailboxState, k: usize) -> &[UidEntry] {
    let from = (k * per).min(s.entries.len());
    let to = ((k + 1) * per).min(s.entries.len());
    &s.entries[from..to]
}

/// A write that lost to another (see [`retry_reasons`]).
fn write_race(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match e.as_service_error() {
        Some(E::TransactionCanceledException(c)) => retry_reasons(c.cancellation_reasons()),
        _ => false,
    }
}

/// A read that met a write (DynamoDB cancels a `TransactGetItems` that overlaps a
/// write on one of its items).
fn read_race(
    e: &SdkError<aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsError>,
) -> bool {
    use aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsError as E;
    match e.as_service_error() {
        Some(E::TransactionCanceledException(c)) => retry_reasons(c.cancellation_reasons()),
        _ => false,
    }
}

/// A short, growing, jittered pause before try `attempt` + 1.
async fn pause(attempt: u32) {
    let ms = 10u64 << attempt.min(6);
    let jitter = rand::random::<u64>() % ms;
    tokio::time::sleep(Duration::from_millis(ms + jitter)).await;
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
                .item("cv", AttributeValue::L(Vec::new()))
                .item("per", n(self.per_chunk))
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
                        cv: Vec::new(),
                        per: self.per_chunk,
                    });
                }
                // Another node made it first: read theirs.
                Err(e) if super::dynamo::is_condition_failed(&e) => {}
                Err(e) => return Err(classify(BACKEND, "PutItem (mailbox)", e)),
            }
        }
        Err(contention(user))
    }

    /// The whole mailbox and its head, consistent (see the module docs).
    async fn read(&self, user: &str) -> Result<(Head, MailboxState), StoreError> {
        for attempt in 0..ATTEMPTS {
            let head = self.head(user).await?;
            let kept = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(user)
                .filter(|k| k.head.validity == head.validity)
                .cloned();
            let reusable = |k: usize| {
                kept.as_ref().and_then(|kept| {
                    (kept.head.cv.get(k) == head.cv.get(k))
                        .then(|| kept.chunks.get(k).cloned())
                        .flatten()
                })
            };
            let wanted: Vec<usize> = (0..head.cv.len())
                .filter(|&k| reusable(k).is_none())
                .collect();
            let Some(mut fetched) = self.fetch(user, &head, &wanted).await? else {
                pause(attempt).await;
                continue;
            };
            let mut chunks = Vec::with_capacity(head.cv.len());
            for k in 0..head.cv.len() {
                match fetched.remove(&k).or_else(|| reusable(k)) {
                    Some(c) => chunks.push(c),
                    None => return Err(corrupt(user, format!("chunk {k} missing"))),
                }
            }
            let state = MailboxState {
                validity: head.validity,
                next_uid: head.next_uid,
                entries: chunks.iter().flat_map(|c| c.iter().cloned()).collect(),
            };
            self.remember(
                user,
                Kept {
                    head: head.clone(),
                    chunks,
                },
            );
            return Ok((head, state));
        }
        Err(contention(user))
    }

    fn remember(&self, user: &str, kept: Kept) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.get(user).is_none_or(|k| k.head.ver <= kept.head.ver) {
            cache.insert(user.to_string(), kept);
        }
    }

    /// The chunks `wanted` of the mailbox whose head is `head`, or `None` when it
    /// changed meanwhile (read again).
    async fn fetch(
        &self,
        user: &str,
        head: &Head,
        wanted: &[usize],
    ) -> Result<Option<HashMap<usize, Arc<Vec<UidEntry>>>>, StoreError> {
        let mut out = HashMap::new();
        for group in wanted.chunks(self.chunks_per_tx) {
            let get = |key| {
                Get::builder()
                    .table_name(&self.table)
                    .key(PK, key)
                    .build()
                    .map(|g| TransactGetItem::builder().get(g).build())
                    .map_err(|e| corrupt(user, format!("a read: {e}")))
            };
            let mut items = vec![get(head_key(user))?];
            for &k in group {
                items.push(get(chunk_key(user, k))?);
            }
            let got = match self
                .client
                .transact_get_items()
                .set_transact_items(Some(items))
                .send()
                .await
            {
                Ok(got) => got,
                Err(e) if read_race(&e) => return Ok(None),
                Err(e) => return Err(classify(BACKEND, "TransactGetItems (mailbox)", e)),
            };
            let mut items = got.responses().iter().map(|r| r.item());
            let seen = match items.next().flatten() {
                Some(item) => head_of(item, user)?,
                None => return Err(corrupt(user, "the head went missing")),
            };
            if seen.ver != head.ver {
                return Ok(None);
            }
            for &k in group {
                let bytes = items
                    .next()
                    .flatten()
                    .and_then(|item| item.get("e"))
                    .and_then(|v| v.as_b().ok())
                    .ok_or_else(|| corrupt(user, format!("chunk {k} missing")))?;
                out.insert(k, Arc::new(decode(bytes.as_ref(), user)?));
            }
        }
        Ok(Some(out))
    }

    /// Read the mailbox, let `change` alter it, and write the chunks that changed in one
    /// transaction conditional on the version read; retried when another write came
    /// first. `change` returns false when there is nothing to write.
    async fn update(
        &self,
        user: &str,
        change: impl Fn(&mut MailboxState) -> Result<bool, StoreError>,
    ) -> Result<MailboxState, StoreError> {
        for attempt in 0..ATTEMPTS {
            let (head, before) = self.read(user).await?;
            let mut after = before.clone();
            if !change(&mut after)? {
                return Ok(after);
            }
            let per = head.per;
            let chunks = after.entries.len().div_ceil(per);
            let dirty: BTreeSet<usize> = (0..chunks)
                .filter(|&k| part(per, &before, k) != part(per, &after, k))
                .collect();
            if dirty.len() > self.chunks_per_tx {
                return Err(corrupt(
                    user,
                    format!(
                        "one change of {} chunks (at most {})",
                        dirty.len(),
                        self.chunks_per_tx
                    ),
                ));
            }
            let next = head.ver + 1;
            let mut cv = head.cv.clone();
            cv.resize(chunks, next);
            for &k in &dirty {
                cv[k] = next;
            }
            let build =
                |e: aws_sdk_dynamodb::error::BuildError| corrupt(user, format!("a write: {e}"));
            let mut items = vec![
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .key(PK, head_key(user))
                            .update_expression("SET #v = :next, next_uid = :uid, cv = :cv")
                            .condition_expression("#v = :ver")
                            .expression_attribute_names("#v", "ver")
                            .expression_attribute_values(":ver", n(head.ver))
                            .expression_attribute_values(":next", n(next))
                            .expression_attribute_values(":uid", n(after.next_uid))
                            .expression_attribute_values(
                                ":cv",
                                AttributeValue::L(cv.iter().map(n).collect()),
                            )
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            ];
            for &k in &dirty {
                items.push(
                    TransactWriteItem::builder()
                        .put(
                            Put::builder()
                                .table_name(&self.table)
                                .item(PK, chunk_key(user, k))
                                .item(
                                    "e",
                                    AttributeValue::B(Blob::new(encode(part(per, &after, k)))),
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
                    let chunks = (0..chunks)
                        .map(|k| Arc::new(part(per, &after, k).to_vec()))
                        .collect();
                    let head = Head {
                        ver: next,
                        validity: head.validity,
                        next_uid: after.next_uid,
                        cv,
                        per,
                    };
                    self.remember(user, Kept { head, chunks });
                    return Ok(after);
                }
                Err(e) if write_race(&e) => pause(attempt).await,
                Err(e) => return Err(classify(BACKEND, "TransactWriteItems (mailbox)", e)),
            }
        }
        Err(contention(user))
    }

    /// `ids` in pieces of which each changes at most `chunks_per_tx` chunks: a message
    /// that came back changes its old chunk (retired there) besides the new one (see
    /// [`MailboxState::add`]); in the order given.
    fn pieces(&self, per: usize, now: &MailboxState, ids: &[MessageId]) -> Vec<Vec<MessageId>> {
        let at: HashMap<MessageId, usize> = now
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.flags.has(Flags::RETIRED))
            .map(|(i, e)| (e.id, i / per))
            .collect();
        let current = now.current();
        let mut pieces: Vec<Vec<MessageId>> = Vec::new();
        let (mut old, mut count) = (BTreeSet::new(), 0usize);
        for id in ids {
            if !MailboxState::needs_uid(current.get(id).copied()) {
                continue;
            }
            let back = at.get(id).copied();
            // Appending `count` entries spans at most count / per + 2 chunks.
            let cost = |old: &BTreeSet<usize>, count: usize| old.len() + count / per + 2;
            let mut with = old.clone();
            with.extend(back);
            if pieces.is_empty() || cost(&with, count + 1) > self.chunks_per_tx {
                pieces.push(Vec::new());
                (old, count) = (BTreeSet::new(), 0);
                old.extend(back);
            } else {
                old = with;
            }
            count += 1;
            if let Some(p) = pieces.last_mut() {
                p.push(*id);
            }
        }
        pieces
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
        let (head, mut state) = self.read(user).await?;
        // In pieces (each whole on its own: a crash between two leaves the later ones
        // without UIDs, given at the next look).
        for piece in self.pieces(head.per, &state, ids) {
            state = self
                .update(user, |s| {
                    let added = s.add(&piece).map_err(|e| corrupt(user, e.to_string()))?;
                    Ok(added > 0)
                })
                .await?;
        }
        Ok(state)
    }

    async fn change_flags(&self, user: &str, changes: &[FlagChange]) -> Result<(), StoreError> {
        // Changes to at most chunks_per_tx chunks at a time (an entry stays in its chunk;
        // hiding by a retired UID also changes the message's current entry).
        let (head, now) = self.read(user).await?;
        let per = head.per;
        let current: HashMap<MessageId, usize> = now
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.flags.has(Flags::RETIRED))
            .map(|(i, e)| (e.id, i / per))
            .collect();
        let chunks_of = |ch: &FlagChange| -> Vec<usize> {
            let Ok(i) = now.entries.binary_search_by_key(&ch.uid, |e| e.uid) else {
                return Vec::new();
            };
            let e = &now.entries[i];
            let mut out = vec![i / per];
            if e.flags.has(Flags::RETIRED) && ch.set.has(Flags::HIDDEN) {
                out.extend(current.get(&e.id).copied());
            }
            out
        };
        let mut pieces: Vec<Vec<FlagChange>> = Vec::new();
        let mut chunks = BTreeSet::new();
        for ch in changes {
            let touched = chunks_of(ch);
            if touched.is_empty() {
                continue;
            }
            let mut with = chunks.clone();
            with.extend(touched.iter().copied());
            if pieces.is_empty() || with.len() > self.chunks_per_tx {
                pieces.push(Vec::new());
                chunks = touched.into_iter().collect();
            } else {
                chunks = with;
            }
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

    /// A head made before the chunk size was kept reads with the size then used; one
    /// without chunk versions is refused, never read as an empty mailbox.
    #[test]
    fn heads_read_as_written() {
        let mut item: HashMap<String, AttributeValue> = [
            ("ver", n(3)),
            ("validity", n(1_700_000_000)),
            ("next_uid", n(9)),
            ("cv", AttributeValue::L(vec![n(3), n(2)])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let head = head_of(&item, "u@example.test").unwrap();
        assert_eq!(
            (head.per, head.cv, head.next_uid),
            (PER_CHUNK, vec![3, 2], 9)
        );
        item.insert("per".into(), n(4));
        assert_eq!(head_of(&item, "u@example.test").unwrap().per, 4);
        item.remove("cv");
        assert!(head_of(&item, "u@example.test").is_err());
    }

    #[test]
    fn only_races_and_throttling_are_retried() {
        use aws_sdk_dynamodb::types::CancellationReason;
        let r = |code: &str| CancellationReason::builder().code(code).build();
        assert!(retry_reasons(&[r("ConditionalCheckFailed"), r("None")]));
        assert!(retry_reasons(&[
            r("TransactionConflict"),
            r("ThrottlingError")
        ]));
        assert!(!retry_reasons(&[]));
        assert!(!retry_reasons(&[r("None"), r("ValidationError")]));
        assert!(!retry_reasons(&[r("ItemCollectionSizeLimitExceeded")]));
    }
}
