//! SIGHUP in `standby serve`: apply a renewed certificate, an edited recipients file and
//! new journal and retention rules without a restart, so without dropping a connection.
//!
//! Each SIGHUP re-reads the configuration file serve started with, then the files it
//! names, and builds the listener's next [`Server`] from the running one: the TLS
//! acceptor (certificate and key), the recipients list, the `[journal]` addresses, and a
//! spool filing with the new journal and retention rules; the `[retention]` policy also
//! goes to the loop that applies it. The new server is swapped in at once
//! ([`Shared`]): connections accepted from then on use it; a connection accepted before
//! keeps the one it started with to its end, so a transaction in progress finishes under
//! the rules it began with.
//!
//! All or nothing: when anything fails to load (the file no longer parses, a certificate
//! that cannot be read, a broken recipients line), the error is logged naming the file
//! (and line) and every running setting is kept. Everything else in the file (listen
//! addresses, `data_dir`, the backend, the primary, limits) takes effect at the next
//! restart; a reload that finds such a change says so.

use std::path::Path;
use std::sync::Arc;

use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::config::{Config, RetentionPolicy};
use crate::error::ConfigError;
use crate::ports::Inbound;
use crate::smtp::server::{Server, Shared};
use crate::smtp::tls::TlsError;

/// Reads the configuration file again.
pub(super) type Load = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;
/// Builds the spool a listener hands messages to, for a configuration's rules.
pub(super) type MakeSpool = Box<dyn Fn(&Config) -> Arc<dyn Inbound> + Send + Sync>;

/// Why a reload was refused (the running settings stay).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS certificate or key {0}")]
    Tls(#[from] TlsError),
}

/// What a SIGHUP changes; see the module docs.
pub(super) struct Reloader {
    pub load: Load,
    pub spool: MakeSpool,
    /// The configuration serve started with: what a reload does not change.
    pub started: Config,
    pub server: Shared,
    /// The submission listeners (`[submission]`): their certificate and recipients list
    /// follow the MX listener's.
    pub submission: Vec<Shared>,
    pub retention: watch::Sender<RetentionPolicy>,
    /// The emergency inbox's users and TLS acceptor, when `[web] listen` is set.
    pub web: Option<WebReload>,
}

/// What a SIGHUP reloads for the web app: the users file (and aliases), and the
/// certificate it serves HTTPS with.
pub(super) struct WebReload {
    pub users: Arc<crate::users::Users>,
    pub tls: Option<Arc<arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>>>,
}

impl Reloader {
    /// Reload on every SIGHUP, until the process ends.
    pub(super) async fn run(self, mut hangups: Signal) {
        let this = Arc::new(self);
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let r = this.clone();
            match tokio::task::spawn_blocking(move || r.next()).await {
                Ok(Ok((config, next))) => {
                    if let (Some(slot), Some(tls)) = (
                        this.web.as_ref().and_then(|w| w.tls.as_ref()),
                        next.tls.as_ref().map(|t| Arc::new(t.clone())),
                    ) {
                        slot.store(Some(tls));
                    }
                    this.apply(config, next);
                    if let Some(web) = &this.web {
                        match web.users.reload().await {
                            Ok(n) => tracing::info!(users = n, "reloaded: users"),
                            Err(e) => tracing::error!(
                                error = %e,
                                "users not reloaded; keeping the ones loaded"
                            ),
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reload failed; keeping the running settings");
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload failed; keeping the running settings");
                }
            }
        }
    }

    /// The new configuration and the listener's next server (reads files: blocking).
    fn next(&self) -> Result<(Config, Server), ReloadError> {
        let config = (self.load)()?;
        let tls = super::tls_acceptor(&config)?;
        let recipients = config.load_recipients()?;
        let mut next = Server::clone(&self.server.load());
        next.policy.recipients = recipients;
        next.policy.journal = config.journal();
        // `[journal] allow`, or the primary's address resolved again.
        next.policy.journal_allow = super::journal_allow(&config);
        next.policy.tls_available = tls.is_some();
        next.tls = tls;
        next.spool = (self.spool)(&config);
        Ok((config, next))
    }

    fn apply(&self, config: Config, next: Server) {
        if needs_restart(&self.started, &config) {
            tracing::warn!(
                "the configuration file has other changes; they take effect when \
                 `standby serve` restarts (a reload applies [tls], recipients, [journal] \
                 and [retention])"
            );
        }
        let recipients = next.policy.recipients.as_ref().map(|r| r.len());
        for sub in &self.submission {
            let mut s = Server::clone(&sub.load());
            s.tls = next.tls.clone();
            s.policy.tls_available = next.policy.tls_available;
            s.policy.recipients = next.policy.recipients.clone();
            sub.store(Arc::new(s));
        }
        self.server.store(Arc::new(next));
        self.retention.send_replace(config.retention());
        let cert = config.tls.cert.as_deref().map(Path::display);
        tracing::info!(
            tls_cert = %cert.map_or_else(|| "none".to_string(), |c| c.to_string()),
            recipients = %recipients.map_or_else(|| "any".to_string(), |n| n.to_string()),
            journal_addresses = config.journal.addresses.len(),
            retention_rules = config.retention.confidential.len(),
            "reloaded: TLS certificate, recipients, journal and retention rules"
        );
    }
}

/// Whether `new` differs from `started` in anything a reload does not apply.
fn needs_restart(started: &Config, new: &Config) -> bool {
    let mut same = new.clone();
    same.tls = started.tls.clone();
    same.recipients = started.recipients.clone();
    same.journal = started.journal.clone();
    same.retention = started.retention.clone();
    same.keep_delivered_days = started.keep_delivered_days;
    format!("{same:?}") != format!("{started:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "hostname = \"mx2.example.test\"\ndomains = [\"example.test\"]\n{extra}\n\
             [primary]\naddress = \"127.0.0.1\"\n"
        );
        Config::from_parts(Path::new("t.toml"), &text, Vec::new()).unwrap()
    }

    #[test]
    fn only_changes_outside_what_a_reload_applies_need_a_restart() {
        let started = config("");
        assert!(!needs_restart(&started, &config("")));
        assert!(!needs_restart(
            &started,
            &config("recipients = \"r.txt\"\nkeep_delivered_days = 3")
        ));
        assert!(needs_restart(
            &started,
            &config("listen = \"127.0.0.1:2526\"")
        ));
        assert!(needs_restart(&started, &config("data_dir = \"elsewhere\"")));
    }
}
