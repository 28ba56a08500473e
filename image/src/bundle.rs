//! Signed update bundles for the appliance's A/B system slots.
//!
//! Layout: `GODWITUB` | header length (u32 LE) | header (JSON: format, version, files with
//! name, size, SHA-256) | Ed25519 signature (64 bytes) over `CONTEXT || header` | the files'
//! bytes in header order. The signature covers the hashes, so one check of the signature
//! plus a hash per file (computed while streaming) authenticates every byte. Nothing is
//! written to its final name before its hash matched.

use crate::{Error, Result};
use ring::digest::{Context, SHA256};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"GODWITUB";
const CONTEXT: &[u8] = b"godwit-update-bundle-v1\0";
const MAX_HEADER: u32 = 64 * 1024;
/// Files a bundle may carry: one system slot's contents.
pub const SLOT_FILES: &[&str] = &["vmlinuz", "initrd.img"];
/// Largest file accepted (a slot holds a kernel and an initramfs).
pub const MAX_FILE: u64 = 256 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub version: String,
    pub files: Vec<FileEntry>,
}

/// A new Ed25519 signing key (PKCS#8 DER). Dev builds keep it locally; it is never committed.
pub fn generate_key() -> Result<Vec<u8>> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| Error::invalid("signing key", "generation failed"))
}

fn keypair(pkcs8: &[u8]) -> Result<Ed25519KeyPair> {
    Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|e| Error::invalid("signing key", format!("not an Ed25519 PKCS#8 key: {e}")))
}

/// The public key (32 bytes) of a PKCS#8 signing key.
pub fn public_key(pkcs8: &[u8]) -> Result<[u8; 32]> {
    let kp = keypair(pkcs8)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(kp.public_key().as_ref());
    Ok(out)
}

/// Parse a public key file: 64 hex digits (whitespace around allowed).
pub fn parse_public_key(text: &str) -> Result<[u8; 32]> {
    let v = hex::decode(text.trim())
        .map_err(|e| Error::invalid("update public key", format!("not hex: {e}")))?;
    v.try_into()
        .map_err(|_| Error::invalid("update public key", "is not 32 bytes"))
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if r == 0 {
            break;
        }
        ctx.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex::encode(ctx.finish().as_ref())))
}

/// Write a bundle of `files` (name, path) signed with `pkcs8`.
pub fn write(
    out: &mut dyn Write,
    pkcs8: &[u8],
    version: &str,
    files: &[(&str, &Path)],
) -> Result<Header> {
    let kp = keypair(pkcs8)?;
    let mut entries = Vec::new();
    for (name, path) in files {
        if !SLOT_FILES.contains(name) {
            return Err(Error::invalid(
                "bundle",
                format!("{name} is not a slot file ({})", SLOT_FILES.join(", ")),
            ));
        }
        let (size, sha256) = sha256_file(path)?;
        entries.push(FileEntry {
            name: name.to_string(),
            size,
            sha256,
        });
    }
    let header = Header {
        format: 1,
        version: version.to_string(),
        files: entries,
    };
    let hjson =
        serde_json::to_vec(&header).map_err(|e| Error::invalid("bundle header", e.to_string()))?;
    let sig = kp.sign(&[CONTEXT, &hjson].concat());
    let werr = |e| Error::io("bundle output", e);
    out.write_all(MAGIC).map_err(werr)?;
    out.write_all(&u32::try_from(hjson.len()).unwrap_or(u32::MAX).to_le_bytes())
        .map_err(werr)?;
    out.write_all(&hjson).map_err(werr)?;
    out.write_all(sig.as_ref()).map_err(werr)?;
    for (_, path) in files {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        std::io::copy(&mut f, out).map_err(werr)?;
    }
    Ok(header)
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf)
        .map_err(|e| Error::invalid("bundle", format!("{what}: {e}")))
}

/// Read and authenticate a bundle's header (magic, size bounds, signature by `public_key`).
pub fn read_header(r: &mut dyn Read, public_key: &[u8; 32]) -> Result<Header> {
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic, "magic")?;
    if &magic != MAGIC {
        return Err(Error::invalid(
            "bundle",
            "not a Godwit update bundle (bad magic)",
        ));
    }
    let mut len = [0u8; 4];
    read_exact(r, &mut len, "header length")?;
    let len = u32::from_le_bytes(len);
    if len == 0 || len > MAX_HEADER {
        return Err(Error::invalid(
            "bundle",
            format!("header length {len} is not 1..{MAX_HEADER}"),
        ));
    }
    let mut hjson = vec![0u8; usize::try_from(len).unwrap_or(0)];
    read_exact(r, &mut hjson, "header")?;
    let mut sig = [0u8; 64];
    read_exact(r, &mut sig, "signature")?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&[CONTEXT, &hjson].concat(), &sig)
        .map_err(|_| {
            Error::invalid(
                "bundle",
                "signature does not verify with this appliance's update key",
            )
        })?;
    let header: Header = serde_json::from_slice(&hjson)
        .map_err(|e| Error::invalid("bundle header", e.to_string()))?;
    if header.format != 1 {
        return Err(Error::invalid(
            "bundle",
            format!("format {} is not supported", header.format),
        ));
    }
    let mut names: Vec<&str> = header.files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = SLOT_FILES.to_vec();
    want.sort_unstable();
    if names != want {
        return Err(Error::invalid(
            "bundle",
            format!("carries {names:?}, a slot needs exactly {want:?}"),
        ));
    }
    if let Some(f) = header.files.iter().find(|f| f.size > MAX_FILE) {
        return Err(Error::invalid(
            "bundle",
            format!("{} is {} bytes, more than {MAX_FILE}", f.name, f.size),
        ));
    }
    Ok(header)
}

/// The most bytes a bundle can have: magic, header length, the largest header, the signature
/// and one file of at most [`MAX_FILE`] per slot file.
pub const MAX_BUNDLE: u64 = 8 + 4 + 64 * 1024 + 64 + MAX_FILE * 2;
const _: () = assert!(MAX_HEADER == 64 * 1024 && SLOT_FILES.len() == 2);

/// Verify a whole bundle without writing anything: the signed header, each file's SHA-256
/// (streamed) and no trailing bytes. What `verify_and_extract` checks, for an upload that is
/// only to be accepted or refused before anything is installed.
pub fn verify(r: &mut dyn Read, public_key: &[u8; 32]) -> Result<Header> {
    let header = read_header(r, public_key)?;
    let mut buf = vec![0u8; 1 << 20];
    for f in &header.files {
        let mut ctx = Context::new(&SHA256);
        let mut left = f.size;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            read_exact(
                r,
                &mut buf[..want],
                &format!("{} (bundle truncated)", f.name),
            )?;
            ctx.update(&buf[..want]);
            left -= want as u64;
        }
        let got = hex::encode(ctx.finish().as_ref());
        if got != f.sha256 {
            return Err(Error::invalid(
                "bundle",
                format!(
                    "{}: SHA-256 is {got}, the signed header says {}",
                    f.name, f.sha256
                ),
            ));
        }
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)
        .map_err(|e| Error::invalid("bundle", e.to_string()))?
        != 0
    {
        return Err(Error::invalid(
            "bundle",
            "trailing bytes after the last file",
        ));
    }
    Ok(header)
}

/// Verify a whole bundle and extract its files into `dest` (which must exist). Each file is
/// streamed to `NAME.partial` while hashed and renamed only when its SHA-256 matches; on
/// any failure every file written is removed. Trailing bytes are refused.
pub fn verify_and_extract(r: &mut dyn Read, public_key: &[u8; 32], dest: &Path) -> Result<Header> {
    let header = read_header(r, public_key)?;
    let mut done: Vec<std::path::PathBuf> = Vec::new();
    let result = (|| -> Result<()> {
        for f in &header.files {
            let partial = dest.join(format!("{}.partial", f.name));
            done.push(partial.clone());
            let mut out = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
            let mut ctx = Context::new(&SHA256);
            let mut left = f.size;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                read_exact(
                    r,
                    &mut buf[..want],
                    &format!("{} (bundle truncated)", f.name),
                )?;
                ctx.update(&buf[..want]);
                out.write_all(&buf[..want])
                    .map_err(|e| Error::io(&partial, e))?;
                left -= want as u64;
            }
            out.sync_all().map_err(|e| Error::io(&partial, e))?;
            let got = hex::encode(ctx.finish().as_ref());
            if got != f.sha256 {
                return Err(Error::invalid(
                    "bundle",
                    format!(
                        "{}: SHA-256 is {got}, the signed header says {}",
                        f.name, f.sha256
                    ),
                ));
            }
        }
        let mut extra = [0u8; 1];
        if r.read(&mut extra)
            .map_err(|e| Error::invalid("bundle", e.to_string()))?
            != 0
        {
            return Err(Error::invalid(
                "bundle",
                "trailing bytes after the last file",
            ));
        }
        for f in &header.files {
            let partial = dest.join(format!("{}.partial", f.name));
            let fin = dest.join(&f.name);
            std::fs::rename(&partial, &fin).map_err(|e| Error::io(&fin, e))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in done {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path, key: &[u8]) -> Vec<u8> {
        std::fs::write(dir.join("k"), vec![1u8; 3000]).unwrap();
        std::fs::write(dir.join("i"), vec![2u8; 5000]).unwrap();
        let mut out = Vec::new();
        write(
            &mut out,
            key,
            "9.9.9",
            &[("vmlinuz", &dir.join("k")), ("initrd.img", &dir.join("i"))],
        )
        .unwrap();
        out
    }

    #[test]
    fn signed_bundle_extracts() {
        let t = tempfile::tempdir().unwrap();
        let key = generate_key().unwrap();
        let b = make(t.path(), &key);
        let dest = t.path().join("slot");
        std::fs::create_dir(&dest).unwrap();
        let h = verify_and_extract(&mut b.as_slice(), &public_key(&key).unwrap(), &dest).unwrap();
        assert_eq!(h.version, "9.9.9");
        assert_eq!(
            std::fs::read(dest.join("vmlinuz")).unwrap(),
            vec![1u8; 3000]
        );
        assert_eq!(
            std::fs::read(dest.join("initrd.img")).unwrap(),
            vec![2u8; 5000]
        );
    }

    #[test]
    fn tampering_is_refused_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let key = generate_key().unwrap();
        let pk = public_key(&key).unwrap();
        let b = make(t.path(), &key);
        let dest = t.path().join("slot");
        std::fs::create_dir(&dest).unwrap();
        // Payload byte flipped: the hash check catches it.
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = verify_and_extract(&mut bad.as_slice(), &pk, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("initrd.img: SHA-256"), "{e}");
        assert_eq!(
            std::fs::read_dir(&dest).unwrap().count(),
            0,
            "nothing left behind"
        );
        // Header byte flipped: the signature check catches it.
        let mut bad = b.clone();
        bad[20] ^= 1;
        let e = verify_and_extract(&mut bad.as_slice(), &pk, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("signature") || e.contains("header"), "{e}");
        // Another key.
        let other = public_key(&generate_key().unwrap()).unwrap();
        let e = verify_and_extract(&mut b.as_slice(), &other, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("signature does not verify"), "{e}");
        // Truncated and extended.
        let e = verify_and_extract(&mut &b[..b.len() - 10], &pk, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut long = b.clone();
        long.push(0);
        let e = verify_and_extract(&mut long.as_slice(), &pk, &dest)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing"), "{e}");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    }

    /// `verify` accepts what `verify_and_extract` accepts and refuses the same tampering,
    /// writing nothing.
    #[test]
    fn verify_without_extracting() {
        let t = tempfile::tempdir().unwrap();
        let key = generate_key().unwrap();
        let pk = public_key(&key).unwrap();
        let b = make(t.path(), &key);
        let h = verify(&mut b.as_slice(), &pk).unwrap();
        assert_eq!(h.version, "9.9.9");
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = verify(&mut bad.as_slice(), &pk).unwrap_err().to_string();
        assert!(e.contains("initrd.img: SHA-256"), "{e}");
        let other = public_key(&generate_key().unwrap()).unwrap();
        let e = verify(&mut b.as_slice(), &other).unwrap_err().to_string();
        assert!(e.contains("signature does not verify"), "{e}");
        let e = verify(&mut &b[..b.len() - 10], &pk)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut long = b.clone();
        long.push(0);
        let e = verify(&mut long.as_slice(), &pk).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
        assert!(u64::try_from(b.len()).unwrap() < MAX_BUNDLE);
    }

    #[test]
    fn header_bounds() {
        let pk = [0u8; 32];
        assert!(read_header(&mut &b"NOTABUND"[..], &pk).is_err());
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = read_header(&mut b.as_slice(), &pk).unwrap_err().to_string();
        assert!(e.contains("header length"), "{e}");
        assert!(parse_public_key("zz").is_err());
        assert!(parse_public_key(&"ab".repeat(31)).is_err());
        assert_eq!(parse_public_key(&"ab".repeat(32)).unwrap(), [0xab; 32]);
    }
}
