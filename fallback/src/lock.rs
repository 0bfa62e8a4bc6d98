//! Advisory locks on a directory: one writer or any number of readers per directory.
//!
//! On Unix the lock is `flock(2)` on a descriptor of the directory itself, taken without
//! waiting (`LOCK_NB`). Locking the directory rather than a lock file inside it means there
//! is no file a user could delete to let a second opener in, nothing is created (so a
//! shared lock works on a read-only mount), and the lock dies with the descriptor: closing
//! it, or the death of the process (`SIGKILL` included), releases it. `flock` locks belong
//! to the open file description, so a second open in the *same* process conflicts with the
//! first just as another process does. Elsewhere the lock is taken on a file named `LOCK`
//! inside the directory (created when missing).
//!
//! Run these calls inside a [`Pool`](crate::Pool) job: opening the directory may wait for
//! the disk.

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;

/// How a directory is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Any number of shared holders, no exclusive one (read-only opens).
    Shared,
    /// One holder and no other, shared or exclusive (a writer).
    Exclusive,
}

/// A held lock; dropping it releases the lock (the descriptor closes).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    mode: LockMode,
}

impl DirLock {
    /// The mode the lock is held in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

/// Why [`try_lock_dir`] did not take the lock.
#[derive(Debug)]
pub enum LockError {
    /// Another holder has the directory locked in a conflicting mode. `holders` are the
    /// process ids that hold a lock on it, where the platform tells (`/proc/locks` on
    /// Linux); empty where it does not.
    Held {
        /// Process ids holding a lock on the directory.
        holders: Vec<u32>,
    },
    /// The directory could not be opened or locked.
    Io(io::Error),
}

/// Locks directory `dir` in `mode` without waiting.
pub fn try_lock_dir(dir: &Path, mode: LockMode) -> Result<DirLock, LockError> {
    let file = open_lock_target(dir).map_err(LockError::Io)?;
    let taken = match mode {
        LockMode::Shared => file.try_lock_shared(),
        LockMode::Exclusive => file.try_lock(),
    };
    match taken {
        Ok(()) => Ok(DirLock { _file: file, mode }),
        Err(TryLockError::WouldBlock) => Err(LockError::Held { holders: holders_of_held(dir) }),
        Err(TryLockError::Error(e)) => Err(LockError::Io(e)),
    }
}

#[cfg(unix)]
fn open_lock_target(dir: &Path) -> io::Result<File> {
    let file = File::open(dir)?;
    if !file.metadata()?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
    }
    Ok(file)
}

#[cfg(not(unix))]
fn open_lock_target(dir: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join("LOCK"))
}

/// The holders of a lock just found held: the kernel's table is read again, up to
/// [`HOLDER_READS`] times, while it names none (seen once in the test suite: a conflicting
/// lock that `/proc/locks` did not list at that instant).
fn holders_of_held(dir: &Path) -> Vec<u32> {
    for _ in 1..HOLDER_READS {
        let h = holders(dir);
        if !h.is_empty() {
            return h;
        }
        std::thread::yield_now();
    }
    holders(dir)
}

/// Reads of `/proc/locks` for the holders of a lock found held.
const HOLDER_READS: usize = 5;

/// The process ids holding a `flock` on `dir`, read from `/proc/locks` (Linux); empty where
/// that cannot be known.
#[cfg(target_os = "linux")]
fn holders(dir: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(table)) = (std::fs::metadata(dir), std::fs::read_to_string("/proc/locks")) else {
        return Vec::new();
    };
    let dev = meta.dev();
    let id = format!("{:02x}:{:02x}:{}", rustix::fs::major(dev), rustix::fs::minor(dev), meta.ino());
    let mut pids: Vec<u32> = table.lines().filter_map(|line| holder_in_line(line, &id)).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(not(target_os = "linux"))]
fn holders(_dir: &Path) -> Vec<u32> {
    Vec::new()
}

/// The pid of a granted `FLOCK` line of `/proc/locks` on the file `id`
/// (`major:minor:inode`, as the kernel prints it). Lines of waiters (`->`) are skipped.
/// Example: `3: FLOCK  ADVISORY  WRITE 4021 00:2c:811 0 EOF`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn holder_in_line(line: &str, id: &str) -> Option<u32> {
    let mut fields = line.split_whitespace().skip(1);
    let kind = fields.next()?;
    if kind != "FLOCK" {
        return None;
    }
    let (_advisory, _access, pid, file) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    if file != id {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_lines_parse() {
        assert_eq!(holder_in_line("3: FLOCK  ADVISORY  WRITE 4021 00:2c:811 0 EOF", "00:2c:811"), Some(4021));
        assert_eq!(holder_in_line("3: FLOCK  ADVISORY  READ 77 fd:00:9 0 EOF", "fd:00:9"), Some(77));
        assert_eq!(holder_in_line("3: FLOCK  ADVISORY  WRITE 4021 00:2c:812 0 EOF", "00:2c:811"), None);
        assert_eq!(holder_in_line("3: -> FLOCK  ADVISORY  WRITE 9 00:2c:811 0 EOF", "00:2c:811"), None);
        assert_eq!(holder_in_line("1: POSIX  ADVISORY  WRITE 5 00:2c:811 0 EOF", "00:2c:811"), None);
    }

    #[test]
    fn exclusive_excludes_everything_and_shared_excludes_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock_dir(dir.path(), LockMode::Exclusive).unwrap();
        for mode in [LockMode::Shared, LockMode::Exclusive] {
            match try_lock_dir(dir.path(), mode) {
                Err(LockError::Held { holders }) => {
                    if cfg!(target_os = "linux") {
                        assert_eq!(holders, vec![std::process::id()]);
                    }
                }
                other => panic!("a second {mode:?} lock beside an exclusive one: {other:?}"),
            }
        }
        drop(first);
        let a = try_lock_dir(dir.path(), LockMode::Shared).unwrap();
        let b = try_lock_dir(dir.path(), LockMode::Shared).unwrap();
        assert_eq!(a.mode(), LockMode::Shared);
        assert!(matches!(try_lock_dir(dir.path(), LockMode::Exclusive), Err(LockError::Held { .. })));
        drop((a, b));
        try_lock_dir(dir.path(), LockMode::Exclusive).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        match try_lock_dir(&dir.path().join("absent"), LockMode::Shared) {
            Err(LockError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
