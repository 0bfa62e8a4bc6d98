//! The workloads, each run inside a child process for one engine (see `child.rs`).

pub mod bulk;
pub mod durable;
pub mod ltm;
pub mod mixed;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::engine::{self, Engine, EngineKind, OpenCfg};
use crate::report::Row;
use crate::spec::Sizes;

/// What a workload needs to run.
pub struct Ctx {
    /// The engine under test.
    pub kind: EngineKind,
    /// Its data directory.
    pub dir: PathBuf,
    /// Sizes of the run.
    pub sizes: Sizes,
    /// Measured seconds per timed phase.
    pub seconds: f64,
    /// The tokio runtime (2 workers) ringkv runs on.
    pub rt: Runtime,
}

impl Ctx {
    /// Warm-up before each timed phase: a quarter of the phase, at most 1 s.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64((self.seconds / 4.0).min(1.0))
    }

    /// The measured part of a timed phase.
    pub fn measure(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// Opens the engine.
    pub fn open(&self, cfg: &OpenCfg) -> anyhow::Result<Arc<dyn Engine>> {
        self.rt.block_on(engine::open(self.kind, &self.dir, cfg))
    }

    /// Closes the engine (and drops it).
    pub fn close(&self, e: Arc<dyn Engine>) -> anyhow::Result<()> {
        self.rt.block_on(e.close())?;
        drop(e);
        Ok(())
    }

    /// A result row of this engine.
    pub fn row(
        &self,
        workload: &str,
        threads: usize,
        ops_per_s: f64,
        p50_us: f64,
        p99_us: f64,
        extra: String,
    ) -> Row {
        Row {
            workload: workload.to_string(),
            engine: self.kind.name().to_string(),
            threads: threads as u32,
            ops_per_s,
            p50_us,
            p99_us,
            extra,
        }
    }
}

/// Writes `ids` (version 0 values of `len` bytes) in commits of `batch`, relaxed; returns
/// the conflict retries (none expected: nothing else writes).
pub fn load(ctx: &Ctx, e: &Arc<dyn Engine>, ids: &[u64], len: usize, batch: usize) -> anyhow::Result<u64> {
    let mut retries = 0;
    for chunk in ids.chunks(batch) {
        let kvs: Vec<([u8; 16], Vec<u8>)> =
            chunk.iter().map(|&id| (crate::data::key(id), crate::data::value(id, 0, len))).collect();
        let pairs: Vec<(&[u8], &[u8])> = kvs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        while !ctx.rt.block_on(e.write(&pairs, false))? {
            retries += 1;
        }
    }
    Ok(retries)
}

/// Bytes this process caused to be written to storage (`write_bytes` of /proc/self/io).
pub fn proc_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("write_bytes:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}
