#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = godwit_disk::vhd::footer::Footer::parse(data);
    let _ = godwit_disk::vhd::dynamic::DynamicHeader::parse(data);
    for code in [*b"W2ru", *b"W2ku", *b"MacX", *b"Mac "] {
        let _ = godwit_disk::vhd::dynamic::decode_locator_data(code, data);
    }
});
