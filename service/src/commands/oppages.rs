//! The service's side of the operator pages (issue 18): the vCenter checks the settings page
//! adds (the account's privileges by `HasPrivilegeOnEntity`, the ESXi hosts to reach on 443 and
//! 902), transfer settings, a source's new credentials (a login with them first), and the disk an
//! export names checked against the VM's disks.

use crate::store::{Settings, SourceRecord};
use crate::{Appliance, joined, sources};
use godwit_webui::backend::*;

/// What a vSphere source's session told the checks: its ESXi hosts and the privilege results.
pub(crate) struct VsphereFacts {
    pub esxi_hosts: Vec<String>,
    pub privileges: Vec<CheckView>,
}

/// Log in to a vSphere source (its approved certificate pinned), list its ESXi hosts and ask
/// `HasPrivilegeOnEntity` on the root folder for every privilege a replication needs
/// (`godwit_vmware::privileges::ALL`, as `godwit check --vsphere-source` does). Blocking.
pub(crate) fn vsphere_facts(src: &SourceRecord) -> VsphereFacts {
    let target = || format!("{} (root folder)", src.address);
    let session = match sources::vsphere_session(src) {
        Ok(s) => s,
        Err(e) => {
            return VsphereFacts {
                esxi_hosts: Vec::new(),
                privileges: vec![CheckView {
                    check: "privilege".into(),
                    target: target(),
                    status: "fail".into(),
                    value: format!("could not log in to check privileges: {e}"),
                    remediation: "check the source's user name and password (Settings → Sources) and that the vCenter is reachable".into(),
                }],
            };
        }
    };
    let mut hosts: Vec<String> = session
        .all_of_kind("HostSystem", &["name"])
        .map(|objs| {
            objs.iter()
                .filter_map(|o| o.prop("name").map(|n| n.text.trim().to_string()))
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default();
    hosts.sort();
    hosts.dedup();
    let privileges = privilege_checks(&session, &src.address);
    if let Err(e) = session.logout() {
        tracing::warn!(error = %e, "logout failed");
    }
    VsphereFacts {
        esxi_hosts: hosts,
        privileges,
    }
}

fn privilege_checks(session: &godwit_vmware::session::Session, address: &str) -> Vec<CheckView> {
    use godwit_vmware::privileges::ALL;
    let root = session.service_content().root_folder.clone();
    let ids: Vec<&str> = ALL.iter().map(|p| p.id).collect();
    match session.has_privileges(&root, &ids) {
        Err(e) => vec![CheckView {
            check: "privilege".into(),
            target: format!("{address} (root folder)"),
            status: "warn".into(),
            value: format!("privileges could not be checked: {e}"),
            remediation: String::new(),
        }],
        Ok(granted) => ALL
            .iter()
            .zip(granted)
            .map(|(p, g)| CheckView {
                check: "privilege".into(),
                target: format!("{} on {address} (root folder)", p.id),
                status: if g { "pass" } else { "fail" }.into(),
                value: if g { "granted" } else { "not granted" }.into(),
                remediation: if g {
                    String::new()
                } else {
                    format!(
                        "give the account's role the privilege {} (needed for {}; {})",
                        p.id, p.needed_for, p.source
                    )
                },
            })
            .collect(),
    }
}

impl Appliance {
    /// The facts of every vSphere source, by source id (one login each, in parallel threads).
    pub(crate) async fn vsphere_checks(&self, s: &Settings) -> Vec<(String, VsphereFacts)> {
        let mut out = Vec::new();
        for src in s.sources.iter().filter(|x| x.kind == SourceKind::Vsphere) {
            let src = src.clone();
            let id = src.id.clone();
            if let Ok(f) = tokio::task::spawn_blocking(move || vsphere_facts(&src)).await {
                out.push((id, f));
            }
        }
        out
    }

    pub(crate) fn transfer_view(&self) -> CommandResult<TransferSettings> {
        let s = self.settings_now()?;
        let mut t = s.transfer.clone().unwrap_or(TransferSettings {
            business_hours_start: 8,
            business_hours_end: 18,
            ..TransferSettings::default()
        });
        t.max_concurrent_jobs = s.max_concurrent();
        Ok(t)
    }

    /// Store the transfer settings; the engine reads them at each disk it starts and each time
    /// it looks for a job to start, so they apply without a restart.
    pub(crate) fn put_transfer(&self, cmd: TransferSettings) -> CommandResult<TransferSettings> {
        cmd.check()?;
        self.store.update_settings(|s| {
            s.max_concurrent_jobs = Some(cmd.max_concurrent_jobs);
            s.transfer = Some(cmd.clone());
            Ok(())
        })?;
        tracing::info!(
            bandwidth_limit_mbps = ?cmd.bandwidth_limit_mbps,
            business_hours_limit_mbps = ?cmd.business_hours_limit_mbps,
            business_hours = %format!("{}-{}", cmd.business_hours_start, cmd.business_hours_end),
            max_concurrent_jobs = cmd.max_concurrent_jobs,
            "transfer settings changed"
        );
        // More slots may start waiting jobs now.
        self.engine.wake();
        self.transfer_view()
    }

    /// New credentials for a source: a login with them (the approved certificate pinned) first;
    /// stored only if it succeeds.
    pub(crate) async fn put_credentials(
        &self,
        id: String,
        cmd: SetSourceCredentials,
    ) -> CommandResult<SourceView> {
        let mut fields = Vec::new();
        let user = cmd.username.trim().to_string();
        if user.is_empty() {
            fields.push(FieldError {
                field: "username".into(),
                message: "required".into(),
            });
        }
        if cmd.password.is_empty() {
            fields.push(FieldError {
                field: "password".into(),
                message: "required".into(),
            });
        }
        if !fields.is_empty() {
            return Err(CommandError::Invalid { fields });
        }
        let s = self.settings_now()?;
        let Some(mut record) = s.source(&id).cloned() else {
            return Err(CommandError::NotFound {
                message: format!("source {id}"),
            });
        };
        record.username = user;
        record.password = cmd.password.expose().to_string();
        let r = record.clone();
        joined(tokio::task::spawn_blocking(move || sources::verify_login(&r)).await)?.inspect_err(
            |e| tracing::warn!(source = %id, "new credentials for a source were refused: {e}"),
        )?;
        let view = record.view();
        self.store.update_settings(|s| {
            let Some(x) = s.sources.iter_mut().find(|x| x.id == id) else {
                return Err(CommandError::NotFound {
                    message: format!("source {id}"),
                });
            };
            x.username = record.username.clone();
            x.password = record.password.clone();
            Ok(())
        })?;
        *self.inventory.lock().await = None;
        tracing::info!(source = %id, "source credentials changed");
        Ok(view)
    }

    /// Refuse an export of a disk the job's VM does not have, when the inventory knows the VM
    /// (a source that cannot be reached does not block an export from staging).
    pub(crate) async fn check_export_disk(
        &self,
        source_id: &str,
        vm: &str,
        disk: u32,
    ) -> CommandResult<()> {
        use godwit_webui::backend::Backend;
        let Ok(vms) = self.inventory(false).await else {
            return Ok(());
        };
        match vms
            .iter()
            .find(|v| v.source_id == source_id && v.name == vm)
        {
            Some(v) => check_disk(v, disk),
            None => Ok(()),
        }
    }
}

impl Appliance {
    /// Changed block tracking on or off for a vSphere source's jobs, from their next run (a
    /// run in progress keeps what it started with). Hyper-V jobs always use RCT (their
    /// reference checkpoint is kept between runs), so the switch is refused for them.
    pub(crate) fn put_source_cbt(&self, id: &str, cmd: SetSourceCbt) -> CommandResult<SourceView> {
        let mut view = None;
        self.store.update_settings(|s| {
            let Some(x) = s.sources.iter_mut().find(|x| x.id == id) else {
                return Err(CommandError::NotFound {
                    message: format!("source {id}"),
                });
            };
            if x.kind != SourceKind::Vsphere {
                return Err(CommandError::field(
                    "enabled",
                    "changed block tracking is switched for vSphere sources only; Hyper-V jobs always use resilient change tracking (RCT)",
                ));
            }
            x.cbt = Some(cmd.enabled);
            view = Some(x.view());
            Ok(())
        })?;
        tracing::info!(source = %id, cbt = cmd.enabled, "changed block tracking setting changed");
        view.ok_or_else(|| CommandError::NotFound {
            message: format!("source {id}"),
        })
    }
}

/// The bandwidth limit in force now (bytes/s), from the transfer settings; `None` when none is
/// set (the engine's own `--bwlimit` then applies).
pub(crate) fn limit_now(s: &Settings) -> Option<u64> {
    s.transfer
        .as_ref()
        .and_then(|t| t.limit_bytes_per_sec_at(crate::time::now()))
}
