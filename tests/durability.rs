//! The local spool's durability rules, through the real binary:
//!
//! - one `standby serve` per data directory (an `flock`): a second one exits with an
//!   error naming the lock and touches nothing, not even `tmp/`;
//! - at start, a message file without an index row is moved to `orphans/` and audited,
//!   never deleted, and the file of a deleted (tombstoned) message is deleted;
//! - every message file carries its envelope, so `standby reindex` rebuilds a lost or
//!   corrupt index, orphans included, with the records as they were made at receipt.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

/// Make every file in `dir` look older than the start's 60 s "still being indexed"
/// window.
fn age(dir: &Path) {
    let old = SystemTime::now() - Duration::from_secs(600);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let f = std::fs::File::options().write(true).open(e.path()).unwrap();
        f.set_modified(old).unwrap();
    }
}

fn ids(sb: &Standby) -> Vec<String> {
    let mut v: Vec<String> = sb
        .list("all")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sql(sb: &Standby, statement: &str) {
    let db = rusqlite::Connection::open(sb.dir.path().join("data/index.db")).unwrap();
    db.execute_batch(statement).unwrap();
}

/// The fields of a record that receipt decides (not later delivery attempts).
fn receipt_fields(rec: &Value) -> Value {
    let mut r = rec.clone();
    let keep = [
        "id",
        "mail_from",
        "received_at",
        "size",
        "sha256",
        "summary",
        "origin",
    ];
    r.as_object_mut()
        .unwrap()
        .retain(|k, _| keep.contains(&k.as_str()));
    r["rcpts"] = rec["rcpts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["address"].clone())
        .collect();
    r
}

#[test]
fn a_second_serve_on_the_same_spool_exits_and_touches_nothing() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    sb.send("bob@example.test", &[]);
    // What a message being received right now looks like.
    let tmp = sb.dir.path().join("data/tmp");
    let in_flight = tmp.join("01JAAAAAAAAAAAAAAAAAAAAAAA");
    std::fs::write(&in_flight, b"Subject: arriving\r\n").unwrap();
    age(&tmp);
    let before = names(&sb.dir.path().join("data"));

    let other = free_port();
    let mut second = std::process::Command::new(STANDBY)
        .args(["serve", "--config"])
        .arg(&sb.config)
        .env("STANDBY_LISTEN", format!("127.0.0.1:{other}"))
        .env("STANDBY_DSN_SPF", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit by itself; one that is still running after 20 s is serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("the second serve is running on the same spool");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second serve ran: {err}");
    assert!(
        err.contains("serve.lock") && err.contains("only one `standby serve`"),
        "the error names the lock: {err}"
    );
    assert!(
        in_flight.exists(),
        "the second serve removed an in-flight file"
    );
    assert_eq!(names(&sb.dir.path().join("data")), before);
    // The first one still works.
    sb.send("bob@example.test", &[]);
    assert_eq!(sb.list("held").len(), 2);
}

/// A spool file's message and envelope (`<id>.spool`: the message, the envelope, a
/// 32-byte footer with both lengths, little-endian, at bytes 8 and 16).
fn unspool(path: &Path) -> (Vec<u8>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let footer = &bytes[bytes.len() - 32..];
    assert_eq!(&footer[..8], b"STBYSPL1", "{}", path.display());
    let message = u64::from_le_bytes(footer[8..16].try_into().unwrap()) as usize;
    let envelope = u64::from_le_bytes(footer[16..24].try_into().unwrap()) as usize;
    (
        bytes[..message].to_vec(),
        bytes[message..message + envelope].to_vec(),
    )
}

/// What a crash leaves in `tmp/` (the publisher moves messages into `messages/` after
/// their 250), and rows whose files it lost, checked at the next start:
/// - row and bytes that match: acknowledged, put in place;
/// - bytes that match their envelope but no row (the file's flush finished, the row's
///   did not, or an index older than the spool): indexed again, as received, held;
/// - a row but a file cut short (no footer: a power cut before the flush finished, no
///   250 sent), a row whose bytes are not the ones it was made for (the footer there,
///   the data not), and a row whose message is nowhere (its WAL flush finished, its
///   file's did not): removed, row and file;
/// - a message deleted (tombstoned) before it was published: removed;
/// - an earlier release's files (`tmp/<id>` and `tmp/<id>.env`), matching their
///   envelope, without a row: indexed again and put in place as they are.
#[test]
fn a_crash_leaves_staged_messages_that_the_start_publishes_or_removes() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let mut sb = Standby::start(fake.port, "");
    for i in 0..7 {
        sb.send("bob@example.test", &["--header", &format!("Subject: m{i}")]);
    }
    let all = ids(&sb);
    let [acked, unindexed, torn, purged, vanished, garbled, legacy] = &all[..] else {
        panic!("seven messages: {all:?}")
    };
    let acked_rec = sb.json(&["show", acked, "--json"]);
    let unindexed_rec = sb.json(&["show", unindexed, "--json"]);
    let legacy_rec = sb.json(&["show", legacy, "--json"]);
    assert!(sb.terminate().success());
    let (messages, tmp) = (sb.messages_dir(), sb.dir.path().join("data/tmp"));
    let spool = |id: &str| format!("{id}.spool");
    for id in [acked, unindexed, torn, purged, garbled] {
        std::fs::rename(messages.join(spool(id)), tmp.join(spool(id))).unwrap();
    }
    std::fs::remove_file(messages.join(spool(vanished))).unwrap();
    let (legacy_bytes, legacy_env) = unspool(&messages.join(spool(legacy)));
    std::fs::remove_file(messages.join(spool(legacy))).unwrap();
    std::fs::write(tmp.join(legacy), &legacy_bytes).unwrap();
    std::fs::write(tmp.join(format!("{legacy}.env")), &legacy_env).unwrap();
    let torn_file = tmp.join(spool(torn));
    let len = std::fs::metadata(&torn_file).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&torn_file)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let garbled_file = tmp.join(spool(garbled));
    let mut bytes = std::fs::read(&garbled_file).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&garbled_file, bytes).unwrap();
    // The rows left to remove carry a live lease of a drain that died with the process:
    // a row without its message is removed whatever lease it has (no drain can send it).
    let lease_until = (chrono::Utc::now() + chrono::Duration::minutes(10)).timestamp_millis();
    sql(
        &sb,
        &format!(
            "DELETE FROM messages WHERE id IN ('{unindexed}', '{purged}', '{legacy}');
             INSERT INTO tombstones (id, deleted_at) VALUES ('{purged}', 0);
             UPDATE messages SET lease_owner = 'crashed', lease_until = {lease_until}
             WHERE id IN ('{torn}', '{vanished}', '{garbled}');"
        ),
    );
    sb.spawn();

    assert_eq!(
        ids(&sb),
        vec![acked.clone(), unindexed.clone(), legacy.clone()],
        "the whole ones stay, the others go"
    );
    for (id, before) in [
        (acked, &acked_rec),
        (unindexed, &unindexed_rec),
        (legacy, &legacy_rec),
    ] {
        let rec = sb.json(&["show", id, "--json"]);
        assert_eq!(receipt_fields(&rec), receipt_fields(before));
        assert_eq!(rec["status"], "held");
    }
    assert!(names(&tmp).is_empty(), "left in tmp/: {:?}", names(&tmp));
    let mut want = vec![
        spool(acked),
        spool(unindexed),
        format!("{legacy}.eml"),
        format!("{legacy}.env"),
    ];
    want.sort();
    assert_eq!(names(&messages), want);
    assert!(names(&sb.dir.path().join("data/orphans")).is_empty());
    let raw = sb.cli(&["show", acked, "--raw"]);
    assert_eq!(
        raw.stdout,
        unspool(&messages.join(spool(acked))).0,
        "the message, without its envelope"
    );
    assert!(String::from_utf8_lossy(&raw.stdout).contains("Subject: m0"));
    let raw = sb.cli(&["show", legacy, "--raw"]);
    assert_eq!(raw.stdout, legacy_bytes);
}

#[test]
fn orphans_are_moved_and_audited_and_tombstoned_files_deleted_at_start() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let mut sb = Standby::start(fake.port, "");
    for i in 0..3 {
        sb.send("bob@example.test", &["--header", &format!("Subject: m{i}")]);
    }
    let all = ids(&sb);
    let (orphan, deleted, kept) = (&all[0], &all[1], &all[2]);
    let orphan_rec = sb.json(&["show", orphan, "--json"]);
    assert!(sb.terminate().success());
    // A row lost (an index restored from an older copy), and a delete whose file a
    // crash kept (the row and its tombstone committed, the unlink not).
    sql(
        &sb,
        &format!(
            "DELETE FROM messages WHERE id = '{orphan}';
             DELETE FROM messages WHERE id = '{deleted}';
             INSERT INTO tombstones (id, deleted_at) VALUES ('{deleted}', 0);"
        ),
    );
    let messages = sb.messages_dir();
    age(&messages);
    sb.spawn();

    let orphans = sb.dir.path().join("data/orphans");
    assert_eq!(
        names(&orphans),
        vec![format!("{orphan}.spool")],
        "the orphan (its envelope in its file) moved, never deleted"
    );
    assert_eq!(
        names(&messages),
        vec![format!("{kept}.spool")],
        "the tombstoned message's file deleted, the indexed one kept"
    );
    let audit = sb.json(&["audit", "--json"]);
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == orphan.as_str())
        .unwrap_or_else(|| panic!("no audit entry for the orphan: {audit}"));
    assert_eq!(entry["action"], "orphan");

    // Reindex (serve stopped: it takes the lock) puts it back, as it was received.
    let running = sb.cli(&["reindex"]);
    assert!(!running.status.success(), "reindex ran beside serve");
    assert!(sb.terminate().success());
    let report = sb.json(&["reindex", "--json"]);
    assert_eq!(report["reindexed"], 1, "{report}");
    assert_eq!(report["adopted"], 1, "{report}");
    assert!(names(&orphans).is_empty());
    let rebuilt = sb.json(&["show", orphan, "--json"]);
    assert_eq!(receipt_fields(&rebuilt), receipt_fields(&orphan_rec));
    assert_eq!(rebuilt["status"], "paused", "nothing redelivered unasked");
    let raw = sb.cli(&["show", orphan, "--raw"]).stdout;
    assert!(String::from_utf8_lossy(&raw).contains("Subject: m"));
}

/// A delete whose unlink a power cut undid, then `standby reindex` before any start: the
/// deleted message is not brought back (nor redelivered with `--held`). And a tombstone
/// whose message has a row again never costs that message its file at start.
#[test]
fn reindex_never_brings_back_a_deleted_message_and_start_never_deletes_an_indexed_one() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let mut sb = Standby::start(fake.port, "");
    for i in 0..2 {
        sb.send("bob@example.test", &["--header", &format!("Subject: m{i}")]);
    }
    let all = ids(&sb);
    let (deleted, revived) = (&all[0], &all[1]);
    assert!(sb.terminate().success());
    sql(
        &sb,
        &format!(
            "DELETE FROM messages WHERE id = '{deleted}';
             INSERT INTO tombstones (id, deleted_at) VALUES ('{deleted}', 0);
             INSERT INTO tombstones (id, deleted_at) VALUES ('{revived}', 0);"
        ),
    );
    let report = sb.json(&["reindex", "--held", "--json"]);
    assert_eq!(report["reindexed"], 0, "{report}");
    assert_eq!(report["deleted"], 1, "{report}");
    assert!(
        !sb.cli(&["show", deleted, "--json"]).status.success(),
        "the deleted message came back"
    );

    let messages = sb.messages_dir();
    age(&messages);
    sb.spawn();
    assert_eq!(
        names(&messages),
        vec![format!("{revived}.spool")],
        "the deleted message's files removed, the indexed one's kept despite its tombstone"
    );
    let raw = sb.cli(&["show", revived, "--raw"]);
    assert!(raw.status.success(), "{raw:?}");
    assert!(String::from_utf8_lossy(&raw.stdout).contains("Subject: m1"));
}

#[test]
fn reindex_rebuilds_a_lost_and_a_corrupt_index_from_the_spool() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let mut sb = Standby::start(fake.port, "");
    sb.send("bob@example.test", &["--header", "Subject: first"]);
    sb.send(
        "carol@example.test",
        &["--to", "dave@example.test", "--header", "Subject: second"],
    );
    let before: Vec<Value> = ids(&sb)
        .iter()
        .map(|id| receipt_fields(&sb.json(&["show", id, "--json"])))
        .collect();
    assert_eq!(before.len(), 2);
    let legacy = ids(&sb)[0].clone();
    let two = ids(&sb);
    sb.send("erin@example.test", &["--header", "Subject: third"]);
    let third = ids(&sb).into_iter().find(|id| !two.contains(id)).unwrap();
    assert!(sb.terminate().success());
    let data = sb.dir.path().join("data");

    // Lost; one of the messages in the layout of an earlier release (`<id>.eml` and its
    // envelope in `<id>.env`).
    for f in ["index.db", "index.db-wal", "index.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let file = sb.messages_dir().join(format!("{legacy}.spool"));
    let (message, envelope) = unspool(&file);
    std::fs::remove_file(&file).unwrap();
    std::fs::write(sb.messages_dir().join(format!("{legacy}.eml")), message).unwrap();
    std::fs::write(sb.messages_dir().join(format!("{legacy}.env")), envelope).unwrap();
    // And a third whose bytes lost a block: not indexed, reported.
    let damaged = sb.messages_dir().join(format!("{}.spool", third));
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&damaged, bytes).unwrap();
    let report = sb.json(&["reindex", "--held", "--json"]);
    assert_eq!(report["reindexed"], 2, "{report}");
    assert_eq!(
        report["damaged"],
        serde_json::json!([damaged.display().to_string()]),
        "{report}"
    );
    let after: Vec<Value> = ids(&sb)
        .iter()
        .map(|id| receipt_fields(&sb.json(&["show", id, "--json"])))
        .collect();
    assert_eq!(after, before, "the records as they were made at receipt");
    assert_eq!(sb.list("held").len(), 2, "--held queues them");

    // Corrupt: moved aside (never deleted), rebuilt.
    for f in ["index.db-wal", "index.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    std::fs::write(data.join("index.db"), vec![0x5a; 8192]).unwrap();
    let report = sb.json(&["reindex", "--json"]);
    assert_eq!(report["reindexed"], 2, "{report}");
    let aside = report["set_aside"].as_str().expect("set aside");
    assert!(Path::new(aside).exists(), "{aside}");
    assert_eq!(sb.list("paused").len(), 2);
}

/// Bytes in the spool that are not the ones received (a disk that returned other data,
/// a file a power cut left with its footer but not all its blocks) never complete a
/// transaction at a real Postfix primary: the drain checks each body against its
/// record's SHA-256 as it sends it and cuts the transaction off before the final dot;
/// the message stays held, saying why, and the next one is delivered.
#[test]
fn a_damaged_spool_file_is_never_delivered_and_the_rest_is() {
    let pf = Postfix::primary();
    let mut sb = Standby::start(pf.port, "");
    sb.send("bob@example.test", &["--header", "Subject: m0"]);
    std::thread::sleep(Duration::from_millis(20));
    sb.send("bob@example.test", &["--header", "Subject: m1"]);
    let all = ids(&sb);
    let damaged = all
        .iter()
        .find(|id| {
            let rec = sb.json(&["show", id, "--json"]);
            rec["summary"]["subject"] == "m0"
        })
        .unwrap()
        .clone();
    assert!(sb.terminate().success());
    let file = sb.messages_dir().join(format!("{damaged}.spool"));
    let mut bytes = std::fs::read(&file).unwrap();
    let (message, _) = unspool(&file);
    let at = message.len() - 3;
    bytes[at] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();
    pf.start();
    let out = sb.cli(&["drain", "--force", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["delivered"], 1, "{report}");
    wait_for(
        "Postfix to store one message",
        Duration::from_secs(30),
        || pf.delivered().len() == 1,
    );
    let got = String::from_utf8_lossy(&pf.delivered()[0]).into_owned();
    assert!(got.contains("Subject: m1"), "{got}");
    let rec = sb.json(&["show", &damaged, "--json"]);
    assert_eq!(rec["status"], "held", "{rec}");
    let reply = rec["rcpts"][0]["reply"].as_str().unwrap_or_default();
    assert!(reply.contains("not the one received"), "{rec}");
    // Postfix saw the transaction cut off inside DATA (so it discarded it), and then
    // stored only the one.
    wait_for(
        "Postfix to log the cut-off transaction",
        Duration::from_secs(30),
        || pf.maillog().contains("lost connection after DATA"),
    );
    assert_eq!(pf.delivered().len(), 1);
}
