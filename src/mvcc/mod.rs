//! Multi-version concurrency control: commit timestamps, the visible frontier, the registry
//! of live snapshots and the GC horizon.
//!
//! Invariants:
//! 1. Commit timestamps are assigned under the engine's commit lock, strictly increasing,
//!    and a commit's versions are all applied to the trees before `visible` moves to its
//!    timestamp ([`Mvcc::publish`]). A snapshot taken at `visible` therefore sees every
//!    commit at or below it whole, and none above it.
//! 2. The horizon (`min(live snapshots, visible)`) never exceeds any live snapshot's
//!    timestamp: snapshots register and the horizon is read under one lock. Versions that
//!    only snapshots older than the horizon could see may be trimmed.
//! 3. A checkpoint registers a snapshot at its cut timestamp, so no trim racing with it can
//!    drop a version its image must hold.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Debug)]
struct Inner {
    last_assigned: u64,
    visible: u64,
    snapshots: BTreeMap<u64, usize>,
}

/// Timestamps and snapshots of one database.
#[derive(Debug)]
pub struct Mvcc {
    inner: Mutex<Inner>,
}

impl Mvcc {
    /// Starts after recovery, with `last_ts` the newest recovered commit.
    pub fn new(last_ts: u64) -> Arc<Mvcc> {
        Arc::new(Mvcc {
            inner: Mutex::new(Inner { last_assigned: last_ts, visible: last_ts, snapshots: BTreeMap::new() }),
        })
    }

    /// The newest fully applied commit.
    pub fn visible(&self) -> u64 {
        self.inner.lock().visible
    }

    /// Assigns the next commit timestamp (caller holds the commit lock).
    pub fn assign(&self) -> u64 {
        let mut g = self.inner.lock();
        assert_eq!(g.last_assigned, g.visible, "a previous commit was assigned but never published");
        g.last_assigned += 1;
        g.last_assigned
    }

    /// Moves both counters to `ts` (recovery, after replaying the WAL up to `ts`).
    pub fn advance_to(&self, ts: u64) {
        let mut g = self.inner.lock();
        assert!(ts >= g.visible && g.last_assigned == g.visible);
        g.last_assigned = ts;
        g.visible = ts;
    }

    /// Makes commit `ts` visible (invariant 1).
    pub fn publish(&self, ts: u64) {
        let mut g = self.inner.lock();
        assert_eq!(ts, g.last_assigned, "publish out of order");
        assert!(ts > g.visible);
        g.visible = ts;
    }

    /// Registers a snapshot at the visible timestamp.
    pub fn snapshot(self: &Arc<Self>) -> SnapshotGuard {
        let mut g = self.inner.lock();
        let ts = g.visible;
        *g.snapshots.entry(ts).or_insert(0) += 1;
        SnapshotGuard { ts, mvcc: self.clone() }
    }

    /// Oldest timestamp any live snapshot reads at (invariant 2).
    pub fn horizon(&self) -> u64 {
        let g = self.inner.lock();
        g.snapshots.keys().next().copied().unwrap_or(g.visible).min(g.visible)
    }

    /// Number of live snapshots.
    pub fn live_snapshots(&self) -> usize {
        self.inner.lock().snapshots.values().sum()
    }

    fn release(&self, ts: u64) {
        let mut g = self.inner.lock();
        let n = g.snapshots.get_mut(&ts).expect("snapshot registered");
        *n -= 1;
        if *n == 0 {
            g.snapshots.remove(&ts);
        }
    }
}

/// A registered snapshot; unregisters on drop.
#[derive(Debug)]
pub struct SnapshotGuard {
    ts: u64,
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
        self.mvcc.release(self.ts);
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
}
