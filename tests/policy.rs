//! What the listener refuses, with which reply, and that a refusal stores nothing:
//! relay attempts, unknown users, oversize messages, too many recipients.

mod common;

use common::*;

/// A standby with a recipients file and small limits; the directory holding the file is
/// returned so it lives as long as the standby.
fn standby_with_recipients() -> (Standby, FakePrimary, tempfile::TempDir) {
    // The primary is irrelevant here; a fake that is "up" keeps the logs quiet.
    let fake = FakePrimary::start(vec![FakeReply::Healthy]);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("recipients.txt");
    std::fs::write(
        &list,
        "# accepted users\nbob@example.test\ncarol@example.test\ndave@example.test\nerin@example.test\n",
    )
    .unwrap();
    let extra = format!(
        "recipients = \"{}\"\nmax_recipients = 3\nmax_message_size = 100000\n",
        list.display()
    );
    let sb = Standby::start(fake.port, &extra);
    (sb, fake, dir)
}

#[test]
fn foreign_domains_are_relay_denied() {
    let (sb, _p, _dir) = standby_with_recipients();
    for to in [
        "bob@foreign.test",
        "bob@example.test.evil.test",
        "bob%foreign.test@example.test",
    ] {
        let (ok, t) = swaks(sb.port, &["--from", "a@example.org", "--to", to]);
        assert!(!ok, "{to} accepted:\n{t}");
        assert!(t.contains("550 5.7.1 Relay access denied"), "{to}:\n{t}");
    }
    assert!(sb.list("all").is_empty());
}

#[test]
fn unknown_users_are_refused_at_rcpt_time() {
    let (sb, _p, _dir) = standby_with_recipients();
    let (ok, t) = swaks(
        sb.port,
        &["--from", "a@example.org", "--to", "mallory@example.test"],
    );
    assert!(!ok);
    assert!(t.contains("550 5.1.1"), "{t}");
    // Listed users are accepted, case-insensitively.
    sb.send("Bob@Example.Test", &[]);
    assert_eq!(sb.list("held").len(), 1);
}

#[test]
fn oversize_message_gets_552_and_nothing_is_stored() {
    let (sb, _p, _dir) = standby_with_recipients();
    let body = "x".repeat(70) + "\n";
    let big = sb.dir.path().join("big.txt");
    std::fs::write(&big, body.repeat(2000)).unwrap(); // ~142 KB > 100000
    let (ok, t) = swaks(
        sb.port,
        &[
            "--from",
            "a@example.org",
            "--to",
            "bob@example.test",
            "--body",
            big.to_str().unwrap(),
        ],
    );
    assert!(!ok, "oversize accepted");
    assert!(
        t.contains("552 5.3.4"),
        "{}",
        &t[t.len().saturating_sub(500)..]
    );
    assert!(sb.list("all").is_empty());
    assert_eq!(sb.stored_files(), 0);
    sb.wait_published();
    assert_eq!(count_files(&sb.dir.path().join("data/tmp")), 0);
}

#[test]
fn too_many_recipients_get_452_and_the_rest_is_kept() {
    let (sb, _p, _dir) = standby_with_recipients();
    let (_ok, t) = swaks(
        sb.port,
        &[
            "--from",
            "a@example.org",
            "--to",
            "bob@example.test,carol@example.test,dave@example.test,erin@example.test",
        ],
    );
    assert!(t.contains("452 4.5.3"), "{t}");
    let held = sb.list("held");
    assert_eq!(held.len(), 1, "{t}");
    assert_eq!(
        held[0]["rcpt_to"],
        serde_json::json!([
            "bob@example.test",
            "carol@example.test",
            "dave@example.test"
        ])
    );
}
