#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = godwit_disk::vhdx::header::Header::parse(data);
    let _ = godwit_disk::vhdx::header::RegionTable::parse(data);
    let _ = godwit_disk::vhdx::metadata::MetadataTable::parse(data);
    let _ = godwit_disk::vhdx::metadata::Metadata::parse(data);
    let _ = godwit_disk::vhdx::metadata::ParentLocator::parse(data);
    let _ = godwit_disk::vhdx::log::LogEntry::parse(data);
});
