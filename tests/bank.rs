//! The bank: concurrent transfers between accounts under snapshot isolation, checked by
//! concurrent readers, with checkpoints (and, in one variant, cache eviction) running at
//! the same time.
//!
//! Invariants checked:
//! - every snapshot and every read-only transaction sums the balances to exactly the
//!   initial total, by a range scan and by individual gets, and both read the same values;
//! - within one snapshot, the per-task commit counters agree with the transfer log;
//! - at the end (and after a reopen) the total is unchanged, each balance equals the
//!   initial balance replayed through the transfer log, and the log holds exactly the
//!   transfers the tasks saw commit.
//!
//! Randomized: the seed is printed; `RINGKV_TEST_SEED=<n>` replays the random choices
//! (the interleaving of tasks is up to the scheduler).
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

mod common;

use common::seed;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::{Bucket, Db, Durability, Error, Options, Snapshot, Txn};
use tokio::sync::Notify;

const INITIAL_BALANCE: u64 = 1000;
/// A transaction retried this often without committing is a livelock.
const MAX_RETRIES: u32 = 100_000;

#[derive(Clone, Debug)]
struct Config {
    name: &'static str,
    durability: Durability,
    cache_capacity: usize,
    accounts: u32,
    tasks: usize,
    transfers_per_task: usize,
    /// Filler keys per account (between the account keys), to make the tree larger than
    /// the cache.
    filler_per_account: u32,
    filler_len: usize,
    /// Yield between the reads and the writes of a transfer (widens the conflict window).
    yield_in_txn: bool,
    max_amount: u64,
    /// End by dropping the database without `close` (every commit was acknowledged
    /// durable, so recovery must find all of them); else close it.
    crash_at_end: bool,
}

fn acct(i: u32) -> Vec<u8> {
    format!("acct/{i:04}").into_bytes()
}

/// Account keys are exactly this long; filler keys (`acct/0000/f00`) are longer.
const ACCT_KEY_LEN: usize = 9;

fn filler(i: u32, j: u32) -> Vec<u8> {
    format!("acct/{i:04}/f{j:02}").into_bytes()
}

fn log_key(task: usize, n: u64) -> Vec<u8> {
    format!("log/{task:02}/{n:08}").into_bytes()
}

fn cnt_key(task: usize) -> Vec<u8> {
    format!("cnt/{task:02}").into_bytes()
}

fn u64_of(key: &[u8], v: &[u8]) -> u64 {
    let arr: [u8; 8] = v.try_into().unwrap_or_else(|_| {
        panic!("value of {:?} is {} bytes, not 8", String::from_utf8_lossy(key), v.len())
    });
    u64::from_le_bytes(arr)
}

fn encode_transfer(from: u32, to: u32, amount: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&from.to_le_bytes());
    v.extend_from_slice(&to.to_le_bytes());
    v.extend_from_slice(&amount.to_le_bytes());
    v
}

fn decode_transfer(v: &[u8]) -> (u32, u32, u64) {
    assert_eq!(v.len(), 16, "transfer log entry of {} bytes", v.len());
    (
        u32::from_le_bytes(v[0..4].try_into().unwrap()),
        u32::from_le_bytes(v[4..8].try_into().unwrap()),
        u64::from_le_bytes(v[8..16].try_into().unwrap()),
    )
}

fn is_account(k: &[u8]) -> bool {
    k.len() == ACCT_KEY_LEN
}

/// A read view: a snapshot or a transaction.
enum View<'a> {
    Snap(&'a Snapshot, &'a Bucket),
    Txn(&'a Txn),
}

impl View<'_> {
    async fn get(&self, k: &[u8]) -> ringkv::Result<Option<Bytes>> {
        match self {
            View::Snap(s, b) => s.get(b, k).await,
            View::Txn(t) => t.get(k).await,
        }
    }

    async fn range(&self, lo: &[u8], hi: &[u8]) -> ringkv::Result<Vec<(Bytes, Bytes)>> {
        let it = match self {
            View::Snap(s, b) => s.range(b, lo..hi).await?,
            View::Txn(t) => t.range(lo..hi).await?,
        };
        it.try_collect().await
    }
}

/// Reads every balance of `view` by a scan and by gets; checks both against each other and
/// against the total; checks the counters against the log. Returns the balances.
async fn check_view(view: &View<'_>, cfg: &Config, what: &str) -> Vec<u64> {
    let total = u64::from(cfg.accounts) * INITIAL_BALANCE;
    let scanned: Vec<(Bytes, Bytes)> =
        view.range(b"acct/", b"acct0").await.unwrap_or_else(|e| panic!("{what}: scan: {e}"));
    let mut by_scan = Vec::with_capacity(cfg.accounts as usize);
    let mut fillers = 0u32;
    for (k, v) in &scanned {
        if is_account(k) {
            assert_eq!(
                k.as_ref(),
                acct(by_scan.len() as u32).as_slice(),
                "{what}: account keys out of order"
            );
            by_scan.push(u64_of(k, v));
        } else {
            fillers += 1;
        }
    }
    assert_eq!(by_scan.len(), cfg.accounts as usize, "{what}: accounts seen by the scan");
    assert_eq!(fillers, cfg.accounts * cfg.filler_per_account, "{what}: filler keys seen by the scan");
    let mut by_get = Vec::with_capacity(cfg.accounts as usize);
    for i in 0..cfg.accounts {
        let k = acct(i);
        let v = view.get(&k).await.unwrap_or_else(|e| panic!("{what}: get: {e}"));
        let v = v.unwrap_or_else(|| panic!("{what}: account {i} missing"));
        by_get.push(u64_of(&k, &v));
    }
    let (sum_scan, sum_get) = (by_scan.iter().sum::<u64>(), by_get.iter().sum::<u64>());
    assert_eq!(sum_scan, total, "{what}: total by range scan");
    assert_eq!(sum_get, total, "{what}: total by gets");
    assert_eq!(by_scan, by_get, "{what}: the scan and the gets of one view disagree");

    // The commit counters and the transfer log of one view agree.
    let counters = view.range(b"cnt/", b"cnt0").await.unwrap_or_else(|e| panic!("{what}: cnt scan: {e}"));
    let counted: u64 = counters.iter().map(|(k, v)| u64_of(k, v)).sum();
    let logged = view.range(b"log/", b"log0").await.unwrap_or_else(|e| panic!("{what}: log scan: {e}"));
    assert_eq!(logged.len() as u64, counted, "{what}: log entries vs counters");
    by_scan
}

#[derive(Debug, Default, Clone, Copy)]
struct TaskResult {
    commits: u64,
    conflicts: u64,
    insufficient: u64,
}

async fn read_balance(t: &Txn, i: u32) -> u64 {
    let k = acct(i);
    let v = t.get(&k).await.unwrap_or_else(|e| panic!("get account {i}: {e}"));
    u64_of(&k, &v.unwrap_or_else(|| panic!("account {i} missing")))
}

async fn transfer_task(b: Bucket, cfg: Config, task: usize, seed: u64, committed: Arc<Notify>) -> TaskResult {
    let mut rng = StdRng::seed_from_u64(seed ^ (task as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut r = TaskResult::default();
    for _ in 0..cfg.transfers_per_task {
        let from = rng.gen_range(0..cfg.accounts);
        let to = (from + rng.gen_range(1..cfg.accounts)) % cfg.accounts;
        let amount = rng.gen_range(1..=cfg.max_amount);
        let mut retries = 0;
        loop {
            retries += 1;
            assert!(retries < MAX_RETRIES, "task {task}: transfer retried {MAX_RETRIES} times");
            let mut t = b.begin().expect("begin");
            let fb = read_balance(&t, from).await;
            let tb = read_balance(&t, to).await;
            if cfg.yield_in_txn {
                tokio::task::yield_now().await;
            }
            if fb < amount {
                r.insufficient += 1;
                t.rollback();
                break;
            }
            t.put(acct(from), (fb - amount).to_le_bytes()).unwrap();
            t.put(acct(to), (tb + amount).to_le_bytes()).unwrap();
            t.put(log_key(task, r.commits), encode_transfer(from, to, amount)).unwrap();
            t.put(cnt_key(task), (r.commits + 1).to_le_bytes()).unwrap();
            match t.commit().await {
                Ok(_) => {
                    r.commits += 1;
                    committed.notify_one();
                    break;
                }
                Err(Error::Conflict) => r.conflicts += 1,
                Err(e) => panic!("task {task}: commit failed: {e:?}"),
            }
        }
    }
    r
}

/// Checks the whole final state against what the tasks saw commit.
async fn verify_final(db: &Db, cfg: &Config, results: &[TaskResult], what: &str) {
    let b = db.existing_bucket("bank").unwrap();
    let snap = db.snapshot().unwrap();
    let balances = check_view(&View::Snap(&snap, &b), cfg, what).await;
    let mut replay = vec![i128::from(INITIAL_BALANCE); cfg.accounts as usize];
    for (task, r) in results.iter().enumerate() {
        let cnt = snap.get(&b, cnt_key(task)).await.unwrap();
        let cnt = cnt.map_or(0, |v| u64_of(&cnt_key(task), &v));
        assert_eq!(cnt, r.commits, "{what}: counter of task {task}");
        let lo = format!("log/{task:02}/").into_bytes();
        let hi = format!("log/{task:02}0").into_bytes();
        let log: Vec<(Bytes, Bytes)> =
            snap.range(&b, lo.as_slice()..hi.as_slice()).await.unwrap().try_collect().await.unwrap();
        assert_eq!(log.len() as u64, r.commits, "{what}: log entries of task {task}");
        for (n, (k, v)) in log.iter().enumerate() {
            assert_eq!(k.as_ref(), log_key(task, n as u64).as_slice(), "{what}: log key");
            let (from, to, amount) = decode_transfer(v);
            replay[from as usize] -= i128::from(amount);
            replay[to as usize] += i128::from(amount);
        }
    }
    let replay: Vec<u64> = replay.into_iter().map(|x| u64::try_from(x).expect("negative balance")).collect();
    assert_eq!(balances, replay, "{what}: balances differ from the replayed transfer log");
    // Filler values are intact.
    for i in (0..cfg.accounts).step_by(7) {
        for j in 0..cfg.filler_per_account {
            let v = snap.get(&b, filler(i, j)).await.unwrap().expect("filler");
            assert_eq!(v.as_ref(), filler_value(cfg, i, j).as_slice(), "{what}: filler {i}/{j}");
        }
    }
}

fn filler_value(cfg: &Config, i: u32, j: u32) -> Vec<u8> {
    let mut v = format!("filler {i} {j} ").into_bytes();
    v.resize(cfg.filler_len, b'.');
    v
}

fn options(cfg: &Config) -> Options {
    Options::default()
        .durability(cfg.durability)
        .cache_capacity(cfg.cache_capacity)
        // With a crash at the end, only the test's own checkpoints run, so nothing of the
        // dropped instance runs on while the database is reopened.
        .background_checkpoints(!cfg.crash_at_end)
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    commits: u64,
    conflicts: u64,
}

async fn run_bank(cfg: Config) -> Summary {
    let seed = seed(cfg.name);
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options(&cfg)).await.unwrap();
    let b = db.bucket("bank").await.unwrap();
    {
        let mut t = b.begin().unwrap();
        for i in 0..cfg.accounts {
            t.put(acct(i), INITIAL_BALANCE.to_le_bytes()).unwrap();
            for j in 0..cfg.filler_per_account {
                t.put(filler(i, j), filler_value(&cfg, i, j)).unwrap();
            }
        }
        t.commit().await.unwrap();
    }
    db.checkpoint().await.unwrap();
    let before = db.stats();

    let done = Arc::new(AtomicBool::new(false));
    let checker = {
        let (db, b, cfg, done) = (db.clone(), b.clone(), cfg.clone(), done.clone());
        tokio::spawn(async move {
            let mut last_ts = 0;
            let mut n = 0u64;
            // At least a few rounds even if the transfers finish first.
            while !done.load(Ordering::Acquire) || n < 3 {
                let snap = db.snapshot().unwrap();
                assert!(snap.ts() >= last_ts, "snapshot timestamps went backwards");
                last_ts = snap.ts();
                check_view(&View::Snap(&snap, &b), &cfg, &format!("snapshot at ts {last_ts}")).await;
                drop(snap);
                let t = b.begin().unwrap();
                let ts = t.snapshot_ts();
                check_view(&View::Txn(&t), &cfg, &format!("read-only txn at ts {ts}")).await;
                // A read-only transaction commits without writing.
                t.commit().await.unwrap();
                n += 1;
                // Reads of cached pages complete without yielding: let the others run.
                tokio::task::yield_now().await;
            }
            n
        })
    };
    // Checkpoints back to back, each once at least one commit happened since the previous
    // one started.
    let committed = Arc::new(Notify::new());
    let checkpointer = {
        let (db, done, committed) = (db.clone(), done.clone(), committed.clone());
        tokio::spawn(async move {
            let (mut n, mut pages) = (0u64, 0usize);
            while !done.load(Ordering::Acquire) {
                let s = db.checkpoint().await.unwrap_or_else(|e| panic!("checkpoint: {e:?}"));
                n += 1;
                pages += s.pages;
                committed.notified().await;
            }
            (n, pages)
        })
    };
    let workers: Vec<_> = (0..cfg.tasks)
        .map(|task| tokio::spawn(transfer_task(b.clone(), cfg.clone(), task, seed, committed.clone())))
        .collect();
    let mut results = Vec::with_capacity(cfg.tasks);
    for w in workers {
        results.push(w.await.expect("transfer task panicked"));
    }
    let transfer_time = start.elapsed();
    done.store(true, Ordering::Release);
    committed.notify_one();
    let (ckpts, ckpt_pages) = checkpointer.await.expect("checkpoint task panicked");
    let n_checks = checker.await.expect("checker task panicked");
    let after = db.stats();

    let commits: u64 = results.iter().map(|r| r.commits).sum();
    let conflicts: u64 = results.iter().map(|r| r.conflicts).sum();
    let insufficient: u64 = results.iter().map(|r| r.insufficient).sum();
    let fsyncs = after.wal_fsyncs - before.wal_fsyncs;
    eprintln!(
        "{}: backend {:?}, {} tasks: {commits} commits, {conflicts} conflicts, {insufficient} \
         refused for funds in {transfer_time:?}; {n_checks} checker rounds, {ckpts} checkpoints \
         ({ckpt_pages} pages); WAL: {} records, {fsyncs} fsyncs ({:.3} fsyncs per commit); \
         cache {} bytes",
        cfg.name,
        db.io_backend(),
        cfg.tasks,
        after.wal_records - before.wal_records,
        fsyncs as f64 / commits.max(1) as f64,
        after.cache_bytes,
    );
    assert_eq!(commits + insufficient, (cfg.tasks * cfg.transfers_per_task) as u64);
    assert!(commits > 0);
    assert_eq!(after.wal_records - before.wal_records, commits, "one WAL record per commit");
    assert!(ckpts > 0, "the checkpoint task ran");
    let filler_bytes = i64::from(cfg.accounts * cfg.filler_per_account) * cfg.filler_len as i64;
    if filler_bytes > 2 * cfg.cache_capacity as i64 {
        // The tree is larger than the cache. Once a checkpoint made every page clean, the
        // next write (which runs eviction) must bring the cache back under its capacity.
        db.checkpoint().await.unwrap();
        b.put(b"zz-after-run", b"x").await.unwrap();
        let cache = db.stats().cache_bytes;
        eprintln!(
            "{}: cache after checkpoint + write: {cache} bytes (capacity {})",
            cfg.name, cfg.cache_capacity
        );
        assert!(
            cache <= cfg.cache_capacity as i64,
            "cache holds {cache} bytes after a checkpoint and a write; capacity {}, data {filler_bytes}",
            cfg.cache_capacity
        );
    }
    if cfg.durability == Durability::Sync {
        assert!(fsyncs < commits, "group commit: {fsyncs} WAL fsyncs for {commits} Sync commits");
    }
    verify_final(&db, &cfg, &results, "end of run").await;

    if cfg.crash_at_end {
        drop(b);
        drop(db);
    } else {
        db.close().await.unwrap();
    }
    let db = Db::open(dir.path(), options(&cfg)).await.unwrap();
    verify_final(&db, &cfg, &results, "after reopen").await;
    // A second cycle: close (checkpoint) and reopen once more.
    db.close().await.unwrap();
    let db = Db::open(dir.path(), options(&cfg)).await.unwrap();
    verify_final(&db, &cfg, &results, "after the second reopen").await;
    db.close().await.unwrap();
    eprintln!("{}: total {:?}", cfg.name, start.elapsed());
    Summary { commits, conflicts }
}

/// Sync commits from 16 tasks: group commit must share fsyncs. Ends with a drop without
/// close: every acknowledged commit must be recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_sync_group_commit() {
    let cfg = Config {
        name: "bank_sync_group_commit",
        durability: Durability::Sync,
        cache_capacity: 64 * 1024 * 1024,
        accounts: 100,
        tasks: 16,
        transfers_per_task: 250,
        filler_per_account: 0,
        filler_len: 0,
        yield_in_txn: false,
        max_amount: 300,
        crash_at_end: true,
    };
    run_bank(cfg).await;
}

/// A measurement of group commit alone: 16 concurrent Sync committers on disjoint keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_fsyncs() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default().durability(Durability::Sync)).await.unwrap();
    let b = db.bucket("g").await.unwrap();
    let before = db.stats();
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    b.put(format!("t{task:02}/{i:04}"), [task as u8; 16]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let after = db.stats();
    let commits = (TASKS * PER_TASK) as u64;
    let fsyncs = after.wal_fsyncs - before.wal_fsyncs;
    eprintln!(
        "group commit on {:?}: {commits} Sync commits from {TASKS} tasks, {fsyncs} fsyncs \
         ({:.3} per commit, {:.1} commits per fsync) in {elapsed:?}",
        db.io_backend(),
        fsyncs as f64 / commits as f64,
        commits as f64 / fsyncs.max(1) as f64
    );
    assert_eq!(after.wal_records - before.wal_records, commits);
    assert!(fsyncs > 0, "Sync commits must fsync");
    assert!(fsyncs < commits, "no group commit: {fsyncs} fsyncs for {commits} commits");
    // "Clearly less": with 16 committers waiting at once, batches average well above one.
    assert!(fsyncs * 2 <= commits, "weak group commit: {fsyncs} fsyncs for {commits} commits");
    let n = b.prefix(b"t").await.unwrap().collect_vec().await.unwrap().len();
    assert_eq!(n as u64, commits);
    drop(b);
    drop(db);
    let db = Db::open(dir.path(), Options::default()).await.unwrap();
    let b = db.existing_bucket("g").unwrap();
    let n = b.prefix(b"t").await.unwrap().collect_vec().await.unwrap().len();
    assert_eq!(n as u64, commits, "every acknowledged Sync commit is recovered");
    db.close().await.unwrap();
}

/// `Durability::None` with a 256 KiB cache and a tree several times larger: eviction and
/// reloads interleave with transfers, checks and checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_no_sync_small_cache() {
    let cfg = Config {
        name: "bank_no_sync_small_cache",
        durability: Durability::None,
        cache_capacity: 256 * 1024,
        accounts: 100,
        tasks: 12,
        transfers_per_task: 250,
        filler_per_account: 40,
        filler_len: 150,
        yield_in_txn: false,
        max_amount: 300,
        crash_at_end: false,
    };
    run_bank(cfg).await;
}

/// Few accounts, many tasks, a yield inside every transaction: conflicts are certain and
/// every one of them must be a clean retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_buffered_high_contention() {
    let cfg = Config {
        name: "bank_buffered_high_contention",
        durability: Durability::Buffered,
        cache_capacity: 1024 * 1024,
        accounts: 8,
        tasks: 16,
        transfers_per_task: 400,
        filler_per_account: 0,
        filler_len: 0,
        yield_in_txn: true,
        max_amount: 500,
        crash_at_end: false,
    };
    let min_conflicts = (cfg.tasks * cfg.transfers_per_task / 50) as u64;
    let sum = run_bank(cfg).await;
    assert!(
        sum.conflicts >= min_conflicts,
        "high contention produced only {} conflicts in {} commits (expected at least {min_conflicts})",
        sum.conflicts,
        sum.commits
    );
}

/// Reads of evicted pages race with checkpoints that move pages to new files and delete the
/// files nothing points into any more. Every read must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_race_file_removal() {
    const KEYS: usize = 2000;
    const WRITES: usize = 4000;
    const READERS: usize = 3;
    let seed = seed("reloads_race_file_removal");
    let dir = tempfile::tempdir().unwrap();
    let o = Options::default()
        .durability(Durability::None)
        .cache_capacity(64 * 1024)
        .background_checkpoints(false);
    let db = Db::open(dir.path(), o).await.unwrap();
    let b = db.bucket("r").await.unwrap();
    let k = |i: usize| format!("key{i:05}").into_bytes();
    let mut t = b.begin().unwrap();
    for i in 0..KEYS {
        t.put(k(i), [0u8; 100]).unwrap();
    }
    t.commit().await.unwrap();
    db.checkpoint().await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let wrote = Arc::new(Notify::new());
    let checkpointed = Arc::new(Notify::new());
    // A checkpoint after every twenty writes (the writer waits for it): pages move to new
    // files and old files die while the readers reload evicted pages.
    let writer = {
        let (b, done, wrote, checkpointed) = (b.clone(), done.clone(), wrote.clone(), checkpointed.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            for n in 0..WRITES {
                let i = rng.gen_range(0..KEYS);
                b.put(k(i), [(n % 251) as u8; 100]).await.unwrap();
                if n % 20 == 19 {
                    wrote.notify_one();
                    checkpointed.notified().await;
                }
            }
            done.store(true, Ordering::Release);
            wrote.notify_one();
        })
    };
    let checkpointer = {
        let (db, done, wrote) = (db.clone(), done.clone(), wrote.clone());
        tokio::spawn(async move {
            let (mut n, mut removed) = (0u64, 0usize);
            while !done.load(Ordering::Acquire) {
                wrote.notified().await;
                let s = db.checkpoint().await.unwrap();
                removed += s.files_removed;
                n += 1;
                checkpointed.notify_one();
            }
            (n, removed)
        })
    };
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (b, done) = (b.clone(), done.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (r as u64 + 1));
                let (mut reads, mut errors) = (0u64, Vec::new());
                while !done.load(Ordering::Acquire) {
                    if r == 0 {
                        // One reader scans, the others get.
                        let lo = k(rng.gen_range(0..KEYS));
                        match b.range(lo.as_slice()..).await.unwrap().try_collect::<Vec<_>>().await {
                            Ok(v) => assert!(!v.is_empty()),
                            Err(e) => errors.push(format!("scan from {lo:?}: {e}")),
                        }
                    } else {
                        let i = rng.gen_range(0..KEYS);
                        match b.get(k(i)).await {
                            Ok(Some(v)) => assert_eq!(v.len(), 100),
                            Ok(None) => panic!("key {i} missing"),
                            Err(e) => errors.push(format!("get key {i}: {e}")),
                        }
                    }
                    reads += 1;
                    // A read of cached pages completes without yielding: let the writer
                    // and the checkpointer run.
                    tokio::task::yield_now().await;
                }
                (reads, errors)
            })
        })
        .collect();
    let start = Instant::now();
    writer.await.unwrap();
    let (ckpts, removed) = checkpointer.await.unwrap();
    let mut errors = Vec::new();
    let mut reads = 0;
    for r in readers {
        let (n, e) = r.await.unwrap();
        reads += n;
        errors.extend(e);
    }
    eprintln!(
        "reloads_race_file_removal on {:?}: {WRITES} writes, {reads} reads, {ckpts} checkpoints, \
         {removed} files removed, {} read errors, in {:?}",
        db.io_backend(),
        errors.len(),
        start.elapsed()
    );
    assert!(errors.is_empty(), "{} reads failed, first: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    assert!(removed > 0, "no file died: the race was not exercised");
    db.close().await.unwrap();
}
