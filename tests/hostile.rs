//! Hostile input to the listener: each case has a defined answer, nothing half-written is
//! stored, and the daemon keeps serving the next client.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// The standby with the primary down (421 banner): everything accepted stays held.
fn standby(extra: &str) -> (Standby, FakePrimary) {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, extra);
    (sb, fake)
}

/// Replies whose fourth byte is a space (final lines), in order.
fn finals(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.len() >= 4 && &l[3..4] == " ")
        .collect()
}

/// The daemon still answers a normal client.
fn still_serving(sb: &Standby) {
    let mut s = connect(sb.port);
    assert!(replies(&mut s, 1).starts_with("220 "));
    s.write_all(b"QUIT\r\n").unwrap();
}

#[test]
fn size_limit_is_exact() {
    let (sb, _p) = standby("max_message_size = 10000\n");
    // A message of exactly the limit (CRLF line ends, as the decoder counts them).
    let body = |n: usize| {
        let head = "Subject: size\r\n\r\n";
        let mut m = head.to_string();
        while m.len() + 2 < n {
            let line = "y".repeat((n - m.len() - 2).min(70));
            m.push_str(&line);
            m.push_str("\r\n");
        }
        assert_eq!(m.len(), n);
        m
    };
    for (n, want) in [(10_000, "250 "), (10_001, "552 5.3.4")] {
        let mut s = connect(sb.port);
        replies(&mut s, 1);
        write!(
            s,
            "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n{}.\r\n",
            body(n)
        )
        .unwrap();
        let r = replies(&mut s, 5);
        assert!(finals(&r)[4].starts_with(want), "{n} bytes: {r}");
    }
    assert_eq!(
        sb.list("all").len(),
        1,
        "only the message at the limit is stored"
    );
    sb.wait_published();
    assert_eq!(count_files(&sb.dir.path().join("data/tmp")), 0);
}

#[test]
fn long_lines_many_recipients_and_early_talkers() {
    let (sb, _p) = standby("");
    // A 1 MB command line: refused, memory bounded, the session goes on.
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    let mut line = b"EHLO ".to_vec();
    line.extend(std::iter::repeat_n(b'a', 1 << 20));
    line.extend_from_slice(b"\r\nNOOP\r\n");
    s.write_all(&line).unwrap();
    let r = replies(&mut s, 2);
    let f = finals(&r);
    assert!(f[0].starts_with("500 5.5.2"), "{r}");
    assert!(f[1].starts_with("250"), "{r}");

    // 10,000 RCPT commands pipelined: the first 100 are taken, the rest get 452 until
    // the error limit closes the connection; nothing is stored without DATA.
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    let mut cmds = String::from("EHLO c\r\nMAIL FROM:<a@example.org>\r\n");
    for i in 0..10_000 {
        cmds.push_str(&format!("RCPT TO:<u{i}@example.test>\r\n"));
    }
    // The server may close before reading everything; a broken pipe is fine.
    let _ = s.write_all(cmds.as_bytes());
    let r = replies(&mut s, 10_002);
    let f = finals(&r);
    let ok = f.iter().filter(|l| l.starts_with("250 2.1.5")).count();
    let full = f.iter().filter(|l| l.starts_with("452 4.5.3")).count();
    assert_eq!(ok, 100, "{}", f.len());
    assert!(full >= 1, "{}", f.len());
    assert!(
        f.last().unwrap().starts_with("421") || f.len() == 10_002,
        "{:?}",
        f.last()
    );

    // An early talker (speaks before the banner): the banner still comes first and each
    // command gets its answer in order; nothing is stored.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", sb.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"EHLO early.test\r\nQUIT\r\n").unwrap();
    let r = replies(&mut s, 3);
    let f = finals(&r);
    assert!(f[0].starts_with("220 "), "{r}");
    assert!(f[1].starts_with("250 "), "{r}");
    assert!(f[2].starts_with("221 "), "{r}");

    assert!(sb.list("all").is_empty());
    still_serving(&sb);
}

#[test]
fn nul_bytes_and_8bit_garbage_are_kept_byte_exact() {
    let (sb, _p) = standby("");
    let mut msg = b"Subject: \xff\xfe\x00 garbage \xc3\x28\r\nFrom: \x80\x81 <x@\xff.test>\r\nX-Nul: a\x00b\r\n\r\nbody \x00\x01\x02 \xff\r\n".to_vec();
    msg.extend(std::iter::repeat_n(0u8, 1000));
    msg.extend_from_slice(b"\r\n");
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .unwrap();
    replies(&mut s, 4);
    s.write_all(&msg).unwrap();
    s.write_all(b".\r\n").unwrap();
    let r = replies(&mut s, 1);
    assert!(r.starts_with("250 "), "{r}");
    let held = sb.list("held");
    assert_eq!(held.len(), 1);
    let id = held[0]["id"].as_str().unwrap();
    let raw = sb.cli(&["show", id, "--raw"]).stdout;
    assert!(
        raw.ends_with(&msg),
        "stored bytes differ after our Received: header"
    );
    still_serving(&sb);
}

#[test]
fn client_gone_mid_data_leaves_nothing() {
    let (sb, _p) = standby("");
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .unwrap();
    replies(&mut s, 4);
    s.write_all(b"Subject: cut\r\n\r\nhalf a message\r\n")
        .unwrap();
    drop(s);
    wait_for("the log to note the cut", Duration::from_secs(10), || {
        sb.log().contains("client went away during DATA")
    });
    assert!(sb.list("all").is_empty());
    assert_eq!(sb.stored_files(), 0);
    sb.wait_published();
    assert_eq!(count_files(&sb.dir.path().join("data/tmp")), 0);
    still_serving(&sb);
}

#[test]
fn deeply_nested_mime_is_accepted_and_summarised_from_the_head_only() {
    let (sb, _p) = standby("");
    let depth = 20_000;
    let mut m = String::from("Subject: nested\r\nMIME-Version: 1.0\r\n");
    for i in 0..depth {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    m.push_str("\r\ninnermost\r\n");
    let path = sb.dir.path().join("nested.eml");
    std::fs::write(&path, &m).unwrap();
    let (ok, t) = swaks(
        sb.port,
        &[
            "--from",
            "a@example.org",
            "--to",
            "bob@example.test",
            "--data",
            path.to_str().unwrap(),
        ],
    );
    assert!(ok, "{}", &t[t.len().saturating_sub(400)..]);
    let held = sb.list("held");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["subject"], "nested");
    still_serving(&sb);
}
