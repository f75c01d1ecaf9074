//! Sending (`[outbound]`, when users can send): will what they send be delivered, or
//! thrown away as forged? SPF of each domain must allow the path mail takes (SES's
//! `include:amazonses.com`; in `direct` mode the standby's own addresses, evaluated by
//! mail-auth as a receiver would), each DKIM key must be published under its selector
//! and match the configured key, and a smarthost must accept the login.

use std::net::SocketAddr;

use base64::Engine;
use hickory_resolver::TokioResolver;

use super::Check;
use crate::config::{Config, OutboundMode};
use crate::outbound::dkim::{DkimKeys, Published};
use crate::ports::SenderCheck;

/// Whether this configuration lets users send at all.
pub fn applies(config: &Config) -> bool {
    let s = &config.submission;
    s.listen.is_some()
        || s.listen_tls.is_some()
        || config.web.listen.is_some()
        || config.outbound.relay.is_some()
        || config.outbound.mode.is_some()
}

/// The checks of sending.
pub async fn checks(config: &Config, nameserver: Option<SocketAddr>) -> Vec<Check> {
    let mode = config.outbound_mode();
    let mut out = Vec::new();
    let resolver = match crate::dns::resolver(nameserver, false) {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::fail(
                "outbound",
                e,
                "fix /etc/resolv.conf or pass --nameserver IP:PORT",
            )];
        }
    };
    if mode == OutboundMode::Relay {
        out.push(relay_login(config).await);
    }
    for domain in &config.domains {
        out.push(spf(config, mode, domain, &resolver, nameserver).await);
    }
    if mode != OutboundMode::Ses {
        out.extend(dkim(config, &resolver).await);
    }
    out
}

async fn relay_login(config: &Config) -> Check {
    let name = "outbound relay";
    let relay = match crate::smtp::SmtpRelay::smarthost(config) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Check::fail(
                name,
                "[outbound] mode = \"relay\" without a relay",
                "set [outbound] relay = \"host:port\"",
            );
        }
        Err(e) => return Check::fail(name, e.to_string(), "fix [outbound] relay_*"),
    };
    match relay.login().await {
        Ok(l) => {
            let auth = relay
                .auth_user()
                .map_or("no AUTH configured".into(), |u| format!("AUTH as {u}"));
            let tls = if l.tls { "STARTTLS" } else { "no TLS" };
            Check::pass(name, format!("{}: {tls}, {auth}", relay.address()))
        }
        Err(e) => Check::fail(
            name,
            format!("{}: {e}", relay.address()),
            "check [outbound] relay, relay_user and the password in relay_password_env, \
             and that the smarthost lets this host relay",
        ),
    }
}

/// Whether a TXT record is an SPF record (`v=spf1` alone or followed by a space).
fn is_spf(t: &str) -> bool {
    let l = t.trim_start().to_ascii_lowercase();
    l == "v=spf1" || l.starts_with("v=spf1 ")
}

/// The SPF record of `domain`, as text (`None`: there is none; several are joined by a
/// newline, which [`spf`] reports as the error receivers see).
async fn spf_record(resolver: &TokioResolver, domain: &str) -> Result<Option<String>, String> {
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let records = crate::dns::txt(resolver, &fqdn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(records
        .into_iter()
        .filter(|t| is_spf(t))
        .reduce(|a, b| format!("{a}\n{b}")))
}

async fn spf(
    config: &Config,
    mode: OutboundMode,
    domain: &str,
    resolver: &TokioResolver,
    nameserver: Option<SocketAddr>,
) -> Check {
    let name = format!("spf {domain}");
    let record = match spf_record(resolver, domain).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            let want = match mode {
                OutboundMode::Ses => "include:amazonses.com".to_string(),
                OutboundMode::Direct => format!("a:{}", config.hostname),
                OutboundMode::Relay => "the smarthost's sending addresses".into(),
            };
            return Check::fail(
                name,
                "no SPF record: mail users send from the standby fails DMARC at many receivers",
                format!("publish `{domain}. TXT \"v=spf1 ... {want} ~all\"`"),
            );
        }
        Err(e) => {
            return Check::fail(
                name,
                format!("DNS lookup failed: {e}"),
                "check the resolver",
            );
        }
    };
    if record.contains('\n') {
        return Check::fail(
            name,
            format!(
                "several SPF records ({}): receivers answer permerror, as if none",
                record.replace('\n', " | ")
            ),
            format!("merge them into one TXT record for {domain}"),
        );
    }
    match mode {
        OutboundMode::Ses
            if record
                .to_ascii_lowercase()
                .contains("include:amazonses.com") =>
        {
            Check::pass(name, record)
        }
        OutboundMode::Ses => Check::fail(
            name,
            format!("{record}: does not include amazonses.com, the path SES sends from"),
            format!("add include:amazonses.com to the SPF record of {domain}"),
        ),
        OutboundMode::Relay => Check::warn(
            name,
            format!("{record} (whether it allows the smarthost cannot be seen from here)"),
            "make sure the record allows the smarthost's sending addresses (its include: or ip4:)",
        ),
        OutboundMode::Direct => {
            direct_spf(config, domain, &record, resolver, nameserver, name).await
        }
    }
}

/// In `direct` mode mail leaves from this host: evaluate the domain's SPF for the
/// addresses `hostname` resolves to, as a receiver would.
async fn direct_spf(
    config: &Config,
    domain: &str,
    record: &str,
    resolver: &TokioResolver,
    nameserver: Option<SocketAddr>,
    name: String,
) -> Check {
    let host = &config.hostname;
    let ips: Vec<std::net::IpAddr> = match resolver.lookup_ip(format!("{host}.").as_str()).await {
        Ok(l) => l.iter().collect(),
        Err(e) => {
            return Check::fail(
                name,
                format!("{host} (hostname) does not resolve: {e}"),
                "give the standby's hostname an A record: receivers check it and SPF needs it",
            );
        }
    };
    let spf = match crate::smtp::spf::SpfCheck::new(nameserver, host.clone()) {
        Ok(s) => s,
        Err(e) => return Check::fail(name, e, "check the resolver"),
    };
    let mut refused = Vec::new();
    for ip in &ips {
        let verdict = spf.spf(*ip, host, &format!("postmaster@{domain}")).await;
        if verdict != "PASS" {
            refused.push(format!("{ip}: {verdict}"));
        }
    }
    if refused.is_empty() {
        Check::pass(name, format!("{record} allows {host}"))
    } else {
        Check::fail(
            name,
            format!(
                "{record} does not allow this standby ({})",
                refused.join(", ")
            ),
            format!("add `a:{host}` (or its ip4:/ip6: addresses) to the SPF record of {domain}"),
        )
    }
}

/// The value of tag `name` in a DKIM key record (`k=rsa; p=...`), spaces removed.
fn tag(record: &str, name: &str) -> Option<String> {
    record.split(';').find_map(|t| {
        let (k, v) = t.split_once('=')?;
        (k.trim() == name).then(|| v.chars().filter(|c| !c.is_whitespace()).collect())
    })
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    if n < 128 {
        return vec![n as u8];
    }
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// An RSA public key (PKCS#1) as a SubjectPublicKeyInfo: the form every DKIM verifier
/// reads (OpenDKIM and older libraries read no other).
fn spki(pkcs1: &[u8]) -> Vec<u8> {
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    bits.extend(der_len(pkcs1.len() + 1));
    bits.push(0);
    bits.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    out.extend(der_len(ALGORITHM.len() + bits.len()));
    out.extend_from_slice(&ALGORITHM);
    out.extend(bits);
    out
}

/// What the DNS should hold for `key`: `k=` and `p=`.
fn wanted(key: &Published) -> String {
    let public = if key.kind == "rsa" {
        spki(&key.public)
    } else {
        key.public.clone()
    };
    format!(
        "v=DKIM1; k={}; p={}",
        key.kind,
        base64::engine::general_purpose::STANDARD.encode(public)
    )
}

/// How the published record compares with `key`: `Ok(None)` the same, `Ok(Some(why))`
/// the same key in a form some receivers cannot read, `Err(why)` not the key.
fn compare(key: &Published, record: &str) -> Result<Option<String>, String> {
    let k = tag(record, "k").unwrap_or_else(|| "rsa".into());
    if !k.eq_ignore_ascii_case(key.kind) {
        return Err(format!("k={k}, the configured key is {}", key.kind));
    }
    let p = tag(record, "p").ok_or("no p= tag")?;
    let published = base64::engine::general_purpose::STANDARD
        .decode(&p)
        .map_err(|_| "p= is not base64".to_string())?;
    if published.is_empty() {
        return Err("p= is empty: the key is revoked".into());
    }
    match key.kind {
        "rsa" if published == spki(&key.public) => Ok(None),
        "rsa" if published == key.public => Ok(Some(
            "published as a bare PKCS#1 key: OpenDKIM and older verifiers read only the \
             SubjectPublicKeyInfo form"
                .into(),
        )),
        "ed25519" if published == key.public => Ok(None),
        _ => Err("the published key is not the configured one".into()),
    }
}

async fn dkim(config: &Config, resolver: &TokioResolver) -> Vec<Check> {
    let keys = match DkimKeys::load(config) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return vec![Check::warn(
                "dkim",
                "no DKIM key: mail users send goes out unsigned and fails DMARC where the \
                 domain's policy asks for alignment",
                "set [outbound] dkim_selector and dkim_key, and publish the key",
            )];
        }
        Err(e) => {
            return vec![Check::fail(
                "dkim",
                e.to_string(),
                "fix [outbound] dkim_key",
            )];
        }
    };
    let mut out = Vec::new();
    for key in keys.published() {
        let name = format!("dkim {}._domainkey.{}", key.selector, key.domain);
        let fqdn = format!("{}._domainkey.{}.", key.selector, key.domain);
        let record = match crate::dns::txt(resolver, &fqdn).await {
            Ok(records) => records.into_iter().find(|t| t.contains("p=")),
            Err(e) => {
                out.push(Check::fail(
                    name,
                    format!("DNS lookup failed: {e}"),
                    "check the resolver",
                ));
                continue;
            }
        };
        let fix = format!("publish `{fqdn} TXT \"{}\"`", wanted(&key));
        out.push(match record {
            None => Check::fail(
                name,
                "not published: receivers cannot verify the signature",
                fix,
            ),
            Some(r) => match compare(&key, &r) {
                Ok(None) => Check::pass(name, format!("{} key published", key.kind)),
                Ok(Some(why)) => Check::warn(name, why, fix),
                Err(why) => Check::fail(name, format!("{why}: every signature fails"), fix),
            },
        });
    }
    out
}
