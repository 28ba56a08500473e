//! One replication cycle of a VM's disks, source side: sweep leftovers, resolve the VM, refuse
//! what cannot be copied faithfully (before any snapshot: see [`crate::preflight`]), snapshot
//! (ledger first), open each frozen disk remotely and check it, hand it to the caller with the
//! changed ranges when CBT allows, record changeIds, and remove the snapshot on every path.
//!
//! Order for incrementals: record changeIds → remove the old snapshot → create the new one.
//! Each cycle records its changeIds and removes its own snapshot before it returns, so the
//! next cycle's "create" always comes after the previous "record" and "remove".
//!
//! Nothing reaches the caller's sink before every disk of the snapshot was opened and checked
//! (capacity, encryption), so a refusal writes nothing to the staging store.

use crate::cbt::{
    AllocatedOnly, Areas, Basis, ChangeIdStore, FullReason, StoredChangeId, basis, change_id_key,
    changed_ranges,
};
use crate::datastore::{DatastoreLocator, DatastorePath};
use crate::eligibility::disk_name;
use crate::error::{Error, Result};
use crate::inventory::{Vm, VmDisk, vm_from_object};
use crate::ledger::Ledger;
use crate::session::{KEEPALIVE_INTERVAL, Session, map_reply};
use crate::snapshot::{self, TakenSnapshot};
use crate::soap::envelope as env;
use crate::soap::response as resp;
use crate::vmref::{self, VmTarget};
use godwit_disk::{BlockSource, Disk, FormatHint};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::vmref::find_vm;

/// How disk bytes are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskAccess {
    /// `/folder` Range reads, unless a disk lives on a datastore `/folder` cannot serve
    /// (vSAN, vVol, PMem): then the NFC export lease for the whole VM.
    #[default]
    Auto,
    /// Datastore `/folder` Range reads of the frozen extents (CBT reads only changed ranges).
    Folder,
    /// The NFC export lease (ExportSnapshot, or ExportVm when the VM is off): every disk is
    /// downloaded whole as a streamOptimized VMDK.
    Nfc,
}

impl DiskAccess {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(DiskAccess::Auto),
            "folder" => Ok(DiskAccess::Folder),
            "nfc" => Ok(DiskAccess::Nfc),
            other => Err(Error::Usage(format!(
                "disk access {other:?}: expected auto, folder or nfc"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DiskAccess::Auto => "auto",
            DiskAccess::Folder => "folder",
            DiskAccess::Nfc => "nfc",
        }
    }
}

/// Where the cycle keeps its state, and what it may do.
#[derive(Clone, Debug)]
pub struct CycleOptions {
    /// The VM: a name, a MoRef value (`vm-123`) or an instance UUID.
    pub vm_name: String,
    /// A MoRef value resolved earlier (a service job's): followed whatever the VM is called.
    pub vm_moref: Option<String>,
    /// The instance UUID resolved earlier (guards a reused MoRef, finds a re-registered VM).
    pub vm_instance_uuid: Option<String>,
    /// The snapshot ledger (JSON).
    pub ledger: PathBuf,
    /// The changeId store (JSON).
    pub change_ids: PathBuf,
    /// Use CBT: enable it when off (only while the VM has no snapshots), query changed areas.
    pub cbt: bool,
    /// Quiesce the guest (when VMware Tools run on a powered-on VM); a quiesce fault retries
    /// once without.
    pub quiesce: bool,
    /// Keep the vCenter session alive with `CurrentTime` at this interval during the cycle.
    pub keepalive: Option<Duration>,
}

impl Default for CycleOptions {
    fn default() -> Self {
        CycleOptions {
            vm_name: String::new(),
            vm_moref: None,
            vm_instance_uuid: None,
            ledger: PathBuf::from("vsphere-snapshot-ledger.json"),
            change_ids: PathBuf::from("vsphere-change-ids.json"),
            cbt: false,
            quiesce: true,
            keepalive: Some(KEEPALIVE_INTERVAL),
        }
    }
}

impl CycleOptions {
    fn target(&self) -> VmTarget {
        VmTarget {
            query: self.vm_name.clone(),
            moref: self.vm_moref.clone(),
            instance_uuid: self.vm_instance_uuid.clone(),
        }
    }
}

/// What a cycle did, per disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskReport {
    pub key: i32,
    pub file_name: String,
    pub capacity_bytes: u64,
    /// `Some(bytes)` when only changed ranges were handed over.
    pub changed_bytes: Option<u64>,
    /// With CBT asked for, why this disk was read whole.
    pub full_read_reason: Option<String>,
    /// A full read limited to the areas in use (QueryChangedDiskAreas `*`): their size.
    pub allocated_bytes: Option<u64>,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// The VM's name now (a pinned VM may have been renamed).
    pub vm: String,
    pub vm_moref: String,
    pub vm_instance_uuid: Option<String>,
    pub snapshot: String,
    pub quiesced: bool,
    /// Quiescing failed with this fault; the snapshot was taken without it.
    pub quiesce_fallback: Option<String>,
    pub disks: Vec<DiskReport>,
    /// Bytes fetched from `/folder`.
    pub bytes_read: u64,
    pub swept: Vec<String>,
    /// How the disks were read (`folder` or `nfc`).
    pub disk_access: DiskAccess,
    /// Bytes downloaded through NFC device URLs (streamOptimized, compressed).
    pub nfc_bytes: u64,
    /// The export lease, completed (NFC only).
    pub nfc_lease: Option<String>,
    /// Times the session was re-established during the cycle.
    pub relogins: u32,
}

impl CycleReport {
    /// What the operator should know about the cycle beyond its numbers, one line each: the
    /// NFC lease, a quiesce fallback, full reads and their reason, disk warnings, re-logins.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(lease) = &self.nfc_lease {
            out.push(format!(
                "disks read through the NFC export lease {lease} ({} bytes downloaded, lease completed)",
                self.nfc_bytes
            ));
        }
        if let Some(f) = &self.quiesce_fallback {
            out.push(format!(
                "quiescing the guest failed ({f}); the snapshot was taken without it (crash-consistent)"
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if let Some(why) = &d.full_read_reason {
                let how = d.allocated_bytes.map_or(String::new(), |b| {
                    format!(", only the {b} bytes in use (QueryChangedDiskAreas \"*\")")
                });
                out.push(format!("disk {i} ({}): full read: {why}{how}", d.file_name));
            }
            for w in &d.warnings {
                out.push(format!("disk {i} ({}): warning: {w}", d.file_name));
            }
        }
        if self.relogins > 0 {
            out.push(format!(
                "the vCenter session was re-established {} time(s) during the cycle",
                self.relogins
            ));
        }
        out
    }
}

/// The caller's per-disk work: (disk number, the disk, changed ranges or `None` = all). The
/// disk may be a view that reads unallocated areas as zeros (a first full read with CBT).
pub type DiskSink<'a> = dyn FnMut(
        usize,
        &dyn BlockSource,
        Option<&[Range<u64>]>,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
    + 'a;

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
pub(crate) fn snapshot_disks(s: &Session, snap: &TakenSnapshot) -> Result<Vec<VmDisk>> {
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
    run_cycle_with(s, opts, DiskAccess::Auto, sink)
}

/// [`run_cycle`] with the disk access chosen by the caller. NFC spool files go next to the
/// ledger and are removed after each disk (and at the start of the next cycle after a crash).
pub fn run_cycle_with(
    s: &Session,
    opts: &CycleOptions,
    access: DiskAccess,
    sink: &mut DiskSink<'_>,
) -> Result<CycleReport> {
    let relogins_before = s.relogins();
    let mut r = s.keepalive(opts.keepalive, || cycle(s, opts, access, sink))?;
    r.relogins = s.relogins() - relogins_before;
    Ok(r)
}

fn cycle(
    s: &Session,
    opts: &CycleOptions,
    access: DiskAccess,
    sink: &mut DiskSink<'_>,
) -> Result<CycleReport> {
    let spool_dir = opts
        .ledger
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    crate::replicate_nfc::remove_stale_spool(&spool_dir);
    let mut ledger = Ledger::open(&opts.ledger)?;
    let swept = snapshot::sweep(s, &mut ledger)?;
    if let Some(f) = swept.failed.first() {
        return Err(Error::Usage(format!(
            "a leftover snapshot could not be removed: {f}"
        )));
    }
    let mut vm = vmref::resolve(s, &opts.target())?;
    let locator = DatastoreLocator::new(s)?;
    let use_nfc = match access {
        DiskAccess::Nfc => true,
        DiskAccess::Folder => false,
        DiskAccess::Auto => vm.disks.iter().any(|d| {
            DatastorePath::parse(&d.file_name).is_some_and(|p| {
                !locator
                    .for_datastore(d.datastore.as_ref())
                    .folder_can_serve(&p.datastore)
            })
        }),
    };
    // Everything that refuses the VM happens here, before a snapshot exists.
    crate::preflight::check(s, &mut vm, &locator, opts.cbt, use_nfc)?;
    if opts.cbt && !vm.cbt_enabled {
        enable_cbt(s, &mut ledger, &vm)?;
        vm = vmref::resolve(
            s,
            &VmTarget {
                moref: Some(vm.moref.value.clone()),
                instance_uuid: vm.instance_uuid.clone(),
                ..opts.target()
            },
        )?;
    }
    let quiesce =
        opts.quiesce && vm.tools_running && vm.power_state.as_deref() == Some("poweredOn");
    let mut store = ChangeIdStore::open(&opts.change_ids)?;
    let snap = snapshot::create(s, &mut ledger, &vm, quiesce)?;
    let mut nfc_done = crate::replicate_nfc::NfcOutcome::default();
    let result = if use_nfc {
        crate::replicate_nfc::read_disks_nfc(
            s,
            opts,
            &vm,
            &snap,
            &spool_dir,
            &mut store,
            sink,
            &mut nfc_done,
        )
    } else {
        read_disks(s, opts, &vm, &snap, &locator, &mut store, sink)
    };
    let removed = snapshot::remove(s, &mut ledger, &snap);
    let disks = result?;
    removed?;
    Ok(CycleReport {
        vm: vm.name.clone(),
        vm_moref: vm.moref.value.clone(),
        vm_instance_uuid: vm.instance_uuid.clone(),
        snapshot: snap.name,
        quiesced: snap.quiesced,
        quiesce_fallback: snap.quiesce_fallback,
        disks,
        bytes_read: locator.bytes_read(),
        swept: swept.removed,
        disk_access: if use_nfc {
            DiskAccess::Nfc
        } else {
            DiskAccess::Folder
        },
        nfc_bytes: nfc_done.bytes,
        nfc_lease: nfc_done.lease,
        relogins: 0,
    })
}

pub(crate) fn vm_uuid(vm: &Vm) -> String {
    vm.instance_uuid
        .clone()
        .or_else(|| vm.uuid.clone())
        .unwrap_or_else(|| vm.moref.value.clone())
}

/// How one disk is read this cycle.
pub(crate) enum Plan {
    Changed(Areas),
    Full {
        reason: Option<FullReason>,
        allocated: Option<Areas>,
    },
}

/// Decide how to read disk `d` (QueryChangedDiskAreas as needed, while the snapshot exists).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_disk(
    s: &Session,
    opts: &CycleOptions,
    vm: &Vm,
    snap: &TakenSnapshot,
    store: &ChangeIdStore,
    key: &str,
    d: &VmDisk,
    report: &mut DiskReport,
) -> Result<Plan> {
    if !opts.cbt {
        return Ok(Plan::Full {
            reason: None,
            allocated: None,
        });
    }
    let query = |id: &str| changed_ranges(s, &vm.moref, &snap.moref, d.key, d.capacity_bytes, id);
    let reason = match basis(store.get(key), d.change_id.as_deref(), d.capacity_bytes) {
        Basis::Incremental(prev) => match query(&prev)? {
            Ok(areas) => {
                if areas.clamped > 0 {
                    report.warnings.push(format!(
                        "vCenter reported {} changed area(s) reaching past the range asked; clamped to it",
                        areas.clamped
                    ));
                }
                return Ok(Plan::Changed(areas));
            }
            Err(fault) => FullReason::Rejected { fault },
        },
        Basis::Full(reason) => reason,
    };
    let allocated = match d.change_id {
        Some(_) => match query("*")? {
            Ok(a) => Some(a),
            Err(fault) => {
                report.warnings.push(format!(
                    "QueryChangedDiskAreas(\"*\") refused ({fault}); the whole capacity is read"
                ));
                None
            }
        },
        None => None,
    };
    Ok(Plan::Full {
        reason: Some(reason),
        allocated,
    })
}

/// Hand one disk to the sink as `plan` says, filling in the report.
pub(crate) fn feed(
    i: usize,
    d: &VmDisk,
    disk: &dyn BlockSource,
    plan: Plan,
    report: &mut DiskReport,
    sink: &mut DiskSink<'_>,
) -> Result<()> {
    let r = match plan {
        Plan::Changed(areas) => {
            report.changed_bytes = Some(areas.bytes());
            sink(i, disk, Some(&areas.ranges))
        }
        Plan::Full { reason, allocated } => {
            report.full_read_reason = reason.map(|r| r.to_string());
            match allocated {
                Some(areas) => {
                    report.allocated_bytes = Some(areas.bytes());
                    sink(i, &AllocatedOnly::new(disk, areas.ranges), None)
                }
                None => sink(i, disk, None),
            }
        }
    };
    r.map_err(|e| Error::Sink {
        disk: i,
        file: d.file_name.clone(),
        source: e,
    })
}

/// The refusal for a disk whose size disagrees with vCenter's capacity: never padded, never
/// truncated (a short read would replicate a truncated disk, e.g. 0 bytes for an empty file).
pub(crate) fn capacity_refusal(i: usize, d: &VmDisk, virtual_size: u64) -> Option<String> {
    (virtual_size != d.capacity_bytes).then(|| {
        format!(
            "{}: its files hold a disk of {virtual_size} bytes but vCenter's capacityInBytes is {} bytes; refusing to pad or truncate",
            disk_name(i, d),
            d.capacity_bytes
        )
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
    // Open and check every disk before any byte goes to the sink.
    let mut opened = Vec::new();
    let mut refusals = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let loc = locator.for_datastore(d.datastore.as_ref());
        // Descriptors read before the snapshot are not read again (the frozen disk is the same
        // file); one that could not be read then (locked by the running VM) is read now.
        let checked = vm
            .disks
            .iter()
            .any(|x| x.descriptor_checked && x.file_name == d.file_name);
        if !checked && let Some(why) = crate::preflight::descriptor_encryption(&loc, d)? {
            refusals.push(format!(
                "{} is encrypted (its descriptor has {why}): it would be copied as ciphertext",
                disk_name(i, d)
            ));
            continue;
        }
        let disk = Disk::open_with(&loc, &d.file_name, FormatHint::Auto)?;
        refusals.extend(capacity_refusal(i, d, disk.virtual_size()));
        opened.push(disk);
    }
    if !refusals.is_empty() {
        return Err(Error::refused(
            &s.endpoint().authority(),
            &format!("{:?} ({})", vm.name, vm.moref.value),
            refusals,
        ));
    }
    let uuid = vm_uuid(vm);
    let mut reports = Vec::new();
    let mut new_ids = Vec::new();
    for (i, (d, disk)) in disks.iter().zip(&opened).enumerate() {
        let key = change_id_key(&uuid, d.key, d.uuid.as_deref());
        let mut report = DiskReport {
            key: d.key,
            file_name: d.file_name.clone(),
            capacity_bytes: d.capacity_bytes,
            ..DiskReport::default()
        };
        let plan = plan_disk(s, opts, vm, snap, store, &key, d, &mut report)?;
        feed(i, d, disk, plan, &mut report, sink)?;
        reports.push(report);
        new_ids.push((key, stored(d)));
    }
    // Record the changeIds before the snapshot goes (the order CBT needs).
    if opts.cbt {
        store.record(new_ids)?;
    }
    Ok(reports)
}

/// What to record for a disk after a good cycle.
pub(crate) fn stored(d: &VmDisk) -> Option<StoredChangeId> {
    d.change_id.as_ref().map(|c| StoredChangeId {
        change_id: c.clone(),
        capacity_bytes: Some(d.capacity_bytes),
    })
}
