//! The WAL writer: append, group commit, segment rollover, poisoning and segment removal.
//!
//! # Group commit protocol
//!
//! All state lives in one `parking_lot::Mutex<State>`, never held across an `.await`:
//! the pending batch (encoded records not yet handed to a flush), three log sequence numbers
//! and at most one in-flight flush.
//!
//! - An **LSN** is the logical end of a record: the count of record bytes appended since
//!   [`Wal::open`]. It is not a file offset (segment headers and rollovers are not counted)
//!   and it is not persisted. `appended_lsn >= written_lsn >= synced_lsn` always.
//! - [`Wal::append`] encodes the record (outside the lock), then under the lock pushes it to
//!   the pending batch and advances `appended_lsn`. It never does I/O.
//! - [`Wal::wait`]`(lsn, d)` loops: under the lock, if `lsn` is covered (`written_lsn` for
//!   `Buffered`, `synced_lsn` for `Sync`) it returns. A `Sync` waiter first raises
//!   `sync_wanted_lsn` to its `lsn`. If a flush is in flight it clones the flush's
//!   `Shared` future, unlocks and awaits it, then loops. Otherwise it *starts* a flush:
//!   it takes the whole pending batch and the active segment out of the state, builds the
//!   flush future, stores it as `in_flight` (a `futures::future::Shared`), unlocks and
//!   awaits it. A waiter therefore awaits at most two flushes: the one that was in flight
//!   when its record was appended, and the next, which takes its record.
//! - A **flush** (1) rolls over to a new segment if the batch would carry the active one
//!   past `segment_bytes` (see below), (2) writes the whole batch, behind a batch mark
//!   (`record.rs`: its own offset and the segment bytes synced so far, which recovery uses
//!   to tell a torn tail from damage), with ONE write at the segment's offset and
//!   awaits its completion. The write is a *durable write* (`IoFile::writev_at_dsync`,
//!   `RWF_DSYNC`: the write and its data sync as one submission) when a `Sync` waiter is
//!   already waiting (`sync_wanted_lsn > synced_lsn`) and the segment holds no unsynced
//!   bytes; it is a plain `writev_at` otherwise. A durable write covers only its own
//!   range, hence the second condition. (3) Under the lock it sets `written_lsn`
//!   to the batch end and reads `sync_wanted_lsn`: if any waiter wants more than is synced
//!   and the segment has unsynced bytes (a plain write was used) it issues ONE
//!   `sync_data` — only after the write completion was seen, so the fsync covers it — and
//!   sets `synced_lsn`; (4) under the lock puts the active segment back and clears
//!   `in_flight`. With N concurrent `Sync` committers: one submission per batch (a
//!   durable write), or one write and one fsync after unsynced `Buffered` batches.
//!   A batch of `Buffered` waiters only is not fsynced (unless a `Sync` waiter joins while
//!   it is being written).
//! - **Cancellation safety without a background task**: the flush is a `Shared` future
//!   stored in the state, so it is not owned by any one waiter. If the waiter that started
//!   it (or any other) is dropped mid-flush, the flush is merely not polled until the next
//!   waiter clones it from the state and polls it to completion. Only one flush exists at a
//!   time, and only it touches the active segment (it owns it while in flight).
//!   [`Wal::flush`] is a `Sync` wait for everything appended so far, so an engine ticker
//!   calling it drives flushes for `Durability::None` commits.
//! - **Poisoning**: a failed write, fsync or segment creation poisons the WAL. The pending
//!   batch is dropped, every waiter of the failed flush gets [`Error::ReadOnly`], and every
//!   later `append`/`wait`/`flush` returns `Error::ReadOnly` with the reason. An fsync is
//!   never retried: after a failed fsync the kernel may have dropped the dirty pages, so a
//!   second fsync that succeeds proves nothing.
//!
//! Each flush emits a `trace` event (target `ringkv::wal`: segment, bytes written, whether
//! it fsynced); segment creation and removal are `debug` events.
//!
//! # Segment rollover
//!
//! Before writing a non-empty batch, if the active segment holds records and
//! `offset + batch_bytes > segment_bytes`, the flush (a) waits for a zero fill in progress,
//! truncates the segment's preallocated tail at its last record and `fsync`s it (or
//! `sync_data`s it if it has unsynced writes and no tail), so that a later segment existing
//! implies every earlier one is complete on disk and ends at its last record, (b) makes
//! the next segment, and (c) writes the batch there. For (b), a segment *prepared ahead*
//! is published: once half of the active segment is written, [`Wal::prepare_ahead`] (the
//! engine's background task) writes the next segment as `wal-{seq:016x}.next`
//! ([`super::prepared_file_name`]): its header and first [`PREALLOC_FIRST_BYTES`] of zeros
//! in one write, one `sync_data`. The rollover renames it to its segment name,
//! `sync_dir`s the directory and opens it under that name: no file is created, written or
//! synced on the commit path. Without one (not prepared yet, preparation failed, or a
//! database whose background task does not prepare), the rollover creates the segment
//! with `CreateNew`, writes its header, `sync_data`s it and `sync_dir`s the directory,
//! writes its first zeros and `sync_data`s them.
//!
//! A `.next` file is never part of the log: recovery does not read it and a writable
//! [`Wal::open`] deletes it. It is renamed only at (b), after (a), so the rule above holds:
//! a crash before the directory sync leaves either name, the `.next` one (deleted) or the
//! segment name on a complete, synced, empty segment (header, then zeros: a clean end). A
//! preparation that a rollover overtook (it created the segment itself) removes its file.
//!
//! # Preallocation
//!
//! The active segment is zero-filled ahead of its records (`Zone`): zeros are written and
//! synced, not `fallocate`d, because on ext4 `fallocate` leaves *unwritten* extents whose
//! first write is itself a metadata change for the journal (measured on this project's
//! ext4 VM disk, 4 KiB appends + `fdatasync`: growing file 136-191 us p50, `fallocate`d
//! 136-153 us, zero-filled 80-83 us). An append inside the zone changes no metadata, so its
//! data sync writes only data. [`Wal::prepare_ahead`], run by the engine's background task,
//! extends the zone when less than half is left; a batch that outruns the zone still
//! lands (the file grows as without preallocation). Zone invariant: a fill writes only at
//! or after every byte a flush wrote or is writing, and a flush that would reach a fill in
//! progress waits for it first, so zeros never overwrite a record. A failed fill poisons
//! the WAL like a failed batch fsync. A batch
//! larger than `segment_bytes` goes whole into one segment (a record never straddles two).
//!
//! # Segment removal
//!
//! [`Wal::remove_below`] deletes the oldest segments while every record in them has
//! `ts <= frontier_ts`, never the active (last) one. Removals are serialized, oldest first,
//! and each is followed by a directory sync, so the segments on disk always form a
//! contiguous run of sequence numbers (recovery treats a gap as corruption).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use super::reader::{recover, SegmentInfo};
use super::record::{encode, encode_mark, encode_segment_header, WalRecord, MARK_LEN, SEGMENT_HEADER_LEN};
use super::{is_prepared_file_name, prepared_file_name, segment_file_name};
use crate::error::{Error, Result};
use crate::io::{IoDriver, IoFile, OpenMode};
use crate::options::Durability;

/// A flush shared by every waiter of its batch (also the type of a zero fill).
type FlushFuture = Shared<BoxFuture<'static, Result<()>>>;

/// Bytes of a new segment zero-filled (written and synced) when it is created, header
/// included (less when `segment_bytes` is smaller).
pub const PREALLOC_FIRST_BYTES: u64 = 256 * 1024;
/// The least a [`Wal::prepare_ahead`] zero fill adds; it adds as much as the zone already
/// holds when that is more (so the zone doubles), up to [`PREALLOC_MAX_STEP_BYTES`].
const PREALLOC_MIN_STEP_BYTES: u64 = 1024 * 1024;
/// The most one zero fill adds.
const PREALLOC_MAX_STEP_BYTES: u64 = 16 * 1024 * 1024;
/// Zeros the fills write from (one vectored write of several slices of it).
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Counters of a [`Wal`] since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records accepted by [`Wal::append`].
    pub records_appended: u64,
    /// Batches written (one `writev_at` each).
    pub batches_written: u64,
    /// `sync_data` calls on segments plus `sync_dir` calls on the directory issued by the
    /// writer (batch fsyncs, rollover fsyncs, segment creation and removal), plus the
    /// durable writes (`dsync_writes`), each one data sync.
    pub fsyncs: u64,
    /// Bytes written to segments: records and segment headers.
    pub bytes_written: u64,
    /// Zeros written ahead of the records to preallocate segments.
    pub zero_fill_bytes: u64,
    /// Batches written as one durable write (`RWF_DSYNC`: the write and its data sync in
    /// one submission), each also counted in `batches_written` and `fsyncs`.
    pub dsync_writes: u64,
    /// Bytes of the segment files on disk now (a segment prepared ahead included).
    pub disk_bytes: u64,
    /// Rollovers that published a segment prepared ahead ([`Wal::prepare_ahead`]) instead
    /// of creating one on the commit path.
    pub segments_prepared: u64,
}

/// The write-ahead log: recovery at open, then appends with group commit.
///
/// `Send + Sync`; share it behind an `Arc`. See the [module documentation](self) for the
/// group-commit protocol. Dropping the `Wal` abandons what was appended but not flushed:
/// call [`Wal::flush`] first.
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    io: IoDriver,
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Serializes [`Wal::remove_below`] so that deletions happen oldest first.
    remove_lock: tokio::sync::Mutex<()>,
    records_appended: AtomicU64,
    batches_written: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    dsync_writes: AtomicU64,
    zero_fill_bytes: AtomicU64,
    segments_prepared: AtomicU64,
    /// Set by a flush that left less than half of the zone ahead, cleared by
    /// `prepare_ahead`: read by the engine without the state lock.
    wants_preparation: std::sync::atomic::AtomicBool,
    /// Test failpoints: fail the next batch write / batch fsync.
    #[cfg(test)]
    fail_next_write: std::sync::atomic::AtomicBool,
    #[cfg(test)]
    fail_next_sync: std::sync::atomic::AtomicBool,
}

struct State {
    /// Encoded records appended and not yet taken by a flush, in LSN order.
    pending: Vec<Bytes>,
    /// Total length of `pending`.
    pending_bytes: u64,
    /// Largest `ts` in `pending`.
    pending_max_ts: Option<u64>,
    appended_lsn: u64,
    written_lsn: u64,
    synced_lsn: u64,
    /// Largest LSN a `Sync` waiter (or `flush`) asked for; a flush fsyncs if it is above
    /// `synced_lsn`.
    sync_wanted_lsn: u64,
    /// The flush in progress, if any.
    in_flight: Option<FlushFuture>,
    /// The segment being written; `None` while a flush owns it (or after poisoning).
    active: Option<ActiveSegment>,
    /// Every segment on disk, oldest first; the last one is the active one.
    segments: VecDeque<SegmentInfo>,
    /// Why the WAL refuses writes, once a durable write failed.
    poisoned: Option<String>,
    /// The active segment's preallocated zone (`None` for a read-only WAL).
    zone: Option<Zone>,
    /// The segment prepared ahead for the next rollover (its `seq` is the active one's + 1).
    next: Option<Prepared>,
    /// A preparation of the next segment is running (at most one at a time).
    next_preparing: bool,
    /// A rollover is making the next segment: a preparation that ends meanwhile is
    /// discarded (the rollover took no prepared segment, so it creates one itself).
    rolling: bool,
    /// The `seq` whose preparation failed: not tried again (its rollover creates it).
    next_failed: Option<u64>,
}

/// A segment prepared ahead ([`Wal::prepare_ahead`]): created as
/// [`prepared_file_name`]`(seq)`, its header and first [`PREALLOC_FIRST_BYTES`] of zeros
/// written and synced. The rollover that needs it renames it to its segment name.
struct Prepared {
    seq: u64,
    path: PathBuf,
    zeroed_end: u64,
}

/// The active segment's preallocated zone: bytes `[0, zeroed_end)` of the file were
/// written (records, or zeros) and synced, so a write there changes no file metadata and
/// its `fdatasync` need not commit the file system's journal.
///
/// Invariant: a zero fill writes only at or after `reserved_end` as it was when the fill
/// started (`filling.0`), and a flush writes beyond `filling.0` only once that fill is
/// over; so zeros never land over a record.
struct Zone {
    seq: u64,
    file: IoFile,
    zeroed_end: u64,
    /// End of what flushes wrote or are writing in the segment.
    reserved_end: u64,
    /// The zero fill in progress: where it starts, and the future (shared: a flush that
    /// must wait for it polls it too).
    filling: Option<(u64, FlushFuture)>,
}

impl State {
    fn check_invariants(&self) {
        assert!(self.synced_lsn <= self.written_lsn, "synced past written");
        assert!(self.written_lsn <= self.appended_lsn, "written past appended");
        if self.poisoned.is_none() && self.in_flight.is_none() {
            assert!(self.active.is_some(), "no flush in flight but no active segment");
            assert_eq!(self.written_lsn + self.pending_bytes, self.appended_lsn);
        }
    }
}

/// The segment being written.
struct ActiveSegment {
    file: IoFile,
    seq: u64,
    /// Where the next batch goes.
    offset: u64,
    /// Bytes were written since this segment's last `sync_data`.
    unsynced: bool,
    /// Bytes of the segment known durable (its last completed `sync_data` covered them).
    synced: u64,
}

/// What one flush writes.
struct Batch {
    bufs: Vec<Bytes>,
    bytes: u64,
    max_ts: Option<u64>,
    /// `written_lsn` before this batch.
    start_lsn: u64,
    /// `written_lsn` after this batch.
    end_lsn: u64,
}

fn read_only(reason: &str) -> Error {
    Error::ReadOnly(reason.to_string())
}

impl Wal {
    /// Recovery + open: lists the segments of `dir` (which must exist), reads them in order
    /// and returns every intact record with `ts > frontier_ts`, in log order.
    ///
    /// The first bad record (bad CRC, impossible length, short read) ends the log: that is
    /// the torn tail, or the clean end of a preallocated segment when only zeros follow.
    /// Its segment is truncated at that offset and synced (a torn tail is logged with
    /// `tracing::warn!`). Writing then continues in a new segment (next sequence number,
    /// preallocated), created and directory-synced before this returns.
    ///
    /// Errors: [`Error::Corruption`] for a bad header in a segment other than a last one cut
    /// during creation, or for a missing segment in the sequence; [`Error::Io`];
    /// [`Error::InvalidArgument`] if `segment_bytes` cannot hold a header and a record.
    pub async fn open(
        io: IoDriver,
        dir: PathBuf,
        frontier_ts: u64,
        segment_bytes: u64,
    ) -> Result<(Wal, Vec<WalRecord>)> {
        if segment_bytes <= 2 * SEGMENT_HEADER_LEN as u64 {
            return Err(Error::invalid(format!("wal segment_bytes {segment_bytes} too small")));
        }
        let recovered = recover(&io, &dir, frontier_ts, true).await?;
        // Segments prepared ahead that no rollover published: never part of the log. Removed
        // only once recovery succeeded (a failed open changes nothing it need not).
        for name in io.read_dir(&dir).await? {
            if is_prepared_file_name(&name) {
                tracing::debug!(file = %name, "WAL: removing an unpublished prepared segment");
                io.remove_file(&dir.join(&name)).await?;
            }
        }
        let inner = Inner::new(io, dir, segment_bytes, recovered.segments, None);
        let active = inner.create_segment(recovered.next_seq).await?;
        {
            let mut st = inner.state.lock();
            let listed: Vec<u64> = st.segments.iter().rev().take(2).map(|s| s.seq).collect();
            assert_eq!(listed[0], active.seq, "the new segment is listed last");
            if let Some(&previous) = listed.get(1) {
                assert_eq!(previous + 1, active.seq, "the new segment follows the recovered ones");
            }
            st.active = Some(active);
            st.check_invariants();
        }
        Ok((Wal { inner }, recovered.records))
    }

    /// Recovery for a read-only open: the records [`Wal::open`] would return, read without
    /// changing anything on disk (no cut, no new segment; `dir` missing reads as an empty
    /// log). The returned WAL refuses every append with [`Error::ReadOnly`].
    pub async fn open_read_only(
        io: IoDriver,
        dir: PathBuf,
        frontier_ts: u64,
    ) -> Result<(Wal, Vec<WalRecord>)> {
        let recovered = if io.exists(&dir).await? {
            recover(&io, &dir, frontier_ts, false).await?
        } else {
            super::reader::Recovered { records: Vec::new(), segments: Vec::new(), next_seq: 1 }
        };
        let inner = Inner::new(
            io,
            dir,
            u64::MAX,
            recovered.segments,
            Some("the database was opened read-only".into()),
        );
        Ok((Wal { inner }, recovered.records))
    }
}

impl Inner {
    fn new(
        io: IoDriver,
        dir: PathBuf,
        segment_bytes: u64,
        segments: Vec<SegmentInfo>,
        poisoned: Option<String>,
    ) -> Arc<Inner> {
        Arc::new(Inner {
            io,
            dir,
            segment_bytes,
            state: Mutex::new(State {
                pending: Vec::new(),
                pending_bytes: 0,
                pending_max_ts: None,
                appended_lsn: 0,
                written_lsn: 0,
                synced_lsn: 0,
                sync_wanted_lsn: 0,
                in_flight: None,
                active: None,
                segments: segments.into(),
                poisoned,
                zone: None,
                next: None,
                next_preparing: false,
                rolling: false,
                next_failed: None,
            }),
            remove_lock: tokio::sync::Mutex::new(()),
            records_appended: AtomicU64::new(0),
            batches_written: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            dsync_writes: AtomicU64::new(0),
            zero_fill_bytes: AtomicU64::new(0),
            segments_prepared: AtomicU64::new(0),
            wants_preparation: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_next_write: Default::default(),
            #[cfg(test)]
            fail_next_sync: Default::default(),
        })
    }
}

impl Wal {
    /// Encodes `rec` and appends it to the open batch. Synchronous and cheap (no I/O);
    /// called under the engine's commit lock, so records are appended in `ts` order (the
    /// WAL does not rely on it: it tracks the largest `ts` per segment).
    ///
    /// Returns the record's LSN, the logical end of the record in the log, to pass to
    /// [`Wal::wait`]. Errors: [`Error::ReadOnly`] if the WAL is poisoned,
    /// [`Error::InvalidArgument`] if the record is over a bound of [`crate::limits`].
    pub fn append(&self, rec: &WalRecord) -> Result<u64> {
        let encoded = encode(rec)?;
        let len = encoded.len() as u64;
        let mut st = self.inner.state.lock();
        if let Some(reason) = &st.poisoned {
            return Err(read_only(reason));
        }
        st.pending.push(encoded);
        st.pending_bytes += len;
        st.pending_max_ts = Some(st.pending_max_ts.map_or(rec.ts, |m| m.max(rec.ts)));
        st.appended_lsn += len;
        let lsn = st.appended_lsn;
        drop(st);
        self.inner.records_appended.fetch_add(1, Ordering::Relaxed);
        Ok(lsn)
    }

    /// Waits until the record ending at `lsn` is durable to the level `durability`:
    /// `Sync` = written and `fdatasync`ed, `Buffered` = written (write completed),
    /// `None` = returns at once.
    ///
    /// Cancellation safe: dropping this future never stalls other waiters (see the module
    /// documentation). Errors: [`Error::ReadOnly`] if the WAL is or becomes poisoned,
    /// [`Error::InvalidArgument`] for an `lsn` that was never returned by `append`.
    pub async fn wait(&self, lsn: u64, durability: Durability) -> Result<()> {
        // Bounded: see the module documentation (at most two flushes are awaited; one more
        // round is allowed for the final check).
        for _round in 0..4 {
            let flush = {
                let mut st = self.inner.state.lock();
                if let Some(reason) = &st.poisoned {
                    return Err(read_only(reason));
                }
                if lsn > st.appended_lsn {
                    return Err(Error::invalid(format!(
                        "wal lsn {lsn} beyond the appended end {}",
                        st.appended_lsn
                    )));
                }
                let done = match durability {
                    Durability::None => true,
                    Durability::Buffered => st.written_lsn >= lsn,
                    Durability::Sync => st.synced_lsn >= lsn,
                };
                if done {
                    return Ok(());
                }
                if durability == Durability::Sync {
                    st.sync_wanted_lsn = st.sync_wanted_lsn.max(lsn);
                }
                match &st.in_flight {
                    Some(flush) => flush.clone(),
                    None => self.inner.start_flush(&mut st),
                }
            };
            flush.await?;
        }
        unreachable!("wal wait: lsn {lsn} not durable after two flushes that covered it")
    }

    /// Writes and `fdatasync`s everything appended so far. Used by the engine's background
    /// ticker (for `Durability::None` commits) and by close. Returns at once if everything
    /// is already synced. Errors: [`Error::ReadOnly`] if the WAL is poisoned.
    pub async fn flush(&self) -> Result<()> {
        let lsn = self.inner.state.lock().appended_lsn;
        self.wait(lsn, Durability::Sync).await
    }

    /// Prepares the WAL ahead of the writes, off the commit path. (1) When less than half
    /// of the active segment's preallocated zone is left, zero-fills (writes and syncs
    /// zeros) the next stretch: as much as the zone holds (so it doubles), between 1 and
    /// 16 MiB, never past `segment_bytes`. Appends inside the zone then neither grow the
    /// file nor allocate blocks, so their `fdatasync` (or `RWF_DSYNC`) writes data and no
    /// file system journal. A flush that would write where a fill is going waits for it
    /// (see `Zone`). (2) Once half of the active segment is written, prepares the next
    /// segment (see "Rollover" in the module documentation), so that the rollover renames
    /// it instead of creating, writing and syncing a new file on the commit path. Called
    /// by the engine's background task after each WAL flush; returns at once when nothing
    /// is needed.
    ///
    /// Errors: [`Error::ReadOnly`] if the fill fails (the WAL is then poisoned). A failed
    /// preparation of the next segment is logged and left to the rollover (it poisons
    /// nothing: no record is in that file).
    pub async fn prepare_ahead(&self) -> Result<()> {
        let fill = {
            let mut st = self.inner.state.lock();
            if st.poisoned.is_some() {
                return Ok(());
            }
            let segment_bytes = self.inner.segment_bytes;
            let Some(zone) = st.zone.as_mut() else { return Ok(()) };
            if let Some((_, fill)) = &zone.filling {
                Some(fill.clone())
            } else {
                self.inner.wants_preparation.store(false, Ordering::Relaxed);
                needs_fill(zone, segment_bytes).map(|(start, end)| {
                    let fill = Arc::clone(&self.inner).fill(zone.seq, zone.file.clone(), start, end).boxed().shared();
                    zone.filling = Some((start, fill.clone()));
                    fill
                })
            }
        };
        if let Some(fill) = fill {
            fill.await?;
        }
        self.inner.prepare_next().await;
        Ok(())
    }

    /// True when a flush left less than half of the active segment's zone ahead and no
    /// [`Wal::prepare_ahead`] ran since: the engine wakes its background task.
    pub fn wants_preparation(&self) -> bool {
        self.inner.wants_preparation.load(Ordering::Relaxed)
    }

    /// Deletes whole segments all of whose records have `ts <= frontier_ts`, oldest first,
    /// never the segment being written. Called after a checkpoint up to `frontier_ts` is
    /// published. Returns how many segments were deleted. Works on a poisoned WAL too.
    pub async fn remove_below(&self, frontier_ts: u64) -> Result<usize> {
        let _serial = self.inner.remove_lock.lock().await;
        let mut victims: VecDeque<SegmentInfo> = {
            let mut st = self.inner.state.lock();
            let removable = st.segments.len().saturating_sub(1);
            let count = st
                .segments
                .iter()
                .take(removable)
                .take_while(|s| s.max_ts.is_none_or(|ts| ts <= frontier_ts))
                .count();
            st.segments.drain(..count).collect()
        };
        let count = victims.len();
        while let Some(victim) = victims.front() {
            let removed = self.inner.remove_segment(victim).await;
            if let Err(e) = removed {
                // Give the segments not deleted back, in front of the others.
                let mut st = self.inner.state.lock();
                while let Some(back) = victims.pop_back() {
                    st.segments.push_front(back);
                }
                return Err(e);
            }
            victims.pop_front();
        }
        Ok(count)
    }

    /// Bytes of records appended and not yet written (the pending batch and the one being
    /// written).
    pub fn buffered_bytes(&self) -> u64 {
        let st = self.inner.state.lock();
        st.appended_lsn - st.written_lsn
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let i = &self.inner;
        WalStats {
            records_appended: i.records_appended.load(Ordering::Relaxed),
            batches_written: i.batches_written.load(Ordering::Relaxed),
            fsyncs: i.fsyncs.load(Ordering::Relaxed),
            bytes_written: i.bytes_written.load(Ordering::Relaxed),
            dsync_writes: i.dsync_writes.load(Ordering::Relaxed),
            zero_fill_bytes: i.zero_fill_bytes.load(Ordering::Relaxed),
            disk_bytes: {
                let st = i.state.lock();
                st.segments.iter().map(|s| s.bytes).sum::<u64>() + st.next.as_ref().map_or(0, |n| n.zeroed_end)
            },
            segments_prepared: i.segments_prepared.load(Ordering::Relaxed),
        }
    }

    /// True once a write or fsync failed: the WAL refuses every append and wait.
    pub fn is_poisoned(&self) -> bool {
        self.inner.state.lock().poisoned.is_some()
    }

    /// Makes the next batch write (`sync == false`) or batch fsync (`sync == true`) fail.
    #[cfg(test)]
    pub(crate) fn inject_failure(&self, sync: bool) {
        let flag = if sync { &self.inner.fail_next_sync } else { &self.inner.fail_next_write };
        flag.store(true, Ordering::SeqCst);
    }

    /// A probe telling whether this WAL's shared state is still allocated.
    #[cfg(test)]
    pub(crate) fn liveness_probe(&self) -> impl Fn() -> bool + 'static {
        let weak = Arc::downgrade(&self.inner);
        move || weak.strong_count() > 0
    }

    /// Where the zero fill in progress starts, if one is.
    #[cfg(test)]
    pub(crate) fn filling_from(&self) -> Option<u64> {
        self.inner.state.lock().zone.as_ref().and_then(|z| z.filling.as_ref().map(|f| f.0))
    }

    /// Sequence numbers of the segments on disk, oldest first (the last is being written).
    #[cfg(test)]
    pub(crate) fn segment_seqs(&self) -> Vec<u64> {
        self.inner.state.lock().segments.iter().map(|s| s.seq).collect()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // The in-flight flush holds an `Arc<Inner>`: drop it (outside the lock) so that
        // `Inner` is freed. Its I/O, if any, is cut short like a crash would.
        let (in_flight, filling) = {
            let mut st = self.inner.state.lock();
            (st.in_flight.take(), st.zone.as_mut().and_then(|z| z.filling.take()))
        };
        drop(in_flight);
        drop(filling);
    }
}

impl Inner {
    /// Takes the pending batch and the active segment, builds the flush and stores it as
    /// `in_flight`. Called with the state locked and no flush in flight.
    fn start_flush(self: &Arc<Self>, st: &mut State) -> FlushFuture {
        st.check_invariants();
        assert!(st.in_flight.is_none(), "one flush at a time");
        let segment = st.active.take().expect("active segment present when no flush in flight");
        let batch = Batch {
            bufs: std::mem::take(&mut st.pending),
            bytes: std::mem::take(&mut st.pending_bytes),
            max_ts: st.pending_max_ts.take(),
            start_lsn: st.written_lsn,
            end_lsn: st.appended_lsn,
        };
        let flush = Arc::clone(self).run_flush(segment, batch).boxed().shared();
        st.in_flight = Some(flush.clone());
        flush
    }

    /// The flush future: write, maybe fsync, then publish the result (or poison).
    async fn run_flush(self: Arc<Self>, mut segment: ActiveSegment, batch: Batch) -> Result<()> {
        let end_lsn = batch.end_lsn;
        let result = self.write_and_sync(&mut segment, batch).await;
        let mut st = self.state.lock();
        let finished = st.in_flight.take();
        assert!(finished.is_some(), "a running flush is the one in flight");
        let outcome = match result {
            Ok(()) => {
                assert_eq!(st.written_lsn, end_lsn);
                st.active = Some(segment);
                st.check_invariants();
                Ok(())
            }
            Err(e) => {
                let reason = format!("a durable write failed: {e}");
                tracing::error!(error = %e, "WAL poisoned: refusing further writes");
                st.pending.clear();
                st.pending_bytes = 0;
                st.pending_max_ts = None;
                st.poisoned = Some(reason.clone());
                Err(Error::ReadOnly(reason))
            }
        };
        drop(st);
        drop(finished);
        outcome
    }

    async fn write_and_sync(&self, segment: &mut ActiveSegment, batch: Batch) -> Result<()> {
        let mut written = 0;
        if batch.bytes > 0 {
            let would_end = segment.offset + MARK_LEN as u64 + batch.bytes;
            if segment.offset > SEGMENT_HEADER_LEN as u64 && would_end > self.segment_bytes {
                self.roll_over(segment, batch.start_lsn).await?;
            }
            // One buffer per record behind the batch mark; the I/O layer splits at
            // `UIO_MAXIOV` if it must.
            assert_eq!(batch.bufs.iter().map(|b| b.len() as u64).sum::<u64>(), batch.bytes);
            let mut bufs = Vec::with_capacity(batch.bufs.len() + 1);
            bufs.push(encode_mark(segment.offset, segment.synced));
            bufs.extend(batch.bufs);
            let file_bytes = MARK_LEN as u64 + batch.bytes;
            self.reserve(segment.seq, segment.offset + file_bytes).await?;
            // One submission when a `Sync` waiter is already there and the segment holds
            // no unsynced bytes: a durable write (`RWF_DSYNC`) covers exactly this batch's
            // range, and everything before it in the segment is already synced. Otherwise
            // (earlier `Buffered` batches not synced) the write is plain and the fdatasync
            // below covers them all.
            let dsync = !segment.unsynced && {
                let st = self.state.lock();
                st.sync_wanted_lsn > st.synced_lsn
            };
            #[cfg(test)]
            if self.fail_next_write.swap(false, Ordering::SeqCst) {
                let e = std::io::Error::other("injected write failure");
                return Err(Error::io(segment.file.path(), "write", e));
            }
            if dsync {
                #[cfg(test)]
                if self.fail_next_sync.swap(false, Ordering::SeqCst) {
                    let e = std::io::Error::other("injected fsync failure");
                    return Err(Error::io(segment.file.path(), "write_dsync", e));
                }
                segment.file.writev_at_dsync(segment.offset, bufs).await?;
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.dsync_writes.fetch_add(1, Ordering::Relaxed);
            } else {
                segment.file.writev_at(segment.offset, bufs).await?;
            }
            written = file_bytes;
            segment.offset += file_bytes;
            segment.unsynced = !dsync;
            if dsync {
                segment.synced = segment.offset;
            }
            self.batches_written.fetch_add(1, Ordering::Relaxed);
            self.bytes_written.fetch_add(file_bytes, Ordering::Relaxed);
        }
        let need_sync = {
            let mut st = self.state.lock();
            assert!(batch.end_lsn >= st.written_lsn);
            st.written_lsn = batch.end_lsn;
            let info = st.segments.back_mut().expect("the active segment is listed");
            assert_eq!(info.seq, segment.seq);
            info.bytes = info.bytes.max(segment.offset);
            if let Some(ts) = batch.max_ts {
                info.max_ts = Some(info.max_ts.map_or(ts, |m| m.max(ts)));
            }
            self.note_preparation(&st);
            st.sync_wanted_lsn > st.synced_lsn
        };
        let mut fsynced = false;
        if need_sync {
            // After a durable write, `unsynced` is false: the segment is synced to its end.
            if segment.unsynced {
                fsynced = true;
                // The write above (and every earlier one) completed before this fsync is
                // submitted, so it covers them.
                #[cfg(test)]
                if self.fail_next_sync.swap(false, Ordering::SeqCst) {
                    let e = std::io::Error::other("injected fsync failure");
                    return Err(Error::io(segment.file.path(), "fsync", e));
                }
                segment.file.sync_data().await?;
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                segment.unsynced = false;
                segment.synced = segment.offset;
            }
            let mut st = self.state.lock();
            st.synced_lsn = batch.end_lsn;
        }
        // One event per flush, at `trace` (a group commit's flush, not each commit): off,
        // it costs a level check.
        tracing::trace!(target: "ringkv::wal", seq = segment.seq, bytes = written, fsync = fsynced, "WAL flush");
        Ok(())
    }

    /// Raises `wants_preparation` when [`Wal::prepare_ahead`] has work: a zero fill, or the
    /// next segment to prepare.
    fn note_preparation(&self, st: &State) {
        let fill = st.zone.as_ref().is_some_and(|z| z.filling.is_none() && needs_fill(z, self.segment_bytes).is_some());
        if fill || next_wanted(st, self.segment_bytes).is_some() {
            self.wants_preparation.store(true, Ordering::Relaxed);
        }
    }

    /// Closes `segment` (fsync if needed) and replaces it with a fresh next segment.
    /// `written_lsn` is the LSN up to which `segment` holds the log.
    async fn roll_over(&self, segment: &mut ActiveSegment, written_lsn: u64) -> Result<()> {
        // No zero fill may run on the segment while its tail is cut.
        self.reserve(segment.seq, u64::MAX).await?;
        let file_len = self.state.lock().segments.back().expect("the active segment is listed").bytes;
        if file_len > segment.offset {
            // The preallocated tail goes: a segment before the last ends at its last
            // record (recovery treats a bad record before the last segment as damage).
            // `sync_all` makes the length durable before the next segment exists.
            segment.file.set_len(segment.offset).await?;
            segment.file.sync_all().await?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            segment.unsynced = false;
            let mut st = self.state.lock();
            st.segments.back_mut().expect("the active segment is listed").bytes = segment.offset;
            assert_eq!(st.written_lsn, written_lsn);
            st.synced_lsn = written_lsn;
        }
        if segment.unsynced {
            segment.file.sync_data().await?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            segment.unsynced = false;
            let mut st = self.state.lock();
            assert_eq!(st.written_lsn, written_lsn);
            st.synced_lsn = written_lsn;
        }
        let prepared = {
            let mut st = self.state.lock();
            st.rolling = true;
            st.next.take()
        };
        let _rolling = OnDrop(|| self.state.lock().rolling = false);
        let next = match prepared {
            Some(p) if p.seq == segment.seq + 1 => self.publish(p).await?,
            stale => {
                if let Some(p) = stale {
                    self.discard(&p.path).await;
                }
                self.create_segment(segment.seq + 1).await?
            }
        };
        *segment = next;
        Ok(())
    }

    /// Step (2) of [`Wal::prepare_ahead`]: prepares the next segment when
    /// [`next_wanted`] says so. Never fails: a failure is logged, its file removed, and
    /// that segment left to its rollover.
    async fn prepare_next(&self) {
        let seq = {
            let mut st = self.state.lock();
            let Some(seq) = next_wanted(&st, self.segment_bytes) else { return };
            st.next_preparing = true;
            seq
        };
        // Cleared however this ends, also when the future is dropped mid-way (its file, if
        // any, is then removed by the next try or the next open).
        let _preparing = OnDrop(|| self.state.lock().next_preparing = false);
        let path = self.dir.join(prepared_file_name(seq));
        let result = self.write_prepared(seq, &path).await;
        let stale = {
            let mut st = self.state.lock();
            match result {
                // Still the next one (no rollover is making it or made it meanwhile): kept.
                Ok(p) if !st.rolling && st.zone.as_ref().is_some_and(|z| z.seq + 1 == p.seq) && st.poisoned.is_none() => {
                    st.next.replace(p).map(|old| old.path)
                }
                Ok(p) => Some(p.path),
                Err(e) => {
                    tracing::warn!(seq, error = %e, "WAL: preparing the next segment failed; its rollover creates it");
                    st.next_failed = Some(seq);
                    Some(path)
                }
            }
        };
        if let Some(path) = stale {
            self.discard(&path).await;
        }
    }

    /// Writes segment `seq` prepared at `path`: the header and the first zeros as one
    /// write (the file is not a segment until it is renamed, so a torn write of both is
    /// harmless), then one `fdatasync`.
    async fn write_prepared(&self, seq: u64, path: &std::path::Path) -> Result<Prepared> {
        // A leftover of this process (a preparation discarded after a failed removal).
        if self.io.exists(path).await? {
            self.io.remove_file(path).await?;
        }
        let file = self.io.open(path, OpenMode::CreateNew).await?;
        let header = SEGMENT_HEADER_LEN as u64;
        let zeroed_end = self.first_zeroed_end();
        let mut bufs = vec![encode_segment_header(seq)];
        bufs.extend(zero_bufs(zeroed_end - header));
        file.writev_at(0, bufs).await?;
        file.sync_data().await?;
        self.count_new_segment(1, zeroed_end);
        tracing::debug!(seq, zeroed_end, "WAL: next segment prepared");
        Ok(Prepared { seq, path: path.to_owned(), zeroed_end })
    }

    /// The rollover's side of a prepared segment: renames it to its segment name, syncs
    /// the directory (then it exists as a segment, complete and synced, and every earlier
    /// one was cut and synced before), opens it under that name, and lists it as the
    /// newest segment with its zone.
    async fn publish(&self, p: Prepared) -> Result<ActiveSegment> {
        let path = self.dir.join(segment_file_name(p.seq));
        self.io.rename(&p.path, &path).await?;
        self.io.sync_dir(&self.dir).await?;
        // Opened under its new name: a file's size and truncation go by path on io_uring.
        let file = self.io.open(&path, OpenMode::ReadWrite).await?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.segments_prepared.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(seq = p.seq, "WAL: new segment (prepared ahead)");
        Ok(self.install_segment(p.seq, path, file, p.zeroed_end))
    }

    /// Where a new segment's zeros end at first: [`PREALLOC_FIRST_BYTES`] past its start,
    /// within the segment size, never inside the header.
    fn first_zeroed_end(&self) -> u64 {
        PREALLOC_FIRST_BYTES.min(self.segment_bytes).max(SEGMENT_HEADER_LEN as u64)
    }

    /// Counts a new segment's `fsyncs`, its header and its first zeros (up to
    /// `zeroed_end`) in the WAL's statistics.
    fn count_new_segment(&self, fsyncs: u64, zeroed_end: u64) {
        let header = SEGMENT_HEADER_LEN as u64;
        self.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        self.bytes_written.fetch_add(header, Ordering::Relaxed);
        self.zero_fill_bytes.fetch_add(zeroed_end - header, Ordering::Relaxed);
    }

    /// Lists segment `seq` (created or published: complete, synced, its directory entry
    /// synced, zeros up to `zeroed_end`) as the newest one, makes its zone the active zone,
    /// and returns it as the active segment, empty past its header.
    fn install_segment(&self, seq: u64, path: PathBuf, file: IoFile, zeroed_end: u64) -> ActiveSegment {
        let header = SEGMENT_HEADER_LEN as u64;
        let mut st = self.state.lock();
        st.segments.push_back(SegmentInfo { seq, path, max_ts: None, bytes: zeroed_end });
        st.zone = Some(Zone { seq, file: file.clone(), zeroed_end, reserved_end: header, filling: None });
        ActiveSegment { file, seq, offset: header, unsynced: false, synced: header }
    }

    /// Removes a prepared segment no rollover will use; a failure is only logged (the
    /// next writable open removes it).
    async fn discard(&self, path: &std::path::Path) {
        if let Err(e) = self.io.remove_file(path).await {
            tracing::warn!(file = %path.display(), error = %e, "WAL: could not remove an unused prepared segment");
        }
    }

    /// Creates segment `seq` with its header (synced, directory synced), then its first
    /// [`PREALLOC_FIRST_BYTES`] of zeros (synced), and lists it as the newest segment with
    /// its zone.
    async fn create_segment(&self, seq: u64) -> Result<ActiveSegment> {
        let path = self.dir.join(segment_file_name(seq));
        let file = self.io.open(&path, OpenMode::CreateNew).await?;
        let header = SEGMENT_HEADER_LEN as u64;
        let zeroed_end = self.first_zeroed_end();
        // The header alone first, synced: a crash before the zeros are synced may leave
        // them as garbage, which recovery then cuts as a torn tail behind a valid header
        // (one write of both could leave a garbled header on a segment recovery cannot
        // tell from a damaged one).
        file.writev_at(0, vec![encode_segment_header(seq)]).await?;
        file.sync_data().await?;
        self.io.sync_dir(&self.dir).await?;
        let mut fsyncs = 2;
        if zeroed_end > header {
            file.writev_at(header, zero_bufs(zeroed_end - header)).await?;
            file.sync_data().await?;
            fsyncs += 1;
        }
        self.count_new_segment(fsyncs, zeroed_end);
        tracing::debug!(seq, zeroed_end, "WAL: new segment");
        Ok(self.install_segment(seq, path, file, zeroed_end))
    }

    /// Before a flush writes segment `seq` up to `end`: waits for a zero fill that would
    /// write at or after a byte below `end` (zone invariant), then records `end` as
    /// reserved. `end == u64::MAX` waits for any fill (before the tail is cut).
    async fn reserve(&self, seq: u64, end: u64) -> Result<()> {
        // Bounded: a fill is started only by `prepare_ahead`, at or after `reserved_end`;
        // once this raises `reserved_end`, no later fill can start below `end`.
        loop {
            let wait = {
                let mut st = self.state.lock();
                let zone = st.zone.as_mut().expect("a writable WAL has a zone");
                assert_eq!(zone.seq, seq, "the zone is the active segment's");
                match &zone.filling {
                    Some((start, fill)) if end > *start => fill.clone(),
                    _ => {
                        zone.reserved_end = zone.reserved_end.max(end);
                        return Ok(());
                    }
                }
            };
            wait.await?;
        }
    }

    /// The zero fill of `start..end` of segment `seq`: one write, one `fdatasync`, then the
    /// zone grows (or, on failure, the WAL is poisoned: a failed fsync may have consumed a
    /// write-back error of a record's page).
    async fn fill(self: Arc<Self>, seq: u64, file: IoFile, start: u64, end: u64) -> Result<()> {
        let result = async {
            file.writev_at(start, zero_bufs(end - start)).await?;
            file.sync_data().await
        }
        .await;
        let mut st = self.state.lock();
        let zone = st.zone.as_mut().filter(|z| z.seq == seq).expect("a zone is replaced only after its fill");
        let finished = zone.filling.take();
        let outcome = match result {
            Ok(()) => {
                zone.zeroed_end = zone.zeroed_end.max(end);
                let info = st.segments.back_mut().expect("the active segment is listed");
                assert_eq!(info.seq, seq);
                info.bytes = info.bytes.max(end);
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.zero_fill_bytes.fetch_add(end - start, Ordering::Relaxed);
                tracing::debug!(seq, start, end, "WAL: segment zone extended");
                Ok(())
            }
            Err(e) => {
                let reason = format!("preallocating a WAL segment failed: {e}");
                tracing::error!(error = %e, "WAL poisoned: refusing further writes");
                st.poisoned.get_or_insert(reason.clone());
                Err(Error::ReadOnly(reason))
            }
        };
        drop(st);
        drop(finished);
        outcome
    }

    /// Deletes one segment file and makes the deletion durable before the next one.
    async fn remove_segment(&self, segment: &SegmentInfo) -> Result<()> {
        self.io.remove_file(&segment.path).await?;
        self.io.sync_dir(&self.dir).await?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(seq = segment.seq, max_ts = ?segment.max_ts, "WAL: segment removed");
        Ok(())
    }
}

/// Runs `f` when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// The `seq` of the segment to prepare ahead, if one is wanted now: the WAL is writable
/// and not poisoned, half of the active segment is written or reserved, and the next
/// segment is neither prepared, nor being prepared, nor given up on.
fn next_wanted(st: &State, segment_bytes: u64) -> Option<u64> {
    let zone = st.zone.as_ref()?;
    let seq = zone.seq + 1;
    let wanted = st.poisoned.is_none()
        && !st.next_preparing
        && !st.rolling
        && zone.reserved_end >= segment_bytes / 2
        && st.next.as_ref().is_none_or(|n| n.seq != seq)
        && st.next_failed != Some(seq);
    wanted.then_some(seq)
}

/// The range the next zero fill of `zone` writes, if less than half of its zone is left
/// ahead of the writes and the segment is not zeroed to `segment_bytes` yet.
fn needs_fill(zone: &Zone, segment_bytes: u64) -> Option<(u64, u64)> {
    let header = SEGMENT_HEADER_LEN as u64;
    let start = zone.zeroed_end.max(zone.reserved_end);
    let left = zone.zeroed_end.saturating_sub(zone.reserved_end);
    if start >= segment_bytes || left >= (zone.zeroed_end - header) / 2 {
        return None;
    }
    let step = (zone.zeroed_end - header).clamp(PREALLOC_MIN_STEP_BYTES, PREALLOC_MAX_STEP_BYTES);
    Some((start, (start + step).min(segment_bytes)))
}

/// `len` zero bytes as slices of [`ZEROS`] (no allocation but the vector).
fn zero_bufs(len: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64);
        // `n <= ZEROS.len()`, a usize.
        #[allow(clippy::cast_possible_truncation)]
        out.push(Bytes::from_static(&ZEROS[..n as usize]));
        left -= n;
    }
    out
}
