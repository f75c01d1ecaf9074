//! Output for people: what an attacker put in a message (subject, sender, a primary's
//! reply, a HELO name) can hold ESC, OSC or CSI sequences that retitle, recolour or
//! rewrite an operator's terminal. Every human-readable output goes through [`Human`],
//! which shows each control character other than the line ends we write ourselves as an
//! escape (`\e`, `\u{9b}`); fields that may hold a line end of their own are passed
//! through [`field`] as well. JSON output is left to `serde_json`, which escapes them.

use std::borrow::Cow;
use std::io::{self, Write};

use crate::model::address::{escape_controls, is_control};

/// A writer that escapes every control character except `\n`.
pub(crate) struct Human<W: Write> {
    inner: W,
    escape: bool,
}

impl<W: Write> Human<W> {
    pub(crate) fn new(inner: W) -> Self {
        Human {
            inner,
            escape: true,
        }
    }

    /// Escaping unless the output is JSON (which `serde_json` escapes itself).
    pub(crate) fn unless_json(json: bool, inner: W) -> Self {
        Human {
            inner,
            escape: !json,
        }
    }
}

impl<W: Write> Write for Human<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // `write!` hands over whole `str` pieces, so a character is never split.
        let text = String::from_utf8_lossy(buf);
        if !self.escape || !text.chars().any(|c| c != '\n' && is_control(c)) {
            self.inner.write_all(buf)?;
        } else {
            let escaped: String = text
                .split('\n')
                .map(|line| escape_controls(line).into_owned())
                .collect::<Vec<_>>()
                .join("\n");
            self.inner.write_all(escaped.as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One field of a line: every control character escaped, line ends included.
pub(crate) fn field(text: &str) -> Cow<'_, str> {
    escape_controls(text)
}

/// A stored (decoded) address as it is written on the wire (`"john doe"@example.test`),
/// or escaped as it is when it is no address.
pub(crate) fn address(decoded: &str) -> Cow<'_, str> {
    match crate::model::address::smtp_path(decoded) {
        Some(wire) => Cow::Owned(wire),
        None => field(decoded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_line_ends_kept() {
        let mut out = Human::new(Vec::new());
        let subject = "x\x1b]0;t\x07";
        write!(out, "subject {subject}\nnext\x1b[2J\u{9b}1m\n").unwrap();
        assert_eq!(
            String::from_utf8(out.inner).unwrap(),
            "subject x\\e]0;t\\u{7}\nnext\\e[2J\\u{9b}1m\n"
        );
        assert_eq!(
            address("john doe@example.test"),
            "\"john doe\"@example.test"
        );
        assert_eq!(field("a\nb"), "a\\nb");
    }
}
