#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Parse, and for any frame that parses: encode → parse gives the same frame.
    godwit_transfer::wire::frame::fuzz_round_trip(data);
    let _ = godwit_transfer::wire::frame::Frame::decode_body(data);
    let _ = godwit_transfer::index::SyncIndex::parse(data, "fuzz");
    let _ = godwit_transfer::chunk::ChunkHeader::parse(data, "fuzz");
    let _ = godwit_transfer::chunk::decode_chunk(data, None, "fuzz");
});
