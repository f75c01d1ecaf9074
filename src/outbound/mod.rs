//! Sending during the outage: what a user sends, and where each part of it goes.
//!
//! A message a logged-in user sends (the submission listener, the emergency inbox) is
//! stored as up to three records, each a normal one with its own blob, so every later
//! step is the machinery the rest of the standby already trusts:
//! - **to our own domains** ([`SentPart::Local`]): held like received mail, so it is in
//!   those users' emergency inbox now and reaches the primary with the rest later;
//! - **to outside recipients** ([`SentPart::Outbound`]): status `outbound`, delivered by
//!   the outbound queue ([`queue`]) through the [`Outbound`](crate::ports::Outbound)
//!   port (a smarthost, direct MX delivery, SES), DKIM-signed ([`dkim`]), each recipient
//!   retried with the drain's backoff and bounced to the sender when it fails for good;
//! - **the sender's copy** ([`SentPart::Copy`]): held for the sender's own address (or
//!   `[outbound] sent_copy`), with `X-Standby-Sent: yes` on top, so once the primary is
//!   back the drain delivers what they sent into their mailbox, once, like any held mail.
//!
//! The user may send only as themselves: every address in `From` (and `Sender`, when
//! there is one) must be one they may send as ([`Identity::may_send_as`]), or the
//! message is refused with 553 5.7.1. A message without `Date` or `Message-ID` gets them
//! (RFC 6409 §8), the id on the user's domain.
//!
//! The parts are stored one after the other; should one fail, those already stored are
//! removed again and the client told to try later, so a retry never leaves two copies.

pub mod arc;
pub mod compose;
pub mod dkim;
pub mod mailer;
pub mod queue;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{Envelope, Origin, Record, SentPart, redact};
use crate::ports::{AuditEntry, Clock, Identity, Inbound, Storage};

/// The header that marks the sender's own copy.
pub const SENT_HEADER: &str = "X-Standby-Sent: yes\r\n";

/// Messages per user over the last hour (`[submission] rate_per_hour`), for every way
/// of sending (the submission listener, the emergency inbox). In memory: each `serve`
/// node and each start counts anew.
#[derive(Debug)]
pub struct SendRate {
    per_hour: u32,
    sent: std::sync::Mutex<
        std::collections::HashMap<String, std::collections::VecDeque<std::time::Instant>>,
    >,
}

impl SendRate {
    /// Messages a user may send an hour.
    pub fn per_hour(&self) -> u32 {
        self.per_hour
    }

    pub fn new(per_hour: u32) -> Self {
        SendRate {
            per_hour,
            sent: std::sync::Mutex::default(),
        }
    }

    /// Count one more message from `user` if the hour still allows one: `false` when
    /// it does not. Counted before the message is received, so parallel sessions cannot
    /// all pass the check at once.
    pub fn take(&self, user: &str) -> bool {
        let hour = std::time::Duration::from_secs(3600);
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let q = sent.entry(user.to_string()).or_default();
        while q.front().is_some_and(|t| t.elapsed() >= hour) {
            q.pop_front();
        }
        if q.len() >= self.per_hour as usize {
            return false;
        }
        q.push_back(std::time::Instant::now());
        true
    }
}

/// Stores what users send (see the module docs).
#[derive(Clone)]
pub struct Sending {
    storage: Storage,
    spool: Arc<dyn Inbound>,
    clock: Arc<dyn Clock>,
    /// Lower case: recipients here are ours.
    domains: Arc<HashSet<String>>,
    /// `[outbound] sent_copy`: `{local}+sent@{domain}`.
    sent_copy: Option<String>,
    /// Told when mail for outside recipients was stored (the outbound queue waits on it).
    queued: Arc<tokio::sync::Notify>,
    rate: Arc<SendRate>,
    /// Mail to outside recipients has a way out (see `[outbound]`).
    outside: bool,
    /// Where no queue runs in the background (the web function, frozen between
    /// requests): the queue run right after storing, for at most this long.
    deliver_now: Option<(queue::OutboundQueue, std::time::Duration)>,
    /// Where the hourly count is kept when several processes serve one user (the web
    /// function's instances): counted there instead of in [`SendRate`]'s memory.
    shared_rate: Option<Arc<dyn crate::ports::LoginLimits>>,
}

/// One message as a user hands it over.
#[derive(Debug, Clone)]
pub struct Submitted<'a> {
    pub user: &'a Identity,
    pub mail_from: &'a str,
    pub rcpts: &'a [String],
    pub message: &'a [u8],
    /// Where it came from (`user` set to the login).
    pub origin: Origin,
    /// `smtp` or `web`, for the audit log.
    pub via: &'a str,
}

impl Sending {
    pub fn new(
        storage: Storage,
        spool: Arc<dyn Inbound>,
        clock: Arc<dyn Clock>,
        domains: &[String],
        sent_copy: Option<String>,
    ) -> Self {
        Sending {
            storage,
            spool,
            clock,
            domains: Arc::new(domains.iter().map(|d| d.to_ascii_lowercase()).collect()),
            sent_copy,
            queued: Arc::default(),
            rate: Arc::new(SendRate::new(200)),
            outside: true,
            deliver_now: None,
            shared_rate: None,
        }
    }

    /// Count each user's messages in `limits` (items every instance reads), not in
    /// this process's memory.
    pub fn with_shared_rate(mut self, limits: Arc<dyn crate::ports::LoginLimits>) -> Self {
        self.shared_rate = Some(limits);
        self
    }

    /// Count one more message from `user`: `false` when the hour allows no more.
    /// With a shared count the message is counted and judged by the count its own
    /// write returned, so instances counting at once (or across the hour's end) never
    /// let one too many through.
    ///
    /// # Errors
    /// The shared count cannot be read or written.
    pub async fn may_send(&self, user: &str) -> Result<bool, StoreError> {
        let Some(limits) = &self.shared_rate else {
            return Ok(self.rate.take(user));
        };
        let key = format!("send:{}", user.to_lowercase());
        let now = self.clock.now();
        let hour = chrono::Duration::hours(1);
        let count = limits.failed(&key, now, hour).await?;
        Ok(count <= self.rate.per_hour())
    }

    /// Run `queue` right after each message with outside recipients is stored, for at
    /// most `within` (what it leaves, the next run takes: the drain function's, every
    /// minute). For hosts with no background work between requests.
    pub fn with_deliver_now(
        mut self,
        queue: queue::OutboundQueue,
        within: std::time::Duration,
    ) -> Self {
        self.deliver_now = Some((queue, within));
        self
    }

    /// Each user may send `per_hour` messages an hour.
    pub fn with_rate(mut self, per_hour: u32) -> Self {
        self.rate = Arc::new(SendRate::new(per_hour));
        self
    }

    /// Whether mail to outside recipients can go out; when not, a message to one is
    /// refused.
    pub fn with_outside(mut self, outside: bool) -> Self {
        self.outside = outside;
        self
    }

    pub fn outside(&self) -> bool {
        self.outside
    }

    /// The hourly count users' messages are held to.
    pub fn rate(&self) -> Arc<SendRate> {
        self.rate.clone()
    }

    /// Notified each time mail for outside recipients is stored.
    pub fn queued(&self) -> Arc<tokio::sync::Notify> {
        self.queued.clone()
    }

    /// Whether `rcpt` is in one of our domains.
    pub fn is_ours(&self, rcpt: &str) -> bool {
        rcpt.rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.contains(&d.to_ascii_lowercase()))
    }

    /// Where the sender's copy goes for `user`.
    pub fn copy_address(&self, user: &str) -> String {
        let (local, domain) = user.rsplit_once('@').unwrap_or((user, ""));
        match &self.sent_copy {
            Some(t) => t.replace("{local}", local).replace("{domain}", domain),
            None => user.to_string(),
        }
    }

    /// Check and store one message a user sent; returns its records (local, outbound,
    /// copy, those that apply).
    ///
    /// # Errors
    /// [`StoreError::Refused`] with the SMTP reply when the message is not the user's to
    /// send; storage errors (nothing is kept then).
    pub async fn submit(&self, s: Submitted<'_>) -> Result<Vec<Record>, StoreError> {
        check_senders(s.user, s.message)?;
        let now = self.clock.now();
        let message = complete(s.message, &s.user.address, now);
        let (local, outside): (Vec<String>, Vec<String>) =
            s.rcpts.iter().cloned().partition(|r| self.is_ours(r));
        if let Some(bad) = outside.iter().find(|r| {
            let domain = r.rsplit_once('@').map_or("", |(_, d)| d);
            !crate::model::address::is_public_domain(domain) || r.rsplit_once('@').is_none()
        }) {
            return Err(StoreError::Refused(format!(
                "550 5.1.2 Recipient domain of {} is not a public domain name\r\n",
                crate::model::redact(bad)
            )));
        }
        if !outside.is_empty() && !self.outside {
            return Err(StoreError::Refused(
                "550 5.7.1 Sending to outside recipients is not set up on this standby\r\n".into(),
            ));
        }
        // The sender's copy first and the outside part last: the outbound queue may take
        // a part the moment it is stored, and a part that goes out cannot be taken back
        // should a later one fail (the held ones wait for the primary, and are removed).
        let mut parts: Vec<(SentPart, Vec<String>)> =
            vec![(SentPart::Copy, vec![self.copy_address(&s.user.address)])];
        if !local.is_empty() {
            parts.push((SentPart::Local, local.clone()));
        }
        if !outside.is_empty() {
            parts.push((SentPart::Outbound, outside.clone()));
        }
        let mut stored: Vec<Record> = Vec::new();
        // Blind copies stay blind: the field some clients leave in what they submit is
        // removed from what the recipients get (the sender's own copy keeps it).
        let unblind = without_fields(&message, &["Bcc", "Resent-Bcc"]);
        for (part, rcpts) in parts {
            let bytes: &[u8] = if part == SentPart::Copy {
                &message
            } else {
                &unblind
            };
            let env = Envelope {
                mail_from: s.mail_from.to_string(),
                rcpts,
                origin: s.origin.clone(),
                journal: false,
                sent: Some(part),
            };
            match self.store(env, part, bytes).await {
                Ok(rec) => stored.push(rec),
                Err(e) => {
                    self.undo(&stored).await;
                    return Err(e);
                }
            }
        }
        if !outside.is_empty() {
            self.queued.notify_one();
        }
        self.audit_sent(&s, &stored, local.len(), outside.len(), now)
            .await;
        if !outside.is_empty()
            && let Some((queue, within)) = &self.deliver_now
        {
            run_for(queue, *within).await;
        }
        Ok(stored)
    }

    async fn audit_sent(
        &self,
        s: &Submitted<'_>,
        stored: &[Record],
        local: usize,
        outside: usize,
        now: DateTime<Utc>,
    ) {
        let entry = AuditEntry::of(
            &stored[0],
            "sent",
            &format!("{}:{}", s.via, s.user.address),
            &format!(
                "{} recipients: {} in our domains, {} outside",
                s.rcpts.len(),
                local,
                outside
            ),
            now,
        );
        if let Err(e) = self.storage.audit.append(&entry).await {
            // Sent it is (the records are durable); the audit line is what is missing.
            tracing::error!(id = %stored[0].id, error = %e, "could not write the audit entry of a sent message");
        }
        tracing::info!(
            id = %stored[0].id,
            user = redact(&s.user.address),
            rcpts = s.rcpts.len(),
            outside,
            via = s.via,
            "message sent by a user"
        );
    }

    async fn store(
        &self,
        env: Envelope,
        part: SentPart,
        message: &[u8],
    ) -> Result<Record, StoreError> {
        let mut incoming = self.spool.begin(env).await?;
        let mut wrote = Ok(());
        if part == SentPart::Copy {
            wrote = incoming.write(SENT_HEADER.as_bytes()).await;
        }
        if wrote.is_ok() {
            wrote = incoming.write(message).await;
        }
        if let Err(e) = wrote {
            incoming.abort().await;
            return Err(e);
        }
        incoming.commit().await
    }

    /// Mail from the standby itself (continuity alerts and notices) to outside
    /// addresses: stored for the outbound queue like a user's mail to outside recipients,
    /// from `mail_from` (an address of ours SES and DMARC accept), no copy kept.
    ///
    /// # Errors
    /// [`StoreError::Refused`] when outside recipients have no way out here, or a
    /// recipient is in our own domains; storage errors.
    pub async fn send_system(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<Record, StoreError> {
        if !self.outside {
            return Err(StoreError::Refused(
                "no way out for mail to outside addresses ([outbound] is not set up)".into(),
            ));
        }
        if let Some(ours) = rcpts.iter().find(|r| self.is_ours(r)) {
            return Err(StoreError::Refused(format!(
                "{} is in a domain this standby holds mail for",
                redact(ours)
            )));
        }
        let env = Envelope {
            mail_from: mail_from.to_string(),
            rcpts: rcpts.to_vec(),
            origin: crate::model::Origin::default(),
            journal: false,
            sent: Some(SentPart::Outbound),
        };
        let rec = self.store(env, SentPart::Outbound, message).await?;
        self.queued.notify_one();
        if let Some((queue, within)) = &self.deliver_now {
            run_for(queue, *within).await;
        }
        Ok(rec)
    }

    /// Remove the parts already stored of a message that could not be stored whole.
    async fn undo(&self, stored: &[Record]) {
        for rec in stored {
            let now = self.clock.now();
            if let Err(e) = self.storage.index.delete(rec, now).await {
                tracing::error!(id = %rec.id, error = %e, "could not remove a part of a message that was not accepted; it may be sent although the client was told to try again");
                continue;
            }
            // Its record is gone, so nothing sends it; only the bytes may stay (the web
            // function may not delete old versions: the bucket's lifecycle rule does).
            if let Err(e) = self.storage.blobs.delete(&rec.blob_key()).await {
                tracing::warn!(id = %rec.id, error = %e, "could not remove the bytes of a part of a message that was not accepted (never sent: its record is gone)");
            }
        }
    }
}

/// One run of `queue`, stopped (what it holds given back) after `within`.
async fn run_for(queue: &queue::OutboundQueue, within: std::time::Duration) {
    match queue.run_until(tokio::time::Instant::now() + within).await {
        Ok(r) => tracing::info!(
            delivered = r.delivered,
            deferred = r.deferred,
            failed = r.failed,
            "outbound run after a send"
        ),
        // Stored it is: the next run (the drain function's) sends it.
        Err(e) => tracing::error!(error = %e, "outbound run after a send failed"),
    }
}

/// The header fields that say who a message is from, every one checked.
const SENDER_FIELDS: [&str; 4] = ["From", "Sender", "Resent-From", "Resent-Sender"];

/// Refuse a message whose `From`, `Sender` (or `Resent-` ones) names anyone the user may
/// not send as: every occurrence of each field, so a second `From` (which readers
/// may show and the parser's single-value accessors skip) cannot name someone else;
/// exactly one `From` and at most one `Sender` (RFC 5322 §3.6).
fn check_senders(user: &Identity, message: &[u8]) -> Result<(), StoreError> {
    let parsed = mail_parser::MessageParser::new()
        .parse_headers(message)
        .ok_or_else(|| refused("5.6.0", "Message has no header"))?;
    let count = |name: &str| {
        parsed
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .count()
    };
    if count("From") != 1 || count("Sender") > 1 {
        return Err(refused(
            "5.6.0",
            "Message must have exactly one From header and at most one Sender",
        ));
    }
    let mut named: Vec<String> = Vec::new();
    for h in parsed.headers() {
        if SENDER_FIELDS
            .iter()
            .any(|f| h.name().eq_ignore_ascii_case(f))
        {
            let found = addresses(h.value().as_address());
            if found.is_empty() {
                return Err(refused(
                    "5.6.0",
                    &format!("{} header without an address", h.name()),
                ));
            }
            named.extend(found);
        }
    }
    for a in &named {
        if !user.may_send_as(a) {
            return Err(refused(
                "5.7.1",
                &format!("From or Sender header not owned by user {}", user.address),
            ));
        }
    }
    Ok(())
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .map(|x| x.address().unwrap_or_default().to_lowercase())
            .collect()
    })
    .unwrap_or_default()
}

fn refused(esc: &str, text: &str) -> StoreError {
    StoreError::Refused(format!("553 {esc} {text}\r\n"))
}

/// `message` without any `X-Standby-Sent` field of its own: only the standby marks a
/// sent copy (a client's forged mark would have a colleague's mail filed as sent).
fn unmarked(message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    without_fields(
        message,
        &[SENT_HEADER.split(':').next().unwrap_or_default()],
    )
}

/// `message` without the header fields named `names` (folded lines included).
fn without_fields<'m>(message: &'m [u8], names: &[&str]) -> std::borrow::Cow<'m, [u8]> {
    let is_mark = |line: &[u8]| {
        names.iter().any(|name| {
            let name = name.as_bytes();
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()..].trim_ascii_start().first() == Some(&b':')
        })
    };
    let mut out = Vec::with_capacity(message.len());
    let mut rest = message;
    let mut dropping = false;
    let mut changed = false;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        if line == b"\r\n" || line == b"\n" {
            out.extend_from_slice(rest);
            break;
        }
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        dropping = if folded { dropping } else { is_mark(line) };
        if dropping {
            changed = true;
        } else {
            out.extend_from_slice(line);
        }
        rest = tail;
    }
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(message)
    }
}

/// The message with `Date` and `Message-ID` added when it has none.
fn complete(message: &[u8], user: &str, now: DateTime<Utc>) -> Vec<u8> {
    let message = unmarked(message);
    let message = message.as_ref();
    let parsed = mail_parser::MessageParser::new().parse_headers(message);
    let has = |name: &str| {
        parsed.as_ref().is_some_and(|m| {
            m.headers()
                .iter()
                .any(|h| h.name().eq_ignore_ascii_case(name))
        })
    };
    let mut head = String::new();
    if !has("Message-ID") {
        let domain = user.rsplit_once('@').map_or("localhost", |(_, d)| d);
        head.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            ulid::Ulid::new(),
            domain
        ));
    }
    if !has("Date") {
        head.push_str(&format!("Date: {}\r\n", now.to_rfc2822()));
    }
    let mut out = Vec::with_capacity(head.len() + message.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            address: "alice@example.test".into(),
            addresses: vec!["alice@example.test".into(), "sales@example.test".into()],
            excluded: vec![],
        }
    }

    #[test]
    fn only_the_users_own_addresses_in_from_and_sender() {
        let ok = b"From: Alice <alice@example.test>\r\nSubject: x\r\n\r\nhi\r\n";
        assert!(check_senders(&alice(), ok).is_ok());
        let alias = b"From: sales@example.test\r\n\r\nhi\r\n";
        assert!(check_senders(&alice(), alias).is_ok());
        let tagged = b"From: alice+x@example.test\r\n\r\nhi\r\n";
        assert!(check_senders(&alice(), tagged).is_ok());
        for bad in [
            &b"From: ceo@example.test\r\n\r\nhi\r\n"[..],
            b"From: alice@example.test, ceo@example.test\r\n\r\nhi\r\n",
            b"From: alice@example.test\r\nSender: ceo@example.test\r\n\r\nhi\r\n",
            b"Subject: no from\r\n\r\nhi\r\n",
            b"From: undisclosed-recipients:;\r\n\r\nhi\r\n",
            b"From: CEO <ceo@example.test>\r\nFrom: alice@example.test\r\n\r\nhi\r\n",
            b"From: alice@example.test\r\nFrom: alice@example.test\r\n\r\nhi\r\n",
            b"From: alice@example.test\r\nResent-From: ceo@example.test\r\n\r\nhi\r\n",
            b"From: alice@example.test\r\nSender: alice@example.test\r\nSender: ceo@example.test\r\n\r\nhi\r\n",
            b"From: =?utf-8?q?x?= <ceo@example.test>\r\n\r\nhi\r\n",
            b"From: alice@example.test\r\n\tceo@example.test\r\n\r\nhi\r\n",
        ] {
            match check_senders(&alice(), bad) {
                Err(StoreError::Refused(r)) => assert!(r.starts_with("553 5."), "{r}"),
                other => panic!("{other:?} for {}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[test]
    fn a_clients_own_sent_mark_is_dropped() {
        let m = b"From: a@b\r\nX-Standby-Sent: yes\r\nx-standby-sent : no\r\n\tfolded\r\nSubject: s\r\n\r\nX-Standby-Sent: body\r\n";
        assert_eq!(
            unmarked(m).as_ref(),
            b"From: a@b\r\nSubject: s\r\n\r\nX-Standby-Sent: body\r\n"
        );
        let clean = b"From: a@b\r\nX-Standby-Sentinel: 1\r\n\r\nx\r\n";
        assert_eq!(unmarked(clean).as_ref(), clean);
        let bcc = b"From: a@b\r\nBcc: boss@x,\r\n other@y\r\nTo: c@d\r\n\r\nBcc: body\r\n";
        assert_eq!(
            without_fields(bcc, &["Bcc", "Resent-Bcc"]).as_ref(),
            b"From: a@b\r\nTo: c@d\r\n\r\nBcc: body\r\n"
        );
    }

    #[test]
    fn date_and_message_id_are_added_when_missing() {
        let now = Utc::now();
        let out = complete(
            b"From: alice@example.test\r\n\r\nhi\r\n",
            "alice@example.test",
            now,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Message-ID: <"), "{text}");
        assert!(text.contains("@example.test>\r\nDate: "), "{text}");
        let full =
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a@b>\r\nFrom: a@b\r\n\r\nx\r\n";
        assert_eq!(complete(full, "alice@example.test", now), full.to_vec());
    }
}
