//! The Trellis server: your generated services, plus everything a service
//! needs in production, always on.
//!
//! - `grpc.health.v1.Health`: each service reports `SERVING` once the server
//!   listens, and every service (and the server as a whole, `""`) turns
//!   `NOT_SERVING` the moment shutdown starts.
//! - Server reflection, `grpc.reflection.v1` and `v1alpha`, describing every
//!   added service from the descriptors `trellis-build` embeds.
//! - A `tracing` span per call with method, status and duration.
//! - The inbound `grpc-timeout` set as the [request context](crate::context),
//!   so outbound calls inherit the remaining deadline; a call that arrives
//!   with no time left is refused with `DEADLINE_EXCEEDED` unrun.
//! - Load shedding: past `server.max_concurrent_calls` calls in flight, a call
//!   is refused at once with `RESOURCE_EXHAUSTED` and `grpc-retry-pushback-ms`.
//! - Graceful shutdown on SIGINT or SIGTERM.
//! - TLS and mutual TLS with the `tls` feature and settings
//!   ([`ServerBuilder::tls`], `docs/tls.md`): the instances register as
//!   `https`, and `tls.allow` restricts each service to some client
//!   identities ([`PeerIdentity`](crate::tls::PeerIdentity)).
//!
//! With a [`Registry`], each service is registered once the server listens
//! and every service is `SERVING`, under the advertised address (see
//! [`ServerBuilder::advertise`]).
//!
//! Shutdown runs in this order: health goes `NOT_SERVING`; the instances
//! are deregistered; for
//! `shutdown.propagation_delay` the server keeps serving while load balancers
//! and health checkers notice; then it stops accepting connections and
//! drains: in-flight unary calls run to completion, open server streams are
//! closed with `UNAVAILABLE` once the messages already produced are sent; after
//! `shutdown.drain_timeout` whatever is left is closed.
//!
//! ```no_run
//! # use std::time::Duration;
//! # async fn run() -> Result<(), trellis::Error> {
//! trellis::Server::builder()
//!     .listen("127.0.0.1:50051".parse().unwrap())
//!     .drain_timeout(Duration::from_secs(5))
//!     // .add_service(OrderPaymentServer::new(MyPayments::default()))
//!     .serve()
//!     .await
//! # }
//! ```

mod allow;
mod config;
mod deadline;
mod drain;
mod faults;
mod limit;
mod limits;
pub(crate) mod metrics;
mod trace;

pub use config::{DEFAULT_MAX_CONCURRENT_CALLS, FaultsConfig, InstanceConfig, ServerConfig, ShutdownConfig};
pub use limits::{DEFAULT_MAX_MESSAGE_SIZE, Http2Config, IdleTimeout, MessageLimits};

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use tower::ServiceBuilder;
use tower::util::{BoxCloneSyncService, Either, MapErrLayer};
use tower_layer::Layer;
use tower_service::Service;

use crate::admin::AdminServer;
use crate::descriptor::{DescribedService, ServiceDescriptor};
use crate::error::{BoxError, Error};
use crate::metrics::{Metrics, ServerInfo, ServerState};
use crate::protocol::BUILTIN_STREAMING_PATHS;
use crate::registry::{Endpoint, Instance, Lease, Metadata, Registry};
use crate::transport::tls::TlsConfig;
use crate::transport::{Coalesce, Incoming, Listener};

/// What every accepted connection is served through: its writes
/// coalesced, and closed once it sends nothing for `idle_timeout`.
fn connection<IO>(io: IO, idle_timeout: Duration) -> Coalesce<IdleTimeout<IO>> {
    Coalesce::new(IdleTimeout::new(io, idle_timeout))
}

/// How long one deregistration may take during shutdown.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A whole server's run, boxed where it is made: `serve` is then compiled
/// once, in this crate, and not again in every service's binary (an `async
/// fn` is compiled where it is first polled).
type Serving = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// One listener's server, until it has drained.
type ServeFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// A call to the server's services, type-erased once where your layers are.
pub type BoxServerService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

type ServerLayerFn = Arc<dyn Fn(BoxServerService) -> BoxServerService + Send + Sync>;

/// Adds one service to the routes once the message limits are known.
type AddServiceFn = Box<dyn FnOnce(axum::Router, MessageLimits) -> axum::Router + Send + Sync>;

/// Entry point: `Server::builder()`.
#[derive(Debug, Clone, Copy)]
pub struct Server;

impl Server {
    /// A builder with the defaults: `127.0.0.1:0`, default shutdown timings,
    /// stopping on SIGINT or SIGTERM.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown: ShutdownConfig::default(),
            faults: FaultsConfig::default(),
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            http2: Http2Config::default(),
            messages: MessageLimits::default(),
            access_log: false,
            registry: None,
            advertise: None,
            metadata: Metadata::default(),
            routes: Vec::new(),
            services: Vec::new(),
            signal: None,
            layer: None,
            config_check: None,
            tls: None,
            metrics: None,
            admin: None,
            rest: None,
        }
    }
}

/// Configures and starts a [`Server`].
#[must_use]
pub struct ServerBuilder {
    listen: SocketAddr,
    shutdown: ShutdownConfig,
    faults: FaultsConfig,
    max_concurrent_calls: usize,
    http2: Http2Config,
    messages: MessageLimits,
    access_log: bool,
    registry: Option<Registry>,
    advertise: Option<String>,
    metadata: Metadata,
    routes: Vec<AddServiceFn>,
    services: Vec<&'static ServiceDescriptor>,
    signal: Option<ShutdownSignal>,
    layer: Option<ServerLayerFn>,
    config_check: Option<Box<dyn FnOnce() -> Result<(), Error> + Send + Sync>>,
    tls: Option<TlsConfig>,
    metrics: Option<Metrics>,
    admin: Option<SocketAddr>,
    rest: Option<SocketAddr>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("listen", &self.listen)
            .field("shutdown", &self.shutdown)
            .field("registry", &self.registry.as_ref().map(Registry::url))
            .field("services", &self.services.iter().map(|s| s.name()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// The address to listen on; port 0 picks a free port (see
    /// [`BoundServer::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// How long draining may take before the remaining calls are cut.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown.drain_timeout = timeout;
        self
    }

    /// How long to keep serving after turning `NOT_SERVING`, before draining.
    pub fn propagation_delay(mut self, delay: Duration) -> Self {
        self.shutdown.propagation_delay = delay;
        self
    }

    /// How many application calls may run at once; past that, calls are
    /// refused at once with `RESOURCE_EXHAUSTED` and a pushback hint.
    pub fn max_concurrent_calls(mut self, max: usize) -> Self {
        self.max_concurrent_calls = max.max(1);
        self
    }

    /// The HTTP/2 limits of every connection (see [`Http2Config`]; the
    /// defaults are hardened already).
    pub fn http2(mut self, http2: Http2Config) -> Self {
        self.http2 = http2;
        self
    }

    /// The largest message each service takes and sends (see
    /// [`MessageLimits`]), applied to every service added, before or after.
    pub fn message_limits(mut self, messages: MessageLimits) -> Self {
        self.messages = messages;
        self
    }

    /// Writes one `INFO` line per call (target `trellis::access`): method,
    /// status, duration, peer, trace and span ids. Off by default; the
    /// application's `log.access`.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// Injects faults into every application call, to simulate a slow or
    /// failing instance (see [`FaultsConfig`]).
    pub fn faults(mut self, faults: FaultsConfig) -> Self {
        self.faults = faults;
        self
    }

    /// Registers every service in `registry` once serving, and deregisters
    /// them when shutdown starts.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The address to register: `HOST` (with the bound port) or `HOST:PORT`.
    /// By default the listen address, or loopback when listening on all
    /// interfaces.
    pub fn advertise(mut self, address: impl Into<String>) -> Self {
        self.advertise = Some(address.into());
        self
    }

    /// Serves TLS with `tls.cert` and `tls.key`, requires client
    /// certificates with `tls.client_ca`, and restricts services to client
    /// identities with `tls.allow` (feature `tls`; see `docs/tls.md`).
    /// Settings without `cert` and `key` leave the server in plaintext.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The version, zone and weight to register.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Counts calls into `metrics` (by default, metrics of the server's
    /// own), which the admin listener serves.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves `/metrics`, `/healthz`, `/readyz` and the status page on
    /// `addr`, apart from the gRPC port (see [`crate::admin`]).
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Serves the REST routes on `addr` instead of the gRPC port, with the
    /// same layers and TLS settings (see [`crate::gateway`]); the gRPC port
    /// then serves gRPC alone.
    pub fn rest_listen(mut self, addr: SocketAddr) -> Self {
        self.rest = Some(addr);
        self
    }

    pub(crate) fn shutdown_config(mut self, shutdown: ShutdownConfig) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// A check that must pass before binding: the application context
    /// rejects configuration sections that nothing read.
    pub(crate) fn config_check(
        mut self,
        check: impl FnOnce() -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.config_check = Some(Box::new(check));
        self
    }

    /// Wraps every call to your services (and health and reflection) in
    /// `layer`, below the deadline and above injected faults: see the order
    /// in the [module docs](self). Layers added later wrap those added
    /// before; compose several with `tower::ServiceBuilder`.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxServerService> + Send + Sync + 'static,
        L::Service:
            Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + Sync + 'static,
        <L::Service as Service<http::Request<Body>>>::Error: Into<BoxError>,
        <L::Service as Service<http::Request<Body>>>::Future: Send + 'static,
    {
        let current = self.layer.take();
        self.layer = Some(Arc::new(move |inner: BoxServerService| {
            let inner = match &current {
                Some(current) => current(inner),
                None => inner,
            };
            BoxCloneSyncService::new(MapErrLayer::new(Into::into).layer(layer.layer(inner)))
        }));
        self
    }

    /// Stops the server when `signal` completes, instead of on SIGINT/SIGTERM.
    pub fn shutdown_signal(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// Adds a service generated by `trellis-build`, such as
    /// `OrderPaymentServer::new(handler)`. Its health status and reflection
    /// entry are set up with it.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: DescribedService
            + NamedService
            + tower_service::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.services.push(S::DESCRIPTOR);
        // One route per method path (tonic routes `/NAME/*` to the service,
        // whose own answer to a method it lacks says nothing).
        self.routes.push(Box::new(move |router, limits| {
            let service = service.limit_message_sizes(limits.max_decoding_size, limits.max_encoding_size);
            S::DESCRIPTOR.methods().iter().fold(router, |router, method| {
                let service = tower::ServiceExt::map_request(
                    service.clone(),
                    |req: http::Request<axum::body::Body>| req.map(Body::new),
                );
                router.route_service(method.path(), service)
            })
        }));
        self
    }

    /// Binds the listening socket. Use this to learn the address before
    /// serving; [`serve`](Self::serve) does both.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, or (for a builder from the
    /// application's `Context::server`) when the configuration has a section
    /// that nothing read.
    pub async fn bind(mut self) -> Result<BoundServer, Error> {
        if let Some(check) = self.config_check.take() {
            check()?;
        }
        self.http2.check().map_err(Error::Config)?;
        let listener = Listener::bind(self.listen, self.tls.as_ref()).await?;
        let rest = match self.rest {
            Some(addr) => Some(Listener::bind(addr, self.tls.as_ref()).await.map_err(|err| match err {
                Error::Bind { addr, source } => Error::Config(format!(
                    "`rest.listen` {addr}: cannot listen: {source} (choose another address with \
                     --rest-listen, or stop what holds it)"
                )),
                err => err,
            })?),
            None => None,
        };
        let metrics =
            self.metrics.take().unwrap_or_else(|| Metrics::new("trellis-server", env!("CARGO_PKG_VERSION")));
        let admin = match self.admin {
            Some(addr) => Some(AdminServer::bind(addr, metrics.clone()).await?),
            None => None,
        };
        Ok(BoundServer { builder: self, listener, rest, metrics, admin })
    }

    /// Binds and serves until the shutdown signal, then shuts down gracefully.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound or the server fails.
    pub fn serve(self) -> impl Future<Output = Result<(), Error>> + Send {
        let serving: Serving = Box::pin(async move { self.bind().await?.serve().await });
        serving
    }
}

/// A server with its socket bound, ready to [`serve`](Self::serve).
#[derive(Debug)]
pub struct BoundServer {
    builder: ServerBuilder,
    listener: Listener,
    /// REST's own listener, with `rest.listen`.
    rest: Option<Listener>,
    metrics: Metrics,
    admin: Option<AdminServer>,
}

impl BoundServer {
    /// The address the server listens on, with the real port when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The address of REST's own listener, if one was asked for.
    pub fn rest_addr(&self) -> Option<SocketAddr> {
        self.rest.as_ref().map(Listener::local_addr)
    }

    /// The address of the admin listener, if one was asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The metrics the server counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serves until the shutdown signal, then shuts down gracefully (see the
    /// [module docs](self)).
    ///
    /// # Errors
    ///
    /// When the server fails while serving.
    pub fn serve(self) -> impl Future<Output = Result<(), Error>> + Send {
        let serving: Serving = Box::pin(self.run());
        serving
    }

    async fn run(self) -> Result<(), Error> {
        let BoundServer { builder, listener, rest, metrics, admin } = self;
        let admin_addr = admin.as_ref().map(AdminServer::local_addr);
        let board = metrics.board();
        let local_addr = listener.local_addr();
        let ServerBuilder {
            shutdown,
            faults,
            max_concurrent_calls,
            http2,
            messages,
            access_log,
            registry,
            advertise,
            metadata,
            routes: add_services,
            services,
            signal,
            layer,
            tls,
            ..
        } = builder;
        let allow = tls.map(|tls| tls.allow).unwrap_or_default();
        if !allow.is_empty() && !listener.mutual_tls() {
            return Err(Error::Config(
                "`tls.allow` needs `tls.client_ca`: identities come from verified client certificates"
                    .to_owned(),
            ));
        }
        let endpoint = advertised(local_addr, advertise.as_deref())?.with_scheme(listener.scheme());
        let signal = signal.unwrap_or_else(|| Box::pin(termination_signal()));

        let (health, health_service) = tonic_health::server::health_reporter();
        let router = add_services.into_iter().fold(axum::Router::new(), |router, add| add(router, messages));
        let mut routes = RoutesBuilder::from(router);
        routes
            .add_service(health_service)
            .add_service(reflection(&services).build_v1().map_err(|e| Error::Serve(e.into()))?)
            .add_service(reflection(&services).build_v1alpha().map_err(|e| Error::Serve(e.into()))?);

        let drain = CancellationToken::new();
        // REST/JSON transcoding (framework/src/gateway), outermost: its calls take every layer
        // below. With a REST listener of its own, the gRPC port's gateway passes everything on.
        let (grpc_gateway, rest_gateway) = crate::gateway::layers(&services, rest.is_some())?;
        // One set of layers for both ports: one load-shedding budget, one drain.
        let layers = ServiceBuilder::new()
            .layer(trace::TraceLayer::new(access_log))
            .layer(metrics::MetricsLayer::new(&metrics, &services))
            .layer(drain::DrainLayer::new(streaming_paths(&services), drain.clone()))
            .layer(limit::LoadShedLayer::new(max_concurrent_calls))
            .layer(deadline::DeadlineLayer)
            // `tls.allow`: callers checked against each service's allowed identities.
            .option_layer((!allow.is_empty()).then(|| allow::AllowLayer::new(allow)))
            // Your layers: type-erased once, only when there are some.
            .layer(tower::layer::layer_fn(move |inner| {
                let inner = MapErrLayer::new(Into::<BoxError>::into).layer(inner);
                match &layer {
                    Some(layer) => Either::Left(layer(BoxCloneSyncService::new(inner))),
                    None => Either::Right(inner),
                }
            }))
            .option_layer(
                (!faults.delay.is_zero() || faults.unavailable)
                    .then_some(faults::FaultLayer { delay: faults.delay, unavailable: faults.unavailable }),
            );

        let idle_timeout = http2.idle_timeout;
        let routes = with_fallback(routes.routes(), &services);
        // Every HTTP/2 limit set explicitly (framework/src/server/limits.rs); HTTP/1.1 where REST is.
        let router = |gateway, http1: bool| {
            http2
                .apply(tonic::transport::Server::builder())
                .accept_http1(http1)
                .layer(ServiceBuilder::new().layer(gateway).layer(layers.clone()))
                .add_routes(routes.clone())
        };
        let serve_on = |router: tonic::transport::server::Router<_>, listener: Listener| -> ServeFuture {
            let stop = drain.clone().cancelled_owned();
            match listener.incoming() {
                Incoming::Plain(incoming) => {
                    let incoming = tokio_stream::StreamExt::map(incoming, move |accepted| {
                        accepted.map(|io| connection(io, idle_timeout))
                    });
                    Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
                }
                #[cfg(feature = "tls")]
                Incoming::Tls(incoming) => {
                    let incoming = tokio_stream::StreamExt::map(incoming, move |accepted| {
                        accepted.map(|io| connection(io, idle_timeout))
                    });
                    Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
                }
            }
        };
        let rest_addr = rest.as_ref().map(Listener::local_addr);
        let grpc = serve_on(router(grpc_gateway, rest.is_none()), listener);
        let server: ServeFuture = match rest.zip(rest_gateway) {
            Some((rest, gateway)) => {
                let rest = serve_on(router(gateway, true), rest);
                Box::pin(async move { tokio::try_join!(grpc, rest).map(|((), ())| ()) })
            }
            None => grpc,
        };
        tokio::pin!(server);

        set_status(&health, &services, ServingStatus::Serving).await;
        let names: Vec<&'static str> = services.iter().map(|s| s.name()).collect();
        board.set_server(ServerInfo {
            listen: local_addr.to_string(),
            services: names.clone(),
            registry: registry.as_ref().map(|r| r.url().to_owned()),
            endpoint: endpoint.to_string(),
            registered: false,
        });
        // An unset listener's field is left out of the line.
        let (rest, admin) = (rest_addr.map(tracing::field::display), admin_addr.map(tracing::field::display));
        tracing::info!(addr = %local_addr, rest, admin, services = ?names, "listening");

        let mut leases = Vec::new();
        if let Some(registry) = &registry {
            for service in &services {
                let instance = Instance::new(service.name(), endpoint.clone(), metadata.clone());
                leases.push(registry.register(instance).await?);
            }
            tracing::info!(registry = registry.url(), %endpoint, "registered");
            board.set_registered(true);
        }
        board.set_state(ServerState::Serving);

        tokio::select! {
            result = &mut server => {
                board.set_state(ServerState::Stopped);
                return result.map_err(|e| Error::Serve(e.into()));
            }
            () = signal => {}
        }
        // Not ready from now on, before anything else changes.
        board.set_state(ServerState::ShuttingDown);

        tracing::info!(
            propagation_delay = ?shutdown.propagation_delay,
            drain_timeout = ?shutdown.drain_timeout,
            "shutting down: health is NOT_SERVING",
        );
        set_status(&health, &services, ServingStatus::NotServing).await;
        deregister(leases).await;
        board.set_registered(false);
        tokio::select! {
            result = &mut server => {
                board.set_state(ServerState::Stopped);
                return result.map_err(|e| Error::Serve(e.into()));
            }
            () = tokio::time::sleep(shutdown.propagation_delay) => {}
        }

        tracing::info!("draining in-flight calls");
        board.set_state(ServerState::Draining);
        drain.cancel();
        match tokio::time::timeout(shutdown.drain_timeout, server).await {
            Ok(result) => result.map_err(|e| Error::Serve(e.into()))?,
            Err(_) => tracing::warn!(
                drain_timeout = ?shutdown.drain_timeout,
                "drain timed out; closing the remaining connections",
            ),
        }
        board.set_state(ServerState::Stopped);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Deregisters every lease, each bounded in time; failures are logged, as
/// the registry's TTL removes what could not be removed now.
async fn deregister(leases: Vec<Box<dyn Lease>>) {
    for lease in leases {
        match tokio::time::timeout(DEREGISTER_TIMEOUT, lease.deregister()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("cannot deregister: {err}; the registry's TTL will remove it"),
            Err(_) => tracing::warn!("deregistering timed out; the registry's TTL will remove it"),
        }
    }
}

/// The endpoint to register for a server bound to `bound`.
fn advertised(bound: SocketAddr, advertise: Option<&str>) -> Result<Endpoint, Error> {
    let bad = |reason: String| Error::Config(format!("`advertise`: {reason}"));
    match advertise.map(str::trim) {
        None | Some("") if bound.ip().is_unspecified() => {
            let loopback: IpAddr =
                if bound.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
            Ok(Endpoint::from(SocketAddr::new(loopback, bound.port())))
        }
        None | Some("") => Ok(Endpoint::from(bound)),
        Some(address) => {
            if let Ok(endpoint) = crate::registry::parse_endpoint(address) {
                return Ok(endpoint);
            }
            let host = address.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() || host.contains(['/', ' ', ':']) && host.parse::<IpAddr>().is_err() {
                return Err(bad(format!(
                    "`{address}` is not HOST or HOST:PORT, such as 10.0.0.7 or payments.internal:50051"
                )));
            }
            Ok(Endpoint::new(host, bound.port()))
        }
    }
}

/// Sets each service's status and the server's overall one (`""`), in the
/// order that never shows the overall status better than a service's: last
/// when it turns serving, first when it stops, so a client that sees one
/// service stop and then asks about the server sees it stopping too.
async fn set_status(health: &HealthReporter, services: &[&ServiceDescriptor], status: ServingStatus) {
    let serving = status == ServingStatus::Serving;
    if !serving {
        health.set_service_status("", status).await;
    }
    for service in services {
        health.set_service_status(service.name(), status).await;
    }
    if serving {
        health.set_service_status("", status).await;
    }
}

fn reflection<'a>(services: &[&'static ServiceDescriptor]) -> tonic_reflection::server::Builder<'a> {
    let mut seen: Vec<&'static [u8]> = Vec::new();
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for set in services.iter().map(|s| s.file_descriptor_set()) {
        if !seen.contains(&set) {
            seen.push(set);
            builder = builder.register_encoded_file_descriptor_set(set);
        }
    }
    builder
}

/// `routes`, answering a path no method has with `UNIMPLEMENTED` and what
/// this server does serve (tonic's own answer carries no message).
fn with_fallback(
    routes: tonic::service::Routes,
    services: &[&'static ServiceDescriptor],
) -> tonic::service::Routes {
    let served: Vec<String> = services
        .iter()
        .map(|s| {
            let methods: Vec<&str> = s.methods().iter().map(|m| m.name()).collect();
            format!("{} ({})", s.name(), methods.join(", "))
        })
        .chain(["grpc.health.v1.Health".to_owned(), "grpc.reflection.v1.ServerReflection".to_owned()])
        .collect();
    let served: Arc<str> = served.join(", ").into();
    let fallback = tower::service_fn(move |req: http::Request<axum::body::Body>| {
        let message = format!("`{}` is not a method of this server; it serves {served}", req.uri().path());
        let (parts, ()) = tonic::Status::unimplemented(message).into_http::<()>().into_parts();
        std::future::ready(Ok::<_, Infallible>(http::Response::from_parts(parts, Body::empty())))
    });
    routes.into_axum_router().fallback_service(fallback).into()
}

fn streaming_paths(services: &[&'static ServiceDescriptor]) -> impl Iterator<Item = &'static str> {
    let app_paths =
        services.iter().flat_map(|s| s.methods()).filter(|m| m.kind().server_streams()).map(|m| m.path());
    BUILTIN_STREAMING_PATHS.into_iter().chain(app_paths)
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => tracing::info!("received SIGINT"),
                    _ = term.recv() => tracing::info!("received SIGTERM"),
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; only Ctrl-C will stop the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address() {
        let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let one: SocketAddr = "10.1.2.3:7000".parse().unwrap();
        assert_eq!(advertised(any, None).unwrap().to_string(), "127.0.0.1:7000");
        assert_eq!(advertised("[::]:7000".parse().unwrap(), None).unwrap().to_string(), "[::1]:7000");
        assert_eq!(advertised(one, None).unwrap().to_string(), "10.1.2.3:7000");
        assert_eq!(advertised(any, Some("10.9.9.9")).unwrap().to_string(), "10.9.9.9:7000");
        assert_eq!(advertised(any, Some("pay.internal:80")).unwrap().to_string(), "pay.internal:80");
        assert_eq!(advertised(any, Some("::1")).unwrap().to_string(), "[::1]:7000");
        let err = advertised(any, Some("http://x/")).unwrap_err().to_string();
        assert!(err.contains("`advertise`") && err.contains("http://x/"), "{err}");
    }
}
