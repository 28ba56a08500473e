//! The connector's side of a pushed cycle: which FILE byte ranges hold the data a disk's
//! transfer will read ([`file_ranges`]), a [`Locator`] that serves reads from the spool and
//! falls back to WinRM for anything not pushed ([`PushLocator`]; headers, BATs and bitmaps
//! stay on WinRM), and running `scripts/push-ranges.ps1` on the host for the ranges the spool
//! lacks ([`push_missing`]).

use super::ranges::RangeSet;
use super::registry::{IngestRegistry, SessionFile};
use super::spool::SpoolFile;
use crate::client::Shell;
use crate::error::{Error, Result};
use crate::hostfile::HostFileLocator;
use crate::powershell::with_args;
use crate::transport::Transport;
use crate::trust::Fingerprint;
use godwit_disk::storage::{Locator, Opened, ReadAt};
use godwit_disk::{BlockSource, Disk, RunState};
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const PUSH_SCRIPT: &str = include_str!("../../scripts/push-ranges.ps1");

/// Ranges of one file closer than this are pushed as one (fewer requests; the bytes between
/// are usually a VHD sector bitmap or a VHDX block the BAT lists next).
pub const COALESCE_GAP: u64 = 64 * 1024;
/// Bytes per PUT the uploader sends (the endpoint takes up to 8 MiB).
pub const PUSH_CHUNK: u64 = 4 * 1024 * 1024;
/// Ranges and bytes per push-ranges.ps1 command (bounds the script size and keeps each
/// command well inside the WinRM receive limit of 30 minutes).
pub const MAX_RANGES_PER_COMMAND: usize = 1000;
pub const MAX_BYTES_PER_COMMAND: u64 = 8 << 30;
/// Virtual bytes mapped per step when working out file ranges.
const MAP_STEP: u64 = 1 << 30;

/// How a cycle reaches its ingest endpoint.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// The endpoint's sessions (behind `godwit replicate`'s own listener or `godwit serve`'s
    /// HTTPS port).
    pub sessions: Arc<IngestRegistry>,
    /// The endpoint's certificate, which the uploader pins.
    pub pin: Fingerprint,
    /// What the hosts connect to, e.g. `https://10.0.0.5:443` (no path).
    pub url: String,
    /// Where pushed bytes are spooled (kept after a failure, so a rerun resumes).
    pub spool_dir: PathBuf,
    /// The transfer's chunk size: changed ranges are widened to it (the transfer reads whole
    /// chunks).
    pub align: u64,
}

/// Check an ingest URL (`https://HOST[:PORT]`, no path: the hosts push over HTTPS only) and
/// return it without a trailing `/`. `what` names the option in the error.
pub fn check_ingest_url(url: &str, what: &str) -> Result<String> {
    let u = url.trim_end_matches('/');
    let authority = u.strip_prefix("https://").unwrap_or("");
    let port_ok = |p: &str| p.parse::<u16>().is_ok_and(|p| p > 0);
    let shape_ok = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => {
                !h.is_empty() && (tail.is_empty() || tail.strip_prefix(':').is_some_and(port_ok))
            }
            None => false,
        }
    } else {
        match authority.split_once(':') {
            None => !authority.is_empty(),
            Some((h, p)) => !h.is_empty() && port_ok(p),
        }
    };
    let odd = authority.bytes().any(|b| {
        matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\')
            || b.is_ascii_whitespace()
            || b.is_ascii_control()
    });
    if !shape_ok || odd {
        return Err(Error::Usage(format!(
            "{what} {url:?} is not https://HOST[:PORT] (the host pushes over HTTPS only)"
        )));
    }
    Ok(u.to_string())
}

/// The virtual ranges the transfer reads: `virtual_ranges` (whole disk when `None`) widened
/// to `align`.
fn wanted(disk: &Disk, virtual_ranges: Option<&[Range<u64>]>, align: u64) -> RangeSet {
    let size = disk.virtual_size();
    let align = align.max(1);
    let mut wanted = RangeSet::new();
    match virtual_ranges {
        None => wanted.insert(0, size),
        Some(rs) => {
            for r in rs {
                let s = r.start / align * align;
                let e = r.end.div_ceil(align).saturating_mul(align).min(size);
                wanted.insert(s, e);
            }
        }
    }
    wanted
}

/// The per-block metadata (VHD sector bitmaps) that mapping `virtual_ranges` reads, per file
/// name, for every layer of the chain (an over-approximation: a layer is only consulted where
/// the ones above it do not hold the data). Pushed before [`file_ranges`] maps the disk, so
/// mapping reads them from the spool instead of one WinRM command per block.
pub fn metadata_ranges(
    disk: &Disk,
    virtual_ranges: Option<&[Range<u64>]>,
    align: u64,
) -> Result<BTreeMap<String, RangeSet>> {
    let wanted = wanted(disk, virtual_ranges, align);
    let mut out: BTreeMap<String, RangeSet> = BTreeMap::new();
    for l in disk.layers() {
        let lsize = l.info().virtual_size;
        for (start, end) in wanted.iter() {
            let end = end.min(lsize);
            if start >= end {
                continue;
            }
            for (a, b) in l.map_metadata(start, end - start)? {
                out.entry(l.info().file.clone()).or_default().insert(a, b);
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|(k, v)| (k, v.coalesce(COALESCE_GAP)))
        .collect())
}

/// The file ranges holding the data of `virtual_ranges` of `disk` (whole disk when `None`),
/// widened to `align` first, per file name (the files of the parent chain included).
pub fn file_ranges(
    disk: &Disk,
    virtual_ranges: Option<&[Range<u64>]>,
    align: u64,
) -> Result<BTreeMap<String, RangeSet>> {
    let wanted = wanted(disk, virtual_ranges, align);
    let mut out: BTreeMap<String, RangeSet> = BTreeMap::new();
    for (start, end) in wanted.iter() {
        let mut pos = start;
        while pos < end {
            let len = (end - pos).min(MAP_STEP);
            for (run, layer) in disk.resolve(pos, len)? {
                if run.state != RunState::Data {
                    continue;
                }
                let l = &disk.layers()[layer];
                let Some(pieces) = l.stored(run.offset, run.len)? else {
                    continue;
                };
                let set = out.entry(l.info().file.clone()).or_default();
                for p in pieces {
                    set.insert(p.file_offset, p.file_offset + p.len);
                }
            }
            pos += len;
        }
    }
    Ok(out
        .into_iter()
        .map(|(k, v)| (k, v.coalesce(COALESCE_GAP)))
        .collect())
}

fn piece(buf: &mut [u8], base: u64, a: u64, b: u64) -> io::Result<&mut [u8]> {
    let s = usize::try_from(a - base).map_err(io::Error::other)?;
    let e = usize::try_from(b - base).map_err(io::Error::other)?;
    Ok(&mut buf[s..e])
}

/// Reads of one host file: from the spool where it holds them, else over WinRM.
struct SpooledFile {
    spool: Arc<SpoolFile>,
    remote: Arc<dyn ReadAt>,
    from_spool: Arc<AtomicU64>,
}

impl ReadAt for SpooledFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.spool.len)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.spool.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read past the end of {}", self.spool.name),
                )
            })?;
        let held = self.spool.received();
        let gaps = held.gaps(offset, end);
        let mut pos = offset;
        for (a, b) in gaps.iter().copied().chain([(end, end)]) {
            if a > pos {
                self.spool.read_at(piece(buf, offset, pos, a)?, pos)?;
                self.from_spool.fetch_add(a - pos, Ordering::Relaxed);
            }
            if b > a {
                self.remote.read_exact_at(piece(buf, offset, a, b)?, a)?;
            }
            pos = b;
        }
        Ok(())
    }
}

/// A [`Locator`] over a [`HostFileLocator`] whose files read from their spools first.
pub struct PushLocator<T: Transport + 'static> {
    host: HostFileLocator<T>,
    spool_dir: PathBuf,
    spools: Mutex<BTreeMap<String, Arc<SpoolFile>>>,
    from_spool: Arc<AtomicU64>,
}

impl<T: Transport + Send + Sync + 'static> PushLocator<T> {
    pub fn new(host: HostFileLocator<T>, spool_dir: PathBuf) -> Self {
        PushLocator {
            host,
            spool_dir,
            spools: Mutex::new(BTreeMap::new()),
            from_spool: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The WinRM side (its byte and command counters).
    pub fn host(&self) -> &HostFileLocator<T> {
        &self.host
    }

    /// The spool of a file opened through this locator.
    pub fn spool(&self, name: &str) -> Option<Arc<SpoolFile>> {
        self.spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every spool opened so far.
    pub fn spools(&self) -> Vec<Arc<SpoolFile>> {
        self.spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Bytes served from spools.
    pub fn bytes_from_spool(&self) -> u64 {
        self.from_spool.load(Ordering::Relaxed)
    }
}

impl<T: Transport + Send + Sync + 'static> Locator for PushLocator<T> {
    fn open(&self, name: &str, relative_to: Option<&str>) -> io::Result<Opened> {
        let (opened, info) = self.host.open_with_info(name, relative_to)?;
        let spool = {
            let mut spools = self.spools.lock().unwrap_or_else(|e| e.into_inner());
            match spools.get(&opened.name) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(SpoolFile::open(
                        &self.spool_dir,
                        &opened.name,
                        info.length,
                        &info.last_write.to_string(),
                    )?);
                    spools.insert(opened.name.clone(), s.clone());
                    s
                }
            }
        };
        Ok(Opened {
            name: opened.name,
            file: Arc::new(SpooledFile {
                spool,
                remote: opened.file,
                from_spool: self.from_spool.clone(),
            }),
        })
    }
}

/// What pushing one disk's ranges took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    /// Bytes the transfer needs from the host's files (data ranges, coalesced).
    pub needed_bytes: u64,
    /// Of those, already in the spool from an earlier (interrupted) run.
    pub resumed_bytes: u64,
    /// Bytes the host pushed and the endpoint stored in this run.
    pub pushed_bytes: u64,
    pub pushes: u64,
    /// push-ranges.ps1 commands run.
    pub commands: u64,
    /// Asked for but not pushed (read over WinRM instead).
    pub missing_bytes: u64,
    /// Bytes the disk reads took from spools (the rest came over WinRM).
    pub served_from_spool: u64,
}

impl PushReport {
    /// Add another round's figures.
    pub fn add(&mut self, r: &PushReport) {
        self.needed_bytes += r.needed_bytes;
        self.resumed_bytes += r.resumed_bytes;
        self.pushed_bytes += r.pushed_bytes;
        self.pushes += r.pushes;
        self.commands += r.commands;
        self.missing_bytes += r.missing_bytes;
        self.served_from_spool += r.served_from_spool;
    }
}

/// Split the ranges of `files` (index, range) into batches of at most `max_ranges` ranges and
/// `max_bytes` bytes (a range larger than `max_bytes` is cut).
pub fn batches(
    files: &[&RangeSet],
    max_ranges: usize,
    max_bytes: u64,
) -> Vec<Vec<(usize, (u64, u64))>> {
    let max_bytes = max_bytes.max(1);
    let mut out: Vec<Vec<(usize, (u64, u64))>> = Vec::new();
    let mut cur: Vec<(usize, (u64, u64))> = Vec::new();
    let mut cur_bytes = 0u64;
    for (i, set) in files.iter().enumerate() {
        for (a, b) in set.iter() {
            let mut s = a;
            while s < b {
                let e = b.min(s.saturating_add(max_bytes));
                if !cur.is_empty() && (cur.len() >= max_ranges || cur_bytes + (e - s) > max_bytes) {
                    out.push(std::mem::take(&mut cur));
                    cur_bytes = 0;
                }
                cur.push((i, (s, e)));
                cur_bytes += e - s;
                s = e;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Ask the host to push what the spools of `needed` lack, and wait for it.
pub fn push_missing<T: Transport + Send + Sync + 'static>(
    shell: &Shell<'_, T>,
    host: &str,
    cfg: &IngestConfig,
    locator: &PushLocator<T>,
    needed: &BTreeMap<String, RangeSet>,
) -> Result<PushReport> {
    const SCRIPT: &str = "push-ranges.ps1";
    let mut report = PushReport::default();
    let mut files = Vec::new();
    for (name, want) in needed {
        let spool = locator.spool(name).ok_or_else(|| {
            Error::Usage(format!(
                "{host}: {name} was not opened through the push locator"
            ))
        })?;
        let missing = want.subtract(&spool.received());
        report.needed_bytes += want.total();
        report.resumed_bytes += want.total() - missing.total();
        if !missing.is_empty() {
            files.push((name.clone(), spool, missing));
        }
    }
    let sets: Vec<&RangeSet> = files.iter().map(|(_, _, m)| m).collect();
    let batches = batches(&sets, MAX_RANGES_PER_COMMAND, MAX_BYTES_PER_COMMAND);
    for batch in batches {
        let mut per_file: BTreeMap<usize, RangeSet> = BTreeMap::new();
        for (i, (a, b)) in &batch {
            per_file.entry(*i).or_default().insert(*a, *b);
        }
        let session_files: Vec<SessionFile> = per_file
            .iter()
            .map(|(i, asked)| SessionFile {
                asked: asked.clone(),
                spool: files[*i].1.clone(),
            })
            .collect();
        let ticket = cfg.sessions.open_session(session_files);
        let args = serde_json::json!({
            "Url": format!("{}/ingest/v1/{}", cfg.url.trim_end_matches('/'), ticket.id),
            "Token": ticket.token,
            "Pin": hex::encode(cfg.pin.0),
            "Chunk": PUSH_CHUNK,
            "Retries": 5,
            "Files": per_file.iter().enumerate().map(|(id, (i, asked))| serde_json::json!({
                "Id": id,
                "Path": files[*i].0,
                "Ranges": asked.iter().flat_map(|(a, b)| [a, b - a]).collect::<Vec<u64>>(),
            })).collect::<Vec<_>>(),
        });
        report.commands += 1;
        let ran = shell.run_ps_json(SCRIPT, &with_args(PUSH_SCRIPT, &args));
        let stats = cfg.sessions.close_session(&ticket.id).unwrap_or_default();
        report.pushed_bytes += stats.bytes;
        report.pushes += stats.pushes;
        let out = ran?;
        tracing::info!(host, pushes = stats.pushes, bytes = stats.bytes, uploader = %out, "host pushed ranges");
    }
    for (name, spool, missing) in &files {
        let left = missing.subtract(&spool.received()).total();
        if left > 0 {
            tracing::warn!(host, file = %name, bytes = left, "ranges not pushed; reading them over WinRM");
        }
        report.missing_bytes += left;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_urls_are_https_host_and_port_only() {
        for (u, want) in [
            ("https://10.0.0.5", "https://10.0.0.5"),
            (
                "https://godwit.example:8443/",
                "https://godwit.example:8443",
            ),
            ("https://[fd00::5]:443", "https://[fd00::5]:443"),
            ("https://[fd00::5]", "https://[fd00::5]"),
        ] {
            assert_eq!(check_ingest_url(u, "--ingest-url").unwrap(), want);
        }
        for bad in [
            "http://10.0.0.5",
            "https://",
            "https://h/x",
            "https://h:0",
            "https://h:99999",
            "https://h:",
            "https://u@h",
            "https://h?x",
            "https://fd00::5",
            "10.0.0.5:443",
        ] {
            let e = check_ingest_url(bad, "--ingest-url")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--ingest-url") && e.contains("not https://HOST[:PORT]"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn batches_bound_ranges_and_bytes_and_cut_large_ranges() {
        let a = RangeSet::from_ranges([(0, 10), (20, 25), (30, 31)]);
        let b = RangeSet::from_ranges([(100, 135)]);
        let got = batches(&[&a, &b], 2, 16);
        assert_eq!(
            got,
            vec![
                vec![(0, (0, 10)), (0, (20, 25))],
                vec![(0, (30, 31))],
                vec![(1, (100, 116))],
                vec![(1, (116, 132))],
                vec![(1, (132, 135))],
            ]
        );
        assert!(batches(&[&RangeSet::new()], 5, 5).is_empty());
        let total: u64 = got.iter().flatten().map(|(_, (s, e))| e - s).sum();
        assert_eq!(total, a.total() + b.total());
    }
}
