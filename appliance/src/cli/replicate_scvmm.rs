//! SCVMM sources, `scvmm://USER@VMM[:PORT]`, for `godwit inventory` and `godwit replicate`:
//! the VMM server (WinRM HTTPS, pinned by `--source-fingerprint` or the `--trust-file`) lists
//! the VMs and the Hyper-V host each runs on (`godwit_hyperv::scvmm`); `replicate` then
//! connects to that host directly (port `--host-port`, its certificate pinned in the
//! `--trust-file`, the same credentials unless `--host-credentials` names others) and runs
//! the Hyper-V cycle there (`super::replicate_hyperv`).
//!
//! Exit codes as for Hyper-V: 3 credentials refused (VMM or host), 4 a certificate not
//! trusted (VMM or host; the message names the host and the fingerprint to pin), 5 VM not
//! found; other errors (a host that cannot be reached, a VM that cannot be copied) 2.

use super::replicate_hyperv::{HypervSourceArgs, source_parts};
use anyhow::Context;
use godwit_hyperv::client::WinRm;
use godwit_hyperv::scvmm::{
    HostAccess, adopt_ledger_entries, connect_host, find_vm, parse_host_credentials, route,
    scvmm_inventory,
};
use godwit_hyperv::transport::HttpsTransport;
use godwit_hyperv::trust::TrustStore;
use godwit_hyperv::{Credentials, Fingerprint, Source};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What an SCVMM source needs besides the VMM server's URL and password.
#[derive(Default)]
pub struct ScvmmArgs<'a> {
    /// Known-hosts style pins (`HOST[:PORT] SHA256:...`) for the VMM server and the hosts.
    pub trust_file: Option<&'a PathBuf>,
    /// WinRM HTTPS port of the Hyper-V hosts.
    pub host_port: u16,
    /// `HOST USER PASSWORD` lines for hosts that take other credentials than VMM's.
    pub host_credentials: Option<&'a PathBuf>,
}

fn load_trust(p: Option<&PathBuf>) -> anyhow::Result<TrustStore> {
    Ok(match p {
        Some(p) => TrustStore::load(p).map_err(godwit_hyperv::Error::from)?,
        None => TrustStore::new(),
    })
}

/// Per-host credentials; the file must not be readable by group or others (it holds passwords).
fn load_host_credentials(p: &Path) -> anyhow::Result<Vec<(String, Credentials)>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p)
        .with_context(|| format!("reading host credentials {}", p.display()))?
        .permissions()
        .mode();
    anyhow::ensure!(
        mode & 0o077 == 0,
        "host credentials {} hold passwords but are readable by group or others (mode {:o}); chmod 600 it",
        p.display(),
        mode & 0o777
    );
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading host credentials {}", p.display()))?;
    parse_host_credentials(&text, &p.display().to_string()).map_err(anyhow::Error::msg)
}

/// The VMM server's URL, credentials and pins (`--source-fingerprint` and trust-file lines).
fn vmm_parts(
    source: &HypervSourceArgs<'_>,
    trust: &TrustStore,
) -> anyhow::Result<(Source, Credentials, Vec<Fingerprint>)> {
    let (src, creds, pin) = source_parts(source)?;
    let mut pins: Vec<Fingerprint> = pin.into_iter().collect();
    pins.extend(trust.pins_for(&src.host, src.port));
    Ok((src, creds, pins))
}

/// Ask VMM where `vm` runs and connect to that host (connection proven, errors name the host);
/// ledger entries of this VM made on another host are moved to this one (its checkpoints moved
/// with it), so the cycle's sweep finds them.
pub fn connect_vm_host(
    source: &HypervSourceArgs<'_>,
    args: &ScvmmArgs<'_>,
    vm: &str,
    ledger: &Path,
    json: bool,
) -> anyhow::Result<Arc<WinRm<HttpsTransport>>> {
    let trust = load_trust(args.trust_file)?;
    let (src, creds, pins) = vmm_parts(source, &trust)?;
    let per_host = match args.host_credentials {
        Some(p) => load_host_credentials(p)?,
        None => Vec::new(),
    };
    let inv = scvmm_inventory(&src, &creds, pins)?;
    let found = find_vm(&inv, vm)?;
    let access = HostAccess {
        port: args.host_port,
        trust,
        creds,
        per_host,
    };
    let r = route(found, &access);
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "scvmm-host", "scvmm": inv.server, "vm": vm,
                "host": r.name, "address": r.authority(), "user": r.creds.user})
        );
    } else {
        eprintln!(
            "SCVMM {}: VM {vm:?} runs on host {} ({}), connecting as {}",
            inv.server,
            r.name,
            r.authority(),
            r.creds.user
        );
    }
    let client = connect_host(&r, vm)?;
    let moved = adopt_ledger_entries(ledger, &found.vm.record.id, &r.authority())?;
    if !moved.is_empty() {
        eprintln!(
            "VM {vm:?} moved to host {}: its leftover checkpoint(s) {} are swept there",
            r.name,
            moved.join(", ")
        );
    }
    Ok(client)
}

/// `godwit inventory --source scvmm://...`: every VM VMM knows, with its host.
pub fn list(
    source: &HypervSourceArgs<'_>,
    trust_file: Option<&PathBuf>,
    only: Option<&str>,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let trust = load_trust(trust_file)?;
    let (src, creds, pins) = vmm_parts(source, &trust)?;
    let mut inv = scvmm_inventory(&src, &creds, pins)?;
    if let Some(name) = only {
        inv.vms.retain(|v| v.vm.record.name == name);
        if inv.vms.is_empty() {
            eprintln!("godwit: error: SCVMM {}: no VM named {name:?}", inv.server);
            return Ok(std::process::ExitCode::from(
                super::replicate_vsphere::EXIT_NOT_FOUND,
            ));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&inv.vms)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "source {} (SCVMM {} over WinRM, {} host(s))",
        inv.server,
        inv.vmm_fqdn,
        inv.hosts.len()
    );
    for v in &inv.vms {
        let verdict = if v.vm.eligible {
            "eligible".to_string()
        } else {
            format!("NOT eligible: {}", v.vm.reasons.join("; "))
        };
        println!(
            "{}  host={} ({})  status={}  {verdict}",
            v.vm.record.name, v.host, v.host_address, v.status
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
