//! `Stats` as an operator graphs it (issue 15, item 5): per-bucket sizes, disk bytes by file
//! kind, cache hits and misses, latency histograms, checked against what the test did and
//! what the directory holds.

#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap

use std::path::Path;

use ringkv::{Db, Options};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The sizes of the files of each kind in `dir`: (data, blob, WAL, manifest).
fn disk_by_kind(dir: &Path) -> (u64, u64, u64, u64) {
    let (mut data, mut blob, mut wal, mut manifest) = (0, 0, 0, 0);
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let len = e.metadata().unwrap().len();
        if name.starts_with("data-") {
            data += len;
        } else if name.starts_with("blob-") {
            blob += len;
        } else if name.starts_with("MANIFEST-") {
            manifest += len;
        }
    }
    for e in std::fs::read_dir(dir.join("wal")).unwrap() {
        wal += e.unwrap().metadata().unwrap().len();
    }
    (data, blob, wal, manifest)
}

/// After writes to two buckets, `Stats` tells each bucket's keys and bytes, the files by
/// kind as the directory has them, hits and misses that move with the reads, and
/// histograms that counted each commit and read; the sizes survive a reopen.
#[test]
fn stats_report_bucket_sizes_disk_bytes_cache_and_latencies() {
    let dir = tempfile::tempdir().unwrap();
    // No warming after open: the cache counters below count the first read of a page as
    // a miss, which a page the warming read first would not be.
    let opts = Options::default().background_checkpoints(false).inline_limit(512).warm_cache(false);
    runtime().block_on(async {
        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        let a = db.bucket("a").await.unwrap();
        let b = db.bucket("b").await.unwrap();
        let mut commits = 0;
        // a: 400 keys of 6 + 100 bytes.
        for i in 0..400u32 {
            a.put(format!("a{i:05}"), [1u8; 100]).await.unwrap();
            commits += 1;
        }
        // b: 250 keys of 6 + 1000 bytes (blob values), in transactions of 10.
        for chunk in 0..25u32 {
            let mut t = b.begin().unwrap();
            for i in chunk * 10..chunk * 10 + 10 {
                t.put(format!("b{i:05}"), vec![2u8; 1000]).unwrap();
            }
            t.commit().await.unwrap();
            commits += 1;
        }
        // Overwrites change bytes, not keys; deletes remove both; a delete of a missing key
        // changes nothing.
        for i in 0..50u32 {
            a.put(format!("a{i:05}"), [3u8; 40]).await.unwrap();
            b.delete(format!("b{i:05}")).await.unwrap();
            commits += 2;
        }
        a.delete("nothing-here").await.unwrap();
        commits += 1;
        let want_a = (400, 400 * 6 + 350 * 100 + 50 * 40);
        let want_b = (200, 200 * (6 + 1000));
        let sizes = |db: &Db| -> Vec<(String, u64, u64)> {
            db.stats().buckets.iter().map(|s| (s.name.clone(), s.keys, s.bytes)).collect()
        };
        let expected = vec![("a".to_string(), want_a.0, want_a.1), ("b".to_string(), want_b.0, want_b.1)];
        assert_eq!(sizes(&db), expected);

        let s = db.stats();
        assert_eq!(s.commit_latency.count(), commits, "one per acknowledged commit");
        assert!(
            s.commit_latency.sum_ns > 0 && s.commit_latency.quantile(0.99) >= s.commit_latency.quantile(0.5)
        );
        assert_eq!(s.read_latency.count(), 0);
        let (hits, misses) = (s.cache_hits, s.cache_misses);
        for i in 100..200u32 {
            assert_eq!(a.get(format!("a{i:05}")).await.unwrap().as_deref(), Some(&[1u8; 100][..]));
        }
        let s = db.stats();
        assert_eq!(s.read_latency.count(), 100);
        // Everything is in memory: every read is a hit.
        assert_eq!((s.cache_hits - hits, s.cache_misses - misses), (100, 0));

        db.checkpoint().await.unwrap();
        let s = db.stats();
        let (data, blob, wal, manifest) = disk_by_kind(dir.path());
        assert!(data > 0 && blob >= 200_000 && wal > 0 && manifest > 0, "{:?}", (data, blob, wal, manifest));
        assert_eq!((s.data_bytes, s.blob_bytes, s.wal_bytes, s.manifest_bytes), (data, blob, wal, manifest));
        db.close().await.unwrap();

        // Reopened: the sizes were saved by the checkpoint; the histograms start again; the
        // first read of a page is a miss (every page starts on disk), the second a hit.
        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        assert_eq!(sizes(&db), expected);
        let s = db.stats();
        assert_eq!(
            (s.commit_latency.count(), s.read_latency.count(), s.cache_hits, s.cache_misses),
            (0, 0, 0, 0)
        );
        let a = db.existing_bucket("a").unwrap();
        assert_eq!(a.get("a00300").await.unwrap().as_deref(), Some(&[1u8; 100][..]));
        assert_eq!(a.get("a00300").await.unwrap().as_deref(), Some(&[1u8; 100][..]));
        let s = db.stats();
        assert_eq!((s.cache_hits, s.cache_misses, s.read_latency.count()), (1, 1, 2));
        let (data, blob, wal, manifest) = disk_by_kind(dir.path());
        assert_eq!((s.data_bytes, s.blob_bytes, s.wal_bytes, s.manifest_bytes), (data, blob, wal, manifest));

        // Writes after the last checkpoint are replayed into the sizes at the next open.
        // A new key, and an overwrite of a key only the checkpoint holds: the replay loads
        // the leaf (every page starts as a stub without bounds) and sees the old version.
        a.put("a99999", [4u8; 10]).await.unwrap();
        a.put("a00380", [5u8; 30]).await.unwrap();
        drop(a);
        drop(db);
        let db = Db::open(dir.path(), opts).await.unwrap();
        let mut expected = expected;
        expected[0].1 += 1;
        expected[0].2 = expected[0].2 + 6 + 10 + 30 - 100;
        assert_eq!(sizes(&db), expected);
        db.close().await.unwrap();
    });
}
