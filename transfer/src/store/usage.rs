//! What the store holds, logical against stored: how much cross-VM dedupe saves. VMs cloned
//! from one template store the template's chunks once.

use super::{Store, digest_of_chunk_key};
use crate::digest::ChunkDigest;
use crate::error::Result;
use crate::index::{Entry, SyncIndex};
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VmUsage {
    pub vm: String,
    pub disks: usize,
    pub syncs: usize,
    /// Virtual size of the newest sync of each disk.
    pub disk_bytes: u64,
    /// Bytes of the newest sync of each disk that are not zero chunks: what a copy would hold.
    pub logical_bytes: u64,
    /// Stored (compressed) bytes of every chunk the VM's syncs name, shared or not.
    pub referenced_bytes: u64,
    /// Stored bytes of the chunks only this VM names: what deleting it would free.
    pub unique_bytes: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StoreUsage {
    pub vms: Vec<VmUsage>,
    pub syncs: usize,
    /// Non-zero bytes of every sync kept (every version of every disk).
    pub logical_bytes_all_syncs: u64,
    /// Non-zero bytes of the newest sync of every disk.
    pub logical_bytes: u64,
    /// Bytes of every chunk file in the store.
    pub stored_bytes: u64,
    pub chunks: usize,
}

fn data_bytes(idx: &SyncIndex) -> u64 {
    idx.entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Entry::Data(_)))
        .map(|(i, _)| idx.chunk_range(i).1)
        .sum()
}

impl Store {
    /// Read every index and list every chunk (sizes only; no chunk is read).
    pub async fn usage(&self) -> Result<StoreUsage> {
        let mut sizes: HashMap<ChunkDigest, u64> = HashMap::new();
        let mut u = StoreUsage::default();
        for m in self.backend.list("chunks/").await? {
            if let Some(d) = digest_of_chunk_key(&m.key) {
                sizes.insert(d, m.size);
                u.stored_bytes += m.size;
                u.chunks += 1;
            }
        }
        // Per VM: the digests its syncs name; per (VM, disk): the newest sync.
        let mut per_vm: BTreeMap<String, (VmUsage, HashSet<ChunkDigest>)> = BTreeMap::new();
        let mut newest: BTreeMap<(String, u32), (String, u64, u64)> = BTreeMap::new();
        for k in self.all_indexes().await? {
            let Some(b) = self.backend.get(&k).await? else {
                continue;
            };
            let idx = SyncIndex::parse(&b, &format!("{}/{k}", self.backend.describe()))?;
            let data = data_bytes(&idx);
            u.syncs += 1;
            u.logical_bytes_all_syncs += data;
            let e = per_vm.entry(idx.vm.clone()).or_default();
            e.0.vm.clone_from(&idx.vm);
            e.0.syncs += 1;
            e.1.extend(idx.digests());
            let id = idx.sync_id.to_string();
            let slot = newest
                .entry((idx.vm.clone(), idx.disk))
                .or_insert((String::new(), 0, 0));
            if id > slot.0 {
                *slot = (id, idx.disk_size, data);
            }
        }
        for ((vm, _), (_, size, data)) in &newest {
            if let Some(e) = per_vm.get_mut(vm) {
                e.0.disks += 1;
                e.0.disk_bytes += size;
                e.0.logical_bytes += data;
                u.logical_bytes += data;
            }
        }
        let mut users: HashMap<ChunkDigest, usize> = HashMap::new();
        for (_, set) in per_vm.values() {
            for d in set {
                *users.entry(*d).or_default() += 1;
            }
        }
        for (mut vm, set) in per_vm.into_values() {
            for d in &set {
                let s = sizes.get(d).copied().unwrap_or(0);
                vm.referenced_bytes += s;
                if users.get(d) == Some(&1) {
                    vm.unique_bytes += s;
                }
            }
            u.vms.push(vm);
        }
        Ok(u)
    }
}
