//! `standby user add|list|remove`: the emergency inbox's users (see [`crate::users`]).
//!
//! The passwd-file is edited in place, every other line kept as it was (a copy of
//! Dovecot's file stays usable by Dovecot), and written back only if nobody changed it
//! since it was read; when someone did, the edit is made again on what is there now.
//! New passwords are hashed with Argon2id (`{ARGON2ID}`).

use std::io::{IsTerminal, Read};

use super::CliError;
use crate::config::Config;
use crate::error::StoreError;
use crate::ports::UserFiles;
use crate::users::{self, Directory, Hash, passwd};

/// What `standby user` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum UserAction {
    /// Add a user, or set the password of one (written as {ARGON2ID}). Asks for the
    /// password twice on a terminal.
    Add {
        /// `alice@example.com`, or `alice` with `[users] default_domain`.
        address: String,
        /// Read the password from standard input (one line) instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every user who can log in, with the aliases each may read.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user: they can no longer log in, and their sessions end.
    Remove { address: String },
}

async fn files(config: &Config) -> Result<std::sync::Arc<dyn UserFiles>, CliError> {
    crate::backend::user_files(config).await.ok_or_else(|| {
        CliError::Usage(
            "no users file: set [users] file = \"users.passwd\" (a Dovecot passwd-file) \
             in the configuration"
                .into(),
        )
    })
}

/// The password for `add`: standard input's first line, or asked twice on a terminal.
fn password(from_stdin: bool) -> Result<String, CliError> {
    let pw = if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Usage(format!("--password-stdin: {e}")))?;
        text.lines().next().unwrap_or("").to_string()
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            return Err(CliError::Usage(
                "the passwords differ; nothing changed".into(),
            ));
        }
        first
    } else {
        return Err(CliError::Usage(
            "no terminal to ask for the password: pipe it with --password-stdin".into(),
        ));
    };
    if pw.is_empty() {
        return Err(CliError::Usage(
            "the password is empty; nothing changed".into(),
        ));
    }
    Ok(pw)
}

/// Apply `edit` to the passwd-file's text and write it back if nobody wrote it since it
/// was read; read and apply again when someone did (a few times).
async fn edit_passwd(
    files: &dyn UserFiles,
    mut edit: impl FnMut(&[u8]) -> Result<Vec<u8>, CliError>,
) -> Result<(), CliError> {
    let mut tries = 0;
    loop {
        let current = files.read_passwd().await?;
        let text = current.as_ref().map(|v| v.bytes.as_slice()).unwrap_or(b"");
        let new = edit(text)?;
        match files
            .write_passwd(&new, current.as_ref().map(|v| v.version.as_str()))
            .await
        {
            Err(StoreError::FileChanged(_)) if tries < 4 => tries += 1,
            other => return Ok(other?),
        }
    }
}

/// Run `standby user ...`.
pub async fn run(config: &Config, action: UserAction) -> Result<(), CliError> {
    let files = files(config).await?;
    let domain = config.users.default_domain.as_deref();
    let address = |typed: &str| {
        users::address_of(typed, domain).ok_or_else(|| {
            CliError::Usage(format!(
                "`{typed}` is not an address like alice@example.com{}",
                if domain.is_none() && !typed.contains('@') {
                    " (or set [users] default_domain)"
                } else {
                    ""
                }
            ))
        })
    };
    match action {
        UserAction::Add {
            address: typed,
            password_stdin,
        } => {
            let address = address(&typed)?;
            let hash = tokio::task::spawn_blocking({
                let pw = password(password_stdin)?;
                move || Hash::argon2id(&pw)
            })
            .await
            .map_err(|e| CliError::Usage(format!("hashing the password: {e}")))?;
            let mut existed = false;
            edit_passwd(files.as_ref(), |text| {
                let (entries, _) = passwd::parse(&String::from_utf8_lossy(text), domain);
                existed = entries.iter().any(|e| e.address == address);
                Ok(passwd::set_password(text, &address, &hash, domain))
            })
            .await?;
            let verb = if existed { "password changed" } else { "added" };
            println!("{address}: {verb} in {}", files.passwd_name());
            Ok(())
        }
        UserAction::Remove { address: typed } => {
            let address = address(&typed)?;
            edit_passwd(files.as_ref(), |text| {
                let (out, found) = passwd::remove(text, &address, domain);
                if found {
                    Ok(out)
                } else {
                    Err(CliError::Usage(format!(
                        "{address} is not in {}; nothing changed",
                        files.passwd_name()
                    )))
                }
            })
            .await?;
            println!("{address}: removed from {}", files.passwd_name());
            Ok(())
        }
        UserAction::List { json } => {
            let dir = Directory::load(files.as_ref(), domain)
                .await
                .map_err(|e| match e {
                    users::UsersError::Store(s) => CliError::Store(s),
                    other => CliError::Usage(other.to_string()),
                })?;
            for w in dir.warnings() {
                eprintln!("standby: warning: {w}");
            }
            let list = dir.list();
            #[derive(serde::Serialize)]
            struct User<'a> {
                address: &'a str,
                aliases: &'a [String],
            }
            let rows: Vec<User<'_>> = list
                .iter()
                .map(|a| User {
                    address: &a.address,
                    aliases: &a.aliases,
                })
                .collect();
            super::print_summary(json, &rows, |out| {
                for u in &rows {
                    if u.aliases.is_empty() {
                        writeln!(out, "{}", u.address)?;
                    } else {
                        writeln!(out, "{}  (also reads {})", u.address, u.aliases.join(", "))?;
                    }
                }
                if rows.is_empty() {
                    writeln!(out, "no users in {}", files.passwd_name())?;
                }
                Ok(())
            })
        }
    }
}
