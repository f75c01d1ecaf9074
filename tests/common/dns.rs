//! A real DNS server for the tests: dnsmasq on a free loopback port, answering only the
//! MX records it is given (no upstream, no /etc/hosts), killed on drop.

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
