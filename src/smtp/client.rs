//! `SmtpRelay`: delivers held mail to the primary, and probes it.
//!
//! The primary is always reached at its configured address, never through an MX lookup
//! (which would point back at us). Sessions are reused for many messages; with
//! PIPELINING the MAIL, RCPT and DATA commands go out in one write (RFC 2920). Replies are
//! parsed by `smtp-proto`. Per-recipient refusals are returned in the [`Transaction`] for
//! the drain to judge; only session-level failures are errors.
//!
//! Read as an attacker on the path would, every reply is suspect:
//! - bytes that arrive with the `220` to STARTTLS, before the handshake, are an injection
//!   ("NO STARTTLS", USENIX Security 2021): the session is dropped, never resumed in TLS;
//! - every reply must answer the command it is matched with: a byte left over where none
//!   can be (after the 354, before a new transaction) drops the session;
//! - only 354 continues DATA, only 250/251 accepts a RCPT and only 250 a MAIL; anything
//!   else positive drops the session before the final dot;
//! - each stage has its own timeout (RFC 5321 §4.5.3.2, [`StageTimeouts`]), bounded by an
//!   optional deadline (the Lambda's); a timeout or a lost connection after the final dot
//!   is *ambiguous* ([`Transaction::ambiguous`]): the primary may have the message;
//! - a primary at one of our own listen addresses, or that greets with our hostname, is
//!   this standby itself: [`RelayError::Loop`].
//!
//! TLS: `required` verifies the certificate; `opportunistic` encrypts even when it does not
//! verify (noted, see [`TlsState`]) and falls back to plain text only when the handshake
//! itself fails, as Postfix's `may`.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use rustls::pki_types::ServerName;
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS,
    EhloResponse, response::parser::ResponseReceiver,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::data::WireEncoder;
use super::server::Io;
use super::tls::{CertPolicy, ClientTls};
use crate::config::{Config, StageTimeouts, TlsMode};
use crate::error::RelayError;
use crate::model::address;
use crate::ports::{BlobReader, Probe, Relay, RelaySession, Reply, Transaction};

const MAX_REPLY: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

/// Connection settings for the primary.
#[derive(Clone)]
pub struct SmtpRelay {
    addr: String,
    helo: String,
    tls_mode: TlsMode,
    tls: ClientTls,
    /// `[primary] tls_server_name`, else the host part of `addr`.
    server_name: Option<String>,
    credentials: Option<(String, String)>,
    allow_plaintext_auth: bool,
    timeouts: StageTimeouts,
    /// The health probe's: `[health] timeout_secs` at every stage.
    probe_timeouts: StageTimeouts,
    /// The probe logs in (`[health] probe_auth`).
    probe_auth: bool,
    /// This standby's listen addresses: a primary among them is a loop.
    own: Vec<SocketAddr>,
    /// No reply is waited for past this instant (the Lambda's invocation deadline).
    deadline: Option<Instant>,
}

/// The value of the variable named by `primary.auth_password_env`, when AUTH is configured.
///
/// # Errors
/// [`RelaySetupError::MissingPassword`] when the variable is not set.
pub fn password_from_env(config: &Config) -> Result<Option<String>, RelaySetupError> {
    let p = &config.primary;
    match (&p.auth_user, &p.auth_password_env) {
        (Some(_), Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| RelaySetupError::MissingPassword(var.clone())),
        _ => Ok(None),
    }
}

/// The relay could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum RelaySetupError {
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("primary.auth_password_env names `{0}`, but that environment variable is not set")]
    MissingPassword(String),
    #[error("[outbound] relay_password_env names `{0}`, but that environment variable is not set")]
    MissingRelayPassword(String),
}

impl SmtpRelay {
    /// Build from `[primary]`; reads the password from the named environment variable.
    pub fn from_config(config: &Config) -> Result<Self, RelaySetupError> {
        Self::with_password(config, password_from_env(config)?)
    }

    /// Build from `[primary]` with the password already resolved (e.g. from a secret).
    pub fn with_password(
        config: &Config,
        password: Option<String>,
    ) -> Result<Self, RelaySetupError> {
        let p = &config.primary;
        let credentials = match (&p.auth_user, password) {
            (Some(user), Some(pass)) => Some((user.clone(), pass)),
            (Some(_), None) => {
                return Err(RelaySetupError::MissingPassword(
                    p.auth_password_env.clone().unwrap_or_default(),
                ));
            }
            _ => None,
        };
        Ok(SmtpRelay {
            addr: config.primary_addr(),
            helo: config.hostname.clone(),
            tls_mode: p.tls,
            tls: ClientTls::new(p.tls_verify, p.ca_file.as_deref())?,
            server_name: p.tls_server_name.clone(),
            credentials,
            allow_plaintext_auth: p.allow_plaintext_auth,
            timeouts: p.timeouts(),
            probe_timeouts: StageTimeouts::all(Duration::from_secs(
                config.health.timeout_secs.max(1),
            )),
            probe_auth: config.health.probe_auth,
            own: config.listen.iter().copied().collect(),
            deadline: None,
        })
    }

    /// The smarthost of `[outbound] relay` (the `relay` mode of sending): STARTTLS per
    /// `relay_tls` (default `required`, verified against `relay_ca_file` or the system's
    /// roots), AUTH when `relay_user` is set (the password from `relay_password_env`).
    /// `None` when no relay is set.
    ///
    /// # Errors
    /// The CA file cannot be used; the password's variable is not set.
    pub fn smarthost(config: &Config) -> Result<Option<Self>, RelaySetupError> {
        let o = &config.outbound;
        let Some(addr) = &o.relay else {
            return Ok(None);
        };
        let credentials = match (&o.relay_user, &o.relay_password_env) {
            (Some(user), Some(var)) => Some((
                user.clone(),
                std::env::var(var)
                    .map_err(|_| RelaySetupError::MissingRelayPassword(var.clone()))?,
            )),
            _ => None,
        };
        Ok(Some(SmtpRelay {
            addr: addr.clone(),
            tls_mode: o.relay_tls.unwrap_or(TlsMode::Required),
            tls: ClientTls::new(true, o.relay_ca_file.as_deref())?,
            credentials,
            allow_plaintext_auth: o.relay_allow_plaintext_auth,
            probe_auth: true,
            ..Self::for_mx(config)?
        }))
    }

    /// A session with `addr`, an address of `host`, a recipient domain's MX host (the
    /// `direct` mode of sending): STARTTLS when offered, encrypted even when the
    /// certificate (checked for `host`) does not verify and plain text when the
    /// handshake fails (as Postfix's `may`), no AUTH; the same loop checks as for the
    /// primary.
    pub fn mx(&self, host: &str, addr: SocketAddr) -> SmtpRelay {
        SmtpRelay {
            addr: addr.to_string(),
            tls_mode: TlsMode::Opportunistic,
            server_name: Some(host.trim_end_matches('.').to_string()),
            credentials: None,
            allow_plaintext_auth: false,
            ..self.clone()
        }
    }

    /// The settings of `config` for sessions with recipients' MX hosts (see
    /// [`SmtpRelay::mx`]): our hostname, the `[primary]` stage timeouts, the system's
    /// roots to verify against (a failure only noted).
    ///
    /// # Errors
    /// The system's roots cannot be read.
    pub fn for_mx(config: &Config) -> Result<SmtpRelay, RelaySetupError> {
        Ok(SmtpRelay {
            addr: String::new(),
            helo: config.hostname.clone(),
            tls_mode: TlsMode::Opportunistic,
            tls: ClientTls::new(true, None)?,
            server_name: None,
            credentials: None,
            allow_plaintext_auth: false,
            timeouts: config.primary.timeouts(),
            probe_timeouts: StageTimeouts::all(Duration::from_secs(
                config.health.timeout_secs.max(1),
            )),
            probe_auth: false,
            own: config
                .listen
                .iter()
                .chain(config.submission.listen.iter().flat_map(|l| l.iter()))
                .copied()
                .collect(),
            deadline: None,
        })
    }

    /// The same relay, waiting for no reply past `deadline` (a Lambda invocation's end):
    /// a stage timeout longer than what is left is cut short.
    pub fn with_deadline(mut self, deadline: Option<std::time::Instant>) -> Self {
        self.deadline = deadline.map(Instant::from_std);
        self
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    fn server_name(&self) -> Result<ServerName<'static>, RelayError> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => self
                .addr
                .rsplit_once(':')
                .map_or(self.addr.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']'),
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| RelayError::Tls(format!("bad server name `{host}`: {e}")))
    }

    /// `d`, cut short to what is left before the deadline, if there is one.
    fn bounded(&self, d: Duration) -> Duration {
        self.deadline
            .map_or(d, |dl| d.min(dl.saturating_duration_since(Instant::now())))
    }

    /// Whether `name` (from a greeting or an EHLO reply) is our own hostname.
    fn is_me(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        !name.is_empty() && name.eq_ignore_ascii_case(self.helo.trim_end_matches('.'))
    }

    /// Resolve the primary's address and refuse one of our own listen addresses.
    async fn resolve(&self, t: &StageTimeouts) -> Result<Vec<SocketAddr>, RelayError> {
        let connect_err = |source| RelayError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            self.bounded(t.other),
            tokio::net::lookup_host(self.addr.as_str()),
        )
        .await
        .map_err(|_| RelayError::Timeout { stage: "connect" })?
        .map_err(connect_err)?
        .collect();
        if let Some(a) = addrs.iter().find(|a| is_own(**a, &self.own)) {
            return Err(RelayError::Loop(format!(
                "{} ({a}) is where this standby listens",
                self.addr
            )));
        }
        Ok(addrs)
    }

    async fn open(
        &self,
        tls: bool,
        auth: bool,
        t: &StageTimeouts,
    ) -> Result<SmtpSession, RelayError> {
        let addrs = self.resolve(t).await?;
        let connect = TcpStream::connect(addrs.as_slice());
        let stream = tokio::time::timeout(self.bounded(t.other), connect)
            .await
            .map_err(|_| RelayError::Timeout { stage: "connect" })?
            .map_err(|source| RelayError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut s = SmtpSession {
            io: Box::new(stream),
            buf: Vec::new(),
            caps: EhloResponse::default(),
            timeouts: *t,
            deadline: self.deadline,
            dirty: false,
            broken: false,
            tls: TlsState::Plain,
            chunk: Vec::new(),
            stuffed: Vec::new(),
            abandoned: false,
        };
        let banner = s.reply("greeting", t.greeting).await?;
        if banner.code != 220 {
            return Err(refused("greeting", banner));
        }
        if let Some(host) = banner.text.split_whitespace().next()
            && self.is_me(host)
        {
            return Err(RelayError::Loop(format!(
                "{} greets as `{host}`, this standby's own hostname",
                self.addr
            )));
        }
        s.ehlo(&self.helo).await?;
        self.check_ehlo_name(&s)?;
        if tls && s.caps.capabilities & EXT_START_TLS != 0 {
            s.cmd("STARTTLS\r\n", t.other).await?;
            let r = s.reply("STARTTLS", t.other).await?;
            if r.code != 220 {
                return Err(refused("STARTTLS", r));
            }
            // Nothing may follow the 220 before the handshake: whatever did was sent in
            // the clear and would be read as replies inside TLS.
            if !s.buf.is_empty() {
                return Err(RelayError::Protocol(format!(
                    "{} bytes arrived after the 220 to STARTTLS, before the TLS handshake \
                     (a reply injection on the path, or a broken primary); session dropped",
                    s.buf.len()
                )));
            }
            let policy = match self.tls_mode {
                TlsMode::Required => CertPolicy::Verify,
                _ => CertPolicy::Encrypt,
            };
            let (config, note) = self
                .tls
                .config(policy)
                .map_err(|e| RelayError::Tls(e.to_string()))?;
            let plain = std::mem::replace(
                &mut s.io,
                Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
            );
            let connector = TlsConnector::from(config);
            let handshake = connector.connect(self.server_name()?, plain);
            let stream = tokio::time::timeout(self.bounded(t.other), handshake)
                .await
                .map_err(|_| RelayError::Timeout {
                    stage: "TLS handshake",
                })?
                .map_err(|e| RelayError::Tls(e.to_string()))?;
            s.io = Box::new(stream);
            s.tls = match note.outcome() {
                Some(Ok(())) => TlsState::Verified,
                Some(Err(why)) => {
                    tracing::warn!(primary = %self.addr, reason = %why, "the primary's certificate does not verify; encrypting without authentication (tls = \"opportunistic\")");
                    TlsState::Unverified(why)
                }
                None => TlsState::Unchecked,
            };
            s.ehlo(&self.helo).await?;
            self.check_ehlo_name(&s)?;
        } else if tls && self.tls_mode == TlsMode::Required {
            return Err(RelayError::Tls(
                "primary does not offer STARTTLS and primary.tls = \"required\"".into(),
            ));
        }
        if auth && let Some((user, pass)) = &self.credentials {
            if !s.tls.encrypted() && !self.allow_plaintext_auth {
                return Err(RelayError::Tls(
                    "not sending the AUTH password over a connection without TLS (the primary \
                     offered no STARTTLS or it failed); set primary.allow_plaintext_auth = true \
                     only for a primary on a trusted network"
                        .into(),
                ));
            }
            s.auth(user, pass).await?;
        }
        Ok(s)
    }

    fn check_ehlo_name(&self, s: &SmtpSession) -> Result<(), RelayError> {
        if self.is_me(&s.caps.hostname) {
            return Err(RelayError::Loop(format!(
                "{} answers EHLO as `{}`, this standby's own hostname",
                self.addr, s.caps.hostname
            )));
        }
        Ok(())
    }

    /// A session as `primary.tls` says: with `opportunistic`, plain text again when the
    /// TLS handshake itself fails (logged; the session's [`TlsState`] says so).
    async fn session(&self, auth: bool, t: &StageTimeouts) -> Result<SmtpSession, RelayError> {
        match self.tls_mode {
            TlsMode::None => self.open(false, auth, t).await,
            TlsMode::Required => self.open(true, auth, t).await,
            // Only a failed handshake (rustls speaks TLS 1.2 and 1.3 only; old primaries
            // exist): a certificate that does not verify is used encrypted, above.
            TlsMode::Opportunistic => match self.open(true, auth, t).await {
                Err(RelayError::Tls(e)) => {
                    tracing::warn!(primary = %self.addr, error = %e, "STARTTLS with the primary failed; retrying without TLS (tls = \"opportunistic\")");
                    let mut s = self.open(false, auth, t).await?;
                    s.tls = TlsState::Fallback(e);
                    Ok(s)
                }
                other => other,
            },
        }
    }
}

/// Whether `target` is one of `own` listen addresses (an unspecified one, `0.0.0.0:25`,
/// stands for every local address of its family on that port).
fn is_own(target: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|l| {
        l.port() == target.port()
            && (l.ip() == target.ip()
                || (l.ip().is_unspecified()
                    && l.is_ipv4() == target.is_ipv4()
                    && is_local_ip(target.ip())))
    })
}

/// Whether `ip` is an address of this machine: loopback, or one a socket can bind to.
fn is_local_ip(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

fn refused(stage: &'static str, r: Reply) -> RelayError {
    RelayError::Refused {
        stage,
        code: r.code,
        text: r.text,
    }
}

#[async_trait]
impl Relay for SmtpRelay {
    async fn connect(&self) -> Result<Box<dyn RelaySession>, RelayError> {
        Ok(Box::new(self.session(true, &self.timeouts).await?))
    }
}

/// What became of TLS in a session with the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsState {
    /// No STARTTLS (`tls = "none"`, or the primary offers none).
    Plain,
    /// STARTTLS; the certificate verified.
    Verified,
    /// STARTTLS; the certificate did not verify (why) and was used anyway (`opportunistic`).
    Unverified(String),
    /// STARTTLS; no certificate checked (`tls_verify = false`).
    Unchecked,
    /// The TLS handshake failed (why); the session went on in plain text (`opportunistic`).
    Fallback(String),
}

impl TlsState {
    pub fn encrypted(&self) -> bool {
        matches!(
            self,
            TlsState::Verified | TlsState::Unverified(_) | TlsState::Unchecked
        )
    }
}

impl std::fmt::Display for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsState::Plain => write!(f, "no TLS"),
            TlsState::Verified => write!(f, "STARTTLS, certificate verified"),
            TlsState::Unverified(why) => {
                write!(
                    f,
                    "STARTTLS, certificate NOT verified ({why}): encrypted only"
                )
            }
            TlsState::Unchecked => {
                write!(f, "STARTTLS, certificate not checked (tls_verify = false)")
            }
            TlsState::Fallback(why) => {
                write!(f, "PLAIN TEXT: the TLS handshake failed ({why})")
            }
        }
    }
}

/// What [`SmtpRelay::login`] found: a session as the drain opens it, then QUIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCheck {
    /// STARTTLS was negotiated.
    pub tls: bool,
    /// With `tls = "opportunistic"`: why STARTTLS was given up.
    pub tls_error: Option<String>,
    /// With `tls = "opportunistic"`: why the certificate did not verify (used anyway).
    pub cert_error: Option<String>,
}

impl SmtpRelay {
    /// Open a session exactly as the drain does (STARTTLS per `primary.tls`, AUTH when
    /// configured: [`SmtpRelay::auth_user`] logged in), send nothing, QUIT. For
    /// `standby doctor`.
    pub async fn login(&self) -> Result<LoginCheck, RelayError> {
        let session = self.session(true, &self.timeouts).await?;
        let check = LoginCheck {
            tls: session.tls.encrypted(),
            tls_error: match &session.tls {
                TlsState::Fallback(e) => Some(e.clone()),
                _ => None,
            },
            cert_error: match &session.tls {
                TlsState::Unverified(e) => Some(e.clone()),
                _ => None,
            },
        };
        Box::new(session).quit().await;
        Ok(check)
    }

    /// The AUTH user, when AUTH is configured.
    pub fn auth_user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(u, _)| u.as_str())
    }
}

#[async_trait]
impl Probe for SmtpRelay {
    /// The drain's own session (STARTTLS per `primary.tls`, AUTH unless `[health]
    /// probe_auth = false`), each stage within `[health] timeout_secs`, then QUIT: a wrong
    /// password or a certificate that will not do fails the probe, not every drain.
    async fn probe(&self) -> Result<String, RelayError> {
        let s = self.session(self.probe_auth, &self.probe_timeouts).await?;
        let mut detail = format!("220/250 from {}; {}", s.caps.hostname, s.tls);
        match (self.auth_user(), self.probe_auth) {
            (Some(u), true) => detail.push_str(&format!("; AUTH as {u}")),
            (Some(_), false) => detail.push_str("; AUTH not tried (probe_auth = false)"),
            (None, _) => {}
        }
        Box::new(s).quit().await;
        Ok(detail)
    }
}

/// An open session with the primary.
pub struct SmtpSession {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    caps: EhloResponse<String>,
    timeouts: StageTimeouts,
    /// No reply is waited for past this (the Lambda's deadline).
    deadline: Option<Instant>,
    /// A transaction was left half-way; send RSET before the next one.
    dirty: bool,
    /// The session is in an unknown state (no reply to the final dot, or a failure inside
    /// DATA): never reused.
    broken: bool,
    tls: TlsState,
    /// The body's read and dot-stuffed buffers, kept from one message to the next
    /// (allocating and zero-filling them per message showed in the drain's profile).
    chunk: Vec<u8>,
    stuffed: Vec<u8>,
    /// Set from the 354 until the end of data is written: if it is still set when the
    /// session ends, something failed inside DATA and nothing more may be sent.
    abandoned: bool,
}

/// Length of the first complete reply in `buf` (all its lines), if there is one.
fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl + 1];
        start += nl + 1;
        if line.get(3) != Some(&b'-') {
            return Some(start);
        }
    }
    None
}

/// A reply to MAIL: 250 accepts, 4xx and 5xx refuse; anything else is out of step.
fn check_mail(r: &Reply) -> Result<(), RelayError> {
    match r.code {
        250 | 400..=599 => Ok(()),
        _ => Err(RelayError::Protocol(format!(
            "primary answered MAIL with `{r}`: only 250 accepts a sender; session dropped"
        ))),
    }
}

/// A reply to RCPT: 250 and 251 accept, 4xx and 5xx refuse; anything else (a 235, a 354)
/// is no acceptance and drops the session before any data.
fn check_rcpt(r: &Reply) -> Result<(), RelayError> {
    match r.code {
        250 | 251 | 400..=599 => Ok(()),
        _ => Err(RelayError::Protocol(format!(
            "primary answered RCPT with `{r}`: only 250 or 251 accepts a recipient; session \
             dropped, nothing sent"
        ))),
    }
}

fn rcpt_accepted(r: &Reply) -> bool {
    matches!(r.code, 250 | 251)
}

impl SmtpSession {
    async fn cmd(&mut self, line: &str, timeout: Duration) -> Result<(), RelayError> {
        self.write(line.as_bytes(), "write", timeout).await
    }

    /// The instant a wait of `timeout` must end by: now + timeout, or the deadline.
    fn until(&self, timeout: Duration) -> Instant {
        let at = Instant::now() + timeout;
        self.deadline.map_or(at, |d| d.min(at))
    }

    async fn write(
        &mut self,
        bytes: &[u8],
        stage: &'static str,
        timeout: Duration,
    ) -> Result<(), RelayError> {
        let until = self.until(timeout);
        tokio::time::timeout_at(until, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| RelayError::Timeout { stage })??;
        Ok(())
    }

    /// Nothing may be waiting from the primary now (before a new command group, after
    /// the 354): a reply no command asked for would be matched with the next command.
    fn expect_silence(&self, stage: &'static str) -> Result<(), RelayError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let shown: String = String::from_utf8_lossy(&self.buf[..self.buf.len().min(80)])
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        Err(RelayError::Protocol(format!(
            "the primary sent `{shown}` {stage}, which no command asked for: replies would \
             no longer match commands; session dropped"
        )))
    }

    /// One whole reply. The timeout bounds the reply, not each read: a primary (or a
    /// tarpit) trickling one byte at a time cannot hold a drain worker forever
    /// (RFC 5321 §4.5.3.2 times replies).
    async fn raw_reply(
        &mut self,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<Vec<u8>, RelayError> {
        let deadline = self.until(timeout);
        loop {
            if let Some(n) = complete_reply(&self.buf) {
                return Ok(self.buf.drain(..n).collect());
            }
            if self.buf.len() > MAX_REPLY {
                return Err(RelayError::Protocol(format!("reply to {stage} too long")));
            }
            self.buf.reserve(4096);
            let n = tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| RelayError::Timeout { stage })??;
            if n == 0 {
                return Err(RelayError::Protocol(format!(
                    "connection closed while waiting for the reply to {stage}"
                )));
            }
        }
    }

    async fn reply(&mut self, stage: &'static str, timeout: Duration) -> Result<Reply, RelayError> {
        let raw = self.raw_reply(stage, timeout).await?;
        let r = ResponseReceiver::default()
            .parse(&mut raw.iter())
            .map_err(|e| RelayError::Protocol(format!("bad reply to {stage}: {e:?}")))?;
        let esc = if r.esc[0] != 0 {
            format!("{}.{}.{} ", r.esc[0], r.esc[1], r.esc[2])
        } else {
            String::new()
        };
        let text = r.message.replace(['\r', '\n'], " ");
        Ok(Reply::new(r.code, format!("{esc}{}", text.trim())))
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), RelayError> {
        let t = self.timeouts.other;
        self.cmd(&format!("EHLO {helo}\r\n"), t).await?;
        let raw = self.raw_reply("EHLO", t).await?;
        if raw.starts_with(b"250") {
            self.caps = EhloResponse::parse(&mut raw.iter())
                .map_err(|e| RelayError::Protocol(format!("bad EHLO reply: {e:?}")))?;
            return Ok(());
        }
        // Not ESMTP: fall back to HELO with no extensions.
        self.cmd(&format!("HELO {helo}\r\n"), t).await?;
        let r = self.reply("HELO", t).await?;
        if r.code != 250 {
            return Err(refused("HELO", r));
        }
        self.caps = EhloResponse::default();
        self.caps.hostname = r
            .text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(())
    }

    async fn auth(&mut self, user: &str, pass: &str) -> Result<(), RelayError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let t = self.timeouts.other;
        let mechs = self.caps.auth_mechanisms;
        if mechs & AUTH_PLAIN != 0 {
            let token = b64.encode(format!("\0{user}\0{pass}"));
            self.cmd(&format!("AUTH PLAIN {token}\r\n"), t).await?;
        } else if mechs & AUTH_LOGIN != 0 {
            self.cmd("AUTH LOGIN\r\n", t).await?;
            for part in [user, pass] {
                let r = self.reply("AUTH", t).await?;
                if r.code != 334 {
                    return Err(refused("AUTH", r));
                }
                self.cmd(&format!("{}\r\n", b64.encode(part)), t).await?;
            }
        } else {
            return Err(RelayError::Refused {
                stage: "AUTH",
                code: 530,
                text: "primary offers neither AUTH PLAIN nor AUTH LOGIN".into(),
            });
        }
        let r = self.reply("AUTH", t).await?;
        if r.code != 235 {
            return Err(refused("AUTH", r));
        }
        Ok(())
    }

    fn mail_command(&self, from: &str, rcpts: &[String], size_hint: Option<u64>) -> String {
        let caps = self.caps.capabilities;
        let mut cmd = format!("MAIL FROM:<{from}>");
        if caps & EXT_8BIT_MIME != 0 {
            cmd.push_str(" BODY=8BITMIME");
        }
        if caps & EXT_SMTP_UTF8 != 0 && (!from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii())) {
            cmd.push_str(" SMTPUTF8");
        }
        if let (Some(size), true) = (size_hint, caps & EXT_SIZE != 0) {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        cmd.push_str("\r\n");
        cmd
    }

    /// Send the message body ([`WireEncoder`]: CRLF line ends, dot-stuffed), each block
    /// within `block_timeout_secs`; returns what ends it (the final dot, after a line end
    /// when the body's last one is missing or bare), still unsent.
    async fn body(&mut self, mut body: BlobReader) -> Result<&'static [u8], RelayError> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(CHUNK, 0);
        let mut out = std::mem::take(&mut self.stuffed);
        let mut wire = WireEncoder::new();
        let block = self.timeouts.block;
        loop {
            let n = body
                .read(&mut chunk)
                .await
                .map_err(|e| RelayError::Blob(crate::error::StoreError::io("read", "blob", e)))?;
            if n == 0 {
                break;
            }
            let data = wire.encode(&chunk[..n], &mut out);
            self.write(data, "message data", block).await?;
        }
        (self.chunk, self.stuffed) = (chunk, out);
        Ok(wire.end())
    }
}

#[async_trait]
impl RelaySession for SmtpSession {
    async fn send(
        &mut self,
        mail_from: &str,
        rcpts: &[String],
        body: BlobReader,
    ) -> Result<Transaction, RelayError> {
        let t = self.timeouts;
        if self.broken {
            return Err(RelayError::Protocol(
                "session left in an unknown state by an earlier transaction".into(),
            ));
        }
        if self.dirty {
            self.expect_silence("before RSET")?;
            self.cmd("RSET\r\n", t.other).await?;
            self.reply("RSET", t.other).await?;
            self.dirty = false;
        }
        self.expect_silence("before MAIL")?;
        // Addresses are stored decoded: each goes out re-serialised in RFC 5321 form, so a
        // quoted local part stays one address (see `crate::model::address`).
        let unsendable = |a: &str| RelayError::Unsendable(format!("`{a}` is no RFC 5321 address"));
        let mail_from = address::smtp_path(mail_from).ok_or_else(|| unsendable(mail_from))?;
        let rcpts: Vec<String> = rcpts
            .iter()
            .map(|r| {
                address::smtp_path(r)
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| unsendable(r))
            })
            .collect::<Result<_, _>>()?;
        let utf8 = !mail_from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
        if utf8 && self.caps.capabilities & EXT_SMTP_UTF8 == 0 {
            return Err(RelayError::Unsendable(
                "the envelope has a UTF-8 address and the primary does not offer SMTPUTF8".into(),
            ));
        }
        let (mail_from, rcpts) = (mail_from.as_str(), rcpts.as_slice());
        let pipelining = self.caps.capabilities & EXT_PIPELINING != 0;
        let mail_cmd = self.mail_command(mail_from, rcpts, None);
        let rcpt_cmds: Vec<String> = rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();
        let mut tx = Transaction {
            mail: Reply::new(0, ""),
            rcpts: Vec::with_capacity(rcpts.len()),
            data: None,
            ambiguous: false,
        };
        // Replies are read in the order the commands went out, each checked against its
        // command: MAIL, one per RCPT, then DATA (RFC 2920 §3.1).
        let data_reply = if pipelining {
            let mut batch = mail_cmd;
            batch.extend(rcpt_cmds.iter().map(String::as_str));
            batch.push_str("DATA\r\n");
            self.cmd(&batch, t.mail).await?;
            tx.mail = self.reply("MAIL", t.mail).await?;
            check_mail(&tx.mail)?;
            for _ in rcpts {
                let r = self.reply("RCPT", t.rcpt).await?;
                check_rcpt(&r)?;
                tx.rcpts.push(r);
            }
            self.reply("DATA", t.data).await?
        } else {
            self.cmd(&mail_cmd, t.mail).await?;
            tx.mail = self.reply("MAIL", t.mail).await?;
            check_mail(&tx.mail)?;
            if tx.mail.code != 250 {
                self.dirty = true;
                return Ok(tx);
            }
            for cmd in &rcpt_cmds {
                self.cmd(cmd, t.rcpt).await?;
                let r = self.reply("RCPT", t.rcpt).await?;
                check_rcpt(&r)?;
                tx.rcpts.push(r);
            }
            if !tx.rcpts.iter().any(rcpt_accepted) {
                self.dirty = true;
                return Ok(tx);
            }
            self.cmd("DATA\r\n", t.data).await?;
            self.reply("DATA", t.data).await?
        };
        let accepted = tx.mail.code == 250 && tx.rcpts.iter().any(rcpt_accepted);
        match data_reply.code {
            354 => {}
            400..=599 => {
                self.dirty = true;
                if accepted {
                    tx.data = Some(data_reply);
                }
                return Ok(tx);
            }
            // A 250 here would mark the recipients delivered with no message sent.
            _ => {
                return Err(RelayError::Protocol(format!(
                    "primary answered DATA with `{data_reply}` instead of 354; no message \
                     data was sent, session dropped"
                )));
            }
        }
        // Until the end of data is out, a failure leaves a transaction half sent: nothing
        // more may go out on this connection (a QUIT would be message text, and over TLS
        // the close would flush a final dot still buffered in the session, after the
        // drain took the failure for a deferral). See [`SmtpSession::quit`].
        self.broken = true;
        self.abandoned = true;
        // The 354 is the last reply owed: anything more is out of step (a reply to the
        // final dot sent ahead of the data, say).
        self.expect_silence("after its 354 to DATA")?;
        if !accepted {
            // A pipelining server said 354 with nobody to deliver to: end the empty
            // message at once; its reply carries no delivery.
            self.write(b".\r\n", "end of data", t.block).await?;
            (self.broken, self.abandoned) = (false, false);
            self.reply("end of data", t.dot).await?;
            self.dirty = true;
            return Ok(tx);
        }
        let end = self.body(body).await?;
        // The point of no return: once the final dot is out, the primary may have the
        // message, whatever happens to its reply.
        self.write(end, "end of data", t.block).await?;
        (self.broken, self.abandoned) = (false, false);
        match self.reply("end of data", t.dot).await {
            Ok(r) => tx.data = Some(r),
            Err(e) => {
                self.broken = true;
                tx.ambiguous = true;
                tx.data = Some(Reply::new(
                    451,
                    format!(
                        "4.4.2 no reply to the final dot ({e}): the primary may have the \
                         message, so sending it again may deliver it twice"
                    ),
                ));
            }
        }
        Ok(tx)
    }

    async fn quit(mut self: Box<Self>) {
        if self.abandoned {
            // Dropped as it is: the connection closes without a word, which aborts the
            // transaction at the primary.
            return;
        }
        let t = self.timeouts.other;
        if !self.broken && self.cmd("QUIT\r\n", t).await.is_ok() {
            let _ = self.reply("QUIT", t).await;
        }
        let _ = tokio::time::timeout(t, self.io.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Relay;

    /// A body handed over in reads of awkward sizes, cycling through `sizes`.
    struct Dribble {
        bytes: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl tokio::io::AsyncRead for Dribble {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            let want = this.sizes[this.turn % this.sizes.len()];
            this.turn += 1;
            let n = want.min(buf.remaining()).min(this.bytes.len() - this.at);
            buf.put_slice(&this.bytes[this.at..this.at + n]);
            this.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// What RFC 5321 §4.5.2 puts on the wire for `body`, a byte at a time: each line end
    /// (`<CR><LF>`, a bare `<CR>` or a bare `<LF>`) as `<CR><LF>`, a dot at a line's
    /// start doubled, a last line end added if missing, then `.<CR><LF>`.
    fn wire(body: &[u8]) -> Vec<u8> {
        let (mut out, mut at_line_start, mut i) = (Vec::new(), true, 0);
        while let Some(&b) = body.get(i) {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            at_line_start = b == b'\r' || b == b'\n';
            if at_line_start {
                out.extend_from_slice(b"\r\n");
                i += if b == b'\r' && body.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
            } else {
                out.push(b);
                i += 1;
            }
        }
        if !at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// A relay to `addr` in plain text, each block of data written within `block`
    /// seconds, every other stage's timeout 10 s.
    async fn relay_to(addr: SocketAddr, block: u64) -> SmtpRelay {
        relay_with(addr, block, false).await
    }

    /// [`relay_to`], with STARTTLS required (any certificate) when `tls`.
    async fn relay_with(addr: SocketAddr, block: u64, tls: bool) -> SmtpRelay {
        let tls = if tls {
            "tls = \"required\"\ntls_verify = false"
        } else {
            "tls = \"none\""
        };
        let config: crate::config::Config = toml::from_str(&format!(
            "hostname = \"standby.test\"\n[primary]\naddress = \"{addr}\"\n{tls}\n\
             timeout_secs = 10\nblock_timeout_secs = {block}\ndot_timeout_secs = 10\n"
        ))
        .unwrap();
        SmtpRelay::from_config(&config).unwrap()
    }

    /// A primary that stops reading after its 354 until the client's data write timed
    /// out, then reads whatever else comes: after a failed write inside DATA the client
    /// must send nothing more, neither a QUIT (message text there) nor, over TLS, what
    /// its session still buffers (a final dot). Nothing may follow the bytes it managed
    /// to write, and the connection ends without an end of data.
    #[tokio::test]
    async fn after_a_failed_data_write_nothing_more_goes_out() {
        nothing_more_after_a_failed_data_write(false).await;
    }

    /// [`after_a_failed_data_write_nothing_more_goes_out`] over STARTTLS: dropping the
    /// session neither sends QUIT nor flushes what the TLS layer still holds.
    #[tokio::test]
    async fn after_a_failed_data_write_nothing_more_goes_out_over_tls() {
        nothing_more_after_a_failed_data_write(true).await;
    }

    /// Plain TCP or, after STARTTLS, TLS.
    trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

    async fn nothing_more_after_a_failed_data_write(tls: bool) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["primary.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(
            super::super::tls::server_config(&cert_path, &key_path).unwrap(),
        );
        let primary = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s: Box<dyn Io> = Box::new(s);
            s.write_all(b"220 primary.test ESMTP\r\n").await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = vec![0; 4096];
            let mut encrypted = false;
            while !seen.ends_with(b"DATA\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before DATA");
                seen.extend_from_slice(&chunk[..n]);
                if !seen.ends_with(b"\r\n") {
                    continue;
                }
                if seen.starts_with(b"EHLO") {
                    let starttls = if tls && !encrypted {
                        "250-STARTTLS\r\n"
                    } else {
                        ""
                    };
                    s.write_all(
                        format!("250-primary.test\r\n{starttls}250 PIPELINING\r\n").as_bytes(),
                    )
                    .await
                    .unwrap();
                    seen.clear();
                } else if seen == b"STARTTLS\r\n" {
                    s.write_all(b"220 2.0.0 go ahead\r\n").await.unwrap();
                    s = Box::new(acceptor.accept(s).await.unwrap());
                    encrypted = true;
                    seen.clear();
                }
            }
            s.write_all(b"250 ok\r\n250 ok\r\n354 go on\r\n")
                .await
                .unwrap();
            // Not reading: the client's write of the body stalls and times out (1 s);
            // then reading again, within what a QUIT would wait (10 s).
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut rest = Vec::new();
            let read_all = async {
                // Until the end, or an error: TLS ended without a close_notify.
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) => return true,
                        Ok(n) => rest.extend_from_slice(&chunk[..n]),
                        Err(_) => return false,
                    }
                }
            };
            let closed = tokio::time::timeout(Duration::from_secs(20), read_all)
                .await
                .expect("the client closes the connection");
            (rest, encrypted, closed)
        });
        let mut session = relay_with(addr, 1, tls).await.connect().await.unwrap();
        // More than loopback's socket buffers hold.
        let body = b"a line\r\n".repeat(8 << 20);
        let sent = session
            .send(
                "a@example.test",
                &["b@example.test".into()],
                Box::new(std::io::Cursor::new(body)),
            )
            .await;
        assert!(
            matches!(
                sent,
                Err(RelayError::Timeout {
                    stage: "message data"
                })
            ),
            "{sent:?}"
        );
        session.quit().await;
        let (rest, encrypted, closed) = primary.await.unwrap();
        assert_eq!(encrypted, tls);
        // Over TLS the session was dropped, not shut down: a shutdown would first flush
        // what the TLS layer holds (there, a final dot), then send its close_notify.
        assert!(
            !(tls && closed),
            "the client shut TLS down after the failed write"
        );
        assert!(!rest.is_empty(), "some of the body arrived");
        let tail = &rest[rest.len().saturating_sub(64)..];
        assert!(
            !rest.windows(4).any(|w| w == b"QUIT") && !tail.ends_with(b"\r\n.\r\n"),
            "after the failed write: {:?}",
            String::from_utf8_lossy(tail)
        );
    }

    /// A primary that accepts everything and hands over each message's DATA as received,
    /// the final dot included.
    async fn collecting_primary() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220 primary.test ESMTP\r\n").await.unwrap();
            let (mut buf, mut data) = (Vec::new(), None::<Vec<u8>>);
            let mut chunk = vec![0; 8192];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    if let Some(d) = data.as_mut() {
                        d.append(&mut buf);
                        // The end as a strict primary sees it: only after a
                        // `<CR><LF>` (a body whose last line end was bare or missing
                        // must get one).
                        if d.as_slice() == b".\r\n" || d.ends_with(b"\r\n.\r\n") {
                            tx.send(data.take().unwrap()).unwrap();
                            s.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                        }
                        break;
                    }
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        break;
                    };
                    let line: Vec<u8> = buf.drain(..end + 2).collect();
                    let reply: &[u8] = match line.get(..4).unwrap_or_default() {
                        b"EHLO" => b"250-primary.test\r\n250 PIPELINING\r\n",
                        b"DATA" => {
                            data = Some(Vec::new());
                            b"354 go on\r\n"
                        }
                        b"QUIT" => b"221 bye\r\n",
                        _ if line.starts_with(b"RCPT TO:<nobody@") => b"550 5.1.1 no such user\r\n",
                        _ => b"250 ok\r\n",
                    };
                    s.write_all(reply).await.unwrap();
                }
            }
        });
        (addr, rx)
    }

    /// Bodies of every length around the block size, with lines that need a dot at and
    /// across block edges, with and without a last line end, with bare line ends, read in
    /// odd pieces: on the wire each is exactly its stuffed, CRLF form and one end of data
    /// that a strict primary sees.
    #[tokio::test]
    async fn the_body_goes_out_stuffed_and_whole_whatever_the_reads() {
        let (addr, mut received) = collecting_primary().await;
        let mut session = relay_to(addr, 10).await.connect().await.unwrap();
        let mut bodies: Vec<Vec<u8>> = vec![Vec::new(), b".".to_vec(), b"x".to_vec()];
        for len in [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3] {
            for dot_at in [0, CHUNK - 2, CHUNK - 1, CHUNK, len.saturating_sub(1)] {
                let mut body = b"a line\r\n".repeat(len / 8 + 1);
                body.truncate(len);
                if dot_at > 0 && dot_at < len {
                    body[dot_at - 1] = b'\n';
                }
                if dot_at < len {
                    body[dot_at] = b'.';
                }
                bodies.push(body.clone());
                body.extend_from_slice(b"\r\n");
                bodies.push(body);
            }
        }
        // Bare line ends (stored bytes nobody decoded, an SES object's): at and across
        // block edges, before a dot, and as the last byte.
        for at in [CHUNK - 2, CHUNK - 1, CHUNK] {
            for bare in [b'\r', b'\n'] {
                let mut body = b"a line\r\n".repeat(CHUNK / 8 + 2);
                body[at] = bare;
                body[at + 1] = b'.';
                bodies.push(body.clone());
                body.truncate(at + 1);
                bodies.push(body);
            }
        }
        for (i, body) in bodies.iter().enumerate() {
            let reader = Dribble {
                bytes: body.clone(),
                at: 0,
                sizes: vec![1 + i % 5, 4096, 7, CHUNK + 9, 300],
                turn: i,
            };
            let tx = session
                .send(
                    "a@example.test",
                    &["b@example.test".into()],
                    Box::new(reader),
                )
                .await
                .unwrap();
            assert_eq!(tx.data.as_ref().map(|r| r.code), Some(250), "body {i}");
            let got = received.recv().await.unwrap();
            assert!(got == wire(body), "body {i} of {} bytes", body.len());
            if i == 3 {
                // A 354 with every recipient refused (pipelining): the empty message is
                // ended at once, and the session goes on.
                let body = Box::new(std::io::Cursor::new(b"x\r\n".to_vec()));
                let tx = session
                    .send("a@example.test", &["nobody@example.test".into()], body)
                    .await
                    .unwrap();
                assert_eq!((tx.rcpts[0].code, tx.data.is_none()), (550, true));
                assert_eq!(received.recv().await.unwrap(), b".\r\n");
            }
        }
        session.quit().await;
    }

    #[test]
    fn own_listen_addresses_are_a_loop() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let own = [a("127.0.0.1:2525")];
        assert!(is_own(a("127.0.0.1:2525"), &own));
        assert!(!is_own(a("127.0.0.1:2526"), &own));
        assert!(!is_own(a("127.0.0.2:2525"), &own));
        // `0.0.0.0:25` listens on every local address of the machine, port 25.
        let any = [a("0.0.0.0:25")];
        assert!(is_own(a("127.0.0.1:25"), &any));
        assert!(is_own(a("127.0.0.53:25"), &any));
        assert!(
            !is_own(a("192.0.2.1:25"), &any),
            "TEST-NET-1 is no local address"
        );
        assert!(!is_own(a("127.0.0.1:587"), &any));
        // An IPv6 wildcard (IPv6-only sockets) is not an IPv4 address.
        assert!(!is_own(a("127.0.0.1:25"), &[a("[::]:25")]));
        assert!(is_own(a("[::1]:25"), &[a("[::]:25")]));
    }

    #[test]
    fn only_250_and_251_accept_a_recipient() {
        for code in [250, 251, 450, 550] {
            assert!(check_rcpt(&Reply::new(code, "x")).is_ok(), "{code}");
        }
        for code in [220, 235, 252, 354] {
            assert!(check_rcpt(&Reply::new(code, "x")).is_err(), "{code}");
        }
        assert!(check_mail(&Reply::new(251, "x")).is_err());
        assert!(!rcpt_accepted(&Reply::new(252, "x")));
    }

    #[test]
    fn finds_end_of_multiline_reply() {
        assert_eq!(complete_reply(b"250-a\r\n250-b\r\n"), None);
        assert_eq!(complete_reply(b"250-a\r\n250 b\r\nXYZ"), Some(14));
        assert_eq!(complete_reply(b"354\r\n"), Some(5));
        assert_eq!(complete_reply(b"220 partial"), None);
    }
}
