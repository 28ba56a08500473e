//! Exports of `godwit serve` on the appliance's rules, with vCenter (vcsim) as the source and a
//! `godwit staging serve` as the target:
//!
//! - a destination outside the export directory (`/etc/x`, `../x`) or through a symlink is
//!   refused with 422 on `destination`, and nothing outside is touched; an existing file is
//!   never overwritten;
//! - a finished export downloads over HTTPS with its length and SHA-256 headers, in two ranges
//!   as a resumed download would, and deleting it removes its file;
//! - the data directory fills up (a 40 MiB tmpfs mounted for the test, as the appliance's data
//!   partition would fill): exports that would not fit are refused or stopped with a clear
//!   error on the export naming the space, before the service's own state runs out of room, and
//!   leave no partial file; with the partition filled to the last byte by something else, a
//!   job run (its data goes to staging) is still accepted, recorded and completed through the
//!   store's reserve, while the service keeps answering; once space is freed,
//!   jobs and exports work again, and after a `kill -9` the store opens with every job and
//!   export it had.
//!
//! The staging server's store is outside the tmpfs. Needs root (mount).

use godwit_tests::{service, staging, vcsim};
use serde_json::{Value, json};
use service::{ADMIN_PASSWORD, Service, random_disk, setup_vsphere};
use staging::Server;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vcsim::Vcsim;

const VM: &str = "DC0_H0_VM0";

/// A tmpfs of `mib` MiB mounted on `dir` for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `dir` bind-mounted onto itself read-only for the test, unmounted on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn bind(dir: &Path) -> ReadOnly {
        let run = |args: &[&std::ffi::OsStr]| {
            let ok = Command::new("mount").args(args).status();
            assert!(ok.expect("mount").success(), "mount {args:?}");
        };
        let d = dir.as_os_str();
        run(&["--bind".as_ref(), d, d]);
        let me = ReadOnly(dir.to_path_buf());
        run(&["-o".as_ref(), "remount,bind,ro".as_ref(), d]);
        me
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn export(svc: &Service, job: &str, format: &str, dest: &str) -> Value {
    let ex = svc.ok(
        "POST",
        "/exports",
        Some(json!({"job_id": job, "disk": 0, "format": format, "destination": dest})),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = svc.ok("GET", "/exports", None);
        let e = all
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == ex["id"])
            .cloned()
            .unwrap();
        if e["state"] != "running" {
            return e;
        }
        assert!(Instant::now() < deadline, "export still running: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free(svc: &Service) -> u64 {
    svc.ok("GET", "/settings", None)["data_space"]["free_bytes"]
        .as_u64()
        .unwrap()
}

/// Fill the file system to its last byte with `path` (what another writer could do).
fn fill(path: &Path) {
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=64k", "status=none"])
        .status();
}

/// Destinations outside DATA/exports, or through a symlink, are refused; a good export downloads
/// in two ranges with its digest; deleting it removes the file.
fn confined_and_downloadable(svc: &Service, job: &str, exports: &Path, work: &Path) {
    let refused = |dest: &str| {
        let (s, v) = svc.api(
            "POST",
            "/exports",
            Some(json!({"job_id": job, "disk": 0, "format": "raw", "destination": dest})),
        );
        assert_eq!(s, 422, "{dest}: {v}");
        assert_eq!(v["fields"][0]["field"], "destination", "{dest}: {v}");
        v["fields"][0]["message"].as_str().unwrap().to_string()
    };
    let etc = work.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let victim = work.join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    for bad in [
        etc.join("x").to_str().unwrap(),
        "/etc/x",
        "../x",
        "a/../../x",
    ] {
        let m = refused(bad);
        eprintln!("{bad}: {m}");
    }
    assert!(!etc.join("x").exists());
    std::fs::create_dir_all(exports).unwrap();
    std::os::unix::fs::symlink(&etc, exports.join("link")).unwrap();
    std::os::unix::fs::symlink(&victim, exports.join("victim.raw")).unwrap();
    assert!(refused("link/x.raw").contains("symbolic link"));
    assert!(refused("victim.raw").contains("exists already"));
    assert!(
        std::fs::read_dir(&etc).unwrap().next().is_none(),
        "written through the link"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"keep me",
        "the symlink was followed"
    );
    std::fs::remove_file(exports.join("link")).unwrap();
    std::fs::remove_file(exports.join("victim.raw")).unwrap();

    let e = export(svc, job, "raw", "dl/disk0.raw");
    assert_eq!(e["state"], "done", "{e}");
    let file = exports.join("dl/disk0.raw");
    assert_eq!(e["destination"], file.to_str().unwrap());
    let want = std::fs::read(&file).unwrap();
    assert_eq!(want.len(), 12 << 20);
    assert_eq!(e["size_bytes"], json!(12 << 20), "{e}");
    let sha = e["file_sha256"].as_str().unwrap();
    let url = format!("/api/v1/exports/{}/download", e["id"].as_str().unwrap());
    let c = service::pinned_client(&svc.fingerprint, false);
    let get = |range: Option<&str>| {
        let mut r = c
            .get(format!("{}{url}", svc.url))
            .basic_auth("admin", Some(ADMIN_PASSWORD));
        if let Some(v) = range {
            r = r.header("range", v);
        }
        let resp = r.send().expect("download");
        let h = resp.headers().clone();
        (resp.status().as_u16(), h, resp.bytes().unwrap().to_vec())
    };
    let (s, h, first) = get(Some("bytes=0-1048575"));
    assert_eq!(s, 206);
    let cut = first.len();
    let (s, h2, rest) = get(Some(&format!("bytes={cut}-")));
    assert_eq!(s, 206);
    assert_eq!(
        h2["content-range"].to_str().unwrap(),
        format!("bytes {cut}-{}/{}", want.len() - 1, want.len())
    );
    let mut joined = first;
    joined.extend_from_slice(&rest);
    assert!(joined == want, "the two ranges are not the file");
    assert_eq!(h["x-checksum-sha256"].to_str().unwrap(), sha);
    assert_eq!(godwit_tests::peers::sha256_file(&file), sha);
    let (s, h, all) = get(None);
    assert_eq!((s, all.len()), (200, want.len()));
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        want.len().to_string()
    );
    assert!(h["digest"].to_str().unwrap().starts_with("SHA-256="));
    svc.ok(
        "DELETE",
        &format!("/exports/{}", e["id"].as_str().unwrap()),
        None,
    );
    assert!(!file.exists(), "deleting the export left its file");
}

#[test]
fn exports_are_confined_downloadable_and_a_full_data_partition_fails_them_clearly() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let _fs = Tmpfs::mount(&data, 40);
    let v = Vcsim::start(false);
    let disk = random_disk(&v, VM, 12);
    // The last 4 MiB zero: a raw export leaves a hole there (its file is longer than the bytes
    // written into it, and still downloads whole).
    let ok = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!(
            "of={}",
            disk.with_file_name("data-flat.vmdk").display()
        ))
        .args(["bs=1M", "seek=8", "count=4", "conv=notrunc", "status=none"])
        .status()
        .unwrap();
    assert!(ok.success());
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    let pw = work.path().join("admin-password");
    std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let mut svc = Service::start(
        &data.join("svc"),
        &["--admin-password-file", pw.to_str().unwrap()],
        false,
    );
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "server", "address": srv.addr, "fingerprint": srv.fingerprint,
               "token": srv.token}),
    );
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    svc.wait_job(&id, 120, |j| j["state"] == "completed");
    let exports = data.join("svc/exports");

    confined_and_downloadable(&svc, &id, &exports, work.path());

    // Fits: 12 MiB of 40.
    let e = export(&svc, &id, "raw", "one.raw");
    assert_eq!(e["state"], "done", "{e}");
    // Two more do not: refused up front (raw) or stopped on the way (a VMDK), each saying why;
    // nothing half-written is left.
    let fill_to = free(&svc).saturating_sub(14 << 20);
    let ballast = data.join("ballast");
    Command::new("fallocate")
        .args(["-l", &fill_to.to_string()])
        .arg(&ballast)
        .status()
        .unwrap();
    let cookie = svc.login_cookie(ADMIN_PASSWORD);
    for (fmt, name) in [("raw", "two.raw"), ("vmdk", "two.vmdk")] {
        let e = export(&svc, &id, fmt, name);
        assert_eq!(e["state"], "failed", "{e}");
        // issue 18: typed like a job's error, in the list and in GET /exports/{id}.
        let one = svc.ok(
            "GET",
            &format!("/exports/{}", e["id"].as_str().unwrap()),
            None,
        );
        assert_eq!(one["error"], e["error"], "{one}");
        let err = &one["error"];
        assert_eq!(err["code"], "export.target_full", "{fmt}: {err}");
        let (message, remediation) = (
            err["message"].as_str().unwrap(),
            err["remediation"].as_str().unwrap(),
        );
        assert_eq!(
            message,
            "The appliance's data partition has no room for this export."
        );
        assert!(remediation.starts_with("Delete exports"), "{remediation}");
        let detail = err["detail"].as_str().unwrap();
        assert!(detail.contains("data partition is full"), "{fmt}: {detail}");
        for text in [message, remediation] {
            assert!(!text.contains(" {") && !text.contains("os error"), "{text}");
        }
        assert!(!exports.join(name).exists(), "{name} left behind");
        eprintln!("{fmt} export refused: {err}");
        // The page says it too, once: what happened, its code and what to do.
        let (s, page) = svc.page_with_cookie("/exports", &cookie);
        assert_eq!(s, 200);
        let row = page
            .split("<tr data-export-id=")
            .find(|r| r.contains(e["id"].as_str().unwrap()))
            .expect("the export's row");
        assert!(row.contains("export.target_full"), "{row}");
        assert!(row.contains("has no room for this export."), "{row}");
        assert!(
            row.contains("Delete exports that are no longer needed"),
            "{row}"
        );
        assert_eq!(row.matches("has no room").count(), 1, "{row}");
    }
    assert_eq!(svc.api("GET", "/exports/exp-nope", None).0, 404);
    // A read-only folder under the exports: refused when posted, on `destination`, saying
    // what happened and what to do.
    let ro = exports.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let _ro = ReadOnly::bind(&ro);
    let (s, v) = svc.api(
        "POST",
        "/exports",
        Some(json!({"job_id": id, "disk": 0, "format": "raw", "destination": "ro/x.raw"})),
    );
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["fields"][0]["field"], "destination", "{v}");
    let m = v["fields"][0]["message"].as_str().unwrap();
    assert!(
        m.starts_with("The exports folder is on a read-only file system. Remount"),
        "{m}"
    );
    drop(_ro);
    assert!(
        free(&svc) >= 8 << 20,
        "exports kept the floor: {}",
        free(&svc)
    );

    // Something else fills the data partition to the last byte. Replica data goes to the
    // staging server, not there, so a run (with 4 MiB of new data) is still accepted and
    // completes: the store keeps a small reserve (service/src/store.rs, RESERVE_BYTES) that it
    // gives back when the partition is full, so it can still record the run. Before the
    // reserve, the store's commit met the full disk and the request answered 500.
    service::overwrite_random(&disk.with_file_name("data-flat.vmdk"), 4);
    fill(&data.join("filler"));
    let (s, b) = svc.api("POST", &format!("/jobs/{id}/run"), None);
    assert_eq!(s, 204, "a run can be asked for on a full disk: {b}");
    let j = svc.wait_job(&id, 60, |j| {
        j["state"] == "completed" && j["runs_completed"].as_u64() >= Some(2)
    });
    eprintln!("job on a full data partition: {j}");
    assert!(j["last_error"].is_null(), "{j}");
    let (s, settings) = svc.api("GET", "/settings", None);
    assert_eq!(s, 200, "{settings}");
    assert!(
        settings["data_space"]["free_bytes"].as_u64().unwrap() < 1 << 20,
        "{settings}"
    );
    let (s, all) = svc.api("GET", "/exports", None);
    assert_eq!(s, 200, "{all}");

    // Space freed: the job runs again to the end, and an export fits.
    std::fs::remove_file(data.join("filler")).unwrap();
    std::fs::remove_file(&ballast).unwrap();
    svc.ok(
        "DELETE",
        &format!("/exports/{}", e["id"].as_str().unwrap()),
        None,
    );
    let j = svc.ok("GET", &format!("/jobs/{id}"), None);
    if j["state"] == "completed" {
        svc.ok("POST", &format!("/jobs/{id}/run"), None);
    }
    let done = svc.wait_job(&id, 300, |j| {
        j["state"] == "completed" && j["runs_completed"].as_u64() >= Some(3)
    });
    eprintln!("after freeing space: {done}");
    let e = export(&svc, &id, "raw", "three.raw");
    assert_eq!(e["state"], "done", "{e}");

    // kill -9, restart: the store opens with what it had.
    svc.kill9();
    let svc = svc.restart();
    let jobs = svc.ok("GET", "/jobs", None);
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    let all = svc.ok("GET", "/exports", None);
    assert!(
        all.as_array().unwrap().iter().any(|x| x["destination"]
            .as_str()
            .unwrap()
            .ends_with("/three.raw")
            && x["state"] == "done"),
        "{all}"
    );
}
