//! Thread-pool positional file I/O for ringkv hosts without `io_uring`.
//!
//! This crate has no `io_uring` dependency and builds on every platform. It provides two
//! things:
//!
//! - [`Pool`]: a fixed set of worker threads running blocking jobs. [`Pool::run`] queues a
//!   job and returns a `Send` future of its result, so a caller on any executor (tokio,
//!   smol, `futures::executor::block_on`) awaits disk I/O without blocking its own thread.
//!   [`global`] is the pool shared by the whole process, sized when it starts (its first
//!   use) by [`GLOBAL_THREADS_ENV`], else [`set_global_threads`], else
//!   [`DEFAULT_GLOBAL_THREADS`].
//! - [`try_lock_dir`]: the advisory lock that keeps a second writer out of a database
//!   directory.
//! - Positional helpers meant to run inside such jobs: [`read_exact_at`],
//!   [`read_to_fill_at`], [`write_all_vectored_at`], [`write_all_vectored_dsync_at`], [`allocate`], [`sync_dir`]. They never
//!   move a file cursor, so any number of jobs may use the same [`std::fs::File`] at once.
//!
//! # Guarantees
//!
//! 1. A job is queued when [`Pool::run`] is called, not when its future is first polled;
//!    dropping the future does not cancel the job (its result is discarded).
//! 2. The future of [`Pool::run`] never hangs on a pool that cannot run the job: if the pool
//!    was shut down, has no worker thread, or the job panicked, it resolves to
//!    `Err(`[`Canceled`]`)`.
//! 3. A panicking job does not kill its worker thread; the panic is logged through
//!    `tracing` and the job's future resolves to `Err(Canceled)`.
//! 4. The write helpers write every byte or return an error: short writes are continued,
//!    `EINTR` is retried, a zero-byte write is [`std::io::ErrorKind::WriteZero`].

mod lock;
mod pool;
mod positional;

pub use lock::{try_lock_dir, DirLock, LockError, LockMode};
pub use pool::{global, set_global_threads, Canceled, Pool, DEFAULT_GLOBAL_THREADS, GLOBAL_THREADS_ENV};
pub use positional::{
    allocate, read_exact_at, read_to_fill_at, sync_dir, write_all_vectored_at, write_all_vectored_dsync_at,
};
