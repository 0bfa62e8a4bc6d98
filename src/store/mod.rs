//! The page store: logical addresses, the data and blob files that hold them, and reads of
//! one frame by address.
//!
//! Read path on a miss: address -> file (interval map) -> relocation entry (table loaded
//! once per file, then cached) -> one async positional read (`O_DIRECT` where the backend and
//! the file system allow: `OpenMode::ReadDirect`) -> CRC32C check. A mismatch is
//! `Error::Corruption` naming the file and the frame's offset; it is never returned as data.
//!
//! Files are immutable once written. A file is published by a manifest edit only after it
//! was written and synced (see `crate::engine::checkpoint`), and removed from disk only after the edit
//! that forgets it is durable.

pub mod data_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::files::FileMeta;
use crate::io::{IoDriver, IoFile, OpenMode};
use data_file::{FileBuilder, FileKind, RelocEntry, FOOTER_LEN};

/// Largest single write submitted for a file (fits one registered buffer).
const WRITE_CHUNK: usize = 256 * 1024;
/// Writes of one file in flight at once.
const WRITES_IN_FLIGHT: usize = 8;
/// A writer of a large file flushes once it holds this many bytes of frames: one round of
/// `WRITES_IN_FLIGHT` writes of `WRITE_CHUNK` bytes.
pub const FLUSH_BYTES: u64 = (WRITE_CHUNK * WRITES_IN_FLIGHT) as u64;

/// One published file.
pub struct StoredFile {
    /// Its description in the manifest.
    pub meta: FileMeta,
    /// Its path.
    pub path: PathBuf,
    handle: tokio::sync::OnceCell<IoFile>,
    relocs: tokio::sync::OnceCell<Arc<Vec<RelocEntry>>>,
}

/// A frame read back from a file.
pub struct Frame {
    /// The frame's bytes (checksum verified).
    pub bytes: Bytes,
    /// The file it came from.
    pub file: PathBuf,
    /// Its offset there.
    pub offset: u64,
}

#[derive(Default)]
struct Files {
    by_id: BTreeMap<u64, Arc<StoredFile>>,
    /// How many of `by_id` are blob files ([`Store::has_blob_files`]).
    blobs: usize,
    /// range start -> (range end, file id)
    intervals: BTreeMap<u64, (u64, u64)>,
}

/// The files of one database.
pub struct Store {
    io: IoDriver,
    dir: PathBuf,
    files: RwLock<Files>,
    next_addr: AtomicU64,
    next_file: AtomicU64,
}

impl Store {
    /// A store over the files of the manifest.
    pub fn new(
        io: IoDriver,
        dir: PathBuf,
        files: impl Iterator<Item = FileMeta>,
        next_addr: u64,
        next_file: u64,
    ) -> Store {
        let s = Store {
            io,
            dir,
            files: RwLock::new(Files::default()),
            next_addr: AtomicU64::new(next_addr.max(1)),
            next_file: AtomicU64::new(next_file.max(1)),
        };
        for m in files {
            s.add_file(m, None);
        }
        s
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The I/O driver.
    pub fn io(&self) -> &IoDriver {
        &self.io
    }

    /// Allocates a logical address.
    pub fn alloc_addr(&self) -> u64 {
        self.next_addr.fetch_add(1, Ordering::AcqRel)
    }

    /// Next logical address.
    pub fn next_addr(&self) -> u64 {
        self.next_addr.load(Ordering::Acquire)
    }

    /// Next file id.
    pub fn next_file(&self) -> u64 {
        self.next_file.load(Ordering::Acquire)
    }

    /// Path of a file.
    pub fn path_of(&self, kind: FileKind, id: u64) -> PathBuf {
        self.dir.join(kind.file_name(id))
    }

    /// Makes a file readable (after its manifest edit is durable).
    pub fn add_file(&self, meta: FileMeta, relocs: Option<Vec<RelocEntry>>) {
        let path = self.path_of(meta.kind, meta.id);
        let f = StoredFile { path, meta, handle: Default::default(), relocs: Default::default() };
        if let Some(r) = relocs {
            let _ = f.relocs.set(Arc::new(r));
        }
        let f = Arc::new(f);
        let mut g = self.files.write();
        for &(s, e) in &f.meta.ranges {
            g.intervals.insert(s, (e, f.meta.id));
        }
        g.blobs += usize::from(f.meta.kind == FileKind::Blob);
        g.by_id.insert(f.meta.id, f);
    }

    /// Puts the new file `meta` in place of file `old` in one step (a GC rewrite of a blob
    /// file at the same addresses: `meta`'s ranges lie inside `old`'s, so a reader resolves
    /// each address to one file or the other, never to none); returns `old`'s path.
    pub fn replace_file(&self, old: u64, meta: FileMeta, relocs: Vec<RelocEntry>) -> Option<PathBuf> {
        let f = Arc::new(StoredFile {
            path: self.path_of(meta.kind, meta.id),
            meta,
            handle: tokio::sync::OnceCell::new(),
            relocs: tokio::sync::OnceCell::new_with(Some(Arc::new(relocs))),
        });
        let mut g = self.files.write();
        let gone = g.by_id.remove(&old)?;
        g.blobs -= usize::from(gone.meta.kind == FileKind::Blob);
        g.blobs += usize::from(f.meta.kind == FileKind::Blob);
        for &(s, _) in &gone.meta.ranges {
            g.intervals.remove(&s);
        }
        for &(s, e) in &f.meta.ranges {
            g.intervals.insert(s, (e, f.meta.id));
        }
        g.by_id.insert(f.meta.id, f);
        Some(gone.path.clone())
    }

    /// Forgets a file (after the edit removing it is durable); returns its path.
    pub fn forget_file(&self, id: u64) -> Option<PathBuf> {
        let mut g = self.files.write();
        let f = g.by_id.remove(&id)?;
        g.blobs -= usize::from(f.meta.kind == FileKind::Blob);
        for &(s, _) in &f.meta.ranges {
            g.intervals.remove(&s);
        }
        Some(f.path.clone())
    }

    /// Whether any blob file is published. With none, no frame of the page table refers to
    /// a blob value (a checkpoint publishes the blob file before the frames that refer to
    /// it), so the blob references of a page need not be looked for (`engine::gc`).
    pub fn has_blob_files(&self) -> bool {
        self.files.read().blobs > 0
    }

    /// The id of the file holding `addr`.
    pub fn file_of(&self, addr: u64) -> Option<u64> {
        let g = self.files.read();
        let (_, &(end, id)) = g.intervals.range(..=addr).next_back()?;
        (addr < end).then_some(id)
    }

    /// All files.
    pub fn files(&self) -> Vec<Arc<StoredFile>> {
        self.files.read().by_id.values().cloned().collect()
    }

    async fn handle(&self, f: &StoredFile) -> Result<IoFile> {
        // Published files are immutable: read around the page cache (the engine caches pages
        // itself), where the backend and the file system allow.
        f.handle.get_or_try_init(|| self.io.open(&f.path, OpenMode::ReadDirect)).await.cloned()
    }

    async fn relocs(&self, f: &StoredFile) -> Result<Arc<Vec<RelocEntry>>> {
        f.relocs
            .get_or_try_init(|| async {
                let h = self.handle(f).await?;
                let size = f.meta.size;
                if size < FOOTER_LEN as u64 {
                    return Err(Error::corruption(&f.path, 0, "file shorter than its footer"));
                }
                let on_disk = h.len().await?;
                if on_disk < size {
                    return Err(Error::corruption(
                        &f.path,
                        on_disk,
                        format!("file is {on_disk} bytes, the manifest says {size}"),
                    ));
                }
                let fb = h.read_exact_at(size - FOOTER_LEN as u64, FOOTER_LEN).await?;
                let footer = data_file::parse_footer(&fb, &f.path, size)?;
                let tlen = size - FOOTER_LEN as u64 - footer.ranges_offset;
                let tlen = usize::try_from(tlen).map_err(|_| {
                    Error::corruption(
                        &f.path,
                        footer.ranges_offset,
                        format!("tables of {tlen} bytes do not fit in memory"),
                    )
                })?;
                let tb = h.read_exact_at(footer.ranges_offset, tlen).await?;
                let (ranges, relocs) = data_file::parse_tables(&tb, &footer, &f.path)?;
                if ranges != f.meta.ranges || footer.kind != f.meta.kind {
                    return Err(Error::corruption(
                        &f.path,
                        footer.ranges_offset,
                        "file tables disagree with the manifest",
                    ));
                }
                Ok(Arc::new(relocs))
            })
            .await
            .cloned()
    }

    /// Reads and verifies the frame of logical address `addr`. A read that fails while GC
    /// moved the address to another file (and deleted the one it was reading) is retried
    /// there.
    pub async fn read_frame(&self, addr: u64) -> Result<Frame> {
        let mut tries = 0;
        loop {
            let (from, r) = self.read_frame_once(addr).await;
            match r {
                Err(e) if tries < 3 && from.is_some() && self.file_of(addr) != from => {
                    tracing::debug!(addr, error = %e, "a frame moved while it was read; reading it again");
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    /// One try of [`Store::read_frame`]; also returns the id of the file it read from.
    async fn read_frame_once(&self, addr: u64) -> (Option<u64>, Result<Frame>) {
        let f = {
            let g = self.files.read();
            let id = g
                .intervals
                .range(..=addr)
                .next_back()
                .filter(|(_, &(end, _))| addr < end)
                .map(|(_, &(_, id))| id);
            id.and_then(|id| g.by_id.get(&id).cloned())
        };
        let Some(f) = f else {
            return (None, Err(Error::corruption(&self.dir, addr, format!("logical address {addr} is in no file"))));
        };
        (Some(f.meta.id), self.read_in(&f, addr).await)
    }

    async fn read_in(&self, f: &StoredFile, addr: u64) -> Result<Frame> {
        let relocs = self.relocs(f).await?;
        let i = relocs.binary_search_by_key(&addr, |e| e.addr).map_err(|_| {
            Error::corruption(&f.path, 0, format!("address {addr} missing from the relocation table"))
        })?;
        let e = relocs[i];
        let h = self.handle(f).await?;
        let bytes = h.read_exact_at(e.offset, e.len as usize).await.map_err(|err| match err {
            Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                Error::corruption(&f.path, e.offset, "frame extends past the end of the file")
            }
            other => other,
        })?;
        data_file::check_frame(&bytes, &e, &f.path)?;
        Ok(Frame { bytes: Bytes::from(bytes), file: f.path.clone(), offset: e.offset })
    }

    /// Starts a new file of `kind` (created now, written by the [`FileWriter`], published
    /// by the caller once [`FileWriter::finish`] returned).
    pub async fn create_file(&self, kind: FileKind) -> Result<FileWriter> {
        let id = self.next_file.fetch_add(1, Ordering::AcqRel);
        let path = self.path_of(kind, id);
        let file = self.io.open(&path, OpenMode::CreateNew).await?;
        Ok(FileWriter { id, kind, file, builder: FileBuilder::new(kind) })
    }

    /// Live page count per data file, given page addresses.
    pub fn live_counts(&self, addrs: impl Iterator<Item = u64>) -> FxHashMap<u64, usize> {
        let mut m = FxHashMap::default();
        for a in addrs {
            if let Some(id) = self.file_of(a) {
                *m.entry(id).or_insert(0) += 1;
            }
        }
        m
    }
}

/// A data or blob file being written: frames are added, written out whenever
/// [`FileWriter::flush`] is called (so a checkpoint holds at most what it added since),
/// and the tables, the footer and an `fdatasync` come with [`FileWriter::finish`].
/// Dropped unfinished, it leaves a file no manifest refers to, which the next open
/// deletes.
pub struct FileWriter {
    id: u64,
    kind: FileKind,
    file: crate::io::IoFile,
    builder: FileBuilder,
}

impl FileWriter {
    /// Adds the frame of logical address `addr` (addresses strictly increasing).
    pub fn add(&mut self, addr: u64, frame: Bytes) -> RelocEntry {
        self.builder.add(addr, frame)
    }

    /// True when no frame was added.
    pub fn is_empty(&self) -> bool {
        self.builder.is_empty()
    }

    /// Bytes of frames added and not yet written.
    pub fn held_len(&self) -> u64 {
        self.builder.held_len()
    }

    /// Writes the frames added since the last flush and drops them.
    pub async fn flush(&mut self) -> Result<()> {
        let (at, frames) = self.builder.take_frames();
        write_chunks(&self.file, at, frames).await
    }

    /// Writes what is left, the tables and the footer, and syncs the file. Returns its
    /// description and relocation entries.
    pub async fn finish(mut self) -> Result<(FileMeta, Vec<RelocEntry>)> {
        self.flush().await?;
        // Every frame was just written: the tables start where the frames end.
        let at = self.builder.payload_len();
        let (chunks, ranges, relocs) = self.builder.finish();
        let size = at + chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        write_chunks(&self.file, at, chunks).await?;
        self.file.sync_data().await?;
        Ok((FileMeta { id: self.id, kind: self.kind, size, ranges }, relocs))
    }
}

/// Writes `chunks` back to back from `offset`: reserved first (`fallocate`), then grouped
/// into writes of at most `WRITE_CHUNK` bytes (a registered buffer each), `WRITES_IN_FLIGHT`
/// at a time.
async fn write_chunks(file: &crate::io::IoFile, offset: u64, chunks: Vec<Bytes>) -> Result<()> {
    let size: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    if size == 0 {
        return Ok(());
    }
    let mut writes: Vec<(u64, Vec<Bytes>)> = Vec::new();
    let (mut off, mut cur, mut cur_len) = (offset, Vec::new(), 0usize);
    for c in chunks {
        if cur_len > 0 && cur_len + c.len() > WRITE_CHUNK {
            writes.push((off, std::mem::take(&mut cur)));
            off += cur_len as u64;
            cur_len = 0;
        }
        cur_len += c.len();
        cur.push(c);
    }
    if cur_len > 0 {
        writes.push((off, cur));
    }
    file.allocate(offset, size).await?;
    futures::stream::iter(writes.into_iter().map(|(o, bufs)| {
        let file = file.clone();
        async move { file.writev_at(o, bufs).await }
    }))
    .buffer_unordered(WRITES_IN_FLIGHT)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}
