//! The thread-pool backend: blocking positional calls on `ringkv_fallback::global()`.
//!
//! Every function here queues one job on a pool and awaits its oneshot result. The job owns
//! everything it touches (an `Arc<File>`, the `Bytes` of a write, the `Vec` of a read), so a
//! caller dropping the future cannot free memory a pool thread is using.
//!
//! Two pools: the backend's, `ringkv_fallback::global()` (32 threads unless
//! `Options::io_threads` or `RINGKV_FALLBACK_THREADS` say otherwise), and [`aux`], one thread
//! started on first use, for the few blocking calls of the `io_uring` backend that
//! `io_uring` has no opcode for (`read_dir`, `exists`, `create_dir_all`, the directory lock,
//! truncate, and `fallocate` where the file system cannot). Those calls are rare (open,
//! recovery, checkpoints) and short, so one thread serves them; the `io_uring` backend
//! never starts the global pool. The directory operations are free functions over the pool
//! they run on (`*_on`), shared by both backends.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::backend::{Backend, BackendFile, Written};
use super::{Held, LockMode, OpenMode};

/// Threads of [`aux`].
const AUX_THREADS: usize = 1;

/// The helper pool of the `io_uring` backend (module doc), started on first use.
pub(super) fn aux() -> &'static ringkv_fallback::Pool {
    static AUX: std::sync::OnceLock<ringkv_fallback::Pool> = std::sync::OnceLock::new();
    AUX.get_or_init(|| ringkv_fallback::Pool::new(AUX_THREADS, "ringkv-io-aux"))
}

/// Runs `f` on the shared fallback pool.
async fn run<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    run_on(ringkv_fallback::global(), f).await
}

/// Runs `f` on `pool`.
pub(super) async fn run_on<T, F>(pool: &ringkv_fallback::Pool, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match pool.run(f).await {
        Ok(result) => result.map_err(|e| super::name_descriptor_limit(e, "this call needs a descriptor, and none is left in")),
        Err(canceled) => Err(io::Error::new(io::ErrorKind::BrokenPipe, canceled)),
    }
}

/// `mkdir -p` on `pool`.
pub(super) async fn create_dir_all_on(pool: &ringkv_fallback::Pool, path: &Path) -> io::Result<()> {
    let path = path.to_owned();
    run_on(pool, move || std::fs::create_dir_all(path)).await
}

/// The names in directory `path`, sorted (a name that is not UTF-8 is skipped with a
/// warning), on `pool`.
pub(super) async fn read_dir_on(pool: &ringkv_fallback::Pool, path: &Path) -> io::Result<Vec<String>> {
    let path: PathBuf = path.to_owned();
    run_on(pool, move || {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&path)? {
            match entry?.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(name) => tracing::warn!(
                    dir = %path.display(),
                    name = ?name,
                    "skipping a directory entry whose name is not UTF-8"
                ),
            }
        }
        names.sort_unstable();
        Ok(names)
    })
    .await
}

/// Whether `path` exists, on `pool`.
pub(super) async fn exists_on(pool: &ringkv_fallback::Pool, path: &Path) -> io::Result<bool> {
    let path = path.to_owned();
    run_on(pool, move || path.try_exists()).await
}

/// `flock` on the directory's own descriptor (see `ringkv_fallback::try_lock_dir`), on
/// `pool`.
pub(super) async fn lock_dir_on(
    pool: &ringkv_fallback::Pool,
    path: &Path,
    mode: LockMode,
) -> io::Result<Result<Held, Vec<u32>>> {
    let path = path.to_owned();
    run_on(pool, move || match ringkv_fallback::try_lock_dir(&path, mode) {
        Ok(lock) => Ok(Ok(Held::Os(lock))),
        Err(ringkv_fallback::LockError::Held { holders }) => Ok(Err(holders)),
        Err(ringkv_fallback::LockError::Io(e)) => {
            Err(super::name_descriptor_limit(e, "the directory lock takes a descriptor (flock) and there is none left in"))
        }
    })
    .await
}

/// The `std` options for `mode` (`uring.rs` maps the modes the same way).
fn open_options(mode: OpenMode) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    match mode {
        // The pool reads buffered: a blocking `pread` that misses the page cache waits on a
        // pool thread either way, and the pool has no aligned buffers.
        OpenMode::Read | OpenMode::ReadDirect => {}
        OpenMode::ReadWrite => {
            options.write(true);
        }
        OpenMode::Create => {
            options.write(true).create(true);
        }
        OpenMode::CreateNew => {
            options.write(true).create_new(true);
        }
    }
    options
}

/// The thread-pool backend (the pool itself is `ringkv_fallback::global()`).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Pool;

/// A file of the thread-pool backend: a `std` file shared with the jobs in flight on it.
pub(super) struct PoolFile(pub(super) Arc<File>);

impl Backend for Pool {
    type File = PoolFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<PoolFile> {
        let path = path.to_owned();
        run(move || open_options(mode).open(&path).map(|f| PoolFile(Arc::new(f)))).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_owned(), to.to_owned());
        run(move || std::fs::rename(from, to)).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = path.to_owned();
        run(move || std::fs::remove_file(path)).await
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        create_dir_all_on(ringkv_fallback::global(), path).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = path.to_owned();
        run(move || ringkv_fallback::sync_dir(&path)).await
    }

    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        read_dir_on(ringkv_fallback::global(), path).await
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        exists_on(ringkv_fallback::global(), path).await
    }

    async fn lock_dir(&self, path: &Path, mode: LockMode) -> io::Result<Result<Held, Vec<u32>>> {
        lock_dir_on(ringkv_fallback::global(), path, mode).await
    }
}

impl PoolFile {
    /// Writes every byte of `bufs` at `offset` in one pool job; with `dsync`, each
    /// `pwritev2` carries `RWF_DSYNC`, so the write and its sync are one hop.
    async fn write_job(&self, offset: u64, bufs: Vec<Bytes>, dsync: bool) -> io::Result<Written> {
        if bufs.iter().all(bytes::Bytes::is_empty) {
            return Ok(Written::Unfixed);
        }
        let file = Arc::clone(&self.0);
        run(move || {
            let slices: Vec<&[u8]> = bufs.iter().map(std::convert::AsRef::as_ref).collect();
            if dsync {
                ringkv_fallback::write_all_vectored_dsync_at(&file, &slices, offset)
            } else {
                ringkv_fallback::write_all_vectored_at(&file, &slices, offset)
            }
        })
        .await
        .map(|()| Written::Unfixed)
    }
}

impl BackendFile for PoolFile {
    async fn read(&self, offset: u64, len: usize, exact: bool) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let file = Arc::clone(&self.0);
        run(move || {
            let mut buf = vec![0u8; len];
            if exact {
                ringkv_fallback::read_exact_at(&file, &mut buf, offset)?;
            } else {
                let n = ringkv_fallback::read_to_fill_at(&file, &mut buf, offset)?;
                buf.truncate(n);
            }
            Ok(buf)
        })
        .await
    }

    async fn writev(&self, offset: u64, bufs: Vec<Bytes>) -> io::Result<Written> {
        self.write_job(offset, bufs, false).await
    }

    async fn writev_dsync(&self, offset: u64, bufs: Vec<Bytes>) -> io::Result<Written> {
        self.write_job(offset, bufs, true).await
    }

    async fn sync(&self, data_only: bool) -> io::Result<()> {
        let file = Arc::clone(&self.0);
        run(move || if data_only { file.sync_data() } else { file.sync_all() }).await
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let file = Arc::clone(&self.0);
        run(move || ringkv_fallback::allocate(&file, offset, len)).await
    }

    async fn len(&self) -> io::Result<u64> {
        let file = Arc::clone(&self.0);
        run(move || Ok(file.metadata()?.len())).await
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        let file = Arc::clone(&self.0);
        run(move || file.set_len(len)).await
    }
}
