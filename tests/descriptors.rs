//! A thousand databases in one process under `ulimit -n 1024` on `io_uring` (issue 13, item
//! 3, must-show 4).
//!
//! This binary holds one test on purpose: it lowers its own `RLIMIT_NOFILE` (soft and hard,
//! as `ulimit -n 1024` does) before anything opens a ring, so the limit is the one the
//! `io_uring` backend meets from its start. It opens [`DATABASES`] databases at once, writes
//! and reads one key in each, and closes them, counting the process's descriptors
//! (`/proc/self/fd`) while they are all open.

#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap

use futures::StreamExt;
use ringkv::{Db, IoBackend, Options};

/// The limit the test runs under: the common default soft limit.
const NOFILE: u64 = 1024;
/// Databases open at once.
const DATABASES: usize = 1000;
/// Databases opened (and closed) concurrently: their files in transit take slots too.
const CONCURRENCY: usize = 8;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

fn lower_nofile() {
    let limit = libc::rlimit { rlim_cur: NOFILE, rlim_max: NOFILE };
    // SAFETY: `limit` is a valid `rlimit` that lives across the call; `setrlimit` only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_thousand_databases_under_ulimit_1024_on_io_uring() {
    lower_nofile();
    // On tmpfs where there is one: removing a thousand database directories from a disk
    // mounted with `discard` took 17 s here, the test itself 3 s.
    let shm = std::path::Path::new("/dev/shm");
    let root = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Starts the rings (and skips where the kernel has no io_uring).
        match Db::open(root.path().join("probe"), Options::default().io_backend(IoBackend::Uring)).await {
            Ok(db) => db.close().await.unwrap(),
            Err(e) => {
                eprintln!("io_uring unavailable, skipping: {e}");
                return;
            }
        }
        let before = open_descriptors();
        let started = std::time::Instant::now();
        let dbs: Vec<(Db, ringkv::Bucket)> = futures::stream::iter(0..DATABASES)
            .map(|i| {
                let path = root.path().join(format!("db{i}"));
                async move {
                    let opts = Options::default().io_backend(IoBackend::Uring);
                    let db = match Db::open(&path, opts).await {
                        Ok(db) => db,
                        Err(e) => panic!(
                            "open of database {i} failed with {} descriptors open ({before} before the \
                             first): {e}",
                            open_descriptors()
                        ),
                    };
                    let b = db.bucket("b").await.unwrap();
                    b.put(format!("key{i}"), format!("value{i}")).await.unwrap();
                    (db, b)
                }
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        let all_open = open_descriptors();
        eprintln!(
            "{DATABASES} databases open after {:?}: {all_open} descriptors ({before} before the first)",
            started.elapsed()
        );
        // One descriptor per database, its directory lock; its files sit in io_uring slots.
        assert!(all_open <= before + DATABASES + 4, "{all_open} descriptors, {before} before the first open");
        // Past the limit, an open fails with an error that names it (no panic, no hang).
        let mut extra = Vec::new();
        let refused = loop {
            let i = DATABASES + extra.len();
            assert!(extra.len() < 64, "{i} databases open under RLIMIT_NOFILE {NOFILE}: what is the limit?");
            let opts = Options::default().io_backend(IoBackend::Uring);
            match Db::open(root.path().join(format!("db{i}")), opts).await {
                Ok(db) => extra.push(db),
                Err(e) => break e,
            }
        };
        eprintln!("database {} refused: {refused}", DATABASES + extra.len());
        assert!(refused.to_string().contains("RLIMIT_NOFILE 1024"), "{refused}");
        for db in extra {
            db.close().await.unwrap();
        }
        for (i, (_, b)) in dbs.iter().enumerate() {
            assert_eq!(
                b.get(format!("key{i}")).await.unwrap().as_deref(),
                Some(format!("value{i}").as_bytes())
            );
        }
        futures::stream::iter(dbs)
            .for_each_concurrent(CONCURRENCY, |(db, b)| async move {
                drop(b);
                db.close().await.unwrap();
            })
            .await;
        // Every database closed: back to where the process started.
        let after = open_descriptors();
        eprintln!("after closing them ({:?} in all): {after} descriptors", started.elapsed());
        assert!(after <= before + 4, "{after} descriptors left open, {before} before the first open");
    });
}
