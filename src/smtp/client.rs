//! `SmtpRelay`: delivers held mail to the primary, and probes it.
//!
//! The primary is always reached at its configured address, never through an MX lookup
//! (which would point back at us). Sessions are reused for many messages; with
//! PIPELINING the MAIL, RCPT and DATA commands go out in one write (RFC 2920). Replies are
//! parsed by `smtp-proto`; every read has a timeout. Per-recipient refusals are returned
//! in the [`Transaction`] for the drain to judge; only session-level failures are errors.

use std::sync::Arc;
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
use tokio_rustls::TlsConnector;

use super::data::dot_stuff;
use super::server::Io;
use crate::config::{Config, TlsMode};
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
    tls: Arc<rustls::ClientConfig>,
    credentials: Option<(String, String)>,
    allow_plaintext_auth: bool,
    timeout: Duration,
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
            tls: super::tls::client_config(p.tls_verify, p.ca_file.as_deref())?,
            credentials,
            allow_plaintext_auth: p.allow_plaintext_auth,
            timeout: Duration::from_secs(p.timeout_secs.max(1)),
        })
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    fn server_name(&self) -> Result<ServerName<'static>, RelayError> {
        let host = self
            .addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| RelayError::Tls(format!("bad server name `{host}`: {e}")))
    }

    async fn open(&self, tls: bool, auth: bool) -> Result<SmtpSession, RelayError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
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
            timeout: self.timeout,
            dirty: false,
            encrypted: false,
        };
        let banner = s.reply("banner").await?;
        if banner.code != 220 {
            return Err(refused("banner", banner));
        }
        s.ehlo(&self.helo).await?;
        if tls && s.caps.capabilities & EXT_START_TLS != 0 {
            s.cmd("STARTTLS\r\n").await?;
            let r = s.reply("STARTTLS").await?;
            if r.code != 220 {
                return Err(refused("STARTTLS", r));
            }
            let plain = std::mem::replace(
                &mut s.io,
                Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
            );
            let connector = TlsConnector::from(self.tls.clone());
            let stream =
                tokio::time::timeout(self.timeout, connector.connect(self.server_name()?, plain))
                    .await
                    .map_err(|_| RelayError::Timeout {
                        stage: "TLS handshake",
                    })?
                    .map_err(|e| RelayError::Tls(e.to_string()))?;
            s.io = Box::new(stream);
            s.encrypted = true;
            s.ehlo(&self.helo).await?;
        } else if tls && self.tls_mode == TlsMode::Required {
            return Err(RelayError::Tls(
                "primary does not offer STARTTLS and primary.tls = \"required\"".into(),
            ));
        }
        if auth && let Some((user, pass)) = &self.credentials {
            if !s.encrypted && !self.allow_plaintext_auth {
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
        let session = match self.tls_mode {
            TlsMode::None => self.open(false, true).await?,
            TlsMode::Required => self.open(true, true).await?,
            // Opportunistic: if the handshake fails, deliver in the clear rather than not
            // at all (what Postfix does with `smtp_tls_security_level = may`).
            TlsMode::Opportunistic => match self.open(true, true).await {
                Err(RelayError::Tls(e)) => {
                    tracing::warn!(error = %e, "STARTTLS with the primary failed; retrying without TLS");
                    self.open(false, true).await?
                }
                other => other?,
            },
        };
        Ok(Box::new(session))
    }
}

/// What [`SmtpRelay::login`] found: a session as the drain opens it, then QUIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCheck {
    /// STARTTLS was negotiated.
    pub tls: bool,
    /// With `tls = "opportunistic"`: why STARTTLS was given up.
    pub tls_error: Option<String>,
}

impl SmtpRelay {
    /// Open a session exactly as the drain does (STARTTLS per `primary.tls`, AUTH when
    /// configured: [`SmtpRelay::auth_user`] logged in), send nothing, QUIT. For
    /// `standby doctor`.
    pub async fn login(&self) -> Result<LoginCheck, RelayError> {
        let (session, tls_error) = match self.tls_mode {
            TlsMode::None => (self.open(false, true).await?, None),
            TlsMode::Required => (self.open(true, true).await?, None),
            TlsMode::Opportunistic => match self.open(true, true).await {
                Err(RelayError::Tls(e)) => (self.open(false, true).await?, Some(e)),
                other => (other?, None),
            },
        };
        let tls = session.encrypted;
        Box::new(session).quit().await;
        Ok(LoginCheck { tls, tls_error })
    }

    /// The AUTH user, when AUTH is configured.
    pub fn auth_user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(u, _)| u.as_str())
    }
}

#[async_trait]
impl Probe for SmtpRelay {
    async fn probe(&self) -> Result<String, RelayError> {
        let s = self.open(false, false).await?;
        let host = s.caps.hostname.clone();
        Box::new(s).quit().await;
        Ok(format!("220/250 from {host}"))
    }
}

/// An open session with the primary.
pub struct SmtpSession {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    caps: EhloResponse<String>,
    timeout: Duration,
    /// A transaction was left half-way; send RSET before the next one.
    dirty: bool,
    /// STARTTLS was negotiated.
    encrypted: bool,
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

impl SmtpSession {
    async fn cmd(&mut self, line: &str) -> Result<(), RelayError> {
        self.write(line.as_bytes()).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        tokio::time::timeout(self.timeout, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| RelayError::Timeout { stage: "write" })??;
        Ok(())
    }

    /// Bytes of the next complete reply.
    /// One whole reply. The timeout bounds the reply, not each read: a primary (or a
    /// tarpit) trickling one byte at a time cannot hold a drain worker forever
    /// (RFC 5321 §4.5.3.2 times replies).
    async fn raw_reply(&mut self, stage: &'static str) -> Result<Vec<u8>, RelayError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
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

    async fn reply(&mut self, stage: &'static str) -> Result<Reply, RelayError> {
        let raw = self.raw_reply(stage).await?;
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
        self.cmd(&format!("EHLO {helo}\r\n")).await?;
        let raw = self.raw_reply("EHLO").await?;
        if raw.starts_with(b"250") {
            self.caps = EhloResponse::parse(&mut raw.iter())
                .map_err(|e| RelayError::Protocol(format!("bad EHLO reply: {e:?}")))?;
            return Ok(());
        }
        // Not ESMTP: fall back to HELO with no extensions.
        self.cmd(&format!("HELO {helo}\r\n")).await?;
        let r = self.reply("HELO").await?;
        if r.code != 250 {
            return Err(refused("HELO", r));
        }
        self.caps = EhloResponse::default();
        Ok(())
    }

    async fn auth(&mut self, user: &str, pass: &str) -> Result<(), RelayError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mechs = self.caps.auth_mechanisms;
        if mechs & AUTH_PLAIN != 0 {
            let token = b64.encode(format!("\0{user}\0{pass}"));
            self.cmd(&format!("AUTH PLAIN {token}\r\n")).await?;
        } else if mechs & AUTH_LOGIN != 0 {
            self.cmd("AUTH LOGIN\r\n").await?;
            for part in [user, pass] {
                let r = self.reply("AUTH").await?;
                if r.code != 334 {
                    return Err(refused("AUTH", r));
                }
                self.cmd(&format!("{}\r\n", b64.encode(part))).await?;
            }
        } else {
            return Err(RelayError::Refused {
                stage: "AUTH",
                code: 530,
                text: "primary offers neither AUTH PLAIN nor AUTH LOGIN".into(),
            });
        }
        let r = self.reply("AUTH").await?;
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

    /// Send the message body, dot-stuffed, and the final dot.
    async fn body(&mut self, mut body: BlobReader) -> Result<(), RelayError> {
        let mut chunk = vec![0u8; CHUNK];
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
        let mut at_line_start = true;
        loop {
            let n = body
                .read(&mut chunk)
                .await
                .map_err(|e| RelayError::Blob(crate::error::StoreError::io("read", "blob", e)))?;
            if n == 0 {
                break;
            }
            out.clear();
            dot_stuff(&chunk[..n], &mut at_line_start, &mut out);
            self.write(&out).await?;
        }
        let end: &[u8] = if at_line_start {
            b".\r\n"
        } else {
            b"\r\n.\r\n"
        };
        self.write(end).await
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
        if self.dirty {
            self.cmd("RSET\r\n").await?;
            self.reply("RSET").await?;
            self.dirty = false;
        }
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
        };
        let data_reply = if pipelining {
            let mut batch = mail_cmd;
            batch.extend(rcpt_cmds.iter().map(String::as_str));
            batch.push_str("DATA\r\n");
            self.cmd(&batch).await?;
            tx.mail = self.reply("MAIL").await?;
            for _ in rcpts {
                tx.rcpts.push(self.reply("RCPT").await?);
            }
            self.reply("DATA").await?
        } else {
            self.cmd(&mail_cmd).await?;
            tx.mail = self.reply("MAIL").await?;
            if !tx.mail.is_positive() {
                self.dirty = true;
                return Ok(tx);
            }
            for cmd in &rcpt_cmds {
                self.cmd(cmd).await?;
                tx.rcpts.push(self.reply("RCPT").await?);
            }
            if !tx.rcpts.iter().any(Reply::is_positive) {
                self.dirty = true;
                return Ok(tx);
            }
            self.cmd("DATA\r\n").await?;
            self.reply("DATA").await?
        };
        let accepted = tx.mail.is_positive() && tx.rcpts.iter().any(Reply::is_positive);
        if data_reply.code != 354 {
            self.dirty = true;
            if accepted {
                tx.data = Some(data_reply);
            }
            return Ok(tx);
        }
        if !accepted {
            // A pipelining server said 354 with nobody to deliver to: end the empty
            // message at once; its reply carries no delivery.
            self.write(b".\r\n").await?;
            self.reply("end of data").await?;
            self.dirty = true;
            return Ok(tx);
        }
        self.body(body).await?;
        tx.data = Some(self.reply("end of data").await?);
        Ok(tx)
    }

    async fn quit(mut self: Box<Self>) {
        if self.cmd("QUIT\r\n").await.is_ok() {
            let _ = self.reply("QUIT").await;
        }
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_end_of_multiline_reply() {
        assert_eq!(complete_reply(b"250-a\r\n250-b\r\n"), None);
        assert_eq!(complete_reply(b"250-a\r\n250 b\r\nXYZ"), Some(14));
        assert_eq!(complete_reply(b"354\r\n"), Some(5));
        assert_eq!(complete_reply(b"220 partial"), None);
    }
}
