//! What a user's mail clients keep of their mailbox on the standby: UIDs and flags.
//!
//! IMAP clients (and POP3 ones, by UIDL) remember messages by a number the server gives
//! each message once and never gives again, valid as long as the mailbox's UIDVALIDITY
//! stays the same (RFC 3501 §2.3.1.1). The held mail itself is shared by everybody it was
//! addressed to, so those numbers, and the flags a user sets, are kept per user beside
//! the index: a UID is given when a message first enters the user's view (on AWS a late
//! recipient merge can add one later), in the order the messages are found, strictly
//! increasing, never derived from the received time.

use serde::{Deserialize, Serialize};

use crate::model::MessageId;

/// A message's flags for one user, as bits: the five IMAP system flags clients set
/// (`\Recent` is the session's, never stored) and whether the user removed the message
/// from their view (IMAP EXPUNGE, POP3 DELE: hidden from them, never deleted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flags(pub u8);

impl Flags {
    pub const SEEN: Flags = Flags(1);
    pub const ANSWERED: Flags = Flags(2);
    pub const FLAGGED: Flags = Flags(4);
    pub const DELETED: Flags = Flags(8);
    pub const DRAFT: Flags = Flags(16);
    /// Removed from this user's view; the message itself is untouched.
    pub const HIDDEN: Flags = Flags(128);
    /// The flags a client may set (all but [`Flags::HIDDEN`]).
    pub const CLIENT: Flags = Flags(31);

    pub fn has(self, f: Flags) -> bool {
        self.0 & f.0 == f.0
    }

    #[must_use]
    pub fn with(self, f: Flags) -> Flags {
        Flags(self.0 | f.0)
    }

    #[must_use]
    pub fn without(self, f: Flags) -> Flags {
        Flags(self.0 & !f.0)
    }
}

/// A change to one message's flags: bits to set and bits to clear, applied to what is
/// stored at the time (two sessions changing different flags of one message both keep
/// theirs). [`Flags::HIDDEN`] is never cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagChange {
    pub uid: u32,
    pub set: Flags,
    pub clear: Flags,
}

impl FlagChange {
    /// `flags` with this change made.
    pub fn apply(&self, flags: Flags) -> Flags {
        Flags((flags.0 & !(self.clear.0 & Flags::CLIENT.0)) | self.set.0)
    }
}

/// One message of a user's mailbox: its UID, the message and the user's flags on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidEntry {
    pub uid: u32,
    pub id: MessageId,
    pub flags: Flags,
}

/// A user's mailbox state: its UIDVALIDITY, the next UID to give and every message given
/// one so far, by UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxState {
    pub validity: u32,
    pub next_uid: u32,
    pub entries: Vec<UidEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_combine_and_clear() {
        let f = Flags::default().with(Flags::SEEN).with(Flags::DELETED);
        assert!(f.has(Flags::SEEN) && f.has(Flags::DELETED) && !f.has(Flags::FLAGGED));
        assert_eq!(f.without(Flags::SEEN), Flags::DELETED);
        assert!(!Flags::CLIENT.has(Flags::HIDDEN));
    }
}
