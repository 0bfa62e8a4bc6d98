//! Snapshot isolation checked from the outside: a concurrent list-append workload whose
//! history is checked by an Elle-style dependency-graph checker (`common/si.rs`).
//!
//! - `list_append_history_is_snapshot_isolated`: 8 clients on a 2-thread runtime run
//!   transactions of 1-4 micro-ops (`read k`; `append k e` = read the list, append a
//!   globally unique integer, put it back) over 12 live keys; 5% of the transactions append
//!   and roll back on purpose. A key is retired after [`MAX_APPENDS_PER_KEY`] generated
//!   appends and a fresh one takes its place, so lists stay short. The history ends with a
//!   read of every key, so every committed append has a known place. The checker must find
//!   no G0, G1a, G1b, G1c, G-single, lost update, incompatible order, garbage, internal or
//!   timestamp anomaly in the 40 000 committed transactions; G2 (write skew) is
//!   allowed and counted. Options: `Buffered` commits, a 64 KiB cache and a 64 KiB
//!   checkpoint trigger (background checkpoints and evictions run during the workload),
//!   and a 128-byte inline limit, so lists longer than 16 elements live in blob files.
//! - `list_append_across_buckets_is_snapshot_isolated`: the same over three buckets (key
//!   `k` in bucket `k % 3`), with half the commits: transactions through `Db::begin` read
//!   and append across buckets; more than 100 committed ones must have appended in two
//!   buckets or more, and the checker must find nothing forbidden either.
//! - `write_skew_is_seen_and_allowed`: rounds of two transactions that both read `x` and
//!   `y`, one appending to `x` and the other to `y`, both committing: every round must be
//!   reported as a G2 cycle, allowed under snapshot isolation, and nothing else.
//! - `checker_*`: hand-built histories, one per anomaly the checker must report, and a
//!   clean one where it must report nothing.
//!
//! Randomized: the seed is printed; `RINGKV_TEST_SEED=<n>` replays the random choices
//! (the interleaving of tasks is up to the scheduler). `RINGKV_IO_BACKEND=uring|threadpool`
//! picks the backend (the options use `Auto`).
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

mod common;

use common::seed;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use common::si::{check, Elem, Key, Kind, Op, Outcome, Report, TxnRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::{Bucket, Db, Durability, Options, Transaction};

/// Clients (tasks) of the workload.
const CLIENTS: usize = 8;
/// Committed transactions each client runs (rolled-back and conflicting ones do not count).
const COMMITS_PER_CLIENT: usize = 5000;
/// Keys live at any moment.
const KEY_SLOTS: usize = 12;
/// Appends generated for one key before it is retired (keeps lists short: 8 bytes each).
const MAX_APPENDS_PER_KEY: u64 = 48;
/// Percent of transactions that append and then roll back on purpose.
const ROLLBACK_PERCENT: u32 = 5;
/// Micro-ops of one transaction: 1 to this many.
const MAX_OPS: usize = 4;

fn key_bytes(k: Key) -> Vec<u8> {
    format!("la/{k:08}").into_bytes()
}

fn encode(list: &[Elem]) -> Vec<u8> {
    list.iter().flat_map(|e| e.to_le_bytes()).collect()
}

fn decode(k: Key, v: Option<Bytes>) -> Vec<Elem> {
    let Some(v) = v else { return Vec::new() };
    assert_eq!(v.len() % 8, 0, "k{k}: a list of {} bytes is not a list of u64s", v.len());
    v.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
}

fn options() -> Options {
    Options::default()
        .durability(Durability::Buffered)
        // Background checkpoints and evictions run during the workload.
        .checkpoint_bytes(64 * 1024)
        .cache_capacity(64 * 1024)
        // Lists of more than 16 elements are blob values.
        .inline_limit(128)
}

/// The buckets a workload's keys live in: key `k` in bucket `k % len`. With one bucket,
/// transactions start as `Bucket::begin` (the one-bucket shorthand); with more, as
/// `Db::begin`, and one transaction reads and appends to keys of several buckets.
#[derive(Clone)]
struct Buckets {
    db: Db,
    all: Arc<[Bucket]>,
}

impl Buckets {
    async fn open(db: &Db, prefix: &str, n: usize) -> Buckets {
        let mut all = Vec::new();
        for i in 0..n {
            all.push(db.bucket(&format!("{prefix}{i}")).await.unwrap());
        }
        Buckets { db: db.clone(), all: all.into() }
    }

    fn of(&self, k: Key) -> &Bucket {
        &self.all[(k % self.all.len() as Key) as usize]
    }

    fn begin(&self) -> Transaction {
        if self.all.len() == 1 {
            self.all[0].begin().expect("begin").into_transaction()
        } else {
            self.db.begin().expect("begin")
        }
    }
}

/// A transaction that records its micro-ops for the checker.
struct Recorder {
    txn: Transaction,
    buckets: Buckets,
    rec: TxnRecord,
}

impl Recorder {
    fn begin(b: &Buckets, client: usize) -> Recorder {
        let txn = b.begin();
        let rec = TxnRecord {
            client,
            snapshot_ts: Some(txn.snapshot_ts()),
            ops: Vec::new(),
            outcome: Outcome::RolledBack,
        };
        Recorder { txn, buckets: b.clone(), rec }
    }

    async fn read(&mut self, k: Key) -> Vec<Elem> {
        let b = self.buckets.of(k);
        let v = self.txn.get(b, key_bytes(k)).await.unwrap_or_else(|e| panic!("get k{k}: {e}"));
        let list = decode(k, v);
        self.rec.ops.push(Op::Read { key: k, list: list.clone() });
        list
    }

    /// Reads the list (recorded as a read), appends `elem` and puts it back.
    async fn append(&mut self, k: Key, elem: Elem) {
        let mut list = self.read(k).await;
        list.push(elem);
        let b = self.buckets.of(k);
        self.txn.put(b, key_bytes(k), encode(&list)).unwrap_or_else(|e| panic!("put k{k}: {e}"));
        self.rec.ops.push(Op::Append { key: k, elem });
    }

    /// Commits. A conflict is an outcome; any other error fails the test.
    async fn commit(self) -> TxnRecord {
        let Recorder { txn, mut rec, .. } = self;
        rec.outcome = match txn.commit().await {
            Ok(ts) => Outcome::Committed { ts: Some(ts) },
            Err(e) if e.is_conflict() => Outcome::Conflict,
            Err(e) => panic!("commit of client {}: unexpected error {e}", rec.client),
        };
        rec
    }

    fn rollback(self) -> TxnRecord {
        let Recorder { txn, mut rec, .. } = self;
        txn.rollback();
        rec.outcome = Outcome::RolledBack;
        rec
    }
}

/// Which keys are live: `KEY_SLOTS` slots, each retired after `MAX_APPENDS_PER_KEY`
/// generated appends.
struct KeyGen {
    slots: Vec<(Key, u64)>,
    next_key: Key,
}

impl KeyGen {
    fn new() -> KeyGen {
        KeyGen { slots: (0..KEY_SLOTS as Key).map(|k| (k, 0)).collect(), next_key: KEY_SLOTS as Key }
    }

    fn pick(&mut self, rng: &mut StdRng, for_append: bool) -> Key {
        let slot = &mut self.slots[rng.gen_range(0..KEY_SLOTS)];
        let key = slot.0;
        if for_append {
            slot.1 += 1;
            if slot.1 == MAX_APPENDS_PER_KEY {
                *slot = (self.next_key, 0);
                self.next_key += 1;
            }
        }
        key
    }
}

/// State shared by the clients.
struct Shared {
    keys: Mutex<KeyGen>,
    next_elem: AtomicU64,
    /// The history, in order of completion.
    history: Mutex<Vec<TxnRecord>>,
}

impl Shared {
    fn pick(&self, rng: &mut StdRng, for_append: bool) -> Key {
        self.keys.lock().expect("key generator").pick(rng, for_append)
    }

    fn elem(&self) -> Elem {
        self.next_elem.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, rec: TxnRecord) {
        self.history.lock().expect("history").push(rec);
    }
}

/// One client: transactions until `commits` of them committed.
async fn client(b: Buckets, c: usize, seed: u64, shared: Arc<Shared>, commits: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (mut committed, mut txns) = (0, 0);
    while committed < commits {
        txns += 1;
        let rollback = rng.gen_ratio(ROLLBACK_PERCENT, 100);
        let mut t = Recorder::begin(&b, c);
        for _ in 0..rng.gen_range(1..=MAX_OPS) {
            if rollback || rng.gen_bool(0.5) {
                let k = shared.pick(&mut rng, true);
                t.append(k, shared.elem()).await;
            } else {
                t.read(shared.pick(&mut rng, false)).await;
            }
            // Reads of cached pages complete without yielding: let other clients run
            // between the micro-ops of this one, so transactions overlap.
            if rng.gen_bool(0.5) {
                tokio::task::yield_now().await;
            }
        }
        let rec = if rollback { t.rollback() } else { t.commit().await };
        if matches!(rec.outcome, Outcome::Committed { .. }) {
            committed += 1;
        }
        shared.record(rec);
    }
    txns
}

/// A committed transaction reading every key in `keys`, so every committed append has a
/// known place in its key's version order.
async fn final_read(b: &Buckets, client: usize, keys: impl Iterator<Item = Key>) -> TxnRecord {
    let mut t = Recorder::begin(b, client);
    for k in keys {
        t.read(k).await;
    }
    let rec = t.commit().await;
    assert!(matches!(rec.outcome, Outcome::Committed { .. }), "a read-only transaction commits");
    rec
}

fn assert_si(report: &Report, seed: u64, what: &str) {
    let forbidden = report.forbidden();
    assert!(
        forbidden.is_empty(),
        "{what} (seed {seed}): {} anomalies forbidden under snapshot isolation; {}\n{}",
        forbidden.len(),
        report.summary(),
        report.describe(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_history_is_snapshot_isolated() {
    list_append("list_append_history_is_snapshot_isolated", 1, COMMITS_PER_CLIENT).await;
}

/// The same workload over three buckets (key `k` in bucket `k % 3`): most transactions of
/// two or more micro-ops read and append across buckets, through `Db::begin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_append_across_buckets_is_snapshot_isolated() {
    list_append("list_append_across_buckets_is_snapshot_isolated", 3, COMMITS_PER_CLIENT / 2).await;
}

async fn list_append(name: &str, buckets: usize, commits: usize) {
    let seed = seed(name);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    let b = Buckets::open(&db, "la", buckets).await;
    let shared = Arc::new(Shared {
        keys: Mutex::new(KeyGen::new()),
        next_elem: AtomicU64::new(1),
        history: Mutex::new(Vec::new()),
    });
    let start = Instant::now();
    let clients: Vec<_> =
        (0..CLIENTS).map(|c| tokio::spawn(client(b.clone(), c, seed, shared.clone(), commits))).collect();
    let mut txns = 0;
    for c in clients {
        txns += c.await.expect("client panicked");
    }
    let key_count = shared.keys.lock().unwrap().next_key;
    let last = final_read(&b, CLIENTS, 0..key_count).await;
    shared.record(last);
    let workload = start.elapsed();
    let history = std::mem::take(&mut *shared.history.lock().unwrap());
    assert_eq!(history.len(), txns + 1, "every transaction is in the history");

    let start = Instant::now();
    let report = check(&history);
    let checked = start.elapsed();
    let stats = db.stats();
    eprintln!(
        "{name}: backend {:?}: {}; {key_count} keys, {} checkpoints; workload {workload:?}, check {checked:?}",
        db.io_backend(),
        report.summary(),
        stats.checkpoints,
    );
    if report.count(Kind::G2) > 0 {
        eprintln!("{name}: first G2 cycles:\n{}", report.describe(2));
    }
    assert_si(&report, seed, name);
    assert_eq!(report.committed, CLIENTS * commits + 1);
    assert_eq!(report.committed + report.conflicts + report.rolled_back, history.len());
    assert_eq!(report.unobserved_appends, 0, "the final read sees every committed append");
    // The workload must be interesting: overlapping writers and readers.
    assert!(report.conflicts > 0, "no transaction conflicted: the clients did not overlap");
    assert!(report.rolled_back > 0, "no rolled-back transaction: G1a was not exercised");
    assert!(report.ww > 0 && report.wr > 0 && report.rw > 0, "{}", report.summary());
    if buckets > 1 {
        // Transactions did span buckets: some committed transaction appended in two.
        let spans = history
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::Committed { .. }))
            .filter(|t| {
                let of = |k: &Key| k % buckets as Key;
                let mut bs = t.ops.iter().filter_map(|o| match o {
                    Op::Append { key, .. } => Some(of(key)),
                    Op::Read { .. } => None,
                });
                bs.next().is_some_and(|first| bs.any(|x| x != first))
            })
            .count();
        eprintln!("{name}: {spans} committed transactions appended in two buckets or more");
        assert!(spans > 100, "only {spans} committed transactions wrote to several buckets");
    }
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_skew_is_seen_and_allowed() {
    const ROUNDS: usize = 40;
    const KEYS: Key = 6;
    let name = "write_skew_is_seen_and_allowed";
    let seed = seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).await.unwrap();
    let b = Buckets::open(&db, "skew", 1).await;
    let mut history = Vec::new();
    let mut next_elem = 1;
    for _ in 0..ROUNDS {
        let x = rng.gen_range(0..KEYS);
        let y = (x + rng.gen_range(1..KEYS)) % KEYS;
        // Both snapshots are taken before either transaction commits.
        let mut t1 = Recorder::begin(&b, 0);
        let mut t2 = Recorder::begin(&b, 1);
        for t in [&mut t1, &mut t2] {
            let (first, second) = if rng.gen() { (x, y) } else { (y, x) };
            t.read(first).await;
            t.read(second).await;
        }
        // Each writes the key the other one read: t1 appends to y, t2 to x.
        t1.append(y, next_elem).await;
        t2.append(x, next_elem + 1).await;
        next_elem += 2;
        let (r1, r2) = if rng.gen() {
            let r1 = t1.commit().await;
            (r1, t2.commit().await)
        } else {
            let r2 = t2.commit().await;
            (t1.commit().await, r2)
        };
        for r in [&r1, &r2] {
            assert!(matches!(r.outcome, Outcome::Committed { .. }), "disjoint write sets both commit");
        }
        history.extend([r1, r2]);
    }
    history.push(final_read(&b, 2, 0..KEYS).await);
    let report = check(&history);
    eprintln!("{name}: backend {:?}: {}", db.io_backend(), report.summary());
    eprintln!("{name}: first G2 cycles:\n{}", report.describe(2));
    assert_si(&report, seed, name);
    assert_eq!(report.count(Kind::G2), ROUNDS, "one write-skew cycle per round\n{}", report.describe(3));
    assert_eq!(report.kinds(), BTreeSet::from([Kind::G2]));
    assert_eq!(report.unobserved_appends, 0);
    db.close().await.unwrap();
}

// Hand-built histories. Transaction `Ti` is element `i` of the history.

fn r(key: Key, list: &[Elem]) -> Op {
    Op::Read { key, list: list.to_vec() }
}

fn a(key: Key, elem: Elem) -> Op {
    Op::Append { key, elem }
}

fn txn(outcome: Outcome, ops: Vec<Op>) -> TxnRecord {
    TxnRecord { client: 0, snapshot_ts: None, ops, outcome }
}

fn ok(ops: Vec<Op>) -> TxnRecord {
    txn(Outcome::Committed { ts: None }, ops)
}

/// Checks `h` and returns the kinds found (printing the report).
fn kinds_of(h: &[TxnRecord]) -> BTreeSet<Kind> {
    let report = check(h);
    eprintln!("{}\n{}", report.summary(), report.describe(3));
    report.kinds()
}

const X: Key = 0;
const Y: Key = 1;

#[test]
fn checker_detects_g0() {
    // T0 and T1 append to x and y in opposite orders: ww x T0 -> T1, ww y T1 -> T0.
    let h = [ok(vec![a(X, 1), a(Y, 3)]), ok(vec![a(X, 2), a(Y, 4)]), ok(vec![r(X, &[1, 2]), r(Y, &[4, 3])])];
    assert_eq!(kinds_of(&h), BTreeSet::from([Kind::G0]));
}

#[test]
fn checker_detects_g1a() {
    // A committed read holds an element of a rolled-back and of a conflicting transaction.
    let h = [
        txn(Outcome::RolledBack, vec![a(X, 1)]),
        txn(Outcome::Conflict, vec![r(X, &[1]), a(X, 2)]),
        ok(vec![r(X, &[1, 2])]),
    ];
    let report = check(&h);
    assert_eq!(report.kinds(), BTreeSet::from([Kind::G1a]));
    assert_eq!(report.count(Kind::G1a), 2, "{}", report.describe(3));
}

#[test]
fn checker_detects_g1b() {
    // T1 reads the state between T0's two appends. The read also makes a G-single cycle
    // (T0 -wr-> T1 -rw-> T0, as T0's second append overwrote what T1 read).
    let h = [ok(vec![a(X, 1), a(X, 2)]), ok(vec![r(X, &[1])]), ok(vec![r(X, &[1, 2])])];
    let kinds = kinds_of(&h);
    assert!(kinds.contains(&Kind::G1b), "{kinds:?}");
    assert_eq!(kinds, BTreeSet::from([Kind::G1b, Kind::GSingle]));
}

#[test]
fn checker_detects_g1c() {
    // Each reads the other's append: T0 -wr x-> T1 -wr y-> T0.
    let h = [ok(vec![a(X, 1), r(Y, &[2])]), ok(vec![a(Y, 2), r(X, &[1])])];
    assert_eq!(kinds_of(&h), BTreeSet::from([Kind::G1c]));
}

#[test]
fn checker_detects_g_single() {
    // Read skew: T0 sees x before T1 and y after it: T0 -rw x-> T1 -wr y-> T0.
    let h = [ok(vec![r(X, &[]), r(Y, &[2])]), ok(vec![a(X, 1), a(Y, 2)]), ok(vec![r(X, &[1]), r(Y, &[2])])];
    assert_eq!(kinds_of(&h), BTreeSet::from([Kind::GSingle]));
}

#[test]
fn checker_detects_lost_update() {
    // Both read the empty x and both append to it. It is also a G-single cycle
    // (T0 -ww x-> T1 -rw x-> T0).
    let h = [ok(vec![r(X, &[]), a(X, 1)]), ok(vec![r(X, &[]), a(X, 2)]), ok(vec![r(X, &[1, 2])])];
    let kinds = kinds_of(&h);
    assert!(kinds.contains(&Kind::LostUpdate), "{kinds:?}");
    assert_eq!(kinds, BTreeSet::from([Kind::LostUpdate, Kind::GSingle]));
}

#[test]
fn checker_detects_incompatible_order() {
    // [1] is not a prefix of [2, 1].
    let h = [ok(vec![a(X, 1)]), ok(vec![a(X, 2)]), ok(vec![r(X, &[1])]), ok(vec![r(X, &[2, 1])])];
    assert_eq!(kinds_of(&h), BTreeSet::from([Kind::IncompatibleOrder]));
}

#[test]
fn checker_detects_internal_and_garbage_reads() {
    // T0 does not see its own append; T1 reads an element nobody appended.
    let h = [ok(vec![r(X, &[]), a(X, 1), r(X, &[])]), ok(vec![r(Y, &[7])])];
    assert_eq!(kinds_of(&h), BTreeSet::from([Kind::Internal, Kind::GarbageRead]));
}

/// A serial history with timestamps: T0, T1, (T2 rolled back), T3, T4.
fn serial_history() -> Vec<TxnRecord> {
    let at = |snap: u64, ts: u64, ops: Vec<Op>| TxnRecord {
        client: 0,
        snapshot_ts: Some(snap),
        ops,
        outcome: Outcome::Committed { ts: Some(ts) },
    };
    vec![
        at(0, 1, vec![r(X, &[]), a(X, 1)]),
        at(1, 2, vec![r(X, &[1]), a(X, 2), r(Y, &[]), a(Y, 3)]),
        TxnRecord {
            client: 0,
            snapshot_ts: Some(2),
            ops: vec![r(X, &[1, 2]), a(X, 4)],
            outcome: Outcome::RolledBack,
        },
        at(2, 3, vec![r(X, &[1, 2]), r(Y, &[3]), a(Y, 5), r(Y, &[3, 5])]),
        at(3, 3, vec![r(X, &[1, 2]), r(Y, &[3, 5])]),
    ]
}

#[test]
fn checker_finds_nothing_in_a_serial_history() {
    let report = check(&serial_history());
    eprintln!("{}", report.summary());
    assert!(report.anomalies.is_empty(), "{}", report.describe(5));
    assert_eq!((report.committed, report.rolled_back, report.conflicts), (4, 1, 0));
    // ww: x T0 -> T1, y T1 -> T3. wr: T0 -> T1, T1 -> T3, T1 -> T4, T3 -> T4.
    assert_eq!((report.ww, report.wr, report.rw, report.edges), (2, 4, 0, 4));
    assert_eq!(report.unobserved_appends, 0);
}

#[test]
fn checker_cross_checks_timestamps() {
    // T3 claims a commit timestamp below T1's although it appended after T1 to y.
    let mut h = serial_history();
    h[3].outcome = Outcome::Committed { ts: Some(1) };
    h[3].snapshot_ts = Some(0);
    let kinds = kinds_of(&h);
    assert_eq!(kinds, BTreeSet::from([Kind::TimestampOrder]));
}

#[test]
fn checker_reports_write_skew_as_allowed() {
    // T0 reads x and y and appends to y; T1 reads both and appends to x.
    let h = [
        ok(vec![r(X, &[]), r(Y, &[]), a(Y, 1)]),
        ok(vec![r(X, &[]), r(Y, &[]), a(X, 2)]),
        ok(vec![r(X, &[2]), r(Y, &[1])]),
    ];
    let report = check(&h);
    eprintln!("{}\n{}", report.summary(), report.describe(3));
    assert_eq!(report.kinds(), BTreeSet::from([Kind::G2]));
    assert!(report.forbidden().is_empty());
}
