//! openraft's storage traits over one ringkv database.
//!
//! Buckets:
//!
//! | bucket | keys | values |
//! |---|---|---|
//! | `raft.log` | the entry's index, 8 bytes big-endian (so key order is index order) | the entry, JSON |
//! | `raft.meta` | `vote`, `committed`, `purged`, `sm.generation`, `snapshot` | JSON |
//! | `raft.sm.<g>` | `d` + the user's key; `m.applied`, `m.membership` | the user's value; JSON |
//!
//! Durability: a vote is saved with `Durability::Sync` (openraft wants it on disk before
//! `save_vote` returns). Everything else commits with `Durability::None` and is made
//! durable by the flusher ([`LogStore`]) or by the next synced commit: ringkv's WAL is a
//! prefix, so a durable commit carries every earlier one with it. A state machine commit
//! that a crash loses is re-applied from the log (the committed mark is saved, and the log
//! entries it applied are earlier in the WAL, so they survive whenever it does).
//!
//! Atomicity: every change that must be seen whole is one ringkv commit across buckets
//! ([`ringkv::Db::batch`]: one WAL record, one timestamp), so a reader's snapshot and a
//! recovery after a crash see all of it or none of it:
//!
//! - a purge deletes entries and moves the `purged` mark in the same commit. A purge too
//!   large for one commit (more than about half a million entries) is several, lowest
//!   entries first, each carrying the mark of the last entry it deletes: every commit is a
//!   whole, smaller purge.
//! - a truncation is one commit (several for a huge one, highest entries first, each
//!   leaving a log without a hole).
//! - an apply writes the data, the applied log id and the membership of the state machine
//!   in one commit (one per 32 MiB of writes, each a whole prefix of the entries).
//! - installing a snapshot loads it into the bucket of a new generation `raft.sm.<g+1>`,
//!   which nothing reads until the switch; the switch is one synced commit that writes the
//!   last of the load, the applied log id and membership, `sm.generation` and the
//!   `snapshot` record naming the installed file, together. A crash before it leaves the
//!   old state and the old snapshot in force, after it the new ones.
//!
//! Order across the two stores: openraft orders the purge of the log a received snapshot
//! covers as soon as it queues the snapshot's install, so the log store's purge may run
//! before the state machine's switch commit. A crash between the two would leave the log
//! purged past the snapshot on disk, and openraft refuses to start on such a store
//! (`purge_upto <= snapshot_last_log_id`). Invariant: **the durable `purged` mark never
//! passes the last log id of the durable snapshot record, while a snapshot is being
//! received.** The two stores of [`open_db`] share a gate (`PurgeGate`): a receive opens
//! it, the end of the install (its switch committed, or its failure) closes it, and a
//! purge past the recorded snapshot waits while it is open (or fails, if the install
//! failed). openraft's other purges never pass the recorded snapshot: it purges only what
//! a snapshot it was told about covers, and a build or install records its snapshot
//! before it tells openraft. The gate opens at `begin_receiving_snapshot`, which openraft
//! 0.9's chunked receiver calls before any chunk arrives; a network that hands
//! `Raft::install_full_snapshot` a snapshot it received by other means skips it, and the
//! purge of that install is then not held back.
//!
//! What still waits for the next open: ringkv cannot drop a bucket inside a commit, and a
//! snapshot file is not in the database. So the bucket of a replaced generation, or of an
//! install a crash cut short, and the snapshot files that the `snapshot` record does not
//! name are removed when the state machine is opened (and by the install itself when it
//! is not interrupted).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::TryStreamExt;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use ringkv::{Bucket, Db, Durability, WriteBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncSeekExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, Mutex, RwLock};

use crate::snapshot::{Meta, SnapshotReader, SnapshotWriter};
use crate::{Node, NodeId, Request, Response, SnapshotData, TypeConfig, MAX_KEY_BYTES};

/// openraft's storage error for this crate's type configuration.
pub type StoreError = StorageError<NodeId>;
type StoreResult<T> = Result<T, StoreError>;

const LOG_BUCKET: &str = "raft.log";
const META_BUCKET: &str = "raft.meta";
const SM_BUCKET_PREFIX: &str = "raft.sm.";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
const KEY_SM_GENERATION: &[u8] = b"sm.generation";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

const SM_APPLIED: &[u8] = b"m.applied";
const SM_MEMBERSHIP: &[u8] = b"m.membership";
const SM_DATA_PREFIX: u8 = b'd';

/// A ringkv commit carries at most about this many bytes of writes (well below ringkv's
/// largest WAL record): a larger append, apply or snapshot load is split into several
/// commits, in order.
const COMMIT_BYTES: usize = 32 * 1024 * 1024;

/// Most log entries one purge or truncation deletes in one commit (a deletion takes its
/// 8-byte key and 13 bytes of WAL record, so this is about 11 MiB of record).
const COMMIT_ENTRIES: usize = COMMIT_BYTES / 64;

fn err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StoreError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn msg_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, what: impl ToString) -> StoreError {
    StorageIOError::new(subject, verb, AnyError::error(what)).into()
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn to_json<T: Serialize>(v: &T, subject: ErrorSubject<NodeId>) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| err(subject, ErrorVerb::Write, e))
}

fn from_json<T: DeserializeOwned>(bytes: &[u8], subject: ErrorSubject<NodeId>) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| err(subject, ErrorVerb::Read, e))
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(SM_DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

fn data_range() -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(vec![SM_DATA_PREFIX]), Bound::Excluded(vec![SM_DATA_PREFIX + 1]))
}

fn sm_bucket_name(generation: u64) -> String {
    format!("{SM_BUCKET_PREFIX}{generation}")
}

/// Opens the database in `dir/db` (snapshot files in `dir/snapshots`) and the two stores
/// over it. Must be called inside a tokio runtime (the log store's flusher is a task).
pub async fn open(dir: &Path, opts: ringkv::Options) -> StoreResult<(LogStore, StateMachineStore)> {
    let db =
        Db::open(dir.join("db"), opts).await.map_err(|e| err(ErrorSubject::Store, ErrorVerb::Read, e))?;
    open_db(db, dir.join("snapshots")).await
}

/// The two stores over an open database; snapshot files go to `snapshot_dir` (created if
/// missing). Must be called inside a tokio runtime.
pub async fn open_db(db: Db, snapshot_dir: PathBuf) -> StoreResult<(LogStore, StateMachineStore)> {
    let gate = PurgeGate::default();
    let log = LogStore::open_gated(db.clone(), Some(gate.clone())).await?;
    let sm = StateMachineStore::open_gated(db, snapshot_dir, gate).await?;
    Ok((log, sm))
}

/// What the state machine tells the log store about snapshots (module doc, "Order across
/// the two stores").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GateState {
    /// The index of the last log id of the durable snapshot record, if any.
    recorded: Option<u64>,
    /// A snapshot is being received (from `begin_receiving_snapshot` to the end of the
    /// next install).
    receiving: bool,
    /// The last install failed: a purge waiting for it fails too.
    failed: bool,
}

/// Holds back a log purge past the recorded snapshot while a snapshot is being received.
#[derive(Clone, Default)]
pub(crate) struct PurgeGate {
    state: Arc<watch::Sender<GateState>>,
}

impl PurgeGate {
    fn update(&self, f: impl FnOnce(&mut GateState)) {
        self.state.send_modify(f);
    }

    /// Returns once a purge up to `index` may commit: the recorded snapshot covers it, or
    /// no snapshot is being received. Fails if the install it waited for failed.
    async fn wait_covered(&self, index: u64) -> StoreResult<()> {
        let mut rx = self.state.subscribe();
        let mut waited = false;
        loop {
            let st = *rx.borrow_and_update();
            if st.recorded.is_some_and(|r| r >= index) {
                return Ok(());
            }
            if st.receiving {
                waited = true;
            } else if waited && st.failed {
                return Err(msg_err(
                    ErrorSubject::Logs,
                    ErrorVerb::Write,
                    format!("purge up to {index} waited for a snapshot install that failed"),
                ));
            } else {
                return Ok(());
            }
            // The sender lives as long as `self`, so `changed` cannot fail here.
            rx.changed().await.map_err(|e| err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The log store

/// openraft's log storage ([`RaftLogStorage`]) over ringkv. Cheap to clone: every clone
/// (the log reader openraft asks for included) is the same store.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogInner>,
}

struct LogInner {
    db: Db,
    log: Bucket,
    meta: Bucket,
    /// Callbacks of appends, in order, for the flusher task.
    flushes: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
    /// Most entries a purge or truncation deletes per commit ([`COMMIT_ENTRIES`]; tests
    /// lower it to see a large purge's commits one by one).
    entries_per_commit: AtomicUsize,
    /// Shared with the state machine of [`open_db`]; `None` for a log store on its own.
    gate: Option<PurgeGate>,
}

impl LogStore {
    /// The log store of `db` (its buckets created if missing), on its own: no state
    /// machine orders its purges ([`open_db`] opens the two together). Starts the flusher
    /// task on the current tokio runtime.
    pub async fn open(db: Db) -> StoreResult<LogStore> {
        Self::open_gated(db, None).await
    }

    async fn open_gated(db: Db, gate: Option<PurgeGate>) -> StoreResult<LogStore> {
        let w = |e| err(ErrorSubject::Store, ErrorVerb::Write, e);
        let log = db.bucket(LOG_BUCKET).await.map_err(w)?;
        let meta = db.bucket(META_BUCKET).await.map_err(w)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        handle.spawn(flusher(db.clone(), rx));
        let entries_per_commit = AtomicUsize::new(COMMIT_ENTRIES);
        Ok(LogStore { inner: Arc::new(LogInner { db, log, meta, flushes: tx, entries_per_commit, gate }) })
    }

    /// Sets the most entries a purge or truncation deletes in one commit (at least 1).
    /// For tests that watch a large purge commit by commit; not an API.
    #[doc(hidden)]
    pub fn set_entries_per_commit(&self, n: usize) {
        self.inner.entries_per_commit.store(n.max(1), Ordering::Relaxed);
    }

    /// The database under the store.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    async fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> StoreResult<Option<T>> {
        let v = self.inner.meta.get(key).await.map_err(|e| err(subject.clone(), ErrorVerb::Read, e))?;
        v.map(|b| from_json(&b, subject)).transpose()
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
    ) -> StoreResult<()> {
        let w = |e| err(subject.clone(), ErrorVerb::Write, e);
        let mut t = self.inner.meta.begin().map_err(w)?;
        t.put(key, to_json(value, subject.clone())?).map_err(w)?;
        t.commit_with(durability).await.map_err(w)?;
        Ok(())
    }

    /// The keys of the entries whose index is in `range`, in index order.
    async fn log_keys(&self, range: impl RangeBounds<u64>) -> StoreResult<Vec<[u8; 8]>> {
        let r = |e| err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let bounds = (range.start_bound().map(|i| log_key(*i)), range.end_bound().map(|i| log_key(*i)));
        let mut it = self.inner.log.range::<[u8; 8], _>(bounds).await.map_err(r)?;
        let mut keys = Vec::new();
        while let Some((k, _)) = it.try_next().await.map_err(r)? {
            let key: [u8; 8] = k[..]
                .try_into()
                .map_err(|_| msg_err(ErrorSubject::Logs, ErrorVerb::Read, "log key is not 8 bytes"))?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// The log id of the entry stored under `key`.
    async fn log_id_at(&self, key: [u8; 8]) -> StoreResult<LogId<NodeId>> {
        let index = u64::from_be_bytes(key);
        let v = self
            .inner
            .log
            .get(key)
            .await
            .map_err(|e| err(ErrorSubject::LogIndex(index), ErrorVerb::Read, e))?
            .ok_or_else(|| msg_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, "entry vanished"))?;
        Ok(from_json::<Entry<TypeConfig>>(&v, ErrorSubject::LogIndex(index))?.log_id)
    }

    /// Every entry's log id from the first present to the last, for inspection (the kill
    /// test compares the logs of the nodes with it).
    pub async fn log_ids(&self) -> StoreResult<Vec<LogId<NodeId>>> {
        let mut reader = self.clone();
        Ok(reader.try_get_log_entries(..).await?.into_iter().map(|e| e.log_id).collect())
    }
}

/// Fires the flush callbacks of appends, in the order of the appends, once
/// [`Db::flush`] made them durable. Every callback waiting when a flush starts is covered
/// by that flush; a flush that fails fails every callback it covered (ringkv then refuses
/// writes until it is reopened, so later ones fail too). Ends when the store is dropped.
async fn flusher(db: Db, mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>) {
    let mut batch = Vec::new();
    while let Some(cb) = rx.recv().await {
        batch.push(cb);
        while let Ok(cb) = rx.try_recv() {
            batch.push(cb);
        }
        let res = db.flush().await;
        for cb in batch.drain(..) {
            cb.log_io_completed(res.clone().map_err(io::Error::other));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let r = |e| err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let bounds = (range.start_bound().map(|i| log_key(*i)), range.end_bound().map(|i| log_key(*i)));
        let mut it = self.inner.log.range::<[u8; 8], _>(bounds).await.map_err(r)?;
        let mut out = Vec::new();
        while let Some((k, v)) = it.try_next().await.map_err(r)? {
            let index = log_index(&k)
                .ok_or_else(|| msg_err(ErrorSubject::Logs, ErrorVerb::Read, "log key is not 8 bytes"))?;
            let entry: Entry<TypeConfig> = from_json(&v, ErrorSubject::LogIndex(index))?;
            if entry.log_id.index != index {
                return Err(msg_err(
                    ErrorSubject::LogIndex(index),
                    ErrorVerb::Read,
                    format!("entry stored at index {index} says index {}", entry.log_id.index),
                ));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let r = |e| err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let last_purged_log_id = self.read_meta::<LogId<NodeId>>(KEY_PURGED, ErrorSubject::Logs).await?;
        let mut it = self.inner.log.range_rev::<&[u8], _>(..).await.map_err(r)?;
        let last = match it.try_next().await.map_err(r)? {
            Some((k, v)) => {
                let index = log_index(&k)
                    .ok_or_else(|| msg_err(ErrorSubject::Logs, ErrorVerb::Read, "log key is not 8 bytes"))?;
                Some(from_json::<Entry<TypeConfig>>(&v, ErrorSubject::LogIndex(index))?.log_id)
            }
            None => None,
        };
        let last_log_id = match (last, last_purged_log_id) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (Some(l), _) => Some(l),
            (None, p) => p,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.write_meta(KEY_VOTE, vote, ErrorSubject::Vote, Durability::Sync).await
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        self.write_meta(KEY_COMMITTED, &committed, ErrorSubject::Store, Durability::None).await
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self.read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, ErrorSubject::Store).await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let w = |e| err(ErrorSubject::Logs, ErrorVerb::Write, e);
        let mut t = self.inner.log.begin().map_err(w)?;
        let mut bytes = 0;
        for entry in entries {
            let value = to_json(&entry, ErrorSubject::Log(entry.log_id))?;
            bytes += value.len();
            t.put(log_key(entry.log_id.index), value).map_err(w)?;
            if bytes >= COMMIT_BYTES {
                t.commit_with(Durability::None).await.map_err(w)?;
                t = self.inner.log.begin().map_err(w)?;
                bytes = 0;
            }
        }
        // Visible to readers once this returns; durable once the flusher's flush returns.
        t.commit_with(Durability::None).await.map_err(w)?;
        self.inner
            .flushes
            .send(callback)
            .map_err(|_| msg_err(ErrorSubject::Logs, ErrorVerb::Write, "the log flusher task is gone"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        // One commit; a truncation of more than `entries_per_commit` entries is several,
        // highest entries first, so that a crash between two leaves a log without a hole
        // (a shorter truncation than asked: the conflicting entries left are truncated
        // again when the leader re-sends, as after a truncation the crash lost whole).
        let w = |e| err(ErrorSubject::Logs, ErrorVerb::Write, e);
        let per_commit = self.inner.entries_per_commit.load(Ordering::Relaxed);
        let keys = self.log_keys(log_id.index..).await?;
        for chunk in keys.rchunks(per_commit) {
            let mut b = self.inner.db.batch();
            for k in chunk.iter().rev() {
                b.delete(&self.inner.log, k).map_err(w)?;
            }
            b.commit_with(Durability::None).await.map_err(w)?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        // The deletions and the mark that covers them in one commit: no reader and no
        // recovery sees the mark without the deletions or the reverse. A purge of more than
        // `entries_per_commit` entries is several such commits, lowest entries first, each
        // marked with the log id of the last entry it deletes.
        // Past the recorded snapshot, only after the install being received records it
        // (module doc, "Order across the two stores").
        if let Some(gate) = &self.inner.gate {
            gate.wait_covered(log_id.index).await?;
        }
        let w = |e| err(ErrorSubject::Logs, ErrorVerb::Write, e);
        let per_commit = self.inner.entries_per_commit.load(Ordering::Relaxed);
        let keys = self.log_keys(..=log_id.index).await?;
        let chunks: Vec<&[[u8; 8]]> = keys.chunks(per_commit).collect();
        let last = chunks.len().saturating_sub(1);
        for i in 0..=last {
            let chunk = chunks.get(i).copied().unwrap_or_default();
            let mark = match chunk.last() {
                Some(k) if i < last => self.log_id_at(*k).await?,
                _ => log_id,
            };
            let mut b = self.inner.db.batch();
            for k in chunk {
                b.delete(&self.inner.log, k).map_err(w)?;
            }
            b.put(&self.inner.meta, KEY_PURGED, to_json(&mark, ErrorSubject::Logs)?).map_err(w)?;
            b.commit_with(Durability::None).await.map_err(w)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The state machine

/// openraft's state machine ([`RaftStateMachine`]) over ringkv: a key-value store. Cheap to
/// clone (the snapshot builder is a clone); [`StateMachineStore::get`] serves reads.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<SmInner>,
}

struct SmInner {
    db: Db,
    meta: Bucket,
    snapshot_dir: PathBuf,
    /// The generation in force and what was applied to it. `apply` and `install_snapshot`
    /// hold it for writing; a snapshot build holds it for reading only while it takes its
    /// ringkv snapshot.
    state: RwLock<SmState>,
    /// Held for reading by a snapshot build while it streams a generation's bucket, for
    /// writing by an install before it drops the replaced generation's bucket.
    generation_in_use: RwLock<()>,
    /// Serialises the snapshot files and the `snapshot` record that names the current one.
    files: Mutex<()>,
    /// Makes snapshot ids and file names unique.
    seq: AtomicU64,
    /// Shared with the log store of [`open_db`]: told of receives, installs and records.
    gate: PurgeGate,
}

struct SmState {
    generation: u64,
    bucket: Bucket,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
}

/// The record of the current snapshot file in `raft.meta`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotRecord {
    file: String,
    meta: Meta,
}

fn sm_err(verb: ErrorVerb) -> impl Fn(ringkv::Error) -> StoreError {
    move |e| err(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(meta: Option<&Meta>, verb: ErrorVerb) -> impl Fn(io::Error) -> StoreError {
    let signature = meta.map(openraft::SnapshotMeta::signature);
    move |e| err(ErrorSubject::Snapshot(signature.clone()), verb, e)
}

impl StateMachineStore {
    /// The state machine of `db`, its snapshot files in `snapshot_dir`. Drops the buckets of
    /// generations not in force and removes the snapshot files that the `snapshot` record
    /// does not name: what an install or a snapshot build leaves behind when a crash stops
    /// it (a partly loaded generation that was never switched to, a replaced generation not
    /// yet dropped, a file placed but never recorded, a replaced file not yet removed).
    /// These are garbage, never state: the switch to a generation and the record of a file
    /// are one commit, so whatever a crash cut, the generation in force and the file
    /// recorded are the ones that commit left.
    pub async fn open(db: Db, snapshot_dir: PathBuf) -> StoreResult<StateMachineStore> {
        Self::open_gated(db, snapshot_dir, PurgeGate::default()).await
    }

    async fn open_gated(db: Db, snapshot_dir: PathBuf, gate: PurgeGate) -> StoreResult<StateMachineStore> {
        let w = sm_err(ErrorVerb::Write);
        let r = sm_err(ErrorVerb::Read);
        tokio::fs::create_dir_all(&snapshot_dir).await.map_err(snap_err(None, ErrorVerb::Write))?;
        let meta = db.bucket(META_BUCKET).await.map_err(&w)?;
        let generation = match meta.get(KEY_SM_GENERATION).await.map_err(&r)? {
            Some(b) => from_json::<u64>(&b, ErrorSubject::StateMachine)?,
            None => 0,
        };
        let name = sm_bucket_name(generation);
        for other in db.buckets().map_err(&r)? {
            if other.starts_with(SM_BUCKET_PREFIX) && other != name {
                db.drop_bucket(&other).await.map_err(&w)?;
            }
        }
        let bucket = db.bucket(&name).await.map_err(&w)?;
        let applied = match bucket.get(SM_APPLIED).await.map_err(&r)? {
            Some(b) => Some(from_json(&b, ErrorSubject::StateMachine)?),
            None => None,
        };
        let membership = match bucket.get(SM_MEMBERSHIP).await.map_err(&r)? {
            Some(b) => from_json(&b, ErrorSubject::StateMachine)?,
            None => StoredMembership::default(),
        };
        let current = match meta.get(KEY_SNAPSHOT).await.map_err(&r)? {
            Some(b) => Some(from_json::<SnapshotRecord>(&b, ErrorSubject::Snapshot(None))?),
            None => None,
        };
        let mut seq = 0;
        let mut dir = tokio::fs::read_dir(&snapshot_dir).await.map_err(snap_err(None, ErrorVerb::Read))?;
        while let Some(ent) = dir.next_entry().await.map_err(snap_err(None, ErrorVerb::Read))? {
            let fname = ent.file_name().to_string_lossy().into_owned();
            if let Some(n) = fname.strip_prefix("snap-").and_then(|s| s.split('.').next()) {
                seq = seq.max(n.parse::<u64>().unwrap_or(0));
            }
            if current.as_ref().is_none_or(|c| c.file != fname) {
                tokio::fs::remove_file(ent.path()).await.map_err(snap_err(None, ErrorVerb::Write))?;
            }
        }
        let recorded = current.as_ref().and_then(|c| c.meta.last_log_id).map(|l| l.index);
        gate.update(|g| g.recorded = recorded);
        Ok(StateMachineStore {
            inner: Arc::new(SmInner {
                db,
                meta,
                snapshot_dir,
                state: RwLock::new(SmState { generation, bucket, applied, membership }),
                generation_in_use: RwLock::new(()),
                files: Mutex::new(()),
                seq: AtomicU64::new(seq),
                gate,
            }),
        })
    }

    /// The database under the store.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Reads `key` from the state machine as applied on this node (linearizable when a
    /// `Raft::ensure_linearizable` call returned just before).
    pub async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Ok(None);
        }
        let st = self.inner.state.read().await;
        let v = st.bucket.get(data_key(key.as_bytes())).await.map_err(sm_err(ErrorVerb::Read))?;
        v.map(|b| {
            String::from_utf8(b.to_vec()).map_err(|e| err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
        })
        .transpose()
    }

    /// Every pair of the state machine with the log id it reflects, read at one ringkv
    /// snapshot (for inspection: the kill test compares the nodes with it).
    pub async fn dump(&self) -> StoreResult<(Option<LogId<NodeId>>, Vec<(String, String)>)> {
        let r = sm_err(ErrorVerb::Read);
        let (snap, bucket, applied) = {
            let st = self.inner.state.read().await;
            (self.inner.db.snapshot().map_err(&r)?, st.bucket.clone(), st.applied)
        };
        let mut it = snap.range(&bucket, data_range()).await.map_err(&r)?;
        let mut out = Vec::new();
        while let Some((k, v)) = it.try_next().await.map_err(&r)? {
            let k = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((k, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok((applied, out))
    }

    /// The last applied log id.
    pub async fn applied(&self) -> Option<LogId<NodeId>> {
        self.inner.state.read().await.applied
    }

    fn new_snapshot_id(&self, last: Option<LogId<NodeId>>) -> (u64, String) {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = match last {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        (seq, id)
    }

    /// Makes `tmp` the snapshot file `snap-<seq>.snap` on disk (sync, rename, sync the
    /// directory) and returns its name. Nothing names it yet: it becomes the current
    /// snapshot only with the commit of its record (a file left unrecorded by a crash is
    /// removed at the next open).
    async fn place_snapshot_file(&self, tmp: &Path, seq: u64, meta: &Meta) -> StoreResult<String> {
        let e = snap_err(Some(meta), ErrorVerb::Write);
        let fname = format!("snap-{seq}.snap");
        tokio::fs::File::open(tmp).await.map_err(&e)?.sync_all().await.map_err(&e)?;
        tokio::fs::rename(tmp, self.inner.snapshot_dir.join(&fname)).await.map_err(&e)?;
        tokio::fs::File::open(&self.inner.snapshot_dir).await.map_err(&e)?.sync_all().await.map_err(&e)?;
        Ok(fname)
    }

    /// Makes the built snapshot `tmp` the current snapshot file (placed, then recorded with
    /// one synced commit) and removes the file it replaces, under `files`.
    async fn publish_snapshot_file(&self, tmp: &Path, seq: u64, meta: &Meta) -> StoreResult<()> {
        let _files = self.inner.files.lock().await;
        let fname = self.place_snapshot_file(tmp, seq, meta).await?;
        let old = self.current_record().await?;
        if old.as_ref().is_some_and(|o| o.meta.last_log_id > meta.last_log_id) {
            // A build that raced an install of a newer snapshot: the current one stays.
            let _ = tokio::fs::remove_file(self.inner.snapshot_dir.join(&fname)).await;
            return Ok(());
        }
        let rec = SnapshotRecord { file: fname, meta: meta.clone() };
        let w = sm_err(ErrorVerb::Write);
        let mut t = self.inner.meta.begin().map_err(&w)?;
        t.put(KEY_SNAPSHOT, to_json(&rec, ErrorSubject::Snapshot(Some(meta.signature())))?).map_err(&w)?;
        t.commit_with(Durability::Sync).await.map_err(&w)?;
        self.record_durable(meta);
        self.remove_replaced_file(old, &rec.file).await;
        Ok(())
    }

    /// Removes the file of the replaced record `old` unless it is `current` (best effort:
    /// one left by a failure is removed at the next open).
    async fn remove_replaced_file(&self, old: Option<SnapshotRecord>, current: &str) {
        if let Some(old) = old {
            if old.file != current {
                let _ = tokio::fs::remove_file(self.inner.snapshot_dir.join(old.file)).await;
            }
        }
    }

    /// Tells the log store that the record of `meta`'s snapshot is durable.
    fn record_durable(&self, meta: &Meta) {
        let index = meta.last_log_id.map(|l| l.index);
        self.inner.gate.update(|g| g.recorded = g.recorded.max(index));
    }

    async fn current_record(&self) -> StoreResult<Option<SnapshotRecord>> {
        let b = self.inner.meta.get(KEY_SNAPSHOT).await.map_err(sm_err(ErrorVerb::Read))?;
        b.map(|b| from_json(&b, ErrorSubject::Snapshot(None))).transpose()
    }

    /// Loads the snapshot file `fname` (checked against `meta` as it is read) into the bucket
    /// of `generation`, created empty (a leftover one dropped first), in commits of bounded
    /// size. Returns the bucket and a batch with the last of the load, not yet committed:
    /// the switch commits it.
    async fn load_generation(
        &self,
        generation: u64,
        fname: &str,
        meta: &Meta,
    ) -> StoreResult<(Bucket, WriteBatch)> {
        let re = snap_err(Some(meta), ErrorVerb::Read);
        let w = sm_err(ErrorVerb::Write);
        let name = sm_bucket_name(generation);
        if self.inner.db.buckets().map_err(&w)?.contains(&name) {
            self.inner.db.drop_bucket(&name).await.map_err(&w)?;
        }
        let bucket = self.inner.db.bucket(&name).await.map_err(&w)?;
        let file = tokio::fs::File::open(self.inner.snapshot_dir.join(fname)).await.map_err(&re)?;
        let (mut reader, file_meta) = SnapshotReader::new(BufReader::new(file)).await.map_err(&re)?;
        if file_meta.last_log_id != meta.last_log_id || file_meta.last_membership != meta.last_membership {
            return Err(msg_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                format!("snapshot file holds {file_meta:?}, installed as {meta:?}"),
            ));
        }
        let mut b = self.inner.db.batch();
        let mut bytes = 0;
        while let Some((k, v)) = reader.next_pair().await.map_err(&re)? {
            bytes += k.len() + v.len();
            b.put(&bucket, data_key(&k), v).map_err(&w)?;
            if bytes >= COMMIT_BYTES {
                b.commit_with(Durability::None).await.map_err(&w)?;
                b = self.inner.db.batch();
                bytes = 0;
            }
        }
        Ok((bucket, b))
    }

    /// Applies one entry's request to `t` (a bad request changes nothing and says why).
    fn apply_request(t: &mut ringkv::Txn, req: &Request) -> StoreResult<(Response, usize)> {
        if let Err(why) = req.validate() {
            return Ok((Response { value: None, error: Some(why) }, 0));
        }
        let w = sm_err(ErrorVerb::Write);
        match req {
            Request::Set { key, value } => {
                t.put(data_key(key.as_bytes()), value.as_bytes()).map_err(w)?;
                Ok((Response { value: Some(value.clone()), error: None }, key.len() + value.len()))
            }
            Request::Delete { key } => {
                t.delete(data_key(key.as_bytes())).map_err(w)?;
                Ok((Response::default(), key.len()))
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let r = sm_err(ErrorVerb::Read);
        // One ringkv snapshot gives the data and the applied id that go with it; holding
        // `generation_in_use` keeps the bucket from being dropped under the stream.
        let (snap, bucket, applied, membership, in_use) = {
            let st = self.inner.state.read().await;
            let in_use = self.inner.generation_in_use.read().await;
            (
                self.inner.db.snapshot().map_err(&r)?,
                st.bucket.clone(),
                st.applied,
                st.membership.clone(),
                in_use,
            )
        };
        let (seq, snapshot_id) = self.new_snapshot_id(applied);
        let meta = Meta { last_log_id: applied, last_membership: membership, snapshot_id };
        let tmp = self.inner.snapshot_dir.join(format!("build-{seq}.tmp"));
        let we = snap_err(Some(&meta), ErrorVerb::Write);
        let file = tokio::fs::File::create(&tmp).await.map_err(&we)?;
        let mut w = SnapshotWriter::new(BufWriter::new(file), &meta).await.map_err(&we)?;
        let mut it = snap.range(&bucket, data_range()).await.map_err(&r)?;
        while let Some((k, v)) = it.try_next().await.map_err(&r)? {
            w.pair(&k[1..], &v).await.map_err(&we)?;
        }
        w.finish().await.map_err(&we)?;
        drop(it);
        drop(snap);
        drop(in_use);
        // Opened before it is published: the handle stays valid whatever replaces the file.
        let file = tokio::fs::File::open(&tmp).await.map_err(snap_err(Some(&meta), ErrorVerb::Read))?;
        self.publish_snapshot_file(&tmp, seq, &meta).await?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        let st = self.inner.state.read().await;
        Ok((st.applied, st.membership.clone()))
    }

    // `seal` sits next to its one use; it takes the membership as the caller holds it.
    #[allow(clippy::items_after_statements, clippy::ref_option)]
    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let w = sm_err(ErrorVerb::Write);
        let mut st = self.inner.state.write().await;
        let mut out = Vec::new();
        let mut t = st.bucket.begin().map_err(&w)?;
        let mut bytes = 0;
        let mut last = None;
        let mut membership = None;
        // Writes the applied id (and membership) into `t` and commits it.
        async fn seal(
            mut t: ringkv::Txn,
            last: Option<LogId<NodeId>>,
            membership: &Option<StoredMembership<NodeId, Node>>,
        ) -> StoreResult<()> {
            let w = sm_err(ErrorVerb::Write);
            if let Some(l) = last {
                t.put(SM_APPLIED, to_json(&l, ErrorSubject::StateMachine)?).map_err(&w)?;
            }
            if let Some(m) = membership {
                t.put(SM_MEMBERSHIP, to_json(m, ErrorSubject::StateMachine)?).map_err(&w)?;
            }
            t.commit_with(Durability::None).await.map_err(&w)?;
            Ok(())
        }
        for entry in entries {
            last = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(req) => {
                    let (resp, n) = Self::apply_request(&mut t, req)?;
                    out.push(resp);
                    bytes += n;
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    out.push(Response::default());
                }
            }
            if bytes >= COMMIT_BYTES {
                seal(t, last, &membership).await?;
                t = st.bucket.begin().map_err(&w)?;
                bytes = 0;
                st.applied = last;
                if let Some(m) = membership.take() {
                    st.membership = m;
                }
            }
        }
        seal(t, last, &membership).await?;
        if last.is_some() {
            st.applied = last;
        }
        if let Some(m) = membership {
            st.membership = m;
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<SnapshotData>> {
        // Before openraft can queue the install, and so before it orders the purge.
        self.inner.gate.update(|g| g.receiving = true);
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let path = self.inner.snapshot_dir.join(format!("recv-{seq}.tmp"));
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(snap_err(None, ErrorVerb::Write))?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<SnapshotData>,
    ) -> StoreResult<()> {
        let res = self.install(meta, snapshot).await;
        let failed = res.is_err();
        self.inner.gate.update(|g| {
            g.receiving = false;
            g.failed = failed;
        });
        res
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let _files = self.inner.files.lock().await;
        let Some(rec) = self.current_record().await? else { return Ok(None) };
        let file = tokio::fs::File::open(self.inner.snapshot_dir.join(&rec.file))
            .await
            .map_err(snap_err(Some(&rec.meta), ErrorVerb::Read))?;
        Ok(Some(Snapshot { meta: rec.meta, snapshot: Box::new(file) }))
    }
}

impl StateMachineStore {
    /// The install of `install_snapshot`: the copy, the load and the switch (module doc).
    async fn install(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        mut snapshot: Box<SnapshotData>,
    ) -> StoreResult<()> {
        let re = snap_err(Some(meta), ErrorVerb::Read);
        let we = snap_err(Some(meta), ErrorVerb::Write);
        let w = sm_err(ErrorVerb::Write);
        let mut st = self.inner.state.write().await;
        // 1. Keep a copy (checked while it loads, below), placed as a snapshot file that
        //    nothing names until the switch.
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let tmp = self.inner.snapshot_dir.join(format!("install-{seq}.tmp"));
        snapshot.seek(io::SeekFrom::Start(0)).await.map_err(&re)?;
        {
            let mut out = tokio::fs::File::create(&tmp).await.map_err(&we)?;
            tokio::io::copy(&mut *snapshot, &mut out).await.map_err(&we)?;
        }
        let fname = self.place_snapshot_file(&tmp, seq, meta).await?;
        // 2. Load it into the next generation's bucket (a leftover one is dropped first),
        //    which nothing reads until the switch.
        let generation = st.generation + 1;
        let loaded = self.load_generation(generation, &fname, meta).await;
        let (bucket, mut b) = match loaded {
            Ok(l) => l,
            Err(e) => {
                // Best effort: what is left goes at the next open or install.
                let _ = tokio::fs::remove_file(self.inner.snapshot_dir.join(&fname)).await;
                return Err(e);
            }
        };
        // 3. The switch, one synced commit across buckets: the rest of the load, the new
        //    generation's applied log id and membership, `sm.generation` and the record of
        //    the installed file. Under `files`, so that no build records a file between
        //    the read of the old record and this commit; the old record's file then goes.
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        if let Some(l) = meta.last_log_id {
            b.put(&bucket, SM_APPLIED, to_json(&l, ErrorSubject::StateMachine)?).map_err(&w)?;
        }
        b.put(&bucket, SM_MEMBERSHIP, to_json(&meta.last_membership, ErrorSubject::StateMachine)?)
            .map_err(&w)?;
        b.put(&self.inner.meta, KEY_SM_GENERATION, to_json(&generation, ErrorSubject::StateMachine)?)
            .map_err(&w)?;
        let rec = SnapshotRecord { file: fname, meta: meta.clone() };
        b.put(&self.inner.meta, KEY_SNAPSHOT, to_json(&rec, subject)?).map_err(&w)?;
        {
            let _files = self.inner.files.lock().await;
            let old_record = self.current_record().await?;
            b.commit_with(Durability::Sync).await.map_err(&w)?;
            self.record_durable(meta);
            self.remove_replaced_file(old_record, &rec.file).await;
        }
        let old = std::mem::replace(
            &mut *st,
            SmState {
                generation,
                bucket,
                applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            },
        );
        // 4. Garbage (what the next open removes if this is cut short): the replaced
        //    generation, once no snapshot build streams it, and the received files.
        {
            let _g = self.inner.generation_in_use.write().await;
            self.inner.db.drop_bucket(old.bucket.name()).await.map_err(&w)?;
        }
        let mut dir = tokio::fs::read_dir(&self.inner.snapshot_dir).await.map_err(&re)?;
        while let Some(ent) = dir.next_entry().await.map_err(&re)? {
            if ent.file_name().to_string_lossy().starts_with("recv-") {
                let _ = tokio::fs::remove_file(ent.path()).await;
            }
        }
        Ok(())
    }
}
