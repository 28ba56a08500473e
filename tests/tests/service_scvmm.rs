//! `godwit serve` with an SCVMM source, through its REST API over pinned HTTPS: three simulator
//! instances on loopback in this test process — an SCVMM server (127.0.0.1) and two Hyper-V
//! hosts on 127.0.0.2 (hv-a, the Generation 1 VM) and 127.0.0.3 (hv-b, the Generation 2 VM with
//! a dynamic VHDX made by qemu-img), same port (the source's `host_port`).
//!
//! - the VMM server is probed (its certificate shown) and added with it approved; a wrong
//!   approved fingerprint is refused on its field;
//! - the inventory lists both VMs with the host that runs each (and says the host's
//!   certificate is not approved yet);
//! - a job for the VM on hv-b fails without retry, naming hv-b's fingerprint and the call that
//!   approves it, and touches nothing on the host (no checkpoint); approving with a malformed
//!   fingerprint, for an unknown source or for a host of a non-SCVMM source is refused;
//! - approving the wrong certificate for hv-b makes the next run fail on the mismatch (naming
//!   hv-b, nothing touched);
//! - once hv-b is approved the job runs again on hv-b and completes: the raw export is
//!   qemu-img's raw conversion of the VHDX (SHA-256), no checkpoint is left and the ledger is
//!   empty; the host pin is shown with the source;
//! - the guest rewrites 12 MiB and the next run is killed with `kill -9` mid-transfer: the
//!   checkpoint stays on hv-b, the restarted service keeps it (the job runs again), the run
//!   resumes it there (asking VMM for the VM's host) and completes, no checkpoint is left and
//!   the export equals the source with the writes.

use godwit_hyperv_sim::model::SimModel;
use godwit_hyperv_sim::{RunningSim, SimConfig, start};
use godwit_tests::hyperv::*;
use godwit_tests::peers::sha256_file;
use godwit_tests::{service, staging};
use serde_json::json;
use service::{Service, export_and_wait};
use staging::Server;
use std::net::SocketAddr;
use std::path::Path;

fn start_at(dir: &Path, vms_json: &str, listen: SocketAddr) -> Option<RunningSim> {
    std::fs::write(dir.join("vms.json"), vms_json).unwrap();
    start(
        SimConfig {
            user: "Administrator".into(),
            password: PASSWORD.into(),
            model: SimModel::load(dir).unwrap(),
            data_dir: dir.to_path_buf(),
        },
        listen,
    )
    .ok()
}

fn norm(s: &str) -> String {
    s.trim_start_matches("SHA256:")
        .replace(':', "")
        .to_lowercase()
}

#[test]
fn scvmm_source_inventories_through_vmm_and_replicates_on_an_approved_host() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("hv-a"));
    let dir_b = work.path().join("hv-b");
    std::fs::create_dir_all(&dir_b).unwrap();
    std::fs::rename(f.dir.join("web"), dir_b.join("web")).unwrap();
    let vm_a = format!(
        r#"{{"vms":[{{"id":"{DB_ID}","name":"db-gen1","generation":1,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"8.0","checkpoint_type":"Production","guest_vss":false,
   "disks":[{{"controller_type":"IDE","controller_number":0,"controller_location":0,"path":"db/{CHILD}"}}]}}]}}"#
    );
    let vm_b = format!(
        r#"{{"vms":[{{"id":"{WEB_ID}","name":"web-gen2","generation":2,"state":"Running","processor_count":4,
   "memory_startup":4294967296,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}}],
   "faults":{{"command_delay_ms":20}}}}"#
    );
    let (a, b) = (0..20)
        .find_map(|_| {
            let a = start_at(&f.dir, &vm_a, "127.0.0.2:0".parse().unwrap())?;
            let at = SocketAddr::from(([127, 0, 0, 3], a.addr.port()));
            let b = start_at(&dir_b, &vm_b, at)?;
            Some((a, b))
        })
        .expect("two simulated hosts on one port");
    let port = a.addr.port();
    let vmm_dir = work.path().join("vmm");
    std::fs::create_dir_all(&vmm_dir).unwrap();
    let host = |name: &str, ip: &str, dir: &Path| json!({"name": name, "fqdn": ip, "data": dir.to_str().unwrap()});
    let vmm_json = json!({"scvmm": {"server": "vmm01.sim.test", "hosts": [
        host("hv-a", "127.0.0.2", &f.dir),
        host("hv-b", "127.0.0.3", &dir_b),
    ]}});
    let vmm = start_at(
        &vmm_dir,
        &vmm_json.to_string(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();

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
    svc.use_staging_server(&srv.addr, &srv.fingerprint, &srv.token);

    // The VMM server: probed, approved, logged into.
    let address = format!("127.0.0.1:{}", vmm.addr.port());
    let cert = svc.ok(
        "POST",
        "/sources/probe",
        Some(json!({"kind": "scvmm", "address": address})),
    );
    let fp = cert["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(norm(&fp), norm(&vmm.fingerprint.to_string()), "{cert}");
    let add = |approved: &str| {
        svc.api(
            "POST",
            "/sources",
            Some(
                json!({"kind": "scvmm", "address": address, "username": "Administrator",
                        "password": PASSWORD, "approved_fingerprint": approved,
                        "host_port": port}),
            ),
        )
    };
    let (s, e) = add(&b.fingerprint.to_string());
    assert_eq!(s, 422, "a wrong VMM fingerprint: {e}");
    assert!(e.to_string().contains("approved_fingerprint"), "{e}");
    let (s, src) = add(&fp);
    assert_eq!(s, 201, "{src}");
    assert_eq!(src["host_port"], json!(port), "{src}");
    let source = src["id"].as_str().unwrap().to_string();

    // The inventory comes from VMM: every VM with its host.
    let inv = svc.ok("GET", "/inventory", None);
    let vms = inv.as_array().unwrap();
    assert_eq!(vms.len(), 2, "{inv}");
    let by = |n: &str| vms.iter().find(|v| v["name"] == n).unwrap().clone();
    let (db, web) = (by("db-gen1"), by("web-gen2"));
    assert_eq!(db["host"], format!("hv-a (127.0.0.2:{port})"), "{db}");
    assert_eq!(web["host"], format!("hv-b (127.0.0.3:{port})"), "{web}");
    assert_eq!(web["eligible"], true, "{web}");
    assert!(
        web["reasons"].to_string().contains("not approved yet"),
        "{web}"
    );

    // hv-b is not approved: the job fails (no retry), naming its fingerprint; nothing is
    // touched on the host.
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": "web-gen2", "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let failed = svc.wait_job(&id, 60, |j| j["state"] == "failed");
    let why = failed["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let b_fp = b.fingerprint.to_string();
    eprintln!("unapproved host: {why}");
    for needle in [
        "hv-b",
        &format!("127.0.0.3:{port}"),
        &format!("/api/v1/sources/{source}/hosts"),
    ] {
        assert!(why.contains(needle), "{needle:?} not in: {why}");
    }
    assert!(
        norm(&why).contains(&norm(&b_fp)),
        "hv-b's fingerprint not in: {why}"
    );
    assert!(b.checkpoints().is_empty(), "{:?}", b.checkpoints());
    assert_eq!(failed["runs_completed"], json!(0), "{failed}");

    // Approvals that are refused.
    let hosts = format!("/sources/{source}/hosts");
    let (s, e) = svc.api(
        "POST",
        &hosts,
        Some(json!({"host": "hv-b", "approved_fingerprint": "SHA256:zz"})),
    );
    assert_eq!(s, 422, "{e}");
    assert!(e.to_string().contains("approved_fingerprint"), "{e}");
    let (s, e) = svc.api(
        "POST",
        &hosts,
        Some(json!({"host": " ", "approved_fingerprint": b_fp})),
    );
    assert_eq!(s, 422, "{e}");
    assert!(e.to_string().contains("\"host\""), "{e}");
    let (s, e) = svc.api(
        "POST",
        "/sources/src-nope/hosts",
        Some(json!({"host": "hv-b", "approved_fingerprint": b_fp})),
    );
    assert_eq!(s, 404, "{e}");
    // hv-a added as a Hyper-V source of its own: its certificate is the source's, no host pins.
    let hv = svc.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "hyperv", "address": a.addr.to_string(), "username": "Administrator",
                    "password": PASSWORD, "approved_fingerprint": a.fingerprint.to_string()}),
        ),
    );
    let (s, e) = svc.api(
        "POST",
        &format!("/sources/{}/hosts", hv["id"].as_str().unwrap()),
        Some(json!({"host": "hv-a", "approved_fingerprint": a.fingerprint.to_string()})),
    );
    assert_eq!(s, 409, "{e}");
    assert!(e.to_string().contains("not an SCVMM source"), "{e}");

    // Approving the wrong certificate (hv-a's) for hv-b: the run fails on the mismatch.
    svc.ok(
        "POST",
        &hosts,
        Some(json!({"host": "HV-B", "approved_fingerprint": a.fingerprint.to_string()})),
    );
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let failed = svc.wait_job(&id, 60, |j| {
        j["state"] == "failed"
            && j["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("does not match"))
    });
    let why = failed["last_error"].as_str().unwrap();
    eprintln!("wrong pin: {why}");
    assert!(why.contains("hv-b"), "{why}");
    assert!(b.checkpoints().is_empty(), "{:?}", b.checkpoints());

    // Approved (replacing the wrong pin): the next run goes to hv-b and completes.
    let src = svc.ok(
        "POST",
        &hosts,
        Some(json!({"host": "hv-b", "approved_fingerprint": b_fp})),
    );
    assert_eq!(src["host_pins"].as_array().unwrap().len(), 1, "{src}");
    assert_eq!(src["host_pins"][0]["host"], "hv-b", "{src}");
    assert_eq!(
        norm(src["host_pins"][0]["fingerprint"].as_str().unwrap()),
        norm(&b_fp),
        "{src}"
    );
    // The inventory no longer notes hv-b's certificate as unapproved (hv-a's still is).
    let inv = svc.ok("GET", "/inventory", None).to_string();
    assert_eq!(inv.matches("not approved yet").count(), 1, "{inv}");
    let settings = svc.ok("GET", "/settings", None);
    assert_eq!(
        settings["sources"][0]["host_pins"], src["host_pins"],
        "{settings}"
    );
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    assert_eq!(done["runs_completed"], json!(1), "{done}");
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(events.contains("checkpoint taken"), "{events}");
    assert!(events.contains("web.vhdx"), "{events}");
    assert!(b.checkpoints().is_empty(), "{:?}", b.checkpoints());
    assert!(a.checkpoints().is_empty(), "{:?}", a.checkpoints());
    assert_eq!(
        svc.ok("GET", "/ledger", None),
        json!([]),
        "ledger not empty"
    );

    let out = work.path().join("web.raw");
    let ex = export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    let ref_sha = sha256_file(&f.web_ref);
    assert_eq!(
        sha256_file(&out),
        ref_sha,
        "raw export differs from qemu-img's"
    );
    assert_eq!(ex["sha256"], json!(ref_sha), "{ex}");

    // The guest rewrites 12 MiB; the next run (an RCT incremental on hv-b) is killed with
    // kill -9 mid-transfer: the checkpoint stays on hv-b, the restarted service keeps it and
    // the run (on the host VMM names) resumes it and completes.
    let mut changed = vec![0u8; usize::try_from(12 * MIB).unwrap()];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut changed))
        .unwrap();
    for (i, block) in changed.chunks(usize::try_from(MIB).unwrap()).enumerate() {
        b.guest_write(WEB_ID, 0, u64::try_from(i).unwrap() * MIB, block)
            .unwrap();
    }
    let mut expect = std::fs::read(&f.web_ref).unwrap();
    expect[..changed.len()].copy_from_slice(&changed);
    let expect_sha = service::sha256_hex(&expect);
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    svc.wait_job(&id, 60, |j| {
        j["state"] == "transferring" && j["progress"]["throughput_bps"].as_u64().unwrap_or(0) > 0
    });
    svc.kill9();
    let left = b.checkpoints();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].name.starts_with("godwit-"), "{left:?}");
    let svc = svc.restart();
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    assert_eq!(done["runs_completed"], json!(2), "{done}");
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(
        events.contains(&format!("resumed checkpoint {}", left[0].name)),
        "the run did not resume the kept checkpoint on hv-b: {events}"
    );
    assert!(
        events.contains("RCT: ") && events.contains("12.0 MiB)"),
        "the second run was not an RCT incremental of the 12 MiB written: {events}"
    );
    assert!(b.checkpoints().is_empty(), "{:?}", b.checkpoints());
    assert_eq!(
        svc.ok("GET", "/ledger", None),
        json!([]),
        "ledger not empty"
    );
    let out = work.path().join("web2.raw");
    let ex = export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    assert_eq!(
        sha256_file(&out),
        expect_sha,
        "export after the incremental"
    );
    assert_eq!(ex["sha256"], json!(expect_sha), "{ex}");

    // The source password is in no answer and no log.
    for text in [settings.to_string(), svc.log_text(), svc.stderr_text()] {
        assert!(!text.contains(PASSWORD));
    }
}
