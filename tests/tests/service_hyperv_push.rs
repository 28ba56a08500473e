//! `godwit serve` with Hyper-V jobs on the host-push data path (design §3: the hosts push to
//! the connector's one inbound HTTPS port): the Hyper-V simulator (in this process) runs the
//! uploader the service starts, which PUTs the data ranges to `/ingest/v1/...` on the
//! service's own listener, pinning the service's certificate; `godwit staging serve` is the
//! staging target.
//!
//! - the ingest route does not open the web UI or the API, and the web UI's session or the
//!   admin's credentials do not open the ingest (401 without the session's bearer token);
//! - a Generation 2 VM (dynamic VHDX) replicated by push: the export equals qemu-img's raw
//!   read, the host pushed the data (job timeline and `/metrics`) while WinRM carried a small
//!   fraction of it, and the spool is removed after the good run;
//! - the operator uploads a certificate (an `openssl` CA and leaf): the next run's uploader pins
//!   it at once, without a restart;
//! - a Generation 1 VM (VHD + differencing child): `kill -9` of the service mid-push; the
//!   restarted service keeps the killed run's checkpoint (the job runs again), the run resumes
//!   it and asks only for the ranges not yet spooled, no checkpoint is left, and the export
//!   equals libvhdi's raw read.

use godwit_hyperv::ingest::spool::parse_journal;
use godwit_hyperv_sim::RunningSim;
use godwit_tests::hyperv::{DB_ID, MIB, PASSWORD, WEB_ID, fixture, start_sim_with};
use godwit_tests::peers::sha256_file;
use godwit_tests::{pki, service, staging};
use serde_json::{Value, json};
use service::{ADMIN_PASSWORD, ADMIN_USER, Service, export_and_wait, pinned_client};
use staging::Server;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The numbers of the run's `host push: ...` timeline line: (pushed, resumed, from spool,
/// over WinRM).
fn push_figures(svc: &Service, job: &str) -> (u64, u64, u64, u64) {
    let events = svc.ok("GET", &format!("/jobs/{job}/events"), None);
    let line = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .rfind(|m| m.starts_with("host push: "))
        .unwrap_or_else(|| panic!("no host push line in the timeline: {events}"))
        .to_string();
    eprintln!("job {job}: {line}");
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .filter(|w| !w.is_empty() && !w.contains('.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    // pushed, pushes, resumed, from spool, over WinRM, commands
    assert_eq!(nums.len(), 6, "{line}");
    (nums[0], nums[2], nums[3], nums[4])
}

fn metric(svc: &Service, name: &str) -> u64 {
    let (s, m) = svc.get_bytes("/metrics");
    assert_eq!(s, 200);
    let m = String::from_utf8_lossy(&m).into_owned();
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the metrics:\n{m}"))
}

/// (records, bytes) the spool journals under `dir` hold.
/// Journal records and bytes under a VM's spool (`<checkpoint id>/<file>.journal`).
fn spooled(dir: &Path) -> (usize, u64) {
    let mut out = (0, 0);
    let files = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|cp| std::fs::read_dir(cp.path()).into_iter().flatten().flatten());
    for e in files {
        if e.path().extension().is_some_and(|x| x == "journal") {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            let (records, _) = parse_journal(&bytes);
            out.0 += records.len();
            out.1 += records.iter().map(|r| r.len).sum::<u64>();
        }
    }
    out
}

fn no_checkpoint_and_empty_ledger(svc: &Service, sim: &RunningSim) {
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(
        svc.ok("GET", "/ledger", None),
        json!([]),
        "ledger not empty"
    );
}

/// The ingest answers only pushes with a session's token; it opens nothing else.
fn ingest_route_is_separate_from_the_web_ui(svc: &Service) {
    let c = pinned_client(&svc.fingerprint, false);
    let put = |path: &str, auth: Option<&str>, cookie: Option<&str>| {
        let mut r = c
            .put(format!("{}{path}", svc.url))
            .header("X-Godwit-Sha256", "ab".repeat(32))
            .body(vec![7u8; 16]);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        if let Some(k) = cookie {
            r = r.header("Cookie", k);
        }
        let resp = r.send().expect("PUT to the ingest");
        let status = resp.status().as_u16();
        let www = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value =
            serde_json::from_slice(&resp.bytes().unwrap_or_default()).unwrap_or(Value::Null);
        (status, www, body)
    };
    // No token: 401 even with a logged-in web session or the admin's Basic credentials.
    let cookie = svc.login_cookie(ADMIN_PASSWORD);
    let (s, www, body) = put("/ingest/v1/abc/0/0", None, Some(&cookie));
    assert_eq!(
        (s, www.as_str()),
        (401, "Bearer realm=\"godwit-ingest\""),
        "{body}"
    );
    let basic = format!(
        "Basic {}",
        base64_encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}").as_bytes())
    );
    let (s, _, body) = put("/ingest/v1/abc/0/0", Some(&basic), None);
    assert_eq!(s, 401, "{body}");
    // A token for no session: the same 401; a bad head: the codec's answer.
    let (s, _, body) = put("/ingest/v1/abc/0/0", Some("Bearer 0123456789abcdef"), None);
    assert_eq!(s, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unknown session"),
        "{body}"
    );
    let (s, _, body) = put("/ingest/v1/abc/00/0", Some("Bearer 0123456789abcdef"), None);
    assert_eq!(s, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("file id"),
        "{body}"
    );
    let r = c
        .get(format!("{}/ingest/v1/abc/0/0", svc.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // The web UI and the API still need a session or the admin's credentials; a bearer
    // token opens neither.
    let (s, _) = svc.api_anon("GET", "/jobs", None);
    assert_eq!(s, 401);
    for path in ["/api/v1/jobs", "/api/v1/settings"] {
        let r = c
            .get(format!("{}{path}", svc.url))
            .header("Authorization", "Bearer 0123456789abcdef")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let r = c.get(format!("{}/jobs", svc.url)).send().unwrap();
    assert!(
        r.url().path() != "/jobs" || !r.status().is_success(),
        "the jobs page without a session: {} at {}",
        r.status(),
        r.url()
    );
    assert!(metric(svc, "godwit_ingest_refused_total") >= 4);
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn spool_dir(data: &Path, job: &str, vm_id: &str) -> PathBuf {
    data.join("jobs")
        .join(job)
        .join("hyperv-spool")
        .join(vm_id.to_ascii_lowercase())
}

#[test]
fn hyperv_jobs_take_host_pushes_on_the_service_port_and_resume_after_kill9() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    // Each push waits 300 ms first, so the service can be killed between two of them.
    let sim = start_sim_with(&f, r#"{"push_delay_ms":300}"#);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let mut svc = Service::start_as_admin(
        work.path(),
        &["--chunk-size", "256K", "--retry-base-secs", "1"],
    );
    ingest_route_is_separate_from_the_web_ui(&svc);
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
    let src = svc.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "hyperv", "address": address, "username": "Administrator",
                    "password": PASSWORD, "approved_fingerprint": cert["fingerprint"]}),
        ),
    );
    let source = src["id"].as_str().unwrap().to_string();

    // Generation 2, dynamic VHDX: pushed, exported equal to qemu-img's raw read.
    let t0 = Instant::now();
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": "web-gen2", "schedule": {"kind": "once"}})),
    );
    let web = job["id"].as_str().unwrap().to_string();
    svc.wait_job(&web, 120, |j| j["state"] == "completed");
    eprintln!(
        "web-gen2 by push through the service: {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    let (pushed, resumed, from_spool, over_winrm) = push_figures(&svc, &web);
    // The 16 MiB of data the VHDX holds were pushed, and every byte of it was read from the
    // spool; WinRM carried only metadata (VHDX headers, log, region and metadata tables, BAT,
    // read in 1 MiB cached blocks): a fixed cost per disk, not per byte of data.
    assert!(pushed >= 16 * MIB, "pushed {pushed}");
    assert_eq!(resumed, 0);
    assert!(
        from_spool >= pushed,
        "from the spool {from_spool}, pushed {pushed}"
    );
    assert!(
        over_winrm <= 5 * MIB,
        "{over_winrm} bytes over WinRM for {pushed} bytes of data"
    );
    assert_eq!(metric(&svc, "godwit_ingest_pushed_bytes_total"), pushed);
    assert_eq!(
        metric(&svc, "godwit_hyperv_winrm_read_bytes_total"),
        over_winrm
    );
    let events = svc
        .ok("GET", &format!("/jobs/{web}/events"), None)
        .to_string();
    assert!(events.contains("disk(s) pushed by the host"), "{events}");
    no_checkpoint_and_empty_ledger(&svc, &sim);
    let left = spool_dir(&svc.data, &web, WEB_ID);
    assert!(
        !left.exists(),
        "spool left after a good run: {}",
        left.display()
    );
    let out = work.path().join("web.raw");
    let ex = export_and_wait(&svc, &web, "raw", out.to_str().unwrap());
    assert_eq!(
        sha256_file(&out),
        sha256_file(&f.web_ref),
        "web-gen2 export"
    );
    assert_eq!(ex["sha256"], json!(sha256_file(&f.web_ref)), "{ex}");

    // The operator replaces the certificate: served at once, and the next run's uploader pins
    // it (a stale pin would stop the uploader before it sends anything, and no push would
    // ever be spooled below).
    let (chain, key) = pki::operator_certificate(&work.path().join("pki"));
    let view = svc.ok(
        "PUT",
        "/settings/certificate",
        Some(json!({"certificate_pem": chain, "private_key_pem": key})),
    );
    let new_fp = view["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new_fp, svc.fingerprint);
    svc.repin(&new_fp);

    // Generation 1, VHD + differencing child: killed mid-push.
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": "db-gen1", "schedule": {"kind": "once"}})),
    );
    let db = job["id"].as_str().unwrap().to_string();
    let spool = spool_dir(&svc.data, &db, DB_ID);
    let t0 = Instant::now();
    // Killed once the sector bitmaps and some data are spooled (10 pushes in all).
    while spooled(&spool).0 < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no push was spooled: {}",
            svc.ok("GET", &format!("/jobs/{db}/events"), None)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    svc.kill9();
    let (records, journaled) = spooled(&spool);
    let cps = sim.checkpoints();
    assert_eq!(cps.len(), 1, "{cps:?}");
    let svc = svc.restart();
    assert_eq!(
        svc.fingerprint, new_fp,
        "the uploaded certificate after the restart"
    );
    let done = svc.wait_job(&db, 120, |j| j["state"] == "completed");
    assert_eq!(done["runs_completed"], json!(1), "{done}");
    let events = svc
        .ok("GET", &format!("/jobs/{db}/events"), None)
        .to_string();
    assert!(events.contains("the run starts again"), "{events}");
    // The restart's sweep kept the killed run's checkpoint (the job runs again) and the run
    // resumed it, so its spool was still good.
    assert!(
        events.contains(&format!("resumed checkpoint {}", cps[0].name)),
        "the run did not resume the kept checkpoint: {events}"
    );
    assert!(
        !events.contains("removed leftover snapshot"),
        "the start-up sweep removed the resumable checkpoint: {events}"
    );
    let (pushed, resumed, _, _) = push_figures(&svc, &db);
    eprintln!(
        "after kill -9 with {records} pushes ({journaled} bytes) spooled: {resumed} bytes resumed, {pushed} pushed"
    );
    // What was spooled before the kill (and not yet handed to the transfer and released) is
    // not asked for again.
    assert!(
        resumed > 0 && resumed <= journaled,
        "resumed {resumed}, spooled before the kill {journaled}"
    );
    assert!(pushed > 0, "nothing pushed after the kill?");
    no_checkpoint_and_empty_ledger(&svc, &sim);
    assert!(!spool.exists(), "spool left: {}", spool.display());
    let out = work.path().join("db.raw");
    export_and_wait(&svc, &db, "raw", out.to_str().unwrap());
    assert_eq!(
        sha256_file(&out),
        sha256_file(&f.db_ref),
        "db-gen1 export (libvhdi)"
    );
    // The source password is in no answer and no log.
    for text in [
        svc.ok("GET", "/settings", None).to_string(),
        svc.log_text(),
        svc.stderr_text(),
    ] {
        assert!(!text.contains(PASSWORD));
    }
}
