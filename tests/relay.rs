//! No open relay: every form in `tests/fixtures/relay-attempts.txt` (foreign domains, `%`
//! hack, `!` paths, quoted and escaped local parts, source routes, address literals, case
//! and trailing-dot variants) sent to the real listener is refused with 550 5.7.1, nothing
//! is stored, and the primary never hears of it.

mod common;

use std::io::Write;

use common::*;

#[test]
fn relay_battery_is_refused_through_the_listener() {
    let fake = FakePrimary::start(vec![FakeReply::Submission(FakeAuth::Plain)]);
    let sb = Standby::start(fake.port, "");
    let attempts: Vec<&str> = include_str!("fixtures/relay-attempts.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut refused = 0;
    for rcpt in &attempts {
        let mut s = connect(sb.port);
        assert!(replies(&mut s, 1).starts_with("220 "));
        // Pipelined as a spammer would: the DATA must not go through either.
        write!(
            s,
            "EHLO relay.test\r\nMAIL FROM:<spam@relay.test>\r\nRCPT TO:{rcpt}\r\nDATA\r\n"
        )
        .unwrap();
        let r = replies(&mut s, 4);
        let lines: Vec<&str> = r
            .lines()
            .filter(|l| l.len() >= 4 && &l[3..4] == " ")
            .collect();
        assert!(lines[2].starts_with("550 5.7.1"), "{rcpt}: {r}");
        assert!(lines[3].starts_with("5"), "DATA after a refused RCPT: {r}");
        refused += 1;
    }
    assert_eq!(refused, attempts.len());
    assert!(
        attempts.len() >= 20,
        "the battery shrank: {}",
        attempts.len()
    );
    assert!(sb.list("all").is_empty(), "a relay attempt was stored");
    assert_eq!(sb.stored_files(), 0);
    let log = fake.log.lock().unwrap().join("\n");
    assert!(
        !log.contains("MAIL"),
        "the primary heard of a relay attempt: {log}"
    );
    eprintln!("relay attempts refused: {refused}");
}
