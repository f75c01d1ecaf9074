//! DNS blocklists (RFC 5782) checked when a client connects to the MX listener
//! (`[filter] dnsbl`).
//!
//! Spamware aims at the highest-preference-number MX because it is often filtered less
//! than the primary; a standby that takes whatever the primary would refuse at connect
//! holds it, shows it in the emergency inbox and hands it to the primary later as its
//! own. So the listener asks the lists the primary would: the client's address,
//! reversed, under each zone; an answer in 127.0.0.0/8 means listed, and the TXT record
//! at the same name is the reason. Answers a list gives for its own errors (Spamhaus:
//! 127.255.255.0/24, for queries through public resolvers, over quota, or a typo) are
//! not listings. A list that does not answer lets the client in: an unreachable filter
//! never costs mail.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use crate::ports::{ClientCheck, Listing};

/// The [`ClientCheck`] adapter over DNS.
pub struct DnsblCheck {
    resolver: TokioResolver,
    zones: Vec<String>,
    /// How long the lookups of one client may take together.
    limit: Duration,
}

impl DnsblCheck {
    /// Look `zones` up through `nameserver`, or the system's resolvers, all of a
    /// client's lookups within `limit`.
    ///
    /// # Errors
    /// The resolver configuration cannot be read.
    pub fn new(
        zones: Vec<String>,
        nameserver: Option<SocketAddr>,
        limit: Duration,
    ) -> Result<Self, String> {
        Ok(DnsblCheck {
            resolver: crate::dns::resolver(nameserver, true)?,
            zones,
            limit,
        })
    }

    /// `ip`'s entry in `zone` by `deadline`: `Ok(None)` not listed, `Err` no answer (or
    /// none in time). The reason is a courtesy: a listing whose TXT record does not come
    /// in time is a listing all the same.
    async fn one(
        &self,
        ip: IpAddr,
        zone: &str,
        deadline: Instant,
    ) -> Result<Option<Listing>, String> {
        let name = query_name(ip, zone);
        let lookup = tokio::time::timeout_at(deadline, self.resolver.ipv4_lookup(name.as_str()));
        let answers = match lookup.await {
            Err(_) => return Err(format!("{zone}: no answer in time")),
            Ok(Ok(l)) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
            Ok(Err(e)) => return Err(format!("{zone}: {e}")),
        };
        match verdict(&answers) {
            Verdict::NotListed => Ok(None),
            Verdict::ListError(a) => Err(format!("{zone} answered {a}: an error of the list's")),
            Verdict::Listed => {
                // The reason is a courtesy: without one the client is refused all the same.
                let txt = tokio::time::timeout_at(deadline, crate::dns::txt(&self.resolver, &name));
                let reason = txt
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(|t| t.into_iter().next())
                    .map(|t| printable(&t))
                    .filter(|t| !t.is_empty());
                Ok(Some(Listing {
                    zone: zone.to_string(),
                    reason,
                }))
            }
        }
    }
}

#[async_trait]
impl ClientCheck for DnsblCheck {
    async fn listed(&self, ip: IpAddr) -> Result<Option<Listing>, String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // All lists at once, each by one deadline (a list that does not answer costs only
        // its own verdict); the first in the configured order that names the client.
        let deadline = Instant::now() + self.limit;
        let answers =
            futures_util::future::join_all(self.zones.iter().map(|z| self.one(ip, z, deadline)))
                .await;
        let mut unanswered = Vec::new();
        for a in answers {
            match a {
                Ok(Some(listing)) => return Ok(Some(listing)),
                Ok(None) => {}
                Err(e) => unanswered.push(e),
            }
        }
        if unanswered.is_empty() {
            Ok(None)
        } else {
            Err(unanswered.join("; "))
        }
    }
}

/// The name `ip` is looked up at in `zone` (RFC 5782 §2.1, §2.4): IPv4's octets
/// reversed, IPv6's 32 nibbles reversed, each a label.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        IpAddr::V6(v6) => {
            let mut labels = String::with_capacity(64 + zone.len() + 1);
            for byte in v6.octets().iter().rev() {
                labels.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            format!("{labels}{zone}.")
        }
    }
}

/// What a list's A answers say.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    NotListed,
    Listed,
    /// An answer a list gives for its own errors, not a listing.
    ListError(Ipv4Addr),
}

/// RFC 5782 §2.1: listed when an answer is in 127.0.0.0/8. Spamhaus's error answers
/// (127.255.255.0/24) mean the query was refused, not that the client is listed; and
/// 127.0.0.1, which RFC 5782 §5 says no list may name, is how lists being shut down or
/// refusing a resolver have answered every query: taken as a listing, the standby would
/// refuse all mail with a permanent error while the primary is down.
pub fn verdict(answers: &[Ipv4Addr]) -> Verdict {
    let mut error = None;
    for a in answers {
        let [x, y, z, w] = a.octets();
        match (x, y, z, w) {
            (127, 255, 255, _) | (127, 0, 0, 1) => error = Some(*a),
            (127, _, _, _) => return Verdict::Listed,
            _ => {}
        }
    }
    error.map_or(Verdict::NotListed, Verdict::ListError)
}

/// A list's reason as it may go in a reply line: printable ASCII, at most 200 bytes.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_reverse_the_address() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "zen.example"),
            "99.2.0.192.zen.example."
        );
        // RFC 5782 §2.4's example.
        assert_eq!(
            query_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
    }

    #[test]
    fn only_loopback_answers_outside_the_error_range_are_listings() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(verdict(&[]), Verdict::NotListed);
        assert_eq!(verdict(&[ip("127.0.0.2")]), Verdict::Listed);
        assert_eq!(verdict(&[ip("127.0.0.11")]), Verdict::Listed);
        assert_eq!(
            verdict(&[ip("127.255.255.254")]),
            Verdict::ListError(ip("127.255.255.254"))
        );
        assert_eq!(
            verdict(&[ip("127.255.255.254"), ip("127.0.0.4")]),
            Verdict::Listed
        );
        assert_eq!(
            verdict(&[ip("127.0.0.1")]),
            Verdict::ListError(ip("127.0.0.1"))
        );
        // A wildcard or a hijacking resolver's answer is not a listing.
        assert_eq!(verdict(&[ip("192.0.2.1")]), Verdict::NotListed);
    }

    #[test]
    fn reasons_are_one_printable_line() {
        assert_eq!(printable("listed\r\n554 fake"), "listed??554 fake");
        assert_eq!(printable(&"x".repeat(500)).len(), 200);
    }
}
