//! The io layer through its public API, on both backends.
//!
//! Every test runs once per backend: `io_uring` (skipped, with a message, only where the
//! probe says it is unavailable) and the thread pool.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::future::Future;
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use ringkv::io::{IoBackend, IoDriver, IoFile, OpenMode};
use ringkv::Error;

/// A driver per available backend.
fn drivers() -> Vec<IoDriver> {
    let mut drivers = Vec::new();
    match IoDriver::new(IoBackend::Uring) {
        Ok(d) => drivers.push(d),
        Err(e) => eprintln!("io_uring unavailable, skipping the Uring backend: {e}"),
    }
    drivers.push(IoDriver::new(IoBackend::ThreadPool).unwrap());
    drivers
}

fn multi_thread<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(f)
}

/// Deterministic bytes, different per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Splits `data` into `Bytes` chunks of varied sizes (some empty).
fn chunks(data: &[u8], sizes: &[usize]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - at);
        out.push(Bytes::copy_from_slice(&data[at..at + n]));
        at += n;
        i += 1;
    }
    out
}

fn io_kind(e: &Error) -> Option<ErrorKind> {
    match e {
        Error::Io { source, .. } => Some(source.kind()),
        _ => None,
    }
}

async fn create(d: &IoDriver, path: &Path) -> IoFile {
    d.open(path, OpenMode::Create).await.unwrap()
}

#[test]
fn backend_is_resolved() {
    for d in drivers() {
        assert_ne!(d.backend(), IoBackend::Auto);
        assert_eq!(d.clone().backend(), d.backend());
    }
    assert_eq!(IoDriver::new(IoBackend::ThreadPool).unwrap().backend(), IoBackend::ThreadPool);
}

#[test]
fn env_overrides_auto_only() {
    // This is the only test that touches the environment or uses `Auto`.
    std::env::set_var("RINGKV_IO_BACKEND", "bogus");
    let err = IoDriver::new(IoBackend::Auto).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // A forced backend ignores the variable.
    assert_eq!(IoDriver::new(IoBackend::ThreadPool).unwrap().backend(), IoBackend::ThreadPool);
    std::env::set_var("RINGKV_IO_BACKEND", "threadpool");
    assert_eq!(IoDriver::new(IoBackend::Auto).unwrap().backend(), IoBackend::ThreadPool);
    std::env::remove_var("RINGKV_IO_BACKEND");
    let auto = IoDriver::new(IoBackend::Auto).unwrap();
    let uring_ok = IoDriver::new(IoBackend::Uring).is_ok();
    let expected = if uring_ok { IoBackend::Uring } else { IoBackend::ThreadPool };
    assert_eq!(auto.backend(), expected);
}

#[test]
fn vectored_write_read_roundtrip() {
    multi_thread(async {
        for d in drivers() {
            let dir = tempfile::tempdir().unwrap();
            let f = create(&d, &dir.path().join("data")).await;
            let before = d.io_stats();

            // Small: fits a registered buffer.
            let small = pattern(10_000, 1);
            f.writev_at(0, chunks(&small, &[1, 0, 4096, 333])).await.unwrap();
            assert_eq!(f.read_exact_at(0, small.len()).await.unwrap(), small);
            let after_small = d.io_stats();
            assert_eq!(after_small.writes, before.writes + 1);
            if d.backend() == IoBackend::Uring {
                println!("uring stats after a small write: {after_small:?}");
            } else {
                assert_eq!(after_small.fixed_writes, 0);
            }

            // Exactly one registered buffer (256 KiB), then 1 MiB crossing its size.
            let exact = pattern(256 * 1024, 2);
            f.writev_at(20_000, chunks(&exact, &[65_536])).await.unwrap();
            let big = pattern(1 << 20, 3);
            let fixed_before_big = d.io_stats().fixed_writes;
            f.writev_at(300_000, chunks(&big, &[100_000, 7, 250_000])).await.unwrap();
            assert_eq!(d.io_stats().fixed_writes, fixed_before_big, "1 MiB cannot be fixed");
            assert!(f.read_exact_at(20_000, exact.len()).await.unwrap() == exact);
            assert!(f.read_exact_at(300_000, big.len()).await.unwrap() == big);
            assert!(f.read_at(300_000, big.len()).await.unwrap() == big);

            // More slices than one writev takes (IOV_MAX = 1024).
            let many = pattern(3000 * 3, 4);
            f.writev_at(2 << 20, chunks(&many, &[3])).await.unwrap();
            assert!(f.read_exact_at(2 << 20, many.len()).await.unwrap() == many);

            // Nothing to write, nothing to read.
            f.writev_at(0, Vec::new()).await.unwrap();
            f.writev_at(0, vec![Bytes::new()]).await.unwrap();
            assert!(f.read_exact_at(5, 0).await.unwrap().is_empty());

            f.sync_data().await.unwrap();
            f.sync_all().await.unwrap();
            let stats = d.io_stats();
            assert!(stats.fsyncs >= 2 && stats.reads >= 6, "{stats:?}");
            if d.backend() == IoBackend::Uring && stats.fixed_writes == 0 {
                eprintln!("note: io_uring fixed buffers are not registered on this host");
            }
            assert!(stats.fixed_writes <= 3, "{stats:?}");
            // Independent reads of the same file, many in flight at once.
            let reads: Vec<_> = (0..64u64)
                .map(|i| {
                    let f = f.clone();
                    async move { f.read_exact_at(300_000 + i * 1000, 1000).await }
                })
                .collect();
            for (i, r) in futures::future::join_all(reads).await.into_iter().enumerate() {
                assert_eq!(r.unwrap(), &big[i * 1000..(i + 1) * 1000]);
            }
        }
    });
}

/// The durable write: every byte lands (small through a registered buffer, large and
/// many-sliced through `writev`), counted as one write and one fsync; an error names
/// `"write_dsync"` and the path.
#[test]
fn durable_write_lands_whole_and_counts_one_write_and_one_sync() {
    multi_thread(async {
        for d in drivers() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log");
            let f = create(&d, &path).await;
            let before = d.io_stats();
            let small = pattern(3000, 7);
            f.writev_at_dsync(0, chunks(&small, &[1, 0, 999])).await.unwrap();
            let after = d.io_stats();
            assert_eq!(
                (after.writes, after.fsyncs),
                (before.writes + 1, before.fsyncs + 1),
                "{:?}",
                d.backend()
            );
            let big = pattern(1 << 20, 8);
            f.writev_at_dsync(4096, chunks(&big, &[3, 70_000])).await.unwrap();
            assert_eq!(f.read_exact_at(0, small.len()).await.unwrap(), small);
            assert!(f.read_exact_at(4096, big.len()).await.unwrap() == big);
            assert_eq!(f.len().await.unwrap(), 4096 + (1 << 20));
            f.writev_at_dsync(0, Vec::new()).await.unwrap();

            let ro = d.open(&path, OpenMode::Read).await.unwrap();
            let err = ro.writev_at_dsync(0, vec![Bytes::from_static(b"x")]).await.unwrap_err();
            match &err {
                Error::Io { path: p, op, .. } => {
                    assert_eq!(p, &path);
                    assert_eq!(*op, "write_dsync");
                }
                other => panic!("{other:?}"),
            }
        }
    });
}

#[test]
fn fixed_buffers_are_used_when_registered() {
    let Ok(d) = IoDriver::new(IoBackend::Uring) else {
        eprintln!("io_uring unavailable, skipping");
        return;
    };
    multi_thread(async {
        let dir = tempfile::tempdir().unwrap();
        let f = create(&d, &dir.path().join("fixed")).await;
        for i in 0..8u64 {
            f.writev_at(i * 4096, vec![Bytes::from(pattern(4096, i))]).await.unwrap();
        }
        let stats = d.io_stats();
        // Registration may be refused (RLIMIT_MEMLOCK) on some hosts: then no write is fixed.
        println!("uring stats: {stats:?}");
        assert!(stats.fixed_writes == 0 || stats.fixed_writes == 8, "{stats:?}");
        for i in 0..8u64 {
            assert_eq!(f.read_exact_at(i * 4096, 4096).await.unwrap(), pattern(4096, i));
        }
    });
}

#[test]
fn reading_past_the_end() {
    multi_thread(async {
        for d in drivers() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("short");
            let f = create(&d, &path).await;
            f.writev_at(0, vec![Bytes::from_static(b"0123456789")]).await.unwrap();

            assert_eq!(f.read_exact_at(6, 4).await.unwrap(), b"6789");
            let err = f.read_exact_at(6, 5).await.unwrap_err();
            assert_eq!(io_kind(&err), Some(ErrorKind::UnexpectedEof), "{err}");
            match &err {
                Error::Io { path: p, op, .. } => {
                    assert_eq!(p, &path);
                    assert_eq!(*op, "read");
                }
                other => panic!("{other}"),
            }
            let err = f.read_exact_at(100, 1).await.unwrap_err();
            assert_eq!(io_kind(&err), Some(ErrorKind::UnexpectedEof), "{err}");

            assert_eq!(f.read_at(6, 100).await.unwrap(), b"6789");
            assert!(f.read_at(10, 100).await.unwrap().is_empty());
            assert!(f.read_at(1000, 100).await.unwrap().is_empty());
        }
    });
}

#[test]
fn len_set_len_allocate() {
    multi_thread(async {
        for d in drivers() {
            let dir = tempfile::tempdir().unwrap();
            let f = create(&d, &dir.path().join("sized")).await;
            assert_eq!(f.len().await.unwrap(), 0);
            f.writev_at(0, vec![Bytes::from(vec![7u8; 5000])]).await.unwrap();
            assert_eq!(f.len().await.unwrap(), 5000);
            f.set_len(100).await.unwrap();
            assert_eq!(f.len().await.unwrap(), 100);
            f.set_len(8192).await.unwrap();
            assert_eq!(f.len().await.unwrap(), 8192);
            assert_eq!(f.read_exact_at(99, 2).await.unwrap(), vec![7, 0]);
            f.allocate(0, 1 << 20).await.unwrap();
            assert_eq!(f.len().await.unwrap(), 1 << 20);
            f.allocate(0, 10).await.unwrap();
            assert_eq!(f.len().await.unwrap(), 1 << 20);
            f.allocate(5, 0).await.unwrap();

            // A read-only file refuses writes, with the op named.
            let ro = d.open(f.path(), OpenMode::Read).await.unwrap();
            let err = ro.writev_at(0, vec![Bytes::from_static(b"x")]).await.unwrap_err();
            assert!(matches!(err, Error::Io { op: "write", .. }), "{err}");
            let err = ro.set_len(0).await.unwrap_err();
            assert!(matches!(err, Error::Io { op: "truncate", .. }), "{err}");
            assert_eq!(f.len().await.unwrap(), 1 << 20);
        }
    });
}

#[test]
fn directory_operations() {
    multi_thread(async {
        for d in drivers() {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("a/b/c");
            assert!(!d.exists(&root).await.unwrap());
            d.create_dir_all(&root).await.unwrap();
            d.create_dir_all(&root).await.unwrap();
            assert!(d.exists(&root).await.unwrap());

            let missing = root.join("missing");
            let err = d.open(&missing, OpenMode::Read).await.unwrap_err();
            assert!(matches!(&err, Error::Io { op: "open", path, .. } if path == &missing), "{err}");
            assert_eq!(io_kind(&err), Some(ErrorKind::NotFound));
            let err = d.open(&missing, OpenMode::ReadWrite).await.unwrap_err();
            assert_eq!(io_kind(&err), Some(ErrorKind::NotFound));

            let tmp = root.join("CURRENT.tmp");
            let f = d.open(&tmp, OpenMode::CreateNew).await.unwrap();
            let err = d.open(&tmp, OpenMode::CreateNew).await.unwrap_err();
            assert_eq!(io_kind(&err), Some(ErrorKind::AlreadyExists), "{err}");
            f.writev_at(0, vec![Bytes::from_static(b"manifest-7")]).await.unwrap();
            f.sync_all().await.unwrap();
            drop(f);
            // `Create` opens without truncating.
            let again = d.open(&tmp, OpenMode::Create).await.unwrap();
            assert_eq!(again.len().await.unwrap(), 10);
            drop(again);

            for name in ["wal-0002", "wal-0001", "data-9"] {
                create(&d, &root.join(name)).await;
            }
            d.rename(&tmp, &root.join("CURRENT")).await.unwrap();
            d.sync_dir(&root).await.unwrap();
            assert_eq!(d.read_dir(&root).await.unwrap(), vec!["CURRENT", "data-9", "wal-0001", "wal-0002"]);
            assert!(!d.exists(&tmp).await.unwrap());
            let current = d.open(&root.join("CURRENT"), OpenMode::Read).await.unwrap();
            assert_eq!(current.read_at(0, 100).await.unwrap(), b"manifest-7");

            d.remove_file(&root.join("wal-0001")).await.unwrap();
            assert_eq!(d.read_dir(&root).await.unwrap(), vec!["CURRENT", "data-9", "wal-0002"]);
            let err = d.remove_file(&root.join("wal-0001")).await.unwrap_err();
            assert!(matches!(err, Error::Io { op: "remove", .. }), "{err}");
            let err = d.rename(&missing, &root.join("x")).await.unwrap_err();
            assert!(matches!(err, Error::Io { op: "rename", .. }), "{err}");
            let err = d.read_dir(&missing).await.unwrap_err();
            assert!(matches!(err, Error::Io { op: "read_dir", .. }), "{err}");
            let err = d.sync_dir(&missing).await.unwrap_err();
            assert!(matches!(err, Error::Io { op: "fsync", .. }), "{err}");
        }
    });
}

#[test]
fn five_hundred_drivers_at_once() {
    for backend in [IoBackend::Uring, IoBackend::ThreadPool] {
        if IoDriver::new(backend).is_err() {
            eprintln!("{backend:?} unavailable, skipping");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let drivers: Vec<IoDriver> = (0..500).map(|_| IoDriver::new(backend).unwrap()).collect();
        multi_thread(async {
            let opens = drivers.iter().enumerate().map(|(i, d)| {
                let path = dir.path().join(format!("db-{i}"));
                async move {
                    let f = d.open(&path, OpenMode::CreateNew).await.unwrap();
                    f.writev_at(0, vec![Bytes::from(pattern(4096, i as u64))]).await.unwrap();
                    f.sync_data().await.unwrap();
                    f
                }
            });
            // Every driver and every file is alive at the same time.
            let files = futures::future::join_all(opens).await;
            for (i, f) in files.iter().enumerate() {
                assert_eq!(f.read_exact_at(0, 4096).await.unwrap(), pattern(4096, i as u64));
            }
            for d in &drivers {
                let s = d.io_stats();
                assert_eq!((s.writes, s.fsyncs, s.reads), (1, 1, 1));
            }
        });
    }
}

/// Waits until `f` has `len` bytes (a write whose future was dropped still completes).
async fn wait_for_len(f: &IoFile, len: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = f.len().await.unwrap();
        assert!(now <= len);
        if now == len {
            return;
        }
        assert!(Instant::now() < deadline, "the dropped write never completed ({now} of {len})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A file at `path` (a new name per try) with a write of `data` at offset 0 still in
/// flight after its first poll, the write's future dropped. The first poll of a buffered
/// write reaps for up to 20 us (`io/direct.rs` invariant 8), and on a loaded machine a
/// yield inside it can last long enough for 32 MiB to land: up to 5 files are tried, and
/// the test fails only if every write finished within its first poll.
async fn in_flight_write(d: &IoDriver, path: &std::path::Path, data: &[Bytes]) -> IoFile {
    for attempt in 0..5 {
        let f = create(d, &path.with_extension(attempt.to_string())).await;
        if f.writev_at(0, data.to_vec()).now_or_never().is_none() {
            return f;
        }
    }
    panic!("5 writes of 32 MiB each finished in one poll");
}

#[test]
fn dropped_futures_are_safe() {
    multi_thread(async {
        for d in drivers() {
            let dir = tempfile::tempdir().unwrap();
            let big = pattern(32 << 20, 9);
            let chunked = chunks(&big, &[1 << 20]);

            // Never polled: nothing is submitted.
            let f = create(&d, &dir.path().join("never")).await;
            drop(f.writev_at(0, chunked.clone()));
            f.sync_all().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(f.len().await.unwrap(), 0);

            // Polled once, then dropped: the write completes in full.
            let f = in_flight_write(&d, &dir.path().join("dropped"), &chunked).await;
            wait_for_len(&f, big.len() as u64).await;
            // The length can run ahead of the data of a write in flight: read until equal.
            let deadline = Instant::now() + Duration::from_secs(30);
            while f.read_exact_at(0, big.len()).await.unwrap() != big {
                assert!(Instant::now() < deadline, "the dropped write left wrong bytes");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }

            // Small (fixed-buffer) writes and reads dropped in flight, then the file itself.
            let f = create(&d, &dir.path().join("churn")).await;
            for i in 0..200u64 {
                let data = Bytes::from(pattern(4096, i));
                let _ = f.writev_at(i * 4096, vec![data]).now_or_never();
                let _ = f.read_at(i * 2048, 4096).now_or_never();
            }
            let path = f.path().to_owned();
            drop(f);
            let f = d.open(&path, OpenMode::Read).await.unwrap();
            wait_for_len(&f, 200 * 4096).await;
            for i in 0..200u64 {
                let deadline = Instant::now() + Duration::from_secs(30);
                while f.read_exact_at(i * 4096, 4096).await.unwrap() != pattern(4096, i) {
                    assert!(Instant::now() < deadline, "write {i} never landed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }

            // Dropping a file with a big write in flight closes it only after the write.
            let f = in_flight_write(&d, &dir.path().join("closed-while-writing"), &chunked).await;
            let path = f.path().to_owned();
            drop(f);
            let f = d.open(&path, OpenMode::Read).await.unwrap();
            wait_for_len(&f, big.len() as u64).await;
        }
    });
}

/// One small roundtrip, for the executor tests.
async fn roundtrip(d: IoDriver, path: std::path::PathBuf) {
    let f = d.open(&path, OpenMode::Create).await.unwrap();
    let data = pattern(70_000, 5);
    f.writev_at(7, chunks(&data, &[1000, 69_000])).await.unwrap();
    f.sync_data().await.unwrap();
    assert!(f.read_exact_at(7, data.len()).await.unwrap() == data);
    assert_eq!(f.len().await.unwrap(), 7 + data.len() as u64);
    assert_eq!(d.read_dir(path.parent().unwrap()).await.unwrap().len(), 1);
}

#[test]
fn works_on_tokio_multi_thread() {
    for d in drivers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        multi_thread(async move {
            // From a spawned task, so the future must be `Send + 'static`.
            tokio::spawn(roundtrip(d, path)).await.unwrap();
        });
    }
}

#[test]
fn works_on_tokio_current_thread() {
    for d in drivers() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(roundtrip(d, dir.path().join("f")));
    }
}

#[test]
fn works_on_futures_block_on() {
    for d in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(roundtrip(d, dir.path().join("f")));
    }
}

#[test]
fn works_on_a_futures_thread_pool() {
    let pool = futures::executor::ThreadPool::builder().pool_size(2).create().unwrap();
    for d in drivers() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = futures::channel::oneshot::channel();
        let path = dir.path().join("f");
        pool.spawn_ok(async move {
            roundtrip(d, path).await;
            tx.send(()).unwrap();
        });
        futures::executor::block_on(rx).unwrap();
    }
}

/// Every read of a file opened `ReadDirect` near the block boundaries of a 4 KiB-block
/// device returns the bytes written, as `read_at` / `read_exact_at` of a buffered file
/// would: while the written range is still dirty in the page cache (the kernel writes it
/// back before an `O_DIRECT` read), after `fdatasync`, and after the file's pages were
/// dropped from the cache (`POSIX_FADV_DONTNEED`), so the reads come from the device.
/// Returns the driver's `direct_reads`.
async fn reads_near_block_boundaries_match(d: &IoDriver, dir: &Path) -> u64 {
    const BLOCK: u64 = 4096;
    let size = 3 * BLOCK as usize + 100;
    let data = pattern(size, 77);
    let path = dir.join("frames");
    let w = create(d, &path).await;
    w.writev_at(0, chunks(&data, &[5000, 1, 3000])).await.unwrap();
    let offsets: Vec<u64> = [0, 1, 511, 512, 4095, 4096, 4097, 8191, 8192, 8193, 12287, 12288, 12289]
        .into_iter()
        .chain([size as u64 - 1, size as u64, size as u64 + 1, size as u64 + 5000])
        .collect();
    let lens = [1usize, 2, 100, 511, 512, 4095, 4096, 4097, 8191, 8192, 8193, 3 * 4096 + 100];
    let before = d.io_stats().direct_reads;
    for phase in ["dirty in the page cache", "synced", "dropped from the page cache"] {
        match phase {
            "synced" => w.sync_data().await.unwrap(),
            "dropped from the page cache" => {
                let std_file = std::fs::File::open(&path).unwrap();
                // SAFETY: a valid descriptor, for the duration of the call.
                let rc = unsafe {
                    libc::posix_fadvise(
                        std::os::fd::AsRawFd::as_raw_fd(&std_file),
                        0,
                        0,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
                assert_eq!(rc, 0);
            }
            _ => {}
        }
        let r = d.open(&path, OpenMode::ReadDirect).await.unwrap();
        for &offset in &offsets {
            for &len in &lens {
                let at = (offset as usize).min(size);
                let expected = &data[at..(at + len).min(size)];
                let got = r.read_at(offset, len).await.unwrap();
                assert!(got == expected, "{phase}: read_at({offset}, {len}) got {} bytes", got.len());
                match r.read_exact_at(offset, len).await {
                    Ok(got) => {
                        assert!(expected.len() == len && got == expected, "{phase}: exact {offset}+{len}");
                    }
                    Err(Error::Io { source, .. }) => {
                        assert!(expected.len() < len, "{phase}: exact {offset}+{len}: {source}");
                        assert_eq!(source.kind(), ErrorKind::UnexpectedEof, "{phase}: {offset}+{len}");
                    }
                    Err(e) => panic!("{phase}: exact {offset}+{len}: {e}"),
                }
            }
        }
        assert!(r.read_exact_at(0, 0).await.unwrap().is_empty());
    }
    d.io_stats().direct_reads - before
}

#[test]
fn direct_reads_return_the_written_bytes_at_every_alignment() {
    multi_thread(async {
        for d in drivers() {
            // Under the target directory's disk (tempdir's default, /tmp, is the same one
            // here; tmpfs is tested below).
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let direct = reads_near_block_boundaries_match(&d, dir.path()).await;
            println!("{:?}: {direct} direct reads", d.backend());
            if d.backend() == IoBackend::ThreadPool {
                assert_eq!(direct, 0, "the thread pool reads buffered");
            } else {
                assert!(direct > 0, "io_uring read nothing with O_DIRECT from a disk file");
            }
        }
    });
}

/// tmpfs: kernels before 6.6 refuse `O_DIRECT` there (`EINVAL` at open) and the file is
/// read buffered; later ones take it (tmpfs has no device: the "direct" read copies from
/// its pages, as a buffered one does). Either way every read returns the written bytes.
#[test]
fn tmpfs_reads_return_the_written_bytes_whether_or_not_it_takes_o_direct() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm, skipping");
        return;
    }
    multi_thread(async {
        for d in drivers() {
            let dir = tempfile::tempdir_in(shm).unwrap();
            let direct = reads_near_block_boundaries_match(&d, dir.path()).await;
            println!("{:?} on tmpfs: {direct} direct reads", d.backend());
        }
    });
}

/// A file whose file system refuses `O_DIRECT` at open (`EINVAL`; procfs here, tmpfs on
/// kernels before 6.6) opened `ReadDirect` is read buffered, and correctly.
#[test]
fn a_file_refusing_o_direct_at_open_is_read_buffered() {
    let path = Path::new("/proc/version");
    let Ok(expected) = std::fs::read(path) else {
        eprintln!("no /proc/version, skipping");
        return;
    };
    multi_thread(async {
        for d in drivers() {
            let before = d.io_stats().direct_reads;
            let f = d.open(path, OpenMode::ReadDirect).await.unwrap();
            assert_eq!(f.read_at(0, 1 << 16).await.unwrap(), expected, "{:?}", d.backend());
            assert_eq!(d.io_stats().direct_reads, before, "{:?}", d.backend());
        }
    });
}
