//! The forest's side of a checkpoint: capturing the images of the sealed dirty pages at the
//! cut, publishing their new addresses (forest invariants 1 and 5), and GC's marking of the
//! pages of sparse files.

use super::{
    epoch, page, Arc, BlobCell, Bytes, Captured, ChainView, Forest, FxHashMap, FxHashSet,
    NodeKind, Ordering, PendingBlob, Pid,
};
use crate::tree::merge_leaf_at;
use crate::tree::node::LeafBase;

/// A checkpoint's cut as its capture sees it: the timestamp, the GC horizon at or below it,
/// and the guard the captured chains are read under.
struct CutAt<'g> {
    cut_ts: u64,
    horizon: u64,
    guard: &'g epoch::Guard,
}

impl Forest {
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
            let seq = v.head_node.seq;
            let c = match &v.bottom.kind {
                NodeKind::Inner(i) => {
                    let mut image = Vec::new();
                    page::encode_inner(i, &mut image);
                    Captured { pid, seq, image: Bytes::from(image), complete: true, copy_from: 0, freed: false }
                }
                NodeKind::Leaf(base) => {
                    let cut = CutAt { cut_ts, horizon, guard: &guard };
                    let (image, complete, seq) = self.capture_leaf(&v, pid, base, &cut, &mut blob_ids, &mut blobs);
                    Captured { pid, seq, image, complete, copy_from: 0, freed: false }
                }
                NodeKind::Disk { .. } if v.depth() == 0 => {
                    let addr = self.table.slot(pid).meta.lock().addr;
                    assert!(addr != 0, "an unloaded page has an address");
                    Captured { pid, seq, image: Bytes::new(), complete: true, copy_from: addr, freed: false }
                }
                NodeKind::Disk { .. } => {
                    unloaded.push(pid);
                    continue;
                }
                NodeKind::Forward { .. } => {
                    Captured { pid, seq, image: Bytes::new(), complete: true, copy_from: 0, freed: true }
                }
                NodeKind::Upsert { .. } => unreachable!(),
            };
            out.push(c);
        }
        if !unloaded.is_empty() {
            return Err(unloaded);
        }
        Ok((out, blobs))
    }

    /// The image of leaf `base` under the deltas of `v` at the cut; a
    /// blob value not yet on disk gets an address (once per cell, remembered in `blob_ids`)
    /// and joins `blobs`. Returns the image, whether it holds every version (none above the
    /// cut was left out), and the `seq` of the chain it holds.
    ///
    /// A complete image of a chain with deltas and without in-memory blobs is also the page
    /// consolidated: it replaces the chain (the frame then shares the page's bytes, and the
    /// deltas' memory is freed), so a page a checkpoint wrote holds one page in memory, not
    /// a chain beside a copy of its image. If a concurrent write wins the race, the chain
    /// stays and the image is of the chain as loaded.
    fn capture_leaf(
        &self,
        v: &ChainView<'_>,
        pid: Pid,
        base: &LeafBase,
        cut: &CutAt<'_>,
        blob_ids: &mut FxHashMap<*const BlobCell, u64>,
        blobs: &mut Vec<PendingBlob>,
    ) -> (Bytes, bool, u64) {
        let (merged, complete) = merge_leaf_at(&v.delta_vec(), base, cut.horizon, cut.cut_ts);
        let seq = v.head_node.seq;
        if !merged.page.has_cells() {
            let image = merged.page.bytes().clone();
            if complete
                && v.depth() != 0
                && self.replace_sealed(pid, v.head, seq, NodeKind::Leaf(merged), cut.guard)
            {
                return (image, true, seq + 1);
            }
            return (image, complete, seq);
        }
        let mut image = Vec::new();
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
        (Bytes::from(image), complete, seq)
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
}
