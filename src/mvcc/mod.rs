//! Multi-version concurrency control: commit timestamps, the visible frontier, the registry
//! of live snapshots and the GC horizon.
//!
//! The read path takes no lock here: `visible` is an atomic, and a snapshot announces its
//! timestamp in one of [`SNAPSHOT_SLOTS`] slots, each on its own cache line, claimed by a
//! compare-and-swap from `FREE`. Only when every slot is taken does a snapshot go to a
//! locked overflow map. The horizon is computed where it is needed (consolidation,
//! checkpoint, a page load's merge) by reading `visible` and then every slot.
//!
//! Invariants:
//! 1. Commit timestamps are assigned under the engine's commit lock, strictly increasing,
//!    and a commit's versions are all applied to the trees before `visible` moves to its
//!    timestamp ([`Mvcc::publish`]). A snapshot taken at `visible` therefore sees every
//!    commit at or below it whole, and none above it.
//! 2. The horizon (`min(live snapshots, visible)`) never exceeds any live snapshot's
//!    timestamp. A snapshot reads `visible` (v), announces v, then reads `visible` again and
//!    keeps v only if it has not moved; otherwise it announces the newer value and checks
//!    again. A horizon reads `visible` (V) and then the slots. If it missed the
//!    announcement of v, that announcement came after its read of the slot, so after its
//!    read of V; the snapshot's second read of `visible` came later still and would have seen
//!    any publish before V: so V = v, and the horizon is at most v. (All of these are
//!    `SeqCst`, one total order.) Versions that only snapshots older than the horizon could
//!    see may be trimmed.
//! 3. A checkpoint registers a snapshot at its cut timestamp, so no trim racing with it can
//!    drop a version its image must hold.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::limits::SNAPSHOT_SLOTS;

/// The value of an unclaimed slot (no snapshot reads at `u64::MAX`: timestamps count
/// commits).
const FREE: u64 = u64::MAX;

/// One announcement slot, alone on its cache line (two, for the adjacent-line prefetcher).
#[derive(Debug)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// Timestamps and snapshots of one database.
#[derive(Debug)]
pub struct Mvcc {
    /// The newest fully applied commit.
    visible: AtomicU64,
    /// The newest assigned commit; written under the commit lock only.
    last_assigned: AtomicU64,
    slots: Box<[Slot]>,
    /// Snapshots that found every slot taken: timestamp → count.
    overflow: Mutex<BTreeMap<u64, usize>>,
    overflow_len: AtomicUsize,
}

thread_local! {
    /// Where this thread starts probing for a free slot: the slot it last claimed, so that
    /// threads that hold snapshots one at a time keep to their own line.
    static HINT: Cell<usize> = Cell::new(thread_hint());
}

fn thread_hint() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(7)
}

impl Mvcc {
    /// Starts after recovery, with `last_ts` the newest recovered commit.
    pub fn new(last_ts: u64) -> Arc<Mvcc> {
        Arc::new(Mvcc {
            visible: AtomicU64::new(last_ts),
            last_assigned: AtomicU64::new(last_ts),
            slots: (0..SNAPSHOT_SLOTS).map(|_| Slot(AtomicU64::new(FREE))).collect(),
            overflow: Mutex::new(BTreeMap::new()),
            overflow_len: AtomicUsize::new(0),
        })
    }

    /// The newest fully applied commit.
    pub fn visible(&self) -> u64 {
        self.visible.load(Ordering::SeqCst)
    }

    /// Assigns the next commit timestamp (caller holds the commit lock).
    pub fn assign(&self) -> u64 {
        let last = self.last_assigned.load(Ordering::SeqCst);
        assert_eq!(last, self.visible(), "a previous commit was assigned but never published");
        self.last_assigned.store(last + 1, Ordering::SeqCst);
        last + 1
    }

    /// Moves both counters to `ts` (recovery, after replaying the WAL up to `ts`; the
    /// commit lock is not yet shared).
    pub fn advance_to(&self, ts: u64) {
        let visible = self.visible();
        assert!(ts >= visible && self.last_assigned.load(Ordering::SeqCst) == visible);
        self.last_assigned.store(ts, Ordering::SeqCst);
        self.visible.store(ts, Ordering::SeqCst);
    }

    /// Makes commit `ts` visible (invariant 1; caller holds the commit lock).
    pub fn publish(&self, ts: u64) {
        assert_eq!(ts, self.last_assigned.load(Ordering::SeqCst), "publish out of order");
        assert!(ts > self.visible());
        self.visible.store(ts, Ordering::SeqCst);
    }

    /// Registers a snapshot at the visible timestamp (invariant 2).
    pub fn snapshot(self: &Arc<Self>) -> SnapshotGuard {
        let mut ts = self.visible();
        let start = HINT.with(Cell::get);
        let n = self.slots.len();
        for i in 0..n {
            let idx = (start + i) % n;
            let slot = &self.slots[idx].0;
            if slot.compare_exchange(FREE, ts, Ordering::SeqCst, Ordering::Relaxed).is_err() {
                continue;
            }
            loop {
                let now = self.visible();
                if now == ts {
                    break;
                }
                ts = now;
                slot.store(ts, Ordering::SeqCst);
            }
            HINT.with(|h| h.set(idx));
            return SnapshotGuard { ts, at: At::Slot(idx), mvcc: self.clone() };
        }
        // Every slot taken: the overflow map, announced under its lock, then checked the same
        // way.
        let mut map = self.overflow.lock();
        loop {
            *map.entry(ts).or_insert(0) += 1;
            self.overflow_len.fetch_add(1, Ordering::SeqCst);
            let now = self.visible();
            if now == ts {
                break;
            }
            remove_one(&mut map, ts);
            self.overflow_len.fetch_sub(1, Ordering::SeqCst);
            ts = now;
        }
        SnapshotGuard { ts, at: At::Overflow, mvcc: self.clone() }
    }

    /// Oldest timestamp any live snapshot reads at (invariant 2).
    pub fn horizon(&self) -> u64 {
        let mut h = self.visible();
        for slot in &*self.slots {
            h = h.min(slot.0.load(Ordering::SeqCst));
        }
        if self.overflow_len.load(Ordering::SeqCst) > 0 {
            if let Some(&oldest) = self.overflow.lock().keys().next() {
                h = h.min(oldest);
            }
        }
        h
    }

    /// Number of live snapshots.
    pub fn live_snapshots(&self) -> usize {
        let in_slots = self.slots.iter().filter(|s| s.0.load(Ordering::SeqCst) != FREE).count();
        in_slots + self.overflow.lock().values().sum::<usize>()
    }

    fn release(&self, ts: u64, at: At) {
        match at {
            At::Slot(idx) => self.slots[idx].0.store(FREE, Ordering::SeqCst),
            At::Overflow => {
                remove_one(&mut self.overflow.lock(), ts);
                self.overflow_len.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

fn remove_one(map: &mut BTreeMap<u64, usize>, ts: u64) {
    let n = map.get_mut(&ts).expect("snapshot registered");
    *n -= 1;
    if *n == 0 {
        map.remove(&ts);
    }
}

/// Where a snapshot is announced.
#[derive(Debug, Clone, Copy)]
enum At {
    Slot(usize),
    Overflow,
}

/// A registered snapshot; unregisters on drop.
#[derive(Debug)]
pub struct SnapshotGuard {
    ts: u64,
    at: At,
    mvcc: Arc<Mvcc>,
}

impl SnapshotGuard {
    /// The timestamp this snapshot reads at.
    pub fn ts(&self) -> u64 {
        self.ts
    }
}

impl Drop for SnapshotGuard {
    fn drop(&mut self) {
        self.mvcc.release(self.ts, self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizon_follows_oldest_snapshot() {
        let m = Mvcc::new(5);
        assert_eq!(m.horizon(), 5);
        let s1 = m.snapshot();
        let t = m.assign();
        m.publish(t);
        assert_eq!(m.visible(), 6);
        assert_eq!(m.horizon(), 5);
        let s2 = m.snapshot();
        assert_eq!(s2.ts(), 6);
        drop(s1);
        assert_eq!(m.horizon(), 6);
        drop(s2);
        assert_eq!(m.live_snapshots(), 0);
    }

    #[test]
    fn snapshots_past_the_slots_overflow_and_still_hold_the_horizon() {
        let m = Mvcc::new(1);
        let oldest: Vec<_> = (0..SNAPSHOT_SLOTS + 5).map(|_| m.snapshot()).collect();
        assert_eq!(m.live_snapshots(), SNAPSHOT_SLOTS + 5);
        for _ in 0..3 {
            let t = m.assign();
            m.publish(t);
        }
        let newer: Vec<_> = (0..10).map(|_| m.snapshot()).collect();
        assert!(newer.iter().all(|s| s.ts() == 4));
        assert_eq!(m.horizon(), 1);
        drop(oldest);
        assert_eq!(m.horizon(), 4);
        assert_eq!(m.live_snapshots(), 10);
        drop(newer);
        assert_eq!(m.live_snapshots(), 0);
        assert_eq!(m.horizon(), 4);
    }

    /// Invariant 2 under a race: every horizon computed while a snapshot is live is at most
    /// its timestamp, while commits publish and snapshots come and go on other threads.
    #[test]
    fn horizon_never_passes_a_live_snapshot_under_concurrent_commits() {
        use std::sync::atomic::AtomicBool;
        let m = Mvcc::new(0);
        let stop = Arc::new(AtomicBool::new(false));
        // The highest horizon any trimmer has computed so far.
        let trimmed = Arc::new(AtomicU64::new(0));
        let taken = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (m, stop, trimmed) = (Arc::clone(&m), Arc::clone(&stop), Arc::clone(&trimmed));
                let taken = Arc::clone(&taken);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let s = m.snapshot();
                        assert!(s.ts() <= m.visible());
                        std::hint::spin_loop();
                        let t = trimmed.load(Ordering::SeqCst);
                        assert!(
                            t <= s.ts(),
                            "a horizon of {t} was computed while a snapshot at {} lived",
                            s.ts()
                        );
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let trimmer = {
            let (m, stop, trimmed) = (Arc::clone(&m), Arc::clone(&stop), Arc::clone(&trimmed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    trimmed.fetch_max(m.horizon(), Ordering::SeqCst);
                }
            })
        };
        // Commits go on until the readers have taken 100,000 snapshots between them (or one
        // of them failed: its join below reports the panic).
        let mut commits = 0;
        while taken.load(Ordering::Relaxed) < 100_000
            && !readers.iter().any(std::thread::JoinHandle::is_finished)
        {
            let t = m.assign();
            m.publish(t);
            commits = t;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        trimmer.join().unwrap();
        assert_eq!(m.live_snapshots(), 0);
        assert_eq!(m.horizon(), commits);
    }
}
