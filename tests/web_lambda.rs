//! `standby-web`, the emergency inbox's Lambda function, run for real: the binary under
//! `cargo lambda watch` (its emulation of the Lambda runtime API and of function URLs,
//! payload 2.0), on moto through the real SDK, signing as the WebFunction's role (every
//! request checked against its policy in infra/template.yaml when moto stops). Users are
//! written to the bucket by `standby user add` as the operator; mail arrives the SES way.

mod common;

use std::time::Duration;

use common::aws::{Moto, child_env_as, cli_config, ses_event, ses_put, ses_receive, standby_cli};
use common::free_port;
use common::iam::Principal;
use common::lambda::{Procs, function, watch};
use common::web::{Client, add_user_with};

const WEB: &str = env!("CARGO_BIN_EXE_standby-web");

#[tokio::test(flavor = "multi_thread")]
async fn the_web_function_serves_the_inbox_over_a_function_url() {
    let moto = Moto::start();
    let (clients, settings, storage) = moto.storage("webfn").await;
    let dir = tempfile::tempdir().unwrap();
    // The operator adds users: the bucket's users/passwd.
    let cfg = cli_config(dir.path(), "webfn", 1);
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "[primary]",
            "[users]\ndefault_domain = \"example.test\"\n[primary]",
        ),
    )
    .unwrap();
    let operator = child_env_as(&moto, Principal::Operator);
    add_user_with(&cfg, &operator, "bob", "bob's password");
    add_user_with(&cfg, &operator, "carol@example.test", "carol's password");
    let listed = standby_cli(&moto, &cfg, &["user", "list"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "bob@example.test\ncarol@example.test\n"
    );
    let object = clients
        .s3
        .head_object()
        .bucket("webfn")
        .key("users/passwd")
        .send()
        .await
        .unwrap();
    assert_eq!(
        object.server_side_encryption().map(|e| e.as_str()),
        Some("AES256"),
        "stored encrypted"
    );
    // Mail for bob, the SES way.
    let (_, raw) = ses_receive(&clients, &settings, "normal.json", "tok-webfn").await;
    let recs = storage.index.list(&Default::default()).await.unwrap();
    assert_eq!(recs.len(), 1);
    let id = recs[0].id.to_string();
    // And one SES judged spam: held like any other, listed under Junk.
    let mut ev = ses_event("normal.json");
    let spam_id = "spam0000000000000000000000000000000000000";
    ev["Records"][0]["ses"]["mail"]["messageId"] = spam_id.into();
    ev["Records"][0]["ses"]["receipt"]["spamVerdict"]["status"] = "FAIL".into();
    let spam = common::fixture("ses/message.eml", "tok-spam")
        .replace("Subject: Quarterly figures", "Subject: Cheap pills");
    ses_put(&clients, &settings, spam_id, spam.as_bytes()).await;
    standby::lambda::ingest::Ingest::new(moto.storage_as(Principal::Ingest, &settings).await, "")
        .handle(ev)
        .await
        .unwrap();
    assert_eq!(
        storage.index.list(&Default::default()).await.unwrap().len(),
        2
    );
    // The session key, in Secrets Manager as the template makes it.
    let secret = aws_sdk_secretsmanager::Client::new(&clients.sdk)
        .create_secret()
        .name("standby/web-session")
        .secret_string("k".repeat(64))
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string();

    let port = free_port();
    let mut procs = Procs(vec![watch(port, &dir.path().join("watch.log"))]);
    let mut env = child_env_as(&moto, Principal::Web);
    env.extend(
        [
            ("STANDBY_BUCKET", "webfn".to_string()),
            ("STANDBY_TABLE", "webfn".to_string()),
            ("STANDBY_USERS_DEFAULT_DOMAIN", "example.test".to_string()),
            (
                "STANDBY_WEB_SESSION_KEY_ENV",
                "STANDBY_WEB_SESSION_SECRET".to_string(),
            ),
            ("STANDBY_WEB_SESSION_SECRET", secret),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let log = dir.path().join("web.log");
    procs.0.push(function(WEB, "standby-web", port, &env, &log));
    let base = format!("http://127.0.0.1:{port}/lambda-url/standby-web");
    let bob = Client::new(&base, "127.0.0.1");
    let mut form = bob.get("/login");
    for _ in 0..100 {
        if form.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        form = bob.get("/login");
    }
    assert_eq!(form.status, 200, "{}", form.text());
    // Over HTTPS (a function URL), cookies carry the __Host- prefix and Secure.
    let set = form.header("set-cookie").unwrap_or_default().to_string();
    assert!(
        set.starts_with("__Host-standby_login=") && set.contains("Secure"),
        "{set}"
    );
    let token = form.csrf();
    let wrong = bob.post(
        "/login",
        &[("username", "bob"), ("password", "nope"), ("csrf", &token)],
    );
    assert_eq!(wrong.status, 401);
    let ok = bob.post(
        "/login",
        &[
            ("username", "bob"),
            ("password", "bob's password"),
            ("csrf", &token),
        ],
    );
    assert_eq!(ok.status, 303, "{}", ok.text());
    let inbox = bob.get("/");
    assert_eq!(inbox.status, 200);
    assert!(
        inbox.text().contains("Quarterly figures"),
        "{}",
        inbox.text()
    );
    assert!(
        !inbox.text().contains("Cheap pills"),
        "spam stays out of the inbox"
    );
    let junk = bob.get("/junk");
    assert!(junk.text().contains("Cheap pills"), "{}", junk.text());
    assert!(!junk.text().contains("Quarterly figures"));
    let page = bob.get(&format!("/m/{id}"));
    assert_eq!(page.status, 200, "{}", page.text());
    let raw_got = bob.get(&format!("/m/{id}/raw"));
    assert_eq!(raw_got.body, raw.as_bytes(), "the stored bytes, streamed");
    // Carol is another user: bob's message is a 404 to her.
    let carol = Client::new(&base, "127.0.0.1");
    let token = carol.get("/login").csrf();
    let r = carol.post(
        "/login",
        &[
            ("username", "carol"),
            ("password", "carol's password"),
            ("csrf", &token),
        ],
    );
    assert_eq!(r.status, 303);
    assert_eq!(carol.get(&format!("/m/{id}")).status, 404);
    assert!(!carol.get("/").text().contains("Quarterly figures"));
    // Log out.
    let token = bob.get("/").csrf();
    assert_eq!(bob.post("/logout", &[("csrf", &token)]).status, 303);
    assert_eq!(bob.get("/").status, 303);
    // Logins are audited in the table; the function logs JSON, no full address at info.
    let audit = storage.audit.entries().await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["login-failed", "login", "login", "logout"]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with('{') && l.contains("login")),
        "{text}"
    );
    assert!(!text.contains("bob@example.test"), "{text}");
}
