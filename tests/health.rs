//! Health hysteresis against real SMTP probes: draining starts only after `up_after`
//! good probes, and one failed probe does not take an `up` primary down.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn draining_waits_for_up_after_good_probes() {
    let pf = Postfix::primary();
    let sb = Standby::start_with_env(pf.port, "", &[("STANDBY_HEALTH_UP_AFTER", "3")]);
    sb.send("bob@example.test", &[]);
    pf.start();

    let mut saw_good_probe_not_yet_up = false;
    let start = Instant::now();
    loop {
        let s = sb.json(&["status", "--json"]);
        let state = s["primary"]["state"].as_str().unwrap().to_string();
        let held = s["counts"]["held"].as_u64().unwrap();
        if state != "up" {
            assert_eq!(held, 1, "drained before the primary was up: {s}");
            if s["primary"]["last_probe"]["ok"] == true {
                saw_good_probe_not_yet_up = true;
            }
        }
        if held == 0 {
            assert_eq!(s["counts"]["delivered"], 1);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never drained: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        saw_good_probe_not_yet_up,
        "a good probe alone must not make the primary up (up_after = 3)"
    );
}

#[test]
fn one_failed_probe_does_not_flip_an_up_primary() {
    use FakeReply::*;
    // Probes 1-3 good (up after 2), probe 4 fails, then good again.
    let fake = FakePrimary::start(vec![Healthy, Healthy, Healthy, Busy421, Healthy]);
    let sb = Standby::start(fake.port, "");
    let mut was_up = false;
    let mut saw_failure_while_up = false;
    let start = Instant::now();
    while fake.connections() < 7 {
        let s = sb.json(&["status", "--json"]);
        let state = s["primary"]["state"].as_str().unwrap();
        if state == "up" {
            was_up = true;
            if s["primary"]["last_probe"]["ok"] == false {
                saw_failure_while_up = true;
            }
        }
        if was_up {
            assert_eq!(state, "up", "one failed probe flipped the primary: {s}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "probes stalled");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        was_up && saw_failure_while_up,
        "the failed probe was observed while up"
    );
}
