//! The WAL record and segment-header formats: encoding, framing and checked decoding.
//!
//! Everything is little-endian and written with explicit `to_le_bytes`.
//!
//! # Segment header (16 bytes, at offset 0 of every `wal-{seq:016x}.log`)
//!
//! ```text
//! offset  size  field
//!      0     8  magic   b"RKVWAL01" (the u64 0x3130_4C41_5756_4B52 little-endian)
//!      8     8  seq     u64, the segment's sequence number (equals the one in the file name)
//! ```
//!
//! Records follow the header back to back, up to the end of the file.
//!
//! # Record (8-byte frame + payload)
//!
//! ```text
//! offset  size  field
//!      0     4  len      u32, payload bytes (12 ..= MAX_WAL_RECORD_LEN)
//!      4     4  crc      u32, CRC32C of the payload bytes
//!      8   len  payload
//! ```
//!
//! Payload:
//!
//! ```text
//! offset  size  field
//!      0     8  ts        u64, commit timestamp
//!      8     4  op_count  u32
//!     12     …  op_count ops, back to back
//! ```
//!
//! Op:
//!
//! ```text
//! size     field
//!    1     kind       u8: 1 = put, 2 = delete
//!    4     bucket     u32
//!    4     key_len    u32 (<= MAX_KEY_LEN)
//! key_len  key
//!    4     value_len  u32 (<= MAX_VALUE_LEN)   put only
//! value_len value                              put only
//! ```
//!
//! The payload must be consumed exactly: trailing bytes after the last op are an error.
//! A record's `ts` is never 0. A record is one commit; its ops may name several buckets (a
//! transaction or write batch over several, grouped by bucket id), all replayed at `ts`.
//!
//! # Batch mark (8-byte frame + 24-byte payload, first in every batch the writer writes)
//!
//! ```text
//! offset  size  field
//!      0     8  ts         u64 = 0 (what tells a mark from a record)
//!      8     8  at         u64, the segment offset the mark was written at
//!     16     8  synced_to  u64, segment bytes known durable (fdatasync completed) when
//!                          the batch was written
//! ```
//!
//! Marks let recovery tell a torn tail from damage: a mark found at an offset other than
//! its `at` is a misdirected write, and a mark whose `synced_to` lies beyond a bad record
//! proves that record was durable once, so it is corruption, not a torn tail.
//!
//! # Decoding rules
//!
//! Bytes read from disk are never trusted. [`decode_frame`] and [`decode_payload`] check
//! every length against the bytes available and against the bounds in [`crate::limits`]
//! before allocating or slicing, and return a typed [`RecordError`]; they never panic.
//! The reader turns a `RecordError` into the end of the log (the torn tail) or, through
//! [`RecordError::at`], into an [`Error::Corruption`] naming file and offset.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::limits::{MAX_KEY_LEN, MAX_VALUE_LEN, MAX_WAL_RECORD_LEN};

/// Magic bytes at offset 0 of every WAL segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RKVWAL01";
/// Size of the segment header (magic + seq).
pub const SEGMENT_HEADER_LEN: usize = 16;
/// Size of the record frame (len + crc) in front of every payload.
pub const FRAME_LEN: usize = 8;
/// Smallest payload: `ts` + `op_count`, no ops.
pub const MIN_PAYLOAD_LEN: usize = 12;
/// Payload length of a batch mark: `ts` (0) + `at` + `synced_to`.
pub const MARK_PAYLOAD_LEN: usize = 24;
/// Encoded length of a batch mark.
pub const MARK_LEN: usize = FRAME_LEN + MARK_PAYLOAD_LEN;
/// Smallest encoded op (a delete of an empty key): kind + bucket + `key_len`.
const MIN_OP_LEN: usize = 9;
/// Op kind byte of a put.
const KIND_PUT: u8 = 1;
/// Op kind byte of a delete.
const KIND_DELETE: u8 = 2;

const _: () = assert!(SEGMENT_HEADER_LEN == SEGMENT_MAGIC.len() + size_of::<u64>());
const _: () = assert!(FRAME_LEN == 2 * size_of::<u32>());
const _: () = assert!(MIN_PAYLOAD_LEN == size_of::<u64>() + size_of::<u32>());
const _: () = assert!(MIN_OP_LEN == 1 + 2 * size_of::<u32>());
// Every length field is a u32: the bounds must fit.
const _: () = assert!(MAX_WAL_RECORD_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_KEY_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_VALUE_LEN <= u32::MAX as usize);

/// One committed transaction's write set, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// Commit timestamp of the transaction.
    pub ts: u64,
    /// The writes, in the order they are to be replayed.
    pub ops: Vec<WalOp>,
}

/// One write of a [`WalRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalOp {
    /// Set `key` to `value` in `bucket`.
    Put {
        /// Bucket id.
        bucket: u32,
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Delete `key` from `bucket` (a tombstone).
    Delete {
        /// Bucket id.
        bucket: u32,
        /// The key.
        key: Bytes,
    },
}

/// Why a record (or a segment header) failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes are available than the structure needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// The frame's payload length is outside `MIN_PAYLOAD_LEN ..= MAX_WAL_RECORD_LEN`.
    #[error("impossible payload length {len}")]
    BadLength {
        /// The length read.
        len: u64,
    },
    /// The payload's CRC32C does not match the frame.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// CRC stored in the frame.
        stored: u32,
        /// CRC computed over the payload.
        computed: u32,
    },
    /// An op count larger than the payload could hold.
    #[error("op count {count} impossible in a payload of {len} bytes")]
    BadOpCount {
        /// The count read.
        count: u32,
        /// The payload length.
        len: u64,
    },
    /// An op kind byte other than 1 (put) or 2 (delete).
    #[error("unknown op kind {kind} at payload offset {offset}")]
    BadOpKind {
        /// The byte read.
        kind: u8,
        /// Its offset inside the payload.
        offset: u64,
    },
    /// A key or value length above its bound.
    #[error("{what} length {len} exceeds the limit {max}")]
    TooLong {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// The length read.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// Bytes left in the payload after the last op.
    #[error("{extra} trailing bytes after the last op")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// A record with timestamp 0 (only batch marks carry 0).
    #[error("record timestamp 0")]
    ZeroTs,
    /// A segment header without the magic bytes.
    #[error("bad segment magic {found:02x?}")]
    BadMagic {
        /// The 8 bytes found.
        found: [u8; 8],
    },
}

impl RecordError {
    /// This error as an [`Error::Corruption`] of the structure at `offset` in `file`.
    pub fn at(&self, file: impl Into<std::path::PathBuf>, offset: u64) -> Error {
        Error::corruption(file, offset, self.to_string())
    }
}

/// Encoded size of the payload of `rec`, without the frame. Saturates instead of overflowing
/// so that an absurd record is reported as too long rather than wrapping.
fn payload_len(rec: &WalRecord) -> u64 {
    let mut len = MIN_PAYLOAD_LEN as u64;
    for op in &rec.ops {
        let op_len = match op {
            WalOp::Put { key, value, .. } => MIN_OP_LEN + key.len() + 4 + value.len(),
            WalOp::Delete { key, .. } => MIN_OP_LEN + key.len(),
        };
        len = len.saturating_add(op_len as u64);
    }
    len
}

/// Checks the bounds `decode_payload` will enforce, so that a record we write is always one
/// we can read back.
pub fn validate(rec: &WalRecord) -> Result<u64> {
    if rec.ts == 0 {
        return Err(Error::invalid("WAL record with timestamp 0 (reserved for batch marks)"));
    }
    if u32::try_from(rec.ops.len()).is_err() {
        return Err(Error::invalid(format!("WAL record with {} ops", rec.ops.len())));
    }
    for op in &rec.ops {
        let (key, value) = match op {
            WalOp::Put { key, value, .. } => (key, Some(value)),
            WalOp::Delete { key, .. } => (key, None),
        };
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid(format!(
                "key of {} bytes exceeds MAX_KEY_LEN {MAX_KEY_LEN}",
                key.len()
            )));
        }
        if let Some(value) = value {
            if value.len() > MAX_VALUE_LEN {
                return Err(Error::invalid(format!(
                    "value of {} bytes exceeds MAX_VALUE_LEN {MAX_VALUE_LEN}",
                    value.len()
                )));
            }
        }
    }
    let len = payload_len(rec);
    if len > MAX_WAL_RECORD_LEN as u64 {
        return Err(Error::invalid(format!(
            "WAL record of {len} bytes exceeds MAX_WAL_RECORD_LEN {MAX_WAL_RECORD_LEN}"
        )));
    }
    Ok(len)
}

/// Encodes a batch mark written at segment offset `at` when `synced_to` bytes of the
/// segment were durable.
pub fn encode_mark(at: u64, synced_to: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(MARK_LEN);
    // A constant: 24.
    #[allow(clippy::cast_possible_truncation)]
    buf.put_slice(&(MARK_PAYLOAD_LEN as u32).to_le_bytes());
    buf.put_slice(&0u32.to_le_bytes());
    buf.put_slice(&0u64.to_le_bytes());
    buf.put_slice(&at.to_le_bytes());
    buf.put_slice(&synced_to.to_le_bytes());
    let crc = crc32c::crc32c(&buf[FRAME_LEN..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf.freeze()
}

/// The `(at, synced_to)` of the batch mark at the start of `buf`, if `buf` starts with an
/// intact one (exact length, CRC, `ts` 0).
pub fn decode_mark(buf: &[u8]) -> Option<(u64, u64)> {
    let mark = buf.get(..MARK_LEN)?;
    let le = |r: std::ops::Range<usize>| u64::from_le_bytes(mark[r].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(mark[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(mark[4..8].try_into().expect("4 bytes"));
    (len as usize == MARK_PAYLOAD_LEN && crc32c::crc32c(&mark[FRAME_LEN..]) == crc && le(8..16) == 0)
        .then(|| (le(16..24), le(24..32)))
}

/// Encodes `rec` as a framed record (frame + payload), ready to be appended to a segment.
///
/// Errors: [`Error::InvalidArgument`] if a key, a value or the whole record is over its bound.
pub fn encode(rec: &WalRecord) -> Result<Bytes> {
    let len = validate(rec)?;
    // <= MAX_WAL_RECORD_LEN (1 GiB), checked by validate: fits usize and u32.
    #[allow(clippy::cast_possible_truncation)]
    let (len_usize, len_u32) = (len as usize, len as u32);
    let mut buf = BytesMut::with_capacity(FRAME_LEN + len_usize);
    // The frame goes first; its CRC is patched in once the payload is written.
    buf.put_slice(&len_u32.to_le_bytes());
    buf.put_slice(&0u32.to_le_bytes());
    buf.put_slice(&rec.ts.to_le_bytes());
    // validate checked u32::try_from(rec.ops.len()).
    #[allow(clippy::cast_possible_truncation)]
    buf.put_slice(&(rec.ops.len() as u32).to_le_bytes());
    for op in &rec.ops {
        match op {
            WalOp::Put { bucket, key, value } => {
                buf.put_u8(KIND_PUT);
                buf.put_slice(&bucket.to_le_bytes());
                // <= MAX_KEY_LEN and <= MAX_VALUE_LEN (limits.rs), checked by validate.
                #[allow(clippy::cast_possible_truncation)]
                let (key_len, value_len) = (key.len() as u32, value.len() as u32);
                buf.put_slice(&key_len.to_le_bytes());
                buf.put_slice(key);
                buf.put_slice(&value_len.to_le_bytes());
                buf.put_slice(value);
            }
            WalOp::Delete { bucket, key } => {
                buf.put_u8(KIND_DELETE);
                buf.put_slice(&bucket.to_le_bytes());
                // <= MAX_KEY_LEN (limits.rs), checked by validate.
                #[allow(clippy::cast_possible_truncation)]
                let key_len = key.len() as u32;
                buf.put_slice(&key_len.to_le_bytes());
                buf.put_slice(key);
            }
        }
    }
    assert_eq!(buf.len(), FRAME_LEN + len_usize, "WAL record size computed wrong");
    let crc = crc32c::crc32c(&buf[FRAME_LEN..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.freeze())
}

/// Decodes a record frame: returns `(payload_len, crc)`. The length is checked against
/// `MIN_PAYLOAD_LEN ..= MAX_WAL_RECORD_LEN`; the CRC is checked by [`decode_payload`].
#[allow(clippy::trivially_copy_pass_by_ref)] // the frame as read, borrowed like the payload
pub fn decode_frame(frame: &[u8; FRAME_LEN]) -> Result<(u32, u32), RecordError> {
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    if (len as usize) < MIN_PAYLOAD_LEN || len as usize > MAX_WAL_RECORD_LEN {
        return Err(RecordError::BadLength { len: len.into() });
    }
    Ok((len, crc))
}

/// A bounds-checked little-endian cursor over a payload.
struct Cursor<'a> {
    payload: &'a Bytes,
    pos: usize,
}

impl Cursor<'_> {
    fn remaining(&self) -> usize {
        self.payload.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if n > self.remaining() {
            return Err(RecordError::Truncated { need: n as u64, have: self.remaining() as u64 });
        }
        let s = &self.payload[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_bytes(&mut self, n: usize) -> Result<Bytes, RecordError> {
        if n > self.remaining() {
            return Err(RecordError::Truncated { need: n as u64, have: self.remaining() as u64 });
        }
        let b = self.payload.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
    }

    /// A `u32` length followed by that many bytes, the length bounded by `max`.
    fn sized(&mut self, what: &'static str, max: usize) -> Result<Bytes, RecordError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(RecordError::TooLong { what, len: len as u64, max: max as u64 });
        }
        self.take_bytes(len)
    }
}

/// Checks `payload` against `crc` and decodes it. Keys and values are zero-copy slices of
/// `payload`.
pub fn decode_payload(payload: &Bytes, crc: u32) -> Result<WalRecord, RecordError> {
    let computed = crc32c::crc32c(payload);
    if computed != crc {
        return Err(RecordError::ChecksumMismatch { stored: crc, computed });
    }
    let mut cur = Cursor { payload, pos: 0 };
    let ts = cur.u64()?;
    if ts == 0 {
        return Err(RecordError::ZeroTs);
    }
    let count = cur.u32()?;
    // Bound the allocation by what the payload can hold, not by what it claims.
    if count as usize > cur.remaining() / MIN_OP_LEN {
        return Err(RecordError::BadOpCount { count, len: payload.len() as u64 });
    }
    let mut ops = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let kind_offset = cur.pos as u64;
        let kind = cur.u8()?;
        let bucket = cur.u32()?;
        let key = cur.sized("key", MAX_KEY_LEN)?;
        match kind {
            KIND_PUT => {
                let value = cur.sized("value", MAX_VALUE_LEN)?;
                ops.push(WalOp::Put { bucket, key, value });
            }
            KIND_DELETE => ops.push(WalOp::Delete { bucket, key }),
            _ => return Err(RecordError::BadOpKind { kind, offset: kind_offset }),
        }
    }
    if cur.remaining() != 0 {
        return Err(RecordError::TrailingBytes { extra: cur.remaining() as u64 });
    }
    Ok(WalRecord { ts, ops })
}

/// Decodes one framed record from the front of `buf`. Returns the record and the number of
/// bytes it occupied (frame + payload). The payload is copied once; keys and values share it.
pub fn decode(buf: &[u8]) -> Result<(WalRecord, usize), RecordError> {
    let Some(frame) = buf.first_chunk::<FRAME_LEN>() else {
        return Err(RecordError::Truncated { need: FRAME_LEN as u64, have: buf.len() as u64 });
    };
    let (len, crc) = decode_frame(frame)?;
    let total = FRAME_LEN + len as usize;
    if buf.len() < total {
        return Err(RecordError::Truncated { need: total as u64, have: buf.len() as u64 });
    }
    let payload = Bytes::copy_from_slice(&buf[FRAME_LEN..total]);
    Ok((decode_payload(&payload, crc)?, total))
}

/// Encodes the header of segment `seq`.
pub fn encode_segment_header(seq: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(SEGMENT_HEADER_LEN);
    buf.put_slice(&SEGMENT_MAGIC);
    buf.put_slice(&seq.to_le_bytes());
    assert_eq!(buf.len(), SEGMENT_HEADER_LEN);
    buf.freeze()
}

/// Decodes a segment header: checks the magic and returns the sequence number it holds.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, RecordError> {
    let Some(header) = buf.first_chunk::<SEGMENT_HEADER_LEN>() else {
        return Err(RecordError::Truncated { need: SEGMENT_HEADER_LEN as u64, have: buf.len() as u64 });
    };
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[..8]);
    if magic != SEGMENT_MAGIC {
        return Err(RecordError::BadMagic { found: magic });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[8..]);
    Ok(u64::from_le_bytes(seq))
}

#[cfg(test)]
// Unit tests build small images and patterns: their casts cannot truncate or are meant to.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The preallocated tail of a segment is zeros: no run of zeros may decode as a record
    /// or a batch mark (a zero length is below `MIN_PAYLOAD_LEN`, and a mark needs its own
    /// length in the frame).
    #[test]
    fn a_run_of_zeros_is_never_a_record_or_a_mark() {
        let zeros = [0u8; 4096];
        let frame: &[u8; FRAME_LEN] = zeros[..FRAME_LEN].try_into().unwrap();
        assert_eq!(decode_frame(frame), Err(RecordError::BadLength { len: 0 }));
        for len in 0..=zeros.len() {
            assert_eq!(decode_mark(&zeros[..len]), None, "{len} zeros");
        }
        // Even with a frame claiming a payload, zeros are no record (ts 0, CRC of zeros).
        let payload = Bytes::from_static(&[0u8; MIN_PAYLOAD_LEN]);
        assert!(decode_payload(&payload, 0).is_err());
    }

    fn sample() -> WalRecord {
        WalRecord {
            ts: 0x0102_0304_0506_0708,
            ops: vec![
                WalOp::Put { bucket: 7, key: Bytes::from_static(b"alice"), value: Bytes::from_static(b"42") },
                WalOp::Delete { bucket: 3, key: Bytes::from_static(b"bob") },
                WalOp::Put { bucket: 0, key: Bytes::new(), value: Bytes::new() },
            ],
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let rec = WalRecord {
            ts: 5,
            ops: vec![WalOp::Put {
                bucket: 2,
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"vv"),
            }],
        };
        let enc = encode(&rec).unwrap();
        let payload_len = 12 + 1 + 4 + 4 + 1 + 4 + 2;
        assert_eq!(enc.len(), FRAME_LEN + payload_len);
        assert_eq!(&enc[0..4], &(payload_len as u32).to_le_bytes());
        assert_eq!(&enc[4..8], &crc32c::crc32c(&enc[8..]).to_le_bytes());
        assert_eq!(&enc[8..16], &5u64.to_le_bytes());
        assert_eq!(&enc[16..20], &1u32.to_le_bytes());
        assert_eq!(enc[20], KIND_PUT);
        assert_eq!(&enc[21..25], &2u32.to_le_bytes());
        assert_eq!(&enc[25..29], &1u32.to_le_bytes());
        assert_eq!(&enc[29..30], b"k");
        assert_eq!(&enc[30..34], &2u32.to_le_bytes());
        assert_eq!(&enc[34..36], b"vv");

        let header = encode_segment_header(0xAB);
        assert_eq!(&header[..8], b"RKVWAL01");
        assert_eq!(u64::from_le_bytes(SEGMENT_MAGIC), 0x3130_4C41_5756_4B52);
        assert_eq!(decode_segment_header(&header), Ok(0xAB));
    }

    #[test]
    fn roundtrip() {
        let rec = sample();
        let enc = encode(&rec).unwrap();
        let (dec, used) = decode(&enc).unwrap();
        assert_eq!(dec, rec);
        assert_eq!(used, enc.len());
        // Trailing bytes after a record are the next record's business, not this one's.
        let mut more = enc.to_vec();
        more.extend_from_slice(b"garbage");
        assert_eq!(decode(&more).unwrap().1, enc.len());
    }

    #[test]
    fn every_single_byte_corruption_is_rejected() {
        let enc = encode(&sample()).unwrap();
        for i in 0..enc.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bad = enc.to_vec();
                bad[i] ^= flip;
                assert!(decode(&bad).is_err(), "byte {i} ^ {flip:#x} went undetected");
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let enc = encode(&sample()).unwrap();
        for n in 0..enc.len() {
            assert!(matches!(decode(&enc[..n]), Err(RecordError::Truncated { .. })), "prefix of {n} bytes");
        }
    }

    #[test]
    fn crc_valid_but_malformed_payloads_are_rejected() {
        let framed = |payload: &[u8]| {
            let mut v = (payload.len() as u32).to_le_bytes().to_vec();
            v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
            v.extend_from_slice(payload);
            v
        };
        let mut p = 1u64.to_le_bytes().to_vec();
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&framed(&p)), Err(RecordError::BadOpCount { .. })));

        let mut p = 1u64.to_le_bytes().to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(9);
        p.extend_from_slice(&[0; 8]);
        assert!(matches!(decode(&framed(&p)), Err(RecordError::BadOpKind { kind: 9, .. })));

        let mut p = 1u64.to_le_bytes().to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(KIND_DELETE);
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&(MAX_KEY_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(decode(&framed(&p)), Err(RecordError::TooLong { what: "key", .. })));

        let mut p = 1u64.to_le_bytes().to_vec();
        p.extend_from_slice(&0u32.to_le_bytes());
        p.push(0);
        assert!(matches!(decode(&framed(&p)), Err(RecordError::TrailingBytes { extra: 1 })));

        let mut frame = [0u8; FRAME_LEN];
        frame[..4].copy_from_slice(&(MAX_WAL_RECORD_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(decode_frame(&frame), Err(RecordError::BadLength { .. })));
        assert!(matches!(decode_frame(&[0; FRAME_LEN]), Err(RecordError::BadLength { len: 0 })));

        assert!(matches!(
            decode_segment_header(b"RKVWAL02\0\0\0\0\0\0\0\0"),
            Err(RecordError::BadMagic { .. })
        ));
        assert!(matches!(decode_segment_header(b"RKV"), Err(RecordError::Truncated { .. })));
    }

    #[test]
    fn oversize_input_is_refused_at_encode() {
        let key = Bytes::from(vec![0u8; MAX_KEY_LEN + 1]);
        let rec = WalRecord { ts: 1, ops: vec![WalOp::Delete { bucket: 0, key }] };
        assert!(matches!(encode(&rec), Err(Error::InvalidArgument(_))));
        let key = Bytes::from(vec![0u8; MAX_KEY_LEN]);
        let rec = WalRecord { ts: 1, ops: vec![WalOp::Delete { bucket: 0, key }] };
        assert!(encode(&rec).is_ok());
    }

    fn arb_op() -> impl Strategy<Value = WalOp> {
        let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from);
        prop_oneof![
            (any::<u32>(), bytes(64), bytes(256)).prop_map(|(bucket, key, value)| WalOp::Put {
                bucket,
                key,
                value
            }),
            (any::<u32>(), bytes(64)).prop_map(|(bucket, key)| WalOp::Delete { bucket, key }),
        ]
    }

    fn arb_record() -> impl Strategy<Value = WalRecord> {
        (any::<u64>(), proptest::collection::vec(arb_op(), 0..16)).prop_map(|(ts, ops)| WalRecord { ts, ops })
    }

    proptest! {
        #[test]
        fn prop_roundtrip(rec in arb_record()) {
            let enc = encode(&rec).unwrap();
            let (dec, used) = decode(&enc).unwrap();
            prop_assert_eq!(used, enc.len());
            prop_assert_eq!(dec, rec);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&buf);
            let _ = decode_segment_header(&buf);
        }

        #[test]
        fn prop_crc_valid_garbage_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let payload = Bytes::from(payload);
            let _ = decode_payload(&payload, crc32c::crc32c(&payload));
        }

        #[test]
        fn prop_corrupted_record_is_rejected(rec in arb_record(), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut enc = encode(&rec).unwrap().to_vec();
            let i = pos.index(enc.len());
            enc[i] ^= flip;
            prop_assert!(decode(&enc).is_err());
        }
    }
}
