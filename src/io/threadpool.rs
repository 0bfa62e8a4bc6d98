//! The thread-pool backend: blocking positional calls on `ringkv_fallback::global()`.
//!
//! Every function here queues one job on the shared pool and awaits its oneshot result. The
//! job owns everything it touches (an `Arc<File>`, the `Bytes` of a write, the `Vec` of a
//! read), so a caller dropping the future cannot free memory a pool thread is using. The
//! directory helpers are also used by the io_uring backend for the operations io_uring
//! lacks.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::OpenMode;

/// Runs `f` on the shared fallback pool.
pub(super) async fn run<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match ringkv_fallback::global().run(f).await {
        Ok(result) => result,
        Err(canceled) => Err(io::Error::new(io::ErrorKind::BrokenPipe, canceled)),
    }
}

/// The `std` options for `mode` (`uring.rs` maps the modes the same way).
fn open_options(mode: OpenMode) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    match mode {
        OpenMode::Read => {}
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

/// Locks the directory `path` (see `ringkv_fallback::try_lock_dir`): `Ok(Err(holders))`
/// when a conflicting holder has it.
pub(super) async fn lock_dir(
    path: PathBuf,
    mode: super::LockMode,
) -> io::Result<Result<ringkv_fallback::DirLock, Vec<u32>>> {
    run(move || match ringkv_fallback::try_lock_dir(&path, mode) {
        Ok(lock) => Ok(Ok(lock)),
        Err(ringkv_fallback::LockError::Held { holders }) => Ok(Err(holders)),
        Err(ringkv_fallback::LockError::Io(e)) => Err(e),
    })
    .await
}

pub(super) async fn open(path: PathBuf, mode: OpenMode) -> io::Result<Arc<File>> {
    run(move || open_options(mode).open(&path).map(Arc::new)).await
}

pub(super) async fn read(file: Arc<File>, offset: u64, len: usize, exact: bool) -> io::Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
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

pub(super) async fn writev(file: Arc<File>, offset: u64, bufs: Vec<Bytes>) -> io::Result<()> {
    if bufs.iter().all(|b| b.is_empty()) {
        return Ok(());
    }
    run(move || {
        let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_ref()).collect();
        ringkv_fallback::write_all_vectored_at(&file, &slices, offset)
    })
    .await
}

pub(super) async fn sync(file: Arc<File>, data_only: bool) -> io::Result<()> {
    run(move || if data_only { file.sync_data() } else { file.sync_all() }).await
}

pub(super) async fn allocate(file: Arc<File>, offset: u64, len: u64) -> io::Result<()> {
    run(move || ringkv_fallback::allocate(&file, offset, len)).await
}

pub(super) async fn len(file: Arc<File>) -> io::Result<u64> {
    run(move || Ok(file.metadata()?.len())).await
}

pub(super) async fn set_len(file: Arc<File>, len: u64) -> io::Result<()> {
    run(move || file.set_len(len)).await
}

pub(super) async fn rename(from: PathBuf, to: PathBuf) -> io::Result<()> {
    run(move || std::fs::rename(from, to)).await
}

pub(super) async fn remove_file(path: PathBuf) -> io::Result<()> {
    run(move || std::fs::remove_file(path)).await
}

pub(super) async fn create_dir_all(path: PathBuf) -> io::Result<()> {
    run(move || std::fs::create_dir_all(path)).await
}

pub(super) async fn sync_dir(path: PathBuf) -> io::Result<()> {
    run(move || ringkv_fallback::sync_dir(&path)).await
}

pub(super) async fn read_dir(path: PathBuf) -> io::Result<Vec<String>> {
    run(move || {
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

pub(super) async fn exists(path: PathBuf) -> io::Result<bool> {
    run(move || path.try_exists()).await
}
