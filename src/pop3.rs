//! POP3 (RFC 1939, CAPA from RFC 2449, STLS from RFC 2595) on the standby: the emergency
//! mailbox for clients that download their mail.
//!
//! The maildrop is the user's inbox view with the UIDs IMAP uses ([`crate::mailbox::uids`]),
//! looked at once at login, so numbers stay fixed for the session. UIDL is
//! `<UIDVALIDITY>.<UID>`: stable across sessions, so a client in keep mode fetches
//! nothing twice. DELE, at QUIT, hides the message from this user only (as IMAP's
//! EXPUNGE does); held mail is never deleted here, and a message read is marked seen for
//! IMAP too. Logins are the standby's own users with the emergency inbox's limits, and
//! only after STLS unless `[pop3] allow_plaintext_auth`. RETR streams the message from the
//! store, dot-stuffed as it goes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::paced::Paced;
use tokio::net::TcpStream;

use crate::error::StoreError;
use crate::mailbox::uids::{Message, snapshot};
use crate::mailbox::{View, shows_original};
use crate::model::mailbox::{FlagChange, Flags};
use crate::ports::{Clock, Storage};
use crate::smtp::data::WireEncoder;
use crate::users::Account;
use crate::users::login::{Logins, Outcome};

/// A command line's longest (RFC 2449 §4: 255 octets with the CRLF).
const MAX_LINE: usize = 255;
/// Silence before the server closes the connection (RFC 1939 §3: at least 10 minutes).
const AUTOLOGOUT: Duration = Duration::from_secs(10 * 60);
/// How long a connection may stay without logging in (and the TLS handshake's limit).
const LOGIN_WITHIN: Duration = Duration::from_secs(120);
const CHUNK: usize = 64 * 1024;

/// What every POP3 session shares.
pub struct Pop3 {
    pub storage: Storage,
    pub logins: Arc<Logins>,
    pub clock: Arc<dyn Clock>,
    /// `[users] history_days`.
    pub history_days: u32,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `[pop3] allow_plaintext_auth`.
    pub allow_plaintext_auth: bool,
}

/// How a session on a stream ended.
enum End {
    Closed,
    Stls,
}

struct Maildrop {
    msgs: Vec<Message>,
    deleted: Vec<bool>,
    read: Vec<bool>,
    /// RFC822 sizes (a journal report shows only its original).
    sizes: Vec<u64>,
    validity: u32,
}

struct Session {
    pop: Arc<Pop3>,
    peer: IpAddr,
    tls: bool,
    user: Option<String>,
    account: Option<Account>,
    maildrop: Option<Maildrop>,
    /// When the connection was accepted: the login window counts from here, across STLS.
    opened: tokio::time::Instant,
}

/// A connection on the plain listener (STLS offered when `[tls]` is set).
pub async fn serve_plain(pop: Arc<Pop3>, tcp: TcpStream, peer: IpAddr) {
    let mut s = Session::new(pop.clone(), peer, false);
    let mut io = BufReader::new(Paced::new(tcp));
    match s.run(&mut io, true).await {
        Ok(End::Stls) => {
            let Some(acceptor) = pop.tls.clone() else {
                return;
            };
            let within = s.opened + LOGIN_WITHIN;
            let tcp = io.into_inner().into_inner();
            let tls = match tokio::time::timeout_at(within, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                _ => return,
            };
            s.tls = true;
            let mut io = BufReader::new(Paced::new(tls));
            if let Err(e) = s.run(&mut io, false).await {
                tracing::debug!(error = %e, "pop3: session ended");
            }
        }
        Ok(End::Closed) => {}
        Err(e) => tracing::debug!(error = %e, "pop3: session ended"),
    }
}

/// A connection on the implicit-TLS listener.
pub async fn serve_tls(pop: Arc<Pop3>, tcp: TcpStream, peer: IpAddr) {
    let Some(acceptor) = pop.tls.clone() else {
        return;
    };
    let opened = tokio::time::Instant::now();
    let Ok(Ok(tls)) = tokio::time::timeout_at(opened + LOGIN_WITHIN, acceptor.accept(tcp)).await
    else {
        return;
    };
    let mut s = Session::new(pop, peer, true);
    s.opened = opened;
    let mut io = BufReader::new(Paced::new(tls));
    if let Err(e) = s.run(&mut io, true).await {
        tracing::debug!(error = %e, "pop3: session ended");
    }
}

/// `n` as a message number of `d`: 1-based, not deleted.
fn number(d: &Maildrop, arg: Option<&str>) -> Result<usize, &'static str> {
    let n: usize = arg
        .and_then(|a| a.parse().ok())
        .ok_or("-ERR a message number is needed")?;
    if n == 0 || n > d.msgs.len() {
        return Err("-ERR no such message");
    }
    if d.deleted[n - 1] {
        return Err("-ERR message deleted");
    }
    Ok(n - 1)
}

impl Session {
    fn new(pop: Arc<Pop3>, peer: IpAddr, tls: bool) -> Self {
        Session {
            pop,
            peer,
            tls,
            user: None,
            account: None,
            maildrop: None,
            opened: tokio::time::Instant::now(),
        }
    }

    fn may_log_in(&self) -> bool {
        self.tls || self.pop.allow_plaintext_auth
    }

    async fn run<S>(&mut self, io: &mut BufReader<Paced<S>>, greet: bool) -> std::io::Result<End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if greet {
            io.get_mut()
                .write_all(b"+OK standby-mx POP3 ready\r\n")
                .await?;
        }
        let mut line = Vec::new();
        let opened = self.opened;
        loop {
            line.clear();
            let deadline = if self.maildrop.is_some() {
                tokio::time::Instant::now() + AUTOLOGOUT
            } else {
                opened + LOGIN_WITHIN
            };
            let read = tokio::time::timeout_at(
                deadline,
                (&mut *io)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line),
            )
            .await;
            let n = match read {
                Ok(r) => r?,
                Err(_) => {
                    io.get_mut()
                        .write_all(b"-ERR autologout; idle for too long\r\n")
                        .await?;
                    return Ok(End::Closed);
                }
            };
            if n == 0 {
                return Ok(End::Closed);
            }
            if !line.ends_with(b"\n") {
                io.get_mut().write_all(b"-ERR line too long\r\n").await?;
                return Ok(End::Closed);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (cmd, rest) = text.split_once(' ').unwrap_or((text, ""));
            let cmd = cmd.to_ascii_uppercase();
            let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
            // Each answer paced afresh: a client that stops taking what it asked for
            // cannot hold the connection (and its slot), a slow one gets its message.
            io.get_mut().reset();
            if let Some(end) = self.command(io, &cmd, rest, &args).await? {
                return Ok(end);
            }
        }
    }

    /// One command and its answer; `Some` when the connection ends or turns to TLS.
    async fn command<S>(
        &mut self,
        io: &mut BufReader<S>,
        cmd: &str,
        rest: &str,
        args: &[&str],
    ) -> std::io::Result<Option<End>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let w = io.get_mut();
        match (cmd, self.maildrop.is_some()) {
            ("CAPA", _) => {
                let mut caps = String::from(
                    "+OK capabilities follow\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n",
                );
                if self.maildrop.is_none() {
                    if !self.tls && self.pop.tls.is_some() {
                        caps.push_str("STLS\r\n");
                    }
                    if self.may_log_in() {
                        caps.push_str("USER\r\n");
                    }
                }
                caps.push_str("IMPLEMENTATION standby-mx\r\n.\r\n");
                w.write_all(caps.as_bytes()).await?;
            }
            ("QUIT", false) => {
                w.write_all(b"+OK bye\r\n").await?;
                return Ok(Some(End::Closed));
            }
            ("QUIT", true) => {
                let reply = self.update().await;
                io.get_mut().write_all(reply.as_bytes()).await?;
                return Ok(Some(End::Closed));
            }
            ("STLS", false) => {
                if self.tls || self.pop.tls.is_none() || self.user.is_some() {
                    w.write_all(b"-ERR STLS not available\r\n").await?;
                } else {
                    // Whatever the client sent after STLS in plain text would be
                    // taken as sent over TLS: refused, the connection dropped.
                    if !io.buffer().is_empty() {
                        io.get_mut()
                            .write_all(b"-ERR nothing may follow STLS before the handshake\r\n")
                            .await?;
                        return Ok(Some(End::Closed));
                    }
                    io.get_mut()
                        .write_all(b"+OK begin TLS negotiation\r\n")
                        .await?;
                    return Ok(Some(End::Stls));
                }
            }
            ("USER", false) => {
                if !self.may_log_in() {
                    w.write_all(b"-ERR [SYS/PERM] STLS first: no passwords in plain text\r\n")
                        .await?;
                } else if let Some(name) = args.first() {
                    self.user = Some((*name).to_string());
                    w.write_all(b"+OK send PASS\r\n").await?;
                } else {
                    w.write_all(b"-ERR USER needs a name\r\n").await?;
                }
            }
            ("PASS", false) => {
                let Some(name) = self.user.take() else {
                    w.write_all(b"-ERR USER first\r\n").await?;
                    return Ok(None);
                };
                // The password is the rest of the line, spaces included.
                let reply = self.login(&name, rest).await;
                io.get_mut().write_all(reply.as_bytes()).await?;
            }
            ("NOOP", true) => w.write_all(b"+OK\r\n").await?,
            ("STAT", true) => {
                let d = self.maildrop.as_ref().expect("in a transaction");
                let (count, size) = (0..d.msgs.len())
                    .filter(|&i| !d.deleted[i])
                    .fold((0, 0), |(c, s), i| (c + 1, s + d.sizes[i]));
                w.write_all(format!("+OK {count} {size}\r\n").as_bytes())
                    .await?;
            }
            ("LIST" | "UIDL", true) => {
                let d = self.maildrop.as_ref().expect("in a transaction");
                let item = |i: usize| {
                    if cmd == "LIST" {
                        format!("{} {}", i + 1, d.sizes[i])
                    } else {
                        format!("{} {}.{}", i + 1, d.validity, d.msgs[i].uid)
                    }
                };
                if args.is_empty() {
                    let mut out = String::from("+OK\r\n");
                    for i in (0..d.msgs.len()).filter(|&i| !d.deleted[i]) {
                        out.push_str(&item(i));
                        out.push_str("\r\n");
                    }
                    out.push_str(".\r\n");
                    w.write_all(out.as_bytes()).await?;
                } else {
                    match number(d, args.first().copied()) {
                        Ok(i) => {
                            w.write_all(format!("+OK {}\r\n", item(i)).as_bytes())
                                .await?
                        }
                        Err(e) => w.write_all(format!("{e}\r\n").as_bytes()).await?,
                    }
                }
            }
            ("RETR" | "TOP", true) => {
                let d = self.maildrop.as_ref().expect("in a transaction");
                let i = match number(d, args.first().copied()) {
                    Ok(i) => i,
                    Err(e) => {
                        w.write_all(format!("{e}\r\n").as_bytes()).await?;
                        return Ok(None);
                    }
                };
                let lines = if cmd == "TOP" {
                    match args.get(1).and_then(|a| a.parse::<usize>().ok()) {
                        Some(n) => Some(n),
                        None => {
                            w.write_all(b"-ERR TOP needs a line count\r\n").await?;
                            return Ok(None);
                        }
                    }
                } else {
                    None
                };
                let m = d.msgs[i].clone();
                let size = d.sizes[i];
                match self.send(io.get_mut(), &m, size, lines).await {
                    Ok(true) => {
                        if lines.is_none()
                            && let Some(d) = self.maildrop.as_mut()
                        {
                            d.read[i] = true;
                        }
                    }
                    Ok(false) => {}
                    Err(SendError::Io(e)) => return Err(e),
                    Err(SendError::Store(e)) => {
                        tracing::error!(error = %e, "pop3: the store did not answer");
                        return Ok(Some(End::Closed));
                    }
                }
            }
            ("DELE", true) => {
                let d = self.maildrop.as_mut().expect("in a transaction");
                match number(d, args.first().copied()) {
                    Ok(i) => {
                        d.deleted[i] = true;
                        w.write_all(b"+OK marked; removed from your view at QUIT\r\n")
                            .await?;
                    }
                    Err(e) => w.write_all(format!("{e}\r\n").as_bytes()).await?,
                }
            }
            ("RSET", true) => {
                let d = self.maildrop.as_mut().expect("in a transaction");
                d.deleted.iter_mut().for_each(|x| *x = false);
                w.write_all(b"+OK\r\n").await?;
            }
            (_, false) => w.write_all(b"-ERR log in first\r\n").await?,
            (_, true) => w.write_all(b"-ERR unknown command\r\n").await?,
        }
        Ok(None)
    }

    async fn login(&mut self, name: &str, password: &str) -> String {
        let account = match self
            .pop
            .logins
            .login("pop3", name, password, self.peer)
            .await
        {
            Outcome::Ok(a) => a,
            Outcome::Failed => return "-ERR [AUTH] wrong address or password\r\n".into(),
            Outcome::Blocked(_) => {
                return "-ERR [SYS/TEMP] too many failed logins; try again in a minute\r\n".into();
            }
            Outcome::Unavailable(why) => {
                tracing::error!(error = %why, "pop3: login check failed");
                return "-ERR [SYS/TEMP] logins are unavailable right now\r\n".into();
            }
        };
        match self.open(&account).await {
            Ok(d) => {
                let reply = format!("+OK {} messages\r\n", d.msgs.len());
                self.maildrop = Some(d);
                self.account = Some(account);
                reply
            }
            Err(e) => {
                tracing::error!(error = %e, "pop3: the store did not answer");
                "-ERR [SYS/TEMP] the store did not answer; try again\r\n".into()
            }
        }
    }

    async fn open(&self, account: &Account) -> Result<Maildrop, StoreError> {
        let view = View {
            account,
            history_days: self.pop.history_days,
            now: self.pop.clock.now(),
        };
        let snap = snapshot(&view, &self.pop.storage).await?;
        let mut sizes = Vec::with_capacity(snap.messages.len());
        for m in &snap.messages {
            sizes.push(if shows_original(&m.rec) {
                crate::mailbox::content(self.pop.storage.blobs.as_ref(), &m.rec)
                    .await?
                    .map_or(0, |b| b.len() as u64)
            } else {
                m.rec.size
            });
        }
        let n = snap.messages.len();
        Ok(Maildrop {
            msgs: snap.messages,
            deleted: vec![false; n],
            read: vec![false; n],
            sizes,
            validity: snap.validity,
        })
    }

    /// The UPDATE state: deleted messages hidden from this user, read ones seen.
    async fn update(&mut self) -> String {
        let (Some(d), Some(account), Some(mailboxes)) =
            (&self.maildrop, &self.account, &self.pop.storage.mailboxes)
        else {
            return "+OK bye\r\n".into();
        };
        let changes: Vec<FlagChange> = d
            .msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| d.deleted[*i] || d.read[*i])
            .map(|(i, m)| {
                let mut set = Flags::default();
                if d.read[i] {
                    set = set.with(Flags::SEEN);
                }
                if d.deleted[i] {
                    set = set.with(Flags::HIDDEN);
                }
                FlagChange {
                    uid: m.uid,
                    set,
                    clear: Flags::default(),
                }
            })
            .collect();
        if changes.is_empty() {
            return "+OK bye\r\n".into();
        }
        match mailboxes.change_flags(&account.address, &changes).await {
            Ok(()) => "+OK bye\r\n".into(),
            Err(e) => {
                tracing::error!(error = %e, "pop3: cannot keep the deletions");
                "-ERR [SYS/TEMP] deleted messages not removed; try again\r\n".into()
            }
        }
    }

    /// RETR (`lines` none) or TOP: `+OK`, the message dot-stuffed, `.`. Whole messages
    /// are streamed from the store; `Ok(false)`: answered `-ERR` (gone meanwhile).
    async fn send<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        m: &Message,
        size: u64,
        lines: Option<usize>,
    ) -> Result<bool, SendError> {
        let blobs = self.pop.storage.blobs.as_ref();
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
        let mut wire = WireEncoder::new();
        if lines.is_some() || shows_original(&m.rec) {
            let Some(bytes) = crate::mailbox::content(blobs, &m.rec).await? else {
                w.write_all(b"-ERR message no longer held\r\n").await?;
                return Ok(false);
            };
            // As CRLF lines (an SES object may hold bare ones), so TOP counts the lines
            // the client gets.
            let bytes = crate::model::lines::crlf_lines(&bytes);
            let part = match lines {
                Some(n) => top(&bytes, n),
                None => &bytes[..],
            };
            let head = match lines {
                Some(_) => "+OK top of message follows\r\n".to_string(),
                None => format!("+OK {size} octets\r\n"),
            };
            w.write_all(head.as_bytes()).await?;
            for chunk in part.chunks(CHUNK) {
                w.write_all(wire.encode(chunk, &mut out)).await?;
            }
        } else {
            let mut body = match blobs.open(&m.rec.blob_key()).await {
                Ok(b) => b,
                Err(StoreError::MissingBlob(_)) => {
                    w.write_all(b"-ERR message no longer held\r\n").await?;
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            };
            w.write_all(format!("+OK {size} octets\r\n").as_bytes())
                .await?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = body.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                w.write_all(wire.encode(&buf[..n], &mut out)).await?;
            }
        }
        w.write_all(wire.end()).await?;
        w.flush().await?;
        Ok(true)
    }
}

/// The header and the first `n` lines of the body (TOP).
fn top(bytes: &[u8], n: usize) -> &[u8] {
    let body = memchr::memmem::find(bytes, b"\r\n\r\n").map_or(bytes.len(), |i| i + 4);
    let mut end = body;
    for _ in 0..n {
        match memchr::memchr(b'\n', &bytes[end..]) {
            Some(i) => end += i + 1,
            None => return bytes,
        }
    }
    &bytes[..end]
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_takes_the_header_and_n_body_lines() {
        let m = b"Subject: x\r\nFrom: a\r\n\r\none\r\ntwo\r\nthree\r\n";
        assert_eq!(super::top(m, 0), b"Subject: x\r\nFrom: a\r\n\r\n");
        assert_eq!(
            super::top(m, 2),
            b"Subject: x\r\nFrom: a\r\n\r\none\r\ntwo\r\n"
        );
        assert_eq!(super::top(m, 9), &m[..]);
    }
}
