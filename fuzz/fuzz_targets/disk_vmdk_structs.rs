#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = godwit_disk::vmdk::header::SparseHeader::parse(data);
    let _ = godwit_disk::vmdk::header::Marker::parse(data);
    let _ = godwit_disk::vmdk::header::CowdHeader::parse(data);
    let _ = godwit_disk::vmdk::header::SeSparseHeader::parse(data);
    let _ = godwit_disk::vmdk::descriptor::Descriptor::parse(data);
});
