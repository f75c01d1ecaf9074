//! Mail addresses as data, not text.
//!
//! `smtp-proto` decodes a quoted local part (`"john doe"@example.test` arrives as
//! `john doe@example.test`), and that decoded text is what the index stores. Written back
//! onto the wire as it is, an address like `"bob> NOTIFY=SUCCESS"@example.test` would
//! become ESMTP parameters at the primary. So an address is parsed once into an
//! [`Address`] (local part and domain, decoded), refused when it holds what no RFC 5321
//! address can carry (control characters, a domain that is not a domain), and every
//! output serialises it again in RFC 5321 form ([`Address::to_smtp`], `Display`): a local
//! part that is not a dot-string is quoted, with `"` and `\` escaped.
//!
//! Parsing the RFC 5321 form ([`Address::parse`]) goes through `smtp-proto` too, so there
//! is one parser; [`Address::from_decoded`] reads the stored form back (the domain never
//! contains `@`, so the last `@` separates the two).

use std::fmt;

/// A mailbox address: a decoded local part and a domain (or address literal).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

/// Why a text is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("control character in the address")]
    Control,
    #[error("not an address like user@example.com")]
    Syntax,
    #[error("empty local part")]
    EmptyLocal,
    #[error("`{0}` is not a domain name or address literal")]
    Domain(String),
}

/// A control character: C0, DEL or C1.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// `atext` of RFC 5322 (ASCII), extended by RFC 6531 with any non-ASCII character.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// A local part that may go out unquoted: `atom *("." atom)`.
fn is_dot_string(local: &str) -> bool {
    !local.is_empty()
        && local
            .split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

fn valid_domain(domain: &str) -> bool {
    if let Some(inner) = domain.strip_prefix('[') {
        // An address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]`.
        return inner.strip_suffix(']').is_some_and(|lit| {
            !lit.is_empty()
                && lit
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !"[]\\".contains(c))
        });
    }
    !domain.is_empty()
        && domain.len() <= 255
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii())
        })
}

impl Address {
    /// An address from its decoded local part and its domain (one trailing dot of the
    /// domain is dropped).
    ///
    /// # Errors
    /// A control character anywhere, an empty local part, or a domain that is neither a
    /// domain name nor an address literal.
    pub fn new(local: &str, domain: &str) -> Result<Address, AddressError> {
        if local.chars().chain(domain.chars()).any(is_control) {
            return Err(AddressError::Control);
        }
        if local.is_empty() {
            return Err(AddressError::EmptyLocal);
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if !valid_domain(domain) {
            return Err(AddressError::Domain(domain.to_string()));
        }
        Ok(Address {
            local: local.to_string(),
            domain: domain.to_string(),
        })
    }

    /// The address in the decoded form `smtp-proto` gives and the index stores
    /// (`john doe@example.test`): split at the last `@`.
    ///
    /// # Errors
    /// As [`Address::new`]; [`AddressError::Syntax`] without an `@`.
    pub fn from_decoded(text: &str) -> Result<Address, AddressError> {
        let (local, domain) = text.rsplit_once('@').ok_or(AddressError::Syntax)?;
        Address::new(local, domain)
    }

    /// Parse the RFC 5321 form (`"john doe"@example.test`, no angle brackets) with
    /// `smtp-proto`'s parser, the one the listener uses.
    ///
    /// # Errors
    /// Anything but exactly one address, and what [`Address::new`] refuses.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.chars().any(is_control) {
            return Err(AddressError::Control);
        }
        let line = format!("RCPT TO:<{text}>\r\n");
        match smtp_proto::Request::parse(&mut line.as_bytes().iter()) {
            Ok(smtp_proto::Request::Rcpt { to })
                if to.orcpt.is_none() && to.flags == 0 && to.rrvs == 0 =>
            {
                Address::from_decoded(&to.address)
            }
            _ => Err(AddressError::Syntax),
        }
    }

    /// The decoded local part.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain as given (case kept, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The decoded form, `local@domain`, as the index stores it.
    pub fn decoded(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// Only ASCII: needs no SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// The RFC 5321 form: the local part as a dot-string when it is one, else quoted
    /// with `"` and `\` escaped; never a CR, LF, or a space or `>` outside the quotes.
    pub fn to_smtp(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// `user@domain` for `user+tag@domain` (the tag starts at the first `+`); `None` when
/// there is no tag. Mail to a tagged address is the untagged address's (a user reads
/// their `+tag` mail, and the index keeps tagged recipients under both).
pub fn untag(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    let (base, _) = local.split_once('+')?;
    (!base.is_empty()).then(|| format!("{base}@{domain}"))
}

/// The RFC 5321 form of a stored (decoded) reverse-path: `""` for the null sender,
/// `None` when the text is no address at all (a record written before addresses were
/// checked), which is then never put on the wire.
pub fn smtp_path(decoded: &str) -> Option<String> {
    if decoded.is_empty() {
        return Some(String::new());
    }
    Address::from_decoded(decoded).ok().map(|a| a.to_smtp())
}

/// `text` with every control character (C0, DEL, C1; ESC and OSC included) shown as an
/// escape (`\e`, `\u{9b}`) instead of being sent to a terminal.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if is_control(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Whether `domain` can be a recipient domain on the internet: at least two labels, none
/// empty, the last not numeric (so no address literal, IP address, `localhost` or bare
/// host name that only a local resolver would answer).
pub fn is_public_domain(domain: &str) -> bool {
    if domain.starts_with('[') {
        return false;
    }
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    let numeric = labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    labels.len() >= 2 && !numeric && labels.iter().all(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_local_parts_are_quoted_again() {
        for (decoded, wire) in [
            ("bob@example.test", "bob@example.test"),
            ("john doe@example.test", "\"john doe\"@example.test"),
            (
                "bob> NOTIFY=SUCCESS ORCPT=rfc822;x@example.test",
                "\"bob> NOTIFY=SUCCESS ORCPT=rfc822;x\"@example.test",
            ),
            ("a\"b\\c@example.test", "\"a\\\"b\\\\c\"@example.test"),
            ("a@b@example.test", "\"a@b\"@example.test"),
            (".x@example.test", "\".x\"@example.test"),
            ("é@exämple.test", "é@exämple.test"),
        ] {
            let a = Address::from_decoded(decoded).unwrap();
            assert_eq!(a.to_smtp(), wire);
            assert_eq!(Address::parse(wire).unwrap(), a, "{wire}");
            assert_eq!(a.decoded(), decoded);
        }
    }

    #[test]
    fn what_no_address_can_hold_is_refused() {
        assert_eq!(
            Address::from_decoded("a\x1bb@example.test"),
            Err(AddressError::Control)
        );
        assert_eq!(
            Address::from_decoded("a\u{9b}@example.test"),
            Err(AddressError::Control)
        );
        assert!(Address::from_decoded("a@exa mple.test").is_err());
        assert!(Address::from_decoded("a@example.test>").is_err());
        assert!(Address::from_decoded("@example.test").is_err());
        assert!(Address::parse("a@b.test> NOTIFY=NEVER").is_err());
        assert!(Address::parse("a@b.test> ORCPT=rfc822;x@y").is_err());
        assert_eq!(
            Address::from_decoded("x@[192.0.2.1]").unwrap().to_smtp(),
            "x@[192.0.2.1]"
        );
        assert_eq!(smtp_path(""), Some(String::new()));
        assert_eq!(smtp_path("no-at-sign"), None);
    }

    #[test]
    fn controls_are_escaped_for_terminals() {
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(
            escape_controls("a\x1b]0;pwned\x07b\u{9b}"),
            "a\\e]0;pwned\\u{7}b\\u{9b}"
        );
    }
}
