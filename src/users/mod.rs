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
pub mod login;
pub mod passwd;
pub mod session;

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
    /// Addresses that look like a tagged form of one of this user's (`sales+eu@` for
    /// `sales@`) but are someone else's own address or alias: not this user's mail.
    pub excluded: Vec<String>,
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
    /// The rule is the store's ([`MailboxFilter::addressed`]): one rule, in one place.
    pub fn reads(&self, rcpt: &str) -> bool {
        crate::ports::MailboxFilter {
            addresses: self.addresses(),
            excluded: self.excluded.clone(),
            kept_since: chrono::DateTime::<chrono::Utc>::MIN_UTC,
        }
        .addressed(rcpt)
    }
}

pub use crate::model::untag;

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
        // A byte order mark (an editor's) is not part of the first user's name.
        let passwd = passwd.strip_prefix("\u{feff}".as_bytes()).unwrap_or(passwd);
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
        let aliases: Vec<String> = self
            .aliases
            .get(address)
            .map(|a| a.iter().filter(|x| *x != address).cloned().collect())
            .unwrap_or_default();
        let own: Vec<String> = std::iter::once(address.to_string())
            .chain(aliases.iter().cloned())
            .collect();
        // Every other explicit address (users, and aliases not this user's) that a tag
        // rule would hand to this user.
        let others = self
            .users
            .keys()
            .chain(self.aliases.values().flatten())
            .filter(|a| !own.contains(a));
        let mut excluded: Vec<String> = others
            .filter(|a| untag(a).is_some_and(|u| own.contains(&u)))
            .cloned()
            .collect();
        excluded.sort();
        excluded.dedup();
        Some(Account {
            address: address.to_string(),
            aliases,
            excluded,
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
    /// One reload at a time; requests that find one running use the directory in use.
    reloading: tokio::sync::Mutex<()>,
    /// The warnings last logged: the same ones are not logged again at every reload.
    warned: std::sync::Mutex<Vec<String>>,
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
        let users = Self::empty(files, default_domain, max_age);
        users.reload().await?;
        Ok(users)
    }

    /// No users yet, read at the first [`Users::directory`] (and at each `max_age` after
    /// that): for a start that must not fail because the users' files cannot be read
    /// right now (the mail listener comes first).
    pub fn empty(
        files: std::sync::Arc<dyn UserFiles>,
        default_domain: Option<String>,
        max_age: Option<std::time::Duration>,
    ) -> Users {
        let long_ago = std::time::Instant::now()
            .checked_sub(max_age.unwrap_or_default())
            .unwrap_or_else(std::time::Instant::now);
        Users {
            files,
            default_domain,
            current: arc_swap::ArcSwap::from_pointee(Directory::default()),
            loaded: std::sync::Mutex::new(long_ago),
            max_age,
            reloading: tokio::sync::Mutex::new(()),
            warned: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Read the files again and use what they say from now on.
    ///
    /// # Errors
    /// As [`Users::load`]; the directory in use is kept.
    pub async fn reload(&self) -> Result<usize, UsersError> {
        let _one = self.reloading.lock().await;
        self.reload_locked().await
    }

    async fn reload_locked(&self) -> Result<usize, UsersError> {
        // Whatever the outcome, the next automatic try is `max_age` from now.
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        let dir = Directory::load(self.files.as_ref(), self.default_domain.as_deref()).await?;
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if *warned != dir.warnings {
            for w in dir.warnings() {
                tracing::warn!("users: {w}");
            }
            warned.clone_from(&dir.warnings);
        }
        drop(warned);
        let n = dir.len();
        if n != self.current.load().len() {
            tracing::info!(users = n, file = %self.files.passwd_name(), "users loaded");
        }
        self.current.store(std::sync::Arc::new(dir));
        Ok(n)
    }

    /// The directory in use (read again first when it is `max_age` old, unless another
    /// request is reading it right now).
    pub async fn directory(&self) -> std::sync::Arc<Directory> {
        let stale = self.max_age.is_some_and(|age| {
            self.loaded
                .lock()
                .map(|t| t.elapsed() >= age)
                .unwrap_or(true)
        });
        if stale
            && let Ok(_one) = self.reloading.try_lock()
            && let Err(e) = self.reload_locked().await
        {
            tracing::error!(error = %e, "cannot read the users; keeping the ones loaded");
        }
        self.current.load_full()
    }
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

    #[test]
    fn an_explicit_address_wins_over_a_tag_and_disabled_lines_are_skipped() {
        let h = Hash::argon2id("pw").field();
        let passwd = format!(
            "\u{feff}alice:{h}\nbob:{h}\ncarol:{h}::::::nologin\ndave:{h}::::::allow_nets=10.0.0.0/8\n"
        );
        let d = Directory::parse(
            "users.passwd",
            passwd.as_bytes(),
            Some((
                "aliases.csv",
                b"address,alias\nalice,sales@example.test\nbob,sales+eu@example.test\n",
            )),
            Some("example.test"),
        )
        .unwrap();
        assert_eq!(d.len(), 2, "{:?}", d.warnings());
        assert!(d.warnings()[0].contains(":3: carol@example.test: has `nologin`"));
        assert!(d.warnings()[1].contains(":4: dave@example.test: has `allow_nets`"));
        let alice = d.account("alice@example.test").unwrap();
        let bob = d.account("bob@example.test").unwrap();
        assert_eq!(alice.excluded, ["sales+eu@example.test"]);
        assert!(!alice.reads("sales+eu@example.test") && bob.reads("sales+eu@example.test"));
        assert!(alice.reads("sales+us@example.test"));
        // bob's own address with a `+` has no tagged forms.
        assert!(!bob.reads("sales+eu+x@example.test"));
    }
}
