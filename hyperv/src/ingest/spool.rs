//! Where pushed ranges land: one sparse file per host file (bytes at their file offsets) and
//! a journal of the ranges it holds. A push is written and `fdatasync`ed, THEN its journal
//! record is appended and synced, so after a `kill -9` or a power loss the journal names only
//! ranges whose bytes are on disk (a torn last record is ignored; each record's data is
//! re-checked against its SHA-256 when the spool is reopened).
//!
//! A spool is keyed by the host file's path and length and the checkpoint that froze it (not
//! the file's last-write time, which a merge after a removed checkpoint changes): a retry that
//! keeps its checkpoint finds its spool again; another checkpoint gets a new, empty one.
//!
//! Every byte held counts against the cycle's [`SpoolBudget`]; bytes the transfer has read are
//! [released](SpoolFile::release): taken out of the set held and punched out of the file, so the
//! spool holds a bounded window of the disk whatever its size.

use super::budget::SpoolBudget;
use super::ranges::RangeSet;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Size of one journal record.
pub const RECORD_BYTES: usize = 56;
const MAGIC: &[u8; 4] = b"GWJ1";
/// Punch-hole granularity.
const PAGE: u64 = 4096;

/// One journal record: `[offset, offset + len)` holds bytes with this SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub len: u64,
    pub sha256: [u8; 32],
}

/// `GWJ1`, offset (u64 LE), len (u64 LE), SHA-256 of the data, and the first 4 bytes of the
/// SHA-256 of the 52 bytes before them (detects a torn or foreign record).
pub fn encode_record(r: &Record) -> [u8; RECORD_BYTES] {
    let mut b = [0u8; RECORD_BYTES];
    b[..4].copy_from_slice(MAGIC);
    b[4..12].copy_from_slice(&r.offset.to_le_bytes());
    b[12..20].copy_from_slice(&r.len.to_le_bytes());
    b[20..52].copy_from_slice(&r.sha256);
    let check = Sha256::digest(&b[..52]);
    b[52..].copy_from_slice(&check[..4]);
    b
}

/// The valid records at the start of a journal and the length they span (a torn or damaged
/// tail ends the journal there).
pub fn parse_journal(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut valid = 0;
    for chunk in bytes.chunks_exact(RECORD_BYTES) {
        if &chunk[..4] != MAGIC || Sha256::digest(&chunk[..52])[..4] != chunk[52..] {
            break;
        }
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&chunk[r]);
            u64::from_le_bytes(w)
        };
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&chunk[20..52]);
        out.push(Record {
            offset: word(4..12),
            len: word(12..20),
            sha256,
        });
        valid += RECORD_BYTES;
    }
    (out, valid)
}

/// The spool of one host file.
pub struct SpoolFile {
    /// The host file (Windows path).
    pub name: String,
    pub len: u64,
    data_path: PathBuf,
    journal_path: PathBuf,
    data: File,
    journal: Mutex<File>,
    received: Mutex<RangeSet>,
    /// Bytes taken out again (punched out of the data file).
    released: Mutex<RangeSet>,
    budget: Arc<SpoolBudget>,
}

impl std::fmt::Debug for SpoolFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolFile")
            .field("name", &self.name)
            .field("data", &self.data_path)
            .finish_non_exhaustive()
    }
}

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("spool {}: {what}: {e}", path.display()))
}

/// The spool files' stem for a host file of this path, length and version (the checkpoint).
pub fn spool_key(name: &str, len: u64, version: &str) -> String {
    let h = Sha256::digest(format!("{}\n{len}\n{version}", name.to_lowercase()));
    hex::encode(&h[..16])
}

impl SpoolFile {
    /// Open (or create) the spool of host file `name` (`len` bytes, `version` = the checkpoint
    /// that froze it) under `dir`, with the ranges an earlier run stored and verified (counted
    /// against `budget`).
    pub fn open(
        dir: &Path,
        name: &str,
        len: u64,
        version: &str,
        budget: Arc<SpoolBudget>,
    ) -> io::Result<SpoolFile> {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, "create", e))?;
        let key = spool_key(name, len, version);
        let data_path = dir.join(format!("{key}.data"));
        let journal_path = dir.join(format!("{key}.journal"));
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(|e| err(&data_path, "open", e))?;
        if data.metadata()?.len() != len {
            data.set_len(len).map_err(|e| err(&data_path, "size", e))?;
        }
        let mut journal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(|e| err(&journal_path, "open", e))?;
        let bytes = std::fs::read(&journal_path).map_err(|e| err(&journal_path, "read", e))?;
        let (records, valid) = parse_journal(&bytes);
        if valid != bytes.len() {
            tracing::warn!(journal = %journal_path.display(), kept = valid, dropped = bytes.len() - valid, "torn spool journal tail dropped");
            journal
                .set_len(valid as u64)
                .map_err(|e| err(&journal_path, "truncate", e))?;
            journal.flush()?;
        }
        let mut received = RangeSet::new();
        for r in records {
            let ok = r.offset.checked_add(r.len).is_some_and(|e| e <= len)
                && usize::try_from(r.len).is_ok_and(|n| {
                    let mut buf = vec![0u8; n];
                    data.read_exact_at(&mut buf, r.offset).is_ok()
                        && Sha256::digest(&buf).as_slice() == r.sha256
                });
            if ok {
                received.insert(r.offset, r.offset + r.len);
            } else {
                tracing::debug!(spool = %data_path.display(), offset = r.offset, len = r.len, "spooled range does not match its journal record (released or damaged); asking again");
            }
        }
        budget.add_held(received.total());
        Ok(SpoolFile {
            name: name.to_string(),
            len,
            data_path,
            journal_path,
            data,
            journal: Mutex::new(journal),
            received: Mutex::new(received),
            released: Mutex::new(RangeSet::new()),
            budget,
        })
    }

    /// The budget this spool counts against.
    pub fn budget(&self) -> &Arc<SpoolBudget> {
        &self.budget
    }

    /// Store a verified push durably. `false`: the range was already held (nothing written).
    /// The caller reserved `bytes.len()` in the budget; what turns out to be held already is
    /// given back here.
    pub fn store(&self, offset: u64, bytes: &[u8], sha256: [u8; 32]) -> io::Result<bool> {
        let len = bytes.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{}: range {offset}+{len} is past the end ({} bytes)",
                    self.name, self.len
                ))
            })?;
        let new_bytes: u64 = self
            .received()
            .gaps(offset, end)
            .iter()
            .map(|(a, b)| b - a)
            .sum();
        if new_bytes == 0 {
            return Ok(false);
        }
        self.data
            .write_all_at(bytes, offset)
            .map_err(|e| err(&self.data_path, "write", e))?;
        self.data
            .sync_data()
            .map_err(|e| err(&self.data_path, "sync", e))?;
        let rec = encode_record(&Record {
            offset,
            len,
            sha256,
        });
        {
            let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            j.write_all(&rec)
                .map_err(|e| err(&self.journal_path, "append", e))?;
            j.sync_data()
                .map_err(|e| err(&self.journal_path, "sync", e))?;
        }
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(offset, end);
        self.released
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(offset, end);
        self.budget.release(len - new_bytes);
        Ok(true)
    }

    /// Give up the held bytes of `[offset, offset + len)` (the transfer has read them): out of
    /// the set held and the budget, and punched out of the data file (whole pages). Returns the
    /// bytes released.
    pub fn release(&self, offset: u64, len: u64) -> u64 {
        let end = offset.saturating_add(len).min(self.len);
        let gone: Vec<(u64, u64)> = {
            let mut held = self.received.lock().unwrap_or_else(|e| e.into_inner());
            let parts = held.overlap(offset, end);
            held.remove(offset, end);
            parts
        };
        let bytes: u64 = gone.iter().map(|(a, b)| b - a).sum();
        if bytes == 0 {
            return 0;
        }
        self.budget.release(bytes);
        let mut released = self.released.lock().unwrap_or_else(|e| e.into_inner());
        for (a, b) in gone {
            released.insert(a, b);
            // Punch the whole pages of the released run this range is part of (a page shared
            // with a neighbour goes once both halves are released).
            let Some((ra, rb)) = released.around(a) else {
                continue;
            };
            let (pa, pb) = (ra.div_ceil(PAGE) * PAGE, rb / PAGE * PAGE);
            if pb > pa {
                let punched = rustix::fs::fallocate(
                    &self.data,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    pa,
                    pb - pa,
                );
                if let Err(e) = punched {
                    tracing::warn!(spool = %self.data_path.display(), error = %e, "could not free released spool bytes");
                }
            }
        }
        bytes
    }

    /// Bytes held now.
    pub fn held_bytes(&self) -> u64 {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total()
    }

    /// The ranges held.
    pub fn received(&self) -> RangeSet {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read held bytes (the caller checked they are held).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.data.read_exact_at(buf, offset)
    }

    /// Delete the spool's files (after a good cycle); what it held leaves the budget.
    pub fn remove(&self) -> io::Result<()> {
        let held = std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()));
        self.budget.release(held.total());
        for p in [&self.journal_path, &self.data_path] {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(p, "remove", e)),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for SpoolFile {
    /// What is still held leaves the budget (the files stay, for a rerun).
    fn drop(&mut self) {
        let held = self
            .received
            .get_mut()
            .map(|r| r.total())
            .unwrap_or_else(|e| e.into_inner().total());
        self.budget.release(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_stops_at_a_torn_record() {
        let r = Record {
            offset: 7 << 30,
            len: 4096,
            sha256: [9; 32],
        };
        let mut b = encode_record(&r).to_vec();
        b.extend_from_slice(&encode_record(&Record { offset: 1, ..r }));
        assert_eq!(parse_journal(&b), (vec![r, Record { offset: 1, ..r }], 112));
        b.extend_from_slice(&encode_record(&r)[..30]);
        assert_eq!(parse_journal(&b).1, 112);
        b[60] ^= 1;
        assert_eq!(parse_journal(&b), (vec![r], 56));
    }

    #[test]
    fn stored_ranges_survive_reopening_and_damaged_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(SpoolBudget::new(u64::MAX));
        let name = r"C:\VMs\web\web.vhdx";
        let a = vec![1u8; 5000];
        let b = vec![2u8; 3000];
        {
            let s = SpoolFile::open(dir.path(), name, 1 << 20, "t1", budget.clone()).unwrap();
            assert!(s.store(4096, &a, Sha256::digest(&a).into()).unwrap());
            assert!(
                !s.store(4096, &a[..100], Sha256::digest(&a[..100]).into())
                    .unwrap()
            );
            assert!(s.store(65536, &b, Sha256::digest(&b).into()).unwrap());
            assert!(s.store((1 << 20) - 10, &a, [0; 32]).is_err());
        }
        let s = SpoolFile::open(dir.path(), name, 1 << 20, "t1", budget.clone()).unwrap();
        assert_eq!(
            s.received().iter().collect::<Vec<_>>(),
            vec![(4096, 9096), (65536, 68536)]
        );
        let mut buf = vec![0u8; 3000];
        s.read_at(&mut buf, 65536).unwrap();
        assert_eq!(buf, b);
        // Damage the second range's bytes: only the first stays.
        s.data.write_all_at(&[0xff], 65540).unwrap();
        drop(s);
        let s = SpoolFile::open(dir.path(), name, 1 << 20, "t1", budget.clone()).unwrap();
        assert_eq!(s.received().iter().collect::<Vec<_>>(), vec![(4096, 9096)]);
        // Another version of the file: another, empty spool.
        let other = SpoolFile::open(dir.path(), name, 1 << 20, "t2", budget.clone()).unwrap();
        assert!(other.received().is_empty());
        s.remove().unwrap();
        assert!(!s.data_path.exists() && !s.journal_path.exists());
    }

    #[test]
    fn released_bytes_leave_the_budget_and_the_disk() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(SpoolBudget::new(3 << 20));
        let s =
            SpoolFile::open(dir.path(), r"C:\VMs\a.vhdx", 8 << 20, "cp", budget.clone()).unwrap();
        let data = vec![7u8; 1 << 20];
        for i in 0..3u64 {
            assert!(budget.try_reserve(1 << 20));
            assert!(
                s.store(i << 20, &data, Sha256::digest(&data).into())
                    .unwrap()
            );
        }
        assert!(!budget.try_reserve(1), "the budget is full");
        let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert!(blocks(&s.data_path) >= 3 << 20);
        // A range read in two halves that do not end on a page: freed once both are released.
        assert_eq!(s.release(0, 1000), 1000);
        assert_eq!(s.release(1000, (1 << 20) - 1000), (1 << 20) - 1000);
        assert_eq!(budget.used(), 2 << 20);
        assert!(blocks(&s.data_path) <= 2 << 20, "{}", blocks(&s.data_path));
        assert_eq!(s.release(0, 1 << 20), 0, "released twice counts once");
        assert!(budget.try_reserve(1 << 20));
        // Storing over a range already held gives the overlap back.
        assert!(s.store(0, &data, Sha256::digest(&data).into()).unwrap());
        budget.set_limit(8 << 20);
        assert!(budget.try_reserve(1 << 20));
        assert!(
            s.store((2 << 20) + 4096, &data, Sha256::digest(&data).into())
                .unwrap()
        );
        assert_eq!(budget.used(), (3 << 20) + 4096);
        assert_eq!(budget.peak(), 4 << 20);
        drop(s);
        // Reopened: what is still held counts again; the released half-page range is dropped.
        let b2 = Arc::new(SpoolBudget::new(u64::MAX));
        let s = SpoolFile::open(dir.path(), r"C:\VMs\a.vhdx", 8 << 20, "cp", b2.clone()).unwrap();
        assert_eq!(b2.used(), s.held_bytes());
        s.remove().unwrap();
        assert_eq!(b2.used(), 0);
    }
}
