//! VMDK: descriptors, hosted sparse extents, streamOptimized, flat and split extents, deltas.

use crate::error::{Error, Result};
use crate::layer::Layer;
use crate::probe::Detected;
use crate::storage::{Locator, Opened};

/// Open a VMDK file (descriptor or sparse extent with an embedded descriptor) as one layer.
pub fn open(_locator: &dyn Locator, src: Opened, _detected: Detected) -> Result<Box<dyn Layer>> {
    Err(Error::unsupported(
        &src.name,
        "vmdk",
        "VMDK reader not built yet",
    ))
}
