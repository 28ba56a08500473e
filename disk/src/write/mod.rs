//! Image writers. Each consumes a [`BlockSource`] and streams an image to any `Write`, so the
//! same code writes local files and S3 multipart uploads. Only data runs are read, and the
//! allocation map is walked in windows ([`Runs`]) so memory stays bounded on huge disks.

use crate::error::{Error, Result};
use crate::layer::{BlockSource, Run, RunState};
use std::collections::VecDeque;
use std::io::Write;

pub mod direct;
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

/// Writer options from `-o key=value,...` (besides `subformat`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    pub vmdk: vmdk_stream::Options,
}

/// Parse `-O FORMAT -o key=value,...`. Keys: `subformat` (all formats); for vmdk also
/// `adapter_type`, `hwversion`, `compression_level` (1-12) and `cid` (hex).
pub fn parse_output(format: &str, options: &[String]) -> Result<(OutputFormat, WriteOptions)> {
    let mut subformat = None;
    let mut opts = WriteOptions::default();
    for item in options.iter().flat_map(|o| o.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("option {item:?} is not key=value")))?;
        match (format, k) {
            (_, "subformat") => subformat = Some(v.to_string()),
            ("vmdk", _) => opts.vmdk.set(k, v)?,
            (f, k) => {
                return Err(Error::Usage(format!("format {f} has no option {k}")));
            }
        }
    }
    Ok((OutputFormat::parse(format, subformat.as_deref())?, opts))
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
    write_image_with(src, format, &WriteOptions::default(), out)
}

/// [`write_image`] with options.
pub fn write_image_with(
    src: &dyn BlockSource,
    format: OutputFormat,
    opts: &WriteOptions,
    out: &mut dyn Write,
) -> Result<WriteStats> {
    match format {
        OutputFormat::Raw => raw::write_stream(src, out),
        OutputFormat::VmdkStream => vmdk_stream::write_with(src, &opts.vmdk, out),
        OutputFormat::VhdxDynamic => vhdx::write(src, vhdx::Kind::Dynamic, out),
        OutputFormat::VhdxFixed => vhdx::write(src, vhdx::Kind::Fixed, out),
        OutputFormat::VhdDynamic => vhd::write(src, vhd::Kind::Dynamic, out),
        OutputFormat::VhdFixed => vhd::write(src, vhd::Kind::Fixed, out),
    }
}

/// Write an image of `src` in `format` into a local file (`name` for messages), replacing what
/// it holds. Raw output is sparse ([`raw::write_sparse_file`]); dynamic VHD and VHDX are
/// written in one pass with positional writes, so blocks that hold only zeros stay unallocated
/// ([`vhd::write_file`], [`vhdx::write_file`]); the other formats are streamed into the file
/// ([`direct::DirectStream`]).
/// The caller syncs the file if it needs to.
pub fn write_image_to_file(
    src: &dyn BlockSource,
    format: OutputFormat,
    opts: &WriteOptions,
    out: &std::fs::File,
    name: &str,
) -> Result<WriteStats> {
    match format {
        OutputFormat::Raw => raw::write_sparse_file(src, out, name),
        OutputFormat::VhdDynamic => vhd::write_file(src, out, name),
        OutputFormat::VhdxDynamic => vhdx::write_file(src, out, name),
        _ => {
            if out.metadata().map(|m| m.len()).unwrap_or(1) > 0 {
                out.set_len(0).map_err(|e| Error::io(name, "truncate", e))?;
            }
            // Streamed formats go through one aligned buffer with `O_DIRECT` where the file
            // system allows it (no copy into the page cache), else through a `BufWriter`.
            if let Some(mut w) = direct::DirectStream::new(out) {
                let stats = write_image_with(src, format, opts, &mut w)?;
                w.finish().map_err(|e| Error::io(name, "write", e))?;
                return Ok(stats);
            }
            let mut w = std::io::BufWriter::with_capacity(4 << 20, out);
            let stats = write_image_with(src, format, opts, &mut w)?;
            w.flush().map_err(|e| Error::io(name, "write", e))?;
            Ok(stats)
        }
    }
}

/// How much of the disk one allocation-map query covers.
pub const MAP_WINDOW: u64 = 1 << 30;

/// The runs of a whole source, queried one [`MAP_WINDOW`] at a time so that a fragmented
/// multi-terabyte disk never needs its whole map in memory. Adjacent runs of the same state
/// are merged across windows.
pub struct Runs<'a> {
    src: &'a dyn BlockSource,
    pos: u64,
    end: u64,
    window: u64,
    queue: VecDeque<Run>,
}

impl<'a> Runs<'a> {
    pub fn new(src: &'a dyn BlockSource) -> Self {
        Self::range(src, 0, src.virtual_size())
    }

    pub fn range(src: &'a dyn BlockSource, start: u64, end: u64) -> Self {
        Runs {
            src,
            pos: start,
            end,
            window: MAP_WINDOW,
            queue: VecDeque::new(),
        }
    }

    /// Use a different window (tests).
    pub fn with_window(mut self, window: u64) -> Self {
        self.window = window.max(1);
        self
    }

    fn fill(&mut self) -> Result<()> {
        while self.queue.len() < 2 && self.pos < self.end {
            let n = (self.end - self.pos).min(self.window);
            let runs = self.src.map(self.pos, n)?;
            self.pos += n;
            for r in runs {
                match self.queue.back_mut() {
                    Some(last) if last.state == r.state && last.end() == r.offset => {
                        last.len += r.len
                    }
                    _ if r.len > 0 => self.queue.push_back(r),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl Iterator for Runs<'_> {
    type Item = Result<Run>;

    fn next(&mut self) -> Option<Result<Run>> {
        if let Err(e) = self.fill() {
            self.pos = self.end;
            self.queue.clear();
            return Some(Err(e));
        }
        // `fill` keeps two runs queued while windows remain, so the last one can still grow
        // into the next window before it is handed out.
        self.queue.pop_front().map(Ok)
    }
}

/// Bytes of `src` held in data runs (what a converter must read).
pub fn allocated_bytes(src: &dyn BlockSource) -> Result<u64> {
    let mut n = 0;
    for r in Runs::new(src) {
        let r = r?;
        if r.state == RunState::Data {
            n += r.len;
        }
    }
    Ok(n)
}

/// Whether a buffer is all zeros. OR-folds 256-byte blocks, which the compiler turns into
/// SIMD, and stops at the first non-zero block.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(256);
    for b in &mut blocks {
        if b.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::push_run;

    struct Fake {
        size: u64,
        runs: Vec<Run>,
    }
    impl BlockSource for Fake {
        fn virtual_size(&self) -> u64 {
            self.size
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
            let mut v = Vec::new();
            for r in &self.runs {
                let s = r.offset.max(offset);
                let e = r.end().min(offset + len);
                if s < e {
                    push_run(
                        &mut v,
                        Run {
                            offset: s,
                            len: e - s,
                            state: r.state,
                        },
                    );
                }
            }
            Ok(v)
        }
        fn read_at(&self, _: u64, buf: &mut [u8]) -> Result<()> {
            buf.fill(1);
            Ok(())
        }
    }

    #[test]
    fn runs_merge_across_windows() {
        let f = Fake {
            size: 100,
            runs: vec![
                Run {
                    offset: 0,
                    len: 35,
                    state: RunState::Data,
                },
                Run {
                    offset: 35,
                    len: 65,
                    state: RunState::Zero,
                },
            ],
        };
        let got: Vec<Run> = Runs::new(&f)
            .with_window(10)
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(got, f.runs);
        assert_eq!(allocated_bytes(&f).unwrap(), 35);
    }

    #[test]
    fn options_parse() {
        let (f, o) = parse_output(
            "vmdk",
            &[
                "subformat=streamOptimized,adapter_type=ide".into(),
                "hwversion=14".into(),
            ],
        )
        .unwrap();
        assert_eq!(f, OutputFormat::VmdkStream);
        assert_eq!(o.vmdk.adapter_type, "ide");
        assert_eq!(o.vmdk.hw_version, "14");
        assert!(parse_output("vmdk", &["subformat=monolithicFlat".into()]).is_err());
        assert!(parse_output("vmdk", &["adapter_type=floppy".into()]).is_err());
        assert!(parse_output("raw", &["adapter_type=ide".into()]).is_err());
        assert!(parse_output("vhdx", &["subformat=fixed".into()]).is_ok());
    }

    #[test]
    fn zero_check() {
        assert!(is_zero(&[0u8; 4099]));
        let mut b = vec![0u8; 4099];
        b[4098] = 1;
        assert!(!is_zero(&b));
        b[4098] = 0;
        b[17] = 1;
        assert!(!is_zero(&b));
        assert!(is_zero(&[]));
    }
}
