//! TLS for TCP 1500: the staging server's identity (a self-signed certificate generated on
//! first start and kept, and the pairing token), and the client's fingerprint pinning.
//! TLS 1.3 and 1.2 only, one crypto provider (ring).

use crate::digest::Fingerprint;
use crate::error::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What `godwit staging serve` keeps in its data directory.
pub struct ServerIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub token: String,
}

impl ServerIdentity {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// Load `DIR/tls/{cert,key}.der` and `DIR/token`, creating them (key and token mode 0600)
    /// on first start.
    pub fn load_or_create(dir: &Path) -> Result<ServerIdentity> {
        let tls = dir.join("tls");
        fs::create_dir_all(&tls).map_err(|e| Error::io(tls.display().to_string(), "create", e))?;
        let cert_p = tls.join("cert.der");
        let key_p = tls.join("key.der");
        if !cert_p.exists() || !key_p.exists() {
            let ck = rcgen::generate_simple_self_signed(vec!["godwit-staging".to_string()])
                .map_err(|e| Error::Usage(format!("generating the server certificate: {e}")))?;
            write_private(&key_p, &ck.signing_key.serialize_der())?;
            write_private(&cert_p, ck.cert.der())?;
        }
        let cert_der =
            fs::read(&cert_p).map_err(|e| Error::io(cert_p.display().to_string(), "read", e))?;
        let key_der =
            fs::read(&key_p).map_err(|e| Error::io(key_p.display().to_string(), "read", e))?;
        let tok_p = dir.join("token");
        if !tok_p.exists() {
            let t: [u8; 24] = rand::random();
            write_private(&tok_p, format!("{}\n", hex::encode(t)).as_bytes())?;
        }
        let token = fs::read_to_string(&tok_p)
            .map_err(|e| Error::io(tok_p.display().to_string(), "read", e))?
            .trim()
            .to_string();
        if token.len() < 16 {
            return Err(Error::Usage(format!(
                "{}: the pairing token must be at least 16 characters",
                tok_p.display()
            )));
        }
        Ok(ServerIdentity {
            cert_der,
            key_der,
            token,
        })
    }

    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| Error::Usage(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(self.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .map_err(|e| Error::Usage(format!("TLS certificate: {e}")))?;
        Ok(Arc::new(cfg))
    }
}

fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    let what = p.display().to_string();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| Error::io(&what, "create", e))?;
    f.write_all(data)
        .map_err(|e| Error::io(&what, "write", e))?;
    f.sync_all().map_err(|e| Error::io(&what, "fsync", e))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(&what, "chmod", e))
}

/// Accepts exactly one server certificate: the one whose SHA-256 is pinned. Remembers what it
/// saw so a mismatch can be reported plainly.
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
    pub seen: Mutex<Option<Fingerprint>>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_der(end_entity);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(got);
        }
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

/// A client configuration that trusts only the certificate with fingerprint `pin`.
pub fn client_config(pin: Fingerprint) -> Result<(Arc<rustls::ClientConfig>, Arc<PinnedVerifier>)> {
    let p = provider();
    let verifier = Arc::new(PinnedVerifier {
        pin,
        provider: p.clone(),
        seen: Mutex::new(None),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((Arc::new(cfg), verifier))
}
