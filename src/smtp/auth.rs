//! SASL PLAIN (RFC 4616) and LOGIN for the submission listener: decoding what the
//! client sends, never checking it (the session hands the name and password to the
//! listener, which checks them off the async runtime against `[users]`).
//!
//! LOGIN is not a standard but every mail client offers it (Outlook among them, which
//! does not offer PLAIN everywhere); it carries the same two strings as PLAIN.

use base64::Engine;

/// The longest response line accepted (a 254-byte name and a 1 KiB password, in
/// base64, fit with room to spare).
pub const MAX_RESPONSE: usize = 2048;

/// Why a response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("not valid base64")]
    Base64,
    #[error("not UTF-8")]
    Utf8,
    #[error("not authzid NUL authcid NUL password")]
    Shape,
    #[error("an authorization identity other than the login name")]
    Authzid,
    #[error("too long")]
    TooLong,
}

fn decode(b64: &str) -> Result<String, SaslError> {
    let b64 = b64.trim();
    if b64.len() > MAX_RESPONSE {
        return Err(SaslError::TooLong);
    }
    // `=` alone is an empty initial response (RFC 4954 §4).
    if b64 == "=" {
        return Ok(String::new());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| SaslError::Base64)?;
    String::from_utf8(raw).map_err(|_| SaslError::Utf8)
}

/// A PLAIN response: `[authzid] NUL authcid NUL password`. An authorization identity
/// may only name the login itself (acting as someone else is not offered).
pub fn plain(b64: &str) -> Result<(String, String), SaslError> {
    let text = decode(b64)?;
    let mut parts = text.split('\0');
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Shape);
    };
    if user.is_empty() {
        return Err(SaslError::Shape);
    }
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(user) {
        return Err(SaslError::Authzid);
    }
    Ok((user.to_string(), pass.to_string()))
}

/// One LOGIN response (the name, then the password).
pub fn login_part(b64: &str) -> Result<String, SaslError> {
    let s = decode(b64)?;
    if s.contains('\0') {
        return Err(SaslError::Shape);
    }
    Ok(s)
}

/// `Username:` and `Password:`, as LOGIN's challenges.
pub const USERNAME: &str = "VXNlcm5hbWU6";
pub const PASSWORD: &str = "UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn plain_responses() {
        assert_eq!(
            plain(&b64("\0alice@example.test\0pw")).unwrap(),
            ("alice@example.test".into(), "pw".into())
        );
        assert_eq!(
            plain(&b64("alice@example.test\0alice@example.test\0pw")).unwrap(),
            ("alice@example.test".into(), "pw".into())
        );
        assert_eq!(
            plain(&b64("bob@example.test\0alice@example.test\0pw")),
            Err(SaslError::Authzid)
        );
        assert_eq!(plain(&b64("alice\0pw")), Err(SaslError::Shape));
        assert_eq!(plain(&b64("\0\0pw")), Err(SaslError::Shape));
        assert_eq!(plain("***"), Err(SaslError::Base64));
        assert_eq!(plain(&"A".repeat(4000)), Err(SaslError::TooLong));
        assert_eq!(login_part(&b64("alice")).unwrap(), "alice");
        assert_eq!(login_part(&b64("a\0b")), Err(SaslError::Shape));
    }
}
