//! Scale drill of `godwit serve` (#21; run by `make bench` through tests/bench/scale.sh,
//! ignored by `make test`).
//!
//! 1. vcsim with 50 VMs (vcsim's `-vm` model count: 25 per standalone host and per cluster
//!    resource pool), each given 2 disks of real content (flat VMDKs with random data, attached
//!    with ReconfigVM_Task); one service replicates them all to one staging server with K
//!    concurrent jobs while a second process polls `GET /api/v1/jobs`. Printed: wall time,
//!    bytes, the API's p50/p99/max latency, the service's RSS (sampled peak and VmHWM).
//!    Correctness first: every replica is exported from the store and compared with its source
//!    disk, SHA-256 for SHA-256; the drill fails on any difference, failed job or API error.
//! 2. vcsim with 200 VMs, inventory only: the time of an inventory refresh through the API and
//!    the load time of the inventory page.
//!
//! `GODWIT_SCALE_JOBS` (K, default 4), `GODWIT_SCALE_DISK_MIB` (virtual size of each disk,
//! default 16) and `GODWIT_SCALE_DATA_MIB` (random data in each, default 4) change the sizes.

use godwit_tests::peers::{godwit_bin, run_ok, sha256_file};
use godwit_tests::{service, staging, vcsim};
use serde_json::{Value, json};
use service::{ADMIN_PASSWORD, Service, rss_kib};
use staging::Server;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vcsim::{Vcsim, VcsimOptions, qemu_img, set_vm_disks};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A second process polling the API (a pinned HTTPS keep-alive connection, `GET /api/v1/jobs`
/// every 100 ms with a logged-in session's cookie, as the dashboard does: HTTP Basic would
/// verify the password's Argon2 hash on every request) until its stdin closes; then it prints
/// its latencies as JSON.
const POLLER: &str = r#"
import hashlib, http.client, json, ssl, sys, threading, time
host, port, fp, cookie = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
want = fp.replace("SHA256:", "").replace(":", "").lower()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
lat, errors, conn = [], 0, None
while not stop.is_set():
    try:
        if conn is None:
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
            conn.connect()
            got = hashlib.sha256(conn.sock.getpeercert(binary_form=True)).hexdigest()
            if got != want:
                print(json.dumps({"error": "certificate mismatch " + got}), flush=True)
                sys.exit(1)
        t = time.perf_counter()
        conn.request("GET", "/api/v1/jobs", headers={"Cookie": cookie})
        r = conn.getresponse()
        r.read()
        lat.append(time.perf_counter() - t)
        if r.status != 200:
            errors += 1
    except Exception:
        errors += 1
        conn = None
    time.sleep(0.1)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None
print(json.dumps({"requests": len(lat), "errors": errors, "p50_ms": q(0.5), "p99_ms": q(0.99),
                  "max_ms": lat[-1] * 1000 if lat else None}), flush=True)
"#;

struct Poller(std::process::Child);

impl Poller {
    fn start(svc: &Service) -> Poller {
        let hostport = svc.url.trim_start_matches("https://");
        let (host, port) = hostport.rsplit_once(':').unwrap();
        Poller(
            Command::new("python3")
                .arg("-c")
                .arg(POLLER)
                .args([
                    host,
                    port,
                    &svc.fingerprint,
                    &svc.login_cookie(ADMIN_PASSWORD),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3"),
        )
    }

    fn finish(mut self) -> Value {
        drop(self.0.stdin.take());
        let out = self.0.stdout.take().unwrap();
        let line = BufReader::new(out).lines().next().unwrap().unwrap();
        let _ = self.0.wait();
        serde_json::from_str(&line).unwrap()
    }
}

fn service_for(work: &Path, v: &Vcsim, srv: &Server, k: u64) -> (Service, String) {
    let k = k.to_string();
    let svc = Service::start_as_admin(work, &["--max-concurrent-jobs", &k]);
    let src = service::setup_vsphere(
        &svc,
        v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    svc.ok("POST", "/checks", None);
    svc.ok("POST", "/setup/finish", None);
    (svc, src)
}

/// Inventory refresh through the API: (seconds, VM names).
fn inventory(svc: &Service) -> (f64, Vec<String>) {
    let t = Instant::now();
    let inv = svc.ok("GET", "/inventory?refresh=true", None);
    let secs = t.elapsed().as_secs_f64();
    let names = inv
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    (secs, names)
}

/// Load times (ms) of the inventory page as a logged-in browser: 5 loads, (median, max, KiB).
fn page_load(svc: &Service) -> (f64, f64, usize) {
    let cookie = svc.login_cookie(ADMIN_PASSWORD);
    let client = service::pinned_client(&svc.fingerprint, false);
    let mut ms = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = client
            .get(format!("{}/inventory", svc.url))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        size = r.bytes().unwrap().len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms[2], ms[4], size / 1024)
}

/// Two flat disks of `disk_mib` MiB for `vm`, `data_mib` MiB of random data each (at the
/// start of disk 0, in the middle of disk 1); returns their flat files (the raw content).
fn give_disks(v: &Vcsim, s: &godwit_vmware::session::Session, vm: &str) -> Vec<PathBuf> {
    let (disk_mib, data_mib) = (
        env_u64("GODWIT_SCALE_DISK_MIB", 16),
        env_u64("GODWIT_SCALE_DATA_MIB", 4),
    );
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(vm);
    std::fs::create_dir_all(&vmdir).unwrap();
    let size = disk_mib << 20;
    let mut files = Vec::new();
    let mut flats = Vec::new();
    for d in 0..2u64 {
        let desc = vmdir.join(format!("scale{d}.vmdk"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            desc.to_str().unwrap(),
            &size.to_string(),
        ]);
        let flat = vmdir.join(format!("scale{d}-flat.vmdk"));
        run_ok(Command::new("dd").args([
            "if=/dev/urandom".to_string(),
            format!("of={}", flat.display()),
            "bs=1M".into(),
            format!("seek={}", d * disk_mib / 2),
            format!("count={data_mib}"),
            "conv=notrunc".into(),
            "status=none".into(),
        ]));
        files.push(format!("[{ds}] {vm}/scale{d}.vmdk"));
        flats.push(flat);
    }
    let pairs: Vec<(&str, u64)> = files.iter().map(|f| (f.as_str(), size)).collect();
    set_vm_disks(s, vm, &pairs);
    flats
}

#[test]
#[ignore = "scale drill: run by tests/bench/scale.sh (make bench)"]
fn fifty_vms_with_two_disks_each_through_one_service() {
    let k = env_u64("GODWIT_SCALE_JOBS", 4);
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start_opts(&VcsimOptions {
        vms_per_pool: Some(25),
        ..VcsimOptions::default()
    });
    let staging = work.path().join("staging");
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let (svc, src) = service_for(work.path(), &v, &srv, k);
    let (inv_secs, vms) = inventory(&svc);
    assert_eq!(vms.len(), 50, "{vms:?}");
    let t = Instant::now();
    let s = v.connect();
    let mut sources: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for vm in &vms {
        sources.insert(vm.clone(), give_disks(&v, &s, vm));
    }
    println!(
        "scale bench: 50 VMs in vcsim, inventory in {inv_secs:.2} s; 100 disks made in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let poller = Poller::start(&svc);
    let pid = svc.child.id();
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for vm in &vms {
        let j = svc.ok(
            "POST",
            "/jobs",
            Some(json!({"source_id": src, "vm": vm, "schedule": {"kind": "once"}})),
        );
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    let mut rss_max = 0;
    let mut most_running = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    let jobs = loop {
        rss_max = rss_max.max(rss_kib(pid));
        let jobs = svc.ok("GET", "/jobs", None);
        let all = jobs.as_array().unwrap();
        let running = all
            .iter()
            .filter(|j| {
                ["snapshotting", "transferring", "removing_snapshot"]
                    .contains(&j["state"].as_str().unwrap_or(""))
            })
            .count();
        most_running = most_running.max(running);
        let failed: Vec<&Value> = all
            .iter()
            .filter(|j| {
                j["last_error"].is_string() || j["state"] == "failed" || j["state"] == "retry_wait"
            })
            .collect();
        assert!(failed.is_empty(), "failed jobs: {failed:?}");
        if all.iter().all(|j| j["runs_completed"].as_u64() >= Some(1)) {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "the drill did not finish: {jobs}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let wall = t0.elapsed().as_secs_f64();
    let api = poller.finish();
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    assert!(
        most_running <= usize::try_from(k).unwrap(),
        "more than K jobs ran at once"
    );
    assert_eq!(jobs.as_array().unwrap().len(), 50);

    // Every replica, exported from the store, equals its source disk.
    let store = format!("file://{}", staging.join("store").display());
    let tv = Instant::now();
    let mut checked = 0;
    let mut bytes = 0;
    for (vm, flats) in &sources {
        for (d, flat) in flats.iter().enumerate() {
            let out = work.path().join("check.raw");
            let rep = staging::last_json(&run_ok(
                Command::new(godwit_bin())
                    .args(["export", "--json", "--format", "raw", "--vm", vm])
                    .args(["--disk", &d.to_string(), "--target", &store, "--out"])
                    .arg(&out),
            ));
            assert_eq!(
                sha256_file(&out),
                sha256_file(flat),
                "{vm} disk {d}: the replica differs from the source"
            );
            bytes += rep["data_bytes"].as_u64().unwrap_or(0);
            checked += 1;
        }
    }
    assert_eq!(checked, 100);
    let list: Value = serde_json::from_str(
        run_ok(Command::new(godwit_bin()).args(["staging", "list", "--json", "--store", &store]))
            .trim(),
    )
    .unwrap();
    println!(
        "scale bench: 50 VMs x 2 disks ({} MiB each, {} MiB random), one service, K={k}: wall {wall:.1} s, {} jobs at once at most; {:.0} MiB of data replicated, stored {:.0} MiB",
        env_u64("GODWIT_SCALE_DISK_MIB", 16),
        env_u64("GODWIT_SCALE_DATA_MIB", 4),
        most_running,
        bytes as f64 / 1048576.0,
        list["usage"]["stored_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
    );
    println!(
        "scale bench: API GET /api/v1/jobs polled by a second process during the run: {} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, errors {}",
        api["requests"],
        api["p50_ms"].as_f64().unwrap_or(f64::NAN),
        api["p99_ms"].as_f64().unwrap_or(f64::NAN),
        api["max_ms"].as_f64().unwrap_or(f64::NAN),
        api["errors"]
    );
    println!(
        "scale bench: service RSS max {} KiB sampled, peak (VmHWM) {hwm}; all 100 replicas verified by export + SHA-256 in {:.1} s",
        rss_max,
        tv.elapsed().as_secs_f64()
    );
    assert_eq!(api["errors"], 0, "API errors during the run: {api}");
    assert!(api["requests"].as_u64() > Some(0));
    let _ = std::io::stdout().flush();
}

#[test]
#[ignore = "scale drill: run by tests/bench/scale.sh (make bench)"]
fn two_hundred_vms_in_the_inventory() {
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start_opts(&VcsimOptions {
        vms_per_pool: Some(100),
        ..VcsimOptions::default()
    });
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let (svc, _src) = service_for(work.path(), &v, &srv, 4);
    let (first, vms) = inventory(&svc);
    assert_eq!(vms.len(), 200);
    let (again, _) = inventory(&svc);
    let (median, max, kib) = page_load(&svc);
    println!(
        "scale bench: 200 VMs (inventory only): inventory refresh {first:.2} s (again {again:.2} s); inventory page load median {median:.0} ms, max {max:.0} ms of 5 ({kib} KiB)"
    );
}
