//! The OVA: a POSIX ustar archive holding the descriptor first, then the manifest, then the
//! disks (VMware tools require the `.ovf` to be the first member). Entries are written with
//! fixed owner, mode and time so two builds give the same bytes.

use crate::{Error, Result};
use std::io::{Read, Write};

const BLOCK: usize = 512;
/// Largest member a ustar header's 11 octal digits can describe (8 GiB - 1).
pub const MAX_MEMBER: u64 = (1 << 33) - 1;

/// A ustar header for a regular file.
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK]> {
    if name.is_empty() || name.len() > 100 || name.contains('/') || !name.is_ascii() {
        return Err(Error::invalid(
            "ova member",
            format!("{name:?} must be 1-100 ASCII bytes without '/'"),
        ));
    }
    if size > MAX_MEMBER {
        return Err(Error::invalid(
            "ova member",
            format!("{name} is {size} bytes; ustar holds at most {MAX_MEMBER}"),
        ));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(format!("{:011o}\0", mtime & 0o77_777_777_777).as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

/// Streams members into a ustar archive.
pub struct OvaWriter<W: Write> {
    out: W,
    mtime: u64,
    names: Vec<String>,
}

impl<W: Write> OvaWriter<W> {
    pub fn new(out: W, mtime: u64) -> Self {
        OvaWriter {
            out,
            mtime,
            names: Vec::new(),
        }
    }

    /// Append a member of exactly `size` bytes read from `data`.
    pub fn add(&mut self, name: &str, size: u64, data: &mut dyn Read) -> Result<()> {
        if self.names.iter().any(|n| n == name) {
            return Err(Error::invalid("ova member", format!("{name} added twice")));
        }
        let werr = |e| Error::io(format!("ova member {name}"), e);
        self.out
            .write_all(&header(name, size, self.mtime)?)
            .map_err(werr)?;
        let copied = std::io::copy(&mut data.take(size), &mut self.out).map_err(werr)?;
        if copied != size {
            return Err(Error::invalid(
                "ova member",
                format!("{name}: expected {size} bytes, source gave {copied}"),
            ));
        }
        let pad = (BLOCK - usize::try_from(size % BLOCK as u64).unwrap_or(0)) % BLOCK;
        self.out.write_all(&vec![0u8; pad]).map_err(werr)?;
        self.names.push(name.to_string());
        Ok(())
    }

    /// Write the end-of-archive marker (two zero blocks) and return the sink.
    pub fn finish(mut self) -> Result<W> {
        self.out
            .write_all(&[0u8; 2 * BLOCK])
            .map_err(|e| Error::io("ova end", e))?;
        self.out.flush().map_err(|e| Error::io("ova end", e))?;
        Ok(self.out)
    }
}

/// A member found by [`list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Offset of the member's data in the archive.
    pub offset: u64,
    pub size: u64,
}

fn octal(field: &[u8], what: &str) -> Result<u64> {
    let s: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| char::from(b))
        .collect();
    let s = s.trim_start_matches(' ');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8)
        .map_err(|_| Error::invalid("ova header", format!("{what} {s:?} is not octal")))
}

/// List the members of a ustar archive held in `bytes`, checking magic and checksums.
pub fn list(bytes: &[u8]) -> Result<Vec<Member>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(h) = bytes.get(pos..pos + BLOCK) else {
            return Err(Error::invalid(
                "ova",
                format!("archive ends at {pos} without an end marker"),
            ));
        };
        if h.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        if &h[257..263] != b"ustar\0" {
            return Err(Error::invalid(
                "ova",
                format!("header at {pos} has no ustar magic"),
            ));
        }
        let want = octal(&h[148..156], "checksum")?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != want {
            return Err(Error::invalid(
                "ova",
                format!("header at {pos}: checksum {want:o}, computed {sum:o}"),
            ));
        }
        let name: String = h[..100]
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| char::from(b))
            .collect();
        let size = octal(&h[124..136], "size")?;
        let data = pos + BLOCK;
        let end = u64::try_from(data).unwrap_or(u64::MAX).saturating_add(size);
        if end > bytes.len() as u64 {
            return Err(Error::invalid(
                "ova",
                format!("member {name} at {pos} runs past the end ({size} bytes)"),
            ));
        }
        out.push(Member {
            name,
            offset: data as u64,
            size,
        });
        let next = usize::try_from(end.div_ceil(BLOCK as u64) * BLOCK as u64)
            .map_err(|_| Error::invalid("ova", "member too large"))?;
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = OvaWriter::new(Vec::new(), 1_700_000_000);
        for (n, d) in members {
            w.add(n, d.len() as u64, &mut d.as_slice()).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn descriptor_first_and_listed_back() {
        let ova = build(&[
            ("a.ovf", b"<x/>".to_vec()),
            ("a.mf", vec![1; 512]),
            ("a.vmdk", vec![2; 1000]),
        ]);
        assert_eq!(ova.len() % 512, 0);
        assert_eq!(&ova[257..263], b"ustar\0");
        let m = list(&ova).unwrap();
        let names: Vec<_> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a.ovf", "a.mf", "a.vmdk"]);
        let d = &m[2];
        assert_eq!(
            &ova[usize::try_from(d.offset).unwrap()..][..1000],
            &vec![2; 1000][..]
        );
    }

    #[test]
    fn refuses_bad_names_sizes_and_short_sources() {
        assert!(header("dir/x", 1, 0).is_err());
        assert!(header(&"x".repeat(101), 1, 0).is_err());
        assert!(header("x", MAX_MEMBER + 1, 0).is_err());
        let mut w = OvaWriter::new(Vec::new(), 0);
        let err = w.add("x", 10, &mut &b"abc"[..]).unwrap_err();
        assert!(err.to_string().contains("source gave 3"), "{err}");
    }

    #[test]
    fn damaged_archives_are_refused() {
        let mut ova = build(&[("a.ovf", vec![7; 100])]);
        ova[10] ^= 1;
        assert!(list(&ova).unwrap_err().to_string().contains("checksum"));
        let ova = build(&[("a.ovf", vec![7; 100])]);
        assert!(list(&ova[..600]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(sizes in proptest::collection::vec(0usize..3000, 1..5)) {
            let members: Vec<(String, Vec<u8>)> = sizes.iter().enumerate()
                .map(|(i, &s)| (format!("m{i}"), vec![u8::try_from(i).unwrap(); s])).collect();
            let refs: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
            let ova = build(&refs);
            let m = list(&ova).unwrap();
            prop_assert_eq!(m.len(), members.len());
            for (got, (n, d)) in m.iter().zip(&members) {
                prop_assert_eq!(&got.name, n);
                let off = usize::try_from(got.offset).unwrap();
                prop_assert_eq!(&ova[off..off + d.len()], &d[..]);
            }
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = list(&data);
        }
    }
}
