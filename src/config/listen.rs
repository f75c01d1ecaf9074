//! Listen addresses: one or several, IPv4 and IPv6 side by side.
//!
//! Every listener key (`listen` today; the IMAP, submission and web sections later) is a
//! [`ListenAddrs`]: `listen = "0.0.0.0:25"`, `listen = ["0.0.0.0:25", "[::]:25"]`, or in
//! the environment `STANDBY_LISTEN=0.0.0.0:25,[::]:25`. [`ListenAddrs::bind`] binds each
//! address, IPv6 sockets with `IPV6_V6ONLY`, so `[::]:25` never claims the IPv4 side
//! that `0.0.0.0:25` holds (Linux's default dual-stack socket would, and the second bind
//! would fail with "address in use").

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use socket2::{Domain, Protocol, Socket, Type};

/// One or more socket addresses to listen on; never empty, no address twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs(Vec<SocketAddr>);

/// Binding one of the addresses failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl ListenAddrs {
    /// The addresses, in the configured order.
    ///
    /// # Errors
    /// When `addrs` is empty or names an address twice.
    pub fn new(addrs: Vec<SocketAddr>) -> Result<Self, String> {
        if addrs.is_empty() {
            return Err("no address to listen on".into());
        }
        for (i, a) in addrs.iter().enumerate() {
            if addrs[..i].contains(a) {
                return Err(format!("{a} is listed twice"));
            }
        }
        Ok(ListenAddrs(addrs))
    }

    /// One address.
    pub fn one(addr: SocketAddr) -> Self {
        ListenAddrs(vec![addr])
    }

    pub fn iter(&self) -> impl Iterator<Item = &SocketAddr> {
        self.0.iter()
    }

    /// The first address (the one a client would try first).
    pub fn first(&self) -> SocketAddr {
        self.0[0]
    }

    /// Bind every address (non-blocking sockets, ready for `tokio::net::TcpListener::
    /// from_std`): `SO_REUSEADDR` as every server sets it, `IPV6_V6ONLY` on IPv6 sockets.
    ///
    /// # Errors
    /// The first address that cannot be bound, with the reason (in use, no permission
    /// for a port below 1024, no such local address).
    pub fn bind(&self) -> Result<Vec<TcpListener>, BindError> {
        self.0.iter().map(|&addr| bind_one(addr)).collect()
    }
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let err = |source| BindError { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

impl FromStr for ListenAddrs {
    type Err = String;

    /// `IP:port`, several separated by commas (`127.0.0.1:25,[::1]:25`).
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(parse_addr)
            .collect::<Result<Vec<_>, _>>()
            .and_then(ListenAddrs::new)
    }
}

fn parse_addr(a: &str) -> Result<SocketAddr, String> {
    a.parse()
        .map_err(|_| format!("`{a}` is not an address to listen on (like 0.0.0.0:25 or [::]:25)"))
}

impl fmt::Display for ListenAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for ListenAddrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            One(String),
            List(Vec<String>),
        }
        let parsed = match Either::deserialize(d)? {
            Either::One(s) => s.parse(),
            Either::List(v) => v
                .iter()
                .map(|a| parse_addr(a.trim()))
                .collect::<Result<Vec<_>, _>>()
                .and_then(ListenAddrs::new),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_or_a_list_or_comma_separated_text() {
        #[derive(Deserialize)]
        struct T {
            listen: ListenAddrs,
        }
        let one: T = toml::from_str("listen = \"0.0.0.0:25\"").unwrap();
        assert_eq!(one.listen.to_string(), "0.0.0.0:25");
        let two: T = toml::from_str("listen = [\"0.0.0.0:25\", \"[::]:25\"]").unwrap();
        assert_eq!(two.listen.to_string(), "0.0.0.0:25, [::]:25");
        let text: ListenAddrs = "127.0.0.1:25, [::1]:25".parse().unwrap();
        assert_eq!(text.iter().count(), 2);
        assert_eq!(text.first(), "127.0.0.1:25".parse().unwrap());
        for bad in [
            "listen = []",
            "listen = \"\"",
            "listen = \"localhost:25\"",
            "listen = [\"0.0.0.0:25\", \"0.0.0.0:25\"]",
            "listen = \"0.0.0.0\"",
        ] {
            let e = toml::from_str::<T>(bad).err().unwrap().to_string();
            assert!(e.contains("listen") || e.contains("line 1"), "{bad}: {e}");
        }
    }

    #[test]
    fn ipv4_and_ipv6_wildcards_share_a_port() {
        // Both wildcards on one port: only possible with IPV6_V6ONLY on the IPv6 socket
        // (Linux's default dual-stack socket also takes the IPv4 side).
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addrs: ListenAddrs = format!("0.0.0.0:{port},[::]:{port}").parse().unwrap();
        let bound = addrs.bind().expect("both wildcards bind");
        assert_eq!(bound.len(), 2);
        assert_eq!(bound[1].local_addr().unwrap().port(), port);
        // A second bind of the same address is an error naming it.
        let again = ListenAddrs::one(bound[0].local_addr().unwrap()).bind();
        let e = again.err().unwrap().to_string();
        assert!(e.contains(&format!("0.0.0.0:{port}")), "{e}");
    }
}
