//! `standby serve` hosting the web app: HTTP/1.1 on `[web] listen`, over TLS when
//! `[tls]` has a certificate (the same acceptor SIGHUP renews for SMTP).
//!
//! Each connection gets the router with the peer's address ([`ClientIp`]) for the login
//! limits; a request's headers must arrive within 30 s and at most 512 connections are
//! served at once, so idle or slow clients cannot use up the process.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::ClientIp;

/// At most this many connections at once, this many from one client address, and each
/// for at most this long (a download of a 40 MB message fits many times over).
const MAX_CONNECTIONS: usize = 512;
const MAX_PER_IP: usize = 32;
const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Open connections by client address; a [`PerIp`] guard counts one.
#[derive(Default)]
struct Clients(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// One open connection of a client (its address; an IPv6 /64 counts as one client).
struct PerIp {
    clients: Arc<Clients>,
    ip: String,
}

impl Clients {
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PerIp> {
        let ip = ClientIp(ip).limit_key();
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip.clone()).or_insert(0);
        if *n >= MAX_PER_IP {
            return None;
        }
        *n += 1;
        Some(PerIp {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut m = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serve `router` on `listeners` until `stop` turns true. `tls`: the acceptor to use for
/// each new connection (replaced on SIGHUP), `None` for plain HTTP.
pub async fn run(
    listeners: Vec<TcpListener>,
    router: Router,
    tls: Option<Arc<ArcSwapOption<TlsAcceptor>>>,
    stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let clients = Arc::new(Clients::default());
    let mut tasks = Vec::new();
    for listener in listeners {
        let (router, tls, limit, mut stop) =
            (router.clone(), tls.clone(), limit.clone(), stop.clone());
        let clients = clients.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.changed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "web: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Full, or this client has enough open: close at once rather than queue.
                let Some(per_ip) = clients.admit(peer.ip()) else {
                    continue;
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    continue;
                };
                let router = router.clone();
                let acceptor = tls.as_ref().and_then(|t| t.load_full());
                if tls.is_some() && acceptor.is_none() {
                    continue;
                }
                tokio::spawn(async move {
                    let _held = (permit, per_ip);
                    let ip = ClientIp(peer.ip());
                    let svc =
                        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                            req.extensions_mut().insert(ip);
                            router.clone().oneshot(req)
                        });
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30));
                    let served = async move {
                        match acceptor {
                            Some(acceptor) => {
                                let hs = tokio::time::timeout(
                                    Duration::from_secs(10),
                                    acceptor.accept(stream),
                                )
                                .await;
                                match hs {
                                    Ok(Ok(tls)) => {
                                        http.serve_connection(TokioIo::new(tls), svc).await
                                    }
                                    _ => Ok(()),
                                }
                            }
                            None => http.serve_connection(TokioIo::new(stream), svc).await,
                        }
                    };
                    match tokio::time::timeout(MAX_LIFETIME, served).await {
                        Ok(Err(e)) => tracing::debug!(error = %e, "web: connection ended"),
                        Err(_) => tracing::debug!("web: connection closed after its lifetime"),
                        Ok(Ok(())) => {}
                    }
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
