//! Grain directories and grain tables, shared by every VMDK sparse flavour: hosted ("KDMV",
//! also streamOptimized), ESXi COWD (vmfsSparse) and seSparse.
//!
//! The grain directory (GD) is read and checked at open; it is small (256 KiB for a 2 TiB
//! hosted disk) and capped at [`MAX_GD_ENTRIES`]. Grain tables (GTs) are read on demand and
//! kept in a bounded FIFO cache of [`GT_CACHE_BYTES`], so memory stays bounded whatever the
//! disk size.

use crate::error::{Error, Result};
use crate::storage::ReadAt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::header::{SECTOR, usz};

/// Most grain directory entries accepted (qemu caps at 32 M; 4 M covers a 64 TiB seSparse
/// disk and 128 TiB of hosted sparse).
pub const MAX_GD_ENTRIES: u64 = 1 << 22;
/// Memory budget for cached grain tables of one extent.
pub const GT_CACHE_BYTES: usize = 8 << 20;

/// How table entries are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// u32 GD entries (GT sector) and u32 GTEs (grain sector); 0 = not allocated here.
    /// `zeroed_gte`: GTE 1 means "zeroed grain" (hosted v2+ with flag bit 2).
    U32 { zeroed_gte: bool },
    /// seSparse: u64 entries with a type in the top nibble.
    SeSparse {
        /// Sector where grain tables start (GD entries are indexes into it).
        gt_base: u64,
        /// Sector where grains start (GTEs are grain indexes into it).
        grains_base: u64,
    },
}

/// What a grain table entry says about one grain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gte {
    /// Not stored here: the parent's data, or zeros without a parent.
    Unallocated,
    /// Reads as zeros, whatever the parent holds.
    Zero,
    /// Stored at this sector of the extent file (for compressed extents: the grain record).
    Sector(u64),
}

/// Where a table lives and how it is laid out.
pub struct TableGeometry {
    pub kind: TableKind,
    /// Byte offset of the GD in the file.
    pub gd_offset: u64,
    /// GD entries the capacity needs (only these are read).
    pub gd_entries: u64,
    pub gtes_per_gt: u32,
    pub grain_sectors: u64,
    /// Sector ranges `[start, end)` no table or grain may point into (headers, descriptor).
    pub forbidden: Vec<(u64, u64)>,
}

struct Cache {
    map: HashMap<u64, Arc<[u64]>>,
    order: VecDeque<u64>,
    cap: usize,
}

pub struct Tables {
    name: String,
    file: Arc<dyn ReadAt>,
    file_size: u64,
    geo: TableGeometry,
    /// GT location per GD entry, as a byte offset (0 = no table).
    gd: Vec<u64>,
    cache: Mutex<Cache>,
}

fn entry_size(kind: TableKind) -> u64 {
    match kind {
        TableKind::U32 { .. } => 4,
        TableKind::SeSparse { .. } => 8,
    }
}

fn corrupt(name: &str, offset: u64, reason: impl Into<String>) -> Error {
    Error::corrupt(name, "vmdk", offset, reason)
}

impl Tables {
    /// Read and check the grain directory.
    pub fn open(
        name: &str,
        file: Arc<dyn ReadAt>,
        file_size: u64,
        geo: TableGeometry,
    ) -> Result<Tables> {
        let es = entry_size(geo.kind);
        if geo.gd_entries > MAX_GD_ENTRIES {
            return Err(corrupt(
                name,
                geo.gd_offset,
                format!(
                    "absurd grain directory of {} entries (the capacity is too large for the \
                     grain size)",
                    geo.gd_entries
                ),
            ));
        }
        let gd_bytes = geo.gd_entries * es;
        if geo
            .gd_offset
            .checked_add(gd_bytes)
            .is_none_or(|e| e > file_size)
        {
            return Err(corrupt(
                name,
                geo.gd_offset,
                format!(
                    "grain directory ({gd_bytes} bytes) runs past the end of the file \
                     ({file_size} bytes): truncated or corrupt"
                ),
            ));
        }
        let mut raw = vec![0u8; usize::try_from(gd_bytes).unwrap_or(0)];
        file.read_exact_at(&mut raw, geo.gd_offset)
            .map_err(|e| Error::io(name, "read grain directory", e))?;
        let gt_bytes = u64::from(geo.gtes_per_gt) * es;
        let mut gd = Vec::with_capacity(raw.len() / usz(es));
        for (i, chunk) in raw.chunks_exact(usz(es)).enumerate() {
            let at = geo.gd_offset + i as u64 * es;
            let gt_sector = match geo.kind {
                TableKind::U32 { .. } => u64::from(super::header::u32_at(chunk, 0)),
                TableKind::SeSparse { gt_base, .. } => {
                    let v = super::header::u64_at(chunk, 0);
                    if v == 0 {
                        0
                    } else if v >> 32 != 0x1000_0000 {
                        return Err(corrupt(
                            name,
                            at,
                            format!("seSparse grain directory entry 0x{v:016x} has a bad type"),
                        ));
                    } else {
                        (v & 0xffff_ffff)
                            .checked_mul(gt_bytes / SECTOR)
                            .and_then(|s| s.checked_add(gt_base))
                            .ok_or_else(|| corrupt(name, at, "grain table index overflows"))?
                    }
                }
            };
            if gt_sector == 0 {
                gd.push(0);
                continue;
            }
            if geo.forbidden.iter().any(|&(s, e)| {
                gt_sector < e && gt_sector.saturating_add(gt_bytes.div_ceil(SECTOR)) > s
            }) {
                return Err(corrupt(
                    name,
                    at,
                    format!("grain table {i} at sector {gt_sector} points into the header"),
                ));
            }
            let off = gt_sector.saturating_mul(SECTOR);
            if off.checked_add(gt_bytes).is_none_or(|e| e > file_size) {
                return Err(corrupt(
                    name,
                    at,
                    format!(
                        "grain table {i} at byte {off} runs past the end of the file \
                         ({file_size} bytes)"
                    ),
                ));
            }
            gd.push(off);
        }
        let cap = (GT_CACHE_BYTES / (geo.gtes_per_gt as usize * 8)).max(4);
        Ok(Tables {
            name: name.to_string(),
            file,
            file_size,
            geo,
            gd,
            cache: Mutex::new(Cache {
                map: HashMap::new(),
                order: VecDeque::new(),
                cap,
            }),
        })
    }

    pub fn grain_sectors(&self) -> u64 {
        self.geo.grain_sectors
    }

    /// Grains covered by one grain table.
    pub fn grains_per_gt(&self) -> u64 {
        u64::from(self.geo.gtes_per_gt)
    }

    /// The raw entries of grain table `gdi`, or `None` when the GD has no table there (every
    /// grain in its span is unallocated).
    pub fn table(&self, gdi: u64) -> Result<Option<Arc<[u64]>>> {
        let Some(&off) = usize::try_from(gdi).ok().and_then(|i| self.gd.get(i)) else {
            return Ok(None);
        };
        if off == 0 {
            return Ok(None);
        }
        {
            let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = c.map.get(&gdi) {
                return Ok(Some(t.clone()));
            }
        }
        let es = entry_size(self.geo.kind);
        let mut raw = vec![0u8; usz(u64::from(self.geo.gtes_per_gt) * es)];
        self.file
            .read_exact_at(&mut raw, off)
            .map_err(|e| Error::io(&self.name, "read grain table", e))?;
        let entries: Arc<[u64]> = raw
            .chunks_exact(usz(es))
            .map(|c| match es {
                4 => u64::from(super::header::u32_at(c, 0)),
                _ => super::header::u64_at(c, 0),
            })
            .collect();
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !c.map.contains_key(&gdi) {
            if c.map.len() >= c.cap
                && let Some(old) = c.order.pop_front()
            {
                c.map.remove(&old);
            }
            c.map.insert(gdi, entries.clone());
            c.order.push_back(gdi);
        }
        Ok(Some(entries))
    }

    /// Decode entry `idx` of table `gdi` (whose raw value is `raw`).
    pub fn decode(&self, gdi: u64, idx: u64, raw: u64) -> Result<Gte> {
        let at = || {
            let base = usize::try_from(gdi)
                .ok()
                .and_then(|i| self.gd.get(i))
                .copied()
                .unwrap_or(0);
            base + idx * entry_size(self.geo.kind)
        };
        let sector = match self.geo.kind {
            TableKind::U32 { zeroed_gte } => match raw {
                0 => return Ok(Gte::Unallocated),
                1 if zeroed_gte => return Ok(Gte::Zero),
                s => s,
            },
            TableKind::SeSparse { grains_base, .. } => match raw >> 60 {
                0 if raw == 0 => return Ok(Gte::Unallocated),
                1 | 2 => return Ok(Gte::Zero),
                3 => {
                    let cluster = ((raw & 0x0fff_0000_0000_0000) >> 48)
                        | ((raw & 0x0000_ffff_ffff_ffff) << 12);
                    cluster
                        .checked_mul(self.geo.grain_sectors)
                        .and_then(|s| s.checked_add(grains_base))
                        .ok_or_else(|| corrupt(&self.name, at(), "grain index overflows"))?
                }
                _ => {
                    return Err(corrupt(
                        &self.name,
                        at(),
                        format!("seSparse grain table entry 0x{raw:016x} has a bad type"),
                    ));
                }
            },
        };
        if self
            .geo
            .forbidden
            .iter()
            .any(|&(s, e)| sector >= s && sector < e)
        {
            return Err(corrupt(
                &self.name,
                at(),
                format!("grain pointer to sector {sector} points into the header"),
            ));
        }
        if sector.saturating_mul(SECTOR) >= self.file_size {
            return Err(corrupt(
                &self.name,
                at(),
                format!(
                    "grain pointer to sector {sector} is past the end of the file ({} bytes)",
                    self.file_size
                ),
            ));
        }
        Ok(Gte::Sector(sector))
    }

    /// Look up one grain.
    pub fn lookup(&self, grain: u64) -> Result<Gte> {
        let per = self.grains_per_gt();
        let (gdi, idx) = (grain / per, grain % per);
        match self.table(gdi)? {
            None => Ok(Gte::Unallocated),
            Some(t) => self.decode(gdi, idx, t[usz(idx)]),
        }
    }

    /// Byte offset in the file of the entry for `grain`, for error messages.
    pub fn entry_offset(&self, grain: u64) -> u64 {
        let per = self.grains_per_gt();
        let base = usize::try_from(grain / per)
            .ok()
            .and_then(|i| self.gd.get(i))
            .copied()
            .unwrap_or(0);
        base + (grain % per) * entry_size(self.geo.kind)
    }
}
