//! `godwit replicate --source hyperv://...` end to end against the Hyper-V simulator (running in
//! this test process, so the test can look at its checkpoints): a Generation 2 VM with a dynamic
//! VHDX (made by qemu-img) and a Generation 1 VM whose disk is a differencing AVHD child of a
//! dynamic VHD, each replicated to a real staging server and exported; the export equals
//! `qemu-img convert -O raw` of the VHDX and libvhdi's read of the VHD chain. Afterwards the
//! simulator holds no checkpoint and the ledger is empty — also after a failed run, and after a
//! `kill -9` of the connector followed by a rerun (which sweeps the leftover checkpoint).

use godwit_tests::hyperv::*;
use godwit_tests::peers::{godwit_bin, run, run_ok, sha256_file};
use godwit_tests::staging;
use staging::{Guard, Server, token_file};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn staging(srv: &Server) -> Staging {
    Staging {
        url: srv.url(),
        fingerprint: srv.fingerprint.clone(),
        token_file: token_file(srv.data.parent().unwrap(), &srv.token),
    }
}

#[test]
fn hyperv_vms_replicate_to_staging_and_export_identical_disks_without_leftover_checkpoints() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");

    // The inventory shows the differencing child and its parent.
    let inv = run_ok(
        Command::new(godwit_bin())
            .env("GODWIT_PASSWORD", PASSWORD)
            .args(["inventory", "--json", "--vm", "db-gen1", "--source"])
            .arg(format!(
                "hyperv://Administrator@127.0.0.1:{}",
                sim.addr.port()
            ))
            .args(["--source-fingerprint", &sim.fingerprint.to_string()]),
    );
    let inv: serde_json::Value = serde_json::from_str(&inv).unwrap();
    let d = &inv[0]["Disks"][0];
    assert_eq!(d["VhdType"], "Differencing", "{inv}");
    assert_eq!(d["ParentPath"], "C:\\VMs\\db\\db.vhd", "{inv}");
    assert_eq!(d["Path"], format!("C:\\VMs\\db\\{CHILD}"), "{inv}");

    for (vm, reference) in [("web-gen2", &f.web_ref), ("db-gen1", &f.db_ref)] {
        let out = run_ok(&mut replicate_cmd(
            &sim,
            &srv.url(),
            &srv.fingerprint,
            &tf,
            &state,
            vm,
        ));
        assert!(
            out.contains(&format!("Hyper-V cycle of {vm}: 1 disk(s)")),
            "{out}"
        );
        assert_eq!(
            export_sha(&staging(&srv), vm, work.path()),
            sha256_file(reference),
            "{vm}: exported bytes differ"
        );
        assert!(
            sim.checkpoints().is_empty(),
            "{vm}: {:?}",
            sim.checkpoints()
        );
        assert_eq!(ledger_entries(&state), 0, "{vm}: ledger not empty");
    }
    assert_eq!(sim.open_shells(), 0, "shells left open");
}

/// The ledger's entries (JSON values).
fn ledger(state: &std::path::Path) -> Vec<serde_json::Value> {
    let p = state.join("hyperv-checkpoint-ledger.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v["entries"].as_array().unwrap().clone()
}

#[test]
fn failed_replication_keeps_its_checkpoint_for_the_retry_which_resumes_it_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    // A staging target nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tf = token_file(work.path(), "0123456789abcdef0123");
    let state = work.path().join("state");
    let fp = format!("SHA256:{}", "ab".repeat(32));
    let o = run(&mut replicate_cmd(
        &sim,
        &format!("staging://127.0.0.1:{port}"),
        &fp,
        &tf,
        &state,
        "web-gen2",
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "replicate to a dead target succeeded: {err}"
    );
    assert!(err.contains("disk 0"), "{err}");
    assert!(err.contains("kept on the host for the retry"), "{err}");
    // The checkpoint stays, ledgered as an unfinished attempt.
    let kept = sim.checkpoints();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let entries = ledger(&state);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["checkpoint_name"], kept[0].name.as_str());
    assert!(entries[0]["kept_for_retry_unix"].is_u64(), "{entries:?}");
    // A VM that does not exist: exit code 5; a kept checkpoint of a VM of that name that is
    // gone (written here as if it had been) leaves the ledger, the other VM's stays.
    let mut ghost = entries[0].clone();
    ghost["vm_id"] = "6c1f2a8e-0000-4000-8000-0000000000ff".into();
    ghost["vm_name"] = "nope".into();
    ghost["checkpoint_name"] = "godwit-ghost".into();
    let text = format!(r#"{{"version":1,"entries":[{},{}]}}"#, entries[0], ghost);
    std::fs::write(state.join("hyperv-checkpoint-ledger.json"), text).unwrap();
    let o = run(&mut replicate_cmd(
        &sim,
        &format!("staging://127.0.0.1:{port}"),
        &fp,
        &tf,
        &state,
        "nope",
    ));
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let names: Vec<String> = ledger(&state)
        .iter()
        .map(|e| e["checkpoint_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec![kept[0].name.clone()]);
    assert_eq!(sim.checkpoints().len(), 1);
    // The retry (a live target now) resumes the kept checkpoint and leaves nothing.
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tok = work.path().join("tok2");
    std::fs::create_dir_all(&tok).unwrap();
    let tf = token_file(&tok, &srv.token);
    let out = run_ok(&mut replicate_cmd(
        &sim,
        &srv.url(),
        &srv.fingerprint,
        &tf,
        &state,
        "web-gen2",
    ));
    assert!(
        out.contains(&format!("resumed kept checkpoint {}", kept[0].name)),
        "{out}"
    );
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(ledger_entries(&state), 0);
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&f.web_ref)
    );
    assert_eq!(sim.open_shells(), 0);
}

#[test]
fn killed_replication_leaves_a_ledgered_checkpoint_that_the_next_run_resumes() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 100);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let child = replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let t0 = Instant::now();
    // Killed once the checkpoint exists and its id is in the ledger (the disk being read).
    let recorded = || {
        std::fs::read(state.join("hyperv-checkpoint-ledger.json"))
            .ok()
            .and_then(|b| godwit_hyperv::ledger::parse_ledger(&b).ok())
            .is_some_and(|l| l.iter().any(|e| e.checkpoint_id.is_some()))
    };
    while sim.checkpoints().is_empty() || !recorded() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checkpoint was created"
        );
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "replicate ended before its checkpoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // kill -9 while the disk is being read.
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    let left = sim.checkpoints();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].name.starts_with("godwit-"), "{left:?}");
    assert_eq!(
        ledger_entries(&state),
        1,
        "the checkpoint was not in the ledger before it existed"
    );
    let out = run_ok(&mut replicate_cmd(
        &sim,
        &srv.url(),
        &srv.fingerprint,
        &tf,
        &state,
        "web-gen2",
    ));
    assert!(
        out.contains(&format!("resumed kept checkpoint {}", left[0].name)),
        "{out}"
    );
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(ledger_entries(&state), 0);
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&f.web_ref)
    );
}

#[test]
fn pywinrm_drives_the_checkpoint_and_read_scripts() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/hyperv/pywinrm_checkpoint.py"
        ))
        .arg(format!("https://127.0.0.1:{}/wsman", sim.addr.port()))
        .arg(&ca)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../hyperv/scripts"))
        .arg(WEB_ID)
        .env("GODWIT_SIM_PASSWORD", PASSWORD)
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "pywinrm: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["create"]["rc"], 0, "{v}");
    assert_eq!(v["create"]["json"]["Name"], "godwit-pywinrm", "{v}");
    assert_eq!(
        v["create"]["json"]["Disks"][0]["Path"], "C:\\VMs\\web\\web.vhdx",
        "{v}"
    );
    assert_eq!(v["read"]["len"], 512, "{v}");
    assert_eq!(v["read"]["ok"], true, "{v}");
    assert_eq!(v["read"]["head"], "vhdxfile", "{v}");
    assert_eq!(v["outside"]["rc"], 2, "{v}");
    assert!(
        v["outside"]["stderr"]
            .as_str()
            .unwrap()
            .contains("Could not find file"),
        "{v}"
    );
    assert_eq!(v["remove"]["json"]["Removed"], 1, "{v}");
    assert!(sim.checkpoints().is_empty());
}

#[test]
fn checkpoint_freezes_the_parent_while_an_avhdx_child_takes_the_writes_and_removal_merges() {
    use godwit_disk::BlockSource;
    use godwit_hyperv::hostfile::HostFileLocator;
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let source = godwit_hyperv::Source::parse(&format!(
        "hyperv://Administrator@127.0.0.1:{}",
        sim.addr.port()
    ))
    .unwrap();
    let creds = godwit_hyperv::Credentials {
        user: "Administrator".into(),
        password: PASSWORD.into(),
    };
    let client = godwit_hyperv::replicate::connect(&source, &creds, Some(sim.fingerprint)).unwrap();
    let host = godwit_hyperv::transport::Transport::authority(client.transport());
    let shell = client.open_shell().unwrap();
    let cp = godwit_hyperv::checkpoint::create(&shell, &host, WEB_ID, "godwit-t1", None).unwrap();
    assert_eq!(cp.disks[0].path, "C:\\VMs\\web\\web.vhdx");
    // A recovery checkpoint (CreateSnapshot, SnapshotType 32768), application consistent
    // (the guest has VSS).
    assert_eq!(
        (cp.snapshot_type.as_str(), cp.consistency.as_str()),
        ("Recovery", "ApplicationConsistent")
    );
    let frozen_mtime = std::fs::metadata(f.dir.join("web/web.vhdx"))
        .unwrap()
        .modified()
        .unwrap();
    // The VM now runs on a real AVHDX child of the frozen file.
    let active = sim.active_file(WEB_ID, 0).unwrap();
    assert_eq!(active, format!("web/web_{}.avhdx", cp.id.to_uppercase()));
    let child = f.dir.join(&active);
    let base = f.dir.join("web/web.vhdx");
    assert!(child.is_file());
    let writes = guest_writes(40);
    for (off, data) in &writes {
        sim.guest_write(WEB_ID, 0, *off, data).unwrap();
    }
    let expect = work.path().join("expect.raw");
    with_writes(&f.web_ref, &writes, &expect);
    // The frozen parent is unchanged (qemu-img's view, and the connector's over WinRM) ...
    let web_sha = sha256_file(&f.web_ref);
    assert_eq!(qemu_raw_sha(&base, work.path()), web_sha);
    let locator = HostFileLocator::new(&client).unwrap();
    let frozen =
        godwit_disk::Disk::open_with(&locator, &cp.disks[0].path, godwit_disk::FormatHint::Auto)
            .unwrap();
    let mut buf = vec![0u8; usize::try_from(frozen.virtual_size()).unwrap()];
    frozen.read_at(0, &mut buf).unwrap();
    assert!(
        buf == std::fs::read(&f.web_ref).unwrap(),
        "frozen parent changed"
    );
    // ... while the child chain holds the writes (libvhdi reads AVHDX + parent).
    assert_eq!(
        libvhdi_sha(&[&child, &base], work.path()),
        sha256_file(&expect)
    );
    // The inventory shows the child as the VM's disk.
    let inv = godwit_hyperv::inventory(&source, &creds, Some(sim.fingerprint)).unwrap();
    let vm = inv.vms.iter().find(|v| v.record.id == WEB_ID).unwrap();
    let d = &vm.record.disks[0];
    assert_eq!(d.vhd_type.as_deref(), Some("Differencing"), "{d:?}");
    assert_eq!(
        d.parent_path.as_deref(),
        Some("C:\\VMs\\web\\web.vhdx"),
        "{d:?}"
    );
    // Removal merges the child into the parent and deletes it.
    let n = godwit_hyperv::checkpoint::remove(&shell, &host, WEB_ID, "godwit-t1").unwrap();
    assert_eq!(n, 1);
    shell.close().unwrap();
    assert!(!child.exists(), "the AVHDX is still there after the merge");
    assert_eq!(sim.active_file(WEB_ID, 0).unwrap(), "web/web.vhdx");
    // The merge rewrote the frozen parent: its LastWriteTime is new.
    let merged_mtime = std::fs::metadata(&base).unwrap().modified().unwrap();
    assert!(
        merged_mtime > frozen_mtime,
        "the merge left the parent's time"
    );
    assert_eq!(qemu_raw_sha(&base, work.path()), sha256_file(&expect));
    assert!(sim.checkpoints().is_empty());
}

#[test]
fn rct_incremental_sends_only_the_changed_blocks_and_the_export_equals_the_disk() {
    const CHUNK: u64 = 64 * 1024;
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    let state = work.path().join("state");
    let sync =
        |expect_changed: Option<u64>| {
            let out =
                run_ok(
                    replicate_cmd(&sim, &srv.url(), &srv.fingerprint, &tf, &state, "web-gen2")
                        .args(["--json", "--chunk-size", "64K"]),
                );
            let (done, cycle) = json_events(&out);
            assert_eq!(done.len(), 1, "{out}");
            assert_eq!(
                cycle["changes"][0]["changed_bytes"],
                serde_json::json!(expect_changed),
                "{out}"
            );
            assert!(cycle["reference_point"].is_string(), "{out}");
            assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
            assert_eq!(ledger_entries(&state), 0);
            (done[0].clone(), cycle)
        };
    // Full sync: everything read; the checkpoint becomes a reference point.
    let (full, _) = sync(None);
    // (Unallocated VHDX blocks are not read at all.)
    let full_read = full["bytes_read"].as_u64().unwrap();
    assert!(full_read >= 4 * MIB, "{full}");
    assert_eq!(full["chunks_carried"], 0, "{full}");
    // The guest changes three 64 KiB blocks; the incremental reads and sends only those.
    let writes = guest_writes(70);
    for (off, data) in &writes {
        sim.guest_write(WEB_ID, 0, *off, data).unwrap();
    }
    let changed = 3 * CHUNK;
    let (inc, cycle) = sync(Some(changed));
    assert_eq!(cycle["changes"][0]["ranges"], 3, "{cycle}");
    assert_eq!(inc["bytes_read"], changed, "{inc}");
    assert!(
        inc["bytes_sent"].as_u64().unwrap() <= changed + 4096,
        "{inc}"
    );
    assert_eq!(inc["chunks_carried"], 24 * MIB / CHUNK - 3, "{inc}");
    // WinRM reads: the three blocks plus VHDX metadata, far from the whole disk.
    assert!(cycle["bytes_read"].as_u64().unwrap() < 8 * MIB, "{cycle}");
    let expect = work.path().join("expect.raw");
    with_writes(&f.web_ref, &writes, &expect);
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&expect)
    );
    assert_eq!(
        qemu_raw_sha(&f.dir.join("web/web.vhdx"), work.path()),
        sha256_file(&expect)
    );
    // No change: nothing read. An RCT id the host does not know: read in full, still right.
    let (none, _) = sync(Some(0));
    assert_eq!(none["bytes_read"], 0, "{none}");
    let p = state.join("hyperv-rct.json");
    let text = std::fs::read_to_string(&p).unwrap();
    let id =
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["vms"][0]["disks"][0]["rct_id"]
            .as_str()
            .unwrap()
            .to_string();
    std::fs::write(&p, text.replace(&id, "rctX:00000000-dead:0")).unwrap();
    let (again, again_cycle) = sync(None);
    // The forced RCT failure is a full re-read in the cycle's summary, saying why.
    let why = again_cycle["changes"][0]["full_reread"]
        .as_str()
        .unwrap_or("");
    assert!(why.contains("32773"), "{again_cycle}");
    // (The merged VHDX was rewritten with all-zero blocks unallocated: fewer bytes than the
    // first full read, but nothing carried over.)
    assert_eq!(again["chunks_carried"], 0, "{again}");
    assert!(again["bytes_read"].as_u64().unwrap() >= 4 * MIB, "{again}");
    assert_eq!(
        export_sha(&staging(&srv), "web-gen2", work.path()),
        sha256_file(&expect)
    );
}

#[test]
fn inventory_exit_codes_for_wrong_password_and_untrusted_certificate() {
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("host"));
    let sim = start_sim(&f, 0);
    let inventory = |password: &str, pin: Option<String>| {
        let mut c = Command::new(godwit_bin());
        c.env("GODWIT_PASSWORD", password)
            .args(["inventory", "--source"])
            .arg(format!(
                "hyperv://Administrator@127.0.0.1:{}",
                sim.addr.port()
            ));
        if let Some(p) = pin {
            c.args(["--source-fingerprint", &p]);
        }
        let o = run(&mut c);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let fp = sim.fingerprint.to_string();
    let (code, err) = inventory("wrong", Some(fp.clone()));
    assert_eq!(code, Some(3), "{err}");
    // Unpinned: exit 4 and the message shows the fingerprint to pin.
    let (code, err) = inventory(PASSWORD, None);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains(&fp), "{err}");
    // Changed certificate (another pin): exit 4 naming both.
    let other = format!("SHA256:{}", "cd".repeat(32));
    let (code, err) = inventory(PASSWORD, Some(other));
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains(&fp), "{err}");
    let (code, err) = inventory(PASSWORD, Some(fp));
    assert_eq!(code, Some(0), "{err}");
}
