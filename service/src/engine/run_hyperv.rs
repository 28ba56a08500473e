//! A run of a job on a Hyper-V source: the same cycle as `godwit replicate --source hyperv://`
//! (`godwit_hyperv::replicate::run_cycle_pushed`: sweep, `godwit-` checkpoint recorded in the
//! job's ledger before it exists, every frozen disk opened, checkpoint removed on every path —
//! or, after a good cycle, turned into the RCT reference point the next cycle's changed ranges
//! are asked against; `DATA/jobs/<id>/hyperv-rct.json`), each disk replicated through
//! [`RunCtx::transfer`]. On an SCVMM source the cycle runs on the host VMM says runs the VM
//! (`crate::scvmm::connect_vm`: asked on every run, the host's certificate approved by
//! the operator).
//!
//! Disk data comes by the host push (design §3) once `godwit serve` mounted the ingest on its
//! HTTPS port: the host's uploader pushes the data ranges there, pinning the service's
//! certificate; they are spooled under `DATA/jobs/<id>/hyperv-spool/` (kept after a failure or
//! a kill, so the next run asks only for what is missing) and WinRM carries only metadata.
//! Without the ingest (it is always mounted by `godwit serve`) the data is read over WinRM.

use super::Engine;
use super::jobrun::{RunCtx, SinkError};
use super::run_vsphere::unreadable;
use crate::job::Outcome;
use crate::scvmm::HostClient as Client;
use crate::sources::{certificate_changed, hyperv_pin, hyperv_source};
use crate::store::{JobRecord, SourceRecord};
use crate::time::rfc3339;
use godwit_hyperv::Error as HvError;
use godwit_hyperv::checkpoint::FrozenDisk;
use godwit_hyperv::ledger::Ledger;
use godwit_hyperv::replicate::{CycleExtras, CycleOptions, connect, run_cycle_pushed};
use godwit_webui::backend::{JobState, LedgerEntryView, SourceKind};
use std::path::PathBuf;

pub(super) fn ledger_path(engine: &Engine, job_id: &str) -> PathBuf {
    engine.job_dir(job_id).join("hyperv-checkpoint-ledger.json")
}

fn client(src: &SourceRecord) -> Result<Client, HvError> {
    let (source, creds) = hyperv_source(src);
    let pin = hyperv_pin(src).map_err(|e| HvError::Usage(e.to_string()))?;
    connect(&source, &creds, Some(pin))
}

/// The client for the host that runs the job's VM (a Hyper-V source is that host; an SCVMM
/// source says which host it is), and the VM's disk count and total size if known.
fn connect_job(
    engine: &Engine,
    job: &JobRecord,
    src: &SourceRecord,
) -> Result<(Client, Option<Sizes>), HvError> {
    match src.kind {
        SourceKind::Scvmm => crate::scvmm::connect_vm(src, &job.vm, &ledger_path(engine, &job.id))
            .map(|(c, s)| (c, s.map(|(n, total)| Sizes::Total(n, total)))),
        _ => Ok((client(src)?, sizes(src, &job.vm).map(Sizes::Disks))),
    }
}

/// What the run knows of the VM's disks before reading them.
enum Sizes {
    /// Each disk's label and size (a Hyper-V host's inventory).
    Disks(Vec<(String, u64)>),
    /// Only the count and the total (SCVMM).
    Total(usize, u64),
}

/// Remove the checkpoints the job's ledger records (blocking). With `keep_resumable` (the
/// sweep at a start) a checkpoint a failed or killed run kept for its retry stays when the job
/// will run again (its next run resumes it and its spool); a cancelled, failed, completed or
/// deleted job keeps none.
pub(super) fn sweep(
    engine: &Engine,
    job: &JobRecord,
    src: &SourceRecord,
    keep_resumable: bool,
) -> Result<Vec<String>, String> {
    let mut ledger = Ledger::open(&ledger_path(engine, &job.id)).map_err(|e| e.to_string())?;
    if ledger.entries().is_empty() {
        return Ok(Vec::new());
    }
    let will_run = keep_resumable
        && !job.cancel_requested
        && matches!(
            job.state,
            JobState::Scheduled
                | JobState::RetryWait
                | JobState::Snapshotting
                | JobState::Transferring
                | JobState::RemovingSnapshot
        );
    let (c, _) = connect_job(engine, job, src).map_err(|e| e.to_string())?;
    if will_run {
        godwit_hyperv::replicate::sweep_leftovers(&c, &mut ledger)
    } else {
        godwit_hyperv::replicate::sweep(&c, &mut ledger)
    }
    .map_err(|e| e.to_string())
}

pub(super) fn entries(engine: &Engine, job: &JobRecord) -> Vec<LedgerEntryView> {
    match Ledger::open(&ledger_path(engine, &job.id)) {
        Ok(l) => l
            .entries()
            .iter()
            .map(|e| LedgerEntryView {
                source_id: job.source_id.clone(),
                vm: e.vm_name.clone(),
                snapshot_name: e.checkpoint_name.clone(),
                state: match (&e.checkpoint_id, e.kept_for_retry_unix) {
                    (Some(_), Some(_)) => "kept for the retry".into(),
                    (Some(_), None) => "created".into(),
                    (None, _) => "pending".into(),
                },
                recorded_at: rfc3339(e.created_unix),
                detail: Some(format!("job {} on {} (Hyper-V checkpoint)", job.id, e.host)),
            })
            .collect(),
        Err(e) => vec![unreadable(job, &e.to_string())],
    }
}

/// The VM's disk count and total size from the inventory (for the progress bar), if the
/// inventory can say.
fn sizes(src: &SourceRecord, vm: &str) -> Option<Vec<(String, u64)>> {
    let (source, creds) = hyperv_source(src);
    let inv = godwit_hyperv::inventory(&source, &creds, hyperv_pin(src).ok()).ok()?;
    let rec = &inv.vms.iter().find(|v| v.record.name == vm)?.record;
    rec.disks
        .iter()
        .map(|d| {
            let label = format!(
                "{} {}:{}",
                d.controller_type, d.controller_number, d.controller_location
            );
            d.size.map(|b| (label, b.0))
        })
        .collect()
}

/// One run (blocking).
pub(super) fn run(run: &mut RunCtx<'_>, src: &SourceRecord) -> Outcome {
    let result = cycle(run, src);
    run.outcome(result, |e| failure(src, e))
}

fn cycle(run: &mut RunCtx<'_>, src: &SourceRecord) -> Result<(), HvError> {
    let job = run.job;
    let (c, sizes) = connect_job(run.engine, job, src)?;
    let n_disks = match sizes {
        Some(Sizes::Total(n, total)) => {
            run.set_total(total);
            Some(n)
        }
        Some(Sizes::Disks(disks)) => {
            let n = disks.len();
            run.set_disks(disks)
                .map_err(|e| HvError::Usage(format!("recording the VM's disks: {e}")))?;
            Some(n)
        }
        None => None,
    };
    let dir = run.engine.job_dir(&job.id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| HvError::Usage(format!("creating {}: {e}", dir.display())))?;
    let opts = CycleOptions {
        vm_name: job.vm.clone(),
        ledger: ledger_path(run.engine, &job.id),
    };
    // A failed run keeps its checkpoint for the retry (which resumes it and its spool) when
    // the engine will retry: a transient error, not cancelled, retries left (or a next period).
    let cancel = run.cancel;
    let retries_left = job.failures + 1 < crate::job::MAX_FAILURES
        || matches!(
            job.schedule,
            godwit_webui::backend::Schedule::EveryHours { .. }
        );
    let keep = move |e: &HvError| {
        e.is_transient() && !cancel.load(std::sync::atomic::Ordering::SeqCst) && retries_left
    };
    let extras = CycleExtras {
        rct_state: Some(dir.join("hyperv-rct.json")),
        keep_failed: Some(&keep),
    };
    let ingest = run.engine.ingest().and_then(|i| {
        i.config(
            dir.join("hyperv-spool"),
            u64::from(run.engine.opts.chunk_size),
        )
    });
    let how = if ingest.is_some() {
        "pushed by the host"
    } else {
        "read over WinRM"
    };
    let mut sink = |n: usize,
                    disk: &godwit_disk::Disk,
                    frozen: &FrozenDisk,
                    changed: Option<&[std::ops::Range<u64>]>|
     -> Result<(), SinkError> {
        let mut detail = format!(" from {}", frozen.path);
        if let Some(r) = changed {
            let bytes: u64 = r.iter().map(|r| r.end - r.start).sum();
            detail.push_str(&format!(
                " (RCT: {} changed range(s), {})",
                r.len(),
                super::mib(bytes)
            ));
        }
        run.disk(
            n,
            n_disks,
            || {
                format!(
                    "checkpoint taken; transferring {} disk(s) {how}",
                    n_disks.map_or_else(|| "the".to_string(), |n| n.to_string())
                )
            },
            disk,
            changed,
            &detail,
            "; removing the checkpoint",
        )
    };
    let report = run_cycle_pushed(&c, &opts, &extras, ingest.as_ref(), &mut sink)?;
    run.engine
        .winrm_read_bytes
        .fetch_add(report.bytes_read, std::sync::atomic::Ordering::Relaxed);
    let note = |message: String| run.note(message).map_err(|e| HvError::Usage(e.to_string()));
    for c in &report.changes {
        if let Some(why) = &c.full_reread {
            note(format!(
                "disk {}: FULL RE-READ instead of an incremental: Resilient Change Tracking failed ({why})",
                c.disk
            ))?;
        }
    }
    if report.resumed_checkpoint {
        note(format!(
            "resumed checkpoint {} kept by the failed or interrupted run before",
            report.checkpoint
        ))?;
    }
    for name in &report.swept {
        note(format!("removed leftover checkpoint {name} before the run"))?;
    }
    let data_path = match &report.push {
        Some(p) => format!(
            "host push: {} bytes ({}) pushed in {} push(es), {} bytes resumed from the spool of an earlier run, {} bytes read from the spool (at most {} held at once, limit {}); {} bytes read over WinRM in {} command(s)",
            p.pushed_bytes,
            super::mib(p.pushed_bytes),
            p.pushes,
            p.resumed_bytes,
            p.served_from_spool,
            super::mib(p.peak_spool_bytes),
            super::mib(p.spool_limit),
            report.bytes_read,
            report.read_commands
        ),
        None => format!(
            "{} read over WinRM in {} command(s)",
            super::mib(report.bytes_read),
            report.read_commands
        ),
    };
    note(data_path)?;
    tracing::info!(
        job = %job.id,
        checkpoint = %report.checkpoint,
        bytes_read = report.bytes_read,
        commands = report.read_commands,
        push = ?report.push,
        reference_point = ?report.reference_point,
        "Hyper-V cycle done"
    );
    Ok(())
}

/// Turn a Hyper-V error into a run outcome: certificate, login, a missing or ineligible VM
/// need the operator (no retry); everything else is retried with backoff.
fn failure(src: &SourceRecord, e: &HvError) -> Outcome {
    if let Some(message) = crate::scvmm::unpinned_message(src, e) {
        return Outcome::Failed {
            message,
            retry: false,
        };
    }
    let (message, retry) = match e {
        HvError::PinMismatch { .. } if src.kind == SourceKind::Scvmm => (
            format!(
                "{e}; if a Hyper-V host's certificate was replaced on purpose, approve the new \
                 one (POST /api/v1/sources/{}/hosts), if the VMM server's, remove the source and \
                 add it again",
                src.id
            ),
            false,
        ),
        HvError::Unpinned { .. } | HvError::PinMismatch { .. } => {
            (certificate_changed(src, &e.to_string()), false)
        }
        HvError::AuthFailed { .. } => (
            format!(
                "source {} rejected the stored user name or password: {e}",
                src.address
            ),
            false,
        ),
        HvError::NotFound { .. } | HvError::Usage(_) => (e.to_string(), false),
        // The hosts cannot reach the ingest URL, or the spool has no room: the operator must
        // act (firewall, the ingest URL setting, free space); retrying asks the same.
        HvError::IngestUnreachable { .. } | HvError::NoSpace(_) | HvError::AccessDenied { .. } => {
            (e.to_string(), false)
        }
        HvError::HostUnreachable { .. } => (e.to_string(), true),
        _ => (e.to_string(), true),
    };
    Outcome::Failed { message, retry }
}
