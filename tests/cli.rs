//! The operator command as a script sees it: output shapes, exit codes (0 ok, 1 error,
//! 2 usage, 3 primary down) and error messages that name the file, line or flag.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(STANDBY)
        .args(args)
        .env("STANDBY_LOG", "warn")
        .output()
        .unwrap()
}

/// `<dir>/s.toml`: a host name, a domain and a primary on port 25, nothing else.
fn minimal_config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("s.toml");
    std::fs::write(
        &cfg,
        "hostname = \"standby.example.test\"\ndomains = [\"example.test\"]\n\
         [primary]\naddress = \"127.0.0.1:25\"\n",
    )
    .unwrap();
    cfg
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_errors_name_the_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let o = run(&["status", "--config", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope.toml"), "{}", stderr(&o));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "domains = [\"example.test\"]\nmax_mesage_size = 5\n[primary]\naddress = \"127.0.0.1:25\"\n",
    )
    .unwrap();
    let o = run(&["--config", bad.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("bad.toml") && e.contains("max_mesage_size") && e.contains("line 2"),
        "{e}"
    );

    let rcpts = dir.path().join("recipients.txt");
    std::fs::write(&rcpts, "bob@example.test\nnot an address\n").unwrap();
    let cfg = dir.path().join("r.toml");
    std::fs::write(
        &cfg,
        format!(
            "domains = [\"example.test\"]\nhostname = \"standby.example.test\"\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nrecipients = \"{}\"\n[primary]\naddress = \"127.0.0.1:25\"\n",
            free_port(),
            dir.path().join("data").display(),
            rcpts.display()
        ),
    )
    .unwrap();
    let o = run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("recipients.txt:2"), "{}", stderr(&o));

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "domains = [\"example.test\"]\nhostname = \"standby.example.test\"\n[primary]\naddress = \"127.0.0.1:25\"\n",
    )
    .unwrap();
    let o = Command::new(STANDBY)
        .args(["status", "--config", good.to_str().unwrap()])
        .env("STANDBY_LOG", "warn")
        .env("STANDBY_PRIMARY_TLS", "sometimes")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("STANDBY_PRIMARY_TLS") && e.contains("sometimes"),
        "{e}"
    );
}

#[test]
fn the_config_file_is_found_like_other_daemons_find_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let in_dir = |env: &[(&str, &str)]| {
        Command::new(STANDBY)
            .arg("status")
            .current_dir(dir.path())
            .env("STANDBY_LOG", "warn")
            .env_remove("STANDBY_CONFIG")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    // Nothing given, nothing found: every place looked at is named.
    let o = in_dir(&[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    if std::path::Path::new("/etc/standby/standby.toml").exists() {
        // This machine has a system config: it is the one read.
        assert!(e.contains("/etc/standby/standby.toml"), "{e}");
    } else {
        assert!(
            e.contains("no config file")
                && e.contains("looked for ./standby.toml and /etc/standby/standby.toml")
                && e.contains("--config")
                && e.contains("STANDBY_CONFIG"),
            "{e}"
        );
    }
    // ./standby.toml is read (its mistake, with its line, shows it was).
    let typo = "hostname = \"standby.example.test\"\ndomains = [\"example.test\"]\n\
                max_mesage_size = 5\n[primary]\naddress = \"127.0.0.1:25\"\n";
    std::fs::write(dir.path().join("standby.toml"), typo).unwrap();
    let e = stderr(&in_dir(&[]));
    assert!(
        e.starts_with("standby: ./standby.toml: TOML parse error at line 3")
            && e.contains("max_mesage_size"),
        "{e}"
    );
    // STANDBY_CONFIG comes before it; one naming no file is an error naming the variable.
    let named = dir.path().join("named.toml");
    std::fs::write(&named, typo).unwrap();
    let e = stderr(&in_dir(&[("STANDBY_CONFIG", named.to_str().unwrap())]));
    assert!(e.contains("named.toml: TOML parse error at line 3"), "{e}");
    let o = in_dir(&[("STANDBY_CONFIG", "/nonexistent/standby.toml")]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        e.contains("STANDBY_CONFIG") && e.contains("/nonexistent/standby.toml"),
        "{e}"
    );
}

#[test]
fn one_name_per_setting_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = minimal_config(dir.path());
    // The Lambda's old name for the address: an error naming it and the right name.
    for (var, near) in [
        ("STANDBY_PRIMARY", "STANDBY_PRIMARY_ADDRESS"),
        ("STANDBY_METRICS", "STANDBY_METRICS_STACK"),
        ("STANDBY_PRIMARY_ADRESS", "STANDBY_PRIMARY_ADDRESS"),
    ] {
        let o = Command::new(STANDBY)
            .args(["status", "--config", cfg.to_str().unwrap()])
            .env("STANDBY_LOG", "warn")
            .env(var, "mx1.example.test:25")
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(
            e.contains(&format!("environment variable {var}: not a setting"))
                && e.contains(&format!("did you mean {near}?")),
            "{e}"
        );
    }
    // A short hostname is refused with the fix, naming the file.
    std::fs::write(
        &cfg,
        "hostname = \"vm\"\ndomains = [\"example.test\"]\n[primary]\naddress = \"127.0.0.1:25\"\n",
    )
    .unwrap();
    let o = run(&["status", "--config", cfg.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("s.toml")
            && e.contains("line 1")
            && e.contains("set hostname = \"mx2.example.com\""),
        "{e}"
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    let o = sb.cli(&["show", "not-an-id"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not-an-id"));
    let o = sb.cli(&["purge", "01M8HBRYFWJSMMQT86R411B1XH"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--yes"));
    let o = sb.cli(&["hold"]);
    assert_eq!(o.status.code(), Some(2), "hold needs ids or --all");
}

#[test]
fn bad_times_are_usage_errors_naming_the_flag() {
    // No config is read: clap rejects the value first (exit 2), and nothing panics.
    for (args, flag) in [
        (&["list", "--since", ""][..], "--since"),
        (&["list", "--since", "+"], "--since"),
        (&["list", "--until", "-"], "--until"),
        (
            &["export", "--format", "eml", "--out", "x", "--since", "3x"],
            "--since",
        ),
        (&["replay", "--since", "99999999999999999999d"], "--since"),
        (&["retention", "--at", "+9999999y"], "--at"),
    ] {
        let o = run(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert!(
            e.contains(flag) && e.contains("2026-11-28"),
            "{args:?}: {e}"
        );
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
}

#[test]
fn naive_times_are_read_in_the_local_time_zone() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    sb.send("bob@example.test", &[]);
    // The wall-clock time of an hour ago at UTC+14, written without an offset.
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let wall = (an_hour_ago + chrono::Duration::hours(14))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let since = |tz: &str| {
        let o = Command::new(STANDBY)
            .args(["list", "--json", "--since", &wall, "--config"])
            .arg(&sb.config)
            .env("STANDBY_LOG", "warn")
            .env("TZ", tz)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        list.as_array().unwrap().len()
    };
    // POSIX TZ strings: UTC+14 and UTC, no time zone database needed.
    assert_eq!(since("XYZ-14"), 1, "at UTC+14, {wall} was an hour ago");
    assert_eq!(since("UTC0"), 0, "in UTC, {wall} is 13 hours ahead");
}

#[test]
fn hold_release_retry_purge() {
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    for i in 0..3 {
        sb.send("bob@example.test", &["--header", &format!("Subject: m{i}")]);
    }
    let ids: Vec<String> = sb
        .list("held")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let subjects: Vec<String> = sb
        .list("all")
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects, ["m0", "m1", "m2"], "oldest first");

    assert!(sb.cli(&["hold", &ids[0]]).status.success());
    assert_eq!(sb.list("paused").len(), 1);
    assert_eq!(sb.counts()["paused"], 1);
    // Only held messages can be paused: the paused one is reported, the rest proceed.
    let o = sb.cli(&["hold", &ids[0], &ids[1]]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&ids[0]) && stderr(&o).contains("paused"));
    assert_eq!(sb.list("paused").len(), 2);
    let o = sb.cli(&["hold", "--all"]);
    assert!(o.status.success());
    assert_eq!(sb.list("paused").len(), 3);
    // A paused message is not offered to the drain.
    let dry = sb.cli(&["drain", "--dry-run"]);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("0 message(s)"));

    assert!(sb.cli(&["release", &ids[2]]).status.success());
    assert_eq!(sb.list("held").len(), 1);
    assert!(sb.cli(&["release", "--all"]).status.success());
    assert_eq!(sb.list("held").len(), 3);
    let dry = sb.json(&["drain", "--dry-run", "--json"]);
    assert_eq!(dry.as_array().unwrap().len(), 3);

    assert!(sb.cli(&["retry", &ids[1]]).status.success());

    let text = String::from_utf8_lossy(&sb.cli(&["show", &ids[1]]).stdout).into_owned();
    assert!(
        text.contains("mail from   <a@example.org>") && text.contains("subject     m1"),
        "{text}"
    );

    sb.wait_published();
    let blob = sb.messages_dir().join(format!("{}.spool", ids[1]));
    assert!(blob.exists());
    let o = sb.cli(&["purge", &ids[1], "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!blob.exists(), "blob removed");
    assert_eq!(sb.list("all").len(), 2);
    let o = sb.cli(&["show", &ids[1]]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found"));
    let o = sb.cli(&["purge", &ids[1], "--yes"]);
    assert_eq!(o.status.code(), Some(1), "purging a missing id is an error");
}

#[test]
fn a_missing_spool_is_an_error_not_an_empty_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        format!(
            "domains = [\"example.test\"]\nhostname = \"standby.example.test\"\ndata_dir = \"{}\"\n[primary]\naddress = \"127.0.0.1:25\"\n",
            dir.path().join("elsewhere").display()
        ),
    )
    .unwrap();
    let o = run(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("elsewhere") && stderr(&o).contains("no spool"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("elsewhere").exists(), "nothing created");
}

#[test]
fn list_reads_a_large_spool_page_by_page() {
    // More messages than one page of the index (500): the listing must be whole, in
    // order, and `list | head` must end cleanly once the reader has had enough.
    require("smtp-source", "postfix");
    let sb = Standby::start(free_port(), "");
    let n = 1_203;
    let src = Command::new("smtp-source")
        .args(["-s", "5", "-m", &n.to_string(), "-l", "2048"])
        .args(["-f", "a@example.org", "-t", "bob@example.test"])
        .arg(format!("127.0.0.1:{}", sb.port))
        .output()
        .expect("run smtp-source");
    assert!(src.status.success(), "{}", stderr(&src));

    let all = sb.list("held");
    assert_eq!(all.len(), n, "every held message listed once");
    // Ids are ULIDs of the receipt time, so their order is the list order.
    let ids: Vec<&str> = all.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "oldest first, no repeats"
    );
    let text = sb.cli(&["list"]);
    let lines = String::from_utf8_lossy(&text.stdout).lines().count();
    assert_eq!(lines, n + 1, "a header and one line per message");

    // The reader stops after three lines: the command stops too, with success.
    let mut child = Command::new(STANDBY)
        .args(["list", "--config"])
        .arg(&sb.config)
        .env("STANDBY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run standby list");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..3 {
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(!line.is_empty());
    }
    drop(out);
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
}

/// What a sender wrote into a message (an OSC that retitles the terminal, a CSI that
/// clears it, 8-bit C1) is shown escaped by `list` and `show`, never sent to the
/// operator's terminal as it is; `--json` stays valid JSON with the text intact.
#[test]
fn list_and_show_escape_control_characters() {
    use std::io::Write;
    let fake = FakePrimary::start(vec![FakeReply::Busy421]);
    let sb = Standby::start(fake.port, "");
    let mut s = connect(sb.port);
    replies(&mut s, 1);
    s.write_all(
        "EHLO c\r\nMAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n\
         Subject: \x1b]0;pwned\x07 hi \x1b[2J \u{9b}31m\r\n\
         From: \"\x1b[31mThe Boss\" <boss@example.org>\r\n\r\nbody\r\n.\r\nQUIT\r\n"
            .as_bytes(),
    )
    .unwrap();
    let r = replies(&mut s, 6);
    assert!(r.contains("250 2.0.0"), "{r}");
    let id = sb.list("held")[0]["id"].as_str().unwrap().to_string();
    let raw_controls = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect::<Vec<char>>()
    };
    for args in [vec!["list"], vec!["show", id.as_str()]] {
        let o = sb.cli(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            raw_controls(&o.stdout),
            Vec::<char>::new(),
            "{args:?} printed raw controls:\n{out:?}"
        );
        assert!(
            out.contains("\\e]0;pwned\\u{7} hi \\e[2J \\u{9b}31m"),
            "{args:?}:\n{out}"
        );
        if args[0] == "show" {
            assert!(out.contains("\\e[31mThe Boss"), "{out}");
        }
    }
    // JSON keeps the text, escaped the JSON way.
    let subject = sb.list("held")[0]["subject"].as_str().unwrap().to_string();
    assert!(subject.starts_with("\x1b]0;pwned"), "{subject:?}");
}

/// `standby primary-config`: one target required (a usage error naming them); the
/// settings filled in with the addresses given, or the source address toward the
/// primary when none is; relay control before the exemption, never mynetworks.
#[test]
fn primary_config_prints_the_primarys_settings_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = minimal_config(dir.path());
    let cfg = cfg.to_str().unwrap();
    let o = run(&["primary-config", "--config", cfg]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--postfix"), "{}", stderr(&o));

    let o = run(&[
        "primary-config",
        "--postfix",
        "--address",
        "192.0.2.10",
        "--config",
        cfg,
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("\n192.0.2.10/32 permit\n"), "{out}");
    assert!(
        out.contains("skip_addresses = 127.0.0.0/8,::ffff:127.0.0.0/104,::1,192.0.2.10/32\n"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("mynetworks")), "{out}");

    // No --address: the route to the primary picks it (loopback here, where the primary is
    // on this machine).
    let o = run(&["primary-config", "--exchange", "--config", cfg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("-RemoteIPRanges 127.0.0.1"), "{out}");
    let o = run(&["primary-config", "--rspamd", "--config", cfg]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\nstandby.example.test direct\n"), "{out}");
}
