//! VHDX: fixed, dynamic and differencing images (MS-VHDX), log replay in memory.
//!
//! - Headers: the valid one (signature + CRC-32C) with the higher sequence number wins. Region
//!   table 1, or table 2 when 1 is damaged. Unknown required regions and metadata items are
//!   refused by GUID.
//! - Log: when the header's LogGuid is not zero, the log is replayed into an in-memory overlay
//!   that every later read goes through ([`log`]); the source is never written.
//! - BAT: read on demand in pages with a bounded cache. A 64 TiB disk with 1 MiB blocks has a
//!   512 MiB BAT; with 32 MiB blocks 16 MiB: neither is held whole.
//! - Block states: FULLY_PRESENT is data; NOT_PRESENT is zeros in a base disk and the parent in
//!   a differencing one; ZERO, UNMAPPED and UNDEFINED read as zeros (as qemu does);
//!   PARTIALLY_PRESENT (differencing) consults the sector bitmap, one bit per logical sector,
//!   least significant bit first.
//! - Parent: the parent's DataWriteGuid must equal `parent_linkage` or, when present,
//!   `parent_linkage2` (MS-VHDX 2.6.2.6.3: the second is written while a child is merged into its
//!   parent); hints are relative_path, volume_path, absolute_win32_path.

pub mod header;
pub mod log;
pub mod metadata;

use crate::error::{Error, Result};
use crate::layer::{
    Format, Identity, Layer, LayerInfo, ParentLink, Run, RunState, Stored, push_run, push_stored,
};
use crate::storage::Opened;
use crate::vhd::table::{EntryKind, PagedTable};
use header::{
    BAT_REGION, HEADER_SIZE, HEADER1_OFFSET, HEADER2_OFFSET, Header, METADATA_REGION, MIB,
    REGION_TABLE_SIZE, REGION1_OFFSET, REGION2_OFFSET, RegionTable, guid_text,
};
use log::{Overlay, Piece};
use metadata::Metadata;
use std::sync::{Arc, Mutex};

const FMT: &str = "vhdx";

pub const PAYLOAD_NOT_PRESENT: u64 = 0;
pub const PAYLOAD_UNDEFINED: u64 = 1;
pub const PAYLOAD_ZERO: u64 = 2;
pub const PAYLOAD_UNMAPPED: u64 = 3;
/// qemu knows this value as UNMAPPED from the v0.95 draft.
pub const PAYLOAD_UNMAPPED_V095: u64 = 5;
pub const PAYLOAD_FULLY_PRESENT: u64 = 6;
pub const PAYLOAD_PARTIALLY_PRESENT: u64 = 7;
pub const SB_PRESENT: u64 = 6;
/// Largest metadata region read (Hyper-V and qemu write 1 MiB).
pub const MAX_METADATA: u64 = 16 * MIB;
/// Sectors one sector-bitmap block covers (2^23).
pub const CHUNK_SECTORS: u64 = 1 << 23;

/// The file as the metadata sees it: the source plus the replayed log.
struct FileView {
    src: Opened,
    real_len: u64,
    overlay: Overlay,
}

impl FileView {
    /// The file length after replay: at least the head entry's LastFileOffset, rounded up to
    /// 1 MiB (as qemu extends it).
    fn len(&self) -> u64 {
        let replayed = self.overlay.min_file_len.div_ceil(MIB).saturating_mul(MIB);
        self.real_len.max(replayed)
    }

    fn read(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len());
        let Some(end) = end else {
            return Err(Error::corrupt(
                &self.src.name,
                FMT,
                offset,
                format!(
                    "{what} ({} bytes) runs past the end of the file ({} bytes)",
                    buf.len(),
                    self.len()
                ),
            ));
        };
        let real = self.real_len.saturating_sub(offset).min(buf.len() as u64);
        let real = usize::try_from(real).unwrap_or(0);
        if real > 0 {
            self.src
                .file
                .read_exact_at(&mut buf[..real], offset)
                .map_err(|e| Error::io(&self.src.name, "read", e))?;
        }
        buf[real..].fill(0);
        for (s, e, piece) in self.overlay.overlapping(offset, end) {
            let a = s.max(offset);
            let b = e.min(end);
            let dst = &mut buf[usize::try_from(a - offset).unwrap_or(0)
                ..usize::try_from(b - offset).unwrap_or(0)];
            match piece {
                Piece::Zero => dst.fill(0),
                Piece::Data {
                    sector_start,
                    data_sector,
                    leading,
                    trailing,
                } => {
                    let mut sector = [0u8; 4096];
                    sector[..8].copy_from_slice(&leading);
                    self.src
                        .file
                        .read_exact_at(&mut sector[8..4092], data_sector + 8)
                        .map_err(|e| Error::io(&self.src.name, "read log", e))?;
                    sector[4092..].copy_from_slice(&trailing);
                    let from = usize::try_from(a - sector_start).unwrap_or(0);
                    dst.copy_from_slice(&sector[from..from + dst.len()]);
                }
            }
        }
        Ok(())
    }
}

/// One VHDX file.
pub struct VhdxLayer {
    info: LayerInfo,
    view: FileView,
    header: Header,
    meta: Metadata,
    bat: PagedTable,
    chunk_ratio: u64,
    /// Regions a payload block must not overlap (BAT, metadata, log).
    reserved: Vec<(u64, u64)>,
    bitmap_cache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

/// Open a VHDX file as one layer.
pub fn open(src: Opened) -> Result<Box<dyn Layer>> {
    Ok(Box::new(VhdxLayer::open(src)?))
}

impl VhdxLayer {
    pub fn open(src: Opened) -> Result<Self> {
        let real_len = src
            .file
            .size()
            .map_err(|e| Error::io(&src.name, "size", e))?;
        let corrupt = |off: u64, r: String| Error::corrupt(&src.name, FMT, off, r);
        let mut view = FileView {
            src: src.clone(),
            real_len,
            overlay: Overlay::default(),
        };
        let mut ident = [0u8; 8];
        view.read(0, &mut ident, "file identifier")?;
        if &ident != b"vhdxfile" {
            return Err(corrupt(0, "no \"vhdxfile\" signature".into()));
        }
        let header = Self::pick_header(&view)?;
        if header.log_guid != [0; 16] {
            let (lo, ll) = (header.log_offset, u64::from(header.log_length));
            if lo % MIB != 0
                || ll % MIB != 0
                || ll == 0
                || lo < MIB
                || lo.checked_add(ll).is_none_or(|e| e > real_len)
            {
                return Err(corrupt(
                    HEADER1_OFFSET + 68,
                    format!(
                        "log at {lo:#x} ({ll} bytes) is not a 1 MiB-aligned range inside the file"
                    ),
                ));
            }
            let read = |off: u64, buf: &mut [u8]| {
                src.file
                    .read_exact_at(buf, off)
                    .map_err(|e| header::perr(off, format!("cannot read the log: {e}")))
            };
            view.overlay = log::replay(&read, lo, ll, header.log_guid)
                .map_err(|e| corrupt(e.offset, format!("log: {}", e.reason)))?;
        }
        let (bat_region, meta_region) = Self::regions(&view)?;
        if meta_region.1 > MAX_METADATA {
            return Err(corrupt(
                REGION1_OFFSET,
                format!(
                    "metadata region of {} bytes is larger than {MAX_METADATA}",
                    meta_region.1
                ),
            ));
        }
        let mlen = usize::try_from(meta_region.1).unwrap_or(0);
        let mut mbytes = vec![0u8; mlen];
        view.read(meta_region.0, &mut mbytes, "metadata region")?;
        let meta = Metadata::parse(&mbytes)
            .map_err(|e| corrupt(meta_region.0 + e.offset, format!("metadata: {}", e.reason)))?;
        let block = u64::from(meta.block_size);
        let chunk_ratio = CHUNK_SECTORS * u64::from(meta.logical_sector_size) / block;
        let blocks = meta.virtual_size.div_ceil(block);
        let entries = if meta.has_parent {
            blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else {
            blocks + blocks.saturating_sub(1) / chunk_ratio
        };
        if entries * 8 > bat_region.1 {
            return Err(corrupt(
                bat_region.0,
                format!(
                    "BAT region is {} bytes but {} blocks need {entries} entries",
                    bat_region.1, blocks
                ),
            ));
        }
        let mut reserved = vec![
            (0, MIB),
            (bat_region.0, bat_region.0 + bat_region.1),
            (meta_region.0, meta_region.0 + meta_region.1),
        ];
        if header.log_length > 0 {
            reserved.push((
                header.log_offset,
                header.log_offset + u64::from(header.log_length),
            ));
        }
        let (parent, subformat) = match &meta.parent_locator {
            Some(pl) => {
                let linkage = pl.parent_linkage().ok_or_else(|| {
                    corrupt(
                        meta_region.0,
                        "parent locator has no valid parent_linkage GUID".into(),
                    )
                })?;
                // MS-VHDX 2.6.2.6.3: the parent's DataWriteGuid matches either linkage.
                let alternate = match pl.get("parent_linkage2") {
                    None => None,
                    Some(_) => Some(pl.parent_linkage2().ok_or_else(|| {
                        corrupt(
                            meta_region.0,
                            "parent locator's parent_linkage2 is not a GUID".into(),
                        )
                    })?),
                };
                (
                    Some(ParentLink {
                        hints: pl.hints(),
                        expect: Identity::VhdxDataWriteGuid(linkage),
                        alternate: alternate.map(Identity::VhdxDataWriteGuid),
                    }),
                    "differencing",
                )
            }
            None if meta.leave_blocks_allocated => (None, "fixed"),
            None => (None, "dynamic"),
        };
        Ok(VhdxLayer {
            info: LayerInfo {
                file: src.name.clone(),
                format: Format::Vhdx,
                subformat: subformat.into(),
                virtual_size: meta.virtual_size,
                logical_sector_size: meta.logical_sector_size,
                files: vec![src.name.clone()],
                identity: Identity::VhdxDataWriteGuid(header.data_write_guid),
                parent,
            },
            bat: PagedTable::new(bat_region.0, entries, EntryKind::U64Le),
            view,
            header,
            meta,
            chunk_ratio,
            reserved,
            bitmap_cache: Mutex::new(None),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }
    /// Whether a log was replayed when opening.
    pub fn log_replayed(&self) -> bool {
        !self.view.overlay.is_empty()
    }

    fn pick_header(view: &FileView) -> Result<Header> {
        let mut best: Option<Header> = None;
        let mut errs = Vec::new();
        for off in [HEADER1_OFFSET, HEADER2_OFFSET] {
            let mut b = vec![0u8; HEADER_SIZE];
            view.read(off, &mut b, "header")?;
            match Header::parse(&b) {
                Ok(h)
                    if best
                        .as_ref()
                        .is_none_or(|x| h.sequence_number > x.sequence_number) =>
                {
                    best = Some(h)
                }
                Ok(_) => {}
                Err(e) => errs.push(format!("at {}: {}", off + e.offset, e.reason)),
            }
        }
        best.ok_or_else(|| {
            Error::corrupt(
                &view.src.name,
                FMT,
                HEADER1_OFFSET,
                format!("no valid header ({})", errs.join("; ")),
            )
        })
    }

    /// (offset, length) of the BAT and metadata regions.
    fn regions(view: &FileView) -> Result<((u64, u64), (u64, u64))> {
        let name = &view.src.name;
        let mut table = None;
        let mut errs = Vec::new();
        for off in [REGION1_OFFSET, REGION2_OFFSET] {
            let mut b = vec![0u8; REGION_TABLE_SIZE];
            view.read(off, &mut b, "region table")?;
            match RegionTable::parse(&b) {
                Ok(t) => {
                    table = Some((off, t));
                    break;
                }
                Err(e) => errs.push(format!("at {}: {}", off + e.offset, e.reason)),
            }
        }
        let (toff, table) = table.ok_or_else(|| {
            Error::corrupt(
                name,
                FMT,
                REGION1_OFFSET,
                format!("no valid region table ({})", errs.join("; ")),
            )
        })?;
        let (mut bat, mut meta) = (None, None);
        for (i, r) in table.entries.iter().enumerate() {
            let at = toff + 16 + 32 * i as u64;
            let range = (r.file_offset, u64::from(r.length));
            let inside = r.file_offset >= MIB
                && r.file_offset % MIB == 0
                && r.file_offset
                    .checked_add(range.1)
                    .is_some_and(|e| e <= view.len());
            if r.guid == BAT_REGION {
                bat = Some((range, at, inside));
            } else if r.guid == METADATA_REGION {
                meta = Some((range, at, inside));
            } else if r.required {
                return Err(Error::unsupported(
                    name,
                    FMT,
                    format!(
                        "unknown required region {} (region table entry at byte {at})",
                        guid_text(&r.guid)
                    ),
                ));
            }
        }
        let check = |x: Option<((u64, u64), u64, bool)>, what: &str| match x {
            Some((r, _, true)) => Ok(r),
            Some((r, at, false)) => Err(Error::corrupt(
                name,
                FMT,
                at,
                format!(
                    "{what} region at {:#x} ({} bytes) is not inside the file after the first MiB",
                    r.0, r.1
                ),
            )),
            None => Err(Error::corrupt(
                name,
                FMT,
                toff,
                format!("region table has no {what} region"),
            )),
        };
        Ok((check(bat, "BAT")?, check(meta, "metadata")?))
    }

    fn bat_entry(&self, index: u64) -> Result<u64> {
        let read = |off: u64, buf: &mut [u8]| self.view.read(off, buf, "BAT");
        self.bat.entry(index, &read)
    }

    /// File offset of a present block (or sector bitmap), validated.
    fn located(&self, entry: u64, index: u64, len: u64) -> Result<u64> {
        let off = (entry >> 20) * MIB;
        let end = off.checked_add(len);
        let overlaps = self
            .reserved
            .iter()
            .any(|&(s, e)| off < e && s < end.unwrap_or(u64::MAX));
        if end.is_none_or(|e| e > self.view.len()) || overlaps {
            return Err(Error::corrupt(
                &self.info.file,
                FMT,
                self.bat.entry_offset(index),
                format!(
                    "BAT entry {index} points at {off:#x}..{:#x}, past the end of the file ({} bytes) or into the headers, log, BAT or metadata",
                    end.unwrap_or(u64::MAX),
                    self.view.len()
                ),
            ));
        }
        Ok(off)
    }

    fn block_state(&self, block: u64) -> Result<(u64, u64)> {
        let index = block + block / self.chunk_ratio;
        let entry = self.bat_entry(index)?;
        Ok((entry & 7, index))
    }

    /// Bitmap bytes of one block (one bit per logical sector).
    fn block_bitmap(&self, block: u64) -> Result<Arc<Vec<u8>>> {
        let mut cache = self
            .bitmap_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((b, bm)) = cache.as_ref()
            && *b == block
        {
            return Ok(bm.clone());
        }
        let chunk = block / self.chunk_ratio;
        let index = chunk * (self.chunk_ratio + 1) + self.chunk_ratio;
        let entry = self.bat_entry(index)?;
        if entry & 7 != SB_PRESENT {
            return Err(Error::corrupt(
                &self.info.file,
                FMT,
                self.bat.entry_offset(index),
                format!(
                    "block {block} is PARTIALLY_PRESENT but its sector bitmap block is in state {}",
                    entry & 7
                ),
            ));
        }
        let base = self.located(entry, index, MIB)?;
        let bytes_per_block =
            u64::from(self.meta.block_size) / u64::from(self.meta.logical_sector_size) / 8;
        let mut bm = vec![0u8; usize::try_from(bytes_per_block).unwrap_or(0)];
        self.view.read(
            base + (block % self.chunk_ratio) * bytes_per_block,
            &mut bm,
            "sector bitmap",
        )?;
        let bm = Arc::new(bm);
        *cache = Some((block, bm.clone()));
        Ok(bm)
    }

    fn map_block(&self, block: u64, start: u64, end: u64, out: &mut Vec<Run>) -> Result<()> {
        let (state, index) = self.block_state(block)?;
        let diff = self.meta.has_parent;
        let bsize = u64::from(self.meta.block_size);
        let whole = |state| Run {
            offset: start,
            len: end - start,
            state,
        };
        match state {
            PAYLOAD_NOT_PRESENT if diff => push_run(out, whole(RunState::Parent)),
            PAYLOAD_NOT_PRESENT
            | PAYLOAD_UNDEFINED
            | PAYLOAD_ZERO
            | PAYLOAD_UNMAPPED
            | PAYLOAD_UNMAPPED_V095 => {
                push_run(out, whole(RunState::Zero));
            }
            PAYLOAD_FULLY_PRESENT => {
                let entry = self.bat_entry(index)?;
                let len = bsize.min(self.meta.virtual_size - block * bsize);
                self.located(entry, index, len)?;
                push_run(out, whole(RunState::Data));
            }
            PAYLOAD_PARTIALLY_PRESENT if diff => {
                let bm = self.block_bitmap(block)?;
                let ls = u64::from(self.meta.logical_sector_size);
                let bstart = block * bsize;
                let mut off = start;
                while off < end {
                    let sector = (off - bstart) / ls;
                    let byte = usize::try_from(sector / 8).unwrap_or(usize::MAX);
                    let here = bm.get(byte).is_some_and(|b| (b >> (sector % 8)) & 1 == 1);
                    let next = (bstart + (sector + 1) * ls).min(end);
                    let state = if here {
                        RunState::Data
                    } else {
                        RunState::Parent
                    };
                    push_run(
                        out,
                        Run {
                            offset: off,
                            len: next - off,
                            state,
                        },
                    );
                    off = next;
                }
            }
            s => {
                return Err(Error::corrupt(
                    &self.info.file,
                    FMT,
                    self.bat.entry_offset(index),
                    format!(
                        "BAT entry {index} has block state {s}, invalid in a {} disk",
                        self.info.subformat
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Layer for VhdxLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.info.virtual_size)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: range {offset}+{len} is past the virtual size {}",
                    self.info.file, self.info.virtual_size
                ))
            })?;
        let bsize = u64::from(self.meta.block_size);
        let mut out = Vec::new();
        let mut off = offset;
        while off < end {
            let block = off / bsize;
            let bend = ((block + 1) * bsize).min(end);
            self.map_block(block, off, bend, &mut out)?;
            off = bend;
        }
        Ok(out)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = offset;
        for piece in self.data_pieces(offset, buf.len() as u64)? {
            let gap = usize::try_from(done - offset).unwrap_or(0)
                ..usize::try_from(piece.offset - offset).unwrap_or(0);
            buf[gap].fill(0);
            let a = usize::try_from(piece.offset - offset).unwrap_or(0);
            let b = usize::try_from(piece.offset + piece.len - offset).unwrap_or(0);
            self.view
                .read(piece.file_offset, &mut buf[a..b], "block data")?;
            done = piece.offset + piece.len;
        }
        let tail = usize::try_from(done - offset).unwrap_or(0);
        buf[tail..].fill(0);
        Ok(())
    }

    /// Payload blocks are stored verbatim, unless the replayed log rewrites part of them or
    /// extends the file under them (then `None`: the bytes exist only in the overlay).
    fn stored(&self, offset: u64, len: u64) -> Result<Option<Vec<Stored>>> {
        let pieces = self.data_pieces(offset, len)?;
        if !self.view.overlay.is_empty() {
            for p in &pieces {
                let end = p.file_offset + p.len;
                if end > self.view.real_len
                    || !self.view.overlay.overlapping(p.file_offset, end).is_empty()
                {
                    return Ok(None);
                }
            }
        }
        Ok(Some(pieces))
    }

    fn page83(&self) -> Option<[u8; 16]> {
        self.meta.page83
    }
}

impl VhdxLayer {
    /// Where the data runs of `[offset, offset + len)` are in the file, in order (neighbouring
    /// blocks merged when the file holds them back to back). Offsets are validated by
    /// [`VhdxLayer::map`].
    fn data_pieces(&self, offset: u64, len: u64) -> Result<Vec<Stored>> {
        let bsize = u64::from(self.meta.block_size);
        let mut out = Vec::new();
        for run in self.map(offset, len)? {
            if run.state != RunState::Data {
                continue;
            }
            let mut off = run.offset;
            while off < run.end() {
                let block = off / bsize;
                let bend = ((block + 1) * bsize).min(run.end());
                let index = block + block / self.chunk_ratio;
                let entry = self.bat_entry(index)?;
                push_stored(
                    &mut out,
                    Stored {
                        offset: off,
                        len: bend - off,
                        file: self.view.src.file.clone(),
                        file_offset: (entry >> 20) * MIB + (off - block * bsize),
                    },
                );
                off = bend;
            }
        }
        Ok(out)
    }
}

/// Fuzz entry point: open `bytes` as a VHDX and map and read the first 64 MiB of the disk.
pub fn fuzz_open_and_read(bytes: &[u8]) -> Result<()> {
    let src = Opened {
        name: "fuzz.vhdx".into(),
        file: std::sync::Arc::new(crate::storage::MemFile::new(bytes.to_vec())),
    };
    let layer = VhdxLayer::open(src)?;
    fuzz_walk(&layer)
}

/// Map and read up to the first 64 MiB of a layer (fuzz targets).
pub(crate) fn fuzz_walk(layer: &dyn Layer) -> Result<()> {
    let len = layer.info().virtual_size.min(64 * MIB);
    let mut buf = vec![0u8; 1 << 20];
    for run in layer.map(0, len)? {
        if run.state == RunState::Data {
            let n = run.len.min(1 << 20);
            layer.read_at(run.offset, &mut buf[..usize::try_from(n).unwrap_or(0)])?;
        }
    }
    Ok(())
}
