//! The listener under clients that try to hold it: floods of non-reading, pipelining
//! sockets and slowloris sockets from a few addresses, clients that trickle bytes or
//! never read, connection bursts; and who may send what: journal copies only from
//! `[journal] allow`, nothing past the hop limit, no LHLO, no MAIL when the disk is
//! nearly full. Everything against the real `standby serve` on loopback, with clients
//! bound to their own 127.0.0.x source addresses.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};

/// A connection to the standby from the source address `from`.
fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap_or_else(|e| panic!("connect from {from}: {e}"));
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sockets fed `line` one byte each `every` (slowloris) by a thread, until stopped.
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Trickle {
    fn start(mut sockets: Vec<TcpStream>, line: &'static [u8], every: Duration) -> Trickle {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut k = 0;
            while !stopped.load(Ordering::Relaxed) {
                for s in &mut sockets {
                    let _ = s.write(&line[k % line.len()..k % line.len() + 1]);
                }
                k += 1;
                std::thread::sleep(every);
            }
        });
        Trickle { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// The standby with the primary down (421 banner): what is accepted stays held.
fn standby(env: &[(&str, &str)]) -> (Standby, FakePrimary) {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start_with_env(fake.port, "", env);
    (sb, fake)
}

/// The first reply line, or what the socket said instead (EOF, timeout).
fn first_line(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => buf.push(b[0]),
            Ok(_) => return format!("EOF after {:?}", String::from_utf8_lossy(&buf)),
            Err(e) => return format!("{e} after {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

/// Read until a line starting with `prefix` arrives; returns when it did.
fn wait_line(s: &mut TcpStream, prefix: &str, within: Duration) -> Option<Instant> {
    let end = Instant::now() + within;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&text)
                    .lines()
                    .any(|l| l.starts_with(prefix))
                {
                    return Some(Instant::now());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    None
}

/// 300 sockets that pipeline NOOPs and never read (200 stay under the junk-command
/// limit and just sit there, 100 pipeline 20,000 each), and 50 that trickle a byte a
/// second, from eight addresses: a client from another address still has its message
/// accepted within 5 s, and the sockets past the per-address cap were told why.
#[test]
fn a_flood_from_a_few_addresses_leaves_room_for_everyone_else() {
    let (sb, _p) = standby(&[]);
    let few = "NOOP\r\n".repeat(90);
    let many = "NOOP\r\n".repeat(20_000);
    let mut hogs = Vec::new();
    for i in 0..300 {
        let from = Ipv4Addr::new(127, 0, 0, 2 + (i % 6) as u8);
        let mut s = connect_from(from, sb.port);
        s.set_nonblocking(true).unwrap();
        let noops = if i < 200 { &few } else { &many };
        let _ = s.write(noops.as_bytes());
        hogs.push(s);
    }
    let slow: Vec<TcpStream> = (0..50)
        .map(|i| connect_from(Ipv4Addr::new(127, 0, 0, 8 + (i % 2) as u8), sb.port))
        .collect();
    let trickle = Trickle::start(slow, b"EHLO slowloris.example\r\n", Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let (ok, t) = swaks(
        sb.port,
        &[
            "--from",
            "a@example.org",
            "--to",
            "bob@example.test",
            "--body",
            "tok-flood",
        ],
    );
    let took = started.elapsed();
    trickle.stop();
    for l in sb.log().lines().filter(|l| l.contains("DBG")) {
        eprintln!("{l}");
    }
    assert!(ok, "the flood kept a normal client out:\n{t}");
    assert!(took < Duration::from_secs(5), "took {took:?}:\n{t}");

    // 20 admitted per address (the first of the quiet ones), the other 180 told why.
    let mut refused = 0;
    for s in &mut hogs {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let l = first_line(s);
        if l.starts_with("421 4.7.0") {
            refused += 1;
        } else {
            assert!(l.starts_with("220 "), "{l}");
        }
    }
    eprintln!("swaks under the flood: 250 after {took:?}; {refused} of 300 hogs refused");
    assert_eq!(refused, 300 - 6 * 20);
    assert_eq!(sb.list("held").len(), 1);
}

/// Clients spread over ten addresses fill every slot (under every per-address cap) and
/// then idle between commands, or trickle a command a byte every 2 s, well within the
/// 300 s command timeout. Stress mode (fewer than a fifth of the slots free) cuts every
/// wait to 10 s and every command line to 10 s however its bytes come: sessions are
/// told `421 4.4.2` until a fifth of the slots is free, and a client from another
/// address gets its 250 within 20 s, not after 300.
#[test]
fn idle_or_trickling_sessions_on_every_slot_give_them_back_under_stress() {
    for trickling in [0, 20] {
        slots_come_back_under_stress(trickling);
    }
}

fn slots_come_back_under_stress(trickling: usize) {
    let (sb, _p) = standby(&[
        ("STANDBY_MAX_CONNECTIONS", "20"),
        ("STANDBY_COMMAND_TIMEOUT_SECS", "300"),
    ]);
    let mut held: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = connect_from(Ipv4Addr::new(127, 0, 1, 1 + (i % 10) as u8), sb.port);
            assert!(first_line(&mut s).starts_with("220 "));
            s.write_all(b"EHLO idle.example\r\n").unwrap();
            assert!(wait_line(&mut s, "250 ", Duration::from_secs(5)).is_some());
            s
        })
        .collect();
    let mut late = connect_from(Ipv4Addr::new(127, 0, 2, 1), sb.port);
    assert!(
        first_line(&mut late).starts_with("421 4.7.0"),
        "every slot should be taken"
    );
    let slow = held[20 - trickling..]
        .iter()
        .map(|s| s.try_clone().unwrap())
        .collect();
    let trickle = Trickle::start(
        slow,
        b"NOOP trickled one byte at a time",
        Duration::from_secs(2),
    );
    let started = Instant::now();
    let mut cut = 0;
    for s in &mut held {
        // What came in the window, also on a socket looked at after it closed.
        let left = Duration::from_secs(20)
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(300));
        if wait_line(s, "421 4.4.2", left).is_some() {
            cut += 1;
        }
    }
    let took = started.elapsed();
    eprintln!("{trickling} of 20 trickling: {cut} sessions told 421 4.4.2 within {took:?}");
    assert!(
        cut >= 4,
        "{trickling} trickling: only {cut} of 20 slots came back under stress"
    );
    let (ok, t) = swaks(
        sb.port,
        &[
            "--from",
            "a@example.org",
            "--to",
            "bob@example.test",
            "--body",
            "tok-stress",
        ],
    );
    trickle.stop();
    assert!(ok, "{trickling} trickling: {t}");
}

/// A client that streams bytes without a line end as fast as it can (its read is always
/// ready) is cut off at the command timeout all the same.
#[test]
fn a_line_that_never_ends_is_cut_off_however_fast_it_comes() {
    let (sb, _p) = standby(&[("STANDBY_COMMAND_TIMEOUT_SECS", "3")]);
    let mut s = connect_from(Ipv4Addr::new(127, 0, 3, 1), sb.port);
    assert!(first_line(&mut s).starts_with("220 "));
    let mut w = s.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let chunk = [b'x'; 64 * 1024];
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && w.write_all(&chunk).is_ok() {}
    });
    let started = Instant::now();
    let told = wait_line(&mut s, "421 4.4.2", Duration::from_secs(15));
    drop(s);
    let _ = flood.join();
    assert!(
        told.is_some(),
        "a never-ending line kept its session for {:?} (command timeout 3 s)",
        started.elapsed()
    );
}

/// A client that trickles a command a byte at a time is cut off after the command
/// timeout although it never stops sending; one that keeps sending whole commands is
/// cut off at the session's end; and DATA slower than the minimum rate ends with 421
/// and nothing stored.
#[test]
fn trickling_clients_are_cut_off() {
    let (sb, _p) = standby(&[
        ("STANDBY_COMMAND_TIMEOUT_SECS", "3"),
        ("STANDBY_SESSION_TIMEOUT_SECS", "6"),
    ]);
    let trickle = |s: &mut TcpStream, bytes: &[u8], every: Duration, until: Duration| {
        let mut w = s.try_clone().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let end = Instant::now() + until;
            for b in bytes.iter().cycle() {
                if Instant::now() > end || w.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(every);
            }
        })
    };
    // A byte every 0.4 s, never a whole line: cut at 3 s.
    let mut a = connect_from(Ipv4Addr::new(127, 0, 0, 2), sb.port);
    assert!(first_line(&mut a).starts_with("220 "));
    let t0 = Instant::now();
    let w = trickle(
        &mut a,
        b"NOOPNOOP",
        Duration::from_millis(400),
        Duration::from_secs(12),
    );
    let at =
        wait_line(&mut a, "421 4.4.2", Duration::from_secs(10)).expect("421 for the slowloris");
    let took = at - t0;
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    drop(w);

    // Whole NOOPs every 0.4 s: every command answered, cut at the session's 6 s.
    let mut b = connect_from(Ipv4Addr::new(127, 0, 0, 3), sb.port);
    let t0 = Instant::now();
    assert!(first_line(&mut b).starts_with("220 "));
    let _w = trickle(
        &mut b,
        b"NOOP\r\n",
        Duration::from_millis(70),
        Duration::from_secs(12),
    );
    let at =
        wait_line(&mut b, "421 4.4.2", Duration::from_secs(10)).expect("421 at the session's end");
    let took = at - t0;
    assert!(
        took >= Duration::from_millis(5500) && took < Duration::from_secs(8),
        "{took:?}"
    );

    // DATA at ~14 bytes a second, under 1000: cut after the 10 s grace, nothing stored
    // (a standby with the default session length).
    let (sb, _p) = standby(&[("STANDBY_MIN_DATA_RATE_BYTES_PER_SEC", "1000")]);
    let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 4), sb.port);
    assert!(first_line(&mut c).starts_with("220 "));
    c.write_all(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .unwrap();
    let t0 = Instant::now();
    let _w = trickle(
        &mut c,
        b"Subject: slow\r\n",
        Duration::from_millis(70),
        Duration::from_secs(20),
    );
    let at = wait_line(&mut c, "421 4.4.2", Duration::from_secs(16)).expect("421 for slow DATA");
    let took = at - t0;
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "{took:?}"
    );
    assert!(sb.list("all").is_empty());
}

/// A client that pipelines and never reads its replies loses its slot after the
/// command timeout: the next connection from its address (cap: one) is served.
#[test]
fn a_client_that_never_reads_is_dropped() {
    let (sb, _p) = standby(&[
        ("STANDBY_COMMAND_TIMEOUT_SECS", "3"),
        ("STANDBY_MAX_CONNECTIONS_PER_IP", "1"),
    ]);
    let from = Ipv4Addr::new(127, 0, 0, 6);
    let mut deaf = connect_from(from, sb.port);
    deaf.set_nonblocking(true).unwrap();
    // EHLO: not a junk command, and each reply is long, so replies pile up fast.
    let noops = "EHLO deaf.example\r\n".repeat(100_000);
    let mut sent = 0;
    let t0 = Instant::now();
    // Keep the server's replies piling up until both socket buffers are full.
    while t0.elapsed() < Duration::from_secs(2) {
        match deaf.write(&noops.as_bytes()[sent % noops.len()..]) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut other = connect_from(from, sb.port);
    let l = first_line(&mut other);
    assert!(l.starts_with("421 4.7.0"), "the cap of one holds: {l}");
    let mut freed = None;
    while t0.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(250));
        let mut next = connect_from(from, sb.port);
        if first_line(&mut next).starts_with("220 ") {
            freed = Some(t0.elapsed());
            break;
        }
    }
    let freed = freed.expect("the deaf client's slot was never freed");
    assert!(freed < Duration::from_secs(8), "{freed:?}");
    assert!(sb.log().contains("client does not read its replies"));
}

/// More than `max_connection_rate_per_ip` connections a minute from one address get
/// 421 4.7.0; another address is not affected.
#[test]
fn connection_rate_per_address() {
    let (sb, _p) = standby(&[("STANDBY_MAX_CONNECTION_RATE_PER_IP", "5")]);
    let from = Ipv4Addr::new(127, 0, 0, 7);
    for n in 1..=6 {
        let mut s = connect_from(from, sb.port);
        let l = first_line(&mut s);
        if n <= 5 {
            assert!(l.starts_with("220 "), "{n}: {l}");
            s.write_all(b"QUIT\r\n").unwrap();
        } else {
            assert!(
                l.starts_with("421 4.7.0") && l.contains("per minute"),
                "{n}: {l}"
            );
        }
    }
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 8), sb.port);
    assert!(first_line(&mut s).starts_with("220 "));
}

/// LHLO is refused; MAIL gets 452 4.3.1 when the spool's disk is short of
/// `min_free_bytes`; a message with more than 50 `Received:` fields is a loop (554 5.4.6)
/// and one with 50 is accepted.
#[test]
fn lhlo_free_space_and_hop_count() {
    let (sb, _p) = standby(&[]);
    let received = |n: usize| "Received: from a by b; Thu, 3 Dec 2026 10:00:00 +0000\r\n".repeat(n);
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    write!(
        s,
        "LHLO c\r\nEHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
         {}Subject: loop\r\n\r\nx\r\n.\r\n\
         MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
         {}Subject: fine\r\n\r\nx\r\n.\r\nQUIT\r\n",
        received(51),
        received(50)
    )
    .unwrap();
    let r = replies(&mut s, 11);
    let finals: Vec<&str> = r
        .lines()
        .filter(|l| l.len() > 3 && &l[3..4] == " ")
        .map(|l| &l[..9])
        .collect();
    assert_eq!(
        finals,
        [
            "502 5.5.1",
            "250 ENHAN",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "554 5.4.6",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "250 2.0.0",
            "221 2.0.0"
        ],
        "{r}"
    );
    let held = sb.list("held");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["subject"], "fine");

    let (full, _p2) = standby(&[("STANDBY_MIN_FREE_BYTES", "18446744073709551615")]);
    let mut s = connect(full.port);
    replies(&mut s, 1);
    s.write_all(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n")
        .unwrap();
    let r = replies(&mut s, 3);
    assert!(r.contains("452 4.3.1 Insufficient system storage"), "{r}");
}

/// Journal addresses take mail only from `[journal] allow`: another client gets
/// 550 5.7.1 and nothing is stored; an allowed one's copy is filed as journal.
#[test]
fn journal_copies_only_from_allowed_clients() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(
        fake.port,
        "[journal]\naddresses = [\"journal@archive.example.test\"]\nallow = [\"127.0.0.5/32\"]\n",
    );
    let send = |from: Ipv4Addr| {
        let mut s = connect_from(from, sb.port);
        first_line(&mut s);
        s.write_all(
            b"EHLO primary.example.test\r\nMAIL FROM:<a@example.org>\r\n\
              RCPT TO:<journal+bob=example.test@archive.example.test>\r\n",
        )
        .unwrap();
        let r = replies(&mut s, 3);
        let last = r.lines().last().unwrap_or_default().to_string();
        if last.starts_with("250") {
            s.write_all(b"DATA\r\nSubject: j\r\nTo: bob@example.test\r\n\r\nx\r\n.\r\nQUIT\r\n")
                .unwrap();
            let r = replies(&mut s, 2);
            assert!(r.contains("250 2.0.0"), "{r}");
        }
        last
    };
    let refused = send(Ipv4Addr::new(127, 0, 0, 1));
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    assert!(sb.list("all").is_empty());
    let accepted = send(Ipv4Addr::new(127, 0, 0, 5));
    assert!(accepted.starts_with("250 2.1.5"), "{accepted}");
    let journal = sb.list("journal");
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(
        journal[0]["rcpt_to"],
        serde_json::json!(["bob@example.test"])
    );
}
