//! The store's multi-step changes are atomic: a purge (the deletions and the `purged` mark
//! that covers them) and a snapshot install (the new state, `sm.generation` and the
//! `snapshot` record) are each seen whole or not at all, by a concurrent reader and by the
//! recovery after a crash at any point. A truncation never leaves a hole.
//!
//! The crash tests run the database on ringkv's simulated disk (feature `sim`): they cut
//! the disk at every operation of the change in turn (`SimDisk::halt_after`), crash it (the
//! writes not yet durable are kept, lost or torn, as the seed picks), reopen, and check what
//! the store says. The snapshot files stay on the real disk (they are not in the database;
//! the store names one only through the database).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, SnapshotMeta, Vote,
};
use ringkv::io::sim::SimDisk;
use ringkv::{Db, Options};
use ringkv_raft::snapshot::SnapshotReader;
use ringkv_raft::store::{open_db, LogStore, StateMachineStore};
use ringkv_raft::{Node, NodeId, Request, TypeConfig};

const SIM_DB: &str = "/sim/db";
/// Seeds of the simulated disk per crash test of the log: each decides the fate of every
/// write a crash finds pending. The commits of one purge or truncation reach the WAL in one
/// write; a crash tears it at a record boundary for only some seeds (with 64, the purge
/// below recovers at 0, 16 and 30).
const LOG_SEEDS: u64 = 64;
/// Seeds per crash test of a snapshot install (18 crash points each).
const INSTALL_SEEDS: u64 = 8;

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn set(term: u64, index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request::Set { key: key.into(), value: value.into() }),
    }
}

fn membership(term: u64, index: u64, nodes: &[NodeId]) -> Entry<TypeConfig> {
    let set: BTreeSet<NodeId> = nodes.iter().copied().collect();
    Entry { log_id: log_id(term, index), payload: EntryPayload::Membership(Membership::new(vec![set], None)) }
}

fn sim_opts(disk: &SimDisk) -> Options {
    Options::default().sim(Some(disk.clone())).cache_capacity(ringkv::limits::MIN_CACHE_CAPACITY)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The `purged` mark's index (0 for none) and every log index, read at one snapshot.
async fn mark_and_indexes(db: &Db) -> (u64, Vec<u64>) {
    let (meta, log) = (db.existing_bucket("raft.meta").unwrap(), db.existing_bucket("raft.log").unwrap());
    let snap = db.snapshot().unwrap();
    let mark = match snap.get(&meta, b"purged").await.unwrap() {
        Some(v) => serde_json::from_slice::<LogId<NodeId>>(&v).unwrap().index,
        None => 0,
    };
    let indexes: Vec<u64> = snap
        .range::<&[u8], _>(&log, ..)
        .await
        .unwrap()
        .map_ok(|(k, _)| u64::from_be_bytes(k[..].try_into().unwrap()))
        .try_collect()
        .await
        .unwrap();
    (mark, indexes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_reader_sees_a_purge_whole() {
    const ENTRIES: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db"), Options::default().cache_capacity(4 << 20)).await.unwrap();
    let (mut log, _sm) = open_db(db.clone(), dir.path().join("snapshots")).await.unwrap();
    log.blocking_append((1..=ENTRIES).map(|i| set(1, i, &format!("k{i}"), "v"))).await.unwrap();
    // Three entries per commit: each purge of ten below is four commits.
    log.set_entries_per_commit(3);
    let done = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let (db, done, checks) = (db.clone(), done.clone(), checks.clone());
        async move {
            let mut midway = 0u64; // snapshots that caught a purge between two of its commits
            loop {
                let finished = done.load(Ordering::Acquire);
                let (mark, indexes) = mark_and_indexes(&db).await;
                // What the mark covers is gone, nothing above it is: the log is exactly
                // mark+1..=ENTRIES.
                let want: Vec<u64> = (mark + 1..=ENTRIES).collect();
                assert_eq!(indexes, want, "a snapshot saw the purged mark at {mark} with another log");
                if mark % 10 != 0 {
                    midway += 1;
                }
                checks.fetch_add(1, Ordering::Relaxed);
                if finished {
                    return midway;
                }
            }
        }
    });
    for step in 1..=ENTRIES / 10 {
        // The reader checks at least once between two purges.
        let seen = checks.load(Ordering::Relaxed);
        while checks.load(Ordering::Relaxed) == seen {
            tokio::task::yield_now().await;
        }
        log.purge(log_id(1, step * 10)).await.unwrap();
    }
    done.store(true, Ordering::Release);
    let midway = reader.await.unwrap();
    let checks = checks.load(Ordering::Relaxed);
    println!(
        "purge atomicity: {} purges ({} commits), {checks} reader snapshots checked, {midway} of them between two commits of one purge; 0 saw the mark and the deletions apart",
        ENTRIES / 10,
        ENTRIES / 10 * 4
    );
    assert!(checks > ENTRIES / 10);
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, ENTRIES)));
    assert_eq!(st.last_log_id, Some(log_id(1, ENTRIES)));
    db.close().await.unwrap();
}

/// Runs `change` on a fresh store of the simulated disk of `seed` (set up by `setup`) with
/// the disk halted at its `n`th operation from the change's start, for n = 1, 2, ... until
/// the change and a flush complete before the halt; after each, crashes the disk, reopens
/// and calls `check` with the reopened database. Returns the number of crash points.
async fn crash_at_every_point<S, C, K>(seed: u64, setup: S, change: C, mut check: K) -> u64
where
    S: AsyncFn(&Db),
    C: AsyncFn(&Db) -> Result<(), String>,
    K: AsyncFnMut(&Db, bool),
{
    for n in 1.. {
        let disk = SimDisk::new(seed);
        let db = Db::open(SIM_DB, sim_opts(&disk)).await.unwrap();
        setup(&db).await;
        db.flush().await.unwrap();
        let start = disk.ops();
        disk.halt_after(n);
        let res = change(&db).await;
        let res = match res {
            Ok(()) => db.flush().await.map_err(|e| e.to_string()),
            e => e,
        };
        let halted = disk.ops() - start >= n;
        let completed = res.is_ok() && !halted;
        drop(db);
        disk.crash();
        let db = Db::open(SIM_DB, sim_opts(&disk)).await.unwrap();
        check(&db, completed).await;
        db.close().await.unwrap();
        if completed {
            return n;
        }
    }
    unreachable!()
}

#[test]
fn a_crash_at_any_point_of_a_purge_leaves_a_whole_purge() {
    // 40 entries, purged up to 30 in commits of 8: marks 8, 16, 24 and 30.
    let marks: BTreeSet<u64> = [0, 8, 16, 24, 30].into();
    let mut seen = BTreeSet::new();
    let mut points = 0;
    runtime().block_on(async {
        for seed in 0..LOG_SEEDS {
            points += crash_at_every_point(
                seed,
                async |db: &Db| {
                    let mut log = LogStore::open(db.clone()).await.unwrap();
                    log.blocking_append((1..=40).map(|i| set(1, i, "k", "v"))).await.unwrap();
                },
                async |db: &Db| {
                    let mut log = LogStore::open(db.clone()).await.map_err(|e| e.to_string())?;
                    log.set_entries_per_commit(8);
                    log.purge(log_id(1, 30)).await.map_err(|e| e.to_string())
                },
                async |db: &Db, completed: bool| {
                    let mut log = LogStore::open(db.clone()).await.unwrap();
                    let (mark, indexes) = mark_and_indexes(db).await;
                    assert!(marks.contains(&mark), "seed {seed}: purged mark {mark} is no commit's");
                    assert_eq!(indexes, (mark + 1..=40).collect::<Vec<_>>(), "seed {seed}: mark {mark}");
                    let st = log.get_log_state().await.unwrap();
                    assert_eq!(st.last_purged_log_id.map_or(0, |l| l.index), mark);
                    assert_eq!(st.last_log_id, Some(log_id(1, 40)));
                    if completed {
                        assert_eq!(mark, 30, "seed {seed}: a flushed purge was lost");
                    }
                    seen.insert(mark);
                },
            )
            .await;
        }
    });
    println!(
        "purge crash: {LOG_SEEDS} seeds, {points} crash points, recovered purged marks {seen:?}; every one a whole purge (log = mark+1..=40)"
    );
    // Some crash fell between two of the purge's commits (a torn WAL write kept a prefix
    // of them): the runs are deterministic per seed, and these seeds do.
    assert!(seen.contains(&0) && seen.contains(&30) && seen.len() > 2, "{seen:?}");
}

#[test]
fn a_crash_at_any_point_of_a_truncation_leaves_no_hole() {
    let mut seen = BTreeSet::new();
    let mut points = 0;
    runtime().block_on(async {
        for seed in 0..LOG_SEEDS {
            points += crash_at_every_point(
                seed,
                async |db: &Db| {
                    let mut log = LogStore::open(db.clone()).await.unwrap();
                    log.blocking_append((1..=40).map(|i| set(1, i, "k", "v"))).await.unwrap();
                },
                async |db: &Db| {
                    let mut log = LogStore::open(db.clone()).await.map_err(|e| e.to_string())?;
                    log.set_entries_per_commit(8);
                    log.truncate(log_id(1, 21)).await.map_err(|e| e.to_string())
                },
                async |db: &Db, completed: bool| {
                    let (mark, indexes) = mark_and_indexes(db).await;
                    assert_eq!(mark, 0);
                    let last = indexes.last().copied().unwrap_or(0);
                    assert_eq!(indexes, (1..=last).collect::<Vec<_>>(), "seed {seed}: a hole");
                    assert!(last >= 20, "seed {seed}: truncated below the index asked");
                    if completed {
                        assert_eq!(last, 20, "seed {seed}: a flushed truncation was lost");
                    }
                    seen.insert(last);
                },
            )
            .await;
        }
    });
    println!(
        "truncate crash: {LOG_SEEDS} seeds, {points} crash points, recovered last indexes {seen:?}; no hole"
    );
    assert!(seen.contains(&40) && seen.contains(&20) && seen.len() > 2, "{seen:?}");
}

/// The state machine's applied log id, pairs and current snapshot metadata, and the pairs
/// of the snapshot file it names.
type SmView =
    (Option<LogId<NodeId>>, Vec<(String, String)>, SnapshotMeta<NodeId, Node>, Vec<(String, String)>);

async fn view(sm: &mut StateMachineStore) -> SmView {
    let (applied, pairs) = sm.dump().await.unwrap();
    let cur = sm.get_current_snapshot().await.unwrap().expect("a current snapshot");
    let (mut r, meta) = SnapshotReader::new(tokio::io::BufReader::new(*cur.snapshot)).await.unwrap();
    assert_eq!(meta, cur.meta, "the recorded metadata is not its file's");
    let mut file_pairs = Vec::new();
    while let Some((k, v)) = r.next_pair().await.unwrap() {
        file_pairs.push((String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()));
    }
    (applied, pairs, cur.meta, file_pairs)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_crash_at_any_point_of_a_snapshot_install_leaves_the_old_state_or_the_new_one() {
    let rt = runtime();
    // The snapshot to install, built on a store of its own (real disk).
    let mut entries = vec![membership(2, 1, &[1, 2, 3])];
    entries.extend((2..=300).map(|i| set(2, i, &format!("new{i:03}"), &format!("v{i}"))));
    let (new_meta, new_file) = rt.block_on(snapshot_of(entries));
    let old_applied = Some(log_id(1, 5));
    let mut outcomes = [0u64; 2];
    let mut points = 0;
    rt.block_on(async {
        for seed in 0..INSTALL_SEEDS {
            let snaps = tempfile::tempdir().unwrap();
            let mut old_view = None;
            points += crash_at_every_point(
                seed,
                async |db: &Db| {
                    // A fresh snapshot directory per run: the files are not on the simulated disk.
                    let _ = std::fs::remove_dir_all(snaps.path());
                    let (mut log, mut sm) = open_db(db.clone(), snaps.path().to_path_buf()).await.unwrap();
                    log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
                    let mut entries = vec![membership(1, 1, &[1])];
                    entries.extend((2..=5).map(|i| set(1, i, &format!("old{i}"), "x")));
                    sm.apply(entries).await.unwrap();
                    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
                },
                async |db: &Db| {
                    let mut sm = StateMachineStore::open(db.clone(), snaps.path().to_path_buf())
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut recv = sm.begin_receiving_snapshot().await.map_err(|e| e.to_string())?;
                    tokio::io::AsyncWriteExt::write_all(&mut *recv, &new_file).await.unwrap();
                    sm.install_snapshot(&new_meta, recv).await.map_err(|e| e.to_string())
                },
                async |db: &Db, completed: bool| {
                    let mut sm =
                        StateMachineStore::open(db.clone(), snaps.path().to_path_buf()).await.unwrap();
                    let v = view(&mut sm).await;
                    // The data, the applied id, the record and its file agree, on the old
                    // state or on the new one.
                    assert_eq!(v.0, v.2.last_log_id, "seed {seed}: applied and recorded snapshot differ");
                    assert_eq!(v.1, v.3, "seed {seed}: the state is not its snapshot file's");
                    if v.0 == old_applied {
                        let old = old_view.get_or_insert_with(|| v.clone());
                        assert_eq!(&v, old, "seed {seed}: the old state changed");
                        assert!(!completed, "seed {seed}: a completed install was lost");
                        outcomes[0] += 1;
                    } else {
                        assert_eq!(v.2, new_meta, "seed {seed}: neither the old state nor the new");
                        assert_eq!(v.1.len(), 299);
                        outcomes[1] += 1;
                    }
                    // Nothing else is left: one generation's bucket, one snapshot file.
                    let sm_buckets =
                        db.buckets().unwrap().into_iter().filter(|b| b.starts_with("raft.sm.")).count();
                    assert_eq!(sm_buckets, 1, "seed {seed}");
                    assert_eq!(files_in(snaps.path()).len(), 1, "seed {seed}: {:?}", files_in(snaps.path()));
                },
            )
            .await;
        }
    });
    println!(
        "install crash: {INSTALL_SEEDS} seeds, {points} crash points; recovered the old state whole {} times, the new one whole {} times, anything else 0",
        outcomes[0], outcomes[1]
    );
    assert!(outcomes[0] > 0 && outcomes[1] > 0);
}

/// The bytes and meta of a snapshot of `entries` applied to a fresh store (real disk).
async fn snapshot_of(entries: Vec<Entry<TypeConfig>>) -> (SnapshotMeta<NodeId, Node>, Vec<u8>) {
    let src = tempfile::tempdir().unwrap();
    let db = Db::open(src.path().join("db"), Options::default()).await.unwrap();
    let (_log, mut sm) = open_db(db.clone(), src.path().join("snapshots")).await.unwrap();
    sm.apply(entries).await.unwrap();
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut bytes = Vec::new();
    let mut f = *sm.get_current_snapshot().await.unwrap().unwrap().snapshot;
    tokio::io::AsyncReadExt::read_to_end(&mut f, &mut bytes).await.unwrap();
    db.close().await.unwrap();
    (snap.meta, bytes)
}

/// Polls `fut` a few times, yielding between polls, and says whether it is still pending.
async fn still_pending<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    for _ in 0..20 {
        if futures::poll!(&mut *fut).is_ready() {
            return false;
        }
        tokio::task::yield_now().await;
    }
    true
}

/// openraft orders the purge of what a received snapshot covers as soon as it queues the
/// install, so the purge can reach the log store before the install's switch commits. If
/// it committed first, a crash between the two would leave the log purged past the
/// snapshot on disk, a store openraft refuses to start on (the kill test met it). The
/// purge must wait for the switch, commit nothing while it waits, and fail if the install
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_past_the_snapshot_being_received_waits_for_its_install() {
    let mut entries = vec![membership(2, 1, &[1, 2, 3])];
    entries.extend((2..=15).map(|i| set(2, i, &format!("new{i:02}"), "v")));
    let (new_meta, new_file) = snapshot_of(entries).await;
    assert_eq!(new_meta.last_log_id, Some(log_id(2, 15)));

    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db"), Options::default()).await.unwrap();
    let (mut log, mut sm) = open_db(db.clone(), dir.path().join("snapshots")).await.unwrap();
    log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    let mut entries = vec![membership(1, 1, &[1])];
    entries.extend((2..=5).map(|i| set(1, i, &format!("old{i}"), "x")));
    sm.apply(entries).await.unwrap();
    sm.get_snapshot_builder().await.build_snapshot().await.unwrap(); // recorded at 5
    log.blocking_append((1..=20).map(|i| set(1, i, &format!("k{i}"), "v"))).await.unwrap();

    // A failed install fails the purge that waited for it, and the log stays whole.
    let mut recv = sm.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *recv, b"not a snapshot").await.unwrap();
    {
        let mut purger = log.clone();
        let mut purge = Box::pin(purger.purge(log_id(2, 15)));
        assert!(still_pending(&mut purge).await, "a purge past the recorded snapshot did not wait");
        assert!(sm.install_snapshot(&new_meta, recv).await.is_err());
        assert!(purge.await.is_err(), "a purge that waited for a failed install went ahead");
    }
    assert_eq!(mark_and_indexes(&db).await, (0, (1..=20).collect()));

    let mut recv = sm.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *recv, &new_file).await.unwrap();
    // Up to the recorded snapshot, a purge does not wait.
    log.purge(log_id(1, 3)).await.unwrap();
    assert_eq!(mark_and_indexes(&db).await, (3, (4..=20).collect()));
    let mut purger = log.clone();
    let mut purge = Box::pin(purger.purge(log_id(2, 15)));
    assert!(still_pending(&mut purge).await, "a purge past the recorded snapshot did not wait");
    // What a crash now would recover: nothing of the purge is committed.
    assert_eq!(mark_and_indexes(&db).await, (3, (4..=20).collect()));
    sm.install_snapshot(&new_meta, recv).await.unwrap();
    purge.await.unwrap();
    assert_eq!(mark_and_indexes(&db).await, (15, (16..=20).collect()));
    drop((log, purger, sm));
    db.close().await.unwrap();

    // Reopened, the store is one openraft starts on: purged no further than the snapshot.
    let db = Db::open(dir.path().join("db"), Options::default()).await.unwrap();
    let (mut log, mut sm) = open_db(db.clone(), dir.path().join("snapshots")).await.unwrap();
    let purged = log.get_log_state().await.unwrap().last_purged_log_id;
    let snapshot = sm.get_current_snapshot().await.unwrap().unwrap().meta.last_log_id;
    assert_eq!((purged, snapshot), (Some(log_id(2, 15)), Some(log_id(2, 15))));
    db.close().await.unwrap();
}
