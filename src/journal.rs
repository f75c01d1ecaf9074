//! Journal intake: a copy of every message the primary accepts, kept here, outside the
//! primary's failure domain, so mail accepted since the primary's last backup can be put
//! back after its mailbox store is lost (`standby replay`).
//!
//! The primary sends the copies to configured journal addresses (Postfix `always_bcc` or
//! `recipient_bcc_maps`). A transaction addressed to a journal address is stored and
//! indexed like held mail, with status [`Status::Journal`], and is never drained. Its
//! recipients are the *original* recipients, the ones a replay delivers to, found in this
//! order:
//!
//! 1. the journal envelope: `recipient_bcc_maps` can give each original recipient its own
//!    journal address, `journal+bob=example.test@standby.example.com`, so the copy's
//!    envelope names every original recipient, Bcc included;
//! 2. an Exchange *envelope journal report* (header `X-MS-Journal-Report`): its first text
//!    part lists the original envelope, one field a line (`Sender:`, `To:`, `Cc:`, `Bcc:`,
//!    `Recipient:`, with `, Expanded: ...` or `, Forwarded: ...` after a rewritten one),
//!    and the original message is attached unaltered (`message/rfc822`); a replay sends
//!    that attachment, from the report's sender;
//! 3. the header: `To` and `Cc` (an `always_bcc` copy carries only the journal address in
//!    its envelope, so Bcc recipients of the original are not known).
//!
//! Either way only addresses in the configured `domains` are kept. The primary journals
//! outbound mail too, and a replay must never send mail back out to other people's
//! domains; a copy with no recipient of ours is archived with none and a replay skips it.

use mail_parser::MessageParser;

use crate::config::Journal;
use crate::model::{JournalCopy, RcptSource, Recipient, Record, Status};

impl Journal {
    /// Turn a just-received record (recipients = the journal envelope) into a journal
    /// copy: status `journal`, recipients the original ones (see the module docs). `head`
    /// is the message's header block; `whole` reads the whole message, asked for only
    /// when the head says it is an Exchange journal report.
    pub fn file(&self, rec: &mut Record, head: &[u8], whole: impl FnOnce() -> Option<Vec<u8>>) {
        let envelope: Vec<String> = rec.rcpts.iter().map(|r| r.address.clone()).collect();
        let mut originals: Vec<String> = envelope
            .iter()
            .filter_map(|a| self.extension(a))
            .filter_map(|ext| decode(&ext))
            .collect();
        let raw = is_report(head).then(whole).flatten();
        let mut echo = false;
        let report = raw.as_deref().and_then(report_envelope);
        let source = if let Some((sender, rcpts)) = report {
            originals = rcpts;
            rec.mail_from = sender;
            // Listed as the message it reports (its sender, subject, date), not as
            // "Journal report" from the journaling agent: what users and `standby list`
            // look for.
            if let Some(original) = raw.as_deref().and_then(report_original) {
                let original_head = &crate::summary::head_lines(&original);
                rec.summary = crate::summary::parse(original_head);
                // A replay's copy journaled again arrives inside a new report, whose
                // outer head has no replay header: the original's says it is an echo.
                echo = crate::replay::is_echo(original_head);
            }
            RcptSource::Report
        } else if originals.is_empty() {
            originals = header_rcpts(head);
            RcptSource::Headers
        } else {
            RcptSource::Envelope
        };
        let mut kept: Vec<String> = Vec::new();
        for a in originals {
            let ours = self.keeps(&a);
            if ours && !kept.iter().any(|k| k.eq_ignore_ascii_case(&a)) {
                kept.push(a);
            }
        }
        rec.status = Status::Journal;
        rec.rcpts = kept.into_iter().map(Recipient::pending).collect();
        rec.journal = Some(JournalCopy {
            to: envelope,
            source,
            replayed: echo || crate::replay::is_echo(head),
        });
    }
}

/// The client SES received a message from: the address in the message's first
/// (topmost) `Received:` field, the one SES prepends (`from helo (name [192.0.2.1]) by
/// inbound-smtp.<region>.amazonaws.com ...`). `None` when that field is not SES's or names
/// no address: whatever a sender wrote below it proves nothing.
pub fn ses_client_ip(head: &[u8]) -> Option<std::net::IpAddr> {
    let msg = MessageParser::default().parse_headers(head)?;
    ses_received(&msg)?.from_ip()
}

/// SES's own `Received:` field: the topmost one, when SES wrote it (`by
/// inbound-smtp.<region>.amazonaws.com`). Fields below it are the sender's to write.
pub fn ses_received<'a, 'x>(
    msg: &'a mail_parser::Message<'x>,
) -> Option<&'a mail_parser::Received<'x>> {
    let first = msg.received_all().next()?;
    let by_ses = match first.by() {
        Some(mail_parser::Host::Name(n)) => {
            let n = n.to_ascii_lowercase();
            n.starts_with("inbound-smtp.") && n.ends_with(".amazonaws.com")
        }
        _ => false,
    };
    by_ses.then_some(first)
}

/// The head carries Exchange's journal report header.
pub fn is_report(head: &[u8]) -> bool {
    MessageParser::default()
        .parse_headers(head)
        .is_some_and(|m| m.header_raw("X-MS-Journal-Report").is_some())
}

/// The original envelope a journal report lists: (sender, recipients).
fn report_envelope(raw: &[u8]) -> Option<(String, Vec<String>)> {
    let msg = MessageParser::default().parse(raw)?;
    let text = msg.body_text(0)?;
    let (mut sender, mut rcpts) = (None, Vec::new());
    for line in text.lines() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        // `To: member@x, Expanded: list@x`: the address before the comma received it.
        let addr = value.split(',').next().unwrap_or("").trim();
        let addr = addr
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string();
        match field.trim().to_ascii_lowercase().as_str() {
            "sender" if sender.is_none() => sender = Some(addr),
            "to" | "cc" | "bcc" | "recipient" if addr.contains('@') => rcpts.push(addr),
            _ => {}
        }
    }
    Some((sender?, rcpts))
}

/// The original message attached to an Exchange journal report, byte for byte.
pub fn report_original(raw: &[u8]) -> Option<Vec<u8>> {
    let msg = MessageParser::default().parse(raw)?;
    msg.attachments()
        .find_map(|part| part.message())
        .map(|m| m.raw_message().to_vec())
}

/// `bob=example.test` → `bob@example.test` (the last `=` separates the domain, so a
/// local part may contain `=` itself).
fn decode(ext: &str) -> Option<String> {
    let (local, domain) = ext.rsplit_once('=')?;
    (!local.is_empty() && domain.contains('.')).then(|| format!("{local}@{domain}"))
}

/// Addresses in the `To` and `Cc` fields.
fn header_rcpts(head: &[u8]) -> Vec<String> {
    let Some(msg) = MessageParser::default().parse_headers(head) else {
        return Vec::new();
    };
    [msg.to(), msg.cc()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageId, Summary};
    use chrono::Utc;

    fn journal() -> Journal {
        Journal::new(
            &["Journal@Standby.example.test".to_string()],
            &["example.test".to_string()],
        )
    }

    fn rec(rcpts: &[&str]) -> Record {
        let now = Utc::now();
        Record::held(
            MessageId::new(now),
            "alice@example.org".into(),
            rcpts.iter().map(|s| s.to_string()).collect(),
            now,
            (1, "00".into()),
            Summary::default(),
        )
    }

    #[test]
    fn matches_bare_and_extended_addresses_only() {
        let j = journal();
        assert!(j.matches("journal@standby.example.test"));
        assert!(j.matches("JOURNAL+bob=example.test@standby.example.test."));
        assert!(!j.matches("journal@example.test"));
        assert!(!j.matches("journalx@standby.example.test"));
        assert!(!j.matches("bob@example.test"));
        assert!(!Journal::default().is_enabled());
    }

    #[test]
    fn envelope_extensions_give_every_recipient_bcc_included() {
        let j = journal();
        let mut r = rec(&[
            "journal+bob=example.test@standby.example.test",
            "journal+carol+tag=example.test@standby.example.test",
            "journal+dave=elsewhere.example@standby.example.test",
        ]);
        j.file(&mut r, b"To: someone@example.test\r\n\r\n", || None);
        assert_eq!(r.status, Status::Journal);
        let got: Vec<&str> = r.rcpts.iter().map(|x| x.address.as_str()).collect();
        assert_eq!(got, ["bob@example.test", "carol+tag@example.test"]);
        assert_eq!(r.journal.as_ref().unwrap().source, RcptSource::Envelope);
        assert_eq!(r.journal.as_ref().unwrap().to.len(), 3);
    }

    #[test]
    fn a_bare_journal_address_takes_our_to_and_cc_recipients() {
        let j = journal();
        let mut r = rec(&["journal@standby.example.test"]);
        let head = b"From: a@example.org\r\nTo: Bob <bob@example.test>, x@other.example\r\n\
Cc: carol@EXAMPLE.test, bob@example.test\r\nSubject: s\r\n\r\n";
        j.file(&mut r, head, || None);
        let got: Vec<&str> = r.rcpts.iter().map(|x| x.address.as_str()).collect();
        assert_eq!(got, ["bob@example.test", "carol@EXAMPLE.test"]);
        assert_eq!(r.journal.as_ref().unwrap().source, RcptSource::Headers);
    }

    /// An Exchange envelope journal report: the envelope in the first part, the original
    /// attached.
    pub(crate) const REPORT: &[u8] =
        include_bytes!("../tests/fixtures/exchange-journal-report.eml");

    #[test]
    fn an_exchange_report_gives_the_envelope_bcc_included_and_the_original() {
        let j = Journal::new(
            &["journal@standby.example.test".to_string()],
            &["example.test".to_string()],
        );
        let mut r = rec(&["journal@standby.example.test"]);
        r.mail_from = "exchange@example.test".into();
        let head = crate::summary::head(REPORT);
        j.file(&mut r, head, || Some(REPORT.to_vec()));
        let got: Vec<&str> = r.rcpts.iter().map(|x| x.address.as_str()).collect();
        assert_eq!(
            got,
            [
                "bob@example.test",
                "carol@example.test",
                "dave@example.test"
            ]
        );
        assert_eq!(r.mail_from, "alice@example.org");
        assert_eq!(r.journal.as_ref().unwrap().source, RcptSource::Report);
        // Listed as the original: its subject, not the report's.
        assert_eq!(r.summary.subject.as_deref(), Some("Board minutes"));
        assert!(!r.journal.as_ref().unwrap().replayed);
        // A replayed original journaled again inside a new report is an echo.
        let text = String::from_utf8_lossy(REPORT).into_owned();
        let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let text = text.replace(
            "From: alice@example.org",
            &format!("X-Standby-Replay: run-1{eol}From: alice@example.org"),
        );
        assert!(text.contains("X-Standby-Replay"), "the fixture changed");
        let mut echo = rec(&["journal@standby.example.test"]);
        j.file(&mut echo, head, || Some(text.clone().into_bytes()));
        assert!(echo.journal.as_ref().unwrap().replayed);
        let original = report_original(REPORT).unwrap();
        assert!(original.starts_with(b"From: alice@example.org\r\n"));
        assert!(original.ends_with(b"Minutes.\r\n") || original.ends_with(b"Minutes."));
        // Without the header it is an ordinary copy, whatever its body says.
        let mut plain = rec(&["journal@standby.example.test"]);
        j.file(&mut plain, b"To: bob@example.test\r\n\r\n", || {
            panic!("not read")
        });
        assert_eq!(plain.journal.as_ref().unwrap().source, RcptSource::Headers);
    }

    #[test]
    fn outbound_mail_is_archived_without_recipients() {
        let j = journal();
        let mut r = rec(&["journal@standby.example.test"]);
        j.file(&mut r, b"To: x@other.example\r\n\r\n", || None);
        assert!(r.rcpts.is_empty());
        assert_eq!(r.status, Status::Journal);
    }
}
