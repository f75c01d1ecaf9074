//! No backscatter: when the primary (a real Postfix) permanently refuses a recipient of held
//! mail, exactly one DSN goes back, through the primary, and only to a sender whose SPF
//! passed (checked by `standby serve` after the 250, against a real DNS server, dnsmasq). Forged,
//! unauthenticated and null senders get nothing; their messages are parked as failed with
//! the reason, for the operator.

mod common;

use std::time::Duration;

use common::dns::Dns;
use common::*;
use serde_json::Value;

/// (envelope sender as given to swaks, the SPF verdict the standby must record).
const SENDERS: [(&str, Option<&str>); 5] = [
    ("alice@example.test", Some("PASS")),
    ("mallory@forged.test", Some("FAIL")),
    ("sam@soft.test", Some("SOFTFAIL")),
    ("nora@nospf.test", Some("NONE")),
    ("<>", None),
];

fn is_dsn(m: &[u8]) -> bool {
    String::from_utf8_lossy(m).contains("multipart/report")
}

#[test]
fn failed_mail_bounces_once_and_only_to_authenticated_senders() {
    // nospf.test exists (it has an MX record) but publishes no SPF policy.
    let dns = Dns::start_with(
        &[("nospf.test", 10, "mx.nospf.test")],
        &[
            ("example.test", "v=spf1 ip4:127.0.0.1 -all"),
            ("forged.test", "v=spf1 ip4:192.0.2.1 -all"),
            ("soft.test", "v=spf1 ~all"),
        ],
    );
    let pf = Postfix::primary();
    pf.rcpt_replies(&[("gone@example.test", "550 5.1.1 no such user here")]);
    let sb = Standby::start_with_env(
        pf.port,
        "",
        &[
            ("STANDBY_DSN_SPF", "true"),
            ("STANDBY_DSN_NAMESERVER", &dns.addr()),
        ],
    );

    // The primary is down: everything is held, with the sender's SPF result recorded.
    let mut ids = Vec::new();
    for (n, (from, _)) in SENDERS.iter().enumerate() {
        let (ok, t) = swaks(
            sb.port,
            &[
                "--from",
                from,
                "--to",
                "carol@example.test,gone@example.test",
                "--header",
                &format!("Subject: backscatter-{n}"),
            ],
        );
        assert!(ok, "{t}");
        let id = queued_id(&t);
        ids.push(id);
    }
    // The SPF check runs after the 250; its verdict lands on the record.
    for ((from, spf), id) in SENDERS.iter().zip(&ids) {
        let verdict = || sb.json(&["show", id, "--json"])["verdicts"]["spf"].clone();
        wait_for(
            &format!("{from}'s SPF verdict"),
            Duration::from_secs(20),
            || verdict() != "PENDING",
        );
        assert_eq!(verdict().as_str(), *spf, "{from}");
    }

    pf.start();
    wait_for(
        "five failed messages and one delivered DSN",
        Duration::from_secs(60),
        || {
            let c = sb.counts();
            c["failed"] == 5 && c["delivered"] == 1 && c["held"] == 0
        },
    );

    let failed = sb.list("failed");
    let by_id = |id: &str| -> Value {
        failed
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not failed: {failed:?}"))
    };
    let alice = by_id(&ids[0]);
    assert_eq!(alice["bounce"]["state"], "queued", "{alice}");
    let dsn_id = alice["bounce"]["id"].as_str().unwrap().to_string();
    for (id, why) in ids[1..]
        .iter()
        .zip(["SPF FAIL", "SPF SOFTFAIL", "SPF NONE", "null sender"])
    {
        let m = by_id(id);
        assert_eq!(m["bounce"]["state"], "suppressed", "{m}");
        let got = m["bounce"]["why"].as_str().unwrap();
        assert!(got.contains(why), "{id}: {got}");
        assert!(
            m["reason"].as_str().unwrap().starts_with("550 5.1.1"),
            "{m}"
        );
    }
    let dsn = sb.json(&["show", &dsn_id, "--json"]);
    assert_eq!(
        (&dsn["intake"], &dsn["mail_from"], &dsn["status"]),
        (
            &Value::from("dsn"),
            &Value::from(""),
            &Value::from("delivered")
        )
    );
    assert_eq!(dsn["rcpts"][0]["address"], "alice@example.test");

    // At the primary: every message reached carol, and exactly one DSN reached alice.
    wait_for(
        "postfix to deliver 6 messages",
        Duration::from_secs(30),
        || pf.delivered().len() == 6,
    );
    let delivered = pf.delivered();
    let dsns: Vec<String> = delivered
        .iter()
        .filter(|m| is_dsn(m))
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    let text = &dsns[0];
    for want in [
        "Return-Path: <>",
        "report-type=\"delivery-status\"",
        "Auto-Submitted: auto-replied",
        "Final-Recipient: rfc822; gone@example.test",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1",
        "Subject: backscatter-0",
        &format!("X-Standby-Id: {}", ids[0]),
    ] {
        assert!(text.contains(want), "DSN lacks {want:?}:\n{text}");
    }
    assert!(
        !text.contains("Final-Recipient: rfc822; carol@"),
        "delivered recipients are not reported"
    );

    // Another drain and several more serve-loop runs: still one DSN, nothing re-sent.
    let report = sb.drain_report(&["--force"], 0);
    assert_eq!(report["delivered"], 0, "{report}");
    // Two more probes mean at least one whole serve-loop drain run after this point.
    let probes = |sb: &Standby| sb.json(&["status", "--json"])["primary"]["probes_ok"].as_u64();
    let seen = probes(&sb).unwrap();
    wait_for("two more serve-loop runs", Duration::from_secs(30), || {
        probes(&sb).unwrap() >= seen + 2
    });
    pf.wait_queue_empty(Duration::from_secs(30));
    assert_eq!(pf.delivered().len(), 6);
    assert_eq!(sb.counts()["delivered"], 1);

    // The operator's view names what was parked and why.
    let out = sb.cli(&["list", "--status", "failed"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.matches("parked, no DSN").count(), 4, "{listing}");
    assert!(
        listing.contains(&format!("DSN {dsn_id} queued")),
        "{listing}"
    );
}
