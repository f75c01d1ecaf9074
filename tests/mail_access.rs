//! The emergency mailbox in the users' own mail clients, with real clients: Python's
//! imaplib (search, partial fetches, IDLE, STORE/EXPUNGE, refusals), isync's mbsync
//! (a whole sync into a Maildir, flags back), fetchmail over POP3 with STLS (keep mode,
//! UIDL), neomutt in tmux (the index shows the subjects), against `standby serve` on the
//! local spool with a down primary.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::web::add_user;
use common::{Standby, TestPki, free_port, make_pki, repo, require, swaks, wait_for};

struct Setup {
    standby: Standby,
    imap: u16,
    imaps: u16,
    pop3: u16,
    pki: TestPki,
    _pki_dir: tempfile::TempDir,
}

/// A standby (its primary down) with IMAP and POP3 on STARTTLS and implicit-TLS ports,
/// users alice and bob, and mail for both: a message with dotted lines, a multipart one,
/// one from carol with a word to search for.
fn setup() -> Setup {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    let (imap, imaps, pop3, pop3s) = (free_port(), free_port(), free_port(), free_port());
    // Three connections per client address (IMAP and POP3 together; the SMTP listener
    // has its own count).
    let extra = format!(
        "max_connections_per_ip = 3\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         [users]\nfile = \"{{dir}}/users.passwd\"\n\
         [imap]\nlisten = \"127.0.0.1:{imap}\"\nlisten_tls = \"127.0.0.1:{imaps}\"\n\
         [pop3]\nlisten = \"127.0.0.1:{pop3}\"\nlisten_tls = \"127.0.0.1:{pop3s}\"\n",
        cert = pki.cert.display(),
        key = pki.key.display(),
    );
    // Nothing listens on the primary's port: it is down, and everything stays held.
    // The peak-memory test measures what a fetch holds, not how glibc's malloc keeps what
    // was freed: two arenas (not one per busy thread), and a fixed mmap threshold, so a
    // large buffer goes back to the system when freed (by default the threshold rises to
    // the largest block freed, up to 32 MiB, and such blocks then stay in the heap).
    let mut standby = Standby::configure(
        free_port(),
        &extra,
        &[
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ],
    );
    standby.fill_dir();
    add_user(&standby, "alice@example.test", "alice-pw");
    add_user(&standby, "bob@example.test", "bob-pw");
    standby.spawn();
    for port in [standby.port, imap, imaps, pop3, pop3s] {
        wait_for("the standby to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    let send = |to: &str, from: &str, header: &str, body: &str| {
        let (ok, out) = swaks(
            standby.port,
            &[
                "--to", to, "--from", from, "--header", header, "--body", body,
            ],
        );
        assert!(ok, "{out}");
    };
    send(
        "alice@example.test",
        "carol@example.org",
        "Subject: from carol",
        "the needle-in-the-body is here\n.leading dot\n..two dots\n",
    );
    send(
        "alice@example.test",
        "dan@example.org",
        "Subject: dotted",
        ".\n.only dots\n",
    );
    let (ok, out) = swaks(
        standby.port,
        &[
            "--to",
            "alice@example.test",
            "--from",
            "erin@example.org",
            "--attach",
            "@/etc/hostname",
            "--body",
            "see the attachment",
        ],
    );
    assert!(ok, "{out}");
    send(
        "bob@example.test",
        "carol@example.org",
        "Subject: for bob",
        "bob only",
    );
    Setup {
        standby,
        imap,
        imaps,
        pop3,
        pki,
        _pki_dir: pki_dir,
    }
}

/// The stored copies of `user`'s messages (`standby export --format eml`), by content.
fn stored(s: &Setup, user: &str) -> Vec<Vec<u8>> {
    let out = s.standby.dir.path().join(format!("export-{user}"));
    let o = s
        .standby
        .cli(&["export", "--format", "eml", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut all: Vec<Vec<u8>> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .filter(|b| {
            let head = String::from_utf8_lossy(b).to_lowercase();
            head.contains(&format!("for <{user}>"))
        })
        .collect();
    all.sort();
    all
}

/// What a client printed, stdout then stderr.
fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Python's imaplib logged in as `user` over IMAPS on `port` (`m` the connection); what
/// `body` prints.
fn imaps_python(port: u16, ca: &Path, user: &str, password: &str, body: &str) -> String {
    let script = format!(
        "import imaplib,ssl,sys\n\
         c=ssl.create_default_context(cafile=sys.argv[2]); c.check_hostname=False\n\
         m=imaplib.IMAP4_SSL('127.0.0.1',int(sys.argv[1]),ssl_context=c)\n\
         m.login('{user}','{password}')\n{body}"
    );
    let out = Command::new("python3")
        .args(["-c", &script, &port.to_string(), ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text_of(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where mbsync's one `X-TUID: ...\n` line is, if any.
fn memchr_tuid(text: &[u8]) -> Option<(usize, usize)> {
    let start = text.windows(8).position(|w| w == b"\nX-TUID:")? + 1;
    let end = text[start..].iter().position(|&c| c == b'\n')? + start + 1;
    Some((start, end))
}

/// `messages` with CRLF line ends turned into LF, sorted.
fn lf(messages: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = messages
        .into_iter()
        .map(|b| {
            let mut out = Vec::with_capacity(b.len());
            for (i, &c) in b.iter().enumerate() {
                if !(c == b'\r' && b.get(i + 1) == Some(&b'\n')) {
                    out.push(c);
                }
            }
            out
        })
        .collect();
    v.sort();
    v
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["cur", "new"]
        .iter()
        .filter_map(|d| std::fs::read_dir(dir.join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn imaplib_searches_fetches_idles_and_hides() {
    require("python3", "python3");
    let s = setup();
    let out = Command::new("python3")
        .arg(repo().join("tests/support/imap_check.py"))
        .args([
            &s.imap.to_string(),
            &s.imaps.to_string(),
            s.pki.ca.to_str().unwrap(),
            "alice@example.test",
            "alice-pw",
            &s.standby.port.to_string(),
        ])
        .output()
        .unwrap();
    let text = text_of(&out);
    println!("{text}");
    assert!(out.status.success(), "imaplib checks failed:\n{text}");
    // Hidden from alice only: the held message itself is still there.
    assert!(
        s.standby
            .list("held")
            .iter()
            .any(|m| m["mail_from"] == "carol@example.org"),
        "EXPUNGE deleted held mail"
    );
    // Bob still sees his own message, and none of alice's.
    let bob = imaps_python(
        s.imaps,
        &s.pki.ca,
        "bob@example.test",
        "bob-pw",
        "print(m.select('INBOX')[1][0].decode())",
    );
    assert_eq!(bob.trim(), "1");
}

/// Connections past `max_connections_per_ip` (IMAP and POP3 together) are closed at
/// once, before a greeting.
#[test]
fn connections_past_the_per_address_limit_are_closed() {
    use std::io::{BufRead, BufReader};
    let s = setup();
    let greeted = |port: u16| {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        let _ = BufReader::new(c.try_clone().unwrap()).read_line(&mut line);
        (c, line)
    };
    let mut open = Vec::new();
    for port in [s.imap, s.pop3, s.imap] {
        let (c, line) = greeted(port);
        assert!(
            line.starts_with("* OK") || line.starts_with("+OK"),
            "{line:?}"
        );
        open.push(c);
    }
    let (_c, line) = greeted(s.pop3);
    assert_eq!(line, "", "a fourth connection from one address is closed");
    drop(open);
    wait_for("a slot again", Duration::from_secs(10), || {
        greeted(s.imap).1.starts_with("* OK")
    });
}

#[test]
fn mbsync_syncs_the_inbox_byte_for_byte_and_flags_back() {
    require("mbsync", "isync");
    let s = setup();
    let local = s.standby.dir.path().join("Mail");
    std::fs::create_dir_all(&local).unwrap();
    let rc = s.standby.dir.path().join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount standby\nHost localhost\nPort {port}\nUser alice@example.test\n\
             Pass alice-pw\nSSLType IMAPS\nCertificateFile {ca}\n\n\
             IMAPStore remote\nAccount standby\n\n\
             MaildirStore local\nPath {local}/\nInbox {local}/INBOX\n\n\
             Channel inbox\nFar :remote:\nNear :local:\nPatterns INBOX\n\
             Create Near\nSync All\nExpunge None\nSyncState *\n",
            port = s.imaps,
            ca = s.pki.ca.display(),
            local = local.display(),
        ),
    )
    .unwrap();
    let mbsync = || {
        let out = Command::new("mbsync")
            .args(["-c", rc.to_str().unwrap(), "-a"])
            .output()
            .unwrap();
        let text = text_of(&out);
        assert!(out.status.success(), "mbsync: {text}");
        text
    };
    println!("{}", mbsync());
    let inbox = local.join("INBOX");
    let files = files_in(&inbox);
    // mbsync adds its tracking header `X-TUID:` to what it writes (isync's own, to find
    // a message again after an interrupted sync): taken out, nothing else.
    let mut got: Vec<Vec<u8>> = files
        .iter()
        .map(|p| {
            let text = std::fs::read(p).unwrap();
            let at = memchr_tuid(&text);
            match at {
                Some((a, b)) => [&text[..a], &text[b..]].concat(),
                None => text,
            }
        })
        .collect();
    got.sort();
    // mbsync writes Maildir files with LF line ends (the local convention): the stored
    // copies compared with the same line ends, every other byte the same.
    let want = lf(stored(&s, "alice@example.test"));
    assert_eq!(want.len(), 3, "alice's three messages stored");
    assert_eq!(got.len(), want.len(), "mbsync fetched {files:?}");
    assert!(
        got == want,
        "the synced messages differ from the stored copies:\n{}\n----\n{}",
        String::from_utf8_lossy(&got[0]),
        String::from_utf8_lossy(&want[0])
    );
    // Flags set locally (seen and flagged, Maildir "SF") go back to the standby.
    let first = &files[0];
    let name = first.file_name().unwrap().to_str().unwrap();
    let base = name.split(":2,").next().unwrap();
    std::fs::rename(first, inbox.join("cur").join(format!("{base}:2,FS"))).unwrap();
    println!("{}", mbsync());
    // ... and survive a restart.
    let mut standby = s.standby;
    standby.terminate();
    standby.spawn();
    wait_for("imaps again", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", s.imaps)).is_ok()
    });
    let flagged = imaps_python(
        s.imaps,
        &s.pki.ca,
        "alice@example.test",
        "alice-pw",
        "m.select('INBOX', readonly=True)\n\
         print(m.search(None,'FLAGGED','SEEN')[1][0].decode())",
    );
    assert_eq!(
        flagged.split_whitespace().count(),
        1,
        "one message seen and flagged after the restart: {flagged}"
    );
}

#[test]
fn fetchmail_over_stls_keeps_and_fetches_nothing_twice() {
    require("fetchmail", "fetchmail");
    let s = setup();
    let dir = s.standby.dir.path();
    let got = dir.join("fetched");
    std::fs::create_dir_all(&got).unwrap();
    let mda = dir.join("mda.py");
    std::fs::write(
        &mda,
        format!(
            "import sys, time, os\n\
             data = sys.stdin.buffer.read()\n\
             open(os.path.join('{}', str(time.time_ns())), 'wb').write(data)\n",
            got.display()
        ),
    )
    .unwrap();
    let rc = dir.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\nset invisible\n\
             poll localhost port {port} protocol pop3 uidl\n\
             user 'alice@example.test' password 'alice-pw' is root here\n\
             sslproto 'TLS1.2+' sslcertck sslcertfile '{ca}'\n\
             keep no rewrite mda 'python3 {mda}'\n",
            port = s.pop3,
            ca = s.pki.ca.display(),
            mda = mda.display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fetch = || {
        let out = Command::new("fetchmail")
            .args(["-f", rc.to_str().unwrap(), "--idfile"])
            .arg(dir.join("fetchids"))
            .args(["-v", "--nodetach"])
            .env("HOME", dir)
            .output()
            .unwrap();
        let text = text_of(&out);
        // 0: mail fetched; 1: no mail.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "fetchmail: {text}"
        );
        text
    };
    let first = fetch();
    println!("{first}");
    assert!(
        first.contains("STLS"),
        "fetchmail did not use STLS:\n{first}"
    );
    let mut got_msgs: Vec<Vec<u8>> = std::fs::read_dir(&got)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    got_msgs.sort();
    // fetchmail hands its MDA lines ending in LF (the local convention): the stored
    // copies, compared with the same line ends.
    let want = lf(stored(&s, "alice@example.test"));
    assert_eq!(got_msgs.len(), 3, "fetched {}", got_msgs.len());
    assert!(
        got_msgs == want,
        "fetched messages differ from the stored copies"
    );
    // Keep mode: the second run fetches nothing (UIDL is stable).
    let second = fetch();
    println!("{second}");
    assert_eq!(std::fs::read_dir(&got).unwrap().count(), 3, "{second}");
}

/// neomutt, in a tmux pane, opens alice's INBOX over IMAPS (the test CA trusted) and lists
/// her messages' subjects; the pane is printed.
#[test]
fn neomutt_in_tmux_shows_the_subjects() {
    require("neomutt", "neomutt");
    require("tmux", "tmux");
    let s = setup();
    let dir = s.standby.dir.path();
    let rc = dir.join("muttrc");
    std::fs::write(
        &rc,
        format!(
            "set folder = \"imaps://localhost:{port}/\"\n\
             set spoolfile = \"+INBOX\"\n\
             set imap_user = \"alice@example.test\"\n\
             set imap_pass = \"alice-pw\"\n\
             set ssl_ca_certificates_file = \"{ca}\"\n\
             set certificate_file = \"{dir}/certs\"\n\
             set header_cache = \"\"\n\
             set message_cachedir = \"\"\n\
             set mail_check_stats = no\n\
             set imap_check_subscribed = no\n\
             set sort = date\n",
            port = s.imaps,
            ca = s.pki.ca.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let session = format!("standby-neomutt-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .env("HOME", dir)
            .output()
            .unwrap()
    };
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "40",
        &format!("TERM=xterm neomutt -n -F {}", rc.display()),
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let mut pane = String::new();
    let found = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        pane = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
            .into_owned();
        ["from carol", "dotted"].iter().all(|s| pane.contains(s))
    });
    let _ = tmux(&["kill-server"]);
    println!("neomutt's pane:\n{pane}");
    assert!(found, "neomutt did not list the subjects:\n{pane}");
    assert!(!pane.contains("for bob"), "bob's message listed for alice");
}

/// A 39 MB message fetched whole over IMAP (`BODY.PEEK[]`) and POP3 (`RETR`): streamed from
/// the store, so the server's peak memory grows by far less than the message.
#[test]
fn a_large_message_is_streamed_not_held_in_memory() {
    require("smtp-source", "postfix");
    let s = setup();
    let size: usize = 39_000_000;
    // An 8 MB message first, for a warm-up that reads a large file the same way, then the
    // 39 MB one.
    for bytes in [8_000_000, size] {
        let out = Command::new("smtp-source")
            .args([
                "-m",
                "1",
                "-l",
                &bytes.to_string(),
                "-t",
                "alice@example.test",
            ])
            .arg(format!("127.0.0.1:{}", s.standby.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text_of(&out));
    }
    wait_for("the large messages held", Duration::from_secs(60), || {
        s.standby.list("held").len() == 6
    });
    // What the process holds before any message is fetched; then fetches of 8 MB and
    // 39 MB, over IMAP and POP3. Measured (debug build, the malloc settings above): the
    // first fetch raises the peak by about 20 MiB whatever the size (buffers, TLS, thread
    // stacks), the next ones by nothing. Held whole even once, a 39 MB fetch alone adds
    // its 37 MiB to that, above the bound below (shown by reading POP3's RETR whole).
    let before = s.standby.peak_rss();
    imaps_python(
        s.imaps,
        &s.pki.ca,
        "alice@example.test",
        "alice-pw",
        "m.select('INBOX')\n\
         n = m.search(None, 'LARGER', '7000000', 'SMALLER', '9000000')[1][0].split()[0]\n\
         m.fetch(n, '(BODY.PEEK[])')",
    );
    let pop3 = |script: &str| {
        let out = Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import poplib,ssl,sys\n\
                     c=ssl.create_default_context(cafile=sys.argv[2]); c.check_hostname=False\n\
                     p=poplib.POP3('127.0.0.1',int(sys.argv[1])); p.stls(context=c)\n\
                     p.user('alice@example.test'); p.pass_('alice-pw')\n{script}\np.quit()"
                ),
                &s.pop3.to_string(),
                s.pki.ca.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text_of(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    pop3(
        "sizes=[int(x.split()[1]) for x in p.list()[1]]\n\
         p.retr([i for i, z in enumerate(sizes) if 7000000 < z < 9000000][0] + 1)",
    );
    let fetched = imaps_python(
        s.imaps,
        &s.pki.ca,
        "alice@example.test",
        "alice-pw",
        "m.select('INBOX')\n\
         n = m.search(None, 'LARGER', '30000000')[1][0].split()[0]\n\
         t, d = m.fetch(n, '(BODY.PEEK[])')\n\
         print(len(d[0][1]))",
    );
    let mid = s.standby.peak_rss();
    let pop = pop3(
        "sizes=[int(x.split()[1]) for x in p.list()[1]]\n\
         n=sizes.index(max(sizes))+1\n\
         lines=p.retr(n)[1]\n\
         print(sizes[n-1], sum(len(l)+2 for l in lines))",
    );
    let after = s.standby.peak_rss();
    println!(
        "IMAP fetched {} bytes, POP3 (listed, retrieved) {}; peak RSS {} MiB before, {} MiB \
         after IMAP, {} MiB after POP3",
        fetched.trim(),
        pop.trim(),
        before >> 20,
        mid >> 20,
        after >> 20
    );
    let got: usize = fetched.trim().parse().unwrap();
    assert!(got > size, "the whole message over IMAP: {got}");
    let (listed, retrieved) = pop.trim().split_once(' ').unwrap();
    assert_eq!(listed, retrieved, "RETR gives what LIST says");
    assert!(
        after.saturating_sub(before) < size as u64,
        "peak RSS rose {} MiB fetching 8 and {} MB messages: one was held in memory",
        (after - before) >> 20,
        size / 1_000_000
    );
}
