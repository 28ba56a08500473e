//! SCVMM as a source: the VMM server (WinRM HTTPS, pinned like any source) says which Hyper-V
//! host runs which VM (`scripts/scvmm-inventory.ps1`); Godwit then talks to that host directly
//! over WinRM (its certificate pinned too, from a known-hosts style trust file) and runs the
//! Hyper-V cycle there ([`crate::replicate`]).

use crate::client::WinRm;
use crate::error::{Error, Result};
use crate::inventory::{Bytes, DiskRecord, Source, Vm, VmRecord, eligibility};
use crate::transport::{Credentials, HttpsTransport, Transport};
use crate::trust::{Fingerprint, TrustStore};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The PowerShell run on the VMM server (VMM's `virtualmachinemanager` module).
pub const SCVMM_INVENTORY_SCRIPT: &str = include_str!("../scripts/scvmm-inventory.ps1");

/// VM statuses (VMM's `VMComputerSystemState`) in which a VM is not copied [K: names from
/// VMM's documentation, not seen on a real server].
pub const BLOCKING_STATUSES: &[&str] = &[
    "UnderMigration",
    "HostNotResponding",
    "Missing",
    "Incomplete",
    "CreationFailed",
    "MigrationFailed",
];

/// A Hyper-V host VMM manages (`Get-SCVMHost`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScvmmHost {
    pub name: String,
    #[serde(rename = "FQDN", default)]
    pub fqdn: Option<String>,
    /// `HyperV`, `VMwareESX`, ...
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub overall_state: String,
}

/// A virtual disk drive as `Get-SCVirtualDiskDrive` and its `VirtualHardDisk` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScvmmDrive {
    /// `IDE` or `SCSI`.
    pub bus_type: String,
    pub bus: u32,
    pub lun: u32,
    #[serde(default)]
    pub pass_through: bool,
    #[serde(default)]
    pub location: Option<String>,
    /// `VHD`, `VHDX`.
    #[serde(rename = "VHDFormatType", default)]
    pub vhd_format_type: Option<String>,
    /// `FixedSize`, `DynamicallyExpanding`, `Differencing`.
    #[serde(rename = "VHDType", default)]
    pub vhd_type: Option<String>,
    /// The virtual size.
    #[serde(default)]
    pub maximum_size: Option<u64>,
    /// Bytes on disk.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub parent_location: Option<String>,
    #[serde(default)]
    pub shared: bool,
}

/// A VM as `Get-SCVirtualMachine` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScvmmVmRecord {
    /// VMM's own id.
    pub id: String,
    /// Hyper-V's VMId (what the host calls it).
    #[serde(rename = "VMId")]
    pub vm_id: String,
    pub name: String,
    /// The host's name in VMM.
    #[serde(rename = "VMHost")]
    pub vm_host: String,
    #[serde(rename = "HostFQDN", default)]
    pub host_fqdn: Option<String>,
    pub status: String,
    pub generation: u8,
    #[serde(rename = "CPUCount")]
    pub cpu_count: u32,
    #[serde(rename = "MemoryMB")]
    pub memory_mb: u64,
    #[serde(default)]
    pub checkpoint_type: String,
    #[serde(default)]
    pub is_highly_available: bool,
    #[serde(default)]
    pub drives: Vec<ScvmmDrive>,
}

/// What scvmm-inventory.ps1 prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScvmmReport {
    pub server: String,
    pub hosts: Vec<ScvmmHost>,
    #[serde(rename = "VMs")]
    pub vms: Vec<ScvmmVmRecord>,
}

/// Parse scvmm-inventory.ps1's stdout (pure; a fuzzing entry point).
pub fn parse_scvmm_inventory_json(text: &str) -> std::result::Result<ScvmmReport, String> {
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.len() > 64 * 1024 * 1024 {
        return Err("SCVMM inventory output larger than 64 MiB".into());
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// VMM's VHD type names as Hyper-V's `Get-VHD` spells them.
fn hyperv_vhd_type(vmm: &str) -> String {
    match vmm {
        "FixedSize" => "Fixed",
        "DynamicallyExpanding" => "Dynamic",
        other => other,
    }
    .to_string()
}

/// Hyper-V's VHD type names as VMM spells them (the inverse of [`hyperv_vhd_type`]).
pub fn vmm_vhd_type(hyperv: &str) -> String {
    match hyperv {
        "Fixed" => "FixedSize",
        "Dynamic" => "DynamicallyExpanding",
        other => other,
    }
    .to_string()
}

impl ScvmmVmRecord {
    /// The Hyper-V view of this VM, for the eligibility rules Hyper-V sources use. VMM does
    /// not report the configuration version or the logical sector size.
    pub fn to_vm_record(&self) -> VmRecord {
        let disks = self
            .drives
            .iter()
            .map(|d| DiskRecord {
                controller_type: d.bus_type.clone(),
                controller_number: d.bus,
                controller_location: d.lun,
                path: if d.pass_through {
                    None
                } else {
                    d.location.clone()
                },
                disk_number: None,
                shared: d.shared,
                vhd_format: d.vhd_format_type.clone(),
                vhd_type: d.vhd_type.as_deref().map(hyperv_vhd_type),
                size: d.maximum_size.map(Bytes),
                file_size: d.size.map(Bytes),
                parent_path: d.parent_location.clone(),
                logical_sector_size: None,
                error: None,
            })
            .collect();
        VmRecord {
            id: self.vm_id.clone(),
            name: self.name.clone(),
            generation: self.generation,
            state: self.status.clone(),
            processor_count: self.cpu_count,
            memory_startup: Bytes(self.memory_mb.saturating_mul(1 << 20)),
            version: String::new(),
            checkpoint_type: self.checkpoint_type.clone(),
            disks,
        }
    }
}

/// A VM VMM knows, with the host that runs it and its eligibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScvmmVm {
    #[serde(flatten)]
    pub vm: Vm,
    /// The host's name in VMM.
    #[serde(rename = "VMHost")]
    pub host: String,
    /// The address Godwit connects to (the host's FQDN, else its name).
    #[serde(rename = "HostAddress")]
    pub host_address: String,
    #[serde(rename = "VmmId")]
    pub vmm_id: String,
    #[serde(rename = "VmmStatus")]
    pub status: String,
}

/// An SCVMM server's VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScvmmInventory {
    /// `host:port` of the VMM server Godwit asked.
    pub server: String,
    /// The FQDN VMM reports for itself.
    pub vmm_fqdn: String,
    pub hosts: Vec<ScvmmHost>,
    pub vms: Vec<ScvmmVm>,
}

/// Attach eligibility: Hyper-V's rules on the disks, plus VMM's view of the VM and its host.
pub fn evaluate_scvmm(server: &str, report: ScvmmReport) -> ScvmmInventory {
    let vms = report
        .vms
        .iter()
        .map(|r| {
            let record = r.to_vm_record();
            let (mut reasons, mut warnings) = eligibility(&record);
            let host = report.hosts.iter().find(|h| h.name == r.vm_host);
            if r.vm_host.is_empty() {
                reasons.push("VMM shows no host for it (not placed on a host)".into());
            }
            if BLOCKING_STATUSES.contains(&r.status.as_str()) {
                reasons.push(format!(
                    "VMM reports status {}; copy it once VMM shows it settled on a host",
                    r.status
                ));
            }
            if let Some(h) = host {
                if !h.platform.is_empty() && h.platform != "HyperV" {
                    reasons.push(format!(
                        "runs on host {} whose platform is {}; only Hyper-V hosts are read through SCVMM",
                        h.name, h.platform
                    ));
                }
                if h.overall_state == "NotResponding" {
                    reasons.push(format!("its host {} is not responding to VMM", h.name));
                }
            }
            if r.is_highly_available {
                warnings.push("highly available (clustered): a live migration during a copy moves it to another host; that cycle fails and the next one runs on the new host".into());
            }
            let host_address = r
                .host_fqdn
                .clone()
                .filter(|f| !f.is_empty())
                .or_else(|| host.and_then(|h| h.fqdn.clone()).filter(|f| !f.is_empty()))
                .unwrap_or_else(|| r.vm_host.clone());
            ScvmmVm {
                vm: Vm {
                    eligible: reasons.is_empty(),
                    record,
                    reasons,
                    warnings,
                },
                host: r.vm_host.clone(),
                host_address,
                vmm_id: r.id.clone(),
                status: r.status.clone(),
            }
        })
        .collect();
    ScvmmInventory {
        server: server.to_string(),
        vmm_fqdn: report.server,
        hosts: report.hosts,
        vms,
    }
}

/// Inventory through an SCVMM server over WinRM (HTTPS, certificate pinned by `pins`).
pub fn scvmm_inventory(
    source: &Source,
    creds: &Credentials,
    pins: Vec<Fingerprint>,
) -> Result<ScvmmInventory> {
    let transport = HttpsTransport::new(
        &source.host,
        source.port,
        creds.clone(),
        pins,
        Duration::from_secs(60),
    )?;
    let client = WinRm::new(transport);
    let shell = client.open_shell()?;
    let value = shell.run_ps_json("scvmm-inventory.ps1", SCVMM_INVENTORY_SCRIPT)?;
    shell.close()?;
    let server = client.transport().authority();
    let report: ScvmmReport = serde_json::from_value(value).map_err(|e| Error::BadOutput {
        host: server.clone(),
        script: "scvmm-inventory.ps1".into(),
        detail: e.to_string(),
    })?;
    Ok(evaluate_scvmm(&server, report))
}

/// The one eligible VM named `name`, or an error naming the VMM server.
pub fn find_vm<'a>(inv: &'a ScvmmInventory, name: &str) -> Result<&'a ScvmmVm> {
    let matching: Vec<&ScvmmVm> = inv
        .vms
        .iter()
        .filter(|v| v.vm.record.name == name)
        .collect();
    let vm = match matching.as_slice() {
        [] => {
            return Err(Error::NotFound {
                host: format!("SCVMM {}", inv.server),
                what: format!("VM {name:?}"),
            });
        }
        [one] => *one,
        many => {
            let hosts: Vec<&str> = many.iter().map(|v| v.host.as_str()).collect();
            return Err(Error::Usage(format!(
                "SCVMM {}: {} VMs are named {name:?} (on hosts {}); names must be unique to replicate",
                inv.server,
                many.len(),
                hosts.join(", ")
            )));
        }
    };
    if !vm.vm.eligible {
        return Err(Error::Usage(format!(
            "SCVMM {}: VM {name:?} on host {} cannot be replicated: {}",
            inv.server,
            vm.host,
            vm.vm.reasons.join("; ")
        )));
    }
    Ok(vm)
}

/// How Godwit reaches the Hyper-V hosts VMM names.
#[derive(Debug, Clone)]
pub struct HostAccess {
    /// WinRM HTTPS port on every host (5986).
    pub port: u16,
    /// Pins for the hosts (`HOST[:PORT] SHA256:...`, by address or by VMM's host name).
    pub trust: TrustStore,
    /// Credentials for hosts without their own (those of the VMM server).
    pub creds: Credentials,
    /// Per-host credentials, by VMM host name or address (case-insensitive).
    pub per_host: Vec<(String, Credentials)>,
}

/// Where and as whom to connect for the VM's host.
#[derive(Debug, Clone)]
pub struct HostRoute {
    /// VMM's name for the host.
    pub name: String,
    pub source: Source,
    pub creds: Credentials,
    pub pins: Vec<Fingerprint>,
}

impl HostRoute {
    pub fn authority(&self) -> String {
        godwit_trust::authority(&self.source.host, self.source.port)
    }
}

/// The route to the host running `vm`.
pub fn route(vm: &ScvmmVm, access: &HostAccess) -> HostRoute {
    let address = vm.host_address.clone();
    let mut pins = access.trust.pins_for(&address, access.port);
    if !vm.host.eq_ignore_ascii_case(&address) {
        pins.extend(access.trust.pins_for(&vm.host, access.port));
    }
    let creds = access
        .per_host
        .iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(&vm.host) || h.eq_ignore_ascii_case(&address))
        .map_or_else(|| access.creds.clone(), |(_, c)| c.clone());
    HostRoute {
        name: vm.host.clone(),
        source: Source {
            kind: crate::inventory::SourceKind::HyperV,
            user: creds.user.clone(),
            host: address,
            port: access.port,
        },
        creds,
        pins,
    }
}

/// Connect to the VM's host and prove the connection (one shell opened and deleted), so an
/// unpinned certificate, refused credentials or an unreachable host fail before any state is
/// touched, with errors that name the host.
pub fn connect_host(route: &HostRoute, vm: &str) -> Result<Arc<WinRm<HttpsTransport>>> {
    let transport = HttpsTransport::new(
        &route.source.host,
        route.source.port,
        route.creds.clone(),
        route.pins.clone(),
        Duration::from_secs(60),
    )?;
    let client = Arc::new(WinRm::new(transport));
    let probe = client.open_shell().and_then(|s| s.close());
    // Errors that only say `address:port` also get VMM's name for the host.
    let named = format!("Hyper-V host {} ({})", route.name, route.authority());
    match probe {
        Ok(()) => Ok(client),
        Err(Error::Unpinned { fingerprint, .. }) => Err(Error::HostUnpinned {
            vm: vm.to_string(),
            host: route.name.clone(),
            authority: route.authority(),
            fingerprint,
        }),
        Err(e @ Error::Transport { .. }) => Err(Error::HostUnreachable {
            vm: vm.to_string(),
            host: route.name.clone(),
            authority: route.authority(),
            detail: with_causes(&e),
        }),
        Err(Error::PinMismatch { expected, got, .. }) => Err(Error::PinMismatch {
            host: named,
            expected,
            got,
        }),
        Err(Error::AuthFailed { user, .. }) => Err(Error::AuthFailed { host: named, user }),
        Err(e) => Err(e),
    }
}

/// An error and its sources (`connection refused` sits a few levels below reqwest's own text).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = c.source();
    }
    text
}

/// A VM's checkpoints move with it (live or quick migration between hosts keeps the VMId), so
/// ledger entries for `vm_id` recorded under another host are moved to `host` (`address:port`,
/// where VMM says the VM runs now) before the cycle sweeps that host. Returns the names moved.
pub fn adopt_ledger_entries(
    ledger: &std::path::Path,
    vm_id: &str,
    host: &str,
) -> Result<Vec<String>> {
    let mut l = crate::ledger::Ledger::open(ledger)?;
    let moved: Vec<(String, String)> = l
        .entries()
        .iter()
        .filter(|e| e.vm_id.eq_ignore_ascii_case(vm_id) && e.host != host)
        .map(|e| (e.checkpoint_name.clone(), e.host.clone()))
        .collect();
    for (name, from) in &moved {
        tracing::info!(checkpoint = %name, from = %from, to = %host, "the VM moved; its leftover checkpoint is swept on its new host");
        l.set_host(name, host)?;
    }
    Ok(moved.into_iter().map(|(n, _)| n).collect())
}

/// Parse a host credentials file: `HOST USER PASSWORD` lines (the password is the rest of the
/// line), `#` comments. Errors name `origin` and the line, never the password.
pub fn parse_host_credentials(
    text: &str,
    origin: &str,
) -> std::result::Result<Vec<(String, Credentials)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut parts = t.splitn(3, char::is_whitespace);
        let (Some(host), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{origin}: line {}: expected `HOST USER PASSWORD`",
                i + 1
            ));
        };
        let password = password.trim();
        if password.is_empty() {
            return Err(format!("{origin}: line {}: empty password", i + 1));
        }
        out.push((
            host.to_string(),
            Credentials {
                user: user.to_string(),
                password: password.to_string(),
            },
        ));
    }
    Ok(out)
}

/// The inverse of [`parse_host_credentials`].
pub fn encode_host_credentials(entries: &[(String, Credentials)]) -> String {
    entries
        .iter()
        .map(|(h, c)| format!("{h} {} {}\n", c.user, c.password))
        .collect()
}

#[cfg(test)]
#[path = "scvmm_tests.rs"]
mod tests;
