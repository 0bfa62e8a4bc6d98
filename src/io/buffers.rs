//! Page-aligned heap buffers, and the registered (fixed) write buffers of the direct ring.
//!
//! [`AlignedBuf`] is a zeroed allocation aligned to [`BUF_ALIGN`] bytes: what `O_DIRECT`
//! transfers need (memory aligned to the device's DMA alignment, which no block device
//! makes larger than a page) and what registered buffers are made of.
//!
//! At ring start, [`FIXED_BUF_COUNT`] buffers of [`FIXED_BUF_LEN`] bytes (4 MiB in all,
//! under the common 8 MiB `RLIMIT_MEMLOCK`) are registered with the direct ring, so a write
//! from them skips the per-operation pinning and mapping of user pages. A write whose bytes
//! fit in one buffer is copied into a free one ([`FixedBuffers::gather`]) and written with
//! `IORING_OP_WRITE_FIXED`; larger writes, or writes arriving while all buffers are in
//! flight, use ordinary `writev`. Where registration is refused (`RLIMIT_MEMLOCK`) one
//! warning is logged and every write uses ordinary buffers; it is never an error.
//!
//! Invariant: a buffer is used by at most one operation at a time. A [`Lease`] is the only
//! way to one; the operation that writes from it owns the lease until its last CQE, and the
//! buffer returns to the free list only when the lease drops.

use std::alloc::Layout;
use std::ptr::NonNull;

use bytes::Bytes;
use parking_lot::Mutex;

/// Bytes in one registered buffer.
pub(super) const FIXED_BUF_LEN: usize = 256 * 1024;
/// Number of registered buffers.
pub(super) const FIXED_BUF_COUNT: usize = 16;
/// Alignment of every [`AlignedBuf`]: a page, the largest `O_DIRECT` memory alignment a
/// block device asks for.
pub(super) const BUF_ALIGN: usize = 4096;

const _: () = assert!(FIXED_BUF_LEN * FIXED_BUF_COUNT <= 8 * 1024 * 1024);
const _: () = assert!(FIXED_BUF_COUNT <= u16::MAX as usize);
const _: () = assert!(FIXED_BUF_LEN.is_multiple_of(BUF_ALIGN));

/// A zeroed heap buffer of `len` bytes aligned to [`BUF_ALIGN`].
pub(super) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an `AlignedBuf` owns its allocation exclusively (like a `Box<[u8]>`); shared
// references only read it.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above: `&AlignedBuf` gives read access only.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (at least one byte is allocated).
    pub(super) fn zeroed(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (`len.max(1)`) and a power-of-two alignment.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1), BUF_ALIGN).expect("a buffer length below isize::MAX")
    }

    /// Its length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The address of its first byte, for an SQE (the kernel writes there).
    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its bytes.
    pub(super) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation, or written by
        // the kernel) bytes owned by `self`, borrowed here for `&self`'s lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this same layout, and freed only here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
    }
}

/// The registered buffers of the direct ring and their free list.
pub(super) struct FixedBuffers {
    /// Never moved or freed while the ring lives (the ring and this pool are leaked
    /// together, for the life of the process).
    bufs: Vec<AlignedBuf>,
    free: Mutex<Vec<u16>>,
}

/// Exclusive use of one registered buffer until it drops.
pub(super) struct Lease {
    pool: &'static FixedBuffers,
    index: u16,
}

impl FixedBuffers {
    /// Allocates the buffers and registers them with `submitter`'s ring. A refused
    /// registration (typically `RLIMIT_MEMLOCK`) logs one warning and returns `None`.
    pub(super) fn register(submitter: &io_uring::Submitter<'_>) -> Option<FixedBuffers> {
        let mut bufs: Vec<AlignedBuf> = (0..FIXED_BUF_COUNT).map(|_| AlignedBuf::zeroed(FIXED_BUF_LEN)).collect();
        let iovecs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
            .collect();
        // SAFETY: each iovec spans one live allocation of `bufs`; the caller keeps the
        // returned pool (and so `bufs`, whose heap blocks never move) for as long as the
        // ring lives (both are leaked for the life of the process).
        match unsafe { submitter.register_buffers(&iovecs) } {
            Ok(()) => {
                // Indices fit in u16 (FIXED_BUF_COUNT checked above).
                #[allow(clippy::cast_possible_truncation)]
                let free = (0..FIXED_BUF_COUNT as u16).rev().collect();
                Some(FixedBuffers { bufs, free: Mutex::new(free) })
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    bytes = FIXED_BUF_LEN * FIXED_BUF_COUNT,
                    "could not register io_uring fixed buffers (RLIMIT_MEMLOCK?); \
                     writing from ordinary buffers"
                );
                None
            }
        }
    }

    /// Copies `bufs` (`total` bytes in all), back to back, into a free registered buffer.
    /// `None` if they do not fit in one buffer or no buffer is free.
    pub(super) fn gather(&'static self, bufs: &[Bytes], total: usize) -> Option<Lease> {
        debug_assert_eq!(total, bufs.iter().map(Bytes::len).sum::<usize>());
        if total == 0 || total > FIXED_BUF_LEN {
            return None;
        }
        let index = self.free.lock().pop()?;
        let lease = Lease { pool: self, index };
        let mut at = 0;
        for b in bufs {
            // SAFETY: the lease gives this thread the only use of the buffer (no operation
            // is in flight on it: a buffer returns to the free list only when its lease
            // drops), `at + b.len() <= total <= FIXED_BUF_LEN`, and `b` is not inside it.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), lease.ptr().add(at), b.len()) };
            at += b.len();
        }
        assert_eq!(at, total);
        Some(lease)
    }
}

impl Lease {
    /// The registered buffer's index (`buf_index` of the SQE).
    pub(super) fn index(&self) -> u16 {
        self.index
    }

    /// The address of the buffer's first byte.
    pub(super) fn ptr(&self) -> *mut u8 {
        self.pool.bufs[usize::from(self.index)].ptr.as_ptr()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.free.lock().push(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        for len in [0, 1, 511, 4096, 4097, 1 << 20] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_mut_ptr() as usize % BUF_ALIGN, 0);
            assert_eq!(b.as_slice().len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
