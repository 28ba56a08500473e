//! Datastore files over HTTPS `/folder` with Range reads, as a [`godwit_disk::storage::Locator`]
//! so the disk crate parses descriptors and reads extents remotely:
//! `Disk::open_with(&locator, "[datastore] vm/disk.vmdk", FormatHint::Auto)`.

use crate::error::{Error, Result};
use crate::session::Session;
use crate::transport::Endpoint;
use godwit_disk::storage::{Locator, Opened, ReadAt};
use std::collections::HashMap;
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

/// Opens datastore files of one vCenter / ESXi host.
#[derive(Clone)]
pub struct DatastoreLocator {
    ep: Arc<Endpoint>,
    /// Datastore name → datacenter path (`DC0`, `ha-datacenter`).
    datacenters: HashMap<String, String>,
    /// Datastore name → `summary.type` (`VMFS`, `NFS`, `vsan`, `VVOL`, ...).
    types: HashMap<String, String>,
    bytes_read: Arc<AtomicU64>,
}

impl DatastoreLocator {
    /// Learn which datacenter holds each datastore.
    pub fn new(s: &Session) -> Result<Self> {
        let dcs = s.all_of_kind("Datacenter", &["name", "datastore"])?;
        let dss = s.all_of_kind("Datastore", &["name", "summary.type"])?;
        let types = dss
            .iter()
            .filter_map(|o| {
                Some((
                    o.prop("name")?.text.trim().to_string(),
                    o.prop("summary.type")?.text.trim().to_string(),
                ))
            })
            .collect();
        let ds_names: HashMap<_, _> = dss
            .iter()
            .filter_map(|o| {
                o.prop("name")
                    .map(|n| (o.obj.clone(), n.text.trim().to_string()))
            })
            .collect();
        let mut datacenters = HashMap::new();
        for dc in &dcs {
            let Some(name) = dc.prop("name").map(|n| n.text.trim().to_string()) else {
                continue;
            };
            if let Some(list) = dc.prop("datastore") {
                for m in &list.children {
                    if let Ok(m) = crate::soap::response::moref(m)
                        && let Some(ds) = ds_names.get(&m)
                    {
                        datacenters.insert(ds.clone(), name.clone());
                    }
                }
            }
        }
        Ok(DatastoreLocator {
            ep: s.endpoint().clone(),
            datacenters,
            types,
            bytes_read: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The datastore's `summary.type`, when the server reported one.
    pub fn datastore_type(&self, datastore: &str) -> Option<&str> {
        self.types.get(datastore).map(String::as_str)
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

    /// `/folder/<path>?dcPath=<dc>&dsName=<ds>`.
    pub fn url_path(&self, p: &DatastorePath) -> io::Result<String> {
        let dc = self.datacenters.get(&p.datastore).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: no datacenter holds datastore {:?}",
                    self.ep.authority(),
                    p.datastore
                ),
            )
        })?;
        Ok(format!(
            "/folder/{}?dcPath={}&dsName={}",
            percent_encode(&p.path, true),
            percent_encode(dc, false),
            percent_encode(&p.datastore, false)
        ))
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
