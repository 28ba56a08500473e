//! Committing a sync index: the store (the staging server, or a direct writer's own process)
//! assigns the sync id, later than every sync of the disk, and writes the index under a key no
//! one else writes (`put_new`), after checking every chunk it names is stored, and checks again
//! after writing (a GC may have been collecting an unreferenced chunk meanwhile: it is brought
//! back from `gc/fossils/`). The argument is in docs/store-format.md.

use super::{ChunkStore, Store, chunk_key, index_key};
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::index::{SyncId, SyncIndex, newest, now_ms};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// Metadata key of the writer's commit nonce (32 hex digits): a retried commit of the same
/// sync is recognised and answered with the first commit's id.
pub const COMMIT_NONCE: &str = "godwit.commit";

/// The 8 hex digits of the sync id for a nonce (random without one).
fn suffix_for(nonce: Option<&String>) -> u32 {
    match nonce {
        Some(n) => {
            let h = Sha256::digest(n.as_bytes());
            u32::from_be_bytes([h[0], h[1], h[2], h[3]])
        }
        None => rand::random(),
    }
}

impl Store {
    pub(super) async fn commit(&self, bytes: Bytes) -> Result<SyncId> {
        let mut idx = SyncIndex::parse(&bytes, "index to commit")?;
        let what = format!("sync of {} disk {}", idx.vm, idx.disk);
        let nonce = idx.metadata.get(COMMIT_NONCE).cloned();
        if let Some(n) = &nonce
            && (n.len() != 32 || !n.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Error::Usage(format!(
                "{what}: metadata {COMMIT_NONCE} must be 32 hex digits"
            )));
        }
        let suffix = suffix_for(nonce.as_ref());
        let existing = self.list_syncs(&idx.vm, idx.disk).await?;
        // A retried commit (its answer was lost): the first one's id.
        if let Some(n) = &nonce {
            for s in existing
                .iter()
                .rev()
                .filter(|s| s.suffix() == format!("{suffix:08x}"))
            {
                let b = self.get_index(&idx.vm, idx.disk, s).await?;
                let prior = SyncIndex::parse(&b, &format!("sync {s}"))?;
                if prior.metadata.get(COMMIT_NONCE) == Some(n) {
                    return Ok(s.clone());
                }
            }
        }
        if let Some(p) = &idx.parent
            && !existing.contains(p)
        {
            return Err(Error::Usage(format!(
                "{what}: parent sync {p} does not exist"
            )));
        }
        let digests = idx.digests();
        self.check_stored(&digests, &what).await?;
        // The id: now, or just after the newest sync (clock skew between servers), ignoring
        // syncs stamped far in the future (they are never taken as the newest either).
        let now = now_ms();
        let after = newest(&existing, now).map_or(0, |s| s.unix_ms() + 1);
        let mut ms = now.max(after);
        let mut tries = 0;
        let (id, key) = loop {
            let id = SyncId::with_suffix(ms, suffix);
            idx.sync_id = id.clone();
            idx.created_ms = ms;
            let key = index_key(&idx.vm, idx.disk, &id);
            if self
                .backend
                .put_new(&key, Bytes::from(idx.encode()))
                .await?
            {
                break (id, key);
            }
            tries += 1;
            if tries >= 16 {
                return Err(Error::Usage(format!(
                    "{what}: could not find a free sync id after {tries} tries"
                )));
            }
            ms += 1;
        };
        // Checked again now the index is visible: a GC that moved one of its chunks away before
        // it could see the index is undone here; one that moves a chunk later sees the index.
        if let Err(e) = self.check_stored(&digests, &what).await {
            let _ = self.backend.delete(&key).await;
            return Err(e);
        }
        Ok(id)
    }

    /// Every digest stored under `chunks/`, bringing back any a GC has set aside as a fossil;
    /// [`Error::MissingChunks`] naming the first missing one otherwise.
    async fn check_stored(&self, digests: &[ChunkDigest], what: &str) -> Result<()> {
        let mut missing = Vec::new();
        for batch in digests.chunks(4096) {
            let have = self.has_chunks(batch.to_vec()).await?;
            missing.extend(batch.iter().zip(have).filter(|(_, h)| !h).map(|(d, _)| *d));
        }
        if missing.is_empty() {
            return Ok(());
        }
        let still = self.restore_fossils(&missing).await?;
        match still.first() {
            None => Ok(()),
            Some(d) => Err(Error::MissingChunks {
                what: what.to_string(),
                reason: format!(
                    "{} chunk(s) it names are not stored (first: {d}); refusing to commit",
                    still.len()
                ),
            }),
        }
    }

    /// Move chunks a GC set aside (`gc/fossils/<run>/…`) back under `chunks/`. Returns the
    /// digests found neither there nor as fossils.
    pub(crate) async fn restore_fossils(
        &self,
        digests: &[ChunkDigest],
    ) -> Result<Vec<ChunkDigest>> {
        let want: HashSet<ChunkDigest> = digests.iter().copied().collect();
        let mut found: HashMap<ChunkDigest, String> = HashMap::new();
        for m in self.backend.list(super::gc::FOSSILS).await? {
            if let Some(d) = super::gc::digest_of_fossil_key(&m.key)
                && want.contains(&d)
            {
                found.insert(d, m.key);
            }
        }
        let mut still = Vec::new();
        for d in digests {
            match found.get(d) {
                Some(f) => self.restore_one(f, d).await?,
                None => still.push(*d),
            }
        }
        // Another process may have restored some meanwhile.
        if !still.is_empty() {
            let have = self.has_chunks(still.clone()).await?;
            still = still
                .into_iter()
                .zip(have)
                .filter(|(_, h)| !h)
                .map(|(d, _)| d)
                .collect();
        }
        Ok(still)
    }

    pub(super) async fn restore_one(&self, fossil: &str, d: &ChunkDigest) -> Result<()> {
        match self.backend.rename(fossil, &chunk_key(d)).await {
            Ok(()) => {
                tracing::info!("{}: restored {d} from {fossil}", self.describe());
                Ok(())
            }
            // Restored (or removed, if the chunk is back) by another process meanwhile.
            Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
