//! `godwit system update BUNDLE`: verify a signed bundle with the key built into the image,
//! install it into the inactive slot on the ESP, and arm one trial boot of that slot.

use super::boot::{SLOTS_FILE, console, save_slots};
use super::host;
use anyhow::Context;
use godwit_image::{bundle, slots};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub const PUBLIC_KEY: &str = "/etc/godwit/update.pub";

/// What the appliance's service calls for a bundle uploaded and verified by
/// `POST /api/v1/update` (issue 18): the same install as `godwit system update`, then a reboot
/// a few seconds later (after the answer went out).
#[derive(Debug)]
pub struct Installer;

impl godwit_service::update_upload::InstallUpdate for Installer {
    fn install(&self, bundle: &Path) -> Result<String, String> {
        let version = install_slot(bundle).map_err(|e| format!("{e:#}"))?;
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(5));
            host::sh("reboot", &[]);
        });
        Ok(format!(
            "update {version} installed in the inactive system slot; the appliance restarts in 5 s and tries it once (it falls back to the current system if that boot fails)"
        ))
    }
}

pub fn install(path: &Path, reboot: bool) -> anyhow::Result<ExitCode> {
    install_slot(path)?;
    if reboot {
        host::sh("reboot", &[]);
    }
    Ok(ExitCode::SUCCESS)
}

/// Verify and install into the inactive slot, arm one trial boot; returns the version.
fn install_slot(path: &Path) -> anyhow::Result<String> {
    let key =
        std::fs::read_to_string(PUBLIC_KEY).with_context(|| format!("reading {PUBLIC_KEY}"))?;
    let key = bundle::parse_public_key(&key)?;
    let state: slots::SlotState = std::fs::read(SLOTS_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let target = slots::target_slot(&state);
    // Check the signature before touching the ESP at all.
    {
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        bundle::read_header(&mut f, &key).with_context(|| format!("{} refused", path.display()))?;
    }
    let esp =
        host::partition_by_name("esp", Duration::from_secs(5)).context("no ESP partition found")?;
    anyhow::ensure!(
        host::mount(&esp, host::ESP, "vfat", "rw"),
        "cannot mount the ESP"
    );
    let dir = Path::new(host::ESP).join(target.name());
    std::fs::create_dir_all(&dir)?;
    for f in bundle::SLOT_FILES {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let mut f = std::fs::File::open(path)?;
    let header = bundle::verify_and_extract(&mut f, &key, &dir)
        .with_context(|| format!("{} refused", path.display()))?;
    host::sh("sync", &[]);
    let (armed, _) = slots::begin_trial(&state)?;
    save_slots(&armed)?;
    console(&format!(
        "godwit: update {} installed in slot {}; the next boot tries it once\n",
        header.version,
        target.name()
    ));
    Ok(header.version)
}
