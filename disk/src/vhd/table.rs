//! A block allocation table read on demand in pages, with a bounded cache (VHD and VHDX).
//!
//! A 2040 GiB VHD with 512-byte blocks or a 64 TiB VHDX with 1 MiB blocks has a table of
//! hundreds of MiB; only the pages a reader touches are held, at most [`MAX_PAGES`] at a time.

use crate::error::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bytes per cached page.
pub const PAGE_BYTES: u64 = 64 * 1024;
/// Pages kept at most (16 MiB).
pub const MAX_PAGES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// VHD: big-endian u32.
    U32Be,
    /// VHDX: little-endian u64.
    U64Le,
}

impl EntryKind {
    fn size(self) -> u64 {
        match self {
            EntryKind::U32Be => 4,
            EntryKind::U64Le => 8,
        }
    }
}

/// Reads `buf.len()` bytes of the image file at an offset.
pub type ReadFn<'a> = &'a (dyn Fn(u64, &mut [u8]) -> Result<()> + Sync);

pub struct PagedTable {
    /// File offset of entry 0.
    pub offset: u64,
    pub entries: u64,
    pub kind: EntryKind,
    pages: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl PagedTable {
    pub fn new(offset: u64, entries: u64, kind: EntryKind) -> Self {
        PagedTable {
            offset,
            entries,
            kind,
            pages: Mutex::new(HashMap::new()),
        }
    }

    /// Table length in bytes.
    pub fn byte_len(&self) -> u64 {
        self.entries * self.kind.size()
    }

    /// File offset of entry `index`.
    pub fn entry_offset(&self, index: u64) -> u64 {
        self.offset + index * self.kind.size()
    }

    /// Entry `index` (must be below `entries`).
    pub fn entry(&self, index: u64, read: ReadFn<'_>) -> Result<u64> {
        let esz = self.kind.size();
        let byte = index * esz;
        let page_no = byte / PAGE_BYTES;
        let page = self.page(page_no, read)?;
        let at = usize::try_from(byte % PAGE_BYTES).unwrap_or(0);
        let b = &page[at..];
        Ok(match self.kind {
            EntryKind::U32Be => u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            EntryKind::U64Le => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[..8]);
                u64::from_le_bytes(a)
            }
        })
    }

    fn page(&self, page_no: u64, read: ReadFn<'_>) -> Result<Arc<Vec<u8>>> {
        if let Some(p) = self.lock().get(&page_no) {
            return Ok(p.clone());
        }
        let start = page_no * PAGE_BYTES;
        let len = (self.byte_len() - start).min(PAGE_BYTES);
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read(self.offset + start, &mut buf)?;
        let page = Arc::new(buf);
        let mut pages = self.lock();
        if pages.len() >= MAX_PAGES {
            // Readers walk the table mostly in order: dropping everything is simple and keeps
            // memory bounded.
            pages.clear();
        }
        pages.insert(page_no, page.clone());
        Ok(page)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<u8>>>> {
        self.pages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries_across_pages_and_stays_bounded() {
        let entries = PAGE_BYTES / 4 * (MAX_PAGES as u64 + 3);
        let data: Vec<u8> = (0..entries)
            .flat_map(|i| u32::try_from(i).unwrap().to_be_bytes())
            .collect();
        let t = PagedTable::new(100, entries, EntryKind::U32Be);
        let read = |off: u64, buf: &mut [u8]| {
            let s = usize::try_from(off - 100).unwrap();
            buf.copy_from_slice(&data[s..s + buf.len()]);
            Ok(())
        };
        for i in (0..entries).step_by(1000) {
            assert_eq!(t.entry(i, &read).unwrap(), i);
        }
        assert_eq!(t.entry(entries - 1, &read).unwrap(), entries - 1);
        assert!(t.lock().len() <= MAX_PAGES);
    }
}
