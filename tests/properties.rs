//! Property tests over the SMTP session state machine and the summary parser: whatever
//! a client sends, the session answers with well-formed replies, never accepts a
//! recipient outside our domains, never starts DATA without an accepted recipient, and
//! the summary parser neither panics nor returns unbounded fields. Every address it
//! accepts (quoted local parts with any byte included) serialises to an RFC 5321 form
//! that parses back to the same address and cannot carry anything else onto the wire.

use proptest::prelude::*;
use standby::model::Address;
use standby::smtp::session::{Next, Policy, Session};

fn policy() -> Policy {
    Policy {
        hostname: "standby.test".into(),
        authserv_ids: Vec::new(),
        domains: ["example.test".to_string()].into(),
        recipients: None,
        max_message_size: 1000,
        max_recipients: 3,
        tls_available: true,
        journal: Default::default(),
        journal_allow: Default::default(),
        postmaster: Some("postmaster@example.test".into()),
        submission: None,
    }
}

/// A quoted local part of arbitrary bytes, as a client might send it: any byte, often
/// printable ASCII (space, `"`, `\\`, `<`, `>`, `;`, `=` included) or a UTF-8 character so
/// that many are accepted; some backslash-escaped (what `"` and `\\` need to stay inside
/// the quotes).
fn quoted_local() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        2 => any::<u8>().prop_map(|b| vec![b]),
        5 => (0x20u8..0x7f).prop_map(|b| vec![b]),
        2 => prop::sample::select(&[' ', '"', '\\', '<', '>', ';', '=', '.', '('][..])
            .prop_map(|c| vec![c as u8]),
        1 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
    ];
    prop::collection::vec((piece, any::<bool>()), 1..24).prop_map(|pieces| {
        let mut out = vec![b'"'];
        for (bytes, escape) in pieces {
            if bytes.len() == 1 && (escape || bytes[0] == b'"' || bytes[0] == b'\\') {
                out.push(b'\\');
            }
            out.extend_from_slice(&bytes);
        }
        out.push(b'"');
        out
    })
}

/// Outside the quotes of a serialised address: no space, `>`, CR or LF.
fn safe_outside_quotes(wire: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in wire.chars() {
        if c == '\r' || c == '\n' {
            return false;
        }
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '>' | '<' if !quoted => return false,
            _ => {}
        }
    }
    !quoted
}

/// Command lines a client (or an attacker) might send: real verbs with hostile
/// arguments, and raw bytes.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let addr = prop_oneof![
        Just("<bob@example.test>".to_string()),
        Just("<>".to_string()),
        "<[a-z%!@:,\\[\\]\"\\\\.]{0,30}@?[a-z.\\[\\]0-9:]{0,20}>",
        "[ -~]{0,40}",
    ];
    prop_oneof![
        "(EHLO|HELO|LHLO) [ -~]{0,20}".prop_map(|s| s.into_bytes()),
        addr.clone()
            .prop_map(|a| format!("MAIL FROM:{a}").into_bytes()),
        addr.prop_map(|a| format!("RCPT TO:{a}").into_bytes()),
        Just(b"DATA".to_vec()),
        Just(b"RSET".to_vec()),
        Just(b"NOOP".to_vec()),
        Just(b"STARTTLS".to_vec()),
        Just(b"AUTH PLAIN AGJvYgBwdw==".to_vec()),
        Just(b"BDAT 10 LAST".to_vec()),
        quoted_local().prop_map(|q| [&b"RCPT TO:<"[..], &q, b"@example.test>"].concat()),
        quoted_local().prop_map(|q| [&b"MAIL FROM:<"[..], &q, b"@sender.test> SMTPUTF8"].concat()),
        "VRFY [ -~]{0,20}".prop_map(|s| s.into_bytes()),
        prop::collection::vec(any::<u8>(), 0..80),
    ]
    .prop_map(|mut l| {
        l.retain(|b| *b != b'\n');
        l.extend_from_slice(b"\r\n");
        l
    })
}

fn well_formed(reply: &str) -> bool {
    !reply.is_empty()
        && reply.ends_with("\r\n")
        && reply.split_terminator("\r\n").all(|l| {
            let b = l.as_bytes();
            b.len() >= 4
                && b[..3].iter().all(u8::is_ascii_digit)
                && (b[3] == b' ' || b[3] == b'-')
                && l.chars().all(|c| c != '\r' && c != '\n')
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn session_invariants(lines in prop::collection::vec(line(), 1..40)) {
        let p = policy();
        let mut s = Session::new(&p, false);
        prop_assert!(well_formed(&s.greeting()));
        for l in &lines {
            let step = s.handle(l);
            prop_assert!(well_formed(&step.reply), "{:?} -> {:?}", String::from_utf8_lossy(l), step.reply);
            for r in s.rcpts() {
                let domain = r.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
                prop_assert_eq!(domain.as_deref(), Some("example.test"), "accepted {}", r);
                prop_assert!(!r.contains(['%', '!', ':']), "accepted routed {}", r);
            }
            prop_assert!(s.rcpts().len() <= 3);
            match step.next {
                Next::Data => {
                    prop_assert!(s.mail_from().is_some() && !s.rcpts().is_empty());
                    prop_assert!(step.reply.starts_with("354"));
                    // The client sends nothing; the transaction ends as if it were refused.
                    s.data_done(standby::smtp::session::DataOutcome::TooBig);
                }
                Next::StartTls => { s.tls_started(); }
                Next::Close => break,
                Next::Command => {}
                // The MX listener offers no AUTH: never asked to check a login.
                Next::Authenticate => prop_assert!(false, "AUTH on the MX listener"),
            }
        }
    }

    /// Accepted, serialised, parsed: the same address, and nothing outside the quotes
    /// that could end the path or start a parameter.
    #[test]
    fn accepted_addresses_round_trip_through_their_wire_form(
        local in quoted_local(),
        smtputf8 in any::<bool>(),
    ) {
        let p = policy();
        let mut s = Session::new(&p, false);
        s.handle(b"EHLO c\r\n");
        let mail = if smtputf8 { &b"MAIL FROM:<> SMTPUTF8\r\n"[..] } else { b"MAIL FROM:<>\r\n" };
        prop_assert!(s.handle(mail).reply.starts_with("250"));
        let line = [&b"RCPT TO:<"[..], &local, b"@example.test>\r\n"].concat();
        let step = s.handle(&line);
        let shown = String::from_utf8_lossy(&line).into_owned();
        if !step.reply.starts_with("250") {
            prop_assert!(s.rcpts().is_empty());
            prop_assert!(step.reply.starts_with('5'), "{shown:?} -> {}", step.reply);
            return Ok(());
        }
        let stored = &s.rcpts()[0];
        let addr = Address::from_decoded(stored).expect("what is stored reads back");
        let wire = addr.to_smtp();
        prop_assert!(safe_outside_quotes(&wire), "{shown:?} -> {wire:?}");
        prop_assert_eq!(Address::parse(&wire), Ok(addr.clone()), "{:?} -> {:?}", shown, wire);
        prop_assert!(smtputf8 || addr.is_ascii());
        // The listener itself reads the wire form back as the same single address.
        let mut again = Session::new(&p, false);
        again.handle(b"EHLO c\r\n");
        again.handle(b"MAIL FROM:<> SMTPUTF8\r\n");
        let r = again.handle(format!("RCPT TO:<{wire}>\r\n").as_bytes());
        prop_assert!(r.reply.starts_with("250"), "{wire:?} -> {}", r.reply);
        prop_assert_eq!(&again.rcpts()[0], stored);
    }

    #[test]
    fn summary_parser_is_total_and_bounded(raw in prop::collection::vec(any::<u8>(), 0..4096),
                                           head in "(Subject|From|Message-ID|Date): [ -~]{0,3000}\r\n") {
        let mut msg = head.into_bytes();
        msg.extend_from_slice(&raw);
        let s = standby::summary::parse(&msg);
        for f in [&s.subject, &s.from, &s.message_id, &s.date].into_iter().flatten() {
            prop_assert!(f.len() <= 998 * 4, "field of {} bytes", f.len());
        }
        let _ = standby::summary::check_message(standby::summary::head(&msg));
    }
}
