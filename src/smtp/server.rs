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
use crate::model::{Envelope, Origin, redact};
use crate::ports::Inbound;

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
                    log_refusals(&msg, peer, "", None);
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
    peer: SocketAddr,
}

enum Read {
    Data,
    Eof,
    TimedOut,
}

impl Conn {
    /// Queue a reply for the client. Every reply goes through here, so every refusal in
    /// one is logged (see [`log_refusals`]): `helo` as the client gave it, `about` the
    /// address the reply concerns.
    fn say(&mut self, reply: &str, helo: &str, about: Option<&str>) {
        log_refusals(reply, self.peer, helo, about);
        self.out.extend_from_slice(reply.as_bytes());
    }

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
        peer,
    };
    let mut session = Session::new(&server.policy, false);
    conn.say(&session.greeting(), "", None);
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
                    conn.say(&msg, session.helo(), None);
                    let _ = conn.flush().await;
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
        conn.say(&step.reply, session.helo(), step.about.as_deref());
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
                conn.say(&done.reply, session.helo(), done.about.as_deref());
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
    let Some(incoming) = incoming.filter(|_| !failed) else {
        return Ok(Some(DataOutcome::StorageFailed));
    };
    Ok(Some(match incoming.commit().await {
        Ok(rec) => DataOutcome::Stored(rec.id),
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
        let rest = line.get(4..).unwrap_or_default();
        let (enhanced, text) = match rest.split_once(' ') {
            Some((e, t)) if is_enhanced(e) => (e, t),
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

/// An RFC 3463 enhanced status code (`5.7.1`).
fn is_enhanced(s: &str) -> bool {
    let mut parts = s.split('.');
    let class_ok = parts.next().is_some_and(|c| matches!(c, "2" | "4" | "5"));
    let rest: Vec<&str> = parts.collect();
    class_ok
        && rest.len() == 2
        && rest
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Spool;
    use crate::ports::{Storage, SystemClock};
    use std::io::Write;
    use std::sync::Mutex;

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

    fn server() -> Server {
        Server {
            policy: Policy {
                hostname: "standby.test".into(),
                domains: ["example.test".to_string()].into(),
                recipients: Some(["bob@example.test".to_string()].into()),
                max_message_size: 100,
                max_recipients: 1,
                tls_available: false,
                journal: crate::config::Journal::new(&[], &[]),
            },
            spool: Arc::new(Spool::new(
                Storage::memory(),
                Arc::new(SystemClock),
                "standby.test",
            )),
            tls: None,
            max_connections: 10,
            command_timeout: Duration::from_secs(5),
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
