//! The domains' MX records: the primary must have the lowest preference number and the
//! standby a higher one. Senders try MX hosts in preference order, so a standby listed
//! first (or at the same preference) takes mail while the primary is up, and a standby
//! missing from DNS is never tried at all.
//!
//! Looked up with hickory-resolver: the system's resolvers, or one `IP:port` (a test's
//! dnsmasq, or an authoritative server to bypass caches).

use std::net::SocketAddr;

use super::Check;
use crate::config::{BackendKind, Config};

/// The host the standby is published as: `mx_host` from the config, else SES inbound's
/// endpoint for the AWS backend, else the listener's `hostname`.
pub fn standby_host(config: &Config, region: Option<&str>) -> String {
    if let Some(h) = &config.mx_host {
        return normalise(h);
    }
    match (config.backend, region) {
        (BackendKind::Aws, Some(r)) => format!("inbound-smtp.{r}.amazonaws.com"),
        _ => normalise(&config.hostname),
    }
}

fn normalise(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Judge one domain's MX set (preference, host).
pub fn judge(domain: &str, records: &[(u16, String)], standby: &str) -> Check {
    let name = format!("mx {domain}");
    let mut sorted: Vec<(u16, String)> = records.iter().map(|(p, h)| (*p, normalise(h))).collect();
    sorted.sort();
    let listing = sorted
        .iter()
        .map(|(p, h)| format!("{p} {h}"))
        .collect::<Vec<_>>()
        .join(", ");
    let publish =
        format!("publish `{domain}. MX 10 <primary host>.` and `{domain}. MX 20 {standby}.`");
    if sorted.is_empty() {
        return Check::fail(name, "no MX records", publish);
    }
    let Some(standby_pref) = sorted.iter().find(|(_, h)| h == standby).map(|(p, _)| *p) else {
        return Check::fail(
            name,
            format!("the standby {standby} is not an MX host ({listing})"),
            format!(
                "add `{domain}. MX {} {standby}.`: senders fall back only to hosts listed",
                sorted.last().map_or(20, |(p, _)| p.saturating_add(10))
            ),
        );
    };
    let Some((primary_pref, primary)) = sorted.iter().find(|(_, h)| h != standby).cloned() else {
        return Check::fail(
            name,
            format!("the standby is the only MX host ({listing})"),
            format!("list the primary with a lower preference than {standby_pref}"),
        );
    };
    if standby_pref <= primary_pref {
        return Check::fail(
            name,
            format!(
                "the standby's preference {standby_pref} is not higher than the primary \
                 {primary}'s {primary_pref} ({listing}): senders would deliver to the standby \
                 while the primary is up"
            ),
            format!(
                "give {standby} a higher number than {primary_pref}, e.g. `MX {} {standby}.`",
                primary_pref.saturating_add(10)
            ),
        );
    }
    Check::pass(name, listing)
}

/// One check per configured domain.
pub async fn check_domains(
    config: &Config,
    standby: &str,
    nameserver: Option<SocketAddr>,
) -> Vec<Check> {
    if config.domains.is_empty() {
        return vec![Check::fail(
            "mx",
            "no domains configured",
            "set `domains = [\"example.com\"]` in the config (STANDBY_DOMAINS)",
        )];
    }
    let resolver = match crate::dns::resolver(nameserver, false) {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::fail(
                "mx",
                e,
                "fix /etc/resolv.conf or pass --nameserver IP:PORT",
            )];
        }
    };
    let mut out = Vec::new();
    for domain in &config.domains {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let check = match crate::dns::mx(&resolver, fqdn.as_str()).await {
            Ok(records) => judge(domain, &records, standby),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => judge(domain, &[], standby),
            Err(e) => Check::fail(
                format!("mx {domain}"),
                format!("DNS lookup failed: {e}"),
                "check the resolver (or --nameserver) and the domain's delegation",
            ),
        };
        out.push(check);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    const S: &str = "inbound-smtp.eu-west-1.amazonaws.com";

    fn mx(records: &[(u16, &str)]) -> Check {
        let r: Vec<(u16, String)> = records.iter().map(|(p, h)| (*p, h.to_string())).collect();
        judge("example.com", &r, S)
    }

    #[test]
    fn primary_first_then_standby_passes() {
        let c = mx(&[
            (20, "Inbound-SMTP.eu-west-1.amazonaws.com."),
            (10, "mail.example.com."),
        ]);
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
        assert_eq!(c.detail, format!("10 mail.example.com, 20 {S}"));
    }

    #[test]
    fn each_broken_order_fails_with_its_reason() {
        let cases: [(&[(u16, &str)], &str); 5] = [
            (&[], "no MX records"),
            (&[(10, "mail.example.com")], "is not an MX host"),
            (&[(10, S)], "the only MX host"),
            (&[(10, S), (20, "mail.example.com")], "not higher"),
            (&[(10, S), (10, "mail.example.com")], "not higher"),
        ];
        for (records, why) in cases {
            let c = mx(records);
            assert_eq!(c.verdict, Verdict::Fail, "{records:?}");
            assert!(c.detail.contains(why), "{records:?}: {}", c.detail);
            assert!(c.fix.is_some());
        }
    }
}
