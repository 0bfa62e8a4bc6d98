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

pub use batch::WriteBatch;
pub use bucket::{Bucket, CompareAndSwapError};
pub use check::CheckReport;
pub use db::{BackupStats, BucketStats, CheckpointStats, Db, Stats};
pub use error::{Error, Result};
pub use iter::Iter;
pub use obs::{LatencyHistogram, HISTOGRAM_BUCKETS};
pub use options::{BackgroundTask, Durability, IoBackend, Options, Spawner};
pub use txn::{Snapshot, Transaction, Txn};
