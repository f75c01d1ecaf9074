//! Filtering at the MX listener (`[filter]`): a client on a DNS blocklist is answered
//! 554 at connect with the list's reason and kept out; a client no list names, one only
//! a list's error answer names, and any client while the lists do not answer are let in
//! (an unreachable filter never costs mail). Real dnsmasq serving the list zones, real
//! clients from several loopback addresses.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::dns::{DeadDns, Dns};
use common::*;

/// A TCP connection to the standby from `from` (a loopback address other than
/// 127.0.0.1, as a client elsewhere would be).
fn connect_from(from: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect(&remote.into()).unwrap();
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp
}

fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l
}

fn send_from(sb: &Standby, from: &str) -> (bool, String) {
    swaks(
        sb.port,
        &[
            "--local-interface",
            from,
            "--from",
            "sender@example.org",
            "--to",
            "carol@example.test",
        ],
    )
}

#[test]
fn a_listed_client_is_refused_at_connect_others_are_let_in() {
    let pf = Postfix::primary();
    let dns = Dns::start_full(
        &[],
        &[
            // RFC 5782's test entry, with a reason.
            (
                "2.0.0.127.zen.test",
                "Listed in zen.test; see https://zen.test/q?127.0.0.2",
            ),
            // Each zone's own record makes dnsmasq authoritative for it: names it has
            // no record of are NXDOMAIN (not listed), as from a real list.
            ("zen.test", "a test list"),
            ("err.test", "a list that answers errors"),
        ],
        &[
            ("2.0.0.127.zen.test", "127.0.0.2"),
            // Spamhaus's answer for a refused query: not a listing.
            ("3.0.0.127.err.test", "127.255.255.254"),
        ],
    );
    let sb = Standby::start_with_env(
        pf.port,
        &format!(
            "[filter]\ndnsbl = [\"zen.test\", \"err.test\"]\nnameserver = \"{}\"\n",
            dns.addr()
        ),
        &[],
    );

    // Listed: 554 with the reason instead of the greeting, then 503 until QUIT.
    let (ok, t) = send_from(&sb, "127.0.0.2");
    assert!(!ok, "{t}");
    assert!(
        t.contains("554 5.7.1")
            && t.contains("client [127.0.0.2] blocked using zen.test; Listed in zen.test"),
        "{t}"
    );
    let tcp = connect_from("127.0.0.2", sb.port);
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let greeting = line(&mut r);
    assert!(greeting.starts_with("554 5.7.1 "), "{greeting}");
    (&tcp).write_all(b"EHLO client.example\r\n").unwrap();
    let reply = line(&mut r);
    assert!(reply.starts_with("503 5.5.1"), "{reply}");
    (&tcp).write_all(b"MAIL FROM:<x@example.org>\r\n").unwrap();
    let reply = line(&mut r);
    assert!(reply.starts_with("503 5.5.1"), "{reply}");
    (&tcp).write_all(b"QUIT\r\n").unwrap();
    let reply = line(&mut r);
    assert!(reply.starts_with("221 "), "{reply}");
    assert_eq!(line(&mut r), "", "closed after QUIT");

    // Not listed anywhere: let in, filtered (every list answered).
    let (ok, t) = send_from(&sb, "127.0.0.1");
    assert!(ok && t.contains("250 2.0.0"), "{t}");
    assert!(!sb.log().contains("unfiltered"), "{}", sb.log());
    // Named only by a list's error answer: let in, logged unfiltered with the answer.
    let (ok, t) = send_from(&sb, "127.0.0.3");
    assert!(ok && t.contains("250 2.0.0"), "{t}");
    assert!(
        sb.log().contains("err.test answered 127.255.255.254"),
        "{}",
        sb.log()
    );
    assert_eq!(
        sb.list("held").len(),
        2,
        "the two let in are held, nothing else"
    );
}

/// One list whose servers do not answer: it costs only its own verdict, within
/// `dnsbl_timeout_secs`; another list's listing still keeps its client out, and a client
/// no answering list names is let in, logged as unfiltered.
#[test]
fn a_list_that_does_not_answer_costs_only_its_own_verdict() {
    let pf = Postfix::primary();
    let dead = DeadDns::start();
    let dns = Dns::start_forwarding(
        &[],
        &[("zen.test", "a test list")],
        &[("2.0.0.127.zen.test", "127.0.0.2")],
        &[("dead.test", dead.addr())],
    );
    let sb = Standby::start_with_env(
        pf.port,
        &format!(
            "[filter]\ndnsbl = [\"dead.test\", \"zen.test\"]\nnameserver = \"{}\"\n\
             dnsbl_timeout_secs = 2\n",
            dns.addr()
        ),
        &[],
    );
    let (ok, t) = send_from(&sb, "127.0.0.2");
    assert!(
        !ok && t.contains("554 5.7.1") && t.contains("blocked using zen.test"),
        "{t}"
    );
    let started = Instant::now();
    let (ok, t) = send_from(&sb, "127.0.0.1");
    let took = started.elapsed();
    assert!(ok && t.contains("250 2.0.0"), "{t}");
    assert!(
        took < Duration::from_secs(4),
        "the greeting waited {took:?} for lists bounded to 2 s"
    );
    let log = sb.log();
    assert!(
        log.contains("dead.test: no answer in time") && log.contains("unfiltered"),
        "the unfiltered session is logged: {log}"
    );
}

/// A listed client that does not QUIT: ten commands answered 503, then 421 and the
/// connection closed; a line that never ends closes it too.
#[test]
fn a_refused_client_is_not_kept_long() {
    let pf = Postfix::primary();
    let dns = Dns::start_full(
        &[],
        &[("zen.test", "a test list")],
        &[("2.0.0.127.zen.test", "127.0.0.2")],
    );
    let sb = Standby::start_with_env(
        pf.port,
        &format!(
            "[filter]\ndnsbl = [\"zen.test\"]\nnameserver = \"{}\"\n",
            dns.addr()
        ),
        &[],
    );
    let tcp = connect_from("127.0.0.2", sb.port);
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    assert!(line(&mut r).starts_with("554 5.7.1 "));
    (&tcp).write_all("NOOP\r\n".repeat(15).as_bytes()).unwrap();
    for i in 0..10 {
        let reply = line(&mut r);
        assert!(reply.starts_with("503 5.5.1"), "{i}: {reply}");
    }
    let reply = line(&mut r);
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
    assert_eq!(line(&mut r), "", "closed");

    let tcp = connect_from("127.0.0.2", sb.port);
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    assert!(line(&mut r).starts_with("554 5.7.1 "));
    // Far more than a command line, without its end (the server may close mid-way).
    let _ = (&tcp).write_all(&vec![b'x'; 64 * 1024]);
    let reply = line(&mut r);
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
}

/// The message body GTUBE's test patterns need: the pattern in a text part of some length.
fn tube(pattern: char) -> String {
    format!(
        "{pattern}JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n\
         This line only makes the text part long enough for the pattern to count.\n"
    )
}

/// A real rspamd (Debian's) in front of the MX listener (`[filter] rspamd_url`): GTUBE is
/// refused at DATA with 554 and rspamd's reason, nothing stored; GTUBE's "add header"
/// variant is stored as spam (the Junk view's verdict); with rspamd stopped the same mail
/// is taken at once and recorded unfiltered. The submission listener's mail is never
/// sent to it. The verdicts travel with the message in the spool: an index rebuilt by
/// `standby reindex` still has them.
#[test]
fn rspamd_refuses_gtube_keeps_spam_for_the_junk_view_and_when_down_lets_mail_in_unfiltered() {
    let mut rspamd = common::rspamd::Rspamd::start();
    let primary = FakePrimary::start(vec![FakeReply::Busy421; 64]);
    let mut sb = Standby::start(
        primary.port,
        &format!(
            "[filter]\nrspamd_url = \"{}\"\nrspamd_timeout_secs = 20\n",
            rspamd.url()
        ),
    );
    let send = |body: &str| {
        swaks(
            sb.port,
            &[
                "--from",
                "a@example.org",
                "--to",
                "bob@example.test",
                "--body",
                body,
            ],
        )
    };
    let (ok, t) = send(&tube('X'));
    assert!(!ok, "{t}");
    assert!(t.contains("<** 554 5.7.1 Gtube pattern"), "{t}");
    assert!(sb.list("held").is_empty(), "nothing stored");

    let (ok, t) = send(&tube('Y'));
    assert!(ok, "{t}");
    let spam = queued_id(&t);
    assert_eq!(
        sb.json(&["show", &spam, "--json"])["verdicts"]["spam"],
        "FAIL",
        "stored as spam"
    );

    rspamd.stop();
    let started = Instant::now();
    let (ok, t) = send(&tube('X'));
    assert!(ok, "rspamd down: taken: {t}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not held up by the dead filter: {:?}",
        started.elapsed()
    );
    let unfiltered = queued_id(&t);
    assert_eq!(
        sb.json(&["show", &unfiltered, "--json"])["verdicts"]["spam"],
        "UNFILTERED"
    );
    assert!(
        sb.log()
            .contains("content filter: no verdict; message taken unfiltered"),
        "logged"
    );

    // The index lost: rebuilt from the spool, with the verdicts.
    assert!(sb.terminate().success());
    let data = sb.dir.path().join("data");
    for f in ["index.db", "index.db-wal", "index.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let report = sb.json(&["reindex", "--json"]);
    assert_eq!(report["reindexed"], 2, "{report}");
    for (id, verdict) in [(&spam, "FAIL"), (&unfiltered, "UNFILTERED")] {
        assert_eq!(
            sb.json(&["show", id, "--json"])["verdicts"]["spam"],
            verdict,
            "{id} after reindex"
        );
    }
}
