//! Bad VHD and VHDX input: truncated files, wrong checksums, table entries past the end or into
//! the headers, absurd sizes, unknown required structures. Each is a clear error naming the file
//! and the byte offset: never a panic.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, fixed sizes

mod common;

use common::*;
use godwit_disk::storage::Locator;
use godwit_disk::testing::vhd_gen::*;
use godwit_disk::vhd::footer::Footer;
use godwit_disk::vhdx::header::{Header, RegionEntry, RegionTable};
use godwit_disk::{Disk, ErrorKind};
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

fn patch(path: &str, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

/// Open and flatten; the error, which must name the file and `offset`.
fn expect_error(path: &str, kind: ErrorKind, offset: Option<u64>) -> String {
    let out = format!("{path}.raw");
    let e = match Disk::open(path) {
        Err(e) => e,
        Ok(_) => ours_to_raw(path, &out)
            .err()
            .unwrap_or_else(|| panic!("{path}: no error")),
    };
    let msg = e.to_string();
    assert_eq!(e.kind(), kind, "{msg}");
    assert!(msg.contains(path), "error does not name the file: {msg}");
    if let Some(o) = offset {
        assert!(
            msg.contains(&format!("byte {o} ")),
            "error does not name byte {o}: {msg}"
        );
    }
    msg
}

fn qemu_vhd(dir: &std::path::Path, name: &str, opts: &str) -> String {
    let f = p(dir, name);
    qemu_img(&["create", "-q", "-f", "vpc", "-o", opts, &f, "16M"]);
    qemu_io("vpc", &f, &["write -P 0x42 0 3M"]);
    f
}

fn refooter(path: &str, at: u64, edit: impl Fn(&mut Footer)) {
    let mut b = [0u8; 512];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    let mut f = Footer::parse(&b).unwrap();
    edit(&mut f);
    patch(path, at, &f.encode());
}

#[test]
fn vhd_truncated_files() {
    let d = tmp();
    let f = qemu_vhd(d.path(), "t.vhd", "force_size=on");
    let len = std::fs::metadata(&f).unwrap().len();
    // Cut inside the second block: the footer copy at 0 is used, and the BAT entry of the cut
    // block points past the end. BAT at 1536: entry 1 at 1540.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 1024 * 1024)
        .unwrap();
    let m = expect_error(&f, ErrorKind::Corrupt, Some(1540));
    assert!(m.contains("BAT entry 1"), "{m}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(100)
        .unwrap();
    // 100 bytes that start like a VHD: too short for a footer.
    let e = godwit_disk::vhd::VhdLayer::open(
        godwit_disk::storage::LocalFs.open(&f, None).unwrap(),
        godwit_disk::probe::Detected::VhdDynamic,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("too short"), "{e}");
}

#[test]
fn vhd_wrong_checksums() {
    let d = tmp();
    let f = qemu_vhd(d.path(), "fixed.vhd", "subformat=fixed,force_size=on");
    let len = std::fs::metadata(&f).unwrap().len();
    patch(&f, len - 512 + 100, &[1]);
    let m = expect_error(&f, ErrorKind::Corrupt, Some(len - 512 + 64));
    assert!(m.contains("checksum"), "{m}");
    // Dynamic: both footers bad -> error; the dynamic header's checksum is checked too.
    let f = qemu_vhd(d.path(), "dyn.vhd", "force_size=on");
    patch(&f, 512 + 600, &[0x80]);
    let m = expect_error(&f, ErrorKind::Corrupt, Some(512 + 36));
    assert!(m.contains("dynamic header checksum"), "{m}");
}

#[test]
fn vhd_damaged_tail_footer_falls_back_to_the_copy() {
    let d = tmp();
    let f = qemu_vhd(d.path(), "dyn.vhd", "force_size=on");
    let len = std::fs::metadata(&f).unwrap().len();
    patch(&f, len - 512 + 100, &[1]);
    let out = p(d.path(), "o.raw");
    ours_to_raw(&f, &out).unwrap();
    let q = p(d.path(), "q.raw");
    qemu_to_raw("vpc", &f, &q);
    assert_same_file(&out, &q);
}

#[test]
fn vhd_bat_entries_past_the_end_or_into_headers() {
    let d = tmp();
    for (value, what) in [(0x00FF_FFFFu32, "past the end"), (1, "into the header")] {
        let f = qemu_vhd(d.path(), "b.vhd", "force_size=on");
        patch(&f, 1536, &value.to_be_bytes());
        let m = expect_error(&f, ErrorKind::Corrupt, Some(1536));
        assert!(m.contains("BAT entry 0"), "{what}: {m}");
    }
}

#[test]
fn vhd_absurd_sizes() {
    let d = tmp();
    let f = qemu_vhd(d.path(), "big.vhd", "subformat=fixed,force_size=on");
    let len = std::fs::metadata(&f).unwrap().len();
    refooter(&f, len - 512, |ft| ft.current_size = 1 << 62);
    let m = expect_error(&f, ErrorKind::Corrupt, Some(len - 512 + 48));
    assert!(m.contains("2040 GiB"), "{m}");
    // Fixed, claiming more than the file holds.
    refooter(&f, len - 512, |ft| ft.current_size = 1 << 40);
    expect_error(&f, ErrorKind::Corrupt, Some(len - 512 + 48));
    // Dynamic whose BAT is too small for its size.
    let f = qemu_vhd(d.path(), "dyn.vhd", "force_size=on");
    let len = std::fs::metadata(&f).unwrap().len();
    for at in [0, len - 512] {
        refooter(&f, at, |ft| ft.current_size = 1 << 40);
    }
    let m = expect_error(&f, ErrorKind::Corrupt, Some(512 + 28));
    assert!(m.contains("BAT has"), "{m}");
}

fn gen_vhdx(dir: &std::path::Path) -> String {
    let f = p(dir, "g.vhdx");
    let spec = VhdxSpec {
        size: 16 * MIB,
        block_size: MIB,
        logical_sector: 512,
        parent: None,
        zero_blocks: vec![],
        data_write_guid: None,
    };
    vhdx(&f, &spec, &vec![(0, vec![0x33; 2 << 20])]);
    f
}

#[test]
fn vhdx_truncated() {
    let d = tmp();
    let f = gen_vhdx(d.path());
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - MIB / 2)
        .unwrap();
    // The second block's BAT entry (entry 1, at 3 MiB + 8) points past the end.
    let m = expect_error(&f, ErrorKind::Corrupt, Some(GEN_BAT_OFFSET + 8));
    assert!(m.contains("BAT entry 1"), "{m}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(2 * MIB + 100)
        .unwrap();
    // Cut inside the metadata: the BAT region (entry 0 of region table 1) is outside the file.
    let m = expect_error(&f, ErrorKind::Corrupt, Some(192 * 1024 + 16));
    assert!(m.contains("BAT region"), "{m}");
}

#[test]
fn vhdx_headers_and_region_tables() {
    let d = tmp();
    let f = gen_vhdx(d.path());
    // One damaged header: the other is used.
    patch(&f, 64 * 1024 + 200, &[1]);
    assert!(Disk::open(&f).is_ok());
    patch(&f, 128 * 1024 + 200, &[1]);
    let m = expect_error(&f, ErrorKind::Corrupt, Some(64 * 1024));
    assert!(m.contains("no valid header"), "{m}");
    // Both region tables damaged.
    let f = gen_vhdx(d.path());
    patch(&f, 192 * 1024 + 100, &[1]);
    patch(&f, 256 * 1024 + 100, &[1]);
    let m = expect_error(&f, ErrorKind::Corrupt, Some(192 * 1024));
    assert!(m.contains("region table"), "{m}");
}

#[test]
fn vhdx_unknown_required_region_and_bad_bat_entries() {
    let d = tmp();
    let f = gen_vhdx(d.path());
    let mut b = vec![0u8; 65536];
    std::fs::File::open(&f)
        .unwrap()
        .read_exact_at(&mut b, 192 * 1024)
        .unwrap();
    let mut t = RegionTable::parse(&b).unwrap();
    t.entries.push(RegionEntry {
        guid: [0x77; 16],
        file_offset: 8 * MIB,
        length: 4096,
        required: true,
    });
    patch(&f, 192 * 1024, &t.encode());
    let m = expect_error(&f, ErrorKind::Unsupported, None);
    assert!(
        m.contains("unknown required region {77777777-7777-7777-7777-777777777777}"),
        "{m}"
    );
    // BAT entry 0 pointing into the headers (offset 0, FULLY_PRESENT).
    let f = gen_vhdx(d.path());
    patch(&f, GEN_BAT_OFFSET, &6u64.to_le_bytes());
    let m = expect_error(&f, ErrorKind::Corrupt, Some(GEN_BAT_OFFSET));
    assert!(m.contains("BAT entry 0"), "{m}");
    // An invalid block state.
    patch(&f, GEN_BAT_OFFSET, &((4 * MIB) | 4).to_le_bytes());
    expect_error(&f, ErrorKind::Corrupt, Some(GEN_BAT_OFFSET));
}

#[test]
fn vhdx_absurd_sizes_and_log_placement() {
    let d = tmp();
    // Virtual size item (second item: 2 MiB + 64 KiB + 4 KiB).
    let f = gen_vhdx(d.path());
    patch(
        &f,
        GEN_META_OFFSET + 64 * 1024 + 4096,
        &(1u64 << 60).to_le_bytes(),
    );
    let m = expect_error(&f, ErrorKind::Corrupt, None);
    assert!(m.contains("virtual size"), "{m}");
    // Block size 3 MiB.
    let f = gen_vhdx(d.path());
    patch(&f, GEN_META_OFFSET + 64 * 1024, &(3u32 << 20).to_le_bytes());
    expect_error(&f, ErrorKind::Corrupt, Some(GEN_META_OFFSET + 64 * 1024));
    // A pending log whose region lies past the end of the file.
    let f = gen_vhdx(d.path());
    for off in [64 * 1024u64, 128 * 1024] {
        let mut b = vec![0u8; 4096];
        std::fs::File::open(&f)
            .unwrap()
            .read_exact_at(&mut b, off)
            .unwrap();
        let mut h = Header::parse(&b).unwrap();
        h.log_guid = [5; 16];
        h.log_offset = 1 << 40;
        patch(&f, off, &h.encode());
    }
    let m = expect_error(&f, ErrorKind::Corrupt, None);
    assert!(m.contains("log"), "{m}");
}

/// Damage structure bytes at pseudo-random places: every outcome is `Ok` or an error, never a
/// panic (the same entry points the fuzz targets call).
#[test]
fn mutated_images_never_panic() {
    let d = tmp();
    let vhd_path = p(d.path(), "m.vhd");
    let parent = VhdParent {
        unique_id: [3; 16],
        locators: vec![(*b"W2ru", ".\\p.vhd"), (*b"MacX", "/x/p.vhd")],
        name: "p.vhd",
        space_in_bytes: false,
    };
    vhd(
        &vhd_path,
        4 * MIB,
        1 << 20,
        Some(&parent),
        &vec![(0, vec![7; 8192])],
    );
    let vhd_bytes = std::fs::read(&vhd_path).unwrap();
    let vhdx_path = gen_vhdx(d.path());
    add_log(
        &vhdx_path,
        &[vec![godwit_disk::vhdx::log::Write::Zero {
            file_offset: 4 * MIB,
            length: 4096,
        }]],
        0,
    );
    let vhdx_bytes = std::fs::read(&vhdx_path).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let vhd_regions: [(usize, usize); 2] = [(0, 4096), (vhd_bytes.len() - 512, vhd_bytes.len())];
    let vhdx_regions: [(usize, usize); 4] = [
        (0, 320 * 1024),
        (MIB as usize, MIB as usize + 16384),
        (
            GEN_META_OFFSET as usize,
            GEN_META_OFFSET as usize + 96 * 1024,
        ),
        (GEN_BAT_OFFSET as usize, GEN_BAT_OFFSET as usize + 4096),
    ];
    for i in 0..400 {
        let (orig, regions, vhdx): (&Vec<u8>, &[(usize, usize)], bool) = if i % 2 == 0 {
            (&vhd_bytes, &vhd_regions, false)
        } else {
            (&vhdx_bytes, &vhdx_regions, true)
        };
        let mut b = orig.clone();
        for _ in 0..1 + next() % 8 {
            let (s, e) = regions[(next() % regions.len() as u64) as usize];
            let at = s + (next() % (e - s) as u64) as usize;
            b[at] = next() as u8;
        }
        if next() % 10 == 0 {
            b.truncate((next() % b.len() as u64) as usize);
        }
        let _ = if vhdx {
            godwit_disk::vhdx::fuzz_open_and_read(&b)
        } else {
            godwit_disk::vhd::fuzz_open_and_read(&b)
        };
    }
}
