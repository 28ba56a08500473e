//! `godwit replicate --source vsphere://...` through the CLI when vCenter (vcsim) is killed
//! mid-run and restarted in place (same address, same certificate), and the NFC path through
//! the CLI (`--disk-access nfc`, our labelled STUB of ExportSnapshot downloads).
//!
//! What a vcsim restart implies: its inventory lives in memory, so the restarted simulator has
//! the same VMs (same MoRefs) but none of our attached disks, none of the snapshots, and a new
//! datastore directory. A real vCenter restart keeps all of that. So the honest outcome here is:
//! the run that lost its server fails with a clear error naming the server and exit code 2,
//! its snapshot stays in the ledger (it could not be removed while the server was down); once
//! the server is back (the test re-attaches the same disk files, as a real vCenter would still
//! have them), the next run sweeps the ledger entry, replicates, removes its own snapshot, and
//! the export equals `qemu-img convert -O raw` of the source.

use godwit_tests::peers::{godwit_bin, run_ok};
use godwit_tests::vcsim;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vcsim::{PASSWORD, USER, VM, Vcsim, prepare_two_disks, qemu_raw, vm_by_name};

fn replicate_cmd(v: &Vcsim, store: &Path, state: &Path) -> Command {
    let mut c = Command::new(godwit_bin());
    c.env("GODWIT_PASSWORD", PASSWORD)
        .args(["replicate", "--vm", VM, "--source", &v.source(USER)])
        .args(["--source-fingerprint", &v.fingerprint_arg()])
        .arg("--target")
        .arg(format!("file://{}", store.display()))
        .arg("--state-dir")
        .arg(state);
    c
}

fn export_equals(store: &Path, disk: &str, src: &Path, work: &Path) {
    let out = work.join(format!("export-{disk}.raw"));
    run_ok(
        Command::new(godwit_bin())
            .args(["export", "--vm", VM, "--disk", disk, "--format", "raw"])
            .arg("--target")
            .arg(format!("file://{}", store.display()))
            .arg("--out")
            .arg(&out),
    );
    assert!(
        std::fs::read(&out).unwrap() == qemu_raw(src, work),
        "export of disk {disk} differs from qemu-img convert -O raw of {}",
        src.display()
    );
}

fn ledger_entries(state: &Path) -> Vec<serde_json::Value> {
    let p = state.join("vsphere-snapshot-ledger.json");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => o
            .get("entries")
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[test]
fn vcenter_restarted_mid_run_fails_cleanly_then_the_next_run_sweeps_and_succeeds() {
    let tls = tempfile::tempdir().unwrap();
    let v = Vcsim::start_with(false, None, Some(tls.path()));
    let port = v.port;
    let fingerprint = v.fingerprint.clone();
    prepare_two_disks(&v);
    // Keep copies of the disk files: the restarted simulator gets a new datastore directory.
    let work = tempfile::tempdir().unwrap();
    let keep = work.path().join("disks");
    std::fs::create_dir_all(&keep).unwrap();
    let vmdir = v.datastore().1.join(VM);
    for f in [
        "sparse.vmdk",
        "sparse-flat.vmdk",
        "flat.vmdk",
        "flat-flat.vmdk",
    ] {
        std::fs::copy(vmdir.join(f), keep.join(f)).unwrap();
    }
    // Slow /folder reads so the run is surely mid-read when the server dies.
    v.stub("/stub/folder-delay?ms=400", Some(""));
    let store = work.path().join("store");
    let state = work.path().join("state");
    let mut child = replicate_cmd(&v, &store, &state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ledger_entries(&state)
        .iter()
        .any(|e| !e["snapshot"].is_null())
    {
        assert!(Instant::now() < deadline, "no snapshot recorded in 60 s");
        assert!(child.try_wait().unwrap().is_none(), "replicate ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    v.kill();
    // The run must end on its own, promptly, with a clear error.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "replicate hangs after vCenter died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("first run: {status}\n{stderr}");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the error names the server: {stderr}"
    );
    assert_eq!(
        ledger_entries(&state).len(),
        1,
        "the snapshot stays in the ledger for the next start"
    );

    // vCenter comes back: same address and certificate, state rebuilt (disks re-attached).
    let v = Vcsim::start_with(false, Some(&format!("127.0.0.1:{port}")), Some(tls.path()));
    assert_eq!(
        v.fingerprint, fingerprint,
        "same certificate after the restart"
    );
    let vmdir = v.datastore().1.join(VM);
    std::fs::create_dir_all(&vmdir).unwrap();
    for f in [
        "sparse.vmdk",
        "sparse-flat.vmdk",
        "flat.vmdk",
        "flat-flat.vmdk",
    ] {
        std::fs::copy(keep.join(f), vmdir.join(f)).unwrap();
    }
    let (ds, _) = v.datastore();
    let s = v.connect();
    vcsim::set_vm_disks(
        &s,
        VM,
        &[
            (&format!("[{ds}] {VM}/sparse.vmdk"), vcsim::SPARSE_SIZE),
            (&format!("[{ds}] {VM}/flat.vmdk"), vcsim::FLAT_SIZE),
        ],
    );
    let second = run_ok(&mut replicate_cmd(&v, &store, &state));
    eprintln!("second run: {second}");
    assert!(ledger_entries(&state).is_empty(), "ledger swept and empty");
    assert!(vm_by_name(&s, VM).snapshots.is_empty(), "no snapshot left");
    s.logout().unwrap();
    export_equals(&store, "0", &keep.join("sparse.vmdk"), work.path());
    export_equals(&store, "1", &keep.join("flat.vmdk"), work.path());
}

#[test]
fn cli_replicates_through_the_nfc_lease() {
    let v = Vcsim::start(false);
    let (a, b) = prepare_two_disks(&v);
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let state = work.path().join("state");
    let out = Command::new(godwit_bin())
        .args(replicate_cmd(&v, &store, &state).get_args())
        .args(["--disk-access", "nfc"])
        .env("GODWIT_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("NFC export lease") && stderr.contains("lease completed"),
        "{stderr}"
    );
    let lease = v.nfc_stats().pop().expect("a lease");
    assert_eq!(lease["completed"], true, "{lease}");
    assert_eq!(v.folder_stats().0, 0, "nothing read through /folder");
    let s = v.connect();
    assert!(vm_by_name(&s, VM).snapshots.is_empty());
    s.logout().unwrap();
    export_equals(&store, "0", &a, work.path());
    export_equals(&store, "1", &b, work.path());
    // A bad value is a clear usage error.
    let out = Command::new(godwit_bin())
        .args(replicate_cmd(&v, &store, &state).get_args())
        .args(["--disk-access", "ftp"])
        .env("GODWIT_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--disk-access"), "{stderr}");
}
