//! VHDX fixed and dynamic images made by qemu-img / qemu-io at test time (every create option
//! qemu offers): our read equals `qemu-img convert -O raw`; images we write pass
//! `qemu-img check`, `qemu-img compare` and libvhdi.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, fixed sizes

mod common;

use common::*;
use godwit_disk::write::OutputFormat;

const MIB: u64 = 1 << 20;

#[test]
fn reads_every_qemu_vhdx_option_like_qemu() {
    let d = tmp();
    let base = pattern_raw(d.path(), "base.raw", 64 * MIB);
    for (name, opts) in [
        ("dyn.vhdx", "subformat=dynamic"),
        ("fixed.vhdx", "subformat=fixed"),
        ("bs1m.vhdx", "block_size=1M"),
        ("bs256m.vhdx", "block_size=256M"),
        ("log1m.vhdx", "log_size=1M"),
        ("log8m.vhdx", "log_size=8M,block_size=2M"),
        ("bsz_off.vhdx", "block_state_zero=off"),
        ("fixed_bs32.vhdx", "subformat=fixed,block_size=32M"),
    ] {
        let img = p(d.path(), name);
        qemu_img(&[
            "convert", "-f", "raw", "-O", "vhdx", "-o", opts, &base, &img,
        ]);
        assert_reads_like_qemu("vhdx", &img, d.path());
    }
}

#[test]
fn block_states_from_qemu_io_writes_zeroes_and_discards() {
    let d = tmp();
    for opts in ["block_state_zero=on", "block_state_zero=off"] {
        let img = p(d.path(), "states.vhdx");
        let _ = std::fs::remove_file(&img);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            &format!("{opts},block_size=1M"),
            &img,
            "64M",
        ]);
        qemu_io(
            "vhdx",
            &img,
            &[
                "write -P 0xab 0 3M",
                "write -z 1M 1M",              // ZERO state over a present block
                "discard 2M 1M",               // UNMAPPED / NOT_PRESENT
                "write -P 0xcd 33553920 1024", // straddles 32 MiB
                "write -P 0xee 67108352 512",  // last sector
            ],
        );
        assert_reads_like_qemu("vhdx", &img, d.path());
    }
}

#[test]
fn odd_sizes_and_data_at_the_edges() {
    let d = tmp();
    for (size, bs) in [
        (100_000_256u64, "8M"),
        (3 * 512, "1M"),
        (33 * MIB + 512, "32M"),
    ] {
        let img = p(d.path(), "odd.vhdx");
        let _ = std::fs::remove_file(&img);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            &format!("block_size={bs}"),
            &img,
            &size.to_string(),
        ]);
        qemu_io(
            "vhdx",
            &img,
            &[
                "write -P 0x42 0 512",
                &format!("write -P 0x43 {} 512", size - 512),
            ],
        );
        assert_reads_like_qemu("vhdx", &img, d.path());
    }
}

#[test]
fn sparse_5g_disk_with_data_on_2g_and_32m_boundaries() {
    let d = tmp();
    let img = p(d.path(), "big.vhdx");
    qemu_img(&["create", "-q", "-f", "vhdx", &img, "5G"]);
    qemu_io(
        "vhdx",
        &img,
        &[
            "write -P 0x77 2147450880 65536", // straddles 2 GiB
            "write -P 0x78 4294967296 1M",
            "write -P 0x79 33554432 512",
            &format!("write -P 0x7a {} 512", 5 * 1024 * MIB - 512),
        ],
    );
    assert_reads_like_qemu("vhdx", &img, d.path());
}

fn check_written(src_raw: &str, img: &str, size: u64) {
    assert_eq!(qemu_virtual_size("vhdx", img), size, "{img}");
    let out = qemu_img(&["check", "-f", "vhdx", img]);
    assert!(out.contains("No errors"), "qemu-img check {img}: {out}");
    let (code, text) = run_code(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "vhdx", src_raw, img],
    );
    assert_eq!(code, 0, "qemu-img compare {src_raw} {img}: {text}");
    let (lsize, sum) = libvhdi_read(img, &[]);
    assert_eq!(lsize, size);
    assert_eq!(sum, sha256_file(src_raw), "libvhdi read of {img}");
}

#[test]
fn written_vhdx_pass_qemu_check_compare_and_libvhdi() {
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
        (OutputFormat::VhdxDynamic, "out_dyn.vhdx"),
        (OutputFormat::VhdxFixed, "out_fixed.vhdx"),
    ] {
        let img = p(d.path(), name);
        // From a qemu-made sparse image, so the source map has holes whatever the raw
        // reader reports for raw files.
        ours_convert(&sparse, fmt, &img);
        check_written(&base, &img, 64 * MIB);
        let back = p(d.path(), "back.raw");
        ours_to_raw(&img, &back).unwrap();
        assert_same_file(&base, &back);
    }
    // Dynamic holds only blocks with data: at least the untouched 40..56 MiB
    // are left out, so it is smaller than the fixed image.
    let dynl = std::fs::metadata(p(d.path(), "out_dyn.vhdx"))
        .unwrap()
        .len();
    let fixl = std::fs::metadata(p(d.path(), "out_fixed.vhdx"))
        .unwrap()
        .len();
    eprintln!("64 MiB pattern as VHDX: dynamic {dynl} bytes, fixed {fixl} bytes");
    assert!(
        dynl + 16 * MIB <= fixl,
        "dynamic {dynl} bytes, fixed {fixl}"
    );
}

#[test]
fn written_vhdx_odd_size_and_sparse_source() {
    let d = tmp();
    let raw = p(d.path(), "odd.raw");
    qemu_img(&["create", "-q", "-f", "raw", &raw, "100000256"]);
    qemu_io(
        "raw",
        &raw,
        &["write -P 0x77 99999744 512", "write -P 0x78 0 4096"],
    );
    let img = p(d.path(), "odd.vhdx");
    ours_convert(&raw, OutputFormat::VhdxDynamic, &img);
    check_written(&raw, &img, 100_000_256);
    // A qemu VHDX (ZERO blocks) converted by us, then compared with the qemu image itself.
    let q = p(d.path(), "q.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", &raw, &q]);
    let ours = p(d.path(), "ours.vhdx");
    ours_convert(&q, OutputFormat::VhdxDynamic, &ours);
    let (code, text) = run_code(
        "qemu-img",
        &["compare", "-f", "vhdx", "-F", "vhdx", &q, &ours],
    );
    assert_eq!(code, 0, "{text}");
}

/// A thick source (every byte allocated, nearly all zeros): written into a file, the dynamic
/// VHDX holds only the two blocks with data, passes qemu-img check and compare, and libvhdi
/// reads it; the stream allocates every block the source maps as data.
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
    let img = p(d.path(), "thin.vhdx");
    ours_convert_file(&raw, OutputFormat::VhdxDynamic, &img);
    check_written(&raw, &img, 64 * MIB);
    let len = std::fs::metadata(&img).unwrap().len();
    // 4 MiB of headers, log, metadata and BAT, plus two 2 MiB blocks.
    assert!(
        len <= 8 * MIB,
        "dynamic VHDX of a thick 64 MiB source is {len} bytes"
    );
    let streamed = p(d.path(), "streamed.vhdx");
    ours_convert(&raw, OutputFormat::VhdxDynamic, &streamed);
    let slen = std::fs::metadata(&streamed).unwrap().len();
    assert!(slen > 64 * MIB, "streamed VHDX is {slen} bytes");
    ours_convert_file(&raw, OutputFormat::VhdxDynamic, &streamed);
    assert_eq!(std::fs::metadata(&streamed).unwrap().len(), len);
    check_written(&raw, &streamed, 64 * MIB);
}
