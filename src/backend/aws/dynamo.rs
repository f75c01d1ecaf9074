//! `DynamoIndex`: the message index in one DynamoDB table (design in [`super::schema`]).
//!
//! # Guarantees
//! - Insert is a `PutItem` with `attribute_not_exists(pk)`: a second insert of the same id
//!   (a retried Lambda event) changes nothing and reports `false`.
//! - A claim is a conditional `UpdateItem` per candidate (`status = held` and no live
//!   lease), so concurrent drains never lease the same message; the candidates come from
//!   the eventually consistent status index, the decision from the base table.
//! - Write-backs are conditional on the lease: `complete` only for the claim's lease token,
//!   operator `update` only when no live lease is held; and every record write on the
//!   record's version (`ver`, compare-and-set: the condition names the version read, the
//!   write stores the next). A verdict update changes only the verdicts, read-modify-write
//!   conditional on the version and the lease. A delete is conditional on the version and
//!   on no legal hold (`legal_hold`, written beside the record while one is placed).
//! - An item written before versions existed has no `ver` and reads as version 0; a
//!   condition on version 0 also accepts a missing `ver`, so old tables keep working.
//! - Reads of single items are strongly consistent.
//!
//! The record is stored as JSON in `record`; the attributes that queries and conditions
//! use are written beside it from the same record. The lease lives only in its attributes.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, Select};
use chrono::{DateTime, TimeZone, Utc};

use super::errors::classify;
use super::schema::{
    GSI, GSI_PK, GSI_SK, HEALTH_PREFIX, HEALTH_STATUS, MESSAGE_PREFIX, PK, RCPT_ATTR, RCPT_GSI,
    SENDER_ATTR, SENDER_GSI, TTL_ATTRIBUTE,
};
use super::search;
use crate::error::StoreError;
use crate::model::HealthRecord;
use crate::model::{Class, Counts, Lease, MessageId, Record, Status, Verdicts};
use crate::ports::{ClaimRequest, Cursor, Index, ListQuery};

const BACKEND: &str = "dynamodb";

type Item = HashMap<String, AttributeValue>;

/// The index table.
#[derive(Debug, Clone)]
pub struct DynamoIndex {
    client: Client,
    table: String,
    keep_delivered_days: Option<u32>,
}

fn pk(id: MessageId) -> AttributeValue {
    AttributeValue::S(format!("{MESSAGE_PREFIX}{id}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Sort key of the status index: received time, then id, as fixed-width text.
fn recv_key(at: DateTime<Utc>, id: &str) -> String {
    format!("{:013}#{id}", at.timestamp_millis().max(0))
}

/// Which part of one status's sort keys a query reads.
#[derive(Debug, Clone)]
enum KeyRange {
    All,
    Before(String),
    /// Inclusive.
    UpTo(String),
    After(String),
    /// Inclusive at both ends.
    Between(String, String),
}

impl KeyRange {
    /// A range no key is in (`since` at or after `until`, a cursor outside the window):
    /// DynamoDB refuses a BETWEEN whose ends are the wrong way round.
    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Between(lo, hi) if lo > hi)
    }
    /// The keys a listing reads: after the cursor or from `since`, whichever is later,
    /// and before `until`. The cursor's own key is in the range; the caller skips it.
    /// Newest first, the cursor is the upper end instead.
    fn of(q: &ListQuery) -> KeyRange {
        let cursor = q.after.map(|c| recv_key(c.received_at, &c.id.to_string()));
        let since = q.since.map(|t| recv_key(t, ""));
        // `~` sorts after every character of an id, and `until` itself is excluded.
        let until = q
            .until
            .map(|t| recv_key(t - chrono::Duration::milliseconds(1), "~"));
        let (lo, hi) = if q.newest_first {
            (since, [cursor, until].into_iter().flatten().min())
        } else {
            ([cursor, since].into_iter().flatten().max(), until)
        };
        match (lo, hi) {
            (None, None) => KeyRange::All,
            (Some(lo), None) => KeyRange::After(lo),
            (None, Some(hi)) => KeyRange::UpTo(hi),
            (Some(lo), Some(hi)) => KeyRange::Between(lo, hi),
        }
    }
}

/// Messages a recipient-index listing reads at once.
const READS_AT_ONCE: usize = 16;

/// Records merged from several partitions, in `q`'s order, at most `q.limit`.
fn ordered(mut out: Vec<Record>, q: &ListQuery) -> Vec<Record> {
    out.sort_by_key(|r| Cursor::from(r));
    if q.newest_first {
        out.reverse();
    }
    if let Some(l) = q.limit {
        out.truncate(l);
    }
    out
}

fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

fn corrupt(item: &Item, detail: impl Into<String>) -> StoreError {
    let id = item
        .get(PK)
        .and_then(|v| v.as_s().ok())
        .cloned()
        .unwrap_or_default();
    StoreError::Corrupt {
        id,
        detail: detail.into(),
    }
}

fn to_item(rec: &Record) -> Result<Item, StoreError> {
    let mut bare = rec.clone();
    bare.lease = None;
    let json = serde_json::to_string(&bare).map_err(|e| StoreError::Corrupt {
        id: rec.id.to_string(),
        detail: e.to_string(),
    })?;
    let mut item = Item::new();
    item.insert(PK.into(), pk(rec.id));
    item.insert(GSI_PK.into(), s(rec.status.as_str()));
    item.insert(
        GSI_SK.into(),
        s(recv_key(rec.received_at, &rec.id.to_string())),
    );
    item.insert(SENDER_ATTR.into(), s(search::sender_key(&rec.mail_from)));
    item.insert("due".into(), n(rec.next_attempt_at.timestamp_millis()));
    item.insert("record".into(), s(json));
    item.insert(
        VERSION.into(),
        n(i64::try_from(rec.version).unwrap_or(i64::MAX)),
    );
    if rec.legal_hold.is_some() {
        item.insert(LEGAL_HOLD.into(), AttributeValue::Bool(true));
    }
    if let Some(lease) = &rec.lease {
        item.insert("lease_owner".into(), s(lease.owner.clone()));
        item.insert("lease_until".into(), n(lease.until.timestamp_millis()));
    }
    Ok(item)
}

fn from_item(item: &Item) -> Result<Record, StoreError> {
    let json = item
        .get("record")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| corrupt(item, "no `record` attribute"))?;
    let mut rec: Record = serde_json::from_str(json).map_err(|e| corrupt(item, e.to_string()))?;
    if let Some(st) = item.get(GSI_PK).and_then(|v| v.as_s().ok()) {
        rec.status = st.parse().map_err(|e: String| corrupt(item, e))?;
    }
    let owner = item.get("lease_owner").and_then(|v| v.as_s().ok());
    let until = item
        .get("lease_until")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<i64>().ok());
    rec.lease = match (owner, until) {
        (Some(owner), Some(until)) => Some(Lease {
            owner: owner.clone(),
            until: from_ms(until),
        }),
        _ => None,
    };
    rec.version = item
        .get(VERSION)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Ok(rec)
}

/// The record's version (compare-and-set), a number attribute beside the record.
const VERSION: &str = "ver";
/// Present (true) while the record is under legal hold, so a delete can be conditional on it.
const LEGAL_HOLD: &str = "legal_hold";

/// A condition that the stored version is `version` (placeholder `:ver`). Version 0 also
/// matches an item written before versions existed.
fn version_is(version: u64) -> (&'static str, AttributeValue) {
    let cond = if version == 0 {
        "(attribute_not_exists(ver) OR ver = :ver)"
    } else {
        "ver = :ver"
    };
    (cond, n(i64::try_from(version).unwrap_or(i64::MAX)))
}

pub(super) fn is_condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    e: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

impl DynamoIndex {
    pub fn new(client: Client, table: &str) -> Self {
        DynamoIndex {
            client,
            table: table.to_string(),
            keep_delivered_days: None,
        }
    }

    /// Delivered records get `expires_at` (the table's TTL attribute) this many days after
    /// receipt, so DynamoDB deletes them as the bucket's lifecycle deletes their objects.
    pub fn keep_delivered(mut self, days: Option<u32>) -> Self {
        self.keep_delivered_days = days;
        self
    }

    fn item(&self, rec: &Record) -> Result<Item, StoreError> {
        let mut item = to_item(rec)?;
        // No TTL under legal hold: DynamoDB would delete the record regardless.
        if let (Status::Delivered, Some(days), None) =
            (rec.status, self.keep_delivered_days, &rec.legal_hold)
        {
            let at = rec.received_at + chrono::Duration::days(i64::from(days));
            item.insert(TTL_ATTRIBUTE.into(), n(at.timestamp()));
        }
        Ok(item)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// One page of the status index, oldest first, starting after `start`, within `range`
    /// of the sort key.
    async fn query_status(
        &self,
        status: Status,
        range: KeyRange,
        limit: Option<i32>,
        start: Option<Item>,
        forward: bool,
    ) -> Result<(Vec<Item>, Option<Item>), StoreError> {
        self.query_index((GSI, GSI_PK, status.as_str()), range, limit, start, forward)
            .await
    }

    /// One page of an index (name, partition attribute, value), in `recv` order.
    async fn query_index(
        &self,
        (index, part, value): (&str, &str, &str),
        range: KeyRange,
        limit: Option<i32>,
        start: Option<Item>,
        forward: bool,
    ) -> Result<(Vec<Item>, Option<Item>), StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .expression_attribute_values(":s", s(value))
            .scan_index_forward(forward)
            .set_exclusive_start_key(start)
            .set_limit(limit);
        q = q.expression_attribute_names("#s", part);
        let out = within(q, range)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "Query", e))?;
        let next = out.last_evaluated_key().cloned();
        Ok((out.items.unwrap_or_default(), next))
    }

    /// Records with one status in list order within `q`'s range, at most `q.limit`.
    async fn list_status(&self, status: Status, q: &ListQuery) -> Result<Vec<Record>, StoreError> {
        let (limit, mut out) = (q.limit, Vec::new());
        let mut start = None;
        let range = KeyRange::of(q);
        if range.is_empty() {
            return Ok(out);
        }
        loop {
            // One more than wanted: the cursor's own record may come first.
            let filtered = q.from.is_some()
                || q.rcpt.is_some()
                || q.subject.is_some()
                || q.sender.is_some()
                || q.mailbox.is_some();
            let want = match limit {
                // Matches may be sparse: read full pages.
                Some(_) if filtered => Some(500),
                Some(l) => Some(i32::try_from(l + 1 - out.len()).unwrap_or(i32::MAX)),
                None => None,
            };
            let (items, next) = self
                .query_status(status, range.clone(), want, start, !q.newest_first)
                .await?;
            for item in &items {
                let rec = from_item(item)?;
                if q.after.is_none_or(|a| q.beyond(Cursor::from(&rec), a))
                    && q.matches(&rec)
                    && out.len() < limit.unwrap_or(usize::MAX)
                {
                    out.push(rec);
                }
            }
            if next.is_none() || limit.is_some_and(|l| out.len() >= l) {
                return Ok(out);
            }
            start = next;
        }
    }

    /// Records from one partition of the sender or recipient index, in list order within
    /// `q`'s range, at most `q.limit`. `keys_only`: the index holds recipient items, whose
    /// messages are read (strongly consistent) one by one.
    async fn list_index(
        &self,
        index: (&str, &str, &str),
        q: &ListQuery,
        keys_only: bool,
    ) -> Result<Vec<Record>, StoreError> {
        let (limit, mut out) = (q.limit.unwrap_or(usize::MAX), Vec::new());
        let (range, mut start) = (KeyRange::of(q), None);
        if range.is_empty() {
            return Ok(out);
        }
        loop {
            let (items, next) = self
                .query_index(index, range.clone(), Some(100), start, !q.newest_first)
                .await?;
            let recs: Vec<Record> = if keys_only {
                // Read a few at once, in the index's order: one by one, a mailbox of ten
                // thousand took a minute to list.
                use futures_util::{StreamExt, TryStreamExt};
                futures_util::stream::iter(items.iter().filter_map(search::id_of))
                    .map(|id| self.get(id))
                    .buffered(READS_AT_ONCE)
                    // None: a recipient item left by a crash between two writes.
                    .try_filter_map(|r| std::future::ready(Ok(r)))
                    .try_collect()
                    .await?
            } else {
                items.iter().map(from_item).collect::<Result<_, _>>()?
            };
            for rec in recs {
                if q.after.is_none_or(|a| q.beyond(Cursor::from(&rec), a)) && q.matches(&rec) {
                    out.push(rec);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            match next {
                Some(k) => start = Some(k),
                None => return Ok(out),
            }
        }
    }

    /// One conditional `UpdateItem` on a message item: `Ok(Some(new item))` when it was
    /// applied, `Ok(None)` when the condition failed. Every in-place change (claim,
    /// renewal, verdicts) goes through here.
    async fn update_if(
        &self,
        id: MessageId,
        what: &'static str,
        update: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Item>, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, pk(id))
            .update_expression(update)
            .condition_expression(format!("attribute_exists(pk) AND {condition}"))
            .return_values(ReturnValue::AllNew);
        for (k, v) in names {
            req = req.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        match req.send().await {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(classify(BACKEND, what, e)),
        }
    }

    /// One page of claim candidates: held messages, oldest first, that are due and not
    /// leased, as DynamoDB's filter finds them (the page's items are read, and billed,
    /// before the filter; only the ids of those that pass come back). The decision is the
    /// conditional [`Self::lease_one`] on the base table, since the index is eventually
    /// consistent.
    async fn claim_candidates(
        &self,
        req: &ClaimRequest,
        start: Option<Item>,
    ) -> Result<(Vec<MessageId>, Option<Item>), StoreError> {
        let mut filter =
            String::from("(attribute_not_exists(lease_until) OR lease_until <= :free)");
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(GSI)
            .expression_attribute_names("#s", GSI_PK)
            .expression_attribute_values(":s", s(req.status.as_str()))
            .expression_attribute_values(":free", n(req.expired_by().timestamp_millis()))
            .projection_expression("#pk")
            .expression_attribute_names("#pk", PK)
            .scan_index_forward(true)
            .set_exclusive_start_key(start)
            .limit(100);
        let range = match req.received_before {
            Some(b) => KeyRange::Before(recv_key(b, "")),
            None => {
                filter.push_str(" AND (attribute_not_exists(due) OR due <= :now)");
                q = q.expression_attribute_values(":now", n(req.now.timestamp_millis()));
                KeyRange::All
            }
        };
        let out = within(q, range)
            .filter_expression(filter)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "Query (claim)", e))?;
        let next = out.last_evaluated_key().cloned();
        let mut ids = Vec::new();
        for item in out.items() {
            let pk = item.get(PK).and_then(|v| v.as_s().ok());
            match pk.and_then(|k| k.strip_prefix(MESSAGE_PREFIX)?.parse().ok()) {
                Some(id) => ids.push(id),
                None => {
                    tracing::warn!(pk = ?pk, "a held item whose key is no message id: not claimed")
                }
            }
        }
        Ok((ids, next))
    }

    /// Try to lease one candidate; `None` when another worker won it or it changed.
    async fn lease_one(
        &self,
        id: MessageId,
        req: &ClaimRequest,
    ) -> Result<Option<Record>, StoreError> {
        // `lease_owner = :o`: the SDK may resend a request whose answer was lost; the
        // resend must find its own lease, not a failed condition. A lease of another
        // claim is taken only once it ended `skew` before our `now`. And the message must
        // be due on the item itself: the index the candidates come from is eventually
        // consistent, and a stale entry of a message just deferred (ambiguous after the
        // dot, say) would otherwise have it sent again at once.
        let mut condition = String::from(
            "#s = :held AND \
             (attribute_not_exists(lease_until) OR lease_until <= :free OR lease_owner = :o)",
        );
        let mut values = vec![
            (":o", s(req.owner.clone())),
            (":u", n(req.lease_until.timestamp_millis())),
            (":held", s(req.status.as_str())),
            (":free", n(req.expired_by().timestamp_millis())),
        ];
        if req.received_before.is_none() {
            condition.push_str(" AND (attribute_not_exists(due) OR due <= :now)");
            values.push((":now", n(req.now.timestamp_millis())));
        }
        let item = self
            .update_if(
                id,
                "UpdateItem (claim)",
                "SET lease_owner = :o, lease_until = :u",
                &condition,
                &[("#s", GSI_PK)],
                values,
            )
            .await?;
        item.filter(|i| !i.is_empty())
            .map(|i| from_item(&i))
            .transpose()
    }

    /// Replace a record (dropping its lease) under `condition` and the condition that
    /// its stored version is still `rec.version`; the item is written at the next version.
    async fn put_if(
        &self,
        rec: &Record,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<(), StoreError> {
        let mut bare = rec.clone();
        bare.lease = None;
        bare.version = rec.version + 1;
        let item = self.item(&bare)?;
        let ttl = search::ttl_of(&item);
        let (version_cond, version) = version_is(rec.version);
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(format!("{condition} AND {version_cond}"))
            .expression_attribute_values(":ver", version)
            .return_values(ReturnValue::AllOld);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        match req.send().await {
            Ok(out) => {
                // The recipient items follow the message's addresses and TTL.
                let old = out.attributes().map(from_item).transpose()?;
                let old_ttl = out.attributes().and_then(search::ttl_of);
                let (old_addrs, new_addrs) = (
                    old.as_ref().map(search::addresses).unwrap_or_default(),
                    search::addresses(&bare),
                );
                if old_addrs != new_addrs || old_ttl != ttl {
                    let recv = recv_key(bare.received_at, &bare.id.to_string());
                    search::put_rcpts(&self.client, &self.table, &bare, &recv, ttl).await?;
                    let stale = old_addrs
                        .difference(&new_addrs)
                        .cloned()
                        .collect::<Vec<_>>();
                    search::delete_rcpts(&self.client, &self.table, bare.id, stale).await?;
                }
                Ok(())
            }
            Err(e) if is_condition_failed(&e) => match self.get(rec.id).await? {
                // A resent write whose first answer was lost finds its own result.
                Some(cur) if cur == bare => Ok(()),
                Some(cur) if cur.version != rec.version => Err(StoreError::Changed(rec.id)),
                Some(_) => Err(StoreError::Leased(rec.id)),
                None => Err(StoreError::NotFound(rec.id)),
            },
            Err(e) => Err(classify(BACKEND, "PutItem", e)),
        }
    }
}

#[async_trait]
impl Index for DynamoIndex {
    async fn insert(&self, rec: &Record) -> Result<bool, StoreError> {
        // Recipient items first: an indexed message can always be found by recipient.
        let item = self.item(&Record {
            version: 0,
            ..rec.clone()
        })?;
        let recv = recv_key(rec.received_at, &rec.id.to_string());
        search::put_rcpts(&self.client, &self.table, rec, &recv, search::ttl_of(&item)).await?;
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(classify(BACKEND, "PutItem", e)),
        }
    }

    async fn get(&self, id: MessageId) -> Result<Option<Record>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, pk(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "GetItem", e))?;
        out.item().map(from_item).transpose()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<Record>, StoreError> {
        // A sender or a recipient is one partition of its index, read in list order
        // within the time range; otherwise the class picks status partitions. The other
        // filters are checked on what the range returns (the subject always: DynamoDB has
        // no substring index).
        if let Some(from) = &q.from {
            let key = search::sender_key(if from == "<>" { "" } else { from });
            return self
                .list_index((SENDER_GSI, SENDER_ATTR, &key), q, false)
                .await;
        }
        if let Some(rcpt) = &q.rcpt {
            let key = rcpt.to_lowercase();
            return self.list_index((RCPT_GSI, RCPT_ATTR, &key), q, true).await;
        }
        if let Some(mb) = &q.mailbox {
            // One recipient partition per address (a tagged address is its own
            // partition, so `user+tag@` mail is found through its untagged item, see
            // `search`), merged in list order, each message once.
            let (mut out, mut seen) = (Vec::new(), std::collections::HashSet::new());
            for key in search::mailbox_keys(mb) {
                for rec in self
                    .list_index((RCPT_GSI, RCPT_ATTR, &key), q, true)
                    .await?
                {
                    if seen.insert(rec.id) {
                        out.push(rec);
                    }
                }
            }
            return Ok(ordered(out, q));
        }
        let statuses: Vec<Status> = match q.status {
            Some(s) => vec![s],
            None => Status::ALL
                .into_iter()
                .filter(|s| q.class.is_none_or(|c| Class::of(*s) == c))
                .collect(),
        };
        let mut out = Vec::new();
        for st in statuses {
            out.extend(self.list_status(st, q).await?);
        }
        Ok(ordered(out, q))
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let mut counts = Counts::default();
        for st in Status::ALL {
            counts.add(st, self.count(st).await?);
        }
        Ok(counts)
    }

    /// A `Query` of the status's partition with `Select=COUNT`: it reads (and bills) every
    /// item of that status, a page per 1 MB, so callers that need one figure (the drain's
    /// held count) ask for that one, never for the delivered archive.
    async fn count(&self, status: Status) -> Result<u64, StoreError> {
        self.count_at_most(status, u64::MAX).await
    }

    /// Pages of at most `limit` less what is counted (the Query's `Limit` is the items it
    /// reads, so no page reads past it).
    async fn count_at_most(&self, status: Status, limit: u64) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut start = None;
        while total < limit {
            let left = i32::try_from(limit - total).unwrap_or(i32::MAX);
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI)
                .key_condition_expression("#s = :s")
                .expression_attribute_names("#s", GSI_PK)
                .expression_attribute_values(":s", s(status.as_str()))
                .select(Select::Count)
                .limit(left)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "Query (count)", e))?;
            total += u64::try_from(out.count()).unwrap_or(0);
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(total.min(limit))
    }

    async fn oldest(&self, status: Status) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .list_status(
                status,
                &ListQuery {
                    limit: Some(1),
                    ..ListQuery::default()
                },
            )
            .await?
            .first()
            .map(|r| r.received_at))
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let (ids, next) = self.claim_candidates(req, start).await?;
            for id in ids {
                if let Some(claimed) = self.lease_one(id, req).await? {
                    out.push(claimed);
                    if out.len() >= req.limit {
                        return Ok(out);
                    }
                }
            }
            match next {
                Some(k) => start = Some(k),
                None => return Ok(out),
            }
        }
    }

    async fn renew(
        &self,
        id: MessageId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = self
            .update_if(
                id,
                "UpdateItem (renew)",
                "SET lease_until = :u",
                "lease_owner = :o",
                &[],
                vec![(":o", s(owner)), (":u", n(until.timestamp_millis()))],
            )
            .await?;
        Ok(done.is_some())
    }

    async fn complete(&self, rec: &Record, owner: &str) -> Result<(), StoreError> {
        self.put_if(
            rec,
            "attribute_exists(pk) AND lease_owner = :o",
            vec![(":o", s(owner))],
        )
        .await
    }

    async fn update(&self, rec: &Record, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.put_if(
            rec,
            "attribute_exists(pk) AND (attribute_not_exists(lease_until) OR lease_until <= :now)",
            vec![(":now", n(now.timestamp_millis()))],
        )
        .await
    }

    async fn set_verdicts(
        &self,
        id: MessageId,
        verdicts: &Verdicts,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_value(verdicts).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            detail: e.to_string(),
        })?;
        // The record is one JSON attribute: read it, change its verdicts, and write it
        // back only if nobody wrote it in between (compare-and-set on the version).
        for _ in 0..5 {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key(PK, pk(id))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| classify(BACKEND, "GetItem", e))?;
            let Some(item) = out.item() else {
                return Err(StoreError::NotFound(id));
            };
            if from_item(item)?.lease.is_some_and(|l| l.until > now) {
                return Err(StoreError::Leased(id));
            }
            let old = item
                .get("record")
                .and_then(|v| v.as_s().ok())
                .ok_or_else(|| corrupt(item, "no `record` attribute"))?;
            let mut json: serde_json::Value =
                serde_json::from_str(old).map_err(|e| corrupt(item, e.to_string()))?;
            json["verdicts"] = value.clone();
            let version = from_item(item)?.version;
            json["version"] = (version + 1).into();
            let (version_cond, at) = version_is(version);
            let done = self
                .update_if(
                    id,
                    "UpdateItem (verdicts)",
                    "SET #r = :new, ver = :next",
                    &format!(
                        "{version_cond} AND \
                         (attribute_not_exists(lease_until) OR lease_until <= :now)"
                    ),
                    &[("#r", "record")],
                    vec![
                        (":new", s(json.to_string())),
                        (":ver", at),
                        (":next", n(i64::try_from(version + 1).unwrap_or(i64::MAX))),
                        (":now", n(now.timestamp_millis())),
                    ],
                )
                .await?;
            if done.is_some() {
                return Ok(());
            }
        }
        Err(StoreError::Leased(id))
    }

    async fn delete(&self, rec: &Record, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let id = rec.id;
        let (version_cond, version) = version_is(rec.version);
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, pk(id))
            // The legal hold and the lease are checked in the delete's own condition: a
            // hold placed or a claim made after the record was read is never ignored.
            .condition_expression(format!(
                "attribute_not_exists(pk) OR ({version_cond} AND attribute_not_exists({LEGAL_HOLD}) \
                 AND (attribute_not_exists(lease_until) OR lease_until <= :now))"
            ))
            .expression_attribute_values(":ver", version)
            .expression_attribute_values(":now", n(now.timestamp_millis()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            Err(e) if is_condition_failed(&e) => {
                return match self.get(id).await? {
                    None => Ok(false),
                    Some(cur) if cur.legal_hold.is_some() => Err(StoreError::LegalHold(id)),
                    Some(cur) if cur.lease.as_ref().is_some_and(|l| l.until > now) => {
                        Err(StoreError::Leased(id))
                    }
                    Some(_) => Err(StoreError::Changed(id)),
                };
            }
            Err(e) => return Err(classify(BACKEND, "DeleteItem", e)),
        };
        let Some(old) = out.attributes().filter(|a| !a.is_empty()) else {
            return Ok(false);
        };
        if let Ok(rec) = from_item(old) {
            search::delete_rcpts(&self.client, &self.table, id, search::addresses(&rec)).await?;
        }
        Ok(true)
    }

    async fn load_health(&self, node: &str) -> Result<Option<HealthRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(format!("{HEALTH_PREFIX}{node}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(BACKEND, "GetItem (health)", e))?;
        out.item().map(health_of).transpose()
    }

    /// Conditional on the item's `hver` (the record's version, kept beside its JSON so
    /// the condition can read it): the one read, or no item (or an item saved before
    /// versions) for version 0.
    async fn save_health(&self, h: &HealthRecord) -> Result<(), StoreError> {
        let mut next = h.clone();
        next.version = h.version + 1;
        let json = serde_json::to_string(&next).map_err(|e| StoreError::Corrupt {
            id: format!("{HEALTH_PREFIX}{}", h.node),
            detail: e.to_string(),
        })?;
        let condition = if h.version == 0 {
            "attribute_not_exists(pk) OR attribute_not_exists(hver) OR hver = :v"
        } else {
            "hver = :v"
        };
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(format!("{HEALTH_PREFIX}{}", h.node)))
            .item(GSI_PK, s(HEALTH_STATUS))
            .item(GSI_SK, s(h.node.clone()))
            .item("record", s(json))
            .item("hver", AttributeValue::N(next.version.to_string()))
            .condition_expression(condition)
            .expression_attribute_values(":v", AttributeValue::N(h.version.to_string()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::HealthChanged(h.node.clone()))
            }
            Err(e) => Err(classify(BACKEND, "PutItem (health)", e)),
        }
    }

    async fn list_health(&self) -> Result<Vec<HealthRecord>, StoreError> {
        let (mut out, mut start) = (Vec::new(), None);
        loop {
            let (items, next) = self
                .query_index(
                    (GSI, GSI_PK, HEALTH_STATUS),
                    KeyRange::All,
                    None,
                    start,
                    true,
                )
                .await?;
            for item in &items {
                out.push(health_of(item)?);
            }
            match next {
                Some(k) => start = Some(k),
                None => return Ok(out),
            }
        }
    }
}

/// A health item's record.
fn health_of(item: &Item) -> Result<HealthRecord, StoreError> {
    let json = item
        .get("record")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| corrupt(item, "health item without `record`"))?;
    serde_json::from_str(json).map_err(|e| corrupt(item, e.to_string()))
}

/// `q` (a Query on an index whose partition condition is `#s = :s`) limited to `range`
/// of the index's sort key, `recv`.
fn within(
    q: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
    range: KeyRange,
) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
    match range {
        KeyRange::All => q.key_condition_expression("#s = :s"),
        KeyRange::Before(k) => q
            .key_condition_expression("#s = :s AND #r < :k")
            .expression_attribute_names("#r", GSI_SK)
            .expression_attribute_values(":k", s(k)),
        KeyRange::UpTo(k) => q
            .key_condition_expression("#s = :s AND #r <= :k")
            .expression_attribute_names("#r", GSI_SK)
            .expression_attribute_values(":k", s(k)),
        KeyRange::After(k) => q
            .key_condition_expression("#s = :s AND #r >= :k")
            .expression_attribute_names("#r", GSI_SK)
            .expression_attribute_values(":k", s(k)),
        KeyRange::Between(lo, hi) => q
            .key_condition_expression("#s = :s AND #r BETWEEN :lo AND :hi")
            .expression_attribute_names("#r", GSI_SK)
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// moto answers a BETWEEN with its ends the wrong way round with nothing; DynamoDB
    /// refuses it (ValidationException), so such a range must never be sent.
    #[test]
    fn a_window_that_ends_before_it_starts_is_empty() {
        let now = Utc::now();
        let mut q = ListQuery {
            since: Some(now),
            until: Some(now - chrono::Duration::days(1)),
            ..ListQuery::default()
        };
        assert!(KeyRange::of(&q).is_empty());
        q.until = Some(now + chrono::Duration::days(1));
        assert!(!KeyRange::of(&q).is_empty());
        // Newest first, the cursor is the upper end: one older than `since` is past it.
        q.newest_first = true;
        q.after = Some(Cursor {
            received_at: now - chrono::Duration::days(2),
            id: crate::model::MessageId::new(now - chrono::Duration::days(2)),
        });
        assert!(KeyRange::of(&q).is_empty());
    }
}
