//! Options of a database, with their defaults and their validation.
//!
//! [`Options`] is `#[non_exhaustive]`: outside this crate it is built from
//! `Options::default()` with one builder method per field (`.cache_capacity(..)`), or by
//! assigning its public fields on a `mut` binding, so adding an option is not a breaking
//! change.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
pub use crate::io::IoBackend;
use crate::io::{IoDriver, SimSlot};
use crate::limits;

/// When a commit counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `commit` returns after the WAL bytes are on stable storage (`fdatasync`).
    #[default]
    Sync,
    /// `commit` returns after the WAL bytes reached the kernel (a crash of the process
    /// loses nothing; a crash of the machine may).
    Buffered,
    /// `commit` returns at once; the WAL is written and synced in the background (within
    /// about 20 ms), by [`Db::flush`](crate::Db::flush), by `close`, and by the drop of a
    /// database not closed (before it releases its lock). A crash or a process exit before
    /// then loses those commits (and every later one: the log is a prefix).
    None,
}

/// Options for [`Db::open`](crate::Db::open).
///
/// ```
/// use ringkv::{Durability, Options};
/// let opts = Options::default()
///     .durability(Durability::Buffered)
///     .cache_capacity(64 << 20)
///     .read_only(false);
/// assert_eq!(opts.cache_capacity, 64 << 20);
/// let mut opts = opts;
/// opts.inline_limit = 4096; // fields can be set directly too
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Default durability of commits (overridable per commit).
    pub durability: Durability,
    /// The I/O backend.
    pub io_backend: IoBackend,
    /// Bytes of page cache: the tree pages in memory and the page table (a slot per page
    /// and a stub per page on disk, `Stats::page_table_bytes`, which grows with the
    /// database and is never evicted) together. Clean pages are evicted once both pass
    /// it; the pages keep at least a quarter of it however large the table grows.
    pub cache_capacity: usize,
    /// Values of at least this many bytes are stored in blob files, apart from the tree.
    pub inline_limit: usize,
    /// A background checkpoint starts once this many bytes were written since the last one.
    pub checkpoint_bytes: usize,
    /// A background checkpoint starts at least this often while there are dirty pages
    /// (`None` disables the timer).
    pub checkpoint_interval: Option<Duration>,
    /// A background checkpoint starts once no write has come for this long while writes
    /// are not yet checkpointed (`None` disables it): after a burst of writes, the pages it
    /// dirtied go out and their chains are consolidated in memory, so the reads and scans
    /// that follow walk bases, not deltas, and a reopen replays little WAL.
    pub checkpoint_idle: Option<Duration>,
    /// Size at which a WAL segment is closed and a new one started.
    pub wal_segment_bytes: u64,
    /// Open read-only: recovery runs in memory only, nothing in the directory is created,
    /// renamed, removed or written (so a database on a read-only mount opens), a shared lock
    /// lets other read-only opens in but no writer, and every write is answered with
    /// [`Error::ReadOnly`]. The database must exist.
    pub read_only: bool,
    /// Run checkpoints in the background (on the size and time triggers). When false,
    /// only [`Db::checkpoint`](crate::Db::checkpoint) and close checkpoint.
    pub background_checkpoints: bool,
    /// After open, a task of its own reads the pages on disk into the cache, in address
    /// order with many reads in flight, until they take half the cache's room or none is
    /// left ([`Db::warm_cache`](crate::Db::warm_cache)): after a restart the index and the
    /// leaves are in memory within a fraction of a second (2 GiB of 4 KiB values: 12k
    /// pages), so a get costs one read of its value, not a read per level it misses. The
    /// simulated disk never warms on its own (its runs replay exactly from their seed).
    pub warm_cache: bool,
    /// A data or blob file whose live bytes fall below this fraction is rewritten by GC.
    pub gc_live_ratio: f64,
    /// Bound on the pages changed since the last checkpoint, in bytes, each dirty page
    /// counted by what a checkpoint will hold for it: a page whose new versions go out as
    /// a delta frame [`limits::DELTA_FRAME_COST`] plus twice their bytes, any other
    /// [`limits::DIRTY_PAGE_COST`] (its image, plus the page itself where a checkpoint
    /// must load it). A background checkpoint starts at half of it; a commit
    /// that finds it exceeded runs a checkpoint first (writers slow down instead of
    /// memory growing). It bounds what a checkpoint holds, whatever the size of the
    /// database. `None`: a quarter of `cache_capacity` (never below
    /// [`limits::MIN_DIRTY_PAGES`] pages), so that the engine's memory stays near 1.5 times
    /// `cache_capacity` (the page table included while it takes less than three quarters
    /// of the capacity).
    pub dirty_limit: Option<usize>,
    /// Bound on WAL bytes appended and not yet written: past it a `Durability::None`
    /// commit waits until its record reached the kernel, as a `Buffered` one does. `None`:
    /// a sixteenth of `cache_capacity`, at least [`limits::MIN_WAL_BUFFER`].
    pub wal_buffer_limit: Option<usize>,
    /// Threads of the thread-pool I/O backend's pool (`None`: 32). The pool is
    /// process-wide and started by the first database that uses it, with that database's
    /// value; later values are ignored (with a debug event). The environment variable
    /// `RINGKV_FALLBACK_THREADS` overrides it. The `io_uring` backend does not start this
    /// pool (it runs its few blocking calls on one helper thread of its own).
    pub io_threads: Option<usize>,
    /// Threads of the process-wide pool that runs the background work (WAL flushes of
    /// `Durability::None` commits, checkpoints, the drop of a database not closed) of every
    /// database opened without a [`Spawner`] (`None`: 2). Like `io_threads`, the first
    /// database that starts the pool sizes it.
    pub background_threads: Option<usize>,
    /// Runs this database's background work on the caller's runtime instead of the
    /// process-wide background pool (`None`: the pool). See [`Spawner`].
    pub spawner: Option<Spawner>,
    /// Run on this simulated disk instead of a real one (set by `Options::sim`, feature
    /// `sim`, for tests; without the feature no value of it exists). The background task
    /// does not run on a simulated disk, so a single-threaded run replays exactly from the
    /// disk's seed: checkpoints happen on [`Db::checkpoint`](crate::Db::checkpoint), on
    /// close and at the write stall.
    pub(crate) sim: Option<SimSlot>,
}

/// One builder method per public field of [`Options`]: `Options::default().name(value)`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl Options {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $ty) -> Options {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Options::durability`](#structfield.durability).
    durability: Durability;
    /// Sets [`Options::io_backend`](#structfield.io_backend).
    io_backend: IoBackend;
    /// Sets [`Options::cache_capacity`](#structfield.cache_capacity).
    cache_capacity: usize;
    /// Sets [`Options::inline_limit`](#structfield.inline_limit).
    inline_limit: usize;
    /// Sets [`Options::checkpoint_bytes`](#structfield.checkpoint_bytes).
    checkpoint_bytes: usize;
    /// Sets [`Options::checkpoint_interval`](#structfield.checkpoint_interval).
    checkpoint_interval: Option<Duration>;
    /// Sets [`Options::checkpoint_idle`](#structfield.checkpoint_idle).
    checkpoint_idle: Option<Duration>;
    /// Sets [`Options::wal_segment_bytes`](#structfield.wal_segment_bytes).
    wal_segment_bytes: u64;
    /// Sets [`Options::read_only`](#structfield.read_only).
    read_only: bool;
    /// Sets [`Options::background_checkpoints`](#structfield.background_checkpoints).
    background_checkpoints: bool;
    /// Sets [`Options::warm_cache`](#structfield.warm_cache).
    warm_cache: bool;
    /// Sets [`Options::gc_live_ratio`](#structfield.gc_live_ratio).
    gc_live_ratio: f64;
    /// Sets [`Options::dirty_limit`](#structfield.dirty_limit).
    dirty_limit: Option<usize>;
    /// Sets [`Options::wal_buffer_limit`](#structfield.wal_buffer_limit).
    wal_buffer_limit: Option<usize>;
}

impl Options {
    /// Sets [`Options::io_threads`](#structfield.io_threads).
    pub fn io_threads(mut self, threads: usize) -> Options {
        self.io_threads = Some(threads);
        self
    }

    /// Sets [`Options::background_threads`](#structfield.background_threads).
    pub fn background_threads(mut self, threads: usize) -> Options {
        self.background_threads = Some(threads);
        self
    }

    /// Sets [`Options::spawner`](#structfield.spawner).
    pub fn spawner(mut self, spawner: Spawner) -> Options {
        self.spawner = Some(spawner);
        self
    }
}

/// A future of the background work, as a [`Spawner`] receives it.
pub type BackgroundTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs a database's background work on the caller's runtime ([`Options::spawner`]): the
/// task of each open database (WAL flushes of `Durability::None` commits every 20 ms,
/// checkpoints on the size and time triggers, GC), the cache warming after open
/// ([`Options::warm_cache`]) and, when the last handle is dropped
/// without [`Db::close`](crate::Db::close), the task that flushes its WAL and hands the
/// directory lock over. Without one, they run on a process-wide pool of
/// [`Options::background_threads`] threads.
///
/// The function must start the future and return (as `tokio::spawn` does); it must not
/// block on it. The futures are `Send` and do their I/O through the I/O backend, so any
/// multi-threaded or current-thread executor runs them. The runtime must outlive the
/// database: a background task dropped unfinished (its runtime shut down) stops
/// checkpointing, and a drop hand-over dropped unfinished loses the `Durability::None`
/// commits not yet written, as a crash would (call `close` to be sure).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// use ringkv::{Db, Options, Spawner};
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let opts = Options::default().spawner(Spawner::new(|task| {
///     tokio::spawn(task);
/// }));
/// let db = Db::open(dir.path(), opts).await?;
/// db.bucket("b").await?.put(b"k", b"v").await?;
/// db.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Spawner(Arc<dyn Fn(BackgroundTask) + Send + Sync>);

impl Spawner {
    /// A spawner calling `spawn` with each background future.
    pub fn new(spawn: impl Fn(BackgroundTask) + Send + Sync + 'static) -> Spawner {
        Spawner(Arc::new(spawn))
    }

    /// Starts `task`.
    pub(crate) fn spawn(&self, task: BackgroundTask) {
        (self.0)(task);
    }
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner(..)")
    }
}

impl Options {
    /// Runs the database on the simulated disk `disk` (`None`: a real one). Feature `sim`,
    /// for the crash tests; not an API.
    #[cfg(feature = "sim")]
    #[doc(hidden)]
    pub fn sim(mut self, disk: Option<crate::io::sim::SimDisk>) -> Options {
        self.sim = disk;
        self
    }

    /// Whether the database runs on the simulated disk.
    pub(crate) fn is_simulated(&self) -> bool {
        self.sim.is_some()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            io_backend: IoBackend::Auto,
            cache_capacity: 256 * 1024 * 1024,
            inline_limit: 2048,
            checkpoint_bytes: 64 * 1024 * 1024,
            checkpoint_interval: Some(Duration::from_secs(30)),
            checkpoint_idle: Some(Duration::from_secs(1)),
            wal_segment_bytes: 64 * 1024 * 1024,
            read_only: false,
            background_checkpoints: true,
            warm_cache: true,
            gc_live_ratio: 0.5,
            dirty_limit: None,
            wal_buffer_limit: None,
            io_threads: None,
            background_threads: None,
            spawner: None,
            sim: None,
        }
    }
}

impl Options {
    /// The I/O driver of a database with these options: the simulated disk of `sim` where
    /// one is set (feature `sim`), else [`IoDriver::new`] of `io_backend`.
    pub(crate) fn io_driver(&self) -> Result<IoDriver> {
        #[cfg(feature = "sim")]
        if let Some(disk) = &self.sim {
            return Ok(IoDriver::simulated(disk.clone()));
        }
        #[cfg(not(feature = "sim"))]
        if let Some(never) = &self.sim {
            match *never {}
        }
        if let Some(threads) = self.io_threads {
            // Takes effect only if the pool has not started (it is process-wide).
            if !ringkv_fallback::set_global_threads(threads) {
                tracing::debug!(threads, "Options::io_threads ignored: the I/O thread pool already runs");
            }
        }
        IoDriver::new(self.io_backend)
    }

    /// The dirty-page bound of [`Options::dirty_limit`], in pages.
    pub(crate) fn dirty_pages_limit(&self) -> usize {
        let bytes = self.dirty_limit.unwrap_or(self.cache_capacity / 4);
        (bytes / limits::DIRTY_PAGE_COST).max(limits::MIN_DIRTY_PAGES)
    }

    /// The dirty bound in bytes: [`Options::dirty_pages_limit`] pages at full cost.
    pub(crate) fn dirty_limit_bytes(&self) -> usize {
        self.dirty_pages_limit().saturating_mul(limits::DIRTY_PAGE_COST)
    }

    /// The WAL buffer bound of [`Options::wal_buffer_limit`], in bytes.
    pub(crate) fn wal_buffer_bytes(&self) -> usize {
        self.wal_buffer_limit.unwrap_or(self.cache_capacity / 16).max(limits::MIN_WAL_BUFFER)
    }

    /// Checks every option; a bad one is [`Error::InvalidArgument`].
    pub fn validate(&self) -> Result<()> {
        if self.cache_capacity < limits::MIN_CACHE_CAPACITY {
            return Err(Error::invalid(format!(
                "cache_capacity {} is below the minimum {}",
                self.cache_capacity,
                limits::MIN_CACHE_CAPACITY
            )));
        }
        if self.inline_limit == 0 || self.inline_limit > limits::MAX_VALUE_LEN {
            return Err(Error::invalid(format!("inline_limit {} out of range", self.inline_limit)));
        }
        if self.checkpoint_bytes < 4096 {
            return Err(Error::invalid("checkpoint_bytes must be at least 4096"));
        }
        if self.wal_segment_bytes < 64 * 1024 {
            return Err(Error::invalid("wal_segment_bytes must be at least 64 KiB"));
        }
        if !(0.0..1.0).contains(&self.gc_live_ratio) {
            return Err(Error::invalid("gc_live_ratio must be in [0, 1)"));
        }
        for (name, d) in
            [("checkpoint_interval", self.checkpoint_interval), ("checkpoint_idle", self.checkpoint_idle)]
        {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(Error::invalid(format!("{name} must not be zero")));
            }
        }
        for (name, threads) in
            [("io_threads", self.io_threads), ("background_threads", self.background_threads)]
        {
            if let Some(n) = threads {
                if !(1..=limits::MAX_THREADS).contains(&n) {
                    return Err(Error::invalid(format!(
                        "{name} must be in 1..={}, got {n}",
                        limits::MAX_THREADS
                    )));
                }
            }
        }
        Ok(())
    }
}
