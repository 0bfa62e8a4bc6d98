//! Replicated writes per second through the example service: a cluster of
//! `ringkv-raft-node` processes on loopback (three nodes, and one node as the baseline),
//! 1, 16 and 64 concurrent clients each writing unique keys (100-byte values) through the
//! leader, one request at a time. A write counts once the leader answered it: committed on
//! a majority (each log append fsynced) and applied.
//!
//! ```sh
//! cargo bench -p ringkv-raft --bench replicated_writes
//! ```
//!
//! Environment: `RINGKV_RAFT_BENCH_SECS` (default 10) per measurement, after 1 s of
//! warm-up; `RINGKV_IO_BACKEND` selects the nodes' backend. Not run by `cargo test`.
#![allow(clippy::unwrap_used)] // benches may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)] // they measure, not store

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use ringkv_raft::client::KvClient;
use ringkv_raft::Request;

struct Row {
    nodes: usize,
    clients: usize,
    writes: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn wait_for_leader(client: &KvClient, addrs: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for a in addrs {
            if let Ok(m) = client.metrics(a).await {
                if let Some(l) = m.current_leader {
                    if let Some(n) = m.membership_config.membership().get_node(&l) {
                        return n.addr.clone();
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `clients` tasks writing for `secs` (after 1 s of warm-up); returns the count and the
/// latencies of the measured writes.
async fn measure(client: Arc<KvClient>, clients: usize, secs: u64, tag: &str) -> (usize, f64, Vec<Duration>) {
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, stop, tag) = (client.clone(), stop.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            let value = "v".repeat(100);
            while !stop.load(Ordering::Relaxed) {
                let req = Request::Set { key: format!("{tag}-c{c}-{n:08}"), value: value.clone() };
                let t = Instant::now();
                client.write(&req, t + Duration::from_secs(10)).await.unwrap();
                let now = Instant::now();
                if now >= warm_until && now < stop_at {
                    lat.push(now - t);
                }
                n += 1;
            }
            lat
        }));
    }
    tokio::time::sleep_until(stop_at.into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (all.len(), secs as f64, all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let secs: u64 = std::env::var("RINGKV_RAFT_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut rows = Vec::new();
    let mut backend = String::new();
    let started = Instant::now();
    for nodes in [1usize, 3] {
        let root = tempfile::Builder::new().prefix("ringkv-raft-bench").tempdir().unwrap();
        let cluster =
            Cluster::start(env!("CARGO_BIN_EXE_ringkv-raft-node").as_ref(), root.path(), nodes, &[], &[]);
        rt.block_on(async {
            let boot = KvClient::new(cluster.addrs());
            boot.init(&cluster.addrs()[0], &cluster.members()).await.unwrap();
            let leader = wait_for_leader(&boot, &cluster.addrs()).await;
            let mut addrs = vec![leader.clone()];
            addrs.extend(cluster.addrs().into_iter().filter(|a| *a != leader));
            let client = Arc::new(KvClient::new(addrs));
            for clients in [1usize, 16, 64] {
                let (writes, s, lat) =
                    measure(client.clone(), clients, secs, &format!("n{nodes}x{clients}")).await;
                let row =
                    Row { nodes, clients, writes, secs: s, p50_ms: pct(&lat, 0.5), p99_ms: pct(&lat, 0.99) };
                eprintln!(
                    "{} node(s), {:2} clients: {:8.0} writes/s, p50 {:.2} ms, p99 {:.2} ms",
                    row.nodes,
                    row.clients,
                    row.writes as f64 / row.secs,
                    row.p50_ms,
                    row.p99_ms
                );
                rows.push(row);
            }
        });
        backend = cluster.nodes[0].banner.rsplit('(').next().unwrap_or("").trim_end_matches(')').to_string();
        drop(cluster);
    }
    println!(
        "\nreplicated writes, {secs} s per cell, nodes on the {backend}, {:.0} s in all:\n",
        started.elapsed().as_secs_f64()
    );
    println!(
        "| clients | 1 node: writes/s | p50 / p99 ms | 3 nodes: writes/s | p50 / p99 ms | 3 nodes / 1 node |"
    );
    println!("|---|---|---|---|---|---|");
    for clients in [1usize, 16, 64] {
        let one = rows.iter().find(|r| r.nodes == 1 && r.clients == clients).unwrap();
        let three = rows.iter().find(|r| r.nodes == 3 && r.clients == clients).unwrap();
        let (w1, w3) = (one.writes as f64 / one.secs, three.writes as f64 / three.secs);
        println!(
            "| {clients} | {w1:.0} | {:.2} / {:.2} | {w3:.0} | {:.2} / {:.2} | {:.2}x |",
            one.p50_ms,
            one.p99_ms,
            three.p50_ms,
            three.p99_ms,
            w3 / w1
        );
    }
}
