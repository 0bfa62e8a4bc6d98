//! Transactions (snapshot isolation) and read-only snapshots.
//!
//! A [`Txn`] reads one snapshot, sees its own writes, and buffers its writes in memory
//! until [`Txn::commit`]. Commit fails with [`Error::Conflict`] when another transaction
//! committed a write to one of its keys after its snapshot was taken (first committer
//! wins). Dropping a transaction rolls it back. A [`Snapshot`] is a read-only view of every
//! bucket; it never blocks and is never blocked.
//!
//! [`Txn::get`], [`Snapshot::get`] and [`Txn::commit_with`] (so [`Txn::commit`]) each take
//! one unit of cooperative budget (`crate::coop`) before they do their work, and scans take
//! one per item of their [`Iter`]: a loop of reads from the page cache, or of commits that
//! never wait, still yields to the executor at a bounded rate.

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::sync::Arc;

use bytes::Bytes;

use crate::bucket::Bucket;
use crate::coop;
use crate::engine::read::{overlay, read_at, tree_stream, KeyRange};
use crate::engine::{check_key, check_value, DbRef};
use crate::error::{Error, Result};
use crate::iter::Iter;
use crate::mvcc::SnapshotGuard;
use crate::options::Durability;
use crate::tree::Tree;

/// A read-write transaction on one bucket.
pub struct Txn {
    db: DbRef,
    tree: Arc<Tree>,
    snap: Arc<SnapshotGuard>,
    writes: BTreeMap<Bytes, Option<Bytes>>,
}

impl Txn {
    pub(crate) fn new(db: DbRef, tree: Arc<Tree>) -> Txn {
        let snap = Arc::new(db.mvcc.snapshot());
        Txn { db, tree, snap, writes: BTreeMap::new() }
    }

    /// The snapshot timestamp this transaction reads at.
    pub fn snapshot_ts(&self) -> u64 {
        self.snap.ts()
    }

    /// Reads a key: this transaction's own write if any, else the snapshot's value.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        coop::budget().await;
        let key = key.as_ref();
        check_key(key)?;
        self.db.check_open()?;
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        read_at(&self.db, &self.tree, key, self.snap.ts()).await
    }

    /// Buffers a put (no I/O).
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        check_key(key)?;
        check_value(value)?;
        self.db.check_open()?;
        self.writes.insert(Bytes::copy_from_slice(key), Some(Bytes::copy_from_slice(value)));
        Ok(())
    }

    /// Buffers a delete (no I/O).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        check_key(key)?;
        self.db.check_open()?;
        self.writes.insert(Bytes::copy_from_slice(key), None);
        Ok(())
    }

    /// Pairs in `range` as this transaction sees them, in key order.
    pub async fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Iter> {
        self.scan(KeyRange::from_bounds(&range), false)
    }

    /// Pairs in `range` in reverse key order.
    pub async fn range_rev<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Iter> {
        self.scan(KeyRange::from_bounds(&range), true)
    }

    /// Pairs whose key starts with `prefix`, in key order.
    pub async fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Iter> {
        self.scan(KeyRange::prefix(prefix.as_ref()), false)
    }

    fn scan(&self, range: KeyRange, reverse: bool) -> Result<Iter> {
        self.db.check_open()?;
        let mut own: Vec<(Bytes, Option<Bytes>)> = self
            .writes
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if reverse {
            own.reverse();
        }
        let base = tree_stream(self.db.clone(), self.tree.clone(), self.snap.clone(), range, reverse);
        Ok(Iter::new(overlay(base, own, reverse)))
    }

    /// Number of buffered writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Commits with the database's default durability. Returns the commit timestamp.
    ///
    /// A commit is acknowledged when this future returns `Ok`. A commit whose future is
    /// dropped after its first poll may or may not have committed (it may be applied and
    /// reach the WAL without being acknowledged): read the keys back to know. One dropped
    /// before its first poll did nothing.
    pub async fn commit(self) -> Result<u64> {
        let d = self.db.opts.durability;
        self.commit_with(d).await
    }

    /// Commits with the given durability; see [`Txn::commit`] for what a dropped commit
    /// future leaves. With [`Durability::None`] the commit returns before its WAL record is
    /// written: a background task writes and syncs it within about 20 ms, [`Db::flush`]
    /// and [`Db::close`] do at once, and a `Db` dropped without `close` does before it
    /// releases its lock; a crash (or a process exit) before then loses it, together with
    /// every later commit.
    ///
    /// [`Db::flush`]: crate::Db::flush
    /// [`Db::close`]: crate::Db::close
    pub async fn commit_with(self, durability: Durability) -> Result<u64> {
        coop::budget().await;
        self.db.commit_writes(&self.tree, self.snap.ts(), &self.writes, durability).await
    }

    /// Discards the transaction (dropping it does the same).
    pub fn rollback(self) {}
}

/// A read-only view of the whole database at one moment.
pub struct Snapshot {
    db: DbRef,
    snap: Arc<SnapshotGuard>,
}

impl Snapshot {
    pub(crate) fn new(db: DbRef) -> Snapshot {
        let snap = Arc::new(db.mvcc.snapshot());
        Snapshot { db, snap }
    }

    /// The timestamp this snapshot reads at.
    pub fn ts(&self) -> u64 {
        self.snap.ts()
    }

    fn tree_of(&self, bucket: &Bucket) -> Result<Arc<Tree>> {
        if !Arc::ptr_eq(&bucket.db, &self.db) {
            return Err(Error::invalid("the bucket belongs to another database"));
        }
        Ok(bucket.tree.clone())
    }

    /// Reads a key of `bucket` at this snapshot.
    pub async fn get(&self, bucket: &Bucket, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        coop::budget().await;
        let t = self.tree_of(bucket)?;
        read_at(&self.db, &t, key.as_ref(), self.snap.ts()).await
    }

    /// Pairs of `bucket` in `range` at this snapshot.
    pub async fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, bucket: &Bucket, range: R) -> Result<Iter> {
        let t = self.tree_of(bucket)?;
        self.db.check_open()?;
        Ok(Iter::new(tree_stream(
            self.db.clone(),
            t,
            self.snap.clone(),
            KeyRange::from_bounds(&range),
            false,
        )))
    }

    /// Pairs of `bucket` in `range` at this snapshot, in reverse order.
    pub async fn range_rev<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        bucket: &Bucket,
        range: R,
    ) -> Result<Iter> {
        let t = self.tree_of(bucket)?;
        self.db.check_open()?;
        Ok(Iter::new(tree_stream(self.db.clone(), t, self.snap.clone(), KeyRange::from_bounds(&range), true)))
    }
}
