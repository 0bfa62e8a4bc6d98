//! fjall 3, on OS threads.
//!
//! Best practice per workload:
//! - cache: `Database::builder(..).cache_size` = the equal cache size (block and blob cache);
//!   one keyspace with the default create options (LZ4, bloom filters, leveled compaction).
//! - relaxed durability: a plain `Keyspace::insert` per update (fjall's journal is written
//!   from its buffer and synced in the background): weaker than the engines whose relaxed
//!   commit reaches the kernel, as fjall documents.
//! - durable: a write batch with `durability(Some(PersistMode::SyncData))` per commit.
//! - the plain (non-transactional) keyspace: every single-key write is atomic and there are
//!   no conflicts to retry, which is how fjall is used for independent puts.
//! - bulk and larger-than-memory loads: write batches of 1000 (or 256 x 4 KiB) pairs.
//! - close: `persist(PersistMode::SyncAll)`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::engine::{Engine, OpenCfg};

/// An open fjall database.
pub struct Fjall {
    ks: Keyspace,
    db: Database,
}

/// Opens fjall in `dir`.
pub fn open(dir: &Path, cfg: &OpenCfg) -> anyhow::Result<Arc<dyn Engine>> {
    let db = Database::builder(dir).cache_size(cfg.cache_bytes as u64).open()?;
    let ks = db.keyspace("bench", KeyspaceCreateOptions::default)?;
    Ok(Arc::new(Fjall { ks, db }))
}

#[async_trait]
impl Engine for Fjall {
    fn is_async(&self) -> bool {
        false
    }

    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Bytes>> {
        Ok(self.ks.get(key)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    async fn scan(&self, start: &[u8], limit: usize) -> anyhow::Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::with_capacity(limit);
        for g in self.ks.range(start..).take(limit) {
            let (k, v) = g.into_inner()?;
            out.push((Bytes::copy_from_slice(&k), Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }

    async fn write(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<bool> {
        if pairs.len() == 1 && !durable {
            self.ks.insert(pairs[0].0, pairs[0].1)?;
            return Ok(true);
        }
        let mut b = self.db.batch();
        if durable {
            b = b.durability(Some(PersistMode::SyncData));
        }
        for (k, v) in pairs {
            b.insert(&self.ks, *k, *v);
        }
        b.commit()?;
        Ok(true)
    }

    async fn close(&self) -> anyhow::Result<()> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }
}
