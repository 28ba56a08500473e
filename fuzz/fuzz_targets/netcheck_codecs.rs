#![no_main]
use godwit_fuzz::{Exact, round_trip};
use godwit_netcheck::ntp_codec::parse_ntp_packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    round_trip(data, Exact::Bytes, parse_ntp_packet, |p| p.encode().to_vec());
    let _ = godwit_netcheck::icmp_codec::parse_icmp_v4(data, true);
    let _ = godwit_netcheck::icmp_codec::parse_icmp_v4(data, false);
    let _ = godwit_netcheck::icmp_codec::parse_icmp_v6(data);
    let _ = godwit_netcheck::x509::parse_certificate(data);
    let _ = godwit_netcheck::proxy::parse_connect_response(data);
});
