//! The test double's side of the operator pages (issue 18): exports that take time (progress,
//! cancel), the disks an export may name, persisted check results with a check that fails while
//! the staging target is "full", transfer settings and source credentials.

use super::{State, TestBackend, views::now_rfc3339};
use crate::backend::*;
use std::time::{Duration, Instant};

/// A staging address starting with this fails the free-space check (to exercise the banner).
pub const FULL_STAGING_PREFIX: &str = "full.";

/// An export whose file name starts with this fails a quarter of the way through, as an export
/// to a full data partition does (the real service's `export.target_full`, same wording).
pub const FULL_EXPORT_PREFIX: &str = "full-";

/// A password that the double's sources refuse (as a login would).
pub const WRONG_PASSWORD: &str = "wrong-password";

/// An export still "running": when it started and what it will write.
pub(super) struct RunningExport {
    pub id: String,
    pub started: Instant,
    pub cmd: CreateExport,
    pub dest: String,
}

/// The bytes of content a running export reads (allocated data of the made-up disk).
pub const EXPORT_CONTENT_BYTES: u64 = 3 << 30;

impl TestBackend {
    /// Exports take `d` (0, the default: done at once).
    pub fn with_export_duration(mut self, d: Duration) -> Self {
        self.export_duration = d;
        self
    }

    /// The refusal for a disk the job's VM does not have, naming the ones it has.
    pub(super) fn check_export_disk(s: &State, job_id: &str, disk: u32) -> CommandResult<()> {
        let Some(j) = s.jobs.iter().find(|j| j.id == job_id) else {
            return Ok(());
        };
        let Some(src) = s.sources.iter().find(|x| x.id == j.source_id) else {
            return Ok(());
        };
        let Some(vm) = Self::inventory_of(src).into_iter().find(|v| v.name == j.vm) else {
            return Ok(());
        };
        check_disk(&vm, disk)
    }

    /// Start an export that finishes after `export_duration`.
    pub(super) fn start_export(
        &self,
        s: &mut State,
        id: String,
        cmd: CreateExport,
        dest: String,
    ) -> CommandResult<ExportView> {
        if s.exports
            .iter()
            .any(|e| e.destination == dest && !dest.starts_with("s3://"))
        {
            return Err(CommandError::field(
                "destination",
                format!("{dest} exists already: delete that export first, or choose another name"),
            ));
        }
        let vm = s
            .jobs
            .iter()
            .find(|j| j.id == cmd.job_id)
            .map(|j| j.vm.clone())
            .unwrap_or_default();
        let view = ExportView {
            id: id.clone(),
            job_id: cmd.job_id.clone(),
            disk: cmd.disk,
            format: cmd.format,
            destination: dest.clone(),
            state: "running".into(),
            sha256: None,
            file_sha256: None,
            error: None,
            size_bytes: None,
            downloadable: false,
            vm,
            bytes_done: 0,
            bytes_total: EXPORT_CONTENT_BYTES,
            throughput_bps: 0,
            eta_seconds: None,
            started_at: Some(now_rfc3339()),
            finished_at: None,
            staging_target: None, // issue 21
        };
        s.exports.push(view.clone());
        s.running_exports.push(RunningExport {
            id,
            started: Instant::now(),
            cmd,
            dest,
        });
        Ok(view)
    }

    /// Bring running exports up to now: progress as time passes, finished ones written.
    pub(super) fn advance_exports(&self, s: &mut State) {
        let total_ms = self.export_duration.as_millis().max(1);
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        for r in &s.running_exports {
            let ms = r.started.elapsed().as_millis();
            let name = r.dest.rsplit('/').next().unwrap_or_default();
            if name.starts_with(FULL_EXPORT_PREFIX) && ms >= total_ms / 4 {
                failed.push(r.id.clone());
                continue;
            }
            if ms >= total_ms {
                finished.push(r.id.clone());
                continue;
            }
            let done = u64::try_from(u128::from(EXPORT_CONTENT_BYTES) * ms / total_ms).unwrap_or(0);
            let secs = r.started.elapsed().as_secs_f64().max(0.001);
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let rate = (done as f64 / secs) as u64;
            if let Some(e) = s.exports.iter_mut().find(|e| e.id == r.id) {
                e.bytes_done = done;
                e.throughput_bps = rate;
                e.eta_seconds = (rate > 0).then(|| (EXPORT_CONTENT_BYTES - done) / rate);
            }
        }
        for id in failed {
            s.running_exports.retain(|r| r.id != id);
            if let Some(e) = s.exports.iter_mut().find(|e| e.id == id) {
                e.state = "failed".into();
                e.finished_at = Some(now_rfc3339());
                e.throughput_bps = 0;
                e.eta_seconds = None;
                e.error = Some(JobError {
                    code: "export.target_full".into(),
                    message: "The appliance's data partition has no room for this export.".into(),
                    remediation: "Delete exports that are no longer needed (Exports page) or give \
                                  the appliance a bigger data disk, then start the export again."
                        .into(),
                    detail: Some(format!(
                        "{}: No space left on device (os error 28)",
                        e.destination
                    )),
                });
            }
        }
        for id in finished {
            let Some(i) = s.running_exports.iter().position(|r| r.id == id) else {
                continue;
            };
            let r = s.running_exports.remove(i);
            s.exports.retain(|e| e.id != id);
            let started = r.started;
            if let Ok(mut v) = super::exports::finished(s, r.id, r.cmd, r.dest)
                && let Some(e) = s.exports.iter_mut().find(|e| e.id == v.id)
            {
                v.bytes_done = EXPORT_CONTENT_BYTES;
                v.bytes_total = EXPORT_CONTENT_BYTES;
                v.started_at = Some(now_rfc3339());
                v.finished_at = Some(now_rfc3339());
                let secs = started.elapsed().as_secs().max(1);
                v.throughput_bps = EXPORT_CONTENT_BYTES / secs;
                *e = v;
            }
        }
    }

    /// Cancel a running export: nothing was written, nothing is left.
    pub(super) fn cancel_running_export(s: &mut State, id: &str) -> CommandResult<()> {
        let e =
            s.exports
                .iter_mut()
                .find(|e| e.id == id)
                .ok_or_else(|| CommandError::NotFound {
                    message: format!("export {id}"),
                })?;
        if e.state != "running" {
            return Err(CommandError::Conflict {
                message: format!("export {id} is not running ({})", e.state),
            });
        }
        e.state = "cancelled".into();
        e.eta_seconds = None;
        e.finished_at = Some(now_rfc3339());
        s.running_exports.retain(|r| r.id != id);
        Ok(())
    }

    /// The double's checks: the fixed ones, one per source, and the staging target's free
    /// space (failing for a staging address starting with [`FULL_STAGING_PREFIX`]).
    pub(super) fn staging_space_check(s: &State) -> Option<CheckView> {
        let StagingView::Server { address, .. } = s.staging.as_ref()? else {
            return None;
        };
        let full = address.starts_with(FULL_STAGING_PREFIX);
        Some(CheckView {
            check: "staging-space".into(),
            target: address.clone(),
            status: if full { "fail" } else { "pass" }.into(),
            value: if full {
                "1.2 GiB free of 500.0 GiB".into()
            } else {
                "412.0 GiB free of 500.0 GiB".into()
            },
            remediation: if full {
                "The staging target is almost full: free space on it or enlarge it before replicating.".into()
            } else {
                String::new()
            },
        })
    }

    pub(super) fn put_transfer_settings(
        s: &mut State,
        cmd: TransferSettings,
    ) -> CommandResult<TransferSettings> {
        cmd.check()?;
        s.transfer = Some(cmd.clone());
        s.logs.push(format!(
            "{} INFO transfer settings changed: limit {:?} Mbit/s, business hours {:?} Mbit/s, {} at once",
            now_rfc3339(),
            cmd.bandwidth_limit_mbps,
            cmd.business_hours_limit_mbps,
            cmd.max_concurrent_jobs
        ));
        Ok(cmd)
    }

    pub(super) fn put_source_credentials(
        s: &mut State,
        id: &str,
        cmd: SetSourceCredentials,
    ) -> CommandResult<SourceView> {
        Self::remember(s, &cmd.password);
        let mut fields = Vec::new();
        if cmd.username.trim().is_empty() {
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
        let Some(src) = s.sources.iter_mut().find(|x| x.id == id) else {
            return Err(CommandError::NotFound {
                message: format!("no source {id}"),
            });
        };
        if cmd.password.expose() == WRONG_PASSWORD {
            // Re-verified before saved: the stored credentials stay.
            return Err(CommandError::field(
                "password",
                "the server rejected this user name or password; the stored credentials are unchanged",
            ));
        }
        src.username = cmd.username.trim().to_string();
        let v = src.clone();
        s.source_passwords.retain(|(i, _)| i != id);
        s.source_passwords
            .push((id.to_string(), cmd.password.expose().to_string()));
        Ok(v)
    }
}

/// Checks as run now, kept as the last report.
pub(super) fn keep_report(s: &mut State, results: &[CheckView]) {
    s.last_checks = Some(ChecksReport {
        at: now_rfc3339(),
        results: results.to_vec(),
    });
}
