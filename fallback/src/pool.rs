//! The worker pool: a queue of boxed jobs, N threads draining it, one oneshot per result.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use futures::channel::oneshot;
use parking_lot::RwLock;

/// Environment variable overriding the thread count of [`global`].
pub const GLOBAL_THREADS_ENV: &str = "RINGKV_FALLBACK_THREADS";
/// Thread count of [`global`] when [`GLOBAL_THREADS_ENV`] is unset.
pub const DEFAULT_GLOBAL_THREADS: usize = 32;
/// Largest thread count a pool accepts (a guard against a mistyped environment value).
const MAX_THREADS: usize = 4096;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The job's result will never arrive: the pool was shut down, it has no worker thread,
/// or the job panicked (the panic is logged through `tracing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceled;

impl fmt::Display for Canceled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the fallback pool did not run the job to completion (shut down, no worker, or the job panicked)",
        )
    }
}

impl std::error::Error for Canceled {}

/// A pool of threads running blocking jobs. Cloning is cheap: clones share the threads.
///
/// The threads exit once every clone is dropped (or [`Pool::shutdown`] is called) and the
/// jobs already queued have run.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// `None` after [`Pool::shutdown`] or when no worker thread could be started.
    sender: RwLock<Option<Sender<Job>>>,
    threads: usize,
    /// Jobs queued and not yet finished (for tests and diagnostics).
    pending: Arc<AtomicUsize>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.name)
            .field("threads", &self.inner.threads)
            .field("pending", &self.pending())
            .finish()
    }
}

impl Pool {
    /// Starts a pool of `threads` worker threads (at least 1) named `name-<i>`.
    ///
    /// A thread that the operating system refuses to start is logged and skipped; if none
    /// starts, every job's future resolves to `Err(Canceled)` at once.
    pub fn new(threads: usize, name: &str) -> Pool {
        let wanted = threads.clamp(1, MAX_THREADS);
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let mut started = 0;
        for i in 0..wanted {
            let rx = rx.clone();
            let spawned = thread::Builder::new().name(format!("{name}-{i}")).spawn(move || worker(rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    tracing::warn!(pool = name, error = %e, "could not start a fallback I/O thread");
                    break;
                }
            }
        }
        drop(rx);
        let sender = if started > 0 { Some(tx) } else { None };
        Pool {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                sender: RwLock::new(sender),
                threads: started,
                pending,
            }),
        }
    }

    /// Queues `f` on a worker thread and returns a future of its result.
    ///
    /// The job is queued now, not when the future is first polled, and dropping the future
    /// does not cancel it. The future resolves to `Err(Canceled)` if the job cannot run to
    /// completion (pool shut down, no worker, panic); it never hangs for that reason.
    pub fn run<T, F>(&self, f: F) -> impl Future<Output = Result<T, Canceled>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let pending = Arc::clone(&self.inner.pending);
        pending.fetch_add(1, Ordering::Relaxed);
        let done = Finished(Arc::clone(&pending));
        let job: Job = Box::new(move || {
            // A local now: on a panic in `f` it is dropped before the captured sender.
            let done = done;
            let value = f();
            // The count drops before the result is sent, so a caller that saw the result also
            // sees the job gone from `pending` (the channel orders the two).
            drop(done);
            let _ = tx.send(value);
        });
        // If the job cannot be queued it is dropped here, with its `Finished` guard (the count
        // goes back down) and its oneshot sender (`rx` resolves at once).
        if let Some(sender) = &*self.inner.sender.read() {
            let _ = sender.send(job);
        }
        async move { rx.await.map_err(|_| Canceled) }
    }

    /// Stops accepting jobs: later [`Pool::run`] futures resolve to `Err(Canceled)` at once.
    /// Jobs already queued still run; the threads exit once the queue is empty.
    pub fn shutdown(&self) {
        self.inner.sender.write().take();
    }

    /// Number of worker threads that were started.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Jobs queued or running and not yet finished.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Relaxed)
    }
}

/// Takes one job off the `pending` count when dropped: when the job finishes, panics, or is
/// dropped unrun.
struct Finished(Arc<AtomicUsize>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// The thread's body: it owns its end of the queue for its whole life.
#[allow(clippy::needless_pass_by_value)]
fn worker(rx: Receiver<Job>) {
    // `recv` fails only once every sender is gone and the queue is drained.
    while let Ok(job) = rx.recv() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(job)) {
            let what = panic
                .downcast_ref::<&str>()
                .map(std::string::ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            tracing::error!(panic = %what, "a fallback I/O job panicked");
        }
    }
}

/// The thread count [`global`] starts with when neither [`GLOBAL_THREADS_ENV`] nor
/// [`set_global_threads`] says otherwise (0: not set).
static CONFIGURED_THREADS: AtomicUsize = AtomicUsize::new(0);

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sets the thread count of [`global`] for when it is started (its first use). Returns
/// `false`, changing nothing, once the pool runs: it is process-wide and keeps the size it
/// started with. [`GLOBAL_THREADS_ENV`], when set to a valid count, overrides this.
pub fn set_global_threads(threads: usize) -> bool {
    if GLOBAL.get().is_some() {
        return false;
    }
    CONFIGURED_THREADS.store(threads.clamp(1, MAX_THREADS), Ordering::Relaxed);
    true
}

/// The pool shared by the whole process, started on first use with the thread count in
/// [`GLOBAL_THREADS_ENV`] if that is set, else the one given to [`set_global_threads`],
/// else [`DEFAULT_GLOBAL_THREADS`].
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| Pool::new(global_threads(), "ringkv-fallback"))
}

fn global_threads() -> usize {
    let configured = match CONFIGURED_THREADS.load(Ordering::Relaxed) {
        0 => DEFAULT_GLOBAL_THREADS,
        n => n,
    };
    let Ok(value) = std::env::var(GLOBAL_THREADS_ENV) else {
        return configured;
    };
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => n,
        _ => {
            tracing::warn!(
                value = %value,
                threads = configured,
                "{GLOBAL_THREADS_ENV} must be a thread count in 1..={MAX_THREADS}; ignoring it"
            );
            configured
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::future::join_all;
    use std::sync::Barrier;
    use std::time::Duration;

    #[test]
    fn runs_jobs_and_returns_results() {
        let pool = Pool::new(2, "t-basic");
        assert_eq!(pool.threads(), 2);
        assert_eq!(block_on(pool.run(|| 40 + 2)), Ok(42));
    }

    #[test]
    fn many_jobs_in_flight_run_concurrently() {
        // 8 jobs that all wait on one barrier can only finish if 8 threads run them at once.
        let pool = Pool::new(8, "t-concurrent");
        let barrier = Arc::new(Barrier::new(8));
        let futs: Vec<_> = (0..8)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                pool.run(move || {
                    barrier.wait();
                    i
                })
            })
            .collect();
        let results = block_on(join_all(futs));
        assert_eq!(results, (0..8).map(Ok).collect::<Vec<_>>());

        // And thousands queued on few threads all complete.
        let futs: Vec<_> = (0..5000u64).map(|i| pool.run(move || i * 2)).collect();
        let sum: u64 = block_on(join_all(futs)).into_iter().map(|r| r.unwrap()).sum();
        assert_eq!(sum, (0..5000u64).map(|i| i * 2).sum());
        assert_eq!(pool.pending(), 0);
    }

    #[test]
    fn panicking_job_is_canceled_and_worker_survives() {
        let pool = Pool::new(1, "t-panic");
        assert_eq!(block_on(pool.run(|| -> u32 { panic!("boom") })), Err(Canceled));
        assert_eq!(block_on(pool.run(|| 7)), Ok(7));
    }

    #[test]
    fn shut_down_pool_does_not_hang() {
        let pool = Pool::new(1, "t-shutdown");
        let slow = pool.run(|| {
            thread::sleep(Duration::from_millis(50));
            1
        });
        pool.shutdown();
        // Queued before the shutdown: still runs.
        assert_eq!(block_on(slow), Ok(1));
        // Queued after: canceled at once.
        assert_eq!(block_on(pool.run(|| 2)), Err(Canceled));
    }

    #[test]
    fn dropped_future_does_not_cancel_the_job() {
        let pool = Pool::new(1, "t-drop");
        let flag = Arc::new(AtomicUsize::new(0));
        let f2 = Arc::clone(&flag);
        drop(pool.run(move || f2.store(1, Ordering::SeqCst)));
        // The pool runs jobs in order on its single thread.
        block_on(pool.run(|| ())).unwrap();
        assert_eq!(flag.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn zero_threads_means_one() {
        let pool = Pool::new(0, "t-zero");
        assert_eq!(pool.threads(), 1);
        assert_eq!(block_on(pool.run(|| 3)), Ok(3));
    }

    #[test]
    fn global_pool_is_shared() {
        assert!(std::ptr::eq(global(), global()));
        assert_eq!(block_on(global().run(|| 5)), Ok(5));
    }
}
