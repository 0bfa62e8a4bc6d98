//! Snapshot isolation checked from the outside: an Elle-style dependency-graph checker of
//! list-append histories (`common/si.rs`).
//!
//! - `checker_*`: hand-built histories, one per anomaly the checker must report, and a
//!   clean one where it must report nothing.

mod common;

use std::collections::BTreeSet;

use common::si::{check, Elem, Key, Kind, Op, Outcome, TxnRecord};

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
