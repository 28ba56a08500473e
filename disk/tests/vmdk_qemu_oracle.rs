//! Images qemu cannot create but can read — ESXi COWD (vmfsSparse) and seSparse deltas, and
//! VMware-layout streams with PROGRESS markers — built byte by byte here, then read by both
//! qemu-img and us: the bytes must agree. Needs qemu-img (`make deps`).
// Test builders work with small, known sizes; truncating casts cannot happen here.
#![allow(clippy::cast_possible_truncation)]

use godwit_disk::storage::LocalFs;
use godwit_disk::testing::vmdk_gen::*;
use godwit_disk::{Disk, FormatHint};
use std::path::Path;
use std::process::Command;

fn qemu_raw(dir: &Path, img: &str) -> Vec<u8> {
    let out = dir.join(format!("{img}.qemu.raw"));
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(dir.join(img))
        .arg(&out)
        .output()
        .expect("qemu-img is missing: run `make deps`");
    assert!(
        o.status.success(),
        "qemu-img convert {img}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).expect("read")
}

fn ours(dir: &Path, img: &str) -> Vec<u8> {
    let p = dir.join(img);
    let d = Disk::open_with(&LocalFs, &p.to_string_lossy(), FormatHint::Auto).expect("open");
    read_all(&d)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write");
}

fn base(dir: &Path, cap: u64) {
    let grains: Vec<(u64, Grain)> = (0..cap / 128)
        .filter(|g| g % 3 != 2)
        .map(|g| (g, Grain::Data(noise(g + 100, GRAIN))))
        .collect();
    let desc = descriptor(
        0x5eed,
        0xffffffff,
        "monolithicSparse",
        None,
        &format!("RW {cap} SPARSE \"base.vmdk\"\n"),
    );
    write(dir, "base.vmdk", &hosted_sparse(cap, &grains, &desc, false));
}

#[test]
fn cowd_delta_reads_like_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cap = 16384u64; // 8 MiB: two COWD grain tables at 512-byte grains
    base(d, cap);
    let grains: Vec<(u64, Vec<u8>)> = [0u64, 1, 3, 4095, 4096, 9000, cap - 1]
        .iter()
        .map(|&s| (s, noise(s + 7, 512)))
        .collect();
    write(d, "vm-000001-delta.vmdk", &cowd(cap as u32, 1, &grains));
    let desc = descriptor(
        0xd1,
        0x5eed,
        "vmfsSparse",
        Some("base.vmdk"),
        &format!("RW {cap} VMFSSPARSE \"vm-000001-delta.vmdk\"\n"),
    );
    write(d, "vm-000001.vmdk", desc.as_bytes());
    assert_same(
        &ours(d, "vm-000001.vmdk"),
        &qemu_raw(d, "vm-000001.vmdk"),
        "COWD",
    );
}

#[test]
fn sesparse_delta_reads_like_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cap = 65536u64; // 32 MiB: two seSparse grain tables
    base(d, cap);
    let grains = vec![
        (0u64, SeGrain::Data(noise(1, 4096))),
        (7, SeGrain::Zero),
        (8, SeGrain::Unmapped),
        (4095, SeGrain::Data(noise(2, 4096))),
        (4096, SeGrain::Data(noise(3, 4096))),
        (8191, SeGrain::Zero),
    ];
    write(d, "vm-000002-sesparse.vmdk", &sesparse(cap, &grains));
    let desc = descriptor(
        0xd2,
        0x5eed,
        "seSparse",
        Some("base.vmdk"),
        &format!("RW {cap} SESPARSE \"vm-000002-sesparse.vmdk\"\n"),
    );
    write(d, "vm-000002.vmdk", desc.as_bytes());
    assert_same(
        &ours(d, "vm-000002.vmdk"),
        &qemu_raw(d, "vm-000002.vmdk"),
        "seSparse",
    );
}

#[test]
fn vmware_layout_stream_reads_like_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let capacity = 140_000u64;
    let last = capacity / 128;
    let grains = vec![
        (0u64, noise(20, GRAIN)),
        (2, vec![0x42; GRAIN]),
        (511, noise(21, GRAIN)),
        (512, noise(22, GRAIN)),
        (1030, vec![0x61; GRAIN]),
        (last, vec![0x44; (capacity as usize % 128) * SECTOR]),
    ];
    write(d, "vmw.vmdk", &vmware_stream(capacity, &grains, 0));
    assert_same(
        &ours(d, "vmw.vmdk"),
        &qemu_raw(d, "vmw.vmdk"),
        "VMware stream",
    );
}

#[test]
fn our_stream_writer_reads_like_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut data = vec![0u8; (40 << 20) + 1536];
    data[..3 << 20].copy_from_slice(&noise(30, 3 << 20));
    data[(32 << 20) - 100..(32 << 20) + 100].fill(0x17);
    let n = data.len();
    data[n - 10..].fill(0x18);
    let mut out = Vec::new();
    godwit_disk::write::vmdk_stream::write(&MemDisk(data.clone()), &mut out).expect("write");
    write(d, "ours.vmdk", &out);
    assert_same(&qemu_raw(d, "ours.vmdk"), &data, "our stream via qemu");
    let o = Command::new("qemu-img")
        .args(["check", "-f", "vmdk"])
        .arg(d.join("ours.vmdk"))
        .output()
        .expect("qemu-img");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
