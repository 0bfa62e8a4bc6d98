//! The background task of each database and the pool it runs on.
//!
//! The task flushes the WAL for `Durability::None` commits (every 20 ms, else every
//! 200 ms) and runs checkpoints on the size trigger (`Options::checkpoint_bytes`, or a
//! commit asking for one) and the time trigger (`Options::checkpoint_interval`). It holds
//! only a weak reference, so a dropped database stops it; it stops at `close` and when the
//! database turns read-only. The simulated disk runs no background task (deterministic
//! replays).

use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::future::{self, Either};

use super::{checkpoint, DbInner};
use crate::options::Durability;

/// The process-wide pool of two threads running every database's background task and the
/// WAL flush of databases dropped without `close`.
pub(crate) fn background_pool() -> &'static futures::executor::ThreadPool {
    static POOL: OnceLock<futures::executor::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        futures::executor::ThreadPool::builder()
            .pool_size(2)
            .name_prefix("ringkv-bg-")
            .create()
            .expect("spawn ringkv background threads")
    })
}

/// The background task of one database: WAL flushes for `Durability::None` and
/// checkpoints on the size and time triggers. It holds only a weak reference, so a
/// dropped database stops it.
pub(crate) async fn background(db: Weak<DbInner>) {
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
        let due_size = d.checkpoint_due();
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
