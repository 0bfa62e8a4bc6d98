//! I/O errors and damaged reads on the simulated disk (`SQLite`'s I/O-error loops).
//!
//! - Every-N loops: for N = 1, 2, ... operation N of a step (a commit, a checkpoint with GC,
//!   a recovery) fails with EIO, or the Nth space-consuming operation with ENOSPC, until
//!   the step completes without reaching N. After each failure the database is reopened —
//!   once as after a process restart, once after a power loss — and its state must be the
//!   state before the step or after it, never between.
//! - A failed fsync makes the database refuse writes (`Error::ReadOnly`); a reopen recovers.
//! - A bit flipped in any read, and a write that lands at the wrong offset, are reported as
//!   `Error::Corruption`, never returned as data.
//!
//! Figures are printed (`--nocapture`).
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom
#![allow(clippy::items_after_statements)] // helpers next to their one use

mod common;

use std::collections::BTreeMap;

use futures::executor::block_on;
use futures::TryStreamExt;
use ringkv::io::sim::SimDisk;
use ringkv::{Db, Durability, Error};

use common::oracle::{options, DB};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(i: u64) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: u64, round: u64) -> Vec<u8> {
    // Every fifth value is over the inline limit of `options` (a blob).
    let len = if i.is_multiple_of(5) { 300 + (i % 7) as usize * 50 } else { 20 + (i % 13) as usize };
    let mut v = format!("{i}/{round}/").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

async fn scan(db: &Db) -> ringkv::Result<Model> {
    let b = db.bucket("t").await?;
    b.iter().await?.map_ok(|(k, v)| (k.to_vec(), v.to_vec())).try_collect().await
}

/// A database with checkpointed data, overwritten data (so GC has work), a WAL tail and
/// blobs. Returns the model of its contents. The database is left open.
async fn setup(disk: &SimDisk) -> (Db, Model) {
    try_setup(disk).await.expect("setup")
}

/// [`setup`], returning the first error instead of panicking.
async fn try_setup(disk: &SimDisk) -> ringkv::Result<(Db, Model)> {
    let db = Db::open(DB, options(disk)).await?;
    let b = db.bucket("t").await?;
    let mut model = Model::new();
    for round in 0..3u64 {
        for chunk in 0..4u64 {
            let mut tx = b.begin().unwrap();
            for i in chunk * 40..chunk * 40 + 40 {
                if round == 2 && i % 3 == 0 {
                    continue;
                }
                tx.put(key(i), value(i, round)).unwrap();
                model.insert(key(i), value(i, round));
            }
            tx.commit().await?;
        }
        if round < 2 {
            db.checkpoint().await?;
        }
    }
    Ok((db, model))
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Commit,
    Checkpoint,
    Recovery,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Eio,
    Enospc,
}

/// What follows the failed step.
#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    /// The process restarts; the machine keeps everything written.
    Restart,
    /// The power fails.
    PowerLoss,
    /// The process restarts and recovers, then the power fails.
    RestartThenPowerLoss,
}

/// Runs `step` with fault `fault` armed at operation `n`; returns whether the fault fired,
/// after checking the before-or-after property on reopen (after `after`).
fn one(step: Step, fault: Fault, n: u64, after_step: After) -> bool {
    let crash = after_step != After::Restart;
    let disk = SimDisk::new(n * 31 + after_step as u64);
    block_on(async {
        let (db, before) = setup(&disk).await;
        let mut after = before.clone();
        let db = if let Step::Recovery = step {
            // Leave a WAL to replay: drop without close.
            drop(db);
            None
        } else {
            Some(db)
        };
        let fired_before = disk.fault_log().failed_ops;
        match fault {
            Fault::Eio => disk.fail_op(n, false),
            Fault::Enospc => disk.fail_space(n, false),
        }
        let result: ringkv::Result<()> = match step {
            Step::Commit => {
                let db = db.as_ref().unwrap();
                let b = db.bucket("t").await.unwrap();
                async {
                    let mut tx = b.begin()?;
                    for i in [3u64, 500, 501, 10] {
                        tx.put(key(i), value(i, 9))?;
                        after.insert(key(i), value(i, 9));
                    }
                    tx.delete(key(1))?;
                    after.remove(&key(1));
                    tx.commit_with(Durability::Sync).await.map(|_| ())
                }
                .await
            }
            Step::Checkpoint => db.as_ref().unwrap().checkpoint().await.map(|_| ()),
            Step::Recovery => match Db::open(DB, options(&disk)).await {
                Ok(db) => scan(&db).await.map(|found| {
                    assert_eq!(
                        found, before,
                        "{step:?} {fault:?} n={n}: recovery succeeded with wrong state"
                    );
                }),
                Err(e) => Err(e),
            },
        };
        disk.clear_faults();
        let fired = disk.fault_log().failed_ops > fired_before;
        if !fired {
            if let Err(e) = &result {
                panic!("{step:?} {fault:?} n={n}: failed with no fault fired: {e}");
            }
        }
        if let Some(db) = &db {
            if result.is_err() {
                // A failed step never leaves the database half-written in memory either.
                if let Ok(found) = scan(db).await {
                    assert!(
                        found == before || found == after,
                        "{step:?} {fault:?} n={n}: live state between"
                    );
                }
            }
        }
        drop(db);
        if after_step == After::RestartThenPowerLoss {
            let recovered = Db::open(DB, options(&disk))
                .await
                .unwrap_or_else(|e| panic!("{step:?} {fault:?} n={n}: restart failed: {e}"));
            let found = scan(&recovered).await.expect("scan after restart");
            assert!(found == before || found == after, "{step:?} {fault:?} n={n}: restart state between");
            if result.is_ok() {
                assert_eq!(
                    found, after,
                    "{step:?} {fault:?} n={n}: a step that succeeded is lost on restart"
                );
            }
        }
        if crash {
            disk.crash();
        }
        let reopened = Db::open(DB, options(&disk))
            .await
            .unwrap_or_else(|e| panic!("{step:?} {fault:?} n={n} {after_step:?}: reopen failed: {e}"));
        let found = scan(&reopened).await.expect("scan after reopen");
        if result.is_ok() {
            assert_eq!(
                found, after,
                "{step:?} {fault:?} n={n} {after_step:?}: a step that succeeded is not durable"
            );
        } else {
            assert!(
                found == before || found == after,
                "{step:?} {fault:?} n={n} {after_step:?}: state is neither before nor after"
            );
        }
        // The reopened database works.
        let b = reopened.bucket("t").await.unwrap();
        b.put(b"after-reopen", b"ok").await.expect("write after reopen");
        reopened.checkpoint().await.expect("checkpoint after reopen");
        reopened.close().await.expect("close after reopen");
        fired
    })
}

#[test]
fn every_n_io_error_and_enospc_loops() {
    for step in [Step::Commit, Step::Checkpoint, Step::Recovery] {
        for fault in [Fault::Eio, Fault::Enospc] {
            for after_step in [After::Restart, After::PowerLoss, After::RestartThenPowerLoss] {
                let mut n = 1;
                while one(step, fault, n, after_step) {
                    n += 1;
                    assert!(n < 10_000, "{step:?} {fault:?}: the loop does not end");
                }
                eprintln!(
                    "fault loop: {step:?} with {fault:?}, then {after_step:?}: failed at each of operations 1..{} \
                     (then completed)",
                    n - 1
                );
                assert!(n > 1, "{step:?} {fault:?}: no operation of the step could be failed");
            }
        }
    }
}

#[test]
fn a_failed_fsync_makes_the_database_read_only_and_a_reopen_recovers() {
    for crash in [false, true] {
        let disk = SimDisk::new(5 + u64::from(crash));
        block_on(async {
            let (db, before) = setup(&disk).await;
            let b = db.bucket("t").await.unwrap();
            disk.fail_sync(1);
            let mut tx = b.begin().unwrap();
            tx.put(key(7), b"lost?").unwrap();
            let err = tx.commit_with(Durability::Sync).await.expect_err("the fsync failed");
            assert!(matches!(err, Error::Io { .. } | Error::ReadOnly(_)), "{err}");
            let again = b.put(key(8), b"refused").await.expect_err("read-only after a failed fsync");
            assert!(matches!(again, Error::ReadOnly(_)), "expected ReadOnly, got {again}");
            assert!(matches!(db.checkpoint().await, Err(Error::ReadOnly(_))));
            // Reads still work.
            assert_eq!(
                b.get(key(2)).await.unwrap().as_deref(),
                before.get(&key(2)).map(std::vec::Vec::as_slice)
            );
            drop(b);
            drop(db);
            if crash {
                disk.crash();
            }
            let db = Db::open(DB, options(&disk)).await.expect("reopen after a failed fsync");
            let found = scan(&db).await.unwrap();
            let mut after = before.clone();
            after.insert(key(7), b"lost?".to_vec());
            assert!(found == before || found == after, "neither before nor after the failed commit");
            assert_eq!(found.get(&key(8)), before.get(&key(8)), "the refused write is absent");
            db.bucket("t").await.unwrap().put(key(8), b"now").await.expect("writable after reopen");
            db.close().await.unwrap();
        });
    }
}

/// Reads everything (open, scan, every key by point read): returns the first error.
async fn read_all(disk: &SimDisk, model: &Model) -> ringkv::Result<()> {
    // A cache that holds everything: each page is read once, so each read is one flip site.
    let db = Db::open(DB, options(disk).cache_capacity(64 << 20)).await?;
    let found = scan(&db).await?;
    assert_eq!(&found, model, "a scan returned wrong data instead of an error");
    let b = db.bucket("t").await?;
    for (k, v) in model {
        let got = b.get(k).await?;
        assert_eq!(got.as_deref(), Some(v.as_slice()), "a get returned wrong data instead of an error");
    }
    drop(b);
    drop(db);
    Ok(())
}

#[test]
fn every_flipped_read_bit_is_detected_as_corruption() {
    let pristine = SimDisk::new(77);
    let disk = pristine.clone();
    let model = block_on(async {
        let (db, model) = setup(&disk).await;
        // A WAL tail too: commits after the last checkpoint, not closed.
        let b = db.bucket("t").await.unwrap();
        b.put(key(900), value(900, 0)).await.unwrap();
        let mut model = model;
        model.insert(key(900), value(900, 0));
        drop(b);
        drop(db);
        model
    });
    let (mut flips, mut detected) = (0, 0);
    let mut n = 1;
    loop {
        // Each round reads a fresh copy, so the n-th read is the same read every time.
        let disk = pristine.fork();
        disk.flip_read("", n);
        let result = block_on(read_all(&disk, &model));
        let log = disk.fault_log();
        if log.flipped_reads.is_empty() {
            result.expect("no flip fired: everything reads clean");
            break;
        }
        flips += 1;
        match result {
            Err(Error::Corruption { .. }) => detected += 1,
            Err(e) => panic!("flip {n} at {:?}: expected Corruption, got {e}", log.flipped_reads.last()),
            Ok(()) => panic!("flip {n} at {:?} was not detected", log.flipped_reads.last()),
        }
        n += 1;
    }
    eprintln!("bit flips on read: {detected} of {flips} injected flips detected as Corruption");
    assert!(flips > 20 && detected == flips);
}

#[test]
fn misdirected_writes_are_detected_as_corruption() {
    let (mut injected, mut detected) = (0, 0);
    let mut per_file: BTreeMap<&str, u32> = BTreeMap::new();
    for prefix in ["data-", "blob-", "MANIFEST-", "wal-"] {
        for n in 1..=16u64 {
            for at_close in [false, true] {
                // The WAL is read back by recovery: end that case without a close.
                let wal = prefix == "wal-";
                if wal && at_close {
                    continue;
                }
                let disk = SimDisk::new(1000 + n);
                let outcome = block_on(async {
                    if !at_close {
                        disk.misdirect_write(prefix, n);
                    }
                    let (db, model) = try_setup(&disk).await?;
                    // The close's checkpoint writes files too.
                    if at_close {
                        disk.misdirect_write(prefix, n);
                    }
                    if !wal {
                        db.close().await?;
                    }
                    Ok::<_, Error>(model)
                });
                let log = disk.fault_log();
                let Some((file, ..)) = log.misdirected.first() else {
                    outcome.expect("setup with no write misdirected");
                    continue;
                };
                let model = match outcome {
                    Ok(model) => model,
                    // A page read back while the setup or the close went on (a checkpoint
                    // folding writes into an evicted page, GC copying a frame) hit the
                    // damage at once.
                    Err(Error::Corruption { file: f, .. }) => {
                        assert_eq!(
                            f.file_name(),
                            Some(file.as_os_str()),
                            "{prefix} write {n}: damage reported in another file"
                        );
                        injected += 1;
                        detected += 1;
                        *per_file.entry(prefix).or_default() += 1;
                        continue;
                    }
                    Err(e) => {
                        panic!("{prefix} write {n} misdirected: the setup failed with {e}, not Corruption")
                    }
                };
                if !disk.list().iter().any(|p| p.file_name() == Some(file.as_os_str())) {
                    continue; // rewritten by GC and deleted: nothing of it is read
                }
                if std::path::Path::new(&file).extension().is_some_and(|e| e == "next") {
                    continue; // a WAL segment prepared ahead, never published: nothing reads it
                }
                injected += 1;
                disk.clear_faults();
                // Either reading the database fails with Corruption, or (when the damage hit
                // only dead data nothing reads) the offline check reports it in that file.
                let checked = block_on(Db::check(DB, &options(&disk))).expect("check runs");
                let named = checked
                    .problems
                    .iter()
                    .any(|p| matches!(p, Error::Corruption { file: f, .. } if f.file_name() == Some(file.as_os_str())));
                match block_on(read_all(&disk, &model)) {
                    Err(Error::Corruption { .. }) => {}
                    Err(e) => panic!("{prefix} write {n}: expected Corruption, got {e}"),
                    Ok(()) => assert!(
                        named,
                        "{prefix} write {n} misdirected ({:?}): reads fine and the check finds nothing:\n{checked}",
                        disk.fault_log().misdirected
                    ),
                }
                detected += 1;
                *per_file.entry(prefix).or_default() += 1;
            }
        }
    }
    eprintln!("misdirected writes: {detected} of {injected} detected as Corruption (by file: {per_file:?})");
    assert!(injected >= 12 && detected == injected);
    assert_eq!(per_file.len(), 4, "every kind of file took a misdirected write: {per_file:?}");
}

#[test]
fn regression_new_database_directory_is_durable() {
    // Found by the crash oracle: the database directory's own entry in its parent was
    // never synced, so a power loss could take the whole database with it.
    for seed in 0..32 {
        let disk = SimDisk::new(seed);
        block_on(async {
            let db = Db::open("/a/b/db", options(&disk)).await.unwrap();
            db.bucket("t").await.unwrap().put(b"k", b"v").await.unwrap();
        });
        disk.crash();
        block_on(async {
            let db = Db::open("/a/b/db", options(&disk)).await.unwrap();
            let got = db.bucket("t").await.unwrap().get(b"k").await.unwrap();
            assert_eq!(got.as_deref(), Some(&b"v"[..]), "seed {seed}: acknowledged put lost");
        });
    }
}

#[test]
fn regression_restart_then_power_loss_keeps_the_log_contiguous() {
    // Found by the crash oracle: after a process crash, recovery created a new WAL segment
    // while the last one's tail was still unsynced in the page cache; a power loss then
    // lost that tail under a later segment, and the next open failed with Corruption.
    for seed in 0..32 {
        let disk = SimDisk::new(seed);
        block_on(async {
            let db = Db::open(DB, options(&disk)).await.unwrap();
            let b = db.bucket("t").await.unwrap();
            for i in 0..20u64 {
                let mut tx = b.begin().unwrap();
                tx.put(key(i), value(i, 0)).unwrap();
                tx.commit_with(Durability::Buffered).await.unwrap();
            }
        });
        // The process died; the machine did not. Reopen, commit durably, then lose power.
        block_on(async {
            let db = Db::open(DB, options(&disk)).await.unwrap();
            db.bucket("t").await.unwrap().put(b"after", b"restart").await.unwrap();
        });
        disk.crash();
        block_on(async {
            let db = Db::open(DB, options(&disk)).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let found = scan(&db).await.unwrap();
            assert_eq!(
                found.get(&b"after"[..]).map(std::vec::Vec::as_slice),
                Some(&b"restart"[..]),
                "seed {seed}"
            );
            for i in 0..20u64 {
                assert_eq!(found.get(&key(i)), Some(&value(i, 0)), "seed {seed}: buffered commit {i} lost");
            }
        });
    }
}

#[test]
fn regression_restart_then_power_loss_keeps_referenced_files() {
    // Found by the crash oracle's offline check: a checkpoint's manifest edit (GC removing a
    // file) was written but its fsync failed; the restarted process read that unsynced
    // edit, deleted the file as unreferenced, and a power loss then dropped the edit: the
    // durable manifest referenced a deleted file. Open now syncs the manifest it acts on.
    // Overwrite everything and checkpoint, round after round, until a checkpoint removes
    // files (GC): `rounds` is how many rounds that takes; the last one is run under test.
    async fn round(db: &Db, round: u64) -> ringkv::CheckpointStats {
        let b = db.bucket("t").await.unwrap();
        let mut tx = b.begin().unwrap();
        for i in 0..160 {
            tx.put(key(i), value(i, round)).unwrap();
        }
        tx.commit().await.unwrap();
        db.checkpoint().await.unwrap()
    }
    let dry = SimDisk::new(0);
    let rounds = block_on(async {
        let (db, _) = setup(&dry).await;
        let mut r = 3;
        while round(&db, r).await.files_removed == 0 {
            r += 1;
            assert!(r < 40, "GC never removes a file");
        }
        r
    });
    async fn gc_due(disk: &SimDisk, rounds: u64) -> Db {
        let (db, _) = setup(disk).await;
        for r in 3..rounds {
            round(&db, r).await;
        }
        let b = db.bucket("t").await.unwrap();
        let mut tx = b.begin().unwrap();
        for i in 0..160 {
            tx.put(key(i), value(i, rounds)).unwrap();
        }
        tx.commit().await.unwrap();
        db
    }
    let mut tried = 0;
    'fsyncs: for n in 1..=60u64 {
        // Several disks per fsync: the crash decides the unsynced record's fate at random.
        for seed in 0..8 {
            let disk = SimDisk::new(seed);
            let fired = block_on(async {
                let db = gc_due(&disk, rounds).await;
                // Fail the n-th fsync of the checkpoint (one of them is the manifest's).
                disk.fail_sync(n);
                let _ = db.checkpoint().await;
                drop(db);
                let fired = disk.fault_log().failed_ops > 0;
                disk.clear_faults();
                // Restart: recovery acts on what is in the page cache. Then the power fails.
                drop(Db::open(DB, options(&disk)).await.expect("restart"));
                fired
            });
            if !fired {
                break 'fsyncs;
            }
            tried += 1;
            disk.crash();
            let report = block_on(Db::check(DB, &options(&disk))).unwrap();
            assert!(report.is_ok(), "fsync {n}, seed {seed}: {report}");
            block_on(async { scan(&Db::open(DB, options(&disk)).await.unwrap()).await.expect("readable") });
        }
    }
    assert!(tried > 3, "only {tried} fsyncs of a checkpoint could be failed");
}
