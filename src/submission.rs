//! The submission listener's side of the domain: who may log in, how much they may send,
//! and what happens to a message once it is received.
//!
//! [`Gate`] checks logins against `[users]` (the same passwd-file as the emergency inbox,
//! so a login never depends on the failed primary), with the inbox's limits on failed
//! attempts per client and per name, every login and failure in the audit log, and
//! counts each user's messages over the last hour (`[submission] rate_per_hour`).
//! [`Submissions`] is the [`Inbound`] the listener streams a message into: it keeps the
//! message (at most the listener's size limit) until the final dot, then hands it to
//! [`Sending::submit`], which checks the `From` and stores its parts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::StoreError;
use crate::model::{Envelope, MessageId, Record};
use crate::outbound::{Sending, Submitted};
use crate::ports::{
    Accepting, AuditEntry, AuditLog, Clock, Identity, Inbound, Login, LoginLimits, SubmitGate,
};
use crate::users::{Account, Users};

/// Failed logins allowed per client address and per name in [`ATTEMPT_WINDOW`] (the
/// emergency inbox's figures).
const ATTEMPTS: u32 = 5;
const ATTEMPT_WINDOW: chrono::Duration = chrono::Duration::seconds(60);
/// A failed login is answered no sooner than this (the inbox's floor).
const FAILED_LOGIN_TIME: Duration = Duration::from_millis(600);
/// Longest name and password checked.
const MAX_NAME: usize = 254;
const MAX_PASSWORD: usize = 1024;

/// What a user may do with the identity of an account.
pub fn identity(account: &Account) -> Identity {
    Identity {
        address: account.address.clone(),
        addresses: account.addresses(),
        excluded: account.excluded.clone(),
    }
}

/// Logins and the hourly rate (see the module docs).
pub struct Gate {
    users: Arc<Users>,
    limits: Arc<dyn LoginLimits>,
    audit: Arc<dyn AuditLog>,
    clock: Arc<dyn Clock>,
    /// Hash checks at once (each takes tens of milliseconds of CPU).
    checks: Arc<tokio::sync::Semaphore>,
    rate: Arc<crate::outbound::SendRate>,
    /// Logins being checked now (shared with the emergency inbox's).
    in_flight: Arc<InFlight>,
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

impl Gate {
    pub fn new(
        users: Arc<Users>,
        limits: Arc<dyn LoginLimits>,
        audit: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
        rate: Arc<crate::outbound::SendRate>,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Gate {
            users,
            limits,
            audit,
            clock,
            checks: Arc::new(tokio::sync::Semaphore::new(2)),
            rate,
            in_flight,
        }
    }

    async fn audit(&self, action: &str, who: &str, ip: IpAddr) {
        let entry = AuditEntry::session(
            action,
            &format!("smtp:{who}"),
            &format!("from {ip}"),
            self.clock.now(),
        );
        if let Err(e) = self.audit.append(&entry).await {
            tracing::error!(error = %e, "cannot write the audit entry of a submission login");
        }
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

#[async_trait::async_trait]
impl SubmitGate for Gate {
    async fn login(&self, name: &str, password: &str, client: IpAddr) -> Login {
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
            tracing::warn!("submission: login refused, too many attempts at once");
            return Login::Blocked(Duration::from_secs(60));
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
                        limit = key.split(':').next().unwrap_or(""),
                        "submission: login refused, too many failed attempts"
                    );
                    return Login::Blocked(wait.to_std().unwrap_or(Duration::from_secs(60)));
                }
                Err(e) => return Login::Unavailable(e.to_string()),
            }
        }
        let account = if name.len() > MAX_NAME || password.len() > MAX_PASSWORD {
            None
        } else {
            let Ok(slot) = self.checks.clone().acquire_owned().await else {
                return Login::Unavailable("shutting down".into());
            };
            let (typed, password) = (name.to_string(), password.to_string());
            let checked = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                dir.verify(&typed, &password)
            })
            .await;
            match checked {
                Ok(a) => a,
                Err(e) => return Login::Unavailable(e.to_string()),
            }
        };
        let Some(account) = account else {
            for key in &keys {
                if let Err(e) = self.limits.failed(key, now, ATTEMPT_WINDOW).await {
                    return Login::Unavailable(e.to_string());
                }
            }
            self.audit("login-failed", &address, client).await;
            tracing::info!("submission: failed login");
            tokio::time::sleep_until(started + FAILED_LOGIN_TIME).await;
            return Login::Failed;
        };
        self.audit("login", &account.address, client).await;
        tracing::info!(
            user = crate::model::redact(&account.address),
            "submission: login"
        );
        Login::Ok(identity(&account))
    }

    fn take_send(&self, user: &str) -> bool {
        self.rate.take(user)
    }
}

/// The [`Inbound`] of the submission listener (see the module docs).
#[derive(Clone)]
pub struct Submissions {
    pub sending: Sending,
    pub users: Arc<Users>,
    pub gate: Arc<Gate>,
}

#[async_trait::async_trait]
impl Inbound for Submissions {
    async fn begin(&self, env: Envelope) -> Result<Box<dyn Accepting>, StoreError> {
        Ok(Box::new(Message {
            id: MessageId::new(chrono::Utc::now()),
            env,
            bytes: Vec::new(),
            to: self.clone(),
        }))
    }
}

/// A message being received on the submission listener.
struct Message {
    /// Only for the listener's log before the message is stored.
    id: MessageId,
    env: Envelope,
    bytes: Vec<u8>,
    to: Submissions,
}

#[async_trait::async_trait]
impl Accepting for Message {
    fn id(&self) -> MessageId {
        self.id
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<Record, StoreError> {
        let Message { env, bytes, to, .. } = *self;
        let user = env.origin.user.clone().unwrap_or_default();
        // Looked up again: a user removed since the login sends nothing more.
        let account = to
            .users
            .directory()
            .await
            .account(&user)
            .ok_or_else(|| StoreError::Refused("535 5.7.8 User no longer exists\r\n".into()))?;
        let identity = identity(&account);
        let stored = to
            .sending
            .submit(Submitted {
                user: &identity,
                mail_from: &env.mail_from,
                rcpts: &env.rcpts,
                message: &bytes,
                origin: env.origin.clone(),
                via: "smtp",
            })
            .await?;
        stored
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Refused("451 4.3.0 nothing stored\r\n".into()))
    }

    async fn abort(self: Box<Self>) {}
}
