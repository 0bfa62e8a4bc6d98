//! Micro-benchmarks of the tree's hot paths (criterion): a leaf search, an index node's
//! child search, a descent from the root, a cached get, a one-key commit, a consolidation,
//! a page encode and a page load. The internal ones go through `ringkv::bench` (feature
//! `bench`), a stable surface over the internals, so one run of this file on each tree is
//! a before/after of a page-format change.
//!
//! Sizes follow the peer benchmark: 16-byte keys, 128-byte values; leaves of 20 entries
//! (today's 4 KiB split point) and 100 (a 16 KiB leaf); index nodes of 128 children.
//!
//! `cargo bench --bench tree` (the backend of `RINGKV_IO_BACKEND` for the database ones)
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(missing_docs)] // criterion_group! defines an undocumented function

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringkv::bench::{self, Index, Leaf};
use ringkv::{Db, Durability, Options};

const KEY: usize = 16;
const VALUE: usize = 128;
/// Keys of the database of the descent, get and commit benchmarks (in cache).
const DB_KEYS: u64 = 200_000;

/// A cheap deterministic sequence of probe indices below `n`.
fn probes(n: u64, count: usize) -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        })
        .collect()
}

fn leaf_search(c: &mut Criterion) {
    let mut g = c.benchmark_group("leaf_search");
    for n in [20u64, 100] {
        let leaf = Leaf::new(n, KEY, VALUE);
        let keys: Vec<Bytes> = probes(2 * n, 1024).into_iter().map(|i| leaf.key(i)).collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &keys, |b, keys| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(leaf.search(&keys[i]))
            });
        });
    }
    g.finish();
}

/// The same searches and loads on the leaf page format of `tree::leaf` (not yet the
/// tree's), for a before/after of the format in one run.
fn index_child(c: &mut Criterion) {
    let n = 128;
    let index = Index::new(n, KEY);
    let keys: Vec<Bytes> = probes(2 * n, 1024).into_iter().map(|i| bench::key(i, KEY)).collect();
    c.bench_function("index_child/128", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(index.child_for(&keys[i]))
        });
    });
}

fn consolidate(c: &mut Criterion) {
    let mut g = c.benchmark_group("consolidate");
    for (n, deltas) in [(20u64, 8u64), (100, 16)] {
        let leaf = Leaf::new(n, KEY, VALUE);
        let step = 2 * n / deltas;
        g.bench_function(BenchmarkId::from_parameter(format!("{n}+{deltas}")), |b| {
            b.iter(|| black_box(leaf.consolidate(deltas, step)));
        });
    }
    g.finish();
}

fn encode_load(c: &mut Criterion) {
    let mut g = c.benchmark_group("page");
    for n in [20u64, 100] {
        let leaf = Leaf::new(n, KEY, VALUE);
        g.bench_function(BenchmarkId::new("encode", n), |b| b.iter(|| black_box(leaf.encode())));
        let image = Bytes::from(leaf.encode());
        let crc = crc32c::crc32c(&image);
        assert_eq!(Leaf::load(&image, crc).unwrap(), n as usize);
        g.bench_function(BenchmarkId::new("load", n), |b| {
            b.iter(|| black_box(Leaf::load(&image, crc).unwrap()));
        });
    }
    g.finish();
}

fn db_key(i: u64) -> [u8; KEY] {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut k = [0u8; KEY];
    k[..8].copy_from_slice(&h.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn database(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let opts = Options::default()
        .durability(Durability::None)
        .background_checkpoints(false)
        .cache_capacity(512 << 20);
    let (db, b) = rt.block_on(async {
        let db = Db::open(dir.path(), opts).await.unwrap();
        let b = db.bucket("bench").await.unwrap();
        for chunk in (0..DB_KEYS).collect::<Vec<_>>().chunks(1000) {
            let mut t = b.begin().unwrap();
            for &i in chunk {
                t.put(db_key(i), [1u8; VALUE]).unwrap();
            }
            t.commit().await.unwrap();
        }
        (db, b)
    });
    let keys: Vec<[u8; KEY]> = probes(DB_KEYS, 4096).into_iter().map(db_key).collect();
    c.bench_function("descend/200k", |bn| {
        let mut i = 0;
        bn.iter(|| {
            i = (i + 1) % keys.len();
            assert!(bench::descend(&b, &keys[i]).unwrap());
        });
    });
    c.bench_function("get_cached/200k", |bn| {
        let mut i = 0;
        bn.iter(|| {
            i = (i + 1) % keys.len();
            black_box(rt.block_on(b.get(keys[i])).unwrap().unwrap());
        });
    });
    c.bench_function("commit_one_key/none", |bn| {
        let mut i = 0;
        bn.iter(|| {
            i = (i + 1) % keys.len();
            rt.block_on(async {
                let mut t = b.begin().unwrap();
                t.put(keys[i], [2u8; VALUE]).unwrap();
                t.commit().await.unwrap();
            });
        });
    });
    rt.block_on(db.close()).unwrap();
}

criterion_group!(benches, leaf_search, index_child, consolidate, encode_load, database);
criterion_main!(benches);
