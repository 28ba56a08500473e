//! The HTTPS listener's identity while the service runs: the certificate it serves now, and
//! replacing it by upload — or renewing a generated one near its end — without a restart
//! (rustls' config is swapped under the listener; connections already open keep the old one
//! until they close).

use super::tls::Identity;
use super::tls_upload::CheckedUpload;
use axum_server::tls_rustls::RustlsConfig;
use godwit_webui::backend::HttpsCertificateView;
use std::path::PathBuf;

pub struct HttpsIdentity {
    dir: PathBuf,
    /// What a generated certificate names (host names and addresses).
    names: Vec<String>,
    identity: Identity,
    tls: RustlsConfig,
}

impl HttpsIdentity {
    /// `dir` is where [`Identity`] keeps its files (`DATA/tls`); `names` what a generated
    /// certificate covers; `tls` is the listener's config.
    pub fn new(dir: PathBuf, names: Vec<String>, identity: Identity, tls: RustlsConfig) -> Self {
        HttpsIdentity {
            dir,
            names,
            identity,
            tls,
        }
    }

    /// Generate and serve a new certificate when the generated one is due (see
    /// [`Identity::renewal_reason`]); returns the new view when it did.
    pub fn renew_if_due(&mut self) -> super::tls::Result<Option<HttpsCertificateView>> {
        let Some(why) = self.identity.renewal_reason(std::time::SystemTime::now()) else {
            return Ok(None);
        };
        let id = Identity::regenerate(&self.dir, &self.names)?;
        let cfg = id.server_config()?;
        self.tls.reload_from_config(cfg);
        tracing::warn!(
            old = %self.identity.fingerprint(),
            new = %id.fingerprint(),
            "renewed the HTTPS certificate ({why}); its fingerprint changed"
        );
        self.identity = id;
        Ok(Some(self.identity.view()))
    }

    /// The DER leaf certificate served now (what a Hyper-V host's uploader pins).
    pub fn leaf_der(&self) -> &[u8] {
        self.identity.leaf_der()
    }

    pub fn view(&self) -> HttpsCertificateView {
        self.identity.view()
    }

    /// Keep the upload, then serve it. Nothing changes when either step fails.
    pub fn install(&mut self, upload: CheckedUpload) -> super::tls::Result<HttpsCertificateView> {
        let id = Identity::install(&self.dir, upload)?;
        let cfg = id.server_config()?;
        self.tls.reload_from_config(cfg);
        self.identity = id;
        Ok(self.identity.view())
    }
}
