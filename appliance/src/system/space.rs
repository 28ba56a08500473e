//! The data partition's size: grown at boot to fill the disk (the image ships a small ext4
//! partition on a larger thin disk, and the user may enlarge the disk before power-on), and
//! its free space, shown on the console and the settings page.
//!
//! Growing is three steps, each safe to repeat at every boot: the GPT (backup copy moved to
//! the disk's end, the `data` partition extended to the last whole MiB; see
//! `godwit_image::gpt`), the kernel told to read the table again (`blockdev --rereadpt`, before
//! anything on the disk is mounted), and the mounted ext4 grown online (`resize2fs`).

use godwit_image::gpt::{self, Gpt, Header};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use godwit_service::space::{human, space};

/// What [`grow_table`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grown {
    pub old_bytes: u64,
    pub new_bytes: u64,
}

/// Make the GPT partition named `name` fill the disk (block device or image file) `disk`
/// whose logical sectors are `sector` bytes. The backup header and entries are written and
/// synced before the primary ones. `None` when the table already fills the disk.
pub fn grow_table(disk: &Path, sector: u64, name: &str) -> anyhow::Result<Option<Grown>> {
    use anyhow::Context;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    let sectors = size / sector;
    let ss = usize::try_from(sector)?;
    let mut hdr = vec![0u8; ss];
    f.read_exact_at(&mut hdr, sector)
        .with_context(|| format!("reading the GPT header of {}", disk.display()))?;
    let h = Header::parse(&hdr)?;
    let mut entries = vec![0u8; usize::try_from(h.entries_sectors(sector) * sector)?];
    f.read_exact_at(&mut entries, h.entries_lba * sector)
        .with_context(|| format!("reading the GPT entries of {}", disk.display()))?;
    let g = Gpt::parse(&hdr, &entries, sector)?;
    let Some(plan) = g.grow(name, sectors)? else {
        return Ok(None);
    };
    let write = |f: &File, data: &[u8], lba: u64, what: &str| -> anyhow::Result<()> {
        f.write_all_at(data, lba * sector)
            .with_context(|| format!("writing the {what} at LBA {lba} of {}", disk.display()))
    };
    write(
        &f,
        &plan.entries,
        plan.backup_entries_lba,
        "backup GPT entries",
    )?;
    write(
        &f,
        &plan.backup_header,
        plan.backup_header_lba,
        "backup GPT header",
    )?;
    f.sync_all()?;
    write(&f, &plan.entries, plan.primary_entries_lba, "GPT entries")?;
    write(&f, &plan.primary_header, 1, "GPT header")?;
    let mut mbr = vec![0u8; ss];
    f.read_exact_at(&mut mbr, 0)?;
    if let Some(m) = gpt::protective_mbr(&mbr, sectors) {
        write(&f, &m, 0, "protective MBR")?;
    }
    f.sync_all()?;
    let part = &plan.partition;
    Ok(Some(Grown {
        old_bytes: (part.last_lba + 1 - part.first_lba) * sector,
        new_bytes: (plan.new_last_lba + 1 - part.first_lba) * sector,
    }))
}

/// The whole disk a partition device (`/dev/sda2`) belongs to, and its logical sector size,
/// from sysfs.
pub fn parent_disk(partition: &Path) -> Option<(PathBuf, u64)> {
    let name = partition.file_name()?.to_str()?;
    let link = std::fs::canonicalize(Path::new("/sys/class/block").join(name)).ok()?;
    let disk = link.parent()?.file_name()?.to_str()?.to_string();
    let sector = std::fs::read_to_string(format!("/sys/block/{disk}/queue/logical_block_size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(512);
    Some((Path::new("/dev").join(disk), sector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(38 << 20), "38.0 MiB");
        assert_eq!(human(16 << 30), "16.0 GiB");
        assert_eq!(human(500 << 30), "500 GiB");
    }

    #[test]
    fn statvfs_of_a_directory() {
        let t = tempfile::tempdir().unwrap();
        let s = space(t.path()).unwrap();
        assert!(s.total > 0 && s.available <= s.total);
    }

    /// The image's layout made by sgdisk (as build-disk.sh does), the file enlarged, grown,
    /// then checked by sgdisk itself: a valid table whose last partition ends at the new end.
    #[test]
    fn grows_a_table_sgdisk_made_and_sgdisk_accepts_it() {
        if Command::new("sgdisk").arg("--version").output().is_err() {
            panic!("sgdisk is missing: run `make deps` (tests/deps/image.apt, package gdisk)");
        }
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("disk.raw");
        let f = File::create(&img).unwrap();
        f.set_len(136 << 20).unwrap();
        drop(f);
        let ok = Command::new("sgdisk")
            .args(["-Z", "-n", "1:2048:+96M", "-t", "1:EF00", "-c", "1:esp"])
            .args(["-n", "2:0:+38M", "-t", "2:8300", "-c", "2:data"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
        assert_eq!(
            grow_table(&img, 512, "data").unwrap(),
            None,
            "fills its disk"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let g = grow_table(&img, 512, "data").unwrap().unwrap();
        assert_eq!(g.old_bytes, 38 << 20);
        assert_eq!(g.new_bytes, (1 << 30) - (97 << 20) - (1 << 20));
        assert_eq!(grow_table(&img, 512, "data").unwrap(), None, "done once");
        let v = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
        let v = String::from_utf8_lossy(&v.stdout);
        assert!(v.contains("No problems found"), "{v}");
        let i = Command::new("sgdisk")
            .args(["-i", "2"])
            .arg(&img)
            .output()
            .unwrap();
        let i = String::from_utf8_lossy(&i.stdout);
        let last = (1u64 << 21) - 2048 - 1;
        assert!(i.contains(&format!("Last sector: {last} ")), "{i}");
        assert!(i.contains("Partition name: 'data'"), "{i}");
    }
}
