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

/// What a file that no disk format claims looks like, when it is plainly not a raw disk either:
/// an empty file, text, or a known file type. `head` is up to the first 4 KiB; `size` the file
/// size. `None`: nothing against reading it as raw. (A raw disk may hold anything, so this is
/// only for refusing likely mistakes; `-f raw` overrides it.)
pub fn non_disk_content(head: &[u8], size: u64) -> Option<String> {
    if size == 0 {
        return Some("an empty file".into());
    }
    const MAGICS: [(usize, &[u8], &str); 11] = [
        (
            0,
            b"QFI\xfb",
            "a qcow2 image (not supported: convert it with qemu-img first)",
        ),
        (0, b"\x1f\x8b", "a gzip file"),
        (0, b"\xfd7zXZ\x00", "an xz file"),
        (0, b"\x28\xb5\x2f\xfd", "a zstd file"),
        (0, b"BZh", "a bzip2 file"),
        (0, b"PK\x03\x04", "a zip file"),
        (0, b"\x7fELF", "an ELF executable"),
        (0, b"%PDF-", "a PDF document"),
        (0, b"7z\xbc\xaf\x27\x1c", "a 7-zip file"),
        (
            0,
            b"VDI",
            "a VirtualBox VDI image (not supported: convert it with qemu-img first)",
        ),
        (
            257,
            b"ustar",
            "a tar archive (an OVA? extract its disk first)",
        ),
    ];
    for (at, magic, what) in MAGICS {
        if head.get(at..).is_some_and(|h| h.starts_with(magic)) {
            return Some(what.to_string());
        }
    }
    if looks_like_text(head) {
        let first: String = head
            .iter()
            .take_while(|&&b| b != b'\n' && b != b'\r')
            .take(40)
            .map(|&b| char::from(b))
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .collect();
        return Some(format!("text (it begins {first:?})"));
    }
    None
}

/// Printable UTF-8 with ordinary whitespace only (no NUL, no other control bytes).
fn looks_like_text(head: &[u8]) -> bool {
    if head.is_empty() {
        return false;
    }
    let valid = match std::str::from_utf8(head) {
        Ok(t) => t,
        // The sample may end inside a multi-byte character.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0c'))
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

    #[test]
    fn refuses_what_is_plainly_not_a_disk() {
        assert_eq!(non_disk_content(b"", 0).as_deref(), Some("an empty file"));
        let t = non_disk_content(b"hello world\nsecond line\n", 24).unwrap();
        assert!(t.starts_with("text (it begins \"hello world\")"), "{t}");
        assert!(non_disk_content("caf\u{e9} au lait\n".as_bytes(), 16).is_some());
        assert!(
            non_disk_content(b"QFI\xfb\0\0\0\x03", 1 << 20)
                .unwrap()
                .contains("qcow2")
        );
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(non_disk_content(&tar, 10240).unwrap().contains("tar"));
        // Zeros, an MBR, random bytes: maybe a raw disk.
        assert_eq!(non_disk_content(&[0u8; 4096], 1 << 20), None);
        let mut mbr = vec![0u8; 512];
        mbr[0] = 0xeb;
        mbr[1] = 0x63;
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(non_disk_content(&mbr, 1 << 20), None);
        assert_eq!(non_disk_content(b"abc\x01def", 8), None);
    }
}
