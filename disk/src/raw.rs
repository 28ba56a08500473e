//! Raw images and block devices: the virtual size is the file size, and every byte is data
//! except the holes of a sparse local file, which map as [`RunState::Zero`] and are never read.
//!
//! Holes are found with `SEEK_DATA` / `SEEK_HOLE` (through `rustix`, no `unsafe`). Handles that
//! cannot answer (memory files, remote datastores, block devices, file systems without
//! support) report everything as data, which is always correct, only slower.

use crate::error::{Error, Result};
use crate::layer::{Format, Identity, Layer, LayerInfo, Run, RunState, Stored, push_run};
use crate::storage::Opened;
use std::fs::File;

pub struct RawLayer {
    info: LayerInfo,
    src: Opened,
}

impl RawLayer {
    pub fn open(src: Opened) -> Result<Self> {
        let size = src
            .file
            .size()
            .map_err(|e| Error::io(&src.name, "size", e))?;
        Ok(RawLayer {
            info: LayerInfo {
                file: src.name.clone(),
                format: Format::Raw,
                subformat: "raw".into(),
                virtual_size: size,
                logical_sector_size: 512,
                files: vec![src.name.clone()],
                identity: Identity::None,
                parent: None,
            },
            src,
        })
    }
}

/// Runs for `[offset, offset + len)` given the data ranges a handle reported (or `None`: all
/// data). Pure, so it can be tested without a file system.
pub fn runs_from_data_ranges(offset: u64, len: u64, data: Option<&[(u64, u64)]>) -> Vec<Run> {
    let end = offset + len;
    let Some(data) = data else {
        let mut v = Vec::new();
        push_run(
            &mut v,
            Run {
                offset,
                len,
                state: RunState::Data,
            },
        );
        return v;
    };
    let mut runs = Vec::new();
    let mut pos = offset;
    for &(s, e) in data {
        let s = s.clamp(pos, end);
        let e = e.clamp(s, end);
        push_run(
            &mut runs,
            Run {
                offset: pos,
                len: s - pos,
                state: RunState::Zero,
            },
        );
        push_run(
            &mut runs,
            Run {
                offset: s,
                len: e - s,
                state: RunState::Data,
            },
        );
        pos = e;
    }
    push_run(
        &mut runs,
        Run {
            offset: pos,
            len: end - pos,
            state: RunState::Zero,
        },
    );
    runs
}

/// Data ranges of a local file within `[offset, offset + len)` by `SEEK_DATA`/`SEEK_HOLE`.
/// `None` when the file system or file type cannot tell.
pub fn file_data_ranges(file: &File, offset: u64, len: u64) -> Option<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    use rustix::io::Errno;
    let end = offset.checked_add(len)?;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        // The file offset is shared between threads, but every read here is positional and
        // `lseek` returns its result atomically, so concurrent callers do not disturb each other.
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data at or after `pos`: the rest is a hole (or past the end of the file).
            Err(Errno::NXIO) => break,
            Err(_) => return None,
        };
        if data >= end {
            break;
        }
        let hole = match seek(file, SeekFrom::Hole(data)) {
            Ok(h) => h,
            Err(_) => return None,
        };
        if hole <= data {
            // A file system that answers nonsense: do not trust it.
            return None;
        }
        out.push((data, hole.min(end)));
        pos = hole;
    }
    Some(out)
}

impl Layer for RawLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
        let ranges = self.src.file.data_ranges(offset, len);
        Ok(runs_from_data_ranges(offset, len, ranges.as_deref()))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.src
            .file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.src.name, "read", e))
    }

    fn stored(&self, offset: u64, len: u64) -> Result<Option<Vec<Stored>>> {
        Ok(Some(vec![Stored {
            offset,
            len,
            file: self.src.file.clone(),
            file_offset: offset,
        }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    #[test]
    fn runs_cover_the_range_with_holes_as_zero() {
        let r = runs_from_data_ranges(0, 100, Some(&[(10, 20), (50, 200)]));
        let states: Vec<_> = r.iter().map(|r| (r.offset, r.len, r.state)).collect();
        assert_eq!(
            states,
            vec![
                (0, 10, RunState::Zero),
                (10, 10, RunState::Data),
                (20, 30, RunState::Zero),
                (50, 50, RunState::Data)
            ]
        );
        let all = runs_from_data_ranges(5, 7, None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, RunState::Data);
        assert!(runs_from_data_ranges(5, 0, None).is_empty());
    }

    #[test]
    fn sparse_local_file_reports_its_holes() {
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        f.flush().unwrap();
        let Some(ranges) = file_data_ranges(&f, 0, 64 << 20) else {
            return; // file system without SEEK_DATA: nothing to check
        };
        let data: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        assert!((4096..64 << 20).contains(&data), "{ranges:?}");
        assert!(
            ranges
                .iter()
                .any(|&(s, e)| s <= (8 << 20) && e >= (8 << 20) + 4096)
        );
    }
}
