//! Delta frames: blind writes to leaves evicted from a cache many times smaller than the
//! data go to disk as delta frames linked to the leaves' frames, with no page read, and
//! chains on disk stay short (a checkpoint that would pass `MAX_DELTA_FRAMES` loads the
//! page and writes a base). What a chain holds reads back, before and after a reopen, and
//! `Db::check` follows every chain.
//!
//! The backend comes from `Options::default()`, so `RINGKV_IO_BACKEND` selects it.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // they test, not store

use ringkv::limits::MIN_CACHE_CAPACITY;
use ringkv::{Db, Options};

#[path = "common/spread.rs"]
mod spread;
use spread::{key, runtime, value};

fn opts() -> Options {
    Options::default().cache_capacity(MIN_CACHE_CAPACITY).background_checkpoints(false)
}

/// About 1 MiB of keys and values: 16 times the cache.
const KEYS: u32 = 8_000;
/// Keys written per round: spread over the whole tree, at most a few per leaf.
const STEP: u32 = 23;

/// What key `i` holds after `rounds` rounds: the round that last wrote it (a key a round
/// deletes is gone), or the load's value.
fn expected(i: u32, rounds: u32) -> Option<Vec<u8>> {
    for r in (1..=rounds).rev() {
        if (i + r).is_multiple_of(STEP) {
            return (r % 3 != 0).then(|| value(i, r));
        }
    }
    Some(value(i, 0))
}

/// Checkpoints until GC has nothing left to move and nothing is dirty, so that what a
/// round measures is its own writes (at most 20 checkpoints).
async fn settle(db: &Db) {
    for _ in 0..20 {
        db.checkpoint().await.unwrap();
        if db.stats().dirty_pages == 0 {
            return;
        }
    }
    panic!("GC still moving pages after 20 checkpoints");
}

/// Writes every key's first value, 500 keys per transaction.
async fn load(b: &ringkv::Bucket) {
    for start in (0..KEYS).step_by(500) {
        let mut tx = b.begin().unwrap();
        for i in start..start + 500 {
            tx.put(key(i), value(i, 0)).unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// A database with a cache holding the whole load (64 MiB, no background checkpoints), its
/// bucket loaded ([`load`]); and its options, for a check and a reopen.
async fn cached_loaded(dir: &std::path::Path) -> (Db, ringkv::Bucket, Options) {
    let opts = Options::default().cache_capacity(64 << 20).background_checkpoints(false);
    let db = Db::open(dir, opts.clone()).await.unwrap();
    let b = db.bucket("b").await.unwrap();
    load(&b).await;
    (db, b, opts)
}

async fn read_back(b: &ringkv::Bucket, rounds: u32, when: &str) {
    for i in 0..KEYS {
        assert_eq!(b.get(key(i)).await.unwrap(), expected(i, rounds).map(Into::into), "key {i} {when}");
    }
}

#[test]
fn blind_writes_past_the_cache_go_out_as_delta_frames_without_a_page_read() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let db = Db::open(dir.path(), opts()).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        load(&b).await;
        db.checkpoint().await.unwrap();
        // Every leaf written once more, blindly: a leaf that grew past `BLIND_PAGE_BYTES`
        // (blind writes folded in by a checkpoint, without a split) is loaded by its next
        // write and split, so the rounds below meet leaves of their usual size.
        for start in (0..KEYS).step_by(500) {
            let mut batch = db.batch();
            for i in start..start + 500 {
                batch.put(&b, key(i), value(i, 0)).unwrap();
            }
            batch.commit().await.unwrap();
        }
        settle(&db).await;
        // Two sweeps of the eviction clock: a page the checkpoints loaded survives one.
        for _ in 0..2 {
            b.put(b"evict-trigger", b"x").await.unwrap();
        }
        let cache = db.stats().cache_bytes;
        assert!(cache < 4 * MIN_CACHE_CAPACITY as i64, "cache holds {cache} bytes: the tree was not evicted");

        let (mut deltas, mut consolidated) = (0, 0);
        let rounds = 6;
        for r in 1..=rounds {
            let reads = db.stats().page_reads;
            // One write batch per round: a round deleting (every third) or overwriting
            // every STEP-th key, offset by the round. A batch is blind (no snapshot).
            let mut batch = db.batch();
            for i in (0..KEYS).filter(|i| (i + r).is_multiple_of(STEP)) {
                if r % 3 == 0 {
                    batch.delete(&b, key(i)).unwrap();
                } else {
                    batch.put(&b, key(i), value(i, r)).unwrap();
                }
            }
            batch.commit().await.unwrap();
            let s = db.checkpoint().await.unwrap();
            let read = db.stats().page_reads - reads;
            settle(&db).await;
            for _ in 0..2 {
                b.put(b"evict-trigger", b"x").await.unwrap();
            }
            eprintln!(
                "round {r}: {} pages written, {} as delta frames, {} chains consolidated, {} loaded, {read} frames read",
                s.pages, s.delta_frames, s.chains_consolidated, s.pages_loaded
            );
            // Rounds 1..=MAX_DELTA_FRAMES (3) extend each written leaf's chain without
            // reading it; afterwards a leaf written again whose chain is full is loaded and
            // written as a base.
            if r <= 3 {
                assert_eq!(read, 0, "round {r}: blind writes and their checkpoint read {read} frames");
                assert_eq!(s.pages_loaded, 0, "round {r}");
                assert!(s.delta_frames * 10 >= s.pages * 9, "round {r}: {} of {} pages", s.delta_frames, s.pages);
            }
            deltas += s.delta_frames;
            consolidated += s.chains_consolidated;
        }
        assert!(deltas > 300, "{deltas} delta frames written");
        assert!(consolidated > 0, "no chain was consolidated in {rounds} rounds");
        let st = db.stats();
        assert!(st.delta_frames >= deltas as u64 && st.chains_consolidated >= consolidated as u64, "{st:?}");
        assert!(st.data_bytes >= 8 * MIN_CACHE_CAPACITY as u64, "the data ({} bytes) is not 8x the cache", st.data_bytes);
        read_back(&b, rounds, "before the reopen").await;
        db.close().await.unwrap();

        let report = Db::check(dir.path(), &opts()).await.unwrap();
        assert!(report.is_ok(), "{report}");
        assert!(report.delta_frames > 0, "no delta frame left for the checker: {report}");

        let db = Db::open(dir.path(), opts()).await.unwrap();
        let b = db.existing_bucket("b").unwrap();
        read_back(&b, rounds, "after the reopen").await;
        db.close().await.unwrap();
    });
}

/// GC moves a chain as a whole: once most of what the files hold is dead, every page
/// whose chain has a frame in a sparse file gets a base elsewhere, the sparse files go, and
/// what the chains held reads back.
#[test]
fn gc_moves_chains_as_bases() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let db = Db::open(dir.path(), opts().gc_live_ratio(0.9)).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        load(&b).await;
        db.checkpoint().await.unwrap();
        b.put(b"evict-trigger", b"x").await.unwrap();
        for r in 1..=2 {
            let mut batch = db.batch();
            for i in (0..KEYS).filter(|i| (i + r).is_multiple_of(STEP)) {
                batch.put(&b, key(i), value(i, r)).unwrap();
            }
            batch.commit().await.unwrap();
            db.checkpoint().await.unwrap();
        }
        // Checkpoints until GC has nothing left to move.
        for _ in 0..20 {
            let s = db.checkpoint().await.unwrap();
            if s.pages == 0 && s.gc_pages == 0 {
                break;
            }
        }
        read_back(&b, 2, "after GC").await;
        db.close().await.unwrap();
        let report = Db::check(dir.path(), &opts()).await.unwrap();
        assert!(report.is_ok(), "{report}");
        let db = Db::open(dir.path(), opts()).await.unwrap();
        let b = db.existing_bucket("b").unwrap();
        read_back(&b, 2, "after GC and a reopen").await;
        db.close().await.unwrap();
    });
}

/// A leaf in memory whose base is its image on disk has its new versions written as a
/// delta frame too: a few writes to cached leaves cost frames of their size, not pages.
#[test]
fn writes_to_cached_leaves_go_out_as_delta_frames() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (db, b, opts) = cached_loaded(dir.path()).await;
        db.checkpoint().await.unwrap();
        for r in 1..=2 {
            let mut batch = db.batch();
            for i in (0..KEYS).filter(|i| (i + r).is_multiple_of(STEP)) {
                batch.put(&b, key(i), value(i, r)).unwrap();
            }
            batch.commit().await.unwrap();
            let s = db.checkpoint().await.unwrap();
            eprintln!("round {r}: {} pages, {} delta frames, {} bytes", s.pages, s.delta_frames, s.bytes);
            assert!(s.pages > 100, "round {r}: {} pages", s.pages);
            // (The rest: leaves a write split, and their parents.)
            assert!(s.delta_frames * 4 >= s.pages * 3, "round {r}: {} of {} pages", s.delta_frames, s.pages);
            // About one key per leaf: a frame of a few hundred bytes each, not a page.
            assert!(s.bytes < s.pages as u64 * 1024, "round {r}: {} bytes for {} pages", s.bytes, s.pages);
            assert_eq!(s.pages_loaded, 0);
        }
        read_back(&b, 2, "in memory").await;
        db.close().await.unwrap();
        let report = Db::check(dir.path(), &opts).await.unwrap();
        assert!(report.is_ok() && report.delta_frames > 100, "{report}");
        let db = Db::open(dir.path(), opts).await.unwrap();
        let b = db.existing_bucket("b").unwrap();
        read_back(&b, 2, "after the reopen").await;
        db.close().await.unwrap();
    });
}

/// A delta frame that holds every delta of a cached leaf's chain, `FRAMED_CONSOLIDATE_DEPTH`
/// deep or more, also consolidates the chain in memory: the deltas' memory is freed (reads
/// and scans walk one base), the next frame goes over the merged leaf (still a delta
/// frame, not a base), and what the frames hold reads back after a reopen.
#[test]
fn a_framed_chain_is_consolidated_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let (db, b, opts) = cached_loaded(dir.path()).await;
        settle(&db).await;
        // A sixth of the keys, one at a time: several deltas on most leaves, fewer than
        // the in-memory consolidation's chain length on most.
        let round = |r: u32| {
            let b = b.clone();
            async move {
                for i in (0..KEYS).filter(|i| i % 6 == 0) {
                    b.put(key(i), value(i, r)).await.unwrap();
                }
            }
        };
        let want = |i: u32| if i.is_multiple_of(6) { value(i, 2) } else { value(i, 0) };
        round(1).await;
        let before = db.stats().cache_bytes;
        let s = db.checkpoint().await.unwrap();
        let after = db.stats().cache_bytes;
        eprintln!(
            "{} pages, {} delta frames, {} bytes; cache {before} -> {after} bytes",
            s.pages, s.delta_frames, s.bytes
        );
        // (The rest: leaves whose chain reached `CONSOLIDATE_CHAIN_LEN` or that split, and
        // their parents, written as bases.)
        assert!(s.delta_frames * 3 >= s.pages * 2, "{} of {} pages", s.delta_frames, s.pages);
        // Measured: the cache fell by 8.7%; by 3.5% with framed chains left as they were
        // (only the chains written as bases consolidated).
        assert!(
            after * 100 < before * 94,
            "the framed chains' deltas were freed: cache {before} -> {after} bytes"
        );
        round(2).await;
        let s = db.checkpoint().await.unwrap();
        assert!(
            s.delta_frames * 3 >= s.pages * 2,
            "over the merged leaves: {} of {} pages",
            s.delta_frames,
            s.pages
        );
        for i in 0..KEYS {
            assert_eq!(b.get(key(i)).await.unwrap().as_deref(), Some(&want(i)[..]), "key {i}");
        }
        db.close().await.unwrap();
        let report = Db::check(dir.path(), &opts).await.unwrap();
        assert!(report.is_ok(), "{report}");
        let db = Db::open(dir.path(), opts).await.unwrap();
        let b = db.existing_bucket("b").unwrap();
        for i in 0..KEYS {
            assert_eq!(
                b.get(key(i)).await.unwrap().as_deref(),
                Some(&want(i)[..]),
                "key {i} after the reopen"
            );
        }
        db.close().await.unwrap();
    });
}
