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

/// At most this many connections at once.
const MAX_CONNECTIONS: usize = 512;

/// Serve `router` on `listeners` until `stop` turns true. `tls`: the acceptor to use for
/// each new connection (replaced on SIGHUP), `None` for plain HTTP.
pub async fn run(
    listeners: Vec<TcpListener>,
    router: Router,
    tls: Option<Arc<ArcSwapOption<TlsAcceptor>>>,
    stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = Vec::new();
    for listener in listeners {
        let (router, tls, limit, mut stop) =
            (router.clone(), tls.clone(), limit.clone(), stop.clone());
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
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    // Full: close at once rather than queue.
                    drop(stream);
                    continue;
                };
                let router = router.clone();
                let acceptor = tls.as_ref().and_then(|t| t.load_full());
                if tls.is_some() && acceptor.is_none() {
                    continue;
                }
                tokio::spawn(async move {
                    let _permit = permit;
                    let ip = ClientIp(peer.ip());
                    let svc =
                        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                            req.extensions_mut().insert(ip);
                            router.clone().oneshot(req)
                        });
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30));
                    let served = match acceptor {
                        Some(acceptor) => {
                            let hs = tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await;
                            match hs {
                                Ok(Ok(tls)) => http.serve_connection(TokioIo::new(tls), svc).await,
                                _ => return,
                            }
                        }
                        None => http.serve_connection(TokioIo::new(stream), svc).await,
                    };
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "web: connection ended");
                    }
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
