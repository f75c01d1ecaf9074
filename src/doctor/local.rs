//! The local spool: present, private, and on a file system with room to take an outage's
//! worth of mail.

use std::os::unix::fs::PermissionsExt;

use super::Check;
use crate::config::Config;
use crate::ports::Storage;

/// Warn below this much free space: a day of a small domain's mail at 40 MB a message
/// would not fit, and `standby serve` answers 452 when the disk fills.
const LOW_SPACE: u64 = 1024 * 1024 * 1024;

/// `storage` is the spool as the operator commands open it: a missing or incomplete
/// spool is already an error there.
pub fn spool(config: &Config, storage: Result<&Storage, &str>) -> Check {
    let dir = config.data_dir();
    let name = "spool";
    let opened = storage
        .map_err(str::to_string)
        .and_then(|_| std::fs::metadata(dir).map_err(|e| e.to_string()));
    let meta = match opened {
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
