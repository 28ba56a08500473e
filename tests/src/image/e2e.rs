//! The peers of the end-to-end appliance tests, on the host's loopback and reached by the
//! guest at 10.0.2.2 (qemu's user network): vcsim with a VM whose disk qemu-img made, the
//! Hyper-V simulator with one Generation 2 VM (a dynamic VHDX qemu-img made), a `godwit staging
//! serve`, an SNTP server; and what the tests read from the booted appliance: its banner, its
//! API (pinned to the certificate the banner shows) and its memory figures (`/metrics`).
//!
//! The Hyper-V host pushes disk data to the appliance's HTTPS port at the address the appliance
//! tells it (today: its host name, `https://godwit:443`). Behind qemu's NAT the host reaches the
//! guest only through a forwarded port, so, as a site's DNS would, the simulated host resolves
//! the appliance's names to a loopback address of its own (`127.a.b.c`, random per test) where
//! qemu forwards port 443 to the guest: the simulator runs as a process in a private mount
//! namespace (`unshare -m`) with its own `/etc/hosts`. (With `PUT /api/v1/settings/ingest`, the
//! appliance can be told the forwarded address instead; see `check_push_path`.)

use crate::image::Sntp;
use crate::image::qemu::{self, Vm};
use crate::peers::run_ok;
use crate::service::{pinned_client, random_disk};
use crate::staging::Server;
use crate::vcsim::Vcsim;
use crate::vcsim::qemu_img;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// qemu's user network: the host, as the guest sees it.
pub const HOST: &str = "10.0.2.2";
pub const VSPHERE_VM: &str = "DC0_H0_VM0";
pub const HYPERV_VM: &str = "e2e-hv";
pub const HYPERV_USER: &str = "Administrator";
/// The simulated Hyper-V host's password (given to the simulator and to the appliance).
pub const HYPERV_PASSWORD: &str = "S3cret-sim";
pub const ADMIN_PASSWORD: &str = "e2e-Appliance-pass-1";
/// Random data in the vSphere VM's disk.
pub const VSPHERE_MIB: u64 = 24;
/// Random data in the Hyper-V VM's disk: more than the image's first data partition (38 MiB),
/// which the appliance grows at boot to fill its disk.
pub const HYPERV_MIB: u64 = 48;

/// Everything the appliance talks to.
pub struct Peers {
    pub sntp: Sntp,
    pub vcsim: Vcsim,
    /// The vSphere VM's disk (monolithicFlat VMDK in vcsim's datastore).
    pub vsphere_disk: PathBuf,
    pub sim: Sim,
    /// The Hyper-V VM's disk (dynamic VHDX in the simulator's data directory).
    pub hyperv_disk: PathBuf,
    /// Where the simulated host reaches the appliance's port 443 (`127.a.b.c`).
    pub appliance_from_host: String,
    pub staging: Server,
}

impl Peers {
    pub fn start(work: &Path) -> Peers {
        let sntp = Sntp::start();
        let vcsim = Vcsim::start(false);
        let vsphere_disk = random_disk(&vcsim, VSPHERE_VM, VSPHERE_MIB);
        let hv = work.join("hyperv");
        std::fs::create_dir_all(hv.join("vm")).unwrap();
        let raw = work.join("hyperv-src.raw");
        run_ok(
            Command::new("dd")
                .arg("if=/dev/urandom")
                .arg(format!("of={}", raw.display()))
                .args(["bs=1M", &format!("count={HYPERV_MIB}"), "status=none"]),
        );
        let hyperv_disk = hv.join("vm/e2e-hv.vhdx");
        qemu_img(&[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic",
            raw.to_str().unwrap(),
            hyperv_disk.to_str().unwrap(),
        ]);
        std::fs::write(
            hv.join("vms.json"),
            format!(
                r#"{{"vms":[{{"id":"6c1f2a8e-0000-4000-8000-0000000000e2","name":"{HYPERV_VM}","generation":2,
                  "state":"Running","processor_count":2,"memory_startup":2147483648,"version":"9.0",
                  "checkpoint_type":"Production",
                  "disks":[{{"controller_type":"SCSI","controller_number":0,"controller_location":0,"path":"vm/e2e-hv.vhdx"}}]}}],
                  "faults":{{}}}}"#
            ),
        )
        .unwrap();
        let r: [u8; 3] = rand_bytes();
        let appliance_from_host = format!(
            "127.{}.{}.{}",
            r[0] % 250 + 2,
            r[1] % 250 + 2,
            r[2] % 250 + 2
        );
        let sim = Sim::start(&hv, &appliance_from_host);
        let staging_dir = work.join("staging");
        std::fs::create_dir_all(&staging_dir).unwrap();
        let staging = Server::start(&staging_dir, "127.0.0.1:0", &[]);
        Peers {
            sntp,
            vcsim,
            vsphere_disk,
            sim,
            hyperv_disk,
            appliance_from_host,
            staging,
        }
    }

    fn port(addr: &str) -> &str {
        addr.rsplit(':').next().unwrap()
    }

    /// Addresses as the guest reaches them.
    pub fn vsphere_address(&self) -> String {
        format!("{HOST}:{}", self.vcsim.port)
    }
    pub fn hyperv_address(&self) -> String {
        format!("{HOST}:{}", self.sim.port)
    }

    /// qemu's forward of the guest's 443 where the simulated host looks for the appliance.
    pub fn hostfwd(&self) -> String {
        format!("tcp:{}:443-:443", self.appliance_from_host)
    }
    pub fn staging_address(&self) -> String {
        format!("{HOST}:{}", Self::port(&self.staging.addr))
    }
    pub fn ntp(&self) -> String {
        self.sntp.guest_setting()
    }

    /// No snapshot left on the vSphere VM and no checkpoint on the Hyper-V VM.
    pub fn assert_nothing_left(&self) {
        let snaps = crate::vcsim::vm_by_name(&self.vcsim.connect(), VSPHERE_VM).snapshots;
        assert!(snaps.is_empty(), "vSphere snapshots left: {snaps:?}");
        self.sim.assert_no_checkpoint();
    }
}

fn rand_bytes() -> [u8; 3] {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let b = n.to_le_bytes();
    [b[0], b[1] ^ b[3], b[2]]
}

/// The Hyper-V simulator (`godwit-hypervsim`) as a process in a private mount namespace whose
/// `/etc/hosts` maps the appliance's host names to `appliance`; killed on drop.
pub struct Sim {
    child: Child,
    pub port: u16,
    pub fingerprint: String,
    dir: PathBuf,
}

impl Sim {
    fn start(dir: &Path, appliance: &str) -> Sim {
        // Built (once per run, under the harness's lock) like the godwit binary.
        let bin = crate::peers::cargo_bin("godwit-hyperv-sim", "godwit-hypervsim", &[]);
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n{appliance} godwit godwit-e2e\n"),
        )
        .unwrap();
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$1\" /etc/hosts && exec \"$2\" --listen 127.0.0.1:0 --data \"$3\"")
            .arg("sh")
            .arg(&hosts)
            .arg(&bin)
            .arg(dir)
            .env("GODWIT_SIM_PASSWORD", HYPERV_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux) starts the simulator");
        let out = child.stdout.take().unwrap();
        let (mut port, mut fingerprint) = (0, String::new());
        for line in BufReader::new(out).lines() {
            let line = line.expect("simulator output");
            if let Some(f) = line.strip_prefix("fingerprint: ") {
                fingerprint = f.to_string();
            } else if let Some(a) = line.strip_prefix("listening: ") {
                port = a.rsplit(':').next().unwrap().parse().unwrap();
                break;
            }
        }
        assert!(port != 0, "the simulator did not start");
        Sim {
            child,
            port,
            fingerprint,
            dir: dir.to_path_buf(),
        }
    }

    /// The simulated host holds no checkpoint: its VM folder has only the VM's own disk (a
    /// checkpoint is a real AVHDX child there until it is merged on removal).
    pub fn assert_no_checkpoint(&self) {
        let files: Vec<String> = std::fs::read_dir(self.dir.join("vm"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            ["e2e-hv.vhdx"],
            "checkpoint files left on the Hyper-V host"
        );
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SHA-256 of `qemu-img convert -O raw` of an image.
pub fn qemu_raw_sha(image: &Path, fmt: &str, work: &Path) -> String {
    let out = work.join(format!(
        "{}.qemu.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        fmt,
        "-O",
        "raw",
        image.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    let sha = crate::peers::sha256_file(&out);
    let _ = std::fs::remove_file(&out);
    sha
}

/// The value after `label` on the last banner line that has it (`Setup code:   X`).
pub fn banner_value(log: &str, label: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
}

/// `Data space:   X free of Y` of the last banner, in bytes (free, total).
pub fn banner_space(log: &str) -> (f64, f64) {
    let v = banner_value(log, "Data space:").expect("a Data space line");
    let gib = |s: &str| {
        let mut w = s.split_whitespace();
        let n: f64 = w.next().unwrap().parse().unwrap();
        match w.next().unwrap() {
            "GiB" => n * f64::from(1u32 << 30),
            "MiB" => n * f64::from(1u32 << 20),
            "TiB" => n * f64::from(1u32 << 30) * 1024.0,
            u => panic!("unit {u} in {v}"),
        }
    };
    let (free, total) = v.split_once(" free of ").expect("X free of Y");
    (gib(free), gib(total))
}

/// Time from power-on until the setup page answers through the forwarded port.
pub fn wait_setup_page(vm: &mut Vm, powered_on: Instant) -> Duration {
    let url = format!("https://127.0.0.1:{}/", vm.port);
    loop {
        let out = Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(&url)
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code.starts_with('2') || code.starts_with('3') {
            return powered_on.elapsed();
        }
        if let Ok(Some(st)) = vm.child.try_wait() {
            panic!("qemu exited ({st}); serial log:\n{}", vm.log_text());
        }
        assert!(
            powered_on.elapsed() < qemu::BOOT_TIMEOUT,
            "no setup page; serial log:\n{}",
            vm.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The booted appliance's API: pinned to the fingerprint its banner shows, as the admin.
pub struct Appliance {
    pub base: String,
    pub fingerprint: String,
    /// HTTP Basic, no cookies (a session cookie would make every call need its CSRF token).
    client: reqwest::blocking::Client,
    /// A browser-like session for the setup code.
    session: reqwest::blocking::Client,
}

impl Appliance {
    pub fn new(vm: &Vm, fingerprint: &str) -> Appliance {
        Appliance {
            base: format!("https://127.0.0.1:{}", vm.port),
            fingerprint: fingerprint.to_string(),
            client: pinned_client(fingerprint, false),
            session: pinned_client(fingerprint, true),
        }
    }

    /// Set the admin password with the setup code (a browser session and its CSRF token).
    pub fn set_password(&self, setup_code: &str) {
        let s: Value = self
            .session
            .get(format!("{}/api/v1/session", self.base))
            .send()
            .and_then(|r| r.bytes())
            .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))
            .expect("GET /api/v1/session");
        let r = self
            .session
            .post(format!("{}/api/v1/setup/password", self.base))
            .header("x-csrf-token", s["csrf_token"].as_str().unwrap())
            .header("content-type", "application/json")
            .body(
                json!({"setup_code": setup_code, "new_password": ADMIN_PASSWORD,
                       "confirm_password": ADMIN_PASSWORD})
                .to_string(),
            )
            .send()
            .expect("POST /api/v1/setup/password");
        assert!(r.status().is_success(), "{:?}", r.text());
    }

    /// An API call as the admin (HTTP Basic): status and JSON body (Null when empty).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .client
            .request(m, format!("{}/api/v1{path}", self.base))
            .basic_auth("admin", Some(ADMIN_PASSWORD));
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        // A GET is retried once after a transport error (a keep-alive connection that qemu's
        // user-mode forwarder or the guest closed as the request was being sent); anything
        // else, or a second failure, fails with the whole error chain.
        let retry = (method == "GET").then(|| r.try_clone()).flatten();
        let resp = match (r.send(), retry) {
            (Ok(resp), _) => resp,
            (Err(e), Some(again)) => {
                eprintln!("{method} {path}: {}; retrying once", chain(&e));
                again
                    .send()
                    .unwrap_or_else(|e| panic!("{method} {path}: {}", chain(&e)))
            }
            (Err(e), None) => panic!("{method} {path}: {}", chain(&e)),
        };
        let status = resp.status().as_u16();
        let v = resp
            .bytes()
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        (status, v)
    }

    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.api(method, path, body);
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// `/metrics` as text (empty when refused).
    pub fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .timeout(Duration::from_secs(20))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .and_then(|r| r.text().ok())
            .unwrap_or_default()
    }

    /// Poll until the job is `completed` (panics on `failed` or after `limit`).
    pub fn wait_job(&self, id: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let j = self.ok("GET", &format!("/jobs/{id}"), None);
            match j["state"].as_str().unwrap() {
                "completed" => return j,
                // A run that failed and waits for its retry: this test's runs have no reason to.
                "failed" | "retry_wait" => panic!("job {id} failed: {j}"),
                _ => {}
            }
            assert!(start.elapsed() < limit, "job {id} not done: {j}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Poll until the export is `done` and downloadable.
    pub fn wait_export(&self, id: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let all = self.ok("GET", "/exports", None);
            let e = all
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["id"] == json!(id))
                .cloned()
                .unwrap_or_else(|| panic!("export {id} not listed: {all}"));
            if e["state"] != "running" {
                assert_eq!(e["state"], "done", "{e}");
                assert_eq!(e["downloadable"], true, "{e}");
                return e;
            }
            assert!(start.elapsed() < limit, "export {id} not done: {e}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// (run started, run completed) times of a job from its timeline, RFC 3339.
    pub fn run_span(&self, job: &str) -> (String, String) {
        let ev = self.ok("GET", &format!("/jobs/{job}/events"), None);
        let at = |prefix: &str| {
            ev.as_array()
                .unwrap()
                .iter()
                .rfind(|e| e["message"].as_str().unwrap_or("").starts_with(prefix))
                .and_then(|e| e["at"].as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("no {prefix:?} in the timeline of {job}: {ev}"))
        };
        (at("run started"), at("run completed"))
    }
}

/// Watches the service's memory inside the guest through `/metrics` while a test runs: the
/// service's peak RSS (VmHWM) and the lowest MemAvailable seen.
pub struct MemoryWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64, u64)>>,
}

pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

impl MemoryWatch {
    pub fn start(app: Appliance) -> MemoryWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut min_avail, mut total) = (0u64, u64::MAX, 0u64);
            while !s2.load(Ordering::Relaxed) {
                let m = app.metrics();
                if let Some(p) = metric(&m, "godwit_process_resident_memory_peak_bytes") {
                    peak = peak.max(p);
                }
                if let Some(a) = metric(&m, "godwit_system_memory_available_bytes") {
                    min_avail = min_avail.min(a);
                }
                if let Some(t) = metric(&m, "godwit_system_memory_total_bytes") {
                    total = t;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            (peak, min_avail, total)
        });
        MemoryWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// (service peak RSS, lowest MemAvailable, MemTotal) in bytes.
    pub fn finish(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The serial log shows no OOM kill and no restart of the service.
pub fn assert_no_oom(log: &str) {
    for bad in ["Out of memory", "oom-kill", "oom_reaper", "serve exited"] {
        assert!(!log.contains(bad), "{bad:?} in the serial log:\n{log}");
    }
}

pub fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
