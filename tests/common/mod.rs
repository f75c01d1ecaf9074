//! Real peers for the integration tests: a Postfix primary (own config dir, loopback port,
//! Maildir), the `standby` binary itself, swaks as the sending client, and a scriptable
//! fake primary for replies Postfix will not give on demand (421 at the banner).
//!
//! A missing tool is a test failure that says how to install it, never a skip.

#![allow(dead_code)]

pub mod aws;
pub mod browser;
pub mod dns;
pub mod iam;
pub mod lambda;
pub mod rspamd;
pub mod template;
pub mod web;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const STANDBY: &str = env!("CARGO_BIN_EXE_standby");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fail loudly when a tool the test needs is missing.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run `apt-get install -y {package}` (scripts/test does this)"
    );
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// Taken below Linux's ephemeral range (32768-60999): the tests open thousands of client
/// connections (the SDK to moto, the drain to Postfix), and a port handed out from that
/// range could be taken by one of them before the server that should listen on it starts.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + seed.wrapping_add(n.wrapping_mul(104_729)) % SPAN;
        let port = u16::try_from(port).expect("below 32000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}

/// Wait until `f` returns true, or panic with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_listening(port: u16, timeout: Duration) {
    wait_for(&format!("a listener on port {port}"), timeout, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A raw SMTP connection with a 10 s read timeout.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read until `n` replies (lines whose 4th byte is a space) have arrived.
pub fn replies(s: &mut TcpStream, n: usize) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        let done = text
            .lines()
            .filter(|l| l.len() >= 4 && &l[3..4] == " ")
            .count();
        if done >= n {
            return text;
        }
        let k = s.read(&mut buf).unwrap_or(0);
        if k == 0 {
            return text;
        }
        out.extend_from_slice(&buf[..k]);
    }
}

/// A private Postfix instance acting as the organisation's primary server.
pub struct Postfix {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The loopback address it listens on (127.0.0.1 unless made with [`Postfix::at`]).
    pub ip: String,
}

fn script(args: &[&str]) -> Output {
    let out = Command::new(repo().join("scripts/postfix-instance"))
        .args(args)
        .output()
        .expect("run scripts/postfix-instance");
    assert!(
        out.status.success(),
        "scripts/postfix-instance {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Postfix {
    /// Configure (not start) a primary for example.test on a free loopback port.
    pub fn primary() -> Postfix {
        Self::primary_with(&[])
    }

    /// A primary with extra `scripts/postfix-instance init` options.
    pub fn primary_with(extra: &[&str]) -> Postfix {
        Self::at("127.0.0.1", free_port(), extra)
    }

    /// A primary listening on `ip:port` (an MX host on port 25 at its own loopback
    /// address, say), with extra `init` options.
    pub fn at(ip: &str, port: u16, extra: &[&str]) -> Postfix {
        require("postfix", "postfix");
        let dir = tempfile::Builder::new()
            .prefix("standby-pf-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let listen = format!("{ip}:{port}");
        script(
            &[
                "init",
                dir.path().to_str().unwrap(),
                "--listen",
                &listen,
                "--role",
                "primary",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        Postfix {
            dir,
            port,
            ip: ip.to_string(),
        }
    }

    /// Answer chosen recipients with fixed replies, e.g. `("temp@example.test", "450 4.2.0 busy")`.
    pub fn rcpt_replies(&self, rules: &[(&str, &str)]) {
        let mut f = std::fs::File::create(self.dir.path().join("rcpt_access")).unwrap();
        for (rcpt, action) in rules {
            writeln!(f, "{rcpt} {action}").unwrap();
        }
    }

    /// Set `main.cf` parameters (`name = value`) before `start`.
    pub fn postconf(&self, settings: &[&str]) {
        let out = Command::new("postconf")
            .arg("-c")
            .arg(self.dir.path())
            .arg("-e")
            .args(settings)
            .output()
            .expect("run postconf");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "postconf {settings:?}: {err}");
    }

    pub fn start(&self) {
        script(&["start", self.dir.path().to_str().unwrap()]);
        wait_for(
            &format!("postfix on {}:{}", self.ip, self.port),
            Duration::from_secs(20),
            || TcpStream::connect((self.ip.as_str(), self.port)).is_ok(),
        );
    }

    pub fn stop(&self) {
        script(&["stop", self.dir.path().to_str().unwrap()]);
        wait_for("postfix to stop listening", Duration::from_secs(20), || {
            TcpStream::connect((self.ip.as_str(), self.port)).is_err()
        });
    }

    /// Messages delivered to the Maildir so far.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let new = self.dir.path().join("mail/maildir/new");
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(new) {
            for e in entries.flatten() {
                out.push(std::fs::read(e.path()).unwrap());
            }
        }
        out
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Wait until every message this primary accepted has left its queue: no file in any
    /// of its queue directories, twice in a row with no delivery in between, and at least
    /// one message delivered (a `removed` line). The positive signal that nothing more
    /// will reach the Maildir, before counting what did. Files, not log lines: a client
    /// killed mid-DATA leaves a `message-id=` line from cleanup for a file that is
    /// discarded without a `removed` line. Twice: qmgr moves files from `deferred/` back
    /// to `active/`, and one scan could miss a file on the move.
    pub fn wait_queue_empty(&self, timeout: Duration) {
        let queue = self.dir.path().join("queue");
        assert!(
            queue.join("incoming").is_dir(),
            "no queue directory at {}",
            queue.display()
        );
        let scan = || {
            let removed = self
                .maillog()
                .lines()
                .filter(|l| l.ends_with(": removed"))
                .count();
            let queued = ["maildrop", "incoming", "active", "deferred", "hold"]
                .iter()
                .map(|d| files_under(&queue.join(d)))
                .sum::<usize>();
            (removed, queued)
        };
        wait_for("the primary's queue to empty", timeout, || {
            let (removed, queued) = scan();
            removed > 0 && queued == 0 && scan() == (removed, 0)
        });
    }
}

/// Regular files under `dir`, at any depth (Postfix hashes some queues into
/// subdirectories); 0 for a directory that does not exist.
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/postfix-instance"))
            .args(["destroy", self.dir.path().to_str().unwrap()])
            .output();
    }
}

/// A `standby serve` process with its own data dir and config.
pub struct Standby {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// A command the daemon runs under (`strace ...`), empty for none.
    pub wrapper: Vec<String>,
}

impl Standby {
    /// Write a config for `primary_port` with `extra` TOML lines (top-level keys first,
    /// then sections) and start the listener.
    pub fn start(primary_port: u16, extra: &str) -> Standby {
        Self::start_with_env(primary_port, extra, &[])
    }

    /// Like [`Standby::start`], with `STANDBY_*` overrides in the process environment;
    /// `{port}` in a value stands for the listener's port (`[::1]:{port}`).
    pub fn start_with_env(primary_port: u16, extra: &str, env: &[(&str, &str)]) -> Standby {
        let mut s = Self::configure(primary_port, extra, env);
        s.spawn();
        s
    }

    /// Like [`Standby::start_with_env`], without starting the process: set `wrapper` or
    /// prepare the data directory first, then [`Standby::spawn`].
    pub fn configure(primary_port: u16, extra: &str, env: &[(&str, &str)]) -> Standby {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("standby.toml");
        let (top, sections) = match extra.find('[') {
            Some(i) => extra.split_at(i),
            None => (extra, ""),
        };
        let text = format!(
            "hostname = \"standby.example.test\"\n\
             listen = \"127.0.0.1:{port}\"\n\
             data_dir = \"{data}\"\n\
             domains = [\"example.test\"]\n\
             command_timeout_secs = 30\n\
             {top}\n\
             [primary]\n\
             address = \"127.0.0.1:{primary_port}\"\n\
             tls = \"opportunistic\"\n\
             timeout_secs = 10\n\
             [health]\n\
             interval_secs = 1\n\
             up_after = 2\n\
             down_after = 2\n\
             {sections}\n",
            data = dir.path().join("data").display(),
        );
        std::fs::write(&config, text).unwrap();
        // SPF at receipt needs DNS: tests that check it start their own dnsmasq and set
        // STANDBY_DSN_SPF and STANDBY_DSN_NAMESERVER; the rest do not depend on the
        // machine's resolver.
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.replace("{port}", &port.to_string())))
            .collect();
        if !env.iter().any(|(k, _)| k == "STANDBY_DSN_SPF") {
            env.push(("STANDBY_DSN_SPF".into(), "false".into()));
        }
        Standby {
            dir,
            port,
            config,
            env,
            child: None,
            wrapper: Vec::new(),
        }
    }

    /// Replace `{dir}` in the config with the test's directory (for files beside it).
    pub fn fill_dir(&self) {
        let dir = self.dir.path().display().to_string();
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, text.replace("{dir}", &dir)).unwrap();
    }

    /// (Re)start the process on the same config and data.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(STANDBY);
                c
            }
            None => Command::new(STANDBY),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("STANDBY_LOG", "standby=debug,info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start standby serve");
        self.child = Some(child);
        wait_listening(self.port, Duration::from_secs(20));
    }

    /// Set (or replace) an environment variable for the next [`Standby::spawn`].
    pub fn env_set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The running process's pid (the wrapper's, when there is one).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Wait for the process (after something else ended it); its exit status.
    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().map(|mut c| c.wait().unwrap())
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit (at most 30 s); returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("standby is running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "standby ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Peak resident memory of the running process so far (`VmHWM`), in bytes.
    #[allow(dead_code)]
    pub fn peak_rss(&self) -> u64 {
        let c = self.child.as_ref().expect("standby is running");
        let status = std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kb * 1024
    }

    /// Send `signal` (`HUP`, `TERM`, ...) to the running process.
    pub fn signal(&self, signal: &str) {
        let c = self.child.as_ref().expect("standby is running");
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{signal} failed");
    }

    /// Run `standby ARGS --config <ours>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(STANDBY)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("STANDBY_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run standby")
    }

    /// Start `standby ARGS --config <ours>` in the background, its stderr (the log, at
    /// `log` level) in `stderr_to` and its stdout piped.
    pub fn cli_spawn(&self, args: &[&str], log: &str, stderr_to: &Path) -> Child {
        Command::new(STANDBY)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("STANDBY_LOG", log)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr_to).unwrap())
            .spawn()
            .expect("start standby")
    }

    /// Run a CLI command that must succeed and print JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "standby {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "standby {args:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Run `standby drain ARGS --json`, expect exit `code`, return the JSON report.
    pub fn drain_report(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["drain", "--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert_eq!(
            out.status.code(),
            Some(code),
            "standby {all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "drain: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn list(&self, status: &str) -> Vec<Value> {
        match self.json(&["list", "--status", status, "--json"]) {
            Value::Array(v) => v,
            other => panic!("list is not an array: {other}"),
        }
    }

    pub fn counts(&self) -> Value {
        self.json(&["status", "--json"])["counts"].clone()
    }

    /// Send a test message from a@example.org with swaks; it must be accepted.
    pub fn send(&self, to: &str, extra: &[&str]) -> String {
        let mut args = vec!["--from", "a@example.org", "--to", to];
        args.extend_from_slice(extra);
        let (ok, t) = swaks(self.port, &args);
        assert!(ok, "sending to {to} failed:\n{t}");
        t
    }

    /// `data/messages/`, where a message is once published: call
    /// [`Standby::wait_published`] first to find every accepted message there.
    pub fn messages_dir(&self) -> PathBuf {
        self.dir.path().join("data/messages")
    }

    /// Wait until every accepted message has left `data/tmp/` for `data/messages/` (the
    /// publisher moves them once their index rows are flushed, see `standby::publish`).
    pub fn wait_published(&self) {
        let tmp = self.dir.path().join("data/tmp");
        wait_for(
            "accepted messages to be published",
            Duration::from_secs(10),
            || count_files(&tmp) == 0,
        );
    }

    /// Files in `data/messages/` and `data/tmp/`: everything stored, published or not.
    pub fn stored_files(&self) -> usize {
        count_files(&self.messages_dir()) + count_files(&self.dir.path().join("data/tmp"))
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Send with swaks; returns (success, transcript).
pub fn swaks(port: u16, args: &[&str]) -> (bool, String) {
    swaks_at(&format!("127.0.0.1:{port}"), args)
}

/// The id in a transcript's `250 ... queued as <id>`.
pub fn queued_id(transcript: &str) -> String {
    transcript
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {transcript}"))
        .to_string()
}

/// Send with swaks to `server` (`127.0.0.1:2525`, `[::1]:2525`).
pub fn swaks_at(server: &str, args: &[&str]) -> (bool, String) {
    require("swaks", "swaks");
    let out = Command::new("swaks")
        .args(["--server", server, "--timeout", "30"])
        .args(args)
        .output()
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Read a fixture with LF line ends and put `token` in place of `TOKEN`.
pub fn fixture(name: &str, token: &str) -> String {
    let text = std::fs::read_to_string(repo().join("tests/fixtures").join(name)).unwrap();
    text.replace("TOKEN", token)
}

/// Split a message into (header block, body) at the first empty line; CRLF folded to LF.
pub fn split_message(raw: &[u8]) -> (String, Vec<u8>) {
    let mut lf = Vec::with_capacity(raw.len());
    for (i, &b) in raw.iter().enumerate() {
        if !(b == b'\r' && raw.get(i + 1) == Some(&b'\n')) {
            lf.push(b);
        }
    }
    let pos = lf
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("message has a header/body separator");
    (
        String::from_utf8_lossy(&lf[..pos + 1]).into_owned(),
        lf[pos + 2..].to_vec(),
    )
}

/// How a [`FakePrimary`] treats one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeReply {
    /// 220 banner, then 250 to EHLO, 221 to QUIT.
    Healthy,
    /// `421` at the banner, then close.
    Busy421,
    /// Banner, EHLO, MAIL, RCPT and DATA's 354 as usual, then the connection is closed
    /// after the first lines of the message, with no reply to the final dot.
    DropMidData,
    /// Offers STARTTLS, answers 220 to it, then sends bytes that are not TLS.
    BadTls,
    /// Sends its banner one byte per second (a primary in distress, or a tarpit).
    Trickle,
    /// A primary without PIPELINING that answers MAIL, RCPT and the final dot with these
    /// replies (CRLF included); DATA bodies are recorded in `FakePrimary::log`.
    Replies {
        mail: &'static str,
        rcpt: &'static str,
        data_end: &'static str,
    },
    /// A submission server without PIPELINING: AUTH (PLAIN or LOGIN, as `FakeAuth` says)
    /// is required before MAIL; messages are accepted and recorded in `FakePrimary::log`.
    Submission(FakeAuth),
}

/// Which AUTH mechanism a [`FakeReply::Submission`] offers; it accepts `standby`/`s3cret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeAuth {
    Plain,
    Login,
}

pub const FAKE_USER: &str = "standby";
pub const FAKE_PASS: &str = "s3cret";

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// One submission session of the fake; every event is appended to `log`.
fn submission(stream: TcpStream, auth: FakeAuth, log: &Mutex<Vec<String>>) {
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut say = |s: &str| {
        let _ = w.write_all(s.as_bytes());
    };
    say("220 fake.test ESMTP\r\n");
    let mut authed = false;
    let mut line = String::new();
    let mut next = |r: &mut BufReader<TcpStream>| {
        line.clear();
        r.read_line(&mut line).unwrap_or(0);
        line.trim_end().to_string()
    };
    loop {
        let cmd = next(&mut r);
        let upper = cmd.to_ascii_uppercase();
        if cmd.is_empty() || upper.starts_with("QUIT") {
            say("221 2.0.0 bye\r\n");
            return;
        } else if upper.starts_with("EHLO") {
            let mech = if auth == FakeAuth::Plain {
                "PLAIN"
            } else {
                "LOGIN"
            };
            say(&format!(
                "250-fake.test\r\n250-8BITMIME\r\n250 AUTH {mech}\r\n"
            ));
        } else if upper.starts_with("AUTH PLAIN ") && auth == FakeAuth::Plain {
            authed = cmd[11..] == b64(&format!("\0{FAKE_USER}\0{FAKE_PASS}"));
            log.lock().unwrap().push(format!("AUTH PLAIN {authed}"));
            say(if authed {
                "235 2.7.0 ok\r\n"
            } else {
                "535 5.7.8 bad credentials\r\n"
            });
        } else if upper == "AUTH LOGIN" && auth == FakeAuth::Login {
            say("334 VXNlcm5hbWU6\r\n");
            let user = next(&mut r);
            say("334 UGFzc3dvcmQ6\r\n");
            let pass = next(&mut r);
            authed = user == b64(FAKE_USER) && pass == b64(FAKE_PASS);
            log.lock().unwrap().push(format!("AUTH LOGIN {authed}"));
            say(if authed {
                "235 2.7.0 ok\r\n"
            } else {
                "535 5.7.8 bad credentials\r\n"
            });
        } else if upper.starts_with("MAIL") && !authed {
            say("530 5.7.0 authentication required\r\n");
        } else if upper.starts_with("MAIL") || upper.starts_with("RCPT") || upper == "RSET" {
            log.lock().unwrap().push(cmd.clone());
            say("250 2.0.0 ok\r\n");
        } else if upper == "DATA" {
            say("354 go ahead\r\n");
            let mut body = String::new();
            loop {
                let l = next(&mut r);
                if l == "." {
                    break;
                }
                body.push_str(&l);
                body.push('\n');
            }
            log.lock().unwrap().push(format!("DATA {body}"));
            say("250 2.0.0 queued\r\n");
        } else {
            say("502 5.5.1 not in this fake\r\n");
        }
    }
}

/// What a scripted fake says to one command line.
enum Say {
    /// This reply, then the next command.
    Reply(&'static [u8]),
    /// This reply, then close the connection.
    Last(&'static [u8]),
}

/// Send the banner, then answer each command line (upper-cased, trimmed) with `f`
/// until it says [`Say::Last`] or the client goes away.
fn line_loop(stream: TcpStream, mut f: impl FnMut(&str, &mut BufReader<TcpStream>) -> Say) {
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let _ = w.write_all(b"220 fake.test ESMTP\r\n");
    let mut line = String::new();
    while r.read_line(&mut line).unwrap_or(0) > 0 {
        let cmd = line.trim_end().to_ascii_uppercase();
        line.clear();
        match f(&cmd, &mut r) {
            Say::Reply(b) => {
                let _ = w.write_all(b);
            }
            Say::Last(b) => {
                let _ = w.write_all(b);
                std::thread::sleep(Duration::from_millis(200));
                return;
            }
        }
    }
}

const NOT_HERE: Say = Say::Reply(b"502 5.5.1 not in this fake\r\n");

/// See [`FakeReply::Healthy`].
fn healthy(cmd: &str, _: &mut BufReader<TcpStream>) -> Say {
    match cmd {
        c if c.starts_with("EHLO") => Say::Reply(b"250-fake.test\r\n250 PIPELINING\r\n"),
        c if c.starts_with("QUIT") => Say::Last(b"221 2.0.0 bye\r\n"),
        _ => NOT_HERE,
    }
}

/// See [`FakeReply::BadTls`].
fn bad_tls(cmd: &str, _: &mut BufReader<TcpStream>) -> Say {
    match cmd {
        c if c.starts_with("EHLO") => Say::Reply(b"250-fake.test\r\n250 STARTTLS\r\n"),
        "STARTTLS" => Say::Last(b"220 2.0.0 go ahead\r\nthis is not a TLS record at all\r\n"),
        _ => NOT_HERE,
    }
}

/// See [`FakeReply::DropMidData`].
fn drop_mid_data(cmd: &str, r: &mut BufReader<TcpStream>, log: &Mutex<Vec<String>>) -> Say {
    match cmd {
        c if c.starts_with("EHLO") => Say::Reply(b"250-fake.test\r\n250 8BITMIME\r\n"),
        c if c.starts_with("MAIL") || c.starts_with("RCPT") || c == "RSET" => {
            Say::Reply(b"250 2.0.0 ok\r\n")
        }
        "DATA" => {
            let _ = r.get_mut().write_all(b"354 go ahead\r\n");
            let _ = r.read_line(&mut String::new());
            log.lock().unwrap().push("dropped mid-DATA".into());
            let _ = r.get_ref().shutdown(std::net::Shutdown::Both);
            Say::Last(b"")
        }
        c if c.starts_with("QUIT") => Say::Last(b"221 2.0.0 bye\r\n"),
        _ => NOT_HERE,
    }
}

/// See [`FakeReply::Replies`].
fn replies_as(
    cmd: &str,
    r: &mut BufReader<TcpStream>,
    (mail, rcpt, data_end): (&'static str, &'static str, &'static str),
    log: &Mutex<Vec<String>>,
) -> Say {
    match cmd {
        c if c.starts_with("EHLO") => Say::Reply(b"250-fake.test\r\n250 8BITMIME\r\n"),
        c if c.starts_with("MAIL") => Say::Reply(mail.as_bytes()),
        c if c.starts_with("RCPT") => Say::Reply(rcpt.as_bytes()),
        "RSET" => Say::Reply(b"250 2.0.0 ok\r\n"),
        "DATA" => {
            let _ = r.get_mut().write_all(b"354 go ahead\r\n");
            let mut body = String::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != ".\r\n" {
                body.push_str(&line);
                line.clear();
            }
            // When the message arrived (ms since the epoch): the ramp test reads it.
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            log.lock()
                .unwrap()
                .push(format!("DATA {} bytes at {at}", body.len()));
            Say::Reply(data_end.as_bytes())
        }
        c if c.starts_with("QUIT") => Say::Last(b"221 2.0.0 bye\r\n"),
        _ => NOT_HERE,
    }
}

/// A tiny SMTP responder driven by a script, one entry per connection (the last entry
/// repeats). Counts the connections it served.
pub struct FakePrimary {
    pub port: u16,
    pub served: Arc<Mutex<Vec<FakeReply>>>,
    /// What submission sessions did (AUTH results, MAIL/RCPT lines, DATA bodies).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl FakePrimary {
    pub fn start(script: Vec<FakeReply>) -> FakePrimary {
        Self::start_on(0, script)
    }

    /// When each message arrived (ms since the epoch, in order): a primary that records
    /// arrival times, for the pace of a drain.
    pub fn arrivals(&self) -> Vec<u128> {
        let mut at: Vec<u128> = self
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("DATA ")?.rsplit_once(" at ")?.1.parse().ok())
            .collect();
        at.sort_unstable();
        at
    }

    /// [`FakePrimary::start`] on `port` (0: any free one), e.g. a primary that comes back
    /// where the standby was told it is.
    pub fn start_on(port: u16, script: Vec<FakeReply>) -> FakePrimary {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (served2, log2) = (served.clone(), log.clone());
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let reply = *script.get(n).or(script.last()).unwrap();
                served2.lock().unwrap().push(reply);
                let log = log2.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    match reply {
                        FakeReply::Submission(auth) => submission(stream, auth, &log),
                        FakeReply::DropMidData => {
                            line_loop(stream, |c, r| drop_mid_data(c, r, &log));
                        }
                        FakeReply::BadTls => line_loop(stream, bad_tls),
                        FakeReply::Replies {
                            mail,
                            rcpt,
                            data_end,
                        } => line_loop(stream, |c, r| {
                            replies_as(c, r, (mail, rcpt, data_end), &log)
                        }),
                        FakeReply::Trickle => {
                            for b in b"220 fake.test ESMTP\r\n" {
                                if stream.write_all(&[*b]).is_err() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        }
                        FakeReply::Busy421 => {
                            let _ =
                                stream.write_all(b"421 4.3.2 fake.test maintenance, try later\r\n");
                        }
                        FakeReply::Healthy => line_loop(stream, healthy),
                    }
                });
            }
        });
        FakePrimary { port, served, log }
    }

    pub fn connections(&self) -> usize {
        self.served.lock().unwrap().len()
    }
}

/// How many entries a directory has (0 when it does not exist).
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// An RSA key pair for DKIM made by openssl (2048 bits: ring signs with nothing
/// smaller): the private key, the public key (PEM) and its `p=` value (base64 of the
/// SubjectPublicKeyInfo DER).
pub struct DkimKey {
    pub key: PathBuf,
    pub public_pem: PathBuf,
    pub p: String,
}

pub fn dkim_key(dir: &Path) -> DkimKey {
    use base64::Engine;
    require("openssl", "openssl");
    let key = dir.join("dkim.key");
    let public_pem = dir.join("dkim.pub");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "RSA".as_ref(),
        "-pkeyopt".as_ref(),
        "rsa_keygen_bits:2048".as_ref(),
        "-out".as_ref(),
        key.as_os_str(),
    ]);
    run(&[
        "pkey".as_ref(),
        "-pubout".as_ref(),
        "-in".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        public_pem.as_os_str(),
    ]);
    let der = run(&[
        "pkey".as_ref(),
        "-pubout".as_ref(),
        "-outform".as_ref(),
        "DER".as_ref(),
        "-in".as_ref(),
        key.as_os_str(),
    ]);
    DkimKey {
        key,
        public_pem,
        p: base64::engine::general_purpose::STANDARD.encode(der),
    }
}

/// Certificates for TLS tests: a CA and a server certificate for 127.0.0.1/localhost.
pub struct TestPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_pki(dir: &Path) -> TestPki {
    make_pki_for(dir, &["localhost", "127.0.0.1"], false)
}

/// A CA and a server certificate for `names` (the first is its common name); with
/// `expired`, one that ran out in 2021.
pub fn make_pki_for(dir: &Path, names: &[&str], expired: bool) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    // Names of their own: rcgen gives both the same default name, and a leaf whose
    // subject is its issuer's reads as self-signed to OpenSSL (curl).
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "standby-mx test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    if expired {
        leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let pki = TestPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, leaf.pem()).unwrap();
    std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
    for p in [&pki.ca, &pki.cert, &pki.key] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    pki
}

// ---- Crash tests (tests/crash.rs, tests/aws_serve.rs) ----

/// xorshift64*: enough randomness for kill timing, and a printed seed replays a run.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The message for `token`: its body ends with a trailer that shows truncation.
pub fn message(token: &str, lines: usize) -> String {
    let mut m = format!("Subject: crash {token}\r\nMessage-ID: <{token}@crash.test>\r\n\r\n");
    for i in 0..lines {
        m.push_str(&format!("{token} line {i} {}\r\n", "z".repeat(60)));
    }
    m.push_str(&format!("END-{token}\r\n"));
    m
}

/// Send one message on a fresh connection; true only if DATA got 250.
pub fn send_one(port: u16, token: &str, lines: usize) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if !replies(&mut s, 1).starts_with("220 ") {
        return false;
    }
    let cmds: &[u8] =
        b"EHLO load.test\r\nMAIL FROM:<load@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n";
    if s.write_all(cmds).is_err() {
        return false;
    }
    let r = replies(&mut s, 4);
    if !r.contains("354 ") {
        return false;
    }
    let body = message(token, lines);
    if s.write_all(body.as_bytes())
        .and_then(|_| s.write_all(b".\r\n"))
        .is_err()
    {
        return false;
    }
    let r = replies(&mut s, 1);
    r.lines().last().is_some_and(|l| l.starts_with("250 "))
}

/// (token, copies) of every message at the primary; panics on a truncated one.
pub fn tokens_at(pf: &Postfix) -> std::collections::HashMap<String, usize> {
    let mut at = std::collections::HashMap::<String, usize>::new();
    for m in pf.delivered() {
        let text = String::from_utf8_lossy(&m).to_string();
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: crash "))
            .unwrap()
            .to_string();
        assert!(
            text.contains(&format!("END-{token}")),
            "{token} delivered truncated"
        );
        *at.entry(token).or_default() += 1;
    }
    at
}
