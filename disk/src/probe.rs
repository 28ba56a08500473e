//! Format detection from the first and last bytes of a file: pure.

use crate::layer::Format;

/// What the leading bytes say a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// Hosted sparse extent ("KDMV"): monolithicSparse, streamOptimized, or one `-sNNN` extent.
    VmdkSparse,
    /// ESXi vmfsSparse delta extent ("COWD").
    VmdkCowd,
    /// A text VMDK descriptor (`# Disk DescriptorFile` or a `createType=` line).
    VmdkDescriptor,
    /// VHDX ("vhdxfile").
    Vhdx,
    /// VHD with a footer copy at offset 0 (dynamic, differencing).
    VhdDynamic,
    /// VHD with the footer only at the end (fixed).
    VhdFixed,
    Raw,
}

impl Detected {
    pub fn format(self) -> Format {
        match self {
            Detected::VmdkSparse | Detected::VmdkCowd | Detected::VmdkDescriptor => Format::Vmdk,
            Detected::Vhdx => Format::Vhdx,
            Detected::VhdDynamic | Detected::VhdFixed => Format::Vhd,
            Detected::Raw => Format::Raw,
        }
    }
}

/// Detect a format from up to the first 1 KiB (`head`) and the last 512 bytes (`tail`; empty
/// when the file is shorter than 512 bytes).
pub fn detect(head: &[u8], tail: &[u8]) -> Detected {
    if head.starts_with(b"KDMV") {
        return Detected::VmdkSparse;
    }
    if head.starts_with(b"COWD") {
        return Detected::VmdkCowd;
    }
    if head.starts_with(b"vhdxfile") {
        return Detected::Vhdx;
    }
    if head.starts_with(b"conectix") {
        return Detected::VhdDynamic;
    }
    if tail.starts_with(b"conectix") {
        return Detected::VhdFixed;
    }
    if looks_like_descriptor(head) {
        return Detected::VmdkDescriptor;
    }
    Detected::Raw
}

fn looks_like_descriptor(head: &[u8]) -> bool {
    // A descriptor is short text; check the printable prefix for its markers. Invalid UTF-8
    // after the markers (a legacy-encoded file name, say) does not hide them.
    let text_len = head
        .iter()
        .position(|&b| b == 0 || (b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t')))
        .unwrap_or(head.len());
    let bytes = &head[..text_len];
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    };
    if text.contains("# Disk DescriptorFile")
        || text
            .lines()
            .any(|l| l.trim_start().starts_with("createType"))
    {
        return true;
    }
    // As qemu probes: the first line that is not blank or a comment is `version=N`.
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| matches!(l, "version=1" | "version=2" | "version=3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_magic() {
        assert_eq!(detect(b"KDMV\x01", b""), Detected::VmdkSparse);
        assert_eq!(detect(b"COWD", b""), Detected::VmdkCowd);
        assert_eq!(detect(b"vhdxfile", b""), Detected::Vhdx);
        assert_eq!(detect(b"conectix", b""), Detected::VhdDynamic);
        assert_eq!(detect(&[0u8; 16], b"conectix\0\0"), Detected::VhdFixed);
        assert_eq!(
            detect(b"# Disk DescriptorFile\nversion=1\n", b""),
            Detected::VmdkDescriptor
        );
        assert_eq!(detect(&[0u8; 512], &[0u8; 512]), Detected::Raw);
        assert_eq!(
            detect(b"createType=\"x\"\n\xff\xfe", b""),
            Detected::VmdkDescriptor
        );
        assert_eq!(
            detect(b"# comment\n\nversion=1\nCID=1\n", b""),
            Detected::VmdkDescriptor
        );
        assert_eq!(detect(b"hello version=1\n", b""), Detected::Raw);
    }
}
