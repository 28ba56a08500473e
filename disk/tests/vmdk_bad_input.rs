//! Bad VMDK input: every case gives an error that names the file and the byte offset, and
//! random damage never panics.
// Test builders work with small, known sizes; truncating casts cannot happen here.
#![allow(clippy::cast_possible_truncation)]

use godwit_disk::ErrorKind;
use godwit_disk::layer::BlockSource;
use godwit_disk::testing::vmdk_gen::*;
use proptest::prelude::*;

/// A valid 1 MiB monolithicSparse image: GD at sector 21, one GT at sector 22, grains from
/// sector 128.
fn base() -> Vec<u8> {
    let desc = descriptor(
        0x10,
        0xffffffff,
        "monolithicSparse",
        None,
        "RW 2048 SPARSE \"b.vmdk\"\n",
    );
    hosted_sparse(2048, &[(1, Grain::Data(noise(1, GRAIN)))], &desc, false)
}

/// Open (and fully map and read) `bytes` as `name`; the error text.
fn failure(name: &str, bytes: Vec<u8>) -> (ErrorKind, String) {
    let r = open(&[(name, bytes)], name).and_then(|d| {
        d.map(0, d.virtual_size())?;
        let mut buf = vec![0u8; d.virtual_size() as usize];
        d.read_at(0, &mut buf)?;
        Ok(())
    });
    let e = r.expect_err("damaged image must be refused");
    (e.kind(), e.to_string())
}

fn expect(name: &str, bytes: Vec<u8>, offset: u64, words: &str) {
    let (kind, msg) = failure(name, bytes);
    assert!(
        msg.starts_with(&format!("{name}: corrupt vmdk at byte {offset} ")),
        "wanted byte {offset} in: {msg}"
    );
    assert!(msg.contains(words), "wanted {words:?} in: {msg}");
    assert_eq!(kind, ErrorKind::Corrupt);
}

#[test]
fn truncated_header() {
    let b = base();
    expect("t.vmdk", b[..300].to_vec(), 0, "512 bytes");
}

#[test]
fn truncated_body() {
    let b = base();
    // Cut inside the metadata: the header says 128 sectors of overhead.
    expect("t2.vmdk", b[..40 * 512].to_vec(), 64, "truncated");
    // Cut inside the only grain.
    let n = b.len() - 1000;
    expect("t3.vmdk", b[..n].to_vec(), 22 * 512 + 4, "past the end");
}

#[test]
fn directory_past_the_end_or_into_the_header() {
    let mut b = base();
    put_u64(&mut b, 56, 1_000_000);
    expect("gd.vmdk", b, 56, "past the end");
    let mut b = base();
    put_u64(&mut b, 56, 3);
    expect("gd2.vmdk", b, 56, "header or descriptor");
}

#[test]
fn table_pointers_past_the_end_or_into_the_header() {
    let mut b = base();
    put_u32(&mut b, 21 * 512, 999_999);
    expect("gt.vmdk", b, 21 * 512, "past the end");
    let mut b = base();
    put_u32(&mut b, 21 * 512, 5);
    expect("gt2.vmdk", b, 21 * 512, "points into the header");
}

#[test]
fn grain_pointers_past_the_end_or_into_the_header() {
    let mut b = base();
    put_u32(&mut b, 22 * 512 + 4, 999_999);
    expect("g.vmdk", b, 22 * 512 + 4, "past the end");
    let mut b = base();
    put_u32(&mut b, 22 * 512 + 8, 0);
    put_u32(&mut b, 22 * 512 + 8, 7);
    expect("g2.vmdk", b, 22 * 512 + 8, "points into the header");
}

#[test]
fn absurd_sizes() {
    let mut b = base();
    put_u64(&mut b, 12, 1 << 50);
    expect("cap.vmdk", b, 12, "absurd capacity");
    let mut b = base();
    put_u64(&mut b, 20, 3);
    expect("gs.vmdk", b, 20, "absurd grain size");
    let mut b = base();
    put_u64(&mut b, 20, 1 << 20);
    expect("gs2.vmdk", b, 20, "absurd grain size");
    let mut b = base();
    put_u32(&mut b, 44, 0);
    expect("gt.vmdk", b, 44, "absurd grain table");
    // A huge directory (32 TiB in 512-byte grains, one entry per table) is refused before
    // anything is allocated.
    let mut b = base();
    put_u64(&mut b, 12, 1 << 36);
    put_u64(&mut b, 20, 1);
    put_u32(&mut b, 44, 1);
    let (_, msg) = failure("gd.vmdk", b);
    assert!(msg.contains("gd.vmdk: corrupt vmdk at byte"), "{msg}");
    let mut b = base();
    put_u64(&mut b, 36, 1 << 20);
    expect("desc.vmdk", b, 36, "absurd descriptor size");
}

#[test]
fn unsupported_versions_and_flags_are_named() {
    let mut b = base();
    put_u32(&mut b, 4, 4);
    let (kind, msg) = failure("v.vmdk", b);
    assert_eq!(kind, ErrorKind::Unsupported);
    assert!(msg.contains("version 4") && msg.contains("byte 4"), "{msg}");
    let mut b = base();
    put_u32(&mut b, 8, 1 | (1 << 20));
    let (kind, msg) = failure("f.vmdk", b);
    assert_eq!(kind, ErrorKind::Unsupported);
    assert!(msg.contains("incompatible flags"), "{msg}");
    let mut b = base();
    b[76] = b' ';
    expect("nl.vmdk", b, 73, "newline");
}

#[test]
fn descriptor_naming_a_missing_extent() {
    let desc = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"gone-flat.vmdk\" 0\n";
    let at = desc.find("RW ").unwrap();
    let (kind, msg) = failure("d.vmdk", desc.as_bytes().to_vec());
    assert_eq!(kind, ErrorKind::Corrupt);
    assert!(
        msg.starts_with(&format!(
            "d.vmdk: corrupt vmdk at byte {at} (0x{at:x}): extent file \"gone-flat.vmdk\""
        )),
        "{msg}"
    );
}

#[test]
fn extents_that_do_not_add_up() {
    // Flat file shorter than its extent line.
    let desc = "createType=\"monolithicFlat\"\nRW 2048 FLAT \"s-flat.vmdk\" 0\n";
    let r = open(
        &[
            ("s.vmdk", desc.as_bytes().to_vec()),
            ("s-flat.vmdk", vec![0; 4096]),
        ],
        "s.vmdk",
    );
    let msg = r.err().unwrap().to_string();
    assert!(
        msg.starts_with("s-flat.vmdk: corrupt vmdk at byte 4096") && msg.contains("truncated"),
        "{msg}"
    );
    // A sparse extent holding fewer sectors than its line claims.
    let desc = "createType=\"twoGbMaxExtentSparse\"\nRW 4096 SPARSE \"x-s001.vmdk\"\n";
    let r = open(
        &[
            ("x.vmdk", desc.as_bytes().to_vec()),
            ("x-s001.vmdk", base()),
        ],
        "x.vmdk",
    );
    let msg = r.err().unwrap().to_string();
    assert!(
        msg.contains("x-s001.vmdk: corrupt vmdk at byte 12") && msg.contains("do not add up"),
        "{msg}"
    );
    // An embedded descriptor disagreeing with the header.
    let desc = descriptor(
        1,
        0xffffffff,
        "monolithicSparse",
        None,
        "RW 4096 SPARSE \"e.vmdk\"\n",
    );
    let f = hosted_sparse(2048, &[], &desc, false);
    let (_, msg) = failure("e.vmdk", f);
    assert!(msg.contains("add up to 4096 sectors"), "{msg}");
    // A descriptor with no extents, or an absurdly large one.
    let (_, msg) = failure(
        "none.vmdk",
        b"# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n".to_vec(),
    );
    assert!(msg.contains("no extents"), "{msg}");
    let mut huge = b"# Disk DescriptorFile\n".to_vec();
    huge.resize(5 << 20, b' ');
    let (_, msg) = failure("huge.vmdk", huge);
    assert!(msg.contains("absurd"), "{msg}");
}

fn read_everything(d: &godwit_disk::Disk) -> godwit_disk::Result<()> {
    d.map(0, d.virtual_size())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < d.virtual_size() {
        let n = (d.virtual_size() - pos).min(buf.len() as u64) as usize;
        d.read_at(pos, &mut buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    /// Random damage to a hosted sparse image and to a stream: an error or data, never a
    /// panic or a hang.
    #[test]
    fn random_damage_never_panics(
        which in 0u8..2,
        edits in proptest::collection::vec((0usize..200_000, any::<u8>()), 1..12),
        cut in proptest::option::of(0usize..300_000),
    ) {
        let mut f = if which == 0 {
            base()
        } else {
            vmware_stream(4096, &[(0, noise(2, GRAIN)), (9, vec![3; GRAIN])], 3)
        };
        for (pos, v) in edits {
            let p = pos % f.len();
            f[p] = v;
        }
        if let Some(c) = cut {
            f.truncate(c % (f.len() + 1));
        }
        if let Ok(d) = open(&[("fz.vmdk", f)], "fz.vmdk") {
            let _ = read_everything(&d);
        }
    }
}

#[test]
fn absurd_numbers_in_descriptors_and_tables_do_not_overflow() {
    let (_, msg) = failure(
        "x.vmdk",
        b"createType=\"custom\"\nRW 18446744073709551615 ZERO\n".to_vec(),
    );
    assert!(msg.contains("absurd extent size"), "{msg}");
    let (_, msg) = failure(
        "y.vmdk",
        b"createType=\"custom\"\nRW 36028797018963967 ZERO\nRW 36028797018963967 ZERO\n".to_vec(),
    );
    assert!(msg.contains("absurd size"), "{msg}");
    // A seSparse grain directory entry whose table index lands past u64 sectors.
    let mut se = sesparse(8192, &[(0, SeGrain::Data(vec![1; 4096]))]);
    put_u64(&mut se, 144, u64::MAX - 10);
    let desc = descriptor(
        1,
        0xffffffff,
        "seSparse",
        None,
        "RW 8192 SESPARSE \"z-sesparse.vmdk\"\n",
    );
    let r = open(
        &[("z.vmdk", desc.into_bytes()), ("z-sesparse.vmdk", se)],
        "z.vmdk",
    );
    let msg = r.err().expect("refused").to_string();
    assert!(
        msg.contains("z-sesparse.vmdk: corrupt vmdk at byte 1024"),
        "{msg}"
    );
}
