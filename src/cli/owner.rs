//! Root on another user's spool: act as the spool's owner.
//!
//! `standby serve` runs as its own user (`standby` in the systemd unit), but operators
//! often type `sudo standby purge ...`. Run as root, a command would leave root-owned
//! files in the data directory (`audit.jsonl`, a DSN, SQLite's `-wal`/`-shm`, a `tmp/`
//! file) that the daemon can then neither append to nor read. So a command run as root on
//! a local spool owned by another user becomes that user first: supplementary groups
//! (`initgroups`, or none when the uid has no passwd entry), then the group, then the
//! user, with glibc's `setgid`/`setuid`, which change every thread of the process. It is
//! called from `main` before the async runtime starts, while the process has one thread,
//! and before anything opens a file in the data directory.
//!
//! A uid without a passwd entry (a spool copied from another machine, a container's uid)
//! is switched to by number, with the directory's group and no supplementary groups:
//! giving up root for any uid only lowers privilege. When the switch fails (root without
//! `CAP_SETUID`/`CAP_SETGID`, say in a container), the command refuses and prints the
//! command to run instead. `standby serve` keeps `CAP_NET_BIND_SERVICE` across the switch,
//! as the systemd unit grants it, so port 25 still binds; every other capability is gone.
//!
//! A spool owned by root, a command run by the owner, and the AWS backend (no local
//! spool) change nothing.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use crate::config::{BackendKind, Config};

/// Switching to the spool's owner failed; `Display` says what to run instead.
#[derive(Debug, thiserror::Error)]
#[error(
    "{dir} belongs to {who}; run as root, standby acts as that user, but {step} failed \
     ({source}). Run instead:\n  {instead}",
    dir = dir.display()
)]
pub struct OwnerError {
    dir: std::path::PathBuf,
    who: String,
    step: &'static str,
    #[source]
    source: nix::Error,
    /// The same command, run as the owner.
    instead: String,
}

/// Who owns the spool, as the switch needs it.
struct Owner {
    uid: Uid,
    gid: Gid,
    /// The passwd name; `None` for a uid without an entry.
    name: Option<String>,
}

impl Owner {
    /// How to name the owner in `sudo -u` (`#1234` for a uid without a name).
    fn sudo_user(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("#{}", self.uid))
    }
}

/// If this process is root and `config`'s local spool belongs to another user, become
/// that user (see the module docs). `serve` keeps the right to bind ports below 1024.
///
/// # Errors
/// [`OwnerError`] when a step of the switch fails; nothing was opened in the spool then.
pub fn become_spool_owner(config: &Config, serve: bool) -> Result<(), OwnerError> {
    if config.backend != BackendKind::Local || !Uid::effective().is_root() {
        return Ok(());
    }
    let dir = config.data_dir();
    // A missing spool: `serve` creates it (as whoever runs it), the other commands say
    // it is missing. Nothing to switch for.
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    let owner = owner(dir, &meta);
    let fail = |step: &'static str| {
        let owner = &owner;
        move |source: nix::Error| OwnerError {
            dir: dir.to_path_buf(),
            who: match &owner.name {
                Some(n) => format!("user {n}"),
                None => format!("uid {} (no passwd entry)", owner.uid),
            },
            step,
            source,
            instead: instead(&owner.sudo_user()),
        }
    };
    switch(&owner, serve).map_err(|(step, e)| fail(step)(e))?;
    tracing::info!(
        user = %owner.sudo_user(),
        data_dir = %dir.display(),
        "running as the spool's owner"
    );
    Ok(())
}

fn owner(dir: &Path, meta: &std::fs::Metadata) -> Owner {
    let uid = Uid::from_raw(meta.uid());
    match User::from_uid(uid) {
        Ok(Some(user)) => Owner {
            uid,
            gid: user.gid,
            name: Some(user.name),
        },
        Ok(None) => Owner {
            uid,
            gid: Gid::from_raw(meta.gid()),
            name: None,
        },
        Err(e) => {
            tracing::warn!(
                uid = meta.uid(),
                error = %e,
                data_dir = %dir.display(),
                "cannot look up the spool's owner; switching by number, without supplementary groups"
            );
            Owner {
                uid,
                gid: Gid::from_raw(meta.gid()),
                name: None,
            }
        }
    }
}

/// Groups, group, user, in that order (a process that is no longer root cannot change its
/// groups). Returns the step that failed.
fn switch(owner: &Owner, serve: bool) -> Result<(), (&'static str, nix::Error)> {
    if serve {
        // Keep the permitted capabilities across setuid, to keep one of them below.
        rustix::thread::set_keep_capabilities(true)
            .map_err(|e| ("prctl(PR_SET_KEEPCAPS)", errno(e)))?;
    }
    match &owner.name {
        Some(name) => {
            let c = CString::new(name.as_str()).map_err(|_| ("initgroups", nix::Error::EINVAL))?;
            nix::unistd::initgroups(&c, owner.gid).map_err(|e| ("initgroups", e))?;
        }
        None => nix::unistd::setgroups(&[]).map_err(|e| ("setgroups", e))?,
    }
    nix::unistd::setgid(owner.gid).map_err(|e| ("setgid", e))?;
    nix::unistd::setuid(owner.uid).map_err(|e| ("setuid", e))?;
    if serve {
        use rustix::thread::{CapabilitySet, CapabilitySets};
        let keep = CapabilitySet::NET_BIND_SERVICE;
        let sets = CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        };
        rustix::thread::set_capabilities(None, sets).map_err(|e| ("capset", errno(e)))?;
        rustix::thread::set_keep_capabilities(false)
            .map_err(|e| ("prctl(PR_SET_KEEPCAPS)", errno(e)))?;
    }
    // There is no way back to root (CERT POS37-C): check it.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || Uid::effective() != owner.uid {
        return Err(("dropping root", nix::Error::EPERM));
    }
    Ok(())
}

fn errno(e: rustix::io::Errno) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error())
}

/// This very command line, run as `user` with sudo, quoted for a POSIX shell.
fn instead(user: &str) -> String {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    sudo_line(user, &args)
}

fn sudo_line(user: &str, args: &[String]) -> String {
    let quote = |s: &str| {
        shlex::try_quote(s)
            .map(|q| q.into_owned())
            .unwrap_or_else(|_| s.to_string())
    };
    let mut line = format!("sudo -u {}", quote(user));
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_to_run_instead_is_quoted_for_the_shell() {
        let args = [
            "standby",
            "list",
            "--subject",
            "it's urgent",
            "--config",
            "/etc/s.toml",
        ]
        .map(String::from);
        assert_eq!(
            sudo_line("standby", &args),
            "sudo -u standby standby list --subject \"it's urgent\" --config /etc/s.toml"
        );
        assert_eq!(
            sudo_line("#1234", &args[..2]),
            "sudo -u '#1234' standby list"
        );
    }
}
