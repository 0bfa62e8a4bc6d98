//! The manifest: durable metadata (files, page table, catalogue, WAL frontier).
//!
//! Protocol (numbered as the code asserts it):
//! 1. An edit is appended as one record to the current manifest file and `fdatasync`ed
//!    before [`Manifest::commit`] returns; only then is the edit part of the state.
//! 2. Publish order: whatever an edit references (data and blob files) is written and
//!    synced by the caller *before* the edit is committed.
//! 3. When the file passes [`REWRITE_BYTES`], a new manifest file is written holding one
//!    snapshot record, synced (file and directory), and switched in by writing `CURRENT.tmp`, syncing it,
//!    renaming it over `CURRENT` and syncing the directory. A crash at any point leaves
//!    `CURRENT` naming a complete manifest (the old or the new one).
//! 4. Open makes the state it read durable (`fsync`) before anything acts on it.
//! 5. A torn last record (an append interrupted by a crash) is cut at open, after a second
//!    read agreed with the first. A read-only open (`writable == false`) reads the same
//!    state and changes nothing: no cut, no sync, and [`Manifest::commit`] is never called. A bad record with an intact one after it is
//!    [`Error::Corruption`]: each record is synced before the next is written, so only the
//!    last one can be torn.
//!
//! Record layout: see [`edit`].

pub mod edit;

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
pub use crate::files::FileMeta;
use crate::io::{IoDriver, OpenMode};
pub use edit::{BucketMeta, Edit, ManifestState, PageLoc};

/// Manifest size past which it is rewritten as a snapshot (or twice its snapshot, when
/// that is larger).
pub const REWRITE_BYTES: u64 = 4 * 1024 * 1024;
pub(crate) const CURRENT: &str = "CURRENT";
pub(crate) const CURRENT_TMP: &str = "CURRENT.tmp";

/// File name of manifest number `n`.
pub fn manifest_name(n: u64) -> String {
    format!("MANIFEST-{n:016x}")
}

struct Inner {
    /// The current manifest file. It is opened for each edit and closed after it, not held
    /// between edits: a database holds as few files open as it can (a thousand databases
    /// share a process's descriptor limit and `io_uring` file table, `io/direct.rs`).
    path: PathBuf,
    number: u64,
    len: u64,
    /// Length of the file when it was started or opened: the snapshot it began with (or
    /// all it held at open). It is rewritten once it doubles past that (and past
    /// `REWRITE_BYTES`), so a snapshot larger than `REWRITE_BYTES` (a database of a few
    /// hundred thousand pages) is not rewritten at every edit.
    base: u64,
    state: ManifestState,
}

/// The open manifest. Edits are serialised by an async mutex.
pub struct Manifest {
    io: IoDriver,
    dir: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
    /// The current manifest file's length, for `Db::stats` (a copy of `Inner::len`,
    /// readable without the async lock).
    disk_len: std::sync::atomic::AtomicU64,
}

impl Manifest {
    /// Opens the manifest of `dir`, or returns `None` where there is no `CURRENT`. With
    /// `writable == false` the file is opened read-only and nothing is changed (protocol 5).
    pub async fn open(io: &IoDriver, dir: &Path, writable: bool) -> Result<Option<Manifest>> {
        let cur_path = dir.join(CURRENT);
        if !io.exists(&cur_path).await? {
            return Ok(None);
        }
        let cur = io.open(&cur_path, OpenMode::Read).await?;
        let len = cur.len().await?;
        let raw = cur.read_exact_at(0, len.min(256) as usize).await?;
        let number = parse_current(&raw, &cur_path)?;
        let name = manifest_name(number);
        let path = dir.join(&name);
        let mode = if writable { OpenMode::ReadWrite } else { OpenMode::Read };
        let file = io.open(&path, mode).await.map_err(|e| match e {
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::corruption(&cur_path, 0, format!("CURRENT names {name}, which does not exist"))
            }
            other => other,
        })?;
        let flen = file.len().await?;
        let flen = usize::try_from(flen).map_err(|_| {
            Error::corruption(&path, 0, format!("manifest of {flen} bytes does not fit in memory"))
        })?;
        let buf = file.read_exact_at(0, flen).await?;
        let r = edit::replay(&buf, &path)?;
        if r.torn && writable {
            // Before cutting, read again: bytes that differ between two reads are a failing
            // device or bus, not a torn append, and must not cost an acknowledged edit.
            let again = file.read_exact_at(0, flen).await?;
            if again != buf {
                return Err(Error::corruption(
                    &path,
                    r.valid_len,
                    "the manifest read differently twice (unreliable reads); not cutting its tail",
                ));
            }
            tracing::warn!(file = %path.display(), at = r.valid_len, "cutting torn manifest tail");
            file.set_len(r.valid_len).await?;
        }
        // After a process crash the last record may sit unsynced in the page cache; open
        // acts on this state (it deletes files the state does not reference), so make it
        // durable first (regression `regression_restart_then_power_loss_keeps_referenced_files`).
        if writable {
            file.sync_all().await?;
        }
        drop(file);
        Ok(Some(Manifest {
            io: io.clone(),
            dir: dir.to_path_buf(),
            inner: tokio::sync::Mutex::new(Inner {
                path,
                number,
                len: r.valid_len,
                base: r.valid_len,
                state: r.state,
            }),
            disk_len: r.valid_len.into(),
        }))
    }

    /// Creates the manifest of a new database in `dir`.
    pub async fn create(io: &IoDriver, dir: &Path) -> Result<Manifest> {
        let state = ManifestState::new();
        let (path, len) = write_snapshot(io, dir, 1, &state).await?;
        Ok(Manifest {
            io: io.clone(),
            dir: dir.to_path_buf(),
            inner: tokio::sync::Mutex::new(Inner { path, number: 1, len, base: len, state }),
            disk_len: len.into(),
        })
    }

    /// The length of the current manifest file.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_len.load(std::sync::atomic::Ordering::Relaxed)
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
        let file = self.io.open(&g.path, OpenMode::ReadWrite).await?;
        file.writev_at(at, vec![Bytes::from(rec.clone())]).await?;
        file.sync_data().await?;
        drop(file);
        g.len += rec.len() as u64;
        for e in &edits {
            g.state.apply(e);
        }
        if g.len > REWRITE_BYTES.max(2 * g.base) {
            let number = g.number + 1;
            let (path, len) = write_snapshot(&self.io, &self.dir, number, &g.state).await?;
            let old = self.dir.join(manifest_name(g.number));
            g.path = path;
            g.len = len;
            g.base = len;
            g.number = number;
            if let Err(e) = self.io.remove_file(&old).await {
                tracing::warn!(error = %e, "could not remove the old manifest");
            }
        }
        self.disk_len.store(g.len, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Writes into `dir` a manifest of its own holding `state` as one snapshot record, and the
/// `CURRENT` naming it: the manifest of a backup (`Db::backup`), whose files were copied
/// there first.
pub async fn write_copy(io: &IoDriver, dir: &Path, state: &ManifestState) -> Result<()> {
    write_snapshot(io, dir, 1, state).await.map(|_| ())
}

/// The bytes of `CURRENT` naming manifest `number`: `MANIFEST-<16 hex> <crc32c 8 hex>\n`,
/// the checksum over the name.
pub(crate) fn current_contents(number: u64) -> String {
    let name = manifest_name(number);
    format!("{name} {:08x}\n", crc32c::crc32c(name.as_bytes()))
}

/// Decodes the contents of `CURRENT` (read from `cur_path`): the number of the manifest it
/// names. The bytes must be exactly [`current_contents`] of that number — the checksum
/// catches damage, and the canonical spelling matters because `Db::open` deletes every
/// other `MANIFEST-*` file, so accepting another spelling of the number (upper-case,
/// missing or extra leading zeros, a `+`) would delete the manifest just opened.
pub(crate) fn parse_current(raw: &[u8], cur_path: &Path) -> Result<u64> {
    let bad = || Error::corruption(cur_path, 0, "CURRENT does not name a manifest with a valid checksum");
    let text = std::str::from_utf8(raw).ok().and_then(|t| t.strip_suffix('\n')).ok_or_else(bad)?;
    let (name, _) = text.split_once(' ').ok_or_else(bad)?;
    let number =
        name.strip_prefix("MANIFEST-").and_then(|h| u64::from_str_radix(h, 16).ok()).ok_or_else(bad)?;
    if current_contents(number).as_bytes() != raw {
        return Err(bad());
    }
    Ok(number)
}

/// Writes manifest `number` holding one snapshot record and makes it current (protocol 3).
async fn write_snapshot(
    io: &IoDriver,
    dir: &Path,
    number: u64,
    state: &ManifestState,
) -> Result<(PathBuf, u64)> {
    let path = dir.join(manifest_name(number));
    let rec = edit::encode_record(&state.snapshot());
    let len = rec.len() as u64;
    let file = io.open(&path, OpenMode::Create).await?;
    file.set_len(0).await?;
    file.writev_at(0, vec![Bytes::from(rec)]).await?;
    file.sync_all().await?;
    drop(file);
    // The new manifest's directory entry must be durable before CURRENT can name it: a
    // file system may persist the rename below and lose this creation (regression
    // `regression_current_never_names_a_lost_manifest`).
    io.sync_dir(dir).await?;
    let tmp = dir.join(CURRENT_TMP);
    let cur = io.open(&tmp, OpenMode::Create).await?;
    cur.set_len(0).await?;
    cur.writev_at(0, vec![Bytes::from(current_contents(number))]).await?;
    cur.sync_all().await?;
    drop(cur);
    io.rename(&tmp, &dir.join(CURRENT)).await?;
    io.sync_dir(dir).await?;
    Ok((path, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_parses_what_write_snapshot_writes() {
        for n in [1, 0xABCD, u64::MAX] {
            let raw = current_contents(n);
            assert_eq!(parse_current(raw.as_bytes(), Path::new("CURRENT")).unwrap(), n);
        }
    }

    /// Found by the `current` fuzz target: a non-canonical spelling of the number was
    /// accepted, and `Db::open` then deleted that manifest as stale (the next open failed).
    #[test]
    fn current_with_non_canonical_manifest_name_is_corruption() {
        // Each with a valid checksum of its (non-canonical) name, so only the spelling is
        // wrong.
        for name in [
            "MANIFEST-00000000000F0001",
            "MANIFEST-00000000000000001",
            "MANIFEST-1",
            "MANIFEST-+000000000000001",
        ] {
            let raw = format!("{name} {:08x}\n", crc32c::crc32c(name.as_bytes()));
            let err = parse_current(raw.as_bytes(), Path::new("CURRENT")).unwrap_err();
            assert!(err.is_corruption(), "{raw:?}: {err}");
        }
        assert_eq!(
            parse_current(current_contents(0xF0001).as_bytes(), Path::new("CURRENT")).unwrap(),
            0xF0001
        );
        let mut flipped = current_contents(7).into_bytes();
        flipped[20] ^= 1;
        assert!(parse_current(&flipped, Path::new("CURRENT")).unwrap_err().is_corruption());
    }
}
