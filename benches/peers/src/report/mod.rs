//! Result rows and the files of a run: `results.csv`, `results.md`, `throughput.svg`.

pub mod markdown;
pub mod plot;

use serde::{Deserialize, Serialize};

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// W1..W6, ltm-load, ltm-read, durable, bulk, fio-randread, fio-seqwrite, fio-fsync.
    pub workload: String,
    /// Engine name (or `fio`).
    pub engine: String,
    /// Threads, tasks, requests in flight or committers.
    pub threads: u32,
    /// Operations per second (MiB/s for fio-seqwrite).
    pub ops_per_s: f64,
    /// Median latency, microseconds (0 when not measured).
    pub p50_us: f64,
    /// 99th percentile latency, microseconds (0 when not measured).
    pub p99_us: f64,
    /// Details: counts, sizes, fsyncs, failures.
    pub extra: String,
}

/// The CSV file.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from("workload,engine,threads,ops_per_s,p50_us,p99_us,extra\n");
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{:.1},{:.1},{:.1},\"{}\"\n",
            r.workload,
            r.engine,
            r.threads,
            r.ops_per_s,
            r.p50_us,
            r.p99_us,
            r.extra.replace('"', "'")
        ));
    }
    s
}
