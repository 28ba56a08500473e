//! Progress of a long read, allocation-aware: a [`Meter`] holds the bytes of allocated data a
//! job has to read (holes and zero runs are not counted, so a sparse disk is not over-estimated)
//! and how many it has read; [`CountingSource`] counts what a writer reads through it; [`watch`]
//! hands the caller a [`Snapshot`] at intervals on a thread of its own. No terminal code here:
//! the command line draws the bar, the service stores the figures.

use crate::error::Result;
use crate::layer::{BlockSource, Stored};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes to read and bytes read, shared between the workers and whoever reports them.
#[derive(Debug)]
pub struct Meter {
    /// Whether the total is known yet ([`Meter::pending`] until [`Meter::set_total`]).
    known: AtomicBool,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
}

/// A meter's figures at one moment. `bytes_done` never exceeds `bytes_total` and never goes
/// down between two snapshots of one meter.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Average since the meter started.
    pub rate_bytes_per_sec: u64,
    /// From the bytes left and the average rate; `None` until something was read.
    pub eta_secs: Option<u64>,
    pub elapsed_secs: f64,
}

impl Meter {
    pub fn new(total: u64) -> Meter {
        Meter {
            known: AtomicBool::new(true),
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// A meter whose total is not known yet: [`watch`] reports nothing until
    /// [`Meter::set_total`] (but for its last report).
    pub fn pending() -> Meter {
        let m = Meter::new(0);
        m.known.store(false, Ordering::Relaxed);
        m
    }

    /// The total became known (or grew: data read twice after a fault).
    pub fn set_total(&self, total: u64) {
        self.total.fetch_max(total, Ordering::Relaxed);
        self.known.store(true, Ordering::Release);
    }

    pub fn total_known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed).min(total);
        let elapsed = self.started.elapsed();
        let millis = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let rate = done.saturating_mul(1000) / millis;
        Snapshot {
            bytes_done: done,
            bytes_total: total,
            rate_bytes_per_sec: rate,
            eta_secs: (rate > 0).then(|| (total - done) / rate),
            elapsed_secs: elapsed.as_secs_f64(),
        }
    }
}

/// Something that wants progress reports.
pub type ProgressFn = Arc<dyn Fn(&Snapshot) + Send + Sync>;

/// A thread calling a [`ProgressFn`] with a meter's snapshot at intervals; [`Watch::finish`]
/// (or dropping it) stops it after one last report.
pub struct Watch {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    meter: Arc<Meter>,
    f: ProgressFn,
    finished: AtomicBool,
}

/// Report `meter` to `f` every `every` (the first report at once), until finished.
pub fn watch(meter: Arc<Meter>, every: Duration, f: ProgressFn) -> Watch {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let thread = {
        let (stop, meter, f) = (stop.clone(), meter.clone(), f.clone());
        std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let (lock, cv) = &*stop;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    if meter.total_known() {
                        f(&meter.snapshot());
                    }
                    match cv.wait_timeout(stopped, every) {
                        Ok((g, _)) => stopped = g,
                        Err(_) => return,
                    }
                }
            })
            .ok()
    };
    Watch {
        stop,
        thread,
        meter,
        f,
        finished: AtomicBool::new(false),
    }
}

impl Watch {
    /// Stop reporting; the last report shows the meter as it is now.
    pub fn finish(self) {}

    fn stop(&mut self) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(mut s) = self.stop.0.lock() {
            *s = true;
        }
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.f)(&self.meter.snapshot());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A [`BlockSource`] that counts, on a [`Meter`], the data a writer takes from it: bytes read
/// and bytes handed out for a kernel copy ([`BlockSource::stored`]). Writers read only data
/// runs, so the count ends at the source's allocated bytes ([`crate::write::allocated_bytes`]).
pub struct CountingSource<'a> {
    inner: &'a dyn BlockSource,
    meter: &'a Meter,
}

impl<'a> CountingSource<'a> {
    pub fn new(inner: &'a dyn BlockSource, meter: &'a Meter) -> Self {
        CountingSource { inner, meter }
    }
}

impl BlockSource for CountingSource<'_> {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<crate::Run>> {
        self.inner.map(offset, len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)?;
        self.meter.add(buf.len() as u64);
        Ok(())
    }
    fn stored(&self, offset: u64, len: u64) -> Result<Option<Vec<Stored>>> {
        let s = self.inner.stored(offset, len)?;
        if let Some(pieces) = &s {
            self.meter.add(pieces.iter().map(|p| p.len).sum());
        }
        Ok(s)
    }
    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }
    fn page83(&self) -> Option<[u8; 16]> {
        self.inner.page83()
    }
    fn parallel_reads(&self) -> bool {
        self.inner.parallel_reads()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_clamped_and_computes_an_eta() {
        let m = Meter::new(100);
        assert_eq!(m.snapshot().eta_secs, None);
        m.add(150);
        let s = m.snapshot();
        assert_eq!((s.bytes_done, s.bytes_total), (100, 100));
        assert_eq!(s.eta_secs, Some(0));
        m.set_total(50);
        assert_eq!(m.snapshot().bytes_total, 100, "a total never shrinks");
    }

    #[test]
    fn watch_reports_at_start_and_at_finish() {
        let m = Arc::new(Meter::new(10));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let w = watch(
            m.clone(),
            Duration::from_secs(3600),
            Arc::new(move |s: &Snapshot| s2.lock().unwrap().push(s.bytes_done)),
        );
        std::thread::sleep(Duration::from_millis(50));
        m.add(10);
        w.finish();
        assert_eq!(*seen.lock().unwrap(), vec![0, 10]);
        // Nothing is reported before the total is known, but for the last report.
        let m = Arc::new(Meter::pending());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let w = watch(
            m.clone(),
            Duration::from_millis(1),
            Arc::new(move |s: &Snapshot| s2.lock().unwrap().push(s.bytes_total)),
        );
        std::thread::sleep(Duration::from_millis(30));
        m.set_total(7);
        m.add(7);
        w.finish();
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|&t| t == 7) && !seen.is_empty(), "{seen:?}");
    }
}
