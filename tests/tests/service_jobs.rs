//! The job engine of `godwit serve` end to end against vcsim and a staging server, through the
//! REST API:
//! - the K-concurrent limit: K+1 one-time jobs created at once never run more than K at a
//!   time (one waits in `scheduled` while K run), and all complete;
//! - cancel of a RUNNING job: the state becomes `cancelled`, the snapshot is removed in vcsim
//!   and the ledger is empty;
//! - a periodic schedule: the next run happens by itself (the test shortens the schedule's
//!   hour with the hidden `--schedule-hour-secs`).

use godwit_tests::{service, staging, vcsim};
use serde_json::{Value, json};
use service::{ADMIN_PASSWORD, Service, random_disk, setup_vsphere};
use staging::Server;
use std::time::{Duration, Instant};
use vcsim::{Vcsim, vm_by_name};

const K: usize = 2;
/// vcsim's default VPX inventory.
const VMS: [&str; 4] = [
    "DC0_H0_VM0",
    "DC0_H0_VM1",
    "DC0_C0_RP0_VM0",
    "DC0_C0_RP0_VM1",
];

fn running(state: &Value) -> bool {
    ["snapshotting", "transferring", "removing_snapshot"]
        .iter()
        .any(|s| state == s)
}

fn create(svc: &Service, source: &str, vm: &str, schedule: Value) -> String {
    let j = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": vm, "schedule": schedule})),
    );
    j["id"].as_str().unwrap().to_string()
}

fn no_snapshots(v: &Vcsim, vms: &[&str]) {
    let s = v.connect();
    for vm in vms {
        let snaps = vm_by_name(&s, vm).snapshots;
        assert!(snaps.is_empty(), "{vm}: snapshot left: {snaps:?}");
    }
}

#[test]
fn concurrency_limit_cancel_of_a_running_job_and_periodic_runs() {
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    for vm in &VMS[..3] {
        random_disk(&v, vm, 8);
    }
    random_disk(&v, VMS[3], 32);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let pw = work.path().join("admin-password");
    std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
    // 2 MiB/s per transfer: an 8 MiB disk takes ~4 s; a schedule "hour" lasts 3 s.
    let k = K.to_string();
    let svc = Service::start(
        &work.path().join("svc"),
        &[
            "--admin-password-file",
            pw.to_str().unwrap(),
            "--max-concurrent-jobs",
            &k,
            "--chunk-size",
            "256K",
            "--bwlimit",
            "2M",
            "--no-cbt",
            "--schedule-hour-secs",
            "3",
        ],
        false,
    );
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );

    // K+1 jobs at once: never more than K running; one waits while K run; all complete.
    let ids: Vec<String> = VMS[..=K]
        .iter()
        .map(|vm| create(&svc, &source, vm, json!({"kind": "once"})))
        .collect();
    let (mut most, mut saw_waiting_at_limit) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = svc.ok("GET", "/jobs", None);
        let mine: Vec<&Value> = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| ids.iter().any(|id| j["id"] == json!(id)))
            .collect();
        let n_running = mine.iter().filter(|j| running(&j["state"])).count();
        let n_waiting = mine.iter().filter(|j| j["state"] == "scheduled").count();
        most = most.max(n_running);
        assert!(
            n_running <= K,
            "{n_running} jobs run at once (K = {K}): {jobs}"
        );
        saw_waiting_at_limit |= n_running == K && n_waiting == 1;
        if mine.iter().all(|j| j["state"] == "completed") {
            break;
        }
        assert!(
            !mine.iter().any(|j| j["state"] == "failed"),
            "a job failed: {jobs}"
        );
        assert!(Instant::now() < deadline, "jobs did not complete: {jobs}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(most, K, "the limit was never reached");
    assert!(saw_waiting_at_limit, "no job was seen waiting for a slot");
    no_snapshots(&v, &VMS[..=K]);

    // Cancel while running: cancelled, the snapshot removed, the ledger empty.
    let big = create(&svc, &source, VMS[3], json!({"kind": "once"}));
    svc.wait_job(&big, 60, |j| {
        j["state"] == "transferring" && j["progress"]["bytes_done"].as_u64().unwrap_or(0) > 1 << 20
    });
    assert!(
        !vm_by_name(&v.connect(), VMS[3]).snapshots.is_empty(),
        "no snapshot while transferring"
    );
    svc.ok("POST", &format!("/jobs/{big}/cancel"), None);
    let t0 = Instant::now();
    let j = svc.wait_job(&big, 30, |j| j["state"] == "cancelled");
    assert!(
        j["progress"]["bytes_done"].as_u64().unwrap_or(0) < 32 << 20,
        "the transfer finished instead of stopping: {j}"
    );
    eprintln!("cancel took {:?}", t0.elapsed());
    no_snapshots(&v, &[VMS[3]]);
    assert_eq!(
        svc.ok("GET", "/ledger", None),
        json!([]),
        "ledger not empty"
    );
    let events = svc
        .ok("GET", &format!("/jobs/{big}/events"), None)
        .to_string();
    assert!(events.contains("cancelled during the run"), "{events}");

    // Every "hour" (3 s here): the second run comes by itself.
    let periodic = create(
        &svc,
        &source,
        VMS[0],
        json!({"kind": "every_hours", "hours": 1}),
    );
    let j = svc.wait_job(&periodic, 90, |j| {
        j["runs_completed"].as_u64().unwrap_or(0) >= 2
    });
    assert_ne!(
        j["state"], "completed",
        "a periodic job never completes: {j}"
    );
    let events = svc
        .ok("GET", &format!("/jobs/{periodic}/events"), None)
        .to_string();
    assert!(events.matches("run completed").count() >= 2, "{events}");
    // Cancel while idle between runs (or running): it ends cancelled either way.
    svc.ok("POST", &format!("/jobs/{periodic}/cancel"), None);
    svc.wait_job(&periodic, 30, |j| j["state"] == "cancelled");
    no_snapshots(&v, &VMS);
    assert_eq!(svc.ok("GET", "/ledger", None), json!([]));
}
