//! One replication cycle of a VM's disks, source side: sweep leftovers, snapshot (ledger
//! first), open each frozen disk remotely, hand it to the caller with the changed ranges when
//! CBT allows, record changeIds, and remove the snapshot on every path.
//!
//! Order for incrementals: record changeIds → remove the old snapshot → create the new one.
//! Each cycle records its changeIds and removes its own snapshot before it returns, so the
//! next cycle's "create" always comes after the previous "record" and "remove".

use crate::cbt::{ChangeIdStore, change_id_key, changed_ranges};
use crate::datastore::DatastoreLocator;
use crate::error::{Error, Result};
use crate::inventory::{VM_PROPERTIES, Vm, VmDisk, eligibility, vm_from_object};
use crate::ledger::Ledger;
use crate::session::{Session, map_reply};
use crate::snapshot::{self, TakenSnapshot};
use crate::soap::envelope as env;
use crate::soap::response as resp;
use godwit_disk::{Disk, FormatHint};
use std::ops::Range;
use std::path::PathBuf;

/// Where the cycle keeps its state, and what it may do.
#[derive(Clone, Debug)]
pub struct CycleOptions {
    pub vm_name: String,
    /// The snapshot ledger (JSON).
    pub ledger: PathBuf,
    /// The changeId store (JSON).
    pub change_ids: PathBuf,
    /// Use CBT: enable it when off (only while the VM has no snapshots), query changed areas.
    pub cbt: bool,
}

/// What a cycle did, per disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskReport {
    pub key: i32,
    pub file_name: String,
    pub capacity_bytes: u64,
    /// `Some(bytes)` when only changed ranges were handed over.
    pub changed_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleReport {
    pub vm: String,
    pub snapshot: String,
    pub quiesced: bool,
    pub disks: Vec<DiskReport>,
    /// Bytes fetched from `/folder`.
    pub bytes_read: u64,
    pub swept: Vec<String>,
}

/// The caller's per-disk work: (disk number, the opened disk, changed ranges or `None` = all).
pub type DiskSink<'a> = dyn FnMut(
        usize,
        &Disk,
        Option<&[Range<u64>]>,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// Find a VM by name.
pub fn find_vm(s: &Session, name: &str) -> Result<Vm> {
    let objs = s.all_of_kind("VirtualMachine", VM_PROPERTIES)?;
    for o in &objs {
        if o.prop("name").is_some_and(|n| n.text.trim() == name) {
            return vm_from_object(o)
                .map_err(|e| map_reply(s.endpoint(), "RetrievePropertiesEx", e));
        }
    }
    Err(Error::NotFound {
        host: s.endpoint().authority(),
        what: format!("VM {name:?}"),
    })
}

fn enable_cbt(s: &Session, ledger: &mut Ledger, vm: &Vm) -> Result<()> {
    if !vm.snapshots.is_empty() {
        return Err(Error::Usage(format!(
            "VM {:?}: CBT can only be enabled while the VM has no snapshots",
            vm.name
        )));
    }
    let task = s.call(
        "ReconfigVM_Task",
        &|_| env::reconfig_change_tracking(&vm.moref, true),
        &|b| resp::parse_moref_reply(b, "ReconfigVM_Task"),
    )?;
    s.wait_task(&task, "enable CBT")?;
    // CBT takes effect after a stun: a snapshot create + remove.
    let snap = snapshot::create(s, ledger, vm, false)?;
    snapshot::remove(s, ledger, &snap)
}

/// The disks of the snapshot's frozen configuration.
fn snapshot_disks(s: &Session, snap: &TakenSnapshot) -> Result<Vec<VmDisk>> {
    let o = s.object_properties(&snap.moref, &["config.hardware.device"])?;
    if let Some(m) = o.missing.first() {
        return Err(Error::malformed(
            &s.endpoint().authority(),
            "RetrievePropertiesEx",
            format!("snapshot {}: {} missing: {}", snap.name, m.path, m.fault),
        ));
    }
    let v = vm_from_object(&o).map_err(|e| map_reply(s.endpoint(), "RetrievePropertiesEx", e))?;
    Ok(v.disks)
}

/// Run one cycle. The snapshot is removed on success and on failure; a crash leaves a ledger
/// entry that the next cycle (or [`snapshot::sweep`]) removes.
pub fn run_cycle(s: &Session, opts: &CycleOptions, sink: &mut DiskSink<'_>) -> Result<CycleReport> {
    let mut ledger = Ledger::open(&opts.ledger)?;
    let swept = snapshot::sweep(s, &mut ledger)?;
    if let Some(f) = swept.failed.first() {
        return Err(Error::Usage(format!(
            "a leftover snapshot could not be removed: {f}"
        )));
    }
    let mut vm = find_vm(s, &opts.vm_name)?;
    let el = eligibility(&vm);
    if !el.eligible {
        return Err(Error::Usage(format!(
            "VM {:?} is not eligible: {}",
            vm.name,
            el.reasons.join("; ")
        )));
    }
    if opts.cbt && !vm.cbt_enabled {
        enable_cbt(s, &mut ledger, &vm)?;
        vm = find_vm(s, &opts.vm_name)?;
    }
    let quiesce = vm.tools_running && vm.power_state.as_deref() == Some("poweredOn");
    let mut store = ChangeIdStore::open(&opts.change_ids)?;
    let locator = DatastoreLocator::new(s)?;
    let snap = snapshot::create(s, &mut ledger, &vm, quiesce)?;
    let result = read_disks(s, opts, &vm, &snap, &locator, &mut store, sink);
    let removed = snapshot::remove(s, &mut ledger, &snap);
    let disks = result?;
    removed?;
    Ok(CycleReport {
        vm: vm.name.clone(),
        snapshot: snap.name,
        quiesced: quiesce,
        disks,
        bytes_read: locator.bytes_read(),
        swept: swept.removed,
    })
}

fn read_disks(
    s: &Session,
    opts: &CycleOptions,
    vm: &Vm,
    snap: &TakenSnapshot,
    locator: &DatastoreLocator,
    store: &mut ChangeIdStore,
    sink: &mut DiskSink<'_>,
) -> Result<Vec<DiskReport>> {
    let disks = snapshot_disks(s, snap)?;
    let vm_uuid = vm
        .instance_uuid
        .clone()
        .or_else(|| vm.uuid.clone())
        .unwrap_or_else(|| vm.moref.value.clone());
    let mut reports = Vec::new();
    let mut new_ids = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let key = change_id_key(&vm_uuid, d.key, d.uuid.as_deref());
        let ranges = match (opts.cbt, store.get(&key), d.change_id.as_deref()) {
            (true, Some(prev), Some(_)) => {
                changed_ranges(s, &vm.moref, &snap.moref, d.key, d.capacity_bytes, prev)?
            }
            _ => None,
        };
        let disk = Disk::open_with(locator, &d.file_name, FormatHint::Auto)?;
        sink(i, &disk, ranges.as_deref()).map_err(|e| Error::Sink {
            disk: i,
            file: d.file_name.clone(),
            source: e,
        })?;
        reports.push(DiskReport {
            key: d.key,
            file_name: d.file_name.clone(),
            capacity_bytes: d.capacity_bytes,
            changed_bytes: ranges.map(|r| r.iter().map(|x| x.end - x.start).sum()),
        });
        new_ids.push((key, d.change_id.clone()));
    }
    // Record the changeIds before the snapshot goes (the order CBT needs).
    if opts.cbt {
        store.record(new_ids)?;
    }
    Ok(reports)
}
