//! Runs N clients against an engine: N tokio tasks for ringkv (on a 2-worker multi-thread
//! runtime), N OS threads for a synchronous engine (its futures complete when polled, so a
//! thread drives one with `block_on`). Each client measures its own latencies.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::runtime::Runtime;

use crate::engine::Engine;

/// A latency histogram in nanoseconds (1 ns to 100 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

/// The measured window of a timed phase: ops before `start` are warm-up.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// End of the warm-up, start of measuring.
    pub start: Instant,
    /// End of the phase.
    pub end: Instant,
}

impl Window {
    /// A window after `warmup`, lasting `measure`, from now.
    pub fn new(warmup: Duration, measure: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window { start, end: start + measure }
    }

    /// Records one operation that began at `t0` and ends now; false once the phase is over.
    pub fn record(&self, out: &mut ClientOut, t0: Instant) -> bool {
        let now = Instant::now();
        if t0 >= self.start {
            out.ops += 1;
            out.hist.saturating_record((now - t0).as_nanos().max(1) as u64);
            out.last = out.last.max(now);
        }
        now < self.end
    }
}

/// What one client measured.
#[derive(Debug)]
pub struct ClientOut {
    /// Operations completed inside the window.
    pub ops: u64,
    /// Their latencies (ns).
    pub hist: Histogram<u64>,
    /// Commits retried after a conflict.
    pub retries: u64,
    /// When the last measured operation completed.
    pub last: Instant,
}

impl ClientOut {
    /// An empty result.
    pub fn new() -> ClientOut {
        ClientOut { ops: 0, hist: histogram(), retries: 0, last: Instant::now() }
    }
}

impl Default for ClientOut {
    fn default() -> Self {
        ClientOut::new()
    }
}

/// The clients' results merged.
#[derive(Debug)]
pub struct PhaseOut {
    /// Operations per second over the measured window.
    pub ops_per_s: f64,
    /// Median latency (us).
    pub p50_us: f64,
    /// 99th percentile latency (us).
    pub p99_us: f64,
    /// Operations measured.
    pub ops: u64,
    /// Conflict retries.
    pub retries: u64,
}

/// Merges client results measured in `w`.
pub fn merge(outs: Vec<ClientOut>, w: &Window) -> PhaseOut {
    let mut hist = histogram();
    let (mut ops, mut retries) = (0, 0);
    let mut last = w.start;
    for o in outs {
        ops += o.ops;
        retries += o.retries;
        last = last.max(o.last);
        hist.add(&o.hist).expect("same histogram bounds");
    }
    let secs = (last - w.start).as_secs_f64().max(1e-9);
    PhaseOut {
        ops_per_s: ops as f64 / secs,
        p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        ops,
        retries,
    }
}

/// Runs `n` clients built by `make(i)`: tokio tasks on `rt` for an async engine, OS
/// threads otherwise. The first error of any client is returned.
pub fn run_clients<F, Fut>(
    rt: &Runtime,
    engine: &Arc<dyn Engine>,
    n: usize,
    make: F,
) -> anyhow::Result<Vec<ClientOut>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<ClientOut>> + Send + 'static,
{
    assert!(n > 0, "at least one client");
    if engine.is_async() {
        let handles: Vec<_> = (0..n).map(|i| rt.spawn(make(i))).collect();
        rt.block_on(async move {
            let mut outs = Vec::with_capacity(n);
            for h in handles {
                outs.push(h.await??);
            }
            Ok(outs)
        })
    } else {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let fut = make(i);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("client-{i}"))
                    .stack_size(1 << 20)
                    .spawn(move || futures::executor::block_on(fut))?,
            );
        }
        let mut outs = Vec::with_capacity(n);
        for h in handles {
            outs.push(h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        Ok(outs)
    }
}
