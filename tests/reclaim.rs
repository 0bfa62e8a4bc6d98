//! Space comes back: a dropped bucket's pages leave the manifest in the drop's own edit,
//! its memory is freed at once, the files that held only its pages are deleted, and GC
//! moves the surviving pages out of the files they shared.
//!
//! The backend comes from `Options::default()`, so `RINGKV_IO_BACKEND` selects it.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store

use ringkv::{Db, Error, Options};

fn key(i: u32) -> Vec<u8> {
    format!("key-{:08}", i.wrapping_mul(2_654_435_761) % 1_000_000_007).into_bytes()
}

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
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
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
