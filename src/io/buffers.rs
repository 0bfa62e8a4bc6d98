//! Registered (fixed) write buffers of the ring thread.
//!
//! At ring start, [`FIXED_BUF_COUNT`] buffers of [`FIXED_BUF_LEN`] bytes (4 MiB in all,
//! under the common 8 MiB `RLIMIT_MEMLOCK`) are registered with the kernel, so a write from
//! them skips the per-operation pinning and mapping of user pages. A write whose bytes fit
//! in one buffer is copied into a free one and written with `IORING_OP_WRITE_FIXED`;
//! larger writes, or writes arriving while all buffers are in flight, use ordinary
//! `writev`. tokio-uring has no vectored fixed write, hence the copy.
//!
//! The buffers are `!Send` handles owned by tasks on the ring thread: a buffer returns to
//! the pool only when the operation using it has completed, whatever happened to the
//! caller's future.

use bytes::Bytes;
use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::{BoundedBuf, BoundedBufMut, Slice};

/// Bytes in one registered buffer.
pub(super) const FIXED_BUF_LEN: usize = 256 * 1024;
/// Number of registered buffers.
pub(super) const FIXED_BUF_COUNT: usize = 16;

const _: () = assert!(FIXED_BUF_LEN * FIXED_BUF_COUNT <= 8 * 1024 * 1024);

/// The ring's registered buffers, or nothing when the kernel refused to register them.
pub(super) struct FixedBuffers {
    pool: Option<FixedBufPool<Vec<u8>>>,
}

impl FixedBuffers {
    /// Allocates and registers the buffers. Must run inside the ring's tokio-uring runtime.
    /// A refused registration (typically `RLIMIT_MEMLOCK` for a non-root user) logs one
    /// warning and leaves the ring writing from ordinary buffers; it is never an error.
    pub(super) fn register() -> FixedBuffers {
        let pool = FixedBufPool::new((0..FIXED_BUF_COUNT).map(|_| vec![0u8; FIXED_BUF_LEN]));
        match pool.register() {
            Ok(()) => FixedBuffers { pool: Some(pool) },
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    bytes = FIXED_BUF_LEN * FIXED_BUF_COUNT,
                    "could not register io_uring fixed buffers (RLIMIT_MEMLOCK?); \
                     writing from ordinary buffers"
                );
                FixedBuffers { pool: None }
            }
        }
    }

    /// Copies `bufs` (`total` bytes in all), back to back, into a free registered buffer.
    /// `None` if they do not fit in one buffer, no buffer is free, or none is registered.
    pub(super) fn gather(&self, bufs: &[Bytes], total: usize) -> Option<Slice<FixedBuf>> {
        debug_assert_eq!(total, bufs.iter().map(bytes::Bytes::len).sum::<usize>());
        if total == 0 || total > FIXED_BUF_LEN {
            return None;
        }
        let mut fixed = self.pool.as_ref()?.try_next(FIXED_BUF_LEN)?;
        // Every buffer starts fully initialised (`vec![0; _]`), so any `begin` is within
        // the initialised part, as `slice` requires.
        debug_assert_eq!(fixed.bytes_init(), FIXED_BUF_LEN);
        let mut at = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            let mut window = fixed.slice(at..at + b.len());
            window.put_slice(b);
            fixed = window.into_inner();
            at += b.len();
        }
        assert_eq!(at, total);
        Some(fixed.slice(0..total))
    }
}
