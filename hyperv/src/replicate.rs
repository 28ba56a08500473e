//! One replication cycle of a Hyper-V VM: sweep what an earlier run left (ledger), record a
//! `godwit-` checkpoint in the ledger BEFORE creating it, create it, open every frozen disk
//! (parent chain included) through [`HostFileLocator`], hand each to the caller, and remove the
//! checkpoint on every path (success, failure; a kill is swept at the next start).

use crate::checkpoint::{self, Checkpoint};
use crate::client::{Shell, WinRm};
use crate::error::{Error, Result};
use crate::hostfile::HostFileLocator;
use crate::ingest::push::{
    IngestConfig, PushLocator, PushReport, file_ranges, metadata_ranges, push_missing,
};
use crate::inventory::{INVENTORY_SCRIPT, Source, VmRecord, evaluate};
use crate::ledger::{CHECKPOINT_PREFIX, Ledger, LedgerEntry};
use crate::rct::{self, RctState, VmRct};
use crate::transport::{Credentials, HttpsTransport, Transport};
use crate::trust::Fingerprint;
use godwit_disk::storage::Locator;
use godwit_disk::{BlockSource, Disk, FormatHint};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one cycle needs besides the connection.
#[derive(Debug, Clone)]
pub struct CycleOptions {
    pub vm_name: String,
    /// The checkpoint ledger file.
    pub ledger: PathBuf,
}

/// What one cycle did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CycleReport {
    pub vm: String,
    pub checkpoint: String,
    pub checkpoint_type: String,
    pub disks: Vec<String>,
    /// Bytes read from the host over WinRM (all disks, parents included).
    pub bytes_read: u64,
    /// PowerShell commands the disk reads took.
    pub read_commands: u64,
    /// Leftover checkpoints removed before this cycle.
    pub swept: Vec<String>,
    /// Per disk: what RCT said changed (all `None` = read in full).
    pub changes: Vec<DiskChanges>,
    /// The RCT reference point this cycle's checkpoint became (the next cycle's baseline).
    pub reference_point: Option<String>,
    /// The host-push data path's figures (all disks); `None` when everything went over WinRM.
    pub push: Option<PushReport>,
}

/// What Resilient Change Tracking said about one disk in a cycle.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskChanges {
    pub disk: usize,
    /// The RCT id the changes were asked since (`None`: no earlier reference point).
    pub since: Option<String>,
    /// Changed ranges and their bytes (`None`: the disk was read in full).
    pub ranges: Option<usize>,
    pub changed_bytes: Option<u64>,
}

/// Optional parts of a cycle; the default is what [`run_cycle`] does.
#[derive(Debug, Clone, Default)]
pub struct CycleExtras {
    /// The RCT state file. When set, a good cycle's checkpoint becomes an RCT reference point
    /// (recorded here) instead of being removed, and the next cycle hands only the ranges
    /// changed since then to the sink.
    pub rct_state: Option<PathBuf>,
}

/// Called with (disk number, the frozen disk, its record, the changed ranges or `None` to
/// read everything).
pub type RangeDiskSink<'a> = dyn FnMut(
        usize,
        &Disk,
        &checkpoint::FrozenDisk,
        Option<&[Range<u64>]>,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// Called with (disk number, the frozen disk opened as a [`Disk`], its record).
pub type DiskSink<'a> = dyn FnMut(
        usize,
        &Disk,
        &checkpoint::FrozenDisk,
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// Connect to `source` with the certificate pinned.
pub fn connect(
    source: &Source,
    creds: &Credentials,
    pin: Option<Fingerprint>,
) -> Result<Arc<WinRm<HttpsTransport>>> {
    let transport = HttpsTransport::new(
        &source.host,
        source.port,
        creds.clone(),
        pin.into_iter().collect(),
        Duration::from_secs(60),
    )?;
    Ok(Arc::new(WinRm::new(transport)))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Remove every checkpoint the ledger holds for this host (left by a crash or a failed
/// removal). Entries leave the ledger only once removal succeeded.
pub fn sweep<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    ledger: &mut Ledger,
) -> Result<Vec<String>> {
    let host = client.transport().authority();
    let mine: Vec<LedgerEntry> = ledger
        .entries()
        .iter()
        .filter(|e| e.host == host)
        .cloned()
        .collect();
    let mut swept = Vec::new();
    if mine.is_empty() {
        return Ok(swept);
    }
    let shell = client.open_shell()?;
    for e in mine {
        let n = checkpoint::remove(&shell, &host, &e.vm_id, &e.checkpoint_name)?;
        tracing::info!(checkpoint = %e.checkpoint_name, vm = %e.vm_name, removed = n, "swept a leftover checkpoint");
        ledger.remove(&e.checkpoint_name)?;
        swept.push(e.checkpoint_name);
    }
    shell.close()?;
    Ok(swept)
}

fn find_vm<T: Transport>(client: &WinRm<T>, name: &str) -> Result<VmRecord> {
    let host = client.transport().authority();
    let shell = client.open_shell()?;
    let value = shell.run_ps_json("inventory.ps1", INVENTORY_SCRIPT)?;
    shell.close()?;
    let records: Vec<VmRecord> = serde_json::from_value(value).map_err(|e| Error::BadOutput {
        host: host.clone(),
        script: "inventory.ps1".into(),
        detail: e.to_string(),
    })?;
    let inv = evaluate(&host, records);
    let mut matching: Vec<_> = inv
        .vms
        .into_iter()
        .filter(|v| v.record.name == name)
        .collect();
    let vm = match matching.len() {
        0 => {
            return Err(Error::NotFound {
                host,
                what: format!("VM {name:?}"),
            });
        }
        1 => matching.remove(0),
        n => {
            return Err(Error::Usage(format!(
                "{host}: {n} VMs are named {name:?}; names must be unique to replicate"
            )));
        }
    };
    if !vm.eligible {
        return Err(Error::Usage(format!(
            "{host}: VM {name:?} cannot be replicated: {}",
            vm.reasons.join("; ")
        )));
    }
    Ok(vm.record)
}

/// One cycle (see the module doc): every frozen disk read in full.
pub fn run_cycle<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    opts: &CycleOptions,
    per_disk: &mut DiskSink<'_>,
) -> Result<CycleReport> {
    let mut sink = |n: usize, d: &Disk, f: &checkpoint::FrozenDisk, _: Option<&[Range<u64>]>| {
        per_disk(n, d, f)
    };
    run_cycle_with(client, opts, &CycleExtras::default(), &mut sink)
}

/// One cycle with the optional parts in `extras` (RCT incrementals), disks read over WinRM.
pub fn run_cycle_with<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    opts: &CycleOptions,
    extras: &CycleExtras,
    per_disk: &mut RangeDiskSink<'_>,
) -> Result<CycleReport> {
    run_cycle_pushed(client, opts, extras, None, per_disk)
}

/// One cycle; with `ingest`, the host-push data path: the host pushes the data ranges to that
/// ingest endpoint and the disks read from the spool (WinRM only for metadata and anything
/// not pushed). Spools live under `spool_dir/<vm id>/` and are removed after a good copy
/// (kept after a failure, so the next run asks only for what is missing).
pub fn run_cycle_pushed<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    opts: &CycleOptions,
    extras: &CycleExtras,
    ingest: Option<&IngestConfig>,
    per_disk: &mut RangeDiskSink<'_>,
) -> Result<CycleReport> {
    let host = client.transport().authority();
    let mut ledger = Ledger::open(&opts.ledger)?;
    let swept = sweep(client, &mut ledger)?;
    let vm = find_vm(client, &opts.vm_name)?;
    let mut rct_state = match &extras.rct_state {
        Some(p) => Some((p, RctState::load(p)?)),
        None => None,
    };
    let previous = rct_state
        .as_ref()
        .and_then(|(_, s)| s.get(&host, &vm.id).cloned());
    let name = format!("{CHECKPOINT_PREFIX}{}", uuid::Uuid::new_v4().simple());
    ledger.add(LedgerEntry {
        host: host.clone(),
        vm_id: vm.id.clone(),
        vm_name: vm.name.clone(),
        checkpoint_name: name.clone(),
        checkpoint_id: None,
        created_unix: now_unix(),
    })?;
    let shell = client.open_shell()?;
    let created = checkpoint::create(&shell, &host, &vm.id, &name);
    let result = match created {
        Ok(cp) => {
            ledger.set_checkpoint_id(&name, &cp.id)?;
            copy_disks(
                client,
                &shell,
                &vm,
                &cp,
                previous.as_ref(),
                ingest,
                per_disk,
            )
            .map(|copied| (cp, copied))
        }
        Err(e) => Err(e),
    };
    // After a good cycle with RCT, the checkpoint becomes a reference point (which removes
    // it); otherwise, and if that fails, it is removed on every path, also when creation
    // failed half-way (the script may have created it before failing). The entry stays in
    // the ledger if removal fails.
    let mut reference_point = None;
    if let (Ok((cp, _)), Some((path, state))) = (&result, rct_state.as_mut()) {
        match rct::convert_to_reference_point(&shell, &host, &vm.id, &name) {
            Ok(rp) => {
                state.set(&host, &vm.id, Some(vm_rct(&host, &vm.id, cp, &rp)));
                reference_point = Some(rp.reference_point);
            }
            Err(e) => {
                tracing::warn!(error = %e, checkpoint = %name, "could not make an RCT reference point; the next cycle reads everything");
                state.set(&host, &vm.id, None);
            }
        }
        state.save(path)?;
    }
    let removed = if reference_point.is_some() {
        ledger.remove(&name)
    } else {
        checkpoint::remove(&shell, &host, &vm.id, &name).and_then(|_| ledger.remove(&name))
    };
    let closed = shell.close();
    let (cp, copied) = match (result, removed) {
        (Err(e), Err(r)) => {
            tracing::warn!(error = %r, checkpoint = %name, "could not remove the checkpoint; the next run sweeps it");
            return Err(e);
        }
        (Err(e), Ok(())) => return Err(e),
        (Ok(_), Err(r)) => return Err(r),
        (Ok(v), Ok(())) => v,
    };
    closed?;
    Ok(CycleReport {
        vm: vm.name,
        checkpoint: name,
        checkpoint_type: cp.checkpoint_type,
        disks: cp.disks.iter().map(|d| d.path.clone()).collect(),
        bytes_read: copied.bytes_read,
        read_commands: copied.read_commands,
        swept,
        changes: copied.changes,
        reference_point,
        push: copied.push,
    })
}

/// The state to keep after a reference point: each frozen disk's RCT id under its drive.
fn vm_rct(host: &str, vm_id: &str, cp: &Checkpoint, rp: &rct::ReferencePoint) -> VmRct {
    let disks = cp
        .disks
        .iter()
        .filter_map(|d| {
            let r = rp.disks.iter().find(|r| {
                r.path
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(&d.path))
            })?;
            Some(rct::DiskRct {
                drive: rct::drive_key(
                    &d.controller_type,
                    d.controller_number,
                    d.controller_location,
                ),
                rct_id: r.rct_id.clone(),
            })
        })
        .collect();
    VmRct {
        host: host.to_string(),
        vm_id: vm_id.to_string(),
        reference_point: rp.reference_point.clone(),
        disks,
    }
}

struct Copied {
    bytes_read: u64,
    read_commands: u64,
    changes: Vec<DiskChanges>,
    push: Option<PushReport>,
}

fn copy_disks<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    shell: &Shell<'_, T>,
    vm: &VmRecord,
    cp: &Checkpoint,
    previous: Option<&VmRct>,
    ingest: Option<&IngestConfig>,
    per_disk: &mut RangeDiskSink<'_>,
) -> Result<Copied> {
    if cp.disks.is_empty() {
        return Err(Error::Usage(format!(
            "{}: checkpoint {} of VM {:?} froze no disks",
            client.transport().authority(),
            cp.name,
            vm.name
        )));
    }
    // Disk N = the Nth drive in controller order, as the inventory lists them.
    let mut disks = cp.disks.clone();
    disks.sort_by(|a, b| {
        (
            &a.controller_type,
            a.controller_number,
            a.controller_location,
        )
            .cmp(&(
                &b.controller_type,
                b.controller_number,
                b.controller_location,
            ))
    });
    let host = client.transport().authority();
    let host_files = HostFileLocator::new(client)?;
    let pushed = ingest.map(|c| {
        let mut dir = c.spool_dir.clone();
        dir.push(vm.id.to_ascii_lowercase());
        (
            c.clone(),
            dir.clone(),
            PushLocator::new(host_files.clone(), dir),
        )
    });
    let locator: &dyn Locator = match &pushed {
        Some((_, _, p)) => p,
        None => &host_files,
    };
    let mut push_report: Option<PushReport> = None;
    let mut changes = Vec::new();
    for (n, d) in disks.iter().enumerate() {
        let disk = Disk::open_with(locator, &d.path, FormatHint::Auto)?;
        let drive = rct::drive_key(
            &d.controller_type,
            d.controller_number,
            d.controller_location,
        );
        let since = previous.and_then(|p| p.disks.iter().find(|x| x.drive == drive));
        let ranges = match since {
            None => None,
            Some(s) => match rct::changes(shell, &host, &d.path, &s.rct_id, disk.virtual_size()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, disk = n, "RCT changes unavailable; reading the whole disk");
                    None
                }
            },
        };
        changes.push(DiskChanges {
            disk: n,
            since: since.map(|s| s.rct_id.clone()),
            changed_bytes: ranges
                .as_ref()
                .map(|r| r.iter().map(|x| x.end - x.start).sum()),
            ranges: ranges.as_ref().map(Vec::len),
        });
        if let Some((cfg, _, push_locator)) = &pushed {
            // First the sector bitmaps mapping will read (differencing VHDs), then the data.
            let t = push_report.get_or_insert_with(PushReport::default);
            let meta = metadata_ranges(&disk, ranges.as_deref(), cfg.align)?;
            if !meta.is_empty() {
                let r = push_missing(shell, &host, cfg, push_locator, &meta)?;
                tracing::info!(disk = n, report = ?r, "sector bitmaps pushed");
                t.add(&r);
            }
            let mut needed = file_ranges(&disk, ranges.as_deref(), cfg.align)?;
            // (Bitmaps between data ranges were counted in the first round.)
            for (name, set) in &mut needed {
                if let Some(m) = meta.get(name) {
                    *set = set.subtract(m);
                }
            }
            let r = push_missing(shell, &host, cfg, push_locator, &needed)?;
            tracing::info!(disk = n, report = ?r, "disk ranges pushed");
            t.add(&r);
        }
        per_disk(n, &disk, d, ranges.as_deref()).map_err(|source| Error::Sink {
            disk: n,
            file: d.path.clone(),
            source,
        })?;
    }
    if let Some((_, dir, push_locator)) = &pushed {
        if let Some(t) = push_report.as_mut() {
            t.served_from_spool = push_locator.bytes_from_spool();
        }
        // Copied: the spooled bytes are in the store now. The VM's spool directory goes whole
        // (also spools of file versions an earlier, interrupted run left).
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %dir.display(), "could not remove the spool");
        }
    }
    Ok(Copied {
        bytes_read: host_files.bytes_read(),
        read_commands: host_files.commands(),
        changes,
        push: push_report,
    })
}
