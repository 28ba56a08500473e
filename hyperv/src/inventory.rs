//! Hyper-V host inventory: VMs and their disks from `scripts/inventory.ps1`, with eligibility
//! reasons (pass-through disks, shared VHDX / VHD Sets, the seed's limits).

use crate::client::WinRm;
use crate::error::{Error, Result};
use crate::transport::{Credentials, HttpsTransport, Transport};
use crate::trust::Fingerprint;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The PowerShell that lists VMs and disks.
pub const INVENTORY_SCRIPT: &str = include_str!("../scripts/inventory.ps1");
/// WinRM over HTTPS.
pub const DEFAULT_PORT: u16 = 5986;
/// Seed 002: replication fails with more than 22 volumes.
pub const MAX_VOLUMES: usize = 22;
/// Seed 002: the boot volume is MBR, at most 2 TiB.
pub const MAX_BOOT_DISK_BYTES: u64 = 2 << 40;
/// Seed 002: other volumes at most 4 TiB.
pub const MAX_DATA_DISK_BYTES: u64 = 4 << 40;

/// Bytes, for sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(pub u64);

/// A VM's hard disk as `Get-VMHardDiskDrive` + `Get-VHD` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskRecord {
    pub controller_type: String,
    pub controller_number: u32,
    pub controller_location: u32,
    pub path: Option<String>,
    /// Set for pass-through (physical) disks.
    pub disk_number: Option<u32>,
    /// Shared VHDX (SupportPersistentReservations).
    #[serde(default)]
    pub shared: bool,
    /// `VHD`, `VHDX` or `VHDSet`.
    pub vhd_format: Option<String>,
    /// `Fixed`, `Dynamic` or `Differencing`.
    pub vhd_type: Option<String>,
    pub size: Option<Bytes>,
    pub file_size: Option<Bytes>,
    pub parent_path: Option<String>,
    pub logical_sector_size: Option<u32>,
    /// Why `Get-VHD` could not describe this disk (a missing or unreadable file): this VM's
    /// problem, not the whole host's inventory's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A VM as `Get-VM` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub generation: u8,
    pub state: String,
    pub processor_count: u32,
    pub memory_startup: Bytes,
    pub version: String,
    pub checkpoint_type: String,
    pub disks: Vec<DiskRecord>,
}

/// A VM with its eligibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vm {
    #[serde(flatten)]
    pub record: VmRecord,
    pub eligible: bool,
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
}

/// A host's VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    pub host: String,
    pub vms: Vec<Vm>,
}

/// Where the inventory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    HyperV,
    /// An SCVMM server: it names the host of each VM, and Godwit then talks to that host.
    Scvmm,
}

/// `hyperv://USER@HOST[:PORT]` or `scvmm://USER@HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceKind,
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl Source {
    pub fn parse(url: &str) -> Result<Source> {
        let bad = |d: &str| {
            Error::Usage(format!(
                "source {url:?}: {d}; expected hyperv://USER@HOST[:PORT] or scvmm://USER@HOST[:PORT]"
            ))
        };
        let (kind, rest) = if let Some(r) = url.strip_prefix("hyperv://") {
            (SourceKind::HyperV, r)
        } else if let Some(r) = url.strip_prefix("scvmm://") {
            (SourceKind::Scvmm, r)
        } else {
            return Err(bad("unknown scheme"));
        };
        let (user, hostport) = rest.rsplit_once('@').ok_or_else(|| bad("no USER@"))?;
        if user.is_empty() {
            return Err(bad("empty user"));
        }
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None => DEFAULT_PORT,
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(Source {
            kind,
            user: user.to_string(),
            host,
            port,
        })
    }
}

/// Parse the inventory script's stdout (fuzzing entry point).
pub fn parse_inventory_json(text: &str) -> std::result::Result<Vec<VmRecord>, String> {
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.len() > 64 * 1024 * 1024 {
        return Err("inventory output larger than 64 MiB".into());
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Apply the seed's limits and Godwit's rules to one VM.
pub fn eligibility(r: &VmRecord) -> (Vec<String>, Vec<String>) {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if r.disks.is_empty() {
        reasons.push("has no virtual hard disks".into());
    }
    if r.disks.len() > MAX_VOLUMES {
        reasons.push(format!(
            "has {} disks; at most {MAX_VOLUMES} volumes are supported",
            r.disks.len()
        ));
    }
    let mut formats = std::collections::BTreeSet::new();
    for (i, d) in r.disks.iter().enumerate() {
        let at = format!(
            "disk {i} ({} {}:{})",
            d.controller_type, d.controller_number, d.controller_location
        );
        if d.disk_number.is_some() || d.path.as_deref().unwrap_or("").is_empty() {
            reasons.push(format!(
                "{at} is a pass-through physical disk; only virtual hard disks can be copied"
            ));
            continue;
        }
        if let Some(e) = &d.error {
            reasons.push(format!("{at} cannot be read: {e}"));
            continue;
        }
        if d.shared {
            reasons.push(format!(
                "{at} is a shared VHDX; guest clusters are not supported"
            ));
        }
        match d.vhd_format.as_deref() {
            Some("VHDSet") => reasons.push(format!(
                "{at} is a VHD Set (.vhds); shared disks are not supported"
            )),
            Some(f @ ("VHD" | "VHDX")) => {
                formats.insert(f.to_string());
            }
            other => reasons.push(format!("{at} has unknown format {other:?}")),
        }
        let size = d.size.map_or(0, |b| b.0);
        if i == 0 && size > MAX_BOOT_DISK_BYTES {
            reasons.push(format!(
                "boot {at} is larger than 2 TiB ({size} bytes), beyond the MBR limit"
            ));
        }
        if i > 0 && size > MAX_DATA_DISK_BYTES {
            reasons.push(format!("{at} is larger than 4 TiB ({size} bytes)"));
        }
    }
    if formats.len() > 1 {
        reasons.push("mixes VHD and VHDX disks".into());
    }
    if r.generation == 2 {
        warnings.push("Generation 2 (UEFI): the boot disk is likely GPT; targets that need an MBR boot volume will not boot it".into());
    }
    (reasons, warnings)
}

/// Attach eligibility to parsed records.
pub fn evaluate(host: &str, records: Vec<VmRecord>) -> Inventory {
    let vms = records
        .into_iter()
        .map(|record| {
            let (reasons, warnings) = eligibility(&record);
            Vm {
                eligible: reasons.is_empty(),
                record,
                reasons,
                warnings,
            }
        })
        .collect();
    Inventory {
        host: host.to_string(),
        vms,
    }
}

/// Inventory of a Hyper-V host over WinRM (HTTPS, certificate pinned).
/// With `pin == None` the call fails with an error that shows the server's fingerprint.
pub fn inventory(
    source: &Source,
    creds: &Credentials,
    pin: Option<Fingerprint>,
) -> Result<Inventory> {
    let transport = HttpsTransport::new(
        &source.host,
        source.port,
        creds.clone(),
        pin.into_iter().collect(),
        Duration::from_secs(60),
    )?;
    let client = WinRm::new(transport);
    let shell = client.open_shell()?;
    let value = shell.run_ps_json("inventory.ps1", INVENTORY_SCRIPT)?;
    shell.close()?;
    let host = client.transport().authority();
    let records: Vec<VmRecord> = serde_json::from_value(value).map_err(|e| Error::BadOutput {
        host: host.clone(),
        script: "inventory.ps1".into(),
        detail: e.to_string(),
    })?;
    Ok(evaluate(&host, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(format: &str, size: u64) -> DiskRecord {
        DiskRecord {
            controller_type: "SCSI".into(),
            controller_number: 0,
            controller_location: 0,
            path: Some("C:\\VMs\\a.vhdx".into()),
            disk_number: None,
            shared: false,
            vhd_format: Some(format.into()),
            vhd_type: Some("Dynamic".into()),
            size: Some(Bytes(size)),
            file_size: Some(Bytes(4096)),
            parent_path: None,
            logical_sector_size: Some(512),
            error: None,
        }
    }

    fn vm(disks: Vec<DiskRecord>) -> VmRecord {
        VmRecord {
            id: "1".into(),
            name: "a".into(),
            generation: 1,
            state: "Off".into(),
            processor_count: 2,
            memory_startup: Bytes(1 << 30),
            version: "9.0".into(),
            checkpoint_type: "Production".into(),
            disks,
        }
    }

    #[test]
    fn reasons_name_the_disk() {
        let mut pt = disk("VHDX", 1 << 30);
        pt.path = None;
        pt.disk_number = Some(3);
        let mut shared = disk("VHDX", 1 << 30);
        shared.shared = true;
        let (r, _) = eligibility(&vm(vec![
            disk("VHDX", 1 << 30),
            pt,
            shared,
            disk("VHDSet", 1),
            disk("VHD", 1),
        ]));
        let all = r.join("\n");
        assert!(all.contains("disk 1 (SCSI 0:0) is a pass-through"), "{all}");
        assert!(all.contains("shared VHDX"), "{all}");
        assert!(all.contains("VHD Set"), "{all}");
        assert!(all.contains("mixes VHD and VHDX"), "{all}");
        let (r, _) = eligibility(&vm(vec![disk("VHDX", (2 << 40) + 1)]));
        assert!(r[0].contains("2 TiB"), "{r:?}");
        let (r, _) = eligibility(&vm(vec![disk("VHDX", 1 << 30)]));
        assert!(r.is_empty());
        let mut gone = disk("VHDX", 1 << 30);
        gone.error = Some("Get-VHD : could not find the file".into());
        let (r, _) = eligibility(&vm(vec![gone]));
        assert!(
            r[0].contains("disk 0 (SCSI 0:0) cannot be read: Get-VHD"),
            "{r:?}"
        );
    }

    #[test]
    fn json_round_trip_and_sources() {
        let v = vec![vm(vec![disk("VHD", 10)])];
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(parse_inventory_json(&text).unwrap(), v);
        assert!(parse_inventory_json("{").is_err());
        let s = Source::parse("hyperv://Administrator@10.0.0.5").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.5", 5986));
        let s = Source::parse("hyperv://u@[::1]:5990").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 5990));
        assert!(Source::parse("vi://u@h").is_err());
        let s = Source::parse("scvmm://CORP\\admin@vmm01:5987").unwrap();
        assert_eq!(
            (s.kind, s.user.as_str(), s.host.as_str(), s.port),
            (SourceKind::Scvmm, "CORP\\admin", "vmm01", 5987)
        );
        assert!(Source::parse("hyperv://h").is_err());
    }
}
