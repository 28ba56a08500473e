//! One replication cycle of a VM's disks, source side: sweep leftovers, snapshot (ledger
//! first), open each frozen disk remotely, hand it to the caller with the changed ranges when
//! CBT allows, record changeIds, and remove the snapshot on every path.
//!
//! Order for incrementals: record changeIds → remove the old snapshot → create the new one.
//! Each cycle records its changeIds and removes its own snapshot before it returns, so the
//! next cycle's "create" always comes after the previous "record" and "remove".

use crate::cbt::{ChangeIdStore, change_id_key, changed_ranges};
use crate::datastore::{DatastoreLocator, DatastorePath};
use crate::error::{Error, Result};
use crate::inventory::{VM_PROPERTIES, Vm, VmDisk, eligibility, vm_from_object};
use crate::ledger::Ledger;
use crate::nfc;
use crate::session::{Session, map_reply};
use crate::snapshot::{self, TakenSnapshot};
use crate::soap::envelope as env;
use crate::soap::response as resp;
use godwit_disk::{Disk, FormatHint};
use std::ops::Range;
use std::path::{Path, PathBuf};

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
    /// How the disks were read (`folder` or `nfc`).
    pub disk_access: DiskAccess,
    /// Bytes downloaded through NFC device URLs (streamOptimized, compressed).
    pub nfc_bytes: u64,
    /// The export lease, completed (NFC only).
    pub nfc_lease: Option<String>,
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
    let spool_dir = opts
        .ledger
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    remove_stale_spool(&spool_dir);
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
    let use_nfc = match access {
        DiskAccess::Nfc => true,
        DiskAccess::Folder => false,
        DiskAccess::Auto => vm.disks.iter().any(|d| {
            DatastorePath::parse(&d.file_name)
                .is_some_and(|p| !locator.folder_can_serve(&p.datastore))
        }),
    };
    let snap = snapshot::create(s, &mut ledger, &vm, quiesce)?;
    let mut nfc_done = NfcOutcome::default();
    let result = if use_nfc {
        read_disks_nfc(
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
        snapshot: snap.name,
        quiesced: quiesce,
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
    })
}

/// Remove NFC spool files a crashed cycle left in `dir`.
fn remove_stale_spool(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("nfc-") && name.ends_with(".vmdk") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[derive(Default)]
struct NfcOutcome {
    bytes: u64,
    lease: Option<String>,
}

/// Changed ranges for one disk when CBT has a previous changeId for it.
fn cbt_ranges(
    s: &Session,
    opts: &CycleOptions,
    vm: &Vm,
    snap: &TakenSnapshot,
    store: &ChangeIdStore,
    key: &str,
    d: &VmDisk,
) -> Result<Option<Vec<Range<u64>>>> {
    match (opts.cbt, store.get(key), d.change_id.as_deref()) {
        (true, Some(prev), Some(_)) => {
            changed_ranges(s, &vm.moref, &snap.moref, d.key, d.capacity_bytes, prev)
        }
        _ => Ok(None),
    }
}

fn vm_uuid(vm: &Vm) -> String {
    vm.instance_uuid
        .clone()
        .or_else(|| vm.uuid.clone())
        .unwrap_or_else(|| vm.moref.value.clone())
}

/// The NFC path: one export lease for all disks, each downloaded to a spool file under a
/// keep-alive and handed to the sink; Complete on success, Abort on any failure.
#[allow(clippy::too_many_arguments)]
fn read_disks_nfc(
    s: &Session,
    opts: &CycleOptions,
    vm: &Vm,
    snap: &TakenSnapshot,
    spool_dir: &Path,
    store: &mut ChangeIdStore,
    sink: &mut DiskSink<'_>,
    outcome: &mut NfcOutcome,
) -> Result<Vec<DiskReport>> {
    let disks = snapshot_disks(s, snap)?;
    let lease = if vm.power_state.as_deref() == Some("poweredOff") {
        nfc::export_vm(s, &vm.moref)?
    } else {
        nfc::export_snapshot(s, &snap.moref)?
    };
    outcome.lease = Some(lease.moref.value.clone());
    let urls: Vec<_> = lease.disks().into_iter().cloned().collect();
    if urls.len() != disks.len() {
        let e = Error::malformed(
            &s.endpoint().authority(),
            "HttpNfcLease info",
            format!(
                "the lease offers {} disk URLs for {} disks",
                urls.len(),
                disks.len()
            ),
        );
        let _ = lease.abort();
        return Err(e);
    }
    let total: u64 = disks.iter().map(|d| d.capacity_bytes).sum();
    let uuid = vm_uuid(vm);
    let mut endpoints = nfc::DeviceEndpoints::new(s);
    let result = nfc::with_keepalive(&lease, total, |ka| {
        let mut reports = Vec::new();
        let mut new_ids = Vec::new();
        for (i, (d, url)) in disks.iter().zip(&urls).enumerate() {
            let key = change_id_key(&uuid, d.key, d.uuid.as_deref());
            let ranges = cbt_ranges(s, opts, vm, snap, store, &key, d)?;
            let path = nfc::spool_path(spool_dir, &lease.moref, i);
            nfc::download_disk(&mut endpoints, &lease, url, d.capacity_bytes, &path, ka)?;
            let fed = feed_spooled(&path, i, d, ranges.as_deref(), sink);
            let _ = std::fs::remove_file(&path);
            fed?;
            reports.push(DiskReport {
                key: d.key,
                file_name: d.file_name.clone(),
                capacity_bytes: d.capacity_bytes,
                changed_bytes: ranges.map(|r| r.iter().map(|x| x.end - x.start).sum()),
            });
            new_ids.push((key, d.change_id.clone()));
        }
        Ok((
            reports,
            new_ids,
            ka.done_bytes.load(std::sync::atomic::Ordering::Relaxed),
        ))
    });
    match result {
        Ok((reports, new_ids, bytes)) => {
            outcome.bytes = bytes;
            lease.complete()?;
            if opts.cbt {
                store.record(new_ids)?;
            }
            Ok(reports)
        }
        Err(e) => {
            if let Err(a) = lease.abort() {
                tracing::warn!(error = %a, "could not abort the NFC lease");
            }
            Err(e)
        }
    }
}

/// Open a downloaded streamOptimized disk, check its size, and hand it to the sink.
fn feed_spooled(
    path: &Path,
    i: usize,
    d: &VmDisk,
    ranges: Option<&[Range<u64>]>,
    sink: &mut DiskSink<'_>,
) -> Result<()> {
    use godwit_disk::BlockSource;
    let p = path.to_string_lossy();
    let disk = Disk::open(&p)?;
    if disk.virtual_size() != d.capacity_bytes {
        return Err(Error::BadFile {
            path: format!("{} (NFC export of {})", p, d.file_name),
            detail: format!(
                "virtual size {} differs from the disk capacity {}",
                disk.virtual_size(),
                d.capacity_bytes
            ),
        });
    }
    sink(i, &disk, ranges).map_err(|e| Error::Sink {
        disk: i,
        file: d.file_name.clone(),
        source: e,
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
    let uuid = vm_uuid(vm);
    let mut reports = Vec::new();
    let mut new_ids = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let key = change_id_key(&uuid, d.key, d.uuid.as_deref());
        let ranges = cbt_ranges(s, opts, vm, snap, store, &key, d)?;
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
