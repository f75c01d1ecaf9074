//! Sessions and CSRF tokens without server-side state.
//!
//! The web app runs as one `standby serve` process and as Lambda instances that share
//! nothing, so a session is a cookie the server can check on its own: the address, an
//! expiry and a random nonce, signed with HMAC-SHA256 over those and the user's password
//! stamp (a digest of their stored hash, see [`Account::stamp`]). A changed password or a
//! removed user ends every session at once; the key (`[web] session_key_env`, or a
//! random one per `serve` start) ends them all. Every comparison is constant-time.
//!
//! CSRF: each form carries a token derived from the session's nonce (after login) or
//! from a login nonce cookie (the login form), `HMAC(key, purpose, nonce)`. A cross-site
//! page can neither read it nor compute it, and the cookies are `SameSite=Strict` on top.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::users::Account;

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "standby_session";
/// The login form's nonce cookie.
pub const LOGIN_COOKIE: &str = "standby_login";

/// The key sessions and tokens are signed with.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// The configured key is too short to be a secret.
#[derive(Debug, thiserror::Error)]
#[error("the session key must be at least 32 bytes (e.g. `openssl rand -base64 48`)")]
pub struct ShortKey;

impl SessionKey {
    /// A random key: sessions end when the process does.
    pub fn random() -> Self {
        SessionKey(rand::random())
    }

    /// A key from a configured secret (at least 32 bytes of it).
    ///
    /// # Errors
    /// [`ShortKey`] for a shorter secret.
    pub fn from_secret(secret: &[u8]) -> Result<Self, ShortKey> {
        if secret.len() < 32 {
            return Err(ShortKey);
        }
        Ok(SessionKey(Sha256::digest(secret).into()))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            // Length-prefixed, so no two different part lists sign the same bytes.
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// A new session cookie value for `account`, valid until `expires` (Unix seconds).
    pub fn issue(&self, account: &Account, expires: i64) -> String {
        let nonce: [u8; 16] = rand::random();
        let mac = self.session_mac(&account.address, expires, &nonce, &account.stamp);
        format!(
            "{}.{expires}.{}.{}",
            B64.encode(account.address.as_bytes()),
            B64.encode(nonce),
            B64.encode(mac)
        )
    }

    fn session_mac(&self, address: &str, expires: i64, nonce: &[u8], stamp: &[u8]) -> [u8; 32] {
        self.mac(&[
            b"session",
            address.as_bytes(),
            &expires.to_be_bytes(),
            nonce,
            stamp,
        ])
    }

    /// The address a cookie value claims, before it is checked (to look the user up).
    pub fn claimed(value: &str) -> Option<String> {
        let first = value.split('.').next()?;
        String::from_utf8(B64.decode(first).ok()?).ok()
    }

    /// The session in `value` if it is this key's, for `account` as it is now, and not
    /// expired at `now` (Unix seconds).
    pub fn check(&self, value: &str, account: &Account, now: i64) -> Option<Session> {
        let mut parts = value.split('.');
        let (addr, expires, nonce, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let address = String::from_utf8(B64.decode(addr).ok()?).ok()?;
        let expires: i64 = expires.parse().ok()?;
        let nonce = B64.decode(nonce).ok()?;
        let mac = B64.decode(mac).ok()?;
        let want = self.session_mac(&address, expires, &nonce, &account.stamp);
        let ok: bool = want.ct_eq(mac.as_slice()).into();
        (ok && address == account.address && now < expires).then(|| Session {
            csrf: B64.encode(self.mac(&[b"csrf", &nonce])),
        })
    }

    /// A one-time login link's token for `address` (a continuity notice), valid until
    /// `expires` (Unix seconds): the address, the event, the expiry and a random nonce,
    /// signed. Single use is the caller's: it marks the nonce used (see [`Link::nonce`]).
    pub fn issue_link(&self, address: &str, event: &str, expires: i64) -> String {
        let nonce: [u8; 16] = rand::random();
        let mac = self.link_mac(address, event, expires, &nonce);
        format!(
            "{}.{}.{expires}.{}.{}",
            B64.encode(address.as_bytes()),
            B64.encode(event.as_bytes()),
            B64.encode(nonce),
            B64.encode(mac)
        )
    }

    fn link_mac(&self, address: &str, event: &str, expires: i64, nonce: &[u8]) -> [u8; 32] {
        self.mac(&[
            b"login-link",
            address.as_bytes(),
            event.as_bytes(),
            &expires.to_be_bytes(),
            nonce,
        ])
    }

    /// The link in `token` if this key signed it and it has not expired at `now`.
    pub fn check_link(&self, token: &str, now: i64) -> Option<Link> {
        let mut parts = token.split('.');
        let (addr, event, expires, nonce, mac) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() {
            return None;
        }
        let address = String::from_utf8(B64.decode(addr).ok()?).ok()?;
        let event = String::from_utf8(B64.decode(event).ok()?).ok()?;
        let expires: i64 = expires.parse().ok()?;
        let nonce_raw = B64.decode(nonce).ok()?;
        let mac = B64.decode(mac).ok()?;
        let want = self.link_mac(&address, &event, expires, &nonce_raw);
        let ok: bool = want.ct_eq(mac.as_slice()).into();
        (ok && now < expires).then(|| Link {
            address,
            event,
            expires,
            nonce: nonce.to_string(),
        })
    }

    /// A login form's nonce (the cookie) and its CSRF token (the form field).
    pub fn login_nonce(&self) -> (String, String) {
        let nonce: [u8; 16] = rand::random();
        let token = B64.encode(self.mac(&[b"login-csrf", &nonce]));
        (B64.encode(nonce), token)
    }

    /// Whether `token` is the login form token of the nonce cookie `nonce`.
    pub fn login_token_ok(&self, nonce: &str, token: &str) -> bool {
        let Ok(raw) = B64.decode(nonce) else {
            return false;
        };
        let want = B64.encode(self.mac(&[b"login-csrf", &raw]));
        want.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

/// A checked one-time login link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub address: String,
    pub event: String,
    /// Unix seconds.
    pub expires: i64,
    /// Marked used at the first login, so a second is refused.
    pub nonce: String,
}

/// A checked session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token every form of this session carries.
    pub csrf: String,
}

impl Session {
    /// Whether `token` is this session's CSRF token.
    pub fn csrf_ok(&self, token: &str) -> bool {
        self.csrf.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(stamp: u8) -> Account {
        Account {
            address: "alice@example.test".into(),
            aliases: vec![],
            excluded: vec![],
            stamp: [stamp; 32],
        }
    }

    #[test]
    fn login_links_are_signed_and_expire() {
        let key = SessionKey::from_secret(&[7; 40]).unwrap();
        let t = key.issue_link("alice@example.test", "01EVENT", 1000);
        let link = key.check_link(&t, 999).unwrap();
        assert_eq!(link.address, "alice@example.test");
        assert_eq!(link.event, "01EVENT");
        assert!(key.check_link(&t, 1000).is_none(), "expired");
        assert!(
            SessionKey::random().check_link(&t, 1).is_none(),
            "another key"
        );
        // Another address with the same signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let bob = B64.encode("bob@example.test");
        parts[0] = &bob;
        assert!(key.check_link(&parts.join("."), 1).is_none());
        let later = t.replace(".1000.", ".2000.");
        assert!(key.check_link(&later, 1500).is_none(), "expiry moved");
        assert_ne!(key.issue_link("alice@example.test", "01EVENT", 1000), t);
    }

    #[test]
    fn a_session_holds_only_for_its_key_user_password_and_time() {
        let key = SessionKey::from_secret(&[7; 40]).unwrap();
        let v = key.issue(&account(1), 1000);
        assert_eq!(
            SessionKey::claimed(&v).as_deref(),
            Some("alice@example.test")
        );
        let s = key.check(&v, &account(1), 999).unwrap();
        assert!(s.csrf_ok(&s.csrf) && !s.csrf_ok("x"));
        assert!(key.check(&v, &account(1), 1000).is_none(), "expired");
        assert!(
            key.check(&v, &account(2), 999).is_none(),
            "password changed"
        );
        let other = SessionKey::random();
        assert!(other.check(&v, &account(1), 999).is_none(), "other key");
        let bob = Account {
            address: "bob@example.test".into(),
            ..account(1)
        };
        assert!(key.check(&v, &bob, 999).is_none(), "other user");
        // A forged expiry or address breaks the signature.
        let mut parts: Vec<&str> = v.split('.').collect();
        parts[1] = "99999999";
        assert!(key.check(&parts.join("."), &account(1), 999).is_none());
        let bob_b64 = B64.encode("bob@example.test");
        let mut parts: Vec<&str> = v.split('.').collect();
        parts[0] = &bob_b64;
        assert!(key.check(&parts.join("."), &bob, 999).is_none());
        assert!(SessionKey::from_secret(&[1; 31]).is_err());
    }

    #[test]
    fn login_tokens_belong_to_their_nonce() {
        let key = SessionKey::random();
        let (nonce, token) = key.login_nonce();
        assert!(key.login_token_ok(&nonce, &token));
        let (other, _) = key.login_nonce();
        assert!(!key.login_token_ok(&other, &token));
        assert!(!SessionKey::random().login_token_ok(&nonce, &token));
        assert!(!key.login_token_ok(&nonce, ""));
    }
}
