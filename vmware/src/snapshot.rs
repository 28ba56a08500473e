//! Snapshots with the ledger: intent recorded before CreateSnapshot_Task, the task's MoRef
//! recorded as soon as vCenter accepts the call, removal confirmed by the task's success and
//! by the snapshot being gone, and a sweep for what a crash left.
//!
//! A create that does not finish within the task timeout is not forgotten: the snapshot may
//! still appear (a busy datastore, a long quiesce). Its ledger entry stays, with the task
//! MoRef, until the task is known to have failed, or its snapshot was removed; the next
//! cycle's sweep asks the task first and refuses to proceed while it still runs.
//!
//! Quiescing (VMware Tools freeze the guest's file systems) is asked for when Tools run on a
//! powered-on VM and the caller allows it; a quiesce fault
//! (`ApplicationQuiesceFault`, `FilesystemQuiesceFault`: "creating a quiesced snapshot
//! failed",
//! <https://developer.broadcom.com/xapis/vsphere-web-services-api/7.0u3/vim.fault.ApplicationQuiesceFault.html>)
//! is retried once without quiescing, and reported (a crash-consistent copy instead).

use crate::error::{Error, ErrorKind, Result};
use crate::inventory::{SNAPSHOT_PREFIX, Snapshot, Vm, vm_from_object};
use crate::ledger::{Ledger, LedgerEntry};
use crate::moref::MoRef;
use crate::session::Session;
use crate::soap::envelope as env;
use crate::soap::response as resp;
use std::time::{SystemTime, UNIX_EPOCH};

/// A snapshot Godwit created and recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenSnapshot {
    pub name: String,
    pub moref: MoRef,
    pub vm: MoRef,
    /// Whether the snapshot was taken quiesced.
    pub quiesced: bool,
    /// Set when quiescing failed and the snapshot was taken without it: the fault.
    pub quiesce_fallback: Option<String>,
}

/// Task faults that mean quiescing failed (both are SnapshotFaults).
pub const QUIESCE_FAULTS: &[&str] = &["ApplicationQuiesceFault", "FilesystemQuiesceFault"];

/// A quiesce fault, or another SnapshotFault whose message says quiescing failed (hosts also
/// report a failed freeze as a generic snapshot fault, "An error occurred while quiescing the
/// virtual machine").
pub fn is_quiesce_fault(fault: &str, message: &str) -> bool {
    QUIESCE_FAULTS.contains(&fault)
        || (matches!(
            fault,
            "SnapshotFault" | "GenericVmConfigFault" | "SystemError"
        ) && message.to_ascii_lowercase().contains("quiesc"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A unique `godwit-` name.
pub fn snapshot_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{SNAPSHOT_PREFIX}{}-{}-{nanos:09}",
        unix_now(),
        std::process::id()
    )
}

/// Record the intent, create the snapshot (quiesced when asked; on a quiesce fault once more
/// without), record its MoRef. See the module doc for what happens on failure.
pub fn create(s: &Session, ledger: &mut Ledger, vm: &Vm, quiesce: bool) -> Result<TakenSnapshot> {
    match create_once(s, ledger, vm, quiesce) {
        Err(Error::TaskFailed { fault, message, .. })
            if quiesce && is_quiesce_fault(&fault, &message) =>
        {
            tracing::warn!(vm = %vm.name, %fault, "quiescing failed; taking the snapshot without it");
            let mut snap = create_once(s, ledger, vm, false)?;
            snap.quiesce_fallback = Some(if message.is_empty() {
                fault
            } else {
                format!("{fault}: {message}")
            });
            Ok(snap)
        }
        r => r,
    }
}

fn create_once(s: &Session, ledger: &mut Ledger, vm: &Vm, quiesce: bool) -> Result<TakenSnapshot> {
    let name = snapshot_name();
    ledger.add(LedgerEntry {
        host: s.endpoint().authority(),
        vm: vm.moref.clone(),
        vm_name: vm.name.clone(),
        snapshot_name: name.clone(),
        snapshot: None,
        task: None,
        created_unix: unix_now(),
    })?;
    let created = s
        .call(
            "CreateSnapshot_Task",
            &|_| {
                env::create_snapshot(
                    &vm.moref,
                    &name,
                    "Godwit replication snapshot; removed automatically",
                    false,
                    quiesce,
                )
            },
            &|b| resp::parse_moref_reply(b, "CreateSnapshot_Task"),
        )
        .and_then(|task| {
            ledger.set_task(&name, task.clone())?;
            s.wait_task(&task, "create snapshot")
        })
        .and_then(|r| {
            r.ok_or_else(|| {
                Error::malformed(
                    &s.endpoint().authority(),
                    "CreateSnapshot_Task",
                    "task succeeded without a snapshot result",
                )
            })
        });
    match created {
        Ok(moref) => {
            ledger.set_snapshot(&name, moref.clone())?;
            Ok(TakenSnapshot {
                name,
                moref,
                vm: vm.moref.clone(),
                quiesced: quiesce,
                quiesce_fallback: None,
            })
        }
        Err(e @ Error::Timeout { .. }) => {
            // The task may still create it: keep the entry (with the task) for the sweep.
            tracing::warn!(snapshot = %name, error = %e, "snapshot task still running; kept in the ledger");
            Err(e)
        }
        Err(e) => {
            // Failed (or unknown): remove anything it may have left, then forget it — unless
            // the task is still running, which the sweep reports.
            let entry = ledger
                .entries()
                .iter()
                .find(|x| x.snapshot_name == name)
                .cloned();
            if let Some(entry) = entry
                && sweep_entry(s, &entry).is_ok()
            {
                ledger.remove(&name)?;
            }
            Err(e)
        }
    }
}

/// RemoveSnapshot_Task (consolidate) and wait. `ManagedObjectNotFound` means already gone.
pub fn remove_snapshot(s: &Session, snapshot: &MoRef) -> Result<()> {
    let r = s
        .call(
            "RemoveSnapshot_Task",
            &|_| env::remove_snapshot(snapshot, false, true),
            &|b| resp::parse_moref_reply(b, "RemoveSnapshot_Task"),
        )
        .and_then(|task| s.wait_task(&task, "remove snapshot"));
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove a taken snapshot and drop its ledger entry once the removal is confirmed.
pub fn remove(s: &Session, ledger: &mut Ledger, snap: &TakenSnapshot) -> Result<()> {
    remove_snapshot(s, &snap.moref)?;
    if vm_snapshots(s, &snap.vm)?
        .iter()
        .any(|x| x.moref == snap.moref || x.name == snap.name)
    {
        return Err(Error::TaskFailed {
            host: s.endpoint().authority(),
            task: snap.moref.value.clone(),
            what: "remove snapshot".into(),
            fault: "SnapshotStillPresent".into(),
            message: format!(
                "snapshot {} is still listed on {} after removal",
                snap.name, snap.vm
            ),
        });
    }
    ledger.remove(&snap.name)
}

/// The snapshots a VM has now.
pub fn vm_snapshots(s: &Session, vm: &MoRef) -> Result<Vec<Snapshot>> {
    let o = s.object_properties(vm, &["name", "snapshot"])?;
    if let Some(m) = o.missing.first() {
        return Err(Error::malformed(
            &s.endpoint().authority(),
            "RetrievePropertiesEx",
            format!("{vm}: {} missing: {}", m.path, m.fault),
        ));
    }
    let v = vm_from_object(&o)
        .map_err(|e| crate::session::map_reply(s.endpoint(), "RetrievePropertiesEx", e))?;
    Ok(v.snapshots)
}

/// A recorded CreateSnapshot_Task: `Ok(Some(snapshot))` when it succeeded, `Ok(None)` when it
/// failed or is no longer known, an error while it still runs.
fn settled_task(s: &Session, e: &LedgerEntry, task: &MoRef) -> Result<Option<MoRef>> {
    let o = match s.object_properties(task, &["info"]) {
        Ok(o) => o,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let Some(info) = o.prop("info") else {
        return Ok(None); // the task object is gone (vCenter forgets old tasks)
    };
    let info = resp::parse_task_info(info)
        .map_err(|er| crate::session::map_reply(s.endpoint(), "task info", er))?;
    match info.state.as_str() {
        "success" => Ok(info.result),
        "error" => Ok(None),
        state => Err(Error::TaskFailed {
            host: s.endpoint().authority(),
            task: task.value.clone(),
            what: "create snapshot".into(),
            fault: "TaskStillRunning".into(),
            message: format!(
                "snapshot {} of {} is still being created (task {state}); it stays in the ledger until the task ends",
                e.snapshot_name, e.vm_name
            ),
        }),
    }
}

fn sweep_entry(s: &Session, e: &LedgerEntry) -> Result<()> {
    if let Some(m) = &e.snapshot {
        remove_snapshot(s, m)?;
    } else if let Some(task) = &e.task
        && let Some(m) = settled_task(s, e, task)?
    {
        remove_snapshot(s, &m)?;
    }
    // Crash between the intent and the MoRef, or a removal that did not stick: by name.
    let snaps = match vm_snapshots(s, &e.vm) {
        Ok(v) => v,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()), // VM gone
        Err(err) => return Err(err),
    };
    for snap in snaps.iter().filter(|x| x.name == e.snapshot_name) {
        remove_snapshot(s, &snap.moref)?;
    }
    if vm_snapshots(s, &e.vm)?
        .iter()
        .any(|x| x.name == e.snapshot_name)
    {
        return Err(Error::TaskFailed {
            host: s.endpoint().authority(),
            task: e.snapshot_name.clone(),
            what: "sweep snapshot".into(),
            fault: "SnapshotStillPresent".into(),
            message: format!("{} is still on {}", e.snapshot_name, e.vm_name),
        });
    }
    Ok(())
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub removed: Vec<String>,
    pub failed: Vec<String>,
}

/// Remove every snapshot the ledger records for this host (leftovers of a crash) and drop the
/// entries. Entries of other hosts are left alone. Failures are reported, not fatal.
pub fn sweep(s: &Session, ledger: &mut Ledger) -> Result<SweepReport> {
    let host = s.endpoint().authority();
    let mine: Vec<LedgerEntry> = ledger
        .entries()
        .iter()
        .filter(|e| e.host == host)
        .cloned()
        .collect();
    let mut rep = SweepReport::default();
    for e in mine {
        match sweep_entry(s, &e) {
            Ok(()) => {
                tracing::info!(snapshot = %e.snapshot_name, vm = %e.vm_name, "swept leftover snapshot");
                ledger.remove(&e.snapshot_name)?;
                rep.removed.push(e.snapshot_name);
            }
            Err(err) => {
                tracing::warn!(snapshot = %e.snapshot_name, error = %err, "could not sweep snapshot");
                rep.failed.push(format!("{}: {err}", e.snapshot_name));
            }
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiesce_faults_are_recognised() {
        assert!(is_quiesce_fault("ApplicationQuiesceFault", ""));
        assert!(is_quiesce_fault("FilesystemQuiesceFault", "x"));
        assert!(is_quiesce_fault(
            "SnapshotFault",
            "An error occurred while quiescing the virtual machine."
        ));
        assert!(!is_quiesce_fault("SnapshotFault", "disk full"));
        assert!(!is_quiesce_fault("InvalidPowerState", "quiesce"));
        assert!(snapshot_name().starts_with(SNAPSHOT_PREFIX));
    }
}
