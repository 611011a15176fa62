//! What a channel's layers count, shared by all of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::metrics::ServiceMetrics;
use crate::registry::Endpoint;

/// What a channel has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Attempts sent to each endpoint, including endpoints that have left.
    pub calls_per_endpoint: Vec<(Endpoint, u64)>,
    /// Attempts that were retries.
    pub retries: u64,
    /// Retries refused because the retry budget was spent.
    pub retries_over_budget: u64,
    /// Endpoints taken out of rotation (failures or latency).
    pub ejections: u64,
    /// Times a method's circuit breaker opened.
    pub breaker_trips: u64,
    /// Hedged attempts sent while an earlier attempt was still in flight.
    pub hedges: u64,
}

/// The live counters behind [`ChannelStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) retries: AtomicU64,
    pub(crate) retries_over_budget: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) breaker_trips: AtomicU64,
    pub(crate) hedges: AtomicU64,
    calls: Mutex<BTreeMap<Endpoint, Arc<AtomicU64>>>,
    /// The same events and more, as metrics of the target service.
    pub(crate) metrics: ServiceMetrics,
}

impl Counters {
    pub(crate) fn new(metrics: ServiceMetrics) -> Self {
        Counters { metrics, ..Counters::default() }
    }

    /// The attempt counter of `endpoint`, kept after it leaves.
    pub(crate) fn calls_to(&self, endpoint: &Endpoint) -> Arc<AtomicU64> {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.entry(endpoint.clone()).or_default().clone()
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ChannelStats {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ChannelStats {
            calls_per_endpoint: calls.iter().map(|(e, n)| (e.clone(), load(n))).collect(),
            retries: load(&self.retries),
            retries_over_budget: load(&self.retries_over_budget),
            ejections: load(&self.ejections),
            breaker_trips: load(&self.breaker_trips),
            hedges: load(&self.hedges),
        }
    }
}
