//! Memory held under the bounds the user set: a load eight times the cache, in random key
//! order (so that every checkpoint finds dirty pages all over a tree larger than the
//! cache), with `Stats`' memory kinds read after every commit and held against their
//! bounds. These are the engine's own accounting figures (allocation sizes, see
//! `tree::node::alloc_size`), not timings.
//!
//! Bounds (`Stats` docs, `Options::dirty_limit`, `Options::wal_buffer_limit`):
//! - `dirty_bytes <= dirty_limit` + what one commit charges beyond its estimate (a commit
//!   first makes room for what its leaves say it will charge, splits included; only an
//!   index split above them, rare, adds more);
//! - `cache_bytes <= room + dirty_limit` + one commit's deltas, where the pages' room is
//!   `cache_capacity` less `page_table_bytes`, never below a quarter of `cache_capacity`
//!   (the page table is counted in the capacity: forest invariant 7);
//! - `checkpoint_peak_bytes <= dirty_limit` (a checkpoint holds the images of the dirty
//!   pages, each counted at `DIRTY_PAGE_COST`, and at most one flush of copied frames);
//! - `wal_buffer_bytes <= wal_buffer_limit` + one record.
//!
//! The backend comes from `Options::default()`, so `RINGKV_IO_BACKEND` selects it.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use ringkv::{Db, Durability, Options, Stats};

const CACHE: usize = 1 << 20;
/// Keys of 16 bytes and values of 128: 8 MiB of keys and values, eight times the cache.
const KEYS: u64 = (8 << 20) / 144;
const PER_TXN: usize = 16;

fn key(id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

fn value(id: u64) -> Vec<u8> {
    let mut v = vec![0u8; 128];
    v[..8].copy_from_slice(&id.to_le_bytes());
    v
}

/// Holds one `Stats` reading against the bounds of the module doc; returns the reading.
fn check_bounds(s: &Stats, at: u64) -> Stats {
    // One commit dirties at most PER_TXN pages and adds PER_TXN deltas (each well under
    // 1 KiB with its key and value).
    let commit_slack = (PER_TXN * 1024) as i64;
    // A commit makes room for what its leaves say it will charge (a split's sibling and
    // parent included) before it writes; only an index split above them (rare: 128
    // children per index node) can add more: a page at full cost per key, at most.
    let charge_slack = (PER_TXN * ringkv::limits::DIRTY_PAGE_COST) as u64;
    assert!(
        s.dirty_bytes <= s.dirty_limit + charge_slack,
        "after {at} keys: {} dirty pages charged {} bytes, bound {}; {} checkpoints, cache {}",
        s.dirty_pages,
        s.dirty_bytes,
        s.dirty_limit,
        s.checkpoints,
        s.cache_bytes
    );
    let capacity = s.cache_capacity as i64;
    let room = (capacity - s.page_table_bytes).max(capacity / 4);
    assert!(
        s.cache_bytes <= room + s.dirty_limit as i64 + commit_slack,
        "after {at} keys: cache {} bytes, room {room} (capacity {} less page table {}) + dirty bound {}",
        s.cache_bytes,
        s.cache_capacity,
        s.page_table_bytes,
        s.dirty_limit
    );
    assert!(
        s.checkpoint_peak_bytes <= s.dirty_limit,
        "after {at} keys: a checkpoint held {} bytes, bound {}",
        s.checkpoint_peak_bytes,
        s.dirty_limit
    );
    assert!(
        s.wal_buffer_bytes <= s.wal_buffer_limit + 64 * 1024,
        "after {at} keys: {} WAL bytes buffered, bound {}",
        s.wal_buffer_bytes,
        s.wal_buffer_limit
    );
    s.clone()
}

/// Loads `keys` keys in transactions of `PER_TXN` into a database with a cache of `cache`
/// bytes, holding every reading against the bounds; reopens and reads a sample back.
/// Returns the last reading and the peak of `cache_bytes + page_table_bytes`.
fn load_under_bounds(cache: usize, keys: u64) -> (Stats, i64) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let opts = Options::default().cache_capacity(cache).durability(Durability::None);
        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        let b = db.bucket("load").await.unwrap();
        let (mut max_dirty, mut max_pages, mut max_cache, mut max_total) = (0u64, 0u64, 0i64, 0i64);
        let ids: Vec<u64> = (0..keys).collect();
        for (n, chunk) in ids.chunks(PER_TXN).enumerate() {
            let mut tx = b.begin().unwrap();
            for &id in chunk {
                tx.put(key(id), value(id)).unwrap();
            }
            tx.commit().await.unwrap();
            let s = check_bounds(&db.stats(), ((n + 1) * PER_TXN) as u64);
            max_dirty = max_dirty.max(s.dirty_bytes);
            max_pages = max_pages.max(s.dirty_pages);
            max_cache = max_cache.max(s.cache_bytes);
            max_total = max_total.max(s.cache_bytes + s.page_table_bytes);
        }
        let s = check_bounds(&db.stats(), keys);
        println!(
            "{keys} keys: cache peak {max_cache} of {} (+{} dirty bound); with the page table {max_total}; \
             dirty charge peak {max_dirty} bytes ({max_pages} pages at most; {} at full cost); checkpoint peak {} \
             bytes; page table {} bytes; {} checkpoints",
            s.cache_capacity, s.dirty_limit, s.dirty_pages_limit, s.checkpoint_peak_bytes, s.page_table_bytes, s.checkpoints
        );
        // The load really pressed on every bound (else the assertions above prove nothing).
        assert!(s.checkpoints >= 8, "a load 8x the cache checkpointed {} times", s.checkpoints);
        assert!(max_total as u64 >= s.cache_capacity * 3 / 4, "the cache never filled: peak {max_total}");
        assert!(max_dirty >= s.dirty_limit / 2, "the dirty charge never neared its bound: {max_dirty}");
        assert!(s.checkpoint_peak_bytes > 0, "no checkpoint held an image");
        assert!(s.page_table_bytes > 0, "no page was ever evicted");
        // And nothing was lost on the way.
        db.close().await.unwrap();
        let db = Db::open(dir.path(), opts).await.unwrap();
        let b = db.bucket("load").await.unwrap();
        for id in (0..keys).step_by(97) {
            assert_eq!(b.get(key(id)).await.unwrap().as_deref(), Some(&value(id)[..]), "key {id}");
        }
        db.close().await.unwrap();
        (s, max_total)
    })
}

#[test]
fn every_memory_kind_stays_under_its_bound_during_a_load_eight_times_the_cache() {
    // A 1 MiB cache: the page table (a 4096-slot chunk and the stubs) takes more than three
    // quarters of it, so the pages keep their floor of a quarter.
    let (s, _) = load_under_bounds(CACHE, KEYS);
    assert!(s.page_table_bytes as u64 > s.cache_capacity * 3 / 4, "the floor was not reached: {s:?}");
}

#[test]
fn the_page_table_is_counted_in_the_cache_capacity() {
    // A 4 MiB cache, loaded four times over: the page table stays below three quarters of
    // the capacity, so pages and page table together stay within it (plus the dirty bound).
    let cache = 4 * CACHE;
    let (s, max_total) = load_under_bounds(cache, KEYS * 2);
    assert!(
        (s.page_table_bytes as u64) < s.cache_capacity * 3 / 4
            && s.page_table_bytes as u64 > s.cache_capacity / 8,
        "the page table should take a real share of the capacity, below three quarters: {} of {}",
        s.page_table_bytes,
        s.cache_capacity
    );
    let bound = (s.cache_capacity + s.dirty_limit) as i64 + (PER_TXN * 1024) as i64;
    assert!(max_total <= bound, "pages and page table peaked at {max_total}, bound {bound}");
}
