//! Logs an operator can use: "why did my mail bounce?" answered from `standby serve`'s own
//! log at info level. A refused recipient (550 5.7.1) and an oversized message (552) are
//! logged with their codes, the client's IP and HELO and the domain involved, never the
//! address; the stored message with the client and its id; and its delivery to a real
//! Postfix primary with Postfix's reply and queue id, the same id Postfix's own maillog has
//! for that message, so one grep joins the two logs.

mod common;

use std::time::Duration;

use common::*;

const HELO: &str = "logs-client.example";

/// The value of `key=` in a log line (quoted or not).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

#[test]
fn refusals_stored_messages_and_deliveries_are_logged_for_the_operator() {
    let pf = Postfix::primary();
    // Info level, as the service runs: what an operator sees in the journal.
    let sb = Standby::start_with_env(
        pf.port,
        "max_message_size = 4000",
        &[("STANDBY_LOG", "info")],
    );

    // Refused: a domain we do not serve.
    let (ok, t) = swaks(
        sb.port,
        &[
            "--helo",
            HELO,
            "--from",
            "alice@example.org",
            "--to",
            "carol@foreign.test",
        ],
    );
    assert!(!ok && t.contains("550 5.7.1"), "{t}");
    // Refused: too big (after DATA).
    let body = "x".repeat(70);
    let big = std::iter::repeat_n(body.as_str(), 100)
        .collect::<Vec<_>>()
        .join("\n");
    let (ok, t) = swaks(
        sb.port,
        &[
            "--helo",
            HELO,
            "--from",
            "alice@example.org",
            "--to",
            "bob@example.test",
            "--body",
            &big,
        ],
    );
    assert!(!ok && t.contains("552 5.3.4"), "{t}");
    // Accepted and held (the primary is down).
    let t = sb.send(
        "bob@example.test",
        &[
            "--helo",
            HELO,
            "--header",
            "Message-ID: <logs-test-1@example.org>",
        ],
    );
    let id = queued_id(&t);

    // The primary comes back; the serve loop delivers.
    pf.start();
    wait_for(
        "the delivery attempt in the standby's log",
        Duration::from_secs(60),
        || {
            sb.log()
                .lines()
                .any(|l| l.contains("delivery attempt") && l.contains(&id))
        },
    );
    let log = sb.log();
    let lines: Vec<&str> = log.lines().collect();

    // Refusals: code, enhanced code, client IP, HELO, domain.
    let refused = |code: &str, enhanced: &str, domain: &str| {
        lines.iter().any(|l| {
            l.contains(" INFO ")
                && l.contains(" refused ")
                && field(l, "code") == Some(code)
                && field(l, "enhanced") == Some(enhanced)
                && field(l, "ip") == Some("127.0.0.1")
                && field(l, "helo") == Some(HELO)
                && field(l, "domain") == Some(domain)
        })
    };
    assert!(refused("550", "5.7.1", "foreign.test"), "{log}");
    assert!(refused("552", "5.3.4", "example.org"), "{log}");

    // The stored message: its id, the client's IP and HELO.
    assert!(
        lines.iter().any(|l| l.contains("message stored")
            && field(l, "id") == Some(id.as_str())
            && field(l, "ip") == Some("127.0.0.1")
            && field(l, "helo") == Some(HELO)),
        "{log}"
    );

    // The delivery: Postfix's reply and its queue id.
    let delivery = lines
        .iter()
        .find(|l| l.contains("delivery attempt") && field(l, "id") == Some(id.as_str()))
        .unwrap();
    assert_eq!(field(delivery, "outcome"), Some("delivered"), "{delivery}");
    assert_eq!(
        field(delivery, "domains"),
        Some("example.test"),
        "{delivery}"
    );
    let reply = field(delivery, "reply").unwrap();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{delivery}");
    let queue_id = field(delivery, "queue_id").unwrap();
    assert!(
        !queue_id.is_empty() && reply.ends_with(queue_id),
        "{delivery}"
    );
    // ... which Postfix's own log names for this very message.
    wait_for(
        "postfix to log the message",
        Duration::from_secs(30),
        || {
            pf.maillog()
                .contains(&format!("{queue_id}: message-id=<logs-test-1@example.org>"))
        },
    );

    // Addresses never appear at info, only their domains.
    for address in [
        "carol@foreign.test",
        "alice@example.org",
        "bob@example.test",
    ] {
        assert!(!log.contains(address), "{address} in the log:\n{log}");
    }
}
