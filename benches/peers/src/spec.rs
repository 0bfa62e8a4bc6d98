//! Sizes of every workload at a given `--scale`, and the W1-W6 mixes of mace-kv's kv_bench.
//!
//! | workload | at scale s | issue's size (s = 1) |
//! |---|---|---|
//! | W1-W6 | 1,000,000 s keys, 16 B keys, 128 B values, 1 GiB cache | 1M keys |
//! | larger-than-memory | 2 GiB s of 4 KiB values, cache 256 MiB s, cgroup cap 512 MiB s (at least 96 MiB) | 2 GiB, 256 MiB, 512 MiB |
//! | durable commits | keys drawn from 1,000,000 s ids, 128 B values, 256 MiB cache | - |
//! | bulk load | 10,000,000 s keys, 128 B values, cache 256 MiB s | 10M keys |
//!
//! Without `--scale`, the default profile ([`Sizes::default_profile`]) runs everything at
//! s = 0.25 except the bulk load, which runs at s = 0.05 (500,000 keys), so that the whole
//! default run finishes in under 15 minutes on 2 cores, and the larger-than-memory cap,
//! which stays at 256 MiB (twice the scaled 128 MiB): at 128 MiB the 256-thread reads of
//! mace, redb and RocksDB and fjall's 64-thread reads were killed by the OOM killer (thread
//! stacks and per-thread buffers, not cache), which measured nothing. The data set (512 MiB)
//! is still twice the cap.

use serde::{Deserialize, Serialize};

/// Small values (W1-W6, durable commits, bulk load).
pub const VALUE_LEN: usize = 128;
/// Values of the larger-than-memory reads.
pub const LTM_VALUE_LEN: usize = 4096;
/// Requests in flight for the larger-than-memory reads.
pub const LTM_DEPTHS: [usize; 4] = [1, 16, 64, 256];
/// Concurrent committers of the durable-commit workload.
pub const COMMITTERS: [usize; 3] = [1, 8, 64];
/// Threads (or tasks) of W1-W6.
pub const MIXED_THREADS: [usize; 2] = [1, 2];
/// fio random-read queue depths: the 1/32/128 plus the engines' depths for ratios.
pub const FIO_DEPTHS: [usize; 6] = [1, 16, 32, 64, 128, 256];
/// Keys per commit in loads (kv_bench prefills 1024 per transaction).
pub const LOAD_BATCH: usize = 1000;
/// 4 KiB values per commit in the larger-than-memory load (1 MiB).
pub const LTM_LOAD_BATCH: usize = 256;

const MIB: u64 = 1 << 20;

/// Every size of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sizes {
    /// The scale these were computed at.
    pub scale: f64,
    /// Keys of W1-W6.
    pub mixed_keys: u64,
    /// Cache of W1-W6 (holds everything).
    pub mixed_cache: u64,
    /// 4 KiB values of the larger-than-memory reads.
    pub ltm_keys: u64,
    /// Engine cache of the larger-than-memory reads and of the bulk load.
    pub ltm_cache: u64,
    /// Memory cgroup cap of a larger-than-memory read process (page cache included).
    pub ltm_cap: u64,
    /// Id space of the durable commits.
    pub durable_keys: u64,
    /// Cache of the durable commits.
    pub durable_cache: u64,
    /// Keys of the bulk load.
    pub bulk_keys: u64,
}

impl Sizes {
    /// Sizes at `scale` (1.0 = the sizes).
    pub fn at(scale: f64) -> Sizes {
        assert!(scale > 0.0, "scale must be positive");
        let n = |base: f64, min: u64| ((base * scale) as u64).max(min);
        let ltm_bytes = n(2048.0 * MIB as f64, 4 * MIB);
        Sizes {
            scale,
            mixed_keys: n(1_000_000.0, 2048),
            mixed_cache: 1024 * MIB,
            ltm_keys: ltm_bytes / LTM_VALUE_LEN as u64,
            ltm_cache: n(256.0 * MIB as f64, 8 * MIB),
            ltm_cap: n(512.0 * MIB as f64, 96 * MIB),
            durable_keys: n(1_000_000.0, 2048),
            durable_cache: 256 * MIB,
            bulk_keys: n(10_000_000.0, 10_000),
        }
    }

    /// The default profile: s = 0.25 (250,000 keys for W1-W6; 512 MiB larger-than-memory
    /// data, 64 MiB caches, a 256 MiB cap), bulk load at s = 0.05 (500,000 keys).
    pub fn default_profile() -> Sizes {
        let mut s = Sizes::at(0.25);
        s.bulk_keys = Sizes::at(0.05).bulk_keys;
        s.ltm_cap = 256 * MIB;
        s
    }

    /// Bytes of 4 KiB values of the larger-than-memory data set.
    pub fn ltm_bytes(&self) -> u64 {
        self.ltm_keys * LTM_VALUE_LEN as u64
    }
}

/// Key choice of a mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dist {
    /// Uniform over all keys.
    Uniform,
    /// kv_bench's Zipf-like sampler with theta 0.99.
    Zipf,
}

/// One of kv_bench's W1-W6.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// W1..W6.
    pub id: &'static str,
    /// Percent of point reads.
    pub read_pct: u8,
    /// Percent of single-key updates (one transaction each).
    pub update_pct: u8,
    /// Percent of scans of `SCAN_LEN` keys (the rest).
    pub scan_pct: u8,
    /// Key choice.
    pub dist: Dist,
}

/// Keys per scan (kv_bench's `scan_len`).
pub const SCAN_LEN: usize = 100;
/// kv_bench's Zipf theta.
pub const ZIPF_THETA: f64 = 0.99;

/// kv_bench's `parse_workload`, W1-W6.
pub const MIXES: [Mix; 6] = [
    Mix { id: "W1", read_pct: 95, update_pct: 5, scan_pct: 0, dist: Dist::Uniform },
    Mix { id: "W2", read_pct: 95, update_pct: 5, scan_pct: 0, dist: Dist::Zipf },
    Mix { id: "W3", read_pct: 50, update_pct: 50, scan_pct: 0, dist: Dist::Uniform },
    Mix { id: "W4", read_pct: 5, update_pct: 95, scan_pct: 0, dist: Dist::Uniform },
    Mix { id: "W5", read_pct: 70, update_pct: 25, scan_pct: 5, dist: Dist::Uniform },
    Mix { id: "W6", read_pct: 0, update_pct: 0, scan_pct: 100, dist: Dist::Uniform },
];

impl Mix {
    /// The mix called `id` (W1..W6).
    pub fn find(id: &str) -> Option<Mix> {
        MIXES.into_iter().find(|m| m.id.eq_ignore_ascii_case(id))
    }
}
