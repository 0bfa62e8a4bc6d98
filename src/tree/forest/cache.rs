//! The page cache of the forest: loading an evicted page (one read of its image shared by
//! every concurrent loader), the CLOCK reference bits, and eviction of clean leaves past
//! `cache_capacity` less the page table (forest invariants 1, 2, 4 and 7).

use super::{
    epoch, merge_leaf, page, retire_chain, Arc, ChainView, Error, Forest, FutureExt, LoadedImage, Node,
    NodeKind, Ordering, Owned, PageImage, Pid, Result, EVICT_SCAN_BUDGET,
};
use crate::tree::mapping::SlotMeta;
use crate::limits::LOAD_DEPTH;

/// A page read by [`Forest::read_chain`]: its image, the cut of its newest delta frame (0
/// for a base) and the blob references of its frames.
type Loaded = (Arc<LoadedImage>, u64, Vec<u64>);

/// Removes a read from [`Forest::inflight`] when its reader goes ([`Forest::read_image`]'s
/// invariant): a finished read always; a cancelled one when no other reader holds it (the
/// map's clone is then the last, and dropping it drops the read).
struct Unshare<'a> {
    inflight: &'a parking_lot::Mutex<rustc_hash::FxHashMap<u64, super::SharedLoad>>,
    addr: u64,
    done: bool,
}

impl Drop for Unshare<'_> {
    fn drop(&mut self) {
        let mut m = self.inflight.lock();
        // `strong_count` is `None` once the read completed (its result is kept by whoever
        // polled it to the end): nobody needs the entry then either.
        let orphan = m.get(&self.addr).is_some_and(|f| f.strong_count().is_none_or(|n| n <= 1));
        let gone = (self.done || orphan).then(|| m.remove(&self.addr));
        // An orphan's read is dropped outside the lock.
        drop(m);
        drop(gone);
    }
}

impl Forest {
    /// Sets the page's CLOCK bit.
    pub fn touch(&self, pid: Pid) {
        let slot = self.table.slot(pid);
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// Reads and decodes the page image at `addr`; concurrent readers of one address share
    /// one read (the future is shared, so a dropped reader does not stall the others).
    ///
    /// Invariant: an entry of `inflight` has a reader awaiting it. The last reader to go,
    /// done or dropped, removes it ([`Unshare`]): a read no one polls must not stay in the
    /// map, since what it holds (a file's one-time table load, the permit of its
    /// `OnceCell`) would stall every other read of that file, and nothing would poll it.
    async fn read_image(&self, addr: u64) -> Result<Arc<LoadedImage>> {
        // Declared before the future, so dropped after it when this read is cancelled.
        let mut unshare = Unshare { inflight: &self.inflight, addr, done: false };
        let fut = {
            let mut m = self.inflight.lock();
            if let Some(f) = m.get(&addr) {
                f.clone()
            } else {
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
        };
        let r = fut.await;
        unshare.done = true;
        r
    }

    /// Loads page `pid` from disk if its chain ends in a disk stub, folding blind deltas in.
    /// A page written as delta frames has all its frames read at once (the slot knows
    /// them) and merged over its base.
    pub async fn load(&self, pid: Pid) -> Result<()> {
        let (meta, stub_seq) = {
            let guard = epoch::pin();
            let v = ChainView::load(self, pid, &guard).ok_or_else(|| self.dangling(pid))?;
            match &v.bottom.kind {
                // Read the slot's current address, not the stub's: a checkpoint may have
                // rewritten the page (GC) after the stub was made, to an identical image,
                // and the stub's old file may be gone.
                NodeKind::Disk { .. } => (self.table.slot(pid).meta.lock().clone(), v.bottom.seq),
                _ => return Ok(()),
            }
        };
        if meta.addr == 0 {
            return Err(self.dangling(pid));
        }
        let loaded = match self.read_chain(&meta).await {
            Ok(l) => l,
            // A checkpoint may have moved the page (GC) and deleted its old file while we
            // were reading: retry at the new address; any other failure is the answer.
            Err(e) => {
                let moved = self.table.slot(pid).meta.lock().addr != meta.addr;
                if moved {
                    return Box::pin(self.load(pid)).await;
                }
                return Err(e);
            }
        };
        self.install_loaded(pid, stub_seq, meta.addr, &loaded)
    }

    /// [`Forest::load`] for a page about to be written (by a commit, or by a checkpoint as a
    /// base): the page loaded is marked dirty and kept from eviction until a checkpoint
    /// publishes it (its `flushed_seq` is cleared), so that the loads of the next pages
    /// cannot evict it again before the write; an unchanged chain GC moves, or a leaf a
    /// commit loads to split it, would otherwise load clean and go first.
    pub async fn load_to_write(&self, pid: Pid) -> Result<()> {
        self.load(pid).await?;
        let guard = epoch::pin();
        if let Some(v) = ChainView::load(self, pid, &guard) {
            if !matches!(v.bottom.kind, NodeKind::Disk { .. }) {
                self.mark_dirty(pid);
                self.table.slot(pid).meta.lock().flushed_seq = 0;
            }
        }
        Ok(())
    }

    /// [`Forest::load_to_write`] for each page of `pids`, [`LOAD_DEPTH`] reads in flight:
    /// blind writes spread over a tree larger than the cache leave one evicted page per
    /// write to fold in (a checkpoint's loads, a commit's leaves past their blind-write
    /// room); one at a time, each would wait a device round trip. Returns how many.
    pub async fn load_all_to_write(&self, pids: Vec<Pid>) -> Result<usize> {
        use futures::{StreamExt, TryStreamExt};
        let n = pids.len();
        futures::stream::iter(pids).map(|pid| self.load_to_write(pid)).buffer_unordered(LOAD_DEPTH).try_collect::<()>().await?;
        Ok(n)
    }

    /// Loads pages that are on disk only (disk stubs) into the cache, in the order of their
    /// addresses, [`LOAD_DEPTH`] reads in flight, until the pages in memory take half their
    /// room ([`Forest::page_room`]) or no such page is left; `stop` is asked before each
    /// read. Pages load clean (eviction takes them like any other). Returns how many pages
    /// it went through (loaded by it, or by a reader first).
    pub async fn warm(&self, stop: &(dyn Fn() -> bool + Send + Sync)) -> Result<usize> {
        use futures::{StreamExt, TryStreamExt};
        let full = || self.mem_used() >= self.page_room() / 2;
        // At most one candidate per KiB of the room it may fill (pages are larger), so the
        // list stays small beside the cache it fills.
        let most = usize::try_from(self.page_room() / 2 / 1024).unwrap_or(0);
        let mut on_disk = Vec::new();
        {
            let guard = epoch::pin();
            for pid in 1..self.next_pid() {
                if on_disk.len() >= most {
                    break;
                }
                let Some(slot) = self.table.try_slot(pid) else { continue };
                let stub = ChainView::load(self, pid, &guard).is_some_and(|v| matches!(v.bottom.kind, NodeKind::Disk { .. }));
                if !stub {
                    continue;
                }
                let addr = slot.meta.lock().addr;
                if addr != 0 {
                    on_disk.push((addr, pid));
                }
            }
        }
        on_disk.sort_unstable();
        // Asked before each read starts: at most `LOAD_DEPTH` reads pass the bound.
        futures::stream::iter(on_disk)
            .take_while(|_| futures::future::ready(!full() && !stop()))
            .map(|(_, pid)| self.load(pid))
            .buffer_unordered(LOAD_DEPTH)
            .try_fold(0, |n, ()| futures::future::ready(Ok(n + 1)))
            .await
    }

    /// The blob references of the frames of page `pid`'s image on disk: the slot's when it
    /// knows them, else read from the frames (the page is not loaded).
    pub async fn blob_refs_of(&self, pid: Pid) -> Result<Vec<u64>> {
        let meta = self.table.slot(pid).meta.lock().clone();
        if let Some(r) = meta.blob_refs() {
            return Ok(r.to_vec());
        }
        Ok(self.read_chain(&meta).await?.2)
    }

    /// [`Forest::blob_refs_of`] for each page of `pids`, [`LOAD_DEPTH`] reads in flight:
    /// every reference (with repeats) for which `keep` holds.
    pub async fn blob_refs_of_pages(&self, pids: Vec<Pid>, keep: impl Fn(&u64) -> bool) -> Result<Vec<u64>> {
        use futures::StreamExt;
        let mut out = Vec::new();
        let mut reads = futures::stream::iter(pids).map(|pid| self.blob_refs_of(pid)).buffer_unordered(LOAD_DEPTH);
        while let Some(refs) = reads.next().await {
            out.extend(refs?.into_iter().filter(|a| keep(a)));
        }
        Ok(out)
    }

    /// Reads the image `meta` names: its one frame, or every frame of its chain at once,
    /// merged. Returns the image, the cut its newest frame was written at, for a chain
    /// (0 for one frame): the blind deltas in memory at or below that cut are in the image,
    /// and the blob references of the frames read (`SlotMeta::blobs`).
    async fn read_chain(&self, meta: &SlotMeta) -> Result<Loaded> {
        let blobs_exist = self.store.has_blob_files();
        let no_cell = &mut |_: &Arc<crate::tree::node::BlobCell>| unreachable!("a page read holds no cell");
        let mut blob_refs = Vec::new();
        let Some(links) = &meta.links else {
            let img = self.read_image(meta.addr).await?;
            match &img.0 {
                PageImage::Delta(_) => {
                    return Err(Error::corruption(&img.1, img.2, "a page without links is a delta frame"));
                }
                PageImage::Leaf(l) if blobs_exist => l.page.blob_refs(no_cell, &mut blob_refs),
                PageImage::Leaf(_) | PageImage::Inner(_) => {}
            }
            return Ok((img, 0, blob_refs));
        };
        let frames: Vec<Arc<LoadedImage>> =
            futures::future::try_join_all(meta.frames().map(|a| self.read_image(a))).await?;
        let (base, deltas) = frames.split_last().expect("a chain has a head and links");
        let PageImage::Leaf(base_leaf) = &base.0 else {
            return Err(Error::corruption(&base.1, base.2, "the base of a chain of delta frames is not a leaf"));
        };
        if blobs_exist {
            base_leaf.page.blob_refs(no_cell, &mut blob_refs);
        }
        let mut versions = Vec::new();
        let mut head_cut = 0;
        for (i, f) in deltas.iter().enumerate() {
            let PageImage::Delta(d) = &f.0 else {
                return Err(Error::corruption(&f.1, f.2, "a frame of a chain is not a delta frame"));
            };
            if d.links[..] != links[i..] {
                return Err(Error::corruption(&f.1, f.2, "a delta frame links to frames its page does not"));
            }
            if i == 0 {
                head_cut = d.cut;
            }
            if blobs_exist {
                d.leaf.page.blob_refs(no_cell, &mut blob_refs);
            }
            for e in d.leaf.entries() {
                if e.key < base_leaf.bounds.low || base_leaf.bounds.is_right_of(&e.key) {
                    return Err(Error::corruption(&f.1, f.2, "a delta frame holds a key outside its page"));
                }
                versions.extend(e.versions.into_iter().map(|v| (e.key.clone(), v)));
            }
        }
        let refs: Vec<_> = versions.iter().map(|(k, v)| (k, v)).collect();
        let merged = merge_leaf(&refs, base_leaf, self.horizon());
        let (_, file, offset) = &*frames[0];
        Ok((Arc::new((PageImage::Leaf(merged), file.clone(), *offset)), head_cut, blob_refs))
    }

    /// Puts the image `loaded` (read from `addr`) in place of the disk stub of `pid` made at
    /// `stub_seq`, folding in the blind deltas above the stub (those above `since`, the cut
    /// of the image's newest delta frame: the rest are in the image); nothing to do if
    /// another loader did it first. Retries a lost CAS (a delta landed meanwhile), boundedly.
    /// The slot learns the blob references of the frames read, if its image is still the
    /// one read (`SlotMeta::blobs`; a frame's bytes never change, so the same address is
    /// the same chain).
    fn install_loaded(&self, pid: Pid, stub_seq: u64, addr: u64, loaded: &Loaded) -> Result<()> {
        let ((img, file, offset), since) = (&*loaded.0, loaded.1);
        {
            let mut meta = self.table.slot(pid).meta.lock();
            if meta.addr == addr && meta.blobs.is_none() {
                let blobs = crate::tree::mapping::blob_refs_arc(&loaded.2);
                self.table.update_meta(&mut meta, |m| m.blobs = Some(blobs));
            }
        }
        let horizon = self.horizon();
        for _ in 0..1000 {
            let guard = epoch::pin();
            let v = ChainView::load(self, pid, &guard).ok_or_else(|| self.dangling(pid))?;
            if !matches!(v.bottom.kind, NodeKind::Disk { .. }) || v.bottom.seq != stub_seq {
                return Ok(()); // loaded by someone else
            }
            let kind = match &img {
                PageImage::Leaf(l) if v.depth() == 0 => NodeKind::Leaf(l.clone()),
                PageImage::Leaf(l) => {
                    let deltas: Vec<_> = v.deltas().filter(|(_, ver)| ver.ts > since).collect();
                    NodeKind::Leaf(merge_leaf(&deltas, l, horizon))
                }
                PageImage::Inner(i) if v.depth() == 0 => NodeKind::Inner(i.clone()),
                PageImage::Inner(_) => {
                    return Err(Error::corruption(
                        file,
                        *offset,
                        "page image is an index node but leaf writes reached it",
                    ));
                }
                PageImage::Delta(_) => unreachable!("read_chain merges delta frames"),
            };
            let node = Node::base(v.head_node.seq + 1, kind);
            let (new_seq, mem, size) = (node.seq, node.mem, node.bytes as usize);
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
                if v.depth() == 0 {
                    meta.flushed_seq = new_seq;
                    meta.base_seq = new_seq;
                    self.note_clean();
                } else {
                    meta.base_seq = 0;
                }
                drop(meta);
                if v.depth() > 0 {
                    // The blind writes are folded into a base now: so goes the next capture.
                    self.charge_as_base(pid, size);
                }
                // SAFETY: the CAS just unlinked the old chain.
                let old = unsafe { retire_chain(v.head, &guard) };
                self.swap_mem(mem, false, old);
                slot.referenced.store(true, Ordering::Relaxed);
                self.maybe_evict(pid);
                return Ok(());
            }
        }
        Err(Error::internal(format!("the load of page {pid} (address {addr}) lost every race")))
    }

    /// Evicts clean leaves (CLOCK) while the cache is past its room ([`Forest::page_room`]:
    /// the capacity less the page table, invariant 7). Each call scans at
    /// most [`EVICT_SCAN_BUDGET`] slots, so a cache full of dirty pages costs a bounded
    /// amount per call; then a checkpoint is requested, which makes pages clean again.
    ///
    /// `keep` (0 for none) is the page the caller just loaded or wrote: it is never evicted
    /// by its own operation, and one call never sweeps more than once round the table, so a
    /// page whose reference bit is set survives the call: a reader always gets to read the
    /// page it loaded, even when nothing else in the cache is clean.
    pub fn maybe_evict(&self, keep: Pid) {
        if self.mem_used() <= self.page_room() {
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
        let target = self.page_room().saturating_mul(9) / 10;
        let guard = epoch::pin();
        for _ in 0..EVICT_SCAN_BUDGET.min(usize::try_from(limit).unwrap_or(usize::MAX)) {
            if self.mem_used() <= target {
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
            self.try_evict(pid, &guard);
        }
        if self.mem_used() > self.page_room() {
            self.needs_checkpoint.store(true, Ordering::Relaxed);
        }
    }

    /// One step of the CLOCK sweep at `pid`: clears its reference bit, and replaces it with
    /// a disk stub if it is a clean leaf that was not referenced since the last sweep.
    fn try_evict(&self, pid: Pid, guard: &epoch::Guard) {
        let Some(slot) = self.table.try_slot(pid) else { return };
        let referenced = slot.referenced.swap(false, Ordering::Relaxed);
        let meta = slot.meta.lock();
        if meta.addr == 0 || meta.flushed_seq == 0 {
            return;
        }
        // SAFETY: a non-null head loaded under `guard` stays allocated until the guard
        // is dropped (chains are only freed through `defer_destroy`).
        let Some(head) = (unsafe { slot.head.load(Ordering::Acquire, guard).as_ref() }) else {
            return;
        };
        if meta.flushed_seq != head.seq {
            return; // written since its image: dirty (checked before walking the chain)
        }
        let Some(v) = ChainView::load(self, pid, guard) else { return };
        // A leaf, or blind writes over a stub that a delta frame holds (bounds known).
        let bounds = match &v.bottom.kind {
            NodeKind::Leaf(l) => l.bounds.detached(),
            NodeKind::Disk { bounds: Some(b), .. } if v.depth() > 0 => b.clone(),
            _ => return,
        };
        if v.head_node.seq != meta.flushed_seq {
            return;
        }
        if referenced {
            // A clean leaf read since the last sweep: it may go in the next one.
            self.barren.store(0, Ordering::Relaxed);
            return;
        }
        let mut stub = Node::base(v.head_node.seq + 1, NodeKind::Disk { addr: meta.addr, bounds: Some(bounds) });
        // The leaf's size as the chain counted it (its image: the stub stands for it), from
        // which blind writes keep counting (`Tree::written_after`).
        stub.bytes = v.head_node.bytes;
        let mem = stub.mem;
        let head_ptr = v.head;
        if slot.head.compare_exchange(head_ptr, Owned::new(stub), Ordering::AcqRel, Ordering::Acquire, guard).is_ok() {
            drop(meta);
            self.barren.store(0, Ordering::Relaxed);
            // SAFETY: the CAS just unlinked the old chain.
            let old = unsafe { retire_chain(head_ptr, guard) };
            self.swap_mem(mem, true, old);
        }
    }

    /// A page became clean (loaded, or its image published): eviction may find work again.
    pub(super) fn note_clean(&self) {
        self.barren.store(0, Ordering::Relaxed);
    }

    /// Evicts until the cache is within its room (invariant 7) or one full sweep found
    /// nothing more.
    pub fn evict_to_capacity(&self) {
        let sweeps = usize::try_from(self.next_pid()).unwrap_or(usize::MAX) / EVICT_SCAN_BUDGET + 2;
        for _ in 0..sweeps {
            if self.mem_used() <= self.page_room() {
                break;
            }
            self.maybe_evict(0);
        }
    }
}
