//! VHDX: fixed, dynamic and differencing images (MS-VHDX), log replay in memory.

use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::storage::Opened;

/// Open a VHDX file as one layer.
pub fn open(src: Opened) -> Result<Box<dyn Layer>> {
    Err(Error::unsupported(
        &src.name,
        "vhdx",
        "VHDX reader not built yet",
    ))
}
