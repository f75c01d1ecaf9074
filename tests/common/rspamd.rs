//! A real rspamd (Debian's) for the tests: the packaged configuration with its workers on
//! free loopback ports, its DNS pointed at a port where nothing answers (no lookups leave
//! the machine), the test patterns on (GTUBE's `YJS*` variant: "add header"), no Redis.
//! Stopped (SIGTERM to the main process, which ends its workers) on drop or by `stop`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require, wait_for};

pub struct Rspamd {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Rspamd {
    pub fn start() -> Rspamd {
        require("rspamd", "rspamd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("local.d")).unwrap();
        std::fs::create_dir_all(d.join("override.d")).unwrap();
        let port = free_port();
        for (worker, p) in [
            ("normal", port),
            ("controller", free_port()),
            ("proxy", free_port()),
        ] {
            std::fs::write(
                d.join(format!("override.d/worker-{worker}.inc")),
                format!("bind_socket = \"127.0.0.1:{p}\";\ncount = 1;\n"),
            )
            .unwrap();
        }
        std::fs::write(
            d.join("local.d/options.inc"),
            format!(
                "dns {{ nameserver = [\"127.0.0.1:{}\"]; timeout = 1s; retransmits = 1; }}\n\
                 enable_test_patterns = true;\n",
                free_port()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("local.d/logging.inc"),
            format!(
                "type = \"file\"; filename = \"{}\"; level = \"warning\";\n",
                d.join("rspamd.log").display()
            ),
        )
        .unwrap();
        let var = |k: &str| format!("--var={k}={}", d.display());
        let child = Command::new("rspamd")
            .args(["-f", "-i", "-c", "/etc/rspamd/rspamd.conf"])
            .args([
                var("LOCAL_CONFDIR"),
                var("DBDIR"),
                var("RUNDIR"),
                var("LOGDIR"),
            ])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rspamd");
        wait_for("rspamd to answer /ping", Duration::from_secs(90), || {
            ping(port)
        });
        Rspamd {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// `[filter] rspamd_url` for it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop it and wait until its worker no longer listens.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let port = self.port;
        wait_for("rspamd's worker to stop", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
    }
}

/// Whether rspamd's worker at `port` answers `GET /ping` with `pong`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    if tcp
        .write_all(b"GET /ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer.contains("pong")
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
