//! VHDX writer (dynamic and fixed), streaming: the layout is computed from the source's map
//! first, then the file is written front to back without seeking.
//!
//! Layout: file identifier, two headers, two region tables, a 1 MiB empty log at 1 MiB, the
//! metadata region at 2 MiB, the BAT at 3 MiB (1 MiB-aligned length), then payload blocks,
//! each 1 MiB-aligned. Dynamic disks hold only blocks with data (others NOT_PRESENT); fixed
//! disks hold every block (FULLY_PRESENT, LeaveBlocksAllocated); written into a local file
//! ([`write_file`]), dynamic disks also leave all-zero blocks NOT_PRESENT. Logical sectors are
//! the source's (4096 when it has them and its size is a multiple, else 512), physical 4096;
//! the source's SCSI page 83 identifier is kept when it has one (a VHDX source), so the guest
//! sees the same disk. The virtual size is the source size rounded up to 512.

use crate::error::{Error, Result};
use crate::layer::BlockSource;
use crate::vhdx::header::{
    BAT_REGION, Header, METADATA_REGION, MIB, RegionEntry, RegionTable, encode_file_identifier,
};
use crate::vhdx::metadata::{
    FILE_PARAMETERS, LOGICAL_SECTOR_SIZE, MetadataEntry, MetadataTable, PAGE83_DATA,
    PHYSICAL_SECTOR_SIZE, TABLE_SIZE, VIRTUAL_DISK_SIZE,
};
use crate::vhdx::{CHUNK_SECTORS, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT};
use crate::write::vhd::{allocated_blocks, read_block};
use crate::write::{WriteStats, is_zero};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dynamic,
    Fixed,
}

/// Largest virtual disk a VHDX holds.
pub const MAX_VHDX_SIZE: u64 = 64 << 40;
const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u64 = MIB;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u64 = MIB;
const BAT_OFFSET: u64 = 3 * MIB;

/// Payload block size for a disk of `size` bytes. A block is written whole as soon as it holds
/// any data, so small blocks waste less space on scattered data (the 64 MiB test pattern with
/// seven touched regions gives an 18 MiB file with 2 MiB blocks, 52 MiB with qemu's 8 MiB);
/// above 128 GiB, Hyper-V's 32 MiB keeps the BAT (and the writer's table) small: 16 MiB of
/// BAT for 64 TiB.
pub fn block_size_for(size: u64) -> u64 {
    if size <= 128 << 30 { 2 * MIB } else { 32 * MIB }
}

fn out_err(e: std::io::Error) -> Error {
    Error::io("output", "write", e)
}

/// Where everything goes in a new VHDX of a given size.
struct Plan {
    kind: Kind,
    size: u64,
    block: u64,
    logical_sector: u32,
    page83: [u8; 16],
    chunk_ratio: u64,
    bat_len: u64,
    data_start: u64,
}

impl Plan {
    /// `block`: the payload block size, else [`block_size_for`] the disk.
    fn new(src: &dyn BlockSource, kind: Kind, block: Option<u64>) -> Result<Plan> {
        let vsize = src.virtual_size();
        let size = vsize.div_ceil(512) * 512;
        if size == 0 || size > MAX_VHDX_SIZE {
            return Err(Error::Usage(format!(
                "a VHDX holds 512 bytes to 64 TiB; this disk is {vsize} bytes"
            )));
        }
        // Keep 4096-byte logical sectors when the size allows them (it must be a multiple).
        let logical_sector = if src.logical_sector_size() == 4096 && size.is_multiple_of(4096) {
            4096
        } else {
            512
        };
        let block = match block {
            None => block_size_for(size),
            Some(b) if b.is_power_of_two() && (MIB..=256 * MIB).contains(&b) => b,
            Some(b) => {
                return Err(Error::Usage(format!(
                    "a VHDX block size is a power of two from 1 MiB to 256 MiB, not {b} bytes"
                )));
            }
        };
        let blocks = size.div_ceil(block);
        let chunk_ratio = CHUNK_SECTORS * u64::from(logical_sector) / block;
        let entries = blocks + (blocks - 1) / chunk_ratio;
        let bat_len = (entries * 8).div_ceil(MIB) * MIB;
        Ok(Plan {
            kind,
            size,
            block,
            logical_sector,
            page83: src
                .page83()
                .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes()),
            chunk_ratio,
            bat_len,
            data_start: BAT_OFFSET + bat_len,
        })
    }

    /// Index in the BAT of payload block `block`.
    fn bat_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// A BAT with every payload block NOT_PRESENT (and no sector bitmaps: not differencing).
    fn empty_bat(&self) -> Vec<u8> {
        const _: () = assert!(PAYLOAD_NOT_PRESENT == 0);
        vec![0u8; usize::try_from(self.bat_len).unwrap_or(0)]
    }

    fn set_entry(&self, bat: &mut [u8], block: u64, file_offset: u64) {
        let at = usize::try_from(self.bat_index(block) * 8).unwrap_or(usize::MAX);
        if let Some(e) = bat.get_mut(at..at + 8) {
            e.copy_from_slice(&(file_offset | PAYLOAD_FULLY_PRESENT).to_le_bytes());
        }
    }

    /// The first 3 MiB: file identifier, headers, region tables, an empty log, the metadata.
    fn head(&self) -> Result<Vec<u8>> {
        let mut head = encode_file_identifier("Godwit");
        let data_write_guid = *uuid::Uuid::new_v4().as_bytes();
        let file_write_guid = *uuid::Uuid::new_v4().as_bytes();
        for seq in [1u64, 2] {
            let h = Header {
                sequence_number: seq,
                file_write_guid,
                data_write_guid,
                log_guid: [0; 16],
                log_version: 0,
                version: 1,
                log_length: u32::try_from(LOG_LENGTH).unwrap_or(0),
                log_offset: LOG_OFFSET,
            };
            head.extend_from_slice(&h.encode());
            head.resize(head.len() + 60 * 1024, 0);
        }
        let regions = RegionTable {
            entries: vec![
                RegionEntry {
                    guid: BAT_REGION,
                    file_offset: BAT_OFFSET,
                    length: u32::try_from(self.bat_len)
                        .map_err(|_| Error::Usage("BAT larger than 4 GiB".into()))?,
                    required: true,
                },
                RegionEntry {
                    guid: METADATA_REGION,
                    file_offset: METADATA_OFFSET,
                    length: u32::try_from(METADATA_LENGTH).unwrap_or(0),
                    required: true,
                },
            ],
        }
        .encode();
        head.extend_from_slice(&regions);
        head.extend_from_slice(&regions);
        // The log (empty) fills the second MiB.
        head.resize(usize::try_from(METADATA_OFFSET).unwrap_or(0), 0);
        head.extend_from_slice(&metadata_region(self));
        Ok(head)
    }
}

/// Write `src` as a VHDX of `kind` to `out`. Streaming: every block the source maps as data is
/// allocated (the BAT precedes the payload, so blocks that turn out to be all zeros cannot be
/// dropped; [`write_file`] drops them).
pub fn write(src: &dyn BlockSource, kind: Kind, out: &mut dyn Write) -> Result<WriteStats> {
    let plan = Plan::new(src, kind, None)?;
    let blocks = plan.size.div_ceil(plan.block);
    let used = match kind {
        Kind::Dynamic => allocated_blocks(src, plan.block)?,
        Kind::Fixed => vec![true; usize::try_from(blocks).unwrap_or(0)],
    };
    let mut stats = WriteStats::default();
    let mut put = |bytes: &[u8], stats: &mut WriteStats| -> Result<()> {
        out.write_all(bytes).map_err(out_err)?;
        stats.written_bytes += bytes.len() as u64;
        Ok(())
    };
    put(&plan.head()?, &mut stats)?;
    let mut bat = plan.empty_bat();
    let mut next = plan.data_start;
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        plan.set_entry(&mut bat, i as u64, next);
        next += plan.block;
    }
    put(&bat, &mut stats)?;
    drop(bat);
    // Payload.
    let mut buf = vec![0u8; usize::try_from(plan.block).unwrap_or(0)];
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        read_block(src, i as u64 * plan.block, &mut buf, &mut stats)?;
        put(&buf, &mut stats)?;
    }
    Ok(stats)
}

/// Write `src` as a dynamic VHDX into a local file in one pass, with positional writes: blocks
/// whose bytes are all zeros stay NOT_PRESENT (as qemu-img leaves them) and the BAT is written
/// last. Anything already in the file is replaced.
pub fn write_file(src: &dyn BlockSource, out: &File, name: &str) -> Result<WriteStats> {
    write_file_with_block_size(src, out, name, None)
}

/// [`write_file`] with a chosen payload block size (a power of two, 1 to 256 MiB; `None`:
/// [`block_size_for`] the disk), e.g. the 1 MiB Hyper-V images are often made with.
pub fn write_file_with_block_size(
    src: &dyn BlockSource,
    out: &File,
    name: &str,
    block: Option<u64>,
) -> Result<WriteStats> {
    let plan = Plan::new(src, Kind::Dynamic, block)?;
    let used = allocated_blocks(src, plan.block)?;
    let put = |bytes: &[u8], at: u64| {
        out.write_all_at(bytes, at)
            .map_err(|e| Error::io(name, "write", e))
    };
    let mut stats = WriteStats::default();
    let mut bat = plan.empty_bat();
    let mut next = plan.data_start;
    let mut buf = vec![0u8; usize::try_from(plan.block).unwrap_or(0)];
    for (i, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        read_block(src, i as u64 * plan.block, &mut buf, &mut stats)?;
        if is_zero(&buf) {
            continue;
        }
        plan.set_entry(&mut bat, i as u64, next);
        put(&buf, next)?;
        next += plan.block;
    }
    put(&plan.head()?, 0)?;
    put(&bat, BAT_OFFSET)?;
    out.set_len(next)
        .map_err(|e| Error::io(name, "set length", e))?;
    stats.written_bytes = next;
    Ok(stats)
}

fn metadata_region(plan: &Plan) -> Vec<u8> {
    let flags: u32 = if plan.kind == Kind::Fixed { 1 } else { 0 };
    let items: Vec<([u8; 16], Vec<u8>, bool)> = vec![
        (
            FILE_PARAMETERS,
            [
                u32::try_from(plan.block).unwrap_or(0).to_le_bytes(),
                flags.to_le_bytes(),
            ]
            .concat(),
            false,
        ),
        (VIRTUAL_DISK_SIZE, plan.size.to_le_bytes().to_vec(), true),
        (PAGE83_DATA, plan.page83.to_vec(), true),
        (
            LOGICAL_SECTOR_SIZE,
            plan.logical_sector.to_le_bytes().to_vec(),
            true,
        ),
        (PHYSICAL_SECTOR_SIZE, 4096u32.to_le_bytes().to_vec(), true),
    ];
    let mut region = vec![0u8; usize::try_from(METADATA_LENGTH).unwrap_or(0)];
    let mut entries = Vec::new();
    let mut off = TABLE_SIZE;
    for (id, data, virtual_disk) in items {
        region[off..off + data.len()].copy_from_slice(&data);
        entries.push(MetadataEntry {
            item_id: id,
            offset: u32::try_from(off).unwrap_or(0),
            length: u32::try_from(data.len()).unwrap_or(0),
            is_user: false,
            is_virtual_disk: virtual_disk,
            is_required: true,
        });
        off += 4096;
    }
    region[..TABLE_SIZE].copy_from_slice(&MetadataTable { entries }.encode());
    region
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::Layer;
    use crate::write::vhd::tests::{MemSource, opened, sample};
    use proptest::prelude::*;
    use std::io::{Read, Seek};

    /// A source with 4096-byte logical sectors and a page 83 identifier (as a VHDX has).
    struct Sectored(MemSource);

    impl BlockSource for Sectored {
        fn virtual_size(&self) -> u64 {
            self.0.virtual_size()
        }
        fn map(&self, offset: u64, len: u64) -> Result<Vec<crate::layer::Run>> {
            self.0.map(offset, len)
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.0.read_at(offset, buf)
        }
        fn logical_sector_size(&self) -> u32 {
            4096
        }
        fn page83(&self) -> Option<[u8; 16]> {
            Some([0x83; 16])
        }
    }

    #[test]
    fn keeps_4096_byte_sectors_and_the_page83_id() {
        let data = sample(6 << 20, &[(4096, 10_000, 7), (5 << 20, 4096, 9)]);
        for kind in [Kind::Dynamic, Kind::Fixed] {
            let mut out = Vec::new();
            write(&Sectored(MemSource(data.clone())), kind, &mut out).unwrap();
            let layer = crate::vhdx::VhdxLayer::open(opened(out, "s.vhdx")).unwrap();
            assert_eq!(layer.info().logical_sector_size, 4096);
            assert_eq!(layer.metadata().page83, Some([0x83; 16]));
            let mut back = vec![0u8; data.len()];
            layer.read_at(0, &mut back).unwrap();
            assert!(back == data);
        }
        // A size that is not a multiple of 4096 keeps 512-byte sectors.
        let odd = sample(6 << 20 | 512, &[(0, 512, 1)]);
        let mut out = Vec::new();
        write(&Sectored(MemSource(odd)), Kind::Dynamic, &mut out).unwrap();
        let layer = crate::vhdx::VhdxLayer::open(opened(out, "o.vhdx")).unwrap();
        assert_eq!(layer.info().logical_sector_size, 512);
    }

    #[test]
    fn file_writer_takes_a_block_size() {
        let data = sample(6 << 20, &[(4096, 10_000, 7), (5 << 20, 4096, 9)]);
        let f = tempfile::tempfile().unwrap();
        write_file_with_block_size(&MemSource(data.clone()), &f, "b.vhdx", Some(MIB)).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut bytes).unwrap();
        let layer = crate::vhdx::VhdxLayer::open(opened(bytes, "b.vhdx")).unwrap();
        assert_eq!(layer.metadata().block_size, 1 << 20);
        let mut back = vec![0u8; data.len()];
        layer.read_at(0, &mut back).unwrap();
        assert!(back == data);
        for bad in [0, 3 << 20, MIB / 2, 512 * MIB] {
            let e = write_file_with_block_size(&MemSource(data.clone()), &f, "b.vhdx", Some(bad));
            assert!(matches!(e, Err(Error::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn file_writer_drops_zero_blocks_and_replaces_old_contents() {
        let mut data = vec![0u8; 9 << 20];
        data[3 << 20] = 1;
        data[(9 << 20) - 1] = 2;
        // MemSource maps 64 KiB pieces with non-zero bytes as data; force all of it to be data.
        struct AllData(Vec<u8>);
        impl BlockSource for AllData {
            fn virtual_size(&self) -> u64 {
                self.0.len() as u64
            }
            fn map(&self, offset: u64, len: u64) -> Result<Vec<crate::layer::Run>> {
                Ok(vec![crate::layer::Run {
                    offset,
                    len,
                    state: crate::layer::RunState::Data,
                }])
            }
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
                let s = usize::try_from(offset).unwrap();
                buf.copy_from_slice(&self.0[s..s + buf.len()]);
                Ok(())
            }
        }
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &vec![0xEE; 40 << 20]).unwrap();
        write_file(&AllData(data.clone()), &f, "t.vhdx").unwrap();
        let len = f.metadata().unwrap().len();
        // Headers, log, metadata and BAT (4 MiB) plus the two 2 MiB blocks with data.
        assert_eq!(len, 8 << 20);
        let mut bytes = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut bytes).unwrap();
        let layer = crate::vhdx::VhdxLayer::open(opened(bytes, "t.vhdx")).unwrap();
        let mut back = vec![0u8; data.len()];
        layer.read_at(0, &mut back).unwrap();
        assert!(back == data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn written_vhdx_reads_back(
            sectors in 1usize..20_000,
            writes in proptest::collection::vec((0usize..10_000_000, 1usize..300_000, any::<u8>()), 0..6),
            fixed in any::<bool>(),
        ) {
            let data = sample(sectors * 512, &writes);
            let mut out = Vec::new();
            let kind = if fixed { Kind::Fixed } else { Kind::Dynamic };
            write(&MemSource(data.clone()), kind, &mut out).unwrap();
            let layer = crate::vhdx::VhdxLayer::open(opened(out, "t.vhdx")).unwrap();
            prop_assert_eq!(layer.info().virtual_size, data.len() as u64);
            prop_assert_eq!(&layer.info().subformat, if fixed { "fixed" } else { "dynamic" });
            let mut back = vec![0u8; data.len()];
            layer.read_at(0, &mut back).unwrap();
            prop_assert!(back == data);
        }
    }
}
