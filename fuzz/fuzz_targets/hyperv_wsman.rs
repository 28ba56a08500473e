#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = godwit_hyperv::wsman::fuzz_parse_request(data);
    let _ = godwit_hyperv::wsman::fuzz_parse_reply(data);
    let _ = godwit_hyperv::clixml::fuzz_decode_stderr(data);
    // The simulator's NTLM AUTHENTICATE check (bytes from any client).
    let _ = godwit_hyperv_sim::ntlm_verify::server_challenge(data);
    let _ = godwit_hyperv_sim::ntlm_verify::verify_authenticate(data, &[7; 8], "Administrator", "pw");
    let _ = godwit_hyperv_sim::ntlm_server::lenient_negotiate(data);
    // What an SCVMM server answers to scvmm-inventory.ps1, then VMM's view evaluated.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(report) = godwit_hyperv::scvmm::parse_scvmm_inventory_json(text)
    {
        let _ = godwit_hyperv::scvmm::evaluate_scvmm("fuzz:5986", report);
    }
});
