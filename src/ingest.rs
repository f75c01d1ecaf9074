//! Accepting a message into the spool: blob first, then index.
//!
//! [`Spool::begin`] opens a blob and writes our one `Received:` header; the SMTP session
//! then streams the decoded DATA through [`Incoming::write`] (hashing it and capturing the
//! header block for the summary on the way), and [`Incoming::commit`] makes the blob
//! durable and inserts the index row. Only when `commit` returns may the listener say 250:
//! a crash at any earlier point leaves at most an unreferenced temporary file.
//!
//! The envelope travels with the bytes: [`Stamp`] is handed to the blob writer, which
//! (on the local spool) makes it durable beside the message in the same flush, so
//! [`rebuild`] can make the record again from the spool alone (`standby reindex`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::Journal;
use crate::config::RetentionPolicy;
use crate::error::StoreError;
use crate::model::{Envelope, MessageId, Origin, Record, SentPart, Status, Verdicts, redact};
use crate::ports::Storage;
use crate::ports::{Accepting, BlobWriter, Clock, Inbound};
use crate::publish::Publisher;
use crate::sender::{Job, SenderChecks};
use crate::summary::HeadCapture;

/// Accepts messages into a [`Storage`].
#[derive(Clone)]
pub struct Spool {
    storage: Storage,
    clock: Arc<dyn Clock>,
    hostname: String,
    journal: Arc<Journal>,
    retention: Arc<RetentionPolicy>,
    checks: Option<SenderChecks>,
    publisher: Arc<Publisher>,
    /// Counts messages stored: IMAP's IDLE wakes on a change (see [`Spool::with_new_mail`]).
    new_mail: Option<Arc<tokio::sync::watch::Sender<u64>>>,
}

impl Spool {
    pub fn new(storage: Storage, clock: Arc<dyn Clock>, hostname: impl Into<String>) -> Self {
        Spool {
            publisher: Arc::new(Publisher::new(storage.clone())),
            storage,
            clock,
            hostname: hostname.into(),
            journal: Arc::default(),
            retention: Arc::default(),
            checks: None,
            new_mail: None,
        }
    }

    /// Count each message stored in `counter`, after its commit.
    pub fn with_new_mail(mut self, counter: Arc<tokio::sync::watch::Sender<u64>>) -> Self {
        self.new_mail = Some(counter);
        self
    }

    /// Share `publisher` (one per process, so a graceful stop flushes every spool's).
    pub fn with_publisher(mut self, publisher: Arc<Publisher>) -> Self {
        self.publisher = publisher;
        self
    }

    /// Wait until every message accepted so far is published (see [`crate::publish`]):
    /// a graceful stop calls this last.
    pub async fn flush(&self) {
        self.publisher.flush().await;
    }

    /// Check each accepted message's sender (SPF) in the background: it is stored with
    /// a pending verdict and its check queued after the index insert, so the 250 never
    /// waits for DNS (see [`crate::sender`]). Without this, no verdict is recorded, so
    /// no DSN is ever sent for mail this listener received.
    pub fn with_sender_checks(mut self, checks: SenderChecks) -> Self {
        self.checks = Some(checks);
        self
    }

    /// Mark messages confidential by these retention rules as they come in.
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = Arc::new(policy);
        self
    }

    /// File transactions to these journal addresses as journal copies.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.journal = Arc::new(journal);
        self
    }

    /// Start receiving one message for `env`.
    pub async fn begin(&self, env: Envelope) -> Result<Incoming, StoreError> {
        let received_at = self.clock.now();
        let id = MessageId::new(received_at);
        let mut writer = self.storage.blobs.create(id).await?;
        let header = received_header(&self.hostname, id, &env, received_at);
        let mut hasher = Sha256::new();
        hasher.update(header.as_bytes());
        let mut xxh3 = Box::new(xxhash_rust::xxh3::Xxh3::new());
        xxh3.update(header.as_bytes());
        if let Err(e) = writer.write(header.as_bytes()).await {
            writer.abort().await;
            return Err(e);
        }
        Ok(Incoming {
            started: std::time::Instant::now(),
            id,
            env,
            received_at,
            writer,
            hasher,
            xxh3,
            size: header.len() as u64,
            head: HeadCapture::default(),
            storage: self.storage.clone(),
            journal: self.journal.clone(),
            retention: self.retention.clone(),
            checks: self.checks.clone(),
            publisher: self.publisher.clone(),
            new_mail: self.new_mail.clone(),
            spam: None,
        })
    }
}

/// The envelope kept with a message's bytes (in the local spool's `messages/<id>.spool`):
/// everything the record has that the bytes do not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    pub id: MessageId,
    pub received_at: DateTime<Utc>,
    /// MAIL FROM; empty for the null sender.
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub origin: Origin,
    /// Sent to a journal address.
    #[serde(default)]
    pub journal: bool,
    /// Sent by one of our users: which part (absent for received mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<SentPart>,
    /// The stored bytes' size and SHA-256 (hex), written at commit, after the last byte:
    /// a start after a crash indexes a message without a row again only when its bytes
    /// match them (see [`crate::publish::check_unpublished`]). Absent from older
    /// envelopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The content filter's verdict at receipt ([`Verdicts::spam`]), so a record made
    /// again from the spool (`standby reindex`, a start after a crash) keeps spam in the
    /// users' Junk view. Absent from older envelopes and unfiltered intakes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam: Option<String>,
}

impl Stamp {
    pub fn of(id: MessageId, received_at: DateTime<Utc>, env: &Envelope) -> Self {
        Stamp {
            id,
            received_at,
            mail_from: env.mail_from.clone(),
            rcpts: env.rcpts.clone(),
            origin: env.origin.clone(),
            journal: env.journal,
            sent: env.sent,
            size: None,
            sha256: None,
            spam: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// # Errors
    /// The text is not a stamp (a torn or foreign file): what does not parse, as text.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// The record of a spooled message, made again from its [`Stamp`] and stored bytes as
/// [`Incoming::commit`] made it at receipt (hash, size, summary, journal filing,
/// confidential rules), in status `held` (a journal copy: `journal`); what happened to it
/// since (delivery attempts) is not in the spool, and the caller decides the status.
pub fn rebuild(
    stamp: &Stamp,
    bytes: &[u8],
    journal: &Journal,
    retention: &RetentionPolicy,
) -> Record {
    let mut head = HeadCapture::default();
    head.feed(bytes);
    let mut rec = Record {
        origin: stamp.origin.clone(),
        xxh3: Some(crate::model::xxh3_hex(bytes)),
        ..Record::held(
            stamp.id,
            stamp.mail_from.clone(),
            stamp.rcpts.clone(),
            stamp.received_at,
            (bytes.len() as u64, hex::encode(Sha256::digest(bytes))),
            head.summary(),
        )
    };
    if stamp.journal {
        journal.file(&mut rec, head.bytes(), || Some(bytes.to_vec()));
    }
    if let Some(part) = stamp.sent {
        part.apply(&mut rec);
    }
    if let Some(spam) = &stamp.spam {
        rec.verdicts.get_or_insert_with(Verdicts::default).spam = Some(spam.clone());
    }
    retention.classify(&mut rec, head.bytes());
    rec
}

/// A message being received; see the module docs.
pub struct Incoming {
    /// When the first byte could come (for `standby_receive_seconds`).
    started: std::time::Instant,
    id: MessageId,
    env: Envelope,
    received_at: DateTime<Utc>,
    writer: Box<dyn BlobWriter>,
    hasher: Sha256,
    /// The drain's cheaper check of the same bytes ([`Record::xxh3`]).
    xxh3: Box<xxhash_rust::xxh3::Xxh3>,
    size: u64,
    head: HeadCapture,
    storage: Storage,
    journal: Arc<Journal>,
    retention: Arc<RetentionPolicy>,
    checks: Option<SenderChecks>,
    publisher: Arc<Publisher>,
    new_mail: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    /// The content filter's verdict, kept as [`Verdicts::spam`] (`PASS`, `FAIL`, or
    /// [`Verdicts::UNFILTERED`]).
    spam: Option<String>,
}

impl Incoming {
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Record the content filter's verdict on the message (see [`Verdicts::spam`]).
    pub fn set_spam_verdict(&mut self, verdict: &str) {
        self.spam = Some(verdict.to_string());
    }

    /// Append message bytes (already dot-unstuffed, CRLF line ends).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(chunk);
        self.xxh3.update(chunk);
        self.head.feed(chunk);
        self.size += chunk.len() as u64;
        self.writer.write(chunk).await
    }

    /// Make the message durable: on the local spool, the blob and its envelope written
    /// out, then flushed while the index row is written and flushed; elsewhere the blob
    /// committed, then the row. Only then may the listener answer 250.
    ///
    /// # Errors
    /// Any storage error; the message must then not be acknowledged (the listener answers
    /// 451 and the client keeps it). On the local spool nothing of it stays (its file is
    /// removed, and its row if it was written); elsewhere a blob committed before an index
    /// failure is removed only when it is certain no record points at it (see
    /// [`settle_failed_insert`]).
    pub async fn commit(self) -> Result<Record, StoreError> {
        let Incoming {
            started,
            id,
            env,
            received_at,
            writer,
            hasher,
            xxh3,
            size,
            head,
            storage,
            journal,
            retention,
            checks,
            publisher,
            new_mail,
            spam,
        } = self;
        let blob = writer.key();
        let sha256 = hex::encode(hasher.finalize());
        let mut writer = writer;
        writer.set_envelope(
            Stamp {
                size: Some(size),
                sha256: Some(sha256.clone()),
                spam: spam.clone(),
                ..Stamp::of(id, received_at, &env)
            }
            .to_json(),
        );
        // Staged (the local spool): written out and readable, flushed below together
        // with the row. Otherwise (S3) committed now, and the row written after it.
        let staged = match writer.stage().await {
            Ok(staged) => staged,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        let mut writer = Some(writer);
        if !staged && let Some(w) = writer.take() {
            w.commit().await?;
        }
        let key = blob.clone().unwrap_or_else(|| id.to_string());
        let is_journal = env.journal;
        let sent = env.sent;
        let mut rec = Record {
            origin: env.origin,
            blob,
            xxh3: Some(crate::model::xxh3_text(xxh3.digest128())),
            ..Record::held(
                id,
                env.mail_from,
                env.rcpts,
                received_at,
                (size, sha256),
                head.summary(),
            )
        };
        if is_journal {
            // A journal report is read back whole (its envelope is in the body), and so is
            // a copy the store keeps an archive copy of.
            let whole = if crate::journal::is_report(head.bytes()) || storage.blobs.archives() {
                storage.blobs.read_all(&key).await.ok().map(|(b, _)| b)
            } else {
                None
            };
            journal.file(&mut rec, head.bytes(), || whole.clone());
            if rec.status == Status::Journal && storage.blobs.archives() {
                let bytes = whole.ok_or_else(|| StoreError::MissingBlob(key.clone()))?;
                archive_journal_copy(&storage, &retention, &rec, &key, &bytes).await?;
            }
        }
        if let Some(part) = sent {
            part.apply(&mut rec);
        }
        retention.classify(&mut rec, head.bytes());
        // A journal copy is never bounced: no sender check for it; nor is what our own
        // users sent (they logged in: their DSNs always go to them).
        if let Some(spam) = spam {
            rec.verdicts.get_or_insert_with(Verdicts::default).spam = Some(spam);
        }
        let check = checks
            .filter(|_| rec.status != Status::Journal && sent.is_none())
            .and_then(|c| Some((c, Job::of(&rec)?)));
        if check.is_some() {
            rec.verdicts.get_or_insert_with(Verdicts::default).spf = Verdicts::pending().spf;
        }
        match writer {
            // The message and its envelope are flushed while the row is written and then
            // flushed (WAL): the file system folds the flushes into one journal commit
            // where one after the other would wait for two (see [`crate::publish`]), and
            // the row's write (which waits for the other sessions' grouped insert, and
            // now and then for a checkpoint) no longer comes before the file's flush.
            // Nothing is acknowledged before both are durable; a crash before then
            // leaves a message in `tmp/` that the next start indexes again only if its
            // envelope and bytes agree, as any crash before the reply would.
            Some(writer) => {
                // The error, and whether a row may be there to remove.
                let row = async {
                    if let Err(e) = storage.index.insert_unsynced(&rec).await {
                        match settle_insert(&storage, &rec, e).await {
                            Settled::Stored => {}
                            Settled::Absent(e) => return Err((e, false)),
                            // Perhaps written (removed if it is there now; one that lands
                            // later from the WAL, the next start drops: its message is
                            // gone).
                            Settled::Unknown(e) => return Err((e, true)),
                        }
                    }
                    storage.index.sync().await.map_err(|e| (e, true))
                };
                let (flushed, indexed) = tokio::join!(writer.commit(), row);
                // Not durable, so not acknowledged: nothing of it may stay, neither a row
                // (whatever lease a drain took meanwhile) nor its file (which the next
                // start would index again from its envelope).
                let failed = match (flushed, indexed) {
                    (Ok(()), Ok(())) => None,
                    (Err(e), indexed) => Some((e, !matches!(indexed, Err((_, false))))),
                    (Ok(()), Err((e, row_written))) => Some((e, row_written)),
                };
                if let Some((e, row_written)) = failed {
                    if row_written && let Err(d) = storage.index.discard(&rec).await {
                        tracing::warn!(%id, error = %d, "cannot remove the row of a message that was not made durable (the next start removes it)");
                    }
                    if let Err(d) = storage.blobs.delete(&key).await {
                        tracing::warn!(%id, error = %d, "the file of a message that was not made durable may be left (unlinked but not flushed, or not unlinked): the next start checks it");
                    }
                    return Err(e);
                }
            }
            None => {
                if let Err(e) = storage.index.insert(&rec).await {
                    settle_failed_insert(&storage, &rec, &key, e).await?;
                }
            }
        }
        publisher.submit(key);
        if let Some(counter) = &new_mail {
            counter.send_modify(|n| *n += 1);
        }
        if let Some((checks, job)) = check {
            checks.submit(job);
        }
        tracing::info!(
            %id,
            ip = %rec.origin.ip,
            helo = sanitize(&rec.origin.helo).as_str(),
            size,
            rcpts = rec.rcpts.len(),
            from_domain = redact(&rec.mail_from),
            status = %rec.status,
            "message stored"
        );
        crate::metrics::received(started.elapsed().as_secs_f64());
        Ok(rec)
    }

    /// Drop the partial message.
    pub async fn abort(self) {
        self.writer.abort().await;
    }
}

#[async_trait::async_trait]
impl Inbound for Spool {
    async fn begin(&self, env: Envelope) -> Result<Box<dyn Accepting>, StoreError> {
        Ok(Box::new(Spool::begin(self, env).await?))
    }
}

#[async_trait::async_trait]
impl Accepting for Incoming {
    fn id(&self) -> MessageId {
        self.id
    }

    fn set_spam_verdict(&mut self, verdict: &str) {
        Incoming::set_spam_verdict(self, verdict);
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        Incoming::write(self, chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<Record, StoreError> {
        Incoming::commit(*self).await
    }

    async fn abort(self: Box<Self>) {
        Incoming::abort(*self).await
    }
}

/// After the index refused or failed to answer an insert whose blob is stored: `Ok` when
/// the record is there after all (the answer was lost, or a retry of the request landed),
/// so the message is durable and may be acknowledged; otherwise the error, for a 451.
///
/// The blob is removed only when it is certain the index write did not happen and never
/// will: the index says (strongly consistent read) it has no record, and the write was
/// refused on its merits (not a timeout or an unreachable service, whose request may still
/// land after the read). Otherwise it stays: a blob a record may come to point at must not
/// go, and one that no record ever points at was never acknowledged (the client got 451
/// and sends the message again), so it is only storage to reclaim.
async fn settle_failed_insert(
    storage: &Storage,
    rec: &Record,
    key: &str,
    e: StoreError,
) -> Result<(), StoreError> {
    match settle_insert(storage, rec, e).await {
        Settled::Stored => Ok(()),
        Settled::Absent(e) => {
            if let Err(d) = storage.blobs.delete(key).await {
                tracing::warn!(id = %rec.id, error = %d, "cannot remove the blob of a refused message");
            }
            Err(e)
        }
        Settled::Unknown(e) => {
            tracing::warn!(
                id = %rec.id,
                blob = key,
                error = %e,
                "index write failed and may still land; blob left in place (never acknowledged \
                 unless its record appears)"
            );
            Err(e)
        }
    }
}

/// What became of an insert the index refused or did not answer.
enum Settled {
    /// The record is there after all (with these bytes).
    Stored,
    /// Certainly absent, and the write will never land.
    Absent(StoreError),
    /// It may still land.
    Unknown(StoreError),
}

async fn settle_insert(storage: &Storage, rec: &Record, e: StoreError) -> Settled {
    match storage.index.get(rec.id).await {
        Ok(Some(stored)) if stored.sha256 == rec.sha256 => {
            tracing::warn!(id = %rec.id, error = %e, "index write reported an error but the record is stored");
            Settled::Stored
        }
        Ok(None) if !e.is_transient() => Settled::Absent(e),
        _ => Settled::Unknown(e),
    }
}

/// Keep the write-once archive copy of a journal copy (S3: the Object Lock bucket) before
/// it is indexed, so an indexed journal copy always has one; idempotent, so a retry
/// repeats it harmlessly. `key` is the blob's key, `bytes` the whole message.
pub async fn archive_journal_copy(
    storage: &Storage,
    retention: &RetentionPolicy,
    rec: &Record,
    key: &str,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let until = retention
        .journal_days
        .map(|d| rec.received_at + chrono::Duration::days(i64::from(d)));
    storage.blobs.archive(key, bytes, until).await
}

/// Our trace header (RFC 5321 §4.4), folded, with CRLF line ends.
fn received_header(host: &str, id: MessageId, env: &Envelope, at: DateTime<Utc>) -> String {
    let helo = sanitize(&env.origin.helo);
    // RFC 3848: A for a client that logged in, S for TLS.
    let with = match (env.origin.user.is_some(), env.origin.tls) {
        (true, true) => "ESMTPSA",
        (true, false) => "ESMTPA",
        (false, true) => "ESMTPS",
        (false, false) => "ESMTP",
    };
    let for_clause = match env.rcpts.as_slice() {
        // The RFC 5321 form, as on the wire: `for <"john doe"@example.test>`.
        [one] => {
            let path = crate::model::address::smtp_path(one).unwrap_or_else(|| one.clone());
            format!("\r\n\tfor <{}>", sanitize(&path))
        }
        _ => String::new(),
    };
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {host} (standby-mx) with {with} id {id}{for_clause};\r\n\t{date}\r\n",
        ip = env.origin.ip,
        date = at.format("%a, %d %b %Y %H:%M:%S +0000"),
    )
}

/// Keep header text printable and on one line whatever the client sent.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Origin;
    use crate::ports::SystemClock;

    fn env(rcpts: &[&str]) -> Envelope {
        Envelope {
            mail_from: "alice@example.org".into(),
            rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
            origin: Origin {
                ip: "192.0.2.1".into(),
                helo: "mx.example.org\r\nX-Evil: 1".into(),
                tls: false,
                user: None,
            },
            journal: false,
            sent: None,
        }
    }

    #[tokio::test]
    async fn commit_stores_blob_then_index_with_hash_and_summary() {
        let storage = Storage::memory();
        let spool = Spool::new(storage.clone(), Arc::new(SystemClock), "standby.test");
        let mut inc = spool.begin(env(&["bob@example.test"])).await.unwrap();
        let body = b"Subject: hi\r\nMessage-ID: <m1@example.org>\r\n\r\nhello\r\n";
        inc.write(&body[..10]).await.unwrap();
        inc.write(&body[10..]).await.unwrap();
        let rec = inc.commit().await.unwrap();

        let mut stored = Vec::new();
        let mut r = storage.blobs.open(&rec.blob_key()).await.unwrap();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut stored)
            .await
            .unwrap();
        assert!(stored.starts_with(b"Received: from mx.example.org??X-Evil:?1 ([192.0.2.1])"));
        assert!(stored.ends_with(body));
        assert_eq!(stored.iter().filter(|&&b| b == b'\n').count(), 4 + 4);
        assert_eq!(rec.size, stored.len() as u64);
        assert_eq!(rec.sha256, hex::encode(Sha256::digest(&stored)));
        assert_eq!(rec.summary.subject.as_deref(), Some("hi"));
        assert_eq!(storage.index.get(rec.id).await.unwrap(), Some(rec));
    }

    /// A check that passes every sender.
    struct Pass;

    #[async_trait::async_trait]
    impl crate::ports::SenderCheck for Pass {
        async fn spf(&self, _: std::net::IpAddr, _: &str, _: &str) -> String {
            "PASS".into()
        }
    }

    #[tokio::test]
    async fn the_sender_is_checked_after_the_commit_except_journal_copies_and_null_senders() {
        use crate::sender::{Limits, SenderChecks, SenderVerifier};
        let storage = Storage::memory();
        let verifier = SenderVerifier::new(
            Arc::new(Pass),
            std::time::Duration::from_secs(5),
            Arc::new(SystemClock),
        );
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let (checks, _worker) =
            SenderChecks::start(verifier, storage.index.clone(), Limits::default(), stop);
        let spool = Spool::new(storage.clone(), Arc::new(SystemClock), "standby.test")
            .with_journal(Journal::new(
                &["journal@archive.example.test".to_string()],
                &["example.test".to_string()],
            ))
            .with_sender_checks(checks);
        let commit = |env: Envelope| {
            let spool = spool.clone();
            async move {
                let mut inc = spool.begin(env).await.unwrap();
                inc.write(b"Subject: s\r\n\r\nx\r\n").await.unwrap();
                inc.commit().await.unwrap()
            }
        };
        let held = commit(env(&["bob@example.test"])).await;
        assert_eq!(held.verdicts, Some(Verdicts::pending()), "stored pending");
        let journal = commit(Envelope {
            journal: true,
            ..env(&["journal@archive.example.test"])
        })
        .await;
        assert_eq!((journal.status, journal.verdicts), (Status::Journal, None));
        let bounce = commit(Envelope {
            mail_from: String::new(),
            ..env(&["bob@example.test"])
        })
        .await;
        assert_eq!(bounce.verdicts, None, "the null sender is never bounced");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = storage.index.get(held.id).await.unwrap().unwrap();
            if got.verdicts == Some(Verdicts::spf("PASS")) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{:?}", got.verdicts);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn abort_leaves_nothing() {
        let storage = Storage::memory();
        let spool = Spool::new(storage.clone(), Arc::new(SystemClock), "standby.test");
        let mut inc = spool
            .begin(env(&["a@example.test", "b@example.test"]))
            .await
            .unwrap();
        let id = inc.id();
        inc.write(b"partial").await.unwrap();
        inc.abort().await;
        assert!(storage.blobs.open(&id.to_string()).await.is_err());
        assert_eq!(storage.index.get(id).await.unwrap(), None);
    }

    /// An index whose inserts fail in one of the ways a remote index can.
    #[derive(Clone, Copy)]
    enum Failure {
        /// The write landed, the answer was lost (a timeout after the server applied it).
        LandedAnswerLost,
        /// Refused on its merits (access denied, a missing table): certainly not written.
        Refused,
        /// No answer (a timeout): the write may still land.
        NoAnswer,
    }

    struct Failing(crate::backend::MemIndex, Failure);

    fn backend_error(transient: bool) -> StoreError {
        StoreError::Backend {
            backend: "test",
            detail: "insert failed".into(),
            transient,
            source: None,
        }
    }

    #[async_trait::async_trait]
    impl crate::ports::Index for Failing {
        async fn insert(&self, rec: &Record) -> Result<bool, StoreError> {
            match self.1 {
                Failure::LandedAnswerLost => {
                    self.0.insert(rec).await?;
                    Err(backend_error(true))
                }
                Failure::Refused => Err(backend_error(false)),
                Failure::NoAnswer => Err(backend_error(true)),
            }
        }
        async fn get(&self, id: MessageId) -> Result<Option<Record>, StoreError> {
            self.0.get(id).await
        }
        async fn list(&self, q: &crate::ports::ListQuery) -> Result<Vec<Record>, StoreError> {
            self.0.list(q).await
        }
        async fn counts(&self) -> Result<crate::model::Counts, StoreError> {
            self.0.counts().await
        }
        async fn oldest(&self, st: Status) -> Result<Option<DateTime<Utc>>, StoreError> {
            self.0.oldest(st).await
        }
        async fn claim(&self, r: &crate::ports::ClaimRequest) -> Result<Vec<Record>, StoreError> {
            self.0.claim(r).await
        }
        async fn renew(
            &self,
            id: MessageId,
            o: &str,
            u: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            self.0.renew(id, o, u).await
        }
        async fn complete(&self, rec: &Record, owner: &str) -> Result<(), StoreError> {
            self.0.complete(rec, owner).await
        }
        async fn update(&self, rec: &Record, now: DateTime<Utc>) -> Result<(), StoreError> {
            self.0.update(rec, now).await
        }
        async fn set_verdicts(
            &self,
            id: MessageId,
            v: &Verdicts,
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            self.0.set_verdicts(id, v, now).await
        }
        async fn delete(&self, rec: &Record, now: DateTime<Utc>) -> Result<bool, StoreError> {
            self.0.delete(rec, now).await
        }
        async fn load_health(
            &self,
            node: &str,
        ) -> Result<Option<crate::model::HealthRecord>, StoreError> {
            self.0.load_health(node).await
        }
        async fn save_health(&self, h: &crate::model::HealthRecord) -> Result<(), StoreError> {
            self.0.save_health(h).await
        }
        async fn list_health(&self) -> Result<Vec<crate::model::HealthRecord>, StoreError> {
            self.0.list_health().await
        }
    }

    /// Commit one message into storage whose index fails as `failure` says; the result
    /// and whether the blob is still there.
    async fn commit_with(failure: Failure) -> (Result<Record, StoreError>, bool, MessageId) {
        commit_into(failure, Storage::memory()).await
    }

    /// [`commit_with`] on `storage`'s blobs.
    async fn commit_into(
        failure: Failure,
        storage: Storage,
    ) -> (Result<Record, StoreError>, bool, MessageId) {
        let storage = Storage {
            index: Arc::new(Failing(crate::backend::MemIndex::default(), failure)),
            ..storage
        };
        let spool = Spool::new(storage.clone(), Arc::new(SystemClock), "standby.test");
        let mut inc = spool.begin(env(&["bob@example.test"])).await.unwrap();
        let id = inc.id();
        inc.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        let res = inc.commit().await;
        let blob = storage.blobs.open(&id.to_string()).await.is_ok();
        (res, blob, id)
    }

    #[tokio::test]
    async fn an_index_write_that_landed_is_a_success_despite_its_error() {
        let (res, blob, id) = commit_with(Failure::LandedAnswerLost).await;
        assert_eq!(
            res.unwrap().id,
            id,
            "the record is there: the message is durable"
        );
        assert!(blob);
    }

    #[tokio::test]
    async fn a_refused_index_write_removes_the_blob() {
        let (res, blob, _) = commit_with(Failure::Refused).await;
        assert!(res.is_err(), "no 250");
        assert!(!blob, "certainly never indexed: the blob goes");
    }

    /// The local spool stages the file and flushes it while the row is written: a row
    /// that failed, refused or unanswered, leaves no file (it would be indexed again from
    /// its envelope at the next start, and delivered although the client got 451); one
    /// that landed despite its error keeps it.
    #[tokio::test]
    async fn the_local_spool_keeps_no_file_of_a_message_whose_row_failed() {
        for (failure, kept) in [
            (Failure::LandedAnswerLost, true),
            (Failure::Refused, false),
            (Failure::NoAnswer, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage {
                blobs: Arc::new(crate::backend::FsBlobStore::open(dir.path()).unwrap()),
                ..Storage::memory()
            };
            let (res, blob, _) = commit_into(failure, storage).await;
            assert_eq!(res.is_ok(), kept);
            assert_eq!(blob, kept, "the file is there: {blob}, should be: {kept}");
            let files = std::fs::read_dir(dir.path().join("tmp")).unwrap().count()
                + std::fs::read_dir(dir.path().join("messages"))
                    .unwrap()
                    .count();
            assert_eq!(files, usize::from(kept), "files left in the spool");
        }
    }

    #[tokio::test]
    async fn an_unanswered_index_write_leaves_the_blob() {
        let (res, blob, _) = commit_with(Failure::NoAnswer).await;
        assert!(res.is_err(), "no 250");
        assert!(
            blob,
            "the write may still land and point at it: the blob stays"
        );
    }
}
