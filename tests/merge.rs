//! Merges: deleting most keys shrinks leaves until they merge into their left siblings;
//! reads, scans (both directions), checkpoints and reopen stay exact, and the merged range
//! takes new writes. Runs on the backend `RINGKV_IO_BACKEND` selects.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::collections::BTreeMap;

use futures::TryStreamExt;
use ringkv::{Db, Durability, Options};

fn key(i: u32) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

async fn check(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let b = db.existing_bucket("m").unwrap();
    let all: Vec<_> = b.iter().await.unwrap().try_collect().await.unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> = all.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(got, want, "forward scan");
    let rev: Vec<_> = b.range_rev::<Vec<u8>, _>(..).await.unwrap().try_collect().await.unwrap();
    let mut rev: Vec<(Vec<u8>, Vec<u8>)> = rev.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    rev.reverse();
    assert_eq!(rev, want, "reverse scan");
    for i in (0..6000).step_by(37) {
        assert_eq!(b.get(key(i)).await.unwrap().map(|v| v.to_vec()), model.get(&key(i)).cloned(), "get {i}");
    }
}

#[test]
fn deletes_merge_leaves_and_everything_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default()
        .durability(Durability::Buffered)
        .background_checkpoints(false)
        .cache_capacity(4 * 1024 * 1024);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut model = BTreeMap::new();
        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        let b = db.bucket("m").await.unwrap();
        for chunk in (0..6000u32).collect::<Vec<_>>().chunks(200) {
            let mut t = b.begin().unwrap();
            for &i in chunk {
                let v = vec![(i % 251) as u8; 100];
                t.put(key(i), &v).unwrap();
                model.insert(key(i), v);
            }
            t.commit().await.unwrap();
        }
        assert!(db.stats().splits > 10, "splits: {}", db.stats().splits);
        db.checkpoint().await.unwrap();
        // Delete most of the middle, one key per transaction in places, in bulk elsewhere.
        for chunk in (1000..5000u32).collect::<Vec<_>>().chunks(50) {
            let mut t = b.begin().unwrap();
            for &i in chunk {
                if i % 97 != 0 {
                    t.delete(key(i)).unwrap();
                    model.remove(&key(i));
                }
            }
            t.commit().await.unwrap();
        }
        let merges = db.stats().merges;
        assert!(merges > 0, "deletes must merge leaves: {merges}");
        check(&db, &model).await;
        db.checkpoint().await.unwrap();
        check(&db, &model).await;
        db.close().await.unwrap();

        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        check(&db, &model).await;
        // The merged ranges take writes again (and split again).
        let b = db.existing_bucket("m").unwrap();
        for chunk in (1000..5000u32).collect::<Vec<_>>().chunks(200) {
            let mut t = b.begin().unwrap();
            for &i in chunk {
                let v = vec![7u8; 120];
                t.put(key(i), &v).unwrap();
                model.insert(key(i), v);
            }
            t.commit().await.unwrap();
        }
        check(&db, &model).await;
        db.close().await.unwrap();
        let db = Db::open(dir.path(), opts).await.unwrap();
        check(&db, &model).await;
        db.close().await.unwrap();
        println!("merges {merges}");
    });
}

/// A forward scan follows each leaf's right link when the linked page's low fence is the
/// key it continues from. Paused half way while the pages ahead of it split (inserts) and
/// take deletes, then resumed, it still yields exactly the pairs of its snapshot. (No page
/// that holds a version the scan can see merges while it lives: its snapshot holds the
/// horizon, so those versions stay.)
#[test]
fn a_paused_scan_resumes_exactly_across_splits_ahead_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().durability(Durability::Buffered).background_checkpoints(false);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let db = Db::open(dir.path(), opts).await.unwrap();
        let b = db.bucket("m").await.unwrap();
        let mut want = Vec::new();
        for chunk in (0..6000u32).step_by(2).collect::<Vec<_>>().chunks(500) {
            let mut t = b.begin().unwrap();
            for &i in chunk {
                t.put(key(i), key(i)).unwrap();
                want.push(key(i));
            }
            t.commit().await.unwrap();
        }
        let splits_before = db.stats().splits;
        let mut scan = b.iter().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 1000 {
            got.push(scan.try_next().await.unwrap().unwrap().0.to_vec());
        }
        // Ahead of the scan: odd keys inserted (splits), then most of a range deleted.
        for chunk in (2001..6000u32).step_by(2).collect::<Vec<_>>().chunks(500) {
            let mut t = b.begin().unwrap();
            for &i in chunk {
                t.put(key(i), b"new").unwrap();
            }
            t.commit().await.unwrap();
        }
        for chunk in (3000..5500u32).collect::<Vec<_>>().chunks(100) {
            let mut t = b.begin().unwrap();
            for &i in chunk {
                t.delete(key(i)).unwrap();
            }
            t.commit().await.unwrap();
        }
        assert!(db.stats().splits > splits_before, "no split ahead of the scan");
        while let Some((k, v)) = scan.try_next().await.unwrap() {
            assert_eq!(k, v, "a pair of the snapshot");
            got.push(k.to_vec());
        }
        assert_eq!(got, want);
        db.close().await.unwrap();
    });
}
