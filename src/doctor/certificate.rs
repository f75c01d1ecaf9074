//! The public listener's TLS as senders see it, and DANE.
//!
//! Senders that honour MTA-STS deliver only over TLS with a certificate valid for the MX
//! host name, chaining to a public root without help (rustls, like them, fetches no
//! missing intermediates), and unexpired. So the doctor connects to the standby's public
//! listener (the MX host on port 25, or `--connect`), checks that STARTTLS is offered,
//! and checks the certificate it presents: verified for the MX host, and not expiring
//! within [`EXPIRY_WARN_DAYS`] days (a renewal that silently stopped shows here, not on
//! the bad day).
//!
//! DANE (RFC 7672): TLSA records at `_25._tcp.<mx host>` bind the certificate, and
//! senders apply them only when the zone is DNSSEC-signed, which the resolver reports
//! with the AD bit. Signed: a TLSA record must match the certificate or DANE senders
//! refuse to deliver. Unsigned: the records are ignored, and the check says so.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::Check;
use crate::smtp::tls::{CertPolicy, ClientTls};

/// A certificate expiring within this many days is reported.
pub const EXPIRY_WARN_DAYS: i64 = 21;

/// Each step of the SMTP dialogue within this.
const STEP: Duration = Duration::from_secs(15);

/// What the public listener showed.
#[derive(Debug, Default)]
pub struct Seen {
    pub starttls: bool,
    /// The chain presented, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Why the chain does not verify for the MX host; `None` when it does.
    pub invalid: Option<String>,
}

/// Connect to `addr`, EHLO, STARTTLS, handshake with `host` as the name to verify.
///
/// # Errors
/// The connection or the dialogue failed before the certificate was seen, as text.
pub async fn look(addr: &str, host: &str, tls: &ClientTls) -> Result<Seen, String> {
    let step = |what: &'static str| move |_| format!("{what} timed out");
    let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(step("connecting"))?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut io = BufReader::new(stream);
    let banner = reply(&mut io).await?;
    if !banner.starts_with("220") {
        return Err(format!("banner: {}", clip(&banner)));
    }
    io.get_mut()
        .write_all(b"EHLO standby-doctor.invalid\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let ehlo = reply(&mut io).await?;
    if !ehlo.starts_with("250") {
        return Err(format!("EHLO: {}", clip(&ehlo)));
    }
    let starttls = ehlo.lines().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
    });
    if !starttls {
        let _ = io.get_mut().write_all(b"QUIT\r\n").await;
        return Ok(Seen::default());
    }
    io.get_mut()
        .write_all(b"STARTTLS\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let go = reply(&mut io).await?;
    if !go.starts_with("220") {
        return Err(format!("STARTTLS: {}", clip(&go)));
    }
    let (config, note) = tls.config(CertPolicy::Encrypt).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut stream = tokio::time::timeout(STEP, connector.connect(name, io.into_inner()))
        .await
        .map_err(step("the TLS handshake"))?
        .map_err(|e| format!("the TLS handshake failed: {e}"))?;
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let _ = stream.write_all(b"QUIT\r\n").await;
    let _ = stream.shutdown().await;
    Ok(Seen {
        starttls: true,
        chain,
        invalid: match note.outcome() {
            Some(Ok(())) => None,
            Some(Err(why)) => Some(why),
            None => Some("not checked".into()),
        },
    })
}

/// One SMTP reply, all its lines.
async fn reply(io: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(STEP, io.read_line(&mut line))
            .await
            .map_err(|_| "no reply in time".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed".into());
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') || all.len() > 64 * 1024 {
            return Ok(all);
        }
    }
}

fn clip(s: &str) -> String {
    s.trim().chars().take(120).collect()
}

/// The listener checks: STARTTLS offered, the certificate valid for `host`, its expiry.
pub fn judge(addr: &str, host: &str, seen: &Result<Seen, String>, now: i64) -> Vec<Check> {
    let name = format!("tls {host}");
    let seen = match seen {
        Ok(s) => s,
        Err(e) => {
            return vec![Check::fail(
                name,
                format!("{addr}: {e}"),
                "start `standby serve` with a public listener on port 25, or pass --connect \
                 HOST:PORT where it can be reached from here",
            )];
        }
    };
    if !seen.starttls {
        return vec![Check::fail(
            name,
            format!("{addr} offers no STARTTLS: MTA-STS and DANE senders will not deliver"),
            "set [tls] cert and key in the config (a certificate for the MX host name)",
        )];
    }
    let mut out = Vec::new();
    let cert = match &seen.invalid {
        None => Check::pass(
            name.clone(),
            format!("{addr}: STARTTLS, certificate valid for {host}"),
        ),
        Some(why) => Check::fail(
            name.clone(),
            format!(
                "{addr}: the certificate does not verify for {host} ({why}): MTA-STS senders \
                 will not deliver"
            ),
            format!(
                "install a certificate for {host} from a public CA with its full chain \
                 (leaf first, then the intermediates) in [tls] cert"
            ),
        ),
    };
    out.push(cert);
    let expiry_name = format!("tls expiry {host}");
    match seen.chain.first().map(|der| not_after(der)) {
        Some(Ok(at)) => {
            let days = (at - now).div_euclid(86_400);
            let when = chrono::DateTime::from_timestamp(at, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
                .unwrap_or_else(|| at.to_string());
            out.push(if at <= now {
                Check::fail(
                    expiry_name,
                    format!("expired {when}"),
                    "renew the certificate and reload `standby serve` (SIGHUP)",
                )
            } else if days < EXPIRY_WARN_DAYS {
                Check::warn(
                    expiry_name,
                    format!("expires {when}, in {days} days"),
                    "renew the certificate now (is the renewal job running?), then SIGHUP \
                     `standby serve`",
                )
            } else {
                Check::pass(expiry_name, format!("expires {when}, in {days} days"))
            });
        }
        Some(Err(e)) => out.push(Check::fail(
            expiry_name,
            format!("the certificate cannot be read: {e}"),
            "install a valid certificate in [tls] cert",
        )),
        None => out.push(Check::fail(
            expiry_name,
            "no certificate presented",
            "set [tls] cert and key",
        )),
    }
    out
}

/// The certificate's notAfter, in Unix seconds.
fn not_after(der: &[u8]) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// The DER of `der`'s SubjectPublicKeyInfo.
fn spki(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// One TLSA record's fields (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.usage,
            self.selector,
            self.matching,
            hex::encode(&self.data)
        )
    }
}

/// Whether `record` matches the presented `chain` (leaf first) as an SMTP client applies
/// it (RFC 7672 §3.1): DANE-EE (3) against the leaf, DANE-TA (2) against any certificate
/// of the chain; PKIX-TA/EE (0, 1) are not for SMTP and never match. Selector 0 is the
/// whole certificate, 1 its SubjectPublicKeyInfo; matching 0 exact, 1 SHA-256, 2 SHA-512.
pub fn tlsa_matches(record: &Tlsa, chain: &[Vec<u8>]) -> bool {
    let candidates: &[Vec<u8>] = match record.usage {
        3 => chain.get(..1).unwrap_or_default(),
        2 => chain,
        _ => return false,
    };
    candidates.iter().any(|der| {
        let selected = match record.selector {
            0 => der.clone(),
            1 => match spki(der) {
                Ok(s) => s,
                Err(_) => return false,
            },
            _ => return false,
        };
        let digest = match record.matching {
            0 => selected,
            1 => sha2::Sha256::digest(&selected).to_vec(),
            2 => sha2::Sha512::digest(&selected).to_vec(),
            _ => return false,
        };
        digest == record.data
    })
}

/// The DANE check for `host` given its TLSA answer (`None`: no records) and whether the
/// resolver vouched for it (AD), against the chain the listener presented.
pub fn judge_dane(host: &str, answer: Option<(bool, Vec<Tlsa>)>, chain: &[Vec<u8>]) -> Check {
    let name = format!("dane {host}");
    let owner = format!("_25._tcp.{host}");
    let Some((secure, records)) = answer.filter(|(_, r)| !r.is_empty()) else {
        return Check::pass(name, format!("no TLSA records at {owner} (no DANE)"));
    };
    let listed = records
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if !secure {
        return Check::warn(
            name,
            format!(
                "TLSA ignored: zone unsigned (the resolver did not vouch for {owner} with the \
                 AD bit), so senders apply none of: {listed}"
            ),
            format!(
                "sign the zone with DNSSEC for DANE to take effect (and use a validating \
                 resolver here), or remove the TLSA records at {owner}"
            ),
        );
    }
    if chain.is_empty() {
        return Check::fail(
            name,
            format!("TLSA records at {owner} but no certificate was seen to match them"),
            "make the public listener offer STARTTLS (see the tls check)",
        );
    }
    if records.iter().any(|r| tlsa_matches(r, chain)) {
        Check::pass(
            name,
            format!("a TLSA record matches the certificate ({listed})"),
        )
    } else {
        let leaf_spki = chain
            .first()
            .and_then(|c| spki(c).ok())
            .map(|s| hex::encode(sha2::Sha256::digest(&s)))
            .unwrap_or_default();
        Check::fail(
            name,
            format!(
                "no TLSA record at {owner} matches the certificate ({listed}): DANE senders \
                 will refuse to deliver to the standby"
            ),
            format!(
                "publish `{owner}. TLSA 3 1 1 {leaf_spki}` (the certificate's key), keeping the old record until senders' caches expire"
            ),
        )
    }
}

/// All the listener checks for the local backend: TLS at `connect` (else the MX host
/// `host`, looked up with the doctor's resolver, port 25) as `host`, and DANE.
pub async fn checks(
    connect: Option<&str>,
    host: &str,
    tls: &ClientTls,
    resolver: &hickory_resolver::TokioResolver,
    nameserver: Option<SocketAddr>,
) -> Vec<Check> {
    let (addr, seen) = match connect {
        Some(a) => (a.to_string(), look(a, host, tls).await),
        None => match resolver.lookup_ip(format!("{host}.")).await {
            Ok(ips) => match ips.iter().next() {
                Some(ip) => {
                    let a = SocketAddr::new(ip, 25).to_string();
                    let seen = look(&a, host, tls).await;
                    (format!("{host} ({a})"), seen)
                }
                None => (format!("{host}:25"), Err("no address".to_string())),
            },
            Err(e) => (format!("{host}:25"), Err(format!("does not resolve: {e}"))),
        },
    };
    let addr = addr.as_str();
    let now = chrono::Utc::now().timestamp();
    let mut out = judge(addr, host, &seen, now);
    let chain = seen.as_ref().map(|s| s.chain.clone()).unwrap_or_default();
    let owner = format!("_25._tcp.{host}.");
    out.push(match crate::dns::tlsa(nameserver, &owner).await {
        Ok(answer) => judge_dane(
            host,
            Some((
                answer.authentic,
                answer
                    .records
                    .into_iter()
                    .map(|(usage, selector, matching, data)| Tlsa {
                        usage,
                        selector,
                        matching,
                        data,
                    })
                    .collect(),
            )),
            &chain,
        ),
        Err(e) => Check::warn(
            format!("dane {host}"),
            format!("DNS lookup of {owner} failed: {e}"),
            "check the resolver (or --nameserver)",
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    fn cert() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["mx2.example.test".into()]).unwrap();
        let c = params.self_signed(&key).unwrap();
        (
            c.der().as_ref().to_vec(),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }

    #[test]
    fn tlsa_records_match_as_dane_smtp_clients_apply_them() {
        let (leaf, spki_der) = cert();
        let (other, _) = cert();
        assert_eq!(spki(&leaf).unwrap(), spki_der, "SubjectPublicKeyInfo");
        let rec = |usage, selector, matching, data: Vec<u8>| Tlsa {
            usage,
            selector,
            matching,
            data,
        };
        let sha256 = |b: &[u8]| sha2::Sha256::digest(b).to_vec();
        let sha512 = |b: &[u8]| sha2::Sha512::digest(b).to_vec();
        let chain = vec![leaf.clone(), other.clone()];
        for good in [
            rec(3, 1, 1, sha256(&spki_der)),
            rec(3, 0, 1, sha256(&leaf)),
            rec(3, 1, 2, sha512(&spki_der)),
            rec(3, 1, 0, spki_der.clone()),
            rec(2, 0, 1, sha256(&other)),
        ] {
            assert!(tlsa_matches(&good, &chain), "{good}");
        }
        for bad in [
            rec(3, 1, 1, sha256(&leaf)),
            rec(3, 0, 1, sha256(&other)),
            rec(1, 1, 1, sha256(&spki_der)),
            rec(3, 1, 9, sha256(&spki_der)),
        ] {
            assert!(!tlsa_matches(&bad, &chain), "{bad}");
        }
        let signed = |r: Tlsa| judge_dane("mx2.example.test", Some((true, vec![r])), &chain);
        assert_eq!(
            signed(rec(3, 1, 1, sha256(&spki_der))).verdict,
            Verdict::Pass
        );
        let c = signed(rec(3, 1, 1, vec![0; 32]));
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(c.fix.unwrap().contains(&hex::encode(sha256(&spki_der))));
        let unsigned = judge_dane(
            "mx2.example.test",
            Some((false, vec![rec(3, 1, 1, vec![0; 32])])),
            &chain,
        );
        assert_eq!(unsigned.verdict, Verdict::Warn);
        assert!(unsigned.detail.starts_with("TLSA ignored: zone unsigned"));
        assert_eq!(
            judge_dane("mx2.example.test", None, &chain).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn expiry_within_three_weeks_warns_and_past_fails() {
        let (leaf, _) = cert();
        let at = not_after(&leaf).unwrap();
        let seen = Ok(Seen {
            starttls: true,
            chain: vec![leaf],
            invalid: None,
        });
        let verdict = |now: i64| judge("a:25", "h", &seen, now)[1].verdict;
        assert_eq!(verdict(at - 30 * 86_400), Verdict::Pass);
        assert_eq!(verdict(at - 20 * 86_400), Verdict::Warn);
        assert_eq!(verdict(at + 1), Verdict::Fail);
    }
}
