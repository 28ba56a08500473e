//! The chunk store: one format (docs/store-format.md) over any object backend.
//!
//! ```text
//! godwit-store.json                          format marker and version
//! chunks/<2 hex>/<64 hex>                    chunk files (chunk.rs), named by content SHA-256
//! syncs/<vm, %-escaped>/<disk>/<sync id>.idx sync indexes (index.rs), written last, never replaced
//! leases/<lease id>.json                     syncs in progress (refreshed every 30 s)
//! gc.lock                                    a garbage collection is running
//! gc/collections/<id>.json                   a GC run's fossil collection and the leases it waits for
//! gc/fossils/<id>/<2 hex>/<64 hex>           chunks a GC found unreferenced, kept until safe to delete
//! tokens/<token id>.json                     connector tokens (SHA-256 of the secret)
//! owners/<vm, %-escaped>.json                which connector a VM belongs to
//! ```
//!
//! [`ChunkStore`] is what the replication pipeline and export talk to; [`Store`] implements it
//! over a [`Backend`] (a local directory, or an S3-compatible bucket), and the staging client
//! implements it over the TCP 1500 protocol. Several staging servers (and direct writers) may
//! share one store: commits never overwrite (`put_new`), sync ids are assigned at commit, and
//! GC runs concurrently with syncs (gc.rs).

pub mod access;
mod commit;
pub mod gc;
mod lease;
pub mod local;
pub mod s3;
pub mod usage;

pub use commit::COMMIT_NONCE;

use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::index::{SyncId, check_vm_name};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Store format version written to `godwit-store.json`. Version 2 added store-assigned sync
/// ids, leases judged by the store's clock, GC fossils, tokens and owners; chunks and indexes
/// are as in version 1, so a version 1 store is upgraded in place when opened (and from then
/// on refused by version 1 builds, whose GC and server do not follow the version 2 rules).
pub const STORE_VERSION: u32 = 2;
/// A lease not refreshed for this long belongs to a dead writer: GC no longer waits for it.
/// `GODWIT_LEASE_STALE_SECS` overrides it (tests).
pub const LEASE_STALE_MS: u64 = 5 * 60 * 1000;

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    /// Modification time by the store's clock, Unix milliseconds.
    pub modified_ms: u64,
    pub size: u64,
}

/// Objects under string keys (`/`-separated, relative). `put` is atomic and durable: readers see
/// the old object, no object, or the whole new one.
pub trait Backend: Send + Sync {
    fn describe(&self) -> String;
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, ()>;
    /// Create `key` only if no object has that name (a local `link(2)`, an S3 conditional PUT).
    /// `Ok(false)`: another object is there (left unchanged). `Ok(true)` also when the object
    /// there holds exactly `data` (a retried write of ours).
    fn put_new<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFut<'a, bool>;
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Option<Bytes>>;
    /// Which of `keys` exist, in order.
    fn exists_many(&self, keys: Vec<String>) -> BoxFut<'_, Vec<bool>>;
    /// Every key under `prefix` (a string prefix: `"gc.lock"` or `"chunks/"`).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Vec<ObjectMeta>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, ()>;
    /// Move an object to a new key (replacing any object there). `Error::NotFound` if `from`
    /// is absent. Not atomic on S3 (copy, then delete): for a moment both keys exist.
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFut<'a, ()>;
    /// Free and total bytes of the file system holding the objects; `None` when the store
    /// cannot tell (S3: no such limit to report).
    fn space(&self) -> Result<Option<StoreSpace>> {
        Ok(None)
    }
}

/// The room left where a store keeps its objects (`statvfs` of a local store's directory:
/// `f_bavail` and `f_blocks` times `f_frsize`), answered to the staging protocol's `GetSpace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSpace {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    pub total_bytes: u64,
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
    /// Make a sync visible, under a sync id the store assigns (later than every sync of the
    /// disk; the id in the uploaded index is replaced). Refused unless the index parses and
    /// every chunk it names is stored ([`Error::MissingChunks`] otherwise). Idempotent for an
    /// index carrying the same commit nonce (metadata `godwit.commit`): a retried commit
    /// returns the id of the first.
    fn commit_index(&self, index: Bytes) -> BoxFut<'_, SyncId>;
    /// Announce an in-progress sync (so GC keeps the chunks it is writing); returns a lease id.
    fn begin_sync<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, String>;
    fn end_sync<'a>(&'a self, lease: &'a str) -> BoxFut<'a, ()>;
    /// The room left in the store: `None` when unknown (an S3 store, or a staging server too
    /// old to answer `GetSpace`).
    fn space(&self) -> BoxFut<'_, Option<StoreSpace>> {
        Box::pin(async { Ok(None) })
    }
}

pub fn chunk_key(d: &ChunkDigest) -> String {
    let h = d.to_hex();
    format!("chunks/{}/{h}", &h[..2])
}

/// The digest a `chunks/<hh>/<hex>` key names (None for anything else).
pub fn digest_of_chunk_key(k: &str) -> Option<ChunkDigest> {
    let name = k.strip_prefix("chunks/")?.split('/').nth(1)?;
    ChunkDigest::parse_hex(name)
        .ok()
        .filter(|d| chunk_key(d) == k)
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
    /// Refresh tasks of the leases this process holds.
    leases: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    lease_stale_ms: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    format: String,
    version: u32,
}

impl Store {
    /// Open (and on first use initialise) a store: checks the format marker.
    pub async fn open(backend: Arc<dyn Backend>) -> Result<Store> {
        let what = format!("{}/godwit-store.json", backend.describe());
        let fresh = Marker {
            format: "godwit-store".into(),
            version: STORE_VERSION,
        };
        let fresh = Bytes::from(serde_json::to_vec_pretty(&fresh).unwrap_or_default());
        // Several servers may open a new store at once: one creates the marker.
        let b = match backend.get("godwit-store.json").await? {
            Some(b) => b,
            None if backend.put_new("godwit-store.json", fresh.clone()).await? => fresh.clone(),
            None => backend
                .get("godwit-store.json")
                .await?
                .ok_or_else(|| Error::NotFound { what: what.clone() })?,
        };
        let m: Marker =
            serde_json::from_slice(&b).map_err(|e| Error::malformed(&what, 0, e.to_string()))?;
        if m.format == "godwit-store" && m.version == 1 {
            tracing::info!("{what}: upgrading the store from version 1 to {STORE_VERSION}");
            backend.put("godwit-store.json", fresh.clone()).await?;
        } else if m.format != "godwit-store" || m.version != STORE_VERSION {
            return Err(Error::malformed(
                &what,
                0,
                format!(
                    "store format {} version {} (this build reads godwit-store {STORE_VERSION})",
                    m.format, m.version
                ),
            ));
        }
        let lease_stale_ms = std::env::var("GODWIT_LEASE_STALE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(LEASE_STALE_MS, |s| s.saturating_mul(1000).max(1000));
        Ok(Store {
            backend,
            leases: Mutex::new(HashMap::new()),
            lease_stale_ms,
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Every index key in the store, sorted.
    pub async fn all_indexes(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .backend
            .list("syncs/")
            .await?
            .into_iter()
            .map(|m| m.key)
            .filter(|k| k.ends_with(".idx"))
            .collect();
        v.sort();
        Ok(v)
    }

    /// The store's clock: write `key` and read back its modification time, so that times
    /// compared with other objects' (leases) come from one clock, whatever the skew between
    /// the machines that wrote them.
    async fn store_now(&self, key: &str, data: Bytes) -> Result<u64> {
        self.backend.put(key, data).await?;
        Ok(self
            .backend
            .list(key)
            .await?
            .into_iter()
            .find(|m| m.key == key)
            .map_or_else(crate::index::now_ms, |m| m.modified_ms))
    }
}

impl ChunkStore for Store {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn space(&self) -> BoxFut<'_, Option<StoreSpace>> {
        Box::pin(async move { self.backend.space() })
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
            if let Some(b) = self.backend.get(&key).await? {
                return Ok(b);
            }
            // A chunk of a sync committed while a GC was collecting it: bring it back.
            if self.restore_fossils(&[digest]).await?.is_empty()
                && let Some(b) = self.backend.get(&key).await?
            {
                return Ok(b);
            }
            Err(Error::NotFound {
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
                .filter_map(|m| {
                    m.key
                        .strip_prefix(&prefix)
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
        Box::pin(self.commit(index))
    }

    fn begin_sync<'a>(&'a self, vm: &'a str, disk: u32) -> BoxFut<'a, String> {
        Box::pin(self.take_lease(vm, disk))
    }

    fn end_sync<'a>(&'a self, lease: &'a str) -> BoxFut<'a, ()> {
        Box::pin(self.drop_lease(lease))
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

/// Open a store from a URL: `file:///DIR` or `s3://BUCKET/PREFIX` (credentials from
/// [`s3::S3Config::from_env`]).
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
mod tests;
