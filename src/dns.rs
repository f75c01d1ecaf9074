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
