#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = godwit_netcheck::ntp_codec::parse_ntp_packet(data);
    let _ = godwit_netcheck::icmp_codec::parse_icmp_v4(data, true);
    let _ = godwit_netcheck::icmp_codec::parse_icmp_v4(data, false);
    let _ = godwit_netcheck::icmp_codec::parse_icmp_v6(data);
    let _ = godwit_netcheck::x509::parse_certificate(data);
    let _ = godwit_netcheck::proxy::parse_connect_response(data);
});
