//! Content comparison of two block sources, allocation-aware: ranges that are zero in both are
//! never read, and data is read in large chunks from both sides at once.
//!
//! Semantics follow `qemu-img compare`: when sizes differ, the common part is compared and the
//! larger image's tail must read as zeros; a mismatch is reported at the start of the first
//! differing 512-byte sector.

use crate::error::Result;
use crate::layer::{BlockSource, Run, RunState};
use crate::write::{MAP_WINDOW, is_zero};

/// Read granularity of the comparison.
const CHUNK: usize = 8 << 20;

/// The outcome of [`compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Identical,
    /// Sizes differ (only reported in strict mode).
    SizeMismatch,
    /// Content differs; the offset is the first differing 512-byte sector.
    Mismatch(u64),
}

/// Compare `a` and `b`. In strict mode a size difference is itself a difference.
pub fn compare(a: &dyn BlockSource, b: &dyn BlockSource, strict: bool) -> Result<Comparison> {
    let (sa, sb) = (a.virtual_size(), b.virtual_size());
    if strict && sa != sb {
        return Ok(Comparison::SizeMismatch);
    }
    let common = sa.min(sb);
    if let Some(o) = first_difference(a, b, 0, common)? {
        return Ok(Comparison::Mismatch(o / 512 * 512));
    }
    let longer: &dyn BlockSource = if sa > sb { a } else { b };
    if let Some(o) = first_nonzero(longer, common, sa.max(sb))? {
        return Ok(Comparison::Mismatch(o / 512 * 512));
    }
    Ok(Comparison::Identical)
}

/// Runs of both sources cut at each other's boundaries: `(start, end, state_a, state_b)`.
fn paired(a: &[Run], b: &[Run]) -> Vec<(u64, u64, RunState, RunState)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let s = a[i].offset.max(b[j].offset);
        let e = a[i].end().min(b[j].end());
        if s < e {
            out.push((s, e, a[i].state, b[j].state));
        }
        if a[i].end() <= b[j].end() {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// First byte in `[start, end)` where `a` and `b` differ.
pub fn first_difference(
    a: &dyn BlockSource,
    b: &dyn BlockSource,
    start: u64,
    end: u64,
) -> Result<Option<u64>> {
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    let mut w = start;
    while w < end {
        let n = (end - w).min(MAP_WINDOW);
        let (ra, rb) = (a.map(w, n)?, b.map(w, n)?);
        for (s, e, sa, sb) in paired(&ra, &rb) {
            let (da, db) = (sa == RunState::Data, sb == RunState::Data);
            if !da && !db {
                continue;
            }
            let mut pos = s;
            while pos < e {
                let len = crate::vmdk::header::usz((e - pos).min(CHUNK as u64));
                let (xa, xb) = (&mut ba[..len], &mut bb[..len]);
                let (r1, r2) = rayon::join(
                    || if da { a.read_at(pos, xa) } else { Ok(()) },
                    || if db { b.read_at(pos, xb) } else { Ok(()) },
                );
                r1?;
                r2?;
                let found = match (da, db) {
                    (true, true) => first_mismatch(xa, xb),
                    (true, false) => first_nonzero_byte(xa),
                    _ => first_nonzero_byte(xb),
                };
                if let Some(k) = found {
                    return Ok(Some(pos + k as u64));
                }
                pos += len as u64;
            }
        }
        w += n;
    }
    Ok(None)
}

/// First byte in `[start, end)` of `src` that is not zero.
pub fn first_nonzero(src: &dyn BlockSource, start: u64, end: u64) -> Result<Option<u64>> {
    let mut buf = vec![0u8; CHUNK];
    let mut w = start;
    while w < end {
        let n = (end - w).min(MAP_WINDOW);
        for r in src.map(w, n)? {
            if r.state != RunState::Data {
                continue;
            }
            let mut pos = r.offset;
            while pos < r.end() {
                let len = crate::vmdk::header::usz((r.end() - pos).min(CHUNK as u64));
                src.read_at(pos, &mut buf[..len])?;
                if let Some(k) = first_nonzero_byte(&buf[..len]) {
                    return Ok(Some(pos + k as u64));
                }
                pos += len as u64;
            }
        }
        w += n;
    }
    Ok(None)
}

fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let mut off = 0;
    for (x, y) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        if x != y {
            return x.iter().zip(y).position(|(p, q)| p != q).map(|k| off + k);
        }
        off += x.len();
    }
    None
}

fn first_nonzero_byte(a: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    let mut off = 0;
    for x in a.chunks(BLOCK) {
        if !is_zero(x) {
            return x.iter().position(|&p| p != 0).map(|k| off + k);
        }
        off += x.len();
    }
    None
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::layer::push_run;

    struct Mem(Vec<u8>);
    impl BlockSource for Mem {
        fn virtual_size(&self) -> u64 {
            self.0.len() as u64
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
            // Report 4 KiB blocks of zeros as Zero runs.
            let mut v = Vec::new();
            let mut pos = offset;
            while pos < offset + len {
                let e = ((pos / 4096 + 1) * 4096).min(offset + len);
                let z = is_zero(&self.0[pos as usize..e as usize]);
                push_run(
                    &mut v,
                    Run {
                        offset: pos,
                        len: e - pos,
                        state: if z { RunState::Zero } else { RunState::Data },
                    },
                );
                pos = e;
            }
            Ok(v)
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
    }

    #[test]
    fn compares_like_qemu() {
        let a = Mem(vec![0u8; 1 << 20]);
        let mut b = Mem(vec![0u8; 1 << 20]);
        assert_eq!(compare(&a, &b, false).unwrap(), Comparison::Identical);
        b.0[1000] = 1;
        assert_eq!(compare(&a, &b, false).unwrap(), Comparison::Mismatch(512));
        let mut c = Mem(vec![0u8; 2 << 20]);
        assert_eq!(compare(&a, &c, false).unwrap(), Comparison::Identical);
        assert_eq!(compare(&a, &c, true).unwrap(), Comparison::SizeMismatch);
        c.0[1_500_000] = 9;
        assert_eq!(
            compare(&c, &a, false).unwrap(),
            Comparison::Mismatch(1_499_648)
        );
        let mut d = Mem(vec![7u8; 1 << 20]);
        let e = Mem(vec![7u8; 1 << 20]);
        assert_eq!(compare(&d, &e, false).unwrap(), Comparison::Identical);
        d.0[(1 << 20) - 1] = 8;
        assert_eq!(
            compare(&d, &e, false).unwrap(),
            Comparison::Mismatch((1 << 20) - 512)
        );
    }
}
