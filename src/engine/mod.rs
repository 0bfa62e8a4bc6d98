//! The engine floor: the shared state of an open database ([`DbInner`]) and one room per
//! protocol that crosses the layers below it (io, wal, manifest, store, tree, mvcc).
//!
//! | room | protocol |
//! |---|---|
//! | [`backup`] | an online backup: a checkpoint whose cut is the backup's, its files copied, a manifest of its own |
//! | [`open`] | open and recovery: lock, manifest, stale files, page table, WAL replay |
//! | [`commit`] | the commit protocol: conflict check, timestamp, WAL append, apply, durability wait |
//! | [`checkpoint`] | the checkpoint: cut, write, publish, drop dead files and WAL segments |
//! | [`gc`] | GC of sparse data files (marks their pages for the next checkpoint) |
//! | [`catalog`] | bucket creation and removal |
//! | [`read`] | point reads and scans at a snapshot, a transaction's overlay |
//! | [`background`] | the background task (WAL flushes, checkpoint triggers) and its pool |
//! | [`lifetime`] | handles, `close`, the drop of a database not closed, the lock hand-over |
//! | [`stats`] | what `Db::stats` reports, and its export through the `metrics` facade (feature `metrics`) |
//!
//! The API (`Db`, `Bucket`, `Transaction`, `Txn`, `Snapshot`, `WriteBatch`, `Iter`) holds [`DbRef`]s and calls into
//! these rooms; it keeps no protocol of its own. `docs/design.md` has the layer map.

pub(crate) mod background;
pub(crate) mod backup;
pub(crate) mod catalog;
pub(crate) mod checkpoint;
pub(crate) mod commit;
pub(crate) mod gc;
pub(crate) mod lifetime;
pub(crate) mod open;
pub(crate) mod read;
pub(crate) mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::RemoteHandle;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

pub(crate) use lifetime::DbRef;

use crate::error::{Error, Result};
use crate::io::IoDriver;
use crate::limits;
use crate::manifest::{Edit, Manifest};
use crate::mvcc::Mvcc;
use crate::options::Options;
use crate::store::Store;
use crate::tree::node::{BlobCell, Value};
use crate::tree::{Forest, Tree};
use crate::wal::Wal;

/// The shared state of one open database. The API's handles reach it through a
/// [`DbRef`]; the engine's own tasks hold `Arc<DbInner>`.
pub(crate) struct DbInner {
    pub dir: PathBuf,
    pub opts: Options,
    pub io: IoDriver,
    pub store: Arc<Store>,
    pub forest: Arc<Forest>,
    pub mvcc: Arc<Mvcc>,
    pub wal: Wal,
    pub manifest: Manifest,
    pub catalog: RwLock<FxHashMap<String, Arc<Tree>>>,
    pub by_id: RwLock<FxHashMap<u32, Arc<Tree>>>,
    pub commit_lock: tokio::sync::Mutex<()>,
    pub ckpt_lock: tokio::sync::Mutex<()>,
    pub bucket_lock: tokio::sync::Mutex<()>,
    pub closed: AtomicBool,
    /// The [`Error::ReadOnly`] every write gets once a durable write failed (`poison`).
    pub poisoned: Mutex<Option<Error>>,
    /// The directory lock (`Db::open`), released at the end of `close` or at drop.
    pub lock: Mutex<Option<open::HeldLock>>,
    /// Per data file, the frames of it that pages' images use (a page written as delta
    /// frames uses one of each of its frames' files); a file at 0 is dropped.
    pub live_files: Mutex<FxHashMap<u64, usize>>,
    /// Per blob file, the references to its values that the frames of the page table hold
    /// (`manifest::Edit::BlobRefs`, changed only under `ckpt_lock`); a file absent here, or
    /// at [`gc::UNKNOWN_REFS`], is never collected; a file at 0 is dropped (`gc`).
    pub blob_refs: Mutex<FxHashMap<u64, u64>>,
    /// Bytes of the dirty bound that commits past their flow control are expected to
    /// charge (`reserve_dirty`).
    pub dirty_reserved: std::sync::atomic::AtomicUsize,
    pub checkpoints: std::sync::atomic::AtomicU64,
    /// Bytes of page images and copied frames the running checkpoint holds.
    pub ckpt_mem: MemGauge,
    pub bg_wake: tokio::sync::Notify,
    pub bg: Mutex<Option<RemoteHandle<()>>>,
    /// The task warming the cache after open (`Options::warm_cache`); dropped (cancelled)
    /// when the database closes.
    pub warming: Mutex<Option<RemoteHandle<()>>>,
    /// Latency of every commit acknowledged since open, from the call to the
    /// acknowledgement (the durability wait included).
    pub commit_latency: crate::obs::Histogram,
    /// Latency of every point read since open (a blob value's read included).
    pub read_latency: crate::obs::Histogram,
    /// What `publish_metrics` pushed last (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub published: stats::Published,
}

/// A count of bytes held, with its high-water mark since open.
#[derive(Debug, Default)]
pub(crate) struct MemGauge {
    now: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

impl MemGauge {
    /// `n` more bytes are held.
    pub fn hold(&self, n: usize) {
        let n = n as u64;
        let now = self.now.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// `n` bytes were let go.
    pub fn release(&self, n: u64) {
        // Saturating: a release never takes the gauge below zero.
        let _ = self.now.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(n)));
    }

    /// Everything was let go.
    pub fn clear(&self) {
        self.now.store(0, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since open.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl DbInner {
    /// [`Error::Closed`] once `close` began (or the last handle was dropped).
    pub fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// [`Error::ReadOnly`] on a read-only open or a poisoned database.
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

    /// Turns the database read-only after a failed durable write or a broken invariant:
    /// an I/O error, damage read back, an engine bug, or a `ReadOnly` from a lower layer.
    /// Errors about the request itself (a conflict, bad input, a closed or locked
    /// database, ...) leave it writable.
    pub fn poison(&self, e: &Error) {
        if !matches!(e, Error::Io { .. } | Error::Corruption { .. } | Error::Internal(_) | Error::ReadOnly(_))
        {
            return;
        }
        let mut g = self.poisoned.lock();
        if g.is_none() {
            tracing::error!(error = %e, "a durable write failed: the database is now read-only");
            *g = Some(Error::read_only_after(e));
        }
    }

    /// The manifest edit recording every allocation counter (`next_bucket` given).
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

    /// Whether `close` began (or the last handle was dropped).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
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

/// Checks a bucket name against the limits.
pub(crate) fn check_bucket_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > limits::MAX_BUCKET_NAME_LEN {
        return Err(Error::invalid(format!(
            "bucket name must be 1 to {} bytes, got {}",
            limits::MAX_BUCKET_NAME_LEN,
            name.len()
        )));
    }
    Ok(())
}

/// The in-memory value of a written value (`None` = a delete): inline below
/// `inline_limit`, else a blob cell not yet written.
pub(crate) fn make_value(v: Option<Bytes>, inline_limit: usize) -> Value {
    match v {
        None => Value::Tombstone,
        Some(b) if b.len() >= inline_limit => Value::Blob(Arc::new(BlobCell::in_memory(b))),
        Some(b) => Value::Inline(b),
    }
}
