//! How much pushed-but-not-yet-stored data the connector holds at once.
//!
//! Every spool of a cycle (of every job, in the service) draws on one [`SpoolBudget`]: a push is
//! admitted only when its bytes fit ([`SpoolBudget::try_reserve`]; otherwise the endpoint answers
//! `503` with `Retry-After` and the uploader waits), bytes read by the transfer are released at
//! once, so the spool holds a bounded window of the disk whatever its size. The peak is kept so a
//! cycle can report it.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The default limit (`--spool-limit`, the service's setting).
pub const DEFAULT_SPOOL_LIMIT: u64 = 256 * 1024 * 1024;
/// What a push that does not fit is told to wait (seconds).
pub const RETRY_AFTER_SECS: u32 = 1;
/// Room left free on the spool's file system besides the budget (journals, page rounding).
pub const FREE_SPACE_RESERVE: u64 = 4 * 1024 * 1024;

/// Bytes held by spools against a limit.
#[derive(Debug)]
pub struct SpoolBudget {
    limit: AtomicU64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl SpoolBudget {
    pub fn new(limit: u64) -> SpoolBudget {
        SpoolBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::SeqCst)
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::SeqCst);
    }

    /// Bytes held (and reserved by pushes being received) now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The most ever held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    fn note_peak(&self, now: u64) {
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    /// Reserve `n` bytes if they fit under the limit.
    pub fn try_reserve(&self, n: u64) -> bool {
        let limit = self.limit();
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&x| x <= limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.note_peak(next);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Count `n` bytes held whatever the limit (a spool reopened with what an earlier run left).
    pub fn add_held(&self, n: u64) {
        let now = self.used.fetch_add(n, Ordering::SeqCst).saturating_add(n);
        self.note_peak(now);
    }

    /// Give back `n` bytes (released, refused, or already held).
    pub fn release(&self, n: u64) {
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            let next = cur.saturating_sub(n);
            match self
                .used
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Why the spool cannot hold what a cycle needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough free space for the host-push spool in {dir}: {needed} bytes ({needed_mib} MiB) \
     needed, {free} bytes ({free_mib} MiB) free; free space there or lower --spool-limit",
    needed_mib = .needed / (1024 * 1024),
    free_mib = .free / (1024 * 1024)
)]
pub struct NoSpace {
    pub dir: String,
    pub needed: u64,
    pub free: u64,
}

/// The budget a cycle can use in `dir`: `limit`, less when the file system has less free (a
/// quarter of the free space is left alone), refused below `minimum`.
pub fn usable_limit(
    dir: &Path,
    limit: u64,
    held: u64,
    minimum: u64,
) -> Result<u64, (NoSpace, Option<io::Error>)> {
    let free = match free_space(dir) {
        Ok(f) => f,
        Err(e) => {
            return Err((
                NoSpace {
                    dir: dir.display().to_string(),
                    needed: minimum,
                    free: 0,
                },
                Some(e),
            ));
        }
    };
    let room = free.saturating_sub(FREE_SPACE_RESERVE).saturating_mul(3) / 4;
    let usable = limit.min(room.saturating_add(held));
    if usable < minimum {
        return Err((
            NoSpace {
                dir: dir.display().to_string(),
                needed: minimum
                    .saturating_sub(held)
                    .saturating_add(FREE_SPACE_RESERVE),
                free,
            },
            None,
        ));
    }
    Ok(usable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_under_the_limit_under_a_concurrent_burst() {
        let b = std::sync::Arc::new(SpoolBudget::new(100));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_reserve(7)).count())
            })
            .collect();
        let got: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(got, 14, "only 14 reservations of 7 fit in 100");
        assert_eq!(b.used(), 98);
        assert!(b.peak() <= 100);
        b.release(98);
        assert_eq!(b.used(), 0);
        b.release(5);
        assert_eq!(b.used(), 0);
        b.add_held(120);
        assert_eq!(b.peak(), 120);
        assert!(!b.try_reserve(1));
    }

    #[test]
    fn usable_limit_shrinks_to_the_free_space_and_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(dir.path()).unwrap();
        assert!(free > 0);
        assert_eq!(usable_limit(dir.path(), 1 << 20, 0, 1).unwrap(), 1 << 20);
        let got = usable_limit(dir.path(), u64::MAX, 0, 1).unwrap();
        assert!(got < free, "{got} of {free}");
        let (e, _) = usable_limit(dir.path(), u64::MAX, 0, u64::MAX / 2).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&dir.path().display().to_string()) && msg.contains("free"),
            "{msg}"
        );
        assert_eq!(e.free, free);
    }
}
