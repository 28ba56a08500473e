//! The replication view (issue #18) in a real browser, against `godwit serve` with vcsim as
//! the vSphere source and a `godwit staging serve` as the staging target: a VM with two disks
//! of random data replicates at a limited bandwidth while tests/browser/replication.mjs
//! watches its page change (overall progress, ETA, each disk's row, the phase checklist) and
//! flip to the final state at completion without a reload; a job whose VM's disk files do not
//! exist fails and its page shows the error's code, message and what to do. Here we then check
//! the outcome the page showed: each disk's SHA-256 is that of `qemu-img convert -O raw` of the
//! source disk, the API carries the same per-disk figures, the failure is typed in the API,
//! and the log page listed it. Screenshots under `<target>/tmp/webui-replication-screenshots/`;
//! with `GODWIT_README_IMAGES=docs/img` the README's two pictures are written too.

use godwit_tests::service as serve;
use godwit_tests::staging as util;
use godwit_tests::vcsim as vmware_harness;

use godwit_tests::peers::have;
use serde_json::json;
use serve::{ADMIN_PASSWORD, Service, overwrite_random, setup_vsphere, sha256_hex};
use std::path::{Path, PathBuf};
use std::process::Command;
use util::Server;
use vmware_harness::{Vcsim, qemu_img, qemu_raw, set_vm_disks};

const VM: &str = "DC0_H0_VM0";
/// vcsim's VM whose disk files are empty while vCenter says 1 MiB: refused as a capacity
/// mismatch.
const BROKEN_VM: &str = "DC0_H0_VM1";
const DISK_MIB: u64 = 20;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn require_browser_tools() {
    assert!(have("node"), "node is missing: run `make deps`");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run `make deps`"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in tests/browser: run `make deps`"
    );
}

/// Two flat disks of random data for `vm`; returns their descriptors.
fn two_disks(v: &Vcsim, vm: &str) -> Vec<PathBuf> {
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(vm);
    std::fs::create_dir_all(&vmdir).unwrap();
    let size = DISK_MIB << 20;
    let mut paths = Vec::new();
    let mut names = Vec::new();
    for i in 0..2 {
        let disk = vmdir.join(format!("data{i}.vmdk"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            disk.to_str().unwrap(),
            &size.to_string(),
        ]);
        overwrite_random(&vmdir.join(format!("data{i}-flat.vmdk")), DISK_MIB);
        names.push(format!("[{ds}] {vm}/data{i}.vmdk"));
        paths.push(disk);
    }
    let s = v.connect();
    let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), size)).collect();
    set_vm_disks(&s, vm, &files);
    paths
}

#[test]
fn browser_watches_a_two_disk_replication_and_a_failure() {
    require_browser_tools();
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let disks = two_disks(&v, VM);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    // 2 MiB/s for 2 × 20 MiB of random data: ~20 s, long enough to watch every figure move.
    let svc = Service::start_as_admin(
        work.path(),
        &["--chunk-size", "256K", "--bwlimit", "2M", "--no-cbt"],
    );
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    svc.ok("POST", "/checks", None);
    svc.ok("POST", "/setup/finish", None);
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let broken = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": BROKEN_VM, "schedule": {"kind": "once"}})),
    );
    let broken_id = broken["id"].as_str().unwrap().to_string();
    // The browser starts watching while the first disk is being read.
    svc.wait_job(&id, 60, |j| j["state"] == "transferring");

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webui-replication-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut cmd = Command::new("node");
    cmd.arg(browser_dir().join("replication.mjs"))
        .current_dir(browser_dir())
        .env("GODWIT_URL", &svc.url)
        .env("GODWIT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("GODWIT_JOB", &id)
        .env("GODWIT_FAILING_JOB", &broken_id)
        .env("GODWIT_SCREENSHOTS", &shots)
        .env("GODWIT_JOB_TIMEOUT_S", "120");
    // Relative to the repository's root (the script runs in tests/browser).
    if let Ok(dir) = std::env::var("GODWIT_README_IMAGES") {
        cmd.env(
            "GODWIT_README_IMAGES",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir),
        );
    }
    let out = cmd.output().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replication.mjs failed ({}); screenshots in {}\nstdout:\n{stdout}\nstderr:\n{}\nservice stderr:\n{}",
        out.status,
        shots.display(),
        String::from_utf8_lossy(&out.stderr),
        svc.stderr_text()
    );
    let seen: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));

    // Each disk's SHA-256 the page showed is that of the source disk's raw content.
    for (i, disk) in disks.iter().enumerate() {
        let want = sha256_hex(&qemu_raw(disk, work.path()));
        assert_eq!(
            seen["sha256"][i].as_str().unwrap(),
            want,
            "disk {i}: the page's SHA-256 is not qemu-img's raw conversion of the source"
        );
    }
    // The API says the same, per disk.
    let j = svc.ok("GET", &format!("/jobs/{id}"), None);
    assert_eq!(j["replication_state"], "paused", "{j}");
    assert!(j["eta_seconds"].is_null(), "{j}");
    assert!(j["lag_seconds"].as_u64().is_some(), "{j}");
    let api_disks = j["disks"].as_array().unwrap();
    assert_eq!(api_disks.len(), 2, "{j}");
    for (i, d) in api_disks.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["capacity_bytes"], DISK_MIB << 20);
        assert_eq!(d["bytes_done"], d["bytes_total"]);
        assert_eq!(d["sha256"], seen["sha256"][i]);
        assert!(
            d["last_sync"].as_str().is_some_and(|s| !s.is_empty()),
            "{d}"
        );
    }
    let phases = j["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 5, "{j}");
    assert!(
        phases
            .iter()
            .all(|p| p["state"] == "done" && p["at"].is_string())
    );
    let stages = &j["stages"];
    assert!(stages["read_ms"].as_u64().is_some() && stages["send_ms"].as_u64().unwrap() > 0);

    // The failure, typed, in the API and on the page; the raw text kept for support.
    let b = svc.ok("GET", &format!("/jobs/{broken_id}"), None);
    assert_eq!(b["error"]["code"], "source.capacity_mismatch", "{b}");
    assert_eq!(seen["error"]["code"], "source.capacity_mismatch");
    assert_eq!(seen["error"]["message"], b["error"]["message"]);
    assert_eq!(seen["error"]["state"], "stalled");
    assert!(
        b["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("capacityInBytes")),
        "{b}"
    );
    // The log page listed the failure with its code.
    assert!(
        seen["logFailures"]
            .as_str()
            .is_some_and(|l| l.contains("source.capacity_mismatch")),
        "{seen}"
    );
    println!("observed: {seen}");
}
