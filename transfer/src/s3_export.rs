//! Export to S3 as a multipart upload with SHA-256 part checksums that resumes after an
//! interruption. The upload id and every finished part (number, id, SHA-256) are kept in a
//! state file (`$GODWIT_STATE_DIR`, default `~/.local/state/godwit/exports/`); a rerun of the
//! same export regenerates the stream, skips parts whose SHA-256 matches a finished part, and
//! uploads the rest. If a regenerated part differs (an output format that is not byte-for-byte
//! reproducible), the old upload is aborted and the export starts over once. If the bucket no
//! longer knows the recorded upload (aborted by a lifecycle rule or by hand: `NoSuchUpload`),
//! the state is dropped and the export starts over once as well.

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

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct UploadState {
    pub bucket: String,
    pub key: String,
    pub sync_id: String,
    pub format: String,
    pub upload_id: String,
    pub part_size: usize,
    pub parts: Vec<PartRecord>,
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

struct PartWriter<'a> {
    s3: &'a AmazonS3,
    path: ObjPath,
    handle: &'a Handle,
    st: UploadState,
    state_file: PathBuf,
    buf: Vec<u8>,
    next: usize,
    reused: usize,
    diverged: bool,
    /// The bucket answered that the recorded upload id does not exist (any more).
    vanished: bool,
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
        save(&self.state_file, &self.st).map_err(|e| std::io::Error::other(e.to_string()))?;
        self.next += 1;
        self.buf = Vec::with_capacity(self.st.part_size);
        Ok(())
    }
}

impl Write for PartWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.st.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.st.part_size {
            self.flush_part()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Export `src` in `format` to `s3://BUCKET/KEY` (`rest` = `BUCKET/KEY`). Blocking.
pub fn export_to_s3(
    src: &IndexSource,
    format: OutputFormat,
    rest: &str,
    handle: &Handle,
) -> Result<(WriteStats, [u8; 32])> {
    let (bucket, key) = rest
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| Error::Usage(format!("s3://{rest}: expected s3://BUCKET/KEY")))?;
    let s3 = s3_from_env(bucket, true)?;
    let path = ObjPath::from(key);
    let fmt = format!("{format:?}");
    let sync = src.index.sync_id.to_string();
    let state_file = state_path(bucket, key, &sync, &fmt);
    let what = format!("s3://{bucket}/{key}");
    for round in 0..3 {
        let prior: Option<UploadState> = std::fs::read(&state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let st = match prior {
            Some(st)
                if round == 0 && st.bucket == bucket && st.key == key && st.sync_id == sync =>
            {
                eprintln!(
                    "godwit: resuming upload to {what}: {} parts already uploaded",
                    st.parts.len()
                );
                st
            }
            _ => {
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
                save(&state_file, &st)?;
                st
            }
        };
        let mut w = PartWriter {
            s3: &s3,
            path: path.clone(),
            handle,
            buf: Vec::with_capacity(st.part_size),
            st,
            state_file: state_file.clone(),
            next: 0,
            reused: 0,
            diverged: false,
            vanished: false,
        };
        let r = write_hashed(src, format, &mut w, None, &what);
        let r = r.and_then(|v| {
            w.flush_part()
                .map_err(|e| Error::io(&what, "upload", e))
                .map(|()| v)
        });
        if w.vanished && !w.st.parts.is_empty() && round == 0 {
            let _ = std::fs::remove_file(&state_file);
            eprintln!(
                "godwit: {what}: the interrupted upload {} no longer exists in the bucket; starting over",
                w.st.upload_id
            );
            continue;
        }
        if w.diverged {
            let _ = handle.block_on(s3.abort_multipart(&w.path, &w.st.upload_id));
            let _ = std::fs::remove_file(&state_file);
            eprintln!(
                "godwit: {what}: the regenerated output differs from the interrupted upload; starting over"
            );
            continue;
        }
        let (stats, sha) = r?;
        if w.next < w.st.parts.len() {
            // The interrupted upload had more parts than this stream: it was something else.
            let _ = handle.block_on(s3.abort_multipart(&w.path, &w.st.upload_id));
            let _ = std::fs::remove_file(&state_file);
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
                let _ = std::fs::remove_file(&state_file);
                eprintln!(
                    "godwit: {what}: the interrupted upload {} no longer exists in the bucket; starting over",
                    w.st.upload_id
                );
                continue;
            }
            Err(e) => {
                return Err(Error::S3 {
                    what: what.clone(),
                    source: e,
                });
            }
        }
        let _ = std::fs::remove_file(&state_file);
        if w.reused > 0 {
            eprintln!(
                "godwit: {what}: {} parts reused from the interrupted upload",
                w.reused
            );
        }
        return Ok((stats, sha));
    }
    Err(Error::Usage(format!(
        "{what}: could not complete the upload"
    )))
}
