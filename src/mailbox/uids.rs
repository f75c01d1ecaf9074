//! A user's mailbox as IMAP and POP3 clients see it: the inbox of [`View`] numbered with
//! the UIDs kept by the [`Mailboxes`] port, with the user's flags.
//!
//! A whole look at the mailbox ([`snapshot`]) lists the whole inbox from the index
//! (oldest first), gives the messages that entered it since the last look their UIDs (in
//! that order: a message a late recipient merge adds later gets a later UID), and leaves
//! out what the user removed (hidden) and what left the view (delivered mail past
//! `history_days`, purged messages). A selected IMAP session looks between whole looks
//! with [`recent`], which lists only the last minutes' mail. Nothing here changes a
//! message itself.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::mailbox::{Folder, View, is_virus};
use crate::model::Record;
use crate::model::mailbox::{FlagChange, Flags, MailboxState};
use crate::ports::{Index, ListQuery, Mailboxes, Storage};

/// Messages missing from a listing read again at once (see [`snapshot`]).
const REREAD_AT_ONCE: usize = 16;

/// One message of a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct Message {
    pub uid: u32,
    pub flags: Flags,
    /// Shared: a session hands messages around (a FETCH of 10,000) without copying them.
    pub rec: std::sync::Arc<Record>,
}

/// The mailbox at one moment: UIDVALIDITY, the next UID and the messages by UID.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub validity: u32,
    pub next_uid: u32,
    pub messages: Vec<Message>,
}

/// Every message of `view`'s inbox received since `since` (all of it without), oldest
/// first: one listing, not pages (each page of a SQLite listing gathers the user's
/// recipient rows again: ten pages of a thousand took twice as long as one listing of
/// ten thousand, `cargo bench --bench imap`).
async fn inbox(
    view: &View<'_>,
    index: &dyn Index,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Record>, StoreError> {
    let q = ListQuery {
        mailbox: Some(view.filter()),
        since,
        ..ListQuery::default()
    };
    Ok(index
        .list(&q)
        .await?
        .into_iter()
        .filter(|r| !is_virus(r) && Folder::of(r) == Folder::Inbox)
        .collect())
}

fn mailboxes_of(storage: &Storage) -> Result<&dyn Mailboxes, StoreError> {
    storage
        .mailboxes
        .as_deref()
        .ok_or_else(|| StoreError::Backend {
            backend: "mailboxes",
            detail: "this store keeps no IMAP or POP3 mailboxes".into(),
            transient: false,
            source: None,
        })
}

/// `state` with UIDs given to the messages of `records` that need one.
async fn give_uids(
    mailboxes: &dyn Mailboxes,
    user: &str,
    state: MailboxState,
    records: &[Record],
) -> Result<MailboxState, StoreError> {
    let current = state.current();
    let new: Vec<_> = records
        .iter()
        .map(|r| r.id)
        .filter(|id| MailboxState::needs_uid(current.get(id).copied()))
        .collect();
    if new.is_empty() {
        return Ok(state);
    }
    mailboxes.assign(user, &new).await
}

/// The messages of `records` `state` shows, by UID.
fn numbered(state: &MailboxState, records: Vec<Record>) -> Vec<Message> {
    let mut by_id: HashMap<_, Record> = records.into_iter().map(|r| (r.id, r)).collect();
    state
        .entries
        .iter()
        .filter(|e| !e.flags.has(Flags::HIDDEN))
        .filter_map(|e| {
            by_id.remove(&e.id).map(|rec| Message {
                uid: e.uid,
                flags: e.flags,
                rec: std::sync::Arc::new(rec),
            })
        })
        .collect()
}

/// `view`'s mailbox in `storage` now, new messages given their UIDs (see the module
/// docs); an error where the store keeps no mailboxes.
pub async fn snapshot(view: &View<'_>, storage: &Storage) -> Result<Snapshot, StoreError> {
    let mailboxes = mailboxes_of(storage)?;
    let user = &view.account.address;
    let records = inbox(view, storage.index.as_ref(), None).await?;
    let mut state = mailboxes.load(user).await?;
    let listed: std::collections::HashSet<_> = records.iter().map(|r| r.id).collect();
    // What left the view since the last look is marked gone, so that it gets a new UID
    // should it come back (`standby retry` of a failed message, an alias given back).
    // Each is read again first: a listing from an eventually consistent index (AWS) can
    // miss a message that is still there.
    let mut records = records;
    let missing: Vec<(u32, crate::model::MessageId)> = state
        .entries
        .iter()
        .filter(|e| {
            !e.flags.has(Flags::HIDDEN) && !e.flags.has(Flags::GONE) && !listed.contains(&e.id)
        })
        .map(|e| (e.uid, e.id))
        .collect();
    // A few reads at once, and each group's marks written when it is read: many leaving
    // at once (an alias taken away) costs seconds, not minutes, what was done stays done.
    let mut gone = Vec::new();
    for group in missing.chunks(REREAD_AT_ONCE) {
        let mut reads = tokio::task::JoinSet::new();
        for (i, &(uid, id)) in group.iter().enumerate() {
            let index = storage.index.clone();
            reads.spawn(async move { (i, uid, index.get(id).await) });
        }
        let mut got = Vec::with_capacity(group.len());
        while let Some(read) = reads.join_next().await {
            got.push(read.map_err(|e| StoreError::Backend {
                backend: "index",
                detail: format!("rereading a mailbox's message: {e}"),
                transient: true,
                source: None,
            })?);
        }
        got.sort_by_key(|(i, _, _)| *i);
        for (_, uid, read) in got {
            match read? {
                // Still there (the listing missed it, or it came back meanwhile): shown.
                Some(r) if view.shows(&r) && Folder::of(&r) == Folder::Inbox => records.push(r),
                _ => gone.push(FlagChange {
                    uid,
                    set: Flags::GONE,
                    clear: Flags::default(),
                }),
            }
        }
        // Marked at once: a mark written later could be older than a return meanwhile.
        if !gone.is_empty() {
            mailboxes.change_flags(user, &gone).await?;
            state.change(&gone);
            gone.clear();
        }
    }
    let state = give_uids(mailboxes, user, state, &records).await?;
    Ok(Snapshot {
        validity: state.validity,
        next_uid: state.next_uid,
        messages: numbered(&state, records),
    })
}

/// What a selected session needs between two whole looks ([`snapshot`]): the flags of
/// every message the mailbox still shows, and the messages received since `since`, new
/// ones given their UIDs. A whole look lists every message (on AWS, a strongly consistent
/// read of each); this lists the last minutes. What enters the view with an older
/// received time (a late recipient merge, `standby retry`) or leaves it waits for the
/// next whole look.
#[derive(Debug, Clone)]
pub struct Recent {
    pub next_uid: u32,
    /// Every message not hidden nor gone, by UID, with its flags.
    pub shown: HashMap<u32, Flags>,
    /// The messages received since `since`, by UID.
    pub messages: Vec<Message>,
}

/// `view`'s mailbox as [`Recent`] describes; an error where the store keeps no mailboxes.
pub async fn recent(
    view: &View<'_>,
    storage: &Storage,
    since: DateTime<Utc>,
) -> Result<Recent, StoreError> {
    let mailboxes = mailboxes_of(storage)?;
    let user = &view.account.address;
    let records = inbox(view, storage.index.as_ref(), Some(since)).await?;
    let state = mailboxes.load(user).await?;
    let state = give_uids(mailboxes, user, state, &records).await?;
    let shown = state
        .entries
        .iter()
        .filter(|e| !e.flags.has(Flags::HIDDEN) && !e.flags.has(Flags::GONE))
        .map(|e| (e.uid, e.flags))
        .collect();
    Ok(Recent {
        next_uid: state.next_uid,
        shown,
        messages: numbered(&state, records),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageId, Status};
    use crate::users::Account;
    use chrono::{DateTime, Duration};

    fn alice() -> Account {
        Account {
            address: "alice@example.test".into(),
            aliases: vec![],
            excluded: vec![],
            stamp: [0; 32],
        }
    }

    /// `account`'s view a day after the test messages arrived, 30 days kept.
    fn view_of(account: &Account) -> View<'_> {
        View {
            account,
            history_days: 30,
            now: DateTime::from_timestamp(1_700_000_000, 0).unwrap() + Duration::days(1),
        }
    }

    fn rec(n: i64, rcpt: &str) -> Record {
        let at = DateTime::from_timestamp(1_700_000_000 + n * 60, 0).unwrap();
        Record::held(
            MessageId::new(at),
            "sender@example.org".into(),
            vec![rcpt.into()],
            at,
            (10, String::new()),
            crate::model::Summary::default(),
        )
    }

    /// UIDs follow arrival in the view, not the received time; hidden and departed
    /// messages leave the snapshot and their UIDs are never given again.
    #[tokio::test]
    async fn uids_are_given_once_in_the_order_messages_enter_the_view() {
        let storage = Storage::memory();
        let (index, boxes) = (
            storage.index.clone(),
            storage.mailboxes.clone().expect("kept in memory"),
        );
        let alice = alice();
        let view = view_of(&alice);
        let (a, b) = (rec(2, "alice@example.test"), rec(3, "alice@example.test"));
        for r in [&a, &b, &rec(4, "bob@example.test")] {
            index.insert(r).await.unwrap();
        }
        let s = snapshot(&view, &storage).await.unwrap();
        assert_eq!(
            s.messages
                .iter()
                .map(|m| (m.uid, m.rec.id))
                .collect::<Vec<_>>(),
            [(1, a.id), (2, b.id)]
        );
        // An older message enters the view later (a late merge): the next UID, not one
        // before the others.
        let late = rec(1, "alice@example.test");
        index.insert(&late).await.unwrap();
        let s = snapshot(&view, &storage).await.unwrap();
        assert_eq!(
            s.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(s.messages[2].rec.id, late.id);
        assert_eq!(s.next_uid, 4);
        // Hidden by the user, and failed (left the view): gone, UIDs not reused.
        boxes
            .change_flags(
                &alice.address,
                &[crate::model::mailbox::FlagChange {
                    uid: 1,
                    set: Flags::HIDDEN,
                    clear: Flags::default(),
                }],
            )
            .await
            .unwrap();
        boxes
            .change_flags(
                &alice.address,
                &[crate::model::mailbox::FlagChange {
                    uid: 2,
                    set: Flags::SEEN,
                    clear: Flags::default(),
                }],
            )
            .await
            .unwrap();
        let mut failed = index.get(b.id).await.unwrap().unwrap();
        failed.status = Status::Failed;
        index.update(&failed, view.now).await.unwrap();
        let again = snapshot(&view, &storage).await.unwrap();
        assert_eq!(
            again.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(again.validity, s.validity);
        assert_eq!(again.next_uid, 4);
        // Retried, back in the view: a new UID (clients saw UID 2 go), the user's \Seen
        // kept; the hidden one stays hidden; the next look changes nothing.
        let mut back = index.get(b.id).await.unwrap().unwrap();
        back.status = Status::Held;
        index.update(&back, view.now).await.unwrap();
        for _ in 0..2 {
            let s = snapshot(&view, &storage).await.unwrap();
            assert_eq!(
                s.messages
                    .iter()
                    .map(|m| (m.uid, m.rec.id, m.flags))
                    .collect::<Vec<_>>(),
                [(3, late.id, Flags::default()), (4, b.id, Flags::SEEN)]
            );
            assert_eq!(s.next_uid, 5);
        }
    }

    /// A listing that has not caught up (DynamoDB's secondary indexes) misses a message
    /// still in the view: the reread finds it, and it stays in the snapshot with its UID
    /// (never reported gone, then back under the same UID).
    #[tokio::test]
    async fn a_message_a_listing_misses_stays_with_its_uid() {
        let index = crate::backend::MemIndex::default();
        let storage = Storage {
            index: std::sync::Arc::new(index.clone()),
            ..Storage::memory()
        };
        let alice = alice();
        let view = view_of(&alice);
        let (a, b) = (rec(2, "alice@example.test"), rec(3, "alice@example.test"));
        for r in [&a, &b] {
            index.insert(r).await.unwrap();
        }
        let uids = |s: &Snapshot| {
            s.messages
                .iter()
                .map(|m| (m.uid, m.rec.id))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            uids(&snapshot(&view, &storage).await.unwrap()),
            [(1, a.id), (2, b.id)]
        );
        index.set_unlisted(a.id, true);
        assert_eq!(
            uids(&snapshot(&view, &storage).await.unwrap()),
            [(1, a.id), (2, b.id)]
        );
        index.set_unlisted(a.id, false);
        let s = snapshot(&view, &storage).await.unwrap();
        assert_eq!((uids(&s), s.next_uid), (vec![(1, a.id), (2, b.id)], 3));
    }
}
