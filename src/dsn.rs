//! Delivery status notifications (RFC 3464) for held mail that failed, without backscatter.
//!
//! A standby MX accepts mail for the whole internet, and most of what spammers send to
//! backup MXs carries a forged envelope sender. Bouncing that mail sends "undeliverable"
//! reports to innocent third parties (backscatter), which gets the standby's address
//! blocklisted. So a DSN goes out only when:
//!
//! - the sender was authenticated at receipt: SPF or DMARC `PASS` (SES's verdicts on AWS,
//!   our own SPF check of what the listener accepted when self-hosted, which runs after
//!   the 250 and is looked up here if it has not finished: see [`crate::sender`]), and
//!   the message was not judged spam or a virus;
//! - the sender is not the null sender `<>` (a bounce never causes another);
//! - no DSN was queued for the message before: the DSN's id is derived from the original's,
//!   and the original records it in [`Record::bounce`], so retries after a crash and
//!   concurrent drains converge on one.
//!
//! Everything else is parked as `failed` with the reason in `bounce`, for the operator
//! (`standby list --status failed`). A DSN is an ordinary held record with sender `<>`:
//! the drain hands it to the primary, which delivers or relays it to the sender, so it
//! goes out only when the primary is up and through the organisation's own outbound path.

use chrono::{DateTime, Utc};
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::error::StoreError;
use crate::model::{Bounce, Intake, MessageId, RcptStatus, Recipient, Record, Status, redact};
use crate::ports::Storage;
use crate::sender::SenderVerifier;
use crate::summary::{self, HEAD_LIMIT};

/// Longest diagnostic text copied from the primary's reply into a DSN field.
const DIAGNOSTIC_LIMIT: usize = 900;

/// DSN settings (from `[dsn]`).
#[derive(Debug, Clone)]
pub struct DsnSettings {
    /// Send DSNs at all; when off, every failed message is parked.
    pub enabled: bool,
    /// Our name in the DSN (`Reporting-MTA`, `From: MAILER-DAEMON@...`).
    pub reporting_mta: String,
    /// Looks up an SPF verdict still pending (or `TEMPERROR`) when a bounce is decided;
    /// `None`: such a sender counts as not authenticated.
    pub sender: Option<SenderVerifier>,
}

/// Why no DSN may be sent for `rec`, or `None` when one may.
pub fn suppression(rec: &Record, settings: &DsnSettings) -> Option<String> {
    if rec.mail_from.is_empty() {
        return Some("null sender: a bounce never gets a bounce".into());
    }
    // Sent by one of our users, who logged in to send it: the bounce goes to them (into
    // their emergency inbox, then their mailbox), never to a forged sender.
    if submitted(rec) {
        return None;
    }
    if !settings.enabled {
        return Some("DSNs are off in the config ([dsn] enabled = false)".into());
    }
    let Some(v) = &rec.verdicts else {
        return Some("sender not authenticated (no SPF or DMARC verdict recorded)".into());
    };
    if v.flagged() {
        return Some("judged spam or virus at receipt".into());
    }
    if v.spf_pending() && !v.sender_authenticated() {
        return Some("sender not authenticated (SPF check never finished)".into());
    }
    if !v.sender_authenticated() {
        let show = |x: &Option<String>| x.clone().unwrap_or_else(|| "none".into());
        return Some(format!(
            "sender not authenticated (SPF {}, DMARC {})",
            show(&v.spf),
            show(&v.dmarc)
        ));
    }
    None
}

/// Whether `rec` is mail a logged-in user sent (its sender is theirs).
fn submitted(rec: &Record) -> bool {
    rec.intake == Intake::Submission && rec.origin.user.is_some()
}

/// The id of the DSN for `orig`: the same every time, so queueing it is idempotent.
pub fn dsn_id(orig: &Record) -> MessageId {
    MessageId::derived(&format!("dsn:{}", orig.id), orig.received_at)
}

/// Decide and record the bounce for a message that just failed: queue its one DSN (an
/// index record with sender `<>` and a blob), or note why there is none. Sets
/// `rec.bounce`; the caller writes `rec` back. Does nothing when the message has not
/// failed or its bounce was already decided.
///
/// # Errors
/// Storage errors; `rec`'s bounce is then undecided and it must not be written back as
/// failed: the drain puts its refused recipients back to pending (`defer_refused`), so
/// the decision is taken again on a later attempt (and finds the DSN if it was queued).
pub async fn settle(
    storage: &Storage,
    rec: &mut Record,
    settings: &DsnSettings,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if rec.status != Status::Failed {
        return Ok(());
    }
    // What is still to decide: failed recipients no decision covered. A record bounced
    // before recipients carried the mark counts as decided for all its failed ones; one
    // whose recipients carry marks is decided when none is left open, bounced or not (a
    // refused journal recipient is decided at intake: no DSN naming nobody).
    let open = |r: &Recipient| r.status == RcptStatus::Failed && !r.bounced;
    let decided = if rec.bounce_marks {
        !rec.rcpts.iter().any(open)
    } else {
        rec.bounce.is_some()
    };
    if decided {
        return Ok(());
    }
    if settings.enabled
        && !submitted(rec)
        && !rec.mail_from.is_empty()
        && let Some(verifier) = &settings.sender
        && let Some(v) = verifier.check_now(rec).await
    {
        tracing::info!(id = %rec.id, spf = v.spf.as_deref().unwrap_or(""), "SPF looked up for the bounce decision");
        rec.verdicts = Some(v);
    }
    if let Some(why) = suppression(rec, settings) {
        tracing::info!(id = %rec.id, reason = %why, "no DSN; message parked as failed");
        mark_reported(rec);
        rec.bounce = Some(Bounce::Suppressed { why });
        return Ok(());
    }
    // The first DSN's id is derived from the message's; a later one (recipients a late
    // event added, failed in turn) from the recipients it reports, so retries and
    // concurrent drains still converge on one DSN each.
    let id = if rec.bounce.is_none() {
        dsn_id(rec)
    } else {
        let mut reported: Vec<String> = rec
            .rcpts
            .iter()
            .filter(|r| open(r))
            .map(|r| r.address.to_ascii_lowercase())
            .collect();
        reported.sort();
        MessageId::derived(
            &format!("dsn:{}:{}", rec.id, reported.join(",")),
            rec.received_at,
        )
    };
    let existing = storage.index.get(id).await?;
    // A record of another intake under the DSN's id: the reconciler (AWS) indexed a DSN
    // object whose own index insert was cut off by a crash. Ours replaces it.
    if existing.as_ref().is_none_or(|r| r.intake != Intake::Dsn) {
        let head = read_head(storage, rec).await?;
        let bytes = build(rec, &head, &settings.reporting_mta, id, now);
        let (size, sha256, blob) = store_blob(storage, id, &bytes).await?;
        let dsn = Record {
            intake: Intake::Dsn,
            blob,
            ..Record::held(
                id,
                String::new(),
                vec![rec.mail_from.clone()],
                now,
                (size, sha256),
                summary::parse(summary::head(&bytes)),
            )
        };
        if let Some(old) = &existing {
            let dsn = Record {
                version: old.version,
                ..dsn
            };
            storage.index.update(&dsn, now).await?;
        } else {
            storage.index.insert(&dsn).await?;
        }
        tracing::info!(id = %rec.id, dsn = %id, to_domain = redact(&rec.mail_from), "DSN queued");
    }
    mark_reported(rec);
    rec.bounce = Some(Bounce::Queued { id });
    Ok(())
}

/// Note that every failed recipient's failure is decided on (see [`Recipient::bounced`]).
fn mark_reported(rec: &mut Record) {
    for r in &mut rec.rcpts {
        if r.status == RcptStatus::Failed {
            r.bounced = true;
        }
    }
    rec.bounce_marks = true;
}

/// The original's header block (for the DSN's third part), bounded by [`HEAD_LIMIT`].
async fn read_head(storage: &Storage, rec: &Record) -> Result<Vec<u8>, StoreError> {
    let key = rec.blob_key();
    let reader = match storage.blobs.open(&key).await {
        Ok(r) => r,
        // The body is gone (purged); the DSN still says what failed.
        Err(StoreError::MissingBlob(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    reader
        .take(HEAD_LIMIT as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| StoreError::blob_read(&key, e))?;
    // As the lines the primary got (an SES object may hold bare line ends): the DSN's
    // part is CRLF lines, as the DSN is stored and sent.
    Ok(summary::head_lines(&buf).into_owned())
}

/// Write the DSN's blob; returns its size, hash and key (when not the id, see
/// [`BlobWriter::key`](crate::ports::BlobWriter::key)). A blob left by an earlier attempt
/// that crashed before its index insert is taken as it is (S3 refuses to overwrite it).
async fn store_blob(
    storage: &Storage,
    id: MessageId,
    bytes: &[u8],
) -> Result<(u64, String, Option<String>), StoreError> {
    let mut w = storage.blobs.create(id).await?;
    let blob = w.key();
    if let Err(e) = w.write(bytes).await {
        w.abort().await;
        return Err(e);
    }
    match w.commit().await {
        Ok(()) => Ok((bytes.len() as u64, hex::encode(Sha256::digest(bytes)), blob)),
        Err(e) => {
            let key = blob.clone().unwrap_or_else(|| id.to_string());
            match storage.blobs.read_all(&key).await {
                Ok((existing, _)) => Ok((
                    existing.len() as u64,
                    hex::encode(Sha256::digest(&existing)),
                    blob,
                )),
                Err(_) => Err(e),
            }
        }
    }
}

/// The RFC 3464 status code for a recipient's last reply: the enhanced code the primary
/// gave, else one from the reply's class. An expiry is `4.4.7` (delivery time expired).
fn status_code(reply: &str) -> String {
    if reply.starts_with("expired") {
        return "4.4.7".into();
    }
    let mut words = reply.split_whitespace();
    let basic = words.next().unwrap_or_default();
    if let Some(enhanced) = words.next()
        && crate::ports::is_enhanced_code(enhanced)
        && enhanced.starts_with(&basic[..1.min(basic.len())])
    {
        return enhanced.to_string();
    }
    match basic.as_bytes().first() {
        Some(b'4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// Printable ASCII only, one line, bounded: DSN fields are 7-bit header-like text.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(DIAGNOSTIC_LIMIT)
        .collect()
}

/// The DSN for `orig` (which failed), as raw message bytes with CRLF line ends: a
/// `multipart/report` with a human explanation, the machine-readable
/// `message/delivery-status` and the original's header block (`text/rfc822-headers`).
pub fn build(
    orig: &Record,
    head: &[u8],
    reporting_mta: &str,
    id: MessageId,
    now: DateTime<Utc>,
) -> Vec<u8> {
    // Only failures no earlier DSN reported (a second DSN, for recipients a late event
    // added, names only its own).
    let failed: Vec<(&str, &str)> = orig
        .rcpts
        .iter()
        .filter(|r| r.status == RcptStatus::Failed && !r.bounced)
        .map(|r| (r.address.as_str(), r.reply.as_deref().unwrap_or("failed")))
        .collect();
    let host = field(reporting_mta);

    let mut text = format!(
        "This is the mail system at host {host},\r\n\
         the standby mail exchanger for your recipient's domain.\r\n\r\n\
         It held your message while the domain's own mail server was\r\n\
         unavailable, then could not deliver it to the following\r\n\
         recipient(s):\r\n\r\n"
    );
    for (addr, reply) in &failed {
        text.push_str(&format!("<{}>: {}\r\n", field(addr), field(reply)));
    }
    text.push_str("\r\nThe headers of your message are attached.\r\n");

    let mut status = format!(
        "Reporting-MTA: dns; {host}\r\nX-Standby-Id: {}\r\nArrival-Date: {}\r\n",
        orig.id,
        orig.received_at.to_rfc2822()
    );
    for (addr, reply) in &failed {
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n\
             Diagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {}\r\n",
            field(addr),
            status_code(reply),
            field(reply),
            now.to_rfc2822()
        ));
    }

    let mut parts = vec![
        MimePart::new("text/plain", text),
        MimePart::new("message/delivery-status", status.into_bytes()).transfer_encoding("7bit"),
    ];
    if !head.is_empty() {
        let cte = if head.is_ascii() { "7bit" } else { "8bit" };
        parts.push(MimePart::new("text/rfc822-headers", head.to_vec()).transfer_encoding(cte));
    }
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        parts,
    );
    let mut builder = MessageBuilder::new()
        .from((
            "Mail Delivery System".to_string(),
            format!("MAILER-DAEMON@{host}"),
        ))
        .to(orig.mail_from.as_str())
        .subject("Undelivered Mail Returned to Sender")
        .date(now.timestamp())
        .message_id(format!("{id}@{host}"))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report);
    if let Some(mid) = &orig.summary.message_id {
        builder = builder.in_reply_to(mid.trim_matches(['<', '>']));
    }
    builder.write_to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Summary, Verdicts};
    use mail_parser::MimeHeaders;

    fn settings() -> DsnSettings {
        DsnSettings {
            enabled: true,
            reporting_mta: "standby.example.test".into(),
            sender: None,
        }
    }

    fn failed(from: &str, verdicts: Option<Verdicts>) -> Record {
        let mut rec = Record::held(
            MessageId::new(Utc::now()),
            from.into(),
            vec!["ok@example.test".into(), "gone@example.test".into()],
            Utc::now(),
            (10, "00".into()),
            Summary {
                message_id: Some("orig-1@sender.test".into()),
                ..Default::default()
            },
        );
        rec.rcpts[0].status = RcptStatus::Delivered;
        rec.rcpts[1].status = RcptStatus::Failed;
        rec.rcpts[1].reply = Some("550 5.1.1 <gone@example.test>: unknown user".into());
        rec.verdicts = verdicts;
        rec.settle();
        rec
    }

    fn v(spf: &str, dmarc: Option<&str>, spam: Option<&str>) -> Option<Verdicts> {
        Some(Verdicts {
            spf: Some(spf.into()),
            dmarc: dmarc.map(Into::into),
            spam: spam.map(Into::into),
            ..Default::default()
        })
    }

    #[test]
    fn only_authenticated_clean_senders_get_a_dsn() {
        let s = settings();
        let cases = [
            ("a@s.test", v("PASS", None, None), None),
            ("a@s.test", v("FAIL", Some("PASS"), None), None),
            ("a@s.test", v("pass", None, Some("PASS")), None),
            ("", v("PASS", None, None), Some("null sender")),
            ("a@s.test", None, Some("no SPF or DMARC verdict")),
            (
                "a@s.test",
                v("SOFTFAIL", None, None),
                Some("SPF SOFTFAIL, DMARC none"),
            ),
            (
                "a@s.test",
                v("GRAY", Some("FAIL"), None),
                Some("SPF GRAY, DMARC FAIL"),
            ),
            (
                "a@s.test",
                v("PASS", None, Some("FAIL")),
                Some("spam or virus"),
            ),
        ];
        for (from, verdicts, want) in cases {
            let got = suppression(&failed(from, verdicts.clone()), &s);
            match want {
                None => assert_eq!(got, None, "{from} {verdicts:?}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{from} {verdicts:?}: {got:?}"
                ),
            }
        }
        let off = DsnSettings {
            enabled: false,
            ..settings()
        };
        let rec = failed("a@s.test", v("PASS", None, None));
        assert!(suppression(&rec, &off).unwrap().contains("enabled = false"));
    }

    #[test]
    fn status_codes_come_from_the_reply() {
        assert_eq!(status_code("550 5.1.1 <x>: unknown"), "5.1.1");
        assert_eq!(status_code("552 5.3.4 too big"), "5.3.4");
        assert_eq!(status_code("554 refused"), "5.0.0");
        assert_eq!(status_code("550 4.1.1 mismatched class"), "5.0.0");
        assert_eq!(
            status_code("expired: not delivered within hold_days = 5"),
            "4.4.7"
        );
        assert_eq!(status_code(""), "5.0.0");
    }

    #[test]
    fn the_dsn_is_a_parseable_multipart_report() {
        let rec = failed("alice@sender.test", v("PASS", None, None));
        let head = b"Received: from x\r\nSubject: Hello \xc3\xa9\r\nMessage-ID: <orig-1@sender.test>\r\n\r\n";
        let id = dsn_id(&rec);
        let raw = build(&rec, head, "standby.example.test", id, Utc::now());
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let ct = msg.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(
            msg.to().unwrap().first().unwrap().address(),
            Some("alice@sender.test")
        );
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(msg.parts.len(), 4, "root + three parts");
        let status = String::from_utf8_lossy(msg.parts[2].contents());
        assert!(
            status.contains("Reporting-MTA: dns; standby.example.test"),
            "{status}"
        );
        assert!(
            status.contains("Final-Recipient: rfc822; gone@example.test"),
            "{status}"
        );
        assert!(status.contains("Status: 5.1.1"), "{status}");
        assert!(
            !status.contains("ok@example.test"),
            "delivered recipients are not reported"
        );
        let headers = msg.parts[3].contents();
        assert_eq!(
            headers,
            head.as_slice(),
            "original header block, byte for byte"
        );
        assert!(
            raw.windows(2)
                .filter(|w| w[1] == b'\n')
                .all(|w| w[0] == b'\r'),
            "CRLF line ends only"
        );
    }

    /// A failed, bounced record reopened by a late SES event for another receipt rule: the
    /// new recipient fails in turn and gets a DSN of its own, naming only it; the first
    /// recipient is not reported twice, and settling again queues nothing more. A record
    /// bounced before recipients carried the mark is taken as decided.
    #[tokio::test]
    async fn recipients_added_after_a_bounce_get_their_own_dsn() {
        let storage = Storage::memory();
        let mut rec = failed("alice@sender.test", v("PASS", None, None));
        settle(&storage, &mut rec, &settings(), Utc::now())
            .await
            .unwrap();
        let Some(Bounce::Queued { id: first }) = rec.bounce.clone() else {
            panic!("{:?}", rec.bounce);
        };
        // The late event's recipient, merged as ingest does, then refused by the primary.
        let mut late = rec.clone();
        late.rcpts = vec![Recipient::pending("late@example.test")];
        let mut rec = crate::lambda::ingest::merged(&rec, &late, Utc::now()).unwrap();
        assert_eq!(rec.status, Status::Held);
        let r = rec
            .rcpts
            .iter_mut()
            .find(|r| r.address == "late@example.test")
            .unwrap();
        r.status = RcptStatus::Failed;
        r.reply = Some("550 5.1.1 <late@example.test>: unknown user".into());
        rec.settle();
        assert_eq!(rec.status, Status::Failed);
        settle(&storage, &mut rec, &settings(), Utc::now())
            .await
            .unwrap();
        let Some(Bounce::Queued { id: second }) = rec.bounce.clone() else {
            panic!("{:?}", rec.bounce);
        };
        assert_ne!(first, second, "a DSN of its own");
        let (bytes, _) = storage.blobs.read_all(&second.to_string()).await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("late@example.test"), "{text}");
        assert!(!text.contains("gone@example.test"), "reported once: {text}");
        let mut again = rec.clone();
        settle(&storage, &mut again, &settings(), Utc::now())
            .await
            .unwrap();
        assert_eq!(again.bounce, Some(Bounce::Queued { id: second }));
        assert_eq!(
            storage.index.list(&Default::default()).await.unwrap().len(),
            2,
            "two DSNs, no third"
        );

        // The reconciler's guess bounced (marked), then the exact event replaced its
        // recipients: the one it names fails in turn and gets a DSN of its own, though no
        // remaining recipient carries a mark.
        let mut guess = failed("alice@sender.test", v("PASS", None, None));
        settle(&storage, &mut guess, &settings(), Utc::now())
            .await
            .unwrap();
        guess.rcpts.retain(|r| r.status == RcptStatus::Delivered);
        guess.rcpts.push(Recipient {
            status: RcptStatus::Failed,
            reply: Some("550 5.1.1 no".into()),
            ..Recipient::pending("bob@example.test")
        });
        guess.settle();
        let before = storage.index.list(&Default::default()).await.unwrap().len();
        settle(&storage, &mut guess, &settings(), Utc::now())
            .await
            .unwrap();
        assert_eq!(
            storage.index.list(&Default::default()).await.unwrap().len(),
            before + 1,
            "bob's DSN"
        );

        // Bounced by an earlier version: no recipient carries the mark, all are decided.
        let mut legacy = failed("alice@sender.test", v("PASS", None, None));
        legacy.bounce = Some(Bounce::Queued { id: first });
        settle(&storage, &mut legacy, &settings(), Utc::now())
            .await
            .unwrap();
        assert_eq!(
            storage.index.list(&Default::default()).await.unwrap().len(),
            before + 1
        );
    }

    /// Recipients carrying marks, none left open: nothing to report, whether or not an
    /// earlier decision set `bounce` (a refused journal recipient beside a delivered one).
    #[tokio::test]
    async fn no_dsn_when_every_failed_recipient_is_decided() {
        let storage = Storage::memory();
        let mut rec = failed("alice@sender.test", v("PASS", None, None));
        rec.rcpts[1].bounced = true;
        rec.bounce_marks = true;
        assert_eq!(rec.status, Status::Failed);
        settle(&storage, &mut rec, &settings(), Utc::now())
            .await
            .unwrap();
        assert_eq!(rec.bounce, None);
        assert!(
            storage
                .index
                .list(&Default::default())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn settling_twice_queues_one_dsn() {
        let storage = Storage::memory();
        let mut rec = failed("alice@sender.test", v("PASS", None, None));
        let mut again = rec.clone();
        settle(&storage, &mut rec, &settings(), Utc::now())
            .await
            .unwrap();
        let Some(Bounce::Queued { id }) = rec.bounce else {
            panic!("{:?}", rec.bounce);
        };
        // A second worker (or a retry after a crash) that did not see the first decision.
        settle(&storage, &mut again, &settings(), Utc::now())
            .await
            .unwrap();
        assert_eq!(again.bounce, Some(Bounce::Queued { id }));
        let all = storage.index.list(&Default::default()).await.unwrap();
        assert_eq!(all.len(), 1, "one DSN record");
        let dsn = &all[0];
        assert_eq!(
            (dsn.id, dsn.intake, dsn.mail_from.as_str()),
            (id, Intake::Dsn, "")
        );
        assert_eq!(dsn.rcpts[0].address, "alice@sender.test");
        assert_eq!(dsn.status, Status::Held);
        let (bytes, _) = storage.blobs.read_all(&id.to_string()).await.unwrap();
        assert_eq!(dsn.size, bytes.len() as u64);

        // A DSN object indexed by the reconciler (its own insert lost in a crash) is
        // taken back as a DSN, not left as a failed unroutable message.
        let mut stray = dsn.clone();
        stray.intake = Intake::Reconciled;
        stray.status = Status::Failed;
        storage.index.update(&stray, Utc::now()).await.unwrap();
        let mut third = failed("alice@sender.test", v("PASS", None, None));
        third.id = rec.id;
        third.received_at = rec.received_at;
        settle(&storage, &mut third, &settings(), Utc::now())
            .await
            .unwrap();
        assert_eq!(third.bounce, Some(Bounce::Queued { id }));
        let back = storage.index.get(id).await.unwrap().unwrap();
        assert_eq!((back.intake, back.status), (Intake::Dsn, Status::Held));

        // A DSN that fails in turn is never bounced.
        let mut dsn = dsn.clone();
        dsn.rcpts[0].status = RcptStatus::Failed;
        dsn.settle();
        settle(&storage, &mut dsn, &settings(), Utc::now())
            .await
            .unwrap();
        assert!(matches!(dsn.bounce, Some(Bounce::Suppressed { .. })));
        assert_eq!(
            storage.index.list(&Default::default()).await.unwrap().len(),
            1
        );
    }
}
