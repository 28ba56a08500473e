//! Boot-once records the boot loaders themselves clear before booting, so a trial slot whose
//! kernel dies before userspace (panic, bad initramfs) falls back to the committed slot on the
//! next reset without any help from the system:
//!
//! - GRUB (UEFI): `/boot/grub/grubenv`, the 1024-byte environment block; `grub.cfg` reads
//!   `godwit_once`, clears it with `save_env` and only then boots the named slot as a trial.
//! - SYSLINUX (BIOS): the ADV (auxiliary data vector), the last two 512-byte sectors of
//!   `ldlinux.sys`; its boot-once record (tag 1) names a label, which ldlinux clears on disk
//!   before running it.
//!
//! Both are rewritten in place (same length, same clusters), which is what both loaders
//! require: neither can allocate on FAT.

use crate::{Error, Result};

/// Size of a GRUB environment block.
pub const GRUBENV_LEN: usize = 1024;
const GRUBENV_HEADER: &str = "# GRUB Environment Block\n";
/// The variable `grub.cfg` reads.
pub const GRUB_ONCE_VAR: &str = "godwit_once";

/// A GRUB environment block holding `vars` (name, value), padded with `#`.
pub fn grubenv_encode(vars: &[(&str, &str)]) -> Result<[u8; GRUBENV_LEN]> {
    let mut text = String::from(GRUBENV_HEADER);
    for (k, v) in vars {
        let ok_name = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_name || v.contains(['\n', '\\']) {
            return Err(Error::invalid(
                "grubenv",
                format!("variable {k:?} cannot be stored"),
            ));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    if text.len() > GRUBENV_LEN {
        return Err(Error::invalid("grubenv", "variables exceed 1024 bytes"));
    }
    let mut b = [b'#'; GRUBENV_LEN];
    b[..text.len()].copy_from_slice(text.as_bytes());
    Ok(b)
}

/// The variables of a GRUB environment block.
pub fn grubenv_parse(b: &[u8]) -> Result<Vec<(String, String)>> {
    if b.len() != GRUBENV_LEN || !b.starts_with(GRUBENV_HEADER.as_bytes()) {
        return Err(Error::invalid(
            "grubenv",
            "not a 1024-byte GRUB environment block",
        ));
    }
    let text = std::str::from_utf8(&b[GRUBENV_HEADER.len()..])
        .map_err(|_| Error::invalid("grubenv", "not UTF-8"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Size of SYSLINUX's ADV: two identical 512-byte copies.
pub const ADV_LEN: usize = 1024;
const ADV_SECTOR: usize = 512;
const ADV_MAGIC1: u32 = 0x5a2d_2fa5;
const ADV_MAGIC2: u32 = 0xa304_1767;
const ADV_MAGIC3: u32 = 0xdd28_bf64;
const ADV_BOOTONCE: u8 = 1;
/// Data bytes in one ADV copy (between the magic+checksum words and the trailing magic).
const ADV_DATA: usize = ADV_SECTOR - 12;

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn adv_checksum(sector: &[u8]) -> u32 {
    (8..ADV_SECTOR - 4)
        .step_by(4)
        .fold(ADV_MAGIC2, |c, i| c.wrapping_sub(le32(sector, i)))
}

/// An ADV whose only record is the boot-once command `once` (a label), or an empty one.
pub fn adv_encode(once: Option<&str>) -> Result<[u8; ADV_LEN]> {
    let mut s = [0u8; ADV_SECTOR];
    s[..4].copy_from_slice(&ADV_MAGIC1.to_le_bytes());
    s[ADV_SECTOR - 4..].copy_from_slice(&ADV_MAGIC3.to_le_bytes());
    if let Some(cmd) = once {
        let len = u8::try_from(cmd.len())
            .ok()
            .filter(|l| *l > 0 && !cmd.contains('\0'))
            .ok_or_else(|| Error::invalid("ADV boot-once", "must be 1 to 255 bytes, no NUL"))?;
        s[8] = ADV_BOOTONCE;
        s[9] = len;
        s[10..10 + cmd.len()].copy_from_slice(cmd.as_bytes());
    }
    let c = adv_checksum(&s);
    s[4..8].copy_from_slice(&c.to_le_bytes());
    let mut out = [0u8; ADV_LEN];
    out[..ADV_SECTOR].copy_from_slice(&s);
    out[ADV_SECTOR..].copy_from_slice(&s);
    Ok(out)
}

/// The boot-once command of an ADV (the first valid copy), `None` when unset.
pub fn adv_boot_once(adv: &[u8]) -> Result<Option<String>> {
    if adv.len() != ADV_LEN {
        return Err(Error::invalid("ADV", "must be 1024 bytes"));
    }
    let sector = adv
        .chunks(ADV_SECTOR)
        .find(|s| {
            le32(s, 0) == ADV_MAGIC1
                && le32(s, ADV_SECTOR - 4) == ADV_MAGIC3
                && le32(s, 4) == adv_checksum(s)
        })
        .ok_or_else(|| Error::invalid("ADV", "no copy with valid magic and checksum"))?;
    let data = &sector[8..8 + ADV_DATA];
    let mut i = 0;
    while i + 2 <= data.len() && data[i] != 0 {
        let (tag, len) = (data[i], usize::from(data[i + 1]));
        let v = data
            .get(i + 2..i + 2 + len)
            .ok_or_else(|| Error::invalid("ADV", format!("record at {i} runs past the end")))?;
        if tag == ADV_BOOTONCE {
            return Ok(Some(String::from_utf8_lossy(v).into_owned()));
        }
        i += 2 + len;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grubenv_round_trip() {
        let b = grubenv_encode(&[(GRUB_ONCE_VAR, "B")]).unwrap();
        assert!(b.starts_with(b"# GRUB Environment Block\ngodwit_once=B\n#"));
        assert_eq!(
            grubenv_parse(&b).unwrap(),
            vec![("godwit_once".into(), "B".into())]
        );
        let empty = grubenv_encode(&[]).unwrap();
        assert!(grubenv_parse(&empty).unwrap().is_empty());
        assert!(grubenv_encode(&[("a b", "x")]).is_err());
        assert!(grubenv_encode(&[("a", "x\ny")]).is_err());
        assert!(grubenv_encode(&[("a", &"x".repeat(1100))]).is_err());
        assert!(grubenv_parse(&b[..100]).is_err());
        assert!(grubenv_parse(&[b'#'; 1024]).is_err());
    }

    /// The empty ADV `syslinux --install` writes (checksum = MAGIC2 over zero data).
    #[test]
    fn empty_adv_matches_syslinux() {
        let a = adv_encode(None).unwrap();
        assert_eq!(&a[..8], &[0xa5, 0x2f, 0x2d, 0x5a, 0x67, 0x17, 0x04, 0xa3]);
        assert_eq!(&a[508..512], &[0x64, 0xbf, 0x28, 0xdd]);
        assert_eq!(a[..512], a[512..]);
        assert_eq!(adv_boot_once(&a).unwrap(), None);
    }

    #[test]
    fn adv_damage_is_refused_or_the_other_copy_used() {
        let mut a = adv_encode(Some("trial-B")).unwrap();
        a[20] ^= 1;
        assert_eq!(adv_boot_once(&a).unwrap().as_deref(), Some("trial-B"));
        a[520] ^= 1;
        assert!(adv_boot_once(&a).is_err());
        assert!(adv_boot_once(&a[..512]).is_err());
        assert!(adv_encode(Some("")).is_err());
        assert!(adv_encode(Some(&"x".repeat(256))).is_err());
    }

    proptest! {
        #[test]
        fn adv_round_trip(cmd in "[a-zA-Z0-9 =._-]{1,255}") {
            let a = adv_encode(Some(&cmd)).unwrap();
            prop_assert_eq!(adv_boot_once(&a).unwrap(), Some(cmd));
        }

        #[test]
        fn adv_parse_never_panics(b in proptest::collection::vec(any::<u8>(), 1024)) {
            let _ = adv_boot_once(&b);
        }
    }
}
