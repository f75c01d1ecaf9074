//! Lambda binaries under `cargo lambda watch`: its emulation of the Lambda runtime and
//! invoke APIs (and of function URLs, `/lambda-url/<name>/...`), the binaries started
//! against it with nothing but their environment.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::aws::require_venv_tool;
use super::{repo, wait_for};

/// Processes killed on drop.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// PATH with the venv's cargo-lambda first.
pub fn path_with_venv() -> String {
    let bin = require_venv_tool("cargo-lambda");
    format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `cargo lambda watch` on 127.0.0.1:`port` (runtime and invoke APIs only, no build),
/// its log in `log`; returns once it listens.
pub fn watch(port: u16, log: &Path) -> Child {
    let child = Command::new("cargo")
        .current_dir(repo())
        .env("PATH", path_with_venv())
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--timeout",
            "300",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start cargo lambda watch");
    wait_for("the Lambda emulator", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}

/// Start a Lambda binary against the emulator's runtime API under `name`, with only
/// `env` (and PATH) in its environment, its stdout (the JSON log) in `log`.
pub fn function(bin: &str, name: &str, port: u16, env: &[(String, String)], log: &Path) -> Child {
    Command::new(bin)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt/{name}"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the Lambda binary")
}
