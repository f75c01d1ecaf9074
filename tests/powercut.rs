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
    /// A lazy file system backed by `root/disk`, mounted at `root/mnt`.
    fn mount_in(root: &Path) -> LazyFs {
        let (backing, mnt) = (root.join("disk"), root.join("mnt"));
        std::fs::create_dir_all(&backing).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
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
            backing,
            mnt,
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
    let mut fs = LazyFs::mount_in(root.path());

    let pf = Postfix::primary();
    pf.start();
    let concurrency = 2u64;
    let data = fs.mnt.join("data");
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

/// Send `token` with swaks (a real client); the last reply to the final dot.
fn dot_reply(port: u16, token: &str) -> String {
    let body = message(token, 20);
    let (_, t) = swaks(
        port,
        &[
            "--from",
            "load@example.org",
            "--to",
            "bob@example.test",
            "--data",
            &body,
        ],
    );
    // Swaks shows what the client sent as ` -> ` lines and the replies as `<- ` (or
    // `<** ` for an error): the reply after the lone dot.
    t.rsplit_once("\n -> .\n")
        .and_then(|(_, after)| {
            after
                .lines()
                .find(|l| l.starts_with("<"))
                .map(|l| l.trim_start_matches(['<', '-', '*']).trim().to_string())
        })
        .unwrap_or_else(|| panic!("no reply to {token}'s final dot:\n{t}"))
}

/// Every token in the spool's index (any status), by subject.
fn stored_tokens(sb: &Standby) -> Vec<String> {
    let mut tokens: Vec<String> = sb
        .list("all")
        .iter()
        .filter_map(|r| r["subject"].as_str())
        .filter_map(|s| s.strip_prefix("crash "))
        .map(str::to_string)
        .collect();
    tokens.sort();
    tokens
}

/// Spool files of `token`'s message anywhere under `data` (tmp/, messages/, orphans/).
fn files_of(data: &Path, token: &str) -> usize {
    let end = format!("END-{token}");
    ["tmp", "messages", "orphans"]
        .iter()
        .filter_map(|d| std::fs::read_dir(data.join(d)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read(e.path()).is_ok_and(|b| b.windows(end.len()).any(|w| w == end.as_bytes()))
        })
        .count()
}

/// A disk that fails a flush, from a real file system (the lazy one answers EIO while a
/// marker file exists, see tests/support/lazyfs.py): the message whose file, `tmp/` or
/// WAL flush failed gets `451 4.3.0` and leaves nothing behind, neither a row nor a
/// file, also after a restart; a failed flush of a message's own file fails only that
/// message, a failed flush of `tmp/` or of the WAL (descriptors every session shares,
/// to which Linux reports a writeback error once) fails every message after it until
/// `standby serve` restarts.
#[test]
fn a_failed_flush_answers_451_and_leaves_nothing_behind() {
    require("swaks", "swaks");
    let root = tempfile::tempdir().unwrap();
    let fs = LazyFs::mount_in(root.path());
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let data = fs.mnt.join("data");
    let mut sb = Standby::configure(
        fake.port,
        "",
        &[
            ("STANDBY_DATA_DIR", data.to_str().unwrap()),
            ("STANDBY_HEALTH_UP_AFTER", "100000"),
        ],
    );
    sb.spawn();
    let fail = |what: &str, on: bool| {
        let marker = fs.backing.join(format!(".fail-{what}"));
        if on {
            std::fs::write(marker, b"").unwrap();
        } else {
            std::fs::remove_file(marker).unwrap();
        }
    };
    let accepted = |reply: &str| reply.starts_with("250 ");
    let refused = |reply: &str| reply.starts_with("451 4.3.0");

    let mut kept = vec!["a"];
    let mut lost = Vec::new();
    assert!(accepted(&dot_reply(sb.port, "a")));
    // At once, not only after a restart (whose start would drop a row left behind): the
    // running index holds what got 250 and nothing else.
    let holds_only = |sb: &Standby, kept: &[&str]| {
        let mut kept: Vec<String> = kept.iter().map(|t| t.to_string()).collect();
        kept.sort();
        assert_eq!(
            stored_tokens(sb),
            kept,
            "the running index holds what got 451"
        );
    };

    // The message's own file: that message only.
    fail("spool-flush", true);
    let r = dot_reply(sb.port, "b");
    assert!(refused(&r), "a failed flush of the message's file got {r}");
    lost.push("b");
    holds_only(&sb, &kept);
    fail("spool-flush", false);
    assert!(
        accepted(&dot_reply(sb.port, "c")),
        "one file's flush error stuck"
    );
    kept.push("c");

    // `tmp/` and then the WAL: every later message too, until a restart.
    for (what, first, then, after) in [("dir-flush", "d", "e", "f"), ("wal-flush", "g", "h", "i")] {
        fail(what, true);
        let r = dot_reply(sb.port, first);
        assert!(refused(&r), "a failed {what} got {r}");
        holds_only(&sb, &kept);
        fail(what, false);
        let r = dot_reply(sb.port, then);
        assert!(
            refused(&r),
            "after a failed {what}, a later message got {r}"
        );
        lost.extend([first, then]);
        holds_only(&sb, &kept);
        sb.terminate();
        sb.spawn();
        assert!(
            accepted(&dot_reply(sb.port, after)),
            "{what}: not accepted after a restart"
        );
        kept.push(after);
    }
    sb.terminate();
    sb.spawn();
    kept.sort();
    assert_eq!(
        stored_tokens(&sb),
        kept,
        "the index holds exactly the messages that got 250"
    );
    for t in &lost {
        assert_eq!(
            files_of(&data, t),
            0,
            "a file of {t}, refused with 451, is still in the spool"
        );
    }
    for t in &kept {
        assert_eq!(files_of(&data, t), 1, "{t} is not in the spool once");
    }
}
