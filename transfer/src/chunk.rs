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

/// zstd parameters of the connector's encoder, on top of [`ZSTD_LEVEL`]: level 1's `fast`
/// strategy with a window of a whole chunk (4 MiB), a 64 Ki-entry hash table and 5-byte
/// matches. On OS binaries cut into 4 MiB chunks this stores 9 % fewer bytes than plain level 1
/// (182 vs 201 MiB for 512 MiB) for about 10 % more CPU, and fewer bytes than level 2
/// (187 MiB), which costs more; measured with `zstd -b -B4194304` on the tests/bench image.
/// Any zstd decoder reads the frames (the window stays far below the 8 MiB decoders accept).
const ZSTD_WINDOW_LOG: u32 = 22;
const ZSTD_HASH_LOG: u32 = 16;
const ZSTD_MIN_MATCH: u32 = 5;

/// Incompressible chunks (random data, compressed or encrypted files) cost zstd time and save
/// nothing. [`SAMPLES`] pieces of [`SAMPLE_LEN`] bytes spread over the chunk are compressed
/// first; when none of them shrinks by at least 1/32, the chunk is stored uncompressed (a copy),
/// as zstd itself would have ended up doing. A chunk with any compressible sample is
/// compressed whole.
const SAMPLES: usize = 8;
const SAMPLE_LEN: usize = 8 << 10;

/// A zstd context per thread (allocating one per chunk costs more than compressing a small
/// chunk), with the scratch buffer it compresses into.
struct Encoder {
    level: i32,
    zstd: zstd::bulk::Compressor<'static>,
    sampler: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl Encoder {
    fn new(level: i32) -> std::io::Result<Encoder> {
        use zstd::zstd_safe::CParameter;
        let mut zstd = zstd::bulk::Compressor::new(level)?;
        if level == ZSTD_LEVEL {
            zstd.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
            zstd.set_parameter(CParameter::HashLog(ZSTD_HASH_LOG))?;
            zstd.set_parameter(CParameter::MinMatch(ZSTD_MIN_MATCH))?;
        }
        Ok(Encoder {
            level,
            zstd,
            sampler: zstd::bulk::Compressor::new(1)?,
            scratch: Vec::new(),
        })
    }

    /// Whether every sample of `data` is incompressible.
    fn incompressible(&mut self, data: &[u8]) -> bool {
        if data.len() < SAMPLES * SAMPLE_LEN * 4 {
            return false;
        }
        let need = zstd::zstd_safe::compress_bound(SAMPLE_LEN);
        if self.scratch.len() < need {
            self.scratch.resize(need, 0);
        }
        let step = (data.len() - SAMPLE_LEN) / (SAMPLES - 1);
        (0..SAMPLES).all(|k| {
            let at = k * step;
            let sample = &data[at..at + SAMPLE_LEN];
            self.sampler
                .compress_to_buffer(sample, &mut self.scratch[..need])
                .is_ok_and(|n| n >= SAMPLE_LEN - SAMPLE_LEN / 32)
        })
    }

    /// The zstd payload of `data`, when it is smaller than `data`.
    fn compress(&mut self, data: &[u8]) -> Option<&[u8]> {
        if self.incompressible(data) {
            return None;
        }
        let bound = zstd::zstd_safe::compress_bound(data.len());
        if self.scratch.len() < bound {
            self.scratch.resize(bound, 0);
        }
        match self
            .zstd
            .compress_to_buffer(data, &mut self.scratch[..bound])
        {
            Ok(n) if n < data.len() => Some(&self.scratch[..n]),
            _ => None,
        }
    }
}

thread_local! {
    static ENCODER: std::cell::RefCell<Option<Encoder>> = const { std::cell::RefCell::new(None) };
}

/// Compress one chunk whose digest is already known. Stores it uncompressed when zstd does not
/// shrink it (or when samples show it would not).
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
    ENCODER.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|e| e.level != level) {
            *cell = Some(
                Encoder::new(level)
                    .map_err(|e| Error::Usage(format!("zstd level {level}: {e}")))?,
            );
        }
        let enc = cell
            .as_mut()
            .ok_or_else(|| Error::Usage("zstd encoder".into()))?;
        let (compression, payload) = match enc.compress(data) {
            Some(z) => (Compression::Zstd, z),
            None => (Compression::None, data),
        };
        let header = ChunkHeader {
            compression,
            uncompressed_len: len,
            payload_len: u32::try_from(payload.len()).unwrap_or(len),
            digest,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(payload);
        Ok(out)
    })
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
    fn random_chunks_are_stored_and_compressible_ones_compressed() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let (d, enc) = encode_chunk(&random).unwrap();
        let h = ChunkHeader::parse(&enc, "t").unwrap();
        assert_eq!(h.compression, Compression::None);
        assert_eq!(enc.len(), HEADER_LEN + random.len());
        assert_eq!(decode_chunk(&enc, Some(d), "t").unwrap(), random);
        // Random except for one compressible stretch under a sample: compressed whole.
        let mut mixed = random.clone();
        mixed[..64 << 10].fill(b'a');
        let (d, enc) = encode_chunk(&mixed).unwrap();
        assert_eq!(
            ChunkHeader::parse(&enc, "t").unwrap().compression,
            Compression::Zstd
        );
        assert!(enc.len() < mixed.len());
        assert_eq!(decode_chunk(&enc, Some(d), "t").unwrap(), mixed);
        // Another level on the same thread gets its own context.
        let text = b"godwit chunk ".repeat(1 << 16);
        let enc3 = encode_chunk_with(&text, ChunkDigest::of(&text), 3).unwrap();
        assert_eq!(decode_chunk(&enc3, None, "t").unwrap(), text);
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
