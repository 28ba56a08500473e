//! The settings page's items against the real service (issue 18), not the web crate's test
//! backend: vcsim as the source, a `godwit staging serve` as the target.
//! - the bandwidth limit of `PUT /api/v1/settings/transfer` really limits: a run of random data
//!   sends at the limit (±25 %, bytes from the service's own counter, time from its own stage
//!   times and from the wall clock), and without a limit it is much faster;
//! - the run's checklist ends with "snapshot removed" and "replica committed", each with its
//!   time;
//! - a source's credentials: after the vCenter's password changed (vcsim restarted on the same
//!   address and certificate with another password) the next run fails, a wrong new password is
//!   refused on its field and not stored, the right one is accepted and the next run uses it;
//! - changed block tracking per source: off, every run reads the disk whole (bytes vcsim
//!   served) and CBT is never switched on in the VM; on, the next run after a full one reads
//!   only the changed area (the vcsim stub answers QueryChangedDiskAreas as in vmware_cbt), and
//!   the replica's SHA-256 equals the disk's content;
//! - update bundle upload (`POST /api/v1/update`): refused without an update key; a bundle
//!   signed with another key, a tampered one and an oversized one refused on the `bundle`
//!   field, naming why; a good one verified (not installed: not the appliance); nothing is
//!   left in the upload directory;
//! - export progress and cancel: a running export's bytes grow while watched; cancelled
//!   mid-way (the staging server held with SIGSTOP so it cannot finish first) it ends
//!   `cancelled`, its partial file is removed, and the staging replica is untouched (a second
//!   export of it is byte-equal to the source disk);
//! - the privileges check: an account lacking a privilege (the vcsim stub's deny list behind
//!   HasPrivilegeOnEntity) fails the check naming that privilege; the others pass.

use godwit_tests::{service, staging, vcsim};
use serde_json::{Value, json};
use service::{Service, random_disk, setup_vsphere};
use staging::Server;
use std::time::Instant;
use vcsim::{Vcsim, VcsimOptions, vm_by_name};

/// The service's own count of bytes sent (`godwit_transferred_bytes_total` in /metrics).
fn bytes_sent(svc: &Service) -> u64 {
    let (status, body) = svc.get_bytes("/metrics");
    assert_eq!(status, 200, "GET /metrics");
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("godwit_transferred_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no godwit_transferred_bytes_total in /metrics:\n{text}"))
}

/// One run of a one-time job of `vm`: (bytes the service sent, the service's transfer time in
/// seconds, the wall-clock seconds from creation to completion, the completed job).
fn timed_run(svc: &Service, source: &str, vm: &str) -> (u64, f64, f64, Value) {
    let before = bytes_sent(svc);
    let t0 = Instant::now();
    let j = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": vm, "schedule": {"kind": "once"}})),
    );
    let id = j["id"].as_str().unwrap().to_string();
    let done = svc.wait_job(&id, 120, |j| {
        assert_ne!(j["state"], "failed", "the job failed: {j}");
        j["state"] == "completed"
    });
    let wall = t0.elapsed().as_secs_f64();
    let sent = bytes_sent(svc) - before;
    let transfer_ms = done["stages"]["wall_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stage times: {done}"));
    #[allow(clippy::cast_precision_loss)]
    let transfer = transfer_ms as f64 / 1000.0;
    (sent, transfer, wall, done)
}

#[test]
fn bandwidth_limit_of_the_settings_page_holds_and_the_checklist_has_its_end_times() {
    const MIB: u64 = 16;
    const LIMIT_MBPS: u64 = 16; // 2,000,000 bytes/s
    let limit = (LIMIT_MBPS * 125_000) as f64;
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    random_disk(&v, "DC0_H0_VM0", MIB);
    random_disk(&v, "DC0_H0_VM1", MIB);
    let staging_dir = work.path().join("staging");
    std::fs::create_dir_all(&staging_dir).unwrap();
    let srv = Server::start(&staging_dir, "127.0.0.1:0", &[]);
    // Small chunks: the limiter lets the first chunk go at once, so its share stays small.
    let svc = Service::start_as_admin(work.path(), &["--chunk-size", "256K"]);
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );

    // No limit set.
    let t = svc.ok("GET", "/settings/transfer", None);
    assert_eq!(t["bandwidth_limit_mbps"], Value::Null, "{t}");
    let (free_sent, free_transfer, free_wall, _) = timed_run(&svc, &source, "DC0_H0_VM0");
    #[allow(clippy::cast_precision_loss)]
    let free_rate = free_sent as f64 / free_transfer.max(0.001);
    eprintln!(
        "no limit: {free_sent} bytes sent in {free_transfer:.2} s (wall {free_wall:.2} s): {:.2} MB/s",
        free_rate / 1e6
    );
    assert!(
        free_sent >= MIB << 20,
        "random data is sent whole: {free_sent}"
    );

    // A limit of 16 Mbit/s, all day (no business-hours limit).
    let put = svc.ok(
        "PUT",
        "/settings/transfer",
        Some(
            json!({"bandwidth_limit_mbps": LIMIT_MBPS, "business_hours_limit_mbps": null,
                    "business_hours_start": 8, "business_hours_end": 18,
                    "max_concurrent_jobs": 2}),
        ),
    );
    assert_eq!(put["bandwidth_limit_mbps"], LIMIT_MBPS, "{put}");
    let (sent, transfer, wall, done) = timed_run(&svc, &source, "DC0_H0_VM1");
    #[allow(clippy::cast_precision_loss)]
    let (rate, wall_rate) = (sent as f64 / transfer.max(0.001), sent as f64 / wall);
    eprintln!(
        "limit {:.2} MB/s: {sent} bytes sent in {transfer:.2} s (wall {wall:.2} s): {:.2} MB/s, wall-clock {:.2} MB/s",
        limit / 1e6,
        rate / 1e6,
        wall_rate / 1e6
    );
    assert!(sent >= MIB << 20, "random data is sent whole: {sent}");
    assert!(
        (0.75 * limit..=1.25 * limit).contains(&rate),
        "the service's own rate {:.2} MB/s is not within 25 % of the limit {:.2} MB/s",
        rate / 1e6,
        limit / 1e6
    );
    assert!(
        wall_rate <= 1.25 * limit,
        "wall-clock rate {:.2} MB/s above the limit {:.2} MB/s",
        wall_rate / 1e6,
        limit / 1e6
    );
    assert!(
        free_rate > 2.0 * rate,
        "without a limit the run is not much faster: {:.2} MB/s vs {:.2} MB/s",
        free_rate / 1e6,
        rate / 1e6
    );

    // The checklist of the completed run: every phase done, each with its time, in order.
    let phases = done["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "snapshot taken",
            "disk 0 read and sent",
            "snapshot removed",
            "replica committed"
        ],
        "{done}"
    );
    let mut last = String::new();
    for p in phases {
        assert_eq!(p["state"], "done", "{p}");
        let at = p["at"]
            .as_str()
            .unwrap_or_else(|| panic!("phase without a time: {p}"));
        assert!(at >= last.as_str(), "phases out of time order: {phases:?}");
        last = at.to_string();
    }
}

fn source_view(svc: &Service, id: &str) -> Value {
    let all = svc.ok("GET", "/settings", None)["sources"].clone();
    all.as_array()
        .and_then(|a| a.iter().find(|s| s["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no source {id}: {all}"))
}

#[test]
fn new_source_credentials_are_verified_stored_and_used_by_the_next_run() {
    const VM: &str = "DC0_H0_VM0";
    let work = tempfile::tempdir().unwrap();
    let tls = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", godwit_tests::netcheck::free_port());
    let start = |password: &str| {
        let cred = format!("{}:{password}", vcsim::USER);
        let v = Vcsim::start_opts(&VcsimOptions {
            listen: Some(&listen),
            tls_dir: Some(tls.path()),
            cred: Some(&cred),
            ..VcsimOptions::default()
        });
        // random_disk, logged in with this password.
        let (ds, dir) = v.datastore();
        let vmdir = dir.join(VM);
        std::fs::create_dir_all(&vmdir).unwrap();
        let disk = vmdir.join("data.vmdk");
        vcsim::qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            disk.to_str().unwrap(),
            &(4u64 << 20).to_string(),
        ]);
        service::overwrite_random(&vmdir.join("data-flat.vmdk"), 4);
        let s = godwit_vmware::session::Session::connect(&v.connect_opts(password)).unwrap();
        vcsim::set_vm_disks(&s, VM, &[(&format!("[{ds}] {VM}/data.vmdk"), 4 << 20)]);
        v
    };
    let v = start(vcsim::PASSWORD);
    let staging_dir = work.path().join("staging");
    std::fs::create_dir_all(&staging_dir).unwrap();
    let srv = Server::start(&staging_dir, "127.0.0.1:0", &[]);
    let svc = Service::start_as_admin(work.path(), &["--chunk-size", "256K", "--no-cbt"]);
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    let j = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = j["id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 90, |j| j["state"] == "completed");

    // The vCenter's password changes (same address, same certificate).
    v.kill();
    let v = start("rotated-Pw-2");
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let failed = svc.wait_job(&id, 90, |j| {
        j["state"] == "retry_wait" || j["state"] == "failed"
    });
    assert_eq!(failed["runs_completed"], 1, "{failed}");
    eprintln!("run with the old password: {}", failed["error"]);

    // A wrong password: refused on its field, nothing stored.
    let (status, body) = svc.api(
        "PUT",
        &format!("/sources/{source}/credentials"),
        Some(json!({"username": vcsim::USER, "password": "not-the-password"})),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("password") && body.to_string().contains("rejected"),
        "the refusal names the field and why: {body}"
    );
    assert!(
        !body.to_string().contains("not-the-password"),
        "the refusal echoes the password: {body}"
    );
    // Empty fields are refused by name.
    let (status, body) = svc.api(
        "PUT",
        &format!("/sources/{source}/credentials"),
        Some(json!({"username": " ", "password": ""})),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("username"), "{body}");

    // The right one: accepted, and the next run (run now) completes with it.
    let ok = svc.ok(
        "PUT",
        &format!("/sources/{source}/credentials"),
        Some(json!({"username": vcsim::USER, "password": "rotated-Pw-2"})),
    );
    assert_eq!(ok["username"], vcsim::USER, "{ok}");
    assert!(
        !ok.to_string().contains("rotated-Pw-2"),
        "password shown: {ok}"
    );
    assert_eq!(source_view(&svc, &source)["username"], vcsim::USER);
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let done = svc.wait_job(&id, 90, |j| {
        j["state"] == "completed" && j["runs_completed"] == 2
    });
    assert_eq!(done["error"], Value::Null, "{done}");
    assert!(
        !svc.log_text().contains("rotated-Pw-2") && !svc.stderr_text().contains("rotated-Pw-2"),
        "the password was logged"
    );
    drop(v);
}

#[test]
fn the_privileges_check_names_the_privilege_the_account_lacks() {
    const MISSING: &str = "VirtualMachine.State.RemoveSnapshot";
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let staging_dir = work.path().join("staging");
    std::fs::create_dir_all(&staging_dir).unwrap();
    let srv = Server::start(&staging_dir, "127.0.0.1:0", &[]);
    let svc = Service::start_as_admin(work.path(), &[]);
    setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    let privileges = |checks: &Value| -> Vec<Value> {
        checks
            .as_array()
            .unwrap_or_else(|| panic!("checks: {checks}"))
            .iter()
            .filter(|c| c["check"] == "privilege")
            .cloned()
            .collect()
    };
    // Everything granted: every privilege passes.
    let all = privileges(&svc.ok("POST", "/checks", None));
    assert_eq!(all.len(), godwit_vmware::privileges::ALL.len(), "{all:?}");
    assert!(all.iter().all(|c| c["status"] == "pass"), "{all:?}");

    v.stub(&format!("/stub/privileges?deny={MISSING}"), Some(""));
    let checks = svc.ok("POST", "/checks", None);
    let p = privileges(&checks);
    let failed: Vec<&Value> = p.iter().filter(|c| c["status"] != "pass").collect();
    assert_eq!(failed.len(), 1, "exactly the missing one fails: {p:?}");
    let f = failed[0];
    assert_eq!(f["status"], "fail", "{f}");
    assert!(f["target"].as_str().unwrap().contains(MISSING), "{f}");
    assert!(
        f["remediation"].as_str().unwrap().contains(MISSING),
        "the remedy names the privilege: {f}"
    );
    // The checks stay visible: GET /api/v1/checks shows the same failure.
    let kept = svc.ok("GET", "/checks", None);
    assert!(
        privileges(&kept["results"])
            .iter()
            .any(|c| c["status"] == "fail" && c["target"].as_str().unwrap().contains(MISSING)),
        "{kept}"
    );
}

/// Run the job now and wait for its `n`th completed run; returns the job.
fn run_to(svc: &Service, id: &str, n: u64) -> Value {
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    svc.wait_job(id, 90, |j| {
        assert_ne!(j["state"], "failed", "the job failed: {j}");
        j["state"] == "completed" && j["runs_completed"] == n
    })
}

#[test]
fn cbt_per_source_off_reads_every_disk_whole_on_reads_the_changed_areas() {
    const VM: &str = "DC0_H0_VM0";
    const MIB: u64 = 8;
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let descriptor = random_disk(&v, VM, MIB);
    let flat = descriptor.with_file_name("data-flat.vmdk");
    let vm = vm_by_name(&v.connect(), VM);
    let (moref, key) = (vm.moref.value.clone(), vm.disks[0].key);
    let change_id = |id: &str| {
        v.stub(
            "/stub/changeid",
            Some(&format!(
                r#"{{"vm":"{moref}","key":{key},"change_id":"{id}"}}"#
            )),
        );
    };
    let staging_dir = work.path().join("staging");
    std::fs::create_dir_all(&staging_dir).unwrap();
    let srv = Server::start(&staging_dir, "127.0.0.1:0", &[]);
    // The service's default: CBT on.
    let svc = Service::start_as_admin(work.path(), &["--chunk-size", "256K"]);
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    assert_eq!(source_view(&svc, &source)["cbt"], true);
    let off = svc.ok(
        "PUT",
        &format!("/sources/{source}/cbt"),
        Some(json!({"enabled": false})),
    );
    assert_eq!(off["cbt"], false, "{off}");
    assert_eq!(source_view(&svc, &source)["cbt"], false);
    let (status, body) = svc.api(
        "PUT",
        "/sources/no-such-source/cbt",
        Some(json!({"enabled": true})),
    );
    assert_eq!(status, 404, "{body}");
    change_id("d-1");

    // Off: two runs, each reads the whole disk; CBT stays off in the VM.
    let (id, first) = served(&v, || {
        let j = svc.ok(
            "POST",
            "/jobs",
            Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
        );
        let id = j["id"].as_str().unwrap().to_string();
        svc.wait_job(&id, 90, |j| j["state"] == "completed");
        id
    });
    let (_, second) = served(&v, || run_to(&svc, &id, 2));
    eprintln!("CBT off: run 1 read {first} bytes, run 2 read {second} bytes");
    for b in [first, second] {
        assert!(
            b >= MIB << 20,
            "a run with CBT off read {b} bytes of {MIB} MiB"
        );
    }
    assert!(
        !vm_by_name(&v.connect(), VM).cbt_enabled,
        "CBT was switched on in the VM although the source has it off"
    );

    // On: the first run reads everything and records the change id; the guest writes 64 KiB;
    // the next run reads only that.
    let on = svc.ok(
        "PUT",
        &format!("/sources/{source}/cbt"),
        Some(json!({"enabled": true})),
    );
    assert_eq!(on["cbt"], true, "{on}");
    let (_, third) = served(&v, || run_to(&svc, &id, 3));
    assert!(
        third >= MIB << 20,
        "the first run with CBT read {third} bytes"
    );
    assert!(
        vm_by_name(&v.connect(), VM).cbt_enabled,
        "CBT was not switched on in the VM"
    );
    let (at, len) = (1_048_576 + 4096, 65_536u64);
    run_ok_dd(&flat, at, len);
    v.stub(
        "/stub/cbt",
        Some(&format!(
            r#"{{"chunk":1048576,"areas":{{"d-1":[[{at},{len}]]}}}}"#
        )),
    );
    change_id("d-2");
    let (done, fourth) = served(&v, || run_to(&svc, &id, 4));
    eprintln!("CBT on: run 3 read {third} bytes, run 4 read {fourth} bytes ({len} changed)");
    assert!(fourth >= len, "run 4 read {fourth} bytes < {len} changed");
    assert!(
        fourth < 1 << 20,
        "run 4 with CBT read {fourth} bytes for {len} changed"
    );
    assert_eq!(done["error"], Value::Null, "{done}");
    // The replica after the incremental equals the disk (an incremental records no SHA-256 of
    // the whole disk, so it is exported and hashed).
    let want = service::sha256_hex(&std::fs::read(&flat).unwrap());
    let out = work.path().join("after-cbt.raw");
    let ex = service::export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    assert_eq!(ex["sha256"], want, "{ex}");
    assert_eq!(service::sha256_hex(&std::fs::read(&out).unwrap()), want);
}

/// What `f` returns and the bytes vcsim's `/folder` served meanwhile (the bytes the run read).
fn served<T>(v: &Vcsim, f: impl FnOnce() -> T) -> (T, u64) {
    v.stub("/stub/reset-stats", Some("{}"));
    let out = f();
    (out, v.folder_stats().0)
}

/// Overwrite `len` bytes at `at` of a file with random data (a guest write).
fn run_ok_dd(path: &std::path::Path, at: u64, len: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut buf = vec![0u8; usize::try_from(len).unwrap()];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = u8::try_from((i * 7 + 13) % 251).unwrap();
    }
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&buf).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn update_bundles_are_verified_before_anything_is_installed() {
    use godwit_image::bundle;
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let key = bundle::generate_key().unwrap();
    let pubkey = d.join("update.pub");
    std::fs::write(&pubkey, hex::encode(bundle::public_key(&key).unwrap())).unwrap();
    std::fs::write(d.join("vmlinuz"), vec![7u8; 300_000]).unwrap();
    std::fs::write(d.join("initrd"), vec![9u8; 700_000]).unwrap();
    let make = |key: &[u8]| {
        let mut out = Vec::new();
        bundle::write(
            &mut out,
            key,
            "1.2.3",
            &[
                ("vmlinuz", &d.join("vmlinuz")),
                ("initrd.img", &d.join("initrd")),
            ],
        )
        .unwrap();
        out
    };
    let good = make(&key);
    let field_message = |v: &Value| -> String {
        assert_eq!(v["fields"][0]["field"], "bundle", "{v}");
        v["fields"][0]["message"].as_str().unwrap().to_string()
    };

    // Without an update key nothing can be verified: refused, saying so.
    std::fs::create_dir_all(d.join("nokey")).unwrap();
    let svc = Service::start_as_admin(d, &["--update-key", pubkey.to_str().unwrap()]);
    let nokey = Service::start_as_admin(&d.join("nokey"), &[]);
    let (status, body) = nokey.post_raw("/update", good.clone());
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("no update key"), "{body}");
    drop(nokey);

    // Signed with another key.
    let (status, body) = svc.post_raw("/update", make(&bundle::generate_key().unwrap()));
    assert_eq!(status, 422, "{body}");
    let m = field_message(&body);
    assert!(m.contains("signature does not verify"), "{m}");
    // Tampered: one byte of the initramfs.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 100] ^= 0x55;
    let (status, body) = svc.post_raw("/update", bad);
    assert_eq!(status, 422, "{body}");
    let m = field_message(&body);
    assert!(m.contains("initrd.img: SHA-256"), "{m}");
    // Not a bundle, and empty.
    let (status, body) = svc.post_raw("/update", b"hello, this is not a bundle".to_vec());
    assert_eq!(status, 422, "{body}");
    assert!(field_message(&body).contains("bad magic"), "{body}");
    let (status, body) = svc.post_raw("/update", Vec::new());
    assert_eq!(status, 422, "{body}");
    assert!(field_message(&body).contains("empty"), "{body}");
    // Larger than a bundle can be: refused from its declared length, before it is read.
    let (status, body) = svc.post_declared("/update", bundle::MAX_BUNDLE + 1);
    assert_eq!(status, 422, "{body}");
    assert!(
        field_message(&body).contains("larger than an update bundle can be"),
        "{body}"
    );

    // The good one: verified, not installed (this is not the appliance).
    let (status, body) = svc.post_raw("/update", good.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "1.2.3", "{body}");
    assert_eq!(body["installed"], false, "{body}");
    assert_eq!(body["bytes"], good.len(), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not installed"),
        "{body}"
    );
    // Nothing is left behind in the upload directory.
    let left: Vec<_> = std::fs::read_dir(svc.data.join("updates"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "upload files left: {left:?}");
}

fn export_view(svc: &Service, id: &Value) -> Value {
    let all = svc.ok("GET", "/exports", None);
    all.as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == *id))
        .cloned()
        .unwrap_or_else(|| panic!("no export {id}: {all}"))
}

#[test]
fn an_export_shows_progress_and_a_cancel_mid_way_removes_its_file_and_keeps_staging() {
    const VM: &str = "DC0_H0_VM0";
    const MIB: u64 = 32;
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let descriptor = random_disk(&v, VM, MIB);
    let flat = descriptor.with_file_name("data-flat.vmdk");
    let staging_dir = work.path().join("staging");
    std::fs::create_dir_all(&staging_dir).unwrap();
    let srv = Server::start(&staging_dir, "127.0.0.1:0", &[]);
    let svc = Service::start_as_admin(work.path(), &["--chunk-size", "1M", "--no-cbt"]);
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    let j = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let job = j["id"].as_str().unwrap().to_string();
    svc.wait_job(&job, 120, |j| j["state"] == "completed");
    let staged = |dir: &std::path::Path| -> Vec<(std::path::PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    out.push((e.path(), m.len()));
                }
            }
        }
        out.sort();
        out
    };
    let staging_before = staged(&staging_dir);

    // A compressed VMDK export: watch its bytes grow, then hold the staging server and cancel.
    let ex = svc.ok(
        "POST",
        "/exports",
        Some(json!({"job_id": job, "disk": 0, "format": "vmdk", "destination": "cancelled.vmdk"})),
    );
    let id = ex["id"].clone();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = export_view(&svc, &id);
        assert_eq!(
            e["state"], "running",
            "the export ended before it was cancelled: {e}"
        );
        let done = e["bytes_done"].as_u64().unwrap_or(0);
        if done > 0 && seen.last() != Some(&done) {
            assert_eq!(e["bytes_total"], MIB << 20, "{e}");
            seen.push(done);
        }
        assert!(Instant::now() < deadline, "no progress on the export: {e}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = srv.child.id().to_string();
    godwit_tests::peers::run_ok(std::process::Command::new("kill").args(["-STOP", &pid]));
    let (status, body) = svc.api(
        "POST",
        &format!("/exports/{}/cancel", id.as_str().unwrap()),
        None,
    );
    godwit_tests::peers::run_ok(std::process::Command::new("kill").args(["-CONT", &pid]));
    assert!((200..300).contains(&status), "cancel: {status} {body}");
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let end = loop {
        let e = export_view(&svc, &id);
        if e["state"] != "running" {
            break e;
        }
        assert!(Instant::now() < deadline, "the export did not stop: {e}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    eprintln!("export progress seen: {seen:?}; ended {}", end["state"]);
    assert_eq!(end["state"], "cancelled", "{end}");
    assert!(
        end["bytes_done"].as_u64().unwrap_or(0) < MIB << 20,
        "the cancelled export read everything: {end}"
    );
    // The state says cancelled at once; the export's thread stops at its next chunk and
    // removes what it wrote.
    let exports = svc.data.join("exports");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left: Vec<_> = std::fs::read_dir(&exports)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partial export output left: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(staged(&staging_dir), staging_before, "staging changed");

    // The replica is untouched: a raw export of it equals the source disk.
    let done = service::export_and_wait(
        &svc,
        &job,
        "raw",
        work.path().join("after.raw").to_str().unwrap(),
    );
    let want = service::sha256_hex(&std::fs::read(&flat).unwrap());
    assert_eq!(done["sha256"], want, "{done}");
    assert_eq!(
        service::sha256_hex(&std::fs::read(work.path().join("after.raw")).unwrap()),
        want
    );
}
