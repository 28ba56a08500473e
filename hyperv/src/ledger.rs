//! The checkpoint ledger: the shared [`godwit_ledger`] crate (also used by the vSphere
//! source) with Hyper-V entries. Every checkpoint Godwit creates is written here durably
//! (temp file, fsync, rename, fsync of the directory) BEFORE `Checkpoint-VM` runs, and leaves
//! the ledger only once `Remove-VMCheckpoint` (and the merge) finished. A crash in between
//! leaves an entry that the next start sweeps.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use godwit_ledger::{LEDGER_VERSION, MAX_LEDGER_BYTES};

/// Every checkpoint Godwit creates is named with this prefix.
pub const CHECKPOINT_PREFIX: &str = godwit_ledger::NAME_PREFIX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `host:port` of the Hyper-V host the checkpoint lives on.
    pub host: String,
    /// The VM's `VMId` (a GUID).
    pub vm_id: String,
    pub vm_name: String,
    /// Always starts with `godwit-`; unique per entry.
    pub checkpoint_name: String,
    /// The checkpoint's `Id`, known once `Checkpoint-VM` returned.
    pub checkpoint_id: Option<String>,
    /// Seconds since the Unix epoch when the intent was recorded.
    pub created_unix: u64,
    /// Set when a failed cycle kept the checkpoint for its retry (seconds since the epoch): an
    /// unfinished attempt, resumed by the next cycle of the VM (see [`LedgerEntry::resumable`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_for_retry_unix: Option<u64>,
}

/// How long a kept checkpoint may wait for its retry; older ones are leftovers (swept).
pub const RESUME_WINDOW_SECS: u64 = 24 * 3600;

impl LedgerEntry {
    /// An unfinished attempt the next cycle of its VM may resume: the checkpoint exists (its id
    /// was recorded) and the attempt is younger than [`RESUME_WINDOW_SECS`]. Anything else in
    /// the ledger is a leftover to remove (creation that may have failed half-way, a stale one).
    pub fn resumable(&self, now_unix: u64) -> bool {
        let since = self.kept_for_retry_unix.unwrap_or(self.created_unix);
        self.checkpoint_id.is_some() && now_unix.saturating_sub(since) < RESUME_WINDOW_SECS
    }
}

impl godwit_ledger::Entry for LedgerEntry {
    const KIND: &'static str = "checkpoint";
    fn name(&self) -> &str {
        &self.checkpoint_name
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

/// A checkpoint ledger file. Each change rewrites the whole (small) file atomically.
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

    /// Record an entry durably; refuses names without the `godwit-` prefix.
    pub fn add(&mut self, e: LedgerEntry) -> Result<()> {
        Ok(self.0.add(e)?)
    }

    /// Set the checkpoint id of the entry named `name`.
    pub fn set_checkpoint_id(&mut self, name: &str, id: &str) -> Result<()> {
        Ok(self
            .0
            .update(name, |e| e.checkpoint_id = Some(id.to_string()))?)
    }

    /// Record that a failed cycle kept the checkpoint named `name` for its retry.
    pub fn set_kept_for_retry(&mut self, name: &str, now_unix: u64) -> Result<()> {
        Ok(self
            .0
            .update(name, |e| e.kept_for_retry_unix = Some(now_unix))?)
    }

    /// Record that the checkpoint named `name` is now on `host` (its VM moved there).
    pub fn set_host(&mut self, name: &str, host: &str) -> Result<()> {
        Ok(self.0.update(name, |e| e.host = host.to_string())?)
    }

    /// Drop the entry named `name` durably.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        Ok(self.0.remove(name)?)
    }
}

/// Parse ledger bytes (pure; a fuzz entry point).
pub fn parse_ledger(bytes: &[u8]) -> std::result::Result<Vec<LedgerEntry>, String> {
    godwit_ledger::parse(bytes)
}

/// Write `bytes` to `path` atomically (see [`godwit_ledger::write_durably`]).
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(godwit_ledger::write_durably(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> LedgerEntry {
        LedgerEntry {
            host: "127.0.0.1:5986".into(),
            vm_id: "6f1c3b0a-0000-4000-8000-000000000001".into(),
            vm_name: "web \"01\"".into(),
            checkpoint_name: name.into(),
            checkpoint_id: None,
            created_unix: 1,
            kept_for_retry_unix: None,
        }
    }

    #[test]
    fn entries_survive_reopen_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/ledger.json");
        let mut l = Ledger::open(&p).unwrap();
        l.add(entry("godwit-a")).unwrap();
        l.add(entry("godwit-b")).unwrap();
        l.set_checkpoint_id("godwit-a", "A1").unwrap();
        l.remove("godwit-b").unwrap();
        let again = Ledger::open(&p).unwrap();
        assert_eq!(again.entries().len(), 1);
        assert_eq!(again.entries()[0].checkpoint_id.as_deref(), Some("A1"));
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(godwit_ledger::encode(&parse_ledger(&bytes).unwrap()), bytes);
        assert!(matches!(l.add(entry("mine")), Err(Error::Usage(_))));
        // A kept attempt round-trips; an old ledger without the field still reads.
        l.set_kept_for_retry("godwit-a", 7).unwrap();
        let again = Ledger::open(&p).unwrap();
        assert_eq!(again.entries()[0].kept_for_retry_unix, Some(7));
        let old = br#"{"version":1,"entries":[{"host":"h","vm_id":"v","vm_name":"n","checkpoint_name":"godwit-o","checkpoint_id":"X","created_unix":5}]}"#;
        let parsed = parse_ledger(old).unwrap();
        assert_eq!(parsed[0].kept_for_retry_unix, None);
    }

    #[test]
    fn resumable_means_created_and_young() {
        let mut e = entry("godwit-r");
        assert!(
            !e.resumable(10),
            "no checkpoint id: creation may have failed half-way"
        );
        e.checkpoint_id = Some("ID".into());
        assert!(e.resumable(10));
        assert!(!e.resumable(1 + RESUME_WINDOW_SECS));
        e.kept_for_retry_unix = Some(RESUME_WINDOW_SECS);
        assert!(e.resumable(RESUME_WINDOW_SECS + 10));
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
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(
            e.contains("l.json") && e.contains("checkpoint ledger"),
            "{e}"
        );
    }
}
