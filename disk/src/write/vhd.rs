//! VHD writer (dynamic and fixed), streaming: the layout is computed from the source's map
//! first, then the file is written front to back without seeking.
//!
//! - The virtual size is the source size rounded up to 512 bytes, stored exactly in
//!   `current_size`; the geometry is the specification's CHS for that size (it may address a
//!   little less). The creator is `"gdwt"`, so qemu and Hyper-V size the disk from
//!   `current_size`.
//! - Dynamic: 2 MiB blocks; a block is written only when the source has data in it, with every
//!   bitmap bit set (as qemu and Hyper-V write them). Into a local file ([`write_file`]) blocks
//!   whose bytes are all zeros stay unallocated too; a stream cannot drop them, since its BAT is
//!   written before the data.

use crate::error::{Error, Result};
use crate::layer::{BlockSource, RunState};
use crate::vhd::dynamic::{BAT_UNALLOCATED, DynamicHeader};
use crate::vhd::footer::{
    DiskType, FOOTER_SIZE, Footer, GODWIT_CREATOR, Geometry, MAX_VHD_SIZE, NO_DATA_OFFSET,
    VHD_EPOCH_UNIX,
};
use crate::write::{WriteStats, is_zero};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dynamic,
    Fixed,
}

/// Block size of dynamic disks Godwit writes (the Hyper-V and qemu default).
pub const BLOCK_SIZE: u64 = 2 << 20;
const BITMAP_SIZE: u64 = 512;
const HEADER_OFFSET: u64 = 512;
const BAT_OFFSET: u64 = 1536;
/// Window of the source map examined at a time (keeps the run list short on fragmented disks).
const MAP_WINDOW: u64 = 1 << 30;

/// A footer for a new image of `size` bytes (a multiple of 512).
pub fn new_footer(size: u64, disk_type: DiskType) -> Footer {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Footer {
        features: 2,
        data_offset: if disk_type == DiskType::Fixed {
            NO_DATA_OFFSET
        } else {
            HEADER_OFFSET
        },
        timestamp: u32::try_from(now.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX),
        creator_app: GODWIT_CREATOR,
        creator_version: 0x0001_0000,
        creator_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        geometry: Geometry::for_sectors(size / 512),
        disk_type,
        unique_id: *uuid::Uuid::new_v4().as_bytes(),
        saved_state: 0,
    }
}

fn out_err(e: std::io::Error) -> Error {
    Error::io("output", "write", e)
}

/// Write `src` as a VHD of `kind` to `out`.
pub fn write(src: &dyn BlockSource, kind: Kind, out: &mut dyn Write) -> Result<WriteStats> {
    let vsize = src.virtual_size();
    let size = vsize.div_ceil(512) * 512;
    if size > MAX_VHD_SIZE {
        return Err(Error::Usage(format!(
            "a VHD holds at most 2040 GiB; this disk is {vsize} bytes (use VHDX)"
        )));
    }
    match kind {
        Kind::Fixed => write_fixed(src, size, out),
        Kind::Dynamic => write_dynamic(src, size, out),
    }
}

fn write_fixed(src: &dyn BlockSource, size: u64, out: &mut dyn Write) -> Result<WriteStats> {
    let mut stats = crate::write::raw::write_stream(src, out)?;
    let pad = usize::try_from(size - src.virtual_size()).unwrap_or(0);
    out.write_all(&vec![0u8; pad]).map_err(out_err)?;
    out.write_all(&new_footer(size, DiskType::Fixed).encode())
        .map_err(out_err)?;
    stats.written_bytes += (pad + FOOTER_SIZE) as u64;
    Ok(stats)
}

/// Which `block`-sized blocks of `src` hold data.
pub(crate) fn allocated_blocks(src: &dyn BlockSource, block: u64) -> Result<Vec<bool>> {
    let vsize = src.virtual_size();
    let mut used = vec![false; usize::try_from(vsize.div_ceil(block)).unwrap_or(0)];
    let mut off = 0;
    while off < vsize {
        let len = MAP_WINDOW.min(vsize - off);
        for run in src.map(off, len)? {
            if run.state != RunState::Data || run.len == 0 {
                continue;
            }
            for b in run.offset / block..=(run.end() - 1) / block {
                if let Some(u) = used.get_mut(usize::try_from(b).unwrap_or(usize::MAX)) {
                    *u = true;
                }
            }
        }
        off += len;
    }
    Ok(used)
}

/// Fill `buf` (one block at virtual offset `start`) from `src`: data runs read, the rest zeros.
pub(crate) fn read_block(
    src: &dyn BlockSource,
    start: u64,
    buf: &mut [u8],
    stats: &mut WriteStats,
) -> Result<()> {
    buf.fill(0);
    let vsize = src.virtual_size();
    let len = (buf.len() as u64).min(vsize.saturating_sub(start));
    if len == 0 {
        return Ok(());
    }
    for run in src.map(start, len)? {
        if run.state == RunState::Data {
            let a = usize::try_from(run.offset - start).unwrap_or(0);
            let b = usize::try_from(run.end() - start).unwrap_or(0);
            src.read_at(run.offset, &mut buf[a..b])?;
            stats.data_bytes += run.len;
        }
    }
    Ok(())
}

/// The fixed parts of a dynamic VHD of `size` bytes: footer, header, BAT size, data start.
struct DynamicLayout {
    footer: [u8; FOOTER_SIZE],
    header: [u8; crate::vhd::dynamic::DYNAMIC_HEADER_SIZE],
    bat_bytes: u64,
    data_start: u64,
}

impl DynamicLayout {
    fn new(size: u64) -> Result<Self> {
        let blocks = size.div_ceil(BLOCK_SIZE);
        let entries = u32::try_from(blocks)
            .map_err(|_| Error::Usage(format!("{blocks} VHD blocks do not fit a BAT")))?;
        let bat_bytes = (blocks * 4).div_ceil(512) * 512;
        let header = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: BAT_OFFSET,
            max_table_entries: entries,
            block_size: u32::try_from(BLOCK_SIZE).unwrap_or(u32::MAX),
            parent_unique_id: [0; 16],
            parent_timestamp: 0,
            parent_name: String::new(),
            locators: Default::default(),
        };
        Ok(DynamicLayout {
            footer: new_footer(size, DiskType::Dynamic).encode(),
            header: header.encode(),
            bat_bytes,
            data_start: BAT_OFFSET + bat_bytes,
        })
    }

    /// A BAT with every entry unallocated.
    fn empty_bat(&self) -> Vec<u8> {
        BAT_UNALLOCATED
            .to_be_bytes()
            .repeat(usize::try_from(self.bat_bytes / 4).unwrap_or(0))
    }
}

/// BAT value (sector number) of a block stored at file offset `at`.
fn bat_sector(at: u64) -> Result<[u8; 4]> {
    u32::try_from(at / 512)
        .map(u32::to_be_bytes)
        .map_err(|_| Error::Usage("VHD data past 2 TiB".into()))
}

/// Streaming: every block the source maps as data is allocated (the BAT precedes the data, so
/// blocks cannot be dropped once their contents turn out to be zeros; see [`write_file`]).
fn write_dynamic(src: &dyn BlockSource, size: u64, out: &mut dyn Write) -> Result<WriteStats> {
    let used = allocated_blocks(src, BLOCK_SIZE)?;
    let layout = DynamicLayout::new(size)?;
    let mut stats = WriteStats::default();
    out.write_all(&layout.footer).map_err(out_err)?;
    out.write_all(&layout.header).map_err(out_err)?;
    let mut bat = layout.empty_bat();
    let mut next = layout.data_start;
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        bat[4 * i..4 * i + 4].copy_from_slice(&bat_sector(next)?);
        next += BITMAP_SIZE + BLOCK_SIZE;
    }
    out.write_all(&bat).map_err(out_err)?;
    stats.written_bytes = layout.data_start + FOOTER_SIZE as u64;
    // Blocks.
    let bitmap = vec![0xFFu8; usize::try_from(BITMAP_SIZE).unwrap_or(512)];
    let mut buf = vec![0u8; usize::try_from(BLOCK_SIZE).unwrap_or(0)];
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        read_block(src, i as u64 * BLOCK_SIZE, &mut buf, &mut stats)?;
        out.write_all(&bitmap).map_err(out_err)?;
        out.write_all(&buf).map_err(out_err)?;
        stats.written_bytes += BITMAP_SIZE + BLOCK_SIZE;
    }
    out.write_all(&layout.footer).map_err(out_err)?;
    Ok(stats)
}

/// Write `src` as a dynamic VHD into a local file in one pass, with positional writes: blocks
/// whose bytes are all zeros stay unallocated (as qemu-img leaves them), and the BAT is written
/// last. Anything already in the file is replaced.
pub fn write_file(src: &dyn BlockSource, out: &File, name: &str) -> Result<WriteStats> {
    let vsize = src.virtual_size();
    let size = vsize.div_ceil(512) * 512;
    if size > MAX_VHD_SIZE {
        return Err(Error::Usage(format!(
            "a VHD holds at most 2040 GiB; this disk is {vsize} bytes (use VHDX)"
        )));
    }
    let used = allocated_blocks(src, BLOCK_SIZE)?;
    let layout = DynamicLayout::new(size)?;
    let put = |bytes: &[u8], at: u64| {
        out.write_all_at(bytes, at)
            .map_err(|e| Error::io(name, "write", e))
    };
    let mut stats = WriteStats::default();
    let mut bat = layout.empty_bat();
    let mut next = layout.data_start;
    // Bitmap (all sectors present) then the block, written together.
    let bitmap = usize::try_from(BITMAP_SIZE).unwrap_or(512);
    let mut buf = vec![0u8; bitmap + usize::try_from(BLOCK_SIZE).unwrap_or(0)];
    buf[..bitmap].fill(0xFF);
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        read_block(src, i as u64 * BLOCK_SIZE, &mut buf[bitmap..], &mut stats)?;
        if is_zero(&buf[bitmap..]) {
            continue;
        }
        bat[4 * i..4 * i + 4].copy_from_slice(&bat_sector(next)?);
        put(&buf, next)?;
        next += BITMAP_SIZE + BLOCK_SIZE;
    }
    put(&layout.footer, 0)?;
    put(&layout.header, HEADER_OFFSET)?;
    put(&bat, BAT_OFFSET)?;
    put(&layout.footer, next)?;
    let end = next + FOOTER_SIZE as u64;
    out.set_len(end)
        .map_err(|e| Error::io(name, "set length", e))?;
    stats.written_bytes = end;
    Ok(stats)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layer::{Layer, Run, push_run};
    use crate::probe::Detected;
    use crate::storage::{MemFile, Opened};
    use proptest::prelude::*;
    use std::sync::Arc;

    /// An in-memory disk: 64 KiB pieces holding any non-zero byte are data.
    pub(crate) struct MemSource(pub Vec<u8>);

    impl BlockSource for MemSource {
        fn virtual_size(&self) -> u64 {
            self.0.len() as u64
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
            let mut out = Vec::new();
            let mut off = offset;
            while off < offset + len {
                let end = ((off / 65536 + 1) * 65536).min(offset + len);
                let s = usize::try_from(off).unwrap_or(0);
                let e = usize::try_from(end).unwrap_or(0);
                let state = if self.0[s..e].iter().any(|&b| b != 0) {
                    RunState::Data
                } else {
                    RunState::Zero
                };
                push_run(
                    &mut out,
                    Run {
                        offset: off,
                        len: end - off,
                        state,
                    },
                );
                off = end;
            }
            Ok(out)
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            let s = usize::try_from(offset).unwrap_or(0);
            buf.copy_from_slice(&self.0[s..s + buf.len()]);
            Ok(())
        }
    }

    pub(crate) fn opened(bytes: Vec<u8>, name: &str) -> Opened {
        Opened {
            name: name.into(),
            file: Arc::new(MemFile::new(bytes)),
        }
    }

    pub(crate) fn sample(size: usize, writes: &[(usize, usize, u8)]) -> Vec<u8> {
        let mut d = vec![0u8; size];
        for &(at, len, v) in writes {
            let at = at % size;
            let end = (at + len).min(size);
            d[at..end].fill(v.max(1));
        }
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn written_vhd_reads_back(
            sectors in 1usize..12_000,
            writes in proptest::collection::vec((0usize..6_000_000, 1usize..300_000, any::<u8>()), 0..6),
            fixed in any::<bool>(),
        ) {
            let data = sample(sectors * 512, &writes);
            let mut out = Vec::new();
            let kind = if fixed { Kind::Fixed } else { Kind::Dynamic };
            write(&MemSource(data.clone()), kind, &mut out).unwrap();
            let det = if fixed { Detected::VhdFixed } else { Detected::VhdDynamic };
            let layer = crate::vhd::VhdLayer::open(opened(out, "t.vhd"), det).unwrap();
            prop_assert_eq!(layer.info().virtual_size, data.len() as u64);
            let mut back = vec![0u8; data.len()];
            layer.read_at(0, &mut back).unwrap();
            prop_assert!(back == data);
        }
    }
}
