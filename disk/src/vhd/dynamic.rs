//! The VHD dynamic disk header (1024 bytes, big-endian) and its parent locators.
//!
//! Pure functions over bytes; [`DynamicHeader::parse`] and [`decode_locator_data`] are fuzz
//! entry points.

use super::footer::{arr, be_u32, be_u64, vhd_checksum};

pub const DYNAMIC_HEADER_SIZE: usize = 1024;
const COOKIE: &[u8; 8] = b"cxsparse";
const VERSION: u32 = 0x0001_0000;
/// BAT value of an unallocated block.
pub const BAT_UNALLOCATED: u32 = 0xFFFF_FFFF;
/// Largest parent locator payload we read (paths are short; the field allows more).
pub const MAX_LOCATOR_DATA: u32 = 64 * 1024;

/// One parent locator entry (24 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentLocator {
    /// `"W2ru"`, `"W2ku"`, `"Wi2r"`, `"Wi2k"`, `"Mac "`, `"MacX"`, or zeros when unused.
    pub platform_code: [u8; 4],
    /// Space reserved for the data: sectors per the spec, bytes in some writers.
    pub data_space: u32,
    /// Bytes of locator data.
    pub data_length: u32,
    /// Absolute file offset of the data.
    pub data_offset: u64,
}

impl ParentLocator {
    pub fn is_used(&self) -> bool {
        self.platform_code != [0; 4] && self.data_length > 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamicHeader {
    pub data_offset: u64,
    /// File offset of the BAT.
    pub table_offset: u64,
    pub max_table_entries: u32,
    /// Bytes per block (power of two, at least 512).
    pub block_size: u32,
    pub parent_unique_id: [u8; 16],
    pub parent_timestamp: u32,
    /// Parent file name as written (UTF-16 big-endian, NUL-terminated), decoded.
    pub parent_name: String,
    pub locators: [ParentLocator; 8],
}

/// Why bytes are not a valid dynamic header; the offset is relative to the header start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderError {
    pub offset: u64,
    pub reason: String,
}

fn err(offset: u64, reason: impl Into<String>) -> HeaderError {
    HeaderError {
        offset,
        reason: reason.into(),
    }
}

impl DynamicHeader {
    /// Parse and verify a dynamic header. Fuzz entry point.
    pub fn parse(b: &[u8]) -> Result<DynamicHeader, HeaderError> {
        if b.len() < DYNAMIC_HEADER_SIZE {
            return Err(err(
                0,
                format!("dynamic header is {} bytes, need 1024", b.len()),
            ));
        }
        let b = &b[..DYNAMIC_HEADER_SIZE];
        if &b[0..8] != COOKIE {
            return Err(err(0, "no \"cxsparse\" cookie"));
        }
        let stored = be_u32(b, 36);
        let computed = vhd_checksum(b, 36);
        if stored != computed {
            return Err(err(
                36,
                format!(
                    "dynamic header checksum is {stored:#010x}, the bytes sum to {computed:#010x}"
                ),
            ));
        }
        let version = be_u32(b, 24);
        if version >> 16 != 1 {
            return Err(err(24, format!("header version {version:#x}, not 1.x")));
        }
        let block_size = be_u32(b, 32);
        if !block_size.is_power_of_two() || block_size < 512 {
            return Err(err(
                32,
                format!("block size {block_size} is not a power of two of at least 512"),
            ));
        }
        let units: Vec<u16> = b[64..576]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let parent_name = String::from_utf16_lossy(&units);
        let mut locators: [ParentLocator; 8] = Default::default();
        for (i, loc) in locators.iter_mut().enumerate() {
            let at = 576 + 24 * i;
            *loc = ParentLocator {
                platform_code: arr(b, at),
                data_space: be_u32(b, at + 4),
                data_length: be_u32(b, at + 8),
                data_offset: be_u64(b, at + 16),
            };
        }
        Ok(DynamicHeader {
            data_offset: be_u64(b, 8),
            table_offset: be_u64(b, 16),
            max_table_entries: be_u32(b, 28),
            block_size,
            parent_unique_id: arr(b, 40),
            parent_timestamp: be_u32(b, 56),
            parent_name,
            locators,
        })
    }

    /// Encode with a fresh checksum. A parent name longer than 255 UTF-16 units is cut.
    pub fn encode(&self) -> [u8; DYNAMIC_HEADER_SIZE] {
        let mut b = [0u8; DYNAMIC_HEADER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..16].copy_from_slice(&self.data_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&VERSION.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_unique_id);
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, u) in self.parent_name.encode_utf16().take(255).enumerate() {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&u.to_be_bytes());
        }
        for (i, loc) in self.locators.iter().enumerate() {
            let at = 576 + 24 * i;
            b[at..at + 4].copy_from_slice(&loc.platform_code);
            b[at + 4..at + 8].copy_from_slice(&loc.data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&loc.data_length.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&loc.data_offset.to_be_bytes());
        }
        let sum = vhd_checksum(&b, 36);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// Bytes of the per-block sector bitmap (one bit per sector, padded to 512 bytes).
    pub fn bitmap_size(&self) -> u64 {
        (u64::from(self.block_size) / 512).div_ceil(8).div_ceil(512) * 512
    }
}

/// Decode a parent locator's data into a path hint. `None` for platform codes that carry no
/// usable path. Fuzz entry point.
pub fn decode_locator_data(platform_code: [u8; 4], data: &[u8]) -> Option<String> {
    let text = match &platform_code {
        b"W2ru" | b"W2ku" => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            String::from_utf16_lossy(&units)
        }
        b"Mac " | b"MacX" => {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            let s = String::from_utf8_lossy(&data[..end]).into_owned();
            s.strip_prefix("file://").map(str::to_string).unwrap_or(s)
        }
        _ => return None,
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return None;
    }
    if &platform_code == b"W2ru" {
        // Relative Windows path: `.\parent.vhd`, `..\base\parent.vhd`.
        let p = text.replace('\\', "/");
        return Some(p.strip_prefix("./").map(str::to_string).unwrap_or(p));
    }
    Some(text)
}

/// Encode a path as locator data for `platform_code` (test generators and writers).
pub fn encode_locator_data(platform_code: [u8; 4], path: &str) -> Vec<u8> {
    match &platform_code {
        b"Mac " | b"MacX" => format!("file://{path}").into_bytes(),
        _ => path.encode_utf16().flat_map(u16::to_le_bytes).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_with_locators() {
        let mut h = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: 1536,
            max_table_entries: 33,
            block_size: 2 << 20,
            parent_unique_id: [9; 16],
            parent_timestamp: 77,
            parent_name: "C:\\VMs\\base.vhd".into(),
            locators: Default::default(),
        };
        h.locators[0] = ParentLocator {
            platform_code: *b"W2ru",
            data_space: 1,
            data_length: 20,
            data_offset: 4096,
        };
        let b = h.encode();
        assert_eq!(DynamicHeader::parse(&b).unwrap(), h);
        assert_eq!(h.bitmap_size(), 512);
        let mut bad = b;
        bad[600] ^= 0x40;
        assert_eq!(DynamicHeader::parse(&bad).unwrap_err().offset, 36);
    }

    #[test]
    fn locator_paths_decode() {
        let d = encode_locator_data(*b"W2ru", ".\\base.vhd");
        assert_eq!(decode_locator_data(*b"W2ru", &d).unwrap(), "base.vhd");
        let d = encode_locator_data(*b"W2ku", "C:\\x\\base.vhd");
        assert_eq!(
            decode_locator_data(*b"W2ku", &d).unwrap(),
            "C:\\x\\base.vhd"
        );
        let d = encode_locator_data(*b"MacX", "/Users/a/base.vhd");
        assert_eq!(
            decode_locator_data(*b"MacX", &d).unwrap(),
            "/Users/a/base.vhd"
        );
        assert_eq!(decode_locator_data(*b"Wi2k", b"abc"), None);
    }

    proptest! {
        #[test]
        fn parse_encode_round_trips(
            bat in any::<u64>(), n in any::<u32>(), shift in 9u32..31, id in any::<[u8; 16]>(),
            name in "[a-zA-Z0-9 ._\\\\:]{0,60}", code in any::<[u8; 4]>(), len in any::<u32>(),
        ) {
            let mut h = DynamicHeader {
                data_offset: u64::MAX, table_offset: bat, max_table_entries: n,
                block_size: 1 << shift, parent_unique_id: id, parent_timestamp: 5,
                parent_name: name, locators: Default::default(),
            };
            h.locators[3] = ParentLocator {
                platform_code: code, data_space: 3, data_length: len, data_offset: bat,
            };
            prop_assert_eq!(DynamicHeader::parse(&h.encode()).unwrap(), h);
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = DynamicHeader::parse(&bytes);
            let _ = decode_locator_data(*b"W2ru", &bytes);
            let _ = decode_locator_data(*b"MacX", &bytes);
        }
    }
}
