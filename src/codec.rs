//! Little-endian encoding helpers shared by every on-disk format.
//!
//! [`Reader`] never panics on bad bytes: every read is bounds-checked and a short or
//! impossible input is a [`Truncated`] error that the caller turns into
//! `Error::Corruption` naming its file and offset.

#[cfg(test)]
use bytes::BufMut;

/// The input ended before a structure did, or a length was impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Offset inside the input where the bad read started.
    pub at: usize,
}

/// A bounds-checked cursor over bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if n > self.remaining() {
            return Err(Truncated { at: self.pos });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A `u32` length, checked against `max`, then that many bytes.
    pub fn bytes32(&mut self, max: usize) -> Result<&'a [u8], Truncated> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n > max {
            return Err(Truncated { at });
        }
        self.take(n)
    }

    /// A count that must leave room for `count * min_item` more bytes.
    pub fn count32(&mut self, min_item: usize) -> Result<usize, Truncated> {
        let at = self.pos;
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(Truncated { at });
        }
        Ok(n)
    }
}

/// Appends a `u32` length and the bytes (the first page format's encoders, kept for tests).
#[cfg(test)]
pub fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    // Callers pass keys, bounds and separators (<= MAX_KEY_LEN, limits.rs) and inline values
    // (<= MAX_VALUE_LEN): all far below u32::MAX.
    #[allow(clippy::cast_possible_truncation)]
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_rejects_short_and_oversize() {
        let mut out = Vec::new();
        put_bytes32(&mut out, b"hello");
        let mut r = Reader::new(&out);
        assert_eq!(r.bytes32(16).unwrap(), b"hello");
        assert_eq!(r.u8(), Err(Truncated { at: 9 }));
        let mut r = Reader::new(&out);
        assert!(r.bytes32(4).is_err());
        let mut r = Reader::new(&out[..6]);
        assert!(r.bytes32(16).is_err());
        let big = 1_000_000u32.to_le_bytes();
        assert!(Reader::new(&big).count32(8).is_err());
    }
}
