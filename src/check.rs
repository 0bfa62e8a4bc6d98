//! The offline consistency checker: [`Db::check`] reads every on-disk structure of a closed
//! database and reports what is damaged, without changing a byte.
//!
//! # Properties
//!
//! 1. **Read-only.** Every file is opened with [`OpenMode::Read`]; nothing is written,
//!    truncated, renamed or removed (no recovery, no torn-tail cut, no stale-file cleanup).
//!    What recovery *would* change is reported as a note.
//! 2. **Complete.** A damaged structure is recorded in [`CheckReport::problems`] and the
//!    check goes on with everything that does not depend on it; only a missing directory or
//!    a missing `CURRENT` ends it early (as `Err`).
//! 3. **The engine's own decoders.** Footers, tables, frames, page images, manifest records
//!    and WAL records are decoded by the functions recovery and reads use, so the checker and
//!    the engine agree on what is valid. Every problem is [`Error::Corruption`] naming the
//!    file and the byte offset of the bad structure, or [`Error::Io`].
//!
//! # Steps (in the order they run)
//!
//! 1. `CURRENT` names a manifest, which exists.
//! 2. Manifest: every record's length and CRC, and its edits decode. A bad record at the very
//!    end is the torn tail of an interrupted append (a note: recovery cuts it); a bad record
//!    followed by intact ones is a problem (recovery would stop there and drop them). The
//!    state the intact records build is checked: page ids, addresses and file ids below their
//!    counters, address ranges disjoint.
//! 3. Data and blob files the manifest references: present, as long as the manifest says,
//!    footer CRC and bounds, address-range and relocation-table CRCs, ranges equal to the
//!    manifest's, every relocation entry inside the frames area and inside the ranges, every
//!    frame's CRC. Frames the page table points at are decoded as page images.
//! 4. Page table: every page's address resolves (address -> file through the ranges ->
//!    relocation entry) to a verified frame of a data file, of the recorded length, that
//!    decodes; a page written as delta frames has every frame of its chain resolved, each
//!    a delta frame linking to the frames the page table lists after it, the last a base;
//!    every blob a leaf or a delta frame references resolves to a verified blob frame of
//!    its length.
//! 5. WAL: segment names contiguous, each header (magic, sequence number), every record's
//!    frame, CRC and payload; timestamps above the checkpoint frontier strictly increase.
//!    Zeros from a bad record to the end of the last segment are its preallocated tail (a
//!    clean end, nothing to say); a bad record at the very end of the last segment is the
//!    torn tail (a note); a bad record anywhere else is a problem.
//! 6. Directory: files recovery would delete (unreferenced data and blob files, old
//!    manifests, `CURRENT.tmp`) are listed as notes.
//!
//! It takes the shared lock of a read-only open, so it runs beside read-only opens but not
//! beside a writer ([`Error::Locked`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::db::Db;
use crate::engine::open::is_stale;
use crate::error::{Error, Result};
use crate::files::{file_kind_of, parse_file_id};
use crate::io::{IoDriver, IoFile, LockMode, OpenMode};
use crate::manifest::edit::{record_at, RecordAt};
use crate::manifest::{parse_current, Edit, FileMeta, ManifestState, CURRENT};
use crate::options::Options;
use crate::store::data_file::{self, FileKind, Footer, RelocEntry, FOOTER_LEN, RELOC_ENTRY_LEN};
use crate::tree::node::{LeafBase, Value};
use crate::tree::page::{self, PageImage};
use crate::wal::reader::{damage_after, zero_tail, Item, SegmentReader};
use crate::wal::record::{decode_frame, decode_segment_header, RecordError, FRAME_LEN, SEGMENT_HEADER_LEN};
use crate::wal::{parse_segment_file_name, segment_file_name};

/// Bytes of frames read per I/O while a data or blob file is checked (more for one larger
/// frame).
const READ_CHUNK_BYTES: u64 = 4 << 20;
/// Problems listed by `Display` (the report keeps them all; later ones often follow from the
/// first).
const DISPLAY_PROBLEMS_MAX: usize = 20;
/// Longest `CURRENT` read (a manifest name and a newline are 26 bytes).
const CURRENT_MAX_LEN: u64 = 256;

/// What [`Db::check`] found: counts of what it verified, the problems and the notes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CheckReport {
    /// The database directory.
    pub path: PathBuf,
    /// The manifest `CURRENT` names, when it names one.
    pub manifest: Option<String>,
    /// Intact manifest records.
    pub manifest_records: u64,
    /// The WAL frontier of the last checkpoint (from the manifest).
    pub checkpoint_ts: u64,
    /// Buckets in the catalogue.
    pub buckets: usize,
    /// Data and blob files examined (those the manifest references; every one on disk when
    /// the manifest is unreadable).
    pub files: usize,
    /// Of which data files.
    pub data_files: usize,
    /// Of which blob files.
    pub blob_files: usize,
    /// Relocation entries read from intact relocation tables.
    pub relocation_entries: u64,
    /// Frames whose CRC checks.
    pub frames: u64,
    /// Page-table entries resolved to a verified frame that decodes as a page image.
    pub pages: u64,
    /// Of which leaves.
    pub leaf_pages: u64,
    /// Of which index nodes.
    pub inner_pages: u64,
    /// Delta frames of pages written as chains (each also counted in `frames`; a page is
    /// counted in `pages` once, when every frame of its chain checks).
    pub delta_frames: u64,
    /// Pages that could not be checked because their file is damaged (reported once, as the
    /// file's problem).
    pub unchecked_pages: u64,
    /// Distinct blob references of leaves resolved to a verified blob frame.
    pub blobs: u64,
    /// WAL segments.
    pub wal_segments: u64,
    /// Intact WAL records.
    pub wal_records: u64,
    /// Of which above the checkpoint frontier (what recovery replays).
    pub wal_records_to_replay: u64,
    /// Bytes read and verified (CRC or structure).
    pub bytes_checked: u64,
    /// Damage: each an [`Error::Corruption`] naming file and offset, or an [`Error::Io`].
    pub problems: Vec<Error>,
    /// Facts that are not damage: a torn tail recovery will cut, stale files recovery will
    /// delete, bytes past a file's recorded end.
    pub notes: Vec<String>,
}

impl CheckReport {
    /// True when no problem was found (notes are allowed).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict =
            if self.is_ok() { "clean".to_string() } else { format!("{} problem(s)", self.problems.len()) };
        writeln!(f, "ringkv check of {}: {verdict}", self.path.display())?;
        writeln!(
            f,
            "  manifest   {} ({} records, checkpoint ts {}, {} buckets)",
            self.manifest.as_deref().unwrap_or("(none)"),
            self.manifest_records,
            self.checkpoint_ts,
            self.buckets
        )?;
        writeln!(
            f,
            "  files      {} ({} data, {} blob), {} relocation entries, {} frames verified",
            self.files, self.data_files, self.blob_files, self.relocation_entries, self.frames
        )?;
        write!(
            f,
            "  pages      {} resolved ({} leaves, {} index nodes, {} delta frames), {} blobs resolved",
            self.pages, self.leaf_pages, self.inner_pages, self.delta_frames, self.blobs
        )?;
        if self.unchecked_pages > 0 {
            write!(f, ", {} unchecked (damaged file)", self.unchecked_pages)?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  wal        {} segments, {} records ({} above the checkpoint)",
            self.wal_segments, self.wal_records, self.wal_records_to_replay
        )?;
        writeln!(f, "  checked    {} bytes", self.bytes_checked)?;
        if !self.notes.is_empty() {
            writeln!(f, "notes:")?;
            for n in &self.notes {
                writeln!(f, "  - {n}")?;
            }
        }
        if !self.problems.is_empty() {
            writeln!(f, "problems:")?;
            for p in self.problems.iter().take(DISPLAY_PROBLEMS_MAX) {
                writeln!(f, "  - {p}")?;
            }
            if self.problems.len() > DISPLAY_PROBLEMS_MAX {
                writeln!(f, "  ... and {} more", self.problems.len() - DISPLAY_PROBLEMS_MAX)?;
            }
        }
        Ok(())
    }
}

impl Db {
    /// Checks the database in directory `path` without opening it and without changing
    /// anything on disk (every CRC, every relocation entry, every page reachable from the manifest, the
    /// manifest itself and the WAL). Damage is reported in
    /// [`CheckReport::problems`], not as `Err`; `Err` means the check could not run: the
    /// directory cannot be read or has no `CURRENT`, or a writer has the database open
    /// ([`Error::Locked`]: the check takes the shared lock of a read-only open, so no writer
    /// changes the files while it reads them; a database of this process dropped without
    /// `close` is waited for by the lock, as in `Db::open`). Only `opts.io_backend` is used.
    pub async fn check(path: impl AsRef<Path>, opts: &Options) -> Result<CheckReport> {
        let io = opts.io_driver()?;
        let _lock = match crate::engine::open::lock_dir(&io, path.as_ref(), LockMode::Shared).await {
            Ok(lock) => Some(lock),
            Err(e @ Error::Locked { .. }) => return Err(e),
            // A directory that cannot be locked cannot be read either: the checker reports it.
            Err(_) => None,
        };
        Checker::new(io, path.as_ref()).run().await
    }
}

/// A frame of a checked file.
#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    offset: u64,
    len: u32,
    /// The CRC checks.
    ok: bool,
    /// For a frame the page table points at: whether it decodes as a page image.
    decoded: Option<bool>,
}

/// A data or blob file whose footer and tables check.
struct CheckedFile {
    path: PathBuf,
    kind: FileKind,
    reloc_offset: u64,
    frames: FxHashMap<u64, FrameInfo>,
}

/// A blob reference found in a leaf.
#[derive(Debug, Clone)]
struct BlobRef {
    len: u32,
    /// How many versions of the frames of the page table hold it.
    count: u64,
    pid: u64,
    /// The data file and frame offset of the leaf holding the reference.
    file: PathBuf,
    offset: u64,
}

/// What the manifest said, for the later steps.
struct ManifestView {
    path: PathBuf,
    name: String,
    state: ManifestState,
    /// Offset of the record that last set each page.
    page_record: FxHashMap<u64, u64>,
}

/// A page id a page image refers to (an index node's child, or a right sibling).
#[derive(Debug, Clone)]
struct PageLink {
    to: u64,
    from: u64,
    what: &'static str,
    /// The data file and frame offset of the referring page.
    file: PathBuf,
    offset: u64,
}

/// A frame of a page's image, as the page table lists it: (page id, length, the links the
/// frame must have: empty for a base).
type PageFrame = (u64, u32, Vec<(u64, u32)>);

struct Checker {
    io: IoDriver,
    dir: PathBuf,
    report: CheckReport,
    /// Frame addresses of the page table's images -> (page id, length, the links the frame
    /// must have: empty for a base, a delta frame's links for one of a chain).
    page_at: FxHashMap<u64, PageFrame>,
    /// Blob references of the decoded leaves, by blob address.
    blob_refs: FxHashMap<u64, BlobRef>,
    /// Page ids the decoded pages refer to.
    links: Vec<PageLink>,
}

impl Checker {
    fn new(io: IoDriver, dir: &Path) -> Checker {
        Checker {
            io,
            dir: dir.to_path_buf(),
            report: CheckReport { path: dir.to_path_buf(), ..Default::default() },
            page_at: FxHashMap::default(),
            blob_refs: FxHashMap::default(),
            links: Vec::new(),
        }
    }

    fn problem(&mut self, e: Error) {
        tracing::debug!(error = %e, "check: problem");
        self.report.problems.push(e);
    }

    fn note(&mut self, n: String) {
        self.report.notes.push(n);
    }

    async fn run(mut self) -> Result<CheckReport> {
        let names = self.io.read_dir(&self.dir).await?;
        let cur_path = self.dir.join(CURRENT);
        if !self.io.exists(&cur_path).await? {
            return Err(Error::io(
                &cur_path,
                "open",
                std::io::Error::new(std::io::ErrorKind::NotFound, "no CURRENT: not a ringkv database"),
            ));
        }
        let manifest = self.check_manifest(&cur_path).await;
        let mut checked: BTreeMap<u64, CheckedFile> = BTreeMap::new();
        match &manifest {
            Some(m) => {
                // Page addresses -> page ids, so that a data file's frames the page table
                // points at are decoded while the file is read.
                let mut pages: Vec<_> = m.state.pages.iter().map(|(p, l)| (*p, l.clone())).collect();
                pages.sort_unstable_by_key(|p| p.0);
                for (pid, loc) in pages {
                    // The newest frame must link to the rest; link i to the links after it.
                    let mut frames = vec![(loc.addr, loc.len, loc.links.clone())];
                    frames.extend(
                        loc.links.iter().enumerate().map(|(i, l)| (l.0, l.1, loc.links[i + 1..].to_vec())),
                    );
                    for (addr, len, links) in frames {
                        if let Some((other, ..)) = self.page_at.insert(addr, (pid, len, links)) {
                            let at = m.page_record.get(&pid).copied().unwrap_or(0);
                            self.problem(Error::corruption(
                                &m.path,
                                at,
                                format!("pages {other} and {pid} share a frame at address {addr}"),
                            ));
                        }
                    }
                }
                for meta in m.state.files.values() {
                    if let Some(c) = self.check_file(meta.kind, meta.id, Some(meta)).await {
                        checked.insert(meta.id, c);
                    }
                }
                self.resolve_pages(m, &checked);
                self.resolve_blobs(m, &checked);
                self.resolve_links(m);
            }
            None => {
                // No usable manifest: every data and blob file on disk is checked on its own.
                for name in &names {
                    if let (Some(id), Some(kind)) = (parse_file_id(name), file_kind_of(name)) {
                        self.check_file(kind, id, None).await;
                    }
                }
            }
        }
        let frontier = manifest.as_ref().map_or(0, |m| m.state.checkpoint_ts);
        self.check_wal(frontier).await;
        if let Some(m) = &manifest {
            for name in &names {
                if is_stale(name, &m.state, &m.name) {
                    self.note(format!("{name}: stale (no manifest references it); recovery will delete it"));
                }
            }
        }
        Ok(self.report)
    }

    /// Steps 1 and 2: `CURRENT` and the manifest. `None` when no state can be built.
    async fn check_manifest(&mut self, cur_path: &Path) -> Option<ManifestView> {
        let raw = match self.read_all(cur_path, Some(CURRENT_MAX_LEN)).await {
            Ok(raw) => raw,
            Err(e) => {
                self.problem(e);
                return None;
            }
        };
        self.report.bytes_checked += raw.len() as u64;
        let name = match parse_current(&raw, cur_path) {
            Ok(number) => crate::manifest::manifest_name(number),
            Err(e) => {
                self.problem(e);
                return None;
            }
        };
        self.report.manifest = Some(name.clone());
        let path = self.dir.join(&name);
        if !self.exists(&path).await {
            self.problem(Error::corruption(&path, 0, "missing: CURRENT names it"));
            return None;
        }
        let buf = match self.read_all(&path, None).await {
            Ok(b) => b,
            Err(e) => {
                self.problem(e);
                return None;
            }
        };
        self.report.bytes_checked += buf.len() as u64;

        let (state, page_record, first_bad) = self.replay_manifest(&path, &buf);
        if first_bad {
            // Without the snapshot record there is no state to check files against.
            return None;
        }
        self.check_state(&path, &state);
        self.report.checkpoint_ts = state.checkpoint_ts;
        self.report.buckets = state.buckets.len();
        Some(ManifestView { path, name, state, page_record })
    }

    /// Step 2, the records: each intact one applied to the state (and the record that last
    /// set each page remembered); a malformed or damaged one a problem, or, at the very end,
    /// the torn tail recovery will cut (a note). Returns the state, the page records, and
    /// whether the first record (the snapshot) was bad.
    fn replay_manifest(&mut self, path: &Path, buf: &[u8]) -> (ManifestState, FxHashMap<u64, u64>, bool) {
        let mut state = ManifestState::new();
        let mut page_record: FxHashMap<u64, u64> = FxHashMap::default();
        let mut first_bad = false;
        let mut pos = 0usize;
        // Bounded: every iteration moves `pos` forward by a whole record, or ends the loop.
        while pos < buf.len() {
            match record_at(buf, pos) {
                RecordAt::Intact { edits, len } => {
                    for e in &edits {
                        if let Edit::SetPages(v) = e {
                            for (pid, _) in v {
                                page_record.insert(*pid, pos as u64);
                            }
                        }
                        state.apply(e);
                    }
                    self.report.manifest_records += 1;
                    pos += len;
                }
                RecordAt::Malformed { at, len } => {
                    self.problem(Error::corruption(
                        path,
                        (pos + 8 + at) as u64,
                        "malformed manifest edit with a valid checksum",
                    ));
                    first_bad |= pos == 0;
                    pos += len;
                }
                RecordAt::Bad { claimed_len, what } => {
                    let next = claimed_len
                        .map(|l| pos + l)
                        .filter(|&n| n < buf.len() && matches!(record_at(buf, n), RecordAt::Intact { .. }));
                    if pos == 0 {
                        self.problem(Error::corruption(
                            path,
                            0,
                            format!("{what} in the first record (the snapshot): recovery refuses to open"),
                        ));
                        first_bad = true;
                    } else if next.is_some() {
                        self.problem(Error::corruption(
                            path,
                            pos as u64,
                            format!(
                                "{what}, and intact records follow it: recovery would take it for a torn \
                                 tail and drop every later edit"
                            ),
                        ));
                    } else {
                        self.note(format!(
                            "{}: torn tail at offset {pos} ({} bytes, {what}); recovery will cut it",
                            path.display(),
                            buf.len() - pos
                        ));
                    }
                    match next {
                        Some(n) => pos = n,
                        None => break,
                    }
                }
            }
        }
        (state, page_record, first_bad)
    }

    /// Invariants of the manifest state: everything allocated lies below its counter (else
    /// a later allocation would reuse it) and file address ranges are sorted and disjoint.
    fn check_state(&mut self, path: &Path, s: &ManifestState) {
        let mut bad = Vec::new();
        let mut owner: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for f in s.files.values() {
            if f.id >= s.next_file {
                bad.push(format!("file id {} is not below next_file {}", f.id, s.next_file));
            }
            for (i, &(start, end)) in f.ranges.iter().enumerate() {
                if start >= end || (i > 0 && f.ranges[i - 1].1 > start) || end > s.next_addr {
                    bad.push(format!(
                        "file {}: bad address range {start}..{end} (next_addr {})",
                        f.id, s.next_addr
                    ));
                }
                let before = owner.range(..end).next_back().map(|(&st, &(e, id))| (st, e, id));
                if let Some((_, e, other)) = before.filter(|&(_, e, _)| e > start) {
                    bad.push(format!("files {other} and {} both hold addresses below {e}", f.id));
                }
                owner.insert(start, (end, f.id));
            }
        }
        let mut pages: Vec<_> = s.pages.iter().collect();
        pages.sort_unstable_by_key(|p| p.0);
        for (pid, loc) in pages {
            if *pid >= s.next_pid || loc.addr >= s.next_addr {
                bad.push(format!(
                    "page {pid} at address {} is not below next_pid {} / next_addr {}",
                    loc.addr, s.next_pid, s.next_addr
                ));
            }
        }
        for b in s.buckets.values() {
            if b.id >= s.next_bucket || b.root >= s.next_pid {
                bad.push(format!("bucket {} ({:?}) is not below the counters", b.id, b.name));
            }
        }
        for what in bad {
            self.problem(Error::corruption(path, 0, format!("manifest state: {what}")));
        }
    }

    /// Step 3 for one file. `meta` is the manifest's description (`None` when the manifest
    /// is unusable). Returns the file's frames when its footer and tables check.
    async fn check_file(&mut self, kind: FileKind, id: u64, meta: Option<&FileMeta>) -> Option<CheckedFile> {
        let path = self.dir.join(kind.file_name(id));
        self.report.files += 1;
        match kind {
            FileKind::Data => self.report.data_files += 1,
            FileKind::Blob => self.report.blob_files += 1,
        }
        let (file, size) = self.open_sized(&path, meta).await?;
        let footer = self.read_footer(&file, &path, size).await?;
        if footer.kind != kind {
            self.problem(Error::corruption(
                &path,
                size - FOOTER_LEN as u64,
                format!("footer says a {:?} file, the name says {kind:?}", footer.kind),
            ));
        }
        let relocs = self.check_tables(&file, &path, &footer, size, meta).await?;
        let frames = self.check_frames(&file, &path, kind, &footer, &relocs).await;
        Some(CheckedFile { path, kind, reloc_offset: footer.reloc_offset, frames })
    }

    /// Step 3, a file's presence and size: it exists and is as long as the manifest says
    /// (longer is a note), and holds at least a footer. Returns it open, with the size to
    /// check.
    async fn open_sized(&mut self, path: &Path, meta: Option<&FileMeta>) -> Option<(IoFile, u64)> {
        if !self.exists(path).await {
            self.problem(Error::corruption(
                path,
                0,
                format!("missing: the manifest references it ({} bytes)", meta.map_or(0, |m| m.size)),
            ));
            return None;
        }
        let file = self.open(path).await?;
        let on_disk = match file.len().await {
            Ok(l) => l,
            Err(e) => {
                self.problem(e);
                return None;
            }
        };
        let size = meta.map_or(on_disk, |m| m.size);
        if on_disk < size {
            self.problem(Error::corruption(
                path,
                on_disk,
                format!("file is {on_disk} bytes, the manifest says {size}"),
            ));
            return None;
        }
        if on_disk > size {
            self.note(format!(
                "{}: {} bytes past the {size} the manifest records (ignored by reads)",
                path.display(),
                on_disk - size
            ));
        }
        if size < FOOTER_LEN as u64 {
            self.problem(Error::corruption(
                path,
                0,
                format!("file of {size} bytes is shorter than its footer"),
            ));
            return None;
        }
        Some((file, size))
    }

    /// Step 3, a file's tables: the address ranges and the relocation table decode, agree
    /// with the manifest and with each other, and every entry lies inside the ranges.
    /// Returns the relocation entries.
    async fn check_tables(
        &mut self,
        file: &IoFile,
        path: &Path,
        footer: &Footer,
        size: u64,
        meta: Option<&FileMeta>,
    ) -> Option<Vec<RelocEntry>> {
        let tables_len = size - FOOTER_LEN as u64 - footer.ranges_offset;
        let Ok(tables_len_usize) = usize::try_from(tables_len) else {
            self.problem(Error::corruption(
                path,
                footer.ranges_offset,
                format!("tables of {tables_len} bytes do not fit in memory"),
            ));
            return None;
        };
        let tables = match file.read_exact_at(footer.ranges_offset, tables_len_usize).await {
            Ok(t) => t,
            Err(e) => {
                self.problem(e);
                return None;
            }
        };
        let (ranges, relocs) = match data_file::parse_tables(&tables, footer, path) {
            Ok(x) => x,
            Err(e) => {
                self.problem(e);
                return None;
            }
        };
        self.report.bytes_checked += tables_len;
        self.report.relocation_entries += relocs.len() as u64;
        if meta.is_some_and(|m| m.ranges != ranges) {
            self.problem(Error::corruption(
                path,
                footer.ranges_offset,
                "address ranges disagree with the manifest",
            ));
        }
        let in_ranges: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        if in_ranges != relocs.len() as u64 {
            self.problem(Error::corruption(
                path,
                footer.ranges_offset,
                format!("address ranges hold {in_ranges} addresses, the relocation table {}", relocs.len()),
            ));
        }
        for (i, e) in relocs.iter().enumerate() {
            let inside = ranges.partition_point(|r| r.1 <= e.addr);
            if ranges.get(inside).is_none_or(|r| r.0 > e.addr) {
                self.problem(Error::corruption(
                    path,
                    footer.reloc_offset + (i * RELOC_ENTRY_LEN) as u64,
                    format!("relocation entry of address {} outside the file's address ranges", e.addr),
                ));
            }
        }
        Some(relocs)
    }

    async fn read_footer(&mut self, file: &IoFile, path: &Path, size: u64) -> Option<Footer> {
        let at = size - FOOTER_LEN as u64;
        let raw = match file.read_exact_at(at, FOOTER_LEN).await {
            Ok(b) => b,
            Err(e) => {
                self.problem(e);
                return None;
            }
        };
        match data_file::parse_footer(&raw, path, size) {
            Ok(f) => {
                self.report.bytes_checked += FOOTER_LEN as u64;
                Some(f)
            }
            Err(e) => {
                self.problem(e);
                None
            }
        }
    }

    /// Checks every frame's CRC (reading the frames area in chunks, in offset order) and
    /// decodes the frames the page table points at.
    async fn check_frames(
        &mut self,
        file: &IoFile,
        path: &Path,
        kind: FileKind,
        footer: &Footer,
        relocs: &[RelocEntry],
    ) -> FxHashMap<u64, FrameInfo> {
        let mut by_offset: Vec<&RelocEntry> = relocs.iter().collect();
        by_offset.sort_by_key(|e| e.offset);
        let mut frames = FxHashMap::default();
        let mut window = Bytes::new();
        let mut window_at = 0u64;
        let mut read_failed = false;
        for e in by_offset {
            let mut info = FrameInfo { offset: e.offset, len: e.len, ok: false, decoded: None };
            // parse_tables checked `offset + len <= ranges_offset`.
            let end = e.offset + u64::from(e.len);
            assert!(end <= footer.ranges_offset);
            if !read_failed && (e.offset < window_at || end > window_at + window.len() as u64) {
                let len = u64::from(e.len).max(READ_CHUNK_BYTES).min(footer.ranges_offset - e.offset);
                // <= max(e.len: u32, READ_CHUNK_BYTES = 4 MiB): fits a usize.
                #[allow(clippy::cast_possible_truncation)]
                let len = len as usize;
                match file.read_exact_at(e.offset, len).await {
                    Ok(b) => {
                        window = Bytes::from(b);
                        window_at = e.offset;
                    }
                    Err(err) => {
                        // Reported once; the file's remaining frames count as unverified.
                        self.problem(err);
                        read_failed = true;
                    }
                }
            }
            if read_failed {
                frames.insert(e.addr, info);
                continue;
            }
            // The window covers `e.offset..end` (read above): `e.offset - window_at` is below
            // `window.len()`, a usize.
            #[allow(clippy::cast_possible_truncation)]
            let start = (e.offset - window_at) as usize;
            let bytes = window.slice(start..start + e.len as usize);
            match data_file::check_frame(&bytes, e, path) {
                Ok(()) => {
                    info.ok = true;
                    self.report.frames += 1;
                    self.report.bytes_checked += u64::from(e.len);
                }
                Err(err) => self.problem(err),
            }
            if let (true, FileKind::Data, Some((pid, len, links))) =
                (info.ok, kind, self.page_at.get(&e.addr))
            {
                let (pid, len, links) = (*pid, *len, links.clone());
                info.decoded = Some(self.check_page(&bytes, path, e, pid, len, &links));
            }
            frames.insert(e.addr, info);
        }
        frames
    }

    /// Decodes the verified frame of page `pid` (the page table says `len` bytes, and that
    /// it is a base when `links` is empty, else a delta frame with these links); collects
    /// the blob references of a leaf or a delta frame. True when it is what the page table
    /// says.
    fn check_page(
        &mut self,
        bytes: &Bytes,
        path: &Path,
        e: &RelocEntry,
        pid: u64,
        len: u32,
        links: &[(u64, u32)],
    ) -> bool {
        if len != e.len {
            self.problem(Error::corruption(
                path,
                e.offset,
                format!("page {pid}: the page table says {len} bytes, the relocation entry {}", e.len),
            ));
        }
        let img = match page::decode(bytes, path, e.offset) {
            Ok(img) => img,
            Err(err) => {
                self.problem(err);
                return false;
            }
        };
        let link = |to: u64, what: &'static str| PageLink {
            to,
            from: pid,
            what,
            file: path.to_path_buf(),
            offset: e.offset,
        };
        let leaf = match img {
            PageImage::Delta(d) if d.links == links => {
                self.report.delta_frames += 1;
                d.leaf
            }
            PageImage::Delta(_) => {
                self.problem(Error::corruption(
                    path,
                    e.offset,
                    format!("page {pid}: a delta frame whose links differ from the page table's"),
                ));
                return false;
            }
            _ if !links.is_empty() => {
                self.problem(Error::corruption(
                    path,
                    e.offset,
                    format!("page {pid}: the page table says a delta frame, the frame is a base"),
                ));
                return false;
            }
            PageImage::Inner(inner) => {
                self.report.inner_pages += 1;
                self.links.extend((0..inner.len()).map(|i| link(inner.page.child(i), "child")));
                if inner.bounds.right != 0 {
                    self.links.push(link(inner.bounds.right, "right sibling"));
                }
                return true;
            }
            PageImage::Leaf(leaf) => {
                self.report.leaf_pages += 1;
                if leaf.bounds.right != 0 {
                    self.links.push(link(leaf.bounds.right, "right sibling"));
                }
                leaf
            }
        };
        self.note_blob_refs(&leaf, pid, path, e.offset);
        true
    }

    /// Step 4a: every page resolves to decoded frames (its one frame, or every frame of its
    /// chain).
    fn resolve_pages(&mut self, m: &ManifestView, checked: &BTreeMap<u64, CheckedFile>) {
        let index = RangeIndex::new(&m.state);
        let mut pages: Vec<_> = m.state.pages.iter().map(|(p, l)| (*p, l.clone())).collect();
        pages.sort_unstable_by_key(|p| p.0);
        'pages: for (pid, loc) in pages {
            let rec = m.page_record.get(&pid).copied().unwrap_or(0);
            let mut all_ok = true;
            for addr in loc.frames() {
                let Some(fid) = index.file_of(addr) else {
                    self.problem(Error::corruption(
                        &m.path,
                        rec,
                        format!("page {pid}: address {addr} is in no file"),
                    ));
                    continue 'pages;
                };
                let Some(f) = checked.get(&fid) else {
                    self.report.unchecked_pages += 1;
                    continue 'pages;
                };
                let Some(fi) = f.frames.get(&addr) else {
                    self.problem(Error::corruption(
                        &f.path,
                        f.reloc_offset,
                        format!("page {pid}: address {addr} missing from the relocation table"),
                    ));
                    continue 'pages;
                };
                if f.kind != FileKind::Data {
                    self.problem(Error::corruption(
                        &f.path,
                        fi.offset,
                        format!("page {pid}: address {addr} is a frame of a blob file"),
                    ));
                    continue 'pages;
                }
                // A frame that fails its CRC or its decoding was reported where it was read.
                all_ok &= fi.ok && fi.decoded == Some(true);
            }
            if all_ok {
                self.report.pages += 1;
            }
        }
    }

    /// Counts the blob references of leaf `leaf` (page `pid`, its frame at `offset` of
    /// `path`), every version; a blob referenced with two lengths is a problem.
    fn note_blob_refs(&mut self, leaf: &LeafBase, pid: u64, path: &Path, offset: u64) {
        for v in leaf.entries().iter().flat_map(|en| en.versions.clone()) {
            let Value::Blob(c) = &v.value else { continue };
            let prev = match self.blob_refs.entry(c.addr()) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(BlobRef { len: c.len, count: 1, pid, file: path.to_path_buf(), offset });
                    continue;
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    o.get_mut().count += 1;
                    o.get().clone()
                }
            };
            if prev.len != c.len {
                self.problem(Error::corruption(
                    path,
                    offset,
                    format!(
                        "page {pid} references blob address {} as {} bytes, page {} as {}",
                        c.addr(),
                        c.len,
                        prev.pid,
                        prev.len
                    ),
                ));
            }
        }
    }

    /// Step 4b: every blob reference resolves to a verified blob frame of its length, and
    /// no blob file's reference count in the manifest is below the references the page
    /// table's frames hold (GC would drop the file while they do; `engine::gc`).
    fn resolve_blobs(&mut self, m: &ManifestView, checked: &BTreeMap<u64, CheckedFile>) {
        let index = RangeIndex::new(&m.state);
        let mut refs: Vec<_> = std::mem::take(&mut self.blob_refs).into_iter().collect();
        refs.sort_unstable_by_key(|r| r.0);
        let mut per_file: BTreeMap<u64, u64> = BTreeMap::new();
        for (addr, r) in &refs {
            if let Some(fid) = index.file_of(*addr) {
                *per_file.entry(fid).or_insert(0) += r.count;
            }
        }
        for (&fid, &recorded) in &m.state.blob_refs {
            let held = per_file.get(&fid).copied().unwrap_or(0);
            if recorded < held {
                self.problem(Error::corruption(
                    &m.path,
                    0,
                    format!(
                        "blob file {fid}: the manifest counts {recorded} references, the pages hold {held}"
                    ),
                ));
            } else if recorded > held && recorded != u64::MAX {
                self.note(format!(
                    "blob file {fid}: the manifest counts {recorded} references, the pages hold {held} (kept until they are read)"
                ));
            }
        }
        for (addr, r) in refs {
            let Some(fid) = index.file_of(addr) else {
                self.problem(Error::corruption(
                    &r.file,
                    r.offset,
                    format!("page {}: blob address {addr} is in no file", r.pid),
                ));
                continue;
            };
            let Some(f) = checked.get(&fid) else { continue };
            let Some(fi) = f.frames.get(&addr) else {
                self.problem(Error::corruption(
                    &f.path,
                    f.reloc_offset,
                    format!("blob address {addr} (page {}) missing from the relocation table", r.pid),
                ));
                continue;
            };
            if f.kind != FileKind::Blob {
                self.problem(Error::corruption(
                    &f.path,
                    fi.offset,
                    format!("blob address {addr} (page {}) is a frame of a data file", r.pid),
                ));
                continue;
            }
            if fi.len != r.len {
                self.problem(Error::corruption(
                    &f.path,
                    fi.offset,
                    format!(
                        "blob length {} differs from its reference ({} bytes, page {})",
                        fi.len, r.len, r.pid
                    ),
                ));
                continue;
            }
            if fi.ok {
                self.report.blobs += 1;
            }
        }
    }

    /// Step 4c: every page id a page image refers to (an index node's child, a right
    /// sibling) is in the page table.
    fn resolve_links(&mut self, m: &ManifestView) {
        for l in std::mem::take(&mut self.links) {
            if !m.state.pages.contains_key(&l.to) {
                self.problem(Error::corruption(
                    &l.file,
                    l.offset,
                    format!("page {}: its {} {} is not in the page table", l.from, l.what, l.to),
                ));
            }
        }
    }

    /// Step 5: the WAL segments.
    async fn check_wal(&mut self, frontier: u64) {
        let wal_dir = self.dir.join("wal");
        if !self.exists(&wal_dir).await {
            self.note("no WAL directory (open creates it)".to_string());
            return;
        }
        let names = match self.io.read_dir(&wal_dir).await {
            Ok(n) => n,
            Err(e) => {
                self.problem(e);
                return;
            }
        };
        let mut seqs: Vec<u64> = names.iter().filter_map(|n| parse_segment_file_name(n)).collect();
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                self.problem(Error::corruption(
                    wal_dir.join(segment_file_name(pair[0] + 1)),
                    0,
                    format!(
                        "WAL segment missing between {} and {}",
                        segment_file_name(pair[0]),
                        segment_file_name(pair[1])
                    ),
                ));
            }
        }
        let mut last_ts = frontier;
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            let path = wal_dir.join(segment_file_name(seq));
            self.report.wal_segments += 1;
            let Some(file) = self.open(&path).await else { continue };
            let file_len = match file.len().await {
                Ok(l) => l,
                Err(e) => {
                    self.problem(e);
                    continue;
                }
            };
            if !self.check_segment_header(&file, &path, seq, file_len, is_last).await {
                continue;
            }
            self.check_segment_records(&file, &path, file_len, is_last, frontier, &mut last_ts).await;
        }
    }

    /// Step 5, a segment's header: magic and sequence number. False when the records
    /// cannot be read (a problem, or the note of a creation cut by a crash).
    async fn check_segment_header(
        &mut self,
        file: &IoFile,
        path: &Path,
        seq: u64,
        file_len: u64,
        is_last: bool,
    ) -> bool {
        let header = if file_len < SEGMENT_HEADER_LEN as u64 {
            Err(RecordError::Truncated { need: SEGMENT_HEADER_LEN as u64, have: file_len })
        } else {
            match file.read_exact_at(0, SEGMENT_HEADER_LEN).await {
                Ok(b) => decode_segment_header(&b),
                Err(e) => {
                    self.problem(e);
                    return false;
                }
            }
        };
        // A creation cut by a crash holds no record: no more than a header, or (the header
        // and the first zeros are one write) nothing but zeros after it.
        let holds_no_record = file_len <= SEGMENT_HEADER_LEN as u64
            || (is_last
                && header.is_err()
                && zero_tail(file, SEGMENT_HEADER_LEN as u64, file_len).await.unwrap_or(false));
        match header {
            Err(e) if is_last && holds_no_record => {
                self.note(format!(
                    "{}: no complete header ({e}): a creation cut by a crash; recovery will delete it",
                    path.display()
                ));
                return false;
            }
            Err(e) => {
                self.problem(e.at(path, 0));
                return false;
            }
            Ok(found) if found != seq => {
                self.problem(Error::corruption(
                    path,
                    8,
                    format!("segment header holds seq {found}, the file name says {seq}"),
                ));
                return false;
            }
            Ok(_) => self.report.bytes_checked += SEGMENT_HEADER_LEN as u64,
        }
        true
    }

    /// Step 5, a segment's records: every frame, CRC and payload; timestamps above the
    /// frontier strictly increase (`last_ts` carries over from the previous segment); a bad
    /// record at the very end of the last segment is the torn tail (a note).
    async fn check_segment_records(
        &mut self,
        file: &IoFile,
        path: &Path,
        file_len: u64,
        is_last: bool,
        frontier: u64,
        last_ts: &mut u64,
    ) {
        let mut reader = SegmentReader::new(file, file_len);
        let mut offset = SEGMENT_HEADER_LEN as u64;
        // Bounded: every iteration moves `offset` forward by a whole record or ends.
        while offset < file_len {
            let reason = match reader.record_at(offset).await {
                Err(e) => {
                    self.problem(e);
                    break;
                }
                Ok(Ok((Item::Mark { at }, used))) => {
                    if at != offset {
                        self.problem(Error::corruption(
                            path,
                            offset,
                            format!(
                                "a batch mark written for offset {at} lies at {offset}: a misdirected write"
                            ),
                        ));
                    }
                    self.report.bytes_checked += used as u64;
                    offset += used as u64;
                    continue;
                }
                Ok(Ok((Item::Record(rec), used))) => {
                    self.report.wal_records += 1;
                    self.report.bytes_checked += used as u64;
                    if rec.ts > frontier {
                        self.report.wal_records_to_replay += 1;
                        if rec.ts <= *last_ts {
                            self.problem(Error::corruption(
                                path,
                                offset,
                                format!("WAL timestamp {} out of order (after {})", rec.ts, *last_ts),
                            ));
                        }
                        *last_ts = (*last_ts).max(rec.ts);
                    }
                    offset += used as u64;
                    continue;
                }
                Ok(Err(reason)) => reason,
            };
            if is_last {
                match zero_tail(file, offset, file_len).await {
                    // The preallocated tail of the last segment: a clean end.
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        self.problem(e);
                        break;
                    }
                }
            }
            let next = next_intact(&mut reader, offset, file_len).await;
            if !is_last {
                self.problem(reason.at(path, offset));
            } else if let Some(why) = match damage_after(file, offset, file_len).await {
                Ok(why) => why,
                Err(e) => Some(e.to_string()),
            } {
                // The same rule recovery applies (a batch mark proves the record was durable).
                self.problem(Error::corruption(path, offset, format!("{reason}; {why}")));
            } else {
                self.note(format!(
                    "{}: torn tail at offset {offset} ({} bytes, {reason}); recovery will cut it",
                    path.display(),
                    file_len - offset
                ));
            }
            match next {
                Some(n) => offset = n,
                None => break,
            }
        }
    }

    async fn exists(&mut self, path: &Path) -> bool {
        match self.io.exists(path).await {
            Ok(b) => b,
            Err(e) => {
                self.problem(e);
                false
            }
        }
    }

    async fn open(&mut self, path: &Path) -> Option<IoFile> {
        match self.io.open(path, OpenMode::Read).await {
            Ok(f) => Some(f),
            Err(e) => {
                self.problem(e);
                None
            }
        }
    }

    /// The whole file (or its first `max` bytes).
    async fn read_all(&self, path: &Path, max: Option<u64>) -> Result<Vec<u8>> {
        let f = self.io.open(path, OpenMode::Read).await?;
        let len = f.len().await?;
        let want = max.map_or(len, |m| len.min(m));
        let want = usize::try_from(want).map_err(|_| {
            Error::corruption(path, 0, format!("file of {want} bytes does not fit in memory"))
        })?;
        f.read_exact_at(0, want).await
    }
}

/// The offset of the record after the bad one at `offset`, if the bad record's frame gives a
/// possible length and an intact record starts there: then the bad record is not a torn tail.
async fn next_intact(reader: &mut SegmentReader<'_>, offset: u64, file_len: u64) -> Option<u64> {
    let frame: [u8; FRAME_LEN] = reader.bytes_at(offset, FRAME_LEN).await.ok()??.try_into().ok()?;
    let (len, _) = decode_frame(&frame).ok()?;
    let next = offset + (FRAME_LEN as u64) + u64::from(len);
    if next >= file_len {
        return None;
    }
    matches!(reader.record_at(next).await, Ok(Ok(_))).then_some(next)
}

/// Address -> file id, through the manifest's address ranges.
struct RangeIndex {
    /// range start -> (range end, file id)
    starts: BTreeMap<u64, (u64, u64)>,
}

impl RangeIndex {
    fn new(s: &ManifestState) -> RangeIndex {
        let mut starts = BTreeMap::new();
        for f in s.files.values() {
            for &(a, b) in &f.ranges {
                starts.insert(a, (b, f.id));
            }
        }
        RangeIndex { starts }
    }

    fn file_of(&self, addr: u64) -> Option<u64> {
        let (_, &(end, id)) = self.starts.range(..=addr).next_back()?;
        (addr < end).then_some(id)
    }
}
