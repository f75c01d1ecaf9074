//! ARC on redelivery (RFC 8617, `[arc]`): mail the standby hands back to a real Postfix
//! primary carries one ARC set of the standby's domain on top, whose
//! ARC-Authentication-Results repeat the standby's verdicts, and which verifies: checked
//! by mail-auth against the key in a real DNS server (dnsmasq) and by dkimpy, an
//! independent implementation. A message that came with a valid chain of another
//! sealer gets the next instance with `cv=pass`; one whose chain was broken on the way
//! gets no set of ours (a `cv=fail` would end the chain on a check made at redelivery,
//! not receipt), and `arc=fail` in the standby's results.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::dns::Dns;
use common::*;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, MessageAuthenticator,
    Parameters,
};

fn message(token: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\r\n\
         To: Bob <bob@example.test>\r\n\
         Subject: arc {token}\r\n\
         Message-ID: <{token}@example.org>\r\n\
         Date: Sun, 06 Dec 2026 10:00:00 +0000\r\n\
         \r\n\
         A body line   with  spaces.\r\n\
         \r\n\
         The end of {token}.\r\n"
    )
}

/// `raw` with an ARC set of forwarder.test on top, as a mailing list would seal it.
fn forwarder_sealed(raw: &str, key: &Path) -> String {
    let pem = std::fs::read_to_string(key).unwrap();
    let der = rustls_pemfile::private_key(&mut pem.as_bytes())
        .unwrap()
        .unwrap();
    let key = RsaKey::<Sha256>::from_key_der(der).unwrap();
    let msg = AuthenticatedMessage::parse(raw.as_bytes()).unwrap();
    let results = AuthenticationResults::new(
        "lists.forwarder.test; spf=pass smtp.mailfrom=alice@example.org",
    );
    let set = ArcSealer::from_key(key)
        .domain("forwarder.test")
        .selector("fwd")
        .headers(["From", "To", "Subject", "Message-ID", "Date"])
        .seal(&msg, &results, &ArcOutput::default())
        .unwrap();
    format!("{}{raw}", set.to_header())
}

/// `raw` with LF line ends made CRLF (Postfix's Maildir has LF).
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The unfolded header fields named `name` (case-insensitive).
fn fields(head: &str, name: &str) -> Vec<String> {
    let unfolded = head.replace("\n\t", " ").replace("\n ", " ");
    let prefix = format!("{}:", name.to_ascii_lowercase());
    unfolded
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
        .collect()
}

#[test]
fn redelivered_mail_carries_an_arc_set_that_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let (ours_dir, fwd_dir) = (keys.path().join("ours"), keys.path().join("fwd"));
    std::fs::create_dir_all(&ours_dir).unwrap();
    std::fs::create_dir_all(&fwd_dir).unwrap();
    let ours = dkim_key(&ours_dir);
    let fwd = dkim_key(&fwd_dir);
    let our_record = format!("v=DKIM1; k=rsa; p={}", ours.p);
    let fwd_record = format!("v=DKIM1; k=rsa; p={}", fwd.p);
    let dns = Dns::start_with(
        &[],
        &[
            ("example.org", "v=spf1 ip4:127.0.0.1 -all"),
            ("arc._domainkey.standby.example.test", &our_record),
            ("fwd._domainkey.forwarder.test", &fwd_record),
        ],
    );
    let pf = Postfix::primary();
    let extra = format!(
        "[arc]\ndomain = \"standby.example.test\"\nselector = \"arc\"\nkey = \"{}\"\nnameserver = \"{}\"\n",
        ours.key.display(),
        dns.addr()
    );
    let sb = Standby::start_with_env(
        pf.port,
        &extra,
        &[
            ("STANDBY_DSN_SPF", "true"),
            ("STANDBY_DSN_NAMESERVER", &dns.addr()),
        ],
    );

    let plain = message("arc-plain");
    let chained = forwarder_sealed(&message("arc-chained"), &fwd.key);
    // Sealed by the forwarder, then changed on the way: its chain no longer verifies.
    let broken = forwarder_sealed(&message("arc-broken"), &fwd.key).replace(
        "A body line   with  spaces.",
        "A body line changed on the way.",
    );
    let mut ids = Vec::new();
    for (token, raw) in [
        ("arc-plain", &plain),
        ("arc-chained", &chained),
        ("arc-broken", &broken),
    ] {
        let file = sb.dir.path().join(format!("{token}.eml"));
        std::fs::write(&file, raw).unwrap();
        let (ok, t) = swaks(
            sb.port,
            &[
                "--from",
                "alice@example.org",
                "--to",
                "bob@example.test",
                "--data",
                file.to_str().unwrap(),
            ],
        );
        assert!(ok, "{t}");
        ids.push((token, queued_id(&t)));
    }
    for (token, id) in &ids {
        wait_for(
            &format!("{token}'s SPF verdict"),
            Duration::from_secs(20),
            || sb.json(&["show", id, "--json"])["verdicts"]["spf"] != "PENDING",
        );
    }

    pf.start();
    wait_for("the standby to drain", Duration::from_secs(60), || {
        sb.counts()["delivered"] == 3
    });
    wait_for(
        "postfix to deliver 3 copies",
        Duration::from_secs(20),
        || pf.delivered().len() == 3,
    );
    let delivered = pf.delivered();
    let resolver = standby::dns::resolver(Some(dns.addr().parse().unwrap()), false).unwrap();
    let auth = MessageAuthenticator(resolver);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (token, instance, cv, arc) in [
        ("arc-plain", 1, "none", "none"),
        ("arc-chained", 2, "pass", "pass"),
        ("arc-broken", 1, "fail", "fail"),
    ] {
        let needle = format!("Message-ID: <{token}@example.org>");
        let copy = delivered
            .iter()
            .find(|m| String::from_utf8_lossy(m).contains(&needle))
            .unwrap_or_else(|| panic!("no copy of {token}"));
        let (head, _) = split_message(copy);

        // One set of ours, on top of the chain it came with; none on a broken chain.
        let seals: Vec<String> = fields(&head, "ARC-Seal")
            .into_iter()
            .filter(|f| f.contains("d=standby.example.test"))
            .collect();
        assert_eq!(
            fields(&head, "ARC-Seal").len(),
            instance,
            "{token}: {instance} sets in all:\n{head}"
        );
        let aar = fields(&head, "ARC-Authentication-Results");
        if cv == "fail" {
            assert!(seals.is_empty(), "{token}: no set of ours:\n{head}");
            assert!(
                !aar.iter().any(|f| f.contains("standby.example.test")),
                "{token}:\n{head}"
            );
        } else {
            assert_eq!(seals.len(), 1, "{token}: one ARC-Seal of ours:\n{head}");
            assert!(
                seals[0].contains(&format!("i={instance};"))
                    && seals[0].contains(&format!("cv={cv};")),
                "{token}: i={instance} cv={cv}:\n{head}"
            );
            // Its results are the standby's, with the chain's verdict, and so is the
            // field of ours below it.
            let expected = format!(
                "i={instance}; standby.example.test; spf=pass (sender IP is 127.0.0.1) \
                 smtp.mailfrom=alice@example.org; arc={arc}"
            );
            assert!(aar.contains(&expected), "{token}: {expected}:\n{head}");
        }
        let ar: Vec<String> = fields(&head, "Authentication-Results")
            .into_iter()
            .filter(|f| f.starts_with("standby.example.test"))
            .collect();
        assert_eq!(ar.len(), 1, "{token}:\n{head}");
        assert!(ar[0].ends_with(&format!("arc={arc}")), "{token}: {}", ar[0]);

        // mail-auth, with the keys from DNS.
        let raw = crlf(copy);
        let parsed = AuthenticatedMessage::parse(&raw).unwrap();
        let checked = rt.block_on(auth.verify_arc(Parameters::new(&parsed)));
        match cv {
            // The forwarder's set, whose body hash no longer matches.
            "fail" => assert!(
                matches!(
                    checked.result(),
                    DkimResult::Neutral(_) | DkimResult::Fail(_)
                ),
                "{token}: mail-auth: {:?}",
                checked.result()
            ),
            _ => assert_eq!(checked.result(), &DkimResult::Pass, "{token}: mail-auth"),
        }
        // dkimpy, with the keys given.
        let file = sb.dir.path().join(format!("{token}.delivered.eml"));
        std::fs::write(&file, &raw).unwrap();
        require("/usr/bin/python3", "python3-dkim");
        let out = Command::new("/usr/bin/python3")
            .arg(repo().join("tests/support/arc_verify.py"))
            .arg(&file)
            .args(["arc", "standby.example.test"])
            .arg(&ours.public_pem)
            .args(["fwd", "forwarder.test"])
            .arg(&fwd.public_pem)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dkimpy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if cv == "fail" {
            assert!(said.starts_with("fail"), "{token}: dkimpy says {said}");
        } else {
            assert!(said.starts_with("pass"), "{token}: dkimpy says {said}");
        }
    }
}
