//! VHD: fixed, dynamic and differencing images (big-endian, Microsoft VHD specification).

use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::probe::Detected;
use crate::storage::Opened;

/// Open a VHD file as one layer.
pub fn open(src: Opened, _detected: Detected) -> Result<Box<dyn Layer>> {
    Err(Error::unsupported(
        &src.name,
        "vhd",
        "VHD reader not built yet",
    ))
}
