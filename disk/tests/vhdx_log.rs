//! Dirty-log VHDX: a log with data and zero descriptors left unreplayed (qemu cannot leave one
//! behind, so our generator writes it). Our read, which replays into memory and never writes
//! the source, must equal `qemu-img check -r all` (on a copy) + `qemu-img convert -O raw`.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, fixed sizes

mod common;

use common::*;
use godwit_disk::Layer;
use godwit_disk::storage::{LocalFs, Locator};
use godwit_disk::testing::vhd_gen::*;
use godwit_disk::vhdx::VhdxLayer;
use godwit_disk::vhdx::log::Write as LogWrite;
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

fn sector(seed: u8) -> Box<[u8; 4096]> {
    let v = fill(seed, 4096);
    let mut b = Box::new([0u8; 4096]);
    b.copy_from_slice(&v);
    b
}

/// A 16 MiB VHDX with 1 MiB blocks and two pending log entries:
/// 1. a new BAT page making block 5 present at the (current) end of the file, two sectors of
///    its data, and LastFileOffset past the end (the file grows);
/// 2. a zero descriptor over part of block 0 and a data sector into block 1.
fn dirty(dir: &std::path::Path) -> (String, Vec<u64>) {
    let img = p(dir, "dirty.vhdx");
    let spec = VhdxSpec {
        size: 16 * MIB,
        block_size: MIB,
        logical_sector: 512,
        parent: None,
        zero_blocks: vec![],
        data_write_guid: None,
    };
    let writes: Writes = vec![
        (0, vec![0x11; MIB as usize]),
        (MIB, vec![0x22; MIB as usize]),
    ];
    let (_, placed) = vhdx(&img, &spec, &writes);
    let f = std::fs::File::open(&img).unwrap();
    let end = f.metadata().unwrap().len();
    let mut bat = Box::new([0u8; 4096]);
    f.read_exact_at(&mut bat[..], GEN_BAT_OFFSET).unwrap();
    bat[40..48].copy_from_slice(&(end | 6).to_le_bytes()); // block 5 = entry 5
    let entries = vec![
        vec![
            LogWrite::Data {
                file_offset: GEN_BAT_OFFSET,
                sector: bat,
            },
            LogWrite::Data {
                file_offset: end,
                sector: sector(0x51),
            },
            LogWrite::Data {
                file_offset: end + 8192,
                sector: sector(0x52),
            },
        ],
        vec![
            LogWrite::Zero {
                file_offset: placed[&0] + 4096,
                length: 8192,
            },
            LogWrite::Data {
                file_offset: placed[&1] + 65536,
                sector: sector(0x66),
            },
        ],
    ];
    // LastFileOffset not 1 MiB-aligned: qemu extends the file only then (rounding up to
    // 1 MiB), and we round up the same way.
    let at = add_log(&img, &entries, end + MIB - 4096);
    (img, at)
}

fn qemu_repaired_raw(img: &str, dir: &std::path::Path) -> String {
    let copy = p(dir, "repair.vhdx");
    std::fs::copy(img, &copy).unwrap();
    // qemu refuses to read a dirty image until the log is replayed.
    let (code, _) = run_code(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            &copy,
            &p(dir, "x.raw"),
        ],
    );
    assert_ne!(code, 0, "qemu read a VHDX with a pending log");
    let out = qemu_img(&["check", "-r", "all", "-f", "vhdx", &copy]);
    assert!(out.contains("repaired"), "{out}");
    let raw = p(dir, "qemu.raw");
    qemu_to_raw("vhdx", &copy, &raw);
    raw
}

#[test]
fn dirty_log_replays_like_qemu_without_touching_the_source() {
    let d = tmp();
    let (img, _) = dirty(d.path());
    let before = sha256_file(&img);
    let layer = VhdxLayer::open(LocalFs.open(&img, None).unwrap()).unwrap();
    assert!(layer.log_replayed());
    drop(layer);
    let ours = p(d.path(), "ours.raw");
    ours_to_raw(&img, &ours).unwrap();
    assert_eq!(sha256_file(&img), before, "reading changed the source file");
    let theirs = qemu_repaired_raw(&img, d.path());
    assert_same_file(&ours, &theirs);
    // And the replay did something: block 5 now holds the logged sectors.
    let bytes = std::fs::read(&ours).unwrap();
    assert_eq!(
        &bytes[5 * MIB as usize..5 * MIB as usize + 4096],
        &fill(0x51, 4096)[..]
    );
    assert_eq!(&bytes[4096..12288], &[0u8; 8192][..]);
}

#[test]
fn a_torn_last_entry_is_ignored_like_qemu() {
    let d = tmp();
    let (img, at) = dirty(d.path());
    // Damage the second entry's data sector: its CRC no longer matches, so only entry 1 applies.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0xFF; 16], at[1] + 4096 + 100).unwrap();
    drop(f);
    let ours = p(d.path(), "ours.raw");
    ours_to_raw(&img, &ours).unwrap();
    let theirs = qemu_repaired_raw(&img, d.path());
    assert_same_file(&ours, &theirs);
    let bytes = std::fs::read(&ours).unwrap();
    assert_eq!(&bytes[4096..4104], &[0x11; 8][..], "entry 2 must not apply");
    assert_eq!(
        &bytes[5 * MIB as usize..5 * MIB as usize + 8],
        &fill(0x51, 8)[..]
    );
}

#[test]
fn log_info_is_visible() {
    let d = tmp();
    let (img, _) = dirty(d.path());
    let layer = VhdxLayer::open(LocalFs.open(&img, None).unwrap()).unwrap();
    assert_ne!(layer.header().log_guid, [0; 16]);
    assert_eq!(layer.info().subformat, "dynamic");
}
