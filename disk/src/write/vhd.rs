//! VHD writer (dynamic and fixed).

use crate::error::{Error, Result};
use crate::layer::BlockSource;
use crate::write::WriteStats;
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dynamic,
    Fixed,
}

pub fn write(_src: &dyn BlockSource, _kind: Kind, _out: &mut dyn Write) -> Result<WriteStats> {
    Err(Error::Usage("VHD writer not built yet".into()))
}
