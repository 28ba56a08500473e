//! S3 against SeaweedFS (a real distributed object store, `weed server -s3`) on 127.0.0.1: replicate straight to an `s3://` store, export from it, and
//! export to `s3://BUCKET/KEY` as a multipart upload with SHA-256 part checksums that resumes
//! after the exporter is killed.

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run_ok};
use godwit_tests::staging::*;
use godwit_tests::{s3, s3_proxy};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn s3env<'a>(c: &'a mut Command, m: &s3::Seaweed) -> &'a mut Command {
    m.env(c)
}

fn boto(m: &s3::Seaweed, script: &str) -> String {
    m.boto(script)
}

#[test]
fn s3_store_and_resumable_s3_export() {
    need(&["qemu-img"]);
    let m = s3::Seaweed::start("godwit");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("d.raw");
    make_raw(&src, "96M");
    write_random(&src, 0, 40);
    write_random(&src, 90, 2);
    let target = "s3://godwit/stores/one";
    let rep = last_json(&run_ok(s3env(
        Command::new(godwit_bin())
            .args([
                "replicate",
                "--json",
                "--raw-sha256",
                "--vm",
                "s3vm",
                "--chunk-size",
                "1M",
                "--target",
                target,
                "--source",
            ])
            .arg(format!("file://{}", src.display())),
        &m,
    )));
    assert_eq!(rep["chunks_new"], 42, "{rep}");
    let keys = boto(
        &m,
        "print(sum(1 for _ in s3.get_paginator('list_objects_v2').paginate(Bucket='godwit',Prefix='stores/one/chunks/').search('Contents[]')))",
    );
    assert_eq!(keys.trim(), "42");
    // Incremental straight to S3.
    write_random(&src, 5, 1);
    let inc = last_json(&run_ok(s3env(
        Command::new(godwit_bin())
            .args([
                "replicate",
                "--json",
                "--raw-sha256",
                "--vm",
                "s3vm",
                "--chunk-size",
                "1M",
                "--target",
                target,
                "--source",
            ])
            .arg(format!("file://{}", src.display())),
        &m,
    )));
    assert_eq!(inc["chunks_new"], 1, "{inc}");
    // Verify and garbage-collect the S3 store itself.
    let staging = |verb: &str| {
        let mut c = Command::new(godwit_bin());
        c.args(["staging", verb, "--json", "--store", target]);
        s3env(&mut c, &m);
        c.output().unwrap()
    };
    let v = staging("verify");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let rep = last_json(&String::from_utf8_lossy(&v.stdout));
    assert_eq!(rep["chunks_ok"], 43, "{rep}");
    assert_eq!(rep["indexes_ok"], 2, "{rep}");
    // A chunk-named object no sync references, whose bytes are not that chunk.
    let stray = boto(
        &m,
        "import hashlib\nh=hashlib.sha256(b'stray').hexdigest()\nk=f'stores/one/chunks/{h[:2]}/{h}'\ns3.put_object(Bucket='godwit',Key=k,Body=b'junk')\nprint(k)",
    );
    let stray = stray
        .trim()
        .strip_prefix("stores/one/")
        .unwrap()
        .to_string();
    let v = staging("verify");
    assert_eq!(v.status.code(), Some(1), "verify must fail on a bad chunk");
    let rep = last_json(&String::from_utf8_lossy(&v.stdout));
    assert!(rep["chunks_bad"].to_string().contains(&stray), "{rep}");
    let g = staging("gc");
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let rep = last_json(&String::from_utf8_lossy(&g.stdout));
    assert_eq!(rep["chunks_deleted"], 1, "{rep}");
    assert_eq!(rep["chunks_kept"], 43, "{rep}");
    let v = staging("verify");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // Export from the S3 store to a local file.
    let out = tmp.path().join("o.raw");
    run_ok(s3env(
        Command::new(godwit_bin())
            .args([
                "export", "--vm", "s3vm", "--format", "raw", "--target", target, "--out",
            ])
            .arg(&out),
        &m,
    ));
    assert!(files_equal(&out, &src));
    // Export to S3 (through a proxy that records the part uploads), killed after two parts
    // have been uploaded, then resumed.
    let proxy = s3_proxy::Proxy::start(
        m.endpoint.trim_start_matches("http://"),
        "godwit/exports/",
        Duration::ZERO,
    );
    let state = tmp.path().join("state");
    let export = |key: &str| {
        let mut c = Command::new(godwit_bin());
        c.args([
            "export",
            "--json",
            "--vm",
            "s3vm",
            "--format",
            "raw",
            "--target",
            target,
            "--out",
            &format!("s3://godwit/exports/{key}"),
        ])
        .env("GODWIT_STATE_DIR", &state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        s3env(&mut c, &m).env("AWS_ENDPOINT_URL", &proxy.endpoint);
        c
    };
    // Start an export and kill it once its state file records two uploaded parts.
    let interrupted = |key: &str| {
        let _ = std::fs::remove_dir_all(&state);
        let mut first = Guard(export(key).spawn().unwrap());
        let t0 = Instant::now();
        loop {
            let parts = std::fs::read_dir(&state)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .map(|v| v["parts"].as_array().map_or(0, Vec::len))
                .max()
                .unwrap_or(0);
            if parts >= 2 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no parts uploaded");
            assert!(
                matches!(first.0.try_wait(), Ok(None)),
                "export finished before it could be interrupted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = first.0.kill();
        let _ = first.0.wait();
    };
    interrupted("d.raw");
    let o = export("d.raw").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("resuming upload") && err.contains("reused"),
        "{err}"
    );
    let rep = last_json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(rep["verified"], true);
    let got = tmp.path().join("got.raw");
    boto(
        &m,
        &format!(
            "s3.download_file('godwit','exports/d.raw','{}')",
            got.display()
        ),
    );
    assert!(
        files_equal(&got, &src),
        "object in S3 differs from the source"
    );
    // Every part carried its SHA-256 (the bucket checks it; SeaweedFS does not keep it for
    // GetObjectAttributes, so it is seen on the wire).
    let parts = proxy.parts().len();
    assert!(parts >= 3, "{parts} parts");
    assert_eq!(
        proxy.checksummed_parts(),
        parts,
        "parts without x-amz-checksum-sha256"
    );
    // Damage one stored chunk: verify names it and fails.
    let victim = boto(
        &m,
        "k=next(iter(s3.get_paginator('list_objects_v2').paginate(Bucket='godwit',Prefix='stores/one/chunks/').search('Contents[].Key')))\ns3.put_object(Bucket='godwit',Key=k,Body=b'bitrot')\nprint(k)",
    );
    let victim = victim
        .trim()
        .strip_prefix("stores/one/")
        .unwrap()
        .to_string();
    let mut c = Command::new(godwit_bin());
    c.args(["staging", "verify", "--json", "--store", target]);
    let v = s3env(&mut c, &m).output().unwrap();
    assert_eq!(v.status.code(), Some(1));
    let rep = last_json(&String::from_utf8_lossy(&v.stdout));
    assert!(rep["chunks_bad"].to_string().contains(&victim), "{rep}");
}
