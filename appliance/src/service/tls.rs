//! The service's HTTPS identity: a self-signed certificate generated on first start and kept in
//! `DATA/tls/` (key mode 0600), and its SHA-256 fingerprint as printed on the console.

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

pub struct Identity {
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Identity {
    /// `SHA256:<hex>` of the DER certificate.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", hex::encode(Sha256::digest(&self.cert_der)))
    }

    /// Load `dir/{cert,key}.der`, creating them on first start for `names` (host names and
    /// IP addresses the certificate should cover).
    pub fn load_or_create(dir: &Path, names: &[String]) -> anyhow::Result<Identity> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cert_p = dir.join("cert.der");
        let key_p = dir.join("key.der");
        if !cert_p.exists() || !key_p.exists() {
            let ck = rcgen::generate_simple_self_signed(names.to_vec())
                .context("generating the HTTPS certificate")?;
            write_private(&key_p, &ck.signing_key.serialize_der())?;
            write_private(&cert_p, ck.cert.der())?;
            tracing::info!("generated the HTTPS certificate in {}", dir.display());
        }
        Ok(Identity {
            cert_der: std::fs::read(&cert_p)
                .with_context(|| format!("reading {}", cert_p.display()))?,
            key_der: std::fs::read(&key_p)
                .with_context(|| format!("reading {}", key_p.display()))?,
        })
    }

    /// A rustls server config (ring, TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(self.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
        .context("the HTTPS certificate or key is not usable")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn write_private(p: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("creating {}", p.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = Identity::load_or_create(dir.path(), &names).unwrap();
        let b = Identity::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 71);
        let mode = std::fs::metadata(dir.path().join("key.der"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = rustls::crypto::ring::default_provider().install_default();
        a.server_config().unwrap();
    }
}
