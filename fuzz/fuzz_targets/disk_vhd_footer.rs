#![no_main]
use godwit_disk::vhd::dynamic::{DynamicHeader, decode_locator_data};
use godwit_disk::vhd::footer::Footer;
use godwit_fuzz::{Exact, round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    round_trip(data, Exact::Bytes, Footer::parse, |f| f.encode().to_vec());
    round_trip(data, Exact::Bytes, DynamicHeader::parse, |h| h.encode().to_vec());
    for code in [*b"W2ru", *b"W2ku", *b"MacX", *b"Mac "] {
        let _ = decode_locator_data(code, data);
    }
});
