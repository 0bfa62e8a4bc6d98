//! What an I/O backend implements: [`Backend`] (files and directories) and [`BackendFile`]
//! (one open file). Each backend lives in its own file (`uring.rs`, `threadpool.rs`,
//! `sim.rs`) and implements these two traits; `mod.rs` holds the one enum that chooses
//! among them and dispatches every call with a `match` (no `dyn`, no boxed future), so the
//! public [`IoDriver`](super::IoDriver) and [`IoFile`](super::IoFile) are the only place
//! the backends meet.
//!
//! The module doc of `io` states the contract (never blocks the caller, lazy submission,
//! cancellation safety, ordering, complete transfers); every implementation keeps it. The
//! methods here return plain [`io::Error`]s: `mod.rs` adds the path and the operation.

use std::future::Future;
use std::io;
use std::path::Path;

use bytes::Bytes;

use super::{Held, LockMode, OpenMode};

/// How a write went out (counted in `IoStats::fixed_writes`).
#[derive(Debug)]
pub(super) enum Written {
    /// Through a registered buffer (`IORING_OP_WRITE_FIXED`).
    Fixed,
    /// From the caller's buffers.
    Unfixed,
}

/// A backend's file and directory operations.
pub(super) trait Backend {
    /// An open file of this backend.
    type File: BackendFile;

    /// Opens `path` in `mode`.
    fn open(&self, path: &Path, mode: OpenMode) -> impl Future<Output = io::Result<Self::File>> + Send;

    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> impl Future<Output = io::Result<()>> + Send;

    /// Removes the file `path`.
    fn remove_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;

    /// Creates `path` and its missing parents (the caller syncs the parents).
    fn create_dir_all(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;

    /// Fsyncs the directory `path`.
    fn sync_dir(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;

    /// The entry names of directory `path`, sorted.
    fn read_dir(&self, path: &Path) -> impl Future<Output = io::Result<Vec<String>>> + Send;

    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> impl Future<Output = io::Result<bool>> + Send;

    /// Takes the lock of directory `path` without waiting: `Ok(Err(holders))` when a
    /// conflicting holder has it (holders' process ids where the platform tells).
    fn lock_dir(
        &self,
        path: &Path,
        mode: LockMode,
    ) -> impl Future<Output = io::Result<Result<Held, Vec<u32>>>> + Send;
}

/// The operations on one open file of a backend.
pub(super) trait BackendFile {
    /// Reads `len` bytes at `offset`: exactly `len` when `exact` (else `UnexpectedEof`),
    /// fewer only at the end of the file otherwise.
    fn read(&self, offset: u64, len: usize, exact: bool) -> impl Future<Output = io::Result<Vec<u8>>> + Send;

    /// Writes every byte of `bufs`, back to back, at `offset`.
    fn writev(&self, offset: u64, bufs: Vec<Bytes>) -> impl Future<Output = io::Result<Written>> + Send;

    /// Writes every byte of `bufs` at `offset` and makes them durable as one operation
    /// (`RWF_DSYNC`): when it completes, these bytes and the metadata needed to read them
    /// are on stable storage, as after the write and an `fdatasync`. Earlier writes to
    /// other ranges are not covered. A failure may leave any part of the write done and
    /// none of it durable.
    fn writev_dsync(&self, offset: u64, bufs: Vec<Bytes>) -> impl Future<Output = io::Result<Written>> + Send;

    /// `fdatasync` when `data_only`, else `fsync`.
    fn sync(&self, data_only: bool) -> impl Future<Output = io::Result<()>> + Send;

    /// Reserves `offset..offset + len`, extending the file if it is shorter.
    fn allocate(&self, offset: u64, len: u64) -> impl Future<Output = io::Result<()>> + Send;

    /// The file's length.
    fn len(&self) -> impl Future<Output = io::Result<u64>> + Send;

    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> impl Future<Output = io::Result<()>> + Send;

    /// Whether reads of this file go around the page cache (`O_DIRECT`) now.
    fn reads_direct(&self) -> bool {
        false
    }
}
