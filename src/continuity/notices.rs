//! Users' notices: at an event's start, each user with held mail listed in
//! `[continuity] alternates` hears at their alternate address (and by SMS when a phone
//! is listed) that their mail is safe and where to read it: the emergency inbox's URL
//! and a one-time login link (signed, single use, 24 hours); at its end, that mail is
//! back at the primary. Each notice is sent once per event and user: a mark
//! (`notice#<event>#<kind>#<address>`) is set before sending and cleared again when the
//! sending fails, so a retry sends what is missing and nothing twice.
//!
//! The text comes from templates the administrator can replace: `start.txt`, `end.txt`
//! and `sms.txt` in `[continuity] templates`, each `Subject: ...`, a blank line, the
//! body (`sms.txt`: the text only), with `{address}`, `{inbox_url}`, `{login_link}`,
//! `{started_at}` and `{expires_at}` filled in.

use std::path::Path;

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "address",
    "inbox_url",
    "login_link",
    "started_at",
    "expires_at",
];

const START: &str = "Subject: Your mail is safe: use the emergency inbox for now

Hello,

your organisation's mail server is unreachable at the moment (since {started_at}).
Mail sent to {address} is not lost: the standby mail server is holding it and will
deliver it to your usual mailbox as soon as the server is back.

Until then you can read and send mail in the emergency inbox:

  {inbox_url}

This link logs you in once, without your password (it works until {expires_at}):

  {login_link}

You do not need to do anything else. We will write again when mail is back.
";

const END: &str = "Subject: Your mail is back

Hello,

your organisation's mail server is working again, and the mail held for {address}
during the outage has been delivered to your usual mailbox. Please use your usual
mail program again; mail you sent from the emergency inbox is in your mailbox too.
";

const SMS: &str = "Mail for {address} is down; nothing is lost. Emergency inbox: {login_link}";

/// One notice's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub subject: String,
    pub body: String,
}

/// The notices' templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub start: Template,
    pub end: Template,
    pub sms: String,
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            start: mail(START).expect("built-in template"),
            end: mail(END).expect("built-in template"),
            sms: SMS.trim().to_string(),
        }
    }
}

impl Templates {
    /// The templates in `dir` (built-in text for a file that is missing).
    ///
    /// # Errors
    /// `file:line: what is wrong` for a template without a subject or with an unknown
    /// placeholder.
    pub fn load(dir: Option<&Path>) -> Result<Templates, String> {
        let mut t = Templates::default();
        let Some(dir) = dir else {
            return Ok(t);
        };
        if !dir.is_dir() {
            return Err(format!("{}: not a directory", dir.display()));
        }
        for (name, is_mail) in [("start.txt", true), ("end.txt", true), ("sms.txt", false)] {
            let path = dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            check(&text).map_err(|(line, e)| format!("{}:{line}: {e}", path.display()))?;
            match (name, is_mail) {
                ("start.txt", _) => {
                    t.start = mail(&text).map_err(|e| format!("{}:1: {e}", path.display()))?
                }
                ("end.txt", _) => {
                    t.end = mail(&text).map_err(|e| format!("{}:1: {e}", path.display()))?
                }
                _ => t.sms = text.trim().to_string(),
            }
        }
        Ok(t)
    }
}

fn mail(text: &str) -> Result<Template, String> {
    let text = text.replace("\r\n", "\n");
    let (first, body) = text.split_once('\n').unwrap_or((&text, ""));
    let subject = first
        .strip_prefix("Subject:")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or("the first line must be `Subject: ...`")?;
    Ok(Template {
        subject: subject.to_string(),
        body: body.trim_start_matches('\n').to_string(),
    })
}

/// Every `{name}` must be a known placeholder.
fn check(text: &str) -> Result<(), (usize, String)> {
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                break;
            };
            let name = &after[..close];
            if !PLACEHOLDERS.contains(&name) {
                return Err((
                    n + 1,
                    format!(
                        "unknown placeholder `{{{name}}}` (known: {})",
                        PLACEHOLDERS.join(", ")
                    ),
                ));
            }
            rest = &after[close + 1..];
        }
    }
    Ok(())
}

/// `text` with each `{name}` replaced by its value, in one pass: a value that contains
/// a placeholder's name is not expanded again.
pub fn render(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let known = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v, close))
        });
        match known {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_load_check_and_render() {
        let t = Templates::default();
        assert!(t.start.body.contains("{login_link}"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("end.txt"),
            "Subject: Back ({address})\n\nAll good, {address}.\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(t.end.subject, "Back ({address})");
        assert_eq!(t.start, Templates::default().start);
        assert_eq!(
            render(&t.end.body, &[("address", "a@example.test")]),
            "All good, a@example.test.\n"
        );
        assert_eq!(
            render("{a} {b} {c} {", &[("a", "{b}"), ("b", "x")]),
            "{b} x {c} {"
        );
        std::fs::write(
            dir.path().join("start.txt"),
            "Subject: x\n\nhello\nsee {inbox_link}\n",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.ends_with("start.txt:4: unknown placeholder `{inbox_link}` (known: address, inbox_url, login_link, started_at, expires_at)"), "{e}");
        std::fs::write(dir.path().join("start.txt"), "Hello\n").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.contains("start.txt:1: the first line must be"), "{e}");
    }
}
