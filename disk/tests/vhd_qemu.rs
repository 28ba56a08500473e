//! VHD fixed and dynamic images made by qemu-img at test time: our read equals
//! `qemu-img convert -O raw`; images we write are read back by qemu-img (exact size,
//! `qemu-img compare`) and by libvhdi.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, fixed sizes

mod common;

use common::*;
use godwit_disk::write::OutputFormat;

const MIB: u64 = 1 << 20;

#[test]
fn reads_every_qemu_vpc_subformat_like_qemu() {
    let d = tmp();
    let base = pattern_raw(d.path(), "base.raw", 64 * MIB);
    let cases: &[(&str, &str)] = &[
        ("dyn.vhd", "subformat=dynamic"),
        ("fixed.vhd", "subformat=fixed"),
        ("dyn_force.vhd", "subformat=dynamic,force_size=on"),
        ("fixed_force.vhd", "subformat=fixed,force_size=on"),
    ];
    for (name, opts) in cases {
        let img = p(d.path(), name);
        qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", opts, &base, &img]);
        assert_reads_like_qemu("vpc", &img, d.path());
    }
}

#[test]
fn odd_sizes_match_qemus_geometry_rules() {
    let d = tmp();
    // Without force_size qemu rounds up to a CHS multiple (creator "qemu" -> size from CHS);
    // with it, the size is exact (creator "qem2" -> current_size).
    for (name, opts, size) in [
        ("odd.vhd", "subformat=dynamic", 100_000_000u64),
        ("odd_fixed.vhd", "subformat=fixed", 100_000_000),
        (
            "odd_force.vhd",
            "subformat=dynamic,force_size=on",
            100_000_000,
        ),
        ("tiny.vhd", "subformat=dynamic", 1_000_000),
        (
            "tiny_force_fixed.vhd",
            "subformat=fixed,force_size=on",
            3 * 512,
        ),
    ] {
        let img = p(d.path(), name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            opts,
            &img,
            &size.to_string(),
        ]);
        qemu_io(
            "vpc",
            &img,
            &[
                "write -P 0x42 0 512",
                &format!("write -P 0x43 {} 512", size / 512 * 512 - 1024),
            ],
        );
        assert_reads_like_qemu("vpc", &img, d.path());
    }
}

#[test]
fn data_on_block_boundaries() {
    let d = tmp();
    let img = p(d.path(), "edges.vhd");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "force_size=on",
        &img,
        "70M",
    ]);
    qemu_io(
        "vpc",
        &img,
        &[
            "write -P 0x01 2096640 1024",  // straddles the 2 MiB block edge
            "write -P 0x02 33553920 1024", // straddles 32 MiB
            "write -P 0x03 73399808 512",  // the last sector
        ],
    );
    assert_reads_like_qemu("vpc", &img, d.path());
}

fn check_written(src_raw: &str, img: &str, expect_size: u64) {
    assert_eq!(qemu_virtual_size("vpc", img), expect_size, "{img}");
    // Same virtual size: compare strictly in content.
    let (code, text) = run_code(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vpc", src_raw, img],
    );
    assert_eq!(code, 0, "qemu-img compare {src_raw} {img}: {text}");
    // libvhdi reads the same bytes.
    let (size, sum) = libvhdi_read(img, &[]);
    assert_eq!(size, expect_size);
    assert_eq!(sum, sha256_file(src_raw), "libvhdi read of {img}");
}

#[test]
fn written_vhds_read_back_exactly_in_qemu_and_libvhdi() {
    let d = tmp();
    let base = pattern_raw(d.path(), "base.raw", 64 * MIB);
    let sparse = p(d.path(), "sparse.vhdx");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        "block_size=1M",
        &base,
        &sparse,
    ]);
    for (fmt, name) in [
        (OutputFormat::VhdDynamic, "out_dyn.vhd"),
        (OutputFormat::VhdFixed, "out_fixed.vhd"),
    ] {
        let img = p(d.path(), name);
        // From a qemu-made sparse image, so the source map has holes whatever the raw
        // reader reports for raw files.
        ours_convert(&sparse, fmt, &img);
        check_written(&base, &img, 64 * MIB);
        // And our own reader agrees.
        let back = p(d.path(), "back.raw");
        ours_to_raw(&img, &back).unwrap();
        assert_same_file(&base, &back);
    }
    // A dynamic image holds only the blocks with data: 64 MiB with 7 touched 2 MiB blocks.
    let len = std::fs::metadata(p(d.path(), "out_dyn.vhd")).unwrap().len();
    assert!(len < 20 * MIB, "dynamic VHD is {len} bytes");
}

#[test]
fn written_vhd_keeps_an_odd_size_exactly() {
    let d = tmp();
    // 100,000,256 bytes: a multiple of 512 that no CHS geometry addresses exactly.
    let raw = p(d.path(), "odd.raw");
    qemu_img(&["create", "-q", "-f", "raw", &raw, "100000256"]);
    qemu_io(
        "raw",
        &raw,
        &["write -P 0x77 99999744 512", "write -P 0x78 0 4096"],
    );
    for (fmt, name) in [
        (OutputFormat::VhdDynamic, "odd_dyn.vhd"),
        (OutputFormat::VhdFixed, "odd_fixed.vhd"),
    ] {
        let img = p(d.path(), name);
        ours_convert(&raw, fmt, &img);
        check_written(&raw, &img, 100_000_256);
    }
}

#[test]
fn size_not_a_multiple_of_512_is_rounded_up() {
    let d = tmp();
    let raw = p(d.path(), "ragged.raw");
    std::fs::write(&raw, vec![0x5cu8; 1000]).unwrap();
    let img = p(d.path(), "ragged.vhd");
    ours_convert(&raw, OutputFormat::VhdDynamic, &img);
    assert_eq!(qemu_virtual_size("vpc", &img), 1024);
    let back = p(d.path(), "back.raw");
    qemu_to_raw("vpc", &img, &back);
    let bytes = std::fs::read(&back).unwrap();
    assert_eq!(&bytes[..1000], &[0x5c; 1000][..]);
    assert_eq!(&bytes[1000..], &[0; 24][..]);
}

/// A thick source (every byte allocated, nearly all zeros): written into a file, the dynamic
/// VHD holds only the two blocks with data; a stream has to allocate every block the source
/// maps as data (its BAT precedes the blocks), which shows the source really is all data.
/// (`qemu-img check` does not check VHD; compare and libvhdi do the checking.)
#[test]
fn written_file_leaves_all_zero_blocks_unallocated() {
    let d = tmp();
    let raw = p(d.path(), "thick.raw");
    let m = MIB as usize;
    thick_raw(
        &raw,
        64 * m,
        &[(5 * m, 4096, 0x42), (40 * m + 512, 512, 0x43)],
    );
    let img = p(d.path(), "thin.vhd");
    ours_convert_file(&raw, OutputFormat::VhdDynamic, &img);
    check_written(&raw, &img, 64 * MIB);
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(
        len < 5 * MIB,
        "dynamic VHD of a thick 64 MiB source is {len} bytes"
    );
    let streamed = p(d.path(), "streamed.vhd");
    ours_convert(&raw, OutputFormat::VhdDynamic, &streamed);
    let slen = std::fs::metadata(&streamed).unwrap().len();
    assert!(slen > 64 * MIB, "streamed VHD is {slen} bytes");
    // Writing over a longer existing file leaves nothing of it behind.
    ours_convert_file(&raw, OutputFormat::VhdDynamic, &streamed);
    assert_eq!(std::fs::metadata(&streamed).unwrap().len(), len);
    check_written(&raw, &streamed, 64 * MIB);
}
