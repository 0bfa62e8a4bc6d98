//! A profiling driver for the write path: loads `n` 16-byte keys with 128-byte values in a
//! seeded random order, `batch` puts per transaction (Buffered), then closes, and prints
//! throughput per tenth of the load (a superlinear load shows as falling figures), the
//! checkpoint statistics and the bytes written. The peers bench (`benches/peers`) is the
//! comparison; this is what `perf record` runs.
//!
//! `cargo run --release --example bulk_load -- [n=1000000] [cache MiB=256] [batch=1000] [dir]`
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::time::Instant;

use ringkv::{Db, Durability, Options};

fn key(id: u64) -> [u8; 16] {
    let mut k = [b'x'; 16];
    let s = format!("s{:03x}_{:010x}", id % 1000, id);
    k[..15].copy_from_slice(s.as_bytes());
    k
}

fn value(id: u64) -> [u8; 128] {
    let mut v = [0u8; 128];
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    v
}

/// A permutation of `0..n` from a seeded multiplicative shuffle (no rand dependency).
fn order(n: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n).collect();
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..ids.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ids.swap(i, (s % (i as u64 + 1)) as usize);
    }
    ids
}

fn proc_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("write_bytes: ").map(|v| v.trim().parse().ok())))
        .flatten()
        .unwrap_or(0)
}

/// `VmRSS` and `VmHWM` (peak RSS) of this process, in MiB.
fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(name).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
            >> 10
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() -> ringkv::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let cache_mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let batch: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let dir = args.get(4).map_or_else(
        || std::env::temp_dir().join(format!("ringkv-bulk-{}", std::process::id())),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(async {
        let w0 = proc_write_bytes();
        let t = Instant::now();
        let mut opts = Options::default().cache_capacity(cache_mib << 20).durability(Durability::Buffered);
        // A measurement knob: the dirty bound in MiB (default: a quarter of the cache).
        if let Some(mib) = std::env::var("BULK_DIRTY_MIB").ok().and_then(|v| v.parse::<usize>().ok()) {
            opts = opts.dirty_limit(Some(mib << 20));
        }
        let db = Db::open(&dir, opts.clone()).await?;
        let b = db.bucket("bench").await?;
        let ids = order(n);
        let tenth = (ids.len() / 10).max(1);
        let mut lap = Instant::now();
        for (i, chunk) in ids.chunks(batch).enumerate() {
            let mut tx = b.begin()?;
            for &id in chunk {
                tx.put(key(id), value(id))?;
            }
            tx.commit().await?;
            let done = (i + 1) * batch;
            if done % tenth < batch {
                let s = db.stats();
                let (rss, hwm) = rss_mib();
                println!(
                    "{done:>10} keys: {:>7.0} keys/s this tenth; {:>4} ckpts; cache {:>4} MiB, page table {:>3} MiB, \
                     dirty {:>5} pages {:>3} MiB, ckpt peak {:>3} MiB, wal buf {:>3} KiB; rss {rss} MiB (peak {hwm}); \
                     delta frames {}, chains consolidated {}, page reads {}",
                    tenth as f64 / lap.elapsed().as_secs_f64(),
                    s.checkpoints,
                    s.cache_bytes >> 20,
                    s.page_table_bytes >> 20,
                    s.dirty_pages,
                    s.dirty_bytes >> 20,
                    s.checkpoint_peak_bytes >> 20,
                    s.wal_buffer_bytes >> 10,
                    s.delta_frames,
                    s.chains_consolidated,
                    s.page_reads,
                );
                lap = Instant::now();
            }
        }
        let load = t.elapsed();
        // The memory bound the user set: a checkpoint holds at most `dirty_limit` of page
        // images (forest invariant 6). `tests/memory.rs` checks it at 1 MiB; this is the
        // check at scale, where a wrong charge shows (it once reached 89 MiB of 64).
        let s = db.stats();
        assert!(
            s.checkpoint_peak_bytes <= s.dirty_limit,
            "a checkpoint held {} bytes, over the dirty bound of {}",
            s.checkpoint_peak_bytes,
            s.dirty_limit
        );
        db.close().await?;
        let secs = t.elapsed().as_secs_f64();
        let written = proc_write_bytes() - w0;
        let logical = n * 144;
        let (rss, hwm) = rss_mib();
        println!("after close: rss {rss} MiB, peak rss {hwm} MiB");
        println!(
            "loaded {n} keys in {:.2} s (close {:.2} s): {:.0} keys/s; wrote {} MiB = {:.2}x the {} MiB of keys+values",
            secs,
            secs - load.as_secs_f64(),
            n as f64 / secs,
            written >> 20,
            written as f64 / logical as f64,
            logical >> 20
        );
        // A closed `Db` keeps its cache until its last handle drops: drop it before the
        // reopen, or both instances' memory is held at once.
        drop((b, db));
        let t = Instant::now();
        let db = Db::open(&dir, opts).await?;
        let b = db.bucket("bench").await?;
        let check = n.min(100_000);
        for id in order(n).into_iter().take(check as usize) {
            let v = b.get(key(id)).await?;
            assert_eq!(v.as_deref(), Some(&value(id)[..]), "key {id}");
        }
        println!("reopened and verified {check} keys in {:?}", t.elapsed());
        db.close().await?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}
