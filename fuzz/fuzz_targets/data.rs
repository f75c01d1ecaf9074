//! The DATA decoder against any bytes a client can send.
//!
//! Whatever the input and however the socket splits it: the decoded message has only
//! CRLF line ends; the end of data is found only after `<CR><LF>.<CR><LF>` (or `.<CR><LF>`
//! as the first line); and what we relay (dot-stuffed, then `.<CR><LF>`) decodes at the
//! primary to exactly the same message, ending exactly at our terminator: no input makes
//! the primary see two messages (SMTP smuggling) or a different one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use standby::smtp::data::{DataDecoder, dot_stuff};

fn decode(chunks: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
    let mut d = DataDecoder::new();
    let mut out = Vec::new();
    let mut offset = 0;
    for c in chunks {
        if let Some(n) = d.feed(c, &mut out) {
            return (out, Some(offset + n));
        }
        offset += c.len();
    }
    (out, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, raw)) = input.split_first() else {
        return;
    };
    let whole = decode(&[raw]);
    // The same bytes in two reads decode the same.
    let at = (split as usize * raw.len()) / 256;
    let (a, b) = raw.split_at(at);
    assert_eq!(decode(&[a, b]), whole, "split at {at}");
    // One byte at a time too.
    let bytes: Vec<&[u8]> = raw.chunks(1).collect();
    assert_eq!(decode(&bytes), whole, "byte by byte");

    let (msg, end) = whole;
    for (i, &b) in msg.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && msg[i - 1] == b'\r', "bare LF at {i}"),
            b'\r' => assert!(msg.get(i + 1) == Some(&b'\n'), "bare CR at {i}"),
            _ => {}
        }
    }
    let Some(n) = end else { return };
    let consumed = &raw[..n];
    assert!(
        consumed.ends_with(b"\r\n.\r\n") || consumed == b".\r\n",
        "end of data after {consumed:?}"
    );
    assert!(msg.is_empty() || msg.ends_with(b"\r\n"));

    // Relay it: dot-stuff, terminate, decode as the primary would.
    let mut wire = Vec::new();
    let mut at_line_start = true;
    dot_stuff(&msg, &mut at_line_start, &mut wire);
    wire.extend_from_slice(b".\r\n");
    let (again, end_again) = decode(&[&wire]);
    assert_eq!(end_again, Some(wire.len()), "the primary saw the end early");
    assert_eq!(again, msg, "the primary decoded a different message");
});
