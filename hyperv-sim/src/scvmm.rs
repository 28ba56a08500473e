//! The simulator as an SCVMM server: `vms.json` holds an `scvmm` object listing the Hyper-V
//! hosts VMM manages, each one another simulator instance (its data directory, and the
//! address Godwit reaches it at), and which of that host's VMs VMM shows. `scvmm-inventory.ps1`
//! is answered from those hosts' `vms.json` and real disk files, so VMM's view and the hosts'
//! agree by construction. Nothing of VMM's own behaviour (jobs, refresh, Run As accounts,
//! placement, live migration) is simulated.

use godwit_hyperv::inventory::VmRecord;
use godwit_hyperv::scvmm::{ScvmmDrive, ScvmmHost, ScvmmReport, ScvmmVmRecord, vmm_vhd_type};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The `scvmm` object of `vms.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScvmmModel {
    /// The FQDN VMM reports for itself.
    #[serde(default = "default_server")]
    pub server: String,
    pub hosts: Vec<ScvmmSimHost>,
}

/// One Hyper-V host VMM manages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScvmmSimHost {
    /// VMM's name for the host.
    pub name: String,
    /// Its FQDN: the address Godwit connects to (the listen IP of that host's simulator).
    pub fqdn: Option<String>,
    /// That host simulator's data directory (relative to this one, or absolute).
    pub data: String,
    /// The names of the VMs VMM shows on it (default: every VM of its `vms.json`).
    #[serde(default)]
    pub vms: Option<Vec<String>>,
    #[serde(default = "default_platform")]
    pub platform: String,
    #[serde(default = "default_state")]
    pub overall_state: String,
    /// VMs on this host are highly available (clustered).
    #[serde(default)]
    pub highly_available: bool,
}

fn default_server() -> String {
    "vmm.sim.test".into()
}

fn default_platform() -> String {
    "HyperV".into()
}

fn default_state() -> String {
    "OK".into()
}

/// VMM's own id of a VM: stable, derived from the host's VMId.
fn vmm_id(vm_id: &str) -> String {
    let d = Sha256::digest(format!("vmm:{}", vm_id.to_ascii_lowercase()).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn vmm_record(host: &ScvmmSimHost, r: &VmRecord) -> ScvmmVmRecord {
    ScvmmVmRecord {
        id: vmm_id(&r.id),
        vm_id: r.id.clone(),
        name: r.name.clone(),
        vm_host: host.name.clone(),
        host_fqdn: host.fqdn.clone(),
        status: match r.state.as_str() {
            "Off" => "PowerOff".to_string(),
            other => other.to_string(),
        },
        generation: r.generation,
        cpu_count: r.processor_count,
        memory_mb: r.memory_startup.0 >> 20,
        checkpoint_type: r.checkpoint_type.clone(),
        is_highly_available: host.highly_available,
        drives: r
            .disks
            .iter()
            .map(|d| ScvmmDrive {
                bus_type: d.controller_type.clone(),
                bus: d.controller_number,
                lun: d.controller_location,
                pass_through: d.disk_number.is_some(),
                location: d.path.clone(),
                vhd_format_type: d.vhd_format.clone(),
                vhd_type: d.vhd_type.as_deref().map(vmm_vhd_type),
                maximum_size: d.size.map(|b| b.0),
                size: d.file_size.map(|b| b.0),
                parent_location: d.parent_path.clone(),
                shared: d.shared,
            })
            .collect(),
    }
}

/// What scvmm-inventory.ps1 prints for this model (`dir`: this simulator's data directory).
pub fn report(m: &ScvmmModel, dir: &Path) -> Result<ScvmmReport, String> {
    let mut hosts = Vec::new();
    let mut vms = Vec::new();
    for h in &m.hosts {
        let hdir = dir.join(&h.data);
        let hm = super::model::SimModel::load(&hdir)
            .map_err(|e| format!("Get-SCVirtualMachine : host {}: {e}", h.name))?;
        let records = super::model::records(&hm, &hdir)?;
        if let Some(names) = &h.vms {
            for n in names {
                if !records.iter().any(|r| &r.name == n) {
                    return Err(format!(
                        "simulator model: VM {n:?} listed for host {} is not in {}/vms.json",
                        h.name,
                        hdir.display()
                    ));
                }
            }
        }
        for r in &records {
            if h.vms.as_ref().is_none_or(|names| names.contains(&r.name)) {
                vms.push(vmm_record(h, r));
            }
        }
        hosts.push(ScvmmHost {
            name: h.name.clone(),
            fqdn: h.fqdn.clone(),
            platform: h.platform.clone(),
            overall_state: h.overall_state.clone(),
        });
    }
    Ok(ScvmmReport {
        server: m.server.clone(),
        hosts,
        vms,
    })
}
