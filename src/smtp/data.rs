//! Decoding the DATA stream: find the end of the message, undo dot-stuffing, and make
//! SMTP smuggling impossible.
//!
//! Only `<CR><LF>.<CR><LF>` ends a message, and only when the line before it also ended
//! in a real `<CR><LF>` (RFC 5321 §4.1.1.4). A bare `<LF>` or bare `<CR>` is *normalised*
//! to `<CR><LF>`, as Postfix 3.9 does with `smtpd_forbid_bare_newline = normalize`: the
//! stored message then has only CRLF line ends, and a line that is just `.` but was
//! framed by a bare line end (`<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CR><LF>`, ...) stays content
//! and is dot-stuffed again when relayed. Whatever the sender tried, the primary sees one
//! message with the same lines.

pub use crate::model::lines::{WireEncoder, crlf_lines};

/// Where the decoder is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line; `real` says whether the previous line ended in CRLF.
    LineStart { real: bool },
    /// Saw `.` at the start of a line.
    Dot { real: bool },
    /// Saw `.` `<CR>` at the start of a line.
    DotCr { real: bool },
    /// Inside a line.
    Mid,
    /// Saw `<CR>` inside a line (or as the whole line so far).
    Cr,
}

/// Incremental DATA decoder; feed it what the socket gives.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    bare: u64,
}

impl Default for DataDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDecoder {
    /// A decoder positioned right after the `354` reply (at the start of a line).
    pub fn new() -> Self {
        DataDecoder {
            state: State::LineStart { real: true },
            bare: 0,
        }
    }

    /// How many bare `<CR>`/`<LF>` line ends were normalised so far.
    pub fn bare_line_ends(&self) -> u64 {
        self.bare
    }

    /// Decode `input`, appending message bytes to `out`. Returns `Some(n)` when the end of
    /// data was found after `n` bytes of `input`; the bytes after it are the next command.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            // Fast path: copy a run of ordinary bytes inside a line.
            if self.state == State::Mid {
                let run = input[i..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(input.len() - i);
                out.extend_from_slice(&input[i..i + run]);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let b = input[i];
            i += 1;
            if self.step(b, out) {
                return Some(i);
            }
        }
        None
    }

    /// One byte; true at the end of data.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        use State::*;
        match (self.state, b) {
            (LineStart { real }, b'.') => self.state = Dot { real },
            (LineStart { .. } | Mid, b'\r') => self.state = Cr,
            (LineStart { .. } | Mid, b'\n') => self.bare_end(out),
            (LineStart { .. } | Mid, _) => {
                out.push(b);
                self.state = Mid;
            }
            (Dot { real }, b'\r') => self.state = DotCr { real },
            (Dot { .. }, b'\n') => {
                // `.` framed by a bare LF: content, not the end.
                out.push(b'.');
                self.bare_end(out);
            }
            (Dot { .. }, _) => {
                // Dot-stuffed line: drop the leading dot, keep the byte.
                self.state = Mid;
                return self.step(b, out);
            }
            (DotCr { real: true }, b'\n') => return true,
            (DotCr { real: false }, b'\n') => {
                out.extend_from_slice(b".\r\n");
                self.state = LineStart { real: true };
            }
            (DotCr { .. }, _) => {
                // `.<CR>` then something else: the CR was a bare line end.
                out.push(b'.');
                self.bare_end(out);
                return self.step(b, out);
            }
            (Cr, b'\n') => {
                out.extend_from_slice(b"\r\n");
                self.state = LineStart { real: true };
            }
            (Cr, _) => {
                self.bare_end(out);
                return self.step(b, out);
            }
        }
        false
    }

    fn bare_end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.bare += 1;
        self.state = State::LineStart { real: false };
    }
}

/// Counts the `Received:` fields of a decoded message's header (CRLF line ends), fed in
/// chunks; stops looking at the first empty line. A count past Postfix's
/// `hopcount_limit` (50) means the message is looping between servers.
#[derive(Debug, Clone, Default)]
pub struct HopCounter {
    /// The start of the current line (up to `received:`'s length).
    start: Vec<u8>,
    /// Bytes of the current line seen so far.
    len: usize,
    count: usize,
    done: bool,
}

const RECEIVED: &[u8] = b"received:";

impl HopCounter {
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.done {
                return;
            }
            if b == b'\n' {
                // A line of just CR (or nothing) ends the header.
                if self.len <= 1 {
                    self.done = true;
                } else if self.start.eq_ignore_ascii_case(RECEIVED) {
                    self.count += 1;
                }
                self.start.clear();
                self.len = 0;
                continue;
            }
            if self.start.len() < RECEIVED.len() && self.len == self.start.len() {
                self.start.push(b);
            }
            self.len += 1;
        }
    }

    /// `Received:` fields so far.
    pub fn count(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lines::tests::normalised;

    /// Decode `input` in chunks of `step`; return (message, consumed, rest-of-input).
    fn decode(input: &[u8], step: usize) -> (Vec<u8>, Option<usize>) {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            if let Some(n) = d.feed(&input[pos..end], &mut out) {
                return (out, Some(pos + n));
            }
            pos = end;
        }
        (out, None)
    }

    #[test]
    fn plain_message_and_dot_unstuffing() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        for step in [1, 2, 3, 7, 100] {
            let (msg, end) = decode(input, step);
            assert_eq!(msg, b"Subject: x\r\n\r\n.leading dot\r\n", "step {step}");
            assert_eq!(end, Some(input.len() - 6));
        }
    }

    #[test]
    fn empty_message() {
        assert_eq!(decode(b".\r\n", 1), (Vec::new(), Some(3)));
    }

    #[test]
    fn smuggling_sequences_never_end_the_message() {
        // Each would end DATA at a lenient receiver and start a second message.
        let tricks: [&[u8]; 6] = [
            b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\n", b"\r\n.\r",
        ];
        for trick in tricks {
            let mut input = b"a".to_vec();
            input.extend_from_slice(trick);
            input.extend_from_slice(
                b"MAIL FROM:<x@evil>\r\nRCPT TO:<y@victim>\r\nDATA\r\nbad\r\n.\r\n",
            );
            let (msg, end) = decode(&input, 1);
            assert_eq!(end, Some(input.len()), "{trick:?}");
            // Only CRLF line ends remain, and every "." line is content that a relay stuffs.
            assert!(!msg.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n'));
            assert!(!msg.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
            assert!(msg.ends_with(b"bad\r\n"));
            let mut out = Vec::new();
            let stuffed = WireEncoder::new().encode(&msg, &mut out);
            assert!(!stuffed.windows(5).any(|w| w == b"\r\n.\r\n"), "{trick:?}");
        }
    }

    /// Stored bytes nobody decoded (an SES object) go out with the same tricks in them:
    /// each arrives as content, and the data ends only at our terminator.
    #[test]
    fn smuggling_sequences_in_stored_bytes_never_end_the_data() {
        let tricks: [&[u8]; 8] = [
            b"\n.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\n",
            b"\r\n.\r",
            b"\r\n.\r\n",
            b"\n.",
        ];
        for trick in tricks {
            let mut stored = b"a".to_vec();
            stored.extend_from_slice(trick);
            stored.extend_from_slice(b"MAIL FROM:<x@evil>\r\nRCPT TO:<y@victim>\r\nDATA\r\nbad\n");
            for step in [1, 2, 3, 64] {
                let wire = encode_in(&stored, step);
                let (msg, end) = decode(&wire, 1);
                assert_eq!(end, Some(wire.len()), "{trick:?} in reads of {step}");
                assert_eq!(msg, normalised(&stored), "{trick:?} in reads of {step}");
            }
        }
    }

    /// `stored` through one encoder in chunks of `step`, then the end of data.
    fn encode_in(stored: &[u8], step: usize) -> Vec<u8> {
        let (mut enc, mut wire, mut out) = (WireEncoder::new(), Vec::new(), Vec::new());
        for c in stored.chunks(step) {
            wire.extend_from_slice(enc.encode(c, &mut out));
        }
        wire.extend_from_slice(enc.end());
        wire
    }

    /// What RFC 5321 §4.5.2 puts on the wire for `stored`, a line at a time: its
    /// normalised lines, each starting with `.` given another, then `.<CR><LF>`.
    fn wire_by_lines(stored: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        for line in normalised(stored).split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        wire.extend_from_slice(b".\r\n");
        wire
    }

    #[test]
    fn hops_are_counted_in_the_header_only() {
        let mut msg = String::new();
        for i in 0..3 {
            msg.push_str(&format!("Received: from h{i}\r\n\tby x\r\n"));
        }
        msg.push_str("RECEIVED:y\r\nX-Received: no\r\nSubject: s\r\n\r\nReceived: body\r\n");
        for step in [1, 2, 5, 100] {
            let mut h = HopCounter::default();
            for c in msg.as_bytes().chunks(step) {
                h.feed(c);
            }
            assert_eq!(h.count(), 4, "step {step}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_encoder_matches_the_line_definition_in_any_chunks(
            stored in proptest::collection::vec(proptest::sample::select(b".\r\nab".to_vec()), 0..200),
            step in 1usize..20,
        ) {
            let wire = encode_in(&stored, step);
            proptest::prop_assert_eq!(&wire, &wire_by_lines(&stored));
            // And a receiver decodes exactly the normalised message, ending exactly there.
            let (msg, end) = decode(&wire, 7);
            proptest::prop_assert_eq!(end, Some(wire.len()));
            proptest::prop_assert_eq!(msg, normalised(&stored));
        }
    }

    #[test]
    fn encoding_round_trips() {
        let msg = b".a\r\nb\r\n.\r\n..c\r\n";
        for step in [1, 2, 3, 100] {
            let wire = encode_in(msg, step);
            let (back, end) = decode(&wire, 2);
            assert_eq!(back, msg);
            assert_eq!(end, Some(wire.len()));
        }
        // An empty message, and ones whose last line end is missing or bare.
        for (stored, wire) in [
            (&b""[..], &b".\r\n"[..]),
            (b"a", b"a\r\n.\r\n"),
            (b"a\n", b"a\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            (b"a\n.", b"a\r\n..\r\n.\r\n"),
        ] {
            assert_eq!(encode_in(stored, 1), wire, "{stored:?}");
            assert_eq!(encode_in(stored, 100), wire, "{stored:?}");
        }
    }
}
