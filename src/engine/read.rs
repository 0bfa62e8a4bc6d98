//! The read path: point reads and scans at a snapshot, and a transaction's overlay of its
//! own writes on a scan.
//!
//! - A point read ([`read_at`]) descends the bucket's tree to the key's leaf (loading pages
//!   that were evicted), takes the newest version at or below the snapshot, and reads a
//!   blob value from its blob file.
//! - A scan ([`tree_stream`]) walks the tree one leaf per step (each step re-descends from
//!   the root with the previous leaf's high key, so splits under a running scan are
//!   harmless; a forward step first tries the previous leaf's right link, and takes it when
//!   that page's low fence is exactly the high key), materialises the leaf's versions visible at the snapshot, and reads blob
//!   values as it yields them. [`overlay`] merges a transaction's uncommitted writes into
//!   it. The API wraps the stream in an [`Iter`](crate::Iter), which takes the cooperative
//!   budget per item.
//!
//! A scan holds a [`DbRef`]: the database stays in use while a stream is alive.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use super::{check_key, DbInner, DbRef};
use crate::error::Result;
use crate::mvcc::SnapshotGuard;
use crate::tree::node::{Pid, Value};
use crate::tree::{Lower, Tree};

impl DbInner {
    /// [`Forest::warm`](crate::tree::forest::Forest::warm) until the database closes.
    pub(crate) async fn warm_cache(&self) -> Result<usize> {
        self.check_open()?;
        self.forest.warm(&|| self.is_closed()).await
    }
}

/// Reads `key` from `tree` at snapshot `ts`.
/// Its latency goes to `DbInner::read_latency`.
pub(crate) async fn read_at(db: &DbInner, tree: &Tree, key: &[u8], ts: u64) -> Result<Option<Bytes>> {
    check_key(key)?;
    db.check_open()?;
    let started = std::time::Instant::now();
    let value = match tree.get_version(&db.forest, key, ts).await? {
        Some(v) => db.forest.resolve(&v.value).await?,
        None => None,
    };
    db.read_latency.record(started.elapsed());
    Ok(value)
}

/// Owned bounds of a range.
#[derive(Debug, Clone)]
pub(crate) struct KeyRange {
    pub lo: Bound<Bytes>,
    pub hi: Bound<Bytes>,
}

fn own(b: Bound<&[u8]>) -> Bound<Bytes> {
    match b {
        Bound::Included(k) => Bound::Included(Bytes::copy_from_slice(k)),
        Bound::Excluded(k) => Bound::Excluded(Bytes::copy_from_slice(k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl KeyRange {
    pub fn from_bounds<K: AsRef<[u8]>, R: RangeBounds<K>>(r: &R) -> KeyRange {
        let map = |b: Bound<&K>| own(b.map(std::convert::AsRef::as_ref));
        KeyRange { lo: map(r.start_bound()), hi: map(r.end_bound()) }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        let lo = Bound::Included(Bytes::copy_from_slice(prefix));
        // The smallest key above every key with the prefix: increment the last byte that
        // is not 0xff and cut after it.
        let mut end = prefix.to_vec();
        while let Some(&last) = end.last() {
            if last == 0xff {
                end.pop();
            } else {
                *end.last_mut().expect("non-empty") += 1;
                break;
            }
        }
        let hi = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(Bytes::from(end)) };
        KeyRange { lo, hi }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        let above = match &self.lo {
            Bound::Included(l) => k >= l.as_ref(),
            Bound::Excluded(l) => k > l.as_ref(),
            Bound::Unbounded => true,
        };
        above && self.below_hi(k)
    }

    fn below_hi(&self, k: &[u8]) -> bool {
        match &self.hi {
            Bound::Included(h) => k <= h.as_ref(),
            Bound::Excluded(h) => k < h.as_ref(),
            Bound::Unbounded => true,
        }
    }

    fn above_lo(&self, k: &[u8]) -> bool {
        match &self.lo {
            Bound::Included(l) => k >= l.as_ref(),
            Bound::Excluded(l) => k > l.as_ref(),
            Bound::Unbounded => true,
        }
    }

    /// True when the range holds no key at all.
    pub fn is_empty(&self) -> bool {
        match (&self.lo, &self.hi) {
            (Bound::Included(l), Bound::Included(h)) => l > h,
            (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h))
            | (Bound::Excluded(l), Bound::Included(h)) => l >= h,
            _ => false,
        }
    }
}

struct ScanState {
    db: DbRef,
    tree: Arc<Tree>,
    snap: Arc<SnapshotGuard>,
    range: KeyRange,
    reverse: bool,
    buf: VecDeque<(Bytes, Value)>,
    /// Forward: the next lower bound; reverse: the next upper bound. `None` = finished.
    next: Option<Bound<Bytes>>,
    /// Forward: the right link of the last leaf read, tried before a descent (0 = none).
    right: Pid,
}

/// Stream of the committed pairs of `tree` in `range` visible at `snap`.
pub(crate) fn tree_stream(
    db: DbRef,
    tree: Arc<Tree>,
    snap: Arc<SnapshotGuard>,
    range: KeyRange,
    reverse: bool,
) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
    let start = if range.is_empty() {
        None
    } else if reverse {
        Some(range.hi.clone())
    } else {
        Some(range.lo.clone())
    };
    let st = ScanState { db, tree, snap, range, reverse, buf: VecDeque::new(), next: start, right: 0 };
    futures::stream::try_unfold(st, |mut st| async move {
        loop {
            if st.db.is_closed() {
                return Err(crate::Error::Closed);
            }
            if let Some((k, v)) = st.buf.pop_front() {
                let bytes = st.db.forest.resolve(&v).await?;
                match bytes {
                    Some(b) => return Ok(Some(((k, b), st))),
                    None => continue,
                }
            }
            let Some(bound) = st.next.take() else { return Ok(None) };
            let f = &st.db.forest;
            let ts = st.snap.ts();
            if st.reverse {
                let (items, low) = st.tree.scan_backward(f, &bound, ts).await?;
                let mut past_end = false;
                for (k, v) in items {
                    if st.range.above_lo(&k) {
                        st.buf.push_back((k, v));
                    } else {
                        past_end = true;
                        break;
                    }
                }
                st.next = match low {
                    Some(l) if !past_end && st.range.above_lo(&l) => Some(Bound::Excluded(l)),
                    _ => None,
                };
            } else {
                let lower = match bound {
                    Bound::Unbounded => Lower::Unbounded,
                    Bound::Included(k) => Lower::Key(k, true),
                    Bound::Excluded(k) => Lower::Key(k, false),
                };
                let (items, high, right) = st.tree.scan_forward(f, &lower, ts, st.right).await?;
                st.right = right;
                let mut past_end = false;
                for (k, v) in items {
                    if st.range.below_hi(&k) {
                        st.buf.push_back((k, v));
                    } else {
                        past_end = true;
                        break;
                    }
                }
                st.next = match high {
                    Some(h) if !past_end && st.range.below_hi(&h) => Some(Bound::Included(h)),
                    _ => None,
                };
            }
        }
    })
    .boxed()
}

/// Overlays a transaction's own writes (`None` = deleted) on a committed stream.
pub(crate) fn overlay(
    base: BoxStream<'static, Result<(Bytes, Bytes)>>,
    writes: Vec<(Bytes, Option<Bytes>)>,
    reverse: bool,
) -> BoxStream<'static, Result<(Bytes, Bytes)>> {
    if writes.is_empty() {
        return base;
    }
    let state = (Box::pin(base.peekable()), VecDeque::from(writes));
    futures::stream::try_unfold(state, move |(mut base, mut ov)| async move {
        loop {
            let peeked = match base.as_mut().peek().await {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => {
                    let e = base.next().await.expect("peeked").expect_err("peeked an error");
                    return Err(e);
                }
                None => None,
            };
            let first_is_ov = match (ov.front(), &peeked) {
                (None, None) => return Ok(None),
                (Some(_), None) => Some(false),
                (None, Some(_)) => None,
                (Some((ok, _)), Some(bk)) => {
                    let ord = if reverse { bk.cmp(ok) } else { ok.cmp(bk) };
                    match ord {
                        std::cmp::Ordering::Less => Some(false),
                        std::cmp::Ordering::Equal => Some(true),
                        std::cmp::Ordering::Greater => None,
                    }
                }
            };
            match first_is_ov {
                None => {
                    let item = base.next().await.expect("peeked")?;
                    return Ok(Some((item, (base, ov))));
                }
                Some(same_key) => {
                    if same_key {
                        base.next().await;
                    }
                    let (k, v) = ov.pop_front().expect("front");
                    if let Some(v) = v {
                        return Ok(Some(((k, v), (base, ov))));
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        let r = KeyRange::prefix(b"ab");
        assert!(r.contains(b"ab") && r.contains(b"ab\xff\xff") && !r.contains(b"ac") && !r.contains(b"aa"));
        let r = KeyRange::prefix(b"a\xff");
        assert!(r.contains(b"a\xff\x00") && !r.contains(b"b"));
        let r = KeyRange::prefix(b"\xff");
        assert!(r.contains(b"\xff\xff") && matches!(r.hi, Bound::Unbounded));
    }
}
