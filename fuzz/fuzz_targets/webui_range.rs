#![no_main]
use godwit_webui::download::{RangeAnswer, parse_range};
use libfuzzer_sys::fuzz_target;

// A download's Range header (untrusted): a partial answer always lies inside the file.
fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let len = u64::from_le_bytes(data[..8].try_into().unwrap());
    let Ok(v) = std::str::from_utf8(&data[8..]) else { return };
    if let RangeAnswer::Partial { start, end } = parse_range(v, len) {
        assert!(start <= end && end < len);
    }
});
