//! `godwit serve` with a Hyper-V source, through its REST API over pinned HTTPS: the Hyper-V
//! simulator (WinRM over HTTPS, running in this test process so the test can see its
//! checkpoints) holds a Generation 2 VM whose disk is a dynamic VHDX made by qemu-img, and a
//! `godwit staging serve` is the staging target.
//!
//! - the source is probed (certificate shown), approved and logged into; the inventory lists
//!   the VM as eligible; a job for a VM that does not exist is refused on the `vm` field;
//! - the job runs the same cycle as `godwit replicate --source hyperv://` (ledgered `godwit-`
//!   checkpoint, the frozen disk's data pushed by the host to the service's own HTTPS port —
//!   `service_hyperv_push.rs` checks the push itself —, checkpoint removed) to 100 %; exports (raw and
//!   VHDX) hold qemu-img's raw conversion of the VHDX (content SHA-256), and the file SHA-256
//!   shown is `sha256sum` of the file; no checkpoint is left and the ledger is empty;
//! - the guest rewrites 12 MiB; the next run is a Resilient Change Tracking incremental of
//!   those ranges (as `godwit replicate` does), killed with `kill -9` mid-transfer: the
//!   checkpoint stays, the restarted service keeps it (the job runs again), the run resumes it
//!   and completes, and the export equals the source with the writes;
//! - the RCT ids are made ones the host refuses: the next run reads the disk in full and says
//!   so in the job's timeline (`FULL RE-READ instead of an incremental`);
//! - a host hiccup once the checkpoint exists: the failed run keeps its checkpoint for the
//!   retry (the ledger says so); cancelling the job removes it.

use godwit_hyperv_sim::model::SimModel;
use godwit_hyperv_sim::{RunningSim, SimConfig, start};
use godwit_tests::peers::sha256_file;
use godwit_tests::{service, staging};
use serde_json::json;
use service::{Service, export_and_wait};
use staging::Server;
use std::path::Path;
use std::process::Command;

const SIM_PASSWORD: &str = "S3cret-sim";
const VM: &str = "web-gen2";
const VM_ID: &str = "6c1f2a8e-0000-4000-8000-0000000000b2";
const MIB: u64 = 1 << 20;
const DISK_MIB: u64 = 24;

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs (make deps)");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `host/web/web.vhdx` (dynamic, random data in most of it) and its raw reference.
fn fixture(host: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(host.join("web")).unwrap();
    let raw = host.join("web.src.raw");
    std::fs::write(&raw, vec![0u8; usize::try_from(DISK_MIB * MIB).unwrap()]).unwrap();
    // Random data except for the last 4 MiB (left zero: the VHDX has unallocated blocks).
    service::overwrite_random(&raw, DISK_MIB - 4);
    let vhdx = host.join("web/web.vhdx");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vhdx",
        "-o",
        "subformat=dynamic",
        raw.to_str().unwrap(),
        vhdx.to_str().unwrap(),
    ]);
    let reference = host.join("web.ref.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "vhdx",
        "-O",
        "raw",
        vhdx.to_str().unwrap(),
        reference.to_str().unwrap(),
    ]);
    reference
}

fn start_sim(host: &Path, command_delay_ms: u64) -> RunningSim {
    let json = format!(
        r#"{{"vms":[
 {{"id":"{VM_ID}","name":"{VM}","generation":2,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}}],
 "faults":{{"command_delay_ms":{command_delay_ms}}}}}"#
    );
    std::fs::write(host.join("vms.json"), json).unwrap();
    start(
        SimConfig {
            user: "Administrator".into(),
            password: SIM_PASSWORD.into(),
            model: SimModel::load(host).unwrap(),
            data_dir: host.to_path_buf(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn no_checkpoint_and_empty_ledger(svc: &Service, sim: &RunningSim) {
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(
        svc.ok("GET", "/ledger", None),
        json!([]),
        "ledger not empty"
    );
}

#[test]
fn hyperv_job_replicates_exports_identical_disks_and_sweeps_after_kill9() {
    let work = tempfile::tempdir().unwrap();
    let host = work.path().join("host");
    let reference = fixture(&host);
    let ref_sha = sha256_file(&reference);
    // Each WinRM command takes 20 ms more: the run lasts long enough to be killed mid-way.
    let sim = start_sim(&host, 20);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let mut svc = Service::start_as_admin(
        work.path(),
        &[
            "--chunk-size",
            "256K",
            "--bwlimit",
            "6M",
            "--retry-base-secs",
            "1",
        ],
    );
    svc.ok(
        "PUT",
        "/settings/network",
        Some(json!({"hostname": "godwit-hv", "mode": "dhcp",
                    "dns_servers": [], "ntp_servers": [], "proxy": null})),
    );
    svc.use_staging_server(&srv.addr, &srv.fingerprint, &srv.token);
    let address = format!("127.0.0.1:{}", sim.addr.port());
    let cert = svc.ok(
        "POST",
        "/sources/probe",
        Some(json!({"kind": "hyperv", "address": address})),
    );
    let fp = cert["fingerprint"].as_str().unwrap().to_string();
    let norm = |s: &str| {
        s.trim_start_matches("SHA256:")
            .replace(':', "")
            .to_lowercase()
    };
    assert_eq!(norm(&fp), norm(&sim.fingerprint.to_string()), "{cert}");
    let src = svc.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "hyperv", "address": address, "username": "Administrator",
                    "password": SIM_PASSWORD, "approved_fingerprint": fp}),
        ),
    );
    let source = src["id"].as_str().unwrap().to_string();
    let inv = svc.ok("GET", "/inventory", None);
    let vm = inv
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == VM)
        .unwrap_or_else(|| panic!("{VM} not in the inventory: {inv}"));
    assert_eq!(vm["eligible"], true, "{vm}");

    // A VM the host does not have is refused on its field.
    let (s, e) = svc.api(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": "no-such-vm", "schedule": {"kind": "once"}})),
    );
    assert_eq!(s, 422, "{e}");
    assert!(e.to_string().contains("\"vm\""), "{e}");

    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    let p = &done["progress"];
    assert!(
        p["bytes_total"].as_u64() == Some(DISK_MIB * MIB) && p["bytes_done"] == p["bytes_total"],
        "progress at the end: {p}"
    );
    no_checkpoint_and_empty_ledger(&svc, &sim);
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(events.contains("checkpoint taken"), "{events}");

    // Raw export: file = content = qemu-img's raw of the VHDX.
    let out = work.path().join("web.raw");
    let ex = export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    assert_eq!(
        sha256_file(&out),
        ref_sha,
        "raw export differs from the source"
    );
    assert_eq!(ex["sha256"], json!(ref_sha), "{ex}");
    assert_eq!(ex["file_sha256"], json!(ref_sha), "{ex}");
    // VHDX export: the file's own hash differs from its content's; both shown right.
    let out = work.path().join("web.vhdx");
    let ex = export_and_wait(&svc, &id, "vhdx", out.to_str().unwrap());
    assert_eq!(ex["sha256"], json!(ref_sha), "content SHA-256: {ex}");
    assert_eq!(
        ex["file_sha256"],
        json!(sha256_file(&out)),
        "file SHA-256: {ex}"
    );
    assert_ne!(ex["file_sha256"], ex["sha256"]);
    let back = work.path().join("web.back.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "vhdx",
        "-O",
        "raw",
        out.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert_eq!(
        sha256_file(&back),
        ref_sha,
        "qemu-img reads the VHDX export differently"
    );

    // The guest rewrites the first 12 MiB; the next run is an RCT incremental of those, and
    // it is killed mid-transfer: the checkpoint stays (recorded in the ledger).
    let mut changed = vec![0u8; usize::try_from(12 * MIB).unwrap()];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut changed))
        .unwrap();
    for (i, block) in changed.chunks(usize::try_from(MIB).unwrap()).enumerate() {
        sim.guest_write(VM_ID, 0, u64::try_from(i).unwrap() * MIB, block)
            .unwrap();
    }
    let mut expect = std::fs::read(&reference).unwrap();
    expect[..changed.len()].copy_from_slice(&changed);
    let expect_sha = service::sha256_hex(&expect);
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    svc.wait_job(&id, 60, |j| {
        j["state"] == "transferring" && j["progress"]["throughput_bps"].as_u64().unwrap_or(0) > 0
    });
    svc.kill9();
    let left = sim.checkpoints();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].name.starts_with("godwit-"), "{left:?}");
    // The restart keeps it (the job runs again): the run starts again, resumes it and
    // completes.
    let svc = svc.restart();
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    assert_eq!(done["runs_completed"], json!(2), "{done}");
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(events.contains("the run starts again"), "{events}");
    assert!(
        events.contains(&format!("resumed checkpoint {}", left[0].name)),
        "the run did not resume the kept checkpoint: {events}"
    );
    assert!(
        events.contains("RCT: ") && events.contains("12.0 MiB)"),
        "the second run was not an RCT incremental of the 12 MiB written: {events}"
    );
    no_checkpoint_and_empty_ledger(&svc, &sim);
    let out = work.path().join("web2.raw");
    let ex = export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    assert_eq!(
        sha256_file(&out),
        expect_sha,
        "export after the incremental"
    );
    assert_eq!(ex["sha256"], json!(expect_sha));

    // A forced RCT failure: the host refuses the stored ids, the run reads everything again
    // and the job's timeline says so.
    let rct = svc.data.join("jobs").join(&id).join("hyperv-rct.json");
    let text = std::fs::read_to_string(&rct).unwrap();
    let broken: String = text
        .split('"')
        .map(|part| {
            if part.starts_with("rctX:") {
                "rctX:00000000-dead:0".to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\"");
    assert_ne!(broken, text, "no RCT id in {text}");
    std::fs::write(&rct, broken).unwrap();
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let done = svc.wait_job(&id, 120, |j| {
        j["state"] == "completed" && j["runs_completed"] == json!(3)
    });
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(
        events.contains(
            "disk 0: FULL RE-READ instead of an incremental: Resilient Change Tracking failed"
        ) && events.contains("32773"),
        "the forced RCT failure is not in the timeline: {events}"
    );
    no_checkpoint_and_empty_ledger(&svc, &sim);
    let _ = done;

    // A host hiccup once the checkpoint exists (the next WinRM command fails): the failed run
    // keeps its checkpoint for the retry (the ledger says so)...
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let t0 = std::time::Instant::now();
    while sim.checkpoints().is_empty() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "no checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    sim.fail_next_commands(1, 2_150_858_751);
    let t0 = std::time::Instant::now();
    loop {
        let ledger = svc.ok("GET", "/ledger", None).to_string();
        if ledger.contains("kept for the retry") {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "no kept checkpoint: {ledger} {}",
            svc.ok("GET", &format!("/jobs/{id}/events"), None)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kept = sim.checkpoints();
    assert_eq!(kept.len(), 1, "{kept:?}");
    // ...and cancelling the job (waiting for its retry, or already in it) removes it. (If the
    // retry won the race and completed, it removed the checkpoint itself.)
    let (code, _) = svc.api("POST", &format!("/jobs/{id}/cancel"), None);
    assert!(code == 200 || code == 204 || code == 409, "cancel: {code}");
    let t0 = std::time::Instant::now();
    while !sim.checkpoints().is_empty() || svc.ok("GET", "/ledger", None) != json!([]) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "a cancelled job kept its checkpoint: {:?} {}",
            sim.checkpoints(),
            svc.ok("GET", "/ledger", None)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    eprintln!("after the hiccup and the cancel: {events}");
    // The source password is in no answer and no log.
    for text in [
        svc.ok("GET", "/settings", None).to_string(),
        svc.log_text(),
        svc.stderr_text(),
    ] {
        assert!(!text.contains(SIM_PASSWORD));
    }
}

/// The service's inventory of a host with one VM whose VHD is gone and one whose only disk is
/// pass-through disk 0: every VM listed (the host's inventory does not fail), each of the two
/// not eligible with its disk's reason, the good VM eligible.
#[test]
fn a_missing_vhd_or_pass_through_disk_0_does_not_fail_the_hosts_inventory() {
    let work = tempfile::tempdir().unwrap();
    let host = work.path().join("host");
    fixture(&host);
    std::fs::write(
        host.join("vms.json"),
        format!(
            r#"{{"vms":[
 {{"id":"{VM_ID}","name":"{VM}","generation":2,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}},
 {{"id":"6c1f2a8e-0000-4000-8000-0000000000c3","name":"lost-vhd","generation":2,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"lost/lost.vhdx"}}]}},
 {{"id":"6c1f2a8e-0000-4000-8000-0000000000c4","name":"passthru-0","generation":1,"state":"Off","processor_count":2,
   "memory_startup":2147483648,"version":"8.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"IDE","controller_number":0,"controller_location":0,"disk_number":0}}]}}]}}"#
        ),
    )
    .unwrap();
    let sim = start(
        SimConfig {
            user: "Administrator".into(),
            password: SIM_PASSWORD.into(),
            model: SimModel::load(&host).unwrap(),
            data_dir: host.clone(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let svc = Service::start_as_admin(work.path(), &[]);
    let address = format!("127.0.0.1:{}", sim.addr.port());
    let cert = svc.ok(
        "POST",
        "/sources/probe",
        Some(json!({"kind": "hyperv", "address": address})),
    );
    svc.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "hyperv", "address": address, "username": "Administrator",
                    "password": SIM_PASSWORD, "approved_fingerprint": cert["fingerprint"]}),
        ),
    );
    let inv = svc.ok("GET", "/inventory", None);
    let vms = inv.as_array().unwrap();
    let by = |n: &str| {
        vms.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("{n} not in the inventory: {inv}"))
    };
    assert_eq!(vms.len(), 3, "{inv}");
    assert_eq!(by(VM)["eligible"], true, "{inv}");
    let lost = by("lost-vhd");
    assert_eq!(lost["eligible"], false, "{lost}");
    assert!(
        lost["reasons"].to_string().contains("Get-VHD"),
        "the missing VHD's own error: {lost}"
    );
    let pt = by("passthru-0");
    assert_eq!(pt["eligible"], false, "{pt}");
    assert!(pt["reasons"].to_string().contains("pass-through"), "{pt}");
}
