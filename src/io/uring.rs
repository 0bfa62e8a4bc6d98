//! The `io_uring` backend: one ring thread per process, shared by every `IoDriver`, and one
//! direct ring (`direct.rs`) that callers submit to from their own thread.
//!
//! ```text
//!  caller (any thread, any executor)            ring thread (tokio-uring runtime)
//!  ---------------------------------            ---------------------------------
//!  rename, remove:
//!  Ring::call(job) --- Msg::Job --(mpsc)--->    serve(): spawns job(&ctx) as a task
//!        .await  <------ result --(oneshot)--   task: submits SQEs, awaits CQEs
//!
//!  open, statx, reads, writes, syncs (directories too), fallocate (direct.rs,
//!  registered file slots):
//!  first poll: push SQE, io_uring_enter,        reaper thread ("ringkv-reaper"): waits
//!  drain the CQ; Ready if done (buffered        for the CQEs of the operations not done
//!  writes, cached reads), else hand over --->   at submission, wakes their futures
//! ```
//!
//! The calls `io_uring` has no opcode for (`flock`, `read_dir`, `exists`, `mkdir -p`,
//! truncate) run on a one-thread helper pool started on first use (`threadpool::aux`): this
//! backend never starts the 32-thread pool of the thread-pool backend.
//!
//! A `UringFile` is a slot of the direct ring's registered file table, shared by every
//! database of the process (`direct.rs`, invariant 6): it holds no process descriptor,
//! so a process under the common `ulimit -n 1024` opens a thousand databases (each holds
//! one descriptor, its directory lock, and a slot for its WAL segment and its manifest).
//! Truncation (`set_len`) and the length extension where `fallocate` is unsupported go
//! by path, on the helper thread (`truncate(2)`); the size is a `statx` by path. Where the
//! direct ring cannot be set up, the backend is unavailable (and `IoBackend::Auto` takes
//! the thread pool).
//!
//! Invariants (of the ring-thread path; the direct ring's are in `direct.rs`):
//!
//! 1. tokio-uring objects never leave the ring thread.
//! 2. A job's task owns its buffers; the caller only owns the oneshot receiver. Dropping
//!    the caller's future never cancels or frees anything the kernel uses.
//! 3. If the ring thread or one of its tasks dies, the channels report it: callers get
//!    `BrokenPipe`, never a hang.

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use super::backend::{Backend, BackendFile, Written};
use super::buffers::BUF_ALIGN;
use super::direct::{self, Direct, DirectFile};
use super::threadpool;
use super::{Held, LockMode, OpenMode};

/// Submission queue entries of the shared ring.
const RING_ENTRIES: u32 = 64;
/// The direct-I/O alignment assumed where `statx` does not report one (kernels before
/// 6.1): a page, which every block device accepts.
const DEFAULT_DIO_ALIGN: usize = 4096;
/// How long `IoDriver::new` waits for the ring thread to start and answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;
/// Runs on the ring thread: returns the task to spawn.
type Job = Box<dyn FnOnce(&Rc<RingCtx>) -> LocalTask + Send>;

/// The handle of the process-wide ring thread, and the direct ring every file uses.
pub(super) struct Ring {
    tx: mpsc::UnboundedSender<Job>,
    direct: &'static Direct,
}

/// What the failed probe reported, kept to rebuild an `io::Error` for every caller.
struct ProbeFailure {
    kind: io::ErrorKind,
    message: String,
}

/// The shared ring, started (and probed) on the first call; the outcome is cached for the
/// life of the process.
pub(super) fn global() -> io::Result<&'static Ring> {
    static RING: OnceLock<Result<Ring, ProbeFailure>> = OnceLock::new();
    let outcome =
        RING.get_or_init(|| Ring::start().map_err(|e| ProbeFailure { kind: e.kind(), message: e.to_string() }));
    match outcome {
        Ok(ring) => Ok(ring),
        Err(f) => Err(io::Error::new(f.kind, f.message.clone())),
    }
}

fn ring_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the io_uring thread stopped before answering")
}

impl Ring {
    /// Starts the ring thread and checks it end to end: the direct ring is set up, the ring
    /// is set up, a no-op round-trips, and an `unlinkat` of a missing path answers
    /// `NotFound` (kernels before 5.11 lack the path opcodes ringkv uses and answer
    /// `EINVAL`).
    fn start() -> io::Result<Ring> {
        let direct = direct::global()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "the direct io_uring could not be set up"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("ringkv-uring".into()).spawn(move || ring_thread(rx, ready_tx))?;
        match ready_rx.recv_timeout(PROBE_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the io_uring thread did not start"))
            }
        }
        let ring = Ring { tx, direct };
        let (probe_tx, probe_rx) = std::sync::mpsc::channel();
        let missing =
            std::env::temp_dir().join(format!("ringkv-uring-probe-{}-missing/x", std::process::id()));
        ring.send_job(move |_ctx| async move {
            let result = async {
                tokio_uring::no_op().await?;
                match tokio_uring::fs::remove_file(&missing).await {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io::Error::new(
                        e.kind(),
                        format!("io_uring lacks file opcodes (unlinkat probe: {e})"),
                    )),
                    Ok(()) => Ok(()),
                }
            }
            .await;
            let _ = probe_tx.send(result);
        })?;
        match probe_rx.recv_timeout(PROBE_TIMEOUT) {
            Ok(result) => result.map(|()| ring),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the io_uring probe got no answer")),
        }
    }

    fn send_job<F, Fut>(&self, job: F) -> io::Result<()>
    where
        F: FnOnce(&Rc<RingCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |ctx| Box::pin(job(ctx)));
        self.tx.send(job).map_err(|_| ring_gone())
    }

    /// Runs `job` on the ring thread and awaits its result. `job` itself runs synchronously
    /// when the ring thread receives it; the future it returns is spawned as a ring-thread
    /// task.
    async fn call<T, F, Fut>(&self, job: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Rc<RingCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<T>> + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send_job(move |ctx| {
            let task = job(ctx);
            async move {
                // The caller may be gone; the result is then dropped here.
                let _ = tx.send(task.await);
            }
        })?;
        rx.await.map_err(|_| ring_gone())?
    }
}

/// Open and directory syncs run on the direct ring (into a registered file slot); rename
/// and remove on the ring thread; the operations `io_uring` lacks (`read_dir`,
/// `exists`, `mkdir -p`, `flock`) on the one-thread helper pool `threadpool::aux` (never on
/// the 32-thread fallback pool, which this backend does not start).
impl Backend for &'static Ring {
    type File = UringFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<UringFile> {
        let flags = match mode {
            OpenMode::Read | OpenMode::ReadDirect => libc::O_RDONLY,
            OpenMode::ReadWrite => libc::O_RDWR,
            OpenMode::Create => libc::O_RDWR | libc::O_CREAT,
            OpenMode::CreateNew => libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        };
        let (file, dio_align) = if mode == OpenMode::ReadDirect {
            self.open_direct(path).await?
        } else {
            (self.direct.open(path, flags).await?, 0)
        };
        Ok(UringFile {
            direct: self.direct,
            file: RwLock::new(Arc::new(file)),
            dio_align: AtomicUsize::new(dio_align),
            path: path.to_owned(),
            writable: !matches!(mode, OpenMode::Read | OpenMode::ReadDirect),
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (from.to_owned(), to.to_owned());
        self.call(move |_| async move { tokio_uring::fs::rename(&from, &to).await }).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = path.to_owned();
        self.call(move |_| async move { tokio_uring::fs::remove_file(&path).await }).await
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        threadpool::create_dir_all_on(threadpool::aux(), path).await
    }

    /// Opens the directory into a file slot (no descriptor), fsyncs it, and empties the slot.
    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let dir = Arc::new(self.direct.open(path, libc::O_RDONLY | libc::O_DIRECTORY).await?);
        self.direct.sync(dir, false).await
    }

    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        threadpool::read_dir_on(threadpool::aux(), path).await
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        threadpool::exists_on(threadpool::aux(), path).await
    }

    async fn lock_dir(&self, path: &Path, mode: LockMode) -> io::Result<Result<Held, Vec<u32>>> {
        threadpool::lock_dir_on(threadpool::aux(), path, mode).await
    }
}

impl Ring {
    /// Opens `path` read-only with `O_DIRECT` and returns it with its direct-I/O alignment;
    /// where the file system refuses `O_DIRECT` (`EINVAL` at open) or reports no direct-I/O
    /// alignment for the file (`statx`: `STATX_DIOALIGN` with zeros, tmpfs), opens it
    /// buffered (alignment 0) after one warning per process.
    async fn open_direct(&self, path: &Path) -> io::Result<(DirectFile, usize)> {
        let refused = match self.direct.open(path, libc::O_RDONLY | libc::O_DIRECT).await {
            Ok(file) => match dio_alignment(&*self.direct.stat(path, libc::STATX_DIOALIGN).await?) {
                Ok(align) => return Ok((file, align)),
                Err(why) => why,
            },
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => format!("O_DIRECT refused at open: {e}"),
            Err(e) => return Err(e),
        };
        warn_buffered(path, &refused);
        Ok((self.direct.open(path, libc::O_RDONLY).await?, 0))
    }
}

/// The direct-I/O alignment of a file from its `statx` (asked for `STATX_DIOALIGN`): the
/// larger of the offset and memory alignments, or 4096 where the kernel does not report
/// them; `Err` (why) where the file cannot be read with `O_DIRECT` by this backend.
fn dio_alignment(stat: &libc::statx) -> Result<usize, String> {
    if stat.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Ok(DEFAULT_DIO_ALIGN);
    }
    let (offset, mem) = (stat.stx_dio_offset_align, stat.stx_dio_mem_align);
    if offset == 0 || mem == 0 {
        return Err("the file system reports no direct-I/O alignment (statx)".to_owned());
    }
    let align = usize::try_from(offset.max(mem)).unwrap_or(usize::MAX);
    if !align.is_power_of_two() || align > BUF_ALIGN || !offset.is_power_of_two() {
        return Err(format!("direct-I/O alignment {offset} (offsets) / {mem} (memory) is not supported"));
    }
    Ok(align)
}

/// One warning per process that a file is read through the page cache.
fn warn_buffered(path: &Path, why: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(file = %path.display(), reason = why,
            "O_DIRECT reads are unavailable; reading data files through the page cache");
    });
    tracing::debug!(file = %path.display(), reason = why, "buffered reads");
}

/// A file open on the direct ring: a registered file slot (or, where the table is full, a
/// descriptor), emptied when the last handle and the last operation in flight are gone.
pub(super) struct UringFile {
    direct: &'static Direct,
    /// Replaced once at most: by a buffered open of the same path where the first `O_DIRECT`
    /// read is refused.
    file: RwLock<Arc<DirectFile>>,
    /// The direct-I/O alignment where the file is open with `O_DIRECT` (`OpenMode::ReadDirect`
    /// and accepted), else 0.
    dio_align: AtomicUsize,
    /// For the calls by path: `statx`, `truncate`.
    path: PathBuf,
    /// Opened for writing: `truncate` by path refuses a file opened read-only, as
    /// `ftruncate` of its descriptor would.
    writable: bool,
}

impl UringFile {
    /// Writes every byte of `bufs` at `offset` on the direct ring; with `dsync`, every SQE
    /// carries `RWF_DSYNC` (the write and its data sync as one submission).
    async fn write(&self, offset: u64, bufs: Vec<Bytes>, dsync: bool) -> io::Result<Written> {
        let total: usize = bufs.iter().map(bytes::Bytes::len).sum();
        if total == 0 {
            return Ok(Written::Unfixed);
        }
        check_range(offset, total)?;
        let fixed = if dsync {
            self.direct.writev_dsync(self.file(), offset, bufs).await?
        } else {
            self.direct.writev(self.file(), offset, bufs).await?
        };
        Ok(if fixed { Written::Fixed } else { Written::Unfixed })
    }
}

impl BackendFile for UringFile {
    async fn read(&self, offset: u64, len: usize, exact: bool) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        check_range(offset, len)?;
        let align = self.dio_align.load(Ordering::Acquire);
        if align != 0 {
            match self.read_direct(offset, len, exact, align).await {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.fall_back_to_buffered(&e).await?;
                }
                other => return other,
            }
        }
        self.direct.read(self.file(), offset, len, exact).await
    }

    async fn writev(&self, offset: u64, bufs: Vec<Bytes>) -> io::Result<Written> {
        self.write(offset, bufs, false).await
    }

    async fn writev_dsync(&self, offset: u64, bufs: Vec<Bytes>) -> io::Result<Written> {
        self.write(offset, bufs, true).await
    }

    async fn sync(&self, data_only: bool) -> io::Result<()> {
        self.direct.sync(self.file(), data_only).await
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset + len overflows"))?;
        match self.direct.allocate(self.file(), offset, len).await {
            // The file system cannot preallocate: only the length is extended.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                if self.len().await? < end {
                    self.set_len(end).await?;
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn len(&self) -> io::Result<u64> {
        self.direct.size_of(&self.path).await
    }

    fn reads_direct(&self) -> bool {
        self.dio_align.load(Ordering::Relaxed) != 0
    }

    /// `io_uring` has no truncate on this kernel interface: `truncate(2)` by path on the
    /// helper thread (`threadpool::aux`; recovery's cut of a torn WAL tail).
    async fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let path = CString::new(self.path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length past the largest file offset"))?;
        threadpool::run_on(threadpool::aux(), move || {
            // SAFETY: `path` is a NUL-terminated string alive for the call; `truncate` only
            // reads it.
            if unsafe { libc::truncate(path.as_ptr(), len) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
        .await
    }
}

impl UringFile {
    /// The file's slot (or descriptor), held by the operation about to use it.
    fn file(&self) -> Arc<DirectFile> {
        Arc::clone(&self.file.read())
    }

    /// An `O_DIRECT` read of `len` bytes at `offset`, widened to `align` both ways and
    /// sliced.
    async fn read_direct(&self, offset: u64, len: usize, exact: bool, align: usize) -> io::Result<Vec<u8>> {
        let align64 = align as u64;
        let start = offset - offset % align64;
        let end = offset + len as u64; // no overflow: `check_range`
        let end = end.div_ceil(align64).checked_mul(align64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset + len overflows once aligned")
        })?;
        let wide = usize::try_from(end - start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read larger than memory"))?;
        let (buf, n) = self.direct.read_direct(self.file(), start, wide, align).await?;
        // `offset - start < align`, a `usize`.
        #[allow(clippy::cast_possible_truncation)]
        let skip = (offset - start) as usize;
        let got = n.saturating_sub(skip).min(len);
        if exact && got < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {len} bytes at offset {offset} hit the end of the file after {got} bytes"),
            ));
        }
        Ok(buf.as_slice()[skip..skip + got].to_vec())
    }

    /// The first `O_DIRECT` read was refused (`EINVAL`): reopens the file buffered, for this
    /// read and every later one, after one warning per process.
    async fn fall_back_to_buffered(&self, refused: &io::Error) -> io::Result<()> {
        if self.dio_align.load(Ordering::Acquire) == 0 {
            return Ok(()); // another read fell back first
        }
        warn_buffered(&self.path, &format!("O_DIRECT read refused: {refused}"));
        let buffered = self.direct.open(&self.path, libc::O_RDONLY).await?;
        *self.file.write() = Arc::new(buffered);
        self.dio_align.store(0, Ordering::Release);
        Ok(())
    }
}

/// State of the ring thread. `!Send`: it lives and dies there. (Empty today: the ring
/// thread keeps no table; jobs get it for symmetry with their spawning context.)
struct RingCtx;

fn ring_thread(rx: mpsc::UnboundedReceiver<Job>, ready: std::sync::mpsc::Sender<io::Result<()>>) {
    let mut builder = tokio_uring::builder();
    builder.entries(RING_ENTRIES);
    let runtime = match tokio_uring::Runtime::new(&builder) {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let ctx = Rc::new(RingCtx);
        let _ = ready.send(Ok(()));
        serve(ctx, rx).await;
    });
}

/// The ring thread's loop. It ends when every `Ring` handle is gone (never, for the
/// process-wide ring).
async fn serve(ctx: Rc<RingCtx>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        tokio_uring::spawn(job(&ctx));
    }
}

fn check_range(offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(_) => Ok(()),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "offset + len overflows")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private ring (not the process-wide one), leaked like the global.
    fn private_ring() -> Option<&'static Ring> {
        match Ring::start() {
            Ok(ring) => Some(Box::leak(Box::new(ring))),
            Err(e) => {
                eprintln!("io_uring unavailable, skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn a_panicking_task_or_a_dead_ring_answers_broken_pipe() {
        let Some(ring) = private_ring() else { return };
        futures::executor::block_on(async {
            // A task that panics: its caller gets BrokenPipe, the ring lives on.
            let err = ring
                .call(|_| async {
                    let fail = true;
                    assert!(!fail, "task panic expected by the test");
                    Ok(())
                })
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            ring.call(|_| tokio_uring::no_op()).await.unwrap();

            // A job that panics on receipt kills the ring thread: the call in flight and
            // every later one fail at once instead of hanging.
            let err = ring
                .call(|_| -> std::future::Ready<io::Result<()>> {
                    panic!("ring thread panic expected by the test")
                })
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
            let err = ring.call(|_| tokio_uring::no_op()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        });
    }

    #[test]
    fn files_take_slots_and_keep_their_bytes_after_the_last_handle_drops() {
        let Some(ring) = private_ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        futures::executor::block_on(async {
            let file = ring.open(&path, OpenMode::CreateNew).await.unwrap();
            assert_eq!(file.file().is_registered(), ring.direct.file_slots() > 0);
            file.writev(0, vec![Bytes::from_static(b"slot")]).await.unwrap();
            file.sync(true).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 4);
            file.set_len(2).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 2);
            file.allocate(0, 10).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 10);
            drop(file);
            let again = ring.open(&path, OpenMode::Read).await.unwrap();
            assert_eq!(again.read(0, 100, false).await.unwrap(), b"sl\0\0\0\0\0\0\0\0");
            let err = ring.open(&path, OpenMode::CreateNew).await.err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        });
    }

    /// An `O_DIRECT` read the kernel refuses (`EINVAL`: here an alignment of 1 forced on a
    /// file whose file system wants whole sectors) reopens the file buffered and returns the
    /// right bytes, then and afterwards.
    #[test]
    fn a_refused_direct_read_falls_back_to_buffered_reads() {
        let Some(ring) = private_ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        futures::executor::block_on(async {
            let file = ring.open(&path, OpenMode::ReadDirect).await.unwrap();
            let stat = ring.direct.stat(&path, libc::STATX_DIOALIGN).await.unwrap();
            let sector_aligned = stat.stx_mask & libc::STATX_DIOALIGN != 0 && stat.stx_dio_offset_align > 1;
            if !file.reads_direct() || !sector_aligned {
                eprintln!("no O_DIRECT with sector alignment on this file system, skipping");
                return;
            }
            assert_eq!(file.read(4000, 200, true).await.unwrap(), &data[4000..4200]);
            file.dio_align.store(1, Ordering::Release);
            assert_eq!(file.read(1, 3, true).await.unwrap(), &data[1..4]);
            assert!(!file.reads_direct(), "the refused O_DIRECT read did not fall back");
            assert_eq!(file.read(9_999, 10, false).await.unwrap(), &data[9_999..]);
        });
    }
}
