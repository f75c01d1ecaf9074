//! The listing summary parser against any message: no panic, every field bounded, and
//! capturing the header block chunk by chunk gives the same summary as cutting it out of
//! the whole message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use standby::summary::{HeadCapture, head, parse};

fuzz_target!(|raw: &[u8]| {
    let s = parse(raw);
    for field in [&s.message_id, &s.from, &s.subject, &s.date]
        .into_iter()
        .flatten()
    {
        assert!(field.len() <= 998, "field of {} bytes", field.len());
    }
    let mut capture = HeadCapture::default();
    for chunk in raw.chunks(7) {
        capture.feed(chunk);
    }
    assert_eq!(capture.summary(), parse(head(raw)));
});
