//! Root and the spool owner: operator commands run as root (`sudo standby ...`) on a spool
//! that `standby serve` keeps as its own user act as that user, so no root-owned file
//! appears in the data directory and the daemon can still append to everything. The real
//! binary, run as root, on a spool of a dedicated system user (created here when missing),
//! with a real Postfix as the primary and dnsmasq answering the SPF lookup that lets the
//! drain write a DSN.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::dns::Dns;
use common::*;
use serde_json::Value;

/// The system user the spool belongs to in these tests.
const OWNER: &str = "standby-test";

fn require_root() {
    assert!(
        nix_uid() == 0,
        "tests/owner.rs runs the binary as root and as another user: run it as root \
         (scripts/test does)"
    );
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// (uid, gid) of `OWNER`, creating the system user when it is missing.
fn owner_ids() -> (u32, u32) {
    static CREATE: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATE.lock().unwrap_or_else(|p| p.into_inner());
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, OWNER]).output().unwrap();
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .unwrap()
        })
    };
    if id("-u").is_none() {
        require("useradd", "passwd");
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                OWNER,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd {OWNER}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

/// A spool directory owned by `uid:gid`, with a config for it; `serve` runs as that user.
struct Spool {
    dir: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    serve: Option<Child>,
}

impl Spool {
    /// `listen` port, `extra` TOML sections (after `[primary]`).
    fn new(uid: u32, gid: u32, port: u16, primary_port: u16, extra: &str) -> Spool {
        let dir = tempfile::tempdir().unwrap();
        // The owner must reach its data directory and read the config.
        chmod(dir.path(), 0o755);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        chmod(&data, 0o700);
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        let config = dir.path().join("standby.toml");
        std::fs::write(
            &config,
            format!(
                "hostname = \"standby.example.test\"\n\
                 listen = \"127.0.0.1:{port}\"\n\
                 data_dir = \"{data}\"\n\
                 domains = [\"example.test\"]\n\
                 [primary]\n\
                 address = \"127.0.0.1:{primary_port}\"\n\
                 tls = \"none\"\n\
                 timeout_secs = 10\n\
                 {extra}\n",
                data = data.display()
            ),
        )
        .unwrap();
        chmod(&config, 0o644);
        Spool {
            dir,
            data,
            config,
            port,
            uid,
            gid,
            serve: None,
        }
    }

    /// Start `standby serve`, as the owner or (`as_owner` false) as root.
    fn serve(&mut self, as_owner: bool, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .unwrap();
        let mut cmd = Command::new(if as_owner {
            owners_copy()
        } else {
            STANDBY.as_ref()
        });
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("STANDBY_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        if as_owner {
            cmd.uid(self.uid).gid(self.gid);
        }
        let mut child = cmd.spawn().expect("start standby serve");
        let port = self.port;
        wait_for("standby serve to listen", Duration::from_secs(20), || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("standby serve exited ({status}):\n{}", self.serve_log());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.serve = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            c.wait().unwrap();
        }
    }

    fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `standby ARGS --config <ours>`, as root.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(STANDBY)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("STANDBY_LOG", "warn")
            .env("STANDBY_DSN_SPF", "false")
            .output()
            .expect("run standby")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "standby {args:?} (as root) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// Send one message; returns its id.
    fn send(&self, from: &str, to: &str) -> String {
        let (ok, t) = swaks(self.port, &["--from", from, "--to", to]);
        assert!(ok, "{t}");
        queued_id(&t)
    }

    /// Everything in the data directory that is not the owner's (`find ! -user ! -group`).
    fn foreign_files(&self) -> String {
        let out = Command::new("find")
            .arg(&self.data)
            .args([
                "(",
                "!",
                "-uid",
                &self.uid.to_string(),
                "-o",
                "!",
                "-gid",
                &self.gid.to_string(),
                ")",
                "-printf",
                "%p %u:%g\\n",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The binary where another user may run it: cargo's target directory is under /root
/// (mode 0700). Stripped, so the copy is a tenth of the size.
fn owners_copy() -> &'static Path {
    static COPY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &COPY
        .get_or_init(|| {
            require("strip", "binutils");
            let dir = tempfile::tempdir().unwrap();
            chmod(dir.path(), 0o755);
            let out = Command::new("strip")
                .arg("-o")
                .arg(dir.path().join("standby"))
                .arg(STANDBY)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = dir.path().join("standby");
            (dir, path)
        })
        .1
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn audit_lines(data: &Path) -> usize {
    std::fs::read_to_string(data.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn root_commands_on_a_users_spool_leave_only_that_users_files() {
    require_root();
    let (uid, gid) = owner_ids();
    // alice's domain publishes SPF for 127.0.0.1, so a failed recipient gets a DSN.
    let dns = Dns::start_with(&[], &[("example.test", "v=spf1 ip4:127.0.0.1 -all")]);
    let pf = Postfix::primary();
    pf.rcpt_replies(&[("gone@example.test", "550 5.1.1 no such user here")]);
    // One probe at start (the primary is down then), then none for an hour: the
    // deliveries below are root's `standby drain`, not the daemon's. Everything delivered
    // or failed is due for retention at once.
    let mut spool = Spool::new(
        uid,
        gid,
        free_port(),
        pf.port,
        "[health]\ninterval_secs = 3600\n\
         [retention]\ndelivered_days = 0\nfailed_days = 0\n",
    );
    let ns = dns.addr();
    let spf = [("STANDBY_DSN_SPF", "true"), ("STANDBY_DSN_NAMESERVER", &ns)];
    spool.serve(true, &spf);

    let bounced = spool.send("alice@example.test", "carol@example.test,gone@example.test");
    let purged = spool.send("a@example.org", "bob@example.test");
    let kept = spool.send("a@example.org", "dave@example.test");

    // The operator, as root.
    assert_eq!(spool.json(&["status", "--json"])["counts"]["held"], 3);
    spool.ok(&["show", &bounced]);
    spool.ok(&["hold", "--legal", &kept, "--reason", "case 7"]);
    spool.ok(&["retention"]);
    spool.ok(&["purge", "--yes", &purged]);
    let export = spool.data.join("export.mbox");
    spool.ok(&[
        "export",
        "--format",
        "mbox",
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(export.exists());
    pf.start();
    let report = spool.json(&["drain", "--json"]);
    assert_eq!(report["failed"], 1, "{report}");
    let rec = spool.json(&["show", &bounced, "--json"]);
    assert_eq!(
        rec["bounce"]["state"], "queued",
        "no DSN was written: {rec}"
    );
    spool.ok(&["audit"]);
    spool.cli(&["doctor"]);
    let audited = audit_lines(&spool.data);
    assert!(audited >= 2, "legal hold and purge are audited");

    let foreign = spool.foreign_files();
    assert!(
        foreign.is_empty(),
        "files in the data directory not owned by {OWNER}:\n{foreign}"
    );

    // The daemon, as the owner, still appends: at its start, retention deletes the
    // delivered and failed mail root's drain left, and audits each deletion.
    spool.stop();
    spool.serve(true, &spf);
    wait_for(
        "standby serve to audit its retention run",
        Duration::from_secs(20),
        || audit_lines(&spool.data) > audited,
    );
    let log = spool.serve_log();
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(spool.foreign_files(), "");
}

/// A port below 1024 that is free now (only root may bind it).
fn free_low_port() -> u16 {
    (900..1000)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port between 900 and 999")
}

#[test]
fn serve_as_root_runs_as_an_owner_without_a_passwd_entry_and_keeps_port_binding() {
    require_root();
    // No passwd entry has this uid: the switch goes by number.
    let (uid, gid) = (54_321, 54_321);
    let out = Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "uid {uid} has a passwd entry here");
    let mut spool = Spool::new(uid, gid, free_low_port(), free_port(), "");
    spool.serve(false, &[("STANDBY_DSN_SPF", "false")]);
    let pid = spool.serve.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), ["54321"; 4], "{status}");
    assert_eq!(field("Gid:"), ["54321"; 4], "{status}");
    assert!(field("Groups:").is_empty(), "{status}");
    // CAP_NET_BIND_SERVICE (bit 10) only.
    assert_eq!(field("CapEff:"), ["0000000000000400"], "{status}");

    let id = spool.send("a@example.org", "bob@example.test");
    spool.ok(&["purge", "--yes", &id]);
    assert_eq!(audit_lines(&spool.data), 1);
    assert_eq!(spool.foreign_files(), "");
}

#[test]
fn without_the_right_to_switch_a_root_command_refuses_with_the_command_to_run() {
    require_root();
    require("setpriv", "util-linux");
    let (uid, gid) = owner_ids();
    let spool = Spool::new(uid, gid, free_port(), free_port(), "");
    // Root, but without CAP_SETUID and CAP_SETGID (as in some containers).
    let out = Command::new("setpriv")
        .args(["--bounding-set=-setuid,-setgid", STANDBY, "purge", "--yes"])
        .arg("01M8Z1513084HSNCZVNFBY8E15")
        .arg("--config")
        .arg(&spool.config)
        .env("STANDBY_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let instead = format!(
        "sudo -u {OWNER} {STANDBY} purge --yes 01M8Z1513084HSNCZVNFBY8E15 --config {}",
        spool.config.display()
    );
    assert!(err.contains(&instead), "wanted `{instead}` in:\n{err}");
    assert!(err.contains("belongs to user standby-test"), "{err}");
    // Nothing was created in the spool.
    assert_eq!(count_files(&spool.data), 0);
}
