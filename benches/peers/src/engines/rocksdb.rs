//! RocksDB through the `rocksdb` crate, on OS threads.
//!
//! Best practice per workload:
//! - cache: an LRU block cache of the equal cache size, with index and filter blocks charged
//!   to it (`cache_index_and_filter_blocks`, L0 ones pinned), 10-bit bloom filters, LZ4.
//! - `increase_parallelism(cores)` for flush and compaction threads; default write buffers.
//! - relaxed durability: `WriteOptions::set_sync(false)` (the WAL reaches the kernel per
//!   write, no fsync); durable: `set_sync(true)` per write (RocksDB groups concurrent
//!   writers into one WAL write and one fsync).
//! - the plain `DB` (no transaction DB): single puts are atomic, no conflicts to retry.
//! - larger-than-memory reads: `use_direct_reads`, so the block cache is the one cache and
//!   the capped OS page cache does not hold a second copy.
//! - bulk and larger-than-memory loads: a `WriteBatch` of 1000 (or 256 x 4 KiB) pairs;
//!   auto compactions stay on (the footprint is what a user would get).
//! - close: `flush_wal(true)`, then the handle is dropped.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
    DB,
};

use crate::engine::{Engine, OpenCfg, Purpose};

/// An open RocksDB database.
pub struct Rocks {
    db: DB,
}

/// Opens RocksDB in `dir`.
pub fn open(dir: &Path, cfg: &OpenCfg) -> anyhow::Result<Arc<dyn Engine>> {
    let mut bbo = BlockBasedOptions::default();
    let cache = Cache::new_lru_cache(cfg.cache_bytes);
    bbo.set_block_cache(&cache);
    bbo.set_bloom_filter(10.0, false);
    bbo.set_cache_index_and_filter_blocks(true);
    bbo.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut o = Options::default();
    o.create_if_missing(true);
    o.increase_parallelism(std::thread::available_parallelism().map_or(2, |n| n.get() as i32));
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_block_based_table_factory(&bbo);
    if cfg.purpose == Purpose::LargeRead {
        o.set_use_direct_reads(true);
    }
    let db = DB::open(&o, dir)?;
    Ok(Arc::new(Rocks { db }))
}

#[async_trait]
impl Engine for Rocks {
    fn is_async(&self) -> bool {
        false
    }

    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Bytes>> {
        Ok(self.db.get_pinned(key)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    async fn scan(&self, start: &[u8], limit: usize) -> anyhow::Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::with_capacity(limit);
        for kv in self.db.iterator(IteratorMode::From(start, Direction::Forward)).take(limit) {
            let (k, v) = kv?;
            out.push((Bytes::from(k.into_vec()), Bytes::from(v.into_vec())));
        }
        Ok(out)
    }

    async fn write(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<bool> {
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        if pairs.len() == 1 {
            self.db.put_opt(pairs[0].0, pairs[0].1, &wo)?;
        } else {
            let mut b = WriteBatch::default();
            for (k, v) in pairs {
                b.put(k, v);
            }
            self.db.write_opt(b, &wo)?;
        }
        Ok(true)
    }

    async fn close(&self) -> anyhow::Result<()> {
        Ok(self.db.flush_wal(true)?)
    }
}
