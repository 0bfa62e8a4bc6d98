//! The catalogue of buckets: each bucket is a tree, named, with a durable id and root page.
//! Creation and removal are manifest edits, serialised by `bucket_lock`; lookups read the
//! in-memory maps.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{check_bucket_name, DbInner};
use crate::error::{Error, Result};
use crate::manifest::{BucketMeta, Edit};
use crate::tree::node::{LeafBase, NodeKind};
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

    /// Deletes bucket `name` (durably) and everything in it.
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
        self.manifest.commit(vec![Edit::DropBucket(t.id)]).await.inspect_err(|e| self.poison(e))?;
        t.dropped.store(true, Ordering::Release);
        self.catalog.write().remove(name);
        self.by_id.write().remove(&t.id);
        Ok(())
    }

    /// Names of every bucket, sorted.
    pub(crate) fn bucket_names(&self) -> Result<Vec<String>> {
        self.check_open()?;
        let mut v: Vec<String> = self.catalog.read().keys().cloned().collect();
        v.sort();
        Ok(v)
    }
}
