//! The vSphere source end to end against vcsim over TLS: two qemu-img-made disks (one
//! monolithicSparse, one monolithicFlat, odd sizes) attached with our own ReconfigVM_Task,
//! read remotely through the `/folder` Locator and compared with `qemu-img convert -O raw`;
//! snapshots recorded in the ledger and really gone afterwards (also after a failure mid-read
//! and after a "crash" and a sweep); an expired session re-established; 503 backoff.

use godwit_disk::{BlockSource, Disk, RunState};
use godwit_tests::vcsim;
use godwit_vmware::ledger::Ledger;
use godwit_vmware::replicate::{CycleOptions, run_cycle};
use godwit_vmware::snapshot;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use vcsim::{Vcsim, qemu_img, qemu_io, qemu_raw, set_vm_disks, vm_by_name};

pub const VM: &str = "DC0_H0_VM0";
/// 3 MiB + 1 KiB and 5 MiB + 65 KiB: not multiples of a grain or a MiB.
pub const SPARSE_SIZE: u64 = 3 * 1024 * 1024 + 1024;
pub const FLAT_SIZE: u64 = 5 * 1024 * 1024 + 65 * 1024;

/// Make the two disks in the VM's datastore folder and attach them. Returns the local paths
/// of the two descriptors.
fn prepare(v: &Vcsim) -> (PathBuf, PathBuf) {
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
    qemu_io(
        &a,
        "vmdk",
        &[
            "write -P 0xa1 0 100k",
            "write -P 0x5c 1M 64k",
            "write -P 0x77 3145728 1k",
        ],
    );
    qemu_io(
        &b,
        "vmdk",
        &["write -P 0x3e 4096 70000", "write -P 0xe4 5M 65k"],
    );
    let s = v.connect();
    set_vm_disks(
        &s,
        VM,
        &[
            (&format!("[{ds}] {VM}/sparse.vmdk"), SPARSE_SIZE),
            (&format!("[{ds}] {VM}/flat.vmdk"), FLAT_SIZE),
        ],
    );
    s.logout().unwrap();
    (a, b)
}

/// Read a whole disk the way the transfer pipeline does: data runs only, zeros elsewhere.
fn read_all(d: &dyn BlockSource) -> Vec<u8> {
    let size = d.virtual_size();
    let mut out = vec![0u8; usize::try_from(size).unwrap()];
    for run in d.map(0, size).unwrap() {
        if run.state == RunState::Data {
            let s = usize::try_from(run.offset).unwrap();
            let e = usize::try_from(run.end()).unwrap();
            d.read_at(run.offset, &mut out[s..e]).unwrap();
        }
    }
    out
}

fn opts(dir: &Path, cbt: bool) -> CycleOptions {
    CycleOptions {
        vm_name: VM.into(),
        ledger: dir.join("ledger.json"),
        change_ids: dir.join("change-ids.json"),
        cbt,
        ..CycleOptions::default()
    }
}

fn assert_no_snapshots(v: &Vcsim, dir: &Path) {
    let s = v.connect();
    let vm = vm_by_name(&s, VM);
    assert!(
        vm.snapshots.is_empty(),
        "snapshots left behind: {:?}",
        vm.snapshots
    );
    s.logout().unwrap();
    let l = Ledger::open(&dir.join("ledger.json")).unwrap();
    assert!(
        l.entries().is_empty(),
        "ledger not empty: {:?}",
        l.entries()
    );
}

#[test]
fn full_cycle_reads_both_disks_byte_identical_and_leaves_no_snapshot() {
    let v = Vcsim::start(false);
    let (a, b) = prepare(&v);
    let work = tempfile::tempdir().unwrap();
    let s = v.connect();
    let mut images: Vec<Vec<u8>> = Vec::new();
    let mut snapshot_seen = Vec::new();
    let report = run_cycle(&s, &opts(work.path(), false), &mut |n,
                                                                d: &dyn BlockSource,
                                                                ranges: Option<
        &[Range<u64>],
    >| {
        assert_eq!(n, images.len());
        assert!(ranges.is_none());
        // While we read, the VM has exactly our snapshot.
        snapshot_seen.push(vm_by_name(&v.connect(), VM).snapshots);
        images.push(read_all(d));
        Ok(())
    })
    .unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].len() as u64, SPARSE_SIZE);
    assert_eq!(images[1].len() as u64, FLAT_SIZE);
    assert!(
        images[0] == qemu_raw(&a, work.path()),
        "sparse disk differs from qemu-img convert -O raw"
    );
    assert!(
        images[1] == qemu_raw(&b, work.path()),
        "flat disk differs from qemu-img convert -O raw"
    );
    for seen in &snapshot_seen {
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].name, report.snapshot);
        assert!(seen[0].name.starts_with("godwit-"));
    }
    eprintln!(
        "full cycle: {} bytes read from /folder for {} + {} bytes of disk",
        report.bytes_read, SPARSE_SIZE, FLAT_SIZE
    );
    s.logout().unwrap();
    assert_no_snapshots(&v, work.path());
}

#[test]
fn failure_mid_read_removes_the_snapshot() {
    let v = Vcsim::start(false);
    prepare(&v);
    let work = tempfile::tempdir().unwrap();
    let s = v.connect();
    let err = run_cycle(
        &s,
        &opts(work.path(), false),
        &mut |n, d: &dyn BlockSource, _| {
            let mut buf = vec![0u8; 4096];
            d.read_at(0, &mut buf)?;
            if n == 1 {
                return Err("staging server went away".into());
            }
            Ok(())
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("disk 1") && msg.contains("staging server went away"),
        "{msg}"
    );
    assert_no_snapshots(&v, work.path());
}

#[test]
fn sweep_removes_what_a_crash_left() {
    let v = Vcsim::start(false);
    let work = tempfile::tempdir().unwrap();
    let ledger_path = work.path().join("ledger.json");
    let name;
    {
        // "Crash" 1: snapshot created and recorded, process gone before removal.
        let s = v.connect();
        let vm = vm_by_name(&s, VM);
        let mut ledger = Ledger::open(&ledger_path).unwrap();
        let snap = snapshot::create(&s, &mut ledger, &vm, false).unwrap();
        name = snap.name.clone();
        // "Crash" 2: intent recorded, the MoRef never was (killed inside CreateSnapshot).
        let mut e = ledger.entries()[0].clone();
        e.snapshot_name = format!("{}-2", e.snapshot_name);
        e.snapshot = None;
        ledger.add(e.clone()).unwrap();
        vcsim::run_task(
            &s,
            "CreateSnapshot_Task",
            godwit_vmware::soap::envelope::create_snapshot(
                &vm.moref,
                &e.snapshot_name,
                "",
                false,
                false,
            ),
        );
        assert_eq!(vm_by_name(&s, VM).snapshots.len(), 2);
    }
    // Next start: a new process reads the ledger and sweeps.
    let s = v.connect();
    let mut ledger = Ledger::open(&ledger_path).unwrap();
    assert_eq!(ledger.entries().len(), 2);
    let rep = snapshot::sweep(&s, &mut ledger).unwrap();
    assert_eq!(rep.removed, vec![name.clone(), format!("{name}-2")]);
    assert!(rep.failed.is_empty());
    assert_no_snapshots(&v, work.path());
}

#[test]
fn expired_session_leads_to_a_relogin() {
    let v = Vcsim::start(false);
    let s = v.connect();
    let vm = vm_by_name(&s, VM);
    let logout = |cookie: &str| {
        let body = godwit_vmware::soap::envelope::logout(&godwit_vmware::MoRef::new(
            "SessionManager",
            "SessionManager",
        ));
        v.curl(&[
            "-X",
            "POST",
            "-H",
            &format!("Cookie: {cookie}"),
            "--data-binary",
            &body,
            &format!("https://127.0.0.1:{}/sdk", v.port),
        ]);
    };
    // The server ends our session behind our back; RetrievePropertiesEx then answers HTTP 200
    // with a NotAuthenticated missingSet.
    logout(&s.cookie().unwrap());
    let o = s.object_properties(&vm.moref, &["name"]).unwrap();
    assert_eq!(o.prop("name").unwrap().text, VM);
    assert_eq!(s.relogins(), 1);
    // And a method that faults with NotAuthenticated (HTTP 500).
    logout(&s.cookie().unwrap());
    assert_eq!(s.all_of_kind("VirtualMachine", &["name"]).unwrap().len(), 4);
    assert_eq!(s.relogins(), 2);
    s.logout().unwrap();
}

#[test]
fn folder_reads_back_off_on_503() {
    let v = Vcsim::start(false);
    let (_, b) = prepare(&v);
    let work = tempfile::tempdir().unwrap();
    let s = v.connect();
    let loc = godwit_vmware::datastore::DatastoreLocator::new(&s).unwrap();
    v.stub("/stub/reset-stats", Some("{}"));
    v.stub("/stub/folder-503?n=3", Some("{}"));
    let (ds, _) = v.datastore();
    let d = Disk::open_with(
        &loc,
        &format!("[{ds}] {VM}/flat.vmdk"),
        godwit_disk::FormatHint::Auto,
    )
    .unwrap();
    assert!(read_all(&d) == qemu_raw(&b, work.path()));
    let (_, requests) = v.folder_stats();
    assert!(
        requests >= 4,
        "the three 503s were retried: {requests} requests"
    );
    // A file that does not exist is a clear not-found error.
    let e = Disk::open_with(
        &loc,
        &format!("[{ds}] {VM}/missing.vmdk"),
        godwit_disk::FormatHint::Auto,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("missing.vmdk"), "{e}");
    let _ = Command::new("true").status();
    s.logout().unwrap();
}

#[test]
fn server_gone_mid_read_is_a_clear_error_and_the_ledger_keeps_the_snapshot() {
    let v = Vcsim::start(false);
    prepare(&v);
    let authority = v.authority();
    let work = tempfile::tempdir().unwrap();
    let s = v.connect();
    let mut server = Some(v);
    let err = run_cycle(
        &s,
        &opts(work.path(), false),
        &mut |_, d: &dyn BlockSource, _| {
            drop(server.take()); // vCenter goes away while we read
            let mut buf = vec![0u8; 65536];
            d.read_at(0, &mut buf)?;
            Ok(())
        },
    )
    .unwrap_err();
    let msg = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(msg.contains(&authority), "{msg}");
    // The snapshot could not be removed, so its entry stays for the next start's sweep.
    let l = Ledger::open(&work.path().join("ledger.json")).unwrap();
    assert_eq!(l.entries().len(), 1);
    assert!(l.entries()[0].snapshot.is_some());
    assert_eq!(l.entries()[0].host, authority);
}

/// ESXi hostd answers 503 when a client opens too many requests at once, so reads to one host
/// are capped (4, `transport::DEFAULT_MAX_PARALLEL`). Sixteen threads read one extent at once
/// through slow `/folder` replies (STUB delay); the simulator counts the most requests it
/// served at the same time, which must be exactly the cap, and every piece comes back right.
#[test]
fn parallel_reads_to_one_host_are_capped() {
    use godwit_disk::storage::Locator;
    let v = Vcsim::start(false);
    let (_, b) = prepare(&v);
    let extent = std::fs::read(b.with_file_name("flat-flat.vmdk")).unwrap();
    let s = v.connect();
    let loc = godwit_vmware::datastore::DatastoreLocator::new(&s).unwrap();
    let (ds, _) = v.datastore();
    let f = loc
        .open(&format!("[{ds}] {VM}/flat-flat.vmdk"), None)
        .unwrap()
        .file;
    v.stub("/stub/reset-stats", Some("{}"));
    v.stub("/stub/folder-delay?ms=150", Some(""));
    const PIECE: usize = 64 * 1024;
    std::thread::scope(|sc| {
        for i in 0..16 {
            let (f, extent) = (&f, &extent);
            sc.spawn(move || {
                let mut buf = vec![0u8; PIECE];
                f.read_exact_at(&mut buf, (i * PIECE) as u64).unwrap();
                assert!(
                    buf == extent[i * PIECE..(i + 1) * PIECE],
                    "piece {i} differs"
                );
            });
        }
    });
    v.stub("/stub/folder-delay?ms=0", Some(""));
    let st: serde_json::Value = serde_json::from_str(&v.stub("/stub/stats", None)).unwrap();
    assert_eq!(
        st["folder_max_in_flight"].as_u64(),
        Some(godwit_vmware::transport::DEFAULT_MAX_PARALLEL as u64),
        "{st}"
    );
    assert!(st["folder_requests"].as_u64().unwrap() >= 16, "{st}");
    s.logout().unwrap();
}
