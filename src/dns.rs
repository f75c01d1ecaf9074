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
