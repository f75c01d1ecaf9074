//! `[continuity] alternates`: where each user hears about an outage, since their own
//! mailbox is what is down. A CSV file with the header `address,alternate_email,phone`
//! (phone optional, E.164: `+4930123456`).
//!
//! Unlike the aliases file, a bad row is an error naming `file:line`: a notice that
//! silently goes nowhere is found out only when the outage comes, which is too late.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::Address;

/// One user's out-of-band contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternate {
    /// The user's own address, lower case.
    pub address: String,
    /// Their address elsewhere (a personal or partner mailbox).
    pub email: Option<String>,
    /// Their phone number, E.164.
    pub phone: Option<String>,
}

/// The users listed, by address (lower case).
pub type Alternates = BTreeMap<String, Alternate>;

/// Read and check the file. `own_domains` are the domains this standby holds mail for:
/// an alternate there would go to the primary that is down.
///
/// # Errors
/// `file:line: what is wrong`.
pub fn load(path: &Path, own_domains: &[String]) -> Result<Alternates, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text, own_domains).map_err(|(line, e)| format!("{}:{line}: {e}", path.display()))
}

/// Parse the file's text; an error is `(line, message)`.
pub fn parse(text: &[u8], own_domains: &[String]) -> Result<Alternates, (usize, String)> {
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| (1, e.to_string()))?
        .iter()
        .map(str::to_ascii_lowercase)
        .collect();
    if header != ["address", "alternate_email", "phone"] && header != ["address", "alternate_email"]
    {
        return Err((
            1,
            format!(
                "the header must be `address,alternate_email,phone`, not `{}`",
                header.join(",")
            ),
        ));
    }
    let mut out = Alternates::new();
    for row in reader.records() {
        // The line from the byte offset, past the blank and comment lines the reader
        // skipped before the record (its own line count leaves blank lines out).
        let line_at = |p: Option<&csv::Position>| {
            p.map_or(0, |p| {
                let mut at = usize::try_from(p.byte())
                    .unwrap_or(usize::MAX)
                    .min(text.len());
                loop {
                    let rest = &text[at..];
                    let skip = rest.iter().position(|&b| b == b'\n').map_or(0, |n| n + 1);
                    let line = &rest[..skip];
                    let blank = line.iter().all(u8::is_ascii_whitespace);
                    if skip == 0 || !(blank || line.starts_with(b"#")) {
                        break;
                    }
                    at += skip;
                }
                text[..at].iter().filter(|&&b| b == b'\n').count() + 1
            })
        };
        let row = row.map_err(|e| (line_at(e.position()), e.to_string()))?;
        let line = line_at(row.position());
        if row.len() > 3 || row.len() < 2 {
            return Err((
                line,
                format!(
                    "{} fields; expected address,alternate_email,phone",
                    row.len()
                ),
            ));
        }
        let address = Address::parse(&row[0])
            .map_err(|e| (line, format!("address `{}`: {e}", &row[0])))?
            .decoded()
            .to_lowercase();
        let email = match &row[1] {
            "" => None,
            e => {
                let a = Address::parse(e)
                    .map_err(|err| (line, format!("alternate_email `{e}`: {err}")))?;
                if own_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(a.domain()))
                {
                    return Err((
                        line,
                        format!(
                            "alternate_email `{e}` is in {}, a domain whose mail is down during \
                             an outage; give an address elsewhere",
                            a.domain()
                        ),
                    ));
                }
                Some(a.decoded())
            }
        };
        let phone = match row.get(2).unwrap_or("") {
            "" => None,
            p if is_e164(p) => Some(p.to_string()),
            p => {
                return Err((
                    line,
                    format!(
                        "phone `{p}` is not an E.164 number (+ and 8 to 15 digits: +4930123456)"
                    ),
                ));
            }
        };
        if email.is_none() && phone.is_none() {
            return Err((
                line,
                format!("`{address}` has neither an alternate_email nor a phone"),
            ));
        }
        if out.contains_key(&address) {
            return Err((line, format!("`{address}` is listed twice")));
        }
        out.insert(
            address.clone(),
            Alternate {
                address,
                email,
                phone,
            },
        );
    }
    Ok(out)
}

/// `+` and 8 to 15 digits, the first not 0.
fn is_e164(p: &str) -> bool {
    p.strip_prefix('+').is_some_and(|d| {
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> Vec<String> {
        vec!["example.test".into()]
    }

    #[test]
    fn rows_and_their_errors() {
        let ok = parse(
            b"address,alternate_email,phone\n# a comment\nAlice@Example.test,alice@home.example,+4930123456\nbob@example.test,,+15551234567\ncarol@example.test,carol@elsewhere.example\n",
            &own(),
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert_eq!(
            ok["alice@example.test"].email.as_deref(),
            Some("alice@home.example")
        );
        assert_eq!(ok["bob@example.test"].email, None);
        assert_eq!(ok["carol@example.test"].phone, None);
        for (text, line, what) in [
            ("address,alias\n", 1, "header"),
            (
                "address,alternate_email,phone\na@example.test,b@x.example,12345\n",
                2,
                "E.164",
            ),
            (
                "address,alternate_email,phone\n\na@example.test,b@example.test,\n",
                3,
                "down during",
            ),
            (
                "address,alternate_email,phone\nnot an address,b@x.example,\n",
                2,
                "address",
            ),
            (
                "address,alternate_email,phone\na@example.test,,\n",
                2,
                "neither",
            ),
            (
                "address,alternate_email,phone\na@example.test,b@x.example\n# note\n\na@example.test,c@x.example\n",
                5,
                "twice",
            ),
            (
                "address,alternate_email,phone\na@example.test,b@x.example,+4930123456,x\n",
                2,
                "fields",
            ),
            (
                "address,alternate_email,phone\na@example.test,b@x.example>,\n",
                2,
                "alternate_email",
            ),
        ] {
            let (l, e) = parse(text.as_bytes(), &own()).unwrap_err();
            assert_eq!(l, line, "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }
}
