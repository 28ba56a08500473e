//! Load test of `godwit serve` (run by `make bench` through tests/bench/service.sh, ignored by
//! `make test`): while a vcsim VM's 256 MiB disk replicates to a staging server, `wrk` hammers
//! the dashboard page and the jobs API with a logged-in session for 8 s each, at the same
//! time. Prints p50/p99 latency, requests/s and errors, and the service's RSS; fails on any
//! error or when the job does not complete.

use godwit_tests::{service, staging, vcsim};
use serde_json::json;
use service::{ADMIN_PASSWORD, Service, rss_kib};
use staging::Server;
use std::process::Command;
use vcsim::{PASSWORD, USER, Vcsim};

const VM: &str = "DC0_H0_VM0";
const DISK_MIB: u64 = 256;

struct WrkResult {
    p50: String,
    p99: String,
    requests: u64,
    rps: String,
    errors: u64,
}

fn parse_wrk(out: &str) -> WrkResult {
    let field = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non2xx: u64 = field("Non-2xx or 3xx responses:").parse().unwrap_or(0);
    let socket: u64 = field("Socket errors:")
        .split(',')
        .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    WrkResult {
        p50: field("50%"),
        p99: field("99%"),
        requests,
        rps: field("Requests/sec:"),
        errors: non2xx + socket,
    }
}

fn wrk(url: &str, cookie: &str) -> std::process::Child {
    Command::new("wrk")
        .args(["-t1", "-c8", "-d8s", "--latency", "-H"])
        .arg(format!("Cookie: {cookie}"))
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wrk is not installed: run `make deps`")
}

#[test]
#[ignore = "load test: run by tests/bench/service.sh (make bench)"]
fn dashboard_and_api_under_load_during_a_transfer() {
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    service::random_disk(&v, VM, DISK_MIB);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let pw = work.path().join("pw");
    std::fs::write(&pw, ADMIN_PASSWORD).unwrap();
    // 24 MiB/s: the 256 MiB disk takes ~11 s, longer than the 8 s of load.
    let svc = Service::start(
        &work.path().join("svc"),
        &[
            "--admin-password-file",
            pw.to_str().unwrap(),
            "--bwlimit",
            "24M",
        ],
        false,
    );
    svc.ok(
        "PUT",
        "/settings/staging",
        Some(json!({"kind": "server", "address": srv.addr,
                    "fingerprint": srv.fingerprint, "token": srv.token})),
    );
    let src = svc.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "vsphere", "address": v.authority(), "username": USER,
                    "password": PASSWORD, "approved_fingerprint": v.fingerprint_arg()}),
        ),
    );
    // Finish the wizard so that `/` is the dashboard, not a redirect to the next step.
    svc.ok(
        "PUT",
        "/settings/network",
        Some(json!({"hostname": "godwit-bench", "mode": "dhcp",
                    "dns_servers": [], "ntp_servers": [], "proxy": null})),
    );
    svc.ok("POST", "/checks", None);
    svc.ok("POST", "/setup/finish", None);
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": src["id"], "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 60, |j| j["state"] == "transferring");
    let cookie = svc.login_cookie(ADMIN_PASSWORD);
    let rss_before = rss_kib(svc.child.id());
    let dash = wrk(&format!("{}/", svc.url), &cookie);
    let api = wrk(&format!("{}/api/v1/jobs", svc.url), &cookie);
    let dash = dash.wait_with_output().unwrap();
    let api = api.wait_with_output().unwrap();
    let during = svc.ok("GET", &format!("/jobs/{id}"), None);
    let rss_after = rss_kib(svc.child.id());
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    let status = std::fs::read_to_string(format!("/proc/{}/status", svc.child.id())).unwrap();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or("?")
        .trim()
        .to_string();

    let mut errors = 0;
    for (name, out) in [("dashboard GET /", &dash), ("API GET /api/v1/jobs", &api)] {
        let text = String::from_utf8_lossy(&out.stdout);
        let r = parse_wrk(&text);
        println!(
            "service bench: {name}: p50 {} p99 {} requests {} ({} req/s) errors {}",
            r.p50, r.p99, r.requests, r.rps, r.errors
        );
        assert!(r.requests > 0, "{name}: wrk made no requests:\n{text}");
        errors += r.errors;
    }
    println!(
        "service bench: job state after the load: {} ({} of {} bytes); service RSS {} KiB before, {} KiB after the load, peak {}",
        during["state"],
        during["progress"]["bytes_done"],
        during["progress"]["bytes_total"],
        rss_before,
        rss_after,
        peak
    );
    assert_eq!(errors, 0, "requests failed under load");
    assert_eq!(done["runs_completed"], json!(1));
}
