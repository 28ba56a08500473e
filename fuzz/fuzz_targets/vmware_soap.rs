#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    godwit_vmware::soap::response::fuzz_all_parsers(data);
});
