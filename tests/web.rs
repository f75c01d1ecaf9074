//! The emergency inbox over HTTP against a real `standby serve`: who sees what, logins
//! and their limits, CSRF, Dovecot's own hashes. The browser tests are in
//! tests/web_browser.rs.

mod common;

use common::web::{Inbox, Resp};

const ALICE: (&str, &str) = ("alice@example.test", "alice's secret");
const BOB: (&str, &str) = ("bob", "bob's secret");

fn message(subject: &str, to: &str) -> String {
    format!(
        "From: Sender <sender@example.org>\nTo: {to}\nSubject: {subject}\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\nMessage-ID: <{}@example.org>\n\
         MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n\
         --b\nContent-Type: text/plain\n\nThe body of {subject}.\n\
         --b\nContent-Type: application/octet-stream\n\
         Content-Disposition: attachment; filename=\"{subject}.bin\"\n\
         Content-Transfer-Encoding: base64\n\nAAECAwQF\n--b--\n",
        subject.replace(' ', "-")
    )
}

fn subjects(page: &Resp) -> Vec<String> {
    let t = page.text();
    t.split("<span class=\"subject\">")
        .skip(1)
        .map(|s| s[..s.find('<').unwrap()].to_string())
        .collect()
}

#[test]
fn users_see_only_their_own_mail_by_any_url() {
    let inbox = Inbox::start_with(&[ALICE, BOB], "aliases = \"{dir}/aliases.csv\"", |dir| {
        std::fs::write(
            dir.join("aliases.csv"),
            "address,alias\nalice@example.test,sales@example.test\n",
        )
        .unwrap();
    });
    for (subject, to) in [
        ("for alice", "alice@example.test"),
        ("for sales", "sales@example.test"),
        ("for alice tagged", "alice+lists@example.test"),
        ("for bob secret", "bob@example.test"),
        ("for alicex", "alicex@example.test"),
    ] {
        inbox.send_raw(to, &message(subject, to));
    }
    let alice = inbox.client("127.0.0.1");
    let r = alice.login(ALICE.0, ALICE.1);
    assert_eq!(r.status, 303, "{}", r.text());
    let page = alice.get("/");
    assert_eq!(page.status, 200);
    let mut seen = subjects(&page);
    seen.sort();
    assert_eq!(seen, ["for alice", "for alice tagged", "for sales"]);
    // Search: by subject, by sender; never bob's.
    let found = alice.get("/?subject=secret");
    assert_eq!(subjects(&found), Vec::<String>::new());
    let found = alice.get("/?subject=TAGGED");
    assert_eq!(subjects(&found), ["for alice tagged"]);
    let found = alice.get("/?from=sender%40example.org&since=2000-01-01");
    assert_eq!(subjects(&found).len(), 3);
    // Bob's message, by every URL that shows a message, answers as a missing one does.
    let bobs = inbox.id_of("for bob secret");
    let missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for suffix in ["", "/body", "/raw", "/att/0", "?images=1"] {
        let theirs = alice.get(&format!("/m/{bobs}{suffix}"));
        let none = alice.get(&format!("/m/{missing}{suffix}"));
        assert_eq!(theirs.status, 404, "/m/bob{suffix}");
        assert_eq!(
            theirs.body, none.body,
            "/m/bob{suffix} differs from a missing one"
        );
        assert!(!theirs.text().contains("bob"), "{}", theirs.text());
    }
    // Her own: the page, the attachment's bytes, the raw message.
    let own = inbox.id_of("for alice");
    let page = alice.get(&format!("/m/{own}"));
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("The body of for alice."),
        "{}",
        page.text()
    );
    let att = alice.get(&format!("/m/{own}/att/0"));
    assert_eq!(att.status, 200);
    assert_eq!(att.body, [0, 1, 2, 3, 4, 5]);
    assert!(
        att.header("content-disposition")
            .unwrap()
            .starts_with("attachment;")
    );
    let raw = alice.get(&format!("/m/{own}/raw"));
    assert!(
        raw.text().contains("Subject: for alice\r\n"),
        "{}",
        raw.text()
    );
    // Bob sees his and nothing of alice's.
    let bob = inbox.client("127.0.0.1");
    assert_eq!(bob.login(BOB.0, BOB.1).status, 303);
    assert_eq!(subjects(&bob.get("/")), ["for bob secret"]);
    assert_eq!(bob.get(&format!("/m/{own}")).status, 404);
    // Without a session: the login page, never a message.
    let anon = inbox.client("127.0.0.1");
    let r = anon.get(&format!("/m/{own}/raw"));
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
}

#[test]
fn logins_are_limited_audited_and_answer_the_same_for_unknown_users() {
    let inbox = Inbox::start(&[ALICE, BOB], "");
    // Wrong password and unknown user: the same answer, byte for byte (one form, so
    // one CSRF token in both pages).
    let c = inbox.client("127.0.0.2");
    let form = c.get("/login");
    let token = form.csrf();
    let wrong = c.post(
        "/login",
        &[
            ("username", ALICE.0),
            ("password", "nope"),
            ("csrf", &token),
        ],
    );
    let unknown = c.post(
        "/login",
        &[
            ("username", "nobody@example.test"),
            ("password", "nope"),
            ("csrf", &token),
        ],
    );
    assert_eq!(wrong.status, 401);
    assert_eq!((wrong.status, &wrong.body), (unknown.status, &unknown.body));
    // Three more attempts from this address are allowed, the sixth in the minute is not.
    for _ in 0..3 {
        let r = c.post(
            "/login",
            &[("username", "carol"), ("password", "x"), ("csrf", &token)],
        );
        assert_eq!(r.status, 401);
    }
    let r = c.post(
        "/login",
        &[
            ("username", ALICE.0),
            ("password", ALICE.1),
            ("csrf", &token),
        ],
    );
    assert_eq!(r.status, 429, "{}", r.text());
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Per user too: five attempts on bob from five addresses, the sixth from a new one.
    for i in 10..15 {
        let r = inbox.client(&format!("127.0.0.{i}")).login("bob", "wrong");
        assert_eq!(r.status, 401);
    }
    let r = inbox.client("127.0.0.20").login("bob@example.test", BOB.1);
    assert_eq!(
        r.status, 429,
        "the user's limit counts whatever the address"
    );
    // Another user from another address is not affected, and logins that succeed do not
    // count: a team behind one address can all log in.
    for _ in 0..7 {
        assert_eq!(
            inbox.client("127.0.0.21").login(ALICE.0, ALICE.1).status,
            303
        );
    }
    // Every login and failed login is audited, with no password.
    let audit = inbox.standby.cli(&["audit", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let actions: Vec<(&str, &str)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions.iter().filter(|(a, _)| *a == "login-failed").count(),
        2 + 3 + 5
    );
    assert!(actions.contains(&("login", "web:alice@example.test")));
    assert!(actions.contains(&("login-failed", "web:nobody@example.test")));
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(!text.contains("nope") && !text.contains(ALICE.1));
}

#[test]
fn posts_without_the_csrf_token_are_refused() {
    let inbox = Inbox::start(&[ALICE], "");
    let c = inbox.client("127.0.0.3");
    let form = c.get("/login");
    // No token, a wrong one, another form's: 403, and no login.
    for token in ["", "x", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let r = c.post(
            "/login",
            &[
                ("username", ALICE.0),
                ("password", ALICE.1),
                ("csrf", token),
            ],
        );
        assert_eq!(r.status, 403, "token {token:?}");
    }
    let other = inbox.client("127.0.0.4").get("/login").csrf();
    let r = c.post(
        "/login",
        &[
            ("username", ALICE.0),
            ("password", ALICE.1),
            ("csrf", &other),
        ],
    );
    assert_eq!(r.status, 403, "another browser's token");
    assert_eq!(c.post("/login", &[]).status, 403);
    let r = c.post(
        "/login",
        &[
            ("username", ALICE.0),
            ("password", ALICE.1),
            ("csrf", &form.csrf()),
        ],
    );
    assert_eq!(r.status, 303);
    // Logged in: logging out needs the session's token too.
    assert_eq!(c.post("/logout", &[]).status, 403);
    assert_eq!(c.post("/logout", &[("csrf", &form.csrf())]).status, 403);
    assert_eq!(c.get("/").status, 200);
    let token = c.get("/").csrf();
    let r = c.post("/logout", &[("csrf", &token)]);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert_eq!(c.get("/").status, 303, "logged out");
}

#[test]
fn hashes_made_by_doveadm_log_in_and_weak_ones_are_skipped() {
    common::require("doveadm", "dovecot-core");
    let schemes = [
        "ARGON2ID",
        "ARGON2I",
        "BLF-CRYPT",
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "",
    ];
    let mut lines = String::from("# made by doveadm pw\n");
    for (i, scheme) in schemes.iter().enumerate() {
        let mut cmd = std::process::Command::new("doveadm");
        cmd.arg("pw").args(["-p", &format!("pw {i}")]);
        if !scheme.is_empty() {
            cmd.args(["-s", scheme]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hash = String::from_utf8(out.stdout).unwrap();
        // Dovecot's own line format: the rest of the fields are kept and ignored.
        lines.push_str(&format!(
            "user{i}:{}:1000:1000::/home/user{i}::\n",
            hash.trim()
        ));
    }
    let weak = ["PLAIN", "MD5-CRYPT", "SSHA"];
    for (i, scheme) in weak.iter().enumerate() {
        let out = std::process::Command::new("doveadm")
            .args(["pw", "-s", scheme, "-p", "weak"])
            .output()
            .unwrap();
        let hash = String::from_utf8(out.stdout).unwrap();
        lines.push_str(&format!("weak{i}@example.test:{}\n", hash.trim()));
    }
    let inbox = Inbox::start_with(&[], "", |dir| {
        std::fs::write(dir.join("users.passwd"), &lines).unwrap();
    });
    for (i, scheme) in schemes.iter().enumerate() {
        let c = inbox.client(&format!("127.0.1.{i}"));
        let r = c.login(&format!("user{i}"), &format!("pw {i}"));
        assert_eq!(r.status, 303, "{scheme} hash: {}", r.text());
        assert_eq!(c.get("/").status, 200);
        let wrong = inbox
            .client(&format!("127.0.2.{i}"))
            .login(&format!("user{i}"), "pw");
        assert_eq!(wrong.status, 401);
    }
    for (i, scheme) in weak.iter().enumerate() {
        let c = inbox.client(&format!("127.0.3.{i}"));
        assert_eq!(c.login(&format!("weak{i}"), "weak").status, 401, "{scheme}");
    }
    // Each skipped line is named with its file and line.
    let log = inbox.standby.log();
    for (i, scheme) in weak.iter().enumerate() {
        let line = schemes.len() + 2 + i;
        let want = format!("users.passwd:{line}: weak{i}@example.test: scheme {{{scheme}}}");
        assert!(log.contains(&want), "no `{want}` in:\n{log}");
    }
    let listed = inbox.standby.cli(&["user", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), schemes.len(), "{listed}");
}

#[test]
fn user_commands_edit_the_file_and_serve_picks_it_up() {
    let inbox = Inbox::start(&[ALICE], "");
    let c = inbox.client("127.0.4.1");
    assert_eq!(c.login(ALICE.0, ALICE.1).status, 303);
    // A new password ends the session made with the old one (once the change is read:
    // SIGHUP reads it at once).
    common::web::add_user(&inbox.standby, ALICE.0, "new secret");
    inbox.standby.signal("HUP");
    common::wait_for("the reload", std::time::Duration::from_secs(10), || {
        inbox.standby.log().contains("reloaded: users")
    });
    assert_eq!(c.get("/").status, 303, "the old session ended");
    assert_eq!(
        inbox.client("127.0.4.2").login(ALICE.0, ALICE.1).status,
        401
    );
    assert_eq!(
        inbox
            .client("127.0.4.3")
            .login(ALICE.0, "new secret")
            .status,
        303
    );
    let out = inbox.standby.cli(&["user", "remove", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = inbox.standby.cli(&["user", "remove", "alice"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not in"));
    inbox.standby.signal("HUP");
    common::wait_for(
        "the second reload",
        std::time::Duration::from_secs(10),
        || inbox.standby.log().matches("reloaded: users").count() >= 2,
    );
    assert_eq!(
        inbox
            .client("127.0.4.4")
            .login(ALICE.0, "new secret")
            .status,
        401
    );
    let out = inbox.standby.cli(&["user", "add", "alice"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no terminal, no --password-stdin"
    );
    let out = inbox
        .standby
        .cli(&["user", "add", "not an address", "--password-stdin"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_journal_report_shows_its_recipients_only_the_original_message() {
    // Bob and Dave both received it (Dave as Bcc); the report's envelope part names
    // every recipient, Bcc and expanded lists included: nobody sees that part.
    let inbox = Inbox::start(
        &[("bob", "bob pw"), ("dave", "dave pw")],
        "\n[journal]\naddresses = [\"journal@standby.example.test\"]\n",
    );
    let report =
        std::fs::read_to_string(common::repo().join("tests/fixtures/exchange-journal-report.eml"))
            .unwrap();
    let (ok, t) = common::swaks(
        inbox.standby.port,
        &[
            "--from",
            "exchange@example.test",
            "--to",
            "journal@standby.example.test",
            "--data",
            common::repo()
                .join("tests/fixtures/exchange-journal-report.eml")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(ok, "{t}");
    assert!(report.contains("Bcc: dave@example.test"));
    let id = inbox.id_of("Board minutes");
    for (user, pw, ip) in [
        ("bob", "bob pw", "127.0.5.1"),
        ("dave", "dave pw", "127.0.5.2"),
    ] {
        let c = inbox.client(ip);
        assert_eq!(c.login(user, pw).status, 303);
        assert_eq!(subjects(&c.get("/")), ["Board minutes"], "{user}");
        for suffix in ["", "/raw"] {
            let r = c.get(&format!("/m/{id}{suffix}"));
            assert_eq!(r.status, 200);
            let text = r.text();
            assert!(text.contains("Minutes."), "{user}{suffix}: {text}");
            // Dave's own address is on his pages (he is logged in as him); to Bob it is
            // someone else's Bcc.
            let others = if user == "bob" { "dave@" } else { "bob's Bcc" };
            for hidden in [
                "Bcc",
                others,
                "carl@",
                "Journal report",
                "X-MS-Journal-Report",
            ] {
                assert!(
                    !text.contains(hidden),
                    "{user}{suffix} shows {hidden}: {text}"
                );
            }
        }
    }
}

#[test]
fn over_https_the_cookies_are_host_only_and_secure() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = common::make_pki(pki_dir.path());
    let inbox = Inbox::start(
        &[ALICE],
        &format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        ),
    );
    let c = common::web::Client::new(
        &format!("https://127.0.0.1:{}", inbox.web_port),
        "127.0.6.1",
    )
    .with_ca(&pki.ca);
    let form = c.get("/login");
    assert_eq!(form.status, 200);
    let cookie = form.header("set-cookie").unwrap().to_string();
    assert!(cookie.starts_with("__Host-standby_login="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(form.header("strict-transport-security").is_some());
    let r = c.post(
        "/login",
        &[
            ("username", ALICE.0),
            ("password", ALICE.1),
            ("csrf", &form.csrf()),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.text());
    let session: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        session
            .iter()
            .any(|v| v.starts_with("__Host-standby_session=")
                && v.contains("; Secure")
                && v.contains("HttpOnly")
                && v.contains("SameSite=Strict")
                && !v.contains("Max-Age")),
        "{session:?}"
    );
    assert_eq!(c.get("/").status, 200);
    // Plain HTTP on the same port is no way in.
    let plain = inbox.client("127.0.6.2");
    assert!(std::panic::catch_unwind(|| plain.get("/login")).map_or(true, |r| r.status != 200));
}
