//! Damaged files: a flipped byte in a data-file frame, in its tables or footer, in a blob
//! file, a truncated data file, and a damaged WAL record. Reads touching damaged bytes
//! must fail with `Error::Corruption` naming the damaged file, never return wrong data and
//! never panic; everything else must still read correctly.
//!
//! The files are parsed here independently of the engine, following the layouts
//! documented in `src/store/data_file.rs`, `src/tree/page.rs` and `src/wal/record.rs`.
//!
//! The backend comes from `Options::default()` (`IoBackend::Auto`), so
//! `RINGKV_IO_BACKEND=uring|threadpool` selects it for the whole file.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

mod common;

use common::{copy_dir, files_with_prefix, flip, le_u32, le_u64, wal_segments};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use ringkv::{Db, Error, Options};

const FOOTER_LEN: usize = 56;
const RELOC_ENTRY_LEN: usize = 24;
const RANGE_LEN: usize = 16;
const WAL_HEADER_LEN: usize = 16;
const WAL_FRAME_LEN: usize = 8;

fn opts() -> Options {
    // Only the test's own checkpoints (and close) write data files, so the layout on disk
    // is exactly what the test made.
    Options::default().background_checkpoints(false)
}

#[derive(Debug, Clone, Copy)]
struct Reloc {
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct ParsedFile {
    kind: u32,
    ranges_offset: u64,
    reloc_offset: u64,
    relocs: Vec<Reloc>,
}

/// Parses a data or blob file (footer, tables) and checks every CRC, so that the test's
/// reading of the format is itself verified.
fn parse_file(bytes: &[u8]) -> ParsedFile {
    assert!(bytes.len() >= FOOTER_LEN);
    let f = &bytes[bytes.len() - FOOTER_LEN..];
    assert_eq!(&f[0..8], b"RKVFILE1", "magic");
    assert_eq!(le_u32(f, 8), 1, "format version");
    assert_eq!(crc32c::crc32c(&f[..52]), le_u32(f, 52), "footer crc");
    let kind = le_u32(f, 12);
    let ranges_offset = le_u64(f, 16);
    let ranges_count = le_u32(f, 24) as usize;
    let reloc_offset = le_u64(f, 32);
    let reloc_count = le_u32(f, 40) as usize;
    assert_eq!(ranges_offset as usize + ranges_count * RANGE_LEN, reloc_offset as usize);
    assert_eq!(reloc_offset as usize + reloc_count * RELOC_ENTRY_LEN, bytes.len() - FOOTER_LEN);
    let rt = &bytes[ranges_offset as usize..reloc_offset as usize];
    assert_eq!(crc32c::crc32c(rt), le_u32(f, 28), "ranges crc");
    let xt = &bytes[reloc_offset as usize..bytes.len() - FOOTER_LEN];
    assert_eq!(crc32c::crc32c(xt), le_u32(f, 44), "relocation crc");
    let relocs: Vec<Reloc> = (0..reloc_count)
        .map(|i| {
            let e = &xt[i * RELOC_ENTRY_LEN..(i + 1) * RELOC_ENTRY_LEN];
            let r = Reloc { offset: le_u64(e, 8), len: le_u32(e, 16) };
            let frame = &bytes[r.offset as usize..(r.offset + u64::from(r.len)) as usize];
            assert_eq!(crc32c::crc32c(frame), le_u32(e, 20), "frame crc of entry {i}");
            r
        })
        .collect();
    ParsedFile { kind, ranges_offset, reloc_offset, relocs }
}

/// A cursor over a page image.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cur<'_> {
    fn u8(&mut self) -> u8 {
        self.at += 1;
        self.b[self.at - 1]
    }
    fn u32(&mut self) -> u32 {
        self.at += 4;
        le_u32(self.b, self.at - 4)
    }
    fn u64(&mut self) -> u64 {
        self.at += 8;
        le_u64(self.b, self.at - 8)
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        self.at += n;
        self.b[self.at - n..self.at].to_vec()
    }
}

/// What a page image is: a leaf with its keys, or an index node.
#[derive(Debug)]
enum Page {
    Leaf(Vec<Vec<u8>>),
    Inner,
}

/// Decodes a page image (layout in `src/tree/page.rs`) far enough to list a leaf's keys.
fn parse_page(b: &[u8]) -> Page {
    if b[0] == 3 {
        return parse_leaf_page(b);
    }
    if b[0] == 4 {
        // An index page (src/tree/inner.rs): its header says so; nothing else is needed.
        assert_eq!(le_u32(b, 28) as usize, b.len(), "index page length");
        return Page::Inner;
    }
    let mut c = Cur { b, at: 0 };
    let kind = c.u8();
    let _low = c.bytes();
    if c.u8() == 1 {
        let _high = c.bytes();
    }
    let _right = c.u64();
    match kind {
        1 => {
            let n = c.u32();
            let mut keys = Vec::new();
            for _ in 0..n {
                let key = c.bytes();
                let nv = c.u32();
                let mut live = false;
                for v in 0..nv {
                    let _ts = c.u64();
                    match c.u8() {
                        0 => {}
                        1 => {
                            live |= v == 0;
                            let _ = c.bytes();
                        }
                        2 => {
                            live |= v == 0;
                            c.u64();
                            c.u32();
                        }
                        k => panic!("version kind {k}"),
                    }
                }
                if live {
                    keys.push(key);
                }
            }
            assert_eq!(c.at, b.len(), "leaf image fully consumed");
            Page::Leaf(keys)
        }
        2 => Page::Inner,
        k => panic!("page kind {k}"),
    }
}

/// Decodes a leaf page (kind 3, layout in `docs/format.md`) far enough to list its live
/// keys: each slot's entry holds the key after the fences' common prefix and the newest
/// version's kind.
fn parse_leaf_page(b: &[u8]) -> Page {
    let le16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let count = le_u32(b, 4) as usize;
    assert_eq!(le_u32(b, 28) as usize, b.len(), "leaf page length");
    let (prefix, fences) = (le16(16), 32 + 8 * count);
    let prefix = &b[fences..fences + prefix];
    let mut keys = Vec::new();
    for i in 0..count {
        let off = le_u32(b, 32 + 8 * i) as usize;
        let (suffix_len, vkind) = (le16(off), b[off + 2]);
        if matches!(vkind, 1 | 2) {
            let mut key = prefix.to_vec();
            key.extend_from_slice(&b[off + 24..off + 24 + suffix_len]);
            keys.push(key);
        }
    }
    Page::Leaf(keys)
}

fn only_file(dir: &Path, prefix: &str) -> PathBuf {
    let v = files_with_prefix(dir, prefix);
    assert_eq!(v.len(), 1, "expected exactly one {prefix}* file in {}: {v:?}", dir.display());
    v.into_iter().next().unwrap()
}

/// The database's only WAL segment.
fn only_wal_segment(dir: &Path) -> PathBuf {
    let v = wal_segments(dir);
    assert_eq!(v.len(), 1, "expected exactly one WAL segment in {}: {v:?}", dir.display());
    v.into_iter().next().unwrap()
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("value of key{i:05}:").into_bytes();
    while v.len() < len {
        v.push(b'a' + (v.len() * 7 + i) as u8 % 26);
    }
    v
}

/// Asserts `r` is a corruption naming `file` (at `offset`, if given).
fn assert_corruption<T: std::fmt::Debug>(r: ringkv::Result<T>, file: &Path, offset: Option<u64>, what: &str) {
    match r {
        Err(Error::Corruption { file: f, offset: o, what: w }) => {
            assert_eq!(f, file, "{what}: the corruption names the wrong file ({w})");
            assert_eq!(f.file_name(), file.file_name(), "{what}");
            if let Some(off) = offset {
                assert_eq!(o, off, "{what}: the corruption names the wrong offset ({w})");
            }
        }
        other => panic!("{what}: expected Corruption in {}, got {other:?}", file.display()),
    }
}

/// `None` if `r` is a corruption naming `file`, else a description of what it is.
fn corruption_mismatch<T: std::fmt::Debug>(r: ringkv::Result<T>, file: &Path, what: &str) -> Option<String> {
    match r {
        Err(Error::Corruption { file: f, .. }) if f == file => None,
        other => Some(format!("{what}: expected Corruption in {}, got {other:?}", file.display())),
    }
}

const N_KEYS: usize = 1500;
const VALUE_LEN: usize = 100;

/// A database of `N_KEYS` keys checkpointed into one data file, closed.
async fn build_template(dir: &Path) {
    let db = Db::open(dir, opts()).await.unwrap();
    let b = db.bucket("b").await.unwrap();
    let mut t = b.begin().unwrap();
    for i in 0..N_KEYS {
        t.put(key(i), value(i, VALUE_LEN)).unwrap();
    }
    t.commit().await.unwrap();
    let s = db.checkpoint().await.unwrap();
    assert!(s.pages > 4, "expected several pages, got {s:?}");
    db.close().await.unwrap();
}

/// Frames of the one data file of `dir`: (reloc entry, page).
fn data_frames(dir: &Path) -> (PathBuf, ParsedFile, Vec<(Reloc, Page)>) {
    let path = only_file(dir, "data-");
    let bytes = fs::read(&path).unwrap();
    let parsed = parse_file(&bytes);
    assert_eq!(parsed.kind, 1, "data file kind");
    let frames = parsed
        .relocs
        .iter()
        .map(|r| (*r, parse_page(&bytes[r.offset as usize..(r.offset + u64::from(r.len)) as usize])))
        .collect();
    (path, parsed, frames)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_each_frame_of_a_data_file() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    build_template(&template).await;
    let (_, _, frames) = data_frames(&template);
    // Every key is in exactly one leaf.
    let mut owner: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (i, (_, p)) in frames.iter().enumerate() {
        if let Page::Leaf(keys) = p {
            for k in keys {
                assert!(owner.insert(k.clone(), i).is_none(), "key {k:?} in two leaves");
            }
        }
    }
    assert_eq!(owner.len(), N_KEYS, "every key is in a leaf of the data file");
    let leaves = frames.iter().filter(|(_, p)| matches!(p, Page::Leaf(_))).count();
    let inners = frames.len() - leaves;
    eprintln!("data file: {} frames ({leaves} leaves, {inners} index nodes)", frames.len());
    assert!(leaves >= 4);

    for (fi, (reloc, page)) in frames.iter().enumerate() {
        for (pos_name, pos) in
            [("first byte", 0), ("middle", u64::from(reloc.len) / 2), ("last byte", u64::from(reloc.len) - 1)]
        {
            // The three positions of every frame would be slow; the middle of every frame
            // and both ends of a few.
            if pos_name != "middle" && fi % 4 != 0 {
                continue;
            }
            let what = format!("frame {fi} ({page:?}), {pos_name}", page = page_kind(page));
            let dir = base.path().join(format!("run-{fi}-{pos}"));
            copy_dir(&template, &dir);
            let data = only_file(&dir, "data-");
            flip(&data, reloc.offset + pos);

            let db = Db::open(&dir, opts()).await.unwrap();
            let b = db.existing_bucket("b").unwrap();
            let bad: BTreeSet<Vec<u8>> = match page {
                Page::Leaf(keys) => keys.iter().cloned().collect(),
                // Every lookup goes through the index nodes (a tree this size has one level).
                Page::Inner => owner.keys().cloned().collect(),
            };
            for i in 0..N_KEYS {
                let k = key(i);
                let got = b.get(&k).await;
                if bad.contains(&k) {
                    assert_corruption(got, &data, Some(reloc.offset), &format!("{what}: get {i}"));
                } else {
                    let got = got.unwrap_or_else(|e| panic!("{what}: get {i} outside the damage: {e}"));
                    assert_eq!(got.as_deref(), Some(value(i, VALUE_LEN).as_slice()), "{what}: key {i}");
                }
            }
            // The damage is reported again on the next read, not cached away.
            let first_bad = bad.iter().next().unwrap().clone();
            assert_corruption(
                b.get(&first_bad).await,
                &data,
                Some(reloc.offset),
                &format!("{what}: second get"),
            );
            // A full scan yields correct pairs up to the damaged page, then the corruption.
            let mut it = b.iter().await.unwrap();
            let mut n = 0;
            let scan_err = loop {
                match it.try_next().await {
                    Ok(Some((k, v))) => {
                        assert_eq!(k.as_ref(), key(n).as_slice(), "{what}: scan order");
                        assert_eq!(v.as_ref(), value(n, VALUE_LEN).as_slice(), "{what}: scan value");
                        assert!(!bad.contains(k.as_ref()), "{what}: scan returned a damaged key");
                        n += 1;
                    }
                    Ok(None) => panic!("{what}: the scan ended without reporting the damage"),
                    Err(e) => break e,
                }
            };
            assert_corruption::<()>(Err(scan_err), &data, Some(reloc.offset), &format!("{what}: scan"));
            // A write to an undamaged leaf still works and is durable.
            if let Page::Leaf(_) = page {
                let good = owner.iter().find(|(_, &o)| o != fi).map(|(k, _)| k.clone()).unwrap();
                b.put(&good, b"rewritten").await.unwrap();
                assert_eq!(b.get(&good).await.unwrap().as_deref(), Some(&b"rewritten"[..]));
                // A write into the damaged leaf must not succeed silently over lost data.
                let w = b.put(&first_bad, b"over the damage").await;
                assert!(
                    matches!(w, Err(Error::Corruption { .. })),
                    "{what}: write into the damaged leaf: {w:?}"
                );
            }
            let closed = db.close().await;
            if let Err(e) = &closed {
                eprintln!("{what}: close: {e}");
            }
        }
    }
}

fn page_kind(p: &Page) -> &'static str {
    match p {
        Page::Leaf(_) => "leaf",
        Page::Inner => "index node",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_footer_and_tables() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    build_template(&template).await;
    let (tpath, parsed, _) = data_frames(&template);
    let len = fs::metadata(&tpath).unwrap().len();
    let footer = len - FOOTER_LEN as u64;
    let cases: Vec<(&str, u64)> = vec![
        ("footer magic", footer),
        ("footer version", footer + 8),
        ("footer kind", footer + 12),
        ("footer ranges offset", footer + 16),
        ("footer relocation count", footer + 40),
        ("footer reserved", footer + 48),
        ("footer crc", footer + 52),
        ("address ranges", parsed.ranges_offset),
        ("relocation table, first entry addr", parsed.reloc_offset),
        ("relocation table, an offset", parsed.reloc_offset + RELOC_ENTRY_LEN as u64 + 9),
        ("relocation table, last crc", footer - 1),
    ];
    for (i, (what, at)) in cases.into_iter().enumerate() {
        let dir = base.path().join(format!("run-{i}"));
        copy_dir(&template, &dir);
        let data = only_file(&dir, "data-");
        flip(&data, at);
        let db = Db::open(&dir, opts()).await.unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let b = db.existing_bucket("b").unwrap();
        // The first read of any key needs the tables: corruption, then again.
        assert_corruption(b.get(key(0)).await, &data, None, &format!("{what}: first get"));
        assert_corruption(b.get(key(N_KEYS - 1)).await, &data, None, &format!("{what}: second get"));
        let scan: ringkv::Result<Vec<(Bytes, Bytes)>> = b.iter().await.unwrap().try_collect().await;
        assert_corruption(scan, &data, None, &format!("{what}: scan"));
        let _ = db.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_extended_data_file() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    build_template(&template).await;
    let (tpath, parsed, frames) = data_frames(&template);
    let len = fs::metadata(&tpath).unwrap().len();
    let mid_frame = frames[frames.len() / 2].0;
    let cases: Vec<(&str, u64)> = vec![
        ("cut to zero", 0),
        ("cut inside the frames", mid_frame.offset + 3),
        ("cut at the tables", parsed.ranges_offset),
        ("cut inside the footer", len - 10),
        ("one byte short", len - 1),
    ];
    // Bytes appended after the footer are not part of the file the manifest describes:
    // every read stays correct.
    let dir = base.path().join("extended");
    copy_dir(&template, &dir);
    let data = only_file(&dir, "data-");
    let mut bytes = fs::read(&data).unwrap();
    bytes.extend_from_slice(&[0xa5; 1000]);
    fs::write(&data, bytes).unwrap();
    let db = Db::open(&dir, opts()).await.unwrap();
    let b = db.existing_bucket("b").unwrap();
    for i in (0..N_KEYS).step_by(37) {
        assert_eq!(b.get(key(i)).await.unwrap().as_deref(), Some(value(i, VALUE_LEN).as_slice()));
    }
    db.close().await.unwrap();

    // Every case runs; the failures are listed together.
    let mut failures = Vec::new();
    for (i, (what, new_len)) in cases.into_iter().enumerate() {
        let dir = base.path().join(format!("run-{i}"));
        copy_dir(&template, &dir);
        let data = only_file(&dir, "data-");
        fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(new_len).unwrap();
        let db = match Db::open(&dir, opts()).await {
            Ok(db) => db,
            Err(e) => {
                // Refusing to open is acceptable only as a corruption naming the file.
                failures.extend(corruption_mismatch::<()>(Err(e), &data, &format!("{what}: open")));
                continue;
            }
        };
        let b = db.existing_bucket("b").unwrap();
        failures.extend(corruption_mismatch(b.get(key(0)).await, &data, &format!("{what}: get")));
        failures.extend(corruption_mismatch(
            b.get(key(N_KEYS / 2)).await,
            &data,
            &format!("{what}: get again"),
        ));
        let scan: ringkv::Result<Vec<(Bytes, Bytes)>> = b.iter().await.unwrap().try_collect().await;
        failures.extend(corruption_mismatch(scan, &data, &format!("{what}: scan")));
        let _ = db.close().await;
    }

    // Cut while the database is open and the file's tables are already loaded: the frame
    // reads past the new end.
    {
        let what = "cut while open";
        let dir = base.path().join("run-open");
        copy_dir(&template, &dir);
        let data = only_file(&dir, "data-");
        // Unwarmed: the page of the last key stays on disk until the get reads it.
        let db = Db::open(&dir, opts().warm_cache(false)).await.unwrap();
        let b = db.existing_bucket("b").unwrap();
        assert_eq!(b.get(key(0)).await.unwrap().as_deref(), Some(value(0, VALUE_LEN).as_slice()));
        fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(mid_frame.offset + 3).unwrap();
        failures.extend(corruption_mismatch(b.get(key(N_KEYS - 1)).await, &data, &format!("{what}: get")));
        let _ = db.close().await;
    }
    assert!(failures.is_empty(), "truncated data file:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_blob_value() {
    const N: usize = 40;
    const INLINE_LIMIT: usize = 64;
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    let o = opts().inline_limit(INLINE_LIMIT);
    // Even keys get blob values (300..700 bytes), odd keys inline ones (20 bytes).
    let val = |i: usize| if i.is_multiple_of(2) { value(i, 300 + i * 10) } else { value(i, 20) };
    {
        let db = Db::open(&template, o.clone()).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        for i in 0..N {
            b.put(key(i), val(i)).await.unwrap();
        }
        let s = db.checkpoint().await.unwrap();
        assert_eq!(s.blobs, N / 2, "{s:?}");
        db.close().await.unwrap();
    }
    let blob = only_file(&template, "blob-");
    let bytes = fs::read(&blob).unwrap();
    let parsed = parse_file(&bytes);
    assert_eq!(parsed.kind, 2, "blob file kind");
    assert_eq!(parsed.relocs.len(), N / 2);
    // Which frame is which key's value: the value bytes say so.
    let mut frame_of: BTreeMap<usize, Reloc> = BTreeMap::new();
    for r in &parsed.relocs {
        let frame = &bytes[r.offset as usize..(r.offset + u64::from(r.len)) as usize];
        let i = (0..N).find(|&i| frame == val(i).as_slice()).expect("a blob frame is a value");
        frame_of.insert(i, *r);
    }
    for (&victim, r) in frame_of.iter().filter(|(i, _)| *i % 8 == 0 || **i == N - 2) {
        let what = format!("blob of key {victim}");
        let dir = base.path().join(format!("run-{victim}"));
        copy_dir(&template, &dir);
        let blob = only_file(&dir, "blob-");
        flip(&blob, r.offset + u64::from(r.len) / 2);
        let db = Db::open(&dir, o.clone()).await.unwrap();
        let b = db.existing_bucket("b").unwrap();
        for i in 0..N {
            let got = b.get(key(i)).await;
            if i == victim {
                assert_corruption(got, &blob, Some(r.offset), &what);
            } else {
                assert_eq!(got.unwrap().as_deref(), Some(val(i).as_slice()), "{what}: key {i}");
            }
        }
        // A scan yields the keys before the damaged value, then the corruption.
        let mut it = b.iter().await.unwrap();
        for i in 0..victim {
            let (k, v) = it.try_next().await.unwrap().unwrap();
            assert_eq!((k.as_ref(), v.as_ref()), (key(i).as_slice(), val(i).as_slice()), "{what}: scan");
        }
        assert_corruption(it.try_next().await, &blob, Some(r.offset), &format!("{what}: scan"));
        // Overwriting the damaged value replaces it.
        b.put(key(victim), b"fresh").await.unwrap();
        assert_eq!(b.get(key(victim)).await.unwrap().as_deref(), Some(&b"fresh"[..]));
        db.close().await.unwrap();
        let db = Db::open(&dir, o.clone()).await.unwrap();
        let b = db.existing_bucket("b").unwrap();
        assert_eq!(b.get(key(victim)).await.unwrap().as_deref(), Some(&b"fresh"[..]), "{what}: after reopen");
        db.close().await.unwrap();
    }
}

/// Record boundaries of a WAL segment: (offset, total length, ts).
fn wal_records(seg: &[u8]) -> Vec<(usize, usize, u64)> {
    assert_eq!(&seg[..8], b"RKVWAL01", "segment magic");
    let mut out = Vec::new();
    let mut at = WAL_HEADER_LEN;
    while at < seg.len() {
        let len = le_u32(seg, at) as usize;
        if len == 0 {
            // The preallocated tail: zeros to the end of the segment.
            assert!(seg[at..].iter().all(|&b| b == 0), "a zero frame before the end at {at}");
            return out;
        }
        let crc = le_u32(seg, at + 4);
        let payload = &seg[at + WAL_FRAME_LEN..at + WAL_FRAME_LEN + len];
        assert_eq!(crc32c::crc32c(payload), crc, "record crc at {at}");
        let ts = le_u64(payload, 0);
        // A batch mark (ts 0) precedes every batch: it must name its own offset.
        if ts == 0 {
            assert_eq!(len, 24, "batch mark length at {at}");
            assert_eq!(le_u64(payload, 8), at as u64, "batch mark offset at {at}");
        } else {
            out.push((at, WAL_FRAME_LEN + len, ts));
        }
        at += WAL_FRAME_LEN + len;
    }
    assert_eq!(at, seg.len());
    out
}

/// Writes keys `0..n` with one Sync commit each (key `i` of `len` bytes), then drops the
/// database without closing it, so the commits live only in the WAL.
async fn wal_only_db(dir: &Path, o: &Options, checkpoint_after: Option<usize>, n: usize, len: usize) {
    let db = Db::open(dir, o.clone()).await.unwrap();
    let b = db.bucket("b").await.unwrap();
    for i in 0..n {
        b.put(key(i), value(i, len)).await.unwrap();
        if checkpoint_after == Some(i) {
            db.checkpoint().await.unwrap();
        }
    }
    drop(b);
    drop(db);
}

async fn surviving_keys(dir: &Path, o: &Options) -> (Db, Vec<usize>) {
    let db = Db::open(dir, o.clone()).await.unwrap();
    let b = db.existing_bucket("b").unwrap();
    let pairs: Vec<(Bytes, Bytes)> = b.iter().await.unwrap().try_collect().await.unwrap();
    let ids = pairs
        .iter()
        .map(|(k, v)| {
            let i: usize = std::str::from_utf8(&k[3..]).unwrap().parse().unwrap();
            assert!(v.starts_with(format!("value of key{i:05}:").as_bytes()), "value of key {i}");
            i
        })
        .collect();
    (db, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_wal_record_is_corruption_unless_it_is_the_last() {
    const N: usize = 10;
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    wal_only_db(&template, &opts(), None, N, 50).await;
    let segs = wal_segments(&template);
    assert_eq!(segs.len(), 1, "{segs:?}");
    let seg_bytes = fs::read(&segs[0]).unwrap();
    let recs = wal_records(&seg_bytes);
    assert_eq!(recs.len(), N, "one record per commit");
    assert!(recs.windows(2).all(|w| w[0].2 < w[1].2), "timestamps increase");

    // Unchanged: every key is recovered.
    {
        let dir = base.path().join("intact");
        copy_dir(&template, &dir);
        let (db, ids) = surviving_keys(&dir, &opts()).await;
        assert_eq!(ids, (0..N).collect::<Vec<_>>());
        db.close().await.unwrap();
    }
    let cases: Vec<(String, usize, usize)> = [N - 1, N / 2, 0]
        .into_iter()
        .flat_map(|r| {
            let (off, len, _) = recs[r];
            [
                (format!("record {r}: payload middle"), r, off + WAL_FRAME_LEN + (len - WAL_FRAME_LEN) / 2),
                (format!("record {r}: length field"), r, off + 1),
                (format!("record {r}: crc field"), r, off + 5),
                (format!("record {r}: last byte"), r, off + len - 1),
            ]
        })
        .collect();
    for (ci, (what, victim, at)) in cases.into_iter().enumerate() {
        let dir = base.path().join(format!("run-{ci}"));
        copy_dir(&template, &dir);
        let seg = only_wal_segment(&dir);
        flip(&seg, at as u64);
        if victim + 1 < N {
            // A later batch was written after this record was synced (its mark says so):
            // the damage is not a torn tail, and cutting would drop acknowledged commits.
            match Db::open(&dir, opts()).await {
                Err(Error::Corruption { file, offset, what: w }) => {
                    assert_eq!(file, seg, "{what}: ({w})");
                    assert_eq!(offset, recs[victim].0 as u64, "{what}: the offset of the record ({w})");
                }
                Err(e) => panic!("{what}: expected Corruption, got {e:?}"),
                Ok(_) => panic!("{what}: opened over a damaged synced record"),
            }
            continue;
        }
        // The last record: indistinguishable from a torn append, so it is cut.
        let (db, ids) = surviving_keys(&dir, &opts()).await;
        assert_eq!(ids, (0..victim).collect::<Vec<_>>(), "{what}: the records before the damage survive");
        // The cut is permanent: new commits follow the kept records and survive a crash.
        let b = db.existing_bucket("b").unwrap();
        b.put(key(100), value(100, 10)).await.unwrap();
        drop(b);
        drop(db);
        let (db, ids) = surviving_keys(&dir, &opts()).await;
        let mut want: Vec<usize> = (0..victim).collect();
        want.push(100);
        assert_eq!(ids, want, "{what}: after a second recovery");
        db.close().await.unwrap();
    }

    // A torn append (a partial record after the last one) loses nothing acknowledged.
    let dir = base.path().join("torn-append");
    copy_dir(&template, &dir);
    let seg = only_wal_segment(&dir);
    let mut bytes = fs::read(&seg).unwrap();
    let (off, len, _) = recs[N - 1];
    bytes.extend_from_slice(&seg_bytes[off..off + len / 2]);
    fs::write(&seg, bytes).unwrap();
    let (db, ids) = surviving_keys(&dir, &opts()).await;
    assert_eq!(ids, (0..N).collect::<Vec<_>>());
    db.close().await.unwrap();
}

fn dir_listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.metadata().unwrap().len())
        })
        .collect();
    v.sort();
    v
}

/// The WAL spans several segments and a checkpoint moved the frontier.
/// - A damaged record in a segment before the last cannot be a torn tail (a segment is
///   created only after the previous one is complete and synced): open fails with a
///   corruption naming the segment and the record's offset, and changes nothing on disk.
/// - A damaged record in the last segment is the torn tail: it and the later records of
///   that segment are cut; the checkpointed keys and every earlier record survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_wal_record_with_several_segments() {
    const N: usize = 80;
    const LEN: usize = 3000;
    let o = opts().wal_segment_bytes(64 * 1024);
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    let ckpt_after = 9;
    wal_only_db(&template, &o, Some(ckpt_after), N, LEN).await;
    let segs = wal_segments(&template);
    assert!(segs.len() >= 3, "expected several WAL segments: {segs:?}");
    // Every record with its segment and key: records are in commit order, one per key, but
    // segments holding only checkpointed records may have been removed.
    let mut all: Vec<(PathBuf, usize, usize)> = Vec::new();
    for s in &segs {
        for (off, len, _) in wal_records(&fs::read(s).unwrap()) {
            all.push((s.clone(), off, len));
        }
    }
    let first_key = N - all.len();
    assert!(first_key <= ckpt_after + 1, "records of uncheckpointed keys are missing");
    let pick = |seg: &PathBuf, nth_above: usize| -> (usize, usize, usize) {
        let (i, (_, off, len)) = all
            .iter()
            .enumerate()
            .filter(|(i, r)| &r.0 == seg && first_key + i > ckpt_after)
            .nth(nth_above)
            .unwrap_or_else(|| panic!("no record in {}", seg.display()));
        (first_key + i, *off, *len)
    };

    // In a middle segment: corruption at open, nothing changed.
    {
        let mid_seg = &segs[segs.len() / 2];
        let (victim, off, len) = pick(mid_seg, 1);
        let what = format!("record of key {victim} in {:?}", mid_seg.file_name().unwrap());
        let dir = base.path().join("middle");
        copy_dir(&template, &dir);
        let seg = dir.join("wal").join(mid_seg.file_name().unwrap());
        flip(&seg, (off + len / 2) as u64);
        let before = (dir_listing(&dir), dir_listing(&dir.join("wal")));
        for attempt in 0..2 {
            match Db::open(&dir, o.clone()).await {
                Err(Error::Corruption { file, offset, what: w }) => {
                    assert_eq!(file, seg, "{what}: the corruption names the segment ({w})");
                    assert_eq!(offset, off as u64, "{what}: the corruption names the record's offset ({w})");
                }
                Err(e) => panic!("{what}: expected Corruption, got {e:?}"),
                Ok(_) => panic!("{what}: opened over a damaged record before the last segment"),
            }
            let after = (dir_listing(&dir), dir_listing(&dir.join("wal")));
            assert_eq!(after, before, "{what}: a failed open changed files (attempt {attempt})");
        }
    }

    // In the last segment, with batches after it: corruption (their marks prove it synced).
    {
        let last_seg = segs.last().unwrap();
        let (_, off, len) = pick(last_seg, 0);
        let dir = base.path().join("last-early");
        copy_dir(&template, &dir);
        let seg = dir.join("wal").join(last_seg.file_name().unwrap());
        flip(&seg, (off + len / 2) as u64);
        match Db::open(&dir, o.clone()).await {
            Err(Error::Corruption { file, offset, .. }) => assert_eq!((file, offset), (seg, off as u64)),
            Err(e) => panic!("expected Corruption, got {e:?}"),
            Ok(_) => panic!("opened over a damaged synced record of the last segment"),
        }
    }

    // The last record of the last segment: the torn tail.
    {
        let last_seg = segs.last().unwrap();
        let above: usize =
            all.iter().enumerate().filter(|(i, r)| &r.0 == last_seg && first_key + i > ckpt_after).count();
        let (victim, off, len) = pick(last_seg, above - 1);
        let what = format!("record of key {victim} in {:?}", last_seg.file_name().unwrap());
        let dir = base.path().join("last");
        copy_dir(&template, &dir);
        let seg = dir.join("wal").join(last_seg.file_name().unwrap());
        flip(&seg, (off + len / 2) as u64);
        let (db, ids) = surviving_keys(&dir, &o).await;
        assert_eq!(ids, (0..victim).collect::<Vec<_>>(), "{what}: keys before the damaged record survive");
        assert_eq!(fs::metadata(&seg).unwrap().len(), off as u64, "{what}: the segment is cut at the record");
        // Earlier segments are untouched.
        for s in &segs[..segs.len() - 1] {
            let copy = dir.join("wal").join(s.file_name().unwrap());
            assert_eq!(fs::read(&copy).unwrap(), fs::read(s).unwrap(), "{what}: {} changed", s.display());
        }
        db.close().await.unwrap();
        let (db, ids) = surviving_keys(&dir, &o).await;
        assert_eq!(ids, (0..victim).collect::<Vec<_>>(), "{what}: after close and reopen");
        db.close().await.unwrap();
    }
}

/// A damaged WAL segment header is not a torn tail: recovery refuses with a corruption
/// naming the segment (for a segment holding records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_wal_segment_header() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    wal_only_db(&template, &opts(), None, 5, 50).await;
    for (what, at) in [("magic", 0u64), ("sequence number", 8)] {
        let dir = base.path().join(format!("run-{at}"));
        copy_dir(&template, &dir);
        let seg = only_wal_segment(&dir);
        flip(&seg, at);
        match Db::open(&dir, opts()).await {
            Err(Error::Corruption { file, .. }) => assert_eq!(file, seg, "{what}"),
            Err(e) => panic!("{what}: expected Corruption, got {e:?}"),
            Ok(_) => panic!("{what}: opened over a damaged segment header"),
        }
    }
}

/// Found while writing `Db::check`: a flipped byte in a manifest record that is not the last
/// was taken for a torn tail. Open cut the manifest there, dropped every later edit, and
/// deleted the data files those edits added as stale: the bucket and its keys were gone.
/// Each record is synced before the next is written, so this is corruption, and open must
/// refuse it without changing anything on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_damaged_manifest_record_is_not_cut_as_a_torn_tail() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("db");
    {
        let db = Db::open(&dir, opts()).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        for round in 0..4 {
            for i in 0..100 {
                b.put(key(i), value(i + round, 40)).await.unwrap();
            }
            db.checkpoint().await.unwrap();
        }
        db.close().await.unwrap();
    }
    let current = fs::read_to_string(dir.join("CURRENT")).unwrap();
    let manifest = dir.join(current.split_whitespace().next().unwrap());
    // Record boundaries: the second record is followed by intact ones.
    let bytes = fs::read(&manifest).unwrap();
    let first = 8 + le_u32(&bytes, 0) as usize;
    let second = first + 8 + le_u32(&bytes, first) as usize;
    assert!(second < bytes.len(), "the manifest has records after the second");
    flip(&manifest, (first + 8 + 2) as u64);
    let listing = |d: &Path| {
        let mut v: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let before = (listing(&dir), fs::read(&manifest).unwrap());
    match Db::open(&dir, opts()).await {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!((file, offset), (manifest.clone(), first as u64));
        }
        Err(e) => panic!("expected Corruption, got {e}"),
        Ok(_) => panic!("opened over a damaged manifest record that intact records follow"),
    }
    assert_eq!((listing(&dir), fs::read(&manifest).unwrap()), before, "a failed open changed the database");
}
