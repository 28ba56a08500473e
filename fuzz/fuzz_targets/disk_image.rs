#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Any bytes as a single-file image of any format: open, map and read the first 16 MiB.
    use godwit_disk::{BlockSource, Disk, FormatHint, RunState};
    let mut fs = godwit_disk::storage::MemFs::new();
    fs.insert("fuzz.img", data.to_vec());
    if let Ok(disk) = Disk::open_with(&fs, "fuzz.img", FormatHint::Auto) {
        let len = disk.virtual_size().min(16 << 20);
        if let Ok(runs) = disk.map(0, len) {
            let mut buf = vec![0u8; 64 << 10];
            for r in runs.iter().filter(|r| r.state == RunState::Data) {
                let n = usize::try_from(r.len.min(buf.len() as u64)).unwrap_or(0);
                let _ = disk.read_at(r.offset, &mut buf[..n]);
            }
        }
    }
});
