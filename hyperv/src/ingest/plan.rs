//! Which FILE byte ranges of a disk's chain the host must push, and in which order: the
//! transfer reads the disk in virtual order, chunk by chunk, so the host pushes the file ranges
//! in that order too ([`ordered_ranges`]) and the spool only ever holds the next stretch of the
//! disk. Pure apart from reading the disk's metadata (through its locator).

use super::ranges::RangeSet;
use crate::error::Result;
use godwit_disk::{BlockSource, Disk, RunState};
use std::collections::BTreeMap;
use std::ops::Range;

/// Ranges of one file closer than this are asked as one in [`file_ranges`] and
/// [`metadata_ranges`] (the bytes between are usually a VHD sector bitmap).
pub const COALESCE_GAP: u64 = 64 * 1024;
/// Virtual bytes mapped per step.
const MAP_STEP: u64 = 1 << 30;

/// The virtual ranges the transfer reads: `virtual_ranges` (whole disk when `None`) widened
/// to `align`.
pub fn wanted(disk: &Disk, virtual_ranges: Option<&[Range<u64>]>, align: u64) -> RangeSet {
    let size = disk.virtual_size();
    let align = align.max(1);
    let mut wanted = RangeSet::new();
    match virtual_ranges {
        None => wanted.insert(0, size),
        Some(rs) => {
            for r in rs {
                let s = r.start / align * align;
                let e = r.end.div_ceil(align).saturating_mul(align).min(size);
                wanted.insert(s, e);
            }
        }
    }
    wanted
}

/// The per-block metadata (VHD sector bitmaps) that mapping `virtual_ranges` reads, per file
/// name, for every layer of the chain (an over-approximation: a layer is only consulted where
/// the ones above it do not hold the data). Pushed before the data is planned, so mapping
/// reads them from the spool instead of one WinRM command per block.
pub fn metadata_ranges(
    disk: &Disk,
    virtual_ranges: Option<&[Range<u64>]>,
    align: u64,
) -> Result<BTreeMap<String, RangeSet>> {
    let wanted = wanted(disk, virtual_ranges, align);
    let mut out: BTreeMap<String, RangeSet> = BTreeMap::new();
    for l in disk.layers() {
        let lsize = l.info().virtual_size;
        for (start, end) in wanted.iter() {
            let end = end.min(lsize);
            if start >= end {
                continue;
            }
            for (a, b) in l.map_metadata(start, end - start)? {
                out.entry(l.info().file.clone()).or_default().insert(a, b);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(k, v)| (k, v.coalesce(COALESCE_GAP)))
        .collect())
}

/// One range of one file, to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRange {
    pub file: String,
    pub start: u64,
    pub end: u64,
}

/// The file ranges holding the data of `virtual_ranges` of `disk` (whole disk when `None`,
/// widened to `align`), in the order the transfer reads them (virtual order), exactly the
/// bytes it reads (no gaps filled), adjacent pieces of one file merged.
pub fn ordered_ranges(
    disk: &Disk,
    virtual_ranges: Option<&[Range<u64>]>,
    align: u64,
) -> Result<Vec<PlannedRange>> {
    let wanted = wanted(disk, virtual_ranges, align);
    let mut out: Vec<PlannedRange> = Vec::new();
    for (start, end) in wanted.iter() {
        let mut pos = start;
        while pos < end {
            let len = (end - pos).min(MAP_STEP);
            for (run, layer) in disk.resolve(pos, len)? {
                if run.state != RunState::Data {
                    continue;
                }
                let l = &disk.layers()[layer];
                let Some(pieces) = l.stored(run.offset, run.len)? else {
                    continue;
                };
                for p in pieces {
                    let (s, e) = (p.file_offset, p.file_offset + p.len);
                    match out.last_mut() {
                        Some(last) if last.file == l.info().file && last.end == s => last.end = e,
                        _ => out.push(PlannedRange {
                            file: l.info().file.clone(),
                            start: s,
                            end: e,
                        }),
                    }
                }
            }
            pos += len;
        }
    }
    Ok(out)
}

/// [`ordered_ranges`] per file, coalesced (the set of what a disk needs).
pub fn file_ranges(
    disk: &Disk,
    virtual_ranges: Option<&[Range<u64>]>,
    align: u64,
) -> Result<BTreeMap<String, RangeSet>> {
    let mut out: BTreeMap<String, RangeSet> = BTreeMap::new();
    for r in ordered_ranges(disk, virtual_ranges, align)? {
        out.entry(r.file).or_default().insert(r.start, r.end);
    }
    Ok(out
        .into_iter()
        .map(|(k, v)| (k, v.coalesce(COALESCE_GAP)))
        .collect())
}

/// `plan` without what `held` (per file) has, ranges cut where needed, order kept.
pub fn without_held(plan: &[PlannedRange], held: &BTreeMap<String, RangeSet>) -> Vec<PlannedRange> {
    let mut out = Vec::with_capacity(plan.len());
    for r in plan {
        let gaps = match held.get(&r.file) {
            Some(h) => h.gaps(r.start, r.end),
            None => vec![(r.start, r.end)],
        };
        for (a, b) in gaps {
            out.push(PlannedRange {
                file: r.file.clone(),
                start: a,
                end: b,
            });
        }
    }
    out
}

/// Where a time-bounded uploader command stopped: ranges before `next` are pushed whole, and
/// range `next` up to `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub next: usize,
    pub offset: u64,
}

/// What is left of `batch` after a command that stopped at `at`.
pub fn rest_of(batch: &[PlannedRange], at: Resume) -> Vec<PlannedRange> {
    let mut out = Vec::new();
    for (i, r) in batch.iter().enumerate().skip(at.next) {
        let start = if i == at.next {
            at.offset.clamp(r.start, r.end)
        } else {
            r.start
        };
        if start < r.end {
            out.push(PlannedRange {
                file: r.file.clone(),
                start,
                end: r.end,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pr(f: &str, s: u64, e: u64) -> PlannedRange {
        PlannedRange {
            file: f.into(),
            start: s,
            end: e,
        }
    }

    #[test]
    fn held_bytes_are_cut_out_in_order_and_resumes_continue_mid_range() {
        let plan = vec![pr("b", 100, 200), pr("a", 0, 50), pr("b", 300, 400)];
        let mut held = BTreeMap::new();
        held.insert("b".to_string(), RangeSet::from_ranges([(150, 320)]));
        assert_eq!(
            without_held(&plan, &held),
            vec![pr("b", 100, 150), pr("a", 0, 50), pr("b", 320, 400)]
        );
        assert_eq!(
            rest_of(
                &plan,
                Resume {
                    next: 1,
                    offset: 20
                }
            ),
            vec![pr("a", 20, 50), pr("b", 300, 400)]
        );
        assert!(rest_of(&plan, Resume { next: 3, offset: 0 }).is_empty());
        assert_eq!(rest_of(&plan, Resume { next: 0, offset: 0 }), plan);
    }
}
