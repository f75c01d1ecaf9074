//! IMAP4rev1 (RFC 3501) on the standby: the emergency mailbox in the users' own mail
//! clients.
//!
//! One mailbox, INBOX: the user's view of the held mail ([`crate::mailbox`]), numbered
//! with UIDs and flags kept per user ([`crate::mailbox::uids`]). EXPUNGE hides a message
//! from that user only; held mail is never deleted here. Logins are the standby's own
//! users with the emergency inbox's limits ([`crate::users::login`]), and only after TLS
//! unless `[imap] allow_plaintext_auth`. Commands are parsed and responses encoded by
//! duesee's imap-next and imap-codec; [`driver`] moves the bytes and streams large
//! messages from the store, so a 40 MB message is never held whole in memory for a
//! `BODY[]`. IDLE pushes mail this node accepted at once, and looks at the store every
//! [`Imap::poll`] for what other nodes accepted.

pub mod driver;
pub mod mime;
pub mod search;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use crate::ports::{Clock, Storage};
use crate::users::login::Logins;

/// What every IMAP session shares.
pub struct Imap {
    pub storage: Storage,
    pub logins: Arc<Logins>,
    pub clock: Arc<dyn Clock>,
    /// `[users] history_days`.
    pub history_days: u32,
    /// STARTTLS on the plain listener, and the implicit-TLS listener.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `[imap] allow_plaintext_auth`: LOGIN without TLS (loopback tests only).
    pub allow_plaintext_auth: bool,
    /// Counts messages this process accepted: IDLE wakes on a change.
    pub new_mail: tokio::sync::watch::Receiver<u64>,
    /// How often an idling session looks at the store for mail other nodes accepted.
    pub poll: Duration,
    /// How often a selected session lists the whole mailbox again (see
    /// `session::refresh`); between, its looks list only the last minutes' mail.
    pub whole_look: Duration,
}
