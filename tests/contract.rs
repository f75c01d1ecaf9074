//! The port contracts, run against every adapter: the in-memory twins, the local backend
//! (FsBlobStore + SqliteIndex on a real directory) and the AWS backend (S3BlobStore +
//! DynamoIndex through the real SDK against a moto server).

mod common;

use std::sync::Arc;

use chrono::{Duration, Utc};
use standby::backend::{FsBlobStore, MemBlobStore, MemIndex, SqliteIndex};
use standby::error::StoreError;
use standby::model::HealthRecord;
use standby::model::continuity::Continuity;
use standby::model::{Class, MessageId, Origin, Recipient, Record, Status, Summary, Verdicts};
use standby::ports::{
    AuditEntry, AuditLog, BlobStore, ClaimRequest, Cursor, EventStore, Index, ListQuery,
    LoginLimits, MailboxFilter,
};
use tokio::io::AsyncReadExt;

fn record(age_secs: i64) -> Record {
    let at = Utc::now() - Duration::seconds(age_secs);
    Record {
        id: MessageId::new(at),
        status: Status::Held,
        mail_from: "a@example.org".into(),
        rcpts: vec![Recipient::pending("b@example.test")],
        received_at: at,
        size: 10,
        sha256: "00".into(),
        xxh3: Some("0123456789abcdef0123456789abcdef".into()),
        summary: Summary {
            subject: Some("s".into()),
            ..Default::default()
        },
        origin: Origin::default(),
        attempts: 0,
        next_attempt_at: at,
        lease: None,
        reason: None,
        updated_at: at,
        blob: None,
        intake: Default::default(),
        verdicts: None,
        bounce: None,
        bounce_marks: false,
        journal: None,
        replays: Vec::new(),
        legal_hold: None,
        confidential: None,
        sent: None,
        version: 0,
    }
}

fn claim(owner: &str, limit: usize) -> ClaimRequest {
    let now = Utc::now();
    ClaimRequest {
        now,
        owner: owner.into(),
        lease_until: now + Duration::seconds(60),
        limit,
        status: standby::model::Status::Held,
        received_before: None,
        skew: Duration::zero(),
    }
}

async fn index_contract(index: Arc<dyn Index>) {
    let old = record(300);
    let mid = record(200);
    let new = record(100);
    for r in [&new, &old, &mid] {
        assert!(index.insert(r).await.unwrap());
    }
    // Idempotent insert: a second delivery of the same id changes nothing.
    let mut dup = old.clone();
    dup.mail_from = "changed@example.org".into();
    assert!(!index.insert(&dup).await.unwrap());
    assert_eq!(index.get(old.id).await.unwrap().unwrap(), old);

    let all = index.list(&ListQuery::default()).await.unwrap();
    let ids: Vec<MessageId> = all.iter().map(|r| r.id).collect();
    assert_eq!(ids, [old.id, mid.id, new.id], "oldest first");
    let limited = index
        .list(&ListQuery {
            status: Some(Status::Held),
            limit: Some(2),
            after: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    // Paging: each page starts after the previous page's last record.
    for status in [None, Some(Status::Held)] {
        let (mut seen, mut after) = (Vec::new(), None);
        loop {
            let q = ListQuery {
                status,
                limit: Some(1),
                after,
                ..ListQuery::default()
            };
            let page = index.list(&q).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(Cursor::from(last));
            seen.extend(page.iter().map(|r| r.id));
        }
        assert_eq!(seen, ids, "pages of one, status {status:?}");
    }
    // A time window: [since, until).
    let window = index
        .list(&ListQuery {
            since: Some(mid.received_at),
            until: Some(new.received_at),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(window.iter().map(|r| r.id).collect::<Vec<_>>(), [mid.id]);
    let from_mid = index
        .list(&ListQuery {
            status: Some(Status::Held),
            since: Some(mid.received_at),
            after: Some(Cursor::from(&mid)),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(from_mid.iter().map(|r| r.id).collect::<Vec<_>>(), [new.id]);
    assert_eq!(index.counts().await.unwrap().held, 3);
    assert_eq!(index.count(Status::Held).await.unwrap(), 3);
    assert_eq!(index.count(Status::Delivered).await.unwrap(), 0);
    // Counting stops at the limit (DynamoDB reads no further), and is exact below it.
    for (limit, want) in [(0, 0), (1, 1), (2, 2), (3, 3), (10, 3)] {
        assert_eq!(
            index.count_at_most(Status::Held, limit).await.unwrap(),
            want,
            "limit {limit}"
        );
    }
    assert_eq!(
        index
            .oldest(Status::Held)
            .await
            .unwrap()
            .map(|t| t.timestamp_millis()),
        Some(old.received_at.timestamp_millis())
    );

    // A verdict update (the sender check, after acceptance) changes only the verdicts.
    let pending = Verdicts::pending();
    index
        .set_verdicts(old.id, &pending, Utc::now())
        .await
        .unwrap();
    let with_verdict = Record {
        verdicts: Some(pending.clone()),
        version: 1,
        ..old.clone()
    };
    assert_eq!(index.get(old.id).await.unwrap().unwrap(), with_verdict);
    assert!(matches!(
        index
            .set_verdicts(MessageId::new(Utc::now()), &pending, Utc::now())
            .await,
        Err(StoreError::NotFound(_))
    ));

    // Claims are exclusive while the lease runs.
    let a = index.claim(&claim("a", 2)).await.unwrap();
    assert_eq!(a.iter().map(|r| r.id).collect::<Vec<_>>(), [old.id, mid.id]);
    assert_eq!(a[0].lease.as_ref().unwrap().owner, "a");
    assert_eq!(a[0].verdicts, Some(pending.clone()));
    assert_eq!(a[0].version, 1, "a claim keeps the version");
    // No verdict update under a drain's lease: the drain writes its whole copy back.
    let pass = Verdicts::spf("PASS");
    assert!(matches!(
        index.set_verdicts(old.id, &pass, Utc::now()).await,
        Err(StoreError::Leased(_))
    ));
    let b = index.claim(&claim("b", 10)).await.unwrap();
    assert_eq!(b.iter().map(|r| r.id).collect::<Vec<_>>(), [new.id]);
    assert!(index.claim(&claim("c", 10)).await.unwrap().is_empty());

    // Only the owner may write back; the operator may not change a leased record.
    assert!(matches!(
        index.complete(&a[0], "b").await,
        Err(StoreError::Leased(_))
    ));
    assert!(matches!(
        index.update(&a[0], Utc::now()).await,
        Err(StoreError::Leased(_))
    ));
    let mut done = a[0].clone();
    done.status = Status::Delivered;
    index.complete(&done, "a").await.unwrap();
    let got = index.get(old.id).await.unwrap().unwrap();
    assert_eq!(
        (got.status, got.lease, got.version),
        (Status::Delivered, None, 2),
        "the write-back stores the next version"
    );
    assert_eq!(got.verdicts, Some(pending.clone()));
    // Once the lease is gone the verdict lands, and the drain's write stays.
    index.set_verdicts(old.id, &pass, Utc::now()).await.unwrap();
    let got = index.get(old.id).await.unwrap().unwrap();
    assert_eq!(
        got,
        Record {
            verdicts: Some(pass.clone()),
            lease: None,
            version: 3,
            ..done.clone()
        }
    );

    // Only the owner renews a lease; a renewed lease outlasts the claim that would
    // have taken it over.
    let now = Utc::now();
    assert!(
        !index
            .renew(mid.id, "b", now + Duration::seconds(150))
            .await
            .unwrap()
    );
    assert!(
        index
            .renew(mid.id, "a", now + Duration::seconds(150))
            .await
            .unwrap()
    );

    // Another claim's lease is taken over only once it ended `skew` ago: b's lease ended
    // 40 s before this claim's clock, inside a 60 s skew.
    let early = ClaimRequest {
        now: now + Duration::seconds(100),
        lease_until: now + Duration::seconds(180),
        skew: Duration::seconds(60),
        ..claim("d0", 10)
    };
    assert!(
        index.claim(&early).await.unwrap().is_empty(),
        "a lease within the clock-skew margin is not taken"
    );
    // An expired lease can be taken over, and its old owner can then no longer renew it.
    let later = ClaimRequest {
        now: now + Duration::seconds(120),
        lease_until: now + Duration::seconds(180),
        ..claim("d", 10)
    };
    let d = index.claim(&later).await.unwrap();
    assert_eq!(
        d.iter().map(|r| r.id).collect::<Vec<_>>(),
        [new.id],
        "b's lease expired, a's renewed one did not"
    );
    assert!(
        !index
            .renew(new.id, "b", now + Duration::seconds(240))
            .await
            .unwrap()
    );
    assert!(matches!(
        index.complete(&d[0], "b").await,
        Err(StoreError::Leased(_))
    ));

    // Not due yet: not claimed, except by the expiry sweep.
    let mut future = record(50);
    future.next_attempt_at = Utc::now() + Duration::hours(1);
    index.insert(&future).await.unwrap();
    assert!(
        index
            .claim(&claim("e", 10))
            .await
            .unwrap()
            .iter()
            .all(|r| r.id != future.id)
    );
    let sweep = ClaimRequest {
        received_before: Some(Utc::now()),
        ..claim("f", 10)
    };
    assert!(
        index
            .claim(&sweep)
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == future.id)
    );

    // Leased by the sweep's claim just above: deleted once that lease has ended.
    let later = Utc::now() + Duration::minutes(5);
    assert!(index.delete(&new, later).await.unwrap());
    assert!(!index.delete(&new, later).await.unwrap());
    assert!(index.get(new.id).await.unwrap().is_none());
    assert!(matches!(
        index.update(&new, Utc::now()).await,
        Err(StoreError::NotFound(_))
    ));

    // Health: one record per node; a node's save never touches another's, and health
    // items are not messages.
    let counts = index.counts().await.unwrap();
    let listed = index.list(&ListQuery::default()).await.unwrap().len();
    assert!(index.load_health("mx20").await.unwrap().is_none());
    assert!(index.list_health().await.unwrap().is_empty());
    let mx30 = HealthRecord::new("mx30", "127.0.0.1:25");
    let mx20 = HealthRecord::new("mx20", "127.0.0.1:25");
    index.save_health(&mx30).await.unwrap();
    index.save_health(&mx20).await.unwrap();
    // Saves are compare-and-set on the version read: a second save of what was read
    // before the first one's is refused, and changes nothing.
    let mut read = index.load_health("mx20").await.unwrap().unwrap();
    assert_eq!(read.version, 1);
    let mut stale = read.clone();
    read.probes_ok = 7;
    index.save_health(&read).await.unwrap();
    stale.halted = None;
    stale.probes_failed = 3;
    assert!(matches!(
        index.save_health(&stale).await,
        Err(StoreError::HealthChanged(n)) if n == "mx20"
    ));
    let stored = index.load_health("mx20").await.unwrap().unwrap();
    assert_eq!(
        (stored.probes_ok, stored.probes_failed, stored.version),
        (7, 0, 2)
    );
    // A record never saved (version 0) is not saved over one that was.
    assert!(matches!(
        index
            .save_health(&HealthRecord::new("mx20", "127.0.0.1:25"))
            .await,
        Err(StoreError::HealthChanged(_))
    ));
    let mx30 = index.load_health("mx30").await.unwrap().unwrap();
    assert_eq!(mx30.version, 1);
    assert_eq!(index.list_health().await.unwrap(), [stored, mx30]);

    // Two runs of one node changing its record at once (an overlapping drain, or
    // `standby drain` beside the function): each change survives, the watermark never
    // moves back, and a circuit-breaker halt is not lost.
    let node = ("mx40", "127.0.0.1:25");
    let t = Utc::now();
    let mut runs = Vec::new();
    for i in 0..8i64 {
        let index = index.clone();
        runs.push(tokio::spawn(async move {
            standby::health::update(index.as_ref(), node.0, node.1, |h| {
                h.probes_ok += 1;
                h.reconciled_until = h
                    .reconciled_until
                    .max(Some(t + chrono::Duration::seconds(i)));
                if i == 3 {
                    h.halted = Some(standby::model::Halt {
                        at: t,
                        reason: "20 refusals".into(),
                    });
                }
                true
            })
            .await
            .unwrap()
        }));
    }
    for r in runs {
        r.await.unwrap();
    }
    let h = index.load_health(node.0).await.unwrap().unwrap();
    assert_eq!(h.probes_ok, 8, "every run's change kept: {h:?}");
    assert_eq!(h.reconciled_until, Some(t + chrono::Duration::seconds(7)));
    assert!(h.halted.is_some(), "the halt kept");
    assert_eq!(h.version, 8);
    assert_eq!(index.counts().await.unwrap(), counts);
    assert_eq!(
        index.list(&ListQuery::default()).await.unwrap().len(),
        listed
    );
}

/// The search filters of `list`, alone and combined, through paging; and the search
/// terms follow a record's changes and deletion.
async fn search_contract(index: Arc<dyn Index>) {
    let mk = |age: i64, from: &str, rcpts: &[&str], subject: &str, status: Status| {
        let mut r = record(age);
        r.mail_from = from.into();
        r.rcpts = rcpts.iter().map(|a| Recipient::pending(*a)).collect();
        r.summary.subject = Some(subject.into());
        r.status = status;
        r
    };
    let a = mk(
        50,
        "alice@example.org",
        &["bob@example.test"],
        "Quarterly figures",
        Status::Held,
    );
    let b = mk(
        40,
        "",
        &["Carol@example.test", "bob@example.test"],
        "Undeliverable: x",
        Status::Failed,
    );
    let c = mk(
        30,
        "ALICE@example.org",
        &["carol@example.test"],
        "lunch",
        Status::Journal,
    );
    let d = mk(
        20,
        "dave@example.net",
        &["erin@example.test"],
        "quarterly review",
        Status::Delivered,
    );
    for r in [&a, &b, &c, &d] {
        assert!(index.insert(r).await.unwrap());
    }
    let ids = |v: Vec<Record>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let find = async |q: ListQuery| {
        // Pages of one, so the filters must hold across the cursor too.
        let (mut out, mut after) = (Vec::new(), None);
        loop {
            let page = index
                .list(&ListQuery {
                    limit: Some(1),
                    after,
                    ..q.clone()
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(Cursor::from(last));
            out.extend(page);
        }
        assert_eq!(
            ids(index.list(&q).await.unwrap()),
            ids(out.clone()),
            "{q:?}"
        );
        ids(out)
    };
    let q = |f: fn(&mut ListQuery)| {
        let mut q = ListQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(
        find(q(|q| q.rcpt = Some("CAROL@example.test".into()))).await,
        [b.id, c.id]
    );
    assert_eq!(
        find(q(|q| q.rcpt = Some("bob@example.test".into()))).await,
        [a.id, b.id]
    );
    assert_eq!(
        find(q(|q| q.from = Some("alice@EXAMPLE.org".into()))).await,
        [a.id, c.id]
    );
    assert_eq!(find(q(|q| q.from = Some("<>".into()))).await, [b.id]);
    assert_eq!(
        find(q(|q| q.subject = Some("QUARTERLY".into()))).await,
        [a.id, d.id]
    );
    assert_eq!(find(q(|q| q.class = Some(Class::Journal))).await, [c.id]);
    assert_eq!(
        find(q(|q| q.class = Some(Class::Held))).await,
        [a.id, b.id, d.id]
    );
    let both = q(|q| {
        q.rcpt = Some("bob@example.test".into());
        q.subject = Some("undeliver".into());
    });
    assert_eq!(find(both).await, [b.id]);
    let mut window = q(|q| q.class = Some(Class::Held));
    window.since = Some(b.received_at);
    window.until = Some(d.received_at);
    assert_eq!(find(window).await, [b.id]);
    assert!(
        find(q(|q| q.rcpt = Some("nobody@example.test".into())))
            .await
            .is_empty()
    );

    // A changed recipient list and subject are searched as changed; a deleted record is
    // found by nothing.
    let mut a2 = a.clone();
    a2.rcpts = vec![Recipient::pending("zed@example.test")];
    a2.summary.subject = Some("renamed".into());
    index.update(&a2, Utc::now()).await.unwrap();
    assert_eq!(
        find(q(|q| q.rcpt = Some("zed@example.test".into()))).await,
        [a.id]
    );
    assert_eq!(
        find(q(|q| q.rcpt = Some("bob@example.test".into()))).await,
        [b.id]
    );
    assert_eq!(
        find(q(|q| q.subject = Some("renamed".into()))).await,
        [a.id]
    );
    assert!(index.delete(&b, Utc::now()).await.unwrap());
    assert!(find(q(|q| q.rcpt = Some("carol@example.test".into()))).await == [c.id]);
    assert!(
        find(q(|q| q.subject = Some("undeliverable".into())))
            .await
            .is_empty()
    );
}

/// A user's mailbox: their address, its tagged forms and their aliases; held and paused
/// mail always, delivered and journal copies since `kept_since`, failed never; newest
/// first, page by page; the sender search in the header `From` and the envelope.
async fn mailbox_contract(index: Arc<dyn Index>) {
    let mk = |age: i64, rcpts: &[&str], status: Status, from: &str| {
        let mut r = record(age);
        r.rcpts = rcpts.iter().map(|a| Recipient::pending(*a)).collect();
        r.status = status;
        r.summary.from = Some(from.into());
        r
    };
    let day = 86_400;
    let recs = [
        mk(
            90 * day,
            &["alice@example.test"],
            Status::Held,
            "Old Friend <f@x.org>",
        ),
        mk(80 * day, &["alice@example.test"], Status::Delivered, "x"),
        mk(
            70 * day,
            &["Alice+News@Example.TEST"],
            Status::Paused,
            "News <n@y.org>",
        ),
        mk(
            60,
            &["bob@example.test", "SALES@example.test"],
            Status::Journal,
            "Buyer <b@z.org>",
        ),
        mk(50, &["alice@example.test"], Status::Failed, "x"),
        mk(
            40,
            &["alicex@example.test", "alice@example.org"],
            Status::Held,
            "x",
        ),
        mk(30, &["alice+@example.test"], Status::Delivered, "x"),
        mk(20, &["bob@example.test"], Status::Held, "x"),
        mk(
            10,
            &["alice@example.test", "sales@example.test"],
            Status::Held,
            "Both <q@x.org>",
        ),
        mk(5, &["sales+eu@example.test"], Status::Held, "x"),
    ];
    for r in &recs {
        assert!(index.insert(r).await.unwrap());
    }
    let mailbox = MailboxFilter {
        addresses: vec!["alice@example.test".into(), "sales@example.test".into()],
        // Someone else's own alias, though it looks like a tag of sales@.
        excluded: vec!["sales+eu@example.test".into()],
        kept_since: Utc::now() - Duration::days(30),
    };
    let mut q = ListQuery {
        mailbox: Some(mailbox),
        newest_first: true,
        limit: Some(2),
        ..ListQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = index.list(&q).await.unwrap();
        seen.extend(page.iter().map(|r| r.id));
        if page.len() < 2 {
            break;
        }
        q.after = page.last().map(Cursor::from);
    }
    // `alice+@` (an empty tag) is alice's, as Dovecot delivers it; `alicex@` and
    // `alice@example.org` are not.
    let want: Vec<MessageId> = [8, 6, 3, 2, 0].iter().map(|&i| recs[i].id).collect();
    assert_eq!(seen, want, "newest first, each once, only the user's");
    q.after = None;
    q.limit = None;
    q.sender = Some("FRIEND".into());
    let got: Vec<MessageId> = index.list(&q).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(got, [recs[0].id]);
    q.sender = Some("f@x.org".into());
    q.mailbox = None;
    q.newest_first = false;
    let got: Vec<MessageId> = index.list(&q).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(
        got,
        [recs[0].id],
        "the envelope sender is a@example.org, the header f@x.org"
    );
    q.sender = Some("a@example.org".into());
    assert_eq!(index.list(&q).await.unwrap().len(), recs.len());
    // A window that ends before it starts holds nothing (DynamoDB refuses such a range).
    q.since = Some(Utc::now());
    q.until = Some(Utc::now() - Duration::days(1));
    assert!(index.list(&q).await.unwrap().is_empty());
    q.newest_first = true;
    q.mailbox = Some(MailboxFilter {
        addresses: vec!["alice@example.test".into()],
        excluded: vec![],
        kept_since: Utc::now() - Duration::days(30),
    });
    assert!(index.list(&q).await.unwrap().is_empty());

    // A mailbox larger than one read of an index (DynamoDB reads a recipient partition
    // a hundred keys at a time and the records a few at once): unpaged, all of it in
    // order; by recipient with a limit, the first ones.
    let many: Vec<Record> = (0..230)
        .map(|i| mk(100_000 - i * 7, &["carol@example.test"], Status::Held, "x"))
        .collect();
    for r in &many {
        assert!(index.insert(r).await.unwrap());
    }
    let want: Vec<MessageId> = many.iter().map(|r| r.id).collect();
    let q = ListQuery {
        mailbox: Some(MailboxFilter {
            addresses: vec!["carol@example.test".into()],
            excluded: vec![],
            kept_since: Utc::now() - Duration::days(30),
        }),
        ..ListQuery::default()
    };
    let got: Vec<MessageId> = index.list(&q).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(got.len(), want.len(), "a whole mailbox");
    assert!(got == want, "a whole mailbox, oldest first, each once");
    // Only what was received since a time (an IMAP session's look between whole ones).
    let since = ListQuery {
        since: Some(many[200].received_at),
        ..q.clone()
    };
    let got: Vec<MessageId> = index
        .list(&since)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert!(got == want[200..], "since the 201st: {} of 30", got.len());
    let q = ListQuery {
        rcpt: Some("carol@example.test".into()),
        limit: Some(150),
        ..ListQuery::default()
    };
    let got: Vec<MessageId> = index.list(&q).await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(got.len(), 150, "a limit of 150");
    assert!(got == want[..150], "the first 150 to carol, in order");
}

/// Login limits: after `max` failures for a key in a window (started by the first), the
/// key is refused until the window ends; other keys are not affected; a new window after;
/// failures counted at once by several processes are all counted, each write returning
/// its own count.
async fn limits_contract(limits: Arc<dyn LoginLimits>) {
    let t0 = Utc::now();
    let minute = Duration::seconds(60);
    let ip = "ip:192.0.2.1";
    for i in 0..5 {
        let at = t0 + Duration::seconds(i);
        assert_eq!(
            limits.blocked(ip, at, minute, 5).await.unwrap(),
            None,
            "{i}"
        );
        limits.failed(ip, at, minute).await.unwrap();
    }
    let wait = limits
        .blocked(ip, t0 + Duration::seconds(20), minute, 5)
        .await
        .unwrap()
        .expect("the sixth attempt waits");
    assert!(
        (Duration::seconds(39)..=Duration::seconds(41)).contains(&wait),
        "{wait}"
    );
    let other = "user:alice@example.test";
    assert_eq!(limits.blocked(other, t0, minute, 5).await.unwrap(), None);
    assert_eq!(
        limits.blocked(ip, t0 + minute, minute, 5).await.unwrap(),
        None,
        "the window ended"
    );
    assert_eq!(
        limits.failed(ip, t0 + minute, minute).await.unwrap(),
        1,
        "the first of a new window"
    );
    assert_eq!(
        limits.blocked(ip, t0 + minute, minute, 1).await.unwrap(),
        Some(minute),
        "a new window, one failure in it"
    );
    // Twelve failures at once: every one counted.
    let at = t0 + Duration::seconds(200);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let l = limits.clone();
        tasks.push(tokio::spawn(async move {
            l.failed("ip:198.51.100.9", at, Duration::seconds(60))
                .await
                .unwrap()
        }));
    }
    // Each write returns its own count: the twelve numbers 1 to 12, once each (what
    // the send limit judges a message by).
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=12).collect::<Vec<u32>>());
    let key = "ip:198.51.100.9";
    assert!(limits.blocked(key, at, minute, 12).await.unwrap().is_some());
    assert!(limits.blocked(key, at, minute, 13).await.unwrap().is_none());
}

async fn blob_contract(blobs: Arc<dyn BlobStore>) {
    let id = MessageId::new(Utc::now());
    let key = id.to_string();
    assert!(matches!(
        blobs.open(&key).await,
        Err(StoreError::MissingBlob(_))
    ));
    assert!(matches!(
        blobs.stat(&key).await,
        Err(StoreError::MissingBlob(_))
    ));
    let mut w = blobs.create(id).await.unwrap();
    w.set_envelope(b"{}\n".to_vec());
    w.write(b"hello ").await.unwrap();
    w.write(b"world").await.unwrap();
    assert!(blobs.open(&key).await.is_err(), "invisible before commit");
    assert!(
        blobs.list().await.unwrap().is_empty(),
        "unlisted before commit"
    );
    w.commit().await.unwrap();
    let mut got = Vec::new();
    blobs
        .open(&key)
        .await
        .unwrap()
        .read_to_end(&mut got)
        .await
        .unwrap();
    assert_eq!(got, b"hello world");
    let (all, read_info) = blobs.read_all(&key).await.unwrap();
    assert_eq!(all, b"hello world");
    assert!(matches!(
        blobs.read_all("01JD3X8Q2T5M7K9V0W4Y6Z8A1B").await,
        Err(StoreError::MissingBlob(_))
    ));
    let info = blobs.stat(&key).await.unwrap();
    assert_eq!(
        read_info, info,
        "read_all and stat agree (same store time, whole seconds on S3)"
    );
    assert_eq!((info.key.as_str(), info.size), (key.as_str(), 11));
    assert!((Utc::now() - info.stored_at).num_seconds().abs() < 60);
    let listed = blobs.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(listed[0].size, 11);

    let other = MessageId::new(Utc::now());
    let mut w = blobs.create(other).await.unwrap();
    w.write(b"partial").await.unwrap();
    w.abort().await;
    assert!(
        blobs.open(&other.to_string()).await.is_err(),
        "aborted blob stays invisible"
    );
    assert!(
        blobs.open("../index.db").await.is_err(),
        "names are never paths"
    );

    blobs.delete(&key).await.unwrap();
    blobs.delete(&key).await.unwrap();
    assert!(blobs.open(&key).await.is_err());
    assert!(blobs.list().await.unwrap().is_empty());
}

/// The continuity record saves only over the version read, and a mark is set once,
/// whoever tries at the same time.
async fn events_contract(events: Arc<dyn EventStore>) {
    let fresh = events.load().await.unwrap();
    assert_eq!(fresh, Continuity::default());
    let mut c = fresh.clone();
    c.notices_checked = Some(Utc::now());
    events.save(&c).await.unwrap();
    let stored = events.load().await.unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.notices_checked, c.notices_checked);
    // A second writer that read version 0 writes nothing.
    let mut late = fresh.clone();
    late.drain_errors_alerted = Some(Utc::now());
    assert!(matches!(
        events.save(&late).await,
        Err(StoreError::FileChanged(_))
    ));
    assert_eq!(events.load().await.unwrap(), stored);
    let mut next = stored.clone();
    next.drain_errors_alerted = Some(Utc::now());
    events.save(&next).await.unwrap();
    assert!(matches!(
        events.save(&stored).await,
        Err(StoreError::FileChanged(_))
    ));
    assert_eq!(events.load().await.unwrap().version, 2);
    // Marks: set once among many at the same time, cleared, set again.
    let keep = Utc::now() + Duration::days(1);
    let tries = (0..8).map(|_| {
        let events = events.clone();
        tokio::spawn(async move {
            events
                .mark_once("notice#e1#start#a@example.test", keep)
                .await
        })
    });
    let mut won = 0;
    for t in tries {
        won += usize::from(t.await.unwrap().unwrap());
    }
    assert_eq!(won, 1);
    assert!(
        events
            .mark_once("notice#e1#end#a@example.test", keep)
            .await
            .unwrap()
    );
    events
        .unmark("notice#e1#start#a@example.test")
        .await
        .unwrap();
    assert!(
        events
            .mark_once("notice#e1#start#a@example.test", keep)
            .await
            .unwrap()
    );
    assert!(
        !events
            .mark_once("notice#e1#end#a@example.test", keep)
            .await
            .unwrap()
    );
    assert!(events.marked("notice#e1#end#a@example.test").await.unwrap());
    assert!(!events.marked("notice#e2#end#a@example.test").await.unwrap());
    // A mark past its time counts as not set, whether or not the store removed it yet.
    let past = Utc::now() - Duration::seconds(5);
    assert!(events.mark_once("sending#e1#a", past).await.unwrap());
    assert!(!events.marked("sending#e1#a").await.unwrap());
    assert!(events.mark_once("sending#e1#a", keep).await.unwrap());
    assert!(events.marked("sending#e1#a").await.unwrap());
}

/// The audit log keeps entries in order, and its newest page reads from the end.
async fn audit_contract(audit: Arc<dyn AuditLog>) {
    let t0 = Utc::now() - Duration::seconds(100);
    for i in 0..5 {
        let e = AuditEntry::session("login", &format!("web:u{i}"), "", t0 + Duration::seconds(i));
        audit.append(&e).await.unwrap();
    }
    let all = audit.entries().await.unwrap();
    let by: Vec<&str> = all.iter().map(|e| e.by.as_str()).collect();
    assert_eq!(by, ["web:u0", "web:u1", "web:u2", "web:u3", "web:u4"]);
    let recent = audit.recent(2).await.unwrap();
    let by: Vec<&str> = recent.iter().map(|e| e.by.as_str()).collect();
    assert_eq!(by, ["web:u4", "web:u3"]);
    assert_eq!(audit.recent(10).await.unwrap().len(), 5);
}

/// Each user's UIDs and flags (IMAP, POP3): one UID per message, never given twice, in
/// the order asked, per user, kept with the flags.
async fn uids_contract(boxes: Arc<dyn standby::ports::Mailboxes>) {
    use standby::model::mailbox::Flags;
    let fresh = boxes.load("alice@example.test").await.unwrap();
    assert!(fresh.validity > 0);
    assert_eq!((fresh.next_uid, fresh.entries.len()), (1, 0));
    assert_eq!(
        boxes.load("alice@example.test").await.unwrap().validity,
        fresh.validity,
        "UIDVALIDITY stays"
    );
    let ids: Vec<MessageId> = (0..4)
        .map(|i| MessageId::new(Utc::now() - Duration::seconds(100 - i)))
        .collect();
    let s = boxes
        .assign("alice@example.test", &[ids[1], ids[0], ids[1]])
        .await
        .unwrap();
    let uids = |s: &standby::model::mailbox::MailboxState| {
        s.entries.iter().map(|e| (e.uid, e.id)).collect::<Vec<_>>()
    };
    assert_eq!(uids(&s), [(1, ids[1]), (2, ids[0])]);
    let s = boxes
        .assign("alice@example.test", &[ids[0], ids[2], ids[1]])
        .await
        .unwrap();
    assert_eq!(uids(&s), [(1, ids[1]), (2, ids[0]), (3, ids[2])]);
    assert_eq!(s.next_uid, 4);
    let change =
        |uid, set: Flags, clear: Flags| standby::model::mailbox::FlagChange { uid, set, clear };
    boxes
        .change_flags(
            "alice@example.test",
            &[
                change(2, Flags::SEEN.with(Flags::FLAGGED), Flags::default()),
                change(99, Flags::SEEN, Flags::default()),
            ],
        )
        .await
        .unwrap();
    // Two sessions' changes to different flags of one message both stay; a hidden
    // message stays hidden whatever a change clears.
    boxes
        .change_flags(
            "alice@example.test",
            &[change(3, Flags::DELETED, Flags::default())],
        )
        .await
        .unwrap();
    boxes
        .change_flags(
            "alice@example.test",
            &[change(3, Flags::ANSWERED.with(Flags::HIDDEN), Flags::SEEN)],
        )
        .await
        .unwrap();
    boxes
        .change_flags(
            "alice@example.test",
            &[change(3, Flags::default(), Flags(0xff))],
        )
        .await
        .unwrap();
    let third = boxes.load("alice@example.test").await.unwrap().entries[2].flags;
    assert_eq!(third, Flags::HIDDEN);
    boxes
        .change_flags(
            "alice@example.test",
            &[change(3, Flags::DELETED, Flags::default())],
        )
        .await
        .unwrap();
    let s = boxes.load("alice@example.test").await.unwrap();
    assert_eq!(s.entries[1].flags, Flags::SEEN.with(Flags::FLAGGED));
    assert_eq!(s.entries[2].flags, Flags::HIDDEN.with(Flags::DELETED));
    assert_eq!(s.entries[0].flags, Flags::default());
    // Another user's mailbox is their own.
    let bob = boxes.assign("bob@example.test", &[ids[2]]).await.unwrap();
    assert_eq!(uids(&bob), [(1, ids[2])]);
    // Two sessions assigning at once: no message gets two UIDs, no UID two messages.
    let (both, one) = ([ids[3], ids[2]], [ids[3]]);
    let (a, b) = tokio::join!(
        boxes.assign("alice@example.test", &both),
        boxes.assign("alice@example.test", &one)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let s = boxes.load("alice@example.test").await.unwrap();
    assert_eq!(uids(&s).len(), 4, "{s:?}");
    assert_eq!(
        s.entries[3],
        standby::model::mailbox::UidEntry {
            uid: 4,
            id: ids[3],
            flags: Flags::default()
        }
    );
    for seen in [a, b] {
        assert!(seen.entries.iter().all(|e| s.entries.contains(e)));
    }
    // A message that left the view (marked gone) and came back: a new UID with the
    // user's flags; its old UID never shown again. One hidden while gone stays hidden.
    boxes
        .change_flags(
            "alice@example.test",
            &[
                change(2, Flags::GONE, Flags::default()),
                change(3, Flags::GONE, Flags::default()),
            ],
        )
        .await
        .unwrap();
    let back = boxes
        .assign("alice@example.test", &[ids[0], ids[2], ids[0]])
        .await
        .unwrap();
    let shown = |s: &standby::model::mailbox::MailboxState| {
        s.entries
            .iter()
            .filter(|e| !e.flags.has(Flags::HIDDEN))
            .map(|e| (e.uid, e.id, e.flags))
            .collect::<Vec<_>>()
    };
    let want = [
        (1, ids[1], Flags::default()),
        (4, ids[3], Flags::default()),
        (5, ids[0], Flags::SEEN.with(Flags::FLAGGED)),
    ];
    assert_eq!(shown(&back), want);
    assert_eq!(back.next_uid, 6);
    let again = boxes.assign("alice@example.test", &[ids[0]]).await.unwrap();
    assert_eq!((shown(&again), again.next_uid), (want.to_vec(), 6));
    assert_eq!(
        shown(&boxes.load("alice@example.test").await.unwrap()),
        want
    );
    // A session that still knows it by its old UID removes it: gone from the new one.
    boxes
        .change_flags(
            "alice@example.test",
            &[change(
                2,
                Flags::HIDDEN.with(Flags::DELETED),
                Flags::default(),
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        shown(&boxes.load("alice@example.test").await.unwrap()),
        want[..2]
    );
}

#[tokio::test]
async fn memory_adapters_keep_the_contract() {
    uids_contract(Arc::new(standby::backend::MemMailboxes::default())).await;
    audit_contract(Arc::new(standby::backend::MemAuditLog::default())).await;
    events_contract(Arc::new(standby::backend::MemEventStore::default())).await;
    index_contract(Arc::new(MemIndex::default())).await;
    search_contract(Arc::new(MemIndex::default())).await;
    mailbox_contract(Arc::new(MemIndex::default())).await;
    limits_contract(Arc::new(standby::backend::MemLoginLimits::default())).await;
    blob_contract(Arc::new(MemBlobStore::default())).await;
}

#[tokio::test]
async fn local_adapters_keep_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    index_contract(Arc::new(SqliteIndex::open(dir.path()).unwrap())).await;
    let other = tempfile::tempdir().unwrap();
    search_contract(Arc::new(SqliteIndex::open(other.path()).unwrap())).await;
    let third = tempfile::tempdir().unwrap();
    mailbox_contract(Arc::new(SqliteIndex::open(third.path()).unwrap())).await;
    let fourth = tempfile::tempdir().unwrap();
    events_contract(Arc::new(SqliteIndex::open(fourth.path()).unwrap())).await;
    uids_contract(Arc::new(SqliteIndex::open(fourth.path()).unwrap())).await;
    // Kept across a reopen (a restart): the same UIDVALIDITY, UIDs and flags.
    let before = standby::ports::Mailboxes::load(
        &SqliteIndex::open(fourth.path()).unwrap(),
        "alice@example.test",
    )
    .await
    .unwrap();
    assert_eq!((before.entries.len(), before.next_uid), (5, 6));
    audit_contract(Arc::new(standby::backend::FsAuditLog::new(fourth.path()))).await;
    let fs = FsBlobStore::open(dir.path()).unwrap();
    blob_contract(Arc::new(fs.clone())).await;
    let left = fs.recover(|_| Ok(false), |_| false).unwrap();
    assert_eq!(
        (left.removed, left.unpublished.len()),
        (0, 0),
        "abort and delete cleaned up after themselves"
    );
}

/// What only several items and several nodes show, on nodes `a` and `b` and a `fresh`
/// one (nothing kept): a mailbox of `many` messages past one chunk item, a node that kept
/// an old copy seeing another node's change, messages coming back from several chunks,
/// two nodes assigning at once.
async fn mailboxes_across_nodes(
    a: Arc<dyn standby::ports::Mailboxes>,
    b: Arc<dyn standby::ports::Mailboxes>,
    fresh: Arc<dyn standby::ports::Mailboxes>,
    many: usize,
) {
    use standby::model::mailbox::{FlagChange, Flags};
    let flag = |uid: usize, set| FlagChange {
        uid: u32::try_from(uid).unwrap(),
        set,
        clear: Flags::default(),
    };
    let base = Utc::now() - Duration::days(2);
    let ids: Vec<MessageId> = (0..many)
        .map(|i| MessageId::new(base + Duration::milliseconds(i64::try_from(i).unwrap())))
        .collect();
    let big = a.assign("carol@example.test", &ids).await.unwrap();
    assert_eq!(big.entries.len(), many);
    assert_eq!(big.entries[many - 1].uid as usize, many);
    b.change_flags(
        "carol@example.test",
        &[flag(many - 1, Flags::SEEN), flag(2, Flags::FLAGGED)],
    )
    .await
    .unwrap();
    // `a` kept its own copy from the assign: it sees `b`'s change all the same.
    let seen = a.load("carol@example.test").await.unwrap();
    assert_eq!(seen.entries[many - 2].flags, Flags::SEEN);
    assert_eq!(seen.entries[1].flags, Flags::FLAGGED);
    assert_eq!(
        seen.entries
            .iter()
            .map(|e| (e.uid as usize, e.id))
            .collect::<Vec<_>>(),
        ids.iter()
            .enumerate()
            .map(|(i, id)| (i + 1, *id))
            .collect::<Vec<_>>()
    );
    // Messages from all over the mailbox leave the view and come back: each a new UID
    // after every other, with its flags; the old UIDs never shown again.
    let back: Vec<usize> = (0..many).step_by(many / 9).collect();
    b.change_flags(
        "carol@example.test",
        &back
            .iter()
            .map(|&i| flag(i + 1, Flags::GONE))
            .chain([flag(back[0] + 1, Flags::ANSWERED)])
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let ids_back: Vec<MessageId> = back.iter().map(|&i| ids[i]).collect();
    let after = a.assign("carol@example.test", &ids_back).await.unwrap();
    let shown = |s: &standby::model::mailbox::MailboxState| {
        s.entries
            .iter()
            .filter(|e| !e.flags.has(Flags::HIDDEN))
            .map(|e| (e.uid as usize, e.id))
            .collect::<Vec<_>>()
    };
    let mut want: Vec<(usize, MessageId)> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !back.contains(i))
        .map(|(i, id)| (i + 1, *id))
        .collect();
    want.extend(
        ids_back
            .iter()
            .enumerate()
            .map(|(j, id)| (many + 1 + j, *id)),
    );
    assert_eq!(shown(&after), want);
    let first = after
        .entries
        .iter()
        .find(|e| e.id == ids[back[0]] && !e.flags.has(Flags::HIDDEN))
        .map(|e| e.flags);
    assert_eq!(first, Some(Flags::ANSWERED), "its flags came back with it");
    // Two nodes assigning the same new messages at once: each gets one UID.
    let late: Vec<MessageId> = (0..50)
        .map(|i| MessageId::new(base + Duration::seconds(100 + i)))
        .collect();
    let (x, y) = tokio::join!(
        a.assign("carol@example.test", &late[..30]),
        b.assign("carol@example.test", &late[10..])
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let all = fresh.load("carol@example.test").await.unwrap();
    let visible = shown(&all);
    assert_eq!(visible.len(), many + 50);
    assert_eq!(all.next_uid as usize, many + back.len() + 51);
    let mut distinct: Vec<_> = visible.iter().map(|(_, id)| *id).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), many + 50, "no message has two UIDs");
    assert!(all.entries.windows(2).all(|w| w[0].uid < w[1].uid));
    for seen in [x, y] {
        assert!(seen.entries.iter().all(|e| all.entries.contains(e)));
    }
}

/// The DynamoDB mailboxes, as a `serve` node signs (ServeNodePolicy): the contract and
/// [`mailboxes_across_nodes`] past one 4,096-entry chunk.
#[tokio::test]
async fn dynamo_mailboxes_keep_the_contract_across_nodes() {
    use standby::model::mailbox::Flags;
    let moto = common::aws::Moto::start();
    let (_, settings, _) = moto.storage("uids").await;
    let node = || async {
        let clients = moto.clients_as(common::iam::Principal::Serve).await;
        standby::ports::Storage::aws_serve(&clients, &settings)
            .mailboxes
            .expect("a serve node keeps mailboxes")
    };
    uids_contract(node().await).await;
    // Restarted (a new node, nothing cached): the same UIDVALIDITY, UIDs and flags.
    let kept = node().await.load("alice@example.test").await.unwrap();
    assert_eq!((kept.entries.len(), kept.next_uid), (5, 6));
    assert!(
        kept.entries[2]
            .flags
            .has(Flags::HIDDEN.with(Flags::DELETED))
    );
    mailboxes_across_nodes(node().await, node().await, node().await, 4100).await;
}

/// The same with chunks of 4 entries and 4 of them to a transaction: reads of several
/// transactions, assignments in many pieces, returns from many chunks.
#[tokio::test]
async fn dynamo_mailboxes_in_small_chunks_keep_the_contract() {
    let moto = common::aws::Moto::start();
    let (_, settings, _) = moto.storage("smalluids").await;
    let node = || async {
        let clients = moto.clients_as(common::iam::Principal::Serve).await;
        Arc::new(
            standby::backend::aws::DynamoMailboxes::new(clients.dynamodb.clone(), &settings.table)
                .with_limits(4, 4),
        ) as Arc<dyn standby::ports::Mailboxes>
    };
    uids_contract(node().await).await;
    mailboxes_across_nodes(node().await, node().await, node().await, 100).await;
}

#[tokio::test]
async fn sqlite_index_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let r = record(10);
    {
        let index = SqliteIndex::open(dir.path()).unwrap();
        index.insert(&r).await.unwrap();
    }
    let index = SqliteIndex::open(dir.path()).unwrap();
    assert_eq!(index.get(r.id).await.unwrap(), Some(r));
}

#[tokio::test]
async fn aws_adapters_keep_the_contract() {
    let moto = common::aws::Moto::start();
    let (clients, settings, storage) = moto.storage("contract").await;
    index_contract(storage.index.clone()).await;
    let (_, _, other) = moto.storage("search").await;
    search_contract(other.index.clone()).await;
    let (_, _, third) = moto.storage("mailbox").await;
    mailbox_contract(third.index.clone()).await;
    limits_contract(Arc::new(clients.login_limits(&settings))).await;
    blob_contract(storage.blobs.clone()).await;
    events_contract(storage.events.clone()).await;
    audit_contract(storage.audit.clone()).await;
}

#[tokio::test]
async fn aws_claims_race_without_double_leases() {
    // Two drains claiming from the same table at once never get the same message.
    let moto = common::aws::Moto::start();
    let (_, _, storage) = moto.storage("race").await;
    for i in 0..30 {
        storage.index.insert(&record(100 + i)).await.unwrap();
    }
    let (ca, cb) = (claim("a", 30), claim("b", 30));
    let (a, b) = tokio::join!(storage.index.claim(&ca), storage.index.claim(&cb));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.len() + b.len(),
        30,
        "every message claimed once: a {} b {}",
        a.len(),
        b.len()
    );
    for r in &a {
        assert!(b.iter().all(|x| x.id != r.id), "{} claimed twice", r.id);
    }
}

#[tokio::test]
async fn aws_errors_say_whether_to_retry() {
    let moto = common::aws::Moto::start();
    let clients = moto.clients().await;
    // A table that does not exist: permanent, named in the message.
    let missing = standby::ports::Storage::aws(&clients, &moto.settings("nosuchtable"));
    let e = missing.index.counts().await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("ResourceNotFoundException"), "{e}");
    // Nothing listening: transient (the next run may reach it).
    let mut settings = moto.settings("any");
    let port = common::free_port();
    settings.endpoint_url = Some(format!("http://127.0.0.1:{port}"));
    let sdk = clients
        .sdk
        .to_builder()
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .build();
    let down = standby::backend::aws::AwsClients::from_sdk(sdk);
    let storage = standby::ports::Storage::aws(&down, &settings);
    let e = storage
        .index
        .get(MessageId::new(Utc::now()))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = storage.blobs.stat("x").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

/// What a crash leaves in `tmp/`: a message received with its envelope, and one with a
/// row (committed without staging, its rename undone by a power cut), are handed back
/// for the caller to check, readable where they are; a partial file of a message never
/// acknowledged is removed.
#[tokio::test]
async fn fs_spool_recovers_what_a_crash_left_in_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FsBlobStore::open(dir.path()).unwrap();
    let index = SqliteIndex::open(dir.path()).unwrap();
    let commit = |id: MessageId, body: &'static [u8], envelope: bool| {
        let fs = fs.clone();
        async move {
            let mut w = fs.create(id).await.unwrap();
            w.write(body).await.unwrap();
            if envelope {
                // The receive path: staged, then flushed, then left in `tmp/`.
                w.set_envelope(b"{\"stamp\":1}\n".to_vec());
                assert!(w.stage().await.unwrap());
            }
            w.commit().await.unwrap();
        }
    };
    let received = record(11);
    commit(received.id, b"Subject: acked\r\n\r\nbody\r\n", true).await;
    index.insert(&received).await.unwrap();
    // Not staged (a DSN): in `messages/` at commit; a power cut undid the rename.
    let dsn = record(13);
    commit(dsn.id, b"Subject: dsn\r\n\r\n", false).await;
    index.insert(&dsn).await.unwrap();
    let in_tmp = |id: MessageId| dir.path().join("tmp").join(format!("{id}.spool"));
    std::fs::rename(fs.path(dsn.id), in_tmp(dsn.id)).unwrap();
    // A write a crash cut short: no footer.
    let partial = record(12);
    std::fs::write(in_tmp(partial.id), b"Subj").unwrap();

    // Committed, not published: readable in `tmp/` already.
    let (bytes, _) = fs.read_all(&received.id.to_string()).await.unwrap();
    assert_eq!(bytes, b"Subject: acked\r\n\r\nbody\r\n");
    assert!(!fs.path(received.id).exists());

    // `standby serve` at start.
    let got = fs.recover(|id| index.contains(id), |_| false).unwrap();
    assert_eq!(got.removed, 1);
    let mut handed: Vec<_> = got
        .unpublished
        .iter()
        .map(|s| (s.id, s.envelope.clone()))
        .collect();
    handed.sort_by_key(|(id, _)| *id);
    let mut want = vec![
        (received.id, Some(b"{\"stamp\":1}\n".to_vec())),
        (dsn.id, None),
    ];
    want.sort_by_key(|(id, _)| *id);
    assert_eq!(handed, want);
    assert!(!in_tmp(partial.id).exists());
    fs.publish(vec![received.id.to_string(), dsn.id.to_string()])
        .await
        .unwrap();
    assert!(fs.path(received.id).exists());
    assert!(fs.path(dsn.id).exists());
    for id in [received.id, dsn.id] {
        fs.delete(&id.to_string()).await.unwrap();
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("messages"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn aws_blob_store_never_overwrites_and_serve_blobs_are_found_where_the_record_says() {
    let moto = common::aws::Moto::start();
    let (clients, settings, ses) = moto.storage("nooverwrite").await;
    let serve = standby::ports::Storage::aws_serve(&clients, &settings);
    let id = MessageId::new(Utc::now());
    let put = |store: Arc<dyn BlobStore>, bytes: &'static [u8]| async move {
        let mut w = store.create(id).await.unwrap();
        let key = w.key();
        w.write(bytes).await.unwrap();
        (key, w.commit().await)
    };
    let (key, first) = put(serve.blobs.clone(), b"first").await;
    first.unwrap();
    let key = key.expect("a serve blob is keyed by its whole object key");
    assert_eq!(key, format!("serve/{id}"));
    // The same id again: S3 answers 412 to `If-None-Match: *` (moto 5.2.5 implements
    // it), and the stored bytes stay.
    let (_, second) = put(serve.blobs.clone(), b"second").await;
    let e = second.expect_err("a second PutObject of the same key must be refused");
    assert!(e.to_string().contains("PreconditionFailed"), "{e}");
    assert!(!e.is_transient(), "{e}");
    // Any store reads it by the record's key, whatever its own prefix; the SES store's
    // listing (the reconciler's) never shows it.
    let (bytes, _) = ses.blobs.read_all(&key).await.unwrap();
    assert_eq!(bytes, b"first");
    assert!(ses.blobs.list().await.unwrap().is_empty());
    let obj = clients
        .s3
        .get_object()
        .bucket("nooverwrite")
        .key(format!("serve/{id}"))
        .send()
        .await
        .unwrap();
    let body = obj.body.collect().await.unwrap().into_bytes();
    assert_eq!(&body[..], b"first");
}

/// Compare-and-set: every record write names the version it read and stores the next; a
/// write from a stale read changes nothing, whoever wrote in between (an operator, a
/// drain's write-back, the sender check); a delete also re-checks the legal hold itself.
async fn version_contract(index: Arc<dyn Index>) {
    let rec = record(100);
    assert!(index.insert(&rec).await.unwrap());
    let read = |id| {
        let index = index.clone();
        async move { index.get(id).await.unwrap().unwrap() }
    };
    let v0 = read(rec.id).await;
    assert_eq!(v0.version, 0, "a new record is at version 0");

    // Two operators read the same version; the second write finds it changed.
    let (mut first, mut second) = (v0.clone(), v0.clone());
    first.status = Status::Paused;
    index.update(&first, Utc::now()).await.unwrap();
    second.reason = Some("stale".into());
    assert!(matches!(
        index.update(&second, Utc::now()).await,
        Err(StoreError::Changed(_))
    ));
    let v1 = read(rec.id).await;
    assert_eq!(
        (v1.status, v1.reason.as_deref(), v1.version),
        (Status::Paused, None, 1)
    );

    // An operator's read, then a drain claims, delivers and writes back: the operator's
    // change (made on what it read) is refused, and the delivery stays.
    let mut released = v1.clone();
    released.status = Status::Held;
    index.update(&released, Utc::now()).await.unwrap();
    let operator = read(rec.id).await;
    let claimed = index.claim(&claim("drain-x", 10)).await.unwrap();
    let mut delivered = claimed.into_iter().find(|r| r.id == rec.id).unwrap();
    assert_eq!(delivered.version, operator.version);
    delivered.status = Status::Delivered;
    index.complete(&delivered, "drain-x").await.unwrap();
    let mut held = operator.clone();
    held.status = Status::Paused;
    assert!(matches!(
        index.update(&held, Utc::now()).await,
        Err(StoreError::Changed(_))
    ));
    let now_delivered = read(rec.id).await;
    assert_eq!(now_delivered.status, Status::Delivered);

    // A write-back from a stale version is refused too (the token alone is not enough).
    let mut again = now_delivered.clone();
    again.status = Status::Held;
    index.update(&again, Utc::now()).await.unwrap();
    let c = index.claim(&claim("drain-y", 10)).await.unwrap();
    let mut mine = c.into_iter().find(|r| r.id == rec.id).unwrap();
    // The sender check lands between the claim and the write-back (it may not under a
    // live lease, so the lease must have ended: judged far in the future).
    index
        .set_verdicts(
            rec.id,
            &Verdicts::spf("PASS"),
            Utc::now() + Duration::hours(1),
        )
        .await
        .unwrap();
    mine.status = Status::Delivered;
    assert!(matches!(
        index.complete(&mine, "drain-y").await,
        Err(StoreError::Changed(_))
    ));
    let cur = read(rec.id).await;
    assert_eq!(cur.status, Status::Held);
    assert_eq!(cur.verdicts, Some(Verdicts::spf("PASS")));

    // Retention read the record; a legal hold placed after the read stops the delete,
    // in the delete's own condition.
    let mut done = cur.clone();
    done.status = Status::Delivered;
    index
        .update(&done, Utc::now() + Duration::hours(1))
        .await
        .unwrap();
    let retention_read = read(rec.id).await;
    let mut hold = retention_read.clone();
    hold.legal_hold = Some(standby::model::LegalHold {
        at: Utc::now(),
        reason: "case 7".into(),
    });
    index.update(&hold, Utc::now()).await.unwrap();
    assert!(matches!(
        index.delete(&retention_read, Utc::now()).await,
        Err(StoreError::LegalHold(_))
    ));
    let under_hold = read(rec.id).await;
    assert!(matches!(
        index.delete(&under_hold, Utc::now()).await,
        Err(StoreError::LegalHold(_))
    ));
    // Lifted: a delete from a read before the lift is stale, one after it goes.
    let mut lifted = under_hold.clone();
    lifted.legal_hold = None;
    index.update(&lifted, Utc::now()).await.unwrap();
    assert!(matches!(
        index.delete(&under_hold, Utc::now()).await,
        Err(StoreError::Changed(_))
    ));
    assert!(index.get(rec.id).await.unwrap().is_some());
    let fresh = read(rec.id).await;
    assert!(index.delete(&fresh, Utc::now()).await.unwrap());
    assert!(!index.delete(&fresh, Utc::now()).await.unwrap());

    // A purge read the record, then a drain claimed it (a claim keeps the version): the
    // delete waits for the lease, in its own condition, so the message is never deleted
    // under a drain that is sending it; once the lease has ended it goes.
    let sending = record(100);
    assert!(index.insert(&sending).await.unwrap());
    let purge_read = read(sending.id).await;
    let claimed = index.claim(&claim("drain-w", 100)).await.unwrap();
    assert!(claimed.iter().any(|r| r.id == sending.id));
    assert!(matches!(
        index.delete(&purge_read, Utc::now()).await,
        Err(StoreError::Leased(_))
    ));
    assert!(index.get(sending.id).await.unwrap().is_some());
    assert!(
        index
            .delete(&purge_read, Utc::now() + Duration::minutes(5))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn memory_index_keeps_versions() {
    version_contract(Arc::new(MemIndex::default())).await;
}

#[tokio::test]
async fn sqlite_index_keeps_versions() {
    let dir = tempfile::tempdir().unwrap();
    version_contract(Arc::new(SqliteIndex::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn dynamo_index_keeps_versions() {
    let moto = common::aws::Moto::start();
    let (_, _, storage) = moto.storage("versions").await;
    version_contract(storage.index.clone()).await;
}

/// A spool made before versions existed (no `version` column) opens, its records read
/// as version 0, and compare-and-set works on them from there.
#[tokio::test]
async fn sqlite_spool_without_versions_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let r = record(10);
    {
        let index = SqliteIndex::open(dir.path()).unwrap();
        index.insert(&r).await.unwrap();
    }
    // As the previous release left it: the same table without the column.
    let db = dir.path().join("index.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("ALTER TABLE messages DROP COLUMN version")
        .unwrap();
    let cols: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('messages')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!cols.contains(&"version".to_string()), "{cols:?}");
    drop(c);
    let index = SqliteIndex::open(dir.path()).unwrap();
    let got = index.get(r.id).await.unwrap().unwrap();
    assert_eq!(got, r);
    assert_eq!(got.version, 0);
    let mut paused = got.clone();
    paused.status = Status::Paused;
    index.update(&paused, Utc::now()).await.unwrap();
    assert!(matches!(
        index.update(&got, Utc::now()).await,
        Err(StoreError::Changed(_))
    ));
    assert_eq!(index.get(r.id).await.unwrap().unwrap().version, 1);
}

/// A DynamoDB item written before versions existed (no `ver`) reads as version 0 and
/// takes compare-and-set writes and deletes.
#[tokio::test]
async fn dynamo_items_without_versions_keep_working() {
    let moto = common::aws::Moto::start();
    let (clients, _, storage) = moto.storage("oldversions").await;
    let r = record(10);
    storage.index.insert(&r).await.unwrap();
    clients
        .dynamodb
        .update_item()
        .table_name("oldversions")
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("msg#{}", r.id)),
        )
        .update_expression("REMOVE ver")
        .send()
        .await
        .unwrap();
    let got = storage.index.get(r.id).await.unwrap().unwrap();
    assert_eq!((got.version, &got), (0, &r));
    let mut paused = got.clone();
    paused.status = Status::Paused;
    storage.index.update(&paused, Utc::now()).await.unwrap();
    assert!(matches!(
        storage.index.update(&got, Utc::now()).await,
        Err(StoreError::Changed(_))
    ));
    let v1 = storage.index.get(r.id).await.unwrap().unwrap();
    assert_eq!((v1.status, v1.version), (Status::Paused, 1));
    assert!(storage.index.delete(&v1, Utc::now()).await.unwrap());
}
