//! What the Hyper-V end-to-end tests share: the VM fixture (a Generation 2 VM with a dynamic
//! VHDX from qemu-img, a Generation 1 VM with a differencing AVHD child of a dynamic VHD, and
//! their raw references from qemu-img and libvhdi), the simulator, the `godwit replicate`
//! command line and the peers' views (qemu-img, libvhdi) of images. The simulator itself is the
//! `godwit-hyperv-sim` crate (in process) or its `godwit-hypervsim` binary ([`hypervsim_bin`]).

pub use godwit_disk::testing::vhd_gen;

use crate::peers::{godwit_bin, have, run_ok, sha256_file};
use godwit_hyperv::ledger::parse_ledger;
use godwit_hyperv_sim::model::SimModel;
use godwit_hyperv_sim::{RunningSim, SimConfig, start};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PASSWORD: &str = "S3cret-sim";
pub const WEB_ID: &str = "6c1f2a8e-0000-4000-8000-0000000000a2";
pub const DB_ID: &str = "6c1f2a8e-0000-4000-8000-0000000000a1";
pub const CHILD: &str = "db_3F2504E0-4F89-11D3-9A0C-0305E82C3301.avhd";
pub const MIB: u64 = 1 << 20;

/// Panics unless every tool is installed (`make deps` installs them).
pub fn need(tools: &[&str]) {
    for t in tools {
        assert!(
            have(t),
            "{t} is not installed: run `make deps` (tests/deps/install.sh)"
        );
    }
}

/// The `godwit-hypervsim` binary (crate `godwit-hyperv-sim`), next to `godwit`; `make build`
/// builds both.
pub fn hypervsim_bin() -> PathBuf {
    let bin = godwit_bin().with_file_name("godwit-hypervsim");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p godwit-hyperv-sim (make build does)",
        bin.display()
    );
    bin
}

pub fn qemu_img(args: &[&str]) {
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
pub fn patterned_raw(path: &Path, size: u64, seed: u8) {
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

pub struct Fixture {
    pub dir: PathBuf,
    /// Raw references: what each VM's disk 0 must export as.
    pub web_ref: PathBuf,
    pub db_ref: PathBuf,
}

/// VM files and their references under `dir`.
pub fn fixture(dir: &Path) -> Fixture {
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
    libvhdi_read(&[&child, &base], &db_ref);
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

pub fn start_sim(f: &Fixture, command_delay_ms: u64) -> RunningSim {
    start_sim_with(f, &format!(r#"{{"command_delay_ms":{command_delay_ms}}}"#))
}

/// The simulator on `dir` with this `vms.json`.
pub fn start_sim_json(dir: &Path, vms_json: &str) -> RunningSim {
    std::fs::write(dir.join("vms.json"), vms_json).unwrap();
    start(
        SimConfig {
            user: "Administrator".into(),
            password: PASSWORD.into(),
            model: SimModel::load(dir).unwrap(),
            data_dir: dir.to_path_buf(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

/// The simulator with `faults` (the `faults` object of vms.json).
pub fn start_sim_with(f: &Fixture, faults: &str) -> RunningSim {
    let json = format!(
        r#"{{"vms":[
 {{"id":"{WEB_ID}","name":"web-gen2","generation":2,"state":"Running","processor_count":4,
   "memory_startup":4294967296,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}},
 {{"id":"{DB_ID}","name":"db-gen1","generation":1,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"8.0","checkpoint_type":"Production","guest_vss":false,
   "disks":[{{"controller_type":"IDE","controller_number":0,"controller_location":0,"path":"db/{CHILD}"}}]}}],
 "faults":{faults}}}"#
    );
    start_sim_json(&f.dir, &json)
}

pub fn replicate_cmd(
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

/// Where `godwit export` reads from: a staging server's URL, its certificate's fingerprint and
/// a file holding its token.
#[derive(Debug, Clone)]
pub struct Staging {
    pub url: String,
    pub fingerprint: String,
    pub token_file: PathBuf,
}

/// SHA-256 of disk 0 of `vm` exported as raw from `staging` into `work`.
pub fn export_sha(staging: &Staging, vm: &str, work: &Path) -> String {
    let out = work.join(format!("export-{vm}.raw"));
    run_ok(
        Command::new(godwit_bin())
            .args(["export", "--vm", vm, "--disk", "0", "--format", "raw"])
            .args([
                "--target",
                &staging.url,
                "--target-fingerprint",
                &staging.fingerprint,
            ])
            .arg("--token-file")
            .arg(&staging.token_file)
            .arg("--out")
            .arg(&out),
    );
    sha256_file(&out)
}

pub fn ledger_entries(state: &Path) -> usize {
    let p = state.join("hyperv-checkpoint-ledger.json");
    match std::fs::read(&p) {
        Ok(b) => parse_ledger(&b).unwrap().len(),
        Err(_) => 0,
    }
}

/// The raw reference with `writes` applied.
pub fn with_writes(reference: &Path, writes: &[(u64, Vec<u8>)], out: &Path) {
    let mut b = std::fs::read(reference).unwrap();
    for (off, data) in writes {
        let s = usize::try_from(*off).unwrap();
        b[s..s + data.len()].copy_from_slice(data);
    }
    std::fs::write(out, b).unwrap();
}

pub fn qemu_raw_sha(image: &Path, work: &Path) -> String {
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

/// libvhdi's read of a chain (child first), written to `out` (its Python binding, pyvhdi).
pub fn libvhdi_read(files: &[&Path], out: &Path) {
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
            .arg(out)
            .args(files),
    );
}

/// libvhdi's read of a chain (child first), SHA-256.
pub fn libvhdi_sha(files: &[&Path], work: &Path) -> String {
    let out = work.join("libvhdi-view.raw");
    libvhdi_read(files, &out);
    sha256_file(&out)
}

/// Guest writes of whole 64 KiB RCT blocks: in data, in a zero area, the disk's last block.
pub fn guest_writes(seed: u8) -> Vec<(u64, Vec<u8>)> {
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

/// The `done` events (one per disk) and the `hyperv-cycle` summary of a `--json` run.
pub fn json_events(out: &str) -> (Vec<serde_json::Value>, serde_json::Value) {
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
