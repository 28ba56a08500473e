//! Hosted sparse, flat, ZERO and ESXi extents, synthesised byte by byte.
// Test builders work with small, known sizes; truncating casts cannot happen here.
#![allow(clippy::cast_possible_truncation)]

use godwit_disk::ErrorKind;
use godwit_disk::layer::{BlockSource, RunState};
use godwit_disk::testing::vmdk_gen::*;
use godwit_disk::write::allocated_bytes;

#[test]
fn monolithic_sparse_reads_grains_and_maps_holes() {
    let a = noise(1, GRAIN);
    let b = vec![0x11u8; GRAIN];
    // Grains stored out of order in the file; 1025 is in the third grain table.
    let grains = [
        (1025u64, Grain::Data(b.clone())),
        (0, Grain::Data(a.clone())),
    ];
    let desc = descriptor(
        0xaa,
        0xffffffff,
        "monolithicSparse",
        None,
        "RW 200000 SPARSE \"m.vmdk\"\n",
    );
    let f = hosted_sparse(200_000, &grains, &desc, false);
    let d = open(&[("m.vmdk", f)], "m.vmdk").unwrap();
    assert_eq!(d.top().subformat, "monolithicSparse");
    assert_eq!(d.virtual_size(), 200_000 * 512);
    let all = read_all(&d);
    assert_eq!(&all[..GRAIN], &a[..]);
    assert_eq!(&all[1025 * GRAIN..1026 * GRAIN], &b[..]);
    assert_eq!(
        all.iter().filter(|&&x| x != 0).count(),
        a.iter().filter(|&&x| x != 0).count() + GRAIN
    );
    assert_eq!(allocated_bytes(&d).unwrap(), 2 * GRAIN as u64);
    let runs = d.map(0, d.virtual_size()).unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(
        (runs[2].offset, runs[2].state),
        (1025 * GRAIN as u64, RunState::Data)
    );
}

#[test]
fn zeroed_grains_need_the_flag() {
    let desc = descriptor(
        1,
        0xffffffff,
        "monolithicSparse",
        None,
        "RW 2048 SPARSE \"z.vmdk\"\n",
    );
    let grains = [(0u64, Grain::Zeroed), (1, Grain::Data(vec![5; GRAIN]))];
    let f = hosted_sparse(2048, &grains, &desc, true);
    let d = open(&[("z.vmdk", f)], "z.vmdk").unwrap();
    let runs = d.map(0, 2 * GRAIN as u64).unwrap();
    assert_eq!(runs[0].state, RunState::Zero);
    assert_eq!(runs[1].state, RunState::Data);
    // Without flag bit 2, GTE 1 is a pointer to sector 1, the descriptor: refused.
    let f = hosted_sparse(2048, &grains, &desc, false);
    let d = open(&[("z1.vmdk", f)], "z1.vmdk").unwrap();
    let e = d.map(0, GRAIN as u64).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("points into the header"), "{e}");
}

#[test]
fn descriptor_with_mixed_extents() {
    // SPARSE (2 MiB) + ZERO (1 MiB) + FLAT at an offset (1 MiB) + VMFS (512 KiB), RDONLY too.
    let s_desc = "";
    let sparse = hosted_sparse(4096, &[(3, Grain::Data(vec![0x33; GRAIN]))], s_desc, false);
    let mut flat = vec![0u8; 4 << 20];
    flat[(1 << 20) + 4096..(1 << 20) + 8192].fill(0x44);
    let vmfs = noise(5, 512 << 10);
    let desc = descriptor(
        7,
        0xffffffff,
        "custom",
        None,
        "RW 4096 SPARSE \"d-s001.vmdk\"\nRDONLY 2048 ZERO\nRW 2048 FLAT \"d-f.vmdk\" 2048\nRW 1024 VMFS \"d-flat.vmdk\"\n",
    );
    let files = [
        ("d.vmdk", desc.into_bytes()),
        ("d-s001.vmdk", sparse),
        ("d-f.vmdk", flat),
        ("d-flat.vmdk", vmfs.clone()),
    ];
    let d = open(&files, "d.vmdk").unwrap();
    assert_eq!(d.virtual_size(), (4096 + 2048 + 2048 + 1024) * 512);
    assert_eq!(d.top().files.len(), 4);
    let all = read_all(&d);
    assert!(all[3 * GRAIN..4 * GRAIN].iter().all(|&x| x == 0x33));
    let flat_at = (4096 + 2048) * 512;
    assert!(
        all[flat_at + 4096..flat_at + 8192]
            .iter()
            .all(|&x| x == 0x44)
    );
    assert_same(&all[(4096 + 2048 + 2048) * 512..], &vmfs, "vmfs extent");
    let runs = d.map(0, d.virtual_size()).unwrap();
    let zero_extent = runs
        .iter()
        .find(|r| r.offset <= 4096 * 512 && r.end() >= 6144 * 512)
        .unwrap();
    assert_eq!(zero_extent.state, RunState::Zero);
}

#[test]
fn esxi_vmfs_descriptor_reads_its_flat_file() {
    let desc = "# Disk DescriptorFile\r\nversion=1\r\nencoding=\"UTF-8\"\r\nCID=fffffffe\r\n\
parentCID=ffffffff\r\nisNativeSnapshot=\"no\"\r\ncreateType=\"vmfs\"\r\n\r\n# Extent description\r\n\
RW 4096 VMFS \"vm-flat.vmdk\"\r\n\r\n# The Disk Data Base\r\n#DDB\r\n\r\nddb.adapterType = \"lsilogic\"\r\n\
ddb.thinProvisioned = \"1\"\r\nddb.uuid = \"60 00 C2 9b\"\r\nddb.virtualHWVersion = \"13\"\r\n";
    let flat = noise(6, 2 << 20);
    let d = open(
        &[
            ("vm.vmdk", desc.as_bytes().to_vec()),
            ("vm-flat.vmdk", flat.clone()),
        ],
        "vm.vmdk",
    )
    .unwrap();
    assert_eq!(d.top().subformat, "vmfs");
    assert_same(&read_all(&d), &flat, "vmfs");
}

#[test]
fn cowd_extent_reads_like_qemu_describes_it() {
    for gs in [1u32, 8] {
        let g = gs as usize * SECTOR;
        // The last grain sits in the last grain table (the fourth for 512-byte grains).
        let last = 16384 / u64::from(gs) - 1;
        let grains = [(0u64, noise(7, g)), (last, vec![0x55; g]), (5, noise(8, g))];
        let f = cowd(16384, gs, &grains);
        let desc = descriptor(
            9,
            0xffffffff,
            "vmfsSparse",
            None,
            "RW 16384 VMFSSPARSE \"c-delta.vmdk\"\n",
        );
        let d = open(
            &[("c.vmdk", desc.into_bytes()), ("c-delta.vmdk", f)],
            "c.vmdk",
        )
        .unwrap();
        let all = read_all(&d);
        for (i, bytes) in &grains {
            let at = *i as usize * g;
            assert_same(&all[at..at + g], bytes, &format!("grain {i} of {gs}"));
        }
        assert_eq!(allocated_bytes(&d).unwrap(), 3 * g as u64);
    }
}

#[test]
fn sesparse_extent_decodes_every_grain_state() {
    let a = noise(9, 4096);
    let b = noise(10, 4096);
    let grains = [
        (0u64, SeGrain::Data(a.clone())),
        (1, SeGrain::Zero),
        (2, SeGrain::Unmapped),
        (5000, SeGrain::Data(b.clone())),
    ];
    let cap = 8192 * 8; // 32 MiB: two grain tables
    let f = sesparse(cap, &grains);
    let desc = descriptor(
        3,
        0xffffffff,
        "seSparse",
        None,
        &format!("RW {cap} SESPARSE \"s-sesparse.vmdk\"\n"),
    );
    let d = open(
        &[("s.vmdk", desc.into_bytes()), ("s-sesparse.vmdk", f)],
        "s.vmdk",
    )
    .unwrap();
    let all = read_all(&d);
    assert_eq!(&all[..4096], &a[..]);
    assert_eq!(&all[5000 * 4096..5001 * 4096], &b[..]);
    let runs = d.map(0, 3 * 4096).unwrap();
    assert_eq!(runs[0].state, RunState::Data);
    assert_eq!(runs[1].state, RunState::Zero);
    assert_eq!(allocated_bytes(&d).unwrap(), 2 * 4096);
}

#[test]
fn refusals_by_name() {
    let rdm = descriptor(
        1,
        0xffffffff,
        "vmfsPassthroughRawDeviceMap",
        None,
        "RW 100 VMFSRDM \"x-rdmp.vmdk\"\n",
    );
    let e = open(&[("r.vmdk", rdm.into_bytes())], "r.vmdk")
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("raw device mapping"), "{e}");
    let rdm = descriptor(1, 0xffffffff, "custom", None, "RW 100 VMFSRAW \"x.vmdk\"\n");
    let e = open(&[("r2.vmdk", rdm.into_bytes())], "r2.vmdk")
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let na = descriptor(
        1,
        0xffffffff,
        "monolithicFlat",
        None,
        "NOACCESS 100 FLAT \"f.vmdk\" 0\n",
    );
    let e = open(
        &[("n.vmdk", na.into_bytes()), ("f.vmdk", vec![0; 51200])],
        "n.vmdk",
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("NOACCESS"), "{e}");
    let e = open(&[("c-delta.vmdk", cowd(100, 1, &[]))], "c-delta.vmdk")
        .err()
        .unwrap();
    assert!(e.to_string().contains("descriptor"), "{e}");
    let odd = descriptor(1, 0xffffffff, "custom", None, "RW 100 WEIRD \"w.vmdk\"\n");
    let e = open(&[("o.vmdk", odd.into_bytes())], "o.vmdk")
        .err()
        .unwrap();
    assert!(e.to_string().contains("WEIRD"), "{e}");
}
