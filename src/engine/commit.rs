//! The commit protocol (`DbInner::commit_writes`), numbered as the code follows it:
//! 0. Flow control: if what this commit is expected to charge the dirty set (its versions
//!    going out as delta frames: `commit_charge`; forest invariant 6) would take the
//!    charge past `Options::dirty_limit`, or the pages in memory are past their room
//!    (`cache_capacity` less the page table, forest invariant 7) plus `dirty_limit`, run a
//!    checkpoint first (`DbInner::over_dirty_limit`); then hold that
//!    charge as reserved until step 2 has applied the writes (`DbInner::reserve_dirty`),
//!    so that GC marking pages meanwhile leaves it room. Once step 1 has found the leaves,
//!    the check runs again with what they say the writes will charge (pages written as
//!    bases, splits: `Forest::write_charge`) before the leaves past their blind-write
//!    room are loaded, so the charge passes the bound only by what a commit's writes
//!    charge beyond that estimate (an index split, a consolidation).
//! 1. Conflict pre-check outside the commit lock (it routes every key to its leaf, loading
//!    what must be read; an evicted leaf is read only when its image could hold a version
//!    newer than the snapshot; the leaves the writes must find in memory are loaded after
//!    step 0's second look, together). It remembers each key's leaf: the writes of step 2
//!    start there instead of descending again (`Tree::leaf_covering` says when that is
//!    safe).
//! 2. Under the commit lock: the check again (first-committer-wins) unless no commit was
//!    applied since the pre-check began (`visible` unchanged), then, with no
//!    `.await` in between (so a dropped future cannot stop half way): assign the timestamp,
//!    append the WAL record, apply every version to its tree, publish the timestamp.
//! 3. Outside the lock: wait for the WAL to reach the requested durability. Group commit
//!    happens here: every committer waiting at once shares one write and one fsync. A
//!    `Durability::None` commit waits as `Buffered` once more than
//!    `Options::wal_buffer_limit` bytes are appended and unwritten.
//!
//! An acknowledged commit's latency (call to acknowledgement) goes to
//! `DbInner::commit_latency`; each version applied at step 2 moves its bucket's
//! approximate size (`Tree::account`).
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
use crate::tree::node::{Pid, Version};
use crate::tree::{Step, Tree};
use crate::wal::{record, WalOp, WalRecord};

/// What step 1 found for one bucket ([`DbInner::check_set`]).
pub(crate) struct Checked {
    /// The leaf of each key, in key order.
    pub leaves: Vec<Pid>,
    /// The leaves past their blind-write room, to load before the writes.
    pub to_load: Vec<Pid>,
    /// What the writes are expected to charge the dirty set.
    pub charge: usize,
}

/// One bucket's part of a commit: its tree and its writes (key to new value, `None` = a
/// delete), in key order.
pub(crate) struct WriteSet<'a> {
    pub tree: &'a Tree,
    pub writes: &'a BTreeMap<Bytes, Option<Bytes>>,
}

impl DbInner {
    /// The commit protocol (module doc) of a write set spanning any number of buckets: one
    /// WAL record, one timestamp. `snapshot_ts` is the snapshot the writes were decided at,
    /// checked first-committer-wins on every key of every bucket; `None` commits blind
    /// writes (a write batch) with no check.
    pub async fn commit_writes(
        &self,
        sets: &[WriteSet<'_>],
        snapshot_ts: Option<u64>,
        durability: Durability,
    ) -> Result<u64> {
        self.check_open()?;
        self.check_writable()?;
        let keys: usize = sets.iter().map(|s| s.writes.len()).sum();
        let bytes: usize =
            sets.iter().flat_map(|s| s.writes.iter()).map(|(k, v)| write_bytes(k, v.as_ref())).sum();
        if keys == 0 {
            return Ok(snapshot_ts.unwrap_or_else(|| self.mvcc.visible()));
        }
        let started = std::time::Instant::now();
        // Flow control: past the dirty-page bound, or with dirty pages holding the cache
        // past its capacity by more than that bound, this committer runs a checkpoint (or
        // waits for the running one) before it writes. Writers slow down to the pace of
        // checkpoints instead of memory growing with them (`Options::dirty_limit`).
        if self.over_dirty_limit(keys, bytes) {
            checkpoint::run(self).await?;
            self.forest.evict_to_capacity();
        }
        let reserved = self.reserve_dirty(keys, bytes);
        // The conflict check runs outside the commit lock (its page loads must not
        // serialise committers) and again under it, unless no commit was applied in
        // between: every commit publishes its timestamp before releasing the lock, so an
        // unchanged `visible` means the first check's answers still hold. Blind writes
        // are checked against no snapshot (`u64::MAX`: nothing is newer), only routed.
        let checked_at = self.mvcc.visible();
        let check_ts = snapshot_ts.unwrap_or(u64::MAX);
        // The leaf each key was found in, per bucket, for the writes below to start from
        // (one descent per key); each key starts from the previous key's leaf (keys go in
        // order, so neighbours share it).
        let mut leaves: Vec<Vec<Pid>> = Vec::with_capacity(sets.len());
        let (mut charge, mut to_load) = (0, Vec::new());
        for s in sets {
            let c = self.check_set(s, check_ts).await?;
            leaves.push(c.leaves);
            to_load.extend(c.to_load);
            charge += c.charge;
        }
        let reserved = self.second_look(reserved, charge).await?;
        self.forest.load_all_to_write(to_load).await?;
        let g = self.commit_lock.lock().await;
        if snapshot_ts.is_some() && self.mvcc.visible() != checked_at {
            for (s, l) in sets.iter().zip(leaves.iter_mut()) {
                self.recheck_set(s, check_ts, l).await?;
            }
        }
        let (ts, lsn) = self.commit_locked(sets, &mut leaves)?;
        drop(reserved); // its pages are in the dirty set now
        drop(g);
        self.after_commit(lsn, durability).await?;
        self.commit_latency.record(started.elapsed());
        Ok(ts)
    }

    /// Step 1 for one bucket: [`Error::Conflict`] if a key was written after `ts`, else
    /// the leaf of each key.
    ///
    /// The keys that land on one evicted leaf count together: once they (with the blind
    /// writes it already carries) would pass `MAX_BLIND_DELTAS` or `BLIND_PAGE_BYTES`, the
    /// leaf is loaded and kept in memory (`Forest::load_to_write`), so the rest of them land
    /// on it and its split keeps it near the split size. (Each key alone would find room:
    /// the writes of this commit are applied only at step 2.) The leaves to load are
    /// gathered first and read together (`Forest::load_all_to_write`): a batch of random
    /// keys over a tree larger than the cache finds hundreds, and one read at a time the
    /// commit would wait a device round trip for each. The conflict check needs none of
    /// them (no image on disk holds a version above the check's timestamp).
    ///
    /// Returns the leaves, those to load (the caller loads them, after step 0's second
    /// look: a checkpoint it runs between the loads and the writes would let eviction take
    /// them again, and the writes would go blind onto leaves past their room), and what
    /// the writes are expected to charge the dirty set (`Forest::write_charge`).
    pub(crate) async fn check_set(&self, s: &WriteSet<'_>, ts: u64) -> Result<Checked> {
        let mut leaves = Vec::with_capacity(s.writes.len());
        let mut to_load = Vec::new();
        // (leaf, keys written to it, their bytes): one entry per run of keys on a leaf.
        let mut runs: Vec<(Pid, usize, usize)> = Vec::new();
        let mut leaf = 0;
        for (k, v) in s.writes {
            if s.tree.written_after(&self.forest, k, ts, &mut leaf).await? {
                return Err(Error::Conflict);
            }
            let bytes = write_bytes(k, v.as_ref());
            let (run_len, run_bytes) = match runs.last_mut() {
                Some(r) if r.0 == leaf => {
                    (r.1, r.2) = (r.1 + 1, r.2 + bytes);
                    (r.1, r.2)
                }
                _ => {
                    runs.push((leaf, 1, bytes));
                    (1, bytes)
                }
            };
            // The keys are in order, so a leaf's keys are one run: listed once.
            if to_load.last() != Some(&leaf) && !self.forest.blind_room(leaf, run_len, run_bytes) {
                to_load.push(leaf);
            }
            leaves.push(leaf);
        }
        // `to_load` lists leaves in the order of their runs: one cursor walks both.
        let mut next = to_load.iter().peekable();
        let charge = runs
            .iter()
            .map(|&(pid, keys, bytes)| {
                let loading = next.next_if(|&&p| p == pid).is_some();
                self.forest.write_charge(pid, keys, bytes, loading)
            })
            .sum();
        Ok(Checked { leaves, to_load, charge })
    }

    /// Step 2's check again for one bucket, updating the leaves found at step 1.
    async fn recheck_set(&self, s: &WriteSet<'_>, ts: u64, leaves: &mut [Pid]) -> Result<()> {
        for (k, leaf) in s.writes.keys().zip(leaves.iter_mut()) {
            if s.tree.written_after(&self.forest, k, ts, leaf).await? {
                return Err(Error::Conflict);
            }
        }
        Ok(())
    }

    /// Step 2 after the check, the caller holding `commit_lock`: with no `.await` (so a
    /// dropped future cannot stop half way), assign the timestamp, append the one WAL
    /// record of every bucket's writes, apply every version to its tree (starting from
    /// the leaves the check found), publish the timestamp. Returns it and the record's LSN.
    pub(crate) fn commit_locked(&self, sets: &[WriteSet<'_>], leaves: &mut [Vec<Pid>]) -> Result<(u64, u64)> {
        self.check_open()?;
        self.check_writable()?;
        if sets.iter().any(|s| s.tree.dropped.load(Ordering::Acquire)) {
            return Err(Error::NotFound("the bucket was dropped".into()));
        }
        let ops = sets
            .iter()
            .flat_map(|s| {
                s.writes.iter().map(|(k, v)| match v {
                    Some(v) => WalOp::Put { bucket: s.tree.id, key: k.clone(), value: v.clone() },
                    None => WalOp::Delete { bucket: s.tree.id, key: k.clone() },
                })
            })
            .collect();
        // The record's bounds are checked before a timestamp is taken: a write set over
        // `MAX_WAL_RECORD_LEN` is the caller's error (`InvalidArgument`, nothing changes),
        // and a timestamp once assigned must be published before the next commit.
        let mut rec = WalRecord { ts: u64::MAX, ops };
        record::validate(&rec)?;
        rec.ts = self.mvcc.assign();
        let ts = rec.ts;
        let lsn = match self.wal.append(&rec) {
            Ok(l) => l,
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        };
        for (s, leaves) in sets.iter().zip(leaves.iter_mut()) {
            for ((k, v), leaf) in s.writes.iter().zip(leaves.iter_mut()) {
                let version = Version { ts, value: make_value(v.clone(), self.opts.inline_limit) };
                match s.tree.apply(&self.forest, k, &version, leaf) {
                    Ok(Step::Done(())) => {}
                    Ok(Step::Load(_)) | Err(_) => {
                        let e = Error::internal(format!("commit {ts} could not be applied in memory"));
                        self.poison(&e);
                        return Err(e);
                    }
                }
            }
        }
        self.mvcc.publish(ts);
        Ok((ts, lsn))
    }

    /// Step 3: wake the background task if a checkpoint is due, then wait for the WAL to
    /// reach `durability` for the record at `lsn`.
    pub(crate) async fn after_commit(&self, lsn: u64, durability: Durability) -> Result<()> {
        // The background task also prepares the WAL's zone ahead (`Wal::prepare_ahead`).
        if self.checkpoint_due() || (self.zero_fills_wal() && self.wal.wants_preparation()) {
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
        // The simulated disk runs no background task (deterministic runs): the committer
        // prepares the WAL ahead itself, so that simulated runs meet zero fills and
        // segments prepared ahead where their segments grow that far (the crash oracle's
        // short-lived databases rarely do). The commit is durable by now: a failure poisons the
        // database (as in the background task) but does not fail the commit.
        if self.opts.is_simulated() && self.zero_fills_wal() && self.wal.wants_preparation() {
            if let Err(e) = self.wal.prepare_ahead().await {
                self.poison(&e);
            }
        }
        Ok(())
    }
}

/// Bytes of the dirty bound a commit holds as reserved ([`DbInner::reserve_dirty`]),
/// given back on drop.
pub(crate) struct DirtyReservation<'a> {
    db: &'a DbInner,
    bytes: usize,
}

impl Drop for DirtyReservation<'_> {
    fn drop(&mut self) {
        self.db.dirty_reserved.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl DbInner {
    /// Whether a commit of `keys` keys and `bytes` bytes of keys and values must run a
    /// checkpoint before it writes: what it is expected to add to the dirty set's charge
    /// ([`commit_charge`]) would take it past `Options::dirty_limit`, or the pages in
    /// memory are past their room (`Forest::page_room`: the capacity less the page table)
    /// plus that bound (the pages over the room are dirty: clean ones are evicted).
    pub(crate) fn over_dirty_limit(&self, keys: usize, bytes: usize) -> bool {
        self.over_dirty_limit_by(commit_charge(keys, bytes))
    }

    /// [`DbInner::over_dirty_limit`] for a commit expected to charge `charge` bytes.
    pub(crate) fn over_dirty_limit_by(&self, charge: usize) -> bool {
        let limit = self.opts.dirty_limit_bytes();
        let cache = self.forest.page_room().saturating_add(crate::tree::forest::capacity_i64(limit));
        let dirty = self.dirty_bytes_and_reserved();
        (dirty > 0 && dirty.saturating_add(charge) > limit) || self.forest.mem_used() > cache
    }

    /// The dirty set's charge (forest invariant 6), plus what the commits past their flow
    /// control are expected to add ([`DbInner::reserve_dirty`]): what GC's room and the
    /// next commit's check count, in bytes.
    pub(crate) fn dirty_bytes_and_reserved(&self) -> usize {
        usize::try_from(self.forest.dirty_bytes())
            .unwrap_or(usize::MAX)
            .saturating_add(self.dirty_reserved.load(Ordering::Relaxed))
    }

    /// Holds what a commit of `keys` keys and `bytes` bytes is expected to charge the dirty
    /// set ([`commit_charge`]) as reserved until the guard drops, once its writes are
    /// applied (and charged): GC, which marks pages at the end of a checkpoint, must leave
    /// it room (`super::gc`), or a commit that passed its check before the marking would
    /// take the dirty set past its bound.
    pub(crate) fn reserve_dirty(&self, keys: usize, bytes: usize) -> DirtyReservation<'_> {
        self.reserve_charge(commit_charge(keys, bytes))
    }

    /// Step 0 again with what the leaves found say the writes will charge (`charge`: pages
    /// going out as bases, splits; the first look, `reserved`, assumed delta frames): past
    /// the bound, a checkpoint first, then `charge` held instead. Never under the commit
    /// lock (a checkpoint there would stall every committer).
    async fn second_look<'a>(
        &'a self,
        reserved: DirtyReservation<'a>,
        charge: usize,
    ) -> Result<DirtyReservation<'a>> {
        if charge <= reserved.bytes {
            return Ok(reserved);
        }
        drop(reserved);
        if self.over_dirty_limit_by(charge) {
            checkpoint::run(self).await?;
            self.forest.evict_to_capacity();
        }
        Ok(self.reserve_charge(charge))
    }

    /// [`DbInner::reserve_dirty`] of `charge` bytes.
    pub(crate) fn reserve_charge(&self, charge: usize) -> DirtyReservation<'_> {
        self.dirty_reserved.fetch_add(charge, Ordering::Relaxed);
        DirtyReservation { db: self, bytes: charge }
    }

    /// Whether the background task zero-fills the WAL ahead of its writes
    /// (`Wal::prepare_ahead`): only for a database whose commits are `Sync` by default.
    /// Zero-filled segments make an `fdatasync` write data only (no journal commit), but
    /// each fill ends in an `fdatasync` of the segment, which also writes back the records
    /// of `Buffered` commits in flight and stalls the appends behind it: measured quiet,
    /// W3/W4 (`Buffered`) ran at 0.58-0.78x with fills (README, issue 18).
    pub(crate) fn zero_fills_wal(&self) -> bool {
        self.opts.durability == Durability::Sync
    }

    /// Whether the background task should start a checkpoint now: the size trigger
    /// (`Options::checkpoint_bytes`), half the dirty-page bound, or pages in memory that
    /// eviction could not bring under their room (`Forest::page_room`: the capacity less
    /// the page table).
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.forest.written_since_cut() > self.opts.checkpoint_bytes as u64
            || self.forest.dirty_bytes() > self.opts.dirty_limit_bytes() as u64 / 2
            || self.forest.needs_checkpoint.load(Ordering::Relaxed)
    }
}

/// The bytes of one write (key and value) that the flow control counts.
fn write_bytes(key: &[u8], value: Option<&Bytes>) -> usize {
    key.len() + value.map_or(0, Bytes::len)
}

/// What a commit of `keys` keys and `bytes` bytes of keys and values is expected to charge
/// the dirty set: each version going out in a delta frame (forest invariant 6).
fn commit_charge(keys: usize, bytes: usize) -> usize {
    keys.saturating_mul(crate::limits::DELTA_FRAME_COST).saturating_add(bytes.saturating_mul(2))
}

/// What a read-modify-write chose for its key.
pub(crate) enum Decision {
    /// Write this value (`None` = delete).
    Write(Option<Bytes>),
    /// Leave the key as it is (nothing is committed).
    Keep,
}

impl DbInner {
    /// A read-modify-write of `key` in `tree` that cannot conflict: under the commit lock,
    /// where no other commit can publish, it reads the newest value at a snapshot taken
    /// there, lets `decide` choose, and commits its choice (steps 2 and 3 above). Holding
    /// the lock across the read serialises committers, so it is the last attempt of
    /// `Bucket::fetch_update` and `Bucket::compare_and_swap`, after optimistic ones lost
    /// to other commits: it bounds their retries. Returns the value read and the commit
    /// timestamp (`None` when `decide` kept the key).
    pub(crate) async fn update_locked<F>(
        &self,
        tree: &Tree,
        key: &[u8],
        decide: F,
        durability: Durability,
    ) -> Result<(Option<Bytes>, Option<u64>)>
    where
        F: FnOnce(Option<&Bytes>) -> Result<Decision>,
    {
        self.check_open()?;
        self.check_writable()?;
        let started = std::time::Instant::now();
        let bytes = key.len() + crate::limits::MAX_VALUE_LEN.min(self.opts.inline_limit);
        if self.over_dirty_limit(1, bytes) {
            checkpoint::run(self).await?;
            self.forest.evict_to_capacity();
        }
        let reserved = self.reserve_dirty(1, bytes);
        // Step 0's second look, before the lock: what a value of `bytes` written to the
        // key's leaf charges, found by a check of no snapshot (it only routes). The leaf
        // can change before the lock is held; a key charges at most one page beyond this.
        let probe = Bytes::from(vec![0u8; bytes.saturating_sub(key.len())]);
        let probe = BTreeMap::from([(Bytes::copy_from_slice(key), Some(probe))]);
        let charge = self.check_set(&WriteSet { tree, writes: &probe }, u64::MAX).await?.charge;
        let reserved = self.second_look(reserved, charge).await?;
        let g = self.commit_lock.lock().await;
        let snap = self.mvcc.snapshot();
        let old = super::read::read_at(self, tree, key, snap.ts()).await?;
        let value = match decide(old.as_ref())? {
            Decision::Keep => return Ok((old, None)),
            Decision::Write(v) => v,
        };
        let writes = BTreeMap::from([(Bytes::copy_from_slice(key), value)]);
        let sets = [WriteSet { tree, writes: &writes }];
        // Nothing was published since `snap` (the lock is held): this finds the leaf and no
        // conflict.
        let checked = self.check_set(&sets[0], snap.ts()).await?;
        self.forest.load_all_to_write(checked.to_load).await?;
        let mut leaves = vec![checked.leaves];
        let (ts, lsn) = self.commit_locked(&sets, &mut leaves)?;
        drop(reserved);
        drop(g);
        drop(snap);
        self.after_commit(lsn, durability).await?;
        self.commit_latency.record(started.elapsed());
        Ok((old, Some(ts)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;

    use super::WriteSet;
    use crate::limits::{MAX_VALUE_LEN, MAX_WAL_RECORD_LEN};
    use crate::{Db, Durability, Error, Options};

    /// A write set whose WAL record would pass `MAX_WAL_RECORD_LEN` is refused before a
    /// timestamp is taken: the caller gets `InvalidArgument`, the database stays writable
    /// and the next commit takes the next timestamp (it used to find one assigned and
    /// never published, and panic). The values share one buffer, so the set costs 64 MiB.
    #[test]
    fn a_write_set_over_the_record_bound_is_refused_before_its_timestamp() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), Options::default()).await.unwrap();
            let b = db.bucket("b").await.unwrap();
            let value = Bytes::from(vec![7u8; MAX_VALUE_LEN]);
            let n = MAX_WAL_RECORD_LEN / MAX_VALUE_LEN + 1;
            let writes: BTreeMap<Bytes, Option<Bytes>> =
                (0..n).map(|i| (Bytes::from(format!("k{i:03}")), Some(value.clone()))).collect();
            let before = db.inner.mvcc.visible();
            let sets = [WriteSet { tree: &b.tree, writes: &writes }];
            let e = db.inner.commit_writes(&sets, Some(before), Durability::Sync).await.unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            assert_eq!(db.inner.mvcc.visible(), before, "no timestamp published");
            b.put(b"after", b"v").await.unwrap();
            assert_eq!(db.inner.mvcc.visible(), before + 1);
            assert_eq!(b.get(b"after").await.unwrap().as_deref(), Some(&b"v"[..]));
            assert_eq!(b.get(b"k000").await.unwrap(), None);
            db.close().await.unwrap();
            let db = Db::open(dir.path(), Options::default()).await.unwrap();
            let b = db.bucket("b").await.unwrap();
            assert_eq!(b.get(b"after").await.unwrap().as_deref(), Some(&b"v"[..]));
            assert_eq!(b.get(b"k000").await.unwrap(), None);
        });
    }
}
