//! Exports run by the service: the newest sync of a job's disk, read from the staging target
//! (staging server or S3 store), written as raw / VMDK / VHDX / VHD to a file on the appliance
//! or to `s3://BUCKET/KEY` (multipart upload). Two hashes come out, and they differ for every
//! format but raw:
//! - the SHA-256 of the disk's raw CONTENT (checked against the one recorded at replication;
//!   equals `qemu-img convert -O raw` of the source piped through `sha256sum`), and
//! - the SHA-256 of the exported FILE's bytes (what `sha256sum` of the download prints).

use super::staging_target::{S3Access, open_s3_store};
use super::store::StagingRecord;
use godwit_disk::write::OutputFormat;
use godwit_transfer::export::{IndexSource, check_sha, load_index, write_hashed};
use godwit_transfer::replicate::Connect;
use godwit_transfer::store::ChunkStore;
use godwit_transfer::target::Target;
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::sync::Arc;
use tokio::runtime::Handle;

/// Parts of an S3 upload (all but the last); S3 wants ≥ 5 MiB, 10 000 parts at most.
const PART_SIZE: usize = 8 << 20;
const MAX_PARTS: u64 = 9_000;

/// What an export produced.
pub struct Exported {
    pub content_sha256: String,
    pub file_sha256: String,
    pub bytes_written: u64,
}

/// Export disk `disk` of `vm` (its newest sync) in `format` to `dest`. Blocking.
pub fn run(
    staging: &StagingRecord,
    vm: &str,
    disk: u32,
    format: &str,
    dest: &str,
    handle: &Handle,
) -> Result<Exported, String> {
    let format = OutputFormat::parse(format, None).map_err(|e| e.to_string())?;
    let store: Arc<dyn ChunkStore> = match staging {
        StagingRecord::Server {
            address,
            fingerprint,
            token,
        } => {
            let t = Target::parse(
                &format!("staging://{address}"),
                Some(fingerprint),
                Some(token.clone()),
            )
            .map_err(|e| e.to_string())?;
            handle
                .block_on(t.connect())
                .map_err(|e| format!("staging server {address}: {e}"))?
        }
        StagingRecord::S3 { .. } => handle.block_on(open_s3_store(staging))?,
    };
    let index = handle
        .block_on(load_index(&*store, vm, disk, None))
        .map_err(|e| e.to_string())?;
    let src = IndexSource::new(index, store, handle.clone());
    let (written, content, file) = if let Some(rest) = dest.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| format!("{dest}: expected s3://BUCKET/KEY"))?;
        let s3 = match S3Access::of(staging) {
            Some((access, _, _)) => access.client(bucket, true)?,
            // A staging server: the service's own environment (AWS_*) says how to reach S3.
            None => {
                godwit_transfer::store::s3::s3_from_env(bucket, true).map_err(|e| e.to_string())?
            }
        };
        let part_size =
            usize::try_from((src.index.disk_size / MAX_PARTS + 1).next_multiple_of(1 << 20))
                .unwrap_or(PART_SIZE)
                .max(PART_SIZE);
        to_s3(&src, format, &s3, key, part_size, handle, dest)?
    } else {
        to_file(&src, format, dest)?
    };
    check_sha(&src.index, &content).map_err(|e| e.to_string())?;
    Ok(Exported {
        content_sha256: hex::encode(content),
        file_sha256: hex::encode(file),
        bytes_written: written,
    })
}

/// Write a local file (raw is sparse), then hash the file as written.
fn to_file(
    src: &IndexSource,
    format: OutputFormat,
    out: &str,
) -> Result<(u64, [u8; 32], [u8; 32]), String> {
    let io = |op: &str, e: std::io::Error| format!("{out}: {op}: {e}");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .read(true)
        .open(out)
        .map_err(|e| io("create", e))?;
    let mut w =
        std::io::BufWriter::with_capacity(1 << 20, f.try_clone().map_err(|e| io("open", e))?);
    let sparse = (format == OutputFormat::Raw).then_some(&f);
    let (stats, content) =
        write_hashed(src, format, &mut w, sparse, out).map_err(|e| e.to_string())?;
    w.flush().map_err(|e| io("write", e))?;
    drop(w);
    f.sync_all().map_err(|e| io("fsync", e))?;
    drop(f);
    Ok((stats.written_bytes, content, sha256_of_file(out)?))
}

/// SHA-256 of a file's bytes, read back from disk.
pub fn sha256_of_file(path: &str) -> Result<[u8; 32], String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{path}: open: {e}"))?;
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

/// The upload: parts of `part_size` (S3 SHA-256 checksum on each), the whole stream hashed
/// on its way out. An upload that fails is aborted.
struct PartUpload<'a> {
    s3: &'a AmazonS3,
    path: ObjPath,
    upload_id: String,
    handle: &'a Handle,
    part_size: usize,
    buf: Vec<u8>,
    parts: Vec<PartId>,
    file_hash: Sha256,
    written: u64,
}

impl PartUpload<'_> {
    fn send_part(&mut self) -> std::io::Result<()> {
        let n = self.parts.len();
        let data = object_store::PutPayload::from(std::mem::take(&mut self.buf));
        let id = self
            .handle
            .block_on(self.s3.put_part(&self.path, &self.upload_id, n, data))
            .map_err(|e| std::io::Error::other(format!("uploading part {n}: {e}")))?;
        self.parts.push(id);
        self.buf = Vec::with_capacity(self.part_size);
        Ok(())
    }
}

impl Write for PartUpload<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = self.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.file_hash.update(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == self.part_size {
            self.send_part()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn to_s3(
    src: &IndexSource,
    format: OutputFormat,
    s3: &AmazonS3,
    key: &str,
    part_size: usize,
    handle: &Handle,
    what: &str,
) -> Result<(u64, [u8; 32], [u8; 32]), String> {
    let path = ObjPath::from(key);
    let upload_id = handle
        .block_on(s3.create_multipart(&path))
        .map_err(|e| format!("{what}: starting the upload: {e}"))?;
    let mut up = PartUpload {
        s3,
        path: path.clone(),
        upload_id: upload_id.clone(),
        handle,
        part_size,
        buf: Vec::with_capacity(part_size),
        parts: Vec::new(),
        file_hash: Sha256::new(),
        written: 0,
    };
    let r = write_hashed(src, format, &mut up, None, what)
        .map_err(|e| e.to_string())
        .and_then(|(_, content)| {
            if !up.buf.is_empty() || up.parts.is_empty() {
                up.send_part().map_err(|e| format!("{what}: {e}"))?;
            }
            let parts = std::mem::take(&mut up.parts);
            handle
                .block_on(s3.complete_multipart(&path, &upload_id, parts))
                .map_err(|e| format!("{what}: completing the upload: {e}"))?;
            Ok(content)
        });
    match r {
        Ok(content) => Ok((up.written, content, up.file_hash.finalize().into())),
        Err(e) => {
            let _ = handle.block_on(s3.abort_multipart(&path, &upload_id));
            Err(e)
        }
    }
}
