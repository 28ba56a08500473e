//! Incremental cycles with changed block tracking. vcsim has no QueryChangedDiskAreas, so it
//! is answered by a STUB we wrote after the published API (tests/vcsim/main.go): it serves
//! DiskChangeInfo for registered changeIds in 1 MiB windows (so the client must loop over the
//! capacity), a FileFault for unknown changeIds, sets backing.changeId on request, and counts
//! the bytes `/folder` serves. The disks, snapshots, ReconfigVM (CBT on) and `/folder` reads
//! are vcsim's own.

use godwit_disk::{BlockSource, RunState};
use godwit_tests::vcsim;
use godwit_vmware::ledger::Ledger;
use godwit_vmware::replicate::{CycleOptions, run_cycle};
use std::ops::Range;
use std::path::Path;
use vcsim::{Vcsim, qemu_img, qemu_io, qemu_raw, set_vm_disks, vm_by_name};

const VM: &str = "DC0_H0_VM0";
const SPARSE_SIZE: u64 = 3 * 1024 * 1024 + 1024;
const FLAT_SIZE: u64 = 5 * 1024 * 1024 + 65 * 1024;

fn read_all(d: &dyn BlockSource) -> Vec<u8> {
    let size = d.virtual_size();
    let mut out = vec![0u8; usize::try_from(size).unwrap()];
    for run in d.map(0, size).unwrap() {
        if run.state == RunState::Data {
            let (s, e) = (
                usize::try_from(run.offset).unwrap(),
                usize::try_from(run.end()).unwrap(),
            );
            d.read_at(run.offset, &mut out[s..e]).unwrap();
        }
    }
    out
}

fn set_change_ids(v: &Vcsim, vm: &str, keys: &[i32], ids: &[&str]) {
    for (k, id) in keys.iter().zip(ids) {
        v.stub(
            "/stub/changeid",
            Some(&format!(r#"{{"vm":"{vm}","key":{k},"change_id":"{id}"}}"#)),
        );
    }
}

/// One cycle; images are full copies kept between cycles (the "staging" side of this test).
fn cycle(
    v: &Vcsim,
    work: &Path,
    images: &mut Vec<Vec<u8>>,
) -> (
    Vec<Option<Vec<Range<u64>>>>,
    godwit_vmware::replicate::CycleReport,
) {
    let s = v.connect();
    let opts = CycleOptions {
        vm_name: VM.into(),
        ledger: work.join("ledger.json"),
        change_ids: work.join("ids.json"),
        cbt: true,
        ..CycleOptions::default()
    };
    let mut seen = Vec::new();
    let report = run_cycle(
        &s,
        &opts,
        &mut |n, d: &dyn BlockSource, ranges: Option<&[Range<u64>]>| {
            seen.push(ranges.map(<[_]>::to_vec));
            match ranges {
                None => {
                    if images.len() <= n {
                        images.push(Vec::new());
                    }
                    images[n] = read_all(d);
                }
                Some(rs) => {
                    for r in rs {
                        let (a, b) = (usize::try_from(r.start)?, usize::try_from(r.end)?);
                        d.read_at(r.start, &mut images[n][a..b])?;
                    }
                }
            }
            Ok(())
        },
    )
    .unwrap();
    s.logout().unwrap();
    (seen, report)
}

#[test]
fn second_cycle_reads_only_changed_ranges_and_a_rejected_change_id_reads_all() {
    let v = Vcsim::start(false);
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(VM);
    std::fs::create_dir_all(&vmdir).unwrap();
    let a = vmdir.join("sparse.vmdk");
    let b = vmdir.join("flat.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        a.to_str().unwrap(),
        &SPARSE_SIZE.to_string(),
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        b.to_str().unwrap(),
        &FLAT_SIZE.to_string(),
    ]);
    // vcsim 0.24.2 attaches an existing disk only when `<name>-flat.vmdk` exists (vdmNames).
    std::fs::write(vmdir.join("sparse-flat.vmdk"), b"").unwrap();
    qemu_io(&a, "vmdk", &["write -P 0x11 0 1M", "write -P 0x22 2M 512k"]);
    qemu_io(&b, "vmdk", &["write -P 0x33 0 5M"]);
    let s = v.connect();
    set_vm_disks(
        &s,
        VM,
        &[
            (&format!("[{ds}] {VM}/sparse.vmdk"), SPARSE_SIZE),
            (&format!("[{ds}] {VM}/flat.vmdk"), FLAT_SIZE),
        ],
    );
    let vm = vm_by_name(&s, VM);
    assert!(!vm.cbt_enabled);
    let keys: Vec<i32> = vm.disks.iter().map(|d| d.key).collect();
    s.logout().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut images = Vec::new();

    // Cycle 1: CBT gets enabled (vcsim stores the flag), everything is read; changeIds recorded.
    set_change_ids(&v, &vm.moref.value, &keys, &["a-1", "b-1"]);
    let (seen, full) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![None, None]);
    assert!(
        vm_by_name(&v.connect(), VM).cbt_enabled,
        "CBT was switched on"
    );
    let ids = std::fs::read_to_string(work.path().join("ids.json")).unwrap();
    assert!(
        ids.contains("a-1") && ids.contains("b-1") && ids.contains(&format!("/{}/", keys[0])),
        "{ids}"
    );

    // The guest writes: sparse disk 64 KiB at 1 MiB + 4 KiB; flat disk 4 KiB at 100 KiB and
    // 8 KiB across the 4 MiB window boundary.
    qemu_io(&a, "vmdk", &["write -P 0x99 1052672 64k"]);
    qemu_io(
        &b,
        "vmdk",
        &["write -P 0x98 102400 4k", "write -P 0x97 4190208 8k"],
    );
    let want_a: Vec<Range<u64>> = std::iter::once(1_052_672..1_052_672 + 65_536).collect();
    let want_b = vec![102_400..106_496, 4_190_208..4_198_400];
    let areas = |rs: &[Range<u64>]| {
        rs.iter()
            .map(|r| format!("[{},{}]", r.start, r.end - r.start))
            .collect::<Vec<_>>()
            .join(",")
    };
    v.stub(
        "/stub/cbt",
        Some(&format!(
            r#"{{"chunk":1048576,"areas":{{"a-1":[{}],"b-1":[{}]}}}}"#,
            areas(&want_a),
            areas(&want_b)
        )),
    );
    set_change_ids(&v, &vm.moref.value, &keys, &["a-2", "b-2"]);
    v.stub("/stub/reset-stats", Some("{}"));

    // Cycle 2: only the changed ranges are handed over and fetched.
    let (seen, incr) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![Some(want_a.clone()), Some(want_b.clone())]);
    assert!(
        images[0] == qemu_raw(&a, work.path()),
        "sparse disk after the incremental differs"
    );
    assert!(
        images[1] == qemu_raw(&b, work.path()),
        "flat disk after the incremental differs"
    );
    let (served, requests) = v.folder_stats();
    let changed: u64 = want_a.iter().chain(&want_b).map(|r| r.end - r.start).sum();
    eprintln!(
        "CBT: full cycle read {} bytes; incremental changed {changed} bytes, /folder served {served} bytes in {requests} requests",
        full.bytes_read
    );
    // Changed data plus descriptors and the sparse grain tables; far below a full read.
    assert!(served >= changed, "served {served} < changed {changed}");
    assert!(
        served < changed + 128 * 1024,
        "served {served} bytes for {changed} changed"
    );
    assert!(
        served * 20 < full.bytes_read,
        "incremental {served} vs full {}",
        full.bytes_read
    );
    assert_eq!(incr.disks[1].changed_bytes, Some(4096 + 8192));

    // Cycle 3: the stub forgets every changeId (a CBT reset): FileFault → full read.
    v.stub("/stub/cbt", Some(r#"{"chunk":1048576,"areas":{}}"#));
    qemu_io(&b, "vmdk", &["write -P 0x55 0 4k"]);
    let (seen, _) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![None, None]);
    assert!(images[1] == qemu_raw(&b, work.path()));
    let s = v.connect();
    assert!(vm_by_name(&s, VM).snapshots.is_empty());
    assert!(
        Ledger::open(&work.path().join("ledger.json"))
            .unwrap()
            .entries()
            .is_empty()
    );
    s.logout().unwrap();
}

/// CBT can be switched on only while the VM has no snapshots (VMware: the change tracking
/// file is created for the base disk). A snapshot our ledger does not know (here another
/// connector's `godwit-` snapshot, which eligibility lets through) makes the cycle refuse to
/// enable CBT, by name, and it leaves the VM as it was: CBT off, no snapshot added or removed.
#[test]
fn cbt_is_not_enabled_while_a_snapshot_exists() {
    let v = Vcsim::start(false);
    let vm_name = "DC0_H0_VM1";
    let s = v.connect();
    let vm = vm_by_name(&s, vm_name);
    assert!(!vm.cbt_enabled);
    vcsim::run_task(
        &s,
        "CreateSnapshot_Task",
        godwit_vmware::soap::envelope::create_snapshot(
            &vm.moref,
            "godwit-other-connector",
            "",
            false,
            false,
        ),
    );
    s.logout().unwrap();
    let work = tempfile::tempdir().unwrap();
    let opts = CycleOptions {
        vm_name: vm_name.into(),
        ledger: work.path().join("ledger.json"),
        change_ids: work.path().join("ids.json"),
        cbt: true,
        ..CycleOptions::default()
    };
    let s = v.connect();
    let mut handed = 0;
    let err = run_cycle(
        &s,
        &opts,
        &mut |_, _: &dyn BlockSource, _: Option<&[Range<u64>]>| {
            handed += 1;
            Ok(())
        },
    )
    .expect_err("CBT must not be enabled while a snapshot exists");
    let msg = err.to_string();
    assert!(
        msg.contains(vm_name) && msg.contains("CBT") && msg.contains("no snapshots"),
        "{msg}"
    );
    assert_eq!(handed, 0, "no disk was read");
    let after = vm_by_name(&s, vm_name);
    assert!(!after.cbt_enabled, "CBT still off");
    let names: Vec<&str> = after.snapshots.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["godwit-other-connector"], "snapshots untouched");
    let ledger = Ledger::open(&opts.ledger).unwrap();
    assert!(ledger.entries().is_empty(), "nothing left in the ledger");
    s.logout().unwrap();
}

fn cbt_calls(v: &Vcsim, change_id: &str) -> u64 {
    let st: serde_json::Value = serde_json::from_str(&v.stub("/stub/cbt-stats", None)).unwrap();
    st["calls"][change_id].as_u64().unwrap_or(0)
}

/// A changeId is `<UUID>/<sequence>`. When the UUID differs from the recorded one (CBT was
/// reset), the sequence went backwards (the VM was reverted) or the capacity changed, the old
/// changeId is not used at all — not even asked about — and the disk is read whole, reported
/// with the reason. The stub would happily answer for the old changeId (areas registered), as
/// a vCenter can after a reset: a client that asked would copy a corrupt incremental.
#[test]
fn a_new_change_id_uuid_a_sequence_going_back_or_a_new_capacity_force_a_reported_full_read() {
    let v = Vcsim::start(false);
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(VM);
    let d = vcsim::make_disk(&vmdir, "one", true, 2 << 20, &["write -P 0x11 0 1M"]);
    let s = v.connect();
    set_vm_disks(&s, VM, &[(&format!("[{ds}] {VM}/one.vmdk"), 2 << 20)]);
    let vm = vm_by_name(&s, VM);
    let key = vm.disks[0].key;
    s.logout().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut images: Vec<Vec<u8>> = Vec::new();
    let set = |id: &str| set_change_ids(&v, &vm.moref.value, &[key], &[id]);
    let old = "52 aa aa aa aa aa aa aa-aa aa aa aa aa aa aa aa/4";
    // Areas for every old changeId, so that using one would "work".
    v.stub(
        "/stub/cbt",
        Some(&format!(
            r#"{{"chunk":1048576,"areas":{{"{old}":[[0,4096]],"52 bb bb bb bb bb bb bb-bb bb bb bb bb bb bb bb/7":[[0,4096]]}}}}"#
        )),
    );
    set(old);
    let (seen, _) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![None]);

    // 1. CBT reset: a new UUID.
    qemu_io(&d, "vmdk", &["write -P 0x22 1M 4k"]);
    set("52 bb bb bb bb bb bb bb-bb bb bb bb bb bb bb bb/7");
    let (seen, rep) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![None], "read whole");
    let why = rep.disks[0].full_read_reason.clone().unwrap_or_default();
    assert!(why.contains("UUID changed"), "{why}");
    assert_eq!(cbt_calls(&v, old), 0, "the old changeId was not used");
    assert!(images[0] == qemu_raw(&d, work.path()));

    // 2. The sequence went backwards (the VM was reverted to an earlier state).
    set("52 bb bb bb bb bb bb bb-bb bb bb bb bb bb bb bb/3");
    let (seen, rep) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![None]);
    let why = rep.disks[0].full_read_reason.clone().unwrap_or_default();
    assert!(why.contains("went backwards"), "{why}");
    assert_eq!(
        cbt_calls(&v, "52 bb bb bb bb bb bb bb-bb bb bb bb bb bb bb bb/7"),
        0
    );

    // 3. The disk was extended (same device, same UUID, a later sequence): capacity changed.
    // (qemu-img cannot resize a VMDK: the disk is made again, 3 MiB, same data.)
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        d.to_str().unwrap(),
        "3M",
    ]);
    qemu_io(&d, "vmdk", &["write -P 0x11 0 1M", "write -P 0x22 1M 4k"]);
    let s = v.connect();
    let spec = format!(
        r#"<spec><deviceChange><operation>edit</operation><device xsi:type="VirtualDisk"><key>{key}</key><deviceInfo><label>Hard disk 1</label><summary>3,072 KB</summary></deviceInfo><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[{ds}] {VM}/one.vmdk</fileName><diskMode>persistent</diskMode><changeId>52 bb bb bb bb bb bb bb-bb bb bb bb bb bb bb bb/9</changeId></backing><controllerKey>{}</controllerKey><unitNumber>0</unitNumber><capacityInKB>3072</capacityInKB></device></deviceChange></spec>"#,
        vm.disks[0].controller_key.unwrap()
    );
    vcsim::run_task(
        &s,
        "ReconfigVM_Task",
        godwit_vmware::soap::envelope::envelope("ReconfigVM_Task", &vm.moref, &spec),
    );
    let now = vm_by_name(&s, VM);
    assert_eq!(
        (now.disks[0].key, now.disks[0].capacity_bytes),
        (key, 3 << 20),
        "vcsim edited the disk in place"
    );
    s.logout().unwrap();
    set("52 bb bb bb bb bb bb bb-bb bb bb bb bb bb bb bb/9");
    let (seen, rep) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![None]);
    let why = rep.disks[0].full_read_reason.clone().unwrap_or_default();
    assert!(why.contains("capacity changed"), "{why}");
    assert!(images[0] == qemu_raw(&d, work.path()));
}

/// The first full read of a thin disk with CBT on asks QueryChangedDiskAreas("*") and reads
/// only the areas in use: a 64 MiB thin disk with 1 MiB written costs about 1 MiB of /folder
/// reads, not 64 MiB, and the copy is still byte-identical.
#[test]
fn the_first_full_read_of_a_thin_disk_reads_only_allocated_areas() {
    let v = Vcsim::start(false);
    let (ds, dir) = v.datastore();
    let d = vcsim::make_disk(
        &dir.join(VM),
        "thin",
        true,
        64 << 20,
        &["write -P 0x31 0 512k", "write -P 0x32 40M 512k"],
    );
    let s = v.connect();
    set_vm_disks(&s, VM, &[(&format!("[{ds}] {VM}/thin.vmdk"), 64 << 20)]);
    let vm = vm_by_name(&s, VM);
    s.logout().unwrap();
    set_change_ids(&v, &vm.moref.value, &[vm.disks[0].key], &["52 cc/1"]);
    v.stub("/stub/reset-stats", Some(""));
    let work = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    let (seen, rep) = cycle(&v, work.path(), &mut images);
    assert_eq!(seen, vec![None]);
    assert!(images[0] == qemu_raw(&d, work.path()), "thin disk differs");
    let allocated = rep.disks[0].allocated_bytes.expect("allocated areas used");
    assert!(
        (1 << 20..=2 << 20).contains(&allocated),
        "allocated {allocated}"
    );
    let (served, _) = v.folder_stats();
    eprintln!(
        "thin 64 MiB disk, 1 MiB written: /folder served {served} bytes, allocated {allocated}"
    );
    assert!(
        served < 4 << 20,
        "served {served} bytes for a 64 MiB thin disk"
    );
    assert!(cbt_calls(&v, "*") > 0);
}

/// vCenter sometimes reports a changed area whole in each answer it touches, past the range
/// asked: the areas are clamped, the incremental is right, and a warning says so.
#[test]
fn changed_areas_past_the_asked_range_are_clamped_with_a_warning() {
    let v = Vcsim::start(false);
    let (ds, dir) = v.datastore();
    let d = vcsim::make_disk(&dir.join(VM), "o", true, 3 << 20, &["write -P 0x11 0 3M"]);
    let s = v.connect();
    set_vm_disks(&s, VM, &[(&format!("[{ds}] {VM}/o.vmdk"), 3 << 20)]);
    let vm = vm_by_name(&s, VM);
    s.logout().unwrap();
    let key = vm.disks[0].key;
    let work = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    set_change_ids(&v, &vm.moref.value, &[key], &["52 dd/1"]);
    cycle(&v, work.path(), &mut images);
    // 64 KiB across the 1 MiB window boundary, reported unclipped in both answers.
    qemu_io(&d, "vmdk", &["write -P 0x99 1015808 64k"]);
    v.stub(
        "/stub/cbt",
        Some(r#"{"chunk":1048576,"overshoot":true,"areas":{"52 dd/1":[[1015808,65536]]}}"#),
    );
    set_change_ids(&v, &vm.moref.value, &[key], &["52 dd/2"]);
    let (seen, rep) = cycle(&v, work.path(), &mut images);
    let want: Vec<Range<u64>> = std::iter::once(1_015_808..1_081_344).collect();
    assert_eq!(seen, vec![Some(want)]);
    assert!(images[0] == qemu_raw(&d, work.path()));
    let w = rep.disks[0].warnings.join("; ");
    assert!(w.contains("clamped"), "{w}");
}
