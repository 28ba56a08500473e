//! Files on the Hyper-V host read over WinRM, as a [`godwit_disk::storage::Locator`], so the
//! disk crate parses the frozen VHD/VHDX (and follows its parent chain) remotely:
//! `Disk::open_with(&locator, r"C:\VMs\web\web.vhdx", FormatHint::Auto)`.
//!
//! This is the FIRST data path (see docs/hyperv.md): each read is one PowerShell command
//! (`scripts/read-range.ps1`) whose stdout is `<sha256 hex>:<base64>`, checked here. It needs
//! nothing but WinRM, but every byte travels base64 inside SOAP envelopes, so it is slow; the
//! design's host-push ingest (the host pushes ranges to the connector's HTTPS endpoint) is
//! meant to replace it for bulk data. Small reads (headers, BAT pages) go through a block
//! cache so parsing a VHDX costs a handful of commands.

use crate::client::{Shell, WinRm};
use crate::error::{Error, Result};
use crate::powershell::with_args;
use crate::transport::Transport;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use godwit_disk::storage::{Locator, Opened, ReadAt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const READ_RANGE_SCRIPT: &str = include_str!("../scripts/read-range.ps1");
pub const FILE_INFO_SCRIPT: &str = include_str!("../scripts/file-info.ps1");

/// Largest range one command reads (its output is ~4/3 of this, over several Receives).
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;
/// Small reads are served from aligned blocks of this size.
pub const CACHE_BLOCK: u64 = 1024 * 1024;
/// Reads smaller than this (headers, BAT pages, bitmaps) go through the block cache; larger
/// ones (payload, e.g. RCT's 64 KiB changed blocks) are read as asked.
pub const CACHED_READ_BELOW: u64 = 64 * 1024;
/// Cached blocks kept (per locator).
pub const CACHE_BLOCKS: usize = 16;

/// Parse read-range.ps1's stdout: `<64 hex>:<base64>`, checked against the digest and length.
pub fn parse_range_output(out: &[u8], want_len: usize) -> std::result::Result<Vec<u8>, String> {
    let text = std::str::from_utf8(out).map_err(|_| "output is not UTF-8".to_string())?;
    let text = text.trim_start_matches('\u{feff}').trim();
    let (hex_digest, b64) = text
        .split_once(':')
        .ok_or_else(|| "output lacks the `sha256:` prefix".to_string())?;
    let digest = hex::decode(hex_digest)
        .ok()
        .filter(|d| d.len() == 32)
        .ok_or_else(|| {
            format!(
                "bad digest {:?}",
                hex_digest.chars().take(80).collect::<String>()
            )
        })?;
    if b64.len() / 4 * 3 > want_len + 3 {
        return Err(format!(
            "{} base64 characters for a {want_len}-byte range",
            b64.len()
        ));
    }
    let data = B64
        .decode(b64)
        .map_err(|e| format!("data is not base64: {e}"))?;
    if data.len() != want_len {
        return Err(format!("{} bytes for a {want_len}-byte range", data.len()));
    }
    if Sha256::digest(&data).as_slice() != digest.as_slice() {
        return Err("SHA-256 of the data does not match the host's".into());
    }
    Ok(data)
}

/// The encoder matching [`parse_range_output`] (the simulator's side, and tests).
pub fn encode_range_output(data: &[u8]) -> String {
    format!("{}:{}", hex::encode(Sha256::digest(data)), B64.encode(data))
}

/// Windows path arithmetic: `name` against the directory of `relative_to` (`\` or `/`),
/// `.` and `..` folded. Absolute names (`C:\...`, `\\server\...`) are kept.
pub fn resolve_windows_path(name: &str, relative_to: Option<&str>) -> String {
    let name = name.replace('/', "\\");
    let absolute = name.starts_with("\\\\") || name.as_bytes().get(1) == Some(&b':');
    let joined = match relative_to {
        Some(base) if !absolute => {
            let base = base.replace('/', "\\");
            match base.rsplit_once('\\') {
                Some((dir, _)) => format!("{dir}\\{name}"),
                None => name,
            }
        }
        _ => name,
    };
    let unc = joined.starts_with("\\\\");
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('\\') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.len() > 1 {
                    parts.pop();
                }
            }
            p => parts.push(p),
        }
    }
    let body = parts.join("\\");
    if unc { format!("\\\\{body}") } else { body }
}

/// What file-info.ps1 says of a host file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub length: u64,
    /// Last write, UTC, .NET ticks (100 ns since 0001-01-01); 0 when the host did not say.
    pub last_write: u64,
}

struct Cache {
    blocks: HashMap<(String, u64), Arc<Vec<u8>>>,
    order: Vec<(String, u64)>,
}

struct Inner<T: Transport + 'static> {
    shell: Mutex<Shell<'static, T>>,
    cache: Mutex<Cache>,
    host: String,
    bytes_read: AtomicU64,
    commands: AtomicU64,
}

/// Opens files on one Hyper-V host.
pub struct HostFileLocator<T: Transport + 'static> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport + 'static> Clone for HostFileLocator<T> {
    fn clone(&self) -> Self {
        HostFileLocator {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Transport + Send + Sync + 'static> HostFileLocator<T> {
    /// A locator with its own shell on `client`.
    pub fn new(client: &Arc<WinRm<T>>) -> Result<Self> {
        let shell = client.open_shared_shell()?;
        Ok(HostFileLocator {
            inner: Arc::new(Inner {
                shell: Mutex::new(shell),
                cache: Mutex::new(Cache {
                    blocks: HashMap::new(),
                    order: Vec::new(),
                }),
                host: client.transport().authority(),
                bytes_read: AtomicU64::new(0),
                commands: AtomicU64::new(0),
            }),
        })
    }

    /// Bytes fetched from the host so far (all files).
    pub fn bytes_read(&self) -> u64 {
        self.inner.bytes_read.load(Ordering::Relaxed)
    }

    /// PowerShell commands run so far.
    pub fn commands(&self) -> u64 {
        self.inner.commands.load(Ordering::Relaxed)
    }
}

impl<T: Transport + 'static> Inner<T> {
    fn run(&self, name: &str, script: &str) -> Result<Vec<u8>> {
        self.commands.fetch_add(1, Ordering::Relaxed);
        let shell = self.shell.lock().unwrap_or_else(|e| e.into_inner());
        let o = shell.run_ps(script)?;
        if o.exit_code != 0 {
            return Err(Error::Script {
                host: self.host.clone(),
                script: name.to_string(),
                exit_code: o.exit_code,
                message: crate::clixml::decode_stderr(&o.stderr)
                    .unwrap_or_else(|e| e.to_string())
                    .trim()
                    .to_string(),
            });
        }
        Ok(o.stdout)
    }

    fn file_info(&self, path: &str) -> Result<FileInfo> {
        let args = serde_json::json!({ "Path": path });
        let out = self.run("file-info.ps1", &with_args(FILE_INFO_SCRIPT, &args))?;
        let v: serde_json::Value = serde_json::from_slice(&out).map_err(|e| Error::BadOutput {
            host: self.host.clone(),
            script: "file-info.ps1".into(),
            detail: e.to_string(),
        })?;
        let length = v
            .get("Length")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::BadOutput {
                host: self.host.clone(),
                script: "file-info.ps1".into(),
                detail: format!("no Length in {v}"),
            })?;
        let last_write = v
            .get("LastWriteTicks")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        Ok(FileInfo { length, last_write })
    }

    fn read_remote(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let want = usize::try_from(len).map_err(|_| Error::Usage("range too large".into()))?;
        let args = serde_json::json!({ "Path": path, "Offset": offset, "Length": len });
        let out = self.run("read-range.ps1", &with_args(READ_RANGE_SCRIPT, &args))?;
        let data = parse_range_output(&out, want).map_err(|detail| Error::BadOutput {
            host: self.host.clone(),
            script: format!("read-range.ps1 ({path} at {offset}+{len})"),
            detail,
        })?;
        self.bytes_read.fetch_add(len, Ordering::Relaxed);
        Ok(data)
    }

    fn cached_block(&self, path: &str, index: u64, file_len: u64) -> Result<Arc<Vec<u8>>> {
        let key = (path.to_string(), index);
        if let Some(b) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocks
            .get(&key)
        {
            return Ok(b.clone());
        }
        let start = index * CACHE_BLOCK;
        let len = CACHE_BLOCK.min(file_len.saturating_sub(start));
        let block = Arc::new(self.read_remote(path, start, len)?);
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.order.len() >= CACHE_BLOCKS {
            let old = c.order.remove(0);
            c.blocks.remove(&old);
        }
        c.order.push(key.clone());
        c.blocks.insert(key, block.clone());
        Ok(block)
    }
}

struct HostFile<T: Transport + 'static> {
    inner: Arc<Inner<T>>,
    path: String,
    len: u64,
}

fn io_err(e: Error) -> io::Error {
    io::Error::other(e)
}

impl<T: Transport + Send + Sync + 'static> ReadAt for HostFile<T> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read past the end of {} ({} bytes)", self.path, self.len),
                )
            })?;
        if (buf.len() as u64) < CACHED_READ_BELOW {
            let mut pos = offset;
            while pos < end {
                let index = pos / CACHE_BLOCK;
                let block = self
                    .inner
                    .cached_block(&self.path, index, self.len)
                    .map_err(io_err)?;
                let in_block =
                    usize::try_from(pos - index * CACHE_BLOCK).map_err(io::Error::other)?;
                let take =
                    usize::try_from((end - pos).min(CACHE_BLOCK - (pos - index * CACHE_BLOCK)))
                        .map_err(io::Error::other)?;
                let at = usize::try_from(pos - offset).map_err(io::Error::other)?;
                let src = block.get(in_block..in_block + take).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "short cached block")
                })?;
                buf[at..at + take].copy_from_slice(src);
                pos += take as u64;
            }
            return Ok(());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let take =
                (buf.len() - done).min(usize::try_from(MAX_READ_BYTES).unwrap_or(usize::MAX));
            let data = self
                .inner
                .read_remote(&self.path, offset + done as u64, take as u64)
                .map_err(io_err)?;
            buf[done..done + take].copy_from_slice(&data);
            done += take;
        }
        Ok(())
    }
}

impl<T: Transport + Send + Sync + 'static> HostFileLocator<T> {
    /// Open `name` (against `relative_to`'s directory) and say what file-info.ps1 said of it.
    pub fn open_with_info(
        &self,
        name: &str,
        relative_to: Option<&str>,
    ) -> io::Result<(Opened, FileInfo)> {
        let path = resolve_windows_path(name, relative_to);
        let info = self
            .inner
            .file_info(&path)
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        let opened = Opened {
            name: path.clone(),
            file: Arc::new(HostFile {
                inner: self.inner.clone(),
                path,
                len: info.length,
            }),
        };
        Ok((opened, info))
    }
}

impl<T: Transport + Send + Sync + 'static> Locator for HostFileLocator<T> {
    fn open(&self, name: &str, relative_to: Option<&str>) -> io::Result<Opened> {
        self.open_with_info(name, relative_to).map(|(o, _)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_output_round_trip_and_checks() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let out = encode_range_output(&data);
        assert_eq!(
            parse_range_output(out.as_bytes(), data.len()).unwrap(),
            data
        );
        assert!(parse_range_output(out.as_bytes(), 10).is_err());
        let mut bad = out.clone().into_bytes();
        let last = bad.len() - 5;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let e = parse_range_output(&bad, data.len()).unwrap_err();
        assert!(e.contains("SHA-256") || e.contains("base64"), "{e}");
        assert!(parse_range_output(b"nope", 1).is_err());
        assert!(
            parse_range_output(b"zz:AAAA", 3)
                .unwrap_err()
                .contains("digest")
        );
        assert!(parse_range_output(&[0xff, 0xfe], 1).is_err());
        assert_eq!(
            parse_range_output(encode_range_output(&[]).as_bytes(), 0).unwrap(),
            b""
        );
    }

    #[test]
    fn windows_paths_resolve() {
        let base = Some(r"C:\VMs\gen1\gen1_1234.avhd");
        assert_eq!(
            resolve_windows_path("gen1.vhd", base),
            r"C:\VMs\gen1\gen1.vhd"
        );
        assert_eq!(
            resolve_windows_path(r".\gen1.vhd", base),
            r"C:\VMs\gen1\gen1.vhd"
        );
        assert_eq!(
            resolve_windows_path(r"..\base\b.vhdx", base),
            r"C:\VMs\base\b.vhdx"
        );
        assert_eq!(resolve_windows_path(r"D:\x\y.vhdx", base), r"D:\x\y.vhdx");
        assert_eq!(resolve_windows_path(r"C:\a\..\..\..\b", None), r"C:\b");
        assert_eq!(
            resolve_windows_path(r"\\srv\share\a.vhdx", base),
            r"\\srv\share\a.vhdx"
        );
        assert_eq!(
            resolve_windows_path("C:/VMs/a.vhdx", None),
            r"C:\VMs\a.vhdx"
        );
    }
}
