//! The GUID partition table, as far as the appliance needs it: read and check a disk's GPT
//! (UEFI 2.10 §5.3: header, partition entry array, CRC32s), and plan the change that makes the
//! data partition fill a disk that is larger than the image (the user enlarged the virtual disk
//! before power-on, or the image was built with room to grow): the backup header and entries
//! move to the disk's last sectors, the last usable LBA follows, and the partition named
//! `data` — which must be the last one on the disk — ends at the last whole MiB.
//!
//! Pure: sectors in, sectors out. `godwit system run` does the I/O (`system/grow.rs`): it writes
//! the backup copy first and the primary last, so a power cut in between leaves either the old
//! primary (whose backup is still where it said) or the new backup, which a reader falls back to.

use crate::{Error, Result};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
/// Entries and headers read are bounded: at most this many bytes of partition entries.
pub const MAX_ENTRIES_BYTES: u64 = 1 << 20;

/// A GPT header (the fields the appliance uses; the rest of the sector is kept as read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: [u8; 16],
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc32: u32,
}

/// One used partition entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 0-based slot in the entry array (partition number - 1).
    pub index: usize,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// A checked GPT: the primary header and the entry array it describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    pub sector_size: u64,
    pub header: Header,
    pub entries: Vec<u8>,
}

/// What to write to make a partition fill the disk: each buffer goes to its LBA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Growth {
    pub partition: Partition,
    /// The partition's new last LBA.
    pub new_last_lba: u64,
    /// Written first: the backup entries then the backup header at the end of the disk.
    pub backup_entries_lba: u64,
    pub backup_header_lba: u64,
    pub backup_header: Vec<u8>,
    /// Written last: the primary entries (at `primary_entries_lba`) and header (LBA 1).
    pub primary_entries_lba: u64,
    pub primary_header: Vec<u8>,
    /// The entry array (the same bytes go to both copies).
    pub entries: Vec<u8>,
}

/// CRC-32 (IEEE 802.3, reflected, as UEFI specifies and zlib computes).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn bad(msg: impl Into<String>) -> Error {
    Error::invalid("GPT", msg)
}

impl Header {
    /// Parse and check the header in `sector` (its CRC, revision, size and field ranges).
    pub fn parse(sector: &[u8]) -> Result<Header> {
        if sector.len() < HEADER_SIZE as usize {
            return Err(bad(format!("header sector of {} bytes", sector.len())));
        }
        if &sector[..8] != SIGNATURE {
            return Err(bad("no \"EFI PART\" signature at LBA 1"));
        }
        let size = u32_at(sector, 12);
        if size < HEADER_SIZE || size as usize > sector.len() {
            return Err(bad(format!("header size {size}")));
        }
        let mut copy = sector[..size as usize].to_vec();
        copy[16..20].fill(0);
        let want = u32_at(sector, 16);
        if crc32(&copy) != want {
            return Err(bad("header CRC32 mismatch"));
        }
        let h = Header {
            my_lba: u64_at(sector, 24),
            alternate_lba: u64_at(sector, 32),
            first_usable_lba: u64_at(sector, 40),
            last_usable_lba: u64_at(sector, 48),
            disk_guid: sector[56..72].try_into().map_err(|_| bad("short header"))?,
            entries_lba: u64_at(sector, 72),
            num_entries: u32_at(sector, 80),
            entry_size: u32_at(sector, 84),
            entries_crc32: u32_at(sector, 88),
        };
        if u32_at(sector, 8) != REVISION {
            return Err(bad(format!("revision {:#x}", u32_at(sector, 8))));
        }
        if h.entry_size < 128 || !h.entry_size.is_multiple_of(8) {
            return Err(bad(format!("partition entry size {}", h.entry_size)));
        }
        if h.entries_bytes() > MAX_ENTRIES_BYTES {
            return Err(bad(format!(
                "{} entries of {} bytes",
                h.num_entries, h.entry_size
            )));
        }
        if h.first_usable_lba > h.last_usable_lba {
            return Err(bad("first usable LBA after the last"));
        }
        Ok(h)
    }

    pub fn entries_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// Sectors the entry array takes.
    pub fn entries_sectors(&self, sector_size: u64) -> u64 {
        self.entries_bytes().div_ceil(sector_size)
    }

    /// The header as one sector (CRC computed).
    pub fn encode(&self, sector_size: u64) -> Vec<u8> {
        let mut s = vec![0u8; usize::try_from(sector_size).unwrap_or(512)];
        s[..8].copy_from_slice(SIGNATURE);
        s[8..12].copy_from_slice(&REVISION.to_le_bytes());
        s[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        s[24..32].copy_from_slice(&self.my_lba.to_le_bytes());
        s[32..40].copy_from_slice(&self.alternate_lba.to_le_bytes());
        s[40..48].copy_from_slice(&self.first_usable_lba.to_le_bytes());
        s[48..56].copy_from_slice(&self.last_usable_lba.to_le_bytes());
        s[56..72].copy_from_slice(&self.disk_guid);
        s[72..80].copy_from_slice(&self.entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&self.num_entries.to_le_bytes());
        s[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        s[88..92].copy_from_slice(&self.entries_crc32.to_le_bytes());
        let crc = crc32(&s[..HEADER_SIZE as usize]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
        s
    }
}

impl Gpt {
    /// Check `header_sector` (LBA 1) and the entry array read from its `entries_lba`.
    pub fn parse(header_sector: &[u8], entries: &[u8], sector_size: u64) -> Result<Gpt> {
        if !matches!(sector_size, 512 | 4096) {
            return Err(bad(format!("sector size {sector_size}")));
        }
        let header = Header::parse(header_sector)?;
        if header.my_lba != 1 {
            return Err(bad(format!(
                "primary header says it is at LBA {}",
                header.my_lba
            )));
        }
        let n = usize::try_from(header.entries_bytes()).map_err(|_| bad("entry array size"))?;
        if entries.len() < n {
            return Err(bad(format!(
                "entry array of {} bytes, header says {n}",
                entries.len()
            )));
        }
        let entries = entries[..n].to_vec();
        if crc32(&entries) != header.entries_crc32 {
            return Err(bad("partition entry array CRC32 mismatch"));
        }
        let g = Gpt {
            sector_size,
            header,
            entries,
        };
        let parts = g.partitions();
        for p in &parts {
            if p.first_lba > p.last_lba
                || p.first_lba < g.header.first_usable_lba
                || p.last_lba > g.header.last_usable_lba
            {
                return Err(bad(format!(
                    "partition {} ({:?}) spans LBA {}..={} outside {}..={}",
                    p.index + 1,
                    p.name,
                    p.first_lba,
                    p.last_lba,
                    g.header.first_usable_lba,
                    g.header.last_usable_lba
                )));
            }
        }
        Ok(g)
    }

    /// The used entries (type GUID not zero), in slot order.
    pub fn partitions(&self) -> Vec<Partition> {
        let size = self.header.entry_size as usize;
        self.entries
            .chunks_exact(size)
            .enumerate()
            .filter(|(_, e)| e[..16].iter().any(|&b| b != 0))
            .map(|(index, e)| Partition {
                index,
                first_lba: u64_at(e, 32),
                last_lba: u64_at(e, 40),
                name: utf16_name(&e[56..128]),
            })
            .collect()
    }

    /// Plan making the partition named `name` fill a disk of `disk_sectors` sectors. `None`
    /// when there is nothing to do (the backup header is at the last sector and the partition
    /// already ends at the last whole MiB before the backup entries).
    pub fn grow(&self, name: &str, disk_sectors: u64) -> Result<Option<Growth>> {
        let ss = self.sector_size;
        let h = &self.header;
        let parts = self.partitions();
        let part = parts
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| bad(format!("no partition named {name:?}")))?
            .clone();
        if let Some(after) = parts.iter().find(|p| p.first_lba > part.last_lba) {
            return Err(bad(format!(
                "partition {name:?} is not the last one ({:?} follows it)",
                after.name
            )));
        }
        let es = h.entries_sectors(ss);
        // Primary: LBA 0 (protective MBR), 1 (header), entries; backup: entries, header.
        let min = h.entries_lba + es + es + 1;
        if disk_sectors < min || disk_sectors - 1 < h.last_usable_lba + es + 1 {
            return Err(bad(format!(
                "the disk ({disk_sectors} sectors) is smaller than its partition table says ({} usable)",
                h.last_usable_lba + 1
            )));
        }
        let backup_header_lba = disk_sectors - 1;
        let backup_entries_lba = backup_header_lba - es;
        let last_usable = backup_entries_lba - 1;
        let align = (1u64 << 20) / ss;
        let new_last = ((last_usable + 1) / align * align).saturating_sub(1);
        let new_last = new_last.max(part.last_lba);
        if h.alternate_lba == backup_header_lba
            && h.last_usable_lba == last_usable
            && new_last == part.last_lba
        {
            return Ok(None);
        }
        let mut entries = self.entries.clone();
        let at = part.index * h.entry_size as usize + 40;
        entries[at..at + 8].copy_from_slice(&new_last.to_le_bytes());
        let crc = crc32(&entries);
        let primary = Header {
            my_lba: 1,
            alternate_lba: backup_header_lba,
            last_usable_lba: last_usable,
            entries_crc32: crc,
            ..h.clone()
        };
        let backup = Header {
            my_lba: backup_header_lba,
            alternate_lba: 1,
            entries_lba: backup_entries_lba,
            ..primary.clone()
        };
        Ok(Some(Growth {
            partition: part,
            new_last_lba: new_last,
            backup_entries_lba,
            backup_header_lba,
            backup_header: backup.encode(ss),
            primary_entries_lba: h.entries_lba,
            primary_header: primary.encode(ss),
            entries,
        }))
    }
}

/// The protective MBR (LBA 0) updated for a disk of `disk_sectors` sectors: its 0xEE entry
/// covers LBA 1 to the end of the disk (at most 2^32 - 1 sectors). Only the entry's size field
/// changes (the boot code before it is kept). `None` when there is no protective entry or it
/// is already right.
pub fn protective_mbr(mbr: &[u8], disk_sectors: u64) -> Option<Vec<u8>> {
    if mbr.len() < 512 || mbr[510..512] != [0x55, 0xaa] {
        return None;
    }
    let slot = (0..4).map(|i| 446 + 16 * i).find(|&o| mbr[o + 4] == 0xee)?;
    let want = u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    if u32_at(mbr, slot + 12) == want {
        return None;
    }
    let mut out = mbr[..512].to_vec();
    out[slot + 12..slot + 16].copy_from_slice(&want.to_le_bytes());
    Some(out)
}

fn utf16_name(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A GPT as sgdisk lays it out for the image: 128 entries, ESP then data.
    fn sample(disk_sectors: u64, data_last: u64) -> (Vec<u8>, Vec<u8>) {
        let mut entries = vec![0u8; 128 * 128];
        let mut put = |i: usize, first: u64, last: u64, name: &str| {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&[0xaa; 16]);
            e[16..32].copy_from_slice(&[u8::try_from(i).unwrap() + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (k, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes());
            }
        };
        put(0, 2048, 198_655, "esp");
        put(1, 198_656, data_last, "data");
        let h = Header {
            my_lba: 1,
            alternate_lba: disk_sectors - 1,
            first_usable_lba: 34,
            last_usable_lba: disk_sectors - 34,
            disk_guid: [7; 16],
            entries_lba: 2,
            num_entries: 128,
            entry_size: 128,
            entries_crc32: crc32(&entries),
        };
        (h.encode(512), entries)
    }

    #[test]
    fn crc32_vector() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let (h, e) = sample(278_528, 276_479);
        let g = Gpt::parse(&h, &e, 512).unwrap();
        assert_eq!(g.header.encode(512), h);
        let names: Vec<_> = g.partitions().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["esp", "data"]);
        let mut bad_h = h.clone();
        bad_h[50] ^= 1;
        assert!(
            Gpt::parse(&bad_h, &e, 512)
                .unwrap_err()
                .to_string()
                .contains("header CRC32")
        );
        let mut bad_e = e.clone();
        bad_e[200] ^= 1;
        assert!(
            Gpt::parse(&h, &bad_e, 512)
                .unwrap_err()
                .to_string()
                .contains("entry array CRC32")
        );
        assert!(Gpt::parse(&h, &e[..100], 512).is_err());
        assert!(Gpt::parse(&h[..50], &e, 512).is_err());
    }

    #[test]
    fn grows_the_last_partition_to_the_last_whole_mib() {
        // 136 MiB image, data ends at 135 MiB; the disk is now 16 GiB.
        let (h, e) = sample(278_528, 276_479);
        let g = Gpt::parse(&h, &e, 512).unwrap();
        let disk = 16u64 << 21;
        let gr = g.grow("data", disk).unwrap().unwrap();
        assert_eq!(gr.backup_header_lba, disk - 1);
        assert_eq!(gr.backup_entries_lba, disk - 33);
        assert_eq!(
            gr.new_last_lba,
            disk - 2048 - 1,
            "ends before the last MiB holding the backup"
        );
        let p = Gpt::parse(&gr.primary_header, &gr.entries, 512).unwrap();
        assert_eq!(p.header.alternate_lba, disk - 1);
        assert_eq!(p.header.last_usable_lba, disk - 34);
        assert_eq!(p.partitions()[1].last_lba, gr.new_last_lba);
        assert_eq!(p.partitions()[0], g.partitions()[0], "the ESP is untouched");
        let b = Header::parse(&gr.backup_header).unwrap();
        assert_eq!(
            (b.my_lba, b.alternate_lba, b.entries_lba),
            (disk - 1, 1, disk - 33)
        );
        // Applied, nothing more to do.
        assert_eq!(p.grow("data", disk).unwrap(), None);
        // The disk cannot shrink under the table, and only the last partition grows.
        assert!(g.grow("data", 1000).is_err());
        assert!(
            g.grow("esp", disk)
                .unwrap_err()
                .to_string()
                .contains("not the last")
        );
        assert!(g.grow("nope", disk).is_err());
    }

    #[test]
    fn protective_mbr_covers_the_disk() {
        let mut mbr = vec![0u8; 512];
        mbr[..440].fill(0x90);
        mbr[446 + 4] = 0xee;
        mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&278_527u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let m = protective_mbr(&mbr, 16 << 21).unwrap();
        assert_eq!(u32_at(&m, 446 + 12), (16 << 21) - 1);
        assert_eq!(m[..446], mbr[..446], "boot code kept");
        assert_eq!(protective_mbr(&m, 16 << 21), None);
        assert_eq!(
            u32_at(&protective_mbr(&mbr, 1 << 40).unwrap(), 458),
            u32::MAX
        );
        assert_eq!(protective_mbr(&[0u8; 512], 100), None);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_refuse(h in proptest::collection::vec(any::<u8>(), 0..600),
                                     e in proptest::collection::vec(any::<u8>(), 0..2000),
                                     disk in any::<u64>()) {
            if let Ok(g) = Gpt::parse(&h, &e, 512) {
                let _ = g.grow("data", disk);
            }
            let _ = protective_mbr(&h, disk);
        }

        #[test]
        fn growth_is_consistent(extra_mib in 0u64..100_000, data_mib in 1u64..64) {
            let data_last = 198_656 + data_mib * 2048 - 1;
            let disk0 = data_last + 1 + 2048;
            let (h, e) = sample(disk0, data_last);
            let g = Gpt::parse(&h, &e, 512).unwrap();
            let disk = disk0 + extra_mib * 2048;
            if let Some(gr) = g.grow("data", disk).unwrap() {
                let p = Gpt::parse(&gr.primary_header, &gr.entries, 512).unwrap();
                prop_assert!(gr.new_last_lba >= data_last);
                prop_assert!(gr.new_last_lba < gr.backup_entries_lba);
                prop_assert_eq!((gr.new_last_lba + 1) % 2048, 0);
                prop_assert_eq!(p.grow("data", disk).unwrap(), None);
            }
        }
    }
}
