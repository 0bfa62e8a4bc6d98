//! The Bw-tree: one tree per bucket over a mapping table shared by the database.
//!
//! Protocol:
//! 1. Leaves change by prepending an [`NodeKind::Upsert`] delta with a compare-and-swap of
//!    the page's head; readers never wait and never take a lock.
//! 2. A chain at [`CONSOLIDATE_CHAIN_LEN`] deltas is consolidated into a new base (trimming
//!    versions below the MVCC horizon) by one more CAS; a losing CAS is simply dropped.
//! 3. Structure modifications (splits) are serialised per tree by `smo`, taken with
//!    `try_lock` on the write path (a busy lock defers the split, it never blocks a writer)
//!    and held by a checkpoint while it captures images, so a checkpoint always sees a
//!    complete structure. Index nodes change only under `smo`. Leaves are B-link nodes:
//!    a key at or past a node's high key lives to its right, so a reader that raced a split
//!    moves right instead of retrying.
//! 4. The root page id of a tree never changes: a root split moves the root's content into
//!    two new children and turns the root into an index node.
//! 5. Unlinked chains are retired through crossbeam-epoch; a guard never lives across an
//!    `.await` (every async operation is a loop of synchronous attempts that either finish
//!    or name a page to load).

pub mod forest;
pub mod inner;
pub mod leaf;
pub mod mapping;
pub mod node;
pub mod page;

use std::ops::Bound;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::limits::{
    BLIND_PAGE_BYTES, CONSOLIDATE_CHAIN_LEN, MAX_BLIND_DELTAS, SPLIT_INNER_CHILDREN, SPLIT_LEAF_BYTES, SPLIT_MIN_KEYS,
};
pub use forest::Forest;
use leaf::LeafBuilder;
use node::{leaf_bytes, Bounds, InnerBase, LeafBase, Node, NodeKind, Pid, Value, Version};

/// A synchronous attempt's outcome: done, or a page must be loaded first.
pub enum Step<T> {
    /// Finished.
    Done(T),
    /// Load this page from disk, then try again.
    Load(Pid),
}

/// A chain seen under a guard: its deltas (newest first) and its bottom.
pub struct ChainView<'g> {
    /// The head pointer.
    pub head: Shared<'g, Node>,
    /// The head node.
    pub head_node: &'g Node,
    /// The base or stub at the bottom.
    pub bottom: &'g Node,
    guard: &'g Guard,
}

impl<'g> ChainView<'g> {
    /// Reads the chain of `pid`; `None` for an unused page id. Visits the head and, under
    /// deltas, the bottom its summary names (node invariant 4), not the deltas between.
    pub fn load(forest: &Forest, pid: Pid, guard: &'g Guard) -> Option<ChainView<'g>> {
        let head = forest.table.head(pid, guard);
        // SAFETY: a non-null head loaded under `guard` stays allocated until the guard is
        // dropped (chains are only freed through `defer_destroy`).
        let head_node = unsafe { head.as_ref() }?;
        let bottom = match &head_node.kind {
            // SAFETY: a delta's bottom is the base of its chain, reachable from the head
            // through `next` links and so kept alive by the same guard; it is never null.
            NodeKind::Upsert { summary, .. } => unsafe { summary.bottom.load(Ordering::Acquire, guard).deref() },
            _ => head_node,
        };
        Some(ChainView { head, head_node, bottom, guard })
    }

    /// Number of deltas above the bottom.
    pub fn depth(&self) -> usize {
        self.head_node.depth as usize
    }

    /// The deltas above the bottom, newest first (a walk of the chain).
    pub fn deltas(&self) -> impl Iterator<Item = (&'g Bytes, &'g Version)> + 'g {
        let guard = self.guard;
        let mut cur = Some(self.head_node);
        std::iter::from_fn(move || {
            let NodeKind::Upsert { key, version, next, .. } = &cur?.kind else { return None };
            // SAFETY: `next` of a published delta is never null and is kept alive by the
            // same guard (it is part of the chain reachable from the head).
            cur = Some(unsafe { next.load(Ordering::Acquire, guard).deref() });
            Some((key, version))
        })
    }

    /// The deltas, newest first, collected (for a merge).
    pub fn delta_vec(&self) -> Vec<(&'g Bytes, &'g Version)> {
        let mut v = Vec::with_capacity(self.depth());
        v.extend(self.deltas());
        v
    }

    /// The newest delta of `key` with a timestamp at or below `ts`. Walks the chain only
    /// when the head's summary says it may hold `key`.
    pub fn find(&self, key: &[u8], ts: u64) -> Option<&'g Version> {
        let NodeKind::Upsert { summary, .. } = &self.head_node.kind else { return None };
        if !summary.may_hold(self.depth(), node::key_fp(key)) {
            return None;
        }
        self.deltas().find(|(k, v)| k.as_ref() == key && v.ts <= ts).map(|(_, v)| v)
    }

    /// The node's bounds, where known.
    pub fn bounds(&self) -> Option<&'g Bounds> {
        match &self.bottom.kind {
            NodeKind::Leaf(l) => Some(&l.bounds),
            NodeKind::Inner(i) => Some(&i.bounds),
            NodeKind::Disk { bounds, .. } => bounds.as_ref(),
            NodeKind::Forward { bounds, .. } => Some(bounds),
            NodeKind::Upsert { .. } => unreachable!("a chain never ends in a delta"),
        }
    }
}

/// Spins a writer waits for a merge to finish before giving up.
const MAX_FORWARD_SPINS: u32 = 1_000_000;
/// CAS attempts of a merge on the left sibling.
const MAX_MERGE_ATTEMPTS: usize = 64;

/// True once the merge that forwarded `pid` to `to` is complete (`to` no longer links to
/// `pid`: it covers the range, or has since split it off to a new sibling).
fn merge_done(f: &Forest, pid: Pid, to: Pid, guard: &Guard) -> bool {
    ChainView::load(f, to, guard).and_then(|v| v.bounds().map(|b| b.right != pid)).unwrap_or(false)
}

/// Merges deltas (newest first) into a leaf base, trimming versions below `horizon`.
pub fn merge_leaf(deltas: &[(&Bytes, &Version)], base: &LeafBase, horizon: u64) -> LeafBase {
    merge_leaf_at(deltas, base, horizon, u64::MAX).0
}

/// [`merge_leaf`], leaving out every version above `cut` (a checkpoint's image at its cut);
/// also says whether none was left out. One linear merge of the page's entries and the
/// sorted deltas into a new page.
pub fn merge_leaf_at(deltas: &[(&Bytes, &Version)], base: &LeafBase, horizon: u64, cut: u64) -> (LeafBase, bool) {
    let mut d: Vec<(&Bytes, &Version)> = deltas.to_vec();
    d.sort_by(|a, b| a.0.cmp(b.0)); // stable: newest first within a key
    let page = &base.page;
    let n = page.count();
    let mut out = LeafBuilder::new(base.bounds.low.clone(), base.bounds.high.clone(), base.bounds.right);
    out.reserve(page.len() + d.iter().map(|(k, v)| node::version_bytes(k, v)).sum::<usize>());
    let mut complete = true;
    let (mut key, mut versions) = (Vec::new(), Vec::<Version>::new());
    let (mut i, mut j) = (0, 0);
    while i < n || j < d.len() {
        let take_delta = match d.get(j) {
            Some((k, _)) if i < n => page.cmp_key(i, k).is_ge(),
            Some(_) => true,
            None => false,
        };
        if take_delta {
            let k = d[j].0;
            versions.clear();
            while j < d.len() && d[j].0 == k {
                versions.push(d[j].1.clone());
                j += 1;
            }
            if i < n && page.cmp_key(i, k).is_eq() {
                page.push_versions(i, &mut versions);
                i += 1;
            }
            key.clear();
            key.extend_from_slice(k);
        } else {
            // An entry no delta touches: its bytes, as they are, when nothing of it changes.
            if out.push_copy(page, i, horizon, cut) {
                i += 1;
                continue;
            }
            page.key_into(i, &mut key);
            page.versions_into(i, &mut versions);
            i += 1;
        }
        node::trim_versions(&mut versions, horizon);
        if cut != u64::MAX {
            let before = versions.len();
            versions.retain(|x| x.ts <= cut);
            complete &= before == versions.len();
        }
        if !versions.is_empty() {
            out.push(&key, &versions);
        }
    }
    (LeafBase::from_page(out.finish()), complete)
}

/// One bucket's tree.
pub struct Tree {
    /// Bucket id (names the bucket in WAL records).
    pub id: u32,
    /// Root page id (stable, protocol 4).
    pub root: Pid,
    /// Serialises structure modifications (protocol 3).
    pub smo: Mutex<()>,
    /// Set once the bucket is dropped; handles to it then fail.
    pub dropped: std::sync::atomic::AtomicBool,
    /// Approximate live keys and their bytes (key and value lengths), kept by
    /// [`Tree::apply`] (see [`Tree::account`]) and persisted at each checkpoint.
    pub size: BucketSize,
}

/// A bucket's approximate size: live keys and their key + value bytes. Changed only by
/// [`Tree::apply`] (under the commit lock, or by recovery), read by `Db::stats`.
#[derive(Debug, Default)]
pub struct BucketSize {
    keys: std::sync::atomic::AtomicI64,
    bytes: std::sync::atomic::AtomicI64,
}

impl BucketSize {
    /// Starts from the counts a checkpoint persisted.
    pub fn set(&self, keys: u64, bytes: u64) {
        self.keys.store(i64::try_from(keys).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.bytes.store(i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Live keys and their bytes now (never below zero).
    pub fn get(&self) -> (u64, u64) {
        let clamp = |v: i64| u64::try_from(v).unwrap_or(0);
        (clamp(self.keys.load(Ordering::Relaxed)), clamp(self.bytes.load(Ordering::Relaxed)))
    }

    fn add(&self, keys: i64, bytes: i64) {
        self.keys.fetch_add(keys, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The length of a live value (`None` for a tombstone).
fn live_len(v: &Version) -> Option<usize> {
    match &v.value {
        Value::Tombstone => None,
        Value::Inline(b) => Some(b.len()),
        Value::Blob(cell) => Some(cell.len as usize),
    }
}

/// Start of a forward scan step.
#[derive(Debug, Clone)]
pub enum Lower {
    /// From the first key.
    Unbounded,
    /// From this key, inclusive or not.
    Key(Bytes, bool),
}

impl Lower {
    /// True if `key` is at or past this bound.
    pub fn admits(&self, key: &[u8]) -> bool {
        match self {
            Lower::Unbounded => true,
            Lower::Key(lk, true) => key >= lk.as_ref(),
            Lower::Key(lk, false) => key > lk.as_ref(),
        }
    }
}

/// Outcome of a scan step: entries of one leaf and where the next step starts.
pub type ScanBatch = (Vec<(Bytes, Value)>, Option<Bytes>);

/// Outcome of a forward scan step: a [`ScanBatch`] and the right link of its leaf.
pub type ForwardBatch = (Vec<(Bytes, Value)>, Option<Bytes>, Pid);

impl Tree {
    /// A tree handle over an existing root.
    pub fn new(id: u32, root: Pid) -> Tree {
        Tree { id, root, smo: Mutex::new(()), dropped: Default::default(), size: BucketSize::default() }
    }

    /// The error for a page of this tree missing from the mapping table: `NotFound` once
    /// the bucket is dropped (its pages were taken out under an operation begun before),
    /// an internal error otherwise.
    fn missing(&self, f: &Forest, pid: Pid) -> Error {
        if self.dropped.load(Ordering::Acquire) {
            Error::NotFound("the bucket was dropped".into())
        } else {
            f.dangling(pid)
        }
    }

    /// Moves the bucket's size ([`BucketSize`]) by the write of `version` over what the
    /// chain `v` holds for `key`: a put of a key whose newest version is absent or a
    /// tombstone adds a key, a delete of a live one removes it, the bytes follow the value
    /// lengths. Where the chain ends in a disk stub (a blind write to an evicted leaf) and
    /// no delta names the key, its old version is unknown: a put counts as a new key and a
    /// delete as removing one, of the key's bytes only (recovery's replay loads the leaves
    /// it writes, whose stubs start without bounds, and so writes blind only into a leaf
    /// evicted again during the replay). That, and commits replayed twice
    /// around a crash (the counts persisted at a checkpoint may include a commit applied
    /// but not yet published at its cut), are what makes the size approximate.
    fn account(&self, v: &ChainView<'_>, key: &[u8], version: &Version) {
        let old: Option<Option<usize>> = match v.find(key, u64::MAX) {
            Some(ver) => Some(live_len(ver)),
            None => match &v.bottom.kind {
                NodeKind::Leaf(l) => {
                    Some(l.search(key).ok().and_then(|i| live_len(&l.page.newest(i))))
                }
                _ => None,
            },
        };
        let key_len = i64::try_from(key.len()).unwrap_or(i64::MAX);
        let len = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        match (old, live_len(version)) {
            (Some(Some(o)), Some(n)) => self.size.add(0, len(n) - len(o)),
            (Some(Some(o)), None) => self.size.add(-1, -(key_len + len(o))),
            (Some(None) | None, Some(n)) => self.size.add(1, key_len + len(n)),
            (Some(None), None) => {}
            (None, None) => self.size.add(-1, -key_len),
        }
    }

    /// Descends to the leaf whose range holds `key`.
    pub(crate) fn find_leaf<'g>(
        &self,
        f: &Forest,
        key: &[u8],
        guard: &'g Guard,
    ) -> Result<Step<(Pid, ChainView<'g>)>> {
        let mut pid = self.root;
        for _ in 0..100_000 {
            let v = ChainView::load(f, pid, guard).ok_or_else(|| self.missing(f, pid))?;
            f.touch(pid);
            match &v.bottom.kind {
                NodeKind::Inner(i) => {
                    pid = if i.bounds.is_right_of(key) { i.bounds.right } else { i.child_for(key) };
                }
                NodeKind::Leaf(_) | NodeKind::Disk { bounds: Some(_), .. } => {
                    let b = v.bounds().expect("known bounds");
                    if b.is_right_of(key) {
                        pid = b.right;
                    } else {
                        return Ok(Step::Done((pid, v)));
                    }
                }
                NodeKind::Disk { bounds: None, .. } => return Ok(Step::Load(pid)),
                NodeKind::Forward { to, bounds, .. } => {
                    if bounds.is_right_of(key) {
                        pid = bounds.right;
                    } else if merge_done(f, pid, *to, guard) {
                        pid = *to;
                    } else {
                        // A merge in progress: this page is frozen; read its frozen content.
                        return Ok(Step::Done((pid, v)));
                    }
                }
                NodeKind::Upsert { .. } => unreachable!(),
            }
            if pid == 0 {
                return Err(Error::internal("tree key range has a hole"));
            }
        }
        Err(Error::internal("tree descent does not terminate"))
    }

    /// The chain of `pid` if it is a leaf (in memory, or an evicted one with its bounds)
    /// whose range holds `key`: the leaf a descent for `key` would reach. A hint is a page id
    /// a descent reached earlier in the same tree (the previous key of a commit, the conflict
    /// check of the same key, a scan's right link). It is safe to follow: a page id goes back
    /// to the free list only when its page never became reachable (a failed split,
    /// `Forest::uninstall`), a page's bounds are those of the range it holds, and a page
    /// merged into its left sibling stays a forward node, which this refuses.
    fn leaf_covering<'g>(f: &Forest, pid: Pid, key: &[u8], guard: &'g Guard) -> Option<ChainView<'g>> {
        if pid == 0 {
            return None;
        }
        let v = ChainView::load(f, pid, guard)?;
        let b = match &v.bottom.kind {
            NodeKind::Leaf(l) => &l.bounds,
            NodeKind::Disk { bounds: Some(b), .. } => b,
            _ => return None,
        };
        (node::key_cmp(&b.low, key).is_le() && !b.is_right_of(key)).then_some(v)
    }

    /// [`Tree::find_leaf`], trying the page `hint` first (`Tree::leaf_covering`).
    fn find_leaf_from<'g>(
        &self,
        f: &Forest,
        key: &[u8],
        hint: Pid,
        guard: &'g Guard,
    ) -> Result<Step<(Pid, ChainView<'g>)>> {
        match Self::leaf_covering(f, hint, key, guard) {
            Some(v) => {
                f.touch(hint);
                Ok(Step::Done((hint, v)))
            }
            None => self.find_leaf(f, key, guard),
        }
    }

    /// The newest version of `key` visible at `ts` (tombstones included), or `None`.
    pub async fn get_version(&self, f: &Forest, key: &[u8], ts: u64) -> Result<Option<Version>> {
        let mut loaded = false;
        loop {
            let step = {
                let guard = epoch::pin();
                match self.find_leaf(f, key, &guard)? {
                    Step::Load(p) => Step::Load(p),
                    Step::Done((pid, v)) => {
                        match v.find(key, ts) {
                            Some(ver) => Step::Done(Some(ver.clone())),
                            None => match &v.bottom.kind {
                                NodeKind::Leaf(l) => {
                                    Step::Done(l.search(key).ok().and_then(|i| l.visible(i, ts)))
                                }
                                NodeKind::Forward { frozen, .. } => {
                                    Step::Done(frozen.search(key).ok().and_then(|i| frozen.visible(i, ts)))
                                }
                                _ => Step::Load(pid),
                            },
                        }
                    }
                }
            };
            match step {
                Step::Done(v) => {
                    // A point read that found every page in memory is a cache hit.
                    if loaded {
                        f.read_misses.incr();
                    } else {
                        f.read_hits.incr();
                    }
                    return Ok(v);
                }
                Step::Load(p) => {
                    loaded = true;
                    f.load(p).await?;
                }
            }
        }
    }

    /// True if `key` has a version newer than `ts` (a commit's conflict check). It reads
    /// from disk only when such a version could be there: the image of an evicted leaf
    /// holds no version newer than [`Forest::disk_ts`] (forest invariant 5), so when that is
    /// at or below `ts`, the deltas above the stub decide. A blind write into a tree larger
    /// than the cache therefore costs no read, until the stub carries
    /// [`MAX_BLIND_DELTAS`] of them: then the leaf is loaded.
    ///
    /// `hint` is a page to try before descending (`Tree::leaf_covering`); it is set to
    /// the leaf that held `key`, for the next key and for [`Tree::apply`]. A leaf it loads
    /// stays in memory until the next checkpoint (`Forest::load_to_write`): the commit
    /// writes it, and in a small cache the loads of its next keys would evict it first,
    /// leaving the write blind again and the leaf unsplit.
    pub async fn written_after(&self, f: &Forest, key: &[u8], ts: u64, hint: &mut Pid) -> Result<bool> {
        let in_leaf = |l: &LeafBase| l.search(key).is_ok_and(|i| l.page.newest_ts(i) > ts);
        loop {
            let step = {
                let guard = epoch::pin();
                match self.find_leaf_from(f, key, *hint, &guard)? {
                    Step::Load(p) => Step::Load(p),
                    Step::Done((pid, v)) => {
                        *hint = pid;
                        match v.find(key, u64::MAX) {
                            Some(ver) => Step::Done(ver.ts > ts),
                            None => match &v.bottom.kind {
                                NodeKind::Leaf(l) => Step::Done(in_leaf(l)),
                                NodeKind::Forward { frozen, .. } => Step::Done(in_leaf(frozen)),
                                // A stub already carrying MAX_BLIND_DELTAS blind writes, or a
                                // leaf whose size with them (the stub's `bytes`: its image on
                                // disk, delta frames included) reached BLIND_PAGE_BYTES, is
                                // loaded now, so the write lands on the leaf and the usual
                                // consolidation and split keep it near SPLIT_LEAF_BYTES; folded
                                // in later all at once, they would make an image many times it.
                                NodeKind::Disk { .. }
                                    if f.disk_ts() <= ts
                                        && v.depth() < MAX_BLIND_DELTAS
                                        && (v.head_node.bytes as usize) < BLIND_PAGE_BYTES =>
                                {
                                    Step::Done(false)
                                }
                                _ => Step::Load(pid),
                            },
                        }
                    }
                }
            };
            match step {
                Step::Done(v) => return Ok(v),
                Step::Load(p) => f.load_to_write(p).await?,
            }
        }
    }

    /// Applies one version synchronously (the commit path). Returns the page to load when
    /// the path is not in memory; on the commit path that cannot happen, because the
    /// conflict check routed every key to its leaf (loading any stub without bounds) and
    /// evicted leaves keep their bounds.
    ///
    /// `hint` is a page to try before descending (`Tree::leaf_covering`): the leaf the
    /// conflict check found for `key`, or the previous key's. It is set to the leaf written.
    pub fn apply(&self, f: &Forest, key: &Bytes, version: &Version, hint: &mut Pid) -> Result<Step<()>> {
        let guard = epoch::pin();
        let mut spins = 0u32;
        loop {
            let (pid, v) = match self.find_leaf_from(f, key, *hint, &guard)? {
                Step::Done(x) => x,
                Step::Load(p) => return Ok(Step::Load(p)),
            };
            *hint = pid;
            if matches!(v.bottom.kind, NodeKind::Forward { .. }) {
                // A merge is moving this range into the left sibling: it finishes within
                // the structure-lock holder's synchronous section.
                spins += 1;
                if spins > MAX_FORWARD_SPINS {
                    return Err(Error::ReadOnly("a page merge did not finish".into()));
                }
                std::thread::yield_now();
                continue;
            }
            // Under the commit lock (or in recovery): what the chain holds for `key` is what
            // this write replaces, unless the compare-and-swap below fails and it loops.
            let node = Node {
                seq: v.head_node.seq + 1,
                depth: v.head_node.depth + 1,
                bytes: v.head_node.bytes.saturating_add(
                    u32::try_from(node::version_bytes(key, version)).unwrap_or(u32::MAX),
                ),
                mem: node::delta_mem(key, version),
                kind: NodeKind::Upsert {
                    key: key.clone(),
                    version: version.clone(),
                    next: Atomic::null(),
                    summary: node::DeltaSummary::above(key, v.head, &guard),
                },
            };
            let mem = node.mem;
            let depth = node.depth as usize;
            // Split as soon as a write takes the leaf past the split size: a leaf written
            // rarely (random keys over a tree larger than the cache) gets few writes
            // between an eviction and the next, and must not grow by a few at each.
            // (Not over a stub: the leaf is not in memory to split; the next writer loads
            // it, `Tree::written_after`.)
            let big = node.bytes as usize > SPLIT_LEAF_BYTES && !matches!(v.bottom.kind, NodeKind::Disk { .. });
            // Deletes shrink leaves: look for a merge now and then.
            let shrinking = matches!(version.value, Value::Tombstone) && depth >= 4;
            let owned = Owned::new(node);
            if let NodeKind::Upsert { next, .. } = &owned.kind {
                next.store(v.head, Ordering::Relaxed);
            }
            let slot = f.table.slot(pid);
            if slot.head.compare_exchange(v.head, owned, Ordering::AcqRel, Ordering::Acquire, &guard).is_ok()
            {
                // `mem` is the size of the node just allocated: at most isize::MAX.
                #[allow(clippy::cast_possible_wrap)]
                let mem = mem as isize;
                f.note_write(pid, &v, mem, node::version_bytes(key, version));
                self.account(&v, key, version);
                if depth >= CONSOLIDATE_CHAIN_LEN || big || shrinking {
                    self.maintain(f, pid, &guard);
                }
                return Ok(Step::Done(()));
            }
        }
    }

    /// Applies one version, loading pages as needed (recovery replay).
    pub async fn upsert(&self, f: &Forest, key: &Bytes, version: &Version) -> Result<()> {
        let mut hint = 0;
        loop {
            match self.apply(f, key, version, &mut hint)? {
                Step::Done(()) => return Ok(()),
                Step::Load(p) => f.load(p).await?,
            }
        }
    }

    /// Consolidates (and splits, when the structure lock is free) a long chain.
    fn maintain(&self, f: &Forest, pid: Pid, guard: &Guard) {
        let horizon = f.horizon();
        match self.smo.try_lock() {
            Some(_g) => {
                if let Err(e) = self.split_leaf(f, pid, horizon, guard) {
                    tracing::debug!(error = %e, pid, "split deferred");
                }
            }
            None => {
                Self::consolidate(f, pid, horizon, guard);
            }
        }
    }

    /// Replaces the chain of `pid` by one consolidated base. Returns the new base's size.
    fn consolidate(f: &Forest, pid: Pid, horizon: u64, guard: &Guard) -> bool {
        let Some(v) = ChainView::load(f, pid, guard) else { return false };
        let NodeKind::Leaf(base) = &v.bottom.kind else { return false };
        if v.depth() == 0 {
            return false;
        }
        let merged = merge_leaf(&v.delta_vec(), base, horizon);
        f.replace(pid, v.head, v.head_node.seq, NodeKind::Leaf(merged), guard)
    }

    /// Splits leaf `pid` if it is big enough (caller holds `smo`); consolidates it anyway.
    fn split_leaf(&self, f: &Forest, pid: Pid, horizon: u64, guard: &Guard) -> Result<()> {
        let Some(v) = ChainView::load(f, pid, guard) else { return Ok(()) };
        let NodeKind::Leaf(base) = &v.bottom.kind else { return Ok(()) };
        let merged = merge_leaf(&v.delta_vec(), base, horizon);
        if pid != self.root
            && leaf_bytes(&merged) < SPLIT_LEAF_BYTES / 4
            && self.merge_into_left(f, pid, &v, &merged, guard)?
        {
            return Ok(());
        }
        if merged.len() < SPLIT_MIN_KEYS || leaf_bytes(&merged) < SPLIT_LEAF_BYTES {
            if v.depth() != 0 {
                f.replace(pid, v.head, v.head_node.seq, NodeKind::Leaf(merged), guard);
            }
            return Ok(());
        }
        let n = merged.len();
        let mid = n / 2;
        // The separator outlives this page (it goes into the parent, which is never
        // evicted): a copy, not a slice of the page.
        let mut sep = Vec::new();
        merged.page.key_into(mid, &mut sep);
        let sep = Bytes::from(sep);
        if pid == self.root {
            self.split_root(f, &v, sep, guard, |lb, rb| {
                (NodeKind::Leaf(merged.rebuild(0..mid, None, &lb)), NodeKind::Leaf(merged.rebuild(mid..n, None, &rb)))
            });
            return Ok(());
        }
        let r = f.alloc_pid();
        let b = &merged.bounds;
        let rb = merged.rebuild(mid..n, None, &Bounds { low: sep.clone(), high: b.high.clone(), right: b.right });
        let left = merged.rebuild(0..mid, None, &Bounds { low: b.low.clone(), high: Some(sep.clone()), right: r });
        let low = Bytes::copy_from_slice(&b.low);
        f.install_new(r, NodeKind::Leaf(rb));
        if !f.replace(pid, v.head, v.head_node.seq, NodeKind::Leaf(left), guard) {
            f.uninstall(r, guard);
            return Ok(());
        }
        f.mark_dirty(r);
        f.splits.fetch_add(1, Ordering::Relaxed);
        self.insert_index(f, &low, pid, sep, r, guard)
    }

    /// Merges the small leaf `pid` (chain `v`, consolidated content `r`) into its left
    /// sibling under the same parent (caller holds `smo`): freeze it with a
    /// [`NodeKind::Forward`] (readers use the frozen content meanwhile, writers wait), move
    /// its entries and range into the left sibling, drop its index entry. False, with
    /// nothing changed, when it has no such sibling, the sibling is not in memory or the two
    /// together would reach the split size (`SPLIT_LEAF_BYTES`; the merged leaf must not
    /// split again at once: a leaf below a quarter of it merges, one above it splits),
    /// or a CAS lost.
    fn merge_into_left(
        &self,
        f: &Forest,
        pid: Pid,
        v: &ChainView<'_>,
        r: &LeafBase,
        guard: &Guard,
    ) -> Result<bool> {
        let rb = &r.bounds;
        let parent = self.find_parent(f, &rb.low, pid, guard)?;
        let pv = ChainView::load(f, parent, guard).ok_or_else(|| self.missing(f, parent))?;
        let NodeKind::Inner(inner) = &pv.bottom.kind else { return Ok(false) };
        let Some(idx) = inner.page.position(pid) else { return Ok(false) };
        if idx == 0 {
            return Ok(false);
        }
        let left = inner.page.child(idx - 1);
        match ChainView::load(f, left, guard) {
            Some(lv)
                if matches!(lv.bottom.kind, NodeKind::Leaf(_))
                    && lv.head_node.bytes as usize + leaf_bytes(r) < SPLIT_LEAF_BYTES => {}
            _ => return Ok(false),
        }
        let fwd = NodeKind::Forward { to: left, bounds: rb.clone(), frozen: Box::new(r.clone()) };
        if !f.replace(pid, v.head, v.head_node.seq, fwd, guard) {
            return Ok(false);
        }
        let horizon = f.horizon();
        let mut extended = false;
        for _ in 0..MAX_MERGE_ATTEMPTS {
            let Some(lv) = ChainView::load(f, left, guard) else { break };
            let NodeKind::Leaf(lb) = &lv.bottom.kind else { break };
            if lb.bounds.right != pid {
                break;
            }
            let merged = merge_leaf(&lv.delta_vec(), lb, horizon);
            let bounds = Bounds { low: merged.bounds.low.clone(), high: rb.high.clone(), right: rb.right };
            let new = merged.rebuild(0..merged.len(), Some(r), &bounds);
            if f.replace(left, lv.head, lv.head_node.seq, NodeKind::Leaf(new), guard) {
                extended = true;
                break;
            }
        }
        if !extended {
            // Undo the freeze: the frozen content is the page.
            let rv = ChainView::load(f, pid, guard).ok_or_else(|| self.missing(f, pid))?;
            let ok = f.replace(pid, rv.head, rv.head_node.seq, NodeKind::Leaf(r.clone()), guard);
            assert!(ok, "a frozen page takes no writes");
            return Ok(false);
        }
        let mut children = inner.children();
        children.remove(idx);
        let new_inner = InnerBase::build(&inner.bounds, &children);
        let ok = f.replace(parent, pv.head, pv.head_node.seq, NodeKind::Inner(new_inner), guard);
        assert!(ok, "index nodes change only under the structure lock");
        f.merges.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Splits the root (protocol 4): its two halves move to new pages `a` and `b` (`make`
    /// builds them from their bounds) and the root becomes an index node over them. False,
    /// with nothing changed, when the root's chain changed under us. Caller holds `smo`.
    fn split_root(
        &self,
        f: &Forest,
        v: &ChainView<'_>,
        sep: Bytes,
        guard: &Guard,
        make: impl FnOnce(Bounds, Bounds) -> (NodeKind, NodeKind),
    ) -> bool {
        let (a, b) = (f.alloc_pid(), f.alloc_pid());
        let (ka, kb) = make(
            Bounds { low: Bytes::new(), high: Some(sep.clone()), right: b },
            Bounds { low: sep.clone(), high: None, right: 0 },
        );
        f.install_new(a, ka);
        f.install_new(b, kb);
        let root = InnerBase::build(&Bounds::default(), &[(Bytes::new(), a), (sep, b)]);
        if f.replace(self.root, v.head, v.head_node.seq, NodeKind::Inner(root), guard) {
            f.mark_dirty(a);
            f.mark_dirty(b);
            f.splits.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            f.uninstall(a, guard);
            f.uninstall(b, guard);
            false
        }
    }

    /// Adds `(sep, right)` to the parent of `child` (whose low key is `child_low`), splitting
    /// index nodes upward as needed. Caller holds `smo`.
    fn insert_index(
        &self,
        f: &Forest,
        child_low: &[u8],
        child: Pid,
        sep: Bytes,
        right: Pid,
        guard: &Guard,
    ) -> Result<()> {
        let parent = self.find_parent(f, child_low, child, guard)?;
        let v = ChainView::load(f, parent, guard).ok_or_else(|| self.missing(f, parent))?;
        let NodeKind::Inner(inner) = &v.bottom.kind else {
            return Err(Error::internal("parent is not an index node"));
        };
        let mut children = inner.children();
        let pos = children.partition_point(|(s, _)| s.as_ref() < sep.as_ref());
        children.insert(pos, (sep, right));
        if children.len() <= SPLIT_INNER_CHILDREN {
            let new = InnerBase::build(&inner.bounds, &children);
            let ok = f.replace(parent, v.head, v.head_node.seq, NodeKind::Inner(new), guard);
            assert!(ok, "index nodes change only under the structure lock");
            return Ok(());
        }
        let mid = children.len() / 2;
        let sep2 = children[mid].0.clone();
        let right_children = children.split_off(mid);
        if parent == self.root {
            let ok = self.split_root(f, &v, sep2, guard, |ab, bb| {
                (
                    NodeKind::Inner(InnerBase::build(&ab, &children)),
                    NodeKind::Inner(InnerBase::build(&bb, &right_children)),
                )
            });
            assert!(ok, "index nodes change only under the structure lock");
            return Ok(());
        }
        let r2 = f.alloc_pid();
        let b = &inner.bounds;
        let rb = InnerBase::build(&Bounds { low: sep2.clone(), high: b.high.clone(), right: b.right }, &right_children);
        let low = Bytes::copy_from_slice(&b.low);
        let new = InnerBase::build(&Bounds { low: b.low.clone(), high: Some(sep2.clone()), right: r2 }, &children);
        f.install_new(r2, NodeKind::Inner(rb));
        let ok = f.replace(parent, v.head, v.head_node.seq, NodeKind::Inner(new), guard);
        assert!(ok, "index nodes change only under the structure lock");
        f.mark_dirty(r2);
        self.insert_index(f, &low, parent, sep2, r2, guard)
    }

    /// The index node holding the entry of `child` (caller holds `smo`).
    fn find_parent(&self, f: &Forest, child_low: &[u8], child: Pid, guard: &Guard) -> Result<Pid> {
        let mut pid = self.root;
        for _ in 0..100_000 {
            let v = ChainView::load(f, pid, guard).ok_or_else(|| self.missing(f, pid))?;
            let NodeKind::Inner(i) = &v.bottom.kind else {
                return Err(Error::invalid("structure modification met an unloaded index node"));
            };
            if i.bounds.is_right_of(child_low) {
                pid = i.bounds.right;
                continue;
            }
            let c = i.child_for(child_low);
            if c == child {
                return Ok(pid);
            }
            pid = c;
        }
        Err(Error::internal("parent search does not terminate"))
    }

    /// One forward scan step: the visible entries of the leaf holding `lower`, the lower
    /// bound (inclusive) of the next leaf, and that leaf's page id as this leaf's right
    /// link named it (0 at the end).
    ///
    /// `hint` is the page the previous step's link named (0 for none): when it is an
    /// in-memory leaf whose range holds `lower`'s key (`Tree::leaf_covering`), the step
    /// reads it without descending from the root.
    pub async fn scan_forward(&self, f: &Forest, lower: &Lower, ts: u64, hint: Pid) -> Result<ForwardBatch> {
        let key: &[u8] = match lower {
            Lower::Unbounded => &[],
            Lower::Key(k, _) => k,
        };
        {
            let guard = epoch::pin();
            if let Some(v) = Self::leaf_covering(f, hint, key, &guard) {
                if let NodeKind::Leaf(base) = &v.bottom.kind {
                    f.touch(hint);
                    let items = visible_from(&v.delta_vec(), base, lower, ts);
                    return Ok((items, base.bounds.high.clone(), base.bounds.right));
                }
            }
        }
        let keep = |k: &Bytes| lower.admits(k);
        loop {
            let step = {
                let guard = epoch::pin();
                match self.find_leaf(f, key, &guard)? {
                    Step::Load(p) => Step::Load(p),
                    Step::Done((pid, v)) => match &v.bottom.kind {
                        NodeKind::Leaf(base) => Step::Done((
                            visible_from(&v.delta_vec(), base, lower, ts),
                            base.bounds.high.clone(),
                            base.bounds.right,
                        )),
                        NodeKind::Forward { bounds, frozen, .. } => {
                            Step::Done((visible_items(frozen, ts, keep), bounds.high.clone(), bounds.right))
                        }
                        _ => Step::Load(pid),
                    },
                }
            };
            match step {
                Step::Done(b) => return Ok(b),
                Step::Load(p) => f.load(p).await?,
            }
        }
    }

    /// One backward scan step: the visible entries below `upper` of the leaf holding the
    /// greatest keys below it, in descending order, and the next (exclusive) upper bound
    /// (`None` when this leaf was the leftmost).
    pub async fn scan_backward(&self, f: &Forest, upper: &Bound<Bytes>, ts: u64) -> Result<ScanBatch> {
        loop {
            let step = {
                let guard = epoch::pin();
                self.leaf_before(f, upper, ts, &guard)?
            };
            match step {
                Step::Done(b) => return Ok(b),
                Step::Load(p) => f.load(p).await?,
            }
        }
    }

    fn leaf_before(
        &self,
        f: &Forest,
        upper: &Bound<Bytes>,
        ts: u64,
        guard: &Guard,
    ) -> Result<Step<ScanBatch>> {
        let ukey: Option<&[u8]> = match upper {
            Bound::Unbounded => None,
            Bound::Included(k) | Bound::Excluded(k) => Some(k),
        };
        let below_upper = |k: &Bytes| match upper {
            Bound::Unbounded => true,
            Bound::Included(u) => k <= u,
            Bound::Excluded(u) => k < u,
        };
        // A node's keys may reach `upper` if its high key is above the upper key.
        let high_below = |b: &Bounds| match (&b.high, ukey) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(h), Some(u)) => match upper {
                Bound::Included(_) => h.as_ref() <= u,
                _ => h.as_ref() < u,
            },
        };
        let mut pid = self.root;
        for _ in 0..100_000 {
            let v = ChainView::load(f, pid, guard).ok_or_else(|| self.missing(f, pid))?;
            match &v.bottom.kind {
                NodeKind::Inner(i) => {
                    pid = if high_below(&i.bounds) {
                        i.bounds.right
                    } else {
                        match upper {
                            Bound::Included(k) => i.child_for(k),
                            _ => i.child_before(ukey),
                        }
                    };
                }
                NodeKind::Leaf(base) => {
                    if high_below(&base.bounds) {
                        pid = base.bounds.right;
                        continue;
                    }
                    let merged = merge_leaf(&v.delta_vec(), base, 0);
                    let mut items = visible_items(&merged, ts, below_upper);
                    items.reverse();
                    let next =
                        if merged.bounds.low.is_empty() { None } else { Some(merged.bounds.low.clone()) };
                    return Ok(Step::Done((items, next)));
                }
                NodeKind::Disk { .. } => return Ok(Step::Load(pid)),
                NodeKind::Forward { to, bounds, frozen } => {
                    if high_below(bounds) {
                        pid = bounds.right;
                    } else if merge_done(f, pid, *to, guard) {
                        pid = *to;
                    } else {
                        let mut items = visible_items(frozen, ts, below_upper);
                        items.reverse();
                        let next = if bounds.low.is_empty() { None } else { Some(bounds.low.clone()) };
                        return Ok(Step::Done((items, next)));
                    }
                }
                NodeKind::Upsert { .. } => unreachable!(),
            }
        }
        Err(Error::internal("tree descent does not terminate"))
    }
}

/// The entries of a leaf chain (deltas newest first above `base`) at or past `lower`,
/// as seen at `ts`, tombstones left out: what `merge_leaf` then `visible_items` give, without
/// building the merged leaf (no entry before `lower` is compared or cloned, and only the
/// visible value of each key is).
/// Where a key of a scan batch is: a range of the batch's key buffer, or a delta's key.
enum ScanKey {
    Arena(usize, usize),
    Delta(Bytes),
}

fn visible_from(
    deltas: &[(&Bytes, &Version)],
    base: &LeafBase,
    lower: &Lower,
    ts: u64,
) -> Vec<(Bytes, Value)> {
    let keep = |k: &[u8]| lower.admits(k);
    let page = &base.page;
    let n = page.count();
    let start = match lower {
        Lower::Unbounded => 0,
        Lower::Key(k, incl) => match page.search(k) {
            Ok(i) if *incl => i,
            Ok(i) => i + 1,
            Err(i) => i,
        },
    };
    let mut d: Vec<(&Bytes, &Version)> = deltas.iter().filter(|(k, _)| keep(k)).copied().collect();
    d.sort_by(|a, b| a.0.cmp(b.0)); // stable: newest first within a key
    // The page's keys are copied into one buffer per call, each returned as a slice of it:
    // one allocation per leaf instead of one per key (a page strips the fences' prefix, so
    // its keys are not slices of it).
    let mut arena = Vec::new();
    let mut items: Vec<(ScanKey, Value)> = Vec::with_capacity(n - start + d.len());
    let live = |v: Option<Version>| v.map(|v| v.value).filter(|v| !matches!(v, Value::Tombstone));
    let (mut i, mut j) = (start, 0);
    while i < n || j < d.len() {
        let order = match d.get(j) {
            Some((k, _)) if i < n => page.cmp_key(i, k).reverse(),
            Some(_) => std::cmp::Ordering::Less,
            None => std::cmp::Ordering::Greater,
        };
        if order == std::cmp::Ordering::Greater {
            if let Some(v) = live(page.visible(i, ts)) {
                let from = arena.len();
                page.append_key(i, &mut arena);
                items.push((ScanKey::Arena(from, arena.len()), v));
            }
            i += 1;
            continue;
        }
        let key = d[j].0;
        let mut seen = None;
        while j < d.len() && d[j].0 == key {
            if seen.is_none() && d[j].1.ts <= ts {
                seen = Some(d[j].1.clone());
            }
            j += 1;
        }
        if order == std::cmp::Ordering::Equal {
            seen = seen.or_else(|| page.visible(i, ts));
            i += 1;
        }
        if let Some(v) = live(seen) {
            items.push((ScanKey::Delta(key.clone()), v));
        }
    }
    let arena = Bytes::from(arena);
    items
        .into_iter()
        .map(|(k, v)| match k {
            ScanKey::Arena(from, to) => (arena.slice(from..to), v),
            ScanKey::Delta(k) => (k, v),
        })
        .collect()
}

fn visible_items(leaf: &LeafBase, ts: u64, keep: impl Fn(&Bytes) -> bool) -> Vec<(Bytes, Value)> {
    let page = &leaf.page;
    (0..page.count())
        .filter_map(|i| {
            let v = page.visible(i, ts)?;
            if matches!(v.value, Value::Tombstone) {
                return None;
            }
            let k = page.key(i);
            keep(&k).then_some((k, v.value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::node::Entry;
    use super::*;
    use proptest::prelude::*;

    fn key(k: u8) -> Bytes {
        Bytes::from(vec![b'k', k])
    }

    fn version(ts: u64, tomb: bool) -> Version {
        Version {
            ts,
            value: if tomb { Value::Tombstone } else { Value::Inline(Bytes::from(ts.to_string())) },
        }
    }

    fn inline(items: &[(Bytes, Value)]) -> Vec<(Bytes, Option<Bytes>)> {
        items
            .iter()
            .map(|(k, v)| match v {
                Value::Inline(b) => (k.clone(), Some(b.clone())),
                _ => (k.clone(), None),
            })
            .collect()
    }

    fn test_forest() -> Forest {
        let io = crate::io::IoDriver::new(crate::options::IoBackend::ThreadPool).expect("thread pool");
        let store = std::sync::Arc::new(crate::store::Store::new(io, std::env::temp_dir(), std::iter::empty(), 1, 1));
        Forest::new(store, crate::mvcc::Mvcc::new(0), 1 << 30, 1, std::iter::empty())
    }

    /// Protocol 2: a leaf's chain never grows past the consolidation bound, whether the
    /// structure lock is free (the split path consolidates) or held (plain consolidation).
    #[test]
    fn a_chain_is_consolidated_at_its_bound() {
        let f = test_forest();
        let root = f.alloc_pid();
        f.install_new(root, NodeKind::Leaf(LeafBase::default()));
        let tree = Tree::new(1, root);
        let guard = epoch::pin();
        for held in [false, true] {
            let _smo = held.then(|| tree.smo.lock());
            for i in 0..200u64 {
                let mut hint = 0;
                let ts = u64::from(held) * 1000 + i + 1;
                let step = tree.apply(&f, &key((i % 5) as u8), &version(ts, false), &mut hint).unwrap();
                assert!(matches!(step, Step::Done(())));
                let v = ChainView::load(&f, root, &guard).unwrap();
                assert!(v.depth() < CONSOLIDATE_CHAIN_LEN, "chain of {} deltas (smo held: {held})", v.depth());
            }
        }
    }

    proptest! {
        /// Node invariant 4: what a chain view finds through the head's summary (the bottom,
        /// the newest delta of a key at or below a timestamp) is what a walk of the whole
        /// chain finds, at every length (past the fingerprints' reach too) and for keys in
        /// no delta, with writes arriving in any order and consolidations between them.
        #[test]
        fn a_chain_summary_finds_what_a_walk_finds(
            writes in proptest::collection::vec((0u8..24, any::<bool>(), 0u8..8), 1..60),
        ) {
            let f = test_forest();
            let pid = f.alloc_pid();
            f.install_new(pid, NodeKind::Leaf(LeafBase::default()));
            let guard = epoch::pin();
            for (i, (k, tomb, action)) in writes.iter().enumerate() {
                let (key, ver) = (key(*k), version(i as u64 + 1, *tomb));
                // Prepends one delta, as `Tree::apply` does (without its maintenance, so
                // chains grow past the fingerprints).
                let v = ChainView::load(&f, pid, &guard).expect("page");
                let node = Node {
                    seq: v.head_node.seq + 1,
                    depth: v.head_node.depth + 1,
                    bytes: 0,
                    mem: 0,
                    kind: NodeKind::Upsert {
                        key: key.clone(),
                        version: ver,
                        next: Atomic::from(v.head),
                        summary: node::DeltaSummary::above(&key, v.head, &guard),
                    },
                };
                let slot = f.table.slot(pid);
                prop_assert!(slot
                    .head
                    .compare_exchange(v.head, Owned::new(node), Ordering::AcqRel, Ordering::Acquire, &guard)
                    .is_ok());
                if *action == 0 {
                    Tree::consolidate(&f, pid, 0, &guard);
                }
                let v = ChainView::load(&f, pid, &guard).expect("page");
                // The walk: every delta, then the node that ends the chain.
                let mut cur = v.head_node;
                let mut walked = Vec::new();
                while let NodeKind::Upsert { key, version, next, .. } = &cur.kind {
                    walked.push((key.clone(), version.ts));
                    // SAFETY: a published chain's `next` is non-null and kept alive by `guard`.
                    cur = unsafe { next.load(Ordering::Acquire, &guard).deref() };
                }
                prop_assert!(std::ptr::eq(cur, v.bottom), "the summary's bottom is not the chain's end");
                prop_assert_eq!(walked.len(), v.depth());
                for probe in 0u8..26 {
                    let pk = super::tests::key(probe);
                    for ts in [0, i as u64 / 2, i as u64 + 1, u64::MAX] {
                        let want = walked.iter().find(|(k, t)| *k == pk && *t <= ts).map(|(_, t)| *t);
                        prop_assert_eq!(v.find(&pk, ts).map(|ver| ver.ts), want, "key {} at ts {}", probe, ts);
                    }
                }
            }
        }

        /// `visible_from` (the scan path) equals merging the chain and filtering it.
        #[test]
        fn visible_from_equals_merge_then_filter(
            base_keys in proptest::collection::btree_map(0u8..40, (1u64..50, any::<bool>(), 0usize..3), 0..20),
            delta_writes in proptest::collection::vec((0u8..40, any::<bool>()), 0..30),
            lower in proptest::option::of((0u8..42, any::<bool>())),
            ts in 0u64..120,
        ) {
            // Base versions are older than every delta (ts 1..50, then 50.. per delta, newest first).
            let entries: Vec<Entry> = base_keys
                .iter()
                .map(|(k, (t, tomb, extra))| {
                    let mut versions = vec![version(*t + *extra as u64, *tomb)];
                    for e in 0..*extra as u64 {
                        versions.push(version(*t + *extra as u64 - e - 1, false));
                    }
                    Entry { key: key(*k), versions }
                })
                .collect();
            let base = LeafBase::from_entries(&Bounds::default(), &entries);
            let owned: Vec<(Bytes, Version)> = delta_writes
                .iter()
                .enumerate()
                .rev()
                .map(|(i, (k, tomb))| (key(*k), version(60 + i as u64, *tomb)))
                .collect();
            let deltas: Vec<(&Bytes, &Version)> = owned.iter().map(|(k, v)| (k, v)).collect();
            let lower = match lower {
                None => Lower::Unbounded,
                Some((k, incl)) => Lower::Key(key(k), incl),
            };
            let keep = |k: &Bytes| match &lower {
                Lower::Unbounded => true,
                Lower::Key(lk, true) => k >= lk,
                Lower::Key(lk, false) => k > lk,
            };
            let want = visible_items(&merge_leaf(&deltas, &base, 0), ts, keep);
            let got = visible_from(&deltas, &base, &lower, ts);
            prop_assert_eq!(inline(&got), inline(&want));
        }

        /// The leaf page against a sorted map of every version: writes arrive as deltas
        /// and are consolidated into new pages (one merge), pages split in two and merge
        /// back, and go to disk and back (encode, decode), in any order; after each step
        /// every key reads as the model says at every timestamp, and trimming at a
        /// horizon keeps exactly what a snapshot at or after it can see.
        #[test]
        fn a_leaf_page_holds_what_a_sorted_map_holds(
            steps in proptest::collection::vec(
                prop_oneof![
                    4 => (0u8..60, proptest::option::of(0usize..300)).prop_map(|(k, v)| (0u8, k, v)),
                    1 => Just((1u8, 0u8, None)),
                    1 => Just((2u8, 0u8, None)),
                    1 => Just((3u8, 0u8, None)),
                ],
                1..120,
            ),
            horizon_at in 0u64..130,
        ) {
            let mut model: std::collections::BTreeMap<Bytes, Vec<(u64, Option<Bytes>)>> = Default::default();
            let mut base = LeafBase::default();
            let mut pending: Vec<(Bytes, Version)> = Vec::new(); // newest first
            let mut ts = 0u64;
            let read = |base: &LeafBase, pending: &[(Bytes, Version)], k: &[u8], at: u64| -> Option<Option<Bytes>> {
                let v = pending.iter().find(|(pk, v)| pk.as_ref() == k && v.ts <= at).map(|(_, v)| v.clone());
                let v = v.or_else(|| base.search(k).ok().and_then(|i| base.visible(i, at)))?;
                Some(match v.value { Value::Inline(b) => Some(b), _ => None })
            };
            for (op, k, v) in steps {
                match op {
                    0 => {
                        ts += 1;
                        let key = key(k);
                        let value = v.map(|n| Bytes::from(vec![k; n]));
                        let version = Version { ts, value: value.clone().map_or(Value::Tombstone, Value::Inline) };
                        pending.insert(0, (key.clone(), version));
                        model.entry(key).or_default().insert(0, (ts, value));
                    }
                    1 => {
                        let d: Vec<(&Bytes, &Version)> = pending.iter().map(|(k, v)| (k, v)).collect();
                        base = merge_leaf(&d, &base, 0);
                        pending.clear();
                    }
                    2 if base.len() >= 2 => {
                        let n = base.len();
                        let mut sep = Vec::new();
                        base.page.key_into(n / 2, &mut sep);
                        let sep = Bytes::from(sep);
                        let b = base.bounds.clone();
                        let left = base.rebuild(0..n / 2, None, &Bounds { low: b.low.clone(), high: Some(sep.clone()), right: 9 });
                        let right = base.rebuild(n / 2..n, None, &Bounds { low: sep, high: b.high.clone(), right: b.right });
                        prop_assert_eq!(left.len() + right.len(), n);
                        base = left.rebuild(0..left.len(), Some(&right), &b);
                    }
                    _ => {
                        let mut out = Vec::new();
                        page::encode_leaf(&base, &mut out, &mut |c| c.addr());
                        match page::decode(&Bytes::from(out), std::path::Path::new("x"), 0) {
                            Ok(page::PageImage::Leaf(l)) => base = l,
                            other => panic!("a page we encoded decodes as {other:?}"),
                        }
                    }
                }
                for (k, versions) in &model {
                    for at in 0..=ts {
                        let want = versions.iter().find(|(t, _)| *t <= at).map(|(_, v)| v.clone());
                        prop_assert_eq!(read(&base, &pending, k, at), want, "key {:?} at {}", k, at);
                    }
                }
            }
            // Trimming at a horizon: what a snapshot at or after it sees is unchanged.
            let d: Vec<(&Bytes, &Version)> = pending.iter().map(|(k, v)| (k, v)).collect();
            let horizon = horizon_at.min(ts);
            let trimmed = merge_leaf(&d, &base, horizon);
            for (k, versions) in &model {
                for at in horizon..=ts {
                    let want = versions.iter().find(|(t, _)| *t <= at).and_then(|(_, v)| v.clone());
                    let got = read(&trimmed, &[], k, at).flatten();
                    prop_assert_eq!(got, want, "key {:?} at {} after a trim at {}", k, at, horizon);
                }
            }
        }
    }
}
