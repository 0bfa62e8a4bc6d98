//! Fairness to the executor: operations served from the page cache never wait, so each
//! one consumes a unit of cooperative budget (`src/coop.rs`) and a loop of them still
//! yields to the executor at a bounded rate.
//!
//! - On a 2-worker tokio runtime, 4 tasks looping on cached gets and short scans leave a
//!   10 ms `tokio::time::sleep` ticker on the same runtime a fair share of its ticks.
//! - On a single-threaded `futures::executor::LocalPool` (no tokio budget), a task looping
//!   on cached reads, on one long scan, or on commits that never wait (`Durability::None`)
//!   lets a second task that yields K times run to its end, which stops the loop.
//!
//! The backend comes from `Options::default()`, so `RINGKV_IO_BACKEND` selects it.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::executor::LocalPool;
use futures::future::LocalBoxFuture;
use futures::task::LocalSpawnExt;
use futures::{FutureExt, TryStreamExt};
use ringkv::{Bucket, Db, Durability, Options};

const KEYS: u32 = 4_000;

/// The tests measure scheduling, so they run one at a time (the test harness would run them
/// side by side on the same two cores).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "v".repeat(40)).into_bytes()
}

/// Opens a database in `dir` and writes the `KEYS` keys to bucket "b" (all of them stay in
/// the page cache: a few hundred KiB against the default 256 MiB).
async fn filled(dir: &std::path::Path) -> (Db, Bucket) {
    let db = Db::open(dir, Options::default()).await.unwrap();
    let b = db.bucket("b").await.unwrap();
    for start in (0..KEYS).step_by(1_000) {
        let mut tx = b.begin().unwrap();
        for i in start..start + 1_000 {
            tx.put(key(i), value(i)).unwrap();
        }
        tx.commit().await.unwrap();
    }
    (db, b)
}

// ---------------------------------------------------------------------------------------
// tokio: a 10 ms ticker next to loops of cached reads

/// The measuring window of each phase.
const WINDOW: Duration = Duration::from_secs(1);

/// Counts the 10 ms sleeps that end before `end`.
async fn ticker(end: Instant) -> u64 {
    let mut ticks = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if Instant::now() > end {
            return ticks;
        }
        ticks += 1;
    }
}

/// Loops on gets of cached keys until `stop` (or until `end`, so that a loop that starves
/// the ticker still ends); returns the number of gets.
async fn get_loop(b: Bucket, stop: Arc<AtomicBool>, end: Instant, seed: u32) -> u64 {
    let mut n = 0u64;
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        i = (i + 7919) % KEYS;
        let got = b.get(key(i)).await.unwrap();
        assert_eq!(got.as_deref(), Some(&value(i)[..]), "get {i}");
        n += 1;
    }
    n
}

/// Loops on 8-key scans of cached keys (through `collect_vec` or through the stream, as
/// `collect` says) until `stop` or `end`; returns the number of pairs read.
async fn scan_loop(b: Bucket, stop: Arc<AtomicBool>, end: Instant, seed: u32, collect: bool) -> u64 {
    let mut n = 0u64;
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        i = (i + 7919) % (KEYS - 8);
        let iter = b.range(key(i)..key(i + 8)).await.unwrap();
        let pairs =
            if collect { iter.collect_vec().await.unwrap() } else { iter.try_collect().await.unwrap() };
        let want: Vec<(Vec<u8>, Vec<u8>)> = (i..i + 8).map(|j| (key(j), value(j))).collect();
        let got: Vec<(Vec<u8>, Vec<u8>)> = pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(got, want, "scan from {i}");
        n += got.len() as u64;
    }
    n
}

#[test]
fn cached_reads_leave_a_tokio_ticker_its_ticks() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (db, b) = filled(dir.path()).await;
        // Every key is read once, so the loops below start on a warm cache.
        for i in 0..KEYS {
            assert_eq!(b.get(key(i)).await.unwrap().as_deref(), Some(&value(i)[..]));
        }

        let undisturbed = tokio::spawn(ticker(Instant::now() + WINDOW)).await.unwrap();

        // One deadline for all: a loop (or the ticker) that gets to start late loses its time.
        let end = Instant::now() + WINDOW;
        let stop = Arc::new(AtomicBool::new(false));
        let loops = vec![
            tokio::spawn(get_loop(b.clone(), stop.clone(), end, 1)),
            tokio::spawn(get_loop(b.clone(), stop.clone(), end, 2)),
            tokio::spawn(scan_loop(b.clone(), stop.clone(), end, 3, true)),
            tokio::spawn(scan_loop(b.clone(), stop.clone(), end, 4, false)),
        ];
        let disturbed = tokio::spawn(ticker(end)).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let mut work = Vec::new();
        for l in loops {
            work.push(l.await.unwrap());
        }
        eprintln!(
            "ticks in {WINDOW:?}: undisturbed {undisturbed}, next to the read loops {disturbed}; \
             gets {} + {}, scanned pairs {} + {}",
            work[0], work[1], work[2], work[3]
        );
        assert!(undisturbed >= 20, "the undisturbed ticker ticked only {undisturbed} times");
        assert!(
            disturbed * 3 >= undisturbed,
            "the read loops starved the ticker: {disturbed} ticks against {undisturbed} undisturbed"
        );
        assert!(work.iter().all(|&n| n > 0), "a read loop never ran: {work:?}");
        db.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// futures::executor::LocalPool: no tokio budget at all

/// A future that returns `Pending` once (waking itself) and then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// How many times the second task must be polled before it stops the loop.
const YIELDS: u32 = 10;
/// The loop's bound when nothing stops it (it then ran without ever yielding).
const MAX_OPS: u64 = 200_000;

/// Runs `looping` (which returns its operation count, stopping when the flag it is given is
/// set or after `MAX_OPS` operations) next to a task that yields `YIELDS` times and then sets
/// the flag, on one `LocalPool`. Returns the loop's operation count.
fn ops_before_the_other_task_ran(
    pool: &mut LocalPool,
    looping: impl FnOnce(Rc<Cell<bool>>) -> LocalBoxFuture<'static, u64>,
) -> u64 {
    let stop = Rc::new(Cell::new(false));
    let ops = Rc::new(Cell::new(None));
    let spawner = pool.spawner();
    let (flag, out) = (stop.clone(), ops.clone());
    let work = looping(flag);
    spawner.spawn_local(async move { out.set(Some(work.await)) }).unwrap();
    spawner
        .spawn_local(async move {
            for _ in 0..YIELDS {
                YieldOnce(false).await;
            }
            stop.set(true);
        })
        .unwrap();
    pool.run();
    ops.get().expect("the loop finished")
}

#[test]
fn cached_operations_yield_to_a_local_pool() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut pool = LocalPool::new();
    let (db, b) = pool.run_until(filled(dir.path()));
    pool.run_until(async {
        for i in 0..KEYS {
            assert_eq!(b.get(key(i)).await.unwrap().as_deref(), Some(&value(i)[..]));
        }
    });

    let mut results = Vec::new();
    let bucket = b.clone();
    results.push((
        "Bucket::get",
        ops_before_the_other_task_ran(&mut pool, move |stop| {
            async move {
                let mut n = 0u64;
                while !stop.get() && n < MAX_OPS {
                    let i = (n as u32).wrapping_mul(7919) % KEYS;
                    assert_eq!(bucket.get(key(i)).await.unwrap().as_deref(), Some(&value(i)[..]));
                    n += 1;
                }
                n
            }
            .boxed_local()
        }),
    ));
    let bucket = b.clone();
    results.push((
        "Txn::get",
        ops_before_the_other_task_ran(&mut pool, move |stop| {
            async move {
                let tx = bucket.begin().unwrap();
                let mut n = 0u64;
                while !stop.get() && n < MAX_OPS {
                    let i = (n as u32).wrapping_mul(7919) % KEYS;
                    assert_eq!(tx.get(key(i)).await.unwrap().as_deref(), Some(&value(i)[..]));
                    n += 1;
                }
                n
            }
            .boxed_local()
        }),
    ));
    let (bucket, snap) = (b.clone(), db.snapshot().unwrap());
    results.push((
        "Snapshot::get",
        ops_before_the_other_task_ran(&mut pool, move |stop| {
            async move {
                let mut n = 0u64;
                while !stop.get() && n < MAX_OPS {
                    let i = (n as u32).wrapping_mul(7919) % KEYS;
                    assert_eq!(snap.get(&bucket, key(i)).await.unwrap().as_deref(), Some(&value(i)[..]));
                    n += 1;
                }
                n
            }
            .boxed_local()
        }),
    ));
    let bucket = b.clone();
    results.push((
        "scan items",
        ops_before_the_other_task_ran(&mut pool, move |stop| {
            async move {
                let mut n = 0u64;
                'scans: while n < MAX_OPS {
                    let mut iter = bucket.iter().await.unwrap();
                    let mut i = 0;
                    while let Some((k, v)) = iter.try_next().await.unwrap() {
                        assert_eq!((&k[..], &v[..]), (&key(i)[..], &value(i)[..]));
                        i += 1;
                        n += 1;
                        if stop.get() || n >= MAX_OPS {
                            break 'scans;
                        }
                    }
                    assert_eq!(i, KEYS);
                }
                n
            }
            .boxed_local()
        }),
    ));
    let bucket = b.clone();
    results.push((
        "Txn::commit_with(None)",
        ops_before_the_other_task_ran(&mut pool, move |stop| {
            async move {
                let mut n = 0u64;
                // Fewer commits than reads: each one adds a version to the tree.
                while !stop.get() && n < MAX_OPS / 10 {
                    let mut tx = bucket.begin().unwrap();
                    tx.put(format!("commit-{}", n % 64), n.to_le_bytes()).unwrap();
                    tx.commit_with(Durability::None).await.unwrap();
                    n += 1;
                }
                n
            }
            .boxed_local()
        }),
    ));

    for (what, n) in &results {
        eprintln!("{what}: {n} operations before the other task was polled {YIELDS} times");
    }
    for (what, n) in &results {
        // Each forced yield lets the other task run once, so the loop stops after about
        // YIELDS budget periods; a loop that never yields runs to its bound.
        assert!(*n < 5_000, "{what}: {n} operations ran before a task yielding {YIELDS} times finished");
    }
    pool.run_until(db.close()).unwrap();
}
