//! LMDB through `heed`, on OS threads.
//!
//! Best practice per workload:
//! - LMDB has no cache of its own: reads go through the memory map, so its "cache" is the
//!   OS page cache. With the equal cache size it cannot be bounded separately; in the
//!   larger-than-memory reads the cgroup cap on the process (page cache included) bounds it.
//! - relaxed durability: `EnvFlags::NO_SYNC` (commits write to the file, no fsync);
//!   durable: default flags (fdatasync per commit). Flags are per environment, so each
//!   durability opens its own environment.
//! - larger-than-memory reads: `NO_READ_AHEAD` (random reads would otherwise pull in
//!   readahead that the capped page cache then evicts).
//! - one writer at a time (concurrent committers queue on `write_txn`), no conflicts.
//! - `max_readers` 1024 so 256 readers in flight fit; `map_size` 3x the expected data.
//! - bulk and larger-than-memory loads: 1000 (or 256 x 4 KiB) puts per write transaction
//!   (keys arrive in random order, so no `APPEND`).

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use heed::types::Bytes as HeedBytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions};

use crate::engine::{Engine, OpenCfg, Purpose};

/// An open LMDB environment with its unnamed database.
pub struct Lmdb {
    db: Database<'static, HeedBytes, HeedBytes>,
    env: Env,
    durable: bool,
}

/// Opens LMDB in `dir`.
pub fn open(dir: &Path, cfg: &OpenCfg) -> anyhow::Result<Arc<dyn Engine>> {
    let data = cfg.expected_keys.saturating_mul(cfg.value_len as u64 + 64);
    let map_size = (data.saturating_mul(3) + (1 << 30)).next_multiple_of(1 << 20);
    let mut flags = EnvFlags::empty();
    if !cfg.durable {
        flags |= EnvFlags::NO_SYNC;
    }
    if cfg.purpose == Purpose::LargeRead {
        flags |= EnvFlags::NO_READ_AHEAD;
    }
    let mut eo = EnvOpenOptions::new();
    eo.map_size(map_size as usize).max_readers(1024).max_dbs(1);
    // SAFETY: NO_SYNC trades durability against a system crash for speed, which is the
    // relaxed durability this benchmark asks for; NO_READ_AHEAD only changes madvise.
    unsafe { eo.flags(flags) };
    // SAFETY: each process opens this environment once (one adapter per directory per
    // process) and nothing else writes, truncates or maps the files while it is open.
    let env = unsafe { eo.open(dir)? };
    let wtxn = env.write_txn()?;
    let db = env
        .create_databases_and_commit(wtxn, |wdo, wtxn| -> heed::Result<_> {
            Ok(CommitOrAbort::<_, ()>::Commit(wdo.create_database::<HeedBytes, HeedBytes>(wtxn, None)?))
        })?
        .unwrap_commit();
    Ok(Arc::new(Lmdb { db, env, durable: cfg.durable }))
}

#[async_trait]
impl Engine for Lmdb {
    fn is_async(&self) -> bool {
        false
    }

    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<bytes::Bytes>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.db.get(&rtxn, key)?.map(bytes::Bytes::copy_from_slice))
    }

    async fn scan(&self, start: &[u8], limit: usize) -> anyhow::Result<Vec<(bytes::Bytes, bytes::Bytes)>> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::with_capacity(limit);
        let range = (Bound::Included(start), Bound::Unbounded);
        for kv in self.db.range(&rtxn, &range)?.take(limit) {
            let (k, v) = kv?;
            out.push((bytes::Bytes::copy_from_slice(k), bytes::Bytes::copy_from_slice(v)));
        }
        Ok(out)
    }

    async fn write(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<bool> {
        anyhow::ensure!(durable == self.durable, "LMDB durability is per environment");
        let mut wtxn = self.env.write_txn()?;
        for (k, v) in pairs {
            self.db.put(&mut wtxn, k, v)?;
        }
        wtxn.commit()?;
        Ok(true)
    }

    async fn close(&self) -> anyhow::Result<()> {
        Ok(self.env.force_sync()?)
    }
}
