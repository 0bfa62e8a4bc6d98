//! Online backup (`Db::backup`): a consistent copy of the database at one cut, taken while
//! commits go on, that opens as a database of its own.
//!
//! Protocol:
//! 1. Refuse a destination that exists and is not an empty directory; create it and lock
//!    it (exclusively, as a writer's open would) until the copy is complete, so nothing
//!    opens a half-written backup.
//! 2. Take `bucket_lock` (no bucket is created or dropped) and then `ckpt_lock` (no other
//!    checkpoint runs, so no file or WAL segment is added or deleted, and the manifest does
//!    not change).
//! 3. Run a checkpoint under the held lock: its cut is the backup's cut. Afterwards the
//!    data and blob files the manifest names hold every version at or below the cut and
//!    the WAL frontier is the cut: the files alone are the database at the cut, and the
//!    backup needs no WAL record (its WAL directory starts empty).
//! 4. Copy every data and blob file the manifest names (they are immutable once written)
//!    through the I/O interface in `COPY_CHUNK` pieces, `fdatasync` each; sync the
//!    directory.
//! 5. Write the backup's own manifest (one snapshot record of the state read in step 3)
//!    and its `CURRENT`, synced: data first, metadata last, so a crash during the backup
//!    leaves a directory without a `CURRENT`, which opens as nothing.
//!
//! Commits go on throughout: they take neither lock. A commit that finds the dirty-page
//! bound exceeded runs a checkpoint first, so it waits for the copy to end; with a backup
//! of many gigabytes, expect writers at that bound to stall for its length.

use std::path::Path;

use super::{checkpoint, DbInner};
use crate::error::{Error, Result};
use crate::io::{LockMode, OpenMode};

/// Bytes copied per read and write of a backup.
const COPY_CHUNK: usize = 1 << 20;

/// What a backup did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BackupStats {
    /// The cut: the backup holds exactly the commits with a timestamp at or below it.
    pub cut_ts: u64,
    /// Data and blob files copied.
    pub files: usize,
    /// Bytes copied.
    pub bytes: u64,
}

/// Runs a backup into `dest` (the module doc's steps).
pub(crate) async fn run(db: &DbInner, dest: &Path) -> Result<BackupStats> {
    db.check_open()?;
    db.check_writable()?;
    let io = &db.io;
    if io.exists(dest).await? && !io.read_dir(dest).await?.is_empty() {
        return Err(Error::invalid(format!("the backup destination {dest:?} exists and is not empty")));
    }
    io.create_dir_all(dest).await?;
    let _dest_lock = io.lock_dir(dest, LockMode::Exclusive).await?;
    let _buckets = db.bucket_lock.lock().await;
    let ckpt = db.ckpt_lock.lock().await;
    db.check_open()?;
    let cut_ts = checkpoint::run_locked(db, &ckpt).await?.cut_ts;
    let state = db.manifest.state().await;
    debug_assert_eq!(state.checkpoint_ts, cut_ts, "a checkpoint moves the frontier to its cut");
    let mut stats = BackupStats { cut_ts: state.checkpoint_ts, ..BackupStats::default() };
    for meta in state.files.values() {
        let name = meta.kind.file_name(meta.id);
        stats.bytes += copy_file(db, &db.dir.join(&name), &dest.join(&name)).await?;
        stats.files += 1;
    }
    io.create_dir_all(&dest.join("wal")).await?;
    io.sync_dir(dest).await?;
    crate::manifest::write_copy(io, dest, &state).await?;
    tracing::info!(dest = %dest.display(), cut_ts = stats.cut_ts, files = stats.files, bytes = stats.bytes, "backup written");
    Ok(stats)
}

/// Copies `from` to the new file `to`, synced; returns the bytes copied.
async fn copy_file(db: &DbInner, from: &Path, to: &Path) -> Result<u64> {
    let src = db.io.open(from, OpenMode::Read).await?;
    let len = src.len().await?;
    let dst = db.io.open(to, OpenMode::CreateNew).await?;
    let mut at = 0u64;
    while at < len {
        // At most COPY_CHUNK: fits usize.
        #[allow(clippy::cast_possible_truncation)]
        let n = (len - at).min(COPY_CHUNK as u64) as usize;
        let buf = src.read_exact_at(at, n).await?;
        dst.writev_at(at, vec![bytes::Bytes::from(buf)]).await?;
        at += n as u64;
    }
    dst.sync_all().await?;
    Ok(len)
}
