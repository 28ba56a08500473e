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

use godwit_tests::peers::{have, sha256_file};
use godwit_tests::{service, staging, vcsim};
use service::{Service, random_disk, sha256_hex};
use staging::Server;
use std::path::{Path, PathBuf};
use std::process::Command;
use vcsim::{PASSWORD, USER, Vcsim, qemu_img};

const VM: &str = "DC0_H0_VM0";
const ADMIN_PASSWORD: &str = "browser-admin-password-1";

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

#[test]
fn browser_walks_the_wizard_replicates_a_vm_and_exports_it() {
    require_browser_tools();
    let work = tempfile::tempdir().unwrap();
    let v = Vcsim::start(false);
    let disk = random_disk(&v, VM, 16);
    let staging = work.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let srv = Server::start(&staging, "127.0.0.1:0", &[]);
    // 4 MiB/s: the 16 MiB disk takes a few seconds, so the bar is seen part-way.
    let svc = Service::start(
        &work.path().join("svc"),
        &["--chunk-size", "256K", "--bwlimit", "4M", "--no-cbt"],
        true,
    );
    let code = svc.setup_code.clone().expect("a setup code");

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webui-wizard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    // Exports are written under the service's export directory: the form is given a file name.
    let export = svc.data.join("exports/export.vmdk");
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
        .env("GODWIT_EXPORT_DEST", "export.vmdk")
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

    // The export the page showed exists and holds the source disk. Two hashes are shown: the
    // FILE's (what sha256sum of the download prints) and the disk CONTENT's (raw bytes; a
    // stream VMDK's own bytes differ from its content's).
    assert_eq!(result["export_destination"], "export.vmdk");
    assert!(export.exists(), "no export at {}", export.display());
    assert_eq!(
        result["export_file_sha256"].as_str().unwrap(),
        sha256_file(&export),
        "the file SHA-256 shown is not sha256sum of the exported file"
    );
    let raw_sha = sha256_hex(&vcsim::qemu_raw(&disk, work.path()));
    assert_eq!(
        result["export_sha256"].as_str().unwrap(),
        raw_sha,
        "the content SHA-256 shown is not that of qemu-img's raw conversion of the source"
    );
    assert_ne!(
        raw_sha,
        sha256_file(&export),
        "a VMDK file is not its raw content"
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
