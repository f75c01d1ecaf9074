//! The SMTP server session as a state machine, without I/O.
//!
//! [`Session::handle`] takes one command line and returns the reply and what the
//! connection must do next (read DATA, start TLS, close). The DATA bytes themselves are
//! handled by the caller with [`DataDecoder`](super::data::DataDecoder); it reports the
//! outcome back through [`Session::data_done`]. Commands are parsed by `smtp-proto`.
//!
//! Policy lives here: recipients are validated at RCPT time (configured domains only, so
//! never an open relay; the recipients list when one is configured, so no backscatter),
//! and every limit has its own reply code.
//!
//! Addresses are data: each one is parsed once into an [`Address`] (what `smtp-proto`
//! decoded, checked), and a MAIL or RCPT line with a control character, bytes that are
//! not UTF-8 or unbalanced angle brackets is refused with 501 before it is parsed, since
//! the parser would drop a CR or read a quoted `>` as the end of the path. What is stored
//! is the decoded form; every output serialises it again (`Address::to_smtp`), so a
//! quoted `"bob> NOTIFY=SUCCESS"@example.test` stays one quoted address at the primary.
//! A UTF-8 address needs the `SMTPUTF8` parameter on MAIL (RFC 6531), and journal
//! addresses take mail only from the `[journal] allow` networks.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, Error as ProtoError, MAIL_SMTPUTF8, Request};

use super::auth;
use crate::config::JournalAllow;
use crate::model::{Address, MessageId, address::is_control};
use crate::ports::{Identity, Login, SubmitGate};

/// Longest command line accepted, CRLF included (RFC 5321 §4.5.3.1.4 says 512; extensions
/// make lines longer, so allow what Postfix allows).
pub const MAX_COMMAND_LINE: usize = 2048;
/// Bad commands tolerated before we hang up (Postfix: `smtpd_hard_error_limit`).
const MAX_ERRORS: u32 = 20;
/// NOOP, RSET and VRFY a session may send before each one counts as an error
/// (Postfix: `smtpd_junk_command_limit`): a client that pipelines them by the million
/// burns our CPU, not its own, and is closed after [`MAX_ERRORS`] more.
const MAX_JUNK: u32 = 100;
/// `Received:` headers a message may carry (Postfix: `hopcount_limit`); more is a loop.
pub const MAX_HOPS: usize = 50;
/// Failed logins a submission session may make before it is closed.
const MAX_FAILED_LOGINS: u32 = 3;

/// What the session needs to know; shared by all connections.
#[derive(Debug, Clone)]
pub struct Policy {
    pub hostname: String,
    /// `Authentication-Results:` fields carrying one of these authserv-ids are removed
    /// from what clients send (RFC 8601 §5; see [`crate::model::auth_results`]).
    pub authserv_ids: Vec<String>,
    /// Lower-case domains we accept mail for.
    pub domains: HashSet<String>,
    /// Lower-case accepted addresses, when a recipients list is configured.
    pub recipients: Option<HashSet<String>>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// A certificate is configured, so STARTTLS can be offered.
    pub tls_available: bool,
    /// Journal addresses: accepted whatever the domain list says, each transaction
    /// either all journal or none (see [`crate::journal`]).
    pub journal: crate::config::Journal,
    /// The clients journal addresses take mail from (`[journal] allow`); anyone else
    /// gets 550 5.7.1 for them.
    pub journal_allow: JournalAllow,
    /// Where `RCPT TO:<Postmaster>` goes: `postmaster@` the first configured domain.
    pub postmaster: Option<String>,
    /// The submission listener's (`[submission]`): clients log in and send as
    /// themselves, to anyone. `None` on the MX listener.
    pub submission: Option<SubmissionPolicy>,
}

/// What a submission session needs besides the listener's [`Policy`].
#[derive(Clone)]
pub struct SubmissionPolicy {
    /// `[submission] allow_plaintext_auth`: AUTH without TLS (loopback tests only).
    pub allow_plaintext_auth: bool,
    pub gate: std::sync::Arc<dyn SubmitGate>,
    /// Mail to outside recipients has a way out (`[outbound]`); without one, RCPT to
    /// them is refused at once rather than queued for nothing.
    pub outside: bool,
}

impl std::fmt::Debug for SubmissionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmissionPolicy")
            .field("allow_plaintext_auth", &self.allow_plaintext_auth)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// `postmaster@` the first of `domains`, the address `<Postmaster>` is relayed as.
    pub fn postmaster_of(domains: &[String]) -> Option<String> {
        domains.first().map(|d| format!("postmaster@{d}"))
    }
}

/// What the connection does after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the next command.
    Command,
    /// Read the message (the reply was 354).
    Data,
    /// Start the TLS handshake (the reply was 220).
    StartTls,
    /// Check the login the client sent ([`Session::take_login`]) and hand the result to
    /// [`Session::logged_in`]; the reply is empty.
    Authenticate,
    /// Close the connection.
    Close,
}

/// How receiving the DATA ended.
#[derive(Debug)]
pub enum DataOutcome {
    /// Durably stored.
    Stored(MessageId),
    /// Larger than `max_message_size`; nothing was stored.
    TooBig,
    /// More `Received:` headers than [`MAX_HOPS`]: a mail loop; nothing was stored.
    TooManyHops,
    /// The spool failed; nothing was acknowledged.
    StorageFailed,
    /// Refused on its content (a submitted message's `From` not the user's): this reply.
    Refused(String),
}

/// One reply and the step after it.
#[derive(Debug)]
pub struct Step {
    pub reply: String,
    pub next: Next,
    /// The address the reply is about (the recipient of a RCPT, the sender of a
    /// transaction), for the listener's log of refusals; never sent.
    pub about: Option<String>,
}

impl Step {
    fn about(mut self, address: &str) -> Step {
        self.about = Some(address.to_string());
        self
    }
}

/// The per-connection SMTP state.
#[derive(Debug)]
pub struct Session<'p> {
    policy: &'p Policy,
    helo: Option<String>,
    tls: bool,
    mail_from: Option<String>,
    /// MAIL carried `SMTPUTF8`: UTF-8 addresses are allowed in this transaction.
    smtputf8: bool,
    rcpts: Vec<String>,
    /// The recipients so far are journal addresses.
    journal: bool,
    errors: u32,
    /// NOOP, RSET, VRFY so far (see [`MAX_JUNK`]).
    junk: u32,
    /// The client's address (unknown in unit tests: journal intake refused then).
    client: Option<IpAddr>,
    /// The spool is short of space: MAIL gets 452 4.3.1 (set by the listener).
    storage_low: bool,
    /// Submission: who logged in.
    user: Option<Identity>,
    /// Submission: an AUTH exchange waiting for the client's next line.
    sasl: Option<Sasl>,
    /// Submission: the name and password to check ([`Next::Authenticate`]).
    login: Option<(String, String)>,
    failed_logins: u32,
}

/// Where an AUTH exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sasl {
    /// PLAIN without an initial response: the response comes next.
    Plain,
    /// LOGIN: the name comes next.
    LoginName,
    /// LOGIN: the password comes next.
    LoginPassword(String),
}

/// A single-line reply with an enhanced status code.
pub fn reply(code: u16, esc: &str, text: &str) -> String {
    format!("{code} {esc} {text}\r\n")
}

fn step_raw(reply: &str) -> Step {
    Step {
        reply: reply.to_string(),
        next: Next::Command,
        about: None,
    }
}

fn step(code: u16, esc: &str, text: &str) -> Step {
    Step {
        reply: reply(code, esc, text),
        next: Next::Command,
        about: None,
    }
}

impl<'p> Session<'p> {
    /// A session for a client at `tls` (true when the connection is already encrypted).
    pub fn new(policy: &'p Policy, tls: bool) -> Self {
        Session {
            policy,
            helo: None,
            tls,
            mail_from: None,
            smtputf8: false,
            rcpts: Vec::new(),
            journal: false,
            errors: 0,
            junk: 0,
            client: None,
            storage_low: false,
            user: None,
            sasl: None,
            login: None,
            failed_logins: 0,
        }
    }

    /// Submission: the user who logged in.
    pub fn user(&self) -> Option<&Identity> {
        self.user.as_ref()
    }

    /// The name and password of [`Next::Authenticate`] (once).
    pub fn take_login(&mut self) -> Option<(String, String)> {
        self.login.take()
    }

    /// The login checked: 235, or 535 (the connection closed after
    /// [`MAX_FAILED_LOGINS`]), or 454 when it could not be checked now.
    pub fn logged_in(&mut self, login: Login) -> Step {
        match login {
            Login::Ok(identity) => {
                let s = step(235, "2.7.0", "Authentication successful");
                self.user = Some(identity);
                s
            }
            Login::Failed => {
                self.failed_logins += 1;
                let mut s = self.error(step(535, "5.7.8", "Authentication credentials invalid"));
                if self.failed_logins >= MAX_FAILED_LOGINS && s.next != Next::Close {
                    s.reply.push_str(&reply(
                        421,
                        "4.7.0",
                        "Too many failed logins, closing connection",
                    ));
                    s.next = Next::Close;
                }
                s
            }
            Login::Blocked(wait) => {
                let text = format!(
                    "Too many failed logins, try again in {} seconds",
                    wait.as_secs().max(1)
                );
                Step {
                    reply: reply(454, "4.7.0", &text),
                    next: Next::Close,
                    about: None,
                }
            }
            Login::Unavailable(_) => step(454, "4.7.0", "Temporary authentication failure"),
        }
    }

    /// One line of an AUTH exchange (see [`Sasl`]).
    fn sasl_line(&mut self, state: Sasl, line: &[u8]) -> Step {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text == "*" {
            return self.error(step(501, "5.7.0", "Authentication cancelled"));
        }
        let bad = |e: auth::SaslError| step(501, "5.5.2", &format!("Invalid AUTH response: {e}"));
        match state {
            Sasl::Plain => match auth::plain(text) {
                Ok(creds) => self.check(creds),
                Err(e) => self.error(bad(e)),
            },
            Sasl::LoginName => match auth::login_part(text) {
                Ok(name) => {
                    self.sasl = Some(Sasl::LoginPassword(name));
                    step_raw(&format!("334 {}\r\n", auth::PASSWORD))
                }
                Err(e) => self.error(bad(e)),
            },
            Sasl::LoginPassword(name) => match auth::login_part(text) {
                Ok(pass) => self.check((name, pass)),
                Err(e) => self.error(bad(e)),
            },
        }
    }

    fn check(&mut self, creds: (String, String)) -> Step {
        self.login = Some(creds);
        Step {
            reply: String::new(),
            next: Next::Authenticate,
            about: None,
        }
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Step {
        let Some(sub) = &self.policy.submission else {
            return self.error(step(
                502,
                "5.5.1",
                "Error: authentication not enabled (this is an MX)",
            ));
        };
        if self.helo.is_none() {
            return self.error(step(503, "5.5.1", "Error: send EHLO first"));
        }
        if self.user.is_some() {
            return self.error(step(503, "5.5.1", "Error: already authenticated"));
        }
        if self.mail_from.is_some() {
            return self.error(step(
                503,
                "5.5.1",
                "Error: AUTH not allowed during a mail transaction",
            ));
        }
        if !self.auth_allowed(sub) {
            return self.error(step(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism (STARTTLS first)",
            ));
        }
        let initial = initial.trim();
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.sasl = Some(Sasl::Plain);
                step_raw("334 \r\n")
            }
            AUTH_PLAIN => self.sasl_line(Sasl::Plain, initial.as_bytes()),
            AUTH_LOGIN if initial.is_empty() => {
                self.sasl = Some(Sasl::LoginName);
                step_raw(&format!("334 {}\r\n", auth::USERNAME))
            }
            AUTH_LOGIN => self.sasl_line(Sasl::LoginName, initial.as_bytes()),
            _ => self.error(step(
                504,
                "5.5.4",
                "Unrecognized authentication type (PLAIN and LOGIN are offered)",
            )),
        }
    }

    /// The client connects from `ip` (what `[journal] allow` is checked against).
    pub fn with_client(mut self, ip: IpAddr) -> Self {
        self.client = Some(ip);
        self
    }

    /// Whether the spool is short of space; while it is, MAIL is answered 452 4.3.1.
    pub fn set_storage_low(&mut self, low: bool) {
        self.storage_low = low;
    }

    /// The banner sent when the client connects.
    pub fn greeting(&self) -> String {
        format!("220 {} ESMTP standby-mx\r\n", self.policy.hostname)
    }

    pub fn helo(&self) -> &str {
        self.helo.as_deref().unwrap_or("")
    }
    pub fn tls(&self) -> bool {
        self.tls
    }
    pub fn mail_from(&self) -> Option<&str> {
        self.mail_from.as_deref()
    }
    pub fn rcpts(&self) -> &[String] {
        &self.rcpts
    }

    /// The transaction's recipients are journal addresses.
    pub fn is_journal(&self) -> bool {
        self.journal
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.smtputf8 = false;
        self.rcpts.clear();
        self.journal = false;
    }

    /// The TLS handshake finished: RFC 3207 says forget everything, including EHLO.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        // A login made before TLS is forgotten with the rest (RFC 3207 §4.2).
        self.user = None;
        self.sasl = None;
        self.login = None;
        self.reset();
    }

    /// Whether AUTH may be offered and used now: after TLS, or without it where
    /// `allow_plaintext_auth` says so, and then only to a loopback client.
    fn auth_allowed(&self, sub: &SubmissionPolicy) -> bool {
        self.tls || (sub.allow_plaintext_auth && self.client.is_some_and(|ip| ip.is_loopback()))
    }

    /// Count a client error; too many and the connection is closed.
    fn error(&mut self, mut s: Step) -> Step {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            s.reply
                .push_str(&reply(421, "4.7.0", "Too many errors, closing connection"));
            s.next = Next::Close;
        }
        s
    }

    /// A command that does no work; past [`MAX_JUNK`] each counts as an error.
    fn junk(&mut self, s: Step) -> Step {
        self.junk = self.junk.saturating_add(1);
        if self.junk > MAX_JUNK {
            self.error(s)
        } else {
            s
        }
    }

    /// A command line longer than [`MAX_COMMAND_LINE`] arrived (and was discarded).
    pub fn line_too_long(&mut self) -> Step {
        // An AUTH exchange ends with it.
        self.sasl = None;
        self.error(step(500, "5.5.2", "Error: line too long"))
    }

    /// Handle one command line (ending in LF).
    pub fn handle(&mut self, line: &[u8]) -> Step {
        if let Some(state) = self.sasl.take() {
            return self.sasl_line(state, line);
        }
        if let Some((verb, problem)) = bad_path(line) {
            let (esc, what) = match verb {
                Verb::Mail => ("5.1.7", "sender"),
                Verb::Rcpt => ("5.1.3", "recipient"),
            };
            let text = format!("Bad {what} address syntax: {problem}");
            return self.error(step(501, esc, &text).about(&raw_address(line)));
        }
        // The parser drops source routes (`<@a,@b:user@c>`) silently; RFC 5321 lets a
        // server decline them, and a standby has no reason to accept one.
        if line.len() > 8 && line[..8].eq_ignore_ascii_case(b"RCPT TO:") && has_source_route(line) {
            let s = step(550, "5.7.1", "Relay access denied (source route)");
            return self.error(s.about(&raw_address(line)));
        }
        let parsed = Request::parse(&mut line.iter());
        match parsed {
            Ok(req) => self.request(req, line),
            Err(e) => {
                let s = match e {
                    ProtoError::UnknownCommand => {
                        step(500, "5.5.2", "Error: command not recognized")
                    }
                    ProtoError::InvalidSenderAddress => {
                        step(501, "5.1.7", "Bad sender address syntax").about(&raw_address(line))
                    }
                    // An address the parser refuses but which carries routing syntax
                    // (a bare bang path, a source route) is a relay attempt, and is
                    // answered as one.
                    ProtoError::InvalidRecipientAddress if has_routing(line) => {
                        step(550, "5.7.1", "Relay access denied").about(&raw_address(line))
                    }
                    ProtoError::InvalidRecipientAddress => {
                        step(501, "5.1.3", "Bad recipient address syntax").about(&raw_address(line))
                    }
                    ProtoError::SyntaxError { syntax } if syntax.starts_with("MAIL") => step(
                        501,
                        "5.1.7",
                        &format!("Bad sender address syntax: {syntax}"),
                    )
                    .about(&raw_address(line)),
                    ProtoError::SyntaxError { syntax } if syntax.starts_with("RCPT") => step(
                        501,
                        "5.1.3",
                        &format!("Bad recipient address syntax: {syntax}"),
                    )
                    .about(&raw_address(line)),
                    ProtoError::SyntaxError { syntax } => {
                        step(501, "5.5.4", &format!("Syntax: {syntax}"))
                    }
                    ProtoError::InvalidParameter { param } => {
                        step(501, "5.5.4", &format!("Invalid parameter {param}"))
                    }
                    ProtoError::UnsupportedParameter { param } => step(
                        555,
                        "5.5.4",
                        &format!("Unsupported parameter {}", printable(&param)),
                    ),
                    _ => step(500, "5.5.2", "Error: bad command"),
                };
                self.error(s)
            }
        }
    }

    fn request(&mut self, req: Request<Cow<'_, str>>, line: &[u8]) -> Step {
        match req {
            Request::Ehlo { host } => {
                self.helo = Some(host.into_owned());
                self.reset();
                let p = self.policy;
                let mut r = format!("250-{}\r\n", p.hostname);
                r.push_str("250-PIPELINING\r\n");
                let _ = write!(r, "250-SIZE {}\r\n", p.max_message_size);
                if p.tls_available && !self.tls {
                    r.push_str("250-STARTTLS\r\n");
                }
                if let Some(sub) = &p.submission
                    && self.user.is_none()
                    && self.auth_allowed(sub)
                {
                    r.push_str("250-AUTH PLAIN LOGIN\r\n");
                }
                r.push_str("250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n");
                Step {
                    reply: r,
                    next: Next::Command,
                    about: None,
                }
            }
            Request::Helo { host } => {
                self.helo = Some(host.into_owned());
                self.reset();
                step(250, "2.0.0", &self.policy.hostname)
            }
            // LMTP's greeting: a client that speaks LMTP to an MX would take each 250
            // after DATA as per-recipient replies it never gets.
            Request::Lhlo { .. } => self.error(step(
                502,
                "5.5.1",
                "Error: LHLO is LMTP, this is SMTP (use EHLO)",
            )),
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return self.error(step(503, "5.5.1", "Error: send HELO/EHLO first"));
                }
                if self.mail_from.is_some() {
                    return self.error(step(503, "5.5.1", "Error: nested MAIL command"));
                }
                if from.size as u64 > self.policy.max_message_size {
                    return step(552, "5.3.4", "Message size exceeds fixed limit")
                        .about(&from.address);
                }
                if self.storage_low {
                    return step(452, "4.3.1", "Insufficient system storage").about(&from.address);
                }
                if let Some(sub) = &self.policy.submission {
                    let Some(user) = &self.user else {
                        let s = step(530, "5.7.0", "Authentication required");
                        return self.error(s.about(&from.address));
                    };
                    if from.address.is_empty() || !user.may_send_as(&from.address) {
                        let text = format!(
                            "Sender address rejected: not owned by user {}",
                            user.address
                        );
                        return self.error(step(553, "5.7.1", &text).about(&from.address));
                    }
                    if !sub.gate.take_send(&user.address) {
                        return step(
                            451,
                            "4.7.1",
                            "Too many messages from this user in the last hour, try again later",
                        )
                        .about(&from.address);
                    }
                }
                let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
                let sender = if from.address.is_empty() {
                    String::new()
                } else {
                    match Address::from_decoded(&from.address) {
                        Ok(a) if !a.is_ascii() && !smtputf8 => {
                            let s = step(
                                553,
                                "5.6.7",
                                "Must declare SMTPUTF8 to send unicode address",
                            );
                            return self.error(s.about(&from.address));
                        }
                        Ok(a) => a.decoded(),
                        Err(e) => {
                            let s = step(501, "5.1.7", &format!("Bad sender address syntax: {e}"));
                            return self.error(s.about(&from.address));
                        }
                    }
                };
                self.mail_from = Some(sender);
                self.smtputf8 = smtputf8;
                step(250, "2.1.0", "Ok")
            }
            Request::Rcpt { to } => {
                if self.mail_from.is_none() {
                    return self.error(step(503, "5.5.1", "Error: need MAIL command"));
                }
                if self.rcpts.len() >= self.policy.max_recipients {
                    return step(452, "4.5.3", "Error: too many recipients").about(&to.address);
                }
                let postmaster =
                    to.address.is_empty() && raw_address(line).eq_ignore_ascii_case("postmaster");
                let addr = if postmaster {
                    // RFC 5321 §4.5.1: `<Postmaster>` without a domain MUST be accepted.
                    match self.policy.postmaster.as_deref().map(Address::from_decoded) {
                        Some(Ok(a)) => a,
                        _ => {
                            let s =
                                step(550, "5.7.1", "Relay access denied (no domain configured)");
                            return self.error(s.about(&to.address));
                        }
                    }
                } else {
                    match Address::from_decoded(&to.address) {
                        Ok(a) if !a.is_ascii() && !self.smtputf8 => {
                            let s = step(
                                553,
                                "5.6.7",
                                "Must declare SMTPUTF8 to send unicode address",
                            );
                            return self.error(s.about(&to.address));
                        }
                        Ok(a) => a,
                        Err(e) => {
                            let s =
                                step(501, "5.1.3", &format!("Bad recipient address syntax: {e}"));
                            return self.error(s.about(&to.address));
                        }
                    }
                };
                let journal = self.policy.submission.is_none()
                    && self.policy.journal.matches(&addr.decoded());
                if journal
                    && !self
                        .client
                        .is_some_and(|ip| self.policy.journal_allow.permits(ip))
                {
                    let s = step(
                        550,
                        "5.7.1",
                        "Journal copies are accepted from the primary only",
                    );
                    return self.error(s.about(&to.address));
                }
                if !self.rcpts.is_empty() && journal != self.journal {
                    // RFC 5321 §4.5.3.1.10: a client sends the rest in another transaction.
                    return step(
                        452,
                        "4.5.3",
                        "Journal copies and other mail go in separate transactions",
                    )
                    .about(&to.address);
                }
                let checked = if journal {
                    Ok(addr.decoded())
                } else {
                    self.check_recipient(&addr, postmaster)
                };
                match checked {
                    Ok(addr) => {
                        self.journal = journal;
                        if !self.rcpts.contains(&addr) {
                            self.rcpts.push(addr);
                        }
                        step(250, "2.1.5", "Ok")
                    }
                    Err(s) => self.error(s.about(&to.address)),
                }
            }
            Request::Data => {
                if self.mail_from.is_none() {
                    return self.error(step(503, "5.5.1", "Error: need MAIL command"));
                }
                if self.rcpts.is_empty() {
                    let s = step(554, "5.5.1", "Error: no valid recipients");
                    return self.error(s.about(self.mail_from.as_deref().unwrap_or_default()));
                }
                Step {
                    reply: "354 End data with <CR><LF>.<CR><LF>\r\n".to_string(),
                    next: Next::Data,
                    about: None,
                }
            }
            Request::Rset => {
                self.reset();
                self.junk(step(250, "2.0.0", "Ok"))
            }
            Request::Noop { .. } => self.junk(step(250, "2.0.0", "Ok")),
            Request::Quit => Step {
                reply: reply(221, "2.0.0", "Bye"),
                next: Next::Close,
                about: None,
            },
            Request::Vrfy { .. } => self.junk(step(
                252,
                "2.0.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::StartTls => {
                if !self.policy.tls_available {
                    self.error(step(502, "5.5.1", "Error: STARTTLS not available"))
                } else if self.tls {
                    self.error(step(503, "5.5.1", "Error: TLS already active"))
                } else {
                    Step {
                        reply: reply(220, "2.0.0", "Ready to start TLS"),
                        next: Next::StartTls,
                        about: None,
                    }
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response),
            _ => self.error(step(502, "5.5.1", "Error: command not implemented")),
        }
    }

    /// Decide on a recipient; returns the address to store (decoded), or the refusal.
    ///
    /// Refused as relaying (550 5.7.1): a domain not ours (IP literals included), and any
    /// routing syntax in the local part, quoted or escaped or not (`%`, `!`, `@`, `:`),
    /// because a primary or a later hop might still honour it. Postmaster (bare, or at
    /// one of our domains) is accepted whatever the recipients list says (RFC 5321
    /// §4.5.1).
    fn check_recipient(&self, address: &Address, postmaster: bool) -> Result<String, Step> {
        let local = address.local();
        let domain = address.domain().to_ascii_lowercase();
        // `%` and `!` in the local part are old routing syntaxes a naive primary could
        // honour to relay elsewhere; Postfix refuses them the same way.
        let routed = local.contains(['%', '!', '@', ':']);
        let ours = self.policy.domains.contains(&domain);
        if let Some(sub) = &self.policy.submission
            && !ours
        {
            if !sub.outside {
                return Err(step(
                    550,
                    "5.7.1",
                    "Sending to outside recipients is not set up on this standby",
                ));
            }
            // A logged-in user sends anywhere, but never by routing syntax or to an
            // address literal (which would aim the outbound queue at any host).
            if routed || domain.starts_with('[') {
                return Err(step(
                    550,
                    "5.7.1",
                    "Routing syntax and address literals are not accepted",
                ));
            }
            // A name the outbound path could only resolve locally (`localhost`, a bare
            // host name) or that reads as an address is no recipient domain.
            if !crate::model::address::is_public_domain(&domain) {
                return Err(step(
                    550,
                    "5.1.2",
                    "Recipient domain is not a public domain name",
                ));
            }
            return Ok(format!("{local}@{}", address.domain()));
        }
        if routed || !ours {
            return Err(step(550, "5.7.1", "Relay access denied"));
        }
        let addr = format!("{local}@{domain}");
        let postmaster = postmaster || local.eq_ignore_ascii_case("postmaster");
        if let Some(list) = &self.policy.recipients
            && !postmaster
            && !list.contains(&addr.to_lowercase())
        {
            return Err(step(
                550,
                "5.1.1",
                "Recipient address rejected: User unknown",
            ));
        }
        Ok(addr)
    }

    /// The message has been received (or refused); the transaction ends either way.
    pub fn data_done(&mut self, outcome: DataOutcome) -> Step {
        let sender = self.mail_from.take().unwrap_or_default();
        self.reset();
        let s = match outcome {
            DataOutcome::Stored(id) => {
                // A client that delivers is doing work: a long session of messages with an
                // RSET between each is not junk.
                self.junk = 0;
                step(250, "2.0.0", &format!("Ok: queued as {id}"))
            }
            DataOutcome::TooBig => step(552, "5.3.4", "Message size exceeds fixed limit"),
            DataOutcome::TooManyHops => step(554, "5.4.6", "Too many hops (mail loop?)"),
            DataOutcome::StorageFailed => step(
                451,
                "4.3.0",
                "Error: queue file write error, try again later",
            ),
            DataOutcome::Refused(reply) => step_raw(&reply),
        };
        s.about(&sender)
    }
}

fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// The address argument of a MAIL or RCPT line as sent (for the log of a refusal whose
/// address did not parse): after the colon, up to the first space, without `<>`.
fn raw_address(line: &[u8]) -> String {
    let arg = line.splitn(2, |b| *b == b':').nth(1).unwrap_or_default();
    let arg = String::from_utf8_lossy(arg);
    arg.split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches(['<', '>'])
        .to_string()
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Mail,
    Rcpt,
}

/// What is wrong with the path of a MAIL or RCPT line that the parser would not see:
/// a control character (C0, DEL, C1; the parser silently drops a CR), bytes that are not
/// UTF-8 (it would put U+FFFD in their place), or an angle bracket left open or a quote
/// left unclosed. `None` for other lines and for well-formed paths.
fn bad_path(line: &[u8]) -> Option<(Verb, &'static str)> {
    let verb = match line.get(..4) {
        Some(v) if v.eq_ignore_ascii_case(b"MAIL") => Verb::Mail,
        Some(v) if v.eq_ignore_ascii_case(b"RCPT") => Verb::Rcpt,
        _ => return None,
    };
    let colon = line.iter().position(|b| *b == b':')?;
    let arg = &line[colon + 1..];
    let arg = arg.strip_suffix(b"\n").unwrap_or(arg);
    let arg = arg.strip_suffix(b"\r").unwrap_or(arg);
    let Ok(arg) = std::str::from_utf8(arg) else {
        return Some((verb, "not UTF-8"));
    };
    if arg.chars().any(is_control) {
        return Some((verb, "control character"));
    }
    let path = arg.trim_start_matches(' ');
    let Some(inner) = path.strip_prefix('<') else {
        return None; // no path at all: the parser says which syntax it wants
    };
    let (mut quoted, mut escaped) = (false, false);
    for c in inner.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return None,
            '<' if !quoted => return Some((verb, "unbalanced angle brackets")),
            _ => {}
        }
    }
    Some((
        verb,
        if quoted {
            "unbalanced quotes"
        } else {
            "unbalanced angle brackets"
        },
    ))
}

/// Whether the address of a `RCPT TO:` line starts with a source route (`<@`).
fn has_source_route(line: &[u8]) -> bool {
    let arg = &line[8..];
    let start = arg
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(arg.len());
    arg[start..].starts_with(b"<@")
}

/// Whether a command line carries address routing syntax (`!`, `%`, a source route) or
/// an address literal (`[192.0.2.1]`, never one of our domains).
fn has_routing(line: &[u8]) -> bool {
    let arg = line.splitn(2, |b| *b == b':').nth(1).unwrap_or_default();
    arg.iter()
        .any(|b| matches!(b, b'!' | b'%' | b':' | b',' | b'['))
        || arg.iter().filter(|b| **b == b'@').count() > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(recipients: Option<&[&str]>) -> Policy {
        Policy {
            hostname: "standby.test".into(),
            authserv_ids: Vec::new(),
            domains: ["example.test".to_string()].into(),
            recipients: recipients.map(|r| r.iter().map(|s| s.to_string()).collect()),
            max_message_size: 1000,
            max_recipients: 2,
            tls_available: false,
            journal: crate::config::Journal::new(
                &["journal@archive.example.test".to_string()],
                &["example.test".to_string()],
            ),
            journal_allow: JournalAllow::loopback_and([]),
            postmaster: Some("postmaster@example.test".into()),
            submission: None,
        }
    }

    fn from_loopback(p: &Policy) -> Session<'_> {
        Session::new(p, false).with_client("127.0.0.1".parse().unwrap())
    }

    fn code(s: &Step) -> &str {
        &s.reply[..3]
    }

    #[test]
    fn happy_path() {
        let p = policy(None);
        let mut s = Session::new(&p, false);
        let ehlo = s.handle(b"EHLO client.test\r\n");
        assert!(ehlo.reply.contains("250-PIPELINING") && ehlo.reply.contains("SIZE 1000"));
        assert!(!ehlo.reply.contains("STARTTLS"));
        assert_eq!(code(&s.handle(b"MAIL FROM:<a@b.test> SIZE=10\r\n")), "250");
        assert_eq!(code(&s.handle(b"RCPT TO:<Bob@Example.TEST>\r\n")), "250");
        let d = s.handle(b"DATA\r\n");
        assert_eq!((code(&d), d.next), ("354", Next::Data));
        assert_eq!(s.rcpts(), ["Bob@example.test"]);
        let id = MessageId::new(chrono::Utc::now());
        assert!(
            s.data_done(DataOutcome::Stored(id))
                .reply
                .contains(&id.to_string())
        );
        assert!(s.mail_from().is_none());
        assert_eq!(s.handle(b"QUIT\r\n").next, Next::Close);
    }

    #[test]
    fn journal_copies_come_in_their_own_transactions() {
        let p = policy(Some(&["bob@example.test"]));
        let mut s = from_loopback(&p);
        s.handle(b"EHLO c\r\n");
        s.handle(b"MAIL FROM:<a@b.test>\r\n");
        // Accepted although its domain is not ours and it is not on the recipients list.
        let j = s.handle(b"RCPT TO:<journal+bob=example.test@archive.example.test>\r\n");
        assert_eq!(code(&j), "250");
        assert_eq!(code(&s.handle(b"RCPT TO:<bob@example.test>\r\n")), "452");
        assert!(s.is_journal());
        s.handle(b"RSET\r\n");
        assert!(!s.is_journal());
        s.handle(b"MAIL FROM:<a@b.test>\r\n");
        assert_eq!(code(&s.handle(b"RCPT TO:<bob@example.test>\r\n")), "250");
        let j = s.handle(b"RCPT TO:<journal@archive.example.test>\r\n");
        assert!(j.reply.starts_with("452 4.5.3"), "{}", j.reply);
        assert!(!s.is_journal());
        // Other addresses in the journal domain are relaying.
        s.handle(b"RSET\r\n");
        s.handle(b"MAIL FROM:<a@b.test>\r\n");
        let r = s.handle(b"RCPT TO:<postmaster@archive.example.test>\r\n");
        assert!(r.reply.starts_with("550 5.7.1"), "{}", r.reply);
    }

    #[test]
    fn relay_and_unknown_users_are_refused() {
        let p = policy(Some(&["bob@example.test"]));
        let mut s = Session::new(&p, false);
        s.handle(b"EHLO c\r\n");
        s.handle(b"MAIL FROM:<>\r\n");
        for (rcpt, want) in [
            ("<x@foreign.test>", "550 5.7.1"),
            ("<bob%foreign.test@example.test>", "550 5.7.1"),
            ("<foreign.test!bob@example.test>", "550 5.7.1"),
            ("<alice@example.test>", "550 5.1.1"),
            ("<BOB@example.test.>", "250 2.1.5"),
        ] {
            let r = s.handle(format!("RCPT TO:{rcpt}\r\n").as_bytes());
            assert!(r.reply.starts_with(want), "{rcpt}: {}", r.reply);
        }
    }

    /// Every relay trick known to have worked against some MTA.
    pub(crate) fn relay_attempts() -> impl Iterator<Item = &'static str> {
        include_str!("../../tests/fixtures/relay-attempts.txt")
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }

    #[test]
    fn relay_battery_is_refused_with_5_7_1() {
        let p = policy(None);
        let attempt = |rcpt: &str| {
            let mut s = Session::new(&p, false);
            s.handle(b"EHLO c\r\n");
            s.handle(b"MAIL FROM:<a@example.org>\r\n");
            s.handle(format!("RCPT TO:{rcpt}\r\n").as_bytes()).reply
        };
        for rcpt in relay_attempts() {
            let r = attempt(rcpt);
            assert!(r.starts_with("550 5.7.1"), "{rcpt}: {r}");
        }
        for ok in [
            "<bob@example.test>",
            "<Bob@EXAMPLE.test.>",
            "<postmaster@example.test>",
        ] {
            let r = attempt(ok);
            assert!(r.starts_with("250 "), "{ok}: {r}");
        }
    }

    #[test]
    fn journal_copies_only_from_allowed_clients() {
        let p = policy(None);
        for (client, want) in [
            (Some("127.0.0.1"), "250 2.1.5"),
            (Some("::ffff:127.0.0.1"), "250 2.1.5"),
            (Some("192.0.2.9"), "550 5.7.1"),
            (None, "550 5.7.1"),
        ] {
            let mut s = Session::new(&p, false);
            if let Some(ip) = client {
                s = s.with_client(ip.parse().unwrap());
            }
            s.handle(b"EHLO c\r\n");
            s.handle(b"MAIL FROM:<a@b.test>\r\n");
            let r = s.handle(b"RCPT TO:<journal@archive.example.test>\r\n");
            assert!(r.reply.starts_with(want), "{client:?}: {}", r.reply);
        }
    }

    #[test]
    fn hostile_paths_are_refused_before_parsing() {
        let p = policy(Some(&["bob@example.test", "john doe@example.test"]));
        let mut s = Session::new(&p, false);
        s.handle(b"EHLO c\r\n");
        for (line, want) in [
            (&b"MAIL FROM:<a\x1b@b.test>\r\n"[..], "501 5.1.7"),
            (b"MAIL FROM:<a@b.test\r\n", "501 5.1.7"),
            (b"MAIL FROM:<a\xff@b.test>\r\n", "501 5.1.7"),
            (b"MAIL FROM:<\"a\rb\"@b.test>\r\n", "501 5.1.7"),
            (b"MAIL FROM:<a@b.test> SMTPUTF8\r\n", "250 2.1.0"),
            (b"RCPT TO:<\"bob\xc2\x9b\"@example.test>\r\n", "501 5.1.3"),
            (b"RCPT TO:<bob@example.test\r\n", "501 5.1.3"),
            (b"RCPT TO:<<bob@example.test>\r\n", "501 5.1.3"),
            (b"RCPT TO:<\"bob>@example.test>\r\n", "501 5.1.3"),
            (b"RCPT TO:<\"bob\x7f\"@example.test>\r\n", "501 5.1.3"),
            (b"RCPT TO:<>\r\n", "501 5.1.3"),
            (b"RCPT TO:<\"John Doe\"@example.test>\r\n", "250 2.1.5"),
            (b"RCPT TO:<Postmaster>\r\n", "250 2.1.5"),
        ] {
            let r = s.handle(line);
            assert!(
                r.reply.starts_with(want),
                "{:?}: {}",
                String::from_utf8_lossy(line),
                r.reply
            );
        }
        assert_eq!(
            s.rcpts(),
            ["John Doe@example.test", "postmaster@example.test"]
        );
        assert_eq!(
            crate::model::Address::from_decoded(&s.rcpts()[0])
                .unwrap()
                .to_smtp(),
            "\"John Doe\"@example.test"
        );
    }

    #[test]
    fn utf8_needs_smtputf8_lhlo_is_refused_and_low_space_defers_mail() {
        let p = policy(None);
        let mut s = Session::new(&p, false);
        assert!(s.handle(b"LHLO c\r\n").reply.starts_with("502 5.5.1"));
        s.handle(b"EHLO c\r\n");
        let utf8 = "MAIL FROM:<jörg@exämple.test>\r\n";
        assert!(s.handle(utf8.as_bytes()).reply.starts_with("553 5.6.7"));
        s.handle(b"MAIL FROM:<a@b.test>\r\n");
        let r = s.handle("RCPT TO:<jörg@example.test>\r\n".as_bytes());
        assert!(r.reply.starts_with("553 5.6.7"), "{}", r.reply);
        s.handle(b"RSET\r\n");
        s.handle("MAIL FROM:<jörg@exämple.test> SMTPUTF8\r\n".as_bytes());
        let r = s.handle("RCPT TO:<jörg@example.test>\r\n".as_bytes());
        assert!(r.reply.starts_with("250"), "{}", r.reply);
        s.handle(b"RSET\r\n");
        s.set_storage_low(true);
        let r = s.handle(b"MAIL FROM:<a@b.test>\r\n");
        assert!(r.reply.starts_with("452 4.3.1"), "{}", r.reply);
        s.set_storage_low(false);
        assert!(
            s.handle(b"MAIL FROM:<a@b.test>\r\n")
                .reply
                .starts_with("250")
        );
    }

    #[test]
    fn limits_and_sequence_errors() {
        let p = policy(None);
        let mut s = Session::new(&p, false);
        assert!(
            s.handle(b"MAIL FROM:<a@b>\r\n")
                .reply
                .starts_with("503 5.5.1")
        );
        s.handle(b"HELO c\r\n");
        assert!(
            s.handle(b"MAIL FROM:<a@b> SIZE=1001\r\n")
                .reply
                .starts_with("552 5.3.4")
        );
        assert!(s.handle(b"DATA\r\n").reply.starts_with("503"));
        s.handle(b"MAIL FROM:<a@b>\r\n");
        assert!(s.handle(b"DATA\r\n").reply.starts_with("554"));
        s.handle(b"RCPT TO:<a@example.test>\r\n");
        s.handle(b"RCPT TO:<b@example.test>\r\n");
        assert!(
            s.handle(b"RCPT TO:<c@example.test>\r\n")
                .reply
                .starts_with("452 4.5.3")
        );
        assert!(s.handle(b"VRFY x\r\n").reply.starts_with("252"));
        assert!(s.handle(b"STARTTLS\r\n").reply.starts_with("502"));
        assert!(s.handle(b"BOGUS\r\n").reply.starts_with("500 5.5.2"));
        assert!(
            s.data_done(DataOutcome::TooBig)
                .reply
                .starts_with("552 5.3.4")
        );
    }

    #[test]
    fn a_flood_of_noops_is_closed() {
        let p = policy(None);
        let mut s = Session::new(&p, false);
        for _ in 0..MAX_JUNK + MAX_ERRORS - 1 {
            assert_eq!(s.handle(b"NOOP\r\n").next, Next::Command);
        }
        let last = s.handle(b"NOOP\r\n");
        assert_eq!(last.next, Next::Close);
        assert!(last.reply.contains("421 4.7.0"), "{}", last.reply);
    }

    #[test]
    fn too_many_errors_close_the_connection() {
        let p = policy(None);
        let mut s = Session::new(&p, false);
        let mut last = None;
        for _ in 0..MAX_ERRORS {
            last = Some(s.handle(b"XYZZY\r\n"));
        }
        let last = last.unwrap();
        assert_eq!(last.next, Next::Close);
        assert!(last.reply.contains("421 4.7.0"));
    }
}
