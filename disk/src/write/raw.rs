//! Raw output: a stream with zeros written out, or a sparse local file with holes.
//!
//! The sparse-file writer copies data that the source stores verbatim in a local file (raw,
//! flat extents, uncompressed sparse grains: [`BlockSource::stored`]) with `copy_file_range`,
//! file to file in the kernel, as `cp` does. Everything else (compressed grains, remote
//! sources) goes through buffers: one thread fills them from the source (inflating in
//! parallel), another writes them, skipping all-zero 4 KiB blocks so they stay holes, as
//! `qemu-img convert` does. Buffers are recycled, so memory is a few chunks whatever the disk
//! size.

use crate::error::{Error, Result};
use crate::layer::{BlockSource, RunState, Stored};
use crate::write::{Runs, WriteStats, is_zero};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

/// Copy buffer: large sequential reads keep I/O-bound formats near plain-copy speed.
pub const COPY_BUF: usize = 8 << 20;
/// Chunks in flight between the reader and the writer.
const IN_FLIGHT: usize = 3;
/// Zero blocks smaller than this are written out rather than left as holes.
pub const HOLE_BLOCK: usize = 4096;

/// Write every byte of `src` to `out` (zero runs as zeros).
pub fn write_stream(src: &dyn BlockSource, out: &mut dyn Write) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    let mut buf = vec![0u8; COPY_BUF];
    let zeros = vec![0u8; COPY_BUF];
    for run in Runs::new(src) {
        let run = run?;
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

/// Write `src` into a local file, leaving zero runs (and all-zero 4 KiB blocks of data) as
/// holes; the file ends at the virtual size.
pub fn write_sparse_file(src: &dyn BlockSource, out: &File, name: &str) -> Result<WriteStats> {
    let size = src.virtual_size();
    // Truncate only when needed: on ext4, truncating to zero marks the file for a forced
    // writeback at close (auto_da_alloc), which costs as much as the copy itself.
    if out.metadata().map(|m| m.len()).unwrap_or(1) > 0 {
        out.set_len(0).map_err(|e| Error::io(name, "truncate", e))?;
    }
    let (full_tx, full_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let mut stats = WriteStats::default();
    let written = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<u64> {
            let mut written = 0u64;
            for (off, buf) in full_rx {
                written += write_nonzero(out, name, off, &buf)?;
                // The reader may have finished; a closed channel is fine.
                let _ = free_tx.send(buf);
            }
            Ok(written)
        });
        let mut allocated = 0usize;
        let mut kernel_copy = true;
        let mut copied = 0u64;
        let read_result = (|| -> Result<()> {
            for run in Runs::new(src) {
                let run = run?;
                if run.state != RunState::Data {
                    continue;
                }
                let mut off = run.offset;
                while off < run.end() {
                    let n =
                        usize::try_from((run.end() - off).min(COPY_BUF as u64)).unwrap_or(COPY_BUF);
                    if kernel_copy && let Some(pieces) = src.stored(off, n as u64)? {
                        match copy_stored(&pieces, out) {
                            Copy::Done(bytes) => {
                                stats.data_bytes += n as u64;
                                copied += bytes;
                                off += n as u64;
                                continue;
                            }
                            // Not possible here (another file system, say): buffers from now on.
                            Copy::Unsupported => kernel_copy = false,
                            // Let the buffered path read it and report the real error.
                            Copy::Failed => {}
                        }
                    }
                    let mut buf = match free_rx.try_recv() {
                        Ok(b) => b,
                        Err(_) if allocated < IN_FLIGHT + 2 => {
                            allocated += 1;
                            Vec::with_capacity(COPY_BUF)
                        }
                        Err(_) => match free_rx.recv() {
                            Ok(b) => b,
                            // The writer stopped early: its error is reported below.
                            Err(_) => return Ok(()),
                        },
                    };
                    buf.resize(n, 0);
                    src.read_at(off, &mut buf)?;
                    stats.data_bytes += n as u64;
                    if full_tx.send((off, buf)).is_err() {
                        return Ok(());
                    }
                    off += n as u64;
                }
            }
            Ok(())
        })();
        drop(full_tx);
        let w = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Usage("raw writer thread panicked".into())));
        read_result.and(w).map(|w| w + copied)
    })?;
    stats.written_bytes = written;
    out.set_len(size)
        .map_err(|e| Error::io(name, "set length", e))?;
    Ok(stats)
}

enum Copy {
    Done(u64),
    Unsupported,
    Failed,
}

/// Copy verbatim-stored pieces into `out` at their disk offsets with `copy_file_range`.
fn copy_stored(pieces: &[Stored], out: &File) -> Copy {
    use rustix::io::Errno;
    let mut total = 0u64;
    for p in pieces {
        let Some(src) = p.file.as_file() else {
            return Copy::Unsupported;
        };
        let (mut in_off, mut out_off) = (p.file_offset, p.offset);
        let mut left = p.len;
        while left > 0 {
            let want = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
            match rustix::fs::copy_file_range(src, Some(&mut in_off), out, Some(&mut out_off), want)
            {
                Ok(0) => return Copy::Failed,
                Ok(n) => left -= n as u64,
                Err(Errno::INTR) => {}
                Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL | Errno::BADF) => {
                    return Copy::Unsupported;
                }
                Err(_) => return Copy::Failed,
            }
        }
        total += p.len;
    }
    Copy::Done(total)
}

/// Write the non-zero 4 KiB blocks of `buf` at `off`, coalescing neighbours; returns bytes
/// written.
fn write_nonzero(out: &File, name: &str, off: u64, buf: &[u8]) -> Result<u64> {
    let mut written = 0u64;
    let mut i = 0usize;
    while i < buf.len() {
        // Skip zero blocks.
        while i < buf.len() && is_zero(&buf[i..(i + HOLE_BLOCK).min(buf.len())]) {
            i += HOLE_BLOCK;
        }
        if i >= buf.len() {
            break;
        }
        let start = i;
        while i < buf.len() && !is_zero(&buf[i..(i + HOLE_BLOCK).min(buf.len())]) {
            i += HOLE_BLOCK;
        }
        let end = i.min(buf.len());
        out.write_all_at(&buf[start..end], off + start as u64)
            .map_err(|e| Error::io(name, "write", e))?;
        written += (end - start) as u64;
    }
    Ok(written)
}
