//! What `Db::stats` reports ([`Stats`]), and with the feature `metrics` its export
//! through the `metrics` facade (`DbInner::publish_metrics`).
//!
//! Everything here is read from counters the other rooms keep (relaxed atomics, striped
//! where they are hot: `crate::obs`); building a `Stats` takes no lock a commit or a read
//! waits on, except the catalogue's read lock and the WAL state lock for an instant.

use std::sync::atomic::Ordering;

use super::DbInner;
use crate::files::FileKind;
use crate::obs::LatencyHistogram;

/// Counters describing a database, for monitoring and tests ([`Db::stats`](crate::Db::stats)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ringkv::Result<()> {
/// let dir = tempfile::tempdir().expect("a temporary directory");
/// let db = ringkv::Db::open(dir.path(), ringkv::Options::default()).await?;
/// db.bucket("b").await?.put(b"k", b"v").await?;
/// let stats = db.stats();
/// assert!(stats.wal_records >= 1 && stats.dirty_pages <= stats.dirty_pages_limit);
/// db.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Heap bytes of the pages in memory, clean and dirty, with their deltas, counted as
    /// the allocator sizes them. Clean pages are evicted past `cache_capacity` less
    /// `page_table_bytes` (but not below a quarter of `cache_capacity`); dirty ones hold it
    /// at most `dirty_limit` above (a commit past that runs a checkpoint first).
    pub cache_bytes: i64,
    /// `Options::cache_capacity`.
    pub cache_capacity: u64,
    /// Heap bytes of the page table: a slot per page id and a stub per page not in memory,
    /// never evicted (they grow with the number of pages, not with the cache); counted in
    /// `cache_capacity`, so the pages in memory get what the table leaves.
    pub page_table_bytes: i64,
    /// Pages changed since the last checkpoint.
    pub dirty_pages: u64,
    /// What those pages are charged against `dirty_limit`: per page, what a checkpoint
    /// will hold for it (a delta frame's
    /// [`DELTA_FRAME_COST`](crate::limits::DELTA_FRAME_COST) plus twice its versions'
    /// bytes, or [`DIRTY_PAGE_COST`](crate::limits::DIRTY_PAGE_COST) for a page written
    /// as a base).
    pub dirty_bytes: u64,
    /// How many pages charged in full `dirty_limit` holds (`Options::dirty_limit` over
    /// [`DIRTY_PAGE_COST`](crate::limits::DIRTY_PAGE_COST)); pages written as delta
    /// frames are charged less, so more of them fit.
    pub dirty_pages_limit: u64,
    /// The bound on `dirty_bytes`: of what a checkpoint holds, and of the cache's excess
    /// over its capacity.
    pub dirty_limit: u64,
    /// Bytes of page images and copied frames the running checkpoint holds (0 between
    /// checkpoints).
    pub checkpoint_bytes: u64,
    /// The most `checkpoint_bytes` held at once since open.
    pub checkpoint_peak_bytes: u64,
    /// Bytes of WAL records appended and not yet written.
    pub wal_buffer_bytes: u64,
    /// `Options::wal_buffer_limit`: past it, commits wait for the WAL write.
    pub wal_buffer_limit: u64,
    /// Data and blob files.
    pub files: usize,
    /// WAL records appended since open.
    pub wal_records: u64,
    /// WAL fsyncs issued since open.
    pub wal_fsyncs: u64,
    /// WAL rollovers since open that published a segment prepared ahead by the background
    /// task, instead of creating one on the commit path.
    pub wal_segments_prepared: u64,
    /// Checkpoints completed since open.
    pub checkpoints: u64,
    /// Live snapshots.
    pub snapshots: usize,
    /// Page splits since open.
    pub splits: u64,
    /// Page merges since open.
    pub merges: u64,
    /// Delta frames written since open: blind writes to evicted leaves checkpointed as a
    /// frame linked to the leaf's frames on disk, without reading the leaf.
    pub delta_frames: u64,
    /// Chains of delta frames replaced by one base since open (the leaf loaded and
    /// written whole, when its chain was full or GC moved it).
    pub chains_consolidated: u64,
    /// Page images read from disk since open (cache misses of the tree).
    pub page_reads: u64,
    /// Point reads since open that found every page they needed in the cache.
    pub cache_hits: u64,
    /// Point reads since open that read at least one page from disk (scans and commits,
    /// which also load pages, are counted in `page_reads` only).
    pub cache_misses: u64,
    /// Every bucket's approximate size, by name.
    pub buckets: Vec<BucketStats>,
    /// Bytes of the data files (the manifest's sizes, which are the files' lengths).
    pub data_bytes: u64,
    /// Bytes of the blob files.
    pub blob_bytes: u64,
    /// Bytes of the WAL segments on disk.
    pub wal_bytes: u64,
    /// Bytes of the current manifest file (`CURRENT`, a few bytes naming it, aside).
    pub manifest_bytes: u64,
    /// Latency of the commits acknowledged since open (from the call to the
    /// acknowledgement, the durability wait included).
    pub commit_latency: LatencyHistogram,
    /// Latency of the point reads since open.
    pub read_latency: LatencyHistogram,
}

/// One bucket's approximate size ([`Stats::buckets`]).
///
/// Kept by the commits as they are applied (a put of a key without a live version adds a
/// key, a delete of a live one removes it, bytes follow the key and value lengths), saved
/// at each checkpoint and restored at open, then moved by the WAL's replay. Approximate in
/// two ways: a blind write to a leaf not in memory cannot see the key's old version, so a
/// put there counts as a new key and a delete as removing one (of its key's bytes), also
/// in the WAL replay at open once a leaf it wrote was evicted again (a replay larger than
/// the cache; before, it loads each leaf it writes); and a crash can count again the
/// commits that were being applied at a checkpoint's cut (a few per crash). Versions kept for snapshots and on-disk overhead are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketStats {
    /// The bucket's name.
    pub name: String,
    /// Live keys.
    pub keys: u64,
    /// Bytes of the live keys and their values.
    pub bytes: u64,
}

impl DbInner {
    /// [`Stats`] now.
    pub fn stats(&self) -> Stats {
        let w = self.wal.stats();
        let (opts, forest) = (&self.opts, &self.forest);
        let dirty_pages_limit = opts.dirty_pages_limit() as u64;
        let files = self.store.files();
        let disk = |kind: FileKind| files.iter().filter(|f| f.meta.kind == kind).map(|f| f.meta.size).sum();
        Stats {
            cache_bytes: forest.mem_used(),
            cache_capacity: opts.cache_capacity as u64,
            page_table_bytes: forest.page_table_mem(),
            dirty_pages: forest.dirty_pages() as u64,
            dirty_bytes: forest.dirty_bytes(),
            dirty_pages_limit,
            dirty_limit: dirty_pages_limit * crate::limits::DIRTY_PAGE_COST as u64,
            checkpoint_bytes: self.ckpt_mem.now(),
            checkpoint_peak_bytes: self.ckpt_mem.peak(),
            wal_buffer_bytes: self.wal.buffered_bytes(),
            wal_buffer_limit: opts.wal_buffer_bytes() as u64,
            files: files.len(),
            wal_records: w.records_appended,
            wal_fsyncs: w.fsyncs,
            wal_segments_prepared: w.segments_prepared,
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            snapshots: self.mvcc.live_snapshots(),
            splits: self.forest.splits.load(Ordering::Relaxed),
            merges: self.forest.merges.load(Ordering::Relaxed),
            delta_frames: self.forest.delta_frames.load(Ordering::Relaxed),
            chains_consolidated: self.forest.chains_consolidated.load(Ordering::Relaxed),
            page_reads: self.forest.page_reads.load(Ordering::Relaxed),
            cache_hits: forest.read_hits.get(),
            cache_misses: forest.read_misses.get(),
            buckets: self.bucket_stats(),
            data_bytes: disk(FileKind::Data),
            blob_bytes: disk(FileKind::Blob),
            wal_bytes: w.disk_bytes,
            manifest_bytes: self.manifest.disk_bytes(),
            commit_latency: self.commit_latency.snapshot(),
            read_latency: self.read_latency.snapshot(),
        }
    }

    /// [`Stats::buckets`]: every bucket's approximate size, by name.
    fn bucket_stats(&self) -> Vec<BucketStats> {
        let mut v: Vec<BucketStats> = self
            .catalog
            .read()
            .iter()
            .map(|(name, t)| {
                let (keys, bytes) = t.size.get();
                BucketStats { name: name.clone(), keys, bytes }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// The histogram counts already pushed to the `metrics` facade (commit, read): a publish
/// records only what came since.
#[cfg(feature = "metrics")]
pub(crate) type Published = parking_lot::Mutex<(LatencyHistogram, LatencyHistogram)>;

#[cfg(feature = "metrics")]
impl DbInner {
    /// Pushes [`DbInner::stats`] through the `metrics` facade: gauges for what goes up and
    /// down, counters (set to their absolute value) for what only grows, and the latencies
    /// since the last publish into histograms (each bucket's count recorded at the bucket's
    /// midpoint, in seconds). Every metric carries the label `db` (the directory); the
    /// bucket sizes also `bucket`, the disk bytes `kind`.
    pub(crate) fn publish_metrics(&self) {
        use metrics::{counter, gauge, histogram};
        let s = self.stats();
        let db = self.dir.display().to_string();
        let gauges = [
            ("ringkv_cache_bytes", s.cache_bytes as f64),
            ("ringkv_cache_capacity_bytes", s.cache_capacity as f64),
            ("ringkv_page_table_bytes", s.page_table_bytes as f64),
            ("ringkv_dirty_pages", s.dirty_pages as f64),
            ("ringkv_dirty_pages_limit", s.dirty_pages_limit as f64),
            ("ringkv_checkpoint_bytes", s.checkpoint_bytes as f64),
            ("ringkv_wal_buffer_bytes", s.wal_buffer_bytes as f64),
            ("ringkv_files", s.files as f64),
            ("ringkv_snapshots", s.snapshots as f64),
        ];
        for (name, value) in gauges {
            gauge!(name, "db" => db.clone()).set(value);
        }
        for (kind, bytes) in [
            ("data", s.data_bytes),
            ("blob", s.blob_bytes),
            ("wal", s.wal_bytes),
            ("manifest", s.manifest_bytes),
        ] {
            gauge!("ringkv_disk_bytes", "db" => db.clone(), "kind" => kind).set(bytes as f64);
        }
        for b in &s.buckets {
            gauge!("ringkv_bucket_keys", "db" => db.clone(), "bucket" => b.name.clone()).set(b.keys as f64);
            gauge!("ringkv_bucket_bytes", "db" => db.clone(), "bucket" => b.name.clone()).set(b.bytes as f64);
        }
        let counters = [
            ("ringkv_commits_total", s.commit_latency.count()),
            ("ringkv_reads_total", s.read_latency.count()),
            ("ringkv_cache_hits_total", s.cache_hits),
            ("ringkv_cache_misses_total", s.cache_misses),
            ("ringkv_page_reads_total", s.page_reads),
            ("ringkv_wal_records_total", s.wal_records),
            ("ringkv_wal_fsyncs_total", s.wal_fsyncs),
            ("ringkv_checkpoints_total", s.checkpoints),
            ("ringkv_splits_total", s.splits),
            ("ringkv_merges_total", s.merges),
            ("ringkv_delta_frames_total", s.delta_frames),
            ("ringkv_chains_consolidated_total", s.chains_consolidated),
        ];
        for (name, value) in counters {
            counter!(name, "db" => db.clone()).absolute(value);
        }
        let mut guard = self.published.lock();
        let published = &mut *guard;
        for (name, now, before) in [
            ("ringkv_commit_seconds", &s.commit_latency, &mut published.0),
            ("ringkv_read_seconds", &s.read_latency, &mut published.1),
        ] {
            let h = histogram!(name, "db" => db.clone());
            for (i, (&n, &b)) in now.buckets.iter().zip(before.buckets.iter()).enumerate() {
                if n > b {
                    // The bucket's midpoint: 1.5 times its floor (1 ns for bucket 0).
                    let floor = LatencyHistogram::bucket_floor(i).as_secs_f64().max(1e-9);
                    h.record_many(floor * 1.5, usize::try_from(n - b).unwrap_or(usize::MAX));
                }
            }
            *before = *now;
        }
    }
}
