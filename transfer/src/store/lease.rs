//! Leases: a sync in progress announces itself in the store (`leases/<id>.json`) before it asks
//! what the store has, and refreshes the object until it commits or gives up. GC (gc.rs) keeps
//! what a collection found unreferenced until every lease alive at that moment has ended or
//! gone stale. Freshness is judged by the store's clock (object modification times), never by
//! the writers' clocks.

use super::{LEASE_STALE_MS, Store};
use crate::error::{Error, Result};
use crate::index::{check_vm_name, now_ms, utc_stamp};
use bytes::Bytes;
use std::time::Duration;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    pub vm: String,
    pub disk: u32,
    pub started_ms: u64,
    pub refreshed_ms: u64,
}

pub fn lease_key(id: &str) -> String {
    format!("leases/{id}.json")
}

/// Lease ids come back from clients (`EndSync`): only the characters the store writes.
fn check_lease_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(Error::Usage(format!("{id:?} is not a lease id")));
    }
    Ok(())
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

impl Store {
    /// How long a lease stays fresh without a refresh (`GODWIT_LEASE_STALE_SECS` overrides).
    pub fn lease_stale_ms(&self) -> u64 {
        self.lease_stale_ms
    }

    fn refresh_every(&self) -> Duration {
        Duration::from_millis((self.lease_stale_ms / 10).clamp(200, 30_000))
    }

    pub(super) async fn take_lease(&self, vm: &str, disk: u32) -> Result<String> {
        check_vm_name(vm)?;
        let started = now_ms();
        let id = format!("{}-{:016x}", utc_stamp(started), rand::random::<u64>());
        let key = lease_key(&id);
        self.backend
            .put(&key, lease_bytes(vm, disk, started))
            .await?;
        let backend = self.backend.clone();
        let vm2 = vm.to_string();
        let every = self.refresh_every();
        let h = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = backend.put(&key, lease_bytes(&vm2, disk, started)).await {
                    tracing::warn!("refreshing lease {key}: {e}");
                }
            }
        });
        if let Ok(mut m) = self.leases.lock() {
            m.insert(id.clone(), h);
        }
        Ok(id)
    }

    pub(super) async fn drop_lease(&self, lease: &str) -> Result<()> {
        check_lease_id(lease)?;
        if let Some(h) = self.leases.lock().ok().and_then(|mut m| m.remove(lease)) {
            h.abort();
        }
        self.backend.delete(&lease_key(lease)).await
    }

    /// Lease keys refreshed within the stale time before `store_now` (the store's clock).
    pub(crate) async fn fresh_leases(&self, store_now: u64) -> Result<Vec<String>> {
        let stale = self.lease_stale_ms;
        let mut v: Vec<String> = self
            .backend
            .list("leases/")
            .await?
            .into_iter()
            .filter(|m| store_now.saturating_sub(m.modified_ms) < stale)
            .map(|m| m.key)
            .collect();
        v.sort();
        Ok(v)
    }
}

const _: () = assert!(LEASE_STALE_MS >= 60_000);
