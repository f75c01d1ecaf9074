//! The operator console in a real browser (Debian's chromium through chromium-driver):
//! an admin holds, releases, retries and purges messages (purge asks again) and asks for
//! a drain, and each change is the one `standby` itself shows; a user who is not in
//! `[users] admins` gets 403 on every console URL, whatever the method.
//!
//! Set STANDBYMX_SCREENSHOTS=1 to write docs/screenshots/console.png for the README.

mod common;

use std::time::Duration;

use common::browser::{browser, click, driver, landed, type_in};
use common::web::{Client, add_user};
use common::{FakePrimary, FakeReply, Standby, free_port, swaks, wait_for};
use fantoccini::{Client as Browser, Locator};
use serde_json::Value;

/// `standby list --json`'s entry whose subject is `subject`, if any.
fn by_subject(sb: &Standby, subject: &str) -> Option<Value> {
    match sb.json(&["list", "--json"]) {
        Value::Array(all) => all.into_iter().find(|m| m["subject"] == subject),
        other => panic!("list is not an array: {other}"),
    }
}

fn status_of(sb: &Standby, subject: &str) -> String {
    by_subject(sb, subject)
        .map(|m| m["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "gone".into())
}

/// Click the button `action` in the queue row of message `id`, and wait for the page
/// that says it was `done` (the old page has the same table until the answer comes).
async fn act(c: &Browser, id: &str, action: &str, done: &str) {
    click(c, &format!("tr#m-{id} button[value={action}]")).await;
    noted(c, &format!("{id}: {done}")).await;
}

/// Wait for the notice `text`.
async fn noted(c: &Browser, text: &str) {
    c.wait()
        .for_element(Locator::XPath(&format!("//p[contains(., '{text}')]")))
        .await
        .unwrap_or_else(|e| panic!("the notice {text:?}: {e}"));
}

fn screenshots(tmp: &std::path::Path) -> std::path::PathBuf {
    if std::env::var_os("STANDBYMX_SCREENSHOTS").is_some() {
        let d = common::repo().join("docs/screenshots");
        std::fs::create_dir_all(&d).unwrap();
        d
    } else {
        tmp.to_path_buf()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_changes_the_queue_as_the_cli_would_and_nobody_else_can() {
    let (primary_port, web) = (free_port(), free_port());
    // Probing only at the start and when asked: a drain comes from the console's button.
    let mut sb = Standby::configure(
        primary_port,
        &format!(
            "[users]\nfile = \"{{dir}}/users.passwd\"\ndefault_domain = \"example.test\"\nadmins = [\"alice@example.test\"]\n\
             [web]\nlisten = \"127.0.0.1:{web}\"\n"
        ),
        &[
            ("STANDBY_HEALTH_INTERVAL_SECS", "3600"),
            ("STANDBY_HEALTH_DOWN_AFTER", "1"),
        ],
    );
    let dir = sb.dir.path().to_path_buf();
    sb.fill_dir();
    add_user(&sb, "alice@example.test", "alice-pw");
    add_user(&sb, "bob@example.test", "bob-pw");
    sb.spawn();
    wait_for("the inbox", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", web)).is_ok()
    });
    for s in ["to hold", "to retry", "to purge", "to deliver"] {
        let (ok, t) = swaks(
            sb.port,
            &[
                "--to",
                "carol@example.test",
                "--header",
                &format!("Subject: {s}"),
            ],
        );
        assert!(ok, "{t}");
    }
    let id = |s: &str| {
        by_subject(&sb, s).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (hold, retry, purge) = (id("to hold"), id("to retry"), id("to purge"));

    // Bob is a user, not an admin: 403 on every console URL, for every method.
    let bob = Client::new(&format!("http://127.0.0.1:{web}"), "127.0.0.1");
    assert_eq!(bob.login("bob", "bob-pw").status, 303);
    let inbox = bob.get("/");
    assert_eq!(inbox.status, 200);
    let csrf = inbox.csrf();
    for path in [
        "/console".to_string(),
        "/console/queue".into(),
        format!("/console/m/{hold}"),
        format!("/console/m/{purge}/purge"),
        "/console/events".into(),
        "/console/audit".into(),
        "/console/anything/else".into(),
    ] {
        assert_eq!(bob.get(&path).status, 403, "GET {path}");
    }
    for path in [
        format!("/console/m/{hold}/hold"),
        format!("/console/m/{retry}/retry"),
        format!("/console/m/{purge}/purge"),
        "/console/drain".into(),
    ] {
        let r = bob.post(&path, &[("csrf", &csrf), ("confirm", "yes")]);
        assert_eq!(r.status, 403, "POST {path}");
    }
    assert_eq!(status_of(&sb, "to hold"), "held");
    assert_eq!(status_of(&sb, "to purge"), "held");

    // Alice, in a real browser.
    let drv = driver();
    let c = browser(&drv, &dir).await;
    c.goto(&format!("http://127.0.0.1:{web}/login"))
        .await
        .unwrap();
    type_in(&c, "input[name=username]", "alice").await;
    type_in(&c, "input[name=password]", "alice-pw").await;
    click(&c, "form.login button").await;
    landed(&c, "span.user").await;
    // An event under way, as an operator starts one.
    let started = sb.cli(&[
        "continuity",
        "start",
        "--reason",
        "the primary's disk failed",
    ]);
    assert!(started.status.success(), "{started:?}");
    c.goto(&format!("http://127.0.0.1:{web}/console"))
        .await
        .unwrap();
    landed(&c, "figure.chart svg").await;
    let page = c.source().await.unwrap();
    assert!(
        page.contains("the primary&#39;s disk failed")
            || page.contains("the primary's disk failed"),
        "{page}"
    );
    assert!(
        page.contains("class=\"seg down\""),
        "the chart shows the primary down: {page}"
    );
    let held = c
        .find(Locator::Css("td#held"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(held, "4");
    let shot = screenshots(&dir).join("console.png");
    std::fs::write(&shot, c.screenshot().await.unwrap()).unwrap();

    c.goto(&format!("http://127.0.0.1:{web}/console/queue"))
        .await
        .unwrap();
    landed(&c, "table.queue").await;
    act(&c, &hold, "hold", "paused").await;
    assert_eq!(status_of(&sb, "to hold"), "paused");
    // Paused messages are listed under their status.
    c.goto(&format!(
        "http://127.0.0.1:{web}/console/queue?status=paused"
    ))
    .await
    .unwrap();
    landed(&c, "table.queue").await;
    act(&c, &hold, "release", "released").await;
    assert_eq!(status_of(&sb, "to hold"), "held");
    // Retry: what `standby retry` does to the same kind of message.
    act(&c, &retry, "retry", "queued for delivery now").await;
    let after = by_subject(&sb, "to retry").unwrap();
    assert_eq!(after["status"], "held");
    // Purge asks again; cancelling keeps the message.
    click(&c, &format!("tr#m-{purge} a.purge")).await;
    landed(&c, "button.danger").await;
    click(&c, "a[href='/console/queue']").await;
    landed(&c, "table.queue").await;
    assert_eq!(status_of(&sb, "to purge"), "held");
    click(&c, &format!("tr#m-{purge} a.purge")).await;
    landed(&c, "button.danger").await;
    click(&c, "button.danger").await;
    noted(&c, &format!("{purge}: purged")).await;
    assert_eq!(status_of(&sb, "to purge"), "gone");
    let audit = String::from_utf8_lossy(&sb.cli(&["audit", "--json"]).stdout).into_owned();
    assert!(audit.contains("console:alice@example.test"), "{audit}");

    // Drain now: the primary is back; without the button nothing would probe for an hour.
    let _primary = FakePrimary::start_on(
        primary_port,
        vec![FakeReply::Replies {
            mail: "250 2.1.0 ok\r\n",
            rcpt: "250 2.1.5 ok\r\n",
            data_end: "250 2.0.0 queued\r\n",
        }],
    );
    assert_eq!(sb.counts()["delivered"], 0);
    c.goto(&format!("http://127.0.0.1:{web}/console"))
        .await
        .unwrap();
    landed(&c, "figure.chart svg").await;
    click(&c, "form[action='/console/drain'] button").await;
    noted(&c, "drain asked for").await;
    wait_for(
        "the drain the console asked for",
        Duration::from_secs(30),
        || sb.counts()["delivered"] == 3,
    );
    c.goto(&format!("http://127.0.0.1:{web}/console/events"))
        .await
        .unwrap();
    landed(&c, "table.events").await;
    c.goto(&format!("http://127.0.0.1:{web}/console/audit"))
        .await
        .unwrap();
    landed(&c, "table.audit").await;
    assert!(c.source().await.unwrap().contains("drain-now"));
    c.close().await.unwrap();
}
