//! The one error type of ringkv.
//!
//! Every fallible public call returns [`Result<T>`]. Internal failures are folded into
//! [`Error`] with enough context to act on: an I/O error names the path and the operation,
//! a corruption names the file and the byte offset (it always means bytes read from disk
//! failed a check; a broken in-memory invariant of the engine is [`Error::Internal`]).
//! Bytes read from disk are never trusted: a bad checksum or an impossible length becomes
//! [`Error::Corruption`], never a panic and never data handed to the caller.
//!
//! `Error` is `Clone` (the I/O source is shared behind an `Arc`) because one failed group
//! commit flush is reported to every transaction waiting on it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Result alias used throughout ringkv.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ringkv.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operation (`"read"`, `"write"`, `"fsync"`, `"open"`, ...).
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Bytes on disk failed a checksum or a structural check.
    #[error("corruption in {} at offset {offset}: {what}", file.display())]
    Corruption {
        /// The file holding the bad bytes.
        file: PathBuf,
        /// Byte offset of the bad structure inside `file`.
        offset: u64,
        /// What was wrong.
        what: String,
    },
    /// A write-write conflict under snapshot isolation: another transaction committed a
    /// write to a key this transaction wrote, after this transaction's snapshot was taken.
    /// Retry the transaction.
    #[error("transaction conflict: a key in the write set was committed after this snapshot")]
    Conflict,
    /// A named thing (a bucket) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Bad input: empty or oversize key or value, bad option, bad name.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The database (or the transaction) was closed.
    #[error("the database is closed")]
    Closed,
    /// The database refuses writes, for the reason given: it was opened with
    /// [`Options::read_only`](crate::Options::read_only), or a durable write failed (for
    /// example an fsync) and it stays read-only until it is reopened, because a failed fsync
    /// must never be retried as if nothing happened.
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    /// The engine broke one of its own invariants in memory (a bug in ringkv, not damage on
    /// disk: that is [`Error::Corruption`]). The database turns read-only; reopening it
    /// recovers from the files. Please report it.
    #[error("internal error (a bug in ringkv): {0}")]
    Internal(String),
    /// Another open holds the database directory: a writer excludes every other open (in
    /// this process or another), a read-only open excludes writers. Nothing was read or
    /// written. Retry once the other holder closed (or died: the lock dies with it).
    #[error("the database at {} is in use by another open{}", path.display(), holders_text(holders))]
    Locked {
        /// The database directory.
        path: PathBuf,
        /// Process ids holding the directory's lock, where the platform tells (Linux);
        /// this process's own id when the other open is in this process.
        holders: Vec<u32>,
    },
}

fn holders_text(holders: &[u32]) -> String {
    match holders {
        [] => String::new(),
        [one] => format!(" (held by process {one})"),
        many => format!(" (held by processes {many:?})"),
    }
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Error {
        Error::Io { path: path.into(), op, source: Arc::new(source) }
    }

    /// Builds an [`Error::Corruption`].
    pub fn corruption(file: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> Error {
        Error::Corruption { file: file.into(), offset, what: what.into() }
    }

    /// Builds an [`Error::Internal`].
    pub(crate) fn internal(what: impl Into<String>) -> Error {
        Error::Internal(what.into())
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>) -> Error {
        Error::InvalidArgument(what.into())
    }

    /// True for [`Error::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict)
    }

    /// The [`Error::ReadOnly`] a database answers writes with after `cause` made it
    /// read-only. Its message names the cause once: a cause that is already a `ReadOnly`
    /// is returned as it is.
    pub(crate) fn read_only_after(cause: &Error) -> Error {
        match cause {
            Error::ReadOnly(_) => cause.clone(),
            Error::Io { .. } => Error::ReadOnly(format!("a durable write failed: {cause}")),
            other => Error::ReadOnly(other.to_string()),
        }
    }

    /// True for [`Error::Corruption`].
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}
