//! redb 4, on OS threads.
//!
//! Best practice per workload:
//! - cache: `Builder::set_cache_size` = the equal cache size.
//! - relaxed durability: `Durability::None` commits, with one `Durability::Immediate`
//!   commit at most once a second (redb cannot reuse pages freed by non-durable commits until
//!   a durable one, so a user running `None` commits persists periodically) and at close.
//!   `None` commits are not written at all until then: weaker than the other engines'
//!   relaxed mode, which reaches the kernel per commit.
//! - durable: `Durability::Immediate` per commit (redb's default).
//! - redb has one writer at a time: concurrent committers queue on `begin_write`; there are
//!   no write conflicts to retry.
//! - reads: one read transaction per `get` or scan, `&[u8]` keys and values.
//! - bulk and larger-than-memory loads: 1000 (or 256 x 4 KiB) inserts per write transaction.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::engine::{Engine, OpenCfg};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

/// An open redb database.
pub struct Redb {
    db: Database,
    last_durable: Mutex<Instant>,
}

/// Opens redb (one file, `redb.db`, in `dir`).
pub fn open(dir: &Path, cfg: &OpenCfg) -> anyhow::Result<Arc<dyn Engine>> {
    let db = Database::builder().set_cache_size(cfg.cache_bytes).create(dir.join("redb.db"))?;
    let tx = db.begin_write()?;
    tx.open_table(TABLE)?;
    tx.commit()?;
    Ok(Arc::new(Redb { db, last_durable: Mutex::new(Instant::now()) }))
}

impl Redb {
    fn commit(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        let immediate = durable || {
            let mut last = self.last_durable.lock();
            let due = last.elapsed() >= Duration::from_secs(1);
            if due {
                *last = Instant::now();
            }
            due
        };
        tx.set_durability(if immediate { Durability::Immediate } else { Durability::None })?;
        {
            let mut t = tx.open_table(TABLE)?;
            for (k, v) in pairs {
                t.insert(*k, *v)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[async_trait]
impl Engine for Redb {
    fn is_async(&self) -> bool {
        false
    }

    async fn get(&self, key: &[u8]) -> anyhow::Result<Option<Bytes>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TABLE)?;
        Ok(t.get(key)?.map(|v| Bytes::copy_from_slice(v.value())))
    }

    async fn scan(&self, start: &[u8], limit: usize) -> anyhow::Result<Vec<(Bytes, Bytes)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let mut out = Vec::with_capacity(limit);
        for kv in t.range(start..)?.take(limit) {
            let (k, v) = kv?;
            out.push((Bytes::copy_from_slice(k.value()), Bytes::copy_from_slice(v.value())));
        }
        Ok(out)
    }

    async fn write(&self, pairs: &[(&[u8], &[u8])], durable: bool) -> anyhow::Result<bool> {
        self.commit(pairs, durable)?;
        Ok(true)
    }

    async fn close(&self) -> anyhow::Result<()> {
        // A final durable (empty) commit persists every earlier `None` commit.
        self.commit(&[], true)
    }
}
