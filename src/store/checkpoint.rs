//! Checkpoint: seal the dirty pages in one cut, write them (and new blob values) to fresh
//! files as async vectored writes, publish, then move the WAL frontier.
//!
//! Protocol:
//! 1. Pages whose chain ends in a disk stub (blind writes) are loaded first.
//! 2. The cut: with every tree's structure lock held (so the captured structure is
//!    complete), register a snapshot at `cut = visible` (so no trim can drop a version the
//!    images need), seal the dirty set and encode each sealed page with the versions at or
//!    below `cut`. Nothing awaits while the locks are held.
//! 3. Write the blob file and the data file (frames, ranges, relocation table, footer), in
//!    chunks submitted concurrently, then `fdatasync` each and sync the directory.
//! 4. Publish: one manifest edit adds both files, points every captured page at its new
//!    address and sets the WAL frontier to `cut`. Data first, metadata last: a crash
//!    before the edit is durable leaves unreferenced files that open deletes.
//! 5. In memory: the files become readable, pages whose image holds their whole chain
//!    become evictable, pages with versions above the cut stay dirty.
//! 6. Data files no page points into any more are dropped by a second edit, then deleted;
//!    WAL segments wholly at or below `cut` are deleted.
//!
//! A failure in steps 3-4 puts the sealed pages back in the dirty set and turns the
//! database read-only (a failed fsync is never retried as if nothing happened).

use std::sync::atomic::Ordering;

use crate::db::DbInner;
use crate::error::{Error, Result};
use crate::manifest::{Edit, PageLoc};
use crate::store::data_file::{FileBuilder, FileKind};

/// What one checkpoint did.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    /// The cut timestamp (the new WAL frontier).
    pub cut_ts: u64,
    /// Pages written.
    pub pages: usize,
    /// Blob values written.
    pub blobs: usize,
    /// Bytes written to data and blob files.
    pub bytes: u64,
    /// Files deleted because nothing pointed into them any more.
    pub files_removed: usize,
    /// WAL segments deleted.
    pub wal_segments_removed: usize,
    /// Pages marked for rewriting by GC (their files are mostly garbage).
    pub gc_pages: usize,
}

const MAX_CUT_ATTEMPTS: usize = 16;

/// Reads this many pages at once when a checkpoint loads the pages it must write.
const LOAD_DEPTH: usize = 64;

/// Loads `pids`, [`LOAD_DEPTH`] reads in flight (blind writes spread over a tree larger than
/// the cache leave one evicted page per write to fold in; one at a time, the checkpoint
/// would wait a device round trip per page).
async fn load_all(f: &crate::tree::Forest, pids: Vec<crate::tree::node::Pid>) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    futures::stream::iter(pids).map(|pid| f.load(pid)).buffer_unordered(LOAD_DEPTH).try_collect().await
}

/// Runs one checkpoint (serialised by `ckpt_lock`).
pub(crate) async fn run(db: &DbInner) -> Result<CheckpointStats> {
    let _g = db.ckpt_lock.lock().await;
    db.check_writable()?;
    let f = &db.forest;
    let mut attempt = 0;
    let (snap, sealed, pages, blobs) = loop {
        attempt += 1;
        if attempt > MAX_CUT_ATTEMPTS {
            return Err(Error::ReadOnly("checkpoint could not load the pages it must write".into()));
        }
        load_all(f, f.dirty_unloaded()).await?;
        let trees = db.trees();
        let locks: Vec<_> = trees.iter().map(|t| t.smo.lock()).collect();
        let snap = db.mvcc.snapshot();
        let horizon = db.mvcc.horizon();
        let sealed = f.take_dirty();
        match f.capture(&sealed, snap.ts(), horizon) {
            Ok((pages, blobs)) => {
                drop(locks);
                break (snap, sealed, pages, blobs);
            }
            Err(need) => {
                f.restore_dirty(sealed);
                drop(locks);
                drop(snap);
                load_all(f, need).await?;
            }
        }
    };
    let cut = snap.ts();
    let (state_ts, _) = db.manifest.frontier_and_next_bucket().await;
    if pages.is_empty() && blobs.is_empty() && cut == state_ts {
        return Ok(CheckpointStats { cut_ts: cut, ..Default::default() });
    }
    let mut stats =
        CheckpointStats { cut_ts: cut, pages: pages.len(), blobs: blobs.len(), ..Default::default() };

    let written = async {
        let mut edits = Vec::new();
        let mut new_files = Vec::new();
        if !blobs.is_empty() {
            let mut b = FileBuilder::new(FileKind::Blob);
            for pb in &blobs {
                let bytes = pb.cell.bytes.clone().ok_or_else(|| {
                    Error::ReadOnly("a blob without an address has no bytes in memory".into())
                })?;
                b.add(pb.addr, bytes);
            }
            let (meta, relocs) = db.store.write_file(b, FileKind::Blob).await?;
            stats.bytes += meta.size;
            edits.push(Edit::AddFile(meta.clone()));
            new_files.push((meta, relocs));
        }
        let mut placed = Vec::with_capacity(pages.len());
        if !pages.is_empty() {
            let mut b = FileBuilder::new(FileKind::Data);
            let mut locs = Vec::with_capacity(pages.len());
            for mut c in pages {
                if c.freed {
                    locs.push((c.pid, PageLoc { addr: 0, len: 0 }));
                    placed.push((c, 0, 0));
                    continue;
                }
                if c.copy_from != 0 {
                    // An unloaded page moved by GC: copy its verified frame as is.
                    c.image = db.store.read_frame(c.copy_from).await?.bytes;
                }
                let addr = db.store.alloc_addr();
                let len = c.image.len() as u32;
                b.add(addr, c.image.clone());
                locs.push((c.pid, PageLoc { addr, len }));
                placed.push((c, addr, len));
            }
            if !b.is_empty() {
                let (meta, relocs) = db.store.write_file(b, FileKind::Data).await?;
                stats.bytes += meta.size;
                edits.push(Edit::AddFile(meta.clone()));
                new_files.push((meta, relocs));
            }
            edits.push(Edit::SetPages(locs));
        }
        db.io.sync_dir(&db.dir).await?;
        edits.push(Edit::Checkpoint(cut));
        let (_, next_bucket) = db.manifest.frontier_and_next_bucket().await;
        edits.push(db.counters(next_bucket));
        db.manifest.commit(edits).await?;
        Ok::<_, Error>((new_files, placed))
    }
    .await;
    let (new_files, placed) = match written {
        Ok(x) => x,
        Err(e) => {
            f.restore_dirty(sealed);
            db.poison(&e);
            return Err(e);
        }
    };

    // Step 5: publish in memory.
    let mut new_data_file = None;
    for (meta, relocs) in new_files {
        if meta.kind == FileKind::Data {
            new_data_file = Some(meta.id);
        }
        db.store.add_file(meta, Some(relocs));
    }
    for pb in &blobs {
        pb.cell.set_addr(pb.addr);
    }
    let old = f.publish(&placed, cut);
    let dead: Vec<u64> = {
        let mut live = db.live_files.lock();
        if let Some(id) = new_data_file {
            *live.entry(id).or_insert(0) += placed.iter().filter(|p| !p.0.freed).count();
        }
        let mut touched = Vec::new();
        for a in old {
            if let Some(id) = db.store.file_of(a) {
                if let Some(n) = live.get_mut(&id) {
                    *n -= 1;
                    touched.push(id);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let dead: Vec<u64> = touched.into_iter().filter(|id| live.get(id) == Some(&0)).collect();
        for id in &dead {
            live.remove(id);
        }
        dead
    };
    drop(snap);
    f.needs_checkpoint.store(false, Ordering::Relaxed);
    db.checkpoints.fetch_add(1, Ordering::Relaxed);

    // Step 6: drop what nothing needs any more.
    if !dead.is_empty() {
        db.manifest
            .commit(dead.iter().map(|&id| Edit::RemoveFile(id)).collect())
            .await
            .inspect_err(|e| db.poison(e))?;
        for id in dead {
            if let Some(path) = db.store.forget_file(id) {
                db.io.remove_file(&path).await?;
                stats.files_removed += 1;
            }
        }
    }
    stats.wal_segments_removed = db.wal.remove_below(cut).await?;

    // GC: data files whose live pages fell below `gc_live_ratio` of their frames get those
    // pages marked dirty; the next checkpoint moves them and step 6 then drops the files.
    let victims: rustc_hash::FxHashSet<u64> = {
        let live = db.live_files.lock();
        db.store
            .files()
            .iter()
            .filter(|f| f.meta.kind == FileKind::Data && Some(f.meta.id) != new_data_file)
            .filter(|f| {
                let frames: u64 = f.meta.ranges.iter().map(|(s, e)| e - s).sum();
                let alive = live.get(&f.meta.id).copied().unwrap_or(0) as u64;
                frames > 0 && (alive as f64) < db.opts.gc_live_ratio * frames as f64
            })
            .map(|f| f.meta.id)
            .collect()
    };
    if !victims.is_empty() {
        stats.gc_pages = f.mark_files_dirty(&victims);
    }
    Ok(stats)
}
