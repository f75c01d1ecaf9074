//! The users' files on the local disk (`[users] file`, `[users] aliases`).
//!
//! The passwd-file is rewritten whole by `standby user`: under an exclusive lock on a
//! lock file beside it (two commands at once do not lose each other's change), only if
//! its content is still what was read (the version is a SHA-256 of the bytes, so an
//! administrator's edit in between is not overwritten), into a temporary file that is
//! flushed and renamed over it, the directory flushed after. A power cut leaves the old
//! file or the new one, never half of one. The new file keeps the old one's mode and
//! owner (a new one is 0600: it holds password hashes).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::ports::{UserFiles, Versioned};

/// `[users] file` and `[users] aliases` on disk.
#[derive(Debug, Clone)]
pub struct LocalUserFiles {
    passwd: PathBuf,
    aliases: Option<PathBuf>,
}

impl LocalUserFiles {
    pub fn new(passwd: PathBuf, aliases: Option<PathBuf>) -> Self {
        LocalUserFiles { passwd, aliases }
    }
}

fn version_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path, e)),
    }
}

/// The whole write, blocking (see the module docs).
fn replace(path: &Path, bytes: &[u8], version: Option<&str>) -> Result<(), StoreError> {
    // A symlinked file (into a Dovecot configuration directory, say) is written where
    // the link points, and stays a link.
    // A link to a file not made yet: written where it points, too.
    let resolved = std::fs::canonicalize(path).ok().or_else(|| {
        let target = std::fs::read_link(path).ok()?;
        Some(match path.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        })
    });
    let path = resolved.as_deref().unwrap_or(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "users".into());
    let lock_path = dir.join(format!(".{name}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| StoreError::io("create", &lock_path, e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| StoreError::io("lock", &lock_path, e.into()))?;
    let current = read_optional(path)?;
    if current.as_deref().map(version_of).as_deref() != version {
        return Err(StoreError::FileChanged(path.display().to_string()));
    }
    let meta = std::fs::metadata(path).ok();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some(m) = &meta {
            f.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            // Keep the owner when we may (root editing the spool owner's file).
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io("write", path, e)
    })
}

#[async_trait]
impl UserFiles for LocalUserFiles {
    fn passwd_name(&self) -> String {
        self.passwd.display().to_string()
    }

    fn aliases_name(&self) -> Option<String> {
        self.aliases.as_ref().map(|p| p.display().to_string())
    }

    async fn read_passwd(&self) -> Result<Option<Versioned>, StoreError> {
        let path = self.passwd.clone();
        let bytes = tokio::task::spawn_blocking(move || read_optional(&path))
            .await
            .map_err(|e| StoreError::io("read", &self.passwd, std::io::Error::other(e)))??;
        Ok(bytes.map(|bytes| Versioned {
            version: version_of(&bytes),
            bytes,
        }))
    }

    async fn read_aliases(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = self.aliases.clone() else {
            return Ok(None);
        };
        // A configured aliases file that is missing is a mistake worth an error, unlike a
        // passwd-file not made yet.
        tokio::task::spawn_blocking(move || {
            std::fs::read(&path).map_err(|e| StoreError::io("read", &path, e))
        })
        .await
        .map_err(|e| StoreError::io("read", "aliases", std::io::Error::other(e)))?
        .map(Some)
    }

    async fn write_passwd(&self, bytes: &[u8], version: Option<&str>) -> Result<(), StoreError> {
        let (path, bytes, version) = (
            self.passwd.clone(),
            bytes.to_vec(),
            version.map(str::to_string),
        );
        tokio::task::spawn_blocking(move || replace(&path, &bytes, version.as_deref()))
            .await
            .map_err(|e| StoreError::io("write", &self.passwd, std::io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_replace() {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalUserFiles::new(dir.path().join("users.passwd"), None);
        assert_eq!(files.read_passwd().await.unwrap(), None);
        files.write_passwd(b"a:1\n", None).await.unwrap();
        let v = files.read_passwd().await.unwrap().unwrap();
        assert_eq!(v.bytes, b"a:1\n");
        let mode = std::fs::metadata(dir.path().join("users.passwd"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Created meanwhile, or changed since read: nothing written.
        assert!(matches!(
            files.write_passwd(b"b:2\n", None).await,
            Err(StoreError::FileChanged(_))
        ));
        files
            .write_passwd(b"b:2\n", Some(&v.version))
            .await
            .unwrap();
        assert!(matches!(
            files.write_passwd(b"c:3\n", Some(&v.version)).await,
            Err(StoreError::FileChanged(_))
        ));
        assert_eq!(files.read_passwd().await.unwrap().unwrap().bytes, b"b:2\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_symlinked_file_is_written_where_the_link_points() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("dovecot-users");
        let link = dir.path().join("users.passwd");
        std::os::unix::fs::symlink("dovecot-users", &link).unwrap();
        let files = LocalUserFiles::new(link.clone(), None);
        // The target does not exist yet.
        files.write_passwd(b"a:1\n", None).await.unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"a:1\n");
        let v = files.read_passwd().await.unwrap().unwrap();
        files
            .write_passwd(b"b:2\n", Some(&v.version))
            .await
            .unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"b:2\n");
    }
}
