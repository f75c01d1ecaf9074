//! A message's lines as they go out: every line end a `<CR><LF>`, whatever the stored
//! bytes hold, and (on the wire) a leading dot doubled.
//!
//! Our listener stores CRLF lines (its DATA decoder normalises bare line ends); an SES
//! object holds what the sender wrote, bare `<LF>` and `<CR>` included. Whatever reads a
//! stored message as lines (the header filter, the ARC seal, a DSN's copy of the header,
//! the SMTP client, POP3) reads it through here, so each sees the lines the receiver
//! will, and no bare line end reaches a receiver that might read it differently (SMTP
//! smuggling).

/// The sending side: a message's bytes as they go on the wire, a chunk at a time (DATA
/// to a primary, RETR and TOP to a POP3 client). Every line end goes out as `<CR><LF>`: a
/// bare `<LF>` or `<CR>` is normalised as the listener's DATA decoder (`crate::smtp::data`) does on receipt, so a message our
/// listener took is sent as it is, and one stored as someone else wrote it (an SES object
/// holds what the sender sent) gets the same lines our listener would have stored. A line
/// starting with `.` gets another (RFC 5321 §4.5.2). The receiver then sees the end of
/// data only at [`end`](Self::end): a bare line end followed by `.` can neither end it
/// early at a lenient receiver (SMTP smuggling) nor leave a strict one waiting for an end
/// it never sees.
///
/// [`WireEncoder::lines`] does the line ends alone, for whatever reads stored bytes as
/// lines before they are sent (the header filter, the ARC seal, a DSN's copy of the
/// header): it must see the lines the receiver will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEncoder {
    /// Double a dot at a line's start (the wire), or not (lines only).
    stuff: bool,
    /// The last byte out ended a line.
    at_line_start: bool,
    /// The last byte out was a `<CR>` whose `<LF>` is still to come (from the next chunk,
    /// or added when the next byte is not one).
    after_cr: bool,
}

impl Default for WireEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl WireEncoder {
    /// For the wire: line ends and dot-stuffing.
    pub fn new() -> Self {
        WireEncoder {
            stuff: true,
            at_line_start: true,
            after_cr: false,
        }
    }

    /// Line ends only: the stored message as our listener would have stored it.
    pub fn lines() -> Self {
        WireEncoder {
            stuff: false,
            ..Self::new()
        }
    }

    /// `chunk` as it goes on the wire: `chunk` itself when it needs no change (most chunks
    /// of most messages, sent without a copy), else its encoding, written into `out`.
    pub fn encode<'a>(&mut self, chunk: &'a [u8], out: &'a mut Vec<u8>) -> &'a [u8] {
        if self.rewrites(chunk, out) {
            out
        } else {
            chunk
        }
    }

    /// Encode `chunk`: `false` when it goes out as it is (`out` untouched), `true` when
    /// its encoding is in `out` (cleared first).
    pub fn rewrites(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(&last) = chunk.last() else {
            return false;
        };
        if self.unchanged(chunk) {
            self.at_line_start = last == b'\n';
            self.after_cr = last == b'\r';
            return false;
        }
        out.clear();
        self.rewrite(chunk, out);
        true
    }

    /// What ends the data after the last chunk: the rest of a line end still open (a last
    /// line without one gets `<CR><LF>`), then `.<CR><LF>`.
    pub fn end(&self) -> &'static [u8] {
        if self.after_cr {
            b"\n.\r\n"
        } else if self.at_line_start {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        }
    }

    /// What completes the lines after the last chunk ([`WireEncoder::lines`]): the
    /// `<LF>` of a last `<CR>`, else nothing (a last line without a line end stays so).
    pub fn finish(&self) -> &'static [u8] {
        if self.after_cr { b"\n" } else { b"" }
    }

    /// Whether [`rewrite`](Self::rewrite) would give `chunk` back unchanged: every line
    /// end in it a `<CR><LF>` (one split from the last chunk included; a `<CR>` as the
    /// last byte waits for the next), and (stuffing) no line starting with `.`.
    fn unchanged(&self, chunk: &[u8]) -> bool {
        let Some(&first) = chunk.first() else {
            return true;
        };
        if if self.after_cr {
            first != b'\n'
        } else {
            self.stuff && self.at_line_start && first == b'.'
        } {
            return false;
        }
        memchr::memchr2_iter(b'\r', b'\n', chunk).all(|i| {
            let next = chunk.get(i + 1);
            if chunk[i] == b'\r' {
                next.is_none_or(|&b| b == b'\n')
            } else {
                let cr_before = match i {
                    0 => self.after_cr,
                    _ => chunk[i - 1] == b'\r',
                };
                cr_before && !(self.stuff && next == Some(&b'.'))
            }
        })
    }

    /// Encode `chunk` into `out`, a line end at a time (memchr finds it), not a byte at a
    /// time: the drain sends every byte of every message through here.
    fn rewrite(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while let Some(&first) = rest.first() {
            if self.after_cr {
                // The `<CR>` that ended the last piece: with this `<LF>` a line end, alone a
                // bare one, completed.
                self.after_cr = false;
                self.at_line_start = true;
                out.push(b'\n');
                if first == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            if self.stuff && self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            match memchr::memchr2(b'\r', b'\n', rest) {
                Some(i) => {
                    out.extend_from_slice(&rest[..i]);
                    out.push(b'\r');
                    if rest[i] == b'\r' {
                        self.after_cr = true;
                        self.at_line_start = false;
                    } else {
                        out.push(b'\n');
                        self.at_line_start = true;
                    }
                    rest = &rest[i + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    self.at_line_start = false;
                    rest = &[];
                }
            }
        }
    }
}

/// A whole stored message's bytes with CRLF line ends ([`WireEncoder::lines`]); borrowed
/// when they have them already.
pub fn crlf_lines(stored: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut lines = WireEncoder::lines();
    let mut out = Vec::new();
    let rewritten = lines.rewrites(stored, &mut out);
    let tail = lines.finish();
    if !rewritten {
        if tail.is_empty() {
            return std::borrow::Cow::Borrowed(stored);
        }
        out = stored.to_vec();
    }
    out.extend_from_slice(tail);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The message a receiver decodes from `stored` sent as it should be: each `<CR><LF>`,
    /// bare `<CR>` and bare `<LF>` one line end, written `<CR><LF>`, and a last line
    /// without one given one.
    pub(crate) fn normalised(stored: &[u8]) -> Vec<u8> {
        let (mut n, mut i) = (Vec::new(), 0);
        while i < stored.len() {
            match stored[i] {
                b'\r' if stored.get(i + 1) == Some(&b'\n') => {
                    n.extend_from_slice(b"\r\n");
                    i += 2;
                }
                b'\r' | b'\n' => {
                    n.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b => {
                    n.push(b);
                    i += 1;
                }
            }
        }
        if !n.is_empty() && !n.ends_with(b"\r\n") {
            n.extend_from_slice(b"\r\n");
        }
        n
    }

    proptest::proptest! {
        #[test]
        fn the_lines_are_the_listeners_in_any_chunks(
            stored in proptest::collection::vec(proptest::sample::select(b".\r\nab".to_vec()), 0..200),
            step in 1usize..20,
        ) {
            let (mut lines, mut got, mut out) = (WireEncoder::lines(), Vec::new(), Vec::new());
            for c in stored.chunks(step) {
                got.extend_from_slice(lines.encode(c, &mut out));
            }
            got.extend_from_slice(lines.finish());
            let mut want = normalised(&stored);
            if !stored.ends_with(b"\r") && !stored.ends_with(b"\n") {
                // A last line without a line end keeps it so.
                want.truncate(want.len().saturating_sub(2));
            }
            proptest::prop_assert_eq!(&got, &want);
            let whole = crlf_lines(&stored).into_owned();
            proptest::prop_assert_eq!(whole, want);
        }
    }

    proptest::proptest! {
        #[test]
        fn a_chunk_goes_out_uncopied_only_when_its_encoding_is_itself(
            before in proptest::collection::vec(proptest::sample::select(b".\r\nab".to_vec()), 0..8),
            chunk in proptest::collection::vec(proptest::sample::select(b".\r\nab".to_vec()), 1..60),
        ) {
            for mut enc in [WireEncoder::new(), WireEncoder::lines()] {
                enc.encode(&before, &mut Vec::new());
                let mut rewritten = Vec::new();
                enc.clone().rewrite(&chunk, &mut rewritten);
                proptest::prop_assert_eq!(enc.unchanged(&chunk), rewritten == chunk);
                // Either way the state after it is the same.
                let mut slow = enc.clone();
                slow.rewrite(&chunk, &mut Vec::new());
                enc.encode(&chunk, &mut Vec::new());
                proptest::prop_assert_eq!(enc, slow);
            }
        }
    }
}
