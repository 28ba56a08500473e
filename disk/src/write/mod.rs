//! Image writers. Each consumes a [`BlockSource`] and streams an image to any `Write`, so the
//! same code writes local files and S3 multipart uploads. Only data runs are read.

use crate::error::{Error, Result};
use crate::layer::{BlockSource, RunState};
use std::io::Write;

pub mod raw;
pub mod vhd;
pub mod vhdx;
pub mod vmdk_stream;

/// Output formats `godwit disk convert -O` and `godwit export --format` offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Raw,
    /// streamOptimized VMDK, VMware layout (version 3, grain directory at the end, footer).
    VmdkStream,
    VhdxDynamic,
    VhdxFixed,
    VhdDynamic,
    VhdFixed,
}

impl OutputFormat {
    /// Parse `-O FORMAT` with an optional `subformat=` option.
    pub fn parse(format: &str, subformat: Option<&str>) -> Result<Self> {
        let f = match (format, subformat) {
            ("raw", None) => OutputFormat::Raw,
            ("vmdk", None | Some("streamOptimized")) => OutputFormat::VmdkStream,
            ("vhdx", None | Some("dynamic")) => OutputFormat::VhdxDynamic,
            ("vhdx", Some("fixed")) => OutputFormat::VhdxFixed,
            ("vhd" | "vpc", None | Some("dynamic")) => OutputFormat::VhdDynamic,
            ("vhd" | "vpc", Some("fixed")) => OutputFormat::VhdFixed,
            (f, Some(s)) => {
                return Err(Error::Usage(format!("format {f} has no subformat {s}")));
            }
            (f, None) => {
                return Err(Error::Usage(format!(
                    "unknown output format {f} (raw, vmdk, vhdx, vhd)"
                )));
            }
        };
        Ok(f)
    }
}

/// What a writer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes of virtual disk read from the source (data runs only).
    pub data_bytes: u64,
    /// Bytes written to the output.
    pub written_bytes: u64,
}

/// Stream an image of `src` in `format` to `out`.
pub fn write_image(
    src: &dyn BlockSource,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<WriteStats> {
    match format {
        OutputFormat::Raw => raw::write_stream(src, out),
        OutputFormat::VmdkStream => vmdk_stream::write(src, out),
        OutputFormat::VhdxDynamic => vhdx::write(src, vhdx::Kind::Dynamic, out),
        OutputFormat::VhdxFixed => vhdx::write(src, vhdx::Kind::Fixed, out),
        OutputFormat::VhdDynamic => vhd::write(src, vhd::Kind::Dynamic, out),
        OutputFormat::VhdFixed => vhd::write(src, vhd::Kind::Fixed, out),
    }
}

/// Bytes of `src` held in data runs (what a converter must read).
pub fn allocated_bytes(src: &dyn BlockSource) -> Result<u64> {
    Ok(src
        .map(0, src.virtual_size())?
        .iter()
        .filter(|r| r.state == RunState::Data)
        .map(|r| r.len)
        .sum())
}
