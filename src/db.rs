//! The database handle: [`Db`] opens, names buckets, snapshots, checkpoints, flushes,
//! reports [`Stats`] and closes. It is a thin handle over the engine floor
//! (`crate::engine`), where every protocol lives (open and recovery, commit, checkpoint,
//! GC, the background task, the read path, the lifetime of an open database).

use std::path::Path;

use crate::batch::WriteBatch;
use crate::bucket::Bucket;
use crate::engine::{self, checkpoint, DbRef};
use crate::error::Result;
use crate::options::{IoBackend, Options};
use crate::txn::{Snapshot, Transaction};

pub use crate::engine::backup::BackupStats;
pub use crate::engine::checkpoint::CheckpointStats;
pub use crate::engine::stats::{BucketStats, Stats};

/// An open database. Cheap to clone; every clone is the same database.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// use ringkv::{Db, Options};
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = Db::open(dir.path(), Options::default()).await?;
/// let users = db.bucket("users").await?;
/// users.put(b"alice", b"42").await?;
/// assert_eq!(db.buckets()?, ["users"]);
/// db.close().await?;
/// // Reopened, read-only: recovery in memory, every write refused.
/// let db = Db::open(dir.path(), Options::default().read_only(true)).await?;
/// let users = db.existing_bucket("users")?;
/// assert_eq!(users.get(b"alice").await?.as_deref(), Some(&b"42"[..]));
/// assert!(users.put(b"bob", b"7").await.is_err());
/// db.close().await?;
/// assert!(Db::check(dir.path(), &Options::default()).await?.is_ok());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: DbRef,
}

impl Db {
    /// Opens (or creates) the database in directory `path`, recovering it after a crash.
    /// Works under any executor.
    ///
    /// The directory is locked first, before anything in it is read or written, and stays
    /// locked until [`Db::close`] or the drop of the last handle: a writer excludes every
    /// other open, in this process or another, and a read-only open
    /// ([`Options::read_only`]) excludes writers. A conflicting open fails at once with
    /// [`Error::Locked`](crate::Error::Locked). An empty path, or one that is not a directory, is
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) before any file is touched.
    ///
    /// A read-only open recovers in memory only: it creates, renames, removes and writes
    /// nothing (it works on a read-only mount), fails where there is no database, and
    /// answers every write with [`Error::ReadOnly`](crate::Error::ReadOnly).
    pub async fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let inner = engine::open::open(path.as_ref(), opts).await?;
        Ok(Db { inner: DbRef::new(inner) })
    }

    /// The I/O backend in use (`Uring` or `ThreadPool`).
    pub fn io_backend(&self) -> IoBackend {
        self.inner.io.backend()
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Opens the bucket `name`, creating it (durably) if it does not exist.
    pub async fn bucket(&self, name: &str) -> Result<Bucket> {
        let t = self.inner.bucket_tree(name).await?;
        Ok(Bucket::new(self.inner.clone(), t, name))
    }

    /// Opens an existing bucket; [`Error::NotFound`](crate::Error::NotFound) if there is none by that name.
    pub fn existing_bucket(&self, name: &str) -> Result<Bucket> {
        let t = self.inner.existing_tree(name)?;
        Ok(Bucket::new(self.inner.clone(), t, name))
    }

    /// Deletes a bucket and everything in it; [`Error::NotFound`](crate::Error::NotFound) if it does not exist.
    pub async fn drop_bucket(&self, name: &str) -> Result<()> {
        self.inner.drop_bucket(name).await
    }

    /// Names of every bucket, sorted.
    pub fn buckets(&self) -> Result<Vec<String>> {
        self.inner.bucket_names()
    }

    /// Starts a transaction over every bucket (snapshot isolation): its writes, to any
    /// buckets, commit together at one timestamp or not at all. See [`Transaction`];
    /// [`Bucket::begin`] is the one-bucket shorthand.
    pub fn begin(&self) -> Result<Transaction> {
        self.inner.check_open()?;
        Ok(Transaction::new(self.inner.clone()))
    }

    /// An empty batch of blind writes (no snapshot, no conflict check) to any buckets,
    /// committed together. See [`WriteBatch`].
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new(self.inner.clone())
    }

    /// A read-only view of every bucket at the current moment; never blocks writers.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.inner.check_open()?;
        Ok(Snapshot::new(self.inner.clone()))
    }

    /// Reads pages that are only on disk into the cache, in the order of their addresses
    /// with many reads in flight, until the pages in memory take half the cache's room
    /// (`Options::cache_capacity` less the page table) or none is left; returns how many
    /// pages it went through. Runs by itself after open unless `Options::warm_cache` is
    /// off; calling it again loads what was evicted since, within the same bound.
    pub async fn warm_cache(&self) -> Result<usize> {
        self.inner.warm_cache().await
    }

    /// Writes every dirty page to data and blob files and moves the WAL frontier.
    pub async fn checkpoint(&self) -> Result<CheckpointStats> {
        self.inner.check_open()?;
        self.inner.check_writable()?;
        checkpoint::run(&self.inner).await
    }

    /// Writes a consistent copy of the database into directory `dest` (which must not
    /// exist, or be empty) while commits go on, and returns its cut: the copy holds exactly
    /// the commits whose timestamp is at or below [`BackupStats::cut_ts`], among them every
    /// commit acknowledged before the call. The copy opens as a database of its own (with
    /// [`Db::open`], or checked with [`Db::check`]).
    ///
    /// The backup runs a checkpoint whose cut is the backup's, then copies the data and
    /// blob files (immutable) and writes a manifest of its own; it needs no WAL. Bucket
    /// changes and other checkpoints wait for it, and so does a commit that finds the
    /// dirty-page bound exceeded. [`Error::ReadOnly`](crate::Error::ReadOnly) on a
    /// read-only open.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> ringkv::Result<()> {
    /// use ringkv::{Db, Options};
    /// let (dir, copies) = (tempfile::tempdir().expect("a dir"), tempfile::tempdir().expect("a dir"));
    /// let db = Db::open(dir.path(), Options::default()).await?;
    /// let b = db.bucket("b").await?;
    /// b.put(b"k", b"v1").await?;
    /// let backup = db.backup(copies.path().join("monday")).await?;
    /// b.put(b"k", b"v2").await?;
    /// let copy = Db::open(copies.path().join("monday"), Options::default().read_only(true)).await?;
    /// assert_eq!(copy.existing_bucket("b")?.get(b"k").await?.as_deref(), Some(&b"v1"[..]));
    /// assert!(backup.cut_ts > 0);
    /// # copy.close().await?;
    /// # db.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn backup(&self, dest: impl AsRef<Path>) -> Result<BackupStats> {
        // Not poisoned by a failure here: the checkpoint inside poisons its own, and a
        // failed write to the destination says nothing about this database.
        engine::backup::run(&self.inner, dest.as_ref()).await
    }

    /// Makes every commit so far durable (useful after `Durability::None` commits). `Ok` at
    /// once on a read-only open (it has nothing to flush).
    pub async fn flush(&self) -> Result<()> {
        self.inner.check_open()?;
        if self.inner.opts.read_only {
            return Ok(());
        }
        self.inner.wal.flush().await.inspect_err(|e| self.inner.poison(e))
    }

    /// Counters for monitoring ([`Stats`]).
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Pushes [`Db::stats`] through the [`metrics`](https://docs.rs/metrics) facade now
    /// (feature `metrics`; the background task of a writable database also does it about
    /// every second). The names and labels are in the README's "Observability" section.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        self.inner.publish_metrics();
    }

    /// Flushes the WAL, checkpoints, stops the background task, closes the database and
    /// releases its directory lock. Every later call on it (or on its buckets and
    /// transactions) is [`Error::Closed`](crate::Error::Closed); a second `close` is `Ok`.
    ///
    /// On a database that turned read-only after a failed durable write, nothing more is
    /// written and `close` returns the [`Error::ReadOnly`](crate::Error::ReadOnly) naming that failure: the commits
    /// it failed were never acknowledged, and the next open recovers what was.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
