//! Page images: how a leaf or an index node is laid out inside a data-file frame.
//!
//! Pages are written as pages of bytes: kind 3, a leaf ([`super::leaf`]), and kind 4, an
//! index node ([`super::inner`]); a load checks such bytes and keeps them. Pages of the
//! first format, written before, are still read (and rewritten as pages of bytes at their
//! next checkpoint). Little-endian, no padding:
//!
//! ```text
//! page   := kind u8 (1 leaf, 2 inner) | low | high | right u64 | body
//! low    := len u32 | bytes
//! high   := present u8 (0/1) | [len u32 | bytes]
//! leaf body  := count u32 | entry*          entry := key_len u32 | key | nver u32 | version*
//! version    := ts u64 | vkind u8 | payload
//!               vkind 0 tombstone (no payload), 1 inline (len u32 | bytes), 2 blob (addr u64 | len u32)
//! inner body := count u32 | (sep_len u32 | sep | pid u64)*
//! ```
//!
//! The frame around the image carries its CRC32C (relocation table); decoding still checks
//! every length and order, because a frame can be intact and still not be a page (a bug or
//! a misdirected write): a bad image is `Error::Corruption`, never a panic.

use std::path::Path;
use std::sync::Arc;

#[cfg(test)]
use bytes::BufMut;
use bytes::Bytes;

use super::inner::{InnerPage, KIND_INNER_PAGE};
use super::leaf::{BadPage, LeafPage, KIND_LEAF_PAGE};
use super::node::{BlobCell, Bounds, Entry, InnerBase, LeafBase, Value, Version};
#[cfg(test)]
use crate::codec::put_bytes32;
use crate::codec::{Reader, Truncated};
use crate::error::{Error, Result};
use crate::limits::{MAX_KEY_LEN, MAX_VALUE_LEN};

const KIND_LEAF: u8 = 1;
const KIND_INNER: u8 = 2;
const V_TOMB: u8 = 0;
const V_INLINE: u8 = 1;
const V_BLOB: u8 = 2;

/// A decoded page image.
#[derive(Debug)]
pub enum PageImage {
    /// A leaf.
    Leaf(LeafBase),
    /// An index node.
    Inner(InnerBase),
    /// A leaf's delta frame: versions written since its earlier frames, which it links to.
    Delta(DeltaImage),
}

/// The frame kind of a delta frame.
pub const KIND_DELTA: u8 = 5;
/// Bytes of a delta frame's fixed header.
const DELTA_HEADER: usize = 16;
/// Bytes of one link of a delta frame.
const DELTA_LINK: usize = 16;

/// One frame of a page's chain on disk: its logical address and length.
pub type FrameRef = (u64, u32);

/// A delta frame: the versions of one leaf written by one checkpoint over the frames it
/// links to (the page's earlier delta frames, newest first, then its base). Layout:
///
/// ```text
/// 0 kind u8 = 5 | 1 format u8 = 1 | 2 links u16 (>= 1) | 4 reserved u32 = 0
/// 8 cut u64: every version of the page at or below it is in this frame or a linked one,
///            and none above it is
/// 16 links x (addr u64 | len u32 | reserved u32 = 0), newest first, the base last
/// then a leaf page (kind 3) of the versions above the previous frames' cut, at or below
///      `cut`, with the page's fences and right link
/// ```
#[derive(Debug)]
pub struct DeltaImage {
    /// The cut of the checkpoint that wrote the frame.
    pub cut: u64,
    /// The frames below it, newest first, the base last.
    pub links: Vec<FrameRef>,
    /// The versions it holds, as a leaf page (a key's versions newest first).
    pub leaf: LeafBase,
}

/// Encodes a delta frame (layout at [`DeltaImage`]) around the leaf page `leaf`.
pub fn encode_delta(cut: u64, links: &[FrameRef], leaf: &[u8], out: &mut Vec<u8>) {
    let n = u16::try_from(links.len()).ok().filter(|&n| n > 0).expect("a delta frame links 1..=65535 frames");
    out.reserve(DELTA_HEADER + DELTA_LINK * links.len() + leaf.len());
    out.push(KIND_DELTA);
    out.push(1);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&cut.to_le_bytes());
    for &(addr, len) in links {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    out.extend_from_slice(leaf);
}

fn decode_delta(bytes: &Bytes, file: &Path, offset: u64) -> Result<PageImage> {
    let bad = |at: usize, what: &str| Error::corruption(file, offset + at as u64, format!("delta frame: {what}"));
    if bytes.len() < DELTA_HEADER {
        return Err(bad(0, "shorter than its header"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes[1] != 1 {
        return Err(bad(1, "unknown format"));
    }
    let n = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
    if n == 0 {
        return Err(bad(2, "links no frame"));
    }
    if u32_at(4) != 0 {
        return Err(bad(4, "reserved bytes are not zero"));
    }
    let cut = u64_at(8);
    let leaf_at = DELTA_HEADER + DELTA_LINK * n;
    if bytes.len() < leaf_at {
        return Err(bad(2, "its links run past its end"));
    }
    let mut links = Vec::with_capacity(n);
    for i in 0..n {
        let at = DELTA_HEADER + DELTA_LINK * i;
        let (addr, len) = (u64_at(at), u32_at(at + 8));
        if addr == 0 || len == 0 || u32_at(at + 12) != 0 {
            return Err(bad(at, "a malformed link"));
        }
        links.push((addr, len));
    }
    if bytes.get(leaf_at) != Some(&KIND_LEAF_PAGE) {
        return Err(bad(leaf_at, "does not hold a leaf page"));
    }
    let leaf = match LeafPage::check(bytes.slice(leaf_at..)) {
        Ok(page) => LeafBase::from_page(page),
        Err(BadPage { at, what }) => return Err(Error::corruption(file, offset + (leaf_at + at) as u64, what)),
    };
    if leaf.page.has_cells() {
        return Err(bad(leaf_at, "holds a value without an address"));
    }
    Ok(PageImage::Delta(DeltaImage { cut, links, leaf }))
}

#[cfg(test)]
fn put_bounds(out: &mut Vec<u8>, b: &Bounds) {
    put_bytes32(out, &b.low);
    match &b.high {
        Some(h) => {
            out.put_u8(1);
            put_bytes32(out, h);
        }
        None => out.put_u8(0),
    }
    out.put_u64_le(b.right);
}

/// Encodes a leaf: its page's bytes ([`super::leaf`]), with the address `blob_addr` returns
/// for each blob value held in memory (where it is, or will be, stored).
pub fn encode_leaf(leaf: &LeafBase, out: &mut Vec<u8>, blob_addr: &mut dyn FnMut(&Arc<BlobCell>) -> u64) {
    out.extend_from_slice(leaf.page.with_blob_addresses(blob_addr).bytes());
}

/// Encodes a leaf in the first format (kind 1), which [`decode`] still reads: the format
/// of databases written before leaves were pages of bytes. Tests only.
#[cfg(test)]
fn encode_leaf_v0(leaf: &LeafBase, out: &mut Vec<u8>) {
    out.put_u8(KIND_LEAF);
    put_bounds(out, &leaf.bounds);
    let entries = leaf.entries();
    out.put_u32_le(u32::try_from(entries.len()).expect("a test page"));
    for e in &entries {
        put_bytes32(out, &e.key);
        out.put_u32_le(u32::try_from(e.versions.len()).expect("a test page"));
        for v in &e.versions {
            out.put_u64_le(v.ts);
            match &v.value {
                Value::Tombstone => out.put_u8(V_TOMB),
                Value::Inline(b) => {
                    out.put_u8(V_INLINE);
                    put_bytes32(out, b);
                }
                Value::Blob(c) => {
                    out.put_u8(V_BLOB);
                    out.put_u64_le(c.addr());
                    out.put_u32_le(c.len);
                }
            }
        }
    }
}

/// Encodes an index node: its page's bytes ([`super::inner`]).
pub fn encode_inner(inner: &InnerBase, out: &mut Vec<u8>) {
    out.extend_from_slice(inner.page.bytes());
}

/// Encodes an index node in the first format (kind 2), which [`decode`] still reads: the
/// format of databases written before index nodes were pages of bytes. Tests only.
#[cfg(test)]
fn encode_inner_v0(inner: &InnerBase, out: &mut Vec<u8>) {
    out.put_u8(KIND_INNER);
    put_bounds(out, &inner.bounds);
    let children = inner.children();
    out.put_u32_le(u32::try_from(children.len()).expect("a test page"));
    for (sep, pid) in &children {
        put_bytes32(out, sep);
        out.put_u64_le(*pid);
    }
}

fn get_bounds(r: &mut Reader<'_>, src: &Bytes) -> Result<Bounds, Truncated> {
    let low = src.slice_ref(r.bytes32(MAX_KEY_LEN)?);
    let high = match r.u8()? {
        0 => None,
        1 => Some(src.slice_ref(r.bytes32(MAX_KEY_LEN)?)),
        _ => return Err(Truncated { at: r.pos() - 1 }),
    };
    let right = r.u64()?;
    Ok(Bounds { low, high, right })
}

fn decode_inner_body(r: &mut Reader<'_>, src: &Bytes) -> Result<PageImage, Truncated> {
    let bounds = get_bounds(r, src)?;
    let n = r.count32(12)?;
    let mut children: Vec<(Bytes, u64)> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let sep = src.slice_ref(r.bytes32(MAX_KEY_LEN)?);
        let pid = r.u64()?;
        if pid == 0 || children.last().is_some_and(|(p, _)| *p >= sep) {
            return Err(Truncated { at });
        }
        children.push((sep, pid));
    }
    if children.is_empty() || children[0].0 != bounds.low {
        return Err(Truncated { at: r.pos() });
    }
    if bounds.high.as_ref().is_some_and(|h| children.last().is_some_and(|(s, _)| s >= h)) {
        return Err(Truncated { at: r.pos() });
    }
    // What the checks above let through is what the builder asserts.
    Ok(PageImage::Inner(InnerBase::build(&bounds, &children)))
}

fn decode_leaf_body(r: &mut Reader<'_>, src: &Bytes) -> Result<PageImage, Truncated> {
    let at = r.pos();
    let bounds = get_bounds(r, src)?;
    if bounds.high.as_ref().is_some_and(|h| bounds.low >= h) {
        return Err(Truncated { at });
    }
    let n = r.count32(8)?;
    let mut entries: Vec<Entry> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos();
        let key = src.slice_ref(r.bytes32(MAX_KEY_LEN)?);
        if entries.last().is_some_and(|e| e.key >= key) || key < bounds.low || bounds.is_right_of(&key) {
            return Err(Truncated { at });
        }
        let nv = r.count32(9)?;
        if nv == 0 {
            return Err(Truncated { at });
        }
        let mut versions: Vec<Version> = Vec::with_capacity(nv);
        for _ in 0..nv {
            let vat = r.pos();
            let ts = r.u64()?;
            let value = match r.u8()? {
                V_TOMB => Value::Tombstone,
                V_INLINE => Value::Inline(src.slice_ref(r.bytes32(MAX_VALUE_LEN)?)),
                V_BLOB => {
                    let addr = r.u64()?;
                    let len = r.u32()?;
                    if addr == 0 || len as usize > MAX_VALUE_LEN {
                        return Err(Truncated { at: vat });
                    }
                    Value::Blob(Arc::new(BlobCell::on_disk(addr, len)))
                }
                _ => return Err(Truncated { at: vat }),
            };
            if versions.last().is_some_and(|p| p.ts <= ts) {
                return Err(Truncated { at: vat });
            }
            versions.push(Version { ts, value });
        }
        entries.push(Entry { key, versions });
    }
    // What the checks above let through is what the builder asserts.
    Ok(PageImage::Leaf(LeafBase::from_entries(&bounds, &entries)))
}

/// Decodes a page image read from `file` at byte `offset`.
/// Keys and values of the result share `bytes` (no copy).
pub fn decode(bytes: &Bytes, file: &Path, offset: u64) -> Result<PageImage> {
    if bytes.first() == Some(&KIND_LEAF_PAGE) {
        return match LeafPage::check(bytes.clone()) {
            Ok(page) => Ok(PageImage::Leaf(LeafBase::from_page(page))),
            Err(BadPage { at, what }) => Err(Error::corruption(file, offset + at as u64, what)),
        };
    }
    if bytes.first() == Some(&KIND_INNER_PAGE) {
        return match InnerPage::check(bytes.clone()) {
            Ok(page) => Ok(PageImage::Inner(InnerBase::from_page(page))),
            Err(BadPage { at, what }) => Err(Error::corruption(file, offset + at as u64, what)),
        };
    }
    if bytes.first() == Some(&KIND_DELTA) {
        return decode_delta(bytes, file, offset);
    }
    let mut r = Reader::new(bytes);
    let res = match r.u8() {
        Ok(KIND_LEAF) => decode_leaf_body(&mut r, bytes),
        Ok(KIND_INNER) => decode_inner_body(&mut r, bytes),
        Ok(k) => {
            return Err(Error::corruption(file, offset, format!("unknown page kind {k}")));
        }
        Err(t) => Err(t),
    };
    let img = res.map_err(|t| Error::corruption(file, offset + t.at as u64, "malformed page image"))?;
    if r.remaining() != 0 {
        return Err(Error::corruption(file, offset, "trailing bytes after page image"));
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> LeafBase {
        LeafBase::from_entries(
            &Bounds { low: Bytes::from_static(b"a"), high: Some(Bytes::from_static(b"z")), right: 7 },
            &[
                Entry {
                    key: Bytes::from_static(b"b"),
                    versions: vec![
                        Version { ts: 9, value: Value::Inline(Bytes::from_static(b"v9")) },
                        Version { ts: 3, value: Value::Tombstone },
                    ],
                },
                Entry {
                    key: Bytes::from_static(b"c"),
                    versions: vec![Version {
                        ts: 4,
                        value: Value::Blob(Arc::new(BlobCell::on_disk(77, 5000))),
                    }],
                },
            ],
        )
    }

    fn check_leaf(img: PageImage) {
        match img {
            PageImage::Leaf(l) => {
                assert_eq!(l.bounds, leaf().bounds);
                let e = l.entries();
                assert_eq!(e.len(), 2);
                assert_eq!(e[0].versions[0].ts, 9);
                assert!(matches!(&e[0].versions[1].value, Value::Tombstone));
                assert!(matches!(&e[1].versions[0].value, Value::Blob(c) if c.addr() == 77 && c.len == 5000));
            }
            _ => panic!("kind"),
        }
    }

    /// A delta frame carries its cut, its links and a leaf page of its versions; every
    /// truncation and a few single-byte changes of its header are refused.
    #[test]
    fn delta_frame_roundtrip_and_damage_rejected() {
        let mut leaf_bytes = Vec::new();
        encode_leaf(&leaf(), &mut leaf_bytes, &mut |c| c.addr());
        let links = [(40, 300), (12, 4000)];
        let mut out = Vec::new();
        encode_delta(55, &links, &leaf_bytes, &mut out);
        let out = Bytes::from(out);
        let p = Path::new("x");
        let PageImage::Delta(d) = decode(&out, p, 0).unwrap() else { panic!("kind") };
        assert_eq!((d.cut, &d.links[..]), (55, &links[..]));
        check_leaf(PageImage::Leaf(d.leaf));
        for cut in 0..out.len() {
            assert!(decode(&out.slice(..cut), p, 0).is_err(), "cut at {cut}");
        }
        // format, link count 0, reserved, a link's address 0, a link's reserved word
        for (at, byte) in [(1, 2), (2, 0), (4, 1), (16, 0), (28, 1)] {
            let mut bad = out.to_vec();
            if at == 16 {
                bad[16..24].fill(0);
            } else if at == 2 {
                bad[2..4].fill(0);
            } else {
                bad[at] = byte;
            }
            assert!(decode(&Bytes::from(bad), p, 0).is_err(), "damage at {at}");
        }
    }

    #[test]
    fn leaf_roundtrip_and_every_truncation_rejected() {
        let mut out = Vec::new();
        encode_leaf(&leaf(), &mut out, &mut |c| c.addr());
        let p = Path::new("x");
        let out = Bytes::from(out);
        assert_eq!(out[0], KIND_LEAF_PAGE);
        check_leaf(decode(&out, p, 0).unwrap());
        for cut in 0..out.len() {
            assert!(decode(&out.slice(..cut), p, 0).is_err(), "cut at {cut}");
        }
    }

    /// Databases written before leaves were pages of bytes stay readable.
    #[test]
    fn a_leaf_of_the_first_format_is_still_read() {
        let mut out = Vec::new();
        encode_leaf_v0(&leaf(), &mut out);
        let p = Path::new("x");
        let out = Bytes::from(out);
        assert_eq!(out[0], KIND_LEAF);
        check_leaf(decode(&out, p, 0).unwrap());
        for cut in 0..out.len() {
            assert!(decode(&out.slice(..cut), p, 0).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn inner_roundtrip() {
        let bounds = Bounds { low: Bytes::from_static(b"b"), high: Some(Bytes::from_static(b"q")), right: 9 };
        let inner = InnerBase::build(&bounds, &[(Bytes::from_static(b"b"), 2), (Bytes::from_static(b"k"), 3)]);
        // Today's format (kind 4) and the first one (kind 2), which is still read.
        let (mut now, mut v0) = (Vec::new(), Vec::new());
        encode_inner(&inner, &mut now);
        encode_inner_v0(&inner, &mut v0);
        assert_eq!(now[0], KIND_INNER_PAGE);
        assert_eq!(v0[0], KIND_INNER);
        for out in [now, v0] {
            let out = Bytes::from(out);
            match decode(&out, Path::new("x"), 0).unwrap() {
                PageImage::Inner(i) => {
                    assert_eq!(i.children(), inner.children());
                    assert_eq!(i.bounds, inner.bounds);
                }
                _ => panic!("kind"),
            }
            for cut in 0..out.len() {
                assert!(decode(&out.slice(..cut), Path::new("x"), 0).is_err(), "cut at {cut}");
            }
        }
        // A first-format page whose last separator is at its high fence is refused, not built.
        let mut bad = Vec::new();
        let wide = Bounds { low: Bytes::from_static(b"b"), high: Some(Bytes::from_static(b"k")), right: 9 };
        let inner = InnerBase { bounds: wide, page: inner.page.clone() };
        encode_inner_v0(&inner, &mut bad);
        assert!(decode(&Bytes::from(bad), Path::new("x"), 0).is_err());
    }
}
