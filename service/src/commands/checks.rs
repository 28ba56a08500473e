//! The prerequisite checks run from the wizard and the settings page.

use crate::Appliance;
use crate::store::StagingRecord;
use godwit_webui::backend::*;

impl Appliance {
    pub(crate) async fn checks(&self) -> CommandResult<Vec<CheckView>> {
        use godwit_netcheck::settings as nc;
        let s = self.settings_now()?;
        // vSphere sources: their ESXi hosts (checked on 443 and 902) and the account's
        // privileges (issue 18).
        let mut facts = self.vsphere_checks(&s).await;
        let mut cs = godwit_netcheck::Settings::default();
        if let Some(n) = &s.network {
            cs.network = nc::NetworkSettings {
                ntp_servers: n.ntp_servers.clone(),
                dns_servers: n.dns_servers.clone(),
                proxy: n.proxy.clone(),
            };
        }
        for src in &s.sources {
            let h = nc::HostSettings {
                host: src.address.clone(),
                fingerprint: Some(src.fingerprint.clone()),
            };
            match src.kind {
                SourceKind::Vsphere => cs.vcenter.push(nc::VCenterSettings {
                    host: h.host,
                    fingerprint: h.fingerprint,
                    esxi_hosts: facts
                        .iter()
                        .find(|(id, _)| *id == src.id)
                        .map(|(_, f)| f.esxi_hosts.clone())
                        .unwrap_or_default(),
                }),
                SourceKind::Hyperv | SourceKind::Scvmm => cs.hyperv.push(h),
            }
        }
        match &s.staging {
            // Several staging servers of one store (issue 21): each is checked.
            Some(StagingRecord::Server { servers, .. }) => {
                cs.staging = servers
                    .iter()
                    .map(|s| nc::HostSettings {
                        host: s.address.clone(),
                        fingerprint: Some(s.fingerprint.clone()),
                    })
                    .collect();
            }
            Some(StagingRecord::S3 {
                endpoint, region, ..
            }) => {
                cs.s3 = Some(nc::S3Settings {
                    endpoint: endpoint
                        .clone()
                        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
                });
            }
            None => {}
        }
        let mut plan = godwit_netcheck::Plan::default();
        cs.extend_plan(&mut plan, std::path::Path::new("settings"))
            .map_err(|e| CommandError::Internal {
                message: e.to_string(),
            })?;
        let results = godwit_netcheck::run_checks(&plan).await;
        let mut views: Vec<CheckView> = results
            .into_iter()
            .map(|r| CheckView {
                check: r.check.to_string(),
                target: if r.purpose.is_empty() {
                    r.target
                } else {
                    format!("{} ({})", r.target, r.purpose)
                },
                status: r.status.to_string(),
                value: r.value,
                remediation: r.remediation.unwrap_or_default(),
            })
            .collect();
        for (_, f) in &mut facts {
            views.append(&mut f.privileges);
        }
        // --- issue 18, staging free space (wt-errors) ---
        if let Some(st) = &s.staging {
            let target = match st {
                StagingRecord::Server { servers, .. } => servers
                    .iter()
                    .map(|s| s.address.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                StagingRecord::S3 { bucket, .. } => format!("s3://{bucket}"),
            };
            let jobs_bytes = self
                .store
                .jobs()?
                .iter()
                .flat_map(|j| j.replica.disks.iter().map(|d| d.capacity_bytes))
                .fold(0u64, u64::saturating_add);
            let answer = crate::staging_space::ask(st).await;
            views.push(crate::staging_space::verdict(&target, answer, jobs_bytes));
        }
        // --- end staging free space ---
        let report = ChecksReport {
            at: crate::time::rfc3339(crate::time::now()),
            results: views.clone(),
        };
        self.store.update_settings(|st| {
            st.checks_run = true;
            st.last_checks = Some(report);
            Ok(())
        })?;
        Ok(views)
    }
}
