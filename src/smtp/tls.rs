//! rustls configuration for both directions.
//!
//! Server side: the certificate and key from `[tls]` for STARTTLS on our listener.
//! Client side: the primary's certificate is verified against the system roots plus an
//! optional `primary.ca_file`. With `tls = "required"` a certificate that does not verify
//! fails the handshake; with `opportunistic` it is used anyway and the failure noted
//! ([`CertNote`]): encrypted without authentication beats plain text, as Postfix's `may`
//! does. `primary.tls_verify = false` checks no certificate (a self-signed primary).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// A TLS setup problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Pem {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            message: "no certificate (PEM `BEGIN CERTIFICATE`) found".into(),
        });
    }
    Ok(certs)
}

/// Server config for STARTTLS from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(cert)?;
    let key_pem = read(key)?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: key.to_path_buf(),
            message: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: key.to_path_buf(),
            message: "no private key found".into(),
        })?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    Ok(Arc::new(cfg))
}

/// How the primary's certificate counts for one handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertPolicy {
    /// A certificate that does not verify fails the handshake (`tls = "required"`).
    Verify,
    /// A certificate that does not verify is used anyway, and the failure noted: the
    /// session is encrypted, not authenticated (`tls = "opportunistic"`, as Postfix's
    /// `may`; never plain text because of a certificate).
    Encrypt,
}

/// Client side towards the primary: the trust roots, loaded once, and a fresh rustls
/// config per handshake that notes whether the certificate verified.
#[derive(Clone)]
pub struct ClientTls {
    /// `None` with `tls_verify = false`: no certificate is checked.
    verifier: Option<Result<Arc<WebPkiServerVerifier>, String>>,
}

/// What became of the primary's certificate in one handshake.
#[derive(Debug, Default)]
pub struct CertNote(Mutex<Option<Result<(), String>>>);

impl CertNote {
    /// `Some(Ok)` verified, `Some(Err(why))` used without verifying, `None` not checked
    /// (`tls_verify = false`) or no handshake.
    pub fn outcome(&self) -> Option<Result<(), String>> {
        self.0.lock().map(|g| g.clone()).unwrap_or(None)
    }
    fn set(&self, r: Result<(), String>) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(r);
        }
    }
}

impl ClientTls {
    /// Trust the system roots plus `ca_file`, or check nothing when `verify` is false.
    pub fn new(verify: bool, ca_file: Option<&Path>) -> Result<Self, TlsError> {
        if !verify {
            return Ok(ClientTls { verifier: None });
        }
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_file {
            for cert in certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            }
        }
        // No roots at all is a verification failure at each handshake, not a setup error:
        // `opportunistic` still encrypts.
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("no trusted certificate authorities ({e})"));
        Ok(ClientTls {
            verifier: Some(verifier),
        })
    }

    /// A config for one handshake under `policy`, and the note it fills in.
    pub fn config(
        &self,
        policy: CertPolicy,
    ) -> Result<(Arc<ClientConfig>, Arc<CertNote>), TlsError> {
        let note = Arc::new(CertNote::default());
        let checker = Checked {
            verifier: self.verifier.clone(),
            policy,
            note: note.clone(),
            provider: provider(),
        };
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(checker))
            .with_no_client_auth();
        Ok((Arc::new(cfg), note))
    }
}

/// The primary's certificate checked as [`CertPolicy`] says; the handshake signatures
/// are always checked against the certificate's key.
#[derive(Debug)]
struct Checked {
    verifier: Option<Result<Arc<WebPkiServerVerifier>, String>>,
    policy: CertPolicy,
    note: Arc<CertNote>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let checked = match &self.verifier {
            None => return Ok(ServerCertVerified::assertion()),
            Some(Err(why)) => Err((
                why.clone(),
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            )),
            Some(Ok(v)) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| (e.to_string(), e)),
        };
        match checked {
            Ok(ok) => {
                self.note.set(Ok(()));
                Ok(ok)
            }
            Err((_, e)) if self.policy == CertPolicy::Verify => Err(e),
            Err((why, _)) => {
                self.note.set(Err(why));
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
