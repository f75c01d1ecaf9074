//! IMAP on the local spool: a user with 10,000 messages (SQLite index, message files),
//! the IMAP listener served in-process over real TCP on loopback, one logged-in client.
//! Prints the time of `SELECT INBOX` plus `UID FETCH 1:* (UID FLAGS RFC822.SIZE)` (the
//! first time, when the UIDs are given, then p50 and p95 of 30; target <= 200 ms), and
//! of `NOOP` (a selected session's look between whole ones) and of `UID FETCH n
//! BODY.PEEK[]` of one message.
//!
//!     cargo bench --bench imap [-- --mine N --held N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use standby::backend::{FsAuditLog, FsBlobStore, LocalUserFiles, MemLoginLimits, SqliteIndex};
use standby::model::{MessageId, Record, Summary};
use standby::ports::{BlobStore, Index, Storage, SystemClock, UserFiles};
use standby::users::{Hash, Users};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const ROUNDS: usize = 30;

mod support;
use support::{arg, message};

/// Send `cmd` tagged `tag`, read to the tagged reply; the bytes read.
async fn command(io: &mut BufReader<tokio::net::TcpStream>, tag: &str, cmd: &str) -> usize {
    io.get_mut()
        .write_all(format!("{tag} {cmd}\r\n").as_bytes())
        .await
        .unwrap();
    let mut total = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = io.read_until(b'\n', &mut line).await.unwrap();
        assert!(n > 0, "connection closed");
        total += n;
        // A literal: its bytes follow the line.
        if let Some(open) = line.iter().rposition(|&b| b == b'{')
            && line.ends_with(b"}\r\n")
        {
            let len: usize = std::str::from_utf8(&line[open + 1..line.len() - 3])
                .unwrap()
                .parse()
                .unwrap();
            let mut buf = vec![0; len];
            tokio::io::AsyncReadExt::read_exact(io, &mut buf)
                .await
                .unwrap();
            total += len;
            continue;
        }
        if line.starts_with(format!("{tag} ").as_bytes()) {
            assert!(
                line.starts_with(format!("{tag} OK").as_bytes()),
                "{}",
                String::from_utf8_lossy(&line)
            );
            return total;
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mine = arg("--mine", 10_000);
    let held = arg("--held", 20_000).max(mine);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let index = SqliteIndex::open(path).unwrap();
        let blobs = FsBlobStore::open(path).unwrap();
        let start = Utc::now() - chrono::Duration::days(2);
        let every = held / mine;
        let mut files = Vec::new();
        let mut last = None;
        for i in 0..held {
            let at = start + chrono::Duration::milliseconds(i as i64 * 1000);
            let to = if i % every == 0 {
                "alice@example.test".to_string()
            } else {
                format!("user{}@example.test", i % 997)
            };
            let id = MessageId::new(at);
            let bytes = message(i, &to);
            let rec = Record::held(
                id,
                format!("sender{i}@example.org"),
                vec![to.clone()],
                at,
                (bytes.len() as u64, String::new()),
                Summary::default(),
            );
            if to.starts_with("alice") {
                let mut w = blobs.create(id).await.unwrap();
                w.write(&bytes).await.unwrap();
                w.commit().await.unwrap();
                files.push(id.to_string());
                last = Some(id);
            }
            index.insert_unsynced(&rec).await.unwrap();
        }
        index.sync().await.unwrap();
        blobs.publish(files).await.unwrap();
        assert!(last.is_some());
        let user_files = Arc::new(LocalUserFiles::new(path.join("users.passwd"), None));
        let line = format!("alice@example.test:{}\n", Hash::argon2id("pw").field());
        user_files
            .write_passwd(line.as_bytes(), None)
            .await
            .unwrap();
        let users = Arc::new(Users::load(user_files, None, None).await.unwrap());
        let storage = Storage {
            blobs: Arc::new(blobs),
            events: Arc::new(index.clone()),
            mailboxes: Some(Arc::new(index.clone())),
            index: Arc::new(index),
            audit: Arc::new(FsAuditLog::new(path)),
        };
        let clock = Arc::new(SystemClock);
        let logins = Arc::new(standby::users::login::Logins::new(
            users,
            Arc::new(MemLoginLimits::default()),
            storage.audit.clone(),
            clock.clone(),
            Arc::default(),
        ));
        let (_tx, new_mail) = tokio::sync::watch::channel(0);
        let imap = Arc::new(standby::imap::Imap {
            storage,
            logins,
            clock,
            history_days: 30,
            tls: None,
            allow_plaintext_auth: true,
            new_mail,
            poll: Duration::from_secs(15),
            whole_look: Duration::from_secs(300),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = listener.accept().await.unwrap();
                // As `standby serve`'s listeners do.
                tcp.set_nodelay(true).unwrap();
                tokio::spawn(standby::imap::session::serve_plain(
                    imap.clone(),
                    tcp,
                    peer.ip(),
                ));
            }
        });
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut io = BufReader::new(tcp);
        let mut greeting = String::new();
        io.read_line(&mut greeting).await.unwrap();
        command(&mut io, "a", "LOGIN alice@example.test pw").await;
        let t = Instant::now();
        command(&mut io, "s0", "SELECT INBOX").await;
        let bytes = command(&mut io, "f0", "UID FETCH 1:* (UID FLAGS RFC822.SIZE)").await;
        let first = t.elapsed();
        let mut times = Vec::new();
        for r in 0..ROUNDS {
            let t = Instant::now();
            command(&mut io, &format!("s{}", r + 1), "SELECT INBOX").await;
            command(
                &mut io,
                &format!("f{}", r + 1),
                "UID FETCH 1:* (UID FLAGS RFC822.SIZE)",
            )
            .await;
            times.push(t.elapsed());
        }
        // A selected session's look between whole ones (as IDLE's poll makes).
        let mut noop = Vec::new();
        for r in 0..ROUNDS {
            let t = Instant::now();
            command(&mut io, &format!("n{r}"), "NOOP").await;
            noop.push(t.elapsed());
        }
        let mut body = Vec::new();
        for r in 0..ROUNDS {
            let t = Instant::now();
            command(
                &mut io,
                &format!("b{r}"),
                &format!("UID FETCH {} BODY.PEEK[]", mine - r),
            )
            .await;
            body.push(t.elapsed());
        }
        println!(
            "imap: {mine} messages ({held} held): SELECT + UID FETCH 1:* (UID FLAGS RFC822.SIZE) \
             first {:.1} ms (UIDs given), then p50 {:.1} ms p95 {:.1} ms ({bytes} bytes); \
             NOOP p50 {:.2} ms; UID FETCH n BODY.PEEK[] p50 {:.2} ms p95 {:.2} ms",
            first.as_secs_f64() * 1000.0,
            pct(&mut times, 0.5),
            pct(&mut times, 0.95),
            pct(&mut noop, 0.5),
            pct(&mut body, 0.5),
            pct(&mut body, 0.95),
        );
    });
}
