//! The forest: the mapping table shared by every tree of a database, with the page cache
//! accounting and the dirty set. Page loads and eviction are in `forest/cache.rs`, a
//! checkpoint's capture and publish in `forest/capture.rs`.
//!
//! Invariants:
//! 1. A page may be evicted (its chain replaced by a [`NodeKind::Disk`] stub) only when its
//!    head's `seq` equals `meta.flushed_seq`: the published image holds exactly the chain's
//!    content. `meta` is read and written under its lock, so eviction never pairs an old
//!    address with a new `seq`.
//! 2. Index nodes are never evicted; once loaded they stay in memory.
//! 3. A page written since the last checkpoint cut is in the dirty set (`note_write` marks
//!    it after its delta is installed, so a checkpoint that misses the mark also misses the
//!    delta, which then waits for the next checkpoint). The set takes no global lock per
//!    write: it is a generation number and `DIRTY_SHARDS` lists of (page id, generation).
//!    A page enters a list under its shard's lock, tagged with the generation read under
//!    that lock, and only then is its slot's `dirty_gen` set to that generation: a slot
//!    holding generation G means an entry (page, G) is listed, until the cut that ends G
//!    drains it. A later write that finds `dirty_gen` equal to the current generation
//!    therefore returns at once. The cut ([`Forest::take_dirty`]) starts a new generation,
//!    then drains from every shard the entries of the generations it ended, leaving those
//!    of the new one: a commit that published before the cut's snapshot marked its pages
//!    before it published, in an ended generation, so the drain finds them. A write that
//!    read the generation before the cut's bump and found its page already marked, after
//!    the cut drained it, installed its delta before the cut's capture, which keeps every
//!    page with a version above its cut dirty (`Forest::publish`).
//! 4. `mem` is the sum of `Node::mem` (allocator sizes, `node::alloc_size`) over installed
//!    nodes, `stub_mem` the part of it held by disk stubs; a chain's memory is released when
//!    it is unlinked. The cache (`mem_used`, what eviction holds to `cache_capacity`) is
//!    `mem - stub_mem`: stubs stand for pages on disk and are never evicted.
//! 5. No published page image holds a version newer than [`Forest::disk_ts`]: it starts at
//!    the recovered checkpoint's cut (the forest is built before the WAL replay) and
//!    [`Forest::publish`] raises it to the new cut before any captured page becomes
//!    evictable, so whoever sees an eviction stub also sees the raised value. A commit's
//!    conflict check uses it to skip reading evicted leaves (`Tree::written_after`).
//! 6. **The dirty set is charged by what a checkpoint will hold for it** (the dirty bound,
//!    `Options::dirty_limit`, is in these bytes). `dirty_bytes` is the sum of every slot's
//!    `dirty_cost`, which only rises while the page is listed and is taken back, whole,
//!    when a cut drains the page. A write to a page whose new versions can go out as a
//!    delta frame (its base is its image on disk, or it is an evicted leaf taking blind
//!    writes, and its chain on disk has room for one more frame: what the capture
//!    decides, `Forest::capture_needs_load`, `deltas_over_image`) raises the charge to
//!    [`DELTA_FRAME_COST`] plus twice the bytes of the versions written, at most
//!    [`DIRTY_PAGE_COST`]; any other write, and every other way into the dirty set
//!    (splits, merges, consolidations, loads to write, GC's marking, a failed
//!    checkpoint's pages), charges the page as a base (`base_cost`): a leaf in memory its
//!    size and a sixteenth (`leaf_cost`: `Node::bytes` estimates the encoding), an evicted
//!    one twice its size (the page a checkpoint loads to fold in the blind writes, and its
//!    image), an index page [`DIRTY_PAGE_COST`], the most any image takes; a load that
//!    folds blind writes into a base raises the page's charge to a base's
//!    (`Forest::charge_as_base`). Twice the bytes: a delta frame larger than half its base
//!    goes out as a base, so the charge stays at or above the image whichever the capture
//!    picks; an in-memory consolidation (a chain of `CONSOLIDATE_CHAIN_LEN` deltas)
//!    replaces the base and charges it as one (the commit's estimate,
//!    `Forest::write_charge`, foresees both). A cut's drain takes
//!    the sealed pages' charges, but [`Forest::dirty_bytes`] keeps counting them
//!    (`sealing`) until the capture succeeds ([`Forest::seal_done`]; the checkpoint's own
//!    gauge counts the images from then on): a cut retried for loads puts the pages back
//!    with the charges it took (`restore_dirty`), and commits that checked the bound
//!    meanwhile must not have taken their room (measured: the charge passed its bound by
//!    up to 40% in `tests/memory.rs` before). A write between the cut's snapshot and its
//!    drain has its charge taken by the drain; its version is above the cut, so the
//!    capture keeps the page dirty, charged again by what the next capture will make of
//!    the versions above the cut (`Forest::keep_dirty`: a delta frame of them, or a
//!    base), at once, not when the checkpoint ends (measured: base images of 4 KiB were
//!    charged 256 bytes, and a checkpoint held 6% over its bound). A page whose delta
//!    frame would hold nothing at the cut (every new version above it) is left as it is
//!    on disk, not rewritten whole. A write between a page's capture and the publish is
//!    charged by what the page will be once published: a capture that leaves its next
//!    image a base (a delta frame filling the chain on disk, a base the chain in memory
//!    may not start from) marks it so (`SlotMeta::next_is_base`), and the commit's
//!    estimate and its write charge a base from then on (measured: such writes were
//!    charged as delta frames over the old chain, and the publish's re-charge took the
//!    dirty set to 1.41 MB of a 1 MiB bound in 7 of 60 `tests/memory.rs` runs on the
//!    thread pool; 0 of 80 since). The publish still charges again every captured page
//!    written since the cut, by what it is then.
//! 7. **`cache_capacity` bounds the pages in memory and the page table together**: clean
//!    leaves are evicted while `mem_used` is past [`Forest::page_room`], the capacity less
//!    `page_table_mem` (which grows with the number of pages, never evicted), and never
//!    below a quarter of the capacity, so a tree whose page table outgrows three quarters
//!    of the cache still caches pages (its memory then passes the capacity by what the
//!    table holds beyond that). Dirty pages may take `mem_used` past the room by
//!    `dirty_limit` (`DbInner::over_dirty_limit`).

mod cache;
mod capture;
mod reclaim;

pub use capture::BlobRefChanges;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_epoch::{self as epoch, Guard, Owned, Shared};
use futures::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::page::{self, FrameRef, PageImage};
use crate::error::{Error, Result};
use crate::limits::{
    BLIND_PAGE_BYTES, CONSOLIDATE_CHAIN_LEN, DELTA_FRAME_COST, DIRTY_PAGE_COST, MAX_BLIND_DELTAS, MAX_DELTA_FRAMES, MAX_PAGES, SPLIT_LEAF_BYTES,
};
use crate::mvcc::Mvcc;
use crate::store::Store;
use crate::tree::mapping::{retire_chain, MappingTable, Retired, SlotMeta};
use crate::tree::node::{BlobCell, Node, NodeKind, Pid, Value};
use crate::tree::{merge_leaf, ChainView};

/// `cache_capacity` as the signed byte count the cache's `mem` counter compares with,
/// saturating at `i64::MAX` (`Options` bounds it only from below).
pub(crate) fn capacity_i64(capacity: usize) -> i64 {
    i64::try_from(capacity).unwrap_or(i64::MAX)
}

/// The signed delta of `n` bytes of node memory for the `mem` counter.
// `n` is the size of live allocations (a node or a chain of them): at most isize::MAX,
// Rust's allocation limit, so it fits an i64.
#[allow(clippy::cast_possible_wrap)]
pub(crate) fn mem_delta(n: usize) -> i64 {
    n as i64
}

/// A decoded page image with the file and offset it came from.
type LoadedImage = (PageImage, std::path::PathBuf, u64);
type SharedLoad = futures::future::Shared<BoxFuture<'static, Result<Arc<LoadedImage>>>>;

/// Slots one eviction call looks at, at most.
pub const EVICT_SCAN_BUDGET: usize = 512;

/// A page image captured by a checkpoint.
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // four independent facts about one capture
pub struct Captured {
    /// Page id.
    pub pid: Pid,
    /// `seq` of the head the image was taken from.
    pub seq: u64,
    /// The encoded image; empty when the page is on disk unchanged (`copy_from`).
    pub image: Bytes,
    /// Non-zero for a page that is an unloaded stub without deltas: its image is the frame
    /// at this address, copied as is (GC moves such pages without loading them).
    pub copy_from: u64,
    /// True when the image holds the whole chain (no version above the cut was left out).
    pub complete: bool,
    /// True for a page merged away: the checkpoint records it as freed, writes no frame.
    pub freed: bool,
    /// For a delta frame (`tree::page::DeltaImage`): the frames it links to, newest first,
    /// the base last (the page's image before this checkpoint). `None` for a base.
    pub links: Option<Arc<Vec<FrameRef>>>,
    /// True for a base that replaces a chain of delta frames (a chain consolidated).
    pub consolidates: bool,
    /// True when the page in memory is, at `seq`, a leaf base holding what its frames on
    /// disk hold once this capture is published (`SlotMeta::base_seq`): a base image of a
    /// chain that was one base or was replaced by the image, or a delta frame whose chain
    /// in memory was consolidated (`capture::framed_merge`).
    pub base_is_image: bool,
    /// The addresses of the blob values the image refers to, every version counted
    /// (`LeafPage::blob_refs`; empty for an index node, a freed page and a copied frame).
    pub blob_refs: Vec<u64>,
}

impl Captured {
    /// A capture of `pid` at `seq` whose frame is `image` (a base), or a copy of the frame
    /// at `copy_from`.
    fn base(pid: Pid, seq: u64, image: Bytes, complete: bool, copy_from: u64) -> Captured {
        Captured {
            pid,
            seq,
            image,
            copy_from,
            complete,
            freed: false,
            links: None,
            consolidates: false,
            base_is_image: false,
            blob_refs: Vec::new(),
        }
    }
}

/// A blob value a checkpoint must write, with the address the images refer to it by.
#[derive(Debug)]
pub struct PendingBlob {
    /// The blob.
    pub cell: Arc<BlobCell>,
    /// Its new address.
    pub addr: u64,
}

/// Shards of the dirty set (invariant 3).
const DIRTY_SHARDS: usize = 16;

/// One shard of the dirty set, on its own cache lines: (page id, generation marked in).
#[derive(Default)]
#[repr(align(128))]
struct DirtyShard(Mutex<Vec<(Pid, u64)>>);

/// Mapping table, cache and dirty tracking of one database.
pub struct Forest {
    /// Page id -> chain.
    pub table: MappingTable,
    /// The files.
    pub store: Arc<Store>,
    mvcc: Arc<Mvcc>,
    /// The dirty set's generation (invariant 3), starting at 1.
    dirty_gen: AtomicU64,
    /// The dirty set: (page id, generation) by `pid % DIRTY_SHARDS` (invariant 3).
    dirty: Box<[DirtyShard]>,
    /// Entries in `dirty`: pages of the current generation, and of the ended one while a
    /// cut drains it.
    dirty_len: AtomicUsize,
    /// What the dirty set is charged, in bytes (invariant 6).
    dirty_bytes: AtomicU64,
    /// The charges the last cut's drain took, by page: a failed or retried cut puts its
    /// pages back with them (`Forest::restore_dirty`).
    sealed_costs: Mutex<FxHashMap<Pid, u32>>,
    /// The sum of `sealed_costs` until the cut's capture succeeds ([`Forest::seal_done`]):
    /// still counted in [`Forest::dirty_bytes`], so that commits checking the bound while a
    /// cut that will be retried holds the pages do not take their room.
    sealing: AtomicU64,
    /// Bytes of every chain node in the table (invariant 4).
    mem: AtomicI64,
    /// The part of `mem` held by disk stubs: the page table's share, which grows with the
    /// number of pages and is never evicted.
    stub_mem: AtomicI64,
    capacity: usize,
    next_pid: AtomicU64,
    free_pids: Mutex<Vec<Pid>>,
    written_since_cut: AtomicU64,
    hand: AtomicU64,
    evict_lock: Mutex<()>,
    inflight: Mutex<FxHashMap<u64, SharedLoad>>,
    /// Leaf and index splits since open.
    pub splits: AtomicU64,
    /// Leaf merges since open.
    pub merges: AtomicU64,
    /// The data files GC last marked for moving (`Forest::mark_files_dirty`): a chain with
    /// a frame in one of them is written as a base, not extended by a delta frame.
    gc_files: Mutex<FxHashSet<u64>>,
    /// Delta frames published since open (blind writes checkpointed without a page read).
    pub delta_frames: AtomicU64,
    /// Chains of delta frames replaced by a base since open.
    pub chains_consolidated: AtomicU64,
    /// Page images read from disk since open.
    pub page_reads: AtomicU64,
    /// Point reads (`Tree::get_version`) that found every page they needed in memory.
    pub read_hits: crate::obs::Counter,
    /// Point reads that loaded at least one page from disk.
    pub read_misses: crate::obs::Counter,
    /// Set when the cache is over capacity and nothing clean is left to evict.
    pub needs_checkpoint: AtomicBool,
    /// No page image on disk holds a version newer than this (invariant 5).
    disk_ts: AtomicU64,
    /// Slots the eviction clock passed since it last evicted or found a referenced page,
    /// or since a page became clean; at a full sweep, eviction stops looking until then.
    barren: AtomicU64,
}

/// What a page whose chain is `v`, plus a version of `bytes` about to be installed, is
/// charged when it will go out as a base (invariant 6): a leaf in memory its size (the
/// image a checkpoint encodes, [`leaf_cost`]); an evicted leaf twice its size (the page a
/// checkpoint loads to fold the blind writes in, and its image); an index page, or a stub
/// made at open, whose size no node records, [`DIRTY_PAGE_COST`]. Never more than that,
/// never less than a delta frame.
fn base_cost(v: &ChainView<'_>, bytes: usize) -> usize {
    let size = (v.head_node.bytes as usize).saturating_add(bytes);
    let cost = match &v.bottom.kind {
        NodeKind::Leaf(_) => leaf_cost(size),
        // A stub made at open does not know its page's size.
        NodeKind::Disk { .. } if v.bottom.bytes > 0 => size.saturating_mul(2),
        _ => DIRTY_PAGE_COST,
    };
    cost.clamp(DELTA_FRAME_COST, DIRTY_PAGE_COST)
}

/// What a leaf of `size` bytes (`Node::bytes`) written as a base is charged: `Node::bytes`
/// estimates the encoding, measured up to 2% under it, hence the sixteenth more.
fn leaf_cost(size: usize) -> usize {
    size.saturating_add(size / 16).clamp(DELTA_FRAME_COST, DIRTY_PAGE_COST)
}

/// What a page charged `now` is charged once `bytes` more bytes of versions will go out in
/// its delta frame (invariant 6): the frame's own cost, and twice the versions' bytes (a
/// frame larger than half its base goes out as a base), at most a page in full.
fn delta_cost(now: usize, bytes: usize) -> usize {
    now.max(DELTA_FRAME_COST).saturating_add(bytes.saturating_mul(2)).min(DIRTY_PAGE_COST)
}

impl Forest {
    /// A forest over `store` with the page table `pages` (pid -> address) of the manifest.
    pub fn new(
        store: Arc<Store>,
        mvcc: Arc<Mvcc>,
        capacity: usize,
        next_pid: u64,
        pages: impl Iterator<Item = (Pid, u64, u32, Vec<FrameRef>)>,
    ) -> Forest {
        let f = Forest {
            table: MappingTable::new(),
            store,
            mvcc,
            dirty_gen: AtomicU64::new(1),
            dirty: (0..DIRTY_SHARDS).map(|_| DirtyShard::default()).collect(),
            dirty_len: AtomicUsize::new(0),
            dirty_bytes: AtomicU64::new(0),
            sealed_costs: Mutex::new(FxHashMap::default()),
            sealing: AtomicU64::new(0),
            mem: AtomicI64::new(0),
            stub_mem: AtomicI64::new(0),
            capacity,
            next_pid: AtomicU64::new(next_pid.max(1)),
            free_pids: Mutex::new(Vec::new()),
            written_since_cut: AtomicU64::new(0),
            hand: AtomicU64::new(1),
            evict_lock: Mutex::new(()),
            needs_checkpoint: AtomicBool::new(false),
            inflight: Mutex::new(FxHashMap::default()),
            splits: AtomicU64::new(0),
            merges: AtomicU64::new(0),
            gc_files: Mutex::new(FxHashSet::default()),
            delta_frames: AtomicU64::new(0),
            chains_consolidated: AtomicU64::new(0),
            page_reads: AtomicU64::new(0),
            read_hits: Default::default(),
            read_misses: Default::default(),
            disk_ts: AtomicU64::new(0),
            barren: AtomicU64::new(0),
        };
        f.disk_ts.store(f.mvcc.visible(), Ordering::SeqCst);
        for (pid, addr, len, links) in pages {
            let slot = f.table.slot(pid);
            let stub = Node::base(1, NodeKind::Disk { addr, bounds: None });
            f.swap_mem(stub.mem, true, Retired::default());
            slot.head.store(Owned::new(stub), Ordering::Release);
            let links = (!links.is_empty()).then(|| Arc::new(links));
            let new = SlotMeta { addr, len, flushed_seq: 1, links, base_seq: 0, blobs: None, next_is_base: false };
            f.table.update_meta(&mut slot.meta.lock(), |m| *m = new);
        }
        f
    }

    /// No page image on disk holds a version newer than this (invariant 5).
    pub fn disk_ts(&self) -> u64 {
        self.disk_ts.load(Ordering::SeqCst)
    }

    /// The GC horizon of the database.
    pub fn horizon(&self) -> u64 {
        self.mvcc.horizon()
    }

    /// What the pages in memory may hold before clean ones are evicted (invariant 7): the
    /// cache capacity less the page table, never below a quarter of the capacity; in the
    /// `mem` counter's type (a capacity past `i64::MAX`, an "unbounded" `usize::MAX` say,
    /// saturates instead of wrapping negative).
    pub fn page_room(&self) -> i64 {
        let capacity = capacity_i64(self.capacity);
        capacity.saturating_sub(self.page_table_mem()).max(capacity / 4)
    }

    /// Bytes of cache in use: the pages in memory (clean and dirty, with their deltas),
    /// without the stubs of pages on disk.
    pub fn mem_used(&self) -> i64 {
        self.mem.load(Ordering::Relaxed) - self.stub_mem.load(Ordering::Relaxed)
    }

    /// Bytes of the stubs standing for pages on disk (the page table's share of memory).
    pub fn stub_mem(&self) -> i64 {
        self.stub_mem.load(Ordering::Relaxed)
    }

    /// Bytes of the page table: the mapping table's slots and the stubs of pages on disk.
    pub fn page_table_mem(&self) -> i64 {
        self.stub_mem() + i64::try_from(self.table.mem()).unwrap_or(i64::MAX)
    }

    /// Accounts a node of `installed` bytes put in a slot (a stub's when `stub`) in place of
    /// the chain `retired`.
    pub(super) fn swap_mem(&self, installed: usize, stub: bool, retired: Retired) {
        self.mem.fetch_add(mem_delta(installed) - mem_delta(retired.mem), Ordering::Relaxed);
        let stub_in = if stub { mem_delta(installed) } else { 0 };
        if stub_in != 0 || retired.stub != 0 {
            self.stub_mem.fetch_add(stub_in - mem_delta(retired.stub), Ordering::Relaxed);
        }
    }

    /// Bytes written since the last checkpoint cut.
    pub fn written_since_cut(&self) -> u64 {
        self.written_since_cut.load(Ordering::Relaxed)
    }

    /// Next page id to allocate.
    pub fn next_pid(&self) -> u64 {
        self.next_pid.load(Ordering::Acquire)
    }

    /// Error for a reference to an unused page id.
    #[allow(clippy::unused_self)] // a method of the forest whose page is missing, by design
    pub fn dangling(&self, pid: Pid) -> Error {
        Error::internal(format!("reference to unused page {pid}"))
    }

    /// Allocates a page id.
    pub fn alloc_pid(&self) -> Pid {
        if let Some(p) = self.free_pids.lock().pop() {
            return p;
        }
        let p = self.next_pid.fetch_add(1, Ordering::AcqRel);
        assert!(p < MAX_PAGES, "mapping table full");
        p
    }

    /// Installs the first chain of a freshly allocated page id.
    pub fn install_new(&self, pid: Pid, kind: NodeKind) {
        let node = Node::base(1, kind);
        self.mem.fetch_add(mem_delta(node.mem), Ordering::Relaxed);
        let guard = epoch::pin();
        let slot = self.table.slot(pid);
        let prev = slot.head.swap(Owned::new(node), Ordering::AcqRel, &guard);
        assert!(prev.is_null(), "page {pid} installed twice");
        self.table.update_meta(&mut slot.meta.lock(), |m| *m = SlotMeta::default());
    }

    /// Takes back a page installed by `install_new` that never became reachable.
    pub fn uninstall(&self, pid: Pid, guard: &Guard) {
        // SAFETY: no node links to `pid` (the `replace` that would have linked it failed).
        unsafe { self.empty_slot(pid, guard) };
        self.free_pids.lock().push(pid);
    }

    /// Takes the chain of `pid` out of its slot (leaving it empty), retires it through the
    /// epoch and releases its memory from the cache's count.
    ///
    /// # Safety
    /// No live node may link to `pid` any more, so that once the slot is empty only a pin
    /// that predates this call (a thread that loaded the slot by page id) can reach the
    /// chain; epoch reclamation frees it after those pins end.
    pub(super) unsafe fn empty_slot(&self, pid: Pid, guard: &Guard) {
        let prev = self.table.slot(pid).head.swap(Shared::null(), Ordering::AcqRel, guard);
        // SAFETY: the swap just took the chain out of its slot, and the caller guarantees
        // nothing links to `pid`: only a pin that predates the swap can still reach it.
        let old = unsafe { retire_chain(prev, guard) };
        self.swap_mem(0, false, old);
    }

    /// Replaces the chain whose head is `head` (with `seq`) by one base node. False when the
    /// CAS lost to a concurrent change.
    pub fn replace(&self, pid: Pid, head: Shared<'_, Node>, seq: u64, kind: NodeKind, guard: &Guard) -> bool {
        let done = self.swap_base(pid, head, seq, kind, guard);
        if done {
            self.mark_dirty(pid);
        }
        done
    }

    /// [`Forest::replace`] for a checkpoint's capture: `kind` is the consolidated base whose
    /// bytes are the image the checkpoint writes, so the page is not marked dirty again
    /// (it is sealed in that checkpoint, and `publish` records the new head's `seq`, this
    /// call's `seq + 1`, as flushed). False when the CAS lost to a concurrent change.
    pub fn replace_sealed(&self, pid: Pid, head: Shared<'_, Node>, seq: u64, kind: NodeKind, guard: &Guard) -> bool {
        self.swap_base(pid, head, seq, kind, guard)
    }

    fn swap_base(&self, pid: Pid, head: Shared<'_, Node>, seq: u64, kind: NodeKind, guard: &Guard) -> bool {
        let node = Node::base(seq + 1, kind);
        let (mem, stub) = (node.mem, matches!(node.kind, NodeKind::Disk { .. }));
        let slot = self.table.slot(pid);
        match slot.head.compare_exchange(head, Owned::new(node), Ordering::AcqRel, Ordering::Acquire, guard) {
            Ok(_) => {
                // SAFETY: the CAS just unlinked `head`'s chain.
                let old = unsafe { retire_chain(head, guard) };
                self.swap_mem(mem, stub, old);
                true
            }
            Err(_) => false,
        }
    }

    /// Marks a page dirty (invariant 3), charged as a base (invariant 6,
    /// [`Forest::base_cost`]).
    pub fn mark_dirty(&self, pid: Pid) {
        self.list_dirty(pid);
        let cost = {
            let guard = epoch::pin();
            ChainView::load(self, pid, &guard).map_or(DIRTY_PAGE_COST, |v| base_cost(&v, 0))
        };
        self.charge(pid, cost);
    }

    /// Keeps page `pid`, holding chain `v` after a cut at `cut_ts`, in the dirty set
    /// (invariant 3), charged what its next capture will hold of the versions above the cut
    /// (invariant 6): a delta frame of them if `delta_next`, else a base. Called by the
    /// capture for a page it took in part or left (the cut's drain took the charge of its
    /// versions above the cut), and by the publish for every captured page written since
    /// (their writes were charged by the page as it was before the publish).
    pub(crate) fn keep_dirty(&self, pid: Pid, v: &ChainView<'_>, cut_ts: u64, delta_next: bool) {
        let mut above = v.deltas().filter(|(_, ver)| ver.ts > cut_ts).peekable();
        if above.peek().is_none() && delta_next {
            return; // nothing above the cut: nothing for the next cut to write
        }
        let cost = if delta_next {
            delta_cost(0, above.map(|(k, ver)| super::node::version_bytes(k, ver)).sum())
        } else {
            base_cost(v, 0)
        };
        self.list_dirty(pid);
        self.charge(pid, cost);
    }

    /// Raises the charge of `pid` to at least a leaf of `size` bytes written as a base, if
    /// it is charged at all (listed, not drained: a load that folds the page's blind
    /// writes into a new base makes the next capture write a base where the writes were
    /// charged a delta frame; invariant 6).
    pub(crate) fn charge_as_base(&self, pid: Pid, size: usize) {
        let cost = u32::try_from(leaf_cost(size)).unwrap_or(u32::MAX);
        let slot = self.table.slot(pid);
        let raised = slot.dirty_cost.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c > 0 && c < cost).then_some(cost));
        if let Ok(prev) = raised {
            self.dirty_bytes.fetch_add(u64::from(cost - prev), Ordering::Relaxed);
        }
    }

    /// Raises the dirty charge of `pid` to at least `cost` bytes (invariant 6).
    fn charge(&self, pid: Pid, cost: usize) {
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        let prev = self.table.slot(pid).dirty_cost.fetch_max(cost, Ordering::Relaxed);
        if cost > prev {
            self.dirty_bytes.fetch_add(u64::from(cost - prev), Ordering::Relaxed);
        }
    }

    /// Puts a page in the dirty set (invariant 3), charging nothing.
    fn list_dirty(&self, pid: Pid) {
        // Orders the write's install (before this call) before the generation read: a write
        // that reads the generation before a cut's bump is then seen by that cut's capture,
        // which keeps a page holding versions above its cut dirty (the fast path below
        // relies on it when that cut already drained the page's entry).
        std::sync::atomic::fence(Ordering::SeqCst);
        let slot = self.table.slot(pid);
        if slot.dirty_gen.load(Ordering::Acquire) == self.dirty_gen.load(Ordering::SeqCst) {
            return;
        }
        let mut shard = self.shard(pid).lock();
        let gen = self.dirty_gen.load(Ordering::SeqCst);
        if slot.dirty_gen.load(Ordering::Acquire) != gen {
            shard.push((pid, gen));
            self.dirty_len.fetch_add(1, Ordering::Relaxed);
            slot.dirty_gen.store(gen, Ordering::Release);
        }
    }

    fn shard(&self, pid: Pid) -> &Mutex<Vec<(Pid, u64)>> {
        // DIRTY_SHARDS is a power of two far below u64::MAX: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let ix = (pid % DIRTY_SHARDS as u64) as usize;
        &self.dirty[ix].0
    }

    /// Accounts a delta of `mem` bytes (a version of `bytes`) installed on `pid`, whose
    /// chain before it was `v`, and marks the page dirty, charged as invariant 6 says.
    pub fn note_write(&self, pid: Pid, v: &ChainView<'_>, mem: isize, bytes: usize) {
        self.mem.fetch_add(mem as i64, Ordering::Relaxed);
        self.written_since_cut.fetch_add(bytes as u64, Ordering::Relaxed);
        self.list_dirty(pid);
        if self.delta_frame_ahead(pid, v) {
            let now = self.table.slot(pid).dirty_cost.load(Ordering::Relaxed) as usize;
            self.charge(pid, delta_cost(now, bytes));
        } else {
            self.charge(pid, base_cost(v, bytes));
        }
        self.maybe_evict(pid);
    }

    /// What writing `keys` versions of `bytes` bytes to leaf `pid` would add to the dirty
    /// set's charge (invariant 6), a split or a consolidation it would make included: the
    /// flow control's estimate for a commit, made once its leaves are found. `loading`:
    /// the commit loads the leaf before it writes (`Forest::load_to_write`, which charges a
    /// loaded page its size), so it is written in memory, and split there if it grows past
    /// the split size.
    pub fn write_charge(&self, pid: Pid, keys: usize, bytes: usize, loading: bool) -> usize {
        let guard = epoch::pin();
        let Some(v) = ChainView::load(self, pid, &guard) else { return DIRTY_PAGE_COST };
        let now = self.table.slot(pid).dirty_cost.load(Ordering::Relaxed) as usize;
        let stub = matches!(v.bottom.kind, NodeKind::Disk { .. });
        if stub && !loading {
            let cost = if self.delta_frame_ahead(pid, &v) {
                delta_cost(now, bytes)
            } else {
                base_cost(&v, bytes)
            };
            return cost.saturating_sub(now);
        }
        // Written in memory. A stub made at open does not know its size: at most a page
        // in full, and perhaps a split.
        let size = if stub && v.bottom.bytes == 0 {
            DIRTY_PAGE_COST
        } else {
            (v.head_node.bytes as usize).saturating_add(bytes)
        };
        if size > SPLIT_LEAF_BYTES {
            // Split: the halves are written as bases (their sizes add up to the leaf's),
            // and their parent is dirtied.
            return leaf_cost(size).saturating_sub(now).saturating_add(DIRTY_PAGE_COST);
        }
        // A chain reaching `CONSOLIDATE_CHAIN_LEN` deltas is consolidated into a new base,
        // which goes out as a base.
        let consolidates = v.depth() + keys >= CONSOLIDATE_CHAIN_LEN;
        let cost = if !stub && !consolidates && self.delta_frame_ahead(pid, &v) {
            delta_cost(now, bytes)
        } else {
            leaf_cost(size)
        };
        cost.saturating_sub(now)
    }

    /// Whether the versions written over chain `v` of `pid` can go out as a delta frame at
    /// the next checkpoint (invariant 6): its chain on disk has room for one more frame and
    /// none of its frames is in a file GC is emptying (the capture writes such a chain as a
    /// base), and it is either a leaf whose base is its image on disk or an evicted leaf
    /// whose bounds are known (the capture's own tests: `deltas_over_image`,
    /// `capture_needs_load`).
    fn delta_frame_ahead(&self, pid: Pid, v: &ChainView<'_>) -> bool {
        let meta = self.table.slot(pid).meta.lock();
        if meta.addr == 0
            || meta.next_is_base
            || meta.links.as_ref().map_or(0, |l| l.len()) >= MAX_DELTA_FRAMES
            || self.in_gc_files(&meta)
        {
            return false;
        }
        match &v.bottom.kind {
            NodeKind::Disk { bounds, .. } => bounds.is_some(),
            NodeKind::Leaf(_) => meta.base_seq == v.bottom.seq,
            _ => false,
        }
    }

    /// Pages changed since the last cut (the dirty set's size).
    pub fn dirty_pages(&self) -> usize {
        self.dirty_len.load(Ordering::Relaxed)
    }

    /// What the dirty set is charged, in bytes (invariant 6): the figure the dirty bound
    /// (`Options::dirty_limit`) holds.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes.load(Ordering::Relaxed) + self.sealing.load(Ordering::Relaxed)
    }

    /// The cut's capture succeeded: its images hold the sealed pages now (the checkpoint's
    /// own memory gauge counts them), so their charges leave the dirty set's.
    pub fn seal_done(&self) {
        self.sealed_costs.lock().clear();
        self.sealing.store(0, Ordering::Relaxed);
    }

    /// Seals the dirty set (the checkpoint cut): starts a new generation, then drains from
    /// every shard the entries of the generations it ended (invariant 3).
    pub fn take_dirty(&self) -> FxHashSet<Pid> {
        self.written_since_cut.store(0, Ordering::Relaxed);
        let ended = self.new_dirty_generation();
        self.drain_dirty(ended)
    }

    /// Starts a new dirty-set generation; returns the one it ended.
    fn new_dirty_generation(&self) -> u64 {
        let ended = self.dirty_gen.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence of `mark_dirty`: a write that read an ended generation has its
        // install seen by the capture that follows.
        std::sync::atomic::fence(Ordering::SeqCst);
        ended
    }

    /// Takes the entries of generations up to `ended` out of every shard.
    fn drain_dirty(&self, ended: u64) -> FxHashSet<Pid> {
        let mut sealed = HashSet::with_hasher(FxBuildHasher);
        let mut costs = self.sealed_costs.lock();
        costs.clear();
        self.sealing.store(0, Ordering::Relaxed);
        for shard in &*self.dirty {
            let mut list = shard.0.lock();
            let before = list.len();
            list.retain(|&(pid, gen)| {
                if gen <= ended {
                    sealed.insert(pid);
                    let cost = self.table.slot(pid).dirty_cost.swap(0, Ordering::Relaxed);
                    self.dirty_bytes.fetch_sub(u64::from(cost), Ordering::Relaxed);
                    costs.insert(pid, cost);
                    self.sealing.fetch_add(u64::from(cost), Ordering::Relaxed);
                    false
                } else {
                    true
                }
            });
            self.dirty_len.fetch_sub(before - list.len(), Ordering::Relaxed);
        }
        sealed
    }

    /// Puts pages back in the dirty set (a failed or retried cut, GC's marking): a page the
    /// last cut sealed with the charge its drain took, any other charged as a base.
    pub fn restore_dirty(&self, pids: impl IntoIterator<Item = Pid>) {
        let mut costs = self.sealed_costs.lock();
        for pid in pids {
            match costs.remove(&pid) {
                Some(cost) => {
                    self.list_dirty(pid);
                    self.charge(pid, cost as usize);
                    self.sealing.fetch_sub(u64::from(cost), Ordering::Relaxed);
                }
                None => self.mark_dirty(pid),
            }
        }
    }

    /// Dirty pages whose chain ends in a disk stub and that a checkpoint cannot write
    /// without loading them ([`Forest::capture_needs_load`]).
    pub fn dirty_unloaded(&self) -> Vec<Pid> {
        let mut pids: Vec<Pid> = self
            .dirty
            .iter()
            .flat_map(|s| s.0.lock().iter().map(|&(pid, _)| pid).collect::<Vec<_>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let guard = epoch::pin();
        pids.into_iter()
            .filter(|&p| ChainView::load(self, p, &guard).is_some_and(|v| self.capture_needs_load(p, &v)))
            .collect()
    }

    /// Whether the chain of `pid`, if it is blind writes over an evicted leaf, has room for
    /// `deltas` more of `bytes` bytes (`Tree::written_after` says when a write is blind).
    /// True for a page in memory.
    pub fn blind_room(&self, pid: Pid, deltas: usize, bytes: usize) -> bool {
        let guard = epoch::pin();
        let Some(v) = ChainView::load(self, pid, &guard) else { return true };
        !matches!(v.bottom.kind, NodeKind::Disk { .. })
            || (v.depth() + deltas <= MAX_BLIND_DELTAS && v.head_node.bytes as usize + bytes <= BLIND_PAGE_BYTES)
    }

    /// Whether a checkpoint must load page `pid` (chain `v`) before it can write it. A
    /// chain that does not end in a stub needs nothing. Over a stub: blind writes go out as
    /// a delta frame while the page has fewer than [`MAX_DELTA_FRAMES`] of them on disk and
    /// its bounds are known and no frame of its chain is in a file GC is emptying (else the
    /// page is loaded and written as a base, which consolidates its chain); an unchanged stub (GC) is copied as is when its image is one
    /// frame, and loaded when it is a chain (GC moves a chain as a whole, as a base).
    /// The capture may still ask for a load: a delta frame larger than
    /// `1 / DELTA_BASE_RATIO` of its base, or one with nothing to write.
    pub fn capture_needs_load(&self, pid: Pid, v: &ChainView<'_>) -> bool {
        let NodeKind::Disk { bounds, .. } = &v.bottom.kind else { return false };
        let meta = self.table.slot(pid).meta.lock();
        let deltas_on_disk = meta.links.as_ref().map_or(0, |l| l.len());
        if v.depth() == 0 {
            deltas_on_disk > 0
        } else {
            bounds.is_none() || meta.addr == 0 || deltas_on_disk >= MAX_DELTA_FRAMES || self.in_gc_files(&meta)
        }
    }

    /// Whether `meta` is a chain with a frame in a file GC is emptying (such a chain is
    /// written as a base, so that the file can go).
    fn in_gc_files(&self, meta: &crate::tree::mapping::SlotMeta) -> bool {
        if meta.links.is_none() {
            return false;
        }
        let gc = self.gc_files.lock();
        !gc.is_empty() && self.has_frame_in(meta, &gc)
    }

    /// Whether a frame of the page `meta` describes lies in one of `files`.
    fn has_frame_in(&self, meta: &crate::tree::mapping::SlotMeta, files: &FxHashSet<u64>) -> bool {
        meta.frames().any(|a| self.store.file_of(a).is_some_and(|id| files.contains(&id)))
    }

    /// Where a page's image is: (address, length) of its newest frame, if published.
    pub fn page_loc(&self, pid: Pid) -> Option<(u64, u32)> {
        let m = self.table.try_slot(pid)?.meta.lock();
        (m.addr != 0).then_some((m.addr, m.len))
    }

    /// Reads a value, fetching a blob from disk when it is not in memory.
    pub async fn resolve(&self, v: &Value) -> Result<Option<Bytes>> {
        match v {
            Value::Tombstone => Ok(None),
            Value::Inline(b) => Ok(Some(b.clone())),
            Value::Blob(c) => {
                if let Some(b) = &c.bytes {
                    Ok(Some(b.clone()))
                } else {
                    let frame = self.store.read_frame(c.addr()).await?;
                    if frame.bytes.len() != c.len as usize {
                        return Err(Error::corruption(
                            &frame.file,
                            frame.offset,
                            "blob length differs from its reference",
                        ));
                    }
                    Ok(Some(frame.bytes))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::IoBackend;

    fn forest() -> Forest {
        let io = crate::io::IoDriver::new(IoBackend::ThreadPool).expect("thread pool");
        let store = Arc::new(Store::new(io, std::env::temp_dir(), std::iter::empty(), 1, 1));
        Forest::new(store, Mvcc::new(0), 1 << 20, 1, std::iter::empty())
    }

    #[test]
    fn a_page_marked_again_in_one_generation_is_listed_once() {
        let f = forest();
        for _ in 0..3 {
            f.mark_dirty(5);
            f.mark_dirty(9);
        }
        assert_eq!(f.dirty_pages(), 2);
        let sealed = f.take_dirty();
        assert_eq!(sealed.len(), 2);
        assert_eq!(f.dirty_pages(), 0);
        f.mark_dirty(5);
        f.restore_dirty(sealed);
        assert_eq!(f.dirty_pages(), 2, "page 5 already in the new generation, 9 restored");
        assert_eq!(f.take_dirty().into_iter().collect::<std::collections::BTreeSet<_>>(), [5, 9].into());
    }

    /// Invariant 6: the charge is the sum of the listed pages' charges, rises (never falls)
    /// while a page stays listed, and a cut's drain takes each sealed page's charge back
    /// whole, counted on until the capture succeeds (a retried cut restores the charges).
    /// A page marked again between the bump and the drain loses its charge to the drain;
    /// the capture's mark (its version is above the cut) charges it again.
    #[test]
    fn the_dirty_charge_rises_per_page_and_a_cut_takes_it_back() {
        let f = forest();
        f.mark_dirty(5); // no chain: an unknown page is charged in full
        f.mark_dirty(5);
        assert_eq!(f.dirty_bytes(), DIRTY_PAGE_COST as u64, "one page, charged once");
        f.list_dirty(9);
        f.charge(9, 300);
        f.charge(9, 200); // lower: no change
        f.charge(9, 700);
        assert_eq!(f.dirty_bytes(), (DIRTY_PAGE_COST + 700) as u64);
        let sealed = f.take_dirty();
        assert_eq!(sealed.len(), 2);
        assert_eq!(f.dirty_bytes(), (DIRTY_PAGE_COST + 700) as u64, "counted until the capture succeeds");
        f.restore_dirty(sealed); // a retried cut: back with the charges the drain took
        assert_eq!((f.dirty_pages(), f.dirty_bytes()), (2, (DIRTY_PAGE_COST + 700) as u64));
        assert_eq!(f.take_dirty().len(), 2);
        f.seal_done();
        assert_eq!(f.dirty_bytes(), 0, "the cut took back every sealed page's charge");
        f.mark_dirty(7);
        let ended = f.new_dirty_generation();
        f.mark_dirty(7); // a write of the new generation, before the drain
        assert_eq!(f.drain_dirty(ended), [7].into_iter().collect());
        f.seal_done();
        assert_eq!((f.dirty_pages(), f.dirty_bytes()), (1, 0), "listed, its charge taken by the drain");
        f.mark_dirty(7); // the capture keeps the page dirty: charged again
        assert_eq!(f.dirty_bytes(), DIRTY_PAGE_COST as u64);
    }

    /// A page marked in the new generation between a cut's bump and its drain stays listed
    /// for the next cut: its slot says so, and a later mark (a write, or a checkpoint keeping
    /// the page dirty) trusts the slot. (Found by the kill -9 test: a drain that took every
    /// entry lost such a page from the next checkpoint.)
    #[test]
    fn a_page_marked_between_the_bump_and_the_drain_stays_listed() {
        let f = forest();
        f.mark_dirty(7);
        let ended = f.new_dirty_generation();
        f.mark_dirty(7); // a write of the new generation, before the drain
        assert_eq!(f.drain_dirty(ended), [7].into_iter().collect());
        f.mark_dirty(7); // the cut's publish keeps the page dirty: the slot says it is listed
        assert_eq!(f.dirty_pages(), 1);
        assert_eq!(f.take_dirty(), [7].into_iter().collect(), "the next cut must seal it");
    }

    /// Invariant 3 under a race, while marks race the cuts on other threads: a mark
    /// published before a cut looks is in that cut's sealed set or an earlier one, no
    /// earlier than the cut that was running when the mark began. (In the engine a write
    /// installs its delta before it marks, so a cut whose capture follows the mark's start
    /// sees the delta and keeps its page dirty even when an earlier cut sealed the page.)
    #[test]
    fn a_mark_published_before_a_cut_is_in_its_sealed_set() {
        use std::sync::atomic::AtomicBool;
        type Log = Mutex<Vec<(Pid, u64)>>;
        const WRITERS: usize = 2;
        let f = Arc::new(forest());
        // Cuts started so far; per writer, its marks: (page, cuts started when it began).
        let cuts = Arc::new(AtomicU64::new(0));
        let logs: Arc<Vec<Log>> = Arc::new((0..WRITERS).map(|_| Mutex::new(Vec::new())).collect());
        let published: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (f, cuts, logs) = (Arc::clone(&f), Arc::clone(&cuts), Arc::clone(&logs));
                let (published, stop) = (Arc::clone(&published), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let pid = 1 + (n * (w as u64 + 1)) % 50;
                        let began = cuts.load(Ordering::SeqCst);
                        f.mark_dirty(pid);
                        logs[w].lock().push((pid, began));
                        n += 1;
                        published[w].store(n, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let mut sealed: Vec<FxHashSet<Pid>> = Vec::new();
        let mut seen = [0u64; WRITERS];
        let mut c = 0u64;
        // At least 2,000 cuts, and until every writer has published 20,000 marks.
        while c < 2000 || published.iter().any(|p| p.load(Ordering::Relaxed) < 20_000) {
            let now: Vec<u64> = published.iter().map(|p| p.load(Ordering::SeqCst)).collect();
            cuts.store(c + 1, Ordering::SeqCst);
            sealed.push(f.take_dirty());
            for w in 0..WRITERS {
                let log = logs[w].lock();
                for n in seen[w]..now[w] {
                    let (pid, began) = log[usize::try_from(n).unwrap()];
                    let from = usize::try_from(began.saturating_sub(1)).unwrap();
                    assert!(
                        sealed[from..].iter().any(|s| s.contains(&pid)),
                        "page {pid} (mark {n} of writer {w}, begun at cut {began}) published before cut {c}, not sealed"
                    );
                }
                seen[w] = now[w];
            }
            c += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
}
