//! Ring per worker thread against today's shared ring: random 4 KiB `O_DIRECT` reads of
//! one 1 GiB file with 1, 16, 64 and 256 reads in flight, one criterion benchmark per mode
//! in group `ring_modes/<depth>`. One iteration is one read completed (`Throughput::Elements(1)`,
//! so criterion prints reads/s); a sample keeps `depth` reads in flight from its first
//! submission to its last completion and runs at least 16 x `depth` reads (the time of a
//! longer batch is scaled to the iterations criterion asked for), so the ramp-up and the
//! drain at the ends of a batch stay small at every depth.
//!
//! `cargo bench --bench ring_modes` (all, about 2 minutes), or
//! `cargo bench --bench ring_modes -- ring_modes/16` (one depth; any criterion filter).
//! Environment: `RINGKV_BENCH_DIR` (default `/work/ring-modes-bench`): where the 1 GiB file
//! `ring_modes.1GiB` is written once (ordinary writes, then fsync; non-zero bytes) and
//! reused while it has that size. It must be on a file system that takes `O_DIRECT` (not
//! tmpfs). Every read but those of `shared_ringkv_threadpool` is `O_DIRECT`, around the
//! page cache.
//!
//! Modes:
//!
//! - `shared_ringkv_uring`: today's path, `ringkv::io::IoDriver` on `IoBackend::Uring`
//!   (the process-wide direct ring of `src/io/direct.rs`, the caller's thread submits, the
//!   `ringkv-reaper` thread waits for completions and wakes the task), the file opened
//!   `OpenMode::ReadDirect`, `read_exact_at(offset, 4096)` from `depth` tasks spawned on a
//!   tokio multi-thread runtime of 2 workers, each task one read at a time.
//! - `shared_ringkv_threadpool`: the same on `IoBackend::ThreadPool` (blocking `pread`s on
//!   the `ringkv-fallback` pool; files opened `ReadDirect` are read buffered there, so this
//!   one reads through the page cache, which the 1 GiB file may partly be in).
//! - `per_thread_sq_dt`: the ceiling of a ring per thread. 2 plain threads (1 at depth 1),
//!   no executor, each with its own ring built with `IORING_SETUP_SINGLE_ISSUER |
//!   IORING_SETUP_DEFER_TASKRUN` (`COOP_TASKRUN` is not added: with `DEFER_TASKRUN`
//!   completions run only in `io_uring_enter(GETEVENTS)` anyway), the file opened `O_DIRECT`
//!   and registered (`IOSQE_FIXED_FILE`), `depth / 2` registered buffers
//!   (`IORING_OP_READ_FIXED`), `depth / 2` reads in flight; loop: `submit_and_wait(1)`, drain
//!   every CQE, resubmit that many.
//! - `per_thread_plain`: the same loop and threads, one ring per thread WITHOUT the two flags:
//!   `per_thread_sq_dt` against this one is the flags' effect alone.
//! - `shared_ring_plain`: ONE ring without the flags shared by the 2 threads (`depth`
//!   registered buffers, thread `t` owning buffers `t * depth/2 ..`). Pushes and the
//!   `io_uring_enter` that submits them are under a mutex. Completions: a thread that needs
//!   its own and finds none routed to it becomes the *leader* (one at a time): it waits in
//!   `io_uring_enter(0, 1, GETEVENTS)` outside every lock, drains the whole CQ, routes each
//!   CQE to its owner's inbox by `user_data`, and wakes the other thread (condvar) — so a
//!   completion of the other thread's read costs a thread hop, as a shared ring does.
//!   Against `per_thread_plain` it is the cost of sharing; against `shared_ringkv_uring`
//!   the cost of ringkv's executor-independent reaper, slots and allocations.
//! - `per_worker_tokio`: the realistic "ring per worker". 2 threads (1 at depth 1), each
//!   running its own tokio `current_thread` runtime (a ring per worker needs its tasks to
//!   stay on the ring's thread: a `current_thread` runtime (or `LocalSet`) per thread, not
//!   the work-stealing multi-thread runtime) and a thread-local `SINGLE_ISSUER |
//!   DEFER_TASKRUN` ring like `per_thread_sq_dt`'s. `depth / 2` local tasks per thread, each
//!   one read at a time: the read future takes a free buffer, pushes its SQE into its
//!   thread's ring and submits it (`io_uring_enter` without `GETEVENTS`), then waits. A
//!   reaper task on the same runtime is woken through tokio's reactor: an eventfd registered
//!   with the ring (`IORING_REGISTER_EVENTFD`), which the kernel signals when it queues a
//!   deferred completion, held in `tokio::io::unix::AsyncFd` (readable interest). On wake
//!   the reaper reads the eventfd, calls `io_uring_enter(0, 0, GETEVENTS)` to run the
//!   deferred completions, drains the CQ, wakes the read futures and yields (readiness is
//!   cleared only once a pass finds nothing; a pass may run only part of the deferred
//!   work). Not the ring's own fd: with `DEFER_TASKRUN` it does NOT poll readable when
//!   deferred completions are queued (Linux 6.18: an edge-triggered `epoll_wait` on it
//!   timed out after 2 s with the completion of a 5 ms timeout waiting, where the
//!   registered eventfd woke it at 5 ms), and a reaper waiting on it hung. (`AsyncFd` needs
//!   tokio's `net` feature, which the crate's `tokio-uring` dependency turns on for the
//!   whole build.)
//!
//! Registered buffers count against `RLIMIT_MEMLOCK` (per user: ringkv's own ring pins
//! 4 MiB of them once `shared_ringkv_uring` has run): where `register_buffers` is refused, a
//! warning is printed and that ring reads into the same (aligned, unregistered) buffers with
//! `IORING_OP_READ`. A kernel that refuses `SINGLE_ISSUER | DEFER_TASKRUN` (before 6.1) skips
//! `per_thread_sq_dt` and `per_worker_tokio` with a printed reason.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // counts and slot numbers are small
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom
#![allow(missing_docs)] // criterion_group! defines an undocumented function

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use parking_lot::{Condvar, Mutex};
use ringkv::io::{IoDriver, IoFile, OpenMode};
use ringkv::IoBackend;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Bytes per read.
const BLOCK: usize = 4096;
/// Size of the data file.
const FILE_SIZE: u64 = 1 << 30;
/// Aligned blocks in the data file.
const BLOCKS: u64 = FILE_SIZE / BLOCK as u64;
/// Reads in flight.
const DEPTHS: [usize; 4] = [1, 16, 64, 256];
/// A sample runs at least this many reads per read in flight.
const MIN_READS_PER_SLOT: u64 = 16;
/// `IORING_ENTER_GETEVENTS` (the crate keeps its copy private).
const ENTER_GETEVENTS: u32 = 1;
const DIR_ENV: &str = "RINGKV_BENCH_DIR";
const DEFAULT_DIR: &str = "/work/ring-modes-bench";

// ---------------------------------------------------------------------------------------
// The data file and the offsets.

/// The 1 GiB data file, written on first use unless it is there at that size.
fn data_file() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::var_os(DIR_ENV).map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ring_modes.1GiB");
        if fs::metadata(&path).is_ok_and(|m| m.len() == FILE_SIZE) {
            return path;
        }
        eprintln!("ring_modes: writing the 1 GiB data file {path:?} (once; reused while it is 1 GiB)");
        let tmp = dir.join("ring_modes.1GiB.tmp");
        let mut file = File::create(&tmp).unwrap();
        let mut chunk: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 + 1).collect();
        for c in 0..FILE_SIZE >> 20 {
            chunk[..8].copy_from_slice(&(c | 1 << 63).to_le_bytes());
            file.write_all(&chunk).unwrap();
        }
        file.sync_all().unwrap();
        drop(file);
        fs::rename(&tmp, &path).unwrap();
        File::open(&dir).unwrap().sync_all().unwrap();
        path
    })
}

/// The data file opened read-only with `O_DIRECT`.
fn open_direct(path: &Path) -> File {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).unwrap_or_else(|e| {
        panic!("ring_modes: cannot open {path:?} with O_DIRECT ({e}); set {DIR_ENV} to a directory on a real disk")
    })
}

/// Random block-aligned offsets in the data file (splitmix64).
struct Offsets(u64);

impl Offsets {
    fn new(seed: u64) -> Offsets {
        Offsets(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn offset(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % BLOCKS) * BLOCK as u64
    }
}

/// A different seed on every call, so samples do not replay the same offsets.
fn fresh_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// Buffers and rings of the raw `io-uring` modes.

/// One page-aligned read buffer.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

/// `count` page-aligned blocks that reads land in. This program never reads or writes them:
/// it only hands their addresses to the kernel, so a raw allocation (no references to the
/// memory are ever made) is all it needs.
struct Blocks {
    base: NonNull<Block>,
    count: usize,
}

impl Blocks {
    fn new(count: usize) -> Blocks {
        let boxed: Box<[Block]> = vec![Block([0; BLOCK]); count].into_boxed_slice();
        let base = NonNull::new(Box::into_raw(boxed).cast::<Block>()).unwrap();
        Blocks { base, count }
    }

    /// The address of block `slot`.
    fn ptr(&self, slot: usize) -> *mut u8 {
        assert!(slot < self.count, "block {slot} of {}", self.count);
        self.base.as_ptr().wrapping_add(slot).cast()
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count).map(|i| libc::iovec { iov_base: self.ptr(i).cast(), iov_len: BLOCK }).collect()
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.count);
        // SAFETY: `base` and `count` are those of the `Box<[Block]>` that `new` turned into a
        // raw pointer; it is turned back into a box exactly once, here.
        drop(unsafe { Box::from_raw(slice) });
    }
}

// SAFETY: `Blocks` owns its allocation as a `Box<[Block]>` would (which is `Send + Sync`)
// and never dereferences it; which blocks the kernel may write is governed by the rings'
// slot rules at each SQE push, not by the thread that holds the `Blocks`.
unsafe impl Send for Blocks {}
// SAFETY: as above: shared access only yields addresses, never reads or writes the memory.
unsafe impl Sync for Blocks {}

/// Which setup flags a ring gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flags {
    Plain,
    SingleIssuerDeferTaskrun,
}

fn build_ring(entries: usize, flags: Flags) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    if flags == Flags::SingleIssuerDeferTaskrun {
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    builder.build(entries.next_power_of_two().max(2) as u32)
}

/// A ring with the data file registered at index 0 and `slots` blocks, registered as fixed
/// buffers where the kernel takes them. Every SQE uses block `user_data`.
///
/// Field order matters: `ring` is dropped first, so the kernel's registration of `blocks`
/// ends before their memory is freed; and every user of a `Rig` reaps the CQE of each SQE it
/// pushed before it lets the `Rig` go, so no read is in flight when it is dropped.
struct Rig {
    ring: IoUring,
    blocks: Blocks,
    fixed: bool,
    _file: File,
}

impl Rig {
    fn new(path: &Path, slots: usize, flags: Flags, label: &str) -> io::Result<Rig> {
        let ring = build_ring(slots, flags)?;
        let file = open_direct(path);
        ring.submitter().register_files(&[file.as_raw_fd()])?;
        let blocks = Blocks::new(slots);
        let iovecs = blocks.iovecs();
        // SAFETY: each iovec is one whole block of `blocks`, an allocation that lives in this
        // `Rig` and is freed only after `ring` (field order, see the type's doc), i.e. after
        // the registration is gone.
        let fixed = match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "ring_modes: warning: {label}: register_buffers of {slots} x 4 KiB refused ({e}; \
                     RLIMIT_MEMLOCK?); reading into unregistered buffers (IORING_OP_READ)"
                );
                false
            }
        };
        Ok(Rig { ring, blocks, fixed, _file: file })
    }

    /// The SQE reading the block at `offset` into block `slot`, `user_data` = `slot`.
    fn sqe(&self, slot: usize, offset: u64) -> squeue::Entry {
        let buf = self.blocks.ptr(slot);
        let entry = if self.fixed {
            opcode::ReadFixed::new(types::Fixed(0), buf, BLOCK as u32, slot as u16).offset(offset).build()
        } else {
            opcode::Read::new(types::Fixed(0), buf, BLOCK as u32).offset(offset).build()
        };
        entry.user_data(slot as u64)
    }
}

/// The slot of a completed read; panics on a failed or short one.
fn completed_slot(cqe: &cqueue::Entry) -> usize {
    let res = cqe.result();
    assert!(
        res == BLOCK as i32,
        "ring_modes: read into slot {} returned {}",
        cqe.user_data(),
        if res < 0 { io::Error::from_raw_os_error(-res).to_string() } else { format!("{res} bytes") }
    );
    cqe.user_data() as usize
}

/// `submit_and_wait(want)`, again after `EINTR`.
fn submit_and_wait(ring: &IoUring, want: usize) {
    loop {
        match ring.submit_and_wait(want) {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("ring_modes: io_uring_enter: {e}"),
        }
    }
}

/// `io_uring_enter(0, min_complete, GETEVENTS)`, again after `EINTR`: waits for
/// `min_complete` CQEs and, on a `DEFER_TASKRUN` ring, runs the deferred completions.
fn get_events(ring: &IoUring, min_complete: u32) {
    loop {
        // SAFETY: no argument pointer is passed (`None`), and submitting nothing with
        // GETEVENTS touches no SQE or buffer.
        match unsafe { ring.submitter().enter::<libc::sigset_t>(0, min_complete, ENTER_GETEVENTS, None) } {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("ring_modes: io_uring_enter(GETEVENTS): {e}"),
        }
    }
}

/// Whether the kernel takes `SINGLE_ISSUER | DEFER_TASKRUN`.
fn flags_supported() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            build_ring(8, Flags::SingleIssuerDeferTaskrun)
                .map(drop)
                .map_err(|e| format!("IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN refused: {e}"))
        })
        .clone()
}

// ---------------------------------------------------------------------------------------
// Worker threads driven by the benchmark thread.

/// What a worker thread does with one batch of reads.
trait Worker {
    fn run(&mut self, reads: u64);
}

/// Threads that build their state on themselves (a `SINGLE_ISSUER` ring must be used by
/// the thread that made it) and then run batches.
struct Workers {
    jobs: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Workers {
    fn start<F>(name: &str, count: usize, make: F) -> Workers
    where
        F: Fn(usize) -> Box<dyn Worker> + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let (done_tx, done) = mpsc::channel();
        let mut jobs = Vec::new();
        let mut threads = Vec::new();
        for index in 0..count {
            let (job_tx, job_rx) = mpsc::channel::<u64>();
            let make = Arc::clone(&make);
            let done_tx = done_tx.clone();
            let thread = thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    let mut worker = make(index);
                    done_tx.send(()).unwrap();
                    while let Ok(reads) = job_rx.recv() {
                        worker.run(reads);
                        done_tx.send(()).unwrap();
                    }
                })
                .unwrap();
            jobs.push(job_tx);
            threads.push(thread);
        }
        let workers = Workers { jobs, done, threads };
        for _ in 0..count {
            workers.done.recv().expect("a worker thread failed to start (its panic is above)");
        }
        workers
    }

    /// Runs `reads` reads split over the threads; the time from handing out the batches to
    /// the last thread's end.
    fn run(&self, reads: u64) -> Duration {
        let count = self.jobs.len() as u64;
        let start = Instant::now();
        for (i, job) in self.jobs.iter().enumerate() {
            let share = reads / count + u64::from((i as u64) < reads % count);
            job.send(share).unwrap();
        }
        for _ in 0..count {
            self.done.recv().expect("a worker thread panicked (see above)");
        }
        start.elapsed()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Threads and reads in flight per thread at `depth`.
fn split(depth: usize) -> (usize, usize) {
    if depth == 1 {
        (1, 1)
    } else {
        (2, depth / 2)
    }
}

// ---------------------------------------------------------------------------------------
// per_thread_sq_dt and per_thread_plain: a ring per thread, closed loop, no executor.

struct RingWorker {
    rig: Rig,
    inflight: usize,
    offsets: Offsets,
    freed: Vec<usize>,
}

impl RingWorker {
    fn push(&mut self, slot: usize) {
        let entry = self.rig.sqe(slot, self.offsets.offset());
        // SAFETY: the SQE reads 4 KiB into block `slot` of `self.rig.blocks` (registered
        // buffer `slot` when fixed), which lives as long as the ring (see `Rig`). `slot` is
        // either one of the first `inflight` slots, pushed once at the start of a batch, or
        // the `user_data` of a CQE just reaped: no two reads in flight share a block and no
        // block is reused before its CQE is seen. `run` returns only after the CQE of every
        // SQE it pushed.
        unsafe { self.rig.ring.submission().push(&entry) }
            .expect("the SQ has room: at most `inflight` SQEs are queued and it has that many entries");
    }
}

impl Worker for RingWorker {
    fn run(&mut self, reads: u64) {
        let first = self.inflight.min(reads as usize);
        for slot in 0..first {
            self.push(slot);
        }
        let mut submitted = first as u64;
        let mut completed = 0;
        while completed < reads {
            submit_and_wait(&self.rig.ring, 1);
            self.freed.clear();
            self.freed.extend(self.rig.ring.completion().map(|cqe| completed_slot(&cqe)));
            completed += self.freed.len() as u64;
            for i in 0..self.freed.len() {
                if submitted < reads {
                    self.push(self.freed[i]);
                    submitted += 1;
                }
            }
        }
    }
}

fn per_thread_workers(depth: usize, flags: Flags, label: &'static str) -> Workers {
    let (threads, inflight) = split(depth);
    Workers::start(label, threads, move |_| {
        let rig = Rig::new(data_file(), inflight, flags, label)
            .unwrap_or_else(|e| panic!("{label}: ring setup: {e}"));
        Box::new(RingWorker {
            rig,
            inflight,
            offsets: Offsets::new(fresh_seed()),
            freed: Vec::with_capacity(inflight),
        })
    })
}

// ---------------------------------------------------------------------------------------
// shared_ring_plain: one ring, no flags, shared by the threads (leader/follower reaping).

struct SharedRing {
    rig: Rig,
    /// Slots (blocks) per thread: thread `t` owns `t * per_thread .. (t + 1) * per_thread`.
    per_thread: usize,
    /// Serialises pushes to the SQ and the `io_uring_enter` that submits them.
    sq: Mutex<()>,
    route: Mutex<Route>,
    routed: Condvar,
}

struct Route {
    /// Completed slots per thread, not yet taken by it.
    inbox: Vec<Vec<usize>>,
    /// A thread is waiting in the kernel and will drain the CQ (only it touches the CQ).
    leader: bool,
}

impl SharedRing {
    /// Pushes a read into each of `slots` (all owned by the calling thread, none in flight)
    /// and submits them.
    fn submit(&self, slots: &[usize], offsets: &mut Offsets) {
        if slots.is_empty() {
            return;
        }
        let _sq = self.sq.lock();
        {
            // SAFETY: `sq` is held, so no other `SubmissionQueue` of this ring exists.
            let mut queue = unsafe { self.rig.ring.submission_shared() };
            for &slot in slots {
                let entry = self.rig.sqe(slot, offsets.offset());
                // SAFETY: block `slot` (registered buffer `slot` when fixed) lives as long as
                // the ring (see `Rig`). Each thread pushes only the slots it owns, either at
                // the start of a batch (none in flight then) or after their CQEs were routed
                // back to it, so no two reads in flight share a block and none is reused
                // before its CQE is seen; a batch ends only once every read it pushed is
                // back, and the ring is dropped after every batch has ended.
                unsafe { queue.push(&entry) }
                    .expect("the SQ has room: at most `depth` SQEs are queued and it has that many entries");
            }
        } // The queue's drop publishes the new SQ tail.
        submit_and_wait(&self.rig.ring, 0);
    }

    /// Fills `mine` (emptied first) with completed slots of thread `me`, waiting for one.
    fn wait(&self, me: usize, mine: &mut Vec<usize>) {
        mine.clear();
        let mut route = self.route.lock();
        loop {
            if !route.inbox[me].is_empty() {
                std::mem::swap(mine, &mut route.inbox[me]);
                return;
            }
            if route.leader {
                self.routed.wait(&mut route);
                continue;
            }
            route.leader = true;
            drop(route);
            let reaped = self.reap();
            route = self.route.lock();
            for slot in reaped {
                route.inbox[slot / self.per_thread].push(slot);
            }
            route.leader = false;
            // Always: a waiting thread must take over leadership even if it got nothing.
            self.routed.notify_all();
        }
    }

    /// Waits for at least one CQE and drains the CQ. Only the leader calls it.
    fn reap(&self) -> Vec<usize> {
        loop {
            get_events(&self.rig.ring, 1);
            // SAFETY: only the leader (one thread at a time, `Route::leader`) creates a
            // `CompletionQueue` of this ring.
            let reaped: Vec<usize> =
                unsafe { self.rig.ring.completion_shared() }.map(|cqe| completed_slot(&cqe)).collect();
            if !reaped.is_empty() {
                return reaped;
            }
        }
    }
}

struct SharedWorker {
    shared: Arc<SharedRing>,
    me: usize,
    offsets: Offsets,
    mine: Vec<usize>,
}

impl Worker for SharedWorker {
    fn run(&mut self, reads: u64) {
        let per = self.shared.per_thread;
        let first = per.min(reads as usize);
        let slots: Vec<usize> = (self.me * per..self.me * per + first).collect();
        self.shared.submit(&slots, &mut self.offsets);
        let mut submitted = first as u64;
        let mut completed = 0;
        while completed < reads {
            self.shared.wait(self.me, &mut self.mine);
            completed += self.mine.len() as u64;
            let refill = (self.mine.len() as u64).min(reads - submitted) as usize;
            self.shared.submit(&self.mine[..refill], &mut self.offsets);
            submitted += refill as u64;
        }
    }
}

fn shared_ring_workers(depth: usize) -> Workers {
    let (threads, inflight) = split(depth);
    let rig = Rig::new(data_file(), threads * inflight, Flags::Plain, "shared_ring_plain").unwrap();
    let shared = Arc::new(SharedRing {
        rig,
        per_thread: inflight,
        sq: Mutex::new(()),
        route: Mutex::new(Route { inbox: vec![Vec::new(); threads], leader: false }),
        routed: Condvar::new(),
    });
    Workers::start("shared_ring_plain", threads, move |me| {
        Box::new(SharedWorker {
            shared: Arc::clone(&shared),
            me,
            offsets: Offsets::new(fresh_seed()),
            mine: Vec::with_capacity(inflight),
        })
    })
}

// ---------------------------------------------------------------------------------------
// per_worker_tokio: a current_thread runtime per thread, a thread-local ring, a reaper task.

/// The state of one slot (block) of a thread's ring.
enum Op {
    /// No read uses the block; the slot is on the free list.
    Idle,
    /// A read is in flight; the waker of its future once polled.
    Waiting(Option<Waker>),
    /// The read completed with this result; its future has not taken it yet.
    Done(i32),
    /// A read is in flight whose future was dropped: the reaper frees the slot at its CQE.
    Orphaned,
}

struct ThreadRing {
    rig: RefCell<Rig>,
    ops: RefCell<Vec<Op>>,
    free: RefCell<Vec<usize>>,
}

impl ThreadRing {
    /// Pushes and submits a read of the block at `offset` into a free slot.
    fn start_read(self: &Rc<Self>, offset: u64) -> ReadOp {
        let slot = self.free.borrow_mut().pop().expect("no more reads in flight than blocks");
        self.ops.borrow_mut()[slot] = Op::Waiting(None);
        let mut rig = self.rig.borrow_mut();
        let entry = rig.sqe(slot, offset);
        // SAFETY: block `slot` (registered buffer `slot` when fixed) lives as long as the ring
        // (see `Rig`). It came off the free list, where a slot goes back only after its CQE
        // was reaped (`ReadOp::poll` or `Drop` after `Done`, or `reap` for `Orphaned`), so
        // no read in flight uses it. `user_data` is `slot`. The ring is dropped only after
        // every batch's tasks, which await all their reads, have finished.
        unsafe { rig.ring.submission().push(&entry) }
            .expect("the SQ has room: at most `inflight` SQEs are queued and it has that many entries");
        // No GETEVENTS: with DEFER_TASKRUN the completions wait for the reaper.
        submit_and_wait(&rig.ring, 0);
        ReadOp { ring: Rc::clone(self), slot, finished: false }
    }

    /// Runs the deferred completions, drains the CQ and wakes the futures of the reads that
    /// finished; the number of CQEs taken.
    fn reap(&self) -> usize {
        let mut wakers = Vec::new();
        let mut taken = 0;
        {
            let mut rig = self.rig.borrow_mut();
            get_events(&rig.ring, 0);
            let mut ops = self.ops.borrow_mut();
            for cqe in rig.ring.completion() {
                taken += 1;
                let slot = cqe.user_data() as usize;
                match std::mem::replace(&mut ops[slot], Op::Done(cqe.result())) {
                    Op::Waiting(waker) => wakers.extend(waker),
                    Op::Orphaned => {
                        ops[slot] = Op::Idle;
                        self.free.borrow_mut().push(slot);
                    }
                    Op::Idle | Op::Done(_) => {
                        unreachable!("a CQE for slot {slot}, which has no read in flight")
                    }
                }
            }
        }
        for waker in wakers {
            waker.wake();
        }
        taken
    }
}

/// A read in flight on the thread's ring.
struct ReadOp {
    ring: Rc<ThreadRing>,
    slot: usize,
    finished: bool,
}

impl Future for ReadOp {
    type Output = i32;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        let this = &mut *self;
        let mut ops = this.ring.ops.borrow_mut();
        match ops[this.slot] {
            Op::Done(res) => {
                ops[this.slot] = Op::Idle;
                drop(ops);
                this.ring.free.borrow_mut().push(this.slot);
                this.finished = true;
                Poll::Ready(res)
            }
            Op::Waiting(ref mut waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Op::Idle | Op::Orphaned => unreachable!("a read future whose slot has no read"),
        }
    }
}

impl Drop for ReadOp {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut ops = self.ring.ops.borrow_mut();
        match ops[self.slot] {
            Op::Waiting(_) => ops[self.slot] = Op::Orphaned,
            Op::Done(_) => {
                ops[self.slot] = Op::Idle;
                drop(ops);
                self.ring.free.borrow_mut().push(self.slot);
            }
            Op::Idle | Op::Orphaned => {}
        }
    }
}

/// The eventfd registered with a thread's ring (`IORING_REGISTER_EVENTFD`), for `AsyncFd`;
/// the ring it is registered with.
struct RingEvents {
    eventfd: File,
    ring: Rc<ThreadRing>,
}

impl AsRawFd for RingEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }
}

impl RingEvents {
    /// Resets the eventfd's counter (before the deferred completions it announced run).
    fn reset(&self) {
        let mut count = [0u8; 8];
        // The eventfd is non-blocking: EAGAIN (counter already 0) is fine.
        let _ = (&self.eventfd).read(&mut count);
    }
}

/// Wakes the read futures of its thread when the ring's eventfd says completions wait.
async fn reaper(events: AsyncFd<RingEvents>) {
    loop {
        let mut ready = events.readable().await.expect("polling the ring's eventfd");
        events.get_ref().reset();
        if events.get_ref().ring.reap() == 0 {
            ready.clear_ready();
        } else {
            // Keep the readiness (more may wait: a pass may run only part of the deferred
            // completions) and let the woken tasks run first.
            drop(ready);
            tokio::task::yield_now().await;
        }
    }
}

/// One task: reads one block at a time until the batch's `reads` are claimed.
async fn local_reader(ring: Rc<ThreadRing>, claimed: Rc<Cell<u64>>, reads: u64, seed: u64) {
    let mut offsets = Offsets::new(seed);
    while claimed.get() < reads {
        claimed.set(claimed.get() + 1);
        let res = ring.start_read(offsets.offset()).await;
        assert!(res == BLOCK as i32, "ring_modes: per_worker_tokio read returned {res}");
    }
}

struct TokioWorker {
    // Dropped first: the reaper task and its `AsyncFd`.
    local: tokio::task::LocalSet,
    rt: tokio::runtime::Runtime,
    ring: Rc<ThreadRing>,
    inflight: usize,
}

impl Worker for TokioWorker {
    fn run(&mut self, reads: u64) {
        let ring = &self.ring;
        let inflight = self.inflight;
        self.local.block_on(&self.rt, async move {
            let claimed = Rc::new(Cell::new(0));
            let tasks: Vec<_> = (0..inflight)
                .map(|_| {
                    tokio::task::spawn_local(local_reader(
                        Rc::clone(ring),
                        Rc::clone(&claimed),
                        reads,
                        fresh_seed(),
                    ))
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
    }
}

fn tokio_workers(depth: usize) -> Workers {
    let (threads, inflight) = split(depth);
    Workers::start("per_worker_tokio", threads, move |_| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let rig = Rig::new(data_file(), inflight, Flags::SingleIssuerDeferTaskrun, "per_worker_tokio")
            .unwrap_or_else(|e| panic!("per_worker_tokio: ring setup: {e}"));
        let ring = Rc::new(ThreadRing {
            ops: RefCell::new((0..inflight).map(|_| Op::Idle).collect()),
            free: RefCell::new((0..inflight).rev().collect()),
            rig: RefCell::new(rig),
        });
        // SAFETY: `eventfd` takes no pointers; its result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(raw >= 0, "eventfd: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let eventfd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        ring.rig
            .borrow()
            .ring
            .submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .expect("IORING_REGISTER_EVENTFD");
        let events = {
            let _in_runtime = rt.enter();
            // SAFETY: the descriptor is that of `RingEvents::eventfd`, a `File` the
            // `AsyncFd` owns: it stays open and the same until the `AsyncFd` is dropped, and
            // `as_raw_fd` always returns it.
            unsafe {
                AsyncFd::register_with_interest(
                    RingEvents { eventfd, ring: Rc::clone(&ring) },
                    Interest::READABLE,
                )
            }
            .expect("registering the ring's eventfd with tokio")
        };
        let local = tokio::task::LocalSet::new();
        drop(local.spawn_local(reaper(events)));
        Box::new(TokioWorker { local, rt, ring, inflight })
    })
}

// ---------------------------------------------------------------------------------------
// shared_ringkv_*: ringkv's I/O driver on a tokio multi-thread runtime.

struct RingkvEngine {
    rt: tokio::runtime::Runtime,
    file: IoFile,
}

impl RingkvEngine {
    fn new(backend: IoBackend) -> RingkvEngine {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let file = rt.block_on(async {
            let driver = IoDriver::new(backend).unwrap();
            let file = driver.open(data_file(), OpenMode::ReadDirect).await.unwrap();
            black_box(file.read_exact_at(0, BLOCK).await.unwrap());
            if backend == IoBackend::Uring && driver.io_stats().direct_reads == 0 {
                eprintln!("ring_modes: warning: ringkv read {:?} without O_DIRECT", data_file());
            }
            file
        });
        RingkvEngine { rt, file }
    }

    fn run(&self, depth: usize, reads: u64) -> Duration {
        let start = Instant::now();
        self.rt.block_on(async {
            let claimed = Arc::new(AtomicU64::new(0));
            let tasks: Vec<_> = (0..depth)
                .map(|_| {
                    let file = self.file.clone();
                    let claimed = Arc::clone(&claimed);
                    let mut offsets = Offsets::new(fresh_seed());
                    tokio::spawn(async move {
                        while claimed.fetch_add(1, Ordering::Relaxed) < reads {
                            black_box(file.read_exact_at(offsets.offset(), BLOCK).await.unwrap());
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        start.elapsed()
    }
}

// ---------------------------------------------------------------------------------------
// The benchmarks.

/// Reads in a batch of `iters` iterations at `depth`.
fn batch(iters: u64, depth: usize) -> u64 {
    iters.max(MIN_READS_PER_SLOT * depth as u64)
}

/// `elapsed` for `reads` reads, scaled to `iters`.
fn scaled(elapsed: Duration, reads: u64, iters: u64) -> Duration {
    elapsed.mul_f64(iters as f64 / reads as f64)
}

/// A benchmark whose engine is built on its first call (only if the filter selects it) and
/// dropped with the closure.
fn bench_engine<E>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    depth: usize,
    make: impl Fn() -> E,
    run: impl Fn(&E, u64) -> Duration,
) {
    let mut engine: Option<E> = None;
    group.bench_function(name, |b| {
        let engine = engine.get_or_insert_with(&make);
        b.iter_custom(|iters| {
            let reads = batch(iters, depth);
            scaled(run(engine, reads), reads, iters)
        });
    });
}

fn ring_modes(c: &mut Criterion) {
    let flags = flags_supported();
    if let Err(e) = &flags {
        eprintln!("ring_modes: per_thread_sq_dt and per_worker_tokio skipped: {e}");
    }
    for depth in DEPTHS {
        let mut group = c.benchmark_group(format!("ring_modes/{depth}"));
        group.throughput(Throughput::Elements(1));
        bench_engine(
            &mut group,
            "shared_ringkv_uring",
            depth,
            || RingkvEngine::new(IoBackend::Uring),
            |e, n| e.run(depth, n),
        );
        bench_engine(
            &mut group,
            "shared_ringkv_threadpool",
            depth,
            || RingkvEngine::new(IoBackend::ThreadPool),
            |e, n| e.run(depth, n),
        );
        if flags.is_ok() {
            bench_engine(
                &mut group,
                "per_thread_sq_dt",
                depth,
                || per_thread_workers(depth, Flags::SingleIssuerDeferTaskrun, "per_thread_sq_dt"),
                Workers::run,
            );
        }
        bench_engine(
            &mut group,
            "per_thread_plain",
            depth,
            || per_thread_workers(depth, Flags::Plain, "per_thread_plain"),
            Workers::run,
        );
        bench_engine(&mut group, "shared_ring_plain", depth, || shared_ring_workers(depth), Workers::run);
        if flags.is_ok() {
            bench_engine(&mut group, "per_worker_tokio", depth, || tokio_workers(depth), Workers::run);
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = ring_modes
}
criterion_main!(benches);
