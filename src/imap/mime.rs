//! ENVELOPE, BODYSTRUCTURE and BODY[section] (RFC 3501 §7.4.2) of a stored message, from
//! mail-parser's parse of it: no MIME parsing of our own.
//!
//! mail-parser offsets (`offset_header`, `offset_body`, `offset_end`) are absolute into the
//! *outermost* raw message, also for parts of nested message/rfc822 parts, and `offset_end`
//! already excludes the CRLF before the next boundary (IMAP semantics).

use std::num::NonZeroU32;

use base64::Engine;
use imap_next::imap_types::{
    body::{
        BasicFields, Body, BodyStructure, MultiPartExtensionData, SinglePartExtensionData,
        SpecificFields,
    },
    core::{IString, Literal, NString, Vec1},
    envelope::{Address, Envelope},
    fetch::Section,
};
use mail_parser::{Message, MessagePart, MimeHeaders, PartType};

/// NString from arbitrary bytes, owned ('static). Quoted when possible, else a literal.
/// Literals must not contain NUL: replace it (Dovecot-like) rather than fail.
pub fn nstring(bytes: impl Into<Vec<u8>>) -> NString<'static> {
    let mut v: Vec<u8> = bytes.into();
    if v.contains(&0) {
        v.iter_mut().filter(|b| **b == 0).for_each(|b| *b = 0x80);
    }
    NString::try_from(v).unwrap_or(NString(None))
}

/// Big data: go straight to a literal (NString::try_from(Vec) clones the Vec once to try Quoted).
pub fn nstring_literal(mut v: Vec<u8>) -> NString<'static> {
    if v.contains(&0) {
        v.iter_mut().filter(|b| **b == 0).for_each(|b| *b = 0x80);
    }
    match Literal::try_from(v) {
        Ok(l) => NString(Some(IString::Literal(l))),
        Err(_) => NString(None),
    }
}

/// `raw[a..b]`, clamped to what is there (never a panic on odd offsets).
fn span(raw: &[u8], a: u32, b: u32) -> &[u8] {
    let end = (b as usize).min(raw.len());
    &raw[(a as usize).min(end)..end]
}

fn opt_nstring(s: Option<&str>) -> NString<'static> {
    match s {
        Some(s) if !s.is_empty() => nstring(s.as_bytes().to_vec()),
        _ => NString(None),
    }
}

fn istring(s: &str) -> IString<'static> {
    // Only fails for NUL bytes.
    IString::try_from(s.to_string()).unwrap_or_else(|_| IString::try_from("").unwrap())
}

/// Raw header value, unfolded and trimmed (ENVELOPE wants the raw, still RFC 2047-encoded text).
fn raw_header(msg: &Message<'_>, name: &str) -> Option<String> {
    msg.header_raw(name)
        .map(|v| v.replace("\r\n", "").replace('\n', "").trim().to_string())
}

/// Address display names: mail-parser decodes RFC 2047; IMAP wants ASCII, so re-encode.
fn encode_name(name: &str) -> String {
    if name.is_ascii() {
        name.to_string()
    } else {
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        )
    }
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<Address<'static>> {
    let mut out = Vec::new();
    let one = |addr: &mail_parser::Addr<'_>| {
        let email = addr.address.as_deref().unwrap_or("");
        let (mbox, host) = email.rsplit_once('@').unwrap_or((email, ""));
        Address {
            name: opt_nstring(addr.name.as_deref().map(encode_name).as_deref()),
            adl: NString(None),
            mailbox: opt_nstring(Some(mbox)),
            host: opt_nstring(Some(host)),
        }
    };
    match a {
        None => {}
        Some(mail_parser::Address::List(list)) => out.extend(list.iter().map(one)),
        Some(mail_parser::Address::Group(groups)) => {
            for g in groups {
                match &g.name {
                    // RFC 3501: group start = (NIL NIL "name" NIL), group end = (NIL NIL NIL NIL)
                    Some(name) => {
                        out.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: opt_nstring(Some(name)),
                            host: NString(None),
                        });
                        out.extend(g.addresses.iter().map(one));
                        out.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: NString(None),
                            host: NString(None),
                        });
                    }
                    None => out.extend(g.addresses.iter().map(one)),
                }
            }
        }
    }
    out
}

pub fn envelope(msg: &Message<'_>) -> Envelope<'static> {
    let from = addresses(msg.from());
    let sender = match msg.sender() {
        Some(s) => addresses(Some(s)),
        None => from.clone(), // RFC 3501: server defaults sender/reply-to to from
    };
    let reply_to = match msg.reply_to() {
        Some(r) => addresses(Some(r)),
        None => from.clone(),
    };
    Envelope {
        date: opt_nstring(raw_header(msg, "Date").as_deref()),
        subject: opt_nstring(raw_header(msg, "Subject").as_deref()),
        from,
        sender,
        reply_to,
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        bcc: addresses(msg.bcc()),
        in_reply_to: opt_nstring(raw_header(msg, "In-Reply-To").as_deref()),
        message_id: opt_nstring(raw_header(msg, "Message-ID").as_deref()),
    }
}

fn count_lines(b: &[u8]) -> u32 {
    let n = b.iter().filter(|&&c| c == b'\n').count();
    (n + usize::from(!b.is_empty() && !b.ends_with(b"\n"))) as u32
}

fn params(part: &MessagePart<'_>) -> Vec<(IString<'static>, IString<'static>)> {
    part.content_type()
        .and_then(|ct| ct.attributes())
        .map(|attrs| {
            attrs
                .iter()
                .map(|a| (istring(&a.name.to_ascii_uppercase()), istring(&a.value)))
                .collect()
        })
        .unwrap_or_default()
}

/// Multipart and message/rfc822 levels described; deeper parts are described as leaves
/// (the description recurses, and a message of a few kilobytes can nest thousands of
/// levels: without a bound it would take the process's stack).
const MAX_DEPTH: usize = 16;

/// BODYSTRUCTURE (`ext = true`) or BODY (`ext = false`) of `msg`; `raw` is its bytes.
pub fn body_structure(msg: &Message<'_>, raw: &[u8], ext: bool) -> BodyStructure<'static> {
    structure(msg, 0, raw, ext, 0)
}

/// The structure of part `id` of `msg` (`raw` the outermost message), `depth` levels in.
fn structure(
    msg: &Message<'_>,
    id: u32,
    raw: &[u8],
    ext: bool,
    depth: usize,
) -> BodyStructure<'static> {
    let part = &msg.parts[id as usize];
    let deep = depth >= MAX_DEPTH;
    let ct = part.content_type();
    let ctype = ct.map(|c| c.ctype().to_ascii_uppercase());
    let subtype = ct.and_then(|c| c.subtype()).map(|s| s.to_ascii_uppercase());

    // An empty multipart cannot be expressed: it is described as a leaf.
    if let PartType::Multipart(children) = &part.body
        && !deep
        && let Ok(bodies) = Vec1::try_from(
            children
                .iter()
                .map(|c| structure(msg, *c, raw, ext, depth + 1))
                .collect::<Vec<_>>(),
        )
    {
        return BodyStructure::Multi {
            bodies,
            subtype: istring(subtype.as_deref().unwrap_or("MIXED")),
            extension_data: ext.then(|| MultiPartExtensionData {
                parameter_list: params(part),
                tail: None,
            }),
        };
    }

    let body_bytes = span(raw, part.offset_body, part.offset_end);
    let mut parameter_list = params(part);
    let (ctype, subtype) = match (ctype, subtype) {
        (Some(t), Some(s)) => (t, s),
        (Some(t), None) if t == "TEXT" => (t, "PLAIN".into()),
        _ => ("TEXT".into(), "PLAIN".into()),
    };
    if ctype == "TEXT" && parameter_list.is_empty() {
        parameter_list.push((istring("CHARSET"), istring("us-ascii")));
    }
    let basic = BasicFields {
        parameter_list,
        id: opt_nstring(part.content_id()),
        description: opt_nstring(part.content_description()),
        content_transfer_encoding: istring(
            &part
                .content_transfer_encoding()
                .unwrap_or("7bit")
                .to_ascii_uppercase(),
        ),
        size: body_bytes.len() as u32,
    };
    let specific = match (&part.body, ctype.as_str()) {
        (PartType::Message(nested), _) if !deep => SpecificFields::Message {
            envelope: Box::new(envelope(nested)),
            body_structure: Box::new(structure(nested, 0, raw, ext, depth + 1)),
            number_of_lines: count_lines(body_bytes),
        },
        (_, "TEXT") => SpecificFields::Text {
            subtype: istring(&subtype),
            number_of_lines: count_lines(body_bytes),
        },
        _ => SpecificFields::Basic {
            r#type: istring(&ctype),
            subtype: istring(&subtype),
        },
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: ext.then_some(SinglePartExtensionData {
            md5: NString(None),
            tail: None,
        }),
    }
}

/// Resolve a part path (1-based, as in BODY[1.2]) to (message owning the part, part id).
fn resolve<'m, 'x>(msg: &'m Message<'x>, path: &[NonZeroU32]) -> Option<(&'m Message<'x>, u32)> {
    let mut msg = msg;
    let mut id = 0u32; // root part of `msg`
    for (i, n) in path.iter().enumerate() {
        let n = n.get();
        // A message/rfc822 part: its sub-parts are those of the encapsulated message's body.
        if i > 0
            && let PartType::Message(nested) = &msg.parts[id as usize].body
        {
            msg = nested;
            id = 0;
        }
        match &msg.parts[id as usize].body {
            PartType::Multipart(children) => id = *children.get(n as usize - 1)?,
            // Non-multipart: only part 1 exists and it is the body itself.
            _ if n == 1 => {}
            _ => return None,
        }
    }
    Some((msg, id))
}

fn header_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    // Split the header block into fields (a field continues on lines starting with WSP).
    let mut out = Vec::new();
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        if header[i] == b'\n' {
            let next = header.get(i + 1).copied();
            if !matches!(next, Some(b' ') | Some(b'\t')) {
                fields.push(&header[start..=i]);
                start = i + 1;
            }
        }
        i += 1;
    }
    for f in fields {
        if f == b"\r\n" || f == b"\n" {
            continue;
        }
        let name = f.split(|&c| c == b':').next().unwrap_or(b"");
        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
        if names.iter().any(|n| n.eq_ignore_ascii_case(&name)) != not {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Bytes for BODY[section] (before <partial>); None = no such part (send NIL or "").
pub fn section_bytes(
    msg: &Message<'_>,
    raw: &[u8],
    section: Option<&Section<'_>>,
) -> Option<Vec<u8>> {
    let slice = |a: u32, b: u32| span(raw, a, b).to_vec();
    // The "message" whose HEADER/TEXT is meant: the top level, or a message/rfc822 part.
    let message_at = |path: Option<&[NonZeroU32]>| -> Option<(u32, u32, u32)> {
        match path {
            None => {
                let root = &msg.parts[0];
                Some((root.offset_header, root.offset_body, root.offset_end))
            }
            Some(p) => {
                let (m, id) = resolve(msg, p)?;
                let PartType::Message(nested) = &m.parts[id as usize].body else {
                    return None;
                };
                let root = &nested.parts[0];
                Some((root.offset_header, root.offset_body, root.offset_end))
            }
        }
    };
    let names = |v: &Vec1<imap_next::imap_types::core::AString<'_>>| -> Vec<String> {
        v.as_ref()
            .iter()
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .collect()
    };
    match section {
        None => Some(raw.to_vec()),
        Some(Section::Part(p)) => {
            let (m, id) = resolve(msg, p.0.as_ref())?;
            let part = &m.parts[id as usize];
            Some(slice(part.offset_body, part.offset_end))
        }
        Some(Section::Mime(p)) => {
            let (m, id) = resolve(msg, p.0.as_ref())?;
            let part = &m.parts[id as usize];
            Some(slice(part.offset_header, part.offset_body))
        }
        Some(Section::Header(p)) => {
            let (h, b, _) = message_at(p.as_ref().map(|p| p.0.as_ref()))?;
            Some(slice(h, b))
        }
        Some(Section::Text(p)) => {
            let (_, b, e) = message_at(p.as_ref().map(|p| p.0.as_ref()))?;
            Some(slice(b, e))
        }
        Some(Section::HeaderFields(p, fields)) => {
            let (h, b, _) = message_at(p.as_ref().map(|p| p.0.as_ref()))?;
            Some(header_fields(&slice(h, b), &names(fields), false))
        }
        Some(Section::HeaderFieldsNot(p, fields)) => {
            let (h, b, _) = message_at(p.as_ref().map(|p| p.0.as_ref()))?;
            Some(header_fields(&slice(h, b), &names(fields), true))
        }
    }
}

#[cfg(test)]
mod tests {
    /// A message nesting thousands of multiparts (a few kilobytes, from anyone) is
    /// described to a bounded depth, without taking the stack.
    #[test]
    fn deeply_nested_parts_are_described_to_a_bounded_depth() {
        let levels = 5000;
        let mut m = String::from("Subject: deep\r\nMIME-Version: 1.0\r\n");
        for i in 0..levels {
            m.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
            ));
        }
        m.push_str("Content-Type: text/plain\r\n\r\nhi\r\n");
        let raw = m.into_bytes();
        // On a small stack, as a runtime worker's (the parse is mail-parser's, iterative).
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let parsed = mail_parser::MessageParser::default()
                    .parse(&raw[..])
                    .unwrap();
                let bs = super::body_structure(&parsed, &raw, true);
                format!("{bs:?}").matches("Multi {").count()
            })
            .unwrap();
        let multis = handle.join().expect("no stack overflow");
        assert!(multis <= super::MAX_DEPTH, "{multis}");
    }
}
