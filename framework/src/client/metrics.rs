//! The client's metrics, per target service (see [`crate::metrics`] for
//! the names and `docs/observability.md` for what each means).
//!
//! [`ClientMetricsLayer`] is the outermost layer of a channel: it times
//! each call, retries and hedges included, to its final status (from a
//! trailers-only answer, the trailers, the error the stack failed with, or
//! `CANCELLED` when the caller drops the call), and counts the calls that
//! failed before any attempt was sent. What only the inner layers know is
//! counted where they decide, through the [`ServiceMetrics`] every layer of
//! the channel shares: attempts by kind (retry layer), retries not sent and
//! why (retry layer), breaker transitions (breaker), ejections by reason
//! (endpoint), discovery updates and the registry's last answer
//! (balancer). Gauges of state (endpoints per state, breaker states) are
//! read from the channel at scrape time, through a [`ChannelView`].
//!
//! Per call: one hash lookup of the path, relaxed atomic adds on handles
//! resolved when the channel was built (per status code, on the first
//! call that ends with it); no lock, no allocation.

use std::any::Any;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use super::stats::Counters;
use crate::descriptor::ServiceDescriptor;
use crate::error::{BoxError, CallError};
use crate::metrics::{
    AttemptLabels, CallLabels, ChannelSnapshot, ChannelView, Histogram, Metrics, ReasonLabels, ServiceLabels,
    TransitionLabels, code_name,
};
use crate::protocol::end::{CallEnd, EndBody, Ending};
use crate::protocol::per_method::PerMethod;
use crate::registry::Heartbeat;

/// The kind of an attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Attempt {
    First = 0,
    Retry = 1,
    Hedge = 2,
}

/// Why a failed call was not retried although its failure allowed it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NotSent {
    Budget = 0,
    AttemptLimit = 1,
    NoTimeLeft = 2,
}

/// Why an endpoint was taken out of rotation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ejection {
    Failures = 0,
    Latency = 1,
}

/// The state a breaker went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Open = 0,
    HalfOpen = 1,
    Closed = 2,
}

/// Why a call failed before any attempt was sent.
#[derive(Debug, Clone, Copy)]
enum Unsent {
    DeadlinePassed = 0,
    NoInstance = 1,
    CircuitOpen = 2,
}

/// A channel's counters for one target service, shared by its layers.
#[derive(Debug)]
pub(crate) struct ServiceMetrics {
    service: &'static str,
    metrics: Option<Metrics>,
    attempts: [Counter; 3],
    not_sent: [Counter; 3],
    ejections: [Counter; 2],
    discovery_updates: Counter,
    unsent: [Counter; 3],
    /// When the registry last answered, once the first resolution is in.
    registry: OnceLock<Heartbeat>,
}

impl Default for ServiceMetrics {
    /// Counters registered nowhere, for a channel without [`Metrics`].
    fn default() -> Self {
        ServiceMetrics {
            service: "",
            metrics: None,
            attempts: Default::default(),
            not_sent: Default::default(),
            ejections: Default::default(),
            discovery_updates: Counter::default(),
            unsent: Default::default(),
            registry: OnceLock::new(),
        }
    }
}

impl ServiceMetrics {
    /// The counters of calls to `service`, in `metrics`.
    pub(crate) fn new(metrics: &Metrics, service: &'static str) -> Self {
        let c = metrics.client();
        let attempt = |kind| c.attempts.get_or_create_owned(&AttemptLabels { service, kind });
        let not_sent = |reason| c.retries_not_sent.get_or_create_owned(&ReasonLabels { service, reason });
        let ejection = |reason| c.ejections.get_or_create_owned(&ReasonLabels { service, reason });
        let unsent = |reason| c.failed_before_sending.get_or_create_owned(&ReasonLabels { service, reason });
        ServiceMetrics {
            service,
            metrics: Some(metrics.clone()),
            attempts: [attempt("first"), attempt("retry"), attempt("hedge")],
            not_sent: [not_sent("budget"), not_sent("attempt_limit"), not_sent("no_time_left")],
            ejections: [ejection("failures"), ejection("latency")],
            discovery_updates: c.discovery_updates.get_or_create_owned(&ServiceLabels { service }),
            unsent: [unsent("deadline_passed"), unsent("no_instance"), unsent("circuit_open")],
            registry: OnceLock::new(),
        }
    }

    pub(crate) fn attempt(&self, kind: Attempt) {
        self.attempts[kind as usize].inc();
    }

    #[cfg(test)]
    pub(crate) fn attempts_of(&self, kind: Attempt) -> u64 {
        self.attempts[kind as usize].get()
    }

    #[cfg(test)]
    pub(crate) fn not_retried_of(&self, why: NotSent) -> u64 {
        self.not_sent[why as usize].get()
    }

    pub(crate) fn not_retried(&self, why: NotSent) {
        self.not_sent[why as usize].inc();
    }

    pub(crate) fn ejected(&self, why: Ejection) {
        self.ejections[why as usize].inc();
    }

    /// The registry's first resolution is in: its heartbeat tells how long
    /// ago the registry last answered.
    pub(crate) fn resolved(&self, heartbeat: Heartbeat) {
        let _ = self.registry.set(heartbeat);
    }

    /// The registry reported `changes` endpoint changes.
    pub(crate) fn discovery_updated(&self, changes: u64) {
        self.discovery_updates.inc_by(changes);
    }

    /// Seconds since the registry last answered, if it has.
    pub(crate) fn registry_answer_age(&self) -> Option<f64> {
        self.registry.get().map(|heartbeat| heartbeat.age().as_secs_f64())
    }

    /// The transition counters of `method`'s breaker.
    pub(crate) fn transitions(&self, method: &'static str) -> [Counter; 3] {
        let Some(metrics) = &self.metrics else { return Default::default() };
        let family = &metrics.client().breaker_transitions;
        let service = self.service;
        ["open", "half_open", "closed"]
            .map(|to| family.get_or_create_owned(&TransitionLabels { service, method, to }))
    }

    /// Puts the channel on the status page and in the state gauges.
    pub(crate) fn publish(&self, view: Weak<dyn ChannelView>) {
        if let Some(metrics) = &self.metrics {
            metrics.board().add_channel(view);
        }
    }
}

/// One method's duration histograms, per status code.
#[derive(Debug)]
struct MethodHistograms {
    method: &'static str,
    by_code: [OnceLock<Histogram>; 17],
}

#[derive(Debug)]
struct Table {
    service: &'static str,
    metrics: Option<Metrics>,
    /// Each path's index in `methods`; paths the descriptor does not know,
    /// the last.
    by_path: PerMethod<usize>,
    /// By index in `by_path`; the last for paths the descriptor does not know.
    methods: Vec<MethodHistograms>,
    counters: Arc<Counters>,
}

impl Table {
    fn method(&self, path: &str) -> usize {
        *self.by_path.get(path)
    }

    fn finish(&self, method: usize, code: Code, start: Instant) {
        let Some(metrics) = &self.metrics else { return };
        let method = &self.methods[method];
        let slot = usize::try_from(code as i32).unwrap_or(2).min(16);
        let histogram = method.by_code[slot].get_or_init(|| {
            let labels = CallLabels { service: self.service, method: method.method, code: code_name(code) };
            metrics.client().duration.get_or_create_owned(&labels)
        });
        histogram.observe(start.elapsed());
    }
}

/// Times every call and counts those that failed before sending; see the
/// [client stack](crate::client).
#[derive(Debug, Clone)]
pub struct ClientMetricsLayer {
    table: Arc<Table>,
}

impl ClientMetricsLayer {
    pub(crate) fn new(service: &'static ServiceDescriptor, counters: Arc<Counters>) -> Self {
        let paths = service.methods().iter().enumerate().map(|(i, m)| (m.path(), i));
        let by_path = PerMethod::new(paths, service.methods().len());
        let methods = service
            .methods()
            .iter()
            .map(|m| m.name())
            .chain(["unknown"])
            .map(|method| MethodHistograms { method, by_code: Default::default() })
            .collect();
        let metrics = counters.metrics.metrics.clone();
        let table = Table { service: service.name(), metrics, by_path, methods, counters };
        ClientMetricsLayer { table: Arc::new(table) }
    }
}

impl<S> Layer<S> for ClientMetricsLayer {
    type Service = ClientMetricsService<S>;

    fn layer(&self, inner: S) -> ClientMetricsService<S> {
        ClientMetricsService { inner, table: Arc::clone(&self.table) }
    }
}

/// The service [`ClientMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct ClientMetricsService<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S> ClientMetricsService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = BoxError>,
{
    type Response = Response<CallBody<ResBody>>;
    type Error = BoxError;
    type Future = ClientMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = self.table.method(req.uri().path());
        let call = Call { table: Arc::clone(&self.table), method, start: Instant::now() };
        ClientMetricsFuture { inner: self.inner.call(req), call: Ending::new(Some(call)) }
    }
}

/// One call until its status is known.
#[derive(Debug)]
struct Call {
    table: Arc<Table>,
    method: usize,
    start: Instant,
}

impl CallEnd for Call {
    fn end(self, code: Code) {
        self.table.finish(self.method, code, self.start);
    }

    /// A body that fails mid-stream lost its connection or stream.
    fn failed(&self, _err: &dyn Any) -> Code {
        Code::Unavailable
    }
}

/// The code a failed call ends with, and whether it failed before sending.
fn failure(err: &BoxError) -> (Code, Option<Unsent>) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(cause) = source {
        if let Some(call) = cause.downcast_ref::<CallError>() {
            let unsent = match call {
                CallError::DeadlinePassed { .. } => Some(Unsent::DeadlinePassed),
                CallError::NoInstance { .. } => Some(Unsent::NoInstance),
                CallError::CircuitOpen { .. } => Some(Unsent::CircuitOpen),
                _ => None,
            };
            return (call.code(), unsent);
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return (status.code(), None);
        }
        source = cause.source();
    }
    (Code::Unknown, None)
}

pin_project! {
    /// The response future of [`ClientMetricsService`].
    pub struct ClientMetricsFuture<F> {
        #[pin]
        inner: F,
        call: Ending<Call>,
    }
}

impl<F, ResBody> Future for ClientMetricsFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, BoxError>>,
{
    type Output = Result<Response<CallBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = std::mem::take(this.call);
        Poll::Ready(match result {
            Ok(response) => Ok(call.into_response(response).map(|inner| CallBody { inner })),
            Err(err) => {
                if let Some(call) = call.take() {
                    let (code, unsent) = failure(&err);
                    if let Some(unsent) = unsent {
                        call.table.counters.metrics.unsent[unsent as usize].inc();
                    }
                    call.end(code);
                }
                Err(err)
            }
        })
    }
}

pin_project! {
    /// The response body of a [`Channel`](super::Channel) call: records
    /// the call's status when its trailers pass.
    pub struct CallBody<B> {
        #[pin]
        inner: EndBody<B, Call>,
    }
}

impl<B> std::fmt::Debug for CallBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallBody")
    }
}

impl<B> Body for CallBody<B>
where
    B: Body,
    B::Error: 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the status page and the state gauges read from a channel.
pub(crate) struct View<F> {
    pub(crate) snapshot: F,
}

impl<F: Fn() -> ChannelSnapshot + Send + Sync> ChannelView for View<F> {
    fn snapshot(&self) -> ChannelSnapshot {
        (self.snapshot)()
    }
}
