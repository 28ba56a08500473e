//! Starting an export of a job's replica.

use crate::{Appliance, random_id};
use godwit_webui::backend::*;
use std::path::Path;

pub(crate) fn export_format_name(f: ExportFormat) -> &'static str {
    match f {
        ExportFormat::Vmdk => "vmdk",
        ExportFormat::Vhdx => "vhdx",
        ExportFormat::Vhd => "vhd",
        ExportFormat::Raw => "raw",
    }
}

impl Appliance {
    pub(crate) async fn export(&self, cmd: CreateExport) -> CommandResult<ExportView> {
        let Some(job) = self.store.job(&cmd.job_id)? else {
            return Err(CommandError::field(
                "job_id",
                format!("no job {:?}", cmd.job_id),
            ));
        };
        // The disk must be one of the VM's (issue 18): refused now, naming the field.
        self.check_export_disk(&job.source_id, &job.vm, cmd.disk)
            .await?;
        let exports_dir = self.cfg.exports_dir();
        let dest = crate::export_files::parse(&cmd.destination, &exports_dir)?;
        if job.last_sync.is_none() {
            return Err(CommandError::Conflict {
                message: format!("job {} has no replica yet", job.id),
            });
        }
        let Some(staging) = self.settings_now()?.staging else {
            return Err(CommandError::Conflict {
                message: "exports read from the staging target; none is configured".into(),
            });
        };
        // A local file is made now (new, never through a symlink), so a refusal answers this
        // request.
        let (destination, file) = match &dest {
            crate::export_files::Destination::S3(url) => (url.clone(), None),
            crate::export_files::Destination::Local(parts) => {
                let f = crate::export_files::create(&exports_dir, parts)?;
                let p = crate::export_files::path_of(&exports_dir, parts);
                (p.display().to_string(), Some(f))
            }
        };
        let view = ExportView {
            id: random_id("exp"),
            job_id: job.id.clone(),
            disk: cmd.disk,
            format: cmd.format,
            destination,
            state: "running".into(),
            sha256: None,
            file_sha256: None,
            error: None,
            size_bytes: None,
            downloadable: false,
            vm: job.vm.clone(),
            bytes_done: 0,
            bytes_total: 0,
            throughput_bps: 0,
            eta_seconds: None,
            started_at: Some(crate::time::rfc3339(crate::time::now())),
            finished_at: None,
            staging_target: None, // issue 21
        };
        if let Err(e) = self.store.put_export(&view) {
            if file.is_some() {
                let _ = crate::export_files::remove(Path::new(&view.destination));
            }
            return Err(e.into());
        }
        self.spawn_export(view.clone(), job.vm, staging, file);
        Ok(view)
    }
}
