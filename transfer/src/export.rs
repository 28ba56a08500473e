//! Export: a sync index as a [`BlockSource`] (zero entries are zero runs, data entries are
//! fetched, decompressed and verified on demand with a few chunks of read-ahead), streamed
//! through the `disk` writers to a local file (raw: sparse) or to S3 (see `s3_export`).
//! The SHA-256 of the raw content is computed on the way and checked against the one recorded
//! at replication.

use crate::chunk::decode_chunk;
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::index::{Entry, SyncId, SyncIndex};
use crate::replicate::Connect;
use crate::store::ChunkStore;
use godwit_disk::layer::push_run;
use godwit_disk::progress::Meter;
use godwit_disk::write::{OutputFormat, WriteStats};
use godwit_disk::{BlockSource, Run, RunState};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

type Fetch = JoinHandle<Result<Arc<Vec<u8>>>>;

/// The store chunks are fetched from; after a network fault, another connection (to the same
/// or, for several staging servers of one store, another server) when a way to reconnect was
/// given ([`IndexSource::with_reconnect`]).
struct StoreSlot {
    /// The connection and its generation (bumped at each reconnect, so that fetches failing
    /// together reconnect once).
    current: tokio::sync::Mutex<(u64, Arc<dyn ChunkStore>)>,
    reconnect: Option<Arc<dyn Connect>>,
    attempts: u32,
}

impl StoreSlot {
    async fn get_chunk(&self, d: ChunkDigest) -> Result<bytes::Bytes> {
        let mut attempt = 0u32;
        loop {
            let (generation, store) = {
                let g = self.current.lock().await;
                (g.0, g.1.clone())
            };
            let e = match store.get_chunk(d).await {
                Ok(b) => return Ok(b),
                Err(e) => e,
            };
            let Some(reconnect) = self.reconnect.as_ref().filter(|_| e.is_retryable()) else {
                return Err(e);
            };
            attempt += 1;
            if attempt >= self.attempts {
                return Err(e);
            }
            let mut g = self.current.lock().await;
            if g.0 != generation {
                continue; // another fetch reconnected already
            }
            let backoff = Duration::from_secs((1u64 << (attempt - 1).min(4)).min(10));
            eprintln!(
                "godwit: {e}; reconnecting in {} s (attempt {attempt} of {})",
                backoff.as_secs(),
                self.attempts
            );
            tokio::time::sleep(backoff).await;
            match reconnect.connect().await {
                Ok(s) => {
                    *g = (generation + 1, s);
                }
                Err(e) if e.is_retryable() => {
                    eprintln!("godwit: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A sync read back from a store.
pub struct IndexSource {
    pub index: SyncIndex,
    store: Arc<StoreSlot>,
    handle: Handle,
    readahead: usize,
    state: Mutex<FetchState>,
    meter: Option<Arc<Meter>>,
}

#[derive(Default)]
struct FetchState {
    current: Option<(usize, Arc<Vec<u8>>)>,
    inflight: HashMap<usize, Fetch>,
}

fn disk_err(what: String, e: &Error) -> godwit_disk::Error {
    godwit_disk::Error::io(what, "fetch chunk", std::io::Error::other(e.to_string()))
}

impl IndexSource {
    pub fn new(index: SyncIndex, store: Arc<dyn ChunkStore>, handle: Handle) -> Self {
        IndexSource {
            index,
            store: Arc::new(StoreSlot {
                current: tokio::sync::Mutex::new((0, store)),
                reconnect: None,
                attempts: 1,
            }),
            handle,
            readahead: 4,
            state: Mutex::new(FetchState::default()),
            meter: None,
        }
    }

    /// After a network fault, reconnect through `target` (which may pick another staging server
    /// of the same store) and fetch the chunk again, up to `attempts` tries per chunk. Call
    /// before any read.
    pub fn with_reconnect(mut self, target: Arc<dyn Connect>, attempts: u32) -> Self {
        if let Some(slot) = Arc::get_mut(&mut self.store) {
            slot.reconnect = Some(target);
            slot.attempts = attempts.max(1);
        }
        self
    }

    /// Count the data bytes writers read on `meter` (its total: [`IndexSource::data_bytes`]).
    pub fn with_meter(mut self, meter: Arc<Meter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Bytes of the disk held in data chunks: what an export reads from the store.
    pub fn data_bytes(&self) -> u64 {
        let cs = u64::from(self.index.chunk_size);
        let size = self.index.disk_size;
        (0u64..)
            .zip(&self.index.entries)
            .filter(|(_, e)| matches!(e, Entry::Data(_)))
            .map(|(i, _)| size.saturating_sub(i * cs).min(cs))
            .sum()
    }

    fn spawn_fetch(&self, i: usize) -> Option<Fetch> {
        let Entry::Data(d) = *self.index.entries.get(i)? else {
            return None;
        };
        let store = self.store.clone();
        let what = format!("chunk {i} ({d}) of sync {}", self.index.sync_id);
        Some(self.handle.spawn(async move {
            let b = store.get_chunk(d).await?;
            let data = tokio::task::spawn_blocking(move || decode_chunk(&b, Some(d), &what))
                .await
                .map_err(|e| Error::Usage(e.to_string()))??;
            Ok(Arc::new(data))
        }))
    }

    /// The decoded bytes of data chunk `i`, starting fetches of the next few.
    fn chunk(&self, i: usize) -> Result<Arc<Vec<u8>>> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| Error::Usage("poisoned".into()))?;
        if let Some((ci, data)) = &st.current
            && *ci == i
        {
            return Ok(data.clone());
        }
        let mut ahead = i + 1;
        let mut queued = 0;
        while queued < self.readahead && ahead < self.index.entries.len() {
            if matches!(self.index.entries[ahead], Entry::Data(_)) {
                if !st.inflight.contains_key(&ahead)
                    && let Some(f) = self.spawn_fetch(ahead)
                {
                    st.inflight.insert(ahead, f);
                }
                queued += 1;
            }
            ahead += 1;
        }
        // Forget fetches behind us (a writer that jumped).
        st.inflight.retain(|&k, f| {
            let keep = k > i;
            if !keep {
                f.abort();
            }
            keep
        });
        let f = match st.inflight.remove(&i) {
            Some(f) => f,
            None => self
                .spawn_fetch(i)
                .ok_or_else(|| Error::Usage(format!("chunk {i} is not a data chunk")))?,
        };
        drop(st);
        let data = self
            .handle
            .block_on(f)
            .map_err(|e| Error::Usage(e.to_string()))??;
        if let Ok(mut st) = self.state.lock() {
            st.current = Some((i, data.clone()));
        }
        Ok(data)
    }
}

impl BlockSource for IndexSource {
    fn virtual_size(&self) -> u64 {
        self.index.disk_size
    }

    fn map(&self, offset: u64, len: u64) -> godwit_disk::Result<Vec<Run>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.index.disk_size)
            .ok_or_else(|| {
                godwit_disk::Error::Usage(format!(
                    "sync {}: range {offset}+{len} past the disk size {}",
                    self.index.sync_id, self.index.disk_size
                ))
            })?;
        let cs = u64::from(self.index.chunk_size);
        let mut runs = Vec::new();
        let mut off = offset;
        while off < end {
            let i = usize::try_from(off / cs).unwrap_or(usize::MAX);
            let chunk_end = ((off / cs) + 1).saturating_mul(cs).min(end);
            let state = match self.index.entries.get(i) {
                Some(Entry::Data(_)) => RunState::Data,
                _ => RunState::Zero,
            };
            push_run(
                &mut runs,
                Run {
                    offset: off,
                    len: chunk_end - off,
                    state,
                },
            );
            off = chunk_end;
        }
        Ok(runs)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> godwit_disk::Result<()> {
        let cs = u64::from(self.index.chunk_size);
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.index.disk_size)
            .ok_or_else(|| {
                godwit_disk::Error::Usage(format!(
                    "sync {}: read {offset}+{} past the disk size",
                    self.index.sync_id,
                    buf.len()
                ))
            })?;
        let mut off = offset;
        while off < end {
            let i = usize::try_from(off / cs).unwrap_or(usize::MAX);
            let in_chunk = usize::try_from(off % cs).unwrap_or(0);
            let n = usize::try_from((cs - off % cs).min(end - off)).unwrap_or(0);
            let dst_start = usize::try_from(off - offset).unwrap_or(0);
            let dst = &mut buf[dst_start..dst_start + n];
            match self.index.entries.get(i) {
                Some(Entry::Data(_)) => {
                    let data = self.chunk(i).map_err(|e| {
                        disk_err(format!("sync {} chunk {i}", self.index.sync_id), &e)
                    })?;
                    let src = data.get(in_chunk..in_chunk + n).ok_or_else(|| {
                        godwit_disk::Error::corrupt(
                            format!("sync {} chunk {i}", self.index.sync_id),
                            "chunk",
                            off,
                            "chunk shorter than the index says",
                        )
                    })?;
                    dst.copy_from_slice(src);
                    if let Some(m) = &self.meter {
                        m.add(n as u64);
                    }
                }
                _ => dst.fill(0),
            }
            off += n as u64;
        }
        Ok(())
    }
}

/// A [`BlockSource`] wrapper that hashes everything read from it, zero runs included, as long
/// as reads come in order (every writer reads front to back). `finish` fills the tail.
pub struct HashingSource<'a> {
    inner: &'a dyn BlockSource,
    st: Mutex<(Sha256, u64, bool)>,
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

fn hash_zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        h.update(&ZEROS[..usize::try_from(k).unwrap_or(0)]);
        n -= k;
    }
}

impl<'a> HashingSource<'a> {
    pub fn new(inner: &'a dyn BlockSource) -> Self {
        HashingSource {
            inner,
            st: Mutex::new((Sha256::new(), 0, true)),
        }
    }

    /// SHA-256 of the whole raw content, or None if reads were out of order.
    pub fn finish(self) -> Option<[u8; 32]> {
        let (mut h, pos, ok) = self.st.into_inner().ok()?;
        let size = self.inner.virtual_size();
        if !ok || pos > size {
            return None;
        }
        hash_zeros(&mut h, size - pos);
        Some(h.finalize().into())
    }
}

impl BlockSource for HashingSource<'_> {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }
    fn map(&self, offset: u64, len: u64) -> godwit_disk::Result<Vec<Run>> {
        self.inner.map(offset, len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> godwit_disk::Result<()> {
        self.inner.read_at(offset, buf)?;
        if let Ok(mut st) = self.st.lock() {
            let (h, pos, ok) = &mut *st;
            if *ok && offset >= *pos {
                hash_zeros(h, offset - *pos);
                h.update(&*buf);
                *pos = offset + buf.len() as u64;
            } else {
                *ok = false;
            }
        }
        Ok(())
    }
}

/// SHA-256 of a source's raw content, read front to back.
pub fn raw_sha256(src: &dyn BlockSource) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    for run in src.map(0, src.virtual_size())? {
        if run.state == RunState::Zero {
            hash_zeros(&mut h, run.len);
            continue;
        }
        let mut off = run.offset;
        while off < run.end() {
            let n = usize::try_from((run.end() - off).min(buf.len() as u64)).unwrap_or(0);
            src.read_at(off, &mut buf[..n])?;
            h.update(&buf[..n]);
            off += n as u64;
        }
    }
    Ok(h.finalize().into())
}

/// Which sync to export: a given id, or the newest.
pub async fn load_index(
    store: &dyn ChunkStore,
    vm: &str,
    disk: u32,
    sync: Option<&SyncId>,
) -> Result<SyncIndex> {
    let id = match sync {
        Some(s) => s.clone(),
        None => crate::index::newest(&store.list_syncs(vm, disk).await?, crate::index::now_ms())
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("{}: no sync of {vm} disk {disk}", store.describe()),
            })?,
    };
    let b = store.get_index(vm, disk, &id).await?;
    let idx = SyncIndex::parse(&b, &format!("{} sync {id}", store.describe()))?;
    if idx.vm != vm || idx.disk != disk {
        return Err(Error::integrity(
            format!("sync {id}"),
            format!("index is for {} disk {}", idx.vm, idx.disk),
        ));
    }
    Ok(idx)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    pub vm: String,
    pub disk: u32,
    pub sync_id: String,
    pub format: String,
    pub out: String,
    pub disk_size: u64,
    pub data_bytes: u64,
    pub written_bytes: u64,
    pub raw_sha256: String,
    /// The SHA-256 recorded at replication (absent for change-tracked syncs).
    pub recorded_sha256: Option<String>,
    pub verified: bool,
}

/// Write `src` in `format` to `out`, hashing the raw content. Given the local `file` behind
/// `out`, the image is written positionally instead: raw output stays sparse and dynamic
/// VHD/VHDX leave all-zero blocks unallocated (`godwit_disk::write::write_image_to_file`).
/// Blocking (call from a plain thread).
pub fn write_hashed(
    src: &IndexSource,
    format: OutputFormat,
    out: &mut dyn Write,
    file: Option<&std::fs::File>,
    name: &str,
) -> Result<(WriteStats, [u8; 32])> {
    let hs = HashingSource::new(src);
    let stats = match file {
        Some(f) => godwit_disk::write::write_image_to_file(
            &hs,
            format,
            &godwit_disk::write::WriteOptions::default(),
            f,
            name,
        )?,
        None => godwit_disk::write::write_image(&hs, format, out)?,
    };
    let sha = match hs.finish() {
        Some(s) => s,
        None => raw_sha256(src)?,
    };
    Ok((stats, sha))
}

/// Compare a computed raw SHA-256 with the recorded one.
pub fn check_sha(index: &SyncIndex, got: &[u8; 32]) -> Result<bool> {
    match index.raw_sha256 {
        Some(want) if want != *got => Err(Error::integrity(
            format!("export of sync {}", index.sync_id),
            format!(
                "raw content hashes to {}, but replication recorded {}",
                hex::encode(got),
                hex::encode(want)
            ),
        )),
        Some(_) => Ok(true),
        None => Ok(false),
    }
}
