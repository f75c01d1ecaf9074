//! The emergency inbox in a real browser: Debian's chromium, driven through
//! chromium-driver (WebDriver) with fantoccini, against a real `standby serve`.
//!
//! Set STANDBYMX_SCREENSHOTS=1 to write the screenshots the README shows into
//! docs/screenshots/ (otherwise they go to the test's temporary directory).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::browser::{browser, click, driver, landed, type_in};
use common::web::Inbox;
use fantoccini::{Client, Locator};

const ALICE: (&str, &str) = ("alice@example.test", "correct horse battery");

/// An HTTP listener that records every request's path and answers 404: where the
/// hostile mail's remote images and scripts would phone home.
fn canary() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("?").to_string();
            seen.lock().unwrap().push(path);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, hits)
}

fn screenshot_dir(tmp: &Path) -> PathBuf {
    if std::env::var_os("STANDBYMX_SCREENSHOTS").is_some() {
        let d = common::repo().join("docs/screenshots");
        std::fs::create_dir_all(&d).unwrap();
        d
    } else {
        tmp.to_path_buf()
    }
}

async fn log_in(c: &Client, inbox: &Inbox) {
    c.goto(&inbox.url("/login")).await.unwrap();
    type_in(c, "input[name=username]", "alice").await;
    type_in(c, "input[name=password]", ALICE.1).await;
    click(c, "form.login button").await;
    c.wait()
        .for_element(Locator::Css("ul.messages"))
        .await
        .expect("the inbox after logging in");
}

/// The subjects listed on the page now; none while the page is being replaced (a form
/// just sent: the elements found may go stale before they are read), so a caller
/// polling for a result simply asks again.
async fn subjects(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(found) = c.find_all(Locator::Css("ul.messages .subject")).await else {
        return out;
    };
    for e in found {
        match e.text().await {
            Ok(t) => out.push(t),
            Err(_) => return Vec::new(),
        }
    }
    out
}

#[tokio::test]
async fn a_user_reads_searches_downloads_and_logs_out_in_chromium() {
    let inbox = Inbox::start(&[ALICE], "");
    // A binary attachment with every byte value, a few hundred KB.
    let attachment: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&attachment);
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        inbox.send_raw(
            ALICE.0,
            &format!(
                "From: Finance <finance@example.org>\nTo: alice@example.test\n\
                 Subject: Quarterly report\nDate: Thu, 03 Dec 2026 09:00:00 +0000\n\
                 MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n\
                 --b\nContent-Type: text/plain; charset=utf-8\n\n\
                 Here are the figures for the quarter.\n\
                 --b\nContent-Type: application/octet-stream\n\
                 Content-Disposition: attachment; filename=\"figures.bin\"\n\
                 Content-Transfer-Encoding: base64\n\n{}\n--b--\n",
                wrapped.join("\n")
            ),
        );
    }
    for (from, subject) in [
        ("Bob <bob@example.org>", "Lunch on Friday?"),
        ("IT Desk <it@example.org>", "Mail server maintenance"),
    ] {
        inbox.send_raw(
            ALICE.0,
            &format!(
                "From: {from}\nTo: alice@example.test\nSubject: {subject}\n\
                 Date: Thu, 03 Dec 2026 10:00:00 +0000\n\nText of {subject}\n"
            ),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let shots = screenshot_dir(tmp.path());
    let drv = driver();
    let c = browser(&drv, &downloads).await;
    log_in(&c, &inbox).await;
    let mut seen = subjects(&c).await;
    seen.sort();
    assert_eq!(
        seen,
        [
            "Lunch on Friday?",
            "Mail server maintenance",
            "Quarterly report"
        ]
    );
    std::fs::write(shots.join("inbox.png"), c.screenshot().await.unwrap()).unwrap();
    // Search by subject.
    type_in(&c, "input[name=subject]", "quarterly").await;
    click(&c, "form.search button").await;
    let mut found = Vec::new();
    for _ in 0..100 {
        found = subjects(&c).await;
        if found.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found, ["Quarterly report"]);
    // Open it.
    click(&c, "ul.messages a").await;
    let body = c
        .wait()
        .for_element(Locator::Css("pre.body"))
        .await
        .unwrap();
    assert!(
        body.text()
            .await
            .unwrap()
            .contains("figures for the quarter")
    );
    std::fs::write(shots.join("message.png"), c.screenshot().await.unwrap()).unwrap();
    // Download the attachment: the same bytes.
    click(&c, "ul.attachments a").await;
    let file = downloads.join("figures.bin");
    common::wait_for("the download", Duration::from_secs(20), || {
        std::fs::metadata(&file).is_ok_and(|m| m.len() == attachment.len() as u64)
    });
    assert_eq!(std::fs::read(&file).unwrap(), attachment);
    // Log out: back at the login page, and the inbox is closed.
    click(&c, "nav form button").await;
    c.wait()
        .for_element(Locator::Css("form.login"))
        .await
        .unwrap();
    c.goto(&inbox.url("/")).await.unwrap();
    c.wait()
        .for_element(Locator::Css("form.login"))
        .await
        .expect("the login page, not the inbox");
    c.close().await.unwrap();
}

#[tokio::test]
async fn hostile_html_runs_no_script_and_loads_nothing_until_images_are_allowed() {
    let inbox = Inbox::start(&[ALICE], "");
    let (port, hits) = canary();
    let canary = format!("http://127.0.0.1:{port}");
    let html = format!(
        "<p id=hello>Hello <b>friend</b></p>\
         <script>window.pwned='script'; new Image().src='{canary}/script';</script>\
         <img src=\"{canary}/pixel.gif\" alt=pixel \
              onerror=\"window.pwned='onerror'; fetch('{canary}/onerror')\">\
         <a id=js href=\"javascript:window.pwned='link';fetch('{canary}/link')\">click me</a>\
         <div style=\"background:url({canary}/css-bg); width: expression(alert(1))\">css</div>\
         <svg onload=\"fetch('{canary}/svg-onload')\"><script>window.pwned='svg'</script>\
           <image href=\"{canary}/svg-image\"/></svg>\
         <object data=\"{canary}/object\"></object>\
         <link rel=stylesheet href=\"{canary}/css\">\
         <iframe src=\"{canary}/frame\"></iframe>\
         <form action=\"{canary}/form\"><button id=send>send</button></form>"
    );
    inbox.send_raw(
        ALICE.0,
        &format!(
            "From: Mallory <m@evil.example>\nTo: alice@example.test\nSubject: Invoice\n\
             MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n{html}\n"
        ),
    );
    let id = inbox.id_of("Invoice");
    let tmp = tempfile::tempdir().unwrap();
    let drv = driver();
    let c = browser(&drv, tmp.path()).await;
    log_in(&c, &inbox).await;
    c.goto(&inbox.url(&format!("/m/{id}"))).await.unwrap();
    c.wait()
        .for_element(Locator::Css("iframe.body"))
        .await
        .unwrap();
    // Inside the frame, once its document (images included) has loaded: the text is
    // there, no script ran.
    let frame_state = async |c: &Client| {
        c.enter_frame(0).await.unwrap();
        let mut state = serde_json::Value::Null;
        for _ in 0..100 {
            state = c
                .execute(
                    "return [document.readyState, typeof window.pwned, \
                     (document.body && document.body.textContent.includes('Hello friend')) || null]",
                    vec![],
                )
                .await
                .unwrap();
            if state[0] == "complete" && !state[2].is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.enter_parent_frame().await.unwrap();
        state
    };
    let state = frame_state(&c).await;
    assert_eq!(state, serde_json::json!(["complete", "undefined", true]));
    assert_eq!(
        *hits.lock().unwrap(),
        Vec::<String>::new(),
        "nothing loaded before allowing images"
    );
    // Clicking the javascript: link (now a plain link without href) runs nothing.
    c.enter_frame(0).await.unwrap();
    c.find(Locator::LinkText("click me"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let pwned = c
        .execute("return typeof window.pwned", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, "undefined");
    c.enter_parent_frame().await.unwrap();
    // The body document on its own (opened directly) is sandboxed by its CSP too.
    c.goto(&inbox.url(&format!("/m/{id}/body"))).await.unwrap();
    let pwned = c
        .execute("return typeof window.pwned", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, "undefined");
    assert_eq!(*hits.lock().unwrap(), Vec::<String>::new());
    // The user allows images for this message: the image (and the CSS background, an
    // image too) load, and still no script, frame, object or form reaches out.
    c.goto(&inbox.url(&format!("/m/{id}"))).await.unwrap();
    click(&c, "p.images a").await;
    c.wait()
        .for_element(Locator::Css("iframe.body"))
        .await
        .unwrap();
    let state = frame_state(&c).await;
    assert_eq!(state[1], "undefined");
    common::wait_for("the allowed image to load", Duration::from_secs(10), || {
        hits.lock().unwrap().iter().any(|p| p == "/pixel.gif")
    });
    let mut got = hits.lock().unwrap().clone();
    got.sort();
    got.dedup();
    for p in &got {
        assert!(
            ["/pixel.gif", "/css-bg"].contains(&p.as_str()),
            "{p} was requested: {got:?}"
        );
    }
    c.close().await.unwrap();
}

/// The messages in a Postfix's Maildir, as text.
fn maildir(pf: &common::Postfix) -> Vec<String> {
    pf.delivered()
        .into_iter()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

#[tokio::test]
async fn a_user_replies_forwards_and_writes_with_attachments_in_chromium() {
    // The internet: a Postfix taking mail for outside.test, the standby's smarthost.
    let relay = common::Postfix::primary_with(&["--domain", "outside.test"]);
    relay.start();
    let outbound = format!(
        "[outbound]\nrelay = \"127.0.0.1:{}\"\nrelay_tls = \"none\"\n",
        relay.port
    );
    let inbox = Inbox::start(&[ALICE], &outbound);
    inbox.send_raw(
        ALICE.0,
        "From: Bob <bob@outside.test>\nTo: alice@example.test\nSubject: Contract draft\n\
         Message-ID: <contract-1@outside.test>\nDate: Thu, 03 Dec 2026 09:00:00 +0000\n\n\
         Please look at the contract.\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let upload = tmp.path().join("signed contract.pdf");
    let attachment: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 256) as u8).collect();
    std::fs::write(&upload, &attachment).unwrap();
    let drv = driver();
    let c = browser(&drv, &downloads).await;
    log_in(&c, &inbox).await;

    // Reply, with an attachment.
    click(&c, "ul.messages a").await;
    landed(&c, "p.actions").await;
    click(&c, "p.actions a[href*='mode=reply']").await;
    landed(&c, "form.compose").await;
    let to = c
        .find(Locator::Css("input[name=to]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(to.as_deref(), Some("bob@outside.test"));
    type_in(&c, "textarea[name=body]", "Signed, see attached.").await;
    type_in(&c, "input[name=attachment]", upload.to_str().unwrap()).await;
    std::fs::write(
        screenshot_dir(tmp.path()).join("reply.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    click(&c, "form.compose button").await;
    landed(&c, "ul.messages").await;
    assert_eq!(subjects(&c).await, ["Re: Contract draft"], "in Sent");
    common::wait_for("the reply at the relay", Duration::from_secs(60), || {
        maildir(&relay)
            .iter()
            .any(|m| m.contains("Re: Contract draft"))
    });
    let got = maildir(&relay);
    let reply = got
        .iter()
        .find(|m| m.contains("Re: Contract draft"))
        .unwrap();
    assert!(
        reply.contains("In-Reply-To: <contract-1@outside.test>"),
        "{reply}"
    );
    assert!(reply.contains("> Please look at the contract."), "{reply}");
    let parsed = mail_parser::MessageParser::new()
        .parse(reply.as_bytes())
        .unwrap();
    let att = parsed.attachments().next().expect("the attachment");
    assert_eq!(
        mail_parser::MimeHeaders::attachment_name(att),
        Some("signed contract.pdf")
    );
    assert_eq!(att.contents(), &attachment[..], "byte-identical");

    // Forward: the original goes along whole.
    c.goto(&inbox.url("/")).await.unwrap();
    click(&c, "ul.messages a").await;
    landed(&c, "p.actions").await;
    click(&c, "p.actions a[href*='mode=forward']").await;
    landed(&c, "form.compose").await;
    type_in(&c, "input[name=to]", "carol@outside.test").await;
    click(&c, "form.compose button").await;
    landed(&c, "ul.messages").await;
    common::wait_for("the forward at the relay", Duration::from_secs(60), || {
        maildir(&relay)
            .iter()
            .any(|m| m.contains("Fwd: Contract draft"))
    });
    let got = maildir(&relay);
    let fwd = got
        .iter()
        .find(|m| m.contains("Fwd: Contract draft"))
        .unwrap();
    let parsed = mail_parser::MessageParser::new()
        .parse(fwd.as_bytes())
        .unwrap();
    let inner = parsed
        .attachments()
        .find_map(|a| a.message())
        .expect("the original attached");
    assert_eq!(inner.message_id(), Some("contract-1@outside.test"));
    assert!(
        inner
            .body_text(0)
            .unwrap()
            .contains("Please look at the contract."),
        "the original's text"
    );

    // A new message, with an attachment.
    click(&c, "nav a[href='/compose']").await;
    landed(&c, "form.compose").await;
    type_in(&c, "input[name=to]", "dave@outside.test").await;
    type_in(&c, "input[name=subject]", "Fresh start").await;
    type_in(&c, "textarea[name=body]", "Hello Dave.").await;
    type_in(&c, "input[name=attachment]", upload.to_str().unwrap()).await;
    click(&c, "form.compose button").await;
    landed(&c, "ul.messages").await;
    common::wait_for(
        "the new message at the relay",
        Duration::from_secs(60),
        || maildir(&relay).iter().any(|m| m.contains("Fresh start")),
    );
    let got = maildir(&relay);
    let new = got.iter().find(|m| m.contains("Fresh start")).unwrap();
    let parsed = mail_parser::MessageParser::new()
        .parse(new.as_bytes())
        .unwrap();
    assert_eq!(
        parsed.attachments().next().unwrap().contents(),
        &attachment[..]
    );
    assert!(new.contains("Delivered-To: dave@outside.test"), "{new}");
    // Someone else's address as From is refused, and nothing goes out.
    c.goto(&inbox.url("/compose")).await.unwrap();
    landed(&c, "form.compose").await;
    let from = c
        .find_all(Locator::Css("select[name=from] option"))
        .await
        .unwrap();
    assert_eq!(from.len(), 1, "alice may send as herself only");
    c.close().await.unwrap();
}
