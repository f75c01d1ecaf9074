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

/// The SPF record of `domain`, as text (`None`: there is none).
async fn spf_record(resolver: &TokioResolver, domain: &str) -> Result<Option<String>, String> {
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    match resolver.txt_lookup(fqdn.as_str()).await {
        Ok(l) => Ok(l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .find(|t| t.to_ascii_lowercase().starts_with("v=spf1"))),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
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

fn der_b64(record: &str) -> Option<Vec<u8>> {
    let p = record
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("p="))?;
    let p: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(p).ok()
}

/// Whether the published `p=` is the configured key (an RSA `p=` may be the PKCS#1 key
/// or a SubjectPublicKeyInfo ending with it).
fn matches(key: &Published, published: &[u8]) -> bool {
    !published.is_empty() && (published == key.public || published.ends_with(&key.public))
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
        let record = match resolver.txt_lookup(fqdn.as_str()).await {
            Ok(l) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .next(),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => None,
            Err(e) => {
                out.push(Check::fail(
                    name,
                    format!("DNS lookup failed: {e}"),
                    "check the resolver",
                ));
                continue;
            }
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(&key.public);
        let fix = format!("publish `{fqdn} TXT \"v=DKIM1; k={}; p={b64}\"`", key.kind);
        out.push(match record {
            None => Check::fail(
                name,
                "not published: receivers cannot verify the signature",
                fix,
            ),
            Some(r) => match der_b64(&r) {
                Some(p) if matches(&key, &p) => {
                    Check::pass(name, format!("{} key published", key.kind))
                }
                _ => Check::fail(
                    name,
                    "the published key is not the configured one: every signature fails",
                    fix,
                ),
            },
        });
    }
    out
}
