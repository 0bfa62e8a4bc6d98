//! Write batches: blind writes to any number of buckets, committed together.
//!
//! A [`WriteBatch`] reads nothing and takes no snapshot, so its commit has nothing to check
//! against and never fails with a conflict: its writes commit as one WAL record at one
//! timestamp (all or nothing, after a crash too), over whatever was committed before
//! (last writer wins). A [`Transaction`](crate::Transaction) that read a key a batch then
//! wrote still conflicts on it as usual. The commit takes one unit of cooperative budget
//! (`crate::coop`).

use bytes::Bytes;

use crate::bucket::Bucket;
use crate::coop;
use crate::engine::DbRef;
use crate::error::Result;
use crate::options::Durability;
use crate::txn::WriteMap;

/// Blind writes to any number of buckets, committed as one, from
/// [`Db::batch`](crate::Db::batch).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// let (events, latest) = (db.bucket("events").await?, db.bucket("latest").await?);
/// let mut batch = db.batch();
/// batch.put(&events, b"0001", b"login")?;
/// batch.put(&latest, b"user-1", b"0001")?;
/// let ts = batch.commit().await?;
/// assert!(ts > 0);
/// assert_eq!(latest.get(b"user-1").await?.as_deref(), Some(&b"0001"[..]));
/// db.close().await?;
/// # Ok(()) }
/// ```
pub struct WriteBatch {
    db: DbRef,
    writes: WriteMap,
}

impl WriteBatch {
    pub(crate) fn new(db: DbRef) -> WriteBatch {
        WriteBatch { db, writes: WriteMap::default() }
    }

    /// Buffers a put in `bucket` (no I/O); a later write of the same key replaces it.
    pub fn put(&mut self, bucket: &Bucket, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.db.check_open()?;
        self.writes.insert(&self.db, bucket, key.as_ref(), Some(value.as_ref()))
    }

    /// Buffers a delete in `bucket` (no I/O).
    pub fn delete(&mut self, bucket: &Bucket, key: impl AsRef<[u8]>) -> Result<()> {
        self.db.check_open()?;
        self.writes.insert(&self.db, bucket, key.as_ref(), None)
    }

    /// The value this batch writes to `key` of `bucket`, if it writes it (`Some(None)` is
    /// a delete).
    pub fn pending(&self, bucket: &Bucket, key: impl AsRef<[u8]>) -> Option<Option<Bytes>> {
        self.writes.get(&bucket.tree, key.as_ref()).cloned()
    }

    /// Number of buffered writes, over every bucket.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commits with the database's default durability; returns the commit timestamp (of
    /// an empty batch: the latest committed one). What a dropped commit future leaves is
    /// as for [`Transaction::commit`](crate::Transaction::commit).
    pub async fn commit(self) -> Result<u64> {
        let d = self.db.opts.durability;
        self.commit_with(d).await
    }

    /// Commits with the given durability (see
    /// [`Transaction::commit_with`](crate::Transaction::commit_with)).
    pub async fn commit_with(self, durability: Durability) -> Result<u64> {
        coop::budget().await;
        self.db.commit_writes(&self.writes.sets(), None, durability).await
    }
}
