//! "250 means durable", checked where it happens: `standby serve` runs under `strace -f`
//! while swaks and smtp-source send, and for every `250 ... queued as <id>` written to a
//! client socket the trace must show, finished before that write:
//!
//! 1. an `fdatasync` of the message's file (`tmp/<id>.spool`: the bytes, then the
//!    envelope) started after the last write to it (the per-file flush writes the data
//!    back and reports that file's own writeback error), and an fsync of `tmp/` started
//!    after the file was created (its name);
//! 2. the row's write to the index's WAL (`index.db-wal`), and after it an `fdatasync`
//!    of the WAL (issued beside the files' flushes, see `standby::publish`);
//!
//! and, after the 250 or at the stop, the file's move into `messages/`.
//!
//! A SIGKILL test cannot see a missing flush (the page cache survives the process); this
//! one does. With the flushes removed from `FsBlobStore`'s commit it fails on the first
//! message.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::*;

/// One finished system call from the trace.
#[derive(Debug, Clone)]
struct Call {
    name: String,
    args: String,
    start: f64,
    end: f64,
}

/// Parse `strace -f -ttt -T -y` output, joining `<unfinished ...>` / `resumed` pairs.
fn parse(trace: &str) -> Vec<Call> {
    let mut open: HashMap<String, (String, String, f64)> = HashMap::new();
    let mut calls = Vec::new();
    for line in trace.lines() {
        // `PID  SECONDS.MICROS CALL...` (strace pads the pid).
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(ts) = ts.parse::<f64>() else { continue };
        let duration = |s: &str| {
            s.rsplit_once('<')
                .and_then(|(_, d)| d.trim_end_matches('>').parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            if let Some((name, args)) = head.split_once('(') {
                open.insert(pid.to_string(), (name.to_string(), args.to_string(), ts));
            }
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let Some((name, _)) = tail.split_once(" resumed>") else {
                continue;
            };
            if let Some((n, args, start)) = open.remove(pid)
                && n == name
            {
                calls.push(Call {
                    end: start + duration(rest),
                    name: n,
                    args: format!("{args}{tail}"),
                    start,
                });
            }
        } else if let Some((name, args)) = rest.split_once('(') {
            calls.push(Call {
                name: name.to_string(),
                args: args.to_string(),
                start: ts,
                end: ts + duration(rest),
            });
        }
    }
    calls
}

/// The path strace's `-y` shows for the call's first (fd) argument.
fn fd_path(c: &Call) -> &str {
    c.args
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(p, _)| p)
        .unwrap_or("")
}

/// Message ids acknowledged in one socket write, with the write's start time.
fn acks(calls: &[Call]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for c in calls {
        if !matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg") {
            continue;
        }
        let mut rest = c.args.as_str();
        while let Some(i) = rest.find("250 2.0.0 Ok: queued as ") {
            rest = &rest[i + "250 2.0.0 Ok: queued as ".len()..];
            let id: String = rest
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            out.push((id, c.start));
        }
    }
    out
}

/// Why the trace does not show acknowledgement `id` (written at `at`) as durable, if not.
fn check(calls: &[Call], id: &str, at: f64) -> Result<(), String> {
    let before = |c: &&Call| c.end <= at;
    // One file per message: its bytes, then its envelope and footer.
    let tmp = format!("/tmp/{id}.spool");
    let created = calls
        .iter()
        .filter(|c| c.name == "openat" && c.args.contains(&format!("{tmp}\"")))
        .map(|c| c.start)
        .next()
        .ok_or(format!("{id}: its file tmp/{id}.spool was never created"))?;
    let synced = |suffix: &str| {
        let path = format!("{tmp}{suffix}");
        let on_file = |c: &&Call| fd_path(c).ends_with(&path);
        let written = calls
            .iter()
            .filter(before)
            .filter(|c| c.name.starts_with("write"))
            .filter(on_file)
            .map(|c| c.end)
            .fold(created, f64::max);
        calls
            .iter()
            .filter(before)
            .filter(|c| c.name == "fdatasync" || c.name == "fsync")
            .filter(on_file)
            .filter(|c| c.start >= written)
            .map(|c| c.end)
            .fold(None, |a: Option<f64>, e| Some(a.map_or(e, |a| a.max(e))))
            .ok_or(format!(
                "{id}: no fdatasync of tmp/{id}.spool{suffix} after its last write, before its 250"
            ))
    };
    let data = synced("")?;
    let names = calls
        .iter()
        .filter(before)
        .filter(|c| c.name == "fsync" || c.name == "fdatasync")
        .filter(|c| fd_path(c).ends_with("/tmp") && fd_path(c) != "/tmp" && c.start >= created)
        .map(|c| c.end)
        .fold(None, |a: Option<f64>, e| {
            Some(a.map_or(e, |a: f64| a.min(e)))
        })
        .ok_or(format!(
            "{id}: no fsync of tmp/ after its file was created, before its 250"
        ))?;
    // The row: written to the WAL (its id is in the page's bytes), then flushed, both
    // before the 250: a WAL flush that started after the row's write and ended before
    // the 250 (it may run beside the files' flushes, never before the row's write).
    let row = calls
        .iter()
        .filter(before)
        .filter(|c| c.name.starts_with("write") || c.name.starts_with("pwrite"))
        .filter(|c| fd_path(c).ends_with("/index.db-wal") && c.args.contains(id))
        .map(|c| c.end)
        .next()
        .ok_or(format!(
            "{id}: its row was not written to the WAL before its 250"
        ))?;
    calls
        .iter()
        .filter(before)
        .find(|c| {
            (c.name == "fdatasync" || c.name == "fsync")
                && fd_path(c).ends_with("/index.db-wal")
                && c.start >= row
        })
        .ok_or(format!(
            "{id}: no WAL flush after its row was written, before its 250"
        ))?;
    let _ = (data, names);
    // The move into `messages/` (by the publisher, after the 250, or at the stop), after
    // a WAL flush that followed the row's write: a file there always has a durable row.
    let rename = calls
        .iter()
        .find(|c| {
            c.name.starts_with("rename")
                && c.args.contains(&format!("{tmp}\""))
                && c.args.contains(&format!("/messages/{id}.spool\""))
        })
        .ok_or(format!(
            "{id}: never moved into messages/ (not even at the stop)"
        ))?;
    calls
        .iter()
        .find(|c| {
            (c.name == "fdatasync" || c.name == "fsync")
                && fd_path(c).ends_with("/index.db-wal")
                && c.start >= row
                && c.end <= rename.start
        })
        .ok_or(format!(
            "{id}: moved into messages/ before its row was flushed"
        ))?;
    Ok(())
}

#[test]
fn every_250_comes_after_the_message_and_its_row_are_flushed() {
    require("strace", "strace");
    require("smtp-source", "postfix");
    require("swaks", "swaks");
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    // Health off: only receiving happens under the trace.
    let mut sb = Standby::configure(fake.port, "", &[("STANDBY_HEALTH_UP_AFTER", "100000")]);
    let trace = sb.dir.path().join("strace.txt");
    sb.wrapper = [
        "strace",
        "-f",
        "-ttt",
        "-T",
        "-y",
        "-s",
        "4096",
        "-e",
        "trace=openat,write,writev,pwrite64,sendto,sendmsg,fsync,fdatasync,syncfs,rename,renameat,renameat2",
        "-o",
        trace.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    sb.spawn();

    for i in 0..5 {
        sb.send(
            "bob@example.test",
            &["--header", &format!("Subject: swaks {i}")],
        );
    }
    let out = Command::new("smtp-source")
        .args([
            "-s",
            "8",
            "-m",
            "80",
            "-l",
            "4096",
            "-f",
            "load@example.org",
            "-t",
            "bob@example.test",
        ])
        .arg(format!("127.0.0.1:{}", sb.port))
        .output()
        .expect("run smtp-source");
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Stop the daemon (strace ends with it) so the trace is complete.
    let strace_pid = sb.pid().expect("running");
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let serve_pid = children
        .split_whitespace()
        .next()
        .expect("serve under strace");
    assert!(
        Command::new("kill")
            .args(["-TERM", serve_pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("serve to stop", Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{serve_pid}")).exists()
    });
    sb.wait();

    let text = std::fs::read_to_string(&trace).unwrap();
    let calls = parse(&text);
    let acked = acks(&calls);
    assert_eq!(
        acked.len(),
        85,
        "every message got its 250 in the trace ({} socket writes seen)",
        calls.iter().filter(|c| c.name.starts_with("write")).count()
    );
    let failures: Vec<String> = acked
        .iter()
        .filter_map(|(id, at)| check(&calls, id, *at).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} acknowledgements came before their data was durable, e.g.:\n{}",
        failures.len(),
        acked.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "syscall order: {} acknowledgements, each after an fdatasync of its file (message \
         and envelope) that followed its last write, an fsync of tmp/, and a WAL flush that \
         followed its row's write",
        acked.len()
    );
}
