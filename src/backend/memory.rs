//! In-memory twins of the ports, for unit tests of the logic above them.
//!
//! They keep the same contract as the real adapters (idempotent insert, leases honoured,
//! nothing visible before commit) so the contract suite runs against them too, but they
//! are never the only test of a feature.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::HealthRecord;
use crate::model::continuity::Continuity;
use crate::model::{Counts, Lease, MessageId, Record, Status, Verdicts};
use crate::ports::{
    AuditEntry, AuditLog, BlobInfo, BlobReader, BlobStore, BlobWriter, ClaimRequest, Cursor,
    EventStore, Index, ListQuery,
};

type BlobMap = Arc<Mutex<HashMap<String, (Arc<Vec<u8>>, DateTime<Utc>)>>>;

/// Blobs in a map.
#[derive(Clone, Default)]
pub struct MemBlobStore {
    blobs: BlobMap,
}

impl MemBlobStore {
    pub fn len(&self) -> usize {
        self.blobs.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Store a blob under a name of someone else's choosing (as SES does).
    pub fn put(&self, key: &str, bytes: Vec<u8>, at: DateTime<Utc>) {
        self.blobs
            .lock()
            .unwrap()
            .insert(key.to_string(), (Arc::new(bytes), at));
    }
}

struct MemWriter {
    key: String,
    buf: Vec<u8>,
    blobs: BlobMap,
}

#[async_trait]
impl BlobWriter for MemWriter {
    async fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(buf);
        Ok(())
    }
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.blobs
            .lock()
            .unwrap()
            .insert(self.key, (Arc::new(self.buf), Utc::now()));
        Ok(())
    }
    async fn abort(self: Box<Self>) {}
}

#[async_trait]
impl BlobStore for MemBlobStore {
    async fn create(&self, id: MessageId) -> Result<Box<dyn BlobWriter>, StoreError> {
        Ok(Box::new(MemWriter {
            key: id.to_string(),
            buf: Vec::new(),
            blobs: self.blobs.clone(),
        }))
    }
    async fn open(&self, key: &str) -> Result<BlobReader, StoreError> {
        let blob = self
            .blobs
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StoreError::MissingBlob(key.to_string()))?;
        Ok(Box::new(std::io::Cursor::new(blob.as_ref().clone())))
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.blobs.lock().unwrap().remove(key);
        Ok(())
    }
    async fn stat(&self, key: &str) -> Result<BlobInfo, StoreError> {
        let blobs = self.blobs.lock().unwrap();
        let (b, at) = blobs
            .get(key)
            .ok_or_else(|| StoreError::MissingBlob(key.to_string()))?;
        Ok(BlobInfo {
            key: key.to_string(),
            stored_at: *at,
            size: b.len() as u64,
        })
    }
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        Ok(self
            .blobs
            .lock()
            .unwrap()
            .iter()
            .map(|(key, (b, at))| BlobInfo {
                key: key.clone(),
                stored_at: *at,
                size: b.len() as u64,
            })
            .collect())
    }
}

#[derive(Default)]
struct MemState {
    records: BTreeMap<MessageId, Record>,
    health: BTreeMap<String, HealthRecord>,
    /// Records listings leave out while `get` still reads them: an eventually
    /// consistent index (DynamoDB's secondary indexes) that has not caught up.
    unlisted: std::collections::HashSet<MessageId>,
}

/// Records in an ordered map (ids sort by arrival, as in the real indexes).
#[derive(Clone, Default)]
pub struct MemIndex {
    state: Arc<Mutex<MemState>>,
}

impl MemIndex {
    /// Leave `id` out of listings (or, `false`, list it again) while `get` still reads
    /// it, as an index that has not caught up would (for tests of what reads twice).
    pub fn set_unlisted(&self, id: MessageId, unlisted: bool) {
        let mut s = self.state.lock().unwrap();
        if unlisted {
            s.unlisted.insert(id);
        } else {
            s.unlisted.remove(&id);
        }
    }
}

fn lease_free(rec: &Record, now: DateTime<Utc>) -> bool {
    rec.lease.as_ref().is_none_or(|l| l.until <= now)
}

/// Compare-and-set: `cur` becomes `rec` (without a lease, at the next version) only if
/// it is still at the version `rec` was read at.
fn replace(cur: &mut Record, rec: &Record) -> Result<(), StoreError> {
    if cur.version != rec.version {
        return Err(StoreError::Changed(rec.id));
    }
    *cur = Record {
        lease: None,
        version: rec.version + 1,
        ..rec.clone()
    };
    Ok(())
}

#[async_trait]
impl Index for MemIndex {
    async fn insert(&self, rec: &Record) -> Result<bool, StoreError> {
        let mut s = self.state.lock().unwrap();
        if s.records.contains_key(&rec.id) {
            return Ok(false);
        }
        s.records.insert(
            rec.id,
            Record {
                version: 0,
                ..rec.clone()
            },
        );
        Ok(true)
    }
    async fn get(&self, id: MessageId) -> Result<Option<Record>, StoreError> {
        Ok(self.state.lock().unwrap().records.get(&id).cloned())
    }
    async fn list(&self, q: &ListQuery) -> Result<Vec<Record>, StoreError> {
        let s = self.state.lock().unwrap();
        let mut recs: Vec<Record> = s
            .records
            .values()
            .filter(|r| !s.unlisted.contains(&r.id))
            .filter(|r| q.matches(r))
            .filter(|r| q.after.is_none_or(|a| q.beyond(Cursor::from(*r), a)))
            .filter(|r| q.since.is_none_or(|t| r.received_at >= t))
            .filter(|r| q.until.is_none_or(|t| r.received_at < t))
            .cloned()
            .collect();
        recs.sort_by_key(|r| Cursor::from(r));
        if q.newest_first {
            recs.reverse();
        }
        recs.truncate(q.limit.unwrap_or(usize::MAX));
        Ok(recs)
    }
    async fn counts(&self) -> Result<Counts, StoreError> {
        let mut c = Counts::default();
        for r in self.state.lock().unwrap().records.values() {
            c.add(r.status, 1);
        }
        Ok(c)
    }
    async fn oldest(&self, status: Status) -> Result<Option<DateTime<Utc>>, StoreError> {
        let s = self.state.lock().unwrap();
        Ok(s.records
            .values()
            .find(|r| r.status == status)
            .map(|r| r.received_at))
    }
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Record>, StoreError> {
        let mut s = self.state.lock().unwrap();
        let mut out = Vec::new();
        for rec in s.records.values_mut() {
            if out.len() >= req.limit {
                break;
            }
            let eligible = rec.status == req.status
                && lease_free(rec, req.expired_by())
                && match req.received_before {
                    Some(b) => rec.received_at < b,
                    None => rec.next_attempt_at <= req.now,
                };
            if eligible {
                rec.lease = Some(Lease {
                    owner: req.owner.clone(),
                    until: req.lease_until,
                });
                out.push(rec.clone());
            }
        }
        Ok(out)
    }
    async fn renew(
        &self,
        id: MessageId,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.state.lock().unwrap();
        match s.records.get_mut(&id).and_then(|r| r.lease.as_mut()) {
            Some(lease) if lease.owner == owner => {
                lease.until = until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn complete(&self, rec: &Record, owner: &str) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let cur = s
            .records
            .get_mut(&rec.id)
            .ok_or(StoreError::NotFound(rec.id))?;
        if cur.lease.as_ref().map(|l| l.owner.as_str()) != Some(owner) {
            return Err(StoreError::Leased(rec.id));
        }
        replace(cur, rec)
    }
    async fn update(&self, rec: &Record, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let cur = s
            .records
            .get_mut(&rec.id)
            .ok_or(StoreError::NotFound(rec.id))?;
        if !lease_free(cur, now) {
            return Err(StoreError::Leased(rec.id));
        }
        replace(cur, rec)
    }
    async fn set_verdicts(
        &self,
        id: MessageId,
        verdicts: &Verdicts,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut s = self.state.lock().unwrap();
        let cur = s.records.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        if !lease_free(cur, now) {
            return Err(StoreError::Leased(id));
        }
        cur.verdicts = Some(verdicts.clone());
        cur.version += 1;
        Ok(())
    }
    async fn delete(&self, rec: &Record, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut s = self.state.lock().unwrap();
        let Some(cur) = s.records.get(&rec.id) else {
            return Ok(false);
        };
        if cur.legal_hold.is_some() {
            return Err(StoreError::LegalHold(rec.id));
        }
        if cur.lease.as_ref().is_some_and(|l| l.until > now) {
            return Err(StoreError::Leased(rec.id));
        }
        if cur.version != rec.version {
            return Err(StoreError::Changed(rec.id));
        }
        s.records.remove(&rec.id);
        Ok(true)
    }
    async fn discard(&self, rec: &Record) -> Result<bool, StoreError> {
        Ok(self.state.lock().unwrap().records.remove(&rec.id).is_some())
    }
    async fn load_health(&self, node: &str) -> Result<Option<HealthRecord>, StoreError> {
        Ok(self.state.lock().unwrap().health.get(node).cloned())
    }
    async fn save_health(&self, h: &HealthRecord) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap();
        let stored = state.health.get(&h.node).map_or(0, |r| r.version);
        if stored != h.version {
            return Err(StoreError::HealthChanged(h.node.clone()));
        }
        let mut next = h.clone();
        next.version = h.version + 1;
        state.health.insert(h.node.clone(), next);
        Ok(())
    }
    async fn list_health(&self) -> Result<Vec<HealthRecord>, StoreError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .health
            .values()
            .cloned()
            .collect())
    }
}

/// Audit entries in a vector.
#[derive(Clone, Default)]
pub struct MemAuditLog {
    entries: Arc<Mutex<Vec<AuditEntry>>>,
}

#[async_trait]
impl AuditLog for MemAuditLog {
    async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.entries.lock().unwrap().push(entry.clone());
        Ok(())
    }
    async fn entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.entries.lock().unwrap().clone())
    }
}

/// The continuity record and marks in memory.
#[derive(Clone, Default)]
pub struct MemEventStore {
    state: Arc<Mutex<MemEvents>>,
}

#[derive(Default)]
struct MemEvents {
    record: Continuity,
    marks: HashMap<String, DateTime<Utc>>,
}

#[async_trait]
impl EventStore for MemEventStore {
    async fn load(&self) -> Result<Continuity, StoreError> {
        Ok(self.state.lock().unwrap().record.clone())
    }
    async fn save(&self, c: &Continuity) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap();
        if state.record.version != c.version {
            return Err(StoreError::FileChanged("the continuity record".into()));
        }
        state.record = Continuity {
            version: c.version + 1,
            ..c.clone()
        };
        Ok(())
    }
    async fn mark_once(&self, key: &str, keep_until: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut state = self.state.lock().unwrap();
        let now = Utc::now();
        if state.marks.get(key).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        state.marks.insert(key.to_string(), keep_until);
        Ok(true)
    }
    async fn marked(&self, key: &str) -> Result<bool, StoreError> {
        let now = Utc::now();
        Ok(self
            .state
            .lock()
            .unwrap()
            .marks
            .get(key)
            .is_some_and(|until| *until > now))
    }
    async fn unmark(&self, key: &str) -> Result<(), StoreError> {
        self.state.lock().unwrap().marks.remove(key);
        Ok(())
    }
}

/// A blob store that fails on purpose, for unit tests of what the logic above does when
/// storage does: `create` fails while `full` is set (a full disk), and the next
/// `delete_failures` deletes fail transiently (S3 throttling). Everything else goes to
/// `inner`.
#[cfg(test)]
pub struct FaultyBlobs {
    pub inner: Arc<dyn BlobStore>,
    pub full: bool,
    pub delete_failures: std::sync::atomic::AtomicU32,
    /// Marks that fail before one succeeds (this store keeps marks, like S3's tags).
    pub mark_failures: std::sync::atomic::AtomicU32,
    /// Every mark made, in order.
    pub marks: std::sync::Mutex<Vec<(String, crate::model::Disposal)>>,
    /// A key whose bytes cannot be read (an S3 403, a damaged disk).
    pub unreadable: Option<String>,
}

#[cfg(test)]
impl FaultyBlobs {
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        FaultyBlobs {
            inner,
            full: false,
            delete_failures: 0.into(),
            mark_failures: 0.into(),
            marks: Default::default(),
            unreadable: None,
        }
    }
}

#[cfg(test)]
#[async_trait]
impl BlobStore for FaultyBlobs {
    async fn create(&self, id: MessageId) -> Result<Box<dyn BlobWriter>, StoreError> {
        if self.full {
            let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(StoreError::io("create", "blob", full));
        }
        self.inner.create(id).await
    }
    async fn open(&self, key: &str) -> Result<BlobReader, StoreError> {
        if self.unreadable.as_deref() == Some(key) {
            return Err(StoreError::Backend {
                backend: "test",
                detail: "AccessDenied".into(),
                transient: false,
                source: None,
            });
        }
        self.inner.open(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let fail = self
            .delete_failures
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(StoreError::Backend {
                backend: "test",
                detail: "SlowDown".into(),
                transient: true,
                source: None,
            });
        }
        self.inner.delete(key).await
    }
    async fn stat(&self, key: &str) -> Result<BlobInfo, StoreError> {
        self.inner.stat(key).await
    }
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        self.inner.list().await
    }
    async fn mark(&self, key: &str, disposal: crate::model::Disposal) -> Result<bool, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .mark_failures
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Backend {
                backend: "test",
                detail: "SlowDown".into(),
                transient: true,
                source: None,
            });
        }
        self.marks.lock().unwrap().push((key.to_string(), disposal));
        Ok(true)
    }
}

/// Each user's UIDs and flags in memory.
#[derive(Clone, Default)]
pub struct MemMailboxes {
    state: Arc<Mutex<HashMap<String, crate::model::mailbox::MailboxState>>>,
}

impl MemMailboxes {
    fn with<T>(
        &self,
        user: &str,
        f: impl FnOnce(&mut crate::model::mailbox::MailboxState) -> T,
    ) -> T {
        let mut all = self.state.lock().unwrap();
        let state = all.entry(user.to_string()).or_insert_with(|| {
            crate::model::mailbox::MailboxState::new(
                u32::try_from(Utc::now().timestamp()).unwrap_or(1),
            )
        });
        f(state)
    }
}

#[async_trait]
impl crate::ports::Mailboxes for MemMailboxes {
    async fn load(&self, user: &str) -> Result<crate::model::mailbox::MailboxState, StoreError> {
        Ok(self.with(user, |s| s.clone()))
    }

    async fn assign(
        &self,
        user: &str,
        ids: &[MessageId],
    ) -> Result<crate::model::mailbox::MailboxState, StoreError> {
        self.with(user, |s| {
            s.add(ids).map_err(|e| StoreError::Corrupt {
                id: format!("mailbox of {}", crate::model::redact(user)),
                detail: e.to_string(),
            })?;
            Ok(s.clone())
        })
    }

    async fn change_flags(
        &self,
        user: &str,
        changes: &[crate::model::mailbox::FlagChange],
    ) -> Result<(), StoreError> {
        self.with(user, |s| s.change(changes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the SQLite index's: a never-acknowledged message's row goes whatever hold or
    /// version it has (`Index::discard`), where a delete is refused.
    #[tokio::test]
    async fn a_discard_removes_the_row_whatever_its_hold_or_version() {
        let index = MemIndex::default();
        let now = Utc::now();
        let rec = crate::backend::one_held(&index, now).await;
        let mut held = index.get(rec.id).await.unwrap().unwrap();
        held.legal_hold = Some(crate::model::LegalHold {
            at: now,
            reason: "rule".into(),
        });
        index.update(&held, now).await.unwrap();
        assert!(index.delete(&rec, DateTime::<Utc>::MAX_UTC).await.is_err());
        assert!(index.discard(&rec).await.unwrap());
        assert_eq!(index.get(rec.id).await.unwrap(), None);
        assert!(!index.discard(&rec).await.unwrap());
    }
}
