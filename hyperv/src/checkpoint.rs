//! Checkpoints over WinRM: `scripts/checkpoint-create.ps1` (a recovery checkpoint through
//! `Msvm_VirtualSystemSnapshotService.CreateSnapshot`, SnapshotType 32768, the kind backup
//! products make and the only kind `ConvertToReferencePoint` accepts:
//! https://learn.microsoft.com/en-us/windows/win32/hyperv_v2/msvm-virtualsystemsnapshotservice-converttoreferencepoint;
//! application consistent where the VM's CheckpointType allows it, falling back to crash
//! consistent as Hyper-V does for `Production`; or the kept checkpoint of an unfinished attempt)
//! and `scripts/checkpoint-remove.ps1` (Remove-VMSnapshot, then wait for the merge).

use crate::client::Shell;
use crate::error::{Error, Result};
use crate::powershell::with_args;
use crate::transport::Transport;
use serde::{Deserialize, Serialize};

pub const CREATE_SCRIPT: &str = include_str!("../scripts/checkpoint-create.ps1");
pub const REMOVE_SCRIPT: &str = include_str!("../scripts/checkpoint-remove.ps1");

/// A disk frozen by the checkpoint: the file the VM wrote to before it (now read-only; the VM
/// writes to a new differencing child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FrozenDisk {
    pub controller_type: String,
    pub controller_number: u32,
    pub controller_location: u32,
    pub path: String,
}

/// What checkpoint-create.ps1 prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Checkpoint {
    pub id: String,
    pub name: String,
    /// The VM's CheckpointType (`Production`, `ProductionOnly`, `Standard`).
    pub checkpoint_type: String,
    /// The checkpoint's SnapshotType as Hyper-V reports it (`Recovery`).
    pub snapshot_type: String,
    /// `ApplicationConsistent` or `CrashConsistent` (empty for a resumed checkpoint).
    #[serde(default)]
    pub consistency: String,
    /// The kept checkpoint of an unfinished earlier attempt, not a new one.
    #[serde(default)]
    pub resumed: bool,
    pub disks: Vec<FrozenDisk>,
}

/// What checkpoint-remove.ps1 prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Removed {
    pub removed: u32,
}

fn decode<D: serde::de::DeserializeOwned>(
    host: &str,
    script: &str,
    v: serde_json::Value,
) -> Result<D> {
    serde_json::from_value(v).map_err(|e| Error::BadOutput {
        host: host.to_string(),
        script: script.to_string(),
        detail: e.to_string(),
    })
}

/// Create checkpoint `name` of the VM with id `vm_id`; with `resume` (the id of a checkpoint of
/// that name an unfinished attempt kept), that one when it is still there.
pub fn create<T: Transport>(
    shell: &Shell<'_, T>,
    host: &str,
    vm_id: &str,
    name: &str,
    resume: Option<&str>,
) -> Result<Checkpoint> {
    let args = serde_json::json!({ "VmId": vm_id, "Name": name, "Resume": resume.unwrap_or("") });
    let v = shell.run_ps_json("checkpoint-create.ps1", &with_args(CREATE_SCRIPT, &args))?;
    let cp: Checkpoint = decode(host, "checkpoint-create.ps1", v)?;
    if cp.name != name {
        return Err(Error::BadOutput {
            host: host.to_string(),
            script: "checkpoint-create.ps1".into(),
            detail: format!("created checkpoint {:?}, not {name:?}", cp.name),
        });
    }
    Ok(cp)
}

/// Remove checkpoint `name` (if it still exists) and wait for the merge. Returns how many
/// checkpoints of that name were removed (0 when a sweep finds it already gone).
pub fn remove<T: Transport>(
    shell: &Shell<'_, T>,
    host: &str,
    vm_id: &str,
    name: &str,
) -> Result<u32> {
    let args = serde_json::json!({ "VmId": vm_id, "Name": name });
    let v = shell.run_ps_json("checkpoint-remove.ps1", &with_args(REMOVE_SCRIPT, &args))?;
    let r: Removed = decode(host, "checkpoint-remove.ps1", v)?;
    Ok(r.removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_json_round_trip() {
        let cp = Checkpoint {
            id: "A".into(),
            name: "godwit-x".into(),
            checkpoint_type: "Production".into(),
            snapshot_type: "Recovery".into(),
            consistency: "CrashConsistent".into(),
            resumed: false,
            disks: vec![FrozenDisk {
                controller_type: "SCSI".into(),
                controller_number: 0,
                controller_location: 1,
                path: r"C:\VMs\a.vhdx".into(),
            }],
        };
        let text = serde_json::to_string(&cp).unwrap();
        assert!(text.contains("\"ControllerLocation\":1"), "{text}");
        let back: Checkpoint = decode("h", "s", serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, cp);
        let e = decode::<Checkpoint>("h", "s", serde_json::json!({"Id": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("h: script s"), "{e}");
    }
}
