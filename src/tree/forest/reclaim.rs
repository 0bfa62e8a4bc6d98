//! The forest's side of dropping a bucket: listing every page of its tree and taking them
//! out of the mapping table, so that their memory is freed at once and the drop's manifest
//! edit can take them out of the page map in the same record that drops the bucket.

use super::{epoch, ChainView, Forest, FxHashSet, NodeKind, Pid, Result};
use crate::tree::mapping::SlotMeta;

impl Forest {
    /// Every page of the tree rooted at `root`: the pages its index nodes name, and the
    /// right siblings of every page whose bounds are known (a split's new sibling that its
    /// parent does not name yet). Index nodes not in memory are loaded; of the children of
    /// an index node only the first is looked at (loaded if its kind is unknown) to learn
    /// their level (a B-link tree's leaves are all at one depth), so at most one leaf per
    /// lowest index node is read, never the others.
    ///
    /// The caller stops every change of the tree's structure first (the bucket is marked
    /// dropped under the commit lock, and only commits split or merge its pages).
    pub async fn tree_pages(&self, root: Pid) -> Result<Vec<Pid>> {
        let mut seen: FxHashSet<Pid> = FxHashSet::default();
        seen.insert(root);
        // (page, whether it is known to be a leaf: a leaf is never loaded).
        let mut todo = vec![(root, false)];
        while let Some((pid, leaf)) = todo.pop() {
            let mut found = Vec::new();
            if leaf {
                found.push((self.right_of(pid), true));
            } else if let Some(children) = self.index_children(pid).await? {
                let (kids, right) = children;
                found.push((right, false));
                let leaves = match kids.first() {
                    Some(&first) => self.index_children(first).await?.is_none(),
                    None => true,
                };
                found.extend(kids.into_iter().map(|k| (k, leaves)));
            } else {
                found.push((self.right_of(pid), true));
            }
            for (p, leaf) in found {
                if p != 0 && seen.insert(p) {
                    todo.push((p, leaf));
                }
            }
        }
        let mut pids: Vec<Pid> = seen.into_iter().collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// The right sibling of `pid` when its bounds are in memory, else 0 (a page whose
    /// bounds are only on disk is not in the middle of a split).
    fn right_of(&self, pid: Pid) -> Pid {
        let guard = epoch::pin();
        ChainView::load(self, pid, &guard).and_then(|v| v.bounds().map(|b| b.right)).unwrap_or(0)
    }

    /// The children and right sibling of `pid` if it is an index node (loaded first when
    /// its kind is not known yet), `None` if it is not.
    async fn index_children(&self, pid: Pid) -> Result<Option<(Vec<Pid>, Pid)>> {
        // A load installs the page, so the second look finds it; eviction makes a stub with
        // known bounds. The bound is against a bug, not a race.
        for _ in 0..8 {
            {
                let guard = epoch::pin();
                let Some(v) = ChainView::load(self, pid, &guard) else { return Ok(None) };
                match &v.bottom.kind {
                    NodeKind::Disk { bounds: None, .. } => {}
                    NodeKind::Inner(i) => {
                        let kids = (0..i.page.count()).map(|k| i.page.child(k)).collect();
                        return Ok(Some((kids, i.bounds.right)));
                    }
                    _ => return Ok(None),
                }
            }
            self.load(pid).await?;
        }
        Err(crate::error::Error::internal(format!("page {pid} stayed unloaded after loads")))
    }

    /// Takes `pids` out of the mapping table: each slot is emptied (its chain freed
    /// through the epoch, so a reader still on it finishes safely; one that comes back by
    /// page id finds nothing and fails instead of reading another page) and its address
    /// cleared. The page ids are not reused. Returns the addresses of every frame the pages had
    /// on disk.
    pub fn forget(&self, pids: &[Pid]) -> Vec<u64> {
        let guard = epoch::pin();
        let mut old = Vec::new();
        for &pid in pids {
            let Some(slot) = self.table.try_slot(pid) else { continue };
            // SAFETY: the only links to `pid` are in the dropped tree, which no operation
            // enters any more (its bucket is marked dropped).
            unsafe { self.empty_slot(pid, &guard) };
            let mut meta = slot.meta.lock();
            old.extend(meta.frames());
            self.table.update_meta(&mut meta, |m| *m = SlotMeta::default());
        }
        old
    }
}
