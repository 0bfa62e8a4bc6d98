//! # ringkv
//!
//! An embedded, ordered, transactional key-value storage engine for async Rust, whose disk
//! operations are awaited `io_uring` operations (with a thread-pool fallback).
//!
//! - A Bw-tree per bucket over a log-structured page store.
//! - MVCC with snapshot isolation ([`Transaction`] over any buckets, [`Txn`] over one,
//!   [`Snapshot`]), compare-and-swap and update closures on a [`Bucket`], blind
//!   [`WriteBatch`]es.
//! - A redo WAL with group commit and a checksummed manifest; [`Db::check`] verifies every
//!   byte of them offline.
//! - Every byte goes through one async I/O interface, on `io_uring` or a thread pool
//!   ([`IoBackend`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ringkv::Result<()> {
//! use futures::TryStreamExt;
//! # let dir = tempfile::tempdir().expect("a temporary directory");
//! # let data = dir.path();
//! let db = ringkv::Db::open(data, ringkv::Options::default()).await?;
//! let users = db.bucket("users").await?;
//! let mut tx = users.begin()?;
//! tx.put(b"alice", b"42")?;
//! tx.commit().await?;
//! assert_eq!(users.get(b"alice").await?.as_deref(), Some(&b"42"[..]));
//! let pairs: Vec<_> = users.range(b"a".as_slice()..).await?.try_collect().await?;
//! assert_eq!(pairs.len(), 1);
//! db.close().await?;
//! # Ok(()) }
//! ```
//!
//! `docs/design.md` in the repository is the map (layers, protocols, invariants, what is
//! assumed of the disk); each module's doc comment states its contract, and
//! `docs/format.md` draws every on-disk structure.

/// Declares an internal module: private, or public but `#[doc(hidden)]` with `$feature`
/// on (the test-only features reach internals through it: the simulated disk, the
/// decoders the fuzz corpus replay encodes for). Not an API either way. Without the
/// feature, the items only the tests use are dead code, and allowed to be.
macro_rules! internal {
    ($feature:literal, $name:ident) => {
        #[cfg(feature = $feature)]
        #[doc(hidden)]
        #[allow(rustdoc::private_intra_doc_links)] // hidden: its docs link its internals
        pub mod $name;
        #[cfg(not(feature = $feature))]
        #[allow(dead_code, unused_imports)]
        mod $name;
    };
}

mod batch;
/// Fixtures of the tree's micro-benchmarks (feature `bench`); not an API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
mod bucket;
mod check;
mod codec;
mod coop;
mod db;
mod engine;
mod error;
mod files;
/// Entry points for the fuzz targets and their corpus replay (feature `fuzzing`); not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
internal!("sim", io);
mod iter;
pub mod limits;
internal!("fuzzing", manifest);
mod mvcc;
mod obs;
mod options;
internal!("fuzzing", store);
internal!("fuzzing", tree);
mod txn;
internal!("fuzzing", wal);

/// jemalloc as the process's allocator (feature `jemalloc`, on by default): chosen by
/// measurement (README, Memory). A program with its own `#[global_allocator]` turns the
/// feature off.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, which it reads once at start-up (the `_RJEM_MALLOC_CONF` environment
/// variable still overrides them): pages freed by the heap go back to the kernel after
/// about one second (`dirty_decay_ms`, 10 s by default) and straight away once they are
/// purged (`muzzy_decay_ms`). A checkpoint frees the deltas and images of every page it
/// wrote at once; with the default decay those freed pages stayed resident for seconds, so
/// the process's RSS ran well above the heap the cache bounds (README, Memory: 1.34x less
/// RSS after a 1M-key load, at the same speed).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[allow(non_upper_case_globals)]
// SAFETY: jemalloc declares `const char *malloc_conf` (prefixed `_rjem_` by
// tikv-jemalloc-sys) as a weak symbol for the program to define; this is a thin pointer
// to a NUL-terminated string that lives for the whole process and is never written.
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

pub use batch::WriteBatch;
pub use bucket::{Bucket, CompareAndSwapError};
pub use check::CheckReport;
pub use db::{BackupStats, BucketStats, CheckpointStats, Db, Stats};
pub use error::{Error, Result};
pub use iter::Iter;
pub use obs::{LatencyHistogram, HISTOGRAM_BUCKETS};
pub use options::{BackgroundTask, Durability, IoBackend, Options, Spawner};
pub use txn::{Snapshot, Transaction, Txn};
