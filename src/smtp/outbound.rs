//! The [`Outbound`] adapters that speak SMTP, through the same client that talks to the
//! primary ([`SmtpRelay`], with its defences against a hostile peer):
//! - [`SmtpOutbound`], the `relay` mode: every message to the smarthost of `[outbound]
//!   relay` (STARTTLS, AUTH), one transaction with all its outside recipients;
//! - [`SmtpDirect`], the `direct` mode: each recipient domain's MX hosts (hickory), in
//!   preference order, the domain itself when it has no MX (RFC 5321 §5.1), nothing for a
//!   null MX (RFC 7505: 556 5.1.10) or a domain that does not exist (550 5.1.2);
//!   STARTTLS when offered (as Postfix's `may`); one transaction per domain, and the
//!   session kept a little while for the next message to the same domain.
//!
//! The smarthost's replies become one reply per recipient: a refused MAIL is every
//! recipient's reply, an accepted RCPT takes the reply to the final dot. Anything that
//! breaks the session (no connection, a timeout, no reply after the dot) is a 4xx for
//! every recipient: the message is tried again, never failed, for trouble that is not
//! its own.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_resolver::TokioResolver;

use super::client::SmtpRelay;
use crate::error::RelayError;
use crate::ports::{BlobReader, Guard, Outbound, Relay, RelaySession, Reply, Transaction};

/// Sends through one smarthost.
pub struct SmtpOutbound {
    relay: SmtpRelay,
}

impl SmtpOutbound {
    pub fn relay(relay: SmtpRelay) -> Self {
        SmtpOutbound { relay }
    }
}

/// The replies for a transaction the client would not start because of the message
/// itself (a UTF-8 address to a host without SMTPUTF8): failed, not tried again for
/// days; `None` for trouble that is not the message's.
fn failed(e: &RelayError, n: usize) -> Option<Vec<Reply>> {
    match e {
        RelayError::Unsendable(why) => Some(vec![Reply::new(553, format!("5.6.7 {why}")); n]),
        _ => None,
    }
}

/// A smarthost's refusal of *us* (`530`, or a `5.7.x` policy code: not logged in, not
/// allowed to relay) is its configuration's problem, not the message's: tried again (and
/// logged) rather than failed and bounced, so a wrong relay password does not bounce a
/// whole outage's mail. `standby doctor` checks the login.
fn ours_to_fix(r: Reply, relay: &str) -> Reply {
    let policy =
        r.code == 530 || (r.is_permanent() && r.enhanced().is_some_and(|e| e.starts_with("5.7.")));
    if !policy {
        return r;
    }
    tracing::error!(relay, reply = %r, "outbound: the smarthost refuses to relay for this standby; check [outbound] relay_user and the smarthost's relay permissions");
    Reply::new(
        451,
        format!("4.7.0 the smarthost refused to relay ({r}); tried again"),
    )
}

/// One reply per recipient from a transaction's replies.
pub fn per_recipient(tx: &Transaction, n: usize) -> Vec<Reply> {
    if !tx.mail.is_positive() {
        return vec![tx.mail.clone(); n];
    }
    (0..n)
        .map(|i| match tx.rcpts.get(i) {
            Some(r) if matches!(r.code, 250 | 251) => match &tx.data {
                _ if tx.ambiguous => Reply::new(
                    451,
                    "4.4.2 no reply to the end of data (the relay may have the message)",
                ),
                Some(d) if d.code == 250 || !d.is_positive() => d.clone(),
                Some(d) => Reply::new(
                    451,
                    format!("4.5.0 unexpected reply to the end of data: {d}"),
                ),
                None => Reply::new(451, "4.5.0 no reply to DATA"),
            },
            Some(r) if r.is_positive() => {
                Reply::new(451, format!("4.5.0 unexpected reply to RCPT: {r}"))
            }
            Some(r) => r.clone(),
            None => Reply::new(451, "4.5.0 no reply to RCPT"),
        })
        .collect()
}

#[async_trait]
impl Outbound for SmtpOutbound {
    async fn send(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        guard: &Guard<'_>,
    ) -> Vec<Reply> {
        let trouble = |e: &dyn std::fmt::Display| {
            vec![Reply::new(451, format!("4.4.1 relay {}: {e}", self.relay.address())); rcpts.len()]
        };
        let mut session = match self.relay.connect().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(relay = self.relay.address(), error = %e, "outbound: cannot open a session with the relay");
                return trouble(&e);
            }
        };
        let body = guard(Box::new(std::io::Cursor::new(message.to_vec())));
        let result = session.send(mail_from, rcpts, body).await;
        session.quit().await;
        match result {
            Ok(tx) => per_recipient(&tx, rcpts.len())
                .into_iter()
                .map(|r| ours_to_fix(r, self.relay.address()))
                .collect(),
            Err(e) => failed(&e, rcpts.len()).unwrap_or_else(|| {
                tracing::warn!(relay = self.relay.address(), error = %e, "outbound: transaction with the relay failed");
                trouble(&e)
            }),
        }
    }
}

/// Addresses tried per recipient domain and message (Postfix: `smtp_mx_address_limit`):
/// a domain with many MX hosts that do not answer holds the queue no longer than this.
const MAX_ADDRESSES: usize = 5;

/// Whether `ip` is not on the internet: loopback, private, link-local, unique-local,
/// shared (CGNAT), documentation, unspecified or broadcast.
pub fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            // An IPv4 address inside (mapped, NAT64 64:ff9b::/96, 6to4 2002::/16) is
            // judged as that address.
            let embedded = if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                Some(std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else if s[0] == 0x2002 {
                Some(std::net::Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                ))
            } else {
                v6.to_ipv4_mapped()
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || embedded.is_some_and(|v4| is_private(v4.into()))
        }
    }
}

/// How long an idle session with a domain's MX is kept for the next message.
const IDLE: Duration = Duration::from_secs(20);
/// Idle sessions kept at most.
const MAX_IDLE: usize = 32;

/// Sends to each recipient domain's MX hosts (see the module docs).
pub struct SmtpDirect {
    /// Hostname, timeouts, TLS roots and loop checks; [`SmtpRelay::mx`] per host.
    base: SmtpRelay,
    resolver: TokioResolver,
    port: u16,
    /// `[outbound] direct_allow_private`.
    allow_private: bool,
    idle: tokio::sync::Mutex<HashMap<String, Parked>>,
}

/// A session kept for the next message to its domain, and since when.
type Parked = (Box<dyn RelaySession>, Instant);

/// Whether a session may carry another transaction after `tx`.
fn reusable(tx: &Transaction) -> bool {
    !tx.ambiguous && tx.mail.code != 421 && tx.data.as_ref().is_none_or(|d| d.code != 421)
}

impl SmtpDirect {
    /// MX delivery on port 25 with `base`'s settings ([`SmtpRelay::for_mx`]).
    pub fn new(base: SmtpRelay, resolver: TokioResolver, allow_private: bool) -> Self {
        SmtpDirect {
            base,
            resolver,
            port: 25,
            allow_private,
            idle: tokio::sync::Mutex::default(),
        }
    }

    /// The hosts to try for `domain`, best first, or the reply every recipient gets.
    async fn hosts(&self, domain: &str) -> Result<Vec<String>, Reply> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match crate::dns::mx(&self.resolver, fqdn.as_str()).await {
            Ok(mut records) => {
                let null = |h: &str| h.trim_end_matches('.').is_empty();
                if records.iter().any(|(_, h)| null(h)) {
                    return Err(Reply::new(
                        556,
                        format!("5.1.10 {domain} accepts no mail (null MX)"),
                    ));
                }
                if records.is_empty() {
                    return Ok(vec![format!("{}.", domain.trim_end_matches('.'))]);
                }
                records.sort();
                Ok(records.into_iter().map(|(_, h)| h).collect())
            }
            Err(e) if e.is_nx_domain() => Err(Reply::new(
                550,
                format!("5.1.2 the domain {domain} does not exist"),
            )),
            // No MX: the domain itself is the mail host (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() => Ok(vec![fqdn]),
            Err(e) => Err(Reply::new(
                451,
                format!("4.4.3 DNS lookup for {domain} failed: {e}"),
            )),
        }
    }

    /// Keep `session` for the next message to `domain`.
    async fn park(&self, domain: &str, session: Box<dyn RelaySession>) {
        let mut idle = self.idle.lock().await;
        idle.retain(|_, (_, at)| at.elapsed() < IDLE);
        if idle.len() < MAX_IDLE {
            idle.insert(domain.to_string(), (session, Instant::now()));
        }
    }

    async fn send_domain(
        &self,
        domain: &str,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        guard: &Guard<'_>,
    ) -> Vec<Reply> {
        let n = rcpts.len();
        let body = || -> BlobReader { guard(Box::new(std::io::Cursor::new(message.to_vec()))) };
        let parked = self.idle.lock().await.remove(domain);
        if let Some((mut s, at)) = parked
            && at.elapsed() < IDLE
        {
            // A session the host has closed meanwhile fails before the final dot (an
            // `Err`): the message then goes on a new one.
            match s.send(mail_from, rcpts, body()).await {
                Ok(tx) => {
                    if reusable(&tx) {
                        self.park(domain, s).await;
                    }
                    return per_recipient(&tx, n);
                }
                Err(e) => {
                    if let Some(replies) = failed(&e, n) {
                        return replies;
                    }
                }
            }
        }
        let hosts = match self.hosts(domain).await {
            Ok(h) => h,
            Err(reply) => return vec![reply; n],
        };
        let mut last = String::new();
        let mut tried = 0;
        for host in hosts {
            if tried >= MAX_ADDRESSES {
                break;
            }
            let name = format!("{}.", host.trim_end_matches('.'));
            let ips: Vec<std::net::IpAddr> = match self.resolver.lookup_ip(name.as_str()).await {
                Ok(l) => l
                    .iter()
                    .filter(|ip| {
                        let ok = self.allow_private || !is_private(*ip);
                        if !ok {
                            tracing::warn!(domain, host = %host, %ip, "outbound: MX host at a private address; not used");
                        }
                        ok
                    })
                    .collect(),
                Err(e) => {
                    tracing::info!(domain, host = %host, error = %e, "outbound: MX host has no address; trying the next");
                    last = format!("{host}: {e}");
                    continue;
                }
            };
            for ip in ips {
                if tried >= MAX_ADDRESSES {
                    break;
                }
                tried += 1;
                let relay = self
                    .base
                    .mx(&host, std::net::SocketAddr::new(ip, self.port));
                match relay.connect().await {
                    Ok(mut s) => {
                        return match s.send(mail_from, rcpts, body()).await {
                            Ok(tx) => {
                                if reusable(&tx) {
                                    self.park(domain, s).await;
                                }
                                per_recipient(&tx, n)
                            }
                            Err(e) => {
                                tracing::warn!(domain, host = %host, error = %e, "outbound: transaction failed");
                                vec![Reply::new(451, format!("4.4.2 {host}: {e}")); n]
                            }
                        };
                    }
                    // This standby is (one of) the domain's MX: its better ones are down,
                    // or the domain is ours and missing from `domains`. Tried again later,
                    // as RFC 5321 §5.1 asks, and logged for the administrator.
                    Err(RelayError::Loop(why)) => {
                        tracing::error!(domain, host = %host, "outbound: the domain's MX is this standby; add it to `domains` if it is ours");
                        return vec![
                            Reply::new(
                                451,
                                format!("4.4.6 mail for {domain} would loop back: {why}")
                            );
                            n
                        ];
                    }
                    Err(e) => {
                        tracing::info!(domain, host = %host, %ip, error = %e, "outbound: MX host not reachable; trying the next");
                        last = format!("{host} ({ip}): {e}");
                    }
                }
            }
        }
        vec![
            Reply::new(
                451,
                format!("4.4.1 no mail host of {domain} answered ({last})")
            );
            n
        ]
    }
}

#[async_trait]
impl Outbound for SmtpDirect {
    async fn send(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        guard: &Guard<'_>,
    ) -> Vec<Reply> {
        let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in rcpts.iter().enumerate() {
            let domain = r
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            by_domain.entry(domain).or_default().push(i);
        }
        let mut replies = vec![Reply::new(451, "4.3.0 not tried"); rcpts.len()];
        for (domain, idx) in by_domain {
            let these: Vec<String> = idx.iter().map(|&i| rcpts[i].clone()).collect();
            let got = self
                .send_domain(&domain, mail_from, &these, message, guard)
                .await;
            for (k, &i) in idx.iter().enumerate() {
                if let Some(r) = got.get(k) {
                    replies[i] = r.clone();
                }
            }
        }
        replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(mail: u16, rcpts: &[u16], data: Option<u16>, ambiguous: bool) -> Transaction {
        Transaction {
            mail: Reply::new(mail, "x"),
            rcpts: rcpts.iter().map(|c| Reply::new(*c, "r")).collect(),
            data: data.map(|c| Reply::new(c, "d")),
            ambiguous,
        }
    }

    #[test]
    fn replies_per_recipient() {
        let codes = |v: Vec<Reply>| v.iter().map(|r| r.code).collect::<Vec<_>>();
        assert_eq!(
            codes(per_recipient(&tx(550, &[], None, false), 2)),
            [550, 550]
        );
        assert_eq!(
            codes(per_recipient(
                &tx(250, &[250, 550, 450], Some(250), false),
                3
            )),
            [250, 550, 450]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[250, 251], Some(554), false), 2)),
            [554, 554]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[250], Some(250), true), 1)),
            [451]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[252], Some(250), false), 1)),
            [451]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[250], Some(221), false), 1)),
            [451]
        );
        assert_eq!(
            codes(per_recipient(&tx(250, &[550], None, false), 2)),
            [550, 451]
        );
        // Addresses that are not on the internet, however they are written.
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.0.1",
            "100.64.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "224.0.0.1",
            "192.0.0.8",
            "::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "ff02::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "2001:4860::8888",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
        // The smarthost refusing us is tried again; refusing a recipient is not.
        let r = |code, text: &str| ours_to_fix(Reply::new(code, text), "relay").code;
        assert_eq!(r(530, "5.7.0 Authentication required"), 451);
        assert_eq!(r(554, "5.7.1 Relay access denied"), 451);
        assert_eq!(r(550, "5.1.1 No such user"), 550);
        assert_eq!(r(250, "2.0.0 Ok"), 250);
    }
}
