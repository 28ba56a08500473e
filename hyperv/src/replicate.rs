//! One replication cycle of a Hyper-V VM: sweep what an earlier run left (ledger), record a
//! `godwit-` checkpoint in the ledger BEFORE creating it, create it, open every frozen disk
//! (parent chain included) through [`HostFileLocator`], hand each to the caller, and remove the
//! checkpoint on every path (success, failure; a kill is swept at the next start).

use crate::checkpoint::{self, Checkpoint};
use crate::client::{Shell, WinRm};
use crate::error::{Error, Result};
use crate::hostfile::HostFileLocator;
use crate::ingest::PushLocator;
use crate::ingest::budget::usable_limit;
use crate::ingest::plan::{PlannedRange, metadata_ranges, ordered_ranges, without_held};
use crate::ingest::push::{
    Feeder, IngestConfig, MIN_SPOOL_BYTES, PushReport, Stopper, held, push_ranges,
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
    /// The cycle went on with the checkpoint an unfinished earlier attempt kept (its spool
    /// resumed) instead of making a new one.
    pub resumed_checkpoint: bool,
    /// `ApplicationConsistent` or `CrashConsistent` (empty when resumed).
    pub consistency: String,
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
    /// Set when RCT was asked and failed, so the disk was read in full again: why.
    pub full_reread: Option<String>,
}

/// Optional parts of a cycle; the default is what [`run_cycle`] does.
#[derive(Clone, Default)]
pub struct CycleExtras<'a> {
    /// The RCT state file. When set, a good cycle's checkpoint becomes an RCT reference point
    /// (recorded here) instead of being removed, and the next cycle hands only the ranges
    /// changed since then to the sink.
    pub rct_state: Option<PathBuf>,
    /// Asked with a failed cycle's error: `true` keeps its checkpoint (ledgered as an
    /// unfinished attempt) for the retry, which resumes it and its spool. `None` (and `false`)
    /// removes it, as after a cancel, a refusal that needs the operator, or a VM that is gone.
    pub keep_failed: Option<&'a (dyn Fn(&Error) -> bool + Sync)>,
}

impl std::fmt::Debug for CycleExtras<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleExtras")
            .field("rct_state", &self.rct_state)
            .field("keep_failed", &self.keep_failed.is_some())
            .finish()
    }
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

/// Remove the checkpoints the ledger holds for this host (left by a crash, a failed removal or
/// an attempt nobody will resume), except those `keep` says an attempt will resume. Entries
/// leave the ledger only once removal succeeded. A shell is opened only when something is
/// removed.
pub fn sweep_except<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    ledger: &mut Ledger,
    keep: &dyn Fn(&LedgerEntry) -> bool,
) -> Result<Vec<String>> {
    let host = client.transport().authority();
    let mine: Vec<LedgerEntry> = ledger
        .entries()
        .iter()
        .filter(|e| e.host == host && !keep(e))
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

/// Remove every checkpoint the ledger holds for this host (a job deleted or cancelled, a VM
/// gone: nothing will resume them).
pub fn sweep<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    ledger: &mut Ledger,
) -> Result<Vec<String>> {
    sweep_except(client, ledger, &|_| false)
}

/// Remove what the ledger holds for this host except unfinished attempts a later cycle may
/// resume ([`LedgerEntry::resumable`]): the sweep at a start (after a crash or a restart).
pub fn sweep_leftovers<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    ledger: &mut Ledger,
) -> Result<Vec<String>> {
    let now = now_unix();
    sweep_except(client, ledger, &|e| e.resumable(now))
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
    let vm = match find_vm(client, &opts.vm_name) {
        Ok(vm) => vm,
        Err(e) => {
            // The VM is gone (or not replicable): nothing will resume its checkpoints.
            let name = opts.vm_name.clone();
            let now = now_unix();
            let gone = matches!(e, Error::NotFound { .. });
            if let Err(s) = sweep_except(client, &mut ledger, &|x| {
                !(gone && x.vm_name == name) && x.resumable(now)
            }) {
                tracing::warn!(error = %s, "could not sweep the ledger");
            }
            return Err(e);
        }
    };
    // Leftovers go; the newest unfinished attempt of this VM (if any) is resumed; unfinished
    // attempts of other VMs stay for their own next cycle.
    let now = now_unix();
    let resume = ledger
        .entries()
        .iter()
        .filter(|e| e.host == host && e.vm_id.eq_ignore_ascii_case(&vm.id) && e.resumable(now))
        .max_by_key(|e| e.created_unix)
        .cloned();
    let swept = sweep_except(client, &mut ledger, &|e| {
        let this_vm = e.vm_id.eq_ignore_ascii_case(&vm.id);
        match &resume {
            Some(r) if this_vm => e.checkpoint_name == r.checkpoint_name,
            _ => !this_vm && e.resumable(now),
        }
    })?;
    let mut rct_state = match &extras.rct_state {
        Some(p) => Some((p, RctState::load(p)?)),
        None => None,
    };
    let previous = rct_state
        .as_ref()
        .and_then(|(_, s)| s.get(&host, &vm.id).cloned());
    let name = match &resume {
        Some(r) => r.checkpoint_name.clone(),
        None => {
            let name = format!("{CHECKPOINT_PREFIX}{}", uuid::Uuid::new_v4().simple());
            ledger.add(LedgerEntry {
                host: host.clone(),
                vm_id: vm.id.clone(),
                vm_name: vm.name.clone(),
                checkpoint_name: name.clone(),
                checkpoint_id: None,
                created_unix: now_unix(),
                kept_for_retry_unix: None,
            })?;
            name
        }
    };
    // One shell per phase: a cycle of hours does not depend on one shell's life.
    let created = with_shell(client, |sh| {
        checkpoint::create(
            sh,
            &host,
            &vm.id,
            &name,
            resume.as_ref().and_then(|r| r.checkpoint_id.as_deref()),
        )
    });
    let result = match created {
        Ok(cp) => {
            if cp.resumed {
                tracing::info!(checkpoint = %name, id = %cp.id, "resuming the checkpoint of an unfinished attempt");
            } else {
                ledger.set_checkpoint_id(&name, &cp.id)?;
            }
            copy_disks(client, &vm, &cp, previous.as_ref(), ingest, per_disk)
                .map(|copied| (cp, copied))
        }
        Err(e) => Err(e),
    };
    // A failed attempt keeps its checkpoint for the retry when the caller says so (and the
    // checkpoint exists): the retry resumes it and its spool.
    let result = match result {
        Err(e)
            if extras.keep_failed.is_some_and(|keep| keep(&e))
                && ledger
                    .entries()
                    .iter()
                    .any(|x| x.checkpoint_name == name && x.checkpoint_id.is_some()) =>
        {
            ledger.set_kept_for_retry(&name, now_unix())?;
            tracing::warn!(error = %e, checkpoint = %name, "the cycle failed; its checkpoint is kept for the retry");
            return Err(e);
        }
        r => r,
    };
    // After a good cycle with RCT, the checkpoint becomes a reference point (which removes
    // it); otherwise, and if that fails, it is removed on every path, also when creation
    // failed half-way (the script may have created it before failing). The entry stays in
    // the ledger if removal fails.
    let mut reference_point = None;
    if let (Ok((cp, _)), Some((path, state))) = (&result, rct_state.as_mut()) {
        let old = previous.as_ref().map(|p| p.reference_point.as_str());
        match with_shell(client, |sh| {
            rct::convert_to_reference_point(sh, &host, &vm.id, &name, old)
        }) {
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
        with_shell(client, |sh| checkpoint::remove(sh, &host, &vm.id, &name))
            .and_then(|_| ledger.remove(&name))
    };
    let (cp, copied) = match (result, removed) {
        (Err(e), Err(r)) => {
            tracing::warn!(error = %r, checkpoint = %name, "could not remove the checkpoint; the next run sweeps it");
            return Err(e);
        }
        (Err(e), Ok(())) => return Err(e),
        (Ok(_), Err(r)) => return Err(r),
        (Ok(v), Ok(())) => v,
    };
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
        resumed_checkpoint: cp.resumed,
        consistency: cp.consistency,
    })
}

/// Run `f` on a shell of its own, deleted afterwards (also when `f` failed).
fn with_shell<T: Transport + Send + Sync + 'static, R>(
    client: &Arc<WinRm<T>>,
    f: impl FnOnce(&Shell<'_, T>) -> Result<R>,
) -> Result<R> {
    let shell = client.open_shell()?;
    let r = f(&shell);
    let closed = shell.close();
    let r = r?;
    closed?;
    Ok(r)
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
    let pushed = match ingest {
        Some(c) => Some(push_setup(client, c, vm, cp, &host_files)?),
        None => None,
    };
    let locator: &dyn Locator = match &pushed {
        Some(p) => &p.locator,
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
        let mut rct_failure = None;
        let ranges = match since {
            None => None,
            Some(s) => match with_shell(client, |sh| {
                rct::changes(sh, &host, &d.path, &s.rct_id, disk.virtual_size())
            }) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, disk = n, "RCT changes unavailable; reading the whole disk");
                    rct_failure = Some(e.to_string());
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
            full_reread: rct_failure,
        });
        let sink = |per_disk: &mut RangeDiskSink<'_>| {
            per_disk(n, &disk, d, ranges.as_deref()).map_err(|source| Error::Sink {
                disk: n,
                file: d.path.clone(),
                source,
            })
        };
        match &pushed {
            Some(p) => {
                let r = push_disk(client, &host, p, &disk, ranges.as_deref(), || {
                    sink(per_disk)
                })?;
                push_report.get_or_insert_with(PushReport::default).add(&r);
            }
            None => sink(per_disk)?,
        }
    }
    if let Some(p) = &pushed {
        if let Some(t) = push_report.as_mut() {
            t.served_from_spool = p.locator.bytes_from_spool();
            t.peak_spool_bytes = p.cfg.budget.peak();
            t.spool_limit = p.cfg.budget.limit();
        }
        // Copied: the spooled bytes are in the store now. The VM's spool directory goes whole.
        for s in p.locator.spools() {
            if let Err(e) = s.remove() {
                tracing::warn!(error = %e, "could not remove a spool");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&p.vm_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %p.vm_dir.display(), "could not remove the spool");
        }
    }
    Ok(Copied {
        bytes_read: host_files.bytes_read(),
        read_commands: host_files.commands(),
        changes,
        push: push_report,
    })
}

/// The push path of one cycle: the spool directory (the VM's, keyed by the checkpoint), the
/// URL the host is told, the locator the disks read through.
struct Pushed<T: Transport + Send + Sync + 'static> {
    cfg: IngestConfig,
    vm_dir: PathBuf,
    url: String,
    locator: PushLocator<T>,
}

/// Set up the push path: spools under `spool_dir/<VM id>/<checkpoint id>/` (both encoded as one
/// safe path component each: the host names them), spools of other checkpoints of the VM
/// removed (stale: a merge may have changed their files), the spool budget fitted to the free
/// space, the URL resolved for this host.
fn push_setup<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    c: &IngestConfig,
    vm: &VmRecord,
    cp: &Checkpoint,
    host_files: &HostFileLocator<T>,
) -> Result<Pushed<T>> {
    use godwit_safepath::Component;
    let vm_dir = Component::encode(&vm.id.to_ascii_lowercase()).join_to(&c.spool_dir);
    let key = Component::encode(&cp.id.to_ascii_lowercase());
    if let Ok(entries) = std::fs::read_dir(&vm_dir) {
        for e in entries.flatten() {
            if e.file_name().to_str() != Some(key.as_str()) {
                tracing::info!(spool = %e.path().display(), "removing the spool of another checkpoint");
                let p = e.path();
                let gone = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(err) = gone {
                    tracing::warn!(error = %err, spool = %p.display(), "could not remove a stale spool");
                }
            }
        }
    }
    let dir = key.join_to(&vm_dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, "create", e))?;
    let limit = usable_limit(&dir, c.spool_limit, c.budget.used(), MIN_SPOOL_BYTES).map_err(
        |(no, io)| match io {
            Some(e) => Error::file(&dir, "check the free space of", e),
            None => Error::NoSpace(no),
        },
    )?;
    c.budget.set_limit(limit);
    let url = c.url.resolve(&client.transport().authority())?;
    tracing::info!(url, spool_limit = limit, "host pushes");
    let locator = PushLocator::new(host_files.clone(), dir, &cp.id, c.budget.clone());
    Ok(Pushed {
        cfg: c.clone(),
        vm_dir,
        url,
        locator,
    })
}

/// One disk by push: the sector bitmaps mapping needs first (held for the cycle), then the
/// data, pushed by a feeder thread in the order `sink` (the transfer) reads it while it runs.
fn push_disk<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    host: &str,
    p: &Pushed<T>,
    disk: &Disk,
    ranges: Option<&[Range<u64>]>,
    sink: impl FnOnce() -> Result<()>,
) -> Result<PushReport> {
    let (cfg, locator) = (&p.cfg, &p.locator);
    let mut report = PushReport::default();
    let mut meta: Vec<PlannedRange> = Vec::new();
    for (file, set) in metadata_ranges(disk, ranges, cfg.align)? {
        meta.extend(set.iter().map(|(a, b)| PlannedRange {
            file: file.clone(),
            start: a,
            end: b,
        }));
    }
    let meta = without_held(&meta, &held(&meta, locator));
    if !meta.is_empty() {
        let r = with_shell(client, |sh| {
            push_ranges(sh, host, cfg, &p.url, locator, meta, &Stopper::default())
        })?;
        tracing::info!(report = ?r, "sector bitmaps pushed");
        report.add(&r);
    }
    let plan = ordered_ranges(disk, ranges, cfg.align)?;
    let needed: u64 = plan.iter().map(|r| r.end - r.start).sum();
    let todo = without_held(&plan, &held(&plan, locator));
    let resumed = needed - todo.iter().map(|r| r.end - r.start).sum::<u64>();
    // The feeder talks over a connection of its own where it can (its Receives wait).
    let own = client
        .transport()
        .another()
        .map(|t| Arc::new(WinRm::new(t)));
    let feeder = Feeder {
        client: own.as_ref().unwrap_or(client),
        host,
        cfg,
        url: &p.url,
        locator,
    };
    feeder.announce(&plan);
    let stopper = Stopper::default();
    let (sunk, fed, feeder_failed_first) = std::thread::scope(|s| {
        let h = s.spawn(|| feeder.run(todo, &stopper));
        let sunk = sink();
        let failed_first = locator.status().error().is_some();
        stopper.stop(&cfg.sessions);
        let fed = h
            .join()
            .unwrap_or_else(|_| Err(Error::Usage("the push feeder panicked".into())));
        (sunk, fed, failed_first)
    });
    locator.release_planned();
    let fed = match (sunk, fed) {
        (Ok(()), Ok(r)) => r,
        (Ok(()), Err(e @ (Error::IngestUnreachable { .. } | Error::NoSpace(_)))) => return Err(e),
        (Ok(()), Err(e)) => {
            tracing::warn!(error = %e, "the host's pushes ended with an error after the disk was copied");
            PushReport::default()
        }
        (Err(_), Err(f)) if feeder_failed_first => return Err(f),
        (Err(s), _) => return Err(s),
    };
    report.add(&fed);
    report.needed_bytes += needed;
    report.resumed_bytes += resumed;
    report.missing_bytes += needed.saturating_sub(resumed + fed.pushed_bytes);
    Ok(report)
}
