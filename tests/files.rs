//! The spool holds other people's mail: the data directory and everything in it are
//! private to the standby's user, whatever the umask.

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
fn spool_directories_and_files_are_private() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    sb.send("bob@example.test", &[]);
    let data = sb.dir.path().join("data");
    for dir in [data.clone(), data.join("messages"), data.join("tmp")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let msgs: Vec<_> = std::fs::read_dir(data.join("messages"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(msgs.len(), 1);
    assert_eq!(mode(&msgs[0]), 0o600, "{}", msgs[0].display());
    for f in ["index.db", "index.db-wal", "index.db-shm"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
}
