//! VMDK: descriptors, hosted sparse extents, streamOptimized, flat and split extents, deltas.
//!
//! ## Reads
//! - createTypes `monolithicSparse`, `twoGbMaxExtentSparse`, `monolithicFlat`,
//!   `twoGbMaxExtentFlat`, `streamOptimized` (VMware layout: grain directory at the end behind
//!   a footer, markers including PROGRESS; qemu layout: directory up front, no markers),
//!   ESXi `vmfs` flat descriptors, and deltas of any of these through `parentFileNameHint`
//!   (the chain checks `parentCID` against the parent's `CID`).
//! - Extent types SPARSE, FLAT, VMFS, ZERO, VMFSSPARSE (ESXi "COWD" snapshot deltas) and
//!   SESPARSE (ESXi 6.5+ snapshot deltas; clean journal only).
//! - Zeroed grains (GTE 1 with header flag bit 2), partial last grains, RDONLY extents.
//!
//! ## Refuses, by name
//! Raw device mappings (VMFSRDM, VMFSRAW, `vmfsRawDeviceMap`, `vmfsPassthroughRawDeviceMap`),
//! physical disks (`fullDevice`, `partitionedDevice`), NOACCESS extents, sparse versions above
//! 3 and unknown incompatible flags, compression other than deflate, a dirty seSparse
//! journal, and an ESXi delta data file opened without its descriptor.
//!
//! ## Bounds
//! Grain directories are read at open (capped at 4 M entries), grain tables on demand into a
//! bounded cache; every table and grain pointer is checked against the file before use.

pub mod descriptor;
mod extent;
pub mod header;
mod sparse;
pub mod stream;
mod tables;

use crate::error::{Error, Result};
use crate::layer::{
    Format, Identity, Layer, LayerInfo, ParentLink, Run, RunState, Stored, push_run,
};
use crate::probe::Detected;
use crate::storage::{Locator, Opened};
use descriptor::{Access, CID_NONE, Descriptor, ExtentLine, ExtentType, MAX_DESCRIPTOR_BYTES};
use extent::{Extent, FlatExtent, ZeroExtent};
use header::{COWD_MAGIC, SECTOR, SPARSE_MAGIC, SparseHeader};
use sparse::{SparseExtent, header_error};

pub use tables::{GT_CACHE_BYTES, MAX_GD_ENTRIES};

/// Open a VMDK file (descriptor or sparse extent with an embedded descriptor) as one layer.
pub fn open(locator: &dyn Locator, src: Opened, detected: Detected) -> Result<Box<dyn Layer>> {
    match detected {
        Detected::VmdkSparse => Ok(Box::new(open_sparse_file(src)?)),
        Detected::VmdkDescriptor => Ok(Box::new(open_descriptor(locator, src)?)),
        Detected::VmdkCowd => Err(Error::unsupported(
            &src.name,
            "vmdk",
            "this is the data file of an ESXi snapshot (vmfsSparse \"COWD\" delta); open the \
             snapshot's descriptor .vmdk instead, which names its parent",
        )),
        other => Err(Error::Usage(format!(
            "{}: not a VMDK file ({other:?})",
            src.name
        ))),
    }
}

/// One VMDK layer: its extents laid end to end.
pub struct VmdkLayer {
    info: LayerInfo,
    /// (first byte in the virtual disk, extent), sorted.
    extents: Vec<(u64, Box<dyn Extent>)>,
    descriptor: Descriptor,
}

impl VmdkLayer {
    /// The parsed descriptor (embedded or separate).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.info.virtual_size)
        {
            return Err(Error::Usage(format!(
                "{}: range {offset}+{len} is past the virtual size {}",
                self.info.file, self.info.virtual_size
            )));
        }
        Ok(())
    }

    fn first_extent(&self, offset: u64) -> usize {
        self.extents
            .partition_point(|(start, _)| *start <= offset)
            .saturating_sub(1)
    }
}

impl Layer for VmdkLayer {
    fn info(&self) -> &LayerInfo {
        &self.info
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
        self.check_range(offset, len)?;
        let mut out = Vec::new();
        let end = offset + len;
        let mut i = self.first_extent(offset);
        let mut pos = offset;
        while pos < end && i < self.extents.len() {
            let (start, ext) = &self.extents[i];
            let ext_end = start + ext.len();
            if pos < ext_end {
                let n = ext_end.min(end) - pos;
                let mut runs = Vec::new();
                ext.map(pos - start, n, *start, &mut runs)?;
                for r in runs {
                    push_run(&mut out, r);
                }
                pos += n;
            }
            i += 1;
        }
        Ok(out)
    }

    fn stored(&self, offset: u64, len: u64) -> Result<Option<Vec<Stored>>> {
        self.check_range(offset, len)?;
        let mut out = Vec::new();
        let end = offset + len;
        let mut i = self.first_extent(offset);
        let mut pos = offset;
        while pos < end && i < self.extents.len() {
            let (start, ext) = &self.extents[i];
            let ext_end = start + ext.len();
            if pos < ext_end {
                let n = ext_end.min(end) - pos;
                if !ext.stored(pos - start, n, *start, &mut out)? {
                    return Ok(None);
                }
                pos += n;
            }
            i += 1;
        }
        Ok(Some(out))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut i = self.first_extent(offset);
        let mut pos = offset;
        let mut done = 0usize;
        while done < buf.len() && i < self.extents.len() {
            let (start, ext) = &self.extents[i];
            let ext_end = start + ext.len();
            if pos < ext_end {
                let n = usize::try_from(ext_end - pos)
                    .unwrap_or(usize::MAX)
                    .min(buf.len() - done);
                ext.read_at(pos - start, &mut buf[done..done + n])?;
                done += n;
                pos += n as u64;
            }
            i += 1;
        }
        Ok(())
    }
}

fn corrupt(name: &str, offset: u64, reason: impl Into<String>) -> Error {
    Error::corrupt(name, "vmdk", offset, reason)
}

fn parent_link(d: &Descriptor) -> Option<ParentLink> {
    if !d.has_parent() {
        return None;
    }
    let expect = match d.parent_cid {
        Some(c) if c != CID_NONE => Identity::VmdkCid(c),
        _ => Identity::None,
    };
    Some(ParentLink {
        hints: vec![d.parent_file_name_hint.clone().unwrap_or_default()],
        expect,
        alternate: None,
    })
}

fn identity(d: &Descriptor) -> Identity {
    d.cid.map_or(Identity::None, Identity::VmdkCid)
}

/// A sparse file opened directly: monolithicSparse, streamOptimized, or one piece of a split
/// disk. Like qemu, the extent lines of the embedded descriptor are not followed (a renamed
/// file still opens); the descriptor supplies CID, parent and createType.
fn open_sparse_file(src: Opened) -> Result<VmdkLayer> {
    let name = src.name.clone();
    let size = src.file.size().map_err(|e| Error::io(&name, "size", e))?;
    let mut hb = vec![0u8; 512.min(usize::try_from(size).unwrap_or(512))];
    src.file
        .read_exact_at(&mut hb, 0)
        .map_err(|e| Error::io(&name, "read header", e))?;
    let hdr = SparseHeader::parse(&hb).map_err(|e| header_error(&name, 0, e))?;
    hdr.validate(size).map_err(|e| header_error(&name, 0, e))?;
    let desc = if hdr.descriptor_size > 0 {
        let at = hdr.descriptor_offset * SECTOR;
        let mut db = vec![0u8; usize::try_from(hdr.descriptor_size * SECTOR).unwrap_or(0)];
        src.file
            .read_exact_at(&mut db, at)
            .map_err(|e| Error::io(&name, "read descriptor", e))?;
        Descriptor::parse(&db).map_err(|e| corrupt(&name, at + e.offset as u64, e.reason))?
    } else {
        Descriptor::default()
    };
    if !desc.extents.is_empty() {
        let total: u64 = desc
            .extents
            .iter()
            .map(|e| e.sectors)
            .fold(0, u64::saturating_add);
        if total != hdr.capacity {
            return Err(corrupt(
                &name,
                hdr.descriptor_offset * SECTOR + desc.extents[0].line_offset as u64,
                format!(
                    "the embedded descriptor's extents add up to {total} sectors, but the \
                     header's capacity is {} sectors",
                    hdr.capacity
                ),
            ));
        }
    }
    let unalloc = if desc.has_parent() {
        RunState::Parent
    } else {
        RunState::Zero
    };
    let ext = SparseExtent::open_hosted(&name, src.file.clone(), None, unalloc, 0)?;
    let subformat = desc.create_type.clone().unwrap_or_else(|| {
        if hdr.is_compressed() {
            "streamOptimized".into()
        } else {
            "monolithicSparse".into()
        }
    });
    Ok(VmdkLayer {
        info: LayerInfo {
            file: name.clone(),
            format: Format::Vmdk,
            subformat,
            virtual_size: ext.len(),
            logical_sector_size: 512,
            files: vec![name],
            identity: identity(&desc),
            parent: parent_link(&desc),
        },
        extents: vec![(0, Box::new(ext))],
        descriptor: desc,
    })
}

const REFUSED_CREATE_TYPES: &[(&str, &str)] = &[
    (
        "vmfsRawDeviceMap",
        "a raw device mapping: the data is on a SAN LUN, not in a file",
    ),
    (
        "vmfsPassthroughRawDeviceMap",
        "a physical-mode raw device mapping: the data is on a SAN LUN, not in a file",
    ),
    (
        "vmfsRaw",
        "a raw disk: the data is on a device, not in a file",
    ),
    (
        "fullDevice",
        "a physical disk: the data is on a device, not in a file",
    ),
    (
        "partitionedDevice",
        "physical disk partitions: the data is on a device, not in a file",
    ),
];

fn open_descriptor(locator: &dyn Locator, src: Opened) -> Result<VmdkLayer> {
    let name = src.name.clone();
    let size = src.file.size().map_err(|e| Error::io(&name, "size", e))?;
    if size > MAX_DESCRIPTOR_BYTES as u64 {
        return Err(corrupt(
            &name,
            0,
            format!("a {size}-byte VMDK descriptor is absurd (limit {MAX_DESCRIPTOR_BYTES})"),
        ));
    }
    let mut db = vec![0u8; usize::try_from(size).unwrap_or(0)];
    src.file
        .read_exact_at(&mut db, 0)
        .map_err(|e| Error::io(&name, "read descriptor", e))?;
    let desc = Descriptor::parse(&db).map_err(|e| corrupt(&name, e.offset as u64, e.reason))?;
    if let Some(ct) = &desc.create_type
        && let Some((_, why)) = REFUSED_CREATE_TYPES.iter().find(|(t, _)| t == ct)
    {
        return Err(Error::unsupported(
            &name,
            "vmdk",
            format!("createType \"{ct}\" is {why}; copy it to a file-backed disk first"),
        ));
    }
    if desc.extents.is_empty() {
        return Err(corrupt(&name, 0, "the descriptor lists no extents"));
    }
    let unalloc = if desc.has_parent() {
        RunState::Parent
    } else {
        RunState::Zero
    };
    let mut extents: Vec<(u64, Box<dyn Extent>)> = Vec::with_capacity(desc.extents.len());
    let mut files = vec![name.clone()];
    let mut pos_sectors = 0u64;
    for line in &desc.extents {
        let ext = open_extent(locator, &name, line, unalloc, pos_sectors, &mut files)?;
        let start = pos_sectors * SECTOR;
        pos_sectors = pos_sectors
            .checked_add(line.sectors)
            .filter(|s| s.checked_mul(SECTOR).is_some())
            .ok_or_else(|| {
                corrupt(
                    &name,
                    line.line_offset as u64,
                    "the extents add up to an absurd size",
                )
            })?;
        if line.sectors > 0 {
            extents.push((start, ext));
        }
    }
    let subformat = desc.create_type.clone().unwrap_or_else(|| "custom".into());
    Ok(VmdkLayer {
        info: LayerInfo {
            file: name,
            format: Format::Vmdk,
            subformat,
            virtual_size: pos_sectors * SECTOR,
            logical_sector_size: 512,
            files,
            identity: identity(&desc),
            parent: parent_link(&desc),
        },
        extents,
        descriptor: desc,
    })
}

fn open_extent(
    locator: &dyn Locator,
    desc_name: &str,
    line: &ExtentLine,
    unalloc: RunState,
    base_sector: u64,
    files: &mut Vec<String>,
) -> Result<Box<dyn Extent>> {
    let at = line.line_offset as u64;
    if line.access == Access::NoAccess {
        return Err(Error::unsupported(
            desc_name,
            "vmdk",
            format!("extent at descriptor byte {at} is NOACCESS"),
        ));
    }
    let len = line.sectors.checked_mul(SECTOR).ok_or_else(|| {
        corrupt(
            desc_name,
            at,
            format!("absurd extent size of {} sectors", line.sectors),
        )
    })?;
    if line.kind == ExtentType::Zero {
        return Ok(Box::new(ZeroExtent { len }));
    }
    match &line.kind {
        ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
            return Err(Error::unsupported(
                desc_name,
                "vmdk",
                format!(
                    "{} extent (raw device mapping): the data is on a SAN LUN, not in a file",
                    line.kind.as_str()
                ),
            ));
        }
        ExtentType::Other(t) => {
            return Err(Error::unsupported(
                desc_name,
                "vmdk",
                format!("extent type {t} at descriptor byte {at}"),
            ));
        }
        _ => {}
    }
    let fname = line.file.as_deref().unwrap_or_default();
    let opened = locator.open(fname, Some(desc_name)).map_err(|e| {
        corrupt(
            desc_name,
            at,
            format!("extent file \"{fname}\" named by the descriptor cannot be opened: {e}"),
        )
    })?;
    files.push(opened.name.clone());
    let ename = opened.name.clone();
    let fsize = opened
        .file
        .size()
        .map_err(|e| Error::io(&ename, "size", e))?;
    match line.kind {
        ExtentType::Flat | ExtentType::Vmfs => {
            let start = line.start.unwrap_or(0).saturating_mul(SECTOR);
            let need = start.saturating_add(len);
            if fsize < need {
                return Err(corrupt(
                    &ename,
                    fsize,
                    format!(
                        "flat extent is {fsize} bytes, but the descriptor ({desc_name}, byte \
                         {at}) needs {need}: truncated"
                    ),
                ));
            }
            Ok(Box::new(FlatExtent {
                name: ename,
                file: opened.file,
                start,
                len,
            }))
        }
        ExtentType::Sparse | ExtentType::VmfsSparse => {
            let mut magic = [0u8; 4];
            if fsize >= 4 {
                opened
                    .file
                    .read_exact_at(&mut magic, 0)
                    .map_err(|e| Error::io(&ename, "read header", e))?;
            }
            match u32::from_le_bytes(magic) {
                SPARSE_MAGIC => {
                    let mut e = SparseExtent::open_hosted(
                        &ename,
                        opened.file,
                        Some(line.sectors),
                        unalloc,
                        base_sector,
                    )?;
                    e.set_base_sector(base_sector);
                    Ok(Box::new(e))
                }
                COWD_MAGIC => Ok(Box::new(SparseExtent::open_cowd(
                    &ename,
                    opened.file,
                    Some(line.sectors),
                    unalloc,
                )?)),
                _ => Err(corrupt(
                    &ename,
                    0,
                    format!(
                        "{} extent has neither a KDMV nor a COWD header",
                        line.kind.as_str()
                    ),
                )),
            }
        }
        ExtentType::SeSparse => Ok(Box::new(SparseExtent::open_sesparse(
            &ename,
            opened.file,
            Some(line.sectors),
            unalloc,
        )?)),
        _ => unreachable!("handled above"),
    }
}
