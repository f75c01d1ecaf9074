//! The AWS side of recovery and retention, against moto through the real SDK: a journal
//! copy received the SES way is filed as `journal`, copied into the Object Lock archive
//! with a per-object retention (and a delete of that locked version is refused), a legal
//! hold reaches the archive copy, retention deletes from S3 and DynamoDB with audit items.

mod common;

use chrono::{Duration, Utc};
use common::aws::{Moto, ses_event, ses_message_id, ses_put};
use common::iam::Principal;
use standby::backend::aws::ArchiveSettings;
use standby::config::LockMode;
use standby::config::{ConfidentialRule, RetentionPolicy};
use standby::config::{Journal, JournalAllow};
use standby::lambda::ingest::Ingest;
use standby::model::{RcptStatus, Status};
use standby::ports::Storage;

const JOURNAL_TO: &str = "journal+bob=example.test@archive.example.test";

fn journal_event(ses_id: &str, rcpt: &str) -> serde_json::Value {
    event_to(ses_id, &[rcpt])
}

/// The SES event of `ses_id` with the envelope recipients `rcpts`.
fn event_to(ses_id: &str, rcpts: &[&str]) -> serde_json::Value {
    let mut ev = ses_event("normal.json");
    let ses = &mut ev["Records"][0]["ses"];
    ses["mail"]["messageId"] = ses_id.into();
    ses["receipt"]["recipients"] = serde_json::json!(rcpts);
    ev
}

#[tokio::test]
async fn journal_copies_are_archived_under_object_lock_and_retention_is_audited() {
    let moto = Moto::start();
    let (clients, mut settings, _) = moto.storage("arch").await;
    let archive = "arch-locked";
    clients
        .s3
        .create_bucket()
        .bucket(archive)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create the Object Lock bucket");
    settings.archive = Some(ArchiveSettings {
        bucket: archive.into(),
        mode: LockMode::Governance,
    });
    let storage = Storage::aws(&clients, &settings);
    let policy = RetentionPolicy {
        journal_days: Some(30),
        confidential: vec![ConfidentialRule {
            name: "hr".into(),
            rcpt: Some("hr@example.test".into()),
            sender: None,
            header: None,
            keep_days: 0,
        }],
        ..RetentionPolicy::default()
    };
    let ingest = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .with_journal(
            Journal::new(
                &["journal@archive.example.test".to_string()],
                &["example.test".to_string()],
            ),
            // The fixture's SES `Received:` names 192.0.2.10, the primary here.
            JournalAllow::new(vec!["192.0.2.0/28".parse().unwrap()]),
        )
        .with_retention(policy.clone());

    // One journal copy for bob, one for hr (confidential: kept 0 days).
    let raw = common::fixture("ses/message.eml", "tok-journal");
    for (ses_id, rcpt) in [
        ("journal-bob-0001", JOURNAL_TO),
        (
            "journal-hr-0002",
            "journal+hr=example.test@archive.example.test",
        ),
    ] {
        ses_put(&clients, &settings, ses_id, raw.as_bytes()).await;
        let ev = journal_event(ses_id, rcpt);
        assert_eq!(ses_message_id(&ev), ses_id);
        let report = ingest.handle(ev.clone()).await.unwrap();
        assert_eq!(report.indexed, 1);
        // A retried event changes nothing and adds no second locked version.
        ingest.handle(ev).await.unwrap();
    }
    let recs = storage
        .index
        .list(&standby::ports::ListQuery::default())
        .await
        .unwrap();
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.status == Status::Journal));
    let bob = recs
        .iter()
        .find(|r| r.blob.as_deref() == Some("journal-bob-0001"))
        .unwrap();
    assert_eq!(bob.rcpts[0].address, "bob@example.test");
    let hr = recs
        .iter()
        .find(|r| r.blob.as_deref() == Some("journal-hr-0002"))
        .unwrap();
    assert_eq!(hr.confidential.as_deref(), Some("hr"));

    // The archive copy: locked in governance mode until receipt + 30 days.
    let key = "journal/journal-bob-0001";
    let versions = clients
        .s3
        .list_object_versions()
        .bucket(archive)
        .prefix(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        versions.versions().len(),
        1,
        "one locked version, retries added none"
    );
    let head = clients
        .s3
        .head_object()
        .bucket(archive)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.object_lock_mode().map(|m| m.as_str()),
        Some("GOVERNANCE")
    );
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let want = (bob.received_at + Duration::days(30)).timestamp();
    assert!(
        (until - want).abs() <= 1,
        "retain until {until}, want {want}"
    );
    let version = head.version_id().unwrap().to_string();
    let denied = clients
        .s3
        .delete_object()
        .bucket(archive)
        .key(key)
        .version_id(&version)
        .send()
        .await;
    assert!(denied.is_err(), "deleting a locked version must be refused");
    assert!(
        clients
            .s3
            .head_object()
            .bucket(archive)
            .key(key)
            .version_id(&version)
            .send()
            .await
            .is_ok(),
        "the locked version is still there"
    );

    // A legal hold (`standby hold --legal`) reaches the archive copy and retags the
    // incoming object.
    moto.storage_as(Principal::Operator, &settings)
        .await
        .blobs
        .set_legal_hold("journal-bob-0001", true)
        .await
        .unwrap();
    let lh = clients
        .s3
        .get_object_legal_hold()
        .bucket(archive)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        lh.legal_hold().and_then(|l| l.status()).map(|s| s.as_str()),
        Some("ON")
    );
    let tags = clients
        .s3
        .get_object_tagging()
        .bucket(&settings.bucket)
        .key("incoming/journal-bob-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tag_set()[0].value(), "legal-hold");

    // Retention now: the confidential copy goes (S3 object and item), audited in
    // DynamoDB; the other stays (30 days); the archive keeps both locked copies.
    let report = standby::retention::run(
        &moto.storage_as(Principal::Drain, &settings).await,
        &policy,
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(report.deleted, 1);
    assert!(storage.index.get(hr.id).await.unwrap().is_none());
    assert!(storage.index.get(bob.id).await.unwrap().is_some());
    let gone = clients
        .s3
        .head_object()
        .bucket(&settings.bucket)
        .key("incoming/journal-hr-0002")
        .send()
        .await;
    assert!(gone.is_err(), "the confidential copy's object is deleted");
    let audit = storage.audit.entries().await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].id, audit[0].reason.as_str()),
        (Some(hr.id), "confidential rule hr")
    );
    assert!(
        clients
            .s3
            .head_object()
            .bucket(archive)
            .key("journal/journal-hr-0002")
            .send()
            .await
            .is_ok(),
        "the archive copy outlives the working copy"
    );
    // Audit items are not messages: counts and listings do not see them.
    let counts = storage.index.counts().await.unwrap();
    assert_eq!((counts.journal, counts.held), (1, 0));
}

/// A message to a journal address that SES received from a client outside
/// `STANDBY_JOURNAL_ALLOW` (or whose SES `Received:` names none) is never a journal copy:
/// it is kept as failed (never drained, never replayed, no DSN), nothing reaches the
/// archive, and the audit log says why.
#[tokio::test]
async fn journal_copies_from_elsewhere_are_refused_and_audited() {
    let moto = Moto::start();
    let (clients, mut settings, _) = moto.storage("jref").await;
    let archive = "jref-locked";
    clients
        .s3
        .create_bucket()
        .bucket(archive)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("create the Object Lock bucket");
    settings.archive = Some(ArchiveSettings {
        bucket: archive.into(),
        mode: LockMode::Governance,
    });
    let storage = Storage::aws(&clients, &settings);
    let ingest = Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "").with_journal(
        Journal::new(
            &["journal@archive.example.test".to_string()],
            &["example.test".to_string()],
        ),
        JournalAllow::new(vec!["192.0.2.10/32".parse().unwrap()]),
    );
    let fixture = common::fixture("ses/message.eml", "tok-planted");
    let planted = fixture.replace("192.0.2.10", "203.0.113.9");
    // A forged `Received:` below SES's proves nothing: SES's own (the first) counts.
    let forged = planted.replacen(
        "X-SES-Spam-Verdict",
        "Received: from mail.example.org (mail.example.org [192.0.2.10])\n by \
         inbound-smtp.us-east-1.amazonaws.com with SMTP id forged;\n Sat, 28 Nov 2026 \
         09:30:01 +0000 (UTC)\nX-SES-Spam-Verdict",
        1,
    );
    assert_ne!(forged, planted);
    let without = fixture.replace("Received: from", "X-Received: from");
    let allowed = fixture.clone();
    let cases = [
        ("jref-planted-1", planted.as_str(), Some("203.0.113.9")),
        ("jref-forged-02", forged.as_str(), Some("203.0.113.9")),
        ("jref-noreceiv3", without.as_str(), None),
        ("jref-allowed-4", allowed.as_str(), Some("allowed")),
    ];
    for (ses_id, raw, _) in &cases {
        ses_put(&clients, &settings, ses_id, raw.as_bytes()).await;
        let ev = journal_event(ses_id, JOURNAL_TO);
        assert_eq!(ingest.handle(ev).await.unwrap().indexed, 1, "{ses_id}");
    }
    // One envelope to a journal address and to a user, from outside: the journal
    // recipient is refused, the user's copy is ordinary held mail.
    ses_put(&clients, &settings, "jref-mixed-005", planted.as_bytes()).await;
    let ev = event_to("jref-mixed-005", &[JOURNAL_TO, "bob@example.test"]);
    assert_eq!(ingest.handle(ev).await.unwrap().indexed, 1);
    let recs = storage
        .index
        .list(&standby::ports::ListQuery::default())
        .await
        .unwrap();
    let mixed = recs
        .iter()
        .find(|r| r.blob.as_deref() == Some("jref-mixed-005"))
        .unwrap();
    assert_eq!(mixed.status, Status::Held, "{mixed:?}");
    assert!(mixed.journal.is_none(), "{mixed:?}");
    // The refused recipient is decided (no DSN for it), so bob's delivery later makes
    // no bounce naming nobody.
    assert!(
        matches!(
            mixed.bounce,
            Some(standby::model::Bounce::Suppressed { .. })
        ),
        "{mixed:?}"
    );
    let state: Vec<(&str, RcptStatus, bool)> = mixed
        .rcpts
        .iter()
        .map(|r| (r.address.as_str(), r.status, r.bounced))
        .collect();
    assert_eq!(
        state,
        [
            (JOURNAL_TO, RcptStatus::Failed, true),
            ("bob@example.test", RcptStatus::Pending, false)
        ]
    );
    let audit = storage.audit.entries().await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.id == Some(mixed.id) && e.action == "journal-refused"),
        "{audit:?}"
    );
    for (ses_id, _, client) in cases {
        let rec = recs
            .iter()
            .find(|r| r.blob.as_deref() == Some(ses_id))
            .unwrap();
        let archived = clients
            .s3
            .head_object()
            .bucket(archive)
            .key(format!("journal/{ses_id}"))
            .send()
            .await
            .is_ok();
        if client == Some("allowed") {
            assert_eq!(rec.status, Status::Journal, "{ses_id}");
            assert!(archived, "{ses_id}: the allowed copy is archived");
            assert!(!audit.iter().any(|e| e.id == Some(rec.id)));
            continue;
        }
        assert_eq!(rec.status, Status::Failed, "{ses_id}");
        assert!(rec.journal.is_none(), "{ses_id}: not a journal copy");
        assert!(!archived, "{ses_id}: nothing planted in the archive");
        assert!(
            matches!(rec.bounce, Some(standby::model::Bounce::Suppressed { .. })),
            "{ses_id}: no DSN"
        );
        let entry = audit
            .iter()
            .find(|e| e.id == Some(rec.id))
            .unwrap_or_else(|| panic!("{ses_id}: no audit entry in {audit:?}"));
        assert_eq!(entry.action, "journal-refused");
        match client {
            Some(ip) => assert!(entry.reason.contains(ip), "{}", entry.reason),
            None => assert!(entry.reason.contains("Received"), "{}", entry.reason),
        }
    }
}
