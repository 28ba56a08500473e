//! A [`Locator`] over a [`HostFileLocator`] whose files read from their spools first: the
//! transfer's reads of ranges the host is still pushing wait for them, bytes read from the
//! spool that were planned data are released at once (so the spool holds a bounded window),
//! and anything else (metadata, ranges not pushed, ranges read a second time) comes over WinRM.

use super::budget::SpoolBudget;
use super::ranges::RangeSet;
use super::spool::SpoolFile;
use crate::hostfile::HostFileLocator;
use crate::transport::Transport;
use godwit_disk::storage::{Locator, Opened, ReadAt};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the host's pushes for the current disk are going, as the readers see it.
#[derive(Debug, Default)]
pub struct FeedStatus {
    running: AtomicBool,
    error: Mutex<Option<String>>,
}

impl FeedStatus {
    pub fn start(&self) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.running.store(true, Ordering::SeqCst);
    }

    /// The pushes ended (`error`: why they failed; readers then fail with it).
    pub fn finish(&self, error: Option<String>) {
        if error.is_some() {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
        }
        self.running.store(false, Ordering::SeqCst);
    }

    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What is planned for one host file: the data ranges the host will push (waited for while
/// not yet held) and the data ranges released once read.
#[derive(Debug, Default)]
pub struct FilePlan {
    pub pending: Mutex<RangeSet>,
    pub release_on_read: Mutex<RangeSet>,
}

fn piece(buf: &mut [u8], base: u64, a: u64, b: u64) -> io::Result<&mut [u8]> {
    let s = usize::try_from(a - base).map_err(io::Error::other)?;
    let e = usize::try_from(b - base).map_err(io::Error::other)?;
    Ok(&mut buf[s..e])
}

/// Reads of one host file: from the spool where it holds them, else over WinRM.
struct SpooledFile {
    spool: Arc<SpoolFile>,
    plan: Arc<FilePlan>,
    status: Arc<FeedStatus>,
    remote: Arc<dyn ReadAt>,
    from_spool: Arc<AtomicU64>,
}

impl SpooledFile {
    /// Wait while a part of `[offset, end)` is not held but the host is still to push it.
    fn wait_for_pushes(&self, offset: u64, end: u64) -> io::Result<()> {
        let mut nap = Duration::from_millis(1);
        // The host's pushes failed (it cannot reach the endpoint, the spool is out of room):
        // a read of planned data fails with that, rather than going slowly over WinRM.
        if let Some(e) = self.status.error() {
            let planned = self
                .plan
                .release_on_read
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .overlap(offset, end);
            let held = self.spool.received();
            if planned.iter().any(|&(a, b)| !held.contains(a, b)) {
                return Err(io::Error::other(e));
            }
        }
        loop {
            let held = self.spool.received();
            let waiting = {
                let pending = self.plan.pending.lock().unwrap_or_else(|e| e.into_inner());
                held.gaps(offset, end)
                    .iter()
                    .any(|&(a, b)| !pending.overlap(a, b).is_empty())
            };
            if !waiting {
                return Ok(());
            }
            if let Some(e) = self.status.error() {
                return Err(io::Error::other(e));
            }
            if !self.status.running() {
                return Ok(());
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }
}

impl ReadAt for SpooledFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.spool.len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.spool.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read past the end of {}", self.spool.name),
                )
            })?;
        self.wait_for_pushes(offset, end)?;
        let held = self.spool.received();
        let gaps = held.gaps(offset, end);
        let mut pos = offset;
        let mut served = Vec::new();
        for (a, b) in gaps.iter().copied().chain([(end, end)]) {
            if a > pos {
                self.spool.read_at(piece(buf, offset, pos, a)?, pos)?;
                self.from_spool.fetch_add(a - pos, Ordering::Relaxed);
                served.push((pos, a));
            }
            if b > a {
                self.remote.read_exact_at(piece(buf, offset, a, b)?, a)?;
            }
            pos = b;
        }
        // Planned data read from the spool is done with: free it (a second read of it, on a
        // transfer retry, comes over WinRM).
        let release: Vec<(u64, u64)> = {
            let plan = self
                .plan
                .release_on_read
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            served
                .iter()
                .flat_map(|&(a, b)| plan.overlap(a, b))
                .collect()
        };
        if !release.is_empty() {
            let mut pending = self.plan.pending.lock().unwrap_or_else(|e| e.into_inner());
            for &(a, b) in &release {
                pending.remove(a, b);
            }
        }
        for (a, b) in release {
            self.spool.release(a, b - a);
        }
        Ok(())
    }
}

/// A host file's spool and its plan.
type SpoolEntry = (Arc<SpoolFile>, Arc<FilePlan>);

/// A [`Locator`] over a [`HostFileLocator`] whose files read from their spools first.
pub struct PushLocator<T: Transport + 'static> {
    host: HostFileLocator<T>,
    spool_dir: PathBuf,
    /// What keys the spools besides path and length: the checkpoint that froze the files.
    version: String,
    budget: Arc<SpoolBudget>,
    spools: Mutex<BTreeMap<String, SpoolEntry>>,
    from_spool: Arc<AtomicU64>,
    status: Arc<FeedStatus>,
}

impl<T: Transport + Send + Sync + 'static> PushLocator<T> {
    /// Spools under `spool_dir`, keyed by `version` (the checkpoint id), counted in `budget`.
    pub fn new(
        host: HostFileLocator<T>,
        spool_dir: PathBuf,
        version: &str,
        budget: Arc<SpoolBudget>,
    ) -> Self {
        PushLocator {
            host,
            spool_dir,
            version: version.to_string(),
            budget,
            spools: Mutex::new(BTreeMap::new()),
            from_spool: Arc::new(AtomicU64::new(0)),
            status: Arc::new(FeedStatus::default()),
        }
    }

    /// The WinRM side (its byte and command counters).
    pub fn host(&self) -> &HostFileLocator<T> {
        &self.host
    }

    /// The spool of a file opened through this locator.
    pub fn spool(&self, name: &str) -> Option<Arc<SpoolFile>> {
        self.entry(name).map(|(s, _)| s)
    }

    /// The spool and plan of a file opened through this locator.
    pub fn entry(&self, name: &str) -> Option<SpoolEntry> {
        self.spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every spool opened so far.
    pub fn spools(&self) -> Vec<Arc<SpoolFile>> {
        self.spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The pushes' status the readers wait on.
    pub fn status(&self) -> &Arc<FeedStatus> {
        &self.status
    }

    pub fn budget(&self) -> &Arc<SpoolBudget> {
        &self.budget
    }

    /// Bytes served from spools.
    pub fn bytes_from_spool(&self) -> u64 {
        self.from_spool.load(Ordering::Relaxed)
    }

    /// Release everything held for data (a disk is done); metadata stays.
    pub fn release_planned(&self) {
        for (spool, plan) in self
            .spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let planned = std::mem::take(
                &mut *plan
                    .release_on_read
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            plan.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(0, u64::MAX);
            for (a, b) in planned.iter() {
                spool.release(a, b - a);
            }
        }
    }
}

impl<T: Transport + Send + Sync + 'static> Locator for PushLocator<T> {
    fn open(&self, name: &str, relative_to: Option<&str>) -> io::Result<Opened> {
        let (opened, info) = self.host.open_with_info(name, relative_to)?;
        let (spool, plan) = {
            let mut spools = self.spools.lock().unwrap_or_else(|e| e.into_inner());
            match spools.get(&opened.name) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(SpoolFile::open(
                        &self.spool_dir,
                        &opened.name,
                        info.length,
                        &self.version,
                        self.budget.clone(),
                    )?);
                    let entry = (s, Arc::new(FilePlan::default()));
                    spools.insert(opened.name.clone(), entry.clone());
                    entry
                }
            }
        };
        Ok(Opened {
            name: opened.name,
            file: Arc::new(SpooledFile {
                spool,
                plan,
                status: self.status.clone(),
                remote: opened.file,
                from_spool: self.from_spool.clone(),
            }),
        })
    }
}
