//! `godwit replicate --source vsphere://...` end to end: vcsim over TLS (QueryChangedDiskAreas
//! answered by our labelled STUB, see tests/vcsim/main.go) → a real staging server over TLS on
//! loopback → `godwit export` of each disk, compared byte for byte with `qemu-img convert -O raw`
//! of the source VMDK; afterwards the VM has no snapshot and the ledger is empty. A second cycle
//! with CBT is incremental and still exports identical bytes.

use godwit_tests::peers::{godwit_bin, run_ok};
use godwit_tests::{staging, vcsim};
use staging::{Server, token_file};
use std::path::Path;
use std::process::Command;
use vcsim::{PASSWORD, USER, Vcsim, qemu_img, qemu_io, qemu_raw, set_vm_disks, vm_by_name};

const VM: &str = "DC0_H0_VM0";
const SPARSE_SIZE: u64 = 3 * 1024 * 1024 + 1024;
const FLAT_SIZE: u64 = 5 * 1024 * 1024 + 65 * 1024;

fn replicate(v: &Vcsim, srv: &Server, state: &Path, extra: &[&str]) -> String {
    let tf = token_file(srv.data.parent().expect("parent"), &srv.token);
    run_ok(
        Command::new(godwit_bin())
            .env("GODWIT_PASSWORD", PASSWORD)
            .args([
                "replicate",
                "--json",
                "--vm",
                VM,
                "--source",
                &v.source(USER),
            ])
            .args(["--source-fingerprint", &v.fingerprint_arg()])
            .args([
                "--target",
                &srv.url(),
                "--target-fingerprint",
                &srv.fingerprint,
            ])
            .arg("--token-file")
            .arg(&tf)
            .arg("--state-dir")
            .arg(state)
            .args(extra),
    )
}

fn export_equals(srv: &Server, disk: &str, src: &Path, work: &Path) {
    let out = work.join(format!("export-{disk}.raw"));
    let tf = token_file(srv.data.parent().expect("parent"), &srv.token);
    run_ok(
        Command::new(godwit_bin())
            .args(["export", "--vm", VM, "--disk", disk, "--format", "raw"])
            .args([
                "--target",
                &srv.url(),
                "--target-fingerprint",
                &srv.fingerprint,
            ])
            .arg("--token-file")
            .arg(&tf)
            .arg("--out")
            .arg(&out),
    );
    let got = std::fs::read(&out).unwrap();
    let want = qemu_raw(src, work);
    assert_eq!(got.len(), want.len(), "disk {disk}: size differs");
    assert!(
        got == want,
        "disk {disk}: exported bytes differ from qemu-img convert"
    );
}

#[test]
fn vsphere_vm_replicated_to_staging_exports_identical_disks_and_leaves_no_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(VM);
    std::fs::create_dir_all(&vmdir).unwrap();
    let a = vmdir.join("sparse.vmdk");
    let b = vmdir.join("flat.vmdk");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    qemu_img(&["create", "-q", "-f", "vmdk", a_s, &SPARSE_SIZE.to_string()]);
    let flat = [
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
    ];
    qemu_img(&[&flat[..], &[b_s, &FLAT_SIZE.to_string()]].concat());
    // vcsim 0.24.2 attaches an existing disk only when `<name>-flat.vmdk` exists.
    std::fs::write(vmdir.join("sparse-flat.vmdk"), b"").unwrap();
    qemu_io(
        &a,
        "vmdk",
        &["write -P 0xa1 0 100k", "write -P 0x77 3145728 1k"],
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

    let data = work.path().join("staging");
    std::fs::create_dir_all(&data).unwrap();
    let srv = Server::start(&data, "127.0.0.1:0", &[]);
    let state = work.path().join("state");
    let out = replicate(&v, &srv, &state, &["--cbt", "--chunk-size", "64K"]);
    assert_eq!(
        out.matches("\"event\":\"done\"").count(),
        2,
        "two disks: {out}"
    );

    export_equals(&srv, "0", &a, work.path());
    export_equals(&srv, "1", &b, work.path());
    let vm = vm_by_name(&s, VM);
    assert!(
        vm.snapshots.is_empty(),
        "snapshot left behind: {:?}",
        vm.snapshots
    );

    // Second cycle, CBT: change a little of disk 0, replicate again, export still identical.
    qemu_io(&a, "vmdk", &["write -P 0x42 2M 4k"]);
    let out2 = replicate(&v, &srv, &state, &["--cbt", "--chunk-size", "64K"]);
    assert_eq!(out2.matches("\"event\":\"done\"").count(), 2, "{out2}");
    export_equals(&srv, "0", &a, work.path());
    export_equals(&srv, "1", &b, work.path());
    let vm = vm_by_name(&s, VM);
    assert!(
        vm.snapshots.is_empty(),
        "snapshot left behind: {:?}",
        vm.snapshots
    );
    s.logout().unwrap();
}
