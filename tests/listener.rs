//! The listener under raw SMTP: connection and time limits, PIPELINING, and the
//! end-of-data smuggling tricks, checked all the way to a real Postfix primary.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn connection_limit_and_command_timeout() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start_with_env(
        fake.port,
        "",
        &[
            ("STANDBY_MAX_CONNECTIONS", "1"),
            ("STANDBY_COMMAND_TIMEOUT_SECS", "1"),
        ],
    );
    // The harness's readiness check used the one slot briefly; wait until it is free.
    std::thread::sleep(Duration::from_millis(300));
    let mut a = connect(sb.port);
    assert!(replies(&mut a, 1).starts_with("220 "));
    let mut b = connect(sb.port);
    let r = replies(&mut b, 1);
    assert!(r.starts_with("421 4.7.0"), "{r}");
    // `a` says nothing: after the command timeout it is told and closed.
    let r = replies(&mut a, 1);
    assert!(r.starts_with("421 4.4.2"), "{r}");
}

#[test]
fn pipelined_transaction_gets_every_reply_in_order() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<x@foreign.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .unwrap();
    let r = replies(&mut s, 5);
    let codes: Vec<&str> = r
        .lines()
        .filter(|l| &l[3..4] == " ")
        .map(|l| &l[..3])
        .collect();
    assert_eq!(codes, ["250", "250", "550", "250", "354"], "{r}");
    s.write_all(b"Subject: p\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        .unwrap();
    let r = replies(&mut s, 2);
    assert!(
        r.starts_with("250 2.0.0 Ok: queued as") && r.contains("221"),
        "{r}"
    );
    assert_eq!(
        sb.list("held")[0]["rcpt_to"],
        serde_json::json!(["bob@example.test"])
    );
}

#[test]
fn smuggled_end_of_data_never_becomes_a_second_message() {
    let pf = Postfix::primary();
    let sb = Standby::start(pf.port, "");
    let tricks: [&[u8]; 5] = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\n"];
    let commands =
        "EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n";
    let mut sessions = 0;
    // Each trick twice: commands one at a time (waiting for each reply), and with
    // PIPELINING (commands, message, smuggled commands and QUIT in one write).
    for pipelined in [false, true] {
        for (i, trick) in tricks.iter().enumerate() {
            let mut s = connect(sb.port);
            replies(&mut s, 1);
            let mut msg = Vec::new();
            let mut seen = String::new();
            if pipelined {
                msg.extend_from_slice(commands.as_bytes());
            } else {
                for cmd in commands.split_inclusive("\r\n") {
                    s.write_all(cmd.as_bytes()).unwrap();
                    seen.push_str(&replies(&mut s, 1));
                }
                assert!(seen.contains("354 "), "{seen}");
            }
            msg.extend_from_slice(format!("Subject: trick {i}\r\n\r\nfirst").as_bytes());
            msg.extend_from_slice(trick);
            msg.extend_from_slice(
                b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n",
            );
            s.write_all(&msg).unwrap();
            seen.push_str(&replies(&mut s, if pipelined { 6 } else { 2 }));
            assert_eq!(
                seen.matches("queued as").count(),
                1,
                "trick {trick:?}, pipelined {pipelined}: {seen}"
            );
            sessions += 1;
        }
    }
    assert_eq!(sb.list("held").len(), sessions);
    assert!(
        sb.list("all")
            .iter()
            .all(|m| m["rcpt_to"] == serde_json::json!(["bob@example.test"]))
    );

    pf.start();
    wait_for("the drain", Duration::from_secs(60), || {
        sb.counts()["delivered"] == sessions as u64
    });
    wait_for("postfix delivery", Duration::from_secs(20), || {
        pf.delivered().len() == sessions
    });
    for m in pf.delivered() {
        let text = String::from_utf8_lossy(&m).into_owned();
        assert!(text.contains("Delivered-To: bob@example.test"), "{text}");
        assert!(
            text.contains("first") && text.contains("smuggled"),
            "one message with both parts: {text}"
        );
    }
}

/// A new connection to `addr` and its banner (220, or the 421 of a full house).
fn banner(addr: &str) -> (std::net::TcpStream, String) {
    let s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = s;
    let r = replies(&mut s, 1);
    (s, r)
}

/// Retry `f` (every 100 ms, 10 s at most) until it returns a value.
fn wait_for_value<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut out = None;
    wait_for(what, Duration::from_secs(10), || {
        out = f();
        out.is_some()
    });
    out.unwrap()
}

#[test]
fn ipv4_and_ipv6_listeners_side_by_side_under_one_connection_limit() {
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "no IPv6 loopback on this machine (`ip -6 addr show lo` should list ::1; \
         `sysctl net.ipv6.conf.lo.disable_ipv6=0`)"
    );
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start_with_env(
        fake.port,
        "",
        &[
            ("STANDBY_LISTEN", "127.0.0.1:{port},[::1]:{port}"),
            ("STANDBY_MAX_CONNECTIONS", "1"),
        ],
    );
    let v4 = format!("127.0.0.1:{}", sb.port);
    let v6 = format!("[::1]:{}", sb.port);
    assert!(
        sb.log().contains(&format!("listen={v4}, {v6}")),
        "the start line names both: {}",
        sb.log()
    );

    // One limit for both: while a session holds the only slot on IPv4, IPv6 gets 421.
    // (The harness's readiness check held the slot briefly: wait for it to be free.)
    let held = wait_for_value("the slot the readiness check used", || {
        let (s, r) = banner(&v4);
        r.starts_with("220 ").then_some(s)
    });
    let (_, r) = banner(&v6);
    assert!(r.starts_with("421 4.7.0"), "{r}");
    drop(held);

    // A message through each.
    for (server, subject) in [(&v4, "over IPv4"), (&v6, "over IPv6")] {
        let sent = wait_for_value("a free slot", || {
            let (ok, t) = swaks_at(
                server,
                &[
                    "--from",
                    "a@example.org",
                    "--to",
                    "bob@example.test",
                    "--header",
                    &format!("Subject: {subject}"),
                ],
            );
            (ok || !t.contains("421 4.7.0")).then_some((ok, t))
        });
        assert!(
            sent.0 && sent.1.contains("250 2.0.0 Ok: queued as"),
            "{server}: {}",
            sent.1
        );
    }
    let subjects: Vec<String> = sb
        .list("held")
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects, ["over IPv4", "over IPv6"]);
}
