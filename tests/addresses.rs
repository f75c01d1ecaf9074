//! Addresses are data: quoted and hostile local parts go through the real listener and
//! the drain to a real Postfix primary, and what goes onto the wire is each address
//! re-serialised in RFC 5321 form. An anonymous sender cannot inject ESMTP parameters
//! (`NOTIFY=SUCCESS`, `ORCPT=`, `RET=`) at the primary through a quoted local part, and a
//! real quoted address (`"john doe"@example.test`) arrives.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A TCP proxy in front of the primary that records what its clients send.
struct Recorder {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(upstream: u16) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_rd, mut s_wr) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_rd, mut c_wr) = (server, client);
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = c_rd.read(&mut buf) {
                        if n == 0 || s_wr.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = s_wr.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_rd, &mut c_wr);
                    let _ = c_wr.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Recorder { port, sent }
    }

    /// The command lines sent so far.
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.sent.lock().unwrap())
            .split("\r\n")
            .map(str::to_string)
            .collect()
    }
}

const JOHN: &str = "\"john doe\"@example.test";
const HOSTILE_RCPT: &str = "\"bob> NOTIFY=SUCCESS ORCPT=rfc822;x\"@example.test";
const HOSTILE_FROM: &str = "\"a> RET=FULL ENVID=x\"@example.org";

#[test]
fn quoted_and_hostile_local_parts_reach_the_primary_quoted() {
    let primary = Postfix::primary();
    primary.start();
    let wire = Recorder::start(primary.port);
    let lists = tempfile::tempdir().unwrap();
    let recipients = lists.path().join("recipients");
    std::fs::write(
        &recipients,
        format!("bob@example.test\n{JOHN}\n{HOSTILE_RCPT}\n"),
    )
    .unwrap();
    let sb = Standby::start(
        wire.port,
        &format!("recipients = \"{}\"\n", recipients.display()),
    );

    // A control character or an open bracket never gets that far.
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(
        b"EHLO c\r\nMAIL FROM:<a\x1b@example.org>\r\nMAIL FROM:<a@example.org\r\n\
          MAIL FROM:<a@example.org>\r\nRCPT TO:<\"bob\rx\"@example.test>\r\n\
          RCPT TO:<bob@example.test\r\nRCPT TO:<\"b\x7f\"@example.test>\r\nQUIT\r\n",
    )
    .unwrap();
    let r = replies(&mut s, 8);
    let finals: Vec<&str> = r
        .lines()
        .filter(|l| l.len() > 3 && &l[3..4] == " ")
        .map(|l| &l[..9])
        .collect();
    assert_eq!(
        finals,
        [
            "250 ENHAN",
            "501 5.1.7",
            "501 5.1.7",
            "250 2.1.0",
            "501 5.1.3",
            "501 5.1.3",
            "501 5.1.3",
            "221 2.0.0"
        ],
        "{r}"
    );

    let (ok, t) = swaks(
        sb.port,
        &[
            "--from",
            HOSTILE_FROM,
            "--to",
            &format!("{JOHN},{HOSTILE_RCPT}"),
            "--body",
            "tok-quoted",
        ],
    );
    assert!(ok, "{t}");
    wait_for("delivery to the primary", Duration::from_secs(60), || {
        primary
            .delivered()
            .iter()
            .filter(|m| String::from_utf8_lossy(m).contains("tok-quoted"))
            .count()
            == 2
    });

    // The wire: each address quoted as one, nothing after it but what we add ourselves.
    let lines = wire.lines();
    let mail: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("MAIL FROM:"))
        .collect();
    assert!(
        mail.iter()
            .any(|l| l.starts_with(&format!("MAIL FROM:<{HOSTILE_FROM}>"))),
        "{mail:?}"
    );
    for want in [JOHN, HOSTILE_RCPT] {
        assert!(
            lines.iter().any(|l| l == &format!("RCPT TO:<{want}>")),
            "RCPT TO:<{want}> not on the wire: {lines:?}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("NOTIFY=SUCCESS ORCPT=rfc822;x@")),
        "{lines:?}"
    );

    // Postfix took them as addresses: no success DSN for the injected NOTIFY, and each
    // message went to its own quoted recipient.
    let log = primary.maillog();
    assert!(
        !log.contains("sender delivery status notification"),
        "the primary sent a DSN:\n{log}"
    );
    let delivered: Vec<String> = primary
        .delivered()
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .filter(|m| m.contains("tok-quoted"))
        .collect();
    for want in [
        "Delivered-To: \"john doe\"@example.test",
        "Delivered-To: \"bob> NOTIFY",
    ] {
        assert!(
            delivered.iter().any(|m| m.contains(want)),
            "no message with {want}:\n{delivered:?}"
        );
    }
    assert_eq!(sb.list("delivered").len(), 1);
}

/// `<Postmaster>` (RFC 5321 §4.5.1) is accepted whatever the recipients file says and
/// relayed as `postmaster@` the first domain; a UTF-8 address needs SMTPUTF8 on MAIL.
#[test]
fn postmaster_and_smtputf8() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let lists = tempfile::tempdir().unwrap();
    let recipients = lists.path().join("recipients");
    std::fs::write(&recipients, "bob@example.test\n").unwrap();
    let sb = Standby::start(
        fake.port,
        &format!("recipients = \"{}\"\n", recipients.display()),
    );
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(
        "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<Postmaster>\r\n\
         RCPT TO:<postmaster@EXAMPLE.test>\r\nRCPT TO:<alice@example.test>\r\n\
         RCPT TO:<jörg@example.test>\r\nDATA\r\nSubject: pm\r\n\r\ntok-pm\r\n.\r\n\
         MAIL FROM:<jörg@exämple.org>\r\nMAIL FROM:<jörg@exämple.org> SMTPUTF8\r\n\
         RCPT TO:<bob@example.test>\r\nDATA\r\nSubject: utf8\r\n\r\ntok-utf8\r\n.\r\n\
         QUIT\r\n"
            .as_bytes(),
    )
    .unwrap();
    let r = replies(&mut s, 14);
    let finals: Vec<&str> = r
        .lines()
        .filter(|l| l.len() > 3 && &l[3..4] == " ")
        .map(|l| &l[..9])
        .collect();
    assert_eq!(
        finals[1..],
        [
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "550 5.1.1",
            "553 5.6.7",
            "354 End d",
            "250 2.0.0",
            "553 5.6.7",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "250 2.0.0",
            "221 2.0.0"
        ],
        "{r}"
    );
    let held = sb.list("held");
    let mut envelopes: Vec<(String, String)> = held
        .iter()
        .map(|m| {
            let rcpts: Vec<&str> = m["rcpt_to"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            (
                m["mail_from"].as_str().unwrap().to_string(),
                rcpts.join(","),
            )
        })
        .collect();
    envelopes.sort();
    assert_eq!(
        envelopes,
        [
            (
                "a@example.org".to_string(),
                "postmaster@example.test".to_string()
            ),
            (
                "jörg@exämple.org".to_string(),
                "bob@example.test".to_string()
            )
        ],
        "{held:?}"
    );
}

/// A UTF-8 envelope goes only to a primary that offers SMTPUTF8 (with the parameter on
/// MAIL); to one that does not, it is held with the reason, never sent as it is.
#[test]
fn utf8_envelopes_wait_for_a_primary_with_smtputf8() {
    let primary = Postfix::primary();
    primary.postconf(&["smtputf8_enable = no"]);
    primary.start();
    let wire = Recorder::start(primary.port);
    let sb = Standby::start(wire.port, "");
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(
        "EHLO c\r\nMAIL FROM:<jörg@exämple.org> SMTPUTF8\r\nRCPT TO:<bob@example.test>\r\n\
         DATA\r\nSubject: utf8\r\n\r\ntok-utf8\r\n.\r\nQUIT\r\n"
            .as_bytes(),
    )
    .unwrap();
    let r = replies(&mut s, 5);
    assert!(r.contains("250 2.0.0"), "{r}");
    let id = sb.list("held")[0]["id"].as_str().unwrap().to_string();
    let mut reply = String::new();
    wait_for("a drain attempt", Duration::from_secs(60), || {
        let rec = sb.json(&["show", &id, "--json"]);
        reply = rec["rcpts"][0]["reply"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !reply.is_empty()
    });
    assert!(reply.contains("SMTPUTF8"), "{reply}");
    assert_eq!(sb.list("held").len(), 1);
    assert!(
        !wire.lines().iter().any(|l| l.starts_with("MAIL FROM:")),
        "{:?}",
        wire.lines()
    );
    assert!(primary.delivered().is_empty());

    // A primary that offers it gets the envelope, with the parameter.
    let able = Postfix::primary();
    able.start();
    let wire = Recorder::start(able.port);
    let sb = Standby::start(wire.port, "");
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(
        "EHLO c\r\nMAIL FROM:<jörg@exämple.org> SMTPUTF8\r\nRCPT TO:<bob@example.test>\r\n\
         DATA\r\nSubject: utf8\r\n\r\ntok-utf8\r\n.\r\nQUIT\r\n"
            .as_bytes(),
    )
    .unwrap();
    replies(&mut s, 5);
    wait_for("delivery", Duration::from_secs(60), || {
        !able.delivered().is_empty()
    });
    assert!(
        wire.lines()
            .iter()
            .any(|l| l.starts_with("MAIL FROM:<jörg@exämple.org>") && l.contains(" SMTPUTF8")),
        "{:?}",
        wire.lines()
    );
}
