//! Opens into a full registered file table on `io_uring` (`io/direct.rs` invariant 6).
//!
//! This binary holds one test on purpose: the direct ring sizes its registered file table
//! by the soft `RLIMIT_NOFILE` when it starts, once per process. The test starts it under a
//! soft limit of [`TABLE`], raises the limit again, and then opens more databases than the
//! table has slots, so later files (each database's WAL segment among them, created with
//! `O_CREAT | O_EXCL`) are opened into descriptors after the kernel refused them a slot with
//! `ENFILE`. That refusal comes after the kernel created the file: the retry must not ask
//! for `O_EXCL` again (it failed with `EEXIST` before that was mended).

#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap

use ringkv::{Db, IoBackend, Options};

/// The soft `RLIMIT_NOFILE` while the ring starts: the size of its file table.
const TABLE: u64 = 48;
/// Databases open at once: well past the table's slots.
const DATABASES: usize = 80;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

fn set_soft_nofile(soft: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid `rlimit` the call writes into; it lives across the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) }, 0);
    let old = limit.rlim_cur;
    limit.rlim_cur = soft.min(limit.rlim_max);
    // SAFETY: `limit` is a valid `rlimit` that lives across the call; `setrlimit` only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
    old
}

#[test]
fn files_created_into_a_full_slot_table_open_as_descriptors() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let opts = || Options::default().io_backend(IoBackend::Uring);
        let normal = set_soft_nofile(TABLE);
        // Starts the rings under the low limit (and skips where the kernel has no io_uring).
        match Db::open(root.path().join("probe"), opts()).await {
            Ok(db) => db.close().await.unwrap(),
            Err(e) => {
                eprintln!("io_uring unavailable, skipping: {e}");
                return;
            }
        }
        set_soft_nofile(normal.max(1024));
        let before = open_descriptors();
        let mut dbs = Vec::new();
        for i in 0..DATABASES {
            let db = match Db::open(root.path().join(format!("db{i}")), opts()).await {
                Ok(db) => db,
                Err(e) => {
                    panic!("open of database {i} failed ({} descriptors open): {e}", open_descriptors())
                }
            };
            let b = db.bucket("b").await.unwrap();
            b.put(format!("key{i}"), format!("value{i}")).await.unwrap();
            dbs.push((db, b));
        }
        // One descriptor per database is its directory lock; more means files went to
        // descriptors because the table was full.
        let all_open = open_descriptors();
        assert!(
            all_open > before + DATABASES,
            "{all_open} descriptors with {DATABASES} databases open ({before} before): the table never filled"
        );
        for (i, (_, b)) in dbs.iter().enumerate() {
            assert_eq!(
                b.get(format!("key{i}")).await.unwrap().as_deref(),
                Some(format!("value{i}").as_bytes())
            );
        }
        for (db, b) in dbs {
            drop(b);
            db.close().await.unwrap();
        }
        // Every acknowledged write is there after a reopen.
        for i in 0..DATABASES {
            let db = Db::open(root.path().join(format!("db{i}")), opts()).await.unwrap();
            let b = db.bucket("b").await.unwrap();
            assert_eq!(
                b.get(format!("key{i}")).await.unwrap().as_deref(),
                Some(format!("value{i}").as_bytes())
            );
            drop(b);
            db.close().await.unwrap();
        }
    });
}
