//! TLS for TCP 1500: the staging server's identity (a self-signed certificate generated on
//! first start and kept, and the pairing token), and the client's fingerprint pinning (the
//! shared `godwit-trust` verifier).
//! TLS 1.3 and 1.2 only, one crypto provider (ring).

use crate::digest::Fingerprint;
use crate::error::{Error, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
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

/// What `godwit staging serve` keeps in its data directory: its certificate and key. (Tokens
/// are kept in the store, so every server over one store accepts the same ones.)
pub struct ServerIdentity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl ServerIdentity {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// Load `DIR/tls/{cert,key}.der`, creating them (key mode 0600) on first start. Servers
    /// that share a fingerprint (one DNS name for several servers) share this directory's
    /// `tls/` (copied, mode 0600).
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
        Ok(ServerIdentity { cert_der, key_der })
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

/// The token in `DIR/token` (mode 0600): the first token a staging server issued, or one from
/// before tokens were kept in the store.
pub fn read_token_file(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("token");
    match fs::read_to_string(&p) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(p.display().to_string(), "read", e)),
    }
}

pub fn write_token_file(dir: &Path, token: &str) -> Result<()> {
    write_private(&dir.join("token"), format!("{token}\n").as_bytes())
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

/// What the pinned verifier saw: the fingerprint of the certificate the server presented, so a
/// mismatch can be reported plainly. The verifier itself is the shared
/// [`godwit_trust::PinnedVerifier`].
#[derive(Debug, Default)]
pub struct PinnedVerifier {
    pub seen: Arc<Mutex<Option<Fingerprint>>>,
}

/// A client configuration that trusts only the certificates with these fingerprints.
pub fn client_config(
    pins: &[Fingerprint],
) -> Result<(Arc<rustls::ClientConfig>, Arc<PinnedVerifier>)> {
    let p = provider();
    let seen = PinnedVerifier::default();
    let record = seen.seen.clone();
    let verifier = godwit_trust::PinnedVerifier::with_hook(
        pins.iter()
            .map(|p| godwit_trust::Fingerprint(p.0))
            .collect(),
        move |fp| {
            if let Ok(mut s) = record.lock() {
                *s = Some(Fingerprint(fp.0));
            }
        },
    );
    let cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok((Arc::new(cfg), Arc::new(seen)))
}
