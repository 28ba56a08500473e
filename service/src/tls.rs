//! The service's HTTPS identity: a self-signed certificate generated on first start and kept in
//! `DATA/tls/` (key mode 0600), or a certificate an administrator uploaded
//! (`DATA/tls/installed.pem`: the chain and the key, 0600, written atomically), which wins
//! while it loads. An uploaded file that no longer loads is reported and the generated
//! certificate is served instead, so the web UI stays reachable to fix it.
//!
//! A generated certificate is valid for [`GENERATED_VALIDITY_DAYS`] (from a day before it was
//! made) and is generated anew [`RENEWAL_NOTICE_DAYS`] before it ends — at start, or live by
//! [`super::https_identity::HttpsIdentity::renew_if_due`] — and so is one valid for longer
//! than that bound (made by an older version, valid 1975–4096).

use super::tls_upload::{CheckedUpload, describe};
use godwit_webui::backend::{HttpsCertificateView, RENEWAL_NOTICE_DAYS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why the HTTPS identity could not be made, loaded, kept or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A step failed: what was being done, and the file system's or library's reason.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file holds something unusable.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, TlsError>;

/// `map_err` for a step named `what`.
fn ctx<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> TlsError {
    let what = what.into();
    move |e| TlsError::Failed {
        what,
        source: Box::new(e),
    }
}

/// The uploaded chain and key, one PEM file.
pub const INSTALLED_FILE: &str = "installed.pem";
/// How long a generated certificate is valid.
pub const GENERATED_VALIDITY_DAYS: u64 = 730;

pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    uploaded: bool,
}

impl Identity {
    /// `SHA256:AB:CD:…` of the DER leaf certificate (the one format, issue 18).
    pub fn fingerprint(&self) -> String {
        godwit_trust::Fingerprint::of_der(self.leaf_der()).to_string()
    }

    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map_or(&[][..], |c| c.as_ref())
    }

    /// Load the uploaded certificate when there is one that loads, else `dir/{cert,key}.der`,
    /// creating them on first start for `names` (host names and IP addresses to cover).
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Identity> {
        std::fs::create_dir_all(dir).map_err(ctx(format!("creating {}", dir.display())))?;
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
            generate(dir, names, SystemTime::now())?;
            tracing::info!("generated the HTTPS certificate in {}", dir.display());
        }
        let id = load_generated(dir)?;
        if let Some(why) = id.renewal_reason(SystemTime::now()) {
            generate(dir, names, SystemTime::now())?;
            let new = load_generated(dir)?;
            tracing::warn!(
                old = %id.fingerprint(),
                new = %new.fingerprint(),
                "renewed the HTTPS certificate ({why}); its fingerprint changed"
            );
            return Ok(new);
        }
        Ok(id)
    }

    /// Why a generated certificate must be generated anew now: it ends within
    /// [`RENEWAL_NOTICE_DAYS`], or it is valid for longer than [`GENERATED_VALIDITY_DAYS`].
    /// `None` for an uploaded one (the administrator renews it) or one that is fine.
    pub fn renewal_reason(&self, now: SystemTime) -> Option<String> {
        if self.uploaded {
            return None;
        }
        let leaf = self.leaf_der();
        let Ok(info) = godwit_netcheck::x509::parse_certificate(leaf) else {
            return Some("it cannot be read".into());
        };
        let now_s = i64::try_from(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
            .unwrap_or(i64::MAX);
        let days_left = (info.not_after.0 - now_s).div_euclid(86_400);
        let span = (info.not_after.0 - info.not_before.0).div_euclid(86_400);
        let bound = i64::try_from(GENERATED_VALIDITY_DAYS).unwrap_or(i64::MAX) + 2;
        if days_left < RENEWAL_NOTICE_DAYS {
            Some(format!("it expires in {days_left} days"))
        } else if span > bound {
            Some(format!(
                "valid for {span} days, longer than {GENERATED_VALIDITY_DAYS}"
            ))
        } else {
            None
        }
    }

    /// When the certificate served ends, `YYYY-MM-DD` (for the console).
    pub fn expiry_date(&self) -> String {
        let v = self.view();
        v.not_after.get(..10).unwrap_or(&v.not_after).to_string()
    }

    /// Generate a new certificate in `dir` for `names` and return it (a renewal).
    pub fn regenerate(dir: &Path, names: &[String]) -> Result<Identity> {
        generate(dir, names, SystemTime::now())?;
        load_generated(dir)
    }

    /// Keep a checked upload in `dir` (atomically, 0600) and return it as the identity.
    pub fn install(dir: &Path, upload: CheckedUpload) -> Result<Identity> {
        std::fs::create_dir_all(dir).map_err(ctx(format!("creating {}", dir.display())))?;
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
        std::fs::rename(&tmp, &path).map_err(ctx(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(ctx(format!("syncing {}", dir.display())))?;
        Ok(Identity {
            chain: upload.chain,
            key: upload.key,
            uploaded: true,
        })
    }

    /// What the settings page and the API show.
    pub fn view(&self) -> HttpsCertificateView {
        describe(&self.chain, self.uploaded, SystemTime::now())
    }

    /// A rustls server config (ring, TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ctx("TLS versions"))?
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.key.clone_key())
        .map_err(ctx("the HTTPS certificate or key is not usable"))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// A self-signed certificate for `names`, valid from a day before `now` for
/// [`GENERATED_VALIDITY_DAYS`], written to `dir/{key,cert}.der` (each replaced atomically,
/// the key first).
fn generate(dir: &Path, names: &[String], now: SystemTime) -> Result<()> {
    let mut p = rcgen::CertificateParams::new(names.to_vec())
        .map_err(ctx("the HTTPS certificate's names"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names.first().map_or("godwit", String::as_str),
    );
    dn.push(rcgen::DnType::OrganizationName, "Godwit appliance");
    p.distinguished_name = dn;
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs(secs.saturating_sub(86_400));
    p.not_after = epoch + Duration::from_secs(secs + GENERATED_VALIDITY_DAYS * 86_400);
    let key = rcgen::KeyPair::generate().map_err(ctx("generating the HTTPS key"))?;
    let cert = p
        .self_signed(&key)
        .map_err(ctx("generating the HTTPS certificate"))?;
    for (name, bytes) in [
        ("key.der", key.serialize_der()),
        ("cert.der", cert.der().to_vec()),
    ] {
        let tmp = dir.join(format!("{name}.tmp"));
        write_private(&tmp, &bytes)?;
        std::fs::rename(&tmp, dir.join(name))
            .map_err(ctx(format!("renaming {}", tmp.display())))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx(format!("syncing {}", dir.display())))
}

fn load_generated(dir: &Path) -> Result<Identity> {
    let cert_p = dir.join("cert.der");
    let key_p = dir.join("key.der");
    let cert = std::fs::read(&cert_p).map_err(ctx(format!("reading {}", cert_p.display())))?;
    let key = std::fs::read(&key_p).map_err(ctx(format!("reading {}", key_p.display())))?;
    Ok(Identity {
        chain: vec![CertificateDer::from(cert)],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        uploaded: false,
    })
}

fn load_installed(path: &Path) -> Result<Identity> {
    let pem = std::fs::read(path).map_err(ctx(format!("reading {}", path.display())))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(ctx("its certificates"))?;
    if chain.is_empty() {
        return Err(TlsError::Invalid("it holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(ctx("its private key"))?;
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

fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .map_err(ctx(format!("creating {}", p.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(ctx(format!("writing {}", p.display())))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
        .map_err(ctx(format!("chmod 0600 {}", p.display())))
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
        assert_eq!(a.fingerprint().len(), 7 + 32 * 3 - 1);
        assert!(a.fingerprint().starts_with("SHA256:"));
        assert_eq!(
            a.fingerprint()[7..].to_ascii_uppercase(),
            a.fingerprint()[7..]
        );
        assert_eq!(a.fingerprint().matches(':').count(), 32);
        assert!(!a.view().uploaded);
        // Valid two years (from a day before), not 1975-4096; nothing to renew.
        let v = a.view();
        assert!((728..=730).contains(&v.expires_in_days), "{v:?}");
        assert!(!v.renewal_due);
        assert!(a.renewal_reason(SystemTime::now()).is_none());
        let mode = std::fs::metadata(dir.path().join("key.der"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = rustls::crypto::ring::default_provider().install_default();
        a.server_config().unwrap();
    }

    #[test]
    fn a_generated_certificate_near_its_end_or_valid_too_long_is_renewed_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        // Made 710 days ago: 20 days left.
        let then = SystemTime::now() - Duration::from_secs(710 * 86_400);
        generate(dir.path(), &names, then).unwrap();
        let old = load_generated(dir.path()).unwrap();
        assert!(
            old.renewal_reason(SystemTime::now())
                .is_some_and(|r| r.contains("expires in")),
            "{:?}",
            old.renewal_reason(SystemTime::now())
        );
        let renewed = Identity::load_or_create(dir.path(), &names).unwrap();
        assert_ne!(renewed.fingerprint(), old.fingerprint());
        assert!(renewed.view().expires_in_days >= 728);
        // An old version's certificate, valid 1975-4096: replaced too.
        let ck = rcgen::generate_simple_self_signed(names.clone()).unwrap();
        write_private(&dir.path().join("cert.der"), ck.cert.der()).unwrap();
        write_private(&dir.path().join("key.der"), &ck.signing_key.serialize_der()).unwrap();
        let forever = load_generated(dir.path()).unwrap();
        assert!(
            forever
                .renewal_reason(SystemTime::now())
                .is_some_and(|r| r.contains("longer than 730"))
        );
        let bounded = Identity::load_or_create(dir.path(), &names).unwrap();
        assert_ne!(bounded.fingerprint(), forever.fingerprint());
        assert!(bounded.renewal_reason(SystemTime::now()).is_none());
    }

    #[test]
    fn an_installed_certificate_wins_and_a_broken_one_falls_back() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let generated = Identity::load_or_create(dir.path(), &names).unwrap();
        let (cert_pem, key_pem) = crate::tls_upload::tests::leaf_signed_by_a_ca();
        let up =
            crate::tls_upload::check(&cert_pem, &key_pem, std::time::SystemTime::now()).unwrap();
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
