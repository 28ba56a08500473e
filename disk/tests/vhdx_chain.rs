//! VHDX differencing chains (2 and 3 deep) and 4096-byte logical sectors, built by our test
//! generator (qemu can neither make nor read differencing VHDX, nor make 4K-sector ones).
//! libvhdi is the independent reader; the expected bytes are computed.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small, fixed sizes

mod common;

use common::*;
use godwit_disk::storage::{LocalFs, Locator};
use godwit_disk::testing::vhd_gen::*;
use godwit_disk::vhdx::VhdxLayer;
use godwit_disk::write::OutputFormat;
use godwit_disk::{Disk, ErrorKind, Layer};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 24 * MIB;

fn data_write_guid(path: &str) -> [u8; 16] {
    let o = LocalFs.open(path, None).unwrap();
    VhdxLayer::open(o).unwrap().header().data_write_guid
}

fn sha(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

fn ours(path: &str) -> Vec<u8> {
    let out = format!("{path}.flat");
    ours_to_raw(path, &out).unwrap_or_else(|e| panic!("{path}: {e}"));
    std::fs::read(out).unwrap()
}

fn child_spec<'a>(block_size: u64, ls: u32, linkage: [u8; 16], rel: &'a str) -> VhdxSpec<'a> {
    VhdxSpec {
        size: SIZE,
        block_size,
        logical_sector: ls,
        parent: Some(VhdxParent {
            linkage,
            linkage2: None,
            relative_path: rel,
            absolute_win32_path: "C:\\nowhere\\parent.vhdx",
        }),
        zero_blocks: vec![],
        data_write_guid: None,
    }
}

struct Chain {
    dir: tempfile::TempDir,
    base: String,
    d1: String,
    d2: String,
    expect1: Vec<u8>,
    expect2: Vec<u8>,
}

/// Base made by qemu (512-byte sectors) or by the generator (4096), then two children.
fn build(ls: u32, unit: usize, zero_block: bool) -> Chain {
    let dir = tmp();
    let base = p(dir.path(), "base.vhdx");
    let mut expect1 = if ls == 512 {
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            &base,
            &SIZE.to_string(),
        ]);
        qemu_io(
            "vhdx",
            &base,
            &[
                "write -P 0xaa 0 3M",
                "write -P 0xbb 10M 1M",
                "write -P 0xcc 23M 1M",
            ],
        );
        let raw = p(dir.path(), "base.raw");
        qemu_to_raw("vhdx", &base, &raw);
        std::fs::read(raw).unwrap()
    } else {
        let w: Writes = vec![
            (0, vec![0xaa; 3 << 20]),
            (10 * MIB, vec![0xbb; 1 << 20]),
            (23 * MIB, vec![0xcc; 1 << 20]),
        ];
        let spec = VhdxSpec {
            parent: None,
            ..child_spec(2 * MIB, ls, [0; 16], "")
        };
        vhdx(&base, &spec, &w);
        let mut e = vec![0u8; SIZE as usize];
        apply(&mut e, &w);
        e
    };
    let u = unit as u64;
    let w1: Writes = vec![
        (0, fill(1, unit)),               // first sector(s): PARTIALLY_PRESENT
        (2 * MIB - u, fill(2, 2 * unit)), // straddles a block edge
        (4 * MIB, vec![0x44; 2 << 20]),   // a whole block: FULLY_PRESENT
        (10 * MIB + 4096, fill(4, unit)), // inside parent data
        (SIZE - u, fill(5, unit)),        // the end of the disk
    ];
    apply(&mut expect1, &w1);
    let d1 = p(dir.path(), "d1.avhdx");
    let mut spec = child_spec(2 * MIB, ls, data_write_guid(&base), ".\\base.vhdx");
    // Block 11 (22..24 MiB) is ZERO in d1: zeros, not the parent's 0xcc, except what d1 wrote.
    if zero_block {
        spec.zero_blocks = vec![11];
        expect1[22 * MIB as usize..SIZE as usize].fill(0);
    }
    vhdx(&d1, &spec, &w1);
    let mut expect2 = expect1.clone();
    let w2: Writes = vec![
        (u, fill(6, unit)),           // next to d1's first write
        (2 * MIB - u, fill(7, unit)), // over half of d1's straddling write
        (3 * MIB, fill(8, 4096)),     // over base data
    ];
    apply(&mut expect2, &w2);
    let d2 = p(dir.path(), "d2.avhdx");
    // 1 MiB blocks in the grandchild; the relative path names a missing directory, the bare
    // name resolves next to the child.
    vhdx(
        &d2,
        &child_spec(MIB, ls, data_write_guid(&d1), "..\\gone\\d1.avhdx"),
        &w2,
    );
    Chain {
        dir,
        base,
        d1,
        d2,
        expect1,
        expect2,
    }
}

#[test]
fn chains_with_512_byte_sectors_read_like_libvhdi_and_the_expected_bytes() {
    for unit in [512, 4096] {
        let c = build(512, unit, false);
        let disk = Disk::open(&c.d2).unwrap();
        assert_eq!(disk.layers().len(), 3);
        assert_eq!(disk.top().subformat, "differencing");
        assert!(
            ours(&c.d1) == c.expect1,
            "2-deep, unit {unit}: differs from the expected bytes"
        );
        assert!(
            ours(&c.d2) == c.expect2,
            "3-deep, unit {unit}: differs from the expected bytes"
        );
        assert_eq!(
            libvhdi_read(&c.d1, &[&c.base]),
            (SIZE, sha(&c.expect1)),
            "libvhdi 2-deep, unit {unit}"
        );
        assert_eq!(
            libvhdi_read(&c.d2, &[&c.d1, &c.base]),
            (SIZE, sha(&c.expect2)),
            "libvhdi 3-deep, unit {unit}"
        );
    }
}

#[test]
fn zero_blocks_in_a_child_hide_the_parent() {
    // libvhdi 20210425 reads a ZERO block of a differencing VHDX from the parent; MS-VHDX
    // defines it as zeros, so the computed bytes are the oracle here.
    let c = build(512, 4096, true);
    assert!(ours(&c.d1) == c.expect1, "2-deep chain with a ZERO block");
    assert!(ours(&c.d2) == c.expect2, "3-deep chain with a ZERO block");
}

#[test]
fn chains_with_4096_byte_sectors() {
    let c = build(4096, 4096, false);
    let disk = Disk::open(&c.d2).unwrap();
    assert_eq!(disk.top().logical_sector_size, 4096);
    // qemu reads only 512-byte logical sectors: it refuses the 4K base.
    let (code, _) = run_code("qemu-img", &["info", "-f", "vhdx", &c.base]);
    assert_ne!(code, 0);
    let (size, sum) = libvhdi_read(&c.base, &[]);
    assert_eq!(size, SIZE);
    assert_eq!(sum, sha(&ours(&c.base)));
    assert!(
        ours(&c.d1) == c.expect1,
        "4K 2-deep chain differs from the expected bytes"
    );
    assert!(
        ours(&c.d2) == c.expect2,
        "4K 3-deep chain differs from the expected bytes"
    );
    assert_eq!(libvhdi_read(&c.d1, &[&c.base]), (SIZE, sha(&c.expect1)));
    assert_eq!(
        libvhdi_read(&c.d2, &[&c.d1, &c.base]),
        (SIZE, sha(&c.expect2))
    );
}

#[test]
fn a_flattened_chain_converts_to_images_qemu_checks() {
    let c = build(512, 512, true);
    let expect = p(c.dir.path(), "expect.raw");
    std::fs::write(&expect, &c.expect2).unwrap();
    for (fmt, name) in [
        (OutputFormat::VhdxDynamic, "flat.vhdx"),
        (OutputFormat::VhdxFixed, "fixed.vhdx"),
    ] {
        let out = p(c.dir.path(), name);
        ours_convert(&c.d2, fmt, &out);
        assert!(qemu_img(&["check", "-f", "vhdx", &out]).contains("No errors"));
        let (code, text) = run_code(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vhdx", &expect, &out],
        );
        assert_eq!(code, 0, "{name}: {text}");
    }
}

#[test]
fn stale_parent_and_loops_are_refused() {
    let c = build(512, 4096, true);
    // The parent changes after the child was made: its DataWriteGuid no longer matches.
    qemu_io("vhdx", &c.base, &["write -P 0x01 0 512"]);
    let e = Disk::open(&c.d1).err().expect("stale parent must fail");
    assert_eq!(e.kind(), ErrorKind::Chain, "{e}");
    assert!(e.to_string().contains("d1.avhdx"), "{e}");
    // a -> b -> a through relative paths, with matching identities: only the loop is wrong.
    let a = p(c.dir.path(), "a.avhdx");
    let b = p(c.dir.path(), "b.avhdx");
    let (ga, gb) = ([0xa; 16], [0xb; 16]);
    let mut sa = child_spec(MIB, 512, gb, "b.avhdx");
    sa.data_write_guid = Some(ga);
    vhdx(&a, &sa, &vec![]);
    let mut sb = child_spec(MIB, 512, ga, "a.avhdx");
    sb.data_write_guid = Some(gb);
    vhdx(&b, &sb, &vec![]);
    let e = Disk::open(&a).err().expect("loop must fail");
    assert_eq!(e.kind(), ErrorKind::Chain, "{e}");
    assert!(e.to_string().contains("loops"), "{e}");
}

#[test]
fn qemu_refuses_what_we_read() {
    // The reason for our own generator: qemu cannot open a differencing VHDX at all.
    let c = build(512, 4096, true);
    let (code, _) = run_code("qemu-img", &["info", "-f", "vhdx", &c.d1]);
    assert_ne!(code, 0);
    let l = LocalFs.open(&c.d1, None).unwrap();
    let layer = VhdxLayer::open(l).unwrap();
    assert_eq!(layer.info().parent.as_ref().unwrap().hints[0], "base.vhdx");
}

/// MS-VHDX 2.6.2.6.3: the parent's DataWriteGuid may match `parent_linkage2` instead of
/// `parent_linkage` (Hyper-V writes it while merging a child into its parent). Either one is
/// accepted; neither matching is a stale parent; a linkage2 that is not a GUID is corrupt.
#[test]
fn parent_linkage2_is_an_accepted_alternative() {
    let d = tmp();
    let base = p(d.path(), "base.vhdx");
    let wb: Writes = vec![(0, vec![0x11; 3 << 20]), (20 * MIB, vec![0x22; 1 << 20])];
    let spec = VhdxSpec {
        parent: None,
        ..child_spec(2 * MIB, 512, [0; 16], "")
    };
    let (guid, _) = vhdx(&base, &spec, &wb);
    let wc: Writes = vec![(MIB, fill(3, 8192))];
    let mut expect = vec![0u8; SIZE as usize];
    apply(&mut expect, &wb);
    apply(&mut expect, &wc);
    let text = |g: [u8; 16]| uuid::Uuid::from_bytes_le(g).braced().to_string();
    let child = p(d.path(), "child.avhdx");
    let make = |linkage: [u8; 16], linkage2: Option<String>| {
        let mut s = child_spec(2 * MIB, 512, linkage, "base.vhdx");
        if let Some(pp) = s.parent.as_mut() {
            pp.linkage2 = linkage2;
        }
        vhdx(&child, &s, &wc);
    };
    // Stale parent_linkage, current parent_linkage2: the chain opens and reads right.
    make([0x5a; 16], Some(text(guid)));
    let link = Disk::open(&child).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(link.layers().len(), 2);
    assert_eq!(sha(&ours(&child)), sha(&expect));
    // Current parent_linkage with an unrelated parent_linkage2: still fine.
    make(guid, Some(text([0x5b; 16])));
    assert_eq!(sha(&ours(&child)), sha(&expect));
    // Neither matches: refused as a chain error that names both.
    make([0x5a; 16], Some(text([0x5b; 16])));
    let e = Disk::open(&child).err().expect("neither linkage matches");
    assert_eq!(e.kind(), ErrorKind::Chain, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(" or DataWriteGuid "), "{msg}");
    // Not a GUID: corrupt, naming the key.
    make(guid, Some("not-a-guid".into()));
    let e = Disk::open(&child).err().expect("bad linkage2");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("parent_linkage2"), "{e}");
}
