//! VMDK delta chains: parent resolution, CID checks, loops, ESXi absolute hints, and COWD /
//! seSparse deltas over a hosted base.
// Test builders work with small, known sizes; truncating casts cannot happen here.
#![allow(clippy::cast_possible_truncation)]

use godwit_disk::layer::{BlockSource, RunState};
use godwit_disk::testing::vmdk_gen::*;
use godwit_disk::{ErrorKind, write::allocated_bytes};

const CAP: u64 = 4096; // 2 MiB, 32 grains

fn sparse(
    name: &str,
    cid: u32,
    parent: Option<(&str, u32)>,
    grains: &[(u64, Grain)],
    zeroed: bool,
) -> (String, Vec<u8>) {
    let desc = descriptor(
        cid,
        parent.map_or(0xffffffff, |p| p.1),
        "monolithicSparse",
        parent.map(|p| p.0),
        &format!("RW {CAP} SPARSE \"{name}\"\n"),
    );
    (name.to_string(), hosted_sparse(CAP, grains, &desc, zeroed))
}

fn files(v: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    v.iter().map(|(n, b)| (n.as_str(), b.clone())).collect()
}

#[test]
fn three_deep_chain_resolves_each_grain_to_the_newest_layer() {
    let base = sparse(
        "base.vmdk",
        0x100,
        None,
        &[
            (0, Grain::Data(vec![1; GRAIN])),
            (1, Grain::Data(vec![1; GRAIN])),
            (2, Grain::Data(vec![1; GRAIN])),
        ],
        false,
    );
    let d1 = sparse(
        "d1.vmdk",
        0x200,
        Some(("base.vmdk", 0x100)),
        &[
            (1, Grain::Data(vec![2; GRAIN])),
            (2, Grain::Zeroed),
            (5, Grain::Data(vec![2; GRAIN])),
        ],
        true,
    );
    let d2 = sparse(
        "d2.vmdk",
        0x300,
        Some(("d1.vmdk", 0x200)),
        &[(5, Grain::Data(vec![3; GRAIN]))],
        false,
    );
    let v = vec![base, d1, d2];
    let d = open(&files(&v), "d2.vmdk").unwrap();
    assert_eq!(d.layers().len(), 3);
    let all = read_all(&d);
    let grain = |i: usize| &all[i * GRAIN..(i + 1) * GRAIN];
    assert!(grain(0).iter().all(|&x| x == 1));
    assert!(grain(1).iter().all(|&x| x == 2));
    assert!(
        grain(2).iter().all(|&x| x == 0),
        "zeroed grain hides the parent"
    );
    assert!(grain(5).iter().all(|&x| x == 3));
    assert!(grain(6).iter().all(|&x| x == 0));
    let resolved = d.resolve(0, 7 * GRAIN as u64).unwrap();
    let layer_of = |off: u64| {
        resolved
            .iter()
            .find(|(r, _)| r.offset <= off && off < r.end())
            .unwrap()
    };
    assert_eq!(layer_of(0).1, 2);
    assert_eq!(layer_of(GRAIN as u64).1, 1);
    assert_eq!(layer_of(2 * GRAIN as u64).0.state, RunState::Zero);
    assert_eq!(layer_of(5 * GRAIN as u64).1, 0);
    assert_eq!(allocated_bytes(&d).unwrap(), 3 * GRAIN as u64);
}

#[test]
fn cid_mismatch_is_refused_naming_both_files() {
    let base = sparse("p.vmdk", 0x1234, None, &[], false);
    let child = sparse("c.vmdk", 0x2, Some(("p.vmdk", 0x9999)), &[], false);
    let e = open(&files(&[base, child]), "c.vmdk").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Chain);
    let msg = e.to_string();
    assert!(msg.starts_with("c.vmdk: disk chain:"), "{msg}");
    assert!(
        msg.contains("p.vmdk has CID 00001234") && msg.contains("expects CID 00009999"),
        "{msg}"
    );
}

#[test]
fn loops_and_missing_parents() {
    let a = sparse("a.vmdk", 1, Some(("b.vmdk", 2)), &[], false);
    let b = sparse("b.vmdk", 2, Some(("a.vmdk", 1)), &[], false);
    let e = open(&files(&[a.clone(), b]), "a.vmdk").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Chain);
    assert!(e.to_string().contains("loops back to a.vmdk"), "{e}");
    let own = sparse("self.vmdk", 1, Some(("./self.vmdk", 1)), &[], false);
    let e = open(&files(&[own]), "self.vmdk").err().unwrap();
    assert!(e.to_string().contains("loops"), "{e}");
    let e = open(&files(&[a]), "a.vmdk").err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Chain);
    assert!(
        e.to_string().contains("parent not found; tried b.vmdk"),
        "{e}"
    );
}

#[test]
fn esxi_absolute_hint_falls_back_to_the_bare_name() {
    let base = sparse(
        "vm.vmdk",
        0x77,
        None,
        &[(0, Grain::Data(vec![7; GRAIN]))],
        false,
    );
    let child = sparse(
        "vm-000001.vmdk",
        0x78,
        Some(("/vmfs/volumes/5f3c-aa/vm/vm.vmdk", 0x77)),
        &[],
        false,
    );
    let d = open(&files(&[base, child]), "vm-000001.vmdk").unwrap();
    assert_eq!(d.layers().len(), 2);
    assert!(read_all(&d)[..GRAIN].iter().all(|&x| x == 7));
}

#[test]
fn cowd_and_sesparse_deltas_over_a_hosted_base() {
    let base_grains: Vec<(u64, Grain)> = (0..32)
        .map(|g| (g, Grain::Data(vec![0x10 + g as u8; GRAIN])))
        .collect();
    let base = sparse("b.vmdk", 0xabc, None, &base_grains, false);
    // COWD with 512-byte grains: sector 3 and sector 4000 replaced.
    let cowd_file = cowd(
        CAP as u32,
        1,
        &[(3, vec![0xee; 512]), (4000, vec![0xdd; 512])],
    );
    let desc = descriptor(
        0xdef,
        0xabc,
        "vmfsSparse",
        Some("b.vmdk"),
        &format!("RW {CAP} VMFSSPARSE \"b-000001-delta.vmdk\"\n"),
    );
    let v = vec![
        base.clone(),
        ("b-000001.vmdk".into(), desc.into_bytes()),
        ("b-000001-delta.vmdk".into(), cowd_file),
    ];
    let d = open(&files(&v), "b-000001.vmdk").unwrap();
    let all = read_all(&d);
    assert!(all[..3 * 512].iter().all(|&x| x == 0x10));
    assert!(all[3 * 512..4 * 512].iter().all(|&x| x == 0xee));
    assert!(all[4 * 512..GRAIN].iter().all(|&x| x == 0x10));
    assert!(all[4000 * 512..4001 * 512].iter().all(|&x| x == 0xdd));
    assert!(all[31 * GRAIN..4000 * 512].iter().all(|&x| x == 0x10 + 31));
    assert!(all[4001 * 512..].iter().all(|&x| x == 0x10 + 31));
    // seSparse: 4 KiB grain 1 replaced, grain 20 zeroed, grain 21 unmapped (zero too).
    let se = sesparse(
        CAP,
        &[
            (1, SeGrain::Data(vec![0xcc; 4096])),
            (20, SeGrain::Zero),
            (21, SeGrain::Unmapped),
        ],
    );
    let desc = descriptor(
        0xdef,
        0xabc,
        "seSparse",
        Some("b.vmdk"),
        &format!("RW {CAP} SESPARSE \"b-000002-sesparse.vmdk\"\n"),
    );
    let v = vec![
        base,
        ("b-000002.vmdk".into(), desc.into_bytes()),
        ("b-000002-sesparse.vmdk".into(), se),
    ];
    let d = open(&files(&v), "b-000002.vmdk").unwrap();
    let all = read_all(&d);
    assert!(all[..4096].iter().all(|&x| x == 0x10));
    assert!(all[4096..8192].iter().all(|&x| x == 0xcc));
    assert!(all[8192..GRAIN].iter().all(|&x| x == 0x10));
    assert!(all[GRAIN..20 * 4096].iter().all(|&x| x == 0x11));
    assert!(all[20 * 4096..22 * 4096].iter().all(|&x| x == 0));
    assert!(all[22 * 4096..2 * GRAIN].iter().all(|&x| x == 0x11));
}

#[test]
fn smaller_parent_reads_as_zeros_past_its_end() {
    let desc = descriptor(
        5,
        0xffffffff,
        "monolithicSparse",
        None,
        "RW 128 SPARSE \"small.vmdk\"\n",
    );
    let small = (
        "small.vmdk".to_string(),
        hosted_sparse(128, &[(0, Grain::Data(vec![4; GRAIN]))], &desc, false),
    );
    let big = sparse("big.vmdk", 6, Some(("small.vmdk", 5)), &[], false);
    let d = open(&files(&[small, big]), "big.vmdk").unwrap();
    assert_eq!(d.virtual_size(), CAP * 512);
    let all = read_all(&d);
    assert!(all[..GRAIN].iter().all(|&x| x == 4));
    assert!(all[GRAIN..].iter().all(|&x| x == 0));
}
