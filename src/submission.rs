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

use std::net::IpAddr;
use std::sync::Arc;

use crate::error::StoreError;
use crate::model::{Envelope, MessageId, Record};
use crate::outbound::{Sending, Submitted};
use crate::ports::{Accepting, Identity, Inbound, Login, SubmitGate};
use crate::users::login::{Logins, Outcome};
use crate::users::{Account, Users};

/// Logins being checked now: one count per process, shared by every way of logging in
/// (see [`crate::users::login`]).
pub use crate::users::login::InFlight;

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
    logins: Arc<Logins>,
    rate: Arc<crate::outbound::SendRate>,
}

impl Gate {
    pub fn new(logins: Arc<Logins>, rate: Arc<crate::outbound::SendRate>) -> Self {
        Gate { logins, rate }
    }
}

#[async_trait::async_trait]
impl SubmitGate for Gate {
    async fn login(&self, name: &str, password: &str, client: IpAddr) -> Login {
        match self.logins.login("smtp", name, password, client).await {
            Outcome::Ok(account) => Login::Ok(identity(&account)),
            Outcome::Failed => Login::Failed,
            Outcome::Blocked(wait) => Login::Blocked(wait),
            Outcome::Unavailable(why) => Login::Unavailable(why),
        }
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
