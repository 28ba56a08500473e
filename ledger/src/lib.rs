//! # godwit-ledger
//!
//! The ledger of source-side snapshots (vSphere) and checkpoints (Hyper-V) Godwit creates.
//! Every entry is written here durably (temp file, fsync, rename, fsync of the directory)
//! BEFORE the snapshot is created, and leaves the ledger only once its removal (and merge)
//! finished. A crash in between leaves an entry that the next start sweeps.
//!
//! The file is JSON: `{"version": 1, "entries": [ ... ]}`; the entry type is the source's own
//! (see [`Entry`]), so each source keeps its file format. Every entry's name starts with
//! [`NAME_PREFIX`]: Godwit never records (and so never removes) anything it did not name.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Current ledger file version.
pub const LEDGER_VERSION: u32 = 1;
/// Ledger files larger than this are refused (a ledger holds a handful of entries).
pub const MAX_LEDGER_BYTES: u64 = 16 * 1024 * 1024;
/// Every snapshot or checkpoint Godwit creates is named with this prefix.
pub const NAME_PREFIX: &str = "godwit-";

/// Errors: a file that cannot be read or written (named, with the operation), a file that is
/// not a ledger, or an entry whose name lacks [`NAME_PREFIX`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot {op}: {source}")]
    File {
        path: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    BadFile { path: String, detail: String },
    #[error("{kind} name {name:?} lacks the {NAME_PREFIX} prefix")]
    BadName { kind: &'static str, name: String },
}

impl Error {
    fn file(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        Error::File {
            path: path.display().to_string(),
            op,
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// One ledger entry; each source defines its own (host, VM reference, snapshot reference...).
pub trait Entry: Serialize + DeserializeOwned + Clone {
    /// What an entry records, for messages: "snapshot", "checkpoint".
    const KIND: &'static str;
    /// The snapshot/checkpoint name: unique per entry, starts with [`NAME_PREFIX`].
    fn name(&self) -> &str;
}

#[derive(serde::Deserialize)]
#[serde(bound = "E: Entry")]
struct LedgerFile<E> {
    version: u32,
    entries: Vec<E>,
}

#[derive(Serialize)]
#[serde(bound = "E: Entry")]
struct LedgerFileRef<'a, E> {
    version: u32,
    entries: &'a [E],
}

/// A ledger file. Each change rewrites the whole (small) file atomically.
#[derive(Debug)]
pub struct Ledger<E> {
    path: PathBuf,
    entries: Vec<E>,
}

impl<E: Entry> Ledger<E> {
    /// Open (or start, if the file does not exist) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let entries = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::file(path, "stat", e)),
            Ok(m) if m.len() > MAX_LEDGER_BYTES => {
                return Err(Error::BadFile {
                    path: path.display().to_string(),
                    detail: format!("ledger larger than {MAX_LEDGER_BYTES} bytes"),
                });
            }
            Ok(_) => {
                let bytes = std::fs::read(path).map_err(|e| Error::file(path, "read", e))?;
                parse::<E>(&bytes).map_err(|detail| Error::BadFile {
                    path: path.display().to_string(),
                    detail,
                })?
            }
        };
        Ok(Ledger {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record an entry durably. Refuses names without [`NAME_PREFIX`].
    pub fn add(&mut self, e: E) -> Result<()> {
        check_name(e.name()).map_err(|name| Error::BadName {
            kind: E::KIND,
            name,
        })?;
        self.entries.push(e);
        self.persist()
    }

    /// Change the entries named `name` with `f`, durably (e.g. to record the snapshot's id once
    /// the create call returned). The name itself must not change.
    pub fn update(&mut self, name: &str, mut f: impl FnMut(&mut E)) -> Result<()> {
        for e in self.entries.iter_mut().filter(|e| e.name() == name) {
            f(e);
            if e.name() != name {
                return Err(Error::BadName {
                    kind: E::KIND,
                    name: e.name().to_string(),
                });
            }
        }
        self.persist()
    }

    /// Drop the entries named `name` durably.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        self.entries.retain(|e| e.name() != name);
        self.persist()
    }

    fn persist(&self) -> Result<()> {
        write_durably(&self.path, &encode(&self.entries))
    }
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.starts_with(NAME_PREFIX) {
        Ok(())
    } else {
        Err(name.to_string())
    }
}

/// Parse ledger bytes (pure; a fuzz entry point). The message says what is wrong and where.
pub fn parse<E: Entry>(bytes: &[u8]) -> std::result::Result<Vec<E>, String> {
    let f: LedgerFile<E> = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "not a {} ledger (line {}, column {}): {e}",
            E::KIND,
            e.line(),
            e.column()
        )
    })?;
    if f.version != LEDGER_VERSION {
        return Err(format!(
            "{} ledger version {} is not {LEDGER_VERSION}",
            E::KIND,
            f.version
        ));
    }
    if let Some(e) = f.entries.iter().find(|e| check_name(e.name()).is_err()) {
        return Err(format!(
            "{} entry {:?} lacks the {NAME_PREFIX} prefix",
            E::KIND,
            e.name()
        ));
    }
    Ok(f.entries)
}

/// Encode entries as a ledger file (pretty JSON, trailing newline); `parse` reads it back.
pub fn encode<E: Entry>(entries: &[E]) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(&LedgerFileRef {
        version: LEDGER_VERSION,
        entries,
    })
    .unwrap_or_default();
    v.push(b'\n');
    v
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory. Creates the directory if needed.
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
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Snap {
        host: String,
        name: String,
        id: Option<String>,
    }

    impl Entry for Snap {
        const KIND: &'static str = "test snapshot";
        fn name(&self) -> &str {
            &self.name
        }
    }

    fn snap(name: &str) -> Snap {
        Snap {
            host: "h:1 \"q\"".into(),
            name: name.into(),
            id: None,
        }
    }

    #[test]
    fn entries_survive_reopen_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/ledger.json");
        let mut l = Ledger::<Snap>::open(&p).unwrap();
        assert!(l.entries().is_empty());
        l.add(snap("godwit-a")).unwrap();
        l.add(snap("godwit-b")).unwrap();
        l.update("godwit-a", |e| e.id = Some("A1".into())).unwrap();
        l.remove("godwit-b").unwrap();
        let again = Ledger::<Snap>::open(&p).unwrap();
        assert_eq!(
            again.entries(),
            &[Snap {
                id: Some("A1".into()),
                ..snap("godwit-a")
            }]
        );
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(encode(&parse::<Snap>(&bytes).unwrap()), bytes);
        assert!(bytes.starts_with(b"{\n  \"version\": 1,"));
        // No temp file left beside it.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn names_without_the_prefix_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::<Snap>::open(&dir.path().join("l.json")).unwrap();
        let e = l.add(snap("mine")).unwrap_err().to_string();
        assert!(e.contains("test snapshot name \"mine\""), "{e}");
        l.add(snap("godwit-x")).unwrap();
        let e = l
            .update("godwit-x", |e| e.name = "other".into())
            .unwrap_err();
        assert!(matches!(e, Error::BadName { .. }));
    }

    #[test]
    fn bad_ledgers_are_refused_with_reasons() {
        assert!(parse::<Snap>(b"{").unwrap_err().contains("line 1"));
        assert!(
            parse::<Snap>(br#"{"version":2,"entries":[]}"#)
                .unwrap_err()
                .contains("version 2")
        );
        let e = parse::<Snap>(&encode(&[snap("other")])).unwrap_err();
        assert!(e.contains("prefix") && e.contains("other"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.json");
        std::fs::write(&p, b"[]").unwrap();
        let e = Ledger::<Snap>::open(&p).unwrap_err().to_string();
        assert!(
            e.contains("l.json") && e.contains("not a test snapshot ledger"),
            "{e}"
        );
        let big = std::fs::File::create(&p).unwrap();
        big.set_len(MAX_LEDGER_BYTES + 1).unwrap();
        let e = Ledger::<Snap>::open(&p).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
