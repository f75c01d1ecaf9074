//! The local spool: present, private, and on a file system with room to take an outage's
//! worth of mail.

use std::os::unix::fs::PermissionsExt;

use super::Check;
use crate::config::Config;

/// Warn below this much free space: a day of a small domain's mail at 40 MB a message
/// would not fit, and `standby serve` answers 452 when the disk fills.
const LOW_SPACE: u64 = 1024 * 1024 * 1024;

pub fn spool(config: &Config) -> Check {
    let dir = config.data_dir();
    let name = "spool";
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                name,
                format!("{}: {e}", dir.display()),
                "start `standby serve` once (it creates the spool) or fix data_dir",
            );
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Check::fail(
            name,
            format!(
                "{} is mode {mode:03o}: other users can read held mail",
                dir.display()
            ),
            format!("chmod 700 {}", dir.display()),
        );
    }
    if !dir.join("index.db").exists() {
        return Check::fail(
            name,
            format!("{} has no index.db", dir.display()),
            "start `standby serve` once, or point data_dir at the spool",
        );
    }
    match free_bytes(dir) {
        Some(free) if free < LOW_SPACE => Check::warn(
            name,
            format!(
                "{} (mode {mode:03o}), only {} MiB free",
                dir.display(),
                free >> 20
            ),
            "give the spool a file system with room for several days of mail",
        ),
        Some(free) => Check::pass(
            name,
            format!(
                "{} (mode {mode:03o}), {} MiB free",
                dir.display(),
                free >> 20
            ),
        ),
        None => Check::pass(name, format!("{} (mode {mode:03o})", dir.display())),
    }
}

/// Free space on the file system of `dir` (`df` semantics: for unprivileged users).
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk", "--"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let avail: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(avail * 1024)
}
