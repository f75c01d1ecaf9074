//! The listing summary parser against any message: no panic, every field bounded, and
//! capturing the header block chunk by chunk as the listener stores a message (CRLF line
//! ends, after the DATA decoder) gives the same summary as cutting it out of the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use standby::smtp::data::DataDecoder;
use standby::summary::{HeadCapture, head, parse};

fuzz_target!(|raw: &[u8]| {
    let s = parse(raw);
    for field in [&s.message_id, &s.from, &s.subject, &s.date]
        .into_iter()
        .flatten()
    {
        assert!(field.len() <= 998, "field of {} bytes", field.len());
    }
    // What the listener stores: the decoder's output (only CRLF line ends).
    let mut stored = Vec::new();
    DataDecoder::new().feed(raw, &mut stored);
    let mut capture = HeadCapture::default();
    for chunk in stored.chunks(7) {
        capture.feed(chunk);
    }
    assert_eq!(capture.summary(), parse(head(&stored)));
});
