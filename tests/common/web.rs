//! The emergency inbox from a test: a `standby serve` with `[web] listen` and users, an
//! HTTP client (curl, with a cookie jar and a chosen source address), and mail sent to
//! it with swaks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Standby, free_port, require};

/// A `standby serve` whose inbox listens on `web_port`, with the users' file in its dir.
pub struct Inbox {
    pub standby: Standby,
    pub web_port: u16,
}

impl Inbox {
    /// Start it with `users` (address, password) added by `standby user add`, and
    /// `users_keys`: more `[users]` lines (`{dir}` is the test's directory).
    pub fn start(users: &[(&str, &str)], users_keys: &str) -> Inbox {
        Self::start_with(users, users_keys, |_| {})
    }

    /// Like [`Inbox::start`]; `prepare` runs on the test's directory before the start
    /// (to write an aliases file, a passwd-file of its own).
    pub fn start_with(
        users: &[(&str, &str)],
        users_keys: &str,
        prepare: impl FnOnce(&Path),
    ) -> Inbox {
        let web_port = free_port();
        let extra = format!(
            "[users]\nfile = \"{{dir}}/users.passwd\"\ndefault_domain = \"example.test\"\n\
             {users_keys}\n[web]\nlisten = \"127.0.0.1:{web_port}\"\n"
        );
        let mut standby = Standby::configure(1, &extra, &[]);
        let dir = standby.dir.path().to_path_buf();
        let text = std::fs::read_to_string(&standby.config).unwrap();
        std::fs::write(
            &standby.config,
            text.replace("{dir}", &dir.display().to_string()),
        )
        .unwrap();
        for (address, password) in users {
            add_user(&standby, address, password);
        }
        prepare(&dir);
        standby.spawn();
        super::wait_for(
            "the inbox to listen",
            std::time::Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", web_port)).is_ok(),
        );
        Inbox { standby, web_port }
    }

    pub fn dir(&self) -> &Path {
        self.standby.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.web_port)
    }

    /// A browser-like client with its own cookie jar, connecting from `ip` (any
    /// 127.0.0.0/8 address: each is its own client for the login limits).
    pub fn client(&self, ip: &str) -> Client {
        Client::new(&self.url(""), ip)
    }

    /// Send a raw message (headers and body, `\n` line ends) to `to`; returns nothing
    /// but panics when it is not accepted.
    pub fn send_raw(&self, to: &str, message: &str) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let data = message.replace("\r\n", "\n").replace('\n', "\r\n");
        std::fs::write(file.path(), data).unwrap();
        let (ok, t) = super::swaks(
            self.standby.port,
            &[
                "--from",
                "sender@example.org",
                "--to",
                to,
                "--data",
                file.path().to_str().unwrap(),
            ],
        );
        assert!(ok, "sending to {to} failed:\n{t}");
    }

    /// The ids of held messages, newest last, with their subjects.
    pub fn ids_by_subject(&self) -> Vec<(String, String)> {
        self.standby
            .list("all")
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["subject"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    pub fn id_of(&self, subject: &str) -> String {
        self.ids_by_subject()
            .into_iter()
            .find(|(_, s)| s == subject)
            .unwrap_or_else(|| panic!("no message with subject {subject}"))
            .0
    }
}

/// `standby user add ADDRESS --password-stdin`, which must succeed.
pub fn add_user(standby: &Standby, address: &str, password: &str) {
    add_user_with(&standby.config, &[], address, password);
}

/// `standby --config CONFIG user add ADDRESS --password-stdin` with `env` (the AWS
/// principal's), which must succeed.
pub fn add_user_with(config: &Path, env: &[(String, String)], address: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(super::STANDBY)
        .args(["user", "add", address, "--password-stdin", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add {address}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP client: curl with a cookie jar, from one source address.
pub struct Client {
    base: String,
    jar: PathBuf,
    ip: String,
    /// The CA an HTTPS server's certificate must chain to.
    ca: Option<PathBuf>,
}

/// One response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the hidden `csrf` field of the page's (first) form.
    pub fn csrf(&self) -> String {
        let t = self.text();
        let at = t
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no csrf field in {t}"));
        let rest = &t[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Client {
    /// A client of the app at `base` (`http://host:port` and any path prefix).
    pub fn new(base: &str, ip: &str) -> Client {
        Client {
            base: base.to_string(),
            jar: tempfile::NamedTempFile::new()
                .unwrap()
                .into_temp_path()
                .to_path_buf(),
            ip: ip.to_string(),
            ca: None,
        }
    }

    /// Trust `ca` (and only it) for HTTPS.
    pub fn with_ca(mut self, ca: &Path) -> Client {
        self.ca = Some(ca.to_path_buf());
        self
    }

    fn run(&self, path: &str, args: &[&str]) -> Resp {
        require("curl", "curl");
        let dir = tempfile::tempdir().unwrap();
        let (body, headers) = (dir.path().join("body"), dir.path().join("headers"));
        let out = Command::new("curl")
            .args([
                "-s",
                "-S",
                "--max-time",
                "30",
                "--interface",
                &self.ip,
                "-b",
            ])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .arg("-o")
            .arg(&body)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code}"])
            .args(
                self.ca
                    .iter()
                    .flat_map(|ca| [std::ffi::OsStr::new("--cacert"), ca.as_os_str()]),
            )
            .args(args)
            .arg(format!("{}{path}", self.base))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let headers = std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.run(path, &[])
    }

    /// POST a form (`application/x-www-form-urlencoded`).
    pub fn post(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<&str> = Vec::new();
        for f in &encoded {
            args.push("--data-urlencode");
            args.push(f);
        }
        if fields.is_empty() {
            args.extend(["-X", "POST"]);
        }
        self.run(path, &args)
    }

    /// Open the login page and log in; returns the answer to the POST.
    pub fn login(&self, user: &str, password: &str) -> Resp {
        let form = self.get("/login");
        assert_eq!(form.status, 200, "{}", form.text());
        self.post(
            "/login",
            &[
                ("username", user),
                ("password", password),
                ("csrf", &form.csrf()),
            ],
        )
    }
}
