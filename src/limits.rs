//! Every bound ringkv enforces, in one place, with compile-time checks of their relations.
//! The public ones are what a caller meets: sizes of keys, values, bucket names and one
//! commit, the smallest cache, the floors of the memory bounds of
//! [`Options`](crate::Options), and the attempts of a read-modify-write; the rest shape
//! the engine's pages and tables and may change with any release.

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// Longest value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024 * 1024;
/// Longest bucket name, in bytes.
pub const MAX_BUCKET_NAME_LEN: usize = 255;
/// Largest WAL record accepted: one commit's write set, encoded (each write takes its key,
/// its value and 13 bytes), must fit.
pub const MAX_WAL_RECORD_LEN: usize = 1 << 30;
/// Largest frame in a data or blob file.
pub(crate) const MAX_FRAME_LEN: usize = 1 << 30;
/// Largest manifest record.
pub(crate) const MAX_MANIFEST_RECORD_LEN: usize = 1 << 30;
/// Largest number of pages the mapping table can hold (chunks * chunk size).
pub(crate) const MAX_PAGES: u64 = (MAPPING_CHUNKS as u64) * (MAPPING_CHUNK_LEN as u64);
/// Mapping table chunk length (slots allocated together).
pub(crate) const MAPPING_CHUNK_LEN: usize = 4096;
/// Number of mapping table chunks.
pub(crate) const MAPPING_CHUNKS: usize = 1 << 14;
/// Smallest `cache_capacity` accepted, in bytes.
pub const MIN_CACHE_CAPACITY: usize = 64 * 1024;
/// Delta-chain length at which a leaf is consolidated.
pub(crate) const CONSOLIDATE_CHAIN_LEN: usize = 16;
/// Deltas a cached leaf's chain holds before a delta frame holding them all also
/// consolidates it in memory (`tree/forest/capture.rs`, `framed_merge`): enough that a
/// scan pays for walking them, and more than a leaf written once or twice between
/// checkpoints holds (a load past the cache, where the merge is work under the cut's locks
/// for a leaf soon evicted: measured 7-13% of the 3M-key bulk load's keys/s at every depth).
pub(crate) const FRAMED_CONSOLIDATE_DEPTH: usize = 4;
/// Blind writes (deltas over an evicted leaf's stub) a leaf takes before the next writer
/// loads it; folded in at once, more would make one image many times `SPLIT_LEAF_BYTES`.
pub(crate) const MAX_BLIND_DELTAS: usize = CONSOLIDATE_CHAIN_LEN / 2;
/// Delta frames a page's chain on disk holds at most (above its base): a checkpoint that
/// would write one more loads the page and writes a base instead, so a load reads at most
/// this many frames plus one, all at once.
pub(crate) const MAX_DELTA_FRAMES: usize = 3;
/// A page's new versions go out as a delta frame only while the frame stays below this
/// fraction (1/n) of the page's base; a larger one is written as a base.
pub(crate) const DELTA_BASE_RATIO: usize = 2;
/// An evicted leaf takes blind writes while its size (its image on disk, frames of its
/// chain included, plus the blind writes in memory) stays below this; past it, the next
/// writer loads the leaf, whose write then splits it. Twice the split size: a leaf evicted
/// just below the split size still takes a few blind writes.
pub(crate) const BLIND_PAGE_BYTES: usize = 2 * SPLIT_LEAF_BYTES;
/// A leaf whose encoded size passes this many bytes is split.
pub(crate) const SPLIT_LEAF_BYTES: usize = 4 * 1024;
/// A leaf with at least this many keys may split.
pub(crate) const SPLIT_MIN_KEYS: usize = 2;
/// An inner node with more children than this is split.
pub(crate) const SPLIT_INNER_CHILDREN: usize = 128;

const _: () = assert!(MAX_VALUE_LEN < MAX_WAL_RECORD_LEN);
const _: () = assert!(MAX_VALUE_LEN < MAX_FRAME_LEN);
const _: () = assert!(SPLIT_INNER_CHILDREN >= 4);
const _: () = assert!(MAX_PAGES <= u32::MAX as u64);

/// The most one dirty page is charged against `Options::dirty_limit` (an index page's
/// charge, and the cap of every other: `tree::forest`, invariant 6): a checkpoint holds
/// its encoded image (a leaf splits past `SPLIT_LEAF_BYTES` when it is written in memory,
/// but the blind writes folded into an evicted leaf when it is loaded can take it to about
/// twice that) and, for a page written while evicted, the page loaded to fold them in.
pub const DIRTY_PAGE_COST: usize = 4 * SPLIT_LEAF_BYTES;
/// What a page whose new versions will go out as a delta frame is charged against
/// `Options::dirty_limit` before the bytes of those versions (twice them are added): the
/// frame's header and links, and the capture's record of it.
pub const DELTA_FRAME_COST: usize = 256;
/// Pages read at once when a checkpoint loads the pages it must write, or when the blob
/// references of pages not read since open are read (a bucket drop, blob GC).
pub(crate) const LOAD_DEPTH: usize = 64;
/// The dirty-page bound never goes below this many pages (tiny caches in tests would
/// otherwise checkpoint on every commit).
pub const MIN_DIRTY_PAGES: usize = 64;
/// The WAL buffer bound (`Options::wal_buffer_limit`) never goes below this.
pub const MIN_WAL_BUFFER: usize = 1 << 20;

/// Snapshot announcement slots of one database (`mvcc`): snapshots beyond this many live at
/// once go to a locked overflow map. 64 slots of 128 bytes: 8 KiB per database, scanned by
/// each horizon.
pub(crate) const SNAPSHOT_SLOTS: usize = 64;

/// Optimistic attempts of a read-modify-write (`Bucket::fetch_update`,
/// `Bucket::compare_and_swap`) before its last one, under the commit lock, which cannot
/// conflict.
pub const UPDATE_OPTIMISTIC_ATTEMPTS: u32 = 4;

/// The most threads `Options::io_threads` and `Options::background_threads` accept (the
/// fallback crate's own bound).
pub const MAX_THREADS: usize = 4096;

/// Slots of the `io_uring` backend's registered file table, shared by every database of the
/// process (`io/direct.rs`): a file open on `io_uring` takes a slot, not a descriptor. The
/// kernel refuses a table larger than the soft `RLIMIT_NOFILE` at the time the ring starts,
/// so the table has the smaller of the two; files opened once it is full take descriptors.
pub(crate) const IO_URING_FILE_SLOTS: u64 = 1 << 16;
