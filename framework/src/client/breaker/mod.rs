//! Circuit breaking, per method of a target service.
//!
//! *Closed* is normal: calls go through and consecutive failures are
//! counted. After `FAILURES_TO_OPEN` (5) failures in a row the breaker
//! *opens*: calls fail at once with [`CallError::CircuitOpen`]
//! (`UNAVAILABLE`), naming the method, the service, the last failure and
//! when the next try is, instead of queueing behind a target that is down.
//! After the open period (1 s, doubling up to 30 s) the breaker is
//! *half-open*: one call at a time goes through as a probe; a success
//! closes the breaker, a failure opens it again for twice as long.
//!
//! The breaker sits above retries and judges whole calls: one failing
//! instance is the balancer's business (its ejection is the same state
//! machine with other thresholds, see `endpoint`), a failing service is
//! the breaker's. Only failures that say something about the target count
//! ([`CallError::is_target_failure`]: unreachable, `UNAVAILABLE`, no answer
//! within the deadline). Application errors such as `NOT_FOUND` are
//! answers, and the breaker's own refusals are never counted. A probe
//! cancelled by its caller gives its slot back.

mod state;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

#[cfg(test)]
pub(crate) use self::state::FIRST_OPEN;
pub(crate) use self::state::{Admit, Breaker};
use super::metrics::Transition;
use super::stats::Counters;
use crate::error::{BoxError, CallError};
use crate::metrics::{BreakerSnapshot, BreakerState};
use crate::protocol::per_method::PerMethod;

/// One method's breaker, and the counters of its transitions.
#[derive(Debug, Default)]
pub(crate) struct MethodBreaker {
    method: &'static str,
    state: Mutex<Breaker>,
    transitions: [prometheus_client::metrics::counter::Counter; 3],
}

impl MethodBreaker {
    fn lock(&self) -> MutexGuard<'_, Breaker> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a change of state.
    fn moved(&self, before: BreakerState, after: BreakerState) {
        let to = match after {
            _ if after == before => return,
            BreakerState::Open => Transition::Open,
            BreakerState::HalfOpen => Transition::HalfOpen,
            BreakerState::Closed => Transition::Closed,
        };
        self.transitions[to as usize].inc();
    }
}

/// One breaker per method.
type Breakers = PerMethod<Arc<MethodBreaker>>;

/// Fails calls fast while their method keeps failing; see the
/// [client stack](crate::client).
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    service: &'static str,
    breakers: Arc<Breakers>,
    counters: Arc<Counters>,
}

impl BreakerLayer {
    /// Breakers for `paths` of `service`.
    pub(crate) fn new(
        service: &'static str,
        paths: impl IntoIterator<Item = &'static str>,
        counters: Arc<Counters>,
    ) -> Self {
        let breaker = |path: &'static str| {
            let method = path.rsplit('/').next().unwrap_or(path);
            let transitions = counters.metrics.transitions(method);
            Arc::new(MethodBreaker { method, state: Mutex::default(), transitions })
        };
        let breakers = PerMethod::new(paths.into_iter().map(|p| (p, breaker(p))), Arc::default());
        BreakerLayer { service, breakers: Arc::new(breakers), counters }
    }

    /// The state of each method's breaker now.
    pub(crate) fn snapshot(&self) -> Vec<BreakerSnapshot> {
        let mut breakers: Vec<BreakerSnapshot> = self
            .breakers
            .iter()
            .map(|(_, b)| BreakerSnapshot { method: b.method, state: b.lock().kind() })
            .collect();
        breakers.sort_by_key(|b| b.method);
        breakers
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService { inner, layer: self.clone() }
    }
}

/// The service [`BreakerLayer`] makes.
#[derive(Debug, Clone)]
pub struct BreakerService<S> {
    inner: S,
    layer: BreakerLayer,
}

impl<S> BreakerService<S> {
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

impl<S, B, R> Service<Request<B>> for BreakerService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let breaker = self.layer.breakers.get(req.uri().path());
        let admit = {
            let mut state = breaker.lock();
            let before = state.kind();
            let admit = state.admit(Instant::now());
            breaker.moved(before, state.kind());
            admit
        };
        let probe = match admit {
            Admit::Call => false,
            Admit::Probe => true,
            Admit::Refuse { retry_in, last_failure } => {
                let method = req.uri().path().to_owned();
                let error =
                    CallError::CircuitOpen { method, service: self.layer.service, retry_in, last_failure };
                return BreakerFuture { kind: Kind::Refused { error: Some(error) } };
            }
        };
        BreakerFuture {
            kind: Kind::Call {
                inner: self.inner.call(req),
                judge: Judge { breaker: Arc::clone(breaker), probe, layer: self.layer.clone(), done: false },
            },
        }
    }
}

/// Reports a call's outcome to its breaker, or gives a probe slot back if
/// the call is dropped first.
#[derive(Debug)]
struct Judge {
    breaker: Arc<MethodBreaker>,
    probe: bool,
    layer: BreakerLayer,
    done: bool,
}

impl Judge {
    fn judge(&mut self, failure: Option<&BoxError>) {
        self.done = true;
        let mut breaker = self.breaker.lock();
        let before = breaker.kind();
        match failure {
            None => breaker.succeeded(),
            Some(err) if is_target_failure(err) => {
                let was_closed = !breaker.is_open();
                breaker.failed(Instant::now(), &err.to_string());
                if was_closed && breaker.is_open() {
                    tracing::warn!(service = self.layer.service, "circuit opened: {err}");
                    Counters::bump(&self.layer.counters.breaker_trips);
                }
            }
            Some(_) => breaker.abandoned(),
        }
        self.breaker.moved(before, breaker.kind());
    }
}

impl Drop for Judge {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.lock().abandoned();
        }
    }
}

/// Whether `err` says the target failed: a [`CallError`] that says so, or
/// an `UNAVAILABLE` status from a layer of the user's.
fn is_target_failure(err: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(cause) = source {
        if let Some(call) = cause.downcast_ref::<CallError>() {
            return call.is_target_failure();
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return status.code() == tonic::Code::Unavailable;
        }
        source = cause.source();
    }
    true
}

pin_project! {
    /// The response future of [`BreakerService`].
    pub struct BreakerFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = BreakerProj]
    enum Kind<F> {
        /// Admitted; its outcome is reported.
        Call { #[pin] inner: F, judge: Judge },
        /// Refused: the circuit is open.
        Refused { error: Option<CallError> },
    }
}

impl<F, R, E> Future for BreakerFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            BreakerProj::Call { inner, judge } => {
                let result = ready!(inner.poll(cx)).map_err(Into::into);
                judge.judge(result.as_ref().err());
                Poll::Ready(result)
            }
            BreakerProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion").into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
    use tower::ServiceExt;

    use super::*;
    use crate::client::testing::{grpc, mock, request};

    fn unavailable() -> BoxError {
        let status = Box::new(tonic::Status::unavailable("down"));
        CallError::Unavailable { endpoint: "10.0.0.1:1".into(), status, never_reached: false, pushback: None }
            .into()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failed_calls_fails_fast_with_a_typed_cause_then_probes() {
        let counters = Arc::new(Counters::default());
        let (inner, mut handle) = mock();
        let service = BreakerLayer::new("t.v1.T", ["/t.v1.T/M"], counters.clone()).layer(inner);
        for _ in 0..5 {
            let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
            handle.next_request().await.unwrap().1.send_error(unavailable());
            assert!(call.await.unwrap().is_err());
        }
        assert_eq!(counters.snapshot().breaker_trips, 1);
        let err = service.clone().oneshot(request("/t.v1.T/M")).await.unwrap_err();
        let Some(CallError::CircuitOpen { retry_in, last_failure, .. }) = err.downcast_ref::<CallError>()
        else {
            panic!("{err}")
        };
        assert_eq!((*retry_in, last_failure.as_str()), (Duration::from_secs(1), "down"));
        assert!(handle.poll_request().is_pending(), "refused without reaching the service");

        // Other methods have breakers of their own.
        let other = tokio::spawn(service.clone().oneshot(request("/t.v1.T/Other")));
        handle.next_request().await.unwrap().1.send_response(grpc(Code::Ok));
        other.await.unwrap().unwrap();

        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
        let (_req, reply) = handle.next_request().await.unwrap();
        // One probe at a time.
        assert!(service.clone().oneshot(request("/t.v1.T/M")).await.is_err());
        reply.send_response(grpc(Code::Ok));
        probe.await.unwrap().unwrap();
        let closed = tokio::spawn(service.oneshot(request("/t.v1.T/M")));
        handle.next_request().await.unwrap().1.send_response(grpc(Code::Ok));
        closed.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn answers_and_the_callers_own_failures_do_not_count() {
        let (inner, mut handle) = mock();
        let service = BreakerLayer::new("t.v1.T", ["/t.v1.T/M"], Arc::default()).layer(inner);
        for _ in 0..10 {
            let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
            let (_, reply) = handle.next_request().await.unwrap();
            reply.send_error(CallError::DeadlinePassed { method: "/t.v1.T/M".into() });
            assert!(call.await.unwrap().is_err());
            let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/M")));
            handle.next_request().await.unwrap().1.send_response(grpc(Code::NotFound));
            call.await.unwrap().unwrap();
        }
    }
}
