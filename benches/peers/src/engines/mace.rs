//! mace-kv 0.2 (`mace`), on OS threads.
//!
//! Best practice per workload, following kv_bench's own mace runner where it applies:
//! - relaxed durability: `Options::sync_on_write = false` (a commit reaches the page cache);
//!   durable: `sync_on_write = true` (commits join a shared fsync generation). The route is a
//!   database option, so each durability opens its own database.
//! - cache: the bucket's `cache_capacity` (resident tree pages) gets the equal cache size for
//!   W1-W6, the durable and the bulk workloads, with `lru_capacity` (blob values) at 1/8 of
//!   it; for the larger-than-memory reads, whose 4 KiB values are blobs (at or above the
//!   1 KiB default `inline_size`, mace's value separation), tree cache and blob LRU split the
//!   equal cache size in halves.
//! - writes: one `begin` / `upsert` / `commit` per update (kv_bench uses `update` on
//!   prefilled keys; `upsert` also serves inserts); `AbortTx`/`Again` is a conflict the
//!   caller retries. Bulk loads commit 1000 pairs per transaction (kv_bench: 1024).
//! - reads: `view()` snapshot reads, `view().range(start..)` for scans (kv_bench's
//!   `read_path=snapshot`).
//! - GC: default options (background GC on), as a user would run it.

use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;
use async_trait::async_trait;
use bytes::Bytes;
use mace::{Bucket, BucketOptions, Mace, OpCode, Options};

use crate::engine::{Engine, OpenCfg, Purpose};

/// An open mace database.
pub struct MaceEngine {
    // Field order: the bucket is dropped before the database.
    bucket: Bucket,
    db: Mace,
    durable: bool,
}

fn err(what: &str, e: OpCode) -> anyhow::Error {
    anyhow!("mace {what}: {e:?}")
}

/// Opens mace-kv.
pub fn open(dir: &Path, cfg: &OpenCfg) -> anyhow::Result<Arc<dyn Engine>> {
    let mut opts = Options::new(dir);
    opts.sync_on_write = cfg.durable;
    let (tree_cache, lru) = match cfg.purpose {
        Purpose::LargeRead => (cfg.cache_bytes / 2, cfg.cache_bytes / 2),
        _ => (cfg.cache_bytes, (cfg.cache_bytes / 8).max(8 << 20)),
    };
    opts.lru_capacity = lru;
    let db = Mace::new(opts.validate().map_err(|e| err("options", e))?).map_err(|e| err("open", e))?;
    let bucket = match db.open_bucket("bench") {
        Ok(b) => b,
        Err(_) => {
            let mut bo = BucketOptions::new();
            bo.cache_capacity = tree_cache;
            db.new_bucket("bench", bo.validate()).map_err(|e| err("new_bucket", e))?
        }
    };
    Ok(Arc::new(MaceEngine { bucket, db, durable: cfg.durable }))
}

#[async_trait]
impl Engine for MaceEngine {
    fn is_async(&self) -> bool {
        false
    }

    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Bytes>> {
        let view = self.bucket.view().map_err(|e| err("view", e))?;
        match view.get(key) {
            Ok(v) => Ok(Some(Bytes::copy_from_slice(v.slice()))),
            Err(OpCode::NotFound) => Ok(None),
            Err(e) => Err(err("get", e)),
        }
    }

    async fn scan(&self, start: &[u8], limit: usize) -> anyhow::Result<Vec<(Bytes, Bytes)>> {
        let view = self.bucket.view().map_err(|e| err("view", e))?;
        Ok(view
            .range(start..)
            .take(limit)
            .map(|it| (Bytes::copy_from_slice(it.key()), Bytes::copy_from_slice(it.val())))
            .collect())
    }

    async fn write(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<bool> {
        anyhow::ensure!(durable == self.durable, "mace durability is per database");
        let tx = self.bucket.begin().map_err(|e| err("begin", e))?;
        for (k, v) in pairs {
            match tx.upsert(k, v) {
                Ok(()) => {}
                Err(OpCode::AbortTx | OpCode::Again) => return Ok(false),
                Err(e) => return Err(err("upsert", e)),
            }
        }
        match tx.commit() {
            Ok(()) => Ok(true),
            Err(OpCode::AbortTx | OpCode::Again) => Ok(false),
            Err(e) => Err(err("commit", e)),
        }
    }

    async fn close(&self) -> anyhow::Result<()> {
        self.db.sync().map_err(|e| err("sync", e))
    }
}
