//! The thread footprint of a process with one open database, per backend (issue 15, item 6).
//!
//! Thread pools are process-wide and started once, so each measurement runs in a child
//! process of its own: this test binary started again with `--exact` on [`footprint_child`]
//! (enabled by [`CHILD_ENV`]), which opens one database, writes, checkpoints, reads back,
//! counts the entries of `/proc/self/task` before the open and while the database is open,
//! and prints them as one `FOOTPRINT before=<n> open=<n>` line. The parent asserts an upper
//! bound on the threads the open added.
//!
//! Threads the database may add: on `io_uring`, the ring thread, the reaper of the direct
//! ring, one helper thread for the calls `io_uring` has no opcode for (`flock`, `read_dir`,
//! `mkdir -p`, truncate), the kernel's `iou-wrk` workers for punted requests (they show in
//! `/proc/self/task`; idle ones exit by themselves) and the background pool; on the thread
//! pool, `Options::io_threads` workers and the background pool. With
//! `Options::spawner` the background work runs on the caller's runtime: no pool.

#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap

use std::process::Command;

use ringkv::{Db, IoBackend, Options, Spawner};

const CHILD_ENV: &str = "RINGKV_FOOTPRINT_CHILD";
const CHILD_TEST: &str = "footprint_child";

/// Entries of `/proc/self/task`: the threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").expect("/proc/self/task").count()
}

/// The names of this process's threads (`comm`), sorted, with a count each.
fn thread_names() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('-').to_owned())
        .collect();
    names.sort();
    let mut out: Vec<String> = Vec::new();
    for n in &names {
        let count = names.iter().filter(|m| *m == n).count();
        let entry = format!("{n}x{count}");
        if !out.contains(&entry) {
            out.push(entry);
        }
    }
    out.join(",")
}

/// What a child measured.
#[derive(Debug)]
struct Footprint {
    before: usize,
    open: usize,
}

impl Footprint {
    fn added(&self) -> usize {
        self.open.saturating_sub(self.before)
    }
}

/// Runs [`footprint_child`] in a new process with `config` (`backend:variant`).
fn measure(config: &str) -> Footprint {
    let exe = std::env::current_exe().expect("current_exe");
    let backend = config.split(':').next().unwrap();
    let out = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, config)
        .env("RINGKV_IO_BACKEND", backend)
        .env_remove("RINGKV_FALLBACK_THREADS")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {config} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("FOOTPRINT ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("child {config} printed no FOOTPRINT line: {stdout}"));
    let field = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let f = Footprint { before: field("before"), open: field("open") };
    let names = line.split_whitespace().find_map(|kv| kv.strip_prefix("names=")).unwrap_or("");
    eprintln!("footprint {config}: {f:?}, added {} ({names})", f.added());
    f
}

/// The child: one database, some writes, a checkpoint and reads, then the count.
#[test]
fn footprint_child() {
    let Ok(config) = std::env::var(CHILD_ENV) else { return };
    let (backend, variant) = config.split_once(':').unwrap_or((&config, "default"));
    let backend = match backend {
        "uring" => IoBackend::Uring,
        "threadpool" => IoBackend::ThreadPool,
        other => panic!("unknown backend {other}"),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let before = threads();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default().io_backend(backend);
        match variant {
            "default" => {}
            "small" => {
                opts = opts.io_threads(4).background_threads(1);
            }
            "spawner" => {
                opts = opts.io_threads(4).spawner(Spawner::new(|fut| {
                    tokio::spawn(fut);
                }));
            }
            other => panic!("unknown variant {other}"),
        }
        let db = Db::open(dir.path(), opts).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        for i in 0..200u32 {
            b.put(format!("k{i:05}").as_bytes(), &[7u8; 100]).await.unwrap();
        }
        db.checkpoint().await.unwrap();
        assert_eq!(b.get(b"k00042").await.unwrap().as_deref(), Some(&[7u8; 100][..]));
        let open = threads();
        println!("FOOTPRINT before={before} open={open} names={}", thread_names());
        db.close().await.unwrap();
    });
}

/// `io_uring`, default options: the ring thread, the reaper, one helper thread, the
/// background pool (2) and a few `iou-wrk` workers; no 32-thread pool (issue 15 measured
/// 41 threads in the test process before, 39 of them the database's).
#[test]
fn uring_starts_no_thread_pool() {
    if std::env::var_os(CHILD_ENV).is_some() || !uring_available() {
        return;
    }
    let f = measure("uring:default");
    assert!(f.added() <= 12, "io_uring, default options: {f:?}");
    // The background work on the caller's runtime: no background pool either.
    let s = measure("uring:spawner");
    assert!(s.added() <= 10, "io_uring with a spawner: {s:?}");
    assert!(s.added() < f.added() + 2, "a spawner starts no background pool: {s:?} vs {f:?}");
}

/// The thread pool: `Options::io_threads` workers and `Options::background_threads`; with a
/// spawner, no background pool.
#[test]
fn thread_pool_is_sized_by_options() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let d = measure("threadpool:default");
    assert!(d.added() >= 32 && d.added() <= 34 + 2, "thread pool, default options: {d:?}");
    let small = measure("threadpool:small");
    // 4 I/O threads, 1 background thread, the timer.
    assert!(small.added() <= 4 + 1 + 1, "io_threads(4), background_threads(1): {small:?}");
    let s = measure("threadpool:spawner");
    assert!(s.added() <= 4 + 1, "io_threads(4) and a spawner: {s:?}");
}

/// Whether this kernel runs `io_uring` (else the uring case is skipped, as elsewhere).
fn uring_available() -> bool {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        match Db::open(dir.path(), Options::default().io_backend(IoBackend::Uring)).await {
            Ok(db) => {
                db.close().await.unwrap();
                true
            }
            Err(e) => {
                eprintln!("io_uring unavailable, skipping: {e}");
                false
            }
        }
    })
}

/// The spawner of `Options::spawner` gets the background task at open and the drop
/// hand-over at a drop without `close`, and the work runs there: a `Durability::None`
/// commit reaches the disk (a WAL fsync) with no call of the caller's, and a reopen after
/// the drop finds the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawner_runs_the_background_work() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spawned = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&spawned);
    let opts = Options::default().durability(ringkv::Durability::None).spawner(Spawner::new(move |task| {
        counter.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(task);
    }));
    let db = Db::open(dir.path(), opts.clone()).await.unwrap();
    assert_eq!(spawned.load(Ordering::SeqCst), 2, "the background task and the cache warming");
    let b = db.bucket("b").await.unwrap();
    let fsyncs = db.stats().wal_fsyncs;
    b.put(b"k", b"v").await.unwrap();
    // The background flush (every 20 ms for Durability::None) is the only writer of the WAL.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while db.stats().wal_fsyncs == fsyncs {
        assert!(std::time::Instant::now() < deadline, "no background WAL flush on the spawner");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(b);
    drop(db);
    assert_eq!(spawned.load(Ordering::SeqCst), 3, "the drop hand-over");
    let db = Db::open(dir.path(), opts).await.unwrap();
    assert_eq!(db.existing_bucket("b").unwrap().get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    db.close().await.unwrap();
}

/// Thread counts out of range are `InvalidArgument` at open, before anything starts.
#[test]
fn thread_counts_out_of_range_are_invalid_arguments() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    for opts in [
        Options::default().io_threads(0),
        Options::default().background_threads(0),
        Options::default().io_threads(ringkv::limits::MAX_THREADS + 1),
    ] {
        assert!(matches!(opts.validate(), Err(ringkv::Error::InvalidArgument(_))), "{opts:?}");
        let dir = tempfile::tempdir().unwrap();
        let err = runtime_block_on(Db::open(dir.path().join("db"), opts)).err().unwrap();
        assert!(matches!(err, ringkv::Error::InvalidArgument(_)), "{err}");
        assert!(!dir.path().join("db").exists(), "nothing was created");
    }
    assert!(Options::default().io_threads(1).background_threads(1).validate().is_ok());
}

fn runtime_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}
