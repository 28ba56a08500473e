//! Datastore files over HTTPS `/folder` with Range reads, as a [`godwit_disk::storage::Locator`]
//! so the disk crate parses descriptors and reads extents remotely:
//! `Disk::open_with(&locator, "[datastore] vm/disk.vmdk", FormatHint::Auto)`.

use crate::error::{Error, Result};
use crate::moref::MoRef;
use crate::paths::InventoryTree;
use crate::session::Session;
use crate::transport::Endpoint;
use godwit_disk::storage::{Locator, Opened, ReadAt};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest single Range GET (bounded memory per request).
pub const MAX_RANGE_BYTES: u64 = 8 * 1024 * 1024;

/// `[datastore] path/in/datastore.vmdk` split at the first `"] "`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatastorePath {
    pub datastore: String,
    pub path: String,
}

impl DatastorePath {
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix('[')?;
        let (ds, path) = rest.split_once("] ")?;
        if ds.is_empty() || path.is_empty() {
            return None;
        }
        Some(DatastorePath {
            datastore: ds.to_string(),
            path: path.to_string(),
        })
    }

    /// A sibling file in the same directory (relative names in descriptors).
    pub fn sibling(&self, name: &str) -> DatastorePath {
        let dir = self.path.rsplit_once('/').map(|(d, _)| d);
        DatastorePath {
            datastore: self.datastore.clone(),
            path: match dir {
                Some(d) => format!("{d}/{name}"),
                None => name.to_string(),
            },
        }
    }
}

impl std::fmt::Display for DatastorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.datastore, self.path)
    }
}

/// Percent-encode for a URL path (`/` kept) or a query value (`/` encoded).
pub fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One datastore: its MoRef, name, the inventory path of its datacenter and `summary.type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatastoreInfo {
    pub moref: MoRef,
    pub name: String,
    /// `dcPath`: the datacenter's inventory path (`F0/DC1`), see [`crate::paths`].
    pub datacenter: String,
    pub datacenter_moref: Option<MoRef>,
    /// `VMFS`, `NFS`, `vsan`, `VVOL`, ...
    pub kind: Option<String>,
}

/// Opens datastore files of one vCenter / ESXi host. Datastores are told apart by MoRef: a
/// name is unique only within a datacenter ("The scope of a datastore is a datacenter; the
/// datastore is uniquely named within the datacenter", Datastore,
/// <https://developer.broadcom.com/xapis/virtual-infrastructure-json-api/8.0.3/virtual-infrastructure/datastore>),
/// so a locator [`scoped`](DatastoreLocator::for_datastore) to the datacenter of the disk it
/// reads resolves `[name]` there, and an unscoped one refuses a name two datacenters share.
#[derive(Clone)]
pub struct DatastoreLocator {
    ep: Arc<Endpoint>,
    datastores: Arc<Vec<DatastoreInfo>>,
    /// Resolve names within this datacenter (inventory path) only.
    scope: Option<String>,
    bytes_read: Arc<AtomicU64>,
}

impl DatastoreLocator {
    /// Learn every datastore and the datacenter (inventory path) that holds it.
    pub fn new(s: &Session) -> Result<Self> {
        let tree = InventoryTree::load(s)?;
        let dcs = s.all_of_kind("Datacenter", &["name", "datastore"])?;
        let dss = s.all_of_kind("Datastore", &["name", "summary.type"])?;
        let mut datastores = Vec::new();
        for dc in &dcs {
            let path = tree.path(&dc.obj).unwrap_or_else(|| {
                dc.prop("name")
                    .map(|n| n.text.trim().to_string())
                    .unwrap_or_default()
            });
            let Some(list) = dc.prop("datastore") else {
                continue;
            };
            for m in &list.children {
                let Ok(m) = crate::soap::response::moref(m) else {
                    continue;
                };
                let Some(o) = dss.iter().find(|o| o.obj == m) else {
                    continue;
                };
                datastores.push(DatastoreInfo {
                    moref: m,
                    name: o
                        .prop("name")
                        .map(|n| n.text.trim().to_string())
                        .unwrap_or_default(),
                    datacenter: path.clone(),
                    datacenter_moref: Some(dc.obj.clone()),
                    kind: o.prop("summary.type").map(|t| t.text.trim().to_string()),
                });
            }
        }
        Ok(Self::from_parts(s.endpoint().clone(), datastores))
    }

    pub fn from_parts(ep: Arc<Endpoint>, datastores: Vec<DatastoreInfo>) -> Self {
        DatastoreLocator {
            ep,
            datastores: Arc::new(datastores),
            scope: None,
            bytes_read: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn datastores(&self) -> &[DatastoreInfo] {
        &self.datastores
    }

    /// A locator resolving names in the datacenter of datastore `ds` (the `backing.datastore`
    /// of the disk to read); this one, unscoped, when `ds` is unknown. Shares the byte count.
    pub fn for_datastore(&self, ds: Option<&MoRef>) -> Self {
        let scope = ds
            .and_then(|m| self.datastores.iter().find(|d| &d.moref == m))
            .map(|d| d.datacenter.clone());
        DatastoreLocator {
            scope: scope.or_else(|| self.scope.clone()),
            ..self.clone()
        }
    }

    /// The datastore a `[name]` means here.
    pub fn resolve(&self, name: &str) -> io::Result<&DatastoreInfo> {
        let all: Vec<&DatastoreInfo> = self
            .datastores
            .iter()
            .filter(|d| d.name == name)
            .filter(|d| self.scope.as_ref().is_none_or(|s| &d.datacenter == s))
            .collect();
        match all.as_slice() {
            [one] => Ok(one),
            [] => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: no datacenter{} holds datastore {name:?}",
                    self.ep.authority(),
                    self.scope
                        .as_ref()
                        .map(|s| format!(" {s:?}"))
                        .unwrap_or_default()
                ),
            )),
            many => Err(io::Error::other(format!(
                "{}: datastore name {name:?} is used in several datacenters ({}); the disk's datastore MoRef is needed to tell them apart",
                self.ep.authority(),
                many.iter()
                    .map(|d| format!("{} in {}", d.moref.value, d.datacenter))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The datastore's `summary.type`, when the server reported one.
    pub fn datastore_type(&self, datastore: &str) -> Option<&str> {
        self.resolve(datastore).ok()?.kind.as_deref()
    }

    /// Whether `/folder` can serve the disk files of this datastore: vSAN and vVol keep disks
    /// as objects (descriptors name `vsan://` / `vvol://` extents), persistent memory has no
    /// files; those need the NFC export lease.
    pub fn folder_can_serve(&self, datastore: &str) -> bool {
        !self
            .datastore_type(datastore)
            .is_some_and(|t| matches!(t.to_ascii_lowercase().as_str(), "vsan" | "vvol" | "pmem"))
    }

    /// Bytes fetched with Range GETs so far (all files opened through this locator).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// `/folder/<path>?dcPath=<datacenter inventory path>&dsName=<ds>`.
    pub fn url_path(&self, p: &DatastorePath) -> io::Result<String> {
        let ds = self.resolve(&p.datastore)?;
        Ok(format!(
            "/folder/{}?dcPath={}&dsName={}",
            percent_encode(&p.path, true),
            percent_encode(&ds.datacenter, false),
            percent_encode(&p.datastore, false)
        ))
    }

    /// The descriptor text of a disk file, at most `max` bytes: a text descriptor's start, or
    /// the descriptor a hosted sparse file embeds (found through its KDMV header).
    pub fn read_descriptor(&self, file_name: &str, max: u64) -> io::Result<Vec<u8>> {
        let opened = self.open(file_name, None)?;
        let size = opened.file.size()?;
        let read = |offset: u64, len: u64| -> io::Result<Vec<u8>> {
            let len = len.min(size.saturating_sub(offset));
            let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
            opened.file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        };
        let head = read(0, 512.min(max))?;
        if let Ok(h) = godwit_disk::vmdk::header::SparseHeader::parse(&head) {
            if h.descriptor_size == 0 {
                return Ok(Vec::new());
            }
            return read(
                h.descriptor_offset.saturating_mul(512),
                h.descriptor_size.saturating_mul(512).min(max),
            );
        }
        if size <= head.len() as u64 {
            return Ok(head);
        }
        read(0, max)
    }
}

fn io_err(e: Error) -> io::Error {
    let kind = match e.kind() {
        crate::error::ErrorKind::NotFound => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Locator for DatastoreLocator {
    fn open(&self, name: &str, relative_to: Option<&str>) -> io::Result<Opened> {
        let p = match (
            DatastorePath::parse(name),
            relative_to.and_then(DatastorePath::parse),
        ) {
            (Some(p), _) => p,
            (None, Some(base)) if !name.starts_with('/') => base.sibling(name),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is not a datastore path like \"[datastore] dir/file.vmdk\""),
                ));
            }
        };
        let url = self.url_path(&p)?;
        let display = p.to_string();
        let size = self.ep.head_size(&url, &display).map_err(io_err)?;
        Ok(Opened {
            name: display.clone(),
            file: Arc::new(RemoteFile {
                ep: self.ep.clone(),
                url,
                name: display,
                size,
                bytes_read: self.bytes_read.clone(),
            }),
        })
    }
}

/// One datastore file read with Range GETs.
pub struct RemoteFile {
    ep: Arc<Endpoint>,
    url: String,
    name: String,
    size: u64,
    bytes_read: Arc<AtomicU64>,
}

impl ReadAt for RemoteFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: read {offset}+{len} past the end ({})",
                        self.name, self.size
                    ),
                )
            })?;
        let mut pos = offset;
        let mut filled = 0usize;
        while pos < end {
            let n = (end - pos).min(MAX_RANGE_BYTES);
            let data = self
                .ep
                .get_range(&self.url, pos, n, &self.name)
                .map_err(io_err)?;
            let dst = buf
                .get_mut(filled..filled + data.len())
                .ok_or_else(|| io::Error::other("range reply longer than asked"))?;
            dst.copy_from_slice(&data);
            filled += data.len();
            pos += n;
            self.bytes_read.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datastore_paths() {
        let p = DatastorePath::parse("[Local DS [1]] vm one/disk.vmdk").unwrap();
        assert_eq!(
            (p.datastore.as_str(), p.path.as_str()),
            ("Local DS [1]", "vm one/disk.vmdk")
        );
        let p = DatastorePath::parse("[LocalDS_0] DC0_H0_VM0/disk1.vmdk").unwrap();
        assert_eq!(
            (p.datastore.as_str(), p.path.as_str()),
            ("LocalDS_0", "DC0_H0_VM0/disk1.vmdk")
        );
        assert_eq!(
            p.sibling("disk1-flat.vmdk").to_string(),
            "[LocalDS_0] DC0_H0_VM0/disk1-flat.vmdk"
        );
        assert!(DatastorePath::parse("disk.vmdk").is_none());
        assert!(DatastorePath::parse("[] x").is_none());
        assert_eq!(percent_encode("a b/ü?.vmdk", true), "a%20b/%C3%BC%3F.vmdk");
        assert_eq!(percent_encode("DC 0/x", false), "DC%200%2Fx");
    }
}
