//! The appliance image end to end: `godwit image build` (rootless, Debian packages) and the
//! OVA / VHDX it writes, checked with real peers: tar, qemu-img, govmomi's ovf package, and
//! qemu-system-x86_64 under TCG (SeaBIOS with pvscsi + vmxnet3 as on vSphere; OVMF with
//! Secure Boot enforced and the Microsoft keys, virtio as on Hyper-V Gen2), 512 MiB of RAM.
//! The console banner is read from the serial log; the setup page is fetched through a
//! forwarded port. One image is built per test run and shared; boots use copy-on-write
//! overlays. The VHDX on OVMF with Secure Boot enforced, and the whole migration in the booted
//! image, are in image_e2e.rs.

use godwit_tests::image;
use godwit_tests::peers::{godwit_bin, run_ok, sha256_file};
use image::Sntp;
use image::build::{build, image, ovf_env, tmp_root};
use image::qemu::{BOOT_TIMEOUT, Firmware, Vm, boot, iso, overlay};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn ova_is_ordered_verified_and_parsed_by_govmomi() {
    let img = image();
    let listing = run_ok(Command::new("tar").arg("-tvf").arg(img.join("godwit.ova")));
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(
        names,
        ["godwit.ovf", "godwit.mf", "godwit-disk1.vmdk"],
        "{listing}"
    );
    let ova = std::fs::read(img.join("godwit.ova")).unwrap();
    assert_eq!(&ova[257..263], b"ustar\0");
    // The manifest verifies against the extracted members.
    let mf = std::fs::read_to_string(img.join("godwit.mf")).unwrap();
    for line in mf.lines() {
        let (name, hex) = line
            .strip_prefix("SHA256(")
            .and_then(|l| l.split_once(")= "))
            .expect(line);
        assert_eq!(sha256_file(&img.join(name)), hex, "{name}");
    }
    // govmomi's ovf package (what govc and vSphere clients use) reads the descriptor.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = run_ok(
        Command::new("bash")
            .arg(here.join("image/build.sh"))
            .arg(tmp_root().join("ovfcheck")),
    );
    let report = run_ok(Command::new(bin.trim()).arg(img.join("godwit.ovf")));
    let vmdk_size = std::fs::metadata(img.join("godwit-disk1.vmdk"))
        .unwrap()
        .len();
    assert!(
        report.contains(&format!("file=godwit-disk1.vmdk size={vmdk_size}")),
        "{report}"
    );
    assert!(report.contains("vsystype=vmx-13"), "{report}");
    // A 16 GiB thin disk of which only the partitions' data is populated (about 40 MB).
    let populated: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("disk=vmdisk1 capacity=17179869184 populated="))
        .unwrap_or_else(|| panic!("16 GiB capacity and a populated size: {report}"))
        .parse()
        .unwrap();
    assert!(
        (20 << 20..100 << 20).contains(&populated),
        "populated {populated}: {report}"
    );
    // Only the CD-ROM transport, which the appliance reads (no guestinfo backdoor client).
    assert!(report.contains("transport=iso\n"), "{report}");
    assert!(
        report.contains("item type=3 subtype= quantity=2"),
        "2 vCPU: {report}"
    );
    assert!(
        report.contains("item type=4 subtype= quantity=1024"),
        "1 GiB: {report}"
    );
    assert!(
        report.contains("item type=6 subtype=VirtualSCSI"),
        "{report}"
    );
    assert!(report.contains("item type=10 subtype=VmxNet3"), "{report}");
    for key in [
        "godwit.hostname",
        "godwit.ip.mode",
        "godwit.ip.address",
        "godwit.ip.prefix",
        "godwit.ip.gateway",
        "godwit.dns",
        "godwit.ntp",
    ] {
        assert!(
            report.contains(&format!("property={key} ")),
            "{key}: {report}"
        );
    }
    assert!(
        report.contains("property=godwit.admin.password type=string password=true"),
        "{report}"
    );
    // Footprint.
    let ova_len = std::fs::metadata(img.join("godwit.ova")).unwrap().len();
    eprintln!("OVA {ova_len} bytes, VMDK {vmdk_size} bytes");
    assert!(
        ova_len < 40_000_000,
        "design goal: OVA <= 40 MB, it is {ova_len}"
    );
}

#[test]
fn vmdk_and_vhdx_hold_the_raw_disk() {
    let img = image();
    let raw = img.join(".build/disk.raw");
    for (f, fmt) in [("godwit-disk1.vmdk", "vmdk"), ("godwit.vhdx", "vhdx")] {
        let p = img.join(f);
        let info = run_ok(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&p),
        );
        assert!(info.contains(&format!("\"format\": \"{fmt}\"")), "{info}");
        if fmt == "vmdk" {
            assert!(info.contains("streamOptimized"), "{info}");
        } else {
            // 1 MiB payload blocks, as Hyper-V images are usually made.
            assert!(info.contains("\"cluster-size\": 1048576"), "{info}");
        }
        run_ok(Command::new("qemu-img").args(["check", "-f", fmt]).arg(&p));
        let cmp = run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", fmt])
                .arg(&raw)
                .arg(&p),
        );
        assert!(cmp.contains("identical"), "{f}: {cmp}");
    }
    let gpt = run_ok(Command::new("sgdisk").arg("-p").arg(&raw));
    assert!(
        gpt.contains("EF00") && gpt.contains("esp") && gpt.contains("data"),
        "{gpt}"
    );
}

#[test]
fn builds_are_reproducible() {
    let a = image();
    let b = build("b");
    let sa = std::fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    let sb = std::fs::read_to_string(b.join("SHA256SUMS")).unwrap();
    if sa != sb {
        // Name the stages that differ (initramfs, ESP, data partition, raw disk, VMDK).
        let stages: Vec<String> = [
            "initrd.img",
            "esp.img",
            "data.img",
            "disk.raw",
            "godwit-disk1.vmdk",
        ]
        .iter()
        .map(|f| {
            let same =
                sha256_file(&a.join(".build").join(f)) == sha256_file(&b.join(".build").join(f));
            format!("{f}: {}", if same { "same" } else { "DIFFERS" })
        })
        .collect();
        panic!("two builds from the same inputs differ:\n{sa}\n{sb}\n{stages:#?}");
    }
    let _ = std::fs::remove_dir_all(b);
}

#[test]
fn vmdk_boots_on_seabios_with_pvscsi_and_serves_the_setup_page() {
    let img = image();
    let dir = tempfile::Builder::new()
        .prefix("godwit-boot-bios-")
        .tempdir()
        .unwrap();
    let sntp = Sntp::start();
    let env = ovf_env(
        dir.path(),
        &[format!("godwit.ntp={}", sntp.guest_setting())],
    );
    let cd = iso(dir.path(), &[("ovf-env.xml", &env)], "ovfenv");
    let disk = overlay(&img.join("godwit-disk1.vmdk"), "vmdk", dir.path());
    let start = Instant::now();
    let mut vm = boot(dir.path(), &disk, Firmware::SeaBios, Some(&cd), "", "bios");
    let log = vm.wait_ready(1);
    assert!(log.contains("Godwit 0.0.0-test (slot A, BIOS)"), "{log}");
    assert!(
        log.contains("Address:      10.0.2.15/24 on eth0 (dhcp)"),
        "{log}"
    );
    assert!(log.contains("Setup page:   https://10.0.2.15/"), "{log}");
    assert!(
        log.contains("Setup code:   "),
        "no admin password yet: a setup code is shown\n{log}"
    );
    let code = vm.fetch_setup_page();
    eprintln!("BIOS/pvscsi: setup page {code} after {:?}", start.elapsed());
    vm.wait_for(&format!("clock set from {}", sntp.guest_setting()));
    assert!(sntp.answered() > 0);
}

#[test]
fn ovf_environment_is_applied_and_settings_survive_a_reboot() {
    let img = image();
    let dir = tempfile::Builder::new()
        .prefix("godwit-boot-env-")
        .tempdir()
        .unwrap();
    let sntp = Sntp::start();
    let env = ovf_env(
        dir.path(),
        &[
            "godwit.hostname=mig-test".into(),
            "godwit.ip.mode=static".into(),
            "godwit.ip.address=10.0.2.50".into(),
            "godwit.ip.prefix=24".into(),
            "godwit.ip.gateway=10.0.2.2".into(),
            "godwit.dns=10.0.2.3".into(),
            format!("godwit.ntp={}", sntp.guest_setting()),
            "godwit.admin.password=Godwit-Test-Passw0rd".into(),
        ],
    );
    let cd = iso(dir.path(), &[("ovf-env.xml", &env)], "ovfenv");
    let disk = overlay(&img.join("godwit-disk1.vmdk"), "vmdk", dir.path());
    {
        let mut vm = boot(
            dir.path(),
            &disk,
            Firmware::SeaBios,
            Some(&cd),
            "10.0.2.50",
            "env1",
        );
        let log = vm.wait_ready(1);
        assert!(log.contains("Host name:    mig-test"), "{log}");
        assert!(
            log.contains("Address:      10.0.2.50/24 on eth0 (static)"),
            "{log}"
        );
        assert!(log.contains("preset from the vApp properties"), "{log}");
        assert!(
            !log.contains("Setup code:"),
            "a preset password means no setup code\n{log}"
        );
        assert!(
            !log.contains("Godwit-Test-Passw0rd"),
            "the password must never reach the console"
        );
        vm.fetch_setup_page();
    }
    // Power off and on again without the CD: the settings come from the data partition.
    let mut vm = boot(
        dir.path(),
        &disk,
        Firmware::SeaBios,
        None,
        "10.0.2.50",
        "env2",
    );
    let log = vm.wait_ready(1);
    assert!(log.contains("Host name:    mig-test"), "{log}");
    assert!(
        log.contains("Address:      10.0.2.50/24 on eth0 (static)"),
        "{log}"
    );
    assert!(
        !log.contains("Setup code:"),
        "the password set at first boot persists\n{log}"
    );
    vm.fetch_setup_page();
    // The NTP server saved at first boot is used again.
    vm.wait_for(&format!("clock set from {}", sntp.guest_setting()));
}

/// Wait (in the serial log after the last `marker`) for slot `slot`'s banner.
fn wait_banner_after(vm: &Vm, marker: &str, slot: &str) -> String {
    let start = Instant::now();
    loop {
        let log = vm.log_text();
        let after = log.rsplit(marker).next().unwrap_or("").to_string();
        if log.contains(marker)
            && after.contains(&format!("(slot {slot}, BIOS)"))
            && after.contains("GODWIT READY")
        {
            return after;
        }
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "no slot {slot} banner after {marker:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn update_bundle_boots_the_other_slot_tampered_refused_unhealthy_and_panicking_rolled_back() {
    let img = image();
    let dir = tempfile::Builder::new()
        .prefix("godwit-boot-upd-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let key = tmp_root().join("cache/update-signing.pk8");
    let kernel = img.join(".build/vmlinuz");
    let initrd = img.join(".build/initrd.img");
    let bundle = |name: &str, initrd: &Path| -> PathBuf {
        let out = d.join(name);
        run_ok(
            Command::new(godwit_bin())
                .args(["image", "bundle", "--version", name, "--key"])
                .arg(&key)
                .arg("--vmlinuz")
                .arg(&kernel)
                .arg("--initrd")
                .arg(initrd)
                .arg("--out")
                .arg(&out),
        );
        out
    };
    // A tampered bundle: one payload byte changed.
    let good = bundle("0.0.1-good", &initrd);
    let mut bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x55;
    let tampered = d.join("tampered");
    std::fs::write(&tampered, bytes).unwrap();
    // An unhealthy system: the same initramfs plus a cpio member that fails the health check.
    // The kernel unpacks concatenated archives in order, but an uncompressed cpio header must
    // start 4-byte aligned (zeros between archives are skipped): pad the zstd archive first.
    let extra = d.join("extra");
    std::fs::create_dir_all(extra.join("etc")).unwrap();
    std::fs::write(extra.join("etc/godwit-health-fail"), b"1").unwrap();
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("cd \"$0\" && find etc | cpio -o -H newc --quiet")
        .arg(&extra)
        .output()
        .unwrap();
    assert!(cpio.status.success() && !cpio.stdout.is_empty());
    let mut bad_initrd = std::fs::read(&initrd).unwrap();
    bad_initrd.resize(bad_initrd.len().div_ceil(512) * 512, 0);
    bad_initrd.extend_from_slice(&cpio.stdout);
    let bad_initrd_path = d.join("bad-initrd.img");
    std::fs::write(&bad_initrd_path, bad_initrd).unwrap();
    let unhealthy = bundle("0.0.2-unhealthy", &bad_initrd_path);
    // A system that never reaches userspace: its initramfs is not an archive, so the kernel
    // finds no /init, fails to mount a root file system and panics (panic=10 resets it).
    let junk_initrd = d.join("junk-initrd.img");
    std::fs::write(&junk_initrd, vec![0x5a; 4096]).unwrap();
    let panicking = bundle("0.0.3-panics", &junk_initrd);

    // Every CD also carries an OVF environment pointing NTP at the test's server (loopback).
    let sntp = Sntp::start();
    let env = ovf_env(d, &[format!("godwit.ntp={}", sntp.guest_setting())]);
    let cd = |name: &str, b: &Path| {
        iso(
            d,
            &[("godwit-update.bundle", b), ("ovf-env.xml", &env)],
            name,
        )
    };
    let disk = overlay(&img.join("godwit-disk1.vmdk"), "vmdk", d);
    // 1. Tampered: refused, still slot A.
    {
        let mut vm = boot(
            d,
            &disk,
            Firmware::SeaBios,
            Some(&cd("tampered", &tampered)),
            "",
            "upd1",
        );
        let log = vm.wait_ready(1);
        assert!(log.contains("update refused"), "{log}");
        assert!(log.contains("(slot A, BIOS)"), "{log}");
    }
    // 2. Good: installed in B, reboot, trial boot of B commits.
    {
        let mut vm = boot(
            d,
            &disk,
            Firmware::SeaBios,
            Some(&cd("good", &good)),
            "",
            "upd2",
        );
        vm.wait_for("installed in slot B");
        let log = vm.wait_ready(1);
        assert!(log.contains("(slot B, BIOS)"), "{log}");
        assert!(log.contains("slot B committed"), "{log}");
    }
    // 3. Unhealthy: installed in A, its trial boot fails the health check, back to B.
    {
        let cd = cd("unhealthy", &unhealthy);
        let mut vm = boot(d, &disk, Firmware::SeaBios, Some(&cd), "", "upd3");
        vm.wait_for("installed in slot A");
        vm.wait_for("rolled back to slot B");
        wait_banner_after(&vm, "rolling back", "B");
    }
    // 4. Panicking: installed in A, its kernel panics before init; SYSLINUX cleared the
    // boot-once record before booting it, so the reset comes back to B by itself.
    let cd = cd("panics", &panicking);
    let mut vm = boot(d, &disk, Firmware::SeaBios, Some(&cd), "", "upd4");
    vm.wait_for("installed in slot A");
    vm.wait_for("Kernel panic");
    let after = wait_banner_after(&vm, "Kernel panic", "B");
    assert!(
        after.contains("slot A did not come up; still running slot B"),
        "{after}"
    );
}

/// An API call as the admin through the forwarded port: (HTTP status, body).
fn api(vm: &Vm, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, String) {
    let url = format!("https://127.0.0.1:{}/api/v1{path}", vm.port);
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "--max-time",
        "20",
        "-u",
        "admin:Godwit-Test-Passw0rd",
    ])
    .args(["-X", method, "-w", "\n%{http_code}", &url]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = String::from_utf8_lossy(&cmd.output().expect("curl").stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn network_set_through_the_api_is_applied_at_once_and_after_a_reboot() {
    let img = image();
    let dir = tempfile::Builder::new()
        .prefix("godwit-boot-net-")
        .tempdir()
        .unwrap();
    let sntp = Sntp::start();
    // The vApp properties preset only the password and NTP: the appliance comes up on DHCP.
    let env = ovf_env(
        dir.path(),
        &[
            format!("godwit.ntp={}", sntp.guest_setting()),
            "godwit.admin.password=Godwit-Test-Passw0rd".into(),
        ],
    );
    let cd = iso(dir.path(), &[("ovf-env.xml", &env)], "ovfenv");
    let disk = overlay(&img.join("godwit-disk1.vmdk"), "vmdk", dir.path());
    {
        let mut vm = boot(dir.path(), &disk, Firmware::SeaBios, Some(&cd), "", "net1");
        let log = vm.wait_ready(1);
        assert!(log.contains("Host name:    godwit"), "{log}");
        assert!(log.contains("on eth0 (dhcp)"), "{log}");
        vm.fetch_setup_page();
        // The wizard's network step: static, the address qemu's user network forwards to.
        let net = serde_json::json!({"hostname": "wiz-net", "mode": "static",
            "address": "10.0.2.15/24", "gateway": "10.0.2.2", "dns_servers": ["10.0.2.3"],
            "ntp_servers": [sntp.guest_setting()], "proxy": null});
        let (code, body) = api(&vm, "PUT", "/settings/network", Some(&net));
        assert_eq!(code, 204, "{body}");
        let start = Instant::now();
        let status = loop {
            let (code, body) = api(&vm, "GET", "/settings", None);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let st = v["network_status"].clone();
            if code == 200 && st["state"] != "applying" {
                break st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "still applying: {code} {body}\n{}",
                vm.log_text()
            );
            std::thread::sleep(Duration::from_secs(1));
        };
        assert_eq!(status["state"], "applied", "{status}\n{}", vm.log_text());
        let msg = status["message"].as_str().unwrap();
        assert!(
            msg.contains("host name wiz-net") && msg.contains("eth0 static (10.0.2.15/24)"),
            "{msg}"
        );
        let log = vm.wait_for("Applied to the system: host name wiz-net");
        eprintln!(
            "applied: {msg} (serial: {})",
            log.lines()
                .rev()
                .find(|l| l.contains("Applied"))
                .unwrap_or("")
        );
    }
    // Power off and on again without the CD: the banner shows what the wizard set.
    let mut vm = boot(dir.path(), &disk, Firmware::SeaBios, None, "", "net2");
    let log = vm.wait_ready(1);
    assert!(log.contains("Host name:    wiz-net"), "{log}");
    assert!(
        log.contains("Address:      10.0.2.15/24 on eth0 (static)"),
        "{log}"
    );
    let (code, body) = api(&vm, "GET", "/settings", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"hostname\":\"wiz-net\""), "{body}");
    vm.wait_for(&format!("clock set from {}", sntp.guest_setting()));
}
