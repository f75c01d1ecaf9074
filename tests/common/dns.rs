//! A real DNS server for the tests: dnsmasq on a free loopback port, answering only the
//! MX and TXT records it is given (no upstream, no /etc/hosts), killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require, wait_for};

pub struct Dns {
    child: Child,
    pub port: u16,
}

impl Dns {
    /// Serve `mx` = (domain, preference, host) records.
    pub fn start(mx: &[(&str, u16, &str)]) -> Dns {
        Self::start_with(mx, &[])
    }

    /// Serve MX records and `txt` = (name, text) records (SPF policies).
    pub fn start_with(mx: &[(&str, u16, &str)], txt: &[(&str, &str)]) -> Dns {
        Self::start_full(mx, txt, &[])
    }

    /// Serve MX, TXT and `hosts` = (name, IPv4 address) records.
    pub fn start_full(
        mx: &[(&str, u16, &str)],
        txt: &[(&str, &str)],
        hosts: &[(&str, &str)],
    ) -> Dns {
        Self::start_forwarding(mx, txt, hosts, &[])
    }

    /// As [`Dns::start_full`], and `forward` = (domain, `IP:port`): queries for names in
    /// the domain go to that server (a [`DeadDns`]: a zone whose servers do not answer).
    pub fn start_forwarding(
        mx: &[(&str, u16, &str)],
        txt: &[(&str, &str)],
        hosts: &[(&str, &str)],
        forward: &[(&str, String)],
    ) -> Dns {
        Self::start_records(mx, txt, hosts, forward, &[])
    }

    /// As [`Dns::start_forwarding`], and `rr` = (name, type number, hex data) records of
    /// any other type (TLSA is 52).
    pub fn start_records(
        mx: &[(&str, u16, &str)],
        txt: &[(&str, &str)],
        hosts: &[(&str, &str)],
        forward: &[(&str, String)],
        rr: &[(&str, u16, String)],
    ) -> Dns {
        require("dnsmasq", "dnsmasq-base");
        let port = free_port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
        ])
        .arg(format!("--port={port}"));
        for (domain, pref, host) in mx {
            cmd.arg(format!("--mx-host={domain},{host},{pref}"));
        }
        for (name, text) in txt {
            // As one argument (no shell), dnsmasq would keep quotes as part of the text.
            assert!(
                !text.contains(','),
                "dnsmasq splits TXT text at commas: {text}"
            );
            // One DNS string holds 255 bytes; dnsmasq makes one per comma-separated part
            // (a 2048-bit DKIM key needs two), and readers join them.
            let parts: Vec<String> = text
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            cmd.arg(format!("--txt-record={name},{}", parts.join(",")));
        }
        for (name, ip) in hosts {
            cmd.arg(format!("--host-record={name},{ip}"));
        }
        for (name, rtype, hex) in rr {
            cmd.arg(format!("--dns-rr={name},{rtype},{hex}"));
        }
        for (domain, server) in forward {
            let server = server.replace(':', "#");
            cmd.arg(format!("--server=/{domain}/{server}"));
        }
        // Authoritative for the names it was given: a type it has no record of gets an
        // empty answer (NODATA), as from a real zone, instead of REFUSED.
        let names: std::collections::BTreeSet<&str> = mx
            .iter()
            .map(|(d, _, _)| *d)
            .chain(txt.iter().map(|(n, _)| *n))
            .collect();
        for name in names {
            cmd.arg(format!("--local=/{name}/"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        wait_for("dnsmasq", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Dns { child, port }
    }

    /// The `--nameserver` argument for `standby doctor`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A resolver that never answers: UDP queries on 127.0.0.1 are read and dropped, TCP
/// connections on the same port are accepted and left hanging (an unreachable or
/// overloaded resolver, as in a disaster). Runs until the test process ends.
pub struct DeadDns {
    pub port: u16,
}

impl DeadDns {
    pub fn start() -> DeadDns {
        for _ in 0..50 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
                continue; // the TCP port is taken: try another
            };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while udp.recv(&mut buf).is_ok() {}
            });
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for conn in tcp.incoming().flatten() {
                    held.push(conn);
                }
            });
            return DeadDns { port };
        }
        panic!("no port free for both UDP and TCP on 127.0.0.1");
    }

    /// `IP:port`, for `[dsn] nameserver`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
