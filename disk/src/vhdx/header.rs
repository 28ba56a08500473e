//! VHDX file identifier, headers and region tables (little-endian, CRC-32C). Pure parsers with
//! encoders; [`Header::parse`] and [`RegionTable::parse`] are fuzz entry points.

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
/// File offsets of the structures at the start of every VHDX.
pub const HEADER1_OFFSET: u64 = 64 * KIB;
pub const HEADER2_OFFSET: u64 = 128 * KIB;
pub const REGION1_OFFSET: u64 = 192 * KIB;
pub const REGION2_OFFSET: u64 = 256 * KIB;
pub const HEADER_SIZE: usize = 4096;
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
const MAX_REGIONS: u32 = 2047;

/// A GUID as stored on disk (Microsoft mixed-endian), from its textual parts.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// Textual form of an on-disk GUID, for messages.
pub fn guid_text(g: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes_le(*g)
        .braced()
        .to_string()
        .to_uppercase()
}

pub const BAT_REGION: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
pub const METADATA_REGION: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// CRC-32C of `bytes` with the 4 bytes at `at` counted as zero.
pub fn crc_with_zeroed(bytes: &[u8], at: usize) -> u32 {
    let c = crc32c::crc32c(&bytes[..at]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &bytes[at + 4..])
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn g16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

/// Why bytes are not a valid structure; `offset` is relative to the structure start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub offset: u64,
    pub reason: String,
}

pub(crate) fn perr(offset: u64, reason: impl Into<String>) -> ParseError {
    ParseError {
        offset,
        reason: reason.into(),
    }
}

/// The 64 KiB file type identifier: signature and creator.
pub fn encode_file_identifier(creator: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64 * 1024];
    b[..8].copy_from_slice(b"vhdxfile");
    for (i, u) in creator.encode_utf16().take(255).enumerate() {
        b[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    b
}

/// One of the two VHDX headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub sequence_number: u64,
    pub file_write_guid: [u8; 16],
    pub data_write_guid: [u8; 16],
    /// Non-zero when the log holds entries to replay.
    pub log_guid: [u8; 16],
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// Parse and verify (signature, CRC-32C, versions). Fuzz entry point.
    pub fn parse(b: &[u8]) -> Result<Header, ParseError> {
        if b.len() < HEADER_SIZE {
            return Err(perr(0, format!("header is {} bytes, need 4096", b.len())));
        }
        let b = &b[..HEADER_SIZE];
        if &b[0..4] != b"head" {
            return Err(perr(0, "no \"head\" signature"));
        }
        let stored = le_u32(b, 4);
        let computed = crc_with_zeroed(b, 4);
        if stored != computed {
            return Err(perr(
                4,
                format!("header CRC-32C is {stored:#010x}, the bytes give {computed:#010x}"),
            ));
        }
        let h = Header {
            sequence_number: le_u64(b, 8),
            file_write_guid: g16(b, 16),
            data_write_guid: g16(b, 32),
            log_guid: g16(b, 48),
            log_version: le_u16(b, 64),
            version: le_u16(b, 66),
            log_length: le_u32(b, 68),
            log_offset: le_u64(b, 72),
        };
        if h.version != 1 {
            return Err(perr(66, format!("header version {}, not 1", h.version)));
        }
        if h.log_version != 0 {
            return Err(perr(64, format!("log version {}, not 0", h.log_version)));
        }
        Ok(h)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(b"head");
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid);
        b[32..48].copy_from_slice(&self.data_write_guid);
        b[48..64].copy_from_slice(&self.log_guid);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let crc = crc_with_zeroed(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionEntry {
    pub guid: [u8; 16],
    pub file_offset: u64,
    pub length: u32,
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionTable {
    pub entries: Vec<RegionEntry>,
}

impl RegionTable {
    /// Parse and verify a 64 KiB region table. Fuzz entry point.
    pub fn parse(b: &[u8]) -> Result<RegionTable, ParseError> {
        if b.len() < REGION_TABLE_SIZE {
            return Err(perr(
                0,
                format!("region table is {} bytes, need 65536", b.len()),
            ));
        }
        let b = &b[..REGION_TABLE_SIZE];
        if &b[0..4] != b"regi" {
            return Err(perr(0, "no \"regi\" signature"));
        }
        let stored = le_u32(b, 4);
        let computed = crc_with_zeroed(b, 4);
        if stored != computed {
            return Err(perr(
                4,
                format!("region table CRC-32C is {stored:#010x}, the bytes give {computed:#010x}"),
            ));
        }
        let count = le_u32(b, 8);
        if count > MAX_REGIONS {
            return Err(perr(8, format!("{count} regions (at most 2047)")));
        }
        let entries = (0..count as usize)
            .map(|i| {
                let at = 16 + 32 * i;
                RegionEntry {
                    guid: g16(b, at),
                    file_offset: le_u64(b, at + 16),
                    length: le_u32(b, at + 24),
                    required: le_u32(b, at + 28) & 1 == 1,
                }
            })
            .collect();
        Ok(RegionTable { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; REGION_TABLE_SIZE];
        b[0..4].copy_from_slice(b"regi");
        let n = u32::try_from(self.entries.len()).unwrap_or(0);
        b[8..12].copy_from_slice(&n.to_le_bytes());
        for (i, e) in self.entries.iter().enumerate().take(MAX_REGIONS as usize) {
            let at = 16 + 32 * i;
            b[at..at + 16].copy_from_slice(&e.guid);
            b[at + 16..at + 24].copy_from_slice(&e.file_offset.to_le_bytes());
            b[at + 24..at + 28].copy_from_slice(&e.length.to_le_bytes());
            b[at + 28..at + 32].copy_from_slice(&u32::from(e.required).to_le_bytes());
        }
        let crc = crc_with_zeroed(&b, 4);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn guid_constants_match_their_text() {
        assert_eq!(
            guid_text(&BAT_REGION),
            "{2DC27766-F623-4200-9D64-115E9BFD4A08}"
        );
        let u = uuid::Uuid::parse_str("8B7CA206-4790-4B9A-B8FE-575F050F886E").unwrap();
        assert_eq!(u.to_bytes_le(), METADATA_REGION);
    }

    #[test]
    fn crc32c_known_value() {
        // RFC 3720 test vector: 32 zero bytes.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    proptest! {
        #[test]
        fn header_round_trips(seq in any::<u64>(), f in any::<[u8; 16]>(), d in any::<[u8; 16]>(),
                              l in any::<[u8; 16]>(), len in any::<u32>(), off in any::<u64>()) {
            let h = Header { sequence_number: seq, file_write_guid: f, data_write_guid: d,
                log_guid: l, log_version: 0, version: 1, log_length: len, log_offset: off };
            let b = h.encode();
            prop_assert_eq!(Header::parse(&b).unwrap(), h);
            let mut bad = b.clone();
            bad[100] ^= 1;
            prop_assert_eq!(Header::parse(&bad).unwrap_err().offset, 4);
        }

        #[test]
        fn region_table_round_trips(n in 0usize..20, off in any::<u64>(), len in any::<u32>()) {
            let t = RegionTable { entries: (0..n).map(|i| RegionEntry {
                guid: [u8::try_from(i).unwrap(); 16], file_offset: off, length: len,
                required: i % 2 == 0 }).collect() };
            prop_assert_eq!(RegionTable::parse(&t.encode()).unwrap(), t);
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = Header::parse(&bytes);
            let _ = RegionTable::parse(&bytes);
        }
    }
}
