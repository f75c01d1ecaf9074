//! The spool holds other people's mail: the data directory and everything in it are
//! private to the standby's user, whatever the umask. `standby serve` runs here under
//! umask 000 (everything would be world-writable if the code relied on it).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn spool_directories_and_files_are_private_under_a_permissive_umask() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let mut sb = Standby::configure(fake.port, "", &[]);
    // `sh -c 'umask 000; exec "$0" "$@"' standby serve --config ...`
    sb.wrapper = ["sh", "-c", "umask 000; exec \"$0\" \"$@\""]
        .map(String::from)
        .to_vec();
    sb.spawn();
    // The umask really is 000 in the daemon.
    let pid = sb.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "Umask:\t0000"),
        "serve does not run under umask 000:\n{status}"
    );
    sb.send("bob@example.test", &[]);
    sb.wait_published();
    let data = sb.dir.path().join("data");
    for dir in [data.clone(), data.join("messages"), data.join("tmp")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let msgs: Vec<_> = std::fs::read_dir(data.join("messages"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        msgs.len(),
        1,
        "the message, its envelope in its file: {msgs:?}"
    );
    for m in &msgs {
        assert_eq!(mode(m), 0o600, "{}", m.display());
    }
    for f in ["index.db", "index.db-wal", "index.db-shm", "serve.lock"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
}
