//! The simulated disk (feature `sim`): an in-memory I/O backend that keeps, for every file
//! and directory, a *live* image (what reads see) and a *durable* image (what survives a
//! crash), and at a simulated crash loses, tears and corrupts what was never made durable.
//!
//! # The model
//!
//! - **Writes** change the live image at once and are queued as *pending* on their file. A
//!   write future first applies itself, then returns `Pending` 0-2 times (chosen by the
//!   seed), then completes and marks the write *observed*. Concurrent operations therefore
//!   complete in an order the seed picks, like `io_uring`'s out-of-order completions.
//! - **fsync / fdatasync** make durable exactly the pending writes (and length changes) of
//!   the file that were *observed before the fsync was submitted*: a write whose completion
//!   the caller had not seen is not covered (contract 4 of the module above). A write whose
//!   future was dropped before completing is never observed, so never covered.
//! - **A durable write** (`writev_dsync`, `RWF_DSYNC`) is exactly a write, then a data sync
//!   of that write alone: until it completes it is a pending write like any other (a crash
//!   may keep any part of it, or none); once it completes it is durable, and no other
//!   write of the file became durable through it. Its sync half counts as an operation of
//!   its own for [`SimDisk::halt_after`] and [`SimDisk::fail_op`], so a crash point falls
//!   between the write and its sync too.
//! - **Directory entries** (create, rename, remove, mkdir) change the live namespace at once
//!   and are queued per parent directory; `sync_dir(d)` makes d's entries durable. A file's
//!   fsync does not make its directory entry durable.
//! - **A crash** ([`SimDisk::crash`]) rebuilds every file from its durable image plus each
//!   pending write, decided independently: applied, dropped, torn (a prefix cut at a sector
//!   or byte boundary, or a random subset of its 512-byte sectors) or replaced with garbage.
//!   Each pending namespace operation is independently kept or lost. Handles opened before
//!   the crash fail every later operation, so a stale database cannot touch the new state.
//! - **Faults**: the Nth operation fails with EIO ([`SimDisk::fail_op`]), the Nth
//!   space-consuming operation with ENOSPC ([`SimDisk::fail_space`]), the Nth fsync with EIO
//!   ([`SimDisk::fail_sync`]) — its writes stay pending, as after Linux's failed fsync —,
//!   the Nth read of a chosen file returns one flipped bit ([`SimDisk::flip_read`]), the Nth
//!   write lands at another offset ([`SimDisk::misdirect_write`]), and every operation from
//!   the Nth on fails as if the machine stopped ([`SimDisk::halt_after`]).
//!
//! Everything random comes from one seed ([`SimDisk::new`]); with a single-threaded
//! executor and the database's background task off (the engine does not start it on a
//! simulated disk), a run replays exactly from its seed.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;

use super::backend::{Backend, BackendFile, Written};
use super::{Held, LockMode, OpenMode};

const SECTOR: usize = 512;

/// A fault armed on a [`SimDisk`]: which operation it hits, counted from when it was armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    /// Operations of the counted kind still to pass before the one that fails (0: the next).
    remaining: u64,
    /// Keep failing every later operation of the kind too.
    sticky: bool,
}

impl Armed {
    /// Counts one operation; true when this one must fail.
    fn hit(slot: &mut Option<Armed>) -> bool {
        let Some(a) = slot else { return false };
        if a.remaining > 0 {
            a.remaining -= 1;
            return false;
        }
        if !a.sticky {
            *slot = None;
        }
        true
    }
}

/// What a crash did, for the tests' statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Pending writes (and length changes) applied in full.
    pub applied: u64,
    /// Pending writes dropped.
    pub dropped: u64,
    /// Pending writes torn (a prefix or a subset of sectors applied).
    pub torn: u64,
    /// Pending writes replaced with garbage.
    pub garbage: u64,
    /// Pending namespace operations lost.
    pub names_lost: u64,
    /// Pending namespace operations kept.
    pub names_kept: u64,
}

/// Counts of the faults that actually fired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultLog {
    /// Reads that returned a flipped bit: (file, offset of the read, length).
    pub flipped_reads: Vec<(PathBuf, u64, usize)>,
    /// Writes that landed elsewhere: (file, intended offset, actual offset, length).
    pub misdirected: Vec<(PathBuf, u64, u64, usize)>,
    /// Operations failed with EIO, ENOSPC or by a halt.
    pub failed_ops: u64,
}

/// A simulated disk. Cheap to clone; every clone is the same disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.lock();
        f.debug_struct("SimDisk").field("seed", &s.seed).field("ops", &s.ops).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Debug, Clone)]
enum NameOp {
    Set(PathBuf, Entry),
    Remove(PathBuf),
    /// Atomic: after a crash either both names changed or neither.
    Rename(PathBuf, PathBuf, Entry),
}

impl NameOp {
    /// The directory whose fsync makes this operation durable (a rename: the target's).
    fn parent(&self) -> &Path {
        let p = match self {
            NameOp::Set(p, _) | NameOp::Remove(p) | NameOp::Rename(_, p, _) => p,
        };
        p.parent().unwrap_or(Path::new("/"))
    }

    fn path(&self) -> &Path {
        match self {
            NameOp::Set(p, _) | NameOp::Remove(p) | NameOp::Rename(_, p, _) => p,
        }
    }

    fn apply(self, names: &mut BTreeMap<PathBuf, Entry>) {
        match self {
            NameOp::Set(p, e) => {
                names.insert(p, e);
            }
            NameOp::Remove(p) => {
                names.remove(&p);
            }
            NameOp::Rename(from, to, e) => {
                names.remove(&from);
                names.insert(to, e);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    change: Change,
    observed: bool,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Clone)]
struct State {
    seed: u64,
    rng: u64,
    generation: u64,
    ops: u64,
    next_id: u64,
    inodes: BTreeMap<u64, Inode>,
    live: BTreeMap<PathBuf, Entry>,
    durable: BTreeMap<PathBuf, Entry>,
    pending_names: Vec<NameOp>,
    fail_op: Option<Armed>,
    fail_space: Option<Armed>,
    fail_sync: Option<Armed>,
    halt_after: Option<u64>,
    flip: Option<(String, Armed)>,
    misdirect: Option<(String, Armed)>,
    log: FaultLog,
    max_pending_polls: u32,
    /// Directory locks held: (shared holders, exclusive held). A crash (the process died)
    /// and a fork (another machine) start with none.
    locks: BTreeMap<PathBuf, (usize, bool)>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl State {
    /// The crash's files: each durable image plus each pending change's fate, in
    /// submission order.
    fn crash_files(&mut self, report: &mut CrashReport) {
        let ids: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in ids {
            let pending = std::mem::take(&mut self.inodes.get_mut(&ino).expect("inode").pending);
            let mut image = std::mem::take(&mut self.inodes.get_mut(&ino).expect("inode").durable);
            for p in pending {
                match p.change {
                    Change::SetLen(_) => {
                        if self.below(2) == 0 {
                            apply(&mut image, &p.change);
                            report.applied += 1;
                        } else {
                            report.dropped += 1;
                        }
                    }
                    Change::Write { offset, data } => match self.below(10) {
                        0..=3 => {
                            apply(&mut image, &Change::Write { offset, data });
                            report.applied += 1;
                        }
                        4..=6 => report.dropped += 1,
                        7 | 8 => {
                            tear(self, &mut image, offset, &data);
                            report.torn += 1;
                        }
                        _ => {
                            let garbage: Vec<u8> =
                                (0..data.len()).map(|_| self.rand().to_le_bytes()[0]).collect();
                            apply(&mut image, &Change::Write { offset, data: garbage });
                            report.garbage += 1;
                        }
                    },
                }
            }
            let inode = self.inodes.get_mut(&ino).expect("inode");
            inode.live.clone_from(&image);
            inode.durable = image;
        }
    }

    /// The crash's namespace: the durable one plus each pending operation kept or lost, in
    /// order; entries under a lost directory and files no name refers to go.
    fn crash_names(&mut self, report: &mut CrashReport) {
        let mut names = std::mem::take(&mut self.durable);
        for op in std::mem::take(&mut self.pending_names) {
            if self.below(2) == 0 {
                report.names_lost += 1;
                self.trace(op.path(), "name operation lost at the crash");
                continue;
            }
            self.trace(op.path(), "name operation kept at the crash");
            report.names_kept += 1;
            op.apply(&mut names);
        }
        // An entry whose parent directory did not survive goes with it.
        let orphans: Vec<PathBuf> = names
            .keys()
            .filter(|p| {
                p.ancestors().skip(1).any(|a| {
                    !(a.as_os_str().is_empty() || a == Path::new("/")) && names.get(a) != Some(&Entry::Dir)
                })
            })
            .cloned()
            .collect();
        for p in orphans {
            names.remove(&p);
        }
        let referenced: std::collections::BTreeSet<u64> = names
            .values()
            .filter_map(|e| match e {
                Entry::File(i) => Some(*i),
                Entry::Dir => None,
            })
            .collect();
        self.inodes.retain(|ino, _| referenced.contains(ino));
        self.live = names.clone();
        self.durable = names;
    }

    fn rand(&mut self) -> u64 {
        splitmix(&mut self.rng)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rand() % n
        }
    }

    fn disarm(&mut self) {
        self.fail_op = None;
        self.fail_space = None;
        self.fail_sync = None;
        self.halt_after = None;
        self.flip = None;
        self.misdirect = None;
    }

    /// Counts one operation and applies the armed faults that count every operation.
    fn begin(&mut self, generation: u64, what: &str) -> io::Result<()> {
        if generation != self.generation {
            return Err(io::Error::other(format!("simulated disk: {what} on a handle from before a crash")));
        }
        self.ops += 1;
        if self.halt_after.is_some_and(|n| self.ops > n) {
            self.log.failed_ops += 1;
            return Err(io::Error::other(format!("simulated disk: halted before {what}")));
        }
        if Armed::hit(&mut self.fail_op) {
            self.log.failed_ops += 1;
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        Ok(())
    }

    fn space(&mut self) -> io::Result<()> {
        if Armed::hit(&mut self.fail_space) {
            self.log.failed_ops += 1;
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        Ok(())
    }

    /// The live entry at `path`; the root always exists.
    fn entry(&self, path: &Path) -> Option<Entry> {
        if path.as_os_str().is_empty() || path == Path::new("/") {
            return Some(Entry::Dir);
        }
        self.live.get(path).copied()
    }

    fn parent_is_dir(&self, path: &Path) -> bool {
        match path.parent() {
            None => true,
            Some(p) if p.as_os_str().is_empty() || p == Path::new("/") => true,
            Some(p) => self.live.get(p) == Some(&Entry::Dir),
        }
    }

    /// Debug aid: `RINGKV_SIM_TRACE=<substring>` prints name operations and crash fates of
    /// matching paths.
    fn trace(&self, path: &Path, what: &str) {
        if let Some(p) = std::env::var_os("RINGKV_SIM_TRACE") {
            if path.to_string_lossy().contains(&*p.to_string_lossy()) {
                eprintln!("sim[{} op {}]: {} {what}", self.generation, self.ops, path.display());
            }
        }
    }

    fn set_name(&mut self, path: PathBuf, entry: Entry) {
        self.trace(&path, "created");
        self.live.insert(path.clone(), entry);
        self.pending_names.push(NameOp::Set(path, entry));
    }

    fn remove_name(&mut self, path: PathBuf) {
        self.trace(&path, "removed");
        self.live.remove(&path);
        self.pending_names.push(NameOp::Remove(path));
    }

    fn push_change(&mut self, ino: u64, change: Change) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let inode = self.inodes.get_mut(&ino).expect("inode of an open file");
        apply(&mut inode.live, &change);
        inode.pending.push(Pending { id, change, observed: false });
        id
    }

    fn observe(&mut self, ino: u64, id: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            if let Some(p) = inode.pending.iter_mut().find(|p| p.id == id) {
                p.observed = true;
            }
        }
    }

    fn polls(&mut self) -> u32 {
        // Below `max_pending_polls + 1`, so at most `max_pending_polls`, a u32.
        #[allow(clippy::cast_possible_truncation)]
        let polls = self.below(u64::from(self.max_pending_polls) + 1) as u32;
        polls
    }
}

/// Counts one operation against a fault armed for files whose name starts with a prefix;
/// true when this one must be hit.
fn hit_named(slot: &mut Option<(String, Armed)>, name: &str) -> bool {
    let Some((prefix, armed)) = slot else { return false };
    if !name.starts_with(prefix.as_str()) {
        return false;
    }
    let mut one = Some(*armed);
    let hit = Armed::hit(&mut one);
    match one {
        Some(a) => *armed = a,
        None => *slot = None,
    }
    hit
}

fn libc_eio() -> i32 {
    5
}

fn libc_enospc() -> i32 {
    28
}

fn apply(image: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, data } => {
            // Test-only (the `sim` feature): each file's image is a Vec in memory, so an
            // offset the simulated disk can honour is a usize (tests write near offset 0).
            #[allow(clippy::cast_possible_truncation)]
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        // As above: the image is in memory, so its length is a usize.
        #[allow(clippy::cast_possible_truncation)]
        Change::SetLen(len) => image.resize(*len as usize, 0),
    }
}

impl SimDisk {
    /// A new empty disk whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        let mut state = State {
            seed,
            rng: seed ^ 0x5EED_D15C,
            generation: 0,
            ops: 0,
            next_id: 0,
            inodes: BTreeMap::new(),
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
            pending_names: Vec::new(),
            fail_op: None,
            fail_space: None,
            fail_sync: None,
            halt_after: None,
            flip: None,
            misdirect: None,
            log: FaultLog::default(),
            max_pending_polls: 2,
            locks: BTreeMap::new(),
        };
        state.rand();
        SimDisk { state: Arc::new(Mutex::new(state)) }
    }

    /// An independent copy of this disk as it is now (files, pending writes, faults and
    /// random state): what happens to one no longer affects the other.
    pub fn fork(&self) -> SimDisk {
        let mut state = self.state.lock().clone();
        state.locks.clear();
        SimDisk { state: Arc::new(Mutex::new(state)) }
    }

    /// The seed this disk was made with.
    pub fn seed(&self) -> u64 {
        self.state.lock().seed
    }

    /// Operations run so far (every call that reaches the disk counts one).
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Fails the `n`th operation from now (1 = the next) with EIO; with `sticky`, every later
    /// one too.
    pub fn fail_op(&self, n: u64, sticky: bool) {
        self.state.lock().fail_op = Some(Armed { remaining: n.saturating_sub(1), sticky });
    }

    /// Fails the `n`th space-consuming operation from now (a write, an allocation, a length
    /// change, a file creation) with ENOSPC; with `sticky`, every later one too.
    pub fn fail_space(&self, n: u64, sticky: bool) {
        self.state.lock().fail_space = Some(Armed { remaining: n.saturating_sub(1), sticky });
    }

    /// Fails the `n`th fsync (file or directory) from now with EIO. The writes it would have
    /// covered stay pending: a crash may still lose them.
    pub fn fail_sync(&self, n: u64) {
        self.state.lock().fail_sync = Some(Armed { remaining: n.saturating_sub(1), sticky: false });
    }

    /// From the `n`th operation from now on, every operation fails (the machine stopped);
    /// call [`SimDisk::crash`] next.
    pub fn halt_after(&self, n: u64) {
        let mut s = self.state.lock();
        s.halt_after = Some(s.ops + n.saturating_sub(1));
    }

    /// The `n`th read from now of a file whose name starts with `prefix` returns its bytes
    /// with one bit flipped (the disk's bytes stay intact).
    pub fn flip_read(&self, prefix: &str, n: u64) {
        self.state.lock().flip =
            Some((prefix.to_string(), Armed { remaining: n.saturating_sub(1), sticky: false }));
    }

    /// The `n`th write from now to a file whose name starts with `prefix` lands at a
    /// different offset (a multiple of 4 KiB away, possibly past the end), as a misdirected
    /// write of a failing disk does, and reports success.
    pub fn misdirect_write(&self, prefix: &str, n: u64) {
        self.state.lock().misdirect =
            Some((prefix.to_string(), Armed { remaining: n.saturating_sub(1), sticky: false }));
    }

    /// Disarms every fault (a pending halt included).
    pub fn clear_faults(&self) {
        self.state.lock().disarm();
    }

    /// The faults that fired so far.
    pub fn fault_log(&self) -> FaultLog {
        self.state.lock().log.clone()
    }

    /// The most `Pending` returns an operation makes before completing (default 2; 0 makes
    /// every operation complete at its first poll).
    pub fn set_max_pending_polls(&self, n: u32) {
        self.state.lock().max_pending_polls = n;
    }

    /// Simulates a power loss: rebuilds every file and directory from what was durable plus
    /// a random fate for each pending change (see the module doc), makes that the new live
    /// state, disarms every fault and invalidates every open handle.
    pub fn crash(&self) -> CrashReport {
        let mut s = self.state.lock();
        let mut report = CrashReport::default();
        s.crash_files(&mut report);
        s.crash_names(&mut report);
        s.generation += 1;
        s.locks.clear();
        s.disarm();
        report
    }

    /// The live bytes of the file at `path` (tests use it to look at or damage files).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state.lock();
        match s.entry(path)? {
            Entry::File(ino) => s.inodes.get(&ino).map(|i| i.live.clone()),
            Entry::Dir => None,
        }
    }

    /// Replaces the bytes of the file at `path`, live and durable (a test damaging a file
    /// "on disk"). Returns false if there is no such file.
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) -> bool {
        let mut s = self.state.lock();
        let Some(Entry::File(ino)) = s.entry(path) else { return false };
        let inode = s.inodes.get_mut(&ino).expect("inode");
        inode.pending.clear();
        inode.live = bytes.clone();
        inode.durable = bytes;
        true
    }

    /// Paths of every live file and directory, sorted.
    pub fn list(&self) -> Vec<PathBuf> {
        self.state.lock().live.keys().cloned().collect()
    }
}

/// Every operation takes effect when it is called (the first poll) and completes at once;
/// a file's reads and writes then stay pending for the polls the seed picks.
impl Backend for SimDisk {
    type File = SimFile;

    async fn open(&self, path: &Path, mode: OpenMode) -> io::Result<SimFile> {
        let mut s = self.state.lock();
        let generation = s.generation;
        s.begin(generation, "open")?;
        let ino = match (s.entry(path), mode) {
            (Some(Entry::Dir), _) => return Err(io::Error::other("simulated disk: is a directory")),
            (Some(Entry::File(_)), OpenMode::CreateNew) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "simulated disk: file exists"))
            }
            (Some(Entry::File(ino)), _) => ino,
            (None, OpenMode::Read | OpenMode::ReadDirect | OpenMode::ReadWrite) => {
                return Err(io::Error::new(io::ErrorKind::NotFound, "simulated disk: no such file"))
            }
            (None, OpenMode::Create | OpenMode::CreateNew) => {
                if !s.parent_is_dir(path) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "simulated disk: no parent directory",
                    ));
                }
                s.space()?;
                let ino = s.next_id;
                s.next_id += 1;
                s.inodes.insert(ino, Inode::default());
                s.set_name(path.to_owned(), Entry::File(ino));
                ino
            }
        };
        Ok(SimFile {
            disk: self.clone(),
            ino,
            generation,
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            writable: !matches!(mode, OpenMode::Read | OpenMode::ReadDirect),
        })
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let g = s.generation;
        s.begin(g, "rename")?;
        let Some(entry) = s.entry(from) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "simulated disk: rename source missing"));
        };
        if !s.parent_is_dir(to) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "simulated disk: no parent directory"));
        }
        s.live.remove(from);
        s.live.insert(to.to_owned(), entry);
        s.pending_names.push(NameOp::Rename(from.to_owned(), to.to_owned(), entry));
        Ok(())
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let g = s.generation;
        s.begin(g, "remove")?;
        match s.entry(path) {
            Some(Entry::File(_)) => {
                s.remove_name(path.to_owned());
                Ok(())
            }
            Some(Entry::Dir) => Err(io::Error::other("simulated disk: is a directory")),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "simulated disk: no such file")),
        }
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let g = s.generation;
        s.begin(g, "create_dir")?;
        let mut missing: Vec<PathBuf> = Vec::new();
        for a in path.ancestors() {
            if a.as_os_str().is_empty() || a == Path::new("/") {
                break;
            }
            match s.entry(a) {
                Some(Entry::Dir) => break,
                Some(Entry::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "simulated disk: a file is in the way",
                    ))
                }
                None => missing.push(a.to_owned()),
            }
        }
        for a in missing.into_iter().rev() {
            s.space()?;
            s.set_name(a, Entry::Dir);
        }
        Ok(())
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        let g = s.generation;
        s.begin(g, "fsync")?;
        if Armed::hit(&mut s.fail_sync) {
            s.log.failed_ops += 1;
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        let is_root = path.as_os_str().is_empty() || path == Path::new("/");
        if !is_root && s.entry(path) != Some(Entry::Dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "simulated disk: no such directory"));
        }
        let (mine, rest): (Vec<NameOp>, Vec<NameOp>) =
            std::mem::take(&mut s.pending_names).into_iter().partition(|op| op.parent() == path);
        s.pending_names = rest;
        for op in mine {
            s.trace(op.path(), "made durable by sync_dir");
            op.apply(&mut s.durable);
        }
        Ok(())
    }

    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut s = self.state.lock();
        let g = s.generation;
        s.begin(g, "read_dir")?;
        if s.entry(path) != Some(Entry::Dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "simulated disk: no such directory"));
        }
        Ok(s.live
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    /// Takes the lock of directory `path` in `mode` without waiting: `Ok(None)` when a
    /// conflicting holder has it. Not an operation of the fault schedule (it counts no op).
    async fn lock_dir(&self, path: &Path, mode: LockMode) -> io::Result<Result<Held, Vec<u32>>> {
        let mut s = self.state.lock();
        if s.entry(path) != Some(Entry::Dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "simulated disk: no such directory"));
        }
        let generation = s.generation;
        let held = s.locks.entry(path.to_path_buf()).or_default();
        let free = match mode {
            LockMode::Shared => !held.1,
            LockMode::Exclusive => !held.1 && held.0 == 0,
        };
        if !free {
            return Ok(Err(Vec::new()));
        }
        match mode {
            LockMode::Shared => held.0 += 1,
            LockMode::Exclusive => held.1 = true,
        }
        Ok(Ok(Held::Sim(SimLock { disk: self.clone(), path: path.to_path_buf(), mode, generation })))
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        let mut s = self.state.lock();
        let g = s.generation;
        s.begin(g, "stat")?;
        Ok(s.entry(path).is_some())
    }
}

/// A directory lock held on a [`SimDisk`]; released on drop unless a crash came first.
pub(super) struct SimLock {
    disk: SimDisk,
    path: PathBuf,
    mode: LockMode,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.disk.state.lock();
        if s.generation != self.generation {
            return;
        }
        if let Some(held) = s.locks.get_mut(&self.path) {
            match self.mode {
                LockMode::Shared => held.0 -= 1,
                LockMode::Exclusive => held.1 = false,
            }
        }
    }
}

/// A file open on a [`SimDisk`].
pub(super) struct SimFile {
    disk: SimDisk,
    ino: u64,
    generation: u64,
    name: String,
    writable: bool,
}

/// Returns `Pending` a seeded number of times, then runs `finish` once.
struct Delayed<F> {
    polls: u32,
    finish: Option<F>,
}

impl<T, F: FnOnce() -> T + Unpin> Future for Delayed<F> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        if self.polls > 0 {
            self.polls -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let finish = self.finish.take().expect("Delayed polled after completion");
        Poll::Ready(finish())
    }
}

/// A future that completes with `finish()` after returning `Pending` `polls` times.
fn delay<T, F: FnOnce() -> T + Unpin>(polls: u32, finish: F) -> Delayed<F> {
    Delayed { polls, finish: Some(finish) }
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "simulated disk: file opened read-only")
}

impl SimFile {
    /// Applies a write to the live image and queues it as pending (not yet observed).
    /// `None` for an empty write. The armed write faults apply (space, misdirection).
    fn push_write(&self, offset: u64, bufs: &[Bytes], what: &str) -> io::Result<Option<(u32, u64)>> {
        if !self.writable {
            return Err(read_only());
        }
        let data: Vec<u8> = bufs.concat();
        if data.is_empty() {
            return Ok(None);
        }
        let mut s = self.lock(what)?;
        s.space()?;
        let mut at = offset;
        if hit_named(&mut s.misdirect, &self.name) {
            let pages = 1 + s.below(8);
            at = if s.below(2) == 0 { offset + pages * 4096 } else { offset.saturating_sub(pages * 4096) };
            if at == offset {
                at = offset + 4096;
            }
            s.log.misdirected.push((PathBuf::from(&self.name), offset, at, data.len()));
        }
        s.trace(Path::new(&self.name), &format!("{what} {} bytes at {at}", data.len()));
        let id = s.push_change(self.ino, Change::Write { offset: at, data });
        Ok(Some((s.polls(), id)))
    }

    fn lock(&self, what: &str) -> io::Result<parking_lot::MutexGuard<'_, State>> {
        let mut s = self.disk.state.lock();
        s.begin(self.generation, what)?;
        Ok(s)
    }
}

impl BackendFile for SimFile {
    async fn read(&self, offset: u64, len: usize, exact: bool) -> io::Result<Vec<u8>> {
        let (polls, result) = {
            let mut s = self.lock("read")?;
            let live = &s.inodes.get(&self.ino).expect("inode").live;
            // An offset past usize is past the in-memory image: saturate (same clamp).
            let at = usize::try_from(offset).unwrap_or(usize::MAX);
            let start = at.min(live.len());
            let end = at.saturating_add(len).min(live.len());
            let mut buf = live[start..end].to_vec();
            let result = if exact && buf.len() < len {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "simulated disk: read past the end"))
            } else {
                if !buf.is_empty() && hit_named(&mut s.flip, &self.name) {
                    let bit = s.below(buf.len() as u64 * 8);
                    buf[(bit / 8) as usize] ^= 1 << (bit % 8);
                    s.log.flipped_reads.push((PathBuf::from(&self.name), offset, len));
                }
                Ok(buf)
            };
            (s.polls(), result)
        };
        delay(polls, || ()).await;
        result
    }

    async fn writev(&self, offset: u64, bufs: Vec<Bytes>) -> io::Result<Written> {
        let Some((polls, id)) = self.push_write(offset, &bufs, "write")? else {
            return Ok(Written::Unfixed);
        };
        let disk = self.disk.clone();
        let ino = self.ino;
        delay(polls, move || disk.state.lock().observe(ino, id)).await;
        Ok(Written::Unfixed)
    }

    /// Exactly a write and then a data sync of its range: the write is pending (a crash
    /// before completion keeps, drops, tears or garbles it like any unsynced write) until
    /// the operation completes; then it, and nothing else of the file, is durable. An
    /// armed [`SimDisk::fail_sync`] fails the sync half: the write stays pending.
    async fn writev_dsync(&self, offset: u64, bufs: Vec<Bytes>) -> io::Result<Written> {
        let Some((polls, id)) = self.push_write(offset, &bufs, "write_dsync")? else {
            return Ok(Written::Unfixed);
        };
        let disk = self.disk.clone();
        let (ino, generation, name) = (self.ino, self.generation, self.name.clone());
        delay(polls, move || {
            let mut s = disk.state.lock();
            if s.generation != generation {
                // Crashed before completion: the write met the crash as a pending one.
                return Err(io::Error::other("simulated disk: write_dsync cut by a crash"));
            }
            s.observe(ino, id);
            // The sync half counts as an operation of its own, so a halt or an injected
            // failure can fall between the write and its sync (the write stays pending).
            s.begin(generation, "fsync")?;
            if Armed::hit(&mut s.fail_sync) {
                s.log.failed_ops += 1;
                return Err(io::Error::from_raw_os_error(libc_eio()));
            }
            s.trace(Path::new(&name), "fdatasync of the write's range");
            let inode = s.inodes.get_mut(&ino).expect("inode");
            if let Some(at) = inode.pending.iter().position(|p| p.id == id) {
                let p = inode.pending.remove(at);
                apply(&mut inode.durable, &p.change);
            }
            Ok(Written::Unfixed)
        })
        .await
    }

    /// Both kinds of sync make the file's observed writes and length changes durable.
    async fn sync(&self, _data_only: bool) -> io::Result<()> {
        let polls = {
            let mut s = self.lock("fsync")?;
            if Armed::hit(&mut s.fail_sync) {
                s.log.failed_ops += 1;
                return Err(io::Error::from_raw_os_error(libc_eio()));
            }
            s.trace(Path::new(&self.name), "fsync");
            let inode = s.inodes.get_mut(&self.ino).expect("inode");
            let (covered, rest): (Vec<Pending>, Vec<Pending>) =
                std::mem::take(&mut inode.pending).into_iter().partition(|p| p.observed);
            inode.pending = rest;
            for p in covered {
                apply(&mut inode.durable, &p.change);
            }
            s.polls()
        };
        delay(polls, || ()).await;
        Ok(())
    }

    async fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.writable {
            return Err(read_only());
        }
        let (polls, id) = {
            let mut s = self.lock("truncate")?;
            let current = s.inodes.get(&self.ino).expect("inode").live.len() as u64;
            if len > current {
                s.space()?;
            }
            let id = s.push_change(self.ino, Change::SetLen(len));
            (s.polls(), id)
        };
        let disk = self.disk.clone();
        let ino = self.ino;
        delay(polls, move || disk.state.lock().observe(ino, id)).await;
        Ok(())
    }

    async fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset + len;
        let current = self.len().await?;
        if end > current {
            self.set_len(end).await?;
        }
        Ok(())
    }

    async fn len(&self) -> io::Result<u64> {
        let s = self.lock("stat")?;
        Ok(s.inodes.get(&self.ino).expect("inode").live.len() as u64)
    }
}

fn tear(s: &mut State, image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let sectors = data.len().div_ceil(SECTOR);
    match s.below(3) {
        // A prefix cut at a sector boundary.
        0 => {
            // Below `sectors`, a usize.
            #[allow(clippy::cast_possible_truncation)]
            let keep = (s.below(sectors as u64) as usize * SECTOR).min(data.len());
            apply(image, &Change::Write { offset, data: data[..keep].to_vec() });
        }
        // A prefix cut at a byte.
        1 => {
            // Below `data.len()`, a usize.
            #[allow(clippy::cast_possible_truncation)]
            let keep = s.below(data.len() as u64) as usize;
            apply(image, &Change::Write { offset, data: data[..keep].to_vec() });
        }
        // Some sectors and not others (a disk may persist them in any order).
        _ => {
            for i in 0..sectors {
                if s.below(2) == 0 {
                    let start = i * SECTOR;
                    let end = (start + SECTOR).min(data.len());
                    apply(
                        image,
                        &Change::Write { offset: offset + start as u64, data: data[start..end].to_vec() },
                    );
                }
            }
        }
    }
}

#[cfg(test)]
// Unit tests build small images and patterns: their casts cannot truncate or are meant to.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn synced_writes_survive_and_unsynced_ones_may_not() {
        let disk = SimDisk::new(1);
        block_on(async {
            disk.create_dir_all(Path::new("/d")).await.unwrap();
            disk.sync_dir(Path::new("/")).await.unwrap();
            let f = disk.open(Path::new("/d/a"), OpenMode::Create).await.unwrap();
            disk.sync_dir(Path::new("/d")).await.unwrap();
            f.writev(0, vec![Bytes::from_static(b"hello")]).await.unwrap();
            f.sync(true).await.unwrap();
            f.writev(5, vec![Bytes::from(vec![7u8; 4096])]).await.unwrap();
            assert_eq!(f.len().await.unwrap(), 4101);
        });
        disk.crash();
        let bytes = disk.read_file(Path::new("/d/a")).expect("synced file survives");
        assert_eq!(&bytes[..5], b"hello");
        assert!(bytes.len() >= 5);
    }

    #[test]
    fn an_fsync_does_not_cover_a_write_whose_completion_was_not_seen() {
        // Many seeds: the unobserved write must sometimes be lost (it is pending at the
        // crash) and the observed one never.
        let mut lost = 0;
        for seed in 0..64 {
            let disk = SimDisk::new(seed);
            block_on(async {
                let f = disk.open(Path::new("/a"), OpenMode::Create).await.unwrap();
                disk.sync_dir(Path::new("/")).await.unwrap();
                f.writev(0, vec![Bytes::from_static(b"one")]).await.unwrap();
                // Submitted and dropped after its first poll: unless the seed completed it
                // at that poll, its completion was never seen.
                let mut w = Box::pin(f.writev(3, vec![Bytes::from_static(b"two")]));
                let waker = futures::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                let _ = w.as_mut().poll(&mut cx);
                drop(w);
                f.sync(true).await.unwrap();
            });
            disk.crash();
            let bytes = disk.read_file(Path::new("/a")).unwrap();
            assert_eq!(&bytes[..3], b"one", "seed {seed}");
            if bytes.get(3..6) != Some(b"two".as_slice()) {
                lost += 1;
            }
        }
        assert!(lost > 0, "the unobserved write was never lost in 64 crashes");
    }

    #[test]
    fn unsynced_names_can_be_lost_and_synced_ones_cannot() {
        let mut lost = 0;
        for seed in 0..64 {
            let disk = SimDisk::new(seed);
            block_on(async {
                let f = disk.open(Path::new("/kept"), OpenMode::Create).await.unwrap();
                disk.sync_dir(Path::new("/")).await.unwrap();
                drop(f);
                disk.open(Path::new("/maybe"), OpenMode::Create).await.unwrap();
                disk.rename(Path::new("/kept"), Path::new("/renamed")).await.unwrap();
            });
            disk.crash();
            let names = disk.list();
            assert!(
                names.contains(&PathBuf::from("/kept")) || names.contains(&PathBuf::from("/renamed")),
                "seed {seed}: {names:?}"
            );
            if !names.contains(&PathBuf::from("/maybe")) {
                lost += 1;
            }
        }
        assert!(lost > 0 && lost < 64, "lost {lost} of 64");
    }

    #[test]
    fn faults_fire_where_armed_and_stale_handles_fail() {
        let disk = SimDisk::new(7);
        block_on(async {
            let f = disk.open(Path::new("/a"), OpenMode::Create).await.unwrap();
            disk.fail_op(2, false);
            f.writev(0, vec![Bytes::from_static(b"x")]).await.unwrap();
            assert_eq!(f.sync(true).await.unwrap_err().raw_os_error(), Some(5));
            f.sync(true).await.unwrap();
            disk.fail_space(1, false);
            assert_eq!(
                f.writev(1, vec![Bytes::from_static(b"y")]).await.unwrap_err().raw_os_error(),
                Some(28)
            );
            disk.flip_read("a", 1);
            let read = f.read(0, 1, true).await.unwrap();
            assert_ne!(read, b"x");
            assert_eq!(f.read(0, 1, true).await.unwrap(), b"x");
            disk.misdirect_write("a", 1);
            f.writev(0, vec![Bytes::from_static(b"z")]).await.unwrap();
            assert_eq!(f.read(0, 1, true).await.unwrap(), b"x", "the write went elsewhere");
            assert_eq!(disk.fault_log().misdirected.len(), 1);
            disk.crash();
            assert!(f.len().await.is_err(), "a handle from before the crash must fail");
        });
    }

    #[test]
    fn same_seed_same_crash() {
        let run = |seed| {
            let disk = SimDisk::new(seed);
            block_on(async {
                let f = disk.open(Path::new("/a"), OpenMode::Create).await.unwrap();
                for i in 0..32u64 {
                    f.writev(i * 700, vec![Bytes::from(vec![i as u8; 700])]).await.unwrap();
                }
            });
            let report = disk.crash();
            (report, disk.read_file(Path::new("/a")))
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
