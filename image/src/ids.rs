//! Reproducible identifiers. Every identifier in the image (disk and partition GUIDs, FAT
//! serial, ext4 UUID, VMDK content ids, VHDX GUIDs) is derived from the build identity (version
//! and SOURCE_DATE_EPOCH) and a purpose; the disk writers' random ones are replaced afterwards.

use crate::{Error, Result};
use godwit_disk::vhdx::header::{Header, METADATA_REGION, RegionTable};
use godwit_disk::vhdx::metadata::{MetadataTable, PAGE83_DATA, TABLE_SIZE};
use ring::digest::{SHA256, digest};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// 16 bytes derived from the build identity and a purpose.
pub fn derived(seed: &str, purpose: &str) -> [u8; 16] {
    let d = digest(
        &SHA256,
        format!("godwit-image\0{seed}\0{purpose}").as_bytes(),
    );
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b
}

/// A version-4-shaped UUID derived like [`derived`].
pub fn derived_uuid(seed: &str, purpose: &str) -> uuid::Uuid {
    uuid::Builder::from_random_bytes(derived(seed, purpose)).into_uuid()
}

fn read_at(f: &mut std::fs::File, path: &Path, off: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; len];
    f.seek(SeekFrom::Start(off))
        .map_err(|e| Error::io(path, e))?;
    f.read_exact(&mut b).map_err(|e| Error::io(path, e))?;
    Ok(b)
}

fn write_at(f: &mut std::fs::File, path: &Path, off: u64, b: &[u8]) -> Result<()> {
    f.seek(SeekFrom::Start(off))
        .map_err(|e| Error::io(path, e))?;
    f.write_all(b).map_err(|e| Error::io(path, e))
}

fn open_rw(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Replace the VHDX writer's random GUIDs (file/data write GUIDs in both headers, the page 83
/// disk id) with derived ones, recomputing the header checksums.
pub fn fix_vhdx_guids(path: &Path, seed: &str) -> Result<()> {
    let mut f = open_rw(path)?;
    let bad = |what: String| Error::invalid(format!("{} (VHDX)", path.display()), what);
    for off in [64 * 1024u64, 128 * 1024] {
        let b = read_at(&mut f, path, off, 4096)?;
        let mut h = Header::parse(&b).map_err(|e| bad(format!("header at {off}: {e:?}")))?;
        h.file_write_guid = derived(seed, "vhdx-file-write");
        h.data_write_guid = derived(seed, "vhdx-data-write");
        write_at(&mut f, path, off, &h.encode())?;
    }
    let rt = read_at(&mut f, path, 192 * 1024, 64 * 1024)?;
    let regions = RegionTable::parse(&rt).map_err(|e| bad(format!("region table: {e:?}")))?;
    let meta = regions
        .entries
        .iter()
        .find(|r| r.guid == METADATA_REGION)
        .ok_or_else(|| bad("no metadata region".into()))?;
    let table = read_at(&mut f, path, meta.file_offset, TABLE_SIZE)?;
    let table = MetadataTable::parse(&table).map_err(|e| bad(format!("metadata table: {e:?}")))?;
    let p83 = table
        .entries
        .iter()
        .find(|e| e.item_id == PAGE83_DATA)
        .ok_or_else(|| bad("no page 83 item".into()))?;
    write_at(
        &mut f,
        path,
        meta.file_offset + u64::from(p83.offset),
        &derived(seed, "vhdx-page83"),
    )?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Where a sparse VMDK's embedded descriptor lies: (byte offset, byte length), from the
/// `KDMV` header (descriptorOffset and descriptorSize, in sectors, at bytes 28 and 36).
pub fn vmdk_descriptor_range(header: &[u8]) -> Result<(u64, usize)> {
    let bad = |m: &str| Error::invalid("VMDK header", m.to_string());
    if header.len() < 44 || &header[..4] != b"KDMV" {
        return Err(bad("no KDMV magic"));
    }
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let (off, len) = (u64_at(28), u64_at(36));
    if off == 0 || len == 0 || len > 2048 {
        return Err(bad(
            "no embedded descriptor (offset or size 0, or over 1 MiB)",
        ));
    }
    let len = usize::try_from(len * 512).map_err(|_| bad("descriptor size"))?;
    Ok((off * 512, len))
}

/// Set `ddb.longContentID` in a descriptor to `id` (32 hex digits), in place: the value has
/// the same length, so nothing else in the file moves.
pub fn set_long_content_id(descriptor: &mut [u8], id: &str) -> Result<()> {
    const KEY: &[u8] = b"ddb.longContentID = \"";
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::invalid("longContentID", "must be 32 hex digits"));
    }
    let at = descriptor
        .windows(KEY.len())
        .position(|w| w == KEY)
        .ok_or_else(|| Error::invalid("VMDK descriptor", "no ddb.longContentID line"))?
        + KEY.len();
    let well_formed = descriptor
        .get(at..at + 33)
        .is_some_and(|v| v[32] == b'"' && v[..32].iter().all(u8::is_ascii_hexdigit));
    if !well_formed {
        return Err(Error::invalid(
            "VMDK descriptor",
            "ddb.longContentID is not 32 hex digits",
        ));
    }
    descriptor[at..at + 32].copy_from_slice(id.as_bytes());
    Ok(())
}

/// Replace the streamOptimized writer's random `ddb.longContentID` with a derived one.
pub fn fix_vmdk_long_content_id(path: &Path, seed: &str) -> Result<()> {
    let mut f = open_rw(path)?;
    let header = read_at(&mut f, path, 0, 512)?;
    let (off, len) = vmdk_descriptor_range(&header)
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    let mut desc = read_at(&mut f, path, off, len)?;
    set_long_content_id(
        &mut desc,
        &hex::encode(derived(seed, "vmdk-long-content-id")),
    )
    .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    write_at(&mut f, path, off, &desc)?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_and_distinct() {
        assert_eq!(derived("1\u{0}5", "esp"), derived("1\u{0}5", "esp"));
        assert_ne!(derived("1\u{0}5", "esp"), derived("1\u{0}5", "data"));
        assert_ne!(derived("1\u{0}5", "esp"), derived("2\u{0}5", "esp"));
        assert_eq!(derived_uuid("x", "disk").get_version_num(), 4);
    }

    #[test]
    fn long_content_id_is_replaced_in_place() {
        let text = "# Disk DescriptorFile\nCID=1234abcd\n\
                    ddb.longContentID = \"0123456789abcdef0123456789abcdef\"\nddb.x = \"1\"\n";
        let mut d = text.as_bytes().to_vec();
        d.resize(1024, 0);
        let id = hex::encode(derived("s", "p"));
        set_long_content_id(&mut d, &id).unwrap();
        assert_eq!(d.len(), 1024);
        let s = String::from_utf8_lossy(&d);
        assert!(
            s.contains(&format!("ddb.longContentID = \"{id}\"\nddb.x")),
            "{s}"
        );
        assert!(set_long_content_id(&mut d, "xyz").is_err());
        assert!(set_long_content_id(&mut b"CID=1\n".to_vec(), &id).is_err());
        let mut short = b"ddb.longContentID = \"0123\"".to_vec();
        assert!(set_long_content_id(&mut short, &id).is_err());
    }

    #[test]
    fn descriptor_range_from_the_header() {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"KDMV");
        h[28..36].copy_from_slice(&1u64.to_le_bytes());
        h[36..44].copy_from_slice(&20u64.to_le_bytes());
        assert_eq!(vmdk_descriptor_range(&h).unwrap(), (512, 20 * 512));
        h[36..44].copy_from_slice(&0u64.to_le_bytes());
        assert!(vmdk_descriptor_range(&h).is_err());
        assert!(vmdk_descriptor_range(b"COWD").is_err());
    }
}
