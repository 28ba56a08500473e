//! Changed block tracking: when a previous changeId may be used at all, QueryChangedDiskAreas
//! looped over the whole capacity, the allocated areas of a first full read (changeId `*`), and
//! the changeIds kept per VM uuid + disk key + disk uuid (with the capacity they were taken at)
//! in a durable JSON file.
//!
//! A changeId has the form `<UUID>/<sequence>` (e.g. `52 de 2e ... 7c/14`). The UUID changes
//! when change tracking was reset (disabled and enabled, a storage move, a restore), after which
//! changes relative to the old changeId cannot be trusted; the sequence grows with each
//! snapshot. VMware's CBT guidance is to do a full backup after a reset (VMware KB 1020128,
//! "Changed Block Tracking (CBT) on virtual machines"; the VDDK guide's "Changed Block Tracking
//! on Virtual Disks"). So a different UUID, a sequence that went backwards (the VM was reverted)
//! or a disk whose capacity changed (CBT data of an extended disk was wrong in some ESXi
//! releases, KB 2090639) forces a full read, reported with the reason.
//!
//! The first full read of a disk with CBT on asks `QueryChangedDiskAreas(changeId "*")`, which
//! returns the areas in use, and reads only those (the VDDK guide: the baseline backup may read
//! only the allocated portions, "Usually this substantially reduces the amount of data to save,
//! especially for thin provisioned and sparse virtual disks"; cloudbase/OpenVixDiskLib#6).

use crate::error::{Error, Result};
use crate::ledger::write_durably;
use crate::moref::MoRef;
use crate::session::Session;
use crate::soap::envelope as env;
use crate::soap::response as resp;
use godwit_disk::layer::push_run;
use godwit_disk::{BlockSource, Run, RunState};
use serde::{Deserialize, Serialize};
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

/// A recorded changeId and the disk capacity it was taken at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredChangeId {
    pub change_id: String,
    pub capacity_bytes: Option<u64>,
}

impl<'de> Deserialize<'de> for StoredChangeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Files written before the capacity was kept hold plain strings.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Plain(String),
            Full {
                change_id: String,
                capacity_bytes: Option<u64>,
            },
        }
        Ok(match Any::deserialize(d)? {
            Any::Plain(change_id) => StoredChangeId {
                change_id,
                capacity_bytes: None,
            },
            Any::Full {
                change_id,
                capacity_bytes,
            } => StoredChangeId {
                change_id,
                capacity_bytes,
            },
        })
    }
}

/// changeIds recorded after each successful cycle.
#[derive(Debug)]
pub struct ChangeIdStore {
    path: PathBuf,
    ids: BTreeMap<String, StoredChangeId>,
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

    pub fn get(&self, key: &str) -> Option<&StoredChangeId> {
        self.ids.get(key)
    }

    /// Record several changeIds in one durable write (`None` forgets the key).
    pub fn record(
        &mut self,
        entries: impl IntoIterator<Item = (String, Option<StoredChangeId>)>,
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

/// Why a disk is read whole although CBT is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// No changeId recorded for this disk yet (its first cycle).
    NoPrevious,
    /// The frozen disk has no changeId: change tracking is not active on it.
    CbtInactive,
    UuidChanged {
        old: String,
        new: String,
    },
    SequenceWentBackwards {
        old: String,
        new: String,
    },
    CapacityChanged {
        old: u64,
        new: u64,
    },
    /// vCenter refused the previous changeId.
    Rejected {
        fault: String,
    },
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::NoPrevious => f.write_str("first cycle with changed block tracking"),
            FullReason::CbtInactive => {
                f.write_str("changed block tracking is not active on the disk (no changeId)")
            }
            FullReason::UuidChanged { old, new } => write!(
                f,
                "the changeId's UUID changed ({old:?} → {new:?}): change tracking was reset"
            ),
            FullReason::SequenceWentBackwards { old, new } => write!(
                f,
                "the changeId's sequence went backwards ({old:?} → {new:?}): the VM was reverted"
            ),
            FullReason::CapacityChanged { old, new } => {
                write!(f, "the disk's capacity changed ({old} → {new} bytes)")
            }
            FullReason::Rejected { fault } => {
                write!(f, "vCenter refused the previous changeId ({fault})")
            }
        }
    }
}

/// How a disk is to be read this cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Only what changed since this (previous) changeId.
    Incremental(String),
    Full(FullReason),
}

/// `<UUID>/<sequence>`, when it has that form.
pub fn split_change_id(id: &str) -> Option<(&str, u64)> {
    let (uuid, seq) = id.trim().rsplit_once('/')?;
    Some((uuid.trim(), seq.trim().parse().ok()?))
}

/// Pure: whether the previous changeId may be used for a disk whose frozen changeId is
/// `current` and capacity `capacity`.
pub fn basis(prev: Option<&StoredChangeId>, current: Option<&str>, capacity: u64) -> Basis {
    let Some(prev) = prev else {
        return Basis::Full(FullReason::NoPrevious);
    };
    let Some(current) = current else {
        return Basis::Full(FullReason::CbtInactive);
    };
    if let Some(old) = prev.capacity_bytes
        && old != capacity
    {
        return Basis::Full(FullReason::CapacityChanged { old, new: capacity });
    }
    if let (Some((old_uuid, old_seq)), Some((new_uuid, new_seq))) =
        (split_change_id(&prev.change_id), split_change_id(current))
    {
        if old_uuid != new_uuid {
            return Basis::Full(FullReason::UuidChanged {
                old: prev.change_id.clone(),
                new: current.to_string(),
            });
        }
        if new_seq < old_seq {
            return Basis::Full(FullReason::SequenceWentBackwards {
                old: prev.change_id.clone(),
                new: current.to_string(),
            });
        }
    }
    Basis::Incremental(prev.change_id.clone())
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

/// What QueryChangedDiskAreas returned for a whole disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Areas {
    /// Sorted, merged, inside the capacity.
    pub ranges: Vec<Range<u64>>,
    /// Areas reported past the range asked (or past the capacity), clamped.
    pub clamped: u32,
}

impl Areas {
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

/// The byte ranges of disk `device_key` of `vm` changed since `change_id` (`*`: in use), as of
/// `snapshot`, looped over the whole capacity. `Ok(Err(fault))` when the server rejects the
/// changeId (the caller must read everything).
pub fn changed_ranges(
    s: &Session,
    vm: &MoRef,
    snapshot: &MoRef,
    device_key: i32,
    capacity: u64,
    change_id: &str,
) -> Result<std::result::Result<Areas, String>> {
    let mut out = Areas::default();
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
                tracing::warn!(%vm, device_key, error = %e, "changeId {change_id:?} rejected; full read");
                return Ok(Err(e.fault_type().unwrap_or("fault").to_string()));
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
        out.clamped = out.clamped.saturating_add(info.clamped);
        for (a, l) in info.areas {
            let kept = l.min(capacity.saturating_sub(a));
            if kept < l {
                out.clamped = out.clamped.saturating_add(1);
            }
            if kept > 0 {
                push_range(&mut out.ranges, a, kept);
            }
        }
        offset = info.start_offset.saturating_add(info.length);
    }
    Ok(Ok(out))
}

/// A disk seen through its allocated areas: everything outside them maps and reads as zeros
/// (a thin disk's unallocated blocks read as zeros anyway; this only spares reading them).
pub struct AllocatedOnly<'a> {
    inner: &'a dyn BlockSource,
    areas: Vec<Range<u64>>,
}

impl<'a> AllocatedOnly<'a> {
    /// `areas` sorted and merged (as [`Areas::ranges`]).
    pub fn new(inner: &'a dyn BlockSource, areas: Vec<Range<u64>>) -> Self {
        AllocatedOnly { inner, areas }
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = Range<u64>> + '_ {
        self.areas
            .iter()
            .filter(move |a| a.start < end && a.end > start)
            .map(move |a| a.start.max(start)..a.end.min(end))
    }
}

impl BlockSource for AllocatedOnly<'_> {
    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn map(&self, offset: u64, len: u64) -> godwit_disk::Result<Vec<Run>> {
        let end = offset.saturating_add(len);
        let mut out = Vec::new();
        let mut pos = offset;
        for a in self.overlapping(offset, end) {
            push_run(
                &mut out,
                Run {
                    offset: pos,
                    len: a.start - pos,
                    state: RunState::Zero,
                },
            );
            for r in self.inner.map(a.start, a.end - a.start)? {
                push_run(&mut out, r);
            }
            pos = a.end;
        }
        push_run(
            &mut out,
            Run {
                offset: pos,
                len: end - pos,
                state: RunState::Zero,
            },
        );
        Ok(out)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> godwit_disk::Result<()> {
        buf.fill(0);
        let end = offset.saturating_add(buf.len() as u64);
        for a in self.overlapping(offset, end) {
            let (s, e) = (
                usize::try_from(a.start - offset).unwrap_or(usize::MAX),
                usize::try_from(a.end - offset).unwrap_or(usize::MAX),
            );
            if let Some(dst) = buf.get_mut(s..e) {
                self.inner.read_at(a.start, dst)?;
            }
        }
        Ok(())
    }

    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }

    fn page83(&self) -> Option<[u8; 16]> {
        self.inner.page83()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_store_persists_old_files_too() {
        let mut v = Vec::new();
        push_range(&mut v, 0, 10);
        push_range(&mut v, 10, 5);
        push_range(&mut v, 20, 5);
        assert_eq!(v, vec![0..15, 20..25]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cbt.json");
        let mut st = ChangeIdStore::open(&p).unwrap();
        let k = change_id_key("u", 2000, None);
        let id = StoredChangeId {
            change_id: "52 a/1".into(),
            capacity_bytes: Some(4096),
        };
        st.record([(k.clone(), Some(id.clone()))]).unwrap();
        assert_eq!(ChangeIdStore::open(&p).unwrap().get(&k), Some(&id));
        assert_ne!(k, change_id_key("u", 2000, Some("d")));
        // A store written before capacities were kept.
        std::fs::write(&p, br#"{"u/2000/-":"52 a/1"}"#).unwrap();
        let old = ChangeIdStore::open(&p).unwrap();
        assert_eq!(old.get(&k).unwrap().capacity_bytes, None);
        assert_eq!(old.get(&k).unwrap().change_id, "52 a/1");
    }

    #[test]
    fn when_a_previous_change_id_may_be_used() {
        let prev = |id: &str, cap: Option<u64>| StoredChangeId {
            change_id: id.into(),
            capacity_bytes: cap,
        };
        let p = prev("52 aa bb/14", Some(100));
        assert_eq!(
            basis(Some(&p), Some("52 aa bb/17"), 100),
            Basis::Incremental("52 aa bb/14".into())
        );
        assert!(matches!(
            basis(Some(&p), Some("52 cc dd/3"), 100),
            Basis::Full(FullReason::UuidChanged { .. })
        ));
        assert!(matches!(
            basis(Some(&p), Some("52 aa bb/9"), 100),
            Basis::Full(FullReason::SequenceWentBackwards { .. })
        ));
        assert_eq!(
            basis(Some(&p), Some("52 aa bb/15"), 200),
            Basis::Full(FullReason::CapacityChanged { old: 100, new: 200 })
        );
        assert_eq!(
            basis(None, Some("x/1"), 1),
            Basis::Full(FullReason::NoPrevious)
        );
        assert_eq!(
            basis(Some(&p), None, 100),
            Basis::Full(FullReason::CbtInactive)
        );
        // Unknown forms and old records without a capacity: the server decides.
        assert_eq!(
            basis(Some(&prev("opaque", None)), Some("other"), 5),
            Basis::Incremental("opaque".into())
        );
        assert_eq!(split_change_id("52 de 7c/14"), Some(("52 de 7c", 14)));
        assert_eq!(split_change_id("nothing"), None);
        for r in [
            FullReason::UuidChanged {
                old: "a/1".into(),
                new: "b/2".into(),
            },
            FullReason::CapacityChanged { old: 1, new: 2 },
        ] {
            assert!(!r.to_string().is_empty());
        }
    }

    struct Ones(u64);
    impl BlockSource for Ones {
        fn virtual_size(&self) -> u64 {
            self.0
        }
        fn map(&self, offset: u64, len: u64) -> godwit_disk::Result<Vec<Run>> {
            Ok(vec![Run {
                offset,
                len,
                state: RunState::Data,
            }])
        }
        fn read_at(&self, _offset: u64, buf: &mut [u8]) -> godwit_disk::Result<()> {
            buf.fill(1);
            Ok(())
        }
    }

    #[test]
    fn allocated_only_maps_and_reads_zeros_outside_the_areas() {
        let inner = Ones(100);
        let a = AllocatedOnly::new(&inner, vec![10..20, 50..60]);
        let runs = a.map(0, 100).unwrap();
        let states: Vec<(u64, u64, RunState)> =
            runs.iter().map(|r| (r.offset, r.len, r.state)).collect();
        assert_eq!(
            states,
            vec![
                (0, 10, RunState::Zero),
                (10, 10, RunState::Data),
                (20, 30, RunState::Zero),
                (50, 10, RunState::Data),
                (60, 40, RunState::Zero)
            ]
        );
        let mut buf = vec![9u8; 20];
        a.read_at(45, &mut buf).unwrap();
        assert_eq!(&buf[..5], &[0; 5]);
        assert_eq!(&buf[5..15], &[1; 10]);
        assert_eq!(&buf[15..], &[0; 5]);
        assert_eq!(a.map(12, 3).unwrap().len(), 1);
    }
}
