//! The channel under every generated client: the Trellis client stack.
//!
//! A [`Channel`] belongs to one service. It follows the service's instances
//! through a [`Registry`], and takes every call through these steps, in
//! this order:
//!
//! ```text
//! policy      the method's idempotency (from the proto) decides what may be retried
//! deadline    the call's own timeout (Request::set_timeout, else DEFAULT_TIMEOUT),
//!             shortened to the inbound call's remaining deadline; sent as grpc-timeout
//! retry       only where safe, to another instance, jittered backoff or server pushback,
//!             never past the deadline, within the retry budget            (retry.rs)
//! breaker     per method: fails fast with UNAVAILABLE while the target keeps failing
//!                                                                         (breaker.rs)
//! balancer    P2C over peak-EWMA x in flight, round robin, or consistent hashing
//!                                                                         (balance.rs)
//! endpoint    passive health (ejection after failures, back through a probe), active
//!             health (grpc.health.v1 Watch), one lazy tonic connection  (endpoint.rs)
//! ```
//!
//! Calls made before any instance is known wait for one, until their
//! deadline. Every failure comes back as one gRPC status that names the
//! method, the service, and what went wrong.

mod balance;
mod breaker;
mod config;
mod endpoint;
mod hash_field;
mod retry;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tower::discover::Change;
use tower_service::Service;

pub use balance::Balance;
pub use config::{ClientConfig, Clients, MethodConfig};

use self::breaker::Admit;
use self::endpoint::EndpointState;
use self::retry::{MAX_ATTEMPTS, RetryBudget};
use crate::context::outbound_deadline;
use crate::descriptor::{HashKeyField, ServiceDescriptor, StreamingKind};
use crate::error::{BoxError, Error};
use crate::protocol::{GRPC_TIMEOUT, decode_grpc_timeout, encode_grpc_timeout};
use crate::registry::{AbortOnDrop, Endpoint, Registry};

/// The deadline of a call that sets none of its own, unless the method's
/// configuration says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before resolving again after the registry failed.
const RESOLVE_RETRY: Duration = Duration::from_millis(500);

/// How often endpoints far slower than their peers are looked for.
const OUTLIER_CHECK: Duration = Duration::from_millis(200);

/// An endpoint is a latency outlier above this multiple of the median...
const OUTLIER_FACTOR: f64 = 4.0;

/// ...and this much above it in absolute terms.
const OUTLIER_MARGIN: Duration = Duration::from_millis(10);

/// Routes a call by consistent hashing (with [`Balance::ConsistentHash`]):
/// calls with the same key go to the same instance while it is available.
///
/// ```
/// let mut request = trellis::Request::new(());
/// request.extensions_mut().insert(trellis::client::HashKey::new("order-42"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKey(u64);

impl HashKey {
    /// The key for `value`, such as an order id.
    pub fn new(value: impl AsRef<[u8]>) -> Self {
        HashKey(balance::hash_key(value.as_ref()))
    }
}

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

/// A channel to the instances of one service. Cheap to clone; clones share
/// connections, balancer, breakers and retry budget.
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("service", &self.shared.service.name())
            .field("registry", &self.shared.registry)
            .field("endpoints", &self.shared.endpoints.snapshot().len())
            .finish_non_exhaustive()
    }
}

/// What clones of a channel share.
#[derive(Debug)]
struct Shared {
    service: &'static ServiceDescriptor,
    registry: String,
    balance: Balance,
    /// Per method path: its policy, with the configuration's overrides, and
    /// its circuit breaker.
    methods: HashMap<&'static str, Method>,
    /// For calls to paths the descriptor does not know.
    unknown_method: Method,
    endpoints: balance::Endpoints,
    /// Bumped on every change of endpoints, to wake calls waiting for one.
    changed: watch::Receiver<u64>,
    breaker_trips: AtomicU64,
    budget: RetryBudget,
    /// Caps the extra load hedging adds: 10% of calls plus 2 per second.
    hedge_budget: RetryBudget,
    hedges: AtomicU64,
    calls: Mutex<BTreeMap<Endpoint, Arc<AtomicU64>>>,
    retries: AtomicU64,
    retries_over_budget: AtomicU64,
    ejections: AtomicU64,
    /// Why the registry could not be followed, while it cannot.
    registry_error: Mutex<Option<String>>,
    tasks: Mutex<Vec<AbortOnDrop>>,
}

impl Channel {
    /// A channel to `service` through `registry`, balancing with peak-EWMA.
    /// Returns at once; instances are found in the background, and calls
    /// wait for the first one.
    ///
    /// # Errors
    ///
    /// When called outside a Tokio runtime.
    pub fn discover(clients: impl Into<Clients>, service: &'static ServiceDescriptor) -> Result<Self, Error> {
        Self::with_balance(clients, service, Balance::default())
    }

    /// [`discover`](Self::discover), with another balancing strategy
    /// (which a `balance` in the registry's client settings overrides).
    ///
    /// # Errors
    ///
    /// When called outside a Tokio runtime.
    pub fn with_balance(
        clients: impl Into<Clients>,
        service: &'static ServiceDescriptor,
        balance: Balance,
    ) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime("Channel::discover"));
        }
        let clients = clients.into();
        let registry = clients.registry();
        let config = clients.config(service.name());
        let balance = config.balance.unwrap_or(balance);
        let methods = service
            .methods()
            .iter()
            .map(|m| {
                // The configuration overrides the proto's policy.
                let overrides = config.methods.get(m.name()).copied().unwrap_or_default();
                let policy = m.policy();
                let settings = MethodSettings {
                    retry_safe: m.idempotency().is_retry_safe(),
                    replayable: matches!(m.kind(), StreamingKind::Unary | StreamingKind::ServerStreaming),
                    timeout: overrides.timeout.or(policy.timeout()).unwrap_or(DEFAULT_TIMEOUT),
                    max_attempts: overrides.max_attempts.unwrap_or(policy.max_attempts()).max(1),
                    hedge: policy.hedge().map(|h| (h.delay(), h.max_attempts())),
                    hash_key: policy.hash_key(),
                };
                (m.path(), Method { settings, breaker: Mutex::default() })
            })
            .collect();
        let (bump, changed) = watch::channel(0);
        let shared = Arc::new(Shared {
            service,
            registry: registry.url().to_owned(),
            balance,
            methods,
            unknown_method: Method { settings: MethodSettings::UNKNOWN, breaker: Mutex::default() },
            endpoints: balance::Endpoints::default(),
            changed,
            breaker_trips: AtomicU64::new(0),
            budget: RetryBudget::default(),
            hedge_budget: RetryBudget::new(0.1, 2),
            hedges: AtomicU64::new(0),
            calls: Mutex::new(BTreeMap::new()),
            retries: AtomicU64::new(0),
            retries_over_budget: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            registry_error: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        // The tasks hold only a weak reference: dropping the last clone of
        // the channel stops them.
        let follower = tokio::spawn(follow(registry.clone(), Arc::downgrade(&shared), bump));
        let outliers = tokio::spawn(eject_outliers(Arc::downgrade(&shared)));
        shared.lock_tasks().extend([AbortOnDrop(follower), AbortOnDrop(outliers)]);
        Ok(Channel { shared })
    }

    /// The service this channel calls.
    pub fn service(&self) -> &'static ServiceDescriptor {
        self.shared.service
    }

    /// How many attempts went to each endpoint through this channel and its
    /// clones, including endpoints that have since left.
    pub fn calls_per_endpoint(&self) -> Vec<(Endpoint, u64)> {
        let calls = self.shared.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.iter().map(|(endpoint, n)| (endpoint.clone(), n.load(Ordering::Relaxed))).collect()
    }

    /// Counters of what the stack did: retries, ejections, breaker trips.
    pub fn stats(&self) -> ChannelStats {
        ChannelStats {
            calls_per_endpoint: self.calls_per_endpoint(),
            retries: self.shared.retries.load(Ordering::Relaxed),
            retries_over_budget: self.shared.retries_over_budget.load(Ordering::Relaxed),
            ejections: self.shared.ejections.load(Ordering::Relaxed),
            breaker_trips: self.shared.breaker_trips.load(Ordering::Relaxed),
            hedges: self.shared.hedges.load(Ordering::Relaxed),
        }
    }
}

/// Follows the registry and keeps the endpoint list current. Keeps the last
/// known endpoints while the registry cannot be reached.
async fn follow(registry: Registry, shared: std::sync::Weak<Shared>, bump: watch::Sender<u64>) {
    let Some(service) = shared.upgrade().map(|s| s.service.name()) else { return };
    let resolution = loop {
        match registry.resolve(service).await {
            Ok(resolution) => break resolution,
            Err(err) => {
                let Some(shared) = shared.upgrade() else { return };
                if shared.set_registry_error(Some(err.to_string())) {
                    tracing::warn!(service, "cannot resolve: {err}; retrying");
                }
                drop(shared);
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    };
    if let Some(shared) = shared.upgrade() {
        shared.set_registry_error(None);
    }
    let mut changes = std::pin::pin!(resolution.into_changes());
    while let Some(change) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(changes.as_mut(), cx)).await
    {
        let Some(shared) = shared.upgrade() else { return };
        let mut list: Vec<Arc<EndpointState>> = shared.endpoints.snapshot().to_vec();
        match change {
            Change::Insert(_, endpoint) => match shared.connect(&endpoint) {
                Ok(state) => {
                    tracing::debug!(service, %endpoint, "endpoint added");
                    list.retain(|e| e.endpoint != endpoint);
                    list.push(Arc::new(state));
                }
                Err(err) => tracing::warn!(service, %endpoint, "ignoring endpoint: {err}"),
            },
            Change::Remove(endpoint) => {
                tracing::debug!(service, %endpoint, "endpoint removed");
                list.retain(|e| e.endpoint != endpoint);
            }
        }
        shared.endpoints.replace(list);
        bump.send_modify(|n| *n += 1);
    }
}

/// Ejects endpoints whose latency is far above their peers'.
async fn eject_outliers(shared: std::sync::Weak<Shared>) {
    let mut ticks = tokio::time::interval(OUTLIER_CHECK);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let list = shared.endpoints.snapshot();
        let rotation: Vec<&Arc<EndpointState>> = list.iter().filter(|e| e.in_rotation()).collect();
        // A median needs peers; ejecting must keep most endpoints in rotation.
        if rotation.len() < 3 || (rotation.len() - 1) * 2 < list.len() {
            continue;
        }
        let Some(limit) = shared.outlier_limit() else { continue };
        let slowest = rotation.iter().max_by_key(|e| e.mean_latency()).filter(|e| e.mean_latency() > limit);
        if let Some(slowest) = slowest {
            let reason = format!(
                "mean latency {:?} is far above its peers' (limit {limit:?})",
                slowest.mean_latency()
            );
            tracing::info!(service = shared.service.name(), endpoint = %slowest.endpoint, "ejecting: {reason}");
            slowest
                .ejection
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .force_open(Instant::now(), &reason);
            shared.ejections.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Shared {
    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<AbortOnDrop>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the registry's state; true if this starts an outage.
    fn set_registry_error(&self, error: Option<String>) -> bool {
        let mut current = self.registry_error.lock().unwrap_or_else(PoisonError::into_inner);
        let started = current.is_none() && error.is_some();
        *current = error;
        started
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<EndpointState, String> {
        let counter = {
            let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
            calls.entry(endpoint.clone()).or_default().clone()
        };
        EndpointState::connect(endpoint, self.service.name(), counter)
    }

    /// Why a call found no instance to go to.
    fn nowhere(&self) -> String {
        let registry_error = self.registry_error.lock().unwrap_or_else(PoisonError::into_inner);
        match &*registry_error {
            Some(err) => format!("cannot follow the registry: {err}"),
            None => format!(
                "no instance of {} is registered in {}; start one, or check that both sides use the same registry",
                self.service.name(),
                self.registry
            ),
        }
    }

    /// Waits for an endpoint to try, until `deadline`.
    async fn pick(
        &self,
        tried: &[Arc<EndpointState>],
        key: Option<u64>,
        deadline: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<balance::Pick> {
        let mut changed = self.changed.clone();
        loop {
            if let Some(pick) = self.endpoints.pick(self.balance, tried, key, rng) {
                return Some(pick);
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return None },
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// Runs one call through the stack. See the [module docs](self).
    async fn call(self: Arc<Self>, req: Request<Body>) -> Result<Response<Body>, Status> {
        let (mut parts, body) = req.into_parts();
        // Extensions are for this process; the attempts go out without them.
        let extensions = std::mem::take(&mut parts.extensions);
        let path = parts.uri.path();
        let Method { settings: method, breaker } = self.methods.get(path).unwrap_or(&self.unknown_method);
        let method = *method;
        let own = parts.headers.get(GRPC_TIMEOUT).and_then(|v| decode_grpc_timeout(v.as_bytes()));
        let start = Instant::now();
        let own = own.unwrap_or(method.timeout);
        let deadline = outbound_deadline(Some(own)).unwrap_or(start + own);
        let timeout = deadline.saturating_duration_since(start);
        if timeout.is_zero() {
            return Err(Status::deadline_exceeded(format!(
                "{path}: the deadline passed before the call was sent"
            )));
        }
        // A single-message request is kept, so it can be sent again.
        let body = if method.replayable {
            let bytes =
                body.collect().await.map_err(|e| Status::internal(format!("{path}: request body: {e}")))?;
            Payload::Replayable(bytes.to_bytes())
        } else {
            Payload::Once(Some(body))
        };
        // A key set in code wins over the proto's hash_key field.
        let key = extensions.get::<HashKey>().map(|k| k.0).or_else(|| match (&body, method.hash_key) {
            (Payload::Replayable(bytes), Some(field)) => {
                hash_field::key_bytes(bytes, field.number(), field.kind()).map(|key| balance::hash_key(&key))
            }
            _ => None,
        });
        // The breaker judges calls, after retries: one failing instance is
        // the ejection's business, a failing service is the breaker's.
        let admit = breaker.lock().unwrap_or_else(PoisonError::into_inner).admit(Instant::now());
        let mut probe = match admit {
            Admit::Call => BreakerProbe::none(),
            Admit::Probe => BreakerProbe::new(breaker),
            Admit::Refuse { retry_in, last_failure } => {
                return Err(Status::unavailable(format!(
                    "{path}: circuit open for {}: calls keep failing ({last_failure}); next try in {retry_in:?}",
                    self.service.name()
                )));
            }
        };
        let spec = CallSpec { path, parts: &parts, key, deadline, timeout };
        let outcome = match (method.hedge, body) {
            (Some(hedge), Payload::Replayable(bytes)) if method.retry_safe => {
                self.hedged(spec, bytes, hedge).await
            }
            (_, body) => self.attempts(spec, body, method).await,
        };
        probe.done();
        let mut breaker = breaker.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(response) => {
                breaker.succeeded();
                Ok(response)
            }
            Err(CallFailure { status, target }) => {
                if target {
                    let was_closed = !breaker.is_open();
                    breaker.failed(Instant::now(), status.message());
                    if was_closed && breaker.is_open() {
                        tracing::warn!(service = self.service.name(), "circuit opened: {}", status.message());
                        self.breaker_trips.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    breaker.abandoned();
                }
                Err(status)
            }
        }
    }

    /// Sends the call, and again to other endpoints where that is safe. See
    /// the [module docs](self).
    async fn attempts(
        &self,
        spec: CallSpec<'_>,
        mut body: Payload,
        method: MethodSettings,
    ) -> Result<Response<Body>, CallFailure> {
        let CallSpec { path, key, deadline, timeout, .. } = spec;
        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<Arc<EndpointState>> = Vec::new();
        self.budget.deposit();
        for attempt in 1..=method.max_attempts {
            let Some(pick) = self.pick(&tried, key, deadline, &mut rng).await else {
                let message = format!("{path}: deadline of {timeout:?} passed: {}", self.nowhere());
                return Err(CallFailure { status: Status::deadline_exceeded(message), target: false });
            };
            let Some(payload) = body.take() else {
                let message = format!("{path}: the request stream cannot be sent twice");
                return Err(CallFailure { status: Status::internal(message), target: false });
            };
            let request = spec.request(payload);

            let endpoint = &pick.endpoint;
            let mut endpoint_probe =
                if pick.probe { BreakerProbe::new(&endpoint.ejection) } else { BreakerProbe::none() };
            let failure = match tokio::time::timeout_at(deadline, endpoint.call(request)).await {
                // tonic's connection enforces the grpc-timeout too, and may be first.
                Ok(Err(err)) if retry::is_timeout(&err) => None,
                Ok(result) => Some(result),
                Err(_) => None,
            };
            let failure = match failure.map(|result| self.classify(path, endpoint, result)) {
                Some(Ok(response)) => {
                    self.endpoint_answered(endpoint, pick.probe);
                    endpoint_probe.done();
                    return Ok(response);
                }
                Some(Err(failure)) => failure,
                None => {
                    let message = format!(
                        "{path}: no response from {} at {} within the call's {timeout:?} deadline",
                        self.service.name(),
                        endpoint.endpoint
                    );
                    self.endpoint_failed(endpoint, &message);
                    endpoint_probe.done();
                    return Err(CallFailure { status: Status::deadline_exceeded(message), target: true });
                }
            };
            self.endpoint_failed(endpoint, failure.status.message());
            endpoint_probe.done();
            let give_up = |status| Err(CallFailure { status, target: true });
            if !failure.retryable(method.retry_safe) || attempt == method.max_attempts || !body.replayable() {
                return give_up(failure.status);
            }
            if !self.budget.withdraw() {
                self.retries_over_budget.fetch_add(1, Ordering::Relaxed);
                return give_up(with_note(failure.status, "not retried: the retry budget is spent"));
            }
            let backoff = failure.backoff(attempt, &mut rng);
            if Instant::now() + backoff >= deadline {
                return give_up(with_note(failure.status, "not retried: no time left before the deadline"));
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            tried.push(Arc::clone(&pick.endpoint));
        }
        let status = Status::internal(format!("{path}: no attempt was made"));
        Err(CallFailure { status, target: false })
    }

    /// Sends a hedged call: an attempt, then, while none has answered, another
    /// to another instance every `delay`, at most `max` in flight, within the
    /// hedge budget; the first answer wins and the others are cancelled. A
    /// failed attempt is replaced at once by one to another instance.
    async fn hedged(
        &self,
        spec: CallSpec<'_>,
        body: Bytes,
        (delay, max): (Duration, u32),
    ) -> Result<Response<Body>, CallFailure> {
        let CallSpec { path, key, deadline, timeout, .. } = spec;
        let mut rng = fastrand::Rng::new();
        let mut tried: Vec<Arc<EndpointState>> = Vec::new();
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let mut last_failure: Option<Status> = None;
        let mut next_launch = Instant::now();
        self.hedge_budget.deposit();
        loop {
            let may_launch = (in_flight.len() as u32) < max && (tried.len() as u32) < max + MAX_ATTEMPTS;
            if may_launch && Instant::now() >= next_launch {
                let hedge = !in_flight.is_empty();
                let pick = if in_flight.is_empty() {
                    self.pick(&tried, key, deadline, &mut rng).await
                } else if self.hedge_budget.withdraw() {
                    self.endpoints.pick(self.balance, &tried, key, &mut rng)
                } else {
                    None
                };
                match pick {
                    Some(pick) => {
                        if hedge {
                            self.hedges.fetch_add(1, Ordering::Relaxed);
                        }
                        let payload = Body::new(http_body_util::Full::new(body.clone()));
                        let request = spec.request(payload);
                        tried.push(Arc::clone(&pick.endpoint));
                        in_flight.push(attempt(pick, request));
                    }
                    None if in_flight.is_empty() => {
                        let status = last_failure.unwrap_or_else(|| {
                            Status::deadline_exceeded(format!(
                                "{path}: deadline of {timeout:?} passed: {}",
                                self.nowhere()
                            ))
                        });
                        return Err(CallFailure { status, target: true });
                    }
                    None => {}
                }
                next_launch = Instant::now() + delay;
            }
            tokio::select! {
                Some((endpoint, probe, result)) = futures_util::StreamExt::next(&mut in_flight) => {
                    let failure = match self.classify(path, &endpoint, result) {
                        Ok(response) => {
                            self.endpoint_answered(&endpoint, probe.is_probe());
                            probe.done();
                            return Ok(response);
                        }
                        Err(failure) => failure,
                    };
                    self.endpoint_failed(&endpoint, failure.status.message());
                    probe.done();
                    // Replace the failed attempt at once, elsewhere.
                    next_launch = Instant::now();
                    last_failure = Some(failure.status);
                    if in_flight.is_empty() && (tried.len() as u32) >= max + MAX_ATTEMPTS {
                        let status = last_failure.unwrap_or_else(|| Status::unavailable(path.to_owned()));
                        return Err(CallFailure { status, target: true });
                    }
                }
                () = tokio::time::sleep_until(next_launch.min(deadline)) => {
                    if Instant::now() >= deadline {
                        let message = format!(
                            "{path}: no response from {} within the call's {timeout:?} deadline ({} attempts)",
                            self.service.name(),
                            tried.len()
                        );
                        return Err(CallFailure { status: Status::deadline_exceeded(message), target: true });
                    }
                }
            }
        }
    }

    /// An attempt's result: the response if it is an answer (success or an
    /// application error), else the failure of the target.
    fn classify(
        &self,
        path: &str,
        endpoint: &EndpointState,
        result: Result<Response<Body>, tonic::transport::Error>,
    ) -> Result<Response<Body>, retry::Failure> {
        match result {
            Ok(response) => match retry::failure_in_headers(response.headers()) {
                None => Ok(response),
                Some(failure) => Err(failure),
            },
            Err(err) => Err(retry::failure_of_error(
                &err,
                Status::unavailable(format!(
                    "{path}: cannot reach {} at {}: {}",
                    self.service.name(),
                    endpoint.endpoint,
                    crate::error::error_chain(&err)
                )),
            )),
        }
    }

    /// Records an answer from an endpoint. An answer to a probe brings an
    /// ejected endpoint back only if its latency is no longer far above its
    /// peers': a slow instance that answers is still slow.
    fn endpoint_answered(&self, endpoint: &EndpointState, probe: bool) {
        let still_slow =
            probe.then(|| self.outlier_limit()).flatten().filter(|limit| endpoint.last_latency() > *limit);
        let mut ejection = endpoint.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        match still_slow {
            Some(limit) => {
                let reason = format!("probe answered in {:?}, above {limit:?}", endpoint.last_latency());
                ejection.force_open(Instant::now(), &reason);
            }
            None => ejection.succeeded(),
        }
    }

    /// The latency above which an endpoint is an outlier: far above the
    /// median of the endpoints in rotation (`None` with too few of them).
    fn outlier_limit(&self) -> Option<Duration> {
        let list = self.endpoints.snapshot();
        let mut latencies: Vec<Duration> =
            list.iter().filter(|e| e.in_rotation()).map(|e| e.mean_latency()).collect();
        if latencies.len() < 2 {
            return None;
        }
        latencies.sort_unstable();
        let median = latencies[latencies.len() / 2];
        Some(median.mul_f64(OUTLIER_FACTOR).max(median + OUTLIER_MARGIN))
    }

    /// Records a failure of one endpoint, ejecting it after several.
    fn endpoint_failed(&self, endpoint: &EndpointState, failure: &str) {
        let mut ejection = endpoint.ejection.lock().unwrap_or_else(PoisonError::into_inner);
        let was_in = ejection.is_closed();
        ejection.failed(Instant::now(), failure);
        if was_in && !ejection.is_closed() {
            tracing::info!(service = self.service.name(), endpoint = %endpoint.endpoint, "ejecting: {failure}");
            self.ejections.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One method of a channel's service.
#[derive(Debug)]
struct Method {
    settings: MethodSettings,
    /// Judges this method's calls to the service.
    breaker: Mutex<breaker::Breaker>,
}

/// How a channel treats one method.
#[derive(Debug, Clone, Copy)]
struct MethodSettings {
    /// Whether it may be retried after reaching a handler (from the proto).
    retry_safe: bool,
    /// Whether its request can be sent again (a single message).
    replayable: bool,
    /// The deadline of a call that sets none.
    timeout: Duration,
    /// Attempts, the first included.
    max_attempts: u32,
    /// Hedging: another attempt after this delay, at most this many in flight.
    hedge: Option<(Duration, u32)>,
    /// The request field to route by with consistent hashing.
    hash_key: Option<HashKeyField>,
}

impl MethodSettings {
    /// For methods missing from the descriptor.
    const UNKNOWN: MethodSettings = MethodSettings {
        retry_safe: false,
        replayable: true,
        timeout: DEFAULT_TIMEOUT,
        max_attempts: MAX_ATTEMPTS,
        hedge: None,
        hash_key: None,
    };
}

/// What every attempt of one call shares.
#[derive(Clone, Copy)]
struct CallSpec<'a> {
    path: &'a str,
    parts: &'a http::request::Parts,
    /// The consistent-hash key, if the call has one.
    key: Option<u64>,
    deadline: Instant,
    /// The whole call's time budget, for messages.
    timeout: Duration,
}

impl CallSpec<'_> {
    /// The request of one attempt: the call's headers, with what is left of
    /// its deadline as `grpc-timeout`.
    fn request(&self, body: Body) -> Request<Body> {
        let mut request = Request::from_parts(self.parts.clone(), body);
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if let Ok(value) = grpc_timeout_value(remaining) {
            request.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        request
    }
}

/// `timeout` as a `grpc-timeout` header value, encoded once, not copied.
fn grpc_timeout_value(timeout: Duration) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(encode_grpc_timeout(timeout)))
}

/// One attempt of a hedged call, holding its endpoint's probe slot if any.
async fn attempt(
    pick: balance::Pick,
    request: Request<Body>,
) -> (Arc<EndpointState>, OwnedProbe, Result<Response<Body>, tonic::transport::Error>) {
    let probe = OwnedProbe(pick.probe.then(|| Arc::clone(&pick.endpoint)));
    let result = pick.endpoint.call(request).await;
    (pick.endpoint, probe, result)
}

/// An endpoint's probe slot, given back if the attempt is cancelled.
struct OwnedProbe(Option<Arc<EndpointState>>);

impl OwnedProbe {
    /// Whether the attempt is an endpoint's probe.
    fn is_probe(&self) -> bool {
        self.0.is_some()
    }

    /// The outcome was reported.
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for OwnedProbe {
    fn drop(&mut self) {
        if let Some(endpoint) = self.0.take() {
            endpoint.ejection.lock().unwrap_or_else(PoisonError::into_inner).abandoned();
        }
    }
}

/// How a call failed, and whether that says the target service is failing
/// (which the circuit breaker counts).
struct CallFailure {
    status: Status,
    target: bool,
}

fn with_note(status: Status, note: &str) -> Status {
    Status::new(status.code(), format!("{} ({note})", status.message()))
}

/// A request body: kept to be sent again, or a stream sent once.
enum Payload {
    Replayable(Bytes),
    Once(Option<Body>),
}

impl Payload {
    fn take(&mut self) -> Option<Body> {
        match self {
            Payload::Replayable(bytes) => Some(Body::new(http_body_util::Full::new(bytes.clone()))),
            Payload::Once(body) => body.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Payload::Replayable(_))
    }
}

/// The half-open probe slot an attempt holds, on a method's breaker or an
/// endpoint's ejection, if any: given back if the call ends without an
/// outcome (cancelled by the caller).
struct BreakerProbe<'a> {
    breaker: Option<&'a Mutex<breaker::Breaker>>,
}

impl<'a> BreakerProbe<'a> {
    fn none() -> Self {
        BreakerProbe { breaker: None }
    }

    fn new(breaker: &'a Mutex<breaker::Breaker>) -> Self {
        BreakerProbe { breaker: Some(breaker) }
    }

    /// The outcome was reported to the breaker.
    fn done(&mut self) {
        self.breaker = None;
    }
}

impl Drop for BreakerProbe<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            breaker.lock().unwrap_or_else(PoisonError::into_inner).abandoned();
        }
    }
}

impl Service<Request<Body>> for Channel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Calls wait for an endpoint inside `call`, bounded by their deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { shared.call(req).await.map_err(|status| Box::new(status) as BoxError) })
    }
}
