//! Observability primitives for the hot paths: a striped event counter ([`Counter`]) and a
//! log2-bucket latency histogram ([`Histogram`]), both of relaxed atomics, no lock, and
//! a snapshot type for `Stats` ([`LatencyHistogram`]).
//!
//! Recording costs one relaxed `fetch_add` (two for a histogram: its bucket and its sum) on
//! a cache line of the calling thread's stripe: threads are dealt one of [`STRIPES`]
//! stripes round-robin when they first record, so concurrent readers on different cores
//! rarely share a line. Reading sums the stripes; a snapshot taken while others record is
//! not atomic across buckets (each bucket is exact, their total may lag by the records in
//! flight).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Stripes of a [`Counter`] or a [`Histogram`].
const STRIPES: usize = 8;
/// Buckets of a [`LatencyHistogram`]: bucket `i` counts durations of `2^i` to `2^(i+1) - 1`
/// nanoseconds (bucket 0 also 0 ns); the last one everything from `2^39` ns (about 9
/// minutes) up.
pub const HISTOGRAM_BUCKETS: usize = 40;

/// The stripe of the calling thread.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

/// One cache line pair per stripe (no false sharing between stripes).
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// A count of events, striped over threads.
#[derive(Default)]
pub struct Counter {
    stripes: [Padded<AtomicU64>; STRIPES],
}

impl Counter {
    /// One more event.
    #[inline]
    pub fn incr(&self) {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Events so far.
    pub fn get(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.get())
    }
}

struct HistStripe {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for HistStripe {
    fn default() -> Self {
        HistStripe { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_ns: AtomicU64::new(0) }
    }
}

/// A latency histogram with [`HISTOGRAM_BUCKETS`] log2 buckets of nanoseconds, striped
/// over threads.
#[derive(Default)]
pub struct Histogram {
    stripes: [Padded<HistStripe>; STRIPES],
}

/// The bucket of a duration of `ns` nanoseconds.
fn bucket_of(ns: u64) -> usize {
    (63 - (ns | 1).leading_zeros() as usize).min(HISTOGRAM_BUCKETS - 1)
}

impl Histogram {
    /// Records one duration.
    #[inline]
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let s = &self.stripes[stripe()].0;
        s.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        s.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LatencyHistogram {
        let mut buckets = [0u64; HISTOGRAM_BUCKETS];
        let mut sum_ns = 0u64;
        for s in &self.stripes {
            for (b, a) in buckets.iter_mut().zip(&s.0.buckets) {
                *b += a.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(s.0.sum_ns.load(Ordering::Relaxed));
        }
        LatencyHistogram { buckets, sum_ns }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// A latency histogram as [`Stats`](crate::Stats) reports it: counts in log2 buckets of
/// nanoseconds since open.
///
/// Bucket `i` counts the durations from `2^i` ns up to (not including) `2^(i+1)` ns, so a
/// quantile read from it is exact to within a factor of two; the last bucket holds
/// everything from `2^39` ns (about 9 minutes) up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Counts per bucket ([`LatencyHistogram::bucket_floor`] gives each bucket's lower
    /// bound).
    pub buckets: [u64; HISTOGRAM_BUCKETS],
    /// The sum of every recorded duration, in nanoseconds (wrapping; for a mean).
    pub sum_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: [0; HISTOGRAM_BUCKETS], sum_ns: 0 }
    }
}

impl LatencyHistogram {
    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The lower bound of bucket `i`.
    pub fn bucket_floor(i: usize) -> Duration {
        if i == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(1u64 << i.min(63))
        }
    }

    /// The mean duration (zero when nothing was recorded).
    pub fn mean(&self) -> Duration {
        match self.count() {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.sum_ns / n),
        }
    }

    /// An upper bound of the `q` quantile (`q` in 0..=1, clamped): the upper end of the
    /// bucket holding it, at most twice the true value. Zero when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Duration {
        let n = self.count();
        if n == 0 {
            return Duration::ZERO;
        }
        // The rank of the quantile, 1..=n.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Duration::from_nanos((1u64 << (i + 1).min(63)) - 1);
            }
        }
        Duration::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2_of_nanoseconds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 1);
        assert_eq!(bucket_of(1024), 10);
        assert_eq!(bucket_of(u64::MAX), HISTOGRAM_BUCKETS - 1);
        let h = Histogram::default();
        for us in [1u64, 1, 1, 1000] {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.buckets[bucket_of(1000)], 3);
        assert_eq!(s.sum_ns, 1_003_000);
        // p50 is in the 1 us bucket (512..1023 ns... 1000 ns is in [512, 1024)).
        assert_eq!(s.quantile(0.5), Duration::from_nanos(1023));
        assert!(s.quantile(1.0) >= Duration::from_millis(1));
        assert_eq!(LatencyHistogram::default().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn counters_sum_their_stripes() {
        let c = std::sync::Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || (0..1000).for_each(|_| c.incr()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 4000);
    }
}
