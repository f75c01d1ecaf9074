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
    /// An entry given up for a new UID: the message left the view and came back, and
    /// clients that saw it leave must see it come back as a new message (set with
    /// [`Flags::HIDDEN`]; only where the store keeps the old entry).
    pub const RETIRED: Flags = Flags(32);
    /// The message left the user's view (delivered past the history kept, failed, an
    /// address no longer theirs) without the user removing it; should it come back it
    /// gets a new UID ([`MailboxState::add`]).
    pub const GONE: Flags = Flags(64);
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

/// No UID is left to give in a mailbox (4,294,967,294 were given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no UIDs left")]
pub struct NoUidsLeft;

impl MailboxState {
    /// A new, empty mailbox whose UIDVALIDITY is `validity` (at least 1).
    pub fn new(validity: u32) -> Self {
        MailboxState {
            validity: validity.max(1),
            next_uid: 1,
            entries: Vec::new(),
        }
    }

    /// Whether a message whose current flags are `flags` (`None`: no entry) needs a
    /// UID: it has none, or it left the view and came back ([`Flags::GONE`], not hidden
    /// by the user meanwhile).
    pub fn needs_uid(flags: Option<Flags>) -> bool {
        flags.is_none_or(|f| f.has(Flags::GONE) && !f.has(Flags::HIDDEN))
    }

    /// Each message's current flags (its entry's, retired ones aside), by id.
    pub fn current(&self) -> std::collections::HashMap<MessageId, Flags> {
        self.entries
            .iter()
            .filter(|e| !e.flags.has(Flags::RETIRED))
            .map(|e| (e.id, e.flags))
            .collect()
    }

    /// Give each of `ids` that [needs one](Self::needs_uid) the next UID, in the order
    /// given (an id given twice gets one); how many were given. A message that came
    /// back keeps the user's flags under its new UID; its old entry stays, retired
    /// (hidden), so the old UID is never shown again.
    pub fn add(&mut self, ids: &[MessageId]) -> Result<usize, NoUidsLeft> {
        let mut current = self.current();
        let mut given = 0;
        for id in ids {
            let was = current.get(id).copied();
            if !Self::needs_uid(was) {
                continue;
            }
            if self.next_uid == u32::MAX {
                return Err(NoUidsLeft);
            }
            let mut flags = Flags::default();
            if let Some(old) = was {
                for e in self.entries.iter_mut().filter(|e| e.id == *id) {
                    e.flags = e.flags.with(Flags::RETIRED).with(Flags::HIDDEN);
                }
                flags = Flags(old.0 & Flags::CLIENT.0);
            }
            self.entries.push(UidEntry {
                uid: self.next_uid,
                id: *id,
                flags,
            });
            current.insert(*id, flags);
            self.next_uid += 1;
            given += 1;
        }
        Ok(given)
    }

    /// Make `changes` (entries are in UID order; unknown UIDs are skipped); the
    /// positions of the entries whose flags changed. Hiding a message by a UID it has
    /// since left (it went and came back: the entry is retired) hides it under its
    /// current one: a stale session's EXPUNGE or DELE is not lost.
    pub fn change(&mut self, changes: &[FlagChange]) -> Vec<usize> {
        let mut changed = Vec::new();
        let mut set = |entries: &mut Vec<UidEntry>, i: usize, ch: &FlagChange| {
            let e = &mut entries[i];
            let flags = ch.apply(e.flags);
            if flags != e.flags {
                e.flags = flags;
                changed.push(i);
            }
        };
        for ch in changes {
            let Ok(i) = self.entries.binary_search_by_key(&ch.uid, |e| e.uid) else {
                continue;
            };
            set(&mut self.entries, i, ch);
            let (id, flags) = (self.entries[i].id, self.entries[i].flags);
            if flags.has(Flags::RETIRED) && ch.set.has(Flags::HIDDEN) {
                let hide = FlagChange {
                    uid: 0,
                    set: Flags::HIDDEN,
                    clear: Flags::default(),
                };
                if let Some(j) = self
                    .entries
                    .iter()
                    .position(|x| x.id == id && !x.flags.has(Flags::RETIRED))
                {
                    set(&mut self.entries, j, &hide);
                }
            }
        }
        changed
    }
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

    #[test]
    fn a_state_adds_each_id_once_and_changes_known_uids_only() {
        let ids: Vec<MessageId> = (0..3)
            .map(|i| {
                MessageId::new(chrono::DateTime::from_timestamp(1_700_000_000 + i, 0).unwrap())
            })
            .collect();
        let mut s = MailboxState::new(0);
        assert_eq!(s.validity, 1);
        assert_eq!(s.add(&[ids[1], ids[0], ids[1]]), Ok(2));
        assert_eq!(s.add(&[ids[0], ids[2]]), Ok(1));
        let uids: Vec<_> = s.entries.iter().map(|e| (e.uid, e.id)).collect();
        assert_eq!(uids, [(1, ids[1]), (2, ids[0]), (3, ids[2])]);
        let ch = |uid, set| FlagChange {
            uid,
            set,
            clear: Flags::default(),
        };
        assert_eq!(s.change(&[ch(2, Flags::SEEN), ch(9, Flags::SEEN)]), [1]);
        assert_eq!(s.change(&[ch(2, Flags::SEEN)]), Vec::<usize>::new());
        // Left the view and came back: a new UID, the user's flags kept; hidden by the
        // user while gone: stays hidden.
        s.change(&[ch(2, Flags::GONE), ch(3, Flags::GONE), ch(3, Flags::HIDDEN)]);
        assert_eq!(s.add(&[ids[0], ids[2], ids[1]]), Ok(1));
        let shown: Vec<_> = s
            .entries
            .iter()
            .filter(|e| !e.flags.has(Flags::HIDDEN))
            .map(|e| (e.uid, e.id, e.flags))
            .collect();
        assert_eq!(
            shown,
            [(1, ids[1], Flags::default()), (4, ids[0], Flags::SEEN)]
        );
        assert_eq!(s.add(&[ids[0]]), Ok(0));
        s.next_uid = u32::MAX;
        assert_eq!(
            s.add(&[MessageId::new(chrono::Utc::now())]),
            Err(NoUidsLeft)
        );
    }
}
