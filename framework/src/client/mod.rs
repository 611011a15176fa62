//! The channel under every generated client.
//!
//! A [`Channel`] belongs to one service. It follows the service's instances
//! through a [`Registry`] and spreads calls over them with power-of-two-choices
//! over peak-EWMA latency: of two instances picked at random, the one with
//! the lower expected latency (recent round trips, times calls in flight) wins.
//!
//! ```text
//! Channel      deadline: the call's own (`Request::set_timeout`, else DEFAULT_TIMEOUT),
//!              shortened to the inbound call's remaining deadline; sent as grpc-timeout
//!   -> Buffer  makes the balancer shareable by clones of the channel
//!   -> P2C     tower::balance::p2c over PeakEwma, fed by Registry::resolve changes
//!   -> one tonic connection per endpoint, connected lazily
//! ```
//!
//! Calls made before any instance is known wait for one, until their deadline.
//! Errors come back as gRPC statuses naming the method, the service, its
//! registry and what went wrong: `UNAVAILABLE` when no instance can be
//! reached, `DEADLINE_EXCEEDED` when the deadline passes.

mod endpoint;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::util::BoxService;
use tower_service::Service;

use crate::context::{GRPC_TIMEOUT, decode_grpc_timeout, encode_grpc_timeout, outbound_deadline};
use crate::descriptor::ServiceDescriptor;
use crate::error::{BoxError, Error};
use crate::registry::{AbortOnDrop, Endpoint, Registry};

/// The deadline of a call that sets none of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many calls may wait for the balancer at once, per channel.
const BUFFER: usize = 1024;

/// The latency an endpoint is assumed to have before it answered once. Kept
/// optimistic, so a new instance wins its first comparisons and is tried at
/// once; its first real answers then set its estimate (peak-EWMA jumps up on
/// a slow answer right away, so a slow newcomer loses quickly).
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// How fast peak-EWMA forgets a latency peak.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// How long to wait before resolving again after the registry failed.
const RESOLVE_RETRY: Duration = Duration::from_millis(500);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Balanced = Buffer<Request<Body>, BoxFuture<Result<Response<Body>, BoxError>>>;

/// A channel to the instances of one service. Cheap to clone; clones share
/// connections and the balancer.
#[derive(Clone)]
pub struct Channel {
    inner: Balanced,
    target: Arc<Target>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("service", &self.target.service.name())
            .field("registry", &self.target.registry)
            .field("endpoints", &self.target.endpoints.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a channel knows about where its calls go.
#[derive(Debug)]
struct Target {
    service: &'static ServiceDescriptor,
    registry: String,
    /// Endpoints in the balancer now.
    endpoints: AtomicUsize,
    /// Why the registry could not be followed, while it cannot.
    registry_error: Mutex<Option<String>>,
    /// Calls sent to each endpoint since the channel was made.
    calls: Mutex<BTreeMap<Endpoint, Arc<AtomicU64>>>,
}

impl Channel {
    /// A channel to `service` through `registry`. Returns at once; instances
    /// are found in the background, and calls wait for the first one.
    ///
    /// # Errors
    ///
    /// When called outside a Tokio runtime.
    pub fn discover(registry: &Registry, service: &'static ServiceDescriptor) -> Result<Self, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime("Channel::discover"));
        }
        let target = Arc::new(Target {
            service,
            registry: registry.url().to_owned(),
            endpoints: AtomicUsize::new(0),
            registry_error: Mutex::new(None),
            calls: Mutex::new(BTreeMap::new()),
        });
        let (changes, rx) = tokio::sync::mpsc::channel(64);
        let follower = tokio::spawn(follow(registry.clone(), target.clone(), changes));
        let discover = EndpointChanges { rx, _follower: AbortOnDrop(follower) };
        let discover =
            PeakEwmaDiscover::new(discover, DEFAULT_RTT, EWMA_DECAY, CompleteOnResponse::default());
        let balance = tower::balance::p2c::Balance::new(discover);
        let inner = Buffer::new(BoxService::new(balance), BUFFER);
        Ok(Channel { inner, target })
    }

    /// The service this channel calls.
    pub fn service(&self) -> &'static ServiceDescriptor {
        self.target.service
    }

    /// How many calls went to each endpoint through this channel and its
    /// clones, including endpoints that have since left.
    pub fn calls_per_endpoint(&self) -> Vec<(Endpoint, u64)> {
        let calls = self.target.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.iter().map(|(endpoint, n)| (endpoint.clone(), n.load(Ordering::Relaxed))).collect()
    }
}

/// Follows the registry and feeds endpoint changes to the balancer. Keeps the
/// last known endpoints while the registry cannot be reached.
async fn follow(
    registry: Registry,
    target: Arc<Target>,
    changes: tokio::sync::mpsc::Sender<Change<Endpoint, endpoint::Counted>>,
) {
    let service = target.service.name();
    let resolution = loop {
        match registry.resolve(service).await {
            Ok(resolution) => break resolution,
            Err(err) => {
                let first = target.set_registry_error(Some(err.to_string()));
                if first {
                    tracing::warn!(service, "cannot resolve: {err}; retrying");
                }
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    };
    target.set_registry_error(None);
    let mut stream = std::pin::pin!(resolution.into_changes());
    while let Some(change) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await
    {
        let change = match change {
            Change::Insert(key, endpoint) => match target.connect(&endpoint) {
                Ok(connection) => {
                    target.endpoints.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(service, %endpoint, "endpoint added");
                    Change::Insert(key, connection)
                }
                Err(err) => {
                    tracing::warn!(service, %endpoint, "ignoring endpoint: {err}");
                    continue;
                }
            },
            Change::Remove(key) => {
                target.endpoints.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(service, endpoint = %key, "endpoint removed");
                Change::Remove(key)
            }
        };
        if changes.send(change).await.is_err() {
            return;
        }
    }
}

impl Target {
    /// Records the registry's state; true if this starts an outage.
    fn set_registry_error(&self, error: Option<String>) -> bool {
        let mut current = self.registry_error.lock().unwrap_or_else(PoisonError::into_inner);
        let started = current.is_none() && error.is_some();
        *current = error;
        started
    }

    /// A lazily connected, counted service for `endpoint`.
    fn connect(&self, endpoint: &Endpoint) -> Result<endpoint::Counted, String> {
        let counter = {
            let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
            calls.entry(endpoint.clone()).or_default().clone()
        };
        endpoint::Counted::connect(endpoint, counter)
    }

    /// What to tell a caller whose call could not be sent anywhere.
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

    /// The one place a failure becomes a gRPC status. `err` is `None` when
    /// the call's own deadline passed.
    fn status(
        &self,
        path: &str,
        timeout: Duration,
        err: Option<&(dyn std::error::Error + 'static)>,
    ) -> Status {
        if let Some(status) = find::<Status>(err) {
            return status.clone();
        }
        let timed_out = err.is_none() || find::<tonic::TimeoutExpired>(err).is_some();
        let endpoints = self.endpoints.load(Ordering::Relaxed);
        match (timed_out, err) {
            (true, _) if endpoints == 0 => Status::deadline_exceeded(format!(
                "{path}: deadline of {timeout:?} passed: {}",
                self.nowhere()
            )),
            (true, _) => Status::deadline_exceeded(format!(
                "{path}: no response from {} within the call's {timeout:?} deadline",
                self.service.name()
            )),
            (false, _) if endpoints == 0 => Status::unavailable(format!("{path}: {}", self.nowhere())),
            (false, err) => Status::unavailable(format!(
                "{path}: cannot reach {} (registry {}): {}",
                self.service.name(),
                self.registry,
                err.map(crate::app::error_chain).unwrap_or_default()
            )),
        }
    }
}

/// The first error of type `T` in `err`'s source chain.
fn find<'a, T: std::error::Error + 'static>(
    err: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a T> {
    let mut source = err;
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<T>() {
            return Some(found);
        }
        source = cause.source();
    }
    None
}

/// The balancer's view of endpoint changes.
struct EndpointChanges {
    rx: tokio::sync::mpsc::Receiver<Change<Endpoint, endpoint::Counted>>,
    _follower: AbortOnDrop,
}

impl futures_core::Stream for EndpointChanges {
    type Item = Result<Change<Endpoint, endpoint::Counted>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|change| change.map(Ok))
    }
}

impl Service<Request<Body>> for Channel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Box::new(self.target.status("(connect)", Duration::ZERO, Some(&*e))) as BoxError)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let own = req
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| decode_grpc_timeout(v.as_bytes()))
            .unwrap_or(DEFAULT_TIMEOUT);
        let now = Instant::now();
        let deadline = outbound_deadline(Some(own)).unwrap_or(now + own);
        let timeout = deadline.saturating_duration_since(now);
        let path = req.uri().path().to_owned();
        if timeout.is_zero() {
            let status =
                Status::deadline_exceeded(format!("{path}: the deadline passed before the call was sent"));
            return ResponseFuture { state: Err(Some(status)) };
        }
        if let Ok(value) = HeaderValue::from_str(&encode_grpc_timeout(timeout)) {
            req.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        ResponseFuture {
            state: Ok(Pending {
                call: Box::pin(self.inner.call(req)),
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                target: self.target.clone(),
                path,
                timeout,
            }),
        }
    }
}

/// The future of a [`Channel`] call.
pub struct ResponseFuture {
    state: Result<Pending, Option<Status>>,
}

struct Pending {
    call: BoxFuture<Result<Response<Body>, BoxError>>,
    sleep: Pin<Box<Sleep>>,
    target: Arc<Target>,
    path: String,
    timeout: Duration,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            Ok(pending) => {
                if let Poll::Ready(result) = pending.call.as_mut().poll(cx) {
                    return Poll::Ready(result.map_err(|e| {
                        Box::new(pending.target.status(&pending.path, pending.timeout, Some(&*e))) as BoxError
                    }));
                }
                ready!(pending.sleep.as_mut().poll(cx));
                Poll::Ready(Err(Box::new(pending.target.status(&pending.path, pending.timeout, None))))
            }
            Err(status) => Poll::Ready(Err(Box::new(
                status.take().unwrap_or_else(|| Status::internal("call polled after completion")),
            ))),
        }
    }
}
