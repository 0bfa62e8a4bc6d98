//! Checkpoint: seal the dirty pages in one cut, write them (and new blob values) to fresh
//! files as async vectored writes, publish, then move the WAL frontier.
//!
//! Protocol:
//! 1. Pages whose chain ends in a disk stub and that cannot go out as a delta frame are
//!    loaded first (`Forest::capture_needs_load`: a chain on disk already
//!    `limits::MAX_DELTA_FRAMES` deltas long, or an unchanged chain GC moves).
//! 2. The cut: with every tree's structure lock held (so the captured structure is
//!    complete), register a snapshot at `cut = visible` (so no trim can drop a version the
//!    images need), seal the dirty set and encode each sealed page with the versions at or
//!    below `cut`; a leaf whose image holds its whole chain (and no in-memory blob) is
//!    replaced by that image, consolidated, its deltas freed (`Forest::capture`). Blind
//!    writes over an evicted leaf become a delta frame: the versions above the previous
//!    cut and at or below this one, linked to the page's frames on disk, with no read of
//!    them (`tree::page::DeltaImage`). Nothing awaits while the locks are held.
//! 3. Write the blob file and the data file (frames, ranges, relocation table, footer)
//!    through a `store::FileWriter`: frames are flushed every `store::FLUSH_BYTES` in
//!    chunks submitted concurrently and each image is dropped once written, so the
//!    checkpoint holds at most the images it captured (bounded by `Options::dirty_limit`,
//!    which the commit path enforces) and one flush of frames GC copies; then `fdatasync`
//!    each file and sync the directory. `DbInner::ckpt_mem` counts what it holds.
//! 4. Publish: one manifest edit adds both files, points every captured page at its new
//!    address (with its links, for a delta frame), sets the WAL frontier to `cut`, records
//!    every bucket's approximate size as counted when the cut's snapshot was taken and the
//!    new reference counts of the blob files the images change. Data first, metadata last: a crash
//!    before the edit is durable leaves unreferenced files that open deletes.
//! 5. In memory: the files become readable, pages whose image holds their whole chain
//!    become evictable, pages with versions above the cut stay dirty.
//! 6. Data files no page points into any more, and blob files no frame refers to any
//!    more (their counts, which step 4's edit recorded: `super::gc`), are dropped by a
//!    second edit, then deleted; WAL segments wholly at or below `cut` are deleted.
//!
//! A failure in steps 3-4 puts the sealed pages back in the dirty set and turns the
//! database read-only (a failed fsync is never retried as if nothing happened). After the
//! steps, GC (`super::gc`) picks the data files whose live pages fell below
//! `Options::gc_live_ratio` and marks those pages dirty, so the next checkpoint moves them,
//! and rewrites the sparsest blob file below that ratio with its referenced values only.
//!
//! Each step is a function of its own, named after it; [`run`] calls them in order.

use std::sync::atomic::Ordering;

use super::DbInner;
use crate::error::{Error, Result};
use crate::manifest::{Edit, FileMeta, PageLoc};
use crate::mvcc::SnapshotGuard;
use crate::store::data_file::{FileKind, RelocEntry};
use crate::store::{FileWriter, FLUSH_BYTES};
use crate::tree::forest::{Captured, PendingBlob};
use crate::tree::node::Pid;

/// What one checkpoint did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
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
    /// Data files whose pages GC marked (the next checkpoints rewrite them elsewhere, then
    /// delete the files).
    pub gc_files: usize,
    /// Bytes of frames this checkpoint copied as they were on disk: pages GC marked that
    /// were not in memory (those in memory are written from their image, with the rest),
    /// and the referenced values of a blob file GC rewrote.
    pub gc_copied_bytes: u64,
    /// Sparse blob files GC rewrote with only their referenced values, at the same
    /// addresses (`engine::gc::compact_blob_file`; each also counts in `files_removed`).
    pub blob_files_compacted: usize,
    /// Of `pages`, those written as delta frames (blind writes over an evicted leaf, linked
    /// to its frames on disk, without reading them).
    pub delta_frames: usize,
    /// Of `pages`, bases that replaced a chain of delta frames (chains consolidated).
    pub chains_consolidated: usize,
    /// Pages loaded from disk so that they could be written (a base where a delta frame
    /// would not do).
    pub pages_loaded: usize,
    /// How long the checkpoint took, in milliseconds.
    pub duration_ms: u64,
}

const MAX_CUT_ATTEMPTS: usize = 16;

/// Runs one checkpoint (serialised by `ckpt_lock`): the steps of the module doc. The
/// checkpoint's memory gauge (`DbInner::ckpt_mem`) counts the images it holds and is
/// cleared when it ends, however it ends.
pub(crate) async fn run(db: &DbInner) -> Result<CheckpointStats> {
    let g = db.ckpt_lock.lock().await;
    run_locked(db, &g).await
}

/// [`run`] for a caller that holds `ckpt_lock` (a backup keeps holding it after the
/// checkpoint, so that no other one changes the files before they are copied).
///
/// Runs in an `info` span `ringkv.checkpoint` whose fields say what it did (`cut_ts`,
/// `pages`, `blobs`, `bytes`, `files_removed`, `wal_segments_removed`, `gc_pages`,
/// `gc_files`, `gc_copied_bytes`, `blob_files_compacted`, `delta_frames`,
/// `chains_consolidated`, `pages_loaded`, `duration_ms`); an `info` event `checkpoint` sums up
/// one that wrote something (`debug` for one that had nothing to write).
pub(crate) async fn run_locked(
    db: &DbInner,
    _held: &tokio::sync::MutexGuard<'_, ()>,
) -> Result<CheckpointStats> {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "ringkv.checkpoint",
        cut_ts = Empty,
        pages = Empty,
        blobs = Empty,
        bytes = Empty,
        files_removed = Empty,
        wal_segments_removed = Empty,
        gc_pages = Empty,
        gc_files = Empty,
        gc_copied_bytes = Empty,
        blob_files_compacted = Empty,
        delta_frames = Empty,
        chains_consolidated = Empty,
        pages_loaded = Empty,
        duration_ms = Empty,
    );
    let started = std::time::Instant::now();
    let stats = tracing::Instrument::instrument(steps(db), span.clone()).await;
    db.ckpt_mem.clear();
    let _entered = span.enter();
    match stats {
        Ok(mut s) => {
            s.duration_ms = super::open::millis(started.elapsed());
            span.record("cut_ts", s.cut_ts);
            span.record("pages", s.pages);
            span.record("blobs", s.blobs);
            span.record("bytes", s.bytes);
            span.record("files_removed", s.files_removed);
            span.record("wal_segments_removed", s.wal_segments_removed);
            span.record("gc_pages", s.gc_pages);
            span.record("gc_files", s.gc_files);
            span.record("gc_copied_bytes", s.gc_copied_bytes);
            span.record("blob_files_compacted", s.blob_files_compacted);
            span.record("delta_frames", s.delta_frames);
            span.record("chains_consolidated", s.chains_consolidated);
            span.record("pages_loaded", s.pages_loaded);
            span.record("duration_ms", s.duration_ms);
            if s.pages > 0 || s.blobs > 0 {
                tracing::info!(
                    cut_ts = s.cut_ts,
                    pages = s.pages,
                    blobs = s.blobs,
                    bytes = s.bytes,
                    files_removed = s.files_removed,
                    wal_segments_removed = s.wal_segments_removed,
                    gc_pages = s.gc_pages,
                    delta_frames = s.delta_frames,
                    pages_loaded = s.pages_loaded,
                    duration_ms = s.duration_ms,
                    "checkpoint"
                );
            } else {
                tracing::debug!(
                    cut_ts = s.cut_ts,
                    duration_ms = s.duration_ms,
                    "checkpoint: nothing to write"
                );
            }
            Ok(s)
        }
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint failed");
            Err(e)
        }
    }
}

/// The steps of [`run`], under `ckpt_lock`.
async fn steps(db: &DbInner) -> Result<CheckpointStats> {
    db.check_writable()?;
    // The previous cut: every version at or below it is in the pages' images on disk.
    let (state_ts, _) = db.manifest.frontier_and_next_bucket().await;
    let Cut { snap, sealed, pages, blobs, sizes, loaded } = cut(db, state_ts).await?;
    let cut_ts = snap.ts();
    if pages.is_empty() && blobs.is_empty() && cut_ts == state_ts {
        return Ok(CheckpointStats { cut_ts, pages_loaded: loaded, ..Default::default() });
    }
    let mut stats = CheckpointStats {
        cut_ts,
        pages: pages.len(),
        blobs: blobs.len(),
        delta_frames: pages.iter().filter(|c| c.links.is_some()).count(),
        chains_consolidated: pages.iter().filter(|c| c.consolidates).count(),
        pages_loaded: loaded,
        ..Default::default()
    };
    let (new_files, placed, blob_counts) =
        match write_and_publish(db, cut_ts, pages, &blobs, sizes, &mut stats).await {
            Ok(x) => x,
            Err(e) => {
                db.forest.restore_dirty(sealed);
                db.poison(&e);
                return Err(e);
            }
        };
    let (new_data_file, mut dead) = publish_in_memory(db, new_files, &blobs, &placed, cut_ts);
    dead.extend(super::gc::set_blob_counts(db, &blob_counts));
    drop(snap);
    db.forest.needs_checkpoint.store(false, Ordering::Relaxed);
    db.checkpoints.fetch_add(1, Ordering::Relaxed);
    drop_dead(db, dead, cut_ts, &mut stats).await?;
    (stats.gc_files, stats.gc_pages) = super::gc::mark_sparse_files(db, new_data_file);
    if let Some(copied) = super::gc::compact_blob_file(db).await? {
        stats.blob_files_compacted += 1;
        stats.files_removed += 1;
        stats.gc_copied_bytes += copied;
    }
    Ok(stats)
}

/// What steps 1-2 hand to the rest: the cut's snapshot, the sealed dirty set and the
/// captured images.
struct Cut {
    snap: SnapshotGuard,
    sealed: rustc_hash::FxHashSet<Pid>,
    pages: Vec<Captured>,
    blobs: Vec<PendingBlob>,
    /// Every bucket's approximate size (`Tree::account`) when the cut's snapshot was
    /// taken: (id, keys, bytes). A commit applied but not yet published then is counted
    /// here and replayed again after a crash (the approximation `Tree::account` names).
    sizes: Vec<(u32, u64, u64)>,
    /// Pages loaded so that they could be captured.
    loaded: usize,
}

/// Steps 1-2: load the pages whose chain ends in a disk stub and that cannot go out as a
/// delta frame (`Forest::capture_needs_load`), then seal and capture the dirty set under
/// every tree's structure lock at one snapshot. `since` is the previous cut.
async fn cut(db: &DbInner, since: u64) -> Result<Cut> {
    let f = &db.forest;
    let mut attempt = 0;
    let mut loaded = 0;
    loop {
        attempt += 1;
        if attempt > MAX_CUT_ATTEMPTS {
            return Err(Error::ReadOnly("checkpoint could not load the pages it must write".into()));
        }
        loaded += f.load_all_to_write(f.dirty_unloaded()).await?;
        let trees = db.trees();
        let locks: Vec<_> = trees.iter().map(|t| t.smo.lock()).collect();
        let snap = db.mvcc.snapshot();
        let sizes = trees
            .iter()
            .map(|t| {
                let (keys, bytes) = t.size.get();
                (t.id, keys, bytes)
            })
            .collect();
        let horizon = db.mvcc.horizon();
        let sealed = f.take_dirty();
        match f.capture(&sealed, snap.ts(), horizon, since) {
            Ok((pages, blobs)) => {
                f.seal_done();
                drop(locks);
                db.ckpt_mem.hold(pages.iter().map(|c| c.image.len()).sum());
                return Ok(Cut { snap, sealed, pages, blobs, sizes, loaded });
            }
            Err(need) => {
                f.restore_dirty(sealed);
                drop(locks);
                drop(snap);
                loaded += f.load_all_to_write(need).await?;
            }
        }
    }
}

/// A new file, with its relocation table, written and synced but not yet readable.
type NewFile = (FileMeta, Vec<RelocEntry>);
/// What [`write_and_publish`] published: the new files, each captured page with its
/// address and length, and the new reference counts of the blob files it changed.
type Published = (Vec<NewFile>, Vec<(Captured, u64, u32)>, Vec<(u64, u64)>);

/// Steps 3-4: write the blob file and the data file, sync them and the directory, then
/// commit the manifest edit that publishes them, the pages' new addresses, the WAL
/// frontier `cut_ts` and the reference counts of the blob files the new images change
/// (`super::gc::blob_counts`). Frames are written [`FLUSH_BYTES`] at a time and each page's image is dropped
/// once written, so the checkpoint holds at most the images it captured plus one flush of
/// frames it copies (GC), never a whole file.
async fn write_and_publish(
    db: &DbInner,
    cut_ts: u64,
    pages: Vec<Captured>,
    blobs: &[PendingBlob],
    sizes: Vec<(u32, u64, u64)>,
    stats: &mut CheckpointStats,
) -> Result<Published> {
    let mut edits = Vec::new();
    let mut new_files = Vec::new();
    if !blobs.is_empty() {
        let mut w = db.store.create_file(FileKind::Blob).await?;
        for pb in blobs {
            let bytes =
                pb.cell.bytes.clone().ok_or_else(|| {
                    Error::ReadOnly("a blob without an address has no bytes in memory".into())
                })?;
            w.add(pb.addr, bytes);
            if w.held_len() >= FLUSH_BYTES {
                w.flush().await?;
            }
        }
        let (meta, relocs) = w.finish().await?;
        stats.bytes += meta.size;
        edits.push(Edit::AddFile(meta.clone()));
        new_files.push((meta, relocs));
    }
    let mut placed = Vec::with_capacity(pages.len());
    if !pages.is_empty() {
        let (w, locs) = write_pages(db, pages, &mut placed, &mut stats.gc_copied_bytes).await?;
        if let Some(w) = w {
            let (meta, relocs) = w.finish().await?;
            stats.bytes += meta.size;
            edits.push(Edit::AddFile(meta.clone()));
            new_files.push((meta, relocs));
        }
        edits.push(Edit::SetPages(locs));
    }
    db.io.sync_dir(&db.dir).await?;
    edits.push(Edit::Checkpoint(cut_ts));
    edits.push(Edit::BucketSizes(sizes));
    let (_, next_bucket) = db.manifest.frontier_and_next_bucket().await;
    edits.push(db.counters(next_bucket));
    let new_blob = new_files.iter().map(|f| &f.0).find(|m| m.kind == FileKind::Blob);
    let blob_counts =
        super::gc::blob_counts(db, &db.forest.blob_ref_changes(placed.iter().map(|p| &p.0)), new_blob);
    if !blob_counts.is_empty() {
        edits.push(Edit::BlobRefs(blob_counts.clone()));
    }
    db.manifest.commit(edits).await?;
    Ok((new_files, placed, blob_counts))
}

/// Step 3 for the pages: adds each captured image (or, for an unloaded page GC moves, its
/// verified frame, read now) to a new data file, created at the first frame, flushing
/// every [`FLUSH_BYTES`]; releases each image from the checkpoint's memory gauge as it is
/// written. Returns the unfinished writer (`None` when every page was freed) and every
/// page's new location.
async fn write_pages(
    db: &DbInner,
    pages: Vec<Captured>,
    placed: &mut Vec<(Captured, u64, u32)>,
    copied: &mut u64,
) -> Result<(Option<FileWriter>, Vec<(Pid, PageLoc)>)> {
    let mut w: Option<FileWriter> = None;
    let mut locs = Vec::with_capacity(pages.len());
    for mut c in pages {
        if c.freed {
            locs.push((c.pid, PageLoc::freed()));
            placed.push((c, 0, 0));
            continue;
        }
        let image = if c.copy_from == 0 {
            std::mem::take(&mut c.image)
        } else {
            // An unloaded page moved by GC: copy its verified frame as is.
            let frame = db.store.read_frame(c.copy_from).await?.bytes;
            db.ckpt_mem.hold(frame.len());
            *copied += frame.len() as u64;
            frame
        };
        let writer = match &mut w {
            Some(w) => w,
            None => w.insert(db.store.create_file(FileKind::Data).await?),
        };
        let addr = db.store.alloc_addr();
        let len = writer.add(addr, image).len;
        let links = c.links.as_ref().map(|l| l.to_vec()).unwrap_or_default();
        locs.push((c.pid, PageLoc { addr, len, links }));
        placed.push((c, addr, len));
        if writer.held_len() >= FLUSH_BYTES {
            let held = writer.held_len();
            writer.flush().await?;
            db.ckpt_mem.release(held);
        }
    }
    Ok((w, locs))
}

/// Step 5: the new files become readable, blobs learn their addresses, pages their new
/// images; the live-page counts move from the old files to the new data file. Returns the
/// new data file's id and the files no page points into any more.
fn publish_in_memory(
    db: &DbInner,
    new_files: Vec<NewFile>,
    blobs: &[PendingBlob],
    placed: &[(Captured, u64, u32)],
    cut_ts: u64,
) -> (Option<u64>, Vec<u64>) {
    let mut new_data_file = None;
    for (meta, relocs) in new_files {
        if meta.kind == FileKind::Data {
            new_data_file = Some(meta.id);
        }
        db.store.add_file(meta, Some(relocs));
    }
    for pb in blobs {
        pb.cell.set_addr(pb.addr);
    }
    let old = db.forest.publish(placed, cut_ts);
    if let Some(id) = new_data_file {
        *db.live_files.lock().entry(id).or_insert(0) += placed.iter().filter(|p| !p.0.freed).count();
    }
    (new_data_file, release_frames(db, old))
}

/// The live-frame count of the file of each address in `old` (frames no page's image uses
/// any more) falls by one; returns the files left with no live frame, which the caller
/// drops ([`remove_files`]).
pub(crate) fn release_frames(db: &DbInner, old: Vec<u64>) -> Vec<u64> {
    let mut live = db.live_files.lock();
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
}

/// Step 6: a second manifest edit drops the dead files, which are then deleted; WAL
/// segments wholly at or below the cut are deleted.
async fn drop_dead(db: &DbInner, dead: Vec<u64>, cut_ts: u64, stats: &mut CheckpointStats) -> Result<()> {
    stats.files_removed += remove_files(db, dead).await?;
    stats.wal_segments_removed = db.wal.remove_below(cut_ts).await?;
    Ok(())
}

/// Drops the files `dead`, which no page points into: one manifest edit, then each file
/// is deleted. Returns how many were deleted.
pub(crate) async fn remove_files(db: &DbInner, dead: Vec<u64>) -> Result<usize> {
    let mut removed = 0;
    if !dead.is_empty() {
        db.manifest
            .commit(dead.iter().map(|&id| Edit::RemoveFile(id)).collect())
            .await
            .inspect_err(|e| db.poison(e))?;
        for id in dead {
            if let Some(path) = db.store.forget_file(id) {
                db.io.remove_file(&path).await?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
