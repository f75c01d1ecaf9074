//! The DATA decoder against any bytes a client can send.
//!
//! Whatever the input and however the socket splits it: the decoded message has only
//! CRLF line ends; the end of data is found only after `<CR><LF>.<CR><LF>` (or `.<CR><LF>`
//! as the first line); and what we relay (CRLF line ends, dot-stuffed, then `.<CR><LF>`)
//! decodes at the primary to exactly the same message, ending exactly at our terminator:
//! no input makes the primary see two messages (SMTP smuggling) or a different one. The
//! same holds for stored bytes no decoder saw (an SES object), relayed as they are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use standby::smtp::data::{DataDecoder, WireEncoder};

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

    // Stored bytes nobody decoded (an SES object) relayed as they are, however they are
    // read: the primary sees one message, ending exactly at our terminator, with the
    // stored lines, each line end (CRLF, bare CR, bare LF) a CRLF as our listener stores.
    let raw_wire = encode(&[a, b]);
    assert_eq!(encode(&bytes), raw_wire, "encoded byte by byte");
    // Only CRLF line ends go out, so a receiver lenient about bare ones sees the same.
    for (i, &b) in raw_wire.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && raw_wire[i - 1] == b'\r', "bare LF sent at {i}"),
            b'\r' => assert!(raw_wire.get(i + 1) == Some(&b'\n'), "bare CR sent at {i}"),
            _ => {}
        }
    }
    let (relayed, relayed_end) = decode(&[&raw_wire]);
    assert_eq!(relayed_end, Some(raw_wire.len()), "stored bytes ended the data early");
    assert_eq!(relayed, normalised(raw), "relayed lines differ from the stored ones");

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

    // Relay it: encode, terminate, decode as the primary would.
    let wire = encode(&[&msg]);
    let (again, end_again) = decode(&[&wire]);
    assert_eq!(end_again, Some(wire.len()), "the primary saw the end early");
    assert_eq!(again, msg, "the primary decoded a different message");
});

/// `chunks` through one encoder, then the end of data.
fn encode(chunks: &[&[u8]]) -> Vec<u8> {
    let (mut enc, mut wire, mut out) = (WireEncoder::new(), Vec::new(), Vec::new());
    for c in chunks {
        wire.extend_from_slice(enc.encode(c, &mut out));
    }
    wire.extend_from_slice(enc.end());
    wire
}

/// `stored` with each `<CR><LF>`, bare `<CR>` and bare `<LF>` written `<CR><LF>`, and a
/// last line without one given one.
fn normalised(stored: &[u8]) -> Vec<u8> {
    let (mut n, mut i) = (Vec::new(), 0);
    while let Some(&b) = stored.get(i) {
        if b == b'\r' || b == b'\n' {
            n.extend_from_slice(b"\r\n");
            i += if b == b'\r' && stored.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
        } else {
            n.push(b);
            i += 1;
        }
    }
    if !n.is_empty() && !n.ends_with(b"\r\n") {
        n.extend_from_slice(b"\r\n");
    }
    n
}
