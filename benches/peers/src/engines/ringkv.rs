//! ringkv (this tree), on either I/O backend, as async tasks on a tokio runtime.
//!
//! Best practice per workload (the engine is not tuned beyond its documented options):
//! - every workload: `cache_capacity` = the run's equal cache size; `io_backend` fixed to
//!   `Uring` or `ThreadPool` (no `Auto` probing); one bucket.
//! - relaxed durability: `Durability::Buffered` (the WAL reaches the kernel before `commit`
//!   returns, no fsync) — the same guarantee as RocksDB `sync=false`, mace
//!   `sync_on_write=false` and LMDB `NO_SYNC`; redb's and fjall's relaxed modes are weaker.
//!   The `-none` engines use `Durability::None` instead (the WAL written by the background
//!   task, bounded by `Options::wal_buffer_limit`): the match for fjall's default journal,
//!   a user-space buffer until it is persisted.
//! - durable commits: `Durability::Sync` per commit; concurrent committers share one WAL
//!   write and one fdatasync (group commit). `stats().wal_fsyncs` counts them.
//! - W1-W6 and durable commits: `Bucket::put` is one transaction per update; a
//!   `Error::Conflict` returns `Ok(false)` and is retried by the caller.
//! - bulk load and the larger-than-memory load: 1000 (or 256 x 4 KiB) puts per transaction,
//!   background checkpoints at the default 64 MiB.
//! - larger-than-memory reads: `Bucket::get` from many tasks; the default inline limit
//!   (2 KiB) puts 4 KiB values in blob files, which is ringkv's layout for such values.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use ringkv::{Bucket, Db, Durability, IoBackend, Options};

use crate::engine::{Engine, OpenCfg};

/// An open ringkv database.
pub struct Ringkv {
    db: Db,
    bucket: Bucket,
}

/// Opens ringkv on `backend`; the relaxed workloads commit with `Durability::None` when
/// `background_wal` (the WAL written by the background task), else `Buffered`.
pub async fn open(
    dir: &Path,
    cfg: &OpenCfg,
    backend: IoBackend,
    background_wal: bool,
) -> anyhow::Result<Arc<dyn Engine>> {
    let relaxed = if background_wal { Durability::None } else { Durability::Buffered };
    let opts = Options::default()
        .io_backend(backend)
        .cache_capacity(cfg.cache_bytes)
        .durability(if cfg.durable { Durability::Sync } else { relaxed })
        // `PEERS_RINGKV_WARM=0` opens without cache warming (an A/B of `Options::warm_cache`).
        .warm_cache(std::env::var("PEERS_RINGKV_WARM").map_or(true, |v| v != "0"));
    let db = Db::open(dir, opts).await?;
    anyhow::ensure!(db.io_backend() == backend, "ringkv opened {:?}, asked {backend:?}", db.io_backend());
    let bucket = db.bucket("bench").await?;
    Ok(Arc::new(Ringkv { db, bucket }))
}

#[async_trait]
impl Engine for Ringkv {
    fn is_async(&self) -> bool {
        true
    }

    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Bytes>> {
        Ok(self.bucket.get(key).await?)
    }

    async fn scan(&self, start: &[u8], limit: usize) -> anyhow::Result<Vec<(Bytes, Bytes)>> {
        let mut it = self.bucket.range(start..).await?;
        let mut out = Vec::with_capacity(limit);
        while out.len() < limit {
            match it.next().await {
                Some(kv) => out.push(kv?),
                None => break,
            }
        }
        Ok(out)
    }

    async fn write(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<bool> {
        let mut tx = self.bucket.begin()?;
        for (k, v) in pairs {
            tx.put(k, v)?;
        }
        let d = if durable { Durability::Sync } else { Durability::Buffered };
        match tx.commit_with(d).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn close(&self) -> anyhow::Result<()> {
        if std::env::var_os("PEERS_RINGKV_STATS").is_some() {
            // What the engine did in this child (a diagnosis aid: page reads per get and
            // the like), on stderr, which the parent copies to its log.
            let s = self.db.stats();
            eprintln!(
                "[ringkv stats] page_reads {} cache_hits {} cache_misses {} checkpoints {} cache_bytes {} \
                 page_table_bytes {} read p50 {:?} p99 {:?}",
                s.page_reads,
                s.cache_hits,
                s.cache_misses,
                s.checkpoints,
                s.cache_bytes,
                s.page_table_bytes,
                s.read_latency.quantile(0.5),
                s.read_latency.quantile(0.99)
            );
        }
        Ok(self.db.close().await?)
    }

    fn fsyncs(&self) -> Option<u64> {
        Some(self.db.stats().wal_fsyncs)
    }
}
