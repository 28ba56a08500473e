//! The VHDX metadata region: table, known items, parent locator. Pure parsers with encoders;
//! [`Metadata::parse`] and [`ParentLocator::parse`] are fuzz entry points.

use super::header::{ParseError, g16, guid, guid_text, le_u16, le_u32, le_u64, perr};

pub const FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
pub const VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
pub const PAGE83_DATA: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
pub const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
pub const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
pub const PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
pub const VHDX_LOCATOR_TYPE: [u8; 16] = guid(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// Bytes of the metadata table at the start of the region.
pub const TABLE_SIZE: usize = 64 * 1024;
const MAX_ENTRIES: u16 = 2047;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataEntry {
    pub item_id: [u8; 16],
    /// Offset from the start of the metadata region.
    pub offset: u32,
    pub length: u32,
    pub is_user: bool,
    pub is_virtual_disk: bool,
    pub is_required: bool,
}

/// The metadata table (the first 64 KiB of the region).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataTable {
    pub entries: Vec<MetadataEntry>,
}

impl MetadataTable {
    /// Parse the table. Fuzz entry point.
    pub fn parse(b: &[u8]) -> Result<MetadataTable, ParseError> {
        if b.len() < TABLE_SIZE {
            return Err(perr(
                0,
                format!("metadata table is {} bytes, need 65536", b.len()),
            ));
        }
        if &b[0..8] != b"metadata" {
            return Err(perr(0, "no \"metadata\" signature"));
        }
        let count = le_u16(b, 10);
        if count > MAX_ENTRIES {
            return Err(perr(10, format!("{count} metadata entries (at most 2047)")));
        }
        let entries = (0..usize::from(count))
            .map(|i| {
                let at = 32 + 32 * i;
                let flags = le_u32(b, at + 24);
                MetadataEntry {
                    item_id: g16(b, at),
                    offset: le_u32(b, at + 16),
                    length: le_u32(b, at + 20),
                    is_user: flags & 1 != 0,
                    is_virtual_disk: flags & 2 != 0,
                    is_required: flags & 4 != 0,
                }
            })
            .collect();
        Ok(MetadataTable { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; TABLE_SIZE];
        b[0..8].copy_from_slice(b"metadata");
        let n = u16::try_from(self.entries.len()).unwrap_or(0);
        b[10..12].copy_from_slice(&n.to_le_bytes());
        for (i, e) in self
            .entries
            .iter()
            .enumerate()
            .take(usize::from(MAX_ENTRIES))
        {
            let at = 32 + 32 * i;
            b[at..at + 16].copy_from_slice(&e.item_id);
            b[at + 16..at + 20].copy_from_slice(&e.offset.to_le_bytes());
            b[at + 20..at + 24].copy_from_slice(&e.length.to_le_bytes());
            let flags = u32::from(e.is_user)
                | u32::from(e.is_virtual_disk) << 1
                | u32::from(e.is_required) << 2;
            b[at + 24..at + 28].copy_from_slice(&flags.to_le_bytes());
        }
        b
    }
}

/// The known metadata items, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub block_size: u32,
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
    pub virtual_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub page83: Option<[u8; 16]>,
    pub parent_locator: Option<ParentLocator>,
}

impl Metadata {
    /// Decode the items of a whole metadata region (`region` = its bytes, table first).
    /// Refuses unknown required items, missing required items and invalid values. Fuzz entry
    /// point.
    pub fn parse(region: &[u8]) -> Result<Metadata, ParseError> {
        let table = MetadataTable::parse(region)?;
        let item = |id: [u8; 16], min_len: u32| -> Result<Option<(&[u8], u64)>, ParseError> {
            let Some((i, e)) = table
                .entries
                .iter()
                .enumerate()
                .find(|(_, e)| e.item_id == id)
            else {
                return Ok(None);
            };
            let at = 32 + 32 * i as u64 + 16;
            let start = usize::try_from(e.offset).unwrap_or(usize::MAX);
            let end = start.checked_add(usize::try_from(e.length).unwrap_or(usize::MAX));
            if e.length < min_len || start < TABLE_SIZE {
                return Err(perr(
                    at,
                    format!(
                        "metadata item {} has offset {} length {}",
                        guid_text(&id),
                        e.offset,
                        e.length
                    ),
                ));
            }
            match end.and_then(|end| region.get(start..end)) {
                Some(s) => Ok(Some((s, u64::from(e.offset)))),
                None => Err(perr(
                    at,
                    format!(
                        "metadata item {} runs past the metadata region",
                        guid_text(&id)
                    ),
                )),
            }
        };
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE83_DATA,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
            PARENT_LOCATOR,
        ];
        for (i, e) in table.entries.iter().enumerate() {
            if e.is_required && !known.contains(&e.item_id) {
                return Err(perr(
                    32 + 32 * i as u64,
                    format!("unknown required metadata item {}", guid_text(&e.item_id)),
                ));
            }
        }
        let missing = |what: &str| perr(0, format!("required metadata item {what} is missing"));
        let (fp, fp_at) = item(FILE_PARAMETERS, 8)?.ok_or_else(|| missing("file parameters"))?;
        let block_size = le_u32(fp, 0);
        let flags = le_u32(fp, 4);
        if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
            return Err(perr(
                fp_at,
                format!("block size {block_size} is not a power of two in 1..256 MiB"),
            ));
        }
        let (vs, vs_at) =
            item(VIRTUAL_DISK_SIZE, 8)?.ok_or_else(|| missing("virtual disk size"))?;
        let virtual_size = le_u64(vs, 0);
        let (ls, ls_at) =
            item(LOGICAL_SECTOR_SIZE, 4)?.ok_or_else(|| missing("logical sector size"))?;
        let logical_sector_size = le_u32(ls, 0);
        if logical_sector_size != 512 && logical_sector_size != 4096 {
            return Err(perr(
                ls_at,
                format!("logical sector size {logical_sector_size}"),
            ));
        }
        let physical_sector_size = match item(PHYSICAL_SECTOR_SIZE, 4)? {
            Some((b, at)) => {
                let v = le_u32(b, 0);
                if v != 512 && v != 4096 {
                    return Err(perr(at, format!("physical sector size {v}")));
                }
                v
            }
            None => 512,
        };
        if virtual_size == 0
            || virtual_size > 64 << 40
            || !virtual_size.is_multiple_of(u64::from(logical_sector_size))
        {
            return Err(perr(
                vs_at,
                format!(
                    "virtual size {virtual_size} is not a multiple of the {logical_sector_size}-byte sector in 1 byte..64 TiB"
                ),
            ));
        }
        let page83 = item(PAGE83_DATA, 16)?.map(|(b, _)| g16(b, 0));
        let has_parent = flags & 2 != 0;
        let parent_locator = match item(PARENT_LOCATOR, 20)? {
            Some((b, at)) if has_parent => {
                Some(ParentLocator::parse(b).map_err(|e| perr(at + e.offset, e.reason))?)
            }
            _ => None,
        };
        if has_parent && parent_locator.is_none() {
            return Err(missing(
                "parent locator (the file parameters say HasParent)",
            ));
        }
        Ok(Metadata {
            block_size,
            leave_blocks_allocated: flags & 1 != 0,
            has_parent,
            virtual_size,
            logical_sector_size,
            physical_sector_size,
            page83,
            parent_locator,
        })
    }
}

/// A GUID written as text (`{...}`), in on-disk byte order.
fn guid_value(v: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(v.trim())
        .ok()
        .map(|u| u.to_bytes_le())
}

/// The VHDX parent locator: key/value pairs (UTF-16LE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLocator {
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// Parse a parent locator item. Fuzz entry point.
    pub fn parse(b: &[u8]) -> Result<ParentLocator, ParseError> {
        if b.len() < 20 {
            return Err(perr(0, "parent locator shorter than its header"));
        }
        if g16(b, 0) != VHDX_LOCATOR_TYPE {
            return Err(perr(
                0,
                format!(
                    "parent locator type {} is not the VHDX one",
                    guid_text(&g16(b, 0))
                ),
            ));
        }
        let count = usize::from(le_u16(b, 18));
        let mut entries = Vec::new();
        for i in 0..count {
            let at = 20 + 12 * i;
            if at + 12 > b.len() {
                return Err(perr(at as u64, "parent locator entries run past the item"));
            }
            let text = |off: u32, len: u16| -> Result<String, ParseError> {
                let s = usize::try_from(off).unwrap_or(usize::MAX);
                let e = s.saturating_add(usize::from(len));
                let bytes = b
                    .get(s..e)
                    .ok_or_else(|| perr(at as u64, "parent locator string runs past the item"))?;
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Ok(String::from_utf16_lossy(&units))
            };
            let key = text(le_u32(b, at), le_u16(b, at + 8))?;
            let value = text(le_u32(b, at + 4), le_u16(b, at + 10))?;
            entries.push((key, value));
        }
        Ok(ParentLocator { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut head = Vec::new();
        head.extend_from_slice(&VHDX_LOCATOR_TYPE);
        head.extend_from_slice(&[0, 0]);
        let n = u16::try_from(self.entries.len()).unwrap_or(0);
        head.extend_from_slice(&n.to_le_bytes());
        let mut strings = Vec::new();
        let base = 20 + 12 * self.entries.len();
        for (k, v) in &self.entries {
            let kb: Vec<u8> = k.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let vb: Vec<u8> = v.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let ko = u32::try_from(base + strings.len()).unwrap_or(0);
            strings.extend_from_slice(&kb);
            let vo = u32::try_from(base + strings.len()).unwrap_or(0);
            strings.extend_from_slice(&vb);
            head.extend_from_slice(&ko.to_le_bytes());
            head.extend_from_slice(&vo.to_le_bytes());
            head.extend_from_slice(&u16::try_from(kb.len()).unwrap_or(0).to_le_bytes());
            head.extend_from_slice(&u16::try_from(vb.len()).unwrap_or(0).to_le_bytes());
        }
        head.extend_from_slice(&strings);
        head
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The parent's DataWriteGuid from `parent_linkage` (on-disk byte order).
    pub fn parent_linkage(&self) -> Option<[u8; 16]> {
        guid_value(self.get("parent_linkage")?)
    }

    /// The alternative parent DataWriteGuid from `parent_linkage2`, when present and valid.
    pub fn parent_linkage2(&self) -> Option<[u8; 16]> {
        guid_value(self.get("parent_linkage2")?)
    }

    /// Paths to try, in order: relative, volume, absolute.
    pub fn hints(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = self.get("relative_path") {
            let r = r.replace('\\', "/");
            out.push(r.strip_prefix("./").map(str::to_string).unwrap_or(r));
        }
        for k in ["volume_path", "absolute_win32_path"] {
            if let Some(v) = self.get(k) {
                out.push(v.to_string());
            }
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn region_with(items: &[([u8; 16], Vec<u8>, bool)]) -> Vec<u8> {
        let mut region = vec![0u8; 1 << 20];
        let mut entries = Vec::new();
        let mut off = TABLE_SIZE;
        for (id, data, req) in items {
            region[off..off + data.len()].copy_from_slice(data);
            entries.push(MetadataEntry {
                item_id: *id,
                offset: u32::try_from(off).unwrap(),
                length: u32::try_from(data.len()).unwrap(),
                is_user: false,
                is_virtual_disk: true,
                is_required: *req,
            });
            off += 4096;
        }
        let t = MetadataTable { entries }.encode();
        region[..TABLE_SIZE].copy_from_slice(&t);
        region
    }

    fn fp(bs: u32, flags: u32) -> Vec<u8> {
        [bs.to_le_bytes(), flags.to_le_bytes()].concat()
    }

    #[test]
    fn decodes_items_and_refuses_unknown_required() {
        let loc = ParentLocator {
            entries: vec![
                (
                    "parent_linkage".into(),
                    "{01234567-89AB-CDEF-0123-456789ABCDEF}".into(),
                ),
                ("relative_path".into(), ".\\base.vhdx".into()),
                ("absolute_win32_path".into(), "C:\\vm\\base.vhdx".into()),
            ],
        };
        let items = vec![
            (FILE_PARAMETERS, fp(32 << 20, 2), true),
            (VIRTUAL_DISK_SIZE, (1u64 << 30).to_le_bytes().to_vec(), true),
            (LOGICAL_SECTOR_SIZE, 4096u32.to_le_bytes().to_vec(), true),
            (PARENT_LOCATOR, loc.encode(), true),
        ];
        let m = Metadata::parse(&region_with(&items)).unwrap();
        assert!(m.has_parent);
        assert_eq!(m.logical_sector_size, 4096);
        let pl = m.parent_locator.unwrap();
        assert_eq!(pl, loc);
        assert_eq!(pl.hints(), vec!["base.vhdx", "C:\\vm\\base.vhdx"]);
        let g = uuid::Uuid::parse_str("01234567-89AB-CDEF-0123-456789ABCDEF").unwrap();
        assert_eq!(pl.parent_linkage().unwrap(), g.to_bytes_le());

        let mut bad = items.clone();
        bad.push(([0x42; 16], vec![1, 2, 3, 4], true));
        let e = Metadata::parse(&region_with(&bad)).unwrap_err();
        assert!(e.reason.contains("unknown required"), "{e:?}");
        let mut odd = items;
        odd[0].1 = fp(3 << 20, 0);
        assert!(Metadata::parse(&region_with(&odd)).is_err());
    }

    proptest! {
        #[test]
        fn locator_round_trips(kv in proptest::collection::vec(("[a-z_]{1,20}", "[ -~]{0,60}"), 0..6)) {
            let l = ParentLocator { entries: kv };
            prop_assert_eq!(ParentLocator::parse(&l.encode()).unwrap(), l);
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..70000)) {
            let _ = Metadata::parse(&bytes);
            let _ = ParentLocator::parse(&bytes);
        }
    }
}
