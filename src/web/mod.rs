//! The emergency inbox: users read the mail held for them in a browser while their
//! primary mail server is down.
//!
//! One axum [`Router`] ([`router`]) over the storage ports, hosted twice: by `standby
//! serve` on `[web] listen` ([`server`]), and by the `standby-web` Lambda function behind
//! a function URL. It keeps no state of its own: sessions are signed cookies
//! ([`session`]), login attempts are counted through the [`LoginLimits`] port, logins
//! are written to the audit log, and what a user may see is decided by
//! [`crate::mailbox`] on every request. The login is the standby's own users file
//! ([`crate::users`]), never the failed primary's directory.

mod compose;
mod console;
mod handlers;
pub mod pages;
pub mod render;
pub mod server;
/// Sessions and signed links live with the users (the continuity notices sign links too).
pub use crate::users::session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::ports::{Clock, LoginLimits, Storage};
use crate::users::Users;

pub use session::SessionKey;

/// What every request handler shares.
pub struct Web {
    pub storage: Storage,
    /// Password checks running at once (see [`check_slots`]).
    pub checks: Arc<tokio::sync::Semaphore>,
    /// The slowest password check so far (ms): a failed login answers no sooner.
    pub slowest_check: Arc<std::sync::atomic::AtomicU64>,
    pub users: Arc<Users>,
    pub limits: Arc<dyn LoginLimits>,
    /// Logins being checked now (see [`crate::submission::InFlight`]).
    pub in_flight: Arc<crate::submission::InFlight>,
    /// Where what users write goes (`None`: the inbox only reads).
    pub sending: Option<crate::outbound::Sending>,
    /// Where the browser uploads attachments itself (the web function: a function URL
    /// carries at most 6 MB a request); `None`: they come in the form.
    pub uploads: Option<Arc<dyn crate::ports::Uploads>>,
    pub key: SessionKey,
    pub clock: Arc<dyn Clock>,
    pub settings: WebSettings,
    /// Wakes this process's drain loop when the console asks for a drain (`standby
    /// serve`); `None`: the request waits in the store for the next run (the drain
    /// function).
    pub drain_now: Option<Arc<tokio::sync::Notify>>,
}

/// The web app's settings.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Cookies `Secure` and HSTS sent: the app is reached over HTTPS.
    pub secure: bool,
    /// How long a login lasts.
    pub session: chrono::Duration,
    /// `[users] history_days`.
    pub history_days: u32,
    /// Messages per page.
    pub page_size: usize,
    /// Failed logins allowed per client address and per user name in `attempt_window`;
    /// the next attempt is refused until the window ends.
    pub attempts: u32,
    pub attempt_window: chrono::Duration,
    /// The largest message a user may send (`max_message_size`): the compose form's body
    /// limit.
    pub max_message_size: usize,
    /// Recipients a message may have (`max_recipients`).
    pub max_recipients: usize,
    /// This node, the primary and the store, for `/metrics` (the status view).
    pub node: String,
    pub primary: String,
    pub store: String,
    /// `[users] admins`: who may use the console.
    pub admins: Vec<String>,
    /// `[drain] clock_skew_secs`, for the console's changes (as the CLI's).
    pub skew: chrono::Duration,
    /// Where the console may purge (the web function: only what users sent, under
    /// `serve/`; its policy may not delete SES's objects); `None`: anywhere.
    pub purge_only_under: Option<String>,
    /// The bearer token `/metrics` asks for (`[metrics] token_env`'s value); `None`: no
    /// `/metrics` here.
    pub metrics_token: Option<String>,
}

impl WebSettings {
    /// The settings `config` asks for; `secure` when served over TLS.
    pub fn of(config: &crate::config::Config, secure: bool) -> Self {
        WebSettings {
            secure,
            session: chrono::Duration::hours(i64::from(config.web.session_hours.max(1))),
            history_days: config.users.history_days,
            page_size: 50,
            attempts: 5,
            attempt_window: chrono::Duration::seconds(60),
            max_message_size: usize::try_from(config.max_message_size).unwrap_or(usize::MAX),
            max_recipients: config.max_recipients,
            node: config.node_id(),
            primary: config.primary_addr(),
            store: config.store_description(),
            admins: config.users.admins.clone(),
            purge_only_under: None,
            metrics_token: config
                .metrics
                .token_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
                .filter(|t| t.len() >= 16),
            skew: chrono::Duration::seconds(
                i64::try_from(config.drain.clock_skew_secs).unwrap_or(i64::MAX / 1000),
            ),
        }
    }
}

/// The client's address, set by whatever hosts the router (the connection's peer in
/// `serve`, the function URL's `sourceIp` in Lambda); login limits count by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

impl ClientIp {
    /// The login limits' key for this client: the IPv4 address, or the IPv6 /64 (one
    /// host usually has a whole /64 to rotate through).
    pub fn limit_key(&self) -> String {
        match self.0 {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = a.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
        }
    }
}

/// Password checks at once: half the cores, at least one (each check is tens of ms of
/// CPU and, for Argon2, tens of MiB), so logins never take the whole machine.
pub fn check_slots() -> Arc<tokio::sync::Semaphore> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1)))
}

/// The pages' Content-Security-Policy: nothing but our own stylesheet, frames of our
/// own message bodies, forms to ourselves.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
    frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The emergency inbox's routes, with security headers on every response.
pub fn router(web: Arc<Web>) -> Router {
    let secure = web.settings.secure;
    // Writing a message: its own body limit (attachments, up to the largest message a
    // user may send; multipart's framing on top) and a longer time for the upload.
    let upload = web.settings.max_message_size.saturating_add(1024 * 1024);
    let compose = Router::new()
        .route("/compose", get(compose::form).post(compose::send))
        .route("/compose/upload", post(compose::upload))
        .layer(axum::extract::DefaultBodyLimit::max(upload))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(upload))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            std::time::Duration::from_secs(300),
        ));
    let reading = Router::new()
        .route("/", get(handlers::inbox))
        .route("/junk", get(handlers::junk))
        .route("/sent", get(handlers::sent))
        .route("/login", get(handlers::login_form).post(handlers::login))
        .route(
            "/login/link",
            get(handlers::link_form).post(handlers::link_login),
        )
        .route("/logout", post(handlers::logout))
        .route("/m/{id}", get(handlers::message))
        .route("/m/{id}/body", get(handlers::body))
        .route("/m/{id}/raw", get(handlers::raw))
        .route("/m/{id}/att/{n}", get(handlers::attachment))
        .route("/metrics", get(handlers::metrics))
        .route("/console", get(console::status))
        .route("/console/queue", get(console::queue))
        .route("/console/m/{id}", get(console::message))
        .route(
            "/console/m/{id}/purge",
            get(console::purge_form).post(console::purge),
        )
        .route(
            "/console/m/{id}/{action}",
            get(console::other).post(console::act),
        )
        .route("/console/drain", get(console::other).post(console::drain))
        .route("/console/", axum::routing::any(console::other))
        .route("/console/events", get(console::events))
        .route("/console/audit", get(console::audit))
        .route("/console/{*rest}", axum::routing::any(console::other))
        .route("/static/style.css", get(handlers::css))
        .route("/static/compose.js", get(handlers::script))
        .fallback(handlers::not_found)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        // A request (its body included) not answered within 25 s gets 503 (not 408,
        // which browsers send again by themselves): a client sending a byte every few
        // seconds cannot hold a connection slot for long, a stalled store not a worker.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            std::time::Duration::from_secs(25),
        ));
    let mut app = reading
        .merge(compose)
        .with_state(web)
        .layer(tower_http::compression::CompressionLayer::new());
    // Defaults a handler may set otherwise (the message body's own CSP and framing).
    let defaults = [
        (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in defaults {
        app = app.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    let always = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ]
    .into_iter()
    .chain(secure.then_some((header::STRICT_TRANSPORT_SECURITY, "max-age=31536000")));
    for (name, value) in always {
        app = app.layer(SetResponseHeaderLayer::overriding(
            name,
            HeaderValue::from_static(value),
        ));
    }
    app
}
