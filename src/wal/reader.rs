//! Recovery: reads the segments of a WAL directory in order, returns the intact records and
//! cuts the torn tail.
//!
//! # Protocol
//!
//! 1. List the directory; every name `wal-{seq:016x}.log` is a segment, anything else is
//!    ignored. Sequence numbers must be contiguous (the writer creates them one after the
//!    other and every deletion is ordered and directory-synced, see [`super::writer`]); a
//!    missing one is [`Error::Corruption`] naming the missing file.
//! 2. Read each segment front to back. Its header must carry the magic and its own sequence
//!    number. A bad header is [`Error::Corruption`] at offset 0 (magic) or 8 (seq), except
//!    for the *last* segment when the file is no longer than a header or holds only zeros
//!    after it: that is a segment whose creation was cut by a crash (the header and the
//!    first preallocated zeros are one write, which a crash may keep in part; it holds no
//!    record, because the header is synced before any record is written) and it is
//!    deleted.
//! 3. The first record of the *last* segment that fails to decode (impossible length, short
//!    read, bad CRC, or a malformed payload) ends the log: that is the torn tail; the
//!    segment is truncated at the record's offset and synced, and what was cut is logged
//!    with `tracing::warn!`. Before cutting, the rest of the segment is searched for batch
//!    marks (`record.rs`): a mark lying at an offset other than its own, or one written
//!    when the segment was synced beyond the bad record, proves damage rather than a torn
//!    append, and recovery fails with [`Error::Corruption`]; a mark read in order at a
//!    wrong offset is the same error. Then the record is read a second time: if it is
//!    intact then, the first read returned damaged bytes and recovery fails with
//!    [`Error::Corruption`] rather than drop records. A bad record in an earlier segment is [`Error::Corruption`]:
//!    a segment is created only after the one before it is complete and synced, so it
//!    cannot be a torn tail, and cutting there would drop acknowledged commits.
//!
//!    3a. A segment is preallocated: the writer zero-fills it ahead of its records (see
//!    [`super::writer`]). So in the *last* segment, a bad record from which the file holds
//!    only zeros to its end (read twice: the same read as the records, then a fresh one;
//!    reads that disagree are [`Error::Corruption`]) is a **clean end**, not a torn tail (no zero run decodes as a
//!    record or a mark: a zero length is impossible). A writer truncates the segment there
//!    and syncs it, without a warning. Zeros that do not reach the end of the file (a later
//!    batch follows) are judged as above: a torn tail, or damage when a later mark proves
//!    the range was durable. A segment before the last never has a zero tail: the writer
//!    cuts it at rollover before the next segment exists, so one there is corruption.
//!    Segments written before preallocation (no zero tail) read the same way.
//! 4. The last segment, when intact, is `fdatasync`ed before recovery returns: after a
//!    process crash its tail may sit unsynced in the page cache, and the writer's next
//!    segment must not exist on disk before it is durable (regression
//!    `regression_restart_then_power_loss_keeps_the_log_contiguous`).
//! 5. Read-only recovery (`writable == false`, for a read-only open) reads and checks the
//!    same way and stops at the same place, but changes nothing: segments are opened
//!    read-only, nothing is synced, truncated or deleted.
//! 6. Records with `ts > frontier_ts` are returned in log order; every segment's largest
//!    `ts` (over all its records, also those at or below the frontier) is returned for
//!    [`Wal::remove_below`](super::Wal::remove_below).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{
    decode_frame, decode_mark, decode_payload, decode_segment_header, RecordError, WalRecord, FRAME_LEN,
    MARK_LEN, MARK_PAYLOAD_LEN, SEGMENT_HEADER_LEN,
};
use super::{parse_segment_file_name, segment_file_name};
use crate::error::{Error, Result};
use crate::io::{IoDriver, IoFile, OpenMode};

/// Bytes read from a segment per I/O during recovery (more when one record is larger).
const READ_CHUNK_BYTES: usize = 1 << 20;

/// A segment known to the WAL: its sequence number, path, and the largest `ts` it holds.
#[derive(Debug, Clone)]
pub(super) struct SegmentInfo {
    pub(super) seq: u64,
    pub(super) path: PathBuf,
    /// Largest record `ts` in the segment; `None` while it holds no record.
    pub(super) max_ts: Option<u64>,
    /// Its length on disk (for `WalStats::disk_bytes`).
    pub(super) bytes: u64,
}

/// What recovery hands to the writer.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Intact records with `ts > frontier_ts`, in log order.
    pub(super) records: Vec<WalRecord>,
    /// The segments kept, oldest first.
    pub(super) segments: Vec<SegmentInfo>,
    /// Sequence number for the segment the writer creates next.
    pub(super) next_seq: u64,
}

/// Recovers the WAL in `dir`. See the module documentation for the protocol; with
/// `writable == false` nothing on disk is changed (5).
pub(super) async fn recover(
    io: &IoDriver,
    dir: &Path,
    frontier_ts: u64,
    writable: bool,
) -> Result<Recovered> {
    let mode = if writable { OpenMode::ReadWrite } else { OpenMode::Read };
    let seqs = list_segments(io, dir).await?;
    let mut records = Vec::new();
    let mut segments = Vec::with_capacity(seqs.len());
    // The smallest seq seen, reused if every segment turns out to be a cut creation.
    let mut next_seq = seqs.first().copied().unwrap_or(1);
    for (index, &seq) in seqs.iter().enumerate() {
        let is_last = index + 1 == seqs.len();
        let path = dir.join(segment_file_name(seq));
        let file = io.open(&path, mode).await?;
        let file_len = file.len().await?;
        if !check_header(&file, &path, seq, file_len, is_last).await? {
            // A creation cut by a crash (step 2): the log ends before this segment.
            if writable {
                drop(file);
                io.remove_file(&path).await?;
                io.sync_dir(dir).await?;
            }
            break;
        }
        let (max_ts, end, torn, zeros_first) =
            read_records(&file, &path, file_len, frontier_ts, &mut records).await?;
        // A torn tail is cut to `end` below (a read-only open leaves the file as it is).
        let bytes = if torn.is_some() && writable { end } else { file_len };
        segments.push(SegmentInfo { seq, path: path.clone(), max_ts, bytes });
        next_seq = seq + 1;
        if is_last && torn.is_none() && writable {
            // A process that died without a power loss leaves its last writes in the page
            // cache, maybe not yet durable. The writer is about to create a later segment,
            // and a later segment implies this one is complete on disk: make it so (step 4).
            file.sync_data().await?;
        }
        let clean_end = torn.is_some() && is_last && {
            // Read twice, like a bad record (step 3): bytes that read as zeros once and not
            // the other time are damage seen in flight, not a clean end or a torn tail.
            let zeros_again = zero_tail(&file, end, file_len).await?;
            if zeros_again != zeros_first {
                return Err(Error::corruption(
                    &path,
                    end,
                    "the WAL tail read differently twice (zeros once, not the other time): unreliable reads",
                ));
            }
            zeros_again
        };
        if clean_end {
            // The preallocated tail (step 3a): a clean end. A writer cuts it, so the
            // segment, no longer the last once the writer's segment exists, ends at its
            // last record.
            tracing::debug!(file = %path.display(), end, zeros = file_len - end, "WAL: clean end in a preallocated tail");
            if writable {
                file.set_len(end).await?;
                file.sync_all().await?;
            }
            break;
        }
        if let Some(reason) = torn {
            let later = &seqs[index + 1..];
            if !later.is_empty() {
                // A segment is created only after the previous one is complete and synced,
                // so only the last segment can have a torn tail: a bad record before it is
                // corruption, and cutting there would silently drop acknowledged commits.
                return Err(reason.at(&path, end));
            }
            cut_torn_tail(&file, &path, end, file_len, reason, writable).await?;
            break;
        }
    }
    Ok(Recovered { records, segments, next_seq })
}

/// Step 1: the sequence numbers of the segments in `dir`, in order; a gap is
/// [`Error::Corruption`] naming the missing segment.
async fn list_segments(io: &IoDriver, dir: &Path) -> Result<Vec<u64>> {
    let mut seqs: Vec<u64> =
        io.read_dir(dir).await?.iter().filter_map(|n| parse_segment_file_name(n)).collect();
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(Error::corruption(
                dir.join(segment_file_name(pair[0] + 1)),
                0,
                format!(
                    "WAL segment missing between {} and {}",
                    segment_file_name(pair[0]),
                    segment_file_name(pair[1])
                ),
            ));
        }
    }
    Ok(seqs)
}

/// Step 2: checks the header of segment `seq`. `Ok(false)` for the last segment when the
/// header is bad and the file is no longer than a header or only zeros follow it: a
/// creation cut by a crash (it holds no record).
async fn check_header(file: &IoFile, path: &Path, seq: u64, file_len: u64, is_last: bool) -> Result<bool> {
    let header = if file_len < SEGMENT_HEADER_LEN as u64 {
        Err(RecordError::Truncated { need: SEGMENT_HEADER_LEN as u64, have: file_len })
    } else {
        decode_segment_header(&file.read_exact_at(0, SEGMENT_HEADER_LEN).await?)
    };
    // A creation cut by a crash holds no record: no more than a header, or (the header and
    // the first zeros are one write, which a crash may tear) nothing but zeros after it.
    let holds_no_record = file_len <= SEGMENT_HEADER_LEN as u64
        || (is_last && header.is_err() && zero_tail(file, SEGMENT_HEADER_LEN as u64, file_len).await?);
    match header {
        Err(e) if is_last && holds_no_record => {
            tracing::warn!(
                file = %path.display(),
                len = file_len,
                reason = %e,
                "WAL: last segment has no complete header (creation cut by a crash); deleting it"
            );
            Ok(false)
        }
        Err(e) => Err(e.at(path, 0)),
        Ok(found) if found != seq => Err(Error::corruption(
            path,
            8,
            format!("segment header holds seq {found}, the file name says {seq}"),
        )),
        Ok(_) => Ok(true),
    }
}

/// Step 3, reading: the records of one segment from its header on, those above
/// `frontier_ts` pushed to `records`. Returns the largest `ts` seen, the offset where
/// reading stopped, why it stopped early (a record that does not decode), if it did, and
/// then whether the rest of the file read as zeros (through the same buffer, so the same
/// read as the records).
async fn read_records(
    file: &IoFile,
    path: &Path,
    file_len: u64,
    frontier_ts: u64,
    records: &mut Vec<WalRecord>,
) -> Result<(Option<u64>, u64, Option<RecordError>, bool)> {
    let mut reader = SegmentReader::new(file, file_len);
    let mut offset = SEGMENT_HEADER_LEN as u64;
    let mut max_ts: Option<u64> = None;
    // Bounded: every iteration consumes at least FRAME_LEN + MIN_PAYLOAD_LEN bytes.
    while offset < file_len {
        match reader.record_at(offset).await? {
            Ok((Item::Mark { at, .. }, used)) => {
                if at != offset {
                    return Err(Error::corruption(
                        path,
                        offset,
                        format!("a batch mark written for offset {at} lies at {offset}: a misdirected write"),
                    ));
                }
                offset += used as u64;
            }
            Ok((Item::Record(rec), used)) => {
                assert!(used > FRAME_LEN && offset + used as u64 <= file_len);
                offset += used as u64;
                max_ts = Some(max_ts.map_or(rec.ts, |m| m.max(rec.ts)));
                if rec.ts > frontier_ts {
                    records.push(rec);
                }
            }
            Err(e) => {
                let zeros = reader.zeros_to_end(offset).await?;
                return Ok((max_ts, offset, Some(e), zeros));
            }
        }
    }
    Ok((max_ts, offset, None, false))
}

/// Step 3, cutting: the last segment's first bad record at `offset` is a torn append only
/// if nothing proves it was durable once (a batch mark after it, or a second read that
/// decodes it); then a writer truncates the segment there and syncs it.
async fn cut_torn_tail(
    file: &IoFile,
    path: &Path,
    offset: u64,
    file_len: u64,
    reason: RecordError,
    writable: bool,
) -> Result<()> {
    // A torn append is the end of what was written; damage is not. A batch written
    // after this offset was synced, or a batch found where it was not written,
    // proves the bad record was durable once.
    if let Some(why) = damage_after(file, offset, file_len).await? {
        return Err(Error::corruption(path, offset, format!("{reason}; {why}")));
    }
    // Read the record again before cutting: if it decodes now, the first read
    // returned damaged bytes (a failing device or bus), and cutting would drop
    // records that may be acknowledged.
    let mut again = SegmentReader { file, file_len, buf: Vec::new(), buf_offset: 0 };
    if again.record_at(offset).await?.is_ok() {
        return Err(Error::corruption(
            path,
            offset,
            format!("WAL record read differently twice ({reason}, then intact): unreliable reads"),
        ));
    }
    if !writable {
        tracing::warn!(
            file = %path.display(),
            offset,
            reason = %reason,
            "WAL: torn tail; a read-only open stops here and leaves it for the next writer to cut"
        );
        return Ok(());
    }
    tracing::warn!(
        file = %path.display(),
        offset,
        cut_bytes = file_len - offset,
        reason = %reason,
        "WAL: torn tail; truncating the segment here"
    );
    file.set_len(offset).await?;
    file.sync_all().await?;
    Ok(())
}

/// Whether every byte of the file from `from` to `file_len` is zero: the unwritten part of
/// a preallocated segment (step 3a).
pub(crate) async fn zero_tail(file: &IoFile, from: u64, file_len: u64) -> Result<bool> {
    let mut at = from;
    while at < file_len {
        let n = (file_len - at).min(READ_CHUNK_BYTES as u64);
        // `n <= READ_CHUNK_BYTES`, a usize.
        #[allow(clippy::cast_possible_truncation)]
        let chunk = file.read_exact_at(at, n as usize).await?;
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

/// Looks past the bad record at `bad` for batch marks that prove damage: one found at an
/// offset other than the one it was written for (a misdirected write), or one written when
/// the segment was already synced beyond `bad`.
pub(crate) async fn damage_after(file: &IoFile, bad: u64, file_len: u64) -> Result<Option<String>> {
    let tail_len = file_len - bad;
    let tail_len = usize::try_from(tail_len).map_err(|_| {
        Error::corruption(file.path(), bad, format!("WAL tail of {tail_len} bytes does not fit in memory"))
    })?;
    let tail = file.read_exact_at(bad, tail_len).await?;
    for q in 1..tail.len() {
        let Some((at, synced_to)) = decode_mark(&tail[q..]) else { continue };
        let found = bad + q as u64;
        if at != found {
            return Ok(Some(format!(
                "a batch mark written for offset {at} lies at {found}: a misdirected write"
            )));
        }
        if synced_to > bad {
            return Ok(Some(format!(
                "the batch at {found} was written when the log was synced to {synced_to}: damage, not a torn tail"
            )));
        }
    }
    Ok(None)
}

/// What the log holds at one offset.
pub(crate) enum Item {
    /// A commit record.
    Record(WalRecord),
    /// A batch mark (see `record.rs`), written for segment offset `at`.
    Mark { at: u64 },
}

/// Reads a segment through a buffer of [`READ_CHUNK_BYTES`], so that recovering small
/// records costs one I/O per chunk rather than two per record. Read-only: the offline
/// checker (`crate::check`) walks segments with it too.
pub(crate) struct SegmentReader<'a> {
    file: &'a IoFile,
    file_len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_offset: u64,
}

impl<'a> SegmentReader<'a> {
    /// A reader over `file`, whose length is `file_len`.
    pub(crate) fn new(file: &'a IoFile, file_len: u64) -> SegmentReader<'a> {
        SegmentReader { file, file_len, buf: Vec::new(), buf_offset: 0 }
    }

    /// The `len` bytes at `offset`, or `None` if the file ends before them.
    pub(crate) async fn bytes_at(&mut self, offset: u64, len: usize) -> Result<Option<&[u8]>> {
        let Some(end) = offset.checked_add(len as u64).filter(|&end| end <= self.file_len) else {
            return Ok(None);
        };
        let buf_end = self.buf_offset + self.buf.len() as u64;
        if offset < self.buf_offset || end > buf_end {
            // `end <= file_len` was checked, so this read is bounded by the file size.
            let read_len = (len.max(READ_CHUNK_BYTES) as u64).min(self.file_len - offset);
            // <= max(len, READ_CHUNK_BYTES), both usizes.
            #[allow(clippy::cast_possible_truncation)]
            let read_len_usize = read_len as usize;
            self.buf = self.file.read_exact_at(offset, read_len_usize).await?;
            self.buf_offset = offset;
            assert_eq!(self.buf.len() as u64, read_len);
        }
        // `buf_offset <= offset` and `end <= buf_end` (checked or just read): below buf.len().
        #[allow(clippy::cast_possible_truncation)]
        let start = (offset - self.buf_offset) as usize;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Whether every byte from `offset` to the end of the file is zero, read through the
    /// buffer (the bytes already read are not read again).
    pub(crate) async fn zeros_to_end(&mut self, offset: u64) -> Result<bool> {
        let mut at = offset;
        while at < self.file_len {
            let n = (self.file_len - at).min(READ_CHUNK_BYTES as u64);
            // `n <= READ_CHUNK_BYTES`, a usize.
            #[allow(clippy::cast_possible_truncation)]
            let Some(bytes) = self.bytes_at(at, n as usize).await? else { return Ok(false) };
            if bytes.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n;
        }
        Ok(true)
    }

    /// Decodes the record at `offset`. The outer error is an I/O failure (recovery stops);
    /// the inner one is a bad record (the torn tail).
    pub(crate) async fn record_at(
        &mut self,
        offset: u64,
    ) -> Result<std::result::Result<(Item, usize), RecordError>> {
        let have = self.file_len.saturating_sub(offset);
        let Some(frame) = self.bytes_at(offset, FRAME_LEN).await? else {
            return Ok(Err(RecordError::Truncated { need: FRAME_LEN as u64, have }));
        };
        let frame: &[u8; FRAME_LEN] = frame.try_into().expect("bytes_at returns len bytes");
        let (len, crc) = match decode_frame(frame) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        if len as usize == MARK_PAYLOAD_LEN {
            if let Some((at, _)) = self.bytes_at(offset, MARK_LEN).await?.and_then(decode_mark) {
                return Ok(Ok((Item::Mark { at }, MARK_LEN)));
            }
        }
        let total = FRAME_LEN + len as usize;
        let Some(payload) = self.bytes_at(offset + FRAME_LEN as u64, len as usize).await? else {
            return Ok(Err(RecordError::Truncated { need: total as u64, have }));
        };
        let payload = Bytes::copy_from_slice(payload);
        Ok(decode_payload(&payload, crc).map(|rec| (Item::Record(rec), total)))
    }
}
