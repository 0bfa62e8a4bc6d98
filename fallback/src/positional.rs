//! Blocking positional I/O helpers, meant to run inside [`Pool`](crate::Pool) jobs.
//!
//! None of them moves a file cursor (`pread`/`pwritev` on Unix, `seek_read`/`seek_write` on
//! Windows, where the cursor does move but nothing here relies on it), so concurrent jobs
//! may share one [`File`].

use std::fs::File;
use std::io::{self, IoSlice};
use std::path::Path;

/// Most iovecs passed to one vectored write (`IOV_MAX` on Linux and the BSDs).
const MAX_IOVECS: usize = 1024;

/// Reads exactly `buf.len()` bytes at `offset`.
///
/// A file ending before `offset + buf.len()` is an error of kind
/// [`io::ErrorKind::UnexpectedEof`]; the bytes before the end are in `buf`.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let n = read_to_fill_at(file, buf, offset)?;
    if n < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read of {} bytes at offset {offset} hit the end of the file after {n} bytes", buf.len()),
        ));
    }
    Ok(())
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read
/// (less than `buf.len()` only at the end of the file). `EINTR` is retried.
pub fn read_to_fill_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    check_range(offset, buf.len())?;
    let mut filled = 0;
    while filled < buf.len() {
        match read_once_at(file, &mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => {
                assert!(n <= buf.len() - filled, "the kernel read more than asked");
                filled += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes every byte of `bufs`, back to back, starting at `offset`.
///
/// One `pwritev` per at most 1024 slices on Linux; a short write continues where it
/// stopped, `EINTR` is retried, a write of zero bytes is [`io::ErrorKind::WriteZero`].
/// Elsewhere the slices are written one positional write at a time.
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    write_all_vectored_with(bufs, offset, |iov, at| write_vectored_once_at(file, iov, at))
}

/// Writes every byte of `bufs` at `offset` as [`write_all_vectored_at`] does, each
/// `pwritev2` with `RWF_DSYNC` on Linux: when it returns `Ok`, these bytes (and the
/// metadata needed to read them back) are durable, as after a write and an `fdatasync` of
/// their range. Earlier writes to other ranges are not covered (the kernel writes back only
/// the range written). Elsewhere: the write, then `sync_data` of the whole file.
pub fn write_all_vectored_dsync_at(file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        write_all_vectored_with(bufs, offset, |iov, at| {
            Ok(rustix::io::pwritev2(file, iov, at, rustix::io::ReadWriteFlags::DSYNC)?)
        })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        write_all_vectored_at(file, bufs, offset)?;
        file.sync_data()
    }
}

/// Makes sure `offset..offset + len` is allocated on disk, extending the file if it is
/// shorter (`fallocate` mode 0 on Linux). Where the file system cannot preallocate, or on
/// other platforms, it only extends the length to `offset + len` if that is larger.
pub fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset + len overflows"))?;
    if len == 0 {
        return Ok(());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{fallocate, FallocateFlags};
        match fallocate(file, FallocateFlags::empty(), offset, len) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::NOTSUP => {}
            Err(e) => return Err(e.into()),
        }
    }
    extend_to(file, end)
}

/// Makes the entries of directory `path` durable (`fsync` of the directory). A no-op where
/// directories cannot be synced (Windows).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(path)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

fn extend_to(file: &File, end: u64) -> io::Result<()> {
    if file.metadata()?.len() < end {
        file.set_len(end)?;
    }
    Ok(())
}

fn check_range(offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(_) => Ok(()),
        None => Err(io::Error::new(io::ErrorKind::InvalidInput, "offset + len overflows")),
    }
}

#[cfg(unix)]
fn read_once_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_once_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(not(any(unix, windows)))]
fn read_once_at(_file: &File, _buf: &mut [u8], _offset: u64) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "positional reads are not supported here"))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn write_vectored_once_at(file: &File, iov: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
    Ok(rustix::io::pwritev(file, iov, offset)?)
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn write_vectored_once_at(file: &File, iov: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, &iov[0], offset)
}

#[cfg(windows)]
fn write_vectored_once_at(file: &File, iov: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, &iov[0], offset)
}

#[cfg(not(any(unix, windows)))]
fn write_vectored_once_at(_file: &File, _iov: &[IoSlice<'_>], _offset: u64) -> io::Result<usize> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "positional writes are not supported here"))
}

/// The write-all loop, apart from the system call so tests can force short writes.
///
/// `write(iov, at)` writes a prefix of `iov` at file offset `at` and returns its length;
/// `iov` is never empty, holds at most [`MAX_IOVECS`] slices, and none of them is empty.
fn write_all_vectored_with(
    bufs: &[&[u8]],
    mut offset: u64,
    mut write: impl FnMut(&[IoSlice<'_>], u64) -> io::Result<usize>,
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    check_range(offset, total)?;
    // Position of the first unwritten byte: `bufs[idx][skip]`.
    let mut idx = 0;
    let mut skip = 0;
    let mut written = 0usize;
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len().min(MAX_IOVECS));
    loop {
        while idx < bufs.len() && skip == bufs[idx].len() {
            idx += 1;
            skip = 0;
        }
        if idx == bufs.len() {
            assert_eq!(written, total);
            return Ok(());
        }
        iov.clear();
        iov.push(IoSlice::new(&bufs[idx][skip..]));
        iov.extend(
            bufs[idx + 1..].iter().filter(|b| !b.is_empty()).take(MAX_IOVECS - 1).map(|b| IoSlice::new(b)),
        );
        let asked: usize = iov.iter().map(|s| s.len()).sum();
        let mut n = match write(&iov, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("wrote 0 bytes at offset {offset} with {} bytes left", total - written),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        assert!(n <= asked, "the kernel wrote {n} bytes of {asked}");
        offset += n as u64;
        written += n;
        while n > 0 {
            let left = bufs[idx].len() - skip;
            if n >= left {
                n -= left;
                idx += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
// Unit tests build small images and patterns: their casts cannot truncate or are meant to.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]
mod tests {
    use super::*;
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// The whole file, read from offset 0 (never through the shared cursor).
    fn contents(file: &File) -> Vec<u8> {
        let mut out = vec![0u8; file.metadata().unwrap().len() as usize];
        read_exact_at(file, &mut out, 0).unwrap();
        out
    }

    #[test]
    fn short_writes_are_continued() {
        // A fake system call that writes at most 7 bytes (and at most 3 slices) per call.
        let bufs: Vec<Vec<u8>> =
            (0..50).map(|i| pattern(if i % 5 == 0 { 0 } else { i * 3 }, i as u8)).collect();
        let slices: Vec<&[u8]> = bufs.iter().map(std::vec::Vec::as_slice).collect();
        let expected: Vec<u8> = bufs.concat();
        let mut image = vec![0u8; 10];
        let mut calls = 0;
        write_all_vectored_with(&slices, 10, |iov, at| {
            calls += 1;
            assert!(!iov.is_empty() && iov.len() <= MAX_IOVECS);
            assert!(iov.iter().all(|s| !s.is_empty()));
            assert_eq!(at as usize, image.len(), "writes are back to back");
            let mut budget = 7;
            for s in iov.iter().take(3) {
                let take = s.len().min(budget);
                image.extend_from_slice(&s[..take]);
                budget -= take;
                if budget == 0 || take < s.len() {
                    break;
                }
            }
            Ok(7 - budget)
        })
        .unwrap();
        assert!(image[10..] == expected[..], "content differs");
        assert!(calls >= expected.len() / 7);
    }

    #[test]
    fn interrupted_is_retried_and_zero_is_an_error() {
        let data = [1u8; 10];
        let mut first = true;
        write_all_vectored_with(&[&data], 0, |iov, _| {
            if std::mem::take(&mut first) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            Ok(iov[0].len())
        })
        .unwrap();
        let err = write_all_vectored_with(&[&data], 0, |_, _| Ok(0)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        let err = write_all_vectored_with(&[&data], u64::MAX - 3, |_, _| Ok(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn large_iovec_counts_are_split() {
        // 3000 slices exceed IOV_MAX (1024): the real pwritev would fail with EINVAL if
        // they were passed at once.
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("iov"))
            .unwrap();
        let bufs: Vec<Vec<u8>> = (0..3000).map(|i| pattern(i % 17, i as u8)).collect();
        let slices: Vec<&[u8]> = bufs.iter().map(std::vec::Vec::as_slice).collect();
        write_all_vectored_at(&file, &slices, 5).unwrap();
        let got = contents(&file);
        assert_eq!(&got[..5], &[0; 5]);
        assert!(got[5..] == bufs.concat()[..], "content differs");

        // A multi-MiB write through a few big slices.
        let big: Vec<Vec<u8>> = (0..4).map(|i| pattern(3 << 20, i)).collect();
        let slices: Vec<&[u8]> = big.iter().map(std::vec::Vec::as_slice).collect();
        write_all_vectored_at(&file, &slices, 0).unwrap();
        assert!(contents(&file) == big.concat(), "content differs");
    }

    #[test]
    fn read_past_eof_is_unexpected_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();

        let mut buf = [0u8; 4];
        read_exact_at(&file, &mut buf, 6).unwrap();
        assert_eq!(&buf, b"6789");

        let mut buf = [0u8; 8];
        let err = read_exact_at(&file, &mut buf, 6).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(read_to_fill_at(&file, &mut buf, 6).unwrap(), 4);
        assert_eq!(read_to_fill_at(&file, &mut buf, 100).unwrap(), 0);
        let err = read_exact_at(&file, &mut buf, 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn allocate_extends_but_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.path().join("alloc"))
            .unwrap();
        allocate(&file, 0, 4096).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4096);
        allocate(&file, 100, 10).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4096);
        allocate(&file, 8192, 0).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 4096);
        assert!(allocate(&file, u64::MAX, 2).is_err());
        sync_dir(dir.path()).unwrap();
    }

    #[test]
    fn concurrent_jobs_share_a_file() {
        use futures::executor::block_on;
        use futures::future::join_all;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.path().join("shared"))
                .unwrap(),
        );
        let pool = crate::Pool::new(8, "t-positional");
        let chunk = 4096usize;
        let writes: Vec<_> = (0..256u64)
            .map(|i| {
                let file = Arc::clone(&file);
                pool.run(move || {
                    let data = pattern(chunk, i as u8);
                    write_all_vectored_at(&file, &[&data[..100], &data[100..]], i * chunk as u64)
                })
            })
            .collect();
        for r in block_on(join_all(writes)) {
            r.unwrap().unwrap();
        }
        let reads: Vec<_> = (0..256u64)
            .map(|i| {
                let file = Arc::clone(&file);
                pool.run(move || {
                    let mut buf = vec![0u8; chunk];
                    read_exact_at(&file, &mut buf, i * chunk as u64).map(|()| buf)
                })
            })
            .collect();
        for (i, r) in block_on(join_all(reads)).into_iter().enumerate() {
            assert_eq!(r.unwrap().unwrap(), pattern(chunk, i as u8));
        }
    }
}
