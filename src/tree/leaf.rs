//! A leaf as one contiguous buffer whose bytes are its frame on disk: the page every
//! [`LeafBase`](super::node::LeafBase) holds. A load checks the bytes read
//! ([`LeafPage::check`]) and keeps them; a consolidation, a split or a merge builds a new
//! page ([`LeafBuilder`]); a checkpoint writes the bytes.
//!
//! Little-endian. Offsets are from the start of the page; entries start 8-byte aligned
//! within it.
//!
//! ```text
//! header (32 B)
//!   0  kind u8 = 3 (leaf page)      1  format u8 = 1       2  flags u8 (bit 0: has a high fence)
//!   3  reserved u8 = 0              4  count u32            8  right u64 (right sibling, 0 = none)
//!   16 prefix u16                   18 low_len u16          20 high_len u16 (0 without a high fence)
//!   22 reserved u16 = 0             24 heap u32             28 len u32 (the page's length)
//! slots (count x 8 B, in key order)
//!   off u32 (the entry's offset)    hint u32 (the key's first 4 bytes after the prefix, big-endian,
//!                                   zero-padded: a search compares these and reads a key only on a tie)
//! fences: low | high (whole keys)
//! entries (from `heap`, in slot order), each 8-byte aligned:
//!   suffix_len u16 | vkind u8 | reserved u8 | vlen u32 | ts u64 | older u32 | reserved u32
//!   | suffix (the key after the prefix) | payload
//!     vkind 0 tombstone (no payload), 1 inline (vlen bytes), 2 blob on disk (addr u64; vlen = the
//!     blob's length), 3 blob held in memory (index u64 into the page's cells; never on disk)
//!   older: offset of the key's older versions (0 = none), newest first:
//!     n u32 | reserved u32 | n x (ts u64 | vkind u8 | reserved [3] | vlen u32 | payload, 8-byte aligned)
//! ```
//!
//! `prefix` is the length of the common prefix of the two fences (0 without a high fence):
//! every key of the page starts with it, so it is stored once, in the low fence. The newest
//! version of a key sits beside the key, so a point read at the latest snapshot touches one
//! entry; older versions are out of the way.
//!
//! [`LeafPage::check`] verifies everything [`LeafBuilder`] asserts (offsets inside the
//! page, slots in key order and inside the fences, versions newest first, lengths), so bytes
//! read from disk that pass it can be searched without further checks.

use std::cmp::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::node::{key_cmp, BlobCell, Pid, Value, Version};

/// The kind byte of a leaf page.
pub const KIND_LEAF_PAGE: u8 = 3;
/// The format this file writes and reads.
pub const FORMAT: u8 = 1;

const HEADER: usize = 32;
const SLOT: usize = 8;
const ENTRY_HEAD: usize = 24;
const OLDER_HEAD: usize = 8;
const VERSION_HEAD: usize = 16;

const V_TOMB: u8 = 0;
const V_INLINE: u8 = 1;
const V_BLOB: u8 = 2;
const V_CELL: u8 = 3;

/// Why bytes are not a leaf page: the offset of the first bad byte and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPage {
    /// Offset in the page.
    pub at: usize,
    /// What is wrong.
    pub what: &'static str,
}

fn bad(at: usize, what: &'static str) -> BadPage {
    BadPage { at, what }
}

pub(super) fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

pub(super) fn hint_of(suffix: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = suffix.len().min(4);
    b[..n].copy_from_slice(&suffix[..n]);
    u32::from_be_bytes(b)
}

pub(super) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

// One bounds check per field read (a slice), not one per byte: these run in every probe of
// a leaf or index search.
pub(super) fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(x)
}

pub(super) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

pub(super) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A leaf page: its bytes and the blob cells its in-memory blob values point at.
#[derive(Debug, Clone)]
pub struct LeafPage {
    buf: Bytes,
    /// The cells of blob values held in memory (`None` when there is none: one pointer,
    /// so that a page, and the tree node holding it, stay small).
    cells: Option<Arc<Vec<Arc<BlobCell>>>>,
}


impl LeafPage {
    /// Checks `buf` as a leaf page read from disk (no in-memory blob cells), without copying it.
    pub fn check(buf: Bytes) -> Result<LeafPage, BadPage> {
        let page = LeafPage { buf, cells: None };
        page.validate()?;
        Ok(page)
    }

    /// The page's bytes (for a frame on disk only when [`LeafPage::has_cells`] is false).
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    /// Whether a blob value is held in memory without an address yet (such a page is
    /// rewritten by [`LeafPage::with_blob_addresses`] before it goes to disk).
    pub fn has_cells(&self) -> bool {
        self.cells.is_some()
    }

    /// Number of keys.
    pub fn count(&self) -> usize {
        le_u32(&self.buf, 4) as usize
    }

    /// Right sibling (0 = none).
    pub fn right(&self) -> Pid {
        le_u64(&self.buf, 8)
    }

    fn prefix_len(&self) -> usize {
        le_u16(&self.buf, 16) as usize
    }

    fn fences_at(&self) -> usize {
        HEADER + self.count() * SLOT
    }

    /// The low fence (inclusive).
    pub fn low(&self) -> &[u8] {
        let at = self.fences_at();
        &self.buf[at..at + le_u16(&self.buf, 18) as usize]
    }

    /// The high fence (exclusive), `None` for plus infinity.
    pub fn high(&self) -> Option<&[u8]> {
        if self.buf[2] & 1 == 0 {
            return None;
        }
        let at = self.fences_at() + le_u16(&self.buf, 18) as usize;
        Some(&self.buf[at..at + le_u16(&self.buf, 20) as usize])
    }

    fn prefix(&self) -> &[u8] {
        &self.low()[..self.prefix_len()]
    }

    fn slot(&self, i: usize) -> (usize, u32) {
        let at = HEADER + i * SLOT;
        (le_u32(&self.buf, at) as usize, le_u32(&self.buf, at + 4))
    }

    fn suffix(&self, off: usize) -> &[u8] {
        let n = le_u16(&self.buf, off) as usize;
        &self.buf[off + ENTRY_HEAD..off + ENTRY_HEAD + n]
    }

    /// The low fence as a slice of the page (no copy).
    pub fn low_bytes(&self) -> Bytes {
        self.buf.slice_ref(self.low())
    }

    /// The high fence as a slice of the page (no copy), `None` for plus infinity.
    pub fn high_bytes(&self) -> Option<Bytes> {
        self.high().map(|h| self.buf.slice_ref(h))
    }

    /// The page's length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the page holds no key.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// The blob cells the page's in-memory blob values point at.
    pub fn cells(&self) -> &[Arc<BlobCell>] {
        self.cells.as_deref().map_or(&[], |c| &c[..])
    }

    /// Replaces `out` with the key of entry `i` (no allocation once `out` is large enough).
    pub fn key_into(&self, i: usize, out: &mut Vec<u8>) {
        out.clear();
        self.append_key(i, out);
    }

    /// Appends the key of entry `i` to `out`.
    pub fn append_key(&self, i: usize, out: &mut Vec<u8>) {
        let (off, _) = self.slot(i);
        out.extend_from_slice(self.prefix());
        out.extend_from_slice(self.suffix(off));
    }

    /// `key(i).cmp(key)`, without building the key.
    pub fn cmp_key(&self, i: usize, key: &[u8]) -> Ordering {
        let p = self.prefix_len();
        let (head, rest) = key.split_at(p.min(key.len()));
        match key_cmp(self.prefix(), head) {
            Ordering::Equal if key.len() < p => Ordering::Greater,
            Ordering::Equal => key_cmp(self.suffix(self.slot(i).0), rest),
            o => o,
        }
    }

    /// The timestamp of entry `i`'s newest version.
    pub fn newest_ts(&self, i: usize) -> u64 {
        le_u64(&self.buf, self.slot(i).0 + 8)
    }

    /// The key of entry `i`: a slice of the page when the page strips no prefix.
    pub fn key(&self, i: usize) -> Bytes {
        let (off, _) = self.slot(i);
        let n = le_u16(&self.buf, off) as usize;
        if self.prefix_len() == 0 {
            return self.buf.slice(off + ENTRY_HEAD..off + ENTRY_HEAD + n);
        }
        let mut k = Vec::with_capacity(self.prefix_len() + n);
        k.extend_from_slice(self.prefix());
        k.extend_from_slice(self.suffix(off));
        Bytes::from(k)
    }

    /// Binary search for `key`: `Ok(entry)` or `Err(where it would go)`. Compares the slots'
    /// 4-byte hints and reads a key only when they tie.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let p = self.prefix_len();
        let prefix = self.prefix();
        let (head, rest) = key.split_at(p.min(key.len()));
        match key_cmp(head, prefix) {
            Ordering::Less => return Err(0),
            Ordering::Greater => return Err(self.count()),
            Ordering::Equal if key.len() < p => return Err(0),
            Ordering::Equal => {}
        }
        let want = hint_of(rest);
        let (mut lo, mut hi) = (0, self.count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (off, hint) = self.slot(mid);
            let ord = match hint.cmp(&want) {
                Ordering::Equal => key_cmp(self.suffix(off), rest),
                o => o,
            };
            match ord {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    fn value_at(&self, kind: u8, len: usize, at: usize) -> Value {
        match kind {
            V_TOMB => Value::Tombstone,
            V_INLINE => Value::Inline(self.buf.slice(at..at + len)),
            V_BLOB => {
                // `len` came from a u32 field.
                #[allow(clippy::cast_possible_truncation)]
                let len = len as u32;
                Value::Blob(Arc::new(BlobCell::on_disk(le_u64(&self.buf, at), len)))
            }
            _ => Value::Blob(self.cells()[le_u32(&self.buf, at) as usize].clone()),
        }
    }

    /// The newest version of entry `i`.
    pub fn newest(&self, i: usize) -> Version {
        let (off, _) = self.slot(i);
        let n = le_u16(&self.buf, off) as usize;
        let (kind, len, ts) =
            (self.buf[off + 2], le_u32(&self.buf, off + 4) as usize, le_u64(&self.buf, off + 8));
        Version { ts, value: self.value_at(kind, len, off + ENTRY_HEAD + n) }
    }

    /// Every version of entry `i`, newest first (an inline value is a slice of the page).
    pub fn versions(&self, i: usize) -> Vec<Version> {
        let mut out = Vec::new();
        self.push_versions(i, &mut out);
        out
    }

    /// Replaces `out` with every version of entry `i`, newest first.
    pub fn versions_into(&self, i: usize, out: &mut Vec<Version>) {
        out.clear();
        self.push_versions(i, out);
    }

    /// Appends every version of entry `i` to `out`, newest first.
    pub fn push_versions(&self, i: usize, out: &mut Vec<Version>) {
        out.push(self.newest(i));
        let (off, _) = self.slot(i);
        let older = le_u32(&self.buf, off + 16) as usize;
        if older != 0 {
            let n = le_u32(&self.buf, older) as usize;
            let mut at = older + OLDER_HEAD;
            for _ in 0..n {
                let (ts, kind, len) =
                    (le_u64(&self.buf, at), self.buf[at + 8], le_u32(&self.buf, at + 12) as usize);
                out.push(Version { ts, value: self.value_at(kind, len, at + VERSION_HEAD) });
                at += pad8(VERSION_HEAD + payload_len(kind, len));
            }
        }
    }

    /// The newest version of entry `i` at or below `ts`.
    pub fn visible(&self, i: usize, ts: u64) -> Option<Version> {
        let v = self.newest(i);
        if v.ts <= ts {
            return Some(v);
        }
        self.versions(i).into_iter().find(|v| v.ts <= ts)
    }

    /// Calls `f(kind_at, payload_at)` for every version of every entry: the offsets of its
    /// value kind byte and of its payload in the page.
    fn each_value(&self, f: &mut dyn FnMut(usize, usize)) {
        let b = &self.buf;
        for i in 0..self.count() {
            let (off, _) = self.slot(i);
            let n = le_u16(b, off) as usize;
            f(off + 2, off + ENTRY_HEAD + n);
            let older = le_u32(b, off + 16) as usize;
            if older != 0 {
                let mut at = older + OLDER_HEAD;
                for _ in 0..le_u32(b, older) {
                    let (kind, len) = (b[at + 8], le_u32(b, at + 12) as usize);
                    f(at + 8, at + VERSION_HEAD);
                    at += pad8(VERSION_HEAD + payload_len(kind, len));
                }
            }
        }
    }

    /// A copy for disk: every in-memory blob value replaced by the address `addr` gives its
    /// cell (which must have one by then).
    pub fn with_blob_addresses(&self, addr: &mut dyn FnMut(&Arc<BlobCell>) -> u64) -> LeafPage {
        let Some(cells) = &self.cells else { return self.clone() };
        let mut b = self.buf.to_vec();
        self.each_value(&mut |kind_at, payload_at| {
            if b[kind_at] == V_CELL {
                let cell = &cells[le_u32(&b, payload_at) as usize];
                b[kind_at] = V_BLOB;
                b[payload_at..payload_at + 8].copy_from_slice(&addr(cell).to_le_bytes());
            }
        });
        LeafPage { buf: Bytes::from(b), cells: None }
    }

    /// Appends to `out` the address of every blob value of the page, each version counted:
    /// a blob on disk by the address in the page, a blob held in memory by the address
    /// `cell` gives its cell (the one the page's image on disk will hold).
    pub fn blob_refs(&self, cell: &mut dyn FnMut(&Arc<BlobCell>) -> u64, out: &mut Vec<u64>) {
        let b = &self.buf;
        self.each_value(&mut |kind_at, payload_at| match b[kind_at] {
            V_BLOB => out.push(le_u64(b, payload_at)),
            V_CELL => out.push(cell(&self.cells()[le_u32(b, payload_at) as usize])),
            _ => {}
        });
    }

    /// Checks every length, offset and order of the page (module doc).
    fn validate(&self) -> Result<(), BadPage> {
        let b = &self.buf[..];
        if b.len() < HEADER {
            return Err(bad(0, "shorter than a page header"));
        }
        if b[0] != KIND_LEAF_PAGE {
            return Err(bad(0, "not a leaf page"));
        }
        if b[1] != FORMAT {
            return Err(bad(1, "unknown leaf page format"));
        }
        if b[2] & !1 != 0 || b[3] != 0 || le_u16(b, 22) != 0 {
            return Err(bad(2, "reserved header bits set"));
        }
        if le_u32(b, 28) as usize != b.len() {
            return Err(bad(28, "page length differs from its header"));
        }
        let count = le_u32(b, 4) as usize;
        let fences = count.checked_mul(SLOT).and_then(|s| s.checked_add(HEADER)).filter(|&f| f <= b.len());
        let fences = fences.ok_or_else(|| bad(4, "slot array past the page"))?;
        let (low_len, high_len) = (le_u16(b, 18) as usize, le_u16(b, 20) as usize);
        let has_high = b[2] & 1 == 1;
        if !has_high && high_len != 0 {
            return Err(bad(20, "high fence length without a high fence"));
        }
        let heap = le_u32(b, 24) as usize;
        if heap != pad8(fences + low_len + high_len) || heap > b.len() {
            return Err(bad(24, "heap offset does not follow the fences"));
        }
        let low = &b[fences..fences + low_len];
        let high = has_high.then(|| &b[fences + low_len..fences + low_len + high_len]);
        if let Some(h) = high {
            if key_cmp(low, h) != Ordering::Less {
                return Err(bad(fences, "low fence not below the high fence"));
            }
        }
        let prefix = le_u16(b, 16) as usize;
        if prefix != high.map_or(0, |h| common_prefix(low, h)) {
            return Err(bad(16, "prefix is not the fences' common prefix"));
        }
        let mut next = heap;
        let mut prev: Option<&[u8]> = None;
        for i in 0..count {
            let (off, hint) = (le_u32(b, HEADER + i * SLOT) as usize, le_u32(b, HEADER + i * SLOT + 4));
            if off != next {
                return Err(bad(HEADER + i * SLOT, "entry not where the previous one ended"));
            }
            let end = self.check_entry(off)?;
            let suffix = &b[off + ENTRY_HEAD..off + ENTRY_HEAD + le_u16(b, off) as usize];
            if hint != hint_of(suffix) {
                return Err(bad(HEADER + i * SLOT + 4, "slot hint differs from its key"));
            }
            if let Some(p) = prev {
                if key_cmp(p, suffix) != Ordering::Less {
                    return Err(bad(off, "keys out of order"));
                }
            }
            prev = Some(suffix);
            next = end;
        }
        if let Some(first) = (count > 0).then(|| self.suffix(heap)) {
            if key_cmp(&b[fences + prefix..fences + low_len], first) == Ordering::Greater {
                return Err(bad(heap, "a key below the low fence"));
            }
        }
        if let (Some(h), Some(last)) = (high, prev) {
            if key_cmp(last, &h[prefix..]) != Ordering::Less {
                return Err(bad(next, "a key at or past the high fence"));
            }
        }
        self.check_older(next)
    }

    /// Checks the entry at `off`; returns where the next one starts.
    fn check_entry(&self, off: usize) -> Result<usize, BadPage> {
        let b = &self.buf[..];
        if !off.is_multiple_of(8) || off + ENTRY_HEAD > b.len() {
            return Err(bad(off, "entry header past the page"));
        }
        let (n, kind, len) = (le_u16(b, off) as usize, b[off + 2], le_u32(b, off + 4) as usize);
        if b[off + 3] != 0 || le_u32(b, off + 20) != 0 {
            return Err(bad(off, "reserved entry bits set"));
        }
        self.check_value(kind, len, off)?;
        let end = pad8(off + ENTRY_HEAD + n + payload_len(kind, len));
        if end > b.len() {
            return Err(bad(off, "entry past the page"));
        }
        Ok(end)
    }

    fn check_value(&self, kind: u8, len: usize, at: usize) -> Result<(), BadPage> {
        match kind {
            V_TOMB if len == 0 => Ok(()),
            V_TOMB => Err(bad(at, "tombstone with a length")),
            V_INLINE | V_BLOB => Ok(()),
            V_CELL if self.cells.is_some() => Ok(()),
            _ => Err(bad(at, "unknown value kind")),
        }
    }

    /// Checks the older-version lists, which follow the entries from `from`, each named by
    /// exactly one entry, newest first and below that entry's newest.
    fn check_older(&self, from: usize) -> Result<(), BadPage> {
        let b = &self.buf[..];
        let mut next = from;
        for i in 0..self.count() {
            let (off, _) = self.slot(i);
            let older = le_u32(b, off + 16) as usize;
            if older == 0 {
                continue;
            }
            if older != next || older + OLDER_HEAD > b.len() {
                return Err(bad(off + 16, "older versions not where the previous list ended"));
            }
            let n = le_u32(b, older) as usize;
            if n == 0 || le_u32(b, older + 4) != 0 {
                return Err(bad(older, "empty older-version list"));
            }
            let mut newer = le_u64(b, off + 8);
            let mut at = older + OLDER_HEAD;
            for _ in 0..n {
                if at + VERSION_HEAD > b.len() {
                    return Err(bad(at, "version past the page"));
                }
                let (ts, kind, len) = (le_u64(b, at), b[at + 8], le_u32(b, at + 12) as usize);
                if ts >= newer {
                    return Err(bad(at, "versions not newest first"));
                }
                if b[at + 9..at + 12] != [0, 0, 0] {
                    return Err(bad(at, "reserved version bits set"));
                }
                self.check_value(kind, len, at)?;
                newer = ts;
                at = pad8(at + VERSION_HEAD + payload_len(kind, len));
                if at > b.len() {
                    return Err(bad(at, "version past the page"));
                }
            }
            next = at;
        }
        if next != b.len() {
            return Err(bad(next, "trailing bytes after the page"));
        }
        Ok(())
    }
}

/// Payload bytes of a value of `kind` and length `len`.
fn payload_len(kind: u8, len: usize) -> usize {
    match kind {
        V_INLINE => len,
        V_BLOB | V_CELL => 8,
        _ => 0,
    }
}

/// Builds a page from keys in strictly increasing order, each with its versions newest
/// first, between two fences.
pub struct LeafBuilder {
    low: Bytes,
    high: Option<Bytes>,
    right: Pid,
    prefix: usize,
    entries: Vec<u8>,
    older: Vec<u8>,
    slots: Vec<(u32, u32)>,
    /// Where each entry's `older` field is, and where its list starts in `older`.
    links: Vec<(usize, usize)>,
    cells: Vec<Arc<BlobCell>>,
    last: Option<Vec<u8>>,
}

impl LeafBuilder {
    /// A builder for the range `[low, high)` with right sibling `right`.
    pub fn new(low: Bytes, high: Option<Bytes>, right: Pid) -> LeafBuilder {
        if let Some(h) = &high {
            assert!(key_cmp(&low, h) == Ordering::Less, "low fence not below the high fence");
        }
        let prefix = high.as_ref().map_or(0, |h| common_prefix(&low, h));
        LeafBuilder {
            low,
            high,
            right,
            prefix,
            entries: Vec::new(),
            older: Vec::new(),
            slots: Vec::new(),
            links: Vec::new(),
            cells: Vec::new(),
            last: None,
        }
    }

    /// Whether `page` strips the same prefix as this page (so its entries' bytes can be
    /// copied as they are). Cheap when the fences are those of `page` itself, as in a
    /// consolidation: the same bytes are not compared again.
    fn same_prefix(&self, page: &LeafPage) -> bool {
        let mine = &self.low[..self.prefix];
        let theirs = page.prefix();
        mine.len() == theirs.len() && (std::ptr::eq(mine.as_ptr(), theirs.as_ptr()) || mine == theirs)
    }

    /// Makes room for `bytes` more bytes of entries (a consolidation knows about how many).
    pub fn reserve(&mut self, bytes: usize) {
        self.entries.reserve(bytes);
    }

    /// Bytes the page has so far.
    pub fn len(&self) -> usize {
        pad8(HEADER + self.slots.len() * SLOT + self.low.len() + self.high.as_ref().map_or(0, Bytes::len))
            + self.entries.len()
            + self.older.len()
    }

    /// Whether no key was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn put_value(&mut self, out: Out, v: &Value) -> (u8, u32) {
        let buf = match out {
            Out::Entries => &mut self.entries,
            Out::Older => &mut self.older,
        };
        match v {
            Value::Tombstone => (V_TOMB, 0),
            Value::Inline(b) => {
                buf.extend_from_slice(b);
                (V_INLINE, u32::try_from(b.len()).expect("an inline value is shorter than 4 GiB"))
            }
            Value::Blob(c) if c.addr() != 0 => {
                buf.extend_from_slice(&c.addr().to_le_bytes());
                (V_BLOB, c.len)
            }
            Value::Blob(c) => {
                let ix = u32::try_from(self.cells.len()).expect("fewer than 4G cells");
                let buf = match out {
                    Out::Entries => &mut self.entries,
                    Out::Older => &mut self.older,
                };
                // Eight bytes, as the address that replaces it on disk.
                buf.extend_from_slice(&u64::from(ix).to_le_bytes());
                self.cells.push(c.clone());
                (V_CELL, c.len)
            }
        }
    }

    /// Adds `key` with `versions` (newest first, not empty); keys come in increasing order
    /// inside the fences.
    pub fn push(&mut self, key: &[u8], versions: &[Version]) {
        assert!(!versions.is_empty(), "a key without versions");
        assert!(key_cmp(&self.low, key) != Ordering::Greater, "a key below the low fence");
        if let Some(h) = &self.high {
            assert!(key_cmp(key, h) == Ordering::Less, "a key at or past the high fence");
        }
        if let Some(last) = &self.last {
            assert!(key_cmp(last, key) == Ordering::Less, "keys out of order");
        }
        assert!(versions.windows(2).all(|w| w[0].ts > w[1].ts), "versions not newest first");
        let suffix = &key[self.prefix..];
        let off = self.entries.len();
        self.slots.push((u32::try_from(off).expect("a page is shorter than 4 GiB"), hint_of(suffix)));
        self.entries.extend_from_slice(&[0u8; ENTRY_HEAD]);
        self.entries.extend_from_slice(suffix);
        let (kind, len) = self.put_value(Out::Entries, &versions[0].value);
        let e = &mut self.entries[off..off + ENTRY_HEAD];
        e[0..2].copy_from_slice(&u16::try_from(suffix.len()).expect("keys are at most 16 KiB").to_le_bytes());
        e[2] = kind;
        e[4..8].copy_from_slice(&len.to_le_bytes());
        e[8..16].copy_from_slice(&versions[0].ts.to_le_bytes());
        self.entries.resize(pad8(self.entries.len()), 0);
        if versions.len() > 1 {
            let at = self.older.len();
            self.links.push((off + 16, at));
            let n = u32::try_from(versions.len() - 1).expect("fewer than 4G versions");
            self.older.extend_from_slice(&n.to_le_bytes());
            self.older.extend_from_slice(&[0u8; 4]);
            for v in &versions[1..] {
                let vat = self.older.len();
                self.older.extend_from_slice(&[0u8; VERSION_HEAD]);
                let (kind, len) = self.put_value(Out::Older, &v.value);
                let h = &mut self.older[vat..vat + VERSION_HEAD];
                h[0..8].copy_from_slice(&v.ts.to_le_bytes());
                h[8] = kind;
                h[12..16].copy_from_slice(&len.to_le_bytes());
                self.older.resize(pad8(self.older.len()), 0);
            }
        }
        let last = self.last.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(key);
    }

    /// Appends entry `i` of `page` by copying its bytes, when that is what [`push`] of its
    /// versions after a trim at `horizon` and a cut at `cut` would write: `page` strips the
    /// same prefix as this page, the key has one version (no older list, so trimming keeps
    /// it unless it is a tombstone at or below `horizon`), at or below `cut`, and no value
    /// held in memory (whose cell index would differ here). Returns false, having written
    /// nothing, when it does not apply: the caller decodes the entry and pushes it.
    ///
    /// [`push`]: LeafBuilder::push
    pub fn push_copy(&mut self, page: &LeafPage, i: usize, horizon: u64, cut: u64) -> bool {
        let (off, hint) = page.slot(i);
        let b = &page.buf[..];
        let (n, kind, len, ts) = (le_u16(b, off) as usize, b[off + 2], le_u32(b, off + 4) as usize, le_u64(b, off + 8));
        if le_u32(b, off + 16) != 0
            || kind == V_CELL
            || ts > cut
            || (kind == V_TOMB && ts <= horizon)
            || !self.same_prefix(page)
        {
            return false;
        }
        let suffix = &b[off + ENTRY_HEAD..off + ENTRY_HEAD + n];
        if let Some(last) = &self.last {
            let ord = key_cmp(&last[self.prefix.min(last.len())..], suffix);
            assert!(last.len() >= self.prefix && ord == Ordering::Less, "keys out of order");
        }
        let end = pad8(off + ENTRY_HEAD + n + payload_len(kind, len));
        let at = self.entries.len();
        self.slots.push((u32::try_from(at).expect("a page is shorter than 4 GiB"), hint));
        self.entries.extend_from_slice(&b[off..end]);
        let last = self.last.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(page.prefix());
        last.extend_from_slice(suffix);
        true
    }

    /// The page.
    pub fn finish(self) -> LeafPage {
        let count = self.slots.len();
        let fences = HEADER + count * SLOT;
        let high_len = self.high.as_ref().map_or(0, Bytes::len);
        let heap = pad8(fences + self.low.len() + high_len);
        let older_at = heap + self.entries.len();
        let len = older_at + self.older.len();
        let mut b = Vec::with_capacity(len);
        b.push(KIND_LEAF_PAGE);
        b.push(FORMAT);
        b.push(u8::from(self.high.is_some()));
        b.push(0);
        let u32_of = |n: usize| u32::try_from(n).expect("a page is shorter than 4 GiB");
        let u16_of = |n: usize| u16::try_from(n).expect("keys are at most 16 KiB");
        b.extend_from_slice(&u32_of(count).to_le_bytes());
        b.extend_from_slice(&self.right.to_le_bytes());
        b.extend_from_slice(&u16_of(self.prefix).to_le_bytes());
        b.extend_from_slice(&u16_of(self.low.len()).to_le_bytes());
        b.extend_from_slice(&u16_of(high_len).to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&u32_of(heap).to_le_bytes());
        b.extend_from_slice(&u32_of(len).to_le_bytes());
        for (off, hint) in &self.slots {
            b.extend_from_slice(&u32_of(heap + *off as usize).to_le_bytes());
            b.extend_from_slice(&hint.to_le_bytes());
        }
        b.extend_from_slice(&self.low);
        if let Some(h) = &self.high {
            b.extend_from_slice(h);
        }
        b.resize(heap, 0);
        let mut entries = self.entries;
        for (field, at) in &self.links {
            entries[*field..*field + 4].copy_from_slice(&u32_of(older_at + at).to_le_bytes());
        }
        b.extend_from_slice(&entries);
        b.extend_from_slice(&self.older);
        debug_assert_eq!(b.len(), len);
        let cells = (!self.cells.is_empty()).then(|| Arc::new(self.cells));
        let page = LeafPage { buf: Bytes::from(b), cells };
        debug_assert_eq!(page.validate(), Ok(()), "the builder wrote a page its check refuses");
        page
    }
}

#[derive(Clone, Copy)]
enum Out {
    Entries,
    Older,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Model = BTreeMap<Vec<u8>, Vec<(u64, Option<Vec<u8>>)>>;

    fn build(low: &[u8], high: Option<&[u8]>, model: &Model) -> LeafPage {
        let mut b = LeafBuilder::new(Bytes::copy_from_slice(low), high.map(Bytes::copy_from_slice), 9);
        for (k, vs) in model {
            let versions: Vec<Version> = vs
                .iter()
                .map(|(ts, v)| Version {
                    ts: *ts,
                    value: v.as_ref().map_or(Value::Tombstone, |v| Value::Inline(Bytes::copy_from_slice(v))),
                })
                .collect();
            b.push(k, &versions);
        }
        b.finish()
    }

    fn value_bytes(v: &Value) -> Option<Vec<u8>> {
        match v {
            Value::Tombstone => None,
            Value::Inline(b) => Some(b.to_vec()),
            Value::Blob(_) => panic!("no blobs in this model"),
        }
    }

    /// Keys from a small alphabet with a shared first byte or two, so prefixes and hint
    /// ties (keys equal in their first 4 bytes after the prefix) are common.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(vec![b'a', b'b', 0u8, 0xff]), 0..9).prop_map(|mut k| {
            k.insert(0, b'p');
            k
        })
    }

    fn entries() -> impl Strategy<Value = Model> {
        prop::collection::btree_map(
            key(),
            prop::collection::vec(
                (1u64..50, prop::option::of(prop::collection::vec(any::<u8>(), 0..20))),
                1..4,
            ),
            0..40,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(k, mut vs)| {
                    vs.sort_by_key(|v| std::cmp::Reverse(v.0));
                    vs.dedup_by_key(|v| v.0);
                    (k, vs)
                })
                .collect()
        })
    }

    proptest! {
        /// The page against a sorted map: every key found with all its versions, every
        /// other probe missed at the right place, visibility at every timestamp, fences and
        /// sibling kept, and the bytes accepted by the check as they would be from disk.
        #[test]
        fn a_page_holds_exactly_its_map(model in entries(), probes in prop::collection::vec(key(), 0..30), high in prop::option::of(Just(b"q".to_vec()))) {
            let low = b"p".to_vec();
            let page = build(&low, high.as_deref(), &model);
            prop_assert_eq!(page.count(), model.len());
            prop_assert_eq!(page.low(), &low[..]);
            prop_assert_eq!(page.high(), high.as_deref());
            prop_assert_eq!(page.right(), 9);
            for (i, (k, vs)) in model.iter().enumerate() {
                prop_assert_eq!(page.search(k), Ok(i));
                prop_assert_eq!(&page.key(i)[..], &k[..]);
                let got: Vec<(u64, Option<Vec<u8>>)> = page.versions(i).iter().map(|v| (v.ts, value_bytes(&v.value))).collect();
                prop_assert_eq!(&got, vs);
                for ts in 0..52 {
                    let want = vs.iter().find(|(t, _)| *t <= ts).cloned();
                    let seen = page.visible(i, ts).map(|v| (v.ts, value_bytes(&v.value)));
                    prop_assert_eq!(seen, want);
                }
            }
            let keys: Vec<&Vec<u8>> = model.keys().collect();
            for p in &probes {
                match keys.binary_search(&p) {
                    Ok(i) => prop_assert_eq!(page.search(p), Ok(i)),
                    Err(i) => prop_assert_eq!(page.search(p), Err(i)),
                }
            }
            let again = LeafPage::check(page.bytes().clone()).expect("a built page passes its check");
            prop_assert_eq!(again.count(), model.len());
        }

        /// Any single byte changed in a page is refused by the check or leaves a page that
        /// still reads without panicking.
        #[test]
        fn a_damaged_page_is_refused_or_still_readable(model in entries(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let page = build(b"p", Some(b"q"), &model);
            let mut b = page.bytes().to_vec();
            let i = at.index(b.len());
            b[i] = to;
            if let Ok(p) = LeafPage::check(Bytes::from(b)) {
                for i in 0..p.count() {
                    let _ = p.key(i);
                    let _ = p.versions(i);
                    let _ = p.search(&p.key(i));
                }
            }
        }
    }

    #[test]
    fn keys_outside_the_fences_miss_at_the_ends() {
        let mut m = Model::new();
        m.insert(b"pa".to_vec(), vec![(3, Some(b"x".to_vec()))]);
        m.insert(b"pb".to_vec(), vec![(4, None), (2, Some(b"y".to_vec()))]);
        let page = build(b"p", Some(b"pz"), &m);
        assert_eq!(page.prefix_len(), 1);
        assert_eq!(page.search(b"a"), Err(0));
        assert_eq!(page.search(b""), Err(0));
        assert_eq!(page.search(b"z"), Err(2));
        assert_eq!(page.search(b"pb"), Ok(1));
        assert!(matches!(page.visible(1, 3).map(|v| v.value), Some(Value::Inline(b)) if &b[..] == b"y"));
        assert!(matches!(page.visible(1, 9).map(|v| v.value), Some(Value::Tombstone)));
        assert!(page.visible(1, 1).is_none());
    }

    #[test]
    fn blob_values_held_in_memory_get_their_addresses_for_disk() {
        let cell = Arc::new(BlobCell::in_memory(Bytes::from(vec![5u8; 100])));
        let mut b = LeafBuilder::new(Bytes::new(), None, 0);
        b.push(b"k", &[Version { ts: 2, value: Value::Blob(cell.clone()) }]);
        let page = b.finish();
        assert!(page.has_cells());
        assert!(matches!(&page.newest(0).value, Value::Blob(c) if Arc::ptr_eq(c, &cell)));
        assert_eq!(LeafPage::check(page.bytes().clone()).unwrap_err().what, "unknown value kind");
        let disk = page.with_blob_addresses(&mut |_| 77);
        let read = LeafPage::check(disk.bytes().clone()).unwrap();
        assert!(matches!(&read.newest(0).value, Value::Blob(c) if c.addr() == 77 && c.len == 100));
    }

    /// `blob_refs` lists every version's blob, newest and older ones, on disk or in memory,
    /// and nothing for inline values and tombstones.
    #[test]
    fn blob_refs_count_every_version() {
        let cell = Arc::new(BlobCell::in_memory(Bytes::from(vec![5u8; 100])));
        let on_disk = |addr| Value::Blob(Arc::new(BlobCell::on_disk(addr, 10)));
        let mut b = LeafBuilder::new(Bytes::new(), None, 0);
        b.push(
            b"a",
            &[Version { ts: 9, value: Value::Blob(cell) }, Version { ts: 5, value: Value::Tombstone }, Version { ts: 3, value: on_disk(40) }],
        );
        b.push(b"b", &[Version { ts: 4, value: Value::Inline(Bytes::from_static(b"x")) }]);
        b.push(b"c", &[Version { ts: 8, value: on_disk(41) }, Version { ts: 2, value: on_disk(42) }]);
        let page = b.finish();
        let mut refs = Vec::new();
        page.blob_refs(&mut |_| 77, &mut refs);
        refs.sort_unstable();
        assert_eq!(refs, vec![40, 41, 42, 77]);
        let disk = page.with_blob_addresses(&mut |_| 77);
        let mut again = Vec::new();
        disk.blob_refs(&mut |_| unreachable!("an image holds no cell"), &mut again);
        again.sort_unstable();
        assert_eq!(again, refs);
    }
}
