//! Where image bytes come from. Readers never touch `std::fs` directly: they read through
//! [`ReadAt`] handles that a [`Locator`] opens, so the same parsers serve local files, in-memory
//! buffers (tests, fuzzing) and remote datastores (vSphere `/folder` range reads).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Positional reads from one file. Implementations must be safe to call from several threads.
pub trait ReadAt: Send + Sync {
    /// Current length of the file in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fill `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The parts of `[offset, offset + len)` that may hold data, as sorted, disjoint
    /// `(start, end)` byte ranges; everything else reads as zeros (holes in a sparse file).
    /// `None` when the handle cannot tell, in which case callers treat the whole range as data.
    fn data_ranges(&self, _offset: u64, _len: u64) -> Option<Vec<(u64, u64)>> {
        None
    }
    /// The local file behind this handle, when there is one (for `copy_file_range`).
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl ReadAt for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn data_ranges(&self, offset: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        crate::raw::file_data_ranges(self, offset, len)
    }
    fn as_file(&self) -> Option<&File> {
        Some(self)
    }
}

/// An in-memory file (tests, fuzzing, small descriptors fetched over the network).
#[derive(Clone, Debug, Default)]
pub struct MemFile(pub Arc<Vec<u8>>);

impl MemFile {
    pub fn new(bytes: Vec<u8>) -> Self {
        MemFile(Arc::new(bytes))
    }
}

impl ReadAt for MemFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.0.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    )
}

/// A file opened through a [`Locator`]: the name it resolved to and a handle.
#[derive(Clone)]
pub struct Opened {
    /// Display and identity name (a path for local files). Used in errors and loop detection.
    pub name: String,
    pub file: Arc<dyn ReadAt>,
}

/// Opens files named by other files: extents named in a VMDK descriptor, parents named by
/// `parentFileNameHint`, VHD parent locators or VHDX `relative_path`.
pub trait Locator: Send + Sync {
    /// Open `name`. When `relative_to` is given (the name of the file that mentions `name`),
    /// a relative `name` is resolved against that file's directory.
    fn open(&self, name: &str, relative_to: Option<&str>) -> io::Result<Opened>;
}

/// Local files through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalFs;

impl LocalFs {
    fn resolve(name: &str, relative_to: Option<&str>) -> PathBuf {
        let p = Path::new(name);
        match relative_to {
            Some(base) if p.is_relative() => Path::new(base)
                .parent()
                .map_or_else(|| p.to_path_buf(), |dir| dir.join(p)),
            _ => p.to_path_buf(),
        }
    }
}

impl Locator for LocalFs {
    fn open(&self, name: &str, relative_to: Option<&str>) -> io::Result<Opened> {
        let path = Self::resolve(name, relative_to);
        let file = File::open(&path)?;
        Ok(Opened {
            name: path.to_string_lossy().into_owned(),
            file: Arc::new(file),
        })
    }
}

/// A set of named in-memory files; names are matched after stripping any directory part.
#[derive(Clone, Debug, Default)]
pub struct MemFs {
    files: HashMap<String, MemFile>,
}

impl MemFs {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, name: &str, bytes: Vec<u8>) {
        self.files
            .insert(base_name(name).to_string(), MemFile::new(bytes));
    }
}

/// The last path component, for either `/` or `\` separators (Windows parent locators).
pub fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

impl Locator for MemFs {
    fn open(&self, name: &str, _relative_to: Option<&str>) -> io::Result<Opened> {
        let key = base_name(name);
        let f = self
            .files
            .get(key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no file {key}")))?;
        Ok(Opened {
            name: key.to_string(),
            file: Arc::new(f.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfile_reads_and_refuses_past_end() {
        let f = MemFile::new(vec![1, 2, 3, 4]);
        let mut b = [0u8; 2];
        f.read_exact_at(&mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        assert!(f.read_exact_at(&mut b, 3).is_err());
        assert!(f.read_exact_at(&mut b, u64::MAX).is_err());
    }

    #[test]
    fn local_resolves_relative_to_the_mentioning_file() {
        let p = LocalFs::resolve("child.vmdk", Some("/a/b/parent.vmdk"));
        assert_eq!(p, PathBuf::from("/a/b/child.vmdk"));
        let p = LocalFs::resolve("/x/y.vmdk", Some("/a/b/parent.vmdk"));
        assert_eq!(p, PathBuf::from("/x/y.vmdk"));
    }

    #[test]
    fn base_name_handles_windows_paths() {
        assert_eq!(base_name(r"C:\VMs\disk.vhdx"), "disk.vhdx");
        assert_eq!(base_name("dir/disk.vhd"), "disk.vhd");
    }
}
