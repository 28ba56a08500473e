#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = godwit_hyperv::wsman::fuzz_parse_request(data);
    let _ = godwit_hyperv::wsman::fuzz_parse_reply(data);
    let _ = godwit_hyperv::clixml::fuzz_decode_stderr(data);
});
