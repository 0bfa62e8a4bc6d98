//! Is the executor ever blocked? The lateness of a 1 ms ticker task on a 2-worker tokio
//! runtime, with nothing else running, while 256 reads are in flight on a database larger
//! than its cache, and during a checkpoint of 256 MiB (issue 13, item 4). A measurement,
//! not a test: it prints the figures and asserts nothing about time.
//!
//! The ticker sleeps until 1 ms from now, then records how late it woke (tokio's timer has a
//! 1 ms granularity, so the idle phase is the floor the other phases compare with).
//!
//! `cargo run --release --example ticker [-- <dir>]`
//! Environment: `RINGKV_IO_BACKEND` (uring | threadpool), `RINGKV_TICKER_MB` (data and
//! checkpoint size, default 256), `RINGKV_TICKER_SECS` (seconds of each timed phase,
//! default 5).
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)] // figures, not storage
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use ringkv::{Db, Durability, Options};

const VALUE_LEN: usize = 4096;
const IN_FLIGHT: u64 = 256;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn value(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; VALUE_LEN];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// The ticker: runs until `stop`, returns the histogram of its lateness in microseconds.
fn start_ticker(stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<hdrhistogram::Histogram<u64>> {
    tokio::spawn(async move {
        let mut late = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1);
            tokio::time::sleep_until(deadline).await;
            late.record(deadline.elapsed().as_micros() as u64).unwrap();
        }
        late
    })
}

fn report(phase: &str, h: &hdrhistogram::Histogram<u64>, extra: &str) {
    println!(
        "{phase:<34} ticks {:>6}  lateness p50 {:>6} us  p99 {:>6} us  p99.9 {:>6} us  max {:>6} us  {extra}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

fn main() {
    let mib = env_u64("RINGKV_TICKER_MB", 256);
    let secs = env_u64("RINGKV_TICKER_SECS", 5);
    let keys = mib * 1024 * 1024 / VALUE_LEN as u64;
    let dir = std::env::args().nth(1).map_or_else(
        || std::env::temp_dir().join(format!("ringkv-ticker-{}", std::process::id())),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Idle: the floor.
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = start_ticker(stop.clone());
        tokio::time::sleep(Duration::from_secs(secs.min(2))).await;
        stop.store(true, Ordering::Relaxed);
        report("idle", &ticker.await.unwrap(), "");

        // Load `mib` MiB, all of it dirty, then one checkpoint writes it.
        let data_bytes = (mib as usize) << 20;
        let mut opts = Options::default().durability(Durability::None).cache_capacity(2 * data_bytes);
        opts.dirty_limit = Some(2 * data_bytes);
        opts.checkpoint_bytes = 4 * data_bytes;
        opts.background_checkpoints = false;
        let db = Db::open(&dir, opts).await.unwrap();
        println!(
            "backend {:?}, {keys} keys of {VALUE_LEN} B ({mib} MiB), dir {}",
            db.io_backend(),
            dir.display()
        );
        let b = db.bucket("t").await.unwrap();
        for start in (0..keys).step_by(1000) {
            let mut tx = b.begin().unwrap();
            for i in start..(start + 1000).min(keys) {
                tx.put(key(i), value(i)).unwrap();
            }
            tx.commit().await.unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = start_ticker(stop.clone());
        let t = Instant::now();
        let stats = db.checkpoint().await.unwrap();
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        report(
            &format!("checkpoint of {mib} MiB"),
            &ticker.await.unwrap(),
            &format!("({took:.2?}; {stats:?})"),
        );
        db.close().await.unwrap();

        // 256 reads in flight on a 32 MiB cache.
        let opts = Options::default().cache_capacity(32 << 20);
        let db = Db::open(&dir, opts).await.unwrap();
        let b = db.existing_bucket("t").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..IN_FLIGHT)
            .map(|w| {
                let (b, stop, reads) = (b.clone(), stop.clone(), reads.clone());
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                    while !stop.load(Ordering::Relaxed) {
                        let i = rng.gen_range(0..keys);
                        let v = b.get(key(i)).await.unwrap().unwrap();
                        assert_eq!(v[..8], i.to_le_bytes());
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let ticker = start_ticker(stop.clone());
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let late = ticker.await.unwrap();
        for r in readers {
            r.await.unwrap();
        }
        let n = reads.load(Ordering::Relaxed);
        let took = t.elapsed();
        report(
            &format!("{IN_FLIGHT} reads in flight"),
            &late,
            &format!("({n} reads in {took:.2?}: {:.0}/s)", n as f64 / took.as_secs_f64()),
        );
        db.close().await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
