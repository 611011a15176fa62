//! One endpoint as the balancer sees it: a lazily connected tonic channel,
//! its latency estimate and calls in flight, whether it is ejected, and
//! whether its server says it is serving.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;

use super::breaker::Breaker;
use crate::registry::{AbortOnDrop, Endpoint};

/// The latency an endpoint is assumed to have before it answered once. Kept
/// optimistic, so a new instance wins its first comparisons and is tried at
/// once; its first real answers then set its estimate (peak-EWMA jumps up on
/// a slow answer right away, so a slow newcomer loses quickly).
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// How fast the estimate forgets a latency peak.
const EWMA_DECAY: Duration = Duration::from_secs(5);

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

/// One endpoint of a channel.
#[derive(Debug)]
pub(super) struct EndpointState {
    pub(super) endpoint: Endpoint,
    conn: tonic::transport::Channel,
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
    pub(super) ejection: Mutex<Breaker>,
    /// Active health: what the server's `grpc.health.v1` watch last said.
    serving: Arc<AtomicBool>,
    _watch: AbortOnDrop,
}

impl EndpointState {
    /// A lazy connection to `endpoint` of `service`, whose health it watches.
    pub(super) fn connect(
        endpoint: &Endpoint,
        service: &'static str,
        calls: Arc<AtomicU64>,
    ) -> Result<Self, String> {
        let conn = crate::transport::connect_lazy(endpoint).map_err(|e| e.to_string())?;
        let serving = Arc::new(AtomicBool::new(true));
        let watch = tokio::spawn(watch_health(conn.clone(), service, endpoint.clone(), serving.clone()));
        Ok(EndpointState {
            endpoint: endpoint.clone(),
            conn,
            ewma: Mutex::new(Ewma {
                estimate_ns: DEFAULT_RTT.as_nanos() as f64,
                mean_ns: DEFAULT_RTT.as_nanos() as f64,
                updated: Instant::now(),
            }),
            in_flight: AtomicUsize::new(0),
            pending_since: AtomicU64::new(0),
            last_rtt_ns: AtomicU64::new(0),
            calls,
            ejection: Mutex::new(Breaker::for_endpoint()),
            serving,
            _watch: AbortOnDrop(watch),
        })
    }

    /// The expected cost of one more call: the latency estimate times
    /// (calls in flight + 1). The estimate is the decayed peak-EWMA, or the
    /// average age of the calls in flight if that is longer: an endpoint that
    /// has stalled looks slow before its first slow answer arrives.
    pub(super) fn load(&self) -> f64 {
        let now = Instant::now();
        let estimate = self.ewma.lock().unwrap_or_else(PoisonError::into_inner).decayed(now);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let pending_age = match in_flight {
            0 => 0.0,
            n => {
                let average_start = self.pending_since.load(Ordering::Relaxed) as f64 / n as f64;
                (since_epoch(now) as f64 - average_start).max(0.0)
            }
        };
        estimate.max(pending_age) * (in_flight + 1) as f64
    }

    /// The round trip of the last answer (of the probe, while ejected).
    pub(super) fn last_latency(&self) -> Duration {
        Duration::from_nanos(self.last_rtt_ns.load(Ordering::Relaxed))
    }

    /// The plain mean latency, for comparing endpoints with each other.
    pub(super) fn mean_latency(&self) -> Duration {
        let mean = self.ewma.lock().unwrap_or_else(PoisonError::into_inner).mean_ns;
        Duration::from_nanos(mean as u64)
    }

    /// Whether the server last said it serves (true until it says otherwise).
    pub(super) fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Records what the server's health says (tests use it directly).
    #[cfg(test)]
    pub(super) fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// Whether it is in the balancer's normal rotation (not ejected).
    pub(super) fn in_rotation(&self) -> bool {
        self.ejection.lock().unwrap_or_else(PoisonError::into_inner).is_closed()
    }

    /// Sends one request here, recording its latency until the response headers.
    pub(super) async fn call(&self, req: Request<Body>) -> Result<Response<Body>, tonic::transport::Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let _in_flight = InFlight::enter(self, since_epoch(start));
        let result = self.conn.clone().oneshot(req).await;
        let now = Instant::now();
        let rtt = now - start;
        self.last_rtt_ns.store(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.ewma.lock().unwrap_or_else(PoisonError::into_inner).sample(rtt, now);
        result
    }
}

/// Nanoseconds from a fixed process-wide instant to `now`.
fn since_epoch(now: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// Counts a call in flight until dropped, also when the call is cancelled.
struct InFlight<'a> {
    endpoint: &'a EndpointState,
    started: u64,
}

impl<'a> InFlight<'a> {
    fn enter(endpoint: &'a EndpointState, started: u64) -> Self {
        endpoint.pending_since.fetch_add(started, Ordering::Relaxed);
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint, started }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.endpoint.pending_since.fetch_sub(self.started, Ordering::Relaxed);
    }
}

/// Follows the endpoint's `grpc.health.v1` status for `service`. A server
/// without the health service counts as serving.
async fn watch_health(
    conn: tonic::transport::Channel,
    service: &'static str,
    endpoint: Endpoint,
    serving: Arc<AtomicBool>,
) {
    loop {
        let request = HealthCheckRequest { service: service.to_owned() };
        match HealthClient::new(conn.clone()).watch(request).await {
            Ok(response) => {
                let mut updates = response.into_inner();
                while let Some(Ok(update)) = updates.next().await {
                    let now_serving = update.status() != ServingStatus::NotServing;
                    if serving.swap(now_serving, Ordering::Relaxed) != now_serving {
                        tracing::debug!(%endpoint, service, serving = now_serving, "health changed");
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                serving.store(true, Ordering::Relaxed);
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
