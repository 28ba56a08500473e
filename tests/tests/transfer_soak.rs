//! The scale-out soak: 3 staging servers over one SeaweedFS store, 12 concurrent replications of
//! disks cloned from one template through them (3 connectors, each with its own token, each
//! client listing all three servers), a `staging gc` in the middle, a staging server killed
//! and restarted mid-run, and leftovers of an abandoned sync in the store. Then every export is
//! byte-equal to `qemu-img convert -O raw` of its source, `staging verify` is clean, and the
//! store holds the template once plus each clone's delta (printed).

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run, run_ok};
use godwit_tests::s3;
use godwit_tests::staging::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const TEMPLATE_DATA_MIB: u64 = 20;
const DELTA_MIB: u64 = 2;
const CLONES: usize = 12;
/// Leases go stale after this many seconds here (5 minutes by default), so that what the
/// killed server's syncs held is reclaimed within the test.
const LEASE_STALE_SECS: u64 = 8;

fn envs(sw: &s3::Seaweed) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", sw.endpoint.clone()),
        ("GODWIT_LEASE_STALE_SECS", LEASE_STALE_SECS.to_string()),
    ]
}

fn server(sw: &s3::Seaweed, data: &Path, store: &str, listen: &str) -> Server {
    let e = envs(sw);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(data, listen, &["--store", store], &e)
}

fn staging_json(sw: &s3::Seaweed, args: &[&str]) -> serde_json::Value {
    let o = run(sw
        .env(Command::new(godwit_bin()).arg("staging").args(args))
        .env("GODWIT_LEASE_STALE_SECS", LEASE_STALE_SECS.to_string()));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() || args[0] == "verify",
        "staging {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    last_json(&out)
}

fn replicate(
    servers: &[&Server],
    fingerprints: &str,
    token: &Path,
    src: &Path,
    vm: &str,
    bwlimit: &str,
) -> Command {
    let mut c = Command::new(godwit_bin());
    c.args([
        "replicate",
        "--json",
        "--raw-sha256",
        "--chunk-size",
        "1M",
        "--bwlimit",
        bwlimit,
        "--retries",
        "20",
        "--vm",
        vm,
        "--target-fingerprint",
        fingerprints,
        "--token-file",
    ])
    .arg(token)
    .arg("--source")
    .arg(format!("file://{}", src.display()))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for s in servers {
        c.arg("--target").arg(s.url());
    }
    c
}

#[test]
fn three_servers_twelve_clones_gc_and_a_server_restart() {
    need(&["qemu-img", "python3", "cmp"]);
    let t_start = Instant::now();
    let sw = s3::Seaweed::start("soak");
    let store = "s3://soak/store";
    let tmp = tempfile::tempdir().unwrap();
    let mut servers: Vec<Server> = (0..3)
        .map(|i| {
            server(
                &sw,
                &tmp.path().join(format!("srv{i}")),
                store,
                "127.0.0.1:0",
            )
        })
        .collect();
    let fps = servers
        .iter()
        .map(|s| s.fingerprint.clone())
        .collect::<Vec<_>>()
        .join(",");
    let tokens: Vec<PathBuf> = (0..3)
        .map(|i| {
            let f = tmp.path().join(format!("c{i}.token"));
            run_ok(sw.env(Command::new(godwit_bin()).args([
                "staging",
                "tokens",
                "issue",
                "--store",
                store,
                "--connector",
                &format!("site-{i}"),
                "--out",
                f.to_str().unwrap(),
            ])));
            f
        })
        .collect();

    // The template: 20 MiB of data in a 24 MiB disk; each clone adds 2 MiB of its own.
    let template = tmp.path().join("template.raw");
    make_raw(&template, "24M");
    write_random(&template, 0, TEMPLATE_DATA_MIB);
    let clones: Vec<PathBuf> = (0..CLONES)
        .map(|i| {
            let c = tmp.path().join(format!("clone{i}.raw"));
            run_ok(
                Command::new("cp")
                    .arg("--sparse=always")
                    .arg(&template)
                    .arg(&c),
            );
            write_random(&c, TEMPLATE_DATA_MIB + 1, DELTA_MIB);
            c
        })
        .collect();

    // An abandoned sync: its client killed mid-way leaves unreferenced chunks behind.
    let junk = tmp.path().join("junk.raw");
    make_raw(&junk, "8M");
    write_random(&junk, 0, 8);
    let mut j = Guard(
        replicate(&[&servers[0]], &fps, &tokens[0], &junk, "junk", "2M")
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(2000));
    let _ = j.0.kill();
    let _ = j.0.wait();

    // 12 replications at once, connector i % 3, preferring server i % 3.
    let t0 = Instant::now();
    let mut running: Vec<Guard> = (0..CLONES)
        .map(|i| {
            let order: Vec<&Server> = (0..3).map(|k| &servers[(i + k) % 3]).collect();
            Guard(
                replicate(
                    &order,
                    &fps,
                    &tokens[i % 3],
                    &clones[i],
                    &format!("clone-{i}"),
                    "3M",
                )
                .spawn()
                .unwrap(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    let gc_mid = staging_json(&sw, &["gc", "--json", "--store", store]);
    eprintln!("gc during the run: {gc_mid}");
    assert_eq!(gc_mid["chunks_deleted"], 0, "{gc_mid}");
    assert!(
        !gc_mid["leases"].as_array().unwrap().is_empty(),
        "the gc ran while syncs were in progress: {gc_mid}"
    );
    // Server 1 killed (its clients move to the next server) and restarted on its address.
    let addr1 = servers[1].addr.clone();
    servers[1].kill9();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    servers[1] = server(&sw, &tmp.path().join("srv1"), store, &addr1);
    let mut reports = Vec::new();
    for (i, g) in running.iter_mut().enumerate() {
        let child = std::mem::replace(&mut g.0, Command::new("true").spawn().unwrap());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "clone {i}: {err}");
        reports.push(last_json(&String::from_utf8_lossy(&o.stdout)));
    }
    let replicate_secs = t0.elapsed().as_secs_f64();
    let attempts: Vec<u64> = reports
        .iter()
        .map(|r| r["attempts"].as_u64().unwrap())
        .collect();
    eprintln!("12 replications in {replicate_secs:.1} s; attempts per client {attempts:?}");
    assert!(
        attempts.iter().any(|&a| a > 1),
        "no client lost its server: the kill came too late"
    );

    // After the run, once the killed server's leases are stale: a gc reclaims the abandoned
    // sync's chunks, verify is clean.
    let stale = Duration::from_secs(LEASE_STALE_SECS + 1);
    if let Some(left) = stale.checked_sub(killed.elapsed()) {
        std::thread::sleep(left);
    }
    let gc_end = staging_json(&sw, &["gc", "--json", "--store", store]);
    eprintln!("gc after the run: {gc_end}");
    assert_eq!(gc_end["fossils_waiting"], 0, "{gc_end}");
    assert!(gc_end["chunks_deleted"].as_u64().unwrap() >= 1, "{gc_end}");
    let v = staging_json(&sw, &["verify", "--json", "--store", store]);
    assert_eq!(v["chunks_bad"], serde_json::json!([]), "{v}");
    assert_eq!(v["indexes_bad"], serde_json::json!([]), "{v}");
    assert_eq!(v["indexes_ok"], CLONES, "{v}");

    // Every export byte-equal to the source as qemu-img reads it.
    for (i, c) in clones.iter().enumerate() {
        let reference = tmp.path().join("reference.raw");
        reference_raw(c, "raw", &reference);
        let out = tmp.path().join("export.raw");
        let srv = &servers[(i + 2) % 3];
        let e = last_json(&run_ok(
            Command::new(godwit_bin())
                .args([
                    "export",
                    "--json",
                    "--vm",
                    &format!("clone-{i}"),
                    "--format",
                    "raw",
                ])
                .args(["--target", &srv.url(), "--target-fingerprint", &fps])
                .arg("--token-file")
                .arg(&tokens[i % 3])
                .arg("--out")
                .arg(&out),
        ));
        assert_eq!(e["verified"], true, "{e}");
        assert!(files_equal(&out, &reference), "clone {i}: export differs");
        let _ = std::fs::remove_file(&out);
    }

    // Stored: the template once plus every delta (random data: zstd stores it as is).
    let list = staging_json(&sw, &["list", "--json", "--store", store]);
    let u = &list["usage"];
    let stored = u["stored_bytes"].as_u64().unwrap();
    let logical = u["logical_bytes"].as_u64().unwrap();
    let expect = (TEMPLATE_DATA_MIB + CLONES as u64 * DELTA_MIB) * MIB;
    let (objects, object_bytes) = sw.usage("soak", "store/chunks/");
    eprintln!(
        "soak: logical {} MiB over {CLONES} VMs; stored {:.2} MiB in {} chunks (template {TEMPLATE_DATA_MIB} MiB + {CLONES} x {DELTA_MIB} MiB = {} MiB expected); dedupe {:.1}x; total {:.1} s",
        logical / MIB,
        stored as f64 / MIB as f64,
        u["chunks"],
        expect / MIB,
        logical as f64 / stored as f64,
        t_start.elapsed().as_secs_f64()
    );
    assert_eq!(
        logical,
        CLONES as u64 * (TEMPLATE_DATA_MIB + DELTA_MIB) * MIB
    );
    assert_eq!(
        u["chunks"],
        TEMPLATE_DATA_MIB + CLONES as u64 * DELTA_MIB,
        "{u}"
    );
    assert!(
        stored >= expect && stored < expect + expect / 100,
        "stored {stored} bytes, expected about {expect}"
    );
    assert_eq!(
        (objects, object_bytes),
        (u["chunks"].as_u64().unwrap(), stored)
    );
    for vm in u["vms"].as_array().unwrap() {
        assert_eq!(
            vm["unique_bytes"].as_u64().unwrap() / MIB,
            DELTA_MIB,
            "{vm}"
        );
    }
}
