//! VHD: fixed, dynamic and differencing images (big-endian, Microsoft VHD specification).
//!
//! - The footer at the end of the file is used; when its checksum fails, a dynamic disk's copy at
//!   offset 0 is used instead. Both are verified.
//! - The virtual size follows qemu 10: the geometry for `"vpc "`/`"qemu"` creators (unless the
//!   geometry is the maximum), `current_size` for everyone else. At most 2040 GiB.
//! - Fixed disks: the data area is raw; holes of a sparse local file map as zeros.
//! - Dynamic disks: an allocated block is data as a whole (the bitmap is ignored, as qemu and
//!   Hyper-V do), an unallocated block is zeros.
//! - Differencing disks: the sector bitmap (MSB first) is honoured per sector; a 0 bit and an
//!   unallocated block read the parent, found through the parent locators (`W2ru`, `W2ku`,
//!   `Mac `, `MacX`) and the parent name, and identified by its unique id.
//! - The BAT is read on demand in pages ([`table::PagedTable`]), so memory stays bounded.

pub mod dynamic;
pub mod footer;
pub mod table;

use crate::error::{Error, Result};
use crate::layer::{
    Format, Identity, Layer, LayerInfo, ParentLink, Run, RunState, Stored, push_run, push_stored,
};
use crate::probe::Detected;
use crate::storage::Opened;
use dynamic::{BAT_UNALLOCATED, DYNAMIC_HEADER_SIZE, DynamicHeader, MAX_LOCATOR_DATA};
use footer::{DiskType, FOOTER_SIZE, Footer, MAX_VHD_SIZE};
use std::sync::{Arc, Mutex};
use table::{EntryKind, PagedTable};

const FMT: &str = "vhd";

struct Sparse {
    header: DynamicHeader,
    header_offset: u64,
    bat: PagedTable,
    block_size: u64,
    bitmap_size: u64,
    /// Last sector bitmap read (differencing): block index and bytes.
    bitmap_cache: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

/// One VHD file.
pub struct VhdLayer {
    info: LayerInfo,
    src: Opened,
    footer: Footer,
    sparse: Option<Sparse>,
}

/// Open a VHD file as one layer.
pub fn open(src: Opened, detected: Detected) -> Result<Box<dyn Layer>> {
    Ok(Box::new(VhdLayer::open(src, detected)?))
}

fn corrupt(src: &Opened, offset: u64, reason: impl Into<String>) -> Error {
    Error::corrupt(&src.name, FMT, offset, reason)
}

fn read(src: &Opened, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
    src.file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(
                src,
                offset,
                format!("{what} ({} bytes) runs past the end of the file", buf.len()),
            )
        } else {
            Error::io(&src.name, "read", e)
        }
    })
}

impl VhdLayer {
    pub fn open(src: Opened, detected: Detected) -> Result<Self> {
        let size = src
            .file
            .size()
            .map_err(|e| Error::io(&src.name, "size", e))?;
        if size < FOOTER_SIZE as u64 {
            return Err(corrupt(
                &src,
                0,
                format!("file is {size} bytes, too short for a VHD footer"),
            ));
        }
        let (footer, footer_at_end) = Self::read_footer(&src, size, detected)?;
        let vsize = footer.virtual_size();
        if vsize > MAX_VHD_SIZE {
            return Err(corrupt(
                &src,
                size - 512 + 48,
                format!("virtual size {vsize} is larger than the VHD limit of 2040 GiB"),
            ));
        }
        // Bytes the data area may use: up to the trailing footer when it is there.
        let data_end = if footer_at_end { size - 512 } else { size };
        let sparse = match footer.disk_type {
            DiskType::Fixed => {
                if vsize > data_end {
                    return Err(corrupt(
                        &src,
                        size - 512 + 48,
                        format!(
                            "fixed disk of {vsize} bytes but the file holds only {data_end} bytes of data"
                        ),
                    ));
                }
                None
            }
            _ => Some(Self::open_sparse(&src, &footer, vsize, data_end)?),
        };
        let subformat = footer.disk_type.name().to_string();
        let parent = match (&sparse, footer.disk_type) {
            (Some(s), DiskType::Differencing) => Some(ParentLink {
                hints: parent_hints(&src, &s.header)?,
                expect: Identity::VhdUniqueId(s.header.parent_unique_id),
                alternate: None,
            }),
            _ => None,
        };
        Ok(VhdLayer {
            info: LayerInfo {
                file: src.name.clone(),
                format: Format::Vhd,
                subformat,
                virtual_size: vsize,
                logical_sector_size: 512,
                files: vec![src.name.clone()],
                identity: Identity::VhdUniqueId(footer.unique_id),
                parent,
            },
            src,
            footer,
            sparse,
        })
    }

    /// The footer this layer uses.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic header and its file offset (dynamic and differencing disks).
    pub fn dynamic_header(&self) -> Option<(&DynamicHeader, u64)> {
        self.sparse.as_ref().map(|s| (&s.header, s.header_offset))
    }

    fn read_footer(src: &Opened, size: u64, detected: Detected) -> Result<(Footer, bool)> {
        let mut tail = [0u8; FOOTER_SIZE];
        read(src, size - 512, &mut tail, "footer")?;
        let tail_err = match Footer::parse(&tail) {
            Ok(f) => return Ok((f, true)),
            Err(e) => e,
        };
        if detected == Detected::VhdDynamic {
            let mut head = [0u8; FOOTER_SIZE];
            read(src, 0, &mut head, "footer copy")?;
            if let Ok(f) = Footer::parse(&head)
                && f.disk_type != DiskType::Fixed
            {
                return Ok((f, false));
            }
        }
        Err(corrupt(
            src,
            size - 512 + tail_err.offset,
            format!("footer: {}", tail_err.reason),
        ))
    }

    fn open_sparse(src: &Opened, footer: &Footer, vsize: u64, data_end: u64) -> Result<Sparse> {
        let hoff = footer.data_offset;
        if hoff == footer::NO_DATA_OFFSET
            || hoff < 512
            || hoff
                .checked_add(DYNAMIC_HEADER_SIZE as u64)
                .is_none_or(|e| e > data_end)
        {
            return Err(corrupt(
                src,
                data_end + 16,
                format!(
                    "{} disk's dynamic header offset {hoff:#x} is outside the file",
                    footer.disk_type.name()
                ),
            ));
        }
        let mut hb = vec![0u8; DYNAMIC_HEADER_SIZE];
        read(src, hoff, &mut hb, "dynamic header")?;
        let header =
            DynamicHeader::parse(&hb).map_err(|e| corrupt(src, hoff + e.offset, e.reason))?;
        let block_size = u64::from(header.block_size);
        let needed = vsize.div_ceil(block_size);
        if u64::from(header.max_table_entries) < needed {
            return Err(corrupt(
                src,
                hoff + 28,
                format!(
                    "BAT has {} entries but {vsize} bytes in {block_size}-byte blocks need {needed}",
                    header.max_table_entries
                ),
            ));
        }
        let bat = PagedTable::new(header.table_offset, needed, EntryKind::U32Be);
        let bat_end = header.table_offset.checked_add(bat.byte_len());
        let overlaps_header = header.table_offset < hoff + DYNAMIC_HEADER_SIZE as u64
            && bat_end.is_some_and(|e| e > hoff);
        if header.table_offset < 512 || bat_end.is_none_or(|e| e > data_end) || overlaps_header {
            return Err(corrupt(
                src,
                hoff + 16,
                format!(
                    "BAT at {:#x} ({} bytes) is outside the data area or overlaps the headers",
                    header.table_offset,
                    bat.byte_len()
                ),
            ));
        }
        let bitmap_size = header.bitmap_size();
        let sparse = Sparse {
            header,
            header_offset: hoff,
            bat,
            block_size,
            bitmap_size,
            bitmap_cache: Mutex::new(None),
        };
        // Check every BAT entry once, so a bad table fails at open with its offset.
        let bat_range = sparse.bat.offset..sparse.bat.offset + sparse.bat.byte_len();
        let reader = |off: u64, buf: &mut [u8]| read(src, off, buf, "BAT");
        for i in 0..needed {
            let e = sparse.bat.entry(i, &reader)?;
            if e == u64::from(BAT_UNALLOCATED) {
                continue;
            }
            let start = e * 512;
            let end = start + bitmap_size + block_size;
            let hits = |r: &std::ops::Range<u64>| start < r.end && r.start < end;
            if end > data_end || start < 512 || hits(&(hoff..hoff + 1024)) || hits(&bat_range) {
                return Err(corrupt(
                    src,
                    sparse.bat.entry_offset(i),
                    format!(
                        "BAT entry {i} puts block data at {start:#x}..{end:#x}, outside the data \
                         area (which ends at {data_end:#x}) or over the headers"
                    ),
                ));
            }
        }
        Ok(sparse)
    }

    fn sector_bitmap(&self, s: &Sparse, block: u64, at: u64) -> Result<Arc<Vec<u8>>> {
        let mut cache = s
            .bitmap_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((b, bm)) = cache.as_ref()
            && *b == block
        {
            return Ok(bm.clone());
        }
        let mut bm = vec![0u8; usize::try_from(s.bitmap_size).unwrap_or(0)];
        read(&self.src, at, &mut bm, "sector bitmap")?;
        let bm = Arc::new(bm);
        *cache = Some((block, bm.clone()));
        Ok(bm)
    }

    /// Runs of one block's range `[start, end)` (virtual offsets).
    fn map_block(
        &self,
        s: &Sparse,
        block: u64,
        start: u64,
        end: u64,
        out: &mut Vec<Run>,
    ) -> Result<()> {
        let reader = |off: u64, buf: &mut [u8]| read(&self.src, off, buf, "BAT");
        let entry = s.bat.entry(block, &reader)?;
        let diff = self.footer.disk_type == DiskType::Differencing;
        if entry == u64::from(BAT_UNALLOCATED) {
            let state = if diff {
                RunState::Parent
            } else {
                RunState::Zero
            };
            push_run(
                out,
                Run {
                    offset: start,
                    len: end - start,
                    state,
                },
            );
            return Ok(());
        }
        if !diff {
            push_run(
                out,
                Run {
                    offset: start,
                    len: end - start,
                    state: RunState::Data,
                },
            );
            return Ok(());
        }
        let bm = self.sector_bitmap(s, block, entry * 512)?;
        let block_start = block * s.block_size;
        let mut off = start;
        while off < end {
            let sector = (off - block_start) / 512;
            let byte = usize::try_from(sector / 8).unwrap_or(usize::MAX);
            let bit = 7 - (sector % 8);
            let here = bm.get(byte).is_some_and(|b| (b >> bit) & 1 == 1);
            let next = (block_start + (sector + 1) * 512).min(end);
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
        Ok(())
    }
}

/// Parent path hints in the order to try them: relative locators, absolute ones, then the
/// parent name from the header.
fn parent_hints(src: &Opened, h: &DynamicHeader) -> Result<Vec<String>> {
    let mut hints = Vec::new();
    for pass in [&[*b"W2ru"][..], &[*b"W2ku"], &[*b"MacX", *b"Mac "]] {
        for (i, loc) in h.locators.iter().enumerate() {
            if !loc.is_used() || !pass.contains(&loc.platform_code) {
                continue;
            }
            if loc.data_length > MAX_LOCATOR_DATA {
                return Err(corrupt(
                    src,
                    576 + 24 * i as u64 + 8,
                    format!(
                        "parent locator {i} claims {} bytes of data",
                        loc.data_length
                    ),
                ));
            }
            let mut data = vec![0u8; usize::try_from(loc.data_length).unwrap_or(0)];
            read(src, loc.data_offset, &mut data, "parent locator data")?;
            if let Some(p) = dynamic::decode_locator_data(loc.platform_code, &data)
                && !hints.contains(&p)
            {
                hints.push(p);
            }
        }
    }
    if !h.parent_name.is_empty() && !hints.contains(&h.parent_name) {
        hints.push(h.parent_name.clone());
    }
    Ok(hints)
}

impl Layer for VhdLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
        let end = check_range(&self.info, offset, len)?;
        let mut out = Vec::new();
        let Some(s) = &self.sparse else {
            // A fixed disk is raw data: holes of a sparse local file read as zeros.
            let ranges = self.src.file.data_ranges(offset, len);
            return Ok(crate::raw::runs_from_data_ranges(
                offset,
                len,
                ranges.as_deref(),
            ));
        };
        let mut off = offset;
        while off < end {
            let block = off / s.block_size;
            let bend = ((block + 1) * s.block_size).min(end);
            self.map_block(s, block, off, bend, &mut out)?;
            off = bend;
        }
        Ok(out)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.info, offset, buf.len() as u64)?;
        if self.sparse.is_none() {
            return read(&self.src, offset, buf, "data");
        }
        let mut done = offset;
        for piece in self.data_pieces(offset, buf.len() as u64)? {
            let gap = usize::try_from(done - offset).unwrap_or(0)
                ..usize::try_from(piece.offset - offset).unwrap_or(0);
            buf[gap].fill(0);
            let a = usize::try_from(piece.offset - offset).unwrap_or(0);
            let b = usize::try_from(piece.offset + piece.len - offset).unwrap_or(0);
            read(&self.src, piece.file_offset, &mut buf[a..b], "block data")?;
            done = piece.offset + piece.len;
        }
        let tail = usize::try_from(done - offset).unwrap_or(0);
        buf[tail..].fill(0);
        Ok(())
    }

    /// Every data byte of a VHD is stored verbatim: fixed disks at their own offset, dynamic
    /// and differencing blocks after their sector bitmap.
    fn stored(&self, offset: u64, len: u64) -> Result<Option<Vec<Stored>>> {
        check_range(&self.info, offset, len)?;
        Ok(Some(self.data_pieces(offset, len)?))
    }

    /// A differencing disk's sector bitmaps of the allocated blocks in the range.
    fn map_metadata(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        check_range(&self.info, offset, len)?;
        let Some(s) = &self.sparse else {
            return Ok(Vec::new());
        };
        if self.footer.disk_type != DiskType::Differencing || len == 0 {
            return Ok(Vec::new());
        }
        let reader = |off: u64, b: &mut [u8]| read(&self.src, off, b, "BAT");
        let mut out = Vec::new();
        for block in offset / s.block_size..=(offset + len - 1) / s.block_size {
            let entry = s.bat.entry(block, &reader)?;
            if entry != u64::from(BAT_UNALLOCATED) {
                out.push((entry * 512, entry * 512 + s.bitmap_size));
            }
        }
        Ok(out)
    }
}

impl VhdLayer {
    /// Where the data runs of `[offset, offset + len)` are in the file, in order, one piece per
    /// block at most (neighbouring blocks merged when the file holds them back to back).
    fn data_pieces(&self, offset: u64, len: u64) -> Result<Vec<Stored>> {
        let mut out = Vec::new();
        let Some(s) = &self.sparse else {
            push_stored(
                &mut out,
                Stored {
                    offset,
                    len,
                    file: self.src.file.clone(),
                    file_offset: offset,
                },
            );
            return Ok(out);
        };
        let reader = |off: u64, b: &mut [u8]| read(&self.src, off, b, "BAT");
        for run in self.map(offset, len)? {
            if run.state != RunState::Data {
                continue;
            }
            // A data run may span blocks: locate block by block.
            let mut off = run.offset;
            while off < run.end() {
                let block = off / s.block_size;
                let bend = ((block + 1) * s.block_size).min(run.end());
                let entry = s.bat.entry(block, &reader)?;
                push_stored(
                    &mut out,
                    Stored {
                        offset: off,
                        len: bend - off,
                        file: self.src.file.clone(),
                        file_offset: entry * 512 + s.bitmap_size + (off - block * s.block_size),
                    },
                );
                off = bend;
            }
        }
        Ok(out)
    }
}

fn check_range(info: &LayerInfo, offset: u64, len: u64) -> Result<u64> {
    offset
        .checked_add(len)
        .filter(|&e| e <= info.virtual_size)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{}: range {offset}+{len} is past the virtual size {}",
                info.file, info.virtual_size
            ))
        })
}

/// Fuzz entry point: open `bytes` as a VHD (either footer placement) and map and read the
/// first 64 MiB of the disk.
pub fn fuzz_open_and_read(bytes: &[u8]) -> Result<()> {
    let src = Opened {
        name: "fuzz.vhd".into(),
        file: Arc::new(crate::storage::MemFile::new(bytes.to_vec())),
    };
    let detected = if bytes.starts_with(b"conectix") {
        Detected::VhdDynamic
    } else {
        Detected::VhdFixed
    };
    let layer = VhdLayer::open(src, detected)?;
    crate::vhdx::fuzz_walk(&layer)
}
