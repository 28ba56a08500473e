//! A run of a job on a vSphere source: one `godwit_vmware::replicate::run_cycle` (ledgered
//! snapshot, every disk read frozen, CBT ranges for incrementals, snapshot removed on every
//! path), each disk replicated through [`RunCtx::transfer`]. The job follows its VM by the
//! MoRef and instance UUID resolved when it was created (a renamed VM keeps replicating, said
//! in the job's events; its disks keep the name they are stored under in staging); jobs
//! stored before that resolve by name once and keep the identity from then on.

use super::Engine;
use super::jobrun::{RunCtx, SinkError};
use crate::job::{Event, Outcome};
use crate::sources::{certificate_changed, vsphere_session};
use crate::store::{JobRecord, SourceRecord};
use crate::time::rfc3339;
use godwit_disk::BlockSource;
use godwit_vmware::ErrorKind;
use godwit_vmware::ledger::Ledger;
use godwit_vmware::replicate::{CycleOptions, run_cycle};
use godwit_vmware::vmref::{VmTarget, resolve};
use godwit_webui::backend::LedgerEntryView;
use std::path::PathBuf;

pub(super) fn ledger_path(engine: &Engine, job_id: &str) -> PathBuf {
    engine.job_dir(job_id).join("vsphere-snapshot-ledger.json")
}

/// Remove the snapshots the job's ledger records. Blocking.
pub(super) fn sweep(
    engine: &Engine,
    job: &JobRecord,
    src: &SourceRecord,
) -> Result<Vec<String>, String> {
    let mut ledger = Ledger::open(&ledger_path(engine, &job.id)).map_err(|e| e.to_string())?;
    if ledger.entries().is_empty() {
        return Ok(Vec::new());
    }
    let s = vsphere_session(src).map_err(|e| e.to_string())?;
    let rep = godwit_vmware::snapshot::sweep(&s, &mut ledger);
    if let Err(e) = s.logout() {
        tracing::warn!(error = %e, "logout failed");
    }
    let rep = rep.map_err(|e| e.to_string())?;
    if let Some(f) = rep.failed.first() {
        return Err(format!("snapshot not removed: {f}"));
    }
    Ok(rep.removed)
}

pub(super) fn entries(engine: &Engine, job: &JobRecord) -> Vec<LedgerEntryView> {
    match Ledger::open(&ledger_path(engine, &job.id)) {
        Ok(l) => l
            .entries()
            .iter()
            .map(|e| LedgerEntryView {
                source_id: job.source_id.clone(),
                vm: e.vm_name.clone(),
                snapshot_name: e.snapshot_name.clone(),
                state: if e.snapshot.is_some() {
                    "created".into()
                } else {
                    "pending".into()
                },
                recorded_at: rfc3339(e.created_unix),
                detail: Some(format!("job {} on {}", job.id, e.host)),
            })
            .collect(),
        Err(e) => vec![unreadable(job, &e.to_string())],
    }
}

pub(super) fn unreadable(job: &JobRecord, e: &str) -> LedgerEntryView {
    LedgerEntryView {
        source_id: job.source_id.clone(),
        vm: job.vm.clone(),
        snapshot_name: String::new(),
        state: "remove_failed".into(),
        recorded_at: rfc3339(crate::time::now()),
        detail: Some(format!("ledger unreadable: {e}")),
    }
}

/// One run (blocking).
pub(super) fn run(run: &mut RunCtx<'_>, src: &SourceRecord) -> Outcome {
    let session = match vsphere_session(src) {
        Ok(s) => s,
        Err(e) => return failure(src, &e),
    };
    let result = cycle(run, &session, src);
    if let Err(e) = session.logout() {
        tracing::warn!(error = %e, "logout failed");
    }
    run.outcome(result, |e| failure(src, e))
}

fn cycle(
    run: &mut RunCtx<'_>,
    session: &godwit_vmware::session::Session,
    src: &SourceRecord,
) -> godwit_vmware::Result<()> {
    let job = run.job;
    let target = VmTarget {
        query: job.vm.clone(),
        moref: job.vm_moref.clone(),
        instance_uuid: job.vm_instance_uuid.clone(),
    };
    let vm = resolve(session, &target)?;
    let n_disks = vm.disks.len();
    run.set_disks(
        vm.disks
            .iter()
            .map(|d| (d.label.clone(), d.capacity_bytes))
            .collect(),
    )
    .map_err(|e| godwit_vmware::Error::Usage(format!("recording the VM's disks: {e}")))?;
    let dir = run.engine.job_dir(&job.id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| godwit_vmware::Error::Usage(format!("creating {}: {e}", dir.display())))?;
    let opts = CycleOptions {
        vm_name: job.vm.clone(),
        // Pinned from now on, also for a job stored before the identity was kept.
        vm_moref: Some(vm.moref.value.clone()),
        vm_instance_uuid: vm.instance_uuid.clone(),
        ledger: ledger_path(run.engine, &job.id),
        change_ids: dir.join("vsphere-change-ids.json"),
        // The source's setting (issue 18), else the service's default (`--no-cbt`).
        cbt: src.cbt.unwrap_or(run.engine.opts.cbt),
        ..CycleOptions::default()
    };
    // `job.vm` stays the name the disks are stored under in staging (exports and incrementals
    // find them by it); the VM itself is followed by MoRef and instance UUID.
    let pinned = job.vm_moref.as_deref() == Some(vm.moref.value.as_str());
    let event = match (pinned, job.vm == vm.name) {
        (true, true) => None,
        (false, _) => Some(format!(
            "VM {:?} is {} (instance UUID {}); the job follows it by these from now on",
            vm.name,
            vm.moref.value,
            vm.instance_uuid.as_deref().unwrap_or("unknown")
        )),
        (true, false) => Some(format!(
            "VM {} is now named {:?}; the job follows it and keeps storing its disks as {:?}",
            vm.moref.value, vm.name, job.vm
        )),
    };
    if let Some(message) = event {
        run.report(Event::Identity {
            moref: vm.moref.value.clone(),
            instance_uuid: vm.instance_uuid.clone(),
            message,
        })
        .map_err(|e| godwit_vmware::Error::Usage(format!("recording the VM's identity: {e}")))?;
    }
    let mut sink = |n: usize,
                    disk: &dyn BlockSource,
                    changed: Option<&[std::ops::Range<u64>]>|
     -> Result<(), SinkError> {
        run.disk(
            n,
            Some(n_disks),
            || format!("snapshot taken; transferring {n_disks} disk(s)"),
            disk,
            changed,
            "",
            "; removing the snapshot",
        )
    };
    let report = run_cycle(session, &opts, &mut sink)?;
    for line in report.lines() {
        tracing::info!(job = %job.id, "{line}");
    }
    Ok(())
}

/// Turn a vSphere error into a run outcome: certificate and login problems need the operator
/// (no retry); everything else is retried with backoff.
fn failure(src: &SourceRecord, e: &godwit_vmware::Error) -> Outcome {
    match e.kind() {
        ErrorKind::Trust => Outcome::Failed {
            message: certificate_changed(src, &e.to_string()),
            retry: false,
        },
        ErrorKind::Auth => Outcome::Failed {
            message: format!(
                "source {} rejected the stored user name or password: {e}",
                src.address
            ),
            retry: false,
        },
        // Gone, refused (encrypted, missing privileges, a disk whose size disagrees...) or
        // ambiguous: the same again would fail the same way.
        ErrorKind::NotFound | ErrorKind::Refused => Outcome::Failed {
            message: e.to_string(),
            retry: false,
        },
        _ if matches!(e, godwit_vmware::Error::Ambiguous { .. }) => Outcome::Failed {
            message: e.to_string(),
            retry: false,
        },
        _ => Outcome::Failed {
            message: e.to_string(),
            retry: true,
        },
    }
}
