//! `Authentication-Results:` (RFC 8601) between the standby and the primary.
//!
//! When the standby hands a message back, the primary sees the standby as the client:
//! its own SPF check of the original sender is meaningless then. So the drain puts one
//! `Authentication-Results:` field on top of the message, made from the verdicts the
//! standby recorded for the original session (its SPF check, SES's SPF/DKIM/DMARC), with
//! the standby's host name as the authserv-id; a primary configured to trust that id
//! (rspamd's `external_relay`, a sieve or milter reading it) can use them.
//!
//! Such a field is only worth anything if nobody else can write one under our name, so
//! RFC 8601 §5 has the receiving border MTA remove incoming fields that carry its own
//! authserv-id. [`StripOurs`] does that as the message streams: at receipt on our
//! listener and again at redelivery (SES objects cannot be rewritten before that). It
//! lives in the model because both sides apply the same rule: the listener (an adapter)
//! and the drain (the domain).
//!
//! These and the one `Received:` field of our listener are the only changes the standby
//! makes to a message.

use super::{Intake, Record, Verdicts};

/// The field name, lower case.
const NAME: &[u8] = b"authentication-results";

/// A header line is looked at in pieces of at most this many bytes; the rest of a longer
/// line follows its field's fate without being buffered.
const LINE_CAP: usize = 8 * 1024;

/// An `Authentication-Results:` field whose authserv-id is still unread after this many
/// bytes (comments before it, an endless token) is dropped: it is not a field of anyone
/// honest, and buffering it further would let a client make us hold any amount.
const FIELD_CAP: usize = 16 * 1024;

/// The results the drain puts on top of `rec` when handing it to the primary (as
/// [`field`], and in an ARC set's `ARC-Authentication-Results:` as [`one_line`]), each a
/// `method=result ...` of RFC 8601; `None` for messages the standby made itself
/// (bounces), which no one checked.
pub fn methods(rec: &Record) -> Option<Vec<String>> {
    let mut methods: Vec<String> = Vec::new();
    match rec.intake {
        Intake::Dsn => return None,
        Intake::Submission | Intake::Sent => {
            if let Some(user) = rec.origin.user.as_deref().and_then(pvalue) {
                methods.push(format!("auth=pass smtp.auth={user}"));
            }
        }
        Intake::Smtp | Intake::Ses | Intake::Reconciled => {}
    }
    let none = Verdicts::default();
    let v = rec.verdicts.as_ref().unwrap_or(&none);
    if let Some(spf) = v.spf.as_deref().and_then(result) {
        let mut m = format!("spf={spf}");
        if let Ok(ip) = rec.origin.ip.parse::<std::net::IpAddr>() {
            m.push_str(&format!(" (sender IP is {ip})"));
        }
        if !rec.mail_from.is_empty() {
            if let Some(from) = mailfrom(&rec.mail_from) {
                m.push_str(&format!(" smtp.mailfrom={from}"));
            }
        } else if is_domain(&rec.origin.helo) {
            // The null sender: SPF checked the HELO name (RFC 7208 §2.3).
            m.push_str(&format!(" smtp.helo={}", rec.origin.helo));
        }
        methods.push(m);
    }
    if let Some(dkim) = v.dkim.as_deref().and_then(result) {
        methods.push(format!("dkim={dkim}"));
    }
    if let Some(dmarc) = v.dmarc.as_deref().and_then(result) {
        let mut m = format!("dmarc={dmarc}");
        if let Some(domain) = rec.summary.from.as_deref().and_then(from_domain) {
            m.push_str(&format!(" header.from={domain}"));
        }
        let policy = v.dmarc_policy.as_deref().map(str::to_ascii_lowercase);
        if let Some(p) = policy.filter(|p| matches!(p.as_str(), "none" | "quarantine" | "reject")) {
            // The domain's published policy, as SES reported it: a comment, since the
            // `policy` ptype is about the verifier's own policy.
            m.push_str(&format!(" (p={p})"));
        }
        methods.push(m);
    }
    Some(methods)
}

/// The `Authentication-Results:` field of `authserv_id` with `methods`, one per line,
/// ending in CRLF.
pub fn field(authserv_id: &str, methods: &[String]) -> String {
    let mut out = format!("Authentication-Results: {authserv_id}");
    if methods.is_empty() {
        out.push_str("; none");
    }
    for m in methods {
        out.push_str(";\r\n\t");
        out.push_str(m);
    }
    out.push_str("\r\n");
    out
}

/// The value of [`field`] on one line with single spaces (`id; m1; m2`, or `id; none`):
/// what an ARC set's `ARC-Authentication-Results:` carries after its `i=`. One line
/// because the seal signs it as written and a verifier reads it unfolded.
pub fn one_line(authserv_id: &str, methods: &[String]) -> String {
    let mut out = String::from(authserv_id);
    if methods.is_empty() {
        out.push_str("; none");
    }
    for m in methods {
        out.push_str("; ");
        out.push_str(m);
    }
    out.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 8601's result keyword for a recorded verdict: ours (`PASS`, `SOFTFAIL`, ...) or
/// SES's (`GRAY`: no policy or no signature; `PROCESSING_FAILED`). `None` for a check
/// that was not made (`DISABLED`, still `PENDING`, anything unknown): it is left out
/// rather than guessed.
fn result(verdict: &str) -> Option<&'static str> {
    Some(match verdict.to_ascii_uppercase().as_str() {
        "PASS" => "pass",
        "FAIL" => "fail",
        "SOFTFAIL" => "softfail",
        "NEUTRAL" => "neutral",
        "NONE" | "GRAY" => "none",
        "TEMPERROR" | "PROCESSING_FAILED" => "temperror",
        "PERMERROR" => "permerror",
        _ => return None,
    })
}

/// An address as an RFC 8601 `pvalue` when it is a plain `local@domain` (a dot-atom
/// local part); `None` otherwise. Never quoted: RFC 8601 would keep a `;` inside a quoted
/// string, but not every reader does (rspamd splits results at every `;`), so a sender
/// could otherwise add a result of its own (`"x; dmarc=pass y"@attacker.test`) to a
/// field the primary trusts.
fn pvalue(addr: &str) -> Option<String> {
    let plain = addr.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && local.split('.').all(|atom| {
                !atom.is_empty()
                    && atom
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b))
            })
            && is_domain(domain)
    });
    plain.then(|| addr.to_string())
}

/// `smtp.mailfrom`: the address as a [`pvalue`], else its domain alone (RFC 8601 §2.7.2
/// allows either), else nothing.
fn mailfrom(addr: &str) -> Option<String> {
    pvalue(addr).or_else(|| {
        let domain = addr.rsplit_once('@')?.1;
        is_domain(domain).then(|| domain.to_ascii_lowercase())
    })
}

/// Letters, digits, hyphens and dots, with no empty label.
fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The domain of a `From:` as the summary keeps it (`Name <a@b.example>` or `a@b.example`).
fn from_domain(from: &str) -> Option<String> {
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from.trim(),
    };
    let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches('.');
    is_domain(domain).then(|| domain.to_ascii_lowercase())
}

/// What becomes of the header field being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    Drop,
    /// An `Authentication-Results:` field whose authserv-id is not read yet: buffered.
    Undecided,
}

/// Removes, as a message streams through, every `Authentication-Results:` field of its
/// header whose authserv-id is ours (case-insensitive, a trailing dot ignored, comments
/// and folding before it skipped, quoted or not). Everything else passes unchanged, the
/// body untouched; lines are taken to end at LF (CRLF and bare LF alike).
#[derive(Debug)]
pub struct StripOurs {
    ids: Vec<Vec<u8>>,
    /// The header line being read, up to [`LINE_CAP`].
    line: Vec<u8>,
    /// The current line outgrew [`LINE_CAP`]: its rest follows `fate` unbuffered.
    overlong: bool,
    /// An undecided field so far.
    field: Vec<u8>,
    fate: Fate,
    in_body: bool,
    stripped: usize,
}

impl StripOurs {
    /// A filter for fields carrying any of `authserv_ids` (the deployment's, and this
    /// node's host name where it differs).
    pub fn new<S: AsRef<str>>(authserv_ids: &[S]) -> Self {
        StripOurs {
            ids: authserv_ids
                .iter()
                .map(|id| normalise(id.as_ref().as_bytes()))
                .filter(|id| !id.is_empty())
                .collect(),
            line: Vec::new(),
            overlong: false,
            field: Vec::new(),
            fate: Fate::Keep,
            in_body: false,
            stripped: 0,
        }
    }

    /// Past the header: everything from here on passes unchanged (callers may skip
    /// [`StripOurs::feed`] and its copy).
    pub fn in_body(&self) -> bool {
        self.in_body
    }

    /// Fields removed so far.
    pub fn stripped(&self) -> usize {
        self.stripped
    }

    /// Pass `input` through, appending what is kept to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while !rest.is_empty() {
            if self.in_body {
                out.extend_from_slice(rest);
                return;
            }
            let (piece, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(n) => (&rest[..=n], true),
                None => (rest, false),
            };
            rest = &rest[piece.len()..];
            if self.overlong {
                self.follow(piece, out);
                self.overlong = !complete;
                continue;
            }
            self.line.extend_from_slice(piece);
            if complete {
                let line = std::mem::take(&mut self.line);
                if line == b"\r\n" || line == b"\n" {
                    self.settle(out);
                    self.in_body = true;
                    out.extend_from_slice(&line);
                } else {
                    self.begin_line(&line, out);
                }
            } else if self.line.len() >= LINE_CAP {
                let line = std::mem::take(&mut self.line);
                self.begin_line(&line, out);
                self.overlong = true;
            }
        }
    }

    /// The message ended: what is still held is decided and passed on.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.begin_line(&line, out);
        }
        self.settle(out);
    }

    /// The start of a header line (all of it, or its first [`LINE_CAP`] bytes).
    fn begin_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // A continuation of the field before.
            self.follow(line, out);
            return;
        }
        self.settle(out);
        // A name padded with whitespace past the line cap (obs-syntax allows it before
        // the colon) is still this field's.
        let name = match line.iter().position(|&b| b == b':') {
            Some(colon) => Some(trim_wsp_end(&line[..colon])),
            None => Some(trim_wsp_end(line)),
        };
        if name.is_some_and(|n| n.eq_ignore_ascii_case(NAME)) {
            self.fate = Fate::Undecided;
            self.follow(line, out);
        } else {
            self.fate = Fate::Keep;
            out.extend_from_slice(line);
        }
    }

    /// Bytes of the current field.
    fn follow(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self.fate {
            Fate::Keep => out.extend_from_slice(bytes),
            Fate::Drop => {}
            Fate::Undecided => {
                self.field.extend_from_slice(bytes);
                // The id ends at the first `;`: look again only when one may have come
                // (or the field grew past the cap), so a long field costs linear time.
                if bytes.contains(&b';') || self.field.len() > FIELD_CAP {
                    self.decide(false, out);
                }
            }
        }
    }

    /// The current field is complete: decide it if it is not yet.
    fn settle(&mut self, out: &mut Vec<u8>) {
        if self.fate == Fate::Undecided {
            self.decide(true, out);
        }
        self.fate = Fate::Keep;
    }

    fn decide(&mut self, complete: bool, out: &mut Vec<u8>) {
        let value = match self.field.iter().position(|&b| b == b':') {
            Some(colon) => &self.field[colon + 1..],
            None => &[][..],
        };
        let fate = match claims(value, &self.ids, complete) {
            Some(true) => Fate::Drop,
            Some(false) => Fate::Keep,
            None if self.field.len() > FIELD_CAP => Fate::Drop,
            None => return,
        };
        if fate == Fate::Drop {
            self.stripped += 1;
        } else {
            out.extend_from_slice(&self.field);
        }
        self.field.clear();
        self.fate = fate;
    }
}

/// Lower case, without a trailing dot.
fn normalise(id: &[u8]) -> Vec<u8> {
    let id = id.strip_suffix(b".").unwrap_or(id);
    id.to_ascii_lowercase()
}

fn trim_wsp_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Whether a field's value claims one of our authserv-ids (lower case, no trailing dot):
/// `Some` once that can be told (the id ends at the first `;` outside comments, or the
/// field is `complete`), `None` when more of the field is needed.
///
/// Read as loosely as the laxest reader of these fields might (OpenDMARC's parser joins
/// dotted pieces across whitespace and comments, honours escapes anywhere, drops stray
/// parentheses and quotes): the part before the `;` is taken twice, once without its
/// comments and once with them, each without whitespace, line breaks, quotes,
/// backslashes and parentheses, and the field is ours when either starts with an id.
/// Dropping a stranger's field by mistake costs nothing; keeping a forged one of ours
/// would let a sender write our verdicts.
fn claims(value: &[u8], ids: &[Vec<u8>], complete: bool) -> Option<bool> {
    let mut bare = Vec::new(); // comments removed
    let mut all = Vec::new(); // comments' text kept
    let mut depth = 0usize;
    let mut i = 0;
    let mut ended = false;
    while let Some(&c) = value.get(i) {
        match c {
            b'\\' => {
                if let Some(&next) = value.get(i + 1) {
                    if depth == 0 {
                        bare.push(next.to_ascii_lowercase());
                    }
                    all.push(next.to_ascii_lowercase());
                }
                i += 2;
                continue;
            }
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => {
                ended = true;
                break;
            }
            b' ' | b'\t' | b'\r' | b'\n' | b'"' => {}
            _ => {
                if depth == 0 {
                    bare.push(c.to_ascii_lowercase());
                }
                all.push(c.to_ascii_lowercase());
            }
        }
        i += 1;
    }
    if !ended && !complete {
        return None;
    }
    Some(
        ids.iter()
            .any(|id| bare.starts_with(id) || all.starts_with(id)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole field for `rec`, as the drain writes it.
    fn header(authserv_id: &str, rec: &Record) -> Option<String> {
        methods(rec).map(|m| field(authserv_id, &m))
    }
    use crate::model::Origin;

    fn strip(id: &str, msg: &[u8], step: usize) -> (Vec<u8>, usize) {
        let mut s = StripOurs::new(&[id]);
        let mut out = Vec::new();
        for chunk in msg.chunks(step.max(1)) {
            s.feed(chunk, &mut out);
        }
        s.finish(&mut out);
        (out, s.stripped())
    }

    const ID: &str = "mx2.example.test";

    #[test]
    fn our_fields_go_whatever_their_spelling_and_the_rest_stays_in_any_chunks() {
        let msg = b"Received: from a\r\n\tby b\r\n\
            Authentication-Results: mx2.example.test; spf=pass\r\n\
            AUTHENTICATION-RESULTS : (a comment (nested \\) one)) \"MX2.Example.Test.\"; dkim=pass\r\n\
            Authentication-Results:\r\n mx2.example.test;\r\n\tdmarc=pass\r\n\
            Authentication-Results: mx.primary.test; spf=fail\r\n\
            Authentication-Results: mx2.example.test.evil; spf=pass\r\n\
            Authentication-Results: mx2 .example.test; spf=pass\r\n\
            Authentication-Results: mx2 (x) .example.test; spf=pass\r\n\
            Authentication-Results: mx2\\.example.test; spf=pass\r\n\
            Authentication-Results: )mx2.example.test; spf=pass\r\n\
            Authentication-Results: \"mx2\".example.test; spf=pass\r\n\
            Authentication-Results: (mx2.example.test; spf=pass\r\n\
            Authentication-Results: (mx2.example.test; a) mx; spf=pass\r\n\
            Authentication-Results: (about mx2.example.test) mx.primary.test; spf=none\r\n\
            Subject: hi\r\n\
            \r\n\
            Authentication-Results: mx2.example.test; spf=pass\r\n";
        let want = b"Received: from a\r\n\tby b\r\n\
            Authentication-Results: mx.primary.test; spf=fail\r\n\
            Authentication-Results: (about mx2.example.test) mx.primary.test; spf=none\r\n\
            Subject: hi\r\n\
            \r\n\
            Authentication-Results: mx2.example.test; spf=pass\r\n";
        for step in [1, 2, 3, 7, 64, msg.len()] {
            let (out, n) = strip(ID, msg, step);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "step {step}"
            );
            assert_eq!(n, 11, "step {step}");
        }
    }

    #[test]
    fn a_header_without_body_and_bare_line_ends_are_handled() {
        let (out, n) = strip(ID, b"A: b\nAuthentication-Results: mx2.example.test", 5);
        assert_eq!(out, b"A: b\n");
        assert_eq!(n, 1);
        let (out, n) = strip(ID, b"Authentication-Results: other\n\nbody", 1);
        assert_eq!(out, b"Authentication-Results: other\n\nbody");
        assert_eq!(n, 0);
    }

    #[test]
    fn a_name_padded_past_the_line_cap_is_still_read() {
        let padded = format!(
            "Authentication-Results{}: mx2.example.test; spf=pass\r\nSubject: s\r\n\r\nb",
            " ".repeat(9 * LINE_CAP)
        );
        for step in [1000, 64 * 1024, padded.len()] {
            let (out, n) = strip(ID, padded.as_bytes(), step);
            assert_eq!(out, b"Subject: s\r\n\r\nb", "step {step}");
            assert_eq!(n, 1);
        }
    }

    #[test]
    fn long_lines_pass_and_an_endless_field_is_dropped_unbuffered() {
        let long = format!(
            "X-Long: {}\r\nSubject: s\r\n\r\nb",
            "a".repeat(3 * LINE_CAP)
        );
        let (out, n) = strip(ID, long.as_bytes(), 1000);
        assert_eq!(out, long.as_bytes());
        assert_eq!(n, 0);
        let endless = format!(
            "Authentication-Results: ({})\r\nSubject: s\r\n\r\nb",
            "c".repeat(4 * FIELD_CAP)
        );
        let (out, n) = strip(ID, endless.as_bytes(), 1000);
        assert_eq!(out, b"Subject: s\r\n\r\nb");
        assert_eq!(n, 1);
    }

    fn record(intake: Intake, mail_from: &str, verdicts: Option<Verdicts>) -> Record {
        let now = chrono::Utc::now();
        let mut rec = Record::held(
            crate::model::MessageId::new(now),
            mail_from.into(),
            vec!["u@example.test".into()],
            now,
            (0, String::new()),
            crate::model::Summary {
                from: Some("Sender <a@Sender.Test>".into()),
                ..Default::default()
            },
        );
        rec.origin = Origin {
            ip: "192.0.2.7".into(),
            helo: "mail.sender.test".into(),
            tls: true,
            user: None,
        };
        rec.intake = intake;
        rec.verdicts = verdicts;
        rec
    }

    #[test]
    fn the_header_says_what_was_recorded_and_nothing_injected() {
        let rec = record(
            Intake::Smtp,
            "a@sender.test",
            Some(Verdicts::spf("SOFTFAIL")),
        );
        assert_eq!(
            header(ID, &rec).unwrap(),
            "Authentication-Results: mx2.example.test;\r\n\tspf=softfail (sender IP is 192.0.2.7) smtp.mailfrom=a@sender.test\r\n"
        );
        let ses = Verdicts {
            spf: Some("GRAY".into()),
            dkim: Some("PASS".into()),
            dmarc: Some("FAIL".into()),
            dmarc_policy: Some("REJECT".into()),
            ..Default::default()
        };
        let rec = record(Intake::Ses, "\"x;dkim=pass\"@sender.test", Some(ses));
        assert_eq!(
            header(ID, &rec).unwrap(),
            "Authentication-Results: mx2.example.test;\r\n\tspf=none (sender IP is 192.0.2.7) smtp.mailfrom=sender.test;\r\n\tdkim=pass;\r\n\tdmarc=fail header.from=sender.test (p=reject)\r\n"
        );
        // A quoted local part with a `;` and a result in it: only the domain, so no reader
        // that splits at every `;` finds a result of the sender's; the same in the ARC
        // set's one-line form.
        let rec = record(
            Intake::Smtp,
            "\"x; dmarc=pass y\"@Attacker.test",
            Some(Verdicts::spf("PASS")),
        );
        let m = methods(&rec).unwrap();
        for text in [header(ID, &rec).unwrap(), one_line(ID, &m)] {
            assert_eq!(text.matches(';').count(), 1, "{text}");
            assert!(!text.contains("dmarc"), "{text}");
            assert!(text.contains("smtp.mailfrom=attacker.test"), "{text}");
        }
        let rec = record(Intake::Smtp, "a@sender.test", Some(Verdicts::pending()));
        assert_eq!(
            header(ID, &rec).unwrap(),
            "Authentication-Results: mx2.example.test; none\r\n"
        );
        let rec = record(Intake::Smtp, "", Some(Verdicts::spf("PASS")));
        assert!(
            header(ID, &rec)
                .unwrap()
                .ends_with("smtp.helo=mail.sender.test\r\n")
        );
        assert_eq!(header(ID, &record(Intake::Dsn, "", None)), None);
    }
}
