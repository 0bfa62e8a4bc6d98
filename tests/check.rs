//! `Db::check`: a clean database checks clean with counts the test can predict; every kind of
//! damage (a frame byte, the footer, the relocation table, the address ranges, a blob frame,
//! a manifest record, a WAL record before the last segment, a truncated file, a missing file)
//! is a problem naming the damaged file and, where the test can know it, the offset; a torn
//! WAL tail and stale files are notes; the check never changes a byte on disk.
//!
//! One template database is built once per process and copied for each case. The files are
//! parsed here independently of the engine (layouts in docs/format.md).
//!
//! The backend comes from `Options::default()` (`IoBackend::Auto`), so
//! `RINGKV_IO_BACKEND=uring|threadpool` selects it for the whole file.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

mod common;

use common::{copy_dir, files_with_prefix, flip, le_u32, le_u64, wal_segments};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use futures::executor::block_on;
use futures::TryStreamExt;
use ringkv::{CheckReport, Db, Error, Options};

const FOOTER_LEN: u64 = 56;
const RELOC_ENTRY_LEN: u64 = 24;
const WAL_HEADER_LEN: usize = 16;
const WAL_FRAME_LEN: usize = 8;

const BUCKETS: [&str; 3] = ["alpha", "beta", "gamma"];
const KEYS: usize = 300;
const ROUNDS: usize = 4;
const INLINE_LIMIT: usize = 256;
/// Commits after the last checkpoint: they live only in the WAL.
const WAL_TAIL: usize = 60;
const WAL_TAIL_VALUE_LEN: usize = 3000;

fn opts() -> Options {
    Options::default()
        // Only the test's own checkpoints write data files.
        .background_checkpoints(false)
        .inline_limit(INLINE_LIMIT)
        .wal_segment_bytes(64 * 1024)
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

/// Every 5th key holds a blob (above the inline limit), the others short inline values.
fn value(bucket: usize, i: usize, round: usize) -> Vec<u8> {
    let len = if i.is_multiple_of(5) { 600 + (i * 7) % 300 } else { 40 + (i * 13) % 60 };
    let mut v = format!("{bucket}/{i}/{round}:").into_bytes();
    while v.len() < len {
        v.push(b'a' + ((v.len() * 7 + i + round) % 26) as u8);
    }
    v
}

/// What the template's builder knows.
struct Template {
    _base: tempfile::TempDir,
    dir: PathBuf,
    /// `Stats::files` after the last checkpoint.
    stats_files: usize,
    /// Live keys per bucket and their values, as checkpointed (before the WAL tail).
    model: Vec<BTreeMap<Vec<u8>, Vec<u8>>>,
    gc_files_removed: usize,
    gc_pages: usize,
    data_files_written: usize,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| block_on(build_template()))
}

/// Three buckets (a fourth created and dropped), `ROUNDS` rounds of puts, overwrites and
/// deletes with a checkpoint after each (several data files, blob files, GC), checkpoints
/// until nothing is left to move, then `WAL_TAIL` commits spread over several WAL segments;
/// dropped without close, so the tail lives only in the WAL.
async fn build_template() -> Template {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("template");
    let o = opts();
    let db = Db::open(&dir, o.clone()).await.unwrap();
    let mut model: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = vec![BTreeMap::new(); BUCKETS.len()];
    let buckets: Vec<_> = futures::future::try_join_all(BUCKETS.iter().map(|n| db.bucket(n))).await.unwrap();
    let doomed = db.bucket("delta").await.unwrap();
    doomed.put(b"x", b"soon gone").await.unwrap();
    let (mut gc_files_removed, mut gc_pages, mut data_files_written) = (0, 0, 0);
    for round in 0..ROUNDS {
        for (bi, b) in buckets.iter().enumerate() {
            let mut t = b.begin().unwrap();
            for i in 0..KEYS {
                let (k, m) = (key(i), &mut model[bi]);
                if round == 0 || i % (round + 1) == 0 {
                    let v = value(bi, i, round);
                    t.put(&k, &v).unwrap();
                    m.insert(k, v);
                } else if round == 2 && i % 7 == 3 {
                    t.delete(&k).unwrap();
                    m.remove(&k);
                }
            }
            t.commit().await.unwrap();
        }
        if round == 1 {
            db.drop_bucket("delta").await.unwrap();
        }
        let s = db.checkpoint().await.unwrap();
        gc_files_removed += s.files_removed;
        gc_pages += s.gc_pages;
        data_files_written += usize::from(s.pages > 0);
    }
    // Checkpoints until GC has nothing left to move.
    for _ in 0..10 {
        let s = db.checkpoint().await.unwrap();
        gc_files_removed += s.files_removed;
        gc_pages += s.gc_pages;
        data_files_written += usize::from(s.pages > 0);
        if s.pages == 0 && s.gc_pages == 0 {
            break;
        }
    }
    let stats_files = db.stats().files;
    for i in 0..WAL_TAIL {
        let b = &buckets[i % BUCKETS.len()];
        b.put(format!("tail{i:03}"), vec![b'w'; WAL_TAIL_VALUE_LEN]).await.unwrap();
    }
    drop(buckets);
    drop(doomed);
    drop(db);
    Template { _base: base, dir, stats_files, model, gc_files_removed, gc_pages, data_files_written }
}

fn check(dir: &Path) -> CheckReport {
    block_on(Db::check(dir, &opts())).unwrap_or_else(|e| panic!("check of {}: {e}", dir.display()))
}

/// Every file under `dir` with its length and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            m.extend(snapshot(&e.path()));
        } else {
            m.insert(e.path(), fs::read(e.path()).unwrap());
        }
    }
    m
}

/// Checks `dir` and asserts the check changed nothing on disk.
fn check_readonly(dir: &Path) -> CheckReport {
    let before = snapshot(dir);
    let r = check(dir);
    let after = snapshot(dir);
    assert!(before == after, "check changed files under {}", dir.display());
    r
}

/// A fresh copy of the template.
fn copy_of_template(name: &str) -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join(name);
    copy_dir(&template().dir, &dir);
    (base, dir)
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    offset: u64,
    len: u32,
}

/// A data or blob file's layout, parsed independently of the engine.
#[derive(Debug)]
struct Layout {
    len: u64,
    ranges_offset: u64,
    reloc_offset: u64,
    frames: Vec<Frame>,
}

fn layout(path: &Path) -> Layout {
    let b = fs::read(path).unwrap();
    let len = b.len() as u64;
    let f = &b[b.len() - FOOTER_LEN as usize..];
    assert_eq!(&f[0..8], b"RKVFILE1");
    assert_eq!(crc32c::crc32c(&f[..52]), le_u32(f, 52), "footer crc");
    let ranges_offset = le_u64(f, 16);
    let reloc_offset = le_u64(f, 32);
    let count = u64::from(le_u32(f, 40));
    assert_eq!(reloc_offset + count * RELOC_ENTRY_LEN, len - FOOTER_LEN);
    let frames = (0..count)
        .map(|i| {
            let at = (reloc_offset + i * RELOC_ENTRY_LEN) as usize;
            let fr = Frame { offset: le_u64(&b, at + 8), len: le_u32(&b, at + 16) };
            let bytes = &b[fr.offset as usize..(fr.offset + u64::from(fr.len)) as usize];
            assert_eq!(crc32c::crc32c(bytes), le_u32(&b, at + 20), "frame crc");
            fr
        })
        .collect();
    Layout { len, ranges_offset, reloc_offset, frames }
}

/// The data file with the most frames.
fn biggest(dir: &Path, prefix: &str) -> (PathBuf, Layout) {
    files_with_prefix(dir, prefix)
        .into_iter()
        .map(|p| {
            let l = layout(&p);
            (p, l)
        })
        .max_by_key(|(_, l)| l.frames.len())
        .unwrap_or_else(|| panic!("no {prefix}* file in {}", dir.display()))
}

/// Manifest record boundaries: (offset, total length).
fn manifest_records(path: &Path) -> Vec<(u64, u64)> {
    let b = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let len = le_u32(&b, at) as usize;
        assert_eq!(crc32c::crc32c(&b[at + 8..at + 8 + len]), le_u32(&b, at + 4), "manifest record crc");
        out.push((at as u64, (8 + len) as u64));
        at += 8 + len;
    }
    out
}

/// WAL record boundaries of a segment: (offset, total length).
fn wal_records(path: &Path) -> Vec<(u64, u64)> {
    let seg = fs::read(path).unwrap();
    assert_eq!(&seg[..8], b"RKVWAL01");
    let mut out = Vec::new();
    let mut at = WAL_HEADER_LEN;
    while at < seg.len() {
        let len = le_u32(&seg, at) as usize;
        if len == 0 {
            // The preallocated tail: zeros to the end of the segment.
            assert!(seg[at..].iter().all(|&b| b == 0), "a zero frame before the end at {at}");
            break;
        }
        assert_eq!(crc32c::crc32c(&seg[at + 8..at + 8 + len]), le_u32(&seg, at + 4), "WAL record crc");
        out.push((at as u64, (WAL_FRAME_LEN + len) as u64));
        at += WAL_FRAME_LEN + len;
    }
    out
}

fn current_manifest(dir: &Path) -> PathBuf {
    // `MANIFEST-<16 hex> <crc32c>\n`
    let current = fs::read_to_string(dir.join("CURRENT")).unwrap();
    dir.join(current.split_whitespace().next().expect("CURRENT names a manifest"))
}

/// The problems of `r` that are corruptions naming `file`: (offset, what).
fn problems_in(r: &CheckReport, file: &Path) -> Vec<(u64, String)> {
    r.problems
        .iter()
        .filter_map(|p| match p {
            Error::Corruption { file: f, offset, what } if f == file => Some((*offset, what.clone())),
            _ => None,
        })
        .collect()
}

/// Asserts `r` reports a corruption in `file` (at `offset`, if given).
fn assert_problem(r: &CheckReport, file: &Path, offset: Option<u64>, what: &str) {
    let found = problems_in(r, file);
    assert!(!r.is_ok(), "{what}: the report is clean:\n{r}");
    assert!(!found.is_empty(), "{what}: no problem names {}:\n{r}", file.display());
    if let Some(off) = offset {
        assert!(
            found.iter().any(|(o, _)| *o == off),
            "{what}: no problem in {} at offset {off}: {found:?}\n{r}",
            file.display()
        );
    }
    assert!(r.to_string().contains(&file.display().to_string()), "{what}: Display omits the file");
}

/// The template itself still checks clean (run after each case).
fn assert_template_clean() {
    let r = check(&template().dir);
    assert!(r.is_ok(), "the template no longer checks clean:\n{r}");
}

#[test]
fn clean_database_checks_clean_with_expected_counts() {
    let t = template();
    let r = check_readonly(&t.dir);
    eprintln!("{r}");
    eprintln!(
        "template: {} data files written, {} GC pages, {} files removed",
        t.data_files_written, t.gc_pages, t.gc_files_removed
    );
    assert!(r.is_ok(), "{r}");
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert!(r.manifest.as_deref().is_some_and(|m| m.starts_with("MANIFEST-")));
    assert!(r.manifest_records >= 2 * ROUNDS as u64, "{r}");
    assert_eq!(r.buckets, BUCKETS.len(), "the dropped bucket is gone");
    // The builder's view of the files.
    assert!(t.data_files_written >= ROUNDS, "several checkpoints wrote data files");
    assert!(
        t.gc_pages > 0 && t.gc_files_removed > 0,
        "GC ran: {} pages, {} files",
        t.gc_pages,
        t.gc_files_removed
    );
    assert_eq!(r.files, t.stats_files, "files == Stats::files");
    assert_eq!(r.files, r.data_files + r.blob_files);
    assert_eq!(r.data_files, files_with_prefix(&t.dir, "data-").len());
    assert_eq!(r.blob_files, files_with_prefix(&t.dir, "blob-").len());
    assert!(r.data_files >= 1 && r.blob_files >= 2, "{r}");
    // Frames: every relocation entry's frame was verified, and they are the test's count.
    let on_disk: usize = files_with_prefix(&t.dir, "data-")
        .iter()
        .chain(&files_with_prefix(&t.dir, "blob-"))
        .map(|p| layout(p).frames.len())
        .sum();
    assert_eq!(r.relocation_entries, on_disk as u64);
    assert_eq!(r.frames, r.relocation_entries);
    // Pages: every leaf holds at most ~2 split thresholds of entries, so the live data
    // bounds the number of leaves from below.
    let leaf_bytes: usize = t
        .model
        .iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + 25 + if v.len() >= INLINE_LIMIT { 12 } else { v.len() + 4 })
        .sum();
    assert!(
        r.leaf_pages as usize >= leaf_bytes / (2 * 4096),
        "{} leaves for {leaf_bytes} bytes",
        r.leaf_pages
    );
    assert!(r.leaf_pages as usize >= BUCKETS.len());
    assert_eq!(r.pages, r.leaf_pages + r.inner_pages);
    assert!(r.pages <= r.frames);
    assert_eq!(r.unchecked_pages, 0);
    // Blobs: at least every live blob value of the checkpointed data.
    let live_blobs = t.model.iter().flat_map(|m| m.values()).filter(|v| v.len() >= INLINE_LIMIT).count();
    assert!(r.blobs as usize >= live_blobs, "{} blobs resolved, {live_blobs} live", r.blobs);
    // WAL: the tail spans several segments and is exactly what recovery replays.
    // Segments only: a segment prepared ahead (`wal-*.next`) may lie beside them.
    let segments = files_with_prefix(&t.dir.join("wal"), "wal-")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"));
    assert_eq!(r.wal_segments as usize, segments.count());
    assert!(r.wal_segments >= 3, "{r}");
    assert_eq!(r.wal_records_to_replay, WAL_TAIL as u64);
    assert!(r.wal_records >= WAL_TAIL as u64);
    let total: u64 = snapshot(&t.dir).values().map(|b| b.len() as u64).sum();
    assert!(r.bytes_checked > 0 && r.bytes_checked <= total, "{} of {total} bytes", r.bytes_checked);
    // A second check sees the same.
    let r2 = check(&t.dir);
    assert_eq!(r2.to_string(), r.to_string());
}

#[test]
fn recovered_and_closed_copy_checks_clean_and_reads_back() {
    let (_base, dir) = copy_of_template("recovered");
    block_on(async {
        let db = Db::open(&dir, opts()).await.unwrap();
        for (bi, name) in BUCKETS.iter().enumerate() {
            let b = db.existing_bucket(name).unwrap();
            let pairs: Vec<_> = b.range(..b"tail".as_slice()).await.unwrap().try_collect().await.unwrap();
            let got: BTreeMap<Vec<u8>, Vec<u8>> =
                pairs.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
            assert!(got == template().model[bi], "bucket {name} differs from the model");
        }
        db.close().await.unwrap();
    });
    let r = check_readonly(&dir);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.wal_records_to_replay, 0, "close checkpointed the tail: {r}");
    assert!(r.blobs as usize >= WAL_TAIL, "the tail's values are blobs now: {r}");
}

#[test]
fn flipped_frame_byte_is_a_problem_at_the_frame() {
    let (_base, dir) = copy_of_template("frame");
    let (data, l) = biggest(&dir, "data-");
    for fr in [l.frames[0], l.frames[l.frames.len() / 2]] {
        flip(&data, fr.offset + u64::from(fr.len) / 2);
    }
    let r = check_readonly(&dir);
    // Both damaged frames are reported: the check does not stop at the first.
    assert_problem(&r, &data, Some(l.frames[0].offset), "first frame");
    assert_problem(&r, &data, Some(l.frames[l.frames.len() / 2].offset), "middle frame");
    assert_eq!(r.frames, r.relocation_entries - 2);
    assert_template_clean();
}

#[test]
fn damaged_footer_is_a_problem_at_the_footer() {
    let (_base, dir) = copy_of_template("footer");
    let (data, l) = biggest(&dir, "data-");
    flip(&data, l.len - FOOTER_LEN + 20);
    let r = check_readonly(&dir);
    assert_problem(&r, &data, Some(l.len - FOOTER_LEN), "footer");
    assert!(r.unchecked_pages > 0, "pages of the file are not checked: {r}");
    assert_template_clean();
}

#[test]
fn damaged_relocation_table_is_a_problem_at_the_table() {
    let (_base, dir) = copy_of_template("reloc");
    let (data, l) = biggest(&dir, "data-");
    flip(&data, l.reloc_offset + RELOC_ENTRY_LEN + 9);
    let r = check_readonly(&dir);
    assert_problem(&r, &data, Some(l.reloc_offset), "relocation table");
    assert_template_clean();
}

#[test]
fn damaged_address_ranges_are_a_problem_at_the_ranges() {
    let (_base, dir) = copy_of_template("ranges");
    let (data, l) = biggest(&dir, "data-");
    flip(&data, l.ranges_offset + 3);
    let r = check_readonly(&dir);
    assert_problem(&r, &data, Some(l.ranges_offset), "address ranges");
    assert_template_clean();
}

#[test]
fn flipped_blob_frame_is_a_problem_at_the_blob() {
    let (_base, dir) = copy_of_template("blob");
    let (blob, l) = biggest(&dir, "blob-");
    let fr = l.frames[l.frames.len() - 1];
    flip(&blob, fr.offset + 1);
    let r = check_readonly(&dir);
    assert_problem(&r, &blob, Some(fr.offset), "blob frame");
    assert_template_clean();
}

#[test]
fn damaged_manifest_record_is_a_problem_at_the_record() {
    let manifest = current_manifest(&template().dir);
    let recs = manifest_records(&manifest);
    assert!(recs.len() >= 3, "{recs:?}");
    // A record in the middle (intact records follow it) and the first one (the snapshot).
    for (what, (off, len)) in [("middle record", recs[recs.len() / 2]), ("first record", recs[0])] {
        let (_base, dir) = copy_of_template("manifest");
        let m = current_manifest(&dir);
        flip(&m, off + len / 2 + 4);
        let r = check_readonly(&dir);
        assert_problem(&r, &m, Some(off), what);
    }
    // The last record damaged is a torn tail: a note, the state before it is checked.
    let (_base, dir) = copy_of_template("manifest-tail");
    let m = current_manifest(&dir);
    let (off, len) = *recs.last().unwrap();
    flip(&m, off + len - 1);
    let r = check_readonly(&dir);
    assert!(problems_in(&r, &m).is_empty(), "{r}");
    assert!(r.notes.iter().any(|n| n.contains("torn tail") && n.contains(&format!("offset {off}"))), "{r}");
    assert_template_clean();
}

#[test]
fn damaged_wal_record_before_the_last_segment_is_a_problem() {
    let segs = wal_segments(&template().dir);
    assert!(segs.len() >= 3, "{segs:?}");
    let name = segs[segs.len() - 2].file_name().unwrap().to_owned();
    let recs = wal_records(&segs[segs.len() - 2]);
    let (off, len) = recs[recs.len() / 2];
    let (_base, dir) = copy_of_template("wal");
    let seg = dir.join("wal").join(&name);
    flip(&seg, off + len / 2);
    let r = check_readonly(&dir);
    assert_problem(&r, &seg, Some(off), "WAL record");
    // The records after it in that segment and in the last one are still read.
    assert!(r.wal_records as usize >= WAL_TAIL - 1, "{r}");
    assert_template_clean();
}

#[test]
fn damaged_wal_record_in_the_middle_of_the_last_segment_is_a_problem() {
    let segs = wal_segments(&template().dir);
    let name = segs.last().unwrap().file_name().unwrap().to_owned();
    let recs = wal_records(segs.last().unwrap());
    assert!(recs.len() >= 3, "{recs:?}");
    let (off, len) = recs[recs.len() / 2];
    let (_base, dir) = copy_of_template("wal-last");
    let seg = dir.join("wal").join(&name);
    flip(&seg, off + len / 2);
    let r = check_readonly(&dir);
    assert_problem(&r, &seg, Some(off), "WAL record followed by intact ones");
    assert_template_clean();
}

#[test]
fn torn_wal_tail_is_a_note_not_a_problem() {
    let (_base, dir) = copy_of_template("torn");
    let seg = wal_segments(&dir).pop().unwrap();
    let recs = wal_records(&seg);
    let (off, len) = *recs.last().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let end = off + len;
    // A torn append: the first half of a record after the last one, in the preallocated
    // zeros (or past the end of a segment that has none).
    let half: Vec<u8> = bytes[off as usize..(off + len / 2) as usize].to_vec();
    let stop = end as usize + half.len();
    if bytes.len() < stop {
        bytes.resize(stop, 0);
    }
    bytes[end as usize..stop].copy_from_slice(&half);
    fs::write(&seg, bytes).unwrap();
    let r = check_readonly(&dir);
    assert!(r.is_ok(), "{r}");
    assert!(
        r.notes.iter().any(|n| n.contains("torn tail") && n.contains(&format!("offset {end}"))),
        "{:?}",
        r.notes
    );
    assert_eq!(r.wal_records_to_replay, WAL_TAIL as u64);
    // A flipped byte in the last record of the last segment is a torn tail too.
    let (_base2, dir2) = copy_of_template("torn-flip");
    let seg2 = wal_segments(&dir2).pop().unwrap();
    flip(&seg2, off + len - 2);
    let r = check_readonly(&dir2);
    assert!(r.is_ok(), "{r}");
    assert!(r.notes.iter().any(|n| n.contains("torn tail")), "{:?}", r.notes);
    assert_eq!(r.wal_records_to_replay, WAL_TAIL as u64 - 1);
    assert_template_clean();
}

#[test]
fn truncated_file_is_a_problem_at_its_new_end() {
    let (_base, dir) = copy_of_template("truncated");
    let (data, l) = biggest(&dir, "data-");
    let cut = l.frames[l.frames.len() / 2].offset + 3;
    fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(cut).unwrap();
    let r = check_readonly(&dir);
    assert_problem(&r, &data, Some(cut), "truncated data file");
    assert!(r.unchecked_pages > 0, "{r}");
    assert_template_clean();
}

#[test]
fn missing_file_is_a_problem_naming_it() {
    let (_base, dir) = copy_of_template("missing");
    let (data, _) = biggest(&dir, "data-");
    let (blob, _) = biggest(&dir, "blob-");
    fs::remove_file(&data).unwrap();
    fs::remove_file(&blob).unwrap();
    let r = check_readonly(&dir);
    assert_problem(&r, &data, Some(0), "missing data file");
    assert_problem(&r, &blob, Some(0), "missing blob file");
    assert_template_clean();
}

#[test]
fn stale_files_are_notes() {
    let (_base, dir) = copy_of_template("stale");
    let (data, _) = biggest(&dir, "data-");
    fs::copy(&data, dir.join("data-00000000ffffffff.rkv")).unwrap();
    fs::write(dir.join("CURRENT.tmp"), b"MANIFEST-0000000000000abc\n").unwrap();
    let r = check_readonly(&dir);
    assert!(r.is_ok(), "{r}");
    for name in ["data-00000000ffffffff.rkv", "CURRENT.tmp"] {
        assert!(r.notes.iter().any(|n| n.contains(name) && n.contains("stale")), "{name}: {:?}", r.notes);
    }
}

/// What a second writer on the same directory leaves behind (possible before `Db::open`
/// locked the directory, and still by hand): data files the manifest does not know, and WAL
/// segments of its own, numbered past a gap, repeating timestamps the first one used.
#[test]
fn what_a_second_writer_leaves_behind_is_reported() {
    let (_base, dir) = copy_of_template("second-writer");
    let (data, _) = biggest(&dir, "data-");
    fs::copy(&data, dir.join("data-0000000000abcdef.rkv")).unwrap();
    let wal = dir.join("wal");
    let segments = wal_segments(&dir);
    let last = segments.iter().max().unwrap();
    let seq = u64::from_str_radix(&last.file_name().unwrap().to_str().unwrap()[4..20], 16).unwrap();
    let name = |s: u64| format!("wal-{s:016x}.log");
    fs::copy(last, wal.join(name(seq + 2))).unwrap();
    let r = check_readonly(&dir);
    assert!(!r.is_ok(), "{r}");
    assert!(
        r.notes.iter().any(|n| n.contains("data-0000000000abcdef.rkv") && n.contains("stale")),
        "the unknown data file is named: {:?}",
        r.notes
    );
    assert_problem(&r, &wal.join(name(seq + 1)), Some(0), "WAL segment missing");
    assert_problem(&r, &wal.join(name(seq + 2)), Some(8), "seq");
}

#[test]
fn no_directory_or_no_current_is_an_error() {
    let base = tempfile::tempdir().unwrap();
    let missing = base.path().join("nothing-here");
    assert!(matches!(block_on(Db::check(&missing, &opts())), Err(Error::Io { .. })));
    let empty = base.path().join("empty");
    fs::create_dir(&empty).unwrap();
    match block_on(Db::check(&empty, &opts())) {
        Err(Error::Io { path, .. }) => assert_eq!(path, empty.join("CURRENT")),
        other => panic!("expected an I/O error naming CURRENT, got {other:?}"),
    }
    // A damaged CURRENT is a problem, not an error: the WAL is still checked.
    let (_b, dir) = copy_of_template("current");
    fs::write(dir.join("CURRENT"), b"garbage").unwrap();
    let r = check_readonly(&dir);
    assert_problem(&r, &dir.join("CURRENT"), Some(0), "CURRENT");
    assert!(r.wal_records >= WAL_TAIL as u64, "{r}");
    assert!(r.frames > 0, "files are checked on their own: {r}");
}
