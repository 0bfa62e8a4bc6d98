//! Buckets: named keyspaces, each its own tree. Reads and one-operation writes can go
//! straight to the bucket, so can a read-modify-write of one key
//! ([`Bucket::compare_and_swap`], [`Bucket::fetch_update`]: they retry on conflicts
//! themselves); anything else goes through a [`Txn`] (this bucket) or a
//! [`Transaction`](crate::Transaction) (any bucket).
//!
//! A read-modify-write first tries optimistically, as a transaction would, up to
//! [`UPDATE_OPTIMISTIC_ATTEMPTS`] times; if every try lost to another commit of the key,
//! it makes one last attempt under the commit lock, where no commit can come between its
//! read and its write. Its retries are bounded and it never fails with a conflict.
//!
//! [`Bucket::get`] takes one unit of cooperative budget (`crate::coop`) before it reads, so
//! a loop of gets served from the page cache still yields to the executor; `put` and
//! `delete` take theirs in [`Txn::commit`], scans on each item of their [`Iter`].

use std::ops::RangeBounds;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::coop;
use crate::engine::commit::Decision;
use crate::engine::read::{read_at, tree_stream, KeyRange};
use crate::engine::{check_value, DbRef};
use crate::error::{Error, Result};
use crate::iter::Iter;
use crate::limits::UPDATE_OPTIMISTIC_ATTEMPTS;
use crate::tree::Tree;
use crate::txn::Txn;

/// A handle to one bucket. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// use futures::TryStreamExt;
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// let fruit = db.bucket("fruit").await?;
/// for (k, v) in [("apple", "red"), ("apricot", "orange"), ("banana", "yellow")] {
///     fruit.put(k, v).await?;
/// }
/// let ap: Vec<_> = fruit.prefix(b"ap").await?.try_collect().await?;
/// assert_eq!(ap.len(), 2);
/// let last = fruit.range_rev::<&[u8], _>(..).await?.try_next().await?;
/// assert_eq!(last.map(|(k, _)| k).as_deref(), Some(&b"banana"[..]));
/// fruit.delete(b"apple").await?;
/// assert_eq!(fruit.get(b"apple").await?, None);
/// db.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bucket {
    pub(crate) db: DbRef,
    pub(crate) tree: Arc<Tree>,
    name: Arc<str>,
}

impl Bucket {
    pub(crate) fn new(db: DbRef, tree: Arc<Tree>, name: &str) -> Bucket {
        Bucket { db, tree, name: name.into() }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn check(&self) -> Result<()> {
        self.db.check_open()?;
        if self.tree.dropped.load(Ordering::Acquire) {
            return Err(Error::NotFound(format!("bucket {:?} was dropped", self.name)));
        }
        Ok(())
    }

    /// Starts a transaction on this bucket (snapshot isolation).
    pub fn begin(&self) -> Result<Txn> {
        self.check()?;
        Ok(Txn::new(self.clone()))
    }

    /// Reads the latest committed value of `key`; `Ok(None)` when absent.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        coop::budget().await;
        self.check()?;
        let snap = self.db.mvcc.snapshot();
        read_at(&self.db, &self.tree, key.as_ref(), snap.ts()).await
    }

    /// Puts one key in its own transaction.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut t = self.begin()?;
        t.put(key, value)?;
        t.commit().await.map(|_| ())
    }

    /// Deletes one key in its own transaction.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut t = self.begin()?;
        t.delete(key)?;
        t.commit().await.map(|_| ())
    }

    /// Sets `key` to `new` (`None` = deletes it) if its value is `expected` (`None` =
    /// absent), atomically. `Ok(Err(_))` when it is not, with the value found.
    ///
    /// Conflicts with other commits are retried inside (module doc): the comparison is
    /// always against the latest committed value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> ringkv::Result<()> {
    /// let dir = tempfile::tempdir().expect("a temporary directory");
    /// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
    /// let locks = db.bucket("locks").await?;
    /// // Take the lock if nobody holds it.
    /// assert!(locks.compare_and_swap(b"job-7", None, Some(b"worker-1")).await?.is_ok());
    /// let lost = locks.compare_and_swap(b"job-7", None, Some(b"worker-2")).await?.unwrap_err();
    /// assert_eq!(lost.current.as_deref(), Some(&b"worker-1"[..]));
    /// db.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<std::result::Result<(), CompareAndSwapError>> {
        if let Some(v) = new {
            check_value(v)?;
        }
        let new = new.map(Bytes::copy_from_slice);
        let (old, written) = self
            .read_modify_write(key.as_ref(), |cur| {
                Ok(if cur.map(AsRef::as_ref) == expected {
                    Decision::Write(new.clone())
                } else {
                    Decision::Keep
                })
            })
            .await?;
        if written {
            Ok(Ok(()))
        } else {
            Ok(Err(CompareAndSwapError { current: old, proposed: new }))
        }
    }

    /// Replaces the value of `key` by `f(current)` (`None` = absent; returning `None`
    /// deletes the key), atomically, and returns the value it replaced.
    ///
    /// `f` may run more than once: conflicts with other commits are retried inside
    /// (module doc), each time on the latest committed value; keep it cheap and free of
    /// side effects (the last attempt runs it under the commit lock).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> ringkv::Result<()> {
    /// let dir = tempfile::tempdir().expect("a temporary directory");
    /// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
    /// let counters = db.bucket("counters").await?;
    /// let incr = |cur: Option<&[u8]>| {
    ///     let n = cur.map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    ///     Some((n + 1).to_le_bytes())
    /// };
    /// assert_eq!(counters.fetch_update(b"hits", incr).await?, None);
    /// let before = counters.fetch_update(b"hits", incr).await?;
    /// assert_eq!(before.as_deref(), Some(&1u64.to_le_bytes()[..]));
    /// db.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn fetch_update<F, V>(&self, key: impl AsRef<[u8]>, mut f: F) -> Result<Option<Bytes>>
    where
        F: FnMut(Option<&[u8]>) -> Option<V>,
        V: AsRef<[u8]>,
    {
        let (old, _) = self
            .read_modify_write(key.as_ref(), |cur| {
                let new = f(cur.map(AsRef::as_ref));
                if let Some(v) = &new {
                    check_value(v.as_ref())?;
                }
                Ok(Decision::Write(new.map(|v| Bytes::copy_from_slice(v.as_ref()))))
            })
            .await?;
        Ok(old)
    }

    /// The retry loop of a read-modify-write (module doc). Returns the value read by the
    /// attempt that finished and whether it wrote.
    async fn read_modify_write<F>(&self, key: &[u8], mut decide: F) -> Result<(Option<Bytes>, bool)>
    where
        F: FnMut(Option<&Bytes>) -> Result<Decision>,
    {
        crate::engine::check_key(key)?;
        for _ in 0..UPDATE_OPTIMISTIC_ATTEMPTS {
            let mut t = self.begin()?;
            let old = t.get(key).await?;
            match decide(old.as_ref())? {
                Decision::Keep => return Ok((old, false)),
                Decision::Write(Some(v)) => t.put(key, v)?,
                Decision::Write(None) => t.delete(key)?,
            }
            match t.commit().await {
                Ok(_) => return Ok((old, true)),
                Err(Error::Conflict) => {}
                Err(e) => return Err(e),
            }
        }
        self.check()?;
        let d = self.db.opts.durability;
        let (old, ts) = self.db.update_locked(&self.tree, key, decide, d).await?;
        Ok((old, ts.is_some()))
    }

    fn scan(&self, range: KeyRange, reverse: bool) -> Result<Iter> {
        self.check()?;
        let snap = Arc::new(self.db.mvcc.snapshot());
        Ok(Iter::new(tree_stream(self.db.clone(), self.tree.clone(), snap, range, reverse)))
    }

    /// Committed pairs in `range`, in key order.
    pub async fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Iter> {
        self.scan(KeyRange::from_bounds(&range), false)
    }

    /// Committed pairs in `range`, in reverse key order.
    pub async fn range_rev<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Iter> {
        self.scan(KeyRange::from_bounds(&range), true)
    }

    /// Committed pairs whose key starts with `prefix`.
    pub async fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Iter> {
        self.scan(KeyRange::prefix(prefix.as_ref()), false)
    }

    /// Every committed pair, in key order.
    pub async fn iter(&self) -> Result<Iter> {
        self.scan(KeyRange { lo: std::ops::Bound::Unbounded, hi: std::ops::Bound::Unbounded }, false)
    }
}

/// The answer of a [`Bucket::compare_and_swap`] whose expected value was not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareAndSwapError {
    /// The value found (`None` = absent).
    pub current: Option<Bytes>,
    /// The value that was not written (`None` = a delete).
    pub proposed: Option<Bytes>,
}

impl std::fmt::Display for CompareAndSwapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "compare and swap: the current value ({:?}) is not the expected one", self.current)
    }
}

impl std::error::Error for CompareAndSwapError {}
