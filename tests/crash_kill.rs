//! Crash recovery under SIGKILL, with a real child process.
//!
//! The parent test ([`sigkill_during_sync_commits_and_checkpoints`]) re-executes this test
//! binary as a child that runs only [`crash_child`] (selected by `--exact` and enabled by the
//! environment variable `RINGKV_CRASH_CHILD=<dir>`; without it `crash_child` returns at once).
//! The child opens the database with small checkpoint, WAL-segment, cache and inline limits,
//! and runs [`WRITERS`] writer tasks on a multi-thread tokio runtime. Writer `w` commits its
//! transactions `seq = 0, 1, 2, ...` one after the other with `Durability::Sync`; each writes:
//!
//! - `w{w}/seq/{seq}`: a value derived from `(w, seq)` (every 7th one over the inline limit,
//!   so it goes to a blob file) that also carries `obs`, the `last` seq of every writer this
//!   transaction read in its snapshot;
//! - `w{w}/last`: the same `obs` (overwritten by every commit);
//! - `w{w}/tmp/{seq}`, deleting `w{w}/tmp/{seq-1}` (so exactly one tmp key survives);
//! - `w{w}/slot/{seq % SLOTS}`: a value whose size straddles the inline limit.
//!
//! Every value ends in an FNV-1a checksum over its bytes, and its payload is a pattern of
//! `(w, seq, kind)`, so a torn or foreign value is detected. Only after `commit` returned Ok
//! does the child write `RKV ack <w> <seq> <obs>` to its stdout pipe (one `write` + flush);
//! writer 0 also calls `db.checkpoint()` every [`CKPT_EVERY`] commits, announcing it with
//! `RKV ckpt-start` (background checkpoints run too).
//!
//! The parent reads the pipe and sends SIGKILL (`Child::kill`) according to a seeded plan:
//! after a random delay, after a number of acks, a few milliseconds after the child announced
//! `open-start` (so recovery itself is killed), or right after the n-th `ckpt-start`. After
//! the kill it drains the pipe (every ack written before the kill counts) and reopens the
//! database in-process, then checks:
//!
//! 1. every acknowledged `(w, seq)` is there with its exact value, and so is every commit an
//!    earlier cycle recovered (what recovery showed once must never disappear);
//! 2. per writer the present seqs are exactly `0..=m` (each writer commits sequentially, so
//!    a gap breaks the prefix property), `last`, `tmp` and the slots agree with `m`
//!    (a commit is all or nothing);
//! 3. for every recovered seq, the `obs` it read satisfies `obs[v] <= m_v`: a commit the
//!    transaction saw precedes it in the commit order, so it must be recovered too (the
//!    recovered state is a prefix of the commit order across writers);
//! 4. no key outside what the writers could have written, and every value decodes intact.
//!
//! The next cycle reuses the directory: the child resumes every writer at `m + 1` (checking
//! that it recovers the same `m` the parent saw), so crashes hit a database with history:
//! WAL replay over checkpoints, blob files, deleted WAL segments. The parent alternates
//! between dropping its handle (the next open replays the same WAL again) and closing it
//! (a clean checkpoint).
//!
//! Environment: `RINGKV_CRASH_SEED` replays a plan (the seed is printed; timing still
//! varies), `RINGKV_CRASH_CYCLES` sets the number of cycles (default 20). The backend is
//! whatever `RINGKV_IO_BACKEND` selects; the child inherits it.

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
const SEED_ENV: &str = "RINGKV_CRASH_SEED";
const CYCLES_ENV: &str = "RINGKV_CRASH_CYCLES";
const CHILD_TEST: &str = "crash_child";

const BUCKET: &str = "crash";
const WRITERS: usize = 4;
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

/// Payload length of a value: SEQ values are mostly inline, every 7th a blob; SLOT values
/// straddle the inline limit so one key moves between inline and blob storage.
fn payload_len(w: usize, s: u64, kind: u8) -> usize {
    let m = mix(w, s, kind);
    match kind {
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

fn obs_to_string(obs: &[i64]) -> String {
    obs.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(",")
}

fn parse_obs(s: &str) -> Option<Vec<i64>> {
    let v: Vec<i64> = s.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    (v.len() == WRITERS).then_some(v)
}

fn options(child: bool) -> Options {
    Options {
        durability: Durability::Sync,
        cache_capacity: 1 << 20,
        inline_limit: INLINE_LIMIT,
        checkpoint_bytes: 64 * 1024,
        // The parent must never write on its own: its handle may be dropped while the next
        // child opens the directory.
        checkpoint_interval: child.then_some(Duration::from_millis(150)),
        wal_segment_bytes: 64 * 1024,
        background_checkpoints: child,
        ..Options::default()
    }
}

// ---------------------------------------------------------------------------------------
// The child.

/// Writes one line to stdout (bypassing the test harness's capture) and flushes it. The
/// parent closing the pipe ends the child.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(format!("RKV {line}\n").as_bytes()).and_then(|_| out.flush()).is_err() {
        std::process::exit(4);
    }
}

fn child_fail(msg: String) -> ! {
    emit(&format!("error {}", msg.replace('\n', " | ")));
    std::process::exit(3);
}

/// The child process: does nothing unless `RINGKV_CRASH_CHILD` is set.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let resume: Vec<i64> = std::env::var(RESUME_ENV)
        .ok()
        .and_then(|s| parse_obs(&s))
        .unwrap_or_else(|| child_fail(format!("{RESUME_ENV} missing or malformed")));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match rt.block_on(child_main(PathBuf::from(dir), resume)) {
        Ok(()) => child_fail(format!("ran for {CHILD_LIFETIME:?} without being killed")),
        Err(e) => child_fail(e),
    }
}

async fn child_main(dir: PathBuf, resume: Vec<i64>) -> Result<(), String> {
    let start = Instant::now();
    emit("open-start");
    let db = Db::open(&dir, options(true)).await.map_err(|e| format!("open: {e}"))?;
    emit(&format!("open-done {:?} {}", db.io_backend(), start.elapsed().as_micros()));
    let bucket = db.bucket(BUCKET).await.map_err(|e| format!("bucket: {e}"))?;
    for (w, &want) in resume.iter().enumerate() {
        let v = bucket.get(last_key(w)).await.map_err(|e| format!("get {}: {e}", last_key(w)))?;
        let got = last_seq_of(w, v.as_deref())?;
        if got != want {
            return Err(format!("recovered w{w} at seq {got}, the parent verified {want} before"));
        }
    }
    emit("ready");
    let mut tasks = Vec::new();
    for (w, &m) in resume.iter().enumerate() {
        let (db, bucket) = (db.clone(), bucket.clone());
        tasks.push(tokio::spawn(async move { writer(db, bucket, w, (m + 1) as u64, start).await }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("writer task: {e}"))??;
    }
    Ok(())
}

async fn writer(db: Db, bucket: Bucket, w: usize, first: u64, start: Instant) -> Result<(), String> {
    let err = |what: &str, s: u64, e: Error| format!("w{w} seq {s}: {what}: {e}");
    let mut s = first;
    while start.elapsed() < CHILD_LIFETIME {
        let mut tx = bucket.begin().map_err(|e| err("begin", s, e))?;
        let mut obs = vec![-1i64; WRITERS];
        for (v, o) in obs.iter_mut().enumerate() {
            let got = tx.get(last_key(v)).await.map_err(|e| err("get last", s, e))?;
            *o = last_seq_of(v, got.as_deref())?;
        }
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
        tx.commit_with(Durability::Sync).await.map_err(|e| err("commit", s, e))?;
        emit(&format!("ack {w} {s} {}", obs_to_string(&obs)));
        if w == 0 && s % CKPT_EVERY == CKPT_EVERY - 1 {
            emit("ckpt-start");
            let st = db.checkpoint().await.map_err(|e| err("checkpoint", s, e))?;
            emit(&format!("ckpt-done pages={} bytes={} cut={}", st.pages, st.bytes, st.cut_ts));
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
}

impl Plan {
    fn pick(cycle: usize, rng: &mut StdRng) -> Plan {
        let r = match cycle {
            0 => 5,
            1 => 0,
            2 => 2,
            _ => rng.gen_range(0..10),
        };
        match r {
            0 | 1 => Plan::DuringOpen(Duration::from_micros(rng.gen_range(0..4000))),
            2..=4 => Plan::InCheckpoint(rng.gen_range(1..=3), Duration::from_micros(rng.gen_range(0..3000))),
            5..=7 => Plan::Delay(Duration::from_millis(rng.gen_range(50..=700))),
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

fn run_child(dir: &Path, resume: &[i64], plan: Plan) -> Run {
    let start = Instant::now();
    let exe = std::env::current_exe().expect("current_exe");
    let child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, OsString::from(dir))
        .env(RESUME_ENV, obs_to_string(resume))
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
        assert!(
            now < hard,
            "the kill trigger {plan:?} did not come within {TRIGGER_TIMEOUT:?} (acks {acks}, checkpoints \
             {ckpts}); last lines: {:?}",
            &lines[lines.len().saturating_sub(5)..]
        );
        match rx.recv_timeout(kill_at.unwrap_or(hard).min(hard) - now) {
            Ok(l) => {
                assert!(!l.starts_with("error"), "the child failed: {l}");
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
                    if matches!(plan, Plan::InCheckpoint(n, _) if n == ckpts) {
                        let Plan::InCheckpoint(_, d) = plan else { unreachable!() };
                        kill_at = Some(now + d);
                    }
                }
                lines.push(l);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let status = guard.0.take().unwrap().wait();
                panic!("the child exited before the kill ({status:?}); last lines: {:?}", lines);
            }
        }
    }
    let lines_at_kill = lines.len();
    let kill_sent = start.elapsed();
    let mut child = guard.0.take().unwrap();
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the child");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    if let Some(l) = lines.iter().find(|l| l.starts_with("error")) {
        panic!("the child failed: {l}");
    }
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the child did not die of SIGKILL: {status:?}");
    Run { lines, lines_at_kill, open_start_seen, kill_sent, elapsed: start.elapsed() }
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
        let (w, s, obs) = match parts.as_slice() {
            [w, s, o] => (w.parse::<usize>(), s.parse::<u64>(), parse_obs(o)),
            _ => return Err(format!("malformed ack line {l:?}")),
        };
        let (Ok(w), Ok(s), Some(obs)) = (w, s, obs) else { return Err(format!("malformed ack line {l:?}")) };
        if w >= WRITERS {
            return Err(format!("ack {l:?} names no writer"));
        }
        let expect_next = acked[w].keys().next_back().map_or(floor[w] + 1, |&p| p as i64 + 1);
        if s as i64 != expect_next {
            return Err(format!("ack {l:?} out of sequence (expected seq {expect_next})"));
        }
        acked[w].insert(s, obs);
        out.acks += 1;
    }

    let db = Db::open(dir, options(false)).await.map_err(|e| format!("reopen after the kill: {e}"))?;
    let bucket = match db.existing_bucket(BUCKET) {
        Ok(b) => Some(b),
        Err(Error::NotFound(_)) => None,
        Err(e) => return Err(format!("existing_bucket: {e}")),
    };
    let items = match &bucket {
        Some(b) => b
            .iter()
            .await
            .map_err(|e| format!("iter: {e}"))?
            .collect_vec()
            .await
            .map_err(|e| format!("scan after recovery: {e}"))?,
        None => Vec::new(),
    };

    // Classify every key.
    let mut seqs: Vec<BTreeMap<u64, Decoded>> = (0..WRITERS).map(|_| BTreeMap::new()).collect();
    let mut lasts: Vec<Option<Decoded>> = (0..WRITERS).map(|_| None).collect();
    let mut tmps: Vec<Vec<u64>> = vec![Vec::new(); WRITERS];
    let mut slots: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); WRITERS];
    for (k, v) in &items {
        let key = std::str::from_utf8(k).map_err(|_| format!("unexpected key {k:?}"))?;
        let parts: Vec<&str> = key.split('/').collect();
        let w = parts
            .first()
            .and_then(|p| p.strip_prefix('w'))
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|&w| w < WRITERS && key.starts_with(&format!("w{w}/")))
            .ok_or_else(|| format!("unexpected key {key:?}"))?;
        let d = decode(v).map_err(|e| format!("key {key:?}: {e}"))?;
        out.values_checked += 1;
        let (kind, s) = match parts[1..] {
            ["seq", s] => (KIND_SEQ, s.parse::<u64>().ok().filter(|&s| seq_key(w, s) == key)),
            ["last"] => (KIND_LAST, Some(d.seq)),
            ["tmp", s] => (KIND_TMP, s.parse::<u64>().ok().filter(|&s| tmp_key(w, s) == key)),
            ["slot", k] => (KIND_SLOT, k.parse::<u64>().ok().filter(|&k| k < SLOTS && slot_key(w, k) == key)),
            _ => (0, None),
        };
        let Some(s) = s else { return Err(format!("unexpected key {key:?}")) };
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
                        "w{w} seq {s} was recovered, but it read w{v} seq {o}, which was not (w{v} recovered up \
                         to {}): the recovered state is not a prefix of the commit order",
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
    if let Some(b) = &bucket {
        let w = rng.gen_range(0..WRITERS);
        let get = |k: String| async move { b.get(&k).await.map_err(|e| format!("get {k}: {e}")) };
        let from_scan =
            |k: &str| items.iter().find(|(x, _)| x.as_ref() == k.as_bytes()).map(|(_, v)| v.clone());
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
    let (mut total_acks, mut in_open, mut in_ckpt) = (0usize, 0usize, 0usize);
    for cycle in 0..cycles {
        let plan = Plan::pick(cycle, &mut rng);
        let resume = model.resume();
        let run = run_child(&dir, &resume, plan);
        // From everything the child wrote before it died (the parent's reading may lag).
        let open_us = run.lines.iter().find_map(|l| l.strip_prefix("open-done ")?.split(' ').nth(1));
        let killed_in_open = open_us.is_none();
        let killed_in_ckpt = run.lines.iter().rposition(|l| l == "ckpt-start")
            > run.lines.iter().rposition(|l| l.starts_with("ckpt-done"));
        in_open += killed_in_open as usize;
        in_ckpt += killed_in_ckpt as usize;
        let t = Instant::now();
        let verified = rt.block_on(verify(&dir, &mut model, &run, &mut rng));
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                let kept = tmp.keep();
                panic!(
                    "cycle {cycle} ({plan:?}): {e}\nseed {seed} ({SEED_ENV}={seed}); database kept in {}; \
                     resume was {resume:?}",
                    kept.display()
                );
            }
        };
        total_acks += v.acks;
        println!(
            "cycle {cycle:2}: {plan:?}: open-start seen at {:?}, child open took {}us, kill at {:?} ({} lines \
             read), reaped at {:?}{}{}: {} acks, {} recovered without ack, {} values checked, m {:?}, verify \
             {:?}",
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
            t.elapsed()
        );
    }
    let commits: usize = model.known.iter().map(|k| k.len()).sum();
    println!(
        "crash_kill: {cycles} cycles in {:?}: {total_acks} acknowledged commits verified, {commits} commits in \
         the database, {in_open} kills during open, {in_ckpt} kills during an explicit checkpoint (seed {seed})",
        started.elapsed()
    );
    assert!(total_acks > 0 || cycles < 3, "no commit was ever acknowledged");
}
