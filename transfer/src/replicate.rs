//! One replication of one disk: read → zero-skip → SHA-256 → ask the store → zstd → send, on
//! several worker threads, with a bounded window of chunks in flight. Only allocated data is
//! read and hashed: chunks the source maps as holes are zero without a read, and the SHA-256 of
//! the whole raw disk (which would hash every zero too) is computed only when asked
//! ([`ReplicateOptions::raw_sha256`]). A repeat run sends only chunks the store lacks; a source
//! that knows its changed ranges (VMware CBT, Hyper-V RCT, `--changed-ranges`) hands them in
//! and only those chunks are read, the rest carried over from the previous sync. Without them
//! every allocated byte is read and hashed again; the report says how much of that was
//! unchanged and what it cost ([`ReplicateReport::bytes_unchanged`]). Network faults are
//! retried with backoff: the next attempt reconnects and resumes with the chunks not yet
//! stored.

use crate::chunk::{ZSTD_LEVEL, encode_chunk_with, is_zero};
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::hasher::{OrderedHasher, Piece};
use crate::index::{
    Entry, SyncId, SyncIndex, check_chunk_size, check_vm_name, chunk_count, now_ms,
};
use crate::store::{BoxFut, ChunkStore};
use bytes::Bytes;
use godwit_disk::{BlockSource, RunState};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// A byte range of the disk that changed since the previous sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
}

/// Opens (and after a fault, re-opens) the store a replication writes to.
pub trait Connect: Send + Sync {
    fn connect(&self) -> BoxFut<'_, Arc<dyn ChunkStore>>;
}

/// A store that needs no connection (a local directory, an S3 bucket).
pub struct Direct(pub Arc<dyn ChunkStore>);

impl Connect for Direct {
    fn connect(&self) -> BoxFut<'_, Arc<dyn ChunkStore>> {
        let s = self.0.clone();
        Box::pin(async move { Ok(s) })
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Progress {
    /// The disk number being replicated (as given to [`replicate_disk`]).
    pub disk: u32,
    pub disk_size: u64,
    /// Virtual bytes dealt with so far (read, or known zero, or carried over).
    pub bytes_done: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    /// Bytes not sent: zero chunks and chunks the store already had.
    pub bytes_skipped: u64,
    pub rate_bytes_per_sec: u64,
    /// Seconds left, from the allocated bytes left to read and the rate they are read at
    /// (with [`ReplicateOptions::measure_allocation`]; else from the virtual bytes left), `None`
    /// until something was done.
    pub eta_secs: Option<u64>,
    pub attempt: u32,
    /// Allocated bytes this run has to read: holes, ranges the source maps as zero and chunks
    /// carried over from the previous sync are not counted, so a sparse disk is not
    /// over-estimated. Grows only if chunks must be read again (gone from the store). Only with
    /// [`ReplicateOptions::measure_allocation`] (else 0).
    pub read_total: u64,
    /// Of those, bytes read and stored (or found in the store already). Never decreases and
    /// ends at `read_total` when the run succeeds.
    pub read_done: u64,
    pub read_rate_bytes_per_sec: u64,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

#[derive(Clone)]
pub struct ReplicateOptions {
    pub chunk_size: u32,
    /// Threads reading, hashing and compressing.
    pub workers: usize,
    /// Most chunks sent and not yet acknowledged (the server's window caps it further).
    pub window: usize,
    pub metadata: BTreeMap<String, String>,
    /// Connection attempts within one run before giving up.
    pub max_attempts: u32,
    /// Bytes per second on the wire, if limited.
    pub bandwidth_limit: Option<u64>,
    pub progress: Option<ProgressFn>,
    /// Walk the source's allocation map once before reading, so that progress counts the
    /// allocated bytes to read ([`Progress::read_total`], [`Progress::read_done`] and an ETA
    /// from them). One more map walk: free for local images, grain/block table reads for a
    /// remote sparse one. Without it `read_total` stays 0 and `eta_secs` `None`.
    pub measure_allocation: bool,
    /// Also compute the SHA-256 of the whole raw disk (recorded in the index, checked by
    /// export). Costs hashing every byte of the virtual disk, holes included, on one thread.
    pub raw_sha256: bool,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        ReplicateOptions {
            chunk_size: crate::chunk::DEFAULT_CHUNK_SIZE,
            workers: (cpus + 1).clamp(2, 8),
            window: 8,
            metadata: BTreeMap::new(),
            max_attempts: 10,
            bandwidth_limit: None,
            progress: None,
            measure_allocation: false,
            raw_sha256: false,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReplicateReport {
    pub vm: String,
    pub disk: u32,
    pub sync_id: String,
    pub parent: Option<String>,
    pub disk_size: u64,
    pub chunk_size: u32,
    pub chunks_total: u64,
    pub chunks_zero: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub chunks_carried: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    /// Bytes of data hashed to name chunks (zero chunks and holes are not hashed).
    pub bytes_hashed: u64,
    /// Bytes read (allocated data, as [`Self::bytes_read`] counts them) in chunks that turned
    /// out identical to the previous sync's: the cost of not knowing what changed (zero when
    /// changed ranges were given). Never more than `bytes_read`.
    pub bytes_unchanged: u64,
    /// Worker time spent reading and hashing those unchanged chunks, summed over workers.
    pub seconds_unchanged: f64,
    /// Worker time per stage, summed over workers: reading the source, SHA-256, zstd.
    pub seconds_read: f64,
    pub seconds_hash: f64,
    pub seconds_compress: f64,
    /// Time chunks spent being sent until the store acknowledged them, summed over the chunks
    /// in flight (the link and the staging server's write).
    pub seconds_send: f64,
    /// Worker time spent waiting for the staging side: for a free slot in the window of
    /// unacknowledged chunks, and for the store's answer to "do you have this chunk".
    pub seconds_wait_staging: f64,
    /// SHA-256 of the whole raw disk content; only when asked for
    /// ([`ReplicateOptions::raw_sha256`]) and the whole disk was read.
    pub raw_sha256: Option<String>,
    pub attempts: u32,
    pub seconds: f64,
}

#[derive(Default)]
struct Counters {
    done: AtomicU64,
    read_total: AtomicU64,
    read_done: AtomicU64,
    read: AtomicU64,
    sent: AtomicU64,
    skipped: AtomicU64,
    zero: AtomicU64,
    new: AtomicU64,
    reused: AtomicU64,
    hashed: AtomicU64,
    unchanged: AtomicU64,
    nanos_unchanged: AtomicU64,
    nanos_read: AtomicU64,
    nanos_hash: AtomicU64,
    nanos_compress: AtomicU64,
    nanos_send: AtomicU64,
    nanos_wait: AtomicU64,
}

fn add_nanos(a: &AtomicU64, since: Instant) {
    let n = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    a.fetch_add(n, Ordering::Relaxed);
}

fn secs(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64 / 1e9
}

/// State shared by workers and the tasks that send chunks.
struct Shared {
    entries: Mutex<Vec<Option<Entry>>>,
    known: Mutex<HashSet<ChunkDigest>>,
    failure: Mutex<Option<Error>>,
    failed: AtomicBool,
    c: Counters,
    limiter: Option<Limiter>,
    /// The previous sync's entries, when it has this disk's size and chunk size: a chunk read
    /// again that hashes to the same digest at the same place was unchanged.
    prior: std::sync::OnceLock<Arc<SyncIndex>>,
    /// Allocated bytes in each chunk (only when progress is reported).
    data_at: std::sync::OnceLock<Vec<u32>>,
    disk: u32,
}

impl Shared {
    fn fail(&self, e: Error) {
        if let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    fn set(&self, i: usize, e: Entry) {
        if let Ok(mut v) = self.entries.lock() {
            v[i] = Some(e);
        }
    }
}

struct Limiter {
    rate: u64,
    next: Mutex<Instant>,
}

impl Limiter {
    fn reserve(&self, bytes: u64) -> Instant {
        let Ok(mut n) = self.next.lock() else {
            return Instant::now();
        };
        let start = (*n).max(Instant::now());
        *n = start + Duration::from_secs_f64(bytes as f64 / self.rate.max(1) as f64);
        start
    }
}

/// Replicate one disk. Blocking: call from a plain thread (or `spawn_blocking`), never from
/// inside an async task; `handle` runs the network side.
///
/// `changed`: when the source knows what changed since the previous sync (CBT/RCT), only
/// chunks overlapping these ranges are read; the rest is carried over from the previous index.
pub fn replicate_disk(
    source: &dyn BlockSource,
    changed: Option<&[Range]>,
    target: &dyn Connect,
    vm: &str,
    disk: u32,
    opts: &ReplicateOptions,
    handle: &Handle,
) -> Result<ReplicateReport> {
    check_vm_name(vm)?;
    check_chunk_size(opts.chunk_size)?;
    let t0 = Instant::now();
    let disk_size = source.virtual_size();
    let cs = opts.chunk_size;
    let n = usize::try_from(chunk_count(disk_size, cs))
        .map_err(|_| Error::Usage("disk too large".into()))?;
    let shared = Arc::new(Shared {
        entries: Mutex::new(vec![None; n]),
        known: Mutex::new(HashSet::new()),
        failure: Mutex::new(None),
        failed: AtomicBool::new(false),
        c: Counters::default(),
        limiter: opts.bandwidth_limit.map(|rate| Limiter {
            rate,
            next: Mutex::new(Instant::now()),
        }),
        prior: std::sync::OnceLock::new(),
        data_at: std::sync::OnceLock::new(),
        disk,
    });
    let mut parent: Option<Arc<SyncIndex>> = None;
    let mut parent_loaded = false;
    let mut hash_state: Option<(Sha256, usize)> = None;
    let mut carried = 0u64;
    let mut carried_at = vec![false; n];
    let mut attempt = 0u32;
    // The store names the sync at commit; the nonce lets a retried commit find the first.
    let mut metadata = opts.metadata.clone();
    metadata.insert(
        crate::store::COMMIT_NONCE.to_string(),
        hex::encode(rand::random::<[u8; 16]>()),
    );
    loop {
        attempt += 1;
        let backoff = Duration::from_secs((1u64 << (attempt - 1).min(5)).min(30));
        let retry = |e: Error| -> Result<()> {
            if e.is_retryable() && attempt < opts.max_attempts {
                eprintln!(
                    "godwit: {e}; retrying in {} s (attempt {attempt} of {})",
                    backoff.as_secs(),
                    opts.max_attempts
                );
                std::thread::sleep(backoff);
                Ok(())
            } else {
                Err(e)
            }
        };
        let store = match handle.block_on(target.connect()) {
            Ok(s) => s,
            Err(e) => {
                retry(e)?;
                continue;
            }
        };
        if !parent_loaded {
            match handle.block_on(load_parent(&*store, vm, disk)) {
                Ok(p) => parent = p.map(Arc::new),
                Err(e) => {
                    retry(e)?;
                    continue;
                }
            }
            parent_loaded = true;
            let usable = parent
                .as_ref()
                .filter(|p| p.chunk_size == cs && p.disk_size == disk_size);
            if let Some(p) = usable {
                let _ = shared.prior.set(p.clone());
            }
            if let (Some(ranges), Some(p)) = (changed, usable) {
                let mut v = shared
                    .entries
                    .lock()
                    .map_err(|_| Error::Usage("poisoned".into()))?;
                for (i, slot) in v.iter_mut().enumerate() {
                    let (start, end) = (
                        i as u64 * u64::from(cs),
                        ((i as u64 + 1) * u64::from(cs)).min(disk_size),
                    );
                    if !ranges
                        .iter()
                        .any(|r| r.offset < end && r.offset.saturating_add(r.len) > start)
                    {
                        *slot = Some(p.entries[i]);
                        carried_at[i] = true;
                        carried += 1;
                        shared.c.done.fetch_add(end - start, Ordering::Relaxed);
                        shared.c.skipped.fetch_add(end - start, Ordering::Relaxed);
                    }
                }
            } else {
                if changed.is_some() {
                    eprintln!(
                        "godwit: no previous sync of {vm} disk {disk} with the same size and chunk size: reading the whole disk"
                    );
                }
                if opts.raw_sha256 {
                    hash_state = Some((Sha256::new(), 0));
                }
            }
            if let (Some(p), Ok(mut k)) = (&parent, shared.known.lock()) {
                k.extend(p.digests());
            }
            if opts.progress.is_some() && opts.measure_allocation {
                let data_at = allocated_per_chunk(source, u64::from(cs), n)?;
                let total: u64 = data_at
                    .iter()
                    .zip(&carried_at)
                    .filter(|(_, c)| !**c)
                    .map(|(d, _)| u64::from(*d))
                    .sum();
                shared.c.read_total.store(total, Ordering::Relaxed);
                let _ = shared.data_at.set(data_at);
            }
        }
        let lease = match handle.block_on(store.begin_sync(vm, disk)) {
            Ok(l) => l,
            Err(e) => {
                retry(e)?;
                continue;
            }
        };
        // After a lost connection (or a commit refused for missing chunks): what earlier attempts
        // learnt the store has may have been collected since (their lease ended with the
        // connection). Ask again now this attempt's lease is visible; read again what is gone.
        if attempt > 1
            && let Err(e) = handle.block_on(revalidate(
                &*store,
                &shared,
                &carried_at,
                parent.as_deref(),
                (u64::from(cs), disk_size),
            ))
        {
            let _ = handle.block_on(store.end_sync(&lease));
            retry(e)?;
            continue;
        }
        let pass = run_pass(
            source,
            &store,
            &shared,
            opts,
            handle,
            disk_size,
            n,
            &mut hash_state,
            attempt,
        );
        if let Err(e) = pass {
            let _ = handle.block_on(store.end_sync(&lease));
            retry(e)?;
            continue;
        }
        let entries: Vec<Entry> = {
            let v = shared
                .entries
                .lock()
                .map_err(|_| Error::Usage("poisoned".into()))?;
            v.iter().map(|e| e.unwrap_or(Entry::Zero)).collect()
        };
        let raw_sha256 = match &hash_state {
            Some((sha, next)) if *next == n => Some(sha.clone().finalize().into()),
            _ => None,
        };
        let idx = SyncIndex {
            // Replaced by the store's own id at commit.
            sync_id: SyncId::new(now_ms()),
            parent: parent.as_ref().map(|p| p.sync_id.clone()),
            vm: vm.to_string(),
            disk,
            chunk_size: cs,
            disk_size,
            created_ms: now_ms(),
            raw_sha256,
            metadata: metadata.clone(),
            entries,
        };
        // A commit retried after its answer was lost gets the first one's id (same nonce).
        let sync_id = match handle.block_on(store.commit_index(Bytes::from(idx.encode()))) {
            Ok(id) => id,
            Err(e) => {
                let _ = handle.block_on(store.end_sync(&lease));
                retry(e)?;
                continue;
            }
        };
        let _ = handle.block_on(store.end_sync(&lease));
        let c = &shared.c;
        return Ok(ReplicateReport {
            vm: vm.to_string(),
            disk,
            sync_id: sync_id.to_string(),
            parent: idx.parent.as_ref().map(ToString::to_string),
            disk_size,
            chunk_size: cs,
            chunks_total: n as u64,
            chunks_zero: c.zero.load(Ordering::Relaxed),
            chunks_new: c.new.load(Ordering::Relaxed),
            chunks_reused: c.reused.load(Ordering::Relaxed),
            chunks_carried: carried,
            bytes_read: c.read.load(Ordering::Relaxed),
            bytes_sent: c.sent.load(Ordering::Relaxed),
            bytes_hashed: c.hashed.load(Ordering::Relaxed),
            bytes_unchanged: c.unchanged.load(Ordering::Relaxed),
            seconds_unchanged: secs(&c.nanos_unchanged),
            seconds_read: secs(&c.nanos_read),
            seconds_hash: secs(&c.nanos_hash),
            seconds_compress: secs(&c.nanos_compress),
            seconds_send: secs(&c.nanos_send),
            seconds_wait_staging: secs(&c.nanos_wait),
            raw_sha256: idx.raw_sha256.map(hex::encode),
            attempts: attempt,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
}

/// Entries that earlier attempts filled from the store's answers (not carried from the
/// parent): still stored? Those that are not are read and sent again by the next pass.
async fn revalidate(
    store: &dyn ChunkStore,
    shared: &Shared,
    carried_at: &[bool],
    parent: Option<&SyncIndex>,
    (cs, disk_size): (u64, u64),
) -> Result<()> {
    let filled: Vec<(usize, ChunkDigest)> = {
        let v = shared
            .entries
            .lock()
            .map_err(|_| Error::Usage("poisoned".into()))?;
        v.iter()
            .enumerate()
            .filter(|(i, _)| !carried_at[*i])
            .filter_map(|(i, e)| match e {
                Some(Entry::Data(d)) => Some((i, *d)),
                _ => None,
            })
            .collect()
    };
    // Only the parent's chunks (named by a committed index, never collected) stay known.
    if let Ok(mut k) = shared.known.lock() {
        k.clear();
        if let Some(p) = parent {
            k.extend(p.digests());
        }
    }
    if filled.is_empty() {
        return Ok(());
    }
    let mut distinct: Vec<ChunkDigest> = filled.iter().map(|(_, d)| *d).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let have = store.has_chunks(distinct.clone()).await?;
    let gone: HashSet<ChunkDigest> = distinct
        .into_iter()
        .zip(have)
        .filter(|(_, h)| !h)
        .map(|(d, _)| d)
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    eprintln!(
        "godwit: {} chunk(s) sent earlier are no longer stored; reading them again",
        gone.len()
    );
    let mut v = shared
        .entries
        .lock()
        .map_err(|_| Error::Usage("poisoned".into()))?;
    for (i, d) in filled {
        if gone.contains(&d) {
            v[i] = None;
            let data = shared
                .data_at
                .get()
                .and_then(|a| a.get(i))
                .copied()
                .map_or(0, u64::from);
            shared.c.read_total.fetch_add(data, Ordering::Relaxed);
            let len = disk_size.saturating_sub(i as u64 * cs).min(cs);
            let _ = shared
                .c
                .done
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| {
                    Some(x.saturating_sub(len))
                });
        }
    }
    Ok(())
}

async fn load_parent(store: &dyn ChunkStore, vm: &str, disk: u32) -> Result<Option<SyncIndex>> {
    let syncs = store.list_syncs(vm, disk).await?;
    let Some(last) = crate::index::newest(&syncs, now_ms()) else {
        return Ok(None);
    };
    let b = store.get_index(vm, disk, last).await?;
    let idx = SyncIndex::parse(&b, &format!("{} sync {last}", store.describe()))?;
    if idx.vm != vm || idx.disk != disk {
        return Err(Error::integrity(
            format!("sync {last}"),
            format!(
                "index is for {} disk {}, not {vm} disk {disk}",
                idx.vm, idx.disk
            ),
        ));
    }
    Ok(Some(idx))
}

/// Batches "do you have" questions from the workers into `Have` requests.
fn spawn_asker(
    store: Arc<dyn ChunkStore>,
    handle: &Handle,
) -> mpsc::Sender<(ChunkDigest, oneshot::Sender<Result<bool>>)> {
    let (tx, mut rx) = mpsc::channel::<(ChunkDigest, oneshot::Sender<Result<bool>>)>(256);
    handle.spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < crate::wire::frame::MAX_HAVE {
                match rx.try_recv() {
                    Ok(x) => batch.push(x),
                    Err(_) => break,
                }
            }
            let store = store.clone();
            tokio::spawn(async move {
                let (ds, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match store.has_chunks(ds).await {
                    Ok(have) => {
                        for (s, h) in senders.into_iter().zip(have) {
                            let _ = s.send(Ok(h));
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let retry = e.is_retryable();
                        for s in senders {
                            let err = if retry {
                                Error::network("store", msg.clone())
                            } else {
                                Error::Usage(msg.clone())
                            };
                            let _ = s.send(Err(err));
                        }
                    }
                }
            });
        }
    });
    tx
}

#[allow(clippy::too_many_arguments)]
fn run_pass(
    source: &dyn BlockSource,
    store: &Arc<dyn ChunkStore>,
    shared: &Arc<Shared>,
    opts: &ReplicateOptions,
    handle: &Handle,
    disk_size: u64,
    n: usize,
    hash_state: &mut Option<(Sha256, usize)>,
    attempt: u32,
) -> Result<()> {
    shared.failed.store(false, Ordering::SeqCst);
    if let Ok(mut f) = shared.failure.lock() {
        *f = None;
    }
    let cs = u64::from(opts.chunk_size);
    let hash_from = hash_state.as_ref().map(|(_, next)| *next);
    // Chunks to visit: every one not yet stored, plus every one the raw hash still needs.
    let list: Vec<usize> = {
        let v = shared
            .entries
            .lock()
            .map_err(|_| Error::Usage("poisoned".into()))?;
        (0..n)
            .filter(|&i| v[i].is_none() || hash_from.is_some_and(|h| i >= h))
            .collect()
    };
    let window = opts.window.max(1);
    let sem = Arc::new(Semaphore::new(window));
    let asker = spawn_asker(store.clone(), handle);
    let hasher = hash_state
        .take()
        .map(|(sha, next)| Arc::new(OrderedHasher::new(sha, next, n, opts.workers)));
    let next = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    let t0 = Instant::now();
    let done0 = (
        shared.c.done.load(Ordering::Relaxed),
        shared.c.read_done.load(Ordering::Relaxed),
    );
    std::thread::scope(|s| {
        if let Some(h) = &hasher {
            let h = h.clone();
            s.spawn(move || h.run());
        }
        if let Some(p) = &opts.progress {
            let (p, finished, shared) = (p.clone(), &finished, shared.clone());
            s.spawn(move || {
                let mut last = Instant::now();
                while !finished.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    last = Instant::now();
                    p(&snapshot(&shared, disk_size, t0, done0, attempt));
                }
            });
        }
        let mut workers = Vec::new();
        for _ in 0..opts.workers.max(1) {
            workers.push(s.spawn(|| {
                let mut buf = Vec::new();
                while !shared.failed.load(Ordering::SeqCst) {
                    let p = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&i) = list.get(p) else { break };
                    if let Err(e) = one_chunk(
                        i,
                        &mut buf,
                        source,
                        store,
                        shared,
                        &asker,
                        &sem,
                        handle,
                        hasher.as_deref(),
                        hash_from,
                        cs,
                        disk_size,
                    ) {
                        shared.fail(e);
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.join();
        }
        if shared.failed.load(Ordering::SeqCst)
            && let Some(h) = &hasher
        {
            h.close();
        }
        // Wait for every chunk in flight to be acknowledged (or fail).
        let all = u32::try_from(window).unwrap_or(u32::MAX);
        let _ = handle.block_on(sem.acquire_many(all));
        finished.store(true, Ordering::SeqCst);
    });
    if let Some(h) = hasher {
        *hash_state = Arc::try_unwrap(h).ok().map(OrderedHasher::finish);
    }
    if let Some(p) = &opts.progress {
        p(&snapshot(shared, disk_size, t0, done0, attempt));
    }
    match shared.failure.lock().ok().and_then(|mut f| f.take()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn snapshot(
    shared: &Shared,
    disk_size: u64,
    t0: Instant,
    (done0, read_done0): (u64, u64),
    attempt: u32,
) -> Progress {
    let c = &shared.c;
    let done = c.done.load(Ordering::Relaxed);
    let read_total = c.read_total.load(Ordering::Relaxed);
    let read_done = c.read_done.load(Ordering::Relaxed).min(read_total);
    let millis = u64::try_from(t0.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let rate = done.saturating_sub(done0).saturating_mul(1000) / millis;
    let read_rate = read_done.saturating_sub(read_done0).saturating_mul(1000) / millis;
    Progress {
        disk: shared.disk,
        disk_size,
        bytes_done: done,
        bytes_read: c.read.load(Ordering::Relaxed),
        bytes_sent: c.sent.load(Ordering::Relaxed),
        bytes_skipped: c.skipped.load(Ordering::Relaxed),
        rate_bytes_per_sec: rate,
        eta_secs: if shared.data_at.get().is_some() {
            (read_rate > 0).then(|| (read_total - read_done) / read_rate)
        } else {
            (rate > 0).then(|| disk_size.saturating_sub(done) / rate)
        },
        attempt,
        read_total,
        read_done,
        read_rate_bytes_per_sec: read_rate,
    }
}

/// One chunk: map it, read its data (into the worker's `buf`), name it, and hand it to the
/// store unless the store has it.
#[allow(clippy::too_many_arguments)]
fn one_chunk(
    i: usize,
    buf: &mut Vec<u8>,
    source: &dyn BlockSource,
    store: &Arc<dyn ChunkStore>,
    shared: &Arc<Shared>,
    asker: &mpsc::Sender<(ChunkDigest, oneshot::Sender<Result<bool>>)>,
    sem: &Arc<Semaphore>,
    handle: &Handle,
    hasher: Option<&OrderedHasher>,
    hash_from: Option<usize>,
    cs: u64,
    disk_size: u64,
) -> Result<()> {
    let c = &shared.c;
    let start = i as u64 * cs;
    let len64 = (disk_size - start).min(cs);
    let len = usize::try_from(len64).map_err(|_| Error::Usage("chunk too large".into()))?;
    let need_store = shared
        .entries
        .lock()
        .map(|v| v[i].is_none())
        .unwrap_or(true);
    let feed = hasher.filter(|_| hash_from.is_some_and(|h| i >= h));
    let t_read = Instant::now();
    let runs = source.map(start, len64)?;
    let data_bytes: u64 = runs
        .iter()
        .filter(|r| r.state == RunState::Data)
        .map(|r| r.len)
        .sum();
    let zero = if data_bytes == 0 {
        true
    } else {
        buf.resize(len, 0);
        source.read_at(start, &mut buf[..len])?;
        c.read.fetch_add(data_bytes, Ordering::Relaxed);
        is_zero(&buf[..len])
    };
    add_nanos(&c.nanos_read, t_read);
    // The whole-disk hash (when asked for) takes the buffer; the worker makes a new one.
    let data: Arc<Vec<u8>>;
    let bytes: &[u8] = match feed {
        Some(h) => {
            if zero {
                h.feed(i, Piece::Zero(len));
                &[]
            } else {
                buf.truncate(len);
                data = Arc::new(std::mem::take(buf));
                h.feed(i, Piece::Data(data.clone()));
                &data[..]
            }
        }
        None => &buf[..len.min(buf.len())],
    };
    if !need_store {
        return Ok(());
    }
    if zero {
        shared.set(i, Entry::Zero);
        c.zero.fetch_add(1, Ordering::Relaxed);
        c.done.fetch_add(len64, Ordering::Relaxed);
        c.skipped.fetch_add(len64, Ordering::Relaxed);
        c.read_done.fetch_add(data_bytes, Ordering::Relaxed);
        return Ok(());
    }
    let t_hash = Instant::now();
    let d = ChunkDigest::of(bytes);
    c.hashed.fetch_add(len64, Ordering::Relaxed);
    add_nanos(&c.nanos_hash, t_hash);
    if shared.prior.get().and_then(|p| p.entries.get(i)) == Some(&Entry::Data(d)) {
        // Counted like `bytes_read` (allocated data), so it is never more than what was read.
        c.unchanged.fetch_add(data_bytes, Ordering::Relaxed);
        add_nanos(&c.nanos_unchanged, t_read);
    }
    let known = shared.known.lock().map(|k| k.contains(&d)).unwrap_or(false);
    let have = known || {
        let t_ask = Instant::now();
        let (s, r) = oneshot::channel();
        asker
            .blocking_send((d, s))
            .map_err(|_| Error::network("store", "asker stopped"))?;
        let have = r
            .blocking_recv()
            .map_err(|_| Error::network("store", "no answer"))??;
        add_nanos(&c.nanos_wait, t_ask);
        have
    };
    if have {
        shared.set(i, Entry::Data(d));
        c.reused.fetch_add(1, Ordering::Relaxed);
        c.done.fetch_add(len64, Ordering::Relaxed);
        c.skipped.fetch_add(len64, Ordering::Relaxed);
        c.read_done.fetch_add(data_bytes, Ordering::Relaxed);
        return Ok(());
    }
    let t_zstd = Instant::now();
    let enc = Bytes::from(encode_chunk_with(bytes, d, ZSTD_LEVEL)?);
    add_nanos(&c.nanos_compress, t_zstd);
    let t_window = Instant::now();
    let permit = handle
        .block_on(sem.clone().acquire_owned())
        .map_err(|_| Error::Usage("window closed".into()))?;
    add_nanos(&c.nanos_wait, t_window);
    if shared.failed.load(Ordering::SeqCst) {
        return Ok(());
    }
    let (store, shared) = (store.clone(), shared.clone());
    handle.spawn(async move {
        let n = enc.len() as u64;
        if let Some(l) = &shared.limiter {
            tokio::time::sleep_until(l.reserve(n).into()).await;
        }
        let t_send = Instant::now();
        let put = store.put_chunk(d, enc).await;
        add_nanos(&shared.c.nanos_send, t_send);
        match put {
            Ok(()) => {
                shared.set(i, Entry::Data(d));
                if let Ok(mut k) = shared.known.lock() {
                    k.insert(d);
                }
                shared.c.sent.fetch_add(n, Ordering::Relaxed);
                shared.c.new.fetch_add(1, Ordering::Relaxed);
                shared.c.done.fetch_add(len64, Ordering::Relaxed);
                shared.c.read_done.fetch_add(data_bytes, Ordering::Relaxed);
            }
            Err(e) => shared.fail(e),
        }
        drop(permit);
    });
    Ok(())
}

/// Allocated bytes of each chunk of `source` (its data runs), the map walked a window at a time.
fn allocated_per_chunk(source: &dyn BlockSource, cs: u64, n: usize) -> Result<Vec<u32>> {
    let mut v = vec![0u32; n];
    for run in godwit_disk::write::Runs::new(source) {
        let run = run?;
        if run.state != RunState::Data {
            continue;
        }
        let mut off = run.offset;
        while off < run.end() {
            let i = off / cs;
            let end = ((i + 1) * cs).min(run.end());
            if let Some(slot) = usize::try_from(i).ok().and_then(|i| v.get_mut(i)) {
                // At most one chunk (8 MiB) per slot.
                *slot = slot.saturating_add(u32::try_from(end - off).unwrap_or(u32::MAX));
            }
            off = end;
        }
    }
    Ok(v)
}

impl From<std::ops::Range<u64>> for Range {
    fn from(r: std::ops::Range<u64>) -> Range {
        Range {
            offset: r.start,
            len: r.end.saturating_sub(r.start),
        }
    }
}
