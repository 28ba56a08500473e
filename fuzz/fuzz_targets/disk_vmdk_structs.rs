#![no_main]
use godwit_disk::vmdk::descriptor::Descriptor;
use godwit_disk::vmdk::header::{CowdHeader, Marker, SeSparseHeader, SparseHeader};
use godwit_fuzz::{Exact, round_trip};
use libfuzzer_sys::fuzz_target;

// Value-exact only: the headers' padding and reserved bytes are not kept by the parsers and
// are written as zeros (found by this target: a sparse header with a byte set in its padding).
fuzz_target!(|data: &[u8]| {
    round_trip(data, Exact::Value, SparseHeader::parse, |h| h.encode().to_vec());
    round_trip(data, Exact::Value, |b| Marker::parse(b).ok_or(()), |m| m.encode().to_vec());
    round_trip(data, Exact::Value, CowdHeader::parse, |h| h.encode().to_vec());
    round_trip(data, Exact::Value, SeSparseHeader::parse, |h| h.encode().to_vec());
    // Not round-tripped yet: Descriptor::encode writes a value containing `"` unescaped, which
    // parses back differently (found by this target; see the report of issue 20).
    let _ = Descriptor::parse(data);
});
