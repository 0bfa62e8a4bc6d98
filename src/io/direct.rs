//! Submission from the caller's thread: a second process-wide `io_uring`, driven with the
//! `io-uring` crate, for every operation on an open file (reads, writes, syncs,
//! `fallocate`) and for opening files and reading their size.
//!
//! ```text
//!  caller (any thread, any executor)                reaper thread ("ringkv-reaper")
//!  ---------------------------------                -------------------------------
//!  first poll: push SQE (SQ mutex),                 sleeps on a condvar while no operation
//!              io_uring_enter(to_submit)            is handed over; else blocks in
//!              -> cached reads (buffered writes     io_uring_enter(0, 1, GETEVENTS),
//!                 on XFS, btrfs) complete here      drains the CQ (CQ mutex) and wakes
//!              drain the CQ (CQ mutex)              the wakers of finished operations
//!              a buffered write not done: yield
//!              to the executor once (Pending)
//!  next poll:  keep draining (yield the CPU
//!              between tries) <= WRITE_SPIN
//!              done? Ready, no thread woken
//!              else: hand over to the reaper ---->
//! ```
//!
//! Invariants:
//!
//! 1. Every operation in flight is an `Arc<Slot>`; the SQE's `user_data` is a pointer made
//!    by `Arc::into_raw`, i.e. one strong count owned by the kernel. Whoever takes the CQE
//!    (a caller draining the CQ or the reaper) turns it back into the `Arc` with
//!    `Arc::from_raw`, exactly once per SQE.
//! 2. The slot owns everything the kernel touches: the read buffer, the `Bytes` of a write
//!    and its iovec array, the lease of a registered buffer, the path of an open or a
//!    `statx` and its result buffer, and an `Arc<DirectFile>` (so the file's slot or
//!    descriptor stays open until the last CQE). The caller's future holds another count of the slot and nothing else,
//!    so dropping it never frees memory the kernel uses.
//! 3. Continuations (short reads and writes, writes of more than [`MAX_IOVECS`] buffers,
//!    retries after `EINTR`/`ECANCELED`) are submitted by whoever takes the CQE, not by the
//!    caller's future: a write whose future was dropped still lands in full.
//! 4. The SQ is touched only under `sq`, the CQ only under `cq`, through a view that
//!    borrows the lock's guard (`Direct::sq_view`, `Direct::cq_view`), so no view outlives
//!    its lock: a view publishes its cached tail (SQ) or head (CQ) when dropped, and one
//!    dropped after the unlock would move it back. `cq` is never held while
//!    `sq` is taken (continuations are submitted after the CQ mutex is released). The
//!    `io_uring_enter` that submits runs outside `sq` (callers enter the kernel in
//!    parallel; the kernel serialises submission itself), except when a full SQ must be
//!    emptied before a push.
//! 5. `handed` counts the operations whose caller saw no completion after submitting; the
//!    reaper waits in the kernel only while it is non-zero, so operations that complete
//!    during their submission wake no thread at all.
//! 6. **Files live in a registered file table.** The ring registers a sparse table of
//!    `limits::IO_URING_FILE_SLOTS` slots (fewer where the soft `RLIMIT_NOFILE` is lower:
//!    the kernel refuses a larger table) shared by every database of the process. An open
//!    is an `IORING_OP_OPENAT` into a slot the kernel picks (`IORING_FILE_INDEX_ALLOC`), so
//!    the file takes no process descriptor; SQEs name it with `IOSQE_FIXED_FILE`. Where the
//!    table is full (`ENFILE`) or missing, the open takes a descriptor instead, and where
//!    that fails too the error (`EMFILE`) names both limits. A [`DirectFile`] is the only
//!    owner of its slot; every operation holds an `Arc` of it until its last CQE, and its
//!    drop empties the slot (`IORING_REGISTER_FILES_UPDATE` with -1), which frees it for
//!    the next open. The size of a file is read by path (`statx`), since a slot has no
//!    descriptor to `fstat`.
//! 7. An `O_DIRECT` read (`Direct::read_direct`) asks for whole aligned blocks into an
//!    [`AlignedBuf`] it owns: offset, length and every continuation stay multiples of the
//!    file's alignment (a short read of whole blocks is continued, a partial block is the
//!    end of the file); the caller slices out what it asked for.
//! 8. **A buffered write is reaped by its caller for a while.** `io_uring` completes a buffered
//!    write inline only where the file system takes `IOCB_NOWAIT` buffered writes
//!    (`FOP_BUFFER_WASYNC`: XFS, btrfs); ext4 does not, so every buffered write there goes
//!    to an io-wq worker, extending the file or not (measured: 12,000 of 12,000 writes,
//!    appends, overwrites of cached pages, of `fallocate`d and of zero-filled ranges alike,
//!    by the `io_uring_queue_async_work` tracepoint). Handing it over then costs two thread
//!    wakes (the io-wq worker wakes the reaper, the reaper wakes the caller's executor)
//!    where the thread pool pays one. So a buffered (not `RWF_DSYNC`) write, in the poll
//!    after its submission (invariant 9), keeps draining the CQ, with `yield_now` between
//!    tries, for up to [`WRITE_SPIN`] before it hands the write over; syncs and durable
//!    writes, which wait for the device, are handed over at once, and reads follow
//!    invariant 10.
//! 9. **A buffered write yields to the executor before it spins.** Its first poll submits
//!    and drains the CQ; if the write is not done it schedules its own wake behind the
//!    executor's other ready tasks (tokio's deferred wake, `tokio::task::yield_now`, on a
//!    tokio runtime; `wake_by_ref` elsewhere) and returns `Pending`, and the spin of
//!    invariant 8 runs in the next poll. Without it, a task whose writes the spin catches
//!    never returns `Pending`, so another task woken on the same tokio worker (into its
//!    LIFO slot, which no other worker steals) waits until the first one's write misses
//!    the spin. Measured (peer benchmark, 2 cores shared with another engineer's builds,
//!    load 4-14, 2026-11-30; 8 runs without, 12 with): `io_uring` p99 W4 x2 median 1.30 ms
//!    (0.96-1.43) without, 0.98 ms (0.14-1.44) with; W3 x2 0.22 -> 0.15 ms; ops/s within
//!    the noise. The rest of the W4 x2 tail is the spin's `yield_now` handing the CPU to
//!    another runnable thread for a whole slice (`perf trace`: up to 4 ms per
//!    `sched_yield`). The operation is not handed over while it waits for that poll; if
//!    its future is dropped instead, the drop hands it over, so the reaper takes its CQE
//!    and submits its continuations (invariant 3).
//! 10. **A read with nothing handed over polls for itself.** A read not done at submission,
//!     when no operation is handed over to the reaper (`handed` is 0: one or a few reads in
//!     flight), does not hand itself over: it yields to the executor with its wake
//!     scheduled (as in invariant 9) and, at each later poll, drains the CQ, until it is
//!     done, another operation is handed over, or [`READ_POLL`] has passed; then it hands
//!     itself over. Its completion runs as task work on the thread that submitted it, which
//!     is busy polling, so the CQE is there without waking a thread: the handed-over path
//!     wakes three (the submitter for the task work, the reaper, the executor's worker;
//!     2.7 context switches per read measured at one in flight). The executor is never
//!     blocked: other tasks run between the polls. A read dropped while polling is handed
//!     over by the drop, as in invariant 9. Measured (`benches/ring_modes`, 3 rounds each,
//!     quiet, 2026-12-02): one read in flight 18.9k -> 25.5k reads/s, 16 in flight 77k ->
//!     86k, 64 and 256 within the noise.

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::buffers::{AlignedBuf, FixedBuffers, Lease, BUF_ALIGN};
use crate::limits::IO_URING_FILE_SLOTS;

/// Submission queue entries of the direct ring (the CQ gets twice as many).
const RING_ENTRIES: u32 = 256;
/// Most iovecs in one `writev` (`UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;
/// Most bytes asked of one read SQE (its length is a `u32`).
const MAX_READ: usize = 1 << 30;
/// `IORING_ENTER_GETEVENTS` (`include/uapi/linux/io_uring.h`); the crate keeps its copy private.
const ENTER_GETEVENTS: u32 = 1;
/// How long the first poll of a buffered write keeps reaping, yielding the CPU between
/// tries, before it hands the write over to the reaper (invariant 8). Measured on this
/// project's ext4 VM (W3/W4 of the peer benchmark, 2026-11-30): 20 us and 50 us both
/// caught most WAL appends; 20 us costs less CPU when the worker is slow.
const WRITE_SPIN: Duration = Duration::from_micros(20);
/// How long a read that found nothing else handed over to the reaper checks the CQ from
/// its own executor before it hands itself over (invariant 10).
const READ_POLL: Duration = Duration::from_micros(150);

/// The process-wide direct ring, set up on first use; `None` (after one warning) where the
/// kernel refuses it, and the `io_uring` backend is then unavailable.
pub(super) fn global() -> Option<&'static Direct> {
    static DIRECT: OnceLock<Option<&'static Direct>> = OnceLock::new();
    *DIRECT.get_or_init(|| match Direct::start() {
        Ok(direct) => Some(direct),
        Err(e) => {
            tracing::warn!(error = %e, "io_uring submission from the caller's thread is unavailable");
            None
        }
    })
}

/// A ring whose SQEs are submitted by the threads that poll the operations.
pub(super) struct Direct {
    ring: IoUring,
    /// Serialises pushes to the SQ; counts the SQEs ever pushed (a ticket per SQE).
    sq: Mutex<u64>,
    /// Serialises draining the CQ.
    cq: Mutex<()>,
    /// Operations handed over to the reaper and not finished yet (invariant 5).
    handed: AtomicUsize,
    /// The reaper sleeps on `idle`/`wake` while `handed` is 0.
    idle: Mutex<()>,
    wake: Condvar,
    /// Slots of the registered file table (invariant 6); 0 where the kernel refused one.
    file_slots: u32,
    /// The registered write buffers; `None` where the kernel refused them.
    fixed: Option<FixedBuffers>,
}

impl Direct {
    fn start() -> io::Result<&'static Direct> {
        let ring = IoUring::builder().setup_cqsize(RING_ENTRIES * 2).build(RING_ENTRIES)?;
        let file_slots = u32::try_from(IO_URING_FILE_SLOTS.min(super::nofile_limit().unwrap_or(0))).unwrap_or(u32::MAX);
        let file_slots = match ring.submitter().register_files_sparse(file_slots) {
            Ok(()) => file_slots,
            Err(e) => {
                tracing::warn!(error = %e, slots = file_slots,
                    "could not register an io_uring file table; every io_uring file takes a descriptor");
                0
            }
        };
        let fixed = FixedBuffers::register(&ring.submitter());
        let direct: &'static Direct = Box::leak(Box::new(Direct {
            ring,
            sq: Mutex::new(0),
            cq: Mutex::new(()),
            handed: AtomicUsize::new(0),
            idle: Mutex::new(()),
            wake: Condvar::new(),
            file_slots,
            fixed,
        }));
        std::thread::Builder::new().name("ringkv-reaper".into()).spawn(move || direct.reap_forever())?;
        Ok(direct)
    }

    /// Slots of the registered file table (0 where there is none).
    #[cfg(test)]
    pub(super) fn file_slots(&self) -> u32 {
        self.file_slots
    }

    /// Opens `path` with the `open(2)` `flags` into a free slot of the registered file
    /// table (no process descriptor); where the table is full or missing, into a
    /// descriptor. Both full is `EMFILE`, with a message naming the two limits.
    pub(super) fn open(&'static self, path: &Path, flags: i32) -> impl Future<Output = io::Result<DirectFile>> {
        let path = CString::new(path.as_os_str().as_bytes());
        let file_slots = self.file_slots;
        async move {
            let path = path.map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
            let op = Op::Open { path, flags, slot: file_slots > 0, ring: self };
            match OpFuture::new(self, None, op).await {
                Ok(Out::File(file)) => Ok(file),
                Ok(_) => unreachable!("an open completes with a file"),
                Err(e) => Err(super::name_descriptor_limit(
                    e,
                    &format!("the io_uring file table ({file_slots} slots) is full, and so is"),
                )),
            }
        }
    }

    /// The size of the file at `path` (`statx` by path: a registered file has no
    /// descriptor to `fstat`).
    pub(super) fn size_of(&'static self, path: &Path) -> impl Future<Output = io::Result<u64>> + Send + 'static {
        let stat = self.stat(path, libc::STATX_SIZE);
        async move { Ok(stat.await?.stx_size) }
    }

    /// `statx` of `path` asking for the fields of `mask` (the kernel sets `stx_mask` to the
    /// ones it filled).
    pub(super) fn stat(
        &'static self,
        path: &Path,
        mask: u32,
    ) -> impl Future<Output = io::Result<Box<libc::statx>>> + Send + 'static {
        let path = CString::new(path.as_os_str().as_bytes());
        async move {
            let path = path.map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
            let op = Op::Statx { path, buf: Box::new(MaybeUninit::zeroed()), mask };
            match OpFuture::new(self, None, op).await? {
                Out::Stat(stat) => Ok(stat),
                _ => unreachable!("a statx completes with its buffer"),
            }
        }
    }

    /// Reads `len` bytes at `offset` of a file opened with `O_DIRECT` into an aligned buffer
    /// (`offset` and `len` multiples of `align`, a power of two no larger than the buffer's
    /// alignment): returns the buffer and how many bytes were read (fewer only at the end of
    /// the file).
    pub(super) fn read_direct(
        &'static self,
        file: Arc<DirectFile>,
        offset: u64,
        len: usize,
        align: usize,
    ) -> impl Future<Output = io::Result<(AlignedBuf, usize)>> + Send + 'static {
        assert!(align.is_power_of_two() && align <= BUF_ALIGN, "direct-I/O alignment {align}");
        assert!(offset.is_multiple_of(align as u64) && len.is_multiple_of(align), "unaligned direct read {offset}+{len}");
        let op = Op::ReadDirect { buf: AlignedBuf::zeroed(len), offset, filled: 0, align };
        let fut = OpFuture::new(self, Some(file), op);
        async move {
            match fut.await? {
                Out::Aligned(buf, n) => Ok((buf, n)),
                _ => unreachable!("a direct read completes with its buffer"),
            }
        }
    }

    /// Reads up to `len` bytes at `offset` (fewer only at the end of the file); with `exact`,
    /// a file ending first is `UnexpectedEof`.
    pub(super) fn read(
        &'static self,
        file: Arc<DirectFile>,
        offset: u64,
        len: usize,
        exact: bool,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send + 'static {
        let op = Op::Read { buf: Vec::with_capacity(len), len, offset, exact };
        let fut = OpFuture::new(self, Some(file), op);
        async move {
            match fut.await? {
                Out::Bytes(bytes) => Ok(bytes),
                _ => unreachable!("a read completes with bytes"),
            }
        }
    }

    /// Writes every byte of `bufs` at `offset`, continuing short writes: from a registered
    /// buffer (returns `true`) when they fit in one and one is free, else with `writev`.
    pub(super) fn writev(
        &'static self,
        file: Arc<DirectFile>,
        offset: u64,
        bufs: Vec<Bytes>,
    ) -> impl Future<Output = io::Result<bool>> + Send + 'static {
        self.write_op(file, offset, bufs, false)
    }

    /// [`Direct::writev`] with `RWF_DSYNC` in every step's SQE: one submission that
    /// completes once the bytes written are durable (the range written, as `fdatasync`
    /// would make it; a continued short write syncs each part in its own step).
    pub(super) fn writev_dsync(
        &'static self,
        file: Arc<DirectFile>,
        offset: u64,
        bufs: Vec<Bytes>,
    ) -> impl Future<Output = io::Result<bool>> + Send + 'static {
        self.write_op(file, offset, bufs, true)
    }

    fn write_op(
        &'static self,
        file: Arc<DirectFile>,
        offset: u64,
        bufs: Vec<Bytes>,
        dsync: bool,
    ) -> impl Future<Output = io::Result<bool>> + Send + 'static {
        let bufs: Vec<Bytes> = bufs.into_iter().filter(|b| !b.is_empty()).collect();
        let total: usize = bufs.iter().map(Bytes::len).sum();
        let lease = self.fixed.as_ref().and_then(|f| f.gather(&bufs, total));
        let fixed = lease.is_some();
        let op = match lease {
            Some(lease) => Op::WriteFixed { lease, len: total, done: 0, offset, dsync },
            None => Op::Write { bufs, first: 0, iovecs: IoVecs(Vec::new()), offset, dsync },
        };
        let fut = OpFuture::new(self, Some(file), op);
        async move { fut.await.map(|_| fixed) }
    }

    /// `fdatasync` (`data_only`) or `fsync` of `file`.
    pub(super) fn sync(
        &'static self,
        file: Arc<DirectFile>,
        data_only: bool,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let fut = OpFuture::new(self, Some(file), Op::Sync { data_only });
        async move { fut.await.map(drop) }
    }

    /// `fallocate` mode 0 of `offset..offset + len`.
    pub(super) fn allocate(
        &'static self,
        file: Arc<DirectFile>,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let fut = OpFuture::new(self, Some(file), Op::Fallocate { offset, len });
        async move { fut.await.map(drop) }
    }

    /// Empties slot `index` of the file table (the last handle of its file dropped, so no
    /// operation is in flight on it). The kernel drops its reference to the file, and the
    /// slot is free for the next open.
    fn release_slot(&self, index: u32) {
        loop {
            match self.ring.submitter().register_files_update(index, &[-1]) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, slot = index, "could not empty an io_uring file slot; it stays taken");
                    return;
                }
            }
        }
    }

    /// The SQ, viewed while `self.sq` is held (`pushes` is its guard). The view borrows the
    /// guard, so the compiler rejects a view that outlives the lock: a view caches the tail
    /// and publishes it when dropped, so one dropped after the unlock would move the tail
    /// back over SQEs another thread pushed meanwhile (the kernel would then submit one SQE
    /// twice and never see another: two CQEs for one slot, none for the other).
    fn sq_view<'a>(&'a self, pushes: &'a MutexGuard<'_, u64>) -> io_uring::SubmissionQueue<'a> {
        debug_assert!(std::ptr::eq(MutexGuard::mutex(pushes), std::ptr::from_ref(&self.sq)), "the guard of another ring's SQ");
        // SAFETY: the SQ is only viewed through this function, under `self.sq` (whose guard
        // the view borrows), so no other `SubmissionQueue` of this ring exists while this
        // one lives.
        unsafe { self.ring.submission_shared() }
    }

    /// The CQ, viewed while `self.cq` is held (`held` is its guard); see [`Direct::sq_view`]
    /// (a CQ view publishes its cached head when dropped).
    fn cq_view<'a>(&'a self, held: &'a MutexGuard<'_, ()>) -> io_uring::CompletionQueue<'a> {
        debug_assert!(std::ptr::eq(MutexGuard::mutex(held), std::ptr::from_ref(&self.cq)), "the guard of another ring's CQ");
        // SAFETY: the CQ is only viewed through this function, under `self.cq` (whose guard
        // the view borrows), so no other `CompletionQueue` of this ring exists while this
        // one lives.
        unsafe { self.ring.completion_shared() }
    }

    /// Queues `entry` for `slot` and submits it. Never drops the entry: a full SQ is
    /// submitted and the push retried.
    ///
    /// Only the push holds `self.sq`; the `io_uring_enter` that submits runs outside it, so
    /// callers enter the kernel in parallel and one read that starts readahead (or reclaims
    /// memory) inline does not hold up the others. Whichever enter takes the SQE, the caller
    /// returns only once the kernel has consumed it (its ticket is at or below the head).
    fn submit(&self, slot: Arc<Slot>, entry: squeue::Entry) {
        let entry = entry.user_data(Arc::into_raw(slot) as u64);
        let ticket = loop {
            let mut pushes = self.sq.lock();
            let mut sq = self.sq_view(&pushes);
            // SAFETY: the entry's pointers (buffer, iovecs, descriptor) belong to the slot
            // whose strong count `user_data` holds (invariants 1 and 2), so they stay valid
            // until its CQE is taken.
            if unsafe { sq.push(&entry) }.is_ok() {
                // Dropping `sq` publishes the new tail to the kernel.
                drop(sq);
                *pushes += 1;
                break *pushes;
            }
            drop(sq);
            // Full: submit what is queued, then push again.
            let entered = self.enter_submit(&pushes);
            drop(pushes);
            if let Err(e) = entered {
                self.enter_failed(&e);
            }
        };
        loop {
            match self.ring.submitter().submit() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => self.enter_failed(&e),
            }
            let pushes = self.sq.lock();
            let queued = self.sq_view(&pushes).len() as u64;
            if *pushes - queued >= ticket {
                return;
            }
        }
    }

    /// After an `io_uring_enter` that left SQEs queued: `EBUSY`/`EAGAIN` mean the kernel
    /// wants completions reaped before it takes more (CQ overflow, out of memory); anything
    /// else is logged and retried after a pause. Called without `self.sq` held.
    fn enter_failed(&self, e: &io::Error) {
        if !matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) {
            tracing::error!(error = %e, "io_uring_enter failed; retrying");
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reap();
        std::thread::yield_now();
    }

    /// Submits everything queued in the SQ (the caller holds `self.sq`: `pushes`). `EINTR`
    /// is retried; `EBUSY`/`EAGAIN` (and anything else) are returned with the SQEs still
    /// queued.
    fn enter_submit(&self, pushes: &MutexGuard<'_, u64>) -> io::Result<()> {
        loop {
            match self.ring.submitter().submit() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if self.sq_view(pushes).is_empty() {
                return Ok(());
            }
        }
    }

    /// Drains the CQ: finishes the operations that are done, wakes their callers, and
    /// submits the continuations of the others. Returns once the CQ was seen empty.
    fn reap(&self) {
        loop {
            let mut wakers = Vec::new();
            let mut again = Vec::new();
            {
                let held = self.cq.lock();
                let cq = self.cq_view(&held);
                for cqe in cq {
                    // SAFETY: every SQE of this ring carries `Arc::into_raw` of its slot as
                    // `user_data` (in `submit`), and each CQE is taken once, here, under the
                    // CQ mutex: this reclaims exactly the count that SQE's submission leaked.
                    let slot = unsafe { Arc::from_raw(cqe.user_data() as *const Slot) };
                    slot.complete(self, cqe.result(), &mut wakers, &mut again);
                }
                // Dropping `cq` publishes the new head to the kernel.
            }
            if wakers.is_empty() && again.is_empty() {
                return;
            }
            wakers.into_iter().for_each(Waker::wake);
            for (slot, entry) in again {
                self.submit(slot, entry);
            }
        }
    }

    /// The reaper thread: waits for completions only while an operation is handed over.
    fn reap_forever(&self) {
        loop {
            {
                let mut idle = self.idle.lock();
                while self.handed.load(Ordering::Acquire) == 0 {
                    self.wake.wait(&mut idle);
                }
            }
            // SAFETY: `enter` with no argument (`None`, size 0) and to_submit 0: it only waits
            // for one CQE to be present; it reads and writes no memory of ours.
            match unsafe { self.ring.submitter().enter::<libc::sigset_t>(0, 1, ENTER_GETEVENTS, None) } {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter (wait) failed in the reaper");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            self.reap();
        }
    }

    /// Counts one more operation as handed over (the caller holds that operation's slot
    /// lock). Returns whether the reaper may be asleep on `wake` and must be woken.
    fn hand_over(&self) -> bool {
        self.handed.fetch_add(1, Ordering::AcqRel) == 0
    }

    fn wake_reaper(&self) {
        let _idle = self.idle.lock();
        self.wake.notify_one();
    }
}

/// An open file of the direct ring: a slot of its registered file table, or (where the
/// table is full or missing) a descriptor. Dropping it empties the slot or closes the
/// descriptor; every operation holds an `Arc` of it until its last CQE (invariant 6).
pub(super) struct DirectFile {
    ring: &'static Direct,
    target: Target,
}

enum Target {
    Slot(u32),
    Fd(OwnedFd),
}

impl DirectFile {
    fn fd(&self) -> FdRef {
        match &self.target {
            Target::Slot(index) => FdRef::Fixed(*index),
            Target::Fd(fd) => FdRef::Fd(fd.as_raw_fd()),
        }
    }

    /// Whether the file sits in the registered file table (holds no process descriptor).
    #[cfg(test)]
    pub(super) fn is_registered(&self) -> bool {
        matches!(self.target, Target::Slot(_))
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        if let Target::Slot(index) = self.target {
            self.ring.release_slot(index);
        }
    }
}

/// The file an SQE names: a descriptor or a slot of the registered file table.
#[derive(Clone, Copy)]
enum FdRef {
    Fd(RawFd),
    Fixed(u32),
}

/// `$body` with `$t` bound to `types::Fd` or `types::Fixed`, whichever `$fd` is (the
/// opcode builders take either).
macro_rules! with_fd {
    ($fd:expr, $t:ident => $body:expr) => {
        match $fd {
            FdRef::Fd(raw) => {
                let $t = types::Fd(raw);
                $body
            }
            FdRef::Fixed(index) => {
                let $t = types::Fixed(index);
                $body
            }
        }
    };
}

/// An operation in flight, shared by the kernel (one count per queued SQE) and the caller's
/// future.
struct Slot {
    state: Mutex<SlotState>,
    /// The file operated on (`None` for the operations by path: open, statx).
    file: Option<Arc<DirectFile>>,
}

struct SlotState {
    op: Op,
    /// The outcome, once the last step completed.
    done: Option<io::Result<Out>>,
    waker: Option<Waker>,
    /// Counted in `Direct::handed`.
    handed: bool,
}

/// What a finished operation hands its caller.
enum Out {
    Bytes(Vec<u8>),
    Unit,
    Stat(Box<libc::statx>),
    /// An aligned buffer and the bytes read into it.
    Aligned(AlignedBuf, usize),
    /// An open file: closes itself if the caller is gone (contract 3).
    File(DirectFile),
}

/// The iovecs of a write.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs point into the `Bytes` of the same `Op::Write` (which are `Send` and
// `Sync` and immutable) and are only rebuilt or read under the slot's mutex.
unsafe impl Send for IoVecs {}

enum Op {
    Read { buf: Vec<u8>, len: usize, offset: u64, exact: bool },
    /// `dsync`: every step carries `RWF_DSYNC`.
    Write { bufs: Vec<Bytes>, first: usize, iovecs: IoVecs, offset: u64, dsync: bool },
    WriteFixed { lease: Lease, len: usize, done: usize, offset: u64, dsync: bool },
    Sync { data_only: bool },
    Fallocate { offset: u64, len: u64 },
    /// `slot`: into the registered file table (cleared when the table is full).
    Open { path: CString, flags: i32, slot: bool, ring: &'static Direct },
    Statx { path: CString, buf: Box<MaybeUninit<libc::statx>>, mask: u32 },
    /// `O_DIRECT`: `offset`, `filled` and the buffer's length are multiples of `align`.
    ReadDirect { buf: AlignedBuf, offset: u64, filled: usize, align: usize },
}

/// What a CQE leads to.
enum Step {
    Again(squeue::Entry),
    Done(io::Result<Out>),
}

impl Op {
    /// The SQE of the next step. Pointers in it point into `self`'s heap buffers, which do not
    /// move until `self` is dropped or the next `advance`.
    fn entry(&mut self, fd: FdRef) -> squeue::Entry {
        match self {
            Op::Read { buf, len, offset, .. } => {
                let filled = buf.len();
                let ask = (*len - filled).min(MAX_READ);
                // `filled < len <= capacity`: the pointer stays inside the allocation.
                let ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
                // `ask <= MAX_READ` (1 GiB).
                #[allow(clippy::cast_possible_truncation)]
                let ask = ask as u32;
                with_fd!(fd, t => opcode::Read::new(t, ptr, ask).offset(*offset + filled as u64).build())
            }
            Op::Write { bufs, first, iovecs, offset, dsync } => {
                let rw_flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                iovecs.0.clear();
                iovecs.0.extend(
                    bufs[*first..]
                        .iter()
                        .take(MAX_IOVECS)
                        .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }),
                );
                // At most MAX_IOVECS (1024) entries, taken above.
                #[allow(clippy::cast_possible_truncation)]
                let count = iovecs.0.len() as u32;
                with_fd!(fd, t => opcode::Writev::new(t, iovecs.0.as_ptr(), count)
                    .offset(*offset)
                    .rw_flags(rw_flags)
                    .build())
            }
            Op::WriteFixed { lease, len, done, offset, dsync } => {
                let rw_flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                // SAFETY: `done < len <= FIXED_BUF_LEN`: the pointer stays inside the buffer.
                let ptr = unsafe { lease.ptr().add(*done) };
                // `len - done <= FIXED_BUF_LEN` (256 KiB).
                #[allow(clippy::cast_possible_truncation)]
                let ask = (*len - *done) as u32;
                let index = lease.index();
                with_fd!(fd, t => opcode::WriteFixed::new(t, ptr, ask, index)
                    .offset(*offset + *done as u64)
                    .rw_flags(rw_flags)
                    .build())
            }
            Op::Sync { data_only } => {
                let flags = if *data_only { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
                with_fd!(fd, t => opcode::Fsync::new(t).flags(flags).build())
            }
            Op::Fallocate { offset, len } => {
                with_fd!(fd, t => opcode::Fallocate::new(t, *len).offset(*offset).build())
            }
            Op::Open { path, flags, slot, .. } => {
                // A descriptor is close-on-exec; a slot has no such flag (the kernel refuses it).
                let flags = if *slot { *flags } else { *flags | libc::O_CLOEXEC };
                let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).flags(flags).mode(0o666);
                let open = if *slot { open.file_index(Some(types::DestinationSlot::auto_target())) } else { open };
                open.build()
            }
            Op::Statx { path, buf, mask } => opcode::Statx::new(
                types::Fd(libc::AT_FDCWD),
                path.as_ptr(),
                buf.as_mut_ptr().cast::<types::statx>(),
            )
            .mask(*mask)
            .build(),
            Op::ReadDirect { buf, offset, filled, .. } => {
                let ask = (buf.len() - *filled).min(MAX_READ);
                // SAFETY: `filled < buf.len()`: the pointer stays inside the buffer.
                let ptr = unsafe { buf.as_mut_ptr().add(*filled) };
                // `ask <= MAX_READ` (1 GiB).
                #[allow(clippy::cast_possible_truncation)]
                let ask = ask as u32;
                with_fd!(fd, t => opcode::Read::new(t, ptr, ask).offset(*offset + *filled as u64).build())
            }
        }
    }

    /// Takes the result `res` of the step last submitted.
    #[allow(clippy::too_many_lines)] // one arm per operation
    fn advance(&mut self, res: i32, fd: FdRef) -> Step {
        // `EINTR` is retried like the blocking calls; `ECANCELED` comes only from the kernel
        // cancelling the requests of a submitting thread that exits (ringkv never cancels),
        // so the step is submitted again, by a thread that lives.
        if res == -libc::EINTR || res == -libc::ECANCELED {
            return Step::Again(self.entry(fd));
        }
        // The registered file table is full: open into a descriptor instead. The kernel opens
        // the file before it looks for a free slot, so an `O_CREAT | O_EXCL` open has created
        // the file by now: the retry opens it without `O_EXCL` (had the file existed before,
        // the first try would have failed with `EEXIST`, not `ENFILE`).
        if let Op::Open { slot: slot @ true, flags, .. } = self {
            if res == -libc::ENFILE {
                *slot = false;
                *flags &= !libc::O_EXCL;
                return Step::Again(self.entry(fd));
            }
        }
        if res < 0 {
            return Step::Done(Err(io::Error::from_raw_os_error(-res)));
        }
        // `res >= 0`, checked above.
        #[allow(clippy::cast_sign_loss)]
        let n = res as usize;
        match self {
            Op::Read { buf, len, offset, exact } => {
                let filled = buf.len();
                assert!(n <= *len - filled, "the kernel read {n} bytes of {}", *len - filled);
                // SAFETY: the kernel initialised `n` bytes after the first `filled` (the step's
                // SQE asked for at most `len - filled` bytes there), and `filled + n <= len <=
                // capacity`.
                unsafe { buf.set_len(filled + n) };
                if n > 0 && buf.len() < *len {
                    return Step::Again(self.entry(fd));
                }
                if *exact && buf.len() < *len {
                    return Step::Done(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "read of {len} bytes at offset {offset} hit the end of the file after {} bytes",
                            buf.len()
                        ),
                    )));
                }
                Step::Done(Ok(Out::Bytes(std::mem::take(buf))))
            }
            Op::Write { bufs, first, offset, iovecs, .. } => {
                let asked: usize = iovecs.0.iter().map(|v| v.iov_len).sum();
                if n == 0 && asked > 0 {
                    return Step::Done(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("wrote 0 bytes at offset {offset}"),
                    )));
                }
                assert!(n <= asked, "the kernel wrote {n} bytes of {asked}");
                *offset += n as u64;
                let mut n = n;
                while n > 0 {
                    let head = &mut bufs[*first];
                    if n >= head.len() {
                        n -= head.len();
                        *first += 1;
                    } else {
                        *head = head.slice(n..);
                        n = 0;
                    }
                }
                if *first < bufs.len() {
                    return Step::Again(self.entry(fd));
                }
                Step::Done(Ok(Out::Unit))
            }
            Op::WriteFixed { len, done, offset, .. } => {
                if n == 0 {
                    return Step::Done(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("wrote 0 bytes at offset {}", *offset + *done as u64),
                    )));
                }
                assert!(n <= *len - *done, "the kernel wrote {n} bytes of {}", *len - *done);
                *done += n;
                if *done < *len {
                    return Step::Again(self.entry(fd));
                }
                Step::Done(Ok(Out::Unit))
            }
            Op::Sync { .. } | Op::Fallocate { .. } => Step::Done(Ok(Out::Unit)),
            Op::Open { slot, ring, .. } => {
                let target = if *slot {
                    // A slot index is below the table size, a `u32`.
                    #[allow(clippy::cast_possible_truncation)]
                    Target::Slot(n as u32)
                } else {
                    // SAFETY: a successful `openat` returned the new descriptor `res`, owned by
                    // nobody else: this `OwnedFd` becomes its only owner.
                    Target::Fd(unsafe { OwnedFd::from_raw_fd(res) })
                };
                Step::Done(Ok(Out::File(DirectFile { ring, target })))
            }
            Op::Statx { buf, .. } => {
                // SAFETY: the buffer was zeroed at allocation (an all-zero `statx`, plain
                // integers, is a valid value) and the kernel wrote only whole fields into it.
                let stat = unsafe { buf.assume_init_read() };
                Step::Done(Ok(Out::Stat(Box::new(stat))))
            }
            Op::ReadDirect { buf, filled, align, .. } => {
                assert!(n <= buf.len() - *filled, "the kernel read {n} bytes of {}", buf.len() - *filled);
                *filled += n;
                // A short read of whole blocks is continued; a partial block is the end of
                // the file.
                if n > 0 && *filled < buf.len() && n.is_multiple_of(*align) {
                    return Step::Again(self.entry(fd));
                }
                let filled = *filled;
                let buf = std::mem::replace(buf, AlignedBuf::zeroed(0));
                Step::Done(Ok(Out::Aligned(buf, filled)))
            }
        }
    }
}

impl Slot {
    fn fd(&self) -> FdRef {
        self.file.as_ref().map_or(FdRef::Fd(libc::AT_FDCWD), |f| f.fd())
    }

    /// Takes the CQE result `res` of this slot's step (`self` is the count the SQE held).
    fn complete(
        self: Arc<Slot>,
        ring: &Direct,
        res: i32,
        wakers: &mut Vec<Waker>,
        again: &mut Vec<(Arc<Slot>, squeue::Entry)>,
    ) {
        let fd = self.fd();
        let mut state = self.state.lock();
        match state.op.advance(res, fd) {
            Step::Again(entry) => {
                drop(state);
                again.push((self, entry));
            }
            Step::Done(result) => {
                state.done = Some(result);
                if std::mem::take(&mut state.handed) {
                    ring.handed.fetch_sub(1, Ordering::AcqRel);
                }
                wakers.extend(state.waker.take());
            }
        }
    }
}

/// Whether `op` is a buffered (not `RWF_DSYNC`) write, the operation the first poll keeps
/// reaping for (invariant 8).
fn entry_is_buffered_write(op: &Op) -> bool {
    matches!(op, Op::Write { dsync: false, .. } | Op::WriteFixed { dsync: false, .. })
}

/// Whether `op` is a read, the operation that polls for its own completion while nothing
/// is handed over (invariant 10).
fn entry_is_read(op: &Op) -> bool {
    matches!(op, Op::Read { .. } | Op::ReadDirect { .. })
}

/// The caller's side of an operation: submits on first poll (lazy, contract 2).
struct OpFuture {
    ring: &'static Direct,
    slot: Arc<Slot>,
    submitted: bool,
    /// A buffered write not done at submission yielded to the executor; the next poll
    /// spins for it (invariant 9).
    spin_next: bool,
    /// A read polling for its own completion from the executor until then (invariant 10).
    poll_until: Option<Instant>,
}

impl OpFuture {
    fn new(ring: &'static Direct, file: Option<Arc<DirectFile>>, op: Op) -> OpFuture {
        let state = SlotState { op, done: None, waker: None, handed: false };
        OpFuture {
            ring,
            slot: Arc::new(Slot { state: Mutex::new(state), file }),
            submitted: false,
            spin_next: false,
            poll_until: None,
        }
    }

    /// Whether the operation is not done and no operation is handed over to the reaper:
    /// a read then keeps polling for itself (invariant 10).
    fn alone_and_pending(&self) -> bool {
        self.ring.handed.load(Ordering::Acquire) == 0 && self.slot.state.lock().done.is_none()
    }

    /// Counts the operation as handed over to the reaper unless it is done or already
    /// counted (the caller holds the slot lock, `state`).
    fn hand_over(&self, mut state: parking_lot::MutexGuard<'_, SlotState>) {
        if state.done.is_none() && !state.handed {
            state.handed = true;
            // Counted under the slot lock, so the completion's decrement comes after.
            let maybe_asleep = self.ring.hand_over();
            drop(state);
            if maybe_asleep {
                self.ring.wake_reaper();
            }
        }
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        // Dropped between the yield and the spin (invariant 9), or while polling for its own
        // completion (invariant 10): nobody would reap the operation's CQE until the next
        // operation does; hand it to the reaper, so its continuations are submitted
        // (contract 3).
        if self.spin_next || self.poll_until.is_some() {
            self.hand_over(self.slot.state.lock());
        }
    }
}

impl Future for OpFuture {
    type Output = io::Result<Out>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.submitted {
            this.submitted = true;
            let fd = this.slot.fd();
            let (entry, buffered_write, read) = {
                let mut state = this.slot.state.lock();
                (state.op.entry(fd), entry_is_buffered_write(&state.op), entry_is_read(&state.op))
            };
            this.ring.submit(Arc::clone(&this.slot), entry);
            // Cached reads (and buffered writes where the file system takes them without
            // blocking) are done by now: finish them here.
            this.ring.reap();
            if buffered_write && this.slot.state.lock().done.is_none() {
                // Invariant 9: let the executor run its other tasks while an io-wq worker
                // writes, then (next poll) catch the completion (invariant 8).
                this.spin_next = true;
                yield_to_executor(cx);
                return Poll::Pending;
            }
            if read && this.alone_and_pending() {
                // Invariant 10: nothing else is waiting; check for this read's completion
                // from this executor for a while rather than wake two threads for it.
                this.poll_until = Some(Instant::now() + READ_POLL);
                yield_to_executor(cx);
                return Poll::Pending;
            }
        }
        if let Some(until) = this.poll_until {
            this.ring.reap();
            if this.alone_and_pending() && Instant::now() < until {
                yield_to_executor(cx);
                return Poll::Pending;
            }
            this.poll_until = None;
        }
        if std::mem::take(&mut this.spin_next) {
            // Invariant 8: a buffered write an io-wq worker took is usually done within
            // microseconds; catch its completion here rather than hand it over.
            this.ring.reap();
            let start = Instant::now();
            while this.slot.state.lock().done.is_none() && start.elapsed() < WRITE_SPIN {
                std::thread::yield_now();
                this.ring.reap();
            }
        }
        let mut state = this.slot.state.lock();
        if let Some(result) = state.done.take() {
            return Poll::Ready(result);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        this.hand_over(state);
        Poll::Pending
    }
}

/// Schedules the current task to be polled again after the executor's other ready tasks:
/// on a tokio runtime, tokio's deferred wake (`tokio::task::yield_now`: the task is woken
/// when the worker has run what else is ready, and no idle worker is woken for it);
/// elsewhere, `wake_by_ref`.
fn yield_to_executor(cx: &mut Context<'_>) {
    let mut yielded = std::pin::pin!(tokio::task::yield_now());
    // The first poll of `yield_now` arranges the wake and returns `Pending`.
    let _ = yielded.as_mut().poll(cx);
}

#[cfg(test)]
// Unit tests build small images and patterns: their casts cannot truncate or are meant to.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ring() -> Option<&'static Direct> {
        let ring = global();
        if ring.is_none() {
            eprintln!("the direct io_uring is unavailable, skipping");
        }
        ring
    }

    fn open(ring: &'static Direct, path: &std::path::Path) -> Arc<DirectFile> {
        let file = futures::executor::block_on(ring.open(path, libc::O_RDWR | libc::O_CREAT)).unwrap();
        assert_eq!(file.is_registered(), ring.file_slots() > 0);
        Arc::new(file)
    }

    #[test]
    fn round_trip_write_read_fdatasync() {
        let Some(ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let file = open(ring, &dir.path().join("f"));
        futures::executor::block_on(async {
            let bufs = vec![Bytes::from_static(b"hello, "), Bytes::new(), Bytes::from_static(b"world")];
            ring.writev(Arc::clone(&file), 3, bufs).await.unwrap();
            ring.sync(Arc::clone(&file), true).await.unwrap();
            ring.sync(Arc::clone(&file), false).await.unwrap();
            assert_eq!(ring.read(Arc::clone(&file), 3, 12, true).await.unwrap(), b"hello, world");
            assert_eq!(ring.read(Arc::clone(&file), 0, 3, true).await.unwrap(), [0, 0, 0]);
            assert_eq!(ring.read(Arc::clone(&file), 10, 100, false).await.unwrap(), b"world");
            assert_eq!(ring.read(Arc::clone(&file), 100, 10, false).await.unwrap(), b"");
        });
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"\0\0\0hello, world");
    }

    #[test]
    fn a_write_dropped_after_its_first_poll_lands_in_full() {
        let Some(ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = open(ring, &path);
        // More buffers than one writev takes: the rest is submitted by whoever reaps.
        let bufs: Vec<Bytes> = (0..3000u32).map(|i| Bytes::from(format!("{i:0100}"))).collect();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let mut fut = Box::pin(ring.writev(Arc::clone(&file), 0, bufs));
        let waker = futures::task::noop_waker();
        let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
        drop(fut);
        drop(file);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read(&path).unwrap() == expected {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the dropped write never landed in full");
            // Nudge the ring: a later operation reaps (and continues) the dropped one.
            let other = open(ring, &dir.path().join("g"));
            futures::executor::block_on(ring.sync(other, true)).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Counts the wakes of a waker.
    struct CountWake(AtomicUsize);

    impl std::task::Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_buffered_write_not_done_at_submission_yields_with_its_wake_scheduled() {
        let Some(ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = open(ring, &path);
        let count = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut expected = Vec::new();
        for i in 0..50u32 {
            let bytes = Bytes::from(format!("{i:0512}"));
            expected.extend_from_slice(&bytes);
            let op = Op::Write {
                bufs: vec![bytes],
                first: 0,
                iovecs: IoVecs(Vec::new()),
                offset: u64::from(i) * 512,
                dsync: false,
            };
            let mut fut = OpFuture::new(ring, Some(Arc::clone(&file)), op);
            let before = count.0.load(Ordering::SeqCst);
            if Pin::new(&mut fut).poll(&mut Context::from_waker(&waker)).is_pending() {
                // Invariant 9: the first poll's `Pending` is the yield, its wake already
                // scheduled (outside tokio: at once), not a hand-over to the reaper.
                assert_eq!(count.0.load(Ordering::SeqCst), before + 1, "write {i} yielded without a wake");
                assert!(!fut.slot.state.lock().handed, "write {i} was handed over at its first poll");
                assert!(fut.spin_next, "write {i} pending with no spin to come");
                futures::executor::block_on(fut).unwrap();
            }
        }
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    /// Invariant 10: a read that is alone on its ring (a private one: the global ring's
    /// `handed` counts the other tests' operations) and not done at submission yields with
    /// its wake scheduled and polls for its own completion without being handed over; one
    /// dropped while polling is handed over, and its CQE is still taken (the kernel's count
    /// of its slot comes back).
    #[test]
    fn a_lone_read_polls_for_itself_and_a_dropped_one_is_handed_over() {
        let ring: &'static Direct = match Direct::start() {
            Ok(ring) => ring,
            Err(e) => {
                eprintln!("the direct io_uring is unavailable, skipping: {e}");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let Ok(file) = futures::executor::block_on(ring.open(&path, libc::O_RDONLY | libc::O_DIRECT)) else {
            eprintln!("no O_DIRECT on this file system, skipping");
            return;
        };
        let file = Arc::new(file);
        let count = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut polled = 0;
        for i in 0..64u64 {
            let op = Op::ReadDirect { buf: AlignedBuf::zeroed(4096), offset: i * 4096, filled: 0, align: 4096 };
            let mut fut = OpFuture::new(ring, Some(Arc::clone(&file)), op);
            let before = count.0.load(Ordering::SeqCst);
            let first = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker));
            let out = match first {
                Poll::Ready(out) => out,
                Poll::Pending => {
                    polled += 1;
                    assert_eq!(count.0.load(Ordering::SeqCst), before + 1, "read {i} yielded without a wake");
                    assert!(!fut.slot.state.lock().handed, "lone read {i} was handed over at its first poll");
                    assert!(fut.poll_until.is_some(), "lone read {i} pending without polling");
                    if i % 2 == 1 {
                        // Dropped while polling: the drop hands it to the reaper, which takes
                        // its CQE (the kernel's count of the slot).
                        let slot = Arc::clone(&fut.slot);
                        drop(fut);
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while Arc::strong_count(&slot) > 1 {
                            assert!(Instant::now() < deadline, "the dropped read's CQE was never taken");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        assert!(slot.state.lock().done.is_some(), "the dropped read never completed");
                        continue;
                    }
                    futures::executor::block_on(fut)
                }
            };
            let Ok(Out::Aligned(buf, n)) = out else { panic!("read {i} failed") };
            assert_eq!(n, 4096);
            let at = i as usize * 4096;
            assert_eq!(&buf.as_slice()[..n], &data[at..at + 4096], "read {i}");
        }
        assert!(polled > 0, "no O_DIRECT read was pending at its first poll");
        assert_eq!(ring.handed.load(Ordering::SeqCst), 0, "handed-over reads were not counted out");
    }

    #[test]
    fn concurrent_reads_of_distinct_offsets() {
        let Some(ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut std_file = std::fs::File::create(&path).unwrap();
        for i in 0..256u32 {
            std_file.write_all(&[i as u8; 4096]).unwrap();
        }
        drop(std_file);
        let file = open(ring, &path);
        let reads = (0..256u64).map(|i| ring.read(Arc::clone(&file), i * 4096 + 7, 4000, true));
        let results = futures::executor::block_on(futures::future::join_all(reads));
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(r.unwrap(), vec![i as u8; 4000], "read {i}");
        }
        // The same from many threads at once.
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let file = Arc::clone(&file);
                s.spawn(move || {
                    for i in (t..256).step_by(4) {
                        let got =
                            futures::executor::block_on(ring.read(Arc::clone(&file), i * 4096, 4096, true));
                        assert_eq!(got.unwrap(), vec![i as u8; 4096]);
                    }
                });
            }
        });
    }

    #[test]
    fn a_read_past_the_end_with_exact_is_unexpected_eof() {
        let Some(ring) = ring() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = open(ring, &path);
        futures::executor::block_on(async {
            let err = ring.read(Arc::clone(&file), 4, 10, true).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            let err = ring.read(Arc::clone(&file), 50, 1, true).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(ring.read(file, 4, 10, false).await.unwrap(), b"456789");
        });
    }
}
