//! `godwit serve` end to end over HTTPS (client pinned to the printed fingerprint) through its
//! REST API, against real peers: vcsim (vSphere simulator, TLS) and a `godwit staging serve`.
//!
//! - the one-time setup code unlocks the first password and is invalid afterwards;
//! - wizard → job → progress reaches 100 %, the staging store holds the sync, the export
//!   equals `qemu-img convert` of the source disk, the snapshot is gone and the ledger empty;
//! - `kill -9` of the service mid-transfer, restart: the job resumes and completes, no
//!   snapshot left, the ledger empty;
//! - no secret (source password, staging token, S3 key) in API responses, the log or the
//!   support bundle; the used setup code in no log (stderr, log file, the /logs ring);
//! - a logged-in browser session survives a restart of the service.

use godwit_tests::peers::{godwit_bin, run_ok};
use godwit_tests::{service, staging, vcsim};
use serde_json::json;
use service::{ADMIN_PASSWORD, Service, random_disk};
use staging::Server;
use std::path::Path;
use std::process::Command;
use vcsim::{PASSWORD, USER, Vcsim, qemu_raw, vm_by_name};

const VM: &str = "DC0_H0_VM0";
const S3_SECRET: &str = "s3-SECRET-key-0123456789abcdef";

fn password_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("admin-password");
    std::fs::write(&p, format!("{ADMIN_PASSWORD}\n")).unwrap();
    p
}

/// Wizard steps through the API: network, staging server, source (probe + approve), checks,
/// finish. Returns the source id.
fn configure(svc: &Service, v: &Vcsim, srv: &Server) -> String {
    svc.ok(
        "PUT",
        "/settings/network",
        Some(json!({
            "hostname": "godwit-test", "mode": "dhcp",
            "dns_servers": [], "ntp_servers": [], "proxy": null
        })),
    );
    svc.ok(
        "PUT",
        "/settings/staging",
        Some(json!({
            "kind": "server", "address": srv.addr,
            "fingerprint": srv.fingerprint, "token": srv.token
        })),
    );
    let cert = svc.ok(
        "POST",
        "/sources/probe",
        Some(json!({"kind": "vsphere", "address": v.authority()})),
    );
    let fp = cert["fingerprint"].as_str().unwrap().to_string();
    let norm = |s: &str| {
        s.trim_start_matches("SHA256:")
            .replace(':', "")
            .to_lowercase()
    };
    assert_eq!(
        norm(&fp),
        norm(&v.fingerprint_arg()),
        "probe shows vcsim's certificate: {cert}"
    );
    // A wrong password is refused with the field named; nothing is stored.
    let (s, e) = svc.api(
        "POST",
        "/sources",
        Some(
            json!({"kind": "vsphere", "address": v.authority(), "username": USER,
                    "password": "wrong-password", "approved_fingerprint": fp}),
        ),
    );
    assert_eq!(s, 422, "wrong source password: {e}");
    assert!(e.to_string().contains("password"), "{e}");
    let src = svc.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "vsphere", "address": v.authority(), "username": USER,
                    "password": PASSWORD, "approved_fingerprint": fp}),
        ),
    );
    let checks = svc.ok("POST", "/checks", None);
    assert!(checks.as_array().is_some_and(|a| !a.is_empty()), "{checks}");
    svc.ok("POST", "/setup/finish", None);
    src["id"].as_str().unwrap().to_string()
}

fn no_snapshot_and_empty_ledger(svc: &Service, v: &Vcsim) {
    let s = v.connect();
    let vm = vm_by_name(&s, VM);
    assert!(vm.snapshots.is_empty(), "snapshot left: {:?}", vm.snapshots);
    let ledger = svc.ok("GET", "/ledger", None);
    assert_eq!(ledger, json!([]), "ledger not empty");
}

fn staging_syncs(srv: &Server) -> String {
    run_ok(
        Command::new(godwit_bin())
            .args(["staging", "list", "--data"])
            .arg(&srv.data),
    )
}

#[test]
fn setup_code_unlocks_the_first_password_once() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("svc");
    let mut svc = Service::start(&data, &[], true);
    let code = svc.setup_code.clone().unwrap();
    assert_eq!(code.len(), 19, "{code}");
    // Unauthenticated API calls are refused.
    let (s, _) = svc.api_anon("GET", "/settings", None);
    assert!(s == 401 || s == 403, "HTTP {s}");
    let body = |c: &str| json!({"setup_code": c, "new_password": ADMIN_PASSWORD, "confirm_password": ADMIN_PASSWORD});
    let (s, e) = svc.api_anon("POST", "/setup/password", Some(body("AAAA-BBBB-CCCC-DDDD")));
    assert_eq!(s, 422, "wrong code: {e}");
    assert!(e.to_string().contains("setup_code"), "{e}");
    let (s, e) = svc.api_anon("POST", "/setup/password", Some(body(&code.to_lowercase())));
    assert!((200..300).contains(&s), "right code: HTTP {s} {e}");
    // Used once: refused now (a password exists, so the current one is required).
    let (s, _) = svc.api_anon("POST", "/setup/password", Some(body(&code)));
    assert!(s >= 400, "the code worked twice: HTTP {s}");
    let st = svc.ok("GET", "/setup/status", None);
    assert_eq!(st["password_set"], json!(true), "{st}");
    assert_eq!(st["next_step"], json!("network"), "{st}");
    // The first start's in-memory log (the /logs ring) says a code was printed, not the code.
    let ring_first = svc.ok("GET", "/logs", None).to_string();
    assert!(
        ring_first.contains("setup code was printed"),
        "{ring_first}"
    );
    // A browser logs in; its session cookie is kept across the restart.
    let cookie = svc.login_cookie(ADMIN_PASSWORD);
    assert_eq!(svc.status_with_cookie("/api/v1/settings", &cookie), 200);
    // Restart: no setup code any more, same certificate, the store kept the password.
    let fp = svc.fingerprint.clone();
    svc.kill9();
    let svc = Service::start(&data, &[], false);
    assert!(svc.setup_code.is_none());
    assert_eq!(
        svc.fingerprint, fp,
        "the certificate changed across restarts"
    );
    svc.ok("GET", "/settings", None);
    assert_eq!(
        svc.status_with_cookie("/api/v1/settings", &cookie),
        200,
        "the logged-in session did not survive the restart"
    );
    assert_eq!(
        svc.status_with_cookie("/api/v1/settings", "godwit_session=AAAAAAAAAAAAAAAAAAAAAA"),
        401
    );
    // The session id itself is not in the store (only its SHA-256).
    let sid = cookie.split_once('=').unwrap().1.to_string();
    drop(svc);
    let db = std::fs::read(data.join("godwit.redb")).unwrap();
    assert!(
        !db.windows(sid.len()).any(|w| w == sid.as_bytes()),
        "the session id is stored in clear"
    );
    // The used setup code is in no log: stderr, the log file, the in-memory ring (/logs).
    let svc = Service::start(&data, &[], false);
    let ring = svc.ok("GET", "/logs", None).to_string();
    let log_file = svc.log_text();
    assert!(log_file.contains("setup code was printed"), "{log_file}");
    for (what, text) in [
        ("stderr", svc.stderr_text()),
        ("log file", log_file),
        ("first log ring", ring_first),
        ("log ring", ring),
    ] {
        assert!(!text.is_empty(), "{what} is empty");
        for form in [code.clone(), code.replace('-', ""), code.to_lowercase()] {
            assert!(!text.contains(&form), "the setup code is in the {what}");
        }
    }
    svc.ok("GET", "/settings", None);
    let mode = std::fs::metadata(data.join("godwit.redb")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[test]
fn job_replicates_from_vcsim_resumes_after_kill9_and_secrets_stay_out() {
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let disk = random_disk(&v, VM, 24);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let data = work.path().join("svc");
    let pw = password_file(work.path());
    // 8 MiB/s: a 24 MiB disk takes ~3 s, long enough to kill the service mid-transfer.
    let args = [
        "--admin-password-file",
        pw.to_str().unwrap(),
        "--chunk-size",
        "256K",
        "--bwlimit",
        "8M",
        "--retry-base-secs",
        "1",
        "--no-cbt",
    ];
    let mut svc = Service::start(&data, &args, false);

    // S3 staging to a bucket that does not answer: refused (a connection is made before
    // anything is stored), and its secret stays out of the answer and everything else.
    let (st, e) = svc.api(
        "PUT",
        "/settings/staging",
        Some(
            json!({"kind": "s3", "endpoint": "http://127.0.0.1:9", "region": "us-east-1",
                    "bucket": "godwit-test", "prefix": "p", "access_key_id": "AKIATEST",
                    "secret_access_key": S3_SECRET}),
        ),
    );
    assert_eq!(st, 502, "unreachable S3 bucket: {e}");
    assert!(!e.to_string().contains(S3_SECRET), "{e}");
    let settings = svc.ok("GET", "/settings", None);
    assert!(!settings.to_string().contains(S3_SECRET), "{settings}");
    assert_ne!(settings["staging"]["kind"], "s3", "{settings}");
    let (s, bundle) = svc.get_bytes("/api/v1/support-bundle");
    assert_eq!(s, 200);
    assert_bundle_free_of(&bundle, &[S3_SECRET], work.path());

    let source = configure(&svc, &v, &srv);
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    assert_eq!(done["runs_completed"], json!(1), "{done}");
    let p = &done["progress"];
    assert!(
        p["bytes_total"].as_u64() == Some(24 << 20) && p["bytes_done"] == p["bytes_total"],
        "progress at the end: {p}"
    );
    assert!(
        staging_syncs(&srv).contains(VM),
        "staging store has no sync of {VM}"
    );
    no_snapshot_and_empty_ledger(&svc, &v);

    // Export through the service: the raw image equals qemu-img's conversion of the source.
    // Written under the service's export directory (DATA/exports), named by the request.
    let out = svc.data.join("exports/export.raw");
    let ex = svc.ok(
        "POST",
        "/exports",
        Some(json!({"job_id": id, "disk": 0, "format": "raw", "destination": "export.raw"})),
    );
    let ex_id = ex["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ex = loop {
        let all = svc.ok("GET", "/exports", None);
        let e = all
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == json!(ex_id))
            .cloned()
            .unwrap();
        if e["state"] != "running" || std::time::Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(ex["state"], "done", "{ex}");
    let want = qemu_raw(&disk, work.path());
    assert!(
        std::fs::read(&out).unwrap() == want,
        "export differs from the source disk"
    );
    // Raw: the file's bytes are the disk's content, so both hashes agree with sha256sum.
    let file_sha = godwit_tests::peers::sha256_file(&out);
    assert_eq!(ex["sha256"].as_str().unwrap(), file_sha, "{ex}");
    assert_eq!(ex["file_sha256"].as_str().unwrap(), file_sha, "{ex}");

    // Second run over new data, killed mid-transfer, resumed after the restart.
    staging::write_random(&disk.with_file_name("data-flat.vmdk"), 0, 24);
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    svc.wait_job(&id, 60, |j| {
        j["state"] == "transferring" && j["progress"]["bytes_done"].as_u64().unwrap_or(0) > 2 << 20
    });
    svc.kill9();
    let snaps = vm_by_name(&v.connect(), VM).snapshots;
    assert!(
        !snaps.is_empty(),
        "the killed run should have left its snapshot"
    );
    let svc = Service::start(&data, &args, false);
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    assert_eq!(done["runs_completed"], json!(2), "{done}");
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(events.contains("the run starts again"), "{events}");
    no_snapshot_and_empty_ledger(&svc, &v);

    // Secrets: nowhere in API answers, the log, stderr or the support bundle.
    let secrets = [PASSWORD, srv.token.as_str(), ADMIN_PASSWORD];
    for path in [
        "/settings",
        "/jobs",
        "/setup/status",
        "/ledger",
        "/exports",
        "/inventory",
    ] {
        let body = svc.ok("GET", path, None).to_string();
        for s in secrets {
            assert!(!body.contains(s), "GET {path} shows a secret");
        }
    }
    let (s, metrics) = svc.get_bytes("/metrics");
    assert_eq!(s, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("godwit_jobs{state=\"completed\"} 1"),
        "{metrics}"
    );
    for (what, text) in [("log", svc.log_text()), ("stderr", svc.stderr_text())] {
        assert!(!text.is_empty(), "{what} is empty");
        for s in secrets.iter().chain([&S3_SECRET]) {
            assert!(!text.contains(s), "the {what} holds a secret");
        }
    }
    let (s, bundle) = svc.get_bytes("/api/v1/support-bundle");
    assert_eq!(s, 200);
    let files = assert_bundle_free_of(&bundle, &secrets, work.path());
    for want in ["settings.json", "jobs.json", "logs/godwit.log"] {
        assert!(
            files.iter().any(|f| f.ends_with(want)),
            "{want} not in {files:?}"
        );
    }
}

/// Unpack the bundle with tar and check that no file holds any of `secrets`. Returns the
/// file names.
fn assert_bundle_free_of(bundle: &[u8], secrets: &[&str], work: &Path) -> Vec<String> {
    let n = std::fs::read_dir(work).unwrap().count();
    let dir = work.join(format!("bundle-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bundle.tar.gz");
    std::fs::write(&file, bundle).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&file)
            .arg("-C")
            .arg(&dir),
    );
    let mut names = Vec::new();
    let mut stack = vec![dir.join("godwit-support")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("bundle dir") {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            for s in secrets {
                assert!(!text.contains(s), "{} holds a secret", p.display());
            }
            names.push(p.display().to_string());
        }
    }
    assert!(names.len() >= 5, "bundle has too few files: {names:?}");
    names
}

/// A job may name its VM by MoRef; it stores the VM's MoRef and instance UUID and follows the
/// VM through a rename (the events say so; the disks keep the name they are stored under).
#[test]
fn a_job_named_by_moref_follows_its_vm_through_a_rename() {
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let disk = random_disk(&v, VM, 4);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let svc = Service::start_as_admin(work.path(), &["--chunk-size", "256K", "--no-cbt"]);
    let source = service::setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    let s = v.connect();
    let vm = vm_by_name(&s, VM);
    // A MoRef that names no VM is refused on the field.
    let (st, e) = svc.api(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": "vm-999999", "schedule": {"kind": "once"}})),
    );
    assert_eq!(st, 422, "{e}");
    assert!(e.to_string().contains("vm"), "{e}");
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": vm.moref.value, "schedule": {"kind": "once"}})),
    );
    assert_eq!(job["vm"], VM, "the job shows the VM's name: {job}");
    let id = job["id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 120, |j| j["state"] == "completed");
    // An administrator renames the VM; the next run still finds it.
    vcsim::run_task(
        &s,
        "Rename_Task",
        godwit_vmware::soap::envelope::envelope(
            "Rename_Task",
            &vm.moref,
            "<newName>renamed-by-admin</newName>",
        ),
    );
    staging::write_random(&disk.with_file_name("data-flat.vmdk"), 0, 4);
    svc.ok("POST", &format!("/jobs/{id}/run"), None);
    let done = svc.wait_job(&id, 120, |j| {
        j["state"] == "completed" && j["runs_completed"] == json!(2)
    });
    assert_eq!(done["vm"], VM, "{done}");
    let events = svc
        .ok("GET", &format!("/jobs/{id}/events"), None)
        .to_string();
    assert!(
        events.contains("renamed-by-admin") && events.contains(&vm.moref.value),
        "{events}"
    );
    // The second run's disk is the renamed VM's new data.
    let out = work.path().join("export.raw");
    service::export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    assert!(std::fs::read(&out).unwrap() == qemu_raw(&disk, work.path()));
    assert!(vm_by_name(&s, "renamed-by-admin").snapshots.is_empty());
    s.logout().unwrap();
}
