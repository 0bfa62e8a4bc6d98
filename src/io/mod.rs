//! The async I/O layer: every byte ringkv reads or writes goes through [`IoDriver`] and
//! [`IoFile`].
//!
//! # Backends
//!
//! Each backend lives in its own file and implements the two traits of `backend.rs`
//! (`Backend` for files and directories, `BackendFile` for one open file). The enums
//! `Engine` and `Handle` below are the one place that names them all; every call is a
//! `match` over them (the `on_engine!` / `on_file!` macros) that calls the same trait
//! method on each arm: static dispatch, no `dyn`, no boxed future, and the `cfg` of an
//! optional backend written once per enum.
//!
//! - **`io_uring`** (`uring.rs`, Linux only). Two rings per *process*, started on first use
//!   and shared by every `IoDriver` (so opening hundreds of databases opens two rings and
//!   pins one set of registered buffers, not hundreds).
//!   - The *direct ring* (`direct.rs`) runs every operation on an open file (reads, writes,
//!     syncs, `fallocate`), opens files and directories, and reads sizes (`statx`). The
//!     polling thread pushes the SQE and calls `io_uring_enter` itself, then drains the
//!     completion queue: an operation the kernel completes inline (a page-cache hit) is
//!     done when its first poll returns, with no thread woken. Operations still in flight
//!     are handed to a reaper thread that waits for their completions and wakes their
//!     futures. On ext4 a buffered write is not completed inline: the kernel hands it to an
//!     io-wq worker (95-97% of submissions in a W3/W4 run, by the `io_uring` tracepoints),
//!     so a `Buffered` commit would cost two thread hops (io-wq, then the reaper) on this
//!     backend, one on the thread pool (README, the peer run of 2026-11-30). A buffered
//!     write not done at submission therefore yields to the executor once (its other ready
//!     tasks run while the io-wq worker writes, `direct.rs` invariant 9), and its next poll
//!     keeps draining the CQ (yielding the CPU between tries) for up to 20 us before it
//!     hands the write over (invariant 8), which catches most WAL appends once the io-wq
//!     worker has written them. Files are opened
//!     into the ring's *registered file table* (`IORING_FILE_INDEX_ALLOC`), one table of
//!     up to `limits::IO_URING_FILE_SLOTS` slots (no more than the soft `RLIMIT_NOFILE`)
//!     shared by every database: an open file takes a slot, not a process descriptor, and
//!     a database holds one descriptor (its directory lock), so a thousand databases open
//!     under `ulimit -n 1024`. Files opened once the table is full take descriptors; once
//!     both are full, an open fails with an error naming both limits. A pool of
//!     registered (fixed) buffers (`buffers.rs`: 16 x 256 KiB) backs writes that fit in
//!     one buffer; where registration is refused (`RLIMIT_MEMLOCK`) one warning is logged
//!     and writes use ordinary buffers. Files opened [`OpenMode::ReadDirect`] (the
//!     published data and blob files) are read with `O_DIRECT`: each read is widened to
//!     the file's direct-I/O alignment (`statx` `STATX_DIOALIGN`, else 4096) into a
//!     page-aligned buffer (`buffers.rs`) and sliced, so a page-cache miss never costs
//!     the submitting thread a copy and the kernel's cache does not double the engine's.
//!     Where the file system refuses `O_DIRECT` (`EINVAL` at open, no alignment in
//!     `statx`, or `EINVAL` at the first read) the file is read buffered, after one
//!     warning per process. A buffered write followed by an `O_DIRECT` read of the same
//!     range returns the written bytes (the kernel writes dirty pages of the range back
//!     before a direct read; `tests/io_driver.rs` checks it). Where the direct ring cannot
//!     be set up, the backend is unavailable.
//!   - The *ring thread* runs a tokio-uring runtime for rename and remove; requests arrive
//!     on an unbounded channel, each becomes a task on the ring thread, and its result
//!     comes back on a oneshot channel, which any executor can await.
//!
//!   Operations `io_uring` lacks (`set_len`, `read_dir`, `exists`, `create_dir_all`, the
//!   directory lock) run on a one-thread helper pool (`threadpool::aux`).
//! - **thread pool** (`threadpool.rs`). A `std::fs::File` behind an `Arc`; every operation
//!   is a blocking positional call run as a job on `ringkv_fallback::global()`.
//!
//! - **simulated disk** (`sim.rs`, feature `sim`, for tests): an in-memory disk that loses,
//!   tears and corrupts unsynced writes at a simulated crash and injects I/O errors; chosen
//!   by `Options::sim`.
//!
//! [`IoBackend::Auto`] (the default) takes `io_uring` when the probe succeeds (the shared ring
//! starts, answers a no-op and knows the file opcodes ringkv uses) and otherwise logs a
//! warning and takes the thread pool. `RINGKV_IO_BACKEND=uring|threadpool` overrides `Auto`.
//! The probe runs once per process; its result (success or failure) is cached.
//!
//! # Contract
//!
//! 1. **Never blocks the caller.** Every operation is a `Send` future; waiting for the disk
//!    happens on the ring thread, on a pool thread, on the reaper, or in the kernel's
//!    `io_uring` workers. The one thing a poll does in the kernel is the direct ring's
//!    `io_uring_enter`, which
//!    completes an operation inline only when it need not wait for the device (a page-cache
//!    hit, a buffered write where the file system allows) and otherwise queues it, and,
//!    for a buffered write, in the poll after it yielded to the executor once, up to 20 us
//!    of draining the CQ with `yield_now` between tries (CPU time, not a wait on the
//!    device). The futures work on any executor
//!    (tokio multi-thread or current-thread, `futures::executor::block_on`, ...). Only
//!    [`IoDriver::new`] may wait, once per process, for the ring to start.
//! 2. **Lazy submission.** Nothing is submitted until the future is first polled.
//! 3. **Cancellation safety.** Once submitted, an operation runs to completion whether or not
//!    its future is still alive: dropping the future drops only the receiving end of the
//!    result channel. The buffers (the `Bytes` of a write, the `Vec` of a read, a registered
//!    buffer) are owned by the ring-thread task, the direct ring's operation slot or the pool
//!    job until the kernel is done with them (a file opened for a dropped future closes
//!    itself), so a dropped future never frees memory the
//!    kernel still reads or writes. A write
//!    whose future was dropped after its first poll still lands in full (or fails unseen).
//! 4. **Ordering.** The driver never reorders, but it does not serialise either: operations
//!    in flight at the same time complete in any order (`io_uring` completes out of order,
//!    pool threads run in parallel). An fsync covers exactly the writes whose completion the
//!    caller *awaited before submitting the fsync*. Callers (the WAL, the checkpoint) submit
//!    an fsync only after awaiting every write it must cover. A durable write
//!    ([`IoFile::writev_at_dsync`]) covers its own bytes only, never an earlier write.
//! 5. **Complete transfers.** [`IoFile::writev_at`] and [`IoFile::writev_at_dsync`] write
//!    every byte (short writes are continued) or fail. [`IoFile::read_exact_at`] returns exactly `len` bytes or an error
//!    of kind `UnexpectedEof`; [`IoFile::read_at`] stops early only at the end of the file.
//! 6. **Errors name their place.** Every failure is [`Error::Io`] with the path and the
//!    operation (`"open"`, `"read"`, `"write"`, `"write_dsync"`, `"fsync"`,
//!    `"fdatasync"`, `"fallocate"`,
//!    `"stat"`, `"truncate"`, `"rename"`, `"remove"`, `"create_dir"`, `"read_dir"`). If the
//!    ring thread dies, operations fail with kind `BrokenPipe`; they never hang.
//! 7. **File lifetime.** An [`IoFile`] is a cheap clone of a shared handle; the descriptor
//!    (or `io_uring` file slot) closes when the last clone is dropped and the operations in
//!    flight on it are done.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use backend::{Backend, BackendFile, Written};

mod backend;
#[cfg(target_os = "linux")]
mod buffers;
#[cfg(target_os = "linux")]
mod direct;
#[cfg(feature = "sim")]
pub mod sim;
mod threadpool;
#[cfg(target_os = "linux")]
mod uring;

pub use ringkv_fallback::LockMode;

/// The simulated disk an [`Options`](crate::Options) may carry: [`sim::SimDisk`] with the
/// feature `sim`, an empty type (no value exists) without it, so the field is there either
/// way and only the feature can fill it.
#[cfg(feature = "sim")]
pub(crate) type SimSlot = sim::SimDisk;
/// The simulated disk an [`Options`](crate::Options) may carry: without the feature `sim`,
/// an empty type (no value exists), so the field is there either way and only the
/// feature can fill it.
#[derive(Debug, Clone)]
#[cfg(not(feature = "sim"))]
pub(crate) enum SimSlot {}

/// Which I/O backend a database uses.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let opts = ringkv::Options::default().io_backend(ringkv::IoBackend::ThreadPool);
/// let db = ringkv::Db::open(dir.path(), opts).await?;
/// assert_eq!(db.io_backend(), ringkv::IoBackend::ThreadPool);
/// db.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IoBackend {
    /// Probe `io_uring` at open; fall back to the thread pool (with a warning) where it is
    /// missing. The environment variable `RINGKV_IO_BACKEND=uring|threadpool` overrides
    /// `Auto`.
    #[default]
    Auto,
    /// `io_uring` through the shared ring thread. Open fails if `io_uring` is unavailable.
    Uring,
    /// The `ringkv-fallback` thread pool of positional reads and writes.
    ThreadPool,
    /// The simulated disk of the crash tests (feature `sim`): reported by
    /// `Db::io_backend` of a database on it, never chosen through this enum (an open
    /// asking for it is [`Error::InvalidArgument`]).
    #[doc(hidden)]
    Simulated,
}

/// Environment variable that overrides [`IoBackend::Auto`]: `uring` or `threadpool`.
pub const BACKEND_ENV: &str = "RINGKV_IO_BACKEND";

/// How [`IoDriver::open`] opens a file. Every mode but `Read` opens read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read-only.
    Read,
    /// An existing file that no one writes while it is open (a published data or blob
    /// file), read-only, read around the page cache where the backend and the file system
    /// allow: on `io_uring`, `O_DIRECT` reads widened to the file's direct-I/O alignment
    /// (`statx`'s `STATX_DIOALIGN`, else 4096) and sliced; where `O_DIRECT` is refused
    /// (tmpfs, `EINVAL` at open or at the first read) buffered reads, after one warning per
    /// process. The thread pool and the simulated disk read it as [`OpenMode::Read`].
    ReadDirect,
    /// An existing file, read-write.
    ReadWrite,
    /// Creates the file if it is missing, else opens it; read-write, never truncates.
    Create,
    /// Creates the file; fails (kind `AlreadyExists`) if it exists. Read-write.
    CreateNew,
}

/// Operation counts of one [`IoDriver`] (its clones and the files it opened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Calls of [`IoFile::read_at`] and [`IoFile::read_exact_at`].
    pub reads: u64,
    /// Of `reads`, those made with `O_DIRECT` (files opened [`OpenMode::ReadDirect`] on
    /// `io_uring` where the file system takes it).
    pub direct_reads: u64,
    /// Calls of [`IoFile::writev_at`] (fixed-buffer ones included).
    pub writes: u64,
    /// Writes that went through a registered (fixed) buffer (`io_uring` only).
    pub fixed_writes: u64,
    /// Calls of [`IoFile::sync_data`], [`IoFile::sync_all`] and [`IoDriver::sync_dir`].
    pub fsyncs: u64,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    direct_reads: AtomicU64,
    writes: AtomicU64,
    fixed_writes: AtomicU64,
    fsyncs: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The I/O engine of one database: opens files and runs directory operations on the
/// backend chosen at [`IoDriver::new`]. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct IoDriver {
    engine: Engine,
    stats: Arc<Counters>,
}

/// The backend of a driver: the one place that names them all. Every call goes through
/// [`on_engine!`] / [`on_file!`], a `match` that calls the same [`Backend`] /
/// [`BackendFile`] method on each arm (static dispatch, no boxed future).
#[derive(Clone)]
enum Engine {
    #[cfg(target_os = "linux")]
    Uring(&'static uring::Ring),
    ThreadPool(threadpool::Pool),
    #[cfg(feature = "sim")]
    Sim(sim::SimDisk),
}

/// An open file of one of the [`Engine`]s.
enum Handle {
    #[cfg(target_os = "linux")]
    Uring(uring::UringFile),
    Pool(threadpool::PoolFile),
    #[cfg(feature = "sim")]
    Sim(sim::SimFile),
}

/// `$body` with `$b` bound to the backend of `$engine`, whichever it is.
macro_rules! on_engine {
    ($engine:expr, $b:ident => $body:expr) => {
        match $engine {
            #[cfg(target_os = "linux")]
            Engine::Uring($b) => $body,
            Engine::ThreadPool($b) => $body,
            #[cfg(feature = "sim")]
            Engine::Sim($b) => $body,
        }
    };
}

/// `$body` with `$f` bound to the backend file of `$handle`, whichever it is.
macro_rules! on_file {
    ($handle:expr, $f:ident => $body:expr) => {
        match $handle {
            #[cfg(target_os = "linux")]
            Handle::Uring($f) => $body,
            Handle::Pool($f) => $body,
            #[cfg(feature = "sim")]
            Handle::Sim($f) => $body,
        }
    };
}

#[cfg(target_os = "linux")]
impl From<uring::UringFile> for Handle {
    fn from(f: uring::UringFile) -> Handle {
        Handle::Uring(f)
    }
}

impl From<threadpool::PoolFile> for Handle {
    fn from(f: threadpool::PoolFile) -> Handle {
        Handle::Pool(f)
    }
}

#[cfg(feature = "sim")]
impl From<sim::SimFile> for Handle {
    fn from(f: sim::SimFile) -> Handle {
        Handle::Sim(f)
    }
}

impl fmt::Debug for IoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoDriver").field("backend", &self.backend()).finish()
    }
}

impl IoDriver {
    /// Starts a driver on `backend`.
    ///
    /// [`IoBackend::Auto`] is first overridden by the environment variable
    /// `RINGKV_IO_BACKEND=uring|threadpool` (another value is [`Error::InvalidArgument`]);
    /// then it probes `io_uring` (the shared ring starts and answers a no-op) and, if `io_uring`
    /// is unavailable, logs a warning and uses the thread pool. A forced
    /// [`IoBackend::Uring`] that is unavailable is [`Error::Io`] with op `"io_uring setup"`.
    /// The probe runs once per process; this call waits for it the first time.
    pub fn new(backend: IoBackend) -> Result<IoDriver> {
        let engine = match resolve_env(backend)? {
            IoBackend::ThreadPool => Engine::ThreadPool(threadpool::Pool),
            IoBackend::Simulated => {
                return Err(Error::invalid("the simulated disk is chosen by Options::sim, not by IoBackend"))
            }
            IoBackend::Uring => uring_engine().map_err(|e| Error::io("io_uring", "io_uring setup", e))?,
            IoBackend::Auto => match uring_engine() {
                Ok(engine) => engine,
                Err(e) => {
                    warn_uring_unavailable(&e);
                    Engine::ThreadPool(threadpool::Pool)
                }
            },
        };
        Ok(IoDriver { engine, stats: Arc::default() })
    }

    /// A driver on the simulated disk `disk` (feature `sim`).
    #[cfg(feature = "sim")]
    pub fn simulated(disk: sim::SimDisk) -> IoDriver {
        IoDriver { engine: Engine::Sim(disk), stats: Arc::default() }
    }

    /// The backend in use: [`IoBackend::Uring`] or [`IoBackend::ThreadPool`] (or
    /// `Simulated`), never `Auto`.
    pub fn backend(&self) -> IoBackend {
        match self.engine {
            #[cfg(target_os = "linux")]
            Engine::Uring(_) => IoBackend::Uring,
            Engine::ThreadPool(_) => IoBackend::ThreadPool,
            #[cfg(feature = "sim")]
            Engine::Sim(_) => IoBackend::Simulated,
        }
    }

    /// Operation counts of this driver, its clones and the files opened through them.
    pub fn io_stats(&self) -> IoStats {
        let s = &self.stats;
        IoStats {
            reads: s.reads.load(Ordering::Relaxed),
            direct_reads: s.direct_reads.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            fixed_writes: s.fixed_writes.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
        }
    }

    /// Opens `path` in `mode`.
    pub async fn open(&self, path: &Path, mode: OpenMode) -> Result<IoFile> {
        let handle = on_engine!(&self.engine, b => b.open(path, mode).await.map(Handle::from))
            .map_err(|e| Error::io(path, "open", e))?;
        Ok(IoFile {
            inner: Arc::new(FileInner { path: path.to_owned(), stats: Arc::clone(&self.stats), handle }),
        })
    }

    /// Renames `from` to `to`, replacing `to` if it exists (not durable until
    /// [`IoDriver::sync_dir`] of the parent directory).
    pub async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        on_engine!(&self.engine, b => b.rename(from, to).await).map_err(|e| Error::io(from, "rename", e))
    }

    /// Removes the file `path`.
    pub async fn remove_file(&self, path: &Path) -> Result<()> {
        on_engine!(&self.engine, b => b.remove_file(path).await).map_err(|e| Error::io(path, "remove", e))
    }

    /// Creates the directory `path` and its missing parents (Ok if it exists), durably: the
    /// parent of every directory it creates is fsynced, so a crash cannot lose the new
    /// directory (and the files later synced inside it) with it.
    pub async fn create_dir_all(&self, path: &Path) -> Result<()> {
        let mut created = Vec::new();
        for a in path.ancestors() {
            if a.as_os_str().is_empty() || self.exists(a).await? {
                break;
            }
            created.push(a);
        }
        if created.is_empty() {
            return Ok(());
        }
        on_engine!(&self.engine, b => b.create_dir_all(path).await)
            .map_err(|e| Error::io(path, "create_dir", e))?;
        for dir in created.iter().rev() {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            self.sync_dir(parent).await?;
        }
        Ok(())
    }

    /// Makes the entries of directory `path` durable: opens it read-only and fsyncs it.
    pub async fn sync_dir(&self, path: &Path) -> Result<()> {
        Counters::bump(&self.stats.fsyncs);
        on_engine!(&self.engine, b => b.sync_dir(path).await).map_err(|e| Error::io(path, "fsync", e))
    }

    /// The names (not paths) of the entries of directory `path`, sorted. Names that are not
    /// valid UTF-8 are skipped with a warning (ringkv never creates such names).
    pub async fn read_dir(&self, path: &Path) -> Result<Vec<String>> {
        on_engine!(&self.engine, b => b.read_dir(path).await).map_err(|e| Error::io(path, "read_dir", e))
    }

    /// Locks directory `path` in `mode` without waiting, for as long as the returned
    /// [`DirLock`] lives (`flock` on the directory's own descriptor, see
    /// `ringkv_fallback::try_lock_dir`; the simulated disk keeps its own table, which a
    /// crash clears). A conflicting holder, in this process or another, is
    /// [`Error::Locked`] naming the holders' process ids where the platform tells.
    pub async fn lock_dir(&self, path: &Path, mode: LockMode) -> Result<DirLock> {
        match on_engine!(&self.engine, b => b.lock_dir(path, mode).await)
            .map_err(|e| Error::io(path, "lock", e))?
        {
            Ok(held) => Ok(DirLock { _held: held }),
            Err(holders) => Err(Error::Locked { path: path.to_owned(), holders }),
        }
    }

    /// Whether `path` exists (following symbolic links).
    pub async fn exists(&self, path: &Path) -> Result<bool> {
        on_engine!(&self.engine, b => b.exists(path).await).map_err(|e| Error::io(path, "stat", e))
    }
}

/// A lock on a database directory ([`IoDriver::lock_dir`]); dropping it releases the lock.
pub struct DirLock {
    _held: Held,
}

/// A directory lock of one of the backends, held only for its `Drop`, which releases it.
#[allow(dead_code)]
enum Held {
    Os(ringkv_fallback::DirLock),
    #[cfg(feature = "sim")]
    Sim(sim::SimLock),
}

impl fmt::Debug for DirLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirLock").finish_non_exhaustive()
    }
}

/// An open file. Cheap to clone (`Arc` inside), `Send + Sync`; the descriptor closes when
/// the last clone is dropped. All reads and writes are positional: there is no cursor, and
/// any number of operations may be in flight at once (see the module doc for ordering).
#[derive(Clone)]
pub struct IoFile {
    inner: Arc<FileInner>,
}

struct FileInner {
    path: PathBuf,
    stats: Arc<Counters>,
    handle: Handle,
}

impl fmt::Debug for IoFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoFile").field("path", &self.inner.path).finish()
    }
}

impl IoFile {
    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn err(&self, op: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |e| Error::io(&self.inner.path, op, e)
    }

    /// Reads exactly `len` bytes at `offset`. A file ending first is [`Error::Io`] whose
    /// source has kind [`io::ErrorKind::UnexpectedEof`].
    pub async fn read_exact_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read(offset, len, true).await
    }

    /// Reads up to `len` bytes at `offset`: fewer only where the file ends.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read(offset, len, false).await
    }

    async fn read(&self, offset: u64, len: usize, exact: bool) -> Result<Vec<u8>> {
        Counters::bump(&self.inner.stats.reads);
        let buf =
            on_file!(&self.inner.handle, f => f.read(offset, len, exact).await).map_err(self.err("read"))?;
        debug_assert!(buf.len() == len || (!exact && buf.len() < len));
        if on_file!(&self.inner.handle, f => f.reads_direct()) {
            Counters::bump(&self.inner.stats.direct_reads);
        }
        Ok(buf)
    }

    /// Writes all of `bufs`, back to back, starting at `offset` (one vectored write when
    /// the kernel takes it all; short writes are continued).
    pub async fn writev_at(&self, offset: u64, bufs: Vec<Bytes>) -> Result<()> {
        let stats = &self.inner.stats;
        Counters::bump(&stats.writes);
        match on_file!(&self.inner.handle, f => f.writev(offset, bufs).await).map_err(self.err("write"))? {
            Written::Fixed => Counters::bump(&stats.fixed_writes),
            Written::Unfixed => {}
        }
        Ok(())
    }

    /// Writes all of `bufs` at `offset` and makes them durable, as ONE operation: a write
    /// with `RWF_DSYNC` (`io_uring`: the flag in the write SQE; thread pool: `pwritev2` in one
    /// pool job). When it returns `Ok`, these bytes and the metadata needed to read them
    /// back are on stable storage, as after [`IoFile::writev_at`] then
    /// [`IoFile::sync_data`] — but only *this write's range* is covered: earlier writes
    /// whose bytes are not yet synced stay unsynced (sync them first). On error, any part
    /// of the write may have landed and none of it is known durable. Counted as one write
    /// and one fsync in [`IoStats`]; errors name the operation `"write_dsync"`.
    pub async fn writev_at_dsync(&self, offset: u64, bufs: Vec<Bytes>) -> Result<()> {
        let stats = &self.inner.stats;
        Counters::bump(&stats.writes);
        Counters::bump(&stats.fsyncs);
        match on_file!(&self.inner.handle, f => f.writev_dsync(offset, bufs).await).map_err(self.err("write_dsync"))? {
            Written::Fixed => Counters::bump(&stats.fixed_writes),
            Written::Unfixed => {}
        }
        Ok(())
    }

    /// Flushes the file's data (and the metadata needed to read it) to stable storage
    /// (`fdatasync`). Covers the writes awaited before this call.
    pub async fn sync_data(&self) -> Result<()> {
        self.sync(true).await.map_err(self.err("fdatasync"))
    }

    /// Flushes the file's data and metadata to stable storage (`fsync`). Covers the writes
    /// awaited before this call.
    pub async fn sync_all(&self) -> Result<()> {
        self.sync(false).await.map_err(self.err("fsync"))
    }

    async fn sync(&self, data_only: bool) -> io::Result<()> {
        Counters::bump(&self.inner.stats.fsyncs);
        on_file!(&self.inner.handle, f => f.sync(data_only).await)
    }

    /// Reserves disk space for `offset..offset + len`, extending the file if it is shorter
    /// (`fallocate` mode 0; where the file system cannot preallocate, only the length is
    /// extended).
    pub async fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        on_file!(&self.inner.handle, f => f.allocate(offset, len).await).map_err(self.err("fallocate"))
    }

    /// The file's length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub async fn len(&self) -> Result<u64> {
        on_file!(&self.inner.handle, f => f.len().await).map_err(self.err("stat"))
    }

    /// Truncates or extends (with zeros) the file to `len` bytes.
    pub async fn set_len(&self, len: u64) -> Result<()> {
        on_file!(&self.inner.handle, f => f.set_len(len).await).map_err(self.err("truncate"))
    }
}

/// Applies the `RINGKV_IO_BACKEND` override to `Auto`.
fn resolve_env(requested: IoBackend) -> Result<IoBackend> {
    if requested != IoBackend::Auto {
        return Ok(requested);
    }
    let value = match std::env::var(BACKEND_ENV) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => return Ok(IoBackend::Auto),
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(Error::invalid(format!("{BACKEND_ENV}={v:?} is not valid UTF-8")))
        }
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(IoBackend::Auto),
        "uring" | "io_uring" => Ok(IoBackend::Uring),
        "threadpool" | "thread_pool" => Ok(IoBackend::ThreadPool),
        _ => Err(Error::invalid(format!("{BACKEND_ENV}={value:?}: expected \"uring\" or \"threadpool\""))),
    }
}

#[cfg(target_os = "linux")]
fn uring_engine() -> io::Result<Engine> {
    uring::global().map(Engine::Uring)
}

#[cfg(not(target_os = "linux"))]
fn uring_engine() -> io::Result<Engine> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "io_uring exists only on Linux"))
}

/// The soft `RLIMIT_NOFILE` of the process (`None` where it cannot be read).
#[cfg(target_os = "linux")]
fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0).then_some(limit.rlim_cur)
}

/// The soft `RLIMIT_NOFILE` of the process (`None` where it cannot be read).
#[cfg(not(target_os = "linux"))]
fn nofile_limit() -> Option<u64> {
    None
}

/// `e` itself, or where it is `EMFILE` (the process's descriptor table is full), an error
/// of the same kind whose message says what needed a descriptor (`what` ends the
/// sentence "... the process's descriptor table") and names the limit.
fn name_descriptor_limit(e: io::Error, what: &str) -> io::Error {
    #[cfg(target_os = "linux")]
    const EMFILE: i32 = libc::EMFILE;
    // Elsewhere the message stays the platform's own.
    #[cfg(not(target_os = "linux"))]
    const EMFILE: i32 = i32::MIN;
    if e.raw_os_error() != Some(EMFILE) {
        return e;
    }
    let limit = nofile_limit().map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    io::Error::new(
        e.kind(),
        format!("too many open files: {what} the process's descriptor table (RLIMIT_NOFILE {limit}): {e}"),
    )
}

/// One warning per process; later `Auto` drivers fall back quietly.
fn warn_uring_unavailable(e: &io::Error) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(error = %e, "io_uring is unavailable; using the thread-pool I/O backend");
    });
    tracing::debug!(error = %e, "IoBackend::Auto resolved to the thread pool");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_backends_ignore_the_environment() {
        assert_eq!(resolve_env(IoBackend::ThreadPool).unwrap(), IoBackend::ThreadPool);
        assert_eq!(resolve_env(IoBackend::Uring).unwrap(), IoBackend::Uring);
    }

    #[test]
    fn futures_are_send_and_static() {
        fn assert_send_static<T: Send + 'static>(_: &T) {}
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<IoDriver>();
        assert_sync::<IoFile>();
        let driver = IoDriver::new(IoBackend::ThreadPool).unwrap();
        let d = driver.clone();
        let fut = async move {
            let f = d.open(Path::new("/nonexistent/x"), OpenMode::Read).await?;
            f.writev_at(0, vec![Bytes::from_static(b"x")]).await?;
            f.read_exact_at(0, 1).await?;
            f.sync_data().await?;
            d.read_dir(Path::new("/")).await
        };
        assert_send_static(&fut);
        drop(fut);
    }
}
