//! The chunk store: one format (docs/store-format.md) over any object backend.
//!
//! ```text
//! godwit-store.json                          format marker and version
//! chunks/<2 hex>/<64 hex>                    chunk files (chunk.rs), named by content SHA-256
//! syncs/<vm, %-escaped>/<disk>/<sync id>.idx sync indexes (index.rs), written last
//! leases/<lease id>.json                     in-progress syncs (refreshed every 30 s)
//! gc.lock                                    a garbage collection is running
//! ```
//!
//! [`ChunkStore`] is what the replication pipeline and export talk to; [`Store`] implements it
//! over a [`Backend`] (a local directory, or an S3-compatible bucket), and the staging client
//! implements it over the TCP 1500 protocol.

pub mod gc;
pub mod local;
pub mod s3;

use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::index::{SyncId, SyncIndex, check_vm_name, now_ms};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Store format version written to `godwit-store.json`.
pub const STORE_VERSION: u32 = 1;
/// A lease not refreshed for this long belongs to a dead writer and no longer blocks GC.
pub const LEASE_STALE_MS: u64 = 5 * 60 * 1000;
const LEASE_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// Objects under string keys (`/`-separated, relative). `put` is atomic and durable: readers see
/// the old object, no object, or the whole new one.
pub trait Backend: Send + Sync {
    fn describe(&self) -> String;
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, ()>;
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Bytes>>;
    /// Which of `keys` exist, in order.
    fn exists_many(&self, keys: Vec<String>) -> BoxFut<'_, Vec<bool>>;
    /// Every key under `prefix`, with its modification time in Unix milliseconds.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Vec<(String, u64)>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()>;
}

/// What the replication pipeline, export and the staging server need from a store.
pub trait ChunkStore: Send + Sync {
    fn describe(&self) -> String;
    /// Which of `digests` are stored, in order.
    fn has_chunks(&self, digests: Vec<ChunkDigest>) -> BoxFut<'_, Vec<bool>>;
    /// Store an encoded chunk (chunk.rs format) under its digest; idempotent.
    fn put_chunk(&self, digest: ChunkDigest, encoded: Bytes) -> BoxFut<'_, ()>;
    /// The encoded chunk, unverified (callers decode with [`crate::chunk::decode_chunk`]).
    fn get_chunk(&self, digest: ChunkDigest) -> BoxFut<'_, Bytes>;
    /// Syncs of one disk, oldest first.
    fn list_syncs<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, Vec<SyncId>>;
    fn get_index<'a>(&'a self, vm: &'a str, disk: u32, sync: &'a SyncId) -> BoxFut<'a, Bytes>;
    /// Make a sync visible. Refused unless the index parses and every chunk it names is stored.
    fn commit_index(&self, index: Bytes) -> BoxFut<'_, SyncId>;
    /// Announce an in-progress sync (so GC keeps the chunks it is writing); returns a lease id.
    fn begin_sync<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, String>;
    fn end_sync<'a>(&'a self, lease: &'a str) -> BoxFut<'a, ()>;
}

pub fn chunk_key(d: &ChunkDigest) -> String {
    let h = d.to_hex();
    format!("chunks/{}/{h}", &h[..2])
}

/// Any VM name as one safe key segment (`%`-escaped; the one encoder for untrusted names,
/// `godwit_safepath::Component::encode`).
pub fn escape_segment(s: &str) -> String {
    godwit_safepath::Component::encode(s).as_str().to_string()
}

pub fn sync_prefix(vm: &str, disk: u32) -> String {
    format!("syncs/{}/{disk}/", escape_segment(vm))
}

pub fn index_key(vm: &str, disk: u32, sync: &SyncId) -> String {
    format!("{}{}.idx", sync_prefix(vm, disk), sync)
}

/// The store format over a backend.
pub struct Store {
    backend: Arc<dyn Backend>,
    leases: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    format: String,
    version: u32,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    pub vm: String,
    pub disk: u32,
    pub started_ms: u64,
    pub refreshed_ms: u64,
}

impl Store {
    /// Open (and on first use initialise) a store: checks the format marker.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Store> {
        let what = format!("{}/godwit-store.json", backend.describe());
        match backend.get("godwit-store.json").await? {
            Some(b) => {
                let m: Marker = serde_json::from_slice(&b)
                    .map_err(|e| Error::malformed(&what, 0, e.to_string()))?;
                if m.format != "godwit-store" || m.version != STORE_VERSION {
                    return Err(Error::malformed(
                        &what,
                        0,
                        format!(
                            "store format {} version {} (this build reads godwit-store {STORE_VERSION})",
                            m.format, m.version
                        ),
                    ));
                }
            }
            None => {
                let m = Marker {
                    format: "godwit-store".into(),
                    version: STORE_VERSION,
                };
                let b = serde_json::to_vec_pretty(&m).unwrap_or_default();
                backend.put("godwit-store.json", Bytes::from(b)).await?;
            }
        }
        Ok(Store {
            backend,
            leases: Mutex::new(HashMap::new()),
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Every (vm key segment, disk, sync id) in the store.
    pub async fn all_indexes(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .backend
            .list("syncs/")
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.ends_with(".idx"))
            .collect();
        v.sort();
        Ok(v)
    }

    async fn wait_for_gc(&self) -> Result<()> {
        for _ in 0..600 {
            let fresh = self
                .backend
                .list("gc.lock")
                .await?
                .into_iter()
                .any(|(k, t)| k == "gc.lock" && now_ms().saturating_sub(t) < LEASE_STALE_MS);
            if !fresh {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        Err(Error::Usage(format!(
            "{}: a garbage collection has held gc.lock for 10 minutes",
            self.backend.describe()
        )))
    }
}

fn lease_bytes(vm: &str, disk: u32, started_ms: u64) -> Bytes {
    let rec = LeaseRecord {
        vm: vm.to_string(),
        disk,
        started_ms,
        refreshed_ms: now_ms(),
    };
    Bytes::from(serde_json::to_vec(&rec).unwrap_or_default())
}

impl ChunkStore for Store {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn has_chunks(&self, digests: Vec<ChunkDigest>) -> BoxFut<'_, Vec<bool>> {
        Box::pin(async move {
            self.backend
                .exists_many(digests.iter().map(chunk_key).collect())
                .await
        })
    }

    fn put_chunk(&self, digest: ChunkDigest, encoded: Bytes) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let key = chunk_key(&digest);
            if self.backend.exists_many(vec![key.clone()]).await?.first() == Some(&true) {
                return Ok(());
            }
            self.backend.put(&key, encoded).await
        })
    }

    fn get_chunk(&self, digest: ChunkDigest) -> BoxFut<'_, Bytes> {
        Box::pin(async move {
            let key = chunk_key(&digest);
            self.backend
                .get(&key)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: format!("{}/{key}", self.backend.describe()),
                })
        })
    }

    fn list_syncs<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, Vec<SyncId>> {
        Box::pin(async move {
            check_vm_name(vm)?;
            let prefix = sync_prefix(vm, disk);
            let mut v: Vec<SyncId> = self
                .backend
                .list(&prefix)
                .await?
                .into_iter()
                .filter_map(|(k, _)| {
                    k.strip_prefix(&prefix)
                        .and_then(|n| n.strip_suffix(".idx"))
                        .and_then(|n| SyncId::parse(n).ok())
                })
                .collect();
            v.sort();
            Ok(v)
        })
    }

    fn get_index<'a>(&'a self, vm: &'a str, disk: u32, sync: &'a SyncId) -> BoxFut<'a, Bytes> {
        Box::pin(async move {
            check_vm_name(vm)?;
            let key = index_key(vm, disk, sync);
            self.backend
                .get(&key)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: format!(
                        "{}/{key} (sync {sync} of {vm} disk {disk})",
                        self.backend.describe()
                    ),
                })
        })
    }

    fn commit_index(&self, index: Bytes) -> BoxFut<'_, SyncId> {
        Box::pin(async move {
            let idx = SyncIndex::parse(&index, "index to commit")?;
            let digests = idx.digests();
            for batch in digests.chunks(4096) {
                let have = self.has_chunks(batch.to_vec()).await?;
                if let Some(pos) = have.iter().position(|h| !h) {
                    return Err(Error::integrity(
                        format!("sync {} of {} disk {}", idx.sync_id, idx.vm, idx.disk),
                        format!("chunk {} is not stored; refusing to commit", batch[pos]),
                    ));
                }
            }
            let key = index_key(&idx.vm, idx.disk, &idx.sync_id);
            if self.backend.exists_many(vec![key.clone()]).await?.first() == Some(&true) {
                return Err(Error::Usage(format!("sync {} already exists", idx.sync_id)));
            }
            self.backend.put(&key, index).await?;
            Ok(idx.sync_id)
        })
    }

    fn begin_sync<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, String> {
        Box::pin(async move {
            check_vm_name(vm)?;
            let id = format!(
                "{}-{:016x}",
                crate::index::utc_stamp(now_ms()),
                rand::random::<u64>()
            );
            let key = format!("leases/{id}.json");
            let started = now_ms();
            self.backend
                .put(&key, lease_bytes(vm, disk, started))
                .await?;
            // The lease is visible before we look for a running GC: one of us sees the other.
            self.wait_for_gc().await?;
            let backend = self.backend.clone();
            let vm2 = vm.to_string();
            let h = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_REFRESH).await;
                    if let Err(e) = backend.put(&key, lease_bytes(&vm2, disk, started)).await {
                        tracing::warn!("refreshing lease {key}: {e}");
                    }
                }
            });
            if let Ok(mut m) = self.leases.lock() {
                m.insert(id.clone(), h);
            }
            Ok(id)
        })
    }

    fn end_sync<'a>(&'a self, lease: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            if let Some(h) = self.leases.lock().ok().and_then(|mut m| m.remove(lease)) {
                h.abort();
            }
            self.backend.delete(&format!("leases/{lease}.json")).await
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Ok(m) = self.leases.lock() {
            for h in m.values() {
                h.abort();
            }
        }
    }
}

/// Ask `exists` for many keys with bounded concurrency, keeping the order.
pub async fn exists_concurrently<F, Fut>(keys: Vec<String>, f: F) -> Result<Vec<bool>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    futures::stream::iter(keys.into_iter().map(f))
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Open a store from a target URL: `file:///DIR` or `s3://BUCKET/PREFIX`.
pub async fn open_url(url: &str) -> Result<Store> {
    let backend: Arc<dyn Backend> = if let Some(path) = url.strip_prefix("file://") {
        Arc::new(local::LocalDir::create(std::path::Path::new(path))?)
    } else if let Some(rest) = url.strip_prefix("s3://") {
        Arc::new(s3::S3Backend::from_env(rest)?)
    } else {
        return Err(Error::Usage(format!(
            "store URL {url:?}: expected file:///DIR or s3://BUCKET/PREFIX"
        )));
    };
    Store::open(backend).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::encode_chunk;
    use crate::index::{Entry, SyncIndex};

    #[tokio::test]
    async fn local_store_commits_only_complete_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Arc::new(local::LocalDir::create(dir.path()).unwrap()))
            .await
            .unwrap();
        let (d, enc) = encode_chunk(&[5u8; 8192]).unwrap();
        let idx = SyncIndex {
            sync_id: SyncId::new(now_ms()),
            parent: None,
            vm: "vm x".into(),
            disk: 0,
            chunk_size: 8192,
            disk_size: 16384,
            created_ms: now_ms(),
            raw_sha256: None,
            metadata: Default::default(),
            entries: vec![Entry::Data(d), Entry::Zero],
        };
        let e = store
            .commit_index(Bytes::from(idx.encode()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("is not stored"), "{e}");
        assert_eq!(store.has_chunks(vec![d]).await.unwrap(), vec![false]);
        store.put_chunk(d, Bytes::from(enc.clone())).await.unwrap();
        store.put_chunk(d, Bytes::from(enc)).await.unwrap();
        assert_eq!(store.has_chunks(vec![d]).await.unwrap(), vec![true]);
        let id = store.commit_index(Bytes::from(idx.encode())).await.unwrap();
        assert_eq!(store.list_syncs("vm x", 0).await.unwrap(), vec![id.clone()]);
        let back = SyncIndex::parse(&store.get_index("vm x", 0, &id).await.unwrap(), "t").unwrap();
        assert_eq!(back, idx);
        assert!(
            store.commit_index(Bytes::from(idx.encode())).await.is_err(),
            "a sync is written once"
        );
        let v = store.verify().await.unwrap();
        assert!(
            v.is_clean() && v.chunks_ok == 1 && v.indexes_ok == 1,
            "{v:?}"
        );
        let lease = store.begin_sync("vm x", 0).await.unwrap();
        assert!(!store.gc().await.unwrap().skipped_for_leases.is_empty());
        store.end_sync(&lease).await.unwrap();
        let g = store.gc().await.unwrap();
        assert_eq!((g.chunks_kept, g.chunks_deleted), (1, 0));
        assert!(dir.path().join("syncs/vm%20x/0").is_dir());
    }

    #[test]
    fn escaping_is_one_safe_segment() {
        assert_eq!(escape_segment("web-01"), "web-01");
        assert_eq!(escape_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(escape_segment(".."), "%2E.");
        assert_eq!(escape_segment("é"), "%C3%A9");
    }
}
