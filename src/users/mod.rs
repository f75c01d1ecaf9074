//! The emergency inbox's users, independent of the primary.
//!
//! Commercial continuity services that log users in through the customer's LDAP or
//! Exchange find, on the bad day, that nobody can log in: the directory went down with the
//! mail server. Here the users are a Dovecot passwd-file the administrator copies over
//! (or fills with `standby user add`) and keeps next to the standby: `[users] file` on
//! the local spool, the S3 object `users/passwd` on AWS ([`UserFiles`]). Nothing about a
//! login asks the primary.
//!
//! A user reads mail sent to their address, to `address+anything`, and to the aliases
//! `[users] aliases` gives them ([`Account::reads`]).

pub mod aliases;
pub mod hash;
pub mod passwd;

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::ports::UserFiles;

pub use hash::Hash;
pub use passwd::address_of;

/// The users could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{name}:{message}")]
    Aliases { name: String, message: String },
}

/// Everyone who can log in, and what each may read.
#[derive(Debug, Default)]
pub struct Directory {
    users: HashMap<String, Hash>,
    aliases: HashMap<String, Vec<String>>,
    default_domain: Option<String>,
    /// `file:line: why` for each line skipped.
    warnings: Vec<String>,
}

/// A user who logged in (or whose session is checked): their address and the
/// addresses whose mail they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Lower case.
    pub address: String,
    /// Lower case, without `address`.
    pub aliases: Vec<String>,
    /// Changes when the password does (a digest of the stored hash), so a session made
    /// before a password change or a removal ends with it.
    pub stamp: [u8; 32],
}

impl Account {
    /// Every address this user reads: their own, then the aliases.
    pub fn addresses(&self) -> Vec<String> {
        std::iter::once(self.address.clone())
            .chain(self.aliases.iter().cloned())
            .collect()
    }

    /// Whether mail to `rcpt` is this user's: one of [`Account::addresses`], or one of
    /// them with a `+tag` after the local part.
    pub fn reads(&self, rcpt: &str) -> bool {
        let rcpt = rcpt.to_lowercase();
        let untagged = untag(&rcpt);
        self.addresses()
            .iter()
            .any(|a| *a == rcpt || untagged.as_deref() == Some(a.as_str()))
    }
}

/// `user@domain` for `user+tag@domain`; `None` when there is no tag.
pub fn untag(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    let (base, _) = local.split_once('+')?;
    (!base.is_empty()).then(|| format!("{base}@{domain}"))
}

impl Directory {
    /// Read the passwd-file and the aliases from `files`. A missing passwd-file is an
    /// empty directory (nobody can log in yet; `standby user add` makes it).
    ///
    /// # Errors
    /// The files cannot be read, or the aliases file's header is wrong.
    pub async fn load(
        files: &dyn UserFiles,
        default_domain: Option<&str>,
    ) -> Result<Directory, UsersError> {
        let passwd = files.read_passwd().await?;
        let aliases = files.read_aliases().await?;
        let aliases_name = files.aliases_name().unwrap_or_default();
        Directory::parse(
            &files.passwd_name(),
            passwd.as_ref().map_or(&[][..], |v| &v.bytes),
            aliases.as_deref().map(|a| (aliases_name.as_str(), a)),
            default_domain,
        )
    }

    /// The directory of a passwd-file's bytes (read from `name`) and an aliases file's.
    ///
    /// # Errors
    /// [`UsersError::Aliases`] when the aliases file's header is wrong.
    pub fn parse(
        name: &str,
        passwd: &[u8],
        aliases: Option<(&str, &[u8])>,
        default_domain: Option<&str>,
    ) -> Result<Directory, UsersError> {
        let default_domain = default_domain
            .map(|d| d.trim_end_matches('.').to_lowercase())
            .filter(|d| !d.is_empty());
        let text = String::from_utf8_lossy(passwd);
        let (entries, skipped) = passwd::parse(&text, default_domain.as_deref());
        let mut warnings: Vec<String> = skipped
            .iter()
            .map(|s| format!("{name}:{}: {}", s.line, s.message))
            .collect();
        let mut alias_map = HashMap::new();
        if let Some((aname, bytes)) = aliases {
            let (map, skipped) =
                aliases::parse(bytes, default_domain.as_deref()).map_err(|message| {
                    UsersError::Aliases {
                        name: aname.to_string(),
                        message,
                    }
                })?;
            alias_map = map;
            warnings.extend(
                skipped
                    .iter()
                    .map(|s| format!("{aname}:{}: {}", s.line, s.message)),
            );
        }
        Ok(Directory {
            users: entries.into_iter().map(|e| (e.address, e.hash)).collect(),
            aliases: alias_map,
            default_domain,
            warnings,
        })
    }

    /// Lines skipped, as `file:line: why`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The address a typed login name stands for (lower case, the default domain added).
    pub fn address_of(&self, typed: &str) -> Option<String> {
        address_of(typed, self.default_domain.as_deref())
    }

    /// The account of `address` (lower case), if that user exists.
    pub fn account(&self, address: &str) -> Option<Account> {
        let hash = self.users.get(address)?;
        Some(Account {
            address: address.to_string(),
            aliases: self
                .aliases
                .get(address)
                .map(|a| a.iter().filter(|x| *x != address).cloned().collect())
                .unwrap_or_default(),
            stamp: Sha256::digest(hash.field().as_bytes()).into(),
        })
    }

    /// The account of `typed` when `password` is theirs. An unknown name takes as long
    /// as a wrong password (an Argon2id check of a dummy hash) and fails the same way.
    /// Slow on purpose: call it off the async runtime.
    pub fn verify(&self, typed: &str, password: &str) -> Option<Account> {
        let address = self.address_of(typed);
        match address.as_deref().and_then(|a| self.users.get(a)) {
            Some(hash) if hash.verify(password) => self.account(address.as_deref()?),
            Some(_) => None,
            None => {
                Hash::verify_nobody(password);
                None
            }
        }
    }

    /// Every user and their aliases, by address.
    pub fn list(&self) -> Vec<Account> {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        names.into_iter().filter_map(|a| self.account(a)).collect()
    }
}

/// The directory a running web app logs users in with: loaded at start, replaced by
/// [`Users::reload`] (SIGHUP in `serve`), and read again once it is `max_age` old where
/// several processes share the files and nobody sends a signal (the web function).
/// A reload that fails keeps the directory in use.
pub struct Users {
    files: std::sync::Arc<dyn UserFiles>,
    default_domain: Option<String>,
    current: arc_swap::ArcSwap<Directory>,
    loaded: std::sync::Mutex<std::time::Instant>,
    max_age: Option<std::time::Duration>,
}

impl Users {
    /// Load the directory now, logging each skipped line.
    ///
    /// # Errors
    /// The files cannot be read, or the aliases file's header is wrong.
    pub async fn load(
        files: std::sync::Arc<dyn UserFiles>,
        default_domain: Option<String>,
        max_age: Option<std::time::Duration>,
    ) -> Result<Users, UsersError> {
        let dir = Directory::load(files.as_ref(), default_domain.as_deref()).await?;
        log_loaded(&dir, files.as_ref());
        Ok(Users {
            files,
            default_domain,
            current: arc_swap::ArcSwap::from_pointee(dir),
            loaded: std::sync::Mutex::new(std::time::Instant::now()),
            max_age,
        })
    }

    /// Read the files again and use what they say from now on.
    ///
    /// # Errors
    /// As [`Users::load`]; the directory in use is kept.
    pub async fn reload(&self) -> Result<usize, UsersError> {
        let dir = Directory::load(self.files.as_ref(), self.default_domain.as_deref()).await?;
        log_loaded(&dir, self.files.as_ref());
        let n = dir.len();
        self.current.store(std::sync::Arc::new(dir));
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        Ok(n)
    }

    /// The directory in use (read again first when it is `max_age` old).
    pub async fn directory(&self) -> std::sync::Arc<Directory> {
        let stale = self.max_age.is_some_and(|age| {
            self.loaded
                .lock()
                .map(|t| t.elapsed() >= age)
                .unwrap_or(true)
        });
        if stale && let Err(e) = self.reload().await {
            tracing::error!(error = %e, "cannot read the users again; keeping the ones loaded");
            *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        }
        self.current.load_full()
    }
}

fn log_loaded(dir: &Directory, files: &dyn UserFiles) {
    for w in dir.warnings() {
        tracing::warn!("users: {w}");
    }
    tracing::info!(users = dir.len(), file = %files.passwd_name(), "users loaded");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        let alice = Hash::argon2id("alice pw").field();
        let passwd = format!("alice:{alice}\nbob@example.test:{{PLAIN}}bob\n");
        Directory::parse(
            "users.passwd",
            passwd.as_bytes(),
            Some((
                "aliases.csv",
                b"address,alias\nalice,sales@example.test\nalice,alice@example.test\n",
            )),
            Some("Example.TEST."),
        )
        .unwrap()
    }

    #[test]
    fn logins_and_what_each_reads() {
        let d = directory();
        assert_eq!(d.len(), 1);
        assert_eq!(
            d.warnings(),
            [
                "users.passwd:2: bob@example.test: scheme {PLAIN} is weak or unknown (use ARGON2ID, BLF-CRYPT or SHA512-CRYPT); this user cannot log in"
            ]
        );
        let a = d.verify("Alice", "alice pw").unwrap();
        assert_eq!(a.address, "alice@example.test");
        assert_eq!(a.aliases, ["sales@example.test"]);
        assert_eq!(d.verify("alice@example.test", "alice pw"), Some(a.clone()));
        assert_eq!(d.verify("alice", "Alice pw"), None);
        assert_eq!(d.verify("bob", "bob"), None);
        assert_eq!(d.verify("nobody", "alice pw"), None);
        for yes in [
            "alice@example.test",
            "ALICE+news@example.test",
            "sales@example.test",
            "sales+x@example.test",
        ] {
            assert!(a.reads(yes), "{yes}");
        }
        for no in [
            "alice@example.org",
            "alicex@example.test",
            "+alice@example.test",
            "bob@example.test",
            "sales@example.test.evil",
        ] {
            assert!(!a.reads(no), "{no}");
        }
    }
}
