//! Dovecot's passwd-file format, read and edited line by line.
//!
//! `user[@domain]:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]`: only the first two
//! fields mean anything here, the rest are kept as they are, so the file Dovecot already
//! uses can be copied over unchanged and `standby user add` can edit it without losing
//! what Dovecot needs. Reading never fails as a whole: a line that cannot be a login
//! (weak scheme, no domain, a name twice) is skipped with a `file:line` warning and every
//! other user can still log in. Editing keeps every other line byte for byte.

use super::hash::Hash;

/// Extra fields that disable a login or restrict where from (not supported here).
const DISABLING: [&str; 7] = [
    "nologin",
    "fail",
    "deny",
    "allow_nets",
    "allow_real_nets",
    "noauthenticate",
    "nopassword",
];

/// One user that can log in.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The address, lower case, with `[users] default_domain` added to a bare name.
    pub address: String,
    pub hash: Hash,
    /// 1-based line in the file.
    pub line: usize,
}

/// A line that was not taken: `line` (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub message: String,
}

/// The address a user name stands for: lower case, `default_domain` added to a bare
/// name; `None` when it has no domain and there is no default, or is no address.
pub fn address_of(name: &str, default_domain: Option<&str>) -> Option<String> {
    let name = name.trim();
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return None;
    }
    let full = match name.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => name.to_string(),
        Some(_) => return None,
        None => format!("{name}@{}", default_domain?.trim_end_matches('.')),
    };
    Some(full.to_lowercase())
}

/// The users of a passwd-file's text, and the lines skipped.
pub fn parse(text: &str, default_domain: Option<&str>) -> (Vec<Entry>, Vec<Skipped>) {
    // An editor's byte order mark is not part of the first user's name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut entries: Vec<Entry> = Vec::new();
    // Every name read, skipped lines included: Dovecot keeps the first line of a name, so
    // a later line never stands in for a disabled or unreadable first one.
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let name = fields.next().unwrap_or("");
        let password = fields.next().unwrap_or("");
        let Some(address) = address_of(name, default_domain) else {
            let message = if name.contains('@') || default_domain.is_some() {
                format!("`{}` is not a user name or address", name.trim())
            } else {
                format!(
                    "`{}` has no domain and [users] default_domain is not set",
                    name.trim()
                )
            };
            skipped.push(Skipped { line: n, message });
            continue;
        };
        if let Some(first) = seen.get(&address) {
            skipped.push(Skipped {
                line: n,
                message: format!("{address} is already on line {first}"),
            });
            continue;
        }
        seen.insert(address.clone(), n);
        // Dovecot's extra fields (the eighth field on) that disable or restrict a user:
        // honouring none of them here would let a disabled account in.
        let extras = line.splitn(8, ':').nth(7).unwrap_or("");
        if let Some(flag) = extras.split_whitespace().find_map(|f| {
            let key = f.split('=').next().unwrap_or(f).to_ascii_lowercase();
            DISABLING.contains(&key.as_str()).then_some(key)
        }) {
            skipped.push(Skipped {
                line: n,
                message: format!("{address}: has `{flag}`; this user cannot log in here"),
            });
            continue;
        }
        match Hash::parse(password) {
            Ok(hash) => entries.push(Entry {
                address,
                hash,
                line: n,
            }),
            Err(e) => skipped.push(Skipped {
                line: n,
                message: format!("{address}: {e}; this user cannot log in"),
            }),
        }
    }
    (entries, skipped)
}

/// `text` with `address`'s password set to `hash`: its line's second field replaced
/// (every other field kept), or a new line `address:hash` at the end. Every other line
/// is kept byte for byte (the file may hold Latin-1 in a gecos field).
pub fn set_password(
    text: &[u8],
    address: &str,
    hash: &Hash,
    default_domain: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 128);
    let mut done = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if !done && names(line, address, default_domain) {
            let (body, end) = split_end(line);
            let mut fields: Vec<&[u8]> = body.split(|&b| b == b':').collect();
            let field = hash.field();
            if fields.len() < 2 {
                fields.push(field.as_bytes());
            } else {
                fields[1] = field.as_bytes();
            }
            out.extend_from_slice(&fields.join(&b':'));
            out.extend_from_slice(end);
            done = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    if !done {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(format!("{address}:{}\n", hash.field()).as_bytes());
    }
    out
}

/// `text` without `address`'s lines, and whether there were any.
pub fn remove(text: &[u8], address: &str, default_domain: Option<&str>) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(text.len());
    let mut found = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if names(line, address, default_domain) {
            found = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    (out, found)
}

/// Whether `line` is a user line for `address`.
fn names(line: &[u8], address: &str, default_domain: Option<&str>) -> bool {
    let name = line.split(|&b| b == b':').next().unwrap_or(b"");
    let name = name.strip_prefix("\u{feff}".as_bytes()).unwrap_or(name);
    let name = String::from_utf8_lossy(name);
    let t = name.trim();
    if t.is_empty() || t.starts_with('#') {
        return false;
    }
    address_of(&name, default_domain).is_some_and(|a| a == address)
}

/// A line and its line end.
fn split_end(line: &[u8]) -> (&[u8], &[u8]) {
    let mut n = line.len();
    while n > 0 && matches!(line[n - 1], b'\r' | b'\n') {
        n -= 1;
    }
    line.split_at(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA512: &str = "{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";

    #[test]
    fn reads_users_and_skips_only_the_bad_lines() {
        let text = format!(
            "# Dovecot users\n\
             Alice@Example.TEST:{SHA512}:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\n\
             bob:{{PLAIN}}secret::\n\
             carol:{SHA512}\n\
             alice@example.test:{SHA512}\n\
             \n\
             dave@:{SHA512}\n\
             erin@example.test\n"
        );
        let (users, skipped) = parse(&text, Some("example.test"));
        let names: Vec<_> = users.iter().map(|u| (u.address.as_str(), u.line)).collect();
        assert_eq!(
            names,
            [("alice@example.test", 2), ("carol@example.test", 4)]
        );
        let lines: Vec<usize> = skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [3, 5, 7, 8], "{skipped:?}");
        assert!(skipped[0].message.contains("PLAIN"), "{skipped:?}");
        assert!(skipped[1].message.contains("line 2"), "{skipped:?}");
        assert!(
            skipped[3].message.contains("no password hash"),
            "{skipped:?}"
        );
        // Without a default domain a bare name is no address.
        let (users, skipped) = parse(&text, None);
        assert_eq!(users.len(), 1);
        assert!(
            skipped
                .iter()
                .any(|s| s.line == 4 && s.message.contains("default_domain"))
        );
    }

    #[test]
    fn editing_keeps_every_other_line_and_field() {
        let text = format!(
            "# keep me\nalice@example.test:{SHA512}:1000:1000::/home/alice\r\nbob@example.test:{SHA512}"
        );
        let h = Hash::argon2id("new");
        let out = String::from_utf8(set_password(
            text.as_bytes(),
            "alice@example.test",
            &h,
            None,
        ))
        .unwrap();
        let alice = out.lines().nth(1).unwrap();
        assert_eq!(
            alice,
            format!("alice@example.test:{}:1000:1000::/home/alice", h.field())
        );
        assert!(out.contains("/home/alice\r\n"), "the line end is kept");
        assert!(out.starts_with("# keep me\n") && out.ends_with(SHA512));
        let out =
            String::from_utf8(set_password(out.as_bytes(), "new@example.test", &h, None)).unwrap();
        assert!(out.ends_with(&format!("{SHA512}\nnew@example.test:{}\n", h.field())));
        let (users, skipped) = parse(&out, None);
        assert_eq!(users.len(), 3, "{skipped:?}");
        let (out, found) = remove(out.as_bytes(), "bob@example.test", None);
        assert!(found);
        assert!(!String::from_utf8_lossy(&out).contains("bob@"));
        assert!(!remove(&out, "bob@example.test", None).1);
        // A bare name in the file is the same user as its address.
        let (out, found) = remove(
            b"bob:x\ncarol:y\n",
            "bob@example.test",
            Some("example.test"),
        );
        assert!(found);
        assert_eq!(out, b"carol:y\n");
        // A byte order mark before the first name: that line is still the user's.
        let (out, found) = remove(
            "\u{feff}bob:x\ncarol:y\n".as_bytes(),
            "bob@example.test",
            Some("example.test"),
        );
        assert!(found);
        assert_eq!(out, b"carol:y\n");
        let (users, _) = parse(&format!("\u{feff}bob:{SHA512}\n"), Some("example.test"));
        assert_eq!(users[0].address, "bob@example.test");
        // A disabled first line is not replaced by a later one of the same name.
        let (users, skipped) = parse(
            &format!("bob:{SHA512}::::::nologin\nbob:{SHA512}\n"),
            Some("example.test"),
        );
        assert!(users.is_empty());
        assert!(
            skipped[1].message.contains("already on line 1"),
            "{skipped:?}"
        );
        // Bytes that are not UTF-8 in another user's line are kept as they are.
        let latin1 = b"carol:{PLAIN}x:1:1:Jos\xe9:/home/carol\n";
        let out = set_password(latin1, "dave@example.test", &h, Some("example.test"));
        assert!(out.starts_with(latin1));
    }
}
