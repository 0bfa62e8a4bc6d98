//! Space comes back: a dropped bucket's pages leave the manifest in the drop's own edit,
//! its memory is freed at once, the files that held only its pages are deleted, and GC
//! moves the surviving pages out of the files they shared.
//!
//! The backend comes from `Options::default()`, so `RINGKV_IO_BACKEND` selects it.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store

use ringkv::{Db, Error, Options};

#[path = "common/spread.rs"]
mod spread;
use spread::{key, runtime};

fn value(i: u32, len: usize) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(len, b'v');
    v
}

const KEEP: u32 = 2_000;
const BIG: u32 = 40_000;

fn opts() -> Options {
    // Room for the whole load in one checkpoint: one data file then holds both buckets.
    Options::default().cache_capacity(512 << 20).background_checkpoints(false)
}

/// Dropping a large bucket: memory falls at once, disk after one checkpoint (the drop
/// marks the survivors of the file it shared for GC, the checkpoint moves them and drops
/// the file) to within 1/8 of what the two buckets took; the other bucket reads back
/// whole, before and after a reopen, and `Db::check` finds nothing wrong.
#[test]
fn a_dropped_bucket_gives_its_memory_and_disk_back() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let db = Db::open(dir.path(), opts()).await.unwrap();
        let keep = db.bucket("keep").await.unwrap();
        let big = db.bucket("big").await.unwrap();
        // Both buckets in the same transactions: their pages share every data file.
        let per_tx = BIG / KEEP;
        for i in 0..KEEP {
            let mut tx = db.begin().unwrap();
            tx.put(&keep, key(i), value(i, 200)).unwrap();
            for j in i * per_tx..(i + 1) * per_tx {
                tx.put(&big, key(j), value(j, 500)).unwrap();
            }
            tx.commit().await.unwrap();
        }
        db.checkpoint().await.unwrap();
        let before = db.stats();
        assert!(before.data_bytes > 20 << 20, "data files hold {} bytes", before.data_bytes);
        assert_eq!(before.files, 1, "the load is in one data file, shared by the two buckets");

        db.drop_bucket("big").await.unwrap();
        let dropped = db.stats();
        assert!(
            dropped.cache_bytes * 8 < before.cache_bytes,
            "cache {} -> {} bytes: the dropped bucket's pages were kept in memory",
            before.cache_bytes,
            dropped.cache_bytes
        );
        assert!(matches!(big.get(key(0)).await, Err(Error::NotFound(_))));

        db.checkpoint().await.unwrap();
        let after = db.stats();
        eprintln!(
            "data files {} -> {} bytes, cache {} -> {} -> {} bytes",
            before.data_bytes, after.data_bytes, before.cache_bytes, dropped.cache_bytes, after.cache_bytes
        );
        assert!(
            after.data_bytes * 8 < before.data_bytes,
            "data files {} -> {} bytes after the drop and GC",
            before.data_bytes,
            after.data_bytes
        );
        for i in 0..KEEP {
            assert_eq!(keep.get(key(i)).await.unwrap().as_deref(), Some(&value(i, 200)[..]), "key {i}");
        }
        db.close().await.unwrap();
        drop((keep, big, db));
        let report = Db::check(dir.path(), &opts()).await.unwrap();
        assert!(report.problems.is_empty(), "{report}");

        let db = Db::open(dir.path(), opts()).await.unwrap();
        assert_eq!(db.buckets().unwrap(), vec!["keep".to_string()]);
        assert_eq!(db.stats().data_bytes, after.data_bytes);
        let keep = db.existing_bucket("keep").unwrap();
        for i in 0..KEEP {
            assert_eq!(
                keep.get(key(i)).await.unwrap().as_deref(),
                Some(&value(i, 200)[..]),
                "key {i} after a reopen"
            );
        }
        db.close().await.unwrap();
        drop((keep, db));
        let report = Db::check(dir.path(), &opts()).await.unwrap();
        assert!(report.problems.is_empty(), "{report}");
    });
}

const BLOB_KEYS: u32 = 500;
const BLOB_LEN: usize = 8 << 10;

fn blob_opts() -> Options {
    Options::default().cache_capacity(512 << 20).background_checkpoints(false).inline_limit(1024)
}

fn blob_value(i: u32, round: u32) -> Vec<u8> {
    let mut v = format!("blob-{i}-round-{round}-").into_bytes();
    v.resize(BLOB_LEN, b'0' + (round % 10) as u8);
    v
}

/// Overwritten blob values give their files back: every key's blob is overwritten in five
/// rounds, each followed by a checkpoint; once a round's values are all shadowed, no page
/// refers to its blob file and the checkpoint drops it, so the blob files hold at most two
/// rounds (the live values and the round a checkpoint has not yet released), not six.
/// The counts survive a reopen: after it, one more round drops the files of the rounds
/// before. `Db::check` agrees with the counts (none below the references), and every value
/// reads back.
#[test]
fn overwritten_blob_values_give_their_files_back() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let round_bytes = u64::from(BLOB_KEYS) * BLOB_LEN as u64;
        let write_round = |db: Db, round: u32| async move {
            let b = db.bucket("blobs").await.unwrap();
            for chunk in (0..BLOB_KEYS).collect::<Vec<_>>().chunks(50) {
                let mut tx = db.begin().unwrap();
                for &i in chunk {
                    tx.put(&b, key(i), blob_value(i, round)).unwrap();
                }
                tx.commit().await.unwrap();
            }
            db.checkpoint().await.unwrap();
            db.stats().blob_bytes
        };
        let db = Db::open(dir.path(), blob_opts()).await.unwrap();
        let mut sizes = Vec::new();
        for round in 0..6 {
            sizes.push(write_round(db.clone(), round).await);
        }
        eprintln!("blob files after each round: {sizes:?} bytes (one round of values: {round_bytes})");
        assert!(sizes[0] >= round_bytes, "round 0 wrote {} bytes of blob files", sizes[0]);
        assert!(
            sizes[5] <= 2 * round_bytes + round_bytes / 4,
            "after 6 rounds the blob files hold {} bytes, one round is {round_bytes}",
            sizes[5]
        );
        db.close().await.unwrap();
        drop(db);
        let report = Db::check(dir.path(), &blob_opts()).await.unwrap();
        assert!(report.problems.is_empty(), "{report}");

        let db = Db::open(dir.path(), blob_opts()).await.unwrap();
        let b = db.existing_bucket("blobs").unwrap();
        for i in 0..BLOB_KEYS {
            assert_eq!(b.get(key(i)).await.unwrap().as_deref(), Some(&blob_value(i, 5)[..]), "key {i}");
        }
        let after = write_round(db.clone(), 6).await;
        eprintln!("after a reopen and one more round: {after} bytes");
        assert!(
            after <= 2 * round_bytes + round_bytes / 4,
            "after the reopen the blob files hold {after} bytes"
        );
        for i in 0..BLOB_KEYS {
            assert_eq!(b.get(key(i)).await.unwrap().as_deref(), Some(&blob_value(i, 6)[..]), "key {i}");
        }
        db.close().await.unwrap();
        drop((b, db));
        let report = Db::check(dir.path(), &blob_opts()).await.unwrap();
        assert!(report.problems.is_empty(), "{report}");
        assert!(report.notes.iter().all(|n| !n.contains("references")), "{report}");
    });
}

/// Deleted blob values give their space back even where a file keeps a few live ones:
/// after 9 of every 10 keys are deleted, GC rewrites the blob file (its references fell
/// below `gc_live_ratio`) with only the referenced values, at the same addresses, so the
/// blob files fall to within 1.5x the bytes of the values left. Done after a reopen, so
/// the references of pages not read since open are read from their frames. The values
/// left read back (before and after another reopen) and `Db::check` is clean.
#[test]
fn deleted_blob_values_give_their_space_back() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let kept = |i: u32| i.is_multiple_of(10);
        let db = Db::open(dir.path(), blob_opts()).await.unwrap();
        let b = db.bucket("blobs").await.unwrap();
        for chunk in (0..BLOB_KEYS).collect::<Vec<_>>().chunks(50) {
            let mut tx = db.begin().unwrap();
            for &i in chunk {
                tx.put(&b, key(i), blob_value(i, 0)).unwrap();
            }
            tx.commit().await.unwrap();
        }
        db.close().await.unwrap();
        drop((b, db));

        let db = Db::open(dir.path(), blob_opts()).await.unwrap();
        let b = db.existing_bucket("blobs").unwrap();
        let before = db.stats().blob_bytes;
        let mut tx = db.begin().unwrap();
        for i in (0..BLOB_KEYS).filter(|&i| !kept(i)) {
            tx.delete(&b, key(i)).unwrap();
        }
        tx.commit().await.unwrap();
        let s = db.checkpoint().await.unwrap();
        let after = db.stats().blob_bytes;
        let live_bytes = u64::from(BLOB_KEYS / 10) * BLOB_LEN as u64;
        eprintln!(
            "blob files {before} -> {after} bytes (values left: {live_bytes}); compacted {}, copied {} bytes",
            s.blob_files_compacted, s.gc_copied_bytes
        );
        assert_eq!(s.blob_files_compacted, 1, "{s:?}");
        assert!(
            after <= live_bytes * 3 / 2,
            "blob files {before} -> {after} bytes, values left {live_bytes}"
        );
        for i in 0..BLOB_KEYS {
            let want = kept(i).then(|| blob_value(i, 0));
            assert_eq!(b.get(key(i)).await.unwrap().as_deref(), want.as_deref(), "key {i}");
        }
        db.close().await.unwrap();
        drop((b, db));
        let report = Db::check(dir.path(), &blob_opts()).await.unwrap();
        assert!(report.problems.is_empty(), "{report}");
        assert!(report.notes.iter().all(|n| !n.contains("references")), "{report}");

        let db = Db::open(dir.path(), blob_opts()).await.unwrap();
        let b = db.existing_bucket("blobs").unwrap();
        assert_eq!(db.stats().blob_bytes, after);
        for i in 0..BLOB_KEYS {
            let want = kept(i).then(|| blob_value(i, 0));
            assert_eq!(b.get(key(i)).await.unwrap().as_deref(), want.as_deref(), "key {i} after a reopen");
        }
        db.close().await.unwrap();
    });
}

/// A dropped bucket's blob values give their files back: the drop, after a reopen (its
/// pages' references are read from their frames), takes its references away, so the blob
/// file that held only its values is deleted at once and the one it shared with the kept
/// bucket is rewritten by the next checkpoint's GC. The blob files fall to within 1.5x the
/// kept bucket's values; those read back, and `Db::check` is clean.
#[test]
fn a_dropped_bucket_gives_its_blob_files_back() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let db = Db::open(dir.path(), blob_opts()).await.unwrap();
        let keep = db.bucket("keep").await.unwrap();
        let big = db.bucket("big").await.unwrap();
        // First a file of the big bucket's values alone, then one both buckets share.
        for shared in [false, true] {
            for chunk in (0..BLOB_KEYS).collect::<Vec<_>>().chunks(50) {
                let mut tx = db.begin().unwrap();
                for &i in chunk {
                    let round = u32::from(shared);
                    tx.put(&big, key(i + round * BLOB_KEYS), blob_value(i, round)).unwrap();
                    if shared && i % 10 == 0 {
                        tx.put(&keep, key(i), blob_value(i, 7)).unwrap();
                    }
                }
                tx.commit().await.unwrap();
            }
            db.checkpoint().await.unwrap();
        }
        db.close().await.unwrap();
        drop((keep, big, db));

        let db = Db::open(dir.path(), blob_opts()).await.unwrap();
        let before = db.stats().blob_bytes;
        db.drop_bucket("big").await.unwrap();
        let dropped = db.stats().blob_bytes;
        let keep = db.existing_bucket("keep").unwrap();
        let mut tx = db.begin().unwrap();
        tx.put(&keep, b"one more", b"small").unwrap();
        tx.commit().await.unwrap();
        db.checkpoint().await.unwrap();
        let after = db.stats().blob_bytes;
        let live_bytes = u64::from(BLOB_KEYS / 10) * BLOB_LEN as u64;
        eprintln!("blob files {before} -> {dropped} (drop) -> {after} bytes (GC); kept values: {live_bytes}");
        assert!(dropped < before, "the drop deleted no blob file: {before} -> {dropped}");
        assert!(
            after <= live_bytes * 3 / 2,
            "blob files {before} -> {after} bytes, kept values {live_bytes}"
        );
        for i in (0..BLOB_KEYS).step_by(10) {
            assert_eq!(keep.get(key(i)).await.unwrap().as_deref(), Some(&blob_value(i, 7)[..]), "key {i}");
        }
        db.close().await.unwrap();
        drop((keep, db));
        let report = Db::check(dir.path(), &blob_opts()).await.unwrap();
        assert!(report.problems.is_empty(), "{report}");
        assert!(report.notes.iter().all(|n| !n.contains("references")), "{report}");
    });
}
