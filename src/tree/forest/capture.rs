//! The forest's side of a checkpoint: capturing the images of the sealed dirty pages at the
//! cut (a base, or a delta frame linked to the page's frames on disk,
//! `tree::page::DeltaImage`: for blind writes over an evicted leaf, and for the deltas of a
//! leaf in memory whose base is its image on disk, `SlotMeta::base_seq`), publishing their new addresses (forest
//! invariants 1 and 5), and GC's marking of the pages of sparse files (every frame of a
//! page's chain counts: GC moves a chain as a whole, as a base).

use super::{
    epoch, page, Arc, BlobCell, Bytes, Captured, ChainView, Forest, FxHashMap, FxHashSet,
    NodeKind, Ordering, PendingBlob, Pid,
};
use crate::limits::{DELTA_BASE_RATIO, FRAMED_CONSOLIDATE_DEPTH, MAX_DELTA_FRAMES};
use crate::tree::leaf::LeafBuilder;
use crate::tree::merge_leaf_at;
use crate::store::Store;
use crate::tree::node::{Bounds, LeafBase};

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
    /// `since` is the previous checkpoint's cut: every version at or below it is in the
    /// pages' images on disk already, so a delta frame holds only those above it.
    /// Fails with the pages that must be loaded first.
    #[allow(clippy::type_complexity)]
    pub fn capture(
        &self,
        pids: &FxHashSet<Pid>,
        cut_ts: u64,
        horizon: u64,
        since: u64,
    ) -> std::result::Result<(Vec<Captured>, Vec<PendingBlob>), Vec<Pid>> {
        assert!(horizon <= cut_ts && since <= cut_ts);
        let guard = epoch::pin();
        let mut out = Vec::with_capacity(pids.len());
        let mut blobs: Vec<PendingBlob> = Vec::new();
        let mut blob_ids: FxHashMap<*const BlobCell, u64> = FxHashMap::default();
        let mut unloaded = Vec::new();
        let mut consolidations = Vec::new();
        let mut sorted: Vec<Pid> = pids.iter().copied().collect();
        sorted.sort_unstable();
        for pid in sorted {
            let Some(v) = ChainView::load(self, pid, &guard) else { continue };
            let seq = v.head_node.seq;
            let cut = CutAt { cut_ts, horizon, guard: &guard };
            let consolidates = || self.table.slot(pid).meta.lock().links.is_some();
            let c = match &v.bottom.kind {
                NodeKind::Inner(i) => {
                    let mut image = Vec::new();
                    page::encode_inner(i, &mut image);
                    Captured::base(pid, seq, Bytes::from(image), true, 0)
                }
                NodeKind::Leaf(base) if v.depth() > 0 && self.deltas_over_image(pid, &v) => {
                    match self.capture_delta(&v, pid, &base.bounds, since, &cut, &mut blob_ids, &mut blobs) {
                        DeltaCapture::Frame(c) => {
                            consolidations.extend(framed_merge(&v, base, &c, &cut, out.len()));
                            c
                        }
                        DeltaCapture::Nothing => {
                            self.keep_dirty(pid, &v, cut_ts, true);
                            continue;
                        }
                        DeltaCapture::TooLarge => self.capture_base(&v, pid, base, &cut, &mut blob_ids, &mut blobs),
                    }
                }
                NodeKind::Leaf(base) => self.capture_base(&v, pid, base, &cut, &mut blob_ids, &mut blobs),
                NodeKind::Disk { .. } if self.capture_needs_load(pid, &v) => {
                    unloaded.push(pid);
                    continue;
                }
                NodeKind::Disk { .. } if v.depth() == 0 => {
                    let addr = self.table.slot(pid).meta.lock().addr;
                    assert!(addr != 0, "an unloaded page has an address");
                    Captured::base(pid, seq, Bytes::new(), true, addr)
                }
                NodeKind::Disk { bounds, .. } => {
                    let bounds = bounds.as_ref().expect("capture_needs_load: a stub with deltas has bounds");
                    match self.capture_delta(&v, pid, bounds, since, &cut, &mut blob_ids, &mut blobs) {
                        DeltaCapture::Frame(c) => c,
                        DeltaCapture::Nothing => {
                            self.keep_dirty(pid, &v, cut_ts, true);
                            continue;
                        }
                        DeltaCapture::TooLarge => {
                            unloaded.push(pid);
                            continue;
                        }
                    }
                }
                NodeKind::Forward { .. } => Captured {
                    freed: true,
                    consolidates: consolidates(),
                    ..Captured::base(pid, seq, Bytes::new(), true, 0)
                },
                NodeKind::Upsert { .. } => unreachable!(),
            };
            self.charge_captured(&c, &v, cut_ts);
            out.push(c);
        }
        if !unloaded.is_empty() {
            // Nothing consolidated yet: a retried cut must find the framed chains as they
            // were (a consolidated one would go out as a base, charged as a frame).
            return Err(unloaded);
        }
        for c in consolidations {
            if self.replace_sealed(c.pid, c.head, c.seq, NodeKind::Leaf(c.merged), &guard) {
                let framed = &mut out[c.at];
                framed.seq = c.seq + 1;
                framed.base_is_image = true;
            }
        }
        Ok((out, blobs))
    }

    /// What the capture `c` of chain `v` changes in the charges of the dirty set (forest
    /// invariant 6).
    fn charge_captured(&self, c: &Captured, v: &ChainView<'_>, cut_ts: u64) {
        if !matches!(&c.links, Some(l) if l.len() < MAX_DELTA_FRAMES) {
            // Once published, the page's next image is a base (`delta_next` says no more
            // than this): writes from now on are charged so, not as delta frames over the
            // chain the publish is about to replace.
            self.table.slot(c.pid).meta.lock().next_is_base = true;
        }
        if !c.complete {
            // Its versions above the cut lost their charge to the cut's drain: charged
            // again now, before the capture's images leave the dirty set's count.
            self.keep_dirty(c.pid, v, cut_ts, delta_next(c, v));
        }
    }

    /// Whether the deltas of chain `v` of `pid` (a leaf in memory) may go out as a delta
    /// frame: its base is what the image on disk holds (`SlotMeta::base_seq`), the chain on
    /// disk has room for one more delta frame and none of its frames is in a file GC is
    /// emptying.
    fn deltas_over_image(&self, pid: Pid, v: &ChainView<'_>) -> bool {
        let meta = self.table.slot(pid).meta.lock();
        meta.addr != 0
            && meta.base_seq == v.bottom.seq
            && meta.links.as_ref().map_or(0, |l| l.len()) < MAX_DELTA_FRAMES
            && !self.in_gc_files(&meta)
    }

    /// The capture of leaf `pid` as a base: the image of `base` under the deltas of `v` at
    /// the cut; a blob value not yet on disk gets an address (once per cell, remembered in
    /// `blob_ids`) and joins `blobs`.
    ///
    /// A complete image of a chain with deltas and without in-memory blobs is also the page
    /// consolidated: it replaces the chain (the frame then shares the page's bytes, and the
    /// deltas' memory is freed), so a page a checkpoint wrote holds one page in memory, not
    /// a chain beside a copy of its image, and that base is the image
    /// (`Captured::base_is_image`, as is a chain that was one base). If a concurrent write
    /// wins the race, the chain stays and the image is of the chain as loaded.
    fn capture_base(
        &self,
        v: &ChainView<'_>,
        pid: Pid,
        base: &LeafBase,
        cut: &CutAt<'_>,
        blob_ids: &mut FxHashMap<*const BlobCell, u64>,
        blobs: &mut Vec<PendingBlob>,
    ) -> Captured {
        let consolidates = self.table.slot(pid).meta.lock().links.is_some();
        let (merged, complete) = merge_leaf_at(&v.delta_vec(), base, cut.horizon, cut.cut_ts);
        let seq = v.head_node.seq;
        let captured = |image, seq, base_is_image| Captured {
            consolidates,
            base_is_image,
            ..Captured::base(pid, seq, image, complete, 0)
        };
        let with_refs = |c: Captured, refs| Captured { blob_refs: refs, ..c };
        if merged.page.has_cells() {
            let image = self.leaf_image(&merged, blob_ids, blobs);
            let refs = image_refs(&merged, blob_ids, &self.store);
            return with_refs(captured(image, seq, complete && v.depth() == 0), refs);
        }
        let image = merged.page.bytes().clone();
        let refs = image_refs(&merged, blob_ids, &self.store);
        if complete && v.depth() != 0 {
            if self.replace_sealed(pid, v.head, seq, NodeKind::Leaf(merged), cut.guard) {
                return with_refs(captured(image, seq + 1, true), refs);
            }
            return with_refs(captured(image, seq, false), refs);
        }
        with_refs(captured(image, seq, complete && v.depth() == 0), refs)
    }

    /// The delta frame of page `pid`, whose chain `v` is deltas over its image on disk
    /// (blind writes over a stub, or a leaf in memory whose base is that image): the
    /// versions above `since` and at or below the cut, linked to the page's frames on
    /// disk. [`DeltaCapture::Nothing`] when no version is in that range (every delta is
    /// above the cut: written after the cut's snapshot, before its drain), and
    /// [`DeltaCapture::TooLarge`] when the frame would be larger than `1 / DELTA_BASE_RATIO`
    /// of the base, which must be written (an evicted page loaded) instead.
    #[allow(clippy::too_many_arguments)]
    fn capture_delta(
        &self,
        v: &ChainView<'_>,
        pid: Pid,
        bounds: &Bounds,
        since: u64,
        cut: &CutAt<'_>,
        blob_ids: &mut FxHashMap<*const BlobCell, u64>,
        blobs: &mut Vec<PendingBlob>,
    ) -> DeltaCapture {
        let meta = self.table.slot(pid).meta.lock().clone();
        let base_len = meta.links.as_ref().and_then(|l| l.last()).map_or(meta.len, |b| b.1);
        let deltas: Vec<_> = v.deltas().filter(|(_, ver)| ver.ts > since).collect();
        let empty = LeafBase::from_page(LeafBuilder::new(bounds.low.clone(), bounds.high.clone(), bounds.right).finish());
        // Horizon 0: no trimming. A delta frame lies over older versions of its keys; a
        // tombstone trimmed away here would let them show again.
        let (merged, complete) = merge_leaf_at(&deltas, &empty, 0, cut.cut_ts);
        if merged.is_empty() {
            return DeltaCapture::Nothing;
        }
        if merged.page.len() * DELTA_BASE_RATIO > base_len as usize {
            return DeltaCapture::TooLarge;
        }
        let leaf = self.leaf_image(&merged, blob_ids, blobs);
        let blob_refs = image_refs(&merged, blob_ids, &self.store);
        let mut links = Vec::with_capacity(1 + meta.links.as_ref().map_or(0, |l| l.len()));
        links.push((meta.addr, meta.len));
        links.extend(meta.links.iter().flat_map(|l| l.iter().copied()));
        let mut image = Vec::new();
        page::encode_delta(cut.cut_ts, &links, &leaf, &mut image);
        DeltaCapture::Frame(Captured {
            links: Some(Arc::new(links)),
            blob_refs,
            ..Captured::base(pid, v.head_node.seq, Bytes::from(image), complete, 0)
        })
    }

    /// The bytes of leaf `leaf` as a frame: a blob value not yet on disk gets an address
    /// (once per cell, remembered in `blob_ids`) and joins `blobs`.
    fn leaf_image(
        &self,
        leaf: &LeafBase,
        blob_ids: &mut FxHashMap<*const BlobCell, u64>,
        blobs: &mut Vec<PendingBlob>,
    ) -> Bytes {
        if !leaf.page.has_cells() {
            return leaf.page.bytes().clone();
        }
        let mut image = Vec::new();
        page::encode_leaf(leaf, &mut image, &mut |cell| {
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
        Bytes::from(image)
    }

    /// The blob references of a capture: for each captured page GC of blob files must
    /// account for, the references its new image adds (`added`) and those of the frames it
    /// stops using (`released`: a base or a freed page replaces every frame of the chain; a
    /// delta frame and a copied frame release none); `unknown` counts the pages whose old
    /// frames' references are unknown (not read since open), which stay counted (a count
    /// may be too high, never too low). Read before `publish` changes the slots.
    pub fn blob_ref_changes<'a>(&self, pages: impl IntoIterator<Item = &'a Captured>) -> BlobRefChanges {
        let mut ch = BlobRefChanges::default();
        for c in pages {
            if c.copy_from != 0 {
                continue; // the same frame elsewhere: the same references
            }
            if c.freed || c.links.is_none() {
                match self.table.slot(c.pid).meta.lock().blob_refs() {
                    Some(r) => ch.released.extend_from_slice(r),
                    None => ch.unknown += 1,
                }
            }
            ch.added.extend_from_slice(&c.blob_refs);
        }
        ch
    }

    /// After a checkpoint is durable: points each captured page at its new image (a page
    /// becomes evictable when its image holds its whole chain and the chain has not changed
    /// since), keeps pages with versions above the cut dirty, and returns the addresses of
    /// the frames no page links to any more (those a base or a freed page replaced; a
    /// delta frame links to the frames before it, which stay).
    pub fn publish(&self, pages: &[(Captured, u64, u32)], cut_ts: u64) -> Vec<u64> {
        // Invariant 5: raised before any meta below makes a page evictable.
        self.disk_ts.fetch_max(cut_ts, Ordering::SeqCst);
        let mut old = Vec::with_capacity(pages.len());
        for (c, addr, len) in pages {
            let slot = self.table.slot(c.pid);
            {
                let mut meta = slot.meta.lock();
                if c.links.is_none() {
                    old.extend(meta.frames());
                }
                let base_seq = if c.base_is_image {
                    c.seq
                } else if c.links.is_some() {
                    meta.base_seq // a delta frame: the base under it is still the one on disk
                } else {
                    0
                };
                let blobs = if c.copy_from != 0 {
                    meta.blobs.clone() // the same frame, moved
                } else if c.links.is_some() {
                    meta.blob_refs().map(|old| {
                        if c.blob_refs.is_empty() {
                            crate::tree::mapping::blob_refs_arc(old)
                        } else {
                            old.iter().chain(&c.blob_refs).copied().collect()
                        }
                    })
                } else {
                    Some(crate::tree::mapping::blob_refs_arc(&c.blob_refs))
                };
                let new = crate::tree::mapping::SlotMeta {
                    addr: *addr,
                    len: *len,
                    flushed_seq: if c.complete && !c.freed { c.seq } else { 0 },
                    links: c.links.clone(),
                    base_seq,
                    blobs,
                    next_is_base: false,
                };
                self.table.update_meta(&mut meta, |m| *m = new);
            }
            if !c.freed && slot.dirty_gen.load(Ordering::Acquire) == self.dirty_gen.load(Ordering::SeqCst) {
                // Listed since the cut (taken in part, or written since): its writes were
                // charged by the page before this publish; charge it by what it is now.
                let guard = epoch::pin();
                if let Some(v) = ChainView::load(self, c.pid, &guard) {
                    self.keep_dirty(c.pid, &v, cut_ts, delta_next(c, &v));
                }
            }
            if c.links.is_some() {
                self.delta_frames.fetch_add(1, Ordering::Relaxed);
            }
            if c.consolidates {
                self.chains_consolidated.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.note_clean();
        old
    }

    /// Marks dirty the pages whose published image lies in one of `files`, at most `max`
    /// of them (GC: the next checkpoint rewrites them elsewhere; once none points into a
    /// file, it is dropped). Returns how many pages were marked.
    pub fn mark_files_dirty(&self, files: &FxHashSet<u64>, max: usize) -> usize {
        let mut pids = Vec::new();
        for pid in 1..self.next_pid() {
            if pids.len() >= max {
                break;
            }
            let Some(slot) = self.table.try_slot(pid) else { continue };
            if self.has_frame_in(&slot.meta.lock(), files) {
                pids.push(pid);
            }
        }
        let n = pids.len();
        self.gc_files.lock().clone_from(files);
        self.restore_dirty(pids);
        n
    }
}

/// The chain of the leaf captured as `c` (`v` over `base`, its image on disk) merged at the
/// cut, when the delta frame `c` holds every delta of it, the chain holds at least
/// `FRAMED_CONSOLIDATE_DEPTH` deltas and no blob is held in memory:
/// the merged leaf then holds what the page's frames on disk will hold once `c` is
/// published, and replaces the chain once the capture succeeds
/// ([`Consolidation`]), so the next delta frame goes over it and reads and scans walk
/// one base instead of up to `CONSOLIDATE_CHAIN_LEN` deltas (measured: W6, all scans,
/// ran at 0.62-0.81x when the deltas of framed leaves stayed in memory).
fn framed_merge<'g>(v: &ChainView<'g>, base: &LeafBase, c: &Captured, cut: &CutAt<'_>, at: usize) -> Option<Consolidation<'g>> {
    if !c.complete || v.depth() < FRAMED_CONSOLIDATE_DEPTH {
        return None;
    }
    let (merged, complete) = merge_leaf_at(&v.delta_vec(), base, cut.horizon, cut.cut_ts);
    (complete && !merged.page.has_cells()).then_some(Consolidation { at, pid: c.pid, head: v.head, seq: c.seq, merged })
}

/// A framed chain a successful capture replaces by its merge ([`framed_merge`]):
/// the delta frame at `out[at]` of page `pid`, whose head was `head` of `seq`. Made only
/// once no page is left to load, since a cut that is retried captures again what it finds.
/// Not made when a concurrent write wins the race (the CAS on `head` fails).
struct Consolidation<'g> {
    at: usize,
    pid: Pid,
    head: epoch::Shared<'g, super::Node>,
    seq: u64,
    merged: LeafBase,
}

/// What [`Forest::capture_delta`] made of a page.
enum DeltaCapture {
    /// Its delta frame.
    Frame(Captured),
    /// No version to write at this cut: its image on disk stands, the page stays dirty.
    Nothing,
    /// A frame too large next to the base: the page goes out as a base.
    TooLarge,
}

/// Whether the page captured as `c`, now holding chain `v`, goes out as a delta frame at the
/// next cut once `c` is published (forest invariant 6): a delta frame with room left in the
/// chain after it, or a complete image of a lone leaf base (its base is then the image on
/// disk); anything else leaves a chain whose next image is a base.
fn delta_next(c: &Captured, v: &ChainView<'_>) -> bool {
    match &c.links {
        Some(links) => links.len() < MAX_DELTA_FRAMES,
        None => c.base_is_image && matches!(v.bottom.kind, NodeKind::Leaf(_)) && v.bottom.seq == c.seq,
    }
}

/// What a checkpoint changes in the blob references of the page table
/// ([`Forest::blob_ref_changes`]).
#[derive(Debug, Default)]
pub struct BlobRefChanges {
    /// References the new images hold.
    pub added: Vec<u64>,
    /// References of the frames the new images replace.
    pub released: Vec<u64>,
    /// Pages whose replaced frames' references are unknown.
    pub unknown: usize,
}

/// The blob references of image `leaf`: a blob held in memory by the address it gets in
/// this capture (`blob_ids`).
fn image_refs(leaf: &LeafBase, blob_ids: &FxHashMap<*const BlobCell, u64>, store: &Store) -> Vec<u64> {
    let mut refs = Vec::new();
    if !leaf.page.has_cells() && !store.has_blob_files() {
        return refs; // no blob on disk, none in memory: nothing to look for
    }
    leaf.page.blob_refs(
        &mut |c| match c.addr() {
            0 => *blob_ids.get(&Arc::as_ptr(c)).expect("leaf_image gave every cell of the image an address"),
            a => a,
        },
        &mut refs,
    );
    refs
}
