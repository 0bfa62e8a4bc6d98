//! The catalogue of buckets: each bucket is a tree, named, with a durable id and root page.
//! Creation and removal are manifest edits, serialised by `bucket_lock`; lookups read the
//! in-memory maps.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{check_bucket_name, checkpoint, DbInner};
use crate::error::{Error, Result};
use crate::manifest::{BucketMeta, Edit, PageLoc};
use crate::tree::node::{LeafBase, NodeKind, Pid};
use crate::tree::Tree;

impl DbInner {
    /// The tree of bucket `name`, created (durably) if it does not exist.
    pub(crate) async fn bucket_tree(&self, name: &str) -> Result<Arc<Tree>> {
        self.check_open()?;
        check_bucket_name(name)?;
        if let Some(t) = self.catalog.read().get(name) {
            return Ok(t.clone());
        }
        self.check_writable()?;
        let _g = self.bucket_lock.lock().await;
        if let Some(t) = self.catalog.read().get(name) {
            return Ok(t.clone());
        }
        let (_, id) = self.manifest.frontier_and_next_bucket().await;
        let root = self.forest.alloc_pid();
        self.forest.install_new(root, NodeKind::Leaf(LeafBase::default()));
        self.forest.mark_dirty(root);
        let edits =
            vec![Edit::AddBucket(BucketMeta { id, name: name.to_string(), root }), self.counters(id + 1)];
        self.manifest.commit(edits).await.inspect_err(|e| self.poison(e))?;
        let t = Arc::new(Tree::new(id, root));
        self.catalog.write().insert(name.to_string(), t.clone());
        self.by_id.write().insert(id, t.clone());
        Ok(t)
    }

    /// The tree of an existing bucket; [`Error::NotFound`] if there is none by that name.
    pub(crate) fn existing_tree(&self, name: &str) -> Result<Arc<Tree>> {
        self.check_open()?;
        let t = self.catalog.read().get(name).cloned();
        t.ok_or_else(|| Error::NotFound(format!("bucket {name:?}")))
    }

    /// Deletes bucket `name` (durably) and everything in it, and gives its space back:
    /// 1. Under `bucket_lock` and then `ckpt_lock` (the order a backup takes them; no
    ///    checkpoint is in flight, so none publishes an address for a page freed here), mark
    ///    the tree dropped under the commit lock: no commit applies to it afterwards
    ///    (`commit_locked` checks the mark under that lock), so its structure is fixed.
    /// 2. List its pages (`Forest::tree_pages`, which loads index nodes not in memory).
    /// 3. One manifest edit drops the bucket and takes its pages out of the page map: a
    ///    crash leaves either the whole bucket or nothing of it.
    /// 4. In memory: the pages leave the mapping table (their memory is freed through the
    ///    epoch), the files' live-page counts fall, and files left with no live page are
    ///    dropped now; the surviving pages of files the bucket shared are marked for GC
    ///    (`super::gc`), so the next checkpoint moves them and drops those files.
    ///
    /// If step 2 fails, the mark is taken back and nothing changed (a commit into the
    /// bucket meanwhile failed with `NotFound`).
    pub(crate) async fn drop_bucket(&self, name: &str) -> Result<()> {
        self.check_open()?;
        self.check_writable()?;
        let _g = self.bucket_lock.lock().await;
        let t = self
            .catalog
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("bucket {name:?}")))?;
        let _ckpt = self.ckpt_lock.lock().await;
        {
            let _commits = self.commit_lock.lock().await;
            t.dropped.store(true, Ordering::Release);
        }
        let pids = match self.forest.tree_pages(t.root).await {
            Ok(p) => p,
            Err(e) => {
                t.dropped.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let freed: Vec<(Pid, PageLoc)> = pids
            .iter()
            .filter(|&&pid| self.forest.table.try_slot(pid).is_some_and(|s| s.meta.lock().addr != 0))
            .map(|&pid| (pid, PageLoc::freed()))
            .collect();
        let blob_counts = match self.dropped_blob_refs(&freed).await {
            Ok(c) => c,
            Err(e) => {
                t.dropped.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let mut edits = vec![Edit::DropBucket(t.id), Edit::SetPages(freed)];
        if !blob_counts.is_empty() {
            edits.push(Edit::BlobRefs(blob_counts.clone()));
        }
        if let Err(e) = self.manifest.commit(edits).await {
            self.poison(&e);
            return Err(e);
        }
        self.catalog.write().remove(name);
        self.by_id.write().remove(&t.id);
        let old = self.forest.forget(&pids);
        let mut dead = checkpoint::release_frames(self, old);
        dead.extend(super::gc::set_blob_counts(self, &blob_counts));
        let removed = checkpoint::remove_files(self, dead).await?;
        // The files the bucket shared with others: their survivors move at the next
        // checkpoint, which then drops the files.
        let (gc_files, gc_pages) = super::gc::mark_sparse_files(self, None);
        tracing::info!(
            bucket = name,
            pages = pids.len(),
            files_removed = removed,
            gc_files,
            gc_pages,
            "bucket dropped"
        );
        Ok(())
    }

    /// The new reference counts of the blob files the frames of `freed` (a dropped
    /// bucket's pages) refer to: their references are taken away (`super::gc`), read from
    /// the frames of pages not read since open (only while some blob file has a count).
    async fn dropped_blob_refs(&self, freed: &[(Pid, PageLoc)]) -> Result<Vec<(u64, u64)>> {
        if self.blob_refs.lock().is_empty() {
            return Ok(Vec::new());
        }
        let pids: Vec<Pid> = freed.iter().map(|p| p.0).collect();
        let changes = crate::tree::forest::BlobRefChanges {
            released: self.forest.blob_refs_of_pages(pids, |_| true).await?,
            ..Default::default()
        };
        Ok(super::gc::blob_counts(self, &changes, None))
    }

    /// Names of every bucket, sorted.
    pub(crate) fn bucket_names(&self) -> Result<Vec<String>> {
        self.check_open()?;
        let mut v: Vec<String> = self.catalog.read().keys().cloned().collect();
        v.sort();
        Ok(v)
    }
}
