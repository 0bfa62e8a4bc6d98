//! Transactions (snapshot isolation) and read-only snapshots.
//!
//! A [`Transaction`] ([`Db::begin`](crate::Db::begin)) reads one snapshot of every bucket,
//! sees its own writes, and buffers its writes, to any number of buckets, in memory until
//! [`Transaction::commit`]: they commit together, as one WAL record with one commit
//! timestamp, or not at all (after a crash too). Commit fails with [`Error::Conflict`]
//! when another transaction committed a write to one of its keys, in any bucket, after its
//! snapshot was taken (first committer wins). Dropping a transaction rolls it back. A
//! [`Txn`] ([`Bucket::begin`]) is the one-bucket shorthand: a `Transaction` whose calls
//! name no bucket. A [`Snapshot`] is a read-only view of every bucket; it never blocks and
//! is never blocked.
//!
//! [`Transaction::get`], [`Snapshot::get`] and [`Transaction::commit_with`] (so the other
//! commits) each take one unit of cooperative budget (`crate::coop`) before they do their
//! work, and scans take one per item of their [`Iter`]: a loop of reads from the page
//! cache, or of commits that never wait, still yields to the executor at a bounded rate.

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::sync::Arc;

use bytes::Bytes;

use crate::bucket::Bucket;
use crate::coop;
use crate::engine::commit::WriteSet;
use crate::engine::read::{overlay, read_at, tree_stream, KeyRange};
use crate::engine::{check_key, check_value, DbRef};
use crate::error::{Error, Result};
use crate::iter::Iter;
use crate::mvcc::SnapshotGuard;
use crate::options::Durability;
use crate::tree::Tree;

/// The writes buffered for one bucket: its tree and key to new value (`None` = delete).
pub(crate) struct BucketWrites {
    pub tree: Arc<Tree>,
    pub writes: BTreeMap<Bytes, Option<Bytes>>,
}

/// Buffered writes of any number of buckets, by bucket id (so a commit logs and applies
/// them bucket by bucket in id order, each bucket's keys in key order).
#[derive(Default)]
pub(crate) struct WriteMap(BTreeMap<u32, BucketWrites>);

impl WriteMap {
    /// Buffers `key` = `value` (`None` = delete) in `bucket`, which must belong to `db`.
    pub fn insert(&mut self, db: &DbRef, bucket: &Bucket, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        check_key(key)?;
        if let Some(v) = value {
            check_value(v)?;
        }
        same_db(db, bucket)?;
        let entry = self
            .0
            .entry(bucket.tree.id)
            .or_insert_with(|| BucketWrites { tree: bucket.tree.clone(), writes: BTreeMap::new() });
        entry.writes.insert(Bytes::copy_from_slice(key), value.map(Bytes::copy_from_slice));
        Ok(())
    }

    /// The buffered write of `key` in the bucket of `tree`, if any.
    pub fn get(&self, tree: &Tree, key: &[u8]) -> Option<&Option<Bytes>> {
        self.0.get(&tree.id).and_then(|b| b.writes.get(key))
    }

    /// Number of buffered writes over every bucket.
    pub fn len(&self) -> usize {
        self.0.values().map(|b| b.writes.len()).sum()
    }

    /// One write set per bucket, for the commit.
    pub fn sets(&self) -> Vec<WriteSet<'_>> {
        self.0.values().map(|b| WriteSet { tree: &b.tree, writes: &b.writes }).collect()
    }

    /// The buffered writes of the bucket of `tree` in `range`, in scan order.
    fn in_range(&self, tree: &Tree, range: &KeyRange, reverse: bool) -> Vec<(Bytes, Option<Bytes>)> {
        let Some(b) = self.0.get(&tree.id) else { return Vec::new() };
        let mut own: Vec<(Bytes, Option<Bytes>)> =
            b.writes.iter().filter(|(k, _)| range.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if reverse {
            own.reverse();
        }
        own
    }
}

/// [`Error::InvalidArgument`] unless `bucket` is a bucket of `db`.
pub(crate) fn same_db(db: &DbRef, bucket: &Bucket) -> Result<()> {
    if !Arc::ptr_eq(&bucket.db, db) {
        return Err(Error::invalid("the bucket belongs to another database"));
    }
    Ok(())
}

/// A read-write transaction over every bucket (snapshot isolation), from
/// [`Db::begin`](crate::Db::begin).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// let (users, by_email) = (db.bucket("users").await?, db.bucket("users_by_email").await?);
/// // A record and its index entry change together, or not at all.
/// let mut tx = db.begin()?;
/// tx.put(&users, b"u1", b"alice@example.com")?;
/// tx.put(&by_email, b"alice@example.com", b"u1")?;
/// tx.commit().await?;
/// assert_eq!(by_email.get(b"alice@example.com").await?.as_deref(), Some(&b"u1"[..]));
/// db.close().await?;
/// # Ok(()) }
/// ```
pub struct Transaction {
    db: DbRef,
    snap: Arc<SnapshotGuard>,
    writes: WriteMap,
}

impl Transaction {
    pub(crate) fn new(db: DbRef) -> Transaction {
        let snap = Arc::new(db.mvcc.snapshot());
        Transaction { db, snap, writes: WriteMap::default() }
    }

    /// The snapshot timestamp this transaction reads at.
    pub fn snapshot_ts(&self) -> u64 {
        self.snap.ts()
    }

    /// Reads a key of `bucket`: this transaction's own write if any, else the snapshot's
    /// value.
    pub async fn get(&self, bucket: &Bucket, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        coop::budget().await;
        let key = key.as_ref();
        check_key(key)?;
        same_db(&self.db, bucket)?;
        self.db.check_open()?;
        if let Some(w) = self.writes.get(&bucket.tree, key) {
            return Ok(w.clone());
        }
        read_at(&self.db, &bucket.tree, key, self.snap.ts()).await
    }

    /// Buffers a put in `bucket` (no I/O).
    pub fn put(&mut self, bucket: &Bucket, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.db.check_open()?;
        self.writes.insert(&self.db, bucket, key.as_ref(), Some(value.as_ref()))
    }

    /// Buffers a delete in `bucket` (no I/O).
    pub fn delete(&mut self, bucket: &Bucket, key: impl AsRef<[u8]>) -> Result<()> {
        self.db.check_open()?;
        self.writes.insert(&self.db, bucket, key.as_ref(), None)
    }

    /// Pairs of `bucket` in `range` as this transaction sees them (its own writes laid
    /// over its snapshot), in key order.
    pub async fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, bucket: &Bucket, range: R) -> Result<Iter> {
        self.scan(bucket, KeyRange::from_bounds(&range), false)
    }

    /// Pairs of `bucket` in `range` as this transaction sees them, in reverse key order.
    pub async fn range_rev<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        bucket: &Bucket,
        range: R,
    ) -> Result<Iter> {
        self.scan(bucket, KeyRange::from_bounds(&range), true)
    }

    /// Pairs of `bucket` whose key starts with `prefix`, as this transaction sees them, in
    /// key order.
    pub async fn prefix(&self, bucket: &Bucket, prefix: impl AsRef<[u8]>) -> Result<Iter> {
        self.scan(bucket, KeyRange::prefix(prefix.as_ref()), false)
    }

    fn scan(&self, bucket: &Bucket, range: KeyRange, reverse: bool) -> Result<Iter> {
        same_db(&self.db, bucket)?;
        self.db.check_open()?;
        let own = self.writes.in_range(&bucket.tree, &range, reverse);
        let base = tree_stream(self.db.clone(), bucket.tree.clone(), self.snap.clone(), range, reverse);
        Ok(Iter::new(overlay(base, own, reverse)))
    }

    /// Number of buffered writes, over every bucket.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commits with the database's default durability. Returns the commit timestamp.
    ///
    /// Every write, in every bucket, commits at that one timestamp in one WAL record: a
    /// snapshot and a recovery after a crash see all of them or none.
    ///
    /// A commit is acknowledged when this future returns `Ok`. A commit whose future is
    /// dropped after its first poll may or may not have committed (it may be applied and
    /// reach the WAL without being acknowledged): read the keys back to know. One dropped
    /// before its first poll did nothing.
    pub async fn commit(self) -> Result<u64> {
        let d = self.db.opts.durability;
        self.commit_with(d).await
    }

    /// Commits with the given durability; see [`Transaction::commit`] for what a dropped
    /// commit future leaves. With [`Durability::None`] the commit returns before its WAL
    /// record is written: a background task writes and syncs it within about 20 ms,
    /// [`Db::flush`] and [`Db::close`] do at once, and a `Db` dropped without `close` does
    /// before it releases its lock; a crash (or a process exit) before then loses it,
    /// together with every later commit.
    ///
    /// [`Db::flush`]: crate::Db::flush
    /// [`Db::close`]: crate::Db::close
    pub async fn commit_with(self, durability: Durability) -> Result<u64> {
        coop::budget().await;
        self.db.commit_writes(&self.writes.sets(), Some(self.snap.ts()), durability).await
    }

    /// Discards the transaction (dropping it does the same).
    pub fn rollback(self) {}
}

/// A read-write transaction on one bucket, from [`Bucket::begin`]: a [`Transaction`]
/// whose calls name no bucket.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// let users = db.bucket("users").await?;
/// let mut tx = users.begin()?;
/// tx.put(b"alice", b"42")?;
/// assert_eq!(tx.get(b"alice").await?.as_deref(), Some(&b"42"[..])); // its own write
/// assert_eq!(users.get(b"alice").await?, None); // not committed yet
/// tx.commit().await?;
/// assert_eq!(users.get(b"alice").await?.as_deref(), Some(&b"42"[..]));
/// db.close().await?;
/// # Ok(()) }
/// ```
pub struct Txn {
    inner: Transaction,
    bucket: Bucket,
}

impl Txn {
    pub(crate) fn new(bucket: Bucket) -> Txn {
        Txn { inner: Transaction::new(bucket.db.clone()), bucket }
    }

    /// The snapshot timestamp this transaction reads at.
    pub fn snapshot_ts(&self) -> u64 {
        self.inner.snapshot_ts()
    }

    /// Reads a key: this transaction's own write if any, else the snapshot's value.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.inner.get(&self.bucket, key).await
    }

    /// Buffers a put (no I/O).
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.inner.put(&self.bucket, key, value)
    }

    /// Buffers a delete (no I/O).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<()> {
        self.inner.delete(&self.bucket, key)
    }

    /// Pairs in `range` as this transaction sees them, in key order.
    pub async fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Iter> {
        self.inner.range(&self.bucket, range).await
    }

    /// Pairs in `range` in reverse key order.
    pub async fn range_rev<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Iter> {
        self.inner.range_rev(&self.bucket, range).await
    }

    /// Pairs whose key starts with `prefix`, in key order.
    pub async fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Iter> {
        self.inner.prefix(&self.bucket, prefix).await
    }

    /// Number of buffered writes.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Commits with the database's default durability; see [`Transaction::commit`].
    pub async fn commit(self) -> Result<u64> {
        self.inner.commit().await
    }

    /// Commits with the given durability; see [`Transaction::commit_with`].
    pub async fn commit_with(self, durability: Durability) -> Result<u64> {
        self.inner.commit_with(durability).await
    }

    /// Discards the transaction (dropping it does the same).
    pub fn rollback(self) {}

    /// This transaction as one over every bucket, its writes so far kept.
    pub fn into_transaction(self) -> Transaction {
        self.inner
    }
}

/// A read-only view of the whole database at one moment.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// let b = db.bucket("b").await?;
/// b.put(b"k", b"old").await?;
/// let snap = db.snapshot()?;
/// b.put(b"k", b"new").await?;
/// assert_eq!(snap.get(&b, b"k").await?.as_deref(), Some(&b"old"[..]));
/// assert_eq!(b.get(b"k").await?.as_deref(), Some(&b"new"[..]));
/// db.close().await?;
/// # Ok(()) }
/// ```
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
        same_db(&self.db, bucket)?;
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
