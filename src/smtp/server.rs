//! The SMTP listener: sockets, timeouts, TLS and streaming DATA to the spool.
//!
//! Protocol decisions are made by [`Session`]; this file only moves bytes. Replies are
//! buffered and flushed when the client's pipelined input is used up (RFC 2920). The
//! message is decoded and written to the spool as it arrives, so memory per connection
//! stays at the read buffer whatever the message size; the 250 after DATA is sent only
//! once [`Incoming::commit`](crate::ingest::Incoming::commit) returned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::data::DataDecoder;
use super::session::{DataOutcome, MAX_COMMAND_LINE, Next, Policy, Session, reply};
use crate::config::{BindError, ListenAddrs};
use crate::model::{Envelope, Origin, Verdicts};
use crate::ports::{Inbound, SenderCheck};

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
    pub max_connections: usize,
    pub command_timeout: Duration,
    /// SPF at receipt (for bounces only); `None`: no verdict is recorded, so no DSN.
    pub sender_check: Option<Arc<dyn SenderCheck>>,
    /// How long the 250 after DATA waits for an unfinished sender check.
    pub sender_check_timeout: Duration,
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

/// A sender check running while the message arrives; stopped if the message is not kept.
struct PendingCheck(tokio::task::JoinHandle<String>);

impl PendingCheck {
    fn start(server: &Server, session: &Session<'_>, peer: SocketAddr) -> Option<Self> {
        let check = server.sender_check.clone()?;
        let from = session.mail_from().filter(|f| !f.is_empty())?.to_string();
        let helo = session.helo().to_string();
        let ip = peer.ip();
        Some(PendingCheck(tokio::spawn(async move {
            check.spf(ip, &helo, &from).await
        })))
    }

    /// The verdicts, `TEMPERROR` when the check did not finish within `limit`.
    async fn verdicts(mut self, limit: Duration) -> Verdicts {
        let waited = std::time::Instant::now();
        let spf = match tokio::time::timeout(limit, &mut self.0).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) | Err(_) => "TEMPERROR".to_string(),
        };
        tracing::debug!(spf = %spf, waited_us = waited.elapsed().as_micros(), "sender check");
        Verdicts {
            spf: Some(spf),
            ..Default::default()
        }
    }
}

impl Drop for PendingCheck {
    fn drop(&mut self) {
        self.0.abort();
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
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(&server, Box::new(stream), peer).await {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let msg = reply(421, "4.7.0", "Too many connections, try again later");
                    let _ = stream.write_all(msg.as_bytes()).await;
                    let _ = stream.shutdown().await;
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

/// Buffers of one connection.
struct Conn {
    io: Box<dyn Io>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    timeout: Duration,
}

enum Read {
    Data,
    Eof,
    TimedOut,
}

impl Conn {
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.io.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn read_more(&mut self) -> std::io::Result<Read> {
        self.inbuf.reserve(READ_CHUNK);
        match tokio::time::timeout(self.timeout, self.io.read_buf(&mut self.inbuf)).await {
            Err(_) => Ok(Read::TimedOut),
            Ok(Ok(0)) => Ok(Read::Eof),
            Ok(Ok(_)) => Ok(Read::Data),
            Ok(Err(e)) => Err(e),
        }
    }
}

/// Run one SMTP session over `io` until QUIT, EOF, timeout or error.
pub async fn serve_connection(
    server: &Server,
    io: Box<dyn Io>,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let mut conn = Conn {
        io,
        inbuf: Vec::with_capacity(READ_CHUNK),
        out: Vec::new(),
        timeout: server.command_timeout,
    };
    let mut session = Session::new(&server.policy, false);
    conn.out.extend_from_slice(session.greeting().as_bytes());
    conn.flush().await?;
    let mut discarding = false;
    loop {
        let Some(pos) = conn.inbuf.iter().position(|&b| b == b'\n') else {
            if conn.inbuf.len() > MAX_COMMAND_LINE {
                // Keep memory bounded: drop the overlong line, answer once it ends.
                conn.inbuf.clear();
                discarding = true;
            }
            conn.flush().await?;
            match conn.read_more().await? {
                Read::Data => continue,
                Read::Eof => return Ok(()),
                Read::TimedOut => {
                    let msg = format!(
                        "421 4.4.2 {} Error: timeout exceeded\r\n",
                        server.policy.hostname
                    );
                    let _ = conn.io.write_all(msg.as_bytes()).await;
                    return Ok(());
                }
            }
        };
        let line: Vec<u8> = conn.inbuf.drain(..=pos).collect();
        let step = if discarding || line.len() > MAX_COMMAND_LINE {
            discarding = false;
            session.line_too_long()
        } else {
            session.handle(&line)
        };
        conn.out.extend_from_slice(step.reply.as_bytes());
        match step.next {
            Next::Command => {}
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
                conn.out.extend_from_slice(done.reply.as_bytes());
            }
            Next::StartTls => {
                conn.flush().await?;
                // Anything pipelined after STARTTLS was sent in the clear and must not be
                // executed inside the TLS session (CVE-2011-0411).
                conn.inbuf.clear();
                let Some(acceptor) = server.tls.clone() else {
                    return Ok(());
                };
                let plain = std::mem::replace(
                    &mut conn.io,
                    Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
                );
                let handshake = tokio::time::timeout(conn.timeout, acceptor.accept(plain)).await;
                match handshake {
                    Ok(Ok(tls)) => {
                        conn.io = Box::new(tls);
                        session.tls_started();
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return Ok(());
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
    }
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
        },
        journal: session.is_journal(),
    };
    let check = PendingCheck::start(server, session, peer);
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
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    loop {
        chunk.clear();
        let end = decoder.feed(&conn.inbuf, &mut chunk);
        conn.inbuf.drain(..end.unwrap_or(conn.inbuf.len()));
        size += chunk.len() as u64;
        if size > server.policy.max_message_size && !too_big {
            too_big = true;
            if let Some(i) = incoming.take() {
                i.abort().await;
            }
        }
        if let Some(i) = incoming.as_mut()
            && let Err(e) = i.write(&chunk).await
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
        match conn.read_more().await? {
            Read::Data => {}
            Read::Eof | Read::TimedOut => {
                if let Some(i) = incoming.take() {
                    i.abort().await;
                }
                tracing::info!(%peer, "client went away during DATA; nothing stored");
                return Ok(None);
            }
        }
    }
    if decoder.bare_line_ends() > 0 {
        tracing::debug!(%peer, bare = decoder.bare_line_ends(), "normalised bare line ends");
    }
    if too_big {
        return Ok(Some(DataOutcome::TooBig));
    }
    let Some(mut incoming) = incoming.filter(|_| !failed) else {
        return Ok(Some(DataOutcome::StorageFailed));
    };
    if let Some(check) = check {
        incoming.set_verdicts(check.verdicts(server.sender_check_timeout).await);
    }
    Ok(Some(match incoming.commit().await {
        Ok(rec) => DataOutcome::Stored(rec.id),
        Err(e) => {
            tracing::error!(error = %e, "spool commit failed; answering 451");
            DataOutcome::StorageFailed
        }
    }))
}
