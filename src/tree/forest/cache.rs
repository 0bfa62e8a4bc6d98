//! The page cache of the forest: loading an evicted page (one read of its image shared by
//! every concurrent loader), the CLOCK reference bits, and eviction of clean leaves past
//! `cache_capacity` (forest invariants 1, 2 and 4).

use super::{
    epoch, merge_leaf, page, retire_chain, Arc, ChainView, Error, Forest, FutureExt, LoadedImage, Node,
    NodeKind, Ordering, Owned, PageImage, Pid, Result, EVICT_SCAN_BUDGET,
};

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
    async fn read_image(&self, addr: u64) -> Result<Arc<LoadedImage>> {
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
        self.install_loaded(pid, stub_seq, addr, &loaded)
    }

    /// Puts the image `loaded` (read from `addr`) in place of the disk stub of `pid` made at
    /// `stub_seq`, folding in the blind deltas above the stub; nothing to do if another
    /// loader did it first. Retries a lost CAS (a delta landed meanwhile), boundedly.
    fn install_loaded(&self, pid: Pid, stub_seq: u64, addr: u64, loaded: &LoadedImage) -> Result<()> {
        let (img, file, offset) = loaded;
        let horizon = self.horizon();
        for _ in 0..1000 {
            let guard = epoch::pin();
            let v = ChainView::load(self, pid, &guard).ok_or_else(|| self.dangling(pid))?;
            if !matches!(v.bottom.kind, NodeKind::Disk { .. }) || v.bottom.seq != stub_seq {
                return Ok(()); // loaded by someone else
            }
            let kind = match &img {
                PageImage::Leaf(l) if v.depth() == 0 => NodeKind::Leaf(l.clone()),
                PageImage::Leaf(l) => NodeKind::Leaf(merge_leaf(&v.delta_vec(), l, horizon)),
                PageImage::Inner(i) if v.depth() == 0 => NodeKind::Inner(i.clone()),
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
            let mem = node.mem;
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
                    self.note_clean();
                }
                drop(meta);
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

    /// Evicts clean leaves (CLOCK) while the cache is over capacity. Each call scans at
    /// most [`EVICT_SCAN_BUDGET`] slots, so a cache full of dirty pages costs a bounded
    /// amount per call; then a checkpoint is requested, which makes pages clean again.
    ///
    /// `keep` (0 for none) is the page the caller just loaded or wrote: it is never evicted
    /// by its own operation, and one call never sweeps more than once round the table, so a
    /// page whose reference bit is set survives the call: a reader always gets to read the
    /// page it loaded, even when nothing else in the cache is clean.
    pub fn maybe_evict(&self, keep: Pid) {
        if self.mem_used() <= self.capacity_i64() {
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
        let target = self.capacity_i64().saturating_mul(9) / 10;
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
        if self.mem_used() > self.capacity_i64() {
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
        let NodeKind::Leaf(l) = &v.bottom.kind else { return };
        if v.head_node.seq != meta.flushed_seq {
            return;
        }
        if referenced {
            // A clean leaf read since the last sweep: it may go in the next one.
            self.barren.store(0, Ordering::Relaxed);
            return;
        }
        let stub =
            Node::base(v.head_node.seq + 1, NodeKind::Disk { addr: meta.addr, bounds: Some(l.bounds.detached()) });
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

    /// Evicts until the cache is under capacity or one full sweep found nothing more.
    pub fn evict_to_capacity(&self) {
        let sweeps = usize::try_from(self.next_pid()).unwrap_or(usize::MAX) / EVICT_SCAN_BUDGET + 2;
        for _ in 0..sweeps {
            if self.mem_used() <= self.capacity_i64() {
                break;
            }
            self.maybe_evict(0);
        }
    }
}
