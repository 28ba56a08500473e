//! `godwit serve` with an S3 bucket (moto on 127.0.0.1) as its staging store and as an export
//! destination, through the REST API, with vcsim as the source:
//! - the bucket is checked before the setting is stored; the job replicates straight into it
//!   (a Godwit store under the prefix) to 100 %, with no snapshot left;
//! - an export to `s3://BUCKET/KEY` as streamOptimized VMDK: the object's SHA-256 (downloaded
//!   with boto3) equals the file SHA-256 shown, the content SHA-256 shown equals qemu-img's raw
//!   conversion of the source, and qemu-img finds the object's content equal to the source;
//! - an export of the same replica to a local raw file: both hashes equal `sha256sum`;
//! - the secret key is in no API answer, log or stderr.
//!
//! And an S3 export that survives `kill -9` of the service: restarted, the service resumes the
//! same multipart upload (its state is in the service's store), sends only the parts not
//! finished before the kill (counted by a proxy in front of moto), and the object's SHA-256 is
//! the raw content SHA-256 reported; a cancelled export's upload is aborted.

use godwit_tests::peers::{run_ok, sha256_file};
use godwit_tests::{s3_proxy, service, staging, vcsim};
use serde_json::json;
use service::{ADMIN_PASSWORD, Service, export_and_wait, random_disk, setup_vsphere, sha256_hex};
use staging::Guard;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vcsim::{Vcsim, qemu_img, qemu_raw, vm_by_name};

const VM: &str = "DC0_H0_VM0";
const SECRET: &str = "moto-SECRET-0123456789abcdefghij";
const KEY_ID: &str = "AKIAGODWITTEST";

/// moto's S3 on a free loopback port (killed on drop); fails when moto is not installed.
fn start_moto() -> (Guard, String) {
    let ok = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "moto[server]/boto3 not installed: run `make deps` (tests/deps/install.sh)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let g = Guard(
        Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (g, format!("http://127.0.0.1:{port}"))
}

fn boto(endpoint: &str, script: &str) -> String {
    run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(format!("import boto3\ns3=boto3.client('s3')\n{script}"))
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", endpoint),
    )
}

#[test]
fn s3_bucket_as_staging_store_and_export_destination() {
    let work = tempfile::tempdir().unwrap();
    let (_moto, endpoint) = start_moto();
    boto(&endpoint, "s3.create_bucket(Bucket='godwit')");
    let v = Vcsim::start(false);
    let disk = random_disk(&v, VM, 20);
    let pw = work.path().join("admin-password");
    std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
    let svc = Service::start(
        &work.path().join("svc"),
        &[
            "--admin-password-file",
            pw.to_str().unwrap(),
            "--chunk-size",
            "1M",
            "--no-cbt",
        ],
        false,
    );
    let s3 = |bucket: &str| {
        json!({"kind": "s3", "endpoint": endpoint, "region": "us-east-1", "bucket": bucket,
               "prefix": "stores/one", "access_key_id": KEY_ID, "secret_access_key": SECRET})
    };
    // A bucket that does not exist is refused before anything is stored.
    let (s, e) = svc.api("PUT", "/settings/staging", Some(s3("no-such-bucket")));
    assert_eq!(s, 502, "{e}");
    assert!(!e.to_string().contains(SECRET), "{e}");
    let source = setup_vsphere(&svc, &v, s3("godwit"));

    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let done = svc.wait_job(&id, 120, |j| j["state"] == "completed");
    let p = &done["progress"];
    assert!(
        p["bytes_total"].as_u64() == Some(20 << 20) && p["bytes_done"] == p["bytes_total"],
        "{p}"
    );
    assert!(vm_by_name(&v.connect(), VM).snapshots.is_empty());
    assert_eq!(svc.ok("GET", "/ledger", None), json!([]));
    // The store is in the bucket: chunks and the committed sync index.
    let keys = boto(
        &endpoint,
        "print('\\n'.join(o['Key'] for p in s3.get_paginator('list_objects_v2').paginate(Bucket='godwit',Prefix='stores/one/') for o in p.get('Contents',[])))",
    );
    assert!(keys.contains("stores/one/chunks/"), "{keys}");
    assert!(
        keys.lines().any(|k| k.contains(VM)),
        "no index of {VM}: {keys}"
    );

    let raw_sha = sha256_hex(&qemu_raw(&disk, work.path()));

    // Export to S3 as a stream VMDK.
    let ex = export_and_wait(&svc, &id, "vmdk", "s3://godwit/exports/vm0.vmdk");
    let got = work.path().join("got.vmdk");
    boto(
        &endpoint,
        &format!(
            "s3.download_file('godwit','exports/vm0.vmdk','{}')",
            got.display()
        ),
    );
    assert_eq!(
        ex["file_sha256"],
        json!(sha256_file(&got)),
        "object SHA-256: {ex}"
    );
    assert_eq!(ex["sha256"], json!(raw_sha), "content SHA-256: {ex}");
    qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "vmdk",
        disk.to_str().unwrap(),
        got.to_str().unwrap(),
    ]);

    // The same replica to a local raw file.
    let out = work.path().join("vm0.raw");
    let ex = export_and_wait(&svc, &id, "raw", out.to_str().unwrap());
    assert_eq!(sha256_file(&out), raw_sha);
    assert_eq!(ex["file_sha256"], json!(raw_sha), "{ex}");
    assert_eq!(ex["sha256"], json!(raw_sha), "{ex}");

    for (what, text) in [
        ("settings", svc.ok("GET", "/settings", None).to_string()),
        ("exports", svc.ok("GET", "/exports", None).to_string()),
        ("log", svc.log_text()),
        ("stderr", svc.stderr_text()),
    ] {
        assert!(!text.contains(SECRET), "the S3 secret key is in the {what}");
    }
}

/// Poll an export until it leaves `running`; returns its view.
fn wait_export(svc: &Service, id: &str, secs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = svc.ok("GET", "/exports", None);
        let e = all
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no export {id} in {all}"));
        if e["state"] != "running" {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "export still running: {e}\nstderr:\n{}",
            svc.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn s3_export_resumes_after_kill_9_and_cancel_aborts_the_upload() {
    const MIB: u64 = 48;
    const PARTS: u32 = 6; // 8 MiB parts
    let work = tempfile::tempdir().unwrap();
    let (_moto, moto_endpoint) = start_moto();
    boto(&moto_endpoint, "s3.create_bucket(Bucket='godwit')");
    let proxy = s3_proxy::Proxy::start(
        moto_endpoint.trim_start_matches("http://"),
        "godwit/exports/",
        Duration::from_millis(300),
    );
    let v = Vcsim::start(false);
    let disk = random_disk(&v, VM, MIB);
    let raw_sha = sha256_hex(&qemu_raw(&disk, work.path()));
    let mut svc = Service::start_as_admin(work.path(), &["--chunk-size", "1M", "--no-cbt"]);
    let source = setup_vsphere(
        &svc,
        &v,
        json!({"kind": "s3", "endpoint": proxy.endpoint, "region": "us-east-1", "bucket": "godwit",
               "prefix": "stores/one", "access_key_id": KEY_ID, "secret_access_key": SECRET}),
    );
    let job = svc.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": source, "vm": VM, "schedule": {"kind": "once"}})),
    );
    let job = job["id"].as_str().unwrap().to_string();
    svc.wait_job(&job, 180, |j| j["state"] == "completed");

    // Export; kill -9 the service once the third part is on its way (two are finished).
    let ex = svc.ok(
        "POST",
        "/exports",
        Some(json!({"job_id": job, "disk": 0, "format": "raw",
                    "destination": "s3://godwit/exports/vm0.raw"})),
    );
    let ex = ex["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while proxy.parts().len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the export sent no parts: {:?}\n{}",
            proxy.parts(),
            svc.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    svc.kill9();
    let before = proxy.parts();
    let upload = before[0].upload_id.clone();
    assert!(before.iter().all(|p| p.upload_id == upload), "{before:?}");
    let numbers: Vec<u32> = before.iter().map(|p| p.number).collect();
    assert!(
        numbers.len() < PARTS as usize,
        "killed too late: {numbers:?}"
    );
    let inflight = *numbers.iter().max().unwrap();

    // Restarted, the service resumes the export by itself.
    let t_restart = Instant::now();
    let svc = svc.restart();
    let done = wait_export(&svc, &ex, 120);
    let resumed_secs = t_restart.elapsed().as_secs_f64();
    assert_eq!(
        done["state"],
        "done",
        "{done}\nstderr:\n{}",
        svc.stderr_text()
    );
    assert_eq!(done["sha256"], json!(raw_sha), "content SHA-256: {done}");
    assert_eq!(
        done["file_sha256"],
        json!(raw_sha),
        "object SHA-256: {done}"
    );
    let got = work.path().join("got.raw");
    boto(
        &moto_endpoint,
        &format!(
            "s3.download_file('godwit','exports/vm0.raw','{}')",
            got.display()
        ),
    );
    assert_eq!(sha256_file(&got), raw_sha, "the object in the bucket");
    let after: Vec<_> = proxy.parts()[before.len()..].to_vec();
    assert!(
        after.iter().all(|p| p.upload_id == upload),
        "the interrupted upload {upload} was not resumed: {after:?}"
    );
    let resent: Vec<u32> = after
        .iter()
        .map(|p| p.number)
        .filter(|n| numbers.contains(n))
        .collect();
    // At most the part in flight at the kill travels twice; the finished ones never.
    assert!(
        resent.iter().all(|n| *n == inflight),
        "finished parts sent again: before {numbers:?}, after {after:?}"
    );
    let mut all: Vec<u32> = numbers
        .iter()
        .chain(after.iter().map(|p| &p.number))
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (1..=PARTS).collect::<Vec<_>>(),
        "parts sent: {before:?} then {after:?}"
    );
    let log = svc.log_text();
    let reused = PARTS as usize - after.len();
    assert!(
        log.contains(&format!("parts_reused={reused}")),
        "no parts_reused={reused} in the log:\n{log}"
    );
    eprintln!(
        "resume: parts before the kill {numbers:?}, after the restart {:?}; export done {resumed_secs:.1} s after the restart",
        after.iter().map(|p| p.number).collect::<Vec<_>>()
    );
    let pending = boto(
        &moto_endpoint,
        "print(len(s3.list_multipart_uploads(Bucket='godwit').get('Uploads',[])))",
    );
    assert_eq!(pending.trim(), "0", "multipart uploads left open");

    // A cancelled export: its upload is aborted, no object appears.
    let sent = proxy.parts().len();
    let ex = svc.ok(
        "POST",
        "/exports",
        Some(json!({"job_id": job, "disk": 0, "format": "raw",
                    "destination": "s3://godwit/exports/cancelled.raw"})),
    );
    let ex = ex["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    while proxy.parts().len() < sent + 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no part sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (s, e) = svc.api("POST", &format!("/exports/{ex}/cancel"), None);
    assert_eq!(s, 204, "{e}");
    let end = wait_export(&svc, &ex, 60);
    assert_eq!(end["state"], "cancelled", "{end}");
    let (s, e) = svc.api("POST", &format!("/exports/{ex}/cancel"), None);
    assert_eq!(s, 409, "cancelling a cancelled export: {e}");
    let (s, _) = svc.api("POST", "/exports/exp-nosuch/cancel", None);
    assert_eq!(s, 404);
    let t0 = Instant::now();
    loop {
        let pending = boto(
            &moto_endpoint,
            "print(len(s3.list_multipart_uploads(Bucket='godwit').get('Uploads',[])))",
        );
        if pending.trim() == "0" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the cancelled upload is still open"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = boto(
        &moto_endpoint,
        "print([o['Key'] for o in s3.list_objects_v2(Bucket='godwit',Prefix='exports/').get('Contents',[])])",
    );
    assert!(!listed.contains("cancelled.raw"), "{listed}");
}
