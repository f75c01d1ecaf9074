//! The hot paths of receiving, without I/O: the SMTP session state machine over one
//! transaction, the DATA decoder over a 100 KB body, and the listing summary parser over
//! a typical and a hostile header block. Regressions show here as numbers.
//!
//!     cargo bench --bench smtp

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use standby::model::MessageId;
use standby::smtp::data::DataDecoder;
use standby::smtp::session::{DataOutcome, Policy, Session};
use standby::summary::{self, HeadCapture};

fn policy() -> Policy {
    Policy {
        hostname: "standby.example.test".into(),
        authserv_ids: Vec::new(),
        domains: ["example.test".to_string()].into_iter().collect(),
        recipients: Some(
            (0..1000)
                .map(|i| format!("user{i}@example.test"))
                .collect::<HashSet<_>>(),
        ),
        max_message_size: 40 << 20,
        max_recipients: 100,
        tls_available: false,
        journal: Default::default(),
        journal_allow: Default::default(),
        postmaster: Some("postmaster@example.test".into()),
        submission: None,
    }
}

/// A 10 KB message as a sender would put it on the wire (dot-stuffed, CRLF).
fn message(body_bytes: usize) -> Vec<u8> {
    let mut m = b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\n\
Subject: Quarterly figures\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while m.len() < body_bytes {
        m.extend_from_slice(line);
        m.extend_from_slice(b"..a dot-stuffed line\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn session(c: &mut Criterion) {
    let policy = policy();
    let commands: Vec<&[u8]> = vec![
        b"EHLO client.example.org\r\n",
        b"MAIL FROM:<alice@example.org> SIZE=10240\r\n",
        b"RCPT TO:<user1@example.test>\r\n",
        b"RCPT TO:<user2@example.test>\r\n",
        b"RCPT TO:<relay@elsewhere.test>\r\n",
        b"DATA\r\n",
    ];
    let id: MessageId = "01JD3X8Q2T5M7K9V0W4Y6Z8A1B".parse().unwrap();
    c.bench_function("session: EHLO, MAIL, 3 RCPT, DATA, 250, QUIT", |b| {
        b.iter(|| {
            let mut s = Session::new(&policy, false);
            black_box(s.greeting());
            for cmd in &commands {
                black_box(s.handle(cmd));
            }
            black_box(s.data_done(DataOutcome::Stored(id)));
            black_box(s.handle(b"QUIT\r\n"));
        })
    });
}

fn data(c: &mut Criterion) {
    let wire = message(100 * 1024);
    let mut g = c.benchmark_group("data decoder");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("100 KB in 64 KB reads", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            let mut d = DataDecoder::new();
            let mut rest = &wire[..];
            loop {
                out.clear();
                let chunk = &rest[..rest.len().min(64 * 1024)];
                match d.feed(chunk, &mut out) {
                    Some(_) => break,
                    None => rest = &rest[chunk.len()..],
                }
                black_box(&out);
            }
        })
    });
    g.finish();
}

fn summaries(c: &mut Criterion) {
    let stored = message(10 * 1024);
    let mut nested = String::from("Content-Type: multipart/mixed; boundary=b0\r\n");
    for i in 0..2000 {
        nested.push_str(&format!("X-Pad-{i}: {}\r\n", "x".repeat(20)));
    }
    nested.push_str("\r\n");
    let mut g = c.benchmark_group("summary");
    g.bench_function("typical header block", |b| {
        b.iter(|| black_box(summary::parse(summary::head(&stored))))
    });
    g.bench_function("64 KB of headers (hostile)", |b| {
        b.iter(|| black_box(summary::parse(summary::head(nested.as_bytes()))))
    });
    g.bench_function("capture from a 10 KB message in 4 KB chunks", |b| {
        b.iter(|| {
            let mut h = HeadCapture::default();
            for chunk in stored.chunks(4096) {
                h.feed(chunk);
            }
            black_box(h.summary())
        })
    });
    g.finish();
}

criterion_group!(benches, session, data, summaries);
criterion_main!(benches);
