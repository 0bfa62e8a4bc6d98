//! The forest: the mapping table shared by every tree of a database, with the page cache
//! accounting, the dirty set, page loads and eviction.
//!
//! Invariants:
//! 1. A page may be evicted (its chain replaced by a [`NodeKind::Disk`] stub) only when its
//!    head's `seq` equals `meta.flushed_seq`: the published image holds exactly the chain's
//!    content. `meta` is read and written under its lock, so eviction never pairs an old
//!    address with a new `seq`.
//! 2. Index nodes are never evicted; once loaded they stay in memory.
//! 3. A page written since the last checkpoint cut is in the dirty set (`note_write` marks
//!    it after its delta is installed, so a checkpoint that misses the mark also misses the
//!    delta, which then waits for the next checkpoint).
//! 4. Cache memory is the sum of `Node::mem` over installed nodes; a chain's memory is
//!    released when it is unlinked.
//! 5. No published page image holds a version newer than [`Forest::disk_ts`]: it starts at
//!    the recovered checkpoint's cut (the forest is built before the WAL replay) and
//!    [`Forest::publish`] raises it to the new cut before any captured page becomes
//!    evictable, so whoever sees an eviction stub also sees the raised value. A commit's
//!    conflict check uses it to skip reading evicted leaves (`Tree::written_after`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_epoch::{self as epoch, Guard, Owned, Shared};
use futures::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::page::{self, PageImage};
use crate::error::{Error, Result};
use crate::limits::MAX_PAGES;
use crate::mvcc::Mvcc;
use crate::store::Store;
use crate::tree::mapping::{retire_chain, MappingTable};
use crate::tree::node::{BlobCell, Node, NodeKind, Pid, Value};
use crate::tree::{merge_leaf, ChainView};

/// A decoded page image with the file and offset it came from.
type LoadedImage = (PageImage, std::path::PathBuf, u64);
type SharedLoad = futures::future::Shared<BoxFuture<'static, Result<Arc<LoadedImage>>>>;

/// Slots one eviction call looks at, at most.
pub const EVICT_SCAN_BUDGET: usize = 512;

/// A page image captured by a checkpoint.
#[derive(Debug)]
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
}

/// A blob value a checkpoint must write, with the address the images refer to it by.
#[derive(Debug)]
pub struct PendingBlob {
    /// The blob.
    pub cell: Arc<BlobCell>,
    /// Its new address.
    pub addr: u64,
}

/// Mapping table, cache and dirty tracking of one database.
pub struct Forest {
    /// Page id -> chain.
    pub table: MappingTable,
    /// The files.
    pub store: Arc<Store>,
    mvcc: Arc<Mvcc>,
    dirty: Mutex<FxHashSet<Pid>>,
    mem: AtomicI64,
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
    /// Page images read from disk since open.
    pub page_reads: AtomicU64,
    /// Set when the cache is over capacity and nothing clean is left to evict.
    pub needs_checkpoint: AtomicBool,
    /// No page image on disk holds a version newer than this (invariant 5).
    disk_ts: AtomicU64,
    /// Slots the eviction clock passed since it last evicted or found a referenced page,
    /// or since a page became clean; at a full sweep, eviction stops looking until then.
    barren: AtomicU64,
}

impl Forest {
    /// A forest over `store` with the page table `pages` (pid -> address) of the manifest.
    pub fn new(
        store: Arc<Store>,
        mvcc: Arc<Mvcc>,
        capacity: usize,
        next_pid: u64,
        pages: impl Iterator<Item = (Pid, u64, u32)>,
    ) -> Forest {
        let f = Forest {
            table: MappingTable::new(),
            store,
            mvcc,
            dirty: Mutex::new(HashSet::with_hasher(FxBuildHasher)),
            mem: AtomicI64::new(0),
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
            page_reads: AtomicU64::new(0),
            disk_ts: AtomicU64::new(0),
            barren: AtomicU64::new(0),
        };
        f.disk_ts.store(f.mvcc.visible(), Ordering::SeqCst);
        for (pid, addr, len) in pages {
            let slot = f.table.slot(pid);
            slot.head
                .store(Owned::new(Node::base(1, NodeKind::Disk { addr, bounds: None })), Ordering::Release);
            *slot.meta.lock() = crate::tree::mapping::SlotMeta { addr, len, flushed_seq: 1 };
            f.mem.fetch_add(96, Ordering::Relaxed);
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

    /// Bytes of cache in use.
    pub fn mem_used(&self) -> i64 {
        self.mem.load(Ordering::Relaxed)
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
    pub fn dangling(&self, pid: Pid) -> Error {
        Error::internal(format!("reference to unused page {pid}"))
    }

    /// Sets the page's CLOCK bit.
    pub fn touch(&self, pid: Pid) {
        let slot = self.table.slot(pid);
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
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
        self.mem.fetch_add(node.mem as i64, Ordering::Relaxed);
        let guard = epoch::pin();
        let slot = self.table.slot(pid);
        let prev = slot.head.swap(Owned::new(node), Ordering::AcqRel, &guard);
        assert!(prev.is_null(), "page {pid} installed twice");
        *slot.meta.lock() = Default::default();
    }

    /// Takes back a page installed by `install_new` that never became reachable.
    pub fn uninstall(&self, pid: Pid, guard: &Guard) {
        let slot = self.table.slot(pid);
        let prev = slot.head.swap(Shared::null(), Ordering::AcqRel, guard);
        // SAFETY: the swap just took the chain out of its slot, and no node links to `pid`
        // (the `replace` that would have linked it failed), so only a pin that predates the
        // swap can still reach it (a thread that loaded the slot by page id meanwhile).
        let mem = unsafe { retire_chain(prev, guard) };
        self.mem.fetch_sub(mem as i64, Ordering::Relaxed);
        self.free_pids.lock().push(pid);
    }

    /// Replaces the chain whose head is `head` (with `seq`) by one base node. False when the
    /// CAS lost to a concurrent change.
    pub fn replace(&self, pid: Pid, head: Shared<'_, Node>, seq: u64, kind: NodeKind, guard: &Guard) -> bool {
        let node = Node::base(seq + 1, kind);
        let mem = node.mem as i64;
        let slot = self.table.slot(pid);
        match slot.head.compare_exchange(head, Owned::new(node), Ordering::AcqRel, Ordering::Acquire, guard) {
            Ok(_) => {
                // SAFETY: the CAS just unlinked `head`'s chain.
                let old = unsafe { retire_chain(head, guard) };
                self.mem.fetch_add(mem - old as i64, Ordering::Relaxed);
                self.mark_dirty(pid);
                true
            }
            Err(_) => false,
        }
    }

    /// Marks a page dirty.
    pub fn mark_dirty(&self, pid: Pid) {
        self.dirty.lock().insert(pid);
    }

    /// Accounts a delta of `mem` bytes installed on `pid` and marks it dirty.
    pub fn note_write(&self, pid: Pid, mem: isize, bytes: usize) {
        self.mem.fetch_add(mem as i64, Ordering::Relaxed);
        self.written_since_cut.fetch_add(bytes as u64, Ordering::Relaxed);
        self.mark_dirty(pid);
        self.maybe_evict(pid);
    }

    /// Seals the dirty set (the checkpoint cut).
    pub fn take_dirty(&self) -> FxHashSet<Pid> {
        self.written_since_cut.store(0, Ordering::Relaxed);
        std::mem::take(&mut *self.dirty.lock())
    }

    /// Puts pages back in the dirty set (a failed or partial checkpoint).
    pub fn restore_dirty(&self, pids: impl IntoIterator<Item = Pid>) {
        self.dirty.lock().extend(pids);
    }

    /// Dirty pages whose chain ends in a disk stub (blind writes to evicted pages).
    pub fn dirty_unloaded(&self) -> Vec<Pid> {
        let pids: Vec<Pid> = self.dirty.lock().iter().copied().collect();
        let guard = epoch::pin();
        pids.into_iter()
            .filter(|&p| {
                ChainView::load(self, p, &guard)
                    .is_some_and(|v| matches!(v.bottom.kind, NodeKind::Disk { .. }))
            })
            .collect()
    }

    /// Reads and decodes the page image at `addr`; concurrent readers of one address share
    /// one read (the future is shared, so a dropped reader does not stall the others).
    async fn read_image(&self, addr: u64) -> Result<Arc<LoadedImage>> {
        let fut = {
            let mut m = self.inflight.lock();
            match m.get(&addr) {
                Some(f) => f.clone(),
                None => {
                    let store = self.store.clone();
                    self.page_reads.fetch_add(1, Ordering::Relaxed);
                    let f = async move {
                        let frame = store.read_frame(addr).await?;
                        let img = page::decode(&frame.bytes, &frame.file, frame.offset)?;
                        Ok(Arc::new((img, frame.file, frame.offset)))
                    }
                    .boxed()
                    .shared();
                    m.insert(addr, f.clone());
                    f
                }
            }
        };
        let r = fut.await;
        self.inflight.lock().remove(&addr);
        r
    }

    /// Loads page `pid` from disk if its chain ends in a disk stub, folding blind deltas in.
    pub async fn load(&self, pid: Pid) -> Result<()> {
        let (addr, stub_seq) = {
            let guard = epoch::pin();
            let v = ChainView::load(self, pid, &guard).ok_or_else(|| self.dangling(pid))?;
            match &v.bottom.kind {
                // Read the slot's current address, not the stub's: a checkpoint may have
                // rewritten the page (GC) after the stub was made, to an identical image,
                // and the stub's old file may be gone.
                NodeKind::Disk { .. } => (self.table.slot(pid).meta.lock().addr, v.bottom.seq),
                _ => return Ok(()),
            }
        };
        if addr == 0 {
            return Err(self.dangling(pid));
        }
        let loaded = match self.read_image(addr).await {
            Ok(l) => l,
            // A checkpoint may have moved the page (GC) and deleted its old file while we
            // were reading: retry at the new address; any other failure is the answer.
            Err(e) => {
                let moved = self.table.slot(pid).meta.lock().addr != addr;
                if moved {
                    return Box::pin(self.load(pid)).await;
                }
                return Err(e);
            }
        };
        let (img, file, offset) = &*loaded;
        let horizon = self.horizon();
        for _ in 0..1000 {
            let guard = epoch::pin();
            let v = ChainView::load(self, pid, &guard).ok_or_else(|| self.dangling(pid))?;
            if !matches!(v.bottom.kind, NodeKind::Disk { .. }) || v.bottom.seq != stub_seq {
                return Ok(()); // loaded by someone else
            }
            let kind = match &img {
                PageImage::Leaf(l) if v.deltas.is_empty() => NodeKind::Leaf(l.clone()),
                PageImage::Leaf(l) => NodeKind::Leaf(merge_leaf(&v.deltas, l, horizon)),
                PageImage::Inner(i) if v.deltas.is_empty() => NodeKind::Inner(i.clone()),
                PageImage::Inner(_) => {
                    return Err(Error::corruption(
                        file,
                        *offset,
                        "page image is an index node but leaf writes reached it",
                    ));
                }
            };
            let node = Node::base(v.head_node.seq + 1, kind);
            let new_seq = node.seq;
            let mem = node.mem as i64;
            let slot = self.table.slot(pid);
            let mut meta = slot.meta.lock();
            if slot
                .head
                .compare_exchange(v.head, Owned::new(node), Ordering::AcqRel, Ordering::Acquire, &guard)
                .is_ok()
            {
                // Our CAS replaced the very stub we read, with no delta above it: the new
                // base equals the image at the slot's address (even if a checkpoint moved
                // that image meanwhile, it moved an identical one).
                if v.deltas.is_empty() {
                    meta.flushed_seq = new_seq;
                    self.note_clean();
                }
                drop(meta);
                // SAFETY: the CAS just unlinked the old chain.
                let old = unsafe { retire_chain(v.head, &guard) };
                self.mem.fetch_add(mem - old as i64, Ordering::Relaxed);
                slot.referenced.store(true, Ordering::Relaxed);
                self.maybe_evict(pid);
                return Ok(());
            }
        }
        Err(Error::internal(format!("the load of page {pid} (address {addr}) lost every race")))
    }

    /// Evicts clean leaves (CLOCK) while the cache is over capacity. Each call scans at
    /// most [`EVICT_SCAN_BUDGET`] slots, so a cache full of dirty pages costs a bounded
    /// amount per call; then a checkpoint is requested, which makes pages clean again.
    ///
    /// `keep` (0 for none) is the page the caller just loaded or wrote: it is never evicted
    /// by its own operation, and one call never sweeps more than once round the table, so a
    /// page whose reference bit is set survives the call: a reader always gets to read the
    /// page it loaded, even when nothing else in the cache is clean.
    pub fn maybe_evict(&self, keep: Pid) {
        if self.mem.load(Ordering::Relaxed) <= self.capacity as i64 {
            return;
        }
        let limit = self.next_pid();
        // A full sweep found nothing clean and no page became clean since: scanning again
        // would only cost every writer a walk over the table (the cache is full of dirty
        // pages; the checkpoint requested below cleans them).
        if self.barren.load(Ordering::Relaxed) >= limit {
            self.needs_checkpoint.store(true, Ordering::Relaxed);
            return;
        }
        let Some(_g) = self.evict_lock.try_lock() else { return };
        let target = (self.capacity as i64) * 9 / 10;
        let guard = epoch::pin();
        for _ in 0..EVICT_SCAN_BUDGET.min(limit as usize) {
            if self.mem.load(Ordering::Relaxed) <= target {
                break;
            }
            let mut pid = self.hand.fetch_add(1, Ordering::Relaxed);
            if pid >= limit {
                self.hand.store(2, Ordering::Relaxed);
                pid = 1;
            }
            self.barren.fetch_add(1, Ordering::Relaxed);
            if pid == keep {
                continue;
            }
            let Some(slot) = self.table.try_slot(pid) else { continue };
            let referenced = slot.referenced.swap(false, Ordering::Relaxed);
            let meta = slot.meta.lock();
            if meta.addr == 0 || meta.flushed_seq == 0 {
                continue;
            }
            // SAFETY: a non-null head loaded under `guard` stays allocated until the guard
            // is dropped (chains are only freed through `defer_destroy`).
            let Some(head) = (unsafe { slot.head.load(Ordering::Acquire, &guard).as_ref() }) else {
                continue;
            };
            if meta.flushed_seq != head.seq {
                continue; // written since its image: dirty (checked before walking the chain)
            }
            let Some(v) = ChainView::load(self, pid, &guard) else { continue };
            let NodeKind::Leaf(l) = &v.bottom.kind else { continue };
            if v.head_node.seq != meta.flushed_seq {
                continue;
            }
            if referenced {
                // A clean leaf read since the last sweep: it may go in the next one.
                self.barren.store(0, Ordering::Relaxed);
                continue;
            }
            let stub = Node::base(
                v.head_node.seq + 1,
                NodeKind::Disk { addr: meta.addr, bounds: Some(l.bounds.clone()) },
            );
            let mem = stub.mem as i64;
            let head_ptr = v.head;
            if slot
                .head
                .compare_exchange(head_ptr, Owned::new(stub), Ordering::AcqRel, Ordering::Acquire, &guard)
                .is_ok()
            {
                drop(meta);
                self.barren.store(0, Ordering::Relaxed);
                // SAFETY: the CAS just unlinked the old chain.
                let old = unsafe { retire_chain(head_ptr, &guard) };
                self.mem.fetch_add(mem - old as i64, Ordering::Relaxed);
            }
        }
        if self.mem.load(Ordering::Relaxed) > self.capacity as i64 {
            self.needs_checkpoint.store(true, Ordering::Relaxed);
        }
    }

    /// A page became clean (loaded, or its image published): eviction may find work again.
    fn note_clean(&self) {
        self.barren.store(0, Ordering::Relaxed);
    }

    /// Evicts until the cache is under capacity or one full sweep found nothing more.
    pub fn evict_to_capacity(&self) {
        let sweeps = self.next_pid() as usize / EVICT_SCAN_BUDGET + 2;
        for _ in 0..sweeps {
            if self.mem.load(Ordering::Relaxed) <= self.capacity as i64 {
                break;
            }
            self.maybe_evict(0);
        }
    }

    /// Captures the images of `pids` for a checkpoint cut at `cut_ts` (caller holds every
    /// tree's structure lock). Versions above the cut are left out (the WAL replays them).
    /// Fails with the pages that must be loaded first.
    #[allow(clippy::type_complexity)]
    pub fn capture(
        &self,
        pids: &FxHashSet<Pid>,
        cut_ts: u64,
        horizon: u64,
    ) -> std::result::Result<(Vec<Captured>, Vec<PendingBlob>), Vec<Pid>> {
        assert!(horizon <= cut_ts);
        let guard = epoch::pin();
        let mut out = Vec::with_capacity(pids.len());
        let mut blobs: Vec<PendingBlob> = Vec::new();
        let mut blob_ids: FxHashMap<*const BlobCell, u64> = FxHashMap::default();
        let mut unloaded = Vec::new();
        let mut sorted: Vec<Pid> = pids.iter().copied().collect();
        sorted.sort_unstable();
        for pid in sorted {
            let Some(v) = ChainView::load(self, pid, &guard) else { continue };
            let mut image = Vec::new();
            let mut complete = true;
            match &v.bottom.kind {
                NodeKind::Inner(i) => page::encode_inner(i, &mut image),
                NodeKind::Leaf(base) => {
                    let mut merged = merge_leaf(&v.deltas, base, horizon);
                    for e in &mut merged.entries {
                        let before = e.versions.len();
                        e.versions.retain(|x| x.ts <= cut_ts);
                        complete &= before == e.versions.len();
                    }
                    merged.entries.retain(|e| !e.versions.is_empty());
                    page::encode_leaf(&merged, &mut image, &mut |cell| {
                        let a = cell.addr();
                        if a != 0 {
                            return a;
                        }
                        *blob_ids.entry(Arc::as_ptr(cell)).or_insert_with(|| {
                            let addr = self.store.alloc_addr();
                            blobs.push(PendingBlob { cell: cell.clone(), addr });
                            addr
                        })
                    });
                }
                NodeKind::Disk { .. } if v.deltas.is_empty() => {
                    let addr = self.table.slot(pid).meta.lock().addr;
                    assert!(addr != 0, "an unloaded page has an address");
                    out.push(Captured {
                        pid,
                        seq: v.head_node.seq,
                        image: Bytes::new(),
                        complete: true,
                        copy_from: addr,
                        freed: false,
                    });
                    continue;
                }
                NodeKind::Disk { .. } => {
                    unloaded.push(pid);
                    continue;
                }
                NodeKind::Forward { .. } => {
                    let c = Captured {
                        pid,
                        seq: v.head_node.seq,
                        image: Bytes::new(),
                        complete: true,
                        copy_from: 0,
                        freed: true,
                    };
                    out.push(c);
                    continue;
                }
                NodeKind::Upsert { .. } => unreachable!(),
            }
            out.push(Captured {
                pid,
                seq: v.head_node.seq,
                image: Bytes::from(image),
                complete,
                copy_from: 0,
                freed: false,
            });
        }
        if !unloaded.is_empty() {
            return Err(unloaded);
        }
        Ok((out, blobs))
    }

    /// After a checkpoint is durable: points each captured page at its new image (a page
    /// becomes evictable when its image holds its whole chain and the chain has not changed
    /// since), keeps pages with versions above the cut dirty, and returns the addresses the
    /// new images replaced.
    pub fn publish(&self, pages: &[(Captured, u64, u32)], cut_ts: u64) -> Vec<u64> {
        // Invariant 5: raised before any meta below makes a page evictable.
        self.disk_ts.fetch_max(cut_ts, Ordering::SeqCst);
        let mut old = Vec::with_capacity(pages.len());
        for (c, addr, len) in pages {
            let slot = self.table.slot(c.pid);
            {
                let mut meta = slot.meta.lock();
                if meta.addr != 0 {
                    old.push(meta.addr);
                }
                *meta = crate::tree::mapping::SlotMeta {
                    addr: *addr,
                    len: *len,
                    flushed_seq: if c.complete && !c.freed { c.seq } else { 0 },
                };
            }
            if !c.complete {
                self.mark_dirty(c.pid);
            }
        }
        self.note_clean();
        old
    }

    /// Marks dirty every page whose published image lies in one of `files` (GC: the next
    /// checkpoint rewrites them elsewhere, after which nothing points into those files).
    /// Returns how many pages were marked.
    pub fn mark_files_dirty(&self, files: &FxHashSet<u64>) -> usize {
        let mut pids = Vec::new();
        for pid in 1..self.next_pid() {
            let Some(slot) = self.table.try_slot(pid) else { continue };
            let addr = slot.meta.lock().addr;
            if addr != 0 && self.store.file_of(addr).is_some_and(|id| files.contains(&id)) {
                pids.push(pid);
            }
        }
        let n = pids.len();
        self.restore_dirty(pids);
        n
    }

    /// Where a page's image is: (address, length), if published.
    pub fn page_loc(&self, pid: Pid) -> Option<(u64, u32)> {
        let m = *self.table.try_slot(pid)?.meta.lock();
        (m.addr != 0).then_some((m.addr, m.len))
    }

    /// Reads a value, fetching a blob from disk when it is not in memory.
    pub async fn resolve(&self, v: &Value) -> Result<Option<Bytes>> {
        match v {
            Value::Tombstone => Ok(None),
            Value::Inline(b) => Ok(Some(b.clone())),
            Value::Blob(c) => match &c.bytes {
                Some(b) => Ok(Some(b.clone())),
                None => {
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
            },
        }
    }
}
