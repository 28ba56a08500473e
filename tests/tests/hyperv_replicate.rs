//! `godwit replicate --source hyperv://...` end to end against the Hyper-V simulator (running in
//! this test process, so the test can look at its checkpoints): a Generation 2 VM with a dynamic
//! VHDX (made by qemu-img) and a Generation 1 VM whose disk is a differencing AVHD child of a
//! dynamic VHD, each replicated to a real staging server and exported; the export equals
//! `qemu-img convert -O raw` of the VHDX and libvhdi's read of the VHD chain. Afterwards the
//! simulator holds no checkpoint and the ledger is empty — also after a failed run, and after a
//! `kill -9` of the connector followed by a rerun (which sweeps the leftover checkpoint).

#[path = "transfer_util.rs"]
mod util;
#[allow(dead_code, clippy::all)]
#[path = "../../disk/tests/common/vhd_gen.rs"]
mod vhd_gen;

use godwit_hyperv::ledger::parse_ledger;
use godwit_hyperv::sim::model::SimModel;
use godwit_hyperv::sim::{RunningSim, SimConfig, start};
use godwit_tests::peers::{godwit_bin, run, run_ok, sha256_file};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::{Guard, Server, need, token_file};

const PASSWORD: &str = "S3cret-sim";
const WEB_ID: &str = "6c1f2a8e-0000-4000-8000-0000000000a2";
const DB_ID: &str = "6c1f2a8e-0000-4000-8000-0000000000a1";
const CHILD: &str = "db_3F2504E0-4F89-11D3-9A0C-0305E82C3301.avhd";
const MIB: u64 = 1 << 20;

fn qemu_img(args: &[&str]) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A raw file of `size` bytes with random data in some MiB-sized places (zeros elsewhere).
fn patterned_raw(path: &Path, size: u64, seed: u8) {
    let mut data = vec![0u8; usize::try_from(size).unwrap()];
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    for start in [0, 3 * MIB, 7 * MIB + 4096, size - MIB] {
        let s = usize::try_from(start).unwrap();
        for b in &mut data[s..s + 1024 * 1024 - 4096] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x.to_le_bytes()[0];
        }
    }
    std::fs::write(path, data).unwrap();
}

struct Fixture {
    dir: PathBuf,
    /// Raw references: what each VM's disk 0 must export as.
    web_ref: PathBuf,
    db_ref: PathBuf,
}

/// VM files and their references under `dir`.
fn fixture(dir: &Path) -> Fixture {
    need(&["qemu-img", "/usr/bin/python3"]);
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::create_dir_all(dir.join("db")).unwrap();
    // Generation 2: a dynamic VHDX.
    let raw = dir.join("web.src.raw");
    patterned_raw(&raw, 24 * MIB, 7);
    let vhdx = dir.join("web/web.vhdx");
    qemu_img(
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic",
        ]
        .iter()
        .copied()
        .chain([raw.to_str().unwrap(), vhdx.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    let web_ref = dir.join("web.ref.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "vhdx",
        "-O",
        "raw",
        vhdx.to_str().unwrap(),
        web_ref.to_str().unwrap(),
    ]);
    // Generation 1: a dynamic VHD and a differencing child (the disk the VM runs on after an
    // earlier checkpoint), built with the disk crate's encoders.
    let raw = dir.join("db.src.raw");
    patterned_raw(&raw, 16 * MIB, 9);
    let base = dir.join("db/db.vhd");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        "subformat=dynamic",
        raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&base).unwrap();
    let footer = godwit_disk::vhd::footer::Footer::parse(&bytes[bytes.len() - 512..]).unwrap();
    let size = godwit_disk::Disk::open(base.to_str().unwrap())
        .unwrap()
        .top()
        .virtual_size;
    let child = dir.join("db").join(CHILD);
    let writes: vhd_gen::Writes = vec![
        (0, vhd_gen::fill(1, 4096)),
        (2 * MIB - 4096, vhd_gen::fill(2, 8192)),
        (5 * MIB, vhd_gen::fill(3, 64 * 1024)),
        (size - 4096, vhd_gen::fill(4, 4096)),
    ];
    vhd_gen::vhd(
        child.to_str().unwrap(),
        size,
        2 * 1024 * 1024,
        Some(&vhd_gen::VhdParent {
            unique_id: footer.unique_id,
            locators: vec![(*b"W2ru", ".\\db.vhd"), (*b"W2ku", "C:\\VMs\\db\\db.vhd")],
            name: "db.vhd",
            space_in_bytes: false,
        }),
        &writes,
    );
    let db_ref = dir.join("db.ref.raw");
    let script = r#"
import sys, pyvhdi
out = sys.argv[1]
files = [pyvhdi.file() for _ in sys.argv[2:]]
for f, name in zip(files, sys.argv[2:]):
    f.open(name)
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
f = files[0]
size = f.get_media_size()
with open(out, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        f.seek(off)
        o.write(f.read(n))
        off += n
"#;
    run_ok(
        Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&db_ref)
            .arg(&child)
            .arg(&base),
    );
    // libvhdi and the generator agree on what the chain holds.
    let mut expect = std::fs::read(&raw).unwrap();
    expect.resize(usize::try_from(size).unwrap(), 0);
    vhd_gen::apply(&mut expect, &writes);
    assert!(
        std::fs::read(&db_ref).unwrap() == expect,
        "libvhdi reads the chain differently"
    );
    Fixture {
        dir: dir.to_path_buf(),
        web_ref,
        db_ref,
    }
}

fn start_sim(f: &Fixture, command_delay_ms: u64) -> RunningSim {
    let json = format!(
        r#"{{"vms":[
 {{"id":"{WEB_ID}","name":"web-gen2","generation":2,"state":"Running","processor_count":4,
   "memory_startup":4294967296,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}},
 {{"id":"{DB_ID}","name":"db-gen1","generation":1,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"8.0","checkpoint_type":"Production","guest_vss":false,
   "disks":[{{"controller_type":"IDE","controller_number":0,"controller_location":0,"path":"db/{CHILD}"}}]}}],
 "faults":{{"command_delay_ms":{command_delay_ms}}}}}"#
    );
    std::fs::write(f.dir.join("vms.json"), json).unwrap();
    start(
        SimConfig {
            user: "Administrator".into(),
            password: PASSWORD.into(),
            model: SimModel::load(&f.dir).unwrap(),
            data_dir: f.dir.clone(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn replicate_cmd(
    sim: &RunningSim,
    srv_url: &str,
    srv_fp: &str,
    tf: &Path,
    state: &Path,
    vm: &str,
) -> Command {
    let mut c = Command::new(godwit_bin());
    c.env("GODWIT_PASSWORD", PASSWORD)
        .args(["replicate", "--retries", "1", "--vm", vm])
        .arg("--source")
        .arg(format!(
            "hyperv://Administrator@127.0.0.1:{}",
            sim.addr.port()
        ))
        .args(["--source-fingerprint", &sim.fingerprint.to_string()])
        .args(["--target", srv_url, "--target-fingerprint", srv_fp])
        .arg("--token-file")
        .arg(tf)
        .arg("--state-dir")
        .arg(state);
    c
}

fn export_sha(srv: &Server, vm: &str, work: &Path) -> String {
    let out = work.join(format!("export-{vm}.raw"));
    let tf = token_file(srv.data.parent().unwrap(), &srv.token);
    run_ok(
        Command::new(godwit_bin())
            .args(["export", "--vm", vm, "--disk", "0", "--format", "raw"])
            .args([
                "--target",
                &srv.url(),
                "--target-fingerprint",
                &srv.fingerprint,
            ])
            .arg("--token-file")
            .arg(&tf)
            .arg("--out")
            .arg(&out),
    );
    sha256_file(&out)
}

fn ledger_entries(state: &Path) -> usize {
    let p = state.join("hyperv-checkpoint-ledger.json");
    match std::fs::read(&p) {
        Ok(b) => parse_ledger(&b).unwrap().len(),
        Err(_) => 0,
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
            export_sha(&srv, vm, work.path()),
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

#[test]
fn failed_replication_removes_its_checkpoint() {
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
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(ledger_entries(&state), 0);
    // A VM that does not exist: exit code 5, and no checkpoint either.
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
    assert!(sim.checkpoints().is_empty());
}

#[test]
fn killed_replication_leaves_a_ledgered_checkpoint_that_the_next_run_sweeps() {
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
    while sim.checkpoints().is_empty() {
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
        out.contains(&format!("swept leftover {}", left[0].name)),
        "{out}"
    );
    assert!(sim.checkpoints().is_empty(), "{:?}", sim.checkpoints());
    assert_eq!(ledger_entries(&state), 0);
    assert_eq!(
        export_sha(&srv, "web-gen2", work.path()),
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

/// The raw reference with `writes` applied.
fn with_writes(reference: &Path, writes: &[(u64, Vec<u8>)], out: &Path) {
    let mut b = std::fs::read(reference).unwrap();
    for (off, data) in writes {
        let s = usize::try_from(*off).unwrap();
        b[s..s + data.len()].copy_from_slice(data);
    }
    std::fs::write(out, b).unwrap();
}

fn qemu_raw_sha(image: &Path, work: &Path) -> String {
    let out = work.join("qemu-view.raw");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "raw",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    sha256_file(&out)
}

/// libvhdi's read of a chain (child first), SHA-256.
fn libvhdi_sha(files: &[&Path], work: &Path) -> String {
    let out = work.join("libvhdi-view.raw");
    let script = r#"
import sys, pyvhdi
files = [pyvhdi.file() for _ in sys.argv[2:]]
for f, name in zip(files, sys.argv[2:]):
    f.open(name)
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
f = files[0]
size = f.get_media_size()
with open(sys.argv[1], "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        f.seek(off)
        o.write(f.read(n))
        off += n
"#;
    run_ok(
        Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(&out)
            .args(files),
    );
    sha256_file(&out)
}

/// Guest writes of whole 64 KiB RCT blocks: in data, in a zero area, the disk's last block.
fn guest_writes(seed: u8) -> Vec<(u64, Vec<u8>)> {
    let k = 64 * 1024;
    [MIB, 11 * MIB + 3 * k, 24 * MIB - k]
        .iter()
        .enumerate()
        .map(|(i, off)| {
            let s = seed.wrapping_add(u8::try_from(i).unwrap());
            (*off, vhd_gen::fill(s, 65536))
        })
        .collect()
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
    let cp = godwit_hyperv::checkpoint::create(&shell, &host, WEB_ID, "godwit-t1").unwrap();
    assert_eq!(cp.disks[0].path, "C:\\VMs\\web\\web.vhdx");
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
    assert_eq!(qemu_raw_sha(&base, work.path()), sha256_file(&expect));
    assert!(sim.checkpoints().is_empty());
}

/// The `done` events (one per disk) and the `hyperv-cycle` summary of a `--json` run.
fn json_events(out: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
    let mut done = Vec::new();
    let mut cycle = serde_json::Value::Null;
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("done") => done.push(v),
            Some("hyperv-cycle") => cycle = v,
            _ => {}
        }
    }
    (done, cycle)
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
        export_sha(&srv, "web-gen2", work.path()),
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
    let (again, _) = sync(None);
    // (The merged VHDX was rewritten with all-zero blocks unallocated: fewer bytes than the
    // first full read, but nothing carried over.)
    assert_eq!(again["chunks_carried"], 0, "{again}");
    assert!(again["bytes_read"].as_u64().unwrap() >= 4 * MIB, "{again}");
    assert_eq!(
        export_sha(&srv, "web-gen2", work.path()),
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
