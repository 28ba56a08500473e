//! The chunk file: a 48-byte header and the (usually zstd-compressed) bytes of one chunk.
//! The same bytes are stored in every backend and carried in `PutChunk`/`ChunkData` frames,
//! so a chunk is compressed once on the connector and verified by whoever stores or reads it.
//!
//! ```text
//! 0   4  magic "GWCK"
//! 4   1  version (1)
//! 5   1  compression: 0 none, 1 zstd
//! 6   2  reserved, zero
//! 8   4  uncompressed length, big-endian, 1..=MAX_CHUNK_SIZE
//! 12  4  payload length, big-endian
//! 16  32 SHA-256 of the uncompressed bytes
//! 48  .. payload
//! ```

use crate::digest::ChunkDigest;
use crate::error::{Error, Result};

pub const CHUNK_MAGIC: [u8; 4] = *b"GWCK";
pub const CHUNK_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;
/// [`HEADER_LEN`] as a `u32`.
pub const HEADER_LEN_U32: u32 = 48;
/// Largest chunk any index may use (and so the largest uncompressed chunk anyone decodes).
pub const MAX_CHUNK_SIZE: u32 = 8 << 20;
/// Smallest chunk size an index may use.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// The default chunk size: 4 MiB, offset-aligned.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// Largest encoded chunk: a stored (uncompressed) chunk plus its header.
pub const MAX_ENCODED_CHUNK: usize = MAX_CHUNK_SIZE as usize + HEADER_LEN;
/// zstd level used by the connector: fast, and still halves typical guest data.
pub const ZSTD_LEVEL: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub compression: Compression,
    pub uncompressed_len: u32,
    pub payload_len: u32,
    pub digest: ChunkDigest,
}

impl ChunkHeader {
    /// Parse the first [`HEADER_LEN`] bytes of `bytes`. Pure; a fuzz entry point.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ChunkHeader> {
        let h = bytes.get(..HEADER_LEN).ok_or_else(|| {
            Error::malformed(
                what,
                0,
                format!(
                    "{} bytes, shorter than the 48-byte chunk header",
                    bytes.len()
                ),
            )
        })?;
        if h[0..4] != CHUNK_MAGIC {
            return Err(Error::malformed(
                what,
                0,
                "not a chunk file (magic is not GWCK)",
            ));
        }
        if h[4] != CHUNK_VERSION {
            return Err(Error::malformed(
                what,
                4,
                format!(
                    "chunk format version {} (this build reads {CHUNK_VERSION})",
                    h[4]
                ),
            ));
        }
        let compression = match h[5] {
            0 => Compression::None,
            1 => Compression::Zstd,
            c => {
                return Err(Error::malformed(
                    what,
                    5,
                    format!("unknown compression {c}"),
                ));
            }
        };
        if h[6] != 0 || h[7] != 0 {
            return Err(Error::malformed(what, 6, "reserved bytes are not zero"));
        }
        let uncompressed_len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if uncompressed_len == 0 || uncompressed_len > MAX_CHUNK_SIZE {
            return Err(Error::malformed(
                what,
                8,
                format!("uncompressed length {uncompressed_len} outside 1..={MAX_CHUNK_SIZE}"),
            ));
        }
        let payload_len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        if compression == Compression::None && payload_len != uncompressed_len {
            return Err(Error::malformed(
                what,
                12,
                "stored chunk whose payload length differs from its length",
            ));
        }
        if payload_len > MAX_CHUNK_SIZE {
            return Err(Error::malformed(
                what,
                12,
                format!("payload length {payload_len} above {MAX_CHUNK_SIZE}"),
            ));
        }
        let mut d = [0u8; 32];
        d.copy_from_slice(&h[16..48]);
        Ok(ChunkHeader {
            compression,
            uncompressed_len,
            payload_len,
            digest: ChunkDigest(d),
        })
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&CHUNK_MAGIC);
        h[4] = CHUNK_VERSION;
        h[5] = self.compression as u8;
        h[8..12].copy_from_slice(&self.uncompressed_len.to_be_bytes());
        h[12..16].copy_from_slice(&self.payload_len.to_be_bytes());
        h[16..48].copy_from_slice(&self.digest.0);
        h
    }
}

/// Whether every byte is zero (fast path: compare 16-byte words).
pub fn is_zero(data: &[u8]) -> bool {
    let (words, rest) = data.split_at(data.len() - data.len() % 16);
    words
        .chunks_exact(16)
        .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && rest.iter().all(|&b| b == 0)
}

/// Compress one chunk whose digest is already known. Falls back to storing when zstd does not
/// shrink it.
pub fn encode_chunk_with(data: &[u8], digest: ChunkDigest, level: i32) -> Result<Vec<u8>> {
    let len = u32::try_from(data.len())
        .ok()
        .filter(|&l| (1..=MAX_CHUNK_SIZE).contains(&l))
        .ok_or_else(|| {
            Error::Usage(format!(
                "chunk of {} bytes is outside 1..={MAX_CHUNK_SIZE}",
                data.len()
            ))
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + data.len() + 64);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut compression = Compression::None;
    let bound = zstd::zstd_safe::compress_bound(data.len());
    out.resize(HEADER_LEN + bound, 0);
    match zstd::bulk::compress_to_buffer(data, &mut out[HEADER_LEN..], level) {
        Ok(n) if n < data.len() => {
            out.truncate(HEADER_LEN + n);
            compression = Compression::Zstd;
        }
        _ => {
            out.truncate(HEADER_LEN);
            out.extend_from_slice(data);
        }
    }
    let payload_len = u32::try_from(out.len() - HEADER_LEN).unwrap_or(len);
    let header = ChunkHeader {
        compression,
        uncompressed_len: len,
        payload_len,
        digest,
    };
    out[..HEADER_LEN].copy_from_slice(&header.encode());
    Ok(out)
}

/// Hash and compress one chunk: returns its name and its chunk-file bytes.
pub fn encode_chunk(data: &[u8]) -> Result<(ChunkDigest, Vec<u8>)> {
    let d = ChunkDigest::of(data);
    Ok((d, encode_chunk_with(data, d, ZSTD_LEVEL)?))
}

/// Decode and verify a chunk file: header well formed, payload length exact, decompresses to
/// exactly the stated length (never more is allocated), and hashes to the header's digest and
/// to `expect` when given. Pure; a fuzz entry point.
pub fn decode_chunk(bytes: &[u8], expect: Option<ChunkDigest>, what: &str) -> Result<Vec<u8>> {
    let h = ChunkHeader::parse(bytes, what)?;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != u64::from(h.payload_len) {
        return Err(Error::malformed(
            what,
            12,
            format!(
                "header says {} payload bytes, {} present",
                h.payload_len,
                payload.len()
            ),
        ));
    }
    if let Some(e) = expect
        && e != h.digest
    {
        return Err(Error::integrity(
            what,
            format!("header names chunk {}, expected {e}", h.digest),
        ));
    }
    let cap = usize::try_from(h.uncompressed_len).unwrap_or(0);
    let data = match h.compression {
        Compression::None => payload.to_vec(),
        Compression::Zstd => {
            let mut out = vec![0u8; cap];
            let n = zstd::bulk::decompress_to_buffer(payload, &mut out)
                .map_err(|e| Error::malformed(what, HEADER_LEN as u64, format!("zstd: {e}")))?;
            if n != cap {
                return Err(Error::malformed(
                    what,
                    8,
                    format!("decompressed to {n} bytes, header says {cap}"),
                ));
            }
            out
        }
    };
    let actual = ChunkDigest::of(&data);
    if actual != h.digest {
        return Err(Error::integrity(
            what,
            format!("content hashes to {actual}, not {}", h.digest),
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_compressible_and_random() {
        let a = vec![7u8; 100_000];
        let (d, enc) = encode_chunk(&a).unwrap();
        assert!(enc.len() < 1000);
        assert_eq!(decode_chunk(&enc, Some(d), "t").unwrap(), a);
        let b: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        let (d, enc) = encode_chunk(&b).unwrap();
        assert_eq!(decode_chunk(&enc, Some(d), "t").unwrap(), b);
    }

    #[test]
    fn detects_tampering_and_lies() {
        let (d, mut enc) = encode_chunk(&[1u8; 4096]).unwrap();
        // wrong expected digest
        assert!(matches!(
            decode_chunk(&enc, Some(ChunkDigest::of(b"x")), "t"),
            Err(Error::Integrity { .. })
        ));
        // lying uncompressed length
        enc[8..12].copy_from_slice(&(MAX_CHUNK_SIZE + 1).to_be_bytes());
        assert!(decode_chunk(&enc, Some(d), "t").is_err());
        enc[8..12].copy_from_slice(&4000u32.to_be_bytes());
        assert!(decode_chunk(&enc, Some(d), "t").is_err());
        enc[8..12].copy_from_slice(&4096u32.to_be_bytes());
        // flipped payload byte
        let last = enc.len() - 1;
        enc[last] ^= 0xff;
        assert!(decode_chunk(&enc, Some(d), "t").is_err());
        assert!(decode_chunk(&enc[..10], None, "t").is_err());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[17] = 1;
        assert!(!is_zero(&v));
    }

    proptest! {
        #[test]
        fn header_round_trip(comp in 0u8..2, ul in 1u32..=MAX_CHUNK_SIZE, pl in 0u32..=MAX_CHUNK_SIZE, d in any::<[u8; 32]>()) {
            let compression = if comp == 0 { Compression::None } else { Compression::Zstd };
            let pl = if compression == Compression::None { ul } else { pl };
            let h = ChunkHeader { compression, uncompressed_len: ul, payload_len: pl, digest: ChunkDigest(d) };
            prop_assert_eq!(ChunkHeader::parse(&h.encode(), "p").unwrap(), h);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_chunk(&bytes, None, "p");
        }
    }
}
