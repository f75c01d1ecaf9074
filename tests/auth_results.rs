//! What the primary sees (RFC 8601): mail the standby hands back to a real Postfix primary
//! carries exactly one `Authentication-Results:` field with the standby's name
//! (`hostname`) as authserv-id and the SPF result it recorded for the original session
//! (looked up against a real DNS server, dnsmasq). Fields a sender forged under that name
//! are removed at receipt, so neither the stored copy nor the primary's has them; fields
//! of other hosts are left alone.

mod common;

use std::time::Duration;

use common::dns::Dns;
use common::*;

const OURS: &str = "Authentication-Results: standby.example.test";

fn ours(head: &str) -> Vec<String> {
    // Unfolded fields whose authserv-id is ours.
    let unfolded = head.replace("\n\t", " ").replace("\n ", " ");
    unfolded
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with(&OURS.to_ascii_lowercase())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn redelivered_mail_carries_one_authentication_results_of_ours_with_the_recorded_spf() {
    let dns = Dns::start_with(
        &[],
        &[
            ("example.org", "v=spf1 ip4:127.0.0.1 -all"),
            ("forged.test", "v=spf1 ip4:192.0.2.1 -all"),
        ],
    );
    let pf = Postfix::primary();
    let sb = Standby::start_with_env(
        pf.port,
        "",
        &[
            ("STANDBY_DSN_SPF", "true"),
            ("STANDBY_DSN_NAMESERVER", &dns.addr()),
        ],
    );
    // Each sender forges a pass under the standby's name, folded and in another case
    // for one of them, and adds a field of some other host, which must stay.
    let forged = [
        "Authentication-Results: standby.example.test; spf=pass smtp.mailfrom=forged.test",
        "Authentication-Results: (trust me)\n STANDBY.Example.Test.; dkim=pass",
        "Authentication-Results: mx.elsewhere.test; spf=fail",
    ];
    let mut ids = Vec::new();
    for (token, from) in [
        ("ar-pass", "alice@example.org"),
        ("ar-fail", "mallory@forged.test"),
    ] {
        let mut args = vec![
            "--from",
            from,
            "--to",
            "bob@example.test",
            "--header",
            "Subject: what the primary sees",
        ];
        let message_id = format!("Message-ID: <{token}@example.org>");
        args.extend(["--add-header", &message_id]);
        for f in &forged {
            args.extend(["--add-header", f]);
        }
        let (ok, t) = swaks(sb.port, &args);
        assert!(ok, "{t}");
        let id = queued_id(&t);
        ids.push((token, id));
    }
    for (token, id) in &ids {
        let verdict = || sb.json(&["show", id, "--json"])["verdicts"]["spf"].clone();
        wait_for(
            &format!("{token}'s SPF verdict"),
            Duration::from_secs(20),
            || verdict() != "PENDING",
        );
        // The stored copy already lost the forgeries and kept the other host's field.
        let raw = sb.cli(&["show", id, "--raw"]).stdout;
        let (head, _) = split_message(&raw);
        assert!(ours(&head).is_empty(), "stored {token}:\n{head}");
        for forgery in ["smtp.mailfrom=forged.test", "trust me"] {
            assert!(!head.contains(forgery), "stored {token}:\n{head}");
        }
        assert!(head.contains("mx.elsewhere.test; spf=fail"), "{head}");
    }

    pf.start();
    wait_for("the standby to drain", Duration::from_secs(60), || {
        sb.counts()["delivered"] == 2
    });
    wait_for(
        "postfix to deliver 2 copies",
        Duration::from_secs(20),
        || pf.delivered().len() == 2,
    );
    let delivered = pf.delivered();
    for (token, spf) in [
        (
            "ar-pass",
            "spf=pass (sender IP is 127.0.0.1) smtp.mailfrom=alice@example.org",
        ),
        (
            "ar-fail",
            "spf=fail (sender IP is 127.0.0.1) smtp.mailfrom=mallory@forged.test",
        ),
    ] {
        let needle = format!("Message-ID: <{token}@example.org>");
        let copy = delivered
            .iter()
            .find(|m| String::from_utf8_lossy(m).contains(&needle))
            .unwrap_or_else(|| panic!("no copy of {token}"));
        let (head, _) = split_message(copy);
        let fields = ours(&head);
        assert_eq!(fields.len(), 1, "{token}: one field of ours:\n{head}");
        assert_eq!(
            fields[0],
            format!("{OURS}; {spf}"),
            "{token}: the recorded verdict:\n{head}"
        );
        assert_eq!(head.matches("mx.elsewhere.test; spf=fail").count(), 1);
        for forgery in ["smtp.mailfrom=forged.test", "trust me"] {
            assert!(!head.contains(forgery), "{token}:\n{head}");
        }
    }
}
