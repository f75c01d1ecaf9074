//! Upgrades: a spool made by the previous release opens, migrates and delivers.
//!
//! The fixture (`tests/fixtures/upgrade/spool/`) was made by the previous release's own
//! `standby serve` and `standby hold` (`tests/fixtures/upgrade/make-fixture`; the commit
//! is in its `RELEASE` file): its index as SQL text and its message files, which have no
//! envelope files (that release did not write them). Loaded into a data directory, it
//! must open under this release without a message turning into an orphan, keep the
//! paused one paused, and deliver the held ones, whole, to a real Postfix primary.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_spool_made_by_the_previous_release_opens_and_delivers() {
    let fixture = repo().join("tests/fixtures/upgrade/spool");
    let release = std::fs::read_to_string(fixture.join("RELEASE")).unwrap();
    let pf = Postfix::primary();
    pf.start();
    let mut sb = Standby::configure(pf.port, "", &[("STANDBY_HEALTH_UP_AFTER", "1")]);
    let data = sb.dir.path().join("data");
    std::fs::create_dir_all(data.join("messages")).unwrap();
    let db = rusqlite::Connection::open(data.join("index.db")).unwrap();
    db.execute_batch(&std::fs::read_to_string(fixture.join("index.sql")).unwrap())
        .unwrap();
    drop(db);
    let mut files = 0;
    for e in std::fs::read_dir(fixture.join("messages"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), data.join("messages").join(e.file_name())).unwrap();
        files += 1;
    }
    assert_eq!(files, 3, "the fixture from {release} has three messages");
    sb.spawn();

    wait_for(
        "the held messages to drain",
        Duration::from_secs(60),
        || sb.counts()["held"] == 0,
    );
    let counts = sb.counts();
    assert_eq!(counts["delivered"], 2, "{counts}");
    assert_eq!(counts["paused"], 1, "the paused one stays paused: {counts}");
    wait_for("Postfix to store both", Duration::from_secs(30), || {
        pf.delivered().len() == 2
    });
    for m in pf.delivered() {
        let text = String::from_utf8_lossy(&m);
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: upgrade fixture "))
            .expect("a fixture message");
        assert!(text.contains(&format!("fixture body {n}")), "whole: {text}");
    }
    assert!(
        !data.join("orphans").exists(),
        "no message of the old spool became an orphan: {}",
        sb.log()
    );
    // A record of the old release reads like any other.
    let paused = sb.list("paused");
    let shown = sb.json(&["show", paused[0]["id"].as_str().unwrap(), "--json"]);
    assert_eq!(shown["summary"]["subject"], "upgrade fixture 1");
}
