//! Garbage collection and verification of a [`Store`].
//!
//! GC is safe against a concurrent sync: it writes `gc.lock`, then looks for fresh leases; a
//! sync writes its lease, then looks for a fresh `gc.lock`. With read-after-write consistency
//! (a local directory, S3 since 2020) at least one of them sees the other: GC gives up when it
//! sees a lease, a sync waits for `gc.lock` to go. Only then does GC mark every chunk named by
//! any index and sweep the rest.

use super::{ChunkStore, LEASE_STALE_MS, LeaseRecord, Store, chunk_key};
use crate::chunk::decode_chunk;
use crate::digest::ChunkDigest;
use crate::error::Result;
use crate::index::{SyncIndex, now_ms};
use bytes::Bytes;
use std::collections::HashSet;

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// GC did nothing because these syncs were in progress.
    pub skipped_for_leases: Vec<String>,
    pub indexes: usize,
    pub chunks_kept: usize,
    pub chunks_deleted: usize,
    pub bytes_deleted: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub chunks_ok: usize,
    /// `key: reason` for every chunk that is unreadable or does not hash to its name.
    pub chunks_bad: Vec<String>,
    pub indexes_ok: usize,
    /// `key: reason` for every index that does not parse or names a missing chunk.
    pub indexes_bad: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.chunks_bad.is_empty() && self.indexes_bad.is_empty()
    }
}

fn digest_of_key(k: &str) -> Option<ChunkDigest> {
    let name = k.strip_prefix("chunks/")?.split('/').nth(1)?;
    ChunkDigest::parse_hex(name)
        .ok()
        .filter(|d| chunk_key(d) == k)
}

impl Store {
    async fn fresh_leases(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (k, mtime) in self.backend.list("leases/").await? {
            let Some(b) = self.backend.get(&k).await? else {
                continue;
            };
            let refreshed = serde_json::from_slice::<LeaseRecord>(&b)
                .map_or(mtime, |r| r.refreshed_ms.max(mtime));
            if now_ms().saturating_sub(refreshed) < LEASE_STALE_MS {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Delete every chunk no index references, unless a sync is in progress.
    pub async fn gc(&self) -> Result<GcReport> {
        self.backend
            .put("gc.lock", Bytes::from(now_ms().to_string()))
            .await?;
        let r = self.gc_locked().await;
        let unlock = self.backend.delete("gc.lock").await;
        let r = r?;
        unlock?;
        Ok(r)
    }

    async fn gc_locked(&self) -> Result<GcReport> {
        let mut rep = GcReport::default();
        let leases = self.fresh_leases().await?;
        if !leases.is_empty() {
            rep.skipped_for_leases = leases;
            return Ok(rep);
        }
        let mut live: HashSet<ChunkDigest> = HashSet::new();
        for k in self.all_indexes().await? {
            let Some(b) = self.backend.get(&k).await? else {
                continue;
            };
            // An unreadable index keeps nothing alive, but we must not guess: stop.
            let idx = SyncIndex::parse(&b, &format!("{}/{k}", self.describe()))?;
            live.extend(idx.digests());
            rep.indexes += 1;
        }
        for (k, _) in self.backend.list("chunks/").await? {
            match digest_of_key(&k) {
                Some(d) if live.contains(&d) => rep.chunks_kept += 1,
                Some(_) => {
                    let size = self.backend.get(&k).await?.map_or(0, |b| b.len() as u64);
                    self.backend.delete(&k).await?;
                    rep.chunks_deleted += 1;
                    rep.bytes_deleted += size;
                }
                None => tracing::warn!(
                    "{}: stray object {k} under chunks/ left alone",
                    self.describe()
                ),
            }
        }
        Ok(rep)
    }

    /// Re-hash every chunk and check every index names only stored, valid chunks.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        let mut good: HashSet<ChunkDigest> = HashSet::new();
        for (k, _) in self.backend.list("chunks/").await? {
            let what = format!("{}/{k}", self.describe());
            let Some(d) = digest_of_key(&k) else {
                rep.chunks_bad.push(format!("{what}: not a chunk name"));
                continue;
            };
            let Some(b) = self.backend.get(&k).await? else {
                continue;
            };
            let w = what.clone();
            let res =
                tokio::task::spawn_blocking(move || decode_chunk(&b, Some(d), &w).map(|_| ()))
                    .await;
            match res {
                Ok(Ok(())) => {
                    good.insert(d);
                    rep.chunks_ok += 1;
                }
                Ok(Err(e)) => rep.chunks_bad.push(e.to_string()),
                Err(e) => rep.chunks_bad.push(format!("{what}: {e}")),
            }
        }
        for k in self.all_indexes().await? {
            let what = format!("{}/{k}", self.describe());
            let Some(b) = self.backend.get(&k).await? else {
                continue;
            };
            match SyncIndex::parse(&b, &what) {
                Ok(idx) => match idx.digests().into_iter().find(|d| !good.contains(d)) {
                    Some(d) => rep
                        .indexes_bad
                        .push(format!("{what}: chunk {d} is missing or bad")),
                    None => rep.indexes_ok += 1,
                },
                Err(e) => rep.indexes_bad.push(e.to_string()),
            }
        }
        Ok(rep)
    }
}
