//! Messages written in the emergency inbox: a new one, a reply (to the sender, or to
//! everyone), a forward; built with mail-builder, then sent like any other
//! ([`super::Sending::submit`]).
//!
//! A reply quotes the original's text (`> `), answers `Reply-To` when there is one, and
//! carries `In-Reply-To` and `References` so the recipients' clients thread it. A
//! forward attaches the original whole (`message/rfc822`), byte for byte, so nothing of
//! it (attachments, signatures) is lost or reinterpreted. `Date` and `Message-ID` (on
//! the sender's domain) are set here.

use chrono::{DateTime, Utc};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as MbAddress;

use crate::model::Address;
use crate::ports::Identity;

/// Longest text quoted in a reply.
const QUOTE_LIMIT: usize = 64 * 1024;
/// Message ids a reply's `References` keeps (the newest).
const MAX_REFERENCES: usize = 20;

/// A message id from the original as a reply may carry it: printable ASCII, no space or
/// angle bracket, at most 250 bytes; anything else (a CR a sender slipped in to add a
/// header to the reply) is dropped.
fn clean_id(id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.len() <= 250
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    ok.then(|| id.to_string())
}

/// How a message relates to one it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Reply,
    ReplyAll,
    Forward,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "reply" => Some(Mode::Reply),
            "all" => Some(Mode::ReplyAll),
            "forward" => Some(Mode::Forward),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Reply => "reply",
            Mode::ReplyAll => "all",
            Mode::Forward => "forward",
        }
    }
}

/// What a reply or forward takes from the original.
#[derive(Debug, Clone, Default)]
pub struct Original {
    pub message_id: Option<String>,
    pub references: Vec<String>,
    pub from: Vec<String>,
    pub reply_to: Vec<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    /// As the header has it, for the quote's line.
    pub date: String,
    pub text: String,
    /// The whole message, for a forward.
    pub bytes: Vec<u8>,
}

fn addrs(a: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    a.map(|a| {
        a.iter()
            .filter_map(|x| x.address().map(str::to_string))
            .collect()
    })
    .unwrap_or_default()
}

impl Original {
    /// Read `bytes` (what the user sees of a message, see `crate::mailbox::content`).
    pub fn read(bytes: Vec<u8>) -> Original {
        let Some(m) = mail_parser::MessageParser::new().parse(&bytes) else {
            return Original {
                bytes,
                ..Original::default()
            };
        };
        let ids = |v: &mail_parser::HeaderValue<'_>| -> Vec<String> {
            let all: Vec<String> = v
                .as_text_list()
                .map(|l| l.iter().filter_map(|s| clean_id(s)).collect())
                .unwrap_or_default();
            let skip = all.len().saturating_sub(MAX_REFERENCES);
            all.into_iter().skip(skip).collect()
        };
        let mut text = m.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
        if text.len() > QUOTE_LIMIT {
            let mut cut = QUOTE_LIMIT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Original {
            message_id: m.message_id().and_then(clean_id),
            references: ids(m.references()),
            from: addrs(m.from()),
            reply_to: addrs(m.reply_to()),
            to: addrs(m.to()),
            cc: addrs(m.cc()),
            subject: m.subject().unwrap_or_default().to_string(),
            date: m.date().map(|d| d.to_rfc822()).unwrap_or_default(),
            text,
            bytes: bytes.clone(),
        }
    }
}

/// The form's starting values for a reply or forward by `user`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prefill {
    pub to: String,
    pub cc: String,
    pub subject: String,
    pub body: String,
}

fn prefixed(prefix: &str, subject: &str) -> String {
    let s = subject.trim();
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        s.to_string()
    } else {
        format!("{prefix} {s}")
    }
}

/// The form for answering `orig` as `mode`.
pub fn prefill(orig: &Original, mode: Mode, user: &Identity) -> Prefill {
    let mine = |a: &String| user.may_send_as(a);
    let answer_to = if orig.reply_to.is_empty() {
        &orig.from
    } else {
        &orig.reply_to
    };
    match mode {
        Mode::Forward => Prefill {
            subject: prefixed("Fwd:", &orig.subject),
            body: "\n\n(The original message is attached.)\n".into(),
            ..Prefill::default()
        },
        Mode::Reply | Mode::ReplyAll => {
            let to: Vec<&String> = answer_to.iter().collect();
            let cc: Vec<&String> = if mode == Mode::ReplyAll {
                let mut seen: Vec<String> = to.iter().map(|a| a.to_lowercase()).collect();
                orig.to
                    .iter()
                    .chain(&orig.cc)
                    .filter(|a| !mine(a))
                    .filter(|a| {
                        let l = a.to_lowercase();
                        let new = !seen.contains(&l);
                        seen.push(l);
                        new
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let join = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            let who = orig.from.first().map_or("someone", String::as_str);
            let mut body = format!("\n\nOn {}, {who} wrote:\n", orig.date);
            for line in orig.text.lines() {
                body.push('>');
                if !line.is_empty() && !line.starts_with('>') {
                    body.push(' ');
                }
                body.push_str(line);
                body.push('\n');
            }
            Prefill {
                to: join(&to),
                cc: join(&cc),
                subject: prefixed("Re:", &orig.subject),
                body,
            }
        }
    }
}

/// One file the user attached.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// A message as the user wrote it.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub body: String,
    pub attachments: Vec<Attachment>,
    /// What it answers or forwards.
    pub answers: Option<(Mode, Original)>,
}

/// Why a draft cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    #[error("`{0}` is not an e-mail address")]
    BadAddress(String),
    #[error("a message needs at least one recipient")]
    NoRecipient,
    #[error("you cannot send as {0}")]
    NotYours(String),
    #[error("too many recipients (at most {0})")]
    TooMany(usize),
}

/// The characters of `text` outside quoted strings (RFC 5322 `"..."` with `\`
/// escapes), with their byte offsets; `None` when a quoted string is left open.
fn unquoted(text: &str) -> Option<Vec<(usize, char)>> {
    let (mut out, mut quoted, mut escaped) = (Vec::new(), false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ if !quoted => out.push((i, c)),
            _ => {}
        }
    }
    (!quoted).then_some(out)
}

/// `typed` cut at each `,`, `;` or line end outside a quoted string or `<...>`, so a
/// display name with a comma (`"Smith, John" <john@x>`) or a quoted local part stays
/// whole; `None` when a quote or `<` is left open (a typo that would otherwise merge
/// the rest of the list into one address).
fn split_list(typed: &str) -> Option<Vec<&str>> {
    let (mut parts, mut start, mut angle) = (Vec::new(), 0, false);
    for (i, c) in unquoted(typed)? {
        match c {
            '<' if angle => return None,
            '>' if !angle => return None,
            '<' | '>' => angle = !angle,
            ',' | ';' | '\n' if !angle => {
                parts.push(&typed[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if angle {
        return None;
    }
    parts.push(&typed[start..]);
    Some(parts)
}

/// The address of one entry: what is inside its `<...>` (outside quotes; nothing may
/// follow it), else the whole entry.
fn addr_spec(entry: &str) -> Option<&str> {
    let mut open = None;
    for (i, c) in unquoted(entry)? {
        match c {
            '<' => open = Some(i),
            '>' => {
                let from = open?;
                return entry[i + 1..]
                    .trim()
                    .is_empty()
                    .then(|| entry[from + 1..i].trim());
            }
            _ => {}
        }
    }
    open.is_none().then_some(entry)
}

/// The addresses in a typed list (`a@x, b@y; c@z`, `"Smith, John" <john@x>`,
/// `"john doe"@x`), each parsed as an RFC 5321 address (a quoted local part decoded,
/// as the listener stores one), checked: an entry that is not exactly one address is
/// an error naming it, never a guess.
pub fn address_list(typed: &str) -> Result<Vec<String>, DraftError> {
    let bad = |s: &str| DraftError::BadAddress(s.to_string());
    split_list(typed)
        .ok_or_else(|| bad(typed.trim()))?
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let spec = addr_spec(s).ok_or_else(|| bad(s))?;
            Address::parse(spec)
                .map(|a| a.decoded())
                .map_err(|_| bad(s))
        })
        .collect()
}

impl Draft {
    /// Every envelope recipient (To, Cc and Bcc), each once.
    pub fn recipients(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self.to.iter().chain(&self.cc).chain(&self.bcc) {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(a)) {
                out.push(a.clone());
            }
        }
        out
    }

    /// Check the draft for `user`, at most `max_rcpts` recipients.
    ///
    /// # Errors
    /// A sender not the user's, no recipient or too many.
    pub fn check(&self, user: &Identity, max_rcpts: usize) -> Result<(), DraftError> {
        if !user.may_send_as(&self.from) {
            return Err(DraftError::NotYours(self.from.clone()));
        }
        let n = self.recipients().len();
        if n == 0 {
            return Err(DraftError::NoRecipient);
        }
        if n > max_rcpts {
            return Err(DraftError::TooMany(max_rcpts));
        }
        Ok(())
    }

    /// The message (no `Bcc` header: those recipients are in the envelope only).
    ///
    /// # Errors
    /// Writing to memory cannot fail; mail-builder's error is passed on.
    pub fn build(&self, now: DateTime<Utc>) -> std::io::Result<Vec<u8>> {
        let domain = self.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
        fn list(v: &[String]) -> MbAddress<'_> {
            MbAddress::new_list(
                v.iter()
                    .map(|a| MbAddress::new_address(None::<&str>, a.as_str()))
                    .collect(),
            )
        }
        let mut b = MessageBuilder::new()
            .from(self.from.as_str())
            .subject(self.subject.as_str())
            .date(now.timestamp())
            .message_id(format!("{}@{domain}", ulid::Ulid::new()))
            .text_body(self.body.replace("\r\n", "\n"));
        if !self.to.is_empty() {
            b = b.to(list(&self.to));
        }
        if !self.cc.is_empty() {
            b = b.cc(list(&self.cc));
        }
        if let Some((mode, orig)) = &self.answers {
            if let Some(id) = &orig.message_id
                && *mode != Mode::Forward
            {
                let mut refs = orig.references.clone();
                refs.push(id.clone());
                b = b.in_reply_to(id.clone()).references(refs);
            }
            if *mode == Mode::Forward && !orig.bytes.is_empty() {
                b = b.attachment("message/rfc822", "forwarded.eml", orig.bytes.as_slice());
            }
        }
        for a in &self.attachments {
            b = b.attachment(a.content_type.as_str(), a.name.as_str(), a.bytes.as_slice());
        }
        b.write_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            address: "alice@example.test".into(),
            addresses: vec!["alice@example.test".into()],
            excluded: vec![],
        }
    }

    const ORIG: &[u8] = b"From: Bob <bob@outside.test>\r\nTo: alice@example.test, carol@outside.test\r\nCc: dave@outside.test, Alice <alice@example.test>\r\nSubject: Plans\r\nMessage-ID: <m1@outside.test>\r\nReferences: <m0@outside.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nLine one\r\n> older\r\n";

    #[test]
    fn replies_quote_and_thread() {
        let o = Original::read(ORIG.to_vec());
        let p = prefill(&o, Mode::Reply, &alice());
        assert_eq!(p.to, "bob@outside.test");
        assert_eq!(p.cc, "");
        assert_eq!(p.subject, "Re: Plans");
        assert!(
            p.body
                .contains("bob@outside.test wrote:\n> Line one\n>> older\n"),
            "{}",
            p.body
        );
        let all = prefill(&o, Mode::ReplyAll, &alice());
        assert_eq!(all.cc, "carol@outside.test, dave@outside.test");
        let again = Original {
            subject: "RE: Plans".into(),
            ..o.clone()
        };
        assert_eq!(prefill(&again, Mode::Reply, &alice()).subject, "RE: Plans");
        let draft = Draft {
            from: "alice@example.test".into(),
            to: vec!["bob@outside.test".into()],
            bcc: vec!["boss@example.test".into()],
            subject: p.subject,
            body: p.body,
            answers: Some((Mode::Reply, o.clone())),
            ..Draft::default()
        };
        let out = String::from_utf8(draft.build(Utc::now()).unwrap()).unwrap();
        assert!(out.contains("In-Reply-To: <m1@outside.test>"), "{out}");
        assert!(
            out.contains("References: <m0@outside.test> <m1@outside.test>"),
            "{out}"
        );
        assert!(out.contains("@example.test>"), "{out}");
        assert!(!out.to_lowercase().contains("bcc"), "{out}");
        assert_eq!(
            draft.recipients(),
            ["bob@outside.test", "boss@example.test"]
        );
    }

    #[test]
    fn ids_with_control_characters_are_not_carried_into_a_reply() {
        let evil = b"From: x@outside.test\r\nSubject: s\r\nMessage-ID: <a\rReply-To: evil@x>\r\nReferences: <ok@x> <b\x0bc@x>\r\n\r\nhi\r\n";
        let o = Original::read(evil.to_vec());
        assert_eq!(o.message_id, None);
        assert_eq!(o.references, ["ok@x"]);
        // Whatever the parser hands over, only printable ids without space or brackets.
        assert_eq!(clean_id("a\rReply-To: evil@x"), None);
        assert_eq!(clean_id("a b@x"), None);
        assert_eq!(clean_id("a>b@x"), None);
        assert_eq!(clean_id(&"x".repeat(251)), None);
        assert_eq!(clean_id("ok@x").as_deref(), Some("ok@x"));
    }

    #[test]
    fn a_forward_carries_the_original_whole() {
        let o = Original::read(ORIG.to_vec());
        let p = prefill(&o, Mode::Forward, &alice());
        assert_eq!(p.subject, "Fwd: Plans");
        let draft = Draft {
            from: "alice@example.test".into(),
            to: vec!["x@outside.test".into()],
            subject: p.subject,
            answers: Some((Mode::Forward, o)),
            ..Draft::default()
        };
        let out = draft.build(Utc::now()).unwrap();
        let m = mail_parser::MessageParser::new().parse(&out).unwrap();
        let att = m.attachments().next().unwrap();
        assert!(att.message().is_some(), "message/rfc822");
        assert!(!String::from_utf8_lossy(&out).contains("In-Reply-To"));
    }

    #[test]
    fn typed_lists_and_checks() {
        assert_eq!(
            address_list("a@x.test, Bob <b@y.test>; ").unwrap(),
            ["a@x.test", "b@y.test"]
        );
        assert!(matches!(
            address_list("a@x.test, nope"),
            Err(DraftError::BadAddress(_))
        ));
        // A comma or `<` in a quoted display name, a quoted local part with a comma
        // (decoded, as the listener stores one; quoted again on the wire).
        assert_eq!(
            address_list("\"Smith, John\" <john@x.test>, \"a<b\" <c@y.test>;\n\"d, e\"@z.test")
                .unwrap(),
            ["john@x.test", "c@y.test", "d, e@z.test"]
        );
        // A typo is an error naming it, never a merged or different recipient.
        for typo in [
            "<john@x.test, bob@y.test",
            "\"Smith, John <john@x.test>, bob@y.test",
            "a@x.test b@y.test",
            "team: a@x.test, b@y.test;",
            "john@x.test>",
            "<a@x.test> b@y.test",
            "\"a<b\"@x.test, <c@y.test",
        ] {
            assert!(
                matches!(address_list(typo), Err(DraftError::BadAddress(_))),
                "{typo}: {:?}",
                address_list(typo)
            );
        }

        let d = Draft {
            from: "ceo@example.test".into(),
            to: vec!["a@x.test".into()],
            ..Draft::default()
        };
        assert!(matches!(
            d.check(&alice(), 10),
            Err(DraftError::NotYours(_))
        ));
        let d = Draft {
            from: "alice@example.test".into(),
            ..Draft::default()
        };
        assert_eq!(d.check(&alice(), 10), Err(DraftError::NoRecipient));
    }
}
