//! Resilient Change Tracking (Hyper-V 2016+, VM configuration version 6.2 and later): after a
//! cycle's reads, the checkpoint is converted into a reference point
//! (`scripts/rct-reference.ps1`), which yields one RCT id per frozen disk; the next cycle asks
//! `GetVirtualDiskChanges` (`scripts/rct-changes.ps1`) which ranges of its frozen disk changed
//! since that id and reads only those. The ids live in a small state file per connector
//! ([`RctState`], written durably like the ledger).

use crate::client::Shell;
use crate::error::{Error, Result};
use crate::powershell::with_args;
use crate::transport::Transport;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

pub const REFERENCE_SCRIPT: &str = include_str!("../scripts/rct-reference.ps1");
pub const CHANGES_SCRIPT: &str = include_str!("../scripts/rct-changes.ps1");

/// Largest state file read.
pub const MAX_STATE_BYTES: u64 = 4 * 1024 * 1024;

/// One disk of a reference point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReferenceDisk {
    /// The frozen file (as the checkpoint reported it).
    pub path: Option<String>,
    pub rct_id: String,
}

/// What rct-reference.ps1 prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReferencePoint {
    pub reference_point: String,
    pub disks: Vec<ReferenceDisk>,
    /// Whether the previous reference point (the last cycle's) was destroyed.
    #[serde(default)]
    pub destroyed_previous: bool,
}

/// What rct-changes.ps1 prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Changes {
    #[serde(default)]
    pub offsets: Option<Vec<u64>>,
    #[serde(default)]
    pub lengths: Option<Vec<u64>>,
}

fn bad(host: &str, script: &str, detail: impl Into<String>) -> Error {
    Error::BadOutput {
        host: host.to_string(),
        script: script.to_string(),
        detail: detail.into(),
    }
}

/// Turn rct-changes.ps1 output into sorted, non-overlapping ranges inside `[0, disk_size)`
/// (pure; a fuzz entry point). Refuses unequal arrays, ranges past the end, overflow.
pub fn changed_ranges(c: &Changes, disk_size: u64) -> std::result::Result<Vec<Range<u64>>, String> {
    let offsets = c.offsets.as_deref().unwrap_or(&[]);
    let lengths = c.lengths.as_deref().unwrap_or(&[]);
    if offsets.len() != lengths.len() {
        return Err(format!(
            "{} offsets but {} lengths",
            offsets.len(),
            lengths.len()
        ));
    }
    let mut v: Vec<Range<u64>> = Vec::with_capacity(offsets.len());
    for (o, l) in offsets.iter().zip(lengths) {
        let end = o
            .checked_add(*l)
            .filter(|e| *e <= disk_size)
            .ok_or_else(|| format!("range {o}+{l} is past the disk end ({disk_size} bytes)"))?;
        if *l > 0 {
            v.push(*o..end);
        }
    }
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// Ask which ranges of `path` (a frozen disk of `disk_size` bytes) changed since `limit_id`.
pub fn changes<T: Transport>(
    shell: &Shell<'_, T>,
    host: &str,
    path: &str,
    limit_id: &str,
    disk_size: u64,
) -> Result<Vec<Range<u64>>> {
    const SCRIPT: &str = "rct-changes.ps1";
    // GetVirtualDiskChanges wants ByteLength less than the disk size: ask for [0, size-1) and
    // the last byte separately folded in by rounding (RCT blocks are far larger than a byte).
    let length = disk_size.saturating_sub(1);
    let args = serde_json::json!({
        "Path": path, "LimitId": limit_id, "Offset": 0, "Length": length,
    });
    let v = shell.run_ps_json(SCRIPT, &with_args(CHANGES_SCRIPT, &args))?;
    let c: Changes = serde_json::from_value(v).map_err(|e| bad(host, SCRIPT, e.to_string()))?;
    let mut ranges = changed_ranges(&c, disk_size).map_err(|d| bad(host, SCRIPT, d))?;
    // A change in the last RCT block covers the last byte too: extend a range that reaches
    // the queried end to the disk end.
    if let Some(last) = ranges.last_mut()
        && last.end == length
    {
        last.end = disk_size;
    }
    Ok(ranges)
}

/// Convert recovery checkpoint `name` of VM `vm_id` into a reference point (the checkpoint
/// goes away), then destroy `previous` (the VM's last reference point, whose ids are no longer
/// needed).
pub fn convert_to_reference_point<T: Transport>(
    shell: &Shell<'_, T>,
    host: &str,
    vm_id: &str,
    name: &str,
    previous: Option<&str>,
) -> Result<ReferencePoint> {
    const SCRIPT: &str = "rct-reference.ps1";
    let args =
        serde_json::json!({ "VmId": vm_id, "Name": name, "Previous": previous.unwrap_or("") });
    let v = shell.run_ps_json(SCRIPT, &with_args(REFERENCE_SCRIPT, &args))?;
    let rp: ReferencePoint =
        serde_json::from_value(v).map_err(|e| bad(host, SCRIPT, e.to_string()))?;
    if rp.disks.iter().any(|d| d.rct_id.is_empty()) {
        return Err(bad(host, SCRIPT, "a disk has an empty RCT id"));
    }
    Ok(rp)
}

/// The RCT id of one disk after a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRct {
    /// `SCSI 0:1`: the drive's place, stable across checkpoints (file names are not).
    pub drive: String,
    pub rct_id: String,
}

/// The last reference point of one VM on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRct {
    pub host: String,
    pub vm_id: String,
    pub reference_point: String,
    pub disks: Vec<DiskRct>,
}

/// The RCT state file: `{"version":1,"vms":[...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RctState {
    pub version: u32,
    pub vms: Vec<VmRct>,
}

impl RctState {
    /// Read `path` (an absent file is an empty state).
    pub fn load(path: &Path) -> Result<RctState> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RctState {
                version: 1,
                vms: Vec::new(),
            }),
            Err(e) => Err(Error::file(path, "stat", e)),
            Ok(m) if m.len() > MAX_STATE_BYTES => Err(Error::BadFile {
                path: path.display().to_string(),
                detail: format!("RCT state larger than {MAX_STATE_BYTES} bytes"),
            }),
            Ok(_) => {
                let b = std::fs::read(path).map_err(|e| Error::file(path, "read", e))?;
                parse_state(&b).map_err(|detail| Error::BadFile {
                    path: path.display().to_string(),
                    detail,
                })
            }
        }
    }

    /// Write durably (temp file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::ledger::write_durably(path, &encode_state(self))
    }

    pub fn get(&self, host: &str, vm_id: &str) -> Option<&VmRct> {
        self.vms
            .iter()
            .find(|v| v.host == host && v.vm_id.eq_ignore_ascii_case(vm_id))
    }

    /// Replace (or with `None` drop) the entry of this VM.
    pub fn set(&mut self, host: &str, vm_id: &str, v: Option<VmRct>) {
        self.vms
            .retain(|x| !(x.host == host && x.vm_id.eq_ignore_ascii_case(vm_id)));
        self.vms.extend(v);
    }
}

/// Parse an RCT state file (pure).
pub fn parse_state(b: &[u8]) -> std::result::Result<RctState, String> {
    let s: RctState = serde_json::from_slice(b).map_err(|e| {
        format!(
            "not an RCT state file (line {}, column {}): {e}",
            e.line(),
            e.column()
        )
    })?;
    if s.version != 1 {
        return Err(format!("RCT state version {} is not 1", s.version));
    }
    Ok(s)
}

pub fn encode_state(s: &RctState) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(s).unwrap_or_default();
    v.push(b'\n');
    v
}

/// How a drive is named in the state: `SCSI 0:1`.
pub fn drive_key(controller_type: &str, number: u32, location: u32) -> String {
    format!("{controller_type} {number}:{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_become_sorted_merged_ranges_and_bad_ones_are_refused() {
        let c = Changes {
            offsets: Some(vec![4096, 0, 1024, 9000]),
            lengths: Some(vec![100, 1024, 512, 0]),
        };
        assert_eq!(
            changed_ranges(&c, 10_000).unwrap(),
            vec![0..1536, 4096..4196]
        );
        assert!(changed_ranges(&Changes::default(), 1).unwrap().is_empty());
        let unequal = Changes {
            offsets: Some(vec![1]),
            lengths: None,
        };
        assert!(
            changed_ranges(&unequal, 10)
                .unwrap_err()
                .contains("1 offsets")
        );
        let past = Changes {
            offsets: Some(vec![u64::MAX]),
            lengths: Some(vec![2]),
        };
        assert!(changed_ranges(&past, 10).unwrap_err().contains("past"));
        let text = r#"{"Offsets":[0],"Lengths":[65536]}"#;
        let c: Changes = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
    }

    #[test]
    fn state_round_trips_and_replaces_per_vm() {
        let mut s = RctState {
            version: 1,
            vms: vec![],
        };
        let v = VmRct {
            host: "h:5986".into(),
            vm_id: "AB".into(),
            reference_point: "rp".into(),
            disks: vec![DiskRct {
                drive: drive_key("SCSI", 0, 1),
                rct_id: "rctX:1:2".into(),
            }],
        };
        s.set("h:5986", "ab", Some(v.clone()));
        s.set("h:5986", "AB", Some(v.clone()));
        assert_eq!(s.vms.len(), 1);
        assert_eq!(s.get("h:5986", "ab"), Some(&v));
        let b = encode_state(&s);
        assert_eq!(parse_state(&b).unwrap(), s);
        s.set("h:5986", "AB", None);
        assert!(s.vms.is_empty());
        assert!(parse_state(b"{}").unwrap_err().contains("line 1"));
        assert!(
            parse_state(br#"{"version":3,"vms":[]}"#)
                .unwrap_err()
                .contains("version 3")
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rct.json");
        assert_eq!(RctState::load(&p).unwrap().vms.len(), 0);
        let mut s2 = RctState::load(&p).unwrap();
        s2.set("h", "v", Some(v));
        s2.save(&p).unwrap();
        assert_eq!(RctState::load(&p).unwrap(), s2);
    }
}
