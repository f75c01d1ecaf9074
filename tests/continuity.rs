//! Continuity events end to end: the primary stops, the standby starts an event after
//! `start_after_secs`, the administrator hears by a signed webhook and by mail through a
//! real outside relay (Postfix), and each user with held mail gets a notice at their
//! alternate address with a one-time login link, followed here in a real browser (once;
//! the second use is refused). The primary comes back, the backlog is drained, and the
//! event ends by itself: end alert and end notices, each once.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::browser::{browser, click, driver, landed};
use common::web::add_user;
use common::{FakePrimary, FakeReply, Postfix, Standby, free_port, swaks, wait_for};
use fantoccini::Locator;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request the webhook receiver got: its headers (lower-case names) and body.
#[derive(Debug, Clone)]
struct Hook {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Hook {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A local HTTP receiver that records each POST and answers 200.
fn webhook_receiver() -> (u16, Arc<Mutex<Vec<Hook>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let seen = hooks.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            let mut r = BufReader::new(s);
            let mut headers = Vec::new();
            let mut line = String::new();
            r.read_line(&mut line).unwrap_or(0);
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap_or(());
            seen.lock().unwrap().push(Hook { headers, body });
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, hooks)
}

fn events(hooks: &Mutex<Vec<Hook>>) -> Vec<String> {
    hooks
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.json()["event"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The messages the relay delivered to `to`, as text.
fn mail_to(relay: &Postfix, to: &str) -> Vec<String> {
    relay
        .delivered()
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .filter(|m| m.contains(&format!("To: {to}")))
        .collect()
}

/// The messages the relay delivered to `to` whose text has `what`.
fn with(relay: &Postfix, to: &str, what: &str) -> Vec<String> {
    mail_to(relay, to)
        .into_iter()
        .filter(|m| m.contains(what))
        .collect()
}

/// The one-time link in a notice (quoted-printable soft breaks undone).
fn link_in(notice: &str) -> String {
    let plain = notice
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let start = plain.find("/login/link?t=").expect("a login link");
    let from = plain[..start].rfind("http://").unwrap();
    plain[from..].split_whitespace().next().unwrap().to_string()
}

const SECRET: &str = "a webhook secret the receiver shares";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_starts_an_event_tells_everyone_out_of_band_and_ends_by_itself() {
    let (hook_port, hooks) = webhook_receiver();
    // The outside world: a real MTA that takes mail for outside.test.
    let relay = Postfix::primary_with(&["--domain", "outside.test"]);
    relay.start();
    let primary_port = free_port();
    let web = free_port();
    let extra = format!(
        "[users]\nfile = \"{{dir}}/users.passwd\"\ndefault_domain = \"example.test\"\n\
         [web]\nlisten = \"127.0.0.1:{web}\"\npublic_url = \"http://127.0.0.1:{web}\"\n\
         [outbound]\nrelay = \"127.0.0.1:{relay}\"\nrelay_tls = \"none\"\n\
         [continuity]\nstart_after_secs = 3\nend_after_secs = 3\n\
         alternates = \"{{dir}}/alternates.csv\"\n\
         [alerts]\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\n\
         webhook_secret_env = \"HOOK_KEY\"\nemail = [\"admin@outside.test\"]\n\
         repeat_secs = 2\n",
        relay = relay.port,
    );
    let mut standby = Standby::configure(primary_port, &extra, &[("HOOK_KEY", SECRET)]);
    let dir = standby.dir.path().to_path_buf();
    standby.fill_dir();
    std::fs::write(
        dir.join("alternates.csv"),
        "address,alternate_email,phone\n\
         alice@example.test,alice.home@outside.test,\n\
         bob@example.test,bob.home@outside.test,\n",
    )
    .unwrap();
    add_user(&standby, "alice@example.test", "alice-pw");
    add_user(&standby, "bob@example.test", "bob-pw");
    standby.spawn();
    // Mail for alice arrives while the primary is down; bob gets none.
    let (ok, t) = swaks(
        standby.port,
        &[
            "--to",
            "alice@example.test",
            "--from",
            "sender@elsewhere.example",
            "--header",
            "Subject: quarterly figures",
        ],
    );
    assert!(ok, "{t}");

    // The event starts: the webhook gets it, signed.
    wait_for("the started webhook", Duration::from_secs(30), || {
        events(&hooks).contains(&"started".to_string())
    });
    let started = hooks.lock().unwrap()[0].clone();
    let body = started.json();
    assert_eq!(body["event"], "started");
    assert_eq!(body["primary"]["state"], "down");
    assert_eq!(body["counts"]["held"], 1);
    assert!(body["continuity"]["id"].is_string(), "{body}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&started.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(started.header("x-standby-signature"), Some(want.as_str()));
    // The same as `standby status --json`, with the alert's fields on top.
    let status = standby.json(&["status", "--json"]);
    assert_eq!(status["continuity"]["id"], body["continuity"]["id"]);
    assert_eq!(status["store"], body["store"]);

    // The administrator's mail alert and alice's notice go out through the relay.
    wait_for(
        "the alert and the notice at the relay",
        Duration::from_secs(60),
        || {
            !with(&relay, "admin@outside.test", "continuity event started").is_empty()
                && !mail_to(&relay, "alice.home@outside.test").is_empty()
        },
    );
    let alert = &with(&relay, "admin@outside.test", "continuity event started")[0];
    assert!(alert.contains("continuity event started"), "{alert}");
    assert!(
        alert.contains(&format!("http://127.0.0.1:{web}/console")),
        "{alert}"
    );
    let notice = mail_to(&relay, "alice.home@outside.test")[0].clone();
    assert!(notice.contains("Your mail is safe"), "{notice}");
    let link = link_in(&notice);

    // The link, in a real browser: a page, then one press logs alice in.
    let drv = driver();
    let c = browser(&drv, &dir).await;
    c.goto(&link).await.unwrap();
    landed(&c, "form.login button").await;
    let page = c.source().await.unwrap();
    assert!(page.contains("alice@example.test"), "{page}");
    click(&c, "form.login button").await;
    c.wait()
        .for_element(Locator::Css("ul.messages"))
        .await
        .expect("alice's inbox");
    assert!(c.source().await.unwrap().contains("quarterly figures"));
    // A second use, from a browser without alice's session, is refused.
    c.delete_all_cookies().await.unwrap();
    c.goto(&link).await.unwrap();
    landed(&c, "form.login button").await;
    click(&c, "form.login button").await;
    // The refusal page replaces the link's page: wait for its heading, not for any
    // `main` (the old page has one too until the answer arrives).
    c.wait()
        .for_element(Locator::XPath("//h1[contains(., 'Link not valid')]"))
        .await
        .expect("the refusal page");
    let again = c.source().await.unwrap();
    assert!(again.contains("used already"), "{again}");
    assert!(!again.contains("quarterly figures"));
    c.close().await.unwrap();

    // Two repeats later (the users' notices are looked at again at each): alice was
    // told once, bob (no held mail) not at all.
    wait_for("two repeated alerts", Duration::from_secs(30), || {
        events(&hooks).iter().filter(|e| *e == "ongoing").count() >= 2
    });
    assert_eq!(mail_to(&relay, "alice.home@outside.test").len(), 1);
    // The primary comes back; the backlog is delivered and the event ends by itself.
    let _primary = FakePrimary::start_on(
        primary_port,
        vec![FakeReply::Replies {
            mail: "250 2.1.0 ok\r\n",
            rcpt: "250 2.1.5 ok\r\n",
            data_end: "250 2.0.0 queued\r\n",
        }],
    );
    wait_for("the ended webhook", Duration::from_secs(60), || {
        events(&hooks).contains(&"ended".to_string())
    });
    wait_for(
        "the end alert and the end notice",
        Duration::from_secs(60),
        || {
            !with(&relay, "admin@outside.test", "continuity event ended").is_empty()
                && mail_to(&relay, "alice.home@outside.test").len() >= 2
        },
    );
    // A few more checks of the loop (the users' notices were looked at again every
    // repeat, 2 s, all along): nothing is sent twice.
    std::thread::sleep(Duration::from_secs(4));
    relay.wait_queue_empty(Duration::from_secs(20));
    let kinds = events(&hooks);
    let count = |k: &str| kinds.iter().filter(|e| *e == k).count();
    assert_eq!((count("started"), count("ended")), (1, 1), "{kinds:?}");
    assert!(count("ongoing") >= 1, "repeated while under way: {kinds:?}");
    assert_eq!(kinds.first().map(String::as_str), Some("started"));
    assert_eq!(kinds.last().map(String::as_str), Some("ended"));
    for (what, n) in [
        ("continuity event started", 1),
        ("continuity event ended", 1),
    ] {
        let got = with(&relay, "admin@outside.test", what);
        assert_eq!(got.len(), n, "{what}: {got:?}");
    }
    assert!(!with(&relay, "admin@outside.test", "still under way").is_empty());
    let alice = mail_to(&relay, "alice.home@outside.test");
    assert_eq!(alice.len(), 2, "{alice:?}");
    assert!(alice.iter().any(|m| m.contains("Your mail is back")));
    assert!(
        mail_to(&relay, "bob.home@outside.test").is_empty(),
        "bob had no held mail"
    );
    let cont = standby.json(&["continuity", "status", "--json"]);
    assert_eq!(cont["active"], false);
    assert_eq!(cont["history"][0]["told"], 1, "{cont}");
    assert_eq!(cont["history"][0]["end_notices_done"], true);
    assert!(
        cont["pending_alerts"].as_array().unwrap().is_empty(),
        "{cont}"
    );
    let audit = standby.cli(&["audit", "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("continuity-start") && audit.contains("continuity-end"),
        "{audit}"
    );
    assert!(audit.contains("one-time link"), "{audit}");
}

/// A bad row of the alternates file stops `standby serve` at its start, naming the file
/// and the line: a notice that would silently go nowhere is found out now, not in the
/// outage.
#[test]
fn a_bad_alternates_row_stops_the_start_naming_file_and_line() {
    let sb = Standby::configure(
        free_port(),
        "[continuity]\nalternates = \"{dir}/alternates.csv\"\n",
        &[],
    );
    sb.fill_dir();
    std::fs::write(
        sb.dir.path().join("alternates.csv"),
        "address,alternate_email,phone\n# the team\n\nalice@example.test,alice@home.example,\nbob@example.test,bob@home.example,5551234\n",
    )
    .unwrap();
    // It must stop by itself; were it to serve, the wait below would end it.
    let log_path = sb.dir.path().join("serve.err");
    let mut child = sb.cli_spawn(&["serve"], "info", &log_path);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("standby serve started with a bad alternates file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("alternates.csv:5:"), "{log}");
    assert!(log.contains("E.164"), "{log}");
}
