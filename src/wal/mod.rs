//! The write-ahead log: a redo log of committed write sets, with group commit.
//!
//! A committing transaction [`append`](Wal::append)s one [`WalRecord`] (its commit
//! timestamp and its puts and deletes) and [`wait`](Wal::wait)s for it to be durable.
//! Concurrent committers share flushes: per batch, one vectored durable write (`RWF_DSYNC`,
//! the write and its data sync in one submission), or one write and one `fdatasync` when
//! earlier batches of the segment were written without a sync.
//!
//! Files: segments named `wal-{seq:016x}.log` in the WAL directory, each a 16-byte header
//! followed by records. The byte layout is in [`record`]; the group-commit, rollover and
//! removal protocols in [`writer`]; recovery in [`reader`].
//!
//! # Safety properties
//!
//! 1. A record acknowledged by `wait(lsn, Durability::Sync)` was written by a durable write
//!    that completed, or written and covered by an `fdatasync` submitted after its write
//!    completed; it is returned by recovery (unless a
//!    checkpoint frontier at or above its `ts` was passed to [`Wal::open`]).
//! 2. Recovery never returns a record that fails its CRC or its structural checks: the
//!    first such record ends the log and is cut (the segment is truncated there; a bad
//!    record before the last segment is `Corruption`).
//! 3. A segment exists only once every earlier segment is fsynced and complete, and the
//!    segments on disk always form a contiguous run of sequence numbers.
//! 4. After a failed write or fsync the WAL is poisoned: nothing is appended or
//!    acknowledged again until it is reopened (recovery then decides what is durable).
//! 5. Every future is cancellation safe and `Send`; no background task is needed: a dropped
//!    waiter never stalls another.

pub mod reader;
pub mod record;
pub mod writer;

#[cfg(test)]
// Tests index segment images by file offsets: the casts cannot truncate there.
#[allow(clippy::cast_possible_truncation)]
mod tests;

pub use record::{RecordError, WalOp, WalRecord};
pub use writer::{Wal, WalStats};

/// File name of WAL segment `seq`.
pub fn segment_file_name(seq: u64) -> String {
    format!("wal-{seq:016x}.log")
}

/// File name of WAL segment `seq` while it is prepared ahead of the rollover that publishes
/// it (renamed to [`segment_file_name`]): recovery never reads it, a writable open deletes it.
pub fn prepared_file_name(seq: u64) -> String {
    format!("wal-{seq:016x}.next")
}

/// Whether `name` is a segment prepared ahead ([`prepared_file_name`]).
pub fn is_prepared_file_name(name: &str) -> bool {
    parse_wal_file_name(name, ".next").is_some()
}

/// The sequence number of a WAL segment file name, or `None` if `name` is not one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_wal_file_name(name, ".log")
}

/// The sequence number of `wal-{seq:016x}{suffix}`, or `None` if `name` is not that.
fn parse_wal_file_name(name: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(suffix)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Wal>();
};
