//! Export to S3 as a multipart upload with SHA-256 part checksums that resumes after an
//! interruption. The upload id and every finished part (number, id, SHA-256) are kept in an
//! [`UploadState`], saved after every part through an [`UploadStateStore`]: a state file for
//! `godwit export` (`$GODWIT_STATE_DIR`, default `~/.local/state/godwit/exports/`), the
//! service's store for `godwit serve`. A rerun of the same export regenerates the stream, skips
//! parts whose SHA-256 matches a finished part, and uploads the rest. If a regenerated part
//! differs (an output format that is not byte-for-byte reproducible), the old upload is aborted
//! and the export starts over once. If the bucket no longer knows the recorded upload (aborted
//! by a lifecycle rule or by hand: `NoSuchUpload`), the state is dropped and the export starts
//! over once as well. A cancelled upload is aborted and its state dropped.

use crate::error::{Error, Result};
use crate::export::{IndexSource, write_hashed};
use crate::store::s3::s3_from_env;
use godwit_disk::write::{OutputFormat, WriteStats};
use object_store::PutPayload;
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use tokio::runtime::Handle;

/// S3's smallest part (all parts but the last).
pub const MIN_PART: usize = 5 << 20;
const MAX_PARTS: u64 = 9_000;

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct PartRecord {
    pub number: usize,
    pub content_id: String,
    pub sha256: String,
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct UploadState {
    pub bucket: String,
    pub key: String,
    pub sync_id: String,
    pub format: String,
    pub upload_id: String,
    pub part_size: usize,
    pub parts: Vec<PartRecord>,
}

/// Where an upload's state is kept between attempts. `save` is called once the upload is
/// created and after every finished part, and must be durable when it returns.
pub trait UploadStateStore {
    /// The state of an interrupted upload, if any.
    fn load(&mut self) -> Result<Option<UploadState>>;
    fn save(&mut self, st: &UploadState) -> Result<()>;
    /// Forget the state (completed, aborted, or unknown to the bucket).
    fn clear(&mut self) -> Result<()>;
}

/// `godwit export`'s state file: one per bucket, key, sync and format.
pub struct FileState {
    path: PathBuf,
}

impl FileState {
    pub fn new(bucket: &str, key: &str, sync: &str, format: &str) -> FileState {
        FileState {
            path: state_path(bucket, key, sync, format),
        }
    }
}

impl UploadStateStore for FileState {
    fn load(&mut self) -> Result<Option<UploadState>> {
        // An unreadable or foreign file is no upload to resume.
        Ok(std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }
    fn save(&mut self, st: &UploadState) -> Result<()> {
        save(&self.path, st)
    }
    fn clear(&mut self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(self.path.display().to_string(), "remove", e))
            }
            _ => Ok(()),
        }
    }
}

fn state_dir() -> PathBuf {
    if let Ok(d) = std::env::var("GODWIT_STATE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/var/lib/godwit".into());
    PathBuf::from(home).join(".local/state/godwit/exports")
}

fn state_path(bucket: &str, key: &str, sync: &str, format: &str) -> PathBuf {
    let h = Sha256::digest(format!("{bucket}\n{key}\n{sync}\n{format}").as_bytes());
    state_dir().join(format!("{}.json", hex::encode(&h[..12])))
}

fn save(p: &PathBuf, st: &UploadState) -> Result<()> {
    let what = p.display().to_string();
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(&what, "create directory", e))?;
    }
    let tmp = p.with_extension("tmp");
    let b = serde_json::to_vec_pretty(st).map_err(|e| Error::Usage(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&what, "create", e))?;
    f.write_all(&b)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&what, "write", e))?;
    std::fs::rename(&tmp, p).map_err(|e| Error::io(&what, "rename", e))
}

/// What [`upload_resumable`] works with.
pub struct Upload<'a> {
    /// A client for `bucket` (with SHA-256 checksums, see `store::s3`).
    pub s3: &'a AmazonS3,
    pub bucket: &'a str,
    pub key: &'a str,
    pub state: &'a mut dyn UploadStateStore,
    /// Polled as the stream is written; once true the upload is aborted, its state dropped,
    /// and the export ends with [`Error::Cancelled`].
    pub cancelled: &'a dyn Fn() -> bool,
    /// Told what happens to an interrupted upload (resumed, started over), one line each.
    pub note: &'a mut dyn FnMut(&str),
}

/// What a finished upload produced.
#[derive(Clone, Debug)]
pub struct Uploaded {
    pub stats: WriteStats,
    /// SHA-256 of the disk's raw content.
    pub content_sha256: [u8; 32],
    /// SHA-256 of the object's bytes (the whole stream, reused parts included).
    pub file_sha256: [u8; 32],
    /// Length of the object.
    pub bytes: u64,
    pub upload_id: String,
    /// Parts of an interrupted upload that were kept, not sent again.
    pub parts_reused: usize,
    /// Parts sent by this call.
    pub parts_sent: usize,
}

struct PartWriter<'a> {
    s3: &'a AmazonS3,
    path: ObjPath,
    handle: &'a Handle,
    st: UploadState,
    state: &'a mut dyn UploadStateStore,
    cancelled: &'a dyn Fn() -> bool,
    buf: Vec<u8>,
    next: usize,
    reused: usize,
    sent: usize,
    file_hash: Sha256,
    bytes: u64,
    diverged: bool,
    /// The bucket answered that the recorded upload id does not exist (any more).
    vanished: bool,
    cancel: bool,
}

/// True when S3 says the multipart upload id is unknown: `NoSuchUpload` (404).
fn upload_vanished(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. }) || {
        let text = format!("{e:?}");
        text.contains("NoSuchUpload")
    }
}

impl PartWriter<'_> {
    fn flush_part(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() && self.next > 0 {
            return Ok(());
        }
        let n = self.next;
        let sha = hex::encode(Sha256::digest(&self.buf));
        if let Some(done) = self.st.parts.get(n) {
            if done.sha256 == sha {
                self.reused += 1;
                self.next += 1;
                self.buf.clear();
                return Ok(());
            }
            self.diverged = true;
            return Err(std::io::Error::other(
                "regenerated part differs from the interrupted upload",
            ));
        }
        if (self.cancelled)() {
            self.cancel = true;
            return Err(std::io::Error::other("cancelled"));
        }
        let data = PutPayload::from(std::mem::take(&mut self.buf));
        let id = self
            .handle
            .block_on(self.s3.put_part(&self.path, &self.st.upload_id, n, data))
            .map_err(|e| {
                self.vanished = upload_vanished(&e);
                std::io::Error::other(format!("uploading part {n}: {e}"))
            })?;
        self.st.parts.push(PartRecord {
            number: n,
            content_id: id.content_id,
            sha256: sha,
        });
        self.state
            .save(&self.st)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.sent += 1;
        self.next += 1;
        self.buf = Vec::with_capacity(self.st.part_size);
        Ok(())
    }
}

impl Write for PartWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if (self.cancelled)() {
            self.cancel = true;
            return Err(std::io::Error::other("cancelled"));
        }
        let room = self.st.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.file_hash.update(&data[..n]);
        self.bytes += n as u64;
        if self.buf.len() == self.st.part_size {
            self.flush_part()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Abort a recorded multipart upload (best effort: an upload the bucket no longer knows is
/// gone already).
pub fn abort_upload(s3: &AmazonS3, st: &UploadState, handle: &Handle) -> Result<()> {
    match handle.block_on(s3.abort_multipart(&ObjPath::from(st.key.as_str()), &st.upload_id)) {
        Ok(()) => Ok(()),
        Err(e) if upload_vanished(&e) => Ok(()),
        Err(e) => Err(Error::S3 {
            what: format!(
                "s3://{}/{}: aborting upload {}",
                st.bucket, st.key, st.upload_id
            ),
            source: e,
        }),
    }
}

fn abort_noting(s3: &AmazonS3, st: &UploadState, handle: &Handle, note: &mut dyn FnMut(&str)) {
    if let Err(e) = abort_upload(s3, st, handle) {
        note(&e.to_string());
    }
}

/// Split `BUCKET/KEY`.
pub fn bucket_key(rest: &str) -> Result<(&str, &str)> {
    rest.split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| Error::Usage(format!("s3://{rest}: expected s3://BUCKET/KEY")))
}

/// Export `src` in `format` to `s3://BUCKET/KEY` (`rest` = `BUCKET/KEY`) with the `AWS_*`
/// environment's credentials and a state file. Blocking.
pub fn export_to_s3(
    src: &IndexSource,
    format: OutputFormat,
    rest: &str,
    handle: &Handle,
) -> Result<(WriteStats, [u8; 32])> {
    let (bucket, key) = bucket_key(rest)?;
    let s3 = s3_from_env(bucket, true)?;
    let mut state = FileState::new(
        bucket,
        key,
        src.index.sync_id.as_str(),
        &format!("{format:?}"),
    );
    let mut note = |m: &str| eprintln!("godwit: {m}");
    let up = upload_resumable(
        src,
        format,
        Upload {
            s3: &s3,
            bucket,
            key,
            state: &mut state,
            cancelled: &|| false,
            note: &mut note,
        },
        handle,
    )?;
    if up.parts_reused > 0 {
        eprintln!(
            "godwit: s3://{bucket}/{key}: {} parts reused from the interrupted upload",
            up.parts_reused
        );
    }
    Ok((up.stats, up.content_sha256))
}

/// The resumable upload itself: resume the upload `up.state` holds (same bucket, key, sync
/// and format) or start one, send the parts not finished yet, complete it. Blocking.
pub fn upload_resumable(
    src: &IndexSource,
    format: OutputFormat,
    up: Upload<'_>,
    handle: &Handle,
) -> Result<Uploaded> {
    let Upload {
        s3,
        bucket,
        key,
        state,
        cancelled,
        note,
    } = up;
    let path = ObjPath::from(key);
    let fmt = format!("{format:?}");
    let sync = src.index.sync_id.to_string();
    let what = format!("s3://{bucket}/{key}");
    for round in 0..3 {
        let prior = state.load()?;
        let st = match prior {
            Some(st)
                if round == 0
                    && st.bucket == bucket
                    && st.key == key
                    && st.sync_id == sync
                    && st.format == fmt =>
            {
                note(&format!(
                    "resuming upload to {what}: {} parts already uploaded",
                    st.parts.len()
                ));
                st
            }
            other => {
                if let Some(old) = other.filter(|o| o.bucket == bucket) {
                    // An upload of something else (another sync or format): not resumable.
                    note(&format!(
                        "{what}: the recorded upload {} was of sync {} as {}; aborting it",
                        old.upload_id, old.sync_id, old.format
                    ));
                    abort_noting(s3, &old, handle, note);
                    state.clear()?;
                }
                if cancelled() {
                    return Err(Error::Cancelled { what });
                }
                let part_size = usize::try_from(
                    (src.index.disk_size / MAX_PARTS + 1).next_multiple_of(1 << 20),
                )
                .unwrap_or(MIN_PART)
                .max(8 << 20);
                let upload_id =
                    handle
                        .block_on(s3.create_multipart(&path))
                        .map_err(|e| Error::S3 {
                            what: what.clone(),
                            source: e,
                        })?;
                let st = UploadState {
                    bucket: bucket.into(),
                    key: key.into(),
                    sync_id: sync.clone(),
                    format: fmt.clone(),
                    upload_id,
                    part_size,
                    parts: Vec::new(),
                };
                state.save(&st)?;
                st
            }
        };
        let mut w = PartWriter {
            s3,
            path: path.clone(),
            handle,
            buf: Vec::with_capacity(st.part_size),
            st,
            state: &mut *state,
            cancelled,
            next: 0,
            reused: 0,
            sent: 0,
            file_hash: Sha256::new(),
            bytes: 0,
            diverged: false,
            vanished: false,
            cancel: false,
        };
        let r = write_hashed(src, format, &mut w, None, &what);
        let r = r.and_then(|v| {
            w.flush_part()
                .map_err(|e| Error::io(&what, "upload", e))
                .map(|()| v)
        });
        if w.cancel {
            abort_noting(s3, &w.st, handle, note);
            w.state.clear()?;
            return Err(Error::Cancelled { what });
        }
        if w.vanished && !w.st.parts.is_empty() && round == 0 {
            w.state.clear()?;
            note(&format!(
                "{what}: the interrupted upload {} no longer exists in the bucket; starting over",
                w.st.upload_id
            ));
            continue;
        }
        if w.diverged {
            abort_noting(s3, &w.st, handle, note);
            w.state.clear()?;
            note(&format!(
                "{what}: the regenerated output differs from the interrupted upload; starting over"
            ));
            continue;
        }
        let (stats, sha) = r?;
        if w.next < w.st.parts.len() {
            // The interrupted upload had more parts than this stream: it was something else.
            abort_noting(s3, &w.st, handle, note);
            w.state.clear()?;
            continue;
        }
        let parts: Vec<PartId> =
            w.st.parts
                .iter()
                .map(|p| PartId {
                    content_id: p.content_id.clone(),
                })
                .collect();
        match handle.block_on(s3.complete_multipart(&path, &w.st.upload_id, parts)) {
            Ok(_) => {}
            Err(e) if round == 0 && w.reused > 0 && upload_vanished(&e) => {
                w.state.clear()?;
                note(&format!(
                    "{what}: the interrupted upload {} no longer exists in the bucket; starting over",
                    w.st.upload_id
                ));
                continue;
            }
            Err(e) => {
                return Err(Error::S3 {
                    what: what.clone(),
                    source: e,
                });
            }
        }
        w.state.clear()?;
        return Ok(Uploaded {
            stats,
            content_sha256: sha,
            file_sha256: w.file_hash.finalize().into(),
            bytes: w.bytes,
            upload_id: w.st.upload_id.clone(),
            parts_reused: w.reused,
            parts_sent: w.sent,
        });
    }
    Err(Error::Usage(format!(
        "{what}: could not complete the upload"
    )))
}
