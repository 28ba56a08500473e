//! Creating a job (the VM looked up at its source first) and deleting one; both go through
//! the job engine's owner.

use crate::store::{JobRecord, SourceRecord};
use crate::{Appliance, joined, random_id, sources, time};
use godwit_webui::backend::*;
use godwit_webui::validate::Problems;

/// Longest schedule interval accepted (one year).
const MAX_INTERVAL_HOURS: u32 = 24 * 365;

impl Appliance {
    pub(crate) async fn new_job(&self, cmd: CreateJob) -> CommandResult<JobRecord> {
        let s = self.settings_now()?;
        let mut p = Problems::default();
        let vm = cmd.vm.trim().to_string();
        if vm.is_empty() {
            p.add("vm", "required");
        }
        if let Schedule::EveryHours { hours } = cmd.schedule
            && !(1..=MAX_INTERVAL_HOURS).contains(&hours)
        {
            p.add("schedule", format!("every 1 to {MAX_INTERVAL_HOURS} hours"));
        }
        let src = s.source(&cmd.source_id).cloned();
        if src.is_none() {
            p.add("source_id", format!("no source {:?}", cmd.source_id));
        }
        p.finish()?;
        let Some(src) = src else {
            return Err(CommandError::Internal {
                message: "validation".into(),
            });
        };
        if s.staging.is_none() {
            return Err(CommandError::Conflict {
                message: "configure the staging target first".into(),
            });
        }
        let (s2, vm2) = (src.clone(), vm.clone());
        // vSphere: the VM resolved by name, MoRef or instance UUID; the job keeps its identity.
        let identity = joined(tokio::task::spawn_blocking(move || vm_exists(&s2, &vm2)).await)??;
        let (vm, vm_moref, vm_instance_uuid) = match identity {
            Some((name, moref, uuid)) => (name, Some(moref), uuid),
            None => (vm, None, None),
        };
        let t = time::now();
        let job = JobRecord {
            id: random_id("job"),
            source_id: src.id.clone(),
            vm,
            vm_moref,
            vm_instance_uuid,
            schedule: cmd.schedule,
            state: JobState::Scheduled,
            runs_completed: 0,
            failures: 0,
            last_error: None,
            next_run: Some(t),
            last_sync: None,
            created: t,
            run_started: None,
            cancel_requested: false,
            replica: Default::default(),
        };
        let message = format!(
            "created: replicate {} from {} ({})",
            job.vm,
            src.address,
            crate::job::view::schedule_text(&job.schedule)
        );
        let job = self.engine.create(job, message).await?;
        self.engine.wake();
        Ok(job)
    }

    pub(crate) async fn remove_job(&self, id: String) -> CommandResult<()> {
        let settings = self.settings_now()?;
        self.engine
            .delete(&id, |job| settings.source(&job.source_id).cloned())
            .await?;
        tracing::info!(job = %id, "job deleted");
        Ok(())
    }
}

/// A vSphere VM's (name, MoRef value, instance UUID).
type VmIdentity = (String, String, Option<String>);

/// Does the source have this VM? (Checked before a job is created.) For vSphere the VM may be
/// named by name, MoRef or instance UUID (an ambiguous name is refused on the `vm` field
/// listing the candidates) and its identity is returned. Blocking.
fn vm_exists(src: &SourceRecord, vm: &str) -> CommandResult<Option<VmIdentity>> {
    let not_found = || CommandError::field("vm", format!("no VM named {vm:?} at {}", src.address));
    match src.kind {
        SourceKind::Vsphere => {
            let session = sources::vsphere_session(src).map_err(|e| CommandError::Remote {
                message: if e.kind() == godwit_vmware::ErrorKind::Trust {
                    sources::certificate_changed(src, &e.to_string())
                } else {
                    e.to_string()
                },
            })?;
            let found = godwit_vmware::replicate::find_vm(&session, vm);
            let _ = session.logout();
            match found {
                Ok(v) => Ok(Some((v.name, v.moref.value, v.instance_uuid))),
                Err(e) if e.kind() == godwit_vmware::ErrorKind::NotFound => Err(not_found()),
                Err(e) if e.kind() == godwit_vmware::ErrorKind::Usage => {
                    Err(CommandError::field("vm", e.to_string()))
                }
                Err(e) => Err(CommandError::Remote {
                    message: e.to_string(),
                }),
            }
        }
        SourceKind::Hyperv | SourceKind::Scvmm => {
            if sources::inventory(src)?.iter().any(|v| v.name == vm) {
                Ok(None)
            } else {
                Err(not_found())
            }
        }
    }
}
