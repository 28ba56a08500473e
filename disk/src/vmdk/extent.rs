//! One extent of a VMDK layer, and the simple kinds: flat (FLAT, VMFS) and ZERO.

use crate::error::{Error, Result};
pub use crate::layer::push_stored;
use crate::layer::{Run, RunState, Stored, push_run};
use crate::raw::runs_from_data_ranges;
use crate::storage::ReadAt;
use std::sync::Arc;

/// A contiguous piece of the virtual disk stored one way. Offsets are relative to the start
/// of the extent; `map` adds `base` to the runs it pushes.
pub trait Extent: Send + Sync {
    /// Bytes of the virtual disk this extent covers.
    fn len(&self) -> u64;
    fn map(&self, off: u64, len: u64, base: u64, out: &mut Vec<Run>) -> Result<()>;
    /// Fill `buf` from `off`; unallocated and zero parts read as zeros.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()>;
    /// Push where the data parts of `[off, off + len)` are stored verbatim (offsets plus
    /// `base`); `false` when they are not (compressed grains).
    fn stored(&self, off: u64, len: u64, base: u64, out: &mut Vec<Stored>) -> Result<bool>;
}

/// Raw data at `start` bytes into a file (FLAT and VMFS extents). Holes of a sparse local
/// file (ESXi thin disks copied out, qemu's unallocated flat files) map as zero.
pub struct FlatExtent {
    pub name: String,
    pub file: Arc<dyn ReadAt>,
    pub start: u64,
    pub len: u64,
}

impl Extent for FlatExtent {
    fn len(&self) -> u64 {
        self.len
    }

    fn map(&self, off: u64, len: u64, base: u64, out: &mut Vec<Run>) -> Result<()> {
        let ranges = self.file.data_ranges(self.start + off, len);
        for r in runs_from_data_ranges(self.start + off, len, ranges.as_deref()) {
            push_run(
                out,
                Run {
                    offset: r.offset - self.start + base,
                    len: r.len,
                    state: r.state,
                },
            );
        }
        Ok(())
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, self.start + off)
            .map_err(|e| Error::io(&self.name, "read", e))
    }

    fn stored(&self, off: u64, len: u64, base: u64, out: &mut Vec<Stored>) -> Result<bool> {
        push_stored(
            out,
            Stored {
                offset: base + off,
                len,
                file: self.file.clone(),
                file_offset: self.start + off,
            },
        );
        Ok(true)
    }
}

/// A ZERO extent: no file, reads as zeros.
pub struct ZeroExtent {
    pub len: u64,
}

impl Extent for ZeroExtent {
    fn len(&self) -> u64 {
        self.len
    }

    fn map(&self, off: u64, len: u64, base: u64, out: &mut Vec<Run>) -> Result<()> {
        push_run(
            out,
            Run {
                offset: base + off,
                len,
                state: RunState::Zero,
            },
        );
        Ok(())
    }

    fn read_at(&self, _off: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        Ok(())
    }

    fn stored(&self, _off: u64, _len: u64, _base: u64, _out: &mut Vec<Stored>) -> Result<bool> {
        Ok(true)
    }
}
