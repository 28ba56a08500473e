//! `godwit serve` with an S3 bucket (moto on 127.0.0.1) as its staging store and as an export
//! destination, through the REST API, with vcsim as the source:
//! - the bucket is checked before the setting is stored; the job replicates straight into it
//!   (a Godwit store under the prefix) to 100 %, with no snapshot left;
//! - an export to `s3://BUCKET/KEY` as streamOptimized VMDK: the object's SHA-256 (downloaded
//!   with boto3) equals the file SHA-256 shown, the content SHA-256 shown equals qemu-img's raw
//!   conversion of the source, and qemu-img finds the object's content equal to the source;
//! - an export of the same replica to a local raw file: both hashes equal `sha256sum`;
//! - the secret key is in no API answer, log or stderr.

#[path = "vmware_harness/serve.rs"]
mod service;
#[path = "transfer_util.rs"]
mod util;
mod vmware_harness;

use godwit_tests::peers::{run_ok, sha256_file};
use serde_json::json;
use service::{ADMIN_PASSWORD, Service, export_and_wait, random_disk, setup_vsphere, sha256_hex};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::Guard;
use vmware_harness::{Vcsim, qemu_img, qemu_raw, vm_by_name};

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
