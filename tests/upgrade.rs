//! Upgrades: a spool made by an earlier release opens, migrates and delivers.
//!
//! Each fixture (`tests/fixtures/upgrade/<name>/`) was made by that release's own
//! `standby serve` and `standby hold` (`tests/fixtures/upgrade/make-fixture`; the commit
//! is in its `RELEASE` file): its index as SQL text and its message files. `spool` has no
//! envelope files (that release did not write them); `spool-env` has the `<id>.env`
//! sidecars the spool kept before the envelope moved into the message file. Loaded into
//! a data directory, each must open under this release without a message turning into an
//! orphan, keep the paused one paused, and deliver the held ones, whole, to a real
//! Postfix primary.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_spool_made_by_the_previous_release_opens_and_delivers() {
    opens_and_delivers("spool", false);
}

#[test]
fn a_spool_with_envelope_sidecars_opens_and_delivers() {
    opens_and_delivers("spool-env", true);
}

/// Load the fixture `name` into a fresh data directory, start this release on it and
/// check what the module docs say; `sidecars`: the fixture has an `<id>.env` per message.
fn opens_and_delivers(name: &str, sidecars: bool) {
    let fixture = repo().join("tests/fixtures/upgrade").join(name);
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
    let (mut messages, mut envelopes) = (0, 0);
    for e in std::fs::read_dir(fixture.join("messages"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), data.join("messages").join(e.file_name())).unwrap();
        match e.path().extension().and_then(|x| x.to_str()) {
            Some("eml") => messages += 1,
            Some("env") => envelopes += 1,
            other => panic!("unexpected file in the fixture {name}: {other:?}"),
        }
    }
    assert_eq!(
        messages, 3,
        "the fixture {name} from {release} has three messages"
    );
    assert_eq!(
        envelopes,
        if sidecars { 3 } else { 0 },
        "the fixture {name} from {release}: envelope files"
    );
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
