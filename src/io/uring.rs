//! The `io_uring` backend: one ring thread per process, shared by every `IoDriver`, and one
//! direct ring (`direct.rs`) that callers submit to from their own thread.
//!
//! ```text
//!  caller (any thread, any executor)            ring thread (tokio-uring runtime)
//!  ---------------------------------            ---------------------------------
//!  open, close, rename, remove, statx, fallocate, sync_dir, writes of 64 KiB or more:
//!  Ring::call(job) --- Msg::Job --(mpsc)--->    serve(): job(&ctx) looks up the file
//!                                                        and spawns a task
//!        .await  <------ result --(oneshot)--   task: submits SQEs, awaits CQEs,
//!                                                     owns every buffer until completion
//!  drop(last IoFile) --- Msg::Close(id) --->    serve(): removes the file from the table
//!
//!  sync, writes under 64 KiB, reads at low depth (direct.rs, duplicate descriptor):
//!  first poll: push SQE, io_uring_enter,        reaper thread ("ringkv-reaper"): waits
//!  drain the CQ; Ready if done (buffered        for the CQEs of the operations not done
//!  writes, cached reads), else hand over --->   at submission, wakes their futures
//! ```
//!
//! The calls `io_uring` has no opcode for (`flock`, `read_dir`, `exists`, `mkdir -p`,
//! truncate) run on a one-thread helper pool started on first use (`threadpool::aux`): this
//! backend never starts the 32-thread pool of the thread-pool backend.
//!
//! Each `UringFile` owns a duplicate of its descriptor, made on the ring thread at open,
//! for the direct ring. Where the direct ring cannot be set up (one warning), or the
//! duplicate cannot be made, every operation takes the ring-thread path.
//!
//! Invariants (of the ring-thread path; the direct ring's are in `direct.rs`):
//!
//! 1. tokio-uring objects (`File`, fixed buffers) never leave the ring thread. An
//!    `IoFile` holds a file id; the table `RingCtx::files` maps it to the `File`.
//! 2. A job looks its file up *when the ring thread receives it*, before spawning its task.
//!    Messages are received in send order, so a job sent before the `Close` of its file
//!    always finds it, and an operation in flight keeps its `Rc<File>` (and so the
//!    descriptor) alive after a `Close`.
//! 3. A job's task owns its buffers; the caller only owns the oneshot receiver. Dropping
//!    the caller's future never cancels or frees anything the kernel uses.
//! 4. Every value that owns a ring resource and crosses the channel (`UringFile`) sends its
//!    `Close` on drop, so a result dropped in the channel leaks nothing.
//! 5. If the ring thread or one of its tasks dies, the channels report it: callers get
//!    `BrokenPipe`, never a hang.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use tokio::sync::mpsc;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::fs::File;

use super::backend::{Backend, BackendFile, Written};
use super::buffers::FixedBuffers;
use super::direct::{self, Direct};
use super::threadpool;
use super::{Held, LockMode, OpenMode};

/// Submission queue entries of the shared ring.
const RING_ENTRIES: u32 = 1024;
/// Most iovecs in one `writev` (`UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;
/// Writes smaller than this (WAL batches) go through the direct ring; larger ones
/// (checkpoint files) through the ring thread and its registered buffers.
const DIRECT_WRITE_MAX: usize = 64 * 1024;
/// Reads go through the direct ring while fewer operations than this wait on its reaper.
const DIRECT_READ_DEPTH: usize = 4;
/// How long `IoDriver::new` waits for the ring thread to start and answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;
/// Runs on the ring thread: looks up what it needs in the context, returns the task to spawn.
type Job = Box<dyn FnOnce(&Rc<RingCtx>) -> LocalTask + Send>;

enum Msg {
    Job(Job),
    Close(u64),
}

/// The handle of the process-wide ring thread.
pub(super) struct Ring {
    tx: mpsc::UnboundedSender<Msg>,
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
    let outcome = RING.get_or_init(|| {
        let ring = Ring::start().map_err(|e| ProbeFailure { kind: e.kind(), message: e.to_string() })?;
        // Sets up the direct ring now (or warns once), not on the first open.
        direct::global();
        Ok(ring)
    });
    match outcome {
        Ok(ring) => Ok(ring),
        Err(f) => Err(io::Error::new(f.kind, f.message.clone())),
    }
}

fn ring_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the io_uring thread stopped before answering")
}

impl Ring {
    /// Starts the ring thread and checks it end to end: the ring is set up, a no-op
    /// round-trips, and an `unlinkat` of a missing path answers `NotFound` (kernels before
    /// 5.11 lack the path opcodes ringkv uses and answer `EINVAL`).
    fn start() -> io::Result<Ring> {
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
        let ring = Ring { tx };
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
        self.tx.send(Msg::Job(job)).map_err(|_| ring_gone())
    }

    /// Runs `job` on the ring thread and awaits its result. `job` itself runs synchronously
    /// when the ring thread receives it (look files up there); the future it returns is
    /// spawned as a ring-thread task.
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
                // The caller may be gone; the result (for `open`, a `UringFile`, which
                // closes itself on drop) is then dropped here.
                let _ = tx.send(task.await);
            }
        })?;
        rx.await.map_err(|_| ring_gone())?
    }

    /// A job on the file `id`: on receipt, the file is looked up and `op` is called with it
    /// (so `op`'s synchronous part runs in message order); its future becomes the task.
    async fn with_file<T, F, Fut>(&self, id: u64, op: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Rc<File>, &Rc<RingCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<T>> + 'static,
    {
        self.call(move |ctx| {
            let started = ctx.file(id).map(|file| op(file, ctx));
            async move { started?.await }
        })
        .await
    }
}

/// Open, close, rename, remove and directory syncs run on the ring thread; the operations
/// `io_uring` lacks (`read_dir`, `exists`, `mkdir -p`, `flock`) on the one-thread helper
/// pool `threadpool::aux` (never on the 32-thread fallback pool, which this backend does
/// not start).
impl Backend for &'static Ring {
    type File = UringFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<UringFile> {
        let ring: &'static Ring = self;
        let direct = direct::global();
        let path = path.to_owned();
        ring.call(move |ctx| {
            let ctx = Rc::clone(ctx);
            async move {
                let file = open_options(mode).open(&path).await?;
                // The direct ring's descriptor: a duplicate made now, on the ring thread.
                let direct = direct.and_then(|direct| match dup_fd(&file) {
                    Ok(dup) => Some(DirectFile { ring: direct, file: Arc::new(dup) }),
                    Err(e) => {
                        tracing::debug!(error = %e, "no duplicate descriptor; this file uses the ring thread only");
                        None
                    }
                });
                Ok(UringFile { id: ctx.insert(file), ring, direct })
            }
        })
        .await
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

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = path.to_owned();
        self.call(move |_| async move {
            let dir = tokio_uring::fs::OpenOptions::new().read(true).open(&path).await?;
            let synced = dir.sync_all().await;
            let closed = dir.close().await;
            synced.and(closed)
        })
        .await
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

/// A file open on the ring thread. Dropping it closes the file there (and the duplicate
/// descriptor of the direct ring closes when its last operation in flight is done).
pub(super) struct UringFile {
    id: u64,
    ring: &'static Ring,
    /// Where the direct ring (`direct.rs`) is available: a duplicate of the descriptor, used
    /// for reads, syncs and small writes from the caller's thread.
    direct: Option<DirectFile>,
}

/// A descriptor for the direct ring. Every operation holds a clone of `file` until its last
/// CQE, so the descriptor outlives the operations in flight on it (contract 7).
struct DirectFile {
    ring: &'static Direct,
    file: Arc<std::fs::File>,
}

impl Drop for UringFile {
    fn drop(&mut self) {
        // Fails only if the ring thread is gone, and the table with it.
        let _ = self.ring.tx.send(Msg::Close(self.id));
    }
}

impl BackendFile for UringFile {
    async fn read(&self, offset: u64, len: usize, exact: bool) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        check_range(offset, len)?;
        // Reads go direct while few operations wait on the reaper: at depth 1 that saves a
        // thread hop (cold 4 KiB reads, 1 in flight: 12.6-14.7k/s against 10.9-11.6k/s);
        // at depth the ring thread completes them faster (64 in flight: 81-85k/s through
        // it, 68-75k/s all direct, where every miss interrupts the submitting executor
        // thread to finish it). `peers --workloads ltm --scale 0.1`, 2026-11-25.
        if let Some(d) = self.direct.as_ref().filter(|d| d.ring.waiting() < DIRECT_READ_DEPTH) {
            return d.ring.read(Arc::clone(&d.file), offset, len, exact).await;
        }
        self.ring
            .with_file(self.id, move |file, _| async move {
                let buf = read_to_fill(&file, offset, len).await?;
                if exact && buf.len() < len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "read of {len} bytes at offset {offset} hit the end of the file after {} bytes",
                            buf.len()
                        ),
                    ));
                }
                Ok(buf)
            })
            .await
    }

    async fn writev(&self, offset: u64, bufs: Vec<Bytes>) -> io::Result<Written> {
        let total: usize = bufs.iter().map(bytes::Bytes::len).sum();
        if total == 0 {
            return Ok(Written::Unfixed);
        }
        check_range(offset, total)?;
        if let Some(d) = self.direct.as_ref().filter(|_| total < DIRECT_WRITE_MAX) {
            return d.ring.writev(Arc::clone(&d.file), offset, bufs).await.map(|()| Written::Unfixed);
        }
        self.ring
            .with_file(self.id, move |file, ctx| {
                // Copy now, on receipt: a free buffer is taken before later jobs run.
                let fixed = ctx.fixed.gather(&bufs, total);
                async move {
                    match fixed {
                        Some(fixed) => {
                            drop(bufs);
                            let (result, _fixed) = file.write_fixed_all_at(fixed, offset).await;
                            result.map(|()| Written::Fixed)
                        }
                        None => write_all_vectored(&file, bufs, offset).await.map(|()| Written::Unfixed),
                    }
                }
            })
            .await
    }

    async fn sync(&self, data_only: bool) -> io::Result<()> {
        if let Some(d) = &self.direct {
            return d.ring.sync(Arc::clone(&d.file), data_only).await;
        }
        self.ring
            .with_file(self.id, move |file, _| async move {
                if data_only {
                    file.sync_data().await
                } else {
                    file.sync_all().await
                }
            })
            .await
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset + len overflows"))?;
        let result = self
            .ring
            .with_file(self.id, move |file, _| async move { file.fallocate(offset, len, 0).await })
            .await;
        match result {
            // The file system cannot preallocate: the fallback crate extends the length (on
            // the helper thread).
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let file = self.dup().await?;
                threadpool::run_on(threadpool::aux(), move || ringkv_fallback::allocate(&file, offset, len)).await
            }
            other => other,
        }
    }

    async fn len(&self) -> io::Result<u64> {
        self.ring.with_file(self.id, move |file, _| async move { Ok(file.statx().await?.stx_size) }).await
    }

    /// `io_uring` has no truncate in tokio-uring: a duplicate descriptor does it on the
    /// helper thread (`threadpool::aux`; recovery's cut of a torn WAL tail).
    async fn set_len(&self, len: u64) -> io::Result<()> {
        let file = self.dup().await?;
        threadpool::run_on(threadpool::aux(), move || file.set_len(len)).await
    }
}

impl UringFile {
    /// A `std` file sharing this file's open file description, for the blocking calls
    /// `io_uring` lacks. The duplicate is made on the ring thread (a `fcntl`, no disk I/O).
    async fn dup(&self) -> io::Result<std::fs::File> {
        self.ring
            .with_file(self.id, move |file, _| {
                let dup = dup_fd(&file);
                async move { dup }
            })
            .await
    }
}

/// A `std` file sharing `file`'s open file description (a `fcntl`, no disk I/O).
fn dup_fd(file: &File) -> io::Result<std::fs::File> {
    // SAFETY: `file` is an open tokio-uring `File` (borrowed for this call; a tokio-uring file
    // is closed only by `File::close(self)` or by dropping it), so its descriptor stays open
    // for the whole lifetime of this `BorrowedFd`, which ends with this statement
    // (`try_clone_to_owned` returns a new descriptor).
    let dup = unsafe { BorrowedFd::borrow_raw(file.as_raw_fd()) }.try_clone_to_owned();
    Ok(std::fs::File::from(dup?))
}

/// State of the ring thread. `!Send`: it lives and dies there.
struct RingCtx {
    files: RefCell<HashMap<u64, Rc<File>>>,
    next_id: Cell<u64>,
    fixed: FixedBuffers,
}

impl RingCtx {
    fn file(&self, id: u64) -> io::Result<Rc<File>> {
        match self.files.borrow().get(&id) {
            Some(file) => Ok(Rc::clone(file)),
            // Invariant 2 makes this unreachable while an `IoFile` exists.
            None => Err(io::Error::other(format!("io_uring file id {id} is not open"))),
        }
    }

    fn insert(&self, file: File) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let previous = self.files.borrow_mut().insert(id, Rc::new(file));
        assert!(previous.is_none(), "file id {id} reused");
        id
    }

    fn close(&self, id: u64) {
        let Some(file) = self.files.borrow_mut().remove(&id) else {
            debug_assert!(false, "close of unknown file id {id}");
            return;
        };
        match Rc::try_unwrap(file) {
            Ok(file) => {
                tokio_uring::spawn(async move {
                    if let Err(e) = file.close().await {
                        tracing::warn!(error = %e, "closing a file failed");
                    }
                });
            }
            // Operations are in flight: the last one to finish drops the file, which
            // closes the descriptor.
            Err(shared) => drop(shared),
        }
    }
}

fn ring_thread(rx: mpsc::UnboundedReceiver<Msg>, ready: std::sync::mpsc::Sender<io::Result<()>>) {
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
        let ctx = Rc::new(RingCtx {
            files: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            fixed: FixedBuffers::register(),
        });
        let _ = ready.send(Ok(()));
        serve(ctx, rx).await;
    });
}

/// The ring thread's loop. It ends when every `Ring` handle is gone (never, for the
/// process-wide ring).
async fn serve(ctx: Rc<RingCtx>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Job(job) => {
                tokio_uring::spawn(job(&ctx));
            }
            Msg::Close(id) => ctx.close(id),
        }
    }
}

fn open_options(mode: OpenMode) -> tokio_uring::fs::OpenOptions {
    let mut options = tokio_uring::fs::OpenOptions::new();
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

fn check_range(offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(_) => Ok(()),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "offset + len overflows")),
    }
}

/// Reads at `offset` until `len` bytes or the end of the file.
async fn read_to_fill(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        let (result, window) = file.read_at(buf.slice(filled..len), offset + filled as u64).await;
        buf = window.into_inner();
        match result {
            Ok(0) => break,
            Ok(n) => debug_assert_eq!(buf.len(), filled + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// Writes every byte of `bufs` at `offset`: `writev` of at most [`MAX_IOVECS`] buffers at a
/// time, continuing after short writes. (tokio-uring's `writev_at_all` panics on a short
/// write and on empty buffers, so it is not used.)
async fn write_all_vectored(file: &File, bufs: Vec<Bytes>, mut offset: u64) -> io::Result<()> {
    let mut rest: Vec<Bytes> = bufs.into_iter().filter(|b| !b.is_empty()).collect();
    let mut first = 0;
    while first < rest.len() {
        let batch: Vec<Bytes> = rest[first..].iter().take(MAX_IOVECS).cloned().collect();
        let asked: usize = batch.iter().map(bytes::Bytes::len).sum();
        let (result, _batch) = file.writev_at(batch, offset).await;
        let mut n = match result {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("wrote 0 bytes at offset {offset}"),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        assert!(n <= asked, "the kernel wrote {n} bytes of {asked}");
        offset += n as u64;
        while n > 0 {
            let head = &mut rest[first];
            if n >= head.len() {
                n -= head.len();
                first += 1;
            } else {
                *head = Bytes::slice(head, n..);
                n = 0;
            }
        }
    }
    Ok(())
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
    fn files_close_when_the_last_handle_drops() {
        let Some(ring) = private_ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let file = ring.open(&dir.path().join("f"), OpenMode::Create).await.unwrap();
            let id = file.id;
            let open_files = || ring.call(|ctx| std::future::ready(Ok(ctx.files.borrow().len())));
            assert_eq!(open_files().await.unwrap(), 1);
            let dup = file.dup().await.unwrap();
            drop(file);
            // The Close was sent before this job, so the table is already empty.
            assert_eq!(open_files().await.unwrap(), 0);
            let err = ring.with_file(id, |_, _| std::future::ready(Ok(()))).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Other);
            // The duplicate descriptor is independent of the ring's.
            assert_eq!(dup.metadata().unwrap().len(), 0);
        });
    }
}
