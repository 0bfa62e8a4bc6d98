//! Bad input, closed handles, dropped buckets, conflicts and isolation through the public
//! API: every misuse returns its documented error, never a panic.
//!
//! The backend comes from `Options::default()` (`IoBackend::Auto`), so
//! `RINGKV_IO_BACKEND=uring|threadpool` selects it for the whole file.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

mod common;

use common::seed;
use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::limits::{MAX_BUCKET_NAME_LEN, MAX_KEY_LEN, MAX_VALUE_LEN};
use ringkv::{Bucket, Db, Durability, Error, Iter, Options};

/// Asserts that `$e` (a `Result`) is an `Err` matching `$pat`.
macro_rules! assert_err {
    ($e:expr, $pat:pat) => {
        match $e {
            Err($pat) => {}
            Err(other) => {
                panic!("{}: expected {}, got the error {other:?}", stringify!($e), stringify!($pat))
            }
            Ok(_) => panic!("{}: expected {}, got Ok", stringify!($e), stringify!($pat)),
        }
    };
}

fn opts() -> Options {
    Options::default()
}

async fn open(dir: &Path) -> Db {
    Db::open(dir, opts()).await.expect("open")
}

async fn collect(it: ringkv::Result<Iter>) -> Vec<(Bytes, Bytes)> {
    it.expect("range").try_collect().await.expect("scan")
}

fn keys(pairs: &[(Bytes, Bytes)]) -> Vec<Vec<u8>> {
    pairs.iter().map(|(k, _)| k.to_vec()).collect()
}

fn strs(pairs: &[(Bytes, Bytes)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let b = db.bucket("b").await.unwrap();
    b.put(b"k", b"v").await.unwrap();

    assert_err!(b.get(b"").await, Error::InvalidArgument(_));
    assert_err!(b.put(b"", b"v").await, Error::InvalidArgument(_));
    assert_err!(b.delete(b"").await, Error::InvalidArgument(_));

    let mut t = b.begin().unwrap();
    assert_err!(t.put(b"", b"v"), Error::InvalidArgument(_));
    assert_err!(t.delete(b""), Error::InvalidArgument(_));
    assert_err!(t.get(b"").await, Error::InvalidArgument(_));
    // The failed calls buffered nothing: the transaction is still empty and commits.
    assert!(t.is_empty());
    t.put(b"k2", b"v2").unwrap();
    t.commit().await.unwrap();

    let snap = db.snapshot().unwrap();
    assert_err!(snap.get(&b, b"").await, Error::InvalidArgument(_));

    // Nothing bad reached the database.
    let all = collect(b.iter().await).await;
    assert_eq!(strs(&all), kv(&[("k", "v"), ("k2", "v2")]));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_value_length_limits() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let b = db.bucket("b").await.unwrap();

    let max_key = vec![b'k'; MAX_KEY_LEN];
    let long_key = vec![b'k'; MAX_KEY_LEN + 1];
    b.put(&max_key, b"at the limit").await.unwrap();
    assert_eq!(b.get(&max_key).await.unwrap().as_deref(), Some(&b"at the limit"[..]));

    assert_err!(b.get(&long_key).await, Error::InvalidArgument(_));
    assert_err!(b.put(&long_key, b"v").await, Error::InvalidArgument(_));
    assert_err!(b.delete(&long_key).await, Error::InvalidArgument(_));
    let mut t = b.begin().unwrap();
    assert_err!(t.put(&long_key, b"v"), Error::InvalidArgument(_));
    assert_err!(t.delete(&long_key), Error::InvalidArgument(_));
    assert_err!(t.get(&long_key).await, Error::InvalidArgument(_));
    assert!(t.is_empty());
    drop(t);
    assert_err!(db.snapshot().unwrap().get(&b, &long_key).await, Error::InvalidArgument(_));

    // One value just over the limit, allocated once.
    let big = vec![0u8; MAX_VALUE_LEN + 1];
    assert_err!(b.put(b"big", &big).await, Error::InvalidArgument(_));
    let mut t = b.begin().unwrap();
    assert_err!(t.put(b"big", &big), Error::InvalidArgument(_));
    assert!(t.is_empty());
    drop(t);
    drop(big);
    assert_eq!(b.get(b"big").await.unwrap(), None);

    // The key at the limit survives a checkpoint and a reopen.
    db.close().await.unwrap();
    let db = open(dir.path()).await;
    let b = db.existing_bucket("b").unwrap();
    assert_eq!(b.get(&max_key).await.unwrap().as_deref(), Some(&b"at the limit"[..]));
    let all = collect(b.iter().await).await;
    assert_eq!(keys(&all), vec![max_key.clone()]);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_rejected_at_open() {
    let base = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Options)> = vec![
        ("cache_capacity below the minimum", opts().cache_capacity(ringkv::limits::MIN_CACHE_CAPACITY - 1)),
        ("cache_capacity zero", opts().cache_capacity(0)),
        ("inline_limit zero", opts().inline_limit(0)),
        ("inline_limit over MAX_VALUE_LEN", opts().inline_limit(MAX_VALUE_LEN + 1)),
        ("wal_segment_bytes tiny", opts().wal_segment_bytes(4096)),
        ("wal_segment_bytes just under 64 KiB", opts().wal_segment_bytes(64 * 1024 - 1)),
        ("checkpoint_bytes tiny", opts().checkpoint_bytes(100)),
        ("gc_live_ratio 1.0", opts().gc_live_ratio(1.0)),
        ("gc_live_ratio negative", opts().gc_live_ratio(-0.1)),
        ("gc_live_ratio NaN", opts().gc_live_ratio(f64::NAN)),
        ("checkpoint_interval zero", opts().checkpoint_interval(Some(Duration::ZERO))),
        ("checkpoint_idle zero", opts().checkpoint_idle(Some(Duration::ZERO))),
    ];
    for (i, (what, o)) in cases.into_iter().enumerate() {
        let dir = base.path().join(format!("db{i}"));
        match Db::open(&dir, o).await {
            Err(Error::InvalidArgument(msg)) => {
                eprintln!("{what}: InvalidArgument({msg})");
            }
            Err(e) => panic!("{what}: expected InvalidArgument, got {e:?}"),
            Ok(_) => panic!("{what}: expected InvalidArgument, the database opened"),
        }
        assert!(!dir.exists(), "{what}: a rejected open must not create the directory");
    }
    // The boundaries themselves are accepted.
    let ok = opts()
        .cache_capacity(ringkv::limits::MIN_CACHE_CAPACITY)
        .inline_limit(1)
        .wal_segment_bytes(64 * 1024)
        .checkpoint_bytes(4096)
        .gc_live_ratio(0.0);
    let db = Db::open(base.path().join("ok"), ok).await.unwrap();
    let b = db.bucket("b").await.unwrap();
    b.put(b"k", b"v").await.unwrap();
    assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_names_and_missing_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    assert_err!(db.existing_bucket("nope"), Error::NotFound(_));
    assert_err!(db.drop_bucket("nope").await, Error::NotFound(_));
    assert_err!(db.bucket("").await, Error::InvalidArgument(_));
    let long = "n".repeat(MAX_BUCKET_NAME_LEN + 1);
    assert_err!(db.bucket(&long).await, Error::InvalidArgument(_));
    let longest = "n".repeat(MAX_BUCKET_NAME_LEN);
    db.bucket(&longest).await.unwrap().put(b"k", b"v").await.unwrap();
    assert_eq!(db.buckets().unwrap(), vec![longest.clone()]);
    assert_err!(db.existing_bucket("nope"), Error::NotFound(_));
    db.close().await.unwrap();

    let db = open(dir.path()).await;
    assert_eq!(db.buckets().unwrap(), vec![longest.clone()]);
    let b = db.existing_bucket(&longest).unwrap();
    assert_eq!(b.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_err!(db.existing_bucket("nope"), Error::NotFound(_));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_is_closed_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let clone = db.clone();
    let b = db.bucket("b").await.unwrap();
    for i in 0..50u32 {
        b.put(format!("k{i:03}"), format!("v{i}")).await.unwrap();
    }
    // Handles taken before close.
    let mut t = b.begin().unwrap();
    t.put(b"pending", b"x").unwrap();
    let read_only_txn = b.begin().unwrap();
    let snap = db.snapshot().unwrap();
    let mut iter = b.range(b"k".as_slice()..).await.unwrap();
    let first = iter.try_next().await.unwrap().unwrap();
    assert_eq!(&first.0[..], b"k000");

    db.close().await.unwrap();
    // A second close is harmless.
    db.close().await.unwrap();
    clone.close().await.unwrap();

    for d in [&db, &clone] {
        assert_err!(d.bucket("b").await, Error::Closed);
        assert_err!(d.bucket("new").await, Error::Closed);
        assert_err!(d.existing_bucket("b"), Error::Closed);
        assert_err!(d.drop_bucket("b").await, Error::Closed);
        assert_err!(d.buckets(), Error::Closed);
        assert_err!(d.snapshot(), Error::Closed);
        assert_err!(d.checkpoint().await, Error::Closed);
        assert_err!(d.flush().await, Error::Closed);
    }
    assert_err!(b.get(b"k001").await, Error::Closed);
    assert_err!(b.put(b"k001", b"v").await, Error::Closed);
    assert_err!(b.delete(b"k001").await, Error::Closed);
    assert_err!(b.begin(), Error::Closed);
    assert_err!(b.range(b"a".as_slice()..).await, Error::Closed);
    assert_err!(b.range_rev(b"a".as_slice()..).await, Error::Closed);
    assert_err!(b.prefix(b"k").await, Error::Closed);
    assert_err!(b.iter().await, Error::Closed);
    // A scan opened before close fails on its next step rather than reading a closed db.
    assert_err!(iter.try_next().await, Error::Closed);
    // A snapshot taken before close.
    assert_err!(snap.get(&b, b"k001").await, Error::Closed);
    assert_err!(snap.range(&b, b"a".as_slice()..).await, Error::Closed);
    assert_err!(snap.range_rev(&b, b"a".as_slice()..).await, Error::Closed);
    // Transactions begun before close.
    assert_err!(read_only_txn.get(b"k001").await, Error::Closed);
    assert_err!(read_only_txn.range(b"a".as_slice()..).await, Error::Closed);
    assert_err!(t.put(b"more", b"x"), Error::Closed);
    assert_err!(t.delete(b"k001"), Error::Closed);
    assert_err!(t.get(b"k001").await, Error::Closed);
    assert_err!(t.commit().await, Error::Closed);
    assert_err!(read_only_txn.commit().await, Error::Closed);

    // The closed database reopens with everything committed and nothing of the failed txn.
    let db = open(dir.path()).await;
    let b = db.existing_bucket("b").unwrap();
    assert_eq!(b.get(b"pending").await.unwrap(), None);
    assert_eq!(collect(b.iter().await).await.len(), 50);
    db.close().await.unwrap();
}

/// `Db::close` documents that every later call on its transactions is `Closed`: that
/// includes reading a key the transaction itself wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_own_write_read_after_close_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let b = db.bucket("b").await.unwrap();
    let mut t = b.begin().unwrap();
    t.put(b"mine", b"x").unwrap();
    db.close().await.unwrap();
    assert_err!(t.get(b"mine").await, Error::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_bucket_handles_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let b = db.bucket("gone").await.unwrap();
    let keep = db.bucket("keep").await.unwrap();
    b.put(b"k", b"v").await.unwrap();
    keep.put(b"k", b"kept").await.unwrap();
    let mut t = b.begin().unwrap();
    t.put(b"k2", b"v2").unwrap();

    db.drop_bucket("gone").await.unwrap();
    assert_err!(db.drop_bucket("gone").await, Error::NotFound(_));
    assert_err!(db.existing_bucket("gone"), Error::NotFound(_));
    assert_eq!(db.buckets().unwrap(), vec!["keep".to_string()]);
    assert_err!(b.get(b"k").await, Error::NotFound(_));
    assert_err!(b.put(b"k", b"v").await, Error::NotFound(_));
    assert_err!(b.delete(b"k").await, Error::NotFound(_));
    assert_err!(b.begin(), Error::NotFound(_));
    assert_err!(b.range(b"a".as_slice()..).await, Error::NotFound(_));
    assert_err!(b.prefix(b"k").await, Error::NotFound(_));
    // A transaction begun before the drop cannot commit into it.
    assert_err!(t.commit().await, Error::NotFound(_));

    // A new bucket of the same name starts empty; the other bucket is untouched.
    let again = db.bucket("gone").await.unwrap();
    assert_eq!(again.get(b"k").await.unwrap(), None);
    assert!(collect(again.iter().await).await.is_empty());
    again.put(b"new", b"n").await.unwrap();
    assert_eq!(keep.get(b"k").await.unwrap().as_deref(), Some(&b"kept"[..]));
    // The old handle still refers to the dropped bucket, not to the new one.
    assert_err!(b.get(b"new").await, Error::NotFound(_));
    db.close().await.unwrap();

    let db = open(dir.path()).await;
    let mut names = db.buckets().unwrap();
    names.sort();
    assert_eq!(names, vec!["gone".to_string(), "keep".to_string()]);
    let again = db.existing_bucket("gone").unwrap();
    assert_eq!(strs(&collect(again.iter().await).await), kv(&[("new", "n")]));
    assert_eq!(db.existing_bucket("keep").unwrap().get(b"k").await.unwrap().as_deref(), Some(&b"kept"[..]));
    db.close().await.unwrap();
}

/// The same, without a checkpoint between the drop and the reopen: the WAL replay must
/// not resurrect the dropped bucket's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_bucket_stays_dropped_after_wal_replay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), opts().background_checkpoints(false)).await.unwrap();
        let b = db.bucket("gone").await.unwrap();
        b.put(b"k", b"v").await.unwrap();
        db.drop_bucket("gone").await.unwrap();
        let again = db.bucket("gone").await.unwrap();
        again.put(b"k2", b"v2").await.unwrap();
        // Dropped without close: no checkpoint, recovery replays the WAL.
        drop(again);
        drop(b);
        drop(db);
    }
    let db = open(dir.path()).await;
    assert_eq!(db.buckets().unwrap(), vec!["gone".to_string()]);
    let b = db.existing_bucket("gone").unwrap();
    assert_eq!(strs(&collect(b.iter().await).await), kv(&[("k2", "v2")]));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_write_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let b = db.bucket("b").await.unwrap();
    b.put(b"x", b"0").await.unwrap();
    b.put(b"y", b"0").await.unwrap();

    // Same key: first committer wins.
    let mut t1 = b.begin().unwrap();
    let mut t2 = b.begin().unwrap();
    t1.put(b"x", b"t1").unwrap();
    t2.put(b"x", b"t2").unwrap();
    t1.commit().await.unwrap();
    let e = t2.commit().await.unwrap_err();
    assert!(e.is_conflict(), "expected Conflict, got {e:?}");
    assert_eq!(b.get(b"x").await.unwrap().as_deref(), Some(&b"t1"[..]));

    // Different keys: both commit, and both writes are visible.
    let mut t1 = b.begin().unwrap();
    let mut t2 = b.begin().unwrap();
    t1.put(b"x", b"a").unwrap();
    t2.put(b"y", b"b").unwrap();
    let ts1 = t1.commit().await.unwrap();
    let ts2 = t2.commit().await.unwrap();
    assert_ne!(ts1, ts2);
    assert_eq!(b.get(b"x").await.unwrap().as_deref(), Some(&b"a"[..]));
    assert_eq!(b.get(b"y").await.unwrap().as_deref(), Some(&b"b"[..]));

    // A delete conflicts with a put of the same key, and a put with a delete.
    let mut t1 = b.begin().unwrap();
    let mut t2 = b.begin().unwrap();
    t1.delete(b"x").unwrap();
    t2.put(b"x", b"late").unwrap();
    t1.commit().await.unwrap();
    assert_err!(t2.commit().await, Error::Conflict);
    assert_eq!(b.get(b"x").await.unwrap(), None);
    let mut t1 = b.begin().unwrap();
    let mut t2 = b.begin().unwrap();
    t1.put(b"x", b"back").unwrap();
    t2.delete(b"x").unwrap();
    t1.commit().await.unwrap();
    assert_err!(t2.commit().await, Error::Conflict);
    assert_eq!(b.get(b"x").await.unwrap().as_deref(), Some(&b"back"[..]));

    // Only writes conflict: a transaction that read a key another one changed commits
    // (snapshot isolation, no read-set validation).
    let mut reader = b.begin().unwrap();
    assert_eq!(reader.get(b"y").await.unwrap().as_deref(), Some(&b"b"[..]));
    b.put(b"y", b"changed").await.unwrap();
    reader.put(b"z", b"from reader").unwrap();
    reader.commit().await.unwrap();

    // A conflict discards the whole write set of the loser.
    let mut t1 = b.begin().unwrap();
    let mut t2 = b.begin().unwrap();
    t1.put(b"x", b"1").unwrap();
    t2.put(b"x", b"2").unwrap();
    t2.put(b"w", b"loser").unwrap();
    t1.commit().await.unwrap();
    assert_err!(t2.commit().await, Error::Conflict);
    assert_eq!(b.get(b"w").await.unwrap(), None);

    // A transaction begun after a commit does not conflict with it.
    let mut t3 = b.begin().unwrap();
    t3.put(b"x", b"3").unwrap();
    t3.commit().await.unwrap();

    // An empty or rolled-back transaction commits nothing and never conflicts.
    let t4 = b.begin().unwrap();
    b.put(b"x", b"4").await.unwrap();
    t4.commit().await.unwrap();
    let mut t5 = b.begin().unwrap();
    t5.put(b"x", b"rolled back").unwrap();
    t5.rollback();
    assert_eq!(b.get(b"x").await.unwrap().as_deref(), Some(&b"4"[..]));

    // Conflicts are detected against versions that were checkpointed.
    let mut t6 = b.begin().unwrap();
    b.put(b"x", b"5").await.unwrap();
    db.checkpoint().await.unwrap();
    t6.put(b"x", b"6").unwrap();
    assert_err!(t6.commit().await, Error::Conflict);

    db.close().await.unwrap();
    let db = open(dir.path()).await;
    let b = db.existing_bucket("b").unwrap();
    let all = collect(b.iter().await).await;
    assert_eq!(strs(&all), kv(&[("x", "5"), ("y", "changed"), ("z", "from reader")]));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let b = db.bucket("b").await.unwrap();
    let other = db.bucket("other").await.unwrap();
    for i in 0..10u32 {
        b.put(format!("k{i}"), "old").await.unwrap();
    }
    other.put(b"o", b"old").await.unwrap();

    let t = b.begin().unwrap();
    let snap = db.snapshot().unwrap();
    assert!(snap.ts() >= t.snapshot_ts());
    // Later commits: an overwrite, a delete, an insert, in both buckets.
    b.put(b"k1", b"new").await.unwrap();
    b.delete(b"k2").await.unwrap();
    b.put(b"k05", b"inserted").await.unwrap();
    other.put(b"o", b"new").await.unwrap();
    // Many more versions of one key and a checkpoint: the old snapshot must still read its
    // version after the cut (the checkpoint must not trim it).
    for i in 0..100u32 {
        b.put(b"k3", format!("v{i}")).await.unwrap();
    }
    db.checkpoint().await.unwrap();

    let old_view = || (0..10u32).map(|i| (format!("k{i}"), "old".to_string())).collect::<Vec<_>>();
    assert_eq!(t.get(b"k1").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(t.get(b"k2").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(t.get(b"k3").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(t.get(b"k05").await.unwrap(), None);
    assert_eq!(strs(&collect(t.range(b"k".as_slice()..).await).await), old_view());
    assert_eq!(snap.get(&b, b"k1").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(snap.get(&b, b"k2").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(snap.get(&b, b"k05").await.unwrap(), None);
    assert_eq!(snap.get(&other, b"o").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(strs(&collect(snap.range(&b, b"k".as_slice()..).await).await), old_view());
    let mut rev = old_view();
    rev.reverse();
    assert_eq!(strs(&collect(snap.range_rev(&b, b"k".as_slice()..).await).await), rev);

    // New readers see the new state.
    assert_eq!(b.get(b"k1").await.unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(b.get(b"k2").await.unwrap(), None);
    assert_eq!(b.get(b"k3").await.unwrap().as_deref(), Some(&b"v99"[..]));
    let snap2 = db.snapshot().unwrap();
    assert!(snap2.ts() > snap.ts());
    assert_eq!(snap2.get(&other, b"o").await.unwrap().as_deref(), Some(&b"new"[..]));
    // A scan opened before a commit does not see it.
    let mut it = b.range(b"k".as_slice()..).await.unwrap();
    b.put(b"k00", b"after the scan began").await.unwrap();
    b.put(b"k9", b"changed under the scan").await.unwrap();
    let mut seen = Vec::new();
    while let Some((k, v)) = it.try_next().await.unwrap() {
        seen.push((String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()));
    }
    assert!(!seen.iter().any(|(k, _)| k == "k00"), "{seen:?}");
    assert_eq!(seen.last().unwrap(), &("k9".to_string(), "old".to_string()));
    drop((t, snap, snap2));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let b = db.bucket("b").await.unwrap();
    for k in ["a", "b", "c", "d", "e"] {
        b.put(k, format!("{k}0")).await.unwrap();
    }
    let mut t = b.begin().unwrap();
    t.put(b"b", b"b1").unwrap(); // overwrite
    t.delete(b"c").unwrap(); // delete a committed key
    t.put(b"bb", b"new").unwrap(); // insert
    t.put(b"f", b"tmp").unwrap();
    t.delete(b"f").unwrap(); // insert then delete
    t.delete(b"zz").unwrap(); // delete of a missing key
    t.put(b"e", b"e1").unwrap();
    t.put(b"e", b"e2").unwrap(); // overwrite own write

    assert_eq!(t.get(b"a").await.unwrap().as_deref(), Some(&b"a0"[..]));
    assert_eq!(t.get(b"b").await.unwrap().as_deref(), Some(&b"b1"[..]));
    assert_eq!(t.get(b"bb").await.unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(t.get(b"c").await.unwrap(), None);
    assert_eq!(t.get(b"e").await.unwrap().as_deref(), Some(&b"e2"[..]));
    assert_eq!(t.get(b"f").await.unwrap(), None);
    assert_eq!(t.get(b"zz").await.unwrap(), None);

    let want = kv(&[("a", "a0"), ("b", "b1"), ("bb", "new"), ("d", "d0"), ("e", "e2")]);
    assert_eq!(strs(&collect(t.range(b"a".as_slice()..).await).await), want);
    let mut rev = want.clone();
    rev.reverse();
    assert_eq!(strs(&collect(t.range_rev(b"a".as_slice()..).await).await), rev);
    assert_eq!(
        strs(&collect(t.range(b"b".as_slice()..b"d".as_slice()).await).await),
        kv(&[("b", "b1"), ("bb", "new")])
    );
    assert_eq!(
        strs(&collect(t.range_rev(b"b".as_slice()..=b"d".as_slice()).await).await),
        kv(&[("d", "d0"), ("bb", "new"), ("b", "b1")])
    );
    assert_eq!(strs(&collect(t.prefix(b"b").await).await), kv(&[("b", "b1"), ("bb", "new")]));
    assert!(collect(t.prefix(b"c").await).await.is_empty());
    assert!(collect(t.range(b"e".as_slice()..b"b".as_slice()).await).await.is_empty());

    // Nothing is visible outside before the commit.
    assert_eq!(b.get(b"bb").await.unwrap(), None);
    assert_eq!(b.get(b"c").await.unwrap().as_deref(), Some(&b"c0"[..]));
    t.commit().await.unwrap();
    assert_eq!(strs(&collect(b.iter().await).await), want);
    db.close().await.unwrap();
    let db = open(dir.path()).await;
    let b = db.existing_bucket("b").unwrap();
    assert_eq!(strs(&collect(b.iter().await).await), want);
    db.close().await.unwrap();
}

fn model_range(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    lo: &Bound<Vec<u8>>,
    hi: &Bound<Vec<u8>>,
    reverse: bool,
) -> Vec<Vec<u8>> {
    let empty = match (lo, hi) {
        (Bound::Included(l), Bound::Included(h)) => l > h,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h))
        | (Bound::Excluded(l), Bound::Included(h)) => l >= h,
        _ => false,
    };
    if empty {
        return Vec::new();
    }
    let mut v: Vec<Vec<u8>> = model.range((lo.clone(), hi.clone())).map(|(k, _)| k.clone()).collect();
    if reverse {
        v.reverse();
    }
    v
}

fn random_bound(rng: &mut StdRng) -> Bound<Vec<u8>> {
    let k = format!("key{:05}", rng.gen_range(0..2100u32)).into_bytes();
    match rng.gen_range(0..5) {
        0 => Bound::Unbounded,
        1 | 2 => Bound::Included(k),
        _ => Bound::Excluded(k),
    }
}

async fn check_ranges(b: &Bucket, model: &BTreeMap<Vec<u8>, Vec<u8>>, rng: &mut StdRng, rounds: usize) {
    for _ in 0..rounds {
        let lo = random_bound(rng);
        let hi = random_bound(rng);
        for reverse in [false, true] {
            let range = (lo.clone(), hi.clone());
            let got = if reverse { b.range_rev(range).await } else { b.range(range).await };
            let got = collect(got).await;
            let want = model_range(model, &lo, &hi, reverse);
            assert_eq!(keys(&got), want, "range {lo:?}..{hi:?} reverse={reverse}");
            for (k, v) in &got {
                assert_eq!(Some(&v.to_vec()), model.get(&k.to_vec()), "value of {k:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_reverse_empty_and_prefix() {
    let seed = seed("ranges_reverse_empty_and_prefix");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts().cache_capacity(256 * 1024)).await.unwrap();
    let b = db.bucket("b").await.unwrap();
    let mut model = BTreeMap::new();
    // Enough keys (about 200 KB) to span many leaves.
    let mut t = b.begin().unwrap();
    for i in (0..2000u32).step_by(2) {
        let k = format!("key{i:05}").into_bytes();
        let v = format!("value-{i}-{}", "x".repeat(rng.gen_range(0..180))).into_bytes();
        t.put(&k, &v).unwrap();
        model.insert(k, v);
    }
    t.commit().await.unwrap();
    // Some deletes so tombstones sit in the scanned leaves.
    for i in (0..2000u32).step_by(14) {
        let k = format!("key{i:05}").into_bytes();
        b.delete(&k).await.unwrap();
        model.remove(&k);
    }
    check_ranges(&b, &model, &mut rng, 60).await;

    // Fixed edge cases.
    let all: Vec<Vec<u8>> = model.keys().cloned().collect();
    assert_eq!(keys(&collect(b.iter().await).await), all);
    let mut rev = all.clone();
    rev.reverse();
    assert_eq!(keys(&collect(b.range_rev::<&[u8], _>(..).await).await), rev);
    assert!(collect(b.range(b"z".as_slice()..b"a".as_slice()).await).await.is_empty());
    assert!(collect(b.range_rev(b"z".as_slice()..b"a".as_slice()).await).await.is_empty());
    assert!(collect(b.range(b"key00010".as_slice()..b"key00010".as_slice()).await).await.is_empty());
    assert!(collect(b.range(b"key01000".as_slice()..=b"key00010".as_slice()).await).await.is_empty());
    let one = collect(b.range(b"key00010".as_slice()..=b"key00010".as_slice()).await).await;
    assert_eq!(keys(&one), vec![b"key00010".to_vec()]);
    assert!(collect(b.range(b"zzz".as_slice()..).await).await.is_empty());
    assert!(collect(b.range(..b"a".as_slice()).await).await.is_empty());

    // Prefix scans, including prefixes ending in 0xff.
    for (k, v) in [
        (&b"pre"[..], &b"1"[..]),
        (b"pre\x00", b"2"),
        (b"pre\xff", b"3"),
        (b"pre\xff\xff", b"4"),
        (b"prf", b"5"),
        (b"pr", b"6"),
        (b"\xff", b"7"),
        (b"\xff\xff\x01", b"8"),
    ] {
        b.put(k, v).await.unwrap();
        model.insert(k.to_vec(), v.to_vec());
    }
    let pk = |p: &[u8]| -> Vec<Vec<u8>> { model.keys().filter(|k| k.starts_with(p)).cloned().collect() };
    for p in [&b"pre"[..], b"pre\xff", b"\xff", b"\xff\xff", b"pr", b"key0001", b"key", b"nope"] {
        let got = keys(&collect(b.prefix(p).await).await);
        assert_eq!(got, pk(p), "prefix {p:?}");
    }
    assert_eq!(pk(b"pre").len(), 4);

    // The same checks after the pages went to disk and the cache was emptied by a reopen.
    db.close().await.unwrap();
    let db = Db::open(dir.path(), opts().cache_capacity(256 * 1024)).await.unwrap();
    let b = db.existing_bucket("b").unwrap();
    check_ranges(&b, &model, &mut rng, 60).await;
    for p in [&b"pre"[..], b"pre\xff", b"\xff", b"key0001"] {
        assert_eq!(keys(&collect(b.prefix(p).await).await), pk(p), "prefix {p:?} after reopen");
    }
    db.close().await.unwrap();
}

/// Opens the database at `dir`, checks every key written by earlier rounds, writes key
/// `round`, reads it back, closes.
async fn executor_round(dir: &Path, round: u32, name: &str) {
    let db = Db::open(dir, opts()).await.unwrap_or_else(|e| panic!("{name}: open: {e}"));
    let b = db.bucket("exec").await.unwrap();
    for r in 0..round {
        let want = format!("written under round {r}");
        assert_eq!(b.get(format!("k{r}")).await.unwrap().as_deref(), Some(want.as_bytes()), "{name}");
    }
    let mut t = b.begin().unwrap();
    t.put(format!("k{round}"), format!("written under round {round}")).unwrap();
    t.commit().await.unwrap();
    b.put(format!("k{round}-direct"), name).await.unwrap();
    assert_eq!(b.get(format!("k{round}-direct")).await.unwrap().as_deref(), Some(name.as_bytes()));
    let n = collect(b.prefix(b"k").await).await.len();
    assert_eq!(n as u32, 2 * (round + 1), "{name}");
    db.checkpoint().await.unwrap();
    db.close().await.unwrap();
}

#[test]
fn works_on_every_executor() {
    let dir = tempfile::tempdir().unwrap();
    let run_on = |name: &str, f: &dyn Fn()| {
        let start = Instant::now();
        f();
        eprintln!("{name}: {:?}", start.elapsed());
    };
    let path = dir.path().to_path_buf();
    run_on("tokio multi-thread", &|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(executor_round(&path, 0, "tokio multi-thread"));
    });
    run_on("tokio current-thread", &|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(executor_round(
            &path,
            1,
            "tokio current-thread",
        ));
    });
    run_on("futures block_on", &|| futures::executor::block_on(executor_round(&path, 2, "block_on")));
    // Under tokio without the time and io drivers, too.
    run_on("tokio current-thread (no drivers)", &|| {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(executor_round(
            &path,
            3,
            "tokio current-thread, no drivers",
        ));
    });
}

fn spawn_all<F, T>(rt: &tokio::runtime::Runtime, futs: Vec<F>) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    rt.block_on(async {
        let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(h.await.expect("task panicked"));
        }
        out
    })
}

#[test]
fn five_hundred_databases_at_once() {
    const N: usize = 500;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let base = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let dbs: Vec<(usize, Db)> = spawn_all(
        &rt,
        (0..N)
            .map(|i| {
                let dir = base.path().join(format!("db{i:03}"));
                async move {
                    let db = Db::open(&dir, opts()).await.unwrap_or_else(|e| panic!("open db {i}: {e}"));
                    let b = db.bucket("b").await.unwrap();
                    b.put(b"key", format!("value of {i}")).await.unwrap();
                    let got = b.get(b"key").await.unwrap();
                    assert_eq!(got.as_deref(), Some(format!("value of {i}").as_bytes()));
                    (i, db)
                }
            })
            .collect(),
    );
    let opened = start.elapsed();
    assert_eq!(dbs.len(), N);
    let backend = dbs[0].1.io_backend();
    // Every database is still open and independent.
    spawn_all(
        &rt,
        dbs.iter()
            .map(|(i, db)| {
                let (i, db) = (*i, db.clone());
                async move {
                    let b = db.existing_bucket("b").unwrap();
                    assert_eq!(
                        b.get(b"key").await.unwrap().as_deref(),
                        Some(format!("value of {i}").as_bytes())
                    );
                }
            })
            .collect(),
    );
    spawn_all(
        &rt,
        dbs.into_iter()
            .map(|(i, db)| async move { db.close().await.unwrap_or_else(|e| panic!("close db {i}: {e}")) })
            .collect(),
    );
    let total = start.elapsed();
    eprintln!("{N} databases on {backend:?}: opened+written in {opened:?}, all closed after {total:?}");
    // And they reopen with their data (a sample, to stay quick).
    rt.block_on(async {
        for i in (0..N).step_by(50) {
            let db = Db::open(base.path().join(format!("db{i:03}")), opts()).await.unwrap();
            let b = db.existing_bucket("b").unwrap();
            assert_eq!(b.get(b"key").await.unwrap().as_deref(), Some(format!("value of {i}").as_bytes()));
            db.close().await.unwrap();
        }
    });
    assert!(total < Duration::from_secs(60), "500 databases took {total:?}");
}

/// A snapshot of one database used with a bucket of another is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_with_a_foreign_bucket_is_invalid() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let db1 = open(d1.path()).await;
    let db2 = open(d2.path()).await;
    let b2 = db2.bucket("b").await.unwrap();
    b2.put(b"k", b"v").await.unwrap();
    let s1 = db1.snapshot().unwrap();
    assert_err!(s1.get(&b2, b"k").await, Error::InvalidArgument(_));
    assert_err!(s1.range(&b2, b"a".as_slice()..).await, Error::InvalidArgument(_));
    db1.close().await.unwrap();
    db2.close().await.unwrap();
}

/// Per-commit durability overrides and `flush` work and keep the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_with_each_durability() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts().durability(Durability::None)).await.unwrap();
    let b = db.bucket("b").await.unwrap();
    for (i, d) in [Durability::Sync, Durability::Buffered, Durability::None].into_iter().enumerate() {
        let mut t = b.begin().unwrap();
        t.put(format!("k{i}"), format!("{d:?}")).unwrap();
        t.commit_with(d).await.unwrap();
    }
    db.flush().await.unwrap();
    drop(b);
    drop(db); // no close: the WAL alone must hold the commits
    let db = open(dir.path()).await;
    let b = db.existing_bucket("b").unwrap();
    assert_eq!(
        strs(&collect(b.iter().await).await),
        kv(&[("k0", "Sync"), ("k1", "Buffered"), ("k2", "None")])
    );
    db.close().await.unwrap();
}
