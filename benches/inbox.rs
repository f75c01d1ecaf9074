//! The emergency inbox's latency on the local spool: a user with 10,000 messages among
//! 100,000 held (SQLite index, message files), the web app served over real HTTP on a
//! loopback port by the same server `standby serve` runs, requests one after another
//! on a kept-alive connection with a logged-in session. Prints p50 and p95 of each page
//! (targets: inbox page p95 <= 50 ms, message page p95 <= 30 ms).
//!
//!     cargo bench --bench inbox [-- --held N --mine N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Empty};
use standby::backend::{FsAuditLog, FsBlobStore, LocalUserFiles, MemLoginLimits, SqliteIndex};
use standby::model::{MessageId, Record, Summary};
use standby::ports::{BlobStore, Clock, Index, Storage, SystemClock, UserFiles};
use standby::users::{Hash, Users};
use standby::web::{SessionKey, Web, WebSettings};

const REQUESTS: usize = 300;

mod support;
use support::{arg, message};

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: only build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let held = arg("--held", 100_000);
    let mine = arg("--mine", 10_000);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
        // STANDBYMX_BENCH_KEEP=DIR: build the spool there and leave it (to look at).
        let kept = std::env::var_os("STANDBYMX_BENCH_KEEP").map(std::path::PathBuf::from);
        let dir_path = kept.unwrap_or_else(|| dir.path().to_path_buf());
        std::fs::create_dir_all(&dir_path).unwrap();
        let dir_path = dir_path.as_path();
        let index = SqliteIndex::open(dir_path).unwrap();
        let blobs = FsBlobStore::open(dir_path).unwrap();
        let start = Utc::now() - chrono::Duration::days(2);
        let every = held / mine;
        let t = Instant::now();
        let mut with_files = Vec::new();
        for i in 0..held {
            let at = start + chrono::Duration::milliseconds(i as i64 * 1000);
            let to = if i % every == 0 {
                "alice@example.test".to_string()
            } else {
                format!("user{}@example.test", i % 997)
            };
            let id = MessageId::new(at);
            let summary = Summary {
                from: Some(format!("Sender {i} <sender{i}@example.org>")),
                subject: Some(format!("Message number {i}")),
                ..Summary::default()
            };
            let bytes = message(i, &to);
            let rec = Record::held(
                id,
                format!("sender{i}@example.org"),
                vec![to.clone()],
                at,
                (bytes.len() as u64, String::new()),
                summary,
            );
            // Message files for the newest of alice's (the ones the message page opens).
            if to.starts_with("alice") && i + 1000 * every >= held {
                let mut w = blobs.create(id).await.unwrap();
                w.write(&bytes).await.unwrap();
                w.commit().await.unwrap();
                with_files.push(id);
            }
            index.insert_unsynced(&rec).await.unwrap();
        }
        index.sync().await.unwrap();
        blobs
            .publish(with_files.iter().map(|id| id.to_string()).collect())
            .await
            .unwrap();
        eprintln!("{held} held ({mine} alice's) indexed in {:.1} s", t.elapsed().as_secs_f64());

        let files = Arc::new(LocalUserFiles::new(dir_path.join("users.passwd"), None));
        let line = format!("alice@example.test:{}\n", Hash::argon2id("pw").field());
        files.write_passwd(line.as_bytes(), None).await.unwrap();
        let users = Users::load(files, None, None).await.unwrap();
        let account = users.directory().await.account("alice@example.test").unwrap();
        let key = SessionKey::random();
        let cookie = format!(
            "standby_session={}",
            key.issue(&account, (Utc::now() + chrono::Duration::hours(1)).timestamp())
        );
        let config = standby::config::Config::from_parts(
            std::path::Path::new("bench.toml"),
            "hostname = \"b.example.test\"\ndomains = [\"example.test\"]\n[primary]\naddress = \"127.0.0.1\"\n",
            Vec::new(),
        )
        .unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let web = Arc::new(Web {
            storage: Storage {
                blobs: Arc::new(blobs),
                events: Arc::new(index.clone()),
                mailboxes: Some(Arc::new(index.clone())),
                index: Arc::new(index),
                audit: Arc::new(FsAuditLog::new(dir_path)),
            },
            checks: standby::web::check_slots(),
            slowest_check: Default::default(),
            users: Arc::new(users),
            limits: Arc::new(MemLoginLimits::default()),
            sending: None,
            uploads: None,
            in_flight: Arc::default(),
            key,
            clock,
            settings: WebSettings::of(&config, false),
            drain_now: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(standby::web::server::run(
            vec![listener],
            standby::web::router(web),
            None,
            stop,
        ));
        let client = hyper_util::client::legacy::Client::builder(
            hyper_util::rt::TokioExecutor::new(),
        )
        .build_http::<Empty<Bytes>>();
        let get = |path: String| {
            let client = client.clone();
            let cookie = cookie.clone();
            async move {
                let req = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"))
                    .header("cookie", cookie)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let t = Instant::now();
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (t.elapsed(), status, body)
            }
        };
        let measure = async |what: &str, paths: Vec<String>| {
            let mut times: Vec<Duration> = Vec::new();
            // Warm up (SQLite's page cache, the connection).
            for p in paths.iter().take(5) {
                get(p.clone()).await;
            }
            for p in &paths {
                let (d, status, body) = get(p.clone()).await;
                assert_eq!(status, 200, "{p}: {}", String::from_utf8_lossy(&body));
                times.push(d);
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{what}: p50 {:.1} ms, p95 {:.1} ms ({} requests)",
                ms(times[times.len() / 2]),
                ms(times[times.len() * 95 / 100]),
                times.len()
            );
        };
        let label = format!("{mine} of the user's among {held} held");
        measure(
            &format!("inbox page (first 50 of {label})"),
            vec!["/".to_string(); REQUESTS],
        )
        .await;
        // A page deep in the list: its cursor from walking there.
        let (_, _, body) = get("/".to_string()).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        let older = text
            .split("href=\"")
            .find(|s| s.starts_with("/?"))
            .map(|s| s[..s.find('"').unwrap()].replace("&amp;", "&"))
            .expect("a link to older messages");
        measure(
            &format!("inbox page 2 ({label})"),
            vec![older; REQUESTS],
        )
        .await;
        measure(
            &format!("inbox search by subject ({label})"),
            (0..REQUESTS)
                .map(|i| format!("/?subject=number+{}", (held - 1 - i * every) / 10))
                .collect(),
        )
        .await;
        measure(
            &format!("message page ({label})"),
            (0..REQUESTS)
                .map(|i| format!("/m/{}", with_files[with_files.len() - 1 - i % with_files.len()]))
                .collect(),
        )
        .await;
    });
}
