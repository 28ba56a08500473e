//! Content names: the SHA-256 of a chunk's uncompressed bytes, and certificate fingerprints.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fmt;

/// SHA-256 of a chunk's uncompressed bytes: the chunk's name in every store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    pub fn of(data: &[u8]) -> Self {
        ChunkDigest(Sha256::digest(data).into())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parse 64 hex digits (any case).
    pub fn parse_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| Error::Usage(format!("chunk digest {s:?}: {e}")))?;
        Ok(ChunkDigest(out))
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({})", self.to_hex())
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// SHA-256 of a DER certificate, as printed `SHA256:<hex>` and pinned by clients.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Accepts `SHA256:<hex>` or bare hex, with or without `:` separators, in any case.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        // The prefix in any case (issue 18: every input accepts any case).
        let t = match t.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("sha256:") => &t[7..],
            _ => t,
        };
        let hexs: String = t.chars().filter(|&c| c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hexs, &mut out).map_err(|_| {
            Error::Usage(format!(
                "fingerprint {s:?}: expected SHA256: followed by 64 hex digits (colons allowed)"
            ))
        })?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One format everywhere (issue 18): `SHA256:AB:CD:…`, as vCenter shows it.
        fmt::Display::fmt(&godwit_trust::Fingerprint(self.0), f)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Compare two secrets in time independent of where they differ (both are hashed first, so the
/// lengths do not leak either).
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    let ha: [u8; 32] = Sha256::digest(a).into();
    let hb: [u8; 32] = Sha256::digest(b).into();
    let mut diff = 0u8;
    for (x, y) in ha.iter().zip(hb.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_accepts_colons_case_and_prefix() {
        let fp = Fingerprint::of_der(b"cert");
        let plain = hex::encode(fp.0);
        let colons: Vec<String> = fp.0.iter().map(|b| format!("{b:02X}")).collect();
        for s in [
            fp.to_string(),
            plain.clone(),
            plain.to_uppercase(),
            colons.join(":"),
            format!("sha256:{}", colons.join(":")),
            format!("sHa256:{plain}"),
        ] {
            assert_eq!(Fingerprint::parse(&s).unwrap(), fp, "{s}");
        }
        assert!(Fingerprint::parse("SHA256:abcd").is_err());
        assert!(Fingerprint::parse(&format!("{plain}00")).is_err());
        // Shown in the one format (issue 18): upper-case pairs and colons, as vCenter does.
        assert_eq!(fp.to_string(), format!("SHA256:{}", colons.join(":")));
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }

    #[test]
    fn digest_hex_round_trip() {
        let d = ChunkDigest::of(b"hello");
        assert_eq!(ChunkDigest::parse_hex(&d.to_hex()).unwrap(), d);
        assert_eq!(
            d.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
