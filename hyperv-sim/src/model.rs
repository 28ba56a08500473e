//! The simulator's Hyper-V model: VMs and disks read from `DIR/vms.json`; `Get-VHD` facts are
//! read from the real VHD/VHDX files with the disk crate.

use godwit_hyperv::inventory::{Bytes, DiskRecord, VmRecord};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One drive attached to a VM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimDisk {
    /// `IDE` or `SCSI`.
    pub controller_type: String,
    pub controller_number: u32,
    pub controller_location: u32,
    /// The image file, relative to the data directory (absent for pass-through disks).
    pub path: Option<String>,
    /// Physical disk number for a pass-through disk.
    pub disk_number: Option<u32>,
    #[serde(default)]
    pub shared: bool,
}

/// One VM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimVm {
    pub id: String,
    pub name: String,
    pub generation: u8,
    pub state: String,
    pub processor_count: u32,
    pub memory_startup: u64,
    pub version: String,
    pub checkpoint_type: String,
    pub disks: Vec<SimDisk>,
    /// Whether the guest can take a production (VSS) checkpoint; without it `Production`
    /// falls back to a standard checkpoint and `ProductionOnly` fails.
    #[serde(default = "yes")]
    pub guest_vss: bool,
}

fn yes() -> bool {
    true
}

/// Faults the simulator injects.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimFaults {
    /// Receives answered with the OperationTimeout fault before each command's output.
    #[serde(default)]
    pub receive_timeouts: u32,
    /// Answer every Command with this WSManFault code.
    #[serde(default)]
    pub command_fault: Option<u32>,
    /// Delay before answering each Command (makes a replication slow enough to kill).
    #[serde(default)]
    pub command_delay_ms: u64,
    /// Delay before each push of push-ranges.ps1 (a push slow enough to kill mid-way).
    #[serde(default)]
    pub push_delay_ms: u64,
    /// The WinRS IdleTimeout: a shell with no request for this long is deleted by the host,
    /// and its next request answered with fault 0x8033805B. Windows' default is 180000 ms
    /// (MS-WSMV 2.2.4.42 WinrsType, https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-wsmv/7ffb4acd-cf01-4fbe-9e48-7746f5001957);
    /// unset here means no idle deletion.
    #[serde(default)]
    pub shell_idle_timeout_ms: Option<u64>,
    /// MaxShellsPerUser (same page: default 30): a Create beyond it gets wsman:QuotaLimit
    /// (MS-WSMV 3.1.4.5.2.1, https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-wsmv/77425799-79f6-4a9a-b164-3873e742d921).
    #[serde(default)]
    pub max_shells_per_user: Option<usize>,
    /// MaxConcurrentOperationsPerUser (same page: default 1500): a Command while this many of
    /// the user's commands are still running gets wsman:QuotaLimit with
    /// ERROR_WSMAN_QUOTA_MAX_OPERATIONS (2150859174).
    #[serde(default)]
    pub max_concurrent_operations_per_user: Option<usize>,
    /// How long each Msvm_ConcreteJob of the WMI methods the scripts call (CreateSnapshot,
    /// ConvertToReferencePoint, DestroyReferencePoint, GetVirtualDiskChanges) runs. These
    /// methods answer 4096 ("Method Parameters Checked - Job Started") with the job
    /// (https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/createsnapshot-msvm-virtualsystemsnapshotservice,
    /// https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/msvm-virtualsystemsnapshotservice-converttoreferencepoint,
    /// https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/msvm-imagemanagementservice-getvirtualdiskchanges);
    /// the script's output comes once its jobs ended (it waits for them).
    #[serde(default = "default_wmi_job_ms")]
    pub wmi_job_ms: u64,
    /// This WMI method's job ends in JobState 10 (Exception) with this error.
    #[serde(default)]
    pub wmi_job_fail: Option<WmiJobFailure>,
    /// How long a checkpoint's merge runs after Remove-VMSnapshot (the VM's OperationalStatus
    /// shows MergingDisks meanwhile; a new checkpoint of the VM fails until it ends).
    #[serde(default)]
    pub merge_ms: u64,
}

fn default_wmi_job_ms() -> u64 {
    50
}

/// A WMI job that fails (see [`SimFaults::wmi_job_fail`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WmiJobFailure {
    /// `CreateSnapshot`, `ConvertToReferencePoint`, `DestroyReferencePoint` or
    /// `GetVirtualDiskChanges`.
    pub method: String,
    /// Msvm_ConcreteJob.ErrorCode (32768 = Failed in the methods' value maps).
    #[serde(default = "default_job_error")]
    pub error_code: u32,
    pub description: String,
}

fn default_job_error() -> u32 {
    32768
}

/// Windows' MaxShellsPerUser default (MS-WSMV 2.2.4.42 WinrsType).
pub const DEFAULT_MAX_SHELLS_PER_USER: usize = 30;
/// Windows' MaxConcurrentOperationsPerUser default (MS-WSMV 2.2.4.42 WinrsType).
pub const DEFAULT_MAX_CONCURRENT_OPERATIONS_PER_USER: usize = 1500;

/// `DIR/vms.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimModel {
    /// Host name the VM paths are shown under (`C:\VMs\...`).
    #[serde(default = "default_root")]
    pub windows_root: String,
    #[serde(default)]
    pub vms: Vec<SimVm>,
    #[serde(default)]
    pub faults: SimFaults,
    /// Authentication the host accepts: `basic`, `ntlm`. The default is Windows' WinRM
    /// service default: Negotiate (NTLM) only, `Auth/Basic = false`
    /// (https://learn.microsoft.com/en-us/windows/win32/winrm/installation-and-configuration-for-windows-remote-management,
    /// "Basic ... The default is FALSE"); a test that needs Basic configures `"auth": ["basic", "ntlm"]`.
    #[serde(default = "default_auth")]
    pub auth: Vec<String>,
    /// Present: this instance is an SCVMM server that answers `scvmm-inventory.ps1` from the
    /// hosts listed here (see [`super::scvmm`]).
    #[serde(default)]
    pub scvmm: Option<super::scvmm::ScvmmModel>,
    /// `false`: the account is not a local Administrator (or a local account whose token UAC
    /// filters, LocalAccountTokenFilterPolicy unset): WinRM refuses its shells with
    /// "Access is denied" (WSManFault 5), as Windows does for such accounts (remote WinRM
    /// access needs the Administrators or Remote Management Users group:
    /// https://learn.microsoft.com/en-us/windows/win32/winrm/authentication-for-remote-connections).
    #[serde(default = "yes")]
    pub account_is_admin: bool,
}

fn default_auth() -> Vec<String> {
    vec!["ntlm".into()]
}

fn default_root() -> String {
    "C:\\VMs".into()
}

impl SimModel {
    pub fn load(dir: &Path) -> Result<SimModel, String> {
        let p = dir.join("vms.json");
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    }
}

/// The data-dir file behind a Windows path under `root` (`None` outside it or with `..`).
pub fn local_path(root: &str, dir: &Path, windows: &str) -> Option<PathBuf> {
    let folded = godwit_hyperv::hostfile::resolve_windows_path(windows, None);
    let root = godwit_hyperv::hostfile::resolve_windows_path(root, None);
    let head = folded.get(..root.len())?;
    if !head.eq_ignore_ascii_case(&root) {
        return None;
    }
    let rest = folded.get(root.len()..)?.strip_prefix('\\')?;
    let mut p = dir.to_path_buf();
    for part in rest.split('\\') {
        if part.is_empty() || part == ".." || part == "." {
            return None;
        }
        p.push(part);
    }
    Some(p)
}

/// Windows path shown for a data-dir relative file.
pub fn windows_path(root: &str, rel: &str) -> String {
    format!("{root}\\{}", rel.replace('/', "\\"))
}

/// What `Get-VM | Get-VMHardDiskDrive | Get-VHD` would report, from the real files.
pub fn records(model: &SimModel, dir: &Path) -> Result<Vec<VmRecord>, String> {
    records_with(model, dir, &|_, _| None)
}

/// [`records`], with the file a drive runs on now where the simulator moved it (`active(VM
/// id, drive index)`: after a checkpoint, the differencing child).
pub fn records_with(
    model: &SimModel,
    dir: &Path,
    active: &dyn Fn(&str, usize) -> Option<String>,
) -> Result<Vec<VmRecord>, String> {
    let mut out = Vec::new();
    for vm in &model.vms {
        let mut disks = Vec::new();
        for (idx, d) in vm.disks.iter().enumerate() {
            let moved = active(&vm.id, idx);
            let path = moved.as_ref().or(d.path.as_ref());
            let mut rec = DiskRecord {
                controller_type: d.controller_type.clone(),
                controller_number: d.controller_number,
                controller_location: d.controller_location,
                path: None,
                disk_number: d.disk_number,
                shared: d.shared,
                vhd_format: None,
                vhd_type: None,
                size: None,
                file_size: None,
                parent_path: None,
                logical_sector_size: None,
                error: None,
            };
            if let (Some(rel), None) = (path, d.disk_number) {
                let file: PathBuf = dir.join(rel);
                rec.path = Some(windows_path(&model.windows_root, rel));
                let name = file.display().to_string();
                // The script catches Get-VHD's error per disk (the VM is listed with it).
                let disk = match godwit_disk::Disk::open(&name) {
                    Ok(d) => d,
                    Err(e) => {
                        rec.error = Some(format!(
                            "Get-VHD : Getting the mounted storage instance for the path '{}' failed: {e}",
                            windows_path(&model.windows_root, rel)
                        ));
                        disks.push(rec);
                        continue;
                    }
                };
                let top = disk.top();
                rec.vhd_format = Some(
                    match top.format {
                        godwit_disk::Format::Vhd => "VHD",
                        godwit_disk::Format::Vhdx => "VHDX",
                        other => return Err(format!("Get-VHD : {} is {}", name, other.name())),
                    }
                    .to_string(),
                );
                rec.vhd_type = Some(
                    match top.subformat.as_str() {
                        "fixed" => "Fixed",
                        "dynamic" => "Dynamic",
                        "differencing" => "Differencing",
                        other => other,
                    }
                    .to_string(),
                );
                rec.size = Some(Bytes(top.virtual_size));
                rec.logical_sector_size = Some(top.logical_sector_size);
                rec.file_size = Some(Bytes(
                    std::fs::metadata(&file)
                        .map_err(|e| format!("{name}: {e}"))?
                        .len(),
                ));
                if let Some(parent) = disk.layers().get(1) {
                    let pfile = Path::new(&parent.info().file);
                    let prel = pfile
                        .strip_prefix(dir)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| parent.info().file.clone());
                    rec.parent_path = Some(windows_path(&model.windows_root, &prel));
                }
            }
            disks.push(rec);
        }
        out.push(VmRecord {
            id: vm.id.clone(),
            name: vm.name.clone(),
            generation: vm.generation,
            state: vm.state.clone(),
            processor_count: vm.processor_count,
            memory_startup: Bytes(vm.memory_startup),
            version: vm.version.clone(),
            checkpoint_type: vm.checkpoint_type.clone(),
            disks,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths() {
        assert_eq!(windows_path("C:\\VMs", "a/b.vhdx"), "C:\\VMs\\a\\b.vhdx");
        let d = Path::new("/data");
        assert_eq!(
            local_path("C:\\VMs", d, "c:\\vms\\a\\.\\b.vhdx"),
            Some(PathBuf::from("/data/a/b.vhdx"))
        );
        assert_eq!(local_path("C:\\VMs", d, "C:\\VMsX\\a"), None);
        assert_eq!(local_path("C:\\VMs", d, "C:\\VMs\\..\\Windows\\x"), None);
        assert_eq!(local_path("C:\\VMs", d, "D:\\VMs\\a"), None);
    }
}
