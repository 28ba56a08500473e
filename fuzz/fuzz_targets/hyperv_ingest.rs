#![no_main]
use libfuzzer_sys::fuzz_target;

// The Hyper-V ingest endpoint's request-head parser (with its encoder round trip) and the
// spool journal parser.
fuzz_target!(|data: &[u8]| {
    godwit_hyperv::ingest::codec::fuzz_parse(data);
    let (records, valid) = godwit_hyperv::ingest::spool::parse_journal(data);
    assert!(valid <= data.len() && records.len() * godwit_hyperv::ingest::spool::RECORD_BYTES == valid);
});
