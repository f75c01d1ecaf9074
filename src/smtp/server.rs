//! The SMTP listener: sockets, timeouts, TLS and streaming DATA to the spool.
//!
//! Protocol decisions are made by [`Session`]; this file only moves bytes. Replies are
//! buffered and flushed when the client's pipelined input is used up (RFC 2920). The
//! message is decoded and written to the spool as it arrives, so memory per connection
//! stays at the read buffer whatever the message size; the 250 after DATA is sent only
//! once [`Incoming::commit`](crate::ingest::Incoming::commit) returned (which never
//! waits for DNS: the sender's SPF is checked after the 250).
//!
//! Every reply to the client is queued through one function, which logs each refusal
//! (4xx, 5xx) with its code, the client and the domain involved: the operator's answer to
//! "why did my mail bounce", with no refusal path left out.
//!
//! No client can hold the listener: every write has a timeout (a client that pipelines
//! and never reads is dropped), a whole command line must arrive within
//! `command_timeout_secs` and the whole session within `session_timeout_secs` (so bytes
//! trickled one at a time do not keep a slot), DATA must average
//! `min_data_rate_bytes_per_sec`, and one client address (an IPv6 /64) gets at most
//! `max_connections_per_ip` sessions at once and `max_connection_rate_per_ip` new ones
//! a minute; past those, 421 4.7.0 before any slot is taken. Clients spread over enough
//! addresses to fill the slots anyway (a command every few minutes each) meet stress
//! mode, as in Postfix: while fewer than a fifth of the slots are free, every wait for a
//! client is cut to [`STRESS_TIMEOUT`], so idle sessions give their slots back in
//! seconds, not at the end of `session_timeout_secs`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::data::{DataDecoder, HopCounter};
use super::session::{DataOutcome, MAX_COMMAND_LINE, MAX_HOPS, Next, Policy, Session, reply};
use crate::config::{BindError, ListenAddrs};
use crate::model::auth_results::StripOurs;
use crate::model::{Envelope, Origin, redact};
use crate::ports::{ClientCheck, Inbound, Listing};
use crate::ports::{ContentCheck, ContentMeta, ContentVerdict};

/// Any byte stream a session can run over (TCP, TLS over TCP, an in-memory pipe in tests).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const READ_CHUNK: usize = 64 * 1024;

/// Everything a connection needs; shared by all connections.
#[derive(Clone)]
pub struct Server {
    pub policy: Policy,
    pub spool: Arc<dyn Inbound>,
    pub tls: Option<TlsAcceptor>,
    /// Implicit TLS (the submission listener's `listen_tls`, port 465): the handshake
    /// comes before the greeting.
    pub implicit_tls: bool,
    pub max_connections: usize,
    pub command_timeout: Duration,
    pub limits: Limits,
    /// `[filter] dnsbl` on the MX listener: the blocklists a client is looked up in at
    /// connect, and how long the lookups may take together (see `crate::smtp::dnsbl`).
    pub client_check: Option<Blocklists>,
    /// `[filter] rspamd_url` on the MX listener: the content filter each message is
    /// checked with before the 250, and how long a check may take (see
    /// `crate::smtp::rspamd`).
    pub content_check: Option<ContentFilter>,
}

/// The blocklists a client is looked up in, and how long the lookups may take together.
pub type Blocklists = (Arc<dyn ClientCheck>, Duration);

/// The content filter, and how long one check may take.
pub type ContentFilter = (Arc<dyn ContentCheck>, Duration);

/// Messages larger than this are not sent to the content filter (taken, recorded
/// unfiltered): spam is small, and a copy of each message in flight is held in memory.
const SCAN_LIMIT: usize = 4 * 1024 * 1024;

/// All copies held for the content filter at once, at most: past it, a message is
/// taken unfiltered rather than the process growing with the connections.
const SCAN_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes held by [`ScanCopy`]s now.
static SCAN_HELD: AtomicUsize = AtomicUsize::new(0);

/// Bytes counted in a budget until this is dropped: when the check is done, or when the
/// session holding them ends or is cancelled mid-check.
struct Reserved {
    counter: &'static AtomicUsize,
    n: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// A message's copy for the content filter, counted against [`SCAN_BUDGET`].
struct ScanCopy {
    bytes: Vec<u8>,
    reserved: Reserved,
}

impl ScanCopy {
    fn new(counter: &'static AtomicUsize) -> Self {
        ScanCopy {
            bytes: Vec::new(),
            reserved: Reserved { counter, n: 0 },
        }
    }

    /// Append `bytes`; false (and nothing appended) past [`SCAN_LIMIT`] or the budget.
    fn push(&mut self, bytes: &[u8]) -> bool {
        if self.bytes.len() + bytes.len() > SCAN_LIMIT {
            return false;
        }
        let counter = self.reserved.counter;
        if counter.fetch_add(bytes.len(), Ordering::SeqCst) + bytes.len() > SCAN_BUDGET {
            counter.fetch_sub(bytes.len(), Ordering::SeqCst);
            return false;
        }
        self.reserved.n += bytes.len();
        self.bytes.extend_from_slice(bytes);
        true
    }

    /// The bytes, and their place in the budget, which they keep until it is dropped.
    fn take(&mut self) -> (Vec<u8>, Reserved) {
        let counter = self.reserved.counter;
        (
            std::mem::take(&mut self.bytes),
            std::mem::replace(&mut self.reserved, Reserved { counter, n: 0 }),
        )
    }
}

/// The listener's defences against clients that hold slots (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest a session may last.
    pub session_timeout: Duration,
    /// Slowest average DATA rate, bytes per second (0: none).
    pub min_data_rate: u64,
    /// Sessions at once per client address (IPv6: per /64).
    pub max_per_ip: usize,
    /// New connections per minute per client address (0: no limit).
    pub rate_per_ip: u32,
    /// The spool's directory and the free bytes its file system must keep, checked at MAIL.
    pub min_free: Option<(PathBuf, u64)>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            session_timeout: Duration::from_secs(1800),
            min_data_rate: 1024,
            max_per_ip: 20,
            rate_per_ip: 0,
            min_free: None,
        }
    }
}

/// Grace before the DATA rate counts (a client may pause before its first bytes).
const DATA_RATE_GRACE: Duration = Duration::from_secs(10);

/// The key per-client limits count by: the address, or an IPv6 address's /64 (one
/// host usually owns a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
        v4 => v4,
    }
}

#[derive(Default)]
struct PerClient {
    active: usize,
    /// When its connections of the last minute were opened.
    recent: VecDeque<Instant>,
}

/// Sessions and recent connections per client; an entry goes when both are empty.
#[derive(Default)]
struct Clients(Mutex<HashMap<IpAddr, PerClient>>);

/// One client's session slot; dropping it frees the slot.
struct ClientSlot {
    clients: Arc<Clients>,
    key: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut map = self.clients.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get_mut(&self.key) {
            c.active = c.active.saturating_sub(1);
        }
    }
}

impl Clients {
    /// A slot for a new connection from `ip`, or the reason there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<ClientSlot, &'static str> {
        let key = client_key(ip);
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, c| {
                c.recent.retain(|t| now.duration_since(*t) < minute);
                c.active > 0 || !c.recent.is_empty()
            });
        }
        let c = map.entry(key).or_default();
        while c
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            c.recent.pop_front();
        }
        // Refused attempts count too, as with Postfix's anvil: hammering keeps a client out.
        if limits.rate_per_ip > 0 {
            c.recent.push_back(now);
            if c.recent.len() > limits.rate_per_ip as usize {
                return Err("Too many connections from your address per minute, try again later");
            }
        }
        if c.active >= limits.max_per_ip {
            return Err("Too many connections from your address, try again later");
        }
        c.active += 1;
        Ok(ClientSlot {
            clients: self.clone(),
            key,
        })
    }
}

/// Free bytes on the file system of `dir` for unprivileged writers; `None` if unknown.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The listener's current [`Server`]; `standby serve` swaps in a new one on SIGHUP. Each
/// connection loads it once, when accepted, and keeps that one to its end.
pub type Shared = Arc<arc_swap::ArcSwap<Server>>;

impl Server {
    /// This server as the listener's replaceable [`Shared`] state.
    pub fn shared(self) -> Shared {
        Arc::new(arc_swap::ArcSwap::from_pointee(self))
    }
}

/// Bind every address of `addrs` (IPv6 sockets IPv6-only, so `[::]:25` and `0.0.0.0:25`
/// coexist); call inside the runtime.
///
/// # Errors
/// The first address that cannot be bound.
pub fn listeners(addrs: &ListenAddrs) -> Result<Vec<TcpListener>, BindError> {
    addrs
        .bind()?
        .into_iter()
        .zip(addrs.iter())
        .map(|(l, &addr)| TcpListener::from_std(l).map_err(|source| BindError { addr, source }))
        .collect()
}

/// The bound addresses (ports resolved), for the log.
pub fn local_addrs(listeners: &[TcpListener]) -> String {
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    addrs.join(", ")
}

/// The next connection on any of `listeners`, starting the search after the one that
/// delivered last, so a busy listener cannot starve the others.
async fn accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        let n = listeners.len();
        for k in 0..n {
            let i = (*next + k) % n;
            if let Poll::Ready(res) = listeners[i].poll_accept(cx) {
                *next = (i + 1) % n;
                return Poll::Ready(res);
            }
        }
        Poll::Pending
    })
    .await
}

/// Accept connections on every listener, all under one connection limit, until
/// `shutdown` completes; then give open sessions a few seconds.
pub async fn run(
    listeners: Vec<TcpListener>,
    current: Shared,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let max_connections = current.load().max_connections;
    let limit = Arc::new(Semaphore::new(max_connections));
    let clients = Arc::new(Clients::default());
    let mut next = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            res = accept_any(&listeners, &mut next) => match res {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let server = current.load_full();
        // Per client first, so one client's flood never takes the slots of others.
        let admitted = clients.admit(peer.ip(), &server.limits).and_then(|slot| {
            match limit.clone().try_acquire_owned() {
                Ok(permit) => Ok((slot, permit)),
                Err(_) => Err("Too many connections, try again later"),
            }
        });
        match admitted {
            Ok((slot, permit)) => {
                let stress = Stress {
                    slots: limit.clone(),
                    max: max_connections,
                };
                tokio::spawn(async move {
                    if let Err(e) =
                        serve_connection_under(&server, Box::new(stream), peer, Some(stress)).await
                    {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    drop(permit);
                    drop(slot);
                });
            }
            Err(why) => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let msg = reply(421, "4.7.0", why);
                    log_refusals(&msg, peer, "", None);
                    let bye = async {
                        let _ = stream.write_all(msg.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), bye).await;
                });
            }
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        limit.acquire_many(max_connections as u32),
    )
    .await;
}

/// How long a client is waited for while the listener is under stress (Postfix:
/// `smtpd_timeout = ${stress?{10}:{300}}s`).
pub const STRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the listener is short of slots: fewer than a fifth of them free.
struct Stress {
    slots: Arc<Semaphore>,
    max: usize,
}

impl Stress {
    fn on(&self) -> bool {
        self.slots.available_permits() * 5 < self.max
    }
}

/// Buffers of one connection.
struct Conn {
    io: Box<dyn Io>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    timeout: Duration,
    stress: Option<Stress>,
    peer: SocketAddr,
    /// The end of the session, whatever the client does.
    session_end: Instant,
}

enum Read {
    Data,
    Eof,
    TimedOut,
}

impl Conn {
    fn stressed(&self) -> bool {
        self.stress.as_ref().is_some_and(Stress::on)
    }

    /// How long the client is waited for from now: the command timeout, or
    /// [`STRESS_TIMEOUT`] while the listener is short of slots.
    fn wait(&self) -> Duration {
        if self.stressed() {
            self.timeout.min(STRESS_TIMEOUT)
        } else {
            self.timeout
        }
    }

    /// Queue a reply for the client. Every reply goes through here, so every refusal in
    /// one is logged (see [`log_refusals`]): `helo` as the client gave it, `about` the
    /// address the reply concerns.
    fn say(&mut self, reply: &str, helo: &str, about: Option<&str>) {
        log_refusals(reply, self.peer, helo, about);
        self.out.extend_from_slice(reply.as_bytes());
    }

    /// Send what is queued; a client that does not read it within the command timeout
    /// (or before the session's end) is a `TimedOut` error.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let until = (Instant::now() + self.wait()).min(self.session_end);
            let write = async {
                self.io.write_all(&self.out).await?;
                self.io.flush().await
            };
            match tokio::time::timeout_at(until, write).await {
                Ok(res) => res?,
                Err(_) => {
                    tracing::info!(peer = %self.peer, "client does not read its replies; dropped");
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            }
            self.out.clear();
        }
        Ok(())
    }

    /// Read what the client sent, waiting until `until` at the latest (and never past
    /// the session's end).
    async fn read_more(&mut self, until: Instant) -> std::io::Result<Read> {
        self.inbuf.reserve(READ_CHUNK);
        let until = until.min(self.session_end);
        // Looked at again every STRESS_TIMEOUT: once the listener is short of slots, a
        // client idle that long is cut off, although its own deadline is further out.
        // (`read_buf` is cancel-safe: nothing read is lost when a look times out.)
        let waiting_since = Instant::now();
        loop {
            // Checked before reading: a client that always has bytes waiting would
            // otherwise never see its deadline (the read is ready before the timer).
            if Instant::now() >= until {
                return Ok(Read::TimedOut);
            }
            let look = until.min(Instant::now() + STRESS_TIMEOUT);
            match tokio::time::timeout_at(look, self.io.read_buf(&mut self.inbuf)).await {
                Err(_) if look < until && waiting_since.elapsed() < self.wait() => continue,
                Err(_) => return Ok(Read::TimedOut),
                Ok(Ok(0)) => return Ok(Read::Eof),
                Ok(Ok(_)) => return Ok(Read::Data),
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// The blocklist entry that keeps `ip` out, if any: on the MX listener only (users log
/// in on the submission listener, often from addresses policy lists name), never for
/// the clients journal copies come from; a list that does not answer in time lets the
/// client in (logged: the session is unfiltered).
async fn blocklisted(server: &Server, ip: IpAddr) -> Option<Listing> {
    let (check, limit) = server.client_check.as_ref()?;
    if server.policy.submission.is_some() || server.policy.journal_allow.permits(ip) {
        return None;
    }
    match tokio::time::timeout(*limit, check.listed(ip)).await {
        Ok(Ok(listing)) => listing,
        Ok(Err(why)) => {
            tracing::warn!(client = %ip, error = %why, "dnsbl: no answer; client let in unfiltered");
            None
        }
        Err(_) => {
            tracing::warn!(client = %ip, "dnsbl: no answer in time; client let in unfiltered");
            None
        }
    }
}

/// Commands a refused client may send, each answered 503, and how long it may take
/// over them, before the connection is closed (421) without its QUIT: a client known
/// to be bad holds a slot seconds, not the command timeout ten times over.
const REFUSED_COMMANDS: usize = 10;
const REFUSED_FOR: Duration = Duration::from_secs(20);

/// RFC 5321 §3.1: a server that will not serve a client says 554 instead of 220, then
/// waits for QUIT, answering anything else 503.
async fn refuse_listed(
    conn: &mut Conn,
    hostname: &str,
    ip: IpAddr,
    listing: &Listing,
) -> std::io::Result<()> {
    let mut line = format!(
        "554 5.7.1 {hostname} Service unavailable; client [{ip}] blocked using {}",
        listing.zone
    );
    if let Some(r) = &listing.reason {
        line.push_str("; ");
        line.push_str(r);
    }
    // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF (the reason
    // is ASCII, so any cut is at a character).
    line.truncate(510);
    line.push_str("\r\n");
    // Logged (with the code, the client and the zone) as every refusal is; the 503s
    // that may follow are not: a listed bot's pipelined commands are no news.
    conn.say(&line, "", None);
    conn.flush().await?;
    let until = (Instant::now() + REFUSED_FOR).min(conn.session_end);
    let mut answered = 0;
    loop {
        if let Some(pos) = conn.inbuf.iter().position(|&b| b == b'\n') {
            let cmd: Vec<u8> = conn.inbuf.drain(..=pos).collect();
            if cmd
                .get(..4)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"QUIT"))
            {
                conn.out
                    .extend_from_slice(format!("221 2.0.0 {hostname} Bye\r\n").as_bytes());
                return conn.flush().await;
            }
            answered += 1;
            if answered > REFUSED_COMMANDS {
                break;
            }
            conn.out
                .extend_from_slice(b"503 5.5.1 Error: no service; send QUIT\r\n");
            conn.flush().await?;
            continue;
        }
        if conn.inbuf.len() > MAX_COMMAND_LINE {
            break;
        }
        match conn.read_more(until).await? {
            Read::Data => {}
            Read::Eof => return Ok(()),
            Read::TimedOut => break,
        }
    }
    conn.out
        .extend_from_slice(format!("421 4.7.0 {hostname} Closing connection\r\n").as_bytes());
    conn.flush().await
}

/// Run one SMTP session over `io` until QUIT, EOF, timeout or error.
pub async fn serve_connection(
    server: &Server,
    io: Box<dyn Io>,
    peer: SocketAddr,
) -> std::io::Result<()> {
    serve_connection_under(server, io, peer, None).await
}

/// [`serve_connection`], with waits cut short while `stress` says the listener is short
/// of slots.
async fn serve_connection_under(
    server: &Server,
    io: Box<dyn Io>,
    peer: SocketAddr,
    stress: Option<Stress>,
) -> std::io::Result<()> {
    let mut conn = Conn {
        io,
        inbuf: Vec::with_capacity(READ_CHUNK),
        out: Vec::new(),
        timeout: server.command_timeout,
        stress,
        peer,
        session_end: Instant::now() + server.limits.session_timeout,
    };
    let mut session = Session::new(&server.policy, false).with_client(peer.ip());
    if server.implicit_tls {
        let Some(acceptor) = server.tls.clone() else {
            return Ok(());
        };
        if !handshake(&mut conn, &acceptor).await {
            return Ok(());
        }
        session.tls_started();
    }
    if let Some(listing) = blocklisted(server, peer.ip()).await {
        return refuse_listed(&mut conn, &server.policy.hostname, peer.ip(), &listing).await;
    }
    conn.say(&session.greeting(), "", None);
    conn.flush().await?;
    let mut discarding = false;
    // A whole command line must arrive by then: bytes trickled one at a time (slowloris)
    // do not push it back.
    let mut line_due = Instant::now() + conn.wait();
    let mut line_start = Instant::now();
    loop {
        let Some(pos) = conn.inbuf.iter().position(|&b| b == b'\n') else {
            if conn.inbuf.len() > MAX_COMMAND_LINE {
                // Keep memory bounded: drop the overlong line, answer once it ends.
                conn.inbuf.clear();
                discarding = true;
            }
            conn.flush().await?;
            // Under stress the line is due STRESS_TIMEOUT after it began, although bytes
            // keep trickling in.
            let due = if conn.stressed() {
                line_due.min(line_start + STRESS_TIMEOUT)
            } else {
                line_due
            };
            match conn.read_more(due).await? {
                Read::Data => continue,
                Read::Eof => return Ok(()),
                Read::TimedOut => {
                    timed_out(&mut conn, &server.policy.hostname, session.helo()).await;
                    return Ok(());
                }
            }
        };
        line_due = Instant::now() + conn.wait();
        line_start = Instant::now();
        let line: Vec<u8> = conn.inbuf.drain(..=pos).collect();
        if let Some((dir, min)) = &server.limits.min_free
            && line.len() >= 4
            && line[..4].eq_ignore_ascii_case(b"MAIL")
        {
            session.set_storage_low(free_bytes(dir).is_some_and(|free| free < *min));
        }
        let step = if discarding || line.len() > MAX_COMMAND_LINE {
            discarding = false;
            session.line_too_long()
        } else {
            session.handle(&line)
        };
        conn.say(&step.reply, session.helo(), step.about.as_deref());
        match step.next {
            Next::Command => {}
            Next::Authenticate => {
                conn.flush().await?;
                let login = match (session.take_login(), &server.policy.submission) {
                    (Some((name, password)), Some(sub)) => {
                        sub.gate.login(&name, &password, peer.ip()).await
                    }
                    _ => crate::ports::Login::Failed,
                };
                let done = session.logged_in(login);
                conn.say(&done.reply, session.helo(), None);
                if done.next == Next::Close {
                    conn.flush().await?;
                    let _ = conn.io.shutdown().await;
                    return Ok(());
                }
                line_due = Instant::now() + conn.wait();
                line_start = Instant::now();
            }
            Next::Close => {
                conn.flush().await?;
                let _ = conn.io.shutdown().await;
                return Ok(());
            }
            Next::Data => {
                conn.flush().await?;
                let Some(outcome) = receive_data(server, &mut conn, &session, peer).await? else {
                    return Ok(());
                };
                let done = session.data_done(outcome);
                conn.say(&done.reply, session.helo(), done.about.as_deref());
                line_due = Instant::now() + conn.wait();
                line_start = Instant::now();
            }
            Next::StartTls => {
                conn.flush().await?;
                // Anything pipelined after STARTTLS was sent in the clear and must not be
                // executed inside the TLS session (CVE-2011-0411).
                conn.inbuf.clear();
                let Some(acceptor) = server.tls.clone() else {
                    return Ok(());
                };
                if !handshake(&mut conn, &acceptor).await {
                    return Ok(());
                }
                session.tls_started();
                line_due = Instant::now() + conn.wait();
                line_start = Instant::now();
            }
        }
    }
}

/// Replace the connection's plain stream with TLS; `false` when the handshake failed or
/// timed out (the connection is then unusable).
async fn handshake(conn: &mut Conn, acceptor: &TlsAcceptor) -> bool {
    let plain = std::mem::replace(
        &mut conn.io,
        Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
    );
    let until = (Instant::now() + conn.wait()).min(conn.session_end);
    match tokio::time::timeout_at(until, acceptor.accept(plain)).await {
        Ok(Ok(tls)) => {
            conn.io = Box::new(tls);
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            false
        }
        Err(_) => false,
    }
}

/// Tell a client whose time is up, if it still reads.
async fn timed_out(conn: &mut Conn, hostname: &str, helo: &str) {
    let msg = format!("421 4.4.2 {hostname} Error: timeout exceeded\r\n");
    conn.say(&msg, helo, None);
    // A short last chance: a client that stopped reading gets no more of our time.
    conn.timeout = conn.timeout.min(Duration::from_secs(5));
    conn.session_end = conn.session_end.max(Instant::now() + conn.timeout);
    let _ = conn.flush().await;
}

/// Stream one message from the connection into the spool. `None` when the client went
/// away or timed out before the end of data (nothing is stored then).
async fn receive_data(
    server: &Server,
    conn: &mut Conn,
    session: &Session<'_>,
    peer: SocketAddr,
) -> std::io::Result<Option<DataOutcome>> {
    let env = Envelope {
        mail_from: session.mail_from().unwrap_or_default().to_string(),
        rcpts: session.rcpts().to_vec(),
        origin: Origin {
            ip: peer.ip().to_string(),
            helo: session.helo().to_string(),
            tls: session.tls(),
            user: session.user().map(|u| u.address.clone()),
        },
        journal: session.is_journal(),
        sent: None,
    };
    // The MX listener's mail only: users log in on the submission listener, and journal
    // copies are the primary's own.
    let filter = server
        .content_check
        .as_ref()
        .filter(|_| server.policy.submission.is_none() && !env.journal);
    let meta = filter.map(|_| ContentMeta {
        ip: env.origin.ip.clone(),
        helo: env.origin.helo.clone(),
        mail_from: env.mail_from.clone(),
        rcpts: env.rcpts.clone(),
        hostname: server.policy.hostname.clone(),
    });
    let mut scan: Option<ScanCopy> = filter.map(|_| ScanCopy::new(&SCAN_HELD));
    let mut incoming = match server.spool.begin(env).await {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::error!(error = %e, "cannot open spool file");
            None
        }
    };
    let mut failed = incoming.is_none();
    let mut too_big = false;
    let mut size: u64 = 0;
    let mut decoder = DataDecoder::new();
    let mut hops = HopCounter::default();
    // RFC 8601 §5: fields claiming to be our own verdicts are the sender's forgeries.
    let mut strip = StripOurs::new(&server.policy.authserv_ids);
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    let mut kept = Vec::with_capacity(READ_CHUNK);
    let started = Instant::now();
    let mut received: u64 = 0;
    loop {
        chunk.clear();
        let end = decoder.feed(&conn.inbuf, &mut chunk);
        let used = end.unwrap_or(conn.inbuf.len());
        received += used as u64;
        conn.inbuf.drain(..used);
        size += chunk.len() as u64;
        hops.feed(&chunk);
        if size > server.policy.max_message_size && !too_big {
            too_big = true;
            if let Some(i) = incoming.take() {
                i.abort().await;
            }
        }
        if hops.count() > MAX_HOPS
            && let Some(i) = incoming.take()
        {
            i.abort().await;
        }
        // Past the header the filter changes nothing: no copy then.
        let kept: &[u8] = if strip.in_body() {
            &chunk
        } else {
            kept.clear();
            strip.feed(&chunk, &mut kept);
            if end.is_some() {
                strip.finish(&mut kept);
            }
            &kept
        };
        if let Some(copy) = scan.as_mut()
            && !copy.push(kept)
        {
            tracing::info!(%peer, "message larger than the content filter's limit (or too many held at once); taken unfiltered");
            scan = None;
        }
        if let Some(i) = incoming.as_mut()
            && let Err(e) = i.write(kept).await
        {
            tracing::error!(error = %e, "spool write failed");
            failed = true;
            if let Some(i) = incoming.take() {
                i.abort().await;
            }
        }
        if end.is_some() {
            break;
        }
        // Each read within the command timeout, and the whole message at the minimum
        // rate: by then, `received / min_rate` seconds (plus grace) after the 354.
        let mut until = Instant::now() + conn.wait();
        if let Some(secs) = received.checked_div(server.limits.min_data_rate) {
            until = until.min(started + DATA_RATE_GRACE + Duration::from_secs(secs));
        }
        match conn.read_more(until).await? {
            Read::Data => {}
            read => {
                if let Some(i) = incoming.take() {
                    i.abort().await;
                }
                if matches!(read, Read::TimedOut) {
                    tracing::info!(%peer, received, "client too slow during DATA; nothing stored");
                    timed_out(conn, &server.policy.hostname, session.helo()).await;
                } else {
                    tracing::info!(%peer, "client went away during DATA; nothing stored");
                }
                return Ok(None);
            }
        }
    }
    if strip.stripped() > 0 {
        tracing::info!(%peer, fields = strip.stripped(), "removed Authentication-Results fields carrying our authserv-id (forged by the sender)");
    }
    if decoder.bare_line_ends() > 0 {
        tracing::debug!(%peer, bare = decoder.bare_line_ends(), "normalised bare line ends");
    }
    if too_big {
        return Ok(Some(DataOutcome::TooBig));
    }
    if hops.count() > MAX_HOPS {
        return Ok(Some(DataOutcome::TooManyHops));
    }
    let Some(mut incoming) = incoming.filter(|_| !failed) else {
        return Ok(Some(DataOutcome::StorageFailed));
    };
    if let (Some((check, limit)), Some(meta)) = (filter, meta) {
        let verdict = match scan.as_mut() {
            None => Err("too large to scan".to_string()),
            Some(copy) => {
                // The copy is the check's; its bytes leave the budget when `_held` goes.
                let (bytes, _held) = copy.take();
                match tokio::time::timeout(*limit, check.check(&meta, bytes)).await {
                    Ok(v) => v,
                    Err(_) => Err("no answer in time".to_string()),
                }
            }
        };
        match verdict {
            Ok(ContentVerdict::Reject { reason }) => {
                incoming.abort().await;
                tracing::info!(%peer, "content filter: refused as spam");
                return Ok(Some(DataOutcome::Refused(format!(
                    "554 5.7.1 {reason}\r\n"
                ))));
            }
            Ok(ContentVerdict::TryLater { reason }) => {
                incoming.abort().await;
                tracing::info!(%peer, "content filter: asked to try later");
                return Ok(Some(DataOutcome::Refused(format!(
                    "451 4.7.1 {reason}\r\n"
                ))));
            }
            Ok(ContentVerdict::Spam { score }) => {
                tracing::info!(%peer, score, "content filter: spam; stored for the Junk view");
                incoming.set_spam_verdict("FAIL");
            }
            Ok(ContentVerdict::Clean { score }) => {
                tracing::debug!(%peer, score, "content filter: clean");
                incoming.set_spam_verdict("PASS");
            }
            Err(why) => {
                tracing::warn!(%peer, error = %why, "content filter: no verdict; message taken unfiltered");
                incoming.set_spam_verdict(crate::model::Verdicts::UNFILTERED);
            }
        }
    }
    Ok(Some(match incoming.commit().await {
        Ok(rec) => DataOutcome::Stored(rec.id),
        Err(crate::error::StoreError::Refused(reply)) => DataOutcome::Refused(reply),
        Err(e) => {
            tracing::error!(error = %e, "spool commit failed; answering 451");
            DataOutcome::StorageFailed
        }
    }))
}

/// Log every refusal in `reply` (each 4xx or 5xx line) at info, so an operator can answer
/// "why did my mail bounce": the code and enhanced code, the client's IP and HELO, the
/// reply text, and the domain of the address involved. The address itself only at
/// debug (addresses are personal data; domains are what an operator greps for).
fn log_refusals(reply: &str, peer: SocketAddr, helo: &str, about: Option<&str>) {
    for line in reply.split("\r\n") {
        let Some(code) = line.get(..3).and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        if code < 400 || line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        crate::metrics::refused(code);
        let rest = line.get(4..).unwrap_or_default();
        let (enhanced, text) = match rest.split_once(' ') {
            Some((e, t)) if crate::ports::is_enhanced_code(e) => (e, t),
            _ => ("", rest),
        };
        let helo: String = helo.chars().take(255).collect();
        let domain = about.map_or("", redact);
        let ip = peer.ip();
        tracing::info!(code, enhanced, %ip, helo = helo.as_str(), domain, text, "refused");
        if let Some(address) = about {
            tracing::debug!(code, %ip, address, "refused: the address");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Spool;
    use crate::ports::{Storage, SystemClock};
    use std::io::Write;
    use std::sync::Mutex;

    /// A copy's bytes count in the budget until the check that took them is done, and
    /// leave it also when that check is cancelled (the session dropped mid-check).
    #[tokio::test]
    async fn the_scan_budget_is_given_back_even_by_a_cancelled_check() {
        static HELD: AtomicUsize = AtomicUsize::new(0);
        let mut copy = ScanCopy::new(&HELD);
        assert!(copy.push(&[b'x'; 1000]));
        assert!(copy.push(&[b'y'; 24]));
        assert_eq!(HELD.load(Ordering::SeqCst), 1024);
        assert!(!copy.push(&vec![0; SCAN_LIMIT]), "past the message limit");
        let (bytes, held) = copy.take();
        assert_eq!((bytes.len(), HELD.load(Ordering::SeqCst)), (1024, 1024));
        // A check that never ends, dropped: the bytes leave the budget.
        let check = async move {
            let _held = held;
            std::future::pending::<()>().await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(10), check).await;
        assert_eq!(HELD.load(Ordering::SeqCst), 0);
        drop(copy);
        assert_eq!(HELD.load(Ordering::SeqCst), 0, "nothing given back twice");
        // Past the budget: refused, nothing counted.
        let mut big = ScanCopy::new(&HELD);
        HELD.store(SCAN_BUDGET, Ordering::SeqCst);
        assert!(!big.push(b"z"));
        assert_eq!(HELD.load(Ordering::SeqCst), SCAN_BUDGET);
    }

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lists every client.
    struct ListsAll;

    #[async_trait::async_trait]
    impl crate::ports::ClientCheck for ListsAll {
        async fn listed(&self, _: IpAddr) -> Result<Option<Listing>, String> {
            Ok(Some(Listing {
                zone: "all.test".into(),
                reason: None,
            }))
        }
    }

    struct NoLogins;

    #[async_trait::async_trait]
    impl crate::ports::SubmitGate for NoLogins {
        async fn login(&self, _: &str, _: &str, _: IpAddr) -> crate::ports::Login {
            crate::ports::Login::Failed
        }
        fn take_send(&self, _: &str) -> bool {
            false
        }
    }

    /// Blocklists keep clients off the MX listener only: never users of the submission
    /// listener (they send from addresses policy lists name), never the clients journal
    /// copies come from.
    #[tokio::test]
    async fn blocklists_apply_to_the_mx_listener_only() {
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let mut mx = server();
        mx.client_check = Some((Arc::new(ListsAll), Duration::from_secs(1)));
        assert!(blocklisted(&mx, client).await.is_some());
        let mut journal = server();
        journal.client_check = mx.client_check.clone();
        journal.policy.journal_allow =
            crate::config::JournalAllow::new(vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(
            blocklisted(&journal, client).await.is_none(),
            "journal source"
        );
        let mut submission = server();
        submission.client_check = mx.client_check.clone();
        submission.policy.submission = Some(super::super::session::SubmissionPolicy {
            allow_plaintext_auth: false,
            gate: Arc::new(NoLogins),
            outside: false,
        });
        assert!(
            blocklisted(&submission, client).await.is_none(),
            "submission"
        );
    }

    fn server() -> Server {
        Server {
            policy: Policy {
                hostname: "standby.test".into(),
                authserv_ids: Vec::new(),
                domains: ["example.test".to_string()].into(),
                recipients: Some(["bob@example.test".to_string()].into()),
                max_message_size: 100,
                max_recipients: 1,
                tls_available: false,
                journal: crate::config::Journal::new(&[], &[]),
                journal_allow: Default::default(),
                postmaster: None,
                submission: None,
            },
            spool: Arc::new(Spool::new(
                Storage::memory(),
                Arc::new(SystemClock),
                "standby.test",
            )),
            tls: None,
            implicit_tls: false,
            max_connections: 10,
            command_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            client_check: None,
            content_check: None,
        }
    }

    /// Every 4xx and 5xx the listener sends, whatever produced it, has its log line at
    /// info with code, enhanced code, client IP, HELO and domain; no address is logged.
    #[tokio::test(flavor = "current_thread")]
    async fn every_refusal_is_logged_with_its_domain_and_never_its_address() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let big = "x".repeat(200);
        let script = [
            "XYZZY",                                // 500 5.5.2
            "MAIL FROM:<a@sender.test>",            // 503 5.5.1 (no HELO)
            "EHLO client.example",                  //
            "MAIL FROM:<a@sender.test> SIZE=99999", // 552 5.3.4 at MAIL
            "MAIL FROM:<a@sender.test>",            //
            "DATA",                                 // 554 5.5.1 no recipients
            "RCPT TO:<carol@foreign.test>",         // 550 5.7.1 relay
            "RCPT TO:<@hop.test:dave@relay.test>",  // 550 5.7.1 source route
            "RCPT TO:<eve@example.test>",           // 550 5.1.1 unknown user
            "RCPT TO:<bob@example.test>",           //
            "RCPT TO:<bob2@example.test>",          // 452 4.5.3 too many
            "DATA",                                 // 354
            &big,                                   //
            ".",                                    // 552 5.3.4 after DATA
            "QUIT",
        ];
        let (client, server_end) = tokio::io::duplex(64 * 1024);
        let srv = server();
        let peer: SocketAddr = "192.0.2.7:4567".parse().unwrap();
        let session = serve_connection(&srv, Box::new(server_end), peer);
        let talk = async move {
            let (mut rd, mut wr) = tokio::io::split(client);
            for line in script {
                wr.write_all(format!("{line}\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            let mut replies = String::new();
            rd.read_to_string(&mut replies).await.unwrap();
            replies
        };
        let (res, replies) = tokio::join!(session, talk);
        res.unwrap();

        let refusals: Vec<&str> = replies
            .lines()
            .filter(|l| {
                l.as_bytes().get(3) == Some(&b' ') && matches!(l.as_bytes()[0], b'4' | b'5')
            })
            .collect();
        let codes: Vec<&str> = refusals.iter().map(|l| &l[..9]).collect();
        assert_eq!(
            codes,
            [
                "500 5.5.2",
                "503 5.5.1",
                "552 5.3.4",
                "554 5.5.1",
                "550 5.7.1",
                "550 5.7.1",
                "550 5.1.1",
                "452 4.5.3",
                "552 5.3.4"
            ],
            "{replies}"
        );
        let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(" refused ")).collect();
        assert_eq!(
            lines.len(),
            refusals.len(),
            "one log line per refusal:\n{log}"
        );
        for (line, code) in lines.iter().zip(&codes) {
            let (basic, enhanced) = code.split_once(' ').unwrap();
            assert!(line.contains(&format!("code={basic} ")), "{line}");
            assert!(line.contains(&format!("enhanced=\"{enhanced}\"")), "{line}");
            assert!(line.contains("ip=192.0.2.7"), "{line}");
        }
        // HELO once given; the domain of the address each refusal is about.
        assert!(!lines[1].contains("client.example"), "{}", lines[1]);
        for (n, domain) in [
            (2, "sender.test"),
            (3, "sender.test"),
            (4, "foreign.test"),
            (5, "relay.test"),
            (6, "example.test"),
            (7, "example.test"),
            (8, "sender.test"),
        ] {
            let line = lines[n];
            assert!(line.contains("helo=\"client.example\""), "{line}");
            assert!(line.contains(&format!("domain=\"{domain}\"")), "{line}");
        }
        for address in ["a@sender.test", "carol@", "dave@", "eve@", "bob2@"] {
            assert!(!log.contains(address), "{address} logged at info:\n{log}");
        }
    }
}
