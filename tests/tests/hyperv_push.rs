//! The Hyper-V host-push data path: `godwit replicate --source hyperv://... --ingest-listen
//! ADDR` runs the ingest endpoint, the simulated host runs `push-ranges.ps1` (recognised by
//! its text) and PUTs the data ranges over HTTPS with the one-time token and the pinned
//! certificate, and WinRM carries only metadata.
//!
//! - Generation 2 (dynamic VHDX from qemu-img) and Generation 1 (VHD + differencing AVHD)
//!   replicated by push and exported: equal to qemu-img's / libvhdi's raw read; the bytes
//!   read over WinRM are a small fraction of those of the WinRM data path;
//! - an RCT incremental pushes only the changed 64 KiB blocks (bytes counted);
//! - the endpoint against curl and a raw TLS client: a good push stored (201, repeated 200),
//!   bad token 401, a range nobody asked for 409, a checksum mismatch 422 and a truncated body
//!   refused, nothing stored for any of them;
//! - a differencing VHD with 96 allocated blocks: its sector bitmaps are pushed first, so
//!   mapping it costs a handful of WinRM commands instead of one per block;
//! - pywinrm runs push-ranges.ps1 (built from the repo's file) on the simulator, which pushes
//!   to an ingest endpoint in this test: the spool then holds the file's bytes; a wrong pin
//!   makes the uploader refuse the endpoint;
//! - `kill -9` of the connector mid-push, then a rerun asks only for the ranges not yet
//!   spooled, and the export is still equal.

use godwit_hyperv::ingest::server::SessionFile;
use godwit_hyperv::ingest::spool::SpoolFile;
use godwit_hyperv::ingest::{IngestIdentity, IngestServer, RangeSet, SpoolBudget};
use godwit_tests::hyperv::*;
use godwit_tests::peers::{godwit_bin, run_ok, sha256_file};
use godwit_tests::staging;
use sha2::{Digest, Sha256};
use staging::{Guard, Server, token_file};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn staging(srv: &Server) -> Staging {
    Staging {
        url: srv.url(),
        fingerprint: srv.fingerprint.clone(),
        token_file: token_file(srv.data.parent().unwrap(), &srv.token),
    }
}

fn pushed_cmd(
    sim: &godwit_hyperv_sim::RunningSim,
    srv: &Server,
    tf: &Path,
    state: &Path,
    vm: &str,
) -> Command {
    let mut c = replicate_cmd(sim, &srv.url(), &srv.fingerprint, tf, state, vm);
    c.args(["--json", "--ingest-listen", "127.0.0.1:0"]);
    c
}

#[test]
fn pushed_disks_export_identical_with_little_read_over_winrm() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    for (vm, reference) in [("web-gen2", &f.web_ref), ("db-gen1", &f.db_ref)] {
        // The WinRM data path first (its own state), for the comparison.
        let state_w = work.path().join(format!("state-winrm-{vm}"));
        let out = run_ok(
            replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state_w, vm).arg("--json"),
        );
        let (_, winrm) = json_events(&out);
        assert!(winrm["push"].is_null(), "{winrm}");
        let winrm_read = winrm["bytes_read"].as_u64().unwrap();
        // The push path.
        let state = work.path().join(format!("state-push-{vm}"));
        let t0 = Instant::now();
        let out = run_ok(&mut pushed_cmd(&sim, &srv, &tf, &state, vm));
        let took = t0.elapsed();
        let (done, cycle) = json_events(&out);
        assert_eq!(done.len(), 1, "{out}");
        let push = &cycle["push"];
        let pushed = push["pushed_bytes"].as_u64().unwrap();
        let over_winrm = cycle["bytes_read"].as_u64().unwrap();
        eprintln!(
            "{vm}: WinRM path read {winrm_read} bytes over WinRM in {} commands; push path: {pushed} bytes pushed in {} pushes, {over_winrm} bytes over WinRM in {} commands, {} bytes served from the spool, {:.2}s",
            winrm["read_commands"],
            push["pushes"],
            cycle["read_commands"],
            push["served_from_spool"],
            took.as_secs_f64()
        );
        assert!(pushed >= 4 * MIB, "{cycle}");
        assert_eq!(push["missing_bytes"], 0, "{cycle}");
        assert_eq!(push["resumed_bytes"], 0, "{cycle}");
        assert!(
            push["served_from_spool"].as_u64().unwrap() >= 4 * MIB,
            "{cycle}"
        );
        // No data over WinRM: what the WinRM path read, less what the spool served, bounds
        // what the push path read over WinRM (metadata, in 1 MiB cached blocks).
        let from_spool = push["served_from_spool"].as_u64().unwrap();
        assert!(
            over_winrm + from_spool <= winrm_read && over_winrm * 2 <= winrm_read,
            "{vm}: {over_winrm} bytes over WinRM with push ({from_spool} from the spool) vs {winrm_read} without"
        );
        assert_eq!(
            export_sha(&staging(&srv), vm, work.path()),
            sha256_file(reference),
            "{vm}: exported bytes differ"
        );
        assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
        assert_eq!(ledger_entries(&state), 0);
        // The spool is removed after a good cycle.
        let spool = state.join("hyperv-spool");
        let left: Vec<_> = std::fs::read_dir(&spool)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "spool left: {left:?}");
    }
    assert_eq!(sim.open_shells(), 0);
}

#[test]
fn rct_incremental_pushes_only_the_changed_blocks() {
    const K64: u64 = 64 * 1024;
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let sync = || {
        let out =
            run_ok(pushed_cmd(&sim, &srv, &tf, &state, "web-gen2").args(["--chunk-size", "64K"]));
        let (done, cycle) = json_events(&out);
        assert_eq!(done.len(), 1, "{out}");
        assert!(cycle["reference_point"].is_string(), "{out}");
        (done[0].clone(), cycle)
    };
    let (_, full) = sync();
    assert!(
        full["push"]["pushed_bytes"].as_u64().unwrap() >= 4 * MIB,
        "{full}"
    );
    let writes = guest_writes(90);
    for (off, data) in &writes {
        sim.guest_write(WEB_ID, 0, *off, data).unwrap();
    }
    let (inc, cycle) = sync();
    eprintln!(
        "RCT incremental: {} bytes pushed in {} pushes, {} bytes over WinRM, changes {}",
        cycle["push"]["pushed_bytes"],
        cycle["push"]["pushes"],
        cycle["bytes_read"],
        cycle["changes"]
    );
    assert_eq!(cycle["changes"][0]["changed_bytes"], 3 * K64, "{cycle}");
    // Exactly the three changed blocks travel (as three pushes), nothing else.
    assert_eq!(cycle["push"]["pushed_bytes"], 3 * K64, "{cycle}");
    assert_eq!(cycle["push"]["pushes"], 3, "{cycle}");
    assert_eq!(inc["bytes_read"], 3 * K64, "{inc}");
    let expect = work.path().join("expect.raw");
    with_writes(&f.web_ref, &writes, &expect);
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&expect)
    );
    // Nothing changed: nothing pushed, no uploader started.
    let (_, none) = sync();
    assert_eq!(none["push"]["pushed_bytes"], 0, "{none}");
    assert_eq!(none["push"]["commands"], 0, "{none}");
}

/// A PUT with curl (an HTTP client nobody here wrote), trusting the endpoint's certificate.
fn curl_put(ca: &Path, url: &str, token: &str, body: &Path, sha: &str) -> (u16, String) {
    let o = Command::new("curl")
        .args(["-sS", "-X", "PUT", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", &format!("X-Godwit-Sha256: {sha}")])
        .args(["-H", "Content-Type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (text, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), text.to_string())
}

#[test]
fn ingest_refuses_bad_tokens_unasked_ranges_corrupt_and_truncated_pushes() {
    godwit_tests::peers::need(&["curl"]);
    let work = tempfile::tempdir().unwrap();
    let id = IngestIdentity::generate(&["127.0.0.1".into()]).unwrap();
    let ca = work.path().join("ingest.pem");
    std::fs::write(&ca, id.cert_pem()).unwrap();
    let server = IngestServer::start("127.0.0.1:0".parse().unwrap(), id).unwrap();
    let port = server.local_addr().port();
    let spool = Arc::new(
        SpoolFile::open(
            &work.path().join("spool"),
            r"C:\VMs\a.vhdx",
            8 * MIB,
            "1",
            Arc::new(SpoolBudget::new(u64::MAX)),
        )
        .unwrap(),
    );
    let ticket = server.open_session(vec![SessionFile {
        asked: RangeSet::from_ranges([(MIB, 3 * MIB)]),
        spool: spool.clone(),
    }]);
    let base = format!("https://localhost:{port}/ingest/v1/{}", ticket.id);
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
    let body = work.path().join("body");
    std::fs::write(&body, &data).unwrap();
    let sha = hex::encode(Sha256::digest(&data));
    // Bad token, and a good token for a session that does not exist: 401.
    let (code, text) = curl_put(&ca, &format!("{base}/0/{MIB}"), "wrong", &body, &sha);
    assert_eq!(code, 401, "{text}");
    let other = format!("https://localhost:{port}/ingest/v1/nosuchsession/0/{MIB}");
    assert_eq!(curl_put(&ca, &other, &ticket.token, &body, &sha).0, 401);
    // A range nobody asked for (before, straddling the end, another file): 409.
    for url in [
        format!("{base}/0/0"),
        format!("{base}/0/{}", 3 * MIB - 1000),
        format!("{base}/1/{MIB}"),
    ] {
        let (code, text) = curl_put(&ca, &url, &ticket.token, &body, &sha);
        assert_eq!(code, 409, "{url}: {text}");
        assert!(text.contains("not asked for"), "{text}");
    }
    // Checksum mismatch: 422, and the message names both digests.
    let wrong = hex::encode(Sha256::digest(b"other"));
    let (code, text) = curl_put(
        &ca,
        &format!("{base}/0/{MIB}"),
        &ticket.token,
        &body,
        &wrong,
    );
    assert_eq!(code, 422, "{text}");
    assert!(text.contains(&sha) && text.contains(&wrong), "{text}");
    // Malformed: no digest header (400), and a body over 8 MiB announced (413).
    let o = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "--cacert",
        ])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {}", ticket.token)])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("{base}/0/{MIB}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "400");
    // No Authorization header at all: 401.
    let o = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "--cacert",
        ])
        .arg(&ca)
        .args(["-H", &format!("X-Godwit-Sha256: {sha}")])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("{base}/0/{MIB}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "401");
    // Truncated: the head announces 65536 bytes, 1000 arrive, then the connection ends.
    let mut tls = tls_client(port, server.fingerprint());
    let head = format!(
        "PUT /ingest/v1/{}/0/{MIB} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: 65536\r\nX-Godwit-Sha256: {sha}\r\n\r\n",
        ticket.id, ticket.token
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(&data[..1000]).unwrap();
    tls.flush().unwrap();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("nothing stored"), "{answer}");
    let t0 = Instant::now();
    while server.stats().truncated == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{:?}",
            server.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Nothing was stored by any of these.
    assert!(spool.received().is_empty(), "{:?}", spool.received());
    // A good push: 201; the same again: 200 (idempotent); the bytes are in the spool.
    let (code, text) = curl_put(&ca, &format!("{base}/0/{MIB}"), &ticket.token, &body, &sha);
    assert_eq!(code, 201, "{text}");
    let (code, _) = curl_put(&ca, &format!("{base}/0/{MIB}"), &ticket.token, &body, &sha);
    assert_eq!(code, 200);
    assert_eq!(
        spool.received().iter().collect::<Vec<_>>(),
        vec![(MIB, MIB + 65536)]
    );
    let mut back = vec![0u8; 65536];
    spool.read_at(&mut back, MIB).unwrap();
    assert!(back == data);
    let st = server.stats();
    eprintln!("ingest stats: {st:?}");
    assert_eq!(
        (
            st.accepted,
            st.repeated,
            st.bad_token,
            st.not_asked,
            st.bad_checksum,
            st.truncated,
            st.bad_request
        ),
        (1, 1, 2, 3, 1, 1, 2)
    );
    // A closed session's token no longer works.
    server.close_session(&ticket.id).unwrap();
    let (code, _) = curl_put(
        &ca,
        &format!("{base}/0/{}", 2 * MIB),
        &ticket.token,
        &body,
        &sha,
    );
    assert_eq!(code, 401);
}

fn tls_client(
    port: u16,
    pin: godwit_hyperv::Fingerprint,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let verifier = Arc::new(godwit_hyperv::trust::PinnedVerifier::new(vec![pin], seen));
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn killed_connector_mid_push_reruns_asking_only_for_the_missing_ranges() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    // Slow pushes, so the connector can be killed between two of them.
    let sim = start_sim_with(&f, r#"{"push_delay_ms":700}"#);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let spool = state.join("hyperv-spool").join(WEB_ID);
    let log = std::fs::File::create(work.path().join("killed.log")).unwrap();
    let child = pushed_cmd(&sim, &srv, &tf, &state, "web-gen2")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    // Spools live under <VM id>/<checkpoint id>/.
    let journaled = || -> u64 {
        let mut total = 0;
        for cp in std::fs::read_dir(&spool).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(cp.path()).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "journal") {
                    total += e.metadata().map_or(0, |m| m.len());
                }
            }
        }
        total
    };
    let t0 = Instant::now();
    while journaled() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no push was spooled"
        );
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "replicate ended before a push: {}",
            std::fs::read_to_string(work.path().join("killed.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // kill -9 right after the first push was made durable.
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    // What the killed run left in its spool that is still good (journaled and its bytes intact):
    // on a loaded machine the transfer may already have stored and released the first push
    // before the kill lands, and then there is nothing to resume from the spool.
    let held = held_spool_bytes(&spool);
    let killed = sim.checkpoints();
    assert_eq!(killed.len(), 1);
    let out = run_ok(&mut pushed_cmd(&sim, &srv, &tf, &state, "web-gen2"));
    let (_, cycle) = json_events(&out);
    let push = &cycle["push"];
    eprintln!("rerun after kill -9: {push}");
    let (needed, resumed, pushed) = (
        push["needed_bytes"].as_u64().unwrap(),
        push["resumed_bytes"].as_u64().unwrap(),
        push["pushed_bytes"].as_u64().unwrap(),
    );
    // The killed run's checkpoint is still there: the rerun resumes it (nothing swept), so its
    // spool is still good and only what is missing is asked for again.
    assert_eq!(cycle["resumed_checkpoint"], true, "{cycle}");
    assert!(cycle["swept"].as_array().unwrap().is_empty(), "{cycle}");
    eprintln!("spool bytes still good after the kill: {held}");
    assert_eq!(resumed, held, "resumed what the spool held: {push}");
    if held == 0 {
        eprintln!(
            "the kill landed after the pushed range was stored and released: nothing to resume"
        );
    }
    assert_eq!(resumed % (4 * MIB), 0, "whole pushes resumed: {push}");
    assert_eq!(resumed + pushed, needed, "{push}");
    assert_eq!(push["missing_bytes"], 0, "{push}");
    assert_eq!(cycle["checkpoint"], killed[0].name.as_str(), "{cycle}");
    assert!(sim.checkpoints().is_empty());
    assert_eq!(ledger_entries(&state), 0);
    assert!(!spool.exists(), "spool left: {}", spool.display());
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&f.web_ref)
    );
    let _ = godwit_bin();
}

/// Bytes of the spools under `spool` (`<checkpoint>/<key>.journal` + `.data`) whose journal
/// record is whole and whose bytes still have the recorded SHA-256.
fn held_spool_bytes(spool: &Path) -> u64 {
    use godwit_hyperv::ingest::spool::parse_journal;
    use std::os::unix::fs::FileExt;
    let mut held = 0;
    for cp in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(cp.path()).into_iter().flatten().flatten() {
            let j = e.path();
            if j.extension().is_none_or(|x| x != "journal") {
                continue;
            }
            let Ok(data) = std::fs::File::open(j.with_extension("data")) else {
                continue;
            };
            let (records, _) = parse_journal(&std::fs::read(&j).unwrap());
            for r in records {
                let mut buf = vec![0u8; usize::try_from(r.len).unwrap()];
                if data.read_exact_at(&mut buf, r.offset).is_ok()
                    && Sha256::digest(&buf).as_slice() == r.sha256
                {
                    held += r.len;
                }
            }
        }
    }
    held
}

#[test]
fn differencing_vhd_bitmaps_are_pushed_not_read_block_by_block_over_winrm() {
    const BLOCKS: u64 = 96;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("host");
    std::fs::create_dir_all(dir.join("big")).unwrap();
    godwit_tests::peers::need(&["qemu-img", "/usr/bin/python3"]);
    let base = dir.join("big/big.vhd");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic",
        base.to_str().unwrap(),
        "256M",
    ]);
    let bytes = std::fs::read(&base).unwrap();
    let footer = godwit_disk::vhd::footer::Footer::parse(&bytes[bytes.len() - 512..]).unwrap();
    let size = godwit_disk::Disk::open(base.to_str().unwrap())
        .unwrap()
        .top()
        .virtual_size;
    // One 4 KiB write in each of 96 blocks of 2 MiB.
    let writes: vhd_gen::Writes = (0..BLOCKS)
        .map(|i| {
            (
                i * 2 * MIB + 8192,
                vhd_gen::fill(u8::try_from(i % 250).unwrap(), 4096),
            )
        })
        .collect();
    let name = "big_0A1B2C3D-4E5F-4061-8273-94A5B6C7D8E9.avhd";
    let child = dir.join("big").join(name);
    vhd_gen::vhd(
        child.to_str().unwrap(),
        size,
        2 * 1024 * 1024,
        Some(&vhd_gen::VhdParent {
            unique_id: footer.unique_id,
            locators: vec![
                (*b"W2ru", ".\\big.vhd"),
                (*b"W2ku", "C:\\VMs\\big\\big.vhd"),
            ],
            name: "big.vhd",
            space_in_bytes: false,
        }),
        &writes,
    );
    let reference = libvhdi_sha(&[&child, &base], work.path());
    let sim = start_sim_json(
        &dir,
        &format!(
            r#"{{"vms":[{{"id":"6c1f2a8e-0000-4000-8000-0000000000c1","name":"big-gen1","generation":1,
 "state":"Running","processor_count":1,"memory_startup":1073741824,"version":"8.0",
 "checkpoint_type":"Standard","disks":[{{"controller_type":"IDE","controller_number":0,
 "controller_location":0,"path":"big/{name}"}}]}}]}}"#
        ),
    );
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let out = run_ok(
        replicate_cmd(
            &sim,
            &srv.url(),
            &srv.fingerprint,
            &tf,
            &work.path().join("sw"),
            "big-gen1",
        )
        .arg("--json"),
    );
    let (_, winrm) = json_events(&out);
    assert_eq!(
        export_sha(&staging(&srv), "big-gen1", work.path()),
        reference
    );
    let out = run_ok(&mut pushed_cmd(
        &sim,
        &srv,
        &tf,
        &work.path().join("sp"),
        "big-gen1",
    ));
    let (_, pushed) = json_events(&out);
    assert_eq!(
        export_sha(&staging(&srv), "big-gen1", work.path()),
        reference
    );
    eprintln!(
        "differencing VHD, {BLOCKS} blocks: WinRM path {} bytes in {} commands; push path {} bytes over WinRM in {} commands, push {}",
        winrm["bytes_read"],
        winrm["read_commands"],
        pushed["bytes_read"],
        pushed["read_commands"],
        pushed["push"]
    );
    assert!(
        winrm["read_commands"].as_u64().unwrap() >= BLOCKS,
        "{winrm}"
    );
    assert!(pushed["read_commands"].as_u64().unwrap() <= 12, "{pushed}");
    assert_eq!(pushed["push"]["missing_bytes"], 0, "{pushed}");
    assert_eq!(pushed["push"]["commands"], 2, "{pushed}");
}

#[test]
fn ingest_flags_are_checked_before_anything_runs() {
    let work = tempfile::tempdir().unwrap();
    let tf = token_file(work.path(), "0123456789abcdef0123");
    let fp = format!("SHA256:{}", "ab".repeat(32));
    let attempt = |source: &str, extra: &[&str]| {
        let o = Command::new(godwit_bin())
            .env("GODWIT_PASSWORD", "x")
            .args(["replicate", "--vm", "v", "--source", source])
            .args([
                "--target",
                "staging://127.0.0.1:9",
                "--target-fingerprint",
                &fp,
            ])
            .arg("--token-file")
            .arg(&tf)
            .arg("--state-dir")
            .arg(work.path().join("state"))
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let hv = "hyperv://Administrator@127.0.0.1:9";
    let (code, err) = attempt(
        hv,
        &["--ingest-listen", "127.0.0.1:0", "--spool-limit", "1M"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--spool-limit") && err.contains("two pushes"),
        "{err}"
    );
    let (code, err) = attempt(hv, &["--ingest-url", "https://10.0.0.5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("need --ingest-listen"), "{err}");
    let (_, err) = attempt(
        hv,
        &["--ingest-listen", "127.0.0.1:0", "--ingest-url", "http://x"],
    );
    assert!(err.contains("not https://HOST[:PORT]"), "{err}");
    let (_, err) = attempt(hv, &["--ingest-listen", "nonsense"]);
    assert!(err.contains("not IP:PORT"), "{err}");
    let (_, err) = attempt("file:///dev/null", &["--ingest-listen", "127.0.0.1:0"]);
    assert!(err.contains("for hyperv:// sources"), "{err}");
}

#[test]
fn pywinrm_runs_push_ranges_and_the_host_pushes_to_the_endpoint() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let ca = work.path().join("sim.pem");
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    let server = IngestServer::start(
        "127.0.0.1:0".parse().unwrap(),
        IngestIdentity::generate(&["127.0.0.1".into()]).unwrap(),
    )
    .unwrap();
    let file = f.dir.join("web/web.vhdx");
    let len = std::fs::metadata(&file).unwrap().len();
    let spool = Arc::new(
        SpoolFile::open(
            &work.path().join("spool"),
            r"C:\VMs\web\web.vhdx",
            len,
            "1",
            Arc::new(SpoolBudget::new(u64::MAX)),
        )
        .unwrap(),
    );
    let ranges = [(0u64, MIB + 4096), (4 * MIB, 65536)];
    let pywinrm = |pin: String| {
        let ticket = server.open_session(vec![SessionFile {
            asked: RangeSet::from_ranges(ranges.iter().map(|&(a, l)| (a, a + l))),
            spool: spool.clone(),
        }]);
        let args = serde_json::json!({
            "Url": format!("https://127.0.0.1:{}/ingest/v1/{}", server.local_addr().port(), ticket.id),
            "Token": ticket.token, "Pin": pin, "Chunk": 1 << 20, "Retries": 1, "Seconds": 60,
            "Files": [{"Id": 0, "Path": "C:\\VMs\\web\\web.vhdx"}],
            "Ranges": ranges.iter().flat_map(|&(a, l)| [0, a, l]).collect::<Vec<_>>(),
        });
        let o = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/hyperv/pywinrm_push.py"
            ))
            .arg(format!("https://127.0.0.1:{}/wsman", sim.addr.port()))
            .arg(&ca)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../hyperv/scripts"))
            .arg(args.to_string())
            .env("GODWIT_SIM_PASSWORD", PASSWORD)
            .output()
            .expect("python3 runs");
        assert!(
            o.status.success(),
            "pywinrm: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        server.close_session(&ticket.id);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // A pin that is not the endpoint's: the uploader refuses to send anything.
    let v = pywinrm("ab".repeat(32));
    assert_eq!(v["rc"], 2, "{v}");
    assert!(
        v["stderr"]
            .as_str()
            .unwrap()
            .contains("did not show the pinned certificate"),
        "{v}"
    );
    assert!(spool.received().is_empty());
    // The right pin: 1 MiB chunks, so three pushes.
    let v = pywinrm(hex::encode(server.fingerprint().0));
    assert_eq!(v["rc"], 0, "{v}");
    let out: serde_json::Value =
        serde_json::from_str(v["stdout"].as_str().unwrap().trim()).unwrap();
    assert_eq!(out["Pushes"], 3, "{v}");
    assert_eq!(out["Bytes"], MIB + 4096 + 65536, "{v}");
    assert_eq!(
        (out["Next"].as_u64(), out["NextOffset"].as_u64()),
        (Some(2), Some(0)),
        "{v}"
    );
    let bytes = std::fs::read(&file).unwrap();
    for (a, l) in ranges {
        assert!(
            spool.received().contains(a, a + l),
            "{:?}",
            spool.received()
        );
        let mut buf = vec![0u8; usize::try_from(l).unwrap()];
        spool.read_at(&mut buf, a).unwrap();
        let s = usize::try_from(a).unwrap();
        assert!(
            buf == bytes[s..s + buf.len()],
            "spooled bytes at {a} differ"
        );
    }
    assert_eq!(server.stats().accepted, 3);
}
