//! Changed block tracking: QueryChangedDiskAreas looped over the whole capacity, and the
//! changeIds kept per VM uuid + disk key + disk uuid in a durable JSON file.

use crate::error::{Error, Result};
use crate::ledger::write_durably;
use crate::moref::MoRef;
use crate::session::Session;
use crate::soap::envelope as env;
use crate::soap::response as resp;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Faults that mean "this changeId is no longer valid": do a full read.
pub const REJECTED_CHANGE_ID_FAULTS: &[&str] = &["FileFault", "InvalidArgument", "NotFound"];

/// The key a changeId is stored under. Device keys are unique only within a VM, and a disk
/// uuid (when the server gives one) guards against a disk swapped under the same key.
pub fn change_id_key(vm_uuid: &str, device_key: i32, disk_uuid: Option<&str>) -> String {
    format!("{vm_uuid}/{device_key}/{}", disk_uuid.unwrap_or("-"))
}

/// changeIds recorded after each successful cycle.
#[derive(Debug)]
pub struct ChangeIdStore {
    path: PathBuf,
    ids: BTreeMap<String, String>,
}

impl ChangeIdStore {
    pub fn open(path: &Path) -> Result<Self> {
        let ids = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::BadFile {
                path: path.display().to_string(),
                detail: format!("not a changeId store: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::file(path, "read", e)),
        };
        Ok(ChangeIdStore {
            path: path.to_path_buf(),
            ids,
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.ids.get(key).map(String::as_str)
    }

    /// Record several changeIds in one durable write.
    pub fn record(
        &mut self,
        entries: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Result<()> {
        for (k, v) in entries {
            match v {
                Some(v) => self.ids.insert(k, v),
                None => self.ids.remove(&k),
            };
        }
        let bytes = serde_json::to_vec_pretty(&self.ids).unwrap_or_default();
        write_durably(&self.path, &bytes)
    }
}

/// Add an area to a sorted list of ranges, merging touching ones.
fn push_range(out: &mut Vec<Range<u64>>, start: u64, len: u64) {
    let end = start + len;
    if let Some(last) = out.last_mut()
        && last.end >= start
    {
        last.end = last.end.max(end);
        return;
    }
    out.push(start..end);
}

/// The byte ranges changed since `change_id` on disk `device_key` of `vm`, as of `snapshot`.
/// `Ok(None)` when the server rejects the changeId (the caller must read everything).
pub fn changed_ranges(
    s: &Session,
    vm: &MoRef,
    snapshot: &MoRef,
    device_key: i32,
    capacity: u64,
    change_id: &str,
) -> Result<Option<Vec<Range<u64>>>> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut calls = 0u32;
    while offset < capacity {
        calls += 1;
        if calls > 1_000_000 {
            return Err(Error::malformed(
                &s.endpoint().authority(),
                "QueryChangedDiskAreas",
                "more than a million calls",
            ));
        }
        let r = s.call(
            "QueryChangedDiskAreas",
            &|_| env::query_changed_disk_areas(vm, snapshot, device_key, offset, change_id),
            &resp::parse_disk_change_info,
        );
        let info = match r {
            Ok(i) => i,
            Err(e)
                if e.fault_type()
                    .is_some_and(|f| REJECTED_CHANGE_ID_FAULTS.contains(&f)) =>
            {
                tracing::warn!(%vm, device_key, error = %e, "changeId rejected; full read");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if info.start_offset != offset || info.length == 0 {
            return Err(Error::malformed(
                &s.endpoint().authority(),
                "QueryChangedDiskAreas",
                format!(
                    "asked from offset {offset}, got {}+{} (no progress)",
                    info.start_offset, info.length
                ),
            ));
        }
        for (a, l) in info.areas {
            let l = l.min(capacity.saturating_sub(a));
            if l > 0 {
                push_range(&mut out, a, l);
            }
        }
        offset = info.start_offset.saturating_add(info.length);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_store_persists() {
        let mut v = Vec::new();
        push_range(&mut v, 0, 10);
        push_range(&mut v, 10, 5);
        push_range(&mut v, 20, 5);
        assert_eq!(v, vec![0..15, 20..25]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cbt.json");
        let mut st = ChangeIdStore::open(&p).unwrap();
        let k = change_id_key("u", 2000, None);
        st.record([(k.clone(), Some("52 a/1".to_string()))])
            .unwrap();
        assert_eq!(ChangeIdStore::open(&p).unwrap().get(&k), Some("52 a/1"));
        assert_ne!(k, change_id_key("u", 2000, Some("d")));
    }
}
