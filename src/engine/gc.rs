//! GC of data files: a data file whose live pages fell below `Options::gc_live_ratio` of
//! its frames gets those pages marked dirty, so the next checkpoint writes them elsewhere
//! and its step 6 drops the file once no page points into it.
//!
//! Runs at the end of every checkpoint (`super::checkpoint::run`), never on the file that
//! checkpoint just wrote.

use super::DbInner;
use crate::store::data_file::FileKind;

/// Marks the live pages of every sparse data file (other than `just_written`) dirty;
/// returns how many pages were marked.
pub(crate) fn mark_sparse_files(db: &DbInner, just_written: Option<u64>) -> usize {
    let victims: rustc_hash::FxHashSet<u64> = {
        let live = db.live_files.lock();
        db.store
            .files()
            .iter()
            .filter(|f| f.meta.kind == FileKind::Data && Some(f.meta.id) != just_written)
            .filter(|f| {
                let frames: u64 = f.meta.ranges.iter().map(|(s, e)| e - s).sum();
                let alive = live.get(&f.meta.id).copied().unwrap_or(0) as u64;
                frames > 0 && (alive as f64) < db.opts.gc_live_ratio * frames as f64
            })
            .map(|f| f.meta.id)
            .collect()
    };
    if victims.is_empty() {
        return 0;
    }
    db.forest.mark_files_dirty(&victims)
}
