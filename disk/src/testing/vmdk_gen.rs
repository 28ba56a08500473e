//! Builders for synthetic VMDK images (hosted sparse, VMware-layout streams with progress
//! markers, ESXi COWD and seSparse deltas) and small helpers shared by the `vmdk_*` and
//! `chain_*` tests. Each builder writes the on-disk layout byte by byte from the format
//! description, independently of the reader under test.
// Test builders work with small, known sizes; truncating casts cannot happen here.
#![allow(clippy::cast_possible_truncation)]

use crate::layer::{BlockSource, Run, RunState, push_run};
use crate::storage::MemFs;
use crate::{Disk, FormatHint};

pub const SECTOR: usize = 512;
pub const GRAIN: usize = 65536;

/// A deterministic pseudo-random byte stream (xorshift), incompressible enough for tests.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A raw disk in memory; 4 KiB blocks of zeros are reported as zero runs.
pub struct MemDisk(pub Vec<u8>);

impl BlockSource for MemDisk {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn map(&self, offset: u64, len: u64) -> crate::Result<Vec<Run>> {
        let mut v = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let e = ((pos / 4096 + 1) * 4096).min(offset + len);
            let z = self.0[pos as usize..e as usize].iter().all(|&b| b == 0);
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
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

/// Assert two byte strings are equal, reporting the first difference instead of dumping
/// megabytes.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: lengths {} vs {}, first difference at {:?}",
            got.len(),
            want.len(),
            at
        );
    }
}

/// Open `top` from a set of in-memory files, following its chain.
pub fn open(files: &[(&str, Vec<u8>)], top: &str) -> crate::Result<Disk> {
    let mut fs = MemFs::new();
    for (n, b) in files {
        fs.insert(n, b.clone());
    }
    Disk::open_with(&fs, top, FormatHint::Auto)
}

/// Every byte of a disk, read in uneven pieces to exercise partial grains.
pub fn read_all(d: &dyn BlockSource) -> Vec<u8> {
    let size = d.virtual_size() as usize;
    let mut out = vec![0u8; size];
    let mut pos = 0usize;
    let steps = [4 << 20, 1000, 65536, 3 * 65536 + 512, 512];
    let mut i = 0;
    while pos < size {
        let n = steps[i % steps.len()].min(size - pos);
        d.read_at(pos as u64, &mut out[pos..pos + n]).unwrap();
        pos += n;
        i += 1;
    }
    out
}

pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// A KDMV header sector.
#[allow(clippy::too_many_arguments)]
pub fn kdmv(
    version: u32,
    flags: u32,
    capacity: u64,
    grain_sectors: u64,
    desc_off: u64,
    desc_size: u64,
    gtes: u32,
    gd: u64,
    overhead: u64,
    compress: u16,
) -> Vec<u8> {
    let mut h = vec![0u8; SECTOR];
    h[0..4].copy_from_slice(b"KDMV");
    put_u32(&mut h, 4, version);
    put_u32(&mut h, 8, flags);
    put_u64(&mut h, 12, capacity);
    put_u64(&mut h, 20, grain_sectors);
    put_u64(&mut h, 28, desc_off);
    put_u64(&mut h, 36, desc_size);
    put_u32(&mut h, 44, gtes);
    put_u64(&mut h, 48, 0);
    put_u64(&mut h, 56, gd);
    put_u64(&mut h, 64, overhead);
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&compress.to_le_bytes());
    h
}

pub fn descriptor(
    cid: u32,
    parent_cid: u32,
    create_type: &str,
    hint: Option<&str>,
    extents: &str,
) -> String {
    let mut s = format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID={parent_cid:08x}\ncreateType=\"{create_type}\"\n"
    );
    if let Some(h) = hint {
        s += &format!("parentFileNameHint=\"{h}\"\n");
    }
    s += "\n# Extent description\n";
    s += extents;
    s += "\n#DDB\nddb.adapterType = \"lsilogic\"\n";
    s
}

/// What one grain holds in a synthetic sparse image.
#[derive(Clone)]
pub enum Grain {
    Data(Vec<u8>),
    /// GTE = 1.
    Zeroed,
}

/// A hosted monolithicSparse image (uncompressed), qemu's layout: header, descriptor at
/// sector 1 (20 sectors), GD, all GTs preallocated, grains appended in the given order.
pub fn hosted_sparse(
    capacity: u64,
    grains: &[(u64, Grain)],
    desc: &str,
    zeroed_flag: bool,
) -> Vec<u8> {
    let gs = 128u64;
    let gtes = 512u64;
    let ngrains = capacity.div_ceil(gs);
    let gd_entries = ngrains.div_ceil(gtes);
    let gd_sectors = (gd_entries * 4).div_ceil(512);
    let gd = 21u64;
    let gt0 = gd + gd_sectors;
    let overhead = (gt0 + gd_entries * 4).div_ceil(128) * 128;
    let flags = 1 | if zeroed_flag { 4 } else { 0 };
    let version = if zeroed_flag { 2 } else { 1 };
    let mut f = kdmv(
        version,
        flags,
        capacity,
        gs,
        1,
        20,
        gtes as u32,
        gd,
        overhead,
        0,
    );
    let mut d = desc.as_bytes().to_vec();
    d.resize(20 * SECTOR, 0);
    f.extend_from_slice(&d);
    f.resize(overhead as usize * SECTOR, 0);
    for i in 0..gd_entries {
        put_u32(
            &mut f,
            gd as usize * SECTOR + i as usize * 4,
            (gt0 + i * 4) as u32,
        );
    }
    for (g, content) in grains {
        let gte_at = (gt0 * 512) as usize + (*g as usize / 512) * 2048 + (*g as usize % 512) * 4;
        match content {
            Grain::Zeroed => put_u32(&mut f, gte_at, 1),
            Grain::Data(bytes) => {
                let sector = f.len() / SECTOR;
                put_u32(&mut f, gte_at, sector as u32);
                let mut b = bytes.clone();
                b.resize(GRAIN, 0);
                f.extend_from_slice(&b);
            }
        }
    }
    f
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
    let mut out = vec![0u8; c.zlib_compress_bound(data.len())];
    let n = c.zlib_compress(data, &mut out).unwrap();
    out.truncate(n);
    out
}

fn marker(value: u64, kind: u32) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR];
    put_u64(&mut m, 0, value);
    put_u32(&mut m, 12, kind);
    m
}

/// A VMware-layout streamOptimized VMDK built by hand: GD_AT_END, grains in LBA order, a
/// PROGRESS marker after every grain (as NFC uploads write them, value 0 plus the LBA in the
/// payload), GT markers + tables per 32 MiB, GD marker + GD, footer marker + footer, EOS,
/// then `pad` zero sectors. `grains` maps grain index to its bytes (a partial last grain may
/// be shorter than 64 KiB).
pub fn vmware_stream(capacity: u64, grains: &[(u64, Vec<u8>)], pad: usize) -> Vec<u8> {
    let desc = descriptor(
        0x1234abcd,
        0xffffffff,
        "streamOptimized",
        None,
        &format!("RW {capacity} SPARSE \"s.vmdk\"\n"),
    );
    let desc_sectors = desc.len().div_ceil(SECTOR) as u64;
    let flags = 1 | (1 << 16) | (1 << 17);
    let header = |gd: u64| kdmv(3, flags, capacity, 128, 1, desc_sectors, 512, gd, 128, 1);
    let mut f = header(u64::MAX);
    let mut d = desc.into_bytes();
    d.resize(desc_sectors as usize * SECTOR, 0);
    f.extend_from_slice(&d);
    f.resize(128 * SECTOR, 0);
    let gd_entries = capacity.div_ceil(128).div_ceil(512) as usize;
    let mut gd = vec![0u32; gd_entries];
    let mut gt = vec![0u32; 512];
    let mut cur: Option<usize> = None;
    let flush = |f: &mut Vec<u8>, gd: &mut Vec<u32>, gt: &mut Vec<u32>, cur: Option<usize>| {
        if let Some(i) = cur {
            f.extend_from_slice(&marker(4, 1));
            gd[i] = (f.len() / SECTOR) as u32;
            for e in gt.iter() {
                f.extend_from_slice(&e.to_le_bytes());
            }
            gt.fill(0);
        }
    };
    let mut sorted = grains.to_vec();
    sorted.sort_by_key(|(g, _)| *g);
    for (g, bytes) in &sorted {
        let gdi = *g as usize / 512;
        if cur != Some(gdi) {
            flush(&mut f, &mut gd, &mut gt, cur);
            cur = Some(gdi);
        }
        gt[*g as usize % 512] = (f.len() / SECTOR) as u32;
        let z = zlib(bytes);
        let mut rec = vec![0u8; 12];
        put_u64(&mut rec, 0, g * 128);
        put_u32(&mut rec, 8, z.len() as u32);
        rec.extend_from_slice(&z);
        rec.resize(rec.len().div_ceil(SECTOR) * SECTOR, 0);
        f.extend_from_slice(&rec);
        let mut p = marker(0, 4);
        put_u64(&mut p, 16, g * 128);
        f.extend_from_slice(&p);
    }
    flush(&mut f, &mut gd, &mut gt, cur);
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    f.extend_from_slice(&marker(gd_sectors as u64, 2));
    let gd_at = (f.len() / SECTOR) as u64;
    let mut gdb: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    gdb.resize(gd_sectors * SECTOR, 0);
    f.extend_from_slice(&gdb);
    f.extend_from_slice(&marker(1, 3));
    f.extend_from_slice(&header(gd_at));
    f.extend_from_slice(&marker(0, 0));
    f.resize(f.len() + pad * SECTOR, 0);
    f
}

/// An ESXi vmfsSparse ("COWD") delta as qemu reads it: header, GD at sector 4, 4096-entry
/// GTs, grains of `gs` sectors.
pub fn cowd(capacity: u32, gs: u32, grains: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let gtes = 4096u64;
    let ngrains = u64::from(capacity).div_ceil(u64::from(gs));
    let gd_entries = ngrains.div_ceil(gtes);
    let gd = 4u64;
    let gd_sectors = (gd_entries * 4).div_ceil(512);
    let gt0 = gd + gd_sectors;
    let first_grain = gt0 + gd_entries * 32;
    let mut f = vec![0u8; first_grain as usize * SECTOR];
    f[0..4].copy_from_slice(b"COWD");
    put_u32(&mut f, 4, 1);
    put_u32(&mut f, 8, 3);
    put_u32(&mut f, 12, capacity);
    put_u32(&mut f, 16, gs);
    put_u32(&mut f, 20, gd as u32);
    put_u32(&mut f, 24, gd_entries as u32);
    for i in 0..gd_entries {
        put_u32(&mut f, (gd * 512 + i * 4) as usize, (gt0 + i * 32) as u32);
    }
    let gbytes = gs as usize * SECTOR;
    for (g, bytes) in grains {
        let sector = (f.len() / SECTOR) as u32;
        let at = (gt0 * 512) as usize + (*g as usize / 4096) * 16384 + (*g as usize % 4096) * 4;
        put_u32(&mut f, at, sector);
        let mut b = bytes.clone();
        b.resize(gbytes, 0);
        f.extend_from_slice(&b);
    }
    f.resize(f.len() + 4 * SECTOR, 0);
    let free = (f.len() / SECTOR) as u32;
    put_u32(&mut f, 28, free);
    f
}

/// What one seSparse grain holds.
#[derive(Clone)]
pub enum SeGrain {
    Data(Vec<u8>),
    Zero,
    Unmapped,
}

/// An ESXi seSparse delta as qemu reads it: const header, volatile header, GD, grain tables
/// (64 sectors each) and 4 KiB grains, with the type nibbles and the split grain index.
pub fn sesparse(capacity: u64, grains: &[(u64, SeGrain)]) -> Vec<u8> {
    let gtes = 4096u64;
    let ngrains = capacity.div_ceil(8);
    let gd_entries = ngrains.div_ceil(gtes);
    let gd_sectors = (gd_entries * 8).div_ceil(512).max(1);
    let gd = 2u64;
    let gt_base = gd + gd_sectors;
    let grains_base = gt_base + gd_entries * 64;
    let mut f = vec![0u8; grains_base as usize * SECTOR];
    put_u64(&mut f, 0, 0xcafe_babe);
    put_u64(&mut f, 8, 0x0000_0002_0000_0001);
    put_u64(&mut f, 16, capacity);
    put_u64(&mut f, 24, 8);
    put_u64(&mut f, 32, 64);
    put_u64(&mut f, 80, 1);
    put_u64(&mut f, 88, 1);
    put_u64(&mut f, 128, gd);
    put_u64(&mut f, 136, gd_sectors);
    put_u64(&mut f, 144, gt_base);
    put_u64(&mut f, 152, gd_entries * 64);
    put_u64(&mut f, 192, grains_base);
    put_u64(&mut f, 200, ngrains * 8);
    put_u64(&mut f, 512, 0xcafe_cafe);
    // Tables in reverse order, to show GD entries are indexes, not positions.
    for i in 0..gd_entries {
        let idx = gd_entries - 1 - i;
        put_u64(
            &mut f,
            (gd * 512 + i * 8) as usize,
            0x1000_0000_0000_0000 | idx,
        );
    }
    let mut next_cluster = 0u64;
    for (g, content) in grains {
        let gdi = g / gtes;
        let idx = gd_entries - 1 - gdi;
        let at = ((gt_base + idx * 64) * 512 + (g % gtes) * 8) as usize;
        let v = match content {
            SeGrain::Zero => 0x2000_0000_0000_0000,
            SeGrain::Unmapped => 0x1000_0000_0000_0000,
            SeGrain::Data(bytes) => {
                // After the first grain, jump past cluster 4095 so the split encoding (low 12
                // bits in bits 48..59, the rest in bits 0..47) is exercised.
                let c = next_cluster;
                next_cluster = if c == 0 { 4097 } else { c + 1 };
                let need = ((grains_base + (c + 1) * 8) * 512) as usize;
                if f.len() < need {
                    f.resize(need, 0);
                }
                let off = ((grains_base + c * 8) * 512) as usize;
                let mut b = bytes.clone();
                b.resize(4096, 0);
                f[off..off + 4096].copy_from_slice(&b);
                0x3000_0000_0000_0000 | ((c & 0xfff) << 48) | (c >> 12)
            }
        };
        put_u64(&mut f, at, v);
    }
    f
}
