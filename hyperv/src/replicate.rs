//! One replication cycle of a Hyper-V VM: sweep what an earlier run left (ledger), record a
//! `godwit-` checkpoint in the ledger BEFORE creating it, create it, open every frozen disk
//! (parent chain included) through [`HostFileLocator`], hand each to the caller, and remove the
//! checkpoint on every path (success, failure; a kill is swept at the next start).

use crate::checkpoint::{self, Checkpoint};
use crate::client::WinRm;
use crate::error::{Error, Result};
use crate::hostfile::HostFileLocator;
use crate::inventory::{INVENTORY_SCRIPT, Source, VmRecord, evaluate};
use crate::ledger::{CHECKPOINT_PREFIX, Ledger, LedgerEntry};
use crate::transport::{Credentials, HttpsTransport, Transport};
use crate::trust::Fingerprint;
use godwit_disk::{Disk, FormatHint};
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
}

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

/// One cycle (see the module doc).
pub fn run_cycle<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    opts: &CycleOptions,
    per_disk: &mut DiskSink<'_>,
) -> Result<CycleReport> {
    let host = client.transport().authority();
    let mut ledger = Ledger::open(&opts.ledger)?;
    let swept = sweep(client, &mut ledger)?;
    let vm = find_vm(client, &opts.vm_name)?;
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
            copy_disks(client, &vm, &cp, per_disk).map(|(bytes, cmds)| (cp, bytes, cmds))
        }
        Err(e) => Err(e),
    };
    // Remove on every path, also when creation failed half-way (the script may have
    // created it before failing); the entry stays in the ledger if removal fails.
    let removed =
        checkpoint::remove(&shell, &host, &vm.id, &name).and_then(|_| ledger.remove(&name));
    let closed = shell.close();
    let (cp, bytes_read, read_commands) = match (result, removed) {
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
        bytes_read,
        read_commands,
        swept,
    })
}

fn copy_disks<T: Transport + Send + Sync + 'static>(
    client: &Arc<WinRm<T>>,
    vm: &VmRecord,
    cp: &Checkpoint,
    per_disk: &mut DiskSink<'_>,
) -> Result<(u64, u64)> {
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
    let locator = HostFileLocator::new(client)?;
    for (n, d) in disks.iter().enumerate() {
        let disk = Disk::open_with(&locator, &d.path, FormatHint::Auto)?;
        per_disk(n, &disk, d).map_err(|source| Error::Sink {
            disk: n,
            file: d.path.clone(),
            source,
        })?;
    }
    Ok((locator.bytes_read(), locator.commands()))
}
