//! openraft's own storage suite (`openraft::testing::Suite::test_all`) over ringkv, and the
//! store's own promises: a flush callback fires only after an fsync covering the append,
//! everything survives a reopen, a snapshot built on one node installs on another, and a
//! damaged snapshot file is refused with a storage error.
//!
//! The I/O backend is whatever `RINGKV_IO_BACKEND` selects (the README's test command runs
//! this file once per backend).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::time::Instant;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};
use ringkv::{Db, Options};
use ringkv_raft::store::{open_db, LogStore, StateMachineStore};
use ringkv_raft::{NodeId, Request, TypeConfig};
use tempfile::TempDir;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

fn opts() -> Options {
    Options::default().cache_capacity(4 << 20)
}

/// Keeps a store's directory and closes its database when a suite case ends: `close` runs
/// on a thread of its own (the case's tokio runtime is still blocked on the case), and the
/// directory goes only after it.
struct Guard {
    db: Option<Db>,
    dir: Option<TempDir>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let (db, dir) = (self.db.take(), self.dir.take());
        std::thread::spawn(move || {
            if let Some(db) = db {
                futures::executor::block_on(db.close()).unwrap();
            }
            drop(dir);
        })
        .join()
        .unwrap();
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("db"), opts()).await.unwrap();
        let (log, sm) = open_db(db.clone(), dir.path().join("snapshots")).await?;
        Ok((Guard { db: Some(db), dir: Some(dir) }, log, sm))
    }
}

#[test]
fn openraft_suite_test_all() {
    let t = Instant::now();
    Suite::test_all(Builder).unwrap();
    let backend = futures::executor::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts()).await.unwrap();
        let b = db.io_backend();
        db.close().await.unwrap();
        b
    });
    println!(
        "openraft 0.9 Suite::test_all over ringkv ({backend:?} backend): passed in {:.2}s",
        t.elapsed().as_secs_f64()
    );
}

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

async fn open(dir: &std::path::Path) -> (Db, LogStore, StateMachineStore) {
    let db = Db::open(dir.join("db"), opts()).await.unwrap();
    let (log, sm) = open_db(db.clone(), dir.join("snapshots")).await.unwrap();
    (db, log, sm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_callback_fires_after_an_fsync_covering_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut log, _sm) = open(dir.path()).await;
    for i in 1..=20u64 {
        let before = db.stats().wal_fsyncs;
        log.blocking_append([set(1, i, &format!("k{i}"), "v")]).await.unwrap();
        assert!(db.stats().wal_fsyncs > before, "append {i} acknowledged without an fsync");
    }
    // Concurrent appends from many stores of one database share fsyncs (group commit):
    // here, sequential appends each need their own.
    assert_eq!(log.log_ids().await.unwrap().len(), 20);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_vote_state_machine_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (db, mut log, mut sm) = open(dir.path()).await;
        let mut entries = vec![membership(1, 1, &[1, 2, 3])];
        entries.extend((2..=100).map(|i| set(1, i, &format!("k{i:03}"), &format!("v{i}"))));
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, 100))).await.unwrap();
        let replies = sm.apply(entries).await.unwrap();
        assert_eq!(replies.len(), 100);
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 100)));
        log.purge(log_id(1, 50)).await.unwrap();
        log.truncate(log_id(1, 91)).await.unwrap();
        db.close().await.unwrap();
    }
    let (db, mut log, mut sm) = open(dir.path()).await;
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 50)));
    assert_eq!(st.last_log_id, Some(log_id(1, 90)));
    let ids: Vec<u64> = log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(ids, (51..=90).collect::<Vec<_>>());
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(1, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 100)));
    let (applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 100)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
    assert_eq!(sm.get("k042").await.unwrap().as_deref(), Some("v42"));
    let cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta.last_log_id, Some(log_id(1, 100)));
    let (_, pairs) = sm.dump().await.unwrap();
    assert_eq!(pairs.len(), 99);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_on_another_node_and_a_damaged_one_is_refused() {
    let (da, db_dir, dc) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (dba, _la, mut a) = open(da.path()).await;
    let (dbb, _lb, mut b) = open(db_dir.path()).await;
    let (dbc, _lc, mut c) = open(dc.path()).await;
    // b holds stale keys the snapshot must replace.
    b.apply([set(1, 1, "stale", "x"), set(1, 2, "k0001", "old")]).await.unwrap();
    let mut entries = vec![membership(1, 1, &[1, 2])];
    entries.extend(
        (2..=3000).map(|i| set(2, i, &format!("k{i:04}"), &"v".repeat(usize::try_from(i % 50).unwrap()))),
    );
    a.apply(entries).await.unwrap();
    let snap = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let (_, want) = a.dump().await.unwrap();

    let mut cur = a.get_current_snapshot().await.unwrap().unwrap();
    let mut recv = b.begin_receiving_snapshot().await.unwrap();
    tokio::io::copy(&mut *cur.snapshot, &mut *recv).await.unwrap();
    b.install_snapshot(&snap.meta, recv).await.unwrap();
    assert_eq!(b.applied_state().await.unwrap().0, Some(log_id(2, 3000)));
    let (applied, got) = b.dump().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 3000)));
    assert_eq!(got, want, "installed state differs from the snapshot's source");
    assert_eq!(b.get("stale").await.unwrap(), None);
    assert_eq!(b.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);

    // A flipped byte in the middle of the file: install fails, c's state is untouched.
    c.apply([set(1, 1, "mine", "1")]).await.unwrap();
    let mut cur = a.get_current_snapshot().await.unwrap().unwrap();
    let mut recv = c.begin_receiving_snapshot().await.unwrap();
    tokio::io::copy(&mut *cur.snapshot, &mut *recv).await.unwrap();
    let len = recv.seek(std::io::SeekFrom::End(0)).await.unwrap();
    recv.seek(std::io::SeekFrom::Start(len / 2)).await.unwrap();
    recv.write_all(b"\xff\xfe").await.unwrap();
    recv.flush().await.unwrap();
    assert!(c.install_snapshot(&snap.meta, recv).await.is_err());
    // The refused file is not left placed as a snapshot file.
    let placed: Vec<_> = std::fs::read_dir(dc.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("snap-"))
        .collect();
    assert!(placed.is_empty(), "{placed:?}");
    assert_eq!(c.get("mine").await.unwrap().as_deref(), Some("1"));
    assert_eq!(c.applied_state().await.unwrap().0, Some(log_id(1, 1)));

    for db in [dba, dbb, dbc] {
        db.close().await.unwrap();
    }
    // b reopens on the installed generation.
    let (dbb, _lb, b) = open(db_dir.path()).await;
    assert_eq!(b.dump().await.unwrap().1, want);
    dbb.close().await.unwrap();
}
