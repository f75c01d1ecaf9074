//! SEARCH (RFC 3501 §6.4.4) over a user's messages: flags, sizes, dates, UIDs and
//! sequence numbers from the session, headers and text from mail-parser's parse of the
//! message, compared case-insensitively (the decoded header and its raw form both count).

use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::{HeaderValue, Message};

use crate::model::Record;
use crate::model::mailbox::Flags;

/// One message as a search sees it.
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub flags: Flags,
    pub rec: &'a Record,
    /// The message's bytes, when a key needs them ([`needs_content`]).
    pub raw: Option<&'a [u8]>,
    pub parsed: Option<&'a Message<'a>>,
    /// RFC822.SIZE.
    pub size: u32,
}

/// Largest sequence number and UID of the mailbox (what `*` means).
#[derive(Clone, Copy)]
pub struct Largest {
    pub seq: u32,
    pub uid: u32,
}

/// Whether `n` is in `set`, `*` being `largest`: a membership test, since a client's
/// `1:4294967295` must not be enumerated.
pub fn in_set(set: &SequenceSet, n: u32, largest: u32) -> bool {
    let v = |x: &SeqOrUid| match x {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(a) => v(a) == n,
        Sequence::Range(a, b) => {
            let (a, b) = (v(a), v(b));
            a.min(b) <= n && n <= a.max(b)
        }
    })
}

/// Whether any of `keys`, AND, OR and NOT looked into, is one `leaf` says yes to.
fn any_key(keys: &[SearchKey<'_>], leaf: &dyn Fn(&SearchKey<'_>) -> bool) -> bool {
    keys.iter().any(|k| match k {
        SearchKey::And(ks) => any_key(ks.as_ref(), leaf),
        SearchKey::Or(a, b) => {
            any_key(std::slice::from_ref(a.as_ref()), leaf)
                || any_key(std::slice::from_ref(b.as_ref()), leaf)
        }
        SearchKey::Not(k) => any_key(std::slice::from_ref(k.as_ref()), leaf),
        k => leaf(k),
    })
}

/// Whether any of `keys` needs the message's bytes.
pub fn needs_content(keys: &[SearchKey<'_>]) -> bool {
    any_key(keys, &|k| {
        matches!(
            k,
            SearchKey::Bcc(_)
                | SearchKey::Body(_)
                | SearchKey::Cc(_)
                | SearchKey::From(_)
                | SearchKey::Header(..)
                | SearchKey::Subject(_)
                | SearchKey::Text(_)
                | SearchKey::To(_)
                | SearchKey::SentBefore(_)
                | SearchKey::SentOn(_)
                | SearchKey::SentSince(_)
        )
    })
}

/// Whether any of `keys` compares sizes (LARGER, SMALLER).
pub fn needs_size(keys: &[SearchKey<'_>]) -> bool {
    any_key(keys, &|k| {
        matches!(k, SearchKey::Larger(_) | SearchKey::Smaller(_))
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || memchr::memmem::find(&hay.to_ascii_lowercase(), &needle.to_ascii_lowercase()).is_some()
}

/// A header's text as the message has it and decoded.
fn header_texts(m: &Message<'_>, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for h in m.headers() {
        if !h.name().eq_ignore_ascii_case(name) {
            continue;
        }
        if let Some(raw) = m
            .raw_message()
            .get(h.offset_start() as usize..h.offset_end() as usize)
        {
            out.push(String::from_utf8_lossy(raw).into_owned());
        }
        match h.value() {
            HeaderValue::Text(t) => out.push(t.to_string()),
            HeaderValue::TextList(l) => out.extend(l.iter().map(ToString::to_string)),
            HeaderValue::Address(a) => {
                for addr in a.iter() {
                    out.push(format!(
                        "{} <{}>",
                        addr.name().unwrap_or_default(),
                        addr.address().unwrap_or_default()
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

fn header_has(c: &Candidate<'_>, name: &str, needle: &[u8]) -> bool {
    c.parsed.is_some_and(|m| {
        header_texts(m, name)
            .iter()
            .any(|t| contains(t.as_bytes(), needle))
    })
}

fn sent_date(c: &Candidate<'_>) -> Option<chrono::NaiveDate> {
    let d = c.parsed?.date()?;
    chrono::DateTime::from_timestamp(d.to_timestamp(), 0).map(|t| t.date_naive())
}

/// Whether `c` matches `key`.
pub fn matches(key: &SearchKey<'_>, c: &Candidate<'_>, largest: Largest) -> bool {
    let received = c.rec.received_at.date_naive();
    let f = |flag| c.flags.has(flag);
    match key {
        SearchKey::All => true,
        SearchKey::And(keys) => keys.as_ref().iter().all(|k| matches(k, c, largest)),
        SearchKey::Or(a, b) => matches(a, c, largest) || matches(b, c, largest),
        SearchKey::Not(k) => !matches(k, c, largest),
        SearchKey::SequenceSet(s) => in_set(s, c.seq, largest.seq),
        SearchKey::Uid(s) => in_set(s, c.uid, largest.uid),
        SearchKey::Seen => f(Flags::SEEN),
        SearchKey::Unseen => !f(Flags::SEEN),
        SearchKey::Deleted => f(Flags::DELETED),
        SearchKey::Undeleted => !f(Flags::DELETED),
        SearchKey::Flagged => f(Flags::FLAGGED),
        SearchKey::Unflagged => !f(Flags::FLAGGED),
        SearchKey::Answered => f(Flags::ANSWERED),
        SearchKey::Unanswered => !f(Flags::ANSWERED),
        SearchKey::Draft => f(Flags::DRAFT),
        SearchKey::Undraft => !f(Flags::DRAFT),
        // No session sees a message as recent (RFC 3501 allows none).
        SearchKey::Recent | SearchKey::New => false,
        SearchKey::Old => true,
        SearchKey::Keyword(_) => false,
        SearchKey::Unkeyword(_) => true,
        SearchKey::Larger(n) => c.size > *n,
        SearchKey::Smaller(n) => c.size < *n,
        SearchKey::Since(d) => received >= *d.as_ref(),
        SearchKey::Before(d) => received < *d.as_ref(),
        SearchKey::On(d) => received == *d.as_ref(),
        SearchKey::SentSince(d) => sent_date(c).is_some_and(|s| s >= *d.as_ref()),
        SearchKey::SentBefore(d) => sent_date(c).is_some_and(|s| s < *d.as_ref()),
        SearchKey::SentOn(d) => sent_date(c).is_some_and(|s| s == *d.as_ref()),
        SearchKey::From(s) => header_has(c, "From", s.as_ref()),
        SearchKey::To(s) => header_has(c, "To", s.as_ref()),
        SearchKey::Cc(s) => header_has(c, "Cc", s.as_ref()),
        SearchKey::Bcc(s) => header_has(c, "Bcc", s.as_ref()),
        SearchKey::Subject(s) => header_has(c, "Subject", s.as_ref()),
        SearchKey::Header(name, s) => {
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            header_has(c, &name, s.as_ref())
        }
        SearchKey::Body(s) => c.parsed.is_some_and(|m| {
            let root = &m.parts[0];
            let body = c
                .raw
                .unwrap_or_default()
                .get(root.offset_body as usize..)
                .unwrap_or_default();
            contains(body, s.as_ref())
                || (0..m.text_body.len())
                    .filter_map(|i| m.body_text(i))
                    .any(|t| contains(t.as_bytes(), s.as_ref()))
        }),
        SearchKey::Text(s) => {
            c.raw.is_some_and(|r| contains(r, s.as_ref()))
                || c.parsed.is_some_and(|m| {
                    (0..m.text_body.len())
                        .filter_map(|i| m.body_text(i))
                        .any(|t| contains(t.as_bytes(), s.as_ref()))
                        || header_texts(m, "Subject")
                            .iter()
                            .any(|t| contains(t.as_bytes(), s.as_ref()))
                })
        }
    }
}
