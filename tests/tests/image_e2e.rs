//! The whole migration inside the booted appliance, deployed as a user deploys it: the image's
//! disk (the OVA's VMDK, the VHDX) booted under qemu (TCG, 512 MiB, qemu's user network), the
//! peers on this host reached at 10.0.2.2 (`godwit_tests::image::e2e`: vcsim with a VM whose disk
//! qemu-img made, the Hyper-V simulator with a Generation 2 VM, a staging server, SNTP).
//!
//! - OVA, SeaBIOS + virtio and OVMF + Secure Boot: Debian's chromium (playwright-core,
//!   tests/browser/appliance.mjs) walks the wizard from the first page with the setup code read
//!   from the serial console, adds both sources approving their certificates, runs the checks,
//!   starts one job per source (they replicate at once), exports each and downloads each
//!   export through the browser. The downloads, converted by qemu-img, equal qemu-img's raw
//!   conversion of the sources; no snapshot or checkpoint is left; the service's peak RSS and
//!   the guest's lowest MemAvailable are printed and there is no OOM kill; the console banner
//!   drops the setup code once setup is done. Screenshots of every step are kept under
//!   `<target>/tmp/appliance-e2e-<variant>/`.
//! - VHDX, SeaBIOS + IDE (Generation 1-like) and OVMF + Secure Boot (Generation 2-like), the
//!   second on a disk enlarged before power-on: the data partition fills the disk, the Hyper-V
//!   job runs through the API, its export downloads with curl in two parts (a broken download
//!   resumed with Range) whose bytes and `X-Checksum-SHA256` match, and deleting the export
//!   frees its space.
//!
//! Times from power-on to the setup page and from "start job" to "completed" are printed.

use godwit_tests::{image, image::e2e, vcsim};

use e2e::{
    ADMIN_PASSWORD, Appliance, HYPERV_USER, HYPERV_VM, MemoryWatch, Peers, VSPHERE_VM,
    assert_no_oom, banner_space, banner_value, metric, mib, qemu_raw_sha, wait_setup_page,
};
use godwit_tests::peers::{have, sha256_file};
use image::build::{image, ovf_env};
use image::qemu::{Firmware, Vm, boot_with, iso, overlay_sized};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GIB: f64 = 1073741824.0;
const JOB_LIMIT: Duration = Duration::from_secs(600);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

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

/// A booted appliance: its console, setup code and certificate.
struct Booted {
    vm: Vm,
    setup_code: Option<String>,
    fingerprint: String,
}

/// Boot `disk` with an OVF environment CD pointing NTP at the test's server (no lookups leave
/// the host), and wait for the setup page and the banner.
fn power_on(work: &Path, peers: &Peers, disk: &Path, fw: Firmware, tag: &str) -> Booted {
    let env = ovf_env(work, &[format!("godwit.ntp={}", peers.ntp())]);
    let cd = iso(work, &[("ovf-env.xml", &env)], "ovfenv");
    let powered_on = Instant::now();
    let mut vm = boot_with(work, disk, fw, Some(&cd), "", tag, &[peers.hostfwd()]);
    let to_setup_page = wait_setup_page(&mut vm, powered_on);
    let log = vm.wait_ready(1);
    eprintln!("{tag}: power-on to setup page {to_setup_page:.1?}");
    let firmware = match fw {
        Firmware::OvmfSecureBoot => "(slot A, UEFI, Secure Boot on)",
        _ => "(slot A, BIOS)",
    };
    assert!(log.contains(firmware), "{firmware} not in:\n{log}");
    let fingerprint = banner_value(&log, "Certificate:").expect("the banner shows the certificate");
    Booted {
        setup_code: banner_value(&log, "Setup code:"),
        fingerprint,
        vm,
    }
}

/// The banner once setup is done: the web UI's URL, the version and the data space; no setup
/// code, no fingerprint.
fn assert_banner_after_setup(vm: &mut Vm) {
    let log = vm.wait_for("Web UI:");
    let after = log.rsplit("serve: setup: done").next().unwrap();
    let banner = after
        .rsplit("GODWIT READY")
        .nth(1)
        .unwrap_or_else(|| panic!("no banner after setup:\n{after}"));
    assert!(banner.contains("Godwit 0.0.0-test"), "{banner}");
    assert!(
        banner.contains("Web UI:       https://10.0.2.15/"),
        "{banner}"
    );
    assert!(banner.contains("Data space:"), "{banner}");
    assert!(
        !banner.contains("Setup code:") && !banner.contains("Certificate:"),
        "{banner}"
    );
}

/// Whether the two runs overlapped (RFC 3339 strings of one format compare as times).
fn overlapped(a: &(String, String), b: &(String, String)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn print_memory(tag: &str, watch: (u64, u64, u64)) {
    let (peak, min_avail, total) = watch;
    eprintln!(
        "{tag}: guest memory: godwit serve peak RSS {:.1} MiB; lowest MemAvailable {:.1} MiB of {:.1} MiB",
        mib(peak),
        mib(min_avail),
        mib(total)
    );
    assert!(peak > 0 && min_avail < u64::MAX, "no memory figures read");
    assert!(
        peak < 256 << 20,
        "the service's peak RSS {:.1} MiB",
        mib(peak)
    );
    assert!(
        min_avail > 64 << 20,
        "MemAvailable fell to {:.1} MiB",
        mib(min_avail)
    );
}

/// The Hyper-V data came through the appliance's own HTTPS port, pushed by the host at the
/// forwarded address it was given with `PUT /api/v1/settings/ingest` (which must have answered
/// 200).
fn check_push_path(tag: &str, app: &Appliance, status: Option<u64>) {
    assert_eq!(
        status,
        Some(200),
        "{tag}: PUT /api/v1/settings/ingest did not take the push URL"
    );
    let m = app.metrics();
    let pushed = metric(&m, "godwit_ingest_pushed_bytes_total").unwrap_or(0);
    let winrm = metric(&m, "godwit_hyperv_winrm_read_bytes_total").unwrap_or(0);
    eprintln!(
        "{tag}: Hyper-V data pushed by the host {:.1} MiB, read over WinRM {:.1} MiB (PUT /api/v1/settings/ingest: {status:?})",
        mib(pushed),
        mib(winrm)
    );
    assert!(
        pushed >= e2e::HYPERV_MIB << 20,
        "{tag}: the host pushed {pushed} bytes"
    );
}

fn browser_e2e(fw: Firmware, tag: &str) {
    require_browser_tools();
    let img = image();
    let work = tempfile::Builder::new()
        .prefix(&format!("godwit-e2e-{tag}-"))
        .tempdir()
        .unwrap();
    let w = work.path();
    let peers = Peers::start(w);
    let disk = overlay_sized(&img.join("godwit-disk1.vmdk"), "vmdk", w, None);
    let mut b = power_on(w, &peers, &disk, fw, tag);
    let log = b.vm.log_text();
    let (_, total) = banner_space(&log);
    assert!(total > 15.0 * GIB, "the data partition did not grow: {log}");
    let code = b.setup_code.clone().expect("a setup code on the console");
    let app = Appliance::new(&b.vm, &b.fingerprint);
    let watch = MemoryWatch::start(Appliance::new(&b.vm, &b.fingerprint));

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("appliance-e2e-{tag}"));
    let _ = std::fs::remove_dir_all(&shots);
    let downloads = w.join("downloads");
    let out = Command::new("node")
        .arg(browser_dir().join("appliance.mjs"))
        .current_dir(browser_dir())
        .env("GODWIT_URL", &app.base)
        .env("GODWIT_SETUP_CODE", &code)
        .env("GODWIT_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("GODWIT_NTP", peers.ntp())
        .env("GODWIT_STAGING_ADDRESS", peers.staging_address())
        .env("GODWIT_STAGING_FINGERPRINT", &peers.staging.fingerprint)
        .env("GODWIT_STAGING_TOKEN", &peers.staging.token)
        .env("GODWIT_VSPHERE_ADDRESS", peers.vsphere_address())
        .env("GODWIT_VSPHERE_USER", vcsim::USER)
        .env("GODWIT_VSPHERE_PASSWORD", vcsim::PASSWORD)
        .env("GODWIT_VSPHERE_VM", VSPHERE_VM)
        .env("GODWIT_HYPERV_ADDRESS", peers.hyperv_address())
        .env("GODWIT_HYPERV_USER", HYPERV_USER)
        .env("GODWIT_HYPERV_PASSWORD", e2e::HYPERV_PASSWORD)
        .env("GODWIT_HYPERV_VM", HYPERV_VM)
        .env(
            "GODWIT_INGEST_URL",
            format!("https://{}", peers.appliance_from_host),
        )
        .env("GODWIT_SCREENSHOTS", &shots)
        .env("GODWIT_DOWNLOADS", &downloads)
        .env("GODWIT_JOB_TIMEOUT_S", JOB_LIMIT.as_secs().to_string())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let memory = watch.finish();
    assert!(
        out.status.success(),
        "appliance.mjs failed ({}); screenshots in {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserial log:\n{}",
        out.status,
        shots.display(),
        b.vm.log_text()
    );
    let r: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));

    for kind in ["vsphere", "hyperv"] {
        let j = &r["jobs"][kind];
        let secs =
            (j["completed_ms"].as_f64().unwrap() - j["started_ms"].as_f64().unwrap()) / 1000.0;
        eprintln!("{tag}: {kind} job: start job to completed {secs:.1} s");
    }
    // Both replicated at once (their runs overlap in the timelines).
    let (vs, hv) = (
        app.run_span(r["jobs"]["vsphere"]["id"].as_str().unwrap()),
        app.run_span(r["jobs"]["hyperv"]["id"].as_str().unwrap()),
    );
    assert!(
        overlapped(&vs, &hv),
        "the runs did not overlap: {vs:?} {hv:?}"
    );

    // The downloads are the sources: through qemu-img, byte for byte.
    for (kind, src, fmt, out_fmt) in [
        ("vsphere", &peers.vsphere_disk, "vmdk", "vmdk"),
        ("hyperv", &peers.hyperv_disk, "vhdx", "vhdx"),
    ] {
        let e = &r["exports"][kind];
        let dl = PathBuf::from(e["download"].as_str().unwrap());
        assert_eq!(
            sha256_file(&dl),
            e["file_sha256"].as_str().unwrap(),
            "{kind}: the download is not the file the appliance wrote"
        );
        let want = qemu_raw_sha(src, fmt, w);
        assert_eq!(
            qemu_raw_sha(&dl, out_fmt, w),
            want,
            "{kind}: the downloaded {out_fmt} does not hold the source disk"
        );
        assert_eq!(
            e["sha256"].as_str().unwrap(),
            want,
            "{kind}: content hash shown"
        );
    }
    peers.assert_nothing_left();
    assert_eq!(
        app.ok("GET", "/ledger", None),
        json!([]),
        "ledger not empty"
    );
    check_push_path(tag, &app, r["ingest_status"].as_u64());
    assert_banner_after_setup(&mut b.vm);
    assert!(
        r["settings_data_free"]
            .as_str()
            .unwrap()
            .contains(" free of "),
        "{r}"
    );
    print_memory(tag, memory);
    assert_no_oom(&b.vm.log_text());
    let n = std::fs::read_dir(&shots).unwrap().count();
    assert!(n >= 15, "only {n} screenshots in {}", shots.display());
    eprintln!("{tag}: {n} screenshots in {}", shots.display());
}

#[test]
fn ova_on_seabios_virtio_migrates_vsphere_and_hyperv_through_the_browser() {
    browser_e2e(Firmware::SeaBiosVirtio, "ova-bios");
}

#[test]
fn ova_on_ovmf_secure_boot_migrates_vsphere_and_hyperv_through_the_browser() {
    browser_e2e(Firmware::OvmfSecureBoot, "ova-uefi-sb");
}

/// curl's view of a download: (HTTP status, headers).
fn curl_download(url: &str, out: &Path, extra: &[&str]) -> (u16, String) {
    let headers = out.with_extension("headers");
    let o = Command::new("curl")
        .args(["-sk", "--max-time", "300", "-u"])
        .arg(format!("admin:{ADMIN_PASSWORD}"))
        .args(extra)
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(out)
        .args(["-w", "%{http_code}"])
        .arg(url)
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (
        code,
        std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_lowercase(),
    )
}

fn vhdx_hyperv(fw: Firmware, tag: &str, disk_gib: Option<u64>) {
    let img = image();
    let work = tempfile::Builder::new()
        .prefix(&format!("godwit-e2e-{tag}-"))
        .tempdir()
        .unwrap();
    let w = work.path();
    let peers = Peers::start(w);
    let disk = overlay_sized(
        &img.join("godwit.vhdx"),
        "vhdx",
        w,
        disk_gib.map(|g| g << 30),
    );
    let b = power_on(w, &peers, &disk, fw, tag);
    // The data partition fills the disk: all of it but the ESP and the first MiB.
    let (free, total) = banner_space(&b.vm.log_text());
    let disk_bytes = disk_gib.map_or(16.0 * GIB, |g| g as f64 * GIB);
    assert!(
        total > disk_bytes - 0.2 * GIB && total <= disk_bytes && free > total - 0.3 * GIB,
        "data space {free} free of {total} on a disk of {disk_bytes}"
    );
    let app = Appliance::new(&b.vm, &b.fingerprint);
    app.set_password(&b.setup_code.clone().expect("a setup code on the console"));
    let watch = MemoryWatch::start(Appliance::new(&b.vm, &b.fingerprint));
    app.ok(
        "PUT",
        "/settings/staging",
        Some(json!({"kind": "server", "address": peers.staging_address(),
                    "fingerprint": peers.staging.fingerprint, "token": peers.staging.token})),
    );
    let cert = app.ok(
        "POST",
        "/sources/probe",
        Some(json!({"kind": "hyperv", "address": peers.hyperv_address()})),
    );
    let src = app.ok(
        "POST",
        "/sources",
        Some(
            json!({"kind": "hyperv", "address": peers.hyperv_address(), "username": HYPERV_USER,
                    "password": e2e::HYPERV_PASSWORD, "approved_fingerprint": cert["fingerprint"]}),
        ),
    );
    let (ingest, _) = app.api("PUT", "/settings/ingest", Some(json!({"url": app.base})));
    app.ok("GET", "/inventory?refresh=true", None);
    let started = Instant::now();
    let job = app.ok(
        "POST",
        "/jobs",
        Some(json!({"source_id": src["id"], "vm": HYPERV_VM, "schedule": {"kind": "once"}})),
    );
    let id = job["id"].as_str().unwrap();
    app.wait_job(id, JOB_LIMIT);
    eprintln!(
        "{tag}: hyperv job: start job to completed {:.1?}",
        started.elapsed()
    );
    peers.sim.assert_no_checkpoint();
    assert_eq!(
        app.ok("GET", "/ledger", None),
        json!([]),
        "ledger not empty"
    );
    check_push_path(tag, &app, Some(u64::from(ingest)));

    let before = app.ok("GET", "/settings", None)["data_space"]["free_bytes"]
        .as_u64()
        .unwrap();
    let ex = app.ok(
        "POST",
        "/exports",
        Some(json!({"job_id": id, "disk": 0, "format": "raw", "destination": "hyperv/e2e-hv.raw"})),
    );
    let ex = app.wait_export(ex["id"].as_str().unwrap(), JOB_LIMIT);
    assert_eq!(ex["destination"], "/data/exports/hyperv/e2e-hv.raw");
    let url = format!(
        "{}/api/v1/exports/{}/download",
        app.base,
        ex["id"].as_str().unwrap()
    );
    // A download broken after a third, then resumed: curl asks for the rest with Range.
    let size = ex["size_bytes"].as_u64().unwrap();
    let dl = w.join("download.raw");
    let (code, h) = curl_download(&url, &dl, &["--range", &format!("0-{}", size / 3 - 1)]);
    assert_eq!(code, 206, "{h}");
    assert_eq!(std::fs::metadata(&dl).unwrap().len(), size / 3);
    let (code, h) = curl_download(&url, &dl, &["-C", "-"]);
    assert_eq!(code, 206, "{h}");
    assert!(
        h.contains(&format!(
            "content-range: bytes {}-{}/{size}",
            size / 3,
            size - 1
        )),
        "{h}"
    );
    let sha = ex["file_sha256"].as_str().unwrap();
    assert!(h.contains(&format!("x-checksum-sha256: {sha}")), "{h}");
    assert!(h.contains("digest: sha-256="), "{h}");
    assert_eq!(
        sha256_file(&dl),
        sha,
        "the resumed download is not the export"
    );
    let want = qemu_raw_sha(&peers.hyperv_disk, "vhdx", w);
    assert_eq!(
        sha, want,
        "the raw export is not qemu-img's raw read of the source"
    );
    // The whole file in one go: its length.
    let (code, h) = curl_download(&url, &w.join("whole.raw"), &[]);
    assert_eq!(code, 200, "{h}");
    assert!(h.contains(&format!("content-length: {size}")), "{h}");

    // Deleting the export frees its space.
    let used = app.ok("GET", "/settings", None)["data_space"]["free_bytes"]
        .as_u64()
        .unwrap();
    app.ok(
        "DELETE",
        &format!("/exports/{}", ex["id"].as_str().unwrap()),
        None,
    );
    let after = app.ok("GET", "/settings", None)["data_space"]["free_bytes"]
        .as_u64()
        .unwrap();
    eprintln!(
        "{tag}: data free {:.1} MiB before the export, {:.1} with it, {:.1} after deleting it",
        mib(before),
        mib(used),
        mib(after)
    );
    assert!(
        after >= used + size / 2,
        "deleting freed {} of {size}",
        after.saturating_sub(used)
    );
    let (s, _) = app.api(
        "GET",
        &format!("/exports/{}/download", ex["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(s, 404);
    print_memory(tag, watch.finish());
    assert_no_oom(&b.vm.log_text());
}

#[test]
fn vhdx_on_seabios_ide_replicates_a_hyperv_vm_and_resumes_a_download() {
    vhdx_hyperv(Firmware::SeaBiosIde, "vhdx-gen1", None);
}

#[test]
fn vhdx_on_ovmf_secure_boot_grows_into_an_enlarged_disk_and_replicates_a_hyperv_vm() {
    vhdx_hyperv(Firmware::OvmfSecureBoot, "vhdx-gen2", Some(20));
}
