#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(1024);
    let _ = godwit_disk::probe::detect(&data[..split], &data[split..]);
    let _ = godwit_disk::probe::non_disk_content(data, data.len() as u64);
});
