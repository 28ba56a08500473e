//! qemu for the appliance image tests: boot a disk under TCG (SeaBIOS with pvscsi + vmxnet3 as
//! on vSphere, or OVMF with Secure Boot enforced and virtio as on Hyper-V Gen2), the serial log
//! read back, the setup page fetched through a forwarded port; overlays and CD images.

use crate::peers::run_ok;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running qemu, killed on drop.
pub struct Vm {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let mut b = Vec::new();
            let _ = f.read_to_end(&mut b);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        s
    }

    /// Wait until the log holds `n` banners ("GODWIT READY"); returns the log.
    pub fn wait_ready(&mut self, n: usize) -> String {
        let start = Instant::now();
        loop {
            let t = self.log_text();
            if t.matches("GODWIT READY").count() >= n {
                std::thread::sleep(Duration::from_millis(300));
                return self.log_text();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("qemu exited ({st}) before the banner; serial log:\n{t}");
            }
            assert!(
                start.elapsed() < BOOT_TIMEOUT,
                "no banner after {BOOT_TIMEOUT:?}; serial log:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Wait for `needle` in the log.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let t = self.log_text();
            if t.contains(needle) {
                return t;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("qemu exited ({st}) before {needle:?}; serial log:\n{t}");
            }
            assert!(
                start.elapsed() < BOOT_TIMEOUT,
                "no {needle:?} after {BOOT_TIMEOUT:?}; serial log:\n{t}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// HTTP status of the setup page through the forwarded port (self-signed certificate).
    pub fn fetch_setup_page(&self) -> String {
        let url = format!("https://127.0.0.1:{}/", self.port);
        let start = Instant::now();
        loop {
            let out = Command::new("curl")
                .args([
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "10",
                    &url,
                ])
                .output()
                .expect("curl");
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code.starts_with('2') || code.starts_with('3') {
                return code;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "setup page {url} answered {code:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The virtual machine: firmware, disk controller and NIC.
#[derive(Clone, Copy, Debug)]
pub enum Firmware {
    /// vSphere's BIOS VM: pvscsi disk, vmxnet3 NIC, IDE CD-ROM.
    SeaBios,
    /// SeaBIOS with a virtio disk and NIC.
    SeaBiosVirtio,
    /// Hyper-V Generation 1-like: SeaBIOS, the disk on IDE (ata_piix), a virtio NIC (qemu has
    /// no Hyper-V synthetic NIC).
    SeaBiosIde,
    /// Hyper-V Gen2-like: UEFI with Secure Boot enforced (Microsoft keys), virtio.
    OvmfSecureBoot,
}

/// Boot `disk` (an overlay over the built image) with 512 MiB under TCG.
pub fn boot(
    dir: &Path,
    disk: &Path,
    fw: Firmware,
    cdrom: Option<&Path>,
    guest_ip: &str,
    tag: &str,
) -> Vm {
    boot_with(dir, disk, fw, cdrom, guest_ip, tag, &[])
}

/// [`boot`] with more `hostfwd` rules for the guest (`tcp:HOSTADDR:PORT-:GUESTPORT`).
pub fn boot_with(
    dir: &Path,
    disk: &Path,
    fw: Firmware,
    cdrom: Option<&Path>,
    guest_ip: &str,
    tag: &str,
    extra_fwd: &[String],
) -> Vm {
    let port = free_port();
    let log = dir.join(format!("{tag}-serial.log"));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "512",
        "-smp",
        "1",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nodefaults",
    ]);
    cmd.arg("-serial").arg(format!("file:{}", log.display()));
    let mut netdev = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-{guest_ip}:443");
    for f in extra_fwd {
        netdev.push_str(&format!(",hostfwd={f}"));
    }
    cmd.arg("-netdev").arg(netdev);
    cmd.arg("-drive").arg(format!(
        "file={},format=qcow2,if=none,id=d0",
        disk.display()
    ));
    match fw {
        Firmware::SeaBios => {
            // vSphere's BIOS VM: pvscsi disk, vmxnet3 NIC, IDE CD-ROM for the OVF environment.
            cmd.args([
                "-machine",
                "pc",
                "-device",
                "pvscsi,id=scsi0",
                "-device",
                "scsi-hd,drive=d0,bus=scsi0.0",
            ]);
            cmd.args(["-device", "vmxnet3,netdev=n0,romfile="]);
        }
        Firmware::SeaBiosVirtio => {
            cmd.args([
                "-machine",
                "pc",
                "-device",
                "virtio-blk-pci,drive=d0,bootindex=0",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]);
        }
        Firmware::SeaBiosIde => {
            cmd.args([
                "-machine",
                "pc",
                "-device",
                "ide-hd,drive=d0,bus=ide.0,unit=0,bootindex=0",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]);
        }
        Firmware::OvmfSecureBoot => {
            // Hyper-V Gen2-like: UEFI with Secure Boot enforced (Microsoft keys), virtio.
            let vars = dir.join(format!("{tag}-vars.fd"));
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.ms.fd", &vars)
                .expect("OVMF_VARS_4M.ms.fd (package ovmf)");
            cmd.args([
                "-machine",
                "q35,smm=on",
                "-global",
                "driver=cfi.pflash01,property=secure,value=on",
            ]);
            cmd.arg("-drive").arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd");
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
            cmd.args([
                "-device",
                "virtio-blk-pci,drive=d0,bootindex=0",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]);
        }
    }
    if let Some(iso) = cdrom {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=none,id=cd0,readonly=on,media=cdrom",
            iso.display()
        ));
        match fw {
            // vSphere's IDE CD-ROM (ata_piix); Gen1's disk is ide.0, its CD goes on ide.1.
            Firmware::SeaBios | Firmware::SeaBiosVirtio => {
                cmd.args(["-device", "ide-cd,drive=cd0"])
            }
            Firmware::SeaBiosIde => cmd.args(["-device", "ide-cd,drive=cd0,bus=ide.1,unit=0"]),
            // q35's IDE is AHCI, which the cloud kernel lacks: a SCSI CD as on Hyper-V Gen2.
            Firmware::OvmfSecureBoot => cmd.args([
                "-device",
                "virtio-scsi-pci,id=vs0",
                "-device",
                "scsi-cd,drive=cd0,bus=vs0.0",
            ]),
        };
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64");
    Vm { child, log, port }
}

/// A qcow2 overlay over `base` in a fresh directory.
pub fn overlay(base: &Path, fmt: &str, dir: &Path) -> PathBuf {
    overlay_sized(base, fmt, dir, None)
}

/// A qcow2 overlay over `base`, `size` bytes large when given: the disk the user enlarged
/// before power-on.
pub fn overlay_sized(base: &Path, fmt: &str, dir: &Path, size: Option<u64>) -> PathBuf {
    let o = dir.join("overlay.qcow2");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
        .arg(base)
        .arg(&o);
    if let Some(n) = size {
        cmd.arg(n.to_string());
    }
    run_ok(&mut cmd);
    o
}

pub fn iso(dir: &Path, files: &[(&str, &Path)], name: &str) -> PathBuf {
    let stage = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&stage).unwrap();
    for (n, p) in files {
        std::fs::copy(p, stage.join(n)).unwrap();
    }
    let out = dir.join(format!("{name}.iso"));
    run_ok(
        Command::new("xorriso")
            .args([
                "-as", "mkisofs", "-quiet", "-J", "-R", "-V", "OVF ENV", "-o",
            ])
            .arg(&out)
            .arg(&stage),
    );
    out
}
