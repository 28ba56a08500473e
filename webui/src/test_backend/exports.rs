//! The test double's exports: a "finished" export is a real file of made-up bytes in the
//! system temp directory (so downloads, ranges and digests can be exercised), removed when the
//! export is deleted. Destinations follow the service's rule: a file name or a path under
//! [`EXPORTS_DIR`], or `s3://bucket/key`; anything else is refused on the field.

use super::{State, TestBackend};
use crate::backend::*;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// Where the double says local exports go (nothing is written there).
pub const EXPORTS_DIR: &str = "/var/lib/godwit/exports";
/// Size of every made-up export file.
pub const EXPORT_FILE_BYTES: usize = 3 << 20;

/// The bytes of a made-up export (a fixed pattern: tests can check any range).
pub fn export_bytes(id: &str) -> Vec<u8> {
    let seed = id
        .bytes()
        .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    (0..EXPORT_FILE_BYTES)
        .map(|i| {
            let [lo, hi, ..] = i.to_le_bytes();
            lo.wrapping_mul(13).wrapping_add(seed) ^ hi
        })
        .collect()
}

fn file_of(id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("godwit-test-export-{}-{id}", std::process::id()))
}

/// The destination as the service would store it, or its refusal.
pub(super) fn check_destination(d: &str) -> CommandResult<String> {
    let d = d.trim();
    if let Some(rest) = d.strip_prefix("s3://") {
        return match rest.split_once('/') {
            Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok(d.to_string()),
            _ => Err(CommandError::field(
                "destination",
                "expected s3://BUCKET/KEY",
            )),
        };
    }
    let rel = d
        .strip_prefix(EXPORTS_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(d);
    if rel.is_empty()
        || rel.starts_with('/')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(CommandError::field(
            "destination",
            format!(
                "a file name such as web-01.vmdk (written under {EXPORTS_DIR}/), or s3://BUCKET/KEY"
            ),
        ));
    }
    Ok(format!("{EXPORTS_DIR}/{rel}"))
}

/// Record a finished export of `cmd` (its file written now, for local destinations).
pub(super) fn finished(
    s: &mut State,
    id: String,
    cmd: CreateExport,
    dest: String,
) -> CommandResult<ExportView> {
    if s.exports
        .iter()
        .any(|e| e.destination == dest && !dest.starts_with("s3://"))
    {
        return Err(CommandError::field(
            "destination",
            format!("{dest} exists already: delete that export first, or choose another name"),
        ));
    }
    let local = !dest.starts_with("s3://");
    let bytes = export_bytes(&id);
    let sha = hex::encode(Sha256::digest(&bytes));
    if local {
        std::fs::write(file_of(&id), &bytes).map_err(|e| CommandError::Internal {
            message: format!("writing the test export: {e}"),
        })?;
    }
    let view = ExportView {
        id,
        job_id: cmd.job_id,
        disk: cmd.disk,
        format: cmd.format,
        destination: dest,
        state: "done".into(),
        sha256: Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
        file_sha256: Some(sha),
        error: None,
        size_bytes: Some(bytes.len() as u64),
        downloadable: local,
        vm: String::new(),
        bytes_done: 0,
        bytes_total: 0,
        throughput_bps: 0,
        eta_seconds: None,
        started_at: None,
        finished_at: None,
        staging_target: None, // issue 21
    };
    s.exports.push(view.clone());
    Ok(view)
}

impl Drop for TestBackend {
    /// The made-up export files go with the backend.
    fn drop(&mut self) {
        for e in &self.lock().exports {
            if e.downloadable {
                let _ = std::fs::remove_file(file_of(&e.id));
            }
        }
    }
}

impl TestBackend {
    pub(super) fn open_export_file(&self, id: &str) -> CommandResult<ExportFile> {
        let s = self.lock();
        let e = s
            .exports
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| CommandError::NotFound {
                message: format!("export {id}"),
            })?;
        if !e.downloadable || e.state != "done" {
            return Err(CommandError::Conflict {
                message: format!("export {id} has no file to download ({})", e.state),
            });
        }
        let file = std::fs::File::open(file_of(id)).map_err(|err| CommandError::Conflict {
            message: format!("export {id}: {err}"),
        })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or_default();
        Ok(ExportFile {
            file,
            len,
            file_name: e
                .destination
                .rsplit('/')
                .next()
                .unwrap_or("export")
                .to_string(),
            sha256: e.file_sha256.clone().unwrap_or_default(),
        })
    }

    pub(super) fn remove_export(&self, id: &str) -> CommandResult<()> {
        let mut s = self.lock();
        let i =
            s.exports
                .iter()
                .position(|e| e.id == id)
                .ok_or_else(|| CommandError::NotFound {
                    message: format!("export {id}"),
                })?;
        if s.exports[i].state == "running" {
            return Err(CommandError::Conflict {
                message: format!("export {id} is running: cancel it first"),
            });
        }
        let e = s.exports.remove(i);
        if e.downloadable {
            let _ = std::fs::remove_file(file_of(id));
        }
        Ok(())
    }
}
