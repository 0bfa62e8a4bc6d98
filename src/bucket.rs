//! Buckets: named keyspaces, each its own tree. Reads and one-operation writes can go
//! straight to the bucket; anything else goes through a [`Txn`].
//!
//! [`Bucket::get`] takes one unit of cooperative budget (`crate::coop`) before it reads, so
//! a loop of gets served from the page cache still yields to the executor; `put` and
//! `delete` take theirs in [`Txn::commit`], scans on each item of their [`Iter`].

use std::ops::RangeBounds;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::coop;
use crate::engine::read::{read_at, tree_stream, KeyRange};
use crate::engine::DbRef;
use crate::error::{Error, Result};
use crate::iter::Iter;
use crate::tree::Tree;
use crate::txn::Txn;

/// A handle to one bucket. Cheap to clone.
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

    fn check(&self) -> Result<()> {
        self.db.check_open()?;
        if self.tree.dropped.load(Ordering::Acquire) {
            return Err(Error::NotFound(format!("bucket {:?} was dropped", self.name)));
        }
        Ok(())
    }

    /// Starts a transaction on this bucket (snapshot isolation).
    pub fn begin(&self) -> Result<Txn> {
        self.check()?;
        Ok(Txn::new(self.db.clone(), self.tree.clone()))
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
