//! A node of the example replicated key-value service (see the README's "ringkv under
//! openraft" section): `ringkv-raft-node --id 1 --addr 127.0.0.1:21001 --dir /tmp/n1`.
//! It serves until SIGINT or SIGTERM, then shuts openraft down and closes its database.

use std::path::PathBuf;

use clap::Parser;
use ringkv_raft::service::{self, NodeOptions};
use tokio::signal::unix::{signal, SignalKind};

/// One node of the ringkv-raft example key-value service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The node's id (unique in the cluster).
    #[arg(long)]
    id: u64,
    /// host:port to serve HTTP on (also the address the other nodes use).
    #[arg(long)]
    addr: String,
    /// Data directory (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Heartbeat interval, ms.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Smallest election timeout, ms.
    #[arg(long, default_value_t = 400)]
    election_min_ms: u64,
    /// Largest election timeout, ms.
    #[arg(long, default_value_t = 800)]
    election_max_ms: u64,
    /// Build a snapshot every this many applied entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Log entries kept below the last snapshot.
    #[arg(long, default_value_t = 1_000)]
    keep_logs: u64,
}

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let mut opts = NodeOptions::new(a.id, a.addr, a.dir);
    opts.heartbeat_ms = a.heartbeat_ms;
    opts.election_ms = (a.election_min_ms, a.election_max_ms);
    opts.snapshot_every = a.snapshot_every;
    opts.keep_logs = a.keep_logs;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        service::run(opts, shutdown).await
    })
}
