//! The NFC export-lease path against vcsim plus our labelled STUB of ExportVm/ExportSnapshot
//! and lease downloads (tests/vcsim/nfc.go; vcsim 0.24.2 has HttpNfcLease only for uploads):
//! the lease object, its properties and its Progress/Complete/Abort methods live in vcsim's
//! own registry and dispatch; the stub streams each disk as the streamOptimized VMDK qemu-img
//! makes of it and expires the lease when no keep-alive arrives within leaseTimeout.
//!
//! Shown: a running VM's two disks (sparse + flat, odd sizes) read through ExportSnapshot equal
//! `qemu-img convert -O raw` of the sources, the lease completed, keep-alives sent while a
//! throttled download outlives the lease timeout, no snapshot, ledger or spool file left; a
//! powered-off VM goes through ExportVm; a download cut mid-way aborts the lease and still
//! removes the snapshot; a lease without keep-alive expires (so the keep-alive check can
//! fail); device URLs on another host name need that host's own pin and get no session cookie;
//! `auto` picks NFC for a vSAN datastore.

use godwit_disk::BlockSource;
use godwit_tests::vcsim;
use godwit_vmware::ErrorKind;
use godwit_vmware::ledger::Ledger;
use godwit_vmware::replicate::{CycleOptions, DiskAccess, run_cycle, run_cycle_with};
use godwit_vmware::soap::envelope as env;
use godwit_vmware::trust::Fingerprint;
use std::path::Path;
use vcsim::{
    FLAT_SIZE, SPARSE_SIZE, VM, Vcsim, prepare_two_disks, qemu_raw, read_all, run_task, vm_by_name,
};

fn opts(dir: &Path) -> CycleOptions {
    CycleOptions {
        vm_name: VM.into(),
        ledger: dir.join("ledger.json"),
        change_ids: dir.join("change-ids.json"),
        cbt: false,
        ..CycleOptions::default()
    }
}

fn assert_clean(v: &Vcsim, dir: &Path) {
    let s = v.connect();
    let vm = vm_by_name(&s, VM);
    assert!(
        vm.snapshots.is_empty(),
        "snapshots left: {:?}",
        vm.snapshots
    );
    s.logout().unwrap();
    let l = Ledger::open(&dir.join("ledger.json")).unwrap();
    assert!(
        l.entries().is_empty(),
        "ledger not empty: {:?}",
        l.entries()
    );
    let spool: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nfc-"))
        .collect();
    assert!(spool.is_empty(), "spool files left: {spool:?}");
}

/// Run one NFC cycle, returning the report and every disk read whole.
fn nfc_cycle(
    v: &Vcsim,
    s: &godwit_vmware::session::Session,
    dir: &Path,
    access: DiskAccess,
) -> godwit_vmware::Result<(godwit_vmware::replicate::CycleReport, Vec<Vec<u8>>)> {
    let _ = v;
    let mut images = Vec::new();
    let r = run_cycle_with(
        s,
        &opts(dir),
        access,
        &mut |n, d: &dyn BlockSource, ranges| {
            assert_eq!(n, images.len());
            assert!(ranges.is_none());
            images.push(read_all(d));
            Ok(())
        },
    )?;
    Ok((r, images))
}

fn last_lease(v: &Vcsim) -> serde_json::Value {
    v.nfc_stats().pop().expect("a lease was created")
}

#[test]
fn export_snapshot_of_a_running_vm_equals_qemu_img_with_keepalive_and_complete() {
    let v = Vcsim::start(false);
    let (a, b) = prepare_two_disks(&v);
    // 512 KiB of random (incompressible) bytes into the flat extent, so the streamOptimized
    // download is at least that big.
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut noise = vec![0u8; 512 * 1024];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut noise)
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(v.datastore().1.join(VM).join("flat-flat.vmdk"))
            .unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&noise).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    // A 1 s lease timeout and downloads throttled to 200 KiB/s: more than 512 KiB take over
    // 2.5 s, longer than the timeout, so only keep-alives keep the lease.
    v.stub("/stub/nfc?timeout=1&rate=204800", Some(""));
    v.stub("/stub/reset-stats", Some(""));
    let s = v.connect();
    assert_eq!(vm_by_name(&s, VM).power_state.as_deref(), Some("poweredOn"));
    let started = std::time::Instant::now();
    let (report, images) = nfc_cycle(&v, &s, work.path(), DiskAccess::Nfc).unwrap();
    let took = started.elapsed();
    assert_eq!(report.disk_access, DiskAccess::Nfc);
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].len() as u64, SPARSE_SIZE);
    assert_eq!(images[1].len() as u64, FLAT_SIZE);
    assert!(
        images[0] == qemu_raw(&a, work.path()),
        "sparse disk differs"
    );
    assert!(images[1] == qemu_raw(&b, work.path()), "flat disk differs");
    let lease = last_lease(&v);
    eprintln!("lease {lease} in {took:?}, report {report:?}");
    assert_eq!(lease["completed"], true, "{lease}");
    assert_eq!(lease["aborted"], false, "{lease}");
    assert_eq!(lease["expired"], false, "{lease}");
    assert_eq!(lease["state"], "done", "{lease}");
    assert_eq!(lease["method"], "ExportSnapshot", "{lease}");
    assert!(
        report.nfc_bytes > 512 * 1024 && took.as_secs_f64() > 2.5,
        "the download should outlive the 1 s lease timeout: {took:?}, {} bytes",
        report.nfc_bytes
    );
    assert!(
        lease["progress_calls"].as_u64().unwrap() >= 2,
        "keep-alives: {lease}"
    );
    assert_eq!(lease["bytes_served"].as_u64(), Some(report.nfc_bytes));
    assert_eq!(
        Some(lease["id"].as_str().unwrap()),
        report.nfc_lease.as_deref()
    );
    // NFC only: nothing was read through /folder.
    assert_eq!(v.folder_stats().0, 0);
    assert_eq!(
        lease["cookie_seen"], true,
        "same host: the session cookie goes along"
    );
    s.logout().unwrap();
    assert_clean(&v, work.path());
}

#[test]
fn cut_download_aborts_the_lease_and_removes_the_snapshot_and_expiry_is_real() {
    let v = Vcsim::start(false);
    prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    let s = v.connect();
    v.stub("/stub/nfc?fail_after=5000", Some(""));
    let err = nfc_cycle(&v, &s, work.path(), DiskAccess::Nfc).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("NFC download") && msg.contains("/nfc/"),
        "{msg}"
    );
    let lease = last_lease(&v);
    assert_eq!(lease["aborted"], true, "{lease}");
    assert_eq!(lease["completed"], false, "{lease}");
    assert_clean(&v, work.path());

    // The stub's expiry is real: a lease nobody keeps alive turns to error within its timeout,
    // and a keep-alive after that is refused.
    v.stub("/stub/nfc?reset=1&timeout=1", Some(""));
    let vm = vm_by_name(&s, VM);
    let mut ledger = Ledger::open(&work.path().join("ledger.json")).unwrap();
    let snap = godwit_vmware::snapshot::create(&s, &mut ledger, &vm, false).unwrap();
    let lease = godwit_vmware::nfc::export_snapshot(&s, &snap.moref).unwrap();
    assert_eq!(lease.disks().len(), 2);
    assert!(lease.progress(1).is_ok());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let e = lease.progress(2).unwrap_err();
    assert!(e.to_string().contains("InvalidState"), "{e}");
    assert_eq!(last_lease(&v)["expired"], true);
    drop(lease); // aborts
    godwit_vmware::snapshot::remove(&s, &mut ledger, &snap).unwrap();
    s.logout().unwrap();
    assert_clean(&v, work.path());
}

#[test]
fn powered_off_vm_goes_through_export_vm() {
    let v = Vcsim::start(false);
    let (a, b) = prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    let s = v.connect();
    let vm = vm_by_name(&s, VM);
    run_task(
        &s,
        "PowerOffVM_Task",
        env::envelope("PowerOffVM_Task", &vm.moref, ""),
    );
    // ExportVm refuses a running VM (InvalidPowerState) on real hosts and in the stub; the
    // cycle asks for it only when the VM is off.
    let (report, images) = nfc_cycle(&v, &s, work.path(), DiskAccess::Nfc).unwrap();
    let lease = last_lease(&v);
    assert_eq!(lease["method"], "ExportVm", "{lease}");
    assert_eq!(
        lease["entity"].as_str(),
        Some(vm.moref.value.as_str()),
        "{lease}"
    );
    assert_eq!(lease["completed"], true, "{lease}");
    assert!(images[0] == qemu_raw(&a, work.path()));
    assert!(images[1] == qemu_raw(&b, work.path()));
    assert!(report.nfc_bytes > 0);
    s.logout().unwrap();
    assert_clean(&v, work.path());
}

/// An ESXi host behind vCenter is trusted by the SHA-1 thumbprint vCenter reports for it in
/// the lease (over the pinned vCenter session), or by its own SHA-256 pin — never otherwise:
/// without either the run stops naming the host and its fingerprint; a reported thumbprint
/// that does not match the host's certificate stops it too.
#[test]
fn device_urls_on_another_host_are_trusted_by_the_reported_thumbprint_or_a_pin() {
    let v = Vcsim::start(false);
    let (a, _) = prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    // Device URLs name "localhost:PORT": for the client another host than the vCenter it
    // logged in to (127.0.0.1:PORT), as an ESXi host behind vCenter would be.
    let other = format!("localhost:{}", v.port);
    let shown = Fingerprint::parse(&v.fingerprint).unwrap().to_string();
    let s = v.connect();

    // No thumbprint reported, no pin: refused, naming the host and its fingerprint.
    v.stub(&format!("/stub/nfc?host={other}&thumbprint=none"), Some(""));
    let err = nfc_cycle(&v, &s, work.path(), DiskAccess::Nfc).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Trust, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&other) && msg.contains(&shown),
        "the error names the host and the fingerprint to pin ({shown}): {msg}"
    );
    assert_eq!(last_lease(&v)["aborted"], true);
    assert_clean(&v, work.path());

    // A reported thumbprint that is not the host's certificate: refused the same way.
    v.stub("/stub/nfc?thumbprint=wrong", Some(""));
    let err = nfc_cycle(&v, &s, work.path(), DiskAccess::Nfc).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Trust, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&other) && msg.contains(&shown) && msg.contains("AB:AB:AB"),
        "names the host, its fingerprint and the thumbprint vCenter reported: {msg}"
    );
    assert_clean(&v, work.path());

    // The thumbprint vCenter reports (the real one): trusted without a pin.
    v.stub("/stub/nfc?thumbprint=real", Some(""));
    let (report, images) = nfc_cycle(&v, &s, work.path(), DiskAccess::Nfc).unwrap();
    assert_eq!(report.disk_access, DiskAccess::Nfc);
    assert!(images[0] == qemu_raw(&a, work.path()));
    let lease = last_lease(&v);
    assert_eq!(lease["completed"], true, "{lease}");
    assert_eq!(
        lease["cookie_seen"], false,
        "the vCenter session cookie must not go to another host"
    );
    s.logout().unwrap();
    assert_clean(&v, work.path());

    // A pin of that host (and no thumbprint); and the datastore marked vSAN so `auto` has to
    // choose NFC.
    v.stub("/stub/nfc?thumbprint=none", Some(""));
    v.stub("/stub/datastore-type?name=LocalDS_0&type=vsan", Some(""));
    let mut o = v.connect_opts(vcsim::PASSWORD);
    o.trust
        .add(&other, Fingerprint::parse(&v.fingerprint).unwrap());
    let s = godwit_vmware::session::Session::connect(&o).unwrap();
    let mut first = Vec::new();
    let report = run_cycle(&s, &opts(work.path()), &mut |n, d: &dyn BlockSource, _| {
        if n == 0 {
            first = read_all(d);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(
        report.disk_access,
        DiskAccess::Nfc,
        "auto chose NFC for vsan"
    );
    assert!(first == qemu_raw(&a, work.path()));
    assert_eq!(last_lease(&v)["completed"], true);
    s.logout().unwrap();
    assert_clean(&v, work.path());
}

/// The lease lists the disks in another order than the VM's devices (STUB `order=reverse`;
/// nothing promises an order, vCenter keys each URL by controller and unit), plus a non-disk
/// file: each disk still gets its own bytes. And the lease is completed as soon as the disks
/// are downloaded, before the first one is handed on (a slow staging server must not hold a
/// lease on the host).
#[test]
fn device_urls_are_matched_by_key_and_the_lease_completes_before_the_disks_are_fed() {
    let v = Vcsim::start(false);
    let (a, b) = prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    v.stub("/stub/nfc?order=reverse", Some(""));
    let s = v.connect();
    let mut images = Vec::new();
    let mut completed_when_fed = Vec::new();
    run_cycle_with(
        &s,
        &opts(work.path()),
        DiskAccess::Nfc,
        &mut |_, d: &dyn BlockSource, _| {
            completed_when_fed.push(last_lease(&v)["completed"] == true);
            images.push(read_all(d));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(completed_when_fed, [true, true]);
    assert!(
        images[0] == qemu_raw(&a, work.path()),
        "disk 0 got another disk's bytes"
    );
    assert!(
        images[1] == qemu_raw(&b, work.path()),
        "disk 1 got another disk's bytes"
    );
    s.logout().unwrap();
    assert_clean(&v, work.path());
}
