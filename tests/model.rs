//! Model-based tests: random sequences of operations run against ringkv and against a
//! `BTreeMap` model, compared after every read.
//!
//! `model_random_ops` generates (with proptest) sequences of 1-400 operations over buckets
//! "alpha" and "beta": puts, deletes, gets, forward and reverse ranges with random bounds
//! (unbounded, inclusive, exclusive, empty and inverted ranges), prefix scans, iterators
//! consumed partially, multi-operation transactions (reads see their own writes; commit,
//! commit with a durability, rollback or drop; a checkpoint may run while one is open),
//! write-write conflicts, bulk loads, range deletes (so leaves merge), empty and oversize
//! keys (`InvalidArgument`), scans that keep running across later writes and a checkpoint,
//! snapshots read after later writes, concurrent tasks (slow readers of a snapshot or an
//! iterator, and a writer committing to a third bucket "gamma" meanwhile), checkpoints,
//! flushes, close + reopen, reopen without close (WAL replay), and drop + recreate of a
//! bucket. Options: 64 KiB cache (evictions and reloads), 64-byte inline limit with values
//! up to 4 KiB (blob values), 16 KiB checkpoint trigger, 64 KiB WAL segments, background
//! checkpoints on or off, GC ratio 0, 0.5 or 0.9. Keys mix a 4-letter alphabet (overwrites,
//! deletes of present keys), 400 "medium" keys of 22-69 bytes, random binary keys up to
//! 200 bytes and keys of 1-16 KiB, so leaves split (and merge). Every case ends with a
//! close, a reopen and a full comparison (scans both ways and a get of every key).
//!
//! `model_large_sequential`: 20 000 keys of 100-byte values written in random order in
//! transactions of 100 with a 64 KiB cache, checkpointed, read back in random order,
//! scanned both ways and by sub-ranges, partly overwritten and deleted, reopened and read
//! again. It checks that the cache was evicted down (so reloads happened).
//!
//! `model_regression_reader_livelock`: the reduction of a livelock this file found (a page
//! loaded for a reader was evicted by its own load; see /work/bugs/evict-reader-livelock.md).
//!
//! Environment:
//! - `RINGKV_MODEL_CASES`: number of random cases (default [`DEFAULT_CASES`]).
//! - `RINGKV_MODEL_SEED`: seed (decimal or `0x` hex) of the first random case, and of
//!   `model_large_sequential`. Case `i + 1` is seeded with `splitmix64(seed of case i)`. A
//!   failing case panics with its own seed and its shrunk operation list, so
//!   `RINGKV_MODEL_SEED=<seed> RINGKV_MODEL_CASES=1` replays exactly that case (with
//!   background checkpoints the engine's timing may still differ). The run's seed is
//!   printed at the start (`--nocapture`).
//! - `RINGKV_MODEL_VERBOSE=1`: print what each case exercised (keys, cache peak, pages and
//!   blobs checkpointed, reopens, conflicts).
//! - `RINGKV_IO_BACKEND=uring|threadpool` picks the backend (the options use `Auto`).
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom
#![allow(clippy::ref_option, clippy::needless_pass_by_value)] // helpers shaped for the call sites

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ringkv::{Bucket, Db, Durability, Error, Options, Snapshot};

/// Random cases run by default (each is 1-400 operations, so that failures shrink far).
const DEFAULT_CASES: u64 = 96;
/// Names of the two buckets every case uses.
/// Names of the buckets: the operations use the first two; the third is written only by
/// a concurrent writer task ([`Op::SpawnWriter`]).
const BUCKETS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Index of the bucket of the concurrent writer.
const GAMMA: usize = 2;
/// Concurrent tasks a case keeps at most.
const MAX_TASKS: usize = 4;
/// Number of distinct "medium" keys (shared by single writes and bulk loads).
const MEDIUM_KEYS: u16 = 400;
/// Longest any single operation may take before the case fails as hung.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

type Model = BTreeMap<Vec<u8>, Vec<u8>>;
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
type Range = (Bound<Vec<u8>>, Bound<Vec<u8>>);

// ---------------------------------------------------------------------------------------
// Helpers: environment, seeds, byte display.

fn env_u64(name: &str) -> Option<u64> {
    let s = std::env::var(name).ok()?;
    let s = s.trim();
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={s:?} is not a number: {e}")))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of the run: `RINGKV_MODEL_SEED`, else fresh from the clock.
fn run_seed() -> u64 {
    env_u64("RINGKV_MODEL_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        splitmix64(t.as_nanos() as u64 ^ u64::from(std::process::id()))
    })
}

fn rng_for(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    let mut x = seed;
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&x.to_le_bytes());
        x = splitmix64(x);
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Short, escaped rendering of bytes for failure messages.
fn show(b: &[u8]) -> String {
    let head: String =
        b.iter().take(24).flat_map(|&c| std::ascii::escape_default(c)).map(char::from).collect();
    if b.len() > 24 {
        format!("\"{head}\"..(len {})", b.len())
    } else {
        format!("\"{head}\"")
    }
}

fn show_opt(v: &Option<Vec<u8>>) -> String {
    v.as_deref().map_or_else(|| "None".to_string(), show)
}

fn show_bound(b: &Bound<Vec<u8>>) -> String {
    match b {
        Bound::Unbounded => "..".into(),
        Bound::Included(k) => format!("Incl({})", show(k)),
        Bound::Excluded(k) => format!("Excl({})", show(k)),
    }
}

/// Deterministic value bytes of length `len`, different per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = splitmix64(seed) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn medium_key(i: u16) -> Vec<u8> {
    let mut k = format!("m{i:04}-").into_bytes();
    k.resize(k.len() + 16 + (usize::from(i) * 7) % 48, b'.');
    k
}

// ---------------------------------------------------------------------------------------
// The operations.

/// A key written literally.
#[derive(Clone, PartialEq, Eq)]
struct Key(Vec<u8>);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&show(&self.0))
    }
}

/// A key: a literal one, or the n-th key currently in the bucket's model (so that reads,
/// overwrites and deletes hit existing keys; "a" when the model is empty).
#[derive(Clone)]
enum KeySel {
    Lit(Key),
    Existing(Index),
}

impl fmt::Debug for KeySel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySel::Lit(k) => k.fmt(f),
            KeySel::Existing(i) => write!(f, "Existing({:#x})", i.index(usize::MAX)),
        }
    }
}

/// A value: `len` bytes of a pattern seeded by `seed`.
#[derive(Clone, Copy)]
struct Val {
    len: u16,
    seed: u32,
}

impl Val {
    fn bytes(self) -> Vec<u8> {
        pattern(usize::from(self.len), (u64::from(self.seed) << 16) | u64::from(self.len))
    }

    fn nth(self, j: usize) -> Val {
        Val { len: self.len, seed: self.seed.wrapping_add(j as u32 * 7919) }
    }
}

impl fmt::Debug for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}#{:x}", self.len, self.seed)
    }
}

#[derive(Clone, Debug)]
enum BoundSpec {
    Unbounded,
    Included(KeySel),
    Excluded(KeySel),
}

/// How a scan's iterator is consumed.
#[derive(Clone, Copy, Debug)]
enum ReadMode {
    /// `Iter::collect_vec`.
    CollectVec,
    /// `TryStreamExt::try_collect`.
    TryCollect,
    /// `try_next` this many times, then drop the iterator.
    Take(u8),
}

#[derive(Clone, Copy, Debug)]
enum Dur {
    Sync,
    Buffered,
    Nothing,
}

impl Dur {
    fn get(self) -> Durability {
        match self {
            Dur::Sync => Durability::Sync,
            Dur::Buffered => Durability::Buffered,
            Dur::Nothing => Durability::None,
        }
    }
}

#[derive(Clone, Debug)]
enum TxnOp {
    Put(KeySel, Val),
    Delete(KeySel),
    Get(KeySel),
    Range {
        lo: BoundSpec,
        hi: BoundSpec,
        rev: bool,
    },
    Prefix(Key),
    /// A database checkpoint while the transaction is open.
    Checkpoint,
}

#[derive(Clone, Copy, Debug)]
enum TxnEnd {
    Commit,
    CommitWith(Dur),
    Rollback,
    Drop,
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        b: usize,
        k: KeySel,
        v: Val,
    },
    Delete {
        b: usize,
        k: KeySel,
    },
    Get {
        b: usize,
        k: KeySel,
    },
    Range {
        b: usize,
        lo: BoundSpec,
        hi: BoundSpec,
        rev: bool,
        mode: ReadMode,
    },
    Prefix {
        b: usize,
        p: Key,
        mode: ReadMode,
    },
    /// Full forward and reverse scans of both buckets.
    VerifyAll,
    Txn {
        b: usize,
        ops: Vec<TxnOp>,
        end: TxnEnd,
    },
    /// One transaction putting `n` medium keys from `start` on.
    Bulk {
        b: usize,
        start: u16,
        n: u8,
        v: Val,
    },
    /// A transaction writes `k`; a one-op put of `other` (`None`: `k` itself) commits
    /// meanwhile; the transaction must conflict exactly when both keys are the same.
    Conflict {
        b: usize,
        k: KeySel,
        other: Option<KeySel>,
        v1: Val,
        v2: Val,
    },
    /// A scan reads `first` pairs, one-op writes commit, the scan goes on: it must return
    /// the state of its start.
    ScanAcrossWrites {
        b: usize,
        rev: bool,
        first: u8,
        writes: Vec<(KeySel, Option<Val>)>,
        checkpoint: bool,
    },
    SnapOpen,
    SnapRange {
        b: usize,
        lo: BoundSpec,
        hi: BoundSpec,
        rev: bool,
    },
    SnapGet {
        b: usize,
        k: KeySel,
    },
    SnapClose,
    Checkpoint,
    Flush,
    Reopen,
    /// Flush, then drop every handle without `close` (no checkpoint): the reopen replays
    /// the WAL. A plain reopen when background checkpoints are on (a running checkpoint
    /// could outlive the handles and race with the new instance).
    CrashReopen,
    DropRecreate {
        b: usize,
    },
    /// One transaction deleting every key of the bucket in a range (leaves empty out, so
    /// they merge).
    DeleteRange {
        b: usize,
        lo: BoundSpec,
        hi: BoundSpec,
    },
    /// A task scans a range concurrently with the next operations, slowly, through a
    /// `Snapshot` (`passes` times) or a bucket iterator created now; it must see the state
    /// of this moment. Joined before a reopen or a drop, by [`Op::Join`] and at the end.
    SpawnReader {
        b: usize,
        lo: BoundSpec,
        hi: BoundSpec,
        rev: bool,
        snapshot: bool,
        passes: u8,
    },
    /// A task commits `txns` small transactions to bucket "gamma" concurrently with the
    /// next operations; when joined, "gamma" must hold exactly what it wrote.
    SpawnWriter {
        txns: u8,
        seed: u64,
    },
    /// Waits for the concurrent tasks.
    Join,
    /// Empty and oversize keys: `InvalidArgument`, and nothing changes.
    BadKeys {
        b: usize,
    },
}

#[derive(Clone, Debug)]
struct CaseCfg {
    background_checkpoints: bool,
    durability: Dur,
    gc_live_ratio: f64,
}

#[derive(Clone, Debug)]
struct Case {
    cfg: CaseCfg,
    ops: Vec<Op>,
}

// ---------------------------------------------------------------------------------------
// Strategies.

fn short_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(select(b"abcd".to_vec()), 1..=3)
}

fn long_key() -> impl Strategy<Value = Vec<u8>> {
    (select(b"abcm\x00\xff".to_vec()), prop::collection::vec(any::<u8>(), 8..200)).prop_map(
        |(first, rest)| {
            let mut k = vec![first];
            k.extend(rest);
            k
        },
    )
}

fn lit_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        5 => short_key(),
        3 => (0..MEDIUM_KEYS).prop_map(medium_key),
        2 => long_key(),
        1 => huge_key(),
    ]
    .prop_map(Key)
}

/// Keys from 1 KiB up to the 16 KiB limit: a leaf of two of them is past the split size.
fn huge_key() -> impl Strategy<Value = Vec<u8>> {
    (select(b"abm".to_vec()), 1024usize..=ringkv::limits::MAX_KEY_LEN, any::<u32>()).prop_map(
        |(first, len, seed)| {
            let mut k = vec![first];
            k.extend(pattern(len - 1, u64::from(seed)));
            k
        },
    )
}

fn key_sel() -> impl Strategy<Value = KeySel> {
    prop_oneof![
        4 => any::<Index>().prop_map(KeySel::Existing),
        6 => lit_key().prop_map(KeySel::Lit),
    ]
}

/// Keys for range bounds: may be empty, may fall outside the key alphabet.
fn bound_key() -> impl Strategy<Value = KeySel> {
    prop_oneof![
        4 => any::<Index>().prop_map(KeySel::Existing),
        4 => prop::collection::vec(select(b"\x000abcdmz\xff".to_vec()), 0..=3).prop_map(|k| KeySel::Lit(Key(k))),
        2 => (0..MEDIUM_KEYS).prop_map(|i| KeySel::Lit(Key(medium_key(i)))),
    ]
}

fn bound() -> impl Strategy<Value = BoundSpec> {
    prop_oneof![
        2 => Just(BoundSpec::Unbounded),
        3 => bound_key().prop_map(BoundSpec::Included),
        3 => bound_key().prop_map(BoundSpec::Excluded),
    ]
}

fn prefix_key() -> impl Strategy<Value = Key> {
    prop::collection::vec(select(b"abm\xff".to_vec()), 0..=2).prop_map(Key)
}

fn val() -> impl Strategy<Value = Val> {
    let len = prop_oneof![
        3 => 0u16..=8,
        4 => 9u16..=62,
        2 => select(vec![63u16, 64, 65]),
        3 => 66u16..=4096,
    ];
    (len, any::<u32>()).prop_map(|(len, seed)| Val { len, seed })
}

fn read_mode() -> impl Strategy<Value = ReadMode> {
    prop_oneof![
        2 => Just(ReadMode::CollectVec),
        2 => Just(ReadMode::TryCollect),
        1 => (0u8..40).prop_map(ReadMode::Take),
    ]
}

fn dur() -> impl Strategy<Value = Dur> {
    prop_oneof![1 => Just(Dur::Sync), 4 => Just(Dur::Buffered), 3 => Just(Dur::Nothing)]
}

fn bucket() -> impl Strategy<Value = usize> {
    0..GAMMA
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        6 => (key_sel(), val()).prop_map(|(k, v)| TxnOp::Put(k, v)),
        3 => key_sel().prop_map(TxnOp::Delete),
        3 => key_sel().prop_map(TxnOp::Get),
        1 => (bound(), bound(), any::<bool>()).prop_map(|(lo, hi, rev)| TxnOp::Range { lo, hi, rev }),
        1 => prefix_key().prop_map(TxnOp::Prefix),
        1 => Just(TxnOp::Checkpoint),
    ]
}

fn txn_end() -> impl Strategy<Value = TxnEnd> {
    prop_oneof![
        6 => Just(TxnEnd::Commit),
        2 => dur().prop_map(TxnEnd::CommitWith),
        1 => Just(TxnEnd::Rollback),
        1 => Just(TxnEnd::Drop),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (bucket(), key_sel(), val()).prop_map(|(b, k, v)| Op::Put { b, k, v }),
        6 => (bucket(), key_sel()).prop_map(|(b, k)| Op::Delete { b, k }),
        12 => (bucket(), key_sel()).prop_map(|(b, k)| Op::Get { b, k }),
        8 => (bucket(), bound(), bound(), any::<bool>(), read_mode())
            .prop_map(|(b, lo, hi, rev, mode)| Op::Range { b, lo, hi, rev, mode }),
        4 => (bucket(), prefix_key(), read_mode()).prop_map(|(b, p, mode)| Op::Prefix { b, p, mode }),
        2 => Just(Op::VerifyAll),
        8 => (bucket(), prop::collection::vec(txn_op(), 1..24), txn_end())
            .prop_map(|(b, ops, end)| Op::Txn { b, ops, end }),
        3 => (bucket(), 0..MEDIUM_KEYS, 10u8..100, val()).prop_map(|(b, start, n, v)| Op::Bulk { b, start, n, v }),
        2 => (bucket(), key_sel(), prop::option::weighted(0.5, key_sel()), val(), val())
            .prop_map(|(b, k, other, v1, v2)| Op::Conflict { b, k, other, v1, v2 }),
        2 => (
            bucket(),
            any::<bool>(),
            0u8..30,
            prop::collection::vec((key_sel(), prop::option::weighted(0.7, val())), 1..8),
            any::<bool>(),
        )
            .prop_map(|(b, rev, first, writes, checkpoint)| Op::ScanAcrossWrites {
                b,
                rev,
                first,
                writes,
                checkpoint
            }),
        1 => Just(Op::SnapOpen),
        2 => (bucket(), bound(), bound(), any::<bool>()).prop_map(|(b, lo, hi, rev)| Op::SnapRange { b, lo, hi, rev }),
        2 => (bucket(), key_sel()).prop_map(|(b, k)| Op::SnapGet { b, k }),
        1 => Just(Op::SnapClose),
        3 => Just(Op::Checkpoint),
        1 => Just(Op::Flush),
        2 => Just(Op::Reopen),
        1 => Just(Op::CrashReopen),
        1 => bucket().prop_map(|b| Op::DropRecreate { b }),
        1 => bucket().prop_map(|b| Op::BadKeys { b }),
        2 => (bucket(), bound(), bound(), any::<bool>(), any::<bool>(), 1u8..4).prop_map(
            |(b, lo, hi, rev, snapshot, passes)| Op::SpawnReader { b, lo, hi, rev, snapshot, passes }
        ),
        1 => (1u8..30, any::<u64>()).prop_map(|(txns, seed)| Op::SpawnWriter { txns, seed }),
        1 => Just(Op::Join),
        2 => (bucket(), bound(), bound()).prop_map(|(b, lo, hi)| Op::DeleteRange { b, lo, hi }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let cfg = (any::<bool>(), dur(), select(vec![0.0, 0.5, 0.9])).prop_map(
        |(background_checkpoints, durability, gc_live_ratio)| CaseCfg {
            background_checkpoints,
            durability,
            gc_live_ratio,
        },
    );
    (cfg, prop::collection::vec(op(), 1..400)).prop_map(|(cfg, ops)| Case { cfg, ops })
}

// ---------------------------------------------------------------------------------------
// The model side.

fn resolve(model: &Model, sel: &KeySel) -> Vec<u8> {
    match sel {
        KeySel::Lit(k) => k.0.clone(),
        KeySel::Existing(_) if model.is_empty() => b"a".to_vec(),
        KeySel::Existing(i) => model.keys().nth(i.index(model.len())).expect("index in range").clone(),
    }
}

fn resolve_bound(model: &Model, b: &BoundSpec) -> Bound<Vec<u8>> {
    match b {
        BoundSpec::Unbounded => Bound::Unbounded,
        BoundSpec::Included(k) => Bound::Included(resolve(model, k)),
        BoundSpec::Excluded(k) => Bound::Excluded(resolve(model, k)),
    }
}

fn in_range(r: &Range, k: &[u8]) -> bool {
    let above = match &r.0 {
        Bound::Unbounded => true,
        Bound::Included(l) => k >= l.as_slice(),
        Bound::Excluded(l) => k > l.as_slice(),
    };
    let below = match &r.1 {
        Bound::Unbounded => true,
        Bound::Included(h) => k <= h.as_slice(),
        Bound::Excluded(h) => k < h.as_slice(),
    };
    above && below
}

/// The model's pairs in `r` (which may be empty or inverted), in order.
fn model_range(model: &Model, r: &Range, rev: bool) -> Pairs {
    let mut v: Pairs =
        model.iter().filter(|(k, _)| in_range(r, k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    if rev {
        v.reverse();
    }
    v
}

fn model_prefix(model: &Model, p: &[u8]) -> Pairs {
    model.iter().filter(|(k, _)| k.starts_with(p)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn full() -> Range {
    (Bound::Unbounded, Bound::Unbounded)
}

// ---------------------------------------------------------------------------------------
// Comparison helpers.

type Check<T = ()> = std::result::Result<T, String>;

/// Unwraps an engine result or fails the case naming the call.
macro_rules! eng {
    ($e:expr) => {
        $e.map_err(|err| format!("line {}: `{}` failed: {err:?}", line!(), stringify!($e)))?
    };
}

fn to_pairs(v: Vec<(Bytes, Bytes)>) -> Pairs {
    v.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

fn same_pairs(what: &str, actual: &Pairs, expected: &Pairs) -> Check {
    if actual == expected {
        return Ok(());
    }
    let first =
        actual.iter().zip(expected).position(|(a, e)| a != e).unwrap_or(actual.len().min(expected.len()));
    let pair = |p: Option<&(Vec<u8>, Vec<u8>)>| {
        p.map_or_else(|| "<end>".to_string(), |(k, v)| format!("{} => {}", show(k), show(v)))
    };
    let extra: Vec<String> =
        actual.iter().filter(|p| !expected.contains(p)).take(5).map(|p| pair(Some(p))).collect();
    let missing: Vec<String> =
        expected.iter().filter(|p| !actual.contains(p)).take(5).map(|p| pair(Some(p))).collect();
    Err(format!(
        "{what}: engine returned {} pairs, model has {}; first difference at #{first}: engine {} vs model {}\n  \
         unexpected (up to 5): {extra:?}\n  missing (up to 5): {missing:?}",
        actual.len(),
        expected.len(),
        pair(actual.get(first)),
        pair(expected.get(first)),
    ))
}

fn same_value(what: &str, key: &[u8], actual: Option<Bytes>, expected: Option<&Vec<u8>>) -> Check {
    let actual = actual.map(|b| b.to_vec());
    if actual.as_ref() == expected {
        return Ok(());
    }
    Err(format!(
        "{what} {}: engine {} vs model {}",
        show(key),
        show_opt(&actual),
        show_opt(&expected.cloned())
    ))
}

async fn read_iter(it: ringkv::Iter, mode: ReadMode) -> ringkv::Result<Vec<(Bytes, Bytes)>> {
    match mode {
        ReadMode::CollectVec => it.collect_vec().await,
        ReadMode::TryCollect => it.try_collect().await,
        ReadMode::Take(n) => {
            let mut it = it;
            let mut out = Vec::new();
            for _ in 0..n {
                match it.try_next().await? {
                    Some(p) => out.push(p),
                    None => break,
                }
            }
            Ok(out)
        }
    }
}

/// Collects an iterator, yielding to the scheduler every few pairs so that other tasks run
/// in between.
async fn slow_collect(mut it: ringkv::Iter) -> ringkv::Result<Vec<(Bytes, Bytes)>> {
    let mut out = Vec::new();
    while let Some(p) = it.try_next().await? {
        out.push(p);
        if out.len() % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    Ok(out)
}

fn expect_taken(mode: ReadMode, mut expected: Pairs) -> Pairs {
    if let ReadMode::Take(n) = mode {
        expected.truncate(usize::from(n));
    }
    expected
}

// ---------------------------------------------------------------------------------------
// The engine side.

fn options(cfg: &CaseCfg) -> Options {
    Options::default()
        .durability(cfg.durability.get())
        .cache_capacity(64 * 1024)
        .inline_limit(64)
        .checkpoint_bytes(16 * 1024)
        .checkpoint_interval(if cfg.background_checkpoints { Some(Duration::from_millis(100)) } else { None })
        .wal_segment_bytes(64 * 1024)
        .background_checkpoints(cfg.background_checkpoints)
        .gc_live_ratio(cfg.gc_live_ratio)
}

struct Harness {
    dir: std::path::PathBuf,
    opts: Options,
    /// `None` only inside a reopen.
    db: Option<Db>,
    buckets: Vec<Bucket>,
    models: Vec<Model>,
    snap: Option<(Snapshot, Vec<Model>)>,
    /// Concurrent tasks: what they are, and their outcome (the writer's model of "gamma").
    tasks: Vec<(String, tokio::task::JoinHandle<Check<Option<Model>>>)>,
    seen: Seen,
}

/// What a case exercised, printed with `RINGKV_MODEL_VERBOSE=1`.
#[derive(Debug, Default)]
struct Seen {
    max_keys: usize,
    max_cache_bytes: i64,
    max_ckpt_pages: usize,
    ckpt_blobs: usize,
    reopens: usize,
    conflicts: usize,
    tasks: usize,
    splits: u64,
    merges: u64,
}

impl Seen {
    /// Adds the counters of an instance about to be closed or dropped.
    fn add_instance(&mut self, s: ringkv::Stats) {
        self.splits += s.splits;
        self.merges += s.merges;
    }
}

async fn open_buckets(db: &Db, create: bool) -> Check<Vec<Bucket>> {
    let mut out = Vec::new();
    for name in BUCKETS {
        out.push(if create { eng!(db.bucket(name).await) } else { eng!(db.existing_bucket(name)) });
    }
    Ok(out)
}

/// Full forward and reverse scans of `bucket`, and a get of every model key.
async fn verify_bucket(what: &str, bucket: &Bucket, model: &Model, gets: bool) -> Check {
    let fwd = to_pairs(eng!(eng!(bucket.iter().await).collect_vec().await));
    same_pairs(
        &format!("{what}: full forward scan of {}", bucket.name()),
        &fwd,
        &model_range(model, &full(), false),
    )?;
    let rev = to_pairs(eng!(eng!(bucket.range_rev(full()).await).try_collect::<Vec<_>>().await));
    same_pairs(
        &format!("{what}: full reverse scan of {}", bucket.name()),
        &rev,
        &model_range(model, &full(), true),
    )?;
    if gets {
        for (k, v) in model {
            same_value(&format!("{what}: get in {}", bucket.name()), k, eng!(bucket.get(k).await), Some(v))?;
        }
    }
    Ok(())
}

impl Harness {
    async fn open(dir: &Path, opts: Options) -> Check<Harness> {
        let db = eng!(Db::open(dir, opts.clone()).await);
        let buckets = open_buckets(&db, true).await?;
        Ok(Harness {
            dir: dir.to_path_buf(),
            opts,
            db: Some(db),
            buckets,
            models: vec![Model::new(); BUCKETS.len()],
            snap: None,
            tasks: Vec::new(),
            seen: Seen::default(),
        })
    }

    fn db(&self) -> &Db {
        self.db.as_ref().expect("the database is open")
    }

    /// Verifies every bucket ("gamma" only while no writer task runs).
    async fn verify_all(&self, what: &str, gets: bool) -> Check {
        let writing = self.tasks.iter().any(|(label, _)| label.starts_with("writer"));
        for (i, (bucket, model)) in self.buckets.iter().zip(&self.models).enumerate() {
            if i != GAMMA || !writing {
                verify_bucket(what, bucket, model, gets).await?;
            }
        }
        Ok(())
    }

    /// Waits for every concurrent task and checks its outcome.
    async fn join_tasks(&mut self) -> Check {
        for (label, handle) in std::mem::take(&mut self.tasks) {
            match handle.await {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(gamma))) => {
                    self.models[GAMMA] = gamma;
                    verify_bucket(
                        &format!("{label}, joined"),
                        &self.buckets[GAMMA],
                        &self.models[GAMMA],
                        false,
                    )
                    .await?;
                }
                Ok(Err(e)) => return Err(format!("{label}: {e}")),
                Err(e) => return Err(format!("{label} panicked: {e}")),
            }
        }
        Ok(())
    }

    async fn spawn_reader(
        &mut self,
        b: usize,
        lo: &BoundSpec,
        hi: &BoundSpec,
        rev: bool,
        snapshot: bool,
        passes: u8,
    ) -> Check {
        let m = &self.models[b];
        let r = (resolve_bound(m, lo), resolve_bound(m, hi));
        let expected = model_range(m, &r, rev);
        let label = format!(
            "reader of {}{} {}..{} (snapshot {snapshot})",
            BUCKETS[b],
            if rev { " rev" } else { "" },
            show_bound(&r.0),
            show_bound(&r.1)
        );
        let bucket = self.buckets[b].clone();
        let handle = if snapshot {
            let snap = eng!(self.db().snapshot());
            tokio::spawn(async move {
                for pass in 0..passes {
                    let it = if rev {
                        eng!(snap.range_rev(&bucket, r.clone()).await)
                    } else {
                        eng!(snap.range(&bucket, r.clone()).await)
                    };
                    let got = to_pairs(eng!(slow_collect(it).await));
                    same_pairs(&format!("concurrent snapshot scan, pass {pass}"), &got, &expected)?;
                }
                Ok(None)
            })
        } else {
            // The iterator (and its snapshot) exists before this returns.
            let it = if rev {
                eng!(bucket.range_rev(r.clone()).await)
            } else {
                eng!(bucket.range(r.clone()).await)
            };
            tokio::spawn(async move {
                let got = to_pairs(eng!(slow_collect(it).await));
                same_pairs("concurrent iterator", &got, &expected)?;
                Ok(None)
            })
        };
        self.tasks.push((label, handle));
        Ok(())
    }

    fn spawn_writer(&mut self, txns: u8, seed: u64) {
        if self.tasks.iter().any(|(label, _)| label.starts_with("writer")) {
            return;
        }
        let bucket = self.buckets[GAMMA].clone();
        let mut model = self.models[GAMMA].clone();
        let handle = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..txns {
                let mut t = eng!(bucket.begin());
                let mut writes = Vec::new();
                for _ in 0..rng.gen_range(1..8) {
                    let k = format!("g{:03}", rng.gen_range(0..80)).into_bytes();
                    if rng.gen_bool(0.25) {
                        eng!(t.delete(&k));
                        writes.push((k, None));
                    } else {
                        let v = pattern(rng.gen_range(0..200), rng.gen());
                        eng!(t.put(&k, &v));
                        writes.push((k, Some(v)));
                    }
                }
                eng!(t.commit().await);
                for (k, v) in writes {
                    match v {
                        Some(v) => model.insert(k, v),
                        None => model.remove(&k),
                    };
                }
                let k = format!("g{:03}", rng.gen_range(0..80)).into_bytes();
                same_value("writer's get", &k, eng!(bucket.get(&k).await), model.get(&k))?;
            }
            Ok(Some(model))
        });
        self.tasks.push((format!("writer of {txns} txns (seed {seed:#x})"), handle));
    }

    async fn reopen(&mut self) -> Check {
        self.join_tasks().await?;
        self.seen.reopens += 1;
        let stats = self.db().stats();
        self.seen.add_instance(stats);
        self.snap = None;
        eng!(self.db().close().await);
        match self.buckets[0].get(b"a").await {
            Err(Error::Closed) => {}
            other => return Err(format!("get after close returned {other:?}, expected Err(Closed)")),
        }
        self.db = Some(eng!(Db::open(&self.dir, self.opts.clone()).await));
        let names = eng!(self.db().buckets());
        if names != BUCKETS {
            return Err(format!("buckets after reopen: {names:?}, expected {BUCKETS:?}"));
        }
        self.buckets = open_buckets(self.db(), false).await?;
        self.verify_all("after reopen", true).await
    }

    /// Flushes the WAL, drops every handle without `close` (so nothing is checkpointed),
    /// reopens and verifies: the reopen must replay the WAL.
    async fn crash_reopen(&mut self) -> Check {
        self.join_tasks().await?;
        self.seen.reopens += 1;
        let stats = self.db().stats();
        self.seen.add_instance(stats);
        self.snap = None;
        eng!(self.db().flush().await);
        self.buckets.clear();
        self.db = None;
        self.db = Some(eng!(Db::open(&self.dir, self.opts.clone()).await));
        self.buckets = open_buckets(self.db(), false).await?;
        self.verify_all("after a reopen without close", true).await
    }

    async fn put(&mut self, b: usize, k: &[u8], v: Option<Val>) -> Check {
        if let Some(v) = v {
            let bytes = v.bytes();
            eng!(self.buckets[b].put(k, &bytes).await);
            self.models[b].insert(k.to_vec(), bytes);
        } else {
            eng!(self.buckets[b].delete(k).await);
            self.models[b].remove(k);
        }
        Ok(())
    }

    async fn run(&mut self, op: &Op) -> Check {
        match op {
            Op::Put { b, k, v } => {
                let k = resolve(&self.models[*b], k);
                self.put(*b, &k, Some(*v)).await?;
            }
            Op::Delete { b, k } => {
                let k = resolve(&self.models[*b], k);
                self.put(*b, &k, None).await?;
            }
            Op::Get { b, k } => {
                let k = resolve(&self.models[*b], k);
                same_value("get", &k, eng!(self.buckets[*b].get(&k).await), self.models[*b].get(&k))?;
            }
            Op::Range { b, lo, hi, rev, mode } => {
                let m = &self.models[*b];
                let r = (resolve_bound(m, lo), resolve_bound(m, hi));
                let bucket = &self.buckets[*b];
                let it = if *rev {
                    eng!(bucket.range_rev(r.clone()).await)
                } else {
                    eng!(bucket.range(r.clone()).await)
                };
                let got = to_pairs(eng!(read_iter(it, *mode).await));
                let what = format!(
                    "range{} {}..{}",
                    if *rev { "_rev" } else { "" },
                    show_bound(&r.0),
                    show_bound(&r.1)
                );
                same_pairs(&what, &got, &expect_taken(*mode, model_range(m, &r, *rev)))?;
            }
            Op::Prefix { b, p, mode } => {
                let it = eng!(self.buckets[*b].prefix(&p.0).await);
                let got = to_pairs(eng!(read_iter(it, *mode).await));
                let expected = expect_taken(*mode, model_prefix(&self.models[*b], &p.0));
                same_pairs(&format!("prefix {}", show(&p.0)), &got, &expected)?;
            }
            Op::VerifyAll => self.verify_all("verify", false).await?,
            Op::Txn { b, ops, end } => self.txn(*b, ops, *end).await?,
            Op::Bulk { b, start, n, v } => {
                let mut t = eng!(self.buckets[*b].begin());
                let mut writes = Vec::new();
                for j in 0..u16::from(*n) {
                    let k = medium_key((start + j) % MEDIUM_KEYS);
                    let v = v.nth(usize::from(j)).bytes();
                    eng!(t.put(&k, &v));
                    writes.push((k, v));
                }
                eng!(t.commit().await);
                self.models[*b].extend(writes);
            }
            Op::Conflict { b, k, other, v1, v2 } => {
                let k = resolve(&self.models[*b], k);
                let other = other.as_ref().map_or_else(|| k.clone(), |o| resolve(&self.models[*b], o));
                let mut t = eng!(self.buckets[*b].begin());
                eng!(t.put(&k, v1.bytes()));
                self.put(*b, &other, Some(*v2)).await?;
                let got = t.commit().await;
                match (k == other, got) {
                    (true, Err(e)) if e.is_conflict() => self.seen.conflicts += 1,
                    (false, Ok(_)) => {
                        self.models[*b].insert(k.clone(), v1.bytes());
                    }
                    (same, got) => {
                        return Err(format!(
                        "commit of a txn writing {} after a one-op put of {} returned {got:?}, expected {}",
                        show(&k),
                        show(&other),
                        if same { "Err(Conflict)" } else { "Ok" }
                    ))
                    }
                }
                same_value(
                    "get after conflict",
                    &k,
                    eng!(self.buckets[*b].get(&k).await),
                    self.models[*b].get(&k),
                )?;
            }
            Op::ScanAcrossWrites { b, rev, first, writes, checkpoint } => {
                let expected = model_range(&self.models[*b], &full(), *rev);
                let mut it = if *rev {
                    eng!(self.buckets[*b].range_rev(full()).await)
                } else {
                    eng!(self.buckets[*b].iter().await)
                };
                let mut got = Vec::new();
                for _ in 0..*first {
                    match eng!(it.try_next().await) {
                        Some(p) => got.push(p),
                        None => break,
                    }
                }
                for (k, v) in writes {
                    let k = resolve(&self.models[*b], k);
                    self.put(*b, &k, *v).await?;
                }
                if *checkpoint {
                    eng!(self.db().checkpoint().await);
                }
                got.extend(eng!(it.collect_vec().await));
                same_pairs("scan across later writes", &to_pairs(got), &expected)?;
            }
            Op::SnapOpen => {
                if self.snap.is_none() {
                    self.snap = Some((eng!(self.db().snapshot()), self.models.clone()));
                }
            }
            Op::SnapRange { b, lo, hi, rev } => {
                if let Some((snap, models)) = &self.snap {
                    let m = &models[*b];
                    let r = (resolve_bound(m, lo), resolve_bound(m, hi));
                    let bucket = &self.buckets[*b];
                    let it = if *rev {
                        eng!(snap.range_rev(bucket, r.clone()).await)
                    } else {
                        eng!(snap.range(bucket, r.clone()).await)
                    };
                    let got = to_pairs(eng!(it.collect_vec().await));
                    let what = format!(
                        "snapshot range{} {}..{}",
                        if *rev { "_rev" } else { "" },
                        show_bound(&r.0),
                        show_bound(&r.1)
                    );
                    same_pairs(&what, &got, &model_range(m, &r, *rev))?;
                }
            }
            Op::SnapGet { b, k } => {
                if let Some((snap, models)) = &self.snap {
                    let k = resolve(&models[*b], k);
                    let got = eng!(snap.get(&self.buckets[*b], &k).await);
                    same_value("snapshot get", &k, got, models[*b].get(&k))?;
                }
            }
            Op::SnapClose => self.snap = None,
            Op::Checkpoint => {
                let st = eng!(self.db().checkpoint().await);
                self.seen.max_ckpt_pages = self.seen.max_ckpt_pages.max(st.pages);
                self.seen.ckpt_blobs += st.blobs;
            }
            Op::Flush => eng!(self.db().flush().await),
            Op::Reopen => self.reopen().await?,
            Op::CrashReopen if self.opts.background_checkpoints => self.reopen().await?,
            Op::CrashReopen => self.crash_reopen().await?,
            Op::DeleteRange { b, lo, hi } => {
                let m = &self.models[*b];
                let r = (resolve_bound(m, lo), resolve_bound(m, hi));
                let doomed: Vec<Vec<u8>> = m.keys().filter(|k| in_range(&r, k)).cloned().collect();
                let mut t = eng!(self.buckets[*b].begin());
                for k in &doomed {
                    eng!(t.delete(k));
                }
                eng!(t.commit().await);
                for k in &doomed {
                    self.models[*b].remove(k);
                }
                let what = format!("range {}..{} after deleting it", show_bound(&r.0), show_bound(&r.1));
                let got = to_pairs(eng!(eng!(self.buckets[*b].range(r.clone()).await).collect_vec().await));
                same_pairs(&what, &got, &Vec::new())?;
            }
            Op::SpawnReader { b, lo, hi, rev, snapshot, passes } => {
                if self.tasks.len() >= MAX_TASKS {
                    self.join_tasks().await?;
                }
                self.seen.tasks += 1;
                self.spawn_reader(*b, lo, hi, *rev, *snapshot, *passes).await?;
            }
            Op::SpawnWriter { txns, seed } => {
                if self.tasks.len() >= MAX_TASKS {
                    self.join_tasks().await?;
                }
                self.seen.tasks += 1;
                self.spawn_writer(*txns, *seed);
            }
            Op::Join => self.join_tasks().await?,
            Op::BadKeys { b } => {
                let bucket = &self.buckets[*b];
                let long = vec![b'a'; ringkv::limits::MAX_KEY_LEN + 1];
                let results = [
                    ("put of an empty key", bucket.put(b"", b"v").await.err()),
                    ("delete of an empty key", bucket.delete(b"").await.err()),
                    ("get of an empty key", bucket.get(b"").await.err()),
                    ("put of an oversize key", bucket.put(&long, b"v").await.err()),
                    ("get of an oversize key", bucket.get(&long).await.err()),
                    ("txn put of an empty key", eng!(bucket.begin()).put(b"", b"v").err()),
                    ("txn delete of an oversize key", eng!(bucket.begin()).delete(&long).err()),
                ];
                for (what, err) in results {
                    if !matches!(err, Some(Error::InvalidArgument(_))) {
                        return Err(format!("{what} returned {err:?}, expected InvalidArgument"));
                    }
                }
                verify_bucket("after rejected keys", bucket, &self.models[*b], false).await?;
            }
            Op::DropRecreate { b } => {
                self.join_tasks().await?;
                self.snap = None;
                let name = BUCKETS[*b];
                eng!(self.db().drop_bucket(name).await);
                match self.buckets[*b].get(b"a").await {
                    Err(Error::NotFound(_)) => {}
                    other => {
                        return Err(format!("get on a dropped bucket returned {other:?}, expected NotFound"))
                    }
                }
                match self.db().existing_bucket(name) {
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(format!("existing_bucket of a dropped bucket: {e:?}")),
                    Ok(_) => return Err("existing_bucket found a dropped bucket".into()),
                }
                self.buckets[*b] = eng!(self.db().bucket(name).await);
                self.models[*b].clear();
                verify_bucket("recreated bucket", &self.buckets[*b], &self.models[*b], false).await?;
                let other = &self.buckets[1 - *b];
                verify_bucket("other bucket after a drop", other, &self.models[1 - *b], false).await?;
            }
        }
        Ok(())
    }

    async fn txn(&mut self, b: usize, ops: &[TxnOp], end: TxnEnd) -> Check {
        let base = &self.models[b];
        let mut t = eng!(self.buckets[b].begin());
        // The transaction's view: the model with its own writes applied.
        let mut view = base.clone();
        let mut own: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for top in ops {
            match top {
                TxnOp::Put(k, v) => {
                    let k = resolve(&view, k);
                    let v = v.bytes();
                    eng!(t.put(&k, &v));
                    view.insert(k.clone(), v.clone());
                    own.insert(k, Some(v));
                }
                TxnOp::Delete(k) => {
                    let k = resolve(&view, k);
                    eng!(t.delete(&k));
                    view.remove(&k);
                    own.insert(k, None);
                }
                TxnOp::Get(k) => {
                    let k = resolve(&view, k);
                    same_value("txn get", &k, eng!(t.get(&k).await), view.get(&k))?;
                }
                TxnOp::Range { lo, hi, rev } => {
                    let r = (resolve_bound(&view, lo), resolve_bound(&view, hi));
                    let it = if *rev {
                        eng!(t.range_rev(r.clone()).await)
                    } else {
                        eng!(t.range(r.clone()).await)
                    };
                    let got = to_pairs(eng!(it.collect_vec().await));
                    let what = format!(
                        "txn range{} {}..{}",
                        if *rev { "_rev" } else { "" },
                        show_bound(&r.0),
                        show_bound(&r.1)
                    );
                    same_pairs(&what, &got, &model_range(&view, &r, *rev))?;
                }
                TxnOp::Prefix(p) => {
                    let got = to_pairs(eng!(eng!(t.prefix(&p.0).await).collect_vec().await));
                    same_pairs(&format!("txn prefix {}", show(&p.0)), &got, &model_prefix(&view, &p.0))?;
                }
                TxnOp::Checkpoint => {
                    eng!(self.db().checkpoint().await);
                }
            }
        }
        if t.len() != own.len() {
            return Err(format!("txn.len() = {}, expected {}", t.len(), own.len()));
        }
        let committed = match end {
            TxnEnd::Commit => {
                eng!(t.commit().await);
                true
            }
            TxnEnd::CommitWith(d) => {
                eng!(t.commit_with(d.get()).await);
                true
            }
            TxnEnd::Rollback => {
                t.rollback();
                false
            }
            TxnEnd::Drop => {
                drop(t);
                false
            }
        };
        if committed {
            self.models[b] = view;
        }
        for k in own.keys().take(4) {
            let what = if committed { "get after commit" } else { "get after rollback" };
            same_value(what, k, eng!(self.buckets[b].get(k).await), self.models[b].get(k))?;
        }
        Ok(())
    }
}

async fn with_timeout<T>(what: &str, f: impl Future<Output = Check<T>>) -> Check<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} did not finish within {OP_TIMEOUT:?} (hang?)")),
    }
}

async fn run_case(case: &Case) -> Check {
    let tmp = tempfile::Builder::new().prefix("ringkv-model-").tempdir().map_err(|e| e.to_string())?;
    let opts = options(&case.cfg);
    let mut h = with_timeout("open", Harness::open(tmp.path(), opts)).await?;
    for (i, op) in case.ops.iter().enumerate() {
        with_timeout(&format!("op #{i}"), h.run(op)).await.map_err(|e| format!("op #{i} {op:?}: {e}"))?;
        h.seen.max_keys = h.seen.max_keys.max(h.models.iter().map(std::collections::BTreeMap::len).sum());
        h.seen.max_cache_bytes = h.seen.max_cache_bytes.max(h.db().stats().cache_bytes);
    }
    with_timeout("final reopen", async {
        h.reopen().await?;
        h.verify_all("final", true).await?;
        let stats = h.db().stats();
        h.seen.add_instance(stats);
        eng!(h.db().close().await);
        Ok(())
    })
    .await
    .map_err(|e| format!("after the last op: {e}"))?;
    if std::env::var_os("RINGKV_MODEL_VERBOSE").is_some() {
        eprintln!("  case: {} ops, {:?}, {:?}", case.ops.len(), case.cfg, h.seen);
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

#[test]
fn model_random_ops() {
    let cases = env_u64("RINGKV_MODEL_CASES").unwrap_or(DEFAULT_CASES);
    let mut seed = run_seed();
    let rt = runtime();
    let backend = rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(tmp.path(), Options::default()).await.expect("open");
        let b = db.io_backend();
        db.close().await.expect("close");
        b
    });
    eprintln!("model_random_ops: {cases} cases on {backend:?}, RINGKV_MODEL_SEED={seed:#x}");
    let started = Instant::now();
    for i in 0..cases {
        let config = Config {
            cases: 1,
            failure_persistence: None,
            max_shrink_iters: 2000,
            max_shrink_time: 300_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng_for(seed));
        let result = runner.run(&case(), |c| rt.block_on(run_case(&c)).map_err(TestCaseError::fail));
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, minimal)) => panic!(
                "model case {i} failed on {backend:?}; replay with \
                 RINGKV_MODEL_SEED={seed:#x} RINGKV_MODEL_CASES=1\n{why}\nminimal failing case \
                 ({} ops):\n{minimal:#?}",
                minimal.ops.len()
            ),
            Err(TestError::Abort(why)) => {
                panic!("model case {i} aborted; replay with RINGKV_MODEL_SEED={seed:#x} RINGKV_MODEL_CASES=1: {why}")
            }
        }
        seed = splitmix64(seed);
    }
    eprintln!("model_random_ops: {cases} cases passed in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// The large deterministic test.

fn large_key(i: u32) -> Vec<u8> {
    format!("key{i:08}").into_bytes()
}

fn large_value(i: u32, round: u32) -> Vec<u8> {
    pattern(100, (u64::from(round) << 32) | u64::from(i))
}

async fn large_verify(what: &str, bucket: &Bucket, model: &Model, rng: &mut rand::rngs::StdRng) -> Check {
    let mut keys: Vec<&Vec<u8>> = model.keys().collect();
    keys.shuffle(rng);
    for k in keys {
        same_value(&format!("{what}: random-order get"), k, eng!(bucket.get(k).await), model.get(k))?;
    }
    // Absent keys between and around the present ones.
    for i in [0u32, 1, 7, 19_999, 20_000, 20_001, 1_000_000] {
        let mut k = large_key(i);
        k.push(b'!');
        same_value(&format!("{what}: get of an absent key"), &k, eng!(bucket.get(&k).await), None)?;
    }
    verify_bucket(what, bucket, model, false).await?;
    for _ in 0..20 {
        let a = rng.gen_range(0..21_000u32);
        let b = a + rng.gen_range(0..3_000u32);
        let r: Range = (Bound::Included(large_key(a)), Bound::Excluded(large_key(b)));
        let rev = rng.gen_bool(0.5);
        let it =
            if rev { eng!(bucket.range_rev(r.clone()).await) } else { eng!(bucket.range(r.clone()).await) };
        let got = to_pairs(eng!(it.collect_vec().await));
        same_pairs(&format!("{what}: range {a}..{b} rev={rev}"), &got, &model_range(model, &r, rev))?;
    }
    Ok(())
}

async fn large_sequential(dir: &Path, seed: u64) -> Check {
    const KEYS: u32 = 20_000;
    const TXN: usize = 100;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let phase = |what: &str, db: &Db| {
        let s = db.stats();
        eprintln!(
            "model_large_sequential: {what} at {:.1?} (cache {} bytes, {} files, {} checkpoints, {} splits, \
             {} merges)",
            started.elapsed(),
            s.cache_bytes,
            s.files,
            s.checkpoints,
            s.splits,
            s.merges
        );
    };
    let opts = Options::default()
        .durability(Durability::Buffered)
        .cache_capacity(64 * 1024)
        .checkpoint_bytes(256 * 1024)
        .wal_segment_bytes(256 * 1024);
    let mut db = eng!(Db::open(dir, opts.clone()).await);
    let mut bucket = eng!(db.bucket("big").await);
    let mut model = Model::new();
    let mut order: Vec<u32> = (0..KEYS).collect();
    order.shuffle(&mut rng);
    for chunk in order.chunks(TXN) {
        let mut t = eng!(bucket.begin());
        for &i in chunk {
            eng!(t.put(large_key(i), large_value(i, 0)));
            model.insert(large_key(i), large_value(i, 0));
        }
        eng!(t.commit().await);
    }
    phase("loaded", &db);
    eng!(db.checkpoint().await);
    phase("checkpointed", &db);
    // 20 000 pairs of ~120 encoded bytes fill hundreds of 4 KiB leaves.
    let splits = db.stats().splits;
    if splits < 100 {
        return Err(format!("only {splits} splits while loading 20 000 keys"));
    }
    large_verify("after load", &bucket, &model, &mut rng).await?;
    phase("verified", &db);
    let cache = db.stats().cache_bytes;
    // 20 000 pairs of ~115 bytes: if nothing had been evicted the cache would hold > 2 MiB.
    if cache > 1024 * 1024 {
        return Err(format!("cache holds {cache} bytes after reading everything with a 64 KiB capacity"));
    }

    // Overwrite and delete some, in random-order transactions over evicted pages.
    order.shuffle(&mut rng);
    for chunk in order[..6_000].chunks(TXN) {
        let mut t = eng!(bucket.begin());
        for &i in chunk {
            if i % 3 == 0 {
                eng!(t.delete(large_key(i)));
                model.remove(&large_key(i));
            } else {
                eng!(t.put(large_key(i), large_value(i, 1)));
                model.insert(large_key(i), large_value(i, 1));
            }
        }
        eng!(t.commit().await);
    }
    phase("overwritten", &db);
    large_verify("after overwrites", &bucket, &model, &mut rng).await?;
    phase("verified", &db);

    eng!(db.close().await);
    db = eng!(Db::open(dir, opts.clone()).await);
    bucket = eng!(db.existing_bucket("big"));
    phase("reopened", &db);
    large_verify("after reopen", &bucket, &model, &mut rng).await?;
    phase("verified", &db);
    eng!(db.close().await);
    Ok(())
}

#[test]
fn model_large_sequential() {
    let seed = run_seed();
    eprintln!("model_large_sequential: RINGKV_MODEL_SEED={seed:#x}");
    let tmp = tempfile::Builder::new().prefix("ringkv-model-large-").tempdir().expect("tempdir");
    let started = Instant::now();
    let rt = runtime();
    let r = rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(300), large_sequential(tmp.path(), seed)).await {
            Ok(r) => r,
            Err(_) => Err("did not finish within 300 s (hang?)".to_string()),
        }
    });
    if let Err(e) = r {
        panic!("model_large_sequential failed (replay with RINGKV_MODEL_SEED={seed:#x}): {e}");
    }
    eprintln!("model_large_sequential passed in {:.1?}", started.elapsed());
}

/// Regression for /work/bugs/evict-reader-livelock.md: with a 64 KiB cache, once dirty
/// pages, stubs and index nodes hold about 90% of the capacity, a page loaded for a reader
/// was evicted by its own load's eviction pass, and the reader reloaded it forever.
#[test]
fn model_regression_reader_livelock() {
    let tmp = tempfile::Builder::new().prefix("ringkv-model-livelock-").tempdir().expect("tempdir");
    let rt = runtime();
    let r: Check = rt.block_on(async {
        let opts = Options::default()
            .durability(Durability::Buffered)
            .cache_capacity(64 * 1024)
            .background_checkpoints(false)
            .checkpoint_interval(None);
        let db = eng!(Db::open(tmp.path(), opts).await);
        let b = eng!(db.bucket("b").await);
        let keys: Vec<u32> = (0..3000).collect();
        for round in 0..2u32 {
            for chunk in keys.chunks(100) {
                let mut t = eng!(b.begin());
                for &k in chunk {
                    eng!(t.put(large_key(k), large_value(k, round)));
                }
                match tokio::time::timeout(Duration::from_secs(20), t.commit()).await {
                    Ok(r) => {
                        eng!(r);
                    }
                    Err(_) => {
                        return Err(format!(
                        "round {round}: the commit of keys {}..{} did not finish in 20 s (cache {} bytes)",
                        chunk[0],
                        chunk[chunk.len() - 1],
                        db.stats().cache_bytes
                    ))
                    }
                }
            }
            eng!(db.checkpoint().await);
        }
        for &k in &keys {
            let got = eng!(b.get(large_key(k)).await);
            same_value("get", &large_key(k), got, Some(&large_value(k, 1)))?;
        }
        eng!(db.close().await);
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}
