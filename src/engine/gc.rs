//! GC of data files: a data file whose live pages fell below `Options::gc_live_ratio` of
//! its frames gets those pages marked dirty, so the next checkpoint writes them elsewhere
//! and its step 6 drops the file once no page points into it.
//!
//! Runs at the end of every checkpoint (`super::checkpoint::run`, inside its span), never
//! on the file that checkpoint just wrote. What it marks is an `info` event; the files it
//! empties are counted by the checkpoint that deletes them (`files_removed`), the frames
//! copied as they were by `gc_copied_bytes`.

use super::DbInner;
use crate::store::data_file::FileKind;

/// Marks the live pages of sparse data files (other than `just_written`) dirty, sparsest
/// first, as many files as fit in the room left under half the dirty-page bound, so that
/// GC never makes a checkpoint hold more than `Options::dirty_limit` allows; the rest wait
/// for a later checkpoint. Half: the other half is the commits' (a committer whose writes
/// would pass the bound runs a checkpoint first, and that checkpoint's GC must not take
/// the room it made), and half is also where a background checkpoint starts, so GC alone
/// does not start the next one. Returns how many files and pages were marked; a marking is
/// an `info` event `GC` (files, pages, and the live ratio of the sparsest file).
pub(crate) fn mark_sparse_files(db: &DbInner, just_written: Option<u64>) -> (usize, usize) {
    let sparsest;
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
        let dirty = db.forest.dirty_pages();
        let mut room = (db.opts.dirty_pages_limit() / 2).saturating_sub(dirty);
        let mut picked = rustc_hash::FxHashSet::default();
        for (_, id, alive) in sparse {
            // With nothing dirty, the sparsest file goes even if it holds more pages than
            // the bound (a file a checkpoint wrote before the bound was lowered): GC must
            // make progress, and the next checkpoint then holds only it.
            if alive > room && !(picked.is_empty() && dirty == 0) {
                break;
            }
            room = room.saturating_sub(alive);
            picked.insert(id);
        }
        picked
    };
    if victims.is_empty() {
        return (0, 0);
    }
    let pages = db.forest.mark_files_dirty(&victims);
    tracing::info!(
        files = victims.len(),
        pages,
        sparsest_live_ratio = sparsest.unwrap_or(0.0),
        "GC: the live pages of sparse data files go to the next checkpoint"
    );
    (victims.len(), pages)
}
