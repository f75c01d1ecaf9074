//! `standby primary-config --postfix|--rspamd|--exchange|--mailcow`: print what the
//! primary must be told so that mail the standby hands back passes its checks (see
//! [`crate::primary_config`]), filled in with this standby's name and addresses.
//!
//! The addresses are what the primary sees the standby connect from: the ones given
//! with `--address`, else the source address the kernel picks toward the primary and
//! the standby's name resolved (NAT can change the first, a name may resolve to more
//! than the standby; the text lists them for the administrator to check).

use std::net::IpAddr;

use super::CliError;
use crate::config::{BackendKind, Config};
use crate::primary_config::{Standby, Target, render};

/// Print the settings for `target`.
pub async fn print(config: &Config, target: Target, given: Vec<IpAddr>) -> Result<(), CliError> {
    let aws = config.backend == BackendKind::Aws;
    // The drain function's addresses are not the machine's that runs this: on AWS only
    // what is given (serve nodes with fixed addresses) is exempted.
    let addresses = if given.is_empty() && !aws {
        found(config).await
    } else {
        given
    };
    if addresses.is_empty() && !aws && config.primary.auth_user.is_none() {
        return Err(CliError::Usage(format!(
            "no address found for this standby (its name {} does not resolve, and no route \
             to the primary {}): give --address IP, once for each address the primary sees \
             it connect from",
            config.mx_host.as_deref().unwrap_or(&config.hostname),
            config.primary_addr()
        )));
    }
    let standby = Standby {
        hostname: config.hostname.clone(),
        addresses,
        auth_user: config.primary.auth_user.clone(),
        aws,
        arc_domain: config.arc.domain.clone(),
    };
    use std::io::Write;
    std::io::stdout().write_all(render(target, &standby).as_bytes())?;
    Ok(())
}

/// The source address toward the primary, then the standby's names resolved; each once.
/// Loopback only when the primary is on this machine (Debian maps the host name to
/// 127.0.1.1); never link-local.
async fn found(config: &Config) -> Vec<IpAddr> {
    let primary = tokio::net::lookup_host(config.primary_addr())
        .await
        .ok()
        .and_then(|mut a| a.next());
    let local_primary = primary.is_some_and(|p| p.ip().is_loopback());
    let mut out: Vec<IpAddr> = Vec::new();
    let mut add = |ip: IpAddr| {
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        let usable = !ip.is_unspecified() && !link_local && (local_primary || !ip.is_loopback());
        if usable && !out.contains(&ip) {
            out.push(ip);
        }
    };
    if let Some(primary) = primary {
        let any: std::net::SocketAddr = if primary.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // A UDP "connection" sends nothing: the kernel only picks the route and source.
        if let Ok(sock) = tokio::net::UdpSocket::bind(any).await
            && sock.connect(primary).await.is_ok()
            && let Ok(local) = sock.local_addr()
        {
            add(local.ip());
        }
    }
    let mut names = vec![config.hostname.clone()];
    names.extend(config.mx_host.clone());
    for name in names {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 25)).await {
            for a in addrs {
                add(a.ip());
            }
        }
    }
    out
}
