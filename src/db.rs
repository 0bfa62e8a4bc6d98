//! The database handle: [`Db`] opens, names buckets, snapshots, checkpoints, flushes,
//! reports [`Stats`] and closes. It is a thin handle over the engine floor
//! (`crate::engine`), where every protocol lives (open and recovery, commit, checkpoint,
//! GC, the background task, the read path, the lifetime of an open database).

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::batch::WriteBatch;
use crate::bucket::Bucket;
use crate::engine::{self, checkpoint, DbRef};
use crate::error::Result;
use crate::files::FileKind;
use crate::obs::LatencyHistogram;
use crate::options::{IoBackend, Options};
use crate::txn::{Snapshot, Transaction};

pub use crate::engine::backup::BackupStats;
pub use crate::engine::checkpoint::CheckpointStats;

/// Counters describing a database, for monitoring and tests ([`Db::stats`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// db.bucket("b").await?.put(b"k", b"v").await?;
/// let stats = db.stats();
/// assert!(stats.wal_records >= 1 && stats.dirty_pages <= stats.dirty_pages_limit);
/// db.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Heap bytes of the pages in memory, clean and dirty, with their deltas, counted as
    /// the allocator sizes them. Clean pages are evicted past `cache_capacity`; dirty ones
    /// hold it at most `dirty_limit` above (a commit past that runs a checkpoint first).
    pub cache_bytes: i64,
    /// `Options::cache_capacity`.
    pub cache_capacity: u64,
    /// Heap bytes of the page table: a slot per page id and a stub per page not in memory,
    /// never evicted (they grow with the number of pages, not with the cache).
    pub page_table_bytes: i64,
    /// Pages changed since the last checkpoint.
    pub dirty_pages: u64,
    /// The bound on `dirty_pages` (`Options::dirty_limit` over
    /// [`DIRTY_PAGE_COST`](crate::limits::DIRTY_PAGE_COST)).
    pub dirty_pages_limit: u64,
    /// `dirty_pages_limit` in bytes: the bound of what a checkpoint holds, and of the
    /// cache's excess over its capacity.
    pub dirty_limit: u64,
    /// Bytes of page images and copied frames the running checkpoint holds (0 between
    /// checkpoints).
    pub checkpoint_bytes: u64,
    /// The most `checkpoint_bytes` held at once since open.
    pub checkpoint_peak_bytes: u64,
    /// Bytes of WAL records appended and not yet written.
    pub wal_buffer_bytes: u64,
    /// `Options::wal_buffer_limit`: past it, commits wait for the WAL write.
    pub wal_buffer_limit: u64,
    /// Data and blob files.
    pub files: usize,
    /// WAL records appended since open.
    pub wal_records: u64,
    /// WAL fsyncs issued since open.
    pub wal_fsyncs: u64,
    /// Checkpoints completed since open.
    pub checkpoints: u64,
    /// Live snapshots.
    pub snapshots: usize,
    /// Page splits since open.
    pub splits: u64,
    /// Page merges since open.
    pub merges: u64,
    /// Page images read from disk since open (cache misses of the tree).
    pub page_reads: u64,
    /// Point reads since open that found every page they needed in the cache.
    pub cache_hits: u64,
    /// Point reads since open that read at least one page from disk (scans and commits,
    /// which also load pages, are counted in `page_reads` only).
    pub cache_misses: u64,
    /// Every bucket's approximate size, by name.
    pub buckets: Vec<BucketStats>,
    /// Bytes of the data files (the manifest's sizes, which are the files' lengths).
    pub data_bytes: u64,
    /// Bytes of the blob files.
    pub blob_bytes: u64,
    /// Bytes of the WAL segments on disk.
    pub wal_bytes: u64,
    /// Bytes of the current manifest file (`CURRENT`, a few bytes naming it, aside).
    pub manifest_bytes: u64,
    /// Latency of the commits acknowledged since open (from the call to the
    /// acknowledgement, the durability wait included).
    pub commit_latency: LatencyHistogram,
    /// Latency of the point reads since open.
    pub read_latency: LatencyHistogram,
}

/// One bucket's approximate size ([`Stats::buckets`]).
///
/// Kept by the commits as they are applied (a put of a key without a live version adds a
/// key, a delete of a live one removes it, bytes follow the key and value lengths), saved
/// at each checkpoint and restored at open, then moved by the WAL's replay. Approximate in
/// two ways: a blind write to a leaf not in memory cannot see the key's old version, so a
/// put there counts as a new key and a delete as removing one (of its key's bytes); and a
/// crash can count again the commits that were being applied at a checkpoint's cut (a few
/// commits per crash). Versions kept for snapshots and on-disk overhead are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketStats {
    /// The bucket's name.
    pub name: String,
    /// Live keys.
    pub keys: u64,
    /// Bytes of the live keys and their values.
    pub bytes: u64,
}

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

    /// Counters for monitoring.
    pub fn stats(&self) -> Stats {
        let w = self.inner.wal.stats();
        let (opts, forest) = (&self.inner.opts, &self.inner.forest);
        let dirty_pages_limit = opts.dirty_pages_limit() as u64;
        let files = self.inner.store.files();
        let disk = |kind: FileKind| files.iter().filter(|f| f.meta.kind == kind).map(|f| f.meta.size).sum();
        Stats {
            cache_bytes: forest.mem_used(),
            cache_capacity: opts.cache_capacity as u64,
            page_table_bytes: forest.page_table_mem(),
            dirty_pages: forest.dirty_pages() as u64,
            dirty_pages_limit,
            dirty_limit: dirty_pages_limit * crate::limits::DIRTY_PAGE_COST as u64,
            checkpoint_bytes: self.inner.ckpt_mem.now(),
            checkpoint_peak_bytes: self.inner.ckpt_mem.peak(),
            wal_buffer_bytes: self.inner.wal.buffered_bytes(),
            wal_buffer_limit: opts.wal_buffer_bytes() as u64,
            files: files.len(),
            wal_records: w.records_appended,
            wal_fsyncs: w.fsyncs,
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            snapshots: self.inner.mvcc.live_snapshots(),
            splits: self.inner.forest.splits.load(Ordering::Relaxed),
            merges: self.inner.forest.merges.load(Ordering::Relaxed),
            page_reads: self.inner.forest.page_reads.load(Ordering::Relaxed),
            cache_hits: forest.read_hits.get(),
            cache_misses: forest.read_misses.get(),
            buckets: self.bucket_stats(),
            data_bytes: disk(FileKind::Data),
            blob_bytes: disk(FileKind::Blob),
            wal_bytes: w.disk_bytes,
            manifest_bytes: self.inner.manifest.disk_bytes(),
            commit_latency: self.inner.commit_latency.snapshot(),
            read_latency: self.inner.read_latency.snapshot(),
        }
    }

    /// [`Stats::buckets`]: every bucket's approximate size, by name.
    fn bucket_stats(&self) -> Vec<BucketStats> {
        let mut v: Vec<BucketStats> = self
            .inner
            .catalog
            .read()
            .iter()
            .map(|(name, t)| {
                let (keys, bytes) = t.size.get();
                BucketStats { name: name.clone(), keys, bytes }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
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
