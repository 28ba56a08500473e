//! The rootless build pipeline behind `godwit image build`: the shell stage (Debian packages,
//! initramfs, FAT ESP with shim/GRUB/SYSLINUX, ext4 data partition, GPT; no loop device, no
//! mount) writes a raw disk; this module then writes the streamOptimized VMDK and the dynamic
//! VHDX with godwit-disk's writers, the OVF descriptor, the manifest, the OVA and SHA256SUMS.
//! Every identifier (disk and partition GUIDs, FAT serial, ext4 UUID, VMDK CID, VHDX GUIDs)
//! is derived from the version and SOURCE_DATE_EPOCH, so two builds give the same bytes.

use crate::ids::{derived, derived_uuid, fix_vhdx_guids, fix_vmdk_long_content_id};
use crate::ovf::{Firmware, Spec};
use crate::{Error, Result, bundle, manifest, ova, ovf, slots};
use ring::digest::{Context, SHA256, digest};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const BUILD_DISK: &str = include_str!("../scripts/build-disk.sh");
const INIT: &str = include_str!("../scripts/init");
const INITTAB: &str = include_str!("../scripts/inittab");
const UDHCPC: &str = include_str!("../scripts/udhcpc.sh");

pub const OVA_NAME: &str = "godwit.ova";
pub const VHDX_NAME: &str = "godwit.vhdx";
pub const OVF_NAME: &str = "godwit.ovf";
pub const MF_NAME: &str = "godwit.mf";
pub const VMDK_NAME: &str = "godwit-disk1.vmdk";
pub const SUMS_NAME: &str = "SHA256SUMS";
/// VHDX payload block size: small blocks keep the sparse ESP small in the file.
pub const VHDX_BLOCK_SIZE: u64 = 1 << 20;
/// The disk's default virtual size: thin (only the ~40 MB written are in the OVA and VHDX); the
/// data partition grows to fill it at the first boot (and to fill a disk enlarged later).
pub const DEFAULT_DISK_BYTES: u64 = 16 << 30;
/// The disk's smallest size: the ESP (97 MiB with the gap) and the first data partition.
pub const MIN_DISK_BYTES: u64 = 136 << 20;

/// What to build.
#[derive(Clone, Debug)]
pub struct Options {
    pub out: PathBuf,
    /// The godwit binary to ship (static release build for the product; a dynamic dev build
    /// works too: its shared libraries are copied along).
    pub godwit_bin: PathBuf,
    pub version: String,
    /// Downloaded .deb files are kept here between builds.
    pub cache: PathBuf,
    /// Ed25519 PKCS#8 key signing update bundles; generated when missing. Its public half is
    /// built into the image (/etc/godwit/update.pub).
    pub signing_key: PathBuf,
    pub source_date_epoch: u64,
    pub firmware: Firmware,
    /// Virtual size of the disk (a multiple of 1 MiB, at least [`MIN_DISK_BYTES`]).
    pub disk_bytes: u64,
}

/// What was built.
#[derive(Clone, Debug)]
pub struct Output {
    pub ova: PathBuf,
    pub vhdx: PathBuf,
    pub sums: PathBuf,
    /// The raw disk and the slot files (kernel, initramfs), kept in the work directory.
    pub raw: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub vmdk_bytes: u64,
}

/// Load the signing key, generating one (mode 0600) when the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(k) => {
            bundle::public_key(&k)?;
            Ok(k)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = bundle::generate_key()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            f.write_all(&k).map_err(|e| Error::io(path, e))?;
            Ok(k)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).map_err(|e| Error::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

/// Hex SHA-256 and size of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if r == 0 {
            return Ok((hex::encode(ctx.finish().as_ref()), n));
        }
        ctx.update(&buf[..r]);
        n += r as u64;
    }
}

/// Run the whole pipeline.
pub fn build(o: &Options) -> Result<Output> {
    if o.disk_bytes < MIN_DISK_BYTES || !o.disk_bytes.is_multiple_of(1 << 20) {
        return Err(Error::invalid(
            "disk size",
            format!(
                "{} bytes: a whole number of MiB, at least {} MiB",
                o.disk_bytes,
                MIN_DISK_BYTES >> 20
            ),
        ));
    }
    let seed = format!("{}\0{}", o.version, o.source_date_epoch);
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let work = o.out.join(".build");
    let scripts = work.join("scripts");
    std::fs::create_dir_all(&scripts).map_err(|e| Error::io(&scripts, e))?;
    let debs = o.cache.join("debs");
    let key = load_or_create_key(&o.signing_key)?;
    let pubkey = hex::encode(bundle::public_key(&key)?);

    write_file(&scripts.join("build-disk.sh"), BUILD_DISK.as_bytes(), 0o755)?;
    write_file(&scripts.join("init"), INIT.as_bytes(), 0o755)?;
    write_file(&scripts.join("inittab"), INITTAB.as_bytes(), 0o644)?;
    write_file(&scripts.join("udhcpc.sh"), UDHCPC.as_bytes(), 0o755)?;
    let (slot_cfg, syslinux_cfg) = slots::boot_files(&slots::SlotState::default());
    write_file(
        &scripts.join("grub.cfg"),
        slots::grub_cfg().as_bytes(),
        0o644,
    )?;
    write_file(&scripts.join("slot.cfg"), slot_cfg.as_bytes(), 0o644)?;
    let (grubenv, _) = slots::boot_once_files(&slots::SlotState::default())?;
    write_file(&scripts.join("grubenv"), &grubenv, 0o644)?;
    write_file(
        &scripts.join("syslinux.cfg"),
        syslinux_cfg.as_bytes(),
        0o644,
    )?;
    write_file(
        &scripts.join("update.pub"),
        format!("{pubkey}\n").as_bytes(),
        0o644,
    )?;

    let raw = work.join("disk.raw");
    let fat_serial = hex::encode(&derived(&seed, "fat-serial")[..4]);
    let status = Command::new("bash")
        .arg(scripts.join("build-disk.sh"))
        .env("WORK", &work)
        .env("DEBS", &debs)
        .env("GODWIT_BIN", &o.godwit_bin)
        .env("VERSION", &o.version)
        .env("SOURCE_DATE_EPOCH", o.source_date_epoch.to_string())
        .env("OUT_RAW", &raw)
        .env("DISK_MIB", (o.disk_bytes >> 20).to_string())
        .env("SCRIPTS", &scripts)
        .env("DISK_GUID", derived_uuid(&seed, "disk").to_string())
        .env("ESP_GUID", derived_uuid(&seed, "esp").to_string())
        .env("DATA_GUID", derived_uuid(&seed, "data").to_string())
        .env("FAT_SERIAL", fat_serial)
        .env("EXT4_UUID", derived_uuid(&seed, "ext4").to_string())
        .status()
        .map_err(|e| Error::Tool {
            tool: "bash build-disk.sh".into(),
            msg: e.to_string(),
        })?;
    if !status.success() {
        return Err(Error::Tool {
            tool: "build-disk.sh".into(),
            msg: format!("exited with {status}"),
        });
    }

    let raw_str = raw
        .to_str()
        .ok_or_else(|| Error::invalid("work directory", "is not UTF-8"))?;
    let disk = godwit_disk::Disk::open(raw_str)?;
    let capacity = godwit_disk::BlockSource::virtual_size(&disk);
    let populated: u64 = godwit_disk::BlockSource::map(&disk, 0, capacity)?
        .iter()
        .filter(|r| r.state == godwit_disk::layer::RunState::Data)
        .map(|r| r.len)
        .sum();

    // streamOptimized VMDK (inside the OVA).
    let vmdk = work.join(VMDK_NAME);
    let mut vopts = godwit_disk::write::vmdk_stream::Options {
        file_name: VMDK_NAME.into(),
        level: 9,
        ..Default::default()
    };
    let cid = u32::from_le_bytes(
        derived(&seed, "vmdk-cid")[..4]
            .try_into()
            .unwrap_or([1, 0, 0, 0]),
    ) & 0x7fff_ffff;
    vopts.cid = Some(cid.max(1));
    {
        let f = std::fs::File::create(&vmdk).map_err(|e| Error::io(&vmdk, e))?;
        let mut w = std::io::BufWriter::new(f);
        godwit_disk::write::vmdk_stream::write_with(&disk, &vopts, &mut w)?;
        w.flush().map_err(|e| Error::io(&vmdk, e))?;
    }
    fix_vmdk_long_content_id(&vmdk, &seed)?;
    // Dynamic VHDX, 1 MiB blocks (all-zero blocks left unallocated).
    let vhdx = o.out.join(VHDX_NAME);
    {
        let f = std::fs::File::create(&vhdx).map_err(|e| Error::io(&vhdx, e))?;
        godwit_disk::write::vhdx::write_file_with_block_size(
            &disk,
            &f,
            VHDX_NAME,
            Some(VHDX_BLOCK_SIZE),
        )?;
        f.sync_all().map_err(|e| Error::io(&vhdx, e))?;
    }
    fix_vhdx_guids(&vhdx, &seed)?;

    // Descriptor, manifest, OVA.
    let (vmdk_sha, vmdk_bytes) = sha256_file(&vmdk)?;
    let mut spec = Spec::new(&o.version, VMDK_NAME, vmdk_bytes, capacity);
    spec.firmware = o.firmware;
    spec.populated = Some(populated);
    let desc = ovf::descriptor(&spec);
    let desc_sha = hex::encode(digest(&SHA256, desc.as_bytes()).as_ref());
    let mf = manifest::encode(&[
        manifest::Entry {
            name: OVF_NAME.into(),
            sha256: desc_sha,
        },
        manifest::Entry {
            name: VMDK_NAME.into(),
            sha256: vmdk_sha,
        },
    ]);
    let ova_path = o.out.join(OVA_NAME);
    {
        let f = std::fs::File::create(&ova_path).map_err(|e| Error::io(&ova_path, e))?;
        let mut w = ova::OvaWriter::new(std::io::BufWriter::new(f), o.source_date_epoch);
        w.add(OVF_NAME, desc.len() as u64, &mut desc.as_bytes())?;
        w.add(MF_NAME, mf.len() as u64, &mut mf.as_bytes())?;
        let mut vf = std::fs::File::open(&vmdk).map_err(|e| Error::io(&vmdk, e))?;
        w.add(VMDK_NAME, vmdk_bytes, &mut vf)?;
        w.finish()?;
    }
    let sums = o.out.join(SUMS_NAME);
    let mut text = String::new();
    for p in [&ova_path, &vhdx] {
        let (h, _) = sha256_file(p)?;
        text.push_str(&format!(
            "{h}  {}\n",
            p.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        ));
    }
    write_file(&sums, text.as_bytes(), 0o644)?;
    Ok(Output {
        ova: ova_path,
        vhdx,
        sums,
        raw,
        vmlinuz: work.join("vmlinuz"),
        initrd: work.join("initrd.img"),
        vmdk_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("keys/update.pk8");
        let a = load_or_create_key(&p).unwrap();
        let b = load_or_create_key(&p).unwrap();
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&p, b"junk").unwrap();
        assert!(load_or_create_key(&p).is_err());
    }
}
