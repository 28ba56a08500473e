//! Raw output: a stream with zeros written out, or a sparse local file with holes.

use crate::error::{Error, Result};
use crate::layer::{BlockSource, RunState};
use crate::write::WriteStats;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// Copy buffer: large sequential reads keep I/O-bound formats near plain-copy speed.
pub const COPY_BUF: usize = 4 << 20;

/// Write every byte of `src` to `out` (zero runs as zeros).
pub fn write_stream(src: &dyn BlockSource, out: &mut dyn Write) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    let mut buf = vec![0u8; COPY_BUF];
    let zeros = vec![0u8; COPY_BUF];
    for run in src.map(0, src.virtual_size())? {
        let mut off = run.offset;
        while off < run.end() {
            let n = usize::try_from((run.end() - off).min(COPY_BUF as u64)).unwrap_or(COPY_BUF);
            let chunk: &[u8] = if run.state == RunState::Data {
                src.read_at(off, &mut buf[..n])?;
                stats.data_bytes += n as u64;
                &buf[..n]
            } else {
                &zeros[..n]
            };
            out.write_all(chunk)
                .map_err(|e| Error::io("output", "write", e))?;
            stats.written_bytes += n as u64;
            off += n as u64;
        }
    }
    Ok(stats)
}

/// Write `src` into a local file, leaving zero runs as holes; the file ends at the virtual size.
pub fn write_sparse_file(src: &dyn BlockSource, out: &File, name: &str) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    let size = src.virtual_size();
    out.set_len(0).map_err(|e| Error::io(name, "truncate", e))?;
    let mut buf = vec![0u8; COPY_BUF];
    for run in src.map(0, size)? {
        if run.state != RunState::Data {
            continue;
        }
        let mut off = run.offset;
        while off < run.end() {
            let n = usize::try_from((run.end() - off).min(COPY_BUF as u64)).unwrap_or(COPY_BUF);
            src.read_at(off, &mut buf[..n])?;
            out.write_all_at(&buf[..n], off)
                .map_err(|e| Error::io(name, "write", e))?;
            stats.data_bytes += n as u64;
            stats.written_bytes += n as u64;
            off += n as u64;
        }
    }
    out.set_len(size)
        .map_err(|e| Error::io(name, "set length", e))?;
    Ok(stats)
}
