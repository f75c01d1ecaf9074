//! DNS resolvers, built one way for every lookup the standby makes (MX records for
//! `standby doctor`, SPF at receipt): the system's resolvers, or one `IP:port` (a test's
//! dnsmasq, or a local validating resolver an administrator points the standby at).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};

/// A resolver for `nameserver`, or the system's. `cache`: keep answers for their TTL
/// (the listener's SPF checks); off for diagnostics, which must see DNS as it is now.
///
/// # Errors
/// The system configuration (`/etc/resolv.conf`) cannot be read, as text for the caller's
/// message.
pub fn resolver(nameserver: Option<SocketAddr>, cache: bool) -> Result<TokioResolver, String> {
    let mut builder = match nameserver {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system resolver configuration: {e}"))?,
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    if !cache {
        opts.cache_size = 0;
    }
    builder.build().map_err(|e| e.to_string())
}

/// The MX records of `fqdn` (a name ending in a dot), as (preference, exchange).
///
/// # Errors
/// The resolver's error, NODATA and NXDOMAIN included (`is_no_records_found`,
/// `is_nx_domain`): what they mean is the caller's to say.
pub async fn mx(
    resolver: &TokioResolver,
    fqdn: &str,
) -> Result<Vec<(u16, String)>, hickory_resolver::net::NetError> {
    let lookup = resolver.mx_lookup(fqdn).await?;
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::MX(mx) => {
                Some((mx.preference, mx.exchange.to_ascii()))
            }
            _ => None,
        })
        .collect())
}

/// The TXT records at `fqdn`, each one's strings joined; none when there are none.
///
/// # Errors
/// The resolver's error, other than NODATA and NXDOMAIN.
pub async fn txt(
    resolver: &TokioResolver,
    fqdn: &str,
) -> Result<Vec<String>, hickory_resolver::net::NetError> {
    match resolver.txt_lookup(fqdn).await {
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
            .collect()),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A TLSA answer: whether the resolver vouched for it (the AD bit) and the records as
/// (usage, selector, matching type, data).
#[derive(Debug, Clone, Default)]
pub struct TlsaAnswer {
    pub authentic: bool,
    /// The answer carries RRSIG records (asked for with the DNSSEC-OK bit): the zone is
    /// signed, whether or not the resolver validated it.
    pub signatures: bool,
    pub records: Vec<(u8, u8, u8, Vec<u8>)>,
}

/// The TLSA records at `fqdn`, asked of `nameserver` (else the first system resolver)
/// with the DNSSEC-OK bit, so that a validating resolver says with the AD bit whether
/// the answer is secure (RFC 6840 §5.7: it sets AD only when the query asked for DNSSEC).
/// The standby trusts that resolver's AD bit, as Postfix does with
/// `smtp_dns_support_level = dnssec`: point it at a local validating resolver.
///
/// # Errors
/// The query failed (no answer, a server failure), as text. NXDOMAIN and NODATA are
/// no records.
pub async fn tlsa(nameserver: Option<SocketAddr>, fqdn: &str) -> Result<TlsaAnswer, String> {
    use hickory_resolver::net::DnsHandle as _;
    use hickory_resolver::net::client::Client;
    use hickory_resolver::net::udp::UdpClientStream;
    use hickory_resolver::net::xfer::FirstAnswer as _;
    use hickory_resolver::proto::op::{DnsRequestOptions, Query, ResponseCode};
    use hickory_resolver::proto::rr::{Name, RData, RecordType};

    let server = match nameserver {
        Some(a) => a,
        None => {
            let (conf, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("reading the system resolver configuration: {e}"))?;
            let ns = conf
                .name_servers()
                .first()
                .ok_or("no nameserver in /etc/resolv.conf")?;
            SocketAddr::new(ns.ip, 53)
        }
    };
    let provider = TokioRuntimeProvider::default();
    let stream = UdpClientStream::builder(server, provider.clone())
        .with_timeout(Some(Duration::from_secs(3)))
        .build();
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    let task = tokio::spawn(background);
    let name = Name::from_ascii(fqdn).map_err(|e| e.to_string())?;
    let mut options = DnsRequestOptions::default();
    options.use_edns = true;
    options.edns_set_dnssec_ok = true;
    options.recursion_desired = true;
    let result = client
        .lookup(Query::query(name, RecordType::TLSA), options)
        .first_answer()
        .await;
    task.abort();
    let response = result.map_err(|e| e.to_string())?;
    if response.metadata.truncation {
        return Err("the answer was truncated (UDP); ask a resolver that answers in full".into());
    }
    match response.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(TlsaAnswer::default()),
        other => return Err(format!("the resolver answered {other}")),
    }
    let records = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TLSA(t) => Some((
                u8::from(t.cert_usage),
                u8::from(t.selector),
                u8::from(t.matching),
                t.cert_data.clone(),
            )),
            _ => None,
        })
        .collect();
    let signatures = response
        .answers
        .iter()
        .any(|r| r.record_type() == RecordType::RRSIG);
    Ok(TlsaAnswer {
        authentic: response.metadata.authentic_data,
        signatures,
        records,
    })
}
