//! Gradual redelivery: a primary that comes back after an outage gets the backlog at
//! `[drain] ramp_start_per_sec`, doubled every `ramp_step_secs` up to `rate_per_sec`,
//! not all at once, however many workers drain at once. The primary records when each
//! message arrives; the curve is read from those times.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{FakePrimary, FakeReply, Standby, free_port, require, wait_for};

#[test]
fn a_primary_that_comes_back_gets_the_backlog_on_the_ramp() {
    require("smtp-source", "postfix");
    // The primary is down while the mail arrives.
    let port = free_port();
    let sb = Standby::start(
        port,
        "[drain]\nrate_per_sec = 8\nramp_start_per_sec = 2\nramp_step_secs = 2\n",
    );
    // More than one claim batch (32), so several workers share the pace.
    let n = 40;
    let src = Command::new("smtp-source")
        .args(["-s", "5", "-m", &n.to_string(), "-l", "512"])
        .args(["-f", "a@example.org", "-t", "bob@example.test"])
        .arg(format!("127.0.0.1:{}", sb.port))
        .output()
        .expect("run smtp-source");
    assert!(src.status.success(), "{src:?}");
    assert_eq!(sb.counts()["held"], n);
    // It comes back: the health loop sees it up and drains, on the ramp.
    let primary = FakePrimary::start_on(
        port,
        vec![FakeReply::Replies {
            mail: "250 2.1.0 ok\r\n",
            rcpt: "250 2.1.5 ok\r\n",
            data_end: "250 2.0.0 queued\r\n",
        }],
    );
    wait_for(
        "the backlog at the primary",
        Duration::from_secs(60),
        || primary.arrivals().len() >= n as usize,
    );
    let at = primary.arrivals();
    let first = at[0];
    let within = |from: u128, to: u128| {
        at.iter()
            .filter(|&&t| t >= first + from && t < first + to)
            .count()
    };
    // 2 a second for the first 2 s (the ramp counts from the health turning up, a
    // little before the first message), 4 for the next 2 s, then 8: never the 8 a
    // second `rate_per_sec` allows from the start (16 in the first 2 s).
    let head = within(0, 2000);
    assert!(head <= 6, "{head} in the first 2 s: {at:?}");
    // The second step, 4 a second (2 a second would be 4, the cap 16).
    let second = within(2000, 4000);
    assert!(
        (6..=11).contains(&second),
        "{second} between 2 and 4 s: {at:?}"
    );
    // And on to the cap: 8 a second from about 4 s (at 4 a second it would be 8).
    let late = within(4000, 6000);
    assert!(late >= 11, "{late} between 4 and 6 s: {at:?}");
    assert_eq!(sb.counts()["delivered"], n);
}
