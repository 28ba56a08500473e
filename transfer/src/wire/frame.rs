//! Frames of the staging protocol (docs/wire-protocol.md). Pure: [`parse`] reads one frame from
//! the front of a byte slice, [`Frame::encode`] writes one. Every length is checked against the
//! bytes present and against fixed limits before anything is allocated.
//!
//! ```text
//! u32 length (big-endian) of what follows, 1..=MAX_FRAME
//! u8  frame type
//! ... body (fields below; strings are u16 length + UTF-8, byte blobs u32 length + bytes)
//! ```

use crate::codec::{ReadExt, put_blob32, put_str16};
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use godwit_cursor::Reader;

/// Protocol versions this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest frame body: one encoded chunk of the largest size plus a little.
pub const MAX_FRAME: u32 = crate::chunk::MAX_CHUNK_SIZE + crate::chunk::HEADER_LEN_U32 + 1024;
/// Most digests in one `Have` question.
pub const MAX_HAVE: usize = 4096;
/// Largest index part in `PutIndex` / `IndexData`.
pub const INDEX_PART: usize = 4 << 20;
/// Most sync ids in one `SyncList`.
pub const MAX_SYNCS: usize = 10_000;
/// Bytes the client sends first (in the TLS stream) so a stray client is spotted at once.
pub const HELLO_MAGIC: [u8; 8] = *b"GODWIT1\n";

/// Why a request failed or the server refused the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    BadToken = 1,
    BadVersion = 2,
    BadRequest = 3,
    BadChunk = 4,
    NotFound = 5,
    Busy = 6,
    Internal = 7,
    /// A commit names chunks the store does not hold (any more): ask `Have` again, send them.
    MissingChunks = 8,
    /// The token is good but this VM belongs to another connector.
    Forbidden = 9,
}

impl ErrorCode {
    fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::BadToken,
            2 => ErrorCode::BadVersion,
            3 => ErrorCode::BadRequest,
            4 => ErrorCode::BadChunk,
            5 => ErrorCode::NotFound,
            6 => ErrorCode::Busy,
            8 => ErrorCode::MissingChunks,
            9 => ErrorCode::Forbidden,
            _ => ErrorCode::Internal,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Client → server, first frame: versions spoken and the pairing token.
    Hello {
        magic: [u8; 8],
        min_version: u16,
        max_version: u16,
        token: String,
    },
    /// Server → client: accepted; the version chosen, the chunk window the server allows, and
    /// the connector the token was issued for.
    Welcome {
        version: u16,
        window: u32,
        connector: String,
    },
    /// Server → client, then close: refused (wrong token, version, protocol violation).
    Refused {
        code: ErrorCode,
        message: String,
    },
    Have {
        id: u32,
        digests: Vec<ChunkDigest>,
    },
    HaveReply {
        id: u32,
        have: Vec<bool>,
    },
    PutChunk {
        id: u32,
        digest: ChunkDigest,
        data: Vec<u8>,
    },
    Stored {
        id: u32,
    },
    GetChunk {
        id: u32,
        digest: ChunkDigest,
    },
    ChunkData {
        id: u32,
        data: Vec<u8>,
    },
    ListSyncs {
        id: u32,
        vm: String,
        disk: u32,
    },
    SyncList {
        id: u32,
        syncs: Vec<String>,
    },
    GetIndex {
        id: u32,
        vm: String,
        disk: u32,
        sync: String,
    },
    /// A part of an index; the reply to `GetIndex` (several parts, same id), or (`PutIndex`)
    /// the client's upload, committed when `offset + data.len() == total`.
    IndexData {
        id: u32,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    },
    PutIndex {
        id: u32,
        total: u64,
        offset: u64,
        data: Vec<u8>,
    },
    Committed {
        id: u32,
        sync: String,
    },
    BeginSync {
        id: u32,
        vm: String,
        disk: u32,
    },
    SyncBegun {
        id: u32,
        lease: String,
    },
    EndSync {
        id: u32,
        lease: String,
    },
    Done {
        id: u32,
    },
    Failed {
        id: u32,
        code: ErrorCode,
        message: String,
    },
    /// Client → server: how much room is left in the store? (A server older than this frame
    /// refuses it as an unknown type, code 3, and closes: the client reads that as unknown.)
    GetSpace {
        id: u32,
    },
    /// Server → client: the store's free and total bytes, or unknown (an S3 store).
    Space {
        id: u32,
        space: Option<crate::store::StoreSpace>,
    },
}

mod t {
    pub const HELLO: u8 = 1;
    pub const WELCOME: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const HAVE: u8 = 10;
    pub const HAVE_REPLY: u8 = 11;
    pub const PUT_CHUNK: u8 = 12;
    pub const STORED: u8 = 13;
    pub const GET_CHUNK: u8 = 14;
    pub const CHUNK_DATA: u8 = 15;
    pub const LIST_SYNCS: u8 = 16;
    pub const SYNC_LIST: u8 = 17;
    pub const GET_INDEX: u8 = 18;
    pub const INDEX_DATA: u8 = 19;
    pub const PUT_INDEX: u8 = 20;
    pub const COMMITTED: u8 = 21;
    pub const BEGIN_SYNC: u8 = 22;
    pub const SYNC_BEGUN: u8 = 23;
    pub const END_SYNC: u8 = 24;
    pub const DONE: u8 = 25;
    pub const FAILED: u8 = 26;
    pub const GET_SPACE: u8 = 27;
    pub const SPACE: u8 = 28;
}

/// Check a frame's 4-byte length prefix before reading (or allocating) its body.
pub fn check_length(prefix: [u8; 4]) -> Result<usize> {
    let n = u32::from_be_bytes(prefix);
    if n == 0 || n > MAX_FRAME {
        return Err(Error::malformed(
            "frame",
            0,
            format!("length {n} outside 1..={MAX_FRAME}"),
        ));
    }
    usize::try_from(n).map_err(|_| Error::malformed("frame", 0, "length does not fit in memory"))
}

/// Parse one frame from the front of `buf`. `Ok(None)`: more bytes needed (the length prefix has
/// already been checked). `Ok(Some((frame, used)))` otherwise. Pure; the fuzz entry point.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let n = check_length([prefix[0], prefix[1], prefix[2], prefix[3]])?;
    let Some(body) = buf.get(4..4 + n) else {
        return Ok(None);
    };
    Ok(Some((Frame::decode_body(body)?, 4 + n)))
}

/// The fuzz target's property: whatever parses as a frame encodes to bytes that parse to the
/// same frame (the encoding is canonical up to unused bitmap bits and unknown error codes).
/// Panics otherwise.
pub fn fuzz_round_trip(bytes: &[u8]) {
    if let Ok(Some((f, _))) = parse(bytes) {
        let again = f.to_bytes();
        assert_eq!(parse(&again).ok().flatten(), Some((f, again.len())));
    }
}

impl Frame {
    /// Decode a frame body (type byte and fields, without the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Frame> {
        let mut r = Reader::with_base(body, "frame", 4);
        let ty = r.u8("type")?;
        let f = match ty {
            t::HELLO => Frame::Hello {
                magic: r.array("magic")?,
                min_version: r.u16_be("min version")?,
                max_version: r.u16_be("max version")?,
                token: r.str16("token")?,
            },
            t::WELCOME => Frame::Welcome {
                version: r.u16_be("version")?,
                window: r.u32_be("window")?,
                connector: r.str16("connector")?,
            },
            t::REFUSED => Frame::Refused {
                code: ErrorCode::from_u16(r.u16_be("code")?),
                message: r.str16("message")?,
            },
            t::HAVE => {
                let id = r.u32_be("id")?;
                let n = r.count("digest count", MAX_HAVE, 32)?;
                let mut digests = Vec::with_capacity(n);
                for _ in 0..n {
                    digests.push(r.digest("digest")?);
                }
                Frame::Have { id, digests }
            }
            t::HAVE_REPLY => {
                let id = r.u32_be("id")?;
                let n = r.count("answer count", MAX_HAVE, 0)?;
                let bits = r.take(n.div_ceil(8), "answer bitmap")?;
                let have = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
                Frame::HaveReply { id, have }
            }
            t::PUT_CHUNK => Frame::PutChunk {
                id: r.u32_be("id")?,
                digest: r.digest("digest")?,
                data: r.blob32("chunk")?,
            },
            t::STORED => Frame::Stored {
                id: r.u32_be("id")?,
            },
            t::GET_CHUNK => Frame::GetChunk {
                id: r.u32_be("id")?,
                digest: r.digest("digest")?,
            },
            t::CHUNK_DATA => Frame::ChunkData {
                id: r.u32_be("id")?,
                data: r.blob32("chunk")?,
            },
            t::LIST_SYNCS => Frame::ListSyncs {
                id: r.u32_be("id")?,
                vm: r.str16("vm")?,
                disk: r.u32_be("disk")?,
            },
            t::SYNC_LIST => {
                let id = r.u32_be("id")?;
                let n = r.count("sync count", MAX_SYNCS, 2)?;
                let mut syncs = Vec::with_capacity(n);
                for _ in 0..n {
                    syncs.push(r.str16("sync id")?);
                }
                Frame::SyncList { id, syncs }
            }
            t::GET_INDEX => Frame::GetIndex {
                id: r.u32_be("id")?,
                vm: r.str16("vm")?,
                disk: r.u32_be("disk")?,
                sync: r.str16("sync")?,
            },
            t::INDEX_DATA | t::PUT_INDEX => {
                let id = r.u32_be("id")?;
                let total = r.u64_be("total")?;
                let offset = r.u64_be("offset")?;
                let data = r.blob32("index part")?;
                let end = offset.checked_add(data.len() as u64);
                if total > crate::index::MAX_INDEX_LEN as u64
                    || end.is_none_or(|e| e > total)
                    || data.len() > INDEX_PART
                {
                    return Err(Error::malformed(
                        "frame",
                        1,
                        format!(
                            "index part {offset}+{} of {total} bytes is out of range",
                            data.len()
                        ),
                    ));
                }
                if ty == t::PUT_INDEX {
                    Frame::PutIndex {
                        id,
                        total,
                        offset,
                        data,
                    }
                } else {
                    Frame::IndexData {
                        id,
                        total,
                        offset,
                        data,
                    }
                }
            }
            t::COMMITTED => Frame::Committed {
                id: r.u32_be("id")?,
                sync: r.str16("sync")?,
            },
            t::BEGIN_SYNC => Frame::BeginSync {
                id: r.u32_be("id")?,
                vm: r.str16("vm")?,
                disk: r.u32_be("disk")?,
            },
            t::SYNC_BEGUN => Frame::SyncBegun {
                id: r.u32_be("id")?,
                lease: r.str16("lease")?,
            },
            t::END_SYNC => Frame::EndSync {
                id: r.u32_be("id")?,
                lease: r.str16("lease")?,
            },
            t::DONE => Frame::Done {
                id: r.u32_be("id")?,
            },
            t::FAILED => Frame::Failed {
                id: r.u32_be("id")?,
                code: ErrorCode::from_u16(r.u16_be("code")?),
                message: r.str16("message")?,
            },
            t::GET_SPACE => Frame::GetSpace {
                id: r.u32_be("id")?,
            },
            t::SPACE => {
                let id = r.u32_be("id")?;
                let at = r.offset();
                let known = r.u8("known")?;
                let free_bytes = r.u64_be("free bytes")?;
                let total_bytes = r.u64_be("total bytes")?;
                let space = match known {
                    1 => Some(crate::store::StoreSpace {
                        free_bytes,
                        total_bytes,
                    }),
                    0 if free_bytes == 0 && total_bytes == 0 => None,
                    _ => {
                        return Err(Error::malformed(
                            "frame",
                            at,
                            format!(
                                "space: known is {known} with {free_bytes} free of {total_bytes}"
                            ),
                        ));
                    }
                };
                Frame::Space { id, space }
            }
            other => {
                return Err(Error::malformed(
                    "frame",
                    4,
                    format!("unknown frame type {other}"),
                ));
            }
        };
        if !r.at_end() {
            return Err(Error::malformed(
                "frame",
                r.offset(),
                format!("{} trailing bytes", r.left()),
            ));
        }
        Ok(f)
    }

    /// Append this frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello {
                magic,
                min_version,
                max_version,
                token,
            } => {
                out.push(t::HELLO);
                out.extend_from_slice(magic);
                out.extend_from_slice(&min_version.to_be_bytes());
                out.extend_from_slice(&max_version.to_be_bytes());
                put_str16(out, token);
            }
            Frame::Welcome {
                version,
                window,
                connector,
            } => {
                out.push(t::WELCOME);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&window.to_be_bytes());
                put_str16(out, connector);
            }
            Frame::Refused { code, message } => {
                out.push(t::REFUSED);
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                put_str16(out, message);
            }
            Frame::Have { id, digests } => {
                out.push(t::HAVE);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&u32::try_from(digests.len()).unwrap_or(0).to_be_bytes());
                for d in digests {
                    out.extend_from_slice(&d.0);
                }
            }
            Frame::HaveReply { id, have } => {
                out.push(t::HAVE_REPLY);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&u32::try_from(have.len()).unwrap_or(0).to_be_bytes());
                let mut bits = vec![0u8; have.len().div_ceil(8)];
                for (i, h) in have.iter().enumerate() {
                    if *h {
                        bits[i / 8] |= 1 << (i % 8);
                    }
                }
                out.extend_from_slice(&bits);
            }
            Frame::PutChunk { id, digest, data } => {
                out.push(t::PUT_CHUNK);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&digest.0);
                put_blob32(out, data);
            }
            Frame::Stored { id } => {
                out.push(t::STORED);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GetChunk { id, digest } => {
                out.push(t::GET_CHUNK);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&digest.0);
            }
            Frame::ChunkData { id, data } => {
                out.push(t::CHUNK_DATA);
                out.extend_from_slice(&id.to_be_bytes());
                put_blob32(out, data);
            }
            Frame::ListSyncs { id, vm, disk } => {
                out.push(t::LIST_SYNCS);
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(out, vm);
                out.extend_from_slice(&disk.to_be_bytes());
            }
            Frame::SyncList { id, syncs } => {
                out.push(t::SYNC_LIST);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&u32::try_from(syncs.len()).unwrap_or(0).to_be_bytes());
                for s in syncs {
                    put_str16(out, s);
                }
            }
            Frame::GetIndex { id, vm, disk, sync } => {
                out.push(t::GET_INDEX);
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(out, vm);
                out.extend_from_slice(&disk.to_be_bytes());
                put_str16(out, sync);
            }
            Frame::IndexData {
                id,
                total,
                offset,
                data,
            }
            | Frame::PutIndex {
                id,
                total,
                offset,
                data,
            } => {
                out.push(if matches!(self, Frame::PutIndex { .. }) {
                    t::PUT_INDEX
                } else {
                    t::INDEX_DATA
                });
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                put_blob32(out, data);
            }
            Frame::Committed { id, sync } => {
                out.push(t::COMMITTED);
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(out, sync);
            }
            Frame::BeginSync { id, vm, disk } => {
                out.push(t::BEGIN_SYNC);
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(out, vm);
                out.extend_from_slice(&disk.to_be_bytes());
            }
            Frame::SyncBegun { id, lease } | Frame::EndSync { id, lease } => {
                out.push(if matches!(self, Frame::SyncBegun { .. }) {
                    t::SYNC_BEGUN
                } else {
                    t::END_SYNC
                });
                out.extend_from_slice(&id.to_be_bytes());
                put_str16(out, lease);
            }
            Frame::Done { id } => {
                out.push(t::DONE);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::Failed { id, code, message } => {
                out.push(t::FAILED);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&(*code as u16).to_be_bytes());
                put_str16(out, message);
            }
            Frame::GetSpace { id } => {
                out.push(t::GET_SPACE);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::Space { id, space } => {
                out.push(t::SPACE);
                out.extend_from_slice(&id.to_be_bytes());
                let (known, free, total) =
                    space.map_or((0u8, 0, 0), |s| (1, s.free_bytes, s.total_bytes));
                out.push(known);
                out.extend_from_slice(&free.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
            }
        }
        let n = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&n.to_be_bytes());
    }

    /// The bytes of `PutChunk { id, digest, data }` without copying `data` into a frame first
    /// (the connector's hot path).
    pub fn put_chunk_bytes(id: u32, digest: &ChunkDigest, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 45);
        let n = u32::try_from(data.len() + 41).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.push(t::PUT_CHUNK);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&digest.0);
        put_blob32(&mut out, data);
        out
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        let d = ChunkDigest::of(b"x");
        vec![
            Frame::Hello {
                magic: HELLO_MAGIC,
                min_version: 1,
                max_version: 1,
                token: "tok".into(),
            },
            Frame::Welcome {
                version: 2,
                window: 8,
                connector: "site-a".into(),
            },
            Frame::Refused {
                code: ErrorCode::BadToken,
                message: "no".into(),
            },
            Frame::Have {
                id: 1,
                digests: vec![d, d],
            },
            Frame::HaveReply {
                id: 1,
                have: vec![true, false, true, true, false, false, false, false, true],
            },
            Frame::PutChunk {
                id: 2,
                digest: d,
                data: vec![1, 2, 3],
            },
            Frame::Stored { id: 2 },
            Frame::GetChunk { id: 3, digest: d },
            Frame::ChunkData {
                id: 3,
                data: vec![9; 10],
            },
            Frame::ListSyncs {
                id: 4,
                vm: "vm".into(),
                disk: 0,
            },
            Frame::SyncList {
                id: 4,
                syncs: vec!["a".into(), "b".into()],
            },
            Frame::GetIndex {
                id: 5,
                vm: "vm".into(),
                disk: 1,
                sync: "s".into(),
            },
            Frame::IndexData {
                id: 5,
                total: 10,
                offset: 5,
                data: vec![0; 5],
            },
            Frame::PutIndex {
                id: 6,
                total: 3,
                offset: 0,
                data: vec![0; 3],
            },
            Frame::Committed {
                id: 6,
                sync: "s".into(),
            },
            Frame::BeginSync {
                id: 7,
                vm: "vm".into(),
                disk: 2,
            },
            Frame::SyncBegun {
                id: 7,
                lease: "l".into(),
            },
            Frame::EndSync {
                id: 8,
                lease: "l".into(),
            },
            Frame::Done { id: 8 },
            Frame::Failed {
                id: 9,
                code: ErrorCode::BadChunk,
                message: "bad".into(),
            },
            Frame::GetSpace { id: 10 },
            Frame::Space {
                id: 10,
                space: Some(crate::store::StoreSpace {
                    free_bytes: 10 << 30,
                    total_bytes: u64::MAX,
                }),
            },
            Frame::Space {
                id: 11,
                space: None,
            },
        ]
    }

    /// The fuzz target's committed seed corpus (fuzz/corpus/transfer_wire) holds one encoded
    /// frame of every type, a PutChunk carrying a real compressed chunk, and the chunk alone, so
    /// the fuzzer starts from valid input of each kind. `GODWIT_BLESS_SEEDS=1` rewrites them.
    #[test]
    fn fuzz_seed_corpus_holds_every_frame_type() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/transfer_wire");
        let payload: Vec<u8> = (0..20_000u32)
            .map(|i| u8::try_from((i % 251) ^ (i / 97 % 256)).unwrap())
            .collect();
        let (digest, chunk) = crate::chunk::encode_chunk(&payload).unwrap();
        let mut seeds: Vec<(String, Vec<u8>)> = samples()
            .into_iter()
            .enumerate()
            .map(|(i, f)| (format!("frame-{i:02}.bin"), f.to_bytes()))
            .collect();
        let put = Frame::PutChunk {
            id: 42,
            digest,
            data: chunk.clone(),
        };
        seeds.push(("frame-putchunk-real.bin".into(), put.to_bytes()));
        seeds.push(("chunk-real.bin".into(), chunk));
        let bless = std::env::var_os("GODWIT_BLESS_SEEDS").is_some();
        for (name, bytes) in seeds {
            let path = dir.join(&name);
            if bless {
                std::fs::write(&path, &bytes).unwrap();
            }
            let have = std::fs::read(&path).unwrap_or_default();
            assert!(
                have == bytes,
                "{}: missing or stale seed (run GODWIT_BLESS_SEEDS=1 cargo test -p godwit-transfer fuzz_seed)",
                path.display()
            );
        }
    }

    #[test]
    fn space_answers_are_canonical() {
        // `unknown` carries zeros; anything else in `known`, or figures with `unknown`, is
        // refused, so each answer has one encoding.
        let mut b = Frame::Space { id: 1, space: None }.to_bytes();
        assert_eq!(b.len(), 4 + 1 + 4 + 1 + 16);
        b[9] = 2;
        assert!(parse(&b).is_err());
        b[9] = 0;
        b[17] = 1;
        assert!(parse(&b).is_err());
        let trailing = {
            let mut t = Frame::GetSpace { id: 3 }.to_bytes();
            t.push(0);
            t[3] += 1;
            t
        };
        assert!(parse(&trailing).is_err());
    }

    #[test]
    fn every_frame_round_trips() {
        for f in samples() {
            let b = f.to_bytes();
            assert_eq!(parse(&b).unwrap(), Some((f.clone(), b.len())), "{f:?}");
            assert_eq!(parse(&b[..b.len() - 1]).unwrap(), None);
        }
    }

    #[test]
    fn put_chunk_fast_path_matches_the_encoder() {
        let d = ChunkDigest::of(b"z");
        let f = Frame::PutChunk {
            id: 77,
            digest: d,
            data: vec![3; 1000],
        };
        assert_eq!(Frame::put_chunk_bytes(77, &d, &[3; 1000]), f.to_bytes());
    }

    #[test]
    fn lying_lengths_are_refused_early() {
        assert!(parse(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse(&[0, 0, 0, 0]).is_err());
        // A Have that claims 4096 digests but carries one.
        let mut b = Frame::Have {
            id: 1,
            digests: vec![ChunkDigest::of(b"")],
        }
        .to_bytes();
        b[9..13].copy_from_slice(&4096u32.to_be_bytes());
        assert!(parse(&b).is_err());
        // A blob longer than the frame.
        let mut b = Frame::ChunkData {
            id: 1,
            data: vec![1; 4],
        }
        .to_bytes();
        b[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse(&b).is_err());
        // Trailing garbage inside the frame.
        let mut b = Frame::Stored { id: 1 }.to_bytes();
        b.push(0);
        b[3] += 1;
        assert!(parse(&b).is_err());
    }

    #[test]
    fn unknown_error_codes_read_as_internal() {
        let mut b = Frame::Failed {
            id: 1,
            code: ErrorCode::Forbidden,
            message: "m".into(),
        }
        .to_bytes();
        assert!(matches!(
            parse(&b).unwrap(),
            Some((
                Frame::Failed {
                    code: ErrorCode::Forbidden,
                    ..
                },
                _
            ))
        ));
        b[10] = 77;
        assert!(matches!(
            parse(&b).unwrap(),
            Some((
                Frame::Failed {
                    code: ErrorCode::Internal,
                    ..
                },
                _
            ))
        ));
        fuzz_round_trip(&b);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
            fuzz_round_trip(&bytes);
        }

        #[test]
        fn have_round_trips(ds in proptest::collection::vec(any::<[u8; 32]>(), 0..40), bits in proptest::collection::vec(any::<bool>(), 0..100)) {
            let f = Frame::Have { id: 7, digests: ds.into_iter().map(ChunkDigest).collect() };
            let b = f.to_bytes();
            prop_assert_eq!(parse(&b).unwrap(), Some((f, b.len())));
            let f = Frame::HaveReply { id: 7, have: bits };
            let b = f.to_bytes();
            prop_assert_eq!(parse(&b).unwrap(), Some((f, b.len())));
        }
    }
}
