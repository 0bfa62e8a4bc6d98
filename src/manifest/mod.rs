//! The manifest: durable metadata (files, page table, catalogue, WAL frontier).
//!
//! Protocol (numbered as the code asserts it):
//! 1. An edit is appended as one record to the current manifest file and `fdatasync`ed
//!    before [`Manifest::commit`] returns; only then is the edit part of the state.
//! 2. Publish order: whatever an edit references (data and blob files) is written and
//!    synced by the caller *before* the edit is committed.
//! 3. When the file passes [`REWRITE_BYTES`], a new manifest file is written holding one
//!    snapshot record, synced, and switched in by writing `CURRENT.tmp`, syncing it,
//!    renaming it over `CURRENT` and syncing the directory. A crash at any point leaves
//!    `CURRENT` naming a complete manifest (the old or the new one).
//! 4. A torn last record (an append interrupted by a crash) is cut at open.
//!
//! Record layout: see [`edit`].

pub mod edit;

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::io::{IoDriver, IoFile, OpenMode};
pub use edit::{BucketMeta, Edit, FileMeta, ManifestState, PageLoc};

/// Manifest size past which it is rewritten as a snapshot.
pub const REWRITE_BYTES: u64 = 4 * 1024 * 1024;
pub(crate) const CURRENT: &str = "CURRENT";
pub(crate) const CURRENT_TMP: &str = "CURRENT.tmp";

/// File name of manifest number `n`.
pub fn manifest_name(n: u64) -> String {
    format!("MANIFEST-{n:016x}")
}

struct Inner {
    file: IoFile,
    number: u64,
    len: u64,
    state: ManifestState,
}

/// The open manifest. Edits are serialised by an async mutex.
pub struct Manifest {
    io: IoDriver,
    dir: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
}

impl Manifest {
    /// Opens the manifest of `dir`, or returns `None` where there is no `CURRENT`.
    pub async fn open(io: &IoDriver, dir: &Path) -> Result<Option<Manifest>> {
        let cur_path = dir.join(CURRENT);
        if !io.exists(&cur_path).await? {
            return Ok(None);
        }
        let cur = io.open(&cur_path, OpenMode::Read).await?;
        let len = cur.len().await?;
        let raw = cur.read_exact_at(0, len.min(256) as usize).await?;
        let (name, number) = parse_current(&raw, &cur_path)?;
        let path = dir.join(name);
        let file = io.open(&path, OpenMode::ReadWrite).await?;
        let flen = file.len().await?;
        let buf = file.read_exact_at(0, flen as usize).await?;
        let r = edit::replay(&buf, &path)?;
        if r.torn {
            tracing::warn!(file = %path.display(), at = r.valid_len, "cutting torn manifest tail");
            file.set_len(r.valid_len).await?;
            file.sync_all().await?;
        }
        Ok(Some(Manifest {
            io: io.clone(),
            dir: dir.to_path_buf(),
            inner: tokio::sync::Mutex::new(Inner { file, number, len: r.valid_len, state: r.state }),
        }))
    }

    /// Creates the manifest of a new database in `dir`.
    pub async fn create(io: &IoDriver, dir: &Path) -> Result<Manifest> {
        let state = ManifestState::new();
        let (file, len) = write_snapshot(io, dir, 1, &state).await?;
        Ok(Manifest {
            io: io.clone(),
            dir: dir.to_path_buf(),
            inner: tokio::sync::Mutex::new(Inner { file, number: 1, len, state }),
        })
    }

    /// A copy of the current state.
    pub async fn state(&self) -> ManifestState {
        self.inner.lock().await.state.clone()
    }

    /// The WAL frontier of the last checkpoint and the next bucket id.
    pub async fn frontier_and_next_bucket(&self) -> (u64, u32) {
        let g = self.inner.lock().await;
        (g.state.checkpoint_ts, g.state.next_bucket)
    }

    /// The file name of the current manifest.
    pub async fn current_name(&self) -> String {
        manifest_name(self.inner.lock().await.number)
    }

    /// Durably applies `edits` as one record (protocol 1); may switch to a new file (3).
    pub async fn commit(&self, edits: Vec<Edit>) -> Result<()> {
        assert!(!edits.is_empty());
        let mut g = self.inner.lock().await;
        let rec = edit::encode_record(&edits);
        let at = g.len;
        g.file.writev_at(at, vec![Bytes::from(rec.clone())]).await?;
        g.file.sync_data().await?;
        g.len += rec.len() as u64;
        for e in &edits {
            g.state.apply(e);
        }
        if g.len > REWRITE_BYTES {
            let number = g.number + 1;
            let (file, len) = write_snapshot(&self.io, &self.dir, number, &g.state).await?;
            let old = self.dir.join(manifest_name(g.number));
            g.file = file;
            g.len = len;
            g.number = number;
            if let Err(e) = self.io.remove_file(&old).await {
                tracing::warn!(error = %e, "could not remove the old manifest");
            }
        }
        Ok(())
    }
}

/// Parses the bytes of `CURRENT` (at `cur_path`): the name of the current manifest and its
/// number. Anything else is [`Error::Corruption`] at offset 0.
pub(crate) fn parse_current<'a>(raw: &'a [u8], cur_path: &Path) -> Result<(&'a str, u64)> {
    let name = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|s| s.starts_with("MANIFEST-"))
        .ok_or_else(|| Error::corruption(cur_path, 0, "CURRENT does not name a manifest"))?;
    let number = u64::from_str_radix(&name["MANIFEST-".len()..], 16)
        .map_err(|_| Error::corruption(cur_path, 0, "CURRENT names a bad manifest number"))?;
    Ok((name, number))
}

/// Writes manifest `number` holding one snapshot record and makes it current (protocol 3).
async fn write_snapshot(
    io: &IoDriver,
    dir: &Path,
    number: u64,
    state: &ManifestState,
) -> Result<(IoFile, u64)> {
    let path = dir.join(manifest_name(number));
    let rec = edit::encode_record(&state.snapshot());
    let len = rec.len() as u64;
    let file = io.open(&path, OpenMode::Create).await?;
    file.set_len(0).await?;
    file.writev_at(0, vec![Bytes::from(rec)]).await?;
    file.sync_all().await?;
    let tmp = dir.join(CURRENT_TMP);
    let cur = io.open(&tmp, OpenMode::Create).await?;
    cur.set_len(0).await?;
    cur.writev_at(0, vec![Bytes::from(format!("{}\n", manifest_name(number)))]).await?;
    cur.sync_all().await?;
    drop(cur);
    io.rename(&tmp, &dir.join(CURRENT)).await?;
    io.sync_dir(dir).await?;
    Ok((file, len))
}
