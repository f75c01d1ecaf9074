//! The layout of a spool file (`<id>.spool`): the message's bytes, exactly as received,
//! then its envelope (the ingest's JSON, [`crate::ingest::Stamp`]), then a 32-byte
//! footer giving both lengths.
//!
//! # Why one file
//! Earlier releases kept the envelope in a sidecar (`<id>.env` beside `<id>.eml`): two
//! files to create, write, flush and rename per message, and two journal commits to wait
//! for (a file's blocks are allocated only when it is written back). One file carries
//! both now, written by one call, made durable by one `fdatasync(2)` and put in place by
//! one rename, so the envelope can never be durable without its message or the other way
//! round.
//!
//! # Why a trailer
//! A large message goes to disk as it arrives, before its envelope is complete (the
//! envelope holds the bytes' size and SHA-256, known only after the last one): the
//! envelope can only follow it.
//!
//! # Why a name of its own
//! An `.eml` from an earlier release is the raw message, whose last bytes its sender
//! chose; were the layouts told apart by content, a crafted message could end in what
//! reads as a footer. The name says which layout a file has, so the footer is looked for
//! only in files this layout wrote, and always at their very end.
//!
//! # The footer
//! `STBYSPL1`, the message's length and the envelope's (little-endian `u64`s), `STBYEND\n`.
//! A file is whole only if both marks are there and the lengths add up to its size with
//! the footer: a write cut short (a crash before it finished) never passes, as the footer
//! is written last. The footer says the write finished, not that it reached the disk:
//! after a power cut a file whose flush did not finish may keep its footer and lose
//! earlier blocks. Only the flush before the 250 makes the bytes durable, and the start
//! after a crash checks what it finds in `tmp/` against the SHA-256 in the row or the
//! envelope (`standby::publish::check_unpublished`).

use std::io;

/// The extension of a file in this layout.
pub const EXT: &str = "spool";
/// Size of the footer.
pub const FOOTER: usize = 32;
const START: &[u8; 8] = b"STBYSPL1";
const END: &[u8; 8] = b"STBYEND\n";

/// Where the parts of a whole spool file are: the message is its first `message` bytes,
/// the envelope the `envelope` bytes after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub message: u64,
    pub envelope: u64,
}

/// The footer of a file whose message has `message` bytes and whose envelope `envelope`.
pub fn footer(message: u64, envelope: u64) -> [u8; FOOTER] {
    let mut f = [0u8; FOOTER];
    f[..8].copy_from_slice(START);
    f[8..16].copy_from_slice(&message.to_le_bytes());
    f[16..24].copy_from_slice(&envelope.to_le_bytes());
    f[24..].copy_from_slice(END);
    f
}

fn not_whole() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "not a whole spool file (no valid footer: cut short or damaged)",
    )
}

/// The layout a file of `len` bytes ending in `tail` (its last [`FOOTER`] bytes) has.
///
/// # Errors
/// [`io::ErrorKind::InvalidData`]: the file is not whole.
pub fn parse(tail: &[u8], len: u64) -> io::Result<Layout> {
    if tail.len() != FOOTER || &tail[..8] != START || &tail[24..] != END {
        return Err(not_whole());
    }
    let word = |r: std::ops::Range<usize>| {
        u64::from_le_bytes(tail[r].try_into().expect("an 8-byte slice"))
    };
    let layout = Layout {
        message: word(8..16),
        envelope: word(16..24),
    };
    let total = layout
        .message
        .checked_add(layout.envelope)
        .and_then(|n| n.checked_add(FOOTER as u64));
    if total != Some(len) {
        return Err(not_whole());
    }
    Ok(layout)
}

/// The layout of an open spool file of `len` bytes, from its footer (one positioned
/// read: the file's offset does not move).
///
/// # Errors
/// Reading failed, or [`io::ErrorKind::InvalidData`]: the file is not whole.
pub fn read_layout(file: &std::fs::File, len: u64) -> io::Result<Layout> {
    use std::os::unix::fs::FileExt;
    let Some(at) = len.checked_sub(FOOTER as u64) else {
        return Err(not_whole());
    };
    let mut tail = [0u8; FOOTER];
    file.read_exact_at(&mut tail, at)?;
    parse(&tail, len)
}

/// A whole spool file's bytes split: `bytes` becomes the message; the envelope is
/// returned.
///
/// # Errors
/// [`io::ErrorKind::InvalidData`]: the bytes are not a whole spool file.
pub fn split(bytes: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let len = bytes.len();
    let Some(at) = len.checked_sub(FOOTER) else {
        return Err(not_whole());
    };
    let layout = parse(&bytes[at..], len as u64)?;
    let message = layout.message as usize;
    let envelope = bytes[message..at].to_vec();
    bytes.truncate(message);
    Ok(envelope)
}

/// The envelope of the spool file at `path` (two positioned reads; the message is not
/// read).
///
/// # Errors
/// Opening or reading failed, or [`io::ErrorKind::InvalidData`]: the file is not whole.
pub fn read_envelope(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let layout = read_layout(&file, file.metadata()?.len())?;
    let mut envelope = vec![0u8; usize::try_from(layout.envelope).map_err(|_| not_whole())?];
    file.read_exact_at(&mut envelope, layout.message)?;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(message: &[u8], envelope: &[u8]) -> Vec<u8> {
        let mut f = message.to_vec();
        f.extend_from_slice(envelope);
        f.extend_from_slice(&footer(message.len() as u64, envelope.len() as u64));
        f
    }

    #[test]
    fn a_whole_file_splits_into_its_message_and_envelope() {
        for (message, envelope) in [
            (&b"Subject: x\r\n\r\nbody\r\n"[..], &b"{\"id\":1}"[..]),
            (b"", b""),
            (b"", b"{}"),
            // A message that itself ends in a footer (its sender's choice) is still read
            // whole: the footer looked at is the file's last.
            (&file(b"inner", b"{}")[..], b"{\"outer\":true}"),
        ] {
            let mut bytes = file(message, envelope);
            assert_eq!(split(&mut bytes).unwrap(), envelope);
            assert_eq!(bytes, message);
        }
    }

    #[test]
    fn a_file_cut_short_or_damaged_anywhere_in_its_footer_is_not_whole() {
        let whole = file(b"Subject: x\r\n\r\nbody\r\n", b"{\"id\":1}");
        for cut in 0..whole.len() {
            let mut bytes = whole[..cut].to_vec();
            let err = split(&mut bytes).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "cut at {cut}");
        }
        for at in whole.len() - FOOTER..whole.len() {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x20;
            assert!(split(&mut bytes).is_err(), "byte {at} changed");
        }
        // Lengths that overflow when added are refused, not wrapped.
        let mut bytes = whole[..whole.len() - FOOTER].to_vec();
        bytes.extend_from_slice(&footer(u64::MAX, 40));
        assert!(split(&mut bytes).is_err());
    }

    #[test]
    fn the_envelope_and_layout_read_from_a_file_match_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.spool");
        std::fs::write(&path, file(b"Subject: y\r\n\r\nhi\r\n", b"{\"e\":2}")).unwrap();
        assert_eq!(read_envelope(&path).unwrap(), b"{\"e\":2}");
        let f = std::fs::File::open(&path).unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(
            read_layout(&f, len).unwrap(),
            Layout {
                message: 18,
                envelope: 7
            }
        );
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(
            read_envelope(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
