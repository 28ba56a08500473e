//! The wizard's first commands: the admin password and the staging target (a staging server
//! paired now, or an S3 bucket checked now).

use crate::store::StagingRecord;
use crate::{Appliance, auth};
use godwit_transfer::replicate::Connect;
use godwit_transfer::target::Target;
use godwit_webui::backend::*;
use godwit_webui::validate::{Problems, authority, fingerprint, host_port};
use std::time::Duration;

/// Longest a staging server may take to accept the pairing during `set_staging`.
const STAGING_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl Appliance {
    pub(crate) async fn set_password(&self, cmd: SetAdminPassword) -> CommandResult<()> {
        let s = self.settings_now()?;
        // The shared policy first: a refused new password hashes nothing.
        let new = cmd
            .checked_new_password()
            .map_err(|fields| CommandError::Invalid { fields })?;
        let mut p = Problems::default();
        let (given, hash, field, wrong) = match &s.admin_password_hash {
            Some(h) => (
                cmd.current_password
                    .as_ref()
                    .map(|x| x.expose().to_string()),
                Some(h.clone()),
                "current_password",
                "wrong password",
            ),
            None => (
                cmd.setup_code
                    .as_ref()
                    .map(|c| auth::normalise_code(c.expose())),
                s.setup_code_hash.clone(),
                "setup_code",
                "wrong or already used setup code (it is printed on the console at start)",
            ),
        };
        let busy = || CommandError::Internal {
            message: "too many password checks at once; try again in a moment".into(),
        };
        let ok = match (given, hash.clone()) {
            (Some(g), Some(h)) if !g.is_empty() => self
                .hashes
                .run(auth::CHANGE_WAIT, move || auth::verify(&g, &h))
                .await
                .ok_or_else(busy)?,
            _ => false,
        };
        if !ok {
            p.add(field, wrong);
        }
        p.finish()?;
        let new = new.expose().to_string();
        let new_hash = self
            .hashes
            .run(auth::CHANGE_WAIT, move || auth::hash(&new))
            .await
            .ok_or_else(busy)?
            .map_err(|m| CommandError::Internal { message: m })?;
        self.store.update_settings(|st| {
            // The same code or password must still be in force (no concurrent change).
            let current = if st.admin_password_hash.is_some() {
                &st.admin_password_hash
            } else {
                &st.setup_code_hash
            };
            if *current != hash {
                return Err(CommandError::Conflict {
                    message: "the password was changed meanwhile; reload and try again".into(),
                });
            }
            st.admin_password_hash = Some(new_hash);
            st.setup_code_hash = None;
            Ok(())
        })?;
        tracing::info!("admin password set; every session logged in before was ended");
        Ok(())
    }

    pub(crate) async fn staging(&self, cmd: SetStagingTarget) -> CommandResult<()> {
        let mut p = Problems::default();
        let record = match cmd {
            SetStagingTarget::Server {
                address,
                fingerprint: fp,
                token,
            } => {
                let addr = host_port(&address, 1500)
                    .map(|(h, port)| authority(&h, port))
                    .map_err(|e| p.add("address", e))
                    .ok();
                let fp = fingerprint(&fp).map_err(|e| p.add("fingerprint", e)).ok();
                if token.expose().trim().is_empty() {
                    p.add("token", "required (printed by `godwit staging serve`)");
                }
                p.finish()?;
                let (Some(addr), Some(fp)) = (addr, fp) else {
                    return Err(CommandError::Internal {
                        message: "validation".into(),
                    });
                };
                let token = token.expose().trim().to_string();
                let target =
                    Target::parse(&format!("staging://{addr}"), Some(&fp), Some(token.clone()))
                        .map_err(|e| CommandError::field("address", e.to_string()))?;
                match tokio::time::timeout(STAGING_CONNECT_TIMEOUT, target.connect()).await {
                    Err(_) => {
                        return Err(CommandError::Remote {
                            message: format!("staging server {addr}: no answer within 15 s"),
                        });
                    }
                    Ok(Err(e)) => {
                        return Err(CommandError::Remote {
                            message: format!("staging server {addr}: {e}"),
                        });
                    }
                    Ok(Ok(_store)) => {}
                }
                // The wizard's one server; more are added on the settings page (issue 21).
                StagingRecord::Server {
                    servers: vec![crate::store::StagingServer {
                        address: addr,
                        fingerprint: fp,
                    }],
                    token,
                }
            }
            SetStagingTarget::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                access_key_id,
                secret_access_key,
            } => {
                let endpoint = endpoint.filter(|e| !e.trim().is_empty()).and_then(|e| {
                    godwit_webui::validate::s3_endpoint(&e)
                        .map_err(|m| p.add("endpoint", m))
                        .ok()
                });
                if let Err(m) = godwit_webui::validate::s3_region(&region) {
                    p.add("region", m);
                }
                if let Err(m) = godwit_webui::validate::printable(&prefix, 512) {
                    p.add("prefix", m);
                }
                if let Err(m) = godwit_webui::validate::printable(&access_key_id, 128) {
                    p.add("access_key_id", m);
                }
                let b = bucket.trim();
                if b.len() < 3
                    || b.len() > 63
                    || !b.bytes().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                    })
                {
                    p.add(
                        "bucket",
                        "3-63 lower-case letters, digits, dots and hyphens",
                    );
                }
                if access_key_id.trim().is_empty() {
                    p.add("access_key_id", "required");
                }
                if secret_access_key.is_empty() {
                    p.add("secret_access_key", "required");
                }
                p.finish()?;
                StagingRecord::S3 {
                    endpoint,
                    region: region.trim().to_string(),
                    bucket: b.to_string(),
                    prefix: prefix.trim().trim_matches('/').to_string(),
                    access_key_id: access_key_id.trim().to_string(),
                    secret_access_key: secret_access_key.expose().to_string(),
                }
            }
        };
        if matches!(record, StagingRecord::S3 { .. }) {
            // A real connection before storing: the bucket must exist and take our objects.
            let what = match &record {
                StagingRecord::S3 { bucket, .. } => format!("S3 bucket {bucket}"),
                StagingRecord::Server { .. } => String::new(),
            };
            match tokio::time::timeout(
                STAGING_CONNECT_TIMEOUT,
                crate::staging_target::open_s3_store(&record),
            )
            .await
            {
                Err(_) => {
                    return Err(CommandError::Remote {
                        message: format!("{what}: no answer within 15 s"),
                    });
                }
                Ok(Err(e)) => return Err(CommandError::Remote { message: e }),
                Ok(Ok(_store)) => {}
            }
        }
        self.store.update_settings(|s| {
            s.staging = Some(record);
            Ok(())
        })?;
        tracing::info!("staging target stored");
        Ok(())
    }
}
