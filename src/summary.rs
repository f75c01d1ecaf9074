//! The listing summary of a message (Message-ID, From, Subject, Date), parsed with
//! `mail-parser` from the header block only.
//!
//! The summary is for people (`standby list`), never for delivery, so a message whose
//! headers do not parse is still accepted and simply has an empty summary. Only the first
//! [`HEAD_LIMIT`] bytes are kept, which bounds the parser's time and memory whatever the
//! sender put in the message.

use mail_parser::MessageParser;

use crate::model::Summary;
use crate::model::lines::crlf_lines;

/// How much of the message's start is kept for the summary.
pub const HEAD_LIMIT: usize = 64 * 1024;

/// Longest value kept per field.
const FIELD_LIMIT: usize = 998;

/// Collects the header block of a message as it streams by.
#[derive(Debug, Default)]
pub struct HeadCapture {
    buf: Vec<u8>,
    done: bool,
}

impl HeadCapture {
    /// Feed the next chunk of the message (as stored, CRLF line ends).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let room = HEAD_LIMIT - self.buf.len();
        let start = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if let Some(pos) = find(&self.buf[start..], b"\r\n\r\n") {
            self.buf.truncate(start + pos + 4);
            self.done = true;
        } else if self.buf.len() >= HEAD_LIMIT {
            self.done = true;
        }
    }

    /// The header block captured so far (at most [`HEAD_LIMIT`] bytes).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Parse what was captured.
    pub fn summary(&self) -> Summary {
        parse(&self.buf)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= FIELD_LIMIT {
        return s.to_string();
    }
    let mut end = FIELD_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The header block at the start of a whole message, bounded by [`HEAD_LIMIT`].
pub fn head(raw: &[u8]) -> &[u8] {
    let cut = &raw[..raw.len().min(HEAD_LIMIT)];
    match find(cut, b"\r\n\r\n").or_else(|| find(cut, b"\n\n")) {
        Some(pos) => &cut[..pos + 2],
        None => cut,
    }
}

/// [`head`] as the lines the primary gets: a stored message's bare line ends (an SES
/// object holds what its sender wrote) as `<CR><LF>` first ([`crlf_lines`]), so a field
/// hidden behind a bare `<CR>` is a field here too, and a header ended by bare line ends
/// ends here. Borrowed when the header has CRLF lines already.
pub fn head_lines(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match crlf_lines(&raw[..raw.len().min(HEAD_LIMIT)]) {
        std::borrow::Cow::Borrowed(cut) => std::borrow::Cow::Borrowed(head(cut)),
        std::borrow::Cow::Owned(mut lines) => {
            // The header's end is looked for in all the lines the raw limit gave (at most
            // twice as long: each bare line end gains a byte), so one the raw bytes hold
            // within the limit is not lost to the lengthening.
            let mut n = match find(&lines, b"\r\n\r\n") {
                Some(pos) => pos + 2,
                None => lines.len().min(HEAD_LIMIT),
            };
            // Cut at the limit between a line end's `<CR>` and its `<LF>`: not a bare one.
            if lines[..n].ends_with(b"\r") {
                n -= 1;
            }
            lines.truncate(n);
            std::borrow::Cow::Owned(lines)
        }
    }
}

/// Whether a header block looks like the start of a mail message: it must parse and
/// have at least one header field. Used where a stored object could be anything (S3),
/// never to refuse mail on our own listener.
pub fn check_message(head: &[u8]) -> Result<(), String> {
    if head.iter().all(u8::is_ascii_whitespace) {
        return Err("empty".into());
    }
    match MessageParser::default().parse_headers(head) {
        Some(m) if m.headers().iter().any(|h| !h.name().is_empty()) => {
            let first_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            if first_line.contains(&b':') || first_line.starts_with(b"From ") {
                Ok(())
            } else {
                Err("the first line is not a header field".into())
            }
        }
        _ => Err("no header fields".into()),
    }
}

/// Parse the summary fields from a header block (or a whole message).
pub fn parse(raw: &[u8]) -> Summary {
    let Some(msg) = MessageParser::default().parse_headers(raw) else {
        return Summary::default();
    };
    let from = msg
        .from()
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(addr)) => format!("{n} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        });
    Summary {
        message_id: msg.message_id().map(clip),
        from: from.filter(|f| !f.is_empty()).map(|f| clip(&f)),
        subject: msg.subject().map(clip),
        date: msg.date().map(|d| d.to_rfc3339()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: Alice Example <alice@example.org>\r\nTo: bob@example.test\r\n\
Subject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <abc@example.org>\r\n\
Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\nSubject: not a header\r\n";

    /// A stored header with bare line ends is read as the primary gets it: a field
    /// behind a bare CR is a field (here the sender's hidden `From:` shows, as it will at
    /// the primary), a header ended by bare LFs ends there, and a header cut at the limit
    /// between a CR and its LF ends in no bare CR.
    #[test]
    fn the_head_is_read_as_crlf_lines() {
        let raw = b"Subject: Invoice\rFrom: CEO <ceo@bank.example>\nTo: b@example.test\n\nbody\n";
        let lines = head_lines(raw);
        assert_eq!(
            &lines[..],
            b"Subject: Invoice\r\nFrom: CEO <ceo@bank.example>\r\nTo: b@example.test\r\n"
        );
        assert_eq!(
            parse(&lines).from.as_deref(),
            Some("CEO <ceo@bank.example>")
        );
        assert_eq!(parse(&lines).subject.as_deref(), Some("Invoice"));
        // CRLF lines already: the same bytes, borrowed.
        assert!(matches!(head_lines(MSG), std::borrow::Cow::Borrowed(h) if h == head(MSG)));
        // No blank line within the limit, the cut between a line end's CR and LF.
        let mut long = b"X-Pad: ".to_vec();
        long.resize(HEAD_LIMIT - 1, b'a');
        long.extend_from_slice(b"\nTo: b@example.test\n");
        let cut = head_lines(&long);
        assert_eq!(
            cut.len(),
            HEAD_LIMIT - 1,
            "the CR of the cut line end dropped"
        );
        assert!(!cut.ends_with(b"\r"));
        // A header the raw limit holds whole, longer than it once its line ends are CRLF:
        // its end, and the fields before it, are kept.
        let mut grown = b"X: abc\n".repeat(9_000);
        grown.extend_from_slice(b"From: ceo@bank.example\n\nbody");
        let whole = head_lines(&grown);
        assert!(whole.len() > HEAD_LIMIT && whole.ends_with(b"From: ceo@bank.example\r\n"));
        assert_eq!(parse(&whole).from.as_deref(), Some("ceo@bank.example"));
    }

    #[test]
    fn parses_fields_from_streamed_head() {
        let mut cap = HeadCapture::default();
        for chunk in MSG.chunks(7) {
            cap.feed(chunk);
        }
        let s = cap.summary();
        assert_eq!(s.message_id.as_deref(), Some("abc@example.org"));
        assert_eq!(s.from.as_deref(), Some("Alice Example <alice@example.org>"));
        assert_eq!(s.subject.as_deref(), Some("café"));
        assert_eq!(s.date.as_deref(), Some("2026-11-28T10:00:00Z"));
        assert!(!cap.buf.ends_with(b"not a header\r\n"));
    }

    #[test]
    fn garbage_gives_empty_summary_and_bounded_capture() {
        let mut cap = HeadCapture::default();
        let junk = vec![0xffu8; 200_000];
        cap.feed(&junk);
        cap.feed(&junk);
        assert!(cap.buf.len() <= HEAD_LIMIT);
        let s = cap.summary();
        assert!(s.subject.is_none() && s.message_id.is_none());
    }
}
