#![no_main]
use godwit_fuzz::{Exact, round_trip};
use godwit_transfer::chunk::ChunkHeader;
use godwit_transfer::index::SyncIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Frames: encode → parse gives the same frame (the encoding is canonical up to unused
    // bitmap bits and unknown error codes, which read as `internal`).
    godwit_transfer::wire::frame::fuzz_round_trip(data);
    let _ = godwit_transfer::wire::frame::Frame::decode_body(data);
    round_trip(data, Exact::Bytes, |b| SyncIndex::parse(b, "fuzz"), SyncIndex::encode);
    round_trip(data, Exact::Bytes, |b| ChunkHeader::parse(b, "fuzz"), |h| h.encode().to_vec());
    let _ = godwit_transfer::chunk::decode_chunk(data, None, "fuzz");
});
