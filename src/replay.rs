//! Replay: deliver kept copies of recent mail to the primary again, after its mailbox
//! store was lost (a dead disk, a restore from an old backup).
//!
//! The copies are journal copies ([`crate::journal`]) and delivered standby copies still
//! in the spool. Each goes to the primary with its original envelope (sender, and the
//! original recipients that are ours) and one added `X-Standby-Replay:` header naming the
//! run, so the recipients and the primary's operator can tell a replayed message apart.
//!
//! Idempotent per message and run: after the primary accepts a message, the record notes
//! the run id and the recipients accepted ([`Replayed`]); a rerun with the same id (after
//! an interruption) sends only what that run has not delivered yet. As with the drain,
//! a crash between the primary's 250 and that note can duplicate the one message in
//! flight, nothing more.
//!
//! What is not replayed: a journal copy of a replayed message (the primary journals what
//! a replay delivers, and those copies come back here), and a delivered standby copy
//! whose Message-ID a journal copy in the same window has (the primary journaled it when
//! the drain delivered it). Copies without recipients of ours (outbound mail) are
//! archived but never sent.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::error::{RelayError, StoreError};
use crate::model::RcptSource;
use crate::model::{MessageId, Record, Replayed, Status};
use crate::ports::Storage;
use crate::ports::{Clock, ListQuery, Pages, Relay, RelaySession};

/// The header a replayed message carries.
pub const REPLAY_HEADER: &str = "X-Standby-Replay";

/// Which copies a replay run sends.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    /// Only this original recipient (case-insensitive).
    pub rcpt: Option<String>,
    pub run: String,
}

/// One message a run would send, and to whom.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: MessageId,
    pub status: Status,
    pub received_at: DateTime<Utc>,
    pub mail_from: String,
    pub subject: Option<String>,
    /// Where the stored bytes are ([`Record::blob_key`]).
    pub blob: String,
    /// An Exchange journal report: its attached original is what goes.
    pub report: bool,
    /// Recipients this run has not delivered to yet.
    pub rcpts: Vec<String>,
}

/// What one message's replay came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The primary accepted every recipient.
    Replayed,
    /// Some recipients were refused (temporarily or for good); a rerun tries them again.
    Partial(String),
    /// Refused as a whole, or the stored copy could not be read.
    Refused(String),
}

/// The result of a run (`standby replay --json` prints it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub run: String,
    /// Messages in the window with something left to send.
    pub candidates: usize,
    /// Messages in the window this run had already sent completely.
    pub already_done: usize,
    pub replayed: usize,
    pub partial: usize,
    pub refused: usize,
    /// Messages not tried because the primary could not be reached.
    pub not_sent: usize,
    /// Recipients the primary accepted in this invocation.
    pub recipients: usize,
    /// Why the run stopped before the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A message's header block carries our replay header (the primary journaled a replay).
pub(crate) fn is_echo(head: &[u8]) -> bool {
    let name = REPLAY_HEADER.as_bytes();
    head.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
    })
}

/// Call `f` on each record of one status in the window, a page at a time.
async fn each_in_window(
    storage: &Storage,
    status: Status,
    req: &ReplayRequest,
    mut f: impl FnMut(Record),
) -> Result<(), StoreError> {
    let mut pages = Pages::new(ListQuery {
        status: Some(status),
        since: Some(req.since),
        until: req.until,
        rcpt: req.rcpt.clone(),
        ..ListQuery::default()
    });
    while let Some(page) = pages.next(storage.index.as_ref()).await? {
        page.into_iter().for_each(&mut f);
    }
    Ok(())
}

/// What a run sends of `rec`; `None` when it has nothing to send (`done` is set when
/// this run already sent it all).
fn candidate(rec: Record, req: &ReplayRequest, done: &mut usize) -> Option<Candidate> {
    // What a user sent to outside recipients went out to them, never to the primary.
    if rec.sent == Some(crate::model::SentPart::Outbound) {
        return None;
    }
    let sent: Vec<&String> = rec
        .replays
        .iter()
        .filter(|m| m.run == req.run)
        .flat_map(|m| &m.rcpts)
        .collect();
    let wanted = rec.rcpts.iter().map(|r| &r.address).filter(|a| {
        req.rcpt
            .as_deref()
            .is_none_or(|want| a.eq_ignore_ascii_case(want))
    });
    let mut any = false;
    let rcpts: Vec<String> = wanted
        .inspect(|_| any = true)
        .filter(|a| !sent.iter().any(|s| s.eq_ignore_ascii_case(a)))
        .cloned()
        .collect();
    if rcpts.is_empty() {
        *done += usize::from(any);
        return None;
    }
    Some(Candidate {
        id: rec.id,
        status: rec.status,
        received_at: rec.received_at,
        blob: rec.blob_key(),
        report: rec
            .journal
            .as_ref()
            .is_some_and(|j| j.source == RcptSource::Report),
        mail_from: rec.mail_from,
        subject: rec.summary.subject,
        rcpts,
    })
}

/// The copies a run sends, oldest first, and how many it had already sent. Read a page
/// at a time; what is kept per message is only what sending it needs.
pub async fn candidates(
    storage: &Storage,
    req: &ReplayRequest,
) -> Result<(Vec<Candidate>, usize), StoreError> {
    let (mut out, mut done) = (Vec::new(), 0);
    let mut journaled: HashSet<String> = HashSet::new();
    each_in_window(storage, Status::Journal, req, |rec| {
        if let Some(m) = &rec.summary.message_id {
            journaled.insert(m.clone());
        }
        if !rec.journal.as_ref().is_some_and(|j| j.replayed) {
            out.extend(candidate(rec, req, &mut done));
        }
    })
    .await?;
    each_in_window(storage, Status::Delivered, req, |rec| {
        let journaled_too = rec
            .summary
            .message_id
            .as_ref()
            .is_some_and(|m| journaled.contains(m));
        if !journaled_too {
            out.extend(candidate(rec, req, &mut done));
        }
    })
    .await?;
    out.sort_by_key(|c| (c.received_at, c.id));
    Ok((out, done))
}

/// Sends candidates to the primary.
pub struct Replayer {
    storage: Storage,
    relay: Arc<dyn Relay>,
    clock: Arc<dyn Clock>,
    /// Authserv-ids whose `Authentication-Results:` fields are removed on the way, as the
    /// drain removes them (an SES-stored copy was never filtered at receipt).
    strip: Vec<String>,
}

impl Replayer {
    pub fn new(storage: Storage, relay: Arc<dyn Relay>, clock: Arc<dyn Clock>) -> Self {
        Replayer {
            storage,
            relay,
            clock,
            strip: Vec::new(),
        }
    }

    /// Remove the `Authentication-Results:` fields of `authserv_ids` from what is sent.
    pub fn stripping(mut self, authserv_ids: Vec<String>) -> Self {
        self.strip = authserv_ids;
        self
    }

    /// Send every candidate over one session (reopened once if it breaks), noting each
    /// accepted one in its record; `progress` is called after each message.
    pub async fn run(
        &self,
        run: &str,
        cands: Vec<Candidate>,
        already_done: usize,
        progress: &(dyn Fn(&Candidate, &ReplayOutcome) + Sync),
    ) -> Result<ReplayReport, ReplayError> {
        let mut report = ReplayReport {
            run: run.to_string(),
            candidates: cands.len(),
            already_done,
            ..Default::default()
        };
        let mut session: Option<Box<dyn RelaySession>> = None;
        for (i, cand) in cands.iter().enumerate() {
            if session.is_none() {
                match self.relay.connect().await {
                    Ok(s) => session = Some(s),
                    Err(e) => {
                        report.not_sent = cands.len() - i;
                        report.stopped = Some(format!("cannot reach the primary: {e}"));
                        break;
                    }
                }
            }
            let Some(s) = session.as_mut() else { break };
            let result = self.send_one(s.as_mut(), run, cand).await;
            let outcome = match result {
                Ok(tx) => {
                    let (outcome, accepted) = self.note(run, cand, &tx).await?;
                    report.recipients += accepted;
                    outcome
                }
                Err(RelayError::Blob(e)) => {
                    // Possibly cut off inside DATA: the session is dropped without a word
                    // (a QUIT would be message text) and the next message opens a new one.
                    session = None;
                    ReplayOutcome::Refused(format!("stored copy unreadable: {e}"))
                }
                Err(e) => {
                    // The session broke mid-message: this one counts as not sent and the
                    // next message opens a new session.
                    session = None;
                    tracing::warn!(id = %cand.id, error = %e, "replay session failed");
                    ReplayOutcome::Refused(format!("session failed: {e}"))
                }
            };
            match &outcome {
                ReplayOutcome::Replayed => report.replayed += 1,
                ReplayOutcome::Partial(_) => report.partial += 1,
                ReplayOutcome::Refused(_) => report.refused += 1,
            }
            tracing::info!(id = %cand.id, outcome = ?outcome, "replay");
            progress(cand, &outcome);
        }
        if let Some(s) = session {
            s.quit().await;
        }
        Ok(report)
    }

    /// One transaction: our header, then the stored bytes (of an Exchange journal report,
    /// the original message attached to it).
    async fn send_one(
        &self,
        s: &mut dyn RelaySession,
        run: &str,
        cand: &Candidate,
    ) -> Result<crate::ports::Transaction, RelayError> {
        let key = &cand.blob;
        let header = format!(
            "{REPLAY_HEADER}: run={run}; id={}; received={}\r\n",
            cand.id,
            cand.received_at.format("%Y-%m-%dT%H:%M:%SZ")
        );
        let header = std::io::Cursor::new(header.into_bytes());
        let body: crate::ports::BlobReader = if cand.report {
            let (raw, _) = self
                .storage
                .blobs
                .read_all(key)
                .await
                .map_err(RelayError::Blob)?;
            let original = crate::journal::report_original(&raw).ok_or_else(|| {
                RelayError::Blob(StoreError::Corrupt {
                    id: cand.id.to_string(),
                    detail: "journal report without an attached message".into(),
                })
            })?;
            Box::new(header.chain(std::io::Cursor::new(original)))
        } else {
            let stored = self
                .storage
                .blobs
                .open(key)
                .await
                .map_err(RelayError::Blob)?;
            Box::new(header.chain(stored))
        };
        let body = crate::drain::filtered(body, Vec::new(), &self.strip, cand.id);
        s.send(&cand.mail_from, &cand.rcpts, body).await
    }

    /// Note what the primary accepted in the record (re-read, so a concurrent change is
    /// not overwritten); the outcome and how many recipients were accepted.
    async fn note(
        &self,
        run: &str,
        cand: &Candidate,
        tx: &crate::ports::Transaction,
    ) -> Result<(ReplayOutcome, usize), StoreError> {
        let data_ok = tx.data.as_ref().is_some_and(|d| d.is_positive());
        let accepted: Vec<String> = if data_ok && tx.mail.is_positive() {
            cand.rcpts
                .iter()
                .zip(&tx.rcpts)
                .filter(|(_, r)| r.is_positive())
                .map(|(a, _)| a.clone())
                .collect()
        } else {
            Vec::new()
        };
        let refusals: Vec<String> = std::iter::once(&tx.mail)
            .chain(&tx.rcpts)
            .chain(&tx.data)
            .filter(|r| !r.is_positive())
            .map(|r| r.to_string())
            .collect();
        if accepted.is_empty() {
            return Ok((ReplayOutcome::Refused(refusals.join("; ")), 0));
        }
        let now = self.clock.now();
        if let Some(mut rec) = self.storage.index.get(cand.id).await? {
            match rec.replays.iter_mut().find(|m| m.run == run) {
                Some(m) => {
                    m.rcpts.extend(accepted.iter().cloned());
                    m.at = now;
                }
                None => rec.replays.push(Replayed {
                    run: run.to_string(),
                    at: now,
                    rcpts: accepted.clone(),
                }),
            }
            rec.updated_at = now;
            self.storage.index.update(&rec, now).await?;
        }
        let outcome = if accepted.len() == cand.rcpts.len() {
            ReplayOutcome::Replayed
        } else {
            ReplayOutcome::Partial(refusals.join("; "))
        };
        Ok((outcome, accepted.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_recognised_by_our_header_only() {
        assert!(is_echo(
            b"Received: x\r\nx-standby-replay: run=r; id=1\r\n\r\n"
        ));
        assert!(!is_echo(b"Subject: X-Standby-Replay: no\r\n\r\n"));
        assert!(!is_echo(b"X-Standby-Replayed: 1\r\n\r\n"));
    }
}
