//! Crash recovery under SIGKILL, with a real child process.
//!
//! The parent test ([`sigkill_during_sync_commits_and_checkpoints`]) re-executes this test
//! binary as a child that runs only [`crash_child`] (selected by `--exact` and enabled by the
//! environment variable `RINGKV_CRASH_CHILD=<dir>`; without it `crash_child` returns at once).
//! The child opens the database with small checkpoint, WAL-segment, cache and inline limits,
//! and runs [`WRITERS`] writer tasks on a multi-thread tokio runtime, over [`BUCKETS`]
//! buckets. Writer `w` commits its transactions `seq = 0, 1, 2, ...` one after the other,
//! mostly with `Durability::Sync`, some `Buffered` (which must survive a killed process too)
//! and some `None` (never acknowledged); each writes:
//!
//! - `w{w}/seq/{seq}`: a value derived from `(w, seq)` (every 7th one over the inline limit,
//!   so it goes to a blob file, a few larger than a WAL segment) that also carries `obs`, the
//!   `last` seq of every writer as this transaction saw them;
//! - `w{w}/last`: the same `obs` (overwritten by every commit);
//! - `w{w}/tmp/{seq}`, deleting `w{w}/tmp/{seq-1}` (so exactly one tmp key survives);
//! - `w{w}/slot/{seq % SLOTS}`: a value whose size straddles the inline limit.
//!
//! Every value ends in an FNV-1a checksum over its bytes, and its payload is a pattern of
//! `(w, seq, kind)`, so a torn or foreign value is detected. Only after `commit` returned Ok
//! does the child write `RKV ack <w> <seq> <obs> <durability>` to its stdout pipe (one write
//! and a flush); writer 0 also calls `db.checkpoint()` every [`CKPT_EVERY`] commits,
//! announcing it with `RKV ckpt-start` (background checkpoints run too).
//!
//! The child dies of SIGKILL according to a seeded [`Plan`]: the parent sends it
//! (`Child::kill`) after a random delay, after a number of acks, right after the child
//! announced `open-start` (so recovery itself is killed) or the n-th `ckpt-start`; or the
//! child sends it to itself a random few microseconds into `Db::open` or into its n-th
//! explicit checkpoint (immune to the parent's scheduling). The parent then drains the pipe
//! (every ack written before the kill counts), reopens the database in-process and checks:
//!
//! 1. every acknowledged `(w, seq)` is there with its exact value, and so is every commit an
//!    earlier cycle recovered (what recovery showed once must never disappear);
//! 2. per writer the present seqs are exactly `0..=m` (each writer commits sequentially, so
//!    a gap breaks the prefix property), `last`, `tmp` and the slots agree with `m`
//!    (a commit is all or nothing);
//! 3. for every recovered seq, the `obs` it read satisfies `obs[v] <= m_v`: a commit the
//!    transaction saw precedes it in the commit order, so it must be recovered too (the
//!    recovered state is a prefix of the commit order across writers);
//! 4. no key outside what the writers could have written (or in the wrong bucket), and every
//!    value decodes intact; point reads and a reverse scan agree with the forward scan.
//!
//! The next cycle reuses the directory: the child resumes every writer at `m + 1` (checking
//! that it recovers the same `m` the parent saw), so crashes hit a database with history:
//! WAL replay over checkpoints, blob files, deleted WAL segments. The parent alternates
//! between dropping its handle (the next open replays the same WAL again) and closing it
//! (a clean checkpoint). On a failure the database directory is kept and its path printed.
//!
//! Environment: `RINGKV_CRASH_SEED` replays a plan (the seed is printed; timing still
//! varies), `RINGKV_CRASH_CYCLES` sets the number of cycles (default 20). The backend is
//! whatever `RINGKV_IO_BACKEND` selects; the child inherits it.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom
#![allow(clippy::needless_pass_by_value)] // helpers shaped for the call sites
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::{Bucket, Db, Durability, Error, Options};

/// Environment variable naming the child's database directory (its presence makes the child).
const CHILD_ENV: &str = "RINGKV_CRASH_CHILD";
/// Environment variable with the `m` of every writer the parent verified (`-1` = none).
const RESUME_ENV: &str = "RINGKV_CRASH_RESUME";
/// Environment variable telling the child to SIGKILL itself: `open:<us>` (that long after
/// `Db::open` started) or `ckpt:<n>:<us>` (that long after its n-th explicit checkpoint
/// started).
const SELF_KILL_ENV: &str = "RINGKV_CRASH_SELF_KILL";
const SEED_ENV: &str = "RINGKV_CRASH_SEED";
const CYCLES_ENV: &str = "RINGKV_CRASH_CYCLES";
const CHILD_TEST: &str = "crash_child";

const WRITERS: usize = 4;
/// Writer `w` writes to bucket `crash{w % BUCKETS}`.
const BUCKETS: usize = 2;
const SLOTS: u64 = 4;
/// Writer 0 checkpoints explicitly after every this many of its commits.
const CKPT_EVERY: u64 = 25;
const INLINE_LIMIT: usize = 256;
/// The child stops on its own after this long (it is always killed well before).
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// The parent gives up waiting for a kill trigger after this long.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(10);

const MAGIC: &[u8; 4] = b"RKC1";
const KIND_SEQ: u8 = 1;
const KIND_LAST: u8 = 2;
const KIND_TMP: u8 = 3;
const KIND_SLOT: u8 = 4;

// ---------------------------------------------------------------------------------------
// Keys and values.

fn bucket_name(b: usize) -> String {
    format!("crash{b}")
}

fn bucket_of(w: usize) -> usize {
    w % BUCKETS
}

fn seq_key(w: usize, s: u64) -> String {
    format!("w{w}/seq/{s:010}")
}

fn last_key(w: usize) -> String {
    format!("w{w}/last")
}

fn tmp_key(w: usize, s: u64) -> String {
    format!("w{w}/tmp/{s:010}")
}

fn slot_key(w: usize, k: u64) -> String {
    format!("w{w}/slot/{k}")
}

fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn mix(w: usize, s: u64, kind: u8) -> u64 {
    let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ s.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ u64::from(kind).wrapping_mul(0x1656_67B1_9E37_79F9);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// Payload length of a value: SEQ values are mostly inline, every 7th a blob, and a few are
/// larger than a WAL segment; SLOT values straddle the inline limit so one key moves between
/// inline and blob storage.
fn payload_len(w: usize, s: u64, kind: u8) -> usize {
    let m = mix(w, s, kind);
    match kind {
        KIND_SEQ if s % 211 == 100 => 70_000 + (m % 60_000) as usize,
        KIND_SEQ if s % 7 == 3 => 300 + (m % 3000) as usize,
        KIND_SEQ => 8 + (m % 120) as usize,
        KIND_SLOT => 100 + (m % 500) as usize,
        _ => (m % 16) as usize,
    }
}

fn payload(w: usize, s: u64, kind: u8) -> Vec<u8> {
    let mut x = mix(w, s, kind) | 1;
    (0..payload_len(w, s, kind))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `MAGIC | kind u8 | w u32 | seq u64 | n u8 | obs i64 * n | len u32 | payload | fnv64`.
fn encode(w: usize, s: u64, kind: u8, obs: &[i64]) -> Vec<u8> {
    let p = payload(w, s, kind);
    let mut v = Vec::with_capacity(4 + 1 + 4 + 8 + 1 + 8 * obs.len() + 4 + p.len() + 8);
    v.extend_from_slice(MAGIC);
    v.push(kind);
    v.extend_from_slice(&(w as u32).to_le_bytes());
    v.extend_from_slice(&s.to_le_bytes());
    v.push(obs.len() as u8);
    for o in obs {
        v.extend_from_slice(&o.to_le_bytes());
    }
    v.extend_from_slice(&(p.len() as u32).to_le_bytes());
    v.extend_from_slice(&p);
    let h = fnv64(&v);
    v.extend_from_slice(&h.to_le_bytes());
    v
}

#[derive(Debug, PartialEq)]
struct Decoded {
    kind: u8,
    writer: usize,
    seq: u64,
    obs: Vec<i64>,
}

/// Decodes a value and checks every byte of it (checksum, lengths, payload pattern).
fn decode(v: &[u8]) -> Result<Decoded, String> {
    let short = || format!("value of {} bytes is truncated", v.len());
    if v.len() < 8 + 4 {
        return Err(short());
    }
    let (body, sum) = v.split_at(v.len() - 8);
    let want = u64::from_le_bytes(sum.try_into().unwrap());
    if fnv64(body) != want {
        return Err(format!("checksum mismatch over {} bytes", v.len()));
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = body.get(at..at + n).ok_or_else(short)?;
        at += n;
        Ok(s)
    };
    if take(4)? != MAGIC {
        return Err("bad magic".into());
    }
    let kind = take(1)?[0];
    let writer = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    let seq = u64::from_le_bytes(take(8)?.try_into().unwrap());
    let n = take(1)?[0] as usize;
    let mut obs = Vec::with_capacity(n);
    for _ in 0..n {
        obs.push(i64::from_le_bytes(take(8)?.try_into().unwrap()));
    }
    let len = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    let p = take(len)?;
    if at != body.len() {
        return Err(format!("{} trailing bytes", body.len() - at));
    }
    if writer >= WRITERS || p != payload(writer, seq, kind).as_slice() {
        return Err(format!("payload of (w{writer}, seq {seq}, kind {kind}) does not match its pattern"));
    }
    Ok(Decoded { kind, writer, seq, obs })
}

/// The seq a `last` value names, checked to be a `last` value of writer `w`.
fn last_seq_of(w: usize, v: Option<&[u8]>) -> Result<i64, String> {
    let Some(v) = v else { return Ok(-1) };
    let d = decode(v).map_err(|e| format!("{}: {e}", last_key(w)))?;
    if d.kind != KIND_LAST || d.writer != w {
        return Err(format!("{} holds {d:?}", last_key(w)));
    }
    Ok(d.seq as i64)
}

/// The durability writer `w` commits seq `s` with: mostly `Sync`; `Buffered` commits must
/// survive a killed process as well; `None` commits are never acknowledged, but a later
/// acknowledged commit of the same writer makes them required (the WAL is a prefix).
fn durability_of(w: usize, s: u64) -> Durability {
    match mix(w, s, 0) % 8 {
        0 => Durability::None,
        1 | 2 => Durability::Buffered,
        _ => Durability::Sync,
    }
}

fn obs_to_string(obs: &[i64]) -> String {
    obs.iter().map(std::string::ToString::to_string).collect::<Vec<_>>().join(",")
}

fn parse_obs(s: &str) -> Option<Vec<i64>> {
    let v: Vec<i64> = s.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    (v.len() == WRITERS).then_some(v)
}

fn options(child: bool) -> Options {
    Options::default()
        .durability(Durability::Sync)
        .cache_capacity(1 << 20)
        .inline_limit(INLINE_LIMIT)
        .checkpoint_bytes(64 * 1024)
        // The parent must never write on its own: its handle may be dropped while the next
        // child opens the directory.
        .checkpoint_interval(child.then_some(Duration::from_millis(150)))
        .wal_segment_bytes(64 * 1024)
        .background_checkpoints(child)
}

// ---------------------------------------------------------------------------------------
// The child.

/// Writes one line to stdout (bypassing the test harness's capture) and flushes it. The
/// parent closing the pipe ends the child.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(format!("RKV {line}\n").as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(4);
    }
}

fn child_fail(msg: String) -> ! {
    emit(&format!("error {}", msg.replace('\n', " | ")));
    std::process::exit(3);
}

/// Sends SIGKILL to this process `delay` from now, from a thread of its own, so the kill
/// lands inside whatever the process started meanwhile whatever the parent's scheduling.
/// (The delay is the chosen moment of the crash, not a synchronisation.)
fn self_kill_after(delay: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    });
}

/// Where the child kills itself.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SelfKill {
    Open(Duration),
    Checkpoint(u64, Duration),
}

impl SelfKill {
    fn to_env(self) -> String {
        match self {
            SelfKill::Open(d) => format!("open:{}", d.as_micros()),
            SelfKill::Checkpoint(n, d) => format!("ckpt:{n}:{}", d.as_micros()),
        }
    }

    fn from_env(s: &str) -> Option<SelfKill> {
        let us = |x: &str| x.parse().ok().map(Duration::from_micros);
        match s.split(':').collect::<Vec<_>>().as_slice() {
            ["open", d] => Some(SelfKill::Open(us(d)?)),
            ["ckpt", n, d] => Some(SelfKill::Checkpoint(n.parse().ok()?, us(d)?)),
            _ => None,
        }
    }
}

/// The child process: does nothing unless `RINGKV_CRASH_CHILD` is set.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let resume: Vec<i64> = std::env::var(RESUME_ENV)
        .ok()
        .and_then(|s| parse_obs(&s))
        .unwrap_or_else(|| child_fail(format!("{RESUME_ENV} missing or malformed")));
    let self_kill = std::env::var(SELF_KILL_ENV).ok().map(|s| {
        SelfKill::from_env(&s).unwrap_or_else(|| child_fail(format!("{SELF_KILL_ENV}={s:?} is malformed")))
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match rt.block_on(child_main(PathBuf::from(dir), resume, self_kill)) {
        Ok(()) => child_fail(format!("ran for {CHILD_LIFETIME:?} without being killed")),
        Err(e) => child_fail(e),
    }
}

async fn child_main(dir: PathBuf, resume: Vec<i64>, self_kill: Option<SelfKill>) -> Result<(), String> {
    let start = Instant::now();
    emit("open-start");
    if let Some(SelfKill::Open(d)) = self_kill {
        self_kill_after(d);
    }
    let db = Db::open(&dir, options(true)).await.map_err(|e| format!("open: {e}"))?;
    emit(&format!("open-done {:?} {}", db.io_backend(), start.elapsed().as_micros()));
    let mut buckets = Vec::new();
    for b in 0..BUCKETS {
        buckets.push(db.bucket(&bucket_name(b)).await.map_err(|e| format!("bucket: {e}"))?);
    }
    for (w, &want) in resume.iter().enumerate() {
        let k = last_key(w);
        let v = buckets[bucket_of(w)].get(&k).await.map_err(|e| format!("get {k}: {e}"))?;
        let got = last_seq_of(w, v.as_deref())?;
        if got != want {
            return Err(format!("recovered w{w} at seq {got}, the parent verified {want} before"));
        }
    }
    emit("ready");
    let mut tasks = Vec::new();
    for (w, &m) in resume.iter().enumerate() {
        let (db, buckets) = (db.clone(), buckets.clone());
        let kill_in_ckpt = match self_kill {
            Some(SelfKill::Checkpoint(n, d)) => Some((n, d)),
            _ => None,
        };
        tasks.push(tokio::spawn(
            async move { writer(db, buckets, w, (m + 1) as u64, start, kill_in_ckpt).await },
        ));
    }
    for t in tasks {
        t.await.map_err(|e| format!("writer task: {e}"))??;
    }
    Ok(())
}

/// Writer `w`: commits `first, first + 1, ...` (module doc). Writer 0 also checkpoints, and
/// kills the process `d` after its n-th checkpoint started when `kill_in_ckpt = (n, d)`.
async fn writer(
    db: Db,
    buckets: Vec<Bucket>,
    w: usize,
    first: u64,
    start: Instant,
    kill_in_ckpt: Option<(u64, Duration)>,
) -> Result<(), String> {
    let err = |what: &str, s: u64, e: Error| format!("w{w} seq {s}: {what}: {e}");
    let mut s = first;
    let mut ckpts = 0u64;
    while start.elapsed() < CHILD_LIFETIME {
        // What the other writers committed so far, read in a snapshot taken before the
        // transaction's: every commit seen precedes this one in the commit order.
        let mut obs = vec![-1i64; WRITERS];
        let snap = db.snapshot().map_err(|e| err("snapshot", s, e))?;
        for (v, o) in obs.iter_mut().enumerate().filter(|&(v, _)| v != w) {
            let got = snap.get(&buckets[bucket_of(v)], last_key(v)).await.map_err(|e| err("get", s, e))?;
            *o = last_seq_of(v, got.as_deref())?;
        }
        drop(snap);
        let mut tx = buckets[bucket_of(w)].begin().map_err(|e| err("begin", s, e))?;
        let own = tx.get(last_key(w)).await.map_err(|e| err("get own last", s, e))?;
        obs[w] = last_seq_of(w, own.as_deref())?;
        if obs[w] != s as i64 - 1 {
            return Err(format!("w{w} seq {s}: its own last key reads {} in the transaction", obs[w]));
        }
        let put = |tx: &mut ringkv::Txn, k: String, v: Vec<u8>| tx.put(k, v).map_err(|e| err("put", s, e));
        put(&mut tx, seq_key(w, s), encode(w, s, KIND_SEQ, &obs))?;
        put(&mut tx, last_key(w), encode(w, s, KIND_LAST, &obs))?;
        put(&mut tx, tmp_key(w, s), encode(w, s, KIND_TMP, &[]))?;
        put(&mut tx, slot_key(w, s % SLOTS), encode(w, s, KIND_SLOT, &[]))?;
        if s > 0 {
            tx.delete(tmp_key(w, s - 1)).map_err(|e| err("delete", s, e))?;
        }
        let durability = durability_of(w, s);
        tx.commit_with(durability).await.map_err(|e| err("commit", s, e))?;
        if durability != Durability::None {
            emit(&format!("ack {w} {s} {} {durability:?}", obs_to_string(&obs)));
        }
        if w == 0 && s % CKPT_EVERY == CKPT_EVERY - 1 {
            emit("ckpt-start");
            ckpts += 1;
            if let Some((_, d)) = kill_in_ckpt.filter(|&(n, _)| n == ckpts) {
                self_kill_after(d);
            }
            let st = db.checkpoint().await.map_err(|e| err("checkpoint", s, e))?;
            emit(&format!(
                "ckpt-done {} {} {} {}",
                st.pages, st.blobs, st.files_removed, st.wal_segments_removed
            ));
        }
        s += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parent.

/// When the parent kills the child.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// This long after the spawn.
    Delay(Duration),
    /// Once this many acks arrived.
    Acks(usize),
    /// This long after the child announced `open-start` (inside open / recovery).
    DuringOpen(Duration),
    /// This long after the n-th `ckpt-start` (1-based).
    InCheckpoint(usize, Duration),
    /// The child kills itself.
    Own(SelfKill),
}

impl Plan {
    fn pick(cycle: usize, rng: &mut StdRng) -> Plan {
        let us = |rng: &mut StdRng, max: u64| Duration::from_micros(rng.gen_range(0..max));
        match cycle {
            // Every kind early on, the two kills that must land inside open and inside a
            // checkpoint without delay.
            0 => return Plan::Delay(Duration::from_millis(rng.gen_range(50..=700))),
            1 => return Plan::Own(SelfKill::Open(Duration::ZERO)),
            2 => return Plan::Own(SelfKill::Checkpoint(1, Duration::ZERO)),
            3 => return Plan::DuringOpen(Duration::ZERO),
            4 => return Plan::InCheckpoint(1, Duration::ZERO),
            _ => {}
        }
        match rng.gen_range(0..12) {
            0 => Plan::DuringOpen(us(rng, 4000)),
            1 => Plan::Own(SelfKill::Open(us(rng, 8000))),
            2 | 3 => Plan::InCheckpoint(rng.gen_range(1..=3), us(rng, 3000)),
            4 | 5 => Plan::Own(SelfKill::Checkpoint(rng.gen_range(1..=3), us(rng, 3000))),
            6..=8 => Plan::Delay(Duration::from_millis(rng.gen_range(50..=700))),
            _ => Plan::Acks(rng.gen_range(1..=400)),
        }
    }
}

/// Kills the child if the parent panics while it runs.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one child run produced.
struct Run {
    /// Every complete `RKV` line, in order, including those drained after the kill.
    lines: Vec<String>,
    /// Lines seen when the kill was sent.
    lines_at_kill: usize,
    /// Since the spawn: when `open-start` arrived, when the kill was sent, when the child
    /// was reaped.
    open_start_seen: Option<Duration>,
    kill_sent: Duration,
    elapsed: Duration,
}

/// Runs one child until it is killed; `Err` describes a child that failed or misbehaved.
fn run_child(dir: &Path, resume: &[i64], plan: Plan) -> Result<Run, String> {
    let start = Instant::now();
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, OsString::from(dir))
        .env(RESUME_ENV, obs_to_string(resume))
        .env_remove(SELF_KILL_ENV);
    if let Plan::Own(k) = plan {
        cmd.env(SELF_KILL_ENV, k.to_env());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let mut guard = KillOnDrop(Some(child));
    let stdout = guard.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            // A line cut by the kill has no newline: it was never fully written.
            if buf.last() != Some(&b'\n') {
                return;
            }
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
            // The harness may print `test crash_child ... ` before the first line.
            if let Some(at) = line.find("RKV ") {
                if tx.send(line[at + 4..].to_string()).is_err() {
                    return;
                }
            }
        }
    });

    let mut lines = Vec::new();
    let mut kill_at = match plan {
        Plan::Delay(d) => Some(start + d),
        _ => None,
    };
    let (mut acks, mut ckpts) = (0usize, 0usize);
    let mut open_start_seen = None;
    let hard = start + TRIGGER_TIMEOUT;
    loop {
        let now = Instant::now();
        if kill_at.is_some_and(|t| now >= t) {
            break;
        }
        if now >= hard {
            return Err(format!(
                "the kill trigger {plan:?} did not come within {TRIGGER_TIMEOUT:?} (acks {acks}, checkpoints \
                 {ckpts}); last lines: {:?}",
                &lines[lines.len().saturating_sub(5)..]
            ));
        }
        match rx.recv_timeout(kill_at.unwrap_or(hard).min(hard) - now) {
            Ok(l) => {
                if l.starts_with("error") {
                    return Err(format!("the child failed: {l}"));
                }
                let now = Instant::now();
                if l.starts_with("ack ") {
                    acks += 1;
                    if matches!(plan, Plan::Acks(n) if acks >= n) {
                        kill_at = Some(now);
                    }
                } else if l == "open-start" {
                    open_start_seen = Some(now - start);
                    if let Plan::DuringOpen(d) = plan {
                        kill_at = Some(now + d);
                    }
                } else if l == "ckpt-start" {
                    ckpts += 1;
                    match plan {
                        Plan::InCheckpoint(n, d) if n == ckpts => kill_at = Some(now + d),
                        _ => {}
                    }
                }
                lines.push(l);
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The pipe closed: the child is dead. Only a child that kills itself may die first.
            Err(RecvTimeoutError::Disconnected) if matches!(plan, Plan::Own(_)) => break,
            Err(RecvTimeoutError::Disconnected) => {
                let status = guard.0.take().unwrap().wait();
                return Err(format!("the child exited before the kill ({status:?}); last lines: {lines:?}"));
            }
        }
    }
    let lines_at_kill = lines.len();
    let kill_sent = start.elapsed();
    let mut child = guard.0.take().unwrap();
    if !matches!(plan, Plan::Own(_)) {
        child.kill().expect("SIGKILL the child");
    }
    let status = child.wait().expect("wait for the child");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    if let Some(l) = lines.iter().find(|l| l.starts_with("error")) {
        return Err(format!("the child failed: {l}"));
    }
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("the child did not die of SIGKILL: {status:?}"));
    }
    Ok(Run { lines, lines_at_kill, open_start_seen, kill_sent, elapsed: start.elapsed() })
}

/// What the parent knows must be in the database.
struct Model {
    /// `known[w][s]`: the `obs` of writer `w`'s commit `s`, for every seq acknowledged or
    /// recovered so far (always `0..len`).
    known: Vec<Vec<Vec<i64>>>,
}

impl Model {
    fn resume(&self) -> Vec<i64> {
        self.known.iter().map(|k| k.len() as i64 - 1).collect()
    }
}

/// Per-cycle counts.
#[derive(Default)]
struct Verified {
    acks: usize,
    /// Of which `Durability::Buffered`.
    acks_buffered: usize,
    /// Commits recovered although their ack never reached the parent.
    unacked_recovered: usize,
    values_checked: usize,
    m: Vec<i64>,
}

/// Merges the run's acks into the model (checking them against what is known), reopens the
/// database and checks it. Returns a description of the first violation.
async fn verify(dir: &Path, model: &mut Model, run: &Run, rng: &mut StdRng) -> Result<Verified, String> {
    let floor = model.resume();
    let mut acked: Vec<BTreeMap<u64, Vec<i64>>> = vec![BTreeMap::new(); WRITERS];
    let mut out = Verified::default();
    for l in &run.lines {
        let Some(rest) = l.strip_prefix("ack ") else { continue };
        let parts: Vec<&str> = rest.split(' ').collect();
        let (w, s, obs, d) = match parts.as_slice() {
            [w, s, o, d] => (w.parse::<usize>(), s.parse::<u64>(), parse_obs(o), *d),
            _ => return Err(format!("malformed ack line {l:?}")),
        };
        let (Ok(w), Ok(s), Some(obs)) = (w, s, obs) else { return Err(format!("malformed ack line {l:?}")) };
        if w >= WRITERS || format!("{:?}", durability_of(w, s)) != d {
            return Err(format!("ack {l:?} names no writer or the wrong durability"));
        }
        let prev = acked[w].keys().next_back().map_or(floor[w], |&p| p as i64);
        if s as i64 <= prev {
            return Err(format!("ack {l:?} out of sequence (after seq {prev})"));
        }
        acked[w].insert(s, obs);
        out.acks += 1;
        out.acks_buffered += usize::from(d == "Buffered");
    }

    let db = Db::open(dir, options(false)).await.map_err(|e| format!("reopen after the kill: {e}"))?;
    // Every pair of every bucket (a bucket may be missing if the first child died early).
    let mut buckets = Vec::new();
    let mut items = Vec::new();
    for b in 0..BUCKETS {
        let bucket = match db.existing_bucket(&bucket_name(b)) {
            Ok(x) => x,
            Err(Error::NotFound(_)) => {
                buckets.push(None);
                continue;
            }
            Err(e) => return Err(format!("existing_bucket: {e}")),
        };
        let scan = bucket.iter().await.map_err(|e| format!("iter: {e}"))?.collect_vec().await;
        items.extend(
            scan.map_err(|e| format!("scan after recovery: {e}"))?.into_iter().map(|(k, v)| (b, k, v)),
        );
        buckets.push(Some(bucket));
    }

    // Classify every key.
    let mut seqs: Vec<BTreeMap<u64, Decoded>> = (0..WRITERS).map(|_| BTreeMap::new()).collect();
    let mut lasts: Vec<Option<Decoded>> = (0..WRITERS).map(|_| None).collect();
    let mut tmps: Vec<Vec<u64>> = vec![Vec::new(); WRITERS];
    let mut slots: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); WRITERS];
    for (b, k, v) in &items {
        let key = std::str::from_utf8(k).map_err(|_| format!("unexpected key {k:?} in bucket {b}"))?;
        let parts: Vec<&str> = key.split('/').collect();
        let w = parts
            .first()
            .and_then(|p| p.strip_prefix('w'))
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|&w| w < WRITERS && bucket_of(w) == *b && key.starts_with(&format!("w{w}/")))
            .ok_or_else(|| format!("unexpected key {key:?} in bucket {b}"))?;
        let d = decode(v).map_err(|e| format!("key {key:?}: {e}"))?;
        out.values_checked += 1;
        let (kind, s) = match parts[1..] {
            ["seq", s] => (KIND_SEQ, s.parse::<u64>().ok().filter(|&s| seq_key(w, s) == key)),
            ["last"] => (KIND_LAST, Some(d.seq)),
            ["tmp", s] => (KIND_TMP, s.parse::<u64>().ok().filter(|&s| tmp_key(w, s) == key)),
            ["slot", k] => (KIND_SLOT, k.parse::<u64>().ok().filter(|&k| k < SLOTS && slot_key(w, k) == key)),
            _ => (0, None),
        };
        let Some(s) = s else { return Err(format!("unexpected key {key:?} in bucket {b}")) };
        let ok = d.kind == kind
            && d.writer == w
            && match kind {
                KIND_SEQ | KIND_TMP => d.seq == s,
                KIND_SLOT => d.seq % SLOTS == s,
                _ => true,
            };
        if !ok {
            return Err(format!("key {key:?} holds a value written for another key: {d:?}"));
        }
        match kind {
            KIND_SEQ => {
                seqs[w].insert(s, d);
            }
            KIND_LAST => lasts[w] = Some(d),
            KIND_TMP => tmps[w].push(s),
            _ => {
                slots[w].insert(s, d.seq);
            }
        }
    }

    // Per writer: a contiguous prefix covering everything acknowledged or seen before.
    let m: Vec<i64> = seqs.iter().map(|s| s.keys().next_back().map_or(-1, |&x| x as i64)).collect();
    for w in 0..WRITERS {
        let n = seqs[w].len() as i64;
        if n != m[w] + 1 {
            let missing: Vec<u64> =
                (0..=m[w].max(0) as u64).filter(|s| !seqs[w].contains_key(s)).take(10).collect();
            return Err(format!(
                "w{w}: seqs present are not a prefix: max {} but {n} present, missing {missing:?}",
                m[w]
            ));
        }
        let last_acked = acked[w].keys().next_back().map_or(-1, |&s| s as i64);
        if m[w] < floor[w] || m[w] < last_acked {
            return Err(format!(
                "w{w}: lost commits: recovered up to seq {}, but seq {} was acknowledged this cycle and \
                 {} was recovered by an earlier cycle",
                m[w], last_acked, floor[w]
            ));
        }
        for (&s, d) in &seqs[w] {
            let want = model.known[w].get(s as usize).or_else(|| acked[w].get(&s));
            match want {
                Some(o) if *o != d.obs => {
                    return Err(format!(
                        "w{w} seq {s}: value differs from the committed one: {:?} vs {o:?}",
                        d.obs
                    ))
                }
                Some(_) => {}
                None => out.unacked_recovered += 1,
            }
            if d.obs.len() != WRITERS || d.obs[w] != s as i64 - 1 {
                return Err(format!("w{w} seq {s}: bad obs {:?}", d.obs));
            }
            for (v, &o) in d.obs.iter().enumerate() {
                if o > m[v] {
                    return Err(format!(
                        "w{w} seq {s} was recovered, but it read w{v} seq {o}, which was not (w{v} recovered \
                         up to {}): the recovered state is not a prefix of the commit order",
                        m[v]
                    ));
                }
            }
        }
        // The other keys the commits wrote agree with m (commits are atomic).
        match (&lasts[w], m[w]) {
            (None, -1) => {}
            (Some(d), m) if d.seq as i64 == m && seqs[w].get(&d.seq).is_some_and(|x| x.obs == d.obs) => {}
            (l, m) => return Err(format!("w{w}: last key holds {l:?} but seqs end at {m}")),
        }
        let want_tmp: Vec<u64> = if m[w] >= 0 { vec![m[w] as u64] } else { vec![] };
        if tmps[w] != want_tmp {
            return Err(format!(
                "w{w}: tmp keys {:?}, expected {want_tmp:?} (deletes lost or resurrected)",
                tmps[w]
            ));
        }
        for k in 0..SLOTS {
            let want = (m[w] >= k as i64).then(|| {
                let m = m[w] as u64;
                m - (m + SLOTS - k) % SLOTS
            });
            if slots[w].get(&k).copied() != want {
                return Err(format!("w{w} slot {k}: holds seq {:?}, expected {want:?}", slots[w].get(&k)));
            }
        }
    }

    // Point reads and a reverse scan agree with the forward scan.
    let w = rng.gen_range(0..WRITERS);
    if let Some(b) = &buckets[bucket_of(w)] {
        let get = |k: String| async move { b.get(&k).await.map_err(|e| format!("get {k}: {e}")) };
        let from_scan = |k: &str| {
            items
                .iter()
                .find(|(b, x, _)| *b == bucket_of(w) && x.as_ref() == k.as_bytes())
                .map(|(_, _, v)| v.clone())
        };
        let m_w = m[w].max(0) as u64;
        for k in
            [last_key(w), seq_key(w, m_w), seq_key(w, m_w + 1), tmp_key(w, m_w), slot_key(w, m_w % SLOTS)]
        {
            if get(k.clone()).await? != from_scan(&k) {
                return Err(format!("get({k}) disagrees with the scan"));
            }
        }
        let lo = format!("w{w}/seq/");
        let hi = format!("w{w}/seq0");
        let rev = b
            .range_rev(lo.as_bytes().to_vec()..hi.as_bytes().to_vec())
            .await
            .map_err(|e| format!("range_rev: {e}"))?
            .collect_vec()
            .await
            .map_err(|e| format!("range_rev: {e}"))?;
        let got: Vec<u64> = rev.iter().map(|(k, _)| decode_seq_key(k)).collect();
        let want: Vec<u64> = seqs[w].keys().rev().copied().collect();
        if got != want {
            return Err(format!(
                "w{w}: range_rev over seqs returned {} keys, the scan {}",
                got.len(),
                want.len()
            ));
        }
    }

    // Everything recovered now must stay forever.
    for w in 0..WRITERS {
        for s in model.known[w].len() as i64..=m[w] {
            model.known[w].push(seqs[w][&(s as u64)].obs.clone());
        }
    }
    out.m = m;
    if rng.gen_bool(0.3) {
        db.close().await.map_err(|e| format!("close after verification: {e}"))?;
    } else {
        drop(db);
    }
    Ok(out)
}

fn decode_seq_key(k: &[u8]) -> u64 {
    std::str::from_utf8(k)
        .ok()
        .and_then(|k| k.rsplit('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn sigkill_during_sync_commits_and_checkpoints() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed: u64 = match std::env::var(SEED_ENV) {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a u64")),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        }
    };
    let cycles: usize = std::env::var(CYCLES_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let backend = std::env::var("RINGKV_IO_BACKEND").unwrap_or_else(|_| "auto".into());
    println!(
        "crash_kill: seed {seed} ({SEED_ENV}={seed} replays the plan), {cycles} cycles, backend {backend}"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::Builder::new().prefix("ringkv-crash-").tempdir().unwrap();
    let dir = tmp.path().join("db");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut model = Model { known: vec![Vec::new(); WRITERS] };
    let started = Instant::now();
    let (mut total_acks, mut total_buffered, mut in_open, mut in_ckpt) = (0usize, 0usize, 0usize, 0usize);
    // Explicit checkpoints completed, and their pages, blobs, files and WAL segments removed.
    let mut ckpt_totals = [0u64; 5];
    for cycle in 0..cycles {
        let plan = Plan::pick(cycle, &mut rng);
        let resume = model.resume();
        let outcome = run_child(&dir, &resume, plan).and_then(|run| {
            let t = Instant::now();
            let v = rt.block_on(verify(&dir, &mut model, &run, &mut rng))?;
            Ok((run, v, t.elapsed()))
        });
        let (run, v, verify_time) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let kept = tmp.keep();
                panic!(
                    "cycle {cycle} ({plan:?}): {e}\nseed {seed} ({SEED_ENV}={seed}); database kept in {}; \
                     resume was {resume:?}",
                    kept.display()
                );
            }
        };
        // From everything the child wrote before it died (the parent's reading may lag).
        let open_us = run.lines.iter().find_map(|l| l.strip_prefix("open-done ")?.split(' ').nth(1));
        let killed_in_open = open_us.is_none();
        let killed_in_ckpt = run.lines.iter().rposition(|l| l == "ckpt-start")
            > run.lines.iter().rposition(|l| l.starts_with("ckpt-done"));
        for l in &run.lines {
            let Some(rest) = l.strip_prefix("ckpt-done ") else { continue };
            ckpt_totals[0] += 1;
            for (t, x) in ckpt_totals[1..].iter_mut().zip(rest.split(' ')) {
                *t += x.parse::<u64>().unwrap_or(0);
            }
        }
        in_open += usize::from(killed_in_open);
        in_ckpt += usize::from(killed_in_ckpt);
        total_acks += v.acks;
        total_buffered += v.acks_buffered;
        println!(
            "cycle {cycle}: {plan:?}: open-start seen at {:?}, child open took {}us, kill at {:?} ({} lines \
             read), reaped at {:?}{}{}: {} acks, {} recovered without an ack (Durability::None, or the ack \
             was not written yet), {} values checked, m {:?}, verify {:?}",
            run.open_start_seen,
            open_us.unwrap_or("-"),
            run.kill_sent,
            run.lines_at_kill,
            run.elapsed,
            if killed_in_open { ", killed in open" } else { "" },
            if killed_in_ckpt { ", killed in a checkpoint" } else { "" },
            v.acks,
            v.unacked_recovered,
            v.values_checked,
            v.m,
            verify_time
        );
    }
    let commits: usize = model.known.iter().map(std::vec::Vec::len).sum();
    println!(
        "crash_kill: {cycles} cycles in {:?}: {total_acks} acknowledged commits verified \
         ({total_buffered} of them Buffered), {commits} commits in the database, {in_open} kills during \
         open, {in_ckpt} kills during an explicit checkpoint; explicit checkpoints completed {}: {} \
         pages, {} blobs written, {} files and {} WAL segments removed (seed {seed})",
        started.elapsed(),
        ckpt_totals[0],
        ckpt_totals[1],
        ckpt_totals[2],
        ckpt_totals[3],
        ckpt_totals[4]
    );
    assert!(total_acks > 0 || cycles < 3, "no commit was ever acknowledged");
    // Cycles 1 to 4 aim at these two moments without delay (`Plan::pick`).
    assert!(in_open > 0 || cycles < 2, "no kill landed inside open");
    assert!(in_ckpt > 0 || cycles < 3, "no kill landed inside an explicit checkpoint");
}
