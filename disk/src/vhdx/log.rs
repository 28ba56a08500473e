//! The VHDX log: entry parsing/encoding and replay into an in-memory overlay (the source file is
//! never written). [`LogEntry::parse`] is a fuzz entry point.
//!
//! Replay: every 4 KiB position of the circular log is checked for a valid entry (signature,
//! LogGuid of the header, CRC-32C over the entry, descriptors and data sectors carrying the
//! entry's sequence number). The entry with the highest sequence number whose chain from its
//! `Tail` is complete and sequence-contiguous is the head; the entries from tail to head are
//! applied in order. No valid entry means nothing to replay (as qemu does).

use super::header::{ParseError, crc_with_zeroed, g16, le_u32, le_u64, perr};
use std::collections::BTreeMap;

pub const LOG_SECTOR: u64 = 4096;
/// Reads bytes of the image file at an offset (for [`replay`]).
pub type LogRead<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<(), ParseError>;
/// Largest entry we read into memory.
pub const MAX_ENTRY: u64 = 64 << 20;
const HEADER_LEN: usize = 64;
const DESC_LEN: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Zero `length` bytes at `file_offset`.
    Zero { length: u64, file_offset: u64 },
    /// One 4 KiB sector at `file_offset`: `leading` + the data sector's 4084 bytes + `trailing`.
    Data {
        leading: [u8; 8],
        trailing: [u8; 4],
        file_offset: u64,
        /// Offset of the data sector within the entry.
        data_at: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub entry_length: u32,
    pub tail: u32,
    pub sequence_number: u64,
    pub log_guid: [u8; 16],
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
    pub descriptors: Vec<Descriptor>,
}

/// The header fields of an entry (first 64 bytes), unchecked.
pub fn peek(b: &[u8]) -> Option<(u32, u32, u64, [u8; 16])> {
    if b.len() < HEADER_LEN || &b[0..4] != b"loge" {
        return None;
    }
    Some((le_u32(b, 8), le_u32(b, 12), le_u64(b, 16), g16(b, 32)))
}

impl LogEntry {
    /// Parse and verify one whole entry (`b` = its `EntryLength` bytes). Fuzz entry point.
    pub fn parse(b: &[u8]) -> Result<LogEntry, ParseError> {
        let (entry_length, tail, seq, log_guid) =
            peek(b).ok_or_else(|| perr(0, "no \"loge\" signature"))?;
        let len = u64::from(entry_length);
        if len == 0 || len % LOG_SECTOR != 0 || len > b.len() as u64 {
            return Err(perr(8, format!("entry length {entry_length}")));
        }
        let b = &b[..usize::try_from(len).unwrap_or(0)];
        let stored = le_u32(b, 4);
        let computed = crc_with_zeroed(b, 4);
        if stored != computed {
            return Err(perr(
                4,
                format!("log entry CRC-32C is {stored:#010x}, the bytes give {computed:#010x}"),
            ));
        }
        if seq == 0 {
            return Err(perr(16, "sequence number 0"));
        }
        let count = u64::from(le_u32(b, 24));
        let desc_bytes = HEADER_LEN as u64 + count * DESC_LEN as u64;
        let desc_sectors = desc_bytes.div_ceil(LOG_SECTOR);
        if desc_sectors * LOG_SECTOR > len {
            return Err(perr(
                24,
                format!("{count} descriptors do not fit a {len}-byte entry"),
            ));
        }
        let mut descriptors = Vec::new();
        let mut data_at = desc_sectors * LOG_SECTOR;
        for i in 0..usize::try_from(count).unwrap_or(0) {
            let at = HEADER_LEN + DESC_LEN * i;
            let d = &b[at..at + DESC_LEN];
            if le_u64(d, 24) != seq {
                return Err(perr(
                    at as u64 + 24,
                    "descriptor sequence number differs from the entry's",
                ));
            }
            let file_offset = le_u64(d, 16);
            if !file_offset.is_multiple_of(LOG_SECTOR) {
                return Err(perr(
                    at as u64 + 16,
                    format!("descriptor file offset {file_offset:#x} is not 4 KiB aligned"),
                ));
            }
            match &d[0..4] {
                b"zero" => {
                    let length = le_u64(d, 8);
                    if !length.is_multiple_of(LOG_SECTOR)
                        || file_offset.checked_add(length).is_none()
                    {
                        return Err(perr(
                            at as u64 + 8,
                            format!("zero descriptor length {length}"),
                        ));
                    }
                    descriptors.push(Descriptor::Zero {
                        length,
                        file_offset,
                    });
                }
                b"desc" => {
                    if data_at + LOG_SECTOR > len {
                        return Err(perr(at as u64, "data descriptor without a data sector"));
                    }
                    let s = usize::try_from(data_at).unwrap_or(0);
                    let sector = &b[s..s + 4096];
                    let seq_ok = le_u32(sector, 4) == u32::try_from(seq >> 32).unwrap_or(0)
                        && le_u32(sector, 4092) == u32::try_from(seq & 0xFFFF_FFFF).unwrap_or(0);
                    if &sector[0..4] != b"data" || !seq_ok {
                        return Err(perr(
                            data_at,
                            "data sector signature or sequence number is wrong",
                        ));
                    }
                    let mut leading = [0u8; 8];
                    leading.copy_from_slice(&d[8..16]);
                    let mut trailing = [0u8; 4];
                    trailing.copy_from_slice(&d[4..8]);
                    descriptors.push(Descriptor::Data {
                        leading,
                        trailing,
                        file_offset,
                        data_at,
                    });
                    data_at += LOG_SECTOR;
                }
                _ => return Err(perr(at as u64, "unknown descriptor signature")),
            }
        }
        Ok(LogEntry {
            entry_length,
            tail,
            sequence_number: seq,
            log_guid,
            flushed_file_offset: le_u64(b, 48),
            last_file_offset: le_u64(b, 56),
            descriptors,
        })
    }
}

/// What a log entry writes, for [`encode_entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Zero {
        file_offset: u64,
        length: u64,
    },
    /// A whole 4 KiB sector.
    Data {
        file_offset: u64,
        sector: Box<[u8; 4096]>,
    },
}

/// Encode one log entry (writers of test images).
pub fn encode_entry(
    seq: u64,
    tail: u32,
    log_guid: [u8; 16],
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: &[Write],
) -> Vec<u8> {
    let desc_sectors = (HEADER_LEN + DESC_LEN * writes.len()).div_ceil(4096);
    let n_data = writes
        .iter()
        .filter(|w| matches!(w, Write::Data { .. }))
        .count();
    let len = (desc_sectors + n_data) * 4096;
    let mut b = vec![0u8; len];
    b[0..4].copy_from_slice(b"loge");
    b[8..12].copy_from_slice(&u32::try_from(len).unwrap_or(0).to_le_bytes());
    b[12..16].copy_from_slice(&tail.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[24..28].copy_from_slice(&u32::try_from(writes.len()).unwrap_or(0).to_le_bytes());
    b[32..48].copy_from_slice(&log_guid);
    b[48..56].copy_from_slice(&flushed_file_offset.to_le_bytes());
    b[56..64].copy_from_slice(&last_file_offset.to_le_bytes());
    let mut data_at = desc_sectors * 4096;
    for (i, w) in writes.iter().enumerate() {
        let at = HEADER_LEN + DESC_LEN * i;
        match w {
            Write::Zero {
                file_offset,
                length,
            } => {
                b[at..at + 4].copy_from_slice(b"zero");
                b[at + 8..at + 16].copy_from_slice(&length.to_le_bytes());
                b[at + 16..at + 24].copy_from_slice(&file_offset.to_le_bytes());
            }
            Write::Data {
                file_offset,
                sector,
            } => {
                b[at..at + 4].copy_from_slice(b"desc");
                b[at + 4..at + 8].copy_from_slice(&sector[4092..]);
                b[at + 8..at + 16].copy_from_slice(&sector[..8]);
                b[at + 16..at + 24].copy_from_slice(&file_offset.to_le_bytes());
                let d = &mut b[data_at..data_at + 4096];
                d[0..4].copy_from_slice(b"data");
                d[4..8].copy_from_slice(&u32::try_from(seq >> 32).unwrap_or(0).to_le_bytes());
                d[8..4092].copy_from_slice(&sector[8..4092]);
                d[4092..]
                    .copy_from_slice(&u32::try_from(seq & 0xFFFF_FFFF).unwrap_or(0).to_le_bytes());
                data_at += 4096;
            }
        }
        b[at + 24..at + 32].copy_from_slice(&seq.to_le_bytes());
    }
    let crc = crc_with_zeroed(&b, 4);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What a replayed range of the file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    Zero,
    /// The 4 KiB sector starting at `sector_start` (file offset) is `leading` + the 4084 bytes
    /// at file offset `data_sector + 8` + `trailing`.
    Data {
        sector_start: u64,
        data_sector: u64,
        leading: [u8; 8],
        trailing: [u8; 4],
    },
}

/// Replayed writes over the file: non-overlapping ranges, later writes replacing earlier ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay {
    ranges: BTreeMap<u64, (u64, Piece)>,
    /// The file's length after replay (LastFileOffset of the head entry).
    pub min_file_len: u64,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn insert(&mut self, start: u64, end: u64, piece: Piece) {
        if start >= end {
            return;
        }
        let hit: Vec<(u64, u64, Piece)> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, (e, p))| (*s, *e, *p))
            .collect();
        for (s, e, p) in hit {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, (start, p));
            }
            if e > end {
                self.ranges.insert(end, (e, p));
            }
        }
        self.ranges.insert(start, (end, piece));
    }

    /// Ranges overlapping `[start, end)`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, u64, Piece)> {
        let mut v: Vec<_> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, (e, p))| (*s, *e, *p))
            .collect();
        v.reverse();
        v
    }
}

/// Find the active sequence in a log of `log_len` bytes at file offset `log_offset` and replay
/// it. `read` reads the file. Errors carry a file offset.
pub fn replay(
    read: LogRead<'_>,
    log_offset: u64,
    log_len: u64,
    log_guid: [u8; 16],
) -> Result<Overlay, ParseError> {
    let read_log = |pos: u64, buf: &mut [u8]| -> Result<(), ParseError> {
        // Circular: read sector by sector, wrapping at the end of the log.
        for (i, chunk) in buf.chunks_mut(4096).enumerate() {
            let p = (pos + i as u64 * LOG_SECTOR) % log_len;
            read(log_offset + p, chunk)?;
        }
        Ok(())
    };
    let cap = MAX_ENTRY.min(log_len);
    // A hostile log can claim a long entry at every 4 KiB: bound the bytes the scan reads.
    let mut budget = log_len.saturating_mul(8).saturating_add(MAX_ENTRY);
    // position -> (seq, length, tail)
    let mut valid: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    let mut head = [0u8; 64];
    for pos in (0..log_len).step_by(4096) {
        read_log(pos, &mut head)?;
        let Some((len, tail, seq, guid)) = peek(&head) else {
            continue;
        };
        let len = u64::from(len);
        if guid != log_guid
            || len == 0
            || len % LOG_SECTOR != 0
            || len > cap
            || u64::from(tail) >= log_len
        {
            continue;
        }
        budget = budget.checked_sub(len).ok_or_else(|| {
            perr(
                log_offset + pos,
                "the log holds too many overlapping entry headers to scan",
            )
        })?;
        let mut entry = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_log(pos, &mut entry)?;
        if LogEntry::parse(&entry).is_ok() {
            valid.insert(pos, (seq, len, u64::from(tail)));
        }
    }
    let mut heads: Vec<(u64, u64)> = valid.iter().map(|(p, (s, _, _))| (*s, *p)).collect();
    heads.sort_unstable_by(|a, b| b.cmp(a));
    for (head_seq, head_pos) in heads.into_iter().take(64) {
        let Some(chain) = walk(&valid, head_pos, head_seq, log_len) else {
            continue;
        };
        let mut overlay = Overlay::default();
        for pos in chain {
            let (_, len, _) = valid[&pos];
            let mut entry = vec![0u8; usize::try_from(len).unwrap_or(0)];
            read_log(pos, &mut entry)?;
            let e =
                LogEntry::parse(&entry).map_err(|e| perr(log_offset + pos + e.offset, e.reason))?;
            for d in &e.descriptors {
                match *d {
                    Descriptor::Zero {
                        length,
                        file_offset,
                    } => {
                        overlay.insert(file_offset, file_offset + length, Piece::Zero);
                    }
                    Descriptor::Data {
                        leading,
                        trailing,
                        file_offset,
                        data_at,
                    } => {
                        let data_sector = log_offset + (pos + data_at) % log_len;
                        overlay.insert(
                            file_offset,
                            file_offset + LOG_SECTOR,
                            Piece::Data {
                                sector_start: file_offset,
                                data_sector,
                                leading,
                                trailing,
                            },
                        );
                    }
                }
            }
            overlay.min_file_len = e.last_file_offset;
        }
        return Ok(overlay);
    }
    Ok(Overlay::default())
}

/// Entries from the head's tail to the head, if they are all valid and contiguous.
fn walk(
    valid: &BTreeMap<u64, (u64, u64, u64)>,
    head_pos: u64,
    head_seq: u64,
    log_len: u64,
) -> Option<Vec<u64>> {
    let (_, _, tail) = valid[&head_pos];
    let mut pos = tail;
    let (mut seq, _, _) = *valid.get(&pos)?;
    let mut chain = vec![];
    for _ in 0..=log_len / LOG_SECTOR {
        chain.push(pos);
        if pos == head_pos {
            return (seq == head_seq).then_some(chain);
        }
        let (_, len, _) = valid[&pos];
        pos = (pos + len) % log_len;
        let (next_seq, _, _) = *valid.get(&pos)?;
        if next_seq != seq + 1 {
            return None;
        }
        seq = next_seq;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_and_detects_damage() {
        let mut sector = Box::new([7u8; 4096]);
        sector[0] = 1;
        sector[4095] = 9;
        let writes = vec![
            Write::Data {
                file_offset: 2 << 20,
                sector: sector.clone(),
            },
            Write::Zero {
                file_offset: 3 << 20,
                length: 8192,
            },
        ];
        let b = encode_entry(5, 0, [3; 16], 1 << 22, 1 << 22, &writes);
        let e = LogEntry::parse(&b).unwrap();
        assert_eq!(e.sequence_number, 5);
        assert_eq!(e.descriptors.len(), 2);
        assert!(
            matches!(e.descriptors[0], Descriptor::Data { leading, trailing, data_at: 4096, .. }
            if leading[0] == 1 && trailing[3] == 9)
        );
        let mut bad = b.clone();
        bad[5000] ^= 1;
        assert_eq!(LogEntry::parse(&bad).unwrap_err().offset, 4);
    }

    #[test]
    fn overlay_later_writes_win() {
        let mut o = Overlay::default();
        let d = |s| Piece::Data {
            sector_start: s,
            data_sector: 0,
            leading: [0; 8],
            trailing: [0; 4],
        };
        o.insert(0, 16384, Piece::Zero);
        o.insert(4096, 8192, d(4096));
        o.insert(6000, 20000, Piece::Zero);
        let v = o.overlapping(0, 30000);
        assert_eq!(
            v,
            vec![
                (0, 4096, Piece::Zero),
                (4096, 6000, d(4096)),
                (6000, 20000, Piece::Zero)
            ]
        );
        assert_eq!(o.overlapping(20000, 30000), vec![]);
    }

    #[test]
    fn replay_picks_the_contiguous_sequence() {
        let guid = [5u8; 16];
        let log_len = 64 * 1024u64;
        let mut log = vec![0u8; usize::try_from(log_len).unwrap()];
        let s1 = Box::new([1u8; 4096]);
        let s2 = Box::new([2u8; 4096]);
        let e1 = encode_entry(
            10,
            0,
            guid,
            0,
            1 << 20,
            &[Write::Data {
                file_offset: 4096,
                sector: s1,
            }],
        );
        let e2 = encode_entry(
            11,
            0,
            guid,
            0,
            2 << 20,
            &[Write::Data {
                file_offset: 4096,
                sector: s2,
            }],
        );
        log[..e1.len()].copy_from_slice(&e1);
        log[e1.len()..e1.len() + e2.len()].copy_from_slice(&e2);
        // A stale entry of another log GUID is ignored.
        let stale = encode_entry(99, 0, [6; 16], 0, 0, &[]);
        log[40960..40960 + stale.len()].copy_from_slice(&stale);
        let read = |off: u64, buf: &mut [u8]| {
            let s = usize::try_from(off - 1_000_000).unwrap();
            buf.copy_from_slice(&log[s..s + buf.len()]);
            Ok(())
        };
        let o = replay(&read, 1_000_000, log_len, guid).unwrap();
        let v = o.overlapping(0, 1 << 20);
        assert_eq!(v.len(), 1);
        let Piece::Data { data_sector, .. } = v[0].2 else {
            panic!()
        };
        assert_eq!(data_sector, 1_000_000 + 8192 + 4096);
        assert_eq!(o.min_file_len, 2 << 20);
    }
}
