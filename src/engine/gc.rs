//! GC of data files: a data file whose live pages fell below `Options::gc_live_ratio` of
//! its frames gets those pages marked dirty, so the next checkpoint writes them elsewhere
//! and its step 6 drops the file once no page points into it.
//!
//! GC of blob files counts references: per blob file, how many blob values the frames of
//! the page table refer to (every version of every frame counted, `DbInner::blob_refs`,
//! recorded in the manifest by each checkpoint's edit, `Edit::BlobRefs`). A checkpoint
//! adds the references of the images it writes and takes away those of the frames they
//! replace ([`blob_counts`]); a blob file at 0 is dropped with the dead data files. The
//! invariant is that **a count is never below the references that exist**:
//! 1. every image written adds all its references (`Captured::blob_refs`, taken from the
//!    very page encoded);
//! 2. references are taken away only for frames whose references the slot knows
//!    (`SlotMeta::blobs`: set when a page is published, or read back, from the frames
//!    themselves); a page not read since open keeps its references counted, so a count may
//!    stay too high (the file then stays), never fall too low;
//! 3. a version moves between pages only by a split or a merge, which marks both pages
//!    dirty under the tree's structure lock, so one cut captures both: the reference the
//!    one image drops, the other adds in the same edit;
//! 4. a version in memory that no image holds any more was trimmed (shadowed at or below
//!    the GC horizon), and no snapshot, present or future, reads it.
//!
//! A blob file written before the counts existed has none (and a count that would fall
//! below zero, which invariant 1 rules out, is set to [`UNKNOWN_REFS`] with an error
//! event): such a file is never collected.
//!
//! Runs at the end of every checkpoint (`super::checkpoint::run`, inside its span), never
//! on the file that checkpoint just wrote. What it marks is an `info` event; the files it
//! empties are counted by the checkpoint that deletes them (`files_removed`), the frames
//! copied as they were by `gc_copied_bytes`.

use super::DbInner;
use crate::files::FileMeta;
use crate::store::data_file::FileKind;
use crate::tree::forest::BlobRefChanges;

/// The count of a blob file whose references are unknown: never collected.
pub(crate) const UNKNOWN_REFS: u64 = u64::MAX;

/// The new reference counts of the blob files whose references `ch` changes, for the
/// checkpoint's manifest edit (module doc): `new_blob` is the blob file the checkpoint
/// writes (not in the store yet, counted from 0); files with an unknown count are left out.
pub(crate) fn blob_counts(db: &DbInner, ch: &BlobRefChanges, new_blob: Option<&FileMeta>) -> Vec<(u64, u64)> {
    if ch.added.is_empty() && ch.released.is_empty() {
        return Vec::new();
    }
    let file_of = |addr: u64| match new_blob {
        Some(m) if m.ranges.iter().any(|&(s, e)| (s..e).contains(&addr)) => Some(m.id),
        _ => db.store.file_of(addr),
    };
    let mut delta: rustc_hash::FxHashMap<u64, i64> = rustc_hash::FxHashMap::default();
    for (refs, d) in [(&ch.added, 1), (&ch.released, -1)] {
        for &a in refs {
            if let Some(id) = file_of(a) {
                *delta.entry(id).or_insert(0) += d;
            }
        }
    }
    let known = db.blob_refs.lock();
    let mut out: Vec<(u64, u64)> = delta
        .into_iter()
        .filter_map(|(id, d)| {
            let now = if new_blob.is_some_and(|m| m.id == id) { 0 } else { *known.get(&id)? };
            if now == UNKNOWN_REFS || d == 0 {
                return None;
            }
            let next = now.checked_add_signed(d).unwrap_or_else(|| {
                debug_assert!(false, "blob file {id}: {now} references {d:+}");
                tracing::error!(
                    file = id,
                    refs = now,
                    change = d,
                    "GC: a blob file's reference count would fall below zero; the file is kept for good"
                );
                UNKNOWN_REFS
            });
            Some((id, next))
        })
        .collect();
    out.sort_unstable();
    if ch.unknown > 0 {
        tracing::debug!(
            pages = ch.unknown,
            "GC: pages replaced whose blob references were never read stay counted"
        );
    }
    out
}

/// Step 5 for blob files: the counts of a published edit become the in-memory ones;
/// returns the blob files at 0, which the checkpoint drops with its dead data files.
pub(crate) fn set_blob_counts(db: &DbInner, counts: &[(u64, u64)]) -> Vec<u64> {
    let mut known = db.blob_refs.lock();
    let mut dead = Vec::new();
    for &(id, n) in counts {
        if n == 0 {
            known.remove(&id);
            dead.push(id);
        } else {
            known.insert(id, n);
        }
    }
    dead
}

/// Marks the live pages of sparse data files (other than `just_written`) dirty, sparsest
/// first, as many files as fit in the room left under half the dirty bound (each page at
/// `limits::DIRTY_PAGE_COST`, what `Forest::mark_dirty` charges at most), and never more
/// pages than that room, so that GC never makes a checkpoint hold more than
/// `Options::dirty_limit` allows; the rest wait for a later checkpoint. Half: the other half is the commits' (a committer whose writes
/// would pass the bound runs a checkpoint first, and that checkpoint's GC must not take
/// the room it made), and half is also where a background checkpoint starts, so GC alone
/// does not start the next one. Returns how many files and pages were marked; a marking is
/// an `info` event `GC` (files, pages, and the live ratio of the sparsest file).
pub(crate) fn mark_sparse_files(db: &DbInner, just_written: Option<u64>) -> (usize, usize) {
    let sparsest;
    let budget;
    let victims: rustc_hash::FxHashSet<u64> = {
        let live = db.live_files.lock();
        let mut sparse: Vec<(f64, u64, usize)> = db
            .store
            .files()
            .iter()
            .filter(|f| f.meta.kind == FileKind::Data && Some(f.meta.id) != just_written)
            .filter_map(|f| {
                let frames: u64 = f.meta.ranges.iter().map(|(s, e)| e - s).sum();
                let alive = live.get(&f.meta.id).copied().unwrap_or(0);
                let ratio = alive as f64 / frames.max(1) as f64;
                (frames > 0 && ratio < db.opts.gc_live_ratio).then_some((ratio, f.meta.id, alive))
            })
            .collect();
        sparse.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        sparsest = sparse.first().map(|s| s.0);
        // The pages commits past their flow control may still dirty count too.
        let dirty = db.dirty_bytes_and_reserved();
        budget = (db.opts.dirty_limit_bytes() / 2).saturating_sub(dirty) / crate::limits::DIRTY_PAGE_COST;
        let mut room = budget;
        let mut picked = rustc_hash::FxHashSet::default();
        for (_, id, alive) in sparse {
            // With nothing dirty, the sparsest file goes even if it holds more live pages
            // than the room (a file written with GC's copies beside a full dirty set, or
            // before the bound was lowered): GC must make progress. Only `budget` of its
            // pages are marked; the rest go at later checkpoints.
            if alive > room && !(picked.is_empty() && dirty == 0) {
                break;
            }
            room = room.saturating_sub(alive);
            picked.insert(id);
        }
        picked
    };
    if victims.is_empty() || budget == 0 {
        return (0, 0);
    }
    let pages = db.forest.mark_files_dirty(&victims, budget);
    tracing::info!(
        files = victims.len(),
        pages,
        sparsest_live_ratio = sparsest.unwrap_or(0.0),
        "GC: the live pages of sparse data files go to the next checkpoint"
    );
    (victims.len(), pages)
}

/// GC of a sparse blob file: the blob file whose references fell furthest below
/// `Options::gc_live_ratio` of its values is rewritten, with only the values the page
/// table's frames still refer to, **at the same logical addresses**: a page refers to a
/// blob by address and an address resolves through its file's relocation table, so no page
/// changes. Under `ckpt_lock` (the end of a checkpoint), so no frame changes meanwhile.
/// 1. The referenced addresses: every page whose frames could refer to the file (a frame
///    written before the file's first address cannot) gives its references, from its slot
///    or, for a page not read since open, read from its frames.
/// 2. A new blob file holds the frames of those addresses, copied and verified; synced.
/// 3. One manifest edit adds it, removes the old file and records the new file's count
///    (the references found: exact, so a count left too high by invariant 2 is mended).
/// 4. The store resolves the addresses to the new file (`Store::replace_file`), the old
///    file is deleted (a read that was in it is retried in the new one).
///
/// Returns how many bytes it copied, and whether it rewrote a file.
pub(crate) async fn compact_blob_file(db: &DbInner) -> crate::error::Result<Option<u64>> {
    let Some((victim, start, refs)) = sparsest_blob_file(db) else { return Ok(None) };
    // Step 1.
    let (mut live, read) = referenced_in(db, victim, start).await?;
    let found = live.len() as u64;
    if found > refs {
        // Invariant 1 broken: keep everything rather than trust either number.
        debug_assert!(false, "blob file {victim}: {found} references found, {refs} counted");
        tracing::error!(
            file = victim,
            counted = refs,
            found,
            "GC: a blob file holds more references than counted; left as it is"
        );
        db.blob_refs.lock().insert(victim, UNKNOWN_REFS);
        return Ok(None);
    }
    live.sort_unstable();
    live.dedup();
    // Step 2.
    let (new, copied) = if live.is_empty() {
        (None, 0)
    } else {
        let (file, copied) = copy_values(db, &live).await?;
        (Some(file), copied)
    };
    let mut edits = Vec::new();
    if let Some((meta, _)) = &new {
        edits.push(crate::manifest::Edit::AddFile(meta.clone()));
        edits.push(crate::manifest::Edit::BlobRefs(vec![(meta.id, found)]));
    }
    // Step 3.
    edits.push(crate::manifest::Edit::RemoveFile(victim));
    let (_, next_bucket) = db.manifest.frontier_and_next_bucket().await;
    edits.push(db.counters(next_bucket));
    db.manifest.commit(edits).await.inspect_err(|e| db.poison(e))?;
    // Step 4.
    let old_path = {
        let mut counts = db.blob_refs.lock();
        counts.remove(&victim);
        match new {
            Some((meta, relocs)) => {
                counts.insert(meta.id, found);
                db.store.replace_file(victim, meta, relocs)
            }
            None => db.store.forget_file(victim),
        }
    };
    if let Some(path) = old_path {
        db.io.remove_file(&path).await?;
    }
    tracing::info!(
        file = victim,
        counted = refs,
        referenced = found,
        values_kept = live.len(),
        pages_read = read,
        bytes_copied = copied,
        "GC: a sparse blob file rewritten with its referenced values"
    );
    Ok(Some(copied))
}

/// Step 1 of [`compact_blob_file`]: the references (with repeats) to the values of blob
/// file `victim`, whose first address is `start`, that the page table's frames hold, and
/// how many pages had to be read to know them.
async fn referenced_in(db: &DbInner, victim: u64, start: u64) -> crate::error::Result<(Vec<u64>, usize)> {
    let mut live: Vec<u64> = Vec::new();
    let mut unread = Vec::new();
    let in_victim = |a: &u64| db.store.file_of(*a) == Some(victim);
    for pid in 1..db.forest.next_pid() {
        let Some(slot) = db.forest.table.try_slot(pid) else { continue };
        let meta = slot.meta.lock();
        // A frame refers only to values written before it: addresses only grow.
        if meta.frames().max().is_none_or(|newest| newest < start) {
            continue;
        }
        match meta.blob_refs() {
            Some(r) => live.extend(r.iter().filter(|a| in_victim(a))),
            None => unread.push(pid),
        }
    }
    let read = unread.len();
    live.extend(db.forest.blob_refs_of_pages(unread, in_victim).await?);
    Ok((live, read))
}

/// Step 2 of [`compact_blob_file`]: a new blob file holding the frames of `addrs` (sorted,
/// distinct), each read (and verified) and written at its address; synced, as is the
/// directory. Returns the file and the bytes copied.
async fn copy_values(
    db: &DbInner,
    addrs: &[u64],
) -> crate::error::Result<((FileMeta, Vec<crate::store::data_file::RelocEntry>), u64)> {
    let mut copied = 0u64;
    let mut w = db.store.create_file(FileKind::Blob).await?;
    for &a in addrs {
        let frame = db.store.read_frame(a).await?.bytes;
        copied += frame.len() as u64;
        w.add(a, frame);
        if w.held_len() >= crate::store::FLUSH_BYTES {
            w.flush().await?;
        }
    }
    let file = w.finish().await?;
    db.io.sync_dir(&db.dir).await?;
    Ok((file, copied))
}

/// The blob file with a known count whose references are the smallest fraction of its
/// values, if below `Options::gc_live_ratio`: (id, first address, count).
fn sparsest_blob_file(db: &DbInner) -> Option<(u64, u64, u64)> {
    let counts = db.blob_refs.lock();
    db.store
        .files()
        .iter()
        .filter(|f| f.meta.kind == FileKind::Blob)
        .filter_map(|f| {
            let refs = *counts.get(&f.meta.id)?;
            let values: u64 = f.meta.ranges.iter().map(|(s, e)| e - s).sum();
            let ratio = refs as f64 / values.max(1) as f64;
            (refs != UNKNOWN_REFS && values > 0 && ratio < db.opts.gc_live_ratio)
                .then(|| (ratio, f.meta.id, f.meta.ranges.first().map_or(0, |r| r.0), refs))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, id, start, refs)| (id, start, refs))
}
