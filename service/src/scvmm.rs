//! SCVMM sources in the service: the VMM server (its certificate approved in the wizard like
//! any source) lists the VMs and the Hyper-V host each runs on; a job connects to that host
//! (WinRM HTTPS on the source's `host_port`, VMM's credentials) and runs the Hyper-V cycle
//! there (`super::engine::run_hyperv`).
//!
//! Hosts are pinned by trust on approval: a host whose certificate is not in the source's
//! `host_pins` is refused, the refusal naming the fingerprint it presented and the API call
//! that approves it (`POST /api/v1/sources/{id}/hosts`).

use super::sources::{hyperv_error, hyperv_source, hyperv_vm};
use super::store::SourceRecord;
use godwit_hyperv::Error as HvError;
use godwit_hyperv::client::WinRm;
use godwit_hyperv::scvmm::{
    HostAccess, ScvmmInventory, adopt_ledger_entries, connect_host, find_vm, route, scvmm_inventory,
};
use godwit_hyperv::transport::HttpsTransport;
use godwit_hyperv::trust::TrustStore;
use godwit_webui::backend::{CommandError, VmView};
use std::path::Path;
use std::sync::Arc;

/// WinRM HTTPS port of the hosts when the source does not name one.
pub const DEFAULT_HOST_PORT: u16 = 5986;

fn vmm_inventory(src: &SourceRecord) -> Result<ScvmmInventory, HvError> {
    let (source, creds) = hyperv_source(src);
    let pin = godwit_hyperv::Fingerprint::parse(&src.fingerprint)
        .map_err(|e| HvError::Usage(format!("source {}: stored fingerprint: {e}", src.id)))?;
    scvmm_inventory(&source, &creds, vec![pin])
}

/// The hosts' port, credentials (VMM's) and approved pins.
fn access(src: &SourceRecord) -> HostAccess {
    let mut trust = TrustStore::new();
    for p in &src.host_pins {
        match godwit_hyperv::Fingerprint::parse(&p.fingerprint) {
            Ok(fp) => trust.add(&p.host, fp),
            Err(e) => tracing::warn!(host = %p.host, error = %e, "unreadable host pin ignored"),
        }
    }
    let (_, creds) = hyperv_source(src);
    HostAccess {
        port: src.host_port.unwrap_or(DEFAULT_HOST_PORT),
        trust,
        creds,
        per_host: Vec::new(),
    }
}

/// Log in to the VMM server once and run its inventory (the last step before the source is
/// stored). Blocking.
pub fn verify_login(src: &SourceRecord) -> Result<(), CommandError> {
    vmm_inventory(src).map(|_| ()).map_err(hyperv_error)
}

/// Every VM VMM knows, each with the host that runs it. Blocking.
pub fn inventory(src: &SourceRecord) -> Result<Vec<VmView>, CommandError> {
    let inv = vmm_inventory(src).map_err(hyperv_error)?;
    let access = access(src);
    Ok(inv
        .vms
        .iter()
        .map(|v| {
            let mut view = hyperv_vm(&src.id, &v.vm);
            let r = route(v, &access);
            if view.eligible && r.pins.is_empty() && !v.host.is_empty() {
                view.reasons.push(format!(
                    "the certificate of its host {} ({}) is not approved yet: the first run \
                     names the fingerprint to approve",
                    v.host,
                    r.authority()
                ));
            }
            view.host = Some(format!("{} ({})", v.host, r.authority()));
            view
        })
        .collect())
}

/// A client for one Hyper-V host.
pub type HostClient = Arc<WinRm<HttpsTransport>>;

/// Ask VMM where `vm` runs, connect to that host (its certificate must be approved), and move
/// ledger entries of this VM made on another host to this one. Returns the client and the
/// VM's disk count and total size (for the progress bar) if VMM reports them. Blocking.
pub fn connect_vm(
    src: &SourceRecord,
    vm: &str,
    ledger: &Path,
) -> Result<(HostClient, Option<(usize, u64)>), HvError> {
    let inv = vmm_inventory(src)?;
    let found = find_vm(&inv, vm)?;
    let r = route(found, &access(src));
    tracing::info!(vm, host = %r.name, address = %r.authority(), "SCVMM: connecting to the VM's host");
    let client = connect_host(&r, vm)?;
    let moved = adopt_ledger_entries(ledger, &found.vm.record.id, &r.authority())?;
    if !moved.is_empty() {
        tracing::info!(vm, host = %r.name, checkpoints = ?moved, "the VM moved; its leftover checkpoints are swept on its new host");
    }
    let sizes: Option<Vec<u64>> = found
        .vm
        .record
        .disks
        .iter()
        .map(|d| d.size.map(|b| b.0))
        .collect();
    Ok((client, sizes.map(|s| (s.len(), s.iter().sum()))))
}

/// The run outcome message for a host whose certificate is not approved yet (no retry: the
/// operator has to compare and approve the fingerprint).
pub fn unpinned_message(src: &SourceRecord, e: &HvError) -> Option<String> {
    let HvError::HostUnpinned {
        vm,
        host,
        authority,
        fingerprint,
    } = e
    else {
        return None;
    };
    Some(format!(
        "VM {vm:?} runs on Hyper-V host {host} ({authority}) of SCVMM source {}, whose \
         certificate is not approved yet; it presents {fingerprint}. If that is the host's \
         certificate, approve it (POST /api/v1/sources/{}/hosts with {{\"host\": \"{host}\", \
         \"approved_fingerprint\": \"{fingerprint}\"}}) and run the job again",
        src.id, src.id
    ))
}
