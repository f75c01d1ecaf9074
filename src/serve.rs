//! `standby serve`: the SMTP listener plus one loop that probes the primary and drains
//! while it is up.
//!
//! The probe runs every `health.interval_secs`; after each probe that finds the primary
//! `up`, the due held mail is drained. A drain stops by itself on the primary's first
//! session-level failure, so the next probe decides again.
//!
//! SIGHUP re-reads the configuration file and applies, without dropping a connection,
//! the TLS certificate and key, the recipients file and the `[journal]` and
//! `[retention]` rules (see [`reload`]).

pub mod continuity;
pub mod mail_access;
mod reload;

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;

use crate::config::{BackendKind, Config, JournalAllow};
use crate::drain::{DrainSettings, Drainer, RunOptions};
use crate::dsn::DsnSettings;
use crate::error::{ConfigError, StoreError};
use crate::health::{self, Hysteresis};
use crate::ingest::Spool;
use crate::model::PrimaryState;
use crate::ports::Storage;
use crate::ports::{Clock, Inbound, SystemClock};
use crate::sender::{Limits, SenderChecks, SenderVerifier};
use crate::smtp::SmtpRelay;
use crate::smtp::client::RelaySetupError;
use crate::smtp::server::{self, Limits as ListenerLimits, Server};
use crate::smtp::session::Policy;
use crate::smtp::spf::SpfCheck;
use crate::smtp::tls::{self, TlsError};

/// `standby serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Relay(#[from] RelaySetupError),
    #[error(transparent)]
    Bind(#[from] crate::config::BindError),
    #[error("cannot handle SIGHUP: {0}")]
    Signal(#[source] std::io::Error),
}

/// The SPF lookups `[dsn]` asks for (`spf`, `nameserver`, `spf_timeout_secs` per
/// lookup); `None` when `spf = false`.
///
/// # Errors
/// The system's resolver configuration cannot be read and no `nameserver` is set.
pub fn sender_verifier(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Option<SenderVerifier>, ConfigError> {
    if !config.dsn.spf {
        return Ok(None);
    }
    let check = SpfCheck::new(config.dsn.nameserver, config.hostname.clone()).map_err(|e| {
        ConfigError::Invalid {
            path: "/etc/resolv.conf".into(),
            message: format!("{e} (set [dsn] nameserver, or [dsn] spf = false)"),
        }
    })?;
    Ok(Some(SenderVerifier::new(
        Arc::new(check),
        Duration::from_secs(config.dsn.spf_timeout_secs.max(1)),
        clock,
    )))
}

/// Drain settings from the configuration. An SPF verdict still pending when a bounce
/// is due is looked up then; if the resolver cannot be set up here, such a sender counts
/// as not authenticated (no DSN).
pub fn drain_settings(config: &Config) -> DrainSettings {
    let sender = sender_verifier(config, Arc::new(SystemClock)).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "no SPF lookups for bounce decisions: pending verdicts count as not authenticated");
        None
    });
    drain_settings_with(config, sender)
}

fn drain_settings_with(config: &Config, sender: Option<SenderVerifier>) -> DrainSettings {
    DrainSettings {
        concurrency: config.drain.concurrency,
        lease: Duration::from_secs(config.drain.lease_secs.max(1)),
        clock_skew: Duration::from_secs(config.drain.clock_skew_secs),
        hold_days: config.hold_days,
        rate_per_sec: config.drain.rate_per_sec,
        ramp: config
            .drain
            .ramp_start_per_sec
            .map(|start| crate::drain::Ramp {
                start,
                step: Duration::from_secs(config.drain.ramp_step_secs.max(1)),
            }),
        breaker_5xx: config.drain.breaker_5xx,
        authserv_id: config.authserv_id().to_string(),
        strip_authserv_ids: config.authserv_ids(),
        arc: None,
        dsn: DsnSettings {
            enabled: config.dsn.enabled,
            reporting_mta: config
                .dsn
                .reporting_mta
                .clone()
                .or_else(|| config.mx_host.clone())
                .unwrap_or_else(|| config.hostname.clone()),
            sender,
        },
    }
}

/// The ARC sealer `[arc]` configures, if it does.
///
/// # Errors
/// The key cannot be loaded (named in the message), or no resolver can be set up.
pub fn arc_sealer(config: &Config) -> Result<Option<Arc<dyn crate::ports::ArcSeal>>, ConfigError> {
    let a = &config.arc;
    let (Some(domain), Some(selector), Some(key)) = (&a.domain, &a.selector, &a.key) else {
        return Ok(None);
    };
    let resolver = crate::dns::resolver(a.nameserver, true).map_err(|e| ConfigError::Invalid {
        path: "/etc/resolv.conf".into(),
        message: format!("{e} (set [arc] nameserver)"),
    })?;
    let chains = mail_auth::MessageAuthenticator(resolver);
    let sealing =
        crate::outbound::arc::ArcSealing::load(domain, selector, key, chains).map_err(|e| {
            ConfigError::Invalid {
                path: key.clone(),
                message: format!("[arc] key: {}", e.message),
            }
        })?;
    Ok(Some(Arc::new(sealing)))
}

/// Hysteresis thresholds from the configuration.
pub fn hysteresis(config: &Config) -> Hysteresis {
    Hysteresis {
        up_after: config.health.up_after,
        down_after: config.health.down_after,
    }
}

/// The SMTP listener's shared state for `config`, accepting into `spool`.
pub fn smtp_server(
    config: &Config,
    spool: Arc<dyn Inbound>,
    tls: Option<TlsAcceptor>,
) -> Result<Server, ConfigError> {
    Ok(Server {
        policy: Policy {
            hostname: config.hostname.clone(),
            authserv_ids: config.authserv_ids(),
            domains: config.domains.iter().cloned().collect(),
            recipients: config.load_recipients()?,
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
            tls_available: tls.is_some(),
            journal: config.journal(),
            journal_allow: journal_allow(config),
            postmaster: Policy::postmaster_of(&config.domains),
            submission: None,
        },
        spool,
        tls,
        implicit_tls: false,
        max_connections: config.max_connections,
        command_timeout: Duration::from_secs(config.command_timeout_secs.max(1)),
        client_check: client_check(config)?,
        content_check: content_check(config)?,
        limits: ListenerLimits {
            session_timeout: Duration::from_secs(config.session_timeout_secs.max(1)),
            min_data_rate: config.min_data_rate_bytes_per_sec,
            max_per_ip: config.max_connections_per_ip,
            rate_per_ip: config.max_connection_rate_per_ip,
            min_free: (config.backend == BackendKind::Local && config.min_free_bytes > 0)
                .then(|| (config.data_dir().to_path_buf(), config.min_free_bytes)),
        },
    })
}

/// `[filter] rspamd_url`: the content filter of the MX listener. The wait is clamped
/// to two minutes: clients give up on the reply to the final dot after ten (RFC 5321
/// §4.5.3.2.6) and would send the message again.
fn content_check(
    config: &Config,
) -> Result<Option<crate::smtp::server::ContentFilter>, ConfigError> {
    let Some(url) = &config.filter.rspamd_url else {
        return Ok(None);
    };
    let limit = Duration::from_secs(config.filter.rspamd_timeout_secs.clamp(1, 120));
    let rspamd = crate::smtp::rspamd::Rspamd::new(url, limit, config.filter.nameserver).map_err(
        |message| ConfigError::Invalid {
            path: "[filter] rspamd_url".into(),
            message,
        },
    )?;
    Ok(Some((Arc::new(rspamd), limit)))
}

/// `[filter] dnsbl`'s lookups, when lists are configured.
fn client_check(config: &Config) -> Result<Option<crate::smtp::server::Blocklists>, ConfigError> {
    if config.filter.dnsbl.is_empty() {
        return Ok(None);
    }
    let limit = Duration::from_secs(config.filter.dnsbl_timeout_secs.max(1));
    let zones = config.filter.dnsbl.clone();
    let check = crate::smtp::dnsbl::DnsblCheck::new(zones, config.filter.nameserver, limit)
        .map_err(|e| ConfigError::Invalid {
            path: "/etc/resolv.conf".into(),
            message: format!("{e} (set [filter] nameserver)"),
        })?;
    // The check keeps its own deadline per list; this one only stops a check that would
    // not.
    Ok(Some((Arc::new(check), limit + Duration::from_secs(1))))
}

/// Where journal copies may come from: `[journal] allow`, else loopback and the
/// primary's addresses (its name resolved now, at start and on SIGHUP).
pub fn journal_allow(config: &Config) -> JournalAllow {
    if let Some(nets) = &config.journal.allow {
        return JournalAllow::new(nets.clone());
    }
    if config.journal.addresses.is_empty() {
        return JournalAllow::default();
    }
    let primary = match std::net::ToSocketAddrs::to_socket_addrs(config.primary_addr().as_str()) {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot resolve primary.address: journal copies accepted from loopback only \
                 until it resolves (on SIGHUP); set [journal] allow to list the primary"
            );
            Vec::new()
        }
    };
    JournalAllow::loopback_and(primary)
}

/// The listener's STARTTLS acceptor for `config`'s `[tls]` certificate and key, if set.
///
/// # Errors
/// [`TlsError`] naming the file that cannot be read or used.
pub fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Ok(Some(TlsAcceptor::from(tls::server_config(cert, key)?))),
        _ => Ok(None),
    }
}

/// Run until `shutdown` completes; on SIGHUP, apply what [`reload`] reloads from the
/// configuration `load` reads (the same file serve started with).
pub async fn serve(
    config: Config,
    load: impl Fn() -> Result<Config, ConfigError> + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    // Before anything else: a SIGHUP's default action would end the process.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServeError::Signal)?;
    // A configured ARC key that does not load stops the start before the spool is opened.
    let arc = arc_sealer(&config)?;
    // `started` holds the spool's lock until serve returns.
    let (storage, started) = Storage::serve(&config).await?;
    let recovered = started.recovered;
    if !started.orphans.moved.is_empty() || started.orphans.deleted > 0 {
        tracing::warn!(
            orphaned = started.orphans.moved.len(),
            deleted = started.orphans.deleted,
            "message files without an index record moved to orphans/ (audited; `standby \
             reindex` indexes them again); files of deleted messages removed"
        );
    }
    if recovered.removed > 0 {
        tracing::info!(
            removed = recovered.removed,
            "removed unfinished (never acknowledged) spool files"
        );
    }
    if started.dropped > 0 {
        tracing::warn!(
            dropped = started.dropped,
            "after a power cut: rows whose messages never reached the disk (never \
             acknowledged) removed"
        );
    }
    let unpublished: Vec<_> = recovered
        .unpublished
        .into_iter()
        .map(|s| (s.id, s.envelope))
        .collect();
    if !unpublished.is_empty() {
        let checked = crate::publish::check_unpublished(
            &storage,
            unpublished,
            &config.journal(),
            &config.retention(),
            false,
        )
        .await?;
        tracing::warn!(
            published = checked.published,
            readmitted = checked.readmitted,
            removed = checked.removed,
            "after a crash: stored messages put in place (those without a row indexed \
             again from their envelope); incomplete ones (never acknowledged) removed"
        );
    }
    let publisher = Arc::new(crate::publish::Publisher::new(storage.clone()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // SPF after the 250: the listener stores each message with a pending verdict and
    // the background worker looks it up (see `crate::sender`).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let verifier = sender_verifier(&config, clock.clone())?;
    let (checks, checks_worker) = match &verifier {
        Some(v) => {
            let (checks, worker) = SenderChecks::start(
                v.clone(),
                storage.index.clone(),
                Limits::default(),
                stop_rx.clone(),
            );
            (Some(checks), Some(worker))
        }
        None => (None, None),
    };
    // Messages this process stored, counted: IMAP's IDLE wakes on them.
    let (new_mail_tx, new_mail) = tokio::sync::watch::channel(0u64);
    let new_mail_tx = Arc::new(new_mail_tx);
    let spool = {
        let (storage, clock, hostname) = (storage.clone(), clock.clone(), config.hostname.clone());
        let publisher = publisher.clone();
        move |c: &Config| -> Arc<dyn Inbound> {
            let mut spool = Spool::new(storage.clone(), clock.clone(), hostname.clone())
                .with_publisher(publisher.clone())
                .with_new_mail(new_mail_tx.clone())
                .with_journal(c.journal())
                .with_retention(c.retention());
            if let Some(checks) = &checks {
                spool = spool.with_sender_checks(checks.clone());
            }
            Arc::new(spool)
        }
    };
    let server = smtp_server(&config, spool(&config), tls_acceptor(&config)?)?.shared();
    let relay = Arc::new(SmtpRelay::from_config(&config)?);
    let listeners = server::listeners(&config.listen)?;
    tracing::info!(
        listen = %server::local_addrs(&listeners),
        primary = relay.address(),
        node = %config.node_id(),
        store = %store_description(&config),
        "standby serving"
    );
    let mut settings = drain_settings_with(&config, verifier);
    settings.arc = arc;
    let drainer = Drainer::new(storage.clone(), relay.clone(), clock.clone(), settings);
    let (retention_tx, retention) = tokio::sync::watch::channel(config.retention());
    let login_limits: Arc<dyn crate::ports::LoginLimits> =
        Arc::new(crate::backend::MemLoginLimits::default());
    let in_flight = Arc::new(crate::submission::InFlight::default());
    // What users send, from the emergency inbox and the submission listener alike.
    let sub = &config.submission;
    let sends = config.web.listen.is_some() || sub.listen.is_some() || sub.listen_tls.is_some();
    let mut outbound_queue = None;
    let sending = if sends || config.outbound.relay.is_some() || config.outbound.mode.is_some() {
        let sending = crate::outbound::Sending::new(
            storage.clone(),
            spool(&config),
            clock.clone(),
            &config.domains,
            config.outbound.sent_copy.clone(),
        )
        .with_rate(sub.rate_per_hour);
        // Outside recipients only where the administrator chose a way out: an inbox
        // that was set up to read must not start sending to the internet.
        let chosen = config.outbound.relay.is_some() || config.outbound.mode.is_some();
        if chosen {
            outbound_queue = start_outbound(
                &config,
                &storage,
                clock.clone(),
                sending.queued(),
                stop_rx.clone(),
            )
            .await?;
        }
        let outside = outbound_queue.is_some();
        Some(sending.with_outside(outside))
    } else {
        None
    };
    let key = session_key(&config)?;
    let drain_now = Arc::new(tokio::sync::Notify::new());
    let web = start_web(
        &config,
        &storage,
        clock.clone(),
        login_limits.clone(),
        in_flight.clone(),
        sending.clone(),
        key.clone(),
        drain_now.clone(),
        stop_rx.clone(),
    )
    .await?;
    // Alerts and notices by mail go out the outbound path, never through the primary.
    let mailer = match (&sending, &outbound_queue, config.domains.first()) {
        (Some(sending), Some(_), Some(domain)) => {
            Some(Arc::new(crate::outbound::mailer::SystemMailer {
                sending: sending.clone(),
                from: format!("standby@{domain}"),
                hostname: config.hostname.clone(),
            }) as Arc<dyn crate::ports::Mailer>)
        }
        _ => None,
    };
    let continuity = crate::serve::continuity::runner(
        &config,
        crate::serve::continuity::Parts {
            storage: storage.clone(),
            clock: clock.clone(),
            mailer,
            key: Some(key),
            sdk: None,
            store: config.store_description(),
            webhook_secret: None,
            decide_only: false,
            alternates_text: None,
        },
    )
    .await?;
    if mail_access::wanted(&config) {
        let users = match &web {
            Some(w) => w.users.clone(),
            None => load_users(&config, "[imap] or [pop3] listen").await?,
        };
        let logins = Arc::new(crate::users::login::Logins::new(
            users,
            login_limits.clone(),
            storage.audit.clone(),
            clock.clone(),
            in_flight.clone(),
        ));
        mail_access::start(
            &config,
            mail_access::Parts {
                storage: storage.clone(),
                clock: clock.clone(),
                logins,
                new_mail,
                stop: stop_rx.clone(),
            },
        )?;
    }
    let submission = match &sending {
        Some(sending) => {
            start_submission(
                &config,
                &storage,
                clock.clone(),
                login_limits,
                in_flight,
                web.as_ref().map(|w| w.users.clone()),
                sending.clone(),
                stop_rx.clone(),
            )
            .await?
        }
        None => Vec::new(),
    };
    tokio::spawn(
        reload::Reloader {
            load: Box::new(load),
            spool: Box::new(spool),
            started: config.clone(),
            server: server.clone(),
            submission,
            retention: retention_tx,
            web,
        }
        .run(hangups),
    );
    start_metrics(&config, &storage, stop_rx.clone())?;
    let health = tokio::spawn(health_loop(HealthLoop {
        relay,
        storage,
        clock,
        drainer,
        interval: Duration::from_secs(config.health.interval_secs.max(1)),
        hysteresis: hysteresis(&config),
        retention,
        node: config.node_id(),
        continuity,
        drain_now,
        stop: stop_rx,
    }));
    server::run(listeners, server, shutdown).await;
    // Let a running drain finish the message in hand and release its other claims, so a
    // restart does not wait for leases to expire.
    let _ = stop_tx.send(true);
    tracing::debug!("waiting for the drain to stop");
    if tokio::time::timeout(Duration::from_secs(15), health)
        .await
        .is_err()
    {
        tracing::warn!("drain did not stop within 15 s; its leases expire by themselves");
    }
    if let Some(queue) = outbound_queue
        && tokio::time::timeout(Duration::from_secs(15), queue)
            .await
            .is_err()
    {
        tracing::warn!(
            "the outbound queue did not stop within 15 s; its leases expire by themselves"
        );
    }
    if let Some(worker) = checks_worker {
        // It gives checks in flight two seconds; what is left stays pending.
        let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
    }
    // Every accepted message's row durable and the message in place, so the next start
    // has nothing to index again.
    if tokio::time::timeout(Duration::from_secs(5), publisher.flush())
        .await
        .is_err()
    {
        tracing::warn!("publishing the last stored messages took over 5 s; the next start does it");
    }
    tracing::info!("standby stopped");
    drop(started.lock);
    Ok(())
}

/// Start the emergency inbox on `[web] listen`, if set: its users from `[users]` (the
/// bucket's `users/passwd` on AWS), HTTPS with the `[tls]` certificate when there is one.
#[allow(clippy::too_many_arguments)]
async fn start_web(
    config: &Config,
    storage: &Storage,
    clock: Arc<dyn Clock>,
    limits: Arc<dyn crate::ports::LoginLimits>,
    in_flight: Arc<crate::submission::InFlight>,
    sending: Option<crate::outbound::Sending>,
    key: crate::web::SessionKey,
    drain_now: Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<reload::WebReload>, ServeError> {
    let Some(listen) = &config.web.listen else {
        return Ok(None);
    };
    let users = load_users(config, "[web] listen").await?;
    let acceptor = tls_acceptor(config)?;
    let secure = acceptor.is_some();
    let tls = acceptor.map(|a| Arc::new(arc_swap::ArcSwapOption::from_pointee(a)));
    let web = Arc::new(crate::web::Web {
        storage: storage.clone(),
        checks: crate::web::check_slots(),
        slowest_check: Default::default(),
        users: users.clone(),
        limits,
        in_flight,
        sending,
        // Attachments come in the form: no host limit stands between browser and app.
        uploads: None,
        key,
        clock,
        settings: crate::web::WebSettings::of(config, secure),
        drain_now: Some(drain_now),
    });
    let listeners = server::listeners(listen)?;
    tracing::info!(
        listen = %server::local_addrs(&listeners),
        https = secure,
        users = users.directory().await.len(),
        "emergency inbox serving"
    );
    tokio::spawn(crate::web::server::run(
        listeners,
        crate::web::router(web),
        tls.clone(),
        stop,
    ));
    Ok(Some(reload::WebReload { users, tls }))
}

/// `/metrics` on `[metrics] listen`, if set (plain HTTP: a scraper's own network).
fn start_metrics(
    config: &Config,
    storage: &Storage,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let Some(listen) = &config.metrics.listen else {
        return Ok(());
    };
    let (storage, node, primary, store) = (
        storage.clone(),
        config.node_id(),
        config.primary_addr(),
        config.store_description(),
    );
    let scrape = move || {
        let (storage, node, primary, store) = (
            storage.clone(),
            node.clone(),
            primary.clone(),
            store.clone(),
        );
        async move {
            match crate::status::exposition(&storage, &node, &primary, store).await {
                Ok(text) => (
                    axum::http::StatusCode::OK,
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                ),
                Err(e) => {
                    tracing::error!(error = %e, "metrics: the store did not answer");
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; charset=utf-8",
                        )],
                        "the store did not answer\n".to_string(),
                    )
                }
            }
        }
    };
    let router = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    let listeners = server::listeners(listen)?;
    tracing::info!(listen = %server::local_addrs(&listeners), "metrics serving");
    tokio::spawn(crate::web::server::run(listeners, router, None, stop));
    Ok(())
}

/// The key the emergency inbox signs sessions and the notices' login links with:
/// `[web] session_key_env`'s, else a random one (sessions end with a restart).
fn session_key(config: &Config) -> Result<crate::web::SessionKey, ServeError> {
    Ok(match &config.web.session_key_env {
        Some(var) => {
            let secret = std::env::var(var).map_err(|_| ConfigError::Env {
                var: var.clone(),
                message: "[web] session_key_env names it, but it is not set".into(),
            })?;
            crate::web::SessionKey::from_secret(secret.as_bytes()).map_err(|e| {
                ConfigError::Env {
                    var: var.clone(),
                    message: e.to_string(),
                }
            })?
        }
        None => crate::web::SessionKey::random(),
    })
}

/// The users of the emergency inbox and the submission listener (`what` needs them).
async fn load_users(config: &Config, what: &str) -> Result<Arc<crate::users::Users>, ServeError> {
    let files = crate::backend::user_files(config)
        .await
        .ok_or_else(|| ConfigError::Invalid {
            path: what.into(),
            message: "logins need their users: set [users] file = \"users.passwd\" \
                      (a Dovecot passwd-file; `standby user add` writes it)"
                .into(),
        })?;
    // SIGHUP reloads at once; other processes' edits (`standby user add`, another
    // node's) are read within a minute anyway.
    let (domain, age) = (
        config.users.default_domain.clone(),
        Some(Duration::from_secs(60)),
    );
    // The users' files unreadable right now (permissions, S3 throttling) must not keep
    // the mail listener from starting: nobody can log in until they are read (tried
    // again every minute and on SIGHUP).
    let users = match crate::users::Users::load(files.clone(), domain.clone(), age).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the users; nobody can log in until they can be read");
            crate::users::Users::empty(files, domain, age)
        }
    };
    Ok(Arc::new(users))
}

/// The submission listeners of `[submission]` (587 with STARTTLS, 465 with implicit TLS).
#[allow(clippy::too_many_arguments)]
async fn start_submission(
    config: &Config,
    storage: &Storage,
    clock: Arc<dyn Clock>,
    limits: Arc<dyn crate::ports::LoginLimits>,
    in_flight: Arc<crate::submission::InFlight>,
    users: Option<Arc<crate::users::Users>>,
    sending: crate::outbound::Sending,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<server::Shared>, ServeError> {
    let sub = &config.submission;
    if sub.listen.is_none() && sub.listen_tls.is_none() {
        return Ok(Vec::new());
    }
    let users = match users {
        Some(u) => u,
        None => load_users(config, "[submission] listen").await?,
    };
    let outside = sending.outside();
    let logins = Arc::new(crate::users::login::Logins::new(
        users.clone(),
        limits,
        storage.audit.clone(),
        clock,
        in_flight,
    ));
    let gate = Arc::new(crate::submission::Gate::new(logins, sending.rate()));
    let inbound: Arc<dyn Inbound> = Arc::new(crate::submission::Submissions {
        sending,
        users,
        gate: gate.clone(),
    });
    let tls = tls_acceptor(config)?;
    let mut shared = Vec::new();
    for (listen, implicit) in [(&sub.listen, false), (&sub.listen_tls, true)] {
        let Some(listen) = listen else { continue };
        let mut server = smtp_server(config, inbound.clone(), tls.clone())?;
        server.implicit_tls = implicit;
        server.client_check = None;
        server.content_check = None;
        server.policy.submission = Some(crate::smtp::session::SubmissionPolicy {
            allow_plaintext_auth: sub.allow_plaintext_auth,
            gate: gate.clone(),
            outside,
        });
        let listeners = server::listeners(listen)?;
        tracing::info!(
            listen = %server::local_addrs(&listeners),
            implicit_tls = implicit,
            outside,
            "submission serving"
        );
        let mut stop = stop.clone();
        let current = server.shared();
        shared.push(current.clone());
        tokio::spawn(server::run(listeners, current, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    Ok(shared)
}

/// The outbound queue for `[outbound]`, run at once when mail for outside recipients is
/// stored (`queued`) and every 30 seconds; whether outside recipients can be served.
async fn start_outbound(
    config: &Config,
    storage: &Storage,
    clock: Arc<dyn Clock>,
    queued: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, ServeError> {
    let mode = config.outbound_mode();
    let out: Arc<dyn crate::ports::Outbound> = match mode {
        crate::config::OutboundMode::Relay => match SmtpRelay::smarthost(config)? {
            Some(relay) => Arc::new(crate::smtp::outbound::SmtpOutbound::relay(relay)),
            None => return Ok(None),
        },
        crate::config::OutboundMode::Direct => {
            let resolver = crate::dns::resolver(config.outbound.nameserver, true).map_err(|e| {
                ConfigError::Invalid {
                    path: "[outbound] nameserver".into(),
                    message: e,
                }
            })?;
            Arc::new(crate::smtp::outbound::SmtpDirect::new(
                SmtpRelay::for_mx(config)?,
                resolver,
                config.outbound.direct_allow_private,
            ))
        }
        // SES signs with the domain's Easy DKIM: no key of ours.
        crate::config::OutboundMode::Ses => {
            // On either backend: the standard chain, with the config's `region` and
            // `endpoint_url` when set.
            let sdk = crate::backend::aws::sdk_config(
                config.region.as_deref(),
                config.endpoint_url.as_deref(),
            )
            .await;
            Arc::new(crate::backend::aws::SesOutbound::new(&sdk))
        }
    };
    let dkim = crate::outbound::dkim::DkimKeys::load(config)
        .map_err(|e| ConfigError::Invalid {
            path: "[outbound] dkim".into(),
            message: e.to_string(),
        })?
        .map(Arc::new)
        .filter(|_| mode != crate::config::OutboundMode::Ses);
    match (&dkim, mode) {
        // Straight to the recipients' servers unsigned: most would file it as spam or
        // refuse it, and the domain's reputation pays. Not started.
        (None, crate::config::OutboundMode::Direct) => {
            tracing::error!(
                "[outbound] mode = \"direct\" needs a DKIM key ([outbound] dkim_selector and \
                 dkim_key, published under each domain); mail to outside recipients is refused \
                 until there is one"
            );
            return Ok(None);
        }
        (None, crate::config::OutboundMode::Ses) => {}
        (None, _) => tracing::warn!(
            "no DKIM key ([outbound] dkim_selector, dkim_key): mail to outside recipients goes \
             out unsigned unless the smarthost signs it, and may fail DMARC"
        ),
        _ => {}
    }
    let queue = crate::outbound::queue::OutboundQueue::new(
        storage.clone(),
        out,
        clock,
        dkim,
        (&drain_settings(config)).into(),
    );
    Ok(Some(tokio::spawn(async move {
        loop {
            match queue.run(Some(&stop)).await {
                Ok(r) if r != crate::outbound::queue::QueueReport::default() => tracing::info!(
                    delivered = r.delivered,
                    deferred = r.deferred,
                    failed = r.failed,
                    "outbound run"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "outbound run failed"),
            }
            tokio::select! {
                () = queued.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    })))
}

/// Where received mail goes, for the start line.
fn store_description(config: &Config) -> String {
    match config.aws_settings() {
        Some(a) => format!(
            "s3://{}/{} + dynamodb table {}",
            a.bucket,
            crate::config::SERVE_PREFIX,
            a.table
        ),
        None => config.data_dir().display().to_string(),
    }
}

struct HealthLoop {
    relay: Arc<SmtpRelay>,
    storage: Storage,
    clock: Arc<dyn Clock>,
    drainer: Drainer,
    interval: Duration,
    hysteresis: Hysteresis,
    /// Replaced on SIGHUP.
    retention: tokio::sync::watch::Receiver<crate::config::RetentionPolicy>,
    /// This node's name: its health record's key in a shared index.
    node: String,
    /// Continuity events, after each probe and drain.
    continuity: crate::continuity::runner::Runner,
    /// The console asked for a drain (see [`crate::continuity::DRAIN_NOW`]).
    drain_now: Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Probe every interval; drain while the primary is up, expire old mail while it is not;
/// apply the retention policy every `[retention] interval_secs`.
async fn health_loop(mut l: HealthLoop) {
    let address = l.relay.address().to_string();
    let mut tick = tokio::time::interval(l.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retained: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = l.drain_now.notified() => {}
            _ = l.stop.changed() => return,
        }
        let policy = l.retention.borrow().clone();
        let every = Duration::from_secs(policy.interval_secs.max(1));
        if retained.is_none_or(|t| t.elapsed() >= every) {
            retained = Some(tokio::time::Instant::now());
            if let Err(e) = crate::retention::run(&l.storage, &policy, l.clock.now()).await {
                tracing::error!(error = %e, "retention run failed");
            }
        }
        let index = l.storage.index.as_ref();
        let h = l.hysteresis;
        let key = (l.node.as_str(), address.as_str());
        let rec = match health::check(l.relay.as_ref(), index, l.clock.as_ref(), key, h).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot record primary health");
                continue;
            }
        };
        // Asked from the console: a probe that answered is enough, once.
        let asked = rec.state != PrimaryState::Up
            && rec.last_probe.as_ref().is_some_and(|p| p.ok)
            && crate::continuity::take_drain_request(l.storage.events.as_ref()).await;
        // Halted by the circuit breaker: only an operator's `standby drain --force` resumes.
        if (rec.state != PrimaryState::Up && !asked) || rec.halted.is_some() {
            if let Err(e) = l.drainer.expire_old().await {
                tracing::error!(error = %e, "expiring old messages failed");
            }
            continuity_tick(&l.continuity, None).await;
            continue;
        }
        let opts = RunOptions {
            stop: Some(l.stop.clone()),
            // The ramp counts from the primary's return.
            // Asked for before the health turned up: the primary is back as of now.
            back_since: if rec.state == PrimaryState::Up {
                rec.since
            } else {
                Some(l.clock.now())
            },
            ..Default::default()
        };
        let run = l.drainer.run(opts).await;
        let drain_error = match &run {
            Err(e) => Some(e.to_string()),
            Ok(r) if r.breaker == Some(crate::model::Breaker::Mail4xx) => r.stopped.clone(),
            Ok(_) => None,
        };
        match run {
            Ok(r) if r.eventful() => {
                tracing::info!(
                    delivered = r.delivered,
                    deferred = r.deferred,
                    failed = r.failed,
                    stopped = r.stopped.as_deref().unwrap_or(""),
                    "drain run"
                );
                if let Err(e) = health::record_drain(index, key, &r, l.clock.now()).await {
                    tracing::error!(error = %e, "cannot record the drain result");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "drain failed"),
        }
        continuity_tick(&l.continuity, drain_error).await;
        if *l.stop.borrow() {
            return;
        }
    }
}

/// One step of the continuity loop; its failures are logged and the next probe tries
/// again.
async fn continuity_tick(r: &crate::continuity::runner::Runner, drain_error: Option<String>) {
    match r.tick(drain_error).await {
        Ok(report) if report.alerts_failed > 0 || report.notices_failed > 0 => tracing::warn!(
            alerts_sent = report.alerts_sent,
            alerts_failed = report.alerts_failed,
            notices_sent = report.notices_sent,
            notices_failed = report.notices_failed,
            "continuity: some alerts or notices not sent yet"
        ),
        Ok(report) if report.alerts_sent > 0 || report.notices_sent > 0 => tracing::info!(
            alerts_sent = report.alerts_sent,
            notices_sent = report.notices_sent,
            "continuity: alerts and notices sent"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "continuity check failed"),
    }
}
