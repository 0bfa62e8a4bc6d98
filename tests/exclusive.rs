//! Safe use of one database directory (issue 11): one writer at a time, in this process or
//! another; read-only opens that change nothing; clear errors for unusable paths and for a
//! database that turned read-only; commits made with `Durability::None` that survive a drop
//! without `close`.
//!
//! The second-process tests re-execute this test binary as a child that runs only
//! [`lock_child`] (selected by `--exact`, enabled by `RINGKV_LOCK_CHILD=<dir>`; without it
//! `lock_child` returns at once). The child opens the database, commits [`CHILD_KEYS`] keys
//! with `Durability::Sync`, prints `RKV ready`, then closes when it reads `close` on its
//! stdin (printing `RKV closed`), or waits to be killed.
//!
//! The backend comes from `Options::default()` (`IoBackend::Auto`), so
//! `RINGKV_IO_BACKEND=uring|threadpool` selects it for the whole file; the child inherits it.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use futures::executor::block_on;
use ringkv::io::sim::SimDisk;
use ringkv::{Db, Durability, Error, Options};

const CHILD_ENV: &str = "RINGKV_LOCK_CHILD";
const CHILD_TEST: &str = "lock_child";
const CHILD_KEYS: u32 = 50;

fn key(i: u32) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "v".repeat((i % 40) as usize)).into_bytes()
}

fn read_only() -> Options {
    Options::default().read_only(true)
}

/// Asserts that `r` is `Error::Locked` naming `dir` and held by `pid`.
fn assert_locked<T>(r: ringkv::Result<T>, dir: &Path, pid: u32, what: &str) {
    match r {
        Err(Error::Locked { path, holders }) => {
            assert_eq!(path, dir, "{what}: the error names the directory");
            assert!(holders.contains(&pid), "{what}: holders {holders:?} should name process {pid}");
            let msg = Error::Locked { path, holders }.to_string();
            assert!(msg.contains(&pid.to_string()) && msg.contains("in use"), "{what}: {msg}");
        }
        Err(e) => panic!("{what}: expected Error::Locked, got {e:?}"),
        Ok(_) => panic!("{what}: expected Error::Locked, got Ok"),
    }
}

/// Every key `0..n` reads back its value.
async fn assert_keys(db: &Db, n: u32) {
    let b = db.existing_bucket("b").expect("bucket b");
    for i in 0..n {
        assert_eq!(b.get(key(i)).await.unwrap(), Some(value(i).into()), "key {i}");
    }
    assert_eq!(b.iter().await.unwrap().collect_vec().await.unwrap().len() as u32, n);
}

#[test]
fn a_second_open_in_this_process_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id();
    block_on(async {
        let a = Db::open(dir.path(), Options::default()).await.unwrap();
        let ba = a.bucket("b").await.unwrap();
        for i in 0..100 {
            ba.put(key(i), value(i)).await.unwrap();
        }
        // The reproduction of the issue: a second open (writer or reader) beside a live one.
        assert_locked(Db::open(dir.path(), Options::default()).await, dir.path(), me, "second writer");
        assert_locked(Db::open(dir.path(), read_only()).await, dir.path(), me, "reader beside a writer");
        assert_locked(
            Db::check(dir.path(), &Options::default()).await,
            dir.path(),
            me,
            "check beside a writer",
        );
        for i in 100..200 {
            ba.put(key(i), value(i)).await.unwrap();
        }
        a.close().await.expect("the first open closes cleanly");
        // Closed: the lock is gone even though handles of the first open are still alive.
        let again = Db::open(dir.path(), Options::default()).await.expect("open after close");
        assert_keys(&again, 200).await;
        drop(ba);
        again.close().await.unwrap();

        // Readers share; a writer waits for all of them.
        let r1 = Db::open(dir.path(), read_only()).await.unwrap();
        let r2 = Db::open(dir.path(), read_only()).await.unwrap();
        assert_keys(&r2, 200).await;
        assert!(Db::check(dir.path(), &Options::default()).await.unwrap().is_ok());
        assert_locked(
            Db::open(dir.path(), Options::default()).await,
            dir.path(),
            me,
            "writer beside readers",
        );
        r1.close().await.unwrap();
        assert_locked(
            Db::open(dir.path(), Options::default()).await,
            dir.path(),
            me,
            "writer beside a reader",
        );
        drop(r2);
        let w = Db::open(dir.path(), Options::default()).await.expect("open after the readers are gone");
        assert_keys(&w, 200).await;
        w.close().await.unwrap();
    });
}

/// Spawns this test binary as a child holding the database in `dir`; returns once the
/// child printed `RKV ready` (its keys are committed).
fn spawn_holder(dir: &Path) -> (Child, BufReader<ChildStdout>) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    expect_line(&mut out, "RKV ready");
    (child, out)
}

/// Reads the child's stdout until a line ending in `want` (the test harness may have
/// printed `test lock_child ... ` before it on the same line); fails at the end of the
/// stream.
fn expect_line(out: &mut BufReader<ChildStdout>, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).expect("read the child's stdout");
        assert!(n > 0, "the child ended before printing {want:?}");
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

#[test]
fn another_process_holding_the_database_is_refused_until_it_closes_or_dies() {
    let dir = tempfile::tempdir().unwrap();
    // The child closes when asked.
    let (mut child, mut out) = spawn_holder(dir.path());
    block_on(async {
        assert_locked(Db::open(dir.path(), Options::default()).await, dir.path(), child.id(), "writer");
        assert_locked(Db::open(dir.path(), read_only()).await, dir.path(), child.id(), "reader");
    });
    writeln!(child.stdin.as_mut().unwrap(), "close").unwrap();
    expect_line(&mut out, "RKV closed");
    assert!(child.wait().unwrap().success(), "the child exits cleanly after close");
    block_on(async {
        let db = Db::open(dir.path(), Options::default()).await.expect("open after the child closed");
        assert_keys(&db, CHILD_KEYS).await;
        db.close().await.unwrap();
    });

    // The child is killed with SIGKILL while it holds the database.
    let (mut child, _out) = spawn_holder(dir.path());
    block_on(async {
        assert_locked(Db::open(dir.path(), Options::default()).await, dir.path(), child.id(), "writer");
    });
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status:?}");
    block_on(async {
        let db = Db::open(dir.path(), Options::default()).await.expect("open after the holder died");
        assert_keys(&db, CHILD_KEYS).await;
        db.close().await.unwrap();
    });
}

/// The child of the second-process test (a no-op unless `RINGKV_LOCK_CHILD` is set).
#[test]
fn lock_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let dir = PathBuf::from(dir);
    let db = block_on(async {
        let db = Db::open(&dir, Options::default()).await.expect("child: open");
        let b = db.bucket("b").await.unwrap();
        for i in 0..CHILD_KEYS {
            b.put(key(i), value(i)).await.unwrap();
        }
        db
    });
    let mut stdout = std::io::stdout();
    writeln!(stdout, "RKV ready").unwrap();
    stdout.flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    if line.trim() == "close" {
        block_on(db.close()).expect("child: close");
        writeln!(stdout, "RKV closed").unwrap();
        stdout.flush().unwrap();
    }
}

/// Name, kind, length, modification time and content hash of everything under `dir`.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, (bool, u64, i64, i64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let hash = if meta.is_dir() {
                stack.push(e.path());
                0
            } else {
                fnv(&std::fs::read(e.path()).unwrap())
            };
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            out.insert(rel, (meta.is_dir(), meta.len(), meta.mtime(), meta.mtime_nsec(), hash));
        }
    }
    let meta = std::fs::metadata(dir).unwrap();
    out.insert(PathBuf::from("."), (true, 0, meta.mtime(), meta.mtime_nsec(), 0));
    out
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A database whose next open has work to do: WAL records above the checkpoint (one of
/// them a blob, in bucket `c`), a torn WAL tail, an unreferenced data file and a `CURRENT.tmp`. Returns
/// the number of keys `0..n` it holds.
fn messy_database(dir: &Path) -> u32 {
    block_on(async {
        let db = Db::open(dir, Options::default()).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        for i in 0..100 {
            b.put(key(i), value(i)).await.unwrap();
        }
        db.checkpoint().await.unwrap();
        for i in 100..150 {
            b.put(key(i), value(i)).await.unwrap();
        }
        db.close().await.unwrap();
        // Writes after the last checkpoint: dropped without close, so they live in the WAL.
        let db = Db::open(dir, Options::default()).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        b.put(key(150), value(150)).await.unwrap();
        db.bucket("c").await.unwrap().put(b"blob", vec![7u8; 10_000]).await.unwrap();
        for i in 151..160 {
            b.put(key(i), value(i)).await.unwrap();
        }
        drop(b);
        drop(db);
    });
    let wal = dir.join("wal");
    let last = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(&[0x5a; 37]).unwrap();
    std::fs::write(dir.join("data-00000000000000ff.rkv"), b"not referenced").unwrap();
    std::fs::write(dir.join("CURRENT.tmp"), b"junk").unwrap();
    160
}

/// Reads everything through a read-only open and checks that writes are refused.
async fn read_everything_read_only(dir: &Path, n: u32) {
    // The background flush of the dropped database (same process) hands over first.
    let db = Db::open(dir, read_only()).await.expect("read-only open");
    let b = db.existing_bucket("b").unwrap();
    for i in 0..n {
        assert_eq!(b.get(key(i)).await.unwrap(), Some(value(i).into()), "key {i}");
    }
    let c = db.existing_bucket("c").unwrap();
    assert_eq!(c.get(b"blob").await.unwrap().as_deref(), Some(&[7u8; 10_000][..]));
    let s = db.stats();
    assert!(s.files > 0 && s.checkpoints == 0, "{s:?}");
    for r in [b.put(b"x", b"y").await, b.delete(key(1)).await] {
        assert!(matches!(r, Err(Error::ReadOnly(ref m)) if m.contains("opened read-only")), "{r:?}");
    }
    assert!(matches!(db.bucket("new").await, Err(Error::ReadOnly(_))));
    assert!(matches!(db.drop_bucket("b").await, Err(Error::ReadOnly(_))));
    assert!(matches!(db.checkpoint().await, Err(Error::ReadOnly(_))));
    db.flush().await.expect("flush of a read-only open has nothing to do");
    db.close().await.expect("close of a read-only open");
}

/// The `ringkv` binary of the workspace crate `cli/`, built beside this test binary by the
/// README's test command (`cargo test` at the workspace root builds every default member).
fn cli() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let cli = deps.parent().unwrap().join("ringkv");
    assert!(
        cli.exists(),
        "the ringkv binary is not built at {} (run cargo test at the workspace root)",
        cli.display()
    );
    cli
}

#[test]
fn read_only_open_check_and_stats_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = messy_database(dir.path());
    block_on(async {
        // Make sure the dropped database's hand-over is done before the fingerprint.
        Db::open(dir.path(), read_only()).await.unwrap().close().await.unwrap();
    });
    let before = fingerprint(dir.path());
    block_on(read_everything_read_only(dir.path(), n));
    let report = block_on(Db::check(dir.path(), &Options::default())).unwrap();
    assert!(report.notes.iter().any(|n| n.contains("data-00000000000000ff.rkv")), "{report}");
    for cmd in ["stat", "check"] {
        let out = Command::new(cli()).args([cmd, dir.path().to_str().unwrap()]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&dir.path().display().to_string()), "cli {cmd}: {stdout}");
        if cmd == "stat" {
            assert!(out.status.success(), "cli stat: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    assert_eq!(fingerprint(dir.path()), before, "a read-only open, check or stats changed the directory");
    // A writer's open then does the recovery the readers left alone, and loses nothing.
    block_on(async {
        let db = Db::open(dir.path(), Options::default()).await.unwrap();
        assert_keys(&db, n).await;
        db.close().await.unwrap();
    });
    assert!(!dir.path().join("data-00000000000000ff.rkv").exists(), "the writer removed the stale file");
}

/// A bind mount of `src` at `dst`, read-only, unmounted on drop.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(src: &Path, dst: &Path) -> ReadOnlyMount {
        std::fs::create_dir_all(dst).unwrap();
        let run = |args: &[&str]| {
            let st = Command::new("mount").args(args).status().expect("run mount");
            assert!(st.success(), "mount {args:?} failed: {st:?}");
        };
        run(&["--bind", src.to_str().unwrap(), dst.to_str().unwrap()]);
        let mount = ReadOnlyMount(dst.to_path_buf());
        run(&["-o", "remount,bind,ro", dst.to_str().unwrap()]);
        mount
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn read_only_open_works_on_a_read_only_mount_or_directory() {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("db");
    let n = messy_database(&src);
    block_on(async { Db::open(&src, read_only()).await.unwrap().close().await.unwrap() });
    // As root, permissions do not stop writes: a read-only bind mount does. Otherwise the
    // directory tree loses its write permission.
    let is_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let (path, _mount) = if is_root {
        let dst = root.path().join("ro");
        let mount = ReadOnlyMount::new(&src, &dst);
        assert!(std::fs::write(dst.join("probe"), b"x").is_err(), "the mount is read-only");
        (dst, Some(mount))
    } else {
        set_writable(&src, false);
        (src.clone(), None)
    };
    block_on(async {
        read_everything_read_only(&path, n).await;
        let err = Db::open(&path, Options::default()).await.err().expect("a writer cannot open it");
        assert!(matches!(err, Error::Io { .. }), "a writer's open fails with the OS error: {err:?}");
    });
    if !is_root {
        set_writable(&src, true);
    }
}

fn set_writable(dir: &Path, writable: bool) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            set_writable(&p, writable);
        }
    }
    let mode = if writable { 0o755 } else { 0o555 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_read_only_open_of_a_missing_database_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    block_on(async {
        assert!(matches!(Db::open(&empty, read_only()).await, Err(Error::NotFound(_))));
        assert!(matches!(Db::open(root.path().join("absent"), read_only()).await, Err(Error::Io { .. })));
    });
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!root.path().join("absent").exists());
}

#[test]
fn unusable_paths_are_invalid_arguments_and_touch_nothing() {
    let cwd = std::env::current_dir().unwrap();
    let before = std::fs::read_dir(&cwd).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    block_on(async {
        for opts in [Options::default(), read_only()] {
            for path in [PathBuf::new(), PathBuf::from("nul\0byte"), file.clone()] {
                match Db::open(&path, opts.clone()).await {
                    Err(Error::InvalidArgument(m)) => assert!(m.contains("path"), "{m}"),
                    Err(e) => panic!("{path:?}: expected InvalidArgument, got {e:?}"),
                    Ok(_) => panic!("{path:?}: opened"),
                }
            }
        }
    });
    let after = std::fs::read_dir(&cwd).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    assert_eq!(before, after, "nothing was created in the working directory");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
}

fn sim_options(disk: &SimDisk) -> Options {
    Options::default().sim(Some(disk.clone()))
}

#[test]
fn a_failed_durable_write_is_named_once_and_close_returns_it() {
    for (fault, what) in [("enospc", "No space left"), ("fsync", "fdatasync")] {
        let disk = SimDisk::new(11);
        block_on(async {
            let db = Db::open("/db", sim_options(&disk)).await.unwrap();
            let b = db.bucket("b").await.unwrap();
            for i in 0..20 {
                b.put(key(i), value(i)).await.unwrap();
            }
            match fault {
                "enospc" => disk.fail_space(1, true),
                _ => disk.fail_sync(1),
            }
            let first = b.put(key(20), value(20)).await.expect_err("the WAL write fails");
            let later = b.put(key(21), value(21)).await.expect_err("read-only now");
            for e in [&first, &later] {
                let msg = e.to_string();
                assert!(matches!(e, Error::ReadOnly(_)), "{fault}: {e:?}");
                assert_eq!(msg.matches("read-only").count(), 1, "{fault}: one 'read-only' in {msg:?}");
                assert_eq!(msg.matches("durable write failed").count(), 1, "{fault}: one cause in {msg:?}");
                // A failed sync of a `Sync` commit's batch is the durable write's
                // (`write_dsync`, the write and its fdatasync as one operation).
                let named = msg.contains(what) || (fault == "fsync" && msg.contains("write_dsync"));
                assert!(named, "{fault}: {msg:?} names the OS error");
            }
            let closed = db.close().await.expect_err("close reports why the database turned read-only");
            assert_eq!(closed.to_string(), later.to_string());
            assert!(db.close().await.is_ok(), "a second close is a no-op");
        });
        disk.clear_faults();
        disk.crash();
        block_on(async {
            let db = Db::open("/db", sim_options(&disk)).await.unwrap();
            let b = db.existing_bucket("b").unwrap();
            for i in 0..20 {
                assert_eq!(
                    b.get(key(i)).await.unwrap(),
                    Some(value(i).into()),
                    "{fault}: acknowledged key {i}"
                );
            }
            assert_eq!(b.get(key(21)).await.unwrap(), None, "{fault}: a refused write is not there");
            db.close().await.unwrap();
        });
    }
}

#[test]
fn commits_without_durability_survive_a_drop_without_close() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default().durability(Durability::None);
        block_on(async {
            let db = Db::open(dir.path(), opts.clone()).await.unwrap();
            let b = db.bucket("b").await.unwrap();
            for i in 0..200 {
                b.put(key(i), value(i)).await.unwrap();
            }
            drop(b);
            drop(db);
            // Same process: the new open waits for the dropped one's flush and lock.
            let db = Db::open(dir.path(), Options::default()).await.unwrap();
            assert_keys(&db, 200).await;
            db.close().await.unwrap();
        });
    }
}

/// Regression: a child spawned by another thread shares the lock's descriptor from its
/// `fork` until its `exec`, so a lock just released by `close` could still look held. A
/// reopen right after `close` must succeed while processes are being spawned.
#[test]
fn reopen_after_close_while_another_thread_spawns_processes() {
    let dir = tempfile::tempdir().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut spawned = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                Command::new("true").status().unwrap();
                spawned += 1;
            }
            spawned
        })
    };
    block_on(async {
        for round in 0..200u32 {
            let db = Db::open(dir.path(), Options::default())
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            db.bucket("b").await.unwrap().put(key(round), value(round)).await.unwrap();
            db.close().await.unwrap();
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(spawner.join().unwrap() > 0, "processes were spawned during the reopens");
    block_on(async {
        let db = Db::open(dir.path(), read_only()).await.unwrap();
        assert_keys(&db, 200).await;
    });
}
