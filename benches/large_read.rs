//! Larger-than-cache random reads: a data set at least 4x `cache_capacity` is written,
//! the database is reopened (and the OS page cache dropped when permitted), then random
//! `get`s run with 1, 16 and 256 requests in flight. Reports ops/s, p50/p99 latency and
//! peak RSS for each backend, each in its own child process so peak RSS is per backend.
//!
//! `cargo bench --bench large_read` (both backends)
//! `cargo bench --bench large_read -- --backend uring|threadpool` (one, in-process)
//! Environment: `RINGKV_BENCH_KEYS` (default 200000), `RINGKV_BENCH_VALUE` (default 1024),
//! `RINGKV_BENCH_CACHE_MB` (default 32), `RINGKV_BENCH_READS` (default 100000 per depth),
//! `RINGKV_BENCH_DIR` (default: a temp dir).
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use ringkv::{Db, Durability, IoBackend, Options};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn key(i: u64) -> [u8; 16] {
    // Spread keys (a multiplicative hash) so the write order is not the key order.
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&h.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = i.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    for b in &mut v {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

/// A `kB` field of /proc/self/status (`VmHWM` = peak RSS, `VmRSS` = current RSS).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn peak_rss_kib() -> u64 {
    proc_status_kib("VmHWM:")
}

fn rss_kib() -> u64 {
    proc_status_kib("VmRSS:")
}

fn drop_os_cache() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

fn run_one(backend: IoBackend) {
    let keys = env_u64("RINGKV_BENCH_KEYS", 200_000);
    let vlen = env_u64("RINGKV_BENCH_VALUE", 1024) as usize;
    let cache = env_u64("RINGKV_BENCH_CACHE_MB", 32) as usize * 1024 * 1024;
    let reads = env_u64("RINGKV_BENCH_READS", 100_000);
    let base =
        std::env::var("RINGKV_BENCH_DIR").map_or_else(|_| std::env::temp_dir(), std::path::PathBuf::from);
    let dir = base.join(format!("ringkv-large-read-{:?}-{}", backend, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options::default()
        .io_backend(backend)
        .cache_capacity(cache)
        .durability(Durability::None)
        .checkpoint_bytes(64 * 1024 * 1024);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(async {
        let t = Instant::now();
        let db = Db::open(&dir, opts.clone()).await.expect("open");
        let b = db.bucket("bench").await.expect("bucket");
        for start in (0..keys).step_by(1000) {
            let mut tx = b.begin().expect("begin");
            for i in start..(start + 1000).min(keys) {
                tx.put(key(i), value(i, vlen)).expect("put");
            }
            tx.commit().await.expect("commit");
        }
        db.close().await.expect("close");
        let data_bytes = keys * (16 + vlen as u64);
        let on_disk: u64 = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum();
        println!(
            "[{backend:?}] loaded {keys} keys x {vlen} B = {} MiB (files {} MiB) in {:.1?}; cache {} MiB = data / {:.1}; rss {} MiB, peak {} MiB",
            data_bytes >> 20,
            on_disk >> 20,
            t.elapsed(),
            cache >> 20,
            data_bytes as f64 / cache as f64,
            rss_kib() / 1024,
            peak_rss_kib() / 1024
        );
        assert!(data_bytes >= 4 * cache as u64, "the data set must be at least 4x the cache");
        for depth in [1u64, 16, 256] {
            let dropped = drop_os_cache();
            let db = Db::open(&dir, opts.clone()).await.expect("reopen");
            let b = db.existing_bucket("bench").expect("bucket");
            let n = if depth == 1 { reads / 5 } else { reads };
            let next = Arc::new(AtomicU64::new(0));
            let t = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..depth {
                let b = b.clone();
                let next = next.clone();
                tasks.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(w * 7919 + depth);
                    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("hist");
                    let mut checksum = 0u64;
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let i = rng.gen_range(0..keys);
                        let t0 = Instant::now();
                        let v = b.get(key(i)).await.expect("get").expect("present");
                        h.record(t0.elapsed().as_nanos() as u64).expect("record");
                        // Touch every byte: compare with the expected value.
                        assert!(v.as_ref() == value(i, vlen).as_slice(), "value of key {i}");
                        checksum = checksum.wrapping_add(v.iter().map(|&x| u64::from(x)).sum::<u64>());
                    }
                    (h, checksum)
                }));
            }
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("hist");
            for t in tasks {
                let (h, _) = t.await.expect("task");
                hist.add(h).expect("merge");
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "[{backend:?}] depth {depth:>3}: {:>8.0} gets/s  p50 {:>7.1} us  p99 {:>7.1} us  (os cache dropped: {dropped}; cache {} MiB, rss {} MiB)",
                n as f64 / secs,
                hist.value_at_quantile(0.5) as f64 / 1000.0,
                hist.value_at_quantile(0.99) as f64 / 1000.0,
                db.stats().cache_bytes >> 20,
                rss_kib() / 1024,
            );
            db.close().await.expect("close");
        }
    });
    println!("[{backend:?}] peak RSS {} MiB", peak_rss_kib() / 1024);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--backend") {
        let backend = match args.get(pos + 1).map(String::as_str) {
            Some("uring") => IoBackend::Uring,
            Some("threadpool") => IoBackend::ThreadPool,
            other => panic!("--backend uring|threadpool, got {other:?}"),
        };
        run_one(backend);
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    for b in ["uring", "threadpool"] {
        let st = std::process::Command::new(&exe).args(["--backend", b]).status().expect("spawn");
        assert!(st.success(), "{b} run failed");
    }
}
