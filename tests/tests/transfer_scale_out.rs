//! Several staging servers over one SeaweedFS store: connector tokens kept in the store (issued,
//! listed and revoked with `godwit staging tokens`, accepted by every server of the store),
//! each connector reading and writing only its own VMs, sync ids assigned by the store, and a
//! connector failing over to another server when its server dies mid-sync.

use godwit_tests::peers::need;
use godwit_tests::peers::{godwit_bin, run, run_ok};
use godwit_tests::s3;
use godwit_tests::staging::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env(sw: &s3::Seaweed) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", sw.endpoint.clone()),
    ]
}

fn start_server(sw: &s3::Seaweed, data: &Path, store: &str, listen: &str) -> Server {
    let e = env(sw);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with(data, listen, &["--store", store], &e)
}

/// `godwit staging tokens issue` for `connector`; the token written to a new file.
fn issue(sw: &s3::Seaweed, store: &str, connector: &str, dir: &Path) -> (PathBuf, String) {
    let f = dir.join(format!("{connector}.token"));
    let out = run_ok(sw.env(Command::new(godwit_bin()).args([
        "staging",
        "tokens",
        "issue",
        "--json",
        "--store",
        store,
        "--connector",
        connector,
        "--out",
        f.to_str().unwrap(),
    ])));
    let v = last_json(&out);
    let tok = std::fs::read_to_string(&f).unwrap().trim().to_string();
    assert_eq!(v["token"], tok.as_str());
    (f, v["id"].as_str().unwrap().to_string())
}

fn staging(sw: &s3::Seaweed, args: &[&str]) -> std::process::Output {
    run(sw.env(Command::new(godwit_bin()).arg("staging").args(args)))
}

/// `godwit replicate` through the given servers (tried in order) with a token file.
fn replicate_cmd(
    servers: &[&Server],
    token: &Path,
    src: &Path,
    vm: &str,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(godwit_bin());
    c.args([
        "replicate",
        "--json",
        "--raw-sha256",
        "--vm",
        vm,
        "--token-file",
    ])
    .arg(token)
    .arg("--target-fingerprint")
    .arg(
        servers
            .iter()
            .map(|s| s.fingerprint.clone())
            .collect::<Vec<_>>()
            .join(","),
    )
    .arg("--source")
    .arg(format!("file://{}", src.display()))
    .args(extra);
    for s in servers {
        c.arg("--target").arg(s.url());
    }
    c
}

fn export_cmd(srv: &Server, token: &Path, vm: &str, out: &Path) -> Command {
    let mut c = Command::new(godwit_bin());
    c.args([
        "export", "--json", "--vm", vm, "--format", "raw", "--target",
    ])
    .arg(srv.url())
    .arg("--target-fingerprint")
    .arg(&srv.fingerprint)
    .arg("--token-file")
    .arg(token)
    .arg("--out")
    .arg(out);
    c
}

#[test]
fn tokens_are_per_connector_kept_in_the_store_and_revocable() {
    need(&["qemu-img", "python3"]);
    let sw = s3::Seaweed::start("scale");
    let store = "s3://scale/tokens";
    let tmp = tempfile::tempdir().unwrap();
    let a = start_server(&sw, &tmp.path().join("a"), store, "127.0.0.1:0");
    let b = start_server(&sw, &tmp.path().join("b"), store, "127.0.0.1:0");
    assert!(
        a.token.starts_with("gwt-"),
        "first server of an empty store: {}",
        a.token
    );
    assert!(b.token.starts_with("none"), "{}", b.token);
    let (east, east_id) = issue(&sw, store, "east", tmp.path());
    let (west, _) = issue(&sw, store, "west", tmp.path());
    let src = tmp.path().join("db.raw");
    make_raw(&src, "8M");
    write_random(&src, 0, 3);
    // east writes "db" through server A; the sync id is the store's (now, not the client's).
    let rep = last_json(&run_ok(&mut replicate_cmd(&[&a], &east, &src, "db", &[])));
    let id = rep["sync_id"].as_str().unwrap();
    let age = run_ok(Command::new("python3").arg("-c").arg(format!(
        "import datetime as d\nt=d.datetime.strptime('{}','%Y%m%dT%H%M%S.%fZ').replace(tzinfo=d.timezone.utc)\nprint(abs((d.datetime.now(d.timezone.utc)-t).total_seconds()))",
        &id[..20]
    )));
    let age: f64 = age.trim().parse().unwrap();
    assert!(age < 120.0, "sync id {id} is {age} s away from now");
    // east reads it back through server B: tokens are in the store, not in one server.
    let out = tmp.path().join("db.out");
    let e = last_json(&run_ok(&mut export_cmd(&b, &east, "db", &out)));
    assert_eq!(e["sync_id"], rep["sync_id"]);
    assert!(files_equal(&out, &src));
    // west can neither read nor write east's VM, on either server.
    for srv in [&a, &b] {
        let o = run(&mut export_cmd(srv, &west, "db", &tmp.path().join("w.out")));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("belongs to another connector"),
            "{err}"
        );
        let o = run(&mut replicate_cmd(
            &[srv],
            &west,
            &src,
            "db",
            &["--retries", "1"],
        ));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("belongs to another connector"),
            "{err}"
        );
    }
    // west has VMs of its own.
    let rep = last_json(&run_ok(&mut replicate_cmd(&[&b], &west, &src, "web", &[])));
    assert_eq!(
        rep["chunks_new"], 0,
        "the chunks are in the store already: {rep}"
    );
    let list = staging(&sw, &["tokens", "list", "--store", store]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert_eq!(
        list.lines().filter(|l| l.contains("active")).count(),
        3,
        "{list}"
    );
    assert!(!list.contains(&std::fs::read_to_string(&east).unwrap().trim().to_string()));
    // A token revoked while its connection is open stops at the next commit.
    let big = tmp.path().join("big.raw");
    make_raw(&big, "16M");
    write_random(&big, 0, 12);
    let mut slow = Guard(
        replicate_cmd(
            &[&a],
            &east,
            &big,
            "big",
            &["--bwlimit", "3M", "--chunk-size", "1M"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let o = staging(&sw, &["tokens", "revoke", "--store", store, &east_id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = Instant::now();
    let st = slow.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(slow.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!st.success(), "a revoked token committed a sync");
    assert!(err.contains("revoked"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
    // And new connections with it are refused by every server.
    for srv in [&a, &b] {
        let o = run(&mut export_cmd(srv, &east, "db", &tmp.path().join("r.out")));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("refused the pairing token"), "{err}");
    }
    let v = staging(&sw, &["verify", "--store", store]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn a_connector_fails_over_when_its_staging_server_dies() {
    need(&["qemu-img", "python3"]);
    let sw = s3::Seaweed::start("failover");
    let store = "s3://failover/s";
    let tmp = tempfile::tempdir().unwrap();
    let mut a = start_server(&sw, &tmp.path().join("a"), store, "127.0.0.1:0");
    let b = start_server(&sw, &tmp.path().join("b"), store, "127.0.0.1:0");
    let (tok, _) = issue(&sw, store, "site", tmp.path());
    let src = tmp.path().join("d.raw");
    make_raw(&src, "48M");
    write_random(&src, 0, 40);
    let mut c = Guard(
        replicate_cmd(
            &[&a, &b],
            &tok,
            &src,
            "vm",
            &["--bwlimit", "12M", "--chunk-size", "1M"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1200));
    a.kill9();
    let o = std::mem::replace(&mut c.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("using staging server {}", b.addr)),
        "{err}"
    );
    let rep = last_json(&String::from_utf8_lossy(&o.stdout));
    assert!(rep["attempts"].as_u64().unwrap() >= 2, "{rep}");
    let out = tmp.path().join("o.raw");
    let e = last_json(&run_ok(&mut export_cmd(&b, &tok, "vm", &out)));
    assert_eq!(e["verified"], true);
    assert!(files_equal(&out, &src));
    // The store holds the 40 data chunks (the resume asked what was there and sent the rest).
    let (n, _) = sw.usage("failover", "s/chunks/");
    assert_eq!(n, 40);
    let v = staging(&sw, &["verify", "--store", store]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
