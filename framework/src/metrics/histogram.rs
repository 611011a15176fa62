//! A histogram of durations that is observed without a lock: one atomic
//! add for the bucket, one for the sum (whole nanoseconds, so it is exact),
//! and one for the count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// The bucket bounds of every duration histogram, in seconds: from 1 ms to
/// 10 s, the range of an RPC's latency and of its deadline.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0];

/// The bounds in nanoseconds, to compare with an observation without floats.
const BOUNDS_NS: [u64; 14] = {
    let mut ns = [0u64; 14];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (DURATION_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// A duration histogram with [`DURATION_BUCKETS`]; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Per bucket (not cumulative), the last one above every bound (`+Inf`).
    buckets: [AtomicU64; 15],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.iter().position(|bound| ns <= *bound).unwrap_or(BOUNDS_NS.len());
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); 15];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let bound = DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (bound, self.0.buckets[i].load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let load = |i: usize| h.0.buckets[i].load(Ordering::Relaxed);
        assert_eq!((load(0), load(5), load(14)), (2, 1, 1));
        assert_eq!(h.count(), 4);
        assert_eq!(h.0.sum_ns.load(Ordering::Relaxed), 500_000 + 1_000_000 + 30_000_000 + 60_000_000_000);
    }
}
