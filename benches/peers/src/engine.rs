//! The engine interface every adapter implements, and the list of engines.
//!
//! Calls are `async`: ringkv awaits its own I/O and runs as tokio tasks; the synchronous
//! engines do their work inside the call and are driven from OS threads (one per request
//! in flight, see [`crate::driver`]), so their futures are ready when first polled.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engines;

/// What a database is opened for; adapters pick their best-practice settings from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// W1-W6: small values, cache holding everything, relaxed durability.
    Mixed,
    /// Larger-than-memory random reads of 4 KiB values.
    LargeRead,
    /// One put per commit, fsync per commit.
    DurableCommits,
    /// Bulk load in random key order.
    BulkLoad,
}

/// How to open a database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenCfg {
    /// Bytes of the engine's own cache (block cache, page cache, ...), equal for all.
    pub cache_bytes: usize,
    /// fsync on every commit (`true`) or not (relaxed).
    pub durable: bool,
    /// The workload, for per-workload tuning.
    pub purpose: Purpose,
    /// Value length of the workload.
    pub value_len: usize,
    /// Keys the workload will hold (sizes an LMDB map, for example).
    pub expected_keys: u64,
}

/// The engines of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EngineKind {
    /// ringkv on its io_uring backend.
    RingkvUring,
    /// ringkv on its thread-pool backend.
    RingkvThreadPool,
    /// ringkv on io_uring with `Durability::None` for the relaxed workloads (the WAL
    /// written in the background: the mode that matches fjall's default user-space journal).
    RingkvUringNone,
    /// ringkv on the thread pool with `Durability::None` for the relaxed workloads.
    RingkvThreadPoolNone,
    /// mace-kv.
    Mace,
    /// redb.
    Redb,
    /// fjall.
    Fjall,
    /// RocksDB through the `rocksdb` crate.
    Rocksdb,
    /// LMDB through `heed`.
    Lmdb,
}

impl EngineKind {
    /// The engines a run without `--engines` measures: every one but the `-none` variants.
    pub const DEFAULT: [EngineKind; 7] = [
        EngineKind::RingkvUring,
        EngineKind::RingkvThreadPool,
        EngineKind::Mace,
        EngineKind::Redb,
        EngineKind::Fjall,
        EngineKind::Rocksdb,
        EngineKind::Lmdb,
    ];

    /// Every engine, in report order.
    pub const ALL: [EngineKind; 9] = [
        EngineKind::RingkvUring,
        EngineKind::RingkvThreadPool,
        EngineKind::RingkvUringNone,
        EngineKind::RingkvThreadPoolNone,
        EngineKind::Mace,
        EngineKind::Redb,
        EngineKind::Fjall,
        EngineKind::Rocksdb,
        EngineKind::Lmdb,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::RingkvUring => "ringkv-uring",
            EngineKind::RingkvThreadPool => "ringkv-threadpool",
            EngineKind::RingkvUringNone => "ringkv-uring-none",
            EngineKind::RingkvThreadPoolNone => "ringkv-threadpool-none",
            EngineKind::Mace => "mace",
            EngineKind::Redb => "redb",
            EngineKind::Fjall => "fjall",
            EngineKind::Rocksdb => "rocksdb",
            EngineKind::Lmdb => "lmdb",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<EngineKind> {
        let s = s.trim().to_ascii_lowercase();
        let alias = match s.as_str() {
            "ringkv-io_uring" | "uring" => "ringkv-uring",
            "ringkv-fallback" | "threadpool" => "ringkv-threadpool",
            "mace-kv" => "mace",
            "heed" => "lmdb",
            other => other,
        };
        EngineKind::ALL.into_iter().find(|e| e.name() == alias)
    }

    /// True for the two ringkv backends (the engine under test, not a peer).
    pub fn is_ringkv(self) -> bool {
        matches!(
            self,
            EngineKind::RingkvUring
                | EngineKind::RingkvThreadPool
                | EngineKind::RingkvUringNone
                | EngineKind::RingkvThreadPoolNone
        )
    }

    /// The crate and version the binary was built with.
    pub fn version(self) -> &'static str {
        match self {
            EngineKind::RingkvUring
            | EngineKind::RingkvThreadPool
            | EngineKind::RingkvUringNone
            | EngineKind::RingkvThreadPoolNone => "ringkv (this tree)",
            EngineKind::Mace => "mace-kv 0.2.0",
            EngineKind::Redb => "redb 4.6.0",
            EngineKind::Fjall => "fjall 3.1.13",
            EngineKind::Rocksdb => "rocksdb 0.25.0 (librocksdb-sys 0.19.0+11.8.1)",
            EngineKind::Lmdb => "heed 0.23.1 (lmdb-master-sys 0.2.6)",
        }
    }
}

/// An open database with one keyspace.
#[async_trait]
pub trait Engine: Send + Sync {
    /// True when the engine is async (driven by tokio tasks), false for OS threads.
    fn is_async(&self) -> bool;

    /// The latest committed value of `key`.
    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Bytes>>;

    /// Up to `limit` pairs from `start` on, in key order.
    async fn scan(&self, start: &[u8], limit: usize) -> anyhow::Result<Vec<(Bytes, Bytes)>>;

    /// Writes `pairs` in one atomic commit, fsync'ed when `durable`. `Ok(false)`: a
    /// write-write conflict aborted it (the caller retries, as a user would).
    async fn write(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<bool>;

    /// Makes everything written durable and closes (the adapter is dropped after).
    async fn close(&self) -> anyhow::Result<()>;

    /// fsyncs the engine itself counted (ringkv's `wal_fsyncs`), when it counts them.
    fn fsyncs(&self) -> Option<u64> {
        None
    }
}

/// Opens `kind` in `dir` (created when missing).
pub async fn open(kind: EngineKind, dir: &Path, cfg: &OpenCfg) -> anyhow::Result<Arc<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    Ok(match kind {
        EngineKind::RingkvUring => engines::ringkv::open(dir, cfg, ringkv::IoBackend::Uring, false).await?,
        EngineKind::RingkvThreadPool => {
            engines::ringkv::open(dir, cfg, ringkv::IoBackend::ThreadPool, false).await?
        }
        EngineKind::RingkvUringNone => {
            engines::ringkv::open(dir, cfg, ringkv::IoBackend::Uring, true).await?
        }
        EngineKind::RingkvThreadPoolNone => {
            engines::ringkv::open(dir, cfg, ringkv::IoBackend::ThreadPool, true).await?
        }
        EngineKind::Mace => engines::mace::open(dir, cfg)?,
        EngineKind::Redb => engines::redb::open(dir, cfg)?,
        EngineKind::Fjall => engines::fjall::open(dir, cfg)?,
        EngineKind::Rocksdb => {
            #[cfg(feature = "rocksdb")]
            {
                engines::rocksdb::open(dir, cfg)?
            }
            #[cfg(not(feature = "rocksdb"))]
            {
                anyhow::bail!("this binary was built without the `rocksdb` feature")
            }
        }
        EngineKind::Lmdb => engines::lmdb::open(dir, cfg)?,
    })
}
