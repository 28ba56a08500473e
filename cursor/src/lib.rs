//! # godwit-cursor
//!
//! The one byte cursor of the parsers of untrusted input (transfer's wire frames and sync
//! indexes, netcheck's X.509/DER reader). Modelled on rustls's `codec::Reader`: a slice and a
//! position, reads that either return the bytes or fail without moving, never a panic and
//! never an allocation sized by the input. Each read names its field; a short input is a
//! [`Short`] error with the absolute offset (the reader knows where its slice sits in the whole
//! object: [`Reader::with_base`], [`Reader::sub`]) and the object's name, so a caller's error
//! says what and where.
//!
//! Writing is the other half: big-endian `put_*` helpers on `Vec<u8>` ([`Put`]), so every
//! decoder built on [`Reader`] has an encoder of the same shape and a round-trip test.

use std::fmt;

/// The input ended before a field did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Short {
    /// What is being read (a frame, an index file's name, a certificate).
    pub what: String,
    /// The field that did not fit.
    pub field: &'static str,
    /// Absolute offset of the field in `what`.
    pub offset: u64,
    /// Bytes the field needs.
    pub needed: usize,
    /// Bytes that were left.
    pub left: usize,
}

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: {}: needs {} bytes, {} left",
            self.what, self.offset, self.field, self.needed, self.left
        )
    }
}

/// A cursor over `buf`; `buf[0]` is at absolute offset `base` of the object `what`.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
    what: &'a str,
}

impl<'a> Reader<'a> {
    /// A reader over the whole of object `what`.
    pub fn new(buf: &'a [u8], what: &'a str) -> Self {
        Self::with_base(buf, what, 0)
    }

    /// A reader over part of object `what` that starts at absolute offset `base`.
    pub fn with_base(buf: &'a [u8], what: &'a str, base: u64) -> Self {
        Reader {
            buf,
            pos: 0,
            base,
            what,
        }
    }

    /// The object's name given at construction.
    pub fn what(&self) -> &'a str {
        self.what
    }

    /// Absolute offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    /// Bytes read so far from this reader's slice.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte was read.
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// The unread bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// The next byte, without consuming it.
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn short(&self, field: &'static str, needed: usize) -> Short {
        Short {
            what: self.what.to_string(),
            field,
            offset: self.offset(),
            needed,
            left: self.left(),
        }
    }

    /// The next `n` bytes; on a short input nothing is consumed.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Short> {
        if n > self.left() {
            return Err(self.short(field, n));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Short> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    /// A reader over the next `n` bytes (consumed here), keeping absolute offsets.
    pub fn sub(&mut self, n: usize, field: &'static str) -> Result<Reader<'a>, Short> {
        let base = self.offset();
        let buf = self.take(n, field)?;
        Ok(Reader::with_base(buf, self.what, base))
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, Short> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16_be(&mut self, field: &'static str) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub fn u32_be(&mut self, field: &'static str) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub fn u64_be(&mut self, field: &'static str) -> Result<u64, Short> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
}

/// Big-endian writers, the encoders' half of [`Reader`].
pub trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16_be(&mut self, v: u16);
    fn put_u32_be(&mut self, v: u32);
    fn put_u64_be(&mut self, v: u64);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16_be(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32_be(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64_be(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_in_order_and_reports_short_input_with_offset_and_field() {
        let b = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];
        let mut r = Reader::with_base(&b, "frame", 4);
        assert_eq!(r.u8("kind").unwrap(), 1);
        assert_eq!(r.u16_be("len").unwrap(), 0x0203);
        assert_eq!(r.offset(), 7);
        let e = r.u64_be("size").unwrap_err();
        assert_eq!(
            e,
            Short {
                what: "frame".into(),
                field: "size",
                offset: 7,
                needed: 8,
                left: 4
            }
        );
        assert_eq!(
            e.to_string(),
            "frame at byte 7: size: needs 8 bytes, 4 left"
        );
        // A failed read consumes nothing.
        assert_eq!(r.u32_be("tail").unwrap(), 0x0405_0607);
        assert!(r.at_end());
    }

    #[test]
    fn sub_readers_keep_absolute_offsets() {
        let b = [9u8; 10];
        let mut r = Reader::new(&b, "cert");
        r.take(3, "head").unwrap();
        let mut s = r.sub(4, "body").unwrap();
        assert_eq!(s.offset(), 3);
        s.take(4, "all").unwrap();
        assert_eq!(s.u8("past").unwrap_err().offset, 7);
        assert_eq!(r.offset(), 7);
        assert_eq!(r.sub(4, "too long").unwrap_err().left, 3);
    }

    proptest! {
        #[test]
        fn put_then_read_round_trips(a: u8, b: u16, c: u32, d: u64, tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut o = Vec::new();
            o.put_u8(a);
            o.put_u16_be(b);
            o.put_u32_be(c);
            o.put_u64_be(d);
            o.extend_from_slice(&tail);
            let mut r = Reader::new(&o, "t");
            prop_assert_eq!(r.u8("a").unwrap(), a);
            prop_assert_eq!(r.u16_be("b").unwrap(), b);
            prop_assert_eq!(r.u32_be("c").unwrap(), c);
            prop_assert_eq!(r.u64_be("d").unwrap(), d);
            prop_assert_eq!(r.take(tail.len(), "tail").unwrap(), &tail[..]);
            prop_assert!(r.at_end());
        }

        #[test]
        fn arbitrary_reads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), ops in proptest::collection::vec(0u8..6, 0..32)) {
            let mut r = Reader::new(&bytes, "t");
            for op in ops {
                let before = r.position();
                let ok = match op {
                    0 => r.u8("x").is_ok(),
                    1 => r.u16_be("x").is_ok(),
                    2 => r.u32_be("x").is_ok(),
                    3 => r.u64_be("x").is_ok(),
                    4 => r.take(bytes.len() % 7, "x").is_ok(),
                    _ => r.sub(3, "x").is_ok(),
                };
                if !ok {
                    prop_assert_eq!(r.position(), before);
                }
                prop_assert!(r.position() <= bytes.len());
            }
        }
    }
}
