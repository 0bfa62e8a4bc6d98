//! Three `ringkv-raft-node` processes on loopback (children of this test, so they can be
//! `SIGKILLed`), clients writing unique keys through the leader and recording every
//! acknowledged write, a reader checking that acknowledged writes are visible to
//! linearizable reads, and a killer that SIGKILLs a node — the leader every other round,
//! down 1.2-2 s so that the others elect a new one; another node for 0.2-1 s — every
//! 0.5-1.5 s, and restarts it on the same directory: at least 4 rounds, more while the
//! writing phase lasts.
//!
//! At the end, once every node applied the same log id (polled with a deadline): every
//! acknowledged write is in every node's state machine with its value (lost must be 0), the
//! nodes' state machines are identical, and their logs agree on every index they both hold.
//!
//! Environment: `RINGKV_RAFT_KILL_SECS` (default 20) is the length of the writing phase,
//! `RINGKV_RAFT_SEED` replays a schedule (the seed is printed; timing still varies). The
//! backend is whatever `RINGKV_IO_BACKEND` selects; the nodes inherit it (and `RUST_LOG`,
//! their log level). The nodes' directories and logs (`n<id>.log`) are kept in the printed
//! directory when the test fails, or when `RINGKV_RAFT_KEEP` is set.
#![allow(clippy::unwrap_used)] // tests may unwrap
#![allow(clippy::cast_possible_truncation)] // they test, not store
#![cfg(target_os = "linux")]
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::Cluster;
use ringkv_raft::client::{ClientError, KvClient};
use ringkv_raft::service::DebugState;
use ringkv_raft::Request;

const WRITERS: u64 = 8;

/// xorshift64*: the schedule's randomness, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The leader (id and term) as a running node sees it, if one is seen within 10 s.
async fn leader(client: &KvClient, cluster: &Cluster) -> Option<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for (i, n) in cluster.nodes.iter().enumerate() {
            if !cluster.is_up(i) {
                continue;
            }
            if let Ok(m) = client.metrics(&n.addr).await {
                if let Some(l) = m.current_leader {
                    if cluster.index_of(l).is_some_and(|j| cluster.is_up(j)) {
                        return Some((l, m.current_term));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[test]
fn kill9_nodes_leader_included_while_clients_write() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let secs = env_u64("RINGKV_RAFT_KILL_SECS", 20);
    let seed = env_u64(
        "RINGKV_RAFT_SEED",
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1,
    );
    let mut rng = Rng(seed);
    // Kept when the test fails (the nodes' logs are `n<id>.log` in it); removed at the end.
    let root = tempfile::Builder::new().prefix("ringkv-raft-kill").tempdir().unwrap().keep();
    println!("seed {seed}, {secs} s of writes, nodes in {root:?}");
    let started = Instant::now();
    let mut cluster = Cluster::start(
        env!("CARGO_BIN_EXE_ringkv-raft-node").as_ref(),
        &root,
        3,
        // Small snapshot interval and log tail: restarted nodes catch up by snapshot
        // install too, and the logs are purged during the run.
        &[
            "--snapshot-every",
            "400",
            "--keep-logs",
            "100",
            "--election-min-ms",
            "300",
            "--election-max-ms",
            "600",
        ],
        // openraft's state machine worker logs each snapshot it installs; counted below.
        &[("RUST_LOG", "warn,openraft::core::sm::worker=info")],
    );
    // The I/O backend the nodes run on (they inherit `RINGKV_IO_BACKEND`).
    println!("{}", cluster.nodes[0].banner);
    let client = Arc::new(KvClient::new(cluster.addrs()));
    client.init(&cluster.addrs()[0], &cluster.members()).await.unwrap();
    assert!(leader(&client, &cluster).await.is_some(), "no leader elected");

    // Writers: unique keys, each acknowledged write recorded with its value.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let unacked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, stop, acked, unacked) = (client.clone(), stop.clone(), acked.clone(), unacked.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) =
                    (format!("w{w}-{n:07}"), format!("value of w{w} n{n} {}", "x".repeat((n % 64) as usize)));
                let req = Request::Set { key: key.clone(), value: value.clone() };
                match client.write(&req, Instant::now() + Duration::from_secs(5)).await {
                    Ok(_) => acked.lock().unwrap().push((key, value)),
                    Err(ClientError::Timeout { .. }) => {
                        unacked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("write {key}: {e}"),
                }
                n += 1;
            }
        }));
    }
    // Reader: an acknowledged write must be seen by every later linearizable read.
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (client, stop, acked, reads) = (client.clone(), stop.clone(), acked.clone(), reads.clone());
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let a = acked.lock().unwrap();
                    if a.is_empty() {
                        None
                    } else {
                        Some(a[rng.below(a.len() as u64) as usize].clone())
                    }
                };
                let Some((key, value)) = pick else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                match client.read(&key, Instant::now() + Duration::from_secs(5)).await {
                    Ok(v) => {
                        assert_eq!(
                            v.as_deref(),
                            Some(value.as_str()),
                            "linearizable read of acknowledged {key}"
                        );
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(ClientError::Timeout { .. }) => {}
                    Err(e) => panic!("read {key}: {e}"),
                }
            }
        })
    };

    // Killer: the schedule of faults (these sleeps are the schedule, not synchronisation).
    let (mut kills, mut leader_kills, mut restarts) = (0u64, 0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut round = 0u64;
    let mut terms = Vec::new();
    // At least 4 rounds (2 of them the leader's), more while the time lasts.
    while round < 4 || Instant::now() + Duration::from_millis(1500) < end {
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
        let is_leader = round.is_multiple_of(2);
        let victim = if is_leader {
            let Some((l, term)) = leader(&client, &cluster).await else {
                panic!("no leader before round {round}")
            };
            leader_kills += 1;
            terms.push(term);
            cluster.index_of(l).unwrap()
        } else {
            rng.below(3) as usize
        };
        round += 1;
        let id = cluster.nodes[victim].id;
        tokio::task::block_in_place(|| cluster.kill(victim));
        kills += 1;
        let acked_now = acked.lock().unwrap().len();
        println!(
            "{:6.2}s kill -9 node {id}{} ({acked_now} writes acknowledged so far)",
            started.elapsed().as_secs_f64(),
            if is_leader { format!(" (the leader, term {})", terms.last().unwrap()) } else { String::new() }
        );
        // A leader down longer than the election timeout makes the others elect a new one;
        // one back sooner may resume its term (openraft restores a leader's committed vote).
        let down = if is_leader { 1200 + rng.below(800) } else { 200 + rng.below(800) };
        tokio::time::sleep(Duration::from_millis(down)).await;
        tokio::task::block_in_place(|| cluster.spawn(victim));
        restarts += 1;
        println!("{:6.2}s restarted node {id}", started.elapsed().as_secs_f64());
    }
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    reader.await.unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());

    // Convergence: every node applied the same log id (a deadline, not a guess).
    let deadline = Instant::now() + Duration::from_secs(60);
    let states: Vec<DebugState> = loop {
        let mut states = Vec::new();
        for n in &cluster.nodes {
            if let Ok(s) = client.debug_state(&n.addr).await {
                states.push(s);
            }
        }
        if states.len() == 3 && states.iter().all(|s| s.applied.is_some() && s.applied == states[0].applied) {
            break states;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not converge in 60 s: {:?}",
            states.iter().map(|s| (s.id, s.applied)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Snapshots built (or installed) and log purged on each node, for the record.
    let mut snaps = Vec::new();
    for n in &cluster.nodes {
        let m = client.metrics(&n.addr).await.unwrap();
        snaps.push(format!(
            "node {}: snapshot at {}, purged to {}",
            n.id,
            m.snapshot.map_or("-".into(), |l| l.index.to_string()),
            m.purged.map_or("-".into(), |l| l.index.to_string())
        ));
    }
    let installs: usize = (1..=3)
        .map(|i| {
            let log = std::fs::read_to_string(root.join(format!("n{i}.log"))).unwrap_or_default();
            log.matches("Done install complete snapshot").count()
        })
        .sum();
    println!("{}; snapshots installed by followers during the run: {installs}", snaps.join("; "));

    // Every acknowledged write on every node.
    let mut lost = 0u64;
    for s in &states {
        let kv: BTreeMap<&str, &str> = s.kv.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (k, v) in &acked {
            if kv.get(k.as_str()) != Some(&v.as_str()) {
                if lost < 10 {
                    println!("node {}: acknowledged {k} is {:?}", s.id, kv.get(k.as_str()));
                }
                lost += 1;
            }
        }
    }
    // Identical state machines; logs agree wherever two nodes both hold an index.
    for s in &states[1..] {
        assert!(s.kv == states[0].kv, "state machines of nodes {} and {} differ", states[0].id, s.id);
    }
    let mut compared = 0u64;
    for a in &states {
        for b in &states {
            if a.id >= b.id {
                continue;
            }
            let bm: BTreeMap<u64, _> = b.log.iter().map(|l| (l.index, l)).collect();
            for l in &a.log {
                if let Some(other) = bm.get(&l.index) {
                    assert_eq!(&l, other, "nodes {} and {} disagree at index {}", a.id, b.id, l.index);
                    compared += 1;
                }
            }
        }
    }
    let applied = states[0].applied.unwrap();
    println!(
        "kills {kills} ({leader_kills} of the leader, in terms {terms:?}), restarts {restarts}; final term {}; acknowledged writes checked {} on each of 3 nodes, lost {lost}; \
         {} writes unacknowledged (timed out); {} linearizable reads of acknowledged writes checked; \
         all nodes applied up to {applied}, state machines identical ({} keys), {compared} log entries compared across node pairs; {:.1}s",
        applied.leader_id.term,
        acked.len(),
        unacked.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        states[0].kv.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert!(
        kills >= 4 && leader_kills >= 2 && restarts == kills,
        "too few faults: {kills} kills, {leader_kills} of the leader"
    );
    assert!(acked.len() >= 100, "only {} writes acknowledged", acked.len());
    assert!(compared > 0, "no log index held by two nodes");
    drop(cluster);
    if std::env::var_os("RINGKV_RAFT_KEEP").is_none() {
        std::fs::remove_dir_all(&root).unwrap();
    }
}
