//! The simulated host's disk files, as Hyper-V manages them: `Checkpoint-VM` freezes the file
//! each drive runs on and creates a real differencing child beside it (AVHDX for VHDX, AVHD
//! for VHD, parent locators pointing back), which takes the guest's writes from then on;
//! removing the checkpoint merges the child into its parent and deletes it. Every guest write
//! is also appended to the drive's Resilient Change Tracking log, which reference points and
//! `GetVirtualDiskChanges` read (see `scripts.rs`).
//!
//! Children are written with the disk crate's test generator (`godwit_disk::testing::vhd_gen`,
//! shared with the tests); merged or written base VHDX files are rewritten whole with the
//! disk crate's VHDX writer (content-equal; the file is new, as after a real merge it is not).

use super::model::{self, SimModel};
use godwit_disk::{BlockSource, Disk, Format, Run, RunState};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use godwit_disk::testing::vhd_gen;

/// RCT granularity of the simulator: changes are reported in whole 64 KiB blocks.
pub const RCT_BLOCK: u64 = 64 * 1024;
/// Largest disk the simulator rewrites in memory (merge, writes to a base file).
pub const MAX_REWRITE_BYTES: u64 = 1 << 30;

/// A differencing child the simulator created for a checkpoint.
#[derive(Debug, Clone)]
pub struct Child {
    /// Data-dir relative path of the child.
    pub rel: String,
    pub checkpoint_id: String,
    /// Guest writes it holds (offset, bytes), in order.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// The parent's DataWriteGuid (VHDX) or unique id (VHD), the child's linkage.
    linkage: [u8; 16],
    /// The child's own DataWriteGuid, kept over rewrites.
    own_guid: [u8; 16],
    parent_rel: String,
    vhdx: bool,
    size: u64,
}

/// One drive of one VM.
#[derive(Debug, Clone)]
pub struct DriveState {
    /// The file from `vms.json` (data-dir relative).
    pub base: String,
    /// Sim-made children, oldest first; the last one takes the writes.
    pub children: Vec<Child>,
    /// RCT log: every guest write (offset, length), in order.
    pub changes: Vec<(u64, u64)>,
    /// Identifies this drive's change tracking (in RCT ids).
    pub rct_uuid: String,
}

impl DriveState {
    /// The file the VM runs on now.
    pub fn active(&self) -> &str {
        self.children.last().map_or(&self.base, |c| &c.rel)
    }

    /// The RCT id of the drive as it is now: `rctX:<uuid>:<changes so far>`.
    pub fn rct_id_now(&self) -> String {
        format!("rctX:{}:{}", self.rct_uuid, self.changes.len())
    }
}

/// Drives keyed by (lower-case VM id, index in the VM's `disks`).
#[derive(Debug, Default)]
pub struct Drives {
    map: HashMap<(String, usize), DriveState>,
}

fn io(what: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", what.display())
}

impl Drives {
    /// The drive's state (created from the model on first use); `None` for pass-through.
    pub fn drive(&mut self, m: &SimModel, vm_id: &str, idx: usize) -> Option<&mut DriveState> {
        let vm = m.vms.iter().find(|v| v.id.eq_ignore_ascii_case(vm_id))?;
        let d = vm.disks.get(idx)?;
        let base = match (&d.path, d.disk_number) {
            (Some(p), None) => p.clone(),
            _ => return None,
        };
        Some(
            self.map
                .entry((vm.id.to_ascii_lowercase(), idx))
                .or_insert_with(|| DriveState {
                    base,
                    children: Vec::new(),
                    changes: Vec::new(),
                    rct_uuid: uuid::Uuid::new_v4().hyphenated().to_string(),
                }),
        )
    }

    /// The file a drive runs on now, if the simulator changed it.
    pub fn active(&self, vm_id: &str, idx: usize) -> Option<String> {
        self.map
            .get(&(vm_id.to_ascii_lowercase(), idx))
            .map(|d| d.active().to_string())
    }

    /// The drive whose RCT id carries `uuid`.
    pub fn by_rct_uuid(&self, uuid: &str) -> Option<&DriveState> {
        self.map.values().find(|d| d.rct_uuid == uuid)
    }
}

/// Freeze the drive's current file: create a differencing child of it for `checkpoint_id`.
/// Returns the frozen file (data-dir relative).
pub fn freeze(
    drive: &mut DriveState,
    dir: &Path,
    root: &str,
    checkpoint_id: &str,
) -> Result<String, String> {
    let frozen = drive.active().to_string();
    let frozen_path = dir.join(&frozen);
    let disk = Disk::open(&frozen_path.display().to_string()).map_err(|e| {
        format!(
            "Checkpoint-VM : {}: {e}",
            model::windows_path(root, &frozen)
        )
    })?;
    let top = disk.top();
    let vhdx = match top.format {
        Format::Vhdx => true,
        Format::Vhd => false,
        other => return Err(format!("Checkpoint-VM : {frozen} is {}", other.name())),
    };
    let size = top.virtual_size;
    let rel_dir = Path::new(&frozen)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let base_stem = Path::new(&drive.base)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let stem = base_stem.split('_').next().unwrap_or("disk").to_string();
    let ext = if vhdx { "avhdx" } else { "avhd" };
    let file_name = format!("{stem}_{}.{ext}", checkpoint_id.to_ascii_uppercase());
    let rel = if rel_dir.is_empty() {
        file_name
    } else {
        format!("{rel_dir}/{file_name}")
    };
    let linkage = if vhdx {
        let o = godwit_disk::storage::Locator::open(
            &godwit_disk::storage::LocalFs,
            &frozen_path.display().to_string(),
            None,
        )
        .map_err(|e| io(&frozen_path, e))?;
        godwit_disk::vhdx::VhdxLayer::open(o)
            .map_err(|e| io(&frozen_path, e))?
            .header()
            .data_write_guid
    } else {
        let bytes = std::fs::read(&frozen_path).map_err(|e| io(&frozen_path, e))?;
        let tail = bytes
            .get(bytes.len().saturating_sub(512)..)
            .ok_or_else(|| io(&frozen_path, "too short for a VHD"))?;
        godwit_disk::vhd::footer::Footer::parse(tail)
            .map_err(|e| io(&frozen_path, format!("{e:?}")))?
            .unique_id
    };
    let child = Child {
        rel,
        checkpoint_id: checkpoint_id.to_string(),
        writes: Vec::new(),
        linkage,
        own_guid: *uuid::Uuid::new_v4().as_bytes(),
        parent_rel: frozen.clone(),
        vhdx,
        size,
    };
    write_child(&child, dir, root)?;
    drive.children.push(child);
    Ok(frozen)
}

fn write_child(c: &Child, dir: &Path, root: &str) -> Result<(), String> {
    let path = dir.join(&c.rel).display().to_string();
    let parent_name = Path::new(&c.parent_rel)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let relative = format!(".\\{parent_name}");
    let absolute = model::windows_path(root, &c.parent_rel);
    let writes: vhd_gen::Writes = c.writes.clone();
    // The generator panics on I/O errors; keep a panic from taking the simulator down.
    let run = std::panic::catch_unwind(|| {
        if c.vhdx {
            vhd_gen::vhdx(
                &path,
                &vhd_gen::VhdxSpec {
                    size: c.size,
                    block_size: 1 << 20,
                    logical_sector: 512,
                    parent: Some(vhd_gen::VhdxParent {
                        linkage: c.linkage,
                        linkage2: None,
                        relative_path: &relative,
                        absolute_win32_path: &absolute,
                    }),
                    zero_blocks: vec![],
                    data_write_guid: Some(c.own_guid),
                },
                &writes,
            );
        } else {
            vhd_gen::vhd_with_id(
                &path,
                c.size,
                2 << 20,
                Some(&vhd_gen::VhdParent {
                    unique_id: c.linkage,
                    locators: vec![(*b"W2ru", relative.as_str()), (*b"W2ku", absolute.as_str())],
                    name: &parent_name,
                    space_in_bytes: false,
                }),
                &writes,
                c.own_guid,
            );
        }
    });
    run.map_err(|_| format!("{path}: could not write the differencing disk"))
}

/// A guest write: into the newest child, or into the base file when there is none (VHDX only
/// for base files). Recorded in the RCT log.
pub fn guest_write(
    drive: &mut DriveState,
    dir: &Path,
    root: &str,
    offset: u64,
    data: &[u8],
) -> Result<(), String> {
    if !offset.is_multiple_of(512) || !data.len().is_multiple_of(512) || data.is_empty() {
        return Err(format!(
            "guest write at {offset}+{} is not whole 512-byte sectors",
            data.len()
        ));
    }
    let len = u64::try_from(data.len()).map_err(|e| e.to_string())?;
    let base = drive.base.clone();
    match drive.children.last_mut() {
        Some(c) => {
            if offset.checked_add(len).is_none_or(|e| e > c.size) {
                return Err(format!(
                    "guest write at {offset}+{len} is past the disk end"
                ));
            }
            c.writes.push((offset, data.to_vec()));
            write_child(c, dir, root)?;
        }
        None => rewrite_base(&dir.join(&base), &[(offset, data.to_vec())])?,
    }
    drive.changes.push((offset, len));
    Ok(())
}

/// Merge the child made for `checkpoint_id` (the newest one) into its parent and delete it.
pub fn merge(
    drive: &mut DriveState,
    dir: &Path,
    root: &str,
    checkpoint_id: &str,
) -> Result<bool, String> {
    let Some(pos) = drive
        .children
        .iter()
        .position(|c| c.checkpoint_id.eq_ignore_ascii_case(checkpoint_id))
    else {
        return Ok(false);
    };
    if pos + 1 != drive.children.len() {
        return Err("simulator: only the newest checkpoint can be merged".into());
    }
    let child = drive.children.remove(pos);
    // A merge writes the parent: its LastWriteTime changes even when the child holds no guest
    // writes (Hyper-V updates the parent's headers/log while merging), so nothing may trust a
    // frozen file's LastWriteTime across a removed checkpoint.
    match drive.children.last_mut() {
        Some(parent) => {
            parent.writes.extend(child.writes.iter().cloned());
            write_child(parent, dir, root)?;
        }
        None if child.vhdx => rewrite_base(&dir.join(&drive.base), &child.writes)?,
        None if child.writes.is_empty() => touch(&dir.join(&drive.base))?,
        None => return Err("simulator: merging writes into a VHD is not supported".into()),
    }
    let p = dir.join(&child.rel);
    std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
    Ok(true)
}

/// Set a file's modification time to now (a merge that wrote nothing but metadata).
fn touch(path: &Path) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    f.set_modified(std::time::SystemTime::now())
        .map_err(|e| io(path, e))
}

/// The whole disk in memory, as a block source for the writer.
struct Mem {
    bytes: Vec<u8>,
    sector: u32,
}

impl BlockSource for Mem {
    fn virtual_size(&self) -> u64 {
        u64::try_from(self.bytes.len()).unwrap_or(u64::MAX)
    }
    fn map(&self, offset: u64, len: u64) -> godwit_disk::Result<Vec<Run>> {
        Ok(vec![Run {
            offset,
            len,
            state: RunState::Data,
        }])
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> godwit_disk::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.bytes.get(start..start.saturating_add(buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(godwit_disk::Error::io(
                "simulator memory disk",
                "read",
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
        }
    }
    fn logical_sector_size(&self) -> u32 {
        self.sector
    }
}

/// Apply writes to a (non-differencing) VHDX base file by rewriting it whole.
fn rewrite_base(path: &Path, writes: &[(u64, Vec<u8>)]) -> Result<(), String> {
    let name = path.display().to_string();
    let disk = Disk::open(&name).map_err(|e| io(path, e))?;
    let top = disk.top();
    if top.format != Format::Vhdx || disk.layers().len() != 1 {
        return Err(format!(
            "{name}: the simulator writes only into VHDX files without a parent"
        ));
    }
    let size = top.virtual_size;
    if size > MAX_REWRITE_BYTES {
        return Err(format!("{name}: larger than the simulator rewrites"));
    }
    let mut bytes = vec![0u8; usize::try_from(size).map_err(|e| e.to_string())?];
    disk.read_at(0, &mut bytes).map_err(|e| io(path, e))?;
    for (off, data) in writes {
        let s = usize::try_from(*off).map_err(|e| e.to_string())?;
        let dst = bytes
            .get_mut(s..s.saturating_add(data.len()))
            .ok_or_else(|| format!("{name}: write at {off} is past the disk end"))?;
        dst.copy_from_slice(data);
    }
    let mem = Mem {
        bytes,
        sector: top.logical_sector_size,
    };
    drop(disk);
    let tmp = path.with_extension("sim-rewrite");
    let f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    godwit_disk::write::write_image_to_file(
        &mem,
        godwit_disk::write::OutputFormat::VhdxDynamic,
        &godwit_disk::write::WriteOptions::default(),
        &f,
        &tmp.display().to_string(),
    )
    .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Changed ranges of a drive between RCT log positions `from` and `to`, in whole
/// [`RCT_BLOCK`]s, merged and clipped to `[offset, offset + length)` and the disk size.
pub fn changed_ranges(
    changes: &[(u64, u64)],
    from: usize,
    to: usize,
    offset: u64,
    length: u64,
    disk_size: u64,
) -> Vec<(u64, u64)> {
    let mut blocks: Vec<u64> = Vec::new();
    for (off, len) in changes.get(from..to).unwrap_or(&[]) {
        let first = off / RCT_BLOCK;
        let last = (off + len).div_ceil(RCT_BLOCK);
        blocks.extend(first..last);
    }
    blocks.sort_unstable();
    blocks.dedup();
    let end = offset.saturating_add(length).min(disk_size);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for b in blocks {
        let s = (b * RCT_BLOCK).max(offset);
        let e = ((b + 1) * RCT_BLOCK).min(end);
        if s >= e {
            continue;
        }
        match out.last_mut() {
            Some((ls, ll)) if *ls + *ll == s => *ll += e - s,
            _ => out.push((s, e - s)),
        }
    }
    out
}

/// Where the drive files live (for callers that need the local path).
pub fn local(dir: &Path, rel: &str) -> PathBuf {
    dir.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_ranges_are_whole_blocks_merged_and_clipped() {
        let k = RCT_BLOCK;
        let changes = [(0, 512), (k - 512, 1024), (5 * k, 512), (9 * k, 2 * k)];
        assert_eq!(
            changed_ranges(&changes, 0, 4, 0, u64::MAX, 100 * k),
            vec![(0, 2 * k), (5 * k, k), (9 * k, 2 * k)]
        );
        assert_eq!(
            changed_ranges(&changes, 2, 3, 0, u64::MAX, 100 * k),
            vec![(5 * k, k)]
        );
        assert_eq!(
            changed_ranges(&changes, 0, 4, k, 8 * k + 10, 100 * k),
            vec![(k, k), (5 * k, k), (9 * k, 10)]
        );
        assert!(changed_ranges(&changes, 4, 4, 0, u64::MAX, 100 * k).is_empty());
        assert!(changed_ranges(&changes, 9, 2, 0, u64::MAX, 100 * k).is_empty());
    }
}
