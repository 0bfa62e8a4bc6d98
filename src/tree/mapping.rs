//! The mapping table: page id -> the head of the page's chain, plus flush metadata.
//!
//! Slots live in fixed chunks allocated on first use and never moved, so a `&Slot` stays
//! valid for the table's life without locks. The head is a `crossbeam_epoch::Atomic`:
//! readers load it under an epoch guard; writers change it only by compare-and-swap and
//! retire the chain they unlinked with `defer_destroy`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_epoch::{self as epoch, Atomic, Guard, Shared};
use parking_lot::Mutex;

use crate::limits::{MAPPING_CHUNKS, MAPPING_CHUNK_LEN};
use crate::tree::node::{Node, NodeKind, Pid};
use crate::tree::page::FrameRef;

/// Where the page's last published image is, and which chain state it equals.
#[derive(Debug, Default, Clone)]
pub struct SlotMeta {
    /// Logical address of the last published image (0 = never published): its base, or
    /// its newest delta frame.
    pub addr: u64,
    /// Its frame length.
    pub len: u32,
    /// `seq` of the chain head the image equals; 0 when no in-memory state equals it.
    pub flushed_seq: u64,
    /// For an image whose newest frame is a delta frame: the frames it links to, newest
    /// first, the base last (`tree::page::DeltaImage`). `None` for a base.
    pub links: Option<Arc<Vec<FrameRef>>>,
    /// `seq` of a leaf base in memory whose every version (at or above the horizon it was
    /// written at) is in the image on disk: the deltas above that base are the page's only
    /// versions not on disk, so a checkpoint may write them as a delta frame; 0 for none.
    pub base_seq: u64,
    /// The addresses of the blob values the frames of the image refer to, every version of
    /// every frame counted (`LeafPage::blob_refs`); `None` while unknown (a page not read
    /// since open). What GC of blob files counts (`engine::gc`); see [`SlotMeta::blob_refs`].
    pub blobs: Option<Arc<[u64]>>,
    /// A checkpoint captured this page in a way that leaves its next image a base once
    /// published (a delta frame that fills the chain on disk, or a base the chain in memory
    /// may not start from): until that publish replaces this metadata, writes charge the
    /// page as a base, what the next capture will write (forest invariant 6).
    pub next_is_base: bool,
}

/// `refs` as a slot keeps them ([`SlotMeta::blobs`]): no references share one empty
/// allocation, so the pages without blobs (most) cost no allocation.
pub fn blob_refs_arc(refs: &[u64]) -> Arc<[u64]> {
    static EMPTY: std::sync::LazyLock<Arc<[u64]>> = std::sync::LazyLock::new(|| Arc::from(&[][..]));
    if refs.is_empty() {
        EMPTY.clone()
    } else {
        Arc::from(refs)
    }
}

impl SlotMeta {
    /// Heap bytes this metadata holds beside its slot, as the allocator sizes them: its
    /// list of links and its blob references (the shared empty list costs nothing).
    pub fn heap_mem(&self) -> usize {
        use crate::tree::node::alloc_size;
        let links = self.links.as_ref().map_or(0, |l| {
            // The `Arc`'s block (two counts and the `Vec`) and the vector's buffer.
            alloc_size(2 * std::mem::size_of::<usize>() + std::mem::size_of::<Vec<FrameRef>>())
                + alloc_size(l.capacity() * std::mem::size_of::<FrameRef>())
        });
        let blobs = self
            .blobs
            .as_ref()
            .filter(|b| !b.is_empty())
            .map_or(0, |b| alloc_size(2 * std::mem::size_of::<usize>() + std::mem::size_of_val::<[u64]>(b)));
        links + blobs
    }

    /// The blob references of the page's frames on disk: `Some` when known (none for a page
    /// never published), `None` for a page whose frames were not read since open.
    pub fn blob_refs(&self) -> Option<&[u64]> {
        if self.addr == 0 {
            Some(&[])
        } else {
            self.blobs.as_deref()
        }
    }

    /// Every frame of the page's image: the newest, then its links.
    pub fn frames(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.addr).filter(|&a| a != 0).chain(self.links.iter().flat_map(|l| l.iter().map(|f| f.0)))
    }
}

/// One page's entry.
#[derive(Debug, Default)]
pub struct Slot {
    /// Head of the chain (null = unused page id).
    pub head: Atomic<Node>,
    /// Flush metadata (read and written together under this lock).
    pub meta: Mutex<SlotMeta>,
    /// CLOCK reference bit for eviction.
    pub referenced: AtomicBool,
    /// Bytes this page is charged against the dirty bound (`Forest::dirty_bytes`, forest
    /// invariant 6); 0 once a cut drained it.
    pub dirty_cost: AtomicU32,
    /// The dirty-set generation in which this page was last added to the dirty set
    /// (`Forest::mark_dirty`; 0 = never).
    pub dirty_gen: AtomicU64,
}

/// Page id -> slot.
pub struct MappingTable {
    chunks: Box<[OnceLock<Box<[Slot]>>]>,
    /// Chunks allocated so far (each counted once, by the initializer `OnceLock` runs
    /// once), so that [`MappingTable::mem`] costs no walk over the chunk array: the
    /// eviction check reads it on every write.
    allocated: AtomicUsize,
    /// The sum of [`SlotMeta::heap_mem`] over every slot, kept by
    /// [`MappingTable::update_meta`], the only way a slot's links and blob references
    /// change.
    side: AtomicUsize,
}

impl Default for MappingTable {
    fn default() -> Self {
        Self::new()
    }
}

impl MappingTable {
    /// An empty table.
    pub fn new() -> MappingTable {
        MappingTable { chunks: (0..MAPPING_CHUNKS).map(|_| OnceLock::new()).collect(), allocated: AtomicUsize::new(0), side: AtomicUsize::new(0) }
    }

    /// The slot of `pid` (allocating its chunk on first use).
    pub fn slot(&self, pid: Pid) -> &Slot {
        assert!(pid != 0, "page id 0 is never valid");
        // A pid past usize is past the table too (MAX_PAGES <= u32::MAX, limits.rs).
        let ix = usize::try_from(pid).unwrap_or(usize::MAX);
        let (c, i) = (ix / MAPPING_CHUNK_LEN, ix % MAPPING_CHUNK_LEN);
        assert!(c < MAPPING_CHUNKS, "page id {pid} beyond the mapping table");
        let chunk = self.chunks[c].get_or_init(|| {
            self.allocated.fetch_add(1, Ordering::Relaxed);
            (0..MAPPING_CHUNK_LEN).map(|_| Slot::default()).collect()
        });
        &chunk[i]
    }

    /// Heap bytes of the table itself: the chunk array, the chunks allocated so far, and
    /// what their slots' metadata holds beside them (links and blob references).
    pub fn mem(&self) -> usize {
        let chunk = crate::tree::node::alloc_size(MAPPING_CHUNK_LEN * std::mem::size_of::<Slot>());
        crate::tree::node::alloc_size(self.chunks.len() * std::mem::size_of::<OnceLock<Box<[Slot]>>>())
            + self.allocated.load(Ordering::Relaxed) * chunk
            + self.side.load(Ordering::Relaxed)
    }

    /// Changes a slot's metadata (`meta`, the guard of its lock) with `f`, keeping the
    /// table's count of what slots hold beside them ([`SlotMeta::heap_mem`]).
    pub fn update_meta<R>(&self, meta: &mut SlotMeta, f: impl FnOnce(&mut SlotMeta) -> R) -> R {
        let before = meta.heap_mem();
        let r = f(meta);
        let after = meta.heap_mem();
        if after >= before {
            self.side.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.side.fetch_sub(before - after, Ordering::Relaxed);
        }
        r
    }

    /// The slot of `pid` if its chunk exists.
    pub fn try_slot(&self, pid: Pid) -> Option<&Slot> {
        let ix = usize::try_from(pid).ok()?;
        self.chunks.get(ix / MAPPING_CHUNK_LEN)?.get().map(|chunk| &chunk[ix % MAPPING_CHUNK_LEN])
    }

    /// Loads the head of `pid`.
    pub fn head<'g>(&self, pid: Pid, guard: &'g Guard) -> Shared<'g, Node> {
        self.slot(pid).head.load(Ordering::Acquire, guard)
    }
}

/// The memory a retired chain held (`Node::mem` summed), and how much of it was a disk
/// stub's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retired {
    /// Every node's.
    pub mem: usize,
    /// The stub's, when the chain ended in one.
    pub stub: usize,
}

/// Retires every node of the chain starting at `head`, returning the memory it held.
///
/// # Safety
/// `head` must have just been unlinked from its slot by a successful compare-and-swap (or
/// never published), so that no thread can reach it any more except through a pin that
/// predates the unlink; epoch reclamation frees it once those pins are gone.
pub unsafe fn retire_chain(head: Shared<'_, Node>, guard: &Guard) -> Retired {
    let mut r = Retired::default();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the unlinked chain; the guard keeps it alive while we
        // read its `next` pointer.
        let node = unsafe { cur.deref() };
        r.mem += node.mem;
        if matches!(node.kind, NodeKind::Disk { .. }) {
            r.stub += node.mem;
        }
        let next = match &node.kind {
            NodeKind::Upsert { next, .. } => next.load(Ordering::Acquire, guard),
            _ => Shared::null(),
        };
        // SAFETY: the caller guarantees the chain is unreachable for new readers; each node
        // belongs to exactly one chain, so it is retired exactly once.
        unsafe { guard.defer_destroy(cur) };
        cur = next;
    }
    r
}

impl Drop for MappingTable {
    fn drop(&mut self) {
        // SAFETY: we have `&mut self`: no other thread can hold a reference into the table,
        // so an unprotected guard (whose `defer_destroy` frees at once) is enough to walk and
        // free every chain now. This assumes no node reference outlives the `Forest` that
        // owns the table; `ChainView<'g>` is bound to its guard's lifetime only, so that is
        // kept by the callers (every view is used while they borrow the forest), not by types.
        let guard = unsafe { epoch::unprotected() };
        for chunk in self.chunks.iter().filter_map(|c| c.get()) {
            for slot in chunk {
                let head = slot.head.swap(Shared::null(), Ordering::AcqRel, guard);
                // SAFETY: the swap just took the chain out of its slot, and with `&mut self`
                // (see above) no reader can still reach it.
                unsafe { retire_chain(head, guard) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_counts_what_slot_metadata_holds_beside_the_slots() {
        let table = MappingTable::new();
        let slot = table.slot(1);
        let empty = table.mem();
        let links = Arc::new(vec![(10u64, 100u32), (20, 200), (30, 300)]);
        let blobs: Arc<[u64]> = Arc::from(&[1u64, 2, 3, 4][..]);
        table.update_meta(&mut slot.meta.lock(), |m| {
            *m = SlotMeta { addr: 40, len: 400, links: Some(links.clone()), blobs: Some(blobs.clone()), ..SlotMeta::default() };
        });
        let held = slot.meta.lock().heap_mem();
        // The Arc's block of a Vec and 3 x 16 bytes of links; 4 x 8 bytes of blob references.
        assert!(held >= 40 + 48 + 16 + 32, "counted {held} bytes");
        assert_eq!(table.mem(), empty + held);
        // Only the blob references change: the count follows.
        table.update_meta(&mut slot.meta.lock(), |m| m.blobs = Some(blob_refs_arc(&[])));
        assert_eq!(table.mem(), empty + slot.meta.lock().heap_mem());
        assert!(table.mem() < empty + held);
        // A freed slot holds nothing beside it.
        table.update_meta(&mut slot.meta.lock(), |m| *m = SlotMeta::default());
        assert_eq!(table.mem(), empty);
        // A second chunk counts once.
        let _ = table.slot(MAPPING_CHUNK_LEN as u64 + 1);
        assert_eq!(table.mem(), empty + crate::tree::node::alloc_size(MAPPING_CHUNK_LEN * std::mem::size_of::<Slot>()));
    }
}
