//! Dovecot's passwd-file format, read and edited line by line.
//!
//! `user[@domain]:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]`: only the first two
//! fields mean anything here, the rest are kept as they are, so the file Dovecot already
//! uses can be copied over unchanged and `standby user add` can edit it without losing
//! what Dovecot needs. Reading never fails as a whole: a line that cannot be a login
//! (weak scheme, no domain, a name twice) is skipped with a `file:line` warning and every
//! other user can still log in. Editing keeps every other line byte for byte.

use super::hash::Hash;

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
    let mut entries: Vec<Entry> = Vec::new();
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
        if let Some(first) = entries.iter().find(|e| e.address == address) {
            skipped.push(Skipped {
                line: n,
                message: format!("{address} is already on line {}", first.line),
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
/// is kept as it was.
pub fn set_password(
    text: &str,
    address: &str,
    hash: &Hash,
    default_domain: Option<&str>,
) -> String {
    let mut out = String::with_capacity(text.len() + 128);
    let mut done = false;
    for line in text.split_inclusive('\n') {
        if !done && names(line, address, default_domain) {
            let (body, end) = split_end(line);
            let mut fields: Vec<&str> = body.split(':').collect();
            let field = hash.field();
            if fields.len() < 2 {
                fields.push(&field);
            } else {
                fields[1] = &field;
            }
            out.push_str(&fields.join(":"));
            out.push_str(end);
            done = true;
        } else {
            out.push_str(line);
        }
    }
    if !done {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{address}:{}\n", hash.field()));
    }
    out
}

/// `text` without `address`'s lines, and whether there were any.
pub fn remove(text: &str, address: &str, default_domain: Option<&str>) -> (String, bool) {
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if names(line, address, default_domain) {
            found = true;
        } else {
            out.push_str(line);
        }
    }
    (out, found)
}

/// Whether `line` is a user line for `address`.
fn names(line: &str, address: &str, default_domain: Option<&str>) -> bool {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return false;
    }
    let name = line.split(':').next().unwrap_or("");
    address_of(name, default_domain).is_some_and(|a| a == address)
}

/// A line and its line end.
fn split_end(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\r', '\n']);
    (body, &line[body.len()..])
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
        let out = set_password(&text, "alice@example.test", &h, None);
        let alice = out.lines().nth(1).unwrap();
        assert_eq!(
            alice,
            format!("alice@example.test:{}:1000:1000::/home/alice", h.field())
        );
        assert!(out.contains("/home/alice\r\n"), "the line end is kept");
        assert!(out.starts_with("# keep me\n") && out.ends_with(SHA512));
        let out = set_password(&out, "new@example.test", &h, None);
        assert!(out.ends_with(&format!("{SHA512}\nnew@example.test:{}\n", h.field())));
        let (users, skipped) = parse(&out, None);
        assert_eq!(users.len(), 3, "{skipped:?}");
        let (out, found) = remove(&out, "bob@example.test", None);
        assert!(found);
        assert!(!out.contains("bob@"));
        assert!(!remove(&out, "bob@example.test", None).1);
        // A bare name in the file is the same user as its address.
        let (out, found) = remove("bob:x\ncarol:y\n", "bob@example.test", Some("example.test"));
        assert!(found);
        assert_eq!(out, "carol:y\n");
    }
}
