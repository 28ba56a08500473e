//! Raw output: a stream with zeros written out, or a sparse local file with holes.
//!
//! Where the output takes `O_DIRECT` ([`super::direct`]), everything goes through aligned
//! buffers and whole 4 KiB blocks go to the disk without a copy into the page cache: on this
//! kind of VM that copy cost more than inflating (streamOptimized → raw of the bench image:
//! 2.76 s → 0.26 s of system CPU), and more than `copy_file_range` saves (monolithicSparse →
//! raw: 4.62 s → 0.35-0.50 s of system CPU, `cp --sparse=auto` 0.42-0.48 s). Else data that
//! the source stores verbatim in a local file (raw, flat extents, uncompressed sparse grains:
//! [`BlockSource::stored`]) is copied with `copy_file_range`, file to file in the kernel, as
//! `cp` does. Everything else (compressed grains, remote sources) goes through buffers, skipping all-zero 4 KiB blocks so they stay holes, as
//! `qemu-img convert` does: a source that can be read in parallel ([`BlockSource::parallel_reads`],
//! local images) is read, inflated and written by every core at once, each on its own 8 MiB
//! piece; any other is read in disk order by one thread (inflating in parallel) while another
//! writes. Buffers are recycled, so memory is a few pieces whatever the disk size.

use crate::error::{Error, Result};
use crate::layer::{BlockSource, RunState, Stored};
use crate::write::direct::{AlignedBuf, PosWriter};
use crate::write::{Runs, WriteStats, is_zero};
use std::fs::File;
use std::io::Write;
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
    let pos = PosWriter::new(out);
    let stats = if src.parallel_reads() {
        write_sparse_parallel(src, out, &pos, name)?
    } else {
        write_sparse_in_order(src, out, &pos, name)?
    };
    out.set_len(size)
        .map_err(|e| Error::io(name, "set length", e))?;
    Ok(stats)
}

/// The data runs of `src` cut into pieces of at most [`COPY_BUF`] bytes.
fn pieces(src: &dyn BlockSource) -> impl Iterator<Item = Result<(u64, usize)>> + Send + '_ {
    Runs::new(src)
        .filter(|r| !matches!(r, Ok(r) if r.state != RunState::Data))
        .flat_map(|r| {
            let v: Vec<Result<(u64, usize)>> = match r {
                Err(e) => vec![Err(e)],
                Ok(run) => (run.offset..run.end())
                    .step_by(COPY_BUF)
                    .map(|off| {
                        let n = (run.end() - off).min(COPY_BUF as u64);
                        Ok((off, usize::try_from(n).unwrap_or(COPY_BUF)))
                    })
                    .collect(),
            };
            v
        })
}

/// Every core reads (and inflates) its own pieces and writes them positionally: for sources
/// whose reads may run in parallel and out of order ([`BlockSource::parallel_reads`]).
fn write_sparse_parallel(
    src: &dyn BlockSource,
    out: &File,
    pos: &PosWriter<'_>,
    name: &str,
) -> Result<WriteStats> {
    use rayon::iter::{ParallelBridge, ParallelIterator};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    thread_local! {
        static BUF: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
    }
    let kernel_copy = AtomicBool::new(!pos.is_direct());
    let data = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    pieces(src).par_bridge().try_for_each(|p| -> Result<()> {
        let (off, n) = p?;
        if kernel_copy.load(Ordering::Relaxed)
            && let Some(stored) = src.stored(off, n as u64)?
        {
            match copy_stored(&stored, out) {
                Copy::Done(bytes) => {
                    data.fetch_add(n as u64, Ordering::Relaxed);
                    written.fetch_add(bytes, Ordering::Relaxed);
                    return Ok(());
                }
                Copy::Unsupported => kernel_copy.store(false, Ordering::Relaxed),
                Copy::Failed => {}
            }
        }
        BUF.with(|b| {
            let mut b = b.borrow_mut();
            let b = b.get_or_insert_with(|| AlignedBuf::new(COPY_BUF));
            let b = b.get_mut(n);
            src.read_at(off, b)?;
            data.fetch_add(n as u64, Ordering::Relaxed);
            written.fetch_add(write_nonzero(pos, name, off, b)?, Ordering::Relaxed);
            Ok(())
        })
    })?;
    Ok(WriteStats {
        data_bytes: data.into_inner(),
        written_bytes: written.into_inner(),
    })
}

/// One thread reads the pieces in disk order (inflating in parallel), another writes them.
fn write_sparse_in_order(
    src: &dyn BlockSource,
    out: &File,
    pos: &PosWriter<'_>,
    name: &str,
) -> Result<WriteStats> {
    let (full_tx, full_rx) = mpsc::sync_channel::<(u64, usize, AlignedBuf)>(IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
    let mut stats = WriteStats::default();
    let written = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<u64> {
            let mut written = 0u64;
            for (off, n, buf) in full_rx {
                written += write_nonzero(pos, name, off, buf.get(n))?;
                // The reader may have finished; a closed channel is fine.
                let _ = free_tx.send(buf);
            }
            Ok(written)
        });
        let mut allocated = 0usize;
        let mut kernel_copy = !pos.is_direct();
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
                            AlignedBuf::new(COPY_BUF)
                        }
                        Err(_) => match free_rx.recv() {
                            Ok(b) => b,
                            // The writer stopped early: its error is reported below.
                            Err(_) => return Ok(()),
                        },
                    };
                    src.read_at(off, buf.get_mut(n))?;
                    stats.data_bytes += n as u64;
                    if full_tx.send((off, n, buf)).is_err() {
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
fn write_nonzero(out: &PosWriter<'_>, name: &str, off: u64, buf: &[u8]) -> Result<u64> {
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
