//! The primary: can the drain log in the way it will on the day (STARTTLS and AUTH as
//! configured), and what does the stored health state say.

use super::Check;
use crate::config::{Config, TlsMode};
use crate::health;
use crate::model::PrimaryState;
use crate::ports::Storage;

/// Open a session with the primary as the drain does, then QUIT.
pub async fn login(config: &Config) -> Check {
    let name = "primary login";
    let addr = config.primary_addr();
    let relay = match crate::lambda::operator_relay(config).await {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                name,
                e.to_string(),
                "fix [primary] in the config (or the secret it names)",
            );
        }
    };
    match relay.login().await {
        Ok(l) => {
            let auth = relay
                .auth_user()
                .map_or("no AUTH configured".into(), |u| format!("AUTH as {u}"));
            let tls = if l.tls { "STARTTLS" } else { "no TLS" };
            let detail = format!("{addr}: {tls}, {auth}");
            match (&l.tls_error, config.primary.tls) {
                (Some(e), _) => Check::warn(
                    name,
                    format!("{detail}; the TLS handshake failed, plain text: {e}"),
                    "enable TLS 1.2 or 1.3 on the primary's listener, then set primary.tls = \"required\"",
                ),
                (None, _) if l.cert_error.is_some() => Check::warn(
                    name,
                    format!(
                        "{detail}, but the certificate does not verify ({}): encrypted, not authenticated",
                        l.cert_error.as_deref().unwrap_or_default()
                    ),
                    "fix the primary's certificate (or primary.ca_file, or primary.tls_server_name for an IP address), then set primary.tls = \"required\"",
                ),
                (None, TlsMode::Opportunistic) if !l.tls => Check::warn(
                    name,
                    format!("{detail} (the primary offers no STARTTLS)"),
                    "enable STARTTLS on the primary's listener; mail crosses the network in the clear",
                ),
                _ => Check::pass(name, detail),
            }
        }
        Err(e) => Check::fail(
            name,
            format!("{addr}: {e}"),
            "check primary.address and port, the primary's firewall (the drain's address \
             must be allowed), STARTTLS and the AUTH credentials; infra/README.md shows the \
             primary's side",
        ),
    }
}

/// The health state the drain keeps (probes with hysteresis).
pub async fn health(config: &Config, storage: Result<&Storage, &str>) -> Check {
    let name = "primary health";
    let storage = match storage {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot open the index: {e}"),
                "see the storage checks above",
            );
        }
    };
    let index = storage.index.as_ref();
    let rec = match health::view(index, &config.node_id(), &config.primary_addr()).await {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                name,
                format!("reading the health record: {e}"),
                "see the storage checks above",
            );
        }
    };
    let held = storage
        .index
        .count(crate::model::Status::Held)
        .await
        .unwrap_or(0);
    let last = rec
        .last_probe
        .as_ref()
        .map(|p| {
            format!(
                ", last probe {} ({})",
                p.at.format("%Y-%m-%d %H:%M:%SZ"),
                p.detail
            )
        })
        .unwrap_or_default();
    match rec.state {
        PrimaryState::Up => Check::pass(name, format!("up, {held} held{last}")),
        PrimaryState::Unknown => Check::warn(
            name,
            format!("unknown: no probe recorded yet, {held} held"),
            "start `standby serve` (or check that the drain's schedule runs)",
        ),
        PrimaryState::Down => Check::warn(
            name,
            format!("down, {held} held{last}"),
            "mail is being held; it is delivered when the primary answers again",
        ),
    }
}
