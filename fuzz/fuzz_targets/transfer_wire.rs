#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = godwit_transfer::wire::frame::parse(data);
    let _ = godwit_transfer::wire::frame::Frame::decode_body(data);
    let _ = godwit_transfer::index::SyncIndex::parse(data, "fuzz");
    let _ = godwit_transfer::chunk::ChunkHeader::parse(data, "fuzz");
    let _ = godwit_transfer::chunk::decode_chunk(data, None, "fuzz");
});
