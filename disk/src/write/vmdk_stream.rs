//! streamOptimized VMDK writer, VMware layout (version 3, GD at the end, footer, EOS).

use crate::error::{Error, Result};
use crate::layer::BlockSource;
use crate::write::WriteStats;
use std::io::Write;

pub fn write(_src: &dyn BlockSource, _out: &mut dyn Write) -> Result<WriteStats> {
    Err(Error::Usage(
        "streamOptimized VMDK writer not built yet".into(),
    ))
}
