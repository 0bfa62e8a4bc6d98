//! The commit protocol (`DbInner::commit_writes`), numbered as the code follows it:
//! 0. Flow control: if the pages this commit may dirty (three per key: leaf, split sibling,
//!    parent) would take the dirty set past `Options::dirty_limit`, or the cache is past `cache_capacity + dirty_limit`,
//!    run a checkpoint first (`DbInner::over_dirty_limit`).
//! 1. Conflict pre-check outside the commit lock (it routes every key to its leaf, loading
//!    what must be read; an evicted leaf is read only when its image could hold a version
//!    newer than the snapshot). It remembers each key's leaf: the writes of step 2 start
//!    there instead of descending again (`Tree::leaf_covering` says when that is safe).
//! 2. Under the commit lock: the check again (first-committer-wins) unless no commit was
//!    applied since the pre-check began (`visible` unchanged), then, with no
//!    `.await` in between (so a dropped future cannot stop half way): assign the timestamp,
//!    append the WAL record, apply every version to its tree, publish the timestamp.
//! 3. Outside the lock: wait for the WAL to reach the requested durability. Group commit
//!    happens here: every committer waiting at once shares one write and one fsync. A
//!    `Durability::None` commit waits as `Buffered` once more than
//!    `Options::wal_buffer_limit` bytes are appended and unwritten.
//!
//! A commit is visible to new snapshots at step 2 and acknowledged at step 3. A crash
//! between them loses it together with every later commit (the WAL is a prefix), so no
//! acknowledged commit can depend on a lost one.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{checkpoint, make_value, DbInner};
use crate::error::{Error, Result};
use crate::options::Durability;
use crate::tree::node::Version;
use crate::tree::{Step, Tree};
use crate::wal::{WalOp, WalRecord};

impl DbInner {
    /// The commit protocol (module doc). `writes` maps keys to new values (None = delete).
    pub async fn commit_writes(
        &self,
        tree: &Tree,
        snapshot_ts: u64,
        writes: &BTreeMap<Bytes, Option<Bytes>>,
        durability: Durability,
    ) -> Result<u64> {
        self.check_open()?;
        self.check_writable()?;
        if writes.is_empty() {
            return Ok(snapshot_ts);
        }
        let f = &self.forest;
        // Flow control: past the dirty-page bound, or with dirty pages holding the cache
        // past its capacity by more than that bound, this committer runs a checkpoint (or
        // waits for the running one) before it writes. Writers slow down to the pace of
        // checkpoints instead of memory growing with them (`Options::dirty_limit`).
        if self.over_dirty_limit(writes.len()) {
            checkpoint::run(self).await?;
            f.evict_to_capacity();
        }
        // The conflict check runs outside the commit lock (its page loads must not
        // serialise committers) and again under it, unless no commit was applied in
        // between: every commit publishes its timestamp before releasing the lock, so an
        // unchanged `visible` means the first check's answers still hold.
        let checked_at = self.mvcc.visible();
        // The leaf each key was found in, for the writes below to start from (one descent
        // per key); each key starts from the previous key's leaf (keys go in order, so
        // neighbours share it).
        let mut leaves = Vec::with_capacity(writes.len());
        let mut leaf = 0;
        for k in writes.keys() {
            if tree.written_after(f, k, snapshot_ts, &mut leaf).await? {
                return Err(Error::Conflict);
            }
            leaves.push(leaf);
        }
        let (ts, lsn) = {
            let _g = self.commit_lock.lock().await;
            self.check_open()?;
            self.check_writable()?;
            if tree.dropped.load(Ordering::Acquire) {
                return Err(Error::NotFound("the bucket was dropped".into()));
            }
            if self.mvcc.visible() != checked_at {
                for (k, leaf) in writes.keys().zip(leaves.iter_mut()) {
                    if tree.written_after(f, k, snapshot_ts, leaf).await? {
                        return Err(Error::Conflict);
                    }
                }
            }
            // No await from here to the end of the block (protocol 2).
            let ts = self.mvcc.assign();
            let ops = writes
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => WalOp::Put { bucket: tree.id, key: k.clone(), value: v.clone() },
                    None => WalOp::Delete { bucket: tree.id, key: k.clone() },
                })
                .collect();
            let lsn = match self.wal.append(&WalRecord { ts, ops }) {
                Ok(l) => l,
                Err(e) => {
                    self.poison(&e);
                    return Err(e);
                }
            };
            for ((k, v), leaf) in writes.iter().zip(leaves.iter_mut()) {
                let version = Version { ts, value: make_value(v.clone(), self.opts.inline_limit) };
                match tree.apply(f, k, &version, leaf) {
                    Ok(Step::Done(())) => {}
                    Ok(Step::Load(_)) | Err(_) => {
                        let e = Error::internal(format!("commit {ts} could not be applied in memory"));
                        self.poison(&e);
                        return Err(e);
                    }
                }
            }
            self.mvcc.publish(ts);
            (ts, lsn)
        };
        if self.checkpoint_due() {
            self.bg_wake.notify_one();
        }
        // The WAL's buffer bound: a commit that would not wait waits for the kernel instead
        // once too much is appended and unwritten (`Options::wal_buffer_limit`).
        let durability = if durability == Durability::None
            && self.wal.buffered_bytes() > self.opts.wal_buffer_bytes() as u64
        {
            Durability::Buffered
        } else {
            durability
        };
        if let Err(e) = self.wal.wait(lsn, durability).await {
            self.poison(&e);
            return Err(e);
        }
        Ok(ts)
    }
}

/// Pages one key of a commit may dirty: its leaf, the sibling a split of it makes, and the
/// parent that split updates (an index split above it is rarer still).
const PAGES_PER_KEY: usize = 3;

impl DbInner {
    /// Whether a commit of `keys` keys must run a checkpoint before it writes: the pages
    /// it may dirty (per key its leaf, the sibling a split makes and their parent:
    /// `PAGES_PER_KEY`) would take the dirty set past `Options::dirty_limit`, or the cache
    /// is past its capacity plus that bound (the pages over capacity are dirty: clean ones
    /// are evicted).
    pub(crate) fn over_dirty_limit(&self, keys: usize) -> bool {
        let pages = self.opts.dirty_pages_limit();
        let slack = pages.saturating_mul(crate::limits::DIRTY_PAGE_COST);
        let cache = crate::tree::forest::capacity_i64(self.opts.cache_capacity.saturating_add(slack));
        let dirty = self.forest.dirty_pages();
        (dirty > 0 && dirty.saturating_add(keys.saturating_mul(PAGES_PER_KEY)) > pages)
            || self.forest.mem_used() > cache
    }

    /// Whether the background task should start a checkpoint now: the size trigger
    /// (`Options::checkpoint_bytes`), half the dirty-page bound, or a cache that eviction
    /// could not bring under its capacity.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.forest.written_since_cut() > self.opts.checkpoint_bytes as u64
            || self.forest.dirty_pages() > self.opts.dirty_pages_limit() / 2
            || self.forest.needs_checkpoint.load(Ordering::Relaxed)
    }
}
