//! Binary headers of VMDK sparse extents: the hosted "KDMV" header (also the stream footer),
//! stream markers, the ESXi "COWD" (vmfsSparse) header and the seSparse headers.
//!
//! Pure and packed little-endian: every field is read with `from_le_bytes` at its offset,
//! never by casting a struct. `parse` checks what can be checked from the bytes alone and
//! returns the offending byte offset on failure; checks against the file size live in
//! `validate`.

use std::fmt;

pub const SECTOR: u64 = 512;
/// "KDMV" read as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// "COWD" read as a little-endian u32.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// `gdOffset` value meaning "the grain directory is at the end; read the footer".
pub const GD_AT_END: u64 = u64::MAX;

pub const FLAG_NEWLINE_TEST: u32 = 1 << 0;
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
pub const FLAG_ZEROED_GRAIN_GTE: u32 = 1 << 2;
pub const FLAG_COMPRESSED: u32 = 1 << 16;
pub const FLAG_MARKERS: u32 = 1 << 17;
const KNOWN_INCOMPAT: u32 = FLAG_COMPRESSED | FLAG_MARKERS;

pub const COMPRESS_NONE: u16 = 0;
pub const COMPRESS_DEFLATE: u16 = 1;

/// Largest grain accepted (sectors). VMware writes 128 (64 KiB); qemu refuses more than 1 GiB.
/// Grains are decoded whole, so this bounds per-read memory.
pub const MAX_GRAIN_SECTORS: u64 = 1 << 16;
/// Largest grain table accepted (entries). VMware: 512; COWD: 4096; seSparse: 4096.
pub const MAX_GTES_PER_GT: u32 = 1 << 16;
/// Largest virtual size accepted for one extent: 64 TiB (seSparse's limit; hosted sparse
/// extents stop at 2 TiB).
pub const MAX_CAPACITY_SECTORS: u64 = (64u64 << 40) / SECTOR;

/// An error in a binary structure: byte offset within the structure and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderError {
    pub offset: u64,
    pub reason: String,
    /// The structure is valid but uses a feature we do not read.
    pub unsupported: bool,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}: {}", self.offset, self.reason)
    }
}

fn bad(offset: u64, reason: impl Into<String>) -> HeaderError {
    HeaderError {
        offset,
        reason: reason.into(),
        unsupported: false,
    }
}

fn unsupported(offset: u64, reason: impl Into<String>) -> HeaderError {
    HeaderError {
        offset,
        reason: reason.into(),
        unsupported: true,
    }
}

/// A `u64` that is bounded by a grain, table or batch size, as a `usize` (saturating; this
/// crate targets 64-bit hosts).
pub fn usz(x: u64) -> usize {
    usize::try_from(x).unwrap_or(usize::MAX)
}

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}
fn put_u16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// The hosted sparse extent header (512 bytes at sector 0; the stream footer is a copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    /// Extent size in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub num_gtes_per_gt: u32,
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors of metadata before the first grain.
    pub overhead: u64,
    pub unclean_shutdown: u8,
    /// The four newline-test characters ('\n', ' ', '\r', '\n').
    pub newline_test: [u8; 4],
    pub compress_algorithm: u16,
}

pub const NEWLINE_TEST: [u8; 4] = *b"\n \r\n";

impl SparseHeader {
    /// Parse the 512-byte header. Checks magic, version, flags, grain and table geometry and
    /// capacity; pointer checks against the file are [`SparseHeader::validate`]'s job.
    pub fn parse(b: &[u8]) -> Result<SparseHeader, HeaderError> {
        if b.len() < 512 {
            return Err(bad(
                0,
                format!("header needs 512 bytes, file has {}", b.len()),
            ));
        }
        if u32_at(b, 0) != SPARSE_MAGIC {
            return Err(bad(0, "no KDMV magic"));
        }
        let mut nl = [0u8; 4];
        nl.copy_from_slice(&b[73..77]);
        let h = SparseHeader {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 12),
            grain_size: u64_at(b, 20),
            descriptor_offset: u64_at(b, 28),
            descriptor_size: u64_at(b, 36),
            num_gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            overhead: u64_at(b, 64),
            unclean_shutdown: b[72],
            newline_test: nl,
            compress_algorithm: u16_at(b, 77),
        };
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<(), HeaderError> {
        if self.version == 0 || self.version > 3 {
            return Err(unsupported(
                4,
                format!("sparse VMDK version {}", self.version),
            ));
        }
        let incompat = self.flags & 0xffff_0000;
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(unsupported(
                8,
                format!(
                    "unknown incompatible flags 0x{:08x}",
                    incompat & !KNOWN_INCOMPAT
                ),
            ));
        }
        if self.flags & FLAG_NEWLINE_TEST != 0 && self.newline_test != NEWLINE_TEST {
            return Err(bad(
                73,
                "newline test bytes damaged (file transferred in text mode?)",
            ));
        }
        if self.grain_size == 0
            || !self.grain_size.is_power_of_two()
            || self.grain_size > MAX_GRAIN_SECTORS
        {
            return Err(bad(
                20,
                format!("absurd grain size {} sectors", self.grain_size),
            ));
        }
        if self.num_gtes_per_gt == 0
            || !self.num_gtes_per_gt.is_power_of_two()
            || self.num_gtes_per_gt > MAX_GTES_PER_GT
        {
            return Err(bad(
                44,
                format!("absurd grain table size {} entries", self.num_gtes_per_gt),
            ));
        }
        if self.capacity > MAX_CAPACITY_SECTORS {
            return Err(bad(
                12,
                format!("absurd capacity {} sectors", self.capacity),
            ));
        }
        if self.descriptor_size > (crate::vmdk::descriptor::MAX_DESCRIPTOR_BYTES as u64) / SECTOR {
            return Err(bad(
                36,
                format!("absurd descriptor size {} sectors", self.descriptor_size),
            ));
        }
        if self.is_compressed() && self.compress_algorithm != COMPRESS_DEFLATE {
            return Err(unsupported(
                77,
                format!("compression algorithm {}", self.compress_algorithm),
            ));
        }
        if self.flags & FLAG_MARKERS != 0 && !self.is_compressed() {
            return Err(bad(8, "markers flag set on an uncompressed extent"));
        }
        Ok(())
    }

    /// Grains are deflate-compressed (streamOptimized, or a compressed hosted extent).
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0 || self.compress_algorithm == COMPRESS_DEFLATE
    }

    /// Grains carry a 12-byte (lba, size) header and the stream has markers.
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// GTE = 1 means "zeroed grain".
    pub fn has_zeroed_grain_gte(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN_GTE != 0
    }

    pub fn grain_bytes(&self) -> u64 {
        self.grain_size * SECTOR
    }

    /// Number of grain directory entries the capacity needs.
    pub fn gd_entries(&self) -> u64 {
        let grains = self.capacity.div_ceil(self.grain_size);
        grains.div_ceil(u64::from(self.num_gtes_per_gt))
    }

    /// Whether sector `s` lies in the header or the embedded descriptor: no table or grain
    /// may point there.
    pub fn in_metadata(&self, s: u64) -> bool {
        s == 0
            || (self.descriptor_size > 0
                && s >= self.descriptor_offset
                && s < self.descriptor_offset.saturating_add(self.descriptor_size))
    }

    /// Check the pointers against a file of `file_size` bytes.
    pub fn validate(&self, file_size: u64) -> Result<(), HeaderError> {
        let sectors = file_size / SECTOR;
        if self.descriptor_size > 0
            && (self.descriptor_offset == 0
                || self.descriptor_offset.saturating_add(self.descriptor_size) > sectors)
        {
            return Err(bad(
                28,
                format!(
                    "descriptor at sector {} (+{}) is outside the file ({} sectors)",
                    self.descriptor_offset, self.descriptor_size, sectors
                ),
            ));
        }
        if self.gd_offset != GD_AT_END {
            let gd_sectors = (self.gd_entries() * 4).div_ceil(SECTOR);
            if self.gd_offset == 0 && self.gd_entries() > 0 {
                return Err(bad(56, "grain directory points into the header (sector 0)"));
            }
            if self.gd_offset.saturating_add(gd_sectors) > sectors {
                return Err(bad(
                    56,
                    format!(
                        "grain directory at sector {} (+{} sectors) is past the end of the \
                         file ({} sectors)",
                        self.gd_offset, gd_sectors, sectors
                    ),
                ));
            }
            if self.gd_entries() > 0 && self.in_metadata(self.gd_offset) {
                return Err(bad(
                    56,
                    format!(
                        "grain directory at sector {} points into the header or descriptor",
                        self.gd_offset
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_u32(&mut b, 0, SPARSE_MAGIC);
        put_u32(&mut b, 4, self.version);
        put_u32(&mut b, 8, self.flags);
        put_u64(&mut b, 12, self.capacity);
        put_u64(&mut b, 20, self.grain_size);
        put_u64(&mut b, 28, self.descriptor_offset);
        put_u64(&mut b, 36, self.descriptor_size);
        put_u32(&mut b, 44, self.num_gtes_per_gt);
        put_u64(&mut b, 48, self.rgd_offset);
        put_u64(&mut b, 56, self.gd_offset);
        put_u64(&mut b, 64, self.overhead);
        b[72] = self.unclean_shutdown;
        b[73..77].copy_from_slice(&self.newline_test);
        put_u16(&mut b, 77, self.compress_algorithm);
        b
    }
}

/// Stream marker types.
pub const MARKER_EOS: u32 = 0;
pub const MARKER_GT: u32 = 1;
pub const MARKER_GD: u32 = 2;
pub const MARKER_FOOTER: u32 = 3;
pub const MARKER_PROGRESS: u32 = 4;

/// A stream marker sector: `u64 value, u32 size (= 0), u32 type`. A sector whose `size` is
/// non-zero is a grain record instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub value: u64,
    pub kind: u32,
}

impl Marker {
    /// `None` when the sector is a grain record (size != 0) or too short.
    pub fn parse(b: &[u8]) -> Option<Marker> {
        if b.len() < 16 || u32_at(b, 8) != 0 {
            return None;
        }
        Some(Marker {
            value: u64_at(b, 0),
            kind: u32_at(b, 12),
        })
    }

    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_u64(&mut b, 0, self.value);
        put_u32(&mut b, 12, self.kind);
        b
    }
}

/// The ESXi vmfsSparse ("COWD") extent header, as qemu reads it: little-endian u32 fields
/// after the magic. Grain tables have 4096 entries; GTEs are sector offsets, 0 = parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CowdHeader {
    pub version: u32,
    pub flags: u32,
    /// Extent size in sectors.
    pub capacity: u32,
    /// Grain size in sectors.
    pub grain_size: u32,
    /// Sector of the grain directory.
    pub gd_offset: u32,
    /// Number of grain directory entries.
    pub gd_entries: u32,
    /// Next free sector.
    pub free_sector: u32,
}

/// Entries per COWD grain table.
pub const COWD_GTES_PER_GT: u32 = 4096;

impl CowdHeader {
    pub fn parse(b: &[u8]) -> Result<CowdHeader, HeaderError> {
        if b.len() < 44 {
            return Err(bad(0, "COWD header needs 44 bytes"));
        }
        if u32_at(b, 0) != COWD_MAGIC {
            return Err(bad(0, "no COWD magic"));
        }
        let h = CowdHeader {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u32_at(b, 12),
            grain_size: u32_at(b, 16),
            gd_offset: u32_at(b, 20),
            gd_entries: u32_at(b, 24),
            free_sector: u32_at(b, 28),
        };
        if h.version != 1 {
            return Err(unsupported(4, format!("COWD version {}", h.version)));
        }
        if h.grain_size == 0
            || !h.grain_size.is_power_of_two()
            || u64::from(h.grain_size) > MAX_GRAIN_SECTORS
        {
            return Err(bad(
                16,
                format!("absurd grain size {} sectors", h.grain_size),
            ));
        }
        let needed = u64::from(h.capacity)
            .div_ceil(u64::from(h.grain_size))
            .div_ceil(u64::from(COWD_GTES_PER_GT));
        if u64::from(h.gd_entries) < needed {
            return Err(bad(
                24,
                format!(
                    "grain directory has {} entries, capacity needs {needed}",
                    h.gd_entries
                ),
            ));
        }
        if h.gd_offset == 0 {
            return Err(bad(20, "grain directory points into the header (sector 0)"));
        }
        Ok(h)
    }

    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_u32(&mut b, 0, COWD_MAGIC);
        put_u32(&mut b, 4, self.version);
        put_u32(&mut b, 8, self.flags);
        put_u32(&mut b, 12, self.capacity);
        put_u32(&mut b, 16, self.grain_size);
        put_u32(&mut b, 20, self.gd_offset);
        put_u32(&mut b, 24, self.gd_entries);
        put_u32(&mut b, 28, self.free_sector);
        b
    }
}

pub const SESPARSE_CONST_MAGIC: u64 = 0xcafe_babe;
pub const SESPARSE_VOLATILE_MAGIC: u64 = 0xcafe_cafe;
const SESPARSE_VERSION: u64 = 0x0000_0002_0000_0001;

/// The seSparse constant header (sector 0), the fields qemu reads. All u64 sector counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeSparseHeader {
    pub capacity: u64,
    pub grain_size: u64,
    /// Grain table size in sectors (64 = 4096 entries of u64).
    pub grain_table_size: u64,
    pub volatile_header_offset: u64,
    pub grain_dir_offset: u64,
    pub grain_dir_size: u64,
    pub grain_tables_offset: u64,
    pub grain_tables_size: u64,
    pub grains_offset: u64,
    pub grains_size: u64,
}

impl SeSparseHeader {
    pub fn parse(b: &[u8]) -> Result<SeSparseHeader, HeaderError> {
        if b.len() < 512 {
            return Err(bad(0, "seSparse header needs 512 bytes"));
        }
        if u64_at(b, 0) != SESPARSE_CONST_MAGIC {
            return Err(bad(0, "no seSparse magic"));
        }
        let version = u64_at(b, 8);
        if version != SESPARSE_VERSION {
            return Err(unsupported(8, format!("seSparse version 0x{version:016x}")));
        }
        let h = SeSparseHeader {
            capacity: u64_at(b, 16),
            grain_size: u64_at(b, 24),
            grain_table_size: u64_at(b, 32),
            volatile_header_offset: u64_at(b, 80),
            grain_dir_offset: u64_at(b, 128),
            grain_dir_size: u64_at(b, 136),
            grain_tables_offset: u64_at(b, 144),
            grain_tables_size: u64_at(b, 152),
            grains_offset: u64_at(b, 192),
            grains_size: u64_at(b, 200),
        };
        let flags = u64_at(b, 40);
        if h.grain_size != 8 {
            return Err(unsupported(
                24,
                format!("seSparse grain size {}", h.grain_size),
            ));
        }
        if h.grain_table_size != 64 {
            return Err(unsupported(
                32,
                format!("seSparse grain table size {}", h.grain_table_size),
            ));
        }
        if flags != 0 {
            return Err(unsupported(40, format!("seSparse flags 0x{flags:x}")));
        }
        if h.capacity > MAX_CAPACITY_SECTORS {
            return Err(bad(16, format!("absurd capacity {} sectors", h.capacity)));
        }
        let gt_entries = h.grain_table_size * SECTOR / 8;
        let needed = h.capacity.div_ceil(h.grain_size).div_ceil(gt_entries);
        if h.grain_dir_size.saturating_mul(SECTOR / 8) < needed {
            return Err(bad(
                136,
                format!(
                    "grain directory of {} sectors is too small for the capacity",
                    h.grain_dir_size
                ),
            ));
        }
        for (off, v) in [
            (80u64, h.volatile_header_offset),
            (128, h.grain_dir_offset),
            (144, h.grain_tables_offset),
            (192, h.grains_offset),
        ] {
            if v == 0 {
                return Err(bad(off, "table points into the header (sector 0)"));
            }
        }
        Ok(h)
    }

    pub fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_u64(&mut b, 0, SESPARSE_CONST_MAGIC);
        put_u64(&mut b, 8, SESPARSE_VERSION);
        put_u64(&mut b, 16, self.capacity);
        put_u64(&mut b, 24, self.grain_size);
        put_u64(&mut b, 32, self.grain_table_size);
        put_u64(&mut b, 80, self.volatile_header_offset);
        put_u64(&mut b, 88, 1);
        put_u64(&mut b, 128, self.grain_dir_offset);
        put_u64(&mut b, 136, self.grain_dir_size);
        put_u64(&mut b, 144, self.grain_tables_offset);
        put_u64(&mut b, 152, self.grain_tables_size);
        put_u64(&mut b, 192, self.grains_offset);
        put_u64(&mut b, 200, self.grains_size);
        b
    }
}

/// Check the seSparse volatile header (a dirty journal is refused).
pub fn check_sesparse_volatile(b: &[u8]) -> Result<(), HeaderError> {
    if b.len() < 32 || u64_at(b, 0) != SESPARSE_VOLATILE_MAGIC {
        return Err(bad(0, "no seSparse volatile header magic"));
    }
    if u64_at(b, 24) != 0 {
        return Err(unsupported(
            24,
            "seSparse journal needs replay (the VM was not shut down cleanly)",
        ));
    }
    Ok(())
}

/// A volatile header for synthesised test images.
pub fn encode_sesparse_volatile() -> [u8; 512] {
    let mut b = [0u8; 512];
    put_u64(&mut b, 0, SESPARSE_VOLATILE_MAGIC);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn stream_header() -> SparseHeader {
        SparseHeader {
            version: 3,
            flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: 131072,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 1,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            unclean_shutdown: 0,
            newline_test: NEWLINE_TEST,
            compress_algorithm: COMPRESS_DEFLATE,
        }
    }

    #[test]
    fn header_round_trips_and_is_packed() {
        let h = stream_header();
        let b = h.encode();
        assert_eq!(&b[0..4], b"KDMV");
        assert_eq!(&b[73..77], b"\n \r\n");
        assert_eq!(u16_at(&b, 77), 1);
        assert_eq!(SparseHeader::parse(&b).unwrap(), h);
        assert_eq!(h.gd_entries(), 2);
    }

    #[test]
    fn header_refuses_bad_values_with_offsets() {
        let mut b = stream_header().encode();
        b[4] = 4;
        let e = SparseHeader::parse(&b).unwrap_err();
        assert_eq!((e.offset, e.unsupported), (4, true));
        let mut b = stream_header().encode();
        put_u64(&mut b, 20, 3);
        assert_eq!(SparseHeader::parse(&b).unwrap_err().offset, 20);
        let mut b = stream_header().encode();
        put_u64(&mut b, 12, u64::MAX);
        assert_eq!(SparseHeader::parse(&b).unwrap_err().offset, 12);
        let mut b = stream_header().encode();
        b[75] = b'\n';
        assert_eq!(SparseHeader::parse(&b).unwrap_err().offset, 73);
        let mut b = stream_header().encode();
        put_u32(&mut b, 8, 1 << 20);
        assert!(SparseHeader::parse(&b).unwrap_err().unsupported);
        assert!(SparseHeader::parse(&b[..100]).is_err());
    }

    #[test]
    fn validate_checks_pointers_against_the_file() {
        let mut h = stream_header();
        h.gd_offset = 0;
        assert_eq!(h.validate(1 << 20).unwrap_err().offset, 56);
        h.gd_offset = 1;
        assert!(
            h.validate(1 << 20)
                .unwrap_err()
                .reason
                .contains("descriptor")
        );
        h.gd_offset = 100_000;
        assert!(
            h.validate(1 << 20)
                .unwrap_err()
                .reason
                .contains("past the end")
        );
        h.gd_offset = 30;
        h.validate(1 << 20).unwrap();
    }

    #[test]
    fn markers() {
        let m = Marker {
            value: 4,
            kind: MARKER_GT,
        };
        assert_eq!(Marker::parse(&m.encode()), Some(m));
        let mut g = [0u8; 512];
        put_u32(&mut g, 8, 100);
        assert_eq!(Marker::parse(&g), None);
    }

    #[test]
    fn cowd_and_sesparse_round_trip() {
        let c = CowdHeader {
            version: 1,
            flags: 3,
            capacity: 8192,
            grain_size: 1,
            gd_offset: 4,
            gd_entries: 2,
            free_sector: 8,
        };
        assert_eq!(CowdHeader::parse(&c.encode()).unwrap(), c);
        let s = SeSparseHeader {
            capacity: 8192,
            grain_size: 8,
            grain_table_size: 64,
            volatile_header_offset: 1,
            grain_dir_offset: 2,
            grain_dir_size: 1,
            grain_tables_offset: 3,
            grain_tables_size: 64,
            grains_offset: 67,
            grains_size: 8192,
        };
        assert_eq!(SeSparseHeader::parse(&s.encode()).unwrap(), s);
        check_sesparse_volatile(&encode_sesparse_volatile()).unwrap();
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn sparse_header_parse_encode(
                version in 1u32..=3,
                compat in 0u32..8,
                stream in any::<bool>(),
                capacity in 0u64..MAX_CAPACITY_SECTORS,
                gshift in 0u32..=16,
                tshift in 0u32..=16,
                desc in 0u64..64,
                gd in any::<u64>(),
                rgd in any::<u64>(),
                overhead in any::<u64>(),
            ) {
                let h = SparseHeader {
                    version,
                    flags: compat | FLAG_NEWLINE_TEST | if stream { FLAG_COMPRESSED | FLAG_MARKERS } else { 0 },
                    capacity,
                    grain_size: 1 << gshift,
                    descriptor_offset: 1,
                    descriptor_size: desc,
                    num_gtes_per_gt: 1 << tshift,
                    rgd_offset: rgd,
                    gd_offset: gd,
                    overhead,
                    unclean_shutdown: 0,
                    newline_test: NEWLINE_TEST,
                    compress_algorithm: if stream { COMPRESS_DEFLATE } else { COMPRESS_NONE },
                };
                prop_assert_eq!(SparseHeader::parse(&h.encode()).unwrap(), h);
            }

            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = SparseHeader::parse(&bytes);
                let _ = CowdHeader::parse(&bytes);
                let _ = SeSparseHeader::parse(&bytes);
                let _ = Marker::parse(&bytes);
            }
        }
    }
}
