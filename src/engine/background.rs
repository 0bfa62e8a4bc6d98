//! The background task of each database and where it runs: the caller's runtime when
//! `Options::spawner` is set ([`spawn`]), else the process-wide [`background_pool`].
//!
//! The task flushes the WAL for `Durability::None` commits (every 20 ms, else every
//! 200 ms, or when woken), zero-fills the active WAL segment ahead of its writes
//! (`Wal::prepare_ahead`; a commit that sees the zone half used wakes the task), pushes `Stats` through the `metrics` facade every second (feature `metrics`),
//! and runs checkpoints on the size trigger (`Options::checkpoint_bytes`, or a
//! commit asking for one), the time trigger (`Options::checkpoint_interval`) and the idle
//! trigger (`Options::checkpoint_idle`: writes not yet checkpointed, and none for that
//! long; seen by the task's ticks, so up to a tick later). It holds
//! only a weak reference, so a dropped database stops it; it stops at `close` and when the
//! database turns read-only. The simulated disk runs no background task (deterministic
//! replays).

use std::future::Future;
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use futures::task::SpawnExt;

use super::{checkpoint, DbInner};
use crate::options::{Durability, Options};

/// How often the background task pushes `Stats` through the `metrics` facade.
#[cfg(feature = "metrics")]
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Threads of [`background_pool`] unless `Options::background_threads` says otherwise.
const DEFAULT_BACKGROUND_THREADS: usize = 2;

/// The process-wide pool running the background task and the WAL flush of databases
/// dropped without `close`, of every database opened without `Options::spawner`. Started by
/// the first such database, with its `Options::background_threads` (default 2).
fn background_pool(threads: Option<usize>) -> std::io::Result<&'static futures::executor::ThreadPool> {
    static POOL: OnceLock<futures::executor::ThreadPool> = OnceLock::new();
    if let Some(pool) = POOL.get() {
        return Ok(pool);
    }
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(threads.unwrap_or(DEFAULT_BACKGROUND_THREADS))
        .name_prefix("ringkv-bg-")
        .create()?;
    // Two first opens racing: the loser's pool is dropped (its idle threads exit).
    Ok(POOL.get_or_init(|| pool))
}

/// Starts `task` on the spawner of `opts` if it has one, else on [`background_pool`].
pub(crate) fn spawn(opts: &Options, task: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    match &opts.spawner {
        Some(spawner) => {
            spawner.spawn(Box::pin(task));
            Ok(())
        }
        None => background_pool(opts.background_threads)?
            .spawn(task)
            .map_err(|e| std::io::Error::other(e.to_string())),
    }
}

/// The background task of one database: WAL flushes for `Durability::None` and
/// checkpoints on the size, time and idle triggers. It holds only a weak reference, so a
/// dropped database stops it.
pub(crate) async fn background(db: Weak<DbInner>) {
    let mut last_ckpt = Instant::now();
    // The idle trigger: the bytes written since the cut, as last seen, and since when.
    let (mut written, mut written_at) = (0, Instant::now());
    #[cfg(feature = "metrics")]
    let mut last_publish = Instant::now();
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
        // Off the commit path: zero-fill the WAL segment ahead of its writes.
        if d.zero_fills_wal() {
            if let Err(e) = d.wal.prepare_ahead().await {
                d.poison(&e);
                return;
            }
        }
        #[cfg(feature = "metrics")]
        if last_publish.elapsed() >= METRICS_INTERVAL {
            last_publish = Instant::now();
            d.publish_metrics();
        }
        if !d.opts.background_checkpoints {
            continue;
        }
        let due_size = d.checkpoint_due();
        let now_written = d.forest.written_since_cut();
        if now_written != written {
            (written, written_at) = (now_written, Instant::now());
        }
        let due_time =
            d.opts.checkpoint_interval.is_some_and(|i| last_ckpt.elapsed() >= i) && now_written > 0;
        let due_idle = d.opts.checkpoint_idle.is_some_and(|i| written_at.elapsed() >= i) && now_written > 0;
        if due_size || due_time || due_idle {
            last_ckpt = Instant::now();
            if let Err(e) = checkpoint::run(&d).await {
                tracing::warn!(error = %e, "background checkpoint failed");
            }
        }
    }
}
