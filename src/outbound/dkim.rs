//! DKIM signatures on mail to outside recipients (`relay` and `direct` modes; SES signs
//! with the domain's Easy DKIM itself), made by mail-auth.
//!
//! The signing domain is the domain of the message's `From` (what DMARC aligns with):
//! its `[[outbound.dkim]]` keys when it has some, else the shared `[outbound]
//! dkim_selector`/`dkim_key` when it is one of `domains`. RSA-SHA256 always; an Ed25519
//! key signs in addition (many receivers do not verify Ed25519 yet). Relaxed/relaxed
//! canonicalisation, the headers a reader sees signed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use crate::config::Config;

/// The headers signed (those present); the ARC seal's too (`super::arc`).
pub(crate) const SIGNED: [&str; 12] = [
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

/// A DKIM key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("DKIM key {}: {message}", path.display())]
pub struct DkimError {
    pub path: PathBuf,
    pub message: String,
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Result<String, mail_auth::Error> {
        Ok(match self {
            Signer::Rsa(s) => s.sign(message)?.to_header(),
            Signer::Ed25519(s) => s.sign(message)?.to_header(),
        })
    }
}

/// One signing key of a domain.
struct Keyed {
    selector: String,
    /// The public key as DNS publishes it (`p=`, decoded): RSA as PKCS#1, Ed25519 raw.
    public: Vec<u8>,
    signer: Signer,
}

/// What must be published for one key: at `<selector>._domainkey.<domain>`, `k=` and
/// the public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub domain: String,
    pub selector: String,
    /// `rsa` or `ed25519`.
    pub kind: &'static str,
    /// RSA: PKCS#1 DER (a `p=` in SubjectPublicKeyInfo form ends with it); Ed25519: the
    /// 32 raw bytes.
    pub public: Vec<u8>,
}

/// The signing keys, by domain (lower case).
pub struct DkimKeys {
    by_domain: HashMap<String, Vec<Keyed>>,
}

impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut domains: Vec<&String> = self.by_domain.keys().collect();
        domains.sort();
        f.debug_struct("DkimKeys")
            .field("domains", &domains)
            .finish()
    }
}

/// The signer of `key` for `domain` and `selector`, with this module's settings.
fn builder<T: mail_auth::common::crypto::SigningKey>(
    key: T,
    domain: &str,
    selector: &str,
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

fn signer(domain: &str, selector: &str, path: &Path) -> Result<Keyed, DkimError> {
    let err = |message: String| DkimError {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let build_rsa = |key: RsaKey<Sha256>| Keyed {
        selector: selector.to_string(),
        public: key.public_key(),
        signer: Signer::Rsa(builder(key, domain, selector)),
    };
    // PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE KEY`, RSA or Ed25519 as
    // `openssl genpkey -algorithm ed25519` writes it).
    let der = rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| err("no private key in PEM format".into()))?;
    if let Ok(key) = RsaKey::<Sha256>::from_key_der(der.clone_key()) {
        return Ok(build_rsa(key));
    }
    let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_der()).map_err(|e| {
        err(format!(
            "neither an RSA key of 2048 bits or more nor an Ed25519 key: {e}"
        ))
    })?;
    Ok(Keyed {
        selector: selector.to_string(),
        public: key.public_key(),
        signer: Signer::Ed25519(builder(key, domain, selector)),
    })
}

impl DkimKeys {
    /// The keys `[outbound]` names; `None` when it names none.
    ///
    /// # Errors
    /// A key file that cannot be read or is no RSA or Ed25519 private key; a domain whose
    /// keys are Ed25519 only.
    pub fn load(config: &Config) -> Result<Option<DkimKeys>, DkimError> {
        let o = &config.outbound;
        let mut by_domain: HashMap<String, Vec<Keyed>> = HashMap::new();
        for k in &o.dkim {
            let d = k.domain.to_ascii_lowercase();
            let s = signer(&d, &k.selector, &k.key)?;
            by_domain.entry(d).or_default().push(s);
        }
        if let (Some(selector), Some(key)) = (&o.dkim_selector, &o.dkim_key) {
            for d in &config.domains {
                let d = d.to_ascii_lowercase();
                if !by_domain.contains_key(&d) {
                    by_domain.insert(d.clone(), vec![signer(&d, selector, key)?]);
                }
            }
        }
        for (d, signers) in &mut by_domain {
            if !signers.iter().any(|s| matches!(s.signer, Signer::Rsa(_))) {
                return Err(DkimError {
                    path: o
                        .dkim
                        .iter()
                        .find(|k| k.domain.eq_ignore_ascii_case(d))
                        .map(|k| k.key.clone())
                        .unwrap_or_default(),
                    message: format!(
                        "{d} has only Ed25519 keys; it needs an RSA key too (many receivers verify only RSA)"
                    ),
                });
            }
            // RSA first: the signature most receivers check comes on top.
            signers.sort_by_key(|s| matches!(s.signer, Signer::Ed25519(_)));
        }
        Ok((!by_domain.is_empty()).then_some(DkimKeys { by_domain }))
    }

    /// Every key and where it must be published, by domain then selector.
    pub fn published(&self) -> Vec<Published> {
        let mut out: Vec<Published> = self
            .by_domain
            .iter()
            .flat_map(|(d, keys)| {
                keys.iter().map(move |k| Published {
                    domain: d.clone(),
                    selector: k.selector.clone(),
                    kind: match k.signer {
                        Signer::Rsa(_) => "rsa",
                        Signer::Ed25519(_) => "ed25519",
                    },
                    public: k.public.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.domain, &a.selector).cmp(&(&b.domain, &b.selector)));
        out
    }

    /// `message` with its signatures on top; unchanged (logged) when its `From` domain
    /// has no key or signing fails.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let Some(domain) = from_domain(message) else {
            tracing::warn!("outbound message without a From address: not DKIM-signed");
            return message.to_vec();
        };
        let Some(signers) = self.by_domain.get(&domain) else {
            tracing::warn!(domain = %domain, "no DKIM key for the From domain: sent unsigned");
            return message.to_vec();
        };
        let mut head = String::new();
        for s in signers {
            match s.signer.sign(message) {
                Ok(h) => head.push_str(&h),
                Err(e) => {
                    tracing::error!(domain = %domain, error = %e, "DKIM signing failed: sent without this signature");
                }
            }
        }
        let mut out = Vec::with_capacity(head.len() + message.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(message);
        out
    }
}

/// The domain of the first `From` address, lower case.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let addr = parsed.from()?.first()?.address()?.to_string();
    addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}
