//! Snapshots with the ledger: intent recorded before CreateSnapshot_Task, removal confirmed by
//! the task's success and by the snapshot being gone, and a sweep for what a crash left.

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

/// Record the intent, create the snapshot, record its MoRef. If creation fails, anything it
/// may have left is removed and the entry dropped.
pub fn create(s: &Session, ledger: &mut Ledger, vm: &Vm, quiesce: bool) -> Result<TakenSnapshot> {
    let name = snapshot_name();
    ledger.add(LedgerEntry {
        host: s.endpoint().authority(),
        vm: vm.moref.clone(),
        vm_name: vm.name.clone(),
        snapshot_name: name.clone(),
        snapshot: None,
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
        .and_then(|task| s.wait_task(&task, "create snapshot"))
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
            })
        }
        Err(e) => {
            // The task may have created it anyway (timeout): remove by name, then forget it.
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

fn sweep_entry(s: &Session, e: &LedgerEntry) -> Result<()> {
    if let Some(m) = &e.snapshot {
        remove_snapshot(s, m)?;
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
