//! Data and blob files: immutable files written by a checkpoint (or GC), read back to front.
//!
//! ```text
//! +----------------+-----------------+-------------------+--------+
//! | payload frames | address ranges  | relocation table  | footer |
//! +----------------+-----------------+-------------------+--------+
//! ```
//! - frames: page images (data file) or values (blob file), back to back, no padding;
//! - address ranges: `count` x (`start u64 | end u64`), half-open intervals of logical
//!   addresses the file holds, sorted, disjoint;
//! - relocation table: `count` x (`addr u64 | offset u64 | len u32 | crc32c u32`) = 24 bytes
//!   each, sorted by `addr`: the frame of logical address `addr` is `len` bytes at `offset`
//!   and its CRC32C is `crc32c`;
//! - footer, 56 bytes:
//!
//! ```text
//! 0  magic u64 = "RKVFILE1"     8  format version u32 = 1   12 kind u32 (1 data, 2 blob)
//! 16 ranges offset u64          24 ranges count u32          28 ranges crc32c u32
//! 32 relocation offset u64      40 relocation count u32      44 relocation crc32c u32
//! 48 reserved u32 = 0           52 crc32c of bytes 0..52 u32
//! ```
//!
//! Every integer is little-endian. A reader trusts nothing: the footer CRC, both table CRCs,
//! every table bound and every frame CRC are checked, and any failure is
//! `Error::Corruption` naming the file and the offset of the bad structure.

use std::path::Path;

use bytes::{BufMut, Bytes};

use crate::codec::Reader;
use crate::error::{Error, Result};
use crate::limits::MAX_FRAME_LEN;

/// Half-open intervals of logical addresses held by a file.
pub type AddressRanges = Vec<(u64, u64)>;

/// Size of the footer in bytes.
pub const FOOTER_LEN: usize = 56;
const MAGIC: u64 = u64::from_le_bytes(*b"RKVFILE1");
const FORMAT_VERSION: u32 = 1;
/// Size of one relocation entry.
pub const RELOC_ENTRY_LEN: usize = 24;
const RANGE_LEN: usize = 16;

const _: () = assert!(FOOTER_LEN == 8 + 4 + 4 + 8 + 4 + 4 + 8 + 4 + 4 + 4 + 4);

pub use crate::files::FileKind;

/// Where one frame lives inside its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocEntry {
    /// Logical address.
    pub addr: u64,
    /// Byte offset in the file.
    pub offset: u64,
    /// Frame length.
    pub len: u32,
    /// CRC32C of the frame.
    pub crc: u32,
}

/// Accumulates frames, then lays out the whole file. A writer may take the frames added
/// so far ([`FileBuilder::take_frames`]) and write them before the file is finished, so
/// that a file larger than memory is never held whole.
#[derive(Debug)]
pub struct FileBuilder {
    kind: FileKind,
    /// Frames added and not yet taken, starting at file offset `taken`.
    frames: Vec<Bytes>,
    relocs: Vec<RelocEntry>,
    /// Offset of the next frame.
    offset: u64,
    /// Bytes of frames already taken by `take_frames`.
    taken: u64,
}

impl FileBuilder {
    /// An empty file of `kind`.
    pub fn new(kind: FileKind) -> FileBuilder {
        FileBuilder { kind, frames: Vec::new(), relocs: Vec::new(), offset: 0, taken: 0 }
    }

    /// True when no frame was added.
    pub fn is_empty(&self) -> bool {
        self.relocs.is_empty()
    }

    /// Bytes of frames added and not yet taken.
    pub fn held_len(&self) -> u64 {
        self.offset - self.taken
    }

    /// Takes the frames added since the last call: they go at file offset `.0`, back to
    /// back. [`FileBuilder::finish`] then lays out only what follows them.
    pub fn take_frames(&mut self) -> (u64, Vec<Bytes>) {
        let at = self.taken;
        self.taken = self.offset;
        (at, std::mem::take(&mut self.frames))
    }

    /// Bytes of frames so far.
    pub fn payload_len(&self) -> u64 {
        self.offset
    }

    /// Appends the frame of logical address `addr` (addresses strictly increasing).
    pub fn add(&mut self, addr: u64, frame: Bytes) -> RelocEntry {
        assert!(self.relocs.last().is_none_or(|r| r.addr < addr), "addresses must increase");
        assert!(frame.len() <= MAX_FRAME_LEN);
        // The footer's counts are u32 (docs/format.md); `finish` relies on this bound.
        assert!(self.relocs.len() < u32::MAX as usize, "too many frames for one file");
        // <= MAX_FRAME_LEN (1 GiB), asserted above.
        #[allow(clippy::cast_possible_truncation)]
        let len = frame.len() as u32;
        let e = RelocEntry { addr, offset: self.offset, len, crc: crc32c::crc32c(&frame) };
        self.offset += frame.len() as u64;
        self.frames.push(frame);
        self.relocs.push(e);
        e
    }

    /// Lays out the file: returns the byte chunks to write in order from the offset where
    /// the last [`FileBuilder::take_frames`] ended (0 if it was never called), the address
    /// ranges and the relocation entries.
    pub fn finish(self) -> (Vec<Bytes>, AddressRanges, Vec<RelocEntry>) {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for r in &self.relocs {
            match ranges.last_mut() {
                Some(last) if last.1 == r.addr => last.1 = r.addr + 1,
                _ => ranges.push((r.addr, r.addr + 1)),
            }
        }
        let mut tail =
            Vec::with_capacity(ranges.len() * RANGE_LEN + self.relocs.len() * RELOC_ENTRY_LEN + FOOTER_LEN);
        let ranges_off = self.offset;
        for (s, e) in &ranges {
            tail.put_u64_le(*s);
            tail.put_u64_le(*e);
        }
        let ranges_crc = crc32c::crc32c(&tail);
        let reloc_start = tail.len();
        for r in &self.relocs {
            tail.put_u64_le(r.addr);
            tail.put_u64_le(r.offset);
            tail.put_u32_le(r.len);
            tail.put_u32_le(r.crc);
        }
        let reloc_crc = crc32c::crc32c(&tail[reloc_start..]);
        let footer_start = tail.len();
        tail.put_u64_le(MAGIC);
        tail.put_u32_le(FORMAT_VERSION);
        tail.put_u32_le(self.kind.code());
        tail.put_u64_le(ranges_off);
        // ranges.len() <= relocs.len() < u32::MAX, asserted in `add`.
        #[allow(clippy::cast_possible_truncation)]
        tail.put_u32_le(ranges.len() as u32);
        tail.put_u32_le(ranges_crc);
        tail.put_u64_le(ranges_off + reloc_start as u64);
        // < u32::MAX, asserted in `add`.
        #[allow(clippy::cast_possible_truncation)]
        tail.put_u32_le(self.relocs.len() as u32);
        tail.put_u32_le(reloc_crc);
        tail.put_u32_le(0);
        let fcrc = crc32c::crc32c(&tail[footer_start..]);
        tail.put_u32_le(fcrc);
        debug_assert_eq!(tail.len() - footer_start, FOOTER_LEN);
        let mut chunks = self.frames;
        chunks.push(Bytes::from(tail));
        (chunks, ranges, self.relocs)
    }
}

/// The decoded footer.
#[derive(Debug, Clone, Copy)]
pub struct Footer {
    /// File kind.
    pub kind: FileKind,
    /// Offset of the ranges table (= end of frames).
    pub ranges_offset: u64,
    /// Number of ranges.
    pub ranges_count: u32,
    /// CRC of the ranges table.
    pub ranges_crc: u32,
    /// Offset of the relocation table.
    pub reloc_offset: u64,
    /// Number of relocation entries.
    pub reloc_count: u32,
    /// CRC of the relocation table.
    pub reloc_crc: u32,
}

/// Parses and checks the footer of a file of `file_len` bytes.
pub fn parse_footer(buf: &[u8], file: &Path, file_len: u64) -> Result<Footer> {
    let at = file_len.saturating_sub(FOOTER_LEN as u64);
    let bad = |what: &str| Error::corruption(file, at, what.to_string());
    if buf.len() != FOOTER_LEN || file_len < FOOTER_LEN as u64 {
        return Err(bad("file too short for a footer"));
    }
    let stored = u32::from_le_bytes([buf[52], buf[53], buf[54], buf[55]]);
    if crc32c::crc32c(&buf[..52]) != stored {
        return Err(bad("footer checksum mismatch"));
    }
    let mut r = Reader::new(buf);
    let parse = |r: &mut Reader<'_>| -> std::result::Result<_, crate::codec::Truncated> {
        Ok((r.u64()?, r.u32()?, r.u32()?, r.u64()?, r.u32()?, r.u32()?, r.u64()?, r.u32()?, r.u32()?))
    };
    let (magic, version, kind, ranges_offset, ranges_count, ranges_crc, reloc_offset, reloc_count, reloc_crc) =
        parse(&mut r).map_err(|_| bad("short footer"))?;
    if magic != MAGIC {
        return Err(bad("bad magic"));
    }
    if version != FORMAT_VERSION {
        return Err(bad("unknown format version"));
    }
    let kind = FileKind::from_code(kind).ok_or_else(|| bad("unknown file kind"))?;
    let tables_end = file_len - FOOTER_LEN as u64;
    if ranges_offset.checked_add(u64::from(ranges_count) * RANGE_LEN as u64) != Some(reloc_offset)
        || reloc_offset.checked_add(u64::from(reloc_count) * RELOC_ENTRY_LEN as u64) != Some(tables_end)
    {
        return Err(bad("table bounds do not match the file length"));
    }
    Ok(Footer { kind, ranges_offset, ranges_count, ranges_crc, reloc_offset, reloc_count, reloc_crc })
}

/// Parses and checks both tables (`buf` = bytes from `footer.ranges_offset` to the footer).
pub fn parse_tables(buf: &[u8], footer: &Footer, file: &Path) -> Result<(AddressRanges, Vec<RelocEntry>)> {
    let rlen = footer.ranges_count as usize * RANGE_LEN;
    let xlen = footer.reloc_count as usize * RELOC_ENTRY_LEN;
    if buf.len() != rlen + xlen {
        return Err(Error::corruption(file, footer.ranges_offset, "tables length mismatch"));
    }
    if crc32c::crc32c(&buf[..rlen]) != footer.ranges_crc {
        return Err(Error::corruption(file, footer.ranges_offset, "address ranges checksum mismatch"));
    }
    if crc32c::crc32c(&buf[rlen..]) != footer.reloc_crc {
        return Err(Error::corruption(file, footer.reloc_offset, "relocation table checksum mismatch"));
    }
    let mut r = Reader::new(buf);
    let mut ranges = Vec::with_capacity(footer.ranges_count as usize);
    let short = |_| Error::corruption(file, footer.ranges_offset, "short tables");
    for _ in 0..footer.ranges_count {
        let s = r.u64().map_err(short)?;
        let e = r.u64().map_err(short)?;
        if s >= e || ranges.last().is_some_and(|&(_, pe)| pe > s) {
            return Err(Error::corruption(file, footer.ranges_offset, "bad address range"));
        }
        ranges.push((s, e));
    }
    let mut relocs: Vec<RelocEntry> = Vec::with_capacity(footer.reloc_count as usize);
    for i in 0..u64::from(footer.reloc_count) {
        let at = footer.reloc_offset + i * RELOC_ENTRY_LEN as u64;
        let e = RelocEntry {
            addr: r.u64().map_err(short)?,
            offset: r.u64().map_err(short)?,
            len: r.u32().map_err(short)?,
            crc: r.u32().map_err(short)?,
        };
        if relocs.last().is_some_and(|p| p.addr >= e.addr)
            || e.offset.checked_add(u64::from(e.len)).is_none_or(|end| end > footer.ranges_offset)
        {
            return Err(Error::corruption(file, at, "bad relocation entry"));
        }
        relocs.push(e);
    }
    Ok((ranges, relocs))
}

/// Checks a frame read from `file` against its relocation entry.
pub fn check_frame(frame: &[u8], e: &RelocEntry, file: &Path) -> Result<()> {
    if frame.len() != e.len as usize {
        return Err(Error::corruption(file, e.offset, "short frame"));
    }
    let got = crc32c::crc32c(frame);
    if got != e.crc {
        return Err(Error::corruption(
            file,
            e.offset,
            format!("frame checksum mismatch (stored {:#010x}, computed {got:#010x})", e.crc),
        ));
    }
    Ok(())
}

#[cfg(test)]
// Unit tests build small images and patterns: their casts cannot truncate or are meant to.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]
mod tests {
    use super::*;

    #[test]
    fn build_parse_roundtrip_and_corruption() {
        let mut b = FileBuilder::new(FileKind::Data);
        b.add(10, Bytes::from_static(b"hello"));
        b.add(11, Bytes::from_static(b"world!"));
        b.add(20, Bytes::from_static(b"x"));
        let (chunks, ranges, relocs) = b.finish();
        assert_eq!(ranges, vec![(10, 12), (20, 21)]);
        let file: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let p = Path::new("data-1");
        let len = file.len() as u64;
        let f = parse_footer(&file[file.len() - FOOTER_LEN..], p, len).unwrap();
        assert_eq!(f.kind, FileKind::Data);
        let tables = &file[f.ranges_offset as usize..file.len() - FOOTER_LEN];
        let (r2, x2) = parse_tables(tables, &f, p).unwrap();
        assert_eq!(r2, ranges);
        assert_eq!(x2, relocs);
        let e = x2[1];
        let frame = &file[e.offset as usize..(e.offset + u64::from(e.len)) as usize];
        check_frame(frame, &e, p).unwrap();
        let mut bad = frame.to_vec();
        bad[0] ^= 1;
        assert!(check_frame(&bad, &e, p).unwrap_err().is_corruption());
        // every single-byte flip in the tail is caught
        for i in f.ranges_offset as usize..file.len() {
            let mut c = file.clone();
            c[i] ^= 0x40;
            let res = parse_footer(&c[c.len() - FOOTER_LEN..], p, len)
                .and_then(|f| parse_tables(&c[f.ranges_offset as usize..c.len() - FOOTER_LEN], &f, p));
            assert!(res.is_err(), "flip at {i} undetected");
        }
    }
}
