//! The snapshot ledger: the shared [`godwit_ledger`] crate with vSphere entries. Every
//! snapshot Godwit creates is written here (durably: temp file, fsync, rename, fsync of the
//! directory) BEFORE the CreateSnapshot call, and leaves the ledger only once RemoveSnapshot's
//! task succeeded. A crash in between leaves an entry that the next start sweeps.
//!
//! This module only adapts the shared ledger to this crate's types and [`Error`]; the file
//! format (`{"version":1,"entries":[...]}` with the fields below) is unchanged.

use crate::error::{Error, Result};
use crate::moref::MoRef;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use godwit_ledger::{LEDGER_VERSION, MAX_LEDGER_BYTES};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `host:port` of the vCenter / ESXi the snapshot lives on.
    pub host: String,
    pub vm: MoRef,
    pub vm_name: String,
    /// Always starts with `godwit-`; unique per entry.
    pub snapshot_name: String,
    /// Known once CreateSnapshot_Task succeeded.
    pub snapshot: Option<MoRef>,
    /// The CreateSnapshot_Task, known once vCenter accepted the call: while it may still be
    /// running (a create that timed out on our side) the entry stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<MoRef>,
    /// Seconds since the Unix epoch when the intent was recorded.
    pub created_unix: u64,
}

impl godwit_ledger::Entry for LedgerEntry {
    const KIND: &'static str = "snapshot";
    fn name(&self) -> &str {
        &self.snapshot_name
    }
}

impl From<godwit_ledger::Error> for Error {
    fn from(e: godwit_ledger::Error) -> Self {
        match e {
            godwit_ledger::Error::File { path, op, source } => Error::File { path, op, source },
            godwit_ledger::Error::BadFile { path, detail } => Error::BadFile { path, detail },
            e @ godwit_ledger::Error::BadName { .. } => Error::Usage(e.to_string()),
        }
    }
}

/// A snapshot ledger file. Each change rewrites the whole (small) file atomically.
#[derive(Debug)]
pub struct Ledger(godwit_ledger::Ledger<LedgerEntry>);

impl Ledger {
    /// Open (or start) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger> {
        Ok(Ledger(godwit_ledger::Ledger::open(path)?))
    }

    pub fn entries(&self) -> &[LedgerEntry] {
        self.0.entries()
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Record an entry durably.
    pub fn add(&mut self, e: LedgerEntry) -> Result<()> {
        Ok(self.0.add(e)?)
    }

    /// Set the snapshot MoRef of the entry named `snapshot_name`.
    pub fn set_snapshot(&mut self, snapshot_name: &str, snapshot: MoRef) -> Result<()> {
        Ok(self
            .0
            .update(snapshot_name, |e| e.snapshot = Some(snapshot.clone()))?)
    }

    /// Set the CreateSnapshot_Task MoRef of the entry named `snapshot_name`.
    pub fn set_task(&mut self, snapshot_name: &str, task: MoRef) -> Result<()> {
        Ok(self
            .0
            .update(snapshot_name, |e| e.task = Some(task.clone()))?)
    }

    /// Drop the entry named `snapshot_name` durably.
    pub fn remove(&mut self, snapshot_name: &str) -> Result<()> {
        Ok(self.0.remove(snapshot_name)?)
    }
}

/// Parse ledger bytes (pure; a fuzz entry point).
pub fn parse_ledger(bytes: &[u8]) -> std::result::Result<Vec<LedgerEntry>, String> {
    godwit_ledger::parse(bytes)
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(godwit_ledger::write_durably(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> LedgerEntry {
        LedgerEntry {
            host: "127.0.0.1:443".into(),
            vm: MoRef::new("VirtualMachine", "vm-1"),
            vm_name: "web \"01\"".into(),
            snapshot_name: name.into(),
            snapshot: None,
            task: None,
            created_unix: 1,
        }
    }

    #[test]
    fn entries_survive_reopen_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/ledger.json");
        let mut l = Ledger::open(&p).unwrap();
        l.add(entry("godwit-a")).unwrap();
        l.add(entry("godwit-b")).unwrap();
        l.set_snapshot(
            "godwit-a",
            MoRef::new("VirtualMachineSnapshot", "snapshot-9"),
        )
        .unwrap();
        l.remove("godwit-b").unwrap();
        let again = Ledger::open(&p).unwrap();
        assert_eq!(again.entries().len(), 1);
        assert_eq!(
            again.entries()[0].snapshot.as_ref().unwrap().value,
            "snapshot-9"
        );
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(godwit_ledger::encode(&parse_ledger(&bytes).unwrap()), bytes);
        assert!(matches!(l.add(entry("mine")), Err(Error::Usage(_))));
    }

    #[test]
    fn bad_ledgers_are_refused_with_reasons() {
        assert!(parse_ledger(b"{").unwrap_err().contains("line"));
        assert!(
            parse_ledger(br#"{"version":2,"entries":[]}"#)
                .unwrap_err()
                .contains("version")
        );
        let other = godwit_ledger::encode(&[entry("other")]);
        assert!(parse_ledger(&other).unwrap_err().contains("prefix"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.json");
        std::fs::write(&p, b"[]").unwrap();
        let e = Ledger::open(&p).unwrap_err();
        assert!(matches!(e, Error::BadFile { .. }), "{e}");
        assert!(e.to_string().contains("l.json"), "{e}");
    }
}
