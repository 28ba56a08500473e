//! Units: byte offsets and lengths, 512-byte sectors. Newtypes keep them apart.

use std::fmt;

/// Size of the sector every format here counts in (VMDK sectors, VHD sectors, VHDX 512e).
pub const SECTOR: u64 = 512;

/// An absolute byte position, in a virtual disk or in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteOffset(pub u64);

/// A number of 512-byte sectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SectorCount(pub u64);

impl SectorCount {
    /// Bytes covered by these sectors; `None` on overflow (absurd sizes from hostile headers).
    pub fn bytes(self) -> Option<u64> {
        self.0.checked_mul(SECTOR)
    }
}

impl ByteOffset {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:x})", self.0, self.0)
    }
}

impl fmt::Display for SectorCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sectors", self.0)
    }
}
