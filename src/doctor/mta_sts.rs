//! MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): will the big senders deliver to the standby?
//!
//! A domain that publishes an MTA-STS policy in `enforce` mode tells senders that honour
//! it (Gmail, Microsoft) to deliver only to MX hosts matching one of the policy's `mx:`
//! lines, over TLS with a valid certificate for that name. A standby missing from the
//! policy receives nothing from them on the day the primary is down; the policy file is
//! usually written for the primary alone. So, per domain: the `_mta-sts` TXT record, the
//! policy fetched as senders fetch it (HTTPS from `mta-sts.<domain>`, no redirects, 200
//! only), the standby's MX host against the `mx:` lines (FAIL in `enforce`, warn in
//! `testing`), and `max_age`. TLS-RPT is how the administrator would hear of senders'
//! failures: warn when the domain has none.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;

use super::Check;

/// The largest policy file read (the RFC sets none; real ones are a few hundred bytes).
const MAX_POLICY: usize = 64 * 1024;

/// `max_age` below this is reported: senders then forget the policy within hours, and
/// a policy server that is down on the bad day leaves them without one.
const MIN_MAX_AGE: u64 = 86_400;

/// RFC 8461 §3.2's upper bound for `max_age` (a year).
const MAX_MAX_AGE: u64 = 31_557_600;

/// The policy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<String>,
    pub max_age: u64,
}

/// Parse a policy file (RFC 8461 §3.2): `key: value` lines (CRLF or LF), `version: STSv1`,
/// a `mode`, `max_age`, and `mx` lines unless the mode is `none`; unknown keys ignored.
///
/// # Errors
/// What makes senders discard it, as text.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("a line without `key: value`: {:?}", clip(line)));
        };
        let value = value.trim();
        // RFC 8461 §3.2: a key given again is ignored (the first counts); `mx` repeats.
        match key.trim() {
            "version" if version.is_none() => version = Some(value.to_string()),
            "mode" if mode.is_none() => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {:?}", clip(other))),
                })
            }
            "max_age" if max_age.is_none() => {
                max_age =
                    Some(value.parse::<u64>().map_err(|_| {
                        format!("max_age {:?} is not a number of seconds", clip(value))
                    })?)
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no `version: STSv1` line".into());
    }
    let mode = mode.ok_or("no `mode:` line")?;
    let max_age = max_age.ok_or("no `max_age:` line")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no `mx:` line".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// The `id` of an `_mta-sts` TXT record (RFC 8461 §3.1): `v=STSv1;` first, then
/// `;`-separated `key=value` fields, one of them `id=` 1 to 32 letters and digits.
///
/// # Errors
/// What makes the record invalid, as text.
pub fn record_id(record: &str) -> Result<String, String> {
    let rest = record
        .strip_prefix("v=STSv1")
        .ok_or("it does not start with `v=STSv1`")?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let rest = rest
        .strip_prefix(';')
        .ok_or("`v=STSv1` is not followed by `;`")?;
    let mut id = None;
    for field in rest.split(';') {
        let field = field.trim_matches([' ', '\t']);
        if field.is_empty() {
            continue;
        }
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("field {:?} is not key=value", clip(field)))?;
        if key == "id" && id.is_none() {
            id = Some(value.to_string());
        }
    }
    let id = id.ok_or("no `id=` field")?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(format!(
            "id {:?} is not 1 to 32 letters and digits",
            clip(&id)
        ));
    }
    Ok(id)
}

/// Whether MX host `host` matches the policy's `pattern` (RFC 8461 §4.1): equal ignoring
/// case, or `*.` + a suffix where the wildcard stands for exactly one whole left-most
/// label (`*.example.com` matches `mx.example.com`, not `example.com` nor
/// `a.b.example.com`).
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// Judge a fetched policy for the standby's MX host: one check for the match and the
/// mode, one for `max_age`.
pub fn judge(domain: &str, policy: &Policy, standby: &str) -> Vec<Check> {
    let name = format!("mta-sts {domain}");
    let listed = policy.mx.iter().any(|p| mx_matches(p, standby));
    let lines = policy.mx.join(", ");
    let fix = format!(
        "add `mx: {standby}` to https://mta-sts.{domain}/.well-known/mta-sts.txt and change \
         the id in the `_mta-sts.{domain}` TXT record (senders refetch only when it changes)"
    );
    let first = match (policy.mode, listed) {
        (Mode::None, _) => Check::pass(name, "mode none: senders apply no policy"),
        (_, true) => Check::pass(
            name,
            format!(
                "{} mode lists the standby {standby} (mx: {lines})",
                mode_name(policy.mode)
            ),
        ),
        (Mode::Enforce, false) => Check::fail(
            name,
            format!(
                "enforce mode without the standby {standby} (mx: {lines}): senders that honour \
                 MTA-STS (Gmail, Microsoft) will not deliver to the standby while the primary \
                 is down"
            ),
            fix,
        ),
        (Mode::Testing, false) => Check::warn(
            name,
            format!(
                "testing mode without the standby {standby} (mx: {lines}): senders deliver but \
                 report failures, and switching to enforce would cut the standby off"
            ),
            fix,
        ),
    };
    let age_name = format!("mta-sts max_age {domain}");
    let age = policy.max_age;
    let second = if age > MAX_MAX_AGE {
        Check::warn(
            age_name,
            format!("max_age {age} is above the RFC's limit of {MAX_MAX_AGE} (a year)"),
            "set `max_age: 604800` (a week) or more, up to 31557600",
        )
    } else if age < MIN_MAX_AGE {
        Check::warn(
            age_name,
            format!(
                "max_age {age} s: senders drop the policy within a day, and with the policy \
                 server down on the bad day they have none"
            ),
            "set `max_age: 604800` (a week) or more; RFC 8461 expects weeks",
        )
    } else {
        Check::pass(age_name, format!("{age} s ({} days)", age / 86_400))
    };
    vec![first, second]
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Testing => "testing",
        Mode::None => "none",
    }
}

/// The first 80 characters of what a remote server sent, for a message.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Where and how to fetch policies.
pub struct Fetcher {
    /// Port of the policy servers (443; a test server's elsewhere).
    pub port: u16,
    /// Extra trusted roots (PEM), for a test CA or a private one.
    pub ca_pem: Option<Vec<u8>>,
}

/// The checks for each configured domain: MTA-STS, then TLS-RPT.
pub async fn checks(
    domains: &[String],
    standby: &str,
    resolver: &TokioResolver,
    fetcher: &Fetcher,
) -> Vec<Check> {
    let mut out = Vec::new();
    for domain in domains {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        out.extend(mta_sts(&domain, standby, resolver, fetcher).await);
        out.push(tls_rpt(&domain, resolver).await);
    }
    out
}

async fn mta_sts(
    domain: &str,
    standby: &str,
    resolver: &TokioResolver,
    fetcher: &Fetcher,
) -> Vec<Check> {
    let name = format!("mta-sts {domain}");
    let record = format!("_mta-sts.{domain}.");
    let txt = match crate::dns::txt(resolver, &record).await {
        Ok(t) => t,
        Err(e) => {
            return vec![Check::fail(
                name,
                format!("DNS lookup of {record} failed: {e}"),
                "check the resolver (or --nameserver) and the domain's delegation",
            )];
        }
    };
    // RFC 8461 §3.1: records not starting with `v=STSv1` are ignored; other than exactly
    // one left, senders see no policy.
    let sts: Vec<&String> = txt
        .iter()
        .filter(|t| {
            t.strip_prefix("v=STSv1")
                .is_some_and(|r| r.is_empty() || r.starts_with(';') || r.starts_with(' '))
        })
        .collect();
    match sts.len() {
        0 => {
            return vec![Check::pass(
                name,
                "no MTA-STS policy published: senders deliver to any MX host",
            )];
        }
        1 => {}
        n => {
            return vec![Check::warn(
                name,
                format!("{n} `v=STSv1` TXT records at {record}: senders treat that as no policy"),
                format!("keep exactly one `v=STSv1; id=...` record at {record}"),
            )];
        }
    }
    if let Err(why) = record_id(sts[0]) {
        return vec![Check::fail(
            name,
            format!(
                "the record at {record} is not valid ({why}): senders keep applying the \
                 policy they cached, whatever the file says now"
            ),
            format!(
                "publish `{record} TXT \"v=STSv1; id=20260101T000000\"` (id: 1 to 32 letters and digits, changed with every policy change)"
            ),
        )];
    }
    let host = format!("mta-sts.{domain}");
    let url = format!("https://{host}/.well-known/mta-sts.txt");
    match fetch(&host, &url, resolver, fetcher).await {
        Ok(text) => match parse_policy(&text) {
            Ok(policy) => judge(domain, &policy, standby),
            Err(why) => vec![Check::fail(
                name,
                format!("the policy at {url} is not valid ({why}): senders ignore it"),
                "fix the policy file (RFC 8461 §3.2: version, mode, mx, max_age lines)",
            )],
        },
        Err(why) => vec![Check::fail(
            name,
            format!(
                "{record} announces a policy but {url} cannot be fetched ({why}): senders \
                 that cached an earlier policy keep applying it, and whether it lists the \
                 standby cannot be checked"
            ),
            format!(
                "serve the policy at {url} with a certificate valid for {host} (HTTP 200, \
                 text/plain, no redirect), or remove {record}"
            ),
        )],
    }
}

/// The policy as senders fetch it (RFC 8461 §3.3): HTTPS with a certificate valid for
/// `host`, HTTP 200 only, no redirects, a size limit; the address looked up with the
/// doctor's resolver.
async fn fetch(
    host: &str,
    url: &str,
    resolver: &TokioResolver,
    fetcher: &Fetcher,
) -> Result<String, String> {
    // Every address, as senders try them (a host without IPv6 routing must not fail on
    // an AAAA record listed first).
    let addrs: Vec<SocketAddr> = resolver
        .lookup_ip(format!("{host}."))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .iter()
        .map(|ip| SocketAddr::new(ip, fetcher.port))
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve the name itself, around the
        // doctor's resolver.
        .no_proxy()
        .user_agent(concat!("standby-mx-doctor/", env!("CARGO_PKG_VERSION")))
        .resolve_to_addrs(host, &addrs);
    if let Some(pem) = &fetcher.ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())? {
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let url = if fetcher.port == 443 {
        url.to_string()
    } else {
        url.replacen(host, &format!("{host}:{}", fetcher.port), 1)
    };
    let mut resp = client.get(&url).send().await.map_err(|e| {
        // The chain of causes says why (a certificate not valid for the name, expired).
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        why
    })?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!(
            "HTTP {} (only 200 counts; redirects are not followed)",
            resp.status()
        ));
    }
    // RFC 8461 §3.2: the media type is text/plain; senders check it.
    let media = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !media.starts_with("text/plain") {
        return Err(format!(
            "served as {:?}, not text/plain",
            if media.is_empty() {
                "no type"
            } else {
                media.as_str()
            }
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_POLICY {
            return Err(format!("larger than {MAX_POLICY} bytes"));
        }
    }
    String::from_utf8(body).map_err(|_| "not UTF-8 text".to_string())
}

/// The domain's TLS-RPT record (`_smtp._tls.<domain>`, `v=TLSRPTv1; rua=...`).
async fn tls_rpt(domain: &str, resolver: &TokioResolver) -> Check {
    let name = format!("tls-rpt {domain}");
    let record = format!("_smtp._tls.{domain}.");
    let fix = format!(
        "publish `{record} TXT \"v=TLSRPTv1; rua=mailto:tls-reports@{domain}\"`: senders \
         then report TLS and MTA-STS failures (a standby they refuse) to that address"
    );
    match crate::dns::txt(resolver, &record).await {
        Ok(txt) => {
            let rpt: Vec<&String> = txt
                .iter()
                .filter(|t| {
                    t.strip_prefix("v=TLSRPTv1")
                        .is_some_and(|r| r.trim_start().starts_with(';'))
                })
                .collect();
            match rpt.as_slice() {
                [one] if one.contains("rua=") => Check::pass(name, one.to_string()),
                [one] => Check::warn(name, format!("{one}: no rua= address"), fix),
                [] => Check::warn(name, format!("no TLS-RPT record at {record}"), fix),
                _ => Check::warn(
                    name,
                    format!(
                        "{} TLS-RPT records at {record}: senders ignore them",
                        rpt.len()
                    ),
                    fix,
                ),
            }
        }
        Err(e) => Check::warn(name, format!("DNS lookup of {record} failed: {e}"), fix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.backup.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn policies_parse_as_the_rfc_says() {
        let p = parse_policy(POLICY).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.backup.example.com"]);
        assert_eq!(p.max_age, 604_800);
        let lf = "version: STSv1\nmode: none\nmax_age: 86400\nextension: ignored\n";
        assert_eq!(parse_policy(lf).unwrap().mode, Mode::None);
        for (bad, why) in [
            ("mode: enforce\nmx: a\nmax_age: 1\n", "version"),
            (
                "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "unknown mode",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no `mx:`"),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n",
                "max_age",
            ),
            ("version: STSv1\nmode: enforce\nmx: a\n", "max_age"),
            ("<html>\n", "key: value"),
        ] {
            let e = parse_policy(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn records_need_a_valid_id_and_the_first_key_counts() {
        assert_eq!(
            record_id("v=STSv1; id=20260101T0000").unwrap(),
            "20260101T0000"
        );
        assert_eq!(record_id("v=STSv1 ;id=a1;ext=x").unwrap(), "a1");
        for bad in [
            "v=STSv1",
            "v=STSv1 id=1",
            "v=STSv1; id=2024-06-01",
            "v=STSv1; id=",
            "v=STSv1; x=1",
        ] {
            assert!(record_id(bad).is_err(), "{bad}");
        }
        let p =
            parse_policy("version: STSv1\nmode: enforce\nmode: testing\nmx: a\nmax_age: 86400\n")
                .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
    }

    #[test]
    fn wildcards_stand_for_one_whole_label() {
        assert!(mx_matches("mail.example.com", "MAIL.example.com."));
        assert!(mx_matches("*.example.com", "mx2.example.com"));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("*.example.com", "a.b.example.com"));
        assert!(!mx_matches("*.example.com", "mx2.example.com.evil"));
        assert!(!mx_matches("mail.example.com", "mx2.example.com"));
    }

    #[test]
    fn a_standby_missing_from_the_policy_fails_in_enforce_and_warns_in_testing() {
        let mut p = parse_policy(POLICY).unwrap();
        let checks = judge("example.com", &p, "mx2.backup.example.com");
        assert_eq!(checks[0].verdict, Verdict::Pass, "{checks:?}");
        assert_eq!(checks[1].verdict, Verdict::Pass, "{checks:?}");
        let c = &judge("example.com", &p, "standby.example.net")[0];
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.fix
                .as_deref()
                .unwrap()
                .contains("mx: standby.example.net")
        );
        p.mode = Mode::Testing;
        assert_eq!(
            judge("example.com", &p, "standby.example.net")[0].verdict,
            Verdict::Warn
        );
        p.mode = Mode::None;
        assert_eq!(
            judge("example.com", &p, "standby.example.net")[0].verdict,
            Verdict::Pass
        );
        p.max_age = 3600;
        assert_eq!(judge("example.com", &p, "x")[1].verdict, Verdict::Warn);
        p.max_age = MAX_MAX_AGE + 1;
        assert_eq!(judge("example.com", &p, "x")[1].verdict, Verdict::Warn);
    }
}
