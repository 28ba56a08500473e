//! The VHD footer (512 bytes, big-endian): parse, encode, checksum, CHS geometry.
//!
//! Pure functions over bytes; [`Footer::parse`] is a fuzz entry point.

use crate::units::SECTOR;

/// Size of the footer and of its copy at offset 0 of dynamic disks.
pub const FOOTER_SIZE: usize = 512;
/// `data_offset` of a fixed disk (no dynamic header).
pub const NO_DATA_OFFSET: u64 = u64::MAX;
/// Largest VHD: 2040 GiB (0xFF000000 sectors), as in the specification and qemu.
pub const MAX_VHD_SIZE: u64 = 0xFF00_0000 * SECTOR;
/// Creator application Godwit writes. Not `"vpc "`/`"qemu"`, so readers (qemu included) size the
/// disk from `current_size`, not from the geometry.
pub const GODWIT_CREATOR: [u8; 4] = *b"gdwt";
/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;

const COOKIE: &[u8; 8] = b"conectix";
const VERSION: u32 = 0x0001_0000;

/// Footer disk type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(DiskType::Fixed),
            3 => Some(DiskType::Dynamic),
            4 => Some(DiskType::Differencing),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// Cylinders / heads / sectors per track.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The largest geometry; qemu then sizes the disk from `current_size` whatever the creator.
    pub const MAX: Geometry = Geometry {
        cylinders: 65535,
        heads: 16,
        sectors_per_track: 255,
    };

    /// Bytes the geometry addresses.
    pub fn bytes(self) -> u64 {
        u64::from(self.cylinders)
            * u64::from(self.heads)
            * u64::from(self.sectors_per_track)
            * SECTOR
    }

    /// The geometry the VHD specification assigns to `sectors` (capped at 65535×16×255). It may
    /// address slightly fewer sectors than asked for.
    pub fn for_sectors(sectors: u64) -> Geometry {
        let total = sectors.min(65535 * 16 * 255);
        let (spt, heads, cth): (u64, u64, u64);
        if total >= 65535 * 16 * 63 {
            spt = 255;
            heads = 16;
            cth = total / spt;
        } else {
            let mut s = 17;
            let mut c = total / s;
            let mut h = c.div_ceil(1024).max(4);
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = total / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = total / s;
            }
            spt = s;
            heads = h;
            cth = c;
        }
        Geometry {
            cylinders: u16::try_from(cth / heads).unwrap_or(u16::MAX),
            heads: u8::try_from(heads).unwrap_or(u8::MAX),
            sectors_per_track: u8::try_from(spt).unwrap_or(u8::MAX),
        }
    }
}

/// The VHD footer. Reserved bytes are not kept (they encode as zeros).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub unique_id: [u8; 16],
    pub saved_state: u8,
}

/// Why bytes are not a valid footer; the offset is relative to the footer start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FooterError {
    pub offset: u64,
    pub reason: String,
}

fn err(offset: u64, reason: impl Into<String>) -> FooterError {
    FooterError {
        offset,
        reason: reason.into(),
    }
}

/// One's complement of the byte sum, with the 4 checksum bytes at `checksum_at` counted as 0.
pub fn vhd_checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(checksum_at..checksum_at + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
pub(crate) fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Footer {
    /// Parse and verify a footer. Fuzz entry point.
    pub fn parse(b: &[u8]) -> Result<Footer, FooterError> {
        if b.len() < FOOTER_SIZE {
            return Err(err(0, format!("footer is {} bytes, need 512", b.len())));
        }
        let b = &b[..FOOTER_SIZE];
        if &b[0..8] != COOKIE {
            return Err(err(0, "no \"conectix\" cookie"));
        }
        let stored = be_u32(b, 64);
        let computed = vhd_checksum(b, 64);
        if stored != computed {
            return Err(err(
                64,
                format!("footer checksum is {stored:#010x}, the bytes sum to {computed:#010x}"),
            ));
        }
        let version = be_u32(b, 12);
        if version >> 16 != 1 {
            return Err(err(
                12,
                format!("file format version {version:#x}, not 1.x"),
            ));
        }
        let code = be_u32(b, 60);
        let disk_type = DiskType::from_code(code)
            .ok_or_else(|| err(60, format!("disk type {code} (known: 2, 3, 4)")))?;
        Ok(Footer {
            features: be_u32(b, 8),
            data_offset: be_u64(b, 16),
            timestamp: be_u32(b, 24),
            creator_app: arr(b, 28),
            creator_version: be_u32(b, 32),
            creator_os: arr(b, 36),
            original_size: be_u64(b, 40),
            current_size: be_u64(b, 48),
            geometry: Geometry {
                cylinders: be_u16(b, 56),
                heads: b[58],
                sectors_per_track: b[59],
            },
            disk_type,
            unique_id: arr(b, 68),
            saved_state: b[84],
        })
    }

    /// Encode with a fresh checksum.
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&VERSION.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.geometry.cylinders.to_be_bytes());
        b[58] = self.geometry.heads;
        b[59] = self.geometry.sectors_per_track;
        b[60..64].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        let sum = vhd_checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The virtual size as qemu 10 computes it: from the geometry when the creator is
    /// Virtual PC (`"vpc "`) or old qemu (`"qemu"`) and the geometry is not the maximum, from
    /// `current_size` otherwise (Hyper-V, Azure, disk2vhd, `"qem2"`, Godwit, ...).
    pub fn virtual_size(&self) -> u64 {
        let chs_creator = &self.creator_app == b"vpc " || &self.creator_app == b"qemu";
        if chs_creator && self.geometry != Geometry::MAX {
            self.geometry.bytes()
        } else {
            self.current_size
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Footer {
        Footer {
            features: 2,
            data_offset: 512,
            timestamp: 0x1234_5678,
            creator_app: *b"qemu",
            creator_version: 0x0005_0003,
            creator_os: *b"Wi2k",
            original_size: 67_125_248,
            current_size: 67_125_248,
            geometry: Geometry {
                cylinders: 964,
                heads: 8,
                sectors_per_track: 17,
            },
            disk_type: DiskType::Dynamic,
            unique_id: [7; 16],
            saved_state: 0,
        }
    }

    #[test]
    fn round_trip_and_checksum() {
        let f = sample();
        let b = f.encode();
        assert_eq!(Footer::parse(&b).unwrap(), f);
        let mut bad = b;
        bad[100] ^= 1;
        let e = Footer::parse(&bad).unwrap_err();
        assert_eq!(e.offset, 64);
    }

    #[test]
    fn geometry_matches_qemu_rounding() {
        // qemu created 64 MiB as CHS 964/8/17 and 100,000,000 bytes as 100,061,184 bytes.
        let g = Geometry::for_sectors(67_125_248 / 512);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (964, 8, 17));
        assert_eq!(g.bytes(), 67_125_248);
        assert!(Geometry::for_sectors(100_000_000 / 512).bytes() <= 100_000_000);
        assert_eq!(Geometry::for_sectors(u64::MAX), Geometry::MAX);
    }

    #[test]
    fn size_rule_follows_qemu() {
        let mut f = sample();
        f.current_size = 1 << 30;
        assert_eq!(f.virtual_size(), 67_125_248);
        f.creator_app = *b"win ";
        assert_eq!(f.virtual_size(), 1 << 30);
        f.creator_app = *b"vpc ";
        f.geometry = Geometry::MAX;
        assert_eq!(f.virtual_size(), 1 << 30);
    }

    proptest! {
        #[test]
        fn parse_encode_round_trips(
            features in any::<u32>(), data_offset in any::<u64>(), ts in any::<u32>(),
            app in any::<[u8; 4]>(), cs in any::<u64>(), cyl in any::<u16>(), h in any::<u8>(),
            s in any::<u8>(), t in 2u32..5, id in any::<[u8; 16]>(),
        ) {
            let f = Footer {
                features, data_offset, timestamp: ts, creator_app: app, creator_version: 1,
                creator_os: *b"Wi2k", original_size: cs, current_size: cs,
                geometry: Geometry { cylinders: cyl, heads: h, sectors_per_track: s },
                disk_type: DiskType::from_code(t).unwrap(), unique_id: id, saved_state: 1,
            };
            prop_assert_eq!(Footer::parse(&f.encode()).unwrap(), f);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Footer::parse(&bytes);
        }
    }
}
