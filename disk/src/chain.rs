//! A virtual disk as a chain of layers (top first): opening, parent resolution with identity
//! checks and loop detection, and the merged allocation map.

use crate::error::{Error, Result};
use crate::layer::{
    BlockSource, Format, Identity, Layer, LayerInfo, ParentLink, Run, RunState, Stored, push_run,
};
use crate::probe::{Detected, detect};
use crate::raw::RawLayer;
use crate::storage::{LocalFs, Locator, Opened};
use std::collections::HashSet;

/// Deepest chain accepted. Real chains are a handful of snapshots deep; VMware caps at 255.
pub const MAX_CHAIN_DEPTH: usize = 255;

/// How to interpret the top file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FormatHint {
    /// Detect from magic bytes (raw when nothing matches).
    #[default]
    Auto,
    /// Treat as raw whatever it contains (block devices holding a guest's VMDK, say).
    Raw,
}

/// An opened virtual disk: one or more layers, the top (newest) first.
pub struct Disk {
    layers: Vec<Box<dyn Layer>>,
}

impl Disk {
    /// Open a local image file, following its parent chain.
    pub fn open(path: &str) -> Result<Disk> {
        Self::open_with(&LocalFs, path, FormatHint::Auto)
    }

    /// Open `name` through `locator`, following its parent chain through the same locator.
    pub fn open_with(locator: &dyn Locator, name: &str, hint: FormatHint) -> Result<Disk> {
        let top = locator
            .open(name, None)
            .map_err(|e| Error::io(name, "open", e))?;
        let mut layers = vec![open_layer(locator, top, hint)?];
        let mut seen: HashSet<String> = HashSet::new();
        seen.insert(normalize(&layers[0].info().file));
        loop {
            let child = layers
                .last()
                .map(|l| l.info().clone())
                .unwrap_or_else(|| unreachable!());
            let Some(link) = child.parent.clone() else {
                break;
            };
            if layers.len() >= MAX_CHAIN_DEPTH {
                return Err(Error::chain(
                    &child.file,
                    format!("chain deeper than {MAX_CHAIN_DEPTH} layers"),
                ));
            }
            let parent_file = open_parent(locator, &child, &link.hints)?;
            if !seen.insert(normalize(&parent_file.name)) {
                return Err(Error::chain(
                    &child.file,
                    format!("parent chain loops back to {}", parent_file.name),
                ));
            }
            let parent = open_layer(locator, parent_file, FormatHint::Auto)?;
            check_identity(&child, parent.info(), &link)?;
            layers.push(parent);
        }
        Ok(Disk { layers })
    }

    /// Wrap already-opened layers (top first). Used by tests and by sources that build layers
    /// themselves.
    pub fn from_layers(layers: Vec<Box<dyn Layer>>) -> Result<Disk> {
        if layers.is_empty() {
            return Err(Error::Usage("a disk needs at least one layer".into()));
        }
        Ok(Disk { layers })
    }

    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    pub fn top(&self) -> &LayerInfo {
        self.layers[0].info()
    }

    /// Runs covering `[offset, offset+len)` with the index of the layer holding each data run.
    pub fn resolve(&self, offset: u64, len: u64) -> Result<Vec<(Run, usize)>> {
        let size = self.virtual_size();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: range {offset}+{len} is past the virtual size {size}",
                    self.top().file
                ))
            })?;
        let mut out = Vec::new();
        self.resolve_in(0, offset, end - offset, &mut out)?;
        Ok(out)
    }

    fn resolve_in(
        &self,
        depth: usize,
        offset: u64,
        len: u64,
        out: &mut Vec<(Run, usize)>,
    ) -> Result<()> {
        let Some(layer) = self.layers.get(depth) else {
            push_resolved(
                out,
                Run {
                    offset,
                    len,
                    state: RunState::Zero,
                },
                depth,
            );
            return Ok(());
        };
        // A parent smaller than its child reads as zeros past its end.
        let lsize = layer.info().virtual_size;
        let inside = lsize.saturating_sub(offset).min(len);
        if inside < len {
            let tail = Run {
                offset: offset + inside,
                len: len - inside,
                state: RunState::Zero,
            };
            if inside == 0 {
                push_resolved(out, tail, depth);
                return Ok(());
            }
            self.resolve_in(depth, offset, inside, out)?;
            push_resolved(out, tail, depth);
            return Ok(());
        }
        for run in layer.map(offset, len)? {
            match run.state {
                RunState::Parent => self.resolve_in(depth + 1, run.offset, run.len, out)?,
                _ => push_resolved(out, run, depth),
            }
        }
        Ok(())
    }
}

fn push_resolved(out: &mut Vec<(Run, usize)>, run: Run, layer: usize) {
    if run.len == 0 {
        return;
    }
    if let Some((last, last_layer)) = out.last_mut()
        && last.state == run.state
        && last.end() == run.offset
        && (run.state == RunState::Zero || *last_layer == layer)
    {
        last.len += run.len;
        return;
    }
    out.push((run, layer));
}

impl BlockSource for Disk {
    fn virtual_size(&self) -> u64 {
        self.layers[0].info().virtual_size
    }

    fn map(&self, offset: u64, len: u64) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for (run, _) in self.resolve(offset, len)? {
            push_run(&mut runs, run);
        }
        Ok(runs)
    }

    fn stored(&self, offset: u64, len: u64) -> Result<Option<Vec<Stored>>> {
        let mut out = Vec::new();
        for (run, layer) in self.resolve(offset, len)? {
            if run.state != RunState::Data {
                continue;
            }
            match self.layers[layer].stored(run.offset, run.len)? {
                Some(pieces) => out.extend(pieces),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    }

    fn logical_sector_size(&self) -> u32 {
        self.layers[0].info().logical_sector_size
    }

    fn page83(&self) -> Option<[u8; 16]> {
        self.layers[0].page83()
    }

    /// Layers read through positional reads and lock only their table caches.
    fn parallel_reads(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        for (run, layer) in self.resolve(offset, len)? {
            let start = usize::try_from(run.offset - offset).map_err(|_| overflow())?;
            let end = usize::try_from(run.end() - offset).map_err(|_| overflow())?;
            let dst = &mut buf[start..end];
            match run.state {
                RunState::Data => self.layers[layer].read_at(run.offset, dst)?,
                _ => dst.fill(0),
            }
        }
        Ok(())
    }
}

fn overflow() -> Error {
    Error::Usage("read buffer larger than the address space".into())
}

/// Detect the format of `src` and open it as a layer.
pub fn open_layer(locator: &dyn Locator, src: Opened, hint: FormatHint) -> Result<Box<dyn Layer>> {
    if hint == FormatHint::Raw {
        return Ok(Box::new(RawLayer::open(src)?));
    }
    let size = src
        .file
        .size()
        .map_err(|e| Error::io(&src.name, "size", e))?;
    let mut head = vec![0u8; usize::try_from(size.min(1024)).unwrap_or(1024)];
    src.file
        .read_exact_at(&mut head, 0)
        .map_err(|e| Error::io(&src.name, "read header", e))?;
    let mut tail = Vec::new();
    if size >= 512 {
        tail = vec![0u8; 512];
        src.file
            .read_exact_at(&mut tail, size - 512)
            .map_err(|e| Error::io(&src.name, "read footer", e))?;
    }
    match detect(&head, &tail) {
        d @ (Detected::VmdkSparse | Detected::VmdkCowd | Detected::VmdkDescriptor) => {
            crate::vmdk::open(locator, src, d)
        }
        Detected::Vhdx => crate::vhdx::open(src),
        d @ (Detected::VhdDynamic | Detected::VhdFixed) => crate::vhd::open(src, d),
        Detected::Raw => Ok(Box::new(RawLayer::open(src)?)),
    }
}

fn open_parent(locator: &dyn Locator, child: &LayerInfo, hints: &[String]) -> Result<Opened> {
    let mut tried = Vec::new();
    for hint in hints {
        match locator.open(hint, Some(&child.file)) {
            Ok(o) => return Ok(o),
            Err(e) => tried.push(format!("{hint} ({e})")),
        }
        // ESXi and Hyper-V often store absolute paths from another machine: try the bare name
        // next to the child.
        let bare = crate::storage::base_name(hint);
        if bare != hint {
            match locator.open(bare, Some(&child.file)) {
                Ok(o) => return Ok(o),
                Err(e) => tried.push(format!("{bare} ({e})")),
            }
        }
    }
    Err(Error::chain(
        &child.file,
        if tried.is_empty() {
            "differencing image names no parent".to_string()
        } else {
            format!("parent not found; tried {}", tried.join(", "))
        },
    ))
}

fn check_identity(child: &LayerInfo, parent: &LayerInfo, link: &ParentLink) -> Result<()> {
    let expect = &link.expect;
    let fmt_ok = match expect {
        Identity::VmdkCid(_) => parent.format == Format::Vmdk,
        Identity::VhdUniqueId(_) => parent.format == Format::Vhd,
        Identity::VhdxDataWriteGuid(_) => parent.format == Format::Vhdx,
        Identity::None => true,
    };
    if !fmt_ok {
        return Err(Error::chain(
            &child.file,
            format!(
                "parent {} is {}, but a {} child needs a parent of its own format",
                parent.file,
                parent.format.name(),
                child.format.name()
            ),
        ));
    }
    let matches = *expect == Identity::None
        || *expect == parent.identity
        || link.alternate.as_ref() == Some(&parent.identity);
    if !matches {
        let wanted = match &link.alternate {
            Some(alt) => format!("{} or {}", describe(expect), describe(alt)),
            None => describe(expect),
        };
        return Err(Error::chain(
            &child.file,
            format!(
                "parent {} has {} but the child expects {wanted}: the parent changed after the \
                 child was created",
                parent.file,
                describe(&parent.identity),
            ),
        ));
    }
    Ok(())
}

/// An identity as the format's own tools print it.
pub fn describe(id: &Identity) -> String {
    fn guid(b: &[u8; 16]) -> String {
        uuid::Uuid::from_bytes_le(*b).hyphenated().to_string()
    }
    match id {
        Identity::VmdkCid(c) => format!("CID {c:08x}"),
        Identity::VhdUniqueId(u) => format!("unique id {}", guid(u)),
        Identity::VhdxDataWriteGuid(u) => format!("DataWriteGuid {}", guid(u)),
        Identity::None => "no identity".into(),
    }
}

/// A lexically normalised path (`.` and `dir/..` removed), so that the same file reached as
/// `./a.vmdk` and `x/../a.vmdk` is recognised when detecting loops. Symbolic links are not
/// resolved (the locator may not be a local file system); the depth limit catches those.
pub fn normalize(name: &str) -> String {
    let abs = name.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            ".." if abs => {}
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if abs { format!("/{joined}") } else { joined }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("./a/./b/../c.vmdk"), "a/c.vmdk");
        assert_eq!(normalize("/x/../../y.vmdk"), "/y.vmdk");
        assert_eq!(normalize("../a.vmdk"), "../a.vmdk");
        assert_eq!(normalize("a//b"), "a/b");
    }

    #[test]
    fn identities_read_like_the_tools_print_them() {
        assert_eq!(describe(&Identity::VmdkCid(0xab)), "CID 000000ab");
        assert!(describe(&Identity::VhdUniqueId([0; 16])).starts_with("unique id 0000"));
    }
}
