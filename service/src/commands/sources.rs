//! Adding a source (its certificate approved by the operator, the login checked) and
//! approving an SCVMM source's Hyper-V host.

use crate::store::{HostPin, SourceRecord};
use crate::{Appliance, joined, random_id, sources};
use godwit_webui::backend::*;
use godwit_webui::validate::{Problems, authority, fingerprint, host_port};

impl Appliance {
    pub(crate) async fn add(&self, cmd: AddSource) -> CommandResult<SourceView> {
        let mut p = Problems::default();
        let addr = host_port(&cmd.address, sources::default_port(cmd.kind))
            .map(|(h, port)| authority(&h, port))
            .map_err(|e| p.add("address", e))
            .ok();
        let user = cmd.username.trim().to_string();
        if user.is_empty() {
            p.add("username", "required");
        }
        if cmd.password.is_empty() {
            p.add("password", "required");
        }
        let fp = fingerprint(&cmd.approved_fingerprint)
            .map_err(|e| p.add("approved_fingerprint", e))
            .ok();
        p.finish()?;
        let (Some(address), Some(fp)) = (addr, fp) else {
            return Err(CommandError::Internal {
                message: "validation".into(),
            });
        };
        let s = self.settings_now()?;
        if let Some(x) = s
            .sources
            .iter()
            .find(|x| x.kind == cmd.kind && x.address == address && x.username == user)
        {
            return Err(CommandError::Conflict {
                message: format!("this source is already added as {}", x.id),
            });
        }
        let record = SourceRecord {
            id: random_id("src"),
            kind: cmd.kind,
            address,
            username: user,
            password: cmd.password.expose().to_string(),
            fingerprint: fp,
            host_port: match cmd.kind {
                SourceKind::Scvmm => cmd.host_port,
                _ => None,
            },
            host_pins: Vec::new(),
            cbt: None,
        };
        let r = record.clone();
        joined(tokio::task::spawn_blocking(move || sources::verify_login(&r)).await)?.inspect_err(
            |e| {
                // Shown on the log page: a refused certificate or login of a source.
                tracing::warn!(address = %record.address, "adding a source was refused: {e}");
            },
        )?;
        let view = record.view();
        self.store.update_settings(|s| {
            s.sources.push(record);
            Ok(())
        })?;
        *self.inventory.lock().await = None;
        tracing::info!(source = %view.id, address = %view.address, "source added");
        Ok(view)
    }

    /// Pin one Hyper-V host of an SCVMM source: the operator approved the fingerprint a
    /// refused job named (trust on approval). Replaces an earlier pin of the same host.
    pub(crate) async fn approve_host(
        &self,
        id: String,
        cmd: ApproveHost,
    ) -> CommandResult<SourceView> {
        let mut p = Problems::default();
        let host = cmd.host.trim().to_ascii_lowercase();
        if host.is_empty() {
            p.add("host", "required: VMM's name for the host or its address");
        } else if host
            .chars()
            .any(|c| c.is_whitespace() || c == '#' || c == '/')
        {
            p.add("host", "a host name or address (`host` or `host:port`)");
        }
        let fp = fingerprint(&cmd.approved_fingerprint)
            .map_err(|e| p.add("approved_fingerprint", e))
            .ok();
        p.finish()?;
        let Some(fp) = fp else {
            return Err(CommandError::Internal {
                message: "validation".into(),
            });
        };
        let mut view = None;
        self.store.update_settings(|s| {
            let Some(src) = s.sources.iter_mut().find(|x| x.id == id) else {
                return Err(CommandError::NotFound {
                    message: format!("source {id}"),
                });
            };
            if src.kind == SourceKind::Hyperv {
                return Err(CommandError::Conflict {
                    message: format!(
                        "source {id} is a Hyper-V host, not an SCVMM source or a vCenter (whose ESXi hosts' certificates are approved here); its certificate is the one approved when it was added"
                    ),
                });
            }
            src.host_pins.retain(|x| x.host != host);
            src.host_pins.push(HostPin {
                host: host.clone(),
                fingerprint: fp.clone(),
            });
            view = Some(src.view());
            Ok(())
        })?;
        *self.inventory.lock().await = None;
        tracing::info!(source = %id, host = %host, fingerprint = %fp, "host certificate approved");
        view.ok_or_else(|| CommandError::Internal {
            message: "source vanished".into(),
        })
    }
}
