//! The contract between one image file ("layer") and the chain that stacks layers.
//!
//! A layer answers two questions for any byte range of the virtual disk: which parts it holds
//! ([`Layer::map`]) and what those bytes are ([`Layer::read_at`]). Ranges it does not hold are
//! either known zero (a hole, a zeroed grain, a VHDX ZERO block) or fall through to the parent.

use crate::error::Result;
use crate::storage::ReadAt;
use std::sync::Arc;

/// Image format families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Vmdk,
    Vhd,
    Vhdx,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
        }
    }
}

/// What a range of the virtual disk holds, as seen by one layer or by a whole chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Bytes stored here; read them.
    Data,
    /// Known to read as zeros (unallocated in a base image, zeroed grain, ZERO block).
    Zero,
    /// Not stored in this layer: read the parent. A chain never reports this.
    Parent,
}

/// A contiguous range of the virtual disk in one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Run {
    pub offset: u64,
    pub len: u64,
    pub state: RunState,
}

impl Run {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// How a child names its parent, and what the parent must prove about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLink {
    /// Names to try in order (relative first, then absolute), as written in the child.
    pub hints: Vec<String>,
    /// The identity the parent must have.
    pub expect: Identity,
    /// Another identity the parent may have instead (a VHDX `parent_linkage2`, written while
    /// a child is being merged into its parent).
    pub alternate: Option<Identity>,
}

/// The identity a layer offers to its children, and that a child expects of its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// VMDK descriptor `CID`; a child's `parentCID` must equal it.
    VmdkCid(u32),
    /// VHD footer unique id; a child's dynamic header `parent unique id` must equal it.
    VhdUniqueId([u8; 16]),
    /// VHDX `DataWriteGuid`; a child's `parent_linkage` must equal it.
    VhdxDataWriteGuid([u8; 16]),
    /// Nothing to check (raw files, or a format that carries no identity).
    None,
}

/// Static facts about one layer, for `godwit disk info` and for the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// The file (descriptor for multi-file VMDKs) this layer was opened from.
    pub file: String,
    pub format: Format,
    /// e.g. `monolithicSparse`, `streamOptimized`, `dynamic`, `differencing`, `fixed`.
    pub subformat: String,
    pub virtual_size: u64,
    /// Logical sector size the guest sees (512 or 4096).
    pub logical_sector_size: u32,
    /// Every file this layer reads (extents), for sizes and support bundles.
    pub files: Vec<String>,
    pub identity: Identity,
    pub parent: Option<ParentLink>,
}

/// A range of the virtual disk stored verbatim (uncompressed, unencrypted) in a file: a
/// converter may copy it file-to-file (`copy_file_range`) instead of reading and writing it.
#[derive(Clone)]
pub struct Stored {
    /// Virtual disk offset.
    pub offset: u64,
    pub len: u64,
    pub file: Arc<dyn ReadAt>,
    /// Where the bytes start in `file`.
    pub file_offset: u64,
}

/// One image file of a chain.
pub trait Layer: Send + Sync {
    fn info(&self) -> &LayerInfo;

    /// Runs covering exactly `[offset, offset + len)`, in order, adjacent runs merged where
    /// cheap. `offset + len` must not exceed the virtual size.
    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>>;

    /// Read bytes at `offset`. Ranges this layer maps as [`RunState::Zero`] or
    /// [`RunState::Parent`] are filled with zeros; the chain takes care of parents.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Where the [`RunState::Data`] parts of `[offset, offset + len)` are stored verbatim, in
    /// order; `None` when some of them are not (compressed grains, say), in which case callers
    /// read them with [`Layer::read_at`]. Optional: the default says `None`.
    fn stored(&self, _offset: u64, _len: u64) -> Result<Option<Vec<Stored>>> {
        Ok(None)
    }

    /// The disk's SCSI page 83 identifier, for formats that carry one (VHDX).
    fn page83(&self) -> Option<[u8; 16]> {
        None
    }

    /// File byte ranges `(start, end)` of the per-block metadata [`Layer::map`] reads for
    /// `[offset, offset + len)` (VHD sector bitmaps of a differencing disk), so a reader of a
    /// remote file can fetch them in one go before mapping. Optional: the default says none.
    fn map_metadata(&self, _offset: u64, _len: u64) -> Result<Vec<(u64, u64)>> {
        Ok(Vec::new())
    }
}

/// Anything with a virtual size, an allocation map and data: a whole chain ([`crate::Disk`]), a
/// staging-store index, a block device. The image writers consume this.
pub trait BlockSource: Send + Sync {
    fn virtual_size(&self) -> u64;
    /// Runs covering `[offset, offset + len)`; only [`RunState::Data`] and [`RunState::Zero`].
    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>>;
    /// Read bytes at `offset`; zero runs read as zeros.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// See [`Layer::stored`]; for a range that [`BlockSource::map`] reports as data.
    fn stored(&self, _offset: u64, _len: u64) -> Result<Option<Vec<Stored>>> {
        Ok(None)
    }
    /// Logical sector size the guest sees; writers keep it where the format can (VHDX).
    fn logical_sector_size(&self) -> u32 {
        512
    }
    /// See [`Layer::page83`]; writers keep it where the format can (VHDX).
    fn page83(&self) -> Option<[u8; 16]> {
        None
    }
    /// Whether [`BlockSource::read_at`] may be called from several threads at once and out of
    /// order at no extra cost, so a writer can read (and inflate) several pieces in parallel.
    /// False by default: a source that fetches ahead or hashes as it goes wants reads in order.
    fn parallel_reads(&self) -> bool {
        false
    }
}

/// Append `run` to `runs`, merging with the last one when they touch and share a state.
pub fn push_run(runs: &mut Vec<Run>, run: Run) {
    if run.len == 0 {
        return;
    }
    if let Some(last) = runs.last_mut()
        && last.state == run.state
        && last.end() == run.offset
    {
        last.len += run.len;
        return;
    }
    runs.push(run);
}

/// Append a stored piece, merging it with the previous one when both are contiguous in the
/// disk and in the same file.
pub fn push_stored(out: &mut Vec<Stored>, s: Stored) {
    if s.len == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.offset + last.len == s.offset
        && last.file_offset + last.len == s.file_offset
        && Arc::ptr_eq(&last.file, &s.file)
    {
        last.len += s.len;
        return;
    }
    out.push(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_run_merges_adjacent_same_state() {
        let mut v = Vec::new();
        push_run(
            &mut v,
            Run {
                offset: 0,
                len: 10,
                state: RunState::Data,
            },
        );
        push_run(
            &mut v,
            Run {
                offset: 10,
                len: 5,
                state: RunState::Data,
            },
        );
        push_run(
            &mut v,
            Run {
                offset: 15,
                len: 5,
                state: RunState::Zero,
            },
        );
        push_run(
            &mut v,
            Run {
                offset: 20,
                len: 0,
                state: RunState::Data,
            },
        );
        assert_eq!(
            v,
            vec![
                Run {
                    offset: 0,
                    len: 15,
                    state: RunState::Data
                },
                Run {
                    offset: 15,
                    len: 5,
                    state: RunState::Zero
                }
            ]
        );
    }
}
