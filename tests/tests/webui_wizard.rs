//! The web UI in a real browser, end to end: Debian's chromium driven by playwright-core
//! (tests/browser/wizard.mjs) against `godwit serve` over HTTPS, with vcsim as the vSphere
//! source and a `godwit staging serve` as the staging target. The script walks the whole
//! first-run wizard as a new operator (setup code, network, staging, source certificate
//! approval, checks), tries bad values and expects their errors next to the field, creates a
//! job from the inventory, watches its progress bar reach 100 %, and exports the replica.
//! Here we then check the export: its SHA-256 is the one the page showed, and its content
//! equals the source disk (`qemu-img compare`). Screenshots of every step are kept under
//! `<target>/tmp/webui-wizard-screenshots/`.
//!
//! Needs node, Debian's chromium and the npm packages of tests/browser (`make deps`); fails,
//! not skips, without them.

#[path = "transfer_util.rs"]
mod util;
mod vmware_harness;

use godwit_tests::peers::{godwit_bin, have, sha256_file};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use util::Server;
use vmware_harness::{PASSWORD, USER, Vcsim, qemu_img, set_vm_disks};

const VM: &str = "DC0_H0_VM0";
const ADMIN_PASSWORD: &str = "browser-admin-password-1";

/// `godwit serve` on a loopback port with a fresh data directory (killed on drop).
struct Serve {
    child: Child,
    url: String,
    setup_code: String,
    stderr_log: PathBuf,
}

impl Serve {
    fn start(data: &Path, extra: &[&str]) -> Serve {
        std::fs::create_dir_all(data).unwrap();
        let stderr_log = data.with_extension("stderr");
        let mut child = Command::new(godwit_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .expect("start godwit serve");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut url, mut code) = (String::new(), String::new());
        while url.is_empty() || code.is_empty() {
            let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                panic!(
                    "godwit serve printed no url/setup code; stderr:\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            };
            if let Some(v) = l.strip_prefix("url: ") {
                url = v.trim_end_matches('/').to_owned();
            } else if let Some(v) = l.strip_prefix("setup code: ") {
                code = v.to_owned();
            }
        }
        Serve {
            child,
            url,
            setup_code: code,
            stderr_log,
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// node, chromium and playwright-core must be there: this test fails rather than skips.
fn require_browser_tools() {
    assert!(have("node"), "node is missing: run `make deps`");
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run `make deps` (Debian package chromium)"
    );
    assert!(
        browser_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in tests/browser: run `make deps`"
    );
}

/// The VM gets one flat disk of `mib` MiB of random data (nothing skipped as zero).
fn random_disk(v: &Vcsim, mib: u64) -> PathBuf {
    let (ds, dir) = v.datastore();
    let vmdir = dir.join(VM);
    std::fs::create_dir_all(&vmdir).unwrap();
    let disk = vmdir.join("data.vmdk");
    let size = mib << 20;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        disk.to_str().unwrap(),
        &size.to_string(),
    ]);
    util::write_random(&vmdir.join("data-flat.vmdk"), 0, mib);
    let s = v.connect();
    set_vm_disks(&s, VM, &[(&format!("[{ds}] {VM}/data.vmdk"), size)]);
    disk
}

#[test]
fn browser_walks_the_wizard_replicates_a_vm_and_exports_it() {
    require_browser_tools();
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let disk = random_disk(&v, 16);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    // 4 MiB/s: the 16 MiB disk takes a few seconds, so the bar is seen part-way.
    let svc = Serve::start(
        &work.path().join("svc"),
        &["--chunk-size", "256K", "--bwlimit", "4M", "--no-cbt"],
    );
    let code = svc.setup_code.clone();

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webui-wizard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let export = work.path().join("export.vmdk");
    let out = Command::new("node")
        .arg(browser_dir().join("wizard.mjs"))
        .current_dir(browser_dir())
        .env("GODWIT_URL", &svc.url)
        .env("GODWIT_SETUP_CODE", &code)
        .env("GODWIT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("GODWIT_STAGING_ADDRESS", &srv.addr)
        .env("GODWIT_STAGING_FINGERPRINT", &srv.fingerprint)
        .env("GODWIT_STAGING_TOKEN", &srv.token)
        .env("GODWIT_SOURCE_KIND", "vsphere")
        .env("GODWIT_SOURCE_ADDRESS", v.authority())
        .env("GODWIT_SOURCE_USER", USER)
        .env("GODWIT_SOURCE_PASSWORD", PASSWORD)
        .env("GODWIT_VM", VM)
        .env("GODWIT_EXPORT_DEST", &export)
        .env("GODWIT_SCREENSHOTS", &shots)
        .env("GODWIT_DNS", "")
        .env("GODWIT_NTP", "")
        .env("GODWIT_JOB_TIMEOUT_S", "120")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wizard.mjs failed ({}); screenshots in {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nservice stderr:\n{}",
        out.status,
        shots.display(),
        svc.stderr_text()
    );
    assert!(
        stdout.contains("field error on hostname")
            && stdout.contains("field error on setup_code")
            && stdout.contains("field error on approve"),
        "bad values did not show their errors:\n{stdout}"
    );
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));

    // A screenshot of every step.
    let pngs = std::fs::read_dir(&shots)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert!(pngs >= 20, "only {pngs} screenshots in {}", shots.display());

    // The export the page showed exists and holds the source disk; the SHA-256 shown is the
    // service's hash of the disk CONTENT (raw bytes), not of the image file (a stream VMDK's
    // bytes vary with its header), so it must equal the hash of the source disk's raw bytes.
    assert_eq!(result["export_destination"], export.to_str().unwrap());
    assert!(export.exists(), "no export at {}", export.display());
    let raw = vmware_harness::qemu_raw(&disk, work.path());
    let raw_sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&raw))
    };
    assert_eq!(
        result["export_sha256"].as_str().unwrap(),
        raw_sha,
        "the SHA-256 shown is not that of the disk content (file's own: {})",
        sha256_file(&export)
    );
    qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "vmdk",
        disk.to_str().unwrap(),
        export.to_str().unwrap(),
    ]);
}
