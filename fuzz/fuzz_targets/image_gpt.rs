#![no_main]
use godwit_image::gpt::{Gpt, protective_mbr};
use libfuzzer_sys::fuzz_target;

// A disk's GPT as `godwit system run` reads it at boot: the header sector, the entry array and
// the disk size. Parsing refuses or yields a table; a planned growth stays on the disk, ends
// before the backup entries and needs nothing more once applied.
fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let disk = u64::from_le_bytes(data[..8].try_into().unwrap());
    let rest = &data[8..];
    let (h, e) = rest.split_at(rest.len().min(512));
    let _ = protective_mbr(h, disk);
    let Ok(g) = Gpt::parse(h, e, 512) else { return };
    if let Ok(Some(gr)) = g.grow("data", disk) {
        assert!(gr.new_last_lba < gr.backup_entries_lba && gr.backup_header_lba == disk - 1);
        let again = Gpt::parse(&gr.primary_header, &gr.entries, 512).expect("a grown table parses");
        assert_eq!(again.grow("data", disk).expect("grows"), None);
    }
});
