//! streamOptimized: our writer's output read back by our reader and checked structurally
//! record by record; hand-built VMware-layout streams with PROGRESS markers and padding.
// Test builders work with small, known sizes; truncating casts cannot happen here.
#![allow(clippy::cast_possible_truncation)]

use godwit_disk::layer::{BlockSource, RunState};
use godwit_disk::testing::vmdk_gen::*;
use godwit_disk::write::vmdk_stream::{Options, write_with};
use godwit_disk::write::{allocated_bytes, is_zero};
use godwit_disk::{Disk, ErrorKind};

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The corpus pattern of the conformance recipe, in memory: patterns, a partial grain,
/// explicit zeros, incompressible data, data straddling the 32 MiB grain-table edge, and an
/// odd tail.
fn sample_disk(size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    d[0..1 << 20].fill(0xab);
    d[4 << 20..(4 << 20) + 65536].fill(0xcd);
    d[10_486_272..10_486_272 + 512].fill(0xef);
    let n = noise(1, 2 << 20);
    d[30 << 20..32 << 20].copy_from_slice(&n);
    d[33_488_896..33_488_896 + 65536].fill(0x5a);
    d[33_554_432..33_554_432 + 4096].fill(0x5b);
    let text = b"the quick brown fox jumps over the lazy dog 0123456789\n".repeat(2000);
    d[40 << 20..(40 << 20) + text.len()].copy_from_slice(&text);
    let tail = size - 700;
    d[tail..].fill(0x77);
    d
}

fn write_stream(src: &dyn BlockSource, opts: &Options) -> Vec<u8> {
    let mut out = Vec::new();
    write_with(src, opts, &mut out).unwrap();
    out
}

/// Walk a VMware-layout stream record by record, as a streaming reader (ESXi import) would,
/// and check its structure. Returns (grain LBAs in order, GT count).
fn walk(f: &[u8]) -> (Vec<u64>, usize) {
    assert_eq!(&f[0..4], b"KDMV");
    assert_eq!(u32_at(f, 4), 3, "version");
    assert_eq!(u32_at(f, 8), 0x30001, "flags");
    assert_eq!(u64_at(f, 56), u64::MAX, "GD_AT_END");
    let overhead = u64_at(f, 64) as usize;
    assert_eq!(overhead % 128, 0);
    let mut pos = overhead * SECTOR;
    let mut lbas = Vec::new();
    let mut gts = 0;
    let mut gd_seen = false;
    loop {
        assert!(pos + SECTOR <= f.len(), "ran off the end without EOS");
        let value = u64_at(f, pos);
        let size = u32_at(f, pos + 8);
        if size != 0 {
            assert_eq!(pos % SECTOR, 0);
            assert!(
                lbas.last().is_none_or(|&l| l < value),
                "grains out of LBA order"
            );
            assert_eq!(value % 128, 0);
            assert_eq!(f[pos + 12], 0x78, "zlib header");
            lbas.push(value);
            pos += (12 + size as usize).div_ceil(SECTOR) * SECTOR;
            continue;
        }
        match u32_at(f, pos + 12) {
            0 => {
                assert_eq!(pos + SECTOR, f.len(), "EOS is the last sector");
                break;
            }
            1 => {
                assert_eq!(value, 4);
                gts += 1;
                pos += SECTOR * 5;
            }
            2 => {
                gd_seen = true;
                let gd_at = pos / SECTOR + 1;
                pos += SECTOR * (1 + value as usize);
                // Footer marker, footer with the real GD offset, EOS.
                assert_eq!(u32_at(f, pos + 12), 3);
                assert_eq!(u64_at(f, pos), 1);
                assert_eq!(&f[pos + SECTOR..pos + SECTOR + 4], b"KDMV");
                assert_eq!(u64_at(f, pos + SECTOR + 56), gd_at as u64);
                assert_eq!(&f[pos + SECTOR + 8..pos + SECTOR + 56], &f[8..56]);
                pos += 2 * SECTOR;
            }
            t => panic!("unexpected marker type {t} at {pos}"),
        }
    }
    assert!(gd_seen);
    (lbas, gts)
}

#[test]
fn writer_output_reads_back_identically() {
    // 64 MiB + 4 KiB + 512: a partial last grain and an odd number of sectors.
    let size = (64 << 20) + 4096 + 512;
    let data = sample_disk(size);
    let src = MemDisk(data.clone());
    let f = write_stream(&src, &Options::default());
    let (lbas, gts) = walk(&f);
    // Every grain with any non-zero byte is present, no all-zero grain is.
    let expect: Vec<u64> = data
        .chunks(GRAIN)
        .enumerate()
        .filter(|(_, g)| !is_zero(g))
        .map(|(i, _)| i as u64 * 128)
        .collect();
    assert_eq!(lbas, expect);
    assert_eq!(
        gts, 3,
        "grain tables only for spans with data (0-32, 32-64, 64+ MiB)"
    );
    let disk = open(&[("out.vmdk", f)], "out.vmdk").unwrap();
    assert_eq!(disk.top().subformat, "streamOptimized");
    assert_eq!(disk.virtual_size(), size as u64);
    assert_same(&read_all(&disk), &data, "read back");
    let alloc = allocated_bytes(&disk).unwrap();
    let last_partial = (size % GRAIN) as u64;
    assert_eq!(
        alloc,
        (expect.len() as u64 - 1) * GRAIN as u64 + last_partial
    );
}

#[test]
fn odd_byte_size_is_rounded_up_to_a_sector() {
    let data = noise(3, 100_000);
    let f = write_stream(&MemDisk(data.clone()), &Options::default());
    let disk = open(&[("o.vmdk", f)], "o.vmdk").unwrap();
    assert_eq!(disk.virtual_size(), 100_352);
    let back = read_all(&disk);
    assert_eq!(&back[..100_000], &data[..]);
    assert!(is_zero(&back[100_000..]));
}

#[test]
fn all_zero_and_empty_disks() {
    for size in [0usize, 512, 3 << 20] {
        let f = write_stream(&MemDisk(vec![0u8; size]), &Options::default());
        let (lbas, gts) = walk(&f);
        assert!(lbas.is_empty());
        assert_eq!(gts, 0);
        let disk = open(&[("z.vmdk", f)], "z.vmdk").unwrap();
        assert_eq!(disk.virtual_size(), size as u64);
        assert_eq!(allocated_bytes(&disk).unwrap(), 0);
        assert!(is_zero(&read_all(&disk)));
    }
}

#[test]
fn descriptor_carries_options() {
    let opts = Options {
        adapter_type: "ide".into(),
        hw_version: "14".into(),
        file_name: "appliance-disk1.vmdk".into(),
        cid: Some(0x0badcafe),
        level: 6,
    };
    let f = write_stream(&MemDisk(noise(2, 1 << 20)), &opts);
    let disk = open(&[("x.vmdk", f.clone())], "x.vmdk").unwrap();
    assert_eq!(
        disk.top().identity,
        godwit_disk::layer::Identity::VmdkCid(0x0badcafe)
    );
    let text = String::from_utf8_lossy(&f[512..2048]);
    for want in [
        "createType=\"streamOptimized\"",
        "RW 2048 SPARSE \"appliance-disk1.vmdk\"",
        "ddb.adapterType = \"ide\"",
        "ddb.virtualHWVersion = \"14\"",
        "ddb.geometry.heads = \"16\"",
        "ddb.geometry.sectors = \"63\"",
        "CID=0badcafe",
        "parentCID=ffffffff",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
}

#[test]
fn vmware_stream_with_progress_markers_and_padding() {
    let capacity = 80_000u64; // 39 MiB + 64 KiB: two grain tables, partial last grain
    let last = capacity / 128;
    let grains = vec![
        (0u64, noise(10, GRAIN)),
        (5, vec![0x42; GRAIN]),
        (511, noise(11, GRAIN)),
        (512, vec![0x43; GRAIN]),
        // partial last grain, compressed short as qemu and open-vmdk write it
        (last, vec![0x44; (capacity as usize % 128) * SECTOR]),
    ];
    for pad in [0usize, 127] {
        let f = vmware_stream(capacity, &grains, pad);
        let disk = open(&[("s.vmdk", f)], "s.vmdk").unwrap();
        assert_eq!(disk.virtual_size(), capacity * 512);
        let all = read_all(&disk);
        for (g, bytes) in &grains {
            let at = *g as usize * GRAIN;
            assert_same(&all[at..at + bytes.len()], bytes, &format!("grain {g}"));
        }
        assert!(is_zero(&all[GRAIN..5 * GRAIN]));
        let runs = disk.map(0, disk.virtual_size()).unwrap();
        assert_eq!(runs[0].state, RunState::Data);
        assert_eq!(runs[0].len, GRAIN as u64);
        assert_eq!(runs[1].state, RunState::Zero);
    }
}

#[test]
fn truncated_stream_is_refused_with_file_and_offset() {
    let grains = vec![(0u64, noise(12, GRAIN)), (3, noise(13, GRAIN))];
    let f = vmware_stream(8192, &grains, 0);
    // Only the EOS marker missing: the footer and every grain are there, so it still reads.
    let d = open(
        &[("no_eos.vmdk", f[..f.len() - 512].to_vec())],
        "no_eos.vmdk",
    )
    .unwrap();
    assert_same(&read_all(&d)[..GRAIN], &grains[0].1, "no EOS");
    for cut in [f.len() - 1024, f.len() - 1536, f.len() / 2, 700] {
        let err = open(&[("cut.vmdk", f[..cut].to_vec())], "cut.vmdk")
            .err()
            .expect("truncated stream must not open");
        let msg = err.to_string();
        assert!(msg.starts_with("cut.vmdk: "), "{msg}");
        assert!(msg.contains("byte"), "{msg}");
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{msg}");
    }
}

#[test]
fn corrupt_grain_data_is_reported_at_its_offset() {
    let grains = vec![(0u64, noise(14, GRAIN)), (1, vec![9u8; GRAIN])];
    let mut f = vmware_stream(4096, &grains, 0);
    // Damage the second grain's zlib stream.
    let gt_marker = f
        .chunks(SECTOR)
        .position(|s| u32_at(s, 8) == 0 && u32_at(s, 12) == 1)
        .unwrap();
    let gt = (gt_marker + 1) * SECTOR;
    let g1 = u32_at(&f, gt + 4) as usize * SECTOR;
    f[g1 + 12..g1 + 40].fill(0xff);
    let disk = open(&[("bad.vmdk", f.clone())], "bad.vmdk").unwrap();
    let mut buf = vec![0u8; 2 * GRAIN];
    let e = disk.read_at(0, &mut buf).unwrap_err().to_string();
    assert!(
        e.contains(&format!("bad.vmdk: corrupt vmdk at byte {g1}")),
        "{e}"
    );
    // A grain record whose LBA disagrees with the table.
    let mut f2 = vmware_stream(4096, &grains, 0);
    put_u64(&mut f2, g1, 0);
    let disk = open(&[("lba.vmdk", f2)], "lba.vmdk").unwrap();
    let e = disk
        .read_at(GRAIN as u64, &mut buf[..GRAIN])
        .unwrap_err()
        .to_string();
    assert!(e.contains("LBA"), "{e}");
}

#[test]
fn disk_is_usable_from_many_threads() {
    let data = sample_disk(48 << 20);
    let f = write_stream(&MemDisk(data.clone()), &Options::default());
    let disk: Disk = open(&[("t.vmdk", f)], "t.vmdk").unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (disk, data) = (&disk, &data);
            s.spawn(move || {
                let mut buf = vec![0u8; 300_000];
                for i in 0..40u64 {
                    let off = (i * 1_234_567 + t * 77_777) % (data.len() as u64 - 300_000);
                    disk.read_at(off, &mut buf).unwrap();
                    assert_same(
                        &buf,
                        &data[off as usize..off as usize + 300_000],
                        "thread read",
                    );
                }
            });
        }
    });
}
