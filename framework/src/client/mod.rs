//! The channel under every generated client: the Trellis client stack.
//!
//! A [`Channel`] belongs to one service. It follows the service's instances
//! through a [`Registry`](crate::Registry), and takes every call through a stack of tower
//! layers, each in its own module, composed in one place
//! ([`ChannelBuilder::build`]) in this order:
//!
//! ```text
//! metrics           duration per method and final code, calls failed before
//!                   sending; the channel on the status page       (metrics.rs)
//! trace             a `traceparent` on every call: a child of the call being
//!                   handled, else a new trace; `tracestate` passed along;
//!                   a client span exported with feature `otel`     (trace.rs)
//! [your layers]     ChannelBuilder::layer: around the whole call
//! deadline          the call's own timeout, else the method's, shortened to the
//!                   inbound call's remaining deadline; refused if already passed;
//!                   the bound on everything below                     (deadline.rs)
//! breaker           per method: fails fast while the target keeps failing;
//!                   judges whole calls, after retries                 (breaker/)
//! retry / hedge     only where safe, another instance each time, jittered
//!                   backoff or server pushback, never past the deadline,
//!                   within a budget; hedging where the proto asks       (retry/)
//! [your layers]     ChannelBuilder::attempt_layer: around each attempt
//! balancer          follows the registry; P2C over peak-EWMA x in flight,
//!                   round robin, or consistent hashing; latency outliers
//!                   ejected; waits for a first instance until the deadline
//!                                                                       (balance/)
//! endpoint          per instance: grpc-timeout per attempt, load and latency,
//!                   failures told from answers, passive ejection and probes,
//!                   active health (grpc.health.v1 Watch)              (endpoint/)
//! transport         one HTTP/2 connection per instance, made on the first
//!                   call and again when it breaks; each call sent from the
//!                   caller's task; the endpoint's scheme picks plaintext or
//!                   TLS                          (crate::transport::Connection)
//! ```
//!
//! Every failure the stack produces is a typed [`CallError`], attached as
//! the source of the returned [`Status`](tonic::Status) and mapped to a gRPC
//! code in one place; its message names the method, the service, and what
//! went wrong.
//!
//! ```no_run
//! # async fn run(ctx: trellis::Context, descriptor: &'static trellis::ServiceDescriptor) -> Result<(), trellis::Error> {
//! use trellis::client::Channel;
//!
//! // What `FooClient::discover(&ctx)` does, with a layer of your own
//! // around each attempt.
//! let channel = Channel::builder(&ctx, descriptor)
//!     .attempt_layer(tower::timeout::TimeoutLayer::new(std::time::Duration::from_millis(300)))
//!     .build()?;
//! # Ok(()) }
//! ```

mod balance;

/// The hash-key field reader, for the fuzz targets: reached through
/// [`crate::fuzzing`] only.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_hash_key(frame: &[u8], number: u32, kind: crate::HashKeyKind) -> Option<Vec<u8>> {
    balance::hash_field::key_bytes(frame, number, kind)
}
mod breaker;
mod config;
mod deadline;
mod endpoint;
mod metrics;
mod retry;
mod stats;
#[cfg(test)]
mod testing;
mod trace;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

pub use self::balance::{Balance, Balancer, HashKey};
pub use self::breaker::{BreakerFuture, BreakerLayer, BreakerService};
pub use self::config::{ClientConfig, Clients, DEFAULT_SUBSET_SIZE, MethodConfig};
pub use self::deadline::{Deadline, DeadlineFuture, DeadlineLayer, DeadlineService};
pub use self::endpoint::{EndpointFuture, EndpointLayer, EndpointService, EndpointState, OutlierLimit};
pub use self::metrics::{CallBody, ClientMetricsFuture, ClientMetricsLayer, ClientMetricsService};
pub use self::retry::{RetryFuture, RetryLayer, RetryService};
pub use self::stats::ChannelStats;
pub use self::trace::{TraceFuture, TraceLayer, TraceService};
pub use crate::error::{CallError, NotRetried};
pub use crate::protocol::DEFAULT_TIMEOUT;

use self::balance::Routing;
use self::metrics::{ServiceMetrics, View};
use self::retry::RetryPolicy;
use self::stats::Counters;
use crate::descriptor::{ServiceDescriptor, StreamingKind};
use crate::error::{BoxError, Error, into_status};
use crate::metrics::ChannelView;
use crate::protocol::per_method::PerMethod;
use crate::registry::Endpoint;

/// A whole call or one attempt, type-erased once where your layers are.
pub type BoxCallService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The stack without layers of your own: no boxing between the layers.
type Plain = ClientMetricsService<TraceService<DeadlineService<BreakerService<RetryService<Balancer>>>>>;

/// The stack with layers of your own, type-erased once where they are.
type Layered = ClientMetricsService<TraceService<BoxCallService>>;

/// The stack as built.
#[derive(Clone)]
enum Stack {
    Plain(Plain),
    Layered(Layered),
}

/// A channel to the instances of one service. Cheap to clone; clones share
/// connections, balancer, breakers and retry budget.
#[derive(Clone)]
pub struct Channel {
    service: &'static ServiceDescriptor,
    registry: Arc<str>,
    balancer: Balancer,
    counters: Arc<Counters>,
    stack: Stack,
    message_limits: (usize, usize),
    /// What the status page reads; listed there while the channel lives.
    _view: Arc<dyn ChannelView>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("service", &self.service.name())
            .field("registry", &self.registry)
            .field("endpoints", &self.balancer.endpoints().len())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel to `service`, with its instances found and its settings
    /// taken from `clients` (the application [`Context`](crate::Context),
    /// a [`Clients`], or a bare [`Registry`](crate::Registry)). Returns at once; instances
    /// are found in the background, and calls wait for the first one.
    ///
    /// # Errors
    ///
    /// When called outside a Tokio runtime.
    pub fn discover(clients: impl Into<Clients>, service: &'static ServiceDescriptor) -> Result<Self, Error> {
        Channel::builder(clients, service).build()
    }

    /// [`discover`](Self::discover), with another balancing strategy
    /// (which a `balance` in the service's client settings overrides).
    ///
    /// # Errors
    ///
    /// When called outside a Tokio runtime.
    pub fn with_balance(
        clients: impl Into<Clients>,
        service: &'static ServiceDescriptor,
        balance: Balance,
    ) -> Result<Self, Error> {
        Channel::builder(clients, service).balance(balance).build()
    }

    /// A builder, to add layers of your own to the stack.
    pub fn builder(clients: impl Into<Clients>, service: &'static ServiceDescriptor) -> ChannelBuilder {
        ChannelBuilder { clients: clients.into(), service, balance: None, outer: None, attempt: None }
    }

    /// The largest response and request messages, in bytes, that the
    /// generated client applies: `(decoding, encoding)`, from
    /// `[clients."SERVICE"] max_decoding_size` and `max_encoding_size`.
    pub fn message_limits(&self) -> (usize, usize) {
        self.message_limits
    }

    /// The service this channel calls.
    pub fn service(&self) -> &'static ServiceDescriptor {
        self.service
    }

    /// The endpoints the balancer knows now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.balancer.endpoints()
    }

    /// How many attempts went to each endpoint through this channel and its
    /// clones, including endpoints that have since left.
    pub fn calls_per_endpoint(&self) -> Vec<(Endpoint, u64)> {
        self.counters.snapshot().calls_per_endpoint
    }

    /// Counters of what the stack did: retries, ejections, breaker trips.
    pub fn stats(&self) -> ChannelStats {
        self.counters.snapshot()
    }
}

type LayerFn = Arc<dyn Fn(BoxCallService) -> BoxCallService + Send + Sync>;

/// Builds a [`Channel`]; see [`Channel::builder`].
#[must_use]
pub struct ChannelBuilder {
    clients: Clients,
    service: &'static ServiceDescriptor,
    balance: Option<Balance>,
    outer: Option<LayerFn>,
    attempt: Option<LayerFn>,
}

impl fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("service", &self.service.name())
            .field("balance", &self.balance)
            .field("outer", &self.outer.is_some())
            .field("attempt", &self.attempt.is_some())
            .finish_non_exhaustive()
    }
}

/// Adds `layer` on top of what `current` makes.
fn stack_layer<L>(current: Option<LayerFn>, layer: L) -> LayerFn
where
    L: Layer<BoxCallService> + Send + Sync + 'static,
    L::Service: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    Arc::new(move |inner: BoxCallService| {
        let inner = match &current {
            Some(current) => current(inner),
            None => inner,
        };
        BoxCloneSyncService::new(tower::util::MapErrLayer::new(Into::into).layer(layer.layer(inner)))
    })
}

impl ChannelBuilder {
    /// Spreads calls with `balance` (unless the service's client settings
    /// say otherwise).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = Some(balance);
        self
    }

    /// Wraps the whole call (above the deadline): the layer sees each call
    /// once, and its result after retries. Layers added later wrap those
    /// added before; compose several with `tower::ServiceBuilder`.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxCallService> + Send + Sync + 'static,
        L::Service: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        self.outer = Some(stack_layer(self.outer.take(), layer));
        self
    }

    /// Wraps each attempt (below retries, above the balancer): the layer
    /// sees every attempt, retries and hedges included, with the call's
    /// [`Deadline`] in its extensions.
    pub fn attempt_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxCallService> + Send + Sync + 'static,
        L::Service: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request<Body>>>::Error: Into<BoxError>,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        self.attempt = Some(stack_layer(self.attempt.take(), layer));
        self
    }

    /// Composes the stack: the one place its order is decided (see the
    /// [module docs](self)).
    ///
    /// # Errors
    ///
    /// When called outside a Tokio runtime.
    pub fn build(self) -> Result<Channel, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime("Channel::discover"));
        }
        let ChannelBuilder { clients, service, balance, outer, attempt } = self;
        let config = clients.config(service.name());
        let settings = MethodSettings::of(service, &config);
        let service_metrics = clients
            .metrics()
            .map_or_else(ServiceMetrics::default, |metrics| ServiceMetrics::new(metrics, service.name()));
        let counters = Arc::new(Counters::new(service_metrics));
        let balance = config.balance.or(balance).unwrap_or_default();
        let registry = clients.registry();

        let routing = Routing {
            balance,
            zone: clients.zone().map(str::to_owned),
            subset_size: config.subset_size.unwrap_or(DEFAULT_SUBSET_SIZE),
        };
        let balancer = Balancer::new(
            registry,
            service.name(),
            routing,
            balance::connect(clients.tls()),
            counters.clone(),
        );
        let deadline = DeadlineLayer::new(
            service.name(),
            PerMethod::new(settings.iter().map(|(path, s)| (*path, s.timeout)), DEFAULT_TIMEOUT),
        );
        let breaker =
            BreakerLayer::new(service.name(), settings.iter().map(|(path, _)| *path), counters.clone());
        let retry = RetryLayer::new(
            service.name(),
            PerMethod::new(settings.iter().map(|(path, s)| (*path, s.retry)), RetryPolicy::UNKNOWN),
            counters.clone(),
        );
        let metrics = ClientMetricsLayer::new(service, counters.clone());
        let view: Arc<dyn ChannelView> = Arc::new(View {
            snapshot: {
                let (balancer, breaker) = (balancer.clone(), breaker.clone());
                move || balancer.snapshot(breaker.snapshot())
            },
        });
        counters.metrics.publish(Arc::downgrade(&view));
        let stack = match (outer, attempt) {
            (None, None) => Stack::Plain(
                metrics.layer(TraceLayer.layer(deadline.layer(breaker.layer(retry.layer(balancer.clone()))))),
            ),
            (outer, attempt) => {
                let attempts = BoxCloneSyncService::new(balancer.clone());
                let attempts = attempt.map_or(attempts.clone(), |layer| layer(attempts));
                let call = BoxCloneSyncService::new(deadline.layer(breaker.layer(retry.layer(attempts))));
                Stack::Layered(
                    metrics.layer(TraceLayer.layer(outer.map_or(call.clone(), |layer| layer(call)))),
                )
            }
        };
        let message_limits = config.message_limits();
        Ok(Channel {
            service,
            registry: registry.url().into(),
            balancer,
            counters,
            stack,
            message_limits,
            _view: view,
        })
    }
}

/// How the stack treats one method: the proto's policy with the
/// configuration's overrides.
#[derive(Debug, Clone, Copy)]
struct MethodSettings {
    timeout: Duration,
    retry: RetryPolicy,
}

impl MethodSettings {
    fn of(service: &'static ServiceDescriptor, config: &ClientConfig) -> Vec<(&'static str, MethodSettings)> {
        service
            .methods()
            .iter()
            .map(|m| {
                // The configuration overrides the proto's policy.
                let overrides = config.methods.get(m.name()).copied().unwrap_or_default();
                let policy = m.policy();
                let retry = RetryPolicy {
                    retry_safe: m.idempotency().is_retry_safe(),
                    replayable: matches!(m.kind(), StreamingKind::Unary | StreamingKind::ServerStreaming),
                    max_attempts: overrides.max_attempts.unwrap_or(policy.max_attempts()).max(1),
                    hedge: policy.hedge().map(|h| (h.delay(), h.max_attempts())),
                    hash_key: policy.hash_key(),
                };
                let timeout = overrides.timeout.or(policy.timeout()).unwrap_or(DEFAULT_TIMEOUT);
                (m.path(), MethodSettings { timeout, retry })
            })
            .collect()
    }
}

impl Service<Request<Body>> for Channel {
    type Response = Response<CallBody<Body>>;
    type Error = tonic::Status;
    type Future = ChannelFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.stack {
            Stack::Plain(stack) => stack.poll_ready(cx).map_err(into_status),
            Stack::Layered(stack) => stack.poll_ready(cx).map_err(into_status),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match &mut self.stack {
            Stack::Plain(stack) => ChannelFuture { kind: Kind::Plain { inner: stack.call(req) } },
            Stack::Layered(stack) => ChannelFuture { kind: Kind::Layered { inner: stack.call(req) } },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Channel`].
    pub struct ChannelFuture {
        #[pin]
        kind: Kind,
    }
}

pin_project_lite::pin_project! {
    #[project = ChannelProj]
    enum Kind {
        /// Through the built-in layers.
        Plain { #[pin] inner: <Plain as Service<Request<Body>>>::Future },
        /// Through layers of your own.
        Layered { #[pin] inner: <Layered as Service<Request<Body>>>::Future },
    }
}

impl std::fmt::Debug for ChannelFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelFuture")
    }
}

impl Future for ChannelFuture {
    type Output = Result<Response<CallBody<Body>>, tonic::Status>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            ChannelProj::Plain { inner } => inner.poll(cx).map_err(into_status),
            ChannelProj::Layered { inner } => inner.poll(cx).map_err(into_status),
        }
    }
}
