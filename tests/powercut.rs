//! Power cuts, not kills: the spool (message files *and* the SQLite index with its WAL)
//! lives on a test file system (`tests/support/lazyfs.py`, FUSE) that keeps every write
//! in its own memory until the file is fsynced or fdatasynced, like LazyFS. A power cut
//! is: SIGKILL `standby serve`, SIGKILL the file system (everything unsynced is gone),
//! unmount, mount again, start `serve`.
//!
//! Clients send while a real Postfix primary is up, so cuts land during receiving and
//! during draining alike. Afterwards every message that got a 250 reaches the primary,
//! whole, and at most the messages a drain worker had in flight at a cut twice (the
//! primary's 250 came, the write-back was lost): at most cuts x drain concurrency.
//!
//! What survives here survived because of the per-file `fdatasync` (FUSE passes it to
//! the file system; it would not pass a `syncfs`). The file system drops data, not
//! directory entries: the syscall-order test checks the fsync of `tmp/`.
//!
//! `STANDBYMX_POWERCUTS` (default 10; `scripts/crash-test` runs many more) and
//! `STANDBYMX_CRASH_SEED` replays a run.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Debian's Python, where python3-fusepy installs its module.
const PYTHON: &str = "/usr/bin/python3";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The lazy file system: `backing` mounted at `mnt`.
struct LazyFs {
    backing: PathBuf,
    mnt: PathBuf,
    child: Option<Child>,
}

fn mounted(mnt: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
}

impl LazyFs {
    fn mount(backing: &Path, mnt: &Path) -> LazyFs {
        let ok = Command::new(PYTHON)
            .args(["-c", "import fusepy"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "python3-fusepy is missing: run `apt-get install -y python3-fusepy` \
             (scripts/test does this)"
        );
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: this test needs FUSE"
        );
        let mut fs = LazyFs {
            backing: backing.to_path_buf(),
            mnt: mnt.to_path_buf(),
            child: None,
        };
        fs.start();
        fs
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.backing.with_extension("lazyfs.log"))
            .unwrap();
        let child = Command::new(PYTHON)
            .arg(repo().join("tests/support/lazyfs.py"))
            .arg(&self.backing)
            .arg(&self.mnt)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lazyfs.py");
        self.child = Some(child);
        let mnt = self.mnt.clone();
        wait_for(
            "the lazy file system to mount",
            Duration::from_secs(20),
            || mounted(&mnt),
        );
    }

    /// The power goes: whatever was not synced is lost; then unmount.
    fn cut(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let mnt = self.mnt.clone();
        wait_for("the mount to go", Duration::from_secs(20), || {
            !mounted(&mnt)
        });
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.cut();
    }
}

#[test]
fn power_cuts_while_receiving_and_draining_lose_nothing_acknowledged() {
    let cuts = env_u64("STANDBYMX_POWERCUTS").unwrap_or(10);
    let seed = env_u64("STANDBYMX_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    eprintln!("power-cut test: {cuts} cuts, seed {seed} (STANDBYMX_CRASH_SEED replays it)");
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let (backing, mnt) = (root.path().join("disk"), root.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut fs = LazyFs::mount(&backing, &mnt);

    let pf = Postfix::primary();
    pf.start();
    let concurrency = 2u64;
    let data = mnt.join("data");
    let mut sb = Standby::configure(
        pf.port,
        "",
        &[
            ("STANDBY_DATA_DIR", data.to_str().unwrap()),
            ("STANDBY_HEALTH_UP_AFTER", "1"),
            ("STANDBY_DRAIN_LEASE_SECS", "2"),
            ("STANDBY_DRAIN_CONCURRENCY", &concurrency.to_string()),
        ],
    );
    sb.spawn();

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut sent = 0usize;
    for round in 0..cuts {
        let port = sb.port;
        let mut clients = Vec::new();
        for c in 0..3 {
            let acked = acked.clone();
            let lines = 10 + rng.below(300) as usize;
            clients.push(std::thread::spawn(move || {
                for m in 0..15 {
                    let token = format!("p{round}c{c}m{m}");
                    if send_one(port, &token, lines) {
                        acked.lock().unwrap().insert(token);
                    }
                }
            }));
            sent += 15;
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        sb.kill9();
        fs.cut();
        for c in clients {
            c.join().unwrap();
        }
        fs.start();
        sb.spawn();
    }

    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty(), "no message was acknowledged at all");
    wait_for("the standby to drain", Duration::from_secs(180), || {
        sb.counts()["held"] == 0
    });
    // The drain's own report of what it delivered, then Postfix's maildir: positive
    // signals, no fixed sleep.
    let delivered = sb.counts()["delivered"].as_u64().unwrap() as usize;
    wait_for(
        "Postfix to store everything delivered",
        Duration::from_secs(60),
        || pf.delivered().len() >= delivered,
    );
    for m in pf.delivered() {
        let text = String::from_utf8_lossy(&m);
        assert!(
            text.contains("Subject: crash "),
            "a message reached the primary with its bytes lost to a power cut:\n{text}"
        );
    }
    let at = tokens_at(&pf);
    let lost: Vec<&String> = acked.iter().filter(|t| !at.contains_key(*t)).collect();
    let duplicated: usize = at.values().map(|n| n - 1).sum();
    eprintln!(
        "power-cut test: {cuts} power cuts simulated; {sent} sends, {} acknowledged, {} lost, \
         {duplicated} duplicated at the primary (bound: {} in flight at the cuts); {} stored \
         without a 250 reaching the client, delivered too",
        acked.len(),
        lost.len(),
        cuts * concurrency,
        at.len() - acked.iter().filter(|t| at.contains_key(*t)).count(),
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(
        duplicated as u64 <= cuts * concurrency,
        "{duplicated} duplicates from {cuts} cuts: more than the {concurrency} messages a \
         drain can have in flight at each"
    );
}
