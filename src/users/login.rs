//! Logging in with the standby's own users, for every way in that takes a password: the
//! submission listener (SMTP AUTH), IMAP and POP3.
//!
//! The users are `[users]`'s passwd-file, never the failed primary's directory. Failed
//! attempts are limited per client address and per name, like the emergency inbox's
//! ([`crate::ports::LoginLimits`], the same counters), logins in progress count against
//! the limit too ([`InFlight`]), hash checks run a few at a time off the runtime, every
//! login and failure goes to the audit log as `<service>:<name>`, and a failure is
//! answered no sooner than [`FAILED_LOGIN_TIME`] so the time tells nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ports::{AuditEntry, AuditLog, Clock, LoginLimits};
use crate::users::{Account, Users};

/// Failed logins allowed per client address and per name in [`ATTEMPT_WINDOW`] (the
/// emergency inbox's figures).
pub const ATTEMPTS: u32 = 5;
pub const ATTEMPT_WINDOW: chrono::Duration = chrono::Duration::seconds(60);
/// A failed login is answered no sooner than this (the inbox's floor).
pub const FAILED_LOGIN_TIME: Duration = Duration::from_millis(600);
/// Longest name and password checked.
const MAX_NAME: usize = 254;
const MAX_PASSWORD: usize = 1024;

/// What a login attempt came to.
#[derive(Debug)]
pub enum Outcome {
    Ok(Account),
    /// Wrong name or password (the same answer for both).
    Failed,
    /// Too many failures from this client or for this name: refused for this long
    /// without checking the password.
    Blocked(Duration),
    /// The limits or the audit log could not be reached: nobody is let in.
    Unavailable(String),
}

/// Password logins (see the module docs).
pub struct Logins {
    users: Arc<Users>,
    limits: Arc<dyn LoginLimits>,
    audit: Arc<dyn AuditLog>,
    clock: Arc<dyn Clock>,
    /// Hash checks at once (each takes tens of milliseconds of CPU).
    checks: Arc<tokio::sync::Semaphore>,
    /// Logins being checked now (shared with the emergency inbox's).
    in_flight: Arc<InFlight>,
}

impl Logins {
    pub fn new(
        users: Arc<Users>,
        limits: Arc<dyn LoginLimits>,
        audit: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Logins {
            users,
            limits,
            audit,
            clock,
            checks: Arc::new(tokio::sync::Semaphore::new(2)),
            in_flight,
        }
    }

    /// The users logins are checked against.
    pub fn users(&self) -> &Arc<Users> {
        &self.users
    }

    async fn audit(&self, service: &str, action: &str, who: &str, ip: IpAddr) {
        let entry = AuditEntry::session(
            action,
            &format!("{service}:{who}"),
            &format!("from {ip}"),
            self.clock.now(),
        );
        if let Err(e) = self.audit.append(&entry).await {
            tracing::error!(error = %e, service, "cannot write the audit entry of a login");
        }
    }

    /// Check `name` and `password` for a login to `service` (`smtp`, `imap`, `pop3`)
    /// from `client`.
    pub async fn login(
        &self,
        service: &str,
        name: &str,
        password: &str,
        client: IpAddr,
    ) -> Outcome {
        let started = tokio::time::Instant::now();
        let dir = self.users.directory().await;
        let clipped: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
        let address = dir
            .address_of(name)
            .unwrap_or_else(|| clipped.to_lowercase());
        let now = self.clock.now();
        let keys = [
            format!("ip:{}", client_key(client)),
            format!("user:{address}"),
        ];
        let Some(checking) = self.in_flight.start(&keys, ATTEMPTS) else {
            tracing::warn!(service, "login refused, too many attempts at once");
            return Outcome::Blocked(Duration::from_secs(60));
        };
        for key in &keys {
            let busy = checking.others(key);
            match self
                .limits
                .blocked(
                    key,
                    now,
                    ATTEMPT_WINDOW,
                    ATTEMPTS.saturating_sub(busy).max(1),
                )
                .await
            {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    tracing::warn!(
                        service,
                        limit = key.split(':').next().unwrap_or(""),
                        "login refused, too many failed attempts"
                    );
                    return Outcome::Blocked(wait.to_std().unwrap_or(Duration::from_secs(60)));
                }
                Err(e) => return Outcome::Unavailable(e.to_string()),
            }
        }
        let account = if name.len() > MAX_NAME || password.len() > MAX_PASSWORD {
            None
        } else {
            let Ok(slot) = self.checks.clone().acquire_owned().await else {
                return Outcome::Unavailable("shutting down".into());
            };
            let (typed, password) = (name.to_string(), password.to_string());
            let checked = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                dir.verify(&typed, &password)
            })
            .await;
            match checked {
                Ok(a) => a,
                Err(e) => return Outcome::Unavailable(e.to_string()),
            }
        };
        let Some(account) = account else {
            for key in &keys {
                if let Err(e) = self.limits.failed(key, now, ATTEMPT_WINDOW).await {
                    return Outcome::Unavailable(e.to_string());
                }
            }
            self.audit(service, "login-failed", &address, client).await;
            tracing::info!(service, "failed login");
            tokio::time::sleep_until(started + FAILED_LOGIN_TIME).await;
            return Outcome::Failed;
        };
        self.audit(service, "login", &account.address, client).await;
        tracing::info!(
            service,
            user = crate::model::redact(&account.address),
            "login"
        );
        Outcome::Ok(account)
    }
}

/// Logins being checked now, per limit key (`ip:...`, `user:...`): counted as failures
/// until they end, so parallel attempts cannot all pass the limit before any failure is
/// recorded. One per process, shared by every way of logging in.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<String, u32>>);

impl InFlight {
    /// Count one login under each of `keys` while the guard lives; `None` when one of
    /// them has `max` in progress already.
    pub fn start(&self, keys: &[String], max: u32) -> Option<Checking<'_>> {
        Checking::start(&self.0, keys, max)
    }
}

/// Logins in progress under some limit keys, until dropped.
pub struct Checking<'a> {
    map: &'a Mutex<HashMap<String, u32>>,
    keys: Vec<String>,
    /// What was in progress under each key before this one.
    before: Vec<u32>,
}

impl<'a> Checking<'a> {
    /// Count one login under each of `keys`; `None` when one of them has as many in
    /// progress as failures are allowed.
    fn start(
        map: &'a Mutex<HashMap<String, u32>>,
        keys: &[String],
        max: u32,
    ) -> Option<Checking<'a>> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let before: Vec<u32> = keys
            .iter()
            .map(|k| m.get(k).copied().unwrap_or(0))
            .collect();
        // A hard cap on a name only: an office behind one address logging in at once
        // is held to the failure count (`blocked` with these subtracted), not refused.
        let capped = keys
            .iter()
            .zip(&before)
            .any(|(k, n)| k.starts_with("user:") && *n >= max);
        if capped {
            return None;
        }
        for k in keys {
            *m.entry(k.clone()).or_default() += 1;
        }
        Some(Checking {
            map,
            keys: keys.to_vec(),
            before,
        })
    }

    /// Other logins in progress under `key` when this one started.
    pub fn others(&self, key: &str) -> u32 {
        self.keys
            .iter()
            .position(|k| k == key)
            .map_or(0, |i| self.before[i])
    }
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = m.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
    }
}

/// The key the per-client limit counts by (an IPv6 /64, as the inbox's).
fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(ip.to_string(), |v4| v4.to_string()),
        v4 => v4.to_string(),
    }
}
