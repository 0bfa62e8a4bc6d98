//! Entry points for the fuzz targets and their corpus replay; not a stable API.
//!
//! One function per on-disk decoder, each taking arbitrary bytes. `fuzz/fuzz_targets/<name>.rs`
//! calls `<name>` under libFuzzer (nightly); `tests/fuzz_corpus.rs` replays the saved corpora
//! `fuzz/corpus/<name>/` and mutations of them through the same function on stable.
//!
//! Every function runs the engine's own decoder and asserts, for every input:
//! 1. the decoder returns: bad bytes are an `Err` (a `Corruption` where the decoder names a
//!    file), never a panic, an out-of-bounds read or a hang;
//! 2. a decoded value re-encodes (with the engine's encoder where it has one of its own) to
//!    the very bytes it was decoded from: every format here is canonical, so a decoder
//!    accepting two spellings of one value is a bug;
//! 3. every length and offset a decoded value claims lies inside the input.
//!
//! A mutated input almost never carries a matching CRC32C, so the targets whose format has
//! checksums run the decoder twice: on the bytes as given (the checks themselves are fuzzed)
//! and on a copy whose checksums were recomputed (`fix_*`), so that what lies behind the
//! checksums is fuzzed as well.
//!
//! The data-file tables and footer have no encoder of their own (`FileBuilder::finish` writes
//! them inline), so their targets re-encode with
//! [`encode_footer`](crate::fuzzing::encode_footer),
//! [`encode_ranges`](crate::fuzzing::encode_ranges) and
//! [`encode_relocs`](crate::fuzzing::encode_relocs), written from `docs/format.md`; a unit
//! test checks them against `FileBuilder`.

use bytes::{BufMut, Bytes};
use std::path::Path;

use crate::manifest::edit::{self, Edit, ManifestState};
use crate::manifest::{current_contents, parse_current};
use crate::store::data_file::{self, FileBuilder, FileKind, Footer, RelocEntry, FOOTER_LEN, RELOC_ENTRY_LEN};
use crate::tree::node::{Bounds, InnerBase, LeafBase, Value};
use crate::tree::page::{self, PageImage};
use crate::wal::record::{self, FRAME_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAGIC};

/// Size of one address range on disk (`start u64 | end u64`).
const RANGE_LEN: usize = 16;

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put_crc(b: &mut [u8], at: usize, crc: u32) {
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Runs `check` on `data`, then on the copy `fix` makes of it if that copy differs.
fn as_given_and_fixed(data: &[u8], fix: fn(&mut [u8]), check: impl Fn(&[u8])) {
    check(data);
    let mut fixed = data.to_vec();
    fix(&mut fixed);
    if fixed != data {
        check(&fixed);
    }
}

// ---------------------------------------------------------------------------------------
// WAL

/// A framed WAL record (`len u32 | crc u32 | payload`, as in a segment) through
/// [`record::decode`], and a batch mark through [`record::decode_mark`]. Asserts: the bytes
/// used are the frame's length and lie inside the input, [`record::encode`] of the record
/// gives them back exactly, and a mark re-encodes exactly and never decodes as a record.
pub fn wal_record(data: &[u8]) {
    as_given_and_fixed(data, fix_wal_crc, |data| {
        // A batch mark decodes only from its exact encoding, and never also as a record.
        if let Some((at, synced_to)) = record::decode_mark(data) {
            assert_eq!(&record::encode_mark(at, synced_to)[..], &data[..record::MARK_LEN]);
            assert!(record::decode(data).is_err(), "a batch mark decoded as a record too");
        }
        let Ok((rec, used)) = record::decode(data) else { return };
        assert!(used <= data.len(), "record of {used} bytes decoded from {} bytes", data.len());
        assert_eq!(used, FRAME_LEN + le_u32(data, 0) as usize, "bytes used differ from the frame's length");
        let enc = record::encode(&rec).expect("a decoded record is within the bounds encode enforces");
        assert_eq!(&enc[..], &data[..used], "re-encoding a decoded WAL record changed its bytes");
    });
}

/// Recomputes the CRC of the record at the front of `b`, if its payload is all there.
fn fix_wal_crc(b: &mut [u8]) {
    if b.len() < FRAME_LEN {
        return;
    }
    let len = le_u32(b, 0) as usize;
    if let Some(payload) = b.get(FRAME_LEN..FRAME_LEN.saturating_add(len)) {
        let crc = crc32c::crc32c(payload);
        put_crc(b, 4, crc);
    }
}

/// A WAL segment header through [`record::decode_segment_header`]. Asserts: it fails exactly
/// when the input is short or lacks the magic, and [`record::encode_segment_header`] of the
/// sequence number gives the header back.
pub fn wal_segment_header(data: &[u8]) {
    match record::decode_segment_header(data) {
        Ok(seq) => {
            assert_eq!(&record::encode_segment_header(seq)[..], &data[..SEGMENT_HEADER_LEN]);
        }
        Err(_) => assert!(data.len() < SEGMENT_HEADER_LEN || data[..8] != SEGMENT_MAGIC),
    }
}

// ---------------------------------------------------------------------------------------
// Data and blob files

/// A whole data file, read as `Store::read_frame` reads it: footer, tables, then every frame
/// located by its relocation entry, checked against its CRC and decoded as a page image.
/// Asserts: every structure claimed lies inside the file, every frame that passes its CRC
/// and decodes re-encodes exactly (see [`page_image`]), and a file laid out as `FileBuilder`
/// lays files out is rebuilt byte for byte by `FileBuilder` from its frames.
pub fn data_frame(data: &[u8]) {
    as_given_and_fixed(data, fix_file_crcs, |data| whole_file(data, FileKind::Data));
}

/// A whole blob file, read as `Store::read_frame` reads it (a blob frame is the value's
/// bytes, checked by its CRC). Asserts as [`data_frame`], without the page decode.
pub fn blob_frame(data: &[u8]) {
    as_given_and_fixed(data, fix_file_crcs, |data| whole_file(data, FileKind::Blob));
}

fn whole_file(file: &[u8], kind: FileKind) {
    let name = kind.file_name(1);
    let path = Path::new(&name);
    let len = file.len() as u64;
    // `Store` refuses a file shorter than a footer before it reads one.
    let Some(footer_at) = file.len().checked_sub(FOOTER_LEN) else { return };
    let footer = match data_file::parse_footer(&file[footer_at..], path, len) {
        Ok(f) => f,
        Err(e) => return assert!(e.is_corruption(), "{e}"),
    };
    check_footer_claims(&footer, len);
    if footer.kind != kind {
        return; // `Store` compares the kind with the manifest's and stops here
    }
    // check_footer_claims asserted ranges_offset + tables + FOOTER_LEN == file.len().
    #[allow(clippy::cast_possible_truncation)]
    let tables = &file[footer.ranges_offset as usize..footer_at];
    let (ranges, relocs) = match data_file::parse_tables(tables, &footer, path) {
        Ok(t) => t,
        Err(e) => return assert!(e.is_corruption(), "{e}"),
    };
    check_ranges(&ranges);
    check_relocs(&relocs, footer.ranges_offset);
    // check_relocs asserted offset + len <= ranges_offset (<= file.len(), above).
    #[allow(clippy::cast_possible_truncation)]
    let frame_of = |e: &RelocEntry| &file[e.offset as usize..(e.offset + u64::from(e.len)) as usize];
    let mut frames_intact = true;
    for e in &relocs {
        let frame = frame_of(e);
        if let Err(err) = data_file::check_frame(frame, e, path) {
            assert!(err.is_corruption(), "{err}");
            frames_intact = false;
            continue;
        }
        if kind == FileKind::Data {
            decode_page(&Bytes::copy_from_slice(frame), e.offset);
        }
    }
    // FileBuilder writes frames back to back from offset 0 in address order, and the ranges
    // as the runs of consecutive addresses. A file laid out so is rebuilt from its frames
    // byte for byte, but for the footer's reserved word (which the decoder does not check
    // is 0) and so its CRC.
    let mut next = 0u64;
    let back_to_back = relocs.iter().all(|e| {
        let ok = e.offset == next;
        next += u64::from(e.len);
        ok
    });
    if !(frames_intact && back_to_back && next == footer.ranges_offset) {
        return;
    }
    // FileBuilder takes its addresses from `Store::alloc_addr`: u64::MAX lies in no
    // half-open range, so no file it writes holds it (and `finish` would overflow).
    if relocs.last().is_some_and(|e| e.addr == u64::MAX) {
        return;
    }
    let mut b = FileBuilder::new(kind);
    for e in &relocs {
        b.add(e.addr, Bytes::copy_from_slice(frame_of(e)));
    }
    let (chunks, built_ranges, built_relocs) = b.finish();
    if built_ranges != ranges {
        return; // ranges that are not the runs of the addresses (for example split runs)
    }
    assert_eq!(built_relocs, relocs);
    let rebuilt: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(rebuilt.len(), file.len());
    assert_eq!(&rebuilt[..file.len() - 8], &file[..file.len() - 8], "FileBuilder rebuilt another file");
}

/// What `parse_footer` promises: the tables tile the file between the frames and the footer.
fn check_footer_claims(f: &Footer, file_len: u64) {
    let reloc = f.ranges_offset + RANGE_LEN as u64 * u64::from(f.ranges_count);
    assert_eq!(reloc, f.reloc_offset);
    assert_eq!(
        f.reloc_offset + RELOC_ENTRY_LEN as u64 * u64::from(f.reloc_count) + FOOTER_LEN as u64,
        file_len
    );
}

/// What `parse_tables` promises of the ranges: non-empty, sorted, disjoint.
fn check_ranges(ranges: &[(u64, u64)]) {
    assert!(ranges.iter().all(|&(s, e)| s < e));
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
}

/// What `parse_tables` promises of the relocation table: addresses strictly increase and
/// every frame lies before `frames_end` (the ranges offset).
fn check_relocs(relocs: &[RelocEntry], frames_end: u64) {
    assert!(relocs.windows(2).all(|w| w[0].addr < w[1].addr));
    assert!(relocs.iter().all(|e| e.offset + u64::from(e.len) <= frames_end));
}

/// Recomputes every checksum of a data or blob file whose footer tiles it: each frame's CRC
/// in its relocation entry (where the frame lies inside the file), both table CRCs, and the
/// footer CRC.
fn fix_file_crcs(b: &mut [u8]) {
    let Some(f) = b.len().checked_sub(FOOTER_LEN) else { return };
    let ranges_offset = le_u64(b, f + 16);
    let reloc_offset = le_u64(b, f + 32);
    let tiles = ranges_offset
        .checked_add(RANGE_LEN as u64 * u64::from(le_u32(b, f + 24)))
        .is_some_and(|end| end == reloc_offset)
        && reloc_offset.checked_add(RELOC_ENTRY_LEN as u64 * u64::from(le_u32(b, f + 40))) == Some(f as u64);
    if tiles {
        // `tiles`: ranges_offset <= reloc_offset <= f, a usize.
        #[allow(clippy::cast_possible_truncation)]
        let (ranges_offset, reloc_offset) = (ranges_offset as usize, reloc_offset as usize);
        for at in (reloc_offset..f).step_by(RELOC_ENTRY_LEN) {
            let (offset, len) = (le_u64(b, at + 8), le_u32(b, at + 16));
            let end = offset.checked_add(u64::from(len)).filter(|&end| end <= ranges_offset as u64);
            if let Some(end) = end {
                // offset <= end <= ranges_offset, a usize (filter above).
                #[allow(clippy::cast_possible_truncation)]
                let crc = crc32c::crc32c(&b[offset as usize..end as usize]);
                put_crc(b, at + 20, crc);
            }
        }
        let ranges_crc = crc32c::crc32c(&b[ranges_offset..reloc_offset]);
        put_crc(b, f + 28, ranges_crc);
        let reloc_crc = crc32c::crc32c(&b[reloc_offset..f]);
        put_crc(b, f + 44, reloc_crc);
    }
    let crc = crc32c::crc32c(&b[f..f + 52]);
    put_crc(b, f + 52, crc);
}

/// A footer through [`data_file::parse_footer`]; the input is `file_len u64 | footer`.
/// Asserts: the tables it describes tile the file, and re-encoding it gives the same bytes
/// (but for the reserved word and the CRC).
pub fn footer(data: &[u8]) {
    as_given_and_fixed(data, fix_footer_crc, |data| {
        let Some((file_len, buf)) = data.split_first_chunk::<8>() else { return };
        let file_len = u64::from_le_bytes(*file_len);
        let f = match data_file::parse_footer(buf, Path::new("footer"), file_len) {
            Ok(f) => f,
            Err(e) => return assert!(e.is_corruption(), "{e}"),
        };
        check_footer_claims(&f, file_len);
        let enc = encode_footer(&f);
        assert_eq!(&enc[..48], &buf[..48], "re-encoding a decoded footer changed its bytes");
        let again = data_file::parse_footer(&enc, Path::new("footer"), file_len).expect("re-encoded footer");
        assert_eq!(footer_fields(&again), footer_fields(&f));
    });
}

fn fix_footer_crc(b: &mut [u8]) {
    if b.len() == 8 + FOOTER_LEN {
        let crc = crc32c::crc32c(&b[8..8 + 52]);
        put_crc(b, 8 + 52, crc);
    }
}

fn footer_fields(f: &Footer) -> (u32, u64, u32, u32, u64, u32, u32) {
    (f.kind.code(), f.ranges_offset, f.ranges_count, f.ranges_crc, f.reloc_offset, f.reloc_count, f.reloc_crc)
}

/// The footer as `docs/format.md` lays it out (reserved word 0).
pub fn encode_footer(f: &Footer) -> Vec<u8> {
    let mut out = Vec::with_capacity(FOOTER_LEN);
    out.put_slice(b"RKVFILE1");
    out.put_u32_le(1);
    out.put_u32_le(f.kind.code());
    out.put_u64_le(f.ranges_offset);
    out.put_u32_le(f.ranges_count);
    out.put_u32_le(f.ranges_crc);
    out.put_u64_le(f.reloc_offset);
    out.put_u32_le(f.reloc_count);
    out.put_u32_le(f.reloc_crc);
    out.put_u32_le(0);
    let crc = crc32c::crc32c(&out);
    out.put_u32_le(crc);
    assert_eq!(out.len(), FOOTER_LEN);
    out
}

/// The address ranges table as `docs/format.md` lays it out.
pub fn encode_ranges(ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ranges.len() * RANGE_LEN);
    for &(s, e) in ranges {
        out.put_u64_le(s);
        out.put_u64_le(e);
    }
    out
}

/// The relocation table as `docs/format.md` lays it out.
pub fn encode_relocs(relocs: &[RelocEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(relocs.len() * RELOC_ENTRY_LEN);
    for e in relocs {
        out.put_u64_le(e.addr);
        out.put_u64_le(e.offset);
        out.put_u32_le(e.len);
        out.put_u32_le(e.crc);
    }
    out
}

/// A footer describing tables of `ranges` and `relocs` bytes that end a file whose frames
/// end at `frames_end`, with their CRCs.
// `ranges` and `relocs` are slices of one fuzz input (libFuzzer's -max_len, corpus files
// of a few KiB): their entry counts are far below u32::MAX.
#[allow(clippy::cast_possible_truncation)]
fn footer_for(frames_end: u64, ranges: &[u8], relocs: &[u8]) -> Footer {
    Footer {
        kind: FileKind::Data,
        ranges_offset: frames_end,
        ranges_count: (ranges.len() / RANGE_LEN) as u32,
        ranges_crc: crc32c::crc32c(ranges),
        reloc_offset: frames_end + ranges.len() as u64,
        reloc_count: (relocs.len() / RELOC_ENTRY_LEN) as u32,
        reloc_crc: crc32c::crc32c(relocs),
    }
}

/// An address ranges table through [`data_file::parse_tables`] (with a footer made for it
/// and an empty relocation table). Asserts: it is accepted exactly when it is what
/// `docs/format.md` allows (whole entries, each non-empty, sorted, disjoint), and
/// re-encodes to the same bytes.
pub fn address_ranges(data: &[u8]) {
    let footer = footer_for(0, data, &[]);
    let documented = data.len().is_multiple_of(RANGE_LEN) && {
        let r: Vec<(u64, u64)> = data.chunks_exact(RANGE_LEN).map(|c| (le_u64(c, 0), le_u64(c, 8))).collect();
        r.iter().all(|&(s, e)| s < e) && r.windows(2).all(|w| w[0].1 <= w[1].0)
    };
    match data_file::parse_tables(data, &footer, Path::new("ranges")) {
        Ok((ranges, relocs)) => {
            assert!(documented, "accepted ranges the format does not allow: {ranges:?}");
            assert!(relocs.is_empty());
            check_ranges(&ranges);
            assert_eq!(encode_ranges(&ranges), data);
        }
        Err(e) => {
            assert!(e.is_corruption(), "{e}");
            assert!(!documented, "refused ranges the format allows: {e}");
        }
    }
}

/// A relocation table through [`data_file::parse_tables`]; the input is
/// `frames_end u64 | table` (with a footer made for it and no ranges). Asserts: it is
/// accepted exactly when it is what `docs/format.md` allows (whole entries, addresses
/// strictly increasing, frames before `frames_end`), and re-encodes to the same bytes.
pub fn relocation_table(data: &[u8]) {
    let Some((frames_end, table)) = data.split_first_chunk::<8>() else { return };
    let frames_end = u64::from_le_bytes(*frames_end);
    if frames_end.checked_add(table.len() as u64).is_none() {
        return; // no file holds tables past u64::MAX
    }
    let footer = footer_for(frames_end, &[], table);
    let documented = table.len() % RELOC_ENTRY_LEN == 0 && {
        let r: Vec<(u64, u64, u32)> = table
            .chunks_exact(RELOC_ENTRY_LEN)
            .map(|c| (le_u64(c, 0), le_u64(c, 8), le_u32(c, 16)))
            .collect();
        r.windows(2).all(|w| w[0].0 < w[1].0)
            && r.iter().all(|&(_, off, len)| off.checked_add(u64::from(len)).is_some_and(|e| e <= frames_end))
    };
    match data_file::parse_tables(table, &footer, Path::new("relocs")) {
        Ok((ranges, relocs)) => {
            assert!(documented, "accepted a relocation table the format does not allow: {relocs:?}");
            assert!(ranges.is_empty());
            check_relocs(&relocs, frames_end);
            assert_eq!(encode_relocs(&relocs), table);
        }
        Err(e) => {
            assert!(e.is_corruption(), "{e}");
            assert!(!documented, "refused a relocation table the format allows: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Page images

/// A page image (the contents of a data-file frame) through [`page::decode`]. Asserts: a
/// decoded page keeps the invariants of `docs/format.md` (keys strictly increase inside the
/// bounds, versions strictly decrease in ts, the first separator is the low key), its keys
/// and values are slices of the input, and `encode_leaf`/`encode_inner` give the input back.
pub fn page_image(data: &[u8]) {
    decode_page(&Bytes::copy_from_slice(data), 0);
}

/// The leaf page as bytes (`tree::leaf`, not yet the tree's page): a page that passes
/// [`LeafPage::check`](crate::tree::leaf::LeafPage::check) reads without a panic, every key
/// is found by the search at its own slot, keys strictly increase inside the fences,
/// versions strictly decrease in ts, and a builder fed what it read writes a page that reads
/// back the same.
pub fn leaf_page(data: &[u8]) {
    use crate::tree::leaf::{LeafBuilder, LeafPage};
    let Ok(page) = LeafPage::check(Bytes::copy_from_slice(data)) else { return };
    let low = Bytes::copy_from_slice(page.low());
    let high = page.high().map(Bytes::copy_from_slice);
    let mut rebuilt = LeafBuilder::new(low.clone(), high.clone(), page.right());
    let mut all = Vec::with_capacity(page.count());
    for i in 0..page.count() {
        let key = page.key(i);
        assert_eq!(page.search(&key), Ok(i), "key {i} not found at its slot");
        assert!(key >= low && high.as_ref().is_none_or(|h| key < *h), "key {i} outside the fences");
        let versions: Vec<crate::tree::node::Version> = page
            .versions(i)
            .into_iter()
            .map(|v| crate::tree::node::Version { ts: v.ts, value: v.value })
            .collect();
        assert!(versions.windows(2).all(|w| w[0].ts > w[1].ts), "versions of key {i} not newest first");
        rebuilt.push(&key, &versions);
        all.push((key, versions));
    }
    let again = LeafPage::check(rebuilt.finish().bytes().clone()).expect("a rebuilt page passes its check");
    assert_eq!(again.count(), all.len());
    for (i, (key, versions)) in all.iter().enumerate() {
        assert_eq!(&again.key(i), key);
        let ts: Vec<u64> = again.versions(i).iter().map(|v| v.ts).collect();
        assert_eq!(ts, versions.iter().map(|v| v.ts).collect::<Vec<_>>());
    }
}

/// The index page as bytes (`tree::inner`): a page that passes
/// [`InnerPage::check`](crate::tree::inner::InnerPage::check) reads without a panic, the
/// search for every separator finds its own child (and for a key just below it, the child
/// before), separators strictly increase from the low fence and stay below the high fence,
/// and a page built from what it read has the same bytes.
pub fn inner_page(data: &[u8]) {
    use crate::tree::inner::InnerPage;
    let Ok(page) = InnerPage::check(Bytes::copy_from_slice(data)) else { return };
    let children = page.children();
    assert_eq!(children.len(), page.count());
    assert_eq!(children[0].0.as_ref(), page.low(), "the first separator is not the low fence");
    for (i, (sep, pid)) in children.iter().enumerate() {
        assert!(*pid != 0);
        assert!(page.high().is_none_or(|h| sep.as_ref() < h), "separator {i} at or past the high fence");
        if i > 0 {
            assert!(children[i - 1].0 < *sep, "separators out of order at {i}");
            assert_eq!(page.child_before(Some(sep)), children[i - 1].1, "child before separator {i}");
        }
        // Child ids may repeat in a damaged page that still checks: compare by position.
        assert_eq!(page.child_for(sep), *pid, "separator {i} does not lead to its child");
    }
    let again = InnerPage::build(page.low(), page.high(), page.right(), &children);
    assert_eq!(again.bytes(), page.bytes(), "a page built from what was read differs");
}

fn decode_page(bytes: &Bytes, offset: u64) {
    let img = match page::decode(bytes, Path::new("page"), offset) {
        Ok(img) => img,
        Err(e) => return assert!(e.is_corruption(), "{e}"),
    };
    let mut out = Vec::with_capacity(bytes.len());
    match &img {
        PageImage::Leaf(leaf) => {
            check_leaf(leaf);
            page::encode_leaf(leaf, &mut out, &mut |c| c.addr());
            if bytes.first() != Some(&crate::tree::leaf::KIND_LEAF_PAGE) {
                // A leaf of the first format is re-encoded in today's: the same content.
                let again = page::decode(&Bytes::from(out), Path::new("page"), 0).expect("a page we encoded");
                let PageImage::Leaf(again) = again else { panic!("a leaf re-encoded as an index node") };
                assert_eq!(leaf_content(&again), leaf_content(leaf), "re-encoding changed a leaf");
                assert_eq!(again.bounds, leaf.bounds);
                return;
            }
        }
        PageImage::Inner(inner) => {
            check_inner(inner, bytes);
            page::encode_inner(inner, &mut out);
            if bytes.first() != Some(&crate::tree::inner::KIND_INNER_PAGE) {
                // An index node of the first format is re-encoded in today's: the same content.
                let again = page::decode(&Bytes::from(out), Path::new("page"), 0).expect("a page we encoded");
                let PageImage::Inner(again) = again else { panic!("an index node re-encoded as a leaf") };
                assert_eq!(again.children(), inner.children(), "re-encoding changed an index node");
                assert_eq!(again.bounds, inner.bounds);
                return;
            }
        }
        PageImage::Delta(d) => {
            check_leaf(&d.leaf);
            let mut leaf = Vec::new();
            page::encode_leaf(&d.leaf, &mut leaf, &mut |c| c.addr());
            page::encode_delta(d.cut, &d.links, &leaf, &mut out);
        }
    }
    assert_eq!(&out[..], &bytes[..], "re-encoding a decoded page image changed its bytes");
}

/// True if `b` is a slice of `src` (or empty): decoded keys and values share the frame.
fn shares(b: &Bytes, src: &Bytes) -> bool {
    let range = src.as_ptr_range();
    b.is_empty() || (range.start <= b.as_ptr() && b.as_ptr_range().end <= range.end)
}

fn check_bounds(b: &Bounds, src: &Bytes) {
    assert!(shares(&b.low, src) && b.high.as_ref().is_none_or(|h| shares(h, src)));
}

/// Keys and versions of a leaf as plain data (timestamp, value kind and bytes or address).
#[allow(clippy::type_complexity)]
fn leaf_content(leaf: &LeafBase) -> Vec<(Bytes, Vec<(u64, u8, Bytes, u64)>)> {
    let value = |v: &Value| match v {
        Value::Tombstone => (0, Bytes::new(), 0),
        Value::Inline(b) => (1, b.clone(), 0),
        Value::Blob(c) => (2, Bytes::new(), c.addr()),
    };
    leaf.entries()
        .into_iter()
        .map(|e| {
            let vs = e
                .versions
                .iter()
                .map(|v| {
                    let (k, b, a) = value(&v.value);
                    (v.ts, k, b, a)
                })
                .collect();
            (e.key, vs)
        })
        .collect()
}

fn check_leaf(leaf: &LeafBase) {
    let entries = leaf.entries();
    assert!(entries.windows(2).all(|w| w[0].key < w[1].key), "keys out of order");
    for e in &entries {
        assert!(e.key >= leaf.bounds.low && !leaf.bounds.is_right_of(&e.key), "key outside the bounds");
        assert!(!e.versions.is_empty());
        assert!(e.versions.windows(2).all(|w| w[0].ts > w[1].ts), "versions out of order");
        for v in &e.versions {
            if let Value::Blob(c) = &v.value {
                assert!(c.addr() != 0 && c.bytes.is_none());
                assert!(c.len as usize <= crate::limits::MAX_VALUE_LEN);
            }
        }
    }
}

fn check_inner(inner: &InnerBase, src: &Bytes) {
    let children = inner.children();
    assert!(!children.is_empty());
    assert_eq!(children[0].0, inner.bounds.low, "first separator is not the low key");
    assert!(children.windows(2).all(|w| w[0].0 < w[1].0), "separators out of order");
    assert!(children.iter().all(|(sep, pid)| *pid != 0 && !inner.bounds.is_right_of(sep)));
    if src.first() == Some(&crate::tree::inner::KIND_INNER_PAGE) {
        // A page of bytes is kept as read: its bounds are slices of it.
        check_bounds(&inner.bounds, src);
        assert_eq!(inner.page.bytes(), src);
    }
}

// ---------------------------------------------------------------------------------------
// Manifest

/// The payload of one manifest record (`version u8 | field*`) through the manifest's
/// payload decoder. Asserts: the error offset lies inside the input, and a decoded list of
/// edits is encoded by `encode_record` to the same payload, a record that `replay` reads
/// back to the state the edits build.
pub fn manifest_edit(payload: &[u8]) {
    let edits = match edit::decode_payload(payload) {
        Ok(edits) => edits,
        Err(t) => return assert!(t.at <= payload.len(), "error at {} of {} bytes", t.at, payload.len()),
    };
    let rec = edit::encode_record(&edits);
    assert_eq!(&rec[8..], payload, "re-encoding decoded manifest edits changed their bytes");
    let r = edit::replay(&rec, Path::new("manifest")).expect("a record of decoded edits replays");
    assert!(!r.torn && r.valid_len == rec.len() as u64);
    let mut state = ManifestState::new();
    for e in &edits {
        state.apply(e);
    }
    assert_eq!(r.state, state);
}

/// A whole manifest file (a snapshot record, then edit records) through [`edit::replay`].
/// Asserts: the intact prefix lies inside the file and replays alone to the same state
/// without a torn tail (what `Manifest::open` does after cutting the tail), and the
/// snapshot record `Manifest` would write for that state replays to it again.
pub fn manifest_snapshot(data: &[u8]) {
    as_given_and_fixed(data, fix_manifest_crcs, |data| {
        let path = Path::new("MANIFEST");
        let r = match edit::replay(data, path) {
            Ok(r) => r,
            Err(e) => return assert!(e.is_corruption(), "{e}"),
        };
        let valid = usize::try_from(r.valid_len).unwrap_or(usize::MAX);
        assert!(valid <= data.len());
        assert_eq!(r.torn, valid != data.len());
        let cut = edit::replay(&data[..valid], path).expect("the intact prefix replays");
        assert!(!cut.torn && cut.valid_len == r.valid_len);
        assert_eq!(cut.state, r.state);
        let snapshot: Vec<Edit> = r.state.snapshot();
        let rec = edit::encode_record(&snapshot);
        let again = edit::replay(&rec, path).expect("a snapshot record replays");
        assert!(!again.torn && again.valid_len == rec.len() as u64);
        assert_eq!(again.state, r.state, "the snapshot record does not rebuild the state");
    });
}

/// Recomputes the CRC of every record of a manifest file, up to the first that does not fit.
fn fix_manifest_crcs(b: &mut [u8]) {
    let mut pos = 0usize;
    while b.len() - pos >= 8 {
        let len = le_u32(b, pos) as usize;
        if len > b.len() - pos - 8 {
            break;
        }
        let crc = crc32c::crc32c(&b[pos + 8..pos + 8 + len]);
        put_crc(b, pos + 4, crc);
        pos += 8 + len;
    }
}

/// The contents of `CURRENT` through the manifest's parser. Asserts: what is accepted is
/// exactly what the engine writes for that manifest number (name and checksum), byte for
/// byte.
pub fn current(data: &[u8]) {
    match parse_current(data, Path::new("CURRENT")) {
        Ok(number) => {
            let written = current_contents(number);
            assert_eq!(written.as_bytes(), data, "CURRENT accepted as manifest {number}");
        }
        Err(e) => assert!(e.is_corruption(), "{e}"),
    }
}

/// `life_cycle`'s model of the database: the acknowledged contents.
type LifeModel = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// The one write whose outcome a halt left unknown: its key and new value (`None` for a
/// delete).
type Unknown = Option<(Vec<u8>, Option<Vec<u8>>)>;

/// Where `life_cycle` keeps its database on the simulated disk.
const LIFE_DIR: &str = "/fuzz/db";

/// Every pair of `b`, read by a full scan.
async fn life_contents(b: &crate::Bucket) -> LifeModel {
    use futures::TryStreamExt;
    let it = b.iter().await.expect("scan after recovery");
    it.map_ok(|(k, v)| (k.to_vec(), v.to_vec())).try_collect().await.expect("scan after recovery")
}

/// Reopens after a crash and checks the state against `model` (plus or minus `maybe`).
async fn life_recover(
    opts: &crate::Options,
    model: &mut LifeModel,
    maybe: &mut Unknown,
) -> (crate::Db, crate::Bucket) {
    let db = crate::Db::open(LIFE_DIR, opts.clone()).await.expect("recovery after a crash");
    let b = db.bucket("f").await.expect("bucket after recovery");
    let found = life_contents(&b).await;
    let mut with = model.clone();
    if let Some((k, v)) = maybe.take() {
        match v {
            Some(v) => with.insert(k, v),
            None => with.remove(&k),
        };
    }
    assert!(
        found == *model || found == with,
        "recovered state is neither the acknowledged one nor it plus the unknown commit"
    );
    *model = found;
    (db, b)
}

/// A put (or, for `None`, a delete) of `key` as one `Sync` commit: acknowledged, it joins
/// `model`; failed, it must follow a halt, and the first such write becomes `maybe`.
async fn life_write(
    b: &crate::Bucket,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    halted: bool,
    model: &mut LifeModel,
    maybe: &mut Unknown,
) {
    let commit = async {
        let mut tx = b.begin()?;
        match &value {
            Some(v) => tx.put(&key, v)?,
            None => tx.delete(&key)?,
        }
        tx.commit_with(crate::Durability::Sync).await
    };
    match commit.await {
        Ok(_) => {
            match value {
                Some(v) => model.insert(key, v),
                None => model.remove(&key),
            };
        }
        Err(e) => {
            assert!(halted, "a commit failed with no fault armed: {e}");
            if maybe.is_none() {
                *maybe = Some((key, value));
            }
        }
    }
}

/// The life cycle of a database on the simulated disk, scripted by the input: puts and
/// deletes (each a `Sync` commit), point reads, checkpoints, a halt of the disk at a chosen
/// operation, and crashes (unsynced writes applied, dropped, torn or garbled) followed by
/// recovery. Asserts, after every recovery: every acknowledged commit is there, nothing
/// else is, except the one commit whose outcome the halt left unknown (present or absent
/// as a whole); a read before a halt returns the model's value; an operation fails only
/// after a halt; and at the end the offline check of the crashed state finds no problem.
pub fn life_cycle(data: &[u8]) {
    use crate::io::sim::SimDisk;
    use crate::{Db, Options};

    let seed = data.iter().take(8).fold(0u64, |s, &b| s.rotate_left(8) ^ u64::from(b));
    let disk = SimDisk::new(seed);
    let opts = Options {
        sim: Some(disk.clone()),
        cache_capacity: crate::limits::MIN_CACHE_CAPACITY,
        inline_limit: 64,
        checkpoint_bytes: 4096,
        wal_segment_bytes: 64 * 1024,
        background_checkpoints: false,
        checkpoint_interval: None,
        ..Options::default()
    };
    // On a thread of its own: a caller inside a tokio task (the corpus replay test) would
    // otherwise run this executor on tokio's cooperative budget, which only a return to
    // the runtime refills, and tokio's locks would answer `Pending` forever.
    let run = || {
        futures::executor::block_on(async {
            let (mut model, mut maybe) = (LifeModel::new(), None);
            let db = Db::open(LIFE_DIR, opts.clone()).await.expect("create");
            let b = db.bucket("f").await.expect("bucket");
            let (mut db, mut b) = (db, b);
            let mut halted = false;
            for op in data.get(8..).unwrap_or_default().chunks(3).take(128) {
                let (code, x, y) = (op[0], op.get(1).copied().unwrap_or(0), op.get(2).copied().unwrap_or(0));
                let key = format!("k{}", x % 16).into_bytes();
                // Debug aid: `RINGKV_FUZZ_TRACE=1` prints the script as it runs.
                if std::env::var_os("RINGKV_FUZZ_TRACE").is_some() {
                    eprintln!("life_cycle: op {} {x} {y} (disk ops {})", code % 8, disk.ops());
                }
                match code % 8 {
                    0..=3 => {
                        let value = (code % 8 != 3).then(|| vec![y; (x as usize * 7 + y as usize) % 200]);
                        life_write(&b, key, value, halted, &mut model, &mut maybe).await;
                    }
                    4 => {
                        if let Err(e) = db.checkpoint().await {
                            assert!(halted, "a checkpoint failed with no fault armed: {e}");
                        }
                    }
                    5 if !halted => {
                        disk.halt_after(u64::from(x % 32) + 1);
                        halted = true;
                    }
                    6 => {
                        drop((b, db));
                        disk.crash();
                        halted = false;
                        (db, b) = life_recover(&opts, &mut model, &mut maybe).await;
                    }
                    _ => match b.get(&key).await {
                        Ok(got) => {
                            if !halted {
                                assert_eq!(
                                    got.as_deref(),
                                    model.get(&key).map(std::vec::Vec::as_slice),
                                    "read before a halt"
                                );
                            }
                        }
                        Err(e) => assert!(halted, "a read failed with no fault armed: {e}"),
                    },
                }
            }
            drop((b, db));
            disk.crash();
            let report = Db::check(LIFE_DIR, &opts).await.expect("check runs");
            assert!(report.is_ok(), "the offline check of a crashed state found problems:\n{report}");
            let (db, _) = life_recover(&opts, &mut model, &mut maybe).await;
            db.close().await.expect("close");
        });
    };
    std::thread::scope(|scope| {
        if let Err(panic) = scope.spawn(run).join() {
            std::panic::resume_unwind(panic);
        }
    });
}

#[cfg(test)]
// Unit tests build small images and patterns: their casts cannot truncate or are meant to.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]
mod tests {
    use super::*;

    /// The tables and footer written from `docs/format.md` are the ones `FileBuilder` writes.
    #[test]
    fn documented_encoders_match_file_builder() {
        let mut b = FileBuilder::new(FileKind::Blob);
        for (addr, frame) in [(3u64, &b"abc"[..]), (4, b"de"), (9, b""), (12, b"fghij")] {
            b.add(addr, Bytes::copy_from_slice(frame));
        }
        let (chunks, ranges, relocs) = b.finish();
        let file: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let f = data_file::parse_footer(&file[file.len() - FOOTER_LEN..], Path::new("f"), file.len() as u64)
            .unwrap();
        let mut tail = encode_ranges(&ranges);
        tail.extend(encode_relocs(&relocs));
        tail.extend(encode_footer(&f));
        assert_eq!(&file[f.ranges_offset as usize..], &tail[..]);
        blob_frame(&file);
        data_frame(&file);
    }

    /// Every target accepts the empty input and a few bytes of nothing.
    #[test]
    fn targets_take_empty_and_zero_input() {
        for input in [&[][..], &[0u8; 1][..], &[0u8; 64][..], &[0xFFu8; 64][..]] {
            wal_record(input);
            wal_segment_header(input);
            data_frame(input);
            blob_frame(input);
            footer(input);
            address_ranges(input);
            relocation_table(input);
            page_image(input);
            manifest_edit(input);
            manifest_snapshot(input);
            current(input);
        }
    }
}
