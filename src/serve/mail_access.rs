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

/// Start the listeners `[imap]` and `[pop3]` name.
pub fn start(config: &Config, parts: Parts) -> Result<(), ServeError> {
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
    listen(&config.imap.listen, "imap", &parts.stop, move |t, p| {
        crate::imap::session::serve_plain(i.clone(), t, p)
    })?;
    let i = imap;
    listen(
        &config.imap.listen_tls,
        "imaps",
        &parts.stop,
        move |t, p| crate::imap::session::serve_tls(i.clone(), t, p),
    )?;
    let p3 = pop.clone();
    listen(&config.pop3.listen, "pop3", &parts.stop, move |t, p| {
        crate::pop3::serve_plain(p3.clone(), t, p)
    })?;
    listen(
        &config.pop3.listen_tls,
        "pop3s",
        &parts.stop,
        move |t, p| crate::pop3::serve_tls(pop.clone(), t, p),
    )?;
    Ok(())
}

/// Accept on `addrs` (if set) until stopped, a task per connection.
fn listen<F, Fut>(
    addrs: &Option<ListenAddrs>,
    what: &'static str,
    stop: &tokio::sync::watch::Receiver<bool>,
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
        tokio::spawn(accept(l, stop.clone(), session.clone()));
    }
    Ok(())
}

async fn accept<F, Fut>(l: TcpListener, mut stop: tokio::sync::watch::Receiver<bool>, session: F)
where
    F: Fn(TcpStream, IpAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(session(tcp, peer.ip()));
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
