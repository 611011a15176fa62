//! What the client knows of one endpoint: its latency estimate and calls in
//! flight (the balancer's load), whether it is ejected (passive health), and
//! whether its server says it is serving (active health).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::breaker::Breaker;
use crate::client::metrics::Ejection;
use crate::client::stats::Counters;
use crate::metrics::{EndpointHealth, EndpointSnapshot};
use crate::registry::Endpoint;

/// The latency an endpoint is assumed to have before it answered once. Kept
/// optimistic, so a new instance wins its first comparisons and is tried at
/// once; its first real answers then set its estimate (peak-EWMA jumps up on
/// a slow answer right away, so a slow newcomer loses quickly).
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// How fast the estimate forgets a latency peak.
const EWMA_DECAY: Duration = Duration::from_secs(5);

/// The weight of an instance that registered none.
const DEFAULT_WEIGHT: u32 = 100;

/// How long to wait before watching health again after the watch failed.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// How fast the plain mean used for outlier detection follows samples.
const MEAN_DECAY: Duration = Duration::from_secs(1);

/// Peak-EWMA: jumps to a slower sample at once, decays toward faster ones.
/// Also keeps a plain time-weighted mean, which noise spikes move less, for
/// comparing endpoints with each other.
#[derive(Debug)]
struct Ewma {
    estimate_ns: f64,
    mean_ns: f64,
    updated: Instant,
}

impl Ewma {
    /// The estimate now, decayed since the last sample, so an endpoint that
    /// stopped being chosen for being slow is tried again after a while.
    fn decayed(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        self.estimate_ns * (-elapsed / EWMA_DECAY.as_nanos() as f64).exp()
    }

    fn sample(&mut self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        // At least 5% per sample, so a burst of samples moves the mean too.
        let keep = (-elapsed / MEAN_DECAY.as_nanos() as f64).exp().min(0.95);
        self.mean_ns = self.mean_ns * keep + rtt_ns * (1.0 - keep);
        if rtt_ns > self.estimate_ns {
            self.estimate_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
            let weight = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            self.estimate_ns = self.estimate_ns * weight + rtt_ns * (1.0 - weight);
        }
        self.updated = now;
    }
}

/// One endpoint of a channel, shared by its [`EndpointService`](super::EndpointService)
/// and the balancer.
#[derive(Debug)]
pub struct EndpointState {
    pub(crate) endpoint: Endpoint,
    /// The full name of the service called there, for messages and health.
    pub(crate) service: &'static str,
    ewma: Mutex<Ewma>,
    in_flight: AtomicUsize,
    /// The sum of the start times of the calls in flight (nanoseconds since
    /// [`epoch`]), for their average age.
    pending_since: AtomicU64,
    /// The round trip of the last answer, in nanoseconds.
    last_rtt_ns: AtomicU64,
    /// Calls sent here, shared with the channel's per-endpoint counts.
    calls: Arc<AtomicU64>,
    /// Passive health: ejected after consecutive failures, back through a probe.
    pub(crate) ejection: Mutex<Breaker>,
    /// Active health: what the server's `grpc.health.v1` watch last said.
    serving: AtomicBool,
    /// Whether anything came back from it yet (an answer or a health update).
    heard: AtomicBool,
    /// Its instance's weight (share of calls; 0 drains it), from the registry.
    weight: AtomicU32,
    /// Whether its instance is in the client's own zone.
    local: AtomicBool,
    /// The latency above which an endpoint is an outlier among its peers.
    pub(crate) outliers: Arc<OutlierLimit>,
    pub(crate) counters: Arc<Counters>,
}

/// The latency above which an endpoint is far slower than its peers, kept
/// current by the balancer (nanoseconds; 0 while there are too few peers).
#[derive(Debug, Default)]
pub struct OutlierLimit(AtomicU64);

impl OutlierLimit {
    /// The limit now, if there is one.
    pub(crate) fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub(crate) fn set(&self, limit: Option<Duration>) {
        let ns = limit.map_or(0, |l| u64::try_from(l.as_nanos()).unwrap_or(u64::MAX).max(1));
        self.0.store(ns, Ordering::Relaxed);
    }
}

impl EndpointState {
    /// The state of `endpoint` of `service`, in rotation and assumed serving.
    pub(crate) fn new(
        endpoint: Endpoint,
        service: &'static str,
        outliers: Arc<OutlierLimit>,
        counters: Arc<Counters>,
    ) -> Self {
        let now = Instant::now();
        EndpointState {
            calls: counters.calls_to(&endpoint),
            endpoint,
            service,
            ewma: Mutex::new(Ewma {
                estimate_ns: DEFAULT_RTT.as_nanos() as f64,
                mean_ns: DEFAULT_RTT.as_nanos() as f64,
                updated: now,
            }),
            in_flight: AtomicUsize::new(0),
            pending_since: AtomicU64::new(0),
            last_rtt_ns: AtomicU64::new(0),
            ejection: Mutex::new(Breaker::for_endpoint()),
            serving: AtomicBool::new(true),
            heard: AtomicBool::new(false),
            weight: AtomicU32::new(DEFAULT_WEIGHT),
            local: AtomicBool::new(false),
            outliers,
            counters,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The expected cost of one more call: the latency estimate times
    /// (calls in flight + 1). The estimate is the decayed peak-EWMA, or the
    /// average age of the calls in flight if that is longer: an endpoint that
    /// has stalled looks slow before its first slow answer arrives.
    pub(crate) fn load(&self) -> f64 {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        self.estimate_with(in_flight) * (in_flight + 1) as f64
    }

    /// How slow it is now, for choosing between zones, in nanoseconds: the
    /// plain mean or the decayed peak-EWMA, whichever is lower (a lone
    /// spike moves the mean little, and the peak forgets a slowness that
    /// kept calls away), or the average age of the calls in flight if that
    /// is longer (stalled).
    pub(crate) fn zone_latency(&self) -> f64 {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let now = Instant::now();
        let (peak, mean) = {
            let ewma = self.ewma.lock().unwrap_or_else(PoisonError::into_inner);
            (ewma.decayed(now), ewma.mean_ns)
        };
        peak.min(mean).max(self.pending_age(in_flight, now))
    }

    fn estimate_with(&self, in_flight: usize) -> f64 {
        let now = Instant::now();
        let estimate = self.ewma.lock().unwrap_or_else(PoisonError::into_inner).decayed(now);
        estimate.max(self.pending_age(in_flight, now))
    }

    /// The average age of the calls in flight, in nanoseconds.
    fn pending_age(&self, in_flight: usize, now: Instant) -> f64 {
        match in_flight {
            0 => 0.0,
            n => {
                let average_start = self.pending_since.load(Ordering::Relaxed) as f64 / n as f64;
                (since_epoch(now) as f64 - average_start).max(0.0)
            }
        }
    }

    /// The round trip of the last answer (of the probe, while ejected).
    pub(crate) fn last_latency(&self) -> Duration {
        Duration::from_nanos(self.last_rtt_ns.load(Ordering::Relaxed))
    }

    /// The plain mean latency, for comparing endpoints with each other.
    pub(crate) fn mean_latency(&self) -> Duration {
        let mean = self.ewma.lock().unwrap_or_else(PoisonError::into_inner).mean_ns;
        Duration::from_nanos(mean as u64)
    }

    /// Whether the server last said it serves (true until it says otherwise).
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Records what the server's health says.
    pub(crate) fn set_serving(&self, serving: bool) -> bool {
        self.heard.store(true, Ordering::Relaxed);
        self.serving.swap(serving, Ordering::Relaxed) != serving
    }

    /// Its instance's weight: its share of calls relative to the others'
    /// (100 is normal, 0 drains it).
    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether its instance runs in the client's own zone.
    pub(crate) fn local(&self) -> bool {
        self.local.load(Ordering::Relaxed)
    }

    /// Records what the registry says of its instance: `weight`, and
    /// whether it is in the client's zone.
    pub(crate) fn set_placement(&self, weight: u32, local: bool) {
        self.weight.store(weight, Ordering::Relaxed);
        self.local.store(local, Ordering::Relaxed);
    }

    /// Whether it is in the balancer's normal rotation (not ejected).
    pub(crate) fn in_rotation(&self) -> bool {
        self.ejection.lock().unwrap_or_else(PoisonError::into_inner).is_closed()
    }

    /// Counts an attempt sent here; the guard counts it in flight until dropped.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let started = since_epoch(Instant::now());
        self.pending_since.fetch_add(started, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint: Arc::clone(self), started: Instant::now(), started_ns: started }
    }

    /// Records an answer's round trip.
    pub(crate) fn sample(&self, rtt: Duration, now: Instant) {
        self.heard.store(true, Ordering::Relaxed);
        self.last_rtt_ns.store(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.ewma.lock().unwrap_or_else(PoisonError::into_inner).sample(rtt, now);
    }

    /// Records an answer. An answer to a probe brings an ejected endpoint
    /// back only if its latency is no longer far above its peers': a slow
    /// instance that answers is still slow.
    pub(crate) fn answered(&self, probe: bool) {
        let still_slow =
            probe.then(|| self.outliers.get()).flatten().filter(|limit| self.last_latency() > *limit);
        let mut ejection = self.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        match still_slow {
            Some(limit) => {
                let reason = format!("probe answered in {:?}, above {limit:?}", self.last_latency());
                ejection.force_open(Instant::now(), &reason);
            }
            None => ejection.succeeded(),
        }
    }

    /// Records a failure, ejecting the endpoint after several in a row.
    pub(crate) fn failed(&self, failure: &dyn std::fmt::Display) {
        let mut ejection = self.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        let was_in = ejection.is_closed();
        ejection.failed(Instant::now(), &failure.to_string());
        if was_in && !ejection.is_closed() {
            tracing::info!(service = self.service, endpoint = %self.endpoint, "ejecting: {failure}");
            Counters::bump(&self.counters.ejections);
            self.counters.metrics.ejected(Ejection::Failures);
        }
    }

    /// Ejects the endpoint now, for `reason` (far slower than its peers).
    pub(crate) fn eject(&self, reason: &str) {
        tracing::info!(service = self.service, endpoint = %self.endpoint, "ejecting: {reason}");
        self.ejection.lock().unwrap_or_else(PoisonError::into_inner).force_open(Instant::now(), reason);
        Counters::bump(&self.counters.ejections);
        self.counters.metrics.ejected(Ejection::Latency);
    }

    /// What the status page shows of it.
    pub(crate) fn snapshot(&self) -> EndpointSnapshot {
        let (in_rotation, last_failure) = {
            let ejection = self.ejection.lock().unwrap_or_else(PoisonError::into_inner);
            (ejection.is_closed(), ejection.last_failure().to_owned())
        };
        let health = if !in_rotation {
            EndpointHealth::Ejected
        } else if !self.serving() {
            EndpointHealth::NotServing
        } else if !self.heard.load(Ordering::Relaxed) {
            EndpointHealth::Connecting
        } else {
            EndpointHealth::Ready
        };
        EndpointSnapshot {
            address: self.endpoint.to_string(),
            health,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            load_ms: self.load() / 1e6,
            latency_ms: self.mean_latency().as_secs_f64() * 1e3,
            calls: self.calls.load(Ordering::Relaxed),
            weight: self.weight(),
            local: self.local(),
            last_failure,
        }
    }

    /// The probe of an ejected endpoint ended without an outcome.
    pub(crate) fn probe_abandoned(&self) {
        self.ejection.lock().unwrap_or_else(PoisonError::into_inner).abandoned();
    }
}

/// Nanoseconds from a fixed process-wide instant to `now`.
fn since_epoch(now: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Counts an attempt in flight until dropped, also when it is cancelled.
#[derive(Debug)]
pub(crate) struct InFlight {
    endpoint: Arc<EndpointState>,
    pub(crate) started: Instant,
    started_ns: u64,
}

impl InFlight {
    pub(crate) fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.pending_since.fetch_sub(self.started_ns, Ordering::Relaxed);
    }
}

/// Follows the endpoint's `grpc.health.v1` status for `service`. A server
/// without the health service counts as serving.
pub(crate) async fn watch_health(conn: crate::transport::Connection, state: std::sync::Weak<EndpointState>) {
    loop {
        let Some(service) = state.upgrade().map(|s| s.service) else { return };
        let request = HealthCheckRequest { service: service.to_owned() };
        match HealthClient::new(conn.clone()).watch(request).await {
            Ok(response) => {
                let mut updates = response.into_inner();
                while let Some(Ok(update)) = updates.next().await {
                    let Some(state) = state.upgrade() else { return };
                    let now_serving = update.status() != ServingStatus::NotServing;
                    if state.set_serving(now_serving) {
                        tracing::debug!(endpoint = %state.endpoint, service, serving = now_serving, "health changed");
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                if let Some(state) = state.upgrade() {
                    state.set_serving(true);
                }
                return;
            }
            // Unreachable for now: passive health and the registry decide.
            Err(_) => {}
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let start = Instant::now();
        let mut ewma = Ewma { estimate_ns: 1e6, mean_ns: 1e6, updated: start };
        ewma.sample(Duration::from_millis(50), start);
        assert_eq!(ewma.estimate_ns, 50e6, "a slower sample is taken at once");
        ewma.sample(Duration::from_millis(1), start + EWMA_DECAY);
        let after_one_decay = ewma.estimate_ns;
        assert!(after_one_decay < 50e6 * 0.4 && after_one_decay > 1e6, "{after_one_decay}");
        ewma.sample(Duration::from_millis(1), start + EWMA_DECAY * 10);
        assert!(ewma.estimate_ns < 1.1e6, "{}", ewma.estimate_ns);
        // Unsampled, the estimate fades, so a once-slow endpoint is tried again.
        ewma.sample(Duration::from_millis(100), start + EWMA_DECAY * 10);
        let later = ewma.decayed(start + EWMA_DECAY * 13);
        assert!(later < 100e6 * 0.06, "{later}");
    }
}
