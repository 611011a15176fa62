//! The deadline layer: every call has one.
//!
//! A call's deadline is its own timeout (`Request::set_timeout`, which
//! tonic sends as `grpc-timeout`), else its method's default (the proto's
//! `(trellis.method).timeout`, the configuration's, else
//! [`DEFAULT_TIMEOUT`](super::DEFAULT_TIMEOUT)), shortened to the inbound
//! call's remaining deadline when the call is made inside a handler (see
//! [`crate::context`]). A call whose deadline has already passed is not
//! sent. The layers below read the deadline from the request's
//! [`Deadline`] extension: the balancer waits for an instance until then,
//! retries stop before it, and each attempt carries what is left of it as
//! its own `grpc-timeout`. This layer guarantees the bound: when the
//! deadline passes, the call ends with `DEADLINE_EXCEEDED`, whatever the
//! layers below are doing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::context::outbound_deadline;
use crate::error::{BoxError, CallError};
use crate::protocol::per_method::PerMethod;
use crate::protocol::{GRPC_TIMEOUT, decode_grpc_timeout};

/// When a call must be finished, as a request extension the layers below
/// the deadline layer read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The instant the call must be finished by.
    pub at: Instant,
    /// The call's whole time budget, for messages.
    pub budget: Duration,
}

impl Deadline {
    /// The deadline of `request`, if a deadline layer above set one.
    pub fn of<B>(request: &Request<B>) -> Option<Deadline> {
        request.extensions().get::<Deadline>().copied()
    }

    /// The time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

/// Gives every call a deadline; see the [client stack](crate::client).
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    service: &'static str,
    timeouts: Arc<PerMethod<Duration>>,
}

impl DeadlineLayer {
    /// Calls to `service` with these default timeouts per method path.
    pub(crate) fn new(service: &'static str, timeouts: PerMethod<Duration>) -> Self {
        DeadlineLayer { service, timeouts: Arc::new(timeouts) }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService { inner, layer: self.clone() }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> DeadlineService<S> {
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

impl<S, B, R> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let own = req.headers().get(&GRPC_TIMEOUT).and_then(|v| decode_grpc_timeout(v.as_bytes()));
        let own = own.unwrap_or_else(|| *self.layer.timeouts.get(req.uri().path()));
        let at = outbound_deadline(Some(own)).unwrap_or(start + own);
        // Measured from now, not `start`: a passed inbound deadline is
        // clamped to the `now` of `outbound_deadline`, which is after `start`.
        let budget = at.saturating_duration_since(Instant::now());
        if budget.is_zero() {
            let method = req.uri().path().to_owned();
            return DeadlineFuture {
                kind: Kind::Refused { error: Some(CallError::DeadlinePassed { method }) },
            };
        }
        // A static path (as generated clients send) is cloned without a copy.
        let path = req.uri().path_and_query().cloned();
        req.extensions_mut().insert(Deadline { at, budget });
        DeadlineFuture {
            kind: Kind::Call {
                inner: self.inner.call(req),
                sleep: tokio::time::sleep_until(at),
                service: self.layer.service,
                budget,
                path,
            },
        }
    }
}

pin_project! {
    /// The response future of [`DeadlineService`].
    pub struct DeadlineFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = DeadlineProj]
    enum Kind<F> {
        /// Sent, racing the deadline.
        Call {
            #[pin]
            inner: F,
            #[pin]
            sleep: Sleep,
            service: &'static str,
            budget: Duration,
            path: Option<http::uri::PathAndQuery>,
        },
        /// Not sent: the deadline had passed.
        Refused { error: Option<CallError> },
    }
}

impl<F, R, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            DeadlineProj::Call { inner, sleep, service, budget, path } => {
                if let Poll::Ready(result) = inner.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                ready!(sleep.poll(cx));
                let method = path.as_ref().map(|p| p.path().to_owned()).unwrap_or_default();
                let error = CallError::DeadlineExceeded { method, service, timeout: *budget, endpoint: None };
                Poll::Ready(Err(error.into()))
            }
            DeadlineProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion").into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;
    use crate::client::testing::{grpc, mock, request};
    use crate::context::RequestContext;

    fn layer() -> DeadlineLayer {
        DeadlineLayer::new(
            "t.v1.T",
            PerMethod::new([("/t.v1.T/Fast", Duration::from_millis(50))], Duration::from_secs(10)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_method_default_or_the_inbound_deadline_whichever_is_first() {
        let (inner, mut handle) = mock();
        let service = layer().layer(inner);
        let start = Instant::now();
        let call = tokio::spawn(service.clone().oneshot(request("/t.v1.T/Fast")));
        let (req, reply) = handle.next_request().await.unwrap();
        assert_eq!(
            Deadline::of(&req),
            Some(Deadline { at: start + Duration::from_millis(50), budget: Duration::from_millis(50) })
        );
        reply.send_response(grpc(tonic::Code::Ok));
        call.await.unwrap().unwrap();

        let inbound = RequestContext::new(Some(start + Duration::from_millis(20)));
        let call = tokio::spawn(inbound.scope(service.oneshot(request("/t.v1.T/Other"))));
        let (req, reply) = handle.next_request().await.unwrap();
        let deadline = Deadline::of(&req).unwrap();
        assert_eq!(
            deadline.at,
            start + Duration::from_millis(20) - crate::context::DEADLINE_MARGIN,
            "inherited"
        );
        reply.send_response(grpc(tonic::Code::Ok));
        call.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_is_refused_and_a_late_answer_is_cut() {
        let (inner, mut handle) = mock();
        let service = layer().layer(inner);
        let passed = RequestContext::new(Some(Instant::now()));
        let err = passed.scope(service.clone().oneshot(request("/t.v1.T/Fast"))).await.unwrap_err();
        assert!(matches!(err.downcast_ref::<CallError>(), Some(CallError::DeadlinePassed { .. })), "{err}");

        let call = tokio::spawn(service.oneshot(request("/t.v1.T/Fast")));
        let (_req, _never_answered) = handle.next_request().await.unwrap();
        tokio::time::advance(Duration::from_millis(50)).await;
        let err = call.await.unwrap().unwrap_err();
        let Some(CallError::DeadlineExceeded { method, timeout, .. }) = err.downcast_ref::<CallError>()
        else {
            panic!("{err}")
        };
        assert_eq!((method.as_str(), *timeout), ("/t.v1.T/Fast", Duration::from_millis(50)));
    }
}
