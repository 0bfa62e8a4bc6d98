//! Online backup (`Db::backup`).
//!
//! - `backup_during_a_write_storm_holds_exactly_the_commits_up_to_its_cut`: 6 tasks commit
//!   without pause (each commit a new key in bucket `a` and, every other time, its twin in
//!   bucket `b`, one transaction), while a small cache evicts and background checkpoints
//!   run; a backup is taken in the middle. The copy passes `Db::check`, opens, and holds
//!   exactly the commits whose timestamp is at or below the backup's cut (each present
//!   whole, in both buckets, or absent whole), every commit acknowledged before the backup
//!   started among them; at least one commit lands after the cut, so the storm did run on.
//!   The copy then takes writes of its own, and the source is unchanged by them.
//! - `backup_destination_and_read_only_errors`: a non-empty destination is
//!   `InvalidArgument` and is left as it was; a read-only open is `ReadOnly`; a backup of
//!   a backup opens.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use ringkv::{Db, Durability, Error, Options};

const TASKS: usize = 6;

/// An acknowledged commit: its key, its timestamp, whether it wrote the key to bucket `b`
/// too.
type Acked = (Vec<u8>, u64, bool);

fn options() -> Options {
    Options::default().durability(Durability::Buffered).cache_capacity(128 * 1024).checkpoint_bytes(64 * 1024)
}

fn key(task: usize, n: u64) -> Vec<u8> {
    format!("t{task:02}/{n:08}").into_bytes()
}

async fn all(db: &Db, bucket: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let b = db.existing_bucket(bucket).unwrap();
    b.iter().await.unwrap().map_ok(|(k, v)| (k.to_vec(), v.to_vec())).try_collect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_during_a_write_storm_holds_exactly_the_commits_up_to_its_cut() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let dest = copies.path().join("backup");
    let db = Db::open(dir.path(), options()).await.unwrap();
    let (a, b) = (db.bucket("a").await.unwrap(), db.bucket("b").await.unwrap());
    // (key, commit timestamp, written to b too) of every acknowledged commit.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (db, a, b, acked, stop) = (db.clone(), a.clone(), b.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let k = key(t, n);
                    let twin = n.is_multiple_of(2);
                    let mut tx = db.begin().unwrap();
                    tx.put(&a, &k, vec![b'v'; 100 + (n % 300) as usize]).unwrap();
                    if twin {
                        tx.put(&b, &k, n.to_le_bytes()).unwrap();
                    }
                    let ts = tx.commit().await.unwrap();
                    acked.lock().unwrap().push((k, ts, twin));
                    n += 1;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Let the storm build up: wait for commits, not for time.
    while acked.lock().unwrap().len() < 3000 {
        tokio::task::yield_now().await;
    }
    let before: Vec<Acked> = acked.lock().unwrap().clone();
    let backup = db.backup(&dest).await.unwrap();
    // Let commits land after the backup too.
    let after_backup = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < after_backup + 500 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let cut = backup.cut_ts;
    eprintln!(
        "backup: cut {cut}, {} files, {} bytes; {} commits before the backup, {} in all",
        backup.files,
        backup.bytes,
        before.len(),
        acked.len()
    );
    assert!(backup.files > 0 && backup.bytes > 0);
    assert!(
        before.iter().all(|(_, ts, _)| *ts <= cut),
        "a commit acknowledged before the backup is above its cut"
    );
    assert!(
        acked.iter().any(|(_, ts, _)| *ts > cut),
        "no commit landed after the cut: the storm did not run on"
    );

    let report = Db::check(&dest, &Options::default()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.wal_records_to_replay, 0, "the backup needs no WAL");
    let copy = Db::open(&dest, Options::default()).await.unwrap();
    assert_eq!(copy.buckets().unwrap(), ["a", "b"]);
    let (in_a, in_b) = (all(&copy, "a").await, all(&copy, "b").await);
    let want_a: BTreeMap<Vec<u8>, usize> =
        acked.iter().filter(|(_, ts, _)| *ts <= cut).map(|(k, ts, _)| (k.clone(), *ts as usize)).collect();
    let want_b: std::collections::BTreeSet<&Vec<u8>> =
        acked.iter().filter(|(_, ts, twin)| *ts <= cut && *twin).map(|(k, _, _)| k).collect();
    assert_eq!(
        in_a.keys().collect::<Vec<_>>(),
        want_a.keys().collect::<Vec<_>>(),
        "bucket a holds exactly the commits at or below the cut"
    );
    assert_eq!(
        in_b.keys().collect::<std::collections::BTreeSet<_>>(),
        want_b,
        "bucket b holds exactly the twins at or below the cut"
    );
    for (k, v) in &in_a {
        let n = std::str::from_utf8(&k[4..]).unwrap().parse::<u64>().unwrap();
        assert_eq!(v.len(), 100 + (n % 300) as usize, "value of {}", String::from_utf8_lossy(k));
    }
    // The copy is a database of its own: it takes writes; the source does not see them.
    copy.existing_bucket("a").unwrap().put(b"only-in-the-copy", b"1").await.unwrap();
    copy.close().await.unwrap();
    assert_eq!(a.get(b"only-in-the-copy").await.unwrap(), None);
    let copy = Db::open(&dest, Options::default().read_only(true)).await.unwrap();
    assert!(copy.existing_bucket("a").unwrap().get(b"only-in-the-copy").await.unwrap().is_some());
    copy.close().await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test]
async fn backup_destination_and_read_only_errors() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).await.unwrap();
    db.bucket("b").await.unwrap().put(b"k", b"v").await.unwrap();
    // A destination with something in it is refused and left alone.
    let busy = copies.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), b"mine").unwrap();
    assert!(matches!(db.backup(&busy).await, Err(Error::InvalidArgument(_))));
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // An empty one is fine; so is a backup of the backup.
    let empty = copies.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let first = db.backup(&empty).await.unwrap();
    db.close().await.unwrap();
    let copy = Db::open(&empty, Options::default()).await.unwrap();
    let second = copy.backup(copies.path().join("second")).await.unwrap();
    assert!(second.cut_ts >= first.cut_ts);
    copy.close().await.unwrap();
    let again = Db::open(copies.path().join("second"), Options::default().read_only(true)).await.unwrap();
    assert_eq!(again.existing_bucket("b").unwrap().get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    // A read-only open cannot run the backup's checkpoint.
    assert!(matches!(again.backup(copies.path().join("third")).await, Err(Error::ReadOnly(_))));
    again.close().await.unwrap();
}
