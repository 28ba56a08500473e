//! Garbage collection and verification of a [`Store`]. GC runs while syncs are in progress on
//! any number of servers; the rules and the argument for why it never deletes a chunk a sync
//! will reference are in docs/store-format.md ("Concurrency"). In short, one run:
//!
//! 1. takes `gc.lock` (conditional create; a stale lock is taken over), and reads the store's
//!    clock from it;
//! 2. marks every chunk named by an index;
//! 3. finds which earlier fossil collections are *ripe*: every lease alive when they were made
//!    has since ended or gone stale;
//! 4. moves every unmarked chunk to `gc/fossils/<run>/` (a sync asking for it from now on is
//!    told it is missing and sends it again);
//! 5. lists the leases alive now and records them with this run's collection; with none, the
//!    collection is ripe at once;
//! 6. marks again, from the indexes committed since step 2;
//! 7. sweeps the fossils: one an index names is moved back; one in a ripe collection is
//!    deleted; the rest wait for a later run.

use super::lease::LeaseRecord;
use super::{ChunkStore, ObjectMeta, Store, chunk_key, digest_of_chunk_key};
use crate::chunk::decode_chunk;
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::index::{SyncIndex, now_ms, utc_stamp};
use bytes::Bytes;
use godwit_disk::progress::Meter;
use std::collections::{BTreeMap, HashSet};

pub const FOSSILS: &str = "gc/fossils/";
const COLLECTIONS: &str = "gc/collections/";
const LOCK: &str = "gc.lock";

#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Leases of syncs in progress when this run set chunks aside: those fossils are deleted
    /// by a later run, once these have ended or gone stale.
    pub leases: Vec<String>,
    pub indexes: usize,
    pub chunks_kept: usize,
    /// Unreferenced chunks moved to `gc/fossils/` by this run.
    pub chunks_fossilized: usize,
    /// Fossils an index names (a sync committed during a collection), moved back.
    pub chunks_restored: usize,
    pub chunks_deleted: usize,
    pub bytes_deleted: u64,
    /// Fossils left for a later run (their collection waits for leases).
    pub fossils_waiting: usize,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub chunks_ok: usize,
    /// `key: reason` for every chunk that is unreadable or does not hash to its name.
    pub chunks_bad: Vec<String>,
    pub indexes_ok: usize,
    /// `key: reason` for every index that does not parse or names a missing chunk.
    pub indexes_bad: Vec<String>,
    /// Chunks a GC has set aside (deleted by a later GC unless a sync names them again).
    pub fossils: usize,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.chunks_bad.is_empty() && self.indexes_bad.is_empty()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Collection {
    created_ms: u64,
    /// Lease keys alive after the fossils were set aside.
    leases: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LockRecord {
    owner: String,
    started_ms: u64,
}

/// `gc/fossils/<run>/<hh>/<hex>` → (run, digest).
pub(crate) fn split_fossil_key(k: &str) -> Option<(&str, ChunkDigest)> {
    let rest = k.strip_prefix(FOSSILS)?;
    let (run, chunk) = rest.split_once('/')?;
    let d = digest_of_chunk_key(&format!("chunks/{chunk}"))?;
    Some((run, d))
}

pub(crate) fn digest_of_fossil_key(k: &str) -> Option<ChunkDigest> {
    split_fossil_key(k).map(|(_, d)| d)
}

fn fossil_key(run: &str, d: &ChunkDigest) -> String {
    let h = d.to_hex();
    format!("{FOSSILS}{run}/{}/{h}", &h[..2])
}

impl Store {
    /// Take `gc.lock`; returns the store's clock. Another fresh lock: an error naming it.
    async fn lock_gc(&self, owner: &str) -> Result<u64> {
        let rec = || {
            Bytes::from(
                serde_json::to_vec(&LockRecord {
                    owner: owner.to_string(),
                    started_ms: now_ms(),
                })
                .unwrap_or_default(),
            )
        };
        if !self.backend.put_new(LOCK, rec()).await? {
            let held: Vec<ObjectMeta> = self.backend.list(LOCK).await?;
            let probe = self
                .store_now("gc/clock", Bytes::from_static(b"clock"))
                .await?;
            let _ = self.backend.delete("gc/clock").await;
            let age = held
                .iter()
                .find(|m| m.key == LOCK)
                .map_or(u64::MAX, |m| probe.saturating_sub(m.modified_ms));
            if age < self.lease_stale_ms {
                return Err(Error::Usage(format!(
                    "{}: another garbage collection is running (gc.lock, {} s old); try again later",
                    self.describe(),
                    age / 1000
                )));
            }
            tracing::warn!("{}: taking over a stale gc.lock", self.describe());
            self.backend.put(LOCK, rec()).await?;
        }
        self.store_now(LOCK, rec()).await
    }

    /// Set unreferenced chunks aside, bring back those referenced again, delete those no sync
    /// can still need. Safe while syncs are in progress on any server.
    pub async fn gc(&self) -> Result<GcReport> {
        let owner = format!("{:016x}", rand::random::<u64>());
        self.lock_gc(&owner).await?;
        let r = self.gc_locked(&owner).await;
        let unlock = self.backend.delete(LOCK).await;
        let r = r?;
        unlock?;
        Ok(r)
    }

    /// Every digest named by an index not in `seen` (which grows).
    async fn mark(
        &self,
        seen: &mut HashSet<String>,
        live: &mut HashSet<ChunkDigest>,
    ) -> Result<usize> {
        let mut n = 0;
        for k in self.all_indexes().await? {
            if !seen.insert(k.clone()) {
                continue;
            }
            let Some(b) = self.backend.get(&k).await? else {
                continue;
            };
            // An unreadable index keeps nothing alive, but we must not guess: stop.
            let idx = SyncIndex::parse(&b, &format!("{}/{k}", self.describe()))?;
            live.extend(idx.digests());
            n += 1;
        }
        Ok(n)
    }

    async fn gc_locked(&self, owner: &str) -> Result<GcReport> {
        let mut rep = GcReport::default();
        let (mut seen, mut live) = (HashSet::new(), HashSet::new());
        rep.indexes = self.mark(&mut seen, &mut live).await?;

        // Earlier collections, and which are ripe.
        let clock = self.store_now(LOCK, lock_bytes(owner)).await?;
        let alive: HashSet<String> = self.fresh_leases(clock).await?.into_iter().collect();
        let mut ripe: HashSet<String> = HashSet::new();
        let mut known: BTreeMap<String, String> = BTreeMap::new();
        for m in self.backend.list(COLLECTIONS).await? {
            let Some(run) = m
                .key
                .strip_prefix(COLLECTIONS)
                .and_then(|r| r.strip_suffix(".json"))
            else {
                continue;
            };
            let waits = match self.backend.get(&m.key).await? {
                Some(b) => serde_json::from_slice::<Collection>(&b)
                    .map(|c| c.leases)
                    .unwrap_or_default(),
                None => continue,
            };
            if waits.iter().all(|l| !alive.contains(l)) {
                ripe.insert(run.to_string());
            }
            known.insert(run.to_string(), m.key.clone());
        }

        // Set aside every chunk no index names.
        let run = format!("{}-{:08x}", utc_stamp(now_ms()), rand::random::<u32>());
        for m in self.backend.list("chunks/").await? {
            match digest_of_chunk_key(&m.key) {
                Some(d) if live.contains(&d) => rep.chunks_kept += 1,
                Some(d) => match self.backend.rename(&m.key, &fossil_key(&run, &d)).await {
                    Ok(()) => rep.chunks_fossilized += 1,
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                },
                None => tracing::warn!(
                    "{}: stray object {} under chunks/ left alone",
                    self.describe(),
                    m.key
                ),
            }
        }

        // The leases alive now: any sync that learnt of a chunk before it was set aside.
        let clock = self.store_now(LOCK, lock_bytes(owner)).await?;
        rep.leases = self.fresh_leases(clock).await?;
        // Fossils of a run that died before recording its collection: adopt them, waiting for
        // the leases alive now (a superset of those that could need them).
        let mut runs: HashSet<String> = known.keys().cloned().collect();
        if rep.chunks_fossilized > 0 {
            runs.insert(run.clone());
        }
        let fossils = self.backend.list(FOSSILS).await?;
        for f in &fossils {
            if let Some((r, _)) = split_fossil_key(&f.key)
                && !runs.contains(r)
                && r != run
            {
                runs.insert(r.to_string());
                self.record_collection(r, &rep.leases).await?;
            }
        }
        if rep.chunks_fossilized > 0 {
            self.record_collection(&run, &rep.leases).await?;
            if rep.leases.is_empty() {
                ripe.insert(run.clone());
            }
        }

        // Indexes committed meanwhile keep their chunks.
        rep.indexes += self.mark(&mut seen, &mut live).await?;
        let mut left: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &fossils {
            let Some((r, d)) = split_fossil_key(&f.key) else {
                continue;
            };
            if live.contains(&d) {
                if self.has_chunks(vec![d]).await?.first() == Some(&true) {
                    self.backend.delete(&f.key).await?;
                } else {
                    self.restore_one(&f.key, &d).await?;
                }
                rep.chunks_restored += 1;
            } else if ripe.contains(r) {
                self.backend.delete(&f.key).await?;
                rep.chunks_deleted += 1;
                rep.bytes_deleted += f.size;
            } else {
                rep.fossils_waiting += 1;
                *left.entry(r).or_default() += 1;
            }
        }
        for r in runs.iter().filter(|r| !left.contains_key(r.as_str())) {
            self.backend
                .delete(&format!("{COLLECTIONS}{r}.json"))
                .await?;
        }
        Ok(rep)
    }

    async fn record_collection(&self, run: &str, leases: &[String]) -> Result<()> {
        let c = Collection {
            created_ms: now_ms(),
            leases: leases.to_vec(),
        };
        self.backend
            .put(
                &format!("{COLLECTIONS}{run}.json"),
                Bytes::from(serde_json::to_vec(&c).unwrap_or_default()),
            )
            .await
    }

    /// Re-hash every chunk and check every index names only stored, valid chunks. Indexes are
    /// listed first, so a sync committed during the check cannot name a chunk stored after
    /// the chunk listing.
    pub async fn verify(&self) -> Result<VerifyReport> {
        self.verify_with(None).await
    }

    /// [`Store::verify`], counting the stored bytes of the chunks checked on `meter` (its total
    /// set from the chunk listing: the bytes the check reads).
    pub async fn verify_with(&self, meter: Option<&Meter>) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        let mut indexes = Vec::new();
        for k in self.all_indexes().await? {
            let what = format!("{}/{k}", self.describe());
            let Some(b) = self.backend.get(&k).await? else {
                continue;
            };
            match SyncIndex::parse(&b, &what) {
                Ok(idx) => indexes.push((what, idx.digests())),
                Err(e) => rep.indexes_bad.push(e.to_string()),
            }
        }
        let mut good: HashSet<ChunkDigest> = HashSet::new();
        let chunks = self.backend.list("chunks/").await?;
        if let Some(meter) = meter {
            meter.set_total(chunks.iter().map(|m| m.size).sum());
        }
        for m in chunks {
            if let Some(meter) = meter {
                meter.add(m.size);
            }
            let what = format!("{}/{}", self.describe(), m.key);
            let Some(d) = digest_of_chunk_key(&m.key) else {
                rep.chunks_bad.push(format!("{what}: not a chunk name"));
                continue;
            };
            let Some(b) = self.backend.get(&m.key).await? else {
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
        for (what, digests) in indexes {
            match digests.into_iter().find(|d| !good.contains(d)) {
                Some(d) => rep.indexes_bad.push(format!(
                    "{what}: chunk {d} ({}) is missing or bad",
                    chunk_key(&d)
                )),
                None => rep.indexes_ok += 1,
            }
        }
        rep.fossils = self.backend.list(FOSSILS).await?.len();
        Ok(rep)
    }

    /// The leases in the store (fresh or not), for `staging list`.
    pub async fn leases(&self) -> Result<Vec<(String, Option<LeaseRecord>)>> {
        let mut v = Vec::new();
        for m in self.backend.list("leases/").await? {
            let rec = self
                .backend
                .get(&m.key)
                .await?
                .and_then(|b| serde_json::from_slice(&b).ok());
            v.push((m.key, rec));
        }
        Ok(v)
    }
}

fn lock_bytes(owner: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&LockRecord {
            owner: owner.to_string(),
            started_ms: now_ms(),
        })
        .unwrap_or_default(),
    )
}
