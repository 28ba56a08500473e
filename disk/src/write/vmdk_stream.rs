//! streamOptimized VMDK writer, VMware layout — what OVAs, ESXi and `ovftool` expect, and what
//! VMware's own NFC stream writer produces:
//!
//! - header: version 3, flags 0x30001 (newline test, compressed, markers), 64 KiB grains,
//!   512-entry grain tables, `gdOffset = GD_AT_END`, no redundant directory, overhead rounded
//!   to a whole grain; then the descriptor;
//! - grains in ascending LBA order, each a 12-byte (LBA, size) header and a zlib stream padded
//!   to 512 bytes; all-zero grains are not written;
//! - after the grains of each 32 MiB span, a GT marker and its grain table;
//! - a GD marker and the grain directory, a FOOTER marker and the footer (the header again,
//!   with the real `gdOffset`), and an EOS marker.
//!
//! Nothing is ever seeked, so the output can be any `Write` (a pipe, an HTTP upload). Grains
//! are compressed in parallel with libdeflate (rayon) while one thread reads the next batch and
//! another writes the previous one's records; memory stays at a few 8 MiB batches whatever the
//! disk size.

use crate::error::{Error, Result};
use crate::layer::{BlockSource, RunState};
use crate::vmdk::descriptor::{Access, CID_NONE, Descriptor, ExtentLine, ExtentType};
use crate::vmdk::header::{
    COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_NEWLINE_TEST, GD_AT_END, MARKER_EOS,
    MARKER_FOOTER, MARKER_GD, MARKER_GT, Marker, NEWLINE_TEST, SECTOR, SparseHeader, usz,
};
use crate::write::{WriteStats, is_zero};
use libdeflater::{CompressionLvl, Compressor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::io::Write;
use std::sync::mpsc;

/// Grain size in sectors (64 KiB), as every VMware product writes.
pub const GRAIN_SECTORS: u64 = 128;
const GRAIN: usize = 65536;
/// Grain table entries (one table covers 32 MiB).
pub const GTES_PER_GT: u64 = 512;
/// Grains read and compressed per batch (8 MiB).
const BATCH_GRAINS: u64 = 128;
/// Batches in flight between the reader thread and the compressor.
const IN_FLIGHT: usize = 2;

/// Adapter types VMware products accept in `ddb.adapterType`.
pub const ADAPTER_TYPES: &[&str] = &[
    "ide",
    "lsilogic",
    "buslogic",
    "legacyESX",
    "pvscsi",
    "lsisas1068",
];

/// Options for the descriptor and compression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `ddb.adapterType`; geometry follows it (16 heads for IDE, 255 otherwise).
    pub adapter_type: String,
    /// `ddb.virtualHWVersion`.
    pub hw_version: String,
    /// File name written in the descriptor's extent line.
    pub file_name: String,
    /// Content ID; random when `None`.
    pub cid: Option<u32>,
    /// libdeflate level, 1 (fastest) to 12.
    pub level: i32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            adapter_type: "lsilogic".into(),
            hw_version: "4".into(),
            file_name: "disk.vmdk".into(),
            cid: None,
            level: 1,
        }
    }
}

impl Options {
    /// Set one `-o key=value` option.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "adapter_type" => {
                if !ADAPTER_TYPES.contains(&value) {
                    return Err(Error::Usage(format!(
                        "adapter_type {value} is not one of {}",
                        ADAPTER_TYPES.join(", ")
                    )));
                }
                self.adapter_type = value.into();
            }
            "hwversion" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::Usage(format!("hwversion {value} is not a number")));
                }
                self.hw_version = value.into();
            }
            "compression_level" => {
                let l: i32 = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=12).contains(l))
                    .ok_or_else(|| {
                        Error::Usage(format!("compression_level {value} is not 1-12"))
                    })?;
                self.level = l;
            }
            "cid" => {
                let c = u32::from_str_radix(value, 16)
                    .ok()
                    .filter(|&c| c != CID_NONE && c != CID_NONE - 1)
                    .ok_or_else(|| Error::Usage(format!("cid {value} is not a usable hex CID")))?;
                self.cid = Some(c);
            }
            other => {
                return Err(Error::Usage(format!(
                    "vmdk has no option {other} (subformat, adapter_type, hwversion, \
                     compression_level, cid)"
                )));
            }
        }
        Ok(())
    }
}

/// A pseudo-random 64-bit value from the clock, the process id and a counter (SplitMix64).
fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0))
        .unwrap_or(0);
    let mut z = t
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random_cid() -> u32 {
    loop {
        let c = (random_u64() >> 32) as u32;
        // 0xffffffff means "no parent" and 0xfffffffe is read by some tools as "disk of zeros".
        if c < CID_NONE - 1 {
            return c;
        }
    }
}

/// The descriptor this writer embeds.
pub fn descriptor(opts: &Options, capacity: u64, cid: u32) -> Descriptor {
    let (heads, spt, max_cyl) = if opts.adapter_type == "ide" {
        (16u64, 63u64, 16383u64)
    } else {
        (255, 63, 65535)
    };
    let cylinders = capacity.div_ceil(heads * spt).clamp(1, max_cyl);
    let long = random_u64();
    Descriptor {
        version: Some("1".into()),
        encoding: Some("UTF-8".into()),
        cid: Some(cid),
        parent_cid: Some(CID_NONE),
        create_type: Some("streamOptimized".into()),
        parent_file_name_hint: None,
        other: vec![],
        extents: vec![ExtentLine {
            access: Access::Rw,
            sectors: capacity,
            kind: ExtentType::Sparse,
            file: Some(opts.file_name.clone()),
            start: None,
            line_offset: 0,
        }],
        ddb: vec![
            ("ddb.adapterType".into(), opts.adapter_type.clone()),
            ("ddb.geometry.cylinders".into(), cylinders.to_string()),
            ("ddb.geometry.heads".into(), heads.to_string()),
            ("ddb.geometry.sectors".into(), spt.to_string()),
            (
                "ddb.longContentID".into(),
                format!("{:016x}{:08x}{cid:08x}", long, long >> 40),
            ),
            ("ddb.toolsVersion".into(), "2147483647".into()),
            ("ddb.virtualHWVersion".into(), opts.hw_version.clone()),
        ],
        parent_cid_offset: 0,
    }
}

/// Counts what goes out, so grain and table offsets can be computed without seeking.
struct Counted<'a> {
    out: &'a mut dyn Write,
    pos: u64,
}

impl Counted<'_> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out
            .write_all(b)
            .map_err(|e| Error::io("output", "write", e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn sector(&self) -> Result<u32> {
        u32::try_from(self.pos / SECTOR).map_err(|_| {
            Error::Usage(
                "the stream VMDK would exceed 2 TiB, the limit of its 32-bit grain pointers".into(),
            )
        })
    }

    fn marker(&mut self, value: u64, kind: u32) -> Result<()> {
        self.put(&Marker { value, kind }.encode())
    }
}

/// A libdeflate compressor per thread, with its sample and output scratch buffers.
struct GrainCompressor {
    level: i32,
    comp: Compressor,
    sample_out: Vec<u8>,
    out: Vec<u8>,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<GrainCompressor>> = const { RefCell::new(None) };
}

/// Bytes of a grain compressed first to judge whether it is worth compressing at all.
const SAMPLE: usize = 4096;

/// One grain record: LBA, compressed size, zlib stream, zero padding to a sector.
///
/// Incompressible grains (random data, already-compressed files) cost a deflate encoder the
/// most time and gain nothing, so the first 4 KiB are compressed as a sample: when it does not
/// shrink by at least 1/64, the grain is written as stored deflate blocks, which is a copy
/// plus an Adler-32.
fn grain_record(lba: u64, grain: &[u8], level: i32) -> Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|g| g.level != level) {
            let lvl = CompressionLvl::new(level).unwrap_or(CompressionLvl::fastest());
            let mut comp = Compressor::new(lvl);
            *c = Some(GrainCompressor {
                level,
                sample_out: vec![0u8; comp.zlib_compress_bound(SAMPLE)],
                out: Vec::new(),
                comp,
            });
        }
        let g = c.as_mut().unwrap_or_else(|| unreachable!());
        let incompressible = grain.len() >= 2 * SAMPLE
            && g.comp
                .zlib_compress(&grain[..SAMPLE], &mut g.sample_out)
                .is_ok_and(|n| n >= SAMPLE - SAMPLE / 64);
        let mut rec = Vec::with_capacity(12 + grain.len() + grain.len() / 1024 + 512);
        rec.extend_from_slice(&lba.to_le_bytes());
        rec.extend_from_slice(&[0u8; 4]);
        if incompressible {
            stored_zlib(grain, &mut rec);
        } else {
            // Compressed into a scratch buffer that stays allocated (and zeroed once), then
            // copied: no per-grain allocation or memset of the worst-case bound.
            let bound = g.comp.zlib_compress_bound(grain.len());
            if g.out.len() < bound {
                g.out.resize(bound, 0);
            }
            let n = g
                .comp
                .zlib_compress(grain, &mut g.out[..bound])
                .map_err(|e| Error::Usage(format!("deflate failed: {e:?}")))?;
            rec.extend_from_slice(&g.out[..n]);
        }
        let n = rec.len() - 12;
        rec[8..12].copy_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
        let padded = (12 + n).div_ceil(512) * 512;
        rec.resize(padded, 0);
        Ok(rec)
    })
}

/// Append `data` as a zlib stream of stored (uncompressed) deflate blocks.
pub fn stored_zlib(data: &[u8], out: &mut Vec<u8>) {
    // CMF 0x78 (deflate, 32 KiB window), FLG 0x01 (fastest; 0x7801 is a multiple of 31).
    out.extend_from_slice(&[0x78, 0x01]);
    if data.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    let mut blocks = data.chunks(usize::from(u16::MAX)).peekable();
    while let Some(b) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&libdeflater::adler32(data).to_be_bytes());
}

/// Stream `src` as a VMware-layout streamOptimized VMDK, default options.
pub fn write(src: &dyn BlockSource, out: &mut dyn Write) -> Result<WriteStats> {
    write_with(src, &Options::default(), out)
}

/// Stream `src` as a VMware-layout streamOptimized VMDK.
pub fn write_with(
    src: &dyn BlockSource,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<WriteStats> {
    let size = src.virtual_size();
    let capacity = size.div_ceil(SECTOR);
    let grains = capacity.div_ceil(GRAIN_SECTORS);
    let gd_entries = grains.div_ceil(GTES_PER_GT);
    let cid = opts.cid.unwrap_or_else(random_cid);
    let desc = descriptor(opts, capacity, cid)
        .encode()
        .map_err(|e| Error::Usage(format!("streamOptimized VMDK: {}", e.reason)))?;
    let desc_sectors = (desc.len() as u64).div_ceil(SECTOR);
    let overhead = (1 + desc_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
    let mut header = SparseHeader {
        version: 3,
        flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity,
        grain_size: GRAIN_SECTORS,
        descriptor_offset: 1,
        descriptor_size: desc_sectors,
        num_gtes_per_gt: 512,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead,
        unclean_shutdown: 0,
        newline_test: NEWLINE_TEST,
        compress_algorithm: COMPRESS_DEFLATE,
    };
    let mut w = Counted { out, pos: 0 };
    w.put(&header.encode())?;
    let mut d = desc.into_bytes();
    d.resize(usz(desc_sectors * SECTOR), 0);
    w.put(&d)?;
    w.put(&vec![0u8; usz((overhead - 1 - desc_sectors) * SECTOR)])?;

    let mut gd = vec![0u32; usize::try_from(gd_entries).unwrap_or(0)];
    let mut gt = vec![0u32; usz(GTES_PER_GT)];
    let mut gt_index: Option<u64> = None;
    let mut stats = WriteStats::default();
    let level = opts.level;

    // Three stages overlap: a reader thread fills batches, a compressor thread deflates each
    // batch's grains on every core (rayon), and this thread writes the records of the batch
    // before (the output is a plain `Write`, which need not be `Send`).
    let (full_tx, full_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let (rec_tx, rec_rx) = mpsc::sync_channel::<(u64, Vec<Option<Vec<u8>>>)>(IN_FLIGHT);
    let data_bytes = std::thread::scope(|s| -> Result<u64> {
        let reader = s.spawn(move || -> Result<u64> {
            let mut data = 0u64;
            let mut allocated = 0usize;
            let mut g = 0u64;
            while g < grains {
                let n = BATCH_GRAINS.min(grains - g);
                let start = g * GRAIN as u64;
                let end = ((g + n) * GRAIN as u64).min(size);
                g += n;
                let runs = src.map(start, end - start)?;
                if runs.iter().all(|r| r.state != RunState::Data) {
                    continue;
                }
                let mut buf = match free_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if allocated < IN_FLIGHT + 2 => {
                        allocated += 1;
                        Vec::new()
                    }
                    Err(_) => match free_rx.recv() {
                        Ok(b) => b,
                        Err(_) => return Ok(data),
                    },
                };
                // A recycled buffer is not cleared first: data runs are read over it and only
                // the zero runs are filled (a whole-batch memset cost 4 % of the CPU time).
                buf.resize(usz(n) * GRAIN, 0);
                let tail = usz(end - start);
                buf[tail..].fill(0);
                for r in &runs {
                    let a = usz(r.offset - start);
                    let dst = &mut buf[a..a + usz(r.len)];
                    if r.state == RunState::Data {
                        src.read_at(r.offset, dst)?;
                        data += r.len;
                    } else {
                        dst.fill(0);
                    }
                }
                if full_tx.send((start / GRAIN as u64, buf)).is_err() {
                    break;
                }
            }
            Ok(data)
        });
        let compressor = s.spawn(move || -> Result<()> {
            for (first, buf) in full_rx {
                let records: Vec<Option<Vec<u8>>> = buf
                    .par_chunks(GRAIN)
                    .enumerate()
                    .map(|(i, g)| {
                        if is_zero(g) {
                            Ok(None)
                        } else {
                            grain_record((first + i as u64) * GRAIN_SECTORS, g, level).map(Some)
                        }
                    })
                    .collect::<Result<_>>()?;
                let _ = free_tx.send(buf);
                if rec_tx.send((first, records)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let written = (|| -> Result<()> {
            for (first, records) in rec_rx {
                for (i, rec) in records.into_iter().enumerate() {
                    let Some(rec) = rec else { continue };
                    let grain = first + i as u64;
                    let gdi = grain / GTES_PER_GT;
                    if gt_index != Some(gdi) {
                        flush_gt(&mut w, &mut gd, &mut gt, gt_index)?;
                        gt_index = Some(gdi);
                    }
                    gt[(grain % GTES_PER_GT) as usize] = w.sector()?;
                    w.put(&rec)?;
                }
            }
            Ok(())
        })();
        let c = compressor
            .join()
            .unwrap_or_else(|_| Err(Error::Usage("stream compressor thread panicked".into())));
        let r = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Usage("stream reader thread panicked".into())));
        // The reader's error explains a compressor stop, which explains a writer stop.
        let data = r?;
        c?;
        written?;
        Ok(data)
    })?;
    stats.data_bytes = data_bytes;
    flush_gt(&mut w, &mut gd, &mut gt, gt_index)?;

    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    w.marker(gd_sectors, MARKER_GD)?;
    header.gd_offset = u64::from(w.sector()?);
    let mut gdb = Vec::with_capacity(usz(gd_sectors * SECTOR));
    for e in &gd {
        gdb.extend_from_slice(&e.to_le_bytes());
    }
    gdb.resize(usz(gd_sectors * SECTOR), 0);
    w.put(&gdb)?;
    w.marker(1, MARKER_FOOTER)?;
    w.put(&header.encode())?;
    w.marker(0, MARKER_EOS)?;
    w.out.flush().map_err(|e| Error::io("output", "flush", e))?;
    stats.written_bytes = w.pos;
    Ok(stats)
}

/// Write the grain table being filled (if any) behind a GT marker and record it in the GD.
fn flush_gt(w: &mut Counted<'_>, gd: &mut [u32], gt: &mut [u32], index: Option<u64>) -> Result<()> {
    let Some(i) = index else { return Ok(()) };
    let sectors = (gt.len() as u64 * 4).div_ceil(SECTOR);
    w.marker(sectors, MARKER_GT)?;
    gd[usz(i)] = w.sector()?;
    let mut b = Vec::with_capacity(gt.len() * 4);
    for e in gt.iter() {
        b.extend_from_slice(&e.to_le_bytes());
    }
    w.put(&b)?;
    gt.fill(0);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    #[test]
    fn stored_zlib_inflates_back() {
        for len in [0usize, 1, 65535, 65536, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 300) as u8).collect();
            let mut z = Vec::new();
            stored_zlib(&data, &mut z);
            let mut out = vec![0u8; len];
            let n = crate::vmdk::stream::inflate(&z, &mut out).unwrap();
            assert_eq!(n, len);
            assert_eq!(out, data);
        }
    }

    #[test]
    fn incompressible_grains_are_stored_and_others_compressed() {
        let mut x = 88172645463325252u64;
        let random: Vec<u8> = (0..GRAIN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let r = grain_record(128, &random, 1).unwrap();
        assert_eq!(&r[12..14], &[0x78, 0x01]);
        assert_eq!(r[14], 0, "first stored block is not final");
        let text = b"all work and no play ".repeat(GRAIN / 21 + 1);
        let t = grain_record(0, &text[..GRAIN], 1).unwrap();
        assert!(t.len() < 4096);
        for rec in [&r, &t] {
            let size = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
            let mut out = vec![0u8; GRAIN];
            assert_eq!(
                crate::vmdk::stream::inflate(&rec[12..12 + size], &mut out).unwrap(),
                GRAIN
            );
        }
    }
}
