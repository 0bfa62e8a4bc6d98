//! # ringkv
//!
//! An embedded, ordered, transactional key-value storage engine for async Rust, whose disk
//! operations are awaited `io_uring` operations (with a thread-pool fallback).
//!
//! - A Bw-tree per bucket over a log-structured page store ([`tree`], [`store`]).
//! - MVCC with snapshot isolation ([`mvcc`], [`Transaction`] over any buckets, [`Txn`] over
//!   one, [`Snapshot`]), compare-and-swap and update closures on a [`Bucket`], blind
//!   [`WriteBatch`]es.
//! - A redo WAL with group commit ([`wal`]) and a checksummed manifest ([`manifest`]).
//! - Every byte goes through one async I/O interface ([`io`]).
//!
//! ```no_run
//! # async fn demo() -> ringkv::Result<()> {
//! use futures::TryStreamExt;
//! let db = ringkv::Db::open("data", ringkv::Options::default()).await?;
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

mod batch;
/// Fixtures of the tree's micro-benchmarks (feature `bench`); not an API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
pub mod bucket;
pub mod check;
pub mod codec;
mod coop;
pub mod db;
mod engine;
pub mod error;
pub mod files;
/// Entry points for the fuzz targets and their corpus replay (feature `fuzzing`); not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod iter;
pub mod limits;
pub mod manifest;
pub mod mvcc;
pub mod options;
pub mod store;
pub mod tree;
pub mod txn;
pub mod wal;

/// jemalloc as the process's allocator (feature `jemalloc`, on by default): chosen by
/// measurement (README, Memory). A program with its own `#[global_allocator]` turns the
/// feature off.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub use batch::WriteBatch;
pub use bucket::{Bucket, CompareAndSwapError};
pub use check::CheckReport;
pub use db::{CheckpointStats, Db, Stats};
pub use error::{Error, Result};
pub use iter::Iter;
pub use options::{Durability, IoBackend, Options};
pub use txn::{Snapshot, Transaction, Txn};
