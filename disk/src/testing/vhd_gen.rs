//! Test-only generators of VHD and VHDX images qemu cannot make: differencing disks (with
//! sector bitmaps and parent locators), 4096-byte logical sectors, dirty logs. Built from the
//! library's encoders; checked against libvhdi and qemu by the tests. Feature `testing` only.

use crate::vhd::dynamic::{DynamicHeader, ParentLocator as VhdLocator, encode_locator_data};
use crate::vhd::footer::{DiskType, Footer, Geometry};
use crate::vhdx::header::{
    BAT_REGION, Header, METADATA_REGION, RegionEntry, RegionTable, encode_file_identifier,
};
use crate::vhdx::log::{Write as LogWrite, encode_entry};
use crate::vhdx::metadata::{
    FILE_PARAMETERS, LOGICAL_SECTOR_SIZE, MetadataEntry, MetadataTable, PAGE83_DATA,
    PARENT_LOCATOR, PHYSICAL_SECTOR_SIZE, ParentLocator, TABLE_SIZE, VIRTUAL_DISK_SIZE,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

const MIB: u64 = 1 << 20;

/// Sector-aligned writes: offset -> bytes.
pub type Writes = Vec<(u64, Vec<u8>)>;

/// Apply writes to an expected flat image.
pub fn apply(expected: &mut [u8], writes: &Writes) {
    for (off, data) in writes {
        let o = usize::try_from(*off).unwrap();
        expected[o..o + data.len()].copy_from_slice(data);
    }
}

/// Sectors (of `sector` bytes) written, with their bytes.
fn sectors(writes: &Writes, sector: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut m = BTreeMap::new();
    for (off, data) in writes {
        assert!(
            off.is_multiple_of(sector) && (data.len() as u64).is_multiple_of(sector),
            "unaligned test write"
        );
        for (i, c) in data.chunks(usize::try_from(sector).unwrap()).enumerate() {
            m.insert(off / sector + i as u64, c.to_vec());
        }
    }
    m
}

pub struct VhdParent<'a> {
    pub unique_id: [u8; 16],
    /// Locators: (platform code, path, data space value, space in bytes?).
    pub locators: Vec<([u8; 4], &'a str)>,
    pub name: &'a str,
    /// Write the locator data space in bytes instead of sectors.
    pub space_in_bytes: bool,
}

/// A VHD: differencing when `parent` is given, dynamic otherwise. Returns its unique id.
pub fn vhd(
    path: &str,
    size: u64,
    block_size: u32,
    parent: Option<&VhdParent>,
    writes: &Writes,
) -> [u8; 16] {
    vhd_with_id(
        path,
        size,
        block_size,
        parent,
        writes,
        *uuid::Uuid::new_v4().as_bytes(),
    )
}

/// [`vhd`] with a chosen unique id.
pub fn vhd_with_id(
    path: &str,
    size: u64,
    block_size: u32,
    parent: Option<&VhdParent>,
    writes: &Writes,
    id: [u8; 16],
) -> [u8; 16] {
    let f = File::create(path).unwrap();
    let bs = u64::from(block_size);
    let blocks = size.div_ceil(bs);
    let bitmap_size = (bs / 512).div_ceil(8).div_ceil(512) * 512;
    let bat_off = 1536u64;
    let bat_bytes = (blocks * 4).div_ceil(512) * 512;
    let mut next = bat_off + bat_bytes;
    let mut header = DynamicHeader {
        data_offset: u64::MAX,
        table_offset: bat_off,
        max_table_entries: u32::try_from(blocks).unwrap(),
        block_size,
        parent_unique_id: [0; 16],
        parent_timestamp: 0,
        parent_name: String::new(),
        locators: Default::default(),
    };
    if let Some(p) = parent {
        header.parent_unique_id = p.unique_id;
        header.parent_name = p.name.to_string();
        for (i, (code, path)) in p.locators.iter().enumerate() {
            let data = encode_locator_data(*code, path);
            f.write_all_at(&data, next).unwrap();
            let sectors = (data.len() as u64).div_ceil(512).max(1);
            header.locators[i] = VhdLocator {
                platform_code: *code,
                data_space: u32::try_from(if p.space_in_bytes {
                    sectors * 512
                } else {
                    sectors
                })
                .unwrap(),
                data_length: u32::try_from(data.len()).unwrap(),
                data_offset: next,
            };
            next += sectors * 512;
        }
    }
    let secs = sectors(writes, 512);
    let per_block = bs / 512;
    let mut bat = vec![0xFFu8; usize::try_from(bat_bytes).unwrap()];
    for b in 0..blocks {
        let here: Vec<_> = secs.range(b * per_block..(b + 1) * per_block).collect();
        if here.is_empty() {
            continue;
        }
        let sector = u32::try_from(next / 512).unwrap();
        bat[usize::try_from(b * 4).unwrap()..][..4].copy_from_slice(&sector.to_be_bytes());
        let mut bitmap = vec![0u8; usize::try_from(bitmap_size).unwrap()];
        for (s, data) in here {
            let i = s - b * per_block;
            bitmap[usize::try_from(i / 8).unwrap()] |= 0x80 >> (i % 8);
            f.write_all_at(data, next + bitmap_size + i * 512).unwrap();
        }
        f.write_all_at(&bitmap, next).unwrap();
        next += bitmap_size + bs;
    }
    f.write_all_at(&bat, bat_off).unwrap();
    let footer = Footer {
        features: 2,
        data_offset: 512,
        timestamp: 1,
        creator_app: *b"win ",
        creator_version: 0x000a_0000,
        creator_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        geometry: Geometry::for_sectors(size / 512),
        disk_type: if parent.is_some() {
            DiskType::Differencing
        } else {
            DiskType::Dynamic
        },
        unique_id: id,
        saved_state: 0,
    }
    .encode();
    f.write_all_at(&footer, 0).unwrap();
    f.write_all_at(&header.encode(), 512).unwrap();
    f.write_all_at(&footer, next).unwrap();
    id
}

pub struct VhdxParent<'a> {
    /// `parent_linkage` (the parent's DataWriteGuid, on-disk bytes).
    pub linkage: [u8; 16],
    /// `parent_linkage2`, written when set (raw text, so invalid values can be tested).
    pub linkage2: Option<String>,
    pub relative_path: &'a str,
    pub absolute_win32_path: &'a str,
}

pub struct VhdxSpec<'a> {
    pub size: u64,
    pub block_size: u64,
    pub logical_sector: u32,
    pub parent: Option<VhdxParent<'a>>,
    /// Blocks set to the ZERO state (read as zeros, not from the parent).
    pub zero_blocks: Vec<u64>,
    /// DataWriteGuid to write (random when `None`).
    pub data_write_guid: Option<[u8; 16]>,
}

/// Layout constants of generated VHDX files.
pub const GEN_LOG_OFFSET: u64 = MIB;
pub const GEN_LOG_LENGTH: u64 = MIB;
pub const GEN_META_OFFSET: u64 = 2 * MIB;
pub const GEN_BAT_OFFSET: u64 = 3 * MIB;

/// Write a VHDX; returns its DataWriteGuid (on-disk bytes) and the file offset of each
/// allocated payload block.
pub fn vhdx(path: &str, spec: &VhdxSpec, writes: &Writes) -> ([u8; 16], BTreeMap<u64, u64>) {
    let f = File::create(path).unwrap();
    let ls = u64::from(spec.logical_sector);
    let bs = spec.block_size;
    let blocks = spec.size.div_ceil(bs);
    let cr = (1u64 << 23) * ls / bs;
    let diff = spec.parent.is_some();
    let entries = if diff {
        blocks.div_ceil(cr) * (cr + 1)
    } else {
        blocks + (blocks - 1) / cr
    };
    let bat_len = (entries * 8).div_ceil(MIB) * MIB;
    let mut next = GEN_BAT_OFFSET + bat_len;
    let mut bat = vec![0u64; usize::try_from(entries).unwrap()];
    let secs = sectors(writes, ls);
    let per_block = bs / ls;
    let mut bitmaps: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut placed = BTreeMap::new();
    for b in 0..blocks {
        let idx = usize::try_from(b + b / cr).unwrap();
        let here: Vec<_> = secs.range(b * per_block..(b + 1) * per_block).collect();
        if spec.zero_blocks.contains(&b) {
            bat[idx] = 2;
            continue;
        }
        if here.is_empty() {
            continue;
        }
        let full = here.len() as u64 == per_block.min((spec.size - b * bs).div_ceil(ls));
        let state = if !diff || full { 6 } else { 7 };
        bat[idx] = next | state;
        placed.insert(b, next);
        for (s, data) in &here {
            f.write_all_at(data, next + (**s - b * per_block) * ls)
                .unwrap();
        }
        if state == 7 {
            let bm = bitmaps.entry(b / cr).or_insert_with(|| vec![0u8; 1 << 20]);
            for (s, _) in &here {
                // One bit per logical sector of the chunk, least significant bit first.
                let bit = **s - (b / cr) * cr * per_block;
                bm[usize::try_from(bit / 8).unwrap()] |= 1 << (bit % 8);
            }
        }
        next += bs;
    }
    for (chunk, bm) in &bitmaps {
        let idx = usize::try_from(chunk * (cr + 1) + cr).unwrap();
        bat[idx] = next | 6;
        f.write_all_at(bm, next).unwrap();
        next += MIB;
    }
    let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.to_le_bytes()).collect();
    f.write_all_at(&bat_bytes, GEN_BAT_OFFSET).unwrap();
    f.set_len(next).unwrap();
    // Metadata.
    let mut items: Vec<([u8; 16], Vec<u8>)> = vec![
        (
            FILE_PARAMETERS,
            [
                u32::try_from(bs).unwrap().to_le_bytes(),
                u32::from(diff).wrapping_mul(2).to_le_bytes(),
            ]
            .concat(),
        ),
        (VIRTUAL_DISK_SIZE, spec.size.to_le_bytes().to_vec()),
        (PAGE83_DATA, uuid::Uuid::new_v4().as_bytes().to_vec()),
        (
            LOGICAL_SECTOR_SIZE,
            spec.logical_sector.to_le_bytes().to_vec(),
        ),
        (PHYSICAL_SECTOR_SIZE, 4096u32.to_le_bytes().to_vec()),
    ];
    if let Some(p) = &spec.parent {
        // Lower case in braces: libvhdi parses no other form.
        let linkage = uuid::Uuid::from_bytes_le(p.linkage).braced().to_string();
        let mut entries = vec![
            ("parent_linkage".into(), linkage),
            ("relative_path".into(), p.relative_path.into()),
            ("absolute_win32_path".into(), p.absolute_win32_path.into()),
        ];
        if let Some(l2) = &p.linkage2 {
            entries.push(("parent_linkage2".into(), l2.clone()));
        }
        items.push((PARENT_LOCATOR, ParentLocator { entries }.encode()));
    }
    let mut region = vec![0u8; 1 << 20];
    let mut mentries = Vec::new();
    let mut off = TABLE_SIZE;
    for (id, data) in items {
        region[off..off + data.len()].copy_from_slice(&data);
        mentries.push(MetadataEntry {
            item_id: id,
            offset: u32::try_from(off).unwrap(),
            length: u32::try_from(data.len()).unwrap(),
            is_user: false,
            is_virtual_disk: id != FILE_PARAMETERS && id != PARENT_LOCATOR,
            is_required: true,
        });
        off += 4096;
    }
    region[..TABLE_SIZE].copy_from_slice(&MetadataTable { entries: mentries }.encode());
    f.write_all_at(&region, GEN_META_OFFSET).unwrap();
    // Identifier, headers, region tables.
    f.write_all_at(&encode_file_identifier("godwit test generator"), 0)
        .unwrap();
    let dwg = spec
        .data_write_guid
        .unwrap_or_else(|| *uuid::Uuid::new_v4().as_bytes());
    for (seq, at) in [(5u64, 64 * 1024u64), (6, 128 * 1024)] {
        let h = Header {
            sequence_number: seq,
            file_write_guid: [1; 16],
            data_write_guid: dwg,
            log_guid: [0; 16],
            log_version: 0,
            version: 1,
            log_length: u32::try_from(GEN_LOG_LENGTH).unwrap(),
            log_offset: GEN_LOG_OFFSET,
        };
        f.write_all_at(&h.encode(), at).unwrap();
    }
    let rt = RegionTable {
        entries: vec![
            RegionEntry {
                guid: BAT_REGION,
                file_offset: GEN_BAT_OFFSET,
                length: u32::try_from(bat_len).unwrap(),
                required: true,
            },
            RegionEntry {
                guid: METADATA_REGION,
                file_offset: GEN_META_OFFSET,
                length: 1 << 20,
                required: true,
            },
        ],
    }
    .encode();
    f.write_all_at(&rt, 192 * 1024).unwrap();
    f.write_all_at(&rt, 256 * 1024).unwrap();
    (dwg, placed)
}

/// Deterministic bytes.
pub fn fill(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_mul(31)
                .wrapping_add(u8::try_from(i % 251).unwrap_or(0))
        })
        .collect()
}

/// Leave `entries` (sequence numbers 10, 11, ...) unreplayed in the log of a VHDX made by
/// [`vhdx`], and set a LogGuid in both headers. Returns the file offset of each entry.
pub fn add_log(path: &str, entries: &[Vec<LogWrite>], last_file_offset: u64) -> Vec<u64> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let log_guid = *uuid::Uuid::new_v4().as_bytes();
    let mut at = Vec::new();
    let mut pos = 0u64;
    for (i, w) in entries.iter().enumerate() {
        let e = encode_entry(10 + i as u64, 0, log_guid, len, last_file_offset, w);
        f.write_all_at(&e, GEN_LOG_OFFSET + pos).unwrap();
        at.push(GEN_LOG_OFFSET + pos);
        pos += e.len() as u64;
    }
    for off in [64 * 1024u64, 128 * 1024] {
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, off).unwrap();
        let mut h = Header::parse(&b).unwrap();
        h.log_guid = log_guid;
        f.write_all_at(&h.encode(), off).unwrap();
    }
    at
}
