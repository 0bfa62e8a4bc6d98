//! Open and recovery, in the order [`open`] runs them:
//! 1. Check the options and the path (an empty or NUL-holding path is refused before any
//!    file is touched).
//! 2. Lock the directory ([`lock_dir`]): exclusive for a writer (which first creates it),
//!    shared for a read-only open, after a database of this process dropped on the same
//!    directory handed its lock over. Nothing in it is read before.
//! 3. Read the manifest (a writer creates one where there is none; a read-only open fails).
//! 4. A writer deletes the files no manifest references (`is_stale`).
//! 5. Build the store, the page table (every page starts as an on-disk stub, loaded on
//!    first touch) and the catalogue of buckets.
//! 6. Recover the WAL (a writer cuts its torn tail and starts a new segment; a read-only
//!    open changes nothing) and replay the records above the checkpoint frontier.
//! 7. Start the background task (a writer on a real disk), on `Options::spawner` if set,
//!    else on the process-wide background pool.
//!
//! All of it runs in the `info` span `ringkv.open`, step 6 in `ringkv.recover` (records
//! replayed, bytes, duration; a progress event on long replays); `opened` is an `info`
//! event.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use super::background::background;
use super::lifetime::{dropped_handover, handover_key};
use super::{make_value, DbInner, MemGauge};
use crate::error::{Error, Result};
use crate::files::parse_file_id;
use crate::io::{DirLock, IoDriver, LockMode};
use crate::manifest::{Manifest, ManifestState};
use crate::mvcc::Mvcc;
use crate::options::Options;
use crate::store::Store;
use crate::tree::node::{LeafBase, NodeKind, Version};
use crate::tree::{Forest, Tree};
use crate::wal::{Wal, WalOp};

/// Bytes of replayed keys and values between two progress events of a long replay.
const REPLAY_PROGRESS_BYTES: u64 = 64 << 20;

/// Opens the database in `path` (the steps of the module doc), in an `info` span
/// `ringkv.open` (fields `dir`, `read_only`, and once open `backend`, `buckets`,
/// `data_files` and `duration_ms`) holding the recovery's span (`replay_wal`); an `info`
/// event `opened` sums it up.
pub(crate) async fn open(path: &Path, opts: Options) -> Result<Arc<DbInner>> {
    let span = tracing::info_span!(
        "ringkv.open",
        dir = %path.display(),
        read_only = opts.read_only,
        backend = tracing::field::Empty,
        buckets = tracing::field::Empty,
        data_files = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let opened = open_steps(path, opts).instrument(span.clone()).await;
    let _entered = span.enter();
    match &opened {
        Ok(inner) => {
            let duration_ms = millis(started.elapsed());
            let buckets = inner.catalog.read().len();
            let data_files = inner.store.files().len();
            let backend = format!("{:?}", inner.io.backend());
            span.record("backend", backend.as_str());
            span.record("buckets", buckets);
            span.record("data_files", data_files);
            span.record("duration_ms", duration_ms);
            tracing::info!(backend, buckets, data_files, duration_ms, "opened");
        }
        Err(e) => tracing::warn!(error = %e, "open failed"),
    }
    opened
}

/// Whole milliseconds of `d` (saturating), for span fields.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The steps of [`open`].
async fn open_steps(path: &Path, opts: Options) -> Result<Arc<DbInner>> {
    // Step 1.
    opts.validate()?;
    let dir = path.to_path_buf();
    check_path(&dir)?;
    let io = opts.io_driver()?;
    let writable = !opts.read_only;
    // Step 2.
    let lock = if writable {
        io.create_dir_all(&dir).await?;
        lock_dir(&io, &dir, LockMode::Exclusive).await?
    } else {
        lock_dir(&io, &dir, LockMode::Shared).await?
    };
    // Steps 3-4.
    let manifest = read_manifest(&io, &dir, writable).await?;
    let state = manifest.state().await;
    if writable {
        remove_stale(&io, &dir, &state, &manifest.current_name().await).await?;
    }
    // Step 5.
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
        state.pages.iter().map(|(pid, loc)| (*pid, loc.addr, loc.len, loc.links.clone())),
    ));
    let blob_refs = state.blob_refs.iter().map(|(&id, &n)| (id, n)).collect();
    let live = store.live_counts(state.pages.values().flat_map(crate::manifest::PageLoc::frames));
    let (catalog, by_id) = load_catalog(&forest, &state);
    // Step 6.
    let wal = replay_wal(&io, &dir, &opts, &state, &forest, &mvcc, &by_id).await?;
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
        blob_refs: Mutex::new(blob_refs),
        dirty_reserved: Default::default(),
        checkpoints: Default::default(),
        ckpt_mem: MemGauge::default(),
        bg_wake: tokio::sync::Notify::new(),
        bg: Mutex::new(None),
        warming: Mutex::new(None),
        commit_latency: Default::default(),
        read_latency: Default::default(),
        #[cfg(feature = "metrics")]
        published: Default::default(),
    });
    // Step 7.
    start_background(&inner)?;
    Ok(inner)
}

/// Step 7: the background task (WAL flushes, checkpoints) of a writable database, except on
/// the simulated disk, whose runs must replay exactly from their seed.
fn start_background(inner: &Arc<DbInner>) -> Result<()> {
    let deterministic = inner.opts.is_simulated();
    if !deterministic && !inner.opts.read_only {
        // The handle's drop cancels the task; `close` awaits it.
        let (task, handle) = background(Arc::downgrade(inner)).remote_handle();
        super::background::spawn(&inner.opts, task)
            .map_err(|e| Error::io(&inner.dir, "spawn background task", e))?;
        *inner.bg.lock() = Some(handle);
    }
    if !deterministic && inner.opts.warm_cache {
        let (task, handle) = warm(Arc::clone(inner)).remote_handle();
        super::background::spawn(&inner.opts, task)
            .map_err(|e| Error::io(&inner.dir, "spawn warming task", e))?;
        *inner.warming.lock() = Some(handle);
    }
    Ok(())
}

/// The warming task (`Options::warm_cache`): [`DbInner::warm_cache`] once; a failed read
/// only ends it (the page is read again, and its error returned, when something needs it).
async fn warm(db: Arc<DbInner>) {
    let started = std::time::Instant::now();
    match db.warm_cache().await {
        Ok(pages) => tracing::debug!(pages, ms = started.elapsed().as_millis(), "cache warmed"),
        Err(e) => tracing::warn!(error = %e, "warming the cache stopped"),
    }
}

/// Step 3: the manifest of `dir`; a writer creates one where there is none, a read-only
/// open fails with [`Error::NotFound`].
async fn read_manifest(io: &IoDriver, dir: &Path, writable: bool) -> Result<Manifest> {
    match Manifest::open(io, dir, writable).await? {
        Some(m) => Ok(m),
        None if writable => Manifest::create(io, dir).await,
        None => Err(Error::NotFound(format!(
            "no database in {} (it has no {})",
            dir.display(),
            crate::manifest::CURRENT
        ))),
    }
}

/// Step 4: deletes every entry of `dir` that [`is_stale`].
async fn remove_stale(io: &IoDriver, dir: &Path, state: &ManifestState, current: &str) -> Result<()> {
    for name in io.read_dir(dir).await? {
        if is_stale(&name, state, current) {
            tracing::info!(file = %name, "removing a file no manifest references");
            io.remove_file(&dir.join(&name)).await?;
        }
    }
    Ok(())
}

/// The catalogue by name and by id.
type Catalog = (FxHashMap<String, Arc<Tree>>, FxHashMap<u32, Arc<Tree>>);

/// Step 5: a tree per bucket of the manifest; a root page never checkpointed starts as an
/// empty dirty leaf.
fn load_catalog(forest: &Forest, state: &ManifestState) -> Catalog {
    let mut catalog = FxHashMap::default();
    let mut by_id = FxHashMap::default();
    for b in state.buckets.values() {
        if !state.pages.contains_key(&b.root) {
            forest.install_new(b.root, NodeKind::Leaf(LeafBase::default()));
            forest.mark_dirty(b.root);
        }
        let t = Arc::new(Tree::new(b.id, b.root));
        if let Some(&(keys, bytes)) = state.bucket_sizes.get(&b.id) {
            t.size.set(keys, bytes);
        }
        catalog.insert(b.name.clone(), t.clone());
        by_id.insert(b.id, t);
    }
    (catalog, by_id)
}

/// Step 6: recovers the WAL (a writer creates its directory, cuts the torn tail and starts
/// a segment; a read-only open changes nothing), replays the records above the checkpoint
/// frontier into the trees and moves the clock past them.
///
/// Runs in an `info` span `ringkv.recover` whose fields say what it did: `records`
/// replayed, `bytes` of their keys and values, `wal_bytes` (the segments read),
/// `last_ts` and `duration_ms`; a long replay emits an `info` event every
/// [`REPLAY_PROGRESS_BYTES`] of keys and values.
async fn replay_wal(
    io: &IoDriver,
    dir: &Path,
    opts: &Options,
    state: &ManifestState,
    forest: &Forest,
    mvcc: &Mvcc,
    by_id: &FxHashMap<u32, Arc<Tree>>,
) -> Result<Wal> {
    let span = tracing::info_span!(
        "ringkv.recover",
        records = tracing::field::Empty,
        bytes = tracing::field::Empty,
        wal_bytes = tracing::field::Empty,
        last_ts = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    replay_wal_in(io, dir, opts, state, forest, mvcc, by_id, &span).instrument(span.clone()).await
}

/// [`replay_wal`] in its span.
#[allow(clippy::too_many_arguments)]
async fn replay_wal_in(
    io: &IoDriver,
    dir: &Path,
    opts: &Options,
    state: &ManifestState,
    forest: &Forest,
    mvcc: &Mvcc,
    by_id: &FxHashMap<u32, Arc<Tree>>,
    span: &tracing::Span,
) -> Result<Wal> {
    let started = Instant::now();
    let wal_dir = dir.join("wal");
    let (wal, records) = if opts.read_only {
        Wal::open_read_only(io.clone(), wal_dir, state.checkpoint_ts).await?
    } else {
        io.create_dir_all(&wal_dir).await?;
        io.sync_dir(dir).await?;
        Wal::open(io.clone(), wal_dir, state.checkpoint_ts, opts.wal_segment_bytes).await?
    };
    let mut last = state.checkpoint_ts;
    let replayed = records.len();
    let wal_bytes = wal.stats().disk_bytes;
    let (mut bytes, mut next_progress) = (0u64, REPLAY_PROGRESS_BYTES);
    for (done, rec) in records.into_iter().enumerate() {
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
            bytes += (key.len() + value.as_ref().map_or(0, Bytes::len)) as u64;
            let Some(tree) = by_id.get(&bucket) else { continue };
            let version = Version { ts: rec.ts, value: make_value(value, opts.inline_limit) };
            tree.upsert(forest, &key, &version).await?;
        }
        last = rec.ts;
        if bytes >= next_progress {
            next_progress = bytes + REPLAY_PROGRESS_BYTES;
            let elapsed_ms = millis(started.elapsed());
            tracing::info!(records = done + 1, of = replayed, bytes, elapsed_ms, "replaying the WAL");
        }
    }
    mvcc.advance_to(last);
    let duration_ms = millis(started.elapsed());
    span.record("records", replayed);
    span.record("bytes", bytes);
    span.record("wal_bytes", wal_bytes);
    span.record("last_ts", last);
    span.record("duration_ms", duration_ms);
    if replayed > 0 {
        tracing::info!(records = replayed, bytes, wal_bytes, last_ts = last, duration_ms, "replayed the WAL");
    }
    Ok(wal)
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

/// A directory lock taken by [`lock_dir`], registered as held by this process until it is
/// dropped.
pub(crate) struct HeldLock {
    key: PathBuf,
    _lock: DirLock,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let mut held = held_here().lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// How many locks this process holds on each directory (by [`handover_key`]).
fn held_here() -> &'static Mutex<FxHashMap<PathBuf, usize>> {
    static HELD: OnceLock<Mutex<FxHashMap<PathBuf, usize>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// Tries of a lock that only a child of this process can be holding (below).
const FORK_WINDOW_TRIES: u32 = 50;

/// Locks the database directory `dir` in `mode`; a path that exists but is not a directory
/// is [`Error::InvalidArgument`], a conflicting holder [`Error::Locked`].
///
/// First waits for a database of this process on `dir`, dropped without `close`, to hand
/// its lock over (`lifetime::dropped_handover`).
///
/// A `flock` belongs to the open file description, which a child process shares from its
/// `fork` until its `exec` closes it: a lock this process just released can still look
/// held for that window when another thread is spawning a process. So when the holder can
/// only be this process (`/proc/locks` names no other pid) and this process holds no lock on
/// `dir` itself, the lock is tried again, every millisecond up to [`FORK_WINDOW_TRIES`]
/// times; a lock held by another process, or by another open in this process, fails at
/// once.
pub(crate) async fn lock_dir(io: &IoDriver, dir: &Path, mode: LockMode) -> Result<HeldLock> {
    dropped_handover(dir).await;
    let key = handover_key(dir);
    let me = std::process::id();
    let mut tries = 0;
    loop {
        match io.lock_dir(dir, mode).await {
            Ok(lock) => {
                *held_here().lock().entry(key.clone()).or_insert(0) += 1;
                return Ok(HeldLock { key, _lock: lock });
            }
            Err(Error::Locked { ref holders, .. })
                if tries < FORK_WINDOW_TRIES
                    && holders.iter().all(|&p| p == me)
                    && !held_here().lock().contains_key(&key) =>
            {
                tries += 1;
                futures_timer::Delay::new(Duration::from_millis(1)).await;
            }
            Err(Error::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(Error::invalid(format!("the database path {} is not a directory", dir.display())))
            }
            Err(e) => return Err(e),
        }
    }
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
