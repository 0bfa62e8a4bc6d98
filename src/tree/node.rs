//! Nodes of the Bw-tree: base pages, delta records and on-disk stubs.
//!
//! A page's state in the mapping table is a chain of [`Node`]s, newest first: zero or more
//! [`NodeKind::Upsert`] deltas ending in a base ([`NodeKind::Leaf`], [`NodeKind::Inner`]) or
//! in a [`NodeKind::Disk`] stub (the page's image is on disk; deltas above a stub are blind
//! writes that a later load folds in). Nodes are immutable once published; a chain changes
//! only by a compare-and-swap of its head.
//!
//! Invariants:
//! 1. `seq` strictly increases along the history of one page id (a new head has
//!    `seq = old_head.seq + 1`), so "the head is the one we flushed" is a `seq` comparison,
//!    free of ABA.
//! 2. `depth` is the number of deltas above the base.
//! 3. Per key, versions are ordered newest first both along the chain and inside a base
//!    (all writes to a key are applied in commit-timestamp order, under the commit lock).
//! 4. A delta's [`DeltaSummary`] describes the chain from it down: `bottom` is the chain's
//!    base or stub, and `fps[i]` is the fingerprint of the key of the `i`-th delta from it
//!    down, for the first `min(depth, DELTA_FPS)` deltas. A key whose fingerprint is not
//!    among them is in no delta of a chain of at most `DELTA_FPS` deltas, so a reader
//!    reaches the base in two node visits (head, bottom) instead of `depth + 1` scattered
//!    ones (the walk the OpenBw-Tree study measured as what makes a Bw-tree slow).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_epoch::{Atomic, Guard, Shared};

use super::inner::InnerPage;
use super::leaf::{LeafBuilder, LeafPage};

/// Byte-wise comparison of two keys, as `<[u8]>::cmp`, eight bytes at a time inline: tree
/// descents and leaf searches make dozens of comparisons of short keys per operation, and
/// a call into `memcmp` for each was a quarter of a cached `get`'s time.
#[inline]
pub fn key_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().min(b.len());
    let (mut ca, mut cb) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        const EIGHT: &str = "chunks_exact(8) yields 8 bytes";
        let (x, y) =
            (u64::from_be_bytes(x.try_into().expect(EIGHT)), u64::from_be_bytes(y.try_into().expect(EIGHT)));
        if x != y {
            return x.cmp(&y);
        }
    }
    ca.remainder().cmp(cb.remainder()).then(a.len().cmp(&b.len()))
}

/// A page id: an index in the mapping table. 0 is never a valid page.
pub type Pid = u64;

/// Fingerprints a delta summary holds: the consolidation bound, so a chain that is
/// consolidated on time is always summarised whole.
pub const DELTA_FPS: usize = crate::limits::CONSOLIDATE_CHAIN_LEN;

/// The 16-bit fingerprint of a key in a [`DeltaSummary`].
#[inline]
pub fn key_fp(key: &[u8]) -> u16 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(key);
    // The high bits of an Fx hash are its best mixed.
    (h.finish() >> 48) as u16
}

/// The chain below (and including) a delta, summarised (node invariant 4).
#[derive(Debug)]
pub struct DeltaSummary {
    /// The base or stub at the bottom of the chain (not owned: the chain owns it through
    /// the `next` links).
    pub bottom: Atomic<Node>,
    /// Fingerprints of the keys of the deltas from this one down, newest first.
    pub fps: [u16; DELTA_FPS],
}

impl DeltaSummary {
    /// The summary of a delta of `key` placed above `head` (a published chain's head,
    /// read under `guard`).
    pub fn above(key: &[u8], head: Shared<'_, Node>, guard: &Guard) -> DeltaSummary {
        let mut fps = [0u16; DELTA_FPS];
        fps[0] = key_fp(key);
        // SAFETY: a published head read under `guard` stays allocated while it is held.
        let bottom = match unsafe { head.as_ref() }.map(|n| &n.kind) {
            Some(NodeKind::Upsert { summary, .. }) => {
                fps[1..].copy_from_slice(&summary.fps[..DELTA_FPS - 1]);
                summary.bottom.load(Ordering::Relaxed, guard)
            }
            _ => head,
        };
        DeltaSummary { bottom: Atomic::from(bottom), fps }
    }

    /// Whether the chain of `depth` deltas headed by this summary may hold `key` (by its
    /// fingerprint `fp`): false only when it certainly does not.
    #[inline]
    pub fn may_hold(&self, depth: usize, fp: u16) -> bool {
        depth > DELTA_FPS || self.fps[..depth].contains(&fp)
    }
}

/// A value stored apart from the tree, in a blob file.
#[derive(Debug)]
pub struct BlobCell {
    /// Length of the value in bytes.
    pub len: u32,
    /// Logical address of the blob frame, 0 while the value has never been checkpointed.
    addr: AtomicU64,
    /// The bytes, while they are held in memory.
    pub bytes: Option<Bytes>,
}

impl BlobCell {
    /// A new in-memory blob not yet on disk.
    pub fn in_memory(bytes: Bytes) -> BlobCell {
        // A written value: <= MAX_VALUE_LEN (64 MiB, limits.rs), checked by engine::check_value
        // on put and by the WAL decoder on replay.
        #[allow(clippy::cast_possible_truncation)]
        let len = bytes.len() as u32;
        BlobCell { len, addr: AtomicU64::new(0), bytes: Some(bytes) }
    }

    /// A blob known only by its address on disk.
    pub fn on_disk(addr: u64, len: u32) -> BlobCell {
        BlobCell { len, addr: AtomicU64::new(addr), bytes: None }
    }

    /// Its logical address, 0 if it has none yet.
    pub fn addr(&self) -> u64 {
        self.addr.load(Ordering::Acquire)
    }

    /// Records the address the value was published at.
    pub fn set_addr(&self, addr: u64) {
        assert!(addr != 0);
        self.addr.store(addr, Ordering::Release);
    }
}

/// A value as held by a version.
#[derive(Debug, Clone)]
pub enum Value {
    /// The key was deleted at this version.
    Tombstone,
    /// The value, inside the page.
    Inline(Bytes),
    /// The value, in a blob file (and maybe in memory too).
    Blob(Arc<BlobCell>),
}

impl Value {
    /// Heap bytes held by the value when it owns its buffer (a delta's value, copied from
    /// the caller): its allocation plus the shared header `Bytes` adds on the first clone.
    /// A blob counts its cell and, while it is in memory, its bytes.
    pub fn mem_size(&self) -> usize {
        match self {
            Value::Tombstone => 0,
            Value::Inline(b) => owned_bytes_mem(b.len()),
            Value::Blob(c) => blob_mem(c),
        }
    }
}

/// Heap bytes of a blob cell: the `Arc` allocation and the value while it is in memory.
fn blob_mem(c: &BlobCell) -> usize {
    alloc_size(std::mem::size_of::<BlobCell>() + 16)
        + c.bytes.as_ref().map_or(0, |b| owned_bytes_mem(b.len()))
}

/// Bytes the allocator takes for a request of `n` bytes; 0 for no request. The cache's
/// accounting counts these, not the bytes asked for: small allocations are most of a tree's
/// heap, and counting only their payload under-reported it by half.
///
/// With the `jemalloc` feature (the default allocator), jemalloc's size classes: 8, then
/// multiples of 16 up to 128, then four classes per doubling (160, 192, 224, 256, 320, ...).
/// Without it, glibc's chunks: the request plus an 8-byte header, rounded up to 16, at
/// least 32.
pub const fn alloc_size(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    if cfg!(all(feature = "jemalloc", not(target_env = "msvc"))) {
        if n <= 8 {
            8
        } else if n <= 128 {
            (n + 15) & !15
        } else {
            // 2^k < n <= 2^(k+1): classes step by 2^(k-2).
            let k = usize::BITS - 1 - (n - 1).leading_zeros();
            let step = 1usize << (k - 2);
            (n + step - 1) & !(step - 1)
        }
    } else {
        let chunk = (n + 8 + 15) & !15;
        if chunk < 32 {
            32
        } else {
            chunk
        }
    }
}

/// Heap bytes of a `Bytes` of `len` bytes that owns its buffer: the buffer and the shared
/// header (`Bytes` allocates one on the first clone of a buffer it took from a `Vec`).
pub const fn owned_bytes_mem(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    alloc_size(len) + alloc_size(24)
}

/// One committed version of a key.
#[derive(Debug, Clone)]
pub struct Version {
    /// Commit timestamp.
    pub ts: u64,
    /// The value, or a tombstone.
    pub value: Value,
}

/// One key and its versions, newest first.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// Versions, newest first (never empty).
    pub versions: Vec<Version>,
}

/// Key range and right sibling of a node (B-link style).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Inclusive low key (empty = minus infinity).
    pub low: Bytes,
    /// Exclusive high key (`None` = plus infinity).
    pub high: Option<Bytes>,
    /// Right sibling page, 0 when there is none.
    pub right: Pid,
}

impl Bounds {
    /// A copy whose keys own their bytes. Keys decoded from a page image are slices of the
    /// read buffer; a copy of the bounds that outlives the page (an eviction stub, the high
    /// key a merge hands to the left sibling) must not keep that whole buffer alive.
    pub fn detached(&self) -> Bounds {
        Bounds {
            low: Bytes::copy_from_slice(&self.low),
            high: self.high.as_deref().map(Bytes::copy_from_slice),
            right: self.right,
        }
    }

    /// True if `key` is at or past the high key (it lives to the right).
    pub fn is_right_of(&self, key: &[u8]) -> bool {
        self.high.as_ref().is_some_and(|h| key_cmp(key, h).is_ge())
    }
}

/// A consolidated leaf: one [`LeafPage`], whose bytes are its frame on disk (less the
/// addresses of blobs not yet written), and its bounds, whose keys are slices of the page.
#[derive(Debug, Clone)]
pub struct LeafBase {
    /// Key range and sibling: the page's fences and right link.
    pub bounds: Bounds,
    /// The keys and their versions.
    pub page: LeafPage,
}

impl Default for LeafBase {
    fn default() -> LeafBase {
        LeafBase::from_page(LeafBuilder::new(Bytes::new(), None, 0).finish())
    }
}

impl LeafBase {
    /// The base over `page`, its bounds read from the page's fences.
    pub fn from_page(page: LeafPage) -> LeafBase {
        let bounds = Bounds { low: page.low_bytes(), high: page.high_bytes(), right: page.right() };
        LeafBase { bounds, page }
    }

    /// A base over `bounds` holding `entries` (keys in order inside the bounds, versions
    /// newest first, none empty).
    pub fn from_entries(bounds: &Bounds, entries: &[Entry]) -> LeafBase {
        let mut b = LeafBuilder::new(bounds.low.clone(), bounds.high.clone(), bounds.right);
        for e in entries {
            b.push(&e.key, &e.versions);
        }
        LeafBase::from_page(b.finish())
    }

    /// A base over `bounds` holding the entries `range` of this one, or of this one followed
    /// by those of `then` (a merge of two siblings).
    pub fn rebuild(&self, range: std::ops::Range<usize>, then: Option<&LeafBase>, bounds: &Bounds) -> LeafBase {
        let mut b = LeafBuilder::new(bounds.low.clone(), bounds.high.clone(), bounds.right);
        let (mut key, mut versions) = (Vec::new(), Vec::<Version>::new());
        let parts = std::iter::once((self, range)).chain(then.map(|t| (t, 0..t.len())));
        for (leaf, range) in parts {
            for i in range {
                leaf.page.key_into(i, &mut key);
                leaf.page.versions_into(i, &mut versions);
                b.push(&key, &versions);
            }
        }
        LeafBase::from_page(b.finish())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.page.count()
    }

    /// Whether the leaf holds no key.
    pub fn is_empty(&self) -> bool {
        self.page.is_empty()
    }

    /// Binary search for `key`: `Ok(entry)` or `Err(where it would go)`.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        self.page.search(key)
    }

    /// The newest version of entry `i` visible at `ts`.
    pub fn visible(&self, i: usize, ts: u64) -> Option<Version> {
        self.page.visible(i, ts)
    }

    /// Every entry, keys and versions copied out of the page (tests and checks).
    pub fn entries(&self) -> Vec<Entry> {
        (0..self.len())
            .map(|i| Entry { key: self.page.key(i), versions: self.page.versions(i) })
            .collect()
    }
}

/// An index node: one [`InnerPage`] of children sorted by separator (child `i` holds the
/// keys in `[sep(i), sep(i + 1))`, `sep(0) == bounds.low`) and its bounds, slices of it.
#[derive(Debug, Clone)]
pub struct InnerBase {
    /// Key range and sibling: the page's fences and right link.
    pub bounds: Bounds,
    /// The separators and child ids.
    pub page: InnerPage,
}

impl InnerBase {
    /// The base over `page`, its bounds read from the page's fences.
    pub fn from_page(page: InnerPage) -> InnerBase {
        let bounds = Bounds { low: page.low_bytes(), high: page.high_bytes(), right: page.right() };
        InnerBase { bounds, page }
    }

    /// The index node over `bounds` with `children` (separators strictly increasing, the
    /// first one `bounds.low`, all below `bounds.high`; ids not 0).
    pub fn build(bounds: &Bounds, children: &[(Bytes, Pid)]) -> InnerBase {
        InnerBase::from_page(InnerPage::build(&bounds.low, bounds.high.as_deref(), bounds.right, children))
    }

    /// Number of children.
    pub fn len(&self) -> usize {
        self.page.count()
    }

    /// Whether it has no child (never: a page has one).
    pub fn is_empty(&self) -> bool {
        self.page.count() == 0
    }

    /// Every (separator, child), copied out (structure changes rebuild from it).
    pub fn children(&self) -> Vec<(Bytes, Pid)> {
        self.page.children()
    }

    /// The child covering `key`.
    pub fn child_for(&self, key: &[u8]) -> Pid {
        self.page.child_for(key)
    }

    /// The child holding the greatest keys strictly below `key` (`None` = plus infinity).
    pub fn child_before(&self, key: Option<&[u8]>) -> Pid {
        self.page.child_before(key)
    }
}

/// What a chain element is.
#[derive(Debug)]
pub enum NodeKind {
    /// A leaf base page.
    Leaf(LeafBase),
    /// An index base page.
    Inner(InnerBase),
    /// A new version of one key, above `next`.
    Upsert {
        /// The key.
        key: Bytes,
        /// The version.
        version: Version,
        /// The rest of the chain.
        next: Atomic<Node>,
        /// What a reader needs from the whole chain without walking it (invariant 4).
        summary: DeltaSummary,
    },
    /// A small leaf merged into its left sibling `to` (which absorbs its key range and
    /// entries). It
    /// stays in the slot for readers that still hold this page id; once `to`'s right link
    /// no longer points here, the merge is complete and they go to `to`.
    Forward {
        /// The left sibling that absorbed this page.
        to: Pid,
        /// This page's bounds before the merge.
        bounds: Bounds,
        /// This page's content when it was frozen; readers use it until the merge is done.
        /// Boxed: a merge is rare and short, and inline it would make every node (every
        /// stub of the page table among them) half as large again.
        frozen: Box<LeafBase>,
    },
    /// The page image is on disk. `bounds` is known when the stub came from an eviction
    /// (it lets blind writes route by key without a read), unknown after open. A load reads
    /// the slot's current address (`SlotMeta::addr`), which a checkpoint may have moved to
    /// an identical image since the stub was made.
    Disk {
        /// Logical address of the page image when the stub was made.
        addr: u64,
        /// Key range, when known.
        bounds: Option<Bounds>,
    },
}

/// One element of a page's chain.
#[derive(Debug)]
pub struct Node {
    /// Per-page monotonically increasing sequence number (invariant 1).
    pub seq: u64,
    /// Number of deltas below and including this one (invariant 2).
    pub depth: u32,
    /// Memory accounted to this element.
    pub mem: usize,
    /// Approximate encoded size of the leaf this chain describes (base plus deltas), to
    /// decide splits without walking the chain; 0 for index nodes and for stubs made at
    /// open, the leaf's size for a stub made by eviction (what its image on disk holds,
    /// delta frames included, so blind writes above it count from there). 32 bits, so
    /// that it packs beside `depth` (saturates; a leaf is split long before).
    pub bytes: u32,
    /// The element.
    pub kind: NodeKind,
}

impl Node {
    /// A base or stub node.
    pub fn base(seq: u64, kind: NodeKind) -> Node {
        let mem = node_alloc()
            + match &kind {
                NodeKind::Leaf(l) => leaf_mem(l),
                // The bounds are slices of the page.
                NodeKind::Inner(i) => owned_bytes_mem(i.page.len()),
                NodeKind::Disk { bounds, .. } => bounds.as_ref().map_or(0, bounds_mem),
                // The frozen content is a clone sharing the page's buffer, counted with it.
                NodeKind::Forward { .. } => alloc_size(std::mem::size_of::<LeafBase>()),
                NodeKind::Upsert { key, version, .. } => delta_mem(key, version),
            };
        let bytes = match &kind {
            NodeKind::Leaf(l) => leaf_bytes(l),
            _ => 0,
        };
        Node { seq, depth: 0, mem, bytes: u32::try_from(bytes).unwrap_or(u32::MAX), kind }
    }
}

/// Approximate encoded size of one version of a key.
pub fn version_bytes(key: &[u8], v: &Version) -> usize {
    8 + key.len()
        + 13
        + match &v.value {
            Value::Inline(b) => b.len(),
            _ => 12,
        }
}

/// Encoded size of a leaf, to decide splits: its page's length.
pub fn leaf_bytes(l: &LeafBase) -> usize {
    l.page.len()
}

/// Heap bytes of one chain node's own allocation.
pub const fn node_alloc() -> usize {
    alloc_size(std::mem::size_of::<Node>())
}

/// Heap bytes of a delta node: the node, and the key and value it owns (copied from the
/// caller's transaction).
pub fn delta_mem(key: &Bytes, version: &Version) -> usize {
    node_alloc() + owned_bytes_mem(key.len()) + version.value.mem_size()
}

/// Heap bytes of bounds whose keys own their bytes (a stub's, an index node's).
fn bounds_mem(b: &Bounds) -> usize {
    owned_bytes_mem(b.low.len()) + b.high.as_ref().map_or(0, |h| owned_bytes_mem(h.len()))
}

/// Heap bytes of a leaf base beside its node: the page's buffer, its array of blob cells,
/// and the blobs those cells hold in memory. (Blobs already on disk take no memory: the
/// page holds their address.)
pub fn leaf_mem(l: &LeafBase) -> usize {
    let cells = l.page.cells();
    let array = if cells.is_empty() { 0 } else { alloc_size(40) + alloc_size(std::mem::size_of_val(cells)) };
    owned_bytes_mem(l.page.len()) + array + cells.iter().map(|c| blob_mem(c)).sum::<usize>()
}

/// Drops versions no snapshot at or after `horizon` can see, newest first order kept:
/// every version newer than `horizon`, plus the newest one at or below it. A key whose
/// only remaining version is a tombstone at or below the horizon disappears.
pub fn trim_versions(versions: &mut Vec<Version>, horizon: u64) {
    debug_assert!(versions.windows(2).all(|w| w[0].ts > w[1].ts), "versions out of order");
    if let Some(pos) = versions.iter().position(|v| v.ts <= horizon) {
        versions.truncate(pos + 1);
        if pos == 0 && matches!(versions[0].value, Value::Tombstone) {
            versions.clear();
        }
    }
}

/// The newest version visible at `ts`.
pub fn visible_at(versions: &[Version], ts: u64) -> Option<&Version> {
    versions.iter().find(|v| v.ts <= ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page not in memory costs one node in the page table (a stub): a variant that
    /// grows `Node` grows the page table of every database. 152 bytes is jemalloc's
    /// 160-byte class (the size a node had before leaves became pages) and glibc's
    /// 160-byte chunk.
    #[test]
    fn a_node_stays_small() {
        assert!(std::mem::size_of::<Node>() <= 152, "Node is {} bytes", std::mem::size_of::<Node>());
        assert_eq!(node_alloc(), 160);
    }

    #[test]
    fn allocation_sizes_follow_the_allocator() {
        let sizes: Vec<usize> =
            [0, 1, 8, 9, 24, 128, 129, 160, 161, 257, 4096, 4097].map(alloc_size).to_vec();
        if cfg!(all(feature = "jemalloc", not(target_env = "msvc"))) {
            assert_eq!(sizes, [0, 8, 8, 16, 32, 128, 160, 160, 192, 320, 4096, 5120]);
        } else {
            assert_eq!(sizes, [0, 32, 32, 32, 32, 144, 144, 176, 176, 272, 4112, 4112]);
        }
    }

    fn v(ts: u64, tomb: bool) -> Version {
        Version {
            ts,
            value: if tomb { Value::Tombstone } else { Value::Inline(Bytes::from(ts.to_string())) },
        }
    }

    #[test]
    fn trim_keeps_newest_visible_and_newer() {
        let mut vs = vec![v(9, false), v(7, false), v(5, false), v(3, false)];
        trim_versions(&mut vs, 6);
        assert_eq!(vs.iter().map(|v| v.ts).collect::<Vec<_>>(), vec![9, 7, 5]);
        let mut vs = vec![v(4, true), v(2, false)];
        trim_versions(&mut vs, 10);
        assert!(vs.is_empty());
        let mut vs = vec![v(12, false), v(4, true), v(2, false)];
        trim_versions(&mut vs, 10);
        assert_eq!(vs.len(), 2);
        assert!(matches!(vs[1].value, Value::Tombstone));
    }

    #[test]
    fn key_cmp_is_byte_order() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"a",
            b"ab",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefgi",
            b"abcdefghijklmnop",
            b"abcdefghijklmnoq",
            b"abcdefghijklmno",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"b",
        ];
        for a in &keys {
            for b in &keys {
                assert_eq!(key_cmp(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn inner_child_lookup() {
        let inner = InnerBase::build(
            &Bounds::default(),
            &[(Bytes::new(), 1), (Bytes::from_static(b"m"), 2), (Bytes::from_static(b"t"), 3)],
        );
        assert_eq!(inner.child_for(b"a"), 1);
        assert_eq!(inner.child_for(b"m"), 2);
        assert_eq!(inner.child_for(b"z"), 3);
        assert_eq!(inner.child_before(Some(b"m")), 1);
        assert_eq!(inner.child_before(Some(b"n")), 2);
        assert_eq!(inner.child_before(None), 3);
    }
}
