//! `POST /api/v1/update` (issue 18, settings): an update bundle uploaded from the settings page
//! or a script. The body is streamed to `DATA/updates/upload-<random>.bundle` (O_EXCL, 0600;
//! at most [`godwit_image::bundle::MAX_BUNDLE`] bytes, refused as soon as it grows past that),
//! then the whole bundle is verified — the signed header against the update key, every file's
//! SHA-256, no trailing bytes — before anything is installed. Only on the appliance does the
//! binary plug in an [`InstallUpdate`] (the inactive A/B slot, one trial boot); elsewhere the
//! service answers what it verified and that it installs nothing here. The upload file is
//! removed in every case once the answer is known. One upload at a time.

use crate::Appliance;
use futures::StreamExt;
use godwit_image::bundle;
use godwit_webui::backend::{CommandError, CommandResult, UpdateView};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// What installs a verified bundle on the appliance (the binary's `system::update`).
pub trait InstallUpdate: Send + Sync + std::fmt::Debug {
    /// Install the verified bundle at `bundle` (blocking) and arrange the restart; the message
    /// says what was done.
    fn install(&self, bundle: &Path) -> Result<String, String>;
}

/// The service's update settings and the one-upload-at-a-time lock.
pub struct Updates {
    /// The Ed25519 public key bundles must be signed with (`--update-key`; on the appliance
    /// `/etc/godwit/update.pub`). Without it nothing can be verified, so uploads are refused.
    pub key: Option<PathBuf>,
    pub installer: Option<Arc<dyn InstallUpdate>>,
    busy: tokio::sync::Mutex<()>,
}

impl Updates {
    pub fn new(key: Option<PathBuf>, installer: Option<Arc<dyn InstallUpdate>>) -> Self {
        Updates {
            key,
            installer,
            busy: tokio::sync::Mutex::new(()),
        }
    }
}

fn too_large(n: u64) -> CommandError {
    CommandError::field(
        "bundle",
        format!(
            "the upload is {n} bytes or more, larger than an update bundle can be ({} bytes: a kernel and an initramfs of at most {} MiB each)",
            bundle::MAX_BUNDLE,
            bundle::MAX_FILE >> 20
        ),
    )
}

fn internal(what: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::Internal {
        message: format!("{what}: {e}"),
    }
}

impl Appliance {
    /// Receive, verify and (on the appliance) install an update bundle. `declared` is the
    /// request's Content-Length, refused at once when over the cap.
    pub(crate) async fn receive_update(
        &self,
        body: axum::body::Body,
        declared: Option<u64>,
    ) -> CommandResult<UpdateView> {
        let updates = &self.updates;
        let Some(key_path) = updates.key.clone() else {
            return Err(CommandError::Conflict {
                message: "this service has no update key, so no bundle can be verified here: update bundles are uploaded to the appliance (or start godwit serve with --update-key FILE)".into(),
            });
        };
        if let Some(n) = declared
            && n > bundle::MAX_BUNDLE
        {
            return Err(too_large(n));
        }
        let Ok(_guard) = updates.busy.try_lock() else {
            return Err(CommandError::Conflict {
                message: "another update bundle is being uploaded or installed; try again when it is done".into(),
            });
        };
        let key_text = tokio::fs::read_to_string(&key_path)
            .await
            .map_err(|e| internal(&format!("reading the update key {}", key_path.display()), e))?;
        let key = bundle::parse_public_key(&key_text)
            .map_err(|e| internal(&format!("the update key {}", key_path.display()), e))?;
        let dir = self.cfg.data.join("updates");
        std::fs::create_dir_all(&dir).map_err(|e| internal(&dir.display().to_string(), e))?;
        let rnd: [u8; 8] = rand::random();
        let name =
            godwit_safepath::Component::parse(&format!("upload-{}.bundle", hex::encode(rnd)))
                .map_err(|e| internal("upload file name", e))?;
        let path = name.join_to(&dir);
        let file = godwit_safepath::create_new(&dir, &name)
            .map_err(|e| internal(&path.display().to_string(), e))?;
        let result = self.verify_upload(body, file, &path, key).await;
        let out = match result {
            Err(e) => Err(e),
            Ok((header, bytes)) => self.install_verified(&path, header, bytes).await,
        };
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "removing the uploaded bundle: {e}");
        }
        match &out {
            Ok(v) => tracing::info!(
                version = %v.version,
                bytes = v.bytes,
                installed = v.installed,
                "update bundle uploaded and verified"
            ),
            Err(e) => tracing::warn!("an uploaded update bundle was refused: {e}"),
        }
        out
    }

    /// Stream the body into `file` (capped), then verify the whole bundle.
    async fn verify_upload(
        &self,
        body: axum::body::Body,
        file: std::fs::File,
        path: &Path,
        key: [u8; 32],
    ) -> CommandResult<(bundle::Header, u64)> {
        let mut f = tokio::fs::File::from_std(file);
        let mut stream = body.into_data_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                CommandError::field(
                    "bundle",
                    format!("the upload broke off after {n} bytes: {e}"),
                )
            })?;
            n = n.saturating_add(chunk.len() as u64);
            if n > bundle::MAX_BUNDLE {
                return Err(too_large(n));
            }
            f.write_all(&chunk)
                .await
                .map_err(|e| internal(&format!("writing {}", path.display()), e))?;
        }
        f.sync_all()
            .await
            .map_err(|e| internal(&format!("writing {}", path.display()), e))?;
        drop(f);
        if n == 0 {
            return Err(CommandError::field(
                "bundle",
                "the upload is empty: choose a Godwit update bundle (.bundle)",
            ));
        }
        let p = path.to_path_buf();
        let header = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&p)?;
            Ok::<_, std::io::Error>(bundle::verify(
                &mut std::io::BufReader::with_capacity(1 << 20, f),
                &key,
            ))
        })
        .await
        .map_err(|e| internal("verifying the bundle", e))?
        .map_err(|e| internal(&format!("reading {}", path.display()), e))?
        .map_err(|e| CommandError::field("bundle", format!("refused: {e}")))?;
        Ok((header, n))
    }

    async fn install_verified(
        &self,
        path: &Path,
        header: bundle::Header,
        bytes: u64,
    ) -> CommandResult<UpdateView> {
        let files = header.files.iter().map(|f| f.name.clone()).collect();
        let Some(installer) = self.updates.installer.clone() else {
            return Ok(UpdateView {
                version: header.version,
                bytes,
                files,
                installed: false,
                message: "verified (signed with the update key; every file's SHA-256 matches) but not installed: this service does not run on the appliance. There the bundle is written to the inactive system slot and the next boot tries it once.".into(),
            });
        };
        let p = path.to_path_buf();
        let message = tokio::task::spawn_blocking(move || installer.install(&p))
            .await
            .map_err(|e| internal("installing the bundle", e))?
            .map_err(|e| CommandError::Internal {
                message: format!("the verified bundle could not be installed: {e}"),
            })?;
        Ok(UpdateView {
            version: header.version,
            bytes,
            files,
            installed: true,
            message,
        })
    }
}
