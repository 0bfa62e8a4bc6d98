//! The lifetime of an open database: the handles the API holds ([`DbRef`]), `close`
//! (`DbInner::shut_down`), the drop of the last handle without `close` (`UserGuard`), and
//! the hand-over of the directory lock to a new open in the same process.
//!
//! The directory lock is held until `close` returns or, when the last API handle is
//! dropped without `close`, until a background task (on `Options::spawner`, else the
//! background pool) has stopped the background
//! work and flushed the WAL. Engine tasks hold `Arc<DbInner>`, never a `DbRef`, so they
//! cannot keep a given-up database open.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use futures::future::{self, FutureExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::{checkpoint, DbInner};
use crate::error::Result;

impl DbInner {
    /// `Db::close`: the first call shuts down (below), then releases the directory lock;
    /// later calls are `Ok` at once.
    ///
    /// Runs in an `info` span `ringkv.close` (`dir`, `duration_ms`); `closed` is an `info`
    /// event.
    pub(crate) async fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let span = tracing::info_span!("ringkv.close", dir = %self.dir.display(), duration_ms = tracing::field::Empty);
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(self.shut_down(), span.clone()).await;
        // Released only now: nothing of this open writes after this point.
        drop(self.lock.lock().take());
        let _entered = span.enter();
        let duration_ms = super::open::millis(started.elapsed());
        span.record("duration_ms", duration_ms);
        match &result {
            Ok(()) => tracing::info!(duration_ms, "closed"),
            Err(e) => tracing::warn!(error = %e, duration_ms, "closed after an error"),
        }
        result
    }

    /// The work of `close` after `closed` is set: stop the background task, let the
    /// commits already past their `check_open` finish, flush the WAL and checkpoint.
    async fn shut_down(&self) -> Result<()> {
        self.quiesce().await;
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

    /// Once `closed` is set: stops the background task, then waits for a commit or a bucket
    /// change that passed its `check_open` before (they check again under these locks, so
    /// none starts after). Nothing of the API writes once this returns.
    async fn quiesce(&self) {
        self.bg_wake.notify_one();
        drop(self.warming.lock().take());
        let bg = self.bg.lock().take();
        if let Some(h) = bg {
            h.await;
        }
        drop(self.commit_lock.lock().await);
        drop(self.bucket_lock.lock().await);
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
    pub(crate) fn new(inner: Arc<DbInner>) -> DbRef {
        DbRef { _user: Arc::new(UserGuard { db: inner.clone() }), inner }
    }
}

/// Dropped with the last [`DbRef`]: a database given up without `Db::close`.
struct UserGuard {
    db: Arc<DbInner>,
}

impl Drop for UserGuard {
    /// The database is closed for the API at once. Its commits are in the WAL, which the
    /// next open replays, but those made with `Durability::None` (or `Buffered`) in its
    /// last moments may still sit in the WAL's memory: a background task (on the spawner
    /// of `Options::spawner`, else the background pool) waits
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
        if db.opts.is_simulated() {
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
            db.quiesce().await;
            if !db.is_read_only() {
                if let Err(e) = db.wal.flush().await {
                    tracing::error!(dir = %db.dir.display(), error = %e, "the WAL flush of a dropped database failed");
                }
            }
            drop(db.lock.lock().take());
            draining().lock().remove(&key);
            let _ = done.send(());
        };
        if let Err(e) = super::background::spawn(&self.db.opts, task) {
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
pub(crate) fn handover_key(dir: &Path) -> PathBuf {
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
