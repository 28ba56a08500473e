//! The HTTPS listener's identity while the service runs: the certificate it serves now, and
//! replacing it by upload without a restart (rustls' config is swapped under the listener;
//! connections already open keep the old one until they close).

use super::tls::Identity;
use super::tls_upload::CheckedUpload;
use axum_server::tls_rustls::RustlsConfig;
use godwit_webui::backend::HttpsCertificateView;
use std::path::PathBuf;

pub struct HttpsIdentity {
    dir: PathBuf,
    identity: Identity,
    tls: RustlsConfig,
}

impl HttpsIdentity {
    /// `dir` is where [`Identity`] keeps its files (`DATA/tls`); `tls` is the listener's config.
    pub fn new(dir: PathBuf, identity: Identity, tls: RustlsConfig) -> Self {
        HttpsIdentity { dir, identity, tls }
    }

    /// The DER leaf certificate served now (what a Hyper-V host's uploader pins).
    pub fn leaf_der(&self) -> &[u8] {
        self.identity.leaf_der()
    }

    pub fn view(&self) -> HttpsCertificateView {
        self.identity.view()
    }

    /// Keep the upload, then serve it. Nothing changes when either step fails.
    pub fn install(&mut self, upload: CheckedUpload) -> anyhow::Result<HttpsCertificateView> {
        let id = Identity::install(&self.dir, upload)?;
        let cfg = id.server_config()?;
        self.tls.reload_from_config(cfg);
        self.identity = id;
        Ok(self.identity.view())
    }
}
