//! An Elle-style checker of snapshot isolation over list-append histories.
//!
//! A history is a list of transactions. Each is a sequence of micro-ops on keys whose
//! values are lists of globally unique integers, `read k` (the whole list seen) and
//! `append k e`, and an outcome: committed (with its timestamps, if known), aborted by a
//! conflict, or rolled back. The checker infers everything from the values read; the
//! timestamps are only a cross-check. Checks, in the order the code follows them:
//!
//! 1. Internal consistency: inside one transaction, every read of a key equals its earlier
//!    read of the key plus its own appends since (a snapshot, and read-your-writes); a
//!    first read ends with the transaction's own appends so far. The part of a read before
//!    its own appends is the *external* version it read.
//! 2. Version order: per key, every list read by a committed transaction must be a prefix
//!    of the longest one read ("incompatible order" otherwise). The longest list orders the
//!    elements it holds; version `i` of a key is its first `i` elements.
//! 3. Reads: every element a committed transaction read was appended to that key by a
//!    committed transaction (G1a if the writer aborted or rolled back, "garbage" if nobody
//!    appended it there); the last element read from another transaction is that
//!    transaction's last append to the key (G1b otherwise: an intermediate state).
//! 4. Lost update: two committed transactions read the same version of a key and both
//!    appended to it.
//! 5. The dependency graph over committed transactions: `ww` (consecutive elements of the
//!    version order, by different writers), `wr` (a read's last external element was
//!    appended by another transaction), `rw` (a read's external version is followed in the
//!    version order by another transaction's element). With timestamps, each edge is
//!    checked against them (ww: commit before commit; wr: commit at or before the reader's
//!    snapshot; rw: the overwriter commits after the reader's snapshot).
//! 6. Cycles: G0 is a cycle of ww edges (Tarjan SCCs of the ww graph); G1c a cycle of ww
//!    and wr edges with at least one wr (SCCs of the ww+wr graph, then a BFS closing a wr
//!    edge); G-single a cycle with exactly one rw edge (for every rw edge `a -> b`, a BFS
//!    from `b` back to `a` over ww+wr edges, pruned by a topological order of the ww+wr
//!    condensation); G2 a strongly connected component of the full graph that holds none
//!    of those, so every cycle in it has two rw edges or more (write skew). Snapshot
//!    isolation forbids everything here except G2.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

/// A key of the list-append workload.
pub type Key = u64;
/// An element of a list: unique across the whole history.
pub type Elem = u64;

/// One micro-op of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The whole list read (an absent key reads as the empty list).
    Read { key: Key, list: Vec<Elem> },
    /// `elem` appended to the list of `key`.
    Append { key: Key, elem: Elem },
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed; `ts` is the commit timestamp the engine returned, if recorded.
    Committed { ts: Option<u64> },
    /// Refused at commit by first-committer-wins.
    Conflict,
    /// Rolled back on purpose.
    RolledBack,
}

/// One transaction of a history.
#[derive(Debug, Clone)]
pub struct TxnRecord {
    /// The client (task) that ran it.
    pub client: usize,
    /// The snapshot timestamp it read at, if recorded.
    pub snapshot_ts: Option<u64>,
    pub ops: Vec<Op>,
    pub outcome: Outcome,
}

impl TxnRecord {
    fn committed(&self) -> bool {
        matches!(self.outcome, Outcome::Committed { .. })
    }

    fn commit_ts(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Committed { ts } => ts,
            _ => None,
        }
    }
}

/// The kinds of anomaly the checker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A transaction's reads disagree with its own earlier reads and appends.
    Internal,
    /// Two lists read for one key where neither is a prefix of the other.
    IncompatibleOrder,
    /// An element twice in one list.
    DuplicateElements,
    /// An element read that nobody appended to that key.
    GarbageRead,
    /// A cycle of ww edges (dirty write).
    G0,
    /// A committed read saw an aborted or rolled-back append.
    G1a,
    /// A committed read saw an intermediate state of another transaction.
    G1b,
    /// A cycle of ww and wr edges.
    G1c,
    /// A cycle with exactly one rw edge (read skew and friends).
    GSingle,
    /// Two committed transactions read one version of a key and both appended to it.
    LostUpdate,
    /// A dependency that contradicts the engine's timestamps.
    TimestampOrder,
    /// A cycle with two rw edges or more (write skew): allowed under snapshot isolation.
    G2,
}

impl Kind {
    /// Whether snapshot isolation allows this anomaly.
    pub fn allowed_under_si(self) -> bool {
        self == Kind::G2
    }
}

/// One anomaly found, with a human-readable explanation.
#[derive(Debug, Clone)]
pub struct Anomaly {
    pub kind: Kind,
    pub detail: String,
}

/// What the checker found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub committed: usize,
    pub conflicts: usize,
    pub rolled_back: usize,
    /// Distinct ordered pairs of transactions with at least one dependency.
    pub edges: usize,
    pub ww: usize,
    pub wr: usize,
    pub rw: usize,
    /// Committed appends missing from the longest list read of their key (their place in
    /// the version order is unknown). Zero when the history ends with a read of every key.
    pub unobserved_appends: usize,
    /// Every anomaly, allowed (G2) or not.
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// The anomalies snapshot isolation forbids.
    pub fn forbidden(&self) -> Vec<&Anomaly> {
        self.anomalies.iter().filter(|a| !a.kind.allowed_under_si()).collect()
    }

    /// Number of anomalies of `kind`.
    pub fn count(&self, kind: Kind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }

    /// The kinds found.
    pub fn kinds(&self) -> BTreeSet<Kind> {
        self.anomalies.iter().map(|a| a.kind).collect()
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
        for a in self.forbidden() {
            *by_kind.entry(a.kind).or_default() += 1;
        }
        format!(
            "{} committed, {} aborted ({} conflicts, {} rolled back); {} edges (ww {}, wr {}, rw {}); \
             G2 cycles (allowed under SI): {}; forbidden anomalies: {} {:?}",
            self.committed,
            self.conflicts + self.rolled_back,
            self.conflicts,
            self.rolled_back,
            self.edges,
            self.ww,
            self.wr,
            self.rw,
            self.count(Kind::G2),
            self.forbidden().len(),
            by_kind,
        )
    }

    /// The first `per_kind` anomalies of each kind, one per line.
    pub fn describe(&self, per_kind: usize) -> String {
        let mut seen: HashMap<Kind, usize> = HashMap::new();
        let mut out = String::new();
        for a in &self.anomalies {
            let n = seen.entry(a.kind).or_default();
            *n += 1;
            if *n <= per_kind {
                let allowed = if a.kind.allowed_under_si() { " (allowed under SI)" } else { "" };
                let _ = writeln!(out, "{:?}{allowed}: {}", a.kind, a.detail);
            }
        }
        out
    }
}

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const ALL: u8 = WW | WR | RW;

/// The dependencies from one transaction to another, with one key per kind to explain it.
#[derive(Debug, Clone, Copy, Default)]
struct EdgeInfo {
    mask: u8,
    /// The key of the first ww, wr and rw dependency seen.
    keys: [Option<Key>; 3],
}

/// A read of a committed or aborted transaction, split into its external version and its
/// own appends.
struct ReadRec<'h> {
    txn: usize,
    key: Key,
    list: &'h [Elem],
    /// Length of the version read from the database (before the transaction's own appends).
    ext_len: usize,
    /// Whether the op is the transaction's first read of the key.
    first: bool,
}

/// Checks `history`; see the module documentation.
pub fn check(history: &[TxnRecord]) -> Report {
    let mut c = Checker::new(history);
    let reads = c.internal();
    let orders = c.version_orders(&reads);
    c.reads(&reads, &orders);
    c.lost_updates(&reads);
    c.ww_edges(&orders);
    c.cycles();
    c.report
}

fn fmt_list(l: &[Elem]) -> String {
    const SHOW: usize = 6;
    if l.len() <= 2 * SHOW {
        format!("{l:?}")
    } else {
        format!("[{:?} .. {} more .. {:?}]", &l[..SHOW], l.len() - 2 * SHOW, &l[l.len() - SHOW..])
    }
}

struct Checker<'h> {
    h: &'h [TxnRecord],
    /// Element -> (the transaction that appended it, the key).
    writer: HashMap<Elem, (usize, Key)>,
    /// (transaction, key) -> its last append to the key.
    last_append: HashMap<(usize, Key), Elem>,
    /// Transaction -> graph node (committed transactions only).
    node: Vec<Option<u32>>,
    /// Graph node -> transaction.
    txn_of: Vec<usize>,
    edges: HashMap<(u32, u32), EdgeInfo>,
    report: Report,
}

impl<'h> Checker<'h> {
    fn new(h: &'h [TxnRecord]) -> Checker<'h> {
        let mut writer = HashMap::new();
        let mut last_append = HashMap::new();
        let mut node = vec![None; h.len()];
        let mut txn_of = Vec::new();
        let mut report = Report::default();
        for (i, t) in h.iter().enumerate() {
            for op in &t.ops {
                if let Op::Append { key, elem } = *op {
                    let prev = writer.insert(elem, (i, key));
                    assert!(prev.is_none(), "element {elem} appended twice: not a list-append history");
                    last_append.insert((i, key), elem);
                }
            }
            match t.outcome {
                Outcome::Committed { .. } => {
                    node[i] = Some(txn_of.len() as u32);
                    txn_of.push(i);
                    report.committed += 1;
                }
                Outcome::Conflict => report.conflicts += 1,
                Outcome::RolledBack => report.rolled_back += 1,
            }
        }
        Checker { h, writer, last_append, node, txn_of, edges: HashMap::new(), report }
    }

    fn flag(&mut self, kind: Kind, detail: String) {
        self.report.anomalies.push(Anomaly { kind, detail });
    }

    fn name(&self, txn: usize) -> String {
        let t = &self.h[txn];
        let outcome = match t.outcome {
            Outcome::Committed { ts: Some(ts) } => format!("ts {ts}"),
            Outcome::Committed { ts: None } => "committed".to_string(),
            Outcome::Conflict => "conflict".to_string(),
            Outcome::RolledBack => "rolled back".to_string(),
        };
        match t.snapshot_ts {
            Some(s) => format!("T{txn}(c{}, snap {s}, {outcome})", t.client),
            None => format!("T{txn}(c{}, {outcome})", t.client),
        }
    }

    /// Step 1: internal consistency; returns every read with its external length.
    fn internal(&mut self) -> Vec<ReadRec<'h>> {
        let h = self.h;
        let mut reads = Vec::new();
        for (i, t) in h.iter().enumerate() {
            // Key -> (the list this transaction must see now, if it read the key; its own
            // appends so far).
            let mut state: HashMap<Key, (Option<Vec<Elem>>, Vec<Elem>)> = HashMap::new();
            for op in &t.ops {
                match op {
                    Op::Read { key, list } => {
                        let (known, own) = state.entry(*key).or_default();
                        let first = known.is_none();
                        if let Some(expected) = known.as_ref() {
                            if expected != list {
                                let d = format!(
                                    "{} read k{key} = {}, but its earlier read plus its own appends \
                                     give {}",
                                    self.name(i),
                                    fmt_list(list),
                                    fmt_list(expected)
                                );
                                self.report.anomalies.push(Anomaly { kind: Kind::Internal, detail: d });
                            }
                        }
                        let ext_len = if list.ends_with(own) {
                            list.len() - own.len()
                        } else {
                            if first {
                                let d = format!(
                                    "{} read k{key} = {}, which does not end with its own appends {own:?}",
                                    self.name(i),
                                    fmt_list(list)
                                );
                                self.report.anomalies.push(Anomaly { kind: Kind::Internal, detail: d });
                            }
                            list.len()
                        };
                        *known = Some(list.clone());
                        reads.push(ReadRec { txn: i, key: *key, list, ext_len, first });
                    }
                    Op::Append { key, elem } => {
                        let (known, own) = state.entry(*key).or_default();
                        if let Some(l) = known.as_mut() {
                            l.push(*elem);
                        }
                        own.push(*elem);
                    }
                }
            }
        }
        reads
    }

    /// Step 2: the version order of every key, from the committed reads. Reads that are not
    /// a prefix of it are flagged and marked unusable (`ext_len = usize::MAX`).
    fn version_orders(&mut self, reads: &[ReadRec<'h>]) -> HashMap<Key, Vec<Elem>> {
        let h = self.h;
        let mut longest: HashMap<Key, &'h [Elem]> = HashMap::new();
        for r in reads.iter().filter(|r| h[r.txn].committed()) {
            let l = longest.entry(r.key).or_insert(r.list);
            if r.list.len() > l.len() {
                *l = r.list;
            }
        }
        for r in reads.iter().filter(|r| h[r.txn].committed()) {
            let l = longest[&r.key];
            if !l.starts_with(r.list) {
                let at = r.list.iter().zip(l).take_while(|(a, b)| a == b).count();
                let d = format!(
                    "{} read k{} = {}, not a prefix of {} (read elsewhere); they differ at index {at}",
                    self.name(r.txn),
                    r.key,
                    fmt_list(r.list),
                    fmt_list(l)
                );
                self.flag(Kind::IncompatibleOrder, d);
            }
        }
        let mut orders = HashMap::new();
        for (key, l) in longest {
            let mut seen = HashSet::new();
            let dups: Vec<Elem> = l.iter().copied().filter(|e| !seen.insert(*e)).collect();
            if !dups.is_empty() {
                self.flag(Kind::DuplicateElements, format!("k{key} = {} repeats {dups:?}", fmt_list(l)));
            }
            orders.insert(key, l.to_vec());
        }
        // Committed appends whose place in the order is unknown.
        let mut unobserved = 0;
        for (elem, &(txn, key)) in &self.writer {
            if self.h[txn].committed() && !orders.get(&key).is_some_and(|l| l.contains(elem)) {
                unobserved += 1;
            }
        }
        self.report.unobserved_appends = unobserved;
        orders
    }

    fn usable(&self, r: &ReadRec<'h>, orders: &HashMap<Key, Vec<Elem>>) -> bool {
        self.h[r.txn].committed() && orders[&r.key].starts_with(r.list)
    }

    /// Adds the dependency `from -> to` of `kind` on `key` between two transactions (both
    /// committed, distinct), checking it against the timestamps when they are known.
    fn edge(&mut self, from: usize, to: usize, kind: u8, key: Key) {
        let (Some(a), Some(b)) = (self.node[from], self.node[to]) else { return };
        assert_ne!(from, to, "self-dependency");
        let e = self.edges.entry((a, b)).or_default();
        if e.mask & kind != 0 {
            return;
        }
        e.mask |= kind;
        e.keys[kind.trailing_zeros() as usize] = Some(key);
        let (f, t) = (&self.h[from], &self.h[to]);
        let (name, ok) = match kind {
            WW => ("ww", f.commit_ts().zip(t.commit_ts()).is_none_or(|(cf, ct)| cf < ct)),
            WR => ("wr", f.commit_ts().zip(t.snapshot_ts).is_none_or(|(cf, st)| cf <= st)),
            _ => ("rw", f.snapshot_ts.zip(t.commit_ts()).is_none_or(|(sf, ct)| ct > sf)),
        };
        if !ok {
            let d = format!(
                "{} -{name} k{key}-> {} (from the values read) contradicts the timestamps",
                self.name(from),
                self.name(to)
            );
            self.flag(Kind::TimestampOrder, d);
        }
    }

    /// Step 3: what each committed read saw; the wr and rw edges.
    fn reads(&mut self, reads: &[ReadRec<'h>], orders: &HashMap<Key, Vec<Elem>>) {
        let mut g1a: HashSet<(usize, usize)> = HashSet::new();
        for r in reads {
            if !self.usable(r, orders) {
                continue;
            }
            let ext = &r.list[..r.ext_len];
            for &e in ext {
                match self.writer.get(&e).copied() {
                    Some((w, k)) if k == r.key && w != r.txn => {
                        if !self.h[w].committed() && g1a.insert((r.txn, w)) {
                            let d = format!(
                                "{} read k{} = {}, holding element {e} of {}",
                                self.name(r.txn),
                                r.key,
                                fmt_list(r.list),
                                self.name(w)
                            );
                            self.flag(Kind::G1a, d);
                        }
                    }
                    Some((w, k)) if k == r.key => {
                        let d = format!(
                            "{} read k{} = {}: its own element {e} before its own appends",
                            self.name(w),
                            r.key,
                            fmt_list(r.list)
                        );
                        self.flag(Kind::Internal, d);
                    }
                    _ => {
                        let d = format!(
                            "{} read k{} = {}: nobody appended {e} to k{}",
                            self.name(r.txn),
                            r.key,
                            fmt_list(r.list),
                            r.key
                        );
                        self.flag(Kind::GarbageRead, d);
                    }
                }
            }
            if let Some(&last) = ext.last() {
                if let Some(&(w, k)) = self.writer.get(&last) {
                    if k == r.key && w != r.txn && self.h[w].committed() {
                        let final_elem = self.last_append[&(w, r.key)];
                        if final_elem != last {
                            let d = format!(
                                "{} read k{} = {}, ending in element {last} of {}, whose last append \
                                 to k{} is {final_elem}",
                                self.name(r.txn),
                                r.key,
                                fmt_list(r.list),
                                self.name(w),
                                r.key
                            );
                            self.flag(Kind::G1b, d);
                        }
                        self.edge(w, r.txn, WR, r.key);
                    }
                }
            }
            if let Some(next) = orders[&r.key].get(r.ext_len) {
                if let Some(&(w, _)) = self.writer.get(next) {
                    if w != r.txn {
                        self.edge(r.txn, w, RW, r.key);
                    }
                }
            }
        }
    }

    /// Step 4: lost updates, from the external version of each appender's first read.
    fn lost_updates(&mut self, reads: &[ReadRec<'h>]) {
        let mut by_version: BTreeMap<(Key, usize), Vec<usize>> = BTreeMap::new();
        for r in reads.iter().filter(|r| r.first && self.h[r.txn].committed()) {
            if self.last_append.contains_key(&(r.txn, r.key)) {
                by_version.entry((r.key, r.ext_len)).or_default().push(r.txn);
            }
        }
        for ((key, len), txns) in by_version {
            if txns.len() > 1 {
                let names: Vec<String> = txns.iter().map(|&t| self.name(t)).collect();
                let d = format!("{} all read version {len} of k{key} and appended to it", names.join(", "));
                self.flag(Kind::LostUpdate, d);
            }
        }
    }

    /// Step 5 (the rest): ww edges between consecutive committed writers of each key.
    fn ww_edges(&mut self, orders: &HashMap<Key, Vec<Elem>>) {
        let mut keys: Vec<&Key> = orders.keys().collect();
        keys.sort();
        for &key in keys {
            let mut prev: Option<usize> = None;
            for e in &orders[&key] {
                let Some(&(w, _)) = self.writer.get(e) else { continue };
                if !self.h[w].committed() {
                    continue;
                }
                if let Some(p) = prev.filter(|&p| p != w) {
                    self.edge(p, w, WW, key);
                }
                prev = Some(w);
            }
        }
    }

    /// Step 6: cycles.
    fn cycles(&mut self) {
        let n = self.txn_of.len();
        let mut edges: Vec<((u32, u32), EdgeInfo)> = self.edges.iter().map(|(k, v)| (*k, *v)).collect();
        edges.sort_by_key(|(k, _)| *k);
        let mut adj: Vec<Vec<(u32, u8)>> = vec![Vec::new(); n];
        for ((a, b), e) in &edges {
            adj[*a as usize].push((*b, e.mask));
        }
        self.report.edges = edges.len();
        self.report.ww = edges.iter().filter(|(_, e)| e.mask & WW != 0).count();
        self.report.wr = edges.iter().filter(|(_, e)| e.mask & WR != 0).count();
        self.report.rw = edges.iter().filter(|(_, e)| e.mask & RW != 0).count();

        let full = Sccs::new(&adj, ALL);
        // Full-graph components that hold a forbidden cycle.
        let mut forbidden_comp = vec![false; full.count];

        // G0: cycles of ww edges.
        let ww = Sccs::new(&adj, WW);
        for members in ww.nontrivial() {
            let a = members[0];
            let admit = |x: u32| ww.comp[x as usize] == ww.comp[a as usize];
            let &(b, _) =
                adj[a as usize].iter().find(|&&(b, m)| m & WW != 0 && admit(b)).expect("edge in SCC");
            let cycle = bfs(&adj, b, a, WW, admit).expect("a path inside an SCC");
            forbidden_comp[full.comp[a as usize] as usize] = true;
            let d = self.describe_cycle(&cycle, WW);
            self.flag(Kind::G0, d);
        }

        // G1c: cycles of ww and wr edges holding a wr edge.
        let wwr = Sccs::new(&adj, WW | WR);
        for members in wwr.nontrivial() {
            let cid = wwr.comp[members[0] as usize];
            let admit = |x: u32| wwr.comp[x as usize] == cid;
            let found = members.iter().find_map(|&a| {
                adj[a as usize]
                    .iter()
                    .filter(|&&(b, m)| m & WR != 0 && admit(b))
                    .find_map(|&(b, _)| bfs(&adj, b, a, WW | WR, admit))
            });
            if let Some(cycle) = found {
                forbidden_comp[full.comp[members[0] as usize] as usize] = true;
                let d = self.describe_cycle(&cycle, WW | WR);
                self.flag(Kind::G1c, d);
            }
        }

        // G-single: an rw edge a -> b closed by a path b ~> a of ww and wr edges. Along such
        // a path the topological position of the ww+wr components never decreases.
        let pos = wwr.topo_positions(&adj, WW | WR);
        let rank = |x: u32| pos[wwr.comp[x as usize] as usize];
        for a in 0..n as u32 {
            for &(b, m) in &adj[a as usize] {
                // An edge that is also ww or wr closes a G0 or G1c cycle instead.
                if m != RW || rank(b) > rank(a) {
                    continue;
                }
                let limit = rank(a);
                if let Some(path) = bfs(&adj, b, a, WW | WR, |x| rank(x) <= limit) {
                    forbidden_comp[full.comp[a as usize] as usize] = true;
                    let d = self.describe_cycle(&path, ALL);
                    self.flag(Kind::GSingle, d);
                }
            }
        }

        // G2: the other nontrivial components; every cycle in them has two rw edges or more.
        for members in full.nontrivial() {
            let cid = full.comp[members[0] as usize];
            if forbidden_comp[cid as usize] {
                continue;
            }
            let admit = |x: u32| full.comp[x as usize] == cid;
            let (a, b) = members
                .iter()
                .find_map(|&a| {
                    adj[a as usize].iter().find(|&&(b, m)| m == RW && admit(b)).map(|&(b, _)| (a, b))
                })
                .expect("a component without ww+wr cycles has an rw edge");
            let cycle = bfs(&adj, b, a, ALL, admit).expect("a path inside an SCC");
            let rws = self.rw_count(&cycle);
            assert!(rws >= 2, "a cycle with {rws} rw edges in a component without G0/G1c/G-single");
            let d = format!("{} rw edges: {}", rws, self.describe_cycle(&cycle, ALL));
            self.flag(Kind::G2, d);
        }
    }

    /// The label of edge `a -> b` within `mask`: ww before wr before rw.
    fn label(&self, a: u32, b: u32, mask: u8) -> (u8, Key) {
        let e = self.edges[&(a, b)];
        let m = e.mask & mask;
        let kind = [WW, WR, RW].into_iter().find(|k| m & k != 0).expect("edge of the cycle's kinds");
        (kind, e.keys[kind.trailing_zeros() as usize].expect("key of the edge kind"))
    }

    fn rw_count(&self, cycle: &[u32]) -> usize {
        (0..cycle.len()).filter(|&i| self.label(cycle[i], cycle[(i + 1) % cycle.len()], ALL).0 == RW).count()
    }

    /// `cycle` is a list of nodes, each with an edge to the next and the last to the first.
    fn describe_cycle(&self, cycle: &[u32], mask: u8) -> String {
        let mut s = String::new();
        for i in 0..cycle.len() {
            let (a, b) = (cycle[i], cycle[(i + 1) % cycle.len()]);
            let (kind, key) = self.label(a, b, mask);
            let kind = match kind {
                WW => "ww",
                WR => "wr",
                _ => "rw",
            };
            let _ = write!(s, "{} -{kind} k{key}-> ", self.name(self.txn_of[a as usize]));
        }
        s.push_str(&self.name(self.txn_of[cycle[0] as usize]));
        s
    }
}

/// Breadth-first search from `from` to `to` over edges of `mask` through nodes `admit`
/// accepts. Returns the path `[from, .., to]`.
fn bfs(
    adj: &[Vec<(u32, u8)>],
    from: u32,
    to: u32,
    mask: u8,
    admit: impl Fn(u32) -> bool,
) -> Option<Vec<u32>> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    parent.insert(from, from);
    while let Some(x) = queue.pop_front() {
        if x == to {
            let mut path = vec![to];
            let mut y = to;
            while y != from {
                y = parent[&y];
                path.push(y);
            }
            path.reverse();
            return Some(path);
        }
        for &(y, m) in &adj[x as usize] {
            if m & mask != 0 && admit(y) && !parent.contains_key(&y) {
                parent.insert(y, x);
                queue.push_back(y);
            }
        }
    }
    None
}

/// Strongly connected components (Tarjan, iterative) of the graph restricted to `mask`.
struct Sccs {
    /// Node -> component. Tarjan numbers components in reverse topological order.
    comp: Vec<u32>,
    count: usize,
}

impl Sccs {
    fn new(adj: &[Vec<(u32, u8)>], mask: u8) -> Sccs {
        const NONE: u32 = u32::MAX;
        let n = adj.len();
        let (mut index, mut low) = (vec![NONE; n], vec![0u32; n]);
        let mut on_stack = vec![false; n];
        let mut stack: Vec<u32> = Vec::new();
        let mut comp = vec![NONE; n];
        let (mut next, mut count) = (0u32, 0u32);
        for s in 0..n {
            if index[s] != NONE {
                continue;
            }
            // (node, index of its next edge to look at)
            let mut call: Vec<(usize, usize)> = vec![(s, 0)];
            index[s] = next;
            low[s] = next;
            next += 1;
            stack.push(s as u32);
            on_stack[s] = true;
            while let Some(&(v, ei)) = call.last() {
                if let Some(&(w, m)) = adj[v].get(ei) {
                    call.last_mut().expect("frame").1 += 1;
                    let w = w as usize;
                    if m & mask == 0 {
                        continue;
                    }
                    if index[w] == NONE {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w as u32);
                        on_stack[w] = true;
                        call.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                } else {
                    call.pop();
                    if let Some(&(p, _)) = call.last() {
                        low[p] = low[p].min(low[v]);
                    }
                    if low[v] == index[v] {
                        loop {
                            let x = stack.pop().expect("Tarjan stack") as usize;
                            on_stack[x] = false;
                            comp[x] = count;
                            if x == v {
                                break;
                            }
                        }
                        count += 1;
                    }
                }
            }
        }
        assert!(comp.iter().all(|&c| c != NONE), "every node in a component");
        Sccs { comp, count: count as usize }
    }

    /// Members of every component of more than one node (a self-loop-free graph has cycles
    /// only there).
    fn nontrivial(&self) -> Vec<Vec<u32>> {
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); self.count];
        for (x, &c) in self.comp.iter().enumerate() {
            members[c as usize].push(x as u32);
        }
        members.retain(|m| m.len() > 1);
        members
    }

    /// A topological position of every component in the condensation (edges of `mask`),
    /// preferring components with smaller node numbers first, so that positions follow the
    /// history's order where the dependencies allow.
    fn topo_positions(&self, adj: &[Vec<(u32, u8)>], mask: u8) -> Vec<u32> {
        let mut first = vec![u32::MAX; self.count];
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); self.count];
        let mut indeg = vec![0u32; self.count];
        for (a, es) in adj.iter().enumerate() {
            let ca = self.comp[a];
            first[ca as usize] = first[ca as usize].min(a as u32);
            for &(b, m) in es {
                let cb = self.comp[b as usize];
                if m & mask != 0 && ca != cb {
                    out[ca as usize].push(cb);
                    indeg[cb as usize] += 1;
                }
            }
        }
        let mut heap: BinaryHeap<Reverse<(u32, u32)>> = (0..self.count as u32)
            .filter(|&c| indeg[c as usize] == 0)
            .map(|c| Reverse((first[c as usize], c)))
            .collect();
        let mut pos = vec![u32::MAX; self.count];
        let mut next = 0;
        while let Some(Reverse((_, c))) = heap.pop() {
            pos[c as usize] = next;
            next += 1;
            for &d in &out[c as usize] {
                indeg[d as usize] -= 1;
                if indeg[d as usize] == 0 {
                    heap.push(Reverse((first[d as usize], d)));
                }
            }
        }
        assert_eq!(next as usize, self.count, "the condensation is acyclic");
        pos
    }
}
