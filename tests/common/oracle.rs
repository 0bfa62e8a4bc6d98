//! The crash oracle (`RocksDB`'s method) over ringkv on the simulated disk.
//!
//! A run is one [`SimDisk`] and one seed. Each *cycle* opens the database (recovery), checks
//! the recovered state, runs a workload with a halt armed at a random I/O operation (the
//! machine "stops" there: that operation and every later one fail), then crashes the disk:
//! every write not covered by a completed fsync is independently applied, dropped, torn or
//! replaced with garbage, and unsynced directory entries may be lost. Some crashes are
//! followed by *stacked* crashes: recovery is halted at a random operation and the disk
//! crashes again, several times, before a recovery is allowed to finish.
//!
//! The workload is groups of 1-4 concurrent transactions (disjoint keys inside a group, one
//! durability per group, so the commits of a group reach the WAL in one or a few group
//! commits), checkpoints, reads checked against the model, and now and then a clean close.
//! Every transaction also writes a marker key `m/<id>`, so the recovered state tells which
//! commits survived. Keys live in two buckets, `t` (with the markers) and `u`: a
//! transaction (`Db::begin`) writes to both about half the time, so assertion 3 also says
//! a cross-bucket commit survives whole or not at all.
//!
//! What the oracle asserts after every recovery:
//! 1. the surviving commits are a prefix of the commit order: groups in order; inside the
//!    first group with a lost commit, the acknowledged commits survive as a prefix by
//!    timestamp (the ones whose outcome is unknown — they failed or were cut off — have no
//!    known timestamp, so any of them may survive); no commit of a later group survives;
//! 2. every commit acknowledged with `Durability::Sync` survived (and every commit
//!    acknowledged before a successful checkpoint, flush or close);
//! 3. the recovered keys and values equal the model after exactly that prefix: nothing
//!    uncommitted, torn or garbage is visible;
//! 4. point reads agree with the scan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::TryStreamExt;
use ringkv::io::sim::SimDisk;
use ringkv::{Bucket, Db, Durability, Options};

/// The buckets of the workload: `t` holds the markers and half the keys, `u` the others.
const BUCKETS: [&str; 2] = ["t", "u"];

/// The model's name of `key` in bucket `BUCKETS[b]`: the bucket's name, then the key.
fn in_bucket(b: usize, key: &[u8]) -> Vec<u8> {
    let mut k = BUCKETS[b].as_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// The bucket index and key of a model key.
fn split_model_key(k: &[u8]) -> (usize, &[u8]) {
    let b = BUCKETS.iter().position(|n| n.as_bytes()[0] == k[0]).expect("a model key names its bucket");
    (b, &k[1..])
}

/// Opens (creating if needed) both buckets.
async fn buckets(db: &Db) -> ringkv::Result<[Bucket; 2]> {
    Ok([db.bucket(BUCKETS[0]).await?, db.bucket(BUCKETS[1]).await?])
}

pub const DB: &str = "/sim/db";
const KEYS: u64 = 96;

/// Totals over runs, printed by the tests.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub crashes: u64,
    pub stacked: u64,
    pub recoveries: u64,
    pub attempted: u64,
    pub acked_sync: u64,
    pub acked_buffered: u64,
    pub survived: u64,
    pub unacked_lost: u64,
    pub checkpoints: u64,
    pub closes: u64,
    pub restarts: u64,
    pub checks: u64,
    pub torn: u64,
    pub garbage: u64,
    pub dropped: u64,
    pub names_lost: u64,
    /// Delta frames the checkpoints of the workload wrote (`Stats::delta_frames`).
    pub delta_frames: u64,
    /// Chains of delta frames they consolidated (`Stats::chains_consolidated`).
    pub chains_consolidated: u64,
    /// WAL rollovers that published a segment prepared ahead (`Stats::wal_segments_prepared`).
    pub wal_segments_prepared: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.crashes += o.crashes;
        self.stacked += o.stacked;
        self.recoveries += o.recoveries;
        self.attempted += o.attempted;
        self.acked_sync += o.acked_sync;
        self.acked_buffered += o.acked_buffered;
        self.survived += o.survived;
        self.unacked_lost += o.unacked_lost;
        self.checkpoints += o.checkpoints;
        self.closes += o.closes;
        self.restarts += o.restarts;
        self.checks += o.checks;
        self.torn += o.torn;
        self.garbage += o.garbage;
        self.dropped += o.dropped;
        self.names_lost += o.names_lost;
        self.delta_frames += o.delta_frames;
        self.chains_consolidated += o.chains_consolidated;
        self.wal_segments_prepared += o.wal_segments_prepared;
    }
}

/// The options every oracle run uses: small everything, so that a few commits split
/// pages, spill values to blob files, roll WAL segments and trigger checkpoints and GC.
pub fn options(disk: &SimDisk) -> Options {
    Options::default()
        .sim(Some(disk.clone()))
        .durability(Durability::Sync)
        .cache_capacity(ringkv::limits::MIN_CACHE_CAPACITY)
        .inline_limit(200)
        .checkpoint_bytes(16 * 1024)
        .wal_segment_bytes(64 * 1024)
        .background_checkpoints(false)
        .checkpoint_interval(None)
        .gc_live_ratio(0.6)
}

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("k/{k:04}").into_bytes()
}

fn marker(id: u64) -> Vec<u8> {
    format!("m/{id:010}").into_bytes()
}

/// A value that names its transaction and key, of a seeded length (some above the inline
/// limit, so they live in blob files).
fn value(id: u64, k: u64, rng: &mut Rng) -> Vec<u8> {
    let len = if rng.chance(15) { 200 + rng.below(900) } else { 8 + rng.below(120) } as usize;
    let stamp = format!("{id}:{k}:");
    let mut v = stamp.into_bytes();
    let mut x = id.wrapping_mul(31).wrapping_add(k);
    while v.len() < len {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        v.push(b'a' + (x >> 59) as u8);
    }
    v
}

#[derive(Debug, Clone)]
struct Attempt {
    id: u64,
    group: u64,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    durability: Durability,
    /// `Some(ts)` when the commit returned Ok.
    acked: Option<u64>,
}

/// One simulated disk driven through cycles of work and crashes.
pub struct Run {
    pub seed: u64,
    pub disk: SimDisk,
    rng: Rng,
    /// The state every recovery must contain: the commits known to have survived.
    base: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Commits since the last check of a recovered state.
    pending: Vec<Attempt>,
    /// Ids of pending commits that must survive (acknowledged Sync, or acknowledged
    /// before a successful checkpoint, flush or close).
    must_survive: BTreeSet<u64>,
    next_id: u64,
    next_group: u64,
    pub totals: Totals,
}

impl Run {
    pub fn new(seed: u64) -> Run {
        Run {
            seed,
            disk: SimDisk::new(seed),
            rng: Rng::new(seed),
            base: BTreeMap::new(),
            pending: Vec::new(),
            must_survive: BTreeSet::new(),
            next_id: 0,
            next_group: 0,
            totals: Totals::default(),
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> String {
        format!("seed {}: {what} (replay: RINGKV_SIM_SEED={})", self.seed, self.seed)
    }

    /// Runs `cycles` crash cycles; `stacked_percent` of the crashes are followed by 1-4
    /// crashes during recovery.
    pub async fn cycles(&mut self, cycles: u64, stacked_percent: u64) -> Result<(), String> {
        for _ in 0..cycles {
            let db = self.recover(stacked_percent).await?;
            self.work_counted(db).await?;
            if self.rng.chance(25) {
                // The process dies but the machine runs on: everything written (not only
                // what was synced) stays, so every acknowledged commit must survive, the
                // `Buffered` ones too. Then more work, then the power fails.
                self.disk.clear_faults();
                self.everything_acked_must_survive();
                self.totals.restarts += 1;
                let db = self.recover(0).await?;
                self.work_counted(db).await?;
            }
            self.crash();
        }
        // A last recovery checks the final crash too.
        let db = self.recover(0).await?;
        db.close().await.map_err(|e| self.fail(format!("final close: {e}")))?;
        Ok(())
    }

    /// [`Run::work`], then adds what its checkpoints wrote as delta frames and
    /// consolidated, and the WAL segments it published prepared, to the totals.
    async fn work_counted(&mut self, db: Db) -> Result<(), String> {
        let handle = db.clone();
        let r = self.work(db).await;
        let s = handle.stats();
        self.totals.delta_frames += s.delta_frames;
        self.totals.chains_consolidated += s.chains_consolidated;
        self.totals.wal_segments_prepared += s.wal_segments_prepared;
        r
    }

    fn crash(&mut self) {
        let r = self.disk.crash();
        self.totals.crashes += 1;
        self.totals.torn += r.torn;
        self.totals.garbage += r.garbage;
        self.totals.dropped += r.dropped;
        self.totals.names_lost += r.names_lost;
    }

    /// Opens the database after a crash (with stacked crashes first), checks the recovered
    /// state with the oracle and returns the open database.
    async fn recover(&mut self, stacked_percent: u64) -> Result<Db, String> {
        if self.rng.chance(stacked_percent) {
            for _ in 0..=self.rng.below(4) {
                self.disk.halt_after(1 + self.rng.below(60));
                // Either outcome is fine: the open is cut short or finishes; then power fails.
                if let Ok(db) = Db::open(DB, options(&self.disk)).await {
                    drop(db);
                }
                self.crash();
                self.totals.stacked += 1;
            }
        }
        if self.totals.recoveries > 0 && self.totals.recoveries.is_multiple_of(8) {
            // The engine's own offline check of the crashed state: it may note a torn tail
            // or stale files, never a problem.
            let report =
                Db::check(DB, &options(&self.disk)).await.map_err(|e| self.fail(format!("check: {e}")))?;
            if !report.is_ok() {
                return Err(
                    self.fail(format!("the offline check of a crashed state found problems:\n{report}"))
                );
            }
            self.totals.checks += 1;
        }
        let db = Db::open(DB, options(&self.disk)).await.map_err(|e| self.fail(format!("recovery: {e}")))?;
        self.totals.recoveries += 1;
        self.check_recovered(&db).await?;
        Ok(db)
    }

    async fn check_recovered(&mut self, db: &Db) -> Result<(), String> {
        let bs = buckets(db).await.map_err(|e| self.fail(format!("bucket after recovery: {e}")))?;
        let mut found: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (i, b) in bs.iter().enumerate() {
            let part: Vec<(Vec<u8>, Vec<u8>)> = b
                .iter()
                .await
                .map_err(|e| self.fail(format!("scan: {e}")))?
                .map_ok(|(k, v)| (in_bucket(i, &k), v.to_vec()))
                .try_collect()
                .await
                .map_err(|e| self.fail(format!("scan after recovery: {e}")))?;
            found.extend(part);
        }
        let survived: BTreeSet<u64> = self
            .pending
            .iter()
            .filter(|a| found.contains_key(&in_bucket(0, &marker(a.id))))
            .map(|a| a.id)
            .collect();
        // (a) Everything that must survive did.
        if let Some(a) =
            self.pending.iter().find(|a| self.must_survive.contains(&a.id) && !survived.contains(&a.id))
        {
            return Err(self
                .fail(format!("acknowledged commit {} ({:?}, ts {:?}) lost", a.id, a.durability, a.acked)));
        }
        // (b) The commit order is group by group; inside a group, acknowledged commits by
        // timestamp, with the unknown ones somewhere among them. Survivors must be a prefix.
        if let Some(lost) = self.pending.iter().filter(|a| !survived.contains(&a.id)).map(|a| a.group).min() {
            if let Some(a) = self.pending.iter().find(|a| a.group > lost && survived.contains(&a.id)) {
                return Err(self.fail(format!(
                    "prefix violated: commit {} of group {} survived, a commit of group {lost} did not",
                    a.id, a.group
                )));
            }
            let mut acked: Vec<&Attempt> =
                self.pending.iter().filter(|a| a.group == lost && a.acked.is_some()).collect();
            acked.sort_by_key(|a| a.acked);
            let kept = acked.iter().take_while(|a| survived.contains(&a.id)).count();
            if let Some(a) = acked[kept..].iter().find(|a| survived.contains(&a.id)) {
                return Err(self.fail(format!(
                    "prefix violated: commit {} (ts {:?}) survived after a lost one",
                    a.id, a.acked
                )));
            }
            // A commit of unknown outcome may sit anywhere in its group's order (a Sync
            // commit that saw the group's fsync fail can precede a Buffered one acknowledged
            // by the same write), so any subset of them may survive.
        }
        // (c) The state is the model after exactly the survivors (keys are disjoint inside
        // a group, so the order inside one does not matter).
        let mut expected = self.base.clone();
        for a in self.pending.iter().filter(|a| survived.contains(&a.id)) {
            expected.insert(in_bucket(0, &marker(a.id)), b"1".to_vec());
            for (k, v) in &a.writes {
                match v {
                    Some(v) => expected.insert(k.clone(), v.clone()),
                    None => expected.remove(k),
                };
            }
        }
        if found != expected {
            let missing: Vec<_> = expected.keys().filter(|k| !found.contains_key(*k)).take(5).collect();
            let extra: Vec<_> = found.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
            let differ: Vec<_> = expected
                .iter()
                .filter(|(k, v)| found.get(*k).is_some_and(|f| f != *v))
                .map(|(k, _)| k)
                .take(5)
                .collect();
            let show = |v: &Vec<&Vec<u8>>| {
                v.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>()
            };
            return Err(self.fail(format!(
                "recovered state is not the prefix state: missing {:?} extra {:?} differ {:?}",
                show(&missing),
                show(&extra),
                show(&differ)
            )));
        }
        // Point reads agree with the scan.
        for _ in 0..8 {
            let k = self.model_key();
            let (i, raw) = split_model_key(&k);
            let got = bs[i].get(raw).await.map_err(|e| self.fail(format!("get after recovery: {e}")))?;
            if got.as_deref() != expected.get(&k).map(std::vec::Vec::as_slice) {
                return Err(self.fail(format!("get {} disagrees with the scan", String::from_utf8_lossy(&k))));
            }
        }
        self.totals.survived += survived.len() as u64;
        self.totals.unacked_lost += (self.pending.len() - survived.len()) as u64;
        self.base = expected;
        self.pending.clear();
        self.must_survive.clear();
        Ok(())
    }

    /// The workload of one cycle, with a halt armed at a random operation. Stops at the
    /// first error (every error must come at or after the halt).
    async fn work(&mut self, db: Db) -> Result<(), String> {
        let halt_at = self.disk.ops() + 1 + self.rng.below(160);
        self.disk.halt_after(halt_at - self.disk.ops());
        let check = |r: &ringkv::Result<()>, disk: &SimDisk, seed: u64, what: &str| -> Result<bool, String> {
            match r {
                Ok(()) => Ok(true),
                Err(_) if disk.ops() >= halt_at => Ok(false),
                Err(e) => Err(format!("seed {seed}: {what} failed before the halt: {e}")),
            }
        };
        let b = match buckets(&db).await {
            Ok(b) => b,
            Err(e) if self.disk.ops() >= halt_at => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(self.fail(format!("bucket: {e}"))),
        };
        let steps = 1 + self.rng.below(12);
        for _ in 0..steps {
            let r = match self.rng.below(10) {
                0 => {
                    self.totals.checkpoints += 1;
                    let r = db.checkpoint().await.map(|_| ());
                    if r.is_ok() {
                        self.everything_acked_must_survive();
                    }
                    r
                }
                1 => {
                    let r = self.read_check(&b).await?;
                    r
                }
                2 if self.rng.chance(30) => {
                    self.totals.closes += 1;
                    let r = db.close().await;
                    if r.is_ok() {
                        self.everything_acked_must_survive();
                    }
                    let _ = check(&r, &self.disk, self.seed, "close")?;
                    return Ok(());
                }
                _ => self.group(&db, &b).await,
            };
            if !check(&r, &self.disk, self.seed, "workload step")? {
                return Ok(());
            }
        }
        Ok(())
    }

    fn everything_acked_must_survive(&mut self) {
        for a in &self.pending {
            if a.acked.is_some() {
                self.must_survive.insert(a.id);
            }
        }
    }

    /// Point reads of random keys against the model of everything committed so far.
    /// A random key of a random bucket, as the model names it.
    fn model_key(&mut self) -> Vec<u8> {
        let b = usize::from(self.rng.chance(50));
        in_bucket(b, &key(self.rng.below(KEYS)))
    }

    async fn read_check(&mut self, bs: &[Bucket; 2]) -> Result<ringkv::Result<()>, String> {
        let mut model = self.base.clone();
        for a in &self.pending {
            for (k, v) in &a.writes {
                match v {
                    Some(v) => model.insert(k.clone(), v.clone()),
                    None => model.remove(k),
                };
            }
        }
        for _ in 0..4 {
            let k = self.model_key();
            let (i, raw) = split_model_key(&k);
            match bs[i].get(raw).await {
                Ok(got) => {
                    if got.as_deref() != model.get(&k).map(std::vec::Vec::as_slice) {
                        return Err(
                            self.fail(format!("live read of {} is wrong", String::from_utf8_lossy(&k)))
                        );
                    }
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(()))
    }

    /// 1-4 concurrent transactions on disjoint keys, one durability; about half of them
    /// write to both buckets.
    async fn group(&mut self, db: &Db, bs: &[Bucket; 2]) -> ringkv::Result<()> {
        let durability = if self.rng.chance(70) { Durability::Sync } else { Durability::Buffered };
        let group = self.next_group;
        self.next_group += 1;
        let n = 1 + self.rng.below(4);
        let mut used = BTreeSet::new();
        let mut attempts = Vec::new();
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            let mut writes = Vec::new();
            let cross = self.rng.chance(50);
            for _ in 0..=self.rng.below(4) {
                let k = self.rng.below(KEYS);
                let bucket = usize::from(cross && self.rng.chance(50));
                if !used.insert((bucket, k)) {
                    continue;
                }
                let v = if self.rng.chance(15) { None } else { Some(value(id, k, &mut self.rng)) };
                writes.push((in_bucket(bucket, &key(k)), v));
            }
            attempts.push(Attempt { id, group, writes, durability, acked: None });
        }
        let mut txns = Vec::new();
        for a in &attempts {
            let mut tx = db.begin()?;
            tx.put(&bs[0], marker(a.id), b"1")?;
            for (k, v) in &a.writes {
                let (i, raw) = split_model_key(k);
                match v {
                    Some(v) => tx.put(&bs[i], raw, v)?,
                    None => tx.delete(&bs[i], raw)?,
                }
            }
            txns.push(tx.commit_with(durability));
        }
        let results = futures::future::join_all(txns).await;
        self.totals.attempted += attempts.len() as u64;
        let mut first_err = None;
        for (mut a, r) in attempts.into_iter().zip(results) {
            match r {
                Ok(ts) => {
                    a.acked = Some(ts);
                    if durability == Durability::Sync {
                        self.must_survive.insert(a.id);
                        self.totals.acked_sync += 1;
                    } else {
                        self.totals.acked_buffered += 1;
                    }
                }
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
            self.pending.push(a);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The database directory on the simulated disk.
pub fn db_path() -> &'static Path {
    Path::new(DB)
}
