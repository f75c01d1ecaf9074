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
    let cfg = add_users(
        &moto,
        dir.path(),
        "webfn",
        &[
            ("bob", "bob's password"),
            ("carol@example.test", "carol's password"),
        ],
    );
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
    let secret = session_secret(&clients).await;

    let port = free_port();
    let mut procs = Procs(vec![watch(port, &dir.path().join("watch.log"))]);
    let env = web_env(&moto, "webfn", secret);
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

/// Serve `http://127.0.0.1:{upstream}{prefix}` at the root of a port of its own, as a
/// function URL serves the function at its root (`cargo lambda watch` puts every
/// function under `/lambda-url/<name>`, and the pages' links start at `/`).
fn root_proxy(upstream: u16, prefix: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<axum::body::Body>();
            let app = axum::Router::new().fallback(move |mut req: axum::extract::Request| {
                let client = client.clone();
                async move {
                    use axum::response::IntoResponse;
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("http://127.0.0.1:{upstream}{prefix}{pq}")
                        .parse()
                        .unwrap();
                    match client.request(req).await {
                        Ok(r) => r.map(axum::body::Body::new).into_response(),
                        Err(e) => {
                            (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response()
                        }
                    }
                }
            });
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    port
}

/// The operator adds `users` (name, password) to the bucket's users/passwd with
/// `standby user add`; returns the operator's config.
fn add_users(
    moto: &Moto,
    dir: &std::path::Path,
    name: &str,
    users: &[(&str, &str)],
) -> std::path::PathBuf {
    let cfg = cli_config(dir, name, 1);
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "[primary]",
            "[users]\ndefault_domain = \"example.test\"\n[primary]",
        ),
    )
    .unwrap();
    let operator = child_env_as(moto, Principal::Operator);
    for (user, password) in users {
        add_user_with(&cfg, &operator, user, password);
    }
    cfg
}

/// The session key, in Secrets Manager as the template makes it: its ARN.
async fn session_secret(clients: &standby::backend::aws::AwsClients) -> String {
    aws_sdk_secretsmanager::Client::new(&clients.sdk)
        .create_secret()
        .name("standby/web-session")
        .secret_string("k".repeat(64))
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string()
}

/// The web function's environment for bucket and table `name`, signing as its role.
fn web_env(moto: &Moto, name: &str, secret: String) -> Vec<(String, String)> {
    let mut env = child_env_as(moto, Principal::Web);
    env.extend(
        [
            ("STANDBY_BUCKET", name.to_string()),
            ("STANDBY_TABLE", name.to_string()),
            ("STANDBY_USERS_DEFAULT_DOMAIN", "example.test".to_string()),
            (
                "STANDBY_WEB_SESSION_KEY_ENV",
                "STANDBY_WEB_SESSION_SECRET".to_string(),
            ),
            ("STANDBY_WEB_SESSION_SECRET", secret),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn users_send_from_the_web_function_through_ses_with_attachments_put_to_s3() {
    use common::browser::{browser, click, driver, landed, type_in};
    use fantoccini::Locator;
    let log_dir = tempfile::tempdir().unwrap();
    let requests = log_dir.path().join("requests.jsonl");
    let moto = Moto::start_logged(&requests);
    let (clients, settings, storage) = moto.storage("websend").await;
    moto.verify_ses_domain("example.test").await;
    let dir = tempfile::tempdir().unwrap();
    add_users(
        &moto,
        dir.path(),
        "websend",
        &[("alice", "alice's password"), ("bob", "bob's password")],
    );
    let secret = session_secret(&clients).await;

    let port = free_port();
    let mut procs = Procs(vec![watch(port, &dir.path().join("watch.log"))]);
    let mut env = web_env(&moto, "websend", secret);
    env.extend(
        [
            ("STANDBY_DOMAINS", "example.test"),
            ("STANDBY_OUTBOUND_MODE", "ses"),
            ("STANDBY_HOSTNAME", "example.test"),
            ("STANDBY_DSN_REPORTING_MTA", "example.test"),
            ("STANDBY_SUBMISSION_RATE_PER_HOUR", "2"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    // Two instances of the function, as Lambda runs them side by side: the hourly
    // count must hold across both.
    let log = dir.path().join("web.log");
    procs.0.push(function(WEB, "standby-web", port, &env, &log));
    procs.0.push(function(
        WEB,
        "standby-web",
        port,
        &env,
        &dir.path().join("web2.log"),
    ));
    let proxy = root_proxy(port, "/lambda-url/standby-web");
    let origin = format!("http://localhost:{proxy}");

    // The browser PUTs to the bucket from the function URL's origin: the template's
    // CORS rule, with this test's origin for the function URL's.
    let template = common::template::template();
    let rule =
        &template["Resources"]["MailBucket"]["Properties"]["CorsConfiguration"]["CorsRules"][0];
    assert_eq!(rule["AllowedMethods"], serde_json::json!(["PUT"]));
    assert!(
        rule["AllowedOrigins"][0]["Fn::Sub"]
            .as_str()
            .is_some_and(|o| o.starts_with("https://*.lambda-url.")),
        "{rule}"
    );
    let headers: Vec<String> = rule["AllowedHeaders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    clients
        .s3
        .put_bucket_cors()
        .bucket("websend")
        .cors_configuration(
            aws_sdk_s3::types::CorsConfiguration::builder()
                .cors_rules(
                    aws_sdk_s3::types::CorsRule::builder()
                        .allowed_methods("PUT")
                        .allowed_origins(&origin)
                        .set_allowed_headers(Some(headers))
                        .max_age_seconds(600)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // Larger than a function URL takes in one request (6 MB), every byte value.
    let tmp = tempfile::tempdir().unwrap();
    let upload = tmp.path().join("site plan.pdf");
    let attachment: Vec<u8> = (0..7_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&upload, &attachment).unwrap();
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let drv = driver();
    let c = browser(&drv, &downloads).await;
    let url = |p: &str| format!("{origin}{p}");
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", proxy)).is_ok()
            && common::web::Client::new(&url(""), "127.0.0.1")
                .get("/login")
                .status
                == 200
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(up, "the web function answers");
    c.goto(&url("/login")).await.unwrap();
    type_in(&c, "input[name=username]", "alice").await;
    type_in(&c, "input[name=password]", "alice's password").await;
    click(&c, "form.login button").await;
    landed(&c, "nav a[href='/compose']").await;
    click(&c, "nav a[href='/compose']").await;
    landed(&c, "form.compose[data-uploads]").await;
    type_in(&c, "input[name=to]", "dave@outside.test, bob@example.test").await;
    type_in(&c, "input[name=subject]", "Site plan").await;
    type_in(&c, "textarea[name=body]", "The plan, as promised.").await;
    type_in(&c, "input[name=attachment]", upload.to_str().unwrap()).await;
    click(&c, "form.compose button").await;
    c.wait()
        .at_most(Duration::from_secs(120))
        .for_element(Locator::Css("ul.messages"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the Sent list after sending: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let listed = c.find(Locator::Css("ul.messages")).await.unwrap();
    assert!(listed.text().await.unwrap().contains("Site plan"));
    // Two an hour: the second goes, the third is refused, whichever instance takes it.
    for (n, subject) in ["Second", "Third"].into_iter().enumerate() {
        c.goto(&url("/compose")).await.unwrap();
        landed(&c, "form.compose").await;
        type_in(&c, "input[name=to]", "bob@example.test").await;
        type_in(&c, "input[name=subject]", subject).await;
        click(&c, "form.compose button").await;
        if n == 0 {
            landed(&c, "ul.messages").await;
        } else {
            landed(&c, "p.error").await;
            let error = c.find(Locator::Css("p.error")).await.unwrap();
            assert!(
                error
                    .text()
                    .await
                    .unwrap()
                    .contains("as many messages as an hour allows"),
                "the third message refused"
            );
        }
    }
    c.close().await.unwrap();
    let count = clients
        .dynamodb
        .get_item()
        .table_name("websend")
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("limit#send:alice@example.test".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        count
            .item()
            .and_then(|i| i.get("attempts"))
            .and_then(|v| v.as_n().ok())
            .map(String::as_str),
        Some("3"),
        "counted in the table, where every instance counts"
    );

    // Sent through SES by the function itself, within the request.
    let sent = moto.ses_sent();
    assert_eq!(sent.len(), 1, "one SES send");
    let raw = sent[0]["raw_data"].as_str().unwrap();
    let parsed = mail_parser::MessageParser::new()
        .parse(raw.as_bytes())
        .unwrap();
    assert_eq!(parsed.subject(), Some("Site plan"));
    let att = parsed.attachments().next().expect("the attachment");
    assert_eq!(
        mail_parser::MimeHeaders::attachment_name(att),
        Some("site plan.pdf")
    );
    assert_eq!(att.contents(), &attachment[..], "byte-identical");
    // (moto adds the header's To and Cc to the destinations it records: the envelope
    // is checked on the records below.)
    // The attachment went to S3 by the presigned PUT (signed as the web function's
    // role), not through the function URL, and was removed once in the message.
    let lines = std::fs::read_to_string(&requests).unwrap();
    let web_key = Principal::Web.key();
    let put = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["op"] == "PutObject"
                && l["key"] == web_key
                && l["resource"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("websend/uploads/"))
        });
    assert!(put.is_some_and(|l| l["status"] == 200), "{lines}");
    let left = clients
        .s3
        .list_objects_v2()
        .bucket("websend")
        .prefix("uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(left.key_count(), Some(0), "uploads removed");
    // Bob's copy is held for him, alice's own copy for her mailbox; the outside part
    // delivered. Each stored under serve/.
    let recs = storage.index.list(&Default::default()).await.unwrap();
    let of = |rcpt: &str| {
        recs.iter()
            .find(|r| r.rcpts.iter().any(|x| x.address == rcpt))
            .unwrap_or_else(|| panic!("a record for {rcpt}: {recs:?}"))
    };
    assert_eq!(of("bob@example.test").status, standby::model::Status::Held);
    assert_eq!(
        of("alice@example.test").status,
        standby::model::Status::Held
    );
    let out = of("dave@outside.test");
    assert_eq!(out.status, standby::model::Status::Delivered);
    assert_eq!(out.rcpts.len(), 1, "only the outside recipient goes out");
    assert!(recs.iter().all(|r| r.blob_key().starts_with("serve/")));
    let audit = storage.audit.entries().await.unwrap();
    assert!(audit.iter().any(|e| e.action == "sent"), "{audit:?}");

    // The primary is back: the drain function delivers the held parts, the sender's
    // copy (marked) into alice's mailbox and the colleague's into bob's, each once.
    let pf = common::Postfix::primary();
    pf.start();
    let drain_storage = moto.storage_as(Principal::Drain, &settings).await;
    let config =
        standby::config::Config::from_lambda_env(common::aws::drain_env("websend", pf.port, &[]))
            .unwrap();
    let relay = standby::smtp::SmtpRelay::from_config(&config).unwrap();
    let f = standby::lambda::drain::DrainFunction::new(config, drain_storage, relay);
    let deadline = Some(std::time::Instant::now() + Duration::from_secs(120));
    let sum = f
        .handle(standby::lambda::drain::DrainRequest::default(), deadline)
        .await
        .unwrap();
    assert_eq!(sum.primary, "up", "{sum:?}");
    let again = f
        .handle(standby::lambda::drain::DrainRequest::default(), deadline)
        .await
        .unwrap();
    assert_eq!(again.delivered, 0, "{again:?}");
    let mailbox: Vec<String> = pf
        .delivered()
        .into_iter()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect();
    let to = |who: &str, subject: &str| {
        mailbox
            .iter()
            .filter(|m| {
                m.contains(&format!("Delivered-To: {who}"))
                    && m.contains(&format!("Subject: {subject}"))
            })
            .count()
    };
    assert_eq!(
        to("alice@example.test", "Site plan"),
        1,
        "the sender's copy, once"
    );
    assert_eq!(
        to("bob@example.test", "Site plan"),
        1,
        "the colleague's, once"
    );
    assert_eq!(to("bob@example.test", "Second"), 1);
    assert_eq!(to("bob@example.test", "Third"), 0, "refused, never stored");
    let copy = mailbox
        .iter()
        .find(|m| m.contains("Delivered-To: alice@example.test") && m.contains("Site plan"))
        .unwrap();
    assert!(
        copy.contains("X-Standby-Sent: yes"),
        "marked for a Sent rule"
    );
    assert!(
        !mailbox
            .iter()
            .any(|m| m.contains("Delivered-To: dave@outside.test"))
    );
}
