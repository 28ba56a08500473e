//! The service's HTTPS identity: a self-signed certificate generated on first start and kept in
//! `DATA/tls/` (key mode 0600), or a certificate an administrator uploaded
//! (`DATA/tls/installed.pem`: the chain and the key, 0600, written atomically), which wins
//! while it loads. An uploaded file that no longer loads is reported and the generated
//! certificate is served instead, so the web UI stays reachable to fix it.

use super::tls_upload::{CheckedUpload, describe};
use anyhow::Context;
use godwit_webui::backend::HttpsCertificateView;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

/// The uploaded chain and key, one PEM file.
pub const INSTALLED_FILE: &str = "installed.pem";

pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    uploaded: bool,
}

impl Identity {
    /// `SHA256:<hex>` of the DER leaf certificate.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", hex::encode(Sha256::digest(self.leaf_der())))
    }

    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map_or(&[][..], |c| c.as_ref())
    }

    /// Load the uploaded certificate when there is one that loads, else `dir/{cert,key}.der`,
    /// creating them on first start for `names` (host names and IP addresses to cover).
    pub fn load_or_create(dir: &Path, names: &[String]) -> anyhow::Result<Identity> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let installed = dir.join(INSTALLED_FILE);
        if installed.exists() {
            match load_installed(&installed) {
                Ok(id) => return Ok(id),
                Err(e) => tracing::error!(
                    "the uploaded HTTPS certificate in {} does not load ({e:#}); serving the generated one",
                    installed.display()
                ),
            }
        }
        let cert_p = dir.join("cert.der");
        let key_p = dir.join("key.der");
        if !cert_p.exists() || !key_p.exists() {
            let ck = rcgen::generate_simple_self_signed(names.to_vec())
                .context("generating the HTTPS certificate")?;
            write_private(&key_p, &ck.signing_key.serialize_der())?;
            write_private(&cert_p, ck.cert.der())?;
            tracing::info!("generated the HTTPS certificate in {}", dir.display());
        }
        let cert =
            std::fs::read(&cert_p).with_context(|| format!("reading {}", cert_p.display()))?;
        let key = std::fs::read(&key_p).with_context(|| format!("reading {}", key_p.display()))?;
        Ok(Identity {
            chain: vec![CertificateDer::from(cert)],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            uploaded: false,
        })
    }

    /// Keep a checked upload in `dir` (atomically, 0600) and return it as the identity.
    pub fn install(dir: &Path, upload: CheckedUpload) -> anyhow::Result<Identity> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut pem = Vec::new();
        for c in &upload.chain {
            pem.extend_from_slice(pem_block("CERTIFICATE", c.as_ref()).as_bytes());
        }
        let label = match &upload.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        pem.extend_from_slice(pem_block(label, upload.key.secret_der()).as_bytes());
        let path = dir.join(INSTALLED_FILE);
        let tmp = dir.join(format!("{INSTALLED_FILE}.tmp"));
        write_private(&tmp, &pem)?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok(Identity {
            chain: upload.chain,
            key: upload.key,
            uploaded: true,
        })
    }

    /// What the settings page and the API show.
    pub fn view(&self) -> HttpsCertificateView {
        describe(&self.chain, self.uploaded)
    }

    /// A rustls server config (ring, TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.key.clone_key())
        .context("the HTTPS certificate or key is not usable")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

fn load_installed(path: &Path) -> anyhow::Result<Identity> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("certificates: {e:?}"))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate");
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| anyhow::anyhow!("key: {e:?}"))?;
    let id = Identity {
        chain,
        key,
        uploaded: true,
    };
    id.server_config()?;
    Ok(id)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
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
        assert!(!a.view().uploaded);
        let mode = std::fs::metadata(dir.path().join("key.der"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = rustls::crypto::ring::default_provider().install_default();
        a.server_config().unwrap();
    }

    #[test]
    fn an_installed_certificate_wins_and_a_broken_one_falls_back() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let generated = Identity::load_or_create(dir.path(), &names).unwrap();
        let (cert_pem, key_pem) = super::super::tls_upload::tests::leaf_signed_by_a_ca();
        let up = super::super::tls_upload::check(&cert_pem, &key_pem, std::time::SystemTime::now())
            .unwrap();
        let installed = Identity::install(dir.path(), up).unwrap();
        assert!(installed.view().uploaded);
        assert_eq!(installed.view().chain_length, 2);
        let p = dir.path().join(INSTALLED_FILE);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Identity::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(again.fingerprint(), installed.fingerprint());
        assert_ne!(again.fingerprint(), generated.fingerprint());
        again.server_config().unwrap();
        // A damaged file: the generated certificate is served, not an outage.
        std::fs::write(&p, b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        let fallback = Identity::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(fallback.fingerprint(), generated.fingerprint());
    }
}
