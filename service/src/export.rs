//! Exports run by the service: the newest sync of a job's disk, read from the staging target
//! (staging server or S3 store), written as raw / VMDK / VHDX / VHD to a file on the appliance
//! or to `s3://BUCKET/KEY` (`godwit_transfer::s3_export`'s resumable multipart upload, its state
//! kept in the service's store after every part, so an export cut short by a restart or
//! `kill -9` resumes without sending finished parts again). Two hashes come out, and they
//! differ for every format but raw:
//! - the SHA-256 of the disk's raw CONTENT (checked against the one recorded at replication;
//!   equals `qemu-img convert -O raw` of the source piped through `sha256sum`), and
//! - the SHA-256 of the exported FILE's bytes (what `sha256sum` of the download prints).

use super::staging_target::S3Access;
use super::store::{StagingRecord, Store};
use super::{Appliance, lock};
use crate::commands::export_format_name;
use godwit_disk::write::OutputFormat;
use godwit_transfer::export::{IndexSource, check_sha, load_index, write_hashed};
use godwit_transfer::s3_export::{self, Upload, UploadState, UploadStateStore};
use godwit_transfer::store::ChunkStore;
use godwit_webui::backend::{CommandError, CommandResult, DataSpaceView, ExportFile, ExportView};
use object_store::aws::AmazonS3;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::runtime::Handle;

/// What an export produced.
pub struct Exported {
    pub content_sha256: String,
    pub file_sha256: String,
    /// Size of the exported file (or object).
    pub bytes_written: u64,
    /// S3 exports: parts kept from an interrupted upload, parts sent by this run.
    pub parts: Option<(usize, usize)>,
}

/// One export as the service runs it: its id (the key of its upload state in the store) and
/// whether it was cancelled.
pub struct ExportRun<'a> {
    pub id: &'a str,
    pub store: &'a Store,
    pub cancelled: &'a dyn Fn() -> bool,
    /// Counts the content bytes read (issue 18: the page's progress); its total is set to the
    /// replica's allocated data once the index is loaded.
    pub meter: Option<Arc<godwit_disk::progress::Meter>>,
    /// The service's staging servers (issue 21); `None`: a fresh one.
    pub fleet: Option<Arc<super::staging_target::Fleet>>,
}

/// Tries per chunk an export makes through the staging servers after a network fault.
const EXPORT_RECONNECT_ATTEMPTS: u32 = 10;

/// An S3 export's upload state, kept in the store under the export's id.
struct StoredState<'a> {
    id: &'a str,
    store: &'a Store,
}

fn store_err(e: super::store::StoreError) -> godwit_transfer::Error {
    godwit_transfer::Error::Usage(e.to_string())
}

impl UploadStateStore for StoredState<'_> {
    fn load(&mut self) -> godwit_transfer::Result<Option<UploadState>> {
        self.store.upload_state(self.id).map_err(store_err)
    }
    fn save(&mut self, st: &UploadState) -> godwit_transfer::Result<()> {
        self.store
            .put_upload_state(self.id, Some(st))
            .map_err(store_err)
    }
    fn clear(&mut self) -> godwit_transfer::Result<()> {
        self.store
            .put_upload_state(self.id, None)
            .map_err(store_err)
    }
}

/// Export disk `disk` of `vm` (its newest sync) in `format` to `dest`: an `s3://` URL, or the
/// local file `file` (made new by `export_files::create`; `dest` is its path). Blocking.
#[allow(clippy::too_many_arguments)]
pub fn run(
    staging: &StagingRecord,
    vm: &str,
    disk: u32,
    format: &str,
    dest: &str,
    file: Option<std::fs::File>,
    handle: &Handle,
    ctl: &ExportRun,
) -> Result<Exported, String> {
    let format = OutputFormat::parse(format, None).map_err(|e| e.to_string())?;
    // Staging servers (issue 21): a server that goes down mid-way is replaced by another of
    // the store (`with_reconnect` below).
    let user = super::staging_target::User::Export(ctl.id.to_string());
    let fleet = ctl.fleet.clone().unwrap_or_default();
    let target = super::staging_target::connector(staging, handle, &fleet, user)?;
    let store: Arc<dyn ChunkStore> = handle
        .block_on(target.connect())
        .map_err(|e| format!("staging target: {e}"))?;
    let index = handle
        .block_on(load_index(&*store, vm, disk, None))
        .map_err(|e| e.to_string())?;
    let mut src = IndexSource::new(index, store, handle.clone());
    if matches!(staging, StagingRecord::Server { .. }) {
        src = src.with_reconnect(target, EXPORT_RECONNECT_ATTEMPTS);
    }
    if let Some(m) = &ctl.meter {
        m.set_total(src.data_bytes());
        src = src.with_meter(m.clone());
    }
    let (written, content, file, parts) = if let Some(rest) = dest.strip_prefix("s3://") {
        let (bucket, key) = s3_export::bucket_key(rest).map_err(|e| e.to_string())?;
        let s3 = s3_client(staging, bucket)?;
        let mut state = StoredState {
            id: ctl.id,
            store: ctl.store,
        };
        let mut note = |m: &str| tracing::info!(export = %ctl.id, "{m}");
        let up = s3_export::upload_resumable(
            &src,
            format,
            Upload {
                s3: &s3,
                bucket,
                key,
                state: &mut state,
                cancelled: ctl.cancelled,
                note: &mut note,
            },
            handle,
        )
        .map_err(|e| e.to_string())?;
        (
            up.bytes,
            up.content_sha256,
            up.file_sha256,
            Some((up.parts_reused, up.parts_sent)),
        )
    } else {
        let f = file.ok_or_else(|| format!("{dest}: the export file was not created"))?;
        let (w, c, f) = to_file(&src, format, f, dest, ctl.cancelled)?;
        (w, c, f, None)
    };
    check_sha(&src.index, &content).map_err(|e| e.to_string())?;
    Ok(Exported {
        content_sha256: hex::encode(content),
        file_sha256: hex::encode(file),
        bytes_written: written,
        parts,
    })
}

/// An S3 client for an export's bucket: the credentials of the S3 staging setting, or (with a
/// staging server) the service's own environment (`AWS_*`).
pub fn s3_client(staging: &StagingRecord, bucket: &str) -> Result<AmazonS3, String> {
    match S3Access::of(staging) {
        Some((access, _, _)) => access.client(bucket, true),
        None => godwit_transfer::store::s3::s3_from_env(bucket, true).map_err(|e| e.to_string()),
    }
}

/// Abort the multipart upload recorded for export `id`, if any, and drop the record (the
/// export failed or was cancelled, and will not be resumed). Blocking.
pub fn abandon_upload(
    staging: &StagingRecord,
    id: &str,
    store: &Store,
    handle: &Handle,
) -> Result<(), String> {
    let Some(st) = store.upload_state(id).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let s3 = s3_client(staging, &st.bucket)?;
    s3_export::abort_upload(&s3, &st, handle).map_err(|e| e.to_string())?;
    store.put_upload_state(id, None).map_err(|e| e.to_string())
}

/// Write a local file (raw is sparse), then hash the file as written. The writes stop with a
/// clear error before the data partition's last [`space_floor`] bytes are used.
fn to_file(
    src: &IndexSource,
    format: OutputFormat,
    f: std::fs::File,
    out: &str,
    cancelled: &dyn Fn() -> bool,
) -> Result<(u64, [u8; 32], [u8; 32]), String> {
    let io = |op: &str, e: std::io::Error| format!("{out}: {op}: {e}");
    let dir = std::path::Path::new(out)
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .to_path_buf();
    if format == OutputFormat::Raw {
        // Written positionally, past the guard below: checked once, up front.
        let data = src
            .index
            .entries
            .iter()
            .filter(|e| matches!(e, godwit_transfer::index::Entry::Data(_)))
            .count() as u64
            * u64::from(src.index.chunk_size);
        if let Ok(s) = crate::space::space(&dir) {
            let floor = space_floor(s.total);
            if s.available < data.saturating_add(floor) {
                return Err(format!(
                    "{out}: the data partition is full for this export: it needs up to {} and {} is free, {} of which stays for the service's own state; delete exports to free space, or enlarge the appliance's disk",
                    crate::space::human(data),
                    crate::space::human(s.available),
                    crate::space::human(floor)
                ));
            }
        }
    }
    let inner = f.try_clone().map_err(|e| io("open", e))?;
    let guarded = SpaceGuard::new(inner, dir.clone(), cancelled);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, guarded);
    let sparse = (format == OutputFormat::Raw).then_some(&f);
    let written = write_hashed(src, format, &mut w, sparse, out);
    let (_, content) = match written {
        Ok(v) => v,
        Err(e) => return Err(explain_full(&dir, e.to_string())),
    };
    if cancelled() {
        // A sparse raw write goes to the file directly, past the writer.
        return Err(format!("{out}: cancelled"));
    }
    w.flush().map_err(|e| explain_full(&dir, io("write", e)))?;
    drop(w);
    f.sync_all()
        .map_err(|e| explain_full(&dir, io("fsync", e)))?;
    // The file's length (a sparse raw file is longer than the bytes written into it): what a
    // download serves and checks.
    let len = f.metadata().map_err(|e| io("stat", e))?.len();
    Ok((len, content, sha256_of(&f, out)?))
}

/// Bytes of the data partition an export leaves free for the service's own state (job store,
/// logs, spools): 5 % of it, at least 8 MiB and at most 256 MiB.
pub fn space_floor(total: u64) -> u64 {
    (total / 20).clamp(8 << 20, 256 << 20)
}

/// Say plainly that the data partition is full (ENOSPC, or the floor reached).
fn explain_full(dir: &std::path::Path, msg: String) -> String {
    if !(msg.contains("No space left") || msg.contains("data partition is full")) {
        return msg;
    }
    let free = crate::space::space(dir)
        .map(|s| crate::space::human(s.available))
        .unwrap_or_else(|_| "?".into());
    if msg.contains("data partition is full") {
        msg
    } else {
        format!(
            "{msg} — the data partition is full ({free} free): delete exports to free space, or enlarge the appliance's disk"
        )
    }
}

/// A writer that fails once the export is cancelled, and before the data partition would be
/// filled past [`space_floor`] (checked every 16 MiB).
struct SpaceGuard<'a, W> {
    inner: W,
    dir: std::path::PathBuf,
    cancelled: &'a dyn Fn() -> bool,
    until_check: u64,
}

const SPACE_CHECK_EVERY: u64 = 16 << 20;

impl<'a, W> SpaceGuard<'a, W> {
    fn new(inner: W, dir: std::path::PathBuf, cancelled: &'a dyn Fn() -> bool) -> Self {
        SpaceGuard {
            inner,
            dir,
            cancelled,
            until_check: 0,
        }
    }
}

impl<W: Write> Write for SpaceGuard<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if (self.cancelled)() {
            return Err(std::io::Error::other("cancelled"));
        }
        if self.until_check == 0 {
            if let Ok(s) = crate::space::space(&self.dir) {
                let floor = space_floor(s.total);
                if s.available < floor + SPACE_CHECK_EVERY {
                    return Err(std::io::Error::other(format!(
                        "the data partition is full: {} free, and exports leave {} for the service's own state; delete exports to free space, or enlarge the appliance's disk",
                        crate::space::human(s.available),
                        crate::space::human(floor)
                    )));
                }
            }
            self.until_check = SPACE_CHECK_EVERY;
        }
        let n = self.inner.write(data)?;
        self.until_check = self.until_check.saturating_sub(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 of an open file's bytes, read back from disk from its start.
fn sha256_of(f: &std::fs::File, path: &str) -> Result<[u8; 32], String> {
    use std::io::Seek;
    let mut f = f.try_clone().map_err(|e| format!("{path}: open: {e}"))?;
    f.rewind().map_err(|e| format!("{path}: seek: {e}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{path}: read: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// The service side: background runs, cancel, resumption at start.
impl Appliance {
    /// Run an export in the background (to `file`, a local export's file made new); its final
    /// state is recorded when it ends.
    pub(super) fn spawn_export(
        &self,
        view: ExportView,
        vm: String,
        staging: StagingRecord,
        file: Option<std::fs::File>,
    ) {
        let store = self.store.clone();
        let handle = self.handle.clone();
        let flags = self.export_flags.clone();
        let flag = Arc::new(AtomicBool::new(false));
        lock(&flags).insert(view.id.clone(), flag.clone());
        let meters = self.export_meters.clone();
        let meter = Arc::new(godwit_disk::progress::Meter::pending());
        lock(&meters).insert(view.id.clone(), meter.clone());
        let fleet = self.engine.fleet().clone();
        let fleet_end = fleet.clone();
        let mut done = view;
        tokio::spawn(async move {
            let (h2, s2, st2, f2) = (handle.clone(), store.clone(), staging.clone(), flag.clone());
            let (id, dest) = (done.id.clone(), done.destination.clone());
            let format = export_format_name(done.format);
            let disk = done.disk;
            let r = tokio::task::spawn_blocking(move || {
                let cancelled = || f2.load(Ordering::Relaxed);
                let ctl = ExportRun {
                    id: &id,
                    store: &s2,
                    cancelled: &cancelled,
                    meter: Some(meter.clone()),
                    fleet: Some(fleet.clone()),
                };
                let r = run(&st2, &vm, disk, format, &dest, file, &h2, &ctl);
                if r.is_err() {
                    // Not to be resumed: abort the upload (a cancelled one is aborted already).
                    if let Err(e) = abandon_upload(&st2, &id, &s2, &h2) {
                        tracing::warn!(export = %id, error = %e, "aborting the upload");
                    }
                    if !dest.starts_with("s3://") {
                        // Nothing half-written is left to take space or be mistaken for a
                        // finished image.
                        let _ = super::export_files::remove(std::path::Path::new(&dest));
                    }
                }
                r
            })
            .await
            .unwrap_or_else(|e| Err(format!("export task failed: {e}")));
            let last = lock(&meters).remove(&done.id).map(|m| m.snapshot());
            if let Some(p) = last {
                done.bytes_done = p.bytes_done;
                done.bytes_total = p.bytes_total;
                done.throughput_bps = p.rate_bytes_per_sec;
            }
            done.eta_seconds = None;
            done.finished_at = Some(crate::time::rfc3339(crate::time::now()));
            match r {
                Ok(rep) => {
                    done.state = "done".into();
                    let (reused, sent) = rep.parts.unwrap_or_default();
                    tracing::info!(
                        export = %done.id,
                        content_sha256 = %rep.content_sha256,
                        file_sha256 = %rep.file_sha256,
                        bytes = rep.bytes_written,
                        parts_reused = reused,
                        parts_sent = sent,
                        "export done"
                    );
                    done.sha256 = Some(rep.content_sha256);
                    done.file_sha256 = Some(rep.file_sha256);
                    done.size_bytes = Some(rep.bytes_written);
                    done.downloadable = !done.destination.starts_with("s3://");
                }
                Err(e) if flag.load(Ordering::Relaxed) => {
                    done.state = "cancelled".into();
                    done.error = Some(crate::errors::export_cancelled(&e));
                    tracing::info!(export = %done.id, "export cancelled");
                }
                Err(e) => {
                    done.state = "failed".into();
                    tracing::warn!(export = %done.id, error = %e, "export failed");
                    done.error = Some(crate::errors::classify_export(&e));
                }
            }
            // Issue 21: the staging server it read through last, kept with the record.
            done.staging_target =
                fleet_end.server_of(&super::staging_target::User::Export(done.id.clone()));
            if let Err(e) = store.put_export(&done) {
                tracing::error!(error = %e, "recording an export");
            }
            lock(&flags).remove(&done.id);
        });
    }

    /// Cancel a running export: it stops at its next write; an S3 upload is aborted.
    pub(super) async fn stop_export(&self, id: String) -> CommandResult<()> {
        let Some(mut view) = self.store.export(&id)? else {
            return Err(CommandError::NotFound {
                message: format!("export {id}"),
            });
        };
        if view.state != "running" {
            return Err(CommandError::Conflict {
                message: format!("export {id} is not running ({})", view.state),
            });
        }
        // Recorded first, so a restart before the export stops does not resume it.
        view.state = "cancelled".into();
        view.error = Some(crate::errors::export_cancelled("cancelled by the operator"));
        self.store.put_export(&view)?;
        let flag = lock(&self.export_flags).get(&id).cloned();
        match flag {
            Some(f) => f.store(true, Ordering::Relaxed),
            None => self.abandon_in_background(id.clone()),
        }
        tracing::info!(export = %id, "export cancel requested");
        Ok(())
    }

    /// Abort the recorded upload of an export that will not run again.
    fn abandon_in_background(&self, id: String) {
        let Ok(Some(staging)) = self.settings_now().map(|s| s.staging) else {
            return;
        };
        let (store, handle) = (self.store.clone(), self.handle.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = abandon_upload(&staging, &id, &store, &handle) {
                tracing::warn!(export = %id, error = %e, "aborting the upload");
            }
        });
    }

    /// At start: exports cut short by a stop run again (an S3 upload resumes from its recorded
    /// parts); cancelled ones whose upload is still recorded are aborted.
    pub(super) fn resume_exports(&self) -> CommandResult<usize> {
        let staging = self.settings_now()?.staging;
        let mut resumed = 0;
        for mut e in self.store.exports()? {
            match e.state.as_str() {
                "running" => {}
                "cancelled" => {
                    if self.store.upload_state(&e.id)?.is_some() {
                        self.abandon_in_background(e.id.clone());
                    }
                    continue;
                }
                _ => continue,
            }
            let job = self.store.job(&e.job_id)?;
            match (job, staging.clone()) {
                (Some(j), Some(st)) => {
                    let file = match self.reopen_local(&e) {
                        Ok(f) => f,
                        Err(err) => {
                            e.state = "failed".into();
                            e.error = Some(crate::errors::classify_export(&format!(
                                "interrupted by a stop, and {err}"
                            )));
                            self.store.put_export(&e)?;
                            continue;
                        }
                    };
                    tracing::info!(export = %e.id, destination = %e.destination, "resuming an export interrupted by a stop");
                    self.spawn_export(e, j.vm, st, file);
                    resumed += 1;
                }
                _ => {
                    e.state = "failed".into();
                    e.error = Some(crate::errors::classify_export(
                        "interrupted by a stop; its job or the staging target is gone",
                    ));
                    self.store.put_export(&e)?;
                }
            }
        }
        Ok(resumed)
    }

    /// A resumed local export's file, made again (the partial one is ours; `None` for S3).
    fn reopen_local(&self, e: &ExportView) -> Result<Option<std::fs::File>, String> {
        if e.destination.starts_with("s3://") {
            return Ok(None);
        }
        let dir = self.cfg.exports_dir();
        match super::export_files::parse(&e.destination, &dir) {
            Ok(super::export_files::Destination::Local(parts)) => {
                super::export_files::recreate(&dir, &parts)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "its destination {} is no longer under {}",
                e.destination,
                dir.display()
            )),
        }
    }

    /// The local file of export `id` when it is a finished local export whose file is still
    /// the one written (same size).
    pub(super) fn open_export(&self, id: &str) -> CommandResult<ExportFile> {
        let Some(e) = self.store.export(id)? else {
            return Err(CommandError::NotFound {
                message: format!("export {id}"),
            });
        };
        let conflict = |m: String| CommandError::Conflict { message: m };
        if e.state != "done" || !e.downloadable {
            return Err(conflict(format!(
                "export {id} has no file to download ({}, {})",
                e.state, e.destination
            )));
        }
        let dir = self.cfg.exports_dir();
        let path = match super::export_files::parse(&e.destination, &dir) {
            Ok(super::export_files::Destination::Local(parts)) => {
                super::export_files::path_of(&dir, &parts)
            }
            _ => {
                return Err(conflict(format!(
                    "export {id}: {} is not under {}",
                    e.destination,
                    dir.display()
                )));
            }
        };
        let file = super::export_files::open(&path)
            .map_err(|err| conflict(format!("export {id}: {}: {err}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|err| conflict(format!("export {id}: {}: {err}", path.display())))?
            .len();
        if e.size_bytes.is_some_and(|n| n != len) {
            return Err(conflict(format!(
                "export {id}: {} changed since it was written ({len} bytes, {} written)",
                path.display(),
                e.size_bytes.unwrap_or_default()
            )));
        }
        Ok(ExportFile {
            file,
            len,
            file_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{id}.img")),
            sha256: e.file_sha256.unwrap_or_default(),
        })
    }

    /// Delete export `id`: its local file, then its record.
    pub(super) fn remove_export(&self, id: &str) -> CommandResult<()> {
        let Some(e) = self.store.export(id)? else {
            return Err(CommandError::NotFound {
                message: format!("export {id}"),
            });
        };
        if e.state == "running" {
            return Err(CommandError::Conflict {
                message: format!("export {id} is running: cancel it first"),
            });
        }
        if !e.destination.starts_with("s3://") {
            let dir = self.cfg.exports_dir();
            if let Ok(super::export_files::Destination::Local(parts)) =
                super::export_files::parse(&e.destination, &dir)
            {
                let path = super::export_files::path_of(&dir, &parts);
                super::export_files::remove(&path).map_err(|err| CommandError::Internal {
                    message: format!("removing {}: {err}", path.display()),
                })?;
            }
        }
        if self.store.upload_state(id)?.is_some() {
            self.abandon_in_background(id.to_string());
        }
        self.store.delete_export(id)?;
        tracing::info!(export = %id, destination = %e.destination, "export deleted");
        Ok(())
    }

    /// Size and free space of the data partition (the file system of the export directory).
    pub(super) fn data_space(&self) -> Option<DataSpaceView> {
        let dir = self.cfg.exports_dir();
        let probe = if dir.exists() {
            dir.clone()
        } else {
            self.cfg.data.clone()
        };
        let s = crate::space::space(&probe).ok()?;
        Some(DataSpaceView {
            exports_dir: dir.display().to_string(),
            total_bytes: s.total,
            free_bytes: s.available,
        })
    }
}
