//! The checkpoint ledger (the vSphere snapshot ledger's idea, for Hyper-V): every checkpoint
//! Godwit creates is written here durably (temp file, fsync, rename, fsync of the directory)
//! BEFORE `Checkpoint-VM` runs, and leaves the ledger only once `Remove-VMCheckpoint` (and the
//! merge) finished. A crash in between leaves an entry that the next start sweeps.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Current ledger file version.
pub const LEDGER_VERSION: u32 = 1;
/// Ledger files larger than this are refused (a ledger holds a handful of entries).
pub const MAX_LEDGER_BYTES: u64 = 16 * 1024 * 1024;
/// Every checkpoint Godwit creates is named with this prefix.
pub const CHECKPOINT_PREFIX: &str = "godwit-";

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
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    entries: Vec<LedgerEntry>,
}

/// A ledger file. Each change rewrites the whole (small) file atomically.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: LedgerFile,
}

impl Ledger {
    /// Open (or start) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger> {
        let file = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LedgerFile {
                version: LEDGER_VERSION,
                entries: Vec::new(),
            },
            Err(e) => return Err(Error::file(path, "stat", e)),
            Ok(m) if m.len() > MAX_LEDGER_BYTES => {
                return Err(Error::BadFile {
                    path: path.display().to_string(),
                    detail: format!("ledger larger than {MAX_LEDGER_BYTES} bytes"),
                });
            }
            Ok(_) => {
                let bytes = std::fs::read(path).map_err(|e| Error::file(path, "read", e))?;
                parse(&bytes).map_err(|detail| Error::BadFile {
                    path: path.display().to_string(),
                    detail,
                })?
            }
        };
        Ok(Ledger {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn entries(&self) -> &[LedgerEntry] {
        &self.file.entries
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record an entry durably.
    pub fn add(&mut self, e: LedgerEntry) -> Result<()> {
        if !e.checkpoint_name.starts_with(CHECKPOINT_PREFIX) {
            return Err(Error::Usage(format!(
                "checkpoint name {:?} lacks the {CHECKPOINT_PREFIX} prefix",
                e.checkpoint_name
            )));
        }
        self.file.entries.push(e);
        self.persist()
    }

    /// Set the checkpoint id of the entry named `name`.
    pub fn set_checkpoint_id(&mut self, name: &str, id: &str) -> Result<()> {
        for e in &mut self.file.entries {
            if e.checkpoint_name == name {
                e.checkpoint_id = Some(id.to_string());
            }
        }
        self.persist()
    }

    /// Drop the entry named `name` durably.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        self.file.entries.retain(|e| e.checkpoint_name != name);
        self.persist()
    }

    fn persist(&self) -> Result<()> {
        write_durably(&self.path, &encode(&self.file))
    }
}

/// Parse ledger bytes (pure; a fuzz entry point).
pub fn parse_ledger(bytes: &[u8]) -> std::result::Result<Vec<LedgerEntry>, String> {
    parse(bytes).map(|f| f.entries)
}

fn parse(bytes: &[u8]) -> std::result::Result<LedgerFile, String> {
    let f: LedgerFile = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not a checkpoint ledger (line {}, column {}): {e}",
            e.line(),
            e.column()
        )
    })?;
    if f.version != LEDGER_VERSION {
        return Err(format!(
            "ledger version {} is not {LEDGER_VERSION}",
            f.version
        ));
    }
    if let Some(e) = f
        .entries
        .iter()
        .find(|e| !e.checkpoint_name.starts_with(CHECKPOINT_PREFIX))
    {
        return Err(format!(
            "entry {:?} lacks the {CHECKPOINT_PREFIX} prefix",
            e.checkpoint_name
        ));
    }
    Ok(f)
}

fn encode(f: &LedgerFile) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(f).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, "create directory", e))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::file(&tmp, "create", e))?;
        f.write_all(bytes)
            .map_err(|e| Error::file(&tmp, "write", e))?;
        f.sync_all().map_err(|e| Error::file(&tmp, "fsync", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, "rename", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::file(dir, "fsync directory", e))
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
        assert_eq!(encode(&parse(&bytes).unwrap()), bytes);
        assert!(l.add(entry("mine")).is_err());
    }

    #[test]
    fn bad_ledgers_are_refused_with_reasons() {
        assert!(parse_ledger(b"{").unwrap_err().contains("line"));
        assert!(
            parse_ledger(br#"{"version":2,"entries":[]}"#)
                .unwrap_err()
                .contains("version")
        );
        let f = LedgerFile {
            version: 1,
            entries: vec![entry("other")],
        };
        assert!(parse_ledger(&encode(&f)).unwrap_err().contains("prefix"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.json");
        std::fs::write(&p, b"[]").unwrap();
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(e.contains("l.json"), "{e}");
    }
}
