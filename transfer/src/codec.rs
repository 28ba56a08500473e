//! Transfer's field readers on the shared cursor ([`godwit_cursor::Reader`]): length-prefixed
//! strings and blobs, chunk digests and counts bounded before anything is allocated. Used by
//! the wire frames and the sync index; their encoders use the matching `put_*` helpers.

use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use godwit_cursor::{Put, Reader, Short};

impl From<Short> for Error {
    fn from(s: Short) -> Error {
        Error::malformed(
            s.what,
            s.offset,
            format!("{}: needs {} bytes, {} left", s.field, s.needed, s.left),
        )
    }
}

/// Reads of transfer's composite fields.
pub(crate) trait ReadExt {
    /// A UTF-8 string with a big-endian u16 length prefix.
    fn str16(&mut self, field: &'static str) -> Result<String>;
    /// Bytes with a big-endian u32 length prefix.
    fn blob32(&mut self, field: &'static str) -> Result<Vec<u8>>;
    /// A SHA-256 chunk digest.
    fn digest(&mut self, field: &'static str) -> Result<ChunkDigest>;
    /// A u32 element count, at most `max`, whose elements (`each` bytes at least) fit in
    /// what is left.
    fn count(&mut self, field: &'static str, max: usize, each: usize) -> Result<usize>;
}

impl ReadExt for Reader<'_> {
    fn str16(&mut self, field: &'static str) -> Result<String> {
        let n = usize::from(self.u16_be(field)?);
        let at = self.offset();
        String::from_utf8(self.take(n, field)?.to_vec())
            .map_err(|_| Error::malformed(self.what(), at, format!("{field}: not UTF-8")))
    }

    fn blob32(&mut self, field: &'static str) -> Result<Vec<u8>> {
        let n = usize::try_from(self.u32_be(field)?).unwrap_or(usize::MAX);
        Ok(self.take(n, field)?.to_vec())
    }

    fn digest(&mut self, field: &'static str) -> Result<ChunkDigest> {
        Ok(ChunkDigest(self.array(field)?))
    }

    fn count(&mut self, field: &'static str, max: usize, each: usize) -> Result<usize> {
        let n = usize::try_from(self.u32_be(field)?).unwrap_or(usize::MAX);
        let left = self.left();
        if n > max || n.saturating_mul(each) > left {
            return Err(Error::malformed(
                self.what(),
                self.offset(),
                format!("{field}: count {n} (limit {max}, {left} bytes left)"),
            ));
        }
        Ok(n)
    }
}

/// A string with a u16 length prefix (cut at 65535 bytes; callers check lengths first).
pub(crate) fn put_str16(o: &mut Vec<u8>, s: &str) {
    let n = s.len().min(usize::from(u16::MAX));
    o.put_u16_be(u16::try_from(n).unwrap_or(0));
    o.extend_from_slice(&s.as_bytes()[..n]);
}

/// Bytes with a u32 length prefix.
pub(crate) fn put_blob32(o: &mut Vec<u8>, b: &[u8]) {
    o.put_u32_be(u32::try_from(b.len()).unwrap_or(u32::MAX));
    o.extend_from_slice(b);
}
