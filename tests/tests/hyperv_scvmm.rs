//! `godwit inventory|replicate --source scvmm://...` end to end: three simulator instances on
//! loopback in this test process — an SCVMM server (127.0.0.1) and two Hyper-V hosts on
//! 127.0.0.2 and 127.0.0.3, same port (VMM names hosts, the port is Godwit's `--host-port`).
//! hv-a runs the Generation 1 VM (differencing VHD chain), hv-b the Generation 2 VM (dynamic
//! VHDX) and takes another password; hv-c (127.0.0.4) is known to VMM but nobody listens there.
//! The inventory lists VMs of every host with their host; replicating the VM on hv-b exports
//! the bytes qemu-img reads, and the cycle ran on THAT host (its file path) and its checkpoint is gone there;
//! the VM on hv-a goes through the host-push path and exports what libvhdi reads. Refusals:
//! host not pinned (4, naming the host and its fingerprint), host pin mismatch (4), wrong
//! password for VMM or for a host (3), unknown VM (5), host not reachable (2, naming it).

use godwit_hyperv_sim::model::SimModel;
use godwit_hyperv_sim::{RunningSim, SimConfig, start};
use godwit_tests::hyperv::*;
use godwit_tests::peers::{godwit_bin, run, run_ok, sha256_file};
use godwit_tests::staging;
use staging::{Guard, Server, token_file};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn staging(srv: &Server) -> Staging {
    Staging {
        url: srv.url(),
        fingerprint: srv.fingerprint.clone(),
        token_file: token_file(srv.data.parent().unwrap(), &srv.token),
    }
}

/// hv-b's Administrator password (VMM's and hv-a's is `PASSWORD`).
const HOST_B_PASSWORD: &str = "Other-host-pw";

struct Lab {
    work: tempfile::TempDir,
    f: Fixture,
    vmm: RunningSim,
    a: RunningSim,
    b: RunningSim,
    port: u16,
    srv: Server,
    tf: PathBuf,
}

fn start_at(dir: &Path, vms_json: &str, password: &str, listen: SocketAddr) -> Option<RunningSim> {
    std::fs::write(dir.join("vms.json"), vms_json).unwrap();
    start(
        SimConfig {
            user: "Administrator".into(),
            password: password.into(),
            model: SimModel::load(dir).unwrap(),
            data_dir: dir.to_path_buf(),
        },
        listen,
    )
    .ok()
}

fn lab() -> Lab {
    lab_with("{}")
}

/// The lab, hv-b with these `faults`.
fn lab_with(b_faults: &str) -> Lab {
    let work = tempfile::tempdir().unwrap();
    // One fixture, its two VMs' files split over two host directories.
    let f = fixture(&work.path().join("hv-a"));
    let dir_b = work.path().join("hv-b");
    std::fs::create_dir_all(&dir_b).unwrap();
    std::fs::rename(f.dir.join("web"), dir_b.join("web")).unwrap();
    let dir_c = work.path().join("hv-c");
    std::fs::create_dir_all(dir_c.join("lost")).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        dir_c.join("lost/lost.vhdx").to_str().unwrap(),
        "4M",
    ]);
    let vm_a = format!(
        r#"{{"vms":[{{"id":"{DB_ID}","name":"db-gen1","generation":1,"state":"Running","processor_count":2,
   "memory_startup":2147483648,"version":"8.0","checkpoint_type":"Production","guest_vss":false,
   "disks":[{{"controller_type":"IDE","controller_number":0,"controller_location":0,"path":"db/{CHILD}"}}]}}]}}"#
    );
    let vm_b = format!(
        r#"{{"vms":[{{"id":"{WEB_ID}","name":"web-gen2","generation":2,"state":"Running","processor_count":4,
   "memory_startup":4294967296,"version":"9.0","checkpoint_type":"Production",
   "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"web/web.vhdx"}}]}}],
   "faults":{b_faults}}}"#
    );
    let vm_c = r#"{"vms":[{"id":"6c1f2a8e-0000-4000-8000-0000000000c3","name":"lost-vm","generation":2,
   "state":"Off","processor_count":1,"memory_startup":1073741824,"version":"9.0","checkpoint_type":"Production",
   "disks":[{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"lost/lost.vhdx"}]}]}"#;
    std::fs::write(dir_c.join("vms.json"), vm_c).unwrap();
    // Both hosts on the same port of two loopback addresses.
    let (a, b) = (0..20)
        .find_map(|_| {
            let a = start_at(&f.dir, &vm_a, PASSWORD, "127.0.0.2:0".parse().unwrap())?;
            let at = SocketAddr::from(([127, 0, 0, 3], a.addr.port()));
            let b = start_at(&dir_b, &vm_b, HOST_B_PASSWORD, at)?;
            Some((a, b))
        })
        .expect("two simulated hosts on one port");
    let port = a.addr.port();
    let vmm_dir = work.path().join("vmm");
    std::fs::create_dir_all(&vmm_dir).unwrap();
    let host = |name: &str, ip: &str, dir: &Path| serde_json::json!({"name": name, "fqdn": ip, "data": dir.to_str().unwrap()});
    let vmm_json = serde_json::json!({"scvmm": {"server": "vmm01.sim.test", "hosts": [
        host("hv-a", "127.0.0.2", &f.dir),
        host("hv-b", "127.0.0.3", &dir_b),
        host("hv-c", "127.0.0.4", &dir_c),
    ]}});
    let vmm = start_at(
        &vmm_dir,
        &vmm_json.to_string(),
        PASSWORD,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let srv = Server::start(&work.path().join("staging"), "127.0.0.1:0", &[]);
    let tf = token_file(work.path(), &srv.token);
    Lab {
        work,
        f,
        vmm,
        a,
        b,
        port,
        srv,
        tf,
    }
}

impl Lab {
    fn source(&self) -> String {
        format!("scvmm://Administrator@127.0.0.1:{}", self.vmm.addr.port())
    }

    /// A trust file pinning the VMM server and the given hosts.
    fn trust(&self, name: &str, hosts: &[&RunningSim]) -> PathBuf {
        let mut text = format!(
            "# SCVMM and its hosts\n127.0.0.1:{} {}\n",
            self.vmm.addr.port(),
            self.vmm.fingerprint
        );
        for h in hosts {
            text.push_str(&format!("{} {}\n", h.addr, h.fingerprint));
        }
        let p = self.work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn host_credentials(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.work.path().join("host-credentials");
        std::fs::write(&p, format!("hv-b Administrator {HOST_B_PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn replicate(&self, vm: &str, trust: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(godwit_bin());
        c.env("GODWIT_PASSWORD", PASSWORD)
            .args(["replicate", "--retries", "1", "--vm", vm, "--source"])
            .arg(self.source())
            .arg("--trust-file")
            .arg(trust)
            .args(["--host-port", &self.port.to_string()])
            .args(["--target", &self.srv.url()])
            .args(["--target-fingerprint", &self.srv.fingerprint])
            .arg("--token-file")
            .arg(&self.tf)
            .arg("--state-dir")
            .arg(self.work.path().join("state"))
            .args(extra);
        c
    }
}

/// pywinrm runs the repo's scvmm-inventory.ps1 on `sim` (password `PASSWORD`).
fn pywinrm_scvmm(sim: &RunningSim, work: &Path) -> serde_json::Value {
    let ca = work.join(format!("ca-{}.pem", sim.addr.port()));
    std::fs::write(&ca, &sim.cert_pem).unwrap();
    let out = run_ok(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/hyperv/pywinrm_scvmm.py"
            ))
            .arg(format!("https://{}/wsman", sim.addr))
            .arg(&ca)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../hyperv/scripts/scvmm-inventory.ps1"
            ))
            .env("GODWIT_SIM_PASSWORD", PASSWORD),
    );
    serde_json::from_str(&out).unwrap()
}

fn fails_with(o: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("exit {:?}: {err}", o.status.code());
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

#[test]
fn scvmm_inventory_lists_the_vms_of_every_host_with_their_host() {
    let lab = lab();
    let out = run_ok(
        Command::new(godwit_bin())
            .env("GODWIT_PASSWORD", PASSWORD)
            .args(["inventory", "--json", "--source"])
            .arg(lab.source())
            .args(["--source-fingerprint", &lab.vmm.fingerprint.to_string()]),
    );
    let inv: serde_json::Value = serde_json::from_str(&out).unwrap();
    let vms = inv.as_array().unwrap();
    assert_eq!(vms.len(), 3, "{out}");
    let by = |n: &str| vms.iter().find(|v| v["Name"] == n).unwrap();
    let db = by("db-gen1");
    assert_eq!(
        (&db["VMHost"], &db["HostAddress"]),
        (&"hv-a".into(), &"127.0.0.2".into())
    );
    assert_eq!(db["Id"], DB_ID);
    assert_eq!(db["eligible"], true, "{db}");
    assert_eq!(db["Disks"][0]["VhdType"], "Differencing", "{db}");
    assert_eq!(db["Disks"][0]["ParentPath"], "C:\\VMs\\db\\db.vhd", "{db}");
    let web = by("web-gen2");
    assert_eq!(
        (&web["VMHost"], &web["VmmStatus"]),
        (&"hv-b".into(), &"Running".into())
    );
    assert_eq!(web["Disks"][0]["VhdFormat"], "VHDX", "{web}");
    assert_eq!(web["Disks"][0]["VhdType"], "Dynamic", "{web}");
    assert_eq!(by("lost-vm")["VMHost"], "hv-c");
    assert_eq!(by("lost-vm")["VmmStatus"], "PowerOff");
    // pywinrm, sending the repo's script, gets the same VMM view; a Hyper-V host without the
    // VMM module fails the way Import-Module does.
    let py = pywinrm_scvmm(&lab.vmm, lab.work.path());
    assert_eq!(py["rc"], 0, "{py}");
    assert_eq!(py["json"]["Server"], "vmm01.sim.test", "{py}");
    let names: Vec<&str> = py["json"]["Hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hv-a", "hv-b", "hv-c"], "{py}");
    assert_eq!(py["json"]["VMs"].as_array().unwrap().len(), 3, "{py}");
    let py = pywinrm_scvmm(&lab.a, lab.work.path());
    assert_eq!(py["rc"], 2, "{py}");
    assert!(
        py["stderr"]
            .as_str()
            .unwrap()
            .contains("virtualmachinemanager"),
        "{py}"
    );
    // The text form names the hosts; the trust file pins VMM as well as the flag does.
    let trust = lab.trust("trust-vmm-only", &[]);
    let text = run_ok(
        Command::new(godwit_bin())
            .env("GODWIT_PASSWORD", PASSWORD)
            .args(["inventory", "--source"])
            .arg(lab.source())
            .arg("--trust-file")
            .arg(&trust),
    );
    assert!(text.contains("SCVMM vmm01.sim.test"), "{text}");
    assert!(
        text.contains("web-gen2  host=hv-b (127.0.0.3)  status=Running  eligible"),
        "{text}"
    );
    // VMM unpinned: 4, with its fingerprint; wrong password: 3; no such VM: 5.
    let o = run(Command::new(godwit_bin())
        .env("GODWIT_PASSWORD", PASSWORD)
        .args(["inventory", "--source"])
        .arg(lab.source()));
    fails_with(&o, 4, &[&lab.vmm.fingerprint.to_string()]);
    let o = run(Command::new(godwit_bin())
        .env("GODWIT_PASSWORD", "wrong")
        .args(["inventory", "--source"])
        .arg(lab.source())
        .arg("--trust-file")
        .arg(&trust));
    fails_with(&o, 3, &["WinRM refused the credentials"]);
    let o = run(Command::new(godwit_bin())
        .env("GODWIT_PASSWORD", PASSWORD)
        .args(["inventory", "--vm", "nope", "--source"])
        .arg(lab.source())
        .arg("--trust-file")
        .arg(&trust));
    fails_with(&o, 5, &["no VM named \"nope\""]);
}

#[test]
fn replicate_through_scvmm_copies_from_the_host_that_runs_the_vm() {
    let lab = lab();
    let trust = lab.trust("trust", &[&lab.a, &lab.b]);
    let creds = lab.host_credentials();
    let state = lab.work.path().join("state");
    // web-gen2 lives on hv-b (second host, its own password): WinRM reads.
    let out = run_ok(&mut lab.replicate(
        "web-gen2",
        &trust,
        &["--json", "--host-credentials", creds.to_str().unwrap()],
    ));
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let route = events.iter().find(|e| e["event"] == "scvmm-host").unwrap();
    assert_eq!(route["host"], "hv-b", "{route}");
    assert_eq!(route["address"], lab.b.addr.to_string(), "{route}");
    let cycle = events
        .iter()
        .find(|e| e["event"] == "hyperv-cycle")
        .unwrap();
    assert!(
        cycle["checkpoint"].as_str().unwrap().starts_with("godwit-"),
        "{cycle}"
    );
    assert_eq!(cycle["disks"][0], "C:\\VMs\\web\\web.vhdx", "{cycle}");
    assert_eq!(
        export_sha(&staging(&lab.srv), "web-gen2", lab.work.path()),
        sha256_file(&lab.f.web_ref),
        "web-gen2: export differs from qemu-img's read"
    );
    assert!(lab.b.checkpoints().is_empty(), "{:?}", lab.b.checkpoints());
    assert_eq!(lab.b.open_shells(), 0);
    assert_eq!(ledger_entries(&state), 0);
    // db-gen1 lives on hv-a: the host pushes the data to the ingest endpoint.
    let out = run_ok(&mut lab.replicate("db-gen1", &trust, &["--ingest-listen", "127.0.0.1:0"]));
    assert!(out.contains("Hyper-V cycle of db-gen1: 1 disk(s)"), "{out}");
    assert!(out.contains("pushed by the host"), "{out}");
    assert_eq!(
        export_sha(&staging(&lab.srv), "db-gen1", lab.work.path()),
        sha256_file(&lab.f.db_ref),
        "db-gen1: export differs from libvhdi's read"
    );
    assert!(lab.a.checkpoints().is_empty(), "{:?}", lab.a.checkpoints());
    assert_eq!((lab.a.open_shells(), lab.vmm.open_shells()), (0, 0));
    assert_eq!(ledger_entries(&state), 0);
}

#[test]
fn scvmm_refusals_name_the_host_and_touch_nothing() {
    let lab = lab();
    let creds = lab.host_credentials();
    let creds_arg = ["--host-credentials", creds.to_str().unwrap()];
    let b_addr = lab.b.addr.to_string();
    // hv-b not in the trust file: 4, naming the host, its address and its fingerprint.
    let only_a = lab.trust("trust-a", &[&lab.a]);
    let o = run(&mut lab.replicate("web-gen2", &only_a, &creds_arg));
    let err = fails_with(
        &o,
        4,
        &[
            "hv-b",
            &b_addr,
            &lab.b.fingerprint.to_string(),
            "--trust-file",
        ],
    );
    assert!(
        err.contains(&format!("`{b_addr} {}`", lab.b.fingerprint)),
        "{err}"
    );
    // hv-b pinned to another certificate (hv-a's): 4.
    let wrong = lab.work.path().join("trust-wrong");
    std::fs::write(
        &wrong,
        format!(
            "127.0.0.1:{} {}\n{b_addr} {}\n",
            lab.vmm.addr.port(),
            lab.vmm.fingerprint,
            lab.a.fingerprint
        ),
    )
    .unwrap();
    let o = run(&mut lab.replicate("web-gen2", &wrong, &creds_arg));
    fails_with(
        &o,
        4,
        &[&format!("Hyper-V host hv-b ({b_addr})"), "does not match"],
    );
    let trust = lab.trust("trust", &[&lab.a, &lab.b]);
    // hv-b without its own credentials: VMM's password is refused there: 3, naming hv-b.
    let o = run(&mut lab.replicate("web-gen2", &trust, &[]));
    fails_with(
        &o,
        3,
        &[
            &format!("Hyper-V host hv-b ({b_addr})"),
            "WinRM refused the credentials",
        ],
    );
    // A wrong password for VMM: 3.
    let o = run(lab
        .replicate("web-gen2", &trust, &creds_arg)
        .env("GODWIT_PASSWORD", "wrong"));
    fails_with(&o, 3, &[&format!("127.0.0.1:{}", lab.vmm.addr.port())]);
    // A VM VMM does not know: 5, naming the VMM server.
    let o = run(&mut lab.replicate("nope", &trust, &creds_arg));
    fails_with(&o, 5, &["SCVMM 127.0.0.1:", "VM \"nope\" not found"]);
    // lost-vm runs on hv-c, where nothing listens: 2, naming the host.
    let o = run(&mut lab.replicate("lost-vm", &trust, &creds_arg));
    fails_with(
        &o,
        2,
        &[
            "hv-c",
            &format!("127.0.0.4:{}", lab.port),
            "cannot be reached",
        ],
    );
    // A credentials file others can read is refused before anything is asked.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let o = run(&mut lab.replicate("web-gen2", &trust, &creds_arg));
    fails_with(&o, 2, &["chmod 600"]);
    // Nothing was created anywhere, and nothing is left open.
    assert!(lab.a.checkpoints().is_empty() && lab.b.checkpoints().is_empty());
    assert_eq!(ledger_entries(&lab.work.path().join("state")), 0);
    assert_eq!(
        (
            lab.a.open_shells(),
            lab.b.open_shells(),
            lab.vmm.open_shells()
        ),
        (0, 0, 0)
    );
}

#[test]
fn a_leftover_checkpoint_that_moved_with_its_vm_is_swept_on_the_new_host() {
    let lab = lab_with(r#"{"command_delay_ms":100}"#);
    let trust = lab.trust("trust", &[&lab.a, &lab.b]);
    let creds = lab.host_credentials();
    let creds_arg = ["--host-credentials", creds.to_str().unwrap()];
    let state = lab.work.path().join("state");
    let child = lab
        .replicate("web-gen2", &trust, &creds_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let t0 = Instant::now();
    while lab.b.checkpoints().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checkpoint on hv-b"
        );
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "replicate ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    let left = lab.b.checkpoints();
    assert_eq!(left.len(), 1, "{left:?}");
    // As if the checkpoint had been made while the VM ran on hv-a and it then migrated to
    // hv-b with the VM: the ledger names hv-a.
    let ledger = state.join("hyperv-checkpoint-ledger.json");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let (b_addr, a_addr) = (lab.b.addr.to_string(), lab.a.addr.to_string());
    assert!(text.contains(&b_addr), "{text}");
    std::fs::write(&ledger, text.replace(&b_addr, &a_addr)).unwrap();
    let o = run(&mut lab.replicate("web-gen2", &trust, &creds_arg));
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(err.contains("moved to host hv-b"), "{err}");
    assert!(
        out.contains(&format!("swept leftover {}", left[0].name)),
        "{out}"
    );
    assert!(lab.b.checkpoints().is_empty(), "{:?}", lab.b.checkpoints());
    assert!(lab.a.checkpoints().is_empty());
    assert_eq!(ledger_entries(&state), 0);
    assert_eq!(
        export_sha(&staging(&lab.srv), "web-gen2", lab.work.path()),
        sha256_file(&lab.f.web_ref)
    );
}
