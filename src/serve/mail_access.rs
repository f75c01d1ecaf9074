//! Wiring of IMAP (`[imap]`) and POP3 (`[pop3]`) into `standby serve`: their listeners,
//! with the users, limits and TLS certificate the emergency inbox and the submission
//! listener use, and the signal of newly accepted mail that wakes IDLE.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::ServeError;
use crate::config::{Config, ListenAddrs};
use crate::ports::{Clock, Storage};
use crate::smtp::server;
use crate::users::login::Logins;

/// How often an idling IMAP session looks at the store for mail other nodes accepted.
const POLL: Duration = Duration::from_secs(15);
/// How often a selected IMAP session lists the whole mailbox: what enters the view with an
/// older received time (a late recipient merge, `standby retry`) shows within this.
const WHOLE_LOOK: Duration = Duration::from_secs(300);

/// What both need.
pub struct Parts {
    pub storage: Storage,
    pub clock: Arc<dyn Clock>,
    pub logins: Arc<Logins>,
    pub new_mail: tokio::sync::watch::Receiver<u64>,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Whether `config` serves IMAP or POP3 at all.
pub fn wanted(config: &Config) -> bool {
    [
        &config.imap.listen,
        &config.imap.listen_tls,
        &config.pop3.listen,
        &config.pop3.listen_tls,
    ]
    .iter()
    .any(|l| l.is_some())
}

/// Connections IMAP and POP3 take together, in all and per client address (the SMTP
/// listener's `max_connections` and `max_connections_per_ip`): past them a connection is
/// closed at once, so a flood of idle connections cannot take memory or descriptors.
#[derive(Clone)]
struct Limits {
    all: Arc<tokio::sync::Semaphore>,
    per_ip: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
}

/// One connection counted, until dropped.
struct Counted {
    _slot: tokio::sync::OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    fn take(&self, ip: IpAddr) -> Option<Counted> {
        let slot = self.all.clone().try_acquire_owned().ok()?;
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(Counted {
            _slot: slot,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

/// Start the listeners `[imap]` and `[pop3]` name.
pub fn start(config: &Config, parts: Parts) -> Result<(), ServeError> {
    let limits = Limits {
        all: Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1))),
        per_ip: Arc::default(),
        max_per_ip: config.max_connections_per_ip.max(1),
    };
    let tls = super::tls_acceptor(config)?;
    let imap = Arc::new(crate::imap::Imap {
        storage: parts.storage.clone(),
        logins: parts.logins.clone(),
        clock: parts.clock.clone(),
        history_days: config.users.history_days,
        tls: tls.clone(),
        allow_plaintext_auth: config.imap.allow_plaintext_auth,
        new_mail: parts.new_mail.clone(),
        poll: POLL,
        whole_look: WHOLE_LOOK,
    });
    let pop = Arc::new(crate::pop3::Pop3 {
        storage: parts.storage,
        logins: parts.logins,
        clock: parts.clock,
        history_days: config.users.history_days,
        tls,
        allow_plaintext_auth: config.pop3.allow_plaintext_auth,
    });
    let i = imap.clone();
    listen(
        &config.imap.listen,
        "imap",
        &parts.stop,
        &limits,
        move |t, p| crate::imap::session::serve_plain(i.clone(), t, p),
    )?;
    let i = imap;
    listen(
        &config.imap.listen_tls,
        "imaps",
        &parts.stop,
        &limits,
        move |t, p| crate::imap::session::serve_tls(i.clone(), t, p),
    )?;
    let p3 = pop.clone();
    listen(
        &config.pop3.listen,
        "pop3",
        &parts.stop,
        &limits,
        move |t, p| crate::pop3::serve_plain(p3.clone(), t, p),
    )?;
    listen(
        &config.pop3.listen_tls,
        "pop3s",
        &parts.stop,
        &limits,
        move |t, p| crate::pop3::serve_tls(pop.clone(), t, p),
    )?;
    Ok(())
}

/// Accept on `addrs` (if set) until stopped, a task per connection.
fn listen<F, Fut>(
    addrs: &Option<ListenAddrs>,
    what: &'static str,
    stop: &tokio::sync::watch::Receiver<bool>,
    limits: &Limits,
    session: F,
) -> Result<(), ServeError>
where
    F: Fn(TcpStream, IpAddr) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(addrs) = addrs else {
        return Ok(());
    };
    let listeners = server::listeners(addrs)?;
    tracing::info!(listen = %server::local_addrs(&listeners), what, "serving");
    for l in listeners {
        tokio::spawn(accept(l, stop.clone(), limits.clone(), session.clone()));
    }
    Ok(())
}

async fn accept<F, Fut>(
    l: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
    session: F,
) where
    F: Fn(TcpStream, IpAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((tcp, peer)) => {
                    let Some(counted) = limits.take(peer.ip()) else {
                        tracing::warn!("too many connections; one closed");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let run = session(tcp, peer.ip());
                    tokio::spawn(async move {
                        run.await;
                        drop(counted);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}
