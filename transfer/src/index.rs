//! The sync index: one point-in-time replica of one disk. Ordered chunk entries (a digest, or
//! "zero" for an all-zero chunk that is not stored), the disk size, the chunk size, metadata,
//! the creation time, the parent sync, and the SHA-256 of the whole raw content when known.
//! Written last and atomically, so a sync exists only when every chunk it names is stored.
//!
//! ```text
//! 0    4  magic "GWIX"
//! 4    2  version (1), big-endian
//! 6    2  flags: bit 0 = raw SHA-256 present
//! 8    4  chunk size
//! 12   8  disk size in bytes
//! 20   8  created, Unix milliseconds
//! 28   8  entry count = ceil(disk size / chunk size)
//! 36   32 SHA-256 of the raw content (zero when absent)
//! 68   2+ sync id (u16 length, UTF-8), parent sync id (u16 length, empty = none),
//!         vm name (u16 length), disk number (u32)
//! ..   2  metadata pair count; each pair: u16 key length, key, u32 value length, value
//! ..      entries: 1 byte tag (0 = zero, 1 = data) [+ 32-byte digest when data]
//! end  32 SHA-256 of every byte before it
//! ```

use crate::codec::{ReadExt, put_str16};
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use godwit_cursor::Reader;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

pub const INDEX_MAGIC: [u8; 4] = *b"GWIX";
/// Index format versions this build reads; the current one is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum IndexVersion {
    /// Initial format (this file's layout).
    V1 = 1,
}

impl IndexVersion {
    pub const fn current() -> Self {
        IndexVersion::V1
    }
}

/// Largest index accepted (bytes): 64 MiB is 2 million entries, 8 TiB at 4 MiB chunks.
pub const MAX_INDEX_LEN: usize = 64 << 20;
const MAX_META_PAIRS: u16 = 256;
const MAX_META_VALUE: u32 = 64 << 10;

/// A sync's name: `YYYYMMDDTHHMMSS.mmmZ-xxxxxxxx` (UTC creation time and 8 random hex digits),
/// so names sort by time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyncId(String);

impl SyncId {
    pub fn new(unix_ms: u64) -> SyncId {
        let r: u32 = rand::random();
        SyncId(format!("{}-{r:08x}", utc_stamp(unix_ms)))
    }

    /// Validate a sync id from untrusted input (a frame, a store listing, the command line).
    pub fn parse(s: &str) -> Result<SyncId> {
        let ok = s.len() == 29
            && s.bytes().enumerate().all(|(i, b)| match i {
                8 => b == b'T',
                15 => b == b'.',
                19 => b == b'Z',
                20 => b == b'-',
                21.. => b.is_ascii_hexdigit() && !b.is_ascii_uppercase(),
                _ => b.is_ascii_digit(),
            });
        if ok {
            Ok(SyncId(s.to_string()))
        } else {
            Err(Error::Usage(format!(
                "{s:?} is not a sync id (YYYYMMDDTHHMMSS.mmmZ-xxxxxxxx)"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A sync id for time `unix_ms` with the given 8 hex digits (the store derives them from
    /// the writer's commit nonce, so a retried commit can be recognised).
    pub fn with_suffix(unix_ms: u64, suffix: u32) -> SyncId {
        SyncId(format!("{}-{suffix:08x}", utc_stamp(unix_ms)))
    }

    /// The 8 hex digits after the time.
    pub fn suffix(&self) -> &str {
        &self.0[21..]
    }

    /// The time in the id, Unix milliseconds. An id is validated digit by digit, not as a
    /// date: one naming no real date or time (month 13, 25 o'clock) is `u64::MAX`, later than
    /// any real sync, so [`newest`] never takes it.
    pub fn unix_ms(&self) -> u64 {
        let n = |r: std::ops::Range<usize>| self.0[r].parse::<u16>().unwrap_or(u16::MAX);
        let year = i32::from(n(0..4));
        let (Ok(month), Ok(day), Ok(hour), Ok(minute), Ok(second)) = (
            u8::try_from(n(4..6)),
            u8::try_from(n(6..8)),
            u8::try_from(n(9..11)),
            u8::try_from(n(11..13)),
            u8::try_from(n(13..15)),
        ) else {
            return u64::MAX;
        };
        let Ok(month) = time::Month::try_from(month) else {
            return u64::MAX;
        };
        let (Ok(date), Ok(clock)) = (
            time::Date::from_calendar_date(year, month, day),
            time::Time::from_hms(hour, minute, second),
        ) else {
            return u64::MAX;
        };
        let secs = time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .unix_timestamp();
        u64::try_from(secs).map_or(u64::MAX, |s| s * 1000 + u64::from(n(16..19)))
    }
}

/// Syncs stamped further ahead of the reader's clock than this are never taken as the newest
/// (the default for export and the parent of the next sync): a sync id from the far future,
/// written by an older build or by hand, cannot pin a replica.
pub const FUTURE_SLACK_MS: u64 = 24 * 3600 * 1000;

/// The newest sync of a sorted list that is not stamped in the future (beyond
/// [`FUTURE_SLACK_MS`] from `now`).
pub fn newest(syncs: &[SyncId], now: u64) -> Option<&SyncId> {
    syncs
        .iter()
        .rev()
        .find(|s| s.unix_ms() <= now.saturating_add(FUTURE_SLACK_MS))
}

impl fmt::Display for SyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SyncId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncId({})", self.0)
    }
}

/// `YYYYMMDDTHHMMSS.mmmZ` for Unix milliseconds (proleptic Gregorian, UTC). A time past the
/// year 9999 (a broken clock) is written as the last millisecond of 9999, the latest a sync id
/// can name.
pub fn utc_stamp(unix_ms: u64) -> String {
    let t = i64::try_from(unix_ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .filter(|t| t.year() <= 9999);
    let (t, ms) = match t {
        Some(t) => (t, unix_ms % 1000),
        None => (
            time::PrimitiveDateTime::new(
                time::Date::from_calendar_date(9999, time::Month::December, 31)
                    .unwrap_or(time::Date::MAX),
                time::Time::from_hms(23, 59, 59).unwrap_or(time::Time::MIDNIGHT),
            )
            .assume_utc(),
            999,
        ),
    };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{ms:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One chunk of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    Zero,
    Data(ChunkDigest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncIndex {
    pub sync_id: SyncId,
    pub parent: Option<SyncId>,
    pub vm: String,
    pub disk: u32,
    pub chunk_size: u32,
    pub disk_size: u64,
    pub created_ms: u64,
    pub raw_sha256: Option<[u8; 32]>,
    pub metadata: BTreeMap<String, String>,
    pub entries: Vec<Entry>,
}

/// Number of chunks a disk of `disk_size` has at `chunk_size`.
pub fn chunk_count(disk_size: u64, chunk_size: u32) -> u64 {
    disk_size.div_ceil(u64::from(chunk_size.max(1)))
}

/// Validate a chunk size: a power of two in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
pub fn check_chunk_size(cs: u32) -> Result<()> {
    use crate::chunk::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
    if cs.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "chunk size {cs} is not a power of two in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
        )))
    }
}

/// Check a VM name used in store keys and frames: 1..=128 bytes, no control characters, no `/`.
pub fn check_vm_name(vm: &str) -> Result<()> {
    if vm.is_empty()
        || vm.len() > 128
        || vm.chars().any(|c| c.is_control() || c == '/' || c == '\\')
        || vm == "."
        || vm == ".."
    {
        return Err(Error::Usage(format!(
            "VM name {vm:?}: 1 to 128 characters, no '/', '\\' or control characters"
        )));
    }
    Ok(())
}

impl SyncIndex {
    /// Parse and check an index. Pure; a fuzz entry point. `what` names it in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<SyncIndex> {
        if bytes.len() > MAX_INDEX_LEN {
            return Err(Error::malformed(
                what,
                0,
                format!(
                    "{} bytes, above the {MAX_INDEX_LEN}-byte limit",
                    bytes.len()
                ),
            ));
        }
        if bytes.len() < 32 + 70 {
            return Err(Error::malformed(what, 0, "too short for an index"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(Error::integrity(
                what,
                format!(
                    "index checksum (last 32 bytes, at {}) does not match its content",
                    body.len()
                ),
            ));
        }
        let mut r = Reader::new(body, what);
        if r.take(4, "magic")? != INDEX_MAGIC {
            return Err(Error::malformed(
                what,
                0,
                "not an index (magic is not GWIX)",
            ));
        }
        let v = r.u16_be("version")?;
        if v != IndexVersion::V1 as u16 {
            return Err(Error::malformed(
                what,
                4,
                format!("index version {v} (this build reads 1)"),
            ));
        }
        let flags = r.u16_be("flags")?;
        if flags & !1 != 0 {
            return Err(Error::malformed(
                what,
                6,
                format!("unknown flags {flags:#x}"),
            ));
        }
        let chunk_size = r.u32_be("chunk size")?;
        check_chunk_size(chunk_size).map_err(|e| Error::malformed(what, 8, e.to_string()))?;
        let disk_size = r.u64_be("disk size")?;
        let created_ms = r.u64_be("created")?;
        let count = r.u64_be("entry count")?;
        if count != chunk_count(disk_size, chunk_size) {
            return Err(Error::malformed(
                what,
                28,
                format!("{count} entries for a {disk_size}-byte disk at {chunk_size}-byte chunks"),
            ));
        }
        let sha: [u8; 32] = r.array("raw sha256")?;
        let raw_sha256 = (flags & 1 == 1).then_some(sha);
        let at = r.offset();
        let sync_id = SyncId::parse(&r.str16("sync id")?)
            .map_err(|e| Error::malformed(what, at, e.to_string()))?;
        let at = r.offset();
        let p = r.str16("parent")?;
        let parent = if p.is_empty() {
            None
        } else {
            Some(SyncId::parse(&p).map_err(|e| Error::malformed(what, at, e.to_string()))?)
        };
        let at = r.offset();
        let vm = r.str16("vm")?;
        check_vm_name(&vm).map_err(|e| Error::malformed(what, at, e.to_string()))?;
        let disk = r.u32_be("disk number")?;
        let pairs = r.u16_be("metadata count")?;
        if pairs > MAX_META_PAIRS {
            return Err(Error::malformed(
                what,
                r.offset() - 2,
                format!("{pairs} metadata pairs (limit {MAX_META_PAIRS})"),
            ));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..pairs {
            let k = r.str16("metadata key")?;
            let n = r.u32_be("metadata value length")?;
            if n > MAX_META_VALUE {
                return Err(Error::malformed(
                    what,
                    r.offset() - 4,
                    format!("metadata value of {n} bytes"),
                ));
            }
            let at = r.offset();
            let v = r.take(usize::try_from(n).unwrap_or(usize::MAX), "metadata value")?;
            let v = String::from_utf8(v.to_vec())
                .map_err(|_| Error::malformed(what, at, "metadata value: not UTF-8"))?;
            metadata.insert(k, v);
        }
        // Every entry takes at least one byte: check before allocating.
        let left = r.left() as u64;
        if count > left {
            return Err(Error::malformed(
                what,
                28,
                format!("{count} entries but only {left} bytes left"),
            ));
        }
        let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for _ in 0..count {
            let at = r.offset();
            match r.u8("entry tag")? {
                0 => entries.push(Entry::Zero),
                1 => entries.push(Entry::Data(r.digest("entry digest")?)),
                t => {
                    return Err(Error::malformed(
                        what,
                        at,
                        format!("entry tag {t} (0 zero, 1 data)"),
                    ));
                }
            }
        }
        if !r.at_end() {
            return Err(Error::malformed(
                what,
                r.offset(),
                "trailing bytes after the last entry",
            ));
        }
        Ok(SyncIndex {
            sync_id,
            parent,
            vm,
            disk,
            chunk_size,
            disk_size,
            created_ms,
            raw_sha256,
            metadata,
            entries,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(128 + self.entries.len() * 33);
        o.extend_from_slice(&INDEX_MAGIC);
        o.extend_from_slice(&(IndexVersion::current() as u16).to_be_bytes());
        o.extend_from_slice(&u16::from(self.raw_sha256.is_some()).to_be_bytes());
        o.extend_from_slice(&self.chunk_size.to_be_bytes());
        o.extend_from_slice(&self.disk_size.to_be_bytes());
        o.extend_from_slice(&self.created_ms.to_be_bytes());
        o.extend_from_slice(&(self.entries.len() as u64).to_be_bytes());
        o.extend_from_slice(&self.raw_sha256.unwrap_or([0; 32]));
        put_str16(&mut o, self.sync_id.as_str());
        put_str16(&mut o, self.parent.as_ref().map_or("", SyncId::as_str));
        put_str16(&mut o, &self.vm);
        o.extend_from_slice(&self.disk.to_be_bytes());
        let pairs = u16::try_from(self.metadata.len()).unwrap_or(u16::MAX);
        o.extend_from_slice(&pairs.to_be_bytes());
        for (k, v) in self.metadata.iter().take(usize::from(pairs)) {
            put_str16(&mut o, k);
            o.extend_from_slice(&u32::try_from(v.len()).unwrap_or(0).to_be_bytes());
            o.extend_from_slice(v.as_bytes());
        }
        for e in &self.entries {
            match e {
                Entry::Zero => o.push(0),
                Entry::Data(d) => {
                    o.push(1);
                    o.extend_from_slice(&d.0);
                }
            }
        }
        let sum = Sha256::digest(&o);
        o.extend_from_slice(&sum);
        o
    }

    /// Byte range of chunk `i` on the disk.
    pub fn chunk_range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * u64::from(self.chunk_size);
        let len = (self.disk_size - start.min(self.disk_size)).min(u64::from(self.chunk_size));
        (start, len)
    }

    /// Distinct digests this sync references.
    pub fn digests(&self) -> Vec<ChunkDigest> {
        let mut v: Vec<ChunkDigest> = self
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Data(d) => Some(*d),
                Entry::Zero => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(entries: Vec<Entry>, chunk_size: u32) -> SyncIndex {
        let disk_size = entries.len() as u64 * u64::from(chunk_size)
            - 100.min(u64::from(chunk_size) - 1) * u64::from(!entries.is_empty());
        let mut metadata = BTreeMap::new();
        metadata.insert("source".to_string(), "file:///x.vmdk".to_string());
        SyncIndex {
            sync_id: SyncId::new(1_763_770_000_123),
            parent: Some(SyncId::parse("20251121T000000.000Z-0000abcd").unwrap()),
            vm: "web-01".into(),
            disk: 2,
            chunk_size,
            disk_size,
            created_ms: 1_763_770_000_123,
            raw_sha256: Some([9; 32]),
            metadata,
            entries,
        }
    }

    #[test]
    fn version_is_pinned() {
        assert_eq!(IndexVersion::current() as u16, 1);
    }

    #[test]
    fn stamp_is_utc_civil_time() {
        assert_eq!(utc_stamp(0), "19700101T000000.000Z");
        assert_eq!(utc_stamp(1_763_770_000_123), "20251122T000640.123Z");
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000.000Z");
        let id = SyncId::new(1_763_770_000_123);
        assert_eq!(SyncId::parse(id.as_str()).unwrap(), id);
        assert!(SyncId::parse("../../etc").is_err());
        // Past 9999 (a broken clock): the latest id there is, not a 5-digit year.
        assert_eq!(utc_stamp(u64::MAX), "99991231T235959.999Z");
        assert_eq!(
            SyncId::with_suffix(u64::MAX, 1).unix_ms(),
            253_402_300_799_999
        );
        // Digits that name no date or time are never the newest.
        for bad in [
            "20261301T000000.000Z-00000000",
            "20260230T000000.000Z-00000000",
            "20260101T250000.000Z-00000000",
        ] {
            let id = SyncId::parse(bad).unwrap();
            assert_eq!(id.unix_ms(), u64::MAX, "{bad}");
            assert_eq!(newest(std::slice::from_ref(&id), 1_800_000_000_000), None);
        }
    }

    proptest! {
        #[test]
        fn sync_id_time_round_trips(ms in 0u64..253_402_300_799_999) {
            let id = SyncId::with_suffix(ms, 0xabc);
            prop_assert_eq!(id.unix_ms(), ms);
            prop_assert_eq!(id.suffix(), "00000abc");
        }
    }

    #[test]
    fn newest_skips_ids_from_the_far_future() {
        let now = 1_763_770_000_000;
        let mut v = vec![
            SyncId::with_suffix(now - 5000, 1),
            SyncId::with_suffix(now + 60_000, 2),
            SyncId::parse("99991231T235959.999Z-ffffffff").unwrap(),
        ];
        v.sort();
        assert_eq!(
            newest(&v, now),
            Some(&v[1]),
            "a minute ahead is clock skew, taken"
        );
        assert_eq!(newest(&v[2..], now), None);
    }

    #[test]
    fn round_trip_and_tamper() {
        let idx = sample(
            vec![Entry::Zero, Entry::Data(ChunkDigest::of(b"a")), Entry::Zero],
            4096,
        );
        let b = idx.encode();
        assert_eq!(SyncIndex::parse(&b, "t").unwrap(), idx);
        let mut t = b.clone();
        t[50] ^= 1;
        assert!(SyncIndex::parse(&t, "t").is_err());
        assert!(SyncIndex::parse(&b[..b.len() - 1], "t").is_err());
    }

    #[test]
    fn lying_count_is_refused_before_allocating() {
        let idx = sample(vec![Entry::Zero], 4096);
        let mut b = idx.encode();
        b.truncate(b.len() - 32);
        b[12..20].copy_from_slice(&(u64::MAX / 2).to_be_bytes());
        b[28..36].copy_from_slice(&chunk_count(u64::MAX / 2, 4096).to_be_bytes());
        let sum = Sha256::digest(&b);
        b.extend_from_slice(&sum);
        let e = SyncIndex::parse(&b, "t").unwrap_err().to_string();
        assert!(e.contains("entries but only"), "{e}");
    }

    proptest! {
        #[test]
        fn prop_round_trip(tags in proptest::collection::vec(any::<Option<[u8; 32]>>(), 1..50), shift in 12u32..=23) {
            let entries = tags.into_iter().map(|t| t.map_or(Entry::Zero, |d| Entry::Data(ChunkDigest(d)))).collect();
            let idx = sample(entries, 1 << shift);
            prop_assert_eq!(SyncIndex::parse(&idx.encode(), "p").unwrap(), idx);
        }

        #[test]
        fn prop_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SyncIndex::parse(&bytes, "p");
        }
    }
}
