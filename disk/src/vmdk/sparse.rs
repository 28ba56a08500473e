//! Sparse extents: hosted ("KDMV": monolithicSparse, twoGbMaxExtentSparse pieces,
//! streamOptimized in both layouts), ESXi COWD (vmfsSparse) and seSparse.
//!
//! Reads are split at grain boundaries. Uncompressed grains that sit next to each other in
//! the file are read with one large positional read. Compressed grains are fetched in large
//! batches and inflated in parallel (rayon, libdeflate), which is what makes
//! streamOptimized → raw fast.

use super::extent::{Extent, push_stored};
use super::header::{
    COWD_GTES_PER_GT, CowdHeader, GD_AT_END, HeaderError, SECTOR, SeSparseHeader, SparseHeader,
    check_sesparse_volatile, usz,
};
use super::stream::{find_footer, grain_record, inflate, max_record};
use super::tables::{Gte, TableGeometry, TableKind, Tables};
use crate::error::{Error, Result};
use crate::layer::{Run, RunState, Stored, push_run};
use crate::storage::ReadAt;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Arc;

/// Most bytes fetched with one read when collecting compressed grains.
const MAX_BATCH: u64 = 16 << 20;
/// How far back from the end of a stream to look for its footer (EOS and zero padding).
const FOOTER_SEARCH: u64 = 1 << 20;

pub(crate) fn header_error(name: &str, base: u64, e: HeaderError) -> Error {
    if e.unsupported {
        Error::unsupported(
            name,
            "vmdk",
            format!("{} (byte {})", e.reason, base + e.offset),
        )
    } else {
        Error::corrupt(name, "vmdk", base + e.offset, e.reason)
    }
}

fn corrupt(name: &str, offset: u64, reason: impl Into<String>) -> Error {
    Error::corrupt(name, "vmdk", offset, reason)
}

pub struct SparseExtent {
    name: String,
    file: Arc<dyn ReadAt>,
    file_size: u64,
    tables: Tables,
    /// Bytes this extent contributes to the disk.
    len: u64,
    grain_bytes: u64,
    /// `Some(markers)` when grains are compressed.
    compressed: Option<bool>,
    /// What an unallocated grain means: the parent's data, or zeros.
    unalloc: RunState,
    /// First sector of this extent in the virtual disk (stream grain LBAs may be absolute).
    base_sector: u64,
}

/// One grain-sized (or smaller) piece of a read.
#[derive(Clone, Copy)]
struct Piece {
    /// Offset in the caller's buffer.
    at: usize,
    len: usize,
    grain: u64,
    /// Offset inside the grain.
    in_grain: usize,
    gte: Gte,
}

fn read_header_bytes(name: &str, file: &dyn ReadAt, size: u64, what: &str) -> Result<Vec<u8>> {
    if size < 512 {
        return Err(corrupt(
            name,
            0,
            format!("file is {size} bytes: too short for a {what} header (truncated)"),
        ));
    }
    let mut b = vec![0u8; 512];
    file.read_exact_at(&mut b, 0)
        .map_err(|e| Error::io(name, "read header", e))?;
    Ok(b)
}

impl SparseExtent {
    /// Open a hosted sparse extent ("KDMV"). `declared` is the extent length in sectors from
    /// the descriptor (`None`: the header's capacity).
    pub fn open_hosted(
        name: &str,
        file: Arc<dyn ReadAt>,
        declared: Option<u64>,
        unalloc: RunState,
        base_sector: u64,
    ) -> Result<SparseExtent> {
        let size = file.size().map_err(|e| Error::io(name, "size", e))?;
        let hb = read_header_bytes(name, file.as_ref(), size, "sparse VMDK")?;
        let hdr = SparseHeader::parse(&hb).map_err(|e| header_error(name, 0, e))?;
        hdr.validate(size).map_err(|e| header_error(name, 0, e))?;
        if hdr.overhead.saturating_mul(SECTOR) > size {
            return Err(corrupt(
                name,
                64,
                format!(
                    "header says the first {} sectors are metadata, but the file is only {size} \
                     bytes (truncated)",
                    hdr.overhead
                ),
            ));
        }
        let mut gd_offset = hdr.gd_offset;
        if hdr.gd_offset == GD_AT_END {
            if !(hdr.is_compressed() && hdr.has_markers()) {
                return Err(corrupt(
                    name,
                    56,
                    "grain directory at the end (GD_AT_END) on an extent that is not a \
                     streamOptimized stream",
                ));
            }
            gd_offset = read_footer(name, file.as_ref(), size, &hdr)?;
        }
        let grain_sectors = hdr.grain_size;
        check_declared(name, declared, hdr.capacity, 12)?;
        let mut forbidden = vec![(0, 1)];
        if hdr.descriptor_size > 0 {
            forbidden.push((
                hdr.descriptor_offset,
                hdr.descriptor_offset + hdr.descriptor_size,
            ));
        }
        let tables = Tables::open(
            name,
            file.clone(),
            size,
            TableGeometry {
                kind: TableKind::U32 {
                    zeroed_gte: hdr.has_zeroed_grain_gte(),
                },
                gd_offset: gd_offset * SECTOR,
                gd_entries: hdr.gd_entries(),
                gtes_per_gt: hdr.num_gtes_per_gt,
                grain_sectors,
                forbidden,
            },
        )?;
        Ok(SparseExtent {
            name: name.to_string(),
            file,
            file_size: size,
            tables,
            len: declared.unwrap_or(hdr.capacity) * SECTOR,
            grain_bytes: grain_sectors * SECTOR,
            compressed: hdr.is_compressed().then_some(hdr.has_markers()),
            unalloc,
            base_sector,
        })
    }

    /// Open an ESXi vmfsSparse ("COWD") delta extent.
    pub fn open_cowd(
        name: &str,
        file: Arc<dyn ReadAt>,
        declared: Option<u64>,
        unalloc: RunState,
    ) -> Result<SparseExtent> {
        let size = file.size().map_err(|e| Error::io(name, "size", e))?;
        let hb = read_header_bytes(name, file.as_ref(), size, "COWD")?;
        let h = CowdHeader::parse(&hb).map_err(|e| header_error(name, 0, e))?;
        let capacity = u64::from(h.capacity);
        check_declared(name, declared, capacity, 12)?;
        let grain_sectors = u64::from(h.grain_size);
        let gd_entries = capacity
            .div_ceil(grain_sectors)
            .div_ceil(u64::from(COWD_GTES_PER_GT));
        let tables = Tables::open(
            name,
            file.clone(),
            size,
            TableGeometry {
                kind: TableKind::U32 { zeroed_gte: false },
                gd_offset: u64::from(h.gd_offset) * SECTOR,
                gd_entries,
                gtes_per_gt: COWD_GTES_PER_GT,
                grain_sectors,
                forbidden: vec![(0, 1)],
            },
        )?;
        Ok(SparseExtent {
            name: name.to_string(),
            file,
            file_size: size,
            tables,
            len: declared.unwrap_or(capacity) * SECTOR,
            grain_bytes: grain_sectors * SECTOR,
            compressed: None,
            unalloc,
            base_sector: 0,
        })
    }

    /// Open an ESXi seSparse delta extent.
    pub fn open_sesparse(
        name: &str,
        file: Arc<dyn ReadAt>,
        declared: Option<u64>,
        unalloc: RunState,
    ) -> Result<SparseExtent> {
        let size = file.size().map_err(|e| Error::io(name, "size", e))?;
        let hb = read_header_bytes(name, file.as_ref(), size, "seSparse")?;
        let h = SeSparseHeader::parse(&hb).map_err(|e| header_error(name, 0, e))?;
        let vol_off = h.volatile_header_offset.saturating_mul(SECTOR);
        if vol_off.saturating_add(SECTOR) > size {
            return Err(corrupt(
                name,
                80,
                "seSparse volatile header is past the end of the file",
            ));
        }
        let mut vb = vec![0u8; 512];
        file.read_exact_at(&mut vb, vol_off)
            .map_err(|e| Error::io(name, "read volatile header", e))?;
        check_sesparse_volatile(&vb).map_err(|e| header_error(name, vol_off, e))?;
        check_declared(name, declared, h.capacity, 16)?;
        let gt_entries = h.grain_table_size * SECTOR / 8;
        let gd_entries = h.capacity.div_ceil(h.grain_size).div_ceil(gt_entries);
        let tables = Tables::open(
            name,
            file.clone(),
            size,
            TableGeometry {
                kind: TableKind::SeSparse {
                    gt_base: h.grain_tables_offset,
                    grains_base: h.grains_offset,
                },
                gd_offset: h.grain_dir_offset.saturating_mul(SECTOR),
                gd_entries,
                gtes_per_gt: u32::try_from(gt_entries).unwrap_or(u32::MAX),
                grain_sectors: h.grain_size,
                forbidden: vec![
                    (0, 1),
                    (h.volatile_header_offset, h.volatile_header_offset + 1),
                ],
            },
        )?;
        Ok(SparseExtent {
            name: name.to_string(),
            file,
            file_size: size,
            tables,
            len: declared.unwrap_or(h.capacity) * SECTOR,
            grain_bytes: h.grain_size * SECTOR,
            compressed: None,
            unalloc,
            base_sector: 0,
        })
    }

    pub fn set_base_sector(&mut self, s: u64) {
        self.base_sector = s;
    }

    fn state(&self, gte: Gte) -> RunState {
        match gte {
            Gte::Unallocated => self.unalloc,
            Gte::Zero => RunState::Zero,
            Gte::Sector(_) => RunState::Data,
        }
    }

    fn pieces(&self, off: u64, len: usize) -> Result<Vec<Piece>> {
        let gb = self.grain_bytes;
        let mut out = Vec::with_capacity(len / usz(gb) + 2);
        let mut at = 0usize;
        let mut pos = off;
        while at < len {
            let grain = pos / gb;
            let in_grain = usz(pos % gb);
            let n = (usz(gb) - in_grain).min(len - at);
            out.push(Piece {
                at,
                len: n,
                grain,
                in_grain,
                gte: self.tables.lookup(grain)?,
            });
            at += n;
            pos += n as u64;
        }
        Ok(out)
    }

    fn read_plain(&self, pieces: &[Piece], buf: &mut [u8]) -> Result<()> {
        let mut i = 0;
        while i < pieces.len() {
            let p = pieces[i];
            let Gte::Sector(s) = p.gte else {
                buf[p.at..p.at + p.len].fill(0);
                i += 1;
                continue;
            };
            // Extend over pieces stored right after this one in the file.
            let start = s * SECTOR + p.in_grain as u64;
            let mut end = start + p.len as u64;
            let mut j = i + 1;
            while let Some(q) = pieces.get(j)
                && let Gte::Sector(qs) = q.gte
                && qs * SECTOR + q.in_grain as u64 == end
            {
                end += q.len as u64;
                j += 1;
            }
            if end > self.file_size {
                return Err(corrupt(
                    &self.name,
                    self.tables.entry_offset(p.grain),
                    format!(
                        "grain data at byte {start} runs past the end of the file ({} bytes): \
                         truncated",
                        self.file_size
                    ),
                ));
            }
            let last = pieces[j - 1];
            self.file
                .read_exact_at(&mut buf[p.at..last.at + last.len], start)
                .map_err(|e| Error::io(&self.name, "read grain", e))?;
            i = j;
        }
        Ok(())
    }

    fn read_compressed(&self, pieces: &[Piece], buf: &mut [u8], markers: bool) -> Result<()> {
        // Fetch the records in file order, in large batches.
        let rec_max = max_record(self.grain_bytes);
        let mut order: Vec<usize> = (0..pieces.len())
            .filter(|&i| matches!(pieces[i].gte, Gte::Sector(_)))
            .collect();
        let sector_of = |i: usize| match pieces[i].gte {
            Gte::Sector(s) => s,
            _ => 0,
        };
        order.sort_by_key(|&i| sector_of(i));
        // (piece index, batch index, offset in batch)
        let mut located: Vec<(usize, usize, usize)> = Vec::with_capacity(order.len());
        let mut batches: Vec<Vec<u8>> = Vec::new();
        let mut k = 0;
        while k < order.len() {
            let first = sector_of(order[k]) * SECTOR;
            let mut last = first;
            let mut m = k + 1;
            while m < order.len() {
                let o = sector_of(order[m]) * SECTOR;
                if o + rec_max - first > MAX_BATCH || o - last > 4 * rec_max {
                    break;
                }
                last = o;
                m += 1;
            }
            let end = (last + rec_max).min(self.file_size);
            let mut b = vec![0u8; usize::try_from(end - first).unwrap_or(0)];
            self.file
                .read_exact_at(&mut b, first)
                .map_err(|e| Error::io(&self.name, "read compressed grains", e))?;
            for &pi in &order[k..m] {
                let o = sector_of(pi) * SECTOR;
                located.push((pi, batches.len(), usz(o - first)));
            }
            batches.push(b);
            k = m;
        }
        located.sort_by_key(|&(pi, _, _)| pi);

        // Carve the caller's buffer into the pieces' slices (disjoint, in order).
        let mut jobs: Vec<(Piece, &mut [u8], &[u8], u64)> = Vec::with_capacity(located.len());
        let mut rest: &mut [u8] = buf;
        let mut consumed = 0usize;
        let mut loc = located.iter().peekable();
        for (pi, p) in pieces.iter().enumerate() {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(p.at - consumed);
            let (dst, tail) = tail.split_at_mut(p.len);
            rest = tail;
            consumed = p.at + p.len;
            match loc.peek() {
                Some(&&(lpi, bi, bo)) if lpi == pi => {
                    loc.next();
                    let file_off = sector_of(pi) * SECTOR;
                    jobs.push((*p, dst, &batches[bi][bo..], file_off));
                }
                _ => dst.fill(0),
            }
        }
        let decode = |(p, dst, rec, file_off): &mut (Piece, &mut [u8], &[u8], u64)| {
            self.inflate_piece(p, dst, rec, *file_off, markers)
        };
        if jobs.len() <= 1 {
            jobs.iter_mut().try_for_each(decode)
        } else {
            jobs.par_iter_mut().try_for_each(decode)
        }
    }

    fn inflate_piece(
        &self,
        p: &Piece,
        dst: &mut [u8],
        rec: &[u8],
        file_off: u64,
        markers: bool,
    ) -> Result<()> {
        let r = grain_record(rec, markers, self.grain_bytes)
            .map_err(|(o, reason)| corrupt(&self.name, file_off + o, reason))?;
        let rel_lba = p.grain * self.tables.grain_sectors();
        if let Some(lba) = r.lba
            && lba != rel_lba
            && lba != rel_lba + self.base_sector
        {
            return Err(corrupt(
                &self.name,
                file_off,
                format!(
                    "grain record says LBA {lba}, but the grain table maps it to LBA {rel_lba}"
                ),
            ));
        }
        let gb = usz(self.grain_bytes);
        if p.in_grain == 0 && p.len == gb {
            let n = inflate(r.data, dst).map_err(|e| corrupt(&self.name, file_off, e))?;
            if n != gb {
                return Err(corrupt(
                    &self.name,
                    file_off,
                    format!("grain inflates to {n} bytes, expected {gb}"),
                ));
            }
            return Ok(());
        }
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < gb {
                s.resize(gb, 0);
            }
            let n = inflate(r.data, &mut s[..gb]).map_err(|e| corrupt(&self.name, file_off, e))?;
            if n < p.in_grain + p.len {
                return Err(corrupt(
                    &self.name,
                    file_off,
                    format!(
                        "grain inflates to {n} bytes, but {} are needed",
                        p.in_grain + p.len
                    ),
                ));
            }
            dst.copy_from_slice(&s[p.in_grain..p.in_grain + p.len]);
            Ok(())
        })
    }
}

/// The descriptor may not claim more sectors than the extent holds.
fn check_declared(name: &str, declared: Option<u64>, capacity: u64, at: u64) -> Result<()> {
    if let Some(d) = declared
        && d > capacity
    {
        return Err(corrupt(
            name,
            at,
            format!(
                "the descriptor gives this extent {d} sectors, but it holds only {capacity}: \
                 the extents do not add up"
            ),
        ));
    }
    Ok(())
}

/// Find and check the footer of a VMware-layout stream; returns the real GD sector.
fn read_footer(name: &str, file: &dyn ReadAt, size: u64, hdr: &SparseHeader) -> Result<u64> {
    let end = size / SECTOR * SECTOR;
    let start = end.saturating_sub(FOOTER_SEARCH);
    let mut tail = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    file.read_exact_at(&mut tail, start)
        .map_err(|e| Error::io(name, "read footer", e))?;
    let Some(at) = find_footer(&tail) else {
        return Err(corrupt(
            name,
            size,
            "the grain directory is at the end (GD_AT_END) but there is no footer before the \
             end of the file: the stream is truncated",
        ));
    };
    let foff = start + at as u64;
    let f = SparseHeader::parse(&tail[at..at + 512]).map_err(|e| header_error(name, foff, e))?;
    if f.capacity != hdr.capacity
        || f.grain_size != hdr.grain_size
        || f.num_gtes_per_gt != hdr.num_gtes_per_gt
    {
        return Err(corrupt(
            name,
            foff + 12,
            "the footer's capacity or grain geometry differs from the header's",
        ));
    }
    if f.gd_offset == GD_AT_END {
        return Err(corrupt(
            name,
            foff + 56,
            "the footer does not give the grain directory's offset",
        ));
    }
    f.validate(size).map_err(|e| header_error(name, foff, e))?;
    Ok(f.gd_offset)
}

impl Extent for SparseExtent {
    fn len(&self) -> u64 {
        self.len
    }

    fn map(&self, off: u64, len: u64, base: u64, out: &mut Vec<Run>) -> Result<()> {
        let gb = self.grain_bytes;
        let per = self.tables.grains_per_gt();
        let span = gb * per;
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let gdi = pos / span;
            let span_end = ((gdi + 1) * span).min(end);
            match self.tables.table(gdi)? {
                None => {
                    push_run(
                        out,
                        Run {
                            offset: base + pos,
                            len: span_end - pos,
                            state: self.unalloc,
                        },
                    );
                    pos = span_end;
                }
                Some(t) => {
                    while pos < span_end {
                        let g = pos / gb;
                        let idx = g % per;
                        let gte = self.tables.decode(gdi, idx, t[usz(idx)])?;
                        let gend = ((g + 1) * gb).min(span_end);
                        push_run(
                            out,
                            Run {
                                offset: base + pos,
                                len: gend - pos,
                                state: self.state(gte),
                            },
                        );
                        pos = gend;
                    }
                }
            }
        }
        Ok(())
    }

    fn stored(&self, off: u64, len: u64, base: u64, out: &mut Vec<Stored>) -> Result<bool> {
        if self.compressed.is_some() {
            return Ok(false);
        }
        let n = usize::try_from(len).map_err(|_| {
            Error::Usage(format!("{}: range of {len} bytes is too large", self.name))
        })?;
        for p in self.pieces(off, n)? {
            if let Gte::Sector(s) = p.gte {
                let file_offset = s * SECTOR + p.in_grain as u64;
                if file_offset + p.len as u64 > self.file_size {
                    return Err(corrupt(
                        &self.name,
                        self.tables.entry_offset(p.grain),
                        format!(
                            "grain data at byte {file_offset} runs past the end of the file \
                             ({} bytes): truncated",
                            self.file_size
                        ),
                    ));
                }
                push_stored(
                    out,
                    Stored {
                        offset: base + off + p.at as u64,
                        len: p.len as u64,
                        file: self.file.clone(),
                        file_offset,
                    },
                );
            }
        }
        Ok(true)
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        let pieces = self.pieces(off, buf.len())?;
        match self.compressed {
            None => self.read_plain(&pieces, buf),
            Some(markers) => self.read_compressed(&pieces, buf, markers),
        }
    }
}
