//! The password hashes of a Dovecot passwd-file, and the one `standby user add` writes.
//!
//! Dovecot prefixes each hash with its scheme (`{ARGON2ID}$argon2id$...`). The strong ones
//! are accepted: Argon2 (id and i), bcrypt (`{BLF-CRYPT}`) and SHA-crypt (`{SHA512-CRYPT}`,
//! `{SHA256-CRYPT}`), plus `{CRYPT}` and a bare hash (Dovecot's default scheme) when the
//! crypt string itself says which of those it is (`$2y$`, `$6$`, `$5$`). Everything else
//! (`{PLAIN}`, `{MD5-CRYPT}`, DES crypt, salted SHA-1...) is refused when the file is read,
//! so a weak hash copied from an old server never becomes a login here. Checking is done
//! by the well-kept RustCrypto and bcrypt crates, each in constant time.

use std::fmt;
use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// A password hash in one of the accepted schemes, as it was read.
#[derive(Clone, PartialEq, Eq)]
pub struct Hash {
    scheme: Scheme,
    /// The crypt or PHC string, without the `{SCHEME}` prefix.
    text: String,
}

/// What checks a [`Hash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Argon2,
    Bcrypt,
    Sha512Crypt,
    Sha256Crypt,
}

/// Why a passwd-file line's hash is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("scheme {{{0}}} is weak or unknown (use ARGON2ID, BLF-CRYPT or SHA512-CRYPT)")]
    Scheme(String),
    #[error("{{{scheme}}} hash is not a valid {expected} string")]
    Malformed {
        scheme: String,
        expected: &'static str,
    },
    #[error("no password hash")]
    Empty,
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the hash itself.
        write!(f, "Hash({:?})", self.scheme)
    }
}

impl Hash {
    /// Read the password field of a passwd-file line: `{SCHEME}hash`, or a bare crypt
    /// string (Dovecot's default scheme, CRYPT).
    ///
    /// # Errors
    /// [`HashError`] for a weak or unknown scheme or a hash its scheme cannot read.
    pub fn parse(field: &str) -> Result<Hash, HashError> {
        if field.is_empty() {
            return Err(HashError::Empty);
        }
        let (scheme, text) = match field.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((s, t)) => (s.to_ascii_uppercase(), t),
            None => ("CRYPT".to_string(), field),
        };
        let malformed = |expected| HashError::Malformed {
            scheme: scheme.clone(),
            expected,
        };
        let kind = match scheme.as_str() {
            "ARGON2ID" | "ARGON2I" => {
                let want = if scheme == "ARGON2ID" {
                    "$argon2id$"
                } else {
                    "$argon2i$"
                };
                if !text.starts_with(want) || PasswordHash::new(text).is_err() {
                    return Err(malformed("Argon2 PHC"));
                }
                Scheme::Argon2
            }
            "BLF-CRYPT" => bcrypt_kind(text).ok_or_else(|| malformed("bcrypt ($2y$)"))?,
            "SHA512-CRYPT" if text.starts_with("$6$") => Scheme::Sha512Crypt,
            "SHA512-CRYPT" => return Err(malformed("SHA-512 crypt ($6$)")),
            "SHA256-CRYPT" if text.starts_with("$5$") => Scheme::Sha256Crypt,
            "SHA256-CRYPT" => return Err(malformed("SHA-256 crypt ($5$)")),
            "CRYPT" => {
                if let Some(k) = bcrypt_kind(text) {
                    k
                } else if text.starts_with("$6$") {
                    Scheme::Sha512Crypt
                } else if text.starts_with("$5$") {
                    Scheme::Sha256Crypt
                } else {
                    // DES, MD5 ($1$) and anything else crypt(3) may know.
                    return Err(HashError::Scheme(format!(
                        "CRYPT{}",
                        text.get(..3)
                            .filter(|p| p.starts_with('$'))
                            .map(|p| format!(" {p}"))
                            .unwrap_or_default()
                    )));
                }
            }
            other => return Err(HashError::Scheme(other.to_string())),
        };
        Ok(Hash {
            scheme: kind,
            text: text.to_string(),
        })
    }

    /// A new `{ARGON2ID}` hash of `password` (Argon2id, the crate's defaults: 19 MiB,
    /// two passes), with a fresh random salt.
    pub fn argon2id(password: &str) -> Hash {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let phc = argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            // Only an out-of-range parameter fails, and the defaults are in range.
            .unwrap_or_default();
        Hash {
            scheme: Scheme::Argon2,
            text: phc,
        }
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The passwd-file field: `{ARGON2ID}$argon2id$v=19$...`.
    pub fn field(&self) -> String {
        let name = match self.scheme {
            Scheme::Argon2 if self.text.starts_with("$argon2i$") => "ARGON2I",
            Scheme::Argon2 => "ARGON2ID",
            Scheme::Bcrypt => "BLF-CRYPT",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
        };
        format!("{{{name}}}{}", self.text)
    }

    /// Whether `password` matches. Slow on purpose (tens of milliseconds): call it off
    /// the async runtime (`spawn_blocking`).
    pub fn verify(&self, password: &str) -> bool {
        match self.scheme {
            Scheme::Argon2 => PasswordHash::new(&self.text).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            }),
            Scheme::Bcrypt => bcrypt::verify(password, &self.text).unwrap_or(false),
            Scheme::Sha512Crypt => sha_crypt::sha512_check(password, &self.text).is_ok(),
            Scheme::Sha256Crypt => sha_crypt::sha256_check(password, &self.text).is_ok(),
        }
    }

    /// Spend the time a check of an `{ARGON2ID}` hash takes and fail: what a login with an
    /// unknown name does, so it answers as slowly as a wrong password.
    pub fn verify_nobody(password: &str) -> bool {
        static NOBODY: LazyLock<Hash> = LazyLock::new(|| Hash::argon2id("no such user"));
        let _ = NOBODY.verify(password);
        false
    }
}

/// bcrypt's crypt prefixes (`$2y$` is what Dovecot writes; `$2a$`/`$2b$` the same hash).
fn bcrypt_kind(text: &str) -> Option<Scheme> {
    let known = ["$2y$", "$2b$", "$2a$"].iter().any(|p| text.starts_with(p));
    (known && text.parse::<bcrypt::HashParts>().is_ok()).then_some(Scheme::Bcrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = Hash::argon2id("correct horse");
        assert!(h.field().starts_with("{ARGON2ID}$argon2id$v=19$"));
        let back = Hash::parse(&h.field()).unwrap();
        assert!(back.verify("correct horse"));
        assert!(!back.verify("correct hors"));
        assert!(!Hash::verify_nobody("correct horse"));
    }

    #[test]
    fn crypt_strings_are_recognised_by_their_prefix() {
        // Test vectors of the SHA-crypt specification (Drepper), rounds=5000 implied.
        let sha512 = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        let sha256 = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5";
        for field in [
            format!("{{SHA512-CRYPT}}{sha512}"),
            format!("{{CRYPT}}{sha512}"),
            sha512.to_string(),
        ] {
            let h = Hash::parse(&field).unwrap();
            assert_eq!(h.scheme(), Scheme::Sha512Crypt, "{field}");
            assert!(h.verify("Hello world!"));
            assert!(!h.verify("Hello world"));
        }
        let h = Hash::parse(&format!("{{sha256-crypt}}{sha256}")).unwrap();
        assert!(h.verify("Hello world!"));
        let bc = bcrypt::hash("pw", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let h = Hash::parse(&format!("{{CRYPT}}{bc}")).unwrap();
        assert_eq!(h.scheme(), Scheme::Bcrypt);
        assert!(h.verify("pw") && !h.verify("px"));
    }

    #[test]
    fn weak_and_unknown_schemes_are_refused() {
        for (field, want) in [
            ("{PLAIN}secret", "PLAIN"),
            ("{MD5-CRYPT}$1$abc$def", "MD5-CRYPT"),
            ("{CRYPT}$1$abc$def", "CRYPT $1$"),
            ("{CRYPT}abJnggxhB/yWI", "CRYPT"),
            ("$1$abc$def", "CRYPT $1$"),
            ("{SSHA}xyz", "SSHA"),
        ] {
            assert_eq!(
                Hash::parse(field),
                Err(HashError::Scheme(want.into())),
                "{field}"
            );
        }
        assert!(matches!(
            Hash::parse("{ARGON2ID}$argon2i$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA"),
            Err(HashError::Malformed { .. })
        ));
        assert!(matches!(
            Hash::parse("{SHA512-CRYPT}$5$x$y"),
            Err(HashError::Malformed { .. })
        ));
        assert_eq!(Hash::parse(""), Err(HashError::Empty));
    }
}
