//! ARC (RFC 8617) on mail the drain hands back to the primary, made by mail-auth.
//!
//! When the standby redelivers, the primary sees the standby as the client: the
//! sender's SPF fails there and a DKIM signature may have been broken on the way. The
//! standby's `Authentication-Results:` field tells the primary what the original session
//! showed, but only a primary configured to trust that authserv-id can use it, and only
//! by address. An ARC set binds those verdicts to the message with a signature of the
//! standby's domain (`[arc] domain`, `selector`, `key`): a primary that trusts that
//! domain (rspamd's `arc` module with `whitelisted_signers_map`, see `standby
//! primary-config --rspamd`) can take them wherever the standby connects from.
//!
//! The message is read twice: once here, streaming, for its header section (at most
//! [`HEADER_CAP`]) and the body hashes the seal and the chain check need (no copy of the
//! body is kept, so a 40 MB message costs no more memory than a small one), then again
//! by the drain as it sends. A message that came with an ARC chain (a mailing list, a
//! forwarder, Microsoft 365 and Gmail seal what they relay) has the chain checked
//! first, with the keys in DNS, and only a valid one is sealed on (`cv=pass`). One that
//! does not validate is left as it came, without a set of ours: the check runs at
//! redelivery, hours or days after receipt, when a rotated key or an expired signature
//! could fail a chain that was good when it arrived, and a `cv=fail` of ours would end
//! it for every later reader (RFC 8617 §5.2); a primary reads the broken chain itself.
//! Nor is a chain sealed that cannot be checked now (DNS), is malformed, or already has
//! 50 sets. The verdict goes into the standby's results as `arc=` (none, pass, fail;
//! left out when it could not be checked).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{
    Ed25519Key, HashAlgorithm, HashContext, HashImpl, RsaKey, Sha1, Sha256,
};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::canonicalize::BodyHasher;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, MessageAuthenticator,
    Parameters,
};
use tokio::io::AsyncReadExt;

use super::dkim::DkimError;
use crate::model::MessageId;
use crate::ports::{ArcSeal, BlobReader};

/// The longest header section read for a seal; a message with a longer one goes on
/// unsealed (no honest message comes close).
pub const HEADER_CAP: usize = 256 * 1024;

/// How long checking the chain a message came with may take (its sealers' keys in
/// DNS); then the chain counts as not checkable and the message is not sealed. Short,
/// since the drain's session with the primary waits meanwhile.
const CHAIN_CHECK: Duration = Duration::from_secs(5);

/// The most ARC sets a chain may have (RFC 8617 §4.2.1): one that has them all cannot
/// take ours.
const MAX_SETS: usize = 50;

/// The headers the ARC-Message-Signature covers (those present): what DKIM signs, and
/// the DKIM signatures themselves.
fn signed() -> impl Iterator<Item = &'static str> + Clone {
    super::dkim::SIGNED.into_iter().chain(["DKIM-Signature"])
}

enum Sealer {
    Rsa(ArcSealer<RsaKey<Sha256>, Done>),
    Ed25519(ArcSealer<Ed25519Key, Done>),
}

/// The standby's ARC sealer: its key and the resolver for checking chains.
pub struct ArcSealing {
    sealer: Sealer,
    domain: String,
    auth: MessageAuthenticator,
}

impl std::fmt::Debug for ArcSealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArcSealing")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// The sealer of `key` for `domain` and `selector`, with this module's settings.
fn builder<T: mail_auth::common::crypto::SigningKey<Hasher = Sha256>>(
    key: T,
    domain: &str,
    selector: &str,
) -> ArcSealer<T, Done> {
    ArcSealer::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(signed())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

impl ArcSealing {
    /// The sealer for `domain` and `selector` with the PEM key at `key`; chains a
    /// message came with are checked with `chains` (its resolver: the entry point makes
    /// it, from `[arc] nameserver`).
    ///
    /// # Errors
    /// The key cannot be read or is no RSA key of 2048 bits or more nor an Ed25519 key.
    pub fn load(
        domain: &str,
        selector: &str,
        key: &Path,
        chains: MessageAuthenticator,
    ) -> Result<Self, DkimError> {
        let err = |message: String| DkimError {
            path: key.to_path_buf(),
            message,
        };
        let pem = std::fs::read_to_string(key).map_err(|e| err(e.to_string()))?;
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .ok()
            .flatten()
            .ok_or_else(|| err("no private key in PEM format".into()))?;
        let sealer = if let Ok(k) = RsaKey::<Sha256>::from_key_der(der.clone_key()) {
            Sealer::Rsa(builder(k, domain, selector))
        } else {
            let k = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_der()).map_err(|e| {
                err(format!(
                    "neither an RSA key of 2048 bits or more nor an Ed25519 key: {e}"
                ))
            })?;
            Sealer::Ed25519(builder(k, domain, selector))
        };
        Ok(ArcSealing {
            sealer,
            domain: domain.to_ascii_lowercase(),
            auth: chains,
        })
    }
}

/// The byte at which the body starts (after the empty line ending the header section),
/// if `buf` holds the whole header section.
fn body_start(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    if buf.starts_with(b"\n") {
        return Some(1);
    }
    let mut at = 0;
    while let Some(i) = buf[at..].iter().position(|&b| b == b'\n') {
        let next = at + i + 1;
        let rest = &buf[next..];
        if rest.starts_with(b"\r\n") {
            return Some(next + 2);
        }
        if rest.starts_with(b"\n") {
            return Some(next + 1);
        }
        at = next;
    }
    None
}

/// Why a message is not sealed (logged at info, with the message's id).
#[derive(Debug, PartialEq, Eq)]
enum Skip {
    Read(String),
    LongHeader,
    Unparsable,
    /// The chain it came with: malformed, failed, full, or not checkable now.
    Chain(&'static str),
    /// A signed header holds a byte verifiers disagree on (see [`odd_whitespace`]).
    OddWhitespace,
    Sign(String),
}

/// The header section of `message` and the body hashes for each `(canonicalization,
/// hash)` the header's signatures use, ours (relaxed, SHA-256) included.
async fn read(
    mut message: BlobReader,
) -> Result<(Vec<u8>, Vec<(Canonicalization, HashAlgorithm, Vec<u8>)>), Skip> {
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let body_from = loop {
        if let Some(at) = body_start(&head) {
            break at;
        }
        if head.len() > HEADER_CAP {
            return Err(Skip::LongHeader);
        }
        let n = message
            .read(&mut chunk)
            .await
            .map_err(|e| Skip::Read(e.to_string()))?;
        if n == 0 {
            // No body: the whole message is its header section.
            head.extend_from_slice(b"\r\n");
            break head.len();
        }
        head.extend_from_slice(&chunk[..n]);
    };
    if body_from > HEADER_CAP {
        return Err(Skip::LongHeader);
    }
    let rest = head.split_off(body_from);
    let parsed = AuthenticatedMessage::parse(&head).ok_or(Skip::Unparsable)?;
    let mut wanted: Vec<(Canonicalization, HashAlgorithm)> = parsed
        .body_hashes
        .iter()
        .map(|(c, h, _, _)| (*c, *h))
        .collect();
    if !wanted.contains(&(Canonicalization::Relaxed, HashAlgorithm::Sha256)) {
        wanted.push((Canonicalization::Relaxed, HashAlgorithm::Sha256));
    }
    drop(parsed);
    let mut hashers: Vec<BodyHasher<<Sha256 as HashImpl>::Context>> = wanted
        .iter()
        .map(|(c, h)| {
            let ctx = match h {
                HashAlgorithm::Sha1 => Sha1::hasher(),
                HashAlgorithm::Sha256 => Sha256::hasher(),
            };
            BodyHasher::new(ctx, *c, 0)
        })
        .collect();
    for h in &mut hashers {
        h.write(&rest);
    }
    loop {
        let n = message
            .read(&mut chunk)
            .await
            .map_err(|e| Skip::Read(e.to_string()))?;
        if n == 0 {
            break;
        }
        for h in &mut hashers {
            h.write(&chunk[..n]);
        }
    }
    let hashes = wanted
        .into_iter()
        .zip(hashers)
        .map(|((c, a), h)| (c, a, h.finish().0.complete().as_ref().to_vec()))
        .collect();
    Ok((head, hashes))
}

/// The `arc=` result (RFC 8617 §10.1: none, pass, fail) of a chain check; `None` when
/// the chain could not be checked (DNS), which is no verdict on it.
fn arc_result(r: &DkimResult) -> Option<&'static str> {
    match r {
        DkimResult::Pass => Some("pass"),
        DkimResult::None => Some("none"),
        DkimResult::TempError(_) => None,
        DkimResult::PermError(_) | DkimResult::Fail(_) | DkimResult::Neutral(_) => Some("fail"),
    }
}

/// Whether a header the seal signs holds a vertical tab or form feed: mail-auth's relaxed
/// canonicalization takes them for whitespace, other verifiers (dkimpy, rspamd) do not,
/// so a set over such a header would fail at the primary.
fn odd_whitespace(parsed: &AuthenticatedMessage<'_>) -> bool {
    parsed.headers.iter().any(|(name, value)| {
        signed().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            && value.iter().any(|&b| b == 0x0b || b == 0x0c)
    })
}

impl ArcSealing {
    async fn try_seal(
        &self,
        message: BlobReader,
        authserv_id: &str,
        methods: &mut Vec<String>,
    ) -> Result<String, Skip> {
        let (head, hashes) = read(message).await?;
        let mut parsed = AuthenticatedMessage::parse(&head).ok_or(Skip::Unparsable)?;
        // Where mail-auth (and Postfix) end the header section (at the first line that is
        // no header field) must be where we did, or the body hash covers other bytes than
        // a verifier's.
        if parsed.body_offset as usize != head.len() {
            return Err(Skip::Unparsable);
        }
        if odd_whitespace(&parsed) {
            return Err(Skip::OddWhitespace);
        }
        parsed.body_hashes = hashes.into_iter().map(|(c, a, h)| (c, a, 0, h)).collect();
        let carries_arc = parsed.headers.iter().any(|(name, _)| {
            [
                &b"arc-seal"[..],
                b"arc-message-signature",
                b"arc-authentication-results",
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        });
        let chain = if carries_arc {
            let checked =
                tokio::time::timeout(CHAIN_CHECK, self.auth.verify_arc(Parameters::new(&parsed)))
                    .await
                    .unwrap_or_else(|_| {
                        ArcOutput::default().with_result(DkimResult::TempError(
                            mail_auth::Error::Dns(mail_auth::DnsError::Resolver(
                                "timed out".into(),
                            )),
                        ))
                    });
            let Some(verdict) = arc_result(checked.result()) else {
                return Err(Skip::Chain("its ARC chain cannot be checked now (DNS)"));
            };
            methods.push(format!("arc={verdict}"));
            if checked.sets().is_empty() {
                return Err(Skip::Chain(
                    "the ARC fields it came with do not form a chain",
                ));
            }
            if verdict != "pass" {
                return Err(Skip::Chain("its ARC chain does not validate"));
            }
            if checked.sets().len() >= MAX_SETS {
                return Err(Skip::Chain("its ARC chain has the most sets there may be"));
            }
            checked
        } else {
            methods.push("arc=none".into());
            ArcOutput::default()
        };
        let results = crate::model::auth_results::one_line(authserv_id, methods);
        if results.len() > 900 {
            return Err(Skip::Sign(
                "the results are too long for one header line".into(),
            ));
        }
        let aar = AuthenticationResults::new(&results);
        let set = match &self.sealer {
            Sealer::Rsa(s) => s.seal(&parsed, &aar, &chain).map(|s| s.to_header()),
            Sealer::Ed25519(s) => s.seal(&parsed, &aar, &chain).map(|s| s.to_header()),
        };
        set.map_err(|e| Skip::Sign(e.to_string()))
    }
}

#[async_trait]
impl ArcSeal for ArcSealing {
    async fn seal(
        &self,
        id: MessageId,
        message: BlobReader,
        authserv_id: &str,
        methods: &mut Vec<String>,
    ) -> Option<String> {
        match self.try_seal(message, authserv_id, methods).await {
            Ok(set) => Some(set),
            Err(why) => {
                tracing::info!(%id, reason = ?why, "not sealed with ARC");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> BlobReader {
        Box::new(std::io::Cursor::new(bytes.to_vec()))
    }

    #[test]
    fn the_body_starts_after_the_first_empty_line() {
        assert_eq!(body_start(b"A: 1\r\nB: 2\r\n\r\nbody"), Some(14));
        assert_eq!(body_start(b"A: 1\n\nbody"), Some(6));
        assert_eq!(body_start(b"\r\nbody"), Some(2));
        assert_eq!(body_start(b"A: 1\r\nB: 2\r\n"), None);
        assert_eq!(body_start(b"A: 1\r\n\r"), None);
    }

    /// The streamed body hashes are mail-auth's own over the whole body, in any chunking,
    /// for each canonicalization and hash the header's signatures name.
    #[tokio::test]
    async fn streamed_body_hashes_match_the_whole_message_ones() {
        let mut body = Vec::new();
        for i in 0..5000 {
            body.extend_from_slice(format!("line {i}  with \t spaces   \r\n").as_bytes());
            if i % 7 == 0 {
                body.extend_from_slice(b"\r\n");
            }
        }
        body.extend_from_slice(b"\r\n\r\n \r\n");
        let head = concat!(
            "DKIM-Signature: v=1; a=rsa-sha1; c=simple/simple; d=a.test; s=s; h=from; bh=AA==; b=AA==\r\n",
            "ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/simple; d=b.test; s=s; h=from; bh=AA==; b=AA==\r\n",
            "From: a@a.test\r\n\r\n"
        );
        let mut whole = head.as_bytes().to_vec();
        whole.extend_from_slice(&body);
        let reference = AuthenticatedMessage::parse(&whole).unwrap();
        let (got_head, got) = read(reader(&whole)).await.unwrap();
        assert_eq!(got_head, head.as_bytes());
        for (c, h, _, bh) in &reference.body_hashes {
            let ours = got
                .iter()
                .find(|(gc, gh, _)| gc == c && gh == h)
                .unwrap_or_else(|| panic!("no streamed hash for {c:?} {h:?}"));
            assert_eq!(&ours.2, bh, "{c:?} {h:?}");
        }
        assert!(
            got.iter()
                .any(|(c, h, _)| *c == Canonicalization::Relaxed && *h == HashAlgorithm::Sha256)
        );
        // Chunked reads: the same hashes.
        struct Trickle(std::io::Cursor<Vec<u8>>, usize);
        impl tokio::io::AsyncRead for Trickle {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let n = self.1.min(buf.remaining());
                let mut tmp = vec![0; n];
                let got = std::io::Read::read(&mut self.0, &mut tmp)?;
                buf.put_slice(&tmp[..got]);
                std::task::Poll::Ready(Ok(()))
            }
        }
        for step in [1, 7, 4096] {
            let (h2, got2) = read(Box::new(Trickle(std::io::Cursor::new(whole.clone()), step)))
                .await
                .unwrap();
            assert_eq!(h2, got_head, "step {step}");
            assert_eq!(got2, got, "step {step}");
        }
    }

    #[tokio::test]
    async fn a_header_past_the_cap_is_not_read_on() {
        let mut m = b"X-Long: ".to_vec();
        m.extend(std::iter::repeat_n(b'a', HEADER_CAP + 10));
        m.extend_from_slice(b"\r\n\r\nbody\r\n");
        assert_eq!(read(reader(&m)).await.unwrap_err(), Skip::LongHeader);
    }
}
