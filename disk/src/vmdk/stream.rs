//! streamOptimized pieces that are pure functions over bytes: grain records, inflating a
//! grain, and finding the footer of a VMware-layout stream (grain directory at the end).
//!
//! A grain record is `u64 lba, u32 size, zlib stream[size]`, padded to 512 bytes (with
//! markers), or `u32 size, zlib stream` (compressed hosted extents without markers, as
//! VMware's own reader takes them). Markers are one sector: `u64 value, u32 0, u32 type`.

use super::header::{MARKER_FOOTER, Marker, SECTOR, SPARSE_MAGIC, u32_at, u64_at};
use libdeflater::{DecompressionError, Decompressor};
use std::cell::RefCell;

/// Largest compressed grain accepted: a stored (incompressible) zlib stream is a little
/// larger than its input, so allow twice the grain plus slack, as qemu does.
pub fn max_compressed(grain_bytes: u64) -> u64 {
    grain_bytes * 2 + 1024
}

/// Longest record (header + data + padding) for a grain size.
pub fn max_record(grain_bytes: u64) -> u64 {
    (12 + max_compressed(grain_bytes)).div_ceil(SECTOR) * SECTOR
}

/// A parsed grain record: the LBA it claims (markers only) and the zlib bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct GrainRecord<'a> {
    pub lba: Option<u64>,
    pub data: &'a [u8],
}

/// Split a grain record at the start of `buf`. Errors name the byte offset within `buf`.
pub fn grain_record(
    buf: &[u8],
    markers: bool,
    grain_bytes: u64,
) -> Result<GrainRecord<'_>, (u64, String)> {
    let (lba, size, hdr) = if markers {
        if buf.len() < 12 {
            return Err((0, "grain record header is truncated".into()));
        }
        (Some(u64_at(buf, 0)), u32_at(buf, 8), 12usize)
    } else {
        if buf.len() < 4 {
            return Err((0, "grain record header is truncated".into()));
        }
        (None, u32_at(buf, 0), 4usize)
    };
    if size == 0 {
        return Err((
            if markers { 8 } else { 0 },
            "expected a grain record, found a marker (size 0)".into(),
        ));
    }
    if u64::from(size) > max_compressed(grain_bytes) {
        return Err((
            if markers { 8 } else { 0 },
            format!("absurd compressed grain size {size} bytes"),
        ));
    }
    let end = hdr + size as usize;
    let data = buf.get(hdr..end).ok_or_else(|| {
        (
            0u64,
            format!("compressed grain of {size} bytes runs past the end of the file"),
        )
    })?;
    Ok(GrainRecord { lba, data })
}

thread_local! {
    static INFLATER: RefCell<Decompressor> = RefCell::new(Decompressor::new());
}

/// Inflate a zlib stream into `out`; returns the decompressed length.
pub fn inflate(data: &[u8], out: &mut [u8]) -> Result<usize, String> {
    INFLATER.with(|d| {
        d.borrow_mut()
            .zlib_decompress(data, out)
            .map_err(|e| match e {
                DecompressionError::BadData => "compressed grain is not a valid zlib stream".into(),
                DecompressionError::InsufficientSpace => {
                    format!("compressed grain inflates to more than {} bytes", out.len())
                }
            })
    })
}

/// Locate the footer of a VMware-layout stream in `tail`, the last bytes of the file (a
/// multiple of 512 long, ending at EOF). The layout ends with a footer marker, the footer (a
/// copy of the header) and an EOS marker; writers may pad with zero sectors after EOS, and an
/// EOS sector is itself all zeros. Returns the offset within `tail` of the footer header.
pub fn find_footer(tail: &[u8]) -> Option<usize> {
    const S: usize = 512;
    let sectors = tail.len() / S;
    let s = S;
    // Skip the trailing all-zero sectors (EOS, padding).
    let mut i = sectors;
    while i > 0 && tail[(i - 1) * s..i * s].iter().all(|&b| b == 0) {
        i -= 1;
    }
    // The last non-zero sector is the footer; the one before it the footer marker.
    if i < 2 {
        return None;
    }
    let footer = (i - 1) * s;
    let marker = Marker::parse(&tail[footer - s..footer])?;
    if u32_at(tail, footer) != SPARSE_MAGIC || marker.kind != MARKER_FOOTER {
        return None;
    }
    Some(footer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::header::{MARKER_EOS, MARKER_GD};

    #[test]
    fn record_parsing() {
        let mut r = vec![0u8; 512];
        r[0..8].copy_from_slice(&128u64.to_le_bytes());
        r[8..12].copy_from_slice(&5u32.to_le_bytes());
        r[12..17].copy_from_slice(b"abcde");
        let g = grain_record(&r, true, 65536).unwrap();
        assert_eq!(g.lba, Some(128));
        assert_eq!(g.data, b"abcde");
        r[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(
            grain_record(&r, true, 65536)
                .unwrap_err()
                .1
                .contains("marker")
        );
        r[8..12].copy_from_slice(&600u32.to_le_bytes());
        assert!(
            grain_record(&r, true, 65536)
                .unwrap_err()
                .1
                .contains("past the end")
        );
        r[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            grain_record(&r, true, 65536)
                .unwrap_err()
                .1
                .contains("absurd")
        );
        assert!(grain_record(&r[..5], true, 65536).is_err());
    }

    #[test]
    fn inflate_round_trip_and_errors() {
        let data = vec![7u8; 65536];
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::fastest());
        let mut z = vec![0u8; c.zlib_compress_bound(data.len())];
        let n = c.zlib_compress(&data, &mut z).unwrap();
        let mut out = vec![0u8; 65536];
        assert_eq!(inflate(&z[..n], &mut out).unwrap(), 65536);
        assert_eq!(out, data);
        let mut small = vec![0u8; 100];
        assert!(inflate(&z[..n], &mut small).is_err());
        assert!(inflate(b"garbage", &mut out).is_err());
    }

    #[test]
    fn footer_is_found_before_eos_and_padding() {
        let mut t = Vec::new();
        t.extend_from_slice(
            &Marker {
                value: 1,
                kind: MARKER_GD,
            }
            .encode(),
        );
        t.extend_from_slice(&[1u8; 512]);
        t.extend_from_slice(
            &Marker {
                value: 1,
                kind: MARKER_FOOTER,
            }
            .encode(),
        );
        let mut f = [0u8; 512];
        f[0..4].copy_from_slice(b"KDMV");
        t.extend_from_slice(&f);
        t.extend_from_slice(
            &Marker {
                value: 0,
                kind: MARKER_EOS,
            }
            .encode(),
        );
        assert_eq!(find_footer(&t), Some(1536));
        t.extend_from_slice(&[0u8; 4096]);
        assert_eq!(find_footer(&t), Some(1536));
        assert_eq!(find_footer(&t[..1536]), None);
        assert_eq!(find_footer(&[0u8; 2048]), None);
    }
}
