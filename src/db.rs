//! The database: open and recovery, the bucket catalogue, commits, checkpoints, close.
//!
//! Recovery (`Db::open`): lock the directory (exclusive for a writer, shared for a
//! read-only open; nothing is read before) -> read the manifest -> delete files it does not
//! reference -> load the catalogue and the page table (every page starts as an on-disk
//! stub, loaded on first touch) -> replay the WAL records above the checkpoint frontier (the
//! WAL cuts its torn tail) -> start the background task. A read-only open does the same in
//! memory only: it deletes, cuts, creates and syncs nothing and starts no background task.
//!
//! Lifetime: the lock is held until `close` returns or, when the last API handle (a
//! `DbRef`) is dropped without `close`, until a background task has stopped the
//! background work and flushed the WAL (`Drop for UserGuard`). Engine tasks hold
//! `Arc<DbInner>`, never a `DbRef`, so they cannot keep a given-up database open.
//!
//! Commit protocol (`commit_writes`), numbered as the code follows it:
//! 1. Conflict pre-check outside the commit lock (it routes every key to its leaf, loading
//!    what must be read; an evicted leaf is read only when its image could hold a version
//!    newer than the snapshot).
//! 2. Under the commit lock: the check again (first-committer-wins) unless no commit was
//!    applied since the pre-check began (`visible` unchanged), then, with no
//!    `.await` in between (so a dropped future cannot stop half way): assign the timestamp,
//!    append the WAL record, apply every version to its tree, publish the timestamp.
//! 3. Outside the lock: wait for the WAL to reach the requested durability. Group commit
//!    happens here: every committer waiting at once shares one write and one fsync.
//!
//! A commit is visible to new snapshots at step 2 and acknowledged at step 3. A crash
//! between them loses it together with every later commit (the WAL is a prefix), so no
//! acknowledged commit can depend on a lost one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{self, Either, FutureExt, RemoteHandle};
use futures::task::SpawnExt;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use crate::bucket::Bucket;
use crate::error::{Error, Result};
use crate::io::{DirLock, IoDriver, LockMode};
use crate::limits;
use crate::manifest::{BucketMeta, Edit, Manifest, ManifestState};
use crate::mvcc::Mvcc;
use crate::options::{Durability, IoBackend, Options};
use crate::store::data_file::FileKind;
use crate::store::{checkpoint, Store};
use crate::tree::node::{BlobCell, LeafBase, NodeKind, Value, Version};
use crate::tree::{Forest, Step, Tree};
use crate::txn::Snapshot;
use crate::wal::{Wal, WalOp, WalRecord};

pub use crate::store::checkpoint::CheckpointStats;

/// Counters describing a database, for monitoring and tests.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Bytes of page cache in use.
    pub cache_bytes: i64,
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
}

pub(crate) struct DbInner {
    pub dir: PathBuf,
    pub opts: Options,
    pub io: IoDriver,
    pub store: Arc<Store>,
    pub forest: Arc<Forest>,
    pub mvcc: Arc<Mvcc>,
    pub wal: Wal,
    pub manifest: Manifest,
    catalog: RwLock<FxHashMap<String, Arc<Tree>>>,
    by_id: RwLock<FxHashMap<u32, Arc<Tree>>>,
    commit_lock: tokio::sync::Mutex<()>,
    pub ckpt_lock: tokio::sync::Mutex<()>,
    bucket_lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// The [`Error::ReadOnly`] every write gets once a durable write failed (`poison`).
    poisoned: Mutex<Option<Error>>,
    /// The directory lock (`Db::open`), released at the end of `close` or at drop.
    lock: Mutex<Option<DirLock>>,
    pub live_files: Mutex<FxHashMap<u64, usize>>,
    pub checkpoints: std::sync::atomic::AtomicU64,
    bg_wake: tokio::sync::Notify,
    bg: Mutex<Option<RemoteHandle<()>>>,
}

/// An open database. Cheap to clone; every clone is the same database.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: DbRef,
}

fn background_pool() -> &'static futures::executor::ThreadPool {
    static POOL: OnceLock<futures::executor::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        futures::executor::ThreadPool::builder()
            .pool_size(2)
            .name_prefix("ringkv-bg-")
            .create()
            .expect("spawn ringkv background threads")
    })
}

/// Checks a key against the limits.
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("empty key"));
    }
    if key.len() > limits::MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "key of {} bytes is over the limit of {}",
            key.len(),
            limits::MAX_KEY_LEN
        )));
    }
    Ok(())
}

/// Checks a value against the limits.
pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > limits::MAX_VALUE_LEN {
        return Err(Error::invalid(format!(
            "value of {} bytes is over the limit of {}",
            value.len(),
            limits::MAX_VALUE_LEN
        )));
    }
    Ok(())
}

impl Db {
    /// Opens (or creates) the database in directory `path`, recovering it after a crash.
    /// Works under any executor.
    ///
    /// The directory is locked first, before anything in it is read or written, and stays
    /// locked until [`Db::close`] or the drop of the last handle: a writer excludes every
    /// other open, in this process or another, and a read-only open
    /// ([`Options::read_only`]) excludes writers. A conflicting open fails at once with
    /// [`Error::Locked`]. An empty path, or one that is not a directory, is
    /// [`Error::InvalidArgument`] before any file is touched.
    ///
    /// A read-only open recovers in memory only: it creates, renames, removes and writes
    /// nothing (it works on a read-only mount), fails where there is no database, and
    /// answers every write with [`Error::ReadOnly`].
    pub async fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let dir = path.as_ref().to_path_buf();
        check_path(&dir)?;
        let io = IoDriver::for_options(&opts)?;
        let writable = !opts.read_only;
        dropped_handover(&dir).await;
        let lock = if writable {
            io.create_dir_all(&dir).await?;
            lock_dir(&io, &dir, LockMode::Exclusive).await?
        } else {
            lock_dir(&io, &dir, LockMode::Shared).await?
        };
        let manifest = match Manifest::open(&io, &dir, writable).await? {
            Some(m) => m,
            None if writable => Manifest::create(&io, &dir).await?,
            None => {
                return Err(Error::NotFound(format!(
                    "no database in {} (it has no {})",
                    dir.display(),
                    crate::manifest::CURRENT
                )))
            }
        };
        let state = manifest.state().await;
        let current = manifest.current_name().await;
        for name in io.read_dir(&dir).await? {
            if writable && is_stale(&name, &state, &current) {
                tracing::info!(file = %name, "removing a file no manifest references");
                io.remove_file(&dir.join(&name)).await?;
            }
        }
        let store = Arc::new(Store::new(
            io.clone(),
            dir.clone(),
            state.files.values().cloned(),
            state.next_addr,
            state.next_file,
        ));
        let mvcc = Mvcc::new(state.checkpoint_ts);
        let forest = Arc::new(Forest::new(
            store.clone(),
            mvcc.clone(),
            opts.cache_capacity,
            state.next_pid,
            state.pages.iter().map(|(pid, loc)| (*pid, loc.addr, loc.len)),
        ));
        let live = store.live_counts(state.pages.values().map(|l| l.addr));
        let mut catalog = FxHashMap::default();
        let mut by_id = FxHashMap::default();
        for b in state.buckets.values() {
            if !state.pages.contains_key(&b.root) {
                forest.install_new(b.root, NodeKind::Leaf(LeafBase::default()));
                forest.mark_dirty(b.root);
            }
            let t = Arc::new(Tree::new(b.id, b.root));
            catalog.insert(b.name.clone(), t.clone());
            by_id.insert(b.id, t);
        }
        let wal_dir = dir.join("wal");
        let (wal, records) = if writable {
            io.create_dir_all(&wal_dir).await?;
            io.sync_dir(&dir).await?;
            Wal::open(io.clone(), wal_dir, state.checkpoint_ts, opts.wal_segment_bytes).await?
        } else {
            Wal::open_read_only(io.clone(), wal_dir, state.checkpoint_ts).await?
        };
        let mut last = state.checkpoint_ts;
        let replayed = records.len();
        for rec in records {
            if rec.ts <= last {
                return Err(Error::corruption(
                    dir.join("wal"),
                    0,
                    format!("WAL timestamps out of order at {}", rec.ts),
                ));
            }
            for op in rec.ops {
                let (bucket, key, value) = match op {
                    WalOp::Put { bucket, key, value } => (bucket, key, Some(value)),
                    WalOp::Delete { bucket, key } => (bucket, key, None),
                };
                let Some(tree) = by_id.get(&bucket) else { continue };
                let version = Version { ts: rec.ts, value: make_value(value, opts.inline_limit) };
                tree.upsert(&forest, &key, &version).await?;
            }
            last = rec.ts;
        }
        mvcc.advance_to(last);
        if replayed > 0 {
            tracing::info!(records = replayed, last_ts = last, "replayed the WAL");
        }
        let inner = Arc::new(DbInner {
            dir,
            opts,
            io,
            store,
            forest,
            mvcc,
            wal,
            manifest,
            catalog: RwLock::new(catalog),
            by_id: RwLock::new(by_id),
            commit_lock: tokio::sync::Mutex::new(()),
            ckpt_lock: tokio::sync::Mutex::new(()),
            bucket_lock: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
            live_files: Mutex::new(live),
            checkpoints: Default::default(),
            bg_wake: tokio::sync::Notify::new(),
            bg: Mutex::new(None),
        });
        #[cfg(feature = "sim")]
        let deterministic = inner.opts.sim.is_some();
        #[cfg(not(feature = "sim"))]
        let deterministic = false;
        if !deterministic && writable {
            let handle =
                background_pool().spawn_with_handle(background(Arc::downgrade(&inner))).map_err(|e| {
                    Error::io(&inner.dir, "spawn background task", std::io::Error::other(e.to_string()))
                })?;
            *inner.bg.lock() = Some(handle);
        }
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
        let db = &self.inner;
        db.check_open()?;
        check_bucket_name(name)?;
        if let Some(t) = db.catalog.read().get(name) {
            return Ok(Bucket::new(db.clone(), t.clone(), name));
        }
        db.check_writable()?;
        let _g = db.bucket_lock.lock().await;
        if let Some(t) = db.catalog.read().get(name) {
            return Ok(Bucket::new(db.clone(), t.clone(), name));
        }
        let (_, id) = db.manifest.frontier_and_next_bucket().await;
        let root = db.forest.alloc_pid();
        db.forest.install_new(root, NodeKind::Leaf(LeafBase::default()));
        db.forest.mark_dirty(root);
        let edits =
            vec![Edit::AddBucket(BucketMeta { id, name: name.to_string(), root }), db.counters(id + 1)];
        db.manifest.commit(edits).await.inspect_err(|e| db.poison(e))?;
        let t = Arc::new(Tree::new(id, root));
        db.catalog.write().insert(name.to_string(), t.clone());
        db.by_id.write().insert(id, t.clone());
        Ok(Bucket::new(db.clone(), t, name))
    }

    /// Opens an existing bucket; [`Error::NotFound`] if there is none by that name.
    pub fn existing_bucket(&self, name: &str) -> Result<Bucket> {
        self.inner.check_open()?;
        let t = self.inner.catalog.read().get(name).cloned();
        t.map(|t| Bucket::new(self.inner.clone(), t, name))
            .ok_or_else(|| Error::NotFound(format!("bucket {name:?}")))
    }

    /// Deletes a bucket and everything in it; [`Error::NotFound`] if it does not exist.
    pub async fn drop_bucket(&self, name: &str) -> Result<()> {
        let db = &self.inner;
        db.check_open()?;
        db.check_writable()?;
        let _g = db.bucket_lock.lock().await;
        let t = db
            .catalog
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("bucket {name:?}")))?;
        db.manifest.commit(vec![Edit::DropBucket(t.id)]).await.inspect_err(|e| db.poison(e))?;
        t.dropped.store(true, Ordering::Release);
        db.catalog.write().remove(name);
        db.by_id.write().remove(&t.id);
        Ok(())
    }

    /// Names of every bucket, sorted.
    pub fn buckets(&self) -> Result<Vec<String>> {
        self.inner.check_open()?;
        let mut v: Vec<String> = self.inner.catalog.read().keys().cloned().collect();
        v.sort();
        Ok(v)
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
        Stats {
            cache_bytes: self.inner.forest.mem_used(),
            files: self.inner.store.files().len(),
            wal_records: w.records_appended,
            wal_fsyncs: w.fsyncs,
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            snapshots: self.inner.mvcc.live_snapshots(),
            splits: self.inner.forest.splits.load(Ordering::Relaxed),
            merges: self.inner.forest.merges.load(Ordering::Relaxed),
            page_reads: self.inner.forest.page_reads.load(Ordering::Relaxed),
        }
    }

    /// Flushes the WAL, checkpoints, stops the background task, closes the database and
    /// releases its directory lock. Every later call on it (or on its buckets and
    /// transactions) is [`Error::Closed`]; a second `close` is `Ok`.
    ///
    /// On a database that turned read-only after a failed durable write, nothing more is
    /// written and `close` returns the [`Error::ReadOnly`] naming that failure: the commits
    /// it failed were never acknowledged, and the next open recovers what was.
    pub async fn close(&self) -> Result<()> {
        let db = &self.inner;
        if db.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = db.shut_down().await;
        // Released only now: nothing of this open writes after this point.
        drop(db.lock.lock().take());
        result
    }
}

impl DbInner {
    /// The work of [`Db::close`] after `closed` is set.
    async fn shut_down(&self) -> Result<()> {
        self.bg_wake.notify_one();
        let bg = self.bg.lock().take();
        if let Some(h) = bg {
            h.await;
        }
        // A barrier: a commit or a bucket change that passed its `check_open` before
        // `closed` was set finishes before the final flush (they check again under these
        // locks, so none starts after).
        drop(self.commit_lock.lock().await);
        drop(self.bucket_lock.lock().await);
        if self.opts.read_only {
            return Ok(());
        }
        if let Some(e) = self.poisoned.lock().clone() {
            return Err(e);
        }
        self.wal.flush().await.inspect_err(|e| self.poison(e))?;
        checkpoint::run(self).await?;
        Ok(())
    }
}

/// Refuses a path no database can live at, before anything is touched: an empty one (it
/// would resolve to the working directory's entries one by one) or one holding a NUL byte.
fn check_path(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() {
        return Err(Error::invalid("the database path is empty"));
    }
    if dir.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(Error::invalid(format!("the database path {dir:?} holds a NUL byte")));
    }
    Ok(())
}

/// Locks the database directory `dir`; a path that exists but is not a directory is
/// [`Error::InvalidArgument`].
async fn lock_dir(io: &IoDriver, dir: &Path, mode: LockMode) -> Result<DirLock> {
    io.lock_dir(dir, mode).await.map_err(|e| match e {
        Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotADirectory => {
            Error::invalid(format!("the database path {} is not a directory", dir.display()))
        }
        other => other,
    })
}

/// Whether recovery deletes the directory entry `name`: a data or blob file the manifest
/// does not reference, `CURRENT.tmp`, or a manifest other than `current`.
pub(crate) fn is_stale(name: &str, state: &ManifestState, current: &str) -> bool {
    if let Some(id) = parse_file_id(name) {
        !state.files.contains_key(&id)
    } else {
        name == "CURRENT.tmp" || (name.starts_with("MANIFEST-") && name != current)
    }
}

/// The id of a `data-<16 hex>.rkv` or `blob-<16 hex>.rkv` file name.
pub(crate) fn parse_file_id(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("data-").or_else(|| name.strip_prefix("blob-"))?;
    let hex = rest.strip_suffix(".rkv")?;
    u64::from_str_radix(hex, 16).ok()
}

fn check_bucket_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > limits::MAX_BUCKET_NAME_LEN {
        return Err(Error::invalid(format!(
            "bucket name must be 1 to {} bytes, got {}",
            limits::MAX_BUCKET_NAME_LEN,
            name.len()
        )));
    }
    Ok(())
}

pub(crate) fn make_value(v: Option<Bytes>, inline_limit: usize) -> Value {
    match v {
        None => Value::Tombstone,
        Some(b) if b.len() >= inline_limit => Value::Blob(Arc::new(BlobCell::in_memory(b))),
        Some(b) => Value::Inline(b),
    }
}

impl DbInner {
    pub fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub fn check_writable(&self) -> Result<()> {
        if self.opts.read_only {
            return Err(Error::ReadOnly("the database was opened read-only".into()));
        }
        if let Some(e) = &*self.poisoned.lock() {
            return Err(e.clone());
        }
        Ok(())
    }

    /// Whether writes are refused (a read-only open, or a poisoned database).
    pub fn is_read_only(&self) -> bool {
        self.opts.read_only || self.poisoned.lock().is_some()
    }

    /// Turns the database read-only after a failed durable write.
    pub fn poison(&self, e: &Error) {
        if matches!(
            e,
            Error::Conflict
                | Error::InvalidArgument(_)
                | Error::NotFound(_)
                | Error::Closed
                | Error::Locked { .. }
        ) {
            return;
        }
        let mut g = self.poisoned.lock();
        if g.is_none() {
            tracing::error!(error = %e, "a durable write failed: the database is now read-only");
            *g = Some(Error::read_only_after(e));
        }
    }

    pub fn counters(&self, next_bucket: u32) -> Edit {
        Edit::Counters {
            next_pid: self.forest.next_pid(),
            next_addr: self.store.next_addr(),
            next_file: self.store.next_file(),
            next_bucket,
        }
    }

    /// Every tree, by bucket id.
    pub fn trees(&self) -> Vec<Arc<Tree>> {
        let mut v: Vec<Arc<Tree>> = self.by_id.read().values().cloned().collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// The commit protocol (module doc). `writes` maps keys to new values (None = delete).
    pub async fn commit_writes(
        &self,
        tree: &Tree,
        snapshot_ts: u64,
        writes: &BTreeMap<Bytes, Option<Bytes>>,
        durability: Durability,
    ) -> Result<u64> {
        self.check_open()?;
        self.check_writable()?;
        if writes.is_empty() {
            return Ok(snapshot_ts);
        }
        let f = &self.forest;
        // Write stall: when dirty pages hold the cache far past its capacity, this committer
        // runs a checkpoint (or waits for the running one) so that pages become evictable.
        // This bounds memory when writes outrun background checkpoints.
        if f.mem_used() > 2 * self.opts.cache_capacity as i64 {
            checkpoint::run(self).await?;
            f.evict_to_capacity();
        }
        // The conflict check runs outside the commit lock (its page loads must not
        // serialise committers) and again under it, unless no commit was applied in
        // between: every commit publishes its timestamp before releasing the lock, so an
        // unchanged `visible` means the first check's answers still hold.
        let checked_at = self.mvcc.visible();
        for k in writes.keys() {
            if tree.written_after(f, k, snapshot_ts).await? {
                return Err(Error::Conflict);
            }
        }
        let (ts, lsn) = {
            let _g = self.commit_lock.lock().await;
            self.check_open()?;
            self.check_writable()?;
            if tree.dropped.load(Ordering::Acquire) {
                return Err(Error::NotFound("the bucket was dropped".into()));
            }
            if self.mvcc.visible() != checked_at {
                for k in writes.keys() {
                    if tree.written_after(f, k, snapshot_ts).await? {
                        return Err(Error::Conflict);
                    }
                }
            }
            // No await from here to the end of the block (protocol 2).
            let ts = self.mvcc.assign();
            let ops = writes
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => WalOp::Put { bucket: tree.id, key: k.clone(), value: v.clone() },
                    None => WalOp::Delete { bucket: tree.id, key: k.clone() },
                })
                .collect();
            let lsn = match self.wal.append(&WalRecord { ts, ops }) {
                Ok(l) => l,
                Err(e) => {
                    self.poison(&e);
                    return Err(e);
                }
            };
            for (k, v) in writes {
                let version = Version { ts, value: make_value(v.clone(), self.opts.inline_limit) };
                match tree.apply(f, k, &version) {
                    Ok(Step::Done(())) => {}
                    Ok(Step::Load(_)) | Err(_) => {
                        let e = Error::internal(format!("commit {ts} could not be applied in memory"));
                        self.poison(&e);
                        return Err(e);
                    }
                }
            }
            self.mvcc.publish(ts);
            (ts, lsn)
        };
        if self.forest.written_since_cut() as usize > self.opts.checkpoint_bytes
            || self.forest.needs_checkpoint.load(Ordering::Relaxed)
        {
            self.bg_wake.notify_one();
        }
        if let Err(e) = self.wal.wait(lsn, durability).await {
            self.poison(&e);
            return Err(e);
        }
        Ok(ts)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A handle on an open database held by the API's types (`Db`, `Bucket`, `Txn`,
/// `Snapshot`, a scan's stream). Derefs to the engine state. The engine's own tasks hold
/// `Arc<DbInner>` instead, so the drop of the last `DbRef` means the user is done with the
/// database even while a background checkpoint still runs (see [`UserGuard`]).
#[derive(Clone)]
pub(crate) struct DbRef {
    inner: Arc<DbInner>,
    _user: Arc<UserGuard>,
}

impl std::ops::Deref for DbRef {
    type Target = Arc<DbInner>;

    fn deref(&self) -> &Arc<DbInner> {
        &self.inner
    }
}

impl DbRef {
    fn new(inner: Arc<DbInner>) -> DbRef {
        DbRef { _user: Arc::new(UserGuard { db: inner.clone() }), inner }
    }
}

/// Dropped with the last [`DbRef`]: a database given up without [`Db::close`].
struct UserGuard {
    db: Arc<DbInner>,
}

impl Drop for UserGuard {
    /// The database is closed for the API at once. Its commits are in the WAL, which the
    /// next open replays, but those made with `Durability::None` (or `Buffered`) in its
    /// last moments may still sit in the WAL's memory: a task on the background pool waits
    /// for the background task to stop, writes and syncs the WAL, and only then releases
    /// the directory lock. A new open of the same directory in this process waits for that
    /// hand-over instead of failing with [`Error::Locked`]. If the process exits first,
    /// those commits are lost, exactly as in a crash: call `close` to be sure. Nothing is
    /// checkpointed.
    fn drop(&mut self) {
        let db = self.db.clone();
        if db.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        db.bg_wake.notify_one();
        #[cfg(feature = "sim")]
        if db.opts.sim.is_some() {
            // Deterministic runs have no background task: a drop is a crash of the process.
            drop(db.lock.lock().take());
            return;
        }
        if !db.opts.read_only {
            tracing::warn!(dir = %db.dir.display(), "a database was dropped without close(): flushing its WAL in the background");
        }
        let key = handover_key(&db.dir);
        let (done, handover) = futures::channel::oneshot::channel::<()>();
        draining().lock().insert(key.clone(), handover.shared());
        let task = async move {
            let bg = db.bg.lock().take();
            if let Some(h) = bg {
                h.await;
            }
            drop(db.commit_lock.lock().await);
            if !db.is_read_only() {
                if let Err(e) = db.wal.flush().await {
                    tracing::error!(dir = %db.dir.display(), error = %e, "the WAL flush of a dropped database failed");
                }
            }
            drop(db.lock.lock().take());
            draining().lock().remove(&key);
            let _ = done.send(());
        };
        if let Err(e) = background_pool().spawn(task) {
            tracing::error!(error = %e, "could not flush the WAL of a dropped database");
        }
    }
}

type Handover = future::Shared<futures::channel::oneshot::Receiver<()>>;

/// Databases of this process dropped without `close` whose WAL is still being flushed (see
/// `Drop for UserGuard`), by directory: a new open of the same directory waits for the flush
/// and the release of the lock instead of failing with [`Error::Locked`].
fn draining() -> &'static Mutex<FxHashMap<PathBuf, Handover>> {
    static DRAINING: OnceLock<Mutex<FxHashMap<PathBuf, Handover>>> = OnceLock::new();
    DRAINING.get_or_init(Default::default)
}

/// The key of `dir` in [`draining`]: the absolute path, without touching the disk.
fn handover_key(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Waits until a database of this process on `dir`, dropped without `close`, has flushed
/// its WAL and released its lock.
pub(crate) async fn dropped_handover(dir: &Path) {
    let pending = draining().lock().get(&handover_key(dir)).cloned();
    if let Some(handover) = pending {
        let _ = handover.await;
    }
}

/// The background task of one database: WAL flushes for `Durability::None` and
/// checkpoints on the size and time triggers. It holds only a weak reference, so a
/// dropped database stops it.
async fn background(db: Weak<DbInner>) {
    let mut last_ckpt = Instant::now();
    loop {
        let tick = {
            let Some(d) = db.upgrade() else { return };
            if d.is_closed() {
                return;
            }
            if d.opts.durability == Durability::None {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(200)
            }
        };
        {
            let Some(d) = db.upgrade() else { return };
            let wake = d.bg_wake.notified();
            futures::pin_mut!(wake);
            let delay = futures_timer::Delay::new(tick);
            match future::select(wake, delay).await {
                Either::Left(_) | Either::Right(_) => {}
            }
        }
        let Some(d) = db.upgrade() else { return };
        if d.is_closed() || d.is_read_only() {
            return;
        }
        if let Err(e) = d.wal.flush().await {
            d.poison(&e);
            return;
        }
        if !d.opts.background_checkpoints {
            continue;
        }
        let due_size = d.forest.written_since_cut() as usize > d.opts.checkpoint_bytes
            || d.forest.needs_checkpoint.load(Ordering::Relaxed);
        let due_time = d.opts.checkpoint_interval.is_some_and(|i| last_ckpt.elapsed() >= i)
            && d.forest.written_since_cut() > 0;
        if due_size || due_time {
            last_ckpt = Instant::now();
            if let Err(e) = checkpoint::run(&d).await {
                tracing::warn!(error = %e, "background checkpoint failed");
            }
        }
    }
}

/// Which kind of file a name is, for tools.
pub fn file_kind_of(name: &str) -> Option<FileKind> {
    if name.starts_with("data-") {
        Some(FileKind::Data)
    } else if name.starts_with("blob-") {
        Some(FileKind::Blob)
    } else {
        None
    }
}
