//! What one user sees: their emergency inbox, built from the held mail.
//!
//! A user's mailbox is every message with an envelope recipient they read
//! ([`Account::reads`]): held and paused mail, and for `[users] history_days` the
//! delivered copies still kept and the journal copies, so what arrived shortly before the
//! outage is there too. Failed mail went back to its sender and is not shown. Mail with a
//! spam verdict is listed under Junk, never in the inbox; mail with a virus verdict is
//! never shown at all.
//!
//! Anything outside the mailbox is answered exactly like a message that does not exist
//! ([`message`] returns `None` for both), so an id guessed or copied from someone else's
//! link tells nothing.

pub mod uids;

use chrono::{DateTime, Duration, Utc};

use crate::error::StoreError;
use crate::model::{MessageId, Record};
use crate::ports::{BlobStore, Cursor, Index, ListQuery, MailboxFilter};
use crate::users::Account;

/// Which list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Folder {
    #[default]
    Inbox,
    Junk,
    /// Copies of what the user sent during the outage (on their way to their mailbox).
    Sent,
}

impl Folder {
    /// The folder `r` is listed in.
    pub fn of(r: &Record) -> Folder {
        if r.intake == crate::model::Intake::Sent {
            Folder::Sent
        } else if is_junk(r) {
            Folder::Junk
        } else {
            Folder::Inbox
        }
    }
}

/// A search in the mailbox; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// Text in the sender (header `From` or envelope sender).
    pub from: Option<String>,
    /// Text in the subject.
    pub subject: Option<String>,
    /// Received at or after.
    pub since: Option<DateTime<Utc>>,
    /// Received before.
    pub until: Option<DateTime<Utc>>,
}

/// Whether a user sees only part of `rec`'s stored bytes: an Exchange journal report,
/// whose envelope part names every recipient (Bcc and expanded lists included), is shown
/// as the original message attached to it.
pub fn shows_original(rec: &Record) -> bool {
    rec.journal
        .as_ref()
        .is_some_and(|j| j.source == crate::model::RcptSource::Report)
}

/// The bytes a user may see of `rec` (for every way of reading it: the web pages and
/// downloads, and whatever else serves a mailbox): the stored message, or for a journal
/// report only its original ([`shows_original`]). `None` when the bytes are gone or the
/// report holds no original.
pub async fn content(blobs: &dyn BlobStore, rec: &Record) -> Result<Option<Vec<u8>>, StoreError> {
    let bytes = match blobs.read_all(&rec.blob_key()).await {
        Ok((b, _)) => b,
        Err(StoreError::MissingBlob(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !shows_original(rec) {
        return Ok(Some(bytes));
    }
    Ok(
        tokio::task::spawn_blocking(move || crate::journal::report_original(&bytes))
            .await
            .ok()
            .flatten(),
    )
}

/// Index reads a page may take (each one page of records plus one).
const MAX_BATCHES: usize = 20;

/// One page of a folder, newest first.
#[derive(Debug, Clone)]
pub struct Page {
    pub messages: Vec<Record>,
    /// Where the next (older) page starts, if there is one.
    pub next: Option<Cursor>,
}

/// A verdict that says spam (SES writes `FAIL`; the self-hosted filters the same).
fn flagged(verdict: Option<&str>) -> bool {
    verdict.is_some_and(|v| v.eq_ignore_ascii_case("FAIL"))
}

/// Whether `r` carries a virus verdict: never shown.
pub fn is_virus(r: &Record) -> bool {
    flagged(r.verdicts.as_ref().and_then(|v| v.virus.as_deref()))
}

/// Whether `r` carries a spam verdict: listed under Junk.
pub fn is_junk(r: &Record) -> bool {
    flagged(r.verdicts.as_ref().and_then(|v| v.spam.as_deref()))
}

/// One user's mailbox as of `now`.
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub account: &'a Account,
    /// `[users] history_days`.
    pub history_days: u32,
    pub now: DateTime<Utc>,
}

impl View<'_> {
    /// The store's side of the mailbox: addresses and what is kept.
    pub fn filter(&self) -> MailboxFilter {
        MailboxFilter {
            addresses: self.account.addresses(),
            excluded: self.account.excluded.clone(),
            kept_since: self.now - Duration::days(i64::from(self.history_days)),
        }
    }

    /// Whether `r` is in this mailbox (either folder).
    pub fn shows(&self, r: &Record) -> bool {
        self.filter().shows(r) && !is_virus(r)
    }

    /// Up to `size` messages of `folder` matching `search`, newest first, starting
    /// after `after` (the previous page's `next`). Reads the index a batch at a time
    /// until the page is full, dropping what the folder does not show.
    pub async fn page(
        &self,
        index: &dyn Index,
        folder: Folder,
        search: &Search,
        after: Option<Cursor>,
        size: usize,
    ) -> Result<Page, StoreError> {
        let batch = size + 1;
        let mut q = ListQuery {
            mailbox: Some(self.filter()),
            newest_first: true,
            sender: search.from.clone().filter(|s| !s.is_empty()),
            subject: search.subject.clone().filter(|s| !s.is_empty()),
            since: search.since,
            until: search.until,
            after,
            limit: Some(batch),
            ..ListQuery::default()
        };
        let mut messages = Vec::with_capacity(batch);
        // Mail the folder does not show (a flood of junk in the inbox) is read past a
        // bounded number of batches per page at most: then the page is shorter, and the
        // next one continues after the last record read.
        for _ in 0..MAX_BATCHES {
            let got = index.list(&q).await?;
            let short = got.len() < batch;
            q.after = got.last().map(Cursor::from);
            messages.extend(
                got.into_iter()
                    .filter(|r| !is_virus(r) && Folder::of(r) == folder),
            );
            if messages.len() > size {
                messages.truncate(size);
                let next = messages.last().map(Cursor::from);
                return Ok(Page { messages, next });
            }
            if short {
                return Ok(Page {
                    messages,
                    next: None,
                });
            }
        }
        Ok(Page {
            messages,
            next: q.after,
        })
    }

    /// The record of `id` if this user may see it; `None` when it does not exist or is
    /// not theirs (the same answer for both).
    pub async fn message(
        &self,
        index: &dyn Index,
        id: MessageId,
    ) -> Result<Option<Record>, StoreError> {
        Ok(index.get(id).await?.filter(|r| self.shows(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemIndex;
    use crate::model::{Status, Verdicts};

    fn account() -> Account {
        Account {
            address: "alice@example.test".into(),
            aliases: vec!["sales@example.test".into()],
            excluded: vec![],
            stamp: [0; 32],
        }
    }

    fn rec(n: i64, rcpt: &str, status: Status, subject: &str) -> Record {
        let at = DateTime::from_timestamp(1_700_000_000 + n * 60, 0).unwrap();
        let mut r = Record::held(
            MessageId::new(at),
            "sender@example.org".into(),
            vec![rcpt.into()],
            at,
            (10, String::new()),
            crate::model::Summary::default(),
        );
        r.status = status;
        r.summary.subject = Some(subject.into());
        r
    }

    #[tokio::test]
    async fn a_page_is_the_users_mail_newest_first() {
        let index = MemIndex::default();
        let now = DateTime::from_timestamp(1_700_000_000 + 40 * 86_400, 0).unwrap();
        let mut recs = vec![
            rec(1, "alice@example.test", Status::Held, "one"),
            rec(2, "bob@example.test", Status::Held, "bob's"),
            rec(3, "Alice+List@example.test", Status::Paused, "tagged"),
            rec(4, "sales@example.test", Status::Journal, "old journal"),
            rec(5, "alice@example.test", Status::Failed, "bounced"),
            rec(6, "alice@example.test", Status::Held, "spam"),
            rec(7, "alice@example.test", Status::Held, "virus"),
            rec(8, "alice@example.test", Status::Delivered, "recent"),
        ];
        recs[5].verdicts = Some(Verdicts {
            spam: Some("FAIL".into()),
            ..Verdicts::default()
        });
        recs[6].verdicts = Some(Verdicts {
            virus: Some("FAIL".into()),
            ..Verdicts::default()
        });
        // Received 40 days ago: outside 30 days of history, unless held.
        recs[7].received_at = now - Duration::days(2);
        recs[7].id = MessageId::new(recs[7].received_at);
        for r in &recs {
            crate::ports::Index::insert(&index, r).await.unwrap();
        }
        let a = account();
        let view = |days| View {
            account: &a,
            history_days: days,
            now,
        };
        let subjects = |p: &Page| {
            p.messages
                .iter()
                .map(|r| r.summary.subject.clone().unwrap())
                .collect::<Vec<_>>()
        };
        let p = view(30)
            .page(&index, Folder::Inbox, &Search::default(), None, 2)
            .await
            .unwrap();
        assert_eq!(subjects(&p), ["recent", "tagged"]);
        let p2 = view(30)
            .page(&index, Folder::Inbox, &Search::default(), p.next, 2)
            .await
            .unwrap();
        assert_eq!(subjects(&p2), ["one"]);
        assert!(p2.next.is_none());
        let junk = view(30)
            .page(&index, Folder::Junk, &Search::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(subjects(&junk), ["spam"]);
        let p = view(60)
            .page(&index, Folder::Inbox, &Search::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(subjects(&p), ["recent", "old journal", "tagged", "one"]);
        let search = Search {
            subject: Some("ON".into()),
            ..Search::default()
        };
        let p = view(60)
            .page(&index, Folder::Inbox, &search, None, 10)
            .await
            .unwrap();
        assert_eq!(subjects(&p), ["one"]);
        for (i, r) in recs.iter().enumerate() {
            let seen = view(30).message(&index, r.id).await.unwrap().is_some();
            assert_eq!(seen, [0, 2, 5, 7].contains(&i), "{i}");
        }
    }

    /// A flood of junk in front of the inbox's mail costs a bounded read per page: a
    /// short page with a cursor, and the next pages reach the mail behind it.
    #[tokio::test]
    async fn a_page_stops_reading_past_hidden_mail_and_goes_on_from_there() {
        let index = MemIndex::default();
        let now = DateTime::from_timestamp(1_700_000_000 + 86_400, 0).unwrap();
        let mine = rec(0, "alice@example.test", Status::Held, "behind the flood");
        crate::ports::Index::insert(&index, &mine).await.unwrap();
        // More than a page reads at most (MAX_BATCHES batches of size + 1 = 3).
        for n in 1..=100 {
            let mut junk = rec(n, "alice@example.test", Status::Held, "spam");
            junk.verdicts = Some(Verdicts {
                spam: Some("FAIL".into()),
                ..Verdicts::default()
            });
            crate::ports::Index::insert(&index, &junk).await.unwrap();
        }
        let a = account();
        let view = View {
            account: &a,
            history_days: 30,
            now,
        };
        let first = view
            .page(&index, Folder::Inbox, &Search::default(), None, 2)
            .await
            .unwrap();
        assert!(first.messages.is_empty());
        assert!(first.next.is_some(), "a cursor to go on from");
        let mut next = first.next;
        let mut pages = 1;
        let found = loop {
            let p = view
                .page(&index, Folder::Inbox, &Search::default(), next, 2)
                .await
                .unwrap();
            pages += 1;
            if !p.messages.is_empty() || p.next.is_none() {
                break p.messages;
            }
            next = p.next;
        };
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, mine.id);
        assert!(pages > 1);
    }
}
