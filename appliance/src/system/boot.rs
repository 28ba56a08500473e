//! `godwit system run`: bring the appliance up, then supervise `godwit serve`.

use super::banner::{Banner, render};
use super::host::{self, DATA};
use super::net::{self, NET_FILE};
use super::space;
use anyhow::Context;
use godwit_image::slots::{self, BootKind, SlotState};
use godwit_image::vapp::{NetSettings, Settings};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const ENV_HASH_FILE: &str = "/data/system/ovf-env.sha256";
const UPDATE_HASH_FILE: &str = "/data/system/update-bundle.sha256";
/// Test hook: a slot whose initramfs holds this file fails its health check.
const FORCE_UNHEALTHY: &str = "/etc/godwit-health-fail";
pub const SLOTS_FILE: &str = "/data/system/slots.json";
const PASSWORD_FILE: &str = "/run/godwit/admin-password";
const SERVE_DATA: &str = "/data/service";
/// Local exports: downloadable from the web UI, deleted there to free space.
const EXPORTS_DIR: &str = "/data/exports";
/// How often the banner's addresses and data space are looked at again.
const BANNER_REFRESH: Duration = Duration::from_secs(20);
/// A banner whose only change is the data space is printed again at most this often.
const SPACE_REPRINT: Duration = Duration::from_secs(600);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// Write to the serial console (stdout under init) and the screen (tty0).
pub fn console(text: &str) {
    print!("{text}");
    let _ = std::io::stdout().flush();
    if let Ok(mut t) = std::fs::OpenOptions::new().write(true).open("/dev/tty0") {
        let _ = t.write_all(text.replace('\n', "\r\n").as_bytes());
    }
}

/// The OVF environment from an attached CD-ROM (vSphere's `iso` transport), if any.
fn read_ovf_env() -> Option<Vec<u8>> {
    for dev in host::cdroms() {
        let dir = "/run/ovfenv";
        if !host::mount(&dev, dir, "iso9660", "ro") {
            continue;
        }
        let found = ["ovf-env.xml", "OVF-ENV.XML", "ovf_env.xml", "OVF_ENV.XML"]
            .iter()
            .find_map(|n| std::fs::read(Path::new(dir).join(n)).ok());
        offline_update(Path::new(dir));
        host::sh("umount", &[dir]);
        if found.is_some() {
            return found;
        }
    }
    None
}

/// An update bundle on a CD (`godwit-update.bundle`) is installed once (by its SHA-256), then
/// the appliance reboots into its trial. A refused bundle is reported and not retried.
fn offline_update(dir: &Path) {
    let path = dir.join("godwit-update.bundle");
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let hash = hex_sha256(&bytes);
    drop(bytes);
    if std::fs::read_to_string(UPDATE_HASH_FILE)
        .unwrap_or_default()
        .trim()
        == hash
    {
        return;
    }
    let _ = host::write_atomic(Path::new(UPDATE_HASH_FILE), hash.as_bytes());
    host::sh("sync", &[]);
    match super::update::install(&path, false) {
        Ok(_) => {
            host::sh("umount", &[dir.to_str().unwrap_or("/run/ovfenv")]);
            console("godwit: rebooting into the new slot\n");
            host::sh("sync", &[]);
            host::sh("reboot", &[]);
            std::thread::sleep(Duration::from_secs(60));
        }
        Err(e) => console(&format!("godwit: update refused: {e:#}\n")),
    }
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Settings to apply now: a new OVF environment wins (and may carry the admin password),
/// else what was saved on the data partition, else DHCP defaults.
fn settings(notes: &mut Vec<String>) -> (NetSettings, Option<godwit_image::vapp::Secret>) {
    if let Some(env) = read_ovf_env() {
        let hash = hex_sha256(&env);
        let seen = std::fs::read_to_string(ENV_HASH_FILE).unwrap_or_default();
        if seen.trim() != hash {
            match godwit_image::ovfenv::parse(&env).and_then(|p| Settings::from_properties(&p)) {
                Ok(s) => {
                    if let Err(e) = net::save(Path::new(NET_FILE), &s.net) {
                        notes.push(format!("cannot save settings: {e}"));
                    }
                    let _ = host::write_atomic(Path::new(ENV_HASH_FILE), hash.as_bytes());
                    host::sh("sync", &[]);
                    notes.push("applied the vApp properties from the OVF environment".into());
                    return (s.net, s.admin_password);
                }
                Err(e) => notes.push(format!("OVF environment ignored: {e}")),
            }
        }
    }
    (net::load(Path::new(NET_FILE)).unwrap_or_default(), None)
}

fn load_slots() -> SlotState {
    std::fs::read(SLOTS_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Persist the slot state and point the boot loaders at it.
pub fn save_slots(state: &SlotState) -> anyhow::Result<()> {
    let esp =
        host::partition_by_name("esp", Duration::from_secs(5)).context("no ESP partition found")?;
    anyhow::ensure!(
        host::mount(&esp, host::ESP, "vfat", "rw"),
        "cannot mount the ESP"
    );
    let (grub, syslinux) = slots::boot_files(state);
    host::write_atomic(
        &Path::new(host::ESP).join("boot/grub/slot.cfg"),
        grub.as_bytes(),
    )?;
    // SYSLINUX reads its config by name: overwrite in place (rename would work too on FAT).
    std::fs::write(
        Path::new(host::ESP).join("boot/syslinux/syslinux.cfg"),
        syslinux.as_bytes(),
    )?;
    // Boot-once records (a trial, or none), rewritten in place: the loaders write them too
    // and cannot follow a file that moved.
    let (grubenv, adv) = slots::boot_once_files(state)?;
    let esp = Path::new(host::ESP);
    overwrite_in_place(&esp.join("boot/grub/grubenv"), 0, &grubenv)?;
    let ldlinux = esp.join("boot/syslinux/ldlinux.sys");
    let len = std::fs::metadata(&ldlinux)
        .with_context(|| format!("{}", ldlinux.display()))?
        .len();
    let adv_at = len
        .checked_sub(adv.len() as u64)
        .context("ldlinux.sys is shorter than its ADV")?;
    overwrite_in_place(&ldlinux, adv_at, &adv)?;
    host::sh("sync", &[]);
    host::write_atomic(Path::new(SLOTS_FILE), &serde_json::to_vec_pretty(state)?)?;
    // Durable at once: a power-off must not leave the loaders and the recorded state apart.
    host::sh("sync", &[]);
    Ok(())
}

/// Write `data` at `offset` of an existing file without truncating or reallocating it.
fn overwrite_in_place(path: &Path, offset: u64, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all_at(data, offset)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

struct Serve {
    child: std::process::Child,
    url: bool,
    fingerprint: Option<String>,
    certificate_expires: Option<String>,
    setup_code: Option<String>,
    /// `setup: done` seen: the wizard is finished.
    setup_done: bool,
    /// serve's stdout lines, after the start lines (`setup: done` when the wizard finishes).
    lines: std::sync::mpsc::Receiver<String>,
}

/// Start `godwit serve` and read its start lines (url, fingerprint, setup code).
fn start_serve(password: Option<&Path>) -> anyhow::Result<Serve> {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/bin/godwit"));
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--data", SERVE_DATA, "--listen", "0.0.0.0:443"]);
    cmd.args(["--exports-dir", EXPORTS_DIR]);
    // The wizard's network settings are saved where this boot reads them, and applied at once.
    cmd.arg("--system-network").arg(NET_FILE);
    if let Some(p) = password {
        cmd.arg("--admin-password-file").arg(p);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting godwit serve")?;
    let stdout = child.stdout.take().context("serve stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("serve: {line}");
            if tx.send(line).is_err() {
                // Keep echoing after the supervisor stopped listening.
            }
        }
    });
    let mut s = Serve {
        child,
        url: false,
        fingerprint: None,
        certificate_expires: None,
        setup_code: None,
        setup_done: false,
        lines: rx,
    };
    // url, fingerprint, [setup code], then `setup: pending|done` closes the start lines.
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        match s.lines.recv_timeout(Duration::from_millis(500)) {
            Ok(l) => {
                if l.starts_with("url:") {
                    s.url = true;
                } else if let Some(f) = l.strip_prefix("fingerprint:") {
                    s.fingerprint = Some(f.trim().to_string());
                } else if let Some(e) = l.strip_prefix("certificate expires:") {
                    s.certificate_expires = Some(e.trim().to_string());
                } else if let Some(c) = l.strip_prefix("setup code:") {
                    s.setup_code = Some(c.trim().to_string());
                } else if let Some(st) = l.strip_prefix("setup:") {
                    s.setup_done = st.trim() == "done";
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = s.child.try_wait() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Ok(s)
}

/// `BIOS`, `UEFI` or `UEFI, Secure Boot on` (from efivarfs, mounted by /init).
fn notes_firmware(out: &mut Vec<String>) {
    if !Path::new("/sys/firmware/efi").exists() {
        out.push("BIOS".into());
        return;
    }
    let sb = std::fs::read_dir("/sys/firmware/efi/efivars")
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("SecureBoot-"))
        })
        .and_then(|e| std::fs::read(e.path()).ok())
        .is_some_and(|b| b.get(4) == Some(&1));
    out.push(if sb {
        "UEFI, Secure Boot on".into()
    } else {
        "UEFI".into()
    });
}

/// Mount the data partition, grown first to fill the disk (GPT before the mount, while
/// nothing on the disk is in use; ext4 online after it). Problems become banner notes.
fn mount_data(notes: &mut Vec<String>) {
    if host::mounted(DATA) {
        return; // a respawn: mounted and grown at boot
    }
    let Some(mut dev) = host::partition_by_name("data", Duration::from_secs(15)) else {
        notes.push("no data partition found; settings will not persist".into());
        return;
    };
    match space::parent_disk(&dev) {
        Some((disk, sector)) => match space::grow_table(&disk, sector, "data") {
            Ok(Some(g)) => {
                // The kernel reads the table again (nothing on the disk is mounted yet).
                host::sh("blockdev", &["--rereadpt", &disk.to_string_lossy()]);
                if let Some(d) = host::partition_by_name("data", Duration::from_secs(10)) {
                    dev = d;
                }
                console(&format!(
                    "godwit: data partition grown from {} to {}\n",
                    space::human(g.old_bytes),
                    space::human(g.new_bytes)
                ));
            }
            Ok(None) => {}
            Err(e) => notes.push(format!(
                "the data partition was not grown to fill the disk: {e:#}"
            )),
        },
        None => notes.push(format!("no disk found for {}", dev.display())),
    }
    if !host::mount(&dev, DATA, "ext4", "rw,noatime") {
        notes.push(format!(
            "cannot mount the data partition {}; settings will not persist",
            dev.display()
        ));
        return;
    }
    // Online, so the file system matches the partition (a no-op when it does already).
    let started = Instant::now();
    if host::sh("resize2fs", &[&dev.to_string_lossy()]) {
        let took = started.elapsed();
        if took > Duration::from_secs(1) {
            console(&format!("godwit: data file system resized in {took:.1?}\n"));
        }
    } else {
        notes.push("the data file system was not resized (resize2fs failed)".into());
    }
    let _ = std::fs::create_dir_all(EXPORTS_DIR);
}

/// The data partition's size and free space, for the banner.
fn data_space() -> Option<(u64, u64)> {
    space::space(Path::new(DATA))
        .ok()
        .filter(|_| host::mounted(DATA))
        .map(|s| (s.available, s.total))
}

fn serve_answers() -> bool {
    std::net::TcpStream::connect_timeout(
        &"127.0.0.1:443".parse().expect("addr"),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// Show the banner and keep it current until `godwit serve` exits: printed again when the setup
/// is finished (the setup code and fingerprint give way to the URL and version), when the
/// addresses change, and now and then when only the data space changed.
fn keep_banner(serve: &mut Serve, banner: &mut Banner) -> anyhow::Result<std::process::ExitStatus> {
    let without_space = |b: &Banner| {
        render(&Banner {
            data_space: None,
            ..b.clone()
        })
    };
    console(&render(banner));
    let mut shown = banner.clone();
    let mut shown_at = Instant::now();
    let mut looked = Instant::now();
    loop {
        if let Some(status) = serve.child.try_wait().context("waiting for godwit serve")? {
            return Ok(status);
        }
        match serve.lines.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.trim() == "setup: done" => banner.setup_done = true,
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // serve closed its stdout: it is exiting.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return serve.child.wait().context("waiting for godwit serve");
            }
        }
        if looked.elapsed() >= BANNER_REFRESH {
            looked = Instant::now();
            banner.addresses = host::ipv4_addrs(&host::out(
                "ip",
                &["-4", "-o", "addr", "show", "dev", &banner.interface],
            ));
            banner.data_space = data_space();
        }
        let changed = without_space(banner) != without_space(&shown);
        let space_moved = render(banner) != render(&shown);
        if changed || (space_moved && shown_at.elapsed() >= SPACE_REPRINT) {
            console(&render(banner));
            shown = banner.clone();
            shown_at = Instant::now();
        }
    }
}

pub fn run() -> anyhow::Result<ExitCode> {
    let mut notes = Vec::new();
    let version = std::fs::read_to_string("/etc/godwit-version")
        .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").into());
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (booted, trial_flag) = slots::from_cmdline(&cmdline);
    mount_data(&mut notes);
    let _ = std::fs::create_dir_all("/data/system");
    let _ = std::fs::create_dir_all(SERVE_DATA);

    // A/B: settle a trial boot first, so a crash from here on returns to the known-good slot.
    let state = load_slots();
    let (state, kind) = slots::after_boot(&state, booted, trial_flag);
    if state != load_slots()
        && let Err(e) = save_slots(&state)
    {
        notes.push(format!("cannot record the slot state: {e:#}"));
    }
    if let Some(r) = &state.last_result {
        notes.push(format!("update: {r}"));
    }

    let (net, password) = settings(&mut notes);
    let applied = net::apply(&net, false, &mut notes);
    let password_file = match &password {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::create_dir_all("/run/godwit");
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(PASSWORD_FILE)
                .and_then(|mut f| f.write_all(format!("{}\n", p.0).as_bytes()));
            written.is_ok().then(|| PathBuf::from(PASSWORD_FILE))
        }
        None => None,
    };

    let serve = start_serve(password_file.as_deref());
    let mut notes_fw = Vec::new();
    if let Some(p) = &password_file {
        let _ = std::fs::remove_file(p);
    }
    // Read again: a DHCP lease may have arrived meanwhile.
    let addrs = host::ipv4_addrs(&host::out(
        "ip",
        &["-4", "-o", "addr", "show", "dev", &applied.interface],
    ));
    notes_firmware(&mut notes_fw);
    let mut banner = Banner {
        firmware: notes_fw.pop().unwrap_or_default(),
        version: version.trim().to_string(),
        slot: booted
            .map(|s| s.name().to_string())
            .unwrap_or_else(|| "?".into()),
        hostname: net.hostname.clone(),
        interface: applied.interface,
        addresses: addrs,
        mode: applied.mode,
        password_preset: password.is_some(),
        notes,
        ..Default::default()
    };
    let mut serve = match serve {
        Ok(s) => s,
        Err(e) => {
            banner.notes.push(format!("{e:#}"));
            console(&render(&banner));
            std::thread::sleep(Duration::from_secs(30));
            return Ok(ExitCode::from(1));
        }
    };
    if serve.url {
        banner.url_port = Some(443);
    }
    banner.fingerprint = serve.fingerprint.clone();
    banner.certificate_expires = serve.certificate_expires.clone();
    banner.setup_code = serve.setup_code.clone();
    banner.setup_done = serve.setup_done;
    banner.data_space = data_space();

    if let BootKind::Trial(slot) = kind {
        let start = Instant::now();
        let forced = Path::new(FORCE_UNHEALTHY).exists();
        let mut healthy = !forced && serve.url && serve_answers();
        while !forced
            && !healthy
            && start.elapsed() < HEALTH_TIMEOUT
            && matches!(serve.child.try_wait(), Ok(None))
        {
            std::thread::sleep(Duration::from_secs(1));
            healthy = serve.url && serve_answers();
        }
        let detail = if healthy {
            format!("version {}", banner.version)
        } else if forced {
            format!("{FORCE_UNHEALTHY} present")
        } else {
            "the setup page did not answer".into()
        };
        let next = slots::after_health(&state, slot, healthy, &detail);
        if let Err(e) = save_slots(&next) {
            banner
                .notes
                .push(format!("cannot record the slot state: {e:#}"));
        }
        banner.notes.push(format!(
            "update: {}",
            next.last_result.clone().unwrap_or_default()
        ));
        if !healthy {
            console(&render(&banner));
            console("godwit: rolling back: rebooting into the previous slot\n");
            host::sh("sync", &[]);
            host::sh("reboot", &[]);
            return Ok(ExitCode::from(1));
        }
    }
    let status = keep_banner(&mut serve, &mut banner)?;
    console(&format!("godwit: serve exited ({status}); restarting\n"));
    std::thread::sleep(Duration::from_secs(2));
    Ok(ExitCode::from(1))
}
