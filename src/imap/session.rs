//! One IMAP connection: its states (RFC 3501 §3), the commands of each, and IDLE.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder;
use imap_next::imap_types::IntoStatic;
use imap_next::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_next::imap_types::command::{Command, CommandBody};
use imap_next::imap_types::core::{Atom, IString, NString, QuotedChar, Tag, Vec1};
use imap_next::imap_types::datetime::DateTime;
use imap_next::imap_types::extensions::namespace::Namespace;
use imap_next::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Section,
};
use imap_next::imap_types::flag::{
    Flag, FlagFetch, FlagNameAttribute, FlagPerm, StoreResponse, StoreType,
};
use imap_next::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_next::imap_types::response::{
    Capability, Code, CodeOther, CommandContinuationRequest, Data, Greeting, Response, Status,
};
use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::sequence::SequenceSet;
use imap_next::imap_types::status::{StatusDataItem, StatusDataItemName};
use imap_next::server::{Event, Options, Server};
use imap_next::types::CommandAuthenticate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use super::driver::{Conn, DriveError};
use super::search::{self, Candidate, Largest};
use super::{Imap, mime};
use crate::error::StoreError;
use crate::mailbox::uids::{Message, recent, snapshot};
use crate::mailbox::{View, shows_original};
use crate::model::mailbox::{FlagChange, Flags};
use crate::users::Account;
use crate::users::login::Outcome;

/// Silence before a session that has not logged in is closed (and the TLS handshake's
/// limit).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection may stay without logging in, whatever it sends.
const LOGIN_WITHIN: Duration = Duration::from_secs(120);
/// Silence before a logged-in session is closed (RFC 3501 §5.4: at least 30 minutes).
const AUTOLOGOUT: Duration = Duration::from_secs(31 * 60);
/// Bytes a streamed literal is copied in.
const CHUNK: usize = 64 * 1024;

fn options() -> Options {
    let mut o = Options::default();
    o.crlf_relaxed = true;
    // No APPEND: nothing a client sends needs a large literal (imap-next's default
    // would let anyone, before login, park 25 MiB per connection).
    o.max_literal_size = 64 * 1024;
    o.max_command_size = 128 * 1024;
    o
}

fn greeting() -> Greeting<'static> {
    Greeting::ok(None, "standby-mx IMAP ready").expect("static text")
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn ok(tag: &Tag<'static>, code: Option<Code<'static>>, text: &'static str) -> Status<'static> {
    Status::ok(Some(tag.clone()), code, text).expect("static text")
}

fn no(tag: &Tag<'static>, code: Option<Code<'static>>, text: &'static str) -> Status<'static> {
    Status::no(Some(tag.clone()), code, text).expect("static text")
}

fn bad(tag: &Tag<'static>, text: &'static str) -> Status<'static> {
    Status::bad(Some(tag.clone()), None, text).expect("static text")
}

fn code(name: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(name.as_bytes()))
}

/// The tag of a command imap-codec could not parse (an unknown command lands there).
fn tag_of(discarded: &[u8]) -> Option<Tag<'static>> {
    let end = discarded
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')?;
    Tag::try_from(String::from_utf8(discarded[..end].to_vec()).ok()?).ok()
}

fn system_flags() -> Vec<Flag<'static>> {
    vec![
        Flag::Answered,
        Flag::Flagged,
        Flag::Deleted,
        Flag::Seen,
        Flag::Draft,
    ]
}

fn flag_bits(flags: &[Flag<'_>]) -> Flags {
    flags.iter().fold(Flags::default(), |acc, f| match f {
        Flag::Seen => acc.with(Flags::SEEN),
        Flag::Answered => acc.with(Flags::ANSWERED),
        Flag::Flagged => acc.with(Flags::FLAGGED),
        Flag::Deleted => acc.with(Flags::DELETED),
        Flag::Draft => acc.with(Flags::DRAFT),
        _ => acc,
    })
}

fn flag_list(f: Flags) -> Vec<FlagFetch<'static>> {
    [
        (Flags::SEEN, Flag::Seen),
        (Flags::ANSWERED, Flag::Answered),
        (Flags::FLAGGED, Flag::Flagged),
        (Flags::DELETED, Flag::Deleted),
        (Flags::DRAFT, Flag::Draft),
    ]
    .into_iter()
    .filter(|(bit, _)| f.has(*bit))
    .map(|(_, flag)| FlagFetch::from(flag))
    .collect()
}

fn internal_date(rec: &crate::model::Record) -> Option<DateTime> {
    let at = chrono::DateTime::from_timestamp(rec.received_at.timestamp(), 0)?;
    DateTime::try_from(at.fixed_offset()).ok()
}

/// The mailbox a logged-in session has selected.
/// How far a look between whole ones reaches back before the last look started: mail
/// another node (or SES) received is listed by the time it was received, by that
/// machine's clock, and DynamoDB's recipient index shows it a moment later.
const LOOK_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// `every`, give or take a tenth, at random.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(rand::random_range(0.9..1.1))
}

struct Selected {
    read_only: bool,
    next_uid: u32,
    msgs: Vec<Message>,
    /// When the last look started (the store's clock: received times are compared).
    looked_at: chrono::DateTime<chrono::Utc>,
    /// When the last whole look was tried (a monotonic clock), and the wait for the next.
    whole_at: std::time::Instant,
    whole_every: Duration,
}

impl Selected {
    fn largest(&self) -> Largest {
        Largest {
            seq: u32::try_from(self.msgs.len()).unwrap_or(u32::MAX),
            uid: self.msgs.last().map_or(0, |m| m.uid),
        }
    }

    /// Indices of the messages `set` names, by UID or by sequence number.
    fn pick(&self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        let largest = self.largest();
        (0..self.msgs.len())
            .filter(|&i| {
                if uid {
                    search::in_set(set, self.msgs[i].uid, largest.uid)
                } else {
                    search::in_set(set, u32::try_from(i + 1).unwrap_or(u32::MAX), largest.seq)
                }
            })
            .collect()
    }
}

enum End {
    Closed,
    StartTls,
}

struct Session {
    imap: Arc<Imap>,
    peer: IpAddr,
    tls: bool,
    account: Option<Account>,
    selected: Option<Selected>,
    idle_tag: Option<Tag<'static>>,
    auth_tag: Option<Tag<'static>>,
    seen_mail: u64,
    /// When the connection was accepted: the login window counts from here, across
    /// STARTTLS.
    opened: tokio::time::Instant,
}

/// A connection on the plain listener (STARTTLS offered when `[tls]` is set).
pub async fn serve_plain(imap: Arc<Imap>, tcp: TcpStream, peer: IpAddr) {
    let mut s = Session::new(imap.clone(), peer, false);
    let conn = Conn::new(tcp);
    match s.run(conn, Server::new(options(), greeting())).await {
        Ok((End::StartTls, conn)) => {
            let Some(tls) = handshake(&imap, conn.into_inner(), s.opened).await else {
                return;
            };
            let mut server = Server::new(options(), greeting());
            // No greeting after STARTTLS: take the one a new server queues and drop it.
            discard_greeting(&mut server);
            s.tls = true;
            if let Err(e) = s.run(Conn::new(tls), server).await {
                tracing::debug!(error = %e, "imap: session ended");
            }
        }
        Ok((End::Closed, _)) => {}
        Err(e) => tracing::debug!(error = %e, "imap: session ended"),
    }
}

/// A connection on the implicit-TLS listener.
pub async fn serve_tls(imap: Arc<Imap>, tcp: TcpStream, peer: IpAddr) {
    let opened = tokio::time::Instant::now();
    let Some(tls) = handshake(&imap, tcp, opened).await else {
        return;
    };
    let mut s = Session::new(imap, peer, true);
    s.opened = opened;
    if let Err(e) = s
        .run(Conn::new(tls), Server::new(options(), greeting()))
        .await
    {
        tracing::debug!(error = %e, "imap: session ended");
    }
}

/// The server side of a TLS handshake, within [`LOGIN_TIMEOUT`] and the login window of
/// a connection `opened` then; `None`: failed (logged).
async fn handshake(
    imap: &Imap,
    tcp: TcpStream,
    opened: tokio::time::Instant,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = imap.tls.clone()?;
    let deadline = (tokio::time::Instant::now() + LOGIN_TIMEOUT).min(opened + LOGIN_WITHIN);
    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "imap: TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

fn discard_greeting(server: &mut Server) {
    use imap_next::{Interrupt, Io, State};
    if let Err(Interrupt::Io(Io::Output(_))) = State::next(server) {
        let _ = State::next(server);
    }
}

impl Session {
    fn new(imap: Arc<Imap>, peer: IpAddr, tls: bool) -> Self {
        let seen_mail = *imap.new_mail.borrow();
        Session {
            imap,
            peer,
            tls,
            account: None,
            selected: None,
            idle_tag: None,
            auth_tag: None,
            seen_mail,
            opened: tokio::time::Instant::now(),
        }
    }

    fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut caps = vec![Capability::Imap4Rev1];
        if self.account.is_none() {
            if !self.tls && self.imap.tls.is_some() {
                caps.push(Capability::StartTls);
            }
            if self.tls || self.imap.allow_plaintext_auth {
                caps.push(Capability::Auth(AuthMechanism::Plain));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        }
        caps.extend([
            Capability::Idle,
            Capability::UidPlus,
            Capability::Enable,
            Capability::Id,
            Capability::Namespace,
            Capability::Unselect,
        ]);
        Vec1::try_from(caps).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }

    fn may_log_in(&self) -> bool {
        self.tls || self.imap.allow_plaintext_auth
    }

    fn view<'a>(&self, account: &'a Account) -> View<'a> {
        View {
            account,
            history_days: self.imap.history_days,
            now: self.imap.clock.now(),
        }
    }

    async fn run<S>(
        &mut self,
        mut conn: Conn<S>,
        mut server: Server,
    ) -> Result<(End, Conn<S>), DriveError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut new_mail = self.imap.new_mail.clone();
        let opened = self.opened;
        let mut last_command = tokio::time::Instant::now();
        loop {
            // Counted from the client's last command (IDLE's own looks at the store do
            // not count), and before login from the connection's start too.
            let deadline = if self.account.is_some() {
                last_command + AUTOLOGOUT
            } else {
                (last_command + LOGIN_TIMEOUT).min(opened + LOGIN_WITHIN)
            };
            let idling = self.idle_tag.is_some();
            let event = tokio::select! {
                ev = tokio::time::timeout_at(deadline, conn.next_event(&mut server)) => match ev {
                    Ok(ev) => ev,
                    Err(_) => {
                        server.enqueue_status(
                            Status::bye(None, "Autologout; idle for too long").expect("static text"),
                        );
                        let _ = conn.flush(&mut server).await;
                        return Ok((End::Closed, conn));
                    }
                },
                // A write under way waits on; the store's time until it is tried again
                // is ours, not the client's.
                _ = new_mail.changed(), if idling => {
                    conn.pause();
                    self.refresh(&mut server).await;
                    continue;
                }
                _ = tokio::time::sleep(self.imap.poll), if idling => {
                    conn.pause();
                    self.refresh(&mut server).await;
                    continue;
                }
            };
            let event = match event {
                Ok(ev) => ev,
                Err(DriveError::State(imap_next::server::Error::LiteralTooLong { .. })) => continue,
                Err(DriveError::State(
                    imap_next::server::Error::MalformedMessage { discarded_bytes }
                    | imap_next::server::Error::CommandTooLong { discarded_bytes }
                    | imap_next::server::Error::ExpectedCrlfGotLf { discarded_bytes },
                )) => {
                    let status = match tag_of(discarded_bytes.declassify()) {
                        Some(tag) => bad(&tag, "Unknown command or syntax error"),
                        None => Status::bad(None, None, "Syntax error").expect("static text"),
                    };
                    server.enqueue_status(status);
                    continue;
                }
                Err(DriveError::Closed) => return Ok((End::Closed, conn)),
                Err(e) => return Err(e),
            };
            if !matches!(
                event,
                Event::GreetingSent { .. } | Event::ResponseSent { .. }
            ) {
                last_command = tokio::time::Instant::now();
            }
            match event {
                Event::GreetingSent { .. } | Event::ResponseSent { .. } => {}
                Event::IdleCommandReceived { tag } => {
                    if self.account.is_none() {
                        let _ = server.idle_reject(no(&tag, None, "Log in first"));
                    } else {
                        let go =
                            CommandContinuationRequest::basic(None, "idling").expect("static text");
                        let _ = server.idle_accept(go);
                        self.idle_tag = Some(tag);
                        // What arrived since the last look is reported at once.
                        self.refresh(&mut server).await;
                    }
                }
                Event::IdleDoneReceived => {
                    if let Some(tag) = self.idle_tag.take() {
                        server.enqueue_status(ok(&tag, None, "IDLE terminated"));
                    }
                }
                Event::CommandAuthenticateReceived {
                    command_authenticate:
                        CommandAuthenticate {
                            tag,
                            mechanism,
                            initial_response,
                        },
                } => {
                    let status = if self.account.is_some() {
                        Some(bad(&tag, "Already logged in"))
                    } else if mechanism != AuthMechanism::Plain {
                        Some(no(&tag, None, "Only AUTHENTICATE PLAIN"))
                    } else if !self.may_log_in() {
                        Some(no(
                            &tag,
                            Some(code("PRIVACYREQUIRED")),
                            "STARTTLS first: no passwords in plain text",
                        ))
                    } else if let Some(ir) = initial_response {
                        Some(self.plain(&tag, ir.declassify()).await)
                    } else {
                        let _ = server
                            .authenticate_continue(CommandContinuationRequest::base64(Vec::new()));
                        self.auth_tag = Some(tag);
                        None
                    };
                    if let Some(status) = status {
                        let _ = server.authenticate_finish(status);
                    }
                }
                Event::AuthenticateDataReceived { authenticate_data } => {
                    let Some(tag) = self.auth_tag.take() else {
                        continue;
                    };
                    let status = match authenticate_data {
                        AuthenticateData::Continue(data) => {
                            self.plain(&tag, data.declassify()).await
                        }
                        AuthenticateData::Cancel => bad(&tag, "AUTHENTICATE cancelled"),
                    };
                    let _ = server.authenticate_finish(status);
                }
                Event::CommandReceived { command } => {
                    if let Some(end) = self.command(&mut conn, &mut server, command).await? {
                        return Ok((end, conn));
                    }
                }
            }
        }
    }

    /// AUTHENTICATE PLAIN's `authzid NUL authcid NUL password`.
    async fn plain(&mut self, tag: &Tag<'static>, data: &[u8]) -> Status<'static> {
        let mut parts = data.split(|&b| b == 0);
        let (authz, user, pass) = (parts.next(), parts.next(), parts.next());
        let (Some(authz), Some(user), Some(pass), None) = (authz, user, pass, parts.next()) else {
            return bad(tag, "Malformed PLAIN response");
        };
        if !authz.is_empty() && authz != user {
            return no(
                tag,
                Some(code("AUTHORIZATIONFAILED")),
                "No logging in as someone else",
            );
        }
        let (user, pass) = (String::from_utf8_lossy(user), String::from_utf8_lossy(pass));
        self.login(tag, &user, &pass).await
    }

    async fn login(&mut self, tag: &Tag<'static>, name: &str, password: &str) -> Status<'static> {
        match self
            .imap
            .logins
            .login("imap", name, password, self.peer)
            .await
        {
            Outcome::Ok(account) => {
                self.account = Some(account);
                ok(
                    tag,
                    Some(Code::Capability(self.capabilities())),
                    "Logged in",
                )
            }
            Outcome::Failed => no(
                tag,
                Some(code("AUTHENTICATIONFAILED")),
                "Wrong address or password",
            ),
            Outcome::Blocked(_) => no(
                tag,
                Some(code("UNAVAILABLE")),
                "Too many failed logins; try again in a minute",
            ),
            Outcome::Unavailable(why) => {
                tracing::error!(error = %why, "imap: login check failed");
                no(
                    tag,
                    Some(code("UNAVAILABLE")),
                    "Logins are unavailable right now",
                )
            }
        }
    }

    /// Look at the mailbox again while selected: report what left it (EXPUNGE), flags
    /// other sessions changed, and what arrived (EXISTS). A whole look every
    /// [`Imap::whole_look`](super::Imap); between, only the mail received since the last
    /// look (less [`LOOK_OVERLAP`]), so an idle session's poll of a large mailbox on AWS
    /// does not read every message.
    async fn refresh(&mut self, server: &mut Server) {
        self.seen_mail = *self.imap.new_mail.borrow();
        let (Some(account), Some(sel)) = (self.account.clone(), self.selected.as_mut()) else {
            return;
        };
        let now = self.imap.clock.now();
        let view = View {
            account: &account,
            history_days: self.imap.history_days,
            now,
        };
        let last = sel.msgs.last().map_or(0, |m| m.uid);
        let mut whole = sel.whole_at.elapsed() >= sel.whole_every;
        let mut look = if whole {
            None
        } else {
            // Never later than now: a clock stepped back must not narrow the window.
            let since = sel.looked_at.min(now) - LOOK_OVERLAP;
            match recent(&view, &self.imap.storage, since).await {
                Ok(r) => {
                    // A UID above the session's last that this listing did not bring was
                    // given (by another session, node or POP3 login) to a message received
                    // before the window: only a whole look finds it, and it must be now,
                    // before a later UID is shown and the session moves past it.
                    let listed: std::collections::HashSet<u32> =
                        r.messages.iter().map(|m| m.uid).collect();
                    if r.shown.keys().any(|u| *u > last && !listed.contains(u)) {
                        whole = true;
                        None
                    } else {
                        Some(Ok((r.shown, r.messages, r.next_uid)))
                    }
                }
                Err(e) => Some(Err(e)),
            }
        };
        if whole {
            // Timed from the attempt, failed or not: a store that cannot answer a whole
            // look (throttled) is not asked again at every poll. Each session's interval
            // varies a little, so sessions selected together do not look together.
            sel.whole_at = std::time::Instant::now();
            sel.whole_every = jittered(self.imap.whole_look);
            look = Some(snapshot(&view, &self.imap.storage).await.map(|snap| {
                let shown = snap.messages.iter().map(|m| (m.uid, m.flags)).collect();
                (shown, snap.messages, snap.next_uid)
            }));
        }
        let Some(look) = look else { return };
        let (present, arrived, next_uid): (HashMap<u32, Flags>, Vec<Message>, u32) = match look {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "imap: cannot look at the mailbox");
                return;
            }
        };
        sel.looked_at = now;
        for i in (0..sel.msgs.len()).rev() {
            match present.get(&sel.msgs[i].uid) {
                None => {
                    sel.msgs.remove(i);
                    server
                        .enqueue_data(Data::Expunge(nz(u32::try_from(i + 1).unwrap_or(u32::MAX))));
                }
                // Another session (or a POP3 client) changed them: told, as RFC 3501
                // §7.4.2 allows outside a FETCH.
                Some(&f) if f != sel.msgs[i].flags => {
                    sel.msgs[i].flags = f;
                    if let Ok(items) = Vec1::try_from(vec![
                        MessageDataItem::Uid(nz(sel.msgs[i].uid)),
                        MessageDataItem::Flags(flag_list(f)),
                    ]) {
                        server.enqueue_data(Data::Fetch {
                            seq: nz(u32::try_from(i + 1).unwrap_or(u32::MAX)),
                            items,
                        });
                    }
                }
                Some(_) => {}
            }
        }
        let before = sel.msgs.len();
        sel.msgs
            .extend(arrived.into_iter().filter(|m| m.uid > last));
        sel.next_uid = next_uid;
        if sel.msgs.len() != before {
            server.enqueue_data(Data::Exists(
                u32::try_from(sel.msgs.len()).unwrap_or(u32::MAX),
            ));
        }
    }

    async fn open(&self, account: &Account) -> Result<crate::mailbox::uids::Snapshot, StoreError> {
        snapshot(&self.view(account), &self.imap.storage).await
    }

    async fn save_flags(&self, changes: &[FlagChange]) -> Result<(), StoreError> {
        let (Some(account), Some(m)) = (&self.account, &self.imap.storage.mailboxes) else {
            return Ok(());
        };
        if changes.is_empty() {
            return Ok(());
        }
        m.change_flags(&account.address, changes).await
    }

    async fn select(
        &mut self,
        server: &mut Server,
        tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        read_only: bool,
    ) {
        self.selected = None;
        if *mailbox != Mailbox::Inbox {
            server.enqueue_status(no(tag, Some(code("NONEXISTENT")), "Only INBOX here"));
            return;
        }
        let Some(account) = self.account.clone() else {
            server.enqueue_status(bad(tag, "Log in first"));
            return;
        };
        let at = self.imap.clock.now();
        let whole_at = std::time::Instant::now();
        let snap = match self.open(&account).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "imap: the store did not answer");
                server.enqueue_status(no(
                    tag,
                    Some(code("UNAVAILABLE")),
                    "The store did not answer; try again",
                ));
                return;
            }
        };
        server.enqueue_data(Data::Flags(system_flags()));
        let perm: Vec<FlagPerm> = if read_only {
            vec![]
        } else {
            system_flags().into_iter().map(FlagPerm::from).collect()
        };
        server.enqueue_status(
            Status::ok(
                None,
                Some(Code::PermanentFlags(perm)),
                "Flags kept per user",
            )
            .expect("static text"),
        );
        server.enqueue_data(Data::Exists(
            u32::try_from(snap.messages.len()).unwrap_or(u32::MAX),
        ));
        server.enqueue_data(Data::Recent(0));
        server.enqueue_status(
            Status::ok(
                None,
                Some(Code::UidValidity(nz(snap.validity))),
                "UIDs valid",
            )
            .expect("static text"),
        );
        server.enqueue_status(
            Status::ok(
                None,
                Some(Code::UidNext(nz(snap.next_uid))),
                "Predicted next UID",
            )
            .expect("static text"),
        );
        self.seen_mail = *self.imap.new_mail.borrow();
        self.selected = Some(Selected {
            read_only,
            next_uid: snap.next_uid,
            msgs: snap.messages,
            looked_at: at,
            whole_at,
            whole_every: jittered(self.imap.whole_look),
        });
        server.enqueue_status(if read_only {
            ok(tag, Some(Code::ReadOnly), "EXAMINE completed")
        } else {
            ok(tag, Some(Code::ReadWrite), "SELECT completed")
        });
    }

    /// The bytes a user sees of a message (`None`: gone from the store meanwhile).
    async fn content(&self, m: &Message) -> Result<Option<Vec<u8>>, StoreError> {
        crate::mailbox::content(self.imap.storage.blobs.as_ref(), &m.rec).await
    }

    async fn fetch<S>(
        &mut self,
        conn: &mut Conn<S>,
        server: &mut Server,
        set: &SequenceSet,
        names: &[MessageDataItemName<'static>],
        uid: bool,
    ) -> Result<Result<(), StoreError>, DriveError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(sel) = &self.selected else {
            return Ok(Ok(()));
        };
        let picked = sel.pick(set, uid);
        let read_only = sel.read_only;
        let whole = |n: &MessageDataItemName<'_>| {
            matches!(
                n,
                MessageDataItemName::BodyExt {
                    section: None,
                    partial: None,
                    ..
                }
            )
        };
        let needs_bytes = names.iter().any(needs_bytes_for);
        let mut changes = Vec::new();
        for i in picked {
            let Some(sel) = &self.selected else { break };
            let m = sel.msgs[i].clone();
            let seq = nz(u32::try_from(i + 1).unwrap_or(u32::MAX));
            let sets_seen = !read_only
                && !m.flags.has(Flags::SEEN)
                && names.iter().any(|n| match n {
                    MessageDataItemName::BodyExt { peek, .. } => !peek,
                    MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
                    _ => false,
                });
            let flags = if sets_seen {
                changes.push(FlagChange {
                    uid: m.uid,
                    set: Flags::SEEN,
                    clear: Flags::default(),
                });
                m.flags.with(Flags::SEEN)
            } else {
                m.flags
            };
            if let Some(sel) = self.selected.as_mut() {
                sel.msgs[i].flags = flags;
            }
            // A whole message is streamed from the store, never built in memory.
            let streamed = names.iter().any(whole) && !shows_original(&m.rec);
            let bytes = if needs_bytes
                && (!streamed || names.iter().any(|n| !whole(n) && needs_bytes_for(n)))
            {
                match self.content(&m).await {
                    Ok(b) => b,
                    Err(e) => return Ok(Err(e)),
                }
            } else {
                None
            };
            let size = match &bytes {
                _ if !names.contains(&MessageDataItemName::Rfc822Size) => 0,
                Some(b) if shows_original(&m.rec) => u32::try_from(b.len()).unwrap_or(u32::MAX),
                _ if shows_original(&m.rec) => match self.content(&m).await {
                    Ok(b) => u32::try_from(b.map_or(0, |b| b.len())).unwrap_or(u32::MAX),
                    Err(e) => return Ok(Err(e)),
                },
                _ => u32::try_from(m.rec.size).unwrap_or(u32::MAX),
            };
            let mut items = Vec::new();
            if uid && !names.contains(&MessageDataItemName::Uid) {
                items.push(MessageDataItem::Uid(nz(m.uid)));
            }
            let parsed = bytes
                .as_deref()
                .and_then(|b| mail_parser::MessageParser::default().parse(b));
            let raw = bytes.as_deref().unwrap_or_default();
            let mut want_flags = sets_seen;
            for name in names {
                match name {
                    MessageDataItemName::Uid => items.push(MessageDataItem::Uid(nz(m.uid))),
                    MessageDataItemName::Flags => want_flags = true,
                    MessageDataItemName::Rfc822Size => {
                        items.push(MessageDataItem::Rfc822Size(size))
                    }
                    MessageDataItemName::InternalDate => {
                        if let Some(d) = internal_date(&m.rec) {
                            items.push(MessageDataItem::InternalDate(d));
                        }
                    }
                    MessageDataItemName::Envelope => {
                        if let Some(p) = &parsed {
                            items.push(MessageDataItem::Envelope(mime::envelope(p)));
                        }
                    }
                    MessageDataItemName::BodyStructure | MessageDataItemName::Body => {
                        if let Some(p) = &parsed {
                            let ext = matches!(name, MessageDataItemName::BodyStructure);
                            let bs = mime::body_structure(p, raw, ext);
                            items.push(if ext {
                                MessageDataItem::BodyStructure(bs)
                            } else {
                                MessageDataItem::Body(bs)
                            });
                        }
                    }
                    n if whole(n) && streamed => {}
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        let bytes = match (&parsed, section) {
                            (_, None) => Some(raw.to_vec()),
                            (Some(p), Some(s)) => mime::section_bytes(p, raw, Some(s)),
                            (None, Some(_)) => None,
                        }
                        .unwrap_or_default();
                        let (origin, bytes) = match partial {
                            Some((start, len)) => {
                                let s = (*start as usize).min(bytes.len());
                                let e = s.saturating_add(len.get() as usize).min(bytes.len());
                                (Some(*start), bytes[s..e].to_vec())
                            }
                            None => (None, bytes),
                        };
                        items.push(MessageDataItem::BodyExt {
                            section: section.clone().map(IntoStatic::into_static),
                            origin,
                            data: mime::nstring_literal(bytes),
                        });
                    }
                    MessageDataItemName::Rfc822 => {
                        items.push(MessageDataItem::Rfc822(mime::nstring_literal(raw.to_vec())));
                    }
                    MessageDataItemName::Rfc822Header => {
                        let b = parsed
                            .as_ref()
                            .and_then(|p| mime::section_bytes(p, raw, Some(&Section::Header(None))))
                            .unwrap_or_default();
                        items.push(MessageDataItem::Rfc822Header(mime::nstring_literal(b)));
                    }
                    MessageDataItemName::Rfc822Text => {
                        let b = parsed
                            .as_ref()
                            .and_then(|p| mime::section_bytes(p, raw, Some(&Section::Text(None))))
                            .unwrap_or_default();
                        items.push(MessageDataItem::Rfc822Text(mime::nstring_literal(b)));
                    }
                    _ => {}
                }
            }
            if want_flags {
                items.push(MessageDataItem::Flags(flag_list(flags)));
            }
            if streamed {
                if let Err(e) = self.stream(conn, server, seq, items, &m).await? {
                    return Ok(Err(e));
                }
            } else if let Ok(items) = Vec1::try_from(items) {
                server.enqueue_data(Data::Fetch { seq, items });
                // Written out before the next message is read: a FETCH of many large
                // messages holds one at a time.
                if bytes.is_some() {
                    conn.flush(server).await?;
                }
            }
        }
        Ok(self.save_flags(&changes).await)
    }

    /// `* n FETCH (... BODY[] {size}` then the message from the store in chunks: the
    /// other items encoded by imap-codec, the literal spliced in.
    async fn stream<S>(
        &self,
        conn: &mut Conn<S>,
        server: &mut Server,
        seq: NonZeroU32,
        items: Vec<MessageDataItem<'static>>,
        m: &Message,
    ) -> Result<Result<(), StoreError>, DriveError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut body = match self.imap.storage.blobs.open(&m.rec.blob_key()).await {
            Ok(b) => b,
            Err(StoreError::MissingBlob(_)) => {
                // Gone meanwhile (purged): the items without the body.
                if let Ok(items) = Vec1::try_from(items) {
                    server.enqueue_data(Data::Fetch { seq, items });
                }
                return Ok(Ok(()));
            }
            Err(e) => return Ok(Err(e)),
        };
        let size = m.rec.size;
        let mut head = match Vec1::try_from(items) {
            Ok(items) => {
                let data = Data::Fetch { seq, items };
                let mut b = ResponseCodec::default()
                    .encode(&Response::Data(data))
                    .dump();
                b.truncate(b.len().saturating_sub(3)); // ")\r\n"
                b.push(b' ');
                b
            }
            Err(_) => format!("* {seq} FETCH (").into_bytes(),
        };
        head.extend_from_slice(format!("BODY[] {{{size}}}\r\n").as_bytes());
        // Written in pieces of about CHUNK, the head with the first and the closing
        // parenthesis with the last: a small message goes out in one write (separate small
        // writes meet the client's delayed ACK).
        let mut out = head;
        let mut sent: u64 = 0;
        let mut buf = vec![0u8; CHUNK];
        loop {
            if sent < size {
                let want = usize::try_from((size - sent).min(CHUNK as u64)).unwrap_or(CHUNK);
                let n = body.read(&mut buf[..want]).await.map_err(DriveError::Io)?;
                if n == 0 {
                    // The stored bytes end before their record's size: the literal cannot
                    // be finished, and the connection cannot go on.
                    tracing::error!(id = %m.rec.id, "imap: stored message shorter than its record");
                    return Err(DriveError::Closed);
                }
                // IMAP4rev1 literals carry no NUL: replaced, as in the other responses.
                let chunk = &mut buf[..n];
                if memchr::memchr(0, chunk).is_some() {
                    chunk
                        .iter_mut()
                        .filter(|b| **b == 0)
                        .for_each(|b| *b = 0x80);
                }
                out.extend_from_slice(chunk);
                sent += n as u64;
            }
            let last = sent >= size;
            if last {
                out.extend_from_slice(b")\r\n");
            }
            if last || out.len() >= CHUNK {
                conn.write_raw(server, &out).await?;
                out.clear();
            }
            if last {
                break;
            }
        }
        conn.flush_raw().await?;
        Ok(Ok(()))
    }

    async fn search(
        &self,
        criteria: &[SearchKey<'_>],
        uid: bool,
    ) -> Result<Vec<NonZeroU32>, StoreError> {
        let Some(sel) = &self.selected else {
            return Ok(vec![]);
        };
        let largest = sel.largest();
        let bytes_too = search::needs_content(criteria);
        // A journal report's size is its original's: read only when a key asks for sizes.
        let sizes_too = search::needs_size(criteria);
        let mut hits = Vec::new();
        for (i, m) in sel.msgs.iter().enumerate() {
            let seq = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let bytes = if bytes_too || (sizes_too && shows_original(&m.rec)) {
                self.content(m).await?
            } else {
                None
            };
            let parsed = bytes
                .as_deref()
                .and_then(|b| mail_parser::MessageParser::default().parse(b));
            let size = match (&bytes, shows_original(&m.rec)) {
                (Some(b), true) => u32::try_from(b.len()).unwrap_or(u32::MAX),
                _ => u32::try_from(m.rec.size).unwrap_or(u32::MAX),
            };
            let c = Candidate {
                seq,
                uid: m.uid,
                flags: m.flags,
                rec: &m.rec,
                raw: bytes.as_deref(),
                parsed: parsed.as_ref(),
                size,
            };
            if criteria.iter().all(|k| search::matches(k, &c, largest)) {
                hits.push(nz(if uid { m.uid } else { seq }));
            }
        }
        Ok(hits)
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &mut self,
        server: &mut Server,
        tag: &Tag<'static>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
    ) -> Status<'static> {
        let Some(sel) = self.selected.as_mut() else {
            return bad(tag, "Select a mailbox first");
        };
        if sel.read_only {
            return no(tag, Some(Code::ReadOnly), "The mailbox is open read-only");
        }
        let given = flag_bits(flags);
        let mut changes = Vec::new();
        for i in sel.pick(set, uid) {
            let m = &mut sel.msgs[i];
            let (set, clear) = match kind {
                StoreType::Replace => (given, Flags(Flags::CLIENT.0 & !given.0)),
                StoreType::Add => (given, Flags::default()),
                StoreType::Remove => (Flags::default(), given),
            };
            let change = FlagChange {
                uid: m.uid,
                set,
                clear,
            };
            // Kept even when this session's copy says it changes nothing: another
            // session may have changed the stored flags meanwhile.
            let new = change.apply(m.flags);
            changes.push(change);
            m.flags = new;
            if response == StoreResponse::Answer {
                let mut items = vec![];
                if uid {
                    items.push(MessageDataItem::Uid(nz(m.uid)));
                }
                items.push(MessageDataItem::Flags(flag_list(new)));
                if let Ok(items) = Vec1::try_from(items) {
                    server.enqueue_data(Data::Fetch {
                        seq: nz(u32::try_from(i + 1).unwrap_or(u32::MAX)),
                        items,
                    });
                }
            }
        }
        match self.save_flags(&changes).await {
            Ok(()) => ok(tag, None, "STORE completed"),
            Err(e) => {
                tracing::error!(error = %e, "imap: cannot keep the flags");
                no(
                    tag,
                    Some(code("UNAVAILABLE")),
                    "The flags could not be kept; try again",
                )
            }
        }
    }

    /// EXPUNGE, UID EXPUNGE (`only`) and CLOSE (`report` false): messages marked
    /// \Deleted leave this user's view (hidden, never deleted).
    async fn expunge(
        &mut self,
        server: &mut Server,
        tag: &Tag<'static>,
        only: Option<&SequenceSet>,
        report: bool,
    ) -> Status<'static> {
        let Some(sel) = self.selected.as_mut() else {
            return bad(tag, "Select a mailbox first");
        };
        if sel.read_only {
            return if report {
                no(tag, Some(Code::ReadOnly), "The mailbox is open read-only")
            } else {
                ok(tag, None, "CLOSE completed")
            };
        }
        let largest = sel.largest().uid;
        let gone: Vec<usize> = (0..sel.msgs.len())
            .filter(|&i| {
                let m = &sel.msgs[i];
                m.flags.has(Flags::DELETED)
                    && only.is_none_or(|set| search::in_set(set, m.uid, largest))
            })
            .collect();
        let changes: Vec<FlagChange> = gone
            .iter()
            .map(|&i| FlagChange {
                uid: sel.msgs[i].uid,
                set: Flags::HIDDEN,
                clear: Flags::default(),
            })
            .collect();
        if let Err(e) = self.save_flags(&changes).await {
            tracing::error!(error = %e, "imap: cannot keep the expunge");
            return no(tag, Some(code("UNAVAILABLE")), "Nothing removed; try again");
        }
        let Some(sel) = self.selected.as_mut() else {
            return bad(tag, "Select a mailbox first");
        };
        for &i in gone.iter().rev() {
            sel.msgs.remove(i);
            if report {
                server.enqueue_data(Data::Expunge(nz(u32::try_from(i + 1).unwrap_or(u32::MAX))));
            }
        }
        ok(tag, None, "Removed from your view; the held mail is kept")
    }

    /// One command; `Some` when the connection ends (LOGOUT) or turns to TLS.
    async fn command<S>(
        &mut self,
        conn: &mut Conn<S>,
        server: &mut Server,
        command: Command<'static>,
    ) -> Result<Option<End>, DriveError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Command { tag, body } = command;
        let unavailable = |tag: &Tag<'static>, e: &StoreError| {
            tracing::error!(error = %e, "imap: the store did not answer");
            no(
                tag,
                Some(code("UNAVAILABLE")),
                "The store did not answer; try again",
            )
        };
        match body {
            CommandBody::Capability => {
                server.enqueue_data(Data::Capability(self.capabilities()));
                server.enqueue_status(ok(&tag, None, "CAPABILITY completed"));
            }
            CommandBody::Noop | CommandBody::Check => {
                self.refresh(server).await;
                server.enqueue_status(ok(&tag, None, "NOOP completed"));
            }
            CommandBody::Logout => {
                server.enqueue_status(Status::bye(None, "Logging out").expect("static text"));
                server.enqueue_status(ok(&tag, None, "LOGOUT completed"));
                conn.flush(server).await?;
                return Ok(Some(End::Closed));
            }
            CommandBody::StartTLS => {
                if self.tls || self.imap.tls.is_none() || self.account.is_some() {
                    server.enqueue_status(bad(&tag, "STARTTLS not available"));
                } else {
                    server.enqueue_status(ok(&tag, None, "Begin TLS negotiation now"));
                    conn.flush(server).await?;
                    return Ok(Some(End::StartTls));
                }
            }
            CommandBody::Login { username, password } => {
                if self.account.is_some() {
                    server.enqueue_status(bad(&tag, "Already logged in"));
                } else if !self.may_log_in() {
                    server.enqueue_status(no(
                        &tag,
                        Some(code("PRIVACYREQUIRED")),
                        "STARTTLS first: no passwords in plain text",
                    ));
                } else {
                    let name = String::from_utf8_lossy(username.as_ref()).into_owned();
                    let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                    let status = self.login(&tag, &name, &pass).await;
                    server.enqueue_status(status);
                }
            }
            CommandBody::Id { .. } => {
                server.enqueue_data(Data::Id {
                    parameters: Some(vec![(
                        IString::try_from("name").expect("static"),
                        NString::try_from("standby-mx").expect("static"),
                    )]),
                });
                server.enqueue_status(ok(&tag, None, "ID completed"));
            }
            _ if self.account.is_none() => {
                server.enqueue_status(bad(&tag, "Log in first"));
            }
            CommandBody::Enable { .. } => {
                server.enqueue_data(Data::Enabled {
                    capabilities: vec![],
                });
                server.enqueue_status(ok(&tag, None, "ENABLE completed"));
            }
            CommandBody::Namespace => {
                server.enqueue_data(Data::Namespace {
                    personal: vec![Namespace::new(
                        IString::try_from("").expect("static"),
                        Some(QuotedChar::try_from('/').expect("static")),
                    )],
                    other: vec![],
                    shared: vec![],
                });
                server.enqueue_status(ok(&tag, None, "NAMESPACE completed"));
            }
            CommandBody::List {
                mailbox_wildcard, ..
            }
            | CommandBody::Lsub {
                mailbox_wildcard, ..
            } => {
                let pattern: Vec<u8> = match &mailbox_wildcard {
                    ListMailbox::Token(t) => t.as_ref().to_vec(),
                    ListMailbox::String(s) => s.as_ref().to_vec(),
                };
                let delimiter = Some(QuotedChar::try_from('/').expect("static"));
                if pattern.is_empty() {
                    server.enqueue_data(Data::List {
                        items: vec![FlagNameAttribute::Noselect],
                        delimiter,
                        mailbox: Mailbox::try_from("").expect("static"),
                    });
                } else if wildcard_matches(&pattern, b"INBOX") {
                    server.enqueue_data(Data::List {
                        items: vec![FlagNameAttribute::from(
                            Atom::try_from("HasNoChildren").expect("static"),
                        )],
                        delimiter,
                        mailbox: Mailbox::Inbox,
                    });
                }
                server.enqueue_status(ok(&tag, None, "LIST completed"));
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => {
                if mailbox != Mailbox::Inbox {
                    server.enqueue_status(no(&tag, Some(code("NONEXISTENT")), "Only INBOX here"));
                    return Ok(None);
                }
                let Some(account) = self.account.clone() else {
                    server.enqueue_status(bad(&tag, "Log in first"));
                    return Ok(None);
                };
                let snap = match self.open(&account).await {
                    Ok(s) => s,
                    Err(e) => {
                        server.enqueue_status(unavailable(&tag, &e));
                        return Ok(None);
                    }
                };
                let count = u32::try_from(snap.messages.len()).unwrap_or(u32::MAX);
                let unseen = snap
                    .messages
                    .iter()
                    .filter(|m| !m.flags.has(Flags::SEEN))
                    .count();
                let items: Vec<StatusDataItem> = item_names
                    .iter()
                    .filter_map(|n| match n {
                        StatusDataItemName::Messages => Some(StatusDataItem::Messages(count)),
                        StatusDataItemName::Recent => Some(StatusDataItem::Recent(0)),
                        StatusDataItemName::UidNext => {
                            Some(StatusDataItem::UidNext(nz(snap.next_uid)))
                        }
                        StatusDataItemName::UidValidity => {
                            Some(StatusDataItem::UidValidity(nz(snap.validity)))
                        }
                        StatusDataItemName::Unseen => Some(StatusDataItem::Unseen(
                            u32::try_from(unseen).unwrap_or(u32::MAX),
                        )),
                        _ => None,
                    })
                    .collect();
                server.enqueue_data(Data::Status {
                    mailbox: Mailbox::Inbox,
                    items: items.into(),
                });
                server.enqueue_status(ok(&tag, None, "STATUS completed"));
            }
            CommandBody::Select { mailbox, .. } => self.select(server, &tag, &mailbox, false).await,
            CommandBody::Examine { mailbox, .. } => self.select(server, &tag, &mailbox, true).await,
            _ if self.selected.is_none() => {
                server.enqueue_status(bad(&tag, "Select a mailbox first"));
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                ..
            } => {
                let names = match macro_or_item_names {
                    MacroOrMessageDataItemNames::Macro(m) => m
                        .expand()
                        .into_iter()
                        .map(IntoStatic::into_static)
                        .collect::<Vec<_>>(),
                    MacroOrMessageDataItemNames::MessageDataItemNames(n) => n,
                };
                match self.fetch(conn, server, &sequence_set, &names, uid).await {
                    Ok(Ok(())) => server.enqueue_status(ok(&tag, None, "FETCH completed")),
                    Ok(Err(e)) => server.enqueue_status(unavailable(&tag, &e)),
                    Err(e) => return Err(e),
                };
            }
            CommandBody::Search { criteria, uid, .. } => {
                match self.search(criteria.as_ref(), uid).await {
                    Ok(hits) => {
                        server.enqueue_data(Data::Search(hits));
                        server.enqueue_status(ok(&tag, None, "SEARCH completed"));
                    }
                    Err(e) => {
                        server.enqueue_status(unavailable(&tag, &e));
                    }
                }
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                ..
            } => {
                let status = self
                    .store(server, &tag, &sequence_set, kind, response, &flags, uid)
                    .await;
                server.enqueue_status(status);
            }
            CommandBody::Expunge => {
                let status = self.expunge(server, &tag, None, true).await;
                server.enqueue_status(status);
            }
            CommandBody::ExpungeUid { sequence_set } => {
                let status = self.expunge(server, &tag, Some(&sequence_set), true).await;
                server.enqueue_status(status);
            }
            CommandBody::Close => {
                let status = self.expunge(server, &tag, None, false).await;
                self.selected = None;
                server.enqueue_status(status);
            }
            CommandBody::Unselect => {
                self.selected = None;
                server.enqueue_status(ok(&tag, None, "UNSELECT completed"));
            }
            _ => {
                server.enqueue_status(bad(&tag, "Command not supported"));
            }
        }
        Ok(None)
    }
}

/// Whether fetching `n` needs the message's bytes.
fn needs_bytes_for(n: &MessageDataItemName<'_>) -> bool {
    matches!(
        n,
        MessageDataItemName::Envelope
            | MessageDataItemName::BodyStructure
            | MessageDataItemName::Body
            | MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Header
            | MessageDataItemName::Rfc822Text
    )
}

/// Whether a LIST pattern (`*` and `%` wildcards) matches `name`, case-insensitively (the
/// only name is INBOX). Linear in the pattern: a run of wildcards is one, and the match
/// is the classic greedy one with a single backtrack point, so a pattern of a thousand
/// stars costs a thousand steps, not an exponential search.
fn wildcard_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*' | b'%') => {
                while matches!(pattern.get(p), Some(b'*' | b'%')) {
                    p += 1;
                }
                star = Some((p, n));
            }
            Some(c) if c.eq_ignore_ascii_case(&name[n]) => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..]
        .iter()
        .all(|c| matches!(c, b'*' | b'%'))
}

#[cfg(test)]
mod tests {
    use super::wildcard_matches;
    use crate::imap::Imap;
    use crate::model::{MessageId, Record, Summary};
    use crate::ports::{Clock, Storage, SystemClock};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    /// An IMAP listener on loopback over `storage`, alice's password `pw`.
    async fn listener(
        storage: Storage,
        dir: &std::path::Path,
        poll: Duration,
        whole_look: Duration,
    ) -> u16 {
        use crate::backend::{LocalUserFiles, MemLoginLimits};
        use crate::ports::UserFiles;
        let files = Arc::new(LocalUserFiles::new(dir.join("users.passwd"), None));
        let line = format!(
            "alice@example.test:{}\n",
            crate::users::Hash::argon2id("pw").field()
        );
        files.write_passwd(line.as_bytes(), None).await.unwrap();
        let users = Arc::new(crate::users::Users::load(files, None, None).await.unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let logins = Arc::new(crate::users::login::Logins::new(
            users,
            Arc::new(MemLoginLimits::default()),
            storage.audit.clone(),
            clock.clone(),
            Arc::default(),
        ));
        let (tx, new_mail) = tokio::sync::watch::channel(0);
        // Kept for the test's length: a closed channel would wake IDLE at every turn.
        std::mem::forget(tx);
        let imap = Arc::new(Imap {
            storage,
            logins,
            clock,
            history_days: 30,
            tls: None,
            allow_plaintext_auth: true,
            new_mail,
            poll,
            whole_look,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                tokio::spawn(super::serve_plain(imap.clone(), tcp, peer.ip()));
            }
        });
        port
    }

    /// Reads lines until one starts with `want` (a panic past `within`); every line read.
    async fn until(io: &mut BufReader<TcpStream>, want: &str, within: Duration) -> Vec<String> {
        let t = Instant::now();
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            let left = within.saturating_sub(t.elapsed());
            match tokio::time::timeout(left, io.read_line(&mut line)).await {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("no {want:?} within {within:?} ({other:?}); read {seen:?}"),
            }
            let done = line.starts_with(want);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }

    async fn session(port: u16) -> BufReader<TcpStream> {
        let mut io = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        until(&mut io, "* OK", Duration::from_secs(5)).await;
        io.get_mut()
            .write_all(b"a LOGIN alice@example.test pw\r\n")
            .await
            .unwrap();
        until(&mut io, "a OK", Duration::from_secs(30)).await;
        io.get_mut().write_all(b"s SELECT INBOX\r\n").await.unwrap();
        until(&mut io, "s OK", Duration::from_secs(5)).await;
        io
    }

    fn to_alice(age: chrono::Duration) -> Record {
        let at = chrono::Utc::now() - age;
        Record::held(
            MessageId::new(at),
            "sender@example.org".into(),
            vec!["alice@example.test".into()],
            at,
            (10, String::new()),
            Summary::default(),
        )
    }

    /// Between whole looks an idling session lists only the last minutes' mail: a new
    /// message shows at the next poll, another session's EXPUNGE and flags too (they
    /// come from the mailbox's entries, not the listing); a message entering the view
    /// with a received time hours old (a late recipient merge, `standby retry`) shows
    /// at the next whole look, not before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_sees_new_mail_at_each_poll_and_late_entries_at_the_whole_look() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::memory();
        let index = storage.index.clone();
        let whole = Duration::from_secs(4);
        let port = listener(storage, dir.path(), Duration::from_millis(200), whole).await;
        let (first, second) = (
            to_alice(chrono::Duration::minutes(1)),
            to_alice(chrono::Duration::seconds(30)),
        );
        index.insert(&first).await.unwrap();
        index.insert(&second).await.unwrap();
        let mut idle = session(port).await;
        let selected = Instant::now();
        idle.get_mut().write_all(b"i IDLE\r\n").await.unwrap();
        until(&mut idle, "+ ", Duration::from_secs(5)).await;

        index
            .insert(&to_alice(chrono::Duration::zero()))
            .await
            .unwrap();
        until(&mut idle, "* 3 EXISTS", Duration::from_secs(2)).await;

        let mut other = session(port).await;
        other
            .get_mut()
            .write_all(b"f UID STORE 2 +FLAGS (\\Flagged)\r\ne UID STORE 1 +FLAGS (\\Deleted)\r\nx EXPUNGE\r\n")
            .await
            .unwrap();
        until(&mut other, "x OK", Duration::from_secs(5)).await;
        let told = until(&mut idle, "* 1 EXPUNGE", Duration::from_secs(2)).await;
        assert!(
            told.iter()
                .any(|l| l.starts_with("* 2 FETCH") && l.contains("\\Flagged")),
            "the other session's flag: {told:?}"
        );

        let late = to_alice(chrono::Duration::hours(3));
        index.insert(&late).await.unwrap();
        let inserted = Instant::now();
        until(&mut idle, "* 3 EXISTS", whole + Duration::from_secs(3)).await;
        let shown = Instant::now();
        assert!(
            shown.duration_since(selected) >= whole.mul_f64(0.9),
            "shown {:?} after the whole look that started the session, {:?} after it was \
             inserted: a look between whole ones listed it",
            shown.duration_since(selected),
            shown.duration_since(inserted)
        );
    }

    /// A message received long before (a late entry) that another session numbered while
    /// this one idled: the next look that would show a later UID looks at the whole
    /// mailbox first, so the session shows it too, in UID order, and never skips it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_entry_another_session_numbered_is_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::memory();
        let index = storage.index.clone();
        // No whole look of its own during the test.
        let whole = Duration::from_secs(600);
        let port = listener(storage, dir.path(), Duration::from_millis(200), whole).await;
        index
            .insert(&to_alice(chrono::Duration::minutes(2)))
            .await
            .unwrap();
        index
            .insert(&to_alice(chrono::Duration::minutes(1)))
            .await
            .unwrap();
        let mut a = session(port).await;
        a.get_mut().write_all(b"i IDLE\r\n").await.unwrap();
        until(&mut a, "+ ", Duration::from_secs(5)).await;
        // A late entry; another session's SELECT gives it UID 3.
        index
            .insert(&to_alice(chrono::Duration::hours(3)))
            .await
            .unwrap();
        let mut b = session(port).await;
        b.get_mut().write_all(b"l LOGOUT\r\n").await.unwrap();
        until(&mut b, "l OK", Duration::from_secs(5)).await;
        // New mail, UID 4: the look that finds it finds UID 3 as well.
        index
            .insert(&to_alice(chrono::Duration::zero()))
            .await
            .unwrap();
        until(&mut a, "* 4 EXISTS", Duration::from_secs(3)).await;
        a.get_mut()
            .write_all(b"DONE\r\nf UID FETCH 1:* (UID)\r\n")
            .await
            .unwrap();
        let lines = until(&mut a, "f OK", Duration::from_secs(5)).await;
        let uids: Vec<&String> = lines.iter().filter(|l| l.starts_with("* ")).collect();
        assert_eq!(uids.len(), 4, "{lines:?}");
        assert!(
            uids[2].contains("UID 3") && uids[3].contains("UID 4"),
            "{lines:?}"
        );
    }

    #[test]
    fn list_patterns_match_inbox_and_take_linear_time() {
        for (p, m) in [
            ("*", true),
            ("%", true),
            ("INBOX", true),
            ("inbox", true),
            ("IN*", true),
            ("*X", true),
            ("I%B%X", true),
            ("*Z", false),
            ("INBOX2", false),
            ("", false),
            ("Sent", false),
        ] {
            assert_eq!(wildcard_matches(p.as_bytes(), b"INBOX"), m, "{p}");
        }
        // Thousands of wildcards that never match: answered at once.
        let mut hostile = "*".repeat(5000);
        hostile.push('q');
        let t = std::time::Instant::now();
        assert!(!wildcard_matches(hostile.as_bytes(), b"INBOX"));
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }
}
